//! Running one VM process and measuring it.
//!
//! The process is spawned with stdin from `/dev/null` and stdout and stderr on pipes.
//! One thread polls the two pipes and a pidfd of the process, so every event is
//! timestamped as soon as `poll` returns:
//!
//! - start-up latency: spawn to the `read` that delivered the first byte of the
//!   caller's marker (the guest's first console line, e.g. [`PROBE_MARKER`]) on stdout;
//! - whole-life latency: spawn to the moment the pidfd reported the exit (the process
//!   is then reaped with `wait4`, which also gives its `rusage`);
//! - peak RSS: `ru_maxrss` from that `rusage`.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The text whose first byte ends start-up for the probe guest: its first console line.
pub const PROBE_MARKER: &[u8] = b"rvmm-probe:";

/// How long to keep reading the pipes after the process has exited (a grandchild
/// could keep them open; none of the measured programs forks, but do not hang on one).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Code(c) => write!(f, "exit code {c}"),
            Ended::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// What one run of a process measured and printed.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Spawn to the arrival of the first byte of the marker on stdout, if it appeared.
    pub startup: Option<Duration>,
    /// Spawn to process exit.
    pub whole_life: Duration,
    /// Peak resident set size (`ru_maxrss` from `wait4`), in KiB.
    pub max_rss_kib: u64,
    /// How the process ended.
    pub ended: Ended,
    /// Everything the process wrote to stdout.
    pub stdout: Vec<u8>,
    /// For each read from stdout: the offset in `stdout` where its bytes start, and the
    /// time from spawn to its return.
    pub stdout_reads: Vec<(usize, Duration)>,
    /// Everything the process wrote to stderr.
    pub stderr: Vec<u8>,
}

/// Spawns `cmd` (its stdio is replaced as described in the module documentation),
/// waits for it to exit and returns what was measured; start-up ends with the first
/// byte of `marker` on stdout.
///
/// A process still running after `timeout` is killed with SIGKILL and reported as an
/// error; so is any failure to spawn, poll, read or wait.
pub fn run_once(cmd: &mut Command, marker: &[u8], timeout: Duration) -> Result<Outcome, String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {program}: {e}"))?;
    // `child` is never waited for through std: the process is reaped with wait4 below.
    let pid = match libc::pid_t::try_from(child.id()) {
        Ok(pid) => pid,
        Err(_) => return Err(format!("{program}: process id {} out of range", child.id())),
    };
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_and_reap(pid);
        return Err(format!("{program}: stdout or stderr pipe missing"));
    };
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            kill_and_reap(pid);
            return Err(format!("pidfd_open for {program}: {e} (Linux 5.3 or later is needed)"));
        }
    };
    let mut watch = Watch {
        marker: marker.to_vec(),
        start,
        pid,
        stdout: Some(stdout),
        stderr: Some(stderr),
        pidfd: Some(pidfd),
        out: Vec::new(),
        err: Vec::new(),
        chunks: Vec::new(),
        startup: None,
        exit: None,
    };
    match watch.run(start + timeout) {
        Ok(()) => {}
        Err(e) => {
            if watch.exit.is_none() {
                kill_and_reap(pid);
            }
            return Err(format!(
                "{program}: {e}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&watch.out),
                String::from_utf8_lossy(&watch.err)
            ));
        }
    }
    let Some(exit) = watch.exit else {
        return Err(format!("{program}: internal error: no exit recorded"));
    };
    Ok(Outcome {
        startup: watch.startup,
        whole_life: exit.at.saturating_duration_since(start),
        max_rss_kib: u64::try_from(exit.rusage.ru_maxrss).unwrap_or(0),
        ended: exit.ended,
        stdout: watch.out,
        stdout_reads: watch.chunks.iter().map(|&(o, at)| (o, at.saturating_duration_since(start))).collect(),
        stderr: watch.err,
    })
}

