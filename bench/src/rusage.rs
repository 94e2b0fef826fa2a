//! CPU time and peak memory from getrusage(2), shared by the benchmark programs.

use std::time::Duration;

/// getrusage for `who` (RUSAGE_SELF, RUSAGE_THREAD or RUSAGE_CHILDREN); all
/// zero if it fails (it cannot with these arguments).
fn usage(who: libc::c_int) -> libc::rusage {
    // SAFETY: rusage is plain data, so all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the rusage we own through a valid pointer.
    unsafe { libc::getrusage(who, &mut ru) };
    ru
}

/// User + system CPU time of `who`.
fn cpu(who: libc::c_int) -> Duration {
    let ru = usage(who);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time of this process so far (all its threads).
#[allow(dead_code)] // not every program measures every kind
pub fn process_cpu() -> Duration {
    cpu(libc::RUSAGE_SELF)
}

/// CPU time of the calling thread so far.
#[allow(dead_code)]
pub fn thread_cpu() -> Duration {
    cpu(libc::RUSAGE_THREAD)
}

/// CPU time of this process's children that have been waited for.
#[allow(dead_code)]
pub fn children_cpu() -> Duration {
    cpu(libc::RUSAGE_CHILDREN)
}

/// This process's peak resident set size, KiB.
#[allow(dead_code)]
pub fn own_max_rss_kib() -> u64 {
    u64::try_from(usage(libc::RUSAGE_SELF).ru_maxrss).unwrap_or(0)
}
