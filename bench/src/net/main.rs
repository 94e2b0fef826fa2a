//! `rvmm-net-bench`: frames per second and Gbit/s through rvmm's virtio-net device
//! model, guest-to-tap and tap-to-guest, against a raw tap `write()`/`read()` loop on
//! the same tap.
//!
//! The program moves itself into a fresh network namespace (`unshare(CLONE_NEWNET)`,
//! gone when it exits) and creates a tap there ([`netenv`]). For each case — a
//! direction, a frame kind (64-byte and 1514-byte UDP frames, a 64 KiB TCP frame with
//! segmentation offload), and the offloads in play — it measures, interleaved:
//!
//! - **raw**: plain `write()` of the frames to the tap fd, or `read()` from it, on one
//!   thread ([`raw`]);
//! - **virtio-net**: rvmm's `NetWorker` over the same tap, driven inline by a driver in
//!   this process on a virtqueue in guest memory ([`device`]).
//!
//! Guest-to-tap frames go into the host stack, which drops them at the IP layer
//! (they are addressed to another MAC); the tap's own counters confirm that every
//! frame counted reached the kernel. Tap-to-guest frames come from an injector thread
//! that sends them out of the tap through an `AF_PACKET` transmit ring ([`inject`]). The
//! report gives frames/s, Gbit/s (Ethernet bytes, no virtio-net header), the ratio of
//! the device's rate to the raw rate of the same case, the measuring thread's CPU time
//! per frame, and, for tap-to-guest, the share of frames the tap dropped because its
//! reader was behind (near 0 means the injector, not the reader, set the pace).

#[path = "../args.rs"]
mod args;
#[path = "../rusage.rs"]
mod rusage;
#[path = "../signals.rs"]
mod signals;
// Shared with rvmm-bench, whose summaries (Summary) are not used here.
#[allow(dead_code)]
#[path = "../stats.rs"]
mod stats;
// Shared with rvmm-bench; only some of its facts are reported here.
#[allow(dead_code)]
#[path = "../host.rs"]
mod host;

mod device;
mod frames;
mod inject;
mod meter;
mod netenv;
mod raw;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use virtio::net::tap::{NetBackend, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN};

use args::{parse_seconds, parse_whole, ArgsExit};
use frames::{Expect, Kind, GSO_FRAME_LEN, GSO_SEGMENTS, GSO_SEGMENT_LEN, GSO_SIZE, GSO_TCPV4};
use meter::{Measurement, Window};
use netenv::{Problem, TapEnv};

const USAGE: &str = "\
usage: rvmm-net-bench [OPTIONS]

Measures rvmm's virtio-net device model (its worker over a real tap, driven by a
virtqueue driver in this process; no guest runs) against plain write()/read() on
the same tap fd. Prints frames/s, Gbit/s and the ratio of each device rate to the
raw rate. Needs root: it makes a private network namespace and a tap in it
(both gone when it exits); without root or /dev/net/tun it skips (exit 0).

Build first: cargo build --release -p rvmm-bench
             (then: sudo target/release/rvmm-net-bench)

options:
  --seconds S    measured time per case (default 2)
  --warmup S     untimed time before each measurement (default 0.3)
  --rounds N     repeat every case N times, interleaved; report the median (default 1)
  --cases LIST   tx-64,tx-1514,tx-tso,rx-64,rx-1514,rx-tso,rx-tso-segmented
                 (default: all)
  --batch N      transmit chains the driver makes available per device call,
                 1 to 256 (default 64)
  --injector M   how tap->guest frames are made: copy (sendmmsg; every frame a
                 new packet) or ring (PACKET_TX_RING; packets refer to the
                 ring's pages, no copy) (default copy)
  --paths LIST   raw,device: leave one out, e.g. to profile the other (default: both)
  --markdown     print the report as Markdown
  -h, --help     print this help
";

/// Which way frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// The guest sends: virtqueue -> tap -> host stack.
    Tx,
    /// The guest receives: host -> tap -> virtqueue.
    Rx,
}

