//! Interrupt virtualization (book chapter 3). rvmm uses KVM's in-kernel
//! irqchip: the 8259A pair, the IOAPIC and every local APIC are emulated in the
//! kernel, so an interrupt from a user-space device is one KVM_IRQ_LINE ioctl
//! and the guest's EOIs never leave the kernel. The 8254 PIT is in-kernel too.

pub mod ioapic;
pub mod msi;
pub mod pic;
pub mod pit;
pub mod split;

use std::sync::Arc;

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;

use devices::IrqLine;

use crate::bus::{Bus, BusError};

/// Where KVM may put the identity-map page and the three TSS pages it needs to
/// run real mode on Intel CPUs without unrestricted guest: 0xFEFFC000-0xFF000000,
/// inside the MMIO hole, right below the 16 MiB that firmware images may occupy
/// (the same place QEMU uses), and reported as reserved to firmware.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfeff_c000;
const KVM_TSS_ADDR: usize = 0xfeff_d000;
/// Bytes KVM's identity map and TSS occupy from [`KVM_IDENTITY_MAP_ADDR`].
pub const KVM_PRIVATE_PAGES_SIZE: u64 = 0x4000;

/// Errors while creating the interrupt controllers.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// The PIT's timer could not be set up.
    #[error("PIT timer: {0}")]
    Timer(std::io::Error),
    /// Registering a controller on a bus failed.
    #[error("interrupt controller registration: {0}")]
    Bus(#[from] BusError),
    /// A KVM VM ioctl failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
}

/// Creates the in-kernel PIC/IOAPIC/LAPICs and the PIT. Must run before any vCPU is created.
pub fn create_in_kernel_irqchip(vm: &VmFd) -> Result<(), InterruptError> {
    let err = |what| move |source| InterruptError::Kvm { what, source };
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR).map_err(err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.set_tss_address(KVM_TSS_ADDR).map_err(err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(err("KVM_CREATE_IRQCHIP"))?;
    // The speaker port (0x61) is answered in the kernel with a dummy speaker.
    let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
    vm.create_pit2(pit).map_err(err("KVM_CREATE_PIT2"))?;
    Ok(())
}

/// Switches the VM to a split irqchip: KVM keeps the local APICs, rvmm emulates
/// the PIC, IOAPIC and PIT. Must run before any vCPU is created.
pub fn create_split_irqchip(vm: &VmFd) -> Result<(), InterruptError> {
    let err = |what| move |source| InterruptError::Kvm { what, source };
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR).map_err(err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.set_tss_address(KVM_TSS_ADDR).map_err(err("KVM_SET_TSS_ADDR"))?;
    // args[0]: GSI routes 0-23 are the IOAPIC's pins (mirrored by rvmm's IOAPIC).
    let mut cap = kvm_bindings::kvm_enable_cap { cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP, ..Default::default() };
    cap.args[0] = u64::from(msi::IOAPIC_PINS);
    vm.enable_cap(&cap).map_err(err("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)"))?;
    Ok(())
}

/// Registers the user-space PIC (0x20, 0xA0, ELCR 0x4D0) and IOAPIC (0xFEC00000) on the buses.
pub fn register_user_irqchip(chip: &split::UserIrqChip, pio: &Bus, mmio: &Bus) -> Result<(), BusError> {
    for (start, len) in pic::PIC_PIO_RANGES {
        pio.insert_named(chip.pic.clone(), start, len, pic::PIC_PIO_OFFSET_BASE, "8259A PIC")?;
    }
    mmio.insert(chip.ioapic.clone(), ioapic::IOAPIC_MMIO_BASE, ioapic::IOAPIC_MMIO_SIZE, "IOAPIC")
}

/// An ISA interrupt line (GSI) of the in-kernel irqchip, driven with KVM_IRQ_LINE.
///
/// The in-kernel PIC and IOAPIC see the level and detect edges themselves, so a
/// device only reports its output level, like a real chip's IRQ pin.
pub struct KvmIrqLine {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl KvmIrqLine {
    /// The line for `gsi` (0-23 on the in-kernel IOAPIC; 0-15 also reach the PIC).
    pub fn new(vm: Arc<VmFd>, gsi: u32) -> Self {
        KvmIrqLine { vm, gsi }
    }
}

impl IrqLine for KvmIrqLine {
    fn set_level(&self, asserted: bool) {
        if let Err(e) = self.vm.set_irq_line(self.gsi, asserted) {
            log::warn!("KVM_IRQ_LINE for GSI {} failed: {e}", self.gsi);
        }
    }
}
