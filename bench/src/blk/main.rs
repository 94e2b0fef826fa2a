//! `rvmm-blk-bench`: throughput of rvmm's virtio-blk device model against direct
//! `pread`/`pwrite` of the same pattern on the same file.
//!
//! A test file (256 MiB by default, next to this program, so on the file system of
//! the build's target directory) is filled with pseudo-random bytes. For each case —
//! access pattern (4 KiB random read and write, 64 KiB sequential read and write),
//! queue depth (1 and 32), cache mode (buffered, through the page cache, and O_DIRECT)
//! — the program measures:
//!
//! - **raw**: the same offsets and sizes straight on the file: `pread`/`pwrite` from one
//!   thread at queue depth 1, one io_uring with that many requests in flight above
//!   (see [`raw`]);
//! - **device**: rvmm's virtio-blk worker with each disk engine (io_uring, thread pool),
//!   fed from a virtqueue in guest memory that a driver in this process keeps at the
//!   queue depth, run inline or on its own thread (see [`device`]).
//!
//! Each case runs for a fixed time after a short warm-up; the report gives IOPS, MiB/s,
//! the ratio of the device's rate to the raw rate of the same pattern, depth and cache
//! mode (the raw rate is the physical limit: 1.0), the CPU time per request, and the
//! device's interrupts per request. `--markdown` prints it as Markdown.

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
// Shared with rvmm-bench; its transparent-huge-page field is not reported here.
#[allow(dead_code)]
#[path = "../host.rs"]
mod host;

mod device;
mod pattern;
mod qemu;
mod raw;
mod sysinfo;

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use virtio::block::disk::EngineKind;

use args::{parse_seconds, parse_whole, ArgsExit};
use device::Mode;
use pattern::{Measurement, Pattern, Window};

const USAGE: &str = "\
usage: rvmm-blk-bench [OPTIONS]

Measures rvmm's virtio-blk device model (its worker and disk engines, fed from a
virtqueue in guest memory by a driver in this process; no guest runs) against
direct pread/pwrite (queue depth 1) or a raw io_uring (deeper queues) doing the
same offsets and sizes on the same file. Prints IOPS, MiB/s and the ratio of
each device rate to the raw rate.

Build first: cargo build --release -p rvmm-bench
             (then: target/release/rvmm-blk-bench)

options:
  --seconds S     measured time per case (default 2)
  --warmup S      untimed time before each case's measurement (default 0.2)
  --rounds N      repeat every case N times, interleaved; report the median (default 1)
  --size MIB      size of the test file in MiB (default 256)
  --dir DIR       where to create the test file (default: this program's directory,
                  i.e. the target directory's file system); it is deleted at the end
                  (not if the program is killed: then remove rvmm-blk-bench-PID.img)
  --qd LIST       queue depths, 1 to 64 (default 1,32)
  --patterns LIST 4k-randread,4k-randwrite,64k-seqread,64k-seqwrite (default: all)
  --engines LIST  io_uring,threads (default: both)
  --modes LIST    inline,thread: the driver calls the worker itself, or the worker
                  runs its own event loop on its own thread (default: both)
  --cache LIST    buffered,direct: through the page cache, or O_DIRECT (default:
                  both; direct is skipped with a note where the file system refuses it)
  --max-other PCT measure a case again (after 5 s) if other processes, kernel threads and
                  interrupts took more than PCT% of the CPUs' time during it (default 20)
  --retries N     at most N times per case (default 3); the last run counts
  --qemu-img PATH qemu-img for the QEMU block-layer reference rows (default: from
                  $PATH; without one those rows are left out)
  --no-qemu       leave out the QEMU rows
  --markdown      print the report as Markdown
  -h, --help      print this help
";

/// Through the page cache or around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Buffered I/O: the page cache holds the whole file (it was just written).
    Buffered,
    /// O_DIRECT: every request goes to the device under the file system.
    Direct,
}

impl Cache {
    fn name(self) -> &'static str {
        match self {
            Cache::Buffered => "buffered",
            Cache::Direct => "direct",
        }
    }
}