/// One case of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Tx64,
    Tx1514,
    TxTso,
    Rx64,
    Rx1514,
    RxTso,
    RxTsoSegmented,
}

/// What rvmm sets on the tap for a Linux guest that acks every offload it is offered.
const GUEST_OFFLOADS: u32 = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;

impl Case {
    const ALL: [Case; 7] =
        [Case::Tx64, Case::Tx1514, Case::TxTso, Case::Rx64, Case::Rx1514, Case::RxTso, Case::RxTsoSegmented];

    fn name(self) -> &'static str {
        match self {
            Case::Tx64 => "tx-64",
            Case::Tx1514 => "tx-1514",
            Case::TxTso => "tx-tso",
            Case::Rx64 => "rx-64",
            Case::Rx1514 => "rx-1514",
            Case::RxTso => "rx-tso",
            Case::RxTsoSegmented => "rx-tso-segmented",
        }
    }

    fn from_name(s: &str) -> Option<Case> {
        Case::ALL.into_iter().find(|c| c.name() == s)
    }

    fn dir(self) -> Dir {
        match self {
            Case::Tx64 | Case::Tx1514 | Case::TxTso => Dir::Tx,
            _ => Dir::Rx,
        }
    }

    /// What the guest sends (tx) or the injector sends (rx).
    fn kind(self) -> Kind {
        match self {
            Case::Tx64 | Case::Rx64 => Kind::Udp(64),
            Case::Tx1514 | Case::Rx1514 => Kind::Udp(1514),
            Case::TxTso | Case::RxTso | Case::RxTsoSegmented => Kind::Tso,
        }
    }

    /// The TUNSETOFFLOAD flags (rx).
    fn tap_offloads(self) -> u32 {
        if self == Case::RxTsoSegmented {
            0
        } else {
            GUEST_OFFLOADS
        }
    }

    /// The frames the guest (or the raw reader) must get (rx).
    fn expect(self) -> Expect {
        match self {
            Case::RxTso => Expect { frame_len: GSO_FRAME_LEN, gso_type: GSO_TCPV4 },
            Case::RxTsoSegmented => Expect { frame_len: GSO_SEGMENT_LEN, gso_type: 0 },
            c => Expect { frame_len: c.kind().frame_len(), gso_type: 0 },
        }
    }

    /// Receive buffer size: the smallest mergeable buffer Linux's driver posts for a
    /// 1500-byte MTU (1518 + header, cache-line aligned) for MTU-sized frames, a page
    /// (what it grows to under large packets) for the 64 KiB frames.
    fn rx_buf_len(self) -> u32 {
        if self == Case::RxTso {
            4096
        } else {
            1536
        }
    }

    fn direction(self) -> &'static str {
        match self.dir() {
            Dir::Tx => "guest→tap",
            Dir::Rx => "tap→guest",
        }
    }

    fn frame(self) -> String {
        match self {
            Case::Tx64 | Case::Rx64 => "64 B UDP".into(),
            Case::Tx1514 | Case::Rx1514 => "1514 B UDP".into(),
            Case::TxTso | Case::RxTso => format!("{GSO_FRAME_LEN} B TCP ({GSO_SEGMENTS}×{GSO_SIZE} MSS)"),
            Case::RxTsoSegmented => format!("{GSO_SEGMENT_LEN} B TCP (segments of {GSO_FRAME_LEN} B)"),
        }
    }

    fn offloads(self) -> &'static str {
        match self {
            Case::Tx64 | Case::Tx1514 => "none",
            Case::TxTso => "TSO4 + CSUM (HOST_TSO4)",
            Case::Rx64 | Case::Rx1514 => "guest's on, unused",
            Case::RxTso => "TSO4 + CSUM (GUEST_TSO4)",
            Case::RxTsoSegmented => "none: kernel segments",
        }
    }
}

/// What moves the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Raw,
    Device,
}

