//! virtio-vsock and virtio-balloon end to end: the probe guest's drivers (tokens
//! `vsock`, `vsock-listen=Q` and `balloon`; see probes/README.md) drive rvmm's
//! devices.
//!
//! - vsock, guest to host: an echo server on the Unix socket `PATH_1234`, the
//!   guest connects to host port 1234, sends a line and reads it back.
//! - vsock, host to guest: a client connects to `PATH`, sends `CONNECT 5000`, and
//!   the guest echoes 10,000 bytes through a 2 KiB receive window (credit updates).
//! - balloon: the guest touches 16 MiB of its RAM, the host asks for it with
//!   `rvmm ctl SOCKET balloon 16`, and rvmm's resident memory falls by that much
//!   (MADV_DONTNEED); then `balloon 0` gives it back.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rvmm_tests::{Report, VmRunner};

const PING: &[u8] = b"ping from guest\n";

/// A fresh directory for one case's sockets (rvmm creates `v.sock` there).
fn socket_dir(tag: &str) -> PathBuf {
    let dir = scratch(tag);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Serves one connection on `path`: echoes everything until EOF and returns what
/// it received (or an error description), within `limit`.
fn echo_server(path: &Path, limit: Duration) -> mpsc::Receiver<Result<Vec<u8>, String>> {
    let listener = UnixListener::bind(path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        let result = (|| {
            let mut stream = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return Err("nobody connected".to_string());
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e.to_string()),
                }
            };
            stream.set_nonblocking(false).map_err(|e| e.to_string())?;
            stream.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        stream.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                    }
                    Err(e) => return Err(format!("read after {} bytes: {e}", got.len())),
                }
            }
            Ok(got)
        })();
        let _ = tx.send(result);
    });
    rx
}

