//! virtio-net, virtio-rng, virtio-console and the balloon's control path end to
//! end: the probe guest's drivers (checked against QEMU in tests/tests/) drive
//! rvmm's devices. The network tests put a tap in a network namespace whose
//! kernel answers the guest's ARP and ping; they need root and skip otherwise.

mod common;

use std::process::Command;

use common::*;
use rvmm_tests::VmRunner;

/// A network namespace with a persistent tap, removed on drop.
struct Netns {
    name: String,
}

impl Netns {
    /// `tap` with `addr` (CIDR), up, inside a fresh namespace; `multi_queue` for MQ taps.
    fn with_tap(tag: &str, tap: &str, addr: &str, multi_queue: bool) -> Option<Netns> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || Command::new("ip").arg("-V").output().is_err() {
            eprintln!("SKIPPED: needs root and iproute2 for network namespaces");
            return None;
        }
        let name = format!("rvmm-{tag}-{}", std::process::id());
        let ns = Netns { name };
        let mode = if multi_queue { "vnet_hdr multi_queue" } else { "vnet_hdr" };
        let script = format!(
            "ip link set lo up && ip tuntap add dev {tap} mode tap {mode} && ip addr add {addr} dev {tap} && ip link set {tap} up"
        );
        let ok = Command::new("ip").args(["netns", "add", &ns.name]).status().is_ok_and(|s| s.success())
            && Command::new("ip")
                .args(["netns", "exec", &ns.name, "sh", "-c", &script])
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot create a namespace with a tap (is /dev/net/tun there?)");
            return None;
        }
        Some(ns)
    }

    /// `rvmm run args...` inside the namespace.
    fn rvmm(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, RVMM, "run"]).args(args);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn net_case(tag: &str, extra: &[&str], tokens: &str) {
    let Some(ns) = Netns::with_tap(tag, "tap0", "192.0.2.1/24", false) else { return };
    let mut args =
        vec!["--kernel", rvmm_probes::PVH_ELF, "--net", "tap=tap0,mac=52:54:00:12:34:56", "--cmdline", tokens];
    args.extend_from_slice(extra);
    let out = VmRunner::new(ns.rvmm(&args)).timeout(TIMEOUT).run().unwrap();
    let r = out.report();
    assert_eq!(r.get("net-mac"), Some("52:54:00:12:34:56"), "{}", out.describe());
    assert_eq!(r.get("net-link"), Some("up"), "{}", out.describe());
    assert_eq!(r.get("net-ping"), Some("ok seq=1 bytes=64"), "{}", out.describe());
    assert_eq!(r.get("net-result"), Some("ok"), "{}", out.describe());
    assert_exit(&out, 0);
}

#[test]
fn net_arp_and_ping_through_a_tap_polling() {
    net_case("net-poll", &[], "net");
}

#[test]
fn net_with_msix() {
    net_case("net-msix", &[], "net msix");
}

#[test]
fn net_with_intx_in_the_split_irqchip() {
    net_case("net-split", &["--irqchip", "split"], "net intx");
}

#[test]
fn net_over_mmio() {
    net_case("net-mmio", &["--transport", "mmio"], "mmio net intx");
}

#[test]
fn net_multiqueue_through_the_control_queue() {
    let Some(ns) = Netns::with_tap("net-mq", "tap1", "198.51.100.1/24", true) else { return };
    let args = [
        "--kernel",
        rvmm_probes::PVH_ELF,
        "--cpus",
        "2",
        "--net",
        "tap=tap1,queues=2",
        "--cmdline",
        "net mq msix ip=198.51.100.7 peer=198.51.100.1",
    ];
    let out = VmRunner::new(ns.rvmm(&args)).timeout(TIMEOUT).run().unwrap();
    assert_eq!(out.report().get("net-mq"), Some("pairs=2 ok"), "{}", out.describe());
    assert_eq!(out.report().get("net-result"), Some("ok"), "{}", out.describe());
    assert_exit(&out, 0);
}

