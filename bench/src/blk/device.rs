//! The device side: rvmm's virtio-blk worker ([`BlockWorker`]) on a real file,
//! fed by a driver in the same process that keeps a fixed number of requests
//! in a split virtqueue in guest memory.
//!
//! The driver is [`MockDriver`] (virtio's test driver) plus a fixed layout:
//! request slot `s` is the three-descriptor chain `3s -> 3s+1 -> 3s+2` (the
//! 16-byte header, the data buffer, the status byte), written once. Issuing a
//! request rewrites the slot's header (type and sector) and publishes the
//! chain's head in the available ring; a completed request is found in the used
//! ring, its status byte checked, and the slot issued again at the next offset.
//!
//! Two ways to run the worker:
//!
//! - [`Mode::Inline`]: everything on this thread. After publishing, the driver
//!   calls [`BlockWorker::process_queue`] (the device pops the chains and hands
//!   them to the disk engine), waits with `poll` for the engine's completion
//!   eventfd, and calls [`BlockWorker::reap`] (status bytes, used ring,
//!   interrupt). This is the device model's own cost with no thread hand-offs.
//! - [`Mode::Thread`]: the worker runs on its own thread ([`BlockWorker::spawn`]),
//!   exactly as rvmm runs it: the driver kicks the queue's notification eventfd
//!   (what an ioeventfd does for a guest) unless the device set
//!   `VIRTQ_USED_F_NO_NOTIFY`, and waits for the interrupt eventfd (what an
//!   irqfd would deliver to a guest).
//!
//! In both modes the device's interrupt is an eventfd write, the system call an
//! MSI through an irqfd costs rvmm. No guest runs: the driver's own work is a
//! few stores to guest memory, far less than a guest kernel's block layer.

use crate::signals::Signals;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio::block::disk::{create_engine, DiskFile, EngineKind};
use virtio::block::request::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio::block::worker::BlockWorker;
use virtio::device::ActiveQueue;
use virtio::queue::test_utils::{MockDriver, RawDescriptor};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::pattern::{Counter, Measurement, Pattern, Window};

/// Entries of the virtqueue (rvmm's virtio-blk queue size).
pub const QUEUE_SIZE: u16 = virtio::block::QUEUE_SIZE;
/// The largest queue depth: three descriptors per request must fit in the queue.
pub const MAX_DEPTH: usize = 64;

/// Guest memory: the queue, the headers and status bytes, and 64 data buffers of 64 KiB.
const GUEST_MEMORY: usize = 8 << 20;
const QUEUE_BASE: u64 = 0x1000;
const HEADERS: u64 = 0x8000;
const STATUS: u64 = 0x9000;
const DATA: u64 = 0x10_0000;
const DATA_STRIDE: u64 = 0x1_0000;
/// `VIRTQ_USED_F_NO_NOTIFY` (virtio 1.x 2.7.10).
const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;
/// Without a completion for this long, the case stops with an error.
const STALL: Duration = Duration::from_secs(10);

/// How the worker is run (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The driver calls the worker's functions on its own thread.
    Inline,
    /// The worker runs its own event loop on its own thread.
    Thread,
}

impl Mode {
    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Inline => "inline",
            Mode::Thread => "thread",
        }
    }
}

/// The name of an engine in the report.
pub fn engine_name(kind: EngineKind) -> &'static str {
    match kind {
        EngineKind::IoUring => "io_uring",
        EngineKind::Threads => "threads",
        EngineKind::Auto => "auto",
    }
}

/// The result of one device case.
#[derive(Debug, Clone, Copy)]
pub struct DeviceRun {
    /// Requests and time.
    pub measurement: Measurement,
    /// Interrupts the device raised per completed request over the whole case.
    pub interrupts_per_op: f64,
}

/// The driver side of one device case.
struct Driver {
    mock: MockDriver,
    mem: GuestMemoryMmap,
    pattern: Pattern,
    offsets: crate::pattern::Offsets,
    depth: usize,
    /// The next used ring index to look at.
    used_seen: u16,
    in_flight: usize,
    completed: u64,
}

