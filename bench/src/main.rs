//! `rvmm-bench`: start-up and whole-life latency and peak memory of `rvmm run`, side by
//! side with QEMU, on a guest that powers off at once.
//!
//! By default every VMM boots the PVH probe (`rvmm_probes::PVH_ELF`) with the command
//! line `quick`: the probe prints `rvmm-probe: quick` on COM1 and exits through the
//! debug exit port 0xf4 at once. With `--firmware [PATH]` the guest is PC firmware
//! (SeaBIOS) booting the MBR disk of `rvmm_tests::seabios::write_boot_disk`, whose boot
//! sector prints `rvmm-mbr: hello` on COM1 and writes 42 to port 0xf4; it runs under
//! rvmm and QEMU's `pc` machine ([`Guest`]). For each run the program measures (see
//! [`measure`]):
//!
//! - **start-up latency**: spawn to the first byte of the guest's line
//!   (`rvmm-probe:` or `rvmm-mbr:`) on stdout;
//! - **whole-life latency**: spawn to process exit;
//! - **peak RSS**: `ru_maxrss` from `wait4`;
//! - for rvmm, the guest RAM resident at exit (its `RVMM_LOG=info` line
//!   `guest memory resident at exit: N KiB`), and so peak RSS minus guest RAM touched.
//!
//! The VMMs run interleaved (rvmm, QEMU microvm, QEMU q35, rvmm, ...) so that load from
//! other processes falls on all of them alike. The result is a table of
//! min / median / p90 per VMM, as plain text or (`--markdown`) Markdown.
//!
//! With `--exits [N]` it measures the cost of a VM exit instead (see [`exits`]): the probe
//! makes N port reads and N ECAM reads, each an exit to the VMM, under rvmm (with
//! `--stats`, for rvmm's own dispatch time) and QEMU q35, against an `exits=0` baseline.
//!
//! rvmm must be built in release mode (`cargo build --release`); the program looks for
//! `rvmm` next to its own executable unless `--rvmm PATH` is given.

mod args;
mod exits;
mod host;
mod measure;
// Shared with the blk and net benchmarks, whose median and spread are not used here.
mod rusage;
#[allow(dead_code)]
mod stats;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use exits::ExitPair;
use measure::{Ended, Outcome};
use rvmm_tests::seabios::{MBR_EXIT_STATUS, MBR_MARKER};
use stats::Summary;

/// Guest RAM given to every VMM.
const MEMORY: &str = "256M";
/// The probe's command line: print one line and exit at once.
const CMDLINE: &str = "quick";
/// The line the probe prints for `quick`.
const QUICK_LINE: &str = "rvmm-probe: quick";
/// QEMU's debug exit device at the port the guests write to.
const DEBUG_EXIT_DEVICE: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";
/// The rvmm log line (at `RVMM_LOG=info`) that gives the guest RAM resident at exit.
const RESIDENT_PREFIX: &str = "guest memory resident at exit: ";

const USAGE: &str = "\
usage: rvmm-bench [OPTIONS]

Boots the PVH probe guest with the command line `quick` (it prints one line and
powers off at once) under rvmm and under QEMU (microvm and q35), N times each,
interleaved, and prints start-up latency, whole-life latency and peak RSS
(min / median / p90).

With --firmware, boots PC firmware (SeaBIOS) from a 1 MiB disk whose MBR prints
`rvmm-mbr: hello` and powers off, under rvmm and under QEMU's pc machine; start-up
is then the time to the MBR's line (firmware and boot included).

With --exits [N], measures what a VM exit costs: the probe (command line `quick
exits=N`) reads port 0xf4 N times and 00:00.0's ID through ECAM N times; against a
baseline run with exits=0, under rvmm (with --stats: rvmm's own dispatch time per
exit) and QEMU q35, it prints the round trip per exit and rvmm's share of it.

Build first: cargo build --release   (then: target/release/rvmm-bench --runs 20)

options:
  --runs N           measured runs per VMM (default 20)
  --warmup N         discarded warm-up runs per VMM before measuring (default 1)
  --rvmm PATH        the rvmm binary (default: `rvmm` next to this program)
  --qemu PATH        qemu-system-x86_64 (default: $RVMM_QEMU, else from PATH)
  --kernel PATH      the probe image (default: the PVH probe built by rvmm-probes)
  --firmware [PATH]  boot firmware from the MBR disk instead of the probe; PATH is
                     the firmware image (default: $RVMM_SEABIOS, else
                     /usr/share/seabios/bios-256k.bin)
  --exits [N]        measure the exit round trip with N port and N MMIO exits per
                     run (default N 20000; QEMU runs q35 only)
  --no-qemu          measure rvmm only
  --no-q35           skip QEMU's q35 machine (SeaBIOS makes it slow; probe only)
  --timeout SECS     kill a run that takes longer (default 60)
  --markdown         print the report as Markdown
  -h, --help         print this help
";

/// The command-line options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Measured runs per VMM.
    pub runs: usize,
    /// Discarded warm-up runs per VMM.
    pub warmup: usize,
    /// The rvmm binary, if given.
    pub rvmm: Option<PathBuf>,
    /// The QEMU binary, if given.
    pub qemu: Option<PathBuf>,
    /// The probe image, if given (default: the PVH probe).
    pub kernel: Option<PathBuf>,
    /// `--firmware [PATH]`: boot firmware from the MBR disk instead of the probe. The
    /// inner `None` stands for the default SeaBIOS image.
    pub firmware: Option<Option<PathBuf>>,
    /// `--exits [N]`: measure the exit round trip with N port and N MMIO exits per run.
    pub exits: Option<u32>,
    /// Skip QEMU altogether.
    pub no_qemu: bool,
    /// Skip QEMU's q35 machine.
    pub no_q35: bool,
    /// The per-run time limit.
    pub timeout: Duration,
    /// Print Markdown instead of plain text.
    pub markdown: bool,
}

pub use args::ArgsExit;

