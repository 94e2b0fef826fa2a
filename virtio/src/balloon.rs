//! virtio-balloon, the traditional memory balloon (virtio 1.x section 5.5):
//! the host asks for guest memory back by raising `num_pages`; the driver
//! "inflates" the balloon with pages it stops using, and the device returns
//! their host memory to the host kernel.
//!
//! Queues (5.5.2): inflateq (0) and deflateq (1) always; then statsq if
//! `VIRTIO_BALLOON_F_STATS_VQ` was negotiated, then (free_page_vq, not
//! offered here) then reporting_vq if `VIRTIO_BALLOON_F_PAGE_REPORTING` was.
//! A queue that does not exist takes no index, so the reporting queue is 3
//! with statistics and 2 without: [`queue_role`] computes it from the acked
//! features.
//!
//! How memory is released: rvmm's guest RAM is an anonymous private mapping
//! (`MAP_PRIVATE | MAP_ANONYMOUS`), for which `madvise(MADV_DONTNEED)` frees
//! the pages at once; the next access, by the guest or by the VMM, faults in a
//! zero page. That is what the spec allows (5.5.6.2: the device may change a
//! ballooned page's contents), and why deflating needs no host action: the
//! page comes back when the guest touches it. `MADV_REMOVE` is used instead
//! for a shared or file-backed region (where DONTNEED would only drop this
//! process's mapping, not the memory), and hugetlbfs regions are left alone
//! (they cannot be released in 4 KiB pieces).
//!
//! The guest is untrusted: every PFN and range is checked to lie wholly
//! inside one guest RAM region before anything is released, so host memory
//! outside guest RAM is never touched; the work per request is bounded
//! ([`MAX_PFNS_PER_REQUEST`], [`MAX_STATS_ENTRIES`]); a malformed chain sets
//! DEVICE_NEEDS_RESET.
//!
//! The VMM drives the balloon through a [`BalloonControl`].

#![warn(missing_docs)]

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::device::{read_config_bytes, ActivateError, ActiveQueue, DeviceStatusSink, VirtioDevice, VirtioInterrupt};
use crate::queue::DescriptorChain;
use crate::worker::{Worker, WorkerHandler};

/// The virtio device ID of a memory balloon.
/// (From virtio-bindings, re-exported under the name the device code uses.)
pub use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
/// Feature bit: the host must be told before ballooned pages are used (not offered).
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u32 = 0;
/// Feature bit: the statistics queue exists.
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// Feature bit: the guest may deflate when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// Feature bit: free page hinting and its queue (not offered).
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u32 = 3;
/// Feature bit: the guest poisons free pages with `poison_val` (not offered,
/// so a guest that poisons free pages does not use free page reporting).
pub const VIRTIO_BALLOON_F_PAGE_POISON: u32 = 4;
/// Feature bit: free page reporting and its queue.
pub const VIRTIO_BALLOON_F_PAGE_REPORTING: u32 = 5;
/// PFNs in the inflate and deflate queues are in 4 KiB units, whatever the guest page size.
pub const VIRTIO_BALLOON_PFN_SHIFT: u32 = 12;
/// The balloon's page size: 4 KiB.
pub const BALLOON_PAGE_SIZE: u64 = 1 << VIRTIO_BALLOON_PFN_SHIFT;
/// Descriptors per queue (the reporting queue's size is also how many ranges
/// Linux puts in one report).
pub const QUEUE_SIZE: u16 = 128;
/// Most PFNs taken from one inflate or deflate request; Linux sends at most
/// 256. Further PFNs of a longer request are ignored (their pages simply stay
/// resident).
pub const MAX_PFNS_PER_REQUEST: usize = 4096;
/// Most statistics entries read from one stats buffer (the spec defines 16 tags).
pub const MAX_STATS_ENTRIES: usize = 64;
/// Size of one `struct virtio_balloon_stat`: le16 tag, le64 value, packed.
pub const STAT_ENTRY_SIZE: usize = 10;
/// Statistics tags below this are known (`VIRTIO_BALLOON_S_SWAP_IN` = 0 up to
/// `VIRTIO_BALLOON_S_DIRECT_RECLAIM` = 15); others are ignored, as the spec requires.
pub const VIRTIO_BALLOON_S_NR: u16 = 16;

