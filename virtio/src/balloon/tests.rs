//! Host-side tests of virtio-balloon: mock driver queues in guest memory, the
//! real worker, and real madvise(2) on the test mapping (a page released
//! with MADV_DONTNEED reads back as zeros, which proves the release).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::queue::test_utils::{ChainFuzzer, MockDriver, RawDescriptor, XorShift};

#[derive(Default)]
struct Signals {
    queue: AtomicU32,
    config: AtomicU32,
    resets: AtomicU32,
}
impl VirtioInterrupt for Signals {
    fn notify_queue(&self, _: u16) {
        self.queue.fetch_add(1, Ordering::SeqCst);
    }
    fn notify_config(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
}
impl DeviceStatusSink for Signals {
    fn needs_reset(&self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
    }
}

const MB: usize = 1 << 20;
/// Guest RAM for ballooned pages, two adjacent regions of 1 MiB.
const RAM_A: u64 = 0x100_0000;
const RAM_B: u64 = 0x110_0000;
/// A region whose size is not a multiple of 4 KiB: its second page straddles the end.
const ODD: u64 = 0x200_0000;
const ODD_LEN: usize = 0x1800;
/// Not guest memory.
const HOLE: u64 = 0x300_0000;

fn pfn(addr: u64) -> u32 {
    (addr >> VIRTIO_BALLOON_PFN_SHIFT) as u32
}

fn all_features() -> u64 {
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BALLOON_F_STATS_VQ) | (1 << VIRTIO_BALLOON_F_PAGE_REPORTING)
}

/// One region per possible queue (so the mock drivers' data areas do not
/// overlap), then the RAM the tests balloon.
fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), MB),
        (GuestAddress(0x20_0000), MB),
        (GuestAddress(0x40_0000), MB),
        (GuestAddress(0x60_0000), MB),
        (GuestAddress(RAM_A), MB),
        (GuestAddress(RAM_B), MB),
        (GuestAddress(ODD), ODD_LEN),
    ])
    .unwrap()
}

/// Mock drivers and active queues for every queue the `acked` features give.
fn queues(mem: &GuestMemoryMmap, acked: u64, size: u16) -> (Vec<(QueueRole, MockDriver)>, Vec<ActiveQueue>) {
    let mut drivers = Vec::new();
    let mut active = Vec::new();
    for index in 0..4u16 {
        let Some(role) = queue_role(acked, index) else { continue };
        let d = MockDriver::new(mem, GuestAddress(u64::from(index) * 0x20_0000 + 0x1000), size);
        active.push(ActiveQueue { index, queue: d.queue(), notify: EventFd::new(libc::EFD_NONBLOCK).unwrap() });
        drivers.push((role, d));
    }
    (drivers, active)
}

struct Harness {
    mem: GuestMemoryMmap,
    drivers: Vec<(QueueRole, MockDriver)>,
    worker: BalloonWorker,
    control: BalloonControl,
    signals: Arc<Signals>,
}

fn harness(acked: u64) -> Harness {
    let mem = memory();
    let (drivers, active) = queues(&mem, acked, 16);
    let (balloon, control) = Balloon::new(false);
    let signals = Arc::new(Signals::default());
    let worker = BalloonWorker {
        mem: mem.clone(),
        queues: active.into_iter().map(|q| (queue_role(acked, q.index).unwrap(), q)).collect(),
        stats_wake: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        shared: balloon.shared.clone(),
        interrupt: signals.clone(),
        status: signals.clone(),
        broken: false,
        held_stats: None,
        pfn_log: LogLimiter::default(),
        range_log: LogLimiter::default(),
        request_log: LogLimiter::default(),
    };
    Harness { mem, drivers, worker, control, signals }
}

impl Harness {
    fn driver(&mut self, role: QueueRole) -> &mut MockDriver {
        &mut self.drivers.iter_mut().find(|(r, _)| *r == role).unwrap().1
    }

    /// The driver notifies the queue of `role`; the worker handles it.
    fn kick(&mut self, role: QueueRole) {
        let (_, q) = self.worker.queues.iter().find(|(r, _)| *r == role).unwrap();
        q.notify.write(1).unwrap();
        let token = u64::from(q.index);
        self.worker.ready(token, EventSet::IN);
    }

