//! Host-side tests of virtio-blk: requests built by a mock driver in guest
//! memory, processed by the real worker against a real file.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::disk::{create_engine, DiskFile, EngineKind};
use super::request::*;
use super::worker::BlockWorker;
use crate::device::ActiveQueue;
use crate::queue::test_utils::{guest_memory, ChainFuzzer, MockDriver, RawDescriptor, XorShift};

use crate::queue::test_utils::RecordingSignals as Signals;

struct Harness {
    driver: MockDriver,
    worker: BlockWorker,
    signals: Arc<Signals>,
    path: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn harness(name: &str, sectors: u64, read_only: bool, engine: EngineKind) -> Harness {
    harness_on_queue(name, sectors, read_only, engine, 0)
}

/// [`harness`] with the driver's queue being queue `index` of the device.
fn harness_on_queue(name: &str, sectors: u64, read_only: bool, engine: EngineKind, index: u16) -> Harness {
    let path = std::env::temp_dir().join(format!("rvmm-blk-{}-{name}", std::process::id()));
    std::fs::write(&path, vec![0xeeu8; (sectors * SECTOR_SIZE) as usize]).unwrap();
    let disk = Arc::new(DiskFile::open(&path, read_only, false).unwrap());
    let mem = guest_memory(1 << 20);
    let driver = MockDriver::new(&mem, GuestAddress(0x1000), 16);
    let mut queue = driver.queue();
    driver.configure(&mut queue);
    let engine = create_engine(engine, &disk).unwrap();
    let signals = Arc::new(Signals::default());
    let worker = BlockWorker::new(
        mem,
        disk,
        engine,
        vec![ActiveQueue { index, queue, notify: EventFd::new(libc::EFD_NONBLOCK).unwrap() }],
        signals.clone(),
        signals.clone(),
        "rvmm-disk-7".into(),
    );
    Harness { driver, worker, signals, path }
}

fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

impl Harness {
    /// Submits one chain, runs the worker until it completes, returns (status, used len).
    fn run(&mut self, descs: &[RawDescriptor], status_addr: u64) -> (u8, u32) {
        let used_before = self.driver.used_idx();
        let head = self.driver.add_chain(descs);
        self.worker.process_queue(0);
        self.worker.finish_in_flight();
        assert_eq!(self.driver.used_idx(), used_before.wrapping_add(1), "request not completed");
        let (id, len) = self.driver.used_elem(used_before);
        assert_eq!(id, u32::from(head));
        (self.driver.read(status_addr, 1)[0], len)
    }

    /// A request: header, optional readable data, optional writable data, status.
    fn request(&mut self, kind: u32, sector: u64, out: &[u8], in_len: u32) -> (u8, u32, u64) {
        let h = self.driver.alloc_with(&header(kind, sector));
        let mut descs = vec![RawDescriptor::readable(h, 16)];
        if !out.is_empty() {
            descs.push(RawDescriptor::readable(self.driver.alloc_with(out), out.len() as u32));
        }
        let data_in = if in_len > 0 { self.driver.alloc(in_len) } else { 0 };
        if in_len > 0 {
            descs.push(RawDescriptor::writable(data_in, in_len));
        }
        let status = self.driver.alloc(1);
        descs.push(RawDescriptor::writable(status, 1));
        let (s, used) = self.run(&descs, status);
        (s, used, data_in)
    }