/// Size of the configuration space: num_pages, actual, free_page_hint_cmd_id, poison_val.
const CONFIG_SIZE: usize = 16;
/// Offset of `num_pages` (host-written) in the configuration space.
const NUM_PAGES_OFFSET: usize = 0;
/// Offset of `actual` (guest-written) in the configuration space.
const ACTUAL_OFFSET: usize = 4;
/// Worker token of the stats-request eventfd (the queues use their index).
const STATS_REQUEST_TOKEN: u64 = 1 << 32;

/// What a balloon queue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole {
    /// inflateq: PFNs the guest gives up.
    Inflate,
    /// deflateq: PFNs the guest takes back.
    Deflate,
    /// statsq: memory statistics, driven by the device.
    Stats,
    /// reporting_vq: free page ranges the guest reports.
    Reporting,
}

/// The role of queue `index` given the negotiated features (5.5.2: absent
/// queues take no index); `None` for an index no negotiated queue has.
pub fn queue_role(acked: u64, index: u16) -> Option<QueueRole> {
    let has = |bit: u32| acked & (1u64 << bit) != 0;
    match index {
        0 => return Some(QueueRole::Inflate),
        1 => return Some(QueueRole::Deflate),
        _ => {}
    }
    let mut next = 2;
    if has(VIRTIO_BALLOON_F_STATS_VQ) {
        if index == next {
            return Some(QueueRole::Stats);
        }
        next += 1;
    }
    // VIRTIO_BALLOON_F_FREE_PAGE_HINT's queue would come here; it is never offered.
    if has(VIRTIO_BALLOON_F_PAGE_REPORTING) && index == next {
        return Some(QueueRole::Reporting);
    }
    None
}

/// Counters of what the balloon did, readable through [`BalloonControl::counters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BalloonCounters {
    /// 4 KiB pages released on inflate requests (duplicates in one request counted once).
    pub inflated_pages: u64,
    /// PFNs received on deflate requests.
    pub deflated_pages: u64,
    /// 4 KiB pages released through free page reporting.
    pub reported_pages: u64,
    /// Inflate PFNs skipped: outside guest RAM, straddling a region end, or
    /// not releasable.
    pub skipped_pfns: u64,
    /// Reported ranges refused: misaligned, outside guest RAM, or not releasable.
    pub refused_ranges: u64,
    /// `madvise` calls made (adjacent inflate PFNs are coalesced into one).
    pub discard_calls: u64,
    /// Statistics buffers received.
    pub stats_updates: u64,
}

use devices::ratelimit::TimedLogLimiter as LogLimiter;

/// Locks `m`, ignoring poisoning (a panicked holder left plain data behind).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// State shared by the device, its worker and the control handles.
#[derive(Default)]
struct BalloonShared {
    num_pages: AtomicU32,
    actual: AtomicU32,
    /// How to interrupt the driver, while the device is active.
    interrupt: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
    /// Wakes the worker to return the stats buffer, while the device is active.
    stats_waker: Mutex<Option<EventFd>>,
    stats: Mutex<Vec<(u16, u64)>>,
    inflated_pages: AtomicU64,
    deflated_pages: AtomicU64,
    reported_pages: AtomicU64,
    skipped_pfns: AtomicU64,
    refused_ranges: AtomicU64,
    discard_calls: AtomicU64,
    stats_updates: AtomicU64,
}

/// A virtio-balloon device.
pub struct Balloon {
    shared: Arc<BalloonShared>,
    offered: u64,
    acked: u64,
    worker: Option<Worker>,
}

/// The VMM's handle on a [`Balloon`]: cloneable, usable from any thread.
#[derive(Clone)]
pub struct BalloonControl {
    shared: Arc<BalloonShared>,
}

