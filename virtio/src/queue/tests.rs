//! Host-side tests of the split virtqueue against [`MockDriver`].

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::test_utils::{guest_memory, MockDriver, RawDescriptor};
use super::*;

const MEM_SIZE: usize = 0x10_0000; // 1 MiB
const QSIZE: u16 = 16;

fn setup(size: u16) -> (GuestMemoryMmap, MockDriver, Queue) {
    let mem = guest_memory(MEM_SIZE);
    let drv = MockDriver::new(&mem, GuestAddress(0x1000), size);
    let q = drv.queue();
    (mem, drv, q)
}

fn pop_err(q: &mut Queue, mem: &GuestMemoryMmap) -> QueueError {
    match q.pop(mem) {
        Err(e) => e,
        Ok(c) => panic!("expected an error, got {c:?}"),
    }
}

// ---------------------------------------------------------------------------
// Round trips

#[test]
fn simple_chain_round_trip() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    let head = drv.add_buffers(&[b"hello", b" world"], &[8, 8]);
    assert!(q.has_available(&mem).unwrap());

    let chain = q.pop(&mem).unwrap().expect("a chain");
    assert_eq!(chain.head_index, head);
    assert_eq!(chain.descriptors.len(), 4);
    assert_eq!(chain.readable().count(), 2);
    assert_eq!(chain.writable().count(), 2);
    assert_eq!(chain.readable_len(), 11);
    assert_eq!(chain.writable_len(), 16);
    assert_eq!(chain.total_len(), 27);
    assert_eq!(chain.read_all(&mem).unwrap(), b"hello world");
    assert_eq!(q.next_avail(), 1);

    // A reply spanning both writable buffers.
    let mut w = chain.writer();
    w.write_all(&mem, b"0123456789").unwrap();
    assert_eq!(w.written(), 10);
    assert_eq!(w.remaining(), 6);
    let wr: Vec<_> = chain.writable().copied().collect();
    assert_eq!(drv.read(wr[0].addr, 8), b"01234567");
    assert_eq!(drv.read(wr[1].addr, 2), b"89");

    q.add_used(&mem, chain.head_index, w.written()).unwrap();
    assert_eq!(q.next_used(), 1);
    assert_eq!(drv.used_idx(), 1);
    assert_eq!(drv.used_elem(0), (u32::from(head), 10));

    assert!(q.pop(&mem).unwrap().is_none());
    assert!(!q.has_available(&mem).unwrap());
}

#[test]
fn empty_ring_pops_none() {
    let (mem, _drv, mut q) = setup(QSIZE);
    assert!(q.pop(&mem).unwrap().is_none());
    assert_eq!(q.next_avail(), 0);
}

#[test]
fn multiple_chains_in_order_and_used_out_of_order() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    let heads: Vec<u16> = (0..3u8).map(|i| drv.add_buffers(&[&[i; 4]], &[4])).collect();
    let chains: Vec<_> = (0..3).map(|_| q.pop(&mem).unwrap().unwrap()).collect();
    assert!(q.pop(&mem).unwrap().is_none());
    for (i, c) in chains.iter().enumerate() {
        assert_eq!(c.head_index, heads[i]);
        assert_eq!(c.read_all(&mem).unwrap(), vec![i as u8; 4]);
    }
    // Completed in reverse order.
    for c in chains.iter().rev() {
        q.add_used(&mem, c.head_index, 4).unwrap();
    }
    assert_eq!(drv.used_idx(), 3);
    assert_eq!(drv.used_elem(0).0, u32::from(heads[2]));
    assert_eq!(drv.used_elem(1).0, u32::from(heads[1]));
    assert_eq!(drv.used_elem(2).0, u32::from(heads[0]));
}

#[test]
fn full_ring_of_size_entries_is_accepted() {
    let size = 4;
    let (mem, mut drv, mut q) = setup(size);
    for _ in 0..size {
        drv.add_chain(&[RawDescriptor::writable(drv.desc_table(), 0)]);
    }
    for _ in 0..size {
        assert!(q.pop(&mem).unwrap().is_some());
    }
    assert!(q.pop(&mem).unwrap().is_none());
}

