//! Helpers for rvmm's end-to-end tests (the tests themselves live in `tests/`).
//!
//! - [`VmRunner`] runs a VM process (rvmm or QEMU) whose stdout is the guest's serial
//!   console, with a time limit, optionally typing bytes into its stdin once the
//!   console shows a given text, and returns everything it printed as a [`VmOutput`].
//! - [`Report`] reads the `key: value` report of a probe guest (crate `rvmm-probes`).
//! - [`qemu_x86_64`] and [`qemu_probe_command`] find QEMU and build the command line
//!   that boots a probe under QEMU TCG, the independent reference.
//! - [`fnv1a32`] is the hash the probes report for the initrd.
//! - [`seabios`] writes the MBR test disks for booting SeaBIOS (issue 7) and lists what
//!   SeaBIOS prints when it boots them.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub mod seabios;

/// The default time limit of a [`VmRunner`]: long enough for a probe under QEMU TCG on
/// a busy 2-core machine, short enough that a hung guest does not stall the suite.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a VM process printed and how it ended.
#[derive(Debug, Clone)]
pub struct VmOutput {
    /// Everything the process wrote to stdout (the guest's serial console), decoded
    /// lossily as UTF-8.
    pub stdout: String,
    /// Everything the process wrote to stderr.
    pub stderr: String,
    /// The exit status, or `None` if the process was killed after the time limit.
    pub status: Option<ExitStatus>,
    /// True if the process was still running at the time limit and was killed.
    pub timed_out: bool,
    /// Wall-clock time from spawn to exit (or to the kill).
    pub elapsed: Duration,
}

impl VmOutput {
    /// The process's exit code, if it exited normally (not killed or signalled).
    pub fn exit_code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// The probe report found in [`VmOutput::stdout`].
    pub fn report(&self) -> Report {
        Report::parse(&self.stdout)
    }

    /// A multi-line description (exit, timing, stdout, stderr) for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status={:?} timed_out={} elapsed={:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.timed_out, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Runs a VM process with a time limit and captures its console.
///
/// The process's stdin, stdout and stderr are replaced by pipes. Bytes registered with
/// [`VmRunner::send_after`] are written to stdin, in order, each once stdout contains
/// its trigger text (stdin stays open until the process ends). The run ends when the
/// process exits, when stdout contains the text given to [`VmRunner::stop_when`] (the
/// process is then killed), or at the time limit (killed, `timed_out` set).
pub struct VmRunner {
    cmd: Command,
    timeout: Duration,
    inputs: Vec<(String, Vec<u8>)>,
    stop_when: Option<String>,
    actions: Vec<(String, Option<Action>)>,
}

/// Work that [`VmRunner::spawn_after`] runs on its own thread.
type Action = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct Captured {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    open_streams: u32,
}

impl VmRunner {
    /// A runner for `cmd` with the [`DEFAULT_TIMEOUT`].
    pub fn new(cmd: Command) -> Self {
        VmRunner { cmd, timeout: DEFAULT_TIMEOUT, inputs: Vec::new(), stop_when: None, actions: Vec::new() }
    }

    /// Sets the time limit after which the process is killed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Writes `bytes` to the process's stdin once its stdout contains `trigger`
    /// (an empty trigger sends at once). Inputs are sent in the order added.
    pub fn send_after(mut self, trigger: &str, bytes: &[u8]) -> Self {
        self.inputs.push((trigger.to_string(), bytes.to_vec()));
        self
    }

    /// Kills the process as soon as its stdout contains `text` (for guests that do not
    /// exit by themselves, such as the probe's `echo` mode). Such a run has
    /// `status: None` and `timed_out: false`.
    pub fn stop_when(mut self, text: &str) -> Self {
        self.stop_when = Some(text.to_string());
        self
    }

    /// Runs `action` on a new thread once stdout contains `trigger` (an empty trigger
    /// runs it as soon as the process has been spawned), while the process goes on: for
    /// host-side work during the run, such as pinging the guest or talking to a socket
    /// the VMM serves. [`VmRunner::run`] joins these threads before it returns, so each
    /// action must end by itself (bound its own waits); its results go back through a
    /// channel or similar. An action whose trigger does not appear while the process
    /// runs is not run.
    pub fn spawn_after(mut self, trigger: &str, action: impl FnOnce() + Send + 'static) -> Self {
        self.actions.push((trigger.to_string(), Some(Box::new(action))));
        self
    }

