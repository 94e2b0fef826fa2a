//! Virtio transports (virtio 1.x chapter 4): how a driver finds a device and
//! reaches its features, status, queues and configuration. PCI ([`pci`]) and
//! MMIO ([`mmio`]) lay the registers out differently but share everything
//! else, which lives here in [`VirtioCommon`]: the device-status state machine
//! (book 5.3), feature negotiation, queue set-up and activation.

pub mod mmio;
pub mod pci;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use devices::IrqLine;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::device::{ActiveQueue, DeviceStatusSink, VirtioDevice, VirtioInterrupt};
use crate::queue::Queue;

/// Interrupt status bit: a queue has used buffers (ISR bit 0).
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration changed (ISR bit 1).
pub const INT_CONFIG: u32 = 2;

/// The status byte, shared with the device worker so it can set NEEDS_RESET.
#[derive(Debug, Default)]
pub struct DeviceStatus(AtomicU8);

impl DeviceStatus {
    /// The current value.
    pub fn get(&self) -> u8 {
        self.0.load(Ordering::SeqCst)
    }
    fn set(&self, v: u8) {
        self.0.store(v, Ordering::SeqCst)
    }
}

/// The transport-independent state of one virtio device.
pub struct VirtioCommon {
    /// The device.
    pub device: Box<dyn VirtioDevice>,
    memory: GuestMemoryMmap,
    status: Arc<DeviceStatus>,
    /// Selects which 32 bits of the device features the driver reads.
    pub device_features_select: u32,
    /// Selects which 32 bits of the driver features the driver writes.
    pub driver_features_select: u32,
    driver_features: u64,
    /// The selected queue.
    pub queue_select: u16,
    queues: Vec<Queue>,
    notify: Vec<EventFd>,
    /// Bumped on every configuration change notification; shared with the
    /// [`ConfigChangeInterrupt`] the device signals through.
    config_generation: Arc<AtomicU32>,
    /// DRIVER_OK was accepted: the device was activated, or no queue was
    /// enabled and there was nothing to activate. Queue registers are then
    /// read-only and DRIVER_OK is not acted on again until a reset.
    driver_ok: bool,
    /// The device was activated (and must be reset on a reset).
    activated: bool,
}

/// Errors when creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// An eventfd for queue notifications could not be created.
    #[error("cannot create a queue notification eventfd: {0}")]
    EventFd(std::io::Error),
}

