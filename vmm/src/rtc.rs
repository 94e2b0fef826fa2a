//! The CMOS RTC's interrupt (IRQ 8): the device model (`devices::rtc`) says
//! when its next periodic or update-ended interrupt is due; a host timer on a
//! small thread waits until then and asks the model to raise it.
//!
//! The thread sleeps on a timerfd and on an eventfd that the port wrapper
//! signals after each guest access to registers A, B or C (the ones that
//! change the schedule: rate, enables, and the read that acknowledges an
//! interrupt). Accesses to the clock and CMOS RAM do not wake it. With no
//! interrupt enabled the timer stays disarmed and the thread costs nothing.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::rtc::{Rtc, RTC_INDEX_PORT};
use devices::BusDevice;
use virtio::worker::{Worker, WorkerHandler};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::bus::Bus;
use crate::vm::VmError;

/// Registers 0x0A-0x0C: rate, enables, flags.
const SCHEDULE_REGISTERS: std::ops::RangeInclusive<u8> = 0x0a..=0x0c;
/// The shortest timer the thread arms: a late interrupt is better than a spin.
const MIN_DELAY: Duration = Duration::from_micros(50);

/// Ports 0x70-0x71 in front of the RTC: forwards every access and wakes the
/// timer thread after those that may change when the next interrupt is due.
struct RtcPorts {
    rtc: Arc<Mutex<Rtc>>,
    index: u8,
    reschedule: Arc<EventFd>,
}

impl RtcPorts {
    fn after_data_access(&self, offset: u64) {
        if offset == 1 && SCHEDULE_REGISTERS.contains(&self.index) {
            let _ = self.reschedule.write(1);
        }
    }
}

impl BusDevice for RtcPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.rtc.lock().unwrap_or_else(|e| e.into_inner()).read(offset, data);
        self.after_data_access(offset);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0, [v]) = (offset, data) {
            self.index = v & 0x7f;
        }
        self.rtc.lock().unwrap_or_else(|e| e.into_inner()).write(offset, data);
        self.after_data_access(offset);
    }
}

/// The timer thread's handler.
struct RtcTimer {
    rtc: Arc<Mutex<Rtc>>,
    timer: TimerFd,
    reschedule: Arc<EventFd>,
}

impl RtcTimer {
    fn tick(&mut self) {
        let _ = self.reschedule.read();
        let delay = {
            let mut rtc = self.rtc.lock().unwrap_or_else(|e| e.into_inner());
            rtc.poll_interrupt();
            rtc.time_to_next_interrupt()
        };
        // A zero duration disarms the timer: no interrupt enabled, or IRQ 8 is
        // up until the guest reads register C (which reschedules).
        let _ = self.timer.reset(delay.map_or(Duration::ZERO, |d| d.max(MIN_DELAY)), None);
    }
}

impl WorkerHandler for RtcTimer {
    fn start(&mut self) {
        self.tick();
    }
    fn ready(&mut self, token: u64, _events: vmm_sys_util::epoll::EventSet) {
        if token == 0 {
            let _ = self.timer.wait();
        }
        self.tick();
    }
}

/// Registers `rtc` (already wired to IRQ 8) on ports 0x70-0x71 and starts its
/// interrupt timer. Dropping the returned worker stops the thread.
pub fn add_rtc(pio: &Bus, rtc: Rtc) -> Result<Worker, VmError> {
    let io_err = VmError::RtcTimer;
    let rtc = Arc::new(Mutex::new(rtc));
    let reschedule = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(io_err)?);
    let ports = RtcPorts { rtc: rtc.clone(), index: 0, reschedule: reschedule.clone() };
    pio.insert(Arc::new(Mutex::new(ports)), u64::from(RTC_INDEX_PORT), 2, "RTC")?;
    let timer = TimerFd::new().map_err(|e| io_err(std::io::Error::from_raw_os_error(e.errno())))?;
    let fds = vec![
        (timer.as_raw_fd(), 0, vmm_sys_util::epoll::EventSet::IN),
        (reschedule.as_raw_fd(), 1, vmm_sys_util::epoll::EventSet::IN),
    ];
    Worker::spawn("rtc", fds, RtcTimer { rtc, timer, reschedule }).map_err(io_err)
}
