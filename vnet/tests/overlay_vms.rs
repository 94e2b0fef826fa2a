//! `rvmm net` end to end with real VMs at the ports: each endpoint is an `rvmm run`
//! of the probe guest (crate `rvmm-probes`, token `net`: ARP, ping, and answering
//! ARP and ping while it serves) on a virtio-net device attached with
//! `--net port=NAME,state=DIR`, started inside the namespace that plays its compute
//! node. `overlay.rs` covers the same paths with namespace stand-ins at the taps.
//!
//! ```text
//!   vm1 (198.51.100.10, no floating IP)              vm2 (198.51.100.11, fip 203.0.113.20)
//!        | tap (rvmm virtio-net)                          | tap (rvmm virtio-net)
//!   [compute1 192.0.2.11] ------ [underlay bridge] ------ [compute2 192.0.2.12]
//!                                       |
//!                              [netnode 192.0.2.20] -- qrouter-R (203.0.113.10) -- ext0
//!                                                                                    |
//!                                                             [external 203.0.113.100]
//! ```
//!
//! Every test builds its own lab (uniquely named namespaces, state directory and
//! description file, applied with `rvmm net apply --node N --netns NS --state-dir DIR`)
//! and tears it down in `Drop`, VMs first; every VM run is limited to 60 s and killed
//! on drop. The tests run one at a time (a lock), since each boots VMs. They need root,
//! `ip`, `nft`, `tcpdump` (and `ping` for one), /dev/net/tun and /dev/kvm; without them
//! they print a notice and pass. They run the `rvmm` binary next to the test
//! executable (`target/<profile>/rvmm`, which `cargo test --workspace` builds), and
//! build it with cargo if it is missing.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vnet::{netns, Description};

const VNI: u32 = 2001;
/// The network's MTU in the description: below the derived 1450, so the guest's
/// value can only have come from the description.
const NET_MTU: u32 = 1400;
const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const VM1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const VM2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const VM1_MAC: &str = "52:54:00:00:03:0a";
const VM2_MAC: &str = "52:54:00:00:03:0b";
const FIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const ROUTER_EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const EXT_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 100);

/// The time limit of every VM run.
const VM_TIMEOUT: Duration = Duration::from_secs(60);

/// One lab at a time: each boots VMs, and the probes' waits are timed.
static SERIAL: Mutex<()> = Mutex::new(());

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why the tests cannot run here, if they cannot.
fn skip_reason(tools: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if !missing.is_empty() {
        return Some(format!(
            "missing {} (apt-get install iproute2 nftables tcpdump iputils-ping)",
            missing.join(", ")
        ));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return Some("cannot open /dev/kvm".into());
    }
    None
}

/// Straight to stderr: the test harness captures eprintln! of passing tests.
fn notice(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

macro_rules! skip_unless_ready {
    ($name:expr, $($tool:expr),*) => {
        if let Some(why) = skip_reason(&[$($tool),*]) {
            notice(&format!("SKIPPED {}: {why}", $name));
            return;
        }
    };
}

/// Runs a command, panicking with its output if it fails.
fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `rvmm` binary: `target/<profile>/rvmm`, next to this test's `deps/` directory.
/// Built with cargo (once per test process) if it is not there.
fn rvmm() -> &'static Path {
    static RVMM: OnceLock<PathBuf> = OnceLock::new();
    RVMM.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/overlay_vms-HASH -> target/<profile>/rvmm
        let profile_dir = exe.parent().and_then(Path::parent).expect("test executable outside target/<profile>/deps");
        let bin = profile_dir.join("rvmm");
        if bin.exists() {
            return bin;
        }
        notice(&format!("{} is missing: building it with `cargo build -p rvmm --bin rvmm`", bin.display()));
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace).args(["build", "-p", "rvmm", "--bin", "rvmm"]);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        if let Some(target) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| {
            panic!("{} is missing and cargo cannot be started ({e}): run `cargo build -p rvmm` first", bin.display())
        });
        let mut err = String::new();
        let reader = child.stderr.take().map(|mut s| {
            std::thread::spawn(move || {
                let mut t = String::new();
                let _ = s.read_to_string(&mut t);
                t
            })
        });
        // Bounded: a cargo waiting for the build directory lock would wait forever.
        let deadline = Instant::now() + Duration::from_secs(1200);
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait for cargo") {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if let Some(r) = reader {
            err = r.join().unwrap_or_default();
        }
        assert!(
            status.is_some_and(|s| s.success()) && bin.exists(),
            "{} is missing and `cargo build -p rvmm` did not make it ({}); build it first \
             (`cargo build -p rvmm`, or run `cargo test --workspace`)\n{err}",
            bin.display(),
            match status {
                Some(s) => format!("{s}"),
                None => "timed out".into(),
            }
        );
        bin
    })
}

