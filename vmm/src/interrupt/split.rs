//! The split irqchip (book chapter 3): KVM keeps the local APICs, rvmm
//! emulates the 8259A pair, the IOAPIC and the PIT in user space.
//!
//! - A device's interrupt line goes to both the PIC (ISA lines 0-15) and the
//!   IOAPIC (pin = GSI, except ISA IRQ 0 on pin 2), as on a PC.
//! - The IOAPIC sends its interrupts as MSIs (KVM_SIGNAL_MSI) and mirrors every
//!   redirection entry into GSI route 0-23, from which KVM learns the
//!   level-triggered vectors whose EOIs it must report (KVM_EXIT_IOAPIC_EOI).
//! - The PIC's output reaches vCPU 0's LINT0 (ExtINT): vCPU 0 injects the
//!   acknowledged vector with KVM_INTERRUPT when KVM says an interrupt can be
//!   taken, or asks for an interrupt-window exit; a device raising the PIC from
//!   another thread kicks vCPU 0 out of KVM_RUN (or out of HLT) to do so.

use std::sync::{Arc, Mutex, OnceLock};

use devices::IrqLine;
use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;

use std::time::Duration;

use virtio::worker::Worker;
use vmm_sys_util::eventfd::EventFd;

use super::ioapic::{IoApic, IoApicDelivery, RedirectionEntry};
use super::msi::{GsiRouter, MsiMessage};
use super::pic::PicPair;
use super::pit::{Clock, MonotonicClock, Pit, PIT_PIO_OFFSET_BASE, PIT_PIO_RANGES};
use super::InterruptError;
use crate::bus::Bus;
use crate::timer::{spawn_timer, ReschedulingPorts};

/// Sends the user-space IOAPIC's interrupts through KVM.
struct KvmIoApicDelivery {
    vm: Arc<VmFd>,
    router: Arc<GsiRouter>,
}

impl IoApicDelivery for KvmIoApicDelivery {
    fn deliver(&self, msg: MsiMessage) {
        let msi = kvm_msi {
            address_lo: msg.address as u32,
            address_hi: (msg.address >> 32) as u32,
            data: msg.data,
            ..Default::default()
        };
        if let Err(e) = self.vm.signal_msi(msi) {
            log::warn!("IOAPIC: KVM_SIGNAL_MSI failed: {e}");
        }
    }

    fn entry_changed(&self, pin: u8, entry: RedirectionEntry) {
        if let Err(e) = self.router.set_route(u32::from(pin), entry.route()) {
            log::warn!("IOAPIC pin {pin}: {e}");
        }
    }
}

