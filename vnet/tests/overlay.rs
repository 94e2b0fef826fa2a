//! End-to-end tests of `rvmm net` on one machine: network namespaces play the hosts.
//!
//! ```text
//!   a1 (198.51.100.10, blue)   a2 (.140, red)        b1 (.11, blue, fip .20)   b2 (.141, red)
//!        |  stand-ins at the tap position  |                  |                     |
//!   [compute1 192.0.2.11] ------------ [underlay bridge] ---------- [compute2 192.0.2.12]
//!                                             |
//!                                    [netnode 192.0.2.20] -- qrouter-R (203.0.113.10) -- ext0
//!                                                                                         |
//!                                                                  [external 203.0.113.100]
//! ```
//!
//! Every test builds its own lab with uniquely named namespaces and tears it down in
//! `Drop`, even when it fails. The tests need root, `ip` and `nft` (and `tcpdump` for
//! the capture); without them they print a notice and pass.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use vnet::{netns, Description, Options};

const BLUE_VNI: u32 = 1001;
const RED_VNI: u32 = 1002;
const FIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const ROUTER_EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const EXT_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 100);
const A1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const B1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const A2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 140);
const B2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 141);
const T1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);

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
        return Some(format!("missing {} (apt-get install iproute2 nftables tcpdump)", missing.join(", ")));
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    None
}

