//! virtio-console (virtio 1.x section 5.3): a byte stream between the guest's
//! `hvc0` and the host.
//!
//! One port, no `VIRTIO_CONSOLE_F_MULTIPORT`, so there are exactly two queues
//! and no control queues:
//!
//! | queue | name | direction | buffers |
//! |---|---|---|---|
//! | 0 | receiveq0 | host → guest | device-writable, filled with host input |
//! | 1 | transmitq0 | guest → host | device-readable, written to the output |
//!
//! Host input arrives from another thread (the VMM's stdin reader) through a
//! [`ConsoleInput`] handle. It is kept in a bounded buffer
//! ([`INPUT_BUFFER_CAP`]) until the guest posts receive buffers: input is
//! never dropped because the guest has no buffers yet, the worker resumes at
//! the next receiveq notification. Only input beyond the cap is dropped (and
//! logged).
//!
//! `VIRTIO_CONSOLE_F_SIZE` is offered only when the VMM gives a terminal size
//! at creation ([`Console::with_size`]; the host side is a terminal): `cols`
//! and `rows` then hold it, and a new size set through
//! [`ConsoleInput::set_size`] while the device runs raises a configuration
//! change notification (only when the size really changed). A console on a
//! file or a pipe offers no size and the guest keeps its default. Caveat:
//! Linux read `cols` and `rows` in the opposite order of the spec for years
//! and changed to the spec's order in 2025, so a guest kernel from before that
//! fix sees the size transposed (set it with `stty` there). The device follows
//! the spec: `cols` at offset 0, `rows` at offset 2.
//! `VIRTIO_CONSOLE_F_EMERG_WRITE` is offered: a
//! byte the driver writes to `emerg_wr` goes straight to the output, even
//! before the device is set up.
//!
//! The output writer and the input buffer live outside the worker, so they
//! keep working across device resets and re-activations.

#![warn(missing_docs)]

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::device::{read_config_bytes, ActivateError, ActiveQueue, DeviceStatusSink, VirtioDevice, VirtioInterrupt};
use crate::queue::DescriptorChain;
use crate::worker::{Worker, WorkerHandler};

/// The virtio device ID of a console.
/// (From virtio-bindings, re-exported under the name the device code uses.)
pub use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
/// Feature bit: `cols` and `rows` are valid (offered when a size was given, see the module docs).
pub const VIRTIO_CONSOLE_F_SIZE: u32 = 0;
/// Feature bit: several ports and the control queues (not offered).
pub const VIRTIO_CONSOLE_F_MULTIPORT: u32 = 1;
/// Feature bit: the `emerg_wr` config field accepts output bytes.
pub const VIRTIO_CONSOLE_F_EMERG_WRITE: u32 = 2;
/// Offset of `cols` in the configuration space.
pub const COLS_OFFSET: usize = 0;
/// Offset of `rows` in the configuration space.
pub const ROWS_OFFSET: usize = 2;
/// Offset of `emerg_wr` in the configuration space.
pub const EMERG_WR_OFFSET: u64 = 8;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of receiveq0 (host to guest).
pub const RX_QUEUE: u16 = 0;
/// Index of transmitq0 (guest to host).
pub const TX_QUEUE: u16 = 1;
/// Most host input bytes held while the guest has no receive buffers; more is dropped.
pub const INPUT_BUFFER_CAP: usize = 64 * 1024;
/// Most bytes taken from one transmit chain; the rest of a longer chain is
/// discarded (Linux never sends more than 32 KiB at once).
pub const MAX_TX_BYTES_PER_CHAIN: usize = 64 * 1024;

/// Size of the configuration space: `cols`, `rows`, `max_nr_ports`, `emerg_wr`.
const CONFIG_SIZE: usize = 12;
/// Copy granularity from guest transmit buffers to the output.
const TX_CHUNK: usize = 4096;
/// Worker token of the input eventfd (the queues use their index).
const INPUT_TOKEN: u64 = 2;

use devices::ratelimit::TimedLogLimiter as LogLimiter;

/// Locks `m`, ignoring poisoning (a panicked holder left plain data behind).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Host input waiting for the guest.
#[derive(Default)]
struct InputState {
    buf: VecDeque<u8>,
    /// The running worker's input eventfd (a clone), if the device is active.
    waker: Option<EventFd>,
    dropped: u64,
    drop_log: LogLimiter,
}

/// Where guest output goes.
struct OutputState {
    writer: Option<Box<dyn Write + Send>>,
    /// An error was logged already: later ones are not.
    failed: bool,
}

