//! The probe's virtio-balloon (token `balloon`) and virtio-vsock (tokens `vsock`,
//! `vsock-listen=Q`) drivers against QEMU 7.2 with TCG, the independent reference.
//!
//! - Balloon: QEMU's own device (`virtio-balloon-pci`, which has no MSI-X, on q35 with
//!   polling and INTx; `virtio-balloon-device` on microvm without ACPI), steered
//!   through QMP (`balloon`, `query-balloon`, `qom-get guest-stats`) as a management
//!   tool would.
//! - vsock: QEMU has no user-space vsock device, only vhost-vsock (needs the kernel's
//!   /dev/vhost-vsock, which the project's machines lack) and vhost-user-vsock, whose
//!   device runs in a separate program: rust-vmm's `vhost-device-vsock`
//!   (`cargo install vhost-device-vsock`), found through `$RVMM_VHOST_DEVICE_VSOCK` or
//!   `PATH`. It uses the same Unix-socket convention as rvmm (`PATH_P`, `CONNECT P`).
//!   Without it those cases skip with a notice.
//!
//! Each case skips with a notice if QEMU is not installed.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rvmm_tests::{find_in_path, qemu_probe_command, qemu_x86_64, QemuProbe, Report, VmOutput, VmRunner};

const TIMEOUT: Duration = Duration::from_secs(90);
const MIB: u64 = 1 << 20;
/// Guest RAM of every case (QemuProbe's default, 256 MiB).
const RAM: u64 = 256 * MIB;