// ---------------------------------------------------------------------------------
// The lab

/// One lab: namespaces for the hosts and the underlay, the description file and the
/// state directory; torn down on drop.
struct Lab {
    code: String,
    ns_all: Vec<String>,
    router_ns: String,
    state_dir: PathBuf,
    desc_file: PathBuf,
    desc: Description,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("vnvm{}-{role}", self.code)
    }

    /// Node name of a role in the description.
    fn node(&self, role: &str) -> String {
        format!("{role}-{}", self.code)
    }

    /// Port name of a VM (`vm1`, `vm2`).
    fn port(&self, vm: &str) -> String {
        format!("{vm}-{}", self.code)
    }

    fn description_text(code: &str) -> String {
        format!(
            r#"
[[nodes]]
name = "compute1-{code}"
underlay_ip = "192.0.2.11"

[[nodes]]
name = "compute2-{code}"
underlay_ip = "192.0.2.12"

[[nodes]]
name = "netnode-{code}"
underlay_ip = "192.0.2.20"
external_interfaces = {{ public = "ext0" }}

[[external_networks]]
name = "public"
subnet = "203.0.113.0/24"
gateway = "203.0.113.1"

[[networks]]
name = "blue"
vni = {VNI}
subnet = "198.51.100.0/24"
gateway = "{GATEWAY}"
mtu = {NET_MTU}
fdb = "flood"

[[security_groups]]
name = "pingable"
rules = [
  {{ direction = "ingress", protocol = "icmp" }},
  {{ direction = "egress" }},
]

[[ports]]
name = "vm1-{code}"
vm = "vm1"
node = "compute1-{code}"
network = "blue"
mac = "{VM1_MAC}"
ip = "{VM1}"
security_groups = ["pingable"]

[[ports]]
name = "vm2-{code}"
vm = "vm2"
node = "compute2-{code}"
network = "blue"
mac = "{VM2_MAC}"
ip = "{VM2}"
security_groups = ["pingable"]

[[routers]]
name = "r{code}"
node = "netnode-{code}"
networks = ["blue"]
external_network = "public"
external_ip = "{ROUTER_EXT}"
snat = true

[[floating_ips]]
ip = "{FIP}"
port = "vm2-{code}"
"#
        )
    }

    /// Builds the namespaces and the underlay and writes the description; does not
    /// apply it.
    fn new(test: &str) -> Lab {
        let code = format!("{}{}", test, std::process::id() % 100_000);
        let text = Lab::description_text(&code);
        let desc = Description::parse(&text, false, "<test>").expect("test description");
        let tmp = std::env::temp_dir();
        let mut lab = Lab {
            router_ns: format!("qrouter-r{code}"),
            state_dir: tmp.join(format!("vnet-vm-state-{code}")),
            desc_file: tmp.join(format!("vnet-vm-{code}.toml")),
            code,
            ns_all: Vec::new(),
            desc,
        };
        let _ = std::fs::remove_dir_all(&lab.state_dir);
        std::fs::write(&lab.desc_file, text).expect("write the description");
        for role in ["ul", "compute1", "compute2", "netnode", "ext"] {
            let ns = lab.ns(role);
            let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
            sh(&["ip", "netns", "add", &ns]);
            lab.ns_all.push(ns.clone());
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        let ul = lab.ns("ul");
        sh(&["ip", "-n", &ul, "link", "add", "ulbr", "type", "bridge"]);
        sh(&["ip", "-n", &ul, "link", "set", "ulbr", "up"]);
        for (role, ip) in [("compute1", "192.0.2.11"), ("compute2", "192.0.2.12"), ("netnode", "192.0.2.20")] {
            let ns = lab.ns(role);
            let port = format!("p-{role}");
            sh(&["ip", "-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns", &ns]);
            sh(&["ip", "-n", &ul, "link", "set", &port, "master", "ulbr", "up"]);
            sh(&["ip", "-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "ul0"]);
            sh(&["ip", "-n", &ns, "link", "set", "ul0", "up"]);
        }
        let nn = lab.ns("netnode");
        let ext = lab.ns("ext");
        sh(&["ip", "-n", &nn, "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", &ext]);
        sh(&["ip", "-n", &nn, "link", "set", "ext0", "up"]);
        sh(&["ip", "-n", &ext, "addr", "add", &format!("{EXT_HOST}/24"), "dev", "eth0"]);
        sh(&["ip", "-n", &ext, "link", "set", "eth0", "up"]);
        lab
    }

    /// `rvmm net apply FILE --node N --netns NS --state-dir DIR` for every node, the
    /// way an operator would run it on each host.
    fn apply_all(&self) {
        for role in ["compute1", "compute2", "netnode"] {
            let out = sh(&[
                rvmm().to_str().unwrap(),
                "net",
                "apply",
                self.desc_file.to_str().unwrap(),
                "--node",
                &self.node(role),
                "--netns",
                &self.ns(role),
                "--state-dir",
                self.state_dir.to_str().unwrap(),
            ]);
            assert!(out.contains(&format!("apply {}:", self.node(role))), "rvmm net apply {role}: {out}");
        }
    }

    /// The tap `rvmm net apply` made for a VM's port.
    fn tap(&self, vm: &str) -> String {
        vnet::port_tap(vnet::PortSource::StateDir(&self.state_dir), &self.port(vm)).expect("port").tap_name
    }

    /// `rvmm run` of the probe guest inside a compute node's namespace, on the VM's
    /// port, with the probe command line `cmdline`.
    fn start_vm(&self, role: &str, vm: &str, cmdline: &str) -> Vm {
        let net = format!("port={},state={}", self.port(vm), self.state_dir.display());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(role)]).arg(rvmm()).args([
            "run",
            "--kernel",
            rvmm_probes::PVH_ELF,
            "--net",
            &net,
            "--cmdline",
            cmdline,
        ]);
        Vm::spawn(&format!("{vm}@{role}"), cmd)
    }

    /// A capture started inside a namespace (a role, or the router's namespace).
    fn capture(&self, role: &str, filter: &[&str]) -> Capture {
        let ns = if role.starts_with("qrouter-") { role.to_string() } else { self.ns(role) };
        Capture::start(&ns, filter)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = netns::delete(&self.router_ns);
        for ns in self.ns_all.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
        let _ = std::fs::remove_file(&self.desc_file);
    }
}