impl Path {
    fn label(self, dir: Dir) -> &'static str {
        match (self, dir) {
            (Path::Raw, Dir::Tx) => "raw write()",
            (Path::Raw, Dir::Rx) => "raw read()",
            (Path::Device, _) => "virtio-net",
        }
    }
}

/// The command-line options.
#[derive(Debug, Clone)]
struct Options {
    window: Window,
    rounds: usize,
    cases: Vec<Case>,
    batch: usize,
    injector: inject::Method,
    paths: Vec<Path>,
    markdown: bool,
}

fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Options, ArgsExit> {
    let mut o = Options {
        window: Window { warmup: Duration::from_millis(300), measure: Duration::from_secs(2) },
        rounds: 1,
        cases: Case::ALL.to_vec(),
        batch: 64,
        injector: inject::Method::Copy,
        paths: vec![Path::Raw, Path::Device],
        markdown: false,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(arg) = arg.to_str().map(str::to_string) else {
            return Err(ArgsExit::Usage(format!("unexpected argument {}", arg.to_string_lossy())));
        };
        match arg.as_str() {
            "-h" | "--help" => return Err(ArgsExit::Help),
            "--markdown" => {
                o.markdown = true;
                continue;
            }
            _ => {}
        }
        let value = match args.next() {
            Some(v) => v.to_string_lossy().into_owned(),
            None if arg.starts_with("--") => return Err(ArgsExit::Usage(format!("{arg} needs a value (see --help)"))),
            None => return Err(ArgsExit::Usage(format!("unknown argument '{arg}' (see --help)"))),
        };
        match arg.as_str() {
            "--seconds" => o.window.measure = parse_seconds("--seconds", &value, 0.1)?,
            "--warmup" => o.window.warmup = parse_seconds("--warmup", &value, 0.0)?,
            "--rounds" => o.rounds = parse_whole("--rounds", &value, 1, 100)?,
            "--injector" => {
                o.injector = match value.as_str() {
                    "copy" => inject::Method::Copy,
                    "ring" => inject::Method::Ring,
                    _ => return Err(ArgsExit::Usage(format!("--injector {value}: expected copy or ring"))),
                }
            }
            "--paths" => {
                let mut paths = Vec::new();
                for p in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    paths.push(match p {
                        "raw" => Path::Raw,
                        "device" => Path::Device,
                        _ => {
                            return Err(ArgsExit::Usage(format!("--paths: unknown path '{p}' (expected raw, device)")))
                        }
                    });
                }
                if paths.is_empty() {
                    return Err(ArgsExit::Usage("--paths needs at least one path".into()));
                }
                paths.dedup();
                o.paths = paths;
            }
            "--batch" => o.batch = parse_whole("--batch", &value, 1, usize::from(device::QUEUE_SIZE))?,
            "--cases" => {
                let mut cases = Vec::new();
                for s in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let c = Case::from_name(s).ok_or_else(|| {
                        let all: Vec<&str> = Case::ALL.iter().map(|c| c.name()).collect();
                        ArgsExit::Usage(format!("--cases: unknown case '{s}' (expected {})", all.join(", ")))
                    })?;
                    if !cases.contains(&c) {
                        cases.push(c);
                    }
                }
                if cases.is_empty() {
                    return Err(ArgsExit::Usage("--cases needs at least one case".into()));
                }
                o.cases = cases;
            }
            other => return Err(ArgsExit::Usage(format!("unknown argument '{other}' (see --help)"))),
        }
    }
    Ok(o)
}

/// The tap and the backend that owns its fd (lent to the device during its cases).
struct Bench {
    env: TapEnv,
}

impl Bench {
    fn fd(&self) -> std::os::fd::RawFd {
        self.env.tap.as_raw_fd()
    }

