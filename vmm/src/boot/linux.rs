//! The Linux x86 boot protocol (Documentation/arch/x86/boot.rst): ELF vmlinux
//! and bzImage images, the zero page (`struct boot_params`) and its e820 map.

use std::io::Cursor;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap};

use super::{
    place_initrd, pvh, realmode, write_cmdline, write_guest, BootConfig, BootError, BootInfo, BootProtocol, EntryPoint,
    CMDLINE_ADDR, CMDLINE_MAX, ZERO_PAGE_ADDR,
};
use crate::memory::{MemoryLayout, HIGH_RAM_START};

/// "HdrS": the setup header's magic at offset 0x202 of a bzImage.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// The boot sector signature the zero page carries at 0x1fe.
const BOOT_FLAG: u16 = 0xaa55;
/// `type_of_loader` for a boot loader without an assigned ID.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// loadflags bit 0: the protected-mode kernel is loaded at 1 MiB.
pub const LOADED_HIGH: u8 = 0x01;
/// loadflags bit 7: heap_end_ptr is valid (real-mode setup code may use a heap).
pub const CAN_USE_HEAP: u8 = 0x80;
/// xloadflags bit 0: the kernel has the 64-bit entry at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 0x01;
/// Highest initrd address kernels before protocol 2.03 accept.
const OLD_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Maximum e820 entries in the zero page.
const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;

const EM_X86_64: u16 = 62;
const ELF_HEADER_LEN: usize = 64;
const PHDR_LEN: usize = 56;
const PT_LOAD: u32 = 1;

/// `boot_params` as bytes for guest memory.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct ZeroPage(pub boot_params);
// SAFETY: boot_params is a plain-old-data C struct (integers and arrays of them);
// every bit pattern is valid and it has no padding the kernel does not expect.
unsafe impl ByteValued for ZeroPage {}

/// `setup_header` as bytes, to copy it from the image.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct SetupHeader(setup_header);
// SAFETY: as for ZeroPage: a packed C struct of integers.
unsafe impl ByteValued for SetupHeader {}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

fn wrong_elf(path: &Path, what: impl Into<String>) -> BootError {
    BootError::WrongElf { path: path.to_path_buf(), what: what.into() }
}

/// Checks that an ELF file is a complete little-endian x86-64 executable and
/// returns the guest physical range its PT_LOAD segments occupy.
pub fn check_elf_header(image: &[u8], path: &Path) -> Result<(u64, u64), BootError> {
    if image.len() < ELF_HEADER_LEN {
        return Err(wrong_elf(path, format!("truncated ({} bytes, the ELF header alone is 64)", image.len())));
    }
    match image[4] {
        2 => {}
        1 => return Err(wrong_elf(path, "a 32-bit ELF (ELFCLASS32)")),
        c => return Err(wrong_elf(path, format!("of unknown ELF class {c}"))),
    }
    if image[5] != 1 {
        return Err(wrong_elf(path, "big-endian"));
    }
    let machine = u16_at(image, 18).unwrap_or(0);
    if machine != EM_X86_64 {
        let name = match machine {
            3 => "i386",
            40 => "ARM",
            183 => "AArch64",
            243 => "RISC-V",
            _ => "another architecture",
        };
        return Err(wrong_elf(path, format!("for machine {machine} ({name})")));
    }
    let phoff = u64_at(image, 32).unwrap_or(u64::MAX);
    let phentsize = u16_at(image, 54).unwrap_or(0) as usize;
    let phnum = u16_at(image, 56).unwrap_or(0) as usize;
    if phentsize != PHDR_LEN || phnum == 0 {
        return Err(wrong_elf(path, "without usable program headers"));
    }
    let table_end =
        usize::try_from(phoff).ok().and_then(|o| o.checked_add(phnum * PHDR_LEN)).filter(|&end| end <= image.len());
    let Some(_) = table_end else {
        return Err(wrong_elf(path, "truncated (program headers beyond the end of the file)"));
    };
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for i in 0..phnum {
        let ph = phoff as usize + i * PHDR_LEN;
        let p_type = u32_at(image, ph).unwrap_or(0);
        if p_type != PT_LOAD {
            continue;
        }
        let offset = u64_at(image, ph + 8).unwrap_or(0);
        let paddr = u64_at(image, ph + 24).unwrap_or(0);
        let filesz = u64_at(image, ph + 32).unwrap_or(0);
        let memsz = u64_at(image, ph + 40).unwrap_or(0);
        if offset.checked_add(filesz).is_none_or(|end| end > image.len() as u64) {
            return Err(wrong_elf(
                path,
                format!(
                    "truncated (segment {i} needs bytes up to {:#x}, the file has {:#x})",
                    offset.saturating_add(filesz),
                    image.len()
                ),
            ));
        }
        let end = paddr
            .checked_add(memsz.max(filesz))
            .ok_or_else(|| wrong_elf(path, "inconsistent (segment wraps around)"))?;
        lo = lo.min(paddr);
        hi = hi.max(end);
    }
    if lo >= hi {
        return Err(wrong_elf(path, "without loadable segments"));
    }
    Ok((lo, hi))
}