impl VirtioCommon {
    /// Wraps `device`; creates one notification eventfd per queue.
    pub fn new(device: Box<dyn VirtioDevice>, memory: GuestMemoryMmap) -> Result<Self, TransportError> {
        let sizes = device.queue_max_sizes();
        let queues = sizes.iter().map(|&s| Queue::new(s)).collect();
        let notify = sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd))
            .collect::<Result<_, _>>()?;
        Ok(VirtioCommon {
            device,
            memory,
            status: Arc::new(DeviceStatus::default()),
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            queues,
            notify,
            config_generation: Arc::new(AtomicU32::new(0)),
            driver_ok: false,
            activated: false,
        })
    }

    /// The eventfd each queue's notifications arrive on, to register as ioeventfds.
    pub fn notify_events(&self) -> &[EventFd] {
        &self.notify
    }

    /// Number of queues.
    pub fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }

    /// The device status byte.
    pub fn status(&self) -> u8 {
        self.status.get()
    }

    /// The configuration generation: it changes whenever the device signals a
    /// configuration change (virtio 1.x 2.5.1, 4.1.4.3.1, 4.2.2.2), so that a
    /// driver that read a changed value sees a changed generation afterwards.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// The 32 bits of device features selected by `device_features_select`.
    pub fn device_features_window(&self) -> u32 {
        match self.device_features_select {
            0 => self.device.features() as u32,
            1 => (self.device.features() >> 32) as u32,
            _ => 0,
        }
    }

    /// Writes the 32 bits of driver features selected by `driver_features_select`.
    pub fn write_driver_features(&mut self, value: u32) {
        // Features are fixed once FEATURES_OK is set (virtio 1.x 3.1.1).
        if self.status() & VIRTIO_CONFIG_S_FEATURES_OK as u8 != 0 {
            return;
        }
        match self.driver_features_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32),
            _ => {}
        }
    }

    /// The 32 bits of driver features selected by `driver_features_select`.
    pub fn driver_features_window(&self) -> u32 {
        match self.driver_features_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        }
    }

    /// The selected queue, if the selector names one.
    pub fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// Stops the selected queue while the device runs (virtio-mmio: the
    /// driver wrote 0 to QueueReady after DRIVER_OK, 4.2.2.2); false if
    /// there is no such queue or the device is not running. Before DRIVER_OK
    /// the driver just clears the ready bit.
    pub fn stop_selected_queue(&mut self) -> bool {
        if !self.driver_ok {
            return false;
        }
        match self.queues.get_mut(usize::from(self.queue_select)) {
            Some(q) => {
                q.stop();
                true
            }
            None => false,
        }
    }

    /// The selected queue for writing: only before DRIVER_OK, as the spec requires.
    pub fn selected_queue_mut(&mut self) -> Option<&mut Queue> {
        if self.driver_ok {
            return None;
        }
        self.queues.get_mut(usize::from(self.queue_select))
    }

    /// Handles a driver write of the status register; `interrupt` is how the
    /// device will interrupt once activated.
    pub fn write_status(&mut self, value: u8, interrupt: Arc<dyn VirtioInterrupt>) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status();
        // The driver only ever adds bits; clearing needs a reset (3.1.1).
        let mut new = old | value;
        if value & !old & VIRTIO_CONFIG_S_FEATURES_OK as u8 != 0 && !self.features_acceptable() {
            // Leave FEATURES_OK clear: the driver reads the status back and gives up.
            new &= !(VIRTIO_CONFIG_S_FEATURES_OK as u8);
            log::info!("virtio: driver features {:#x} not acceptable", self.driver_features);
        } else if value & !old & VIRTIO_CONFIG_S_FEATURES_OK as u8 != 0 {
            self.device.ack_features(self.driver_features);
        }
        self.status.set(new);
        let ready = VIRTIO_CONFIG_S_ACKNOWLEDGE
            | VIRTIO_CONFIG_S_DRIVER
            | VIRTIO_CONFIG_S_FEATURES_OK
            | VIRTIO_CONFIG_S_DRIVER_OK;
        if !self.driver_ok && u32::from(new) & ready == ready && new & VIRTIO_CONFIG_S_FAILED as u8 == 0 {
            self.activate(interrupt);
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.features();
        self.driver_features & !offered == 0 && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self, interrupt: Arc<dyn VirtioInterrupt>) {
        if !self.queues.iter().any(Queue::ready) {
            // A driver that probes the device (ACKNOWLEDGE, DRIVER,
            // FEATURES_OK, DRIVER_OK) without setting up a queue: there is
            // nothing to run, and devices refuse to start without their
            // queues. Accept DRIVER_OK without activating the device, as QEMU
            // and Cloud Hypervisor do; a reset brings the device back.
            log::debug!("virtio: DRIVER_OK with no queue enabled, the device is not activated");
            self.driver_ok = true;
            return;
        }
        // Every configuration change notification, from the device or for
        // NEEDS_RESET, goes through the wrapper and bumps config_generation.
        let interrupt: Arc<dyn VirtioInterrupt> =
            Arc::new(ConfigChangeInterrupt { inner: interrupt, generation: self.config_generation.clone() });
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut active = Vec::new();
        for (i, q) in self.queues.iter_mut().enumerate() {
            if !q.ready() {
                continue;
            }
            if !q.is_valid(&self.memory) {
                log::warn!("virtio: queue {i} is enabled but not valid (size, alignment or addresses)");
                return self.set_needs_reset(&interrupt);
            }
            q.set_event_idx(event_idx);
            let notify = match self.notify[i].try_clone() {
                Ok(fd) => fd,
                Err(e) => {
                    log::error!("virtio: cannot clone a notification eventfd: {e}");
                    return self.set_needs_reset(&interrupt);
                }
            };
            active.push(ActiveQueue { index: i as u16, queue: q.clone(), notify });
        }
        let sink: Arc<dyn DeviceStatusSink> =
            Arc::new(NeedsResetSink { status: self.status.clone(), interrupt: interrupt.clone() });
        match self.device.activate(self.memory.clone(), interrupt.clone(), sink, active) {
            Ok(()) => {
                self.activated = true;
                self.driver_ok = true;
            }
            Err(e) => {
                log::warn!("virtio: device activation failed: {e}");
                self.set_needs_reset(&interrupt);
            }
        }
    }

    fn set_needs_reset(&self, interrupt: &Arc<dyn VirtioInterrupt>) {
        self.status.set(self.status() | VIRTIO_CONFIG_S_NEEDS_RESET as u8);
        interrupt.notify_config();
    }

    /// Resets device and transport state (status written 0).
    pub fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        self.driver_ok = false;
        for q in &mut self.queues {
            q.reset();
        }
        for fd in &self.notify {
            // Drop notifications that arrived before the reset.
            let _ = fd.read();
        }
        self.status.set(0);
        self.driver_features = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.queue_select = 0;
    }

    /// Whether the device is running (DRIVER_OK accepted with at least one
    /// queue enabled and the device started).
    pub fn activated(&self) -> bool {
        self.activated
    }

    /// Delivers a notification that reached user space (no ioeventfd registered).
    pub fn notify_queue(&self, index: u32) {
        if let Some(fd) = self.notify.get(index as usize) {
            let _ = fd.write(1);
        }
    }
}