// ---------------------------------------------------------------------------------
// VMs

#[derive(Default)]
struct Console {
    stdout: String,
    stderr: String,
}

/// A running `rvmm run`; killed (and reaped) on drop.
struct Vm {
    name: String,
    child: Option<Child>,
    console: Arc<Mutex<Console>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
}

/// How a VM run ended.
struct VmRun {
    name: String,
    stdout: String,
    stderr: String,
    status: Option<ExitStatus>,
    elapsed: Duration,
}

impl VmRun {
    /// The probe's report: `key: value` lines from `rvmm-probe:` on (first value of a key).
    fn report(&self) -> HashMap<String, String> {
        let mut r = HashMap::new();
        let start = self.stdout.find("rvmm-probe:").unwrap_or(0);
        for line in self.stdout[start..].lines() {
            if let Some((k, v)) = line.trim_end_matches('\r').split_once(": ") {
                r.entry(k.trim().to_string()).or_insert_with(|| v.trim().to_string());
            }
        }
        r
    }

    fn get(&self, key: &str) -> Option<String> {
        self.report().get(key).cloned()
    }

    fn describe(&self) -> String {
        format!(
            "{}: status={:?} elapsed={:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.name, self.status, self.elapsed, self.stdout, self.stderr
        )
    }

    fn assert_exit_ok(&self) {
        assert!(self.status.is_some(), "the VM did not end within {VM_TIMEOUT:?}\n{}", self.describe());
        assert_eq!(self.status.and_then(|s| s.code()), Some(0), "the probe failed\n{}", self.describe());
    }
}