/// Loads an ELF kernel: PVH entry if the image has the note (or it is asked
/// for), else the Linux 64-bit boot protocol.
pub fn load_elf(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    config: &BootConfig,
    rsdp_addr: u64,
) -> Result<BootInfo, BootError> {
    let path = &config.kernel_name;
    let (start, end) = check_elf_header(&config.kernel, path)?;
    check_kernel_fits(layout, start, end)?;
    let mut image = Cursor::new(config.kernel.as_slice());
    let loaded = Elf::load(memory, None, &mut image, Some(GuestAddress(HIGH_RAM_START)))
        .map_err(|source| BootError::Elf { path: path.clone(), source })?;
    let pvh_entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
        _ => None,
    };
    let protocol = match (config.protocol, pvh_entry) {
        (BootProtocol::Auto, Some(_)) | (BootProtocol::Pvh, Some(_)) => BootProtocol::Pvh,
        (BootProtocol::Auto, None) | (BootProtocol::Linux64, _) => BootProtocol::Linux64,
        (BootProtocol::Pvh, None) => {
            return Err(BootError::ProtocolMismatch {
                path: path.clone(),
                protocol: BootProtocol::Pvh,
                reason: "the ELF has no XEN_ELFNOTE_PHYS32_ENTRY note",
            })
        }
        (p @ (BootProtocol::Linux32 | BootProtocol::Legacy), _) => {
            return Err(BootError::ProtocolMismatch {
                path: path.clone(),
                protocol: p,
                reason: "only a bzImage has 32-bit and real-mode entries",
            })
        }
        (BootProtocol::Firmware, _) => return Err(firmware_is_not_a_kernel(path)),
    };
    write_cmdline(memory, CMDLINE_ADDR, &config.cmdline, CMDLINE_MAX)?;
    let initrd = match &config.initrd {
        Some(bytes) => Some(place_initrd(memory, layout, bytes, end, 1 << 32)?),
        None => None,
    };
    let entry = if protocol == BootProtocol::Pvh {
        let entry32 = pvh_entry.unwrap_or_default();
        pvh::write_start_info(memory, layout, CMDLINE_ADDR, initrd, rsdp_addr)?;
        EntryPoint::Protected32 {
            eip: u32::try_from(entry32).map_err(|_| BootError::ProtocolMismatch {
                path: path.clone(),
                protocol,
                reason: "the PVH entry is above 4 GiB",
            })?,
            esi: 0,
            ebx: super::PVH_INFO_ADDR as u32,
        }
    } else {
        let mut params = ZeroPage::default();
        let hdr = &mut params.0.hdr;
        hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
        hdr.boot_flag = BOOT_FLAG;
        hdr.header = HDRS_MAGIC;
        hdr.kernel_alignment = 0x0100_0000;
        fill_zero_page(&mut params, layout, &config.cmdline, initrd, rsdp_addr);
        write_guest(memory, ZERO_PAGE_ADDR, params.as_slice(), "boot_params")?;
        EntryPoint::Long64 { rip: loaded.kernel_load.0, rsi: ZERO_PAGE_ADDR }
    };
    Ok(BootInfo { entry, protocol, kernel_range: (start, end), initrd, rsdp_addr })
}