    fn send_pfns(&mut self, role: QueueRole, pfns: &[u32]) -> u16 {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        let head = self.driver(role).add_buffers(&[&bytes], &[]);
        self.kick(role);
        head
    }

    fn fill(&self, addr: u64, len: usize, byte: u8) {
        self.mem.write_slice(&vec![byte; len], GuestAddress(addr)).unwrap();
    }

    fn is_filled(&self, addr: u64, len: usize, byte: u8) -> bool {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf.iter().all(|&b| b == byte)
    }

    fn resets(&self) -> u32 {
        self.signals.resets.load(Ordering::SeqCst)
    }
}

#[test]
fn queue_roles_follow_the_negotiated_features() {
    let v1 = 1u64 << VIRTIO_F_VERSION_1;
    let stats = 1u64 << VIRTIO_BALLOON_F_STATS_VQ;
    let report = 1u64 << VIRTIO_BALLOON_F_PAGE_REPORTING;
    assert_eq!(queue_role(v1, 0), Some(QueueRole::Inflate));
    assert_eq!(queue_role(v1, 1), Some(QueueRole::Deflate));
    assert_eq!(queue_role(v1, 2), None);
    assert_eq!(queue_role(v1 | stats, 2), Some(QueueRole::Stats));
    assert_eq!(queue_role(v1 | stats, 3), None);
    assert_eq!(queue_role(v1 | report, 2), Some(QueueRole::Reporting));
    assert_eq!(queue_role(v1 | stats | report, 2), Some(QueueRole::Stats));
    assert_eq!(queue_role(v1 | stats | report, 3), Some(QueueRole::Reporting));
    assert_eq!(queue_role(v1 | stats | report, 4), None);
}

#[test]
fn inflate_releases_the_pages() {
    let mut h = harness(all_features());
    h.fill(RAM_A, 5 * 4096, 0xa5);
    // Unsorted: pages 0, 1, 2 of RAM_A (page 3 and 4 stay).
    let head = h.send_pfns(QueueRole::Inflate, &[pfn(RAM_A) + 2, pfn(RAM_A), pfn(RAM_A) + 1]);
    assert!(h.is_filled(RAM_A, 3 * 4096, 0), "inflated pages must read as zero after DONTNEED");
    assert!(h.is_filled(RAM_A + 3 * 4096, 2 * 4096, 0xa5), "neighbours must be untouched");
    let c = h.control.counters();
    assert_eq!(c.inflated_pages, 3);
    assert_eq!(c.discard_calls, 1, "adjacent PFNs are one madvise call");
    assert_eq!(c.skipped_pfns, 0);
    let d = h.driver(QueueRole::Inflate);
    assert_eq!(d.used_elem(0), (u32::from(head), 0));
    assert_eq!(h.signals.queue.load(Ordering::SeqCst), 1);
    // Released pages come back on access, usable as before.
    h.fill(RAM_A, 4096, 0x11);
    assert!(h.is_filled(RAM_A, 4096, 0x11));
}

#[test]
fn adjacent_pfns_are_coalesced_per_run_and_per_region() {
    let mut h = harness(all_features());
    let a = pfn(RAM_A);
    // Runs: [a, a+1], [a+5..=a+7] (given out of order, with a duplicate), [a+10].
    h.send_pfns(QueueRole::Inflate, &[a + 7, a, a + 5, a + 1, a + 6, a + 10, a + 5]);
    let c = h.control.counters();
    assert_eq!(c.discard_calls, 3);
    assert_eq!(c.inflated_pages, 6);
    // The last page of RAM_A and the first of RAM_B are adjacent in guest
    // memory but in different mappings: two calls.
    let last_a = pfn(RAM_B) - 1;
    h.fill(RAM_B - 4096, 8192, 0x5a);
    h.send_pfns(QueueRole::Inflate, &[last_a, last_a + 1]);
    let c = h.control.counters();
    assert_eq!(c.discard_calls, 5);
    assert_eq!(c.inflated_pages, 8);
    assert!(h.is_filled(RAM_B - 4096, 8192, 0));
}