#[test]
fn index_wraps_from_65535_to_0() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    drv.set_avail_idx(65534);
    q.set_next_avail(65534);
    q.set_next_used(65534);
    let heads: Vec<u16> = (0..4u8).map(|i| drv.add_buffers(&[&[i]], &[])).collect();
    assert_eq!(drv.avail_idx(), 2);
    for (i, head) in heads.iter().enumerate() {
        let c = q.pop(&mem).unwrap().unwrap();
        assert_eq!(c.head_index, *head);
        assert_eq!(c.read_all(&mem).unwrap(), vec![i as u8]);
        q.add_used(&mem, c.head_index, 0).unwrap();
    }
    assert!(q.pop(&mem).unwrap().is_none());
    assert_eq!(q.next_avail(), 2);
    assert_eq!(q.next_used(), 2);
    assert_eq!(drv.used_idx(), 2);
    // Entries 65534, 65535, 0, 1 sit in slots 14, 15, 0, 1.
    assert_eq!(drv.used_elem(65534 % QSIZE).0, u32::from(heads[0]));
    assert_eq!(drv.used_elem(65535 % QSIZE).0, u32::from(heads[1]));
    assert_eq!(drv.used_elem(0).0, u32::from(heads[2]));
    assert_eq!(drv.used_elem(1).0, u32::from(heads[3]));
}

#[test]
fn indirect_chain_is_flattened() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    let head = drv.add_indirect_buffers(&[b"abc", b"def"], &[4, 4]);
    let c = q.pop(&mem).unwrap().unwrap();
    assert_eq!(c.head_index, head);
    assert_eq!(c.descriptors.len(), 4);
    assert_eq!(c.descriptors.iter().map(|d| d.writable).collect::<Vec<_>>(), [false, false, true, true]);
    assert_eq!(c.read_all(&mem).unwrap(), b"abcdef");
    c.write_at(&mem, 2, b"wxyz").unwrap();
    let wr: Vec<_> = c.writable().copied().collect();
    assert_eq!(drv.read(wr[0].addr + 2, 2), b"wx");
    assert_eq!(drv.read(wr[1].addr, 2), b"yz");
    q.add_used(&mem, head, 6).unwrap();
    assert_eq!(drv.used_elem(0), (u32::from(head), 6));
}

#[test]
fn direct_descriptors_followed_by_indirect_table() {
    // Spec 2.7.5.3.2: zero or more direct descriptors, then one indirect.
    let (mem, mut drv, mut q) = setup(QSIZE);
    let hdr = drv.alloc_with(b"hdr");
    let out = drv.alloc(8);
    let table = drv.write_indirect_table(&[RawDescriptor::writable(out, 8)]);
    let head = drv.add_chain(&[
        RawDescriptor::readable(hdr, 3),
        RawDescriptor { addr: table, len: 16, flags: VIRTQ_DESC_F_INDIRECT, next: 0 },
    ]);
    let c = q.pop(&mem).unwrap().unwrap();
    assert_eq!(c.head_index, head);
    assert_eq!(
        c.descriptors,
        [Descriptor { addr: hdr, len: 3, writable: false }, Descriptor { addr: out, len: 8, writable: true },]
    );
}

#[test]
fn write_flag_of_the_indirect_descriptor_is_ignored() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    let data = drv.alloc_with(b"in");
    let table = drv.write_indirect_table(&[RawDescriptor::readable(data, 2)]);
    drv.add_chain(&[RawDescriptor {
        addr: table,
        len: 16,
        flags: VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE,
        next: 0,
    }]);
    let c = q.pop(&mem).unwrap().unwrap();
    assert_eq!(c.readable().count(), 1);
    assert_eq!(c.read_all(&mem).unwrap(), b"in");
}

#[test]
fn zero_length_descriptors_are_allowed() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    let data = drv.alloc_with(b"xy");
    // A zero-length buffer's address is never used, even if it is nonsense.
    drv.add_chain(&[
        RawDescriptor::readable(u64::MAX, 0),
        RawDescriptor::readable(data, 2),
        RawDescriptor::writable(0xdead_0000_0000, 0),
    ]);
    let c = q.pop(&mem).unwrap().unwrap();
    assert_eq!(c.descriptors.len(), 3);
    assert_eq!(c.read_all(&mem).unwrap(), b"xy");
    assert_eq!(c.writable_len(), 0);
    assert!(matches!(c.write_at(&mem, 0, b"z"), Err(QueueError::WriteOutOfBounds { .. })));
    c.write_at(&mem, 0, b"").unwrap();
}

#[test]
fn buffer_spanning_adjacent_regions_is_accepted_but_not_across_a_hole() {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10000),
        (GuestAddress(0x10000), 0x10000),
        (GuestAddress(0x30000), 0x10000),
    ])
    .unwrap();
    let mut drv = MockDriver::new(&mem, GuestAddress(0x1000), QSIZE);
    let mut q = drv.queue();
    mem.write_slice(b"abcdefgh", GuestAddress(0xfffc)).unwrap();
    drv.add_chain(&[RawDescriptor::readable(0xfffc, 8)]);
    let c = q.pop(&mem).unwrap().unwrap();
    assert_eq!(c.read_all(&mem).unwrap(), b"abcdefgh");

    drv.add_chain(&[RawDescriptor::readable(0x1fffc, 8)]);
    assert!(matches!(pop_err(&mut q, &mem), QueueError::DescriptorOutOfMemory { addr: 0x1fffc, .. }));
}

