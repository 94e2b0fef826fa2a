//! Pausing and resuming the vCPUs: the `Paused` state of the vCPU life cycle
//! (book chapter 1.1).
//!
//! One [`PauseGate`] per VM is shared by its vCPU threads. [`PauseControl::pause`]
//! raises the gate and kicks every vCPU out of KVM_RUN. Each vCPU notices the gate
//! at the top of its run loop, reports `Paused`, and sleeps on a condition
//! variable until [`PauseControl::resume`] lowers the gate or the VM stops. `pause`
//! returns only once every vCPU has stopped running guest code, so a paused VM
//! executes no guest instruction. Device threads keep running: they finish the
//! I/O already in flight, and interrupts they raise wait in KVM until the vCPUs
//! run again.
//!
//! The guest's kvmclock is stopped too: its value is saved at the pause
//! (KVM_GET_CLOCK) and set again at the resume (KVM_SET_CLOCK), as QEMU and
//! Cloud Hypervisor do, so that the guest's monotonic time does not jump by
//! the length of the pause. (The TSC itself, and the RTC, keep host time.)

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_clock_data;
use kvm_ioctls::VmFd;

use super::VcpuState;

/// Whether the vCPUs of a VM should be paused.
#[derive(Debug, Default)]
pub struct PauseGate {
    /// Read by every vCPU at every turn of its loop: an atomic, not the lock.
    requested: AtomicBool,
    paused: Mutex<bool>,
    changed: Condvar,
}

