//! The INTx-style [`LineInterrupt`] shared by both transports: the status
//! bits and the line level must agree, also when the device worker raises an
//! interrupt while a vCPU acknowledges one (virtio 1.x 4.2.3.4: the line "is
//! asserted when at least one of the bits described in the description of
//! InterruptStatus is set"; 4.1.4.5: reading the ISR "resets it to 0 and
//! causes the device to de-assert the interrupt").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use devices::{IrqLine, RecordingIrqLine};

use crate::device::VirtioInterrupt;
use crate::transport::{LineInterrupt, INT_CONFIG, INT_VRING};

/// How long a paused `set_level` waits for the other thread. With the
/// interrupt state updated atomically, the other thread cannot get in and
/// the wait always runs out; without, it returns at once.
const WINDOW: Duration = Duration::from_millis(300);

/// An [`IrqLine`] that, once armed, pauses inside the next `set_level(hook_on)`
/// (after the interrupt status was updated, before the level is) so that a
/// test can run another access in that window.
pub(super) struct HookLine {
    level: AtomicBool,
    hook_on: bool,
    armed: AtomicBool,
    in_window: (Mutex<bool>, Condvar),
    released: (Mutex<bool>, Condvar),
}

impl HookLine {
    pub fn new(hook_on: bool) -> Arc<Self> {
        Arc::new(HookLine {
            level: AtomicBool::new(false),
            hook_on,
            armed: AtomicBool::new(false),
            in_window: (Mutex::new(false), Condvar::new()),
            released: (Mutex::new(false), Condvar::new()),
        })
    }

    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Blocks until an armed `set_level` is paused.
    pub fn wait_in_window(&self) {
        let (m, cv) = &self.in_window;
        let mut inside = m.lock().unwrap();
        while !*inside {
            inside = cv.wait(inside).unwrap();
        }
    }

    /// Lets the paused `set_level` go on.
    pub fn release(&self) {
        let (m, cv) = &self.released;
        *m.lock().unwrap() = true;
        cv.notify_all();
    }

    pub fn level(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }
}

impl IrqLine for HookLine {
    fn set_level(&self, asserted: bool) {
        if asserted == self.hook_on && self.armed.swap(false, Ordering::SeqCst) {
            {
                let (m, cv) = &self.in_window;
                *m.lock().unwrap() = true;
                cv.notify_all();
            }
            let (m, cv) = &self.released;
            let guard = m.lock().unwrap();
            let _ = cv.wait_timeout_while(guard, WINDOW, |released| !*released).unwrap();
        }
        self.level.store(asserted, Ordering::SeqCst);
    }
}

#[test]
fn raise_acknowledge_take() {
    let line = Arc::new(RecordingIrqLine::default());
    let intr = LineInterrupt::new(line.clone());
    assert_eq!(intr.status(), 0);
    assert_eq!(intr.take(), 0);
    assert!(!line.level());
    intr.notify_queue(3);
    assert_eq!(intr.status(), INT_VRING);
    assert!(line.level());
    intr.notify_config();
    assert_eq!(intr.status(), INT_VRING | INT_CONFIG);
    intr.acknowledge(INT_CONFIG);
    assert!(line.level());
    intr.acknowledge(INT_VRING);
    assert!(!line.level());
    intr.raise(INT_CONFIG);
    assert_eq!(intr.take(), INT_CONFIG);
    assert_eq!(intr.status(), 0);
    assert!(!line.level());
    assert_eq!(line.rising_edges(), 2);
}

#[test]
fn take_racing_with_raise_does_not_leave_the_line_stuck_high() {
    let line = HookLine::new(true);
    let intr = Arc::new(LineInterrupt::new(line.clone()));
    line.arm();
    let worker = {
        let intr = intr.clone();
        thread::spawn(move || intr.raise(INT_VRING))
    };
    line.wait_in_window();
    let vcpu = {
        let (intr, line) = (intr.clone(), line.clone());
        thread::spawn(move || {
            let bits = intr.take();
            line.release();
            bits
        })
    };
    assert_eq!(vcpu.join().unwrap(), INT_VRING);
    worker.join().unwrap();
    assert_eq!(line.level(), intr.status() != 0, "line {} with status {:#x}", line.level(), intr.status());
}

#[test]
fn acknowledge_racing_with_raise_does_not_lose_the_interrupt() {
    let line = HookLine::new(false);
    let intr = Arc::new(LineInterrupt::new(line.clone()));
    intr.raise(INT_VRING);
    line.arm();
    let vcpu = {
        let intr = intr.clone();
        thread::spawn(move || intr.acknowledge(INT_VRING))
    };
    line.wait_in_window();
    let worker = {
        let (intr, line) = (intr.clone(), line.clone());
        thread::spawn(move || {
            intr.raise(INT_VRING);
            line.release();
        })
    };
    worker.join().unwrap();
    vcpu.join().unwrap();
    assert_eq!(intr.status(), INT_VRING, "the new event is pending");
    assert!(line.level(), "and must assert the line");
}
