//! Descriptor chains as handed to devices: the validated, flattened list of
//! guest buffers of one request, and bounds-checked access to its readable
//! (driver to device) and writable (device to driver) parts.

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::QueueError;

/// Default cap of [`DescriptorChain::read_all`]: 1 MiB.
///
/// Requests bigger than this (block writes, say) are better streamed with a
/// [`ChainReader`] than copied in one piece.
pub const READ_ALL_CAP: usize = 1 << 20;

/// One guest buffer of a descriptor chain.
///
/// Produced by [`Queue::pop`](super::Queue::pop) only after the whole range
/// `[addr, addr + len)` was checked to lie in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer in bytes (zero-length buffers are allowed and
    /// simply hold nothing).
    pub len: u32,
    /// `true` if the buffer is device-writable (`VIRTQ_DESC_F_WRITE`),
    /// `false` if it is device-readable.
    pub writable: bool,
}

/// One request of the driver: a chain of buffers, device-readable ones first,
/// then device-writable ones (spec 2.7.4.2).
///
/// Indirect tables are flattened in order into `descriptors`, so a device
/// never has to know whether the driver used `VIRTQ_DESC_F_INDIRECT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorChain {
    /// Index of the chain's first descriptor in the descriptor table: the
    /// value to hand back to [`Queue::add_used`](super::Queue::add_used).
    pub head_index: u16,
    /// The buffers, in chain order.
    pub descriptors: Vec<Descriptor>,
}

impl DescriptorChain {
    /// The device-readable buffers, in order.
    pub fn readable(&self) -> impl Iterator<Item = &Descriptor> {
        self.descriptors.iter().filter(|d| !d.writable)
    }

    /// The device-writable buffers, in order.
    pub fn writable(&self) -> impl Iterator<Item = &Descriptor> {
        self.descriptors.iter().filter(|d| d.writable)
    }

    /// Total length in bytes of the device-readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable().map(|d| u64::from(d.len)).sum()
    }

    /// Total length in bytes of the device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable().map(|d| u64::from(d.len)).sum()
    }

    /// Total length in bytes of all buffers of the chain.
    pub fn total_len(&self) -> u64 {
        self.descriptors.iter().map(|d| u64::from(d.len)).sum()
    }

    /// Copies the whole readable part of the chain out of guest memory.
    ///
    /// Fails with [`QueueError::ReadTooLarge`] if it is longer than
    /// [`READ_ALL_CAP`]; see [`read_all_capped`](Self::read_all_capped).
    pub fn read_all(&self, mem: &GuestMemoryMmap) -> Result<Vec<u8>, QueueError> {
        self.read_all_capped(mem, READ_ALL_CAP)
    }

    /// Copies the whole readable part of the chain out of guest memory,
    /// failing with [`QueueError::ReadTooLarge`] if it is longer than `cap`
    /// bytes (nothing is allocated in that case).
    pub fn read_all_capped(&self, mem: &GuestMemoryMmap, cap: usize) -> Result<Vec<u8>, QueueError> {
        let len = self.readable_len();
        if len > cap as u64 {
            return Err(QueueError::ReadTooLarge { head: self.head_index, len, cap });
        }
        let mut buf = vec![0u8; len as usize];
        self.read_at(mem, 0, &mut buf)?;
        Ok(buf)
    }

    /// Fills `buf` from the readable part of the chain, starting `offset`
    /// bytes into it (the readable buffers are seen as one byte stream).
    ///
    /// Fails with [`QueueError::ReadOutOfBounds`], without reading anything,
    /// if `[offset, offset + buf.len())` is not inside the readable part.
    pub fn read_at(&self, mem: &GuestMemoryMmap, offset: u64, buf: &mut [u8]) -> Result<(), QueueError> {
        let available = self.readable_len();
        if !fits(offset, buf.len(), available) {
            return Err(QueueError::ReadOutOfBounds { head: self.head_index, offset, len: buf.len(), available });
        }
        for_each_piece(self.readable(), offset, buf.len(), |addr, range| {
            mem.read_slice(&mut buf[range], addr).map_err(|source| QueueError::Memory {
                what: "readable buffer",
                addr: addr.0,
                source,
            })
        })
    }

    /// Writes `data` into the writable part of the chain, starting `offset`
    /// bytes into it (the writable buffers are seen as one byte stream).
    ///
    /// Fails with [`QueueError::WriteOutOfBounds`], without writing anything,
    /// if `[offset, offset + data.len())` is not inside the writable part.
    pub fn write_at(&self, mem: &GuestMemoryMmap, offset: u64, data: &[u8]) -> Result<(), QueueError> {
        let available = self.writable_len();
        if !fits(offset, data.len(), available) {
            return Err(QueueError::WriteOutOfBounds { head: self.head_index, offset, len: data.len(), available });
        }
        for_each_piece(self.writable(), offset, data.len(), |addr, range| {
            mem.write_slice(&data[range], addr).map_err(|source| QueueError::Memory {
                what: "writable buffer",
                addr: addr.0,
                source,
            })
        })
    }

    /// A cursor reading the readable part from its start.
    pub fn reader(&self) -> ChainReader<'_> {
        ChainReader { chain: self, pos: 0 }
    }

    /// A cursor writing the writable part from its start; its
    /// [`written`](ChainWriter::written) count is what the device reports as
    /// the used length.
    pub fn writer(&self) -> ChainWriter<'_> {
        ChainWriter { chain: self, pos: 0 }
    }
}

