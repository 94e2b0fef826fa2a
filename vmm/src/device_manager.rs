//! Where devices live in the guest's address spaces and how their interrupts
//! and notifications are wired: the legacy PC devices at their fixed ports
//! (book chapter 4.4) and virtio devices on the MMIO transport (chapter 5).

use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, VmFd};
use virtio::block::{Block, BlockConfig, BlockError};
use virtio::device::VirtioDevice;
use virtio::transport::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use virtio::transport::TransportError;
use vm_memory::GuestMemoryMmap;

use crate::bus::{Bus, BusError};
use crate::interrupt::KvmIrqLine;

/// Start of the virtio-mmio windows, inside the 32-bit MMIO hole.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// The GSIs virtio-mmio devices get, in order: ISA lines no PC device here uses,
/// then the IOAPIC-only pins.
pub const VIRTIO_MMIO_GSIS: [u32; 13] = [5, 6, 7, 10, 11, 14, 15, 16, 17, 18, 19, 20, 21];

/// Where one virtio-mmio device sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// Base address of its register window.
    pub base: u64,
    /// Its interrupt line.
    pub gsi: u32,
}

impl MmioSlot {
    /// The Linux command-line parameter that announces the device (virtio_mmio.c).
    pub fn cmdline_param(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            MMIO_WINDOW_SIZE / 1024,
            self.base,
            self.gsi
        )
    }
}

/// Errors while adding devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// More virtio-mmio devices than interrupt lines for them.
    #[error("too many virtio-mmio devices: at most {max}")]
    TooManyMmioDevices {
        /// The limit.
        max: usize,
    },
    /// A block device could not be created.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The transport could not be created.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Registering the device's address range failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// KVM refused an ioeventfd.
    #[error("KVM_IOEVENTFD at {addr:#x} failed: {source}")]
    IoEvent {
        /// The notification address.
        addr: u64,
        /// The error.
        source: kvm_ioctls::Error,
    },
}

/// Slot `index` of the virtio-mmio area.
pub fn mmio_slot(index: usize) -> Result<MmioSlot, DeviceError> {
    let gsi = *VIRTIO_MMIO_GSIS
        .get(index)
        .ok_or(DeviceError::TooManyMmioDevices {
            max: VIRTIO_MMIO_GSIS.len(),
        })?;
    Ok(MmioSlot {
        base: VIRTIO_MMIO_BASE + index as u64 * MMIO_WINDOW_SIZE,
        gsi,
    })
}

/// Creates the block devices described by `disks`.
pub fn create_block_devices(
    disks: &[BlockConfig],
) -> Result<Vec<Box<dyn VirtioDevice>>, DeviceError> {
    disks
        .iter()
        .map(|d| Ok(Box::new(Block::new(d.clone())?) as Box<dyn VirtioDevice>))
        .collect()
}

/// Puts `device` behind a virtio-mmio window at `slot`: registers the window on
/// the MMIO bus and one ioeventfd per queue on QueueNotify, so that a queue
/// notification wakes the device's worker without an exit to user space.
pub fn add_virtio_mmio(
    vm: &Arc<VmFd>,
    mmio_bus: &Bus,
    memory: &GuestMemoryMmap,
    device: Box<dyn VirtioDevice>,
    slot: MmioSlot,
) -> Result<(), DeviceError> {
    let irq = Arc::new(KvmIrqLine::new(vm.clone(), slot.gsi));
    let transport = MmioTransport::new(device, memory.clone(), irq)?;
    let notify_addr = slot.base + QUEUE_NOTIFY_OFFSET;
    for (index, event) in transport.common().notify_events().iter().enumerate() {
        vm.register_ioevent(event, &IoEventAddress::Mmio(notify_addr), index as u32)
            .map_err(|source| DeviceError::IoEvent {
                addr: notify_addr,
                source,
            })?;
    }
    mmio_bus.insert(
        Arc::new(std::sync::Mutex::new(transport)),
        slot.base,
        MMIO_WINDOW_SIZE,
    )?;
    Ok(())
}
