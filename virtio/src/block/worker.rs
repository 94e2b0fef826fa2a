//! The virtio-blk I/O thread (book chapters 5.6-5.9): it sleeps in epoll on the
//! queues' notification eventfds and the disk engine's completion eventfd,
//! turns available descriptor chains into disk operations, and on completion
//! writes the status byte, fills the used ring and interrupts the driver.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::disk::{Completion, DiskEngine, DiskFile, DiskOp, IoVecs};
use super::request::{self, Request, Segment};
use super::MAX_DISCARD_SECTORS;
use crate::device::{ActiveQueue, DeviceStatusSink, VirtioInterrupt};
use crate::queue::DescriptorChain;
use crate::worker::{Worker, WorkerHandler};

/// The engine's completion fd (queues use their index as token).
const TOKEN_ENGINE: u64 = u64::MAX - 1;

/// A request handed to the engine, waiting for its completion.
struct InFlight {
    queue: usize,
    head_index: u16,
    status_addr: u64,
    /// Bytes the device writes into the chain on success (data read + status).
    used_len: u32,
}

/// The state of the I/O thread of one virtio-blk device.
pub struct BlockWorker {
    mem: GuestMemoryMmap,
    disk: Arc<DiskFile>,
    engine: Box<dyn DiskEngine>,
    queues: Vec<ActiveQueue>,
    broken: Vec<bool>,
    interrupt: Arc<dyn VirtioInterrupt>,
    status: Arc<dyn DeviceStatusSink>,
    serial: String,
    in_flight: HashMap<u64, InFlight>,
    next_tag: u64,
}

/// What to do with a parsed request.
enum Action {
    /// Done already: this status and used length.
    Complete(u8, u32),
    /// Hand this operation to the engine; on success `used_len` bytes were written.
    Submit(DiskOp, u32),
}

impl BlockWorker {
    /// A worker for `queues`; [`spawn`](Self::spawn) runs it on its own thread.
    pub fn new(
        mem: GuestMemoryMmap,
        disk: Arc<DiskFile>,
        engine: Box<dyn DiskEngine>,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
        status: Arc<dyn DeviceStatusSink>,
        serial: String,
    ) -> Self {
        let broken = vec![false; queues.len()];
        BlockWorker {
            mem,
            disk,
            engine,
            queues,
            broken,
            interrupt,
            status,
            serial,
            in_flight: HashMap::new(),
            next_tag: 0,
        }
    }

    /// Starts the worker's I/O thread: it sleeps in epoll on the queues'
    /// notification eventfds and the engine's completion fd. Dropping (or
    /// stopping) the returned [`Worker`] first waits for the I/O in flight, so
    /// that nothing touches guest memory after a reset.
    pub fn spawn(self) -> std::io::Result<Worker> {
        let mut fds = vec![(self.engine.completion_fd(), TOKEN_ENGINE, EventSet::IN)];
        for (i, q) in self.queues.iter().enumerate() {
            fds.push((q.notify.as_raw_fd(), i as u64, EventSet::IN));
        }
        Worker::spawn("virtio-blk", fds, self)
    }

