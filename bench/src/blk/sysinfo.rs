//! Facts about the test file's storage: the file system and device it is on,
//! whether O_DIRECT works there, how much of it is in the page cache, and the
//! host's available memory. Each fact that cannot be read says why instead of
//! failing the benchmark.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The mount that holds `path`, from `/proc/self/mountinfo`: "TYPE on SOURCE (mounted at
/// DIR)".
pub fn file_system(path: &Path) -> String {
    let canonical = match path.canonicalize() {
        Ok(p) => p,
        Err(e) => return format!("unknown ({}: {e})", path.display()),
    };
    let info = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(s) => s,
        Err(e) => return format!("unknown (/proc/self/mountinfo: {e})"),
    };
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mount), Some(fstype), Some(source)) = (fields.get(4), fields.get(dash + 1), fields.get(dash + 2))
        else {
            continue;
        };
        let mount = mount.replace("\\040", " ");
        // The deepest mount point that holds the path; later lines win ties (over-mounts).
        let deeper = match &best {
            Some((len, _)) => mount.len() >= *len,
            None => true,
        };
        if canonical.starts_with(&mount) && deeper {
            best = Some((mount.len(), format!("{fstype} on {source} (mounted at {mount})")));
        }
    }
    best.map(|(_, s)| s).unwrap_or_else(|| "unknown (no mount found)".into())
}

/// The block device's I/O scheduler and whether it says it is rotational, for a mount
/// source like `/dev/vda` (or a partition of it); `None` for anything else.
pub fn block_device(fs: &str) -> Option<String> {
    let source = fs.split(" on ").nth(1)?.split(' ').next()?;
    let name = source.strip_prefix("/dev/")?;
    let mut dir = std::path::PathBuf::from(format!("/sys/class/block/{name}"));
    if dir.join("partition").exists() {
        dir = dir.join("..");
    }
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok().map(|s| s.trim().to_string());
    let sched = read("queue/scheduler")?;
    let rot = read("queue/rotational").unwrap_or_default();
    Some(format!("{source}: scheduler {sched}, rotational={rot}"))
}

/// Whether the file at `path` can be opened with O_DIRECT and read 4 KiB at offset 0
/// into an aligned buffer; `Err` says why not.
pub fn direct_io_works(path: &Path) -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("open with O_DIRECT: {e}"))?;
    let mut buf = crate::raw::AlignedBuf::new(4096)?;
    // SAFETY: buf holds 4096 bytes.
    let n = unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().cast(), 4096, 0) };
    if n == 4096 {
        Ok(())
    } else if n < 0 {
        Err(format!("O_DIRECT read: {}", std::io::Error::last_os_error()))
    } else {
        Err(format!("O_DIRECT read returned {n} bytes"))
    }
}

/// The share of `file`'s pages (first `len` bytes) in the page cache, from `mincore`.
pub fn page_cache_resident(file: &File, len: u64) -> Result<f64, String> {
    let len = len as usize;
    if len == 0 {
        return Ok(0.0);
    }
    // SAFETY: a fresh shared read-only mapping of the file; unmapped below.
    let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
    if addr == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let pages = len.div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: addr..addr+len is our mapping; vec has one byte per page.
    let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(addr, len) };
    if rc != 0 {
        return Err(format!("mincore: {err}"));
    }
    Ok(vec.iter().filter(|&&b| b & 1 != 0).count() as f64 / pages as f64)
}

/// `MemAvailable` from `/proc/meminfo`, as text.
pub fn memory_available() -> String {
    let info = match std::fs::read_to_string("/proc/meminfo") {
        Ok(s) => s,
        Err(e) => return format!("unknown (/proc/meminfo: {e})"),
    };
    let field = |key: &str| {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (field("MemAvailable:"), field("MemTotal:")) {
        (Some(a), Some(t)) => format!("{} MiB available of {} MiB", a / 1024, t / 1024),
        _ => "unknown (no MemAvailable in /proc/meminfo)".into(),
    }
}

/// The kernel's clock source (what `Instant::now` costs depends on it).
pub fn clocksource() -> String {
    let p = "/sys/devices/system/clocksource/clocksource0/current_clocksource";
    match std::fs::read_to_string(p) {
        Ok(s) => s.trim().to_string(),
        Err(e) => format!("unknown ({p}: {e})"),
    }
}

/// CPU time all CPUs spent busy so far (user, nice, system, irq, softirq in
/// `/proc/stat`), seconds; `None` if it cannot be read.
pub fn busy_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| busy as f64 / hz as f64)
}

/// Logical CPUs online.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
