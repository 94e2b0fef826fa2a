//! Exit statistics (book chapter 1.3, "trap and emulate", made visible): how
//! often each vCPU left the guest and why, which devices the exits went to,
//! and how long user space took to handle them.
//!
//! Counters are relaxed atomics written only by their own vCPU thread, so
//! recording costs a few nanoseconds; readers (the `--stats` report at exit, or
//! SIGUSR1 while the VM runs) see a consistent-enough snapshot.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a vCPU left KVM_RUN, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum ExitKind {
    /// Port-I/O read.
    IoIn,
    /// Port-I/O write.
    IoOut,
    /// MMIO read.
    MmioRead,
    /// MMIO write.
    MmioWrite,
    /// Interrupted by a signal (kick).
    Interrupted,
    /// KVM_EXIT_HLT.
    Hlt,
    /// Triple fault.
    Shutdown,
    /// KVM_EXIT_SYSTEM_EVENT.
    SystemEvent,
    /// KVM_EXIT_INTERNAL_ERROR.
    InternalError,
    /// KVM_EXIT_IRQ_WINDOW_OPEN (split irqchip: the PIC's interrupt can be injected).
    IrqWindow,
    /// KVM_EXIT_IOAPIC_EOI (split irqchip: EOI of a level-triggered IOAPIC interrupt).
    IoapicEoi,
    /// Anything else.
    Other,
}

const KINDS: [(ExitKind, &str); 12] = [
    (ExitKind::IoIn, "io-in"),
    (ExitKind::IoOut, "io-out"),
    (ExitKind::MmioRead, "mmio-read"),
    (ExitKind::MmioWrite, "mmio-write"),
    (ExitKind::Interrupted, "interrupted"),
    (ExitKind::Hlt, "hlt"),
    (ExitKind::Shutdown, "shutdown"),
    (ExitKind::SystemEvent, "system-event"),
    (ExitKind::InternalError, "internal-error"),
    (ExitKind::IrqWindow, "irq-window"),
    (ExitKind::IoapicEoi, "ioapic-eoi"),
    (ExitKind::Other, "other"),
];

/// Buckets of the latency histogram: bucket i counts handling times in [2^i, 2^(i+1)) ns.
pub const HISTOGRAM_BUCKETS: usize = 32;

/// The counters of one vCPU.
#[derive(Debug)]
pub struct VcpuStats {
    exits: [AtomicU64; KINDS.len()],
    handling_ns: [AtomicU64; HISTOGRAM_BUCKETS],
    handling_total_ns: AtomicU64,
}

impl Default for VcpuStats {
    fn default() -> Self {
        VcpuStats {
            exits: std::array::from_fn(|_| AtomicU64::new(0)),
            handling_ns: std::array::from_fn(|_| AtomicU64::new(0)),
            handling_total_ns: AtomicU64::new(0),
        }
    }
}

impl VcpuStats {
    /// Counts one exit of `kind` that user space handled in `ns` nanoseconds.
    pub fn record(&self, kind: ExitKind, ns: u64) {
        self.exits[kind as usize].fetch_add(1, Ordering::Relaxed);
        let bucket = (63 - ns.max(1).leading_zeros() as usize).min(HISTOGRAM_BUCKETS - 1);
        self.handling_ns[bucket].fetch_add(1, Ordering::Relaxed);
        self.handling_total_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Exits of `kind` so far.
    pub fn exits(&self, kind: ExitKind) -> u64 {
        self.exits[kind as usize].load(Ordering::Relaxed)
    }

    /// All exits so far.
    pub fn total_exits(&self) -> u64 {
        self.exits.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Access counters of one device range on a bus.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Reads.
    pub reads: AtomicU64,
    /// Writes.
    pub writes: AtomicU64,
}

/// Formats the report: per-vCPU exits by reason, the latency histogram, and
/// `devices` lines of (bus name, range, reads, writes).
pub fn report(vcpus: &[std::sync::Arc<VcpuStats>], devices: &[(String, u64, u64)]) -> String {
    let mut out = String::from("exit statistics\n");
    let _ = write!(out, "{:<16}", "reason");
    for i in 0..vcpus.len() {
        let _ = write!(out, "{:>12}", format!("vcpu{i}"));
    }
    out.push('\n');
    for (kind, name) in KINDS {
        if vcpus.iter().all(|v| v.exits(kind) == 0) {
            continue;
        }
        let _ = write!(out, "{name:<16}");
        for v in vcpus {
            let _ = write!(out, "{:>12}", v.exits(kind));
        }
        out.push('\n');
    }
    let total: u64 = vcpus.iter().map(|v| v.total_exits()).sum();
    let total_ns: u64 = vcpus.iter().map(|v| v.handling_total_ns.load(Ordering::Relaxed)).sum();
    let _ =
        writeln!(out, "user-space exit handling: {total} exits, mean {} ns", total_ns.checked_div(total).unwrap_or(0));
    for bucket in 0..HISTOGRAM_BUCKETS {
        let n: u64 = vcpus.iter().map(|v| v.handling_ns[bucket].load(Ordering::Relaxed)).sum();
        if n > 0 {
            let _ = writeln!(out, "  {:>10} ns .. {:>10} ns: {n}", 1u64 << bucket, (1u64 << (bucket + 1)) - 1);
        }
    }
    if !devices.is_empty() {
        out.push_str("device accesses\n");
        for (name, reads, writes) in devices {
            let _ = writeln!(out, "  {name:<32} {reads:>10} reads {writes:>10} writes");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn histogram_buckets_by_power_of_two() {
        let s = VcpuStats::default();
        s.record(ExitKind::IoOut, 0);
        s.record(ExitKind::IoOut, 1500);
        s.record(ExitKind::MmioRead, 2047);
        assert_eq!(s.exits(ExitKind::IoOut), 2);
        assert_eq!(s.total_exits(), 3);
        assert_eq!(s.handling_ns[0].load(Ordering::Relaxed), 1);
        assert_eq!(s.handling_ns[10].load(Ordering::Relaxed), 2);
        let text = report(&[Arc::new(s)], &[("pio COM1 0x3f8".into(), 4, 5)]);
        assert!(text.contains("io-out") && text.contains("mmio-read") && !text.contains("hlt"));
        assert!(text.contains("1024 ns ..       2047 ns: 2"), "{text}");
        assert!(text.contains("pio COM1 0x3f8"));
    }
}
