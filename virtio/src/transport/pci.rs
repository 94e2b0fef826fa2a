//! The virtio-pci transport, modern interface (virtio 1.x section 4.1; book
//! chapter 5.2.4, "the virtio device's PCI configuration space").
//!
//! The device is a PCI function (vendor 0x1af4, device 0x1040 + type) whose
//! vendor-specific capabilities point into BAR 0:
//!
//! ```text
//! BAR 0 (64-bit memory, 32 KiB)
//! 0x0000  common configuration (features, status, queue set-up)
//! 0x1000  ISR status (read to clear)
//! 0x2000  device-specific configuration
//! 0x3000  notifications: queue n at 0x3000 + 4 * n (an ioeventfd each)
//! 0x4000  MSI-X table
//! 0x6000  MSI-X pending bit array
//! ```
//!
//! Interrupts go out as MSI-X messages when the driver enabled MSI-X, else as
//! the ISR bits plus the INTx line. The ISR configuration bit is set for every
//! configuration change either way (4.1.4.5.1); the INTx line is held low
//! while MSI-X is enabled (PCI 3.0 6.8.2) or Interrupt Disable is set.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use devices::pci::{
    BarReprogram, MsiInterrupt, MsixConfig, MsixNotify, PciBar, PciBarKind, PciConfiguration, PciDevice, PciError,
    PciIds,
};
use devices::ratelimit::TimedLogLimiter;
use devices::IrqLine;
use vm_memory::GuestMemoryMmap;

use super::{LineInterrupt, TransportError, VirtioCommon, INT_CONFIG, INT_VRING};
use crate::device::{VirtioDevice, VirtioInterrupt};

/// The PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern devices are 0x1040 + the virtio device ID.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// "No MSI-X vector" in the vector registers.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;
/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
/// Offsets of the regions inside BAR 0.
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// ISR status.
pub const ISR_OFFSET: u64 = 0x1000;
/// Device configuration.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Queue notifications.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// MSI-X table.
pub const MSIX_TABLE_OFFSET: u32 = 0x4000;
/// MSI-X pending bits.
pub const MSIX_PBA_OFFSET: u32 = 0x6000;

const REGION_SIZE: u64 = 0x1000;
const COMMON_CFG_LEN: u32 = 0x40;
/// virtio_pci_cap cfg_type values.
const CAP_COMMON_CFG: u8 = 1;
const CAP_NOTIFY_CFG: u8 = 2;
const CAP_ISR_CFG: u8 = 3;
const CAP_DEVICE_CFG: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
/// The low byte of the PCI Status register, and its Interrupt Status bit.
const STATUS_LOW_BYTE: u16 = 0x06;
const STATUS_INTERRUPT: u8 = 1 << 3;
/// PCI capability ID of vendor-specific capabilities.
const PCI_CAP_ID_VNDR: u8 = 0x09;

/// The interrupt side of a virtio-pci function, shared with the device worker.
pub struct PciInterrupt {
    msix: Arc<Mutex<MsixConfig>>,
    queue_vectors: Vec<AtomicU16>,
    config_vector: AtomicU16,
    intx: LineInterrupt,
    /// The command register's Bus Master Enable. MSI-X messages are memory
    /// writes by the function, so with it clear none are sent (PCIe 7.5.1.1.3;
    /// QEMU drops them too). INTx is a wire and does not depend on it.
    bus_master: AtomicBool,
}