macro_rules! skip_unless_ready {
    ($name:expr, $($tool:expr),*) => {
        if let Some(why) = skip_reason(&[$($tool),*]) {
            // Straight to stderr: the test harness captures eprintln! of passing tests.
            let _ = writeln!(std::io::stderr(), "SKIPPED {}: {why}", $name);
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

/// One lab: namespaces for the hosts, the stand-in VMs and the underlay; torn down
/// on drop.
struct Lab {
    code: String,
    ns_all: Vec<String>,
    router_ns: String,
    state_dir: PathBuf,
    desc: Description,
    children: Mutex<Vec<Child>>,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("vnet{}-{role}", self.code)
    }

    /// Node name of a role in the description.
    fn node(&self, role: &str) -> String {
        format!("{role}-{}", self.code)
    }

    fn description_text(code: &str) -> String {
        let ns = |r: &str| format!("vnet{code}-{r}");
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
vni = {BLUE_VNI}
subnet = "198.51.100.0/25"
gateway = "198.51.100.1"
fdb = "flood"

[[networks]]
name = "red"
vni = {RED_VNI}
subnet = "198.51.100.128/25"
gateway = "198.51.100.129"
fdb = "static"

[[security_groups]]
name = "client"
rules = [{{ direction = "egress" }}]

[[security_groups]]
name = "web"
rules = [
  {{ direction = "ingress", protocol = "tcp", ports = "8080" }},
  {{ direction = "ingress", protocol = "udp", ports = "9999" }},
  {{ direction = "ingress", protocol = "icmp" }},
  {{ direction = "egress" }},
]

[[ports]]
name = "a1-{code}"
vm = "a1"
node = "compute1-{code}"
network = "blue"
mac = "52:54:00:00:01:0a"
ip = "{A1}"
security_groups = ["client"]
standin_netns = "{a1}"

[[ports]]
name = "b1-{code}"
vm = "b1"
node = "compute2-{code}"
network = "blue"
mac = "52:54:00:00:01:0b"
ip = "{B1}"
security_groups = ["web"]
standin_netns = "{b1}"

[[ports]]
name = "a2-{code}"
vm = "a2"
node = "compute1-{code}"
network = "red"
mac = "52:54:00:00:02:0a"
ip = "{A2}"
standin_netns = "{a2}"

[[ports]]
name = "b2-{code}"
vm = "b2"
node = "compute2-{code}"
network = "red"
mac = "52:54:00:00:02:0b"
ip = "{B2}"
standin_netns = "{b2}"

# A port with a real tap, as `rvmm run --net port=t1-...` would use it.
[[ports]]
name = "t1-{code}"
vm = "t1"
node = "compute1-{code}"
network = "blue"
mac = "52:54:00:00:01:20"
ip = "{T1}"
queues = 2

[[routers]]
name = "r{code}"
node = "netnode-{code}"
networks = ["blue", "red"]
external_network = "public"
external_ip = "{ROUTER_EXT}"
snat = true

[[floating_ips]]
ip = "{FIP}"
port = "b1-{code}"
"#,
            a1 = ns("a1"),
            b1 = ns("b1"),
            a2 = ns("a2"),
            b2 = ns("b2"),
        )
    }

    /// Builds the namespaces and the underlay; does not apply the description.
    fn new(test: &str) -> Lab {
        let code = format!("{}{}", test, std::process::id() % 100_000);
        let desc = Description::parse(&Lab::description_text(&code), false, "<test>").expect("test description");
        let mut lab = Lab {
            router_ns: format!("qrouter-r{code}"),
            state_dir: std::env::temp_dir().join(format!("vnet-state-{code}")),
            code,
            ns_all: Vec::new(),
            desc,
            children: Mutex::new(Vec::new()),
        };
        let _ = std::fs::remove_dir_all(&lab.state_dir);
        for role in ["ul", "compute1", "compute2", "netnode", "ext", "a1", "b1", "a2", "b2"] {
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

    fn options(&self, role: &str) -> Options {
        Options { netns: Some(self.ns(role)), state_dir: self.state_dir.clone(), description_path: None }
    }

    /// Applies every node's part, each inside its own namespace; returns the changes.
    fn apply_all(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for role in ["compute1", "compute2", "netnode"] {
            let r = vnet::apply(&self.desc, &self.node(role), &self.options(role))
                .unwrap_or_else(|e| panic!("apply {role}: {e}"));
            out.push((role.to_string(), r.changes));
        }
        out
    }

    fn destroy_all(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for role in ["compute1", "compute2", "netnode"] {
            let r = vnet::destroy(Some(&self.desc), &self.node(role), &self.options(role))
                .unwrap_or_else(|e| panic!("destroy {role}: {e}"));
            out.push((role.to_string(), r.changes));
        }
        out
    }

    /// Starts a command inside a namespace (reaped on drop).
    fn spawn_in(&self, role: &str, args: &[&str]) -> u32 {
        let ns = if role.starts_with("qrouter-") { role.to_string() } else { self.ns(role) };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns]).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn");
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    fn take_child(&self, pid: u32) -> Child {
        let mut v = self.children.lock().unwrap();
        let i = v.iter().position(|c| c.id() == pid).expect("child");
        v.remove(i)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(mut v) = self.children.lock() {
            for c in v.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = netns::delete(&self.router_ns);
        for ns in self.ns_all.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// A TCP server in a namespace that answers `hello` with `echo:hello` and records
/// the peers it saw.
struct Server {
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str, addr: SocketAddrV4) -> Server {
        let listener = netns::run_in(Some(ns), || TcpListener::bind(addr)).expect("enter").expect("bind");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (s, p) = (stop.clone(), peers.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        p.lock().unwrap().push(peer);
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut line = String::new();
                        if BufReader::new(&conn).read_line(&mut line).is_ok() {
                            let _ = conn.write_all(format!("echo:{line}").as_bytes());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Server { stop, peers, thread: Some(thread) }
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from a namespace and exchanges one line; the reply or the error.
fn tcp_exchange(ns: &str, dst: SocketAddrV4, timeout: Duration) -> std::io::Result<String> {
    let mut s: TcpStream = netns::run_in(Some(ns), || TcpStream::connect_timeout(&SocketAddr::V4(dst), timeout))??;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"hello\n")?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply)?;
    Ok(reply.trim().to_string())
}

/// Like [`tcp_exchange`], retried for a while: the first packets of a fresh overlay
/// wait for ARP and the FDB.
fn tcp_exchange_eventually(ns: &str, dst: SocketAddrV4) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tcp_exchange(ns, dst, Duration::from_secs(2)) {
            Ok(r) => return r,
            Err(e) if Instant::now() > deadline => panic!("{ns} -> {dst}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

// ---------------------------------------------------------------------------------

#[test]
fn vm_to_vm_across_compute_nodes_over_vxlan() {
    skip_unless_ready!("vm_to_vm_across_compute_nodes_over_vxlan", "ip", "nft", "tcpdump");
    let lab = Lab::new("x");
    lab.apply_all();

    // A capture on compute1's underlay interface while the VMs talk.
    let pid = lab.spawn_in("compute1", &["tcpdump", "-i", "ul0", "-nn", "-l", "-v", "udp", "port", "4789"]);
    let mut child = lab.take_child(pid);
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !line.contains("listening on") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0 && Instant::now() < deadline, "tcpdump did not start");
    }

    // blue: flood mode (head-end replication to every peer).
    let s1 = Server::start(&lab.ns("b1"), sa(B1, 8080));
    assert_eq!(tcp_exchange_eventually(&lab.ns("a1"), sa(B1, 8080)), "echo:hello");
    assert_eq!(s1.peers()[0].ip(), A1, "b1 sees a1's own address");
    // red: static FDB and ARP proxy, no flooding.
    let _s2 = Server::start(&lab.ns("b2"), sa(B2, 7070));
    assert_eq!(tcp_exchange_eventually(&lab.ns("a2"), sa(B2, 7070)), "echo:hello");

    // A real tap: open it the way rvmm's virtio-net does and send the frame a guest
    // would, from t1's MAC and address to b1 (known from the description, no ARP).
    let att = vnet::port_tap(vnet::PortSource::Description(&lab.desc), &format!("t1-{}", lab.code)).unwrap();
    let b1_udp = netns::run_in(Some(&lab.ns("b1")), || UdpSocket::bind(sa(B1, 9999))).unwrap().unwrap();
    b1_udp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let tap = netns::run_in(Some(&lab.ns("compute1")), || open_tap(&att.tap_name, att.queues)).unwrap();
    let frame = udp_frame(att.mac.0, [0x52, 0x54, 0, 0, 1, 0x0b], T1, B1, 5555, 9999, b"from a tap");
    let mut got = None;
    for _ in 0..10 {
        // SAFETY: write(2) of one frame to the tap we opened.
        let n = unsafe { libc::write(tap.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        assert_eq!(n, frame.len() as isize, "write to {}", att.tap_name);
        let mut buf = [0u8; 64];
        if let Ok((n, from)) = b1_udp.recv_from(&mut buf) {
            got = Some((buf[..n].to_vec(), from));
            break;
        }
    }
    let (data, from) = got.expect("the frame from the tap did not reach b1");
    assert_eq!((&data[..], from.ip()), (&b"from a tap"[..], std::net::IpAddr::V4(T1)));

    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut text = String::new();
    child.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    let _ = child.wait();
    eprintln!("--- capture on compute1 ul0 ---\n{text}");
    assert!(text.contains(&format!("VXLAN, flags [I] (0x08), vni {BLUE_VNI}")), "no blue VXLAN packet in the capture");
    assert!(text.contains(&format!("vni {RED_VNI}")), "no red VXLAN packet in the capture");
    assert!(
        text.contains("192.0.2.11") && text.contains("192.0.2.12.4789"),
        "outer header is not compute1 -> compute2:4789"
    );
    assert!(text.contains(&format!("{A1}.")) && text.contains(&format!("{B1}.8080")), "inner a1 -> b1:8080 not seen");

    // The FDB entries behind it.
    let c1 = lab.ns("compute1");
    let fdb_blue = sh(&["bridge", "-n", &c1, "fdb", "show", "dev", &format!("vxlan-{BLUE_VNI}")]);
    for peer in ["192.0.2.12", "192.0.2.20"] {
        assert!(
            fdb_blue.contains(&format!("00:00:00:00:00:00 dst {peer} self permanent")),
            "no flood entry for {peer}:\n{fdb_blue}"
        );
    }
    let fdb_red = sh(&["bridge", "-n", &c1, "fdb", "show", "dev", &format!("vxlan-{RED_VNI}")]);
    assert!(fdb_red.contains("52:54:00:00:02:0b dst 192.0.2.12 self permanent"), "no static entry for b2:\n{fdb_red}");
    assert!(!fdb_red.contains("00:00:00:00:00:00"), "static network has a flood entry:\n{fdb_red}");
    // The guest MTU: underlay 1500 minus the VXLAN overhead, on every device.
    let link = sh(&["ip", "-n", &lab.ns("a1"), "link", "show", "eth0"]);
    assert!(link.contains("mtu 1450"), "{link}");
}

#[test]
fn vm_without_floating_ip_is_seen_outside_as_router_snat_address() {
    skip_unless_ready!("vm_without_floating_ip_is_seen_outside_as_router_snat_address", "ip", "nft");
    let lab = Lab::new("s");
    lab.apply_all();
    let srv = Server::start(&lab.ns("ext"), sa(EXT_HOST, 8080));
    assert_eq!(tcp_exchange_eventually(&lab.ns("a1"), sa(EXT_HOST, 8080)), "echo:hello");
    assert_eq!(srv.peers().last().unwrap().ip(), ROUTER_EXT, "a1 (no floating IP) must leave as the router's address");
    assert_eq!(tcp_exchange_eventually(&lab.ns("a2"), sa(EXT_HOST, 8080)), "echo:hello");
    assert_eq!(srv.peers().last().unwrap().ip(), ROUTER_EXT, "a2 on the static network too");
    // A VM with a floating IP leaves as that address instead.
    assert_eq!(tcp_exchange_eventually(&lab.ns("b1"), sa(EXT_HOST, 8080)), "echo:hello");
    assert_eq!(srv.peers().last().unwrap().ip(), FIP, "b1 must leave as its floating IP");
}

#[test]
fn external_host_reaches_vm_through_floating_ip_and_vm_sees_real_address() {
    skip_unless_ready!("external_host_reaches_vm_through_floating_ip_and_vm_sees_real_address", "ip", "nft");
    let lab = Lab::new("d");
    lab.apply_all();
    let srv = Server::start(&lab.ns("b1"), sa(B1, 8080));
    assert_eq!(tcp_exchange_eventually(&lab.ns("ext"), sa(FIP, 8080)), "echo:hello");
    assert_eq!(srv.peers()[0].ip(), EXT_HOST, "b1 must see the external host's real address (DNAT only)");
    // The floating IP is a /32 on the router's external interface.
    let addrs = sh(&["ip", "-n", &lab.router_ns, "-4", "addr", "show"]);
    assert!(addrs.contains(&format!("inet {FIP}/32")), "{addrs}");
    assert!(addrs.contains(&format!("inet {ROUTER_EXT}/24")), "{addrs}");
}

#[test]
fn security_group_denies_and_allows_return_traffic() {
    skip_unless_ready!("security_group_denies_and_allows_return_traffic", "ip", "nft");
    let lab = Lab::new("g");
    lab.apply_all();
    let (a1, b1) = (lab.ns("a1"), lab.ns("b1"));
    let _web = Server::start(&b1, sa(B1, 8080));
    let _other = Server::start(&b1, sa(B1, 9090));
    let _on_a1 = Server::start(&a1, sa(A1, 8080));
    // Allowed: a1's egress (any) and b1's ingress (tcp 8080). The answer comes back
    // through a1's port, which allows no ingress at all: return traffic of a tracked
    // flow.
    assert_eq!(tcp_exchange_eventually(&a1, sa(B1, 8080)), "echo:hello");
    // Denied by b1's group: nothing allows tcp 9090 in, although b1 listens there. A
    // dropped SYN times out; without the group it would be answered.
    let e = tcp_exchange(&a1, sa(B1, 9090), Duration::from_millis(1500)).expect_err("tcp 9090 must be dropped");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "dropped, not refused: {e}");
    // Denied by a1's group: no ingress rule, so b1 cannot open a connection to a1,
    // while the reverse direction works.
    let e = tcp_exchange(&b1, sa(A1, 8080), Duration::from_millis(1500)).expect_err("a1 allows no ingress");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    // A port without groups is not filtered: b2 -> a2 on any port reaches a2's stack
    // (refused, as nothing listens there).
    let e = tcp_exchange(&lab.ns("b2"), sa(A2, 9090), Duration::from_secs(5)).expect_err("nothing listens");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    // Spoofing: a1 sending from an address that is not its own is dropped.
    let a1ns = a1.clone();
    let spoofed = netns::run_in(Some(&a1ns), || {
        sh(&["ip", "addr", "add", "198.51.100.99/25", "dev", "eth0"]);
        let sock = socket_bound(Ipv4Addr::new(198, 51, 100, 99));
        let r = connect_fd(&sock, sa(B1, 8080), Duration::from_millis(1500));
        sh(&["ip", "addr", "del", "198.51.100.99/25", "dev", "eth0"]);
        r
    })
    .unwrap();
    assert!(spoofed.is_err(), "a spoofed source address must be dropped");
    // The rules are where the issue puts them: nftables on the port bridge.
    let rules = sh(&["ip", "netns", "exec", &lab.ns("compute2"), "nft", "list", "table", "inet", "rvmm_sg"]);
    assert!(rules.contains("ct state established,related accept"), "{rules}");
    assert!(rules.contains("tcp dport 8080 accept"), "{rules}");
}

/// A TCP socket bound to `src` (for the spoofing check).
fn socket_bound(src: Ipv4Addr) -> std::net::TcpStream {
    // SAFETY: plain socket(2)/bind(2) calls on a descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(src).to_be() },
            sin_zero: [0; 8],
        };
        let r = libc::bind(fd, &addr as *const _ as *const libc::sockaddr, std::mem::size_of_val(&addr) as u32);
        assert_eq!(r, 0, "bind {src}");
        <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    }
}

/// A blocking connect with a timeout on an existing socket.
fn connect_fd(s: &std::net::TcpStream, dst: SocketAddrV4, timeout: Duration) -> std::io::Result<()> {
    s.set_nonblocking(true)?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: dst.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*dst.ip()).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: connect(2) on our socket with a sockaddr_in we own.
    let r = unsafe {
        libc::connect(s.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, std::mem::size_of_val(&addr) as u32)
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINPROGRESS) {
        return Err(e);
    }
    let mut pfd = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    // SAFETY: poll(2) on one pollfd we own.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    if n == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
    }
    match s.take_error()? {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Opens a tap as rvmm's virtio-net does: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, and
/// IFF_MULTI_QUEUE for more than one queue pair (one queue opened here).
fn open_tap(name: &str, queues: u32) -> std::fs::File {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").expect("/dev/net/tun");
    let mut req = IfReq { name: [0; 16], flags: 0x0002 | 0x1000 | 0x4000, _pad: [0; 22] };
    if queues > 1 {
        req.flags |= 0x0100;
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF on our fd with an ifreq we own.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), 0x4004_54ca, &mut req as *mut IfReq) };
    assert_eq!(r, 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    f
}

/// A virtio-net header (10 bytes, no offloads) and an Ethernet/IPv4/UDP frame.
fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    data: &[u8],
) -> Vec<u8> {
    let mut f = vec![0u8; 10];
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + data.len()) as u16;
    let mut ip = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let mut sum: u32 = ip.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    ip[10] = (csum >> 8) as u8;
    ip[11] = csum as u8;
    f.extend_from_slice(&ip);
    let ulen = (8 + data.len()) as u16;
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&ulen.to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum
    f.extend_from_slice(data);
    f
}

/// What the kernel queued on a socket's error queue for an ICMP error.
#[derive(Debug)]
struct IcmpError {
    errno: u32,
    icmp_type: u8,
    icmp_code: u8,
    info: u32,
    offender: Ipv4Addr,
}

/// Waits for one IP_RECVERR error-queue message on a UDP socket.
fn recv_icmp_error(sock: &UdpSocket, timeout: Duration) -> Option<IcmpError> {
    let fd = sock.as_raw_fd();
    let mut pfd = libc::pollfd { fd, events: 0, revents: 0 };
    // SAFETY: poll(2) on one pollfd we own; POLLERR is always reported.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    if n <= 0 {
        return None;
    }
    let mut data = [0u8; 2048];
    let mut control = [0u64; 64];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    // SAFETY: a zeroed msghdr is valid; we fill the buffers we own.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: recvmsg(2) into the buffers described by msg.
    let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE) };
    if r < 0 {
        return None;
    }
    // SAFETY: walking the control messages the kernel wrote, with the libc macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_RECVERR {
                let ee = libc::CMSG_DATA(c) as *const libc::sock_extended_err;
                let off = libc::SO_EE_OFFENDER(ee) as *const libc::sockaddr_in;
                return Some(IcmpError {
                    errno: (*ee).ee_errno,
                    icmp_type: (*ee).ee_type,
                    icmp_code: (*ee).ee_code,
                    info: (*ee).ee_info,
                    offender: Ipv4Addr::from(u32::from_be((*off).sin_addr.s_addr)),
                });
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    None
}