    /// Runs the device loop `f` with the backend, and puts the backend back.
    fn with_backend(
        &mut self,
        f: impl FnOnce(Box<dyn NetBackend>) -> (Result<Measurement, String>, Box<dyn NetBackend>),
    ) -> Result<Measurement, String> {
        // A placeholder while the device owns the tap: a backend that is never used.
        let placeholder: Box<dyn NetBackend> = Box::new(Unused);
        let tap = std::mem::replace(&mut self.env.tap, placeholder);
        let (result, tap) = f(tap);
        self.env.tap = tap;
        result
    }

    fn run(&mut self, o: &Options, case: Case, path: Path) -> Result<Measurement, String> {
        match case.dir() {
            Dir::Tx => self.run_tx(o, case, path),
            Dir::Rx => self.run_rx(o, case, path),
        }
    }

    fn run_tx(&mut self, o: &Options, case: Case, path: Path) -> Result<Measurement, String> {
        raw::drain(self.fd())?;
        let m = match path {
            Path::Raw => raw::tx(self.fd(), case.kind(), o.window)?,
            Path::Device => self.with_backend(|b| device::tx(b, case.kind(), o.batch, o.window))?,
        };
        // Every frame counted must have reached the host: the tap counts what it was given.
        let l = m.link;
        if l.rx_packets != m.counts.frames || l.rx_bytes != m.counts.bytes || l.rx_dropped != 0 {
            return Err(format!(
                "sent {} frames of {} bytes, but the tap received {} frames, {} bytes ({} dropped)",
                m.counts.frames, m.counts.bytes, l.rx_packets, l.rx_bytes, l.rx_dropped
            ));
        }
        Ok(m)
    }

    fn run_rx(&mut self, o: &Options, case: Case, path: Path) -> Result<Measurement, String> {
        self.env
            .tap
            .set_offload(case.tap_offloads())
            .map_err(|e| format!("TUNSETOFFLOAD {:#x}: {e}", case.tap_offloads()))?;
        raw::drain(self.fd())?;
        let injector = inject::start(self.env.ifindex, case.kind(), o.injector)?;
        let result = match path {
            Path::Raw => raw::rx(self.fd(), case.expect(), o.window),
            Path::Device => self.with_backend(|b| device::rx(b, case.expect(), case.rx_buf_len(), o.window)),
        };
        let stats = injector.stop();
        raw::drain(self.fd())?;
        let m = result?;
        let stats = stats?;
        if stats.sent == 0 {
            return Err("the injector sent nothing".into());
        }
        Ok(m)
    }
}

/// Stands in for the tap while the device owns it.
struct Unused;

impl NetBackend for Unused {
    fn recv(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("no backend"))
    }
    fn send(&mut self, _: &[libc::iovec]) -> std::io::Result<usize> {
        Err(std::io::Error::other("no backend"))
    }
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        -1
    }
    fn set_offload(&mut self, _: u32) -> std::io::Result<()> {
        Err(std::io::Error::other("no backend"))
    }
}

/// One row of the report: a case, a path, and its runs.
struct Row {
    case: Case,
    path: Path,
    runs: Vec<Measurement>,
}

impl Row {
    fn median(&self, f: impl Fn(&Measurement) -> f64) -> f64 {
        stats::median(&self.runs.iter().map(f).collect::<Vec<_>>())
    }
    fn fps(&self) -> f64 {
        self.median(Measurement::fps)
    }
    /// (max - min) / median of frames/s, percent; None with one run.
    fn spread(&self) -> Option<f64> {
        stats::spread_percent(&self.runs.iter().map(Measurement::fps).collect::<Vec<_>>())
    }
}

/// Tap drops (percent) below which a tap→guest reader is taken to have kept up with
/// the injector: the rate is then the injector's.
const INJECTOR_BOUND: f64 = 1.0;

fn tap_drops(m: &Measurement) -> f64 {
    let offered = m.link.tx_packets + m.link.tx_dropped;
    m.link.tx_dropped as f64 / offered.max(1) as f64 * 100.0
}