impl PciInterrupt {
    /// Signals an event on `vector` (MSI-X) or as `isr_bit` (INTx).
    ///
    /// The MSI-X lock is held throughout, and taken before the INTx state's,
    /// also by [`VirtioPciDevice::write_config`] when it masks INTx for
    /// MSI-X: an event is either delivered as INTx before MSI-X is enabled
    /// (and the line is then lowered) or as MSI-X after.
    fn vector_notify(&self, vector: u16, isr_bit: u32) {
        let mut msix = self.msix.lock().unwrap_or_else(|e| e.into_inner());
        if msix.enabled() {
            if isr_bit == INT_CONFIG {
                // "The device MUST set the Device Configuration Interrupt bit
                // in ISR status before sending a device configuration change
                // notification to the driver" (4.1.4.5.1), MSI-X or not. INTx
                // is masked while MSI-X is enabled, so the line stays low.
                self.intx.raise(INT_CONFIG);
            }
            if !self.bus_master.load(Ordering::SeqCst) {
                log::debug!("virtio-pci: MSI-X vector {vector} not sent: bus mastering is disabled");
            } else if vector != VIRTIO_MSI_NO_VECTOR && msix.notify(vector) == MsixNotify::InvalidVector {
                log::debug!("virtio-pci: interrupt on invalid MSI-X vector {vector}");
            }
            return;
        }
        self.intx.raise(isr_bit);
    }

    /// The vector of queue `queue` (NO_VECTOR for a queue that does not exist).
    fn queue_vector(&self, queue: usize) -> u16 {
        self.queue_vectors.get(queue).map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::SeqCst))
    }
}

impl VirtioInterrupt for PciInterrupt {
    fn notify_queue(&self, queue: u16) {
        // Looked up at each interrupt: the driver may remap a queue at any
        // time, also after DRIVER_OK (4.1.5.1.2).
        self.vector_notify(self.queue_vector(usize::from(queue)), INT_VRING);
    }
    fn notify_config(&self) {
        self.vector_notify(self.config_vector.load(Ordering::SeqCst), INT_CONFIG);
    }
}

/// A virtio device on the PCI transport.
pub struct VirtioPciDevice {
    config: PciConfiguration,
    common: VirtioCommon,
    msix: Arc<Mutex<MsixConfig>>,
    interrupt: Arc<PciInterrupt>,
    /// Offset of the VIRTIO_PCI_CAP_PCI_CFG capability in configuration space.
    cfg_cap: u16,
    /// Rate-limits the log of queue_size writes that are ignored.
    queue_size_log: TimedLogLimiter,
    /// Rate-limits the log of VIRTIO_PCI_CAP_PCI_CFG accesses that reach no BAR.
    pci_cfg_log: TimedLogLimiter,
}

/// Appends a little-endian u32.
fn push_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// The body of a `struct virtio_pci_cap` after the ID and next bytes.
fn virtio_cap(cfg_type: u8, cap_len: u8, offset: u64, length: u32) -> Vec<u8> {
    let mut body = vec![cap_len, cfg_type, 0 /* bar */, 0 /* id */, 0, 0];
    push_u32(&mut body, offset as u32);
    push_u32(&mut body, length);
    body
}