// ---------------------------------------------------------------------------
// Notification suppression

#[test]
fn needs_notification_follows_no_interrupt_flag() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    let h = drv.add_buffers(&[b"a"], &[]);
    q.pop(&mem).unwrap().unwrap();
    q.add_used(&mem, h, 0).unwrap();
    assert!(q.needs_notification(&mem).unwrap());

    drv.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT);
    let h = drv.add_buffers(&[b"a"], &[]);
    q.pop(&mem).unwrap().unwrap();
    q.add_used(&mem, h, 0).unwrap();
    assert!(!q.needs_notification(&mem).unwrap());
}

#[test]
fn needs_notification_false_when_nothing_was_added() {
    let (mem, _drv, mut q) = setup(QSIZE);
    assert!(!q.needs_notification(&mem).unwrap());
    q.set_event_idx(true);
    assert!(!q.needs_notification(&mem).unwrap());
}

/// Adds one chain, pops it and returns it to the used ring.
fn complete_one(mem: &GuestMemoryMmap, drv: &mut MockDriver, q: &mut Queue) {
    let h = drv.add_buffers(&[b"a"], &[]);
    let c = q.pop(mem).unwrap().unwrap();
    assert_eq!(c.head_index, h);
    q.add_used(mem, h, 0).unwrap();
}

#[test]
fn event_idx_needs_notification_around_used_event() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    q.set_event_idx(true);
    // With EVENT_IDX the NO_INTERRUPT flag is ignored.
    drv.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT);

    // used_event 0: notify when used.idx goes 0 -> 1, not 1 -> 2.
    drv.set_used_event(0);
    complete_one(&mem, &mut drv, &mut q);
    assert!(q.needs_notification(&mem).unwrap());
    complete_one(&mem, &mut drv, &mut q);
    assert!(!q.needs_notification(&mem).unwrap());

    // used_event 3: 2 -> 3 does not reach it, 3 -> 4 does.
    drv.set_used_event(3);
    complete_one(&mem, &mut drv, &mut q);
    assert!(!q.needs_notification(&mem).unwrap());
    complete_one(&mem, &mut drv, &mut q);
    assert!(q.needs_notification(&mem).unwrap());

    // A batch 4 -> 7 that passes used_event 5 notifies once.
    drv.set_used_event(5);
    for _ in 0..3 {
        complete_one(&mem, &mut drv, &mut q);
    }
    assert!(q.needs_notification(&mem).unwrap());
    // A batch 7 -> 9 entirely past it does not.
    for _ in 0..2 {
        complete_one(&mem, &mut drv, &mut q);
    }
    assert!(!q.needs_notification(&mem).unwrap());
}

#[test]
fn event_idx_needs_notification_across_wrap() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    q.set_event_idx(true);
    drv.set_avail_idx(65535);
    q.set_next_avail(65535);
    q.set_next_used(65535);
    drv.set_used_event(65535);
    // used.idx 65535 -> 0 -> 1 crosses used_event 65535.
    complete_one(&mem, &mut drv, &mut q);
    complete_one(&mem, &mut drv, &mut q);
    assert_eq!(drv.used_idx(), 1);
    assert!(q.needs_notification(&mem).unwrap());
}

#[test]
fn event_idx_notifies_after_65536_entries_unchecked() {
    let (mem, _drv, mut q) = setup(QSIZE);
    q.set_event_idx(true);
    // The modular window of 65536 entries covers every used_event; a
    // 16-bit count would have wrapped to "nothing added".
    for _ in 0..65536u32 {
        q.add_used(&mem, 0, 0).unwrap();
    }
    assert!(q.needs_notification(&mem).unwrap());
}

#[test]
fn flags_notification_suppression() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    q.disable_notification(&mem).unwrap();
    assert_eq!(drv.used_flags(), VIRTQ_USED_F_NO_NOTIFY);
    assert!(!q.enable_notification(&mem).unwrap());
    assert_eq!(drv.used_flags(), 0);

    // A chain made available while notifications were off is reported.
    q.disable_notification(&mem).unwrap();
    drv.add_buffers(&[b"a"], &[]);
    assert!(q.enable_notification(&mem).unwrap());
    q.pop(&mem).unwrap().unwrap();
    assert!(!q.enable_notification(&mem).unwrap());
}