fn qemu_or_skip(test: &str) -> Option<PathBuf> {
    let q = qemu_x86_64();
    if q.is_none() {
        eprintln!("SKIPPED {test}: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
    }
    q
}

/// A scratch directory for one test's sockets, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let name = format!("rvmm-{test}-{}", std::process::id());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        // Socket paths below must fit in sockaddr_un (108 bytes).
        let p = if dir.join(&name).as_os_str().len() < 80 { dir.join(&name) } else { std::env::temp_dir().join(&name) };
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn probe<'a>(machine: &'a str, tokens: &'a str, extra: Vec<String>) -> QemuProbe<'a> {
    let mut p = QemuProbe::new(Path::new(rvmm_probes::PVH_ELF));
    p.machine = machine;
    p.append = Some(tokens);
    if machine.starts_with("microvm") {
        p.extra.extend(["-global".to_string(), "virtio-mmio.force-legacy=false".to_string()]);
    }
    p.extra.extend(extra);
    p
}

fn run(test: &str, qemu: &Path, p: &QemuProbe<'_>, runner: impl FnOnce(VmRunner) -> VmRunner) -> VmOutput {
    let out = runner(VmRunner::new(qemu_probe_command(qemu, p)).timeout(TIMEOUT)).run().expect("spawn qemu");
    assert!(!out.timed_out, "QEMU timed out\n{}", out.describe());
    eprintln!("{test}: QEMU run took {:?}", out.elapsed);
    for line in out.stdout.lines().filter(|l| l.starts_with("balloon") || l.starts_with("vsock")) {
        eprintln!("{test}: {}", line.trim_end());
    }
    out
}

fn check_ok(r: &Report, out: &VmOutput, key: &str) {
    assert_eq!(r.get(key), Some("ok"), "{}", out.describe());
    assert_eq!(r.get("probe-result"), Some("ok"), "{}", out.describe());
    assert_eq!(out.exit_code(), Some(1), "debug-exit status 0 expected\n{}", out.describe());
}

// ---- virtio-balloon through QMP ----

/// A minimal QMP client: one command at a time, events collected on the side.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<String>,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Qmp, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(format!("QMP connect: {e}")),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut q = Qmp { reader: BufReader::new(stream), writer, events: Vec::new() };
        let greeting = q.line()?;
        if !greeting.contains("\"QMP\"") {
            return Err(format!("QMP greeting: {greeting}"));
        }
        q.execute(r#"{"execute":"qmp_capabilities"}"#)?;
        Ok(q)
    }

    fn line(&mut self) -> Result<String, String> {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) => Err("QMP closed".into()),
            Ok(_) => Ok(l),
            Err(e) => Err(format!("QMP read: {e}")),
        }
    }

    /// Sends one command; returns its `return` line (an `error` is an Err).
    fn execute(&mut self, cmd: &str) -> Result<String, String> {
        self.writer.write_all(format!("{cmd}\n").as_bytes()).map_err(|e| format!("QMP write: {e}"))?;
        loop {
            let l = self.line()?;
            if l.contains("\"return\"") {
                return Ok(l);
            }
            if l.contains("\"error\"") {
                return Err(format!("{cmd}: {l}"));
            }
            self.events.push(l);
        }
    }

    /// `query-balloon`'s `actual`: guest RAM less the balloon, in bytes.
    fn actual(&mut self) -> Result<u64, String> {
        let l = self.execute(r#"{"execute":"query-balloon"}"#)?;
        json_u64(&l, "actual").ok_or(format!("query-balloon: {l}"))
    }

    /// Polls `query-balloon` until `actual` is `want` (at most `limit`).
    fn wait_actual(&mut self, want: u64, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let a = self.actual()?;
            if a == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("query-balloon actual stayed {a}, want {want}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The number after `"key":` in a line of JSON.
fn json_u64(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = line[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// What the QMP side of a balloon case saw.
#[derive(Debug, Default)]
struct BalloonHost {
    /// `query-balloon` actual after the inflation (RAM less N pages).
    inflated_actual: u64,
    /// `query-balloon` actual after the deflation, if QEMU was still there to ask.
    deflated_actual: Option<u64>,
    /// `qom-get guest-stats` after the inflation.
    guest_stats: String,
    /// QMP events seen (BALLOON_CHANGE).
    events: Vec<String>,
}

/// Steers the balloon from QMP once the probe has touched its pages: target RAM - N
/// pages, wait until the guest reports it (actual), read its statistics, then target all
/// of RAM again and wait for the deflation.
fn drive_balloon(qmp_path: &Path, pages: u64, poll_stats: bool) -> Result<BalloonHost, String> {
    let mut q = Qmp::connect(qmp_path)?;
    let dev = "/machine/peripheral/balloon0";
    if poll_stats {
        // QEMU then hands the stats buffer back every second: the driver must answer.
        q.execute(&format!(
            r#"{{"execute":"qom-set","arguments":{{"path":"{dev}","property":"guest-stats-polling-interval","value":1}}}}"#
        ))?;
        thread::sleep(Duration::from_millis(2500));
    }
    let target = RAM - pages * 4096;
    q.execute(&format!(r#"{{"execute":"balloon","arguments":{{"value":{target}}}}}"#))?;
    q.wait_actual(target, Duration::from_secs(20))?;
    let guest_stats =
        q.execute(&format!(r#"{{"execute":"qom-get","arguments":{{"path":"{dev}","property":"guest-stats"}}}}"#))?;
    q.execute(&format!(r#"{{"execute":"balloon","arguments":{{"value":{RAM}}}}}"#))?;
    // The probe deflates, checks and exits at once, and QEMU with it: QMP may be gone
    // before it shows `actual` back at all of RAM (the probe's report shows the deflation).
    let deflated_actual = match q.wait_actual(RAM, Duration::from_secs(20)) {
        Ok(()) => Some(RAM),
        Err(e) if e.contains("closed") || e.contains("Broken pipe") || e.contains("reset") => None,
        Err(e) => return Err(e),
    };
    Ok(BalloonHost { inflated_actual: target, deflated_actual, guest_stats, events: q.events })
}

fn balloon_case(test: &str, machine: &str, device: &str, tokens: &str, pages: u64, poll_stats: bool) -> Option<Report> {
    let qemu = qemu_or_skip(test)?;
    let dir = TempDir::new(test);
    let qmp_path = dir.0.join("qmp.sock");
    let extra = vec![
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", qmp_path.display()),
        "-device".to_string(),
        format!("{device},id=balloon0"),
    ];
    let tokens = format!("{tokens} balloon-pages={pages} balloon-wait=20");
    let p = probe(machine, &tokens, extra);
    let (tx, rx) = mpsc::channel();
    let out = run(test, &qemu, &p, |r| {
        r.spawn_after("balloon-ready:", move || {
            let _ = tx.send(drive_balloon(&qmp_path, pages, poll_stats));
        })
    });
    let host = rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("the probe never reported balloon-ready\n{}", out.describe()))
        .unwrap_or_else(|e| panic!("QMP: {e}\n{}", out.describe()));
    let r = out.report();
    check_ok(&r, &out, "balloon-result");
    let n = pages.to_string();
    assert_eq!(r.field("balloon-ready", "pages"), Some(n.as_str()), "{}", out.describe());
    assert_eq!(r.get("balloon-target"), Some(n.as_str()), "{}", out.describe());
    assert_eq!(r.get("balloon-inflated"), Some(n.as_str()), "{}", out.describe());
    assert_eq!(r.get("balloon-deflated"), Some(n.as_str()), "{}", out.describe());
    // QEMU took the guest's `actual` (RAM - N pages, then all of RAM).
    assert_eq!(host.inflated_actual, RAM - pages * 4096);
    assert!(host.deflated_actual.is_none_or(|a| a == RAM), "{host:?}");
    assert!(host.events.iter().any(|e| e.contains("BALLOON_CHANGE")), "{host:?}");
    // QEMU discards inflated pages (MADV_DONTNEED): they come back as zeros.
    assert_eq!(r.get("balloon-reuse"), Some(format!("zero={n} kept=0 other=0").as_str()), "{}", out.describe());
    // STATS_VQ: the guest's figures reached QEMU.
    let driver = r
        .get("balloon-driver-features")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0);
    assert_eq!(driver & (1 << 32 | 1 << 1), 1 << 32 | 1 << 1, "VERSION_1 and STATS_VQ\n{}", out.describe());
    let total = json_u64(&host.guest_stats, "stat-total-memory").unwrap_or(0);
    let free = json_u64(&host.guest_stats, "stat-free-memory").unwrap_or(0);
    assert!(total > 200 * MIB && total <= RAM && free > 0 && free < total, "{}", host.guest_stats);
    assert_eq!(json_u64(&host.guest_stats, "stat-swap-in"), Some(0), "{}", host.guest_stats);
    if poll_stats {
        let requests: u64 = r.field("balloon-stats", "requests").and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!(requests >= 1, "QEMU polled the statistics, the driver answered\n{}", out.describe());
    }
    Some(r)
}

#[test]
fn balloon_pci_polling() {
    if let Some(r) =
        balloon_case("balloon_pci_polling", "q35", "virtio-balloon-pci,disable-legacy=on", "balloon", 1024, true)
    {
        assert!(r.get("balloon-transport").is_some_and(|v| v.ends_with(" 1af4:1045")), "{r:?}");
        assert_eq!(r.get("balloon-irq"), Some("poll"));
        assert_eq!(r.get("balloon-area"), Some("0x4000000 pages=1024"));
    }
}

#[test]
fn balloon_pci_intx() {
    let tokens = "balloon intx";
    if let Some(r) =
        balloon_case("balloon_pci_intx", "q35", "virtio-balloon-pci,disable-legacy=on", tokens, 4096, false)
    {
        assert!(r.get("balloon-irq").is_some_and(|v| v.starts_with("intx pin=A line=")), "{r:?}");
        assert!(r.field("balloon-irqs", "config").is_some());
    }
}

#[test]
fn balloon_mmio_irq() {
    let tokens = "mmio balloon intx";
    if let Some(r) = balloon_case("balloon_mmio_irq", "microvm,acpi=off", "virtio-balloon-device", tokens, 2048, false)
    {
        assert_eq!(r.get("balloon-transport"), Some("mmio 0xfeb00e00 irq=12"));
        assert_eq!(r.get("balloon-irq"), Some("mmio irq=12 gsi=12 trigger=level"));
        // Only the balloon was asked for: `mmio` alone would have meant the block device.
        assert!(r.get("blk-result").is_none());
    }
}

#[test]
fn balloon_mmio_polling() {
    let tokens = "mmio balloon";
    balloon_case("balloon_mmio_polling", "microvm,acpi=off", "virtio-balloon-device", tokens, 1024, false);
}

// ---- virtio-vsock through vhost-user ----

fn vhost_device_vsock(test: &str) -> Option<PathBuf> {
    let p =
        std::env::var_os("RVMM_VHOST_DEVICE_VSOCK").map(PathBuf::from).or_else(|| find_in_path("vhost-device-vsock"));
    if p.is_none() {
        eprintln!(
            "SKIPPED {test}: no user-space vsock device for QEMU's vhost-user-vsock \
             (cargo install vhost-device-vsock, or set RVMM_VHOST_DEVICE_VSOCK)"
        );
    }
    p
}

/// The vhost-user device process, killed on drop (it outlives QEMU's disconnect).
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const GUEST_CID: u32 = 5;

fn start_vsock_device(bin: &Path, dir: &Path) -> Daemon {
    let socket = dir.join("vhost.sock");
    let child = Command::new(bin)
        .arg("--guest-cid")
        .arg(GUEST_CID.to_string())
        .arg("--socket")
        .arg(&socket)
        .arg("--uds-path")
        .arg(dir.join("v.sock"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("device.log")).unwrap())
        .spawn()
        .expect("spawn vhost-device-vsock");
    let d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "vhost-device-vsock did not create {}", socket.display());
        thread::sleep(Duration::from_millis(20));
    }
    d
}

/// Serves one connection on `path`: echoes everything until EOF, returns what came.
fn echo_server(path: &Path) -> mpsc::Receiver<Result<Vec<u8>, String>> {
    let listener = UnixListener::bind(path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let result = (|| {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut s = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            s.set_nonblocking(false).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return Ok(got),
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        s.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                    }
                    Err(e) => return Err(format!("read after {} bytes: {e}", got.len())),
                }
            }
        })();
        let _ = tx.send(result);
    });
    rx
}

/// A host client of guest port `port`: `CONNECT`, the `OK` line, `data`, then the echo
/// of all of it and EOF. It does not half-close: vhost-device-vsock turns a host EOF
/// into a SHUTDOWN with both flags, after which the guest could not echo the rest.
fn host_client(uds: &Path, port: u32, data: &[u8]) -> Result<(String, Vec<u8>), String> {
    // The device may still be starting when the probe listens (it activates its queues
    // after the driver's DRIVER_OK) and then closes the client: try again for a while.
    let mut tries = 0;
    let (mut s, line) = loop {
        tries += 1;
        match connect_line(uds, port) {
            Ok(ok) => break ok,
            Err(e) if tries >= 20 => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(250)),
        }
    };
    s.write_all(data).map_err(|e| e.to_string())?;
    let mut echoed = Vec::new();
    s.read_to_end(&mut echoed).map_err(|e| format!("reading the echo after {} bytes: {e}", echoed.len()))?;
    Ok((line, echoed))
}

/// Connects to `uds`, sends `CONNECT port` and reads the answer line.
fn connect_line(uds: &Path, port: u32) -> Result<(UnixStream, String), String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect {}: {e}", uds.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match s.read(&mut b) {
            Ok(1) => line.push(b[0]),
            Ok(_) => return Err(format!("EOF after {:?}", String::from_utf8_lossy(&line))),
            Err(e) => return Err(format!("reading the OK line: {e}")),
        }
    }
    Ok((s, String::from_utf8_lossy(&line).into_owned()))
}

