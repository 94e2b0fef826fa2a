//! Randomized tests of the split virtqueue against guest memory full of
//! garbage: random ring sizes and addresses (some partly or wholly outside
//! RAM, misaligned, near the top of the address space), random descriptors
//! (flags, `next` loops, indirect tables of random lengths and places), random
//! `avail.idx`, `EVENT_IDX` on and off, a queue stopped under the device;
//! then random sequences of every device-side operation. Whatever the guest
//! wrote: no panic, errors that say what went wrong, `pop` consumes at most
//! one ring entry per call and a drain ends, and the device writes nothing
//! but the used ring and the writable buffers of chains it was told to fill.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::test_utils::XorShift;
use super::*;

/// Two RAM regions with a hole between them.
const R0: (u64, usize) = (0, 0x6000);
const R1: (u64, usize) = (0x7000, 0x2000);
const HOLE: u64 = 0x6000;
const RAM_END: u64 = R1.0 + R1.1 as u64;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(R0.0), R0.1), (GuestAddress(R1.0), R1.1)]).unwrap()
}

/// A copy of all of guest memory.
fn snapshot(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut v = vec![0u8; R0.1 + R1.1];
    let (a, b) = v.split_at_mut(R0.1);
    mem.read_slice(a, GuestAddress(R0.0)).unwrap();
    mem.read_slice(b, GuestAddress(R1.0)).unwrap();
    v
}

fn guest_addr(index: usize) -> u64 {
    if index < R0.1 {
        R0.0 + index as u64
    } else {
        R1.0 + (index - R0.1) as u64
    }
}

/// Asserts that every byte that changed from `before` lies in one of `allowed`
/// (`[start, end)` guest ranges).
fn assert_only_changed(mem: &GuestMemoryMmap, before: &[u8], allowed: &[(u64, u64)], what: &str) -> Vec<u8> {
    let after = snapshot(mem);
    if after != before {
        for (i, (a, b)) in before.iter().zip(&after).enumerate() {
            if a != b {
                let addr = guest_addr(i);
                assert!(
                    allowed.iter().any(|&(s, e)| (s..e).contains(&addr)),
                    "{what}: byte at {addr:#x} changed ({a:#x} -> {b:#x}) outside {allowed:x?}"
                );
            }
        }
    }
    after
}

/// A ring address: mostly aligned and inside RAM, sometimes straddling the
/// end of a region, in the hole, misaligned, near 2^64 or anything at all.
fn ring_addr(rng: &mut XorShift, align: u64, len: u64) -> u64 {
    let inside = |rng: &mut XorShift, base: u64, size: u64| {
        let room = size.saturating_sub(len);
        (base + rng.below(room + 1)) & !(align - 1)
    };
    match rng.below(24) {
        0..=15 => inside(rng, R0.0, R0.1 as u64),
        16 | 17 => inside(rng, R1.0, R1.1 as u64),
        18 => (R0.1 as u64).saturating_sub(len / 2) & !(align - 1),
        19 => (RAM_END - len / 2) & !(align - 1),
        20 => HOLE + (rng.below(0x1000) & !(align - 1)),
        21 => (u64::MAX - rng.below(64)) & !(align - 1),
        22 => inside(rng, R0.0, R0.1 as u64) | 1,
        _ => rng.next_u64(),
    }
}

/// A buffer address: mostly in RAM (sometimes straddling a region's end), or
/// in the hole, past RAM, near 2^64.
fn buf_addr(rng: &mut XorShift) -> u64 {
    match rng.below(10) {
        0..=4 => rng.below(R0.1 as u64),
        5 | 6 => R1.0 + rng.below(R1.1 as u64),
        7 => HOLE + rng.below(0x1000),
        8 => u64::MAX - rng.below(0x100),
        _ => rng.next_u64(),
    }
}

fn buf_len(rng: &mut XorShift, size: u16) -> u32 {
    match rng.below(10) {
        0 => 0,
        1..=3 => rng.below(64) as u32,
        4 | 5 => rng.below(0x2000) as u32,
        6 => u32::MAX - rng.below(2) as u32,
        // Indirect table lengths: multiples of 16 up to twice the queue size.
        7 | 8 => 16 * (1 + rng.below(2 * u64::from(size.max(1)))) as u32,
        _ => rng.next_u64() as u32,
    }
}

fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..16].copy_from_slice(&next.to_le_bytes());
    b
}