#[test]
fn event_idx_enable_notification_writes_avail_event() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    q.set_event_idx(true);
    assert!(!q.enable_notification(&mem).unwrap());
    assert_eq!(drv.avail_event(), 0);

    drv.add_buffers(&[b"a"], &[]);
    drv.add_buffers(&[b"b"], &[]);
    // Buffers arrived before the device re-enabled: it must pop again.
    assert!(q.enable_notification(&mem).unwrap());
    assert_eq!(drv.avail_event(), 0);
    q.pop(&mem).unwrap().unwrap();
    q.pop(&mem).unwrap().unwrap();
    assert!(!q.enable_notification(&mem).unwrap());
    assert_eq!(drv.avail_event(), 2);

    // disable leaves the flags alone (the device must keep them 0) and
    // avail_event where it was.
    q.disable_notification(&mem).unwrap();
    assert_eq!(drv.used_flags(), 0);
    assert_eq!(drv.avail_event(), 2);
}

#[test]
fn event_idx_draining_the_ring_rearms_avail_event() {
    // A device that only pops (never calls enable_notification) must still
    // be kicked for the next chain: the driver notifies when its avail index
    // crosses avail_event, so draining the ring moves avail_event along.
    let (mem, mut drv, mut q) = setup(QSIZE);
    q.set_event_idx(true);
    for round in 1..=3u16 {
        drv.add_buffers(&[b"a"], &[]);
        drv.add_buffers(&[b"b"], &[]);
        assert!(q.pop(&mem).unwrap().is_some());
        assert!(q.pop(&mem).unwrap().is_some());
        assert_eq!(drv.avail_event(), 2 * round - 2, "avail_event moves only when the ring is found empty");
        assert!(q.pop(&mem).unwrap().is_none());
        assert_eq!(drv.avail_event(), 2 * round, "the driver's next chain crosses avail_event");
    }
    // Without EVENT_IDX an empty pop writes nothing.
    let (mem, drv, mut q) = setup(QSIZE);
    assert!(q.pop(&mem).unwrap().is_none());
    assert_eq!((drv.avail_event(), drv.used_flags()), (0, 0));
}

// ---------------------------------------------------------------------------
// Malformed rings and chains

#[test]
fn avail_idx_too_far_ahead_is_an_error() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    drv.set_avail_idx(QSIZE + 1);
    let e = pop_err(&mut q, &mem);
    assert!(matches!(e, QueueError::AvailIdxTooFar { avail_idx: 17, next_avail: 0, pending: 17, size: QSIZE }));
    assert_eq!(q.next_avail(), 0, "ring errors leave the queue unchanged");
    // Also when avail.idx went backwards (it is then ~65535 ahead).
    drv.set_avail_idx(65535);
    assert!(matches!(pop_err(&mut q, &mem), QueueError::AvailIdxTooFar { .. }));
    assert!(e.to_string().contains("17"));
}

#[test]
fn head_index_out_of_range() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    drv.publish(QSIZE);
    let e = pop_err(&mut q, &mem);
    assert!(matches!(e, QueueError::HeadOutOfRange { ring_index: 0, head: QSIZE, size: QSIZE }));
    assert_eq!(q.next_avail(), 1, "the device moves past a broken chain");
}

#[test]
fn next_index_out_of_range() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    let data = drv.alloc(4);
    drv.write_desc(0, RawDescriptor::readable(data, 4).with_next(QSIZE));
    drv.publish(0);
    assert!(matches!(
        pop_err(&mut q, &mem),
        QueueError::NextOutOfRange { head: 0, table: DescTable::Main, index: 0, next: QSIZE, .. }
    ));
}

#[test]
fn descriptor_loop_is_an_error() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    let data = drv.alloc(4);
    drv.write_desc(0, RawDescriptor::readable(data, 4).with_next(1));
    drv.write_desc(1, RawDescriptor::readable(data, 4).with_next(0));
    drv.publish(0);
    assert!(matches!(pop_err(&mut q, &mem), QueueError::ChainTooLong { head: 0, .. }));

    // A descriptor pointing at itself, made of zero-length buffers.
    drv.write_desc(2, RawDescriptor::readable(0, 0).with_next(2));
    drv.publish(2);
    assert!(matches!(pop_err(&mut q, &mem), QueueError::ChainTooLong { head: 2, .. }));
}

#[test]
fn chain_longer_than_queue_size_via_indirect_is_an_error() {
    let size = 4;
    let (mem, mut drv, mut q) = setup(size);
    let data = drv.alloc(1);
    let table = drv.write_indirect_table(&[
        RawDescriptor::readable(data, 1).with_next(1),
        RawDescriptor::readable(data, 1).with_next(2),
        RawDescriptor::readable(data, 1),
    ]);
    // 2 direct + 3 indirect = 5 > 4.
    drv.add_chain(&[
        RawDescriptor::readable(data, 1),
        RawDescriptor::readable(data, 1),
        RawDescriptor { addr: table, len: 48, flags: VIRTQ_DESC_F_INDIRECT, next: 0 },
    ]);
    assert!(matches!(pop_err(&mut q, &mem), QueueError::ChainTooLong { limit: 4, .. }));
}