impl OutputState {
    /// Writes `bytes` and, if `flush`, flushes; the first error is logged, later ones not.
    fn write(&mut self, bytes: &[u8], flush: bool) {
        let Some(w) = self.writer.as_mut() else { return };
        let mut result = w.write_all(bytes);
        if result.is_ok() && flush {
            result = w.flush();
        }
        if let Err(e) = result {
            if !self.failed {
                self.failed = true;
                log::warn!("virtio-console: writing guest output failed: {e} (further errors are not logged)");
            }
        }
    }
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsoleSize {
    /// Columns (characters per line).
    pub cols: u16,
    /// Rows (lines).
    pub rows: u16,
}

/// The terminal size and how to tell the driver about a change.
#[derive(Default)]
struct SizeState {
    /// The current size; `None` when the console was created without one
    /// (`VIRTIO_CONSOLE_F_SIZE` is then not offered).
    size: Option<ConsoleSize>,
    /// How to interrupt the driver, while the device is active.
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
}

/// State shared by the device, its worker and the input handles.
struct ConsoleShared {
    input: Mutex<InputState>,
    output: Mutex<OutputState>,
    size: Mutex<SizeState>,
    /// The driver accepted `VIRTIO_CONSOLE_F_SIZE`.
    size_acked: AtomicBool,
}

/// A virtio-console device with one port.
pub struct Console {
    shared: Arc<ConsoleShared>,
    worker: Option<Worker>,
}

/// A handle to feed host input (bytes, and terminal size changes) to a
/// [`Console`]: cloneable and usable from any thread (the VMM's stdin reader,
/// its main thread), before, during and after activation.
#[derive(Clone)]
pub struct ConsoleInput {
    shared: Arc<ConsoleShared>,
}

impl Console {
    /// A console whose guest output goes to `output` (discarded if `None`),
    /// and the handle through which host input reaches the guest.
    /// `VIRTIO_CONSOLE_F_SIZE` is not offered (see [`with_size`](Self::with_size)).
    pub fn new(output: Option<Box<dyn Write + Send>>) -> (Console, ConsoleInput) {
        Self::with_size(output, None)
    }

    /// Like [`new`](Self::new), and with `Some(size)` the device offers
    /// `VIRTIO_CONSOLE_F_SIZE` and shows `size` (changed later with
    /// [`ConsoleInput::set_size`]) in `cols` and `rows`.
    pub fn with_size(output: Option<Box<dyn Write + Send>>, size: Option<ConsoleSize>) -> (Console, ConsoleInput) {
        let shared = Arc::new(ConsoleShared {
            input: Mutex::new(InputState::default()),
            output: Mutex::new(OutputState { writer: output, failed: false }),
            size: Mutex::new(SizeState { size, interrupt: None }),
            size_acked: AtomicBool::new(false),
        });
        (Console { shared: shared.clone(), worker: None }, ConsoleInput { shared })
    }

    fn config_space(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        // cols and rows are 0 without a size (F_SIZE not offered);
        // max_nr_ports is only meaningful with MULTIPORT but 1 is the truth;
        // emerg_wr reads as 0.
        let size = lock(&self.shared.size).size.unwrap_or_default();
        c[COLS_OFFSET..COLS_OFFSET + 2].copy_from_slice(&size.cols.to_le_bytes());
        c[ROWS_OFFSET..ROWS_OFFSET + 2].copy_from_slice(&size.rows.to_le_bytes());
        c[4..8].copy_from_slice(&1u32.to_le_bytes());
        c
    }
}

impl ConsoleInput {
    /// Queues `bytes` for the guest and wakes the device worker. Bytes beyond
    /// [`INPUT_BUFFER_CAP`] still waiting are dropped (with a rate-limited
    /// log line); those that fit are kept in order.
    pub fn queue_input(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut input = lock(&self.shared.input);
        let room = INPUT_BUFFER_CAP.saturating_sub(input.buf.len());
        let take = room.min(bytes.len());
        input.buf.extend(&bytes[..take]);
        let dropped = bytes.len() - take;
        if dropped > 0 {
            input.dropped += dropped as u64;
            if let Some(suppressed) = input.drop_log.check() {
                log::warn!(
                    "virtio-console: input buffer full ({INPUT_BUFFER_CAP} bytes, the guest is not reading): \
                     dropped {dropped} bytes ({} dropped in all, {suppressed} messages suppressed)",
                    input.dropped
                );
            }
        }
        if take > 0 {
            if let Some(waker) = &input.waker {
                let _ = waker.write(1);
            }
        }
    }

    /// Sets the terminal size the guest sees in `cols` and `rows`. If it
    /// changed and the driver, which accepted `VIRTIO_CONSOLE_F_SIZE`, is
    /// running, raises a configuration change notification. Ignored (with a
    /// debug log line) by a console created without a size, which does not
    /// offer the feature.
    pub fn set_size(&self, new: ConsoleSize) {
        let mut state = lock(&self.shared.size);
        let Some(size) = state.size.as_mut() else {
            log::debug!("virtio-console: no size was given at creation, ignoring {}x{}", new.cols, new.rows);
            return;
        };
        if *size == new {
            return;
        }
        *size = new;
        let interrupt = state.interrupt.clone();
        drop(state);
        if let Some(interrupt) = interrupt {
            if self.shared.size_acked.load(Ordering::SeqCst) {
                interrupt.notify_config();
            }
        }
    }

    /// The size set last, or `None` for a console created without one.
    pub fn size(&self) -> Option<ConsoleSize> {
        lock(&self.shared.size).size
    }

    /// Bytes queued and not yet given to the guest.
    pub fn buffered(&self) -> usize {
        lock(&self.shared.input).buf.len()
    }

    /// Bytes dropped so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.shared.input).dropped
    }
}