fn vsock_stat(r: &Report, name: &str) -> (u64, u64) {
    let v = r.field("vsock-stats", name).unwrap_or("");
    let (a, b) = v.split_once('/').unwrap_or(("", ""));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

fn guest_connects(tag: &str, tokens: &str, transport: &str) {
    let dir = socket_dir(tag);
    let uds = dir.join("v.sock");
    let served = echo_server(&dir.join("v.sock_1234"), Duration::from_secs(20));
    let spec = format!("cid=3,uds={}{transport}", uds.display());
    let out = run(&["--kernel", rvmm_probes::PVH_ELF, "--vsock", &spec, "--cmdline", tokens]);
    let r = out.report();
    assert_eq!(r.get("vsock-cid"), Some("3"), "{tokens}\n{}", out.describe());
    assert_eq!(r.get("vsock-connect"), Some("ok"), "{tokens}\n{}", out.describe());
    assert_eq!(r.field("vsock-peer", "port"), Some("1234"), "{}", out.describe());
    assert_eq!(r.field("vsock-peer", "buf_alloc"), Some("262144"), "{}", out.describe());
    assert_eq!(r.get("vsock-echo"), Some("ok"), "{tokens}\n{}", out.describe());
    // SHUTDOWN with both flags, answered by the device's RST.
    assert_eq!(r.get("vsock-connect-close"), Some("rst"), "{tokens}\n{}", out.describe());
    // The guest consumed the echo and said so.
    assert!(vsock_stat(&r, "credit-update").0 >= 1, "{}", out.describe());
    assert_eq!(r.get("vsock-result"), Some("ok"), "{tokens}\n{}", out.describe());
    assert_exit(&out, 0);
    let got = served.recv_timeout(Duration::from_secs(20)).expect("echo server result");
    assert_eq!(got.as_deref(), Ok(PING), "what the host-side server received\n{}", out.describe());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vsock_guest_connects_to_a_host_echo_server() {
    guest_connects("vsock-g2h", "vsock", "");
}

#[test]
fn vsock_guest_connects_with_msix_and_over_mmio() {
    guest_connects("vsock-g2h-msix", "vsock msix", "");
    guest_connects("vsock-g2h-mmio", "mmio vsock intx", ",transport=mmio");
}

#[test]
fn vsock_connect_to_a_port_nobody_listens_on_is_refused() {
    let dir = socket_dir("vsock-refused");
    let spec = format!("cid=3,uds={}", dir.join("v.sock").display());
    let out = run(&["--kernel", rvmm_probes::PVH_ELF, "--vsock", &spec, "--cmdline", "vsock vsock-port=4321"]);
    let r = out.report();
    assert_eq!(r.get("vsock-connect"), Some("fail refused (RST)"), "{}", out.describe());
    assert_eq!(r.get("vsock-result"), Some("fail connect: refused (RST)"), "{}", out.describe());
    assert_exit(&out, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the host-side client of a host-to-guest connection saw.
#[derive(Debug)]
struct ClientResult {
    ok_line: String,
    echoed: Vec<u8>,
}

fn host_client(uds: PathBuf, port: u32, data: Vec<u8>) -> Result<ClientResult, String> {
    let mut s = UnixStream::connect(&uds).map_err(|e| format!("connect {}: {e}", uds.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).map_err(|e| e.to_string())?;
    // The answer line, byte by byte: the echo follows it on the same stream.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match s.read(&mut b) {
            Ok(1) => line.push(b[0]),
            Ok(_) => return Err(format!("EOF after {:?}", String::from_utf8_lossy(&line))),
            Err(e) => return Err(format!("reading the OK line: {e}")),
        }
    }
    s.write_all(&data).map_err(|e| e.to_string())?;
    s.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
    let mut echoed = Vec::new();
    s.read_to_end(&mut echoed).map_err(|e| format!("reading the echo after {} bytes: {e}", echoed.len()))?;
    Ok(ClientResult { ok_line: String::from_utf8_lossy(&line).into_owned(), echoed })
}

fn host_connects(tag: &str, tokens: &str) {
    let dir = socket_dir(tag);
    let uds = dir.join("v.sock");
    let spec = format!("cid=3,uds={}", uds.display());
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let (tx, rx) = mpsc::channel();
    let sent = data.clone();
    let out = VmRunner::new(rvmm_run(&["--kernel", rvmm_probes::PVH_ELF, "--vsock", &spec, "--cmdline", tokens]))
        .timeout(TIMEOUT)
        .spawn_after("vsock-listen: port=5000", move || {
            let _ = tx.send(host_client(uds, 5000, sent));
        })
        .run()
        .unwrap();
    let client = rx.recv_timeout(Duration::from_secs(5)).expect("the client ran").unwrap_or_else(|e| {
        panic!("host client: {e}\n{}", out.describe());
    });
    let r = out.report();
    // `OK <host port>`: rvmm numbers host ports from 1024, and the guest saw that port.
    let port = client.ok_line.strip_prefix("OK ").and_then(|p| p.trim_end().parse::<u32>().ok());
    assert!(port.is_some_and(|p| p >= 1024), "OK line {:?}\n{}", client.ok_line, out.describe());
    assert_eq!(r.field("vsock-peer", "port"), Some(port.unwrap().to_string().as_str()), "{}", out.describe());
    assert_eq!(r.get("vsock-accept"), Some("ok bytes=10000"), "{tokens}\n{}", out.describe());
    assert_eq!(client.echoed.len(), data.len(), "{}", out.describe());
    assert!(client.echoed == data, "the echo differs\n{}", out.describe());
    assert_eq!(r.get("vsock-accept-close"), Some("rst"), "{}", out.describe());
    // 10,000 bytes through a 2 KiB window: the device ran out of credit and asked, and
    // the guest advertised what it consumed.
    let (updates_sent, _) = vsock_stat(&r, "credit-update");
    let (_, requests_got) = vsock_stat(&r, "credit-request");
    assert!(updates_sent >= 1 && requests_got >= 1, "{}", out.describe());
    assert_eq!(r.get("vsock-result"), Some("ok"), "{tokens}\n{}", out.describe());
    assert_exit(&out, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vsock_host_connects_to_a_listening_guest() {
    host_connects("vsock-h2g", "vsock-listen=5000");
}

#[test]
fn vsock_host_connects_with_msix() {
    host_connects("vsock-h2g-msix", "vsock-listen=5000 msix");
}

/// rvmm with piped stdout whose console text is collected by a thread, so a test can
/// wait for several lines in turn while the VM runs.
struct LiveVm {
    child: Child,
    console: Arc<(Mutex<String>, Condvar)>,
}

impl LiveVm {
    fn spawn(args: &[&str]) -> LiveVm {
        let mut child = rvmm_run(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rvmm");
        let console = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let stdout = child.stdout.take().unwrap();
        let c = console.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                c.0.lock().unwrap().push_str(&line);
                c.1.notify_all();
                line.clear();
            }
        });
        LiveVm { child, console }
    }

    fn text(&self) -> String {
        self.console.0.lock().unwrap().clone()
    }

    /// Waits until the console shows `what`; panics with the console after `limit`.
    fn wait_for(&mut self, what: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let (lock, cvar) = &*self.console;
        let mut text = lock.lock().unwrap();
        while !text.contains(what) {
            let now = Instant::now();
            if now >= deadline {
                let t = text.clone();
                drop(text);
                let _ = self.child.kill();
                panic!("no {what:?} on the console within {limit:?}:\n{t}");
            }
            text = cvar.wait_timeout(text, (deadline - now).min(Duration::from_millis(50))).unwrap().0;
        }
    }

    /// VmRSS of the rvmm process, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for LiveVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctl(socket: &Path, words: &[&str]) -> String {
    let out = Command::new(RVMM).arg("ctl").arg(socket).args(words).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "rvmm ctl {words:?}: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn balloon_releases_memory(tag: &str, tokens: &str, extra: &[&str]) {
    let socket = scratch(&format!("{tag}.sock"));
    let _ = std::fs::remove_file(&socket);
    let mut args = vec![
        "--kernel",
        rvmm_probes::PVH_ELF,
        "--memory",
        "256M",
        "--balloon",
        "--api-socket",
        socket.to_str().unwrap(),
        "--cmdline",
        tokens,
    ];
    args.extend_from_slice(extra);
    let mut vm = LiveVm::spawn(&args);
    let limit = Duration::from_secs(20);
    // The guest wrote all 4096 pages: they are resident in rvmm.
    vm.wait_for("balloon-ready: pages=4096", limit);
    let before = vm.rss_kib();
    let answer = ctl(&socket, &["balloon", "16"]);
    assert!(answer.starts_with("ok target=16 MiB"), "{answer}");
    vm.wait_for("balloon-inflated: 4096", limit);
    let inflated = vm.rss_kib();
    assert!(
        before >= inflated + 12 * 1024,
        "rvmm's RSS fell from {before} KiB only to {inflated} KiB after inflating 16 MiB\n{}",
        vm.text()
    );
    let answer = ctl(&socket, &["balloon"]);
    assert!(answer.contains("actual=16 MiB") && answer.contains("inflated_pages=4096"), "{answer}");
    // The guest posted statistics with its total and free memory (tags 5 and 4).
    let stats = ctl(&socket, &["balloon-stats"]);
    let tag = |t: &str| -> u64 {
        stats.split_whitespace().find_map(|f| f.strip_prefix(t)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    assert!(tag("5=") > 200 << 20 && tag("4=") > 0 && tag("4=") < tag("5="), "{stats}");

    let answer = ctl(&socket, &["balloon", "0"]);
    assert!(answer.starts_with("ok target=0 MiB"), "{answer}");
    vm.wait_for("balloon-deflated: 4096", limit);
    vm.wait_for("probe-result:", limit);
    let text = vm.text();
    let r = Report::parse(&text);
    assert_eq!(r.get("balloon-target"), Some("4096"), "{text}");
    // MADV_DONTNEED: the pages the guest uses again come back as zeros.
    assert_eq!(r.get("balloon-reuse"), Some("zero=4096 kept=0 other=0"), "{text}");
    assert_eq!(r.get("balloon-result"), Some("ok"), "{text}");
    assert_eq!(r.get("probe-result"), Some("ok"), "{text}");
    // Touched again, they are resident again.
    let reused = vm.rss_kib();
    assert!(reused >= inflated + 12 * 1024, "RSS {inflated} KiB -> {reused} KiB after reuse\n{text}");
    let answer = ctl(&socket, &["balloon"]);
    assert!(answer.contains("target=0 MiB actual=0 MiB inflated_pages=4096 deflated_pages=4096"), "{answer}");
    assert_eq!(ctl(&socket, &["quit"]), "ok");
    let status = vm.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
}

#[test]
fn balloon_gives_16_mib_back_to_the_host() {
    balloon_releases_memory("balloon-rss", "balloon balloon-pages=4096 balloon-wait=20 msix echo", &[]);
}

#[test]
fn balloon_over_mmio_with_intx() {
    balloon_releases_memory(
        "balloon-mmio",
        "mmio balloon balloon-pages=4096 balloon-wait=20 intx echo",
        &["--transport", "mmio"],
    );
}
