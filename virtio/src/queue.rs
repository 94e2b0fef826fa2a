//! The split virtqueue, device side (virtio 1.x section 2.7; book sections
//! 5.2-5.7).
//!
//! A virtqueue is how a virtio driver in the guest and a device in the VMM
//! exchange requests. It lives entirely in guest memory and is made of three
//! areas, whose guest-physical addresses the driver hands to the device
//! through the transport (PCI or MMIO registers):
//!
//! | area | written by | alignment | size (bytes) | contents |
//! |---|---|---|---|---|
//! | descriptor table | driver | 16 | `16 * size` | `{ le64 addr; le32 len; le16 flags; le16 next; }` per buffer |
//! | available ring | driver | 2 | `6 + 2 * size` | `flags`, `idx`, `ring[size]` of chain heads, `used_event` |
//! | used ring | device | 4 | `6 + 8 * size` | `flags`, `idx`, `ring[size]` of `{ le32 id; le32 len; }`, `avail_event` |
//!
//! One round trip goes like this:
//!
//! 1. The driver organizes a request as a *descriptor chain*: descriptors
//!    linked by `next` while `VIRTQ_DESC_F_NEXT` is set, the device-readable
//!    buffers first, then the device-writable ones (`VIRTQ_DESC_F_WRITE`). A
//!    descriptor with `VIRTQ_DESC_F_INDIRECT` points instead at a separate
//!    table of descriptors (an *indirect table*), which lets one ring slot
//!    carry a long chain.
//! 2. It writes the head index into `avail.ring[avail.idx % size]`, then,
//!    after a write barrier, increments `avail.idx`, and notifies the device
//!    (a register write that traps to the VMM) unless the device suppressed
//!    notifications.
//! 3. The device ([`Queue::pop`]) reads `avail.idx`, then, after a read
//!    barrier, the new ring entries and the chains they name, processes the
//!    request, and ([`Queue::add_used`]) writes `{ head, bytes written }` into
//!    `used.ring[used.idx % size]` and, after a write barrier, increments
//!    `used.idx`. It then interrupts the driver unless the driver suppressed
//!    that ([`Queue::needs_notification`]).
//! 4. The driver reclaims the used chains and their descriptors.
//!
//! Both indices are free-running 16-bit counters (they wrap at 65536, which a
//! power-of-two queue size divides), so all index arithmetic here is
//! [`Wrapping<u16>`].
//!
//! Both directions of notification can be suppressed: with flags
//! (`VIRTQ_AVAIL_F_NO_INTERRUPT`, `VIRTQ_USED_F_NO_NOTIFY`), or, when
//! `VIRTIO_F_EVENT_IDX` is negotiated, with the `used_event` and
//! `avail_event` fields at the end of the rings, which name the index at
//! which the other side wants to hear again (spec 2.7.7, 2.7.10).
//!
//! Everything in guest memory is written by an untrusted guest: every index,
//! address and length read from there is checked before use, and a malformed
//! chain is reported as a [`QueueError`] (the device then typically sets
//! `DEVICE_NEEDS_RESET`), never a panic.

#![warn(missing_docs)]

mod chain;
#[cfg(test)]
mod fuzz_tests;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
#[cfg(test)]
mod tests;

pub use chain::{ChainReader, ChainWriter, Descriptor, DescriptorChain, READ_ALL_CAP};

use std::fmt;
use std::num::Wrapping;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap};

/// The largest queue size the split ring allows (spec 2.7: 32768).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Size in bytes of one descriptor (`struct virtq_desc`).
pub const DESCRIPTOR_SIZE: u64 = 16;
/// Required alignment of the descriptor table.
pub const DESC_TABLE_ALIGN: u64 = 16;
/// Required alignment of the available ring.
pub const AVAIL_RING_ALIGN: u64 = 2;
/// Required alignment of the used ring.
pub const USED_RING_ALIGN: u64 = 4;

/// `VIRTQ_DESC_F_NEXT`: the chain continues at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// `VIRTQ_DESC_F_WRITE`: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// `VIRTQ_DESC_F_INDIRECT`: the buffer is a table of descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT`: the driver asks for no used-buffer
/// notifications (ignored when `VIRTIO_F_EVENT_IDX` is negotiated).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = VRING_AVAIL_F_NO_INTERRUPT as u16;
/// `VIRTQ_USED_F_NO_NOTIFY`: the device asks for no available-buffer
/// notifications (not used when `VIRTIO_F_EVENT_IDX` is negotiated).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = VRING_USED_F_NO_NOTIFY as u16;

