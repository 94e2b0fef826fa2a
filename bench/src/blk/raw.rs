//! The baseline: the same offsets and sizes done directly on the file, with no
//! device model in between.
//!
//! - Queue depth 1: `pread`/`pwrite` from one thread, one request after the other.
//! - Deeper queues: as many threads as the queue depth, each doing `pread`/`pwrite`
//!   one request after the other (the offsets taken in turn from one shared
//!   sequence), and one io_uring with that many requests in flight, run two ways.
//!   *Batched*: the replacements for the requests that completed are queued and
//!   submitted together by the `io_uring_enter` that also waits for the next
//!   completion (fewest system calls). *One submit per request*: each replacement
//!   is submitted by its own `io_uring_enter` as soon as it is queued, as rvmm's
//!   io_uring engine does. Neither is always faster: batching saves system calls,
//!   but the block layer then plugs the batch and hands it to the disk at once.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::pattern::{process_cpu_seconds, Counter, Measurement, Pattern, Window};

/// A zeroed heap buffer aligned to 4 KiB (what O_DIRECT asks of buffers).
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    /// `len` bytes (more than zero), filled with a fixed non-zero pattern.
    pub fn new(len: usize) -> Result<AlignedBuf, String> {
        let layout =
            std::alloc::Layout::from_size_align(len.max(1), 4096).map_err(|e| format!("buffer of {len} bytes: {e}"))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(format!("cannot allocate a buffer of {len} bytes"));
        }
        let mut b = AlignedBuf { ptr, layout };
        for (i, byte) in b.as_mut_slice().iter_mut().enumerate() {
            *byte = (i as u8).wrapping_mul(31) ^ 0x5a;
        }
        Ok(b)
    }

    /// The buffer's bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of layout.size() bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }

    /// The start of the buffer.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
}

// SAFETY: an AlignedBuf owns its allocation alone; moving it (or a &mut to it) to another
// thread moves that ownership, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout and not freed before.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Runs `pattern` with `pread`/`pwrite`, one request at a time, from this thread.
pub fn run_sync(file: &File, file_size: u64, pattern: Pattern, window: Window) -> Result<Measurement, String> {
    let bs = pattern.block_size();
    let mut buf = AlignedBuf::new(bs)?;
    let mut offsets = pattern.offsets(file_size);
    let fd = file.as_raw_fd();
    let mut counter = Counter::start(window);
    loop {
        let offset = offsets.next_offset();
        transfer(fd, &mut buf, pattern, offset)?;
        if !counter.record(1) {
            break;
        }
    }
    Ok(counter.finish())
}

/// One `pread` or `pwrite` of the whole buffer at `offset`.
fn transfer(fd: i32, buf: &mut AlignedBuf, pattern: Pattern, offset: u64) -> Result<(), String> {
    let bs = pattern.block_size();
    loop {
        // SAFETY: buf holds at least bs bytes and outlives the call.
        let n = unsafe {
            if pattern.is_write() {
                libc::pwrite(fd, buf.as_mut_ptr().cast(), bs, offset as libc::off_t)
            } else {
                libc::pread(fd, buf.as_mut_ptr().cast(), bs, offset as libc::off_t)
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("{} of {bs} bytes at {offset}: {e}", op_name(pattern)));
        }
        if n as usize != bs {
            return Err(format!("{} of {bs} bytes at {offset} transferred {n} bytes", op_name(pattern)));
        }
        return Ok(());
    }
}