impl Outcome {
    /// Spawn to the read that delivered the first byte of `text` on stdout, if it appeared
    /// (measured as start-up latency is, for any text).
    pub fn arrival(&self, text: &[u8]) -> Option<Duration> {
        let pos = find(&self.stdout, text)?;
        delivered_at(&self.stdout_reads, pos)
    }
}

/// When the read that delivered byte `pos` returned, from (offset, time) per read.
fn delivered_at<T: Copy>(reads: &[(usize, T)], pos: usize) -> Option<T> {
    reads.iter().rev().find(|(o, _)| *o <= pos).map(|(_, at)| *at)
}

/// The reaped process.
struct Exit {
    at: Instant,
    ended: Ended,
    rusage: libc::rusage,
}

/// The state of one poll loop.
struct Watch {
    /// The text whose first byte ends start-up.
    marker: Vec<u8>,
    start: Instant,
    pid: libc::pid_t,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    pidfd: Option<OwnedFd>,
    out: Vec<u8>,
    err: Vec<u8>,
    /// (offset in `out` where a read's bytes start, when that read returned)
    chunks: Vec<(usize, Instant)>,
    startup: Option<Duration>,
    exit: Option<Exit>,
}

#[derive(Clone, Copy)]
enum Source {
    Stdout,
    Stderr,
    Pidfd,
}

impl Watch {
    /// Polls until the process has exited and both pipes are closed. Errors on
    /// timeout (the caller kills the process) and on system call failures.
    fn run(&mut self, deadline: Instant) -> Result<(), String> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let pipes_open = self.stdout.is_some() || self.stderr.is_some();
            let now = Instant::now();
            let limit = match &self.exit {
                Some(_) if !pipes_open => return Ok(()),
                Some(exit) => exit.at + DRAIN_AFTER_EXIT,
                None => deadline,
            };
            if now >= limit {
                if self.exit.is_some() {
                    // Exited, but something still holds the pipes: stop reading.
                    return Ok(());
                }
                return Err(format!(
                    "still running after {:.1} s, killed",
                    now.saturating_duration_since(self.start).as_secs_f64()
                ));
            }
            let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3);
            let mut sources: Vec<Source> = Vec::with_capacity(3);
            let mut add = |fd: RawFd, source: Source| {
                fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
                sources.push(source);
            };
            if let Some(s) = &self.stdout {
                add(s.as_raw_fd(), Source::Stdout);
            }
            if let Some(s) = &self.stderr {
                add(s.as_raw_fd(), Source::Stderr);
            }
            if let Some(fd) = &self.pidfd {
                add(fd.as_raw_fd(), Source::Pidfd);
            }
            let wait_ms = limit.saturating_duration_since(now).as_millis() + 1;
            let wait_ms = libc::c_int::try_from(wait_ms).unwrap_or(libc::c_int::MAX);
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
            let t = Instant::now();
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll: {e}"));
            }
            for (pfd, source) in fds.iter().zip(sources) {
                if pfd.revents == 0 {
                    continue;
                }
                match source {
                    Source::Stdout => self.read_stdout(&mut buf, t)?,
                    Source::Stderr => self.read_stderr(&mut buf)?,
                    Source::Pidfd => self.reap(t)?,
                }
            }
        }
    }

    fn read_stdout(&mut self, buf: &mut [u8], t: Instant) -> Result<(), String> {
        let Some(pipe) = self.stdout.as_mut() else {
            return Ok(());
        };
        match read_some(pipe, buf) {
            Err(e) => Err(format!("reading stdout: {e}")),
            Ok(None) => Ok(()),
            Ok(Some(0)) => {
                self.stdout = None;
                Ok(())
            }
            Ok(Some(n)) => {
                let offset = self.out.len();
                self.chunks.push((offset, t));
                self.out.extend_from_slice(&buf[..n]);
                if self.startup.is_none() {
                    let from = offset.saturating_sub(self.marker.len().saturating_sub(1));
                    if let Some(p) = find(&self.out[from..], &self.marker) {
                        let pos = from + p;
                        // The read that delivered the marker's first byte.
                        let at = delivered_at(&self.chunks, pos).unwrap_or(t);
                        self.startup = Some(at.saturating_duration_since(self.start));
                    }
                }
                Ok(())
            }
        }
    }

    fn read_stderr(&mut self, buf: &mut [u8]) -> Result<(), String> {
        let Some(pipe) = self.stderr.as_mut() else {
            return Ok(());
        };
        match read_some(pipe, buf) {
            Err(e) => Err(format!("reading stderr: {e}")),
            Ok(None) => Ok(()),
            Ok(Some(0)) => {
                self.stderr = None;
                Ok(())
            }
            Ok(Some(n)) => {
                self.err.extend_from_slice(&buf[..n]);
                Ok(())
            }
        }
    }

    /// The pidfd is readable: the process has exited. Reap it.
    fn reap(&mut self, t: Instant) -> Result<(), String> {
        // SAFETY: rusage is plain data; all-zero is a valid value.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        let mut status: libc::c_int = 0;
        // SAFETY: valid pointers to a c_int and a rusage.
        let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut rusage) };
        if r == 0 {
            return Ok(()); // Not yet reapable; poll again.
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(format!("wait4: {e}"));
        }
        self.pidfd = None;
        self.exit = Some(Exit { at: t, ended: decode_status(status), rusage });
        Ok(())
    }
}

