//! Host-side tests of the virtio transports, written the way a driver uses
//! them (virtio 1.x chapter 3.1 and sections 4.1 and 4.2): a fake
//! [`VirtioDevice`] that records what the transport asks of it, fake
//! interrupt sinks, and a driver-side view of guest memory from
//! [`MockDriver`](crate::queue::test_utils::MockDriver).

mod line;
mod mmio;
mod pci;

use std::sync::{Arc, Mutex, MutexGuard};

use devices::pci::{MsiInterrupt, MsiMessage};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::GuestMemoryMmap;

use crate::device::{read_config_bytes, ActivateError, ActiveQueue, DeviceStatusSink, VirtioDevice, VirtioInterrupt};

/// Device status bits (virtio 1.x 2.1).
pub(super) const ACKNOWLEDGE: u8 = 1;
pub(super) const DRIVER: u8 = 2;
pub(super) const DRIVER_OK: u8 = 4;
pub(super) const FEATURES_OK: u8 = 8;
pub(super) const NEEDS_RESET: u8 = 0x40;
pub(super) const FAILED: u8 = 0x80;

/// Queue sizes of the fake device: three queues of different maxima.
pub(super) const QUEUE_SIZES: [u16; 3] = [16, 8, 4];

/// Feature bits the fake device offers: two device-specific bits, EVENT_IDX,
/// VERSION_1 and a second high bit (VIRTIO_F_IN_ORDER, 35) so that both
/// 32-bit windows carry something.
pub(super) const F_DEV_1: u64 = 1 << 1;
pub(super) const F_DEV_5: u64 = 1 << 5;
pub(super) const F_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
pub(super) const F_VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
pub(super) const F_IN_ORDER: u64 = 1 << 35;
pub(super) const OFFERED: u64 = F_DEV_1 | F_DEV_5 | F_EVENT_IDX | F_VERSION_1 | F_IN_ORDER;

/// The fake device's configuration space.
pub(super) const CONFIG: [u8; 8] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];

/// Guest memory of the tests: 1 MiB at 0.
pub(super) const MEM_SIZE: usize = 1 << 20;

/// Where queue `i` is laid out in guest memory by the tests.
pub(super) fn queue_base(i: usize) -> u64 {
    0x1000 + 0x4000 * i as u64
}

/// What the transport did to the fake device.
#[derive(Default)]
pub(super) struct FakeState {
    /// Every `ack_features` call.
    pub acked: Vec<u64>,
    /// The queues of every `activate` call.
    pub activations: Vec<Vec<ActiveQueue>>,
    /// The number of `reset` calls.
    pub resets: usize,
    /// The configuration space (writes land here).
    pub config: Vec<u8>,
    /// Every `write_config` call.
    pub config_writes: Vec<(u64, Vec<u8>)>,
    /// The interrupt and status sink of the last activation.
    pub interrupt: Option<Arc<dyn VirtioInterrupt>>,
    pub status: Option<Arc<dyn DeviceStatusSink>>,
    pub memory: Option<GuestMemoryMmap>,
    /// Makes `activate` fail.
    pub fail_activation: bool,
}

pub(super) type Shared = Arc<Mutex<FakeState>>;

pub(super) fn lock(s: &Shared) -> MutexGuard<'_, FakeState> {
    s.lock().unwrap()
}

/// A device that only records what it is asked to do.
pub(super) struct FakeDevice {
    device_type: u32,
    state: Shared,
}

impl FakeDevice {
    pub fn new(device_type: u32) -> (Box<dyn VirtioDevice>, Shared) {
        let state = Arc::new(Mutex::new(FakeState { config: CONFIG.to_vec(), ..Default::default() }));
        (Box::new(FakeDevice { device_type, state: state.clone() }), state)
    }
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        self.device_type
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        QUEUE_SIZES.to_vec()
    }
    fn features(&self) -> u64 {
        OFFERED
    }
    fn ack_features(&mut self, features: u64) {
        lock(&self.state).acked.push(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&lock(&self.state).config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut s = lock(&self.state);
        s.config_writes.push((offset, data.to_vec()));
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) =
                usize::try_from(offset).ok().and_then(|o| o.checked_add(i)).and_then(|o| s.config.get_mut(o))
            {
                *slot = *b;
            }
        }
    }
    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        status: Arc<dyn DeviceStatusSink>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let mut s = lock(&self.state);
        if s.fail_activation {
            return Err(ActivateError::QueueCount { expected: 99, got: queues.len() });
        }
        s.activations.push(queues);
        s.interrupt = Some(interrupt);
        s.status = Some(status);
        s.memory = Some(memory);
        Ok(())
    }
    fn reset(&mut self) {
        let mut s = lock(&self.state);
        s.resets += 1;
        s.interrupt = None;
        s.status = None;
    }
}

/// What an [`MsiInterrupt`] was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MsiEvent {
    Update(u16, Option<MsiMessage>),
    Trigger(u16),
}

/// An [`MsiInterrupt`] that records every call.
#[derive(Default)]
pub(super) struct RecordingMsi(Mutex<Vec<MsiEvent>>);

impl RecordingMsi {
    pub fn take(&self) -> Vec<MsiEvent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    pub fn triggers(&self) -> Vec<u16> {
        self.take()
            .into_iter()
            .filter_map(|e| match e {
                MsiEvent::Trigger(v) => Some(v),
                MsiEvent::Update(..) => None,
            })
            .collect()
    }
}

impl MsiInterrupt for RecordingMsi {
    fn update(&self, vector: u16, msg: Option<MsiMessage>) {
        self.0.lock().unwrap().push(MsiEvent::Update(vector, msg));
    }
    fn trigger(&self, vector: u16) {
        self.0.lock().unwrap().push(MsiEvent::Trigger(vector));
    }
}

/// Whether an eventfd has been written (and drains it).
pub(super) fn signalled(fd: &vmm_sys_util::eventfd::EventFd) -> bool {
    fd.read().is_ok()
}

/// A random status value: mostly combinations of the defined bits.
pub(super) fn random_status(rng: &mut crate::queue::test_utils::XorShift) -> u8 {
    match rng.below(10) {
        0 | 1 => 0,
        2 => rng.next_u64() as u8,
        _ => [ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, NEEDS_RESET, FAILED]
            .iter()
            .filter(|_| rng.chance(50))
            .fold(0, |a, &b| a | b),
    }
}