/// The console's I/O thread.
struct ConsoleWorker {
    mem: GuestMemoryMmap,
    rx: ActiveQueue,
    tx: ActiveQueue,
    /// Readable when host input was queued.
    wake: EventFd,
    shared: Arc<ConsoleShared>,
    interrupt: Arc<dyn VirtioInterrupt>,
    status: Arc<dyn DeviceStatusSink>,
    broken: bool,
    rx_log: LogLimiter,
    tx_log: LogLimiter,
}

impl ConsoleWorker {
    fn fail(&mut self, what: &dyn std::fmt::Display) {
        if !self.broken {
            log::warn!("virtio-console: {what}; the device needs a reset");
            self.broken = true;
            self.status.needs_reset();
        }
    }

    /// Interrupts the driver for queue `index` if it wants that.
    fn signal(&mut self, index: u16) {
        let q = if index == RX_QUEUE { &mut self.rx } else { &mut self.tx };
        match q.queue.needs_notification(&self.mem) {
            Ok(true) => self.interrupt.notify_queue(index),
            Ok(false) => {}
            Err(e) => self.fail(&e),
        }
    }

    /// Copies buffered host input into the guest's receive buffers until
    /// either runs out. At most one queue's worth of chains per call: if that
    /// is used up, the worker kicks itself and comes back after other work.
    fn process_rx(&mut self) {
        if self.broken {
            return;
        }
        let budget = self.rx.queue.size();
        let mut used = 0u16;
        loop {
            if used >= budget {
                let _ = self.rx.notify.write(1);
                break;
            }
            let mut input = lock(&self.shared.input);
            if input.buf.is_empty() {
                break;
            }
            let chain = match self.rx.queue.pop(&self.mem) {
                Ok(Some(c)) => c,
                // No buffers: keep the input, the driver's next kick resumes.
                Ok(None) => break,
                Err(e) => {
                    drop(input);
                    return self.fail(&e);
                }
            };
            let written = match fill_rx_chain(&self.mem, &chain, &input.buf) {
                Ok(n) => {
                    input.buf.drain(..n);
                    n
                }
                Err(e) => {
                    if let Some(s) = self.rx_log.check() {
                        log::warn!("virtio-console: receive buffer: {e} ({s} messages suppressed)");
                    }
                    0
                }
            };
            drop(input);
            if written == 0 && chain.writable_len() == 0 {
                if let Some(s) = self.rx_log.check() {
                    log::warn!(
                        "virtio-console: receive chain {} has no device-writable buffer ({s} messages suppressed)",
                        chain.head_index
                    );
                }
            }
            if let Err(e) = self.rx.queue.add_used(&self.mem, chain.head_index, written as u32) {
                return self.fail(&e);
            }
            used += 1;
        }
        if used > 0 {
            self.signal(RX_QUEUE);
        }
    }

    /// Writes every available transmit chain to the output (at most one
    /// queue's worth per call, like [`process_rx`](Self::process_rx)).
    fn process_tx(&mut self) {
        if self.broken {
            return;
        }
        let budget = self.tx.queue.size();
        let mut used = 0u16;
        loop {
            if used >= budget {
                let _ = self.tx.notify.write(1);
                break;
            }
            let chain = match self.tx.queue.pop(&self.mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return self.fail(&e),
            };
            self.transmit(&chain);
            if let Err(e) = self.tx.queue.add_used(&self.mem, chain.head_index, 0) {
                return self.fail(&e);
            }
            used += 1;
        }
        if used > 0 {
            self.signal(TX_QUEUE);
        }
    }

    /// Copies the readable part of `chain` (up to [`MAX_TX_BYTES_PER_CHAIN`])
    /// to the output in bounded pieces, then flushes.
    fn transmit(&mut self, chain: &DescriptorChain) {
        let available = chain.readable_len();
        if available > MAX_TX_BYTES_PER_CHAIN as u64 {
            if let Some(s) = self.tx_log.check() {
                log::warn!(
                    "virtio-console: transmit chain {} has {available} bytes, only the first \
                     {MAX_TX_BYTES_PER_CHAIN} are written ({s} messages suppressed)",
                    chain.head_index
                );
            }
        }
        let total = available.min(MAX_TX_BYTES_PER_CHAIN as u64) as usize;
        if total == 0 {
            return;
        }
        let mut buf = [0u8; TX_CHUNK];
        let mut output = lock(&self.shared.output);
        let mut done = 0usize;
        while done < total {
            let n = TX_CHUNK.min(total - done);
            if let Err(e) = chain.read_at(&self.mem, done as u64, &mut buf[..n]) {
                if let Some(s) = self.tx_log.check() {
                    log::warn!("virtio-console: transmit buffer: {e} ({s} messages suppressed)");
                }
                break;
            }
            done += n;
            output.write(&buf[..n], done == total);
        }
        if done < total {
            output.write(&[], true);
        }
    }
}