/// The command-line options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Measured and warm-up time per case.
    pub window: Window,
    /// How often every case runs.
    pub rounds: usize,
    /// Test file size, bytes.
    pub size: u64,
    /// Where the test file goes.
    pub dir: Option<PathBuf>,
    /// Queue depths.
    pub depths: Vec<usize>,
    /// Access patterns.
    pub patterns: Vec<Pattern>,
    /// Disk engines for the device.
    pub engines: Vec<EngineKind>,
    /// Ways to run the worker.
    pub modes: Vec<Mode>,
    /// Cache modes.
    pub caches: Vec<Cache>,
    /// A case during which others used more than this percentage of the CPUs' time is
    /// measured again.
    pub max_other: f64,
    /// How often a case is measured again at most.
    pub retries: usize,
    /// `qemu-img`, if given.
    pub qemu_img: Option<PathBuf>,
    /// Leave out the QEMU rows.
    pub no_qemu: bool,
    /// Print Markdown.
    pub markdown: bool,
}

fn parse_list<T>(name: &str, v: &str, item: impl Fn(&str) -> Option<T>, expected: &str) -> Result<Vec<T>, ArgsExit> {
    let mut out = Vec::new();
    for s in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        out.push(item(s).ok_or_else(|| ArgsExit::Usage(format!("{name}: unknown value '{s}' (expected {expected})")))?);
    }
    if out.is_empty() {
        return Err(ArgsExit::Usage(format!("{name} needs at least one value")));
    }
    Ok(out)
}

/// Parses the program's arguments (without the program name).
pub fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Options, ArgsExit> {
    let mut o = Options {
        window: Window { warmup: Duration::from_millis(200), measure: Duration::from_secs(2) },
        rounds: 1,
        size: 256 << 20,
        dir: None,
        depths: vec![1, 32],
        patterns: Pattern::ALL.to_vec(),
        engines: vec![EngineKind::IoUring, EngineKind::Threads],
        modes: vec![Mode::Inline, Mode::Thread],
        caches: vec![Cache::Buffered, Cache::Direct],
        max_other: 20.0,
        retries: 3,
        qemu_img: None,
        no_qemu: false,
        markdown: false,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(arg) = arg.to_str().map(str::to_string) else {
            return Err(ArgsExit::Usage(format!("unexpected argument {}", arg.to_string_lossy())));
        };
        if matches!(arg.as_str(), "-h" | "--help") {
            return Err(ArgsExit::Help);
        }
        if arg == "--markdown" {
            o.markdown = true;
            continue;
        }
        if arg == "--no-qemu" {
            o.no_qemu = true;
            continue;
        }
        let value = match args.next() {
            Some(v) => v.to_string_lossy().into_owned(),
            None if arg.starts_with("--") => return Err(ArgsExit::Usage(format!("{arg} needs a value (see --help)"))),
            None => return Err(ArgsExit::Usage(format!("unknown argument '{arg}' (see --help)"))),
        };
        match arg.as_str() {
            "--seconds" => o.window.measure = parse_seconds("--seconds", &value, 0.1)?,
            "--warmup" => o.window.warmup = parse_seconds("--warmup", &value, 0.0)?,
            "--rounds" => o.rounds = parse_whole("--rounds", &value, 1, 100)? as usize,
            "--size" => o.size = parse_whole("--size", &value, 1, 1 << 20)? << 20,
            "--dir" => o.dir = Some(PathBuf::from(value)),
            "--qemu-img" => o.qemu_img = Some(PathBuf::from(value)),
            "--max-other" => o.max_other = parse_whole("--max-other", &value, 0, 100)? as f64,
            "--retries" => o.retries = parse_whole("--retries", &value, 0, 100)? as usize,
            "--qd" => {
                o.depths = parse_list(
                    "--qd",
                    &value,
                    |s| s.parse::<usize>().ok().filter(|d| (1..=device::MAX_DEPTH).contains(d)),
                    "numbers from 1 to 64",
                )?
            }
            "--patterns" => {
                o.patterns = parse_list(
                    "--patterns",
                    &value,
                    Pattern::from_name,
                    "4k-randread, 4k-randwrite, 64k-seqread, 64k-seqwrite",
                )?
            }
            "--engines" => {
                o.engines = parse_list(
                    "--engines",
                    &value,
                    |s| match s {
                        "io_uring" | "io-uring" | "uring" => Some(EngineKind::IoUring),
                        "threads" | "thread-pool" => Some(EngineKind::Threads),
                        _ => None,
                    },
                    "io_uring, threads",
                )?
            }
            "--modes" => {
                o.modes = parse_list(
                    "--modes",
                    &value,
                    |s| match s {
                        "inline" => Some(Mode::Inline),
                        "thread" => Some(Mode::Thread),
                        _ => None,
                    },
                    "inline, thread",
                )?
            }
            "--cache" => {
                o.caches = parse_list(
                    "--cache",
                    &value,
                    |s| match s {
                        "buffered" => Some(Cache::Buffered),
                        "direct" => Some(Cache::Direct),
                        _ => None,
                    },
                    "buffered, direct",
                )?
            }
            other => return Err(ArgsExit::Usage(format!("unknown argument '{other}' (see --help)"))),
        }
    }
    Ok(o)
}

