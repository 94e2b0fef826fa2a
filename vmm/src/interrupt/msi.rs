//! MSI routing (book chapter 3.4): KVM delivers a message-signalled interrupt
//! when user space writes an eventfd bound (irqfd) to a GSI whose route is an
//! MSI address/data pair. The device thread never takes a vCPU exit or a lock
//! to interrupt the guest; only re-programming a vector changes the route.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so the router keeps every route
//! — the in-kernel irqchip's default PIC/IOAPIC pin routes included — and
//! installs the full set on each change.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

/// Pins of the in-kernel IOAPIC; GSIs above these are free for MSI routes.
pub const IOAPIC_PINS: u32 = 24;

/// Errors while changing interrupt routes.
#[derive(Debug, thiserror::Error)]
pub enum MsiError {
    /// KVM refused the routing table or an irqfd.
    #[error("{what} failed: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// All GSIs KVM offers are in use.
    #[error("no free GSI for another MSI vector (KVM offers {0})")]
    OutOfGsis(u32),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    /// The routing table could not be built.
    #[error("cannot build the GSI routing table")]
    Table,
}

/// An MSI message as a device's MSI-X table entry holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    /// The message address (0xFEEx_xxxx for the LAPICs).
    pub address: u64,
    /// The message data (vector, delivery mode).
    pub data: u32,
}

/// The VM's GSI routing table.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    max_gsi: u32,
    /// Whether the in-kernel PIC and IOAPIC exist (their pin routes are installed).
    kernel_irqchip: bool,
    msi_routes: Mutex<BTreeMap<u32, Option<MsiMessage>>>,
}

impl GsiRouter {
    /// A router for `vm` with the in-kernel irqchip; `max_gsi` is KVM's
    /// KVM_CAP_IRQ_ROUTING limit.
    pub fn new(vm: Arc<VmFd>, max_gsi: u32) -> Self {
        GsiRouter { vm, max_gsi, kernel_irqchip: true, msi_routes: Mutex::new(BTreeMap::new()) }
    }

    /// A router for a split irqchip: GSIs 0-23 are MSI routes mirroring the
    /// user-space IOAPIC's entries (see [`GsiRouter::set_route`]), so KVM knows
    /// which vectors are level-triggered and exits with KVM_EXIT_IOAPIC_EOI.
    pub fn new_split(vm: Arc<VmFd>, max_gsi: u32) -> Self {
        GsiRouter { vm, max_gsi, kernel_irqchip: false, msi_routes: Mutex::new(BTreeMap::new()) }
    }

