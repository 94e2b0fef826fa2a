//! A one-port device that lets a test guest end the VM with a status byte.
//!
//! Port 0xF4 is where QEMU's `isa-debug-exit` device sits in the usual
//! configuration (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`), so the
//! same probe guest runs unchanged on both VMMs. The exit status differs: QEMU
//! exits with `(v << 1) | 1` for a written value `v`, rvmm reports `v` itself
//! through [`GuestEvent::DebugExit`] and leaves the process exit code to the VMM.

use crate::bus::{BusDevice, GuestEvent, GuestEventSink};
use crate::ratelimit::LogLimiter;

/// The first I/O port of the debug exit device.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Its ports, 0xF4-0xF7, as QEMU's `iosize=0x04`: an `outl` to 0xF4 must fit.
pub const DEBUG_EXIT_PORT_COUNT: u64 = 4;

/// Sends [`GuestEvent::DebugExit`] when the guest writes to it.
pub struct DebugExit {
    events: GuestEventSink,
    bad_access: LogLimiter,
}

impl DebugExit {
    /// Creates the device, reporting exit requests to `events`.
    pub fn new(events: GuestEventSink) -> Self {
        Self { events, bad_access: LogLimiter::new() }
    }
}

impl BusDevice for DebugExit {
    /// Reads as all ones, like an unclaimed ISA port (and QEMU's device).
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    /// A write of any width to any of its ports exits with the first (low)
    /// byte, which is what `outb`, `outw` and `outl` of a status all agree on
    /// (QEMU's device, too, ignores the port and the width).
    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.first()) {
            (0..DEBUG_EXIT_PORT_COUNT, Some(&status)) => {
                log::info!("debug exit: guest wrote status {status:#04x}");
                (self.events)(GuestEvent::DebugExit(status));
            }
            _ => {
                if let Some(n) = self.bad_access.tick() {
                    log::warn!("debug exit: ignoring {}-byte write at offset {offset:#x} (#{n})", data.len());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn device() -> (DebugExit, Arc<Mutex<Vec<GuestEvent>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink_events = events.clone();
        let sink: GuestEventSink = Arc::new(move |e| sink_events.lock().unwrap().push(e));
        (DebugExit::new(sink), events)
    }

    #[test]
    fn writes_of_any_width_exit_with_first_byte() {
        let (mut dev, events) = device();
        dev.write(0, &[0x00]);
        dev.write(0, &[0x31, 0x00]);
        dev.write(0, &[0xfe, 0x01, 0x02, 0x03]);
        dev.write(0, &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(
            *events.lock().unwrap(),
            vec![
                GuestEvent::DebugExit(0x00),
                GuestEvent::DebugExit(0x31),
                GuestEvent::DebugExit(0xfe),
                GuestEvent::DebugExit(0x88),
            ]
        );
    }

    #[test]
    fn reads_return_all_ones_and_bad_writes_are_ignored() {
        let (mut dev, events) = device();
        for width in [0usize, 1, 2, 4, 8] {
            let mut buf = vec![0u8; width];
            dev.read(0, &mut buf);
            assert!(buf.iter().all(|&b| b == 0xff));
        }
        dev.write(0, &[]);
        dev.write(4, &[1]);
        dev.write(u64::MAX, &[1, 2]);
        assert!(events.lock().unwrap().is_empty());
        assert_eq!(DEBUG_EXIT_PORT, 0xf4);
    }

    #[test]
    fn every_port_of_the_four_exits() {
        let (mut dev, events) = device();
        dev.write(1, &[7]);
        dev.write(3, &[9]);
        assert_eq!(*events.lock().unwrap(), vec![GuestEvent::DebugExit(7), GuestEvent::DebugExit(9)]);
    }
}
