//! The virtio-mmio transport, version 2 (virtio 1.x section 4.2): a 512-byte
//! register block per device, for machines without PCI. The driver finds it
//! from the kernel command line (`virtio_mmio.device=<size>@<addr>:<irq>`) or
//! from ACPI, and interrupts arrive on one line with an InterruptStatus register.

use std::sync::Arc;

use devices::{BusDevice, IrqLine};
use vm_memory::GuestMemoryMmap;

use super::{LineInterrupt, TransportError, VirtioCommon};
use crate::device::{VirtioDevice, VirtioInterrupt};

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The non-legacy register layout.
pub const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to drivers: "RVMM".
pub const MMIO_VENDOR_ID: u32 = 0x4d4d_5652;
/// Size of the window each device takes (registers plus configuration space).
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of QueueNotify, where an ioeventfd can take notifications.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x050;
/// Offset of the device-specific configuration space.
pub const CONFIG_OFFSET: u64 = 0x100;

mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// A virtio device behind virtio-mmio registers.
pub struct MmioTransport {
    common: VirtioCommon,
    interrupt: Arc<LineInterrupt>,
}

impl MmioTransport {
    /// Wraps `device`; `irq` is its interrupt line.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
        irq: Arc<dyn IrqLine>,
    ) -> Result<Self, TransportError> {
        Ok(MmioTransport { common: VirtioCommon::new(device, memory)?, interrupt: Arc::new(LineInterrupt::new(irq)) })
    }

    /// The transport-independent state (for registering the notification eventfds).
    pub fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn read_register(&self, offset: u64) -> u32 {
        let c = &self.common;
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => c.device.device_type(),
            reg::VENDOR_ID => MMIO_VENDOR_ID,
            reg::DEVICE_FEATURES => c.device_features_window(),
            reg::QUEUE_NUM_MAX => c.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => c.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => u32::from(c.status()),
            // No shared memory regions: for a region that does not exist,
            // SHMLen and SHMBase read 0xffffffffffffffff (4.2.2).
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => c.config_generation(),
            _ => {
                log::debug!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let c = &mut self.common;
        match offset {
            reg::DEVICE_FEATURES_SEL => c.device_features_select = value,
            reg::DRIVER_FEATURES => c.write_driver_features(value),
            reg::DRIVER_FEATURES_SEL => c.driver_features_select = value,
            // Values beyond 16 bits name no queue and no valid size: map them to
            // an invalid queue/size rather than truncating them into valid ones.
            reg::QUEUE_SEL => c.queue_select = u16::try_from(value).unwrap_or(u16::MAX),
            reg::QUEUE_NUM => with_queue(c, |q| q.set_size(u16::try_from(value).unwrap_or(0))),
            // "To stop using the queue the driver MUST write zero (0x0) to
            // QueueReady and MUST read the value back" (4.2.2.2): after
            // DRIVER_OK that stops the running queue, which then reads 0.
            reg::QUEUE_READY if value == 0 && c.stop_selected_queue() => {}
            reg::QUEUE_READY => with_queue(c, |q| q.set_ready(value == 1)),
            reg::QUEUE_NOTIFY => c.notify_queue(value),
            reg::INTERRUPT_ACK => self.interrupt.acknowledge(value),
            reg::STATUS => {
                let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
                c.write_status(value as u8, interrupt);
                // A reset clears InterruptStatus (4.2.2.1), also when reserved bits were set.
                if value as u8 == 0 {
                    self.interrupt.acknowledge(u32::MAX);
                }
            }
            reg::QUEUE_DESC_LOW => with_queue(c, |q| q.set_desc_table_lo(value)),
            reg::QUEUE_DESC_HIGH => with_queue(c, |q| q.set_desc_table_hi(value)),
            reg::QUEUE_DRIVER_LOW => with_queue(c, |q| q.set_avail_ring_lo(value)),
            reg::QUEUE_DRIVER_HIGH => with_queue(c, |q| q.set_avail_ring_hi(value)),
            reg::QUEUE_DEVICE_LOW => with_queue(c, |q| q.set_used_ring_lo(value)),
            reg::QUEUE_DEVICE_HIGH => with_queue(c, |q| q.set_used_ring_hi(value)),
            // Every selectable region is absent: the selector changes nothing.
            reg::SHM_SEL => {}
            _ => log::debug!("virtio-mmio: write of read-only or unknown register {offset:#x}"),
        }
    }
}

fn with_queue(c: &mut VirtioCommon, f: impl FnOnce(&mut crate::queue::Queue)) {
    match c.selected_queue_mut() {
        Some(q) => f(q),
        None => {
            log::debug!("virtio-mmio: queue register write ignored (no queue {} or device running)", c.queue_select)
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            return self.common.device.read_config(offset - CONFIG_OFFSET, data);
        }
        // Registers are 32 bits wide and must be accessed as such (4.2.2.2).
        if data.len() != 4 || offset % 4 != 0 {
            data.fill(0xff);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            return self.common.device.write_config(offset - CONFIG_OFFSET, data);
        }
        if data.len() != 4 || offset % 4 != 0 {
            log::debug!("virtio-mmio: ignoring a {}-byte register write at {offset:#x}", data.len());
            return;
        }
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_register(offset, value);
    }
}