#[test]
fn chain_of_more_than_4gib_is_an_error() {
    // Sparse (MAP_NORESERVE) memory: nothing but the rings is touched.
    let mem = guest_memory(0x1_2000_0000);
    let mut drv = MockDriver::new(&mem, GuestAddress(0x1000), QSIZE);
    let mut q = drv.queue();
    drv.add_chain(&[
        RawDescriptor::readable(0x1000_0000, 0x8000_0000),
        RawDescriptor::readable(0x1000_0000, 0x8000_0000),
    ]);
    assert!(q.pop(&mem).unwrap().is_some(), "exactly 2^32 bytes is fine");
    drv.add_chain(&[
        RawDescriptor::readable(0x1000_0000, 0x8000_0000),
        RawDescriptor::readable(0x1000_0000, 0x8000_0001),
    ]);
    assert!(matches!(pop_err(&mut q, &mem), QueueError::ChainTooLarge { .. }));
}

fn indirect_desc(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor { addr, len, flags: VIRTQ_DESC_F_INDIRECT, next: 0 }
}

#[test]
fn indirect_table_length_zero_or_not_multiple_of_16() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    let table = drv.alloc(32);
    for len in [0, 17, 8] {
        drv.add_chain(&[indirect_desc(table, len)]);
        let e = pop_err(&mut q, &mem);
        assert!(matches!(e, QueueError::IndirectTableLen { len: l, .. } if l == len), "{e}");
    }
}

#[test]
fn indirect_table_larger_than_queue_size() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    let table = drv.alloc(16 * (u32::from(QSIZE) + 1));
    drv.add_chain(&[indirect_desc(table, 16 * (u32::from(QSIZE) + 1))]);
    assert!(matches!(pop_err(&mut q, &mem), QueueError::IndirectTableTooLarge { entries: 17, .. }));
}

#[test]
fn indirect_table_outside_memory_or_overflowing() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    for addr in [MEM_SIZE as u64 - 16, MEM_SIZE as u64 + 0x1000, u64::MAX - 15] {
        drv.add_chain(&[indirect_desc(addr, 32)]);
        let e = pop_err(&mut q, &mem);
        assert!(matches!(e, QueueError::IndirectTableOutOfMemory { addr: a, .. } if a == addr), "{e}");
    }
}

#[test]
fn nested_indirect_is_an_error() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    let inner = drv.write_indirect_table(&[RawDescriptor::readable(0x1000, 4)]);
    let outer = drv.write_indirect_table(&[indirect_desc(inner, 16)]);
    drv.add_chain(&[indirect_desc(outer, 16)]);
    assert!(matches!(
        pop_err(&mut q, &mem),
        QueueError::NestedIndirect { table: DescTable::Indirect { addr }, index: 0, .. } if addr == outer
    ));
}

#[test]
fn indirect_with_next_is_an_error() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    let table = drv.write_indirect_table(&[RawDescriptor::readable(0x1000, 4)]);
    let data = drv.alloc(4);
    drv.write_desc(0, indirect_desc(table, 16).with_next(1));
    drv.write_desc(1, RawDescriptor::readable(data, 4));
    drv.publish(0);
    assert!(matches!(pop_err(&mut q, &mem), QueueError::IndirectWithNext { head: 0, index: 0 }));
}

#[test]
fn indirect_next_out_of_range_and_loop() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    let data = drv.alloc(4);
    // next 2 in a table of 2 entries.
    let table = drv.write_indirect_table(&[
        RawDescriptor::readable(data, 4).with_next(1),
        RawDescriptor::readable(data, 4).with_next(2),
    ]);
    drv.add_chain(&[indirect_desc(table, 32)]);
    assert!(matches!(
        pop_err(&mut q, &mem),
        QueueError::NextOutOfRange { index: 1, next: 2, entries: 2, table: DescTable::Indirect { .. }, .. }
    ));

    // 0 -> 1 -> 0 inside the table.
    let table = drv.write_indirect_table(&[
        RawDescriptor::readable(data, 4).with_next(1),
        RawDescriptor::readable(data, 4).with_next(0),
    ]);
    drv.add_chain(&[indirect_desc(table, 32)]);
    assert!(matches!(pop_err(&mut q, &mem), QueueError::ChainTooLong { limit: 2, .. }));
}

