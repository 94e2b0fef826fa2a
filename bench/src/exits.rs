//! `rvmm-bench --exits [N]`: what one VM exit costs, and how much of it is rvmm's own code.
//!
//! The PVH probe is booted with `quick exits=N`: after printing `rvmm-probe: quick` it reads
//! port 0xf4 (the debug exit device) N times and the vendor/device ID dword of 00:00.0
//! through ECAM N times, prints `exits: pio=N mmio=N ...`, and exits. Every one of those
//! reads is an exit to the VMM whose handling is trivial. The same probe with `exits=0`
//! is the baseline: same boot, same console output but for a few characters, no exits.
//! Each round runs both (in alternating order) for every VMM, and gives:
//!
//! - the **round trip** per exit, from the wall-clock difference of the two runs divided
//!   by the 2N exits: the guest's exiting instruction, KVM and the VMM together. The time
//!   of a run is from the arrival of its first console line (`rvmm-probe: quick`) to the
//!   arrival of its `exits:` line, which leaves out boot (seconds of SeaBIOS on q35) and
//!   teardown, both much noisier than the exits themselves; the whole-life difference
//!   (spawn to exit) is reported as well;
//! - for rvmm, its own **dispatch** time per exit (from KVM_RUN's return to the next
//!   KVM_RUN), from the `--stats` report of both runs: their difference isolates the
//!   2N benchmark exits.

use crate::measure::Outcome;

/// The default N of `--exits`.
pub const DEFAULT_EXITS: u32 = 20_000;
/// The largest N `--exits` accepts (2 million exits: about 20 s per run on this host).
pub const MAX_EXITS: u32 = 1_000_000;
/// The probe's report line for `exits=N`.
pub const EXITS_PREFIX: &str = "exits: ";
/// The start of that line, as the console shows it once.
const EXITS_LINE: &[u8] = b"exits: pio=";
/// rvmm's `--stats` device name of the debug exit port (`pio debug exit 0xf4-0xf4`).
const DEBUG_EXIT_DEVICE: &str = "pio debug exit";
/// rvmm's `--stats` device name of the ECAM window (`mmio PCI ECAM 0x...-0x...`).
const ECAM_DEVICE: &str = "mmio PCI ECAM";

/// What rvmm's `--stats` report (on stderr when the VM ends) says, summed over vCPUs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExitStats {
    /// All exits (`user-space exit handling: N exits, ...`).
    pub exits: u64,
    /// The mean handling time, ns (rvmm prints whole nanoseconds).
    pub mean_ns: u64,
    /// Exits by reason (`io-in`, `mmio-read`, ...).
    pub reasons: Vec<(String, u64)>,
    /// The log2 histogram: (bucket's lower bound in ns, count); a bucket is [lo, 2 lo).
    pub histogram: Vec<(u64, u64)>,
    /// Device accesses: (name and range, reads, writes).
    pub devices: Vec<(String, u64, u64)>,
}

impl ExitStats {
    /// Parses the report out of rvmm's stderr (other log lines around it are ignored).
    pub fn parse(stderr: &[u8]) -> Option<ExitStats> {
        let text = String::from_utf8_lossy(stderr);
        let mut lines = text.lines().skip_while(|l| l.trim_end() != "exit statistics");
        lines.next()?;
        let mut s = ExitStats::default();
        let mut in_devices = false;
        for line in lines {
            if let Some(rest) = line.strip_prefix("user-space exit handling: ") {
                // `N exits, mean M ns`
                let (n, mean) = rest.split_once(" exits, mean ")?;
                s.exits = n.trim().parse().ok()?;
                s.mean_ns = mean.trim().strip_suffix(" ns")?.trim().parse().ok()?;
            } else if line == "device accesses" {
                in_devices = true;
            } else if in_devices {
                // `  NAME   R reads   W writes`
                let w: Vec<&str> = line.split_whitespace().collect();
                match w.as_slice() {
                    [name @ .., r, "reads", wr, "writes"] if !name.is_empty() => {
                        s.devices.push((name.join(" "), r.parse().ok()?, wr.parse().ok()?));
                    }
                    _ => break,
                }
            } else if line.starts_with(' ') && line.contains(" ns .. ") {
                // `  LO ns ..  HI ns: N`
                let (lo, rest) = line.trim().split_once(" ns .. ")?;
                let (_, n) = rest.split_once(':')?;
                s.histogram.push((lo.trim().parse().ok()?, n.trim().parse().ok()?));
            } else if s.exits == 0 {
                // `reason   vcpu0 ...` heading, then `io-in   N ...` rows.
                let mut w = line.split_whitespace();
                let Some(name) = w.next() else { continue };
                if name == "reason" {
                    continue;
                }
                let counts: Option<Vec<u64>> = w.map(|c| c.parse().ok()).collect();
                s.reasons.push((name.to_string(), counts?.iter().sum()));
            } else {
                break;
            }
        }
        (s.exits > 0 || !s.reasons.is_empty()).then_some(s)
    }