#[test]
fn pfns_outside_guest_ram_are_skipped() {
    let mut h = harness(all_features());
    h.fill(ODD, ODD_LEN, 0x77);
    h.send_pfns(
        QueueRole::Inflate,
        &[
            u32::MAX,         // far beyond memory
            pfn(HOLE),        // a hole
            pfn(ODD) + 1,     // straddles the end of its region
            pfn(ODD),         // a whole page: released
            pfn(RAM_B) + 256, // just past RAM_B (1 MiB = 256 pages)
        ],
    );
    let c = h.control.counters();
    assert_eq!(c.skipped_pfns, 4);
    assert_eq!(c.inflated_pages, 1);
    assert_eq!(c.discard_calls, 1);
    assert!(h.is_filled(ODD, 4096, 0));
    assert!(h.is_filled(ODD + 4096, ODD_LEN - 4096, 0x77), "the straddling page is not touched");
    assert_eq!(h.driver(QueueRole::Inflate).used_idx(), 1);
    assert_eq!(h.resets(), 0);
}

#[test]
fn deflate_only_counts() {
    let mut h = harness(all_features());
    h.fill(RAM_A, 4 * 4096, 0x42);
    let a = pfn(RAM_A);
    let head = h.send_pfns(QueueRole::Deflate, &[a, a + 1, a + 2, a + 3, u32::MAX]);
    let c = h.control.counters();
    assert_eq!(c.deflated_pages, 5);
    assert_eq!(c.discard_calls, 0);
    assert!(h.is_filled(RAM_A, 4 * 4096, 0x42));
    assert_eq!(h.driver(QueueRole::Deflate).used_elem(0), (u32::from(head), 0));
}

#[test]
fn requests_are_bounded() {
    let mut h = harness(all_features());
    let pfns: Vec<u32> = (0..MAX_PFNS_PER_REQUEST as u32 + 10).collect();
    h.send_pfns(QueueRole::Deflate, &pfns);
    assert_eq!(h.control.counters().deflated_pages, MAX_PFNS_PER_REQUEST as u64);
    // A trailing partial PFN is ignored.
    h.driver(QueueRole::Deflate).add_buffers(&[&[1, 0, 0, 0, 9, 9]], &[]);
    h.kick(QueueRole::Deflate);
    assert_eq!(h.control.counters().deflated_pages, MAX_PFNS_PER_REQUEST as u64 + 1);
    assert_eq!(h.resets(), 0);
}

#[test]
fn malformed_chain_needs_reset() {
    let mut h = harness(all_features());
    h.driver(QueueRole::Inflate).add_chain(&[RawDescriptor::readable(HOLE, 16)]);
    h.kick(QueueRole::Inflate);
    assert_eq!(h.resets(), 1);
    // Broken: nothing more is processed, and the reset is asked once.
    h.send_pfns(QueueRole::Deflate, &[1]);
    assert_eq!(h.control.counters().deflated_pages, 0);
    assert_eq!(h.resets(), 1);
}

fn stats_bytes(entries: &[(u16, u64)]) -> Vec<u8> {
    entries.iter().flat_map(|(t, v)| t.to_le_bytes().into_iter().chain(v.to_le_bytes())).collect()
}

