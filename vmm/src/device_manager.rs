//! Where devices live in the guest's address spaces and how their interrupts
//! and notifications are wired (book chapters 4.2 and 5): virtio devices on
//! the MMIO transport or as PCI functions, the PCI root with configuration
//! mechanism 1 and ECAM, BAR placement and relocation, MSI-X through irqfd.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use devices::pci::bus::{PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_PORT_COUNT};
use devices::pci::{
    BarRelocator, BarReprogram, Bdf, MsiInterrupt, MsiMessage, PciBarKind, PciBarRegion, PciConfigIo, PciConfigMmio,
    PciDevice, PciRoot, SharedPciDevice,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use virtio::block::{Block, BlockConfig, BlockError};
use virtio::device::VirtioDevice;
use virtio::transport::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use virtio::transport::pci::{VirtioPciDevice, VirtioPciError, BAR_SIZE, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER};
use virtio::transport::TransportError;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::boot::pci_acpi::PciDescription;
use crate::bus::{Bus, BusError};
use crate::interrupt::msi::{self, GsiRouter, MsiError, MsiVector};
use crate::interrupt::split::IrqChip;
use crate::memory::allocator::AddressAllocator;

/// Start of the virtio-mmio windows, inside the 32-bit MMIO hole.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// The device interrupt lines (virtio-mmio lines and PCI INTx), in the order they
/// are handed out: ISA lines no PC device here uses, then the IOAPIC-only pins.
pub const DEVICE_GSIS: [u32; 15] = [5, 6, 7, 10, 11, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23];
/// Window for PCI memory BARs that rvmm assigns (below the virtio-mmio area).
pub const PCI_MMIO_WINDOW: (u64, u64) = (0xc000_0000, 0xd000_0000);
/// Where firmware (SeaBIOS on an i440FX) places memory BARs: top-down from the
/// IOAPIC, above rvmm's ECAM window. The host bridge's `_CRS` says so.
pub const FIRMWARE_PCI_MMIO_WINDOW: (u64, u64) = (0xe010_0000, 0xfec0_0000);
/// The ECAM (PCI Express enhanced configuration) window, one bus.
pub const PCI_ECAM_BASE: u64 = 0xe000_0000;
/// Buses the ECAM window covers.
pub const PCI_ECAM_BUSES: u16 = 1;

/// How a virtio device is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VirtioTransport {
    /// A PCI function (virtio-pci, modern).
    #[default]
    Pci,
    /// A virtio-mmio window announced on the kernel command line.
    Mmio,
}

/// A disk and how it is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The block device.
    pub block: BlockConfig,
    /// Its transport; `None` takes the VM's default.
    pub transport: Option<VirtioTransport>,
}

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
        format!("virtio_mmio.device={}K@{:#x}:{}", MMIO_WINDOW_SIZE / 1024, self.base, self.gsi)
    }
}

