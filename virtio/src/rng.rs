//! virtio-rng, the entropy device (virtio 1.x section 5.4): the driver posts
//! device-writable buffers and the device fills them with random bytes from
//! the host's getrandom(2).

use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use crate::device::{ActivateError, ActiveQueue, DeviceStatusSink, VirtioDevice, VirtioInterrupt};
use crate::worker::{Worker, WorkerHandler};

/// The virtio device ID of an entropy source.
/// (From virtio-bindings, re-exported under the name the device code uses.)
pub use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
/// Descriptors in the request queue.
pub const QUEUE_SIZE: u16 = 64;
/// Most bytes given for one buffer: a guest cannot make the host fill gigabytes at once.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

/// A virtio-rng device.
#[derive(Default)]
pub struct Rng {
    worker: Option<Worker>,
}

impl Rng {
    /// A new device.
    pub fn new() -> Self {
        Rng::default()
    }
}

/// Fills `buf` from getrandom(2).
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: getrandom writes at most `len` bytes into the buffer we pass.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

struct RngWorker {
    mem: GuestMemoryMmap,
    queue: ActiveQueue,
    interrupt: Arc<dyn VirtioInterrupt>,
    status: Arc<dyn DeviceStatusSink>,
    broken: bool,
}

impl RngWorker {
    fn process(&mut self) {
        if self.broken {
            return;
        }
        let mut used_any = false;
        loop {
            let chain = match self.queue.queue.pop(&self.mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    log::warn!("virtio-rng: {e}; the device needs a reset");
                    self.broken = true;
                    self.status.needs_reset();
                    return;
                }
            };
            let len = (chain.writable_len() as usize).min(MAX_BYTES_PER_REQUEST);
            let mut bytes = vec![0u8; len];
            let written = match fill_random(&mut bytes)
                .and_then(|()| chain.write_at(&self.mem, 0, &bytes).map_err(|e| std::io::Error::other(e.to_string())))
            {
                Ok(()) => len as u32,
                Err(e) => {
                    log::warn!("virtio-rng: {e}");
                    0
                }
            };
            if let Err(e) = self.queue.queue.add_used(&self.mem, chain.head_index, written) {
                log::warn!("virtio-rng: {e}");
                self.broken = true;
                self.status.needs_reset();
                return;
            }
            used_any = true;
        }
        if used_any && self.queue.queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.notify_queue(0);
        }
    }
}