// Field offsets inside the rings.
const RING_FLAGS: u64 = 0;
const RING_IDX: u64 = 2;
const RING_ENTRIES: u64 = 4;
const AVAIL_ENTRY_SIZE: u64 = 2;
const USED_ENTRY_SIZE: u64 = 8;

/// Size in bytes of the descriptor table of a queue of `size` entries.
pub fn desc_table_size(size: u16) -> u64 {
    DESCRIPTOR_SIZE * u64::from(size)
}

/// Size in bytes of the available ring of a queue of `size` entries,
/// `used_event` included.
pub fn avail_ring_size(size: u16) -> u64 {
    RING_ENTRIES + AVAIL_ENTRY_SIZE * u64::from(size) + 2
}

/// Size in bytes of the used ring of a queue of `size` entries,
/// `avail_event` included.
pub fn used_ring_size(size: u16) -> u64 {
    RING_ENTRIES + USED_ENTRY_SIZE * u64::from(size) + 2
}

/// Which descriptor table a descriptor was read from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescTable {
    /// The queue's descriptor table.
    Main,
    /// An indirect table at this guest address.
    Indirect {
        /// Guest-physical address of the indirect table.
        addr: u64,
    },
}

impl fmt::Display for DescTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DescTable::Main => write!(f, "descriptor table"),
            DescTable::Indirect { addr } => write!(f, "indirect table at {addr:#x}"),
        }
    }
}

