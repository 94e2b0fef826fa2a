//! The access patterns, the offsets they visit, and the measurement window they are
//! timed in. The device model and the raw baseline draw their offsets from the same
//! generator with the same seed, so both visit the same sequence of blocks.

use std::time::Instant;

/// One access pattern of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// 4 KiB reads at uniformly random 4 KiB-aligned offsets.
    RandRead4k,
    /// 4 KiB writes at uniformly random 4 KiB-aligned offsets.
    RandWrite4k,
    /// 64 KiB reads, one after the other through the file, wrapping at its end.
    SeqRead64k,
    /// 64 KiB writes, one after the other through the file, wrapping at its end.
    SeqWrite64k,
}

impl Pattern {
    /// Every pattern, in report order.
    pub const ALL: [Pattern; 4] =
        [Pattern::RandRead4k, Pattern::RandWrite4k, Pattern::SeqRead64k, Pattern::SeqWrite64k];

    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::RandRead4k => "4k-randread",
            Pattern::RandWrite4k => "4k-randwrite",
            Pattern::SeqRead64k => "64k-seqread",
            Pattern::SeqWrite64k => "64k-seqwrite",
        }
    }

    /// The pattern called `name`, if any.
    pub fn from_name(name: &str) -> Option<Pattern> {
        Pattern::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Bytes per request.
    pub fn block_size(self) -> usize {
        match self {
            Pattern::RandRead4k | Pattern::RandWrite4k => 4096,
            Pattern::SeqRead64k | Pattern::SeqWrite64k => 65536,
        }
    }

    /// Whether the requests write.
    pub fn is_write(self) -> bool {
        matches!(self, Pattern::RandWrite4k | Pattern::SeqWrite64k)
    }

    /// The offsets this pattern visits in a file of `file_size` bytes (at least one block).
    pub fn offsets(self, file_size: u64) -> Offsets {
        let block = self.block_size() as u64;
        Offsets {
            random: matches!(self, Pattern::RandRead4k | Pattern::RandWrite4k),
            block,
            blocks: (file_size / block).max(1),
            next: 0,
        }
    }
}

/// An endless sequence of byte offsets (see [`Pattern::offsets`]). Offset number `i`
/// depends only on `i`, so threads that share a counter of `i` visit the same offsets.
#[derive(Debug, Clone)]
pub struct Offsets {
    random: bool,
    block: u64,
    blocks: u64,
    next: u64,
}

impl Offsets {
    /// The next offset: block-aligned, and the block lies inside the file.
    pub fn next_offset(&mut self) -> u64 {
        let i = self.next;
        self.next += 1;
        self.offset(i)
    }

    /// Offset number `i` of the sequence.
    pub fn offset(&self, i: u64) -> u64 {
        let b = if self.random {
            // splitmix64 of the index: spreads the blocks evenly, no state to share.
            let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % self.blocks
        } else {
            i % self.blocks
        };
        b * self.block
    }
}

pub use crate::args::Window;

/// What one case achieved in its measured interval.
#[derive(Debug, Clone, Copy)]
pub struct Measurement {
    /// Requests completed in the interval.
    pub ops: u64,
    /// The interval, seconds.
    pub seconds: f64,
    /// CPU time (user + system) of the whole process over the interval, all its
    /// threads (the device worker, the engine's threads, io_uring's workers), seconds.
    pub cpu_seconds: f64,
}

impl Measurement {
    /// Requests per second (not a number when nothing was measured).
    pub fn iops(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ops as f64 / self.seconds
        } else {
            f64::NAN
        }
    }

    /// CPU time per request, microseconds.
    pub fn cpu_us_per_op(&self) -> f64 {
        if self.ops == 0 {
            f64::NAN
        } else {
            self.cpu_seconds * 1e6 / self.ops as f64
        }
    }
}

/// CPU time (user + system) of this process so far, seconds.
pub fn process_cpu_seconds() -> f64 {
    crate::rusage::process_cpu().as_secs_f64()
}

/// Counts completions inside a [`Window`]: call [`record`](Counter::record) with each
/// batch of completions as it is seen; completions seen during the warm-up or after
/// the end are not counted.
#[derive(Debug)]
pub struct Counter {
    warm_end: Instant,
    end: Instant,
    last: Instant,
    ops: u64,
    /// Completions seen in the first batch at or after the end (for CPU time per request).
    final_batch: u64,
    cpu_at_start: Option<f64>,
    cpu_at_end: Option<f64>,
}

impl Counter {
    /// A counter whose window starts now.
    pub fn start(window: Window) -> Counter {
        let now = Instant::now();
        Counter {
            warm_end: now + window.warmup,
            end: now + window.warmup + window.measure,
            last: now,
            ops: 0,
            final_batch: 0,
            cpu_at_start: None,
            cpu_at_end: None,
        }
    }

    /// Records `n` completions seen now; returns whether the window is still open
    /// (new requests should be issued).
    pub fn record(&mut self, n: u64) -> bool {
        let now = Instant::now();
        if now < self.warm_end {
            return true;
        }
        if now >= self.end {
            if self.cpu_at_end.is_none() {
                self.cpu_at_end = Some(process_cpu_seconds());
                self.final_batch = n;
            }
            return false;
        }
        if self.cpu_at_start.is_none() {
            // The first batch after the warm-up opens the interval; it is not counted,
            // as it completed (mostly) before the interval began.
            self.cpu_at_start = Some(process_cpu_seconds());
            self.warm_end = now;
            self.last = now;
            return true;
        }
        self.ops += n;
        self.last = now;
        true
    }

    /// The measurement, once [`record`](Counter::record) returned false: the
    /// completions counted between the first batch after the warm-up and the last
    /// batch before the end, over the time between those two batches.
    pub fn finish(&self) -> Measurement {
        let cpu_start = self.cpu_at_start.unwrap_or(0.0);
        let cpu_end = self.cpu_at_end.unwrap_or(cpu_start);
        // The CPU time runs to the first batch after the end; scale it to the counted part.
        let cpu_ops = self.ops + self.final_batch;
        let cpu = (cpu_end - cpu_start).max(0.0);
        Measurement {
            ops: self.ops,
            seconds: self.last.duration_since(self.warm_end).as_secs_f64(),
            cpu_seconds: if cpu_ops == 0 { 0.0 } else { cpu * self.ops as f64 / cpu_ops as f64 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_stay_inside_and_repeat() {
        let size = 1 << 20;
        for p in Pattern::ALL {
            let mut a = p.offsets(size);
            let mut b = p.offsets(size);
            for _ in 0..10_000 {
                let o = a.next_offset();
                assert_eq!(o, b.next_offset());
                assert_eq!(o % p.block_size() as u64, 0);
                assert!(o + p.block_size() as u64 <= size);
            }
        }
        let mut s = Pattern::SeqRead64k.offsets(size);
        let v: Vec<u64> = (0..17).map(|_| s.next_offset()).collect();
        assert_eq!(v[1], 65536);
        assert_eq!(v[16], 0);
        // Random offsets cover the file roughly evenly.
        let r = Pattern::RandRead4k.offsets(size);
        let mut seen = vec![0u32; 256];
        for i in 0..25_600 {
            seen[(r.offset(i) / 4096) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50 && n < 200), "{seen:?}");
    }

    #[test]
    fn names_round_trip() {
        for p in Pattern::ALL {
            assert_eq!(Pattern::from_name(p.name()), Some(p));
        }
    }
}
