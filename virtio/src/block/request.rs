//! Parsing a virtio-blk request out of a descriptor chain (virtio 1.x 5.2.6).
//!
//! A request is a device-readable header (`type`, `reserved`, `sector`), data,
//! and a device-writable status byte at the very end. Drivers may split those
//! across descriptors any way they like, so the chain is treated as two byte
//! streams: everything readable, then everything writable.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::queue::DescriptorChain;

/// Request types (virtio 1.x 5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Flush the write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Get the device ID string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Discard sectors.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Write zeroes to sectors.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error (also: a malformed request or a write to a read-only disk).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: request type not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Sector size the protocol counts in, whatever the disk's block size.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the device ID string (GET_ID).
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
/// Size of one discard / write-zeroes segment.
pub const DISCARD_SEGMENT_SIZE: usize = 16;
/// Write-zeroes flag: the device may unmap (deallocate) the range.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// A contiguous piece of guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// Why a chain is not a valid request. The device answers it with IOERR when it
/// can still find the status byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No device-writable byte for the status.
    #[error("request has no device-writable status byte")]
    NoStatus,
    /// Fewer than 16 readable bytes.
    #[error("request header is {0} bytes, 16 needed")]
    ShortHeader(u32),
    /// A guest address in the chain is not in guest memory.
    #[error("guest address {0:#x} is outside guest memory")]
    BadAddress(u64),
}

/// A parsed request: header fields and where its data and status live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// VIRTIO_BLK_T_*.
    pub request_type: u32,
    /// First sector.
    pub sector: u64,
    /// Readable bytes after the header (OUT data, discard segments).
    pub data_out: Vec<Segment>,
    /// Writable bytes before the status byte (IN data, ID string).
    pub data_in: Vec<Segment>,
    /// Where the status byte goes.
    pub status_addr: u64,
    /// The chain's head index, for the used ring.
    pub head_index: u16,
}

impl Request {
    /// Total bytes of `data_out`.
    pub fn out_len(&self) -> u64 {
        self.data_out.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Total bytes of `data_in`.
    pub fn in_len(&self) -> u64 {
        self.data_in.iter().map(|s| u64::from(s.len)).sum()
    }
}

/// Splits the first `n` bytes off a list of segments.
fn split_front(segments: &mut Vec<Segment>, mut n: u64) -> Vec<Segment> {
    let mut front = Vec::new();
    while n > 0 && !segments.is_empty() {
        let first = segments[0];
        if u64::from(first.len) <= n {
            n -= u64::from(first.len);
            front.push(first);
            segments.remove(0);
        } else {
            front.push(Segment { addr: first.addr, len: n as u32 });
            segments[0] = Segment { addr: first.addr + n, len: first.len - n as u32 };
            n = 0;
        }
    }
    front
}

/// Parses `chain` as a block request. The queue has already checked that every
/// descriptor lies in guest memory and that readable ones come first.
pub fn parse(mem: &GuestMemoryMmap, chain: &DescriptorChain) -> Result<Request, RequestError> {
    let mut readable: Vec<Segment> = Vec::new();
    let mut writable: Vec<Segment> = Vec::new();
    for d in &chain.descriptors {
        if d.len == 0 {
            continue;
        }
        let seg = Segment { addr: d.addr, len: d.len };
        if d.writable {
            writable.push(seg)
        } else {
            readable.push(seg)
        }
    }
    // The status byte is the last writable byte.
    let last = writable.last_mut().ok_or(RequestError::NoStatus)?;
    let status_addr = last.addr + u64::from(last.len) - 1;
    last.len -= 1;
    if last.len == 0 {
        writable.pop();
    }

    let readable_len: u64 = readable.iter().map(|s| u64::from(s.len)).sum();
    if readable_len < 16 {
        return Err(RequestError::ShortHeader(readable_len as u32));
    }
    let header = split_front(&mut readable, 16);
    let mut raw = [0u8; 16];
    let mut at = 0;
    for seg in header {
        let dst = &mut raw[at..at + seg.len as usize];
        mem.read_slice(dst, GuestAddress(seg.addr)).map_err(|_| RequestError::BadAddress(seg.addr))?;
        at += seg.len as usize;
    }
    let request_type = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let sector = u64::from_le_bytes([raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15]]);
    Ok(Request {
        request_type,
        sector,
        data_out: readable,
        data_in: writable,
        status_addr,
        head_index: chain.head_index,
    })
}

/// Reads all bytes of `segments` (bounded by the caller's choice of segments).
pub fn gather(mem: &GuestMemoryMmap, segments: &[Segment]) -> Result<Vec<u8>, RequestError> {
    let mut out = Vec::new();
    for s in segments {
        let start = out.len();
        out.resize(start + s.len as usize, 0);
        mem.read_slice(&mut out[start..], GuestAddress(s.addr)).map_err(|_| RequestError::BadAddress(s.addr))?;
    }
    Ok(out)
}

/// Writes `bytes` into `segments` in order; returns how many bytes were written.
pub fn scatter(mem: &GuestMemoryMmap, segments: &[Segment], bytes: &[u8]) -> Result<u32, RequestError> {
    let mut done = 0usize;
    for s in segments {
        if done == bytes.len() {
            break;
        }
        let n = (s.len as usize).min(bytes.len() - done);
        mem.write_slice(&bytes[done..done + n], GuestAddress(s.addr)).map_err(|_| RequestError::BadAddress(s.addr))?;
        done += n;
    }
    Ok(done as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_front_cuts_inside_a_segment() {
        let mut segs = vec![Segment { addr: 0x1000, len: 10 }, Segment { addr: 0x2000, len: 10 }];
        let front = split_front(&mut segs, 16);
        assert_eq!(front, vec![Segment { addr: 0x1000, len: 10 }, Segment { addr: 0x2000, len: 6 }]);
        assert_eq!(segs, vec![Segment { addr: 0x2006, len: 4 }]);
    }
}