#[test]
fn descriptor_address_overflow() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    drv.add_chain(&[RawDescriptor::readable(u64::MAX - 1, 4)]);
    assert!(matches!(
        pop_err(&mut q, &mem),
        QueueError::DescriptorOverflow { addr: 0xffff_ffff_ffff_fffe, len: 4, .. }
    ));
}

#[test]
fn descriptor_outside_guest_memory() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    let end = MEM_SIZE as u64;
    // Entirely outside, straddling the end, and in an indirect table.
    for (addr, len) in [(end + 0x1000, 4u32), (end - 2, 4)] {
        drv.add_chain(&[RawDescriptor::writable(addr, len)]);
        let e = pop_err(&mut q, &mem);
        assert!(
            matches!(e, QueueError::DescriptorOutOfMemory { addr: a, table: DescTable::Main, .. } if a == addr),
            "{e}"
        );
    }
    let table = drv.write_indirect_table(&[RawDescriptor::readable(end, 1)]);
    drv.add_chain(&[indirect_desc(table, 16)]);
    assert!(matches!(
        pop_err(&mut q, &mem),
        QueueError::DescriptorOutOfMemory { table: DescTable::Indirect { .. }, .. }
    ));
}

#[test]
fn readable_after_writable_is_an_error() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    let a = drv.alloc(4);
    let head =
        drv.add_chain(&[RawDescriptor::readable(a, 4), RawDescriptor::writable(a, 4), RawDescriptor::readable(a, 4)]);
    assert!(matches!(
        pop_err(&mut q, &mem),
        QueueError::ReadableAfterWritable { head: h, index, table: DescTable::Main } if h == head && index == head + 2
    ));

    // Across the switch to an indirect table.
    let table = drv.write_indirect_table(&[RawDescriptor::readable(a, 4)]);
    drv.add_chain(&[RawDescriptor::writable(a, 4), indirect_desc(table, 16)]);
    assert!(matches!(
        pop_err(&mut q, &mem),
        QueueError::ReadableAfterWritable { table: DescTable::Indirect { .. }, index: 0, .. }
    ));
}

#[test]
fn unreadable_rings_are_errors_not_panics() {
    let mem = guest_memory(MEM_SIZE);
    let mut q = Queue::new(QSIZE);
    q.set_ready(true);
    q.set_avail_ring(MEM_SIZE as u64 + 0x1000);
    assert!(matches!(q.pop(&mem), Err(QueueError::Memory { .. })));
    assert!(matches!(q.enable_notification(&mem), Err(QueueError::Memory { .. })));
    q.set_used_ring(MEM_SIZE as u64);
    assert!(matches!(q.add_used(&mem, 0, 0), Err(QueueError::Memory { .. })));
    // Addresses that overflow when offset.
    q.set_avail_ring(u64::MAX - 1);
    assert!(matches!(q.pop(&mem), Err(QueueError::AddressOverflow { .. })));
    q.set_used_ring(u64::MAX - 3);
    assert!(matches!(q.add_used(&mem, 0, 0), Err(QueueError::AddressOverflow { .. })));
    // A descriptor table near the top of the address space.
    let mut drv = MockDriver::new(&mem, GuestAddress(0x1000), QSIZE);
    let mut q = drv.queue();
    q.set_desc_table(u64::MAX - 15);
    drv.publish(1);
    assert!(matches!(q.pop(&mem), Err(QueueError::AddressOverflow { .. })));
}

// ---------------------------------------------------------------------------
// Configuration, validity, reset, undo

#[test]
fn is_valid_accepts_a_good_layout() {
    let (mem, _drv, q) = setup(QSIZE);
    assert!(q.is_valid(&mem));
}

#[test]
fn is_valid_rejects_not_ready_and_bad_sizes() {
    let (mem, drv, mut q) = setup(QSIZE);
    q.set_ready(false);
    assert!(!q.is_valid(&mem));
    q.set_ready(true);
    for size in [0, 3, 12, QSIZE * 2, u16::MAX] {
        q.set_size(size);
        assert!(!q.is_valid(&mem), "size {size}");
    }
    // A smaller power of two than the maximum is fine.
    q.set_size(4);
    assert!(q.is_valid(&mem));
    drop(drv);
}

#[test]
fn is_valid_rejects_misaligned_areas() {
    let (mem, drv, mut q) = setup(QSIZE);
    q.set_desc_table(drv.desc_table() + 8);
    assert!(!q.is_valid(&mem));
    let mut q = drv.queue();
    q.set_avail_ring(drv.avail_ring() + 1);
    assert!(!q.is_valid(&mem));
    let mut q = drv.queue();
    q.set_used_ring(drv.used_ring() + 2);
    assert!(!q.is_valid(&mem));
    assert!(matches!(q.pop(&mem), Err(QueueError::Misaligned { .. })));
}