/// The test file; deleted when dropped.
struct TestFile {
    path: PathBuf,
}

impl Drop for TestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Creates the test file in `dir` and fills it with `size` pseudo-random bytes, synced.
fn create_test_file(dir: &Path, size: u64) -> Result<TestFile, String> {
    let path = dir.join(format!("rvmm-blk-bench-{}.img", std::process::id()));
    let guard = TestFile { path };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&guard.path)
        .map_err(|e| format!("cannot create the test file {}: {e}", guard.path.display()))?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut written = 0u64;
    while written < size {
        for w in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            w.copy_from_slice(&state.to_le_bytes());
        }
        let n = (size - written).min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).map_err(|e| format!("cannot fill the test file {}: {e}", guard.path.display()))?;
        written += n as u64;
    }
    f.sync_all().map_err(|e| format!("cannot sync the test file {}: {e}", guard.path.display()))?;
    Ok(guard)
}

/// Opens the test file for the raw baseline.
fn open_raw(path: &Path, cache: Cache) -> Result<File, String> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if cache == Cache::Direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path).map_err(|e| format!("cannot open {} ({}): {e}", path.display(), cache.name()))
}

/// What a row of the report measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    /// Straight on the file with pread/pwrite (queue depth 1).
    RawSync,
    /// Straight on the file from as many threads as the queue depth, each doing
    /// pread/pwrite.
    RawThreads,
    /// Straight on the file through an io_uring (deeper queues); whether submissions
    /// are batched.
    RawUring(bool),
    /// Through the virtio-blk worker.
    Device(EngineKind, Mode),
    /// QEMU's block layer (`qemu-img bench`) with this back end.
    Qemu(EngineKind),
}

impl Subject {
    fn is_raw(self) -> bool {
        matches!(self, Subject::RawSync | Subject::RawThreads | Subject::RawUring(_))
    }
}

/// One measured configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Case {
    cache: Cache,
    pattern: Pattern,
    depth: usize,
    subject: Subject,
}

impl Case {
    fn label(&self) -> String {
        match self.subject {
            Subject::RawSync => {
                if self.pattern.is_write() {
                    "raw pwrite".into()
                } else {
                    "raw pread".into()
                }
            }
            Subject::RawThreads => {
                format!("raw {}, {} threads", if self.pattern.is_write() { "pwrite" } else { "pread" }, self.depth)
            }
            Subject::RawUring(true) => "raw io_uring, batched submit".into(),
            Subject::RawUring(false) => "raw io_uring, 1 submit/req".into(),
            Subject::Device(e, m) => format!("virtio-blk {}, {}", device::engine_name(e), m.name()),
            Subject::Qemu(e) => format!("QEMU block layer {} (qemu-img)", device::engine_name(e)),
        }
    }

    fn name(&self) -> String {
        format!("{} {} QD{} {}", self.cache.name(), self.pattern.name(), self.depth, self.label())
    }
}

/// What runs for `pattern` at `depth`, in order: the raw ways, the device variants,
/// and QEMU where it can run the pattern.
fn subjects(o: &Options, pattern: Pattern, depth: usize, qemu: bool) -> Vec<Subject> {
    let mut v = if depth == 1 {
        vec![Subject::RawSync]
    } else {
        vec![Subject::RawThreads, Subject::RawUring(true), Subject::RawUring(false)]
    };
    for &e in &o.engines {
        for &m in &o.modes {
            v.push(Subject::Device(e, m));
        }
    }
    if qemu && qemu::supports(pattern) {
        v.extend(o.engines.iter().map(|&e| Subject::Qemu(e)));
    }
    v
}