#[test]
fn packet_larger_than_overlay_mtu_gets_fragmentation_needed() {
    skip_unless_ready!("packet_larger_than_overlay_mtu_gets_fragmentation_needed", "ip", "nft");
    let lab = Lab::new("m");
    lab.apply_all();
    let b1 = netns::run_in(Some(&lab.ns("b1")), || UdpSocket::bind(sa(B1, 9999))).unwrap().unwrap();
    b1.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let ext = netns::run_in(Some(&lab.ns("ext")), || UdpSocket::bind(sa(EXT_HOST, 0))).unwrap().unwrap();
    ext.connect(sa(FIP, 9999)).unwrap();
    let on: libc::c_int = 1;
    let pmtu_do: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: setsockopt(2) with ints we own.
    unsafe {
        let sz = std::mem::size_of::<libc::c_int>() as u32;
        assert_eq!(
            libc::setsockopt(
                ext.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_RECVERR,
                (&on as *const libc::c_int).cast(),
                sz
            ),
            0
        );
        assert_eq!(
            libc::setsockopt(
                ext.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&pmtu_do as *const libc::c_int).cast(),
                sz
            ),
            0
        );
    }
    // Exactly the overlay MTU (1450 = 20 IP + 8 UDP + 1422) passes, with DF set.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2000];
    loop {
        ext.send(&[7u8; 1422]).unwrap();
        if let Ok((n, from)) = b1.recv_from(&mut buf) {
            assert_eq!(n, 1422);
            assert_eq!(from.ip(), EXT_HOST);
            break;
        }
        assert!(Instant::now() < deadline, "a 1450-byte packet did not reach b1 through the floating IP");
    }
    // One byte more does not fit the overlay: the router answers "fragmentation
    // needed" with the overlay MTU.
    ext.send(&[7u8; 1423]).unwrap();
    let err = recv_icmp_error(&ext, Duration::from_secs(5)).expect("no ICMP error came back");
    eprintln!("ICMP error at the external host: {err:?}");
    assert_eq!(err.errno, libc::EMSGSIZE as u32);
    assert_eq!((err.icmp_type, err.icmp_code), (3, 4), "destination unreachable / fragmentation needed");
    assert_eq!(err.info, 1450, "the next-hop MTU announced is the overlay MTU");
    // The router sent it; conntrack rewrote its outer source along with the quoted
    // packet, so to the external host it comes from the floating IP it talked to.
    assert_eq!(err.offender, FIP, "the error is translated back like the flow it belongs to");
    assert!(b1.recv_from(&mut buf).is_err(), "the 1451-byte packet must not be delivered");
}