impl Driver {
    fn new(mem: &GuestMemoryMmap, pattern: Pattern, depth: usize, file_size: u64) -> Self {
        let mock = MockDriver::new(mem, GuestAddress(QUEUE_BASE), QUEUE_SIZE);
        let bs = pattern.block_size() as u32;
        for s in 0..depth as u16 {
            let data = DATA + DATA_STRIDE * u64::from(s);
            let data_desc =
                if pattern.is_write() { RawDescriptor::readable(data, bs) } else { RawDescriptor::writable(data, bs) };
            mock.write_desc(3 * s, RawDescriptor::readable(HEADERS + 16 * u64::from(s), 16).with_next(3 * s + 1));
            mock.write_desc(3 * s + 1, data_desc.with_next(3 * s + 2));
            mock.write_desc(3 * s + 2, RawDescriptor::writable(STATUS + 16 * u64::from(s), 1));
        }
        Driver {
            mock,
            mem: mem.clone(),
            pattern,
            offsets: pattern.offsets(file_size),
            depth,
            used_seen: 0,
            in_flight: 0,
            completed: 0,
        }
    }

    /// Fills the write buffers with a non-zero pattern.
    fn fill_buffers(&self) -> Result<(), String> {
        let bytes: Vec<u8> = (0..DATA_STRIDE as usize).map(|i| (i as u8).wrapping_mul(29) ^ 0xa7).collect();
        for s in 0..self.depth as u64 {
            self.mem
                .write_slice(&bytes, GuestAddress(DATA + DATA_STRIDE * s))
                .map_err(|e| format!("cannot fill data buffer {s}: {e}"))?;
        }
        Ok(())
    }

    /// Issues slot `s` at the next offset.
    fn issue(&mut self, s: u16) -> Result<(), String> {
        let offset = self.offsets.next_offset();
        self.issue_at(s, offset)
    }

    /// Issues slot `s` at `offset` (bytes, sector-aligned).
    fn issue_at(&mut self, s: u16, offset: u64) -> Result<(), String> {
        let kind = if self.pattern.is_write() { VIRTIO_BLK_T_OUT } else { VIRTIO_BLK_T_IN };
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&(offset / 512).to_le_bytes());
        self.mem
            .write_slice(&h, GuestAddress(HEADERS + 16 * u64::from(s)))
            .map_err(|e| format!("cannot write request header {s}: {e}"))?;
        // A status the device never writes, so a request it did not finish shows.
        self.mem
            .write_obj(0xffu8, GuestAddress(STATUS + 16 * u64::from(s)))
            .map_err(|e| format!("cannot write status byte {s}: {e}"))?;
        self.mock.publish(3 * s);
        self.in_flight += 1;
        Ok(())
    }

    /// Takes the requests the device completed since the last call, checks them, and
    /// returns their slots.
    fn collect(&mut self, slots: &mut Vec<u16>) -> Result<(), String> {
        slots.clear();
        let used = self.mock.used_idx();
        // The used entries and the status bytes only after the idx that covers them.
        fence(Ordering::Acquire);
        let expected_len = if self.pattern.is_write() { 1 } else { self.pattern.block_size() as u32 + 1 };
        while self.used_seen != used {
            let (id, len) = self.mock.used_elem(self.used_seen);
            self.used_seen = self.used_seen.wrapping_add(1);
            let s = id / 3;
            if id % 3 != 0 || s as usize >= self.depth {
                return Err(format!("the device returned unknown descriptor head {id}"));
            }
            let status: u8 = self
                .mem
                .read_obj(GuestAddress(STATUS + 16 * u64::from(s)))
                .map_err(|e| format!("cannot read status byte {s}: {e}"))?;
            if status != VIRTIO_BLK_S_OK || len != expected_len {
                return Err(format!(
                    "request in slot {s} failed: status {status} (0 = OK), used length {len} \
                     (expected {expected_len}); RVMM_LOG=debug shows the device's view"
                ));
            }
            slots.push(s as u16);
        }
        self.in_flight -= slots.len();
        self.completed += slots.len() as u64;
        Ok(())
    }

    /// Whether the device asked not to be notified (it is polling the ring).
    fn notify_suppressed(&self) -> bool {
        // The avail.idx store must be visible before the device's flag is read
        // (pairs with the fence in the queue's enable_notification).
        fence(Ordering::SeqCst);
        self.mock.used_flags() & VIRTQ_USED_F_NO_NOTIFY != 0
    }
}