/// A descriptor of a table of `entries` entries, at index `i`: well formed
/// `sane` percent of the time (a small buffer in RAM, chained forward), else
/// anything.
fn random_desc(rng: &mut XorShift, sane: u64, size: u16, entries: u16, i: u16) -> [u8; 16] {
    if rng.chance(sane) {
        let len = rng.below(256);
        let addr = rng.below(R0.1 as u64 - len);
        let mut flags = if rng.chance(50) { VIRTQ_DESC_F_WRITE } else { 0 };
        if rng.chance(40) {
            flags |= VIRTQ_DESC_F_NEXT;
        }
        return desc_bytes(addr, len as u32, flags, (i + 1) % entries.max(1));
    }
    let mut flags = 0u16;
    if rng.chance(55) {
        flags |= VIRTQ_DESC_F_NEXT;
    }
    if rng.chance(40) {
        flags |= VIRTQ_DESC_F_WRITE;
    }
    if rng.chance(12) {
        flags |= VIRTQ_DESC_F_INDIRECT;
    }
    if rng.chance(5) {
        flags |= rng.next_u64() as u16 & !7;
    }
    let next = match rng.below(10) {
        // Forward, to itself, backwards: chains, loops, cycles.
        0..=4 => (i + 1) % entries.max(1),
        5 => i,
        6 | 7 => rng.below(u64::from(entries.max(1))) as u16,
        _ => rng.next_u64() as u16,
    };
    desc_bytes(buf_addr(rng), buf_len(rng, size), flags, next)
}

/// Writes `bytes` at `addr` if it is wholly in RAM (a driver cannot write
/// elsewhere either).
fn poke(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) {
    let _ = mem.write_slice(bytes, GuestAddress(addr));
}

/// The layout and contents the driver made for one round.
struct Round {
    size: u16,
    sane: u64,
}

/// Sets up `q` and guest memory for one round of garbage.
fn garbage_round(rng: &mut XorShift, mem: &GuestMemoryMmap, q: &mut Queue) -> Round {
    let mut all = vec![0u8; R0.1 + R1.1];
    rng.fill(&mut all);
    poke(mem, R0.0, &all[..R0.1]);
    poke(mem, R1.0, &all[R0.1..]);

    let max_size = 1u16 << rng.below(9);
    *q = Queue::new(max_size);
    let size = match rng.below(24) {
        0 => 0,
        1 => rng.next_u64() as u16,
        2 => max_size.wrapping_mul(2),
        3 => 3,
        _ => 1 << rng.below(u64::from(max_size.trailing_zeros()) + 1),
    };
    q.set_size(size);
    let sz = if size.is_power_of_two() { size } else { max_size };
    // Most rounds have every ring in RAM; the others anything.
    let (desc, avail, used) = if rng.chance(70) {
        let mut at = |align: u64, len: u64| (rng.below(R0.1 as u64 - len)) & !(align - 1);
        (
            at(DESC_TABLE_ALIGN, desc_table_size(sz)),
            at(AVAIL_RING_ALIGN, avail_ring_size(sz)),
            at(USED_RING_ALIGN, used_ring_size(sz)),
        )
    } else {
        (
            ring_addr(rng, DESC_TABLE_ALIGN, desc_table_size(sz)),
            ring_addr(rng, AVAIL_RING_ALIGN, avail_ring_size(sz)),
            ring_addr(rng, USED_RING_ALIGN, used_ring_size(sz)),
        )
    };
    // Through the 32-bit halves sometimes, as virtio-mmio writes them.
    if rng.chance(50) {
        q.set_desc_table(desc);
        q.set_avail_ring(avail);
        q.set_used_ring(used);
    } else {
        q.set_desc_table_lo(desc as u32);
        q.set_desc_table_hi((desc >> 32) as u32);
        q.set_avail_ring_lo(avail as u32);
        q.set_avail_ring_hi((avail >> 32) as u32);
        q.set_used_ring_lo(used as u32);
        q.set_used_ring_hi((used >> 32) as u32);
    }
    q.set_ready(!rng.chance(3));
    q.set_event_idx(rng.chance(50));
    if rng.chance(30) {
        q.set_next_avail(rng.next_u64() as u16);
        q.set_next_used(rng.next_u64() as u16);
    }

    // Descriptors with structure (most of them) amid the random bytes; some
    // rounds mostly well formed, some mostly not.
    let sane = rng.pick(&[0, 50, 80, 95]);
    for i in 0..sz {
        if rng.chance(85) {
            poke(mem, desc.wrapping_add(16 * u64::from(i)), &random_desc(rng, sane, sz, sz, i));
        }
    }
    // A few indirect tables, also structured, where some descriptors point.
    for _ in 0..rng.below(4) {
        let i = rng.below(u64::from(sz)) as u16;
        let entries = 1 + rng.below(u64::from(sz) + 1) as u16;
        let table = rng.below(R0.1 as u64 - 16 * u64::from(entries)) & !15;
        let len = if rng.chance(80) { 16 * u32::from(entries) } else { buf_len(rng, sz) };
        let flags = VIRTQ_DESC_F_INDIRECT | if rng.chance(10) { VIRTQ_DESC_F_NEXT } else { 0 };
        poke(mem, desc.wrapping_add(16 * u64::from(i)), &desc_bytes(table, len, flags, 0));
        for j in 0..entries {
            poke(mem, table + 16 * u64::from(j), &random_desc(rng, sane, sz, entries, j));
        }
    }
    // The available ring: idx a little ahead of the device (or anywhere),
    // entries mostly valid heads.
    let ahead = match rng.below(20) {
        0 => rng.next_u64() as u16,
        1 => sz + rng.below(2) as u16 + 1,
        _ => rng.below(u64::from(sz) + 1) as u16,
    };
    poke(mem, avail.wrapping_add(2), &q.next_avail().wrapping_add(ahead).to_le_bytes());
    for i in 0..sz {
        let head = if rng.chance(85) { rng.below(u64::from(sz)) as u16 } else { rng.next_u64() as u16 };
        poke(mem, avail.wrapping_add(4 + 2 * u64::from(i)), &head.to_le_bytes());
    }
    Round { size: sz, sane }
}