    /// The in-kernel irqchip's own routes, laid out as a PC wires them: ISA IRQs
    /// 0-15 to the PICs (IRQ 2 is the cascade), and to the IOAPIC with ISA IRQ 0
    /// (the PIT) on pin 2 — what the MADT's interrupt source override and the MP
    /// table announce. KVM's default table would put GSI 0 on pin 0.
    fn irqchip_routes() -> Vec<kvm_irq_routing_entry> {
        let mut routes = Vec::new();
        let irqchip = |gsi: u32, chip: u32, pin: u32| {
            let mut e = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_IRQCHIP, ..Default::default() };
            e.u.irqchip.irqchip = chip;
            e.u.irqchip.pin = pin;
            e
        };
        for gsi in 0..16 {
            if gsi == 2 {
                continue;
            }
            let (chip, pin) = if gsi < 8 { (KVM_IRQCHIP_PIC_MASTER, gsi) } else { (KVM_IRQCHIP_PIC_SLAVE, gsi - 8) };
            routes.push(irqchip(gsi, chip, pin));
        }
        for gsi in 0..IOAPIC_PINS {
            match gsi {
                0 => routes.push(irqchip(0, KVM_IRQCHIP_IOAPIC, 2)),
                // Pin 2 is fed by GSI 0; nothing raises GSI 2.
                2 => {}
                _ => routes.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi)),
            }
        }
        routes
    }

    /// Installs the table now (the irqchip routes, before any MSI vector exists).
    pub fn install_default(&self) -> Result<(), MsiError> {
        let routes = self.msi_routes.lock().unwrap_or_else(|e| e.into_inner());
        self.install(&routes)
    }

    fn install(&self, msi: &BTreeMap<u32, Option<MsiMessage>>) -> Result<(), MsiError> {
        let mut entries = if self.kernel_irqchip { Self::irqchip_routes() } else { Vec::new() };
        for (&gsi, message) in msi {
            // A masked vector keeps its GSI but has no route: an irqfd write is then dropped.
            let Some(m) = message else { continue };
            let mut e = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_MSI, ..Default::default() };
            e.u.msi.address_lo = m.address as u32;
            e.u.msi.address_hi = (m.address >> 32) as u32;
            e.u.msi.data = m.data;
            entries.push(e);
        }
        let table = KvmIrqRouting::from_entries(&entries).map_err(|_| MsiError::Table)?;
        self.vm.set_gsi_routing(&table).map_err(|source| MsiError::Kvm { what: "KVM_SET_GSI_ROUTING", source })
    }

    /// Allocates a GSI for one MSI vector and binds a new eventfd to it.
    pub fn allocate(self: &Arc<Self>) -> Result<MsiVector, MsiError> {
        let gsi = {
            let mut routes = self.msi_routes.lock().unwrap_or_else(|e| e.into_inner());
            let next = routes.keys().next_back().map_or(IOAPIC_PINS, |g| (g + 1).max(IOAPIC_PINS));
            if next >= self.max_gsi {
                return Err(MsiError::OutOfGsis(self.max_gsi));
            }
            routes.insert(next, None);
            next
        };
        let event = EventFd::new(libc::EFD_NONBLOCK).map_err(MsiError::EventFd)?;
        self.vm.register_irqfd(&event, gsi).map_err(|source| MsiError::Kvm { what: "KVM_IRQFD", source })?;
        Ok(MsiVector { router: self.clone(), gsi, event })
    }

    /// Points `gsi` at `message`, or removes its route (`None`: masked or disabled).
    pub fn set_route(&self, gsi: u32, message: Option<MsiMessage>) -> Result<(), MsiError> {
        let mut routes = self.msi_routes.lock().unwrap_or_else(|e| e.into_inner());
        if routes.get(&gsi) == Some(&message) {
            return Ok(());
        }
        routes.insert(gsi, message);
        self.install(&routes)
    }
}

/// One MSI vector: a GSI with an irqfd. Writing the eventfd interrupts the guest.
pub struct MsiVector {
    router: Arc<GsiRouter>,
    gsi: u32,
    event: EventFd,
}

impl MsiVector {
    /// The GSI this vector is routed through.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Changes where the vector's interrupts go (`None` = masked).
    pub fn set_message(&self, message: Option<MsiMessage>) -> Result<(), MsiError> {
        self.router.set_route(self.gsi, message)
    }

    /// Sends the interrupt: one eventfd write, handled entirely in the kernel.
    pub fn trigger(&self) {
        if let Err(e) = self.event.write(1) {
            log::warn!("MSI on GSI {}: eventfd write failed: {e}", self.gsi);
        }
    }

    /// The eventfd bound to the GSI, for handing to another thread or process.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_cover_pic_and_ioapic() {
        let routes = GsiRouter::irqchip_routes();
        // 15 PIC routes (no cascade) + 23 IOAPIC routes (GSI 0 on pin 2, no GSI 2).
        assert_eq!(routes.len(), 15 + 23);
        assert_eq!(routes.iter().filter(|r| r.gsi == 2).count(), 0);
        // SAFETY (test): reading the irqchip member of entries built as irqchip routes.
        let gsi0_pins: Vec<(u32, u32)> =
            routes.iter().filter(|r| r.gsi == 0).map(|r| unsafe { (r.u.irqchip.irqchip, r.u.irqchip.pin) }).collect();
        assert_eq!(gsi0_pins, vec![(KVM_IRQCHIP_PIC_MASTER, 0), (KVM_IRQCHIP_IOAPIC, 2)]);
    }
}
