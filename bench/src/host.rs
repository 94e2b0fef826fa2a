//! What the benchmark ran on: date, kernel, CPU, kind of KVM, memory settings, load.
//!
//! Every field is read from `/proc` or `/sys`; a field that cannot be read says why
//! instead of failing the benchmark.

use std::time::{SystemTime, UNIX_EPOCH};

/// Facts about the host, each already formatted for the report.
#[derive(Debug, Clone)]
pub struct Host {
    /// The current date and time, UTC (`YYYY-MM-DD hh:mm UTC`).
    pub date: String,
    /// The running kernel's release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
    /// The CPU's `model name` and the number of logical CPUs (`/proc/cpuinfo`).
    pub cpu: String,
    /// Whether the host CPU advertises hardware virtualization (vmx/svm) or KVM is a
    /// nested, software-emulated one.
    pub kvm: String,
    /// The transparent huge page mode, which decides how much of a touched guest
    /// mapping becomes resident.
    pub thp: String,
}

impl Host {
    /// Reads the host facts.
    pub fn gather() -> Host {
        Host { date: utc_now(), kernel: read_trimmed("/proc/sys/kernel/osrelease"), cpu: cpu(), kvm: kvm(), thp: thp() }
    }
}

/// The 1-, 5- and 15-minute load averages (`/proc/loadavg`), as text.
pub fn loadavg() -> String {
    match std::fs::read_to_string("/proc/loadavg") {
        Ok(s) => s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        Err(e) => format!("unknown (/proc/loadavg: {e})"),
    }
}

fn read_trimmed(path: &str) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim().to_string(),
        Err(e) => format!("unknown ({path}: {e})"),
    }
}

fn cpuinfo_field<'a>(cpuinfo: &'a str, key: &str) -> Option<&'a str> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

fn cpu() -> String {
    let info = match std::fs::read_to_string("/proc/cpuinfo") {
        Ok(s) => s,
        Err(e) => return format!("unknown (/proc/cpuinfo: {e})"),
    };
    let model = cpuinfo_field(&info, "model name").unwrap_or("unknown model");
    let count = info.lines().filter(|l| l.split(':').next().map(str::trim) == Some("processor")).count();
    format!("{model}, {count} logical CPUs")
}

fn kvm() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = cpuinfo_field(&info, "flags").unwrap_or("").split_whitespace().collect();
    let dev = if std::path::Path::new("/dev/kvm").exists() { "/dev/kvm present" } else { "no /dev/kvm" };
    if flags.is_empty() {
        format!("{dev}; CPU flags unreadable")
    } else if flags.iter().any(|f| *f == "vmx" || *f == "svm") {
        format!("{dev}; host CPU has hardware virtualization (vmx/svm)")
    } else {
        let hv = if flags.contains(&"hypervisor") { "the host is itself a guest ('hypervisor' flag) and " } else { "" };
        format!(
            "{dev}; {hv}its CPU flags have no vmx/svm: nested KVM, guest code emulated \
             in software (see shared/HOST-KVM.md)"
        )
    }
}

fn thp() -> String {
    let s = read_trimmed("/sys/kernel/mm/transparent_hugepage/enabled");
    match (s.find('['), s.find(']')) {
        (Some(a), Some(b)) if a < b => s[a + 1..b].to_string(),
        _ => s,
    }
}

fn utc_now() -> String {
    let secs = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs(),
        Err(_) => return "unknown (clock before 1970)".to_string(),
    };
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", s / 3600, s % 3600 / 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