/// Checks what `pop` promises about a chain it returned.
fn check_chain(mem: &GuestMemoryMmap, q: &Queue, chain: &DescriptorChain) {
    assert!(chain.head_index < q.size(), "head {} of a queue of {}", chain.head_index, q.size());
    assert!(chain.descriptors.len() <= usize::from(q.size()), "chain longer than the queue");
    assert!(chain.total_len() <= 1 << 32);
    let mut seen_writable = false;
    for d in &chain.descriptors {
        if d.writable {
            seen_writable = true;
        } else {
            assert!(!seen_writable, "readable after writable in {chain:?}");
        }
        if d.len > 0 {
            assert!(d.addr.checked_add(u64::from(d.len)).is_some());
            assert!(GuestMemoryBackend::check_range(mem, GuestAddress(d.addr), d.len as usize), "{d:?} outside RAM");
        }
    }
}

/// Whether a `pop` error is about the chain (the ring entry was consumed) rather
/// than the ring or the queue (nothing consumed).
fn chain_error(e: &QueueError) -> bool {
    match e {
        QueueError::HeadOutOfRange { .. }
        | QueueError::NextOutOfRange { .. }
        | QueueError::ChainTooLong { .. }
        | QueueError::ChainTooLarge { .. }
        | QueueError::IndirectWithNext { .. }
        | QueueError::NestedIndirect { .. }
        | QueueError::IndirectTableLen { .. }
        | QueueError::IndirectTableTooLarge { .. }
        | QueueError::IndirectTableOutOfMemory { .. }
        | QueueError::DescriptorOverflow { .. }
        | QueueError::DescriptorOutOfMemory { .. }
        | QueueError::ReadableAfterWritable { .. } => true,
        QueueError::Memory { what, .. } | QueueError::AddressOverflow { what, .. } => {
            matches!(*what, "descriptor" | "indirect table")
        }
        QueueError::NotReady
        | QueueError::InvalidSize { .. }
        | QueueError::Misaligned { .. }
        | QueueError::AvailIdxTooFar { .. } => false,
        QueueError::UsedHeadOutOfRange { .. }
        | QueueError::ReadOutOfBounds { .. }
        | QueueError::WriteOutOfBounds { .. }
        | QueueError::ReadTooLarge { .. } => panic!("pop cannot fail with {e}"),
    }
}