/// A bug of vhost-device-vsock 0.3.0, not of the probe: when a connection ends, a
/// second event queued for it finds it gone, and `recv_pkt` (thread_backend.rs) then
/// returns Ok without writing a header, so the device hands the guest an rx buffer it
/// never wrote, with used length 44. The probe clears each buffer's header before
/// posting it and fails on such a packet; this is its reason.
const UNWRITTEN: &str = "rx buffer returned unwritten (all-zero header)";

/// vsock-result ok, or failed only through the device bug above (reported, tolerated).
fn check_vsock_ok(test: &str, r: &Report, out: &VmOutput) {
    let unwritten = format!("fail {UNWRITTEN}");
    if r.get("vsock-result") == Some(unwritten.as_str()) {
        eprintln!("NOTE {test}: vhost-device-vsock returned an rx buffer it did not write (its known bug)");
        assert_eq!(r.get("probe-result"), Some(format!("fail vsock: {UNWRITTEN}").as_str()), "{}", out.describe());
        assert_eq!(out.exit_code(), Some(3), "debug-exit status 1 expected\n{}", out.describe());
    } else {
        check_ok(r, out, "vsock-result");
    }
}

/// QEMU with a vhost-user-vsock device (its RAM shared with the device process).
fn vsock_qemu_args(machine: &str, dir: &Path) -> (String, Vec<String>) {
    let mmio = machine.starts_with("microvm");
    let device =
        if mmio { "vhost-user-vsock-device,chardev=vs0" } else { "vhost-user-vsock-pci,chardev=vs0,disable-legacy=on" };
    let extra = vec![
        "-object".to_string(),
        format!("memory-backend-memfd,id=mem,size={}M,share=on", RAM / MIB),
        "-chardev".to_string(),
        format!("socket,id=vs0,path={}", dir.join("vhost.sock").display()),
        "-device".to_string(),
        device.to_string(),
    ];
    (format!("{machine},memory-backend=mem"), extra)
}

