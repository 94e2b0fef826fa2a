//! The CMOS RTC's interrupt (IRQ 8): the device model (`devices::rtc`) says
//! when its next periodic, alarm or update-ended interrupt is due; a host
//! timer thread ([`crate::timer`]) waits until then and asks the model to
//! raise it. Guest accesses to registers A-C, which can move that time, wake
//! the thread early; accesses to the clock and CMOS RAM do not. With no
//! interrupt enabled the timer stays disarmed and the thread sleeps.

use std::sync::{Arc, Mutex};

use devices::rtc::{Rtc, RTC_INDEX_PORT};
use virtio::worker::Worker;

use crate::bus::Bus;
use crate::timer::add_timed_device;
use crate::vm::VmError;

/// Registers `rtc` (already wired to IRQ 8) on ports 0x70-0x71 and starts its
/// interrupt timer. Dropping the returned worker stops the thread.
pub fn add_rtc(pio: &Bus, rtc: Rtc) -> Result<Worker, VmError> {
    // While IRQ 8 is up nothing new is armed: the guest's read of register C reschedules.
    Ok(add_timed_device(pio, Arc::new(Mutex::new(rtc)), u64::from(RTC_INDEX_PORT), 2, "RTC")?.timer)
}