/// Everything `ip`, `bridge` and `nft` show about a namespace, minus what changes
/// by itself (timers, learned entries).
fn snapshot(ns: &str) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                // IPv6 duplicate address detection and the operational state (linkwatch)
                // settle on their own, a moment after the configuration.
                m.retain(|k, _| {
                    !k.contains("timer")
                        && !k.contains("life_time")
                        && !matches!(k.as_str(), "used" | "updated" | "tentative" | "operstate")
                });
                // So does everything the kernel derives from the carrier: a persistent tap
                // loses it when its creator closes the file, and linkwatch reports that (the
                // NO-CARRIER flag, a bridge port going from forwarding to disabled) up to a
                // second later, so a snapshot right after apply may or may not show it yet.
                if let Some(Value::Array(flags)) = m.get_mut("flags") {
                    flags.retain(|f| !matches!(f.as_str(), Some("NO-CARRIER" | "LOWER_UP")));
                }
                if let Some(Value::Object(port)) = m.get_mut("info_slave_data") {
                    port.remove("state");
                }
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let j = |args: &[&str]| -> Value {
        let out = sh(args);
        if out.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
        }
    };
    let mut links = j(&["ip", "-n", ns, "-d", "-j", "link", "show"]);
    let mut addrs = j(&["ip", "-n", ns, "-j", "addr", "show"]);
    let routes = j(&["ip", "-n", ns, "-4", "-j", "route", "show", "table", "all"]);
    let fdb = j(&["bridge", "-n", ns, "-j", "fdb", "show"]);
    let fdb: Vec<Value> = fdb
        .as_array()
        .map(|a| a.iter().filter(|e| e.get("state").and_then(Value::as_str) == Some("permanent")).cloned().collect())
        .unwrap_or_default();
    let neigh = j(&["ip", "-n", ns, "-4", "-j", "neigh", "show", "nud", "permanent"]);
    let nft = j(&["ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset"]);
    strip(&mut links);
    strip(&mut addrs);
    serde_json::json!({"links": links, "addrs": addrs, "routes": routes, "fdb": fdb, "neigh": neigh, "nft": nft})
}