/// Errors while adding devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// More devices than interrupt lines for them.
    #[error("too many devices: at most {max} virtio devices fit")]
    TooManyDevices {
        /// The limit.
        max: usize,
    },
    /// The PCI memory window is full.
    #[error("no room left for a PCI BAR of {0:#x} bytes")]
    PciWindowFull(u64),
    /// A PCI function could not be created or added.
    #[error(transparent)]
    VirtioPci(#[from] VirtioPciError),
    /// The PCI root refused a device.
    #[error("PCI: {0}")]
    Pci(#[from] devices::pci::PciError),
    /// MSI routing.
    #[error(transparent)]
    Msi(#[from] MsiError),
    /// A block device could not be created.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The vsock device could not be set up (bad CID, socket path in use).
    #[error("vsock: {0}")]
    Vsock(#[from] virtio::vsock::VsockError),
    /// A tap could not be opened or configured.
    #[error("cannot use {what} for networking: {source}")]
    Tap {
        /// Which backend.
        what: String,
        /// The error.
        source: std::io::Error,
    },
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

/// The `index`-th device interrupt line.
pub fn device_gsi(index: usize) -> Result<u32, DeviceError> {
    DEVICE_GSIS.get(index).copied().ok_or(DeviceError::TooManyDevices { max: DEVICE_GSIS.len() })
}

/// Where a network device's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackendSpec {
    /// A tap interface by name (opened, or created if missing).
    Tap(String),
    /// An open tap file descriptor handed to rvmm.
    Fd(i32),
}

/// A network device and how it is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The backend.
    pub backend: NetBackendSpec,
    /// The guest MAC; random (locally administered) when not given.
    pub mac: Option<[u8; 6]>,
    /// Queue pairs (one tap queue each).
    pub queues: u16,
    /// The MTU offered to the guest (VIRTIO_NET_F_MTU), e.g. reduced for an overlay.
    pub mtu: Option<u16>,
    /// Its transport; `None` takes the VM's default.
    pub transport: Option<VirtioTransport>,
}

/// A virtio-vsock device with its host-side Unix sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockSpec {
    /// The guest's context ID (3 or more).
    pub cid: u64,
    /// The host socket path: rvmm listens there; guest connections to port P go to `PATH_P`.
    pub uds: std::path::PathBuf,
    /// Its transport; `None` takes the VM's default.
    pub transport: Option<VirtioTransport>,
}

/// A random locally administered unicast MAC address.
fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most 6 bytes into the array.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != 6 {
        // Fall back to something distinct per process.
        mac[2..6].copy_from_slice(&std::process::id().to_le_bytes());
    }
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// Creates a virtio-net device for `spec`.
pub fn create_net_device(spec: &NetSpec) -> Result<Box<dyn VirtioDevice>, DeviceError> {
    use virtio::net::tap::{NetBackend, Tap};
    use virtio::net::{Net, NetConfig, VNET_HDR_LEN};
    let backends: Vec<Box<dyn NetBackend>> = match &spec.backend {
        NetBackendSpec::Tap(name) => Tap::open(name, usize::from(spec.queues), VNET_HDR_LEN)
            .map_err(|source| DeviceError::Tap { what: format!("tap {name}"), source })?
            .into_iter()
            .map(|t| Box::new(t) as Box<dyn NetBackend>)
            .collect(),
        NetBackendSpec::Fd(fd) => {
            // SAFETY: a descriptor number given on the command line: fcntl checks it is open
            // before rvmm takes ownership of it.
            if unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0 {
                return Err(DeviceError::Tap { what: format!("fd {fd}"), source: std::io::Error::last_os_error() });
            }
            // SAFETY: checked open above; rvmm now owns it, as the option documents.
            let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(*fd) };
            vec![Box::new(
                Tap::from_fd(owned, VNET_HDR_LEN)
                    .map_err(|source| DeviceError::Tap { what: format!("fd {fd}"), source })?,
            )]
        }
    };
    let config = NetConfig { mac: spec.mac.unwrap_or_else(random_mac), mtu: spec.mtu };
    Ok(Box::new(
        Net::new(backends, config)
            .map_err(|e| DeviceError::Tap { what: "network device".into(), source: std::io::Error::other(e) })?,
    ))
}

/// Creates the block devices described by `disks`.
pub fn create_block_devices(disks: &[DiskSpec]) -> Result<Vec<Box<dyn VirtioDevice>>, DeviceError> {
    disks.iter().map(|d| Ok(Box::new(Block::new(d.block.clone())?) as Box<dyn VirtioDevice>)).collect()
}

/// Puts `device` behind a virtio-mmio window at `slot`: registers the window on
/// the MMIO bus and one ioeventfd per queue on QueueNotify, so that a queue
/// notification wakes the device's worker without an exit to user space.
pub fn add_virtio_mmio(
    vm: &Arc<VmFd>,
    irqchip: &IrqChip,
    mmio_bus: &Bus,
    memory: &GuestMemoryMmap,
    device: Box<dyn VirtioDevice>,
    slot: MmioSlot,
) -> Result<(), DeviceError> {
    let irq = irqchip.line(slot.gsi);
    let transport = MmioTransport::new(device, memory.clone(), irq)?;
    let notify_addr = slot.base + QUEUE_NOTIFY_OFFSET;
    for (index, event) in transport.common().notify_events().iter().enumerate() {
        vm.register_ioevent(event, &IoEventAddress::Mmio(notify_addr), index as u32)
            .map_err(|source| DeviceError::IoEvent { addr: notify_addr, source })?;
    }
    mmio_bus.insert(Arc::new(std::sync::Mutex::new(transport)), slot.base, MMIO_WINDOW_SIZE, "virtio-mmio")?;
    Ok(())
}