/// Whether `[offset, offset + len)` lies inside `[0, available)`.
fn fits(offset: u64, len: usize, available: u64) -> bool {
    offset.checked_add(len as u64).is_some_and(|end| end <= available)
}

/// Calls `f` for each contiguous piece of the byte range
/// `[offset, offset + len)` of the stream formed by `descs`, with the guest
/// address of the piece and its range in the caller's buffer. The caller has
/// checked that the range fits.
fn for_each_piece<'a>(
    descs: impl Iterator<Item = &'a Descriptor>,
    offset: u64,
    len: usize,
    mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), QueueError>,
) -> Result<(), QueueError> {
    let mut skip = offset;
    let mut done = 0usize;
    for d in descs {
        if done == len {
            break;
        }
        let dlen = u64::from(d.len);
        if skip >= dlen {
            skip -= dlen;
            continue;
        }
        let n = (dlen - skip).min((len - done) as u64) as usize;
        // `pop` checked that addr + len does not overflow, but the fields are
        // public, so do not rely on it.
        let addr = d.addr.checked_add(skip).ok_or(QueueError::AddressOverflow {
            what: "buffer",
            base: d.addr,
            offset: skip,
        })?;
        f(GuestAddress(addr), done..done + n)?;
        done += n;
        skip = 0;
    }
    Ok(())
}

/// A sequential reader over the readable part of a [`DescriptorChain`].
#[derive(Debug, Clone)]
pub struct ChainReader<'a> {
    chain: &'a DescriptorChain,
    pos: u64,
}

impl ChainReader<'_> {
    /// Bytes consumed so far.
    pub fn consumed(&self) -> u64 {
        self.pos
    }

    /// Readable bytes left.
    pub fn remaining(&self) -> u64 {
        self.chain.readable_len().saturating_sub(self.pos)
    }

    /// Fills `buf` with the next bytes; if they are not there, fails and
    /// consumes nothing.
    pub fn read_exact(&mut self, mem: &GuestMemoryMmap, buf: &mut [u8]) -> Result<(), QueueError> {
        self.chain.read_at(mem, self.pos, buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Reads the next `size_of::<T>()` bytes as a `T` (a little-endian wire
    /// struct such as a request header).
    pub fn read_obj<T: ByteValued + Default>(&mut self, mem: &GuestMemoryMmap) -> Result<T, QueueError> {
        let mut v = T::default();
        self.read_exact(mem, v.as_mut_slice())?;
        Ok(v)
    }

    /// Skips `n` bytes (fails, consuming nothing, past the end).
    pub fn skip(&mut self, n: u64) -> Result<(), QueueError> {
        let available = self.chain.readable_len();
        match self.pos.checked_add(n) {
            Some(end) if end <= available => {
                self.pos = end;
                Ok(())
            }
            _ => Err(QueueError::ReadOutOfBounds {
                head: self.chain.head_index,
                offset: self.pos,
                len: usize::try_from(n).unwrap_or(usize::MAX),
                available,
            }),
        }
    }
}

/// A sequential writer over the writable part of a [`DescriptorChain`].
#[derive(Debug, Clone)]
pub struct ChainWriter<'a> {
    chain: &'a DescriptorChain,
    pos: u64,
}

impl ChainWriter<'_> {
    /// Bytes written so far: the `len` to report in
    /// [`Queue::add_used`](super::Queue::add_used).
    pub fn written(&self) -> u32 {
        // The writable part is at most 2^32 bytes (checked by `pop`); clamp
        // rather than wrap if a hand-built chain is longer.
        u32::try_from(self.pos).unwrap_or(u32::MAX)
    }

    /// Writable bytes left.
    pub fn remaining(&self) -> u64 {
        self.chain.writable_len().saturating_sub(self.pos)
    }

    /// Writes all of `data` next; if it does not fit, fails and writes
    /// nothing.
    pub fn write_all(&mut self, mem: &GuestMemoryMmap, data: &[u8]) -> Result<(), QueueError> {
        self.chain.write_at(mem, self.pos, data)?;
        self.pos += data.len() as u64;
        Ok(())
    }

    /// Writes `val`'s bytes next (a little-endian wire struct such as a
    /// status byte or a response header).
    pub fn write_obj<T: ByteValued>(&mut self, mem: &GuestMemoryMmap, val: T) -> Result<(), QueueError> {
        self.write_all(mem, val.as_slice())
    }
}