/// What went wrong with a queue: its configuration, the guest's rings and
/// chains (malformed input from the driver), or a device's use of the API.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue is used before the driver set it ready.
    #[error("queue is not ready")]
    NotReady,
    /// The queue size is not a power of two in `1..=max_size`.
    #[error("queue size {size} is invalid (must be a power of two in 1..={max})")]
    InvalidSize {
        /// The size the driver wrote.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// A ring address is not aligned as the spec requires.
    #[error("{what} address {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Which area.
        what: &'static str,
        /// Its address.
        addr: u64,
        /// Required alignment.
        align: u64,
    },
    /// Computing a guest address overflowed 64 bits.
    #[error("{what} address {base:#x} + {offset:#x} overflows")]
    AddressOverflow {
        /// What was being addressed.
        what: &'static str,
        /// Base address.
        base: u64,
        /// Offset added to it.
        offset: u64,
    },
    /// A guest memory access failed (the address is not backed by RAM).
    #[error("cannot access {what} at guest address {addr:#x}: {source}")]
    Memory {
        /// What was being accessed.
        what: &'static str,
        /// The guest address.
        addr: u64,
        /// The underlying error.
        #[source]
        source: GuestMemoryError,
    },
    /// `avail.idx` runs more than the queue size ahead of the device: the
    /// driver is broken.
    #[error(
        "available ring idx {avail_idx} is {pending} entries ahead of next_avail {next_avail}, \
         more than the queue size {size}"
    )]
    AvailIdxTooFar {
        /// `avail.idx` as read.
        avail_idx: u16,
        /// The device's next index to consume.
        next_avail: u16,
        /// `avail_idx - next_avail` (wrapping).
        pending: u16,
        /// Queue size.
        size: u16,
    },
    /// An available ring entry names a head outside the descriptor table.
    #[error("available ring entry {ring_index} holds head {head}, out of range for queue size {size}")]
    HeadOutOfRange {
        /// Position in the available ring.
        ring_index: u16,
        /// The head index read.
        head: u16,
        /// Queue size.
        size: u16,
    },
    /// A descriptor's `next` is outside its table.
    #[error(
        "chain {head}: descriptor {index} of the {table} has next {next}, \
         out of range (the table has {entries} entries)"
    )]
    NextOutOfRange {
        /// Head of the chain.
        head: u16,
        /// Table of the offending descriptor.
        table: DescTable,
        /// Index of the offending descriptor.
        index: u16,
        /// Its `next` field.
        next: u16,
        /// Number of entries of the table.
        entries: u32,
    },
    /// The chain has more descriptors than allowed: a loop, or longer than
    /// the queue size (spec 2.7.5.3.1) or the indirect table.
    #[error("chain {head}: more than {limit} descriptors (a loop, or longer than allowed)")]
    ChainTooLong {
        /// Head of the chain.
        head: u16,
        /// The limit exceeded.
        limit: u32,
    },
    /// The chain's buffers add up to more than 2^32 bytes (spec 2.7.5.1).
    #[error("chain {head}: buffers add up to more than 2^32 bytes")]
    ChainTooLarge {
        /// Head of the chain.
        head: u16,
    },
    /// A descriptor has both `VIRTQ_DESC_F_INDIRECT` and `VIRTQ_DESC_F_NEXT`.
    #[error("chain {head}: descriptor {index} of the descriptor table has both INDIRECT and NEXT")]
    IndirectWithNext {
        /// Head of the chain.
        head: u16,
        /// Index of the offending descriptor.
        index: u16,
    },
    /// A descriptor inside an indirect table has `VIRTQ_DESC_F_INDIRECT`.
    #[error("chain {head}: descriptor {index} of the {table} is INDIRECT inside an indirect table")]
    NestedIndirect {
        /// Head of the chain.
        head: u16,
        /// The indirect table.
        table: DescTable,
        /// Index of the offending descriptor.
        index: u16,
    },
    /// An indirect descriptor's `len` is zero or not a multiple of 16.
    #[error(
        "chain {head}: descriptor {index} refers to an indirect table of {len} bytes, \
         not a non-zero multiple of 16"
    )]
    IndirectTableLen {
        /// Head of the chain.
        head: u16,
        /// Index of the indirect descriptor.
        index: u16,
        /// Its `len` field.
        len: u32,
    },
    /// An indirect table has more entries than the queue size.
    #[error(
        "chain {head}: descriptor {index} refers to an indirect table of {entries} entries, \
         more than the queue size {size}"
    )]
    IndirectTableTooLarge {
        /// Head of the chain.
        head: u16,
        /// Index of the indirect descriptor.
        index: u16,
        /// Entries of the table.
        entries: u32,
        /// Queue size.
        size: u16,
    },
    /// An indirect table is not inside guest memory.
    #[error(
        "chain {head}: descriptor {index} refers to an indirect table at {addr:#x} \
         of {len:#x} bytes outside guest memory"
    )]
    IndirectTableOutOfMemory {
        /// Head of the chain.
        head: u16,
        /// Index of the indirect descriptor.
        index: u16,
        /// Table address.
        addr: u64,
        /// Table length.
        len: u32,
    },
    /// A buffer's `addr + len` overflows 64 bits.
    #[error(
        "chain {head}: descriptor {index} of the {table}: buffer at {addr:#x} of {len:#x} bytes \
         overflows the address space"
    )]
    DescriptorOverflow {
        /// Head of the chain.
        head: u16,
        /// Table of the offending descriptor.
        table: DescTable,
        /// Index of the offending descriptor.
        index: u16,
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A buffer is not (entirely) inside guest memory.
    #[error(
        "chain {head}: descriptor {index} of the {table}: buffer at {addr:#x} of {len:#x} bytes \
         is outside guest memory"
    )]
    DescriptorOutOfMemory {
        /// Head of the chain.
        head: u16,
        /// Table of the offending descriptor.
        table: DescTable,
        /// Index of the offending descriptor.
        index: u16,
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A device-readable buffer follows a device-writable one (spec 2.7.4.2).
    #[error(
        "chain {head}: descriptor {index} of the {table} is device-readable \
         but follows a device-writable one"
    )]
    ReadableAfterWritable {
        /// Head of the chain.
        head: u16,
        /// Table of the offending descriptor.
        table: DescTable,
        /// Index of the offending descriptor.
        index: u16,
    },
    /// [`Queue::add_used`] was given a head outside the descriptor table.
    #[error("used head {head} is out of range for queue size {size}")]
    UsedHeadOutOfRange {
        /// The head given.
        head: u16,
        /// Queue size.
        size: u16,
    },
    /// A read past the end of the chain's readable part.
    #[error(
        "chain {head}: cannot read {len} bytes at offset {offset}, \
         the readable part has {available} bytes"
    )]
    ReadOutOfBounds {
        /// Head of the chain.
        head: u16,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: usize,
        /// Length of the readable part.
        available: u64,
    },
    /// A write past the end of the chain's writable part.
    #[error(
        "chain {head}: cannot write {len} bytes at offset {offset}, \
         the writable part has {available} bytes"
    )]
    WriteOutOfBounds {
        /// Head of the chain.
        head: u16,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: usize,
        /// Length of the writable part.
        available: u64,
    },
    /// [`DescriptorChain::read_all`] on a readable part longer than its cap.
    #[error("chain {head}: the readable part has {len} bytes, more than the cap of {cap}")]
    ReadTooLarge {
        /// Head of the chain.
        head: u16,
        /// Length of the readable part.
        len: u64,
        /// The cap.
        cap: usize,
    },
}