#[test]
fn is_valid_rejects_areas_outside_memory() {
    let (mem, drv, _) = setup(QSIZE);
    let end = MEM_SIZE as u64;
    type Setter = fn(&mut Queue, u64);
    let cases: [(Setter, u64); 6] = [
        (Queue::set_desc_table, end - 16),             // straddles the end
        (Queue::set_desc_table, u64::MAX - 15),        // overflows
        (Queue::set_avail_ring, end - 4),              // straddles the end
        (Queue::set_avail_ring, end + 0x1000),         // outside
        (Queue::set_used_ring, end - 8),               // straddles the end
        (Queue::set_used_ring, 0xffff_ffff_ffff_fffc), // overflows
    ];
    for (set, addr) in cases {
        let mut q = drv.queue();
        set(&mut q, addr);
        assert!(!q.is_valid(&mem), "{addr:#x}");
    }
}

#[test]
fn invalid_size_makes_pop_fail_without_panicking() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    drv.add_buffers(&[b"a"], &[]);
    for size in [0, 5, 64] {
        q.set_size(size);
        assert!(matches!(
            q.pop(&mem),
            Err(QueueError::InvalidSize { size: s, max: QSIZE }) if s == size
        ));
        assert!(q.add_used(&mem, 0, 0).is_err());
        assert!(q.needs_notification(&mem).is_err());
        assert!(q.enable_notification(&mem).is_err());
        assert!(q.disable_notification(&mem).is_err());
    }
}

#[test]
fn not_ready_queue_is_an_error() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    drv.add_buffers(&[b"a"], &[]);
    q.set_ready(false);
    assert!(matches!(q.pop(&mem), Err(QueueError::NotReady)));
}

#[test]
fn add_used_rejects_out_of_range_head() {
    let (mem, drv, mut q) = setup(QSIZE);
    assert!(matches!(q.add_used(&mem, QSIZE, 0), Err(QueueError::UsedHeadOutOfRange { head: QSIZE, size: QSIZE })));
    assert_eq!(drv.used_idx(), 0);
    assert_eq!(q.next_used(), 0);
}

#[test]
fn address_halves() {
    let mut q = Queue::new(8);
    q.set_desc_table_lo(0x1234_5000);
    q.set_desc_table_hi(0xab);
    assert_eq!(q.desc_table(), 0xab_1234_5000);
    q.set_desc_table_lo(0x10);
    assert_eq!(q.desc_table(), 0xab_0000_0010);
    q.set_avail_ring_hi(1);
    q.set_avail_ring_lo(2);
    assert_eq!(q.avail_ring(), 0x1_0000_0002);
    q.set_used_ring_lo(0xffff_fffc);
    q.set_used_ring_hi(0xffff_ffff);
    assert_eq!(q.used_ring(), u64::MAX - 3);
}

#[test]
fn new_and_reset_defaults() {
    let q = Queue::new(256);
    assert_eq!(q.max_size(), 256);
    assert_eq!(q.size(), 256);
    assert!(!q.ready());

    let (mem, mut drv, mut q) = setup(QSIZE);
    q.set_event_idx(true);
    q.set_size(4);
    complete_one(&mem, &mut drv, &mut q);
    q.reset();
    assert_eq!(q.max_size(), QSIZE);
    assert_eq!(q.size(), QSIZE);
    assert!(!q.ready());
    assert!(!q.event_idx());
    assert_eq!((q.desc_table(), q.avail_ring(), q.used_ring()), (0, 0, 0));
    assert_eq!((q.next_avail(), q.next_used()), (0, 0));
    assert!(!q.is_valid(&mem));
    assert!(matches!(q.pop(&mem), Err(QueueError::NotReady)));
}

#[test]
#[should_panic]
fn new_rejects_non_power_of_two_max_size() {
    Queue::new(100);
}

#[test]
fn undo_pop_returns_the_same_chain_again() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    let h1 = drv.add_buffers(&[b"one"], &[]);
    let h2 = drv.add_buffers(&[b"two"], &[]);
    let c = q.pop(&mem).unwrap().unwrap();
    assert_eq!(c.head_index, h1);
    q.undo_pop();
    assert_eq!(q.next_avail(), 0);
    let c = q.pop(&mem).unwrap().unwrap();
    assert_eq!(c.head_index, h1);
    let c = q.pop(&mem).unwrap().unwrap();
    assert_eq!(c.head_index, h2);
    q.undo_pop();
    assert_eq!(q.pop(&mem).unwrap().unwrap().read_all(&mem).unwrap(), b"two");
    assert!(q.pop(&mem).unwrap().is_none());

    // Across the 0 -> 65535 boundary.
    let (mem, mut drv, mut q) = setup(QSIZE);
    drv.set_avail_idx(65535);
    q.set_next_avail(65535);
    let h = drv.add_buffers(&[b"w"], &[]);
    assert_eq!(q.pop(&mem).unwrap().unwrap().head_index, h);
    assert_eq!(q.next_avail(), 0);
    q.undo_pop();
    assert_eq!(q.next_avail(), 65535);
    assert_eq!(q.pop(&mem).unwrap().unwrap().head_index, h);
}

