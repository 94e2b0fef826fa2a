//! The disk behind a virtio-blk device and the engines that perform its I/O
//! asynchronously (book chapter 5.8, "the device processes I/O
//! asynchronously"): requests are submitted from the device worker and their
//! completions come back through an eventfd the worker polls.
//!
//! Two engines: io_uring (the `io-uring` crate), and a pool of threads doing
//! the same system calls for kernels or sandboxes without io_uring.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use super::request::SECTOR_SIZE;

/// Which engine performs disk I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// io_uring, falling back to threads where the kernel refuses it.
    #[default]
    Auto,
    /// io_uring only.
    IoUring,
    /// A pool of threads doing preadv/pwritev.
    Threads,
}

/// A disk image or block device opened for a virtio-blk device.
#[derive(Debug)]
pub struct DiskFile {
    file: Arc<File>,
    path: PathBuf,
    read_only: bool,
    direct: bool,
    capacity_sectors: u64,
}

impl DiskFile {
    /// Opens `path`; `direct` bypasses the host page cache (O_DIRECT).
    pub fn open(path: &Path, read_only: bool, direct: bool) -> io::Result<Self> {
        let mut options = OpenOptions::new();
        options.read(true).write(!read_only);
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let file = options.open(path)?;
        // The size of a regular file or a block device alike.
        let size = {
            use std::io::{Seek, SeekFrom};
            (&file).seek(SeekFrom::End(0))?
        };
        Ok(DiskFile {
            file: Arc::new(file),
            path: path.to_path_buf(),
            read_only,
            direct,
            capacity_sectors: size / SECTOR_SIZE,
        })
    }

    /// Whether the file was opened with O_DIRECT.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Capacity in 512-byte sectors (a partial last sector is not exposed).
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }
}

/// Host buffers (into guest memory) for one read or write.
#[derive(Debug)]
pub struct IoVecs(pub Vec<libc::iovec>);

// SAFETY: the iovecs point into guest memory, which stays mapped for the whole
// life of the VM and so outlives every request in flight; the pointers carry no
// thread affinity.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// Total bytes.
    pub fn len(&self) -> usize {
        self.0.iter().map(|v| v.iov_len).sum()
    }
    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One disk operation.
#[derive(Debug)]
pub enum DiskOp {
    /// Read at a byte offset into the buffers.
    Read {
        /// Byte offset.
        offset: u64,
        /// Destination.
        buffers: IoVecs,
    },
    /// Write the buffers at a byte offset.
    Write {
        /// Byte offset.
        offset: u64,
        /// Source.
        buffers: IoVecs,
    },
    /// fdatasync.
    Flush,
    /// Deallocate a byte range (the file keeps its size; it reads back as zeroes).
    Discard {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Make a byte range read as zeroes, deallocating it if `unmap`.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Whether the range may be deallocated.
        unmap: bool,
    },
}

/// A finished operation: the caller's tag and the bytes transferred or the error.
pub type Completion = (u64, io::Result<u32>);