/// A descriptor as it sits in guest memory, decoded from little endian.
#[derive(Debug, Clone, Copy)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl RawDesc {
    fn parse(b: &[u8]) -> Self {
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&b[0..8]);
        RawDesc {
            addr: u64::from_le_bytes(addr),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}

/// Accumulates the flattened chain while it is walked, enforcing the rules
/// that concern the chain as a whole.
struct ChainBuilder {
    head: u16,
    limit: usize,
    descriptors: Vec<Descriptor>,
    seen_writable: bool,
    total_len: u64,
}

impl ChainBuilder {
    fn push(&mut self, mem: &GuestMemoryMmap, table: DescTable, index: u16, raw: &RawDesc) -> Result<(), QueueError> {
        let head = self.head;
        if self.descriptors.len() >= self.limit {
            return Err(QueueError::ChainTooLong { head, limit: self.limit as u32 });
        }
        let writable = raw.flags & VIRTQ_DESC_F_WRITE != 0;
        if writable {
            self.seen_writable = true;
        } else if self.seen_writable {
            return Err(QueueError::ReadableAfterWritable { head, table, index });
        }
        // Zero-length buffers hold nothing and are never accessed, so their
        // address does not matter.
        if raw.len != 0 {
            let (addr, len) = (raw.addr, raw.len);
            if addr.checked_add(u64::from(len)).is_none() {
                return Err(QueueError::DescriptorOverflow { head, table, index, addr, len });
            }
            if !GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize) {
                return Err(QueueError::DescriptorOutOfMemory { head, table, index, addr, len });
            }
        }
        self.total_len += u64::from(raw.len);
        if self.total_len > 1 << 32 {
            return Err(QueueError::ChainTooLarge { head });
        }
        self.descriptors.push(Descriptor { addr: raw.addr, len: raw.len, writable });
        Ok(())
    }
}

/// One split virtqueue, device side: the configuration the transport
/// receives from the driver, and the device's position in the rings.
#[derive(Debug, Clone)]
pub struct Queue {
    max_size: u16,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    event_idx: bool,
    /// Next available ring entry the device will consume.
    next_avail: Wrapping<u16>,
    /// Next used ring entry the device will fill (the `used.idx` it
    /// publishes).
    next_used: Wrapping<u16>,
    /// Used entries added since the last [`Queue::needs_notification`]; more
    /// than 16 bits so that 65536 of them are not mistaken for none.
    num_added: u32,
    /// The driver stopped the queue while the device runs (virtio-mmio
    /// QueueReady = 0): shared by the transport's copy and the device's, so
    /// the device sees it at its next [`pop`](Queue::pop).
    stopped: Arc<AtomicBool>,
}

impl Queue {
    /// A queue whose size may be set up to `max_size` (the size it starts
    /// with, as after a reset).
    ///
    /// # Panics
    ///
    /// If `max_size` is not a power of two in `1..=32768`: it is a constant
    /// of the device, not guest input.
    pub fn new(max_size: u16) -> Self {
        assert!(
            max_size.is_power_of_two() && max_size <= MAX_QUEUE_SIZE,
            "virtqueue max_size {max_size} is not a power of two <= 32768"
        );
        Queue {
            max_size,
            size: max_size,
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
            event_idx: false,
            next_avail: Wrapping(0),
            next_used: Wrapping(0),
            num_added: 0,
            stopped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Stops the queue for good (until a device reset): every copy of it, the
    /// running device's included, pops nothing more. In-flight chains still
    /// complete.
    pub fn stop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.ready = false;
    }

    /// Whether the driver stopped the queue (see [`stop`](Self::stop)).
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// The largest size the driver may set.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// The size the driver set (number of descriptors, ring entries).
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Sets the size, as the driver wrote it. Any value is accepted; one that
    /// is not a power of two in `1..=max_size` makes the queue invalid.
    pub fn set_size(&mut self, size: u16) {
        self.size = size;
    }

    /// Whether the driver enabled the queue.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Enables or disables the queue, as the driver wrote it.
    pub fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
    }

    /// Guest-physical address of the descriptor table.
    pub fn desc_table(&self) -> u64 {
        self.desc_table
    }

    /// Sets the guest-physical address of the descriptor table.
    pub fn set_desc_table(&mut self, addr: u64) {
        self.desc_table = addr;
    }