// ---------------------------------------------------------------------------
// Chain access helpers

#[test]
fn read_all_is_capped() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    drv.add_buffers(&[&[7u8; 100], &[8u8; 100]], &[]);
    let c = q.pop(&mem).unwrap().unwrap();
    assert!(matches!(c.read_all_capped(&mem, 199), Err(QueueError::ReadTooLarge { len: 200, cap: 199, .. })));
    let all = c.read_all_capped(&mem, 200).unwrap();
    assert_eq!(&all[..100], &[7u8; 100][..]);
    assert_eq!(&all[100..], &[8u8; 100][..]);

    // The default cap applies to read_all.
    let big = drv.alloc(READ_ALL_CAP as u32 / 2 + 1);
    drv.add_chain(&[
        RawDescriptor::readable(big, READ_ALL_CAP as u32 / 2 + 1),
        RawDescriptor::readable(big, READ_ALL_CAP as u32 / 2),
    ]);
    let c = q.pop(&mem).unwrap().unwrap();
    assert!(matches!(c.read_all(&mem), Err(QueueError::ReadTooLarge { .. })));
}

#[test]
fn read_at_and_reader_cross_buffer_boundaries() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    drv.add_buffers(&[b"ab", b"", b"cdef", b"g"], &[1]);
    let c = q.pop(&mem).unwrap().unwrap();
    let mut buf = [0u8; 4];
    c.read_at(&mem, 1, &mut buf).unwrap();
    assert_eq!(&buf, b"bcde");
    assert!(matches!(
        c.read_at(&mem, 5, &mut buf),
        Err(QueueError::ReadOutOfBounds { offset: 5, len: 4, available: 7, .. })
    ));
    assert!(c.read_at(&mem, u64::MAX, &mut buf).is_err());

    let mut r = c.reader();
    let hdr: [u8; 3] = r.read_obj(&mem).unwrap();
    assert_eq!(&hdr, b"abc");
    r.skip(1).unwrap();
    assert_eq!(r.consumed(), 4);
    assert!(r.skip(4).is_err());
    let mut rest = [0u8; 3];
    r.read_exact(&mem, &mut rest).unwrap();
    assert_eq!(&rest, b"efg");
    assert_eq!(r.remaining(), 0);
    assert!(r.read_exact(&mem, &mut [0u8; 1]).is_err());
}

#[test]
fn writer_is_bounds_checked() {
    let (mem, mut drv, mut q) = setup(QSIZE);
    drv.add_buffers(&[b"req"], &[3, 0, 2]);
    let c = q.pop(&mem).unwrap().unwrap();
    let wr: Vec<_> = c.writable().copied().collect();
    let mut w = c.writer();
    w.write_obj(&mem, 0x0201u16.to_le()).unwrap();
    // Too long for what is left: nothing is written.
    assert!(matches!(
        w.write_all(&mem, b"xyzw"),
        Err(QueueError::WriteOutOfBounds { offset: 2, len: 4, available: 5, .. })
    ));
    assert_eq!(drv.read(wr[0].addr + 2, 1), [0]);
    w.write_all(&mem, b"xyz").unwrap();
    assert_eq!(w.written(), 5);
    assert_eq!(w.remaining(), 0);
    assert_eq!(drv.read(wr[0].addr, 3), [1, 2, b'x']);
    assert_eq!(drv.read(wr[2].addr, 2), b"yz");
    // The readable part is never written.
    assert_eq!(c.read_all(&mem).unwrap(), b"req");
    assert!(c.write_at(&mem, u64::MAX, b"a").is_err());
}

#[test]
fn error_messages_name_the_culprit() {
    let e = QueueError::DescriptorOutOfMemory {
        head: 3,
        table: DescTable::Indirect { addr: 0x5000 },
        index: 2,
        addr: 0xdead_0000,
        len: 0x10,
    };
    let s = e.to_string();
    assert!(s.contains("chain 3"), "{s}");
    assert!(s.contains("descriptor 2"), "{s}");
    assert!(s.contains("indirect table at 0x5000"), "{s}");
    assert!(s.contains("0xdead0000"), "{s}");
}