impl Balloon {
    /// A balloon offering statistics and free page reporting, and
    /// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM` if `deflate_on_oom` (the guest may
    /// then take pages back under memory pressure); and its control handle.
    pub fn new(deflate_on_oom: bool) -> (Balloon, BalloonControl) {
        let mut offered =
            (1u64 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BALLOON_F_STATS_VQ) | (1 << VIRTIO_BALLOON_F_PAGE_REPORTING);
        if deflate_on_oom {
            offered |= 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        let shared = Arc::new(BalloonShared::default());
        (Balloon { shared: shared.clone(), offered, acked: 0, worker: None }, BalloonControl { shared })
    }

    fn config_space(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        c[NUM_PAGES_OFFSET..NUM_PAGES_OFFSET + 4]
            .copy_from_slice(&self.shared.num_pages.load(Ordering::SeqCst).to_le_bytes());
        c[ACTUAL_OFFSET..ACTUAL_OFFSET + 4].copy_from_slice(&self.shared.actual.load(Ordering::SeqCst).to_le_bytes());
        c
    }
}

impl BalloonControl {
    /// Sets the balloon's target size in 4 KiB pages (`num_pages`) and, if the
    /// driver is running, raises a configuration change interrupt so it
    /// inflates or deflates towards it.
    pub fn set_target_pages(&self, pages: u32) {
        self.shared.num_pages.store(pages, Ordering::SeqCst);
        let interrupt = lock(&self.shared.interrupt).clone();
        if let Some(interrupt) = interrupt {
            interrupt.notify_config();
        }
    }

    /// The target size last set, in 4 KiB pages.
    pub fn target_pages(&self) -> u32 {
        self.shared.num_pages.load(Ordering::SeqCst)
    }

    /// The balloon's size as the driver reports it (`actual`), in 4 KiB pages.
    pub fn actual_pages(&self) -> u32 {
        self.shared.actual.load(Ordering::SeqCst)
    }

    /// The statistics of the last stats buffer the guest sent, as (tag,
    /// value) pairs in the guest's order, known tags only (see
    /// [`VIRTIO_BALLOON_S_NR`]). Empty until the guest sent one.
    pub fn stats(&self) -> Vec<(u16, u64)> {
        lock(&self.shared.stats).clone()
    }

    /// Asks the guest for fresh statistics: the device returns the stats
    /// buffer it holds, and the driver answers with a new one, after which
    /// [`stats`](Self::stats) and `counters().stats_updates` change. Does
    /// nothing if the device is not active or statistics were not negotiated.
    pub fn request_stats(&self) {
        if let Some(waker) = lock(&self.shared.stats_waker).as_ref() {
            let _ = waker.write(1);
        }
    }

    /// What the balloon did so far.
    pub fn counters(&self) -> BalloonCounters {
        let s = &self.shared;
        BalloonCounters {
            inflated_pages: s.inflated_pages.load(Ordering::SeqCst),
            deflated_pages: s.deflated_pages.load(Ordering::SeqCst),
            reported_pages: s.reported_pages.load(Ordering::SeqCst),
            skipped_pfns: s.skipped_pfns.load(Ordering::SeqCst),
            refused_ranges: s.refused_ranges.load(Ordering::SeqCst),
            discard_calls: s.discard_calls.load(Ordering::SeqCst),
            stats_updates: s.stats_updates.load(Ordering::SeqCst),
        }
    }
}

/// Why a guest range was not released.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscardError {
    /// The address or the length is not a multiple of 4 KiB.
    #[error("range {addr:#x} of {len:#x} bytes is not 4 KiB aligned")]
    Misaligned {
        /// Guest-physical start.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The range is not wholly inside one guest RAM region.
    #[error("range {addr:#x} of {len:#x} bytes is not inside one guest RAM region")]
    OutsideRam {
        /// Guest-physical start.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The region is backed by hugetlbfs, which cannot be released in 4 KiB pieces.
    #[error("range {addr:#x} is in a hugetlbfs region")]
    HugeTlb {
        /// Guest-physical start.
        addr: u64,
    },
    /// madvise(2) failed.
    #[error("madvise of range {addr:#x} of {len:#x} bytes failed: errno {errno}")]
    Madvise {
        /// Guest-physical start.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// The error number.
        errno: i32,
    },
}

/// The host's page size.
fn host_page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| s.is_power_of_two()).unwrap_or(BALLOON_PAGE_SIZE)
}