/// Waits up to `timeout` for `fd` to become readable; returns whether it is.
fn wait_readable(fd: RawFd, timeout: Duration) -> Result<bool, String> {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("poll: {e}"));
        }
    }
}

/// Everything one device case needs, built before the clock starts.
struct Setup {
    driver: Driver,
    worker: BlockWorker,
    engine_fd: RawFd,
    signals: Arc<Signals>,
    notify: EventFd,
}

fn setup(path: &Path, direct: bool, engine: EngineKind, pattern: Pattern, depth: usize) -> Result<Setup, String> {
    if depth == 0 || depth > MAX_DEPTH {
        return Err(format!("queue depth {depth}: must be 1 to {MAX_DEPTH}"));
    }
    let disk = DiskFile::open(path, false, direct)
        .map_err(|e| format!("cannot open {} for the device: {e}", path.display()))?;
    let file_size = disk.capacity_sectors() * 512;
    let disk = Arc::new(disk);
    let engine = create_engine(engine, &disk)
        .map_err(|e| format!("cannot create the {} disk engine: {e}", engine_name(engine)))?;
    let engine_fd = engine.completion_fd();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_MEMORY)])
        .map_err(|e| format!("cannot map {} MiB of guest memory: {e}", GUEST_MEMORY >> 20))?;
    let driver = Driver::new(&mem, pattern, depth, file_size);
    driver.fill_buffers()?;
    let queue = driver.mock.queue();
    let eventfd =
        |what: &str| EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("cannot create the {what} eventfd: {e}"));
    let notify = eventfd("queue notification")?;
    let signals = Arc::new(Signals::new(eventfd("interrupt")?));
    let worker = BlockWorker::new(
        mem,
        disk,
        engine,
        vec![ActiveQueue {
            index: 0,
            queue,
            notify: notify.try_clone().map_err(|e| format!("cannot duplicate an eventfd: {e}"))?,
        }],
        signals.clone(),
        signals.clone(),
        "rvmm-blk-bench".into(),
    );
    Ok(Setup { driver, worker, engine_fd, signals, notify })
}

/// Runs `pattern` at queue depth `depth` through the virtio-blk worker on the file at
/// `path` (opened with O_DIRECT if `direct`), with `engine`, for `window`.
pub fn run(
    path: &Path,
    direct: bool,
    engine: EngineKind,
    mode: Mode,
    pattern: Pattern,
    depth: usize,
    window: Window,
) -> Result<DeviceRun, String> {
    let s = setup(path, direct, engine, pattern, depth)?;
    let signals = s.signals.clone();
    let (measurement, completed) = match mode {
        Mode::Inline => run_inline(s, window)?,
        Mode::Thread => run_thread(s, window)?,
    };
    if signals.reset_requested() {
        return Err("the device asked for a reset (a malformed queue?)".into());
    }
    Ok(DeviceRun {
        measurement,
        interrupts_per_op: signals.interrupts.load(Ordering::Relaxed) as f64 / completed.max(1) as f64,
    })
}

