//! Boots the probe guests under QEMU TCG, the independent reference, to show that the
//! probes read the boot protocols correctly before rvmm is judged by them.
//!
//! Each test skips (with a notice on stderr) when `qemu-system-x86_64` is not
//! installed; CI installs it. Every QEMU run is killed after a time limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rvmm_tests::{fnv1a32, qemu_probe_command, qemu_x86_64, QemuProbe, Report, VmOutput, VmRunner};

const TIMEOUT: Duration = Duration::from_secs(60);
/// What the tests type into the guest's serial port (`rx=5`), and how the probe shows it.
const RX_BYTES: &[u8] = b"hey\x01!";
const RX_SHOWN: &str = "hey\\x01!";

fn qemu_or_skip(test: &str) -> Option<PathBuf> {
    let q = qemu_x86_64();
    if q.is_none() {
        eprintln!("SKIPPED {test}: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
    }
    q
}

/// Writes an initrd of known, non-text bytes and returns its path and contents.
fn initrd(name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    let bytes: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 8)).wrapping_add(7) as u8).collect();
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("qemu-probes-{name}-{}.initrd", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

fn check_rtc(value: &str, out: &VmOutput) {
    // YYYY-MM-DD hh:mm:ss
    let b = value.as_bytes();
    let shape_ok = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    assert!(shape_ok, "rtc line {value:?}\n{}", out.describe());
    let num = |r: std::ops::Range<usize>| value[r].parse::<u32>().unwrap();
    assert!(num(0..4) >= 2020, "rtc year {value}\n{}", out.describe());
    assert!((1..=12).contains(&num(5..7)) && (1..=31).contains(&num(8..10)), "rtc date {value}");
    assert!(num(11..13) < 24 && num(14..16) < 60 && num(17..19) < 60, "rtc time {value}");
}

/// Boots `image` with an initrd, a command line with `rx=5`, types [`RX_BYTES`] once
/// the probe is up, and checks the whole report. Returns it for image-specific checks.
fn boot_full(test: &str, image: &str, smp: u32, expect_boot: &str) -> Option<(Report, VmOutput)> {
    let qemu = qemu_or_skip(test)?;
    let (initrd_path, initrd_bytes) = initrd(test, 3000 + 17 * smp as usize);
    let cmdline = format!("console=ttyS0 probe.test={test} rx=5");
    let mut probe = QemuProbe::new(Path::new(image));
    probe.smp = smp;
    probe.append = Some(&cmdline);
    probe.initrd = Some(&initrd_path);
    let out = VmRunner::new(qemu_probe_command(&qemu, &probe))
        .timeout(TIMEOUT)
        .send_after("rvmm-probe: boot=", RX_BYTES)
        .run()
        .expect("spawn qemu");
    let _ = std::fs::remove_file(&initrd_path);
    let r = out.report();
    let d = || out.describe();

    assert!(!out.timed_out, "QEMU timed out\n{}", d());
    assert_eq!(r.get("rvmm-probe"), Some(format!("boot={expect_boot}").as_str()), "{}", d());
    assert_eq!(r.get("cmdline"), Some(cmdline.as_str()), "{}", d());

    let e820 = r.get_u64("e820").unwrap_or(0);
    assert!(e820 > 0, "no e820 entries\n{}", d());
    for i in 0..e820 {
        assert!(r.get(&format!("e820[{i}]")).is_some(), "e820[{i}] missing\n{}", d());
    }
    let ram = r.get_u64("ram-total").unwrap_or(0);
    assert!((200 << 20..=256 << 20).contains(&ram), "ram-total {ram}\n{}", d());

    assert_eq!(r.field("initrd", "size"), Some(initrd_bytes.len().to_string().as_str()), "{}", d());
    assert_eq!(r.field("initrd", "fnv1a"), Some(format!("0x{:08x}", fnv1a32(&initrd_bytes)).as_str()), "{}", d());

    assert!(r.get("acpi-rsdp").is_some_and(|v| v.starts_with("0x")), "{}", d());
    let tables = r.get("acpi-tables").unwrap_or("");
    assert!(tables.split_whitespace().any(|t| t == "APIC"), "no MADT\n{}", d());
    assert!(!tables.contains('!'), "bad ACPI checksum\n{}", d());
    assert_eq!(r.get_u64("madt-cpus"), Some(smp as u64), "{}", d());
    assert_eq!(r.get_u64("smp-started"), Some(smp as u64), "{}", d());
    // SeaBIOS lists one MP table processor per package; with -smp N QEMU makes one
    // package of N cores, so only check that the table was found and is sane.
    let mp = r.get_u64("mptable-cpus");
    assert!(mp.is_some_and(|n| (1..=smp as u64).contains(&n)), "mptable\n{}", d());

    check_rtc(r.get("rtc").unwrap_or(""), &out);
    assert_eq!(r.get("serial-rx"), Some(RX_SHOWN), "{}", d());
    assert_eq!(r.get("probe-result"), Some("ok"), "{}", d());
    assert_eq!(out.exit_code(), Some(1), "debug-exit status 0 expected\n{}", d());
    eprintln!("{test}: QEMU run took {:?}", out.elapsed);
    Some((r, out))
}

#[test]
fn pvh_smp1() {
    if let Some((r, out)) = boot_full("pvh_smp1", rvmm_probes::PVH_ELF, 1, "pvh") {
        assert!(r.get("bootparams").is_none(), "{}", out.describe());
    }
}

#[test]
fn pvh_smp4() {
    boot_full("pvh_smp4", rvmm_probes::PVH_ELF, 4, "pvh");
}

fn check_bootparams(r: &Report, out: &VmOutput) {
    // QEMU's loader: type_of_loader 0xb0, command line at 0x20000, CAN_USE_HEAP set.
    assert_eq!(r.field("bootparams", "version"), Some("0x20f"), "{}", out.describe());
    assert_eq!(r.field("bootparams", "type_of_loader"), Some("0xb0"), "{}", out.describe());
    assert_eq!(r.field("bootparams", "cmd_line_ptr"), Some("0x20000"), "{}", out.describe());
    assert_eq!(r.field("bootparams", "loadflags"), Some("0x81"), "{}", out.describe());
    assert_eq!(r.field("bootparams", "kernel_alignment"), Some("0x200000"), "{}", out.describe());
}

#[test]
fn bzimage_smp1() {
    if let Some((r, out)) = boot_full("bzimage_smp1", rvmm_probes::BZIMAGE, 1, "bzimage-realmode") {
        check_bootparams(&r, &out);
    }
}

#[test]
fn bzimage_smp4() {
    if let Some((r, out)) = boot_full("bzimage_smp4", rvmm_probes::BZIMAGE, 4, "bzimage-realmode") {
        check_bootparams(&r, &out);
    }
}

/// `quick` exits at once with status 0; `exit=N` sets the status of a passing run;
/// no command line and no initrd are reported as such.
#[test]
fn quick_exit_status_and_defaults() {
    let Some(qemu) = qemu_or_skip("quick_exit_status_and_defaults") else {
        return;
    };
    let image = Path::new(rvmm_probes::PVH_ELF);

    let mut probe = QemuProbe::new(image);
    probe.append = Some("quick");
    let out = VmRunner::new(qemu_probe_command(&qemu, &probe)).timeout(TIMEOUT).run().unwrap();
    assert_eq!(out.report().get("rvmm-probe"), Some("quick"), "{}", out.describe());
    assert_eq!(out.report().entries.len(), 1, "{}", out.describe());
    assert_eq!(out.exit_code(), Some(1), "{}", out.describe());

    let mut probe = QemuProbe::new(image);
    probe.append = Some("exit=3");
    let out = VmRunner::new(qemu_probe_command(&qemu, &probe)).timeout(TIMEOUT).run().unwrap();
    let r = out.report();
    assert!(r.ok(), "{}", out.describe());
    assert_eq!(r.get("cmdline"), Some("exit=3"), "{}", out.describe());
    assert_eq!(r.get("initrd"), Some("none"), "{}", out.describe());
    assert!(r.get("serial-rx").is_none(), "{}", out.describe());
    assert_eq!(out.exit_code(), Some((3 << 1) | 1), "{}", out.describe());

    let probe = QemuProbe::new(Path::new(rvmm_probes::BZIMAGE));
    let out = VmRunner::new(qemu_probe_command(&qemu, &probe)).timeout(TIMEOUT).run().unwrap();
    let r = out.report();
    assert_eq!(r.get("cmdline"), Some("(none)"), "{}", out.describe());
    assert!(r.ok(), "{}", out.describe());
    assert_eq!(out.exit_code(), Some(1), "{}", out.describe());
}

/// `echo` echoes serial input after the report (the interactive demo); Ctrl-D ends it.
#[test]
fn echo_mode() {
    let Some(qemu) = qemu_or_skip("echo_mode") else {
        return;
    };
    let mut probe = QemuProbe::new(Path::new(rvmm_probes::PVH_ELF));
    probe.append = Some("echo");
    let out = VmRunner::new(qemu_probe_command(&qemu, &probe))
        .timeout(TIMEOUT)
        .send_after("probe-result: ok", b"ping")
        .send_after("ping", b"\x04")
        .run()
        .unwrap();
    let tail = out.stdout.split("probe-result: ok").nth(1).unwrap_or("");
    assert!(tail.contains("ping"), "{}", out.describe());
    assert_eq!(out.exit_code(), Some(1), "{}", out.describe());
}
