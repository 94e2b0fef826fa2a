//! Host timers for device models that raise interrupts on their own schedule
//! (the split irqchip's 8254 PIT, the CMOS RTC, the 16550A's character timeout).
//!
//! Such a model answers two questions and nothing else: "has a guest access
//! just moved your next deadline?" ([`Rescheduling`]) and, from the timer
//! thread, "raise what is due and say when to call you next". The pieces here
//! do the rest: [`ReschedulingPorts`] puts the model on a bus and kicks the
//! thread after an access that moved the deadline, and [`spawn_timer`] runs
//! the thread, sleeping on a timerfd and on that kick.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::BusDevice;
use virtio::worker::{Worker, WorkerHandler};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

/// A device model whose guest accesses can move its next timer deadline.
pub trait Rescheduling: BusDevice {
    /// Whether an access since the last call moved the deadline (clears the flag).
    fn take_rescheduled(&mut self) -> bool;
}

/// A device model with its own interrupt deadline, woken by a timer thread
/// ([`add_timed_device`]).
pub trait TimedDevice: Rescheduling + Send + 'static {
    /// Raises whatever interrupt is due now.
    fn poll_interrupt(&mut self);
    /// How long until the next interrupt is due (`None`: nothing armed).
    fn time_to_next_interrupt(&self) -> Option<Duration>;
}

impl Rescheduling for devices::rtc::Rtc {
    fn take_rescheduled(&mut self) -> bool {
        devices::rtc::Rtc::take_rescheduled(self)
    }
}

impl TimedDevice for devices::rtc::Rtc {
    fn poll_interrupt(&mut self) {
        devices::rtc::Rtc::poll_interrupt(self);
    }
    fn time_to_next_interrupt(&self) -> Option<Duration> {
        devices::rtc::Rtc::time_to_next_interrupt(self)
    }
}

impl Rescheduling for devices::serial::Serial {
    fn take_rescheduled(&mut self) -> bool {
        devices::serial::Serial::take_rescheduled(self)
    }
}

impl TimedDevice for devices::serial::Serial {
    fn poll_interrupt(&mut self) {
        devices::serial::Serial::poll_interrupt(self);
    }
    fn time_to_next_interrupt(&self) -> Option<Duration> {
        devices::serial::Serial::time_to_next_interrupt(self)
    }
}

/// The shortest timer the thread arms: a late interrupt is better than a spin.
const MIN_DELAY: Duration = Duration::from_micros(50);

/// A [`TimedDevice`] on a bus with its timer thread running.
pub struct TimedPorts {
    /// The timer thread; dropping it stops the thread.
    pub timer: Worker,
    /// Wakes the thread: for changes that do not come through the bus (e.g.
    /// host input), after the device's `take_rescheduled` says so.
    pub kick: Arc<EventFd>,
}

/// Registers `device` on `bus` at `base..base + len` (named `name`) so that
/// accesses that move its deadline wake its timer thread, and starts that
/// thread, which raises the device's interrupts when they fall due.
pub fn add_timed_device<D: TimedDevice>(
    bus: &crate::bus::Bus,
    device: Arc<Mutex<D>>,
    base: u64,
    len: u64,
    name: &str,
) -> Result<TimedPorts, crate::vm::VmError> {
    use crate::vm::VmError;
    let timer_error = |source| VmError::DeviceTimer { device: name.to_string(), source };
    let kick = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(timer_error)?);
    let ports = ReschedulingPorts::new(device.clone(), kick.clone());
    bus.insert(Arc::new(Mutex::new(ports)), base, len, name)?;
    let timer = spawn_timer(&name.to_ascii_lowercase(), kick.clone(), move || {
        let mut device = device.lock().unwrap_or_else(|e| e.into_inner());
        device.poll_interrupt();
        device.time_to_next_interrupt().map(|d| d.max(MIN_DELAY))
    })
    .map_err(timer_error)?;
    Ok(TimedPorts { timer, kick })
}

/// A device on the bus that wakes its timer thread (through `kick`) after
/// every access that moved the device's deadline.
pub struct ReschedulingPorts<D: Rescheduling> {
    device: Arc<Mutex<D>>,
    kick: Arc<EventFd>,
}

impl<D: Rescheduling> ReschedulingPorts<D> {
    /// Ports for `device`, kicking `kick`.
    pub fn new(device: Arc<Mutex<D>>, kick: Arc<EventFd>) -> Self {
        ReschedulingPorts { device, kick }
    }

    fn access(&self, f: impl FnOnce(&mut D)) {
        let moved = {
            let mut device = self.device.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut device);
            device.take_rescheduled()
        };
        if moved {
            let _ = self.kick.write(1);
        }
    }
}

impl<D: Rescheduling> BusDevice for ReschedulingPorts<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.access(|d| d.read(offset, data));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.access(|d| d.write(offset, data));
    }
}

/// The timer thread: calls `tick` at start, whenever the timer expires and
/// whenever `kick` is written; `tick` raises what is due and returns how long
/// until it wants to run again (`None`: not until the next kick).
struct TimerThread<F> {
    timer: TimerFd,
    kick: Arc<EventFd>,
    tick: F,
}

const TOKEN_TIMER: u64 = 0;
const TOKEN_KICK: u64 = 1;

impl<F: FnMut() -> Option<Duration> + Send + 'static> TimerThread<F> {
    fn run_tick(&mut self) {
        let _ = self.kick.read();
        // A zero duration disarms the timer; a due deadline still needs a
        // non-zero one.
        let delay = (self.tick)().map_or(Duration::ZERO, |d| d.max(Duration::from_nanos(1)));
        let _ = self.timer.reset(delay, None);
    }
}

impl<F: FnMut() -> Option<Duration> + Send + 'static> WorkerHandler for TimerThread<F> {
    fn start(&mut self) {
        self.run_tick();
    }
    fn ready(&mut self, token: u64, _events: EventSet) {
        if token == TOKEN_TIMER {
            let _ = self.timer.wait();
        }
        self.run_tick();
    }
}

/// Starts a timer thread named `name` for `tick`, woken early by `kick`.
pub fn spawn_timer(
    name: &str,
    kick: Arc<EventFd>,
    tick: impl FnMut() -> Option<Duration> + Send + 'static,
) -> std::io::Result<Worker> {
    let timer = TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    let fds = vec![(timer.as_raw_fd(), TOKEN_TIMER, EventSet::IN), (kick.as_raw_fd(), TOKEN_KICK, EventSet::IN)];
    Worker::spawn(name, fds, TimerThread { timer, kick, tick })
}