impl Vm {
    fn spawn(name: &str, mut cmd: Command) -> Vm {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let console = Arc::new(Mutex::new(Console::default()));
        let mut readers = Vec::new();
        for is_stdout in [true, false] {
            let mut stream: Box<dyn Read + Send> =
                if is_stdout { Box::new(child.stdout.take().unwrap()) } else { Box::new(child.stderr.take().unwrap()) };
            let console = console.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let mut c = console.lock().unwrap();
                    if is_stdout {
                        c.stdout.push_str(&text);
                    } else {
                        c.stderr.push_str(&text);
                    }
                }
            }));
        }
        Vm { name: name.to_string(), child: Some(child), console, readers, started: Instant::now() }
    }

    fn stdout(&self) -> String {
        self.console.lock().unwrap().stdout.clone()
    }

    /// Waits until the console shows `text`; false if the VM ended first or the VM's
    /// time limit passed.
    fn wait_for(&mut self, text: &str) -> bool {
        loop {
            if self.stdout().contains(text) {
                return true;
            }
            let ended = self.child.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some());
            if ended || self.started.elapsed() > VM_TIMEOUT {
                // Whatever was printed just before the end.
                std::thread::sleep(Duration::from_millis(100));
                return self.stdout().contains(text);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the VM to end (killing it at its time limit) and returns its output.
    fn finish(mut self) -> VmRun {
        let mut child = self.child.take().unwrap();
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait for rvmm") {
                break Some(st);
            }
            if self.started.elapsed() > VM_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.started.elapsed();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let c = self.console.lock().unwrap();
        let run =
            VmRun { name: self.name.clone(), stdout: c.stdout.clone(), stderr: c.stderr.clone(), status, elapsed };
        eprintln!("  {}: ended after {:.2} s ({:?})", run.name, elapsed.as_secs_f64(), run.status);
        run
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------
// Captures

/// `tcpdump -nn -l -v` inside a namespace; stopped with SIGINT by [`Capture::stop`],
/// killed on drop.
struct Capture {
    child: Option<Child>,
}

impl Capture {
    fn start(ns: &str, filter: &[&str]) -> Capture {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump", "-nn", "-l", "-v"])
            .args(filter)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !line.contains("listening on") {
            line.clear();
            let n = err.read_line(&mut line).unwrap_or(0);
            if n == 0 || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tcpdump {filter:?} in {ns} did not start: {line}");
            }
        }
        // Keep stderr drained.
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Capture { child: Some(child) }
    }

    /// Stops the capture and returns what it printed.
    fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        // Let the last packets be printed.
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let mut text = String::new();
        let mut out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let _ = out.read_to_string(&mut text);
            text
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        reader.join().unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Takes the lock that runs the labs one at a time (also after a failed test).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Progress with timings (shown with `--nocapture`, or when the test fails).
fn timing(test: &str, t0: Instant, what: &str) {
    eprintln!("  {test}: {what} after {:.2} s", t0.elapsed().as_secs_f64());
}

/// The packets of a `tcpdump -v` capture (a packet's lines start at its timestamp)
/// that mention one of `words`: the VXLAN capture is full of IPv6 and IGMP noise.
fn packets_with(text: &str, words: &[&str]) -> String {
    let mut packets: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with(|c: char| c.is_ascii_digit()) || packets.is_empty() {
            packets.push(String::new());
        }
        let p = packets.last_mut().unwrap();
        p.push_str(line);
        p.push('\n');
    }
    packets.into_iter().filter(|p| words.iter().any(|w| p.contains(w))).collect()
}

// ---------------------------------------------------------------------------------

/// vm1 on compute1 pings vm2 on compute2: across the VXLAN overlay, seen on the
/// underlay with the network's VNI.
#[test]
fn vm_pings_vm_on_another_compute_node_over_vxlan() {
    const T: &str = "vm_pings_vm_on_another_compute_node_over_vxlan";
    skip_unless_ready!(T, "ip", "nft", "tcpdump");
    let _serial = serial();
    let t0 = Instant::now();
    let lab = Lab::new("x");
    lab.apply_all();
    timing(T, t0, "lab applied");
    let capture = lab.capture("compute1", &["-i", "ul0", "udp", "port", "4789"]);

    // vm2 first pings its gateway (the router on the network node), then serves.
    let mut vm2 = lab.start_vm("compute2", "vm2", &format!("net msix ip={VM2} peer={GATEWAY} net-serve=6"));
    assert!(vm2.wait_for("net-serve:"), "vm2 did not start serving\n{}", vm2.finish().describe());
    timing(T, t0, "vm2 serving");
    let vm1 = lab.start_vm("compute1", "vm1", &format!("net msix ip={VM1} peer={VM2}"));
    let r1 = vm1.finish();
    timing(T, t0, "vm1 done");
    let r2 = vm2.finish();
    timing(T, t0, "vm2 done");
    let text = capture.stop();
    eprintln!(
        "--- capture on compute1 ul0 (IPv4 ARP and ICMP only) ---\n{}",
        packets_with(&text, &["ARP,", "ICMP echo"])
    );

    assert_eq!(r1.get("net-mac").as_deref(), Some(VM1_MAC), "{}", r1.describe());
    assert_eq!(r1.get("net-arp").as_deref(), Some(VM2_MAC), "vm1 must learn vm2's MAC by ARP\n{}", r1.describe());
    assert_eq!(r1.get("net-ping").as_deref(), Some("ok seq=1 bytes=64"), "{}", r1.describe());
    r1.assert_exit_ok();
    // vm2 answered vm1's ping, and reached its gateway on the network node.
    let served = r2.get("net-stats").unwrap_or_default();
    assert!(
        served.split_whitespace().any(|f| f.strip_prefix("ping-answered=").is_some_and(|n| n != "0")),
        "vm2 answered no ping\n{}",
        r2.describe()
    );
    assert_eq!(r2.get("net-ping").as_deref(), Some("ok seq=1 bytes=64"), "vm2 -> gateway\n{}", r2.describe());
    r2.assert_exit_ok();

    assert!(text.contains(&format!("vni {VNI}")), "no VXLAN packet with VNI {VNI} on the underlay");
    assert!(
        text.contains("192.0.2.11") && text.contains("192.0.2.12.4789"),
        "outer header is not compute1 -> compute2:4789"
    );
    assert!(
        text.contains(&format!("{VM1} > {VM2}: ICMP echo request")),
        "inner vm1 -> vm2 echo request not seen in the VXLAN packets"
    );
    assert!(text.contains(&format!("{VM2} > {VM1}: ICMP echo reply")), "inner vm2 -> vm1 echo reply not seen");
    timing(T, t0, "passed");
}

/// vm1 has no floating IP: it pings the external host through its gateway, the
/// router, and the external host sees the router's SNAT address.
#[test]
fn vm_without_floating_ip_pings_external_host_as_router_snat_address() {
    const T: &str = "vm_without_floating_ip_pings_external_host_as_router_snat_address";
    skip_unless_ready!(T, "ip", "nft", "tcpdump");
    let _serial = serial();
    let t0 = Instant::now();
    let lab = Lab::new("s");
    lab.apply_all();
    timing(T, t0, "lab applied");
    let capture = lab.capture("ext", &["-i", "eth0", "icmp"]);
    let vm1 = lab.start_vm("compute1", "vm1", &format!("net msix ip={VM1} peer={EXT_HOST} gw={GATEWAY}"));
    let r1 = vm1.finish();
    timing(T, t0, "vm1 done");
    let text = capture.stop();
    eprintln!("--- capture on the external host's eth0 ---\n{text}");

    assert!(
        r1.get("net-config").is_some_and(|c| c.contains(&format!("gw={GATEWAY}"))),
        "the probe did not take gw=\n{}",
        r1.describe()
    );
    // The MAC it resolved is the gateway's (the router's internal interface).
    let router_links = sh(&["ip", "-n", &lab.router_ns, "-br", "link"]);
    let arp = r1.get("net-arp").unwrap_or_default();
    assert!(
        arp.len() == 17 && router_links.contains(&arp),
        "net-arp {arp:?} is not a MAC of the router:\n{router_links}\n{}",
        r1.describe()
    );
    assert_eq!(r1.get("net-ping").as_deref(), Some("ok seq=1 bytes=64"), "{}", r1.describe());
    r1.assert_exit_ok();

    assert!(
        text.contains(&format!("{ROUTER_EXT} > {EXT_HOST}: ICMP echo request")),
        "the external host must see vm1's ping from the router's SNAT address {ROUTER_EXT}"
    );
    assert!(text.contains(&format!("{EXT_HOST} > {ROUTER_EXT}: ICMP echo reply")), "no reply to the SNAT address");
    assert!(!text.contains(&VM1.to_string()), "vm1's own address leaked to the external network");
    timing(T, t0, "passed");
}

/// The external host pings vm2 through its floating IP; vm2 sees the external host's
/// real address (DNAT only) and answers through its gateway.
#[test]
fn external_host_pings_vm_through_floating_ip() {
    const T: &str = "external_host_pings_vm_through_floating_ip";
    skip_unless_ready!(T, "ip", "nft", "tcpdump", "ping");
    let _serial = serial();
    let t0 = Instant::now();
    let lab = Lab::new("d");
    lab.apply_all();
    timing(T, t0, "lab applied");
    let tap = lab.tap("vm2");
    let on_ext = lab.capture("ext", &["-i", "eth0", "icmp"]);
    let on_tap = lab.capture("compute2", &["-i", &tap, "icmp"]);

    let mut vm2 =
        lab.start_vm("compute2", "vm2", &format!("net msix ip={VM2} peer={EXT_HOST} gw={GATEWAY} net-serve=5"));
    assert!(vm2.wait_for("net-serve:"), "vm2 did not start serving\n{}", vm2.finish().describe());
    timing(T, t0, "vm2 serving");
    let ping = Command::new("ip")
        .args(["netns", "exec", &lab.ns("ext"), "ping", "-n", "-c", "3", "-i", "0.5", "-W", "2"])
        .arg(FIP.to_string())
        .output()
        .expect("ping");
    timing(T, t0, "ping done");
    let r2 = vm2.finish();
    timing(T, t0, "vm2 done");
    let ext_text = on_ext.stop();
    let tap_text = on_tap.stop();
    let ping_text = String::from_utf8_lossy(&ping.stdout).into_owned();
    eprintln!(
        "--- ping from the external host ---\n{ping_text}--- capture on the external host ---\n{ext_text}\
         --- capture on vm2's tap {tap} ---\n{tap_text}"
    );

    assert!(
        ping.status.success(),
        "the external host got no echo reply from {FIP}\n{ping_text}{}\n{}",
        String::from_utf8_lossy(&ping.stderr),
        r2.describe()
    );
    assert!(ping_text.contains(&format!("from {FIP}")), "{ping_text}");
    let served = r2.get("net-served").unwrap_or_default();
    assert!(
        served.split_whitespace().any(|f| f.strip_prefix("ping=").is_some_and(|n| n != "0")),
        "vm2 served no ping: {served:?}\n{}",
        r2.describe()
    );
    // vm2's own ping out through the gateway leaves as its floating IP.
    assert_eq!(r2.get("net-ping").as_deref(), Some("ok seq=1 bytes=64"), "{}", r2.describe());
    r2.assert_exit_ok();
    assert!(tap_text.contains(&format!("{EXT_HOST} > {VM2}: ICMP echo request")), "vm2 must see the real source");
    assert!(ext_text.contains(&format!("{FIP} > {EXT_HOST}: ICMP echo reply")), "replies must come from the FIP");
    assert!(
        ext_text.contains(&format!("{FIP} > {EXT_HOST}: ICMP echo request")),
        "vm2's own ping must leave as its floating IP"
    );
    timing(T, t0, "passed");
}

/// The port's MTU (the network's, from the description) is offered to the guest with
/// VIRTIO_NET_F_MTU, and the MAC is the port's.
#[test]
fn port_mtu_and_mac_are_offered_to_the_guest() {
    const T: &str = "port_mtu_and_mac_are_offered_to_the_guest";
    skip_unless_ready!(T, "ip", "nft");
    let _serial = serial();
    let t0 = Instant::now();
    let lab = Lab::new("m");
    lab.apply_all();
    timing(T, t0, "lab applied");
    let net = lab.desc.networks.iter().find(|n| n.name == "blue").unwrap();
    let want = lab.desc.network_mtu(net);
    assert_eq!(want, NET_MTU);
    let att = vnet::port_tap(vnet::PortSource::StateDir(&lab.state_dir), &lab.port("vm1")).unwrap();
    assert_eq!(att.mtu, want);
    let link = sh(&["ip", "-n", &lab.ns("compute1"), "link", "show", &att.tap_name]);
    assert!(link.contains(&format!("mtu {want}")), "{link}");

    let vm1 = lab.start_vm("compute1", "vm1", &format!("net msix ip={VM1} peer={GATEWAY}"));
    let r1 = vm1.finish();
    timing(T, t0, "vm1 done");
    let features = r1.get("net-driver-features").unwrap_or_default();
    assert!(
        features.split_whitespace().any(|w| w == "MTU"),
        "VIRTIO_NET_F_MTU not negotiated: {features:?}\n{}",
        r1.describe()
    );
    assert_eq!(r1.get("net-mtu"), Some(want.to_string()), "{}", r1.describe());
    assert_eq!(r1.get("net-mac").as_deref(), Some(VM1_MAC), "{}", r1.describe());
    assert_eq!(r1.get("net-ping").as_deref(), Some("ok seq=1 bytes=64"), "vm1 -> gateway\n{}", r1.describe());
    r1.assert_exit_ok();
    timing(T, t0, "passed");
}