    fn file(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect()
}

fn write_then_read(engine: EngineKind) {
    let mut h = harness(&format!("rw-{engine:?}"), 64, false, engine);
    let data = pattern(4096, 3);
    let (status, used, _) = h.request(VIRTIO_BLK_T_OUT, 8, &data, 0);
    assert_eq!((status, used), (VIRTIO_BLK_S_OK, 1));
    assert_eq!(&h.file()[8 * 512..8 * 512 + 4096], &data[..]);
    let (status, used, buf) = h.request(VIRTIO_BLK_T_IN, 8, &[], 4096);
    assert_eq!((status, used), (VIRTIO_BLK_S_OK, 4097));
    assert_eq!(h.driver.read(buf, 4096), data);
    assert!(h.signals.interrupts.load(Ordering::SeqCst) >= 2);
    assert_eq!(h.signals.resets.load(Ordering::SeqCst), 0);
}

#[test]
fn write_then_read_thread_pool() {
    write_then_read(EngineKind::Threads);
}

#[test]
fn write_then_read_io_uring_or_fallback() {
    write_then_read(EngineKind::Auto);
}

#[test]
fn flush_and_get_id() {
    let mut h = harness("flush", 8, false, EngineKind::Threads);
    assert_eq!(h.request(VIRTIO_BLK_T_FLUSH, 0, &[], 0).0, VIRTIO_BLK_S_OK);
    let (status, used, buf) = h.request(VIRTIO_BLK_T_GET_ID, 0, &[], 20);
    assert_eq!((status, used), (VIRTIO_BLK_S_OK, 21));
    assert_eq!(&h.driver.read(buf, 20)[..11], b"rvmm-disk-7");
}

#[test]
fn completions_are_signalled_on_the_queue_they_came_from() {
    // With several queues the driver may enable, say, only queue 2; its
    // interrupts must name queue 2 (its MSI-X vector), not "the first queue".
    let mut h = harness_on_queue("queue2", 8, false, EngineKind::Threads, 2);
    assert_eq!(h.request(VIRTIO_BLK_T_FLUSH, 0, &[], 0).0, VIRTIO_BLK_S_OK);
    assert_eq!(*h.signals.queues.lock().unwrap(), [2]);
}

fn segment(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
    let mut s = sector.to_le_bytes().to_vec();
    s.extend_from_slice(&sectors.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

#[test]
fn discard_and_write_zeroes() {
    let mut h = harness("discard", 64, false, EngineKind::Threads);
    assert_eq!(h.request(VIRTIO_BLK_T_DISCARD, 0, &segment(8, 16, 0), 0).0, VIRTIO_BLK_S_OK);
    assert_eq!(h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &segment(32, 1, 0), 0).0, VIRTIO_BLK_S_OK);
    assert_eq!(
        h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &segment(40, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP), 0).0,
        VIRTIO_BLK_S_OK
    );
    let f = h.file();
    assert!(f[..8 * 512].iter().all(|&b| b == 0xee));
    assert!(f[8 * 512..24 * 512].iter().all(|&b| b == 0));
    assert!(f[32 * 512..33 * 512].iter().all(|&b| b == 0));
    assert!(f[40 * 512..48 * 512].iter().all(|&b| b == 0));
    assert!(f[48 * 512..].iter().all(|&b| b == 0xee));
    // Discard takes no flags; unknown flags are unsupported, not ignored.
    assert_eq!(h.request(VIRTIO_BLK_T_DISCARD, 0, &segment(8, 1, 1), 0).0, VIRTIO_BLK_S_UNSUPP);
    // Two segments: more than max_discard_seg.
    let mut two = segment(0, 1, 0);
    two.extend(segment(2, 1, 0));
    assert_eq!(h.request(VIRTIO_BLK_T_DISCARD, 0, &two, 0).0, VIRTIO_BLK_S_UNSUPP);
    // Out of range.
    assert_eq!(h.request(VIRTIO_BLK_T_DISCARD, 0, &segment(60, 8, 0), 0).0, VIRTIO_BLK_S_IOERR);
}

#[test]
fn read_only_disk_refuses_writes() {
    let mut h = harness("ro", 16, true, EngineKind::Threads);
    assert_eq!(h.request(VIRTIO_BLK_T_OUT, 0, &[1u8; 512], 0).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(h.request(VIRTIO_BLK_T_DISCARD, 0, &segment(0, 1, 0), 0).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &segment(0, 1, 0), 0).0, VIRTIO_BLK_S_IOERR);
    assert!(h.file().iter().all(|&b| b == 0xee));
    assert_eq!(h.request(VIRTIO_BLK_T_IN, 0, &[], 512).0, VIRTIO_BLK_S_OK);
}

#[test]
fn out_of_range_and_misaligned_requests() {
    let mut h = harness("range", 16, false, EngineKind::Threads);
    assert_eq!(h.request(VIRTIO_BLK_T_IN, 15, &[], 1024).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(h.request(VIRTIO_BLK_T_IN, u64::MAX, &[], 512).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(h.request(VIRTIO_BLK_T_OUT, 16, &[0u8; 512], 0).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(h.request(VIRTIO_BLK_T_IN, 0, &[], 100).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(h.request(77, 0, &[], 0).0, VIRTIO_BLK_S_UNSUPP);
    // The worker keeps serving after bad requests.
    assert_eq!(h.request(VIRTIO_BLK_T_IN, 15, &[], 512).0, VIRTIO_BLK_S_OK);
    assert_eq!(h.signals.resets.load(Ordering::SeqCst), 0);
}

#[test]
fn malformed_framing() {
    let mut h = harness("framing", 16, false, EngineKind::Threads);
    // No writable byte at all: completed with length 0, nothing written.
    let hdr = h.driver.alloc_with(&header(VIRTIO_BLK_T_IN, 0));
    let used_before = h.driver.used_idx();
    h.driver.add_chain(&[RawDescriptor::readable(hdr, 16)]);
    h.worker.process_queue(0);
    assert_eq!(h.driver.used_idx(), used_before.wrapping_add(1));
    assert_eq!(h.driver.used_elem(used_before).1, 0);
    // A header of 8 bytes: IOERR in the status byte.
    let hdr = h.driver.alloc_with(&header(VIRTIO_BLK_T_IN, 0)[..8]);
    let status = h.driver.alloc(1);
    let (s, _) = h.run(&[RawDescriptor::readable(hdr, 8), RawDescriptor::writable(status, 1)], status);
    assert_eq!(s, VIRTIO_BLK_S_IOERR);
    // Zero-length data descriptor: harmless, the request is just a header.
    let hdr = h.driver.alloc_with(&header(VIRTIO_BLK_T_FLUSH, 0));
    let empty = h.driver.alloc(16);
    let status = h.driver.alloc(1);
    let (s, _) = h.run(
        &[RawDescriptor::readable(hdr, 16), RawDescriptor::readable(empty, 0), RawDescriptor::writable(status, 1)],
        status,
    );
    assert_eq!(s, VIRTIO_BLK_S_OK);
}

#[test]
fn header_split_across_descriptors_and_indirect_chains() {
    let mut h = harness("split", 16, false, EngineKind::Threads);
    std::fs::write(&h.path, pattern(16 * 512, 9)).unwrap();
    let hb = header(VIRTIO_BLK_T_IN, 2);
    let a = h.driver.alloc_with(&hb[..5]);
    let b = h.driver.alloc_with(&hb[5..]);
    let data = h.driver.alloc(512);
    // The status byte shares its descriptor with the data (any layout is allowed).
    let (s, used) = {
        let descs = [RawDescriptor::readable(a, 5), RawDescriptor::readable(b, 11), RawDescriptor::writable(data, 513)];
        let status = data + 512;
        h.run(&descs, status)
    };
    assert_eq!((s, used), (VIRTIO_BLK_S_OK, 513));
    assert_eq!(h.driver.read(data, 512), pattern(16 * 512, 9)[1024..1536].to_vec());

    let used_before = h.driver.used_idx();
    let head = h.driver.add_indirect_buffers(&[&header(VIRTIO_BLK_T_IN, 0)], &[512, 1]);
    h.worker.process_queue(0);
    h.worker.finish_in_flight();
    assert_eq!(h.driver.used_idx(), used_before.wrapping_add(1));
    assert_eq!(h.driver.used_elem(used_before), (u32::from(head), 513));
}

#[test]
fn descriptor_outside_guest_memory_needs_reset() {
    let mut h = harness("oob", 16, false, EngineKind::Threads);
    let hdr = h.driver.alloc_with(&header(VIRTIO_BLK_T_IN, 0));
    let status = h.driver.alloc(1);
    h.driver.add_chain(&[
        RawDescriptor::readable(hdr, 16),
        RawDescriptor::writable(0x4000_0000, 512),
        RawDescriptor::writable(status, 1),
    ]);
    h.worker.process_queue(0);
    assert_eq!(h.signals.resets.load(Ordering::SeqCst), 1);
    // The broken queue is not touched again.
    h.driver.add_buffers(&[&header(VIRTIO_BLK_T_FLUSH, 0)], &[1]);
    h.worker.process_queue(0);
    assert_eq!(h.driver.used_idx(), 0);
}

#[test]
fn descriptor_loop_needs_reset() {
    let mut h = harness("loop", 16, false, EngineKind::Threads);
    let hdr = h.driver.alloc_with(&header(VIRTIO_BLK_T_IN, 0));
    // Descriptor 0 -> 1 -> 0 ...
    h.driver.write_desc(0, RawDescriptor::readable(hdr, 16).with_next(1));
    h.driver.write_desc(1, RawDescriptor::readable(hdr, 16).with_next(0));
    h.driver.publish(0);
    h.worker.process_queue(0);
    assert_eq!(h.signals.resets.load(Ordering::SeqCst), 1);
    assert_eq!(h.driver.used_idx(), 0);
}

#[test]
fn host_io_error_is_ioerr_and_the_device_keeps_going() {
    let mut h = harness("ioerr", 16, false, EngineKind::Threads);
    // The file shrinks under the device: a read of the lost sectors fails on the host.
    std::fs::OpenOptions::new().write(true).open(&h.path).unwrap().set_len(4 * 512).unwrap();
    assert_eq!(h.request(VIRTIO_BLK_T_IN, 8, &[], 512).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(h.request(VIRTIO_BLK_T_IN, 0, &[], 512).0, VIRTIO_BLK_S_OK);
    assert_eq!(h.signals.resets.load(Ordering::SeqCst), 0);
}

/// A random request header (and for some types a discard segment after it):
/// every request type and some unknown ones, sectors in range, at its edge,
/// past it and near 2^64.
fn garbage_request(rng: &mut XorShift, sectors: u64) -> Vec<u8> {
    let any = rng.next_u64();
    let kind = rng.pick(&[
        VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_FLUSH,
        VIRTIO_BLK_T_GET_ID,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
        any as u32,
    ]);
    let sector_pick = [rng.below(sectors), sectors - 1, sectors, u64::MAX, u64::MAX / 512, any >> 7];
    let mut h = header(kind, rng.pick(&sector_pick));
    h[4..8].copy_from_slice(&((any >> 32) as u32).to_le_bytes());
    if rng.chance(50) {
        let n = rng.below(2 * sectors) as u32;
        let count = rng.pick(&[0, 1, n, u32::MAX, super::MAX_DISCARD_SECTORS + 1]);
        let flags = rng.pick(&[0, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, 2, any as u32 ^ 0x5a5a]);
        h.extend(segment(rng.pick(&sector_pick), count, flags));
    }
    h
}

#[test]
fn garbage_chains_never_panic_and_never_touch_the_disk_outside_its_range() {
    // Random requests in random chains against a disk of 16 sectors whose
    // file has 300 more bytes (a partial sector the guest never sees): no
    // panic, every chain completed with a status (or the queue marked
    // broken), those 300 bytes untouched, a read-only disk not written at
    // all, and the device still serving good requests between the bad ones.
    const SECTORS: u64 = FUZZ_SECTORS;
    let mut statuses = [0u32; 3];
    let mut rng = XorShift::new(0xb10c_f022_0000_0001);
    let mut rebuilds = 0u32;
    let (mut h, mut fz, mut read_only, mut content) = fuzz_disk(&mut rng, rebuilds);
    for i in 0..1200u32 {
        let batch = if rng.chance(80) { 1 } else { 2 + rng.below(4) };
        let mut chains = Vec::new();
        let published = h.driver.avail_idx();
        for _ in 0..batch {
            let req = garbage_request(&mut rng, SECTORS);
            chains.push(fz.add(&mut rng, &mut h.driver, &req));
        }
        h.worker.process_queue(0);
        h.worker.finish_in_flight();
        assert_eq!(h.worker.in_flight(), 0);
        let file = h.file();
        assert_eq!(file.len(), content.len(), "the file changed size");
        assert!(file[SECTORS as usize * 512..].iter().all(|&b| b == 0xa5), "bytes past the last sector written");
        if read_only {
            assert!(file == content, "a read-only disk was written");
        }
        if h.signals.resets.load(Ordering::SeqCst) > 0 {
            // A chain the queue refused: the device stops and needs a reset.
            rebuilds += 1;
            drop(h);
            (h, fz, read_only, content) = fuzz_disk(&mut rng, rebuilds);
            continue;
        }
        assert_eq!(h.driver.used_idx(), h.driver.avail_idx(), "every chain completed");
        if batch == 1 {
            // One request alone: its status byte (the last writable byte) holds a status.
            let (id, len) = h.driver.used_elem(published);
            let (head, descs) = &chains[0];
            assert_eq!(id, u32::from(*head));
            let status = descs.iter().rev().find(|d| d.flags & crate::queue::VIRTQ_DESC_F_WRITE != 0 && d.len > 0);
            match status {
                Some(d) => {
                    assert!(len >= 1);
                    let s = h.driver.read(d.addr + u64::from(d.len) - 1, 1)[0];
                    assert!([VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP].contains(&s), "status {s}");
                    statuses[usize::from(s)] += 1;
                }
                None => assert_eq!(len, 0, "no status byte, nothing written"),
            }
        }
        if i % 16 == 0 {
            // Good requests still work, and read what the file holds.
            let sector = rng.below(SECTORS);
            let (status, used, buf) = h.request(VIRTIO_BLK_T_IN, sector, &[], 512);
            assert_eq!((status, used), (VIRTIO_BLK_S_OK, 513));
            let file = h.file();
            assert_eq!(h.driver.read(buf, 512), file[sector as usize * 512..][..512].to_vec());
            content = file;
        }
        if !read_only {
            content = h.file();
        }
    }
    // Some chains were refused by the queue, most were not; every status came up.
    assert!((1..200).contains(&rebuilds), "{rebuilds} rebuilds");
    assert!(statuses.iter().all(|&n| n > 20), "{statuses:?}");
}

const FUZZ_SECTORS: u64 = 16;

/// A fresh harness for [`garbage_chains_never_panic_and_never_touch_the_disk_outside_its_range`]:
/// a disk of 16 sectors plus a 300-byte tail of 0xa5, read-only one time in four.
fn fuzz_disk(rng: &mut XorShift, n: u32) -> (Harness, ChainFuzzer, bool, Vec<u8>) {
    let read_only = rng.chance(25);
    let mut h = harness(&format!("fuzz-{n}"), FUZZ_SECTORS, read_only, EngineKind::Threads);
    let mut content = pattern(FUZZ_SECTORS as usize * 512, n as u8);
    content.extend([0xa5u8; 300]);
    std::fs::write(&h.path, &content).unwrap();
    let mut fz = ChainFuzzer::new(&mut h.driver, 0x2_0000);
    fz.fatal_percent = 2;
    fz.len_multiple = 512;
    (h, fz, read_only, content)
}
