//! The probe's virtio-net driver (token `net`) against QEMU 7.2 with TCG, the
//! independent reference.
//!
//! Each case makes a network namespace with a tap device (192.0.2.1/24, up) and runs
//! QEMU inside it on that tap, so the host kernel answers the probe's ARP request and
//! ICMP echo request, and nothing leaves the namespace. Cases with `net-serve=5` also
//! ping the probe from the namespace while it serves. The namespace goes away when the
//! case ends, also on failure. Each case skips with a notice when it cannot run here:
//! not root, no `ip`, no QEMU, or no usable /dev/net/tun.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rvmm_tests::{find_in_path, qemu_probe_command, qemu_x86_64, QemuProbe, Report, VmOutput, VmRunner};

const TIMEOUT: Duration = Duration::from_secs(60);
const TAP: &str = "rvtap0";
const GUEST_MAC: &str = "52:54:00:12:34:56";
/// Seconds the probe keeps answering after its own tests (`net-serve=`).
const SERVE_SECS: u32 = 5;

extern "C" {
    fn geteuid() -> u32;
    fn setns(fd: i32, nstype: i32) -> i32;
    fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
}

/// QEMU, if every prerequisite is there; otherwise prints why the test is skipped.
fn prerequisites(test: &str) -> Option<PathBuf> {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { geteuid() } != 0 {
        eprintln!("SKIPPED {test}: needs root (network namespace and tap device)");
        return None;
    }
    if find_in_path("ip").is_none() {
        eprintln!("SKIPPED {test}: `ip` (iproute2) is not installed");
        return None;
    }
    let Some(qemu) = qemu_x86_64() else {
        eprintln!("SKIPPED {test}: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
        return None;
    };
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/net/tun") {
        eprintln!("SKIPPED {test}: cannot open /dev/net/tun: {e}");
        return None;
    }
    Some(qemu)
}

/// A network namespace with one tap device; deleted on drop (with the tap in it).
struct NetNs {
    name: String,
}