/// MSI-X vectors of one PCI function, each a GSI with an irqfd.
struct KvmMsiInterrupt {
    vectors: Vec<MsiVector>,
}

impl MsiInterrupt for KvmMsiInterrupt {
    fn update(&self, vector: u16, msg: Option<MsiMessage>) {
        let Some(v) = self.vectors.get(usize::from(vector)) else {
            return;
        };
        let route = msg.map(|m| msi::MsiMessage { address: m.address, data: m.data });
        if let Err(e) = v.set_message(route) {
            log::warn!("MSI-X vector {vector}: {e}");
        }
    }

    fn trigger(&self, vector: u16) {
        if let Some(v) = self.vectors.get(usize::from(vector)) {
            v.trigger();
        }
    }
}

/// An ioeventfd that belongs at an offset of a BAR.
///
/// It matches a write of any width and value: every queue has its own notify
/// address, and drivers write the 16-bit queue index there (virtio 1.x
/// 4.1.5.2), or 32 bits with VIRTIO_F_NOTIFICATION_DATA. (An ioeventfd with
/// a data match also matches only one width, so a 32-bit match would send
/// every 16-bit notification to user space.)
struct BarIoEvent {
    offset: u64,
    event: EventFd,
}

/// Moves BAR mappings on the buses (and the ioeventfds inside them) when the
/// guest reprograms a BAR or toggles decoding.
pub struct BarMapper {
    vm: Arc<VmFd>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    ioevents: Mutex<HashMap<(Bdf, u8), Vec<BarIoEvent>>>,
    /// Where each BAR really is on its bus. The configuration space's idea of
    /// where a BAR decodes is not enough: a guest can place a BAR on top of
    /// another range, the insertion then fails, and removing "the old
    /// address" later would take away whatever else lives there (ECAM, say).
    mapped: Mutex<HashMap<(Bdf, u8), u64>>,
}

impl BarMapper {
    fn ioevent_address(kind: PciBarKind, addr: u64) -> IoEventAddress {
        match kind {
            PciBarKind::Io => IoEventAddress::Pio(addr),
            _ => IoEventAddress::Mmio(addr),
        }
    }
}

impl BarRelocator for BarMapper {
    fn relocate(&self, bdf: Bdf, change: &BarReprogram, device: SharedPciDevice) {
        let bus = if change.kind == PciBarKind::Io { &self.pio } else { &self.mmio };
        let ioevents = self.ioevents.lock().unwrap_or_else(|e| e.into_inner());
        let events = ioevents.get(&(bdf, change.index));
        let mut mapped = self.mapped.lock().unwrap_or_else(|e| e.into_inner());
        // Only what this mapper inserted is removed (see `mapped`).
        if let Some(old) = mapped.remove(&(bdf, change.index)) {
            bus.remove(old);
            for e in events.into_iter().flatten() {
                let addr = Self::ioevent_address(change.kind, old + e.offset);
                if let Err(err) = self.vm.unregister_ioevent(&e.event, &addr, NoDatamatch) {
                    log::warn!("PCI {bdf}: cannot remove an ioeventfd at {:#x}: {err}", old + e.offset);
                }
            }
        }
        if let Some(new) = change.new {
            let region = Arc::new(Mutex::new(PciBarRegion::new(device, change.index)));
            if let Err(err) = bus.insert(region, new, change.size, &format!("PCI {bdf} BAR{}", change.index)) {
                // The guest placed the BAR on top of something else: it does not decode there.
                log::warn!("PCI {bdf}: BAR {} at {new:#x}: {err}", change.index);
                return;
            }
            mapped.insert((bdf, change.index), new);
            for e in events.into_iter().flatten() {
                let addr = Self::ioevent_address(change.kind, new + e.offset);
                if let Err(err) = self.vm.register_ioevent(&e.event, &addr, NoDatamatch) {
                    log::warn!("PCI {bdf}: cannot add an ioeventfd at {:#x}: {err}", new + e.offset);
                }
            }
        }
    }
}