impl WorkerHandler for RngWorker {
    fn start(&mut self) {
        self.process();
    }
    fn ready(&mut self, _token: u64, _events: EventSet) {
        let _ = self.queue.notify.read();
        self.process();
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        status: Arc<dyn DeviceStatusSink>,
        mut queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount { expected: 1, got: queues.len() });
        }
        let queue = queues.remove(0);
        let fd = queue.notify.as_raw_fd();
        let worker = RngWorker { mem: memory, queue, interrupt, status, broken: false };
        self.worker =
            Some(Worker::spawn("virtio-rng", vec![(fd, 0, EventSet::IN)], worker).map_err(ActivateError::Worker)?);
        Ok(())
    }
    fn reset(&mut self) {
        self.worker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::test_utils::{guest_memory, MockDriver, RawDescriptor};
    use std::sync::atomic::{AtomicU32, Ordering};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Default)]
    struct Signals(AtomicU32, AtomicU32);
    impl VirtioInterrupt for Signals {
        fn notify_queue(&self, _: u16) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn notify_config(&self) {}
    }
    impl DeviceStatusSink for Signals {
        fn needs_reset(&self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn worker(size: u16) -> (MockDriver, RngWorker, Arc<Signals>) {
        let mem = guest_memory(1 << 20);
        let driver = MockDriver::new(&mem, GuestAddress(0x1000), size);
        let mut queue = driver.queue();
        driver.configure(&mut queue);
        let signals = Arc::new(Signals::default());
        let w = RngWorker {
            mem,
            queue: ActiveQueue { index: 0, queue, notify: EventFd::new(libc::EFD_NONBLOCK).unwrap() },
            interrupt: signals.clone(),
            status: signals.clone(),
            broken: false,
        };
        (driver, w, signals)
    }

    #[test]
    fn fills_writable_buffers_with_random_bytes() {
        let (mut driver, mut w, signals) = worker(16);
        let (a, b) = (driver.alloc(64), driver.alloc(64));
        let head = driver.add_chain(&[RawDescriptor::writable(a, 64), RawDescriptor::writable(b, 64)]);
        w.process();
        assert_eq!(driver.used_elem(0), (u32::from(head), 128));
        assert_eq!(signals.0.load(Ordering::SeqCst), 1);
        // 128 random bytes take many distinct values (all equal would mean no fill).
        let mut bytes = driver.read(a, 64);
        bytes.extend(driver.read(b, 64));
        let distinct = bytes.iter().collect::<std::collections::HashSet<_>>().len();
        assert!(distinct > 32, "{bytes:?}");
    }

    #[test]
    fn readable_only_chain_gets_nothing_and_huge_requests_are_capped() {
        let (mut driver, mut w, signals) = worker(16);
        driver.add_buffers(&[b"not writable"], &[]);
        driver.add_buffers(&[], &[200_000]);
        w.process();
        assert_eq!(driver.used_elem(0).1, 0);
        assert_eq!(driver.used_elem(1).1 as usize, MAX_BYTES_PER_REQUEST);
        assert_eq!(signals.1.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn garbage_chains_never_panic() {
        // Random chains: each is completed with exactly its writable length
        // (capped) written, or the device is marked broken.
        use crate::queue::test_utils::{ChainFuzzer, XorShift};
        use crate::queue::VIRTQ_DESC_F_WRITE;
        let mut rng = XorShift::new(0x0e46_0000_0000_0001);
        let new = || {
            // 64 descriptors: a batch of chains never reuses slots of another.
            let (mut driver, w, signals) = worker(64);
            let mut fz = ChainFuzzer::new(&mut driver, 0x4_0000);
            fz.fatal_percent = 2;
            (driver, w, signals, fz)
        };
        let (mut driver, mut w, mut signals, mut fz) = new();
        let (mut rebuilds, mut filled) = (0u32, 0u64);
        for _ in 0..1500 {
            let mut expected = std::collections::HashMap::new();
            let used_before = driver.used_idx();
            for _ in 0..1 + rng.below(3) {
                let n = rng.below(64) as usize;
                let junk = rng.bytes(n);
                let (head, descs) = fz.add(&mut rng, &mut driver, &junk);
                let writable: u64 =
                    descs.iter().filter(|d| d.flags & VIRTQ_DESC_F_WRITE != 0).map(|d| u64::from(d.len)).sum();
                expected.insert(u32::from(head), writable.min(MAX_BYTES_PER_REQUEST as u64) as u32);
            }
            w.process();
            if signals.1.load(Ordering::SeqCst) > 0 {
                rebuilds += 1;
                (driver, w, signals, fz) = new();
                continue;
            }
            assert_eq!(driver.used_idx(), driver.avail_idx(), "every chain completed");
            let mut i = used_before;
            while i != driver.used_idx() {
                let (id, len) = driver.used_elem(i);
                assert_eq!(Some(&len), expected.get(&id), "chain {id}");
                filled += u64::from(len);
                i = i.wrapping_add(1);
            }
        }
        assert!((1..200).contains(&rebuilds), "{rebuilds} rebuilds");
        assert!(filled > 1_000_000, "{filled} bytes");
    }

    #[test]
    fn malformed_chain_needs_reset() {
        let (mut driver, mut w, signals) = worker(16);
        driver.add_chain(&[RawDescriptor::writable(0x7000_0000, 16)]);
        w.process();
        assert_eq!(signals.1.load(Ordering::SeqCst), 1);
    }
}