/// What the device process logs when QEMU's vhost-user start-up did not reach it
/// (no memory table, so no queues): a start-up race between QEMU and
/// vhost-device-vsock, seen now and then on a loaded 2-core machine. The guest then
/// sees a device that never answers; such a run is tried once more.
const NOT_STARTED: &str = "before vring initialization";

/// The host side of a vsock case: `setup` runs before QEMU starts (given the device's
/// socket path), `host` once the console shows `trigger` (given that path and what
/// `setup` returned).
type Setup<S> = fn(&Path) -> S;

/// One run of a vsock case: QEMU with its own device process. Returns the console,
/// the device's log and the result of `host`.
fn vsock_run<S: Send + 'static, T: Send + 'static>(
    test: &str,
    (qemu, bin): (&Path, &Path),
    (machine, tokens, trigger): (&str, &str, &str),
    setup: Setup<S>,
    host: impl FnOnce(PathBuf, S) -> T + Send + 'static,
) -> (VmOutput, String, Option<T>) {
    let dir = TempDir::new(test);
    let device = start_vsock_device(bin, &dir.0);
    let (machine, extra) = vsock_qemu_args(machine, &dir.0);
    let (tx, rx) = mpsc::channel();
    let uds = dir.0.join("v.sock");
    let state = setup(&uds);
    let out = run(test, qemu, &probe(&machine, tokens, extra), |r| {
        r.spawn_after(trigger, move || {
            let _ = tx.send(host(uds, state));
        })
    });
    drop(device);
    let log = std::fs::read_to_string(dir.0.join("device.log")).unwrap_or_default();
    (out, log, rx.recv_timeout(Duration::from_secs(5)).ok())
}