/// Parses the program's arguments (without the program name).
pub fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Options, ArgsExit> {
    let mut o = Options {
        runs: 20,
        warmup: 1,
        rvmm: None,
        qemu: None,
        kernel: None,
        firmware: None,
        exits: None,
        no_qemu: false,
        no_q35: false,
        timeout: Duration::from_secs(60),
        markdown: false,
    };
    let mut args = args.into_iter().peekable();
    while let Some(arg) = args.next() {
        let Some(arg_str) = arg.to_str() else {
            return Err(ArgsExit::Usage(format!("unexpected argument {}", arg.to_string_lossy())));
        };
        let mut value = |name: &str| -> Result<OsString, ArgsExit> {
            args.next().ok_or_else(|| ArgsExit::Usage(format!("{name} needs a value")))
        };
        match arg_str {
            "-h" | "--help" => return Err(ArgsExit::Help),
            "--runs" => o.runs = parse_count("--runs", &value("--runs")?, 1)?,
            "--warmup" => o.warmup = parse_count("--warmup", &value("--warmup")?, 0)?,
            "--rvmm" => o.rvmm = Some(PathBuf::from(value("--rvmm")?)),
            "--qemu" => o.qemu = Some(PathBuf::from(value("--qemu")?)),
            "--kernel" => o.kernel = Some(PathBuf::from(value("--kernel")?)),
            "--firmware" => {
                // The path is optional: take the next argument unless it is an option.
                let path = match args.peek() {
                    Some(v) if !v.to_string_lossy().starts_with('-') => args.next().map(PathBuf::from),
                    _ => None,
                };
                o.firmware = Some(path);
            }
            "--exits" => {
                // N is optional, as --firmware's path.
                let n = match args.peek() {
                    Some(v) if !v.to_string_lossy().starts_with('-') => {
                        let v = args.next().unwrap_or_default();
                        args::parse_whole("--exits", &v.to_string_lossy(), 1, exits::MAX_EXITS)?
                    }
                    _ => exits::DEFAULT_EXITS,
                };
                o.exits = Some(n);
            }
            "--timeout" => {
                let secs = parse_count("--timeout", &value("--timeout")?, 1)?;
                o.timeout = Duration::from_secs(secs as u64);
            }
            "--no-qemu" => o.no_qemu = true,
            "--no-q35" => o.no_q35 = true,
            "--markdown" => o.markdown = true,
            other => return Err(ArgsExit::Usage(format!("unknown argument '{other}' (see --help)"))),
        }
    }
    if o.firmware.is_some() && o.kernel.is_some() {
        return Err(ArgsExit::Usage("--kernel and --firmware exclude each other".to_string()));
    }
    if o.exits.is_some() && o.firmware.is_some() {
        return Err(ArgsExit::Usage("--exits and --firmware exclude each other".to_string()));
    }
    if o.exits.is_some() && o.no_q35 && !o.no_qemu {
        return Err(ArgsExit::Usage(
            "--exits runs QEMU on q35 only (microvm has no ECAM); skip QEMU with --no-qemu".to_string(),
        ));
    }
    Ok(o)
}

fn parse_count(name: &str, v: &OsString, min: usize) -> Result<usize, ArgsExit> {
    args::parse_whole(name, &v.to_string_lossy(), min, 100_000)
}

/// What the VMMs boot.
#[derive(Debug, Clone)]
pub enum Guest {
    /// The PVH probe with the command line [`CMDLINE`]: it prints [`QUICK_LINE`] and
    /// writes 0 to the debug exit port.
    Probe {
        /// The probe image.
        kernel: PathBuf,
    },
    /// The PVH probe with the command line `quick exits=N`: after [`QUICK_LINE`] it makes
    /// N port and N MMIO exits, prints `exits: pio=N mmio=N ...` and writes 0 to the
    /// debug exit port.
    Exits {
        /// The probe image.
        kernel: PathBuf,
        /// N.
        exits: u32,
    },
    /// PC firmware booting the disk of `rvmm_tests::seabios::write_boot_disk`: its MBR
    /// prints [`MBR_MARKER`] and writes [`MBR_EXIT_STATUS`] to the debug exit port.
    Firmware {
        /// The firmware image (SeaBIOS).
        bios: PathBuf,
        /// The raw MBR disk.
        disk: PathBuf,
    },
}

impl Guest {
    /// The console text whose first byte ends start-up.
    pub fn startup_marker(&self) -> &'static [u8] {
        match self {
            Guest::Probe { .. } | Guest::Exits { .. } => measure::PROBE_MARKER,
            Guest::Firmware { .. } => MBR_MARKER.as_bytes(),
        }
    }

    /// The console text a successful run shows.
    pub fn line(&self) -> String {
        match self {
            Guest::Probe { .. } => QUICK_LINE.to_string(),
            Guest::Exits { exits, .. } => format!("{}pio={exits} mmio=", exits::EXITS_PREFIX),
            Guest::Firmware { .. } => MBR_MARKER.to_string(),
        }
    }

    /// The status the guest writes to the debug exit port 0xf4.
    pub fn exit_status(&self) -> u8 {
        match self {
            Guest::Probe { .. } | Guest::Exits { .. } => 0,
            Guest::Firmware { .. } => MBR_EXIT_STATUS,
        }
    }

    /// The probe's command line.
    pub fn cmdline(&self) -> String {
        match self {
            Guest::Exits { exits, .. } => format!("{CMDLINE} exits={exits}"),
            _ => CMDLINE.to_string(),
        }
    }

    /// The same guest with `exits=n` (the baseline is `exits=0`).
    pub fn with_exits(&self, n: u32) -> Guest {
        match self {
            Guest::Exits { kernel, .. } => Guest::Exits { kernel: kernel.clone(), exits: n },
            other => other.clone(),
        }
    }
}

/// Which VMM a [`Target`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// `rvmm run`.
    Rvmm,
    /// `qemu-system-x86_64 -M <machine>`.
    Qemu {
        /// The machine type given to `-M`.
        machine: &'static str,
    },
}

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// `-accel kvm`.
    Kvm,
    /// `-accel tcg`, QEMU's own emulator (used only if KVM fails).
    Tcg,
}

impl Accel {
    fn arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// One measured run, reduced to the figures the report uses.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Start-up latency, ms.
    pub startup_ms: f64,
    /// Whole-life latency, ms.
    pub life_ms: f64,
    /// Peak RSS, KiB.
    pub rss_kib: u64,
    /// Guest RAM resident at exit, KiB (rvmm only).
    pub guest_kib: Option<u64>,
}

/// A VMM configuration being measured, and its runs.
#[derive(Debug, Clone)]
pub struct Target {
    /// Which VMM.
    pub vmm: Vmm,
    /// Its executable.
    pub program: PathBuf,
    /// QEMU's accelerator (rvmm always uses KVM).
    pub accel: Accel,
    /// Why the accelerator is not KVM, if it is not.
    pub accel_note: Option<String>,
    /// The measured runs.
    pub runs: Vec<Run>,
    /// The measured rounds of `--exits`.
    pub exit_pairs: Vec<ExitPair>,
}

impl Target {
    fn new(vmm: Vmm, program: PathBuf) -> Target {
        Target { vmm, program, accel: Accel::Kvm, accel_note: None, runs: Vec::new(), exit_pairs: Vec::new() }
    }