/// One `pop`, checked: at most one ring entry consumed, and exactly one for a
/// chain or an error about a chain.
fn checked_pop(mem: &GuestMemoryMmap, q: &mut Queue) -> Result<Option<DescriptorChain>, QueueError> {
    let before = q.next_avail();
    let r = q.pop(mem);
    let consumed = q.next_avail().wrapping_sub(before);
    match &r {
        Ok(Some(chain)) => {
            check_chain(mem, q, chain);
            assert_eq!(consumed, 1);
        }
        Ok(None) => assert_eq!(consumed, 0),
        Err(e) => {
            // The message renders whatever the values.
            assert!(!e.to_string().is_empty());
            assert_eq!(consumed, u16::from(chain_error(e)), "{e}");
        }
    }
    r
}

#[test]
fn garbage_rings_and_chains_never_panic_and_stay_in_bounds() {
    let mem = memory();
    let mut rng = XorShift::new(0x5eed_0001_d00d_f00d);
    let mut q = Queue::new(1);
    let (mut chains_seen, mut errors_seen, mut writes) = (0u32, 0u32, 0u32);
    let mut kinds = std::collections::BTreeSet::new();
    for _round in 0..400 {
        let round = garbage_round(&mut rng, &mem, &mut q);
        let mut held: Vec<DescriptorChain> = Vec::new();
        let mut before = snapshot(&mem);
        for _op in 0..16 {
            // What the device may write: the used ring, and for a chain write
            // that chain's writable buffers.
            let used = q.used_ring();
            let mut allowed = vec![(used, used.saturating_add(used_ring_size(q.size())))];
            let mut op_is_driver = false;
            match rng.below(16) {
                0..=2 => match checked_pop(&mem, &mut q) {
                    Ok(Some(c)) => {
                        chains_seen += 1;
                        held.push(c);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        errors_seen += 1;
                        let kind = format!("{e:?}");
                        kinds.insert(kind.split([' ', '{']).next().unwrap_or_default().to_string());
                    }
                },
                3 => {
                    // Drain as a device does: pop until nothing or an error,
                    // then re-enable notifications and go round again if told
                    // to. With the driver idle this ends within the number of
                    // entries it made available.
                    let mut pops = 0u32;
                    let mut rounds = 0u32;
                    'drain: loop {
                        rounds += 1;
                        assert!(rounds <= 2, "enable_notification keeps saying there is more");
                        loop {
                            pops += 1;
                            assert!(pops <= u32::from(round.size) + 2, "pop never ends");
                            match checked_pop(&mem, &mut q) {
                                Ok(Some(c)) => {
                                    let _ = q.add_used(&mem, c.head_index, 0);
                                }
                                Ok(None) => break,
                                Err(_) => break 'drain,
                            }
                        }
                        match q.enable_notification(&mem) {
                            Ok(true) => continue,
                            _ => break,
                        }
                    }
                }
                4 | 5 if !held.is_empty() => {
                    // Writes into a chain: bounds-checked against its writable part.
                    let c = &held[rng.below(held.len() as u64) as usize];
                    let avail = c.writable_len();
                    let offset = if rng.chance(80) { rng.below(avail + 2) } else { rng.next_u64() };
                    let n = rng.below(300) as usize;
                    let data = rng.bytes(n);
                    let (r, at) = if rng.chance(50) || offset.min(avail) > 0x1_0000 {
                        (c.write_at(&mem, offset, &data), offset)
                    } else {
                        // Through a writer: skip to the offset, then write.
                        let skip = offset.min(avail);
                        let mut w = c.writer();
                        w.write_all(&mem, &vec![0u8; skip as usize]).unwrap();
                        (w.write_all(&mem, &data), skip)
                    };
                    let fits = at.checked_add(data.len() as u64).is_some_and(|e| e <= avail);
                    match r {
                        Ok(()) => assert!(fits),
                        Err(QueueError::WriteOutOfBounds { .. }) => assert!(!fits),
                        Err(e) => panic!("write into a validated chain failed: {e}"),
                    }
                    allowed.extend(c.writable().map(|d| (d.addr, d.addr + u64::from(d.len))));
                    writes += 1;
                }
                6 if !held.is_empty() => {
                    let c = &held[rng.below(held.len() as u64) as usize];
                    let avail = c.readable_len();
                    let mut buf = vec![0u8; rng.below(300) as usize];
                    let offset = if rng.chance(80) { rng.below(avail + 2) } else { rng.next_u64() };
                    let fits = offset.checked_add(buf.len() as u64).is_some_and(|e| e <= avail);
                    match c.read_at(&mem, offset, &mut buf) {
                        Ok(()) => assert!(fits),
                        Err(QueueError::ReadOutOfBounds { .. }) => assert!(!fits),
                        Err(e) => panic!("read of a validated chain failed: {e}"),
                    }
                    let cap = rng.below(0x4000) as usize;
                    match c.read_all_capped(&mem, cap) {
                        Ok(v) => assert_eq!(v.len() as u64, avail),
                        Err(QueueError::ReadTooLarge { .. }) => assert!(avail > cap as u64),
                        Err(e) => panic!("read_all of a validated chain failed: {e}"),
                    }
                    let mut r = c.reader();
                    let _ = r.skip(rng.below(avail + 2));
                    let _ = r.read_obj::<u64>(&mem);
                    assert!(r.consumed() <= avail);
                }
                7 => {
                    // add_used of a popped head, or of anything.
                    let head = match held.pop() {
                        Some(c) if rng.chance(80) => c.head_index,
                        _ => rng.next_u64() as u16,
                    };
                    let before_used = q.next_used();
                    match q.add_used(&mem, head, rng.next_u64() as u32) {
                        Ok(()) => assert_eq!(q.next_used(), before_used.wrapping_add(1)),
                        Err(e) => {
                            assert_eq!(q.next_used(), before_used, "{e}");
                            if let QueueError::UsedHeadOutOfRange { .. } = e {
                                assert!(head >= q.size());
                            }
                        }
                    }
                }
                8 => {
                    let _ = q.needs_notification(&mem);
                }
                9 => {
                    let _ = q.enable_notification(&mem);
                }
                10 => {
                    let _ = q.disable_notification(&mem);
                }
                11 => {
                    let _ = q.has_available(&mem);
                    let _ = q.is_valid(&mem);
                }
                12 => q.undo_pop(),
                13 => {
                    // The driver stops the queue under the running device
                    // (virtio-mmio QueueReady = 0): the transport's copy stops,
                    // the device's sees it.
                    if rng.chance(30) {
                        q.clone().stop();
                    }
                }
                _ => {
                    // The driver scribbles: a new avail.idx, a descriptor, or
                    // random bytes anywhere.
                    op_is_driver = true;
                    match rng.below(3) {
                        0 => {
                            let idx = q.next_avail().wrapping_add(rng.below(u64::from(round.size) + 2) as u16);
                            poke(&mem, q.avail_ring().wrapping_add(2), &idx.to_le_bytes());
                        }
                        1 => {
                            let i = rng.below(u64::from(round.size)) as u16;
                            let d = random_desc(&mut rng, round.sane, round.size, round.size, i);
                            poke(&mem, q.desc_table().wrapping_add(16 * u64::from(i)), &d);
                        }
                        _ => {
                            let addr = rng.below(RAM_END);
                            let n = rng.below(64) as usize;
                            poke(&mem, addr, &rng.bytes(n));
                        }
                    }
                }
            }
            before = if op_is_driver { snapshot(&mem) } else { assert_only_changed(&mem, &before, &allowed, "device") };
        }
    }
    // The garbage exercised good chains, writes and most kinds of error.
    assert!(chains_seen > 100 && errors_seen > 100 && writes > 50, "{chains_seen} {errors_seen} {writes}");
    assert!(kinds.len() >= 12, "{kinds:?}");
}

#[test]
fn a_stopped_queue_with_pending_chains_reports_nothing_more_to_do() {
    // A device drains with pop, then asks enable_notification whether more
    // arrived meanwhile. A queue stopped (QueueReady = 0) with entries still
    // in the available ring pops nothing; if enable_notification then said
    // "more", the device would loop forever on the guest's say-so.
    let mem = memory();
    let mut drv = super::test_utils::MockDriver::new(&mem, GuestAddress(0x1000), 8);
    for event_idx in [false, true] {
        let mut q = drv.queue();
        q.set_event_idx(event_idx);
        drv.add_buffers(&[b"a"], &[]);
        drv.add_buffers(&[b"b"], &[]);
        q.clone().stop();
        assert!(q.pop(&mem).unwrap().is_none());
        assert!(!q.enable_notification(&mem).unwrap(), "event_idx {event_idx}");
        assert!(!q.has_available(&mem).unwrap());
    }
}