/// Runs `pattern` from `threads` threads, each doing `pread`/`pwrite` one request after
/// the other, with the offsets taken in turn from one shared sequence. Completions are
/// counted by sampling a shared counter at the start and the end of the measured time.
pub fn run_threads(
    file: &File,
    file_size: u64,
    pattern: Pattern,
    threads: usize,
    window: Window,
) -> Result<Measurement, String> {
    let offsets = pattern.offsets(file_size);
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let fd = file.as_raw_fd();
    let mut bufs = (0..threads).map(|_| AlignedBuf::new(pattern.block_size())).collect::<Result<Vec<_>, _>>()?;
    let measured = std::thread::scope(|scope| {
        for buf in bufs.iter_mut() {
            let (offsets, next, done, stop, failure) = (&offsets, &next, &done, &stop, &failure);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let offset = offsets.offset(next.fetch_add(1, Ordering::Relaxed));
                    if let Err(e) = transfer(fd, buf, pattern, offset) {
                        failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(window.warmup);
        let (t0, n0, cpu0) = (Instant::now(), done.load(Ordering::Relaxed), process_cpu_seconds());
        std::thread::sleep(window.measure);
        let (t1, n1, cpu1) = (Instant::now(), done.load(Ordering::Relaxed), process_cpu_seconds());
        stop.store(true, Ordering::Relaxed);
        Measurement { ops: n1 - n0, seconds: t1.duration_since(t0).as_secs_f64(), cpu_seconds: (cpu1 - cpu0).max(0.0) }
    });
    // The scope has joined every thread: a failure is known by now.
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(measured),
    }
}

/// Runs `pattern` through one io_uring with `depth` requests in flight; `batched`
/// submits the replacements of a batch of completions with one system call, otherwise
/// each with its own (see the module documentation).
pub fn run_uring(
    file: &File,
    file_size: u64,
    pattern: Pattern,
    depth: usize,
    batched: bool,
    window: Window,
) -> Result<Measurement, String> {
    use io_uring::{opcode, types};
    let bs = pattern.block_size();
    // Declared before the ring, so dropped after it.
    let mut bufs = (0..depth).map(|_| AlignedBuf::new(bs)).collect::<Result<Vec<_>, _>>()?;
    let mut ring = io_uring::IoUring::new(depth.next_power_of_two() as u32)
        .map_err(|e| format!("io_uring with {depth} entries: {e}"))?;
    let mut offsets = pattern.offsets(file_size);
    let fd = types::Fd(file.as_raw_fd());
    // Queues the request of slot `slot` at `offset`.
    let push = |ring: &mut io_uring::IoUring, buf: &mut AlignedBuf, slot: usize, offset: u64| {
        let entry = if pattern.is_write() {
            opcode::Write::new(fd, buf.as_mut_ptr(), bs as u32).offset(offset).build()
        } else {
            opcode::Read::new(fd, buf.as_mut_ptr(), bs as u32).offset(offset).build()
        }
        .user_data(slot as u64 | (offset << 8));
        // SAFETY: the buffer lives in `bufs` until after the ring is dropped, and the
        // loop below waits for every request before returning.
        unsafe { ring.submission().push(&entry) }.map_err(|_| "io_uring submission queue full".to_string())
    };
    for (slot, buf) in bufs.iter_mut().enumerate() {
        push(&mut ring, buf, slot, offsets.next_offset())?;
    }
    let mut in_flight = depth;
    let mut counter = Counter::start(window);
    let mut open = true;
    let mut failure: Option<String> = None;
    let mut done: Vec<(usize, u64, i32)> = Vec::with_capacity(depth);
    // Once a request fails, no new ones are issued, but the loop still waits for those in
    // flight: the kernel may write into their buffers until they complete.
    while in_flight > 0 {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Nothing more can be learned from this ring; leak the buffers rather
                // than free memory the kernel may still write to.
                std::mem::forget(bufs);
                return Err(format!("io_uring_enter: {e}"));
            }
        }
        done.clear();
        done.extend(ring.completion().map(|c| ((c.user_data() & 0xff) as usize, c.user_data() >> 8, c.result())));
        for &(_, offset, result) in &done {
            if result != bs as i32 && failure.is_none() {
                let what = if result < 0 {
                    std::io::Error::from_raw_os_error(-result).to_string()
                } else {
                    format!("transferred {result} bytes")
                };
                failure = Some(format!("io_uring {} of {bs} bytes at {offset}: {what}", op_name(pattern)));
            }
        }
        in_flight -= done.len();
        if open && failure.is_none() {
            open = counter.record(done.len() as u64);
        }
        if open && failure.is_none() {
            for &(slot, _, _) in &done {
                push(&mut ring, &mut bufs[slot], slot, offsets.next_offset())?;
                in_flight += 1;
                if !batched {
                    loop {
                        match ring.submit() {
                            Ok(_) => break,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            Err(e) => {
                                // As above: the kernel may still use the buffers.
                                std::mem::forget(bufs);
                                return Err(format!("io_uring_enter: {e}"));
                            }
                        }
                    }
                }
            }
        }
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(counter.finish()),
    }
}

fn op_name(pattern: Pattern) -> &'static str {
    if pattern.is_write() {
        "write"
    } else {
        "read"
    }
}
