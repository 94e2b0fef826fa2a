//! Loading a guest and preparing what it reads at its first instruction
//! (book chapters 1.5 "a simple KVM user-space example" and 2.2 "the VMM
//! prepares guest memory").
//!
//! Supported images and entries:
//!
//! | image                          | entry                                   | module      |
//! |--------------------------------|-----------------------------------------|-------------|
//! | ELF vmlinux                    | Linux 64-bit boot protocol (RSI = boot_params) | [`linux`] |
//! | ELF with a Xen PVH note        | PVH: 32-bit, EBX = hvm_start_info       | [`pvh`]     |
//! | 32-bit i386 ELF with that note | PVH                                     | [`linux`], [`pvh`] |
//! | bzImage                        | 64-bit entry at load address + 0x200    | [`linux`]   |
//! | bzImage without XLF_KERNEL_64  | 32-bit protected-mode entry             | [`linux`]   |
//! | bzImage, `--boot legacy`       | real-mode setup code under rvmm's BIOS  | [`realmode`], [`bios`] |
//!
//! Every path writes the same firmware tables (ACPI, MP table) and derives the
//! memory map from the one [`MemoryLayout`](crate::memory::MemoryLayout).

pub mod acpi;
pub mod aml;
pub mod bios;
pub mod firmware;
pub mod linux;
pub mod mptable;
pub mod pci_acpi;
pub mod pvh;
pub mod realmode;

use std::path::PathBuf;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::memory::{MemoryLayout, BIOS_AREA_START, HIGH_RAM_START, IOAPIC_ADDR, LAPIC_ADDR};

/// Guest physical address of the Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Guest physical address of the PVH `hvm_start_info` and the tables after it.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// Guest physical address of the kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line rvmm places (Linux's x86 COMMAND_LINE_SIZE is 2048; newer kernels 4096).
pub const CMDLINE_MAX: usize = 4096;
/// Where the ACPI tables start (RSDP first); the MP table follows at [`MPTABLE_ADDR`].
pub const ACPI_ADDR: u64 = BIOS_AREA_START;
/// Where the MP floating pointer and configuration table go.
pub const MPTABLE_ADDR: u64 = 0xf_0000;
/// The I/O port a guest writes SLP_TYP/SLP_EN to for an ACPI power-off (FADT sleep control register).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x3c0;

/// Which entry protocol to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootProtocol {
    /// Pick from the image: PVH if the ELF has the note, else the 64-bit entry; bzImage 64-bit entry if it has one.
    #[default]
    Auto,
    /// The Linux 64-bit boot protocol (ELF or bzImage).
    Linux64,
    /// The Linux 32-bit boot protocol (bzImage).
    Linux32,
    /// The Xen PVH entry (ELF with a PVH note).
    Pvh,
    /// The 16-bit real-mode setup code of a bzImage, run under rvmm's minimal BIOS.
    Legacy,
    /// No kernel: a firmware image runs from the reset vector (`--firmware`).
    Firmware,
}

/// The state the boot vCPU starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// 64-bit long mode with the VMM's identity-mapped page tables; RSI = `boot_params`.
    Long64 {
        /// Entry address.
        rip: u64,
        /// Value for RSI.
        rsi: u64,
    },
    /// 32-bit flat protected mode, paging off.
    Protected32 {
        /// Entry address.
        eip: u32,
        /// Value for ESI (Linux 32-bit protocol: boot_params).
        esi: u32,
        /// Value for EBX (PVH: hvm_start_info).
        ebx: u32,
    },
    /// The architectural reset state KVM gives a new vCPU: real mode at
    /// F000:FFF0 with CS base 0xFFFF0000, i.e. the firmware's reset vector at
    /// 0xFFFFFFF0. The VMM sets no registers.
    ResetVector,
    /// Real mode: CS:IP with DS = ES = SS = `data_segment` and SP = `sp`.
    Real {
        /// Code segment.
        cs: u16,
        /// Instruction pointer.
        ip: u16,
        /// Data and stack segment.
        data_segment: u16,
        /// Stack pointer.
        sp: u16,
    },
}

/// What [`load`] made of the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    /// How the boot vCPU starts.
    pub entry: EntryPoint,
    /// The protocol that was chosen.
    pub protocol: BootProtocol,
    /// `[start, end)` of the loaded kernel.
    pub kernel_range: (u64, u64),
    /// `(address, size)` of the initrd, if any.
    pub initrd: Option<(u64, u64)>,
    /// Guest physical address of the ACPI RSDP.
    pub rsdp_addr: u64,
}