/// Releases the host memory behind the guest range `[addr, addr + len)`,
/// which must be 4 KiB aligned and wholly inside one guest RAM region;
/// returns how many bytes were released (0 for an empty range, or if the
/// host page is larger than the range). Makes at most one madvise(2) call.
pub fn discard_guest_range(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<u64, DiscardError> {
    if len == 0 {
        return Ok(0);
    }
    if (addr | len) & (BALLOON_PAGE_SIZE - 1) != 0 {
        return Err(DiscardError::Misaligned { addr, len });
    }
    let outside = DiscardError::OutsideRam { addr, len };
    let region = mem.find_region(GuestAddress(addr)).ok_or(outside.clone())?;
    let offset = addr - region.start_addr().0;
    let end = offset.checked_add(len).ok_or(outside.clone())?;
    if end > region.len() {
        return Err(outside);
    }
    if region.is_hugetlbfs() == Some(true) {
        return Err(DiscardError::HugeTlb { addr });
    }
    let host = region.get_host_address(MemoryRegionAddress(offset)).map_err(|_| outside)? as u64;
    // madvise works on whole host pages: keep only those fully inside the
    // range (all of it when the host page is 4 KiB).
    let page = host_page_size();
    let start = host.div_ceil(page) * page;
    let stop = (host + len) / page * page;
    if stop <= start {
        return Ok(0);
    }
    // Anonymous private memory is freed by DONTNEED; shared or file-backed
    // memory needs REMOVE to free the backing pages.
    let shared = region.file_offset().is_some() || region.flags() & libc::MAP_SHARED != 0;
    let advice = if shared { libc::MADV_REMOVE } else { libc::MADV_DONTNEED };
    // SAFETY: [start, stop) lies inside the mapping of one guest RAM region
    // (checked above), which lives as long as `mem`; nothing else of the
    // process is affected. Guest memory is only ever accessed through
    // volatile accesses, and the next access to a released page sees zeros,
    // which the balloon protocol allows.
    let ret = unsafe { libc::madvise(start as *mut libc::c_void, (stop - start) as usize, advice) };
    if ret != 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Err(DiscardError::Madvise { addr, len, errno });
    }
    Ok(stop - start)
}

/// Parses a stats buffer: 10-byte (le16 tag, le64 value) entries; a trailing
/// partial entry and unknown tags are ignored.
pub fn parse_stats(bytes: &[u8]) -> Vec<(u16, u64)> {
    bytes
        .chunks_exact(STAT_ENTRY_SIZE)
        .map(|e| {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let mut v = [0u8; 8];
            v.copy_from_slice(&e[2..10]);
            (tag, u64::from_le_bytes(v))
        })
        .filter(|&(tag, _)| tag < VIRTIO_BALLOON_S_NR)
        .collect()
}

/// The balloon's I/O thread.
struct BalloonWorker {
    mem: GuestMemoryMmap,
    queues: Vec<(QueueRole, ActiveQueue)>,
    /// Readable when the host asked for statistics.
    stats_wake: EventFd,
    shared: Arc<BalloonShared>,
    interrupt: Arc<dyn VirtioInterrupt>,
    status: Arc<dyn DeviceStatusSink>,
    broken: bool,
    /// The stats buffer the device holds, to return when the host wants new statistics.
    held_stats: Option<u16>,
    pfn_log: LogLimiter,
    range_log: LogLimiter,
    request_log: LogLimiter,
}

impl BalloonWorker {
    fn fail(&mut self, what: &dyn std::fmt::Display) {
        if !self.broken {
            log::warn!("virtio-balloon: {what}; the device needs a reset");
            self.broken = true;
            self.status.needs_reset();
        }
    }