fn check_kernel_fits(layout: &MemoryLayout, start: u64, end: u64) -> Result<(), BootError> {
    if start < HIGH_RAM_START || end > layout.low_ram_end() {
        return Err(BootError::KernelDoesNotFit { start, end, ram_end: layout.low_ram_end() });
    }
    Ok(())
}

/// Fills what every boot_params path shares: command line, initrd, e820, RSDP.
pub(crate) fn fill_zero_page(
    params: &mut ZeroPage,
    layout: &MemoryLayout,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    rsdp_addr: u64,
) {
    fill_zero_page_at(params, layout, CMDLINE_ADDR, cmdline, initrd, rsdp_addr)
}

/// As [`fill_zero_page`], with the command line at `cmdline_addr`.
pub(crate) fn fill_zero_page_at(
    params: &mut ZeroPage,
    layout: &MemoryLayout,
    cmdline_addr: u64,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    rsdp_addr: u64,
) {
    let p = &mut params.0;
    p.hdr.cmd_line_ptr = cmdline_addr as u32;
    p.ext_cmd_line_ptr = (cmdline_addr >> 32) as u32;
    // A bzImage's header states its own limit here; only a header-less ELF gets the length.
    if p.hdr.cmdline_size == 0 {
        p.hdr.cmdline_size = cmdline.len() as u32;
    }
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.ext_ramdisk_image = (addr >> 32) as u32;
        p.hdr.ramdisk_size = size as u32;
        p.ext_ramdisk_size = (size >> 32) as u32;
    }
    let map = layout.e820_map();
    for (slot, e) in p.e820_table.iter_mut().zip(map.iter().take(E820_MAX_ENTRIES_ZEROPAGE)) {
        *slot = boot_e820_entry { addr: e.addr, size: e.size, r#type: e.kind as u32 };
    }
    p.e820_entries = map.len().min(E820_MAX_ENTRIES_ZEROPAGE) as u8;
    p.acpi_rsdp_addr = rsdp_addr;
}

/// What the setup header of a bzImage says, checked.
#[derive(Debug)]
pub struct BzImageHeader {
    /// The raw header, copied into the zero page.
    pub header: setup_header,
    /// The header's length in the image (from 0x1f1), per the jump at 0x200.
    pub header_len: usize,
    /// Bytes of real-mode setup code including the boot sector.
    pub setup_len: usize,
}

