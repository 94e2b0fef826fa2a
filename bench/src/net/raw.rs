//! The raw baseline: the same frames through the same tap fd with plain `write()`
//! (guest-to-tap) and `read()` (tap-to-guest) from one thread, no device model. This
//! is what a VMM that did nothing but move bytes could reach on this tap.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use virtio::net::VNET_HDR_LEN;

use crate::device::{wait_readable, QUEUE_SIZE};
use crate::frames::{self, Expect, Kind};
use crate::meter::{Clock, Counts, Measurement, Window};

/// Frames between two looks at the clock.
const STRIDE: usize = 32;
/// Read buffer: the largest frame with its header, and some.
const READ_BUF: usize = 70 * 1024;

/// Writes frames of `kind` (with their virtio-net header) to the tap for `window`,
/// cycling through as many separate buffers as the device's queue has chains.
pub fn tx(fd: RawFd, kind: Kind, window: Window) -> Result<Measurement, String> {
    let bufs: Vec<Vec<u8>> = (0..QUEUE_SIZE).map(|_| frames::guest_tx_frame(kind)).collect();
    let len = kind.frame_len() as u64;
    let mut counts = Counts::default();
    let mut clock = Clock::start(window);
    let mut i = 0usize;
    loop {
        for _ in 0..STRIDE {
            let b = &bufs[i % bufs.len()];
            i += 1;
            // SAFETY: write(2) from a buffer we own, of its length.
            let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
            if n == b.len() as isize {
                counts.frames += 1;
                counts.bytes += len;
            } else if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    // Counted like the device counts a refused frame.
                    Some(libc::EAGAIN) | Some(libc::ENOBUFS) => counts.unexpected += 1,
                    _ => return Err(format!("write to the tap: {e}")),
                }
            } else {
                return Err(format!("short write to the tap: {n} of {} bytes", b.len()));
            }
        }
        if !clock.tick(counts)? {
            break;
        }
    }
    clock.finish()
}

/// Reads frames from the tap for `window`, checking each against `expect`.
pub fn rx(fd: RawFd, expect: Expect, window: Window) -> Result<Measurement, String> {
    let mut buf = vec![0u8; READ_BUF];
    let mut counts = Counts::default();
    let mut clock = Clock::start(window);
    loop {
        for _ in 0..STRIDE {
            // SAFETY: read(2) into a buffer we own, of its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    wait_readable(fd, Duration::from_millis(20))?;
                    break;
                }
                return Err(format!("read from the tap: {e}"));
            }
            let eth = (n as usize).saturating_sub(VNET_HDR_LEN);
            if expect.matches(&buf[..n as usize], eth) {
                counts.frames += 1;
                counts.bytes += eth as u64;
            } else {
                counts.unexpected += 1;
            }
        }
        if !clock.tick(counts)? {
            break;
        }
    }
    clock.finish()
}

/// Reads and discards everything queued in the tap; returns how many frames.
pub fn drain(fd: RawFd) -> Result<u64, String> {
    let mut buf = vec![0u8; READ_BUF];
    let mut n = 0;
    loop {
        // SAFETY: read(2) into a buffer we own, of its length.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(n);
            }
            return Err(format!("read from the tap: {e}"));
        }
        n += 1;
    }
}
