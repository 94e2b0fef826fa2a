//! The device side: rvmm's virtio-net worker ([`NetWorker`]) over the tap, with a
//! driver in this process ([`MockDriver`], virtio's test driver) playing the guest's
//! virtio-net driver on a 256-entry split virtqueue in guest memory.
//!
//! Everything runs on the calling thread ("inline"): the driver makes chains
//! available and calls [`NetWorker::process_tx`] / [`NetWorker::process_rx`] itself,
//! where rvmm's worker thread would be woken by a queue notification (tx, rx refill)
//! or by the tap's fd becoming readable (rx). What is measured is the device model's
//! own work — popping chains, building iovecs, the tap read/write, copying into the
//! receive buffers, the used ring, the interrupt — without thread hand-offs and
//! without a guest. The interrupt is an eventfd write, what an MSI through an irqfd
//! costs rvmm. Event-index suppression is off (as in the unit tests), so the device
//! signals once per call that used a buffer.
//!
//! - transmit: chain `i` is descriptor `i`; 64/1514-byte frames are one readable
//!   descriptor (header and frame together, as Linux's driver sends a linear skb);
//!   the 64 KiB TSO frame is an indirect table of 17 descriptors — header plus the
//!   66 bytes of Ethernet/IP/TCP headers, then the payload in 4 KiB pieces — as Linux
//!   sends a TCP skb whose payload is in page fragments. Every chain has its own
//!   buffers. The driver publishes `batch` chains, calls the device, and takes the
//!   used ones back.
//! - receive: 256 writable buffers of one size (MRG_RXBUF negotiated), all
//!   available; after each call the driver takes the used ones, checks each frame
//!   (its length, and the `gso_type` of its header), and makes them available again.
//!   When the device delivered nothing (the tap was empty) the driver waits in
//!   `poll` for the tap to become readable.

use crate::signals::Signals;
use std::num::Wrapping;
use std::os::fd::RawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use virtio::device::ActiveQueue;
use virtio::net::tap::NetBackend;
use virtio::net::worker::NetWorker;
use virtio::net::VNET_HDR_LEN;
use virtio::queue::test_utils::{MockDriver, RawDescriptor};
use virtio::queue::VIRTQ_DESC_F_INDIRECT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::frames::{self, Expect, Kind, GSO_HDR_LEN, GUEST_MAC};
use crate::meter::{Clock, Counts, Measurement, Window};

/// Entries of each virtqueue (rvmm's virtio-net queue size).
pub const QUEUE_SIZE: u16 = virtio::net::QUEUE_SIZE;
/// Payload piece of the TSO frame's chain: a page, as in a Linux skb's fragments.
const FRAG: usize = 4096;
const QUEUE_BASE: u64 = 0x1000;

/// A worker with one queue, and what is needed to get the backend back from it.
struct Device {
    worker: NetWorker,
    signals: Arc<Signals>,
    returned: Receiver<Vec<Box<dyn NetBackend>>>,
}

impl Device {
    /// On failure the backend comes back with the error.
    #[allow(clippy::result_large_err)]
    fn new(
        mem: &GuestMemoryMmap,
        driver: &MockDriver,
        index: u16,
        backend: Box<dyn NetBackend>,
    ) -> Result<Device, (String, Box<dyn NetBackend>)> {
        let mut queue = driver.queue();
        queue.set_event_idx(false);
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("cannot create an eventfd: {e}"));
        let (irq, notify) = match (eventfd(), eventfd()) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return Err((e, backend)),
        };
        let signals = Arc::new(Signals::new(irq));
        let (tx, returned) = std::sync::mpsc::channel();
        let worker = NetWorker::new(
            mem.clone(),
            vec![backend],
            vec![ActiveQueue { index, queue, notify }],
            // No control queue in the benchmark; the index is one the worker never sees.
            2,
            true,
            std::sync::Arc::new(std::sync::Mutex::new(GUEST_MAC)),
            signals.clone(),
            signals.clone(),
            tx,
        );
        Ok(Device { worker, signals, returned })
    }

    fn check_reset(&self) -> Result<(), String> {
        if self.signals.reset_requested() {
            return Err("the device asked for a reset (a malformed queue?); RVMM_LOG=debug shows why".into());
        }
        Ok(())
    }

    /// Ends the worker and takes the backend back.
    fn into_backend(self) -> Box<dyn NetBackend> {
        drop(self.worker);
        self.returned
            .recv()
            .ok()
            .and_then(|mut v| v.pop())
            .expect("the worker hands its backend back when it is dropped")
    }
}