#[test]
fn stats_buffer_is_parsed_held_and_returned_on_request() {
    let mut h = harness(all_features());
    let mut bytes = stats_bytes(&[(4, 1000), (5, 2000), (99, 7), (0, u64::MAX)]);
    bytes.extend([1, 2, 3]); // a partial entry
    let head = h.driver(QueueRole::Stats).add_buffers(&[&bytes], &[]);
    h.kick(QueueRole::Stats);
    assert_eq!(h.control.stats(), vec![(4, 1000), (5, 2000), (0, u64::MAX)]);
    assert_eq!(h.control.counters().stats_updates, 1);
    // Held until the host asks.
    assert_eq!(h.driver(QueueRole::Stats).used_idx(), 0);
    h.worker.ready(STATS_REQUEST_TOKEN, EventSet::IN);
    assert_eq!(h.driver(QueueRole::Stats).used_elem(0), (u32::from(head), 0));
    assert_eq!(h.signals.queue.load(Ordering::SeqCst), 1);
    // Nothing held: a request does nothing.
    h.worker.ready(STATS_REQUEST_TOKEN, EventSet::IN);
    assert_eq!(h.driver(QueueRole::Stats).used_idx(), 1);
    // The driver answers with fresh statistics.
    let bytes = stats_bytes(&[(4, 900)]);
    let second = h.driver(QueueRole::Stats).add_buffers(&[&bytes], &[]);
    h.kick(QueueRole::Stats);
    assert_eq!(h.control.stats(), vec![(4, 900)]);
    // A driver that adds a second buffer gets the first one back.
    let bytes = stats_bytes(&[(4, 800)]);
    h.driver(QueueRole::Stats).add_buffers(&[&bytes], &[]);
    h.kick(QueueRole::Stats);
    assert_eq!(h.driver(QueueRole::Stats).used_elem(1), (u32::from(second), 0));
    assert_eq!(h.control.stats(), vec![(4, 800)]);
    assert_eq!(h.control.counters().stats_updates, 3);
}

#[test]
fn stats_are_capped() {
    let mut h = harness(all_features());
    let entries: Vec<(u16, u64)> = (0..MAX_STATS_ENTRIES as u64 + 5).map(|i| ((i % 10) as u16, i)).collect();
    h.driver(QueueRole::Stats).add_buffers(&[&stats_bytes(&entries)], &[]);
    h.kick(QueueRole::Stats);
    assert_eq!(h.control.stats().len(), MAX_STATS_ENTRIES);
}

#[test]
fn free_page_report_releases_aligned_ranges() {
    let mut h = harness(all_features());
    h.fill(RAM_A, 0x4000, 0xee);
    let d = h.driver(QueueRole::Reporting);
    // Linux reports with device-writable buffers; readable ones are accepted too.
    let head = d.add_chain(&[RawDescriptor::readable(RAM_A + 0x3000, 0x1000), RawDescriptor::writable(RAM_A, 0x2000)]);
    h.kick(QueueRole::Reporting);
    let c = h.control.counters();
    assert_eq!(c.reported_pages, 3);
    assert_eq!(c.refused_ranges, 0);
    assert_eq!(c.discard_calls, 2);
    assert!(h.is_filled(RAM_A, 0x2000, 0));
    assert!(h.is_filled(RAM_A + 0x2000, 0x1000, 0xee));
    assert!(h.is_filled(RAM_A + 0x3000, 0x1000, 0));
    assert_eq!(h.driver(QueueRole::Reporting).used_elem(0), (u32::from(head), 0));
}

#[test]
fn free_page_report_refuses_misaligned_and_cross_region_ranges() {
    let mut h = harness(all_features());
    h.fill(RAM_A, 0x3000, 0xee);
    h.fill(RAM_B - 0x1000, 0x2000, 0xdd);
    let d = h.driver(QueueRole::Reporting);
    d.add_chain(&[
        RawDescriptor::writable(RAM_A + 0x800, 0x1000),  // misaligned address
        RawDescriptor::writable(RAM_A + 0x1000, 0x1800), // misaligned length
        RawDescriptor::writable(RAM_B - 0x1000, 0x2000), // spans two mappings
        RawDescriptor::writable(RAM_A + 0x2000, 0),      // empty: nothing to do
    ]);
    h.kick(QueueRole::Reporting);
    let c = h.control.counters();
    assert_eq!(c.refused_ranges, 3);
    assert_eq!(c.reported_pages, 0);
    assert_eq!(c.discard_calls, 0);
    assert!(h.is_filled(RAM_A, 0x3000, 0xee));
    assert!(h.is_filled(RAM_B - 0x1000, 0x2000, 0xdd));
    // The request is still completed.
    assert_eq!(h.driver(QueueRole::Reporting).used_idx(), 1);
    assert_eq!(h.resets(), 0);
}