/// Runs one case; the interrupts per request come with the device's cases.
fn run_case(
    o: &Options,
    path: &Path,
    raw: &File,
    qemu_img: Option<&Path>,
    c: &Case,
) -> Result<(Measurement, Option<f64>), String> {
    let direct = c.cache == Cache::Direct;
    match c.subject {
        Subject::RawSync => Ok((raw::run_sync(raw, o.size, c.pattern, o.window)?, None)),
        Subject::RawThreads => Ok((raw::run_threads(raw, o.size, c.pattern, c.depth, o.window)?, None)),
        Subject::RawUring(batched) => Ok((raw::run_uring(raw, o.size, c.pattern, c.depth, batched, o.window)?, None)),
        Subject::Device(engine, mode) => {
            let r = device::run(path, direct, engine, mode, c.pattern, c.depth, o.window)?;
            Ok((r.measurement, Some(r.interrupts_per_op)))
        }
        Subject::Qemu(engine) => {
            let q = qemu_img.ok_or("no qemu-img")?;
            let bench = qemu::Bench { qemu_img: q, file: path, pattern: c.pattern, depth: c.depth, engine, direct };
            Ok((bench.run(o.window.measure)?, None))
        }
    }
}

/// Runs one case, and again (up to [`Options::retries`] times, after a pause) while
/// more than [`Options::max_other`] percent of the CPUs' time went to others during
/// it; returns the last run, the share of CPU time that was not this program's, and
/// the number of repeats.
fn run_case_quietly(
    o: &Options,
    path: &Path,
    raw: &File,
    qemu_img: Option<&Path>,
    case: &Case,
    round: usize,
) -> Result<(Measurement, Option<f64>, Option<f64>, usize), String> {
    let own = || pattern::process_cpu_seconds() + qemu::children_cpu_seconds();
    let mut attempt = 0;
    loop {
        eprint!("[{}/{}] {} ... ", round + 1, o.rounds, case.name());
        let before = (Instant::now(), sysinfo::busy_cpu_seconds(), own());
        let (m, irq) = run_case(o, path, raw, qemu_img, case).map_err(|e| format!("{}: {e}", case.name()))?;
        let other = match (before.1, sysinfo::busy_cpu_seconds()) {
            (Some(b0), Some(b1)) => {
                let wall = before.0.elapsed().as_secs_f64() * sysinfo::cpus() as f64;
                Some(((b1 - b0) - (own() - before.2)).max(0.0) / wall * 100.0)
            }
            _ => None,
        };
        if m.ops == 0 {
            return Err(format!("{}: no request completed in the measured time", case.name()));
        }
        match other {
            Some(x) => eprint!("{:.0} IOPS (CPU not ours: {x:.0}%)", m.iops()),
            None => eprint!("{:.0} IOPS", m.iops()),
        }
        let busy = other.is_some_and(|x| x > o.max_other);
        if busy && attempt < o.retries {
            attempt += 1;
            eprintln!(" busy, again in 5 s");
            if case.pattern.is_write() {
                raw.sync_data().map_err(|e| format!("fdatasync of the test file: {e}"))?;
            }
            std::thread::sleep(Duration::from_secs(5));
            continue;
        }
        eprintln!();
        return Ok((m, irq, other, attempt));
    }
}

/// One row of the report: a case and its runs.
#[derive(Debug, Clone)]
struct Row {
    case: Case,
    runs: Vec<Measurement>,
    /// Device interrupts per request, per run (devices only).
    irqs: Vec<f64>,
    /// CPU time not charged to this program during each run, percent of all CPUs' time.
    others: Vec<f64>,
}

impl Row {
    fn median(&self, f: impl Fn(&Measurement) -> f64) -> f64 {
        stats::median(&self.runs.iter().map(f).collect::<Vec<_>>())
    }

    fn iops(&self) -> f64 {
        self.median(Measurement::iops)
    }

    /// (max - min) / median of the IOPS, percent; None with one run.
    fn spread(&self) -> Option<f64> {
        stats::spread_percent(&self.runs.iter().map(Measurement::iops).collect::<Vec<_>>())
    }
}

/// Facts printed above the tables.
struct Facts {
    lines: Vec<(String, String)>,
    notes: Vec<String>,
}