    /// Sets the low 32 bits of the descriptor table address.
    pub fn set_desc_table_lo(&mut self, v: u32) {
        self.desc_table = set_lo(self.desc_table, v);
    }

    /// Sets the high 32 bits of the descriptor table address.
    pub fn set_desc_table_hi(&mut self, v: u32) {
        self.desc_table = set_hi(self.desc_table, v);
    }

    /// Guest-physical address of the available ring ("driver area").
    pub fn avail_ring(&self) -> u64 {
        self.avail_ring
    }

    /// Sets the guest-physical address of the available ring.
    pub fn set_avail_ring(&mut self, addr: u64) {
        self.avail_ring = addr;
    }

    /// Sets the low 32 bits of the available ring address.
    pub fn set_avail_ring_lo(&mut self, v: u32) {
        self.avail_ring = set_lo(self.avail_ring, v);
    }

    /// Sets the high 32 bits of the available ring address.
    pub fn set_avail_ring_hi(&mut self, v: u32) {
        self.avail_ring = set_hi(self.avail_ring, v);
    }

    /// Guest-physical address of the used ring ("device area").
    pub fn used_ring(&self) -> u64 {
        self.used_ring
    }

    /// Sets the guest-physical address of the used ring.
    pub fn set_used_ring(&mut self, addr: u64) {
        self.used_ring = addr;
    }

    /// Sets the low 32 bits of the used ring address.
    pub fn set_used_ring_lo(&mut self, v: u32) {
        self.used_ring = set_lo(self.used_ring, v);
    }

    /// Sets the high 32 bits of the used ring address.
    pub fn set_used_ring_hi(&mut self, v: u32) {
        self.used_ring = set_hi(self.used_ring, v);
    }

    /// Whether `VIRTIO_F_EVENT_IDX` was negotiated.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Records whether `VIRTIO_F_EVENT_IDX` was negotiated: notification
    /// suppression then uses `used_event`/`avail_event` instead of the ring
    /// flags.
    pub fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    /// The next available ring index the device will consume.
    pub fn next_avail(&self) -> u16 {
        self.next_avail.0
    }

    /// Sets the next available ring index (restoring a saved queue).
    pub fn set_next_avail(&mut self, idx: u16) {
        self.next_avail = Wrapping(idx);
    }

    /// The next used ring index the device will fill, i.e. the `used.idx` it
    /// last published.
    pub fn next_used(&self) -> u16 {
        self.next_used.0
    }

    /// Sets the next used ring index (restoring a saved queue).
    pub fn set_next_used(&mut self, idx: u16) {
        self.next_used = Wrapping(idx);
    }

    /// Whether the size is a power of two in `1..=max_size`.
    fn size_valid(&self) -> bool {
        self.size.is_power_of_two() && self.size <= self.max_size
    }