#[test]
fn free_page_report_outside_ram_is_refused() {
    let mem = memory();
    assert_eq!(discard_guest_range(&mem, HOLE, 0x1000), Err(DiscardError::OutsideRam { addr: HOLE, len: 0x1000 }));
    assert_eq!(
        discard_guest_range(&mem, RAM_B + 0xff000, 0x2000),
        Err(DiscardError::OutsideRam { addr: RAM_B + 0xff000, len: 0x2000 })
    );
    assert_eq!(
        discard_guest_range(&mem, !0xfffu64, 0x1000),
        Err(DiscardError::OutsideRam { addr: !0xfffu64, len: 0x1000 })
    );
    assert_eq!(discard_guest_range(&mem, ODD, 0x2000), Err(DiscardError::OutsideRam { addr: ODD, len: 0x2000 }));
    // Through the queue such a buffer is a malformed chain: the device needs a reset.
    let mut h = harness(all_features());
    h.driver(QueueRole::Reporting).add_chain(&[RawDescriptor::writable(HOLE, 0x1000)]);
    h.kick(QueueRole::Reporting);
    assert_eq!(h.resets(), 1);
    assert_eq!(h.control.counters().reported_pages, 0);
}

#[test]
fn reporting_queue_is_index_2_without_stats() {
    let acked = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BALLOON_F_PAGE_REPORTING);
    let mut h = harness(acked);
    assert_eq!(
        h.worker.queues.iter().map(|(r, q)| (*r, q.index)).collect::<Vec<_>>(),
        vec![(QueueRole::Inflate, 0), (QueueRole::Deflate, 1), (QueueRole::Reporting, 2)]
    );
    h.fill(RAM_A, 0x1000, 0x99);
    h.driver(QueueRole::Reporting).add_chain(&[RawDescriptor::writable(RAM_A, 0x1000)]);
    h.worker.queues[2].1.notify.write(1).unwrap();
    h.worker.ready(2, EventSet::IN);
    assert_eq!(h.control.counters().reported_pages, 1);
    assert!(h.is_filled(RAM_A, 0x1000, 0));
}

#[test]
fn config_space_target_and_actual() {
    let (mut balloon, control) = Balloon::new(true);
    assert_eq!(balloon.device_type(), VIRTIO_ID_BALLOON);
    assert_eq!(balloon.queue_max_sizes().len(), 4);
    let f = balloon.features();
    assert_ne!(f & (1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM), 0);
    assert_ne!(f & (1 << VIRTIO_BALLOON_F_STATS_VQ), 0);
    assert_ne!(f & (1 << VIRTIO_BALLOON_F_PAGE_REPORTING), 0);
    assert_eq!(f & (1 << VIRTIO_BALLOON_F_PAGE_POISON), 0);
    assert_eq!(Balloon::new(false).0.features() & (1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM), 0);
    // Before activation: stored, no interrupt to raise.
    control.set_target_pages(1234);
    let mut cfg = [0u8; 16];
    balloon.read_config(0, &mut cfg);
    assert_eq!(&cfg[0..4], &1234u32.to_le_bytes());
    // The driver writes actual; num_pages is not its to write.
    balloon.write_config(4, &77u32.to_le_bytes());
    balloon.write_config(0, &5u32.to_le_bytes());
    assert_eq!(control.actual_pages(), 77);
    assert_eq!(control.target_pages(), 1234);
    balloon.write_config(5, &[1]);
    assert_eq!(control.actual_pages(), 77 + 256);
    balloon.write_config(2, &[0xff; 4]); // its last two bytes are the low half of actual
    assert_eq!(control.actual_pages(), 0xffff);
    assert_eq!(control.target_pages(), 1234);
    let mut actual = [0u8; 4];
    balloon.read_config(4, &mut actual);
    assert_eq!(u32::from_le_bytes(actual), 0xffff);
}

fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