/// Runs a case, once more if the device never started (see [`NOT_STARTED`]).
fn vsock_retrying<S: Send + 'static, T: Send + 'static>(
    test: &str,
    what: (&str, &str, &str),
    setup: Setup<S>,
    host: impl FnOnce(PathBuf, S) -> T + Send + Clone + 'static,
) -> Option<(VmOutput, String, Option<T>)> {
    let qemu = qemu_or_skip(test)?;
    let bin = vhost_device_vsock(test)?;
    let first = vsock_run(test, (&qemu, &bin), what, setup, host.clone());
    if first.0.report().get("vsock-result") != Some("ok") && first.1.contains(NOT_STARTED) {
        eprintln!("NOTE {test}: vhost-device-vsock never got its queues from QEMU; trying once more");
        return Some(vsock_run(test, (&qemu, &bin), what, setup, host));
    }
    Some(first)
}

fn vsock_connect_case(test: &str, machine: &str, tokens: &str) -> Option<Report> {
    // The echo server is bound before QEMU starts; its result is collected at once.
    let bind: Setup<mpsc::Receiver<Result<Vec<u8>, String>>> = |uds| {
        let mut port = uds.as_os_str().to_owned();
        port.push("_1234");
        echo_server(Path::new(&port))
    };
    let (out, log, served) =
        vsock_retrying(test, (machine, tokens, ""), bind, |_, served| served.recv_timeout(Duration::from_secs(40)))?;
    let r = out.report();
    let ctx = format!("{}\n--- vhost-device-vsock ---\n{log}", out.describe());
    check_vsock_ok(test, &r, &out);
    assert_eq!(r.get("vsock-cid"), Some(GUEST_CID.to_string().as_str()), "{ctx}");
    assert_eq!(r.get("vsock-connect"), Some("ok"), "{ctx}");
    assert_eq!(r.get("vsock-echo"), Some("ok"), "{ctx}");
    assert_eq!(r.get("vsock-connect-close"), Some("rst"), "{ctx}");
    let got = served.and_then(|r| r.ok()).expect("echo server result");
    assert_eq!(got.as_deref(), Ok(&b"ping from guest\n"[..]), "{ctx}");
    Some(r)
}