    fn position(&self, role: QueueRole) -> Option<usize> {
        self.queues.iter().position(|(r, _)| *r == role)
    }

    /// Interrupts the driver for the queue at `pos` if it wants that.
    fn signal(&mut self, pos: usize) {
        let (_, q) = &mut self.queues[pos];
        let index = q.index;
        match q.queue.needs_notification(&self.mem) {
            Ok(true) => self.interrupt.notify_queue(index),
            Ok(false) => {}
            Err(e) => self.fail(&e),
        }
    }

    /// Pops the next chain of the queue at `pos`; `None` if there is none or
    /// the queue is broken (then the device needs a reset).
    fn pop(&mut self, pos: usize) -> Option<DescriptorChain> {
        match self.queues[pos].1.queue.pop(&self.mem) {
            Ok(c) => c,
            Err(e) => {
                self.fail(&e);
                None
            }
        }
    }

    fn add_used(&mut self, pos: usize, head: u16) -> bool {
        match self.queues[pos].1.queue.add_used(&self.mem, head, 0) {
            Ok(()) => true,
            Err(e) => {
                self.fail(&e);
                false
            }
        }
    }

    /// Handles the available chains of the queue at `pos` with `handle`, at
    /// most one queue's worth per call (then the worker kicks itself to come
    /// back after other work), each returned with used length 0.
    fn process(&mut self, pos: usize, mut handle: impl FnMut(&mut Self, &DescriptorChain)) {
        if self.broken {
            return;
        }
        let budget = self.queues[pos].1.queue.size();
        let mut used = 0u16;
        loop {
            if used >= budget {
                let _ = self.queues[pos].1.notify.write(1);
                break;
            }
            let Some(chain) = self.pop(pos) else { break };
            handle(self, &chain);
            if !self.add_used(pos, chain.head_index) {
                return;
            }
            used += 1;
        }
        if used > 0 {
            self.signal(pos);
        }
    }

