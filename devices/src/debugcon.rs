//! The debug console port (QEMU's `isa-debugcon`), where firmware prints its log.
//!
//! SeaBIOS, OVMF and other QEMU-aware firmware write their debug messages one
//! byte at a time to an I/O port, 0x402 by default. Before using it, SeaBIOS
//! reads the port back (`qemu_debug_preinit`): the value 0xE9 (the port number
//! Bochs used) means a debug console is present; anything else makes it stop
//! writing there after its banner. So the port reads as
//! [`DEBUGCON_READBACK`], and every byte written goes to a [`DebugconOutput`].

use std::io::Write;

use crate::bus::BusDevice;
use crate::ratelimit::LogLimiter;

/// The port QEMU's `pc` machine and SeaBIOS use for the debug console.
pub const DEBUGCON_PORT: u16 = 0x402;
/// What a read of the port returns to say "a debug console is here".
pub const DEBUGCON_READBACK: u8 = 0xe9;
/// Longest line kept for the log; longer lines are split.
pub const MAX_LOG_LINE: usize = 1024;

/// Where the bytes written to the port go.
pub enum DebugconOutput {
    /// Line by line to the `log` crate at info level, target `firmware`.
    Log,
    /// Raw bytes to a writer (a file), flushed at each newline.
    Writer(Box<dyn Write + Send>),
    /// Nowhere. The port then reads as all ones, like an empty ISA port, so
    /// firmware sees no debug console and does not spend an exit on every byte
    /// of its log.
    Discard,
}

/// The debug console device.
pub struct DebugCon {
    output: DebugconOutput,
    line: Vec<u8>,
    write_failed: LogLimiter,
}

impl DebugCon {
    /// A debug console sending its bytes to `output`.
    pub fn new(output: DebugconOutput) -> Self {
        DebugCon { output, line: Vec::new(), write_failed: LogLimiter::new() }
    }

    fn log_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        log::info!(target: "firmware", "{}", text.trim_end_matches(['\r', '\n']));
        self.line.clear();
    }

    fn put(&mut self, byte: u8) {
        match &mut self.output {
            DebugconOutput::Discard => {}
            DebugconOutput::Log => {
                if byte == b'\n' || self.line.len() >= MAX_LOG_LINE {
                    self.log_line();
                    if byte == b'\n' {
                        return;
                    }
                }
                self.line.push(byte);
            }
            DebugconOutput::Writer(w) => {
                let result = w.write_all(&[byte]).and_then(|()| if byte == b'\n' { w.flush() } else { Ok(()) });
                if let Err(e) = result {
                    if let Some(n) = self.write_failed.tick() {
                        log::warn!("debug console: cannot write its output: {e} (#{n})");
                    }
                }
            }
        }
    }
}

impl Drop for DebugCon {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.log_line();
        }
        if let DebugconOutput::Writer(w) = &mut self.output {
            let _ = w.flush();
        }
    }
}

impl BusDevice for DebugCon {
    /// Every width reads [`DEBUGCON_READBACK`] in each byte, as QEMU's device does
    /// (all ones with [`DebugconOutput::Discard`]).
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let value = if matches!(self.output, DebugconOutput::Discard) { 0xff } else { DEBUGCON_READBACK };
        data.fill(value);
    }

    /// `outb` writes one byte; wider writes are taken byte by byte, low first.
    fn write(&mut self, _offset: u64, data: &[u8]) {
        for &b in data {
            self.put(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_discarding_console_reads_as_absent() {
        let mut dev = DebugCon::new(DebugconOutput::Discard);
        let mut b = [0u8; 1];
        dev.read(0, &mut b);
        assert_eq!(b, [0xff]);
    }

    #[test]
    fn reads_say_a_debug_console_is_present() {
        let mut dev = DebugCon::new(DebugconOutput::Log);
        let mut b = [0u8; 1];
        dev.read(0, &mut b);
        assert_eq!(b, [0xe9]);
        let mut w = [0u8; 2];
        dev.read(0, &mut w);
        assert_eq!(w, [0xe9, 0xe9]);
    }

    #[test]
    fn bytes_reach_the_writer_in_order() {
        let out = Shared::default();
        let mut dev = DebugCon::new(DebugconOutput::Writer(Box::new(out.clone())));
        for b in b"SeaBIOS\n" {
            dev.write(0, &[*b]);
        }
        dev.write(0, b"ab");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"SeaBIOS\nab");
    }

    #[test]
    fn log_output_splits_lines_and_caps_their_length() {
        let mut dev = DebugCon::new(DebugconOutput::Log);
        for _ in 0..MAX_LOG_LINE + 10 {
            dev.write(0, b"x");
        }
        assert_eq!(dev.line.len(), 10, "a full line was logged and a new one started");
        dev.write(0, b"\r\n");
        assert!(dev.line.is_empty());
    }
}