fn run(o: &Options) -> Result<(), String> {
    let dir = match &o.dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .ok_or("cannot find this program's directory; give --dir")?,
    };
    let host = host::Host::gather();
    let load_before = host::loadavg();
    eprintln!("creating a {} MiB test file in {} ...", o.size >> 20, dir.display());
    let test_file = create_test_file(&dir, o.size)?;
    let path = test_file.path.clone();
    let fs = sysinfo::file_system(&path);
    let mut facts = Facts {
        lines: vec![
            ("date".into(), host.date.clone()),
            ("host kernel".into(), host.kernel.clone()),
            ("CPU".into(), host.cpu.clone()),
            ("virtualization".into(), host.kvm.clone()),
            ("memory".into(), sysinfo::memory_available()),
            ("clock source".into(), sysinfo::clocksource()),
            ("test file".into(), format!("{} ({} MiB, pseudo-random bytes, synced)", path.display(), o.size >> 20)),
            ("file system".into(), fs.clone()),
        ],
        notes: Vec::new(),
    };
    if let Some(dev) = sysinfo::block_device(&fs) {
        facts.lines.push(("block device".into(), dev));
    }
    let mut caches = o.caches.clone();
    if caches.contains(&Cache::Direct) {
        if let Err(why) = sysinfo::direct_io_works(&path) {
            facts.notes.push(format!("O_DIRECT cases skipped: the file system refuses O_DIRECT ({why})"));
            caches.retain(|c| *c != Cache::Direct);
        }
    }

    // The device must really read the file: compare a read through it with pread.
    let check_offset = (o.size / 2) & !0xffff;
    let raw_file = open_raw(&path, Cache::Buffered)?;
    let mut expected = vec![0u8; 65536];
    let n = std::os::unix::fs::FileExt::read_at(&raw_file, &mut expected, check_offset)
        .map_err(|e| format!("cannot read the test file: {e}"))?;
    if n != expected.len() {
        return Err(format!("short read of the test file: {n} bytes"));
    }
    for &cache in &caches {
        for &engine in &o.engines {
            let got = device::read_through_device(&path, cache == Cache::Direct, engine, check_offset)?;
            if got != expected {
                return Err(format!(
                    "a 64 KiB read through the device ({}, {}) at offset {check_offset} does \
                     not match pread of the file",
                    device::engine_name(engine),
                    cache.name()
                ));
            }
        }
    }
    facts.notes.push(format!(
        "checked before measuring: a 64 KiB read through the device returns the file's bytes \
         (each engine{}).",
        if caches.len() > 1 { ", each cache mode" } else { "" }
    ));

    let qemu_img = if o.no_qemu { None } else { o.qemu_img.clone().or_else(qemu::find_qemu_img) };
    match &qemu_img {
        Some(q) => facts.lines.push(("QEMU".into(), format!("{} ({})", q.display(), qemu::version(q)))),
        None if o.no_qemu => {}
        None => facts.notes.push("no qemu-img found (Debian: qemu-utils): no QEMU rows".into()),
    }

    let mut rows: Vec<Row> = Vec::new();
    // Per case: CPU time not charged to this program, percent of all CPUs' time.
    let mut others: Vec<f64> = Vec::new();
    // Runs repeated because others were busy.
    let mut repeated = 0;
    for &cache in &caches {
        let raw = open_raw(&path, cache)?;
        if cache == Cache::Buffered {
            let resident = sysinfo::page_cache_resident(&raw, o.size)
                .map(|r| format!("{:.1}%", r * 100.0))
                .unwrap_or_else(|e| format!("unknown ({e})"));
            facts.lines.push((
                "page cache".into(),
                format!(
                    "warm: {resident} of the test file resident before the buffered cases \
                     (it was just written); buffered reads are served from memory"
                ),
            ));
        }
        for round in 0..o.rounds {
            for &pattern in &o.patterns {
                for &depth in &o.depths {
                    for subject in subjects(o, pattern, depth, qemu_img.is_some()) {
                        let case = Case { cache, pattern, depth, subject };
                        let (m, irq, other, repeats) =
                            run_case_quietly(o, &path, &raw, qemu_img.as_deref(), &case, round)?;
                        if let Some(x) = other {
                            others.push(x);
                        }
                        repeated += repeats;
                        // Written data goes to the disk between cases, untimed, so that no
                        // case pays for an earlier one's writeback.
                        if pattern.is_write() {
                            raw.sync_data().map_err(|e| format!("fdatasync of the test file: {e}"))?;
                        }
                        let i = match rows.iter().position(|r| r.case == case) {
                            Some(i) => i,
                            None => {
                                rows.push(Row { case, runs: Vec::new(), irqs: Vec::new(), others: Vec::new() });
                                rows.len() - 1
                            }
                        };
                        rows[i].runs.push(m);
                        if let Some(irq) = irq {
                            rows[i].irqs.push(irq);
                        }
                        if let Some(x) = other {
                            rows[i].others.push(x);
                        }
                    }
                }
            }
        }
    }
    facts.lines.push(("load average (1/5/15 min)".into(), format!("{load_before} before, {} after", host::loadavg())));
    if !others.is_empty() {
        let max = others.iter().copied().fold(0.0, f64::max);
        facts.lines.push((
            "CPU not charged to this program".into(),
            format!(
                "median {:.0}%, max {max:.0}% of the {} CPUs' time during a counted case; {repeated} \
                 run(s) repeated because it was above {}% (other processes, kernel threads, \
                 interrupts; /proc/stat minus this program's rusage)",
                stats::median(&others),
                sysinfo::cpus(),
                o.max_other
            ),
        ));
    }
    print_report(o, &facts, &rows);
    drop(test_file);
    Ok(())
}

