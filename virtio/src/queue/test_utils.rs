//! A fake virtio driver for host-side tests of the queue and of devices:
//! [`MockDriver`] lays out a split virtqueue in a [`GuestMemoryMmap`], makes
//! chains (direct and indirect) available, and reads back what the device
//! put in the used ring.
//!
//! Built for this crate's tests and, with the `test-utils` feature, for
//! device tests elsewhere. Its methods panic on misuse (it is test code).

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{
    avail_ring_size, desc_table_size, used_ring_size, Queue, DESCRIPTOR_SIZE, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
};

/// Guest memory of `len` bytes in one region at guest address 0.
pub fn guest_memory(len: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)]).expect("cannot map test guest memory")
}

/// A descriptor exactly as the driver writes it (any flags, any `next`), for
/// building well-formed and malformed tables alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawDescriptor {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `VIRTQ_DESC_F_*` flags.
    pub flags: u16,
    /// Next descriptor index, if `flags` has `VIRTQ_DESC_F_NEXT`.
    pub next: u16,
}

impl RawDescriptor {
    /// A device-readable buffer without `NEXT`.
    pub fn readable(addr: u64, len: u32) -> Self {
        RawDescriptor { addr, len, flags: 0, next: 0 }
    }

    /// A device-writable buffer without `NEXT`.
    pub fn writable(addr: u64, len: u32) -> Self {
        RawDescriptor { addr, len, flags: VIRTQ_DESC_F_WRITE, next: 0 }
    }

    /// The same descriptor continuing at `next`.
    pub fn with_next(mut self, next: u16) -> Self {
        self.flags |= VIRTQ_DESC_F_NEXT;
        self.next = next;
        self
    }

    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// The driver side of one split virtqueue in guest memory.
///
/// Layout from `base`: descriptor table, available ring, used ring, then a
/// data area up to the end of the region that holds `base`, from which
/// buffers and indirect tables are allocated (never freed).
#[derive(Debug, Clone)]
pub struct MockDriver {
    mem: GuestMemoryMmap,
    size: u16,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    data_next: u64,
    data_end: u64,
    next_desc: u16,
    avail_idx: Wrapping<u16>,
}

fn align_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align) * align
}

impl MockDriver {
    /// Lays out a queue of `size` entries at `base` (rounded up to 16) and
    /// zeroes its rings.
    pub fn new(mem: &GuestMemoryMmap, base: GuestAddress, size: u16) -> Self {
        assert!(size.is_power_of_two() && size <= super::MAX_QUEUE_SIZE);
        let desc_table = align_up(base.0, 16);
        let avail_ring = desc_table + desc_table_size(size);
        let used_ring = align_up(avail_ring + avail_ring_size(size), 4);
        let data_start = align_up(used_ring + used_ring_size(size), 16);
        let region = mem.find_region(base).expect("base outside guest memory");
        let data_end = region.start_addr().0 + region.len();
        assert!(data_start <= data_end, "queue does not fit in the region");
        let zeros = vec![0u8; (data_start - desc_table) as usize];
        mem.write_slice(&zeros, GuestAddress(desc_table)).unwrap();
        MockDriver {
            mem: mem.clone(),
            size,
            desc_table,
            avail_ring,
            used_ring,
            data_next: data_start,
            data_end,
            next_desc: 0,
            avail_idx: Wrapping(0),
        }
    }

    /// The guest memory (shared with the caller's).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Address of the descriptor table.
    pub fn desc_table(&self) -> u64 {
        self.desc_table
    }

    /// Address of the available ring.
    pub fn avail_ring(&self) -> u64 {
        self.avail_ring
    }

    /// Address of the used ring.
    pub fn used_ring(&self) -> u64 {
        self.used_ring
    }