    /// Spawns the process and waits for it as described on [`VmRunner`].
    pub fn run(mut self) -> io::Result<VmOutput> {
        let start = Instant::now();
        let mut child = self.cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let shared = Arc::new((Mutex::new(Captured { open_streams: 2, ..Default::default() }), Condvar::new()));
        let readers = [
            spawn_reader(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>), shared.clone(), true),
            spawn_reader(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>), shared.clone(), false),
        ];
        let mut stdin: Option<ChildStdin> = child.stdin.take();
        let deadline = start + self.timeout;
        let mut next_input = 0;
        let mut timed_out = false;
        let mut status = None;
        let mut action_threads = Vec::new();
        loop {
            // Start actions and feed inputs whose trigger has appeared.
            {
                let (lock, _) = &*shared;
                let cap = lock.lock().unwrap();
                for (trigger, action) in self.actions.iter_mut() {
                    if action.is_some() && contains(&cap.stdout, trigger.as_bytes()) {
                        action_threads.push(thread::spawn(action.take().unwrap()));
                    }
                }
                while next_input < self.inputs.len() {
                    let (trigger, bytes) = &self.inputs[next_input];
                    if !contains(&cap.stdout, trigger.as_bytes()) {
                        break;
                    }
                    if let Some(s) = stdin.as_mut() {
                        // A process that already closed its stdin is not an error here.
                        let _ = s.write_all(bytes).and_then(|_| s.flush());
                    }
                    next_input += 1;
                }
                if let Some(stop) = &self.stop_when {
                    if contains(&cap.stdout, stop.as_bytes()) {
                        drop(cap);
                        kill(&mut child);
                        break;
                    }
                }
            }
            if let Some(st) = child.try_wait()? {
                status = Some(st);
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                timed_out = true;
                kill(&mut child);
                break;
            }
            let (lock, cvar) = &*shared;
            let guard = lock.lock().unwrap();
            let wait = (deadline - now).min(Duration::from_millis(20));
            let _ = cvar.wait_timeout(guard, wait).unwrap();
        }
        let elapsed = start.elapsed();
        drop(stdin);
        // The pipes close when the process is gone; do not hang on a grandchild that
        // inherited them.
        let until = Instant::now() + Duration::from_secs(5);
        {
            let (lock, cvar) = &*shared;
            let mut cap = lock.lock().unwrap();
            while cap.open_streams > 0 && Instant::now() < until {
                cap = cvar.wait_timeout(cap, Duration::from_millis(50)).unwrap().0;
            }
        }
        for r in readers.into_iter().flatten() {
            if r.is_finished() {
                let _ = r.join();
            }
        }
        for t in action_threads {
            let _ = t.join();
        }
        let (lock, _) = &*shared;
        let cap = lock.lock().unwrap();
        Ok(VmOutput {
            stdout: String::from_utf8_lossy(&cap.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&cap.stderr).into_owned(),
            status,
            timed_out,
            elapsed,
        })
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn spawn_reader(
    stream: Option<Box<dyn Read + Send>>,
    shared: Arc<(Mutex<Captured>, Condvar)>,
    is_stdout: bool,
) -> Option<thread::JoinHandle<()>> {
    let Some(mut stream) = stream else {
        shared.0.lock().unwrap().open_streams -= 1;
        return None;
    };
    Some(thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let (lock, cvar) = &*shared;
            let mut cap = lock.lock().unwrap();
            if is_stdout {
                cap.stdout.extend_from_slice(&buf[..n]);
            } else {
                cap.stderr.extend_from_slice(&buf[..n]);
            }
            cvar.notify_all();
        }
        let (lock, cvar) = &*shared;
        lock.lock().unwrap().open_streams -= 1;
        cvar.notify_all();
    }))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// A probe guest's report: the `key: value` lines from the first `rvmm-probe:` line on.
///
/// Firmware output before the report (SeaBIOS under QEMU) is ignored, including text
/// on the same line before `rvmm-probe:`. Carriage returns are dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The report's lines as (key, value), in order. Lines without `": "` are skipped.
    pub entries: Vec<(String, String)>,
}