/// Parses and checks the setup header of a bzImage.
pub(crate) fn parse_bzimage(image: &[u8], path: &Path) -> Result<BzImageHeader, BootError> {
    let bad = |reason: String| BootError::BzImage { path: path.to_path_buf(), reason };
    let hdr_size = std::mem::size_of::<setup_header>();
    let raw = image.get(0x1f1..0x1f1 + hdr_size).ok_or_else(|| bad("truncated inside the setup header".into()))?;
    let mut hdr = SetupHeader::default();
    hdr.as_mut_slice().copy_from_slice(raw);
    let header = hdr.0;
    if header.header != HDRS_MAGIC {
        return Err(bad("no 'HdrS' magic at 0x202".into()));
    }
    let version = header.version;
    if version < 0x0204 {
        return Err(bad(format!("boot protocol {version:#06x} is older than 2.04, which rvmm requires")));
    }
    if header.loadflags & LOADED_HIGH == 0 {
        return Err(bad("not a bzImage (LOADED_HIGH is clear: a zImage loads at 0x10000)".into()));
    }
    // The jump at 0x200 is `jmp short`; its target (0x202 + disp8) ends the header.
    let header_len = (0x202 + usize::from(image[0x201])).saturating_sub(0x1f1).min(hdr_size);
    let sects = if header.setup_sects == 0 { 4 } else { usize::from(header.setup_sects) };
    let setup_len = (sects + 1) * 512;
    if image.len() < setup_len {
        return Err(bad(format!("truncated: {} bytes, the setup code alone needs {setup_len}", image.len())));
    }
    let payload = (image.len() - setup_len) as u64;
    // syssize counts 16-byte paragraphs, rounded up; tolerate an unpadded last one.
    let syssize = u64::from(header.syssize) * 16;
    if payload + 15 < syssize {
        return Err(bad(format!(
            "truncated: the protected-mode kernel has {payload} bytes, the header says {syssize}"
        )));
    }
    Ok(BzImageHeader { header, header_len, setup_len })
}

/// Loads a bzImage for its 64-bit or 32-bit entry, or prepares the legacy
/// real-mode boot.
pub fn load_bzimage(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    config: &BootConfig,
    rsdp_addr: u64,
) -> Result<BootInfo, BootError> {
    let path = &config.kernel_name;
    let parsed = parse_bzimage(&config.kernel, path)?;
    let hdr = parsed.header;
    let has_64 = hdr.version >= 0x020c && hdr.xloadflags & XLF_KERNEL_64 != 0;
    let protocol = match config.protocol {
        BootProtocol::Auto if has_64 => BootProtocol::Linux64,
        BootProtocol::Auto => BootProtocol::Linux32,
        BootProtocol::Linux64 if !has_64 => {
            return Err(BootError::ProtocolMismatch {
                path: path.clone(),
                protocol: BootProtocol::Linux64,
                reason: "the setup header does not set XLF_KERNEL_64",
            })
        }
        BootProtocol::Pvh => {
            return Err(BootError::ProtocolMismatch {
                path: path.clone(),
                protocol: BootProtocol::Pvh,
                reason: "a bzImage carries no PVH note; boot the ELF vmlinux instead",
            })
        }
        BootProtocol::Firmware => return Err(firmware_is_not_a_kernel(path)),
        p => p,
    };
    // A relocatable kernel may sit at 1 MiB and moves itself; one that is not
    // must be at its preferred address.
    let load_addr =
        if hdr.version >= 0x020a && hdr.relocatable_kernel == 0 { hdr.pref_address } else { HIGH_RAM_START };
    let payload_len = (config.kernel.len() - parsed.setup_len) as u64;
    let footprint = if hdr.version >= 0x020a { payload_len.max(u64::from(hdr.init_size)) } else { payload_len };
    let kernel_end = load_addr.saturating_add(footprint);
    check_kernel_fits(layout, load_addr, kernel_end)?;
    let payload = &config.kernel[parsed.setup_len..];
    write_guest(memory, load_addr, payload, "protected-mode kernel")?;

    let initrd_max = if hdr.version >= 0x0203 { u64::from(hdr.initrd_addr_max) } else { OLD_INITRD_ADDR_MAX };
    let initrd = match &config.initrd {
        Some(bytes) => Some(place_initrd(memory, layout, bytes, kernel_end, initrd_max.saturating_add(1))?),
        None => None,
    };
    let cmdline_max = if hdr.version >= 0x0206 { hdr.cmdline_size as usize + 1 } else { 256 };

    if protocol == BootProtocol::Legacy {
        let entry = realmode::prepare(memory, layout, config, &parsed, load_addr, initrd, cmdline_max, rsdp_addr)?;
        return Ok(BootInfo { entry, protocol, kernel_range: (load_addr, kernel_end), initrd, rsdp_addr });
    }

    write_cmdline(memory, CMDLINE_ADDR, &config.cmdline, cmdline_max.min(CMDLINE_MAX))?;
    let mut params = ZeroPage::default();
    // The zero page starts with the image's own setup header (boot.rst: "copy the header").
    params.0.hdr = hdr;
    let p = &mut params.0.hdr;
    p.type_of_loader = LOADER_TYPE_UNDEFINED;
    p.code32_start = load_addr as u32;
    fill_zero_page(&mut params, layout, &config.cmdline, initrd, rsdp_addr);
    write_guest(memory, ZERO_PAGE_ADDR, params.as_slice(), "boot_params")?;
    let entry = match protocol {
        BootProtocol::Linux64 => EntryPoint::Long64 { rip: load_addr + 0x200, rsi: ZERO_PAGE_ADDR },
        _ => EntryPoint::Protected32 { eip: load_addr as u32, esi: ZERO_PAGE_ADDR as u32, ebx: 0 },
    };
    Ok(BootInfo { entry, protocol, kernel_range: (load_addr, kernel_end), initrd, rsdp_addr })
}