fn run_inline(s: Setup, window: Window) -> Result<(Measurement, u64), String> {
    let Setup { mut driver, mut worker, engine_fd, signals, .. } = s;
    let check_reset = || {
        if signals.reset_requested() {
            Err("the device asked for a reset (a malformed queue?)".to_string())
        } else {
            Ok(())
        }
    };
    for slot in 0..driver.depth as u16 {
        driver.issue(slot)?;
    }
    let mut counter = Counter::start(window);
    let mut open = true;
    let mut slots = Vec::with_capacity(driver.depth);
    let mut last_progress = Instant::now();
    // Whether chains were published since the device last looked (what a notification
    // would tell it).
    let mut published = true;
    while driver.in_flight > 0 {
        if published {
            worker.process_queue(0);
            check_reset()?;
            published = false;
        }
        // Requests the engine finished at once were completed inside process_queue.
        if worker.in_flight() > 0 && wait_readable(engine_fd, Duration::from_secs(1))? {
            worker.reap();
        }
        driver.collect(&mut slots)?;
        if slots.is_empty() {
            check_reset()?;
            if last_progress.elapsed() > STALL {
                return Err(format!("no request completed for {} s ({} in flight)", STALL.as_secs(), driver.in_flight));
            }
            continue;
        }
        last_progress = Instant::now();
        if open {
            open = counter.record(slots.len() as u64);
        }
        if open {
            for &slot in &slots {
                driver.issue(slot)?;
            }
            published = true;
        }
    }
    Ok((counter.finish(), driver.completed))
}

fn run_thread(s: Setup, window: Window) -> Result<(Measurement, u64), String> {
    let Setup { mut driver, worker, signals, notify, .. } = s;
    let mut thread = worker.spawn().map_err(|e| format!("cannot start the worker thread: {e}"))?;
    let result = drive_thread(&mut driver, &signals, &notify, window);
    // Stop the worker whatever happened; it waits for the I/O in flight before it returns.
    thread.stop();
    Ok((result?, driver.completed))
}

fn drive_thread(
    driver: &mut Driver,
    signals: &Signals,
    notify: &EventFd,
    window: Window,
) -> Result<Measurement, String> {
    let kick = |driver: &Driver| -> Result<(), String> {
        if !driver.notify_suppressed() {
            notify.write(1).map_err(|e| format!("cannot notify the queue: {e}"))?;
        }
        Ok(())
    };
    for slot in 0..driver.depth as u16 {
        driver.issue(slot)?;
    }
    kick(driver)?;
    let mut counter = Counter::start(window);
    let mut open = true;
    let mut slots = Vec::with_capacity(driver.depth);
    let mut last_progress = Instant::now();
    while driver.in_flight > 0 {
        // Clear the interrupt before looking at the ring, so a completion after the
        // look leaves the eventfd readable and the wait below returns at once.
        let _ = signals.irq.read();
        driver.collect(&mut slots)?;
        if slots.is_empty() {
            if signals.reset_requested() {
                return Err("the device asked for a reset (a malformed queue?)".into());
            }
            if last_progress.elapsed() > STALL {
                return Err(format!("no request completed for {} s ({} in flight)", STALL.as_secs(), driver.in_flight));
            }
            wait_readable(signals.irq.as_raw_fd(), Duration::from_secs(1))?;
            continue;
        }
        last_progress = Instant::now();
        if open {
            open = counter.record(slots.len() as u64);
        }
        if open {
            for &slot in &slots {
                driver.issue(slot)?;
            }
            kick(driver)?;
        }
    }
    Ok(counter.finish())
}

/// Reads 64 KiB at `offset` (sector-aligned) through the device (inline mode) and
/// returns them: a check that the device really reads the file.
pub fn read_through_device(path: &Path, direct: bool, engine: EngineKind, offset: u64) -> Result<Vec<u8>, String> {
    let mut s = setup(path, direct, engine, Pattern::SeqRead64k, 1)?;
    s.driver.issue_at(0, offset)?;
    let mut slots = Vec::new();
    let deadline = Instant::now() + STALL;
    while s.driver.in_flight > 0 {
        if Instant::now() > deadline {
            return Err("the check read did not complete".into());
        }
        s.worker.process_queue(0);
        if s.worker.in_flight() > 0 && wait_readable(s.engine_fd, Duration::from_millis(100))? {
            s.worker.reap();
        }
        s.driver.collect(&mut slots)?;
    }
    let mut buf = vec![0u8; Pattern::SeqRead64k.block_size()];
    s.driver.mem.read_slice(&mut buf, GuestAddress(DATA)).map_err(|e| format!("cannot read the data buffer: {e}"))?;
    Ok(buf)
}
