//! The CMOS RTC's interrupt (IRQ 8): the device model (`devices::rtc`) says
//! when its next periodic, alarm or update-ended interrupt is due; a host
//! timer thread ([`crate::timer`]) waits until then and asks the model to
//! raise it. Guest accesses to registers A-C, which can move that time, wake
//! the thread early; accesses to the clock and CMOS RAM do not. With no
//! interrupt enabled the timer stays disarmed and the thread sleeps.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::rtc::{Rtc, RTC_INDEX_PORT};
use virtio::worker::Worker;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::Bus;
use crate::timer::{spawn_timer, ReschedulingPorts};
use crate::vm::VmError;

/// The shortest timer the thread arms: a late interrupt is better than a spin.
const MIN_DELAY: Duration = Duration::from_micros(50);

/// Registers `rtc` (already wired to IRQ 8) on ports 0x70-0x71 and starts its
/// interrupt timer. Dropping the returned worker stops the thread.
pub fn add_rtc(pio: &Bus, rtc: Rtc) -> Result<Worker, VmError> {
    let rtc = Arc::new(Mutex::new(rtc));
    let kick = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::RtcTimer)?);
    let ports = ReschedulingPorts::new(rtc.clone(), kick.clone());
    pio.insert(Arc::new(Mutex::new(ports)), u64::from(RTC_INDEX_PORT), 2, "RTC")?;
    spawn_timer("rtc", kick, move || {
        let mut rtc = rtc.lock().unwrap_or_else(|e| e.into_inner());
        rtc.poll_interrupt();
        // None while IRQ 8 is up: the guest's read of register C reschedules.
        rtc.time_to_next_interrupt().map(|d| d.max(MIN_DELAY))
    })
    .map_err(VmError::RtcTimer)
}