/// An engine performing [`DiskOp`]s asynchronously.
///
/// The worker hands over a batch of operations with [`submit`](Self::submit),
/// then calls [`commit`](Self::commit) once, so that an engine may start the
/// whole batch with one system call; [`poll`](Self::poll) then collects what
/// finished at once (page-cache hits often do), and the rest is collected with
/// [`drain`](Self::drain) when [`completion_fd`](Self::completion_fd) is readable.
pub trait DiskEngine: Send {
    /// Queues `op`; its completion carries `tag`. The engine may wait for
    /// [`commit`](Self::commit) to start it.
    fn submit(&mut self, op: DiskOp, tag: u64) -> io::Result<()>;
    /// Starts every queued operation. An error leaves them queued: the engine
    /// makes its completion fd readable so that a later [`drain`](Self::drain) retries.
    fn commit(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Readable when completions are waiting that [`poll`](Self::poll) has not taken.
    fn completion_fd(&self) -> RawFd;
    /// Starts what is still queued and moves finished operations into `out`,
    /// consuming the completion fd's readiness.
    fn drain(&mut self, out: &mut Vec<Completion>);
    /// Moves operations that have already finished into `out` without a system
    /// call and without touching the completion fd (engines that cannot, do nothing).
    fn poll(&mut self, _out: &mut Vec<Completion>) {}
    /// The engine's name, for logs and benchmarks.
    fn name(&self) -> &'static str;
}

/// Creates the engine `kind` for `disk`.
pub fn create_engine(kind: EngineKind, disk: &DiskFile) -> io::Result<Box<dyn DiskEngine>> {
    match kind {
        EngineKind::Threads => Ok(Box::new(thread_pool(disk)?)),
        EngineKind::IoUring => Ok(Box::new(IoUringEngine::new(disk.file().clone(), 256, submission_for(disk))?)),
        EngineKind::Auto => match IoUringEngine::new(disk.file().clone(), 256, submission_for(disk)) {
            Ok(e) => Ok(Box::new(e)),
            Err(e) => {
                log::info!("{}: io_uring unavailable ({e}); using the thread pool", disk.path().display());
                Ok(Box::new(thread_pool(disk)?))
            }
        },
    }
}

fn thread_pool(disk: &DiskFile) -> io::Result<ThreadPoolEngine> {
    ThreadPoolEngine::new(disk.file().clone(), POOL_THREADS_INITIAL, POOL_THREADS_MAX)
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on an fd we own; the kernel validates offset and length.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as libc::off_t, len as libc::off_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn write_zero_bytes(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 64 * 1024];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Performs `op` with blocking system calls (the thread pool's worker, and the
/// io_uring engine's fallback for operations it does not queue).
pub fn execute(file: &File, op: &DiskOp) -> io::Result<u32> {
    let fd = file.as_raw_fd();
    match op {
        DiskOp::Read { offset, buffers } | DiskOp::Write { offset, buffers } => {
            let is_read = matches!(op, DiskOp::Read { .. });
            let total = buffers.len();
            let mut iovs = buffers.0.clone();
            let mut done = 0usize;
            let mut first = 0usize;
            while done < total {
                let (ptr, cnt) = (iovs[first..].as_ptr(), (iovs.len() - first) as libc::c_int);
                let pos = (*offset + done as u64) as libc::off_t;
                // SAFETY: the iovecs describe guest memory that stays mapped (see IoVecs).
                let n = unsafe {
                    if is_read {
                        libc::preadv(fd, ptr, cnt, pos)
                    } else {
                        libc::pwritev(fd, ptr, cnt, pos)
                    }
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "disk ended inside the request"));
                }
                // Advance over what was transferred.
                let mut left = n as usize;
                done += left;
                while left > 0 && first < iovs.len() {
                    if iovs[first].iov_len <= left {
                        left -= iovs[first].iov_len;
                        first += 1;
                    } else {
                        iovs[first].iov_base = (iovs[first].iov_base as usize + left) as *mut libc::c_void;
                        iovs[first].iov_len -= left;
                        left = 0;
                    }
                }
            }
            Ok(total as u32)
        }
        DiskOp::Flush => {
            file.sync_data()?;
            Ok(0)
        }
        DiskOp::Discard { offset, len } => {
            fallocate(file, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, *offset, *len)?;
            Ok(0)
        }
        DiskOp::WriteZeroes { offset, len, unmap } => {
            let mode = if *unmap { libc::FALLOC_FL_PUNCH_HOLE } else { libc::FALLOC_FL_ZERO_RANGE };
            match fallocate(file, mode | libc::FALLOC_FL_KEEP_SIZE, *offset, *len) {
                Ok(()) => {}
                // Not every file system or device can; zeroes written the slow way are the same zeroes.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => write_zero_bytes(file, *offset, *len)?,
                Err(e) => return Err(e),
            }
            Ok(0)
        }
    }
}

/// The thread pool's starting size.
pub const POOL_THREADS_INITIAL: usize = 4;
/// The most threads the pool grows to: enough for a queue depth of 64, as
/// QEMU's thread pool.
pub const POOL_THREADS_MAX: usize = 64;

/// How a pool thread performs an operation (replaceable in tests).
type Executor = Arc<dyn Fn(&File, &DiskOp) -> io::Result<u32> + Send + Sync>;

/// A pool of threads performing operations with blocking system calls.
///
/// It starts with a few threads and adds one whenever an operation arrives
/// while every thread is busy, up to a maximum: a fixed small pool would cap
/// every disk at its size in requests in flight (4 threads made QD32 behave as
/// QD4). Threads stay until the engine is dropped.
pub struct ThreadPoolEngine {
    jobs: Option<Sender<(DiskOp, u64)>>,
    shared: PoolShared,
    threads: Vec<JoinHandle<()>>,
    max_threads: usize,
}

/// What the engine and its threads share.
#[derive(Clone)]
struct PoolShared {
    file: Arc<File>,
    rx: Arc<Mutex<Receiver<(DiskOp, u64)>>>,
    done: Arc<Mutex<VecDeque<Completion>>>,
    event: Arc<EventFd>,
    /// Threads waiting for work, less operations sent and not yet taken.
    idle: Arc<std::sync::atomic::AtomicUsize>,
    exec: Executor,
}

impl ThreadPoolEngine {
    /// Starts `initial` threads on `file`; the pool grows to `max` threads.
    pub fn new(file: Arc<File>, initial: usize, max: usize) -> io::Result<Self> {
        Self::with_executor(file, initial, max, Arc::new(execute))
    }