fn fmt_iops(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.0}")
    }
}

fn print_report(o: &Options, facts: &Facts, rows: &[Row]) {
    let md = o.markdown;
    let window = format!(
        "{} s measured per case after {} s warm-up, {} round(s){}",
        o.window.measure.as_secs_f64(),
        o.window.warmup.as_secs_f64(),
        o.rounds,
        if o.rounds > 1 { ", interleaved; median shown" } else { "" }
    );
    if md {
        for (k, v) in &facts.lines {
            println!("- **{k}:** {v}");
        }
        println!("- **runs:** {window}");
        println!();
    } else {
        for (k, v) in &facts.lines {
            println!("{k}: {v}");
        }
        println!("runs: {window}");
        println!();
    }
    let mut header = vec!["cache", "pattern", "QD", "path", "IOPS", "MiB/s", "ratio to raw", "CPU µs/req", "irq/req"];
    let spread = o.rounds > 1;
    if spread {
        header.push("IOPS spread");
    }
    header.push("CPU not ours");
    let mut table: Vec<Vec<String>> = Vec::new();
    for r in rows {
        // The raw rate: the faster raw way of the same cache mode, pattern and depth.
        let raw = rows
            .iter()
            .filter(|x| {
                x.case.cache == r.case.cache
                    && x.case.pattern == r.case.pattern
                    && x.case.depth == r.case.depth
                    && x.case.subject.is_raw()
            })
            .map(Row::iops)
            .fold(f64::NAN, f64::max);
        let iops = r.iops();
        let ratio = (!raw.is_nan()).then(|| iops / raw);
        let mut cells = vec![
            r.case.cache.name().to_string(),
            r.case.pattern.name().to_string(),
            r.case.depth.to_string(),
            r.case.label(),
            fmt_iops(iops),
            format!("{:.1}", iops * r.case.pattern.block_size() as f64 / (1u64 << 20) as f64),
            ratio.map_or("-".into(), |x| format!("{x:.2}")),
            format!("{:.2}", r.median(Measurement::cpu_us_per_op)),
            if r.irqs.is_empty() { "-".into() } else { format!("{:.2}", stats::median(&r.irqs)) },
        ];
        if spread {
            cells.push(r.spread().map_or("-".into(), |s| format!("{s:.0}%")));
        }
        cells.push(if r.others.is_empty() { "-".into() } else { format!("{:.0}%", stats::median(&r.others)) });
        table.push(cells);
    }
    let numeric = |i: usize| i == 2 || i >= 4;
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
                .map(
                    |(i, c)| {
                        if numeric(i) {
                            format!("{c:>w$}", w = widths[i])
                        } else {
                            format!("{c:<w$}", w = widths[i])
                        }
                    },
                )
                .collect();
            println!("{}", parts.join("  ").trim_end());
        };
        line(&header.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        for row in &table {
            line(row);
        }
    }
    println!();
    let mut notes = facts.notes.clone();
    notes.extend([
        "raw: the same offsets and sizes on the same file with no device model. QD1: pread/pwrite \
         from one thread. Above, three ways with QD requests in flight: QD threads each doing \
         pread/pwrite; one io_uring whose completed requests are replaced and submitted in a \
         batch by the io_uring_enter that waits (batched submit); the same with one \
         io_uring_enter per request (1 submit/req, as rvmm's engine does for O_DIRECT). ratio = IOPS / the \
         best raw IOPS of the same cache mode, pattern and QD (1.00 is the limit; a raw row \
         below 1.00 is a slower raw way)."
            .to_string(),
        "virtio-blk: rvmm's BlockWorker with the named disk engine (io_uring: one ring, one \
         io_uring_enter per request with O_DIRECT and per batch otherwise, completions finished \
         inside it taken at once; threads: a pool of threads doing preadv/pwritev, 4 growing to 64 while all are busy), fed from a \
         256-entry split virtqueue in guest memory by an in-process driver that keeps QD \
         three-descriptor requests (header, data, status) available. inline: the driver calls \
         process_queue, polls the engine's eventfd and calls reap on one thread. thread: the \
         worker's own event loop on its own thread, kicked through the queue's eventfd and \
         signalling an interrupt eventfd, as in a VM. No guest runs."
            .to_string(),
        "CPU µs/req: user + system time of the whole process (all threads) per request over \
         the measured time. irq/req: interrupts the device raised per completed request \
         (devices only; each is an eventfd write, as an irqfd would be)."
            .to_string(),
        format!(
            "CPU not ours: the share of all CPUs' time, over the whole case, that /proc/stat counts \
             busy but this program's rusage does not: other processes, kernel threads, interrupts \
             (including those of this program's own disk I/O). A case above {}% was measured again \
             after 5 s, at most {} times; the median over the rounds is shown.",
            o.max_other, o.retries
        ),
        "buffered writes only dirty the page cache; the file is fdatasync'd between cases, \
         untimed. direct (O_DIRECT) requests reach the block device under the file system."
            .to_string(),
    ]);
    if rows.iter().any(|r| matches!(r.case.subject, Subject::Qemu(_))) {
        notes.push(format!(
            "QEMU block layer rows (only the 64 KiB sequential patterns, the only ones qemu-img \
             bench can do): QEMU's block layer and its io_uring or thread-pool back end on the \
             same file, as QEMU's virtio-blk would use them, but without the virtio front end: \
             an upper bound for QEMU's virtio-blk, not a measurement of it. Command, e.g. `{}` \
             (-i threads for the thread pool, -t none for direct, no -w for reads); N is set from \
             a 2000-request calibration run to last about the measured time; the time is \
             qemu-img's own `Run completed in` figure; CPU µs/req includes qemu-img's start-up.",
            qemu::command_text(Pattern::SeqWrite64k, 32, EngineKind::IoUring, false)
        ));
    }
    args::print_notes(&notes, md);
}