/// The interrupt a device is activated with: forwards to the transport's and
/// bumps the configuration generation before each configuration change
/// notification, so the driver's next read of config_generation (after the
/// interrupt, or around its reads of the changed configuration) sees a new value.
struct ConfigChangeInterrupt {
    inner: Arc<dyn VirtioInterrupt>,
    generation: Arc<AtomicU32>,
}

impl VirtioInterrupt for ConfigChangeInterrupt {
    fn notify_queue(&self, queue: u16) {
        self.inner.notify_queue(queue);
    }
    fn notify_config(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.inner.notify_config();
    }
}

struct NeedsResetSink {
    status: Arc<DeviceStatus>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

impl DeviceStatusSink for NeedsResetSink {
    fn needs_reset(&self) {
        self.status.set(self.status.get() | VIRTIO_CONFIG_S_NEEDS_RESET as u8);
        self.interrupt.notify_config();
    }
}

/// The INTx-style interrupt of a transport: an interrupt status register and
/// one level-triggered line, asserted while any status bit is set.
///
/// The bits and the line change together under one lock: the device worker
/// raises while a vCPU acknowledges, and the line must not be left asserted
/// with no bit set (a stuck INTx) or deasserted with a bit set (a lost
/// interrupt).
pub struct LineInterrupt {
    state: Mutex<LineState>,
    line: Arc<dyn IrqLine>,
}

/// The interrupt status bits and whether the line may be asserted.
struct LineState {
    status: u32,
    /// PCI Command register bit 10 (Interrupt Disable) is set or MSI-X is
    /// enabled: the status is kept but the line stays deasserted.
    masked: bool,
}

impl LineInterrupt {
    /// An interrupt driving `line`.
    pub fn new(line: Arc<dyn IrqLine>) -> Self {
        LineInterrupt { state: Mutex::new(LineState { status: 0, masked: false }), line }
    }

    fn lock(&self) -> MutexGuard<'_, LineState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The interrupt status bits.
    pub fn status(&self) -> u32 {
        self.lock().status
    }

    /// Clears `bits` (MMIO InterruptACK); the line drops when none are left.
    pub fn acknowledge(&self, bits: u32) {
        let mut state = self.lock();
        state.status &= !bits;
        if state.status == 0 {
            self.line.set_level(false);
        }
    }

    /// Reads and clears every bit (PCI ISR read-to-clear).
    pub fn take(&self) -> u32 {
        let mut state = self.lock();
        let bits = std::mem::take(&mut state.status);
        if bits != 0 {
            self.line.set_level(false);
        }
        bits
    }

    /// Sets `bit` and asserts the line (unless it is masked).
    pub fn raise(&self, bit: u32) {
        let mut state = self.lock();
        state.status |= bit;
        if !state.masked {
            self.line.set_level(true);
        }
    }

    /// Masks or unmasks the line (PCI Interrupt Disable, MSI-X enabled). A pending status
    /// deasserts the line when masked and asserts it again when unmasked, as
    /// PCI 3.0 section 6.2.2 asks of INTx#.
    pub fn set_masked(&self, masked: bool) {
        let mut state = self.lock();
        if state.masked == masked {
            return;
        }
        state.masked = masked;
        if state.status != 0 {
            self.line.set_level(!masked);
        }
    }
}

impl VirtioInterrupt for LineInterrupt {
    fn notify_queue(&self, _queue: u16) {
        self.raise(INT_VRING);
    }
    fn notify_config(&self) {
        self.raise(INT_CONFIG);
    }
}