    fn with_executor(file: Arc<File>, initial: usize, max: usize, exec: Executor) -> io::Result<Self> {
        let (tx, rx) = channel::<(DiskOp, u64)>();
        let shared = PoolShared {
            file,
            rx: Arc::new(Mutex::new(rx)),
            done: Arc::new(Mutex::new(VecDeque::new())),
            event: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
            idle: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            exec,
        };
        let mut engine = ThreadPoolEngine { jobs: Some(tx), shared, threads: Vec::new(), max_threads: max.max(1) };
        for _ in 0..initial.clamp(1, engine.max_threads) {
            engine.spawn_thread()?;
            engine.shared.idle.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(engine)
    }

    /// Threads in the pool now.
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    fn spawn_thread(&mut self) -> io::Result<()> {
        let shared = self.shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("blk-io{}", self.threads.len()))
            .spawn(move || pool_worker(&shared))?;
        self.threads.push(handle);
        Ok(())
    }
}

fn pool_worker(shared: &PoolShared) {
    loop {
        let job = shared.rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((op, tag)) = job else { return };
        let result = (shared.exec)(&shared.file, &op);
        shared.done.lock().unwrap_or_else(|e| e.into_inner()).push_back((tag, result));
        let _ = shared.event.write(1);
        shared.idle.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl DiskEngine for ThreadPoolEngine {
    fn submit(&mut self, op: DiskOp, tag: u64) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        let jobs = self.jobs.as_ref().ok_or_else(|| io::Error::other("engine stopped"))?;
        jobs.send((op, tag)).map_err(|_| io::Error::other("disk threads have stopped"))?;
        // Reserve an idle thread for it, or add one; if the pool is full (or a
        // thread cannot be created) the operation waits for the next free thread.
        let reserved = self.shared.idle.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |i| i.checked_sub(1)).is_ok();
        if !reserved && self.threads.len() < self.max_threads {
            if let Err(e) = self.spawn_thread() {
                log::warn!("virtio-blk: cannot add a disk thread ({} running): {e}", self.threads.len());
            }
        }
        Ok(())
    }
    fn completion_fd(&self) -> RawFd {
        self.shared.event.as_raw_fd()
    }
    fn drain(&mut self, out: &mut Vec<Completion>) {
        let _ = self.shared.event.read();
        out.extend(self.shared.done.lock().unwrap_or_else(|e| e.into_inner()).drain(..));
    }
    fn name(&self) -> &'static str {
        "threads"
    }
}