impl NetNs {
    /// `None` (after a notice) if the namespace cannot be made here at all; a panic if
    /// it can but the tap cannot be set up.
    fn create(test: &str, host_cidr: &str, multi_queue: bool) -> Option<NetNs> {
        let name = format!("rvmm-{}-{test}", std::process::id());
        let out = Command::new("ip").args(["netns", "add", &name]).output().expect("run ip");
        if !out.status.success() {
            eprintln!("SKIPPED {test}: ip netns add failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            return None;
        }
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        let mut tuntap = vec!["tuntap", "add", "dev", TAP, "mode", "tap"];
        if multi_queue {
            tuntap.push("multi_queue");
        }
        ns.ip(&tuntap);
        ns.ip(&["addr", "add", host_cidr, "dev", TAP]);
        ns.ip(&["link", "set", TAP, "up"]);
        Some(ns)
    }

    /// Runs `ip -n <ns> args...`, which must succeed; returns its stdout.
    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip").arg("-n").arg(&self.name).args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip -n {} {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cmd` run inside the namespace (`ip netns exec` execs it, so killing the
    /// returned command's process kills `cmd`).
    fn wrap(&self, cmd: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(cmd.get_program()).args(cmd.get_args());
        c
    }

    /// The tap's MAC address, as the probe should learn it by ARP.
    fn tap_mac(&self) -> String {
        let out = self.ip(&["-o", "link", "show", TAP]);
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no link/ether in {out}"))
            .to_string()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// The Internet checksum (RFC 1071).
fn inet_csum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Pings `target` from inside namespace `ns`: `count` echo requests one second apart,
/// each waiting at most `wait` for its reply, over a raw ICMP socket made on a thread
/// that has entered the namespace (for machines without the `ping` program). Returns
/// how many replies came.
fn icmp_ping_in_netns(ns: &str, target: Ipv4Addr, count: u16, wait: Duration) -> Result<u32, String> {
    let file = File::open(format!("/var/run/netns/{ns}")).map_err(|e| format!("open netns: {e}"))?;
    thread::spawn(move || {
        const CLONE_NEWNET: i32 = 0x4000_0000;
        // SAFETY: setns only changes this thread's network namespace; the descriptor is
        // open for the call.
        if unsafe { setns(file.as_raw_fd(), CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        // AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP
        // SAFETY: plain socket(2); the descriptor is owned by the UdpSocket below.
        let fd = unsafe { socket(2, 3 | 0o2000000, 1) };
        if fd < 0 {
            return Err(format!("raw socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh datagram-like socket that nothing else owns; UdpSocket
        // only uses sendto/recvfrom/setsockopt on it and closes it on drop.
        let sock = unsafe { UdpSocket::from_raw_fd(fd) };
        let id = (std::process::id() & 0xffff) as u16;
        let mut replies = 0;
        for seq in 1..=count {
            let start = Instant::now();
            let mut pkt = vec![8u8, 0, 0, 0];
            pkt.extend_from_slice(&id.to_be_bytes());
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend((0..56u8).map(|i| i.wrapping_mul(3)));
            let c = inet_csum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
            sock.send_to(&pkt, (target, 0)).map_err(|e| format!("sendto: {e}"))?;
            let mut buf = [0u8; 2048];
            while start.elapsed() < wait {
                sock.set_read_timeout(Some(wait - start.elapsed() + Duration::from_millis(1))).unwrap();
                let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
                if n < 20 || from.ip() != std::net::IpAddr::V4(target) {
                    continue;
                }
                let ihl = usize::from(buf[0] & 15) * 4;
                let icmp = &buf[ihl.min(n)..n];
                if icmp.len() >= 8
                    && icmp[0] == 0
                    && icmp[4..6] == id.to_be_bytes()
                    && icmp[6..8] == seq.to_be_bytes()
                    && icmp[8..] == pkt[8..]
                    && inet_csum(icmp) == 0
                {
                    replies += 1;
                    break;
                }
            }
            if seq < count {
                thread::sleep(Duration::from_secs(1).saturating_sub(start.elapsed()));
            }
        }
        Ok(replies)
    })
    .join()
    .unwrap()
}

/// `ping -c 2 -W 2 <guest>` from the namespace, or the built-in equivalent if there is
/// no `ping` program. Returns (what ran, replies, transcript).
fn host_ping(ns: &str, guest: &str) -> (String, u32, String) {
    if let Some(ping) = find_in_path("ping") {
        let out = Command::new("ip").args(["netns", "exec", ns]).arg(ping).args(["-c", "2", "-W", "2", guest]).output();
        return match out {
            Ok(out) => {
                let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                let received = text
                    .lines()
                    .find(|l| l.contains("packets transmitted"))
                    .and_then(|l| l.split(", ").nth(1))
                    .and_then(|f| f.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let replies = if out.status.success() { received } else { 0 };
                ("ping -c 2 -W 2".to_string(), replies, text)
            }
            Err(e) => ("ping -c 2 -W 2".to_string(), 0, format!("cannot run ping: {e}")),
        };
    }
    let target: Ipv4Addr = guest.parse().unwrap();
    match icmp_ping_in_netns(ns, target, 2, Duration::from_secs(2)) {
        Ok(n) => ("built-in raw-socket ping (no ping program), 2 requests".to_string(), n, format!("{n} replies")),
        Err(e) => ("built-in raw-socket ping".to_string(), 0, e),
    }
}

enum Transport {
    Pci,
    Mmio,
}

struct Case<'a> {
    test: &'a str,
    transport: Transport,
    /// Probe tokens (`net` and the rest).
    tokens: &'a str,
    /// The tap's address with its prefix, and the guest's own address.
    host_cidr: &'a str,
    guest_ip: &'a str,
    /// Two queue pairs: a multi-queue tap and `mq=on,vectors=6`.
    mq: bool,
    /// Ping the guest from the namespace while it serves (the tokens hold net-serve=).
    host_ping: bool,
}

impl Default for Case<'_> {
    fn default() -> Self {
        Case {
            test: "",
            transport: Transport::Pci,
            tokens: "net",
            host_cidr: "192.0.2.1/24",
            guest_ip: "192.0.2.2",
            mq: false,
            host_ping: false,
        }
    }
}

struct Run {
    out: VmOutput,
    report: Report,
    tap_mac: String,
    /// What the host side saw while the probe served: the ping (what ran, replies,
    /// transcript) and then the host's neighbour entry for the guest (`ip neigh show`;
    /// the kernel drops it when QEMU closes the tap).
    served: Option<((String, u32, String), String)>,
}

fn run(case: &Case<'_>) -> Option<Run> {
    let qemu = prerequisites(case.test)?;
    let ns = NetNs::create(case.test, case.host_cidr, case.mq)?;
    let mut probe = QemuProbe::new(Path::new(rvmm_probes::PVH_ELF));
    let mut netdev = format!("tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off");
    if case.mq {
        netdev.push_str(",queues=2");
    }
    let device = match case.transport {
        Transport::Pci => {
            // romfile=: no iPXE option ROM (SeaBIOS would run it; the probe needs none).
            let mut d = format!("virtio-net-pci,netdev=n0,disable-legacy=on,mac={GUEST_MAC},romfile=");
            if case.mq {
                d.push_str(",mq=on,vectors=6");
            }
            d
        }
        Transport::Mmio => {
            probe.machine = "microvm,acpi=off";
            probe.extra.extend(["-global".to_string(), "virtio-mmio.force-legacy=false".to_string()]);
            format!("virtio-net-device,netdev=n0,mac={GUEST_MAC}")
        }
    };
    probe.append = Some(case.tokens);
    probe.extra.extend(["-netdev".to_string(), netdev, "-device".to_string(), device]);
    let cmd = ns.wrap(&qemu_probe_command(&qemu, &probe));
    eprintln!("{}: {:?}", case.test, cmd);

    let (tx, rx) = mpsc::channel();
    let mut runner = VmRunner::new(cmd).timeout(TIMEOUT);
    if case.host_ping {
        let (name, guest) = (ns.name.clone(), case.guest_ip.to_string());
        runner = runner.spawn_after("net-serve: ", move || {
            let ping = host_ping(&name, &guest);
            let neigh = Command::new("ip")
                .args(["-n", &name, "neigh", "show", &guest])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let _ = tx.send((ping, neigh));
        });
    }
    let out = runner.run().expect("spawn qemu");
    assert!(!out.timed_out, "QEMU timed out\n{}", out.describe());
    eprintln!("{}: QEMU run took {:?}", case.test, out.elapsed);
    let served = rx.try_recv().ok();
    let tap_mac = ns.tap_mac();
    let report = out.report();
    Some(Run { out, report, tap_mac, served })
}

fn features(r: &Report, key: &str, out: &VmOutput) -> u64 {
    r.get(key)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("{key}\n{}", out.describe()))
}

/// The report lines every successful run has, whatever the transport and interrupts.
fn check(case: &Case<'_>, run: &Run) {
    let (r, out) = (&run.report, &run.out);
    let d = || out.describe();
    for line in out.stdout.lines().filter(|l| l.starts_with("net")) {
        eprintln!("{}: {}", case.test, line.trim_end());
    }
    assert_eq!(r.get("net-result"), Some("ok"), "{}", d());
    assert_eq!(r.get("probe-result"), Some("ok"), "{}", d());
    assert_eq!(out.exit_code(), Some(1), "debug-exit status 0 expected\n{}", d());

    let offered = features(r, "net-features", out);
    for bit in [32, 5, 15, 16] {
        // VERSION_1, MAC, MRG_RXBUF, STATUS: QEMU offers them all.
        assert!(offered & (1 << bit) != 0, "feature bit {bit} not offered\n{}", d());
    }
    let accepted = features(r, "net-driver-features", out);
    assert_eq!(accepted & !offered, 0, "accepted what was not offered\n{}", d());
    for bit in [32, 5, 15, 16] {
        assert!(accepted & (1 << bit) != 0, "feature bit {bit} not accepted\n{}", d());
    }
    assert_eq!(r.get("net-mac"), Some(GUEST_MAC), "{}", d());
    assert_eq!(r.get("net-link"), Some("up"), "{}", d());
    let peer = case.host_cidr.split('/').next().unwrap();
    assert_eq!(r.field("net-config", "ip"), Some(case.guest_ip), "{}", d());
    assert_eq!(r.field("net-config", "peer"), Some(peer), "{}", d());
    assert_eq!(r.get("net-arp"), Some(run.tap_mac.as_str()), "the probe's ARP found another MAC\n{}", d());
    assert_eq!(r.get("net-ping"), Some("ok seq=1 bytes=64"), "{}", d());
    match case.transport {
        Transport::Pci => {
            assert!(
                r.get("net-transport").is_some_and(|v| v.starts_with("pci ") && v.ends_with(" 1af4:1041")),
                "{}",
                d()
            )
        }
        Transport::Mmio => assert_eq!(r.get("net-transport"), Some("mmio 0xfeb00e00 irq=12"), "{}", d()),
    }
    if case.host_ping {
        let ((what, replies, text), neigh) =
            run.served.clone().unwrap_or_else(|| panic!("the host ping did not run\n{}", d()));
        eprintln!("{}: host side: {what}: {replies} replies\n{text}\nneighbour: {neigh}", case.test);
        assert!(
            neigh.contains(&format!("lladdr {GUEST_MAC}")),
            "the host has no neighbour entry with the guest's MAC: {neigh:?}\n{}",
            d()
        );
        assert_eq!(replies, 2, "host-side ping of the guest ({what}):\n{text}\n{}", d());
        let served: u32 = r.field("net-served", "ping").and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(served >= 2, "the probe answered {served} echo requests while serving\n{}", d());
        assert_eq!(r.get("net-serve"), Some(format!("{SERVE_SECS} s").as_str()), "{}", d());
    }
}

/// The number of queue interrupts (`net-irqs: N config=.. other=..`).
fn irqs(r: &Report, out: &VmOutput) -> u64 {
    r.get("net-irqs")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("net-irqs\n{}", out.describe()))
}

#[test]
fn pci_polling_host_ping() {
    let tokens = format!("net net-serve={SERVE_SECS}");
    let case = Case { test: "pci_polling_host_ping", tokens: &tokens, host_ping: true, ..Default::default() };
    if let Some(run) = run(&case) {
        check(&case, &run);
        assert_eq!(run.report.get("net-irq"), Some("poll"), "{}", run.out.describe());
    }
}

/// MSI-X, with addresses from the command line (another documentation range).
#[test]
fn pci_msix_own_addresses() {
    let case = Case {
        test: "pci_msix_own_addresses",
        tokens: "net msix ip=198.51.100.7 peer=198.51.100.1",
        host_cidr: "198.51.100.1/24",
        guest_ip: "198.51.100.7",
        ..Default::default()
    };
    if let Some(run) = run(&case) {
        check(&case, &run);
        let (r, out) = (&run.report, &run.out);
        let irq = r.get("net-irq").unwrap_or("");
        assert!(
            irq.starts_with("msix ") && irq.contains(" config=0 queues=1-2 ") && irq.ends_with("enabled=1"),
            "{}",
            out.describe()
        );
        assert!(irqs(r, out) >= 2, "{}", out.describe());
    }
}

#[test]
fn pci_intx() {
    let case = Case { test: "pci_intx", tokens: "net intx", ..Default::default() };
    if let Some(run) = run(&case) {
        check(&case, &run);
        let (r, out) = (&run.report, &run.out);
        assert!(r.get("net-irq").is_some_and(|v| v.starts_with("intx pin=A line=")), "{}", out.describe());
        assert!(irqs(r, out) >= 2, "{}", out.describe());
    }
}

/// Two queue pairs: MQ through the control queue, the ping through transmit queue 3.
/// The tap steers the replies of a flow to the queue it came from, so they arrive on
/// receive queue 2.
#[test]
fn pci_mq_msix() {
    let case = Case { test: "pci_mq_msix", tokens: "net mq msix", mq: true, ..Default::default() };
    if let Some(run) = run(&case) {
        check(&case, &run);
        let (r, out) = (&run.report, &run.out);
        let d = || out.describe();
        let accepted = features(r, "net-driver-features", out);
        assert!(accepted & (1 << 22) != 0 && accepted & (1 << 17) != 0, "MQ and CTRL_VQ not accepted\n{}", d());
        assert_eq!(r.field("net-config", "max_virtqueue_pairs"), Some("2"), "{}", d());
        assert_eq!(r.get("net-mq"), Some("pairs=2 ok"), "{}", d());
        let queues: Vec<&str> = r.entries.iter().filter(|(k, _)| k == "net-queue").map(|(_, v)| v.as_str()).collect();
        assert_eq!(queues.len(), 5, "rx0 tx1 rx2 tx3 ctrl4\n{}", d());
        assert!(queues[4].starts_with("q=4 "), "the control queue is 2 * max_virtqueue_pairs\n{}", d());
        assert!(r.get("net-irq").is_some_and(|v| v.contains(" config=0 queues=1-5 ")), "{}", d());
        let rx2: u64 = r.field("net-stats", "rx2").and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(rx2 >= 1, "nothing arrived on receive queue 2\n{}", d());
        // MSI-X entry 3 belongs to receive queue 2.
        let e3: u64 = r.field("net-msix-irqs", "3").and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(e3 >= 1, "no interrupt for receive queue 2\n{}", d());
    }
}

/// The probe's VIRTIO_F_EVENT_IDX rules (kick only when avail.idx crosses
/// avail_event, used_event moved after each used entry) against QEMU's device,
/// with two queue pairs and the control queue.
#[test]
fn pci_mq_msix_event_idx() {
    let case = Case { test: "pci_mq_msix_event_idx", tokens: "net mq msix evidx", mq: true, ..Default::default() };
    if let Some(run) = run(&case) {
        check(&case, &run);
        let (r, out) = (&run.report, &run.out);
        let accepted = features(r, "net-driver-features", out);
        assert!(accepted & (1 << 29) != 0, "EVENT_IDX not accepted\n{}", out.describe());
        assert_eq!(r.get("net-mq"), Some("pairs=2 ok"), "{}", out.describe());
        assert!(r.get("net-event-idx").is_some_and(|v| v.starts_with("kicks=")), "{}", out.describe());
    }
}

/// microvm without ACPI: QEMU appends `virtio_mmio.device=512@0xfeb00e00:12`.
#[test]
fn mmio_irq() {
    let case = Case { test: "mmio_irq", transport: Transport::Mmio, tokens: "net mmio intx", ..Default::default() };
    if let Some(run) = run(&case) {
        check(&case, &run);
        let (r, out) = (&run.report, &run.out);
        assert_eq!(r.get("net-irq"), Some("mmio irq=12 gsi=12 trigger=level"), "{}", out.describe());
        assert!(irqs(r, out) >= 2, "{}", out.describe());
    }
}

#[test]
fn mmio_polling_host_ping() {
    let tokens = format!("net mmio net-serve={SERVE_SECS}");
    let case = Case {
        test: "mmio_polling_host_ping",
        transport: Transport::Mmio,
        tokens: &tokens,
        host_ping: true,
        ..Default::default()
    };
    if let Some(run) = run(&case) {
        check(&case, &run);
        assert_eq!(run.report.get("net-irq"), Some("poll"), "{}", run.out.describe());
    }
}