/// Writes the first bytes of `input` into the writable part of `chain`;
/// returns how many (nothing is written on error).
fn fill_rx_chain(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain,
    input: &VecDeque<u8>,
) -> Result<usize, crate::queue::QueueError> {
    let n = usize::try_from(chain.writable_len()).unwrap_or(usize::MAX).min(input.len());
    if n == 0 {
        return Ok(0);
    }
    let (a, b) = input.as_slices();
    let from_a = n.min(a.len());
    let mut writer = chain.writer();
    writer.write_all(mem, &a[..from_a])?;
    if n > from_a {
        writer.write_all(mem, &b[..n - from_a])?;
    }
    Ok(n)
}

impl WorkerHandler for ConsoleWorker {
    fn start(&mut self) {
        self.process_tx();
        self.process_rx();
    }

    fn ready(&mut self, token: u64, _events: EventSet) {
        match token {
            t if t == u64::from(RX_QUEUE) => {
                let _ = self.rx.notify.read();
                self.process_rx();
            }
            t if t == u64::from(TX_QUEUE) => {
                let _ = self.tx.notify.read();
                self.process_tx();
            }
            INPUT_TOKEN => {
                let _ = self.wake.read();
                self.process_rx();
            }
            _ => {}
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        let size = if lock(&self.shared.size).size.is_some() { 1 << VIRTIO_CONSOLE_F_SIZE } else { 0 };
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_CONSOLE_F_EMERG_WRITE) | size
    }

    fn ack_features(&mut self, features: u64) {
        // EMERG_WRITE works whether acked or not; size changes are signalled
        // only to a driver that accepted SIZE.
        let size = features & self.features() & (1 << VIRTIO_CONSOLE_F_SIZE) != 0;
        self.shared.size_acked.store(size, Ordering::SeqCst);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // emerg_wr: the low byte goes out, whatever the device state (5.3.5.1).
        if offset == EMERG_WR_OFFSET {
            if let Some(&byte) = data.first() {
                lock(&self.shared.output).write(&[byte], true);
            }
        } else {
            log::debug!("virtio-console: ignoring a config write of {} bytes at {offset}", data.len());
        }
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        status: Arc<dyn DeviceStatusSink>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let (mut rx, mut tx) = (None, None);
        for q in queues {
            match q.index {
                RX_QUEUE => rx = Some(q),
                TX_QUEUE => tx = Some(q),
                _ => {}
            }
        }
        let (Some(rx), Some(tx)) = (rx, tx) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let waker = wake.try_clone().map_err(ActivateError::Worker)?;
        let fds = vec![
            (rx.notify_fd(), u64::from(RX_QUEUE), EventSet::IN),
            (tx.notify_fd(), u64::from(TX_QUEUE), EventSet::IN),
            (wake.as_raw_fd(), INPUT_TOKEN, EventSet::IN),
        ];
        let worker = ConsoleWorker {
            mem: memory,
            rx,
            tx,
            wake,
            shared: self.shared.clone(),
            interrupt: interrupt.clone(),
            status,
            broken: false,
            rx_log: LogLimiter::default(),
            tx_log: LogLimiter::default(),
        };
        // Input queued from now on wakes the worker; what was queued before
        // is picked up by its start().
        lock(&self.shared.input).waker = Some(waker);
        match Worker::spawn("virtio-console", fds, worker) {
            Ok(w) => {
                self.worker = Some(w);
                // Size changes from now on are signalled; the driver reads the
                // current size itself at start.
                lock(&self.shared.size).interrupt = Some(interrupt);
                Ok(())
            }
            Err(e) => {
                lock(&self.shared.input).waker = None;
                Err(ActivateError::Worker(e))
            }
        }
    }

    fn reset(&mut self) {
        // Stop the worker first, then forget its eventfd. Buffered input and
        // the output stay for the next activation.
        self.worker = None;
        lock(&self.shared.input).waker = None;
        lock(&self.shared.size).interrupt = None;
        self.shared.size_acked.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::test_utils::{MockDriver, RawDescriptor};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};
    use vm_memory::GuestAddress;

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

