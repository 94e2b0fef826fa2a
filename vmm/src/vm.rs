//! The machine as a whole: builds a KVM VM from a [`VmConfig`] — memory, irqchip,
//! devices, boot image, vCPUs — and runs it until something ends it.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use devices::acpi_pm::AcpiSleepControl;
use devices::debug_exit::{DebugExit, DEBUG_EXIT_PORT};
use devices::debugcon::{DebugCon, DebugconOutput, DEBUGCON_PORT};
use devices::i8042::{I8042, I8042_AUX_IRQ, I8042_COMMAND_PORT, I8042_DATA_PORT, I8042_KBD_IRQ};
use devices::rtc::{Rtc, RTC_IRQ};
use devices::serial::{Serial, COM1, COM2, COM3, COM4, SERIAL_PORT_COUNT};
use devices::{BusDevice, GuestEvent, GuestEventSink, IrqLine, RecordingIrqLine};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::register_signal_handler;

use crate::boot::firmware::{FirmwareError, FirmwareImage, FirmwareMachine};
use crate::boot::pci_acpi::MmioDeviceDescription;
use crate::boot::{self, BootConfig, BootInfo, BootProtocol, EntryPoint, ACPI_SLEEP_CONTROL_PORT};
use crate::bus::{Bus, BusError};
use crate::console::{self, ConsoleConfig, ConsoleInput, EscapeDecoder};
use crate::cpu::pause::{PauseControl, PauseGate};
use crate::cpu::{CpuConfig, CpuError, Vcpu, VcpuContext, VcpuHandle};
use virtio::transport::mmio::MMIO_WINDOW_SIZE;

use crate::api::{ApiContext, ApiServer};
use crate::device_manager::{
    self, DeviceError, DiskSpec, MmioSlot, NetSpec, PciPlatform, PciSegment, VirtioTransport, VsockSpec,
};
use crate::event_loop::{EventHandler, EventLoop, Watch};
use crate::exit::{ExitSignal, VmExit};
use crate::interrupt::msi::GsiRouter;
use crate::interrupt::split::{IrqChip, UserIrqChip};
use crate::interrupt::{self, InterruptError};
use crate::memory::{self, MemoryError, MemoryLayout};
use crate::stats::{self, VcpuStats};

/// The most vCPUs rvmm creates: APIC IDs are 8 bits in the MP table and the
/// MADT's local APIC entries, and 255 is the broadcast ID (one spare, as QEMU keeps).
pub const MAX_VCPUS: u8 = 254;

/// Everything that describes one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Kernel image bytes.
    pub kernel: Vec<u8>,
    /// Where the kernel came from (for messages).
    pub kernel_name: PathBuf,
    /// Initrd bytes.
    pub initrd: Option<Vec<u8>>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Guest memory in bytes.
    pub memory_bytes: u64,
    /// Where COM1 goes.
    pub console: ConsoleConfig,
    /// Which boot entry to use.
    pub boot_protocol: BootProtocol,
    /// Path of the KVM device.
    pub kvm_path: PathBuf,
    /// Virtio block devices.
    pub disks: Vec<DiskSpec>,
    /// The transport of virtio devices that do not name one.
    pub transport: VirtioTransport,
    /// Print exit statistics to stderr when the VM ends.
    pub stats: bool,
    /// Virtio network devices.
    pub nets: Vec<NetSpec>,
    /// Add a virtio-rng device.
    pub rng: bool,
    /// Where the PIC, IOAPIC and PIT are emulated.
    pub irqchip: IrqChipMode,
    /// How the guest learns about virtio-mmio devices.
    pub mmio_discovery: MmioDiscovery,
    /// A virtio-balloon device (the value: VIRTIO_BALLOON_F_DEFLATE_ON_OOM).
    pub balloon: Option<bool>,
    /// Where the control socket listens.
    pub api_socket: Option<PathBuf>,
    /// A virtio-vsock device.
    pub vsock: Option<VsockSpec>,
    /// Boot this firmware from the reset vector instead of loading `kernel`.
    pub firmware: Option<FirmwareConfig>,
}

/// A firmware boot (`--firmware`): the image and where its debug log goes.
#[derive(Debug, Clone)]
pub struct FirmwareConfig {
    /// The checked image.
    pub image: FirmwareImage,
    /// Where bytes written to the debug console port 0x402 go.
    pub debugcon: DebugconTarget,
}