fn qdisc() -> String {
    match std::process::Command::new("tc").args(["qdisc", "show", "dev", netenv::TAP_NAME]).output() {
        Ok(out) if out.status.success() => {
            let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if s.is_empty() {
                "none shown by tc".into()
            } else {
                s
            }
        }
        Ok(out) => format!("unknown (tc: {})", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => format!("unknown (tc: {e})"),
    }
}

fn hypervisor() -> &'static str {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    if flags.split_whitespace().any(|f| f == "hypervisor") {
        "a virtual machine ('hypervisor' CPU flag): the tap and the host stack run in a guest kernel"
    } else {
        "no 'hypervisor' CPU flag (bare metal, as far as the CPU says)"
    }
}

fn run(o: &Options) -> Result<(), Problem> {
    let env = netenv::setup()?;
    let host = host::Host::gather();
    let load_before = host::loadavg();
    let mut facts: Vec<(String, String)> = vec![
        ("date".into(), host.date.clone()),
        ("host kernel".into(), host.kernel.clone()),
        ("CPU".into(), host.cpu.clone()),
        ("machine".into(), hypervisor().into()),
        (
            "tap".into(),
            format!(
                "{} (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 12-byte headers) in a private network namespace, \
                 MTU {}, txqueuelen {}, qdisc: {}",
                netenv::TAP_NAME,
                env.mtu,
                env.txqueuelen,
                qdisc()
            ),
        ),
    ];
    let mut bench = Bench { env };
    let mut rows: Vec<Row> = Vec::new();
    for round in 0..o.rounds {
        for &case in &o.cases {
            for &path in &o.paths {
                let what = format!("{} {}", case.name(), path.label(case.dir()));
                eprint!("[{}/{}] {what} ... ", round + 1, o.rounds);
                let m = bench.run(o, case, path).map_err(|e| Problem::Fail(format!("{what}: {e}")))?;
                if m.counts.frames == 0 {
                    return Err(Problem::Fail(format!("{what}: no frame moved in the measured time")));
                }
                eprintln!("{:.0} frames/s, {:.2} Gbit/s", m.fps(), m.gbps());
                match rows.iter_mut().find(|r| r.case == case && r.path == path) {
                    Some(r) => r.runs.push(m),
                    None => rows.push(Row { case, path, runs: vec![m] }),
                }
            }
        }
    }
    facts.push(("load average (1/5/15 min)".into(), format!("{load_before} before, {} after", host::loadavg())));
    print_report(o, &facts, &rows);
    Ok(())
}

