//! What every virtio device offers its transport (virtio 1.x chapter 2 and 3):
//! a device type, feature bits, a configuration space and queues, and a life
//! cycle of activation at DRIVER_OK and reset. The PCI and MMIO transports
//! drive any [`VirtioDevice`] the same way.

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::queue::Queue;

/// How a device interrupts the driver; the transport decides whether that is
/// an MSI-X vector or the INTx line with the ISR register.
pub trait VirtioInterrupt: Send + Sync {
    /// Signals that queue `queue` has new used buffers.
    fn notify_queue(&self, queue: u16);
    /// Signals that the device configuration changed (or NEEDS_RESET was set).
    fn notify_config(&self);
}

/// One queue handed to a device at activation: the queue state and the
/// eventfd the driver's notifications for it arrive on (an ioeventfd).
pub struct ActiveQueue {
    /// Its index among the device's queues (some devices' roles depend on it).
    pub index: u16,
    /// The queue as the driver configured it.
    pub queue: Queue,
    /// Readable when the driver notified the queue.
    pub notify: EventFd,
}

impl ActiveQueue {
    /// The notification eventfd's descriptor, for polling.
    pub fn notify_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.notify.as_raw_fd()
    }
}

/// Errors a device reports at activation.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver enabled a different number of queues than the device needs.
    #[error("the device needs {expected} queues, the driver set up {got}")]
    QueueCount {
        /// Queues the device needs.
        expected: usize,
        /// Queues the driver enabled.
        got: usize,
    },
    /// Starting the device's worker failed.
    #[error("cannot start the device worker: {0}")]
    Worker(std::io::Error),
}

/// What a device can report back to its transport from its worker.
pub trait DeviceStatusSink: Send + Sync {
    /// The device met an error it cannot recover from without a reset
    /// (a malformed queue): the transport sets DEVICE_NEEDS_RESET and interrupts.
    fn needs_reset(&self);
}

/// A virtio device, independent of the transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 = block, 1 = net, ...).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// The feature bits the device offers (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// Records the features the driver accepted (a subset of [`Self::features`]).
    fn ack_features(&mut self, features: u64);
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the driver's queues (at DRIVER_OK).
    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        status: Arc<dyn DeviceStatusSink>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError>;
    /// Stops the device's worker and returns it to its initial state (status written 0).
    fn reset(&mut self);
}

/// Reads `data.len()` bytes at `offset` of a config-space image; bytes past its end read as 0.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}