fn memory(len: usize) -> Result<GuestMemoryMmap, String> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)])
        .map_err(|e| format!("cannot map {len} bytes of guest memory: {e}"))
}

/// Writes transmit chain `i` (descriptor `i`) holding `frame` (header included).
fn write_tx_chain(driver: &mut MockDriver, i: u16, kind: Kind, frame: &[u8]) {
    match kind {
        Kind::Udp(_) => {
            let addr = driver.alloc_with(frame);
            driver.write_desc(i, RawDescriptor::readable(addr, frame.len() as u32));
        }
        Kind::Tso => {
            let split = VNET_HDR_LEN + GSO_HDR_LEN;
            let mut pieces = vec![&frame[..split]];
            pieces.extend(frame[split..].chunks(FRAG));
            let descs: Vec<RawDescriptor> = pieces
                .iter()
                .enumerate()
                .map(|(n, p)| {
                    let d = RawDescriptor::readable(driver.alloc_with(p), p.len() as u32);
                    if n + 1 < pieces.len() {
                        d.with_next(n as u16 + 1)
                    } else {
                        d
                    }
                })
                .collect();
            let table = driver.write_indirect_table(&descs);
            driver.write_desc(
                i,
                RawDescriptor { addr: table, len: 16 * descs.len() as u32, flags: VIRTQ_DESC_F_INDIRECT, next: 0 },
            );
        }
    }
}

/// Guest-to-tap through the device: frames of `kind`, `batch` chains per call, for
/// `window`. Returns the backend whatever happened.
pub fn tx(
    backend: Box<dyn NetBackend>,
    kind: Kind,
    batch: usize,
    window: Window,
) -> (Result<Measurement, String>, Box<dyn NetBackend>) {
    let frame = frames::guest_tx_frame(kind);
    // Every chain's buffers, the tables and the ring, with room to spare.
    let size = (usize::from(QUEUE_SIZE) * (frame.len() + 64 * 20)).next_power_of_two().max(2 << 20);
    let mem = match memory(size) {
        Ok(m) => m,
        Err(e) => return (Err(e), backend),
    };
    let mut driver = MockDriver::new(&mem, GuestAddress(QUEUE_BASE), QUEUE_SIZE);
    for i in 0..QUEUE_SIZE {
        write_tx_chain(&mut driver, i, kind, &frame);
    }
    let mut dev = match Device::new(&mem, &driver, 1, backend) {
        Ok(d) => d,
        Err((e, backend)) => return (Err(e), backend),
    };
    let result = tx_loop(&mut dev, &mut driver, kind, batch, window);
    (result, dev.into_backend())
}

fn tx_loop(
    dev: &mut Device,
    driver: &mut MockDriver,
    kind: Kind,
    batch: usize,
    window: Window,
) -> Result<Measurement, String> {
    let mut free: std::collections::VecDeque<u16> = (0..QUEUE_SIZE).collect();
    let mut used_seen = Wrapping(0u16);
    let len = kind.frame_len() as u64;
    let mut clock = Clock::start(window);
    loop {
        for _ in 0..batch.min(free.len()) {
            let head = free.pop_front().expect("checked");
            driver.publish(head);
        }
        dev.worker.process_tx(0);
        dev.check_reset()?;
        let used = driver.used_idx();
        fence(Ordering::Acquire);
        while used_seen.0 != used {
            free.push_back(driver.used_elem(used_seen.0).0 as u16);
            used_seen += 1;
        }
        let c = dev.worker.counters;
        let counts = Counts {
            frames: c.tx_frames,
            bytes: c.tx_frames * len,
            unexpected: c.tx_dropped,
            interrupts: dev.signals.interrupts.load(Ordering::Relaxed),
        };
        if !clock.tick(counts)? {
            break;
        }
    }
    clock.finish()
}