impl PauseGate {
    /// Whether a pause is requested (cheap; checked once per exit).
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    fn set(&self, paused: bool) {
        let mut p = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        *p = paused;
        self.requested.store(paused, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Blocks the calling vCPU thread while the gate is up and `stop` is not set.
    pub fn wait(&self, stop: &AtomicBool) {
        let mut p = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        while *p && !stop.load(Ordering::SeqCst) {
            p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Wakes the waiting vCPUs so that they look at their stop flag.
    pub fn wake(&self) {
        let _p = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        self.changed.notify_all();
    }
}

/// Why a pause did not complete.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PauseError {
    /// Some vCPU was still running guest code when the wait ended. The pause
    /// stays requested, and that vCPU pauses at its next exit.
    #[error("vCPU {0} did not pause within {1:?}")]
    Timeout(u8, Duration),
}

/// One vCPU as [`PauseControl`] sees it: its id, the cell its thread writes
/// its [`VcpuState`] to, and a function that kicks it out of KVM_RUN.
pub type PausableVcpu = (u8, Arc<AtomicU8>, Box<dyn Fn() + Send + Sync>);

/// The VMM's handle on the pause state of all vCPUs.
pub struct PauseControl {
    gate: Arc<PauseGate>,
    vcpus: Vec<PausableVcpu>,
    /// The VM whose kvmclock stops while paused (none in unit tests).
    vm: Option<Arc<VmFd>>,
    /// The kvmclock as the pause found it.
    saved_clock: Mutex<Option<kvm_clock_data>>,
}

impl PauseControl {
    /// Control over the vCPUs given as (id, state, kicker), which share `gate`.
    pub fn new(gate: Arc<PauseGate>, vcpus: Vec<PausableVcpu>) -> Self {
        PauseControl { gate, vcpus, vm: None, saved_clock: Mutex::new(None) }
    }

    /// Also stops `vm`'s kvmclock while paused.
    pub fn with_clock(mut self, vm: Arc<VmFd>) -> Self {
        self.vm = Some(vm);
        self
    }

    /// Whether a pause is in force.
    pub fn is_paused(&self) -> bool {
        self.gate.requested()
    }

    /// Pauses every vCPU and waits up to `timeout` until none runs guest code.
    /// A vCPU that already stopped counts as paused. Pausing a paused VM
    /// succeeds at once.
    pub fn pause(&self, timeout: Duration) -> Result<(), PauseError> {
        self.gate.set(true);
        let deadline = Instant::now() + timeout;
        for (id, state, kick) in &self.vcpus {
            loop {
                let s = VcpuState::from_u8(state.load(Ordering::SeqCst));
                if matches!(s, VcpuState::Paused | VcpuState::Stopped) {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(PauseError::Timeout(*id, timeout));
                }
                // A kick can land just before the vCPU enters KVM_RUN: it then
                // leaves at once, but repeat it while waiting anyway.
                kick();
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let mut saved = self.saved_clock.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(vm), None) = (&self.vm, saved.as_ref()) {
            match vm.get_clock() {
                Ok(clock) => *saved = Some(clock),
                Err(e) => log::warn!("pause: cannot read the guest clock (KVM_GET_CLOCK): {e}"),
            }
        }
        Ok(())
    }

    /// Lets the vCPUs run again, with the guest clock where the pause left it.
    pub fn resume(&self) {
        let saved = self.saved_clock.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let (Some(vm), Some(clock)) = (&self.vm, saved) {
            // Flags 0: set kvmclock to this value now (not to a host-realtime point).
            let clock = kvm_clock_data { clock: clock.clock, ..Default::default() };
            if let Err(e) = vm.set_clock(&clock) {
                log::warn!("resume: cannot set the guest clock (KVM_SET_CLOCK): {e}");
            }
        }
        self.gate.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake vCPU thread that runs the same gate protocol as `Vcpu::run`.
    fn fake_vcpu(gate: Arc<PauseGate>, stop: Arc<AtomicBool>, state: Arc<AtomicU8>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            state.store(VcpuState::Running as u8, Ordering::SeqCst);
            while !stop.load(Ordering::SeqCst) {
                if gate.requested() {
                    state.store(VcpuState::Paused as u8, Ordering::SeqCst);
                    gate.wait(&stop);
                    state.store(VcpuState::Running as u8, Ordering::SeqCst);
                    continue;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            state.store(VcpuState::Stopped as u8, Ordering::SeqCst);
        })
    }

    #[test]
    fn pause_waits_for_every_vcpu_and_resume_lets_them_go() {
        let gate = Arc::new(PauseGate::default());
        let stop = Arc::new(AtomicBool::new(false));
        let states: Vec<Arc<AtomicU8>> = (0..2).map(|_| Arc::new(AtomicU8::new(0))).collect();
        let threads: Vec<_> = states.iter().map(|s| fake_vcpu(gate.clone(), stop.clone(), s.clone())).collect();
        let control = PauseControl::new(
            gate.clone(),
            states.iter().enumerate().map(|(i, s)| (i as u8, s.clone(), Box::new(|| {}) as Box<_>)).collect(),
        );
        control.pause(Duration::from_secs(5)).unwrap();
        assert!(control.is_paused());
        for s in &states {
            assert_eq!(VcpuState::from_u8(s.load(Ordering::SeqCst)), VcpuState::Paused);
        }
        // Again: already paused.
        control.pause(Duration::from_secs(5)).unwrap();
        control.resume();
        assert!(!control.is_paused());
        let deadline = Instant::now() + Duration::from_secs(5);
        while states.iter().any(|s| VcpuState::from_u8(s.load(Ordering::SeqCst)) != VcpuState::Running) {
            assert!(Instant::now() < deadline, "vCPUs did not resume");
            std::thread::sleep(Duration::from_millis(1));
        }
        // A stop wakes paused vCPUs.
        control.pause(Duration::from_secs(5)).unwrap();
        stop.store(true, Ordering::SeqCst);
        gate.wake();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_vcpu_that_never_pauses_times_out() {
        let gate = Arc::new(PauseGate::default());
        let running = Arc::new(AtomicU8::new(VcpuState::Running as u8));
        let control = PauseControl::new(gate, vec![(3, running, Box::new(|| {}))]);
        let e = control.pause(Duration::from_millis(20)).unwrap_err();
        assert_eq!(e, PauseError::Timeout(3, Duration::from_millis(20)));
        assert!(control.is_paused(), "the request stays");
    }
}