impl Report {
    /// Parses the report out of a serial console transcript.
    pub fn parse(console: &str) -> Report {
        let mut entries = Vec::new();
        let Some(start) = console.find("rvmm-probe:") else {
            return Report { entries };
        };
        for line in console[start..].lines() {
            let line = line.trim_end_matches('\r');
            if let Some((key, value)) = line.split_once(": ") {
                let key_ok = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_[]".contains(&b));
                if key_ok {
                    entries.push((key.to_string(), value.to_string()));
                }
            } else if let Some(key) = line.strip_suffix(':') {
                if !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_[]".contains(&b)) {
                    entries.push((key.to_string(), String::new()));
                }
            }
        }
        Report { entries }
    }

    /// The value of the first line with this key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value of the first line with this key, parsed as a decimal number.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.trim().parse().ok())
    }

    /// The `name=value` fields of the first line with this key (as in the `initrd:`
    /// and `bootparams:` lines), in order.
    pub fn fields(&self, key: &str) -> Vec<(&str, &str)> {
        self.get(key).map(|v| v.split_whitespace().filter_map(|f| f.split_once('=')).collect()).unwrap_or_default()
    }

    /// One `name=value` field of the first line with this key.
    pub fn field(&self, key: &str, name: &str) -> Option<&str> {
        self.fields(key).into_iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// True if the report ends with `probe-result: ok`.
    pub fn ok(&self) -> bool {
        self.get("probe-result") == Some("ok")
    }
}

/// 32-bit FNV-1a, the hash the probes report for the initrd (`fnv1a=0x%08x`).
pub fn fnv1a32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

/// Finds an executable named `name` in the directories of `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// The QEMU binary to use as the reference: `$RVMM_QEMU` if set, else
/// `qemu-system-x86_64` from `PATH`; `None` if there is none (tests then skip).
pub fn qemu_x86_64() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RVMM_QEMU") {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    find_in_path("qemu-system-x86_64")
}

/// How to boot a probe under QEMU (see [`qemu_probe_command`]).
#[derive(Debug, Clone)]
pub struct QemuProbe<'a> {
    /// The image given to `-kernel` (a PVH ELF or a bzImage).
    pub kernel: &'a Path,
    /// Number of vCPUs (`-smp`).
    pub smp: u32,
    /// Guest RAM in MiB (`-m`).
    pub mem_mib: u32,
    /// The kernel command line (`-append`), if any.
    pub append: Option<&'a str>,
    /// The initrd file (`-initrd`), if any.
    pub initrd: Option<&'a Path>,
    /// The machine type with its options (`-M`): `q35` unless set.
    pub machine: &'a str,
    /// More arguments, appended last (drives, devices, `-global`s).
    pub extra: Vec<String>,
}

impl<'a> QemuProbe<'a> {
    /// One vCPU, 256 MiB, q35, no command line, no initrd, nothing extra.
    pub fn new(kernel: &'a Path) -> Self {
        QemuProbe { kernel, smp: 1, mem_mib: 256, append: None, initrd: None, machine: "q35", extra: Vec::new() }
    }
}