impl Drop for ThreadPoolEngine {
    fn drop(&mut self) {
        // Closing the channel ends the workers once the queued jobs are done.
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// When an [`IoUringEngine`] hands its operations to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submission {
    /// One io_uring_enter per operation, at once: the device starts on the first
    /// request while the worker parses the next. Best where requests wait for
    /// a device (O_DIRECT): measured here, 1.00 of raw at QD 32 against 0.73 batched.
    EachOperation,
    /// One io_uring_enter per batch, at [`DiskEngine::commit`]: best where the
    /// kernel does the work inside the call (page-cache hits), so that system
    /// calls are the cost: 0.34 of raw at QD 32 against 0.28 one by one.
    Batch,
}

/// The submission policy for `disk`: see [`Submission`].
pub fn submission_for(disk: &DiskFile) -> Submission {
    if disk.direct() {
        Submission::EachOperation
    } else {
        Submission::Batch
    }
}

/// An io_uring with its eventfd; operations in flight keep their buffers here.
pub struct IoUringEngine {
    submission: Submission,
    ring: io_uring::IoUring,
    file: Arc<File>,
    event: EventFd,
    in_flight: std::collections::HashMap<u64, DiskOp>,
    /// Completions of operations done synchronously (WriteZeroes with a fallback).
    ready: Vec<Completion>,
}

impl IoUringEngine {
    /// Creates a ring of `entries` for `file`, submitting as `submission` says.
    pub fn new(file: Arc<File>, entries: u32, submission: Submission) -> io::Result<Self> {
        let ring = io_uring::IoUring::new(entries)?;
        let event = EventFd::new(libc::EFD_NONBLOCK)?;
        // Every completion signals the eventfd. (IORING_REGISTER_EVENTFD_ASYNC,
        // which skips completions made in the submitting thread, would save the
        // stale wake-up after `poll` took them, but it also skips completions the
        // kernel runs as task work in that thread while it sleeps in epoll_wait:
        // those would never wake the worker.)
        ring.submitter().register_eventfd(event.as_raw_fd())?;
        Ok(IoUringEngine { submission, ring, file, event, in_flight: Default::default(), ready: Vec::new() })
    }

    /// Moves the completion queue's entries (and synchronous results) into `out`.
    fn collect(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.ready);
        for cqe in self.ring.completion() {
            let tag = cqe.user_data();
            let op = self.in_flight.remove(&tag);
            let result = cqe.result();
            out.push((
                tag,
                if result < 0 {
                    Err(io::Error::from_raw_os_error(-result))
                } else {
                    match op {
                        // A short transfer on a regular file means the request ran past its end.
                        Some(DiskOp::Read { buffers, .. } | DiskOp::Write { buffers, .. })
                            if (result as usize) < buffers.len() =>
                        {
                            Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short transfer"))
                        }
                        _ => Ok(result as u32),
                    }
                },
            ));
        }
    }
}

impl DiskEngine for IoUringEngine {
    fn submit(&mut self, op: DiskOp, tag: u64) -> io::Result<()> {
        use io_uring::{opcode, types};
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = match &op {
            DiskOp::Read { offset, buffers } => {
                opcode::Readv::new(fd, buffers.0.as_ptr(), buffers.0.len() as u32).offset(*offset).build()
            }
            DiskOp::Write { offset, buffers } => {
                opcode::Writev::new(fd, buffers.0.as_ptr(), buffers.0.len() as u32).offset(*offset).build()
            }
            DiskOp::Flush => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
            DiskOp::Discard { offset, len } => opcode::Fallocate::new(fd, *len)
                .offset(*offset)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            DiskOp::WriteZeroes { .. } => {
                // Needs the EOPNOTSUPP fallback: do it here; `poll` or the next drain reports it.
                let result = execute(&self.file, &op);
                self.ready.push((tag, result));
                return self.event.write(1);
            }
        };
        let entry = entry.user_data(tag);
        // SAFETY: the buffers the entry points to are kept in `in_flight` until its
        // completion is reaped, and they point into guest memory that outlives the VM's I/O.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            // The submission queue is full: let the kernel take what is queued, then retry once.
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        self.in_flight.insert(tag, op);
        // The operation is queued and will run: a failed io_uring_enter is retried
        // from `drain` (commit made the eventfd readable), never reported as a
        // failure of an operation the kernel may still perform.
        if self.submission == Submission::EachOperation {
            if let Err(e) = self.commit() {
                log::warn!("virtio-blk: io_uring submission failed: {e}; retrying");
            }
        }
        Ok(())
    }