#[test]
fn net_with_event_idx_and_multiqueue() {
    // With VIRTIO_F_EVENT_IDX the probe kicks only when avail.idx crosses the
    // device's avail_event; the device must keep moving it on the transmit and
    // control queues, or the second frame and the MQ command are never seen.
    let Some(ns) = Netns::with_tap("net-evidx", "tap1", "198.51.100.1/24", true) else { return };
    let args = [
        "--kernel",
        rvmm_probes::PVH_ELF,
        "--net",
        "tap=tap1,queues=2",
        "--cmdline",
        "net mq msix evidx ip=198.51.100.7 peer=198.51.100.1",
    ];
    let out = VmRunner::new(ns.rvmm(&args)).timeout(TIMEOUT).run().unwrap();
    let r = out.report();
    let accepted = r
        .get("net-driver-features")
        .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x").split(' ').next()?, 16).ok());
    assert!(accepted.is_some_and(|f| f & (1 << 29) != 0), "EVENT_IDX not accepted\n{}", out.describe());
    assert_eq!(r.get("net-mq"), Some("pairs=2 ok"), "{}", out.describe());
    assert_eq!(r.get("net-ping"), Some("ok seq=1 bytes=64"), "{}", out.describe());
    assert!(r.get("net-event-idx").is_some_and(|v| v.starts_with("kicks=")), "{}", out.describe());
    assert_eq!(r.get("net-result"), Some("ok"), "{}", out.describe());
    assert_exit(&out, 0);
}

#[test]
fn host_pings_the_guest() {
    let Some(ns) = Netns::with_tap("net-serve", "tap0", "192.0.2.1/24", false) else { return };
    let args = ["--kernel", rvmm_probes::PVH_ELF, "--net", "tap=tap0", "--cmdline", "net net-serve=4"];
    let ping_ns = ns.name.clone();
    let mut runner = VmRunner::new(ns.rvmm(&args)).timeout(TIMEOUT);
    let pinged = std::sync::Arc::new(std::sync::Mutex::new(None));
    let result = pinged.clone();
    runner = runner.spawn_after("net-serve:", move || {
        // A raw ICMP exchange from the namespace would also do; ping is the plain tool.
        let status =
            Command::new("ip").args(["netns", "exec", &ping_ns, "ping", "-c", "2", "-W", "2", "192.0.2.2"]).output();
        *result.lock().unwrap() = Some(status.map(|o| o.status.success()).unwrap_or(false));
    });
    let out = runner.run().unwrap();
    assert_exit(&out, 0);
    let pinged = *pinged.lock().unwrap();
    match pinged {
        Some(ok) => {
            if Command::new("ping").arg("-V").output().is_ok() {
                assert!(ok, "host ping of the guest failed\n{}", out.describe());
            } else {
                eprintln!("SKIPPED host ping: no ping binary");
            }
        }
        None => panic!("the probe never started serving\n{}", out.describe()),
    }
}

#[test]
fn rng_fills_buffers_in_every_interrupt_mode() {
    for (extra, tokens) in [
        (&[][..], "rng"),
        (&[][..], "rng msix"),
        (&[][..], "rng intx"),
        (&["--transport", "mmio"][..], "mmio rng intx"),
    ] {
        let mut args = vec!["--kernel", rvmm_probes::PVH_ELF, "--rng", "--cmdline", tokens];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert_eq!(out.report().get("rng-result"), Some("ok"), "{tokens}\n{}", out.describe());
        assert!(out.report().get("rng").unwrap_or("").starts_with("bytes=64"), "{}", out.describe());
        assert_exit(&out, 0);
    }
}