    /// Total handling time, ns (from the mean, so to within `exits` ns).
    fn total_ns(&self) -> f64 {
        self.mean_ns as f64 * self.exits as f64
    }

    /// Reads of the first device whose name starts with `prefix`.
    fn device_reads(&self, prefix: &str) -> u64 {
        self.devices.iter().find(|(n, _, _)| n.starts_with(prefix)).map_or(0, |d| d.1)
    }
}

/// The median of a log2 histogram of (lower bound, count), interpolating linearly within
/// the bucket that holds it: an estimate, good to the bucket's width at worst.
pub fn histogram_median(buckets: &[(u64, u64)]) -> Option<f64> {
    let total: u64 = buckets.iter().map(|b| b.1).sum();
    if total == 0 {
        return None;
    }
    let half = total as f64 / 2.0;
    let mut below = 0.0;
    for &(lo, n) in buckets {
        let n = n as f64;
        if n > 0.0 && below + n >= half {
            let width = lo.max(1) as f64;
            return Some(lo as f64 + (half - below) / n * width);
        }
        below += n;
    }
    None
}

/// `exits: pio=P mmio=M ...` from the probe's console: (P, M).
pub fn parse_exits_line(stdout: &[u8]) -> Option<(u64, u64)> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().find_map(|l| l.trim_end().strip_prefix(EXITS_PREFIX))?;
    let field =
        |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse::<u64>().ok());
    Some((field("pio=")?, field("mmio=")?))
}

/// rvmm's own dispatch time for the benchmark's exits: its `--stats` of the N run minus
/// those of the baseline run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dispatch {
    /// Exits counted in the N run minus the baseline's (2N expected, plus the COM1
    /// exits of the longer report line).
    pub counted: u64,
    /// Reads of the debug exit port in the N run (N expected).
    pub port_reads: u64,
    /// Reads of the ECAM window in the N run (N expected).
    pub ecam_reads: u64,
    /// Mean handling time of the extra exits, ns.
    pub mean_ns: f64,
    /// Their median, estimated from the difference of the two histograms, ns.
    pub median_ns: Option<f64>,
}

impl Dispatch {
    /// The difference of the N run's stats and the baseline's.
    pub fn between(full: &ExitStats, base: &ExitStats) -> Option<Dispatch> {
        let counted = full.exits.checked_sub(base.exits).filter(|&n| n > 0)?;
        let mean_ns = ((full.total_ns() - base.total_ns()) / counted as f64).max(0.0);
        let histogram: Vec<(u64, u64)> = full
            .histogram
            .iter()
            .map(|&(lo, n)| {
                let b = base.histogram.iter().find(|h| h.0 == lo).map_or(0, |h| h.1);
                (lo, n.saturating_sub(b))
            })
            .collect();
        Some(Dispatch {
            counted,
            port_reads: full.device_reads(DEBUG_EXIT_DEVICE),
            ecam_reads: full.device_reads(ECAM_DEVICE),
            mean_ns,
            median_ns: histogram_median(&histogram),
        })
    }
}

/// One round of one VMM: the `exits=N` run and the `exits=0` run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExitPair {
    /// Port reads and MMIO reads the probe reported for the N run.
    pub pio: u64,
    /// (0 when the guest found no ECAM.)
    pub mmio: u64,
    /// Whole-life latency of the N run and of the baseline, ms.
    pub life_ms: (f64, f64),
    /// The time from the guest's first console line to its `exits:` line, N run and
    /// baseline, ms (arrival of each line's first byte on the VMM's stdout).
    pub console_ms: (f64, f64),
    /// rvmm's own figures (`--stats`), for rvmm.
    pub dispatch: Option<Dispatch>,
}