    fn commit(&mut self) -> io::Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) => {
                // The entries stay in the submission queue; wake the worker to retry.
                let _ = self.event.write(1);
                Err(e)
            }
        }
    }

    fn completion_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    fn drain(&mut self, out: &mut Vec<Completion>) {
        let _ = self.event.read();
        if let Err(e) = self.commit() {
            log::warn!("virtio-blk: io_uring submission failed: {e}; retrying");
        }
        self.collect(out);
    }

    fn poll(&mut self, out: &mut Vec<Completion>) {
        self.collect(out);
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_disk(name: &str, len: usize) -> (PathBuf, DiskFile) {
        let path = std::env::temp_dir().join(format!("rvmm-disk-{}-{name}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![0xaa; len]).unwrap();
        let disk = DiskFile::open(&path, false, false).unwrap();
        (path, disk)
    }

    fn roundtrip(kind: EngineKind) {
        let (path, disk) = temp_disk(&format!("{kind:?}"), 8192);
        let mut engine = create_engine(kind, &disk).unwrap();
        let mut data = vec![0x5au8; 1024];
        let iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
        engine.submit(DiskOp::Write { offset: 512, buffers: IoVecs(vec![iov]) }, 1).unwrap();
        let mut done = Vec::new();
        while done.is_empty() {
            engine.drain(&mut done);
        }
        assert_eq!(done[0].0, 1);
        assert_eq!(*done[0].1.as_ref().unwrap(), 1024);
        let mut back = vec![0u8; 2048];
        let iov = libc::iovec { iov_base: back.as_mut_ptr().cast(), iov_len: back.len() };
        engine.submit(DiskOp::Read { offset: 0, buffers: IoVecs(vec![iov]) }, 2).unwrap();
        done.clear();
        while done.is_empty() {
            engine.drain(&mut done);
        }
        assert!(back[..512].iter().all(|&b| b == 0xaa));
        assert!(back[512..1536].iter().all(|&b| b == 0x5a));
        // Reading past the end is an error, not a silent short read.
        let iov = libc::iovec { iov_base: back.as_mut_ptr().cast(), iov_len: back.len() };
        engine.submit(DiskOp::Read { offset: 7168, buffers: IoVecs(vec![iov]) }, 3).unwrap();
        done.clear();
        while done.is_empty() {
            engine.drain(&mut done);
        }
        assert!(done[0].1.is_err());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn thread_pool_round_trip() {
        roundtrip(EngineKind::Threads);
    }

    #[test]
    fn thread_pool_grows_while_every_thread_is_busy() {
        let (path, disk) = temp_disk("pool-grow", 4096);
        // Operations block until the test releases them, so the pool cannot
        // catch up and must add a thread for each one beyond its idle threads.
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let g = gate.clone();
        let exec: Executor = Arc::new(move |_, _| {
            let (open, cv) = &*g;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            Ok(0)
        });
        let mut engine = ThreadPoolEngine::with_executor(disk.file().clone(), 2, 6, exec).unwrap();
        assert_eq!(engine.thread_count(), 2);
        for tag in 0..10 {
            engine.submit(DiskOp::Flush, tag).unwrap();
        }
        assert_eq!(engine.thread_count(), 6, "grown to the maximum, not beyond");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let mut done = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while done.len() < 10 && std::time::Instant::now() < deadline {
            engine.drain(&mut done);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut tags: Vec<u64> = done.iter().map(|(t, _)| *t).collect();
        tags.sort_unstable();
        assert_eq!(tags, (0..10).collect::<Vec<_>>(), "every queued operation ran");
        // Idle threads are reused: no growth while they can take the work.
        for tag in 10..14 {
            engine.submit(DiskOp::Flush, tag).unwrap();
        }
        assert_eq!(engine.thread_count(), 6);
        drop(engine);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn io_uring_round_trip_where_the_kernel_allows_it() {
        let (path, disk) = temp_disk("probe-uring", 512);
        let available = IoUringEngine::new(disk.file().clone(), 8, Submission::Batch).is_ok();
        let _ = std::fs::remove_file(path);
        if !available {
            eprintln!("SKIPPED: io_uring is not available here; the thread pool is used instead");
            return;
        }
        roundtrip(EngineKind::IoUring);
    }

    #[test]
    fn auto_engine_round_trip() {
        roundtrip(EngineKind::Auto);
    }

    #[test]
    fn discard_makes_zeroes() {
        let (path, disk) = temp_disk("discard", 1 << 20);
        execute(disk.file(), &DiskOp::Discard { offset: 4096, len: 65536 }).unwrap();
        execute(disk.file(), &DiskOp::WriteZeroes { offset: 0, len: 512, unmap: false }).unwrap();
        let data = std::fs::read(&path).unwrap();
        assert!(data[..512].iter().all(|&b| b == 0));
        assert!(data[512..4096].iter().all(|&b| b == 0xaa));
        assert!(data[4096..4096 + 65536].iter().all(|&b| b == 0));
        let _ = std::fs::remove_file(path);
    }
}