/// The user-space interrupt controllers of a split-irqchip VM.
pub struct UserIrqChip {
    /// The 8259A pair.
    pub pic: Arc<Mutex<PicPair>>,
    /// The IOAPIC.
    pub ioapic: Arc<Mutex<IoApic>>,
    /// Wakes vCPU 0 so it injects a PIC interrupt; set once the vCPU runs.
    kick_vcpu0: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl UserIrqChip {
    /// Controllers delivering through `vm`, with IOAPIC routes kept in `router`.
    pub fn new(vm: Arc<VmFd>, router: Arc<GsiRouter>) -> Arc<Self> {
        let ioapic = IoApic::new(Box::new(KvmIoApicDelivery { vm, router }));
        Arc::new(UserIrqChip {
            pic: Arc::new(Mutex::new(PicPair::new())),
            ioapic: Arc::new(Mutex::new(ioapic)),
            kick_vcpu0: OnceLock::new(),
        })
    }

    /// Sets how vCPU 0 is woken for a PIC interrupt.
    pub fn set_vcpu0_kick(&self, kick: Box<dyn Fn() + Send + Sync>) {
        let _ = self.kick_vcpu0.set(kick);
    }

    /// Drives GSI `gsi` to `level`.
    pub fn set_gsi(&self, gsi: u32, level: bool) {
        if gsi < 16 {
            let raised = {
                let mut pic = self.pic.lock().unwrap_or_else(|e| e.into_inner());
                pic.set_irq(gsi as u8, level);
                pic.has_interrupt()
            };
            if raised {
                if let Some(kick) = self.kick_vcpu0.get() {
                    kick();
                }
            }
        }
        // ISA IRQ 0 (the PIT) is wired to IOAPIC pin 2, as the MP table and MADT say.
        let pin = if gsi == 0 { 2 } else { gsi };
        if pin < 24 {
            self.ioapic.lock().unwrap_or_else(|e| e.into_inner()).set_irq(pin as u8, level);
        }
    }

    /// Handles KVM_EXIT_IOAPIC_EOI: the guest ended a level-triggered interrupt.
    pub fn end_of_interrupt(&self, vector: u8) {
        self.ioapic.lock().unwrap_or_else(|e| e.into_inner()).end_of_interrupt(vector);
    }
}

/// How a VM's interrupt lines reach the guest.
#[derive(Clone)]
pub enum IrqChip {
    /// KVM's in-kernel PIC, IOAPIC and PIT.
    Kernel(Arc<VmFd>),
    /// rvmm's user-space PIC, IOAPIC and PIT with KVM's local APICs.
    Split(Arc<UserIrqChip>),
}

impl IrqChip {
    /// The interrupt line for `gsi`, the same abstraction in both modes.
    pub fn line(&self, gsi: u32) -> Arc<dyn IrqLine> {
        match self {
            IrqChip::Kernel(vm) => Arc::new(super::KvmIrqLine::new(vm.clone(), gsi)),
            IrqChip::Split(chip) => Arc::new(SplitIrqLine { chip: chip.clone(), gsi }),
        }
    }

    /// The user-space controllers, in split mode.
    pub fn user(&self) -> Option<&Arc<UserIrqChip>> {
        match self {
            IrqChip::Split(chip) => Some(chip),
            IrqChip::Kernel(_) => None,
        }
    }
}

/// A GSI of the user-space controllers.
struct SplitIrqLine {
    chip: Arc<UserIrqChip>,
    gsi: u32,
}

impl IrqLine for SplitIrqLine {
    fn set_level(&self, asserted: bool) {
        self.chip.set_gsi(self.gsi, asserted);
    }
}

impl crate::timer::Rescheduling for Pit {
    fn take_rescheduled(&mut self) -> bool {
        self.take_irq0_reprogrammed()
    }
}

/// Registers the user-space 8254 on ports 0x40-0x43 and 0x61 and starts the
/// thread that turns its counter 0 into IRQ 0.
pub fn start_pit(chip: &IrqChip, pio: &Bus) -> Result<Worker, InterruptError> {
    let pit = Arc::new(Mutex::new(Pit::new(Box::new(MonotonicClock))));
    let kick = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(InterruptError::Timer)?);
    let ports = Arc::new(Mutex::new(ReschedulingPorts::new(pit.clone(), kick.clone())));
    for (start, len) in PIT_PIO_RANGES {
        pio.insert_named(ports.clone(), start, len, PIT_PIO_OFFSET_BASE, "8254 PIT")?;
    }
    let line = chip.line(0);
    spawn_timer("pit", kick, move || {
        let now = MonotonicClock.now_ns();
        let (edges, next) = {
            let mut pit = pit.lock().unwrap_or_else(|e| e.into_inner());
            (pit.irq0_edges(now), pit.next_irq0_deadline(now))
        };
        // Edges the host timer could not deliver on time collapse into one pulse,
        // as a late timer interrupt would on real hardware.
        if edges > 0 {
            line.set_level(true);
            line.set_level(false);
        }
        // None: counter 0 is not counting.
        next.map(|deadline| Duration::from_nanos(deadline.saturating_sub(now).max(1_000)))
    })
    .map_err(InterruptError::Timer)
}
