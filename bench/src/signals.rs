//! The interrupt and reset sink the device benchmarks hand to a device worker:
//! each queue interrupt is counted and written to an eventfd, as an irqfd would
//! be, so the worker pays what it pays in a VM; reset requests are counted.

use std::sync::atomic::{AtomicU64, Ordering};

use virtio::device::{DeviceStatusSink, VirtioInterrupt};
use vmm_sys_util::eventfd::EventFd;

/// A device's interrupts (an eventfd write each, counted) and reset requests.
pub struct Signals {
    /// Written once per queue interrupt.
    pub irq: EventFd,
    /// Queue interrupts so far.
    pub interrupts: AtomicU64,
    /// NEEDS_RESET requests so far.
    pub resets: AtomicU64,
}

impl Signals {
    /// A sink writing `irq`.
    pub fn new(irq: EventFd) -> Self {
        Signals { irq, interrupts: AtomicU64::new(0), resets: AtomicU64::new(0) }
    }

    /// Whether the device asked for a reset.
    pub fn reset_requested(&self) -> bool {
        self.resets.load(Ordering::SeqCst) != 0
    }
}

impl VirtioInterrupt for Signals {
    fn notify_queue(&self, _queue: u16) {
        self.interrupts.fetch_add(1, Ordering::Relaxed);
        // The eventfd counter cannot overflow in a benchmark's life.
        let _ = self.irq.write(1);
    }
    fn notify_config(&self) {}
}

impl DeviceStatusSink for Signals {
    fn needs_reset(&self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
    }
}