impl VirtioPciDevice {
    /// Wraps `device` as a PCI function with BAR 0 at `bar_addr` (0: unassigned),
    /// delivering MSI-X through `msi` and INTx on `intx` (GSI `intx_gsi`).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
        msi: Arc<dyn MsiInterrupt>,
        intx: Arc<dyn IrqLine>,
        intx_gsi: u8,
        bar_addr: u64,
    ) -> Result<Self, VirtioPciError> {
        let device_type = device.device_type();
        let common = VirtioCommon::new(device, memory)?;
        let num_queues = common.num_queues();
        let (class, subclass) = match device_type {
            1 => (0x02, 0x00), // network controller
            2 => (0x01, 0x00), // mass storage controller, SCSI subclass (as QEMU presents virtio-blk)
            _ => (0xff, 0x00),
        };
        let ids = PciIds {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id: VIRTIO_PCI_DEVICE_ID_BASE + device_type as u16,
            revision_id: 1, // modern-only devices have revision 1 or more (4.1.2.1)
            class_code: class,
            subclass,
            prog_if: 0,
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: 0x40,
        };
        let mut config = PciConfiguration::new(&ids);
        config.add_bar(0, PciBar { kind: PciBarKind::Mem64, size: BAR_SIZE, prefetchable: false, addr: bar_addr })?;
        config.set_interrupt_pin(1)?;
        config.set_interrupt_line(intx_gsi);

        let notify_len = u32::from(num_queues.max(1)) * NOTIFY_OFF_MULTIPLIER;
        config.add_capability(&virtio_cap(CAP_COMMON_CFG, 16, COMMON_CFG_OFFSET, COMMON_CFG_LEN), PCI_CAP_ID_VNDR)?;
        let mut notify = virtio_cap(CAP_NOTIFY_CFG, 20, NOTIFY_OFFSET, notify_len);
        push_u32(&mut notify, NOTIFY_OFF_MULTIPLIER);
        config.add_capability(&notify, PCI_CAP_ID_VNDR)?;
        config.add_capability(&virtio_cap(CAP_ISR_CFG, 16, ISR_OFFSET, 1), PCI_CAP_ID_VNDR)?;
        config
            .add_capability(&virtio_cap(CAP_DEVICE_CFG, 16, DEVICE_CFG_OFFSET, REGION_SIZE as u32), PCI_CAP_ID_VNDR)?;
        // VIRTIO_PCI_CAP_PCI_CFG: bar (byte 2 of the body), offset, length and data are writable.
        let mut pci_cfg = virtio_cap(CAP_PCI_CFG, 20, 0, 0);
        push_u32(&mut pci_cfg, 0);
        let mut mask = vec![0u8; pci_cfg.len()];
        mask[2] = 0xff;
        for b in &mut mask[6..18] {
            *b = 0xff;
        }
        let cfg_cap = config.add_capability_with_mask(&pci_cfg, &mask, PCI_CAP_ID_VNDR)?;

        let vectors = num_queues + 1;
        let mut msix = MsixConfig::new(vectors, 0, MSIX_TABLE_OFFSET, 0, MSIX_PBA_OFFSET, msi)?;
        msix.add_capability(&mut config)?;
        let msix = Arc::new(Mutex::new(msix));
        let interrupt = Arc::new(PciInterrupt {
            msix: msix.clone(),
            queue_vectors: (0..num_queues).map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR)).collect(),
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            intx: LineInterrupt::new(intx),
            bus_master: AtomicBool::new(false),
        });
        Ok(VirtioPciDevice {
            config,
            common,
            msix,
            interrupt,
            cfg_cap,
            queue_size_log: TimedLogLimiter::default(),
            pci_cfg_log: TimedLogLimiter::default(),
        })
    }

    /// The transport-independent state (for the notification eventfds).
    pub fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn msix_vector_count(&self) -> u16 {
        self.msix.lock().unwrap_or_else(|e| e.into_inner()).num_vectors()
    }

    /// A snapshot of the common configuration structure, for reads of any width.
    fn common_cfg_image(&self) -> [u8; COMMON_CFG_LEN as usize] {
        let c = &self.common;
        let mut b = [0u8; COMMON_CFG_LEN as usize];
        let q = c.selected_queue();
        b[0x00..0x04].copy_from_slice(&c.device_features_select.to_le_bytes());
        b[0x04..0x08].copy_from_slice(&c.device_features_window().to_le_bytes());
        b[0x08..0x0c].copy_from_slice(&c.driver_features_select.to_le_bytes());
        b[0x0c..0x10].copy_from_slice(&c.driver_features_window().to_le_bytes());
        b[0x10..0x12].copy_from_slice(&self.interrupt.config_vector.load(Ordering::SeqCst).to_le_bytes());
        b[0x12..0x14].copy_from_slice(&c.num_queues().to_le_bytes());
        b[0x14] = c.status();
        b[0x15] = c.config_generation() as u8;
        b[0x16..0x18].copy_from_slice(&c.queue_select.to_le_bytes());
        // queue_msix_vector of a queue that does not exist: NO_VECTOR, as QEMU
        // reads it (queue_size 0 is what tells the driver it is unavailable).
        let vector = self.interrupt.queue_vector(usize::from(c.queue_select));
        b[0x1a..0x1c].copy_from_slice(&vector.to_le_bytes());
        if let Some(q) = q {
            b[0x18..0x1a].copy_from_slice(&q.size().to_le_bytes());
            b[0x1c..0x1e].copy_from_slice(&u16::from(q.ready()).to_le_bytes());
            b[0x1e..0x20].copy_from_slice(&c.queue_select.to_le_bytes()); // queue_notify_off
            b[0x20..0x28].copy_from_slice(&q.desc_table().to_le_bytes());
            b[0x28..0x30].copy_from_slice(&q.avail_ring().to_le_bytes());
            b[0x30..0x38].copy_from_slice(&q.used_ring().to_le_bytes());
            b[0x38..0x3a].copy_from_slice(&c.queue_select.to_le_bytes()); // queue_notify_data
        }
        b
    }

    fn write_common_cfg(&mut self, offset: u64, data: &[u8]) {
        let mut raw = [0u8; 8];
        let n = data.len().min(8);
        raw[..n].copy_from_slice(&data[..n]);
        let v32 = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let v16 = v32 as u16;
        let v64 = u64::from_le_bytes(raw);
        let len = data.len();
        let c = &mut self.common;
        match (offset, len) {
            (0x00, 4) => c.device_features_select = v32,
            (0x08, 4) => c.driver_features_select = v32,
            (0x0c, 4) => c.write_driver_features(v32),
            (0x10, 2) => {
                // Taken at any time, also after DRIVER_OK: the next configuration
                // change interrupt goes to the new vector.
                let v = if v16 < self.msix_vector_count() { v16 } else { VIRTIO_MSI_NO_VECTOR };
                self.interrupt.config_vector.store(v, Ordering::SeqCst);
            }
            (0x14, 1) => {
                let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
                self.common.write_status(data[0], interrupt);
                if data[0] == 0 {
                    self.reset_interrupts();
                }
            }
            (0x16, 2) => c.queue_select = v16,
            (0x18, 2) => {
                let log = &mut self.queue_size_log;
                with_queue(c, |q| {
                    // Without VIRTIO_F_RING_PACKED (never offered) queue_size
                    // must read 0 or a power of 2 (4.1.4.3.1), and a queue
                    // cannot grow past its maximum: such writes are ignored and
                    // the previous size stays.
                    if v16.is_power_of_two() && v16 <= q.max_size() {
                        q.set_size(v16);
                    } else if let Some(suppressed) = log.check() {
                        log::warn!(
                            "virtio-pci: ignoring queue_size {v16} (not a power of 2 up to the maximum {}) \
                             ({suppressed} messages suppressed)",
                            q.max_size()
                        );
                    }
                })
            }
            (0x1a, 2) => {
                let qi = usize::from(c.queue_select);
                // A vector the device cannot map reads back as NO_VECTOR
                // (4.1.5.1.2). Taken at any time, also after DRIVER_OK: the
                // queue's next interrupt goes to the new vector.
                let v = if v16 < self.msix_vector_count() { v16 } else { VIRTIO_MSI_NO_VECTOR };
                if let Some(slot) = self.interrupt.queue_vectors.get(qi) {
                    slot.store(v, Ordering::SeqCst);
                }
            }
            (0x1c, 2) => with_queue(c, |q| {
                // Only 1 may be written (4.1.4.3.2); a 0 is ignored.
                if v16 == 1 {
                    q.set_ready(true)
                }
            }),
            (0x20, 4) => with_queue(c, |q| q.set_desc_table_lo(v32)),
            (0x24, 4) => with_queue(c, |q| q.set_desc_table_hi(v32)),
            (0x20, 8) => with_queue(c, |q| q.set_desc_table(v64)),
            (0x28, 4) => with_queue(c, |q| q.set_avail_ring_lo(v32)),
            (0x2c, 4) => with_queue(c, |q| q.set_avail_ring_hi(v32)),
            (0x28, 8) => with_queue(c, |q| q.set_avail_ring(v64)),
            (0x30, 4) => with_queue(c, |q| q.set_used_ring_lo(v32)),
            (0x34, 4) => with_queue(c, |q| q.set_used_ring_hi(v32)),
            (0x30, 8) => with_queue(c, |q| q.set_used_ring(v64)),
            _ => {
                log::debug!("virtio-pci: ignoring a {len}-byte common config write at {offset:#x}")
            }
        }
    }

    fn reset_interrupts(&self) {
        self.interrupt.config_vector.store(VIRTIO_MSI_NO_VECTOR, Ordering::SeqCst);
        for v in &self.interrupt.queue_vectors {
            v.store(VIRTIO_MSI_NO_VECTOR, Ordering::SeqCst);
        }
        self.interrupt.intx.take();
    }

    fn bar0_read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < REGION_SIZE => {
                let image = self.common_cfg_image();
                crate::device::read_config_bytes(&image, o, data);
            }
            o if (ISR_OFFSET..ISR_OFFSET + REGION_SIZE).contains(&o) => {
                data.fill(0);
                if o == ISR_OFFSET {
                    // Reading the ISR acknowledges the interrupt and lowers INTx (4.1.4.5).
                    if let Some(b) = data.first_mut() {
                        *b = self.interrupt.intx.take() as u8;
                    }
                }
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + REGION_SIZE).contains(&o) => {
                self.common.device.read_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..NOTIFY_OFFSET + REGION_SIZE).contains(&o) => data.fill(0),
            o => {
                let handled = self.msix.lock().unwrap_or_else(|e| e.into_inner()).read_bar(0, o, data);
                if !handled {
                    data.fill(0xff);
                }
            }
        }
    }

    fn bar0_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < REGION_SIZE => self.write_common_cfg(o, data),
            o if (ISR_OFFSET..ISR_OFFSET + REGION_SIZE).contains(&o) => {}
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + REGION_SIZE).contains(&o) => {
                self.common.device.write_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..NOTIFY_OFFSET + REGION_SIZE).contains(&o) => {
                // Reached only when no ioeventfd took the write (or during set-up).
                self.common.notify_queue(((o - NOTIFY_OFFSET) / u64::from(NOTIFY_OFF_MULTIPLIER)) as u32);
            }
            o => {
                let handled = self.msix.lock().unwrap_or_else(|e| e.into_inner()).write_bar(0, o, data);
                if !handled {
                    log::debug!("virtio-pci: write to unused BAR 0 offset {o:#x}");
                }
            }
        }
    }

    /// The BAR window the VIRTIO_PCI_CAP_PCI_CFG capability selects, if valid:
    /// BAR 0 (the only one), cap.length 1, 2 or 4, cap.offset a multiple of
    /// cap.length (4.1.4.9.1) and the access inside the BAR. Any other window
    /// reaches no BAR: pci_cfg_data then just keeps what was last stored.
    fn pci_cfg_window(&mut self) -> Option<(u64, usize)> {
        let base = self.cfg_cap;
        let bar = self.config.read_u8(base + 4);
        let offset = u64::from(self.config.read_u32(base + 8));
        let length = self.config.read_u32(base + 12);
        let valid = bar == 0
            && matches!(length, 1 | 2 | 4)
            && offset % u64::from(length) == 0
            && offset + u64::from(length) <= BAR_SIZE;
        if !valid {
            if let Some(suppressed) = self.pci_cfg_log.check() {
                log::debug!(
                    "virtio-pci: PCI_CFG window bar {bar} offset {offset:#x} length {length} reaches no BAR \
                     ({suppressed} messages suppressed)"
                );
            }
            return None;
        }
        Some((offset, length as usize))
    }

    /// Whether a configuration access of `len` bytes at `offset` is a valid
    /// access (1, 2 or 4 bytes in one dword) of the pci_cfg_data field.
    fn is_pci_cfg_data_access(&self, offset: u16, len: usize) -> bool {
        let data_reg = self.cfg_cap + 16;
        matches!(len, 1 | 2 | 4) && offset.checked_sub(data_reg).is_some_and(|rel| usize::from(rel) + len <= 4)
    }

    /// A read of pci_cfg_data (4.1.4.9): the device first reads cap.length
    /// bytes at cap.offset of BAR cap.bar into pci_cfg_data, then the
    /// configuration read returns the bytes it addresses.
    fn read_pci_cfg_data(&mut self) {
        let Some((bar_offset, length)) = self.pci_cfg_window() else {
            return;
        };
        let mut buf = [0u8; 4];
        self.bar0_read(bar_offset, &mut buf[..length]);
        if let Err(e) = self.config.write_raw(self.cfg_cap + 16, &buf[..length]) {
            log::error!("virtio-pci: cannot store pci_cfg_data: {e}");
        }
    }

    /// After a write of pci_cfg_data (stored in configuration space): the
    /// device writes the first cap.length bytes of pci_cfg_data at cap.offset
    /// of BAR cap.bar (4.1.4.9), whichever of its bytes the write changed.
    fn write_pci_cfg_data(&mut self) {
        let Some((bar_offset, length)) = self.pci_cfg_window() else {
            return;
        };
        let data = self.config.read_u32(self.cfg_cap + 16).to_le_bytes();
        self.bar0_write(bar_offset, &data[..length]);
    }
}