fn print_report(o: &Options, facts: &[(String, String)], rows: &[Row]) {
    let md = o.markdown;
    let window = format!(
        "{} s measured per case after {} s warm-up, {} round(s), raw and device interleaved{}",
        o.window.measure.as_secs_f64(),
        o.window.warmup.as_secs_f64(),
        o.rounds,
        if o.rounds > 1 { "; median shown" } else { "" }
    );
    for (k, v) in facts.iter().chain([("runs".to_string(), window)].iter()) {
        if md {
            println!("- **{k}:** {v}");
        } else {
            println!("{k}: {v}");
        }
    }
    println!();
    let spread = o.rounds > 1;
    let mut header = vec![
        "direction",
        "frame",
        "offloads",
        "path",
        "frames/s",
        "Gbit/s",
        "ratio to raw",
        "CPU µs/frame",
        "irq/frame",
        "tap drops",
    ];
    if spread {
        header.push("spread");
    }
    let mut table: Vec<Vec<String>> = Vec::new();
    let mut unexpected = 0u64;
    let mut marked = false;
    for r in rows {
        let raw_row = rows.iter().find(|x| x.case == r.case && x.path == Path::Raw);
        let raw = raw_row.map(Row::fps);
        let fps = r.fps();
        // tap→guest rows whose rate the injector set (see the note below).
        let paced = |row: &Row| row.case.dir() == Dir::Rx && row.median(tap_drops) < INJECTOR_BOUND;
        let ratio = match raw {
            None => "-".to_string(),
            Some(raw) if r.path == Path::Device && raw_row.is_some_and(paced) => {
                marked = true;
                if paced(r) {
                    format!("{:.2}*", fps / raw)
                } else {
                    format!("≤{:.2}", fps / raw)
                }
            }
            Some(raw) => format!("{:.2}", fps / raw),
        };
        unexpected += r.runs.iter().map(|m| m.counts.unexpected).sum::<u64>();
        let mut cells = vec![
            r.case.direction().to_string(),
            r.case.frame(),
            r.case.offloads().to_string(),
            r.path.label(r.case.dir()).to_string(),
            format!("{fps:.0}"),
            format!("{:.2}", r.median(Measurement::gbps)),
            ratio,
            format!("{:.2}", r.median(Measurement::cpu_us_per_frame)),
            match r.path {
                Path::Device => {
                    format!("{:.3}", r.median(|m| m.counts.interrupts as f64 / m.counts.frames.max(1) as f64))
                }
                Path::Raw => "-".into(),
            },
            match r.case.dir() {
                Dir::Rx => format!("{:.1}%", r.median(tap_drops)),
                Dir::Tx => "-".into(),
            },
        ];
        if spread {
            cells.push(r.spread().map_or("-".into(), |s| format!("{s:.0}%")));
        }
        table.push(cells);
    }
    let numeric = |i: usize| i >= 4;
    if md {
        println!("| {} |", header.join(" | "));
        let seps: Vec<&str> = (0..header.len()).map(|i| if numeric(i) { "---:" } else { "---" }).collect();
        println!("| {} |", seps.join(" | "));
        for row in &table {
            println!("| {} |", row.join(" | "));
        }
    } else {
        let widths: Vec<usize> = (0..header.len())
            .map(|i| table.iter().map(|r| r[i].chars().count()).chain([header[i].chars().count()]).max().unwrap_or(0))
            .collect();
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let pad = widths[i].saturating_sub(c.chars().count());
                    if numeric(i) {
                        format!("{}{c}", " ".repeat(pad))
                    } else {
                        format!("{c}{}", " ".repeat(pad))
                    }
                })
                .collect();
            println!("{}", parts.join("  ").trim_end());
        };
        line(&header.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        for row in &table {
            line(row);
        }
    }
    println!();
    let mut notes = vec![
        "raw: the same frames on the same tap fd with plain write() (guest→tap; 256 separate \
         buffers in turn, header included) or read() (tap→guest; poll() when the tap is empty), \
         one thread, no device model. ratio = the device's frames/s / raw frames/s of the same case."
            .to_string(),
        format!(
            "virtio-net: rvmm's NetWorker over the same tap, called inline by an in-process driver on \
             a 256-entry split virtqueue in guest memory (no guest, no worker thread, no kicks). \
             guest→tap: {} chains made available per process_tx call; 64/1514 B frames are one \
             descriptor (header + frame), the TSO frame an indirect chain of 17 (header + 66 bytes of \
             headers, then 4 KiB payload pieces). tap→guest: 256 mergeable receive buffers (1536 B; \
             4096 B for the whole 64 KiB frames), refilled after every process_rx call; poll() on \
             the tap fd when a call delivered nothing. Interrupts are eventfd writes (as through an \
             irqfd), one per call that used buffers (event-index suppression off).",
            o.batch
        ),
        "Gbit/s: Ethernet frame bytes (no virtio-net header, no FCS), 10^9 bits per second. CPU \
         µs/frame: user + system time of the measuring thread (getrusage RUSAGE_THREAD) per frame; \
         for guest→tap this includes the host stack's handling of each frame, which runs inside \
         write(); for virtio-net it includes the in-process driver's own small share (publishing \
         chains, reading the used ring, checking received headers). spread: (max - min) / median \
         of frames/s over the rounds."
            .to_string(),
        format!(
            "guest→tap sink: frames go to a MAC that is not the tap's, so the host stack drops them \
             at the IP layer (PACKET_OTHERHOST) without segmenting them. Checked for every \
             guest→tap row: the tap's rx counters (/proc/net/dev) over the window equal the frames \
             and bytes counted, none dropped. The TSO frame: virtio-net header NEEDS_CSUM (csum_start 34, offset 16), \
             gso_type TCPV4, gso_size {GSO_SIZE}, hdr_len 66; Ethernet/IPv4/TCP with timestamps, \
             IPv4 header checksum valid, TCP checksum field holding the pseudo-header sum."
        ),
        format!(
            "tap→guest source: an injector thread sends the frames out of the tap through an \
             AF_PACKET socket (the TSO frame with PACKET_VNET_HDR) as fast as it can, through the \
             tap's qdisc; {}. The tun driver queues up to txqueuelen frames for the reader and \
             drops the rest. tap drops = dropped / (read + dropped) from the tap's tx counters: \
             well above 0 means the reader (raw or device) set the rate; near 0 means the \
             injector did, and the reader's rate is a lower bound of what it could do. rx-tso: the \
             tap has the guest's offloads (TUNSETOFFLOAD CSUM|TSO4|TSO6|TSO_ECN, what rvmm sets for \
             a Linux guest), so each 64 KiB packet reaches the guest whole, with a GSO header, \
             spread over 16 buffers. rx-tso-segmented: no offloads, so the kernel cuts each into \
             45 frames of 1514 B and checksums them in the injector's thread. rx-64/rx-1514: the \
             same offloads as rx-tso; they do not change plain frames.",
            format!(
                "--injector {}: {}",
                o.injector.name(),
                match o.injector {
                    inject::Method::Copy => "sendmmsg, 64 frames per call, each copied into a new packet",
                    inject::Method::Ring => "a PACKET_TX_RING whose pages the packets refer to (no copy)",
                }
            )
        ),
        "Each received frame is checked (length, and the gso_type of its virtio-net header); \
         only frames that match are counted."
            .to_string(),
    ];
    if marked {
        notes.push(format!(
            "≤: the raw reader kept up with the injector (tap drops under {INJECTOR_BOUND}%), so the \
             raw rate is the injector's, not the raw reader's limit, and the device's true ratio is \
             at most the one shown; the CPU µs/frame of the two rows compare their costs directly. \
             *: both readers kept up with the injector: the ratio compares two injector-set rates."
        ));
    }
    if unexpected > 0 {
        notes.push(format!(
            "{unexpected} frame(s) moved that were not the case's frames (stray traffic, or refused \
             writes on guest→tap); they are not counted."
        ));
    }
    args::print_notes(&notes, md);
}