/// Who assigns PCI resources, and so which host bridge the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciPlatform {
    /// A kernel booted directly: rvmm's generic host bridge, BARs assigned
    /// and decoding before the guest starts, as firmware would leave them.
    Direct,
    /// PC firmware enumerates the bus: an i440FX host bridge, BARs left
    /// unassigned and decoding off, as at power-on.
    Firmware,
}

/// The PCI segment of a VM: root, config access devices, BAR window, MSI routing.
pub struct PciSegment {
    root: Arc<PciRoot>,
    mapper: Arc<BarMapper>,
    router: Arc<GsiRouter>,
    window: AddressAllocator,
    platform: PciPlatform,
    next_slot: u8,
    intx_routes: Vec<(u8, u32)>,
}

impl PciSegment {
    /// Creates the root (host bridge at 00:00.0) and registers configuration
    /// mechanism 1 at 0xCF8 (on the firmware platform with the reset control
    /// register at 0xCF9, whose resets go to `events`) and the ECAM window.
    pub fn new(
        vm: &Arc<VmFd>,
        pio: &Arc<Bus>,
        mmio: &Arc<Bus>,
        router: Arc<GsiRouter>,
        platform: PciPlatform,
        events: devices::GuestEventSink,
    ) -> Result<Self, DeviceError> {
        let mapper = Arc::new(BarMapper {
            vm: vm.clone(),
            pio: pio.clone(),
            mmio: mmio.clone(),
            ioevents: Mutex::new(HashMap::new()),
            mapped: Mutex::new(HashMap::new()),
        });
        let root = Arc::new(match platform {
            PciPlatform::Direct => PciRoot::new(mapper.clone()),
            PciPlatform::Firmware => {
                PciRoot::with_host_bridge(mapper.clone(), Arc::new(Mutex::new(devices::pci::I440fxHostBridge::new())))
            }
        });
        pio.insert(
            Arc::new(Mutex::new(match platform {
                // The PIIX/ICH reset control register is a chipset piece: only the firmware machine has it.
                PciPlatform::Firmware => PciConfigIo::with_reset_control(root.clone(), events),
                PciPlatform::Direct => PciConfigIo::new(root.clone()),
            })),
            u64::from(PCI_CONFIG_IO_PORT),
            PCI_CONFIG_IO_PORT_COUNT,
            "PCI config",
        )?;
        let ecam = PciConfigMmio::new(root.clone(), PCI_ECAM_BUSES);
        let ecam_size = ecam.size();
        mmio.insert(Arc::new(Mutex::new(ecam)), PCI_ECAM_BASE, ecam_size, "PCI ECAM")?;
        Ok(PciSegment {
            root,
            mapper,
            router,
            window: AddressAllocator::new(PCI_MMIO_WINDOW.0, PCI_MMIO_WINDOW.1),
            platform,
            next_slot: 1,
            intx_routes: Vec::new(),
        })
    }