/// One `read`: `Ok(None)` when interrupted or when no data was ready after all.
fn read_some(pipe: &mut impl Read, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match pipe.read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => Ok(None),
        Err(e) => Err(e),
    }
}

fn decode_status(status: libc::c_int) -> Ended {
    if libc::WIFEXITED(status) {
        Ended::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Ended::Signal(libc::WTERMSIG(status))
    } else {
        Ended::Code(-1)
    }
}

/// The first position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new file descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Kills a process that has not been reaped yet (so its pid cannot have been reused)
/// and reaps it.
fn kill_and_reap(pid: libc::pid_t) {
    // SAFETY: plain system calls on our own unreaped child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
        {
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_shell() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 0.05; printf 'x\\nrvmm-probe: quick\\n'; echo e >&2; exit 3"]);
        let o = run_once(&mut cmd, PROBE_MARKER, Duration::from_secs(10)).unwrap();
        assert_eq!(o.ended, Ended::Code(3));
        let s = o.startup.unwrap();
        assert!(s >= Duration::from_millis(50) && s <= o.whole_life);
        assert!(o.max_rss_kib > 0);
        assert_eq!(o.stderr, b"e\n");
        assert!(find(&o.stdout, PROBE_MARKER).is_some());
    }

    #[test]
    fn marker_is_a_parameter() {
        // The firmware guest's marker, after other console output and split over two writes.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "printf 'SeaBIOS\\r\\nrvmm-m'; sleep 0.2; printf 'br: hello\\r\\n'; exit 42"]);
        let o = run_once(&mut cmd, b"rvmm-mbr: hello\r\n", Duration::from_secs(10)).unwrap();
        assert_eq!(o.ended, Ended::Code(42));
        // Start-up ends with the read that delivered the marker's first byte, before the sleep.
        let s = o.startup.unwrap();
        assert!(s + Duration::from_millis(100) <= o.whole_life, "{s:?} {:?}", o.whole_life);
        // Any text's arrival is timed the same way: `br: hello` came after the sleep.
        assert_eq!(o.arrival(b"rvmm-mbr: hello"), Some(s));
        let later = o.arrival(b"br: hello").unwrap();
        assert!(later >= s + Duration::from_millis(150) && later <= o.whole_life, "{later:?}");
        assert_eq!(o.arrival(b"absent"), None);
        assert!(find(&o.stdout, PROBE_MARKER).is_none());
    }

    #[test]
    fn times_out() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let e = run_once(&mut cmd, PROBE_MARKER, Duration::from_millis(100)).unwrap_err();
        assert!(e.contains("killed"), "{e}");
    }
}