#[test]
fn activated_device_raises_config_interrupts_and_answers_stats_requests() {
    let (mut balloon, control) = Balloon::new(false);
    let acked = all_features();
    balloon.ack_features(acked);
    let signals = Arc::new(Signals::default());
    for _round in 0..2 {
        let mem = memory();
        let (mut drivers, active) = queues(&mem, acked, 16);
        let kicks: Vec<EventFd> = active.iter().map(|q| q.notify.try_clone().unwrap()).collect();
        balloon.activate(mem.clone(), signals.clone(), signals.clone(), active).unwrap();
        let before = signals.config.load(Ordering::SeqCst);
        control.set_target_pages(4096);
        assert_eq!(signals.config.load(Ordering::SeqCst), before + 1);
        // The driver posts its first stats buffer at DRIVER_OK.
        let updates = control.counters().stats_updates;
        let stats = &mut drivers[2].1;
        stats.add_buffers(&[&stats_bytes(&[(5, 1 << 30)])], &[]);
        kicks[2].write(1).unwrap();
        assert!(wait_for(|| control.counters().stats_updates == updates + 1));
        assert_eq!(control.stats(), vec![(5, 1 << 30)]);
        control.request_stats();
        assert!(wait_for(|| drivers[2].1.used_idx() == 1));
        // Inflate through the thread.
        mem.write_slice(&[0xab; 4096], GuestAddress(RAM_A)).unwrap();
        let bytes = pfn(RAM_A).to_le_bytes();
        drivers[0].1.add_buffers(&[&bytes], &[]);
        kicks[0].write(1).unwrap();
        assert!(wait_for(|| drivers[0].1.used_idx() == 1));
        let mut page = vec![0xffu8; 4096];
        mem.read_slice(&mut page, GuestAddress(RAM_A)).unwrap();
        assert!(page.iter().all(|&b| b == 0));
        balloon.write_config(4, &1u32.to_le_bytes());
        assert_eq!(control.actual_pages(), 1);
        balloon.reset();
        // After reset: actual starts over, the target stays, no interrupt.
        assert_eq!(control.actual_pages(), 0);
        let after = signals.config.load(Ordering::SeqCst);
        control.set_target_pages(8192);
        control.request_stats();
        assert_eq!(signals.config.load(Ordering::SeqCst), after);
        assert_eq!(control.target_pages(), 8192);
        balloon.ack_features(acked);
    }
    assert_eq!(control.counters().inflated_pages, 2);
    assert_eq!(signals.resets.load(Ordering::SeqCst), 0);
}

#[test]
fn control_is_send_sync_and_clone() {
    fn check<T: Send + Sync + Clone>() {}
    check::<BalloonControl>();
    fn send<T: Send>() {}
    send::<Balloon>();
}

#[test]
fn a_full_ring_of_work_is_split_with_a_self_kick() {
    let mut h = harness(all_features());
    for i in 0..16u32 {
        let bytes = i.to_le_bytes();
        h.driver(QueueRole::Deflate).add_buffers(&[&bytes], &[]);
    }
    h.kick(QueueRole::Deflate);
    assert_eq!(h.driver(QueueRole::Deflate).used_idx(), 16);
    assert_eq!(h.control.counters().deflated_pages, 16);
    // The budget (one queue's worth) was used up: the worker kicked itself.
    assert_eq!(h.worker.queues[1].1.notify.read().unwrap(), 1);
    // A kick with nothing new does nothing.
    h.worker.ready(1, EventSet::IN);
    assert_eq!(h.driver(QueueRole::Deflate).used_idx(), 16);
}

/// A guest address the balloon tests care about: a page (or a bit off one)
/// of the two RAM regions, the odd region, the hole, or anywhere.
fn garbage_addr(rng: &mut XorShift) -> u64 {
    let page = rng.below(256) * BALLOON_PAGE_SIZE;
    match rng.below(12) {
        0..=4 => RAM_A + page,
        5..=7 => RAM_B + page,
        8 => ODD + rng.pick(&[0, BALLOON_PAGE_SIZE]),
        9 => HOLE + page,
        10 => RAM_B - BALLOON_PAGE_SIZE + rng.below(3) * 0x800,
        _ => rng.next_u64() & !0xfff,
    }
}