    /// Waits (up to 30 s) for every request handed to the engine to complete.
    pub(crate) fn finish_in_flight(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self.in_flight.is_empty() && std::time::Instant::now() < deadline {
            self.reap();
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// Marks queue `q` unusable after a driver error, and asks for a reset.
    fn queue_failed(&mut self, q: usize, err: &dyn std::fmt::Display) {
        if !self.broken[q] {
            log::warn!("virtio-blk: queue {q}: {err}; the device needs a reset");
            self.broken[q] = true;
            self.status.needs_reset();
        }
    }

    /// Takes every available chain of queue `q`, with notifications suppressed
    /// while the queue is being drained (book 5.5: avoid needless exits).
    pub fn process_queue(&mut self, q: usize) {
        if self.broken[q] {
            return;
        }
        loop {
            if let Err(e) = self.queues[q].queue.disable_notification(&self.mem) {
                return self.queue_failed(q, &e);
            }
            loop {
                let chain = match self.queues[q].queue.pop(&self.mem) {
                    Ok(Some(chain)) => chain,
                    Ok(None) => break,
                    Err(e) => return self.queue_failed(q, &e),
                };
                self.handle_chain(q, &chain);
            }
            match self.queues[q].queue.enable_notification(&self.mem) {
                // More buffers arrived while notifications were off: go round again.
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => return self.queue_failed(q, &e),
            }
        }
        // One system call starts the whole batch; what finished inside it is
        // completed now, in the same interrupt as the synchronous answers.
        if let Err(e) = self.engine.commit() {
            log::warn!("virtio-blk: {}: cannot start I/O: {e}; retrying", self.disk.path().display());
        }
        let mut done = Vec::new();
        self.engine.poll(&mut done);
        self.finish(done, Some(q));
    }

    /// Requests handed to the disk engine and not completed yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn handle_chain(&mut self, q: usize, chain: &DescriptorChain) {
        let req = match request::parse(&self.mem, chain) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("virtio-blk: malformed request (head {}): {e}", chain.head_index);
                // Answer with IOERR if there is a status byte to write it to.
                let status = chain.descriptors.iter().rev().find(|d| d.writable && d.len > 0);
                if let Some(d) = status {
                    let _ =
                        self.mem.write_obj(request::VIRTIO_BLK_S_IOERR, GuestAddress(d.addr + u64::from(d.len) - 1));
                }
                return self.add_used(q, chain.head_index, u32::from(status.is_some()));
            }
        };
        match self.plan(&req) {
            Action::Complete(status, used_len) => self.complete(q, req.head_index, req.status_addr, status, used_len),
            Action::Submit(op, used_len) => {
                let tag = self.next_tag;
                self.next_tag = self.next_tag.wrapping_add(1);
                match self.engine.submit(op, tag) {
                    Ok(()) => {
                        self.in_flight.insert(
                            tag,
                            InFlight { queue: q, head_index: req.head_index, status_addr: req.status_addr, used_len },
                        );
                    }
                    Err(e) => {
                        log::warn!("virtio-blk: {}: cannot submit I/O: {e}", self.disk.path().display());
                        self.complete(q, req.head_index, req.status_addr, request::VIRTIO_BLK_S_IOERR, 1);
                    }
                }
            }
        }
    }

    /// Checks a request against the disk and turns it into an action.
    fn plan(&self, req: &Request) -> Action {
        use request::*;
        let ioerr = Action::Complete(VIRTIO_BLK_S_IOERR, 1);
        let capacity = self.disk.capacity_sectors();
        let in_range = |sector: u64, bytes: u64| {
            bytes % SECTOR_SIZE == 0 && sector.checked_add(bytes / SECTOR_SIZE).is_some_and(|end| end <= capacity)
        };
        match req.request_type {
            VIRTIO_BLK_T_IN => {
                let len = req.in_len();
                if !in_range(req.sector, len) {
                    log::debug!("virtio-blk: read of {len} bytes at sector {} is out of range", req.sector);
                    return ioerr;
                }
                match self.iovecs(&req.data_in) {
                    Some(buffers) => {
                        Action::Submit(DiskOp::Read { offset: req.sector * SECTOR_SIZE, buffers }, len as u32 + 1)
                    }
                    None => ioerr,
                }
            }
            VIRTIO_BLK_T_OUT => {
                let len = req.out_len();
                if self.disk.read_only() || !in_range(req.sector, len) {
                    log::debug!("virtio-blk: write of {len} bytes at sector {} refused", req.sector);
                    return ioerr;
                }
                match self.iovecs(&req.data_out) {
                    Some(buffers) => Action::Submit(DiskOp::Write { offset: req.sector * SECTOR_SIZE, buffers }, 1),
                    None => ioerr,
                }
            }
            VIRTIO_BLK_T_FLUSH => Action::Submit(DiskOp::Flush, 1),
            VIRTIO_BLK_T_GET_ID => {
                let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
                let s = self.serial.as_bytes();
                id[..s.len().min(VIRTIO_BLK_ID_BYTES)].copy_from_slice(&s[..s.len().min(VIRTIO_BLK_ID_BYTES)]);
                match scatter(&self.mem, &req.data_in, &id) {
                    Ok(n) => Action::Complete(VIRTIO_BLK_S_OK, n + 1),
                    Err(_) => ioerr,
                }
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                if self.disk.read_only() {
                    return ioerr;
                }
                // max_discard_seg and max_write_zeroes_seg are 1: exactly one segment.
                if req.out_len() != DISCARD_SEGMENT_SIZE as u64 {
                    return Action::Complete(VIRTIO_BLK_S_UNSUPP, 1);
                }
                let Ok(seg) = gather(&self.mem, &req.data_out) else {
                    return ioerr;
                };
                let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
                let sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
                let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
                let discard = req.request_type == VIRTIO_BLK_T_DISCARD;
                let allowed_flags = if discard { 0 } else { VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP };
                if flags & !allowed_flags != 0 || sectors > MAX_DISCARD_SECTORS {
                    return Action::Complete(VIRTIO_BLK_S_UNSUPP, 1);
                }
                let len = u64::from(sectors) * SECTOR_SIZE;
                if !in_range(sector, len) {
                    return ioerr;
                }
                let offset = sector * SECTOR_SIZE;
                let op = if discard {
                    DiskOp::Discard { offset, len }
                } else {
                    DiskOp::WriteZeroes { offset, len, unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 }
                };
                Action::Submit(op, 1)
            }
            other => {
                log::debug!("virtio-blk: unsupported request type {other}");
                Action::Complete(VIRTIO_BLK_S_UNSUPP, 1)
            }
        }
    }

    /// Host iovecs for guest segments; None if one does not lie inside a single memory region.
    fn iovecs(&self, segments: &[Segment]) -> Option<IoVecs> {
        let mut v = Vec::with_capacity(segments.len());
        for s in segments {
            let slice = self.mem.get_slice(GuestAddress(s.addr), s.len as usize).ok()?;
            v.push(libc::iovec { iov_base: slice.ptr_guard_mut().as_ptr().cast(), iov_len: s.len as usize });
        }
        Some(IoVecs(v))
    }

    /// Collects the disk engine's finished operations: writes each request's
    /// status byte, returns its chain to the used ring and interrupts the driver
    /// where it asked for that. The thread [`spawn`](Self::spawn) starts calls it when the engine's
    /// completion eventfd ([`DiskEngine::completion_fd`]) is readable; code that
    /// drives a worker itself, without `spawn` (the virtio-blk benchmark), calls
    /// it after [`process_queue`](Self::process_queue) once that fd is readable.
    /// Nothing to collect is not an error: it then does nothing.
    pub fn reap(&mut self) {
        let mut done: Vec<Completion> = Vec::new();
        self.engine.drain(&mut done);
        self.finish(done, None);
    }

    /// Completes the requests in `done` and interrupts the driver of every
    /// queue that got used buffers, or of `also` (which may have some already).
    fn finish(&mut self, done: Vec<Completion>, also: Option<usize>) {
        let mut touched: Vec<usize> = also.into_iter().collect();
        for (tag, result) in done {
            let Some(f) = self.in_flight.remove(&tag) else {
                continue;
            };
            let (status, used) = match result {
                Ok(_) => (request::VIRTIO_BLK_S_OK, f.used_len),
                Err(e) => {
                    // The VM keeps running; the guest sees an I/O error for this request.
                    log::warn!("virtio-blk: {}: host I/O error: {e}", self.disk.path().display());
                    (request::VIRTIO_BLK_S_IOERR, 1)
                }
            };
            if self.mem.write_obj(status, GuestAddress(f.status_addr)).is_err() {
                log::warn!("virtio-blk: status byte at {:#x} is outside guest memory", f.status_addr);
            }
            self.add_used(f.queue, f.head_index, used);
            if !touched.contains(&f.queue) {
                touched.push(f.queue);
            }
        }
        for q in touched {
            self.signal_if_needed(q);
        }
    }

    fn complete(&mut self, q: usize, head: u16, status_addr: u64, status: u8, used_len: u32) {
        if self.mem.write_obj(status, GuestAddress(status_addr)).is_err() {
            log::warn!("virtio-blk: status byte at {status_addr:#x} is outside guest memory");
        }
        self.add_used(q, head, used_len);
    }

    fn add_used(&mut self, q: usize, head: u16, len: u32) {
        if let Err(e) = self.queues[q].queue.add_used(&self.mem, head, len) {
            self.queue_failed(q, &e);
        }
    }

    fn signal_if_needed(&mut self, q: usize) {
        match self.queues[q].queue.needs_notification(&self.mem) {
            // The queue's own index (which picks its MSI-X vector), not its
            // position among the enabled queues.
            Ok(true) => self.interrupt.notify_queue(self.queues[q].index),
            Ok(false) => {}
            Err(e) => self.queue_failed(q, &e),
        }
    }
}

impl WorkerHandler for BlockWorker {
    /// Buffers the driver queued before DRIVER_OK are processed at once.
    fn start(&mut self) {
        for q in 0..self.queues.len() {
            self.process_queue(q);
        }
    }

    fn ready(&mut self, token: u64, _events: EventSet) {
        if token == TOKEN_ENGINE {
            self.reap();
        } else if let Some(active) = self.queues.get(token as usize) {
            let _ = active.notify.read();
            self.process_queue(token as usize);
        }
    }

    fn stop(&mut self) {
        self.finish_in_flight();
    }
}