/// Where the firmware's debug console (port 0x402) goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DebugconTarget {
    /// Line by line into rvmm's log (info level, target `firmware`; `RVMM_LOG=info` shows it).
    #[default]
    Log,
    /// Raw into a file.
    File(PathBuf),
    /// Nowhere: the port reads as absent, so firmware does not log at all.
    None,
}

/// How virtio-mmio devices are announced to the guest. Linux accepts either;
/// announcing a device both ways would make it probe the window twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MmioDiscovery {
    /// `virtio_mmio.device=<size>@<base>:<irq>` on the kernel command line.
    #[default]
    Cmdline,
    /// `LNRO0005` devices in the ACPI DSDT.
    Acpi,
}

/// Where the interrupt controllers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IrqChipMode {
    /// All in KVM (KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2).
    #[default]
    Kernel,
    /// Local APICs in KVM; PIC, IOAPIC and PIT in rvmm (KVM_CAP_SPLIT_IRQCHIP).
    Split,
}

/// Errors while building a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open {path}: {source} (is KVM enabled, and may this user open it? try `ls -l {path}`)")]
    OpenKvm {
        /// The KVM device path.
        path: PathBuf,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// KVM lacks something rvmm needs.
    #[error("KVM lacks {0}, which rvmm needs")]
    MissingCapability(&'static str),
    /// A KVM system or VM ioctl failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Too few or too many vCPUs.
    #[error("{requested} vCPUs requested; rvmm supports 1 to {max} on this host")]
    VcpuCount {
        /// The request.
        requested: u64,
        /// The limit here.
        max: u64,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the guest.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// Interrupt controllers.
    #[error(transparent)]
    Interrupt(#[from] InterruptError),
    /// vCPU setup.
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// Device registration.
    #[error("device registration: {0}")]
    Bus(#[from] BusError),
    /// Creating or wiring a device.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The debug console file could not be created.
    #[error("cannot create debug console file {path}: {source}")]
    DebugconFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The console file could not be opened.
    #[error("cannot open console file {path}: {source}")]
    ConsoleFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A device's interrupt timer thread (RTC, COM1) could not be set up.
    #[error("{device} timer: {source}")]
    DeviceTimer {
        /// Which device.
        device: String,
        /// Why.
        source: std::io::Error,
    },
    /// Console set-up (raw mode, epoll, signals).
    #[error("console: {0}")]
    Console(std::io::Error),
}

impl VmError {
    /// Whether the error is the user's input (bad image, sizes, counts) rather than the host's.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, VmError::VcpuCount { .. } | VmError::ConsoleFile { .. } | VmError::DebugconFile { .. })
            || matches!(self, VmError::Boot(e) if e.is_bad_input())
            || matches!(
                self,
                VmError::Memory(MemoryError::SizeOutOfRange { .. } | MemoryError::SizeNotPageAligned { .. })
            )
            || matches!(
                self,
                VmError::Device(
                    DeviceError::Block(_)
                        | DeviceError::TooManyDevices { .. }
                        | DeviceError::Tap { .. }
                        | DeviceError::Vsock(_)
                )
            )
    }
}

/// Where typed console input goes (COM1 or a virtio-console).
pub type ConsoleSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Where a virtio device goes.
enum Placement {
    Pci(u32),
    Mmio(MmioSlot),
}

/// A built VM, ready to run.
pub struct Vm {
    vcpus: Vec<Vcpu>,
    /// The user-space PIT's timer thread (split irqchip); stopped when the VM is dropped.
    _pit_timer: Option<virtio::worker::Worker>,
    /// The timer threads of COM1's character timeout and the RTC's interrupts.
    _legacy_timers: [virtio::worker::Worker; 2],
    user_irqchip: Option<Arc<UserIrqChip>>,
    vcpu_stats: Vec<Arc<VcpuStats>>,
    buses: [Arc<Bus>; 2],
    print_stats: bool,
    exit: Arc<ExitSignal>,
    console_input: Option<ConsoleSink>,
    /// The virtio-console, when it shows the host terminal's size (updated on SIGWINCH).
    console_resize: Option<virtio::console::ConsoleInput>,
    balloon: Option<virtio::balloon::BalloonControl>,
    api_socket: Option<PathBuf>,
    boot_info: BootInfo,
    /// The firmware image's read-only slot, if any (must live as long as the VM).
    _rom: Option<GuestMemoryMmap>,
    // The VM fd must outlive the vCPUs and the irq lines that refer to it.
    vm: Arc<VmFd>,
    memory: GuestMemoryMmap,
    /// The vCPUs' shared pause gate (the control socket's `pause`/`resume`).
    pause_gate: Arc<PauseGate>,
}

/// Signal number that ended the VM, set by the signal handler (0 = none).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Set by SIGUSR1: print the statistics now.
static STATS_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Set by SIGWINCH: the host terminal's size changed.
static RESIZE_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The exit eventfd for the signal handler to write to (-1 = none).
static EXIT_EVENT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn handle_stop_signal(num: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    match num {
        libc::SIGUSR1 => STATS_REQUESTED.store(true, Ordering::SeqCst),
        libc::SIGWINCH => RESIZE_REQUESTED.store(true, Ordering::SeqCst),
        _ => STOP_SIGNAL.store(num, Ordering::SeqCst),
    }
    let fd = EXIT_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` outlives the call and the fd is
        // the VM's exit eventfd, which lives until the process exits.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

impl Vm {
    /// Builds the VM described by `config`.
    pub fn new(config: VmConfig) -> Result<Vm, VmError> {
        let open_err = |source| VmError::OpenKvm { path: config.kvm_path.clone(), source };
        let kvm_path = std::ffi::CString::new(config.kvm_path.as_os_str().as_encoded_bytes())
            .map_err(|_| open_err(kvm_ioctls::Error::new(libc::EINVAL)))?;
        let kvm = Kvm::new_with_path(kvm_path).map_err(open_err)?;
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCapability(name));
            }
        }
        let max = (kvm.get_max_vcpus() as u64).min(u64::from(MAX_VCPUS));
        if config.cpus == 0 || u64::from(config.cpus) > max {
            return Err(VmError::VcpuCount { requested: u64::from(config.cpus), max });
        }
        let layout = match &config.firmware {
            Some(_) => MemoryLayout::for_firmware(config.memory_bytes)?,
            None => MemoryLayout::new(config.memory_bytes)?,
        };
        let vm = Arc::new(kvm.create_vm().map_err(|source| VmError::Kvm { what: "KVM_CREATE_VM", source })?);
        let memory = layout.allocate()?;
        memory::register_slots(&vm, &memory)?;
        let rom = match &config.firmware {
            Some(fw) => {
                if !kvm.check_extension(Cap::ReadonlyMem) {
                    return Err(VmError::MissingCapability("KVM_CAP_READONLY_MEM"));
                }
                let slot = u32::try_from(layout.regions().len()).unwrap_or(u32::MAX);
                let rom = memory::map_read_only(&vm, slot, fw.image.base(), fw.image.bytes())?;
                boot::firmware::copy_low_alias(&memory, &fw.image)?;
                log::info!("firmware {} at {:#x}", fw.image.path().display(), fw.image.base());
                Some(rom)
            }
            None => None,
        };
        // One routing table serves the IOAPIC pins (split mode) and every MSI-X vector.
        let max_gsi = u32::try_from(kvm.check_extension_int(Cap::IrqRouting)).unwrap_or(0);
        let (irqchip, router) = match config.irqchip {
            IrqChipMode::Kernel => {
                interrupt::create_in_kernel_irqchip(&vm)?;
                let router = Arc::new(GsiRouter::new(vm.clone(), max_gsi));
                router.install_default().map_err(DeviceError::Msi)?;
                (IrqChip::Kernel(vm.clone()), router)
            }
            IrqChipMode::Split => {
                if !kvm.check_extension(Cap::SplitIrqchip) {
                    return Err(VmError::MissingCapability("KVM_CAP_SPLIT_IRQCHIP"));
                }
                interrupt::create_split_irqchip(&vm)?;
                let router = Arc::new(GsiRouter::new_split(vm.clone(), max_gsi));
                let chip = UserIrqChip::new(vm.clone(), router.clone());
                (IrqChip::Split(chip), router)
            }
        };

        // Virtio devices first: opening their backends can fail on user input, and
        // the kernel command line must announce the MMIO ones.
        let mut virtio_devices: Vec<(Box<dyn virtio::device::VirtioDevice>, Option<VirtioTransport>)> = Vec::new();
        for (device, spec) in device_manager::create_block_devices(&config.disks)?.into_iter().zip(&config.disks) {
            virtio_devices.push((device, spec.transport));
        }
        for spec in &config.nets {
            virtio_devices.push((device_manager::create_net_device(spec)?, spec.transport));
        }
        if config.rng {
            virtio_devices.push((Box::new(virtio::rng::Rng::new()), None));
        }
        if let Some(v) = &config.vsock {
            virtio_devices
                .push((Box::new(virtio::vsock::Vsock::new(v.cid, &v.uds).map_err(DeviceError::Vsock)?), v.transport));
        }
        let mut virtio_console_input = None;
        let mut console_resize = None;
        if config.console == ConsoleConfig::Virtio {
            // On a host terminal the guest gets its size (VIRTIO_CONSOLE_F_SIZE), kept
            // up to date on SIGWINCH; on a file or a pipe, no size.
            let size = console::host_terminal_size();
            let (console, input) = virtio::console::Console::with_size(Some(Box::new(std::io::stdout())), size);
            virtio_devices.push((Box::new(console), None));
            if size.is_some() {
                console_resize = Some(input.clone());
            }
            virtio_console_input = Some(input);
        }
        let mut balloon = None;
        if let Some(deflate_on_oom) = config.balloon {
            let (device, control) = virtio::balloon::Balloon::new(deflate_on_oom);
            virtio_devices.push((Box::new(device), None));
            balloon = Some(control);
        }
        let mut placements = Vec::with_capacity(virtio_devices.len());
        let mut mmio_count = 0;
        let mut cmdline = config.cmdline;
        let mut acpi_mmio_devices = Vec::new();
        // Firmware leaves no kernel command line to announce devices on: only ACPI remains.
        let mmio_discovery = if config.firmware.is_some() { MmioDiscovery::Acpi } else { config.mmio_discovery };
        for (index, (_, transport)) in virtio_devices.iter().enumerate() {
            let gsi = device_manager::device_gsi(index)?;
            match transport.unwrap_or(config.transport) {
                VirtioTransport::Pci => placements.push(Placement::Pci(gsi)),
                VirtioTransport::Mmio => {
                    let base = device_manager::VIRTIO_MMIO_BASE + mmio_count * MMIO_WINDOW_SIZE;
                    let slot = MmioSlot { base, gsi };
                    mmio_count += 1;
                    match mmio_discovery {
                        MmioDiscovery::Cmdline => {
                            if !cmdline.is_empty() {
                                cmdline.push(' ');
                            }
                            cmdline.push_str(&slot.cmdline_param());
                        }
                        MmioDiscovery::Acpi => acpi_mmio_devices.push(MmioDeviceDescription {
                            base: slot.base,
                            size: MMIO_WINDOW_SIZE,
                            gsi: slot.gsi,
                        }),
                    }
                    placements.push(Placement::Mmio(slot));
                }
            }
        }
        let exit = Arc::new(ExitSignal::new().map_err(VmError::Console)?);
        let pio_bus = Arc::new(Bus::new("pio"));
        let mmio_bus = Arc::new(Bus::new("mmio"));
        let firmware_cpus = config.firmware.as_ref().map(|_| config.cpus);
        let (serial_input, legacy_timers) =
            add_legacy_devices(&irqchip, &pio_bus, &exit, &config.console, &layout, firmware_cpus)?;
        let console_input: Option<ConsoleSink> = match (serial_input, virtio_console_input) {
            (Some(serial), _) => Some(Arc::new(move |bytes: &[u8]| serial.queue_input(bytes))),
            (None, Some(input)) => Some(Arc::new(move |bytes: &[u8]| input.queue_input(bytes))),
            (None, None) => None,
        };
        let pit_timer = match irqchip.user() {
            Some(chip) => {
                interrupt::register_user_irqchip(chip, &pio_bus, &mmio_bus)?;
                Some(interrupt::split::start_pit(&irqchip, &pio_bus)?)
            }
            None => None,
        };
        // The PCI host bridge is always there, with or without devices behind it.
        let platform = match config.firmware {
            Some(_) => PciPlatform::Firmware,
            None => PciPlatform::Direct,
        };
        let mut pci = PciSegment::new(&vm, &pio_bus, &mmio_bus, router, platform, guest_event_sink(&exit))?;
        // Disks come first in `virtio_devices`: their places make the firmware's boot order.
        let mut boot_paths = Vec::new();
        for (index, ((device, _), placement)) in virtio_devices.into_iter().zip(placements).enumerate() {
            match placement {
                Placement::Mmio(slot) => {
                    device_manager::add_virtio_mmio(&vm, &irqchip, &mmio_bus, &memory, device, slot)?;
                    if index < config.disks.len() {
                        boot_paths.push(boot::firmware::virtio_blk_mmio_boot_path(slot.base));
                    }
                }
                Placement::Pci(gsi) => {
                    let bdf = pci.add_virtio(&irqchip, &memory, device, gsi)?;
                    log::info!("virtio-pci device at {bdf}, INTx on GSI {gsi}");
                    if index < config.disks.len() {
                        boot_paths.push(boot::firmware::virtio_blk_pci_boot_path(bdf.device()));
                    }
                }
            }
        }

        // The firmware tables describe the devices just placed.
        let boot_info = match &config.firmware {
            Some(fw) => {
                let tables = boot::build_acpi(config.cpus, Some(&pci.description()), &acpi_mmio_devices)?;
                let acpi = devices::fw_cfg::FirmwareAcpi::from_blob(&tables.bytes, boot::ACPI_ADDR)
                    .map_err(|e| boot::BootError::Firmware(FirmwareError::FwCfg(e)))?;
                let machine = FirmwareMachine { layout: &layout, cpus: config.cpus, acpi, boot_paths };
                let fw_cfg = boot::firmware::build_fw_cfg(&memory, machine).map_err(boot::BootError::Firmware)?;
                pio_bus.insert(
                    Arc::new(Mutex::new(fw_cfg)),
                    u64::from(devices::fw_cfg::FW_CFG_IO_BASE),
                    devices::fw_cfg::FW_CFG_IO_SIZE,
                    "fw_cfg",
                )?;
                add_debugcon(&pio_bus, &fw.debugcon)?;
                BootInfo {
                    entry: EntryPoint::ResetVector,
                    protocol: BootProtocol::Firmware,
                    kernel_range: (fw.image.base(), boot::firmware::FIRMWARE_END),
                    initrd: None,
                    rsdp_addr: 0,
                }
            }
            None => {
                let boot_config = BootConfig {
                    kernel: config.kernel,
                    kernel_name: config.kernel_name,
                    initrd: config.initrd,
                    cmdline,
                    protocol: config.boot_protocol,
                    num_cpus: config.cpus,
                    pci: Some(pci.description()),
                    acpi_mmio_devices,
                };
                boot::load(&memory, &layout, &boot_config)?
            }
        };
        log::info!("boot: {:?}, entry {:?}", boot_info.protocol, boot_info.entry);

        let supported_cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| VmError::Kvm { what: "KVM_GET_SUPPORTED_CPUID", source })?;
        let msr_list =
            kvm.get_msr_index_list().map_err(|source| VmError::Kvm { what: "KVM_GET_MSR_INDEX_LIST", source })?;
        let cpu_config =
            CpuConfig { supported_cpuid: &supported_cpuid, msr_index_list: msr_list.as_slice(), num_cpus: config.cpus };
        let context = VcpuContext {
            pio_bus: pio_bus.clone(),
            mmio_bus: mmio_bus.clone(),
            memory: memory.clone(),
            exit: exit.clone(),
            user_irqchip: irqchip.user().cloned(),
            pause: Arc::new(PauseGate::default()),
        };
        let vcpus = (0..config.cpus)
            .map(|id| Vcpu::new(&vm, id, &cpu_config, boot_info.entry, context.clone()))
            .collect::<Result<Vec<_>, _>>()?;

        let vcpu_stats = vcpus.iter().map(Vcpu::stats).collect();
        Ok(Vm {
            vcpus,
            _pit_timer: pit_timer,
            _legacy_timers: legacy_timers,
            user_irqchip: irqchip.user().cloned(),
            vcpu_stats,
            buses: [pio_bus, mmio_bus],
            print_stats: config.stats,
            exit,
            console_input,
            console_resize,
            balloon,
            api_socket: config.api_socket,
            boot_info,
            _rom: rom,
            pause_gate: context.pause.clone(),
            vm,
            memory,
        })
    }

    /// What the boot loader did.
    pub fn boot_info(&self) -> &BootInfo {
        &self.boot_info
    }

    /// Runs the VM until the guest, the console user, a signal or an error ends it.
    pub fn run(self) -> Result<VmExit, VmError> {
        EXIT_EVENT_FD.store(self.exit.event().as_raw_fd(), Ordering::SeqCst);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            register_signal_handler(sig, handle_stop_signal)
                .map_err(|e| VmError::Console(std::io::Error::from_raw_os_error(e.errno())))?;
        }
        if let Some(resize) = &self.console_resize {
            register_signal_handler(libc::SIGWINCH, handle_stop_signal)
                .map_err(|e| VmError::Console(std::io::Error::from_raw_os_error(e.errno())))?;
            // The size may have changed since the device was created, before the handler was there.
            if let Some(size) = console::host_terminal_size() {
                resize.set_size(size);
            }
        }
        if self.console_input.is_some() {
            console::enter_raw_mode().map_err(VmError::Console)?;
        }
        let mut handles: Vec<VcpuHandle> = Vec::with_capacity(self.vcpus.len());
        let mut start_error = None;
        for vcpu in self.vcpus {
            match vcpu.start() {
                Ok(h) => handles.push(h),
                Err(e) => {
                    start_error = Some(e);
                    break;
                }
            }
        }
        // A PIC interrupt raised by a device thread must wake vCPU 0 to be injected.
        if let (Some(chip), Some(vcpu0)) = (&self.user_irqchip, handles.first()) {
            if let Some(kick) = vcpu0.kicker() {
                chip.set_vcpu0_kick(kick);
            }
        }
        let result = match start_error {
            Some(e) => Err(VmError::Cpu(e)),
            None => {
                let report = || stats::report(&self.vcpu_stats, &bus_counters(&self.buses));
                let api = match &self.api_socket {
                    Some(path) => match bind_api_socket(path) {
                        Ok(listener) => {
                            let (stats, buses) = (self.vcpu_stats.clone(), self.buses.clone());
                            let vcpus =
                                handles.iter().filter_map(|h| Some((h.id(), h.state_cell(), h.kicker()?))).collect();
                            let context = ApiContext {
                                balloon: self.balloon.clone(),
                                stats: Box::new(move || stats::report(&stats, &bus_counters(&buses))),
                                exit: self.exit.clone(),
                                pause: PauseControl::new(self.pause_gate.clone(), vcpus).with_clock(self.vm.clone()),
                            };
                            Some(ApiServer::new(listener, context))
                        }
                        Err(e) => {
                            log::error!("cannot open the api socket: {e}; the VM runs without it");
                            None
                        }
                    },
                    None => None,
                };
                event_loop(&self.exit, self.console_input.as_ref(), self.console_resize.as_ref(), api, &report)
            }
        };
        for h in &handles {
            h.request_stop();
        }
        for h in handles {
            h.stop_and_join();
        }
        console::restore_terminal();
        EXIT_EVENT_FD.store(-1, Ordering::SeqCst);
        if self.print_stats {
            eprint!("{}", stats::report(&self.vcpu_stats, &bus_counters(&self.buses)));
        }
        log::info!("guest memory resident at exit: {} KiB", memory::resident_bytes(&self.memory) / 1024);
        result
    }
}

/// The access counters of every device on the buses that saw any access.
fn bus_counters(buses: &[Arc<Bus>; 2]) -> Vec<(String, u64, u64)> {
    buses.iter().flat_map(|b| b.counters()).filter(|(_, r, w)| r + w > 0).collect()
}

/// Where devices report that the guest asked to reset, power off or exit.
fn guest_event_sink(exit: &Arc<ExitSignal>) -> GuestEventSink {
    let sink_exit = exit.clone();
    Arc::new(move |event| {
        sink_exit.request(match event {
            GuestEvent::Reset => VmExit::Reset,
            GuestEvent::PowerOff => VmExit::PowerOff,
            GuestEvent::DebugExit(status) => VmExit::DebugExit(status),
        })
    })
}

/// The firmware's debug console at port 0x402.
fn add_debugcon(pio: &Bus, target: &DebugconTarget) -> Result<(), VmError> {
    let output = match target {
        DebugconTarget::Log => DebugconOutput::Log,
        DebugconTarget::None => DebugconOutput::Discard,
        DebugconTarget::File(path) => DebugconOutput::Writer(Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|source| VmError::DebugconFile { path: path.clone(), source })?,
        ))),
    };
    pio.insert(Arc::new(Mutex::new(DebugCon::new(output))), u64::from(DEBUGCON_PORT), 1, "debugcon")?;
    Ok(())
}

/// COM1 as the host console feeds it.
struct SerialInput {
    serial: Arc<Mutex<Serial>>,
    /// COM1's timer thread, woken when input arms the character timeout.
    kick: Arc<EventFd>,
}

impl SerialInput {
    fn queue_input(&self, bytes: &[u8]) {
        let rescheduled = {
            let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
            serial.queue_input(bytes);
            serial.take_rescheduled()
        };
        if rescheduled {
            let _ = self.kick.write(1);
        }
    }
}

/// Registers COM1-COM4, the i8042, the RTC, the ACPI sleep register and the debug exit port.
/// With `firmware_cpus`, the CMOS also gets the bytes PC firmware reads.
/// Returns COM1 when its input comes from stdin, and the timer threads of COM1 and the RTC.
fn add_legacy_devices(
    irqchip: &IrqChip,
    pio: &Bus,
    exit: &Arc<ExitSignal>,
    console_config: &ConsoleConfig,
    layout: &MemoryLayout,
    firmware_cpus: Option<u8>,
) -> Result<(Option<SerialInput>, [virtio::worker::Worker; 2]), VmError> {
    let sink = guest_event_sink(exit);
    let output = console::open_output(console_config).map_err(|source| match console_config {
        ConsoleConfig::File(path) => VmError::ConsoleFile { path: path.clone(), source },
        _ => VmError::Console(source),
    })?;
    let com1 = Arc::new(Mutex::new(Serial::new(irqchip.line(u32::from(COM1.1)), output)));
    // COM1's character timeout raises its IRQ from a timer thread. The other
    // ports have no input but loopback, and a guest polling them sees the
    // timeout at its next register read.
    let com1_ports =
        crate::timer::add_timed_device(pio, com1.clone(), u64::from(COM1.0), u64::from(SERIAL_PORT_COUNT), "COM1")?;
    // COM2 has IRQ 3 to itself; COM3 and COM4 share IRQ 4 and 3 with COM1 and COM2
    // on a PC, so they stay unwired rather than fight over the line's level.
    let com2_irq: Arc<dyn IrqLine> = irqchip.line(u32::from(COM2.1));
    for (port, irq, name) in [
        (COM2.0, com2_irq, "COM2"),
        (COM3.0, Arc::new(RecordingIrqLine::default()) as Arc<dyn IrqLine>, "COM3"),
        (COM4.0, Arc::new(RecordingIrqLine::default()), "COM4"),
    ] {
        pio.insert(Arc::new(Mutex::new(Serial::new(irq, None))), u64::from(port), u64::from(SERIAL_PORT_COUNT), name)?;
    }

    // Both lines wired: Linux's i8042 driver checks that the AUX port's IRQ 12 arrives.
    let kbd_irq: Arc<dyn IrqLine> = irqchip.line(u32::from(I8042_KBD_IRQ));
    let aux_irq: Arc<dyn IrqLine> = irqchip.line(u32::from(I8042_AUX_IRQ));
    let i8042: Arc<Mutex<dyn BusDevice>> =
        Arc::new(Mutex::new(I8042::new(sink.clone(), Some(kbd_irq)).with_aux_irq(aux_irq)));
    let base = u64::from(I8042_DATA_PORT);
    pio.insert_named(i8042.clone(), base, 1, base, "i8042")?;
    pio.insert_named(i8042, u64::from(I8042_COMMAND_PORT), 1, base, "i8042")?;

    let mut rtc = Rtc::new().with_irq(irqchip.line(u32::from(RTC_IRQ)));
    store_cmos_memory_size(&mut rtc, layout);
    if let Some(cpus) = firmware_cpus {
        boot::firmware::set_firmware_cmos(&mut rtc, cpus);
    }
    let rtc_timer = crate::rtc::add_rtc(pio, rtc)?;
    pio.insert(
        Arc::new(Mutex::new(AcpiSleepControl::new(sink.clone()))),
        u64::from(ACPI_SLEEP_CONTROL_PORT),
        2,
        "ACPI sleep",
    )?;
    pio.insert(
        Arc::new(Mutex::new(DebugExit::new(sink))),
        u64::from(DEBUG_EXIT_PORT),
        devices::debug_exit::DEBUG_EXIT_PORT_COUNT,
        "debug exit",
    )?;

    let input = SerialInput { serial: com1, kick: com1_ports.kick };
    Ok((matches!(console_config, ConsoleConfig::Stdio).then_some(input), [com1_ports.timer, rtc_timer]))
}

/// The CMOS memory-size bytes PC firmware keeps (read by BIOSes and old loaders).
fn store_cmos_memory_size(rtc: &mut Rtc, layout: &MemoryLayout) {
    let low = layout.low_ram_end();
    let ext_kb = ((low - memory::HIGH_RAM_START) / 1024).min(0xffff) as u16;
    let above_16m = (low.saturating_sub(16 * memory::MIB) / (64 * 1024)).min(0xffff) as u16;
    let above_4g = (layout.ram_bytes().saturating_sub(memory::MMIO32_HOLE_START) / (64 * 1024)) as u32;
    for (index, value) in [
        (0x17, ext_kb as u8),
        (0x18, (ext_kb >> 8) as u8),
        (0x30, ext_kb as u8),
        (0x31, (ext_kb >> 8) as u8),
        (0x34, above_16m as u8),
        (0x35, (above_16m >> 8) as u8),
        (0x5b, above_4g as u8),
        (0x5c, (above_4g >> 8) as u8),
        (0x5d, (above_4g >> 16) as u8),
    ] {
        rtc.set_cmos_byte(index, value);
    }
}

/// Binds the control socket, replacing a stale socket file left by an earlier run.
fn bind_api_socket(path: &std::path::Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())) {
        let _ = std::fs::remove_file(path);
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Console input: stdin through the escape decoder into the console device.
struct ConsoleInputHandler {
    sink: ConsoleSink,
    decoder: EscapeDecoder,
    exit: Arc<ExitSignal>,
}

impl EventHandler for ConsoleInputHandler {
    fn handle(&mut self, _: vmm_sys_util::epoll::EventSet) -> Watch {
        let mut buf = [0u8; 256];
        // SAFETY: reading into a stack buffer of the given length.
        let got = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let err = std::io::Error::last_os_error();
            return match err.kind() {
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock => Watch::Keep,
                _ => Watch::Remove,
            };
        }
        if got == 0 {
            // End of input: the guest keeps running without it.
            return Watch::Remove;
        }
        let mut bytes = Vec::with_capacity(got as usize);
        for &b in &buf[..got as usize] {
            match self.decoder.feed(b) {
                ConsoleInput::Byte(b) => bytes.push(b),
                ConsoleInput::Quit => self.exit.request(VmExit::UserQuit),
                ConsoleInput::Help => eprint!("{}", console::ESCAPE_HELP),
                ConsoleInput::Nothing => {}
            }
        }
        (self.sink)(&bytes);
        Watch::Keep
    }
}

/// The main thread's loop: console input and device events until the VM ends.
fn event_loop(
    exit: &Arc<ExitSignal>,
    console_input: Option<&ConsoleSink>,
    console_resize: Option<&virtio::console::ConsoleInput>,
    api: Option<ApiServer>,
    stats_report: &dyn Fn() -> String,
) -> Result<VmExit, VmError> {
    let mut event_loop = EventLoop::new().map_err(|e| VmError::Console(std::io::Error::other(e)))?;
    if let Some(api) = api {
        let fd = api.raw_fd();
        event_loop.add(fd, Box::new(api)).map_err(|e| VmError::Console(std::io::Error::other(e)))?;
    }
    if let Some(sink) = console_input {
        let handler = ConsoleInputHandler { sink: sink.clone(), decoder: EscapeDecoder::default(), exit: exit.clone() };
        // stdin may be /dev/null or a regular file, which epoll refuses: then there is no input.
        if event_loop.add(libc::STDIN_FILENO, Box::new(handler)).is_err() {
            log::info!("console input is not pollable; the guest gets no input");
        }
    }
    event_loop
        .run(exit, || {
            if STATS_REQUESTED.swap(false, Ordering::SeqCst) {
                eprint!("{}", stats_report());
            }
            if RESIZE_REQUESTED.swap(false, Ordering::SeqCst) {
                if let (Some(console), Some(size)) = (console_resize, console::host_terminal_size()) {
                    console.set_size(size);
                }
            }
            match STOP_SIGNAL.load(Ordering::SeqCst) {
                0 => None,
                signal => Some(VmExit::Signal(signal)),
            }
        })
        .map_err(|e| VmError::Console(std::io::Error::other(e)))
}