#[test]
fn garbage_requests_never_panic_nor_release_pages_the_guest_did_not_name() {
    // Random inflate, deflate, stats and free page report chains: no panic,
    // every chain is completed (the stats one held), and no page of RAM is
    // released unless the guest named it (in a PFN list or a reported range),
    // or the device is marked broken.
    let mut rng = XorShift::new(0xba11_0000_0000_0001);
    let roles = [QueueRole::Inflate, QueueRole::Deflate, QueueRole::Stats, QueueRole::Reporting];
    let new = || {
        let mut h = harness(all_features());
        let fz: Vec<ChainFuzzer> = roles
            .iter()
            .map(|&r| {
                let mut f = ChainFuzzer::new(h.driver(r), 0x2_0000);
                f.fatal_percent = 1;
                f
            })
            .collect();
        h.fill(RAM_A, MB, 0x77);
        h.fill(RAM_B, MB, 0x77);
        (h, fz)
    };
    let (mut h, mut fz) = new();
    let mut named = std::collections::HashSet::new();
    let (mut rebuilds, mut released_pages) = (0u32, 0u64);
    for i in 0..1500u32 {
        let which = rng.below(4) as usize;
        let role = roles[which];
        if role == QueueRole::Reporting && rng.chance(60) {
            // Ranges of whole pages (and some not) where RAM is and is not.
            let descs: Vec<RawDescriptor> = (0..1 + rng.below(4))
                .map(|_| {
                    let addr = garbage_addr(&mut rng);
                    let len = rng.pick(&[0, 0x1000, 0x3000, 0x800, 0x10_0000]) as u32;
                    RawDescriptor::writable(addr, len)
                })
                .collect();
            for d in &descs {
                named.extend((d.addr..d.addr.saturating_add(u64::from(d.len))).step_by(0x1000).map(|a| a >> 12));
            }
            h.driver(role).add_chain(&descs);
        } else {
            let header: Vec<u8> = match role {
                QueueRole::Inflate | QueueRole::Deflate => (0..rng.below(128))
                    .flat_map(|_| {
                        let pfn = (garbage_addr(&mut rng) >> 12) as u32;
                        if role == QueueRole::Inflate {
                            named.insert(u64::from(pfn));
                        }
                        pfn.to_le_bytes()
                    })
                    .collect(),
                _ => {
                    let n = rng.below(400) as usize;
                    rng.bytes(n)
                }
            };
            let (_, descs) = fz[which].add(&mut rng, h.driver(role), &header);
            if role == QueueRole::Reporting {
                for d in &descs {
                    named.extend((d.addr..d.addr + u64::from(d.len)).step_by(0x1000).map(|a| a >> 12));
                }
            }
        }
        if rng.chance(10) {
            h.control.request_stats();
            h.worker.ready(STATS_REQUEST_TOKEN, EventSet::IN);
        }
        h.kick(role);
        if h.resets() > 0 {
            rebuilds += 1;
            named.clear();
            (h, fz) = new();
            continue;
        }
        for r in [QueueRole::Inflate, QueueRole::Deflate, QueueRole::Reporting] {
            let d = h.driver(r);
            assert_eq!(d.used_idx(), d.avail_idx(), "every {r:?} chain completed");
        }
        let d = h.driver(QueueRole::Stats);
        assert!(d.avail_idx().wrapping_sub(d.used_idx()) <= 1, "at most one stats buffer held");
        if i % 50 == 49 {
            // Every page that changed was named by the guest (and was released:
            // it reads back as zeros).
            let (filled, zero) = ([0x77u8; 0x1000], [0u8; 0x1000]);
            for base in [RAM_A, RAM_B] {
                let mut buf = vec![0u8; MB];
                h.mem.read_slice(&mut buf, GuestAddress(base)).unwrap();
                for (p, page) in buf.chunks(0x1000).enumerate() {
                    if page != filled {
                        let pfn = (base >> 12) + p as u64;
                        assert!(named.contains(&pfn), "page {pfn:#x} released but never named");
                        assert!(page == zero, "page {pfn:#x} partly changed");
                        released_pages += 1;
                    }
                }
            }
        }
    }
    assert!((1..200).contains(&rebuilds), "{rebuilds} rebuilds");
    assert!(released_pages > 100, "{released_pages} pages released");
}