    /// Whether the queue can be used: ready, a valid size, the three areas
    /// aligned and entirely inside guest memory.
    pub fn is_valid(&self, mem: &GuestMemoryMmap) -> bool {
        if let Err(e) = self.check_usable() {
            log::debug!("virtqueue invalid: {e}");
            return false;
        }
        let areas = [
            ("descriptor table", self.desc_table, desc_table_size(self.size)),
            ("available ring", self.avail_ring, avail_ring_size(self.size)),
            ("used ring", self.used_ring, used_ring_size(self.size)),
        ];
        for (what, addr, len) in areas {
            let inside = addr.checked_add(len).is_some()
                && GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize);
            if !inside {
                log::debug!("virtqueue invalid: {what} at {addr:#x} of {len:#x} bytes is outside guest memory");
                return false;
            }
        }
        true
    }

    /// The checks of [`is_valid`](Self::is_valid) that do not need guest
    /// memory (every access to it is checked anyway); they keep the ring
    /// arithmetic sound (no division by a zero size, aligned atomics).
    fn check_usable(&self) -> Result<(), QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        if !self.size_valid() {
            return Err(QueueError::InvalidSize { size: self.size, max: self.max_size });
        }
        let areas = [
            ("descriptor table", self.desc_table, DESC_TABLE_ALIGN),
            ("available ring", self.avail_ring, AVAIL_RING_ALIGN),
            ("used ring", self.used_ring, USED_RING_ALIGN),
        ];
        for (what, addr, align) in areas {
            if addr % align != 0 {
                return Err(QueueError::Misaligned { what, addr, align });
            }
        }
        Ok(())
    }

    /// Returns the queue to its state after a device reset: not ready, size
    /// `max_size`, addresses zero, indices zero, no `EVENT_IDX`.
    pub fn reset(&mut self) {
        *self = Queue::new(self.max_size);
    }

    /// Whether the driver has made chains available that the device has not
    /// popped yet.
    pub fn has_available(&self, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        self.check_usable()?;
        Ok(!self.stopped() && self.avail_idx(mem)? != self.next_avail)
    }

    /// Takes the next available chain, fully validated; `None` if the ring
    /// is empty.
    ///
    /// With `EVENT_IDX`, finding the ring empty also re-arms the driver's
    /// notifications ([`enable_notification`](Self::enable_notification)):
    /// the driver kicks only when its avail index crosses `avail_event`, so a
    /// device that drained the ring without moving `avail_event` would never
    /// hear from the driver again. Doing it here makes every device that pops
    /// until `None` correct, whether or not it suppresses notifications.
    ///
    /// Errors about the ring (`avail.idx`, unreadable ring) leave the queue
    /// unchanged; errors about the chain itself are reported after the device
    /// moved past its ring entry.
    pub fn pop(&mut self, mem: &GuestMemoryMmap) -> Result<Option<DescriptorChain>, QueueError> {
        self.check_usable()?;
        if self.stopped() {
            return Ok(None);
        }
        let mut avail_idx = self.avail_idx(mem)?;
        if self.event_idx && avail_idx == self.next_avail {
            if !self.enable_notification(mem)? {
                return Ok(None);
            }
            // The driver added chains before it could see the new avail_event.
            avail_idx = self.avail_idx(mem)?;
        }
        // Read the ring entries only after seeing the idx that covers them
        // (pairs with the driver's write barrier before it bumps avail.idx).
        fence(Ordering::Acquire);
        let pending = avail_idx - self.next_avail;
        if pending.0 > self.size {
            return Err(QueueError::AvailIdxTooFar {
                avail_idx: avail_idx.0,
                next_avail: self.next_avail.0,
                pending: pending.0,
                size: self.size,
            });
        }
        if pending.0 == 0 {
            return Ok(None);
        }
        let ring_index = self.next_avail.0 % self.size;
        let head = load_u16(
            mem,
            self.avail_ring,
            RING_ENTRIES + AVAIL_ENTRY_SIZE * u64::from(ring_index),
            "available ring entry",
        )?;
        self.next_avail += 1;
        if head >= self.size {
            return Err(QueueError::HeadOutOfRange { ring_index, head, size: self.size });
        }
        self.walk_chain(mem, head).map(Some)
    }

    /// Puts the most recently popped chain back: the next [`pop`](Self::pop)
    /// returns it again (re-read from guest memory). For a device that cannot
    /// process it now, e.g. network receive with a too-small buffer.
    pub fn undo_pop(&mut self) {
        self.next_avail -= 1;
    }

    /// Returns chain `head_index` to the driver, `len` bytes written into it:
    /// fills the next used ring entry, then publishes it by incrementing
    /// `used.idx`.
    pub fn add_used(&mut self, mem: &GuestMemoryMmap, head_index: u16, len: u32) -> Result<(), QueueError> {
        self.check_usable()?;
        if head_index >= self.size {
            return Err(QueueError::UsedHeadOutOfRange { head: head_index, size: self.size });
        }
        let ring_index = self.next_used.0 % self.size;
        let addr =
            offset_addr(self.used_ring, RING_ENTRIES + USED_ENTRY_SIZE * u64::from(ring_index), "used ring entry")?;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head_index).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, addr).map_err(|source| QueueError::Memory {
            what: "used ring entry",
            addr: addr.0,
            source,
        })?;
        let new_used = self.next_used + Wrapping(1);
        // The entry (and the buffers the device wrote) must be visible before
        // the idx that hands them over.
        fence(Ordering::Release);
        store_u16(mem, self.used_ring, RING_IDX, "used ring idx", new_used.0)?;
        self.next_used = new_used;
        self.num_added = self.num_added.saturating_add(1);
        Ok(())
    }

    /// Whether the driver wants a used-buffer notification (an interrupt) for
    /// the entries added since the last call. Call it after a batch of
    /// [`add_used`](Self::add_used).
    ///
    /// Without `EVENT_IDX` that is unless `VIRTQ_AVAIL_F_NO_INTERRUPT` is set;
    /// with it, if the batch moved `used.idx` past `used_event` (spec 2.7.7,
    /// `vring_need_event`). With nothing added, no notification is needed.
    pub fn needs_notification(&mut self, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        self.check_usable()?;
        if self.num_added == 0 {
            return Ok(false);
        }
        // The used.idx store must be visible before reading the driver's
        // suppression fields, or both sides may decide the other one will act
        // (the driver re-enables interrupts and re-checks used.idx; we publish
        // used.idx and check whether interrupts are enabled).
        fence(Ordering::SeqCst);
        let notify = if self.event_idx {
            let used_event = Wrapping(load_u16(
                mem,
                self.avail_ring,
                RING_ENTRIES + AVAIL_ENTRY_SIZE * u64::from(self.size),
                "used_event",
            )?);
            if self.num_added > u32::from(u16::MAX) {
                // The window covers every index, used_event included.
                true
            } else {
                let new = self.next_used;
                let old = new - Wrapping(self.num_added as u16);
                new - used_event - Wrapping(1) < new - old
            }
        } else {
            let flags = load_u16(mem, self.avail_ring, RING_FLAGS, "available ring flags")?;
            flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0
        };
        self.num_added = 0;
        Ok(notify)
    }

    /// Asks the driver to notify the device of new available buffers: clears
    /// `VIRTQ_USED_F_NO_NOTIFY`, or with `EVENT_IDX` sets `avail_event` to
    /// [`next_avail`](Self::next_avail).
    ///
    /// Returns whether chains were made available meanwhile: the driver may
    /// have checked before seeing the change, so the device must pop again
    /// rather than wait for a notification that will not come. Never for a
    /// [stopped](Self::stop) queue, which pops nothing: a device that pops
    /// again whenever this says so would otherwise spin forever.
    pub fn enable_notification(&mut self, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        self.check_usable()?;
        if self.event_idx {
            store_u16(
                mem,
                self.used_ring,
                RING_ENTRIES + USED_ENTRY_SIZE * u64::from(self.size),
                "avail_event",
                self.next_avail.0,
            )?;
        } else {
            store_u16(mem, self.used_ring, RING_FLAGS, "used ring flags", 0)?;
        }
        // The store above must be visible before re-reading avail.idx (the
        // driver bumps avail.idx, then reads our suppression fields).
        fence(Ordering::SeqCst);
        Ok(!self.stopped() && self.avail_idx(mem)? != self.next_avail)
    }

    /// Tells the driver not to notify the device of new available buffers
    /// (the device is polling the ring anyway): sets
    /// `VIRTQ_USED_F_NO_NOTIFY`. With `EVENT_IDX` it does nothing: the driver
    /// notifies only when it crosses `avail_event`, which stays behind until
    /// [`enable_notification`](Self::enable_notification) moves it.
    pub fn disable_notification(&mut self, mem: &GuestMemoryMmap) -> Result<(), QueueError> {
        self.check_usable()?;
        if !self.event_idx {
            store_u16(mem, self.used_ring, RING_FLAGS, "used ring flags", VIRTQ_USED_F_NO_NOTIFY)?;
        }
        Ok(())
    }

    /// Reads `avail.idx`.
    fn avail_idx(&self, mem: &GuestMemoryMmap) -> Result<Wrapping<u16>, QueueError> {
        load_u16(mem, self.avail_ring, RING_IDX, "available ring idx").map(Wrapping)
    }

    /// Reads descriptor `index` (< size) of the descriptor table.
    fn read_desc(&self, mem: &GuestMemoryMmap, index: u16) -> Result<RawDesc, QueueError> {
        let addr = offset_addr(self.desc_table, DESCRIPTOR_SIZE * u64::from(index), "descriptor")?;
        let mut buf = [0u8; DESCRIPTOR_SIZE as usize];
        mem.read_slice(&mut buf, addr).map_err(|source| QueueError::Memory {
            what: "descriptor",
            addr: addr.0,
            source,
        })?;
        Ok(RawDesc::parse(&buf))
    }

    /// Walks and validates the chain starting at `head` (< size), following
    /// at most one indirect table. Iterative, with every step counted, so a
    /// looping chain ends in an error.
    fn walk_chain(&self, mem: &GuestMemoryMmap, head: u16) -> Result<DescriptorChain, QueueError> {
        let size = self.size;
        let mut chain = ChainBuilder {
            head,
            limit: usize::from(size),
            descriptors: Vec::new(),
            seen_writable: false,
            total_len: 0,
        };
        let mut index = head;
        let mut steps = 0u32;
        loop {
            steps += 1;
            if steps > u32::from(size) {
                return Err(QueueError::ChainTooLong { head, limit: u32::from(size) });
            }
            let raw = self.read_desc(mem, index)?;
            if raw.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if raw.flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(QueueError::IndirectWithNext { head, index });
                }
                // Without NEXT, the indirect descriptor ends the main chain
                // (spec: zero or more direct descriptors, then one indirect).
                self.walk_indirect(mem, &mut chain, index, &raw)?;
                break;
            }
            chain.push(mem, DescTable::Main, index, &raw)?;
            if raw.flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            if raw.next >= size {
                return Err(QueueError::NextOutOfRange {
                    head,
                    table: DescTable::Main,
                    index,
                    next: raw.next,
                    entries: u32::from(size),
                });
            }
            index = raw.next;
        }
        Ok(DescriptorChain { head_index: head, descriptors: chain.descriptors })
    }

    /// Appends the chain of the indirect table that descriptor `index`
    /// (`raw`) refers to. Its `VIRTQ_DESC_F_WRITE` is ignored (spec 2.7.5.3.2).
    fn walk_indirect(
        &self,
        mem: &GuestMemoryMmap,
        chain: &mut ChainBuilder,
        index: u16,
        raw: &RawDesc,
    ) -> Result<(), QueueError> {
        let head = chain.head;
        let (addr, len) = (raw.addr, raw.len);
        if len == 0 || u64::from(len) % DESCRIPTOR_SIZE != 0 {
            return Err(QueueError::IndirectTableLen { head, index, len });
        }
        let entries = len / DESCRIPTOR_SIZE as u32;
        if entries > u32::from(self.size) {
            return Err(QueueError::IndirectTableTooLarge { head, index, entries, size: self.size });
        }
        let inside = addr.checked_add(u64::from(len)).is_some()
            && GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize);
        if !inside {
            return Err(QueueError::IndirectTableOutOfMemory { head, index, addr, len });
        }
        // One copy of the whole table: bounded (<= 16 * 32768 bytes), and the
        // guest cannot change it under us while it is walked.
        let mut bytes = vec![0u8; len as usize];
        mem.read_slice(&mut bytes, GuestAddress(addr)).map_err(|source| QueueError::Memory {
            what: "indirect table",
            addr,
            source,
        })?;
        let table = DescTable::Indirect { addr };
        let mut i = 0u16;
        let mut steps = 0u32;
        loop {
            steps += 1;
            if steps > entries {
                return Err(QueueError::ChainTooLong { head, limit: entries });
            }
            let start = usize::from(i) * DESCRIPTOR_SIZE as usize;
            let d = RawDesc::parse(&bytes[start..start + DESCRIPTOR_SIZE as usize]);
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                return Err(QueueError::NestedIndirect { head, table, index: i });
            }
            chain.push(mem, table, i, &d)?;
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(());
            }
            if u32::from(d.next) >= entries {
                return Err(QueueError::NextOutOfRange { head, table, index: i, next: d.next, entries });
            }
            i = d.next;
        }
    }
}