fn with_queue(c: &mut VirtioCommon, f: impl FnOnce(&mut crate::queue::Queue)) {
    match c.selected_queue_mut() {
        Some(q) => f(q),
        None => log::debug!("virtio-pci: queue register write ignored (no queue {} or device running)", c.queue_select),
    }
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        if self.is_pci_cfg_data_access(offset, data.len()) {
            self.read_pci_cfg_data();
        }
        self.config.read_config(offset, data);
        // Status bit 3 (Interrupt Status) shows a pending INTx whether or not
        // Interrupt Disable keeps it off the line (PCI 3.0 section 6.2.3).
        // While MSI-X is enabled the function does not use INTx at all, and
        // the ISR configuration bit it still sets is not an INTx interrupt.
        if let Some(i) = STATUS_LOW_BYTE.checked_sub(offset).map(usize::from).filter(|&i| i < data.len()) {
            let msix_enabled = self.msix.lock().unwrap_or_else(|e| e.into_inner()).enabled();
            if !msix_enabled && self.interrupt.intx.status() != 0 {
                data[i] |= STATUS_INTERRUPT;
            }
        }
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) -> Vec<BarReprogram> {
        let changes = self.config.write_config(offset, data);
        if self.is_pci_cfg_data_access(offset, data.len()) {
            self.write_pci_cfg_data();
            return changes;
        }
        let mut msix = self.msix.lock().unwrap_or_else(|e| e.into_inner());
        msix.config_written(&self.config, offset, data.len());
        self.interrupt.bus_master.store(self.config.bus_master_enabled(), Ordering::SeqCst);
        // INTx stays off the line while Interrupt Disable is set, and while
        // MSI-X is enabled (PCI 3.0 6.8.2): a line that was up when the
        // driver enabled MSI-X drops. Under the MSI-X lock, as in
        // PciInterrupt::vector_notify.
        self.interrupt.intx.set_masked(self.config.intx_disabled() || msix.enabled());
        changes
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar == 0 {
            self.bar0_read(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar == 0 {
            self.bar0_write(offset, data);
        }
    }
}

/// Errors while creating a virtio-pci function.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The PCI configuration could not be built.
    #[error("virtio-pci: {0}")]
    Pci(#[from] PciError),
    /// The transport could not be created.
    #[error(transparent)]
    Transport(#[from] TransportError),
}