/// The error for loading a kernel with the firmware "protocol".
fn firmware_is_not_a_kernel(path: &std::path::Path) -> BootError {
    BootError::ProtocolMismatch {
        path: path.to_owned(),
        protocol: BootProtocol::Firmware,
        reason: "firmware is not loaded as a kernel: boot it with --firmware",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_header(class: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64 + 56];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = 1;
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h[32..40].copy_from_slice(&64u64.to_le_bytes());
        h[54..56].copy_from_slice(&56u16.to_le_bytes());
        h[56..58].copy_from_slice(&1u16.to_le_bytes());
        // One PT_LOAD of 16 bytes at file offset 64 to paddr 1 MiB.
        h[64..68].copy_from_slice(&1u32.to_le_bytes());
        h[72..80].copy_from_slice(&64u64.to_le_bytes());
        h[88..96].copy_from_slice(&0x10_0000u64.to_le_bytes());
        h[96..104].copy_from_slice(&16u64.to_le_bytes());
        h[104..112].copy_from_slice(&32u64.to_le_bytes());
        h
    }

    #[test]
    fn elf_checks_name_the_problem() {
        let p = Path::new("k");
        let ok = elf_header(2, EM_X86_64);
        assert_eq!(check_elf_header(&ok, p).unwrap(), (0x10_0000, 0x10_0020));
        let e = check_elf_header(&elf_header(1, 3), p).unwrap_err().to_string();
        assert!(e.contains("32-bit"), "{e}");
        let e = check_elf_header(&elf_header(2, 183), p).unwrap_err().to_string();
        assert!(e.contains("AArch64"), "{e}");
        let e = check_elf_header(&ok[..40], p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        // Segment data past the end of the file.
        let mut short = ok.clone();
        short[96..104].copy_from_slice(&4096u64.to_le_bytes());
        let e = check_elf_header(&short, p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn bzimage_checks_name_the_problem() {
        let p = Path::new("bz");
        let mut img = vec![0u8; 5 * 512 + 64];
        img[0x1f1] = 4; // setup_sects
        img[0x201] = 0x66; // jmp displacement: header ends at 0x268
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x211] = LOADED_HIGH;
        img[0x1f4..0x1f8].copy_from_slice(&4u32.to_le_bytes()); // syssize: 64 bytes
        let parsed = parse_bzimage(&img, p).unwrap();
        assert_eq!(parsed.setup_len, 5 * 512);
        let e = parse_bzimage(&img[..5 * 512 + 10], p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = parse_bzimage(&img[..600], p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let mut old = img.clone();
        old[0x206..0x208].copy_from_slice(&0x0201u16.to_le_bytes());
        assert!(parse_bzimage(&old, p).unwrap_err().to_string().contains("older"));
    }
}