    /// The column heading: `rvmm`, `QEMU microvm (KVM)`, ...
    pub fn label(&self) -> String {
        match self.vmm {
            Vmm::Rvmm => "rvmm".to_string(),
            Vmm::Qemu { machine } => format!(
                "QEMU {machine} ({})",
                match self.accel {
                    Accel::Kvm => "KVM",
                    Accel::Tcg => "TCG, not KVM",
                }
            ),
        }
    }

    /// The arguments after the program name.
    pub fn args(&self, guest: &Guest) -> Vec<OsString> {
        let s = |x: &str| OsString::from(x);
        let kernel = match guest {
            Guest::Probe { kernel } | Guest::Exits { kernel, .. } => kernel,
            Guest::Firmware { bios, disk } => return self.firmware_args(bios, disk),
        };
        let cmdline = guest.cmdline();
        match self.vmm {
            Vmm::Rvmm => {
                let mut a = vec![
                    s("run"),
                    s("--kernel"),
                    kernel.as_os_str().to_owned(),
                    s("--cmdline"),
                    s(&cmdline),
                    s("--memory"),
                    s(MEMORY),
                    s("--console"),
                    s("stdio"),
                ];
                if let Guest::Exits { .. } = guest {
                    a.push(s("--stats"));
                }
                a
            }
            Vmm::Qemu { machine } => vec![
                s("-M"),
                s(machine),
                s("-accel"),
                s(self.accel.arg()),
                s("-m"),
                s(MEMORY),
                s("-nodefaults"),
                s("-no-user-config"),
                s("-nographic"),
                s("-serial"),
                s("stdio"),
                s("-kernel"),
                kernel.as_os_str().to_owned(),
                s("-append"),
                s(&cmdline),
                s("-device"),
                s(DEBUG_EXIT_DEVICE),
            ],
        }
    }

    /// The arguments for [`Guest::Firmware`]: the firmware boots the disk, given to
    /// QEMU as virtio-blk-pci (rvmm's `--disk` is virtio-blk on PCI too).
    fn firmware_args(&self, bios: &Path, disk: &Path) -> Vec<OsString> {
        let s = |x: &str| OsString::from(x);
        match self.vmm {
            Vmm::Rvmm => vec![
                s("run"),
                s("--firmware"),
                bios.as_os_str().to_owned(),
                s("--disk"),
                disk.as_os_str().to_owned(),
                s("--memory"),
                s(MEMORY),
                s("--console"),
                s("stdio"),
                s("--debugcon"),
                s("none"),
            ],
            Vmm::Qemu { machine } => {
                let mut drive = OsString::from("file=");
                drive.push(disk.as_os_str());
                drive.push(",format=raw,if=none,id=d0");
                vec![
                    s("-M"),
                    s(machine),
                    s("-accel"),
                    s(self.accel.arg()),
                    s("-bios"),
                    bios.as_os_str().to_owned(),
                    s("-nodefaults"),
                    s("-no-user-config"),
                    s("-nographic"),
                    s("-serial"),
                    s("stdio"),
                    s("-m"),
                    s(MEMORY),
                    s("-drive"),
                    drive,
                    s("-device"),
                    s("virtio-blk-pci,drive=d0"),
                    s("-device"),
                    s(DEBUG_EXIT_DEVICE),
                ]
            }
        }
    }

    /// The process to spawn for one run.
    pub fn command(&self, guest: &Guest) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(self.args(guest));
        if self.vmm == Vmm::Rvmm {
            cmd.env("RVMM_LOG", "info").env("RVMM_LOG_STYLE", "never");
        }
        cmd
    }

    /// The command line as a shell would take it, for the report.
    pub fn command_line(&self, guest: &Guest) -> String {
        let mut words = Vec::new();
        if self.vmm == Vmm::Rvmm {
            words.push("RVMM_LOG=info".to_string());
        }
        words.push(self.program.display().to_string());
        words.extend(self.args(guest).iter().map(|a| a.to_string_lossy().into_owned()));
        words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
    }

    /// The exit code a successful run ends with: rvmm passes the guest's debug-exit
    /// status S through (0 for the probe, 42 for the MBR); QEMU's isa-debug-exit exits
    /// with `(S << 1) | 1`.
    pub fn expected_exit(&self, guest: &Guest) -> i32 {
        let status = i32::from(guest.exit_status());
        match self.vmm {
            Vmm::Rvmm => status,
            Vmm::Qemu { .. } => (status << 1) | 1,
        }
    }

    /// Spawns one run and checks that the guest did what it should.
    pub fn run_once(&self, guest: &Guest, timeout: Duration) -> Result<Run, String> {
        self.run_outcome(guest, timeout).map(|(run, _)| run)
    }

    /// [`Target::run_once`], also returning everything the run measured and printed.
    pub fn run_outcome(&self, guest: &Guest, timeout: Duration) -> Result<(Run, Outcome), String> {
        let outcome = measure::run_once(&mut self.command(guest), guest.startup_marker(), timeout)?;
        let run = self.check(&outcome, guest).map_err(|why| self.failed(why, &outcome))?;
        Ok((run, outcome))
    }

    /// The error message of a run that did not do what it should.
    fn failed(&self, why: String, outcome: &Outcome) -> String {
        format!("{}: {why}\n{}", self.label(), describe(outcome))
    }

    /// One `--exits` round: the `exits=N` run and the `exits=0` baseline, in the order
    /// given by `baseline_first`.
    pub fn run_exit_pair(&self, guest: &Guest, baseline_first: bool, timeout: Duration) -> Result<ExitPair, String> {
        let baseline = guest.with_exits(0);
        let (full, base) = if baseline_first {
            let (_, base) = self.run_outcome(&baseline, timeout)?;
            (self.run_outcome(guest, timeout)?.1, base)
        } else {
            let (_, full) = self.run_outcome(guest, timeout)?;
            (full, self.run_outcome(&baseline, timeout)?.1)
        };
        ExitPair::new(&full, &base, self.vmm == Vmm::Rvmm).map_err(|why| self.failed(why, &full))
    }

    fn check(&self, o: &Outcome, guest: &Guest) -> Result<Run, String> {
        let expected = self.expected_exit(guest);
        if o.ended != Ended::Code(expected) {
            return Err(format!("the run ended with {}, expected exit code {expected}", o.ended));
        }
        let line = guest.line();
        if measure::find(&o.stdout, line.as_bytes()).is_none() {
            return Err(format!("the console did not show '{}'", line.trim_end()));
        }
        let Some(startup) = o.startup else {
            return Err("no start-up time was recorded".to_string());
        };
        let guest_kib = match self.vmm {
            Vmm::Rvmm => Some(parse_resident_kib(&o.stderr).ok_or_else(|| {
                format!(
                    "rvmm's stderr has no '{RESIDENT_PREFIX}N KiB' line (is this rvmm too \
                     old, or does it ignore RVMM_LOG=info?)"
                )
            })?),
            Vmm::Qemu { .. } => None,
        };
        Ok(Run {
            startup_ms: startup.as_secs_f64() * 1e3,
            life_ms: o.whole_life.as_secs_f64() * 1e3,
            rss_kib: o.max_rss_kib,
            guest_kib,
        })
    }
}