fn main() -> ExitCode {
    let options = match args::options_or_exit("rvmm-net-bench", USAGE, parse_args(std::env::args_os().skip(1))) {
        Ok(o) => o,
        Err(code) => return code,
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Problem::Skip(why)) => {
            eprintln!("rvmm-net-bench: skipped: {why}");
            ExitCode::SUCCESS
        }
        Err(Problem::Fail(e)) => {
            eprintln!();
            eprintln!("rvmm-net-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn defaults_and_options() {
        let o = parse_args(args(&[])).unwrap();
        assert_eq!(o.cases.len(), 7);
        assert_eq!(o.window.measure, Duration::from_secs(2));
        let o =
            parse_args(args(&["--cases", "rx-tso,tx-64", "--seconds", "0.5", "--batch", "8", "--markdown"])).unwrap();
        assert_eq!(o.cases, vec![Case::RxTso, Case::Tx64]);
        assert_eq!(o.batch, 8);
        assert!(o.markdown);
    }

    #[test]
    fn bad_arguments() {
        for bad in [&["--cases", "tx"][..], &["--batch", "0"], &["--batch", "257"], &["--seconds"], &["--bogus", "1"]] {
            assert!(matches!(parse_args(args(bad)), Err(ArgsExit::Usage(_))), "{bad:?}");
        }
    }
}