    /// Adds `device` as a virtio-pci function in the next free slot, with its
    /// BAR assigned (and decoding on the direct platform, as firmware would
    /// leave it), MSI-X vectors
    /// on irqfds and INTx on `gsi`.
    pub fn add_virtio(
        &mut self,
        irqchip: &IrqChip,
        memory: &GuestMemoryMmap,
        device: Box<dyn VirtioDevice>,
        gsi: u32,
    ) -> Result<Bdf, DeviceError> {
        let vectors =
            (0..device.queue_max_sizes().len() + 1).map(|_| self.router.allocate()).collect::<Result<Vec<_>, _>>()?;
        let msi = Arc::new(KvmMsiInterrupt { vectors });
        let intx = irqchip.line(gsi);
        let bar = self.window.allocate(BAR_SIZE, BAR_SIZE).ok_or(DeviceError::PciWindowFull(BAR_SIZE))?;
        let mut pci = VirtioPciDevice::new(device, memory.clone(), msi, intx, gsi as u8, bar)?;
        if self.platform == PciPlatform::Direct {
            pci.config_mut().set_command(devices::pci::configuration::COMMAND_MEMORY_SPACE);
        }
        let bdf = Bdf::new(0, self.next_slot, 0)?;
        let events = pci
            .common()
            .notify_events()
            .iter()
            .enumerate()
            .map(|(i, e)| {
                Ok(BarIoEvent {
                    offset: NOTIFY_OFFSET + i as u64 * u64::from(NOTIFY_OFF_MULTIPLIER),
                    event: e.try_clone().map_err(|err| DeviceError::Msi(MsiError::EventFd(err)))?,
                })
            })
            .collect::<Result<Vec<_>, DeviceError>>()?;
        self.mapper.ioevents.lock().unwrap_or_else(|e| e.into_inner()).insert((bdf, 0), events);
        // Adding a function whose BAR already decodes maps it through the BarMapper.
        self.root.add_device_at(bdf, Arc::new(Mutex::new(pci)))?;
        self.intx_routes.push((self.next_slot, gsi));
        self.next_slot += 1;
        Ok(bdf)
    }

    /// The segment as ACPI describes it (MCFG, host bridge windows, `_PRT`).
    pub fn description(&self) -> PciDescription {
        PciDescription {
            ecam_base: PCI_ECAM_BASE,
            ecam_buses: PCI_ECAM_BUSES,
            mmio_window: match self.platform {
                PciPlatform::Direct => PCI_MMIO_WINDOW,
                PciPlatform::Firmware => FIRMWARE_PCI_MMIO_WINDOW,
            },
            intx_routes: self.intx_routes.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::pci::PciHostBridge;

    fn mapper() -> BarMapper {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
        BarMapper {
            vm: Arc::new(kvm.create_vm().expect("a VM")),
            pio: Arc::new(Bus::new("pio")),
            mmio: Arc::new(Bus::new("mmio")),
            ioevents: Mutex::new(HashMap::new()),
            mapped: Mutex::new(HashMap::new()),
        }
    }

    fn ranges(bus: &Bus) -> Vec<String> {
        bus.counters().into_iter().map(|(label, _, _)| label).collect()
    }

    fn mem_bar(old: Option<u64>, new: Option<u64>) -> BarReprogram {
        BarReprogram { index: 0, kind: PciBarKind::Mem32, old, new, size: 0x1000 }
    }

    #[test]
    fn a_bar_placed_on_another_range_does_not_take_it_away_when_it_moves_on() {
        let m = mapper();
        let device: SharedPciDevice = Arc::new(Mutex::new(PciHostBridge::new()));
        // Something that is not the BAR's, e.g. the ECAM window.
        let other = Arc::new(Mutex::new(PciBarRegion::new(device.clone(), 5)));
        m.mmio.insert(other, 0xe000_0000, 0x1000, "ECAM").unwrap();
        let bdf = Bdf::new(0, 1, 0).unwrap();

        m.relocate(bdf, &mem_bar(None, Some(0xc000_0000)), device.clone());
        assert_eq!(ranges(&m.mmio), ["mmio PCI 00:01.0 BAR0 0xc0000000-0xc0000fff", "mmio ECAM 0xe0000000-0xe0000fff"]);
        // On top of ECAM: refused, ECAM stays.
        m.relocate(bdf, &mem_bar(Some(0xc000_0000), Some(0xe000_0000)), device.clone());
        assert_eq!(ranges(&m.mmio), ["mmio ECAM 0xe0000000-0xe0000fff"]);
        // Moving on from there must not remove ECAM.
        m.relocate(bdf, &mem_bar(Some(0xe000_0000), Some(0xd000_0000)), device.clone());
        assert_eq!(ranges(&m.mmio), ["mmio PCI 00:01.0 BAR0 0xd0000000-0xd0000fff", "mmio ECAM 0xe0000000-0xe0000fff"]);
        // Decoding off: unmapped.
        m.relocate(bdf, &mem_bar(Some(0xd000_0000), None), device);
        assert_eq!(ranges(&m.mmio), ["mmio ECAM 0xe0000000-0xe0000fff"]);
    }
}