    /// Reads the PFNs of an inflate or deflate request, at most
    /// [`MAX_PFNS_PER_REQUEST`].
    fn read_pfns(&mut self, chain: &DescriptorChain) -> Vec<u32> {
        let len = chain.readable_len();
        if len & 3 != 0 || len / 4 > MAX_PFNS_PER_REQUEST as u64 {
            if let Some(s) = self.request_log.check() {
                log::warn!(
                    "virtio-balloon: request {} has {len} bytes of PFNs: not whole PFNs or more than \
                     {MAX_PFNS_PER_REQUEST}, the excess is ignored ({s} messages suppressed)",
                    chain.head_index
                );
            }
        }
        let count = (len / 4).min(MAX_PFNS_PER_REQUEST as u64) as usize;
        let mut bytes = vec![0u8; count * 4];
        if let Err(e) = chain.read_at(&self.mem, 0, &mut bytes) {
            if let Some(s) = self.request_log.check() {
                log::warn!("virtio-balloon: {e} ({s} messages suppressed)");
            }
            return Vec::new();
        }
        bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    /// Releases the pages of an inflate request, adjacent ones in one call.
    fn inflate(&mut self, chain: &DescriptorChain) {
        let mut pfns = self.read_pfns(chain);
        pfns.sort_unstable();
        pfns.dedup();
        // A run of adjacent pages inside one region: (guest start, length).
        let mut run: Option<(u64, u64)> = None;
        for pfn in pfns {
            let addr = u64::from(pfn) << VIRTIO_BALLOON_PFN_SHIFT;
            let Some(region_start) = self.page_region(addr) else {
                self.shared.skipped_pfns.fetch_add(1, Ordering::SeqCst);
                if let Some(s) = self.pfn_log.check() {
                    log::warn!(
                        "virtio-balloon: inflate PFN {pfn:#x} (address {addr:#x}) is not a page of guest RAM, \
                         skipped ({s} messages suppressed)"
                    );
                }
                continue;
            };
            match run {
                // Adjacent and in the same region (regions may be contiguous).
                Some((start, len)) if start + len == addr && self.page_region(start) == Some(region_start) => {
                    run = Some((start, len + BALLOON_PAGE_SIZE));
                }
                _ => {
                    if let Some((start, len)) = run {
                        self.release_run(start, len);
                    }
                    run = Some((addr, BALLOON_PAGE_SIZE));
                }
            }
        }
        if let Some((start, len)) = run {
            self.release_run(start, len);
        }
    }

    /// The start of the region holding the whole 4 KiB page at `addr`, if any.
    fn page_region(&self, addr: u64) -> Option<u64> {
        let region = self.mem.find_region(GuestAddress(addr))?;
        let start = region.start_addr().0;
        let end = start.checked_add(region.len())?;
        (addr.checked_add(BALLOON_PAGE_SIZE)? <= end).then_some(start)
    }

    fn release_run(&mut self, start: u64, len: u64) {
        let pages = len / BALLOON_PAGE_SIZE;
        match discard_guest_range(&self.mem, start, len) {
            Ok(released) => {
                if released > 0 {
                    self.shared.discard_calls.fetch_add(1, Ordering::SeqCst);
                }
                self.shared.inflated_pages.fetch_add(pages, Ordering::SeqCst);
            }
            Err(e) => {
                self.shared.skipped_pfns.fetch_add(pages, Ordering::SeqCst);
                if let Some(s) = self.pfn_log.check() {
                    log::warn!("virtio-balloon: inflate: {e} ({s} messages suppressed)");
                }
            }
        }
    }

    /// Counts the pages of a deflate request: the guest simply touches them
    /// again, which faults fresh pages in.
    fn deflate(&mut self, chain: &DescriptorChain) {
        let pfns = self.read_pfns(chain);
        self.shared.deflated_pages.fetch_add(pfns.len() as u64, Ordering::SeqCst);
    }

    /// Releases every range of a free page report (its buffers, whichever
    /// their direction; Linux makes them device-writable).
    fn report(&mut self, chain: &DescriptorChain) {
        for d in &chain.descriptors {
            match discard_guest_range(&self.mem, d.addr, u64::from(d.len)) {
                Ok(0) => {}
                Ok(_) => {
                    self.shared.discard_calls.fetch_add(1, Ordering::SeqCst);
                    self.shared.reported_pages.fetch_add(u64::from(d.len) / BALLOON_PAGE_SIZE, Ordering::SeqCst);
                }
                Err(e) => {
                    self.shared.refused_ranges.fetch_add(1, Ordering::SeqCst);
                    if let Some(s) = self.range_log.check() {
                        log::warn!("virtio-balloon: free page report refused: {e} ({s} messages suppressed)");
                    }
                }
            }
        }
    }

    /// Takes new stats buffers: parses each and holds it until the host
    /// wants fresh statistics (5.5.6.3). The driver keeps at most one
    /// buffer there; if it adds another, the older one is returned. At most
    /// one queue's worth per call, like [`process`](Self::process).
    fn process_stats(&mut self, pos: usize) {
        if self.broken {
            return;
        }
        let budget = self.queues[pos].1.queue.size();
        let mut taken = 0u16;
        let mut returned = false;
        loop {
            if taken >= budget {
                let _ = self.queues[pos].1.notify.write(1);
                break;
            }
            let Some(chain) = self.pop(pos) else { break };
            taken += 1;
            if let Some(old) = self.held_stats.take() {
                if !self.add_used(pos, old) {
                    return;
                }
                returned = true;
            }
            let len = chain.readable_len().min((MAX_STATS_ENTRIES * STAT_ENTRY_SIZE) as u64) as usize;
            let mut bytes = vec![0u8; len];
            match chain.read_at(&self.mem, 0, &mut bytes) {
                Ok(()) => {
                    *lock(&self.shared.stats) = parse_stats(&bytes);
                    self.shared.stats_updates.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    if let Some(s) = self.request_log.check() {
                        log::warn!("virtio-balloon: stats buffer: {e} ({s} messages suppressed)");
                    }
                }
            }
            self.held_stats = Some(chain.head_index);
        }
        if returned {
            self.signal(pos);
        }
    }

    /// Returns the held stats buffer: the driver answers with fresh statistics.
    fn return_stats(&mut self) {
        if self.broken {
            return;
        }
        let Some(pos) = self.position(QueueRole::Stats) else { return };
        if let Some(head) = self.held_stats.take() {
            if self.add_used(pos, head) {
                self.signal(pos);
            }
        }
    }

    fn handle_queue(&mut self, pos: usize) {
        match self.queues[pos].0 {
            QueueRole::Inflate => self.process(pos, Self::inflate),
            QueueRole::Deflate => self.process(pos, Self::deflate),
            QueueRole::Reporting => self.process(pos, Self::report),
            QueueRole::Stats => self.process_stats(pos),
        }
    }
}

impl WorkerHandler for BalloonWorker {
    fn start(&mut self) {
        for pos in 0..self.queues.len() {
            self.handle_queue(pos);
        }
    }

