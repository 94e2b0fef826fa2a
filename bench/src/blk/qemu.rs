//! A side reference from QEMU: `qemu-img bench`, which drives QEMU's block layer —
//! the same code and the same io_uring / thread-pool back ends that QEMU's virtio-blk
//! hands its requests to — on the same file, with no virtio front end and no guest.
//!
//! It is not QEMU's virtio-blk: it leaves out the virtqueue work that rvmm's figures
//! include, so for QEMU's virtio-blk it is an upper bound. It only does sequential
//! offsets (each request `-S` bytes after the previous one, wrapping at the end), so
//! only the 64 KiB sequential patterns have a QEMU row.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use virtio::block::disk::EngineKind;

use crate::pattern::{Measurement, Pattern};

/// `qemu-img` from `$PATH`, if there is one.
pub fn find_qemu_img() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("qemu-img")).find(|p| p.is_file())
}

/// `qemu-img --version`'s first line.
pub fn version(qemu_img: &Path) -> String {
    match Command::new(qemu_img).arg("--version").output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("unknown version").to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Whether QEMU can run `pattern` the way this benchmark does (sequential only).
pub fn supports(pattern: Pattern) -> bool {
    matches!(pattern, Pattern::SeqRead64k | Pattern::SeqWrite64k)
}

/// One `qemu-img bench` case: which file, pattern, queue depth, back end and cache mode.
#[derive(Debug, Clone, Copy)]
pub struct Bench<'a> {
    /// The `qemu-img` program.
    pub qemu_img: &'a Path,
    /// The test file.
    pub file: &'a Path,
    /// The access pattern (see [`supports`]).
    pub pattern: Pattern,
    /// Requests in flight.
    pub depth: usize,
    /// io_uring or the thread pool.
    pub engine: EngineKind,
    /// O_DIRECT (`-t none`) rather than the page cache.
    pub direct: bool,
}

impl Bench<'_> {
    /// The command line for `count` requests.
    pub fn command(&self, count: u64) -> Command {
        let mut c = Command::new(self.qemu_img);
        let bs = self.pattern.block_size().to_string();
        c.args(["bench", "-f", "raw", "-c", &count.to_string(), "-d", &self.depth.to_string()]);
        c.args(["-s", &bs, "-S", &bs]);
        c.args(["-i", if self.engine == EngineKind::Threads { "threads" } else { "io_uring" }]);
        c.args(["-t", if self.direct { "none" } else { "writeback" }]);
        if self.pattern.is_write() {
            // A non-zero byte, so that nothing can treat the writes as zeroes.
            c.args(["-w", "--pattern=165"]);
        }
        c.arg(self.file);
        c
    }

    /// Runs `count` requests; returns the time `qemu-img` reports for the run and the
    /// CPU time of the whole `qemu-img` process.
    fn run_once(&self, count: u64) -> Result<(f64, f64), String> {
        let cpu_before = children_cpu_seconds();
        let out = self.command(count).output().map_err(|e| format!("cannot run {}: {e}", self.qemu_img.display()))?;
        let cpu = children_cpu_seconds() - cpu_before;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "qemu-img bench failed ({}): {}{}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let secs = stdout
            .lines()
            .find_map(|l| l.strip_prefix("Run completed in ")?.strip_suffix(" seconds.")?.parse::<f64>().ok())
            .ok_or_else(|| format!("unexpected qemu-img bench output: {}", stdout.trim()))?;
        Ok((secs, cpu))
    }

    /// Runs the case with QEMU's block layer for about `seconds`: a short
    /// calibration run (which also warms up) picks the request count.
    pub fn run(&self, seconds: Duration) -> Result<Measurement, String> {
        let probe = 2000;
        let (t, _) = self.run_once(probe)?;
        let rate = probe as f64 / t.max(1e-6);
        let count = ((rate * seconds.as_secs_f64()) as u64).clamp(1000, 50_000_000);
        let (t, cpu) = self.run_once(count)?;
        Ok(Measurement { ops: count, seconds: t, cpu_seconds: cpu })
    }
}

/// The command line as text, for the report (the file is shown as FILE).
pub fn command_text(pattern: Pattern, depth: usize, engine: EngineKind, direct: bool) -> String {
    let bench = Bench { qemu_img: Path::new("qemu-img"), file: Path::new("FILE"), pattern, depth, engine, direct };
    let c = bench.command(0);
    let args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    format!("qemu-img {}", args.join(" ").replace("-c 0", "-c N"))
}

/// CPU time (user + system) of this process's waited-for children (`qemu-img` runs), seconds.
pub fn children_cpu_seconds() -> f64 {
    crate::rusage::children_cpu().as_secs_f64()
}