    /// An in-memory output the test can read while the device owns the writer.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl SharedBuf {
        fn contents(&self) -> Vec<u8> {
            lock(&self.0).clone()
        }
    }

    /// A writer that always fails, counting attempts.
    struct Broken(Arc<AtomicU32>);
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(std::io::Error::other("broken pipe"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Guest memory with one region per queue, so the mock drivers' data
    /// areas do not overlap.
    fn memory() -> GuestMemoryMmap {
        let mb = 1usize << 20;
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mb), (GuestAddress(0x20_0000), mb)]).unwrap()
    }

    fn active_queues(mem: &GuestMemoryMmap, size: u16) -> (MockDriver, MockDriver, Vec<ActiveQueue>) {
        let mut drivers = Vec::new();
        let mut queues = Vec::new();
        for (index, base) in [(RX_QUEUE, 0x1000u64), (TX_QUEUE, 0x20_1000)] {
            let d = MockDriver::new(mem, GuestAddress(base), size);
            queues.push(ActiveQueue { index, queue: d.queue(), notify: EventFd::new(libc::EFD_NONBLOCK).unwrap() });
            drivers.push(d);
        }
        let tx = drivers.pop().unwrap();
        let rx = drivers.pop().unwrap();
        (rx, tx, queues)
    }

    struct Harness {
        rx: MockDriver,
        tx: MockDriver,
        worker: ConsoleWorker,
        input: ConsoleInput,
        out: SharedBuf,
        signals: Arc<Signals>,
    }

    fn harness(size: u16) -> Harness {
        let mem = memory();
        let (rx, tx, mut queues) = active_queues(&mem, size);
        let out = SharedBuf::default();
        let (console, input) = Console::new(Some(Box::new(out.clone())));
        let signals = Arc::new(Signals::default());
        let txq = queues.pop().unwrap();
        let rxq = queues.pop().unwrap();
        let worker = ConsoleWorker {
            mem,
            rx: rxq,
            tx: txq,
            wake: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            shared: console.shared.clone(),
            interrupt: signals.clone(),
            status: signals.clone(),
            broken: false,
            rx_log: LogLimiter::default(),
            tx_log: LogLimiter::default(),
        };
        Harness { rx, tx, worker, input, out, signals }
    }

    #[test]
    fn transmit_goes_to_the_output_in_order() {
        let mut h = harness(16);
        let a = h.tx.add_buffers(&[b"hello, ", b"world"], &[]);
        let b = h.tx.add_buffers(&[b"\n"], &[]);
        h.worker.process_tx();
        assert_eq!(h.out.contents(), b"hello, world\n");
        assert_eq!(h.tx.used_idx(), 2);
        assert_eq!(h.tx.used_elem(0), (u32::from(a), 0));
        assert_eq!(h.tx.used_elem(1), (u32::from(b), 0));
        assert_eq!(h.signals.queue.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn transmit_through_an_indirect_table_and_a_long_chain() {
        let mut h = harness(16);
        h.tx.add_indirect_buffers(&[b"ind", b"irect"], &[]);
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        h.tx.add_buffers(&[&big], &[]);
        h.worker.process_tx();
        let mut want = b"indirect".to_vec();
        want.extend(&big);
        assert_eq!(h.out.contents(), want);
    }

    #[test]
    fn oversized_transmit_chain_is_capped() {
        let mut h = harness(16);
        let big = vec![b'x'; MAX_TX_BYTES_PER_CHAIN + 100];
        h.tx.add_buffers(&[&big], &[]);
        h.worker.process_tx();
        assert_eq!(h.out.contents().len(), MAX_TX_BYTES_PER_CHAIN);
        assert_eq!(h.tx.used_idx(), 1);
    }

    #[test]
    fn output_errors_do_not_stop_the_queue() {
        let mut h = harness(16);
        let attempts = Arc::new(AtomicU32::new(0));
        lock(&h.worker.shared.output).writer = Some(Box::new(Broken(attempts.clone())));
        h.tx.add_buffers(&[b"a"], &[]);
        h.tx.add_buffers(&[b"b"], &[]);
        h.worker.process_tx();
        assert_eq!(h.tx.used_idx(), 2);
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert!(lock(&h.worker.shared.output).failed);
        assert_eq!(h.signals.resets.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn no_output_discards_but_completes() {
        let mut h = harness(16);
        lock(&h.worker.shared.output).writer = None;
        h.tx.add_buffers(&[b"lost"], &[]);
        h.worker.process_tx();
        assert_eq!(h.tx.used_idx(), 1);
    }

    #[test]
    fn input_queued_before_buffers_arrives_later() {
        let mut h = harness(16);
        h.input.queue_input(b"typed early");
        // The guest has not posted buffers: nothing happens, nothing is lost.
        h.worker.process_rx();
        assert_eq!(h.rx.used_idx(), 0);
        assert_eq!(h.input.buffered(), 11);
        // The guest posts a buffer and kicks the receive queue.
        let head = h.rx.add_buffers(&[], &[64]);
        h.worker.rx.notify.write(1).unwrap();
        h.worker.ready(u64::from(RX_QUEUE), EventSet::IN);
        assert_eq!(h.rx.used_elem(0), (u32::from(head), 11));
        assert_eq!(h.rx.read(buffer_addr(&h.rx, head), 11), b"typed early");
        assert_eq!(h.input.buffered(), 0);
        assert_eq!(h.signals.queue.load(Ordering::SeqCst), 1);
    }

    /// The guest address of the first buffer of chain `head` of `driver`.
    fn buffer_addr(driver: &MockDriver, head: u16) -> u64 {
        let desc = driver.desc_table() + 16 * u64::from(head);
        u64::from_le_bytes(driver.read(desc, 8).try_into().unwrap())
    }

    #[test]
    fn input_larger_than_a_buffer_spans_several() {
        let mut h = harness(16);
        let text: Vec<u8> = (0..100u8).collect();
        h.input.queue_input(&text);
        let heads: Vec<u16> = (0..3).map(|_| h.rx.add_buffers(&[], &[40])).collect();
        h.worker.process_rx();
        assert_eq!(h.rx.used_idx(), 3);
        let mut got = Vec::new();
        for (i, &head) in heads.iter().enumerate() {
            let (id, len) = h.rx.used_elem(i as u16);
            assert_eq!(id, u32::from(head));
            got.extend(h.rx.read(buffer_addr(&h.rx, head), len as usize));
        }
        assert_eq!(h.rx.used_elem(2).1, 20);
        assert_eq!(got, text);
    }

    #[test]
    fn input_fills_a_chain_of_several_descriptors_across_the_ring_wrap() {
        let mut h = harness(16);
        // VecDeque wraps internally after pushes and drains; the bytes stay in order.
        h.input.queue_input(&[1; 10]);
        h.rx.add_buffers(&[], &[10]);
        h.worker.process_rx();
        let text: Vec<u8> = (0..50u8).collect();
        h.input.queue_input(&text);
        let a = h.rx.alloc(20);
        let b = h.rx.alloc(40);
        h.rx.add_chain(&[RawDescriptor::writable(a, 20), RawDescriptor::writable(b, 40)]);
        h.worker.process_rx();
        assert_eq!(h.rx.used_elem(1).1, 50);
        let mut got = h.rx.read(a, 20);
        got.extend(h.rx.read(b, 30));
        assert_eq!(got, text);
    }

    #[test]
    fn over_cap_input_is_dropped_and_the_rest_kept_intact() {
        let mut h = harness(16);
        let first: Vec<u8> = (0..INPUT_BUFFER_CAP - 10).map(|i| (i % 253) as u8).collect();
        h.input.queue_input(&first);
        h.input.queue_input(b"0123456789ABCDEF");
        assert_eq!(h.input.buffered(), INPUT_BUFFER_CAP);
        assert_eq!(h.input.dropped(), 6);
        h.rx.add_buffers(&[], &[INPUT_BUFFER_CAP as u32 + 100]);
        h.worker.process_rx();
        let (head, len) = h.rx.used_elem(0);
        assert_eq!(len as usize, INPUT_BUFFER_CAP);
        let got = h.rx.read(buffer_addr(&h.rx, head as u16), len as usize);
        assert_eq!(&got[..first.len()], &first[..]);
        assert_eq!(&got[first.len()..], b"0123456789");
        // Room again: new input is accepted.
        h.input.queue_input(b"more");
        assert_eq!(h.input.buffered(), 4);
    }

    #[test]
    fn readable_receive_buffer_is_returned_empty() {
        let mut h = harness(16);
        h.input.queue_input(b"abc");
        h.rx.add_buffers(&[b"not writable"], &[]);
        h.rx.add_buffers(&[], &[8]);
        h.worker.process_rx();
        assert_eq!(h.rx.used_elem(0).1, 0);
        assert_eq!(h.rx.used_elem(1).1, 3);
        assert_eq!(h.signals.resets.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn malformed_chain_needs_reset() {
        let mut h = harness(16);
        h.tx.add_chain(&[RawDescriptor::readable(0x7000_0000, 16)]);
        h.worker.process_tx();
        assert_eq!(h.signals.resets.load(Ordering::SeqCst), 1);
        // Broken: later work is ignored, and reset is requested only once.
        h.tx.add_buffers(&[b"x"], &[]);
        h.worker.process_tx();
        h.input.queue_input(b"y");
        h.rx.add_chain(&[RawDescriptor::writable(0x7000_0000, 16)]);
        h.worker.process_rx();
        assert_eq!(h.signals.resets.load(Ordering::SeqCst), 1);
        assert!(h.out.contents().is_empty());
    }

    #[test]
    fn malformed_receive_chain_needs_reset() {
        let mut h = harness(16);
        h.input.queue_input(b"y");
        h.rx.add_chain(&[RawDescriptor::writable(0x7000_0000, 16)]);
        h.worker.process_rx();
        assert_eq!(h.signals.resets.load(Ordering::SeqCst), 1);
        assert_eq!(h.input.buffered(), 1);
    }

    #[test]
    fn a_full_ring_of_work_is_split_with_a_self_kick() {
        let mut h = harness(4);
        for _ in 0..4 {
            h.tx.add_buffers(&[b"ab"], &[]);
        }
        h.worker.process_tx();
        assert_eq!(h.tx.used_idx(), 4);
        // The budget was used up: the worker kicked itself to look again.
        assert_eq!(h.worker.tx.notify.read().unwrap(), 1);
        assert_eq!(h.out.contents(), b"abababab");
    }

    #[test]
    fn emergency_write_reaches_the_output_without_activation() {
        let out = SharedBuf::default();
        let (mut console, _input) = Console::new(Some(Box::new(out.clone())));
        assert_ne!(console.features() & (1 << VIRTIO_CONSOLE_F_EMERG_WRITE), 0);
        console.write_config(EMERG_WR_OFFSET, &u32::from(b'!').to_le_bytes());
        console.write_config(EMERG_WR_OFFSET, b"?");
        console.write_config(0, b"ignored");
        assert_eq!(out.contents(), b"!?");
        let mut cfg = [0xffu8; 12];
        console.read_config(0, &mut cfg);
        assert_eq!(cfg, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    }

    fn config(console: &Console) -> [u8; 12] {
        let mut cfg = [0xffu8; 12];
        console.read_config(0, &mut cfg);
        cfg
    }

    #[test]
    fn no_size_no_size_feature() {
        let (mut console, input) = Console::new(None);
        assert_eq!(console.features() & (1 << VIRTIO_CONSOLE_F_SIZE), 0);
        assert_eq!(input.size(), None);
        // A size set later does not turn the feature on nor show in the config.
        input.set_size(ConsoleSize { cols: 80, rows: 24 });
        assert_eq!(input.size(), None);
        assert_eq!(console.features() & (1 << VIRTIO_CONSOLE_F_SIZE), 0);
        assert_eq!(&config(&console)[..4], &[0, 0, 0, 0]);
        console.ack_features(console.features() | (1 << VIRTIO_CONSOLE_F_SIZE));
        assert!(!console.shared.size_acked.load(Ordering::SeqCst), "not offered, not accepted");
    }

    #[test]
    fn size_is_offered_and_shown_cols_first() {
        let (console, input) = Console::with_size(None, Some(ConsoleSize { cols: 132, rows: 43 }));
        assert_ne!(console.features() & (1 << VIRTIO_CONSOLE_F_SIZE), 0);
        assert_ne!(console.features() & (1 << VIRTIO_CONSOLE_F_EMERG_WRITE), 0);
        assert_eq!(config(&console), [132, 0, 43, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        // Partial reads of one field.
        let mut rows = [0u8; 2];
        console.read_config(ROWS_OFFSET as u64, &mut rows);
        assert_eq!(u16::from_le_bytes(rows), 43);
        // Before activation: the new size shows, nothing is signalled (nobody to tell).
        input.set_size(ConsoleSize { cols: 300, rows: 1000 });
        assert_eq!(config(&console)[..4], [44, 1, 232, 3]);
        assert_eq!(input.size(), Some(ConsoleSize { cols: 300, rows: 1000 }));
    }

    #[test]
    fn size_change_while_running_signals_a_config_change_once() {
        let (mut console, input) = Console::with_size(None, Some(ConsoleSize { cols: 80, rows: 24 }));
        console.ack_features(console.features());
        let mem = memory();
        let (_rx, _tx, queues) = active_queues(&mem, 16);
        let signals = Arc::new(Signals::default());
        console.activate(mem, signals.clone(), signals.clone(), queues).unwrap();
        let changes = || signals.config.load(Ordering::SeqCst);
        input.set_size(ConsoleSize { cols: 80, rows: 24 });
        assert_eq!(changes(), 0, "the same size is no change");
        input.set_size(ConsoleSize { cols: 100, rows: 24 });
        assert_eq!(changes(), 1);
        assert_eq!(config(&console)[..4], [100, 0, 24, 0]);
        input.set_size(ConsoleSize { cols: 100, rows: 24 });
        assert_eq!(changes(), 1);
        input.set_size(ConsoleSize { cols: 100, rows: 50 });
        assert_eq!(changes(), 2);
        // After a reset nobody is told; the new size is still shown.
        console.reset();
        input.set_size(ConsoleSize { cols: 10, rows: 5 });
        assert_eq!(changes(), 2);
        assert_eq!(config(&console)[..4], [10, 0, 5, 0]);
    }

    #[test]
    fn a_driver_without_size_gets_no_config_change() {
        let (mut console, input) = Console::with_size(None, Some(ConsoleSize { cols: 80, rows: 24 }));
        console.ack_features(1 << VIRTIO_F_VERSION_1);
        let mem = memory();
        let (_rx, _tx, queues) = active_queues(&mem, 16);
        let signals = Arc::new(Signals::default());
        console.activate(mem, signals.clone(), signals.clone(), queues).unwrap();
        input.set_size(ConsoleSize { cols: 81, rows: 25 });
        assert_eq!(signals.config.load(Ordering::SeqCst), 0);
        assert_eq!(config(&console)[..4], [81, 0, 25, 0]);
    }

    /// Polls `f` for up to five seconds.
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
    fn worker_thread_wakes_on_input_and_survives_reset() {
        let out = SharedBuf::default();
        let (mut console, input) = Console::new(Some(Box::new(out.clone())));
        assert_eq!(console.device_type(), VIRTIO_ID_CONSOLE);
        assert_eq!(console.queue_max_sizes(), vec![QUEUE_SIZE, QUEUE_SIZE]);
        let signals = Arc::new(Signals::default());
        // Input before activation is held.
        input.queue_input(b"before ");
        for round in 0..2u8 {
            let mem = memory();
            let (mut rx, mut tx, queues) = active_queues(&mem, 16);
            let rx_kick = queues[0].notify.try_clone().unwrap();
            let tx_kick = queues[1].notify.try_clone().unwrap();
            console.activate(mem, signals.clone(), signals.clone(), queues).unwrap();
            let head = rx.add_buffers(&[], &[64]);
            rx_kick.write(1).unwrap();
            if round == 0 {
                assert!(wait_for(|| rx.used_idx() == 1));
                assert_eq!(rx.read(buffer_addr(&rx, head), 7), b"before ");
                // Input while active wakes the worker through its eventfd.
                let head = rx.add_buffers(&[], &[64]);
                rx_kick.write(1).unwrap();
                input.queue_input(b"during");
                assert!(wait_for(|| rx.used_idx() == 2));
                assert_eq!(rx.used_elem(1).1, 6);
                assert_eq!(rx.read(buffer_addr(&rx, head), 6), b"during");
            } else {
                // Queued while reset, delivered after re-activation.
                assert!(wait_for(|| rx.used_idx() == 1));
                assert_eq!(rx.read(buffer_addr(&rx, head), 5), b"after");
            }
            tx.add_buffers(&[&[b'0' + round]], &[]);
            tx_kick.write(1).unwrap();
            assert!(wait_for(|| tx.used_idx() == 1));
            console.reset();
            input.queue_input(b"after");
        }
        assert_eq!(out.contents(), b"01");
        assert_eq!(signals.resets.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn activation_needs_both_queues() {
        let (mut console, _input) = Console::new(None);
        let mem = memory();
        let (_rx, _tx, mut queues) = active_queues(&mem, 16);
        queues.pop();
        let signals = Arc::new(Signals::default());
        assert!(matches!(
            console.activate(mem, signals.clone(), signals, queues),
            Err(ActivateError::QueueCount { expected: 2, got: 1 })
        ));
        assert!(lock(&console.shared.input).waker.is_none());
    }

    #[test]
    fn input_handle_is_send_sync_and_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<ConsoleInput>();
        fn send<T: Send>() {}
        send::<Console>();
    }

    #[test]
    fn garbage_chains_never_panic_and_account_for_every_byte() {
        // Random transmit and receive chains and random host input: no panic;
        // every transmit chain's readable bytes (up to the cap) reach the
        // output, every input byte taken is in a used receive buffer, the
        // input buffer stays capped, or the device is marked broken.
        use crate::queue::test_utils::{ChainFuzzer, XorShift};
        use crate::queue::VIRTQ_DESC_F_WRITE;
        let mut rng = XorShift::new(0xc025_0000_0000_0001);
        let new = || {
            // 64 descriptors: a batch of chains never reuses slots of another.
            let mut h = harness(64);
            let mut fz_rx = ChainFuzzer::new(&mut h.rx, 0x1_0000);
            let mut fz_tx = ChainFuzzer::new(&mut h.tx, 0x1_0000);
            fz_rx.fatal_percent = 1;
            fz_tx.fatal_percent = 1;
            (h, fz_rx, fz_tx)
        };
        let (mut h, mut fz_rx, mut fz_tx) = new();
        let (mut rebuilds, mut out_bytes, mut in_bytes) = (0u32, 0usize, 0usize);
        let readable = |d: &[RawDescriptor]| -> u64 {
            d.iter().filter(|d| d.flags & VIRTQ_DESC_F_WRITE == 0).map(|d| u64::from(d.len)).sum()
        };
        let writable = |d: &[RawDescriptor]| -> u64 {
            d.iter().filter(|d| d.flags & VIRTQ_DESC_F_WRITE != 0).map(|d| u64::from(d.len)).sum()
        };
        for _ in 0..1500 {
            if rng.chance(50) {
                let before = h.out.contents().len();
                let mut expected = 0usize;
                for _ in 0..1 + rng.below(3) {
                    let n = rng.below(300) as usize;
                    let data = rng.bytes(n);
                    let (_, descs) = fz_tx.add(&mut rng, &mut h.tx, &data);
                    expected += (readable(&descs) as usize).min(MAX_TX_BYTES_PER_CHAIN);
                }
                h.worker.process_tx();
                if h.signals.resets.load(Ordering::SeqCst) == 0 {
                    assert_eq!(h.tx.used_idx(), h.tx.avail_idx(), "every transmit chain completed");
                    assert_eq!(h.out.contents().len() - before, expected);
                    out_bytes += expected;
                }
            } else {
                let mut posted = std::collections::HashMap::new();
                for _ in 0..rng.below(3) {
                    let (head, descs) = fz_rx.add(&mut rng, &mut h.rx, &[]);
                    posted.insert(u32::from(head), writable(&descs));
                }
                let n = rng.pick(&[0u64, 1, 100, 5000, 100_000]);
                let n = rng.below(n + 1) as usize;
                h.input.queue_input(&rng.bytes(n));
                let buffered = h.input.buffered();
                assert!(buffered <= INPUT_BUFFER_CAP);
                let used_before = h.rx.used_idx();
                h.worker.process_rx();
                if h.signals.resets.load(Ordering::SeqCst) == 0 {
                    let mut taken = 0usize;
                    let mut i = used_before;
                    while i != h.rx.used_idx() {
                        let (id, len) = h.rx.used_elem(i);
                        if let Some(&room) = posted.get(&id) {
                            assert!(u64::from(len) <= room, "{len} bytes used of a {room}-byte buffer");
                        }
                        taken += len as usize;
                        i = i.wrapping_add(1);
                    }
                    assert_eq!(buffered - h.input.buffered(), taken, "input taken = bytes used");
                    in_bytes += taken;
                }
            }
            if h.signals.resets.load(Ordering::SeqCst) > 0 {
                rebuilds += 1;
                (h, fz_rx, fz_tx) = new();
            }
        }
        assert!((1..200).contains(&rebuilds), "{rebuilds} rebuilds");
        assert!(out_bytes > 100_000 && in_bytes > 100_000, "{out_bytes} {in_bytes}");
    }
}