/// Everything needed to load a guest.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// The kernel image bytes.
    pub kernel: Vec<u8>,
    /// Where the kernel came from, for error messages.
    pub kernel_name: PathBuf,
    /// The initrd bytes, if any.
    pub initrd: Option<Vec<u8>>,
    /// The kernel command line.
    pub cmdline: String,
    /// Which entry to use.
    pub protocol: BootProtocol,
    /// Number of vCPUs, for the MP table and ACPI.
    pub num_cpus: u8,
    /// The PCI segment to describe in ACPI, if the VM has one.
    pub pci: Option<pci_acpi::PciDescription>,
    /// virtio-mmio devices to describe in ACPI (empty when they are on the command line).
    pub acpi_mmio_devices: Vec<pci_acpi::MmioDeviceDescription>,
}

/// Errors while loading a guest. Each names the file or the limit involved.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The file is neither an ELF nor a bzImage.
    #[error("{0}: not a kernel image (neither an ELF file nor a bzImage with a 'HdrS' setup header)")]
    UnknownFormat(PathBuf),
    /// An ELF for something other than x86-64 (or i386 with a PVH note).
    #[error(
        "{path}: ELF file is {what}; rvmm boots little-endian x86-64 (EM_X86_64) ELF kernels, \
         and i386 (EM_386) ones that have a Xen PVH note"
    )]
    WrongElf {
        /// The kernel file.
        path: PathBuf,
        /// What was found instead.
        what: String,
    },
    /// The ELF is truncated or inconsistent.
    #[error("{path}: cannot load ELF kernel: {source}")]
    Elf {
        /// The kernel file.
        path: PathBuf,
        /// linux-loader's error.
        source: linux_loader::loader::Error,
    },
    /// The bzImage is truncated or inconsistent.
    #[error("{path}: cannot load bzImage: {reason}")]
    BzImage {
        /// The kernel file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The requested protocol does not fit the image.
    #[error("{path}: cannot boot this image with {protocol:?}: {reason}")]
    ProtocolMismatch {
        /// The kernel file.
        path: PathBuf,
        /// The protocol asked for.
        protocol: BootProtocol,
        /// Why not.
        reason: &'static str,
    },
    /// The kernel does not fit in guest RAM where it must be loaded.
    #[error("kernel [{start:#x}, {end:#x}) does not fit in guest RAM (RAM at 1 MiB ends at {ram_end:#x}); give the VM more memory")]
    KernelDoesNotFit {
        /// Load start.
        start: u64,
        /// Load end.
        end: u64,
        /// End of usable RAM.
        ram_end: u64,
    },
    /// The initrd does not fit between the kernel and the highest address the kernel accepts.
    #[error("initrd of {size} bytes does not fit between the kernel's end {kernel_end:#x} and {limit:#x}; give the VM more memory")]
    InitrdDoesNotFit {
        /// Its size.
        size: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// Highest address usable for it.
        limit: u64,
    },
    /// The command line is longer than the kernel accepts.
    #[error("command line of {len} bytes is longer than the kernel's limit of {max} bytes")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("command line contains a NUL byte")]
    CmdlineNul,
    /// Writing to guest memory failed (an address outside RAM).
    #[error("cannot write {what} to guest memory at {addr:#x}")]
    GuestWrite {
        /// What was being written.
        what: &'static str,
        /// Where.
        addr: u64,
    },
    /// Building the MP table failed.
    #[error("MP table: {0}")]
    MpTable(#[from] mptable::MpTableError),
    /// Building the ACPI tables failed.
    #[error("ACPI tables: {0}")]
    Acpi(#[from] acpi::AcpiError),
    /// The firmware image or its configuration.
    #[error(transparent)]
    Firmware(#[from] firmware::FirmwareError),
}

impl BootError {
    /// Whether the user's input caused it (an image or size that cannot boot),
    /// rather than rvmm failing to build its own tables.
    pub fn is_bad_input(&self) -> bool {
        match self {
            BootError::GuestWrite { .. } | BootError::MpTable(_) | BootError::Acpi(_) => false,
            BootError::Firmware(e) => !matches!(e, firmware::FirmwareError::FwCfg(_)),
            _ => true,
        }
    }
}

/// Writes `bytes` at `addr`, naming `what` on failure.
pub(crate) fn write_guest(
    memory: &GuestMemoryMmap,
    addr: u64,
    bytes: &[u8],
    what: &'static str,
) -> Result<(), BootError> {
    memory.write_slice(bytes, GuestAddress(addr)).map_err(|_| BootError::GuestWrite { what, addr })
}

/// Loads the kernel, initrd and command line, writes the boot structures and
/// firmware tables, and says where the boot vCPU starts.
pub fn load(memory: &GuestMemoryMmap, layout: &MemoryLayout, config: &BootConfig) -> Result<BootInfo, BootError> {
    if config.cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    let rsdp_addr = write_firmware_tables(memory, config.num_cpus, config.pci.as_ref(), &config.acpi_mmio_devices)?;
    // Every kernel path has the low RAM slot and the EBDA the e820 map reserves:
    // the BIOS data area says where it is, as after a BIOS boot.
    bios::write_bda_memory(memory)?;
    let mut info = match detect_format(config)? {
        ImageFormat::Elf => linux::load_elf(memory, layout, config, rsdp_addr)?,
        ImageFormat::BzImage => linux::load_bzimage(memory, layout, config, rsdp_addr)?,
    };
    info.rsdp_addr = rsdp_addr;
    Ok(info)
}

enum ImageFormat {
    Elf,
    BzImage,
}

fn detect_format(config: &BootConfig) -> Result<ImageFormat, BootError> {
    let k = &config.kernel;
    if k.starts_with(b"\x7fELF") {
        linux::check_elf_header(k, &config.kernel_name)?;
        return Ok(ImageFormat::Elf);
    }
    if k.get(0x202..0x206) == Some(b"HdrS") {
        return Ok(ImageFormat::BzImage);
    }
    Err(BootError::UnknownFormat(config.kernel_name.clone()))
}

/// Writes the ACPI tables and the MP table; returns the RSDP's address.
fn write_firmware_tables(
    memory: &GuestMemoryMmap,
    num_cpus: u8,
    pci: Option<&pci_acpi::PciDescription>,
    mmio_devices: &[pci_acpi::MmioDeviceDescription],
) -> Result<u64, BootError> {
    let pci_intx = pci.map(|p| p.intx_routes.as_slice());
    let mp = mptable::build_mptable(MPTABLE_ADDR, num_cpus, pci_intx)?;
    write_guest(memory, MPTABLE_ADDR, &mp, "MP table")?;
    let tables = build_acpi(num_cpus, pci, mmio_devices)?;
    write_guest(memory, ACPI_ADDR, &tables.bytes, "ACPI tables")?;
    Ok(tables.rsdp_addr)
}

/// rvmm's ACPI tables for this machine, laid out for guest address [`ACPI_ADDR`]
/// (RSDP first). Direct boots copy them there; firmware boots hand them over
/// through fw_cfg's table loader, which relocates them.
pub fn build_acpi(
    num_cpus: u8,
    pci: Option<&pci_acpi::PciDescription>,
    mmio_devices: &[pci_acpi::MmioDeviceDescription],
) -> Result<acpi::AcpiTables, BootError> {
    let mut acpi_config = acpi::AcpiConfig::new(num_cpus, ACPI_SLEEP_CONTROL_PORT);
    acpi_config.ioapic_addr = IOAPIC_ADDR as u32;
    acpi_config.lapic_addr = LAPIC_ADDR as u32;
    let mmio = pci_acpi::build_virtio_mmio_aml(mmio_devices)?;
    if let Some(pci) = pci {
        acpi_config.extra_tables.push(pci_acpi::build_mcfg(pci));
        acpi_config.extra_dsdt_aml = pci_acpi::build_pci_host_bridge_aml(pci, mmio)?;
    } else if !mmio.is_empty() {
        use aml::Aml;
        acpi_config.extra_dsdt_aml =
            aml::Scope::new("\\_SB", mmio).and_then(|s| s.to_aml_vec()).map_err(acpi::AcpiError::from)?;
    }
    Ok(acpi::build_acpi_tables(ACPI_ADDR, &acpi_config)?)
}

/// Places the initrd as high as allowed: page-aligned, below `limit` (exclusive),
/// above `kernel_end`, inside the RAM that starts at 1 MiB.
pub(crate) fn place_initrd(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    initrd: &[u8],
    kernel_end: u64,
    limit: u64,
) -> Result<(u64, u64), BootError> {
    let size = initrd.len() as u64;
    let top = limit.min(layout.low_ram_end());
    let not_fit = BootError::InitrdDoesNotFit { size, kernel_end, limit: top };
    let addr = top.checked_sub(size).ok_or(not_fit)? & !0xfff;
    if addr < kernel_end.max(HIGH_RAM_START) {
        return Err(BootError::InitrdDoesNotFit { size, kernel_end, limit: top });
    }
    write_guest(memory, addr, initrd, "initrd")?;
    Ok((addr, size))
}

/// Writes the NUL-terminated command line at [`CMDLINE_ADDR`] after checking `max`.
pub(crate) fn write_cmdline(memory: &GuestMemoryMmap, addr: u64, cmdline: &str, max: usize) -> Result<(), BootError> {
    let len = cmdline.len();
    // `max` counts the terminating NUL, as the setup header's cmdline_size does not; be strict.
    if len >= max {
        return Err(BootError::CmdlineTooLong { len, max: max.saturating_sub(1) });
    }
    let mut bytes = Vec::with_capacity(len + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    write_guest(memory, addr, &bytes, "command line")
}