fn vsock_listen_case(test: &str, machine: &str, tokens: &str) -> Option<Report> {
    let tokens = format!("{tokens} vsock-listen=5000 vsock-bytes=10000 vsock-wait=30");
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let sent = data.clone();
    let what = (machine, tokens.as_str(), "vsock-listen: port=5000");
    let (out, log, client) = vsock_retrying(test, what, |_| (), move |uds, ()| host_client(&uds, 5000, &sent))?;
    let ctx = format!("{}\n--- vhost-device-vsock ---\n{log}", out.describe());
    let (line, echoed) = client
        .unwrap_or_else(|| panic!("the probe never listened\n{ctx}"))
        .unwrap_or_else(|e| panic!("host client: {e}\n{ctx}"));
    let r = out.report();
    check_vsock_ok(test, &r, &out);
    assert!(line.starts_with("OK "), "{line:?}");
    assert_eq!(r.get("vsock-accept"), Some("ok bytes=10000"), "{ctx}");
    assert!(echoed == data, "the echo differs ({} bytes)\n{ctx}", echoed.len());
    assert_eq!(r.get("vsock-accept-close"), Some("rst"), "{ctx}");
    Some(r)
}

#[test]
fn vsock_pci_connect_polling() {
    vsock_connect_case("vsock_pci_connect_polling", "q35", "vsock");
}

#[test]
fn vsock_pci_connect_and_listen_msix() {
    if let Some(r) = vsock_connect_case("vsock_pci_connect_msix", "q35", "vsock msix") {
        assert!(r.get("vsock-irq").is_some_and(|v| v.starts_with("msix ")), "{r:?}");
    }
    if let Some(r) = vsock_listen_case("vsock_pci_listen_msix", "q35", "msix") {
        let out_irqs = r.get("vsock-irqs").and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
        assert!(out_irqs.is_some_and(|n| n >= 1), "{r:?}");
    }
}

#[test]
fn vsock_pci_listen_intx() {
    vsock_listen_case("vsock_pci_listen_intx", "q35", "intx");
}

#[test]
fn vsock_mmio_connect_irq() {
    if let Some(r) = vsock_connect_case("vsock_mmio_connect_irq", "microvm,acpi=off", "mmio vsock intx") {
        assert_eq!(r.get("vsock-transport"), Some("mmio 0xfeb00e00 irq=12"));
    }
}