fn main() -> ExitCode {
    let options = match args::options_or_exit("rvmm-blk-bench", USAGE, parse_args(std::env::args_os().skip(1))) {
        Ok(o) => o,
        Err(code) => return code,
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!();
            eprintln!("rvmm-blk-bench: {e}");
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
    fn defaults_and_lists() {
        let o = parse_args(args(&[])).unwrap();
        assert_eq!(o.depths, vec![1, 32]);
        assert_eq!(o.patterns.len(), 4);
        let o = parse_args(args(&[
            "--qd",
            "4",
            "--patterns",
            "64k-seqread",
            "--engines",
            "threads",
            "--cache",
            "direct",
            "--seconds",
            "0.5",
            "--markdown",
        ]))
        .unwrap();
        assert_eq!(o.depths, vec![4]);
        assert_eq!(o.patterns, vec![Pattern::SeqRead64k]);
        assert_eq!(o.engines, vec![EngineKind::Threads]);
        assert_eq!(o.caches, vec![Cache::Direct]);
        assert!(o.markdown);
        assert_eq!(o.window.measure, Duration::from_millis(500));
    }

    #[test]
    fn bad_arguments() {
        for bad in [
            &["--qd", "0"][..],
            &["--qd", "65"],
            &["--patterns", "randread"],
            &["--seconds"],
            &["--bogus", "1"],
            &["--size", "0"],
        ] {
            assert!(matches!(parse_args(args(bad)), Err(ArgsExit::Usage(_))), "{bad:?}");
        }
    }
}