/// The QEMU command that boots a probe with TCG on a q35 machine (or
/// [`QemuProbe::machine`]), serial console on stdio, no display, no monitor, no reboot,
/// and the debug exit device at port 0xf4.
///
/// QEMU's exit code is then `(status << 1) | 1` for a guest that wrote `status` to port
/// 0xf4 (so 1 means the probe passed), and 0 if the guest reset.
pub fn qemu_probe_command(qemu: &Path, probe: &QemuProbe<'_>) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args(["-M", probe.machine, "-accel", "tcg", "-nographic", "-no-reboot", "-nodefaults"])
        .args(["-serial", "stdio", "-monitor", "none"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-m")
        .arg(probe.mem_mib.to_string())
        .arg("-smp")
        .arg(probe.smp.to_string())
        .arg("-kernel")
        .arg(probe.kernel);
    if let Some(a) = probe.append {
        cmd.arg("-append").arg(a);
    }
    if let Some(i) = probe.initrd {
        cmd.arg("-initrd").arg(i);
    }
    cmd.args(&probe.extra);
    cmd
}

/// The `legacy-spec` probe checks every VMM must pass (probes/README.md, "Legacy device
/// checks"): rvmm in `rvmm/tests/boot_paths.rs`, QEMU in `tests/tests/qemu_irq.rs`.
pub const LEGACY_SPEC_CHECKS: [&str; 19] = [
    "uart-lsr-idle",
    "uart-scratch",
    "uart-ier-bits",
    "uart-iir-fifo-off",
    "uart-iir-fifo-on",
    "uart-dlab",
    "uart-loop-msr",
    "uart-loop-data",
    "uart-char-timeout",
    "rtc-reg-d",
    "rtc-reg-c-clear",
    "rtc-set-bcd",
    "rtc-set-binary",
    "rtc-cmos-ram",
    "i8042-self-test",
    "p61-gate-speaker",
    "pit-out2-mode0",
    "pci-cf8-enable",
    "pci-host-vendor",
];

/// Checks a run of the probe with `legacy-spec`: every check in
/// [`LEGACY_SPEC_CHECKS`] is `ok`, every other line an `info` line, and the
/// result `ok`. The `legacy-spec-*` lines are printed, prefixed by `who`, to
/// put the VMMs' `info` values side by side (`cargo test ... -- --nocapture`).
pub fn check_legacy_spec(who: &str, out: &VmOutput) {
    let r = out.report();
    let d = || out.describe();
    let lines: Vec<_> = r.entries.iter().filter(|(k, _)| k.starts_with("legacy-spec-")).collect();
    for (k, v) in &lines {
        eprintln!("{who}: {k}: {v}");
    }
    for (k, v) in &lines {
        if k != "legacy-spec-result" {
            assert!(v == "ok" || v.starts_with("info "), "{k}: {v}\n{}", d());
        }
    }
    for name in LEGACY_SPEC_CHECKS {
        assert_eq!(r.get(&format!("legacy-spec-{name}")), Some("ok"), "{name}\n{}", d());
    }
    let checks = lines.iter().filter(|(k, v)| k != "legacy-spec-result" && !v.starts_with("info")).count();
    assert_eq!(checks, LEGACY_SPEC_CHECKS.len(), "{}", d());
    assert_eq!(r.get("legacy-spec-result"), Some("ok"), "{}", d());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_known_values() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn report_parsing() {
        let text = "\x1b[2JSeaBIOS\r\nBooting from ROM..rvmm-probe: boot=pvh\r\ncmdline: a=b rx=5\r\n\
                    e820[0]: 0x0 0x9fc00 1\r\ninitrd: addr=0x1000 size=3 fnv1a=0x12345678\r\nnot a line\r\n\
                    serial-rx: \r\nprobe-result: ok\r\n";
        let r = Report::parse(text);
        assert_eq!(r.get("rvmm-probe"), Some("boot=pvh"));
        assert_eq!(r.get("cmdline"), Some("a=b rx=5"));
        assert_eq!(r.get("e820[0]"), Some("0x0 0x9fc00 1"));
        assert_eq!(r.field("initrd", "size"), Some("3"));
        assert_eq!(r.get("serial-rx"), Some(""));
        assert!(r.ok());
        assert_eq!(Report::parse("no report"), Report::default());
    }

    #[test]
    fn runner_captures_feeds_and_times_out() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo ready; read x; echo got=$x; echo err >&2; exit 3"]);
        let out = VmRunner::new(cmd).send_after("ready", b"hello\n").run().unwrap();
        assert_eq!(out.exit_code(), Some(3), "{}", out.describe());
        assert!(out.stdout.contains("got=hello"));
        assert_eq!(out.stderr.trim(), "err");

        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let out = VmRunner::new(cmd).timeout(Duration::from_millis(200)).run().unwrap();
        assert!(out.timed_out && out.status.is_none());
        assert!(out.elapsed < Duration::from_secs(10));

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo up; exec sleep 30"]);
        let out = VmRunner::new(cmd).stop_when("up").run().unwrap();
        assert!(!out.timed_out && out.status.is_none() && out.elapsed < Duration::from_secs(10));

        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; sleep 0.3; echo two; sleep 0.3"]);
        let out = VmRunner::new(cmd)
            .spawn_after("two", move || tx.send("after two").unwrap())
            .spawn_after("never", move || tx2.send("never").unwrap())
            .run()
            .unwrap();
        assert_eq!(out.exit_code(), Some(0), "{}", out.describe());
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), ["after two"]);
    }
}