/// Reads `N` from rvmm's log line `... guest memory resident at exit: N KiB`.
pub fn parse_resident_kib(stderr: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(stderr);
    let rest = &text[text.find(RESIDENT_PREFIX)? + RESIDENT_PREFIX.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn describe(o: &Outcome) -> String {
    format!(
        "{}, after {:.1} ms\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.ended,
        o.whole_life.as_secs_f64() * 1e3,
        String::from_utf8_lossy(&o.stdout).trim_end(),
        String::from_utf8_lossy(&o.stderr).trim_end()
    )
}

/// The last non-empty line of the `--- stderr ---` part of a run's error message
/// (where QEMU says why it failed; its first lines are often warnings).
fn stderr_hint(error: &str) -> Option<&str> {
    let (_, stderr) = error.split_once("--- stderr ---\n")?;
    stderr.lines().rev().map(str::trim).find(|l| !l.is_empty())
}

fn shell_quote(w: &str) -> String {
    if !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=,:+".contains(&b)) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn find_rvmm(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return if is_executable(&p) { Ok(p) } else { Err(format!("--rvmm {}: not an executable file", p.display())) };
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find this program's own path: {e}; pass --rvmm PATH"))?;
    let p = exe.with_file_name("rvmm");
    if is_executable(&p) {
        Ok(p)
    } else {
        Err(format!("no rvmm binary at {}: build it with `cargo build --release` (or pass --rvmm PATH)", p.display()))
    }
}

fn find_qemu(given: Option<PathBuf>) -> Result<PathBuf, String> {
    let given = given.or_else(|| std::env::var_os("RVMM_QEMU").map(PathBuf::from));
    if let Some(p) = given {
        return if is_executable(&p) { Ok(p) } else { Err(format!("QEMU {}: not an executable file", p.display())) };
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join("qemu-system-x86_64")).find(|p| is_executable(p)))
        .ok_or_else(|| {
            "qemu-system-x86_64 not found in PATH: install it (apt-get install qemu-system-x86), \
             pass --qemu PATH, or measure rvmm alone with --no-qemu"
                .to_string()
        })
}

/// The first line a program prints for `flag` (its version), or why there is none.
fn version_of(program: &Path, flag: &str) -> String {
    match Command::new(program).arg(flag).output() {
        Ok(out) if out.status.success() => {
            String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_string()
        }
        Ok(out) => format!("unknown ({flag} ended with {})", out.status),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Everything the report shows.
pub struct Report {
    /// The host facts.
    pub host: host::Host,
    /// Load averages before and after the runs.
    pub load: (String, String),
    /// Measured runs per VMM and warm-up runs per VMM.
    pub runs: (usize, usize),
    /// What the VMMs booted.
    pub guest: Guest,
    /// rvmm's and QEMU's versions.
    pub versions: Vec<(String, String)>,
    /// The measured VMMs.
    pub targets: Vec<Target>,
    /// This program's own peak RSS, KiB.
    pub bench_rss_kib: u64,
}

fn fmt3(s: Option<Summary>, decimals: usize, prefix: &str) -> String {
    match s {
        Some(s) => format!("{prefix}{:.d$} / {prefix}{:.d$} / {prefix}{:.d$}", s.min, s.median, s.p90, d = decimals),
        None => "n/a".to_string(),
    }
}

impl Report {
    /// rvmm's median guest RAM touched, KiB, the estimate used for QEMU.
    fn guest_estimate_kib(&self) -> Option<f64> {
        let v: Vec<f64> = self
            .targets
            .iter()
            .filter(|t| t.vmm == Vmm::Rvmm)
            .flat_map(|t| t.runs.iter().filter_map(|r| r.guest_kib.map(|g| g as f64)))
            .collect();
        Summary::of(&v).map(|s| s.median)
    }

    /// The tables: for `--exits`, [`exits_tables`]; else [`Report::table`].
    pub fn tables(&self) -> Vec<Vec<Vec<String>>> {
        match self.guest {
            Guest::Exits { exits, .. } => exits_tables(&self.targets, exits),
            _ => vec![self.table()],
        }
    }

    /// The table: a heading row, then one row per metric; cells are min / median / p90.
    pub fn table(&self) -> Vec<Vec<String>> {
        let estimate = self.guest_estimate_kib();
        let mut head = vec!["metric (min / median / p90)".to_string()];
        head.extend(self.targets.iter().map(Target::label));
        let row = |name: &str, cell: &dyn Fn(&Target) -> String| {
            let mut r = vec![name.to_string()];
            r.extend(self.targets.iter().map(cell));
            r
        };
        let of = |t: &Target, f: &dyn Fn(&Run) -> Option<f64>| -> Option<Summary> {
            let v: Vec<f64> = t.runs.iter().filter_map(f).collect();
            Summary::of(&v)
        };
        vec![
            head,
            row("start-up latency, ms", &|t| fmt3(of(t, &|r| Some(r.startup_ms)), 2, "")),
            row("whole-life latency, ms", &|t| fmt3(of(t, &|r| Some(r.life_ms)), 2, "")),
            row("peak RSS, KiB", &|t| fmt3(of(t, &|r| Some(r.rss_kib as f64)), 0, "")),
            row("guest RAM touched, KiB", &|t| match t.vmm {
                Vmm::Rvmm => fmt3(of(t, &|r| r.guest_kib.map(|g| g as f64)), 0, ""),
                Vmm::Qemu { .. } => "not measured".to_string(),
            }),
            row("peak RSS - guest RAM touched, KiB", &|t| match t.vmm {
                Vmm::Rvmm => fmt3(of(t, &|r| r.guest_kib.map(|g| r.rss_kib as f64 - g as f64)), 0, ""),
                Vmm::Qemu { .. } => match estimate {
                    Some(g) => format!("{} (estimate)", fmt3(of(t, &|r| Some(r.rss_kib as f64 - g)), 0, "~")),
                    None => "n/a".to_string(),
                },
            }),
        ]
    }

    /// The `key: value` facts printed above the table.
    pub fn facts(&self) -> Vec<(String, String)> {
        let h = &self.host;
        let mut f = vec![
            ("date".to_string(), h.date.clone()),
            ("host kernel".to_string(), h.kernel.clone()),
            ("CPU".to_string(), h.cpu.clone()),
            ("KVM".to_string(), h.kvm.clone()),
            ("transparent huge pages".to_string(), h.thp.clone()),
            ("load average (1/5/15 min)".to_string(), format!("{} before, {} after", self.load.0, self.load.1)),
        ];
        f.extend(self.versions.iter().cloned());
        let guest = match &self.guest {
            Guest::Probe { kernel } => {
                format!("{} (PVH entry), command line `{CMDLINE}`, {MEMORY} RAM, 1 vCPU", kernel.display())
            }
            Guest::Exits { kernel, .. } => format!(
                "{} (PVH entry), command line `{}` and, as the baseline, `{}`; {MEMORY} RAM, 1 vCPU",
                kernel.display(),
                self.guest.cmdline(),
                self.guest.with_exits(0).cmdline()
            ),
            Guest::Firmware { bios, .. } => format!(
                "firmware {} booting a {} KiB raw disk on virtio-blk (PCI) whose MBR prints `{}` on COM1 \
                 and writes {MBR_EXIT_STATUS} to port 0xf4; {MEMORY} RAM, 1 vCPU",
                bios.display(),
                rvmm_tests::seabios::BOOT_DISK_SIZE / 1024,
                MBR_MARKER.trim_end(),
            ),
        };
        f.push(("guest".to_string(), guest));
        let runs = match self.guest {
            Guest::Exits { .. } => format!(
                "{} measured per VMM, each a pair of runs (exits=N and exits=0, the order alternating), \
                 interleaved, after {} discarded warm-up run(s) each",
                self.runs.0, self.runs.1
            ),
            _ => format!(
                "{} measured per VMM, interleaved, after {} discarded warm-up run(s) each",
                self.runs.0, self.runs.1
            ),
        };
        f.push(("runs".to_string(), runs));
        f
    }

    /// The notes printed below the table: definitions, caveats and the exact commands.
    pub fn notes(&self) -> Vec<String> {
        let mut n = match self.guest {
            Guest::Exits { exits, .. } => exits_notes(exits),
            _ => self.latency_notes(),
        };
        for t in &self.targets {
            if let Some(why) = &t.accel_note {
                n.push(format!("{}: {why}", t.label()));
            }
        }
        for t in &self.targets {
            n.push(format!(
                "{}: `{}` (exit code {})",
                t.label(),
                t.command_line(&self.guest),
                t.expected_exit(&self.guest)
            ));
        }
        n
    }

    /// The notes of the start-up and memory tables.
    fn latency_notes(&self) -> Vec<String> {
        let startup = match &self.guest {
            Guest::Probe { .. } | Guest::Exits { .. } => {
                "start-up latency: from spawn to the read() that delivered the first byte of \
                                    `rvmm-probe:` on the VMM's stdout (the guest's COM1)."
                    .to_string()
            }
            Guest::Firmware { .. } => format!(
                "start-up latency: from spawn to the read() that delivered the first byte of \
                 `{}` on the VMM's stdout (the guest's COM1): the firmware's whole run, its boot \
                 from the disk, and the MBR's first characters.",
                MBR_MARKER.trim_end()
            ),
        };
        let mut n = vec![
            startup,
            "whole-life latency: from spawn to process exit (pidfd readable; reaped with wait4).".to_string(),
            format!(
                "peak RSS: ru_maxrss from wait4. Linux carries the spawning process's peak RSS \
                 across exec into it, so no figure can be below this program's own peak RSS \
                 ({} KiB).",
                self.bench_rss_kib
            ),
            format!(
                "guest RAM touched: rvmm's `{RESIDENT_PREFIX}N KiB` log line (RVMM_LOG=info): \
                 mincore() over the guest RAM mapping when the VM has ended."
            ),
        ];
        if let Some(g) = self.guest_estimate_kib() {
            if self.targets.iter().any(|t| t.vmm != Vmm::Rvmm) {
                let why = match self.guest {
                    Guest::Probe { .. } | Guest::Exits { .. } => {
                        "QEMU's firmware (qboot on microvm, SeaBIOS on q35) and its transparent huge \
                         pages for guest RAM make it touch more guest RAM than rvmm"
                    }
                    Guest::Firmware { .. } => {
                        "Both run the same firmware, but QEMU asks for transparent huge pages for \
                         guest RAM, which can make it touch more guest RAM than rvmm"
                    }
                };
                n.push(format!(
                    "estimate (QEMU columns): QEMU does not report the guest RAM it touched; its column \
                     subtracts rvmm's median ({g:.0} KiB). {why}, so its real figure is lower by the \
                     difference."
                ));
            }
        }
        n
    }

    /// The report as plain text.
    pub fn plain(&self) -> String {
        let mut out = String::from(match self.guest {
            Guest::Probe { .. } => "rvmm-bench: `rvmm run` vs QEMU on the quick probe guest\n\n",
            Guest::Exits { .. } => "rvmm-bench: the cost of a VM exit, rvmm vs QEMU\n\n",
            Guest::Firmware { .. } => "rvmm-bench: `rvmm run --firmware` vs QEMU: firmware booting an MBR disk\n\n",
        });
        let facts = self.facts();
        let w = facts.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
        for (k, v) in &facts {
            out.push_str(&format!("{:<w$}  {v}\n", format!("{k}:")));
        }
        out.push('\n');
        for table in self.tables() {
            let cols = table.first().map_or(0, Vec::len);
            let widths: Vec<usize> = (0..cols)
                .map(|c| table.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
                .collect();
            for (i, row) in table.iter().enumerate() {
                let cells: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .enumerate()
                    .map(|(c, (s, &w))| if c == 0 { format!("{s:<w$}") } else { format!("{s:>w$}") })
                    .collect();
                out.push_str(cells.join("   ").trim_end());
                out.push('\n');
                if i == 0 {
                    let total = widths.iter().sum::<usize>() + 3 * widths.len().saturating_sub(1);
                    out.push_str(&"-".repeat(total));
                    out.push('\n');
                }
            }
            out.push('\n');
        }
        for note in self.notes() {
            out.push_str(&format!("- {note}\n"));
        }
        out
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        for (k, v) in self.facts() {
            out.push_str(&format!("- **{k}:** {}\n", md_escape(&v)));
        }
        out.push('\n');
        for table in self.tables() {
            for (i, row) in table.iter().enumerate() {
                let cells: Vec<String> = row.iter().map(|c| md_escape(c)).collect();
                out.push_str(&format!("| {} |\n", cells.join(" | ")));
                if i == 0 {
                    let seps: Vec<&str> = (0..row.len()).map(|c| if c == 0 { "---" } else { "---:" }).collect();
                    out.push_str(&format!("| {} |\n", seps.join(" | ")));
                }
            }
            out.push('\n');
        }
        for note in self.notes() {
            out.push_str(&format!("- {}\n", md_escape(&note)));
        }
        out
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The `--exits` tables: the summary (min / median / p90 per VMM) and one row per round.
fn exits_tables(targets: &[Target], n: u32) -> Vec<Vec<Vec<String>>> {
    let of = |t: &Target, f: &dyn Fn(&ExitPair) -> Option<f64>| -> Option<Summary> {
        let v: Vec<f64> = t.exit_pairs.iter().filter_map(f).collect();
        Summary::of(&v)
    };
    let mut head = vec!["metric (min / median / p90)".to_string()];
    head.extend(targets.iter().map(Target::label));
    let row = |name: String, cell: &dyn Fn(&Target) -> String| {
        let mut r = vec![name];
        r.extend(targets.iter().map(cell));
        r
    };
    // A cell that only rvmm's `--stats` can fill.
    let rvmm_only = |t: &Target, f: &dyn Fn(&ExitPair) -> Option<f64>, decimals: usize, prefix: &str| {
        if t.vmm == Vmm::Rvmm {
            fmt3(of(t, f), decimals, prefix)
        } else {
            "not measured".to_string()
        }
    };
    let summary = vec![
        head,
        row("round trip per exit, µs (between the guest's lines)".into(), &|t| {
            fmt3(of(t, &|p| Some(p.round_trip_us())), 2, "")
        }),
        row("round trip per exit, µs (whole life: noisy)".into(), &|t| {
            fmt3(of(t, &|p| Some(p.round_trip_life_us())), 2, "")
        }),
        row("rvmm dispatch per exit, mean, ns".into(), &|t| rvmm_only(t, &|p| p.dispatch.map(|d| d.mean_ns), 0, "")),
        row("rvmm dispatch per exit, median, ns (estimate)".into(), &|t| {
            rvmm_only(t, &|p| p.dispatch.and_then(|d| d.median_ns), 0, "~")
        }),
        row("rvmm dispatch share of the round trip, %".into(), &|t| rvmm_only(t, &ExitPair::dispatch_share, 1, "")),
        row(format!("exits counted by --stats, exits={n} minus exits=0 (expected {})", 2 * u64::from(n)), &|t| {
            rvmm_only(t, &|p| p.dispatch.map(|d| d.counted as f64), 0, "")
        }),
        row(format!("whole-life latency, ms, exits={n}"), &|t| fmt3(of(t, &|p| Some(p.life_ms.0)), 1, "")),
        row("whole-life latency, ms, exits=0".into(), &|t| fmt3(of(t, &|p| Some(p.life_ms.1)), 1, "")),
    ];
    let mut head = vec!["run".to_string()];
    for t in targets {
        head.push(format!("{}: round trip, µs (between lines / whole life)", t.label()));
        if t.vmm == Vmm::Rvmm {
            head.push(format!("{}: dispatch, ns (mean / median est.)", t.label()));
            head.push(format!("{}: exits counted (0xf4 reads + ECAM reads)", t.label()));
        }
    }
    let rounds = targets.iter().map(|t| t.exit_pairs.len()).max().unwrap_or(0);
    let mut per_run = vec![head];
    for i in 0..rounds {
        let mut r = vec![(i + 1).to_string()];
        for t in targets {
            let p = t.exit_pairs.get(i);
            r.push(p.map_or("n/a".into(), |p| format!("{:.2} / {:.2}", p.round_trip_us(), p.round_trip_life_us())));
            if t.vmm == Vmm::Rvmm {
                let d = p.and_then(|p| p.dispatch);
                r.push(d.map_or("n/a".into(), |d| match d.median_ns {
                    Some(m) => format!("{:.0} / ~{m:.0}", d.mean_ns),
                    None => format!("{:.0} / n/a", d.mean_ns),
                }));
                r.push(d.map_or("n/a".into(), |d| format!("{} ({} + {})", d.counted, d.port_reads, d.ecam_reads)));
            }
        }
        per_run.push(r);
    }
    vec![summary, per_run]
}

/// The definitions below the `--exits` tables.
fn exits_notes(n: u32) -> Vec<String> {
    vec![
        format!(
            "the guest: after `{QUICK_LINE}`, the probe maps the low 4 GiB and finds ECAM in the ACPI MCFG, then \
             makes {n} `inb` from port 0xf4 (the debug exit device) and {n} 32-bit MMIO reads of 00:00.0's \
             vendor/device ID through ECAM, unrolled by 8, and prints `exits: pio={n} mmio={n} ...`. The \
             baseline (exits=0) does the same but for the reads."
        ),
        format!(
            "round trip per exit: (time(exits={n}) - time(exits=0)) / {} (/ {n} if the guest found no ECAM). \
             Time between the guest's lines: from the read() that delivered the first byte of `rvmm-probe:` to \
             the one that delivered `exits:` on the VMM's stdout; this leaves out boot (SeaBIOS on q35 varies \
             by tens of ms) and teardown (rvmm's VM destruction varies by ms). Whole life: spawn to exit, which \
             includes both, so on q35 its noise is larger than the exits' time. The round trip is the guest's \
             exiting instruction, KVM's exit and entry, and the VMM's handling.",
            2 * u64::from(n)
        ),
        "rvmm dispatch: rvmm's `--stats` handling time, from KVM_RUN's return to the end of the exit's \
         handling (just before the next KVM_RUN), measured by rvmm itself. Per round: (total time of the \
         exits=N run - total of the exits=0 run) / (their difference in exits); the median is estimated from \
         the difference of the two log2 histograms by interpolating within the bucket."
            .to_string(),
        "exits counted: what --stats counted in the exits=N run minus the exits=0 run; it is 2N plus the \
         COM1 exits of the longer `exits:` line (an LSR read and a data write per extra character). In \
         brackets: the debug-exit port reads and ECAM reads of the exits=N run, N each."
            .to_string(),
        "dispatch share: rvmm's mean dispatch time / the round trip (between the guest's lines), per round."
            .to_string(),
    ]
}

fn main() -> ExitCode {
    let options = match args::options_or_exit("rvmm-bench", USAGE, parse_args(std::env::args_os().skip(1))) {
        Ok(o) => o,
        Err(code) => return code,
    };
    match bench(&options) {
        Ok(report) => {
            if options.markdown {
                print!("{}", report.markdown());
            } else {
                print!("{}", report.plain());
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("rvmm-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A file deleted when this is dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The guest the options ask for; for firmware, also the MBR disk written for it
/// (deleted when the returned [`TempFile`] is dropped).
fn guest_of(o: &Options) -> Result<(Guest, Option<TempFile>), String> {
    let Some(firmware) = &o.firmware else {
        let kernel = o.kernel.clone().unwrap_or_else(|| PathBuf::from(rvmm_probes::PVH_ELF));
        if !kernel.is_file() {
            return Err(format!(
                "probe image {} not found: build the workspace (`cargo build --release`) or pass \
                 --kernel PATH",
                kernel.display()
            ));
        }
        let guest = match o.exits {
            Some(exits) => Guest::Exits { kernel, exits },
            None => Guest::Probe { kernel },
        };
        return Ok((guest, None));
    };
    let bios = match firmware {
        Some(p) if p.is_file() => p.clone(),
        Some(p) => return Err(format!("--firmware {}: no such file", p.display())),
        None => rvmm_tests::seabios::seabios_bios().ok_or_else(|| {
            format!(
                "no SeaBIOS image at {} (or $RVMM_SEABIOS): install it (apt-get install seabios) \
                 or pass --firmware PATH",
                rvmm_tests::seabios::SEABIOS_BIOS_256K
            )
        })?,
    };
    let disk = std::env::temp_dir().join(format!("rvmm-bench-mbr-{}.img", std::process::id()));
    if disk.to_string_lossy().contains(',') {
        // rvmm's --disk and QEMU's -drive both split their value at commas.
        return Err(format!("temporary disk path {} has a comma: set TMPDIR elsewhere", disk.display()));
    }
    rvmm_tests::seabios::write_boot_disk(&disk).map_err(|e| format!("writing {}: {e}", disk.display()))?;
    let file = TempFile(disk.clone());
    Ok((Guest::Firmware { bios, disk }, Some(file)))
}

/// Finds the programs, runs everything and returns the report.
fn bench(o: &Options) -> Result<Report, String> {
    let (guest, _disk) = guest_of(o)?;
    let rvmm = find_rvmm(o.rvmm.clone())?;
    if rvmm.components().any(|c| c.as_os_str() == "debug") {
        eprintln!("rvmm-bench: warning: {} looks like a debug build; benchmark the release build", rvmm.display());
    }
    let mut versions = vec![("rvmm".to_string(), format!("{} ({})", rvmm.display(), version_of(&rvmm, "--version")))];
    let mut targets = vec![Target::new(Vmm::Rvmm, rvmm)];
    if !o.no_qemu {
        let qemu = find_qemu(o.qemu.clone())?;
        versions.push(("QEMU".to_string(), format!("{} ({})", qemu.display(), version_of(&qemu, "-version"))));
        match &guest {
            Guest::Probe { .. } => {
                targets.push(Target::new(Vmm::Qemu { machine: "microvm" }, qemu.clone()));
                if !o.no_q35 {
                    targets.push(Target::new(Vmm::Qemu { machine: "q35" }, qemu));
                }
            }
            // q35: microvm has no PCI host, so no ECAM for the MMIO exits.
            Guest::Exits { .. } => targets.push(Target::new(Vmm::Qemu { machine: "q35" }, qemu)),
            // The i440FX machine, like rvmm's under --firmware.
            Guest::Firmware { .. } => targets.push(Target::new(Vmm::Qemu { machine: "pc" }, qemu)),
        }
    }
    let host = host::Host::gather();
    let load_before = host::loadavg();

    // Warm-up; for QEMU the first run also checks that KVM works, else falls back to TCG.
    for t in &mut targets {
        for i in 0..o.warmup.max(usize::from(t.vmm != Vmm::Rvmm)) {
            eprintln!("rvmm-bench: warm-up {} {}", t.label(), i + 1);
            match t.run_once(&guest, o.timeout) {
                Ok(_) => {}
                Err(e) if i == 0 && t.vmm != Vmm::Rvmm && t.accel == Accel::Kvm => {
                    let first = match stderr_hint(&e) {
                        Some(hint) => format!("{}: {hint}", e.lines().next().unwrap_or("")),
                        None => e.lines().next().unwrap_or("").to_string(),
                    };
                    t.accel = Accel::Tcg;
                    eprintln!("rvmm-bench: {first}\nrvmm-bench: retrying with -accel tcg");
                    t.run_once(&guest, o.timeout)
                        .map_err(|e2| format!("with -accel kvm: {e}\nwith -accel tcg: {e2}"))?;
                    t.accel_note = Some(format!("-accel kvm failed ({first}); measured with TCG"));
                }
                Err(e) => return Err(e),
            }
        }
    }
    for round in 0..o.runs {
        eprintln!("rvmm-bench: run {}/{}", round + 1, o.runs);
        for t in &mut targets {
            if let Guest::Exits { .. } = guest {
                // Alternate which run of the pair goes first, so that drift falls on both.
                let pair = t.run_exit_pair(&guest, round % 2 == 0, o.timeout)?;
                t.exit_pairs.push(pair);
            } else {
                let run = t.run_once(&guest, o.timeout)?;
                t.runs.push(run);
            }
        }
    }
    Ok(Report {
        host,
        load: (load_before, host::loadavg()),
        runs: (o.runs, o.warmup),
        guest,
        versions,
        targets,
        bench_rss_kib: rusage::own_max_rss_kib(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn options() {
        let o = parse_args(args(&[])).unwrap();
        assert_eq!((o.runs, o.warmup, o.markdown), (20, 1, false));
        let o = parse_args(args(&["--runs", "5", "--markdown", "--no-q35"])).unwrap();
        assert!(o.runs == 5 && o.markdown && o.no_q35);
        assert!(matches!(parse_args(args(&["--runs", "0"])), Err(ArgsExit::Usage(_))));
        assert!(matches!(parse_args(args(&["--runs"])), Err(ArgsExit::Usage(_))));
        assert!(matches!(parse_args(args(&["--bogus"])), Err(ArgsExit::Usage(_))));
        assert!(matches!(parse_args(args(&["-h"])), Err(ArgsExit::Help)));
    }

    #[test]
    fn firmware_option() {
        let o = parse_args(args(&["--firmware"])).unwrap();
        assert_eq!(o.firmware, Some(None));
        assert_eq!(o.kernel, None);
        let o = parse_args(args(&["--firmware", "/x/bios.bin", "--runs", "3"])).unwrap();
        assert_eq!(o.firmware, Some(Some(PathBuf::from("/x/bios.bin"))));
        assert_eq!(o.runs, 3);
        // An option right after --firmware is not its path.
        let o = parse_args(args(&["--firmware", "--markdown"])).unwrap();
        assert!(o.firmware == Some(None) && o.markdown);
        assert_eq!(parse_args(args(&[])).unwrap().firmware, None);
        assert!(matches!(parse_args(args(&["--firmware", "--kernel", "k"])), Err(ArgsExit::Usage(_))));
        assert!(matches!(parse_args(args(&["--kernel", "k", "--firmware"])), Err(ArgsExit::Usage(_))));
    }

    #[test]
    fn exits_option() {
        assert_eq!(parse_args(args(&[])).unwrap().exits, None);
        let o = parse_args(args(&["--exits"])).unwrap();
        assert_eq!(o.exits, Some(exits::DEFAULT_EXITS));
        let o = parse_args(args(&["--exits", "500", "--runs", "3"])).unwrap();
        assert_eq!((o.exits, o.runs), (Some(500), 3));
        // An option right after --exits is not its N.
        let o = parse_args(args(&["--exits", "--markdown"])).unwrap();
        assert!(o.exits == Some(exits::DEFAULT_EXITS) && o.markdown);
        assert_eq!(parse_args(args(&["--exits", "1000000"])).unwrap().exits, Some(1_000_000));
        for bad in ["0", "1000001", "x", "-5", "2.5"] {
            assert!(matches!(parse_args(args(&["--exits", bad])), Err(ArgsExit::Usage(_))), "{bad}");
        }
        assert!(matches!(parse_args(args(&["--exits", "--firmware"])), Err(ArgsExit::Usage(_))));
        assert!(matches!(parse_args(args(&["--exits", "--no-q35"])), Err(ArgsExit::Usage(_))));
        assert!(parse_args(args(&["--exits", "--no-q35", "--no-qemu"])).is_ok());
        assert!(parse_args(args(&["--exits", "9", "--kernel", "/p.elf"])).is_ok());
        // The shared parser's message.
        match parse_args(args(&["--exits", "0"])) {
            Err(ArgsExit::Usage(m)) => assert_eq!(m, "--exits 0: expected a whole number from 1 to 1000000"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exits_targets() {
        let g = Guest::Exits { kernel: PathBuf::from("/p.elf"), exits: 500 };
        let rvmm = Target::new(Vmm::Rvmm, PathBuf::from("rvmm"));
        let qemu = Target::new(Vmm::Qemu { machine: "q35" }, PathBuf::from("qemu"));
        assert_eq!(
            words(&rvmm, &g).join(" "),
            "run --kernel /p.elf --cmdline quick exits=500 --memory 256M --console stdio --stats"
        );
        assert!(words(&qemu, &g).windows(2).any(|w| w == ["-append", "quick exits=500"]));
        let base = g.with_exits(0);
        assert_eq!(base.cmdline(), "quick exits=0");
        assert_eq!((g.line(), base.line()), ("exits: pio=500 mmio=".to_string(), "exits: pio=0 mmio=".to_string()));
        assert_eq!((rvmm.expected_exit(&g), qemu.expected_exit(&g)), (0, 1));
        assert!(rvmm.command_line(&g).contains("--cmdline 'quick exits=500'"));
        // The default guest's command line is unchanged.
        assert_eq!(Guest::Probe { kernel: PathBuf::from("/p.elf") }.cmdline(), "quick");
    }

    fn words(t: &Target, g: &Guest) -> Vec<String> {
        t.args(g).iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn probe_targets() {
        let g = Guest::Probe { kernel: PathBuf::from("/p.elf") };
        let rvmm = Target::new(Vmm::Rvmm, PathBuf::from("rvmm"));
        let qemu = Target::new(Vmm::Qemu { machine: "microvm" }, PathBuf::from("qemu"));
        assert_eq!(words(&rvmm, &g).join(" "), "run --kernel /p.elf --cmdline quick --memory 256M --console stdio");
        assert_eq!(
            words(&qemu, &g).join(" "),
            "-M microvm -accel kvm -m 256M -nodefaults -no-user-config -nographic -serial stdio \
             -kernel /p.elf -append quick -device isa-debug-exit,iobase=0xf4,iosize=0x04"
        );
        assert_eq!((rvmm.expected_exit(&g), qemu.expected_exit(&g)), (0, 1));
        assert_eq!(g.startup_marker(), b"rvmm-probe:");
    }

    #[test]
    fn firmware_targets() {
        let g = Guest::Firmware { bios: PathBuf::from("/b.bin"), disk: PathBuf::from("/tmp/d.img") };
        let rvmm = Target::new(Vmm::Rvmm, PathBuf::from("rvmm"));
        let mut qemu = Target::new(Vmm::Qemu { machine: "pc" }, PathBuf::from("qemu"));
        assert_eq!(
            words(&rvmm, &g).join(" "),
            "run --firmware /b.bin --disk /tmp/d.img --memory 256M --console stdio --debugcon none"
        );
        assert_eq!(
            words(&qemu, &g).join(" "),
            "-M pc -accel kvm -bios /b.bin -nodefaults -no-user-config -nographic -serial stdio -m 256M \
             -drive file=/tmp/d.img,format=raw,if=none,id=d0 -device virtio-blk-pci,drive=d0 \
             -device isa-debug-exit,iobase=0xf4,iosize=0x04"
        );
        qemu.accel = Accel::Tcg;
        assert!(words(&qemu, &g).windows(2).any(|w| w == ["-accel", "tcg"]));
        assert_eq!((rvmm.expected_exit(&g), qemu.expected_exit(&g)), (42, 85));
        assert!(rvmm.command_line(&g).starts_with("RVMM_LOG=info rvmm run --firmware"));
        assert_eq!(g.startup_marker(), b"rvmm-mbr: hello\r\n");
    }

    #[test]
    fn firmware_check() {
        let g = Guest::Firmware { bios: PathBuf::from("/b.bin"), disk: PathBuf::from("/d.img") };
        let rvmm = Target::new(Vmm::Rvmm, PathBuf::from("rvmm"));
        let outcome = |code: i32, stdout: &[u8]| Outcome {
            startup: Some(Duration::from_millis(2800)),
            whole_life: Duration::from_millis(2850),
            max_rss_kib: 5000,
            ended: Ended::Code(code),
            stdout: stdout.to_vec(),
            stdout_reads: vec![(0, Duration::from_millis(2800))],
            stderr: b"[INFO  vmm::vm] guest memory resident at exit: 640 KiB\n".to_vec(),
        };
        let ok = b"SeaBIOS (version x)\r\nBooting from Hard Disk..rvmm-mbr: hello\r\n";
        let run = rvmm.check(&outcome(42, ok), &g).unwrap();
        assert_eq!((run.startup_ms, run.life_ms, run.guest_kib), (2800.0, 2850.0, Some(640)));
        assert!(rvmm.check(&outcome(0, ok), &g).unwrap_err().contains("expected exit code 42"));
        assert!(rvmm.check(&outcome(42, b"SeaBIOS"), &g).unwrap_err().contains("rvmm-mbr: hello'"));
    }

    #[test]
    fn resident_line() {
        let log = b"[INFO  vmm::vm] VM ended\n[INFO  vmm::vm] guest memory resident at exit: 1234 KiB\n";
        assert_eq!(parse_resident_kib(log), Some(1234));
        assert_eq!(parse_resident_kib(b"nothing"), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("-M"), "-M");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
