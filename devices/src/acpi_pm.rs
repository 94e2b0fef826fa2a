//! The ACPI sleep control register of a hardware-reduced ACPI platform
//! (ACPI 6.x section 4.8.3.7): the guest powers off by writing
//! `SLP_TYP << 2 | SLP_EN` here, with SLP_TYP taken from the DSDT's `\_S5_`.

use crate::bus::{BusDevice, GuestEvent, GuestEventSink};

/// SLP_EN: bit 5 of the sleep control register.
const SLP_EN: u8 = 1 << 5;
/// The SLP_TYP value rvmm's DSDT gives for S5 (soft off).
pub const S5_SLEEP_TYPE: u8 = 5;

/// The sleep control (offset 0) and sleep status (offset 1) registers.
pub struct AcpiSleepControl {
    sink: GuestEventSink,
}

impl AcpiSleepControl {
    /// A register pair that reports a power-off to `sink`.
    pub fn new(sink: GuestEventSink) -> Self {
        AcpiSleepControl { sink }
    }
}

impl BusDevice for AcpiSleepControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Nothing is ever pending: no wake status, no sleep in progress.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if offset == 0 && value & SLP_EN != 0 {
            let sleep_type = (value >> 2) & 0x7;
            if sleep_type == S5_SLEEP_TYPE {
                (self.sink)(GuestEvent::PowerOff);
            } else {
                log::info!("ACPI: guest asked for unsupported sleep type {sleep_type}; ignored");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn s5_with_slp_en_powers_off() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let mut dev = AcpiSleepControl::new(Arc::new(move |e| seen.lock().unwrap().push(e)));
        dev.write(0, &[S5_SLEEP_TYPE << 2]); // no SLP_EN
        dev.write(1, &[0xff]);
        dev.write(0, &[]);
        assert!(events.lock().unwrap().is_empty());
        dev.write(0, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
        assert_eq!(*events.lock().unwrap(), vec![GuestEvent::PowerOff]);
        let mut b = [0xffu8; 1];
        dev.read(0, &mut b);
        assert_eq!(b, [0]);
    }
}