/// The paths where two snapshots differ (empty when equal).
fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()).collect::<std::collections::BTreeSet<_>>() {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => diff(p, q, &format!("{path}.{k}"), out),
                    (p, q) => out.push(format!("{path}.{k}: {p:?} != {q:?}")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                let name = p.get("ifname").or(p.get("mac")).and_then(Value::as_str).map(|n| format!("[{i}:{n}]"));
                diff(p, q, &format!("{path}{}", name.unwrap_or(format!("[{i}]"))), out);
            }
        }
        (p, q) if p != q => out.push(format!("{path}: {p} != {q}")),
        _ => {}
    }
}

fn assert_same(a: &Value, b: &Value, what: &str) {
    let mut d = Vec::new();
    diff(a, b, "", &mut d);
    assert!(d.is_empty(), "{what}:\n{}", d.join("\n"));
}

#[test]
fn apply_twice_changes_nothing_and_destroy_leaves_nothing() {
    skip_unless_ready!("apply_twice_changes_nothing_and_destroy_leaves_nothing", "ip", "nft", "bridge");
    let lab = Lab::new("i");
    let roles = ["compute1", "compute2", "netnode", "a1", "b1", "a2", "b2", "ext"];
    let before: Vec<Value> = roles.iter().map(|r| snapshot(&lab.ns(r))).collect();

    let first = lab.apply_all();
    for (role, ch) in &first {
        assert!(!ch.is_empty(), "{role}: the first apply must do something");
    }
    assert!(netns::exists(&lab.router_ns));
    // Some traffic, so that the second apply meets learned entries and conntrack state.
    let srv = Server::start(&lab.ns("ext"), sa(EXT_HOST, 8080));
    tcp_exchange_eventually(&lab.ns("a1"), sa(EXT_HOST, 8080));
    drop(srv);
    let applied: Vec<Value> = roles.iter().map(|r| snapshot(&lab.ns(r))).collect();
    let router_applied = snapshot(&lab.router_ns);

    let second = lab.apply_all();
    for (role, ch) in &second {
        assert!(ch.is_empty(), "{role}: the second apply changed {ch:#?}");
    }
    for (i, r) in roles.iter().enumerate() {
        assert_same(&applied[i], &snapshot(&lab.ns(r)), &format!("{r} changed on the second apply"));
    }
    assert_same(&router_applied, &snapshot(&lab.router_ns), "the router namespace changed on the second apply");

    // `show` reads the state files.
    let st = vnet::state::load(&lab.state_dir, &lab.node("compute1")).unwrap().expect("state file");
    let shown = vnet::show(&st).unwrap();
    assert!(shown.contains(&format!("vxlan-{BLUE_VNI} up")), "{shown}");
    assert!(shown.contains("as applied"), "{shown}");
    // `--net port=` for a stand-in port is refused with a reason; the description
    // form gives tap, MAC and MTU.
    let e = vnet::port_tap(vnet::PortSource::StateDir(&lab.state_dir), &format!("a1-{}", lab.code)).unwrap_err();
    assert!(e.to_string().contains("no tap"), "{e}");
    let att = vnet::port_tap(vnet::PortSource::StateDir(&lab.state_dir), &format!("t1-{}", lab.code)).unwrap();
    assert_eq!((att.mtu, att.mac.to_string().as_str(), att.queues), (1450, "52:54:00:00:01:20", 2));
    assert_eq!(att.node, lab.node("compute1"));
    let same = vnet::port_tap(vnet::PortSource::Description(&lab.desc), &format!("t1-{}", lab.code)).unwrap();
    assert_eq!(same, att);

    let gone = lab.destroy_all();
    for (role, ch) in &gone {
        assert!(!ch.is_empty(), "{role}: destroy did nothing");
    }
    for (i, r) in roles.iter().enumerate() {
        assert_same(&before[i], &snapshot(&lab.ns(r)), &format!("{r}: destroy left something behind"));
    }
    assert!(!netns::exists(&lab.router_ns), "router namespace left behind");
    assert!(vnet::state::all(&lab.state_dir).unwrap().is_empty(), "state files left behind");
    // And destroying again is a no-op.
    for (role, ch) in lab.destroy_all() {
        assert!(ch.is_empty(), "{role}: second destroy changed {ch:?}");
    }
}