impl ExitPair {
    /// Reduces the two runs of a round (already checked for exit code and console line);
    /// `stats` says to read `--stats` reports from their stderr.
    pub fn new(full: &Outcome, base: &Outcome, stats: bool) -> Result<ExitPair, String> {
        let (pio, mmio) = parse_exits_line(&full.stdout)
            .ok_or_else(|| format!("the console has no '{EXITS_PREFIX}pio=N mmio=N' line"))?;
        if pio + mmio == 0 {
            return Err("the exits=N run made no exits".to_string());
        }
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let console = |o: &Outcome| -> Result<f64, String> {
            let first = o.startup.ok_or("no start-up time was recorded")?;
            let last = o.arrival(EXITS_LINE).ok_or("the console has no exits line")?;
            Ok(ms(last.saturating_sub(first)))
        };
        let dispatch =
            if stats {
                let parse = |o: &Outcome, which: &str| {
                    ExitStats::parse(&o.stderr)
                        .ok_or_else(|| format!("no `--stats` report on the stderr of the {which} run"))
                };
                let (f, b) = (parse(full, "exits=N")?, parse(base, "exits=0")?);
                Some(Dispatch::between(&f, &b).ok_or_else(|| {
                    format!("--stats counted {} exits with exits=N, {} with exits=0", f.exits, b.exits)
                })?)
            } else {
                None
            };
        Ok(ExitPair {
            pio,
            mmio,
            life_ms: (ms(full.whole_life), ms(base.whole_life)),
            console_ms: (console(full)?, console(base)?),
            dispatch,
        })
    }

    /// The benchmark's exits: 2N, or N without ECAM.
    pub fn exits(&self) -> u64 {
        self.pio + self.mmio
    }

    /// The round trip per exit, µs, from the time between the guest's two console lines.
    pub fn round_trip_us(&self) -> f64 {
        (self.console_ms.0 - self.console_ms.1) * 1e3 / self.exits() as f64
    }

    /// The round trip per exit, µs, from the whole-life latencies.
    pub fn round_trip_life_us(&self) -> f64 {
        (self.life_ms.0 - self.life_ms.1) * 1e3 / self.exits() as f64
    }