    /// A ready device-side [`Queue`] (max size = size) on this layout.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size);
        self.configure(&mut q);
        q
    }

    /// Writes this layout into `q` as a transport would, and sets it ready.
    pub fn configure(&self, q: &mut Queue) {
        q.set_size(self.size);
        q.set_desc_table(self.desc_table);
        q.set_avail_ring(self.avail_ring);
        q.set_used_ring(self.used_ring);
        q.set_ready(true);
    }

    /// Allocates `len` bytes (16-aligned) of the data area.
    pub fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.data_next;
        let end = align_up(addr + u64::from(len), 16);
        assert!(end <= self.data_end, "MockDriver data area exhausted");
        self.data_next = end;
        addr
    }

    /// Allocates a buffer holding `data`.
    pub fn alloc_with(&mut self, data: &[u8]) -> u64 {
        let addr = self.alloc(data.len() as u32);
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        addr
    }

    /// Writes descriptor `index` of the descriptor table as is.
    pub fn write_desc(&self, index: u16, desc: RawDescriptor) {
        let addr = self.desc_table + DESCRIPTOR_SIZE * u64::from(index);
        self.mem.write_slice(&desc.to_bytes(), GuestAddress(addr)).unwrap();
    }

    /// Allocates an indirect table holding `descs` as is; returns its address.
    pub fn write_indirect_table(&mut self, descs: &[RawDescriptor]) -> u64 {
        let bytes: Vec<u8> = descs.iter().flat_map(|d| d.to_bytes()).collect();
        self.alloc_with(&bytes)
    }

    /// Writes `descs` into consecutive free descriptor slots (wrapping around
    /// the table), linking each to the next with `NEXT` (their own
    /// `flags`/`next` are kept otherwise), and returns the head index
    /// without publishing it.
    pub fn write_chain(&mut self, descs: &[RawDescriptor]) -> u16 {
        assert!(!descs.is_empty() && descs.len() <= usize::from(self.size));
        let head = self.next_desc;
        let mut index = head;
        for (i, d) in descs.iter().enumerate() {
            let next = (index + 1) % self.size;
            let d = if i + 1 < descs.len() { d.with_next(next) } else { *d };
            self.write_desc(index, d);
            index = next;
        }
        self.next_desc = index;
        head
    }

    /// Writes `descs` as a chain and makes it available; returns its head.
    pub fn add_chain(&mut self, descs: &[RawDescriptor]) -> u16 {
        let head = self.write_chain(descs);
        self.publish(head);
        head
    }

    /// Allocates readable buffers holding `readable` and writable buffers of
    /// the lengths in `writable`, chains them directly and makes the chain
    /// available; returns its head.
    pub fn add_buffers(&mut self, readable: &[&[u8]], writable: &[u32]) -> u16 {
        let descs = self.buffer_descs(readable, writable);
        self.add_chain(&descs)
    }

    /// Like [`add_buffers`](Self::add_buffers), but the buffers go into an
    /// indirect table referred to by one descriptor.
    pub fn add_indirect_buffers(&mut self, readable: &[&[u8]], writable: &[u32]) -> u16 {
        let descs = self.buffer_descs(readable, writable);
        let linked: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| if i + 1 < descs.len() { d.with_next(i as u16 + 1) } else { *d })
            .collect();
        let table = self.write_indirect_table(&linked);
        self.add_chain(&[RawDescriptor {
            addr: table,
            len: (linked.len() as u64 * DESCRIPTOR_SIZE) as u32,
            flags: VIRTQ_DESC_F_INDIRECT,
            next: 0,
        }])
    }

    fn buffer_descs(&mut self, readable: &[&[u8]], writable: &[u32]) -> Vec<RawDescriptor> {
        let mut descs = Vec::new();
        for data in readable {
            let addr = self.alloc_with(data);
            descs.push(RawDescriptor::readable(addr, data.len() as u32));
        }
        for &len in writable {
            let addr = self.alloc(len);
            descs.push(RawDescriptor::writable(addr, len));
        }
        descs
    }

    /// Puts `head` in the next available ring slot and, after a write
    /// barrier, increments `avail.idx`.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx.0 % self.size);
        self.write_u16(self.avail_ring + 4 + 2 * slot, head);
        fence(Ordering::Release);
        self.avail_idx += 1;
        self.write_u16(self.avail_ring + 2, self.avail_idx.0);
    }

    /// Sets `avail.idx` (and the driver's own counter) to `idx`.
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = Wrapping(idx);
        self.write_u16(self.avail_ring + 2, idx);
    }

    /// The driver's `avail.idx`.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx.0
    }

    /// Writes available ring entry `slot` (< size) directly.
    pub fn set_avail_entry(&self, slot: u16, head: u16) {
        self.write_u16(self.avail_ring + 4 + 2 * u64::from(slot), head);
    }

    /// Sets the available ring flags (`VIRTQ_AVAIL_F_NO_INTERRUPT`).
    pub fn set_avail_flags(&self, flags: u16) {
        self.write_u16(self.avail_ring, flags);
    }

    /// Sets `used_event` (the last field of the available ring).
    pub fn set_used_event(&self, idx: u16) {
        self.write_u16(self.avail_ring + 4 + 2 * u64::from(self.size), idx);
    }

    /// The device's `used.idx`.
    pub fn used_idx(&self) -> u16 {
        self.read_u16(self.used_ring + 2)
    }

    /// The used ring flags (`VIRTQ_USED_F_NO_NOTIFY`).
    pub fn used_flags(&self) -> u16 {
        self.read_u16(self.used_ring)
    }

    /// `avail_event` (the last field of the used ring).
    pub fn avail_event(&self) -> u16 {
        self.read_u16(self.used_ring + 4 + 8 * u64::from(self.size))
    }

    /// Whether a driver that negotiated `VIRTIO_F_EVENT_IDX` must notify the
    /// device after moving `avail.idx` from `old` to its current value: the
    /// `vring_need_event` rule on `avail_event` (2.7.10).
    pub fn event_idx_kick_due(&self, old: u16) -> bool {
        let new = self.avail_idx();
        new.wrapping_sub(self.avail_event()).wrapping_sub(1) < new.wrapping_sub(old)
    }

    /// Used ring entry number `idx` (taken modulo the size): `(id, len)`.
    pub fn used_elem(&self, idx: u16) -> (u32, u32) {
        let addr = self.used_ring + 4 + 8 * u64::from(idx % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(addr)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(addr + 4)).unwrap();
        (u32::from_le(id), u32::from_le(len))
    }

    /// Copies `len` bytes at `addr` out of guest memory.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn write_u16(&self, addr: u64, v: u16) {
        self.mem.write_obj(v.to_le(), GuestAddress(addr)).unwrap();
    }

    fn read_u16(&self, addr: u64) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(addr)).unwrap())
    }
}

