//! Timing a case: a warm-up, then the measured window, with the frame counts, the
//! measuring thread's CPU time and the tap's counters taken at both ends of it.

use std::time::{Duration, Instant};

use crate::netenv::{self, LinkStats};

pub use crate::args::Window;

/// What the loops count.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Frames of the expected kind moved.
    pub frames: u64,
    /// Their Ethernet bytes (no virtio-net header).
    pub bytes: u64,
    /// Frames that were not of the expected kind (length or offload header).
    pub unexpected: u64,
    /// Interrupts the device raised (devices only).
    pub interrupts: u64,
}

impl Counts {
    fn since(&self, e: &Counts) -> Counts {
        Counts {
            frames: self.frames - e.frames,
            bytes: self.bytes - e.bytes,
            unexpected: self.unexpected - e.unexpected,
            interrupts: self.interrupts - e.interrupts,
        }
    }
}

/// The result of one measured window.
#[derive(Debug, Clone, Copy)]
pub struct Measurement {
    /// What moved inside the window.
    pub counts: Counts,
    /// The window's real length.
    pub seconds: f64,
    /// User + system CPU time of the measuring thread in the window.
    pub cpu_seconds: f64,
    /// The tap's counters over the window.
    pub link: LinkStats,
}

impl Measurement {
    /// Frames per second.
    pub fn fps(&self) -> f64 {
        self.counts.frames as f64 / self.seconds
    }
    /// Gigabits (10^9) per second of Ethernet bytes.
    pub fn gbps(&self) -> f64 {
        self.counts.bytes as f64 * 8.0 / self.seconds / 1e9
    }
    /// CPU microseconds of the measuring thread per frame.
    pub fn cpu_us_per_frame(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.counts.frames.max(1) as f64
    }
}

struct Mark {
    at: Instant,
    counts: Counts,
    cpu: Duration,
    link: LinkStats,
}

fn mark(counts: Counts) -> Result<Mark, String> {
    let link = netenv::link_stats()?;
    Ok(Mark { at: Instant::now(), counts, cpu: crate::rusage::thread_cpu(), link })
}

/// The clock of one case: call [`Clock::tick`] with the running counts often (every
/// few frames); it says when to stop.
pub struct Clock {
    measure_from: Instant,
    window: Window,
    begin: Option<Mark>,
    result: Option<Measurement>,
}

impl Clock {
    /// Starts the warm-up now.
    pub fn start(window: Window) -> Clock {
        Clock { measure_from: Instant::now() + window.warmup, window, begin: None, result: None }
    }

    /// Records `counts` (running totals); returns false when the window is over.
    pub fn tick(&mut self, counts: Counts) -> Result<bool, String> {
        if self.result.is_some() {
            return Ok(false);
        }
        let now = Instant::now();
        match &self.begin {
            None if now >= self.measure_from => {
                self.begin = Some(mark(counts)?);
                Ok(true)
            }
            None => Ok(true),
            Some(b) if now.duration_since(b.at) >= self.window.measure => {
                let end = mark(counts)?;
                self.result = Some(Measurement {
                    counts: end.counts.since(&b.counts),
                    seconds: end.at.duration_since(b.at).as_secs_f64(),
                    cpu_seconds: end.cpu.saturating_sub(b.cpu).as_secs_f64(),
                    link: end.link.since(&b.link),
                });
                Ok(false)
            }
            Some(_) => Ok(true),
        }
    }

    /// The measurement (after `tick` returned false).
    pub fn finish(self) -> Result<Measurement, String> {
        self.result.ok_or_else(|| "the measured window did not end".to_string())
    }
}