    /// rvmm's mean dispatch time as a share of the round trip, %.
    pub fn dispatch_share(&self) -> Option<f64> {
        self.dispatch.map(|d| d.mean_ns / (self.round_trip_us() * 1e3) * 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::Ended;
    use std::time::Duration;

    /// The shape of rvmm's `--stats` report (vmm/src/stats.rs), with log lines around it.
    const STATS: &str = "\
[INFO  vmm::vm] guest memory resident at exit: 180 KiB
exit statistics
reason                 vcpu0       vcpu1
io-in                  20077           3
io-out                    85           0
mmio-read              20000           0
interrupted                1           0
user-space exit handling: 40166 exits, mean 78 ns
          32 ns ..         63 ns: 17414
          64 ns ..        127 ns: 22380
         128 ns ..        255 ns: 220
       16384 ns ..      32767 ns: 152
device accesses
  pio debug exit 0xf4-0xf4              20000 reads          1 writes
  pio COM1 0x3f8-0x3ff                     77 reads         84 writes
  mmio PCI ECAM 0xe0000000-0xe00fffff      20000 reads          0 writes
[INFO  vmm::vm] VM ended
";

    #[test]
    fn stats_report() {
        let s = ExitStats::parse(STATS.as_bytes()).unwrap();
        assert_eq!((s.exits, s.mean_ns), (40166, 78));
        assert_eq!(s.reasons[0], ("io-in".to_string(), 20080));
        assert_eq!(s.reasons.len(), 4);
        assert_eq!(s.histogram, vec![(32, 17414), (64, 22380), (128, 220), (16384, 152)]);
        assert_eq!(s.devices.len(), 3);
        assert_eq!(s.devices[1], ("pio COM1 0x3f8-0x3ff".to_string(), 77, 84));
        assert_eq!((s.device_reads(DEBUG_EXIT_DEVICE), s.device_reads(ECAM_DEVICE)), (20000, 20000));
        assert_eq!(ExitStats::parse(b"[INFO  vmm::vm] VM ended\n"), None);
        assert!(ExitStats::parse(b"exit statistics\nuser-space exit handling: x exits, mean 1 ns\n").is_none());
    }

    #[test]
    fn median_from_histogram() {
        assert_eq!(histogram_median(&[]), None);
        assert_eq!(histogram_median(&[(64, 0)]), None);
        // All in [64, 128): half-way through the bucket.
        assert_eq!(histogram_median(&[(64, 10)]), Some(96.0));
        // 25 below, 75 in [64, 128): the 50th value is a third of the way in.
        assert_eq!(histogram_median(&[(32, 25), (64, 75)]), Some(64.0 + 64.0 / 3.0));
        assert_eq!(histogram_median(&[(0, 0), (1, 4)]), Some(1.5));
    }

    #[test]
    fn exits_line() {
        let out = b"rvmm-probe: quick\r\nexits: pio=20000 mmio=20000 ecam=0xb0000000 id=8086:29c0\r\n";
        assert_eq!(parse_exits_line(out), Some((20000, 20000)));
        assert_eq!(parse_exits_line(b"exits: pio=5 mmio=0 ecam=none\r\n"), Some((5, 0)));
        assert_eq!(parse_exits_line(b"rvmm-probe: quick\n"), None);
        assert_eq!(parse_exits_line(b"exits: pio=x mmio=0\n"), None);
    }

    /// A run whose console showed `rvmm-probe: quick` at `startup_ms` and then `line` at
    /// `line_ms` (two reads), and that exited at `life_ms`.
    fn outcome(startup_ms: u64, line_ms: u64, life_ms: u64, line: &str, stderr: &str) -> Outcome {
        let first = "rvmm-probe: quick\r\n";
        Outcome {
            startup: Some(Duration::from_millis(startup_ms)),
            whole_life: Duration::from_millis(life_ms),
            max_rss_kib: 4000,
            ended: Ended::Code(0),
            stdout: format!("{first}{line}").into_bytes(),
            stdout_reads: vec![(0, Duration::from_millis(startup_ms)), (first.len(), Duration::from_millis(line_ms))],
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn pair_of_runs() {
        let base_stats = "exit statistics\nreason vcpu0\nio-in 56\nio-out 64\n\
                          user-space exit handling: 120 exits, mean 500 ns\n          32 ns ..   63 ns: 100\n\
                          \x20      16384 ns ..      32767 ns: 20\n";
        let full = outcome(10, 412, 430, "exits: pio=20000 mmio=20000 ecam=0xe0000000\n", STATS);
        let base = outcome(12, 14, 30, "exits: pio=0 mmio=0 ecam=0xe0000000\n", base_stats);
        let p = ExitPair::new(&full, &base, true).unwrap();
        assert_eq!((p.pio, p.mmio, p.exits()), (20000, 20000, 40000));
        // Between the lines (402 - 2) ms over 40000 exits; whole life (430 - 30) ms.
        assert_eq!(p.console_ms, (402.0, 2.0));
        assert!((p.round_trip_us() - 10.0).abs() < 1e-9, "{}", p.round_trip_us());
        assert!((p.round_trip_life_us() - 10.0).abs() < 1e-9);
        let d = p.dispatch.unwrap();
        assert_eq!((d.counted, d.port_reads, d.ecam_reads), (40046, 20000, 20000));
        assert!((d.mean_ns - (78.0 * 40166.0 - 500.0 * 120.0) / 40046.0).abs() < 1e-9);
        // Histogram minus the baseline's: 17314 in [32, 64), 22380 in [64, 128), ...
        let m = d.median_ns.unwrap();
        assert!(m > 64.0 && m < 128.0, "{m}");
        assert!((p.dispatch_share().unwrap() - d.mean_ns / 10000.0 * 100.0).abs() < 1e-9);
        // QEMU: no stats read.
        assert_eq!(ExitPair::new(&full, &base, false).unwrap().dispatch, None);
        // rvmm without --stats output, or a probe without the line, is an error.
        let bare = outcome(12, 14, 30, "exits: pio=0 mmio=0 ecam=none\n", "");
        assert!(ExitPair::new(&full, &bare, true).unwrap_err().contains("exits=0 run"));
        let none = outcome(10, 412, 430, "probe: exception 6\n", STATS);
        assert!(ExitPair::new(&none, &base, true).is_err());
        // Without ECAM the divisor is N.
        let pio_only = outcome(10, 212, 430, "exits: pio=20000 mmio=0 ecam=none\n", STATS);
        let p = ExitPair::new(&pio_only, &base, false).unwrap();
        assert!((p.round_trip_us() - 10.0).abs() < 1e-9, "{}", p.round_trip_us());
    }
}