/// Records what a device under test signals: queue interrupts and requests for a reset.
#[derive(Debug, Default)]
pub struct RecordingSignals {
    /// Queue interrupts.
    pub interrupts: std::sync::atomic::AtomicU32,
    /// The queue index of every queue interrupt, in order.
    pub queues: std::sync::Mutex<Vec<u16>>,
    /// NEEDS_RESET requests.
    pub resets: std::sync::atomic::AtomicU32,
}

impl crate::device::VirtioInterrupt for RecordingSignals {
    fn notify_queue(&self, queue: u16) {
        self.interrupts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.queues.lock().unwrap().push(queue);
    }
    fn notify_config(&self) {}
}

impl crate::device::DeviceStatusSink for RecordingSignals {
    fn needs_reset(&self) {
        self.resets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A small deterministic PRNG (xorshift64) for randomized "never panics"
/// tests: fixed seeds, so a failure reproduces; no dependency.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator seeded with `seed` (0 is replaced: xorshift never leaves 0).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True `percent` times out of 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `items` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }

    /// A buffer length up to `max`: often 0 or 1, mostly small, sometimes
    /// anything up to `max`.
    pub fn len_up_to(&mut self, max: u32) -> u32 {
        match self.below(8) {
            0 => 0,
            1 => 1.min(max),
            2 => max,
            3 | 4 => self.below(u64::from(max.min(64)) + 1) as u32,
            5 => self.below(u64::from(max.min(4096)) + 1) as u32,
            _ => self.below(u64::from(max) + 1) as u32,
        }
    }
}

/// Makes random descriptor chains for device tests ("garbage in, no panic
/// out"): the device-readable part starts with a header the test chooses
/// (device-specific request bytes), split over 1-3 descriptors at random
/// points and sometimes cut short; then random readable and writable
/// buffers of random lengths (0, 1, small, large) at random places of a
/// scratch area; sometimes all of it behind an indirect table; and, at
/// [`fatal_percent`](Self::fatal_percent), a malformation the queue itself
/// rejects (a buffer outside guest memory, a huge length, a readable buffer
/// after a writable one, a descriptor loop), which a device answers with
/// NEEDS_RESET.
///
/// Everything the chain points at lies in the scratch area (allocated once
/// from the driver's data area), except the deliberately bad buffers. The
/// header and indirect table of a chain go in one of 16 rotating slots, so
/// up to 16 chains can be in flight at once without overwriting each other;
/// their descriptors take the driver's table slots in turn (see
/// [`MockDriver::write_chain`]), so chains in flight overwrite each other's
/// once they need more descriptors than the queue size (at most 10 each).
#[derive(Debug, Clone)]
pub struct ChainFuzzer {
    scratch: u64,
    len: u64,
    slot: u64,
    /// Percentage of chains made malformed at the queue level.
    pub fatal_percent: u64,
    /// If above 1, half of the buffer lengths are rounded down to a multiple
    /// of it (512 makes block requests of whole sectors).
    pub len_multiple: u32,
}

/// Header slots, then indirect-table slots, at the start of the scratch area.
const FUZZ_SLOTS: u64 = 16;
const FUZZ_SLOT_SIZE: u64 = 512;
const FUZZ_DATA: u64 = 2 * FUZZ_SLOTS * FUZZ_SLOT_SIZE;

impl ChainFuzzer {
    /// Allocates a scratch area of `len` bytes (at least 32 KiB) from
    /// `driver`'s data area.
    pub fn new(driver: &mut MockDriver, len: u32) -> Self {
        assert!(u64::from(len) >= FUZZ_DATA + 0x4000, "scratch area too small");
        let scratch = driver.alloc(len);
        ChainFuzzer { scratch, len: u64::from(len), slot: 0, fatal_percent: 0, len_multiple: 1 }
    }