    fn ready(&mut self, token: u64, _events: EventSet) {
        if token == STATS_REQUEST_TOKEN {
            let _ = self.stats_wake.read();
            return self.return_stats();
        }
        let Some(pos) = self.queues.iter().position(|(_, q)| u64::from(q.index) == token) else { return };
        let _ = self.queues[pos].1.notify.read();
        self.handle_queue(pos);
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        // inflateq, deflateq, and up to two of statsq and reporting_vq.
        vec![QUEUE_SIZE; 4]
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.offered;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is the driver's to write; a partial write updates
        // the bytes it covers.
        let mut actual = self.shared.actual.load(Ordering::SeqCst).to_le_bytes();
        let mut touched = false;
        for (i, &b) in data.iter().enumerate() {
            let Some(pos) = usize::try_from(offset).ok().and_then(|o| o.checked_add(i)) else { break };
            if (ACTUAL_OFFSET..ACTUAL_OFFSET + 4).contains(&pos) {
                actual[pos - ACTUAL_OFFSET] = b;
                touched = true;
            }
        }
        if touched {
            self.shared.actual.store(u32::from_le_bytes(actual), Ordering::SeqCst);
        } else {
            log::debug!("virtio-balloon: ignoring a config write of {} bytes at {offset}", data.len());
        }
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        status: Arc<dyn DeviceStatusSink>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let mut roles = Vec::new();
        for q in queues {
            match queue_role(self.acked, q.index) {
                Some(role) => roles.push((role, q)),
                None => {
                    log::warn!("virtio-balloon: queue {} has no role with the negotiated features, ignored", q.index)
                }
            }
        }
        let stats_wake = EventFd::new(libc::EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let waker = stats_wake.try_clone().map_err(ActivateError::Worker)?;
        let mut fds: Vec<_> = roles.iter().map(|(_, q)| (q.notify_fd(), u64::from(q.index), EventSet::IN)).collect();
        fds.push((stats_wake.as_raw_fd(), STATS_REQUEST_TOKEN, EventSet::IN));
        let worker = BalloonWorker {
            mem: memory,
            queues: roles,
            stats_wake,
            shared: self.shared.clone(),
            interrupt: interrupt.clone(),
            status,
            broken: false,
            held_stats: None,
            pfn_log: LogLimiter::default(),
            range_log: LogLimiter::default(),
            request_log: LogLimiter::default(),
        };
        let w = Worker::spawn("virtio-balloon", fds, worker).map_err(ActivateError::Worker)?;
        self.worker = Some(w);
        *lock(&self.shared.interrupt) = Some(interrupt);
        *lock(&self.shared.stats_waker) = Some(waker);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        *lock(&self.shared.interrupt) = None;
        *lock(&self.shared.stats_waker) = None;
        // The guest starts over with an empty balloon; the host's target stays.
        self.shared.actual.store(0, Ordering::SeqCst);
        self.acked = 0;
    }
}

#[cfg(test)]
mod tests;