/// Waits up to `timeout` for `fd` to become readable.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> Result<(), String> {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("poll on the tap: {e}"));
        }
    }
    Ok(())
}

/// Tap-to-guest through the device into receive buffers of `buf_len` bytes, for
/// `window`; frames are checked against `expect`. Returns the backend whatever happened.
pub fn rx(
    backend: Box<dyn NetBackend>,
    expect: Expect,
    buf_len: u32,
    window: Window,
) -> (Result<Measurement, String>, Box<dyn NetBackend>) {
    let fd = backend.as_raw_fd();
    let size = (usize::from(QUEUE_SIZE) * (buf_len as usize + 16) + (1 << 20)).next_power_of_two();
    let mem = match memory(size) {
        Ok(m) => m,
        Err(e) => return (Err(e), backend),
    };
    let mut driver = MockDriver::new(&mem, GuestAddress(QUEUE_BASE), QUEUE_SIZE);
    let addrs: Vec<u64> = (0..QUEUE_SIZE)
        .map(|i| {
            let a = driver.alloc(buf_len);
            driver.write_desc(i, RawDescriptor::writable(a, buf_len));
            a
        })
        .collect();
    for i in 0..QUEUE_SIZE {
        driver.publish(i);
    }
    let mut dev = match Device::new(&mem, &driver, 0, backend) {
        Ok(d) => d,
        Err((e, backend)) => return (Err(e), backend),
    };
    let result = rx_loop(&mut dev, &mut driver, &mem, &addrs, fd, expect, window);
    (result, dev.into_backend())
}

fn rx_loop(
    dev: &mut Device,
    driver: &mut MockDriver,
    mem: &GuestMemoryMmap,
    addrs: &[u64],
    fd: RawFd,
    expect: Expect,
    window: Window,
) -> Result<Measurement, String> {
    let mut used_seen = Wrapping(0u16);
    let mut counts = Counts::default();
    // The frame being put together from its buffers: buffers still to come, bytes so
    // far (header included), the first two header bytes.
    let mut remaining = 0u16;
    let mut frame_bytes = 0u64;
    let mut header = [0u8; VNET_HDR_LEN];
    let mut clock = Clock::start(window);
    loop {
        dev.worker.process_rx(0);
        dev.check_reset()?;
        let used = driver.used_idx();
        fence(Ordering::Acquire);
        let got_any = used_seen.0 != used;
        while used_seen.0 != used {
            let (id, len) = driver.used_elem(used_seen.0);
            used_seen += 1;
            let addr = *addrs.get(id as usize).ok_or_else(|| format!("the device used unknown buffer {id}"))?;
            if remaining == 0 {
                mem.read_slice(&mut header, GuestAddress(addr))
                    .map_err(|e| format!("cannot read a receive buffer: {e}"))?;
                remaining = u16::from_le_bytes([header[10], header[11]]).max(1);
                frame_bytes = 0;
            }
            frame_bytes += u64::from(len);
            remaining -= 1;
            if remaining == 0 {
                let eth = frame_bytes.saturating_sub(VNET_HDR_LEN as u64);
                if expect.matches(&header, eth as usize) {
                    counts.frames += 1;
                    counts.bytes += eth;
                } else {
                    counts.unexpected += 1;
                }
            }
            driver.publish(id as u16);
        }
        counts.interrupts = dev.signals.interrupts.load(Ordering::Relaxed);
        if !clock.tick(counts)? {
            break;
        }
        if !got_any {
            // The tap is empty: wait for it, as the worker's epoll would.
            wait_readable(fd, Duration::from_millis(20))?;
        }
    }
    if dev.worker.counters.rx_dropped != 0 {
        return Err(format!("the device dropped {} frames for want of room", dev.worker.counters.rx_dropped));
    }
    clock.finish()
}