    /// The scratch area: `(address, length)`.
    pub fn scratch(&self) -> (u64, u64) {
        (self.scratch, self.len)
    }

    /// A random buffer inside the data part of the scratch area.
    fn buffer(&self, rng: &mut XorShift, writable: bool) -> RawDescriptor {
        let data_len = self.len - FUZZ_DATA;
        let mut len = rng.len_up_to(data_len as u32);
        if self.len_multiple > 1 && rng.chance(50) {
            len = len / self.len_multiple * self.len_multiple;
        }
        let addr = self.scratch + FUZZ_DATA + rng.below(data_len - u64::from(len) + 1);
        if writable {
            RawDescriptor::writable(addr, len)
        } else {
            RawDescriptor::readable(addr, len)
        }
    }

    /// Writes one random chain whose readable part starts with `header` (at
    /// most 512 bytes of it) and makes it available; returns its head and
    /// its buffers in chain order, as the device sees them if the chain is
    /// valid (an indirect table flattened).
    pub fn add(&mut self, rng: &mut XorShift, driver: &mut MockDriver, header: &[u8]) -> (u16, Vec<RawDescriptor>) {
        let slot = self.slot;
        self.slot = (self.slot + 1) % FUZZ_SLOTS;
        let mem = driver.memory().clone();
        let header = &header[..header.len().min(FUZZ_SLOT_SIZE as usize)];
        let header_addr = self.scratch + slot * FUZZ_SLOT_SIZE;
        mem.write_slice(header, GuestAddress(header_addr)).unwrap();
        let mut descs = Vec::new();
        if !header.is_empty() {
            // Sometimes cut short: the device sees a truncated header.
            let hlen = if rng.chance(8) { rng.below(header.len() as u64) } else { header.len() as u64 };
            let mut cuts: Vec<u64> = (1..1 + rng.below(3)).map(|_| rng.below(hlen + 1)).collect();
            cuts.push(0);
            cuts.push(hlen);
            cuts.sort_unstable();
            for w in cuts.windows(2) {
                descs.push(RawDescriptor::readable(header_addr + w[0], (w[1] - w[0]) as u32));
            }
        }
        for _ in 0..rng.below(3) {
            descs.push(self.buffer(rng, false));
        }
        for _ in 0..rng.below(4) {
            descs.push(self.buffer(rng, true));
        }
        if descs.is_empty() {
            let writable = rng.chance(50);
            descs.push(self.buffer(rng, writable));
        }
        let fatal = rng.chance(self.fatal_percent);
        if fatal {
            let i = rng.below(descs.len() as u64) as usize;
            match rng.below(4) {
                0 => {
                    descs[i].addr = rng.pick(&[0xdead_0000_0000u64, u64::MAX - 7, 1 << 40]);
                    descs[i].len = descs[i].len.max(1);
                }
                1 => descs[i].len = u32::MAX,
                2 => {
                    // A readable buffer after a writable one.
                    descs[0].flags |= VIRTQ_DESC_F_WRITE;
                    descs.push(self.buffer(rng, false));
                }
                _ => {
                    // A loop: the last descriptor continues at the head.
                    descs.truncate(usize::from(driver.size()));
                    let head = driver.write_chain(&descs);
                    let last = (head + descs.len() as u16 - 1) % driver.size();
                    driver.write_desc(last, descs[descs.len() - 1].with_next(head));
                    driver.publish(head);
                    return (head, descs);
                }
            }
        }
        descs.truncate(usize::from(driver.size()));
        let flat = descs.clone();
        let indirect = rng.chance(20);
        let descs = if indirect {
            let table = self.scratch + (FUZZ_SLOTS + slot) * FUZZ_SLOT_SIZE;
            let linked: Vec<RawDescriptor> = descs
                .iter()
                .enumerate()
                .map(|(i, d)| if i + 1 < descs.len() { d.with_next(i as u16 + 1) } else { *d })
                .collect();
            let bytes: Vec<u8> = linked.iter().flat_map(|d| d.to_bytes()).collect();
            mem.write_slice(&bytes, GuestAddress(table)).unwrap();
            // A table length that is sometimes not a whole number of entries.
            let mut len = bytes.len() as u32;
            if fatal && rng.chance(50) {
                len = rng.pick(&[0, len + 3, len - 1]);
            }
            vec![RawDescriptor { addr: table, len, flags: VIRTQ_DESC_F_INDIRECT, next: 0 }]
        } else {
            descs
        };
        let head = driver.add_chain(&descs);
        (head, flat)
    }
}