/// The probe's virtio-pci transport spec checks (`vpci-spec`, also run under QEMU in
/// tests/tests/qemu_virtio_misc.rs) on the virtio-rng function, then the normal rng run.
#[test]
fn virtio_pci_transport_spec_checks() {
    let out = run(&["--kernel", rvmm_probes::PVH_ELF, "--rng", "--cmdline", "rng vpci-spec"]);
    let r = out.report();
    let checks: Vec<_> = r.entries.iter().filter(|(k, _)| k.starts_with("vpci-spec-")).collect();
    assert!(checks.len() > 10, "too few vpci-spec lines\n{}", out.describe());
    for (k, v) in &checks {
        assert_eq!(v, "ok", "{k}\n{}", out.describe());
    }
    assert_eq!(r.get("vpci-spec-result"), Some("ok"), "{}", out.describe());
    assert_eq!(r.get("rng-result"), Some("ok"), "{}", out.describe());
    assert_exit(&out, 0);
}

/// The probe's virtio-mmio transport spec checks (`vmmio-spec`, also run under QEMU in
/// tests/tests/qemu_virtio_misc.rs) on the virtio-rng virtio-mmio device, then the
/// normal rng run.
#[test]
fn virtio_mmio_transport_spec_checks() {
    let out =
        run(&["--kernel", rvmm_probes::PVH_ELF, "--rng", "--transport", "mmio", "--cmdline", "mmio rng vmmio-spec"]);
    let r = out.report();
    let checks: Vec<_> = r.entries.iter().filter(|(k, _)| k.starts_with("vmmio-spec-")).collect();
    assert!(checks.len() > 10, "too few vmmio-spec lines\n{}", out.describe());
    for (k, v) in &checks {
        assert_eq!(v, "ok", "{k}\n{}", out.describe());
    }
    assert_eq!(r.get("vmmio-spec-result"), Some("ok"), "{}", out.describe());
    assert_eq!(r.get("rng-result"), Some("ok"), "{}", out.describe());
    assert_exit(&out, 0);
}

#[test]
fn virtio_console_output_and_input() {
    // The console is the virtio-console: its output on stdout, typed bytes to the guest.
    let out = VmRunner::new(rvmm_run(&[
        "--kernel",
        rvmm_probes::PVH_ELF,
        "--console",
        "virtio",
        "--cmdline",
        "console vcon-rx=4 msix",
    ]))
    .timeout(TIMEOUT)
    // Ctrl-A Ctrl-A is the console escape for one literal Ctrl-A: 5 typed bytes, 4 for the guest.
    .send_after("rvmm virtio-console hello", b"w\x01\x01zq")
    .run()
    .unwrap();
    assert!(out.stdout.contains("rvmm virtio-console hello\n"), "{}", out.describe());
    // Exit 0: the probe received exactly its 4 bytes on the receive queue.
    assert_exit(&out, 0);
}

#[test]
fn balloon_target_through_the_control_socket() {
    let socket = scratch("api.sock");
    let socket_str = socket.to_str().unwrap().to_string();
    let ctl = move |words: &[&str]| {
        let out = Command::new(RVMM).arg("ctl").arg(&socket_str).args(words).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (mut child, seen) = spawn_until(
        &[
            "--kernel",
            rvmm_probes::PVH_ELF,
            "--balloon",
            "--api-socket",
            socket.to_str().unwrap(),
            "--cmdline",
            "pci echo",
        ],
        "probe-result: ok",
    );
    assert!(seen.contains("1af4:1045"), "no balloon on the PCI bus");
    let (code, answer) = ctl(&["balloon", "64"]);
    assert_eq!(code, Some(0), "{answer}");
    assert!(answer.starts_with("ok target=64 MiB"), "{answer}");
    let (code, answer) = ctl(&["stats"]);
    assert!(code == Some(0) && answer.contains("exit statistics"), "{answer}");
    let (code, answer) = ctl(&["nonsense"]);
    assert!(code == Some(1) && answer.starts_with("error"), "{answer}");
    let (code, _) = ctl(&["quit"]);
    assert_eq!(code, Some(0));
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