#[test]
fn changed_description_converges_and_destroy_from_state_alone() {
    skip_unless_ready!("changed_description_converges_and_destroy_from_state_alone", "ip", "nft", "bridge");
    let mut lab = Lab::new("c");
    let roles = ["compute1", "compute2", "netnode", "a1", "b1", "a2", "b2", "ext"];
    let before: Vec<Value> = roles.iter().map(|r| snapshot(&lab.ns(r))).collect();
    lab.apply_all();
    let a2 = lab.desc.port(&format!("a2-{}", lab.code)).unwrap().clone();
    let a2_tap = lab.desc.ports.iter().position(|p| p.name == a2.name).unwrap();

    // a2 goes away, b1 loses its floating IP, the router stops doing SNAT.
    let mut d = lab.desc.clone();
    d.ports.remove(a2_tap);
    d.floating_ips.clear();
    d.routers[0].snat = false;
    d.validate("<test>").unwrap();
    lab.desc = d;
    let changes = lab.apply_all();
    let all: Vec<String> = changes.iter().flat_map(|(r, c)| c.iter().map(move |c| format!("{r}: {c}"))).collect();
    let id = vnet::model::short_id(&a2.name);
    for want in [
        format!("compute1: deleted link tap-{id}"),
        format!("compute1: deleted link qbr-{id}"),
        format!("netnode: {}: deleted address {FIP}/32", lab.router_ns),
        format!("netnode: {}: deleted nftables table ip rvmm_nat", lab.router_ns),
        // compute2 no longer needs a static entry for a2's MAC.
        format!("compute2: deleted fdb {} dst 192.0.2.11 from vxlan-{RED_VNI}", a2.mac),
    ] {
        assert!(all.iter().any(|c| c.starts_with(&want)), "missing change {want:?} in {all:#?}");
    }
    assert!(!sh(&["ip", "-n", &lab.ns("compute1"), "link"]).contains(&id));
    for (role, ch) in lab.apply_all() {
        assert!(ch.is_empty(), "{role}: not converged: {ch:?}");
    }
    // What is left still works.
    let _srv = Server::start(&lab.ns("b1"), sa(B1, 8080));
    assert_eq!(tcp_exchange_eventually(&lab.ns("a1"), sa(B1, 8080)), "echo:hello");

    // Destroy with nothing but the state files.
    for role in ["compute1", "compute2", "netnode"] {
        vnet::destroy(None, &lab.node(role), &lab.options(role)).unwrap_or_else(|e| panic!("destroy {role}: {e}"));
    }
    for (i, r) in roles.iter().enumerate() {
        assert_same(&before[i], &snapshot(&lab.ns(r)), &format!("{r}: destroy left something behind"));
    }
    assert!(!netns::exists(&lab.router_ns));
    // Without state file and description there is nothing to go by: a clear error.
    let e = vnet::destroy(None, &lab.node("compute1"), &lab.options("compute1")).unwrap_err();
    assert!(e.to_string().contains("fix: pass the description file"), "{e}");
}