fn set_lo(v: u64, lo: u32) -> u64 {
    (v & !0xffff_ffff) | u64::from(lo)
}

fn set_hi(v: u64, hi: u32) -> u64 {
    (v & 0xffff_ffff) | (u64::from(hi) << 32)
}

/// `base + offset` as a guest address, or an error if it overflows.
fn offset_addr(base: u64, offset: u64, what: &'static str) -> Result<GuestAddress, QueueError> {
    base.checked_add(offset).map(GuestAddress).ok_or(QueueError::AddressOverflow { what, base, offset })
}

/// Atomically loads the little-endian u16 at `base + offset` (a ring field
/// the guest may be writing concurrently).
fn load_u16(mem: &GuestMemoryMmap, base: u64, offset: u64, what: &'static str) -> Result<u16, QueueError> {
    let addr = offset_addr(base, offset, what)?;
    mem.load::<u16>(addr, Ordering::Relaxed).map(u16::from_le).map_err(|source| QueueError::Memory {
        what,
        addr: addr.0,
        source,
    })
}

/// Atomically stores `val` as a little-endian u16 at `base + offset`.
fn store_u16(mem: &GuestMemoryMmap, base: u64, offset: u64, what: &'static str, val: u16) -> Result<(), QueueError> {
    let addr = offset_addr(base, offset, what)?;
    mem.store(val.to_le(), addr, Ordering::Relaxed).map_err(|source| QueueError::Memory { what, addr: addr.0, source })
}
