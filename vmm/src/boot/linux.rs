//! The Linux x86 boot protocol (Documentation/arch/x86/boot.rst): ELF vmlinux
//! and bzImage images, the zero page (`struct boot_params`) and its e820 map.

use std::io::Cursor;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::Elf;
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

const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
/// `e_ident` is 16 bytes; byte 4 is the class, byte 5 the data encoding.
const EI_NIDENT: usize = 16;
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// The ELF note (owner "Xen") whose descriptor is the PVH entry (xen/include/public/elfnote.h).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// The owner of the PVH note, NUL included (its `n_namesz` is 4).
const XEN_NOTE_NAME: &[u8] = b"Xen\0";
/// Size of an ELF note header (`n_namesz`, `n_descsz`, `n_type`), the same in both classes.
const NOTE_HEADER_LEN: usize = 12;
/// Bytes zeroed per guest write when clearing a segment's memsz beyond its filesz.
const ZERO_CHUNK: usize = 64 * 1024;

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

/// The field offsets of one ELF class (System V gABI, "ELF header" and "program header").
struct ElfClass {
    bits: u8,
    header_len: usize,
    phdr_len: usize,
    machine: u16,
}

const ELF32: ElfClass = ElfClass { bits: 32, header_len: 52, phdr_len: 32, machine: EM_386 };
const ELF64: ElfClass = ElfClass { bits: 64, header_len: 64, phdr_len: 56, machine: EM_X86_64 };

impl ElfClass {
    /// `(e_phoff, e_phentsize, e_phnum)`.
    fn program_header_table(&self, image: &[u8]) -> (u64, usize, usize) {
        let (phoff, phentsize, phnum) = if self.bits == 64 {
            (u64_at(image, 32), u16_at(image, 54), u16_at(image, 56))
        } else {
            (u32_at(image, 28).map(u64::from), u16_at(image, 42), u16_at(image, 44))
        };
        (phoff.unwrap_or(u64::MAX), usize::from(phentsize.unwrap_or(0)), usize::from(phnum.unwrap_or(0)))
    }

    /// The program header at `ph`, which the caller checked lies in `image`.
    fn program_header(&self, image: &[u8], ph: usize) -> ProgramHeader {
        let (offset, paddr, filesz, memsz, align) = if self.bits == 64 {
            let at = |off| u64_at(image, ph + off);
            (at(8), at(24), at(32), at(40), at(48))
        } else {
            let at = |off| u32_at(image, ph + off).map(u64::from);
            (at(4), at(12), at(16), at(20), at(28))
        };
        ProgramHeader {
            p_type: u32_at(image, ph).unwrap_or(0),
            offset: offset.unwrap_or(0),
            paddr: paddr.unwrap_or(0),
            filesz: filesz.unwrap_or(0),
            memsz: memsz.unwrap_or(0),
            align: align.unwrap_or(0),
        }
    }
}

/// One program header, of either class, widened to 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProgramHeader {
    p_type: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

/// An ELF kernel as rvmm checked it: every segment lies inside the file and
/// does not wrap, and what it knows of its entry protocols.
///
/// rvmm parses the headers itself rather than through linux-loader, which
/// reads only ELF64 files and keeps only the last PT_NOTE segment's answer
/// about the PVH note: a 32-bit PVH kernel (`EM_386`, which QEMU boots) could
/// not be loaded at all, and an ELF64 with a second PT_NOTE after the one
/// holding the Xen note would lose its PVH entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfImage {
    /// 32 or 64.
    pub bits: u8,
    /// `[start, end)` of the guest physical memory the PT_LOAD segments occupy.
    pub range: (u64, u64),
    /// The PVH entry from the first `XEN_ELFNOTE_PHYS32_ENTRY` note of any PT_NOTE segment.
    pub pvh_entry: Option<u64>,
    loads: Vec<ProgramHeader>,
}

/// Checks that an ELF file is a complete little-endian x86-64 executable, or
/// an i386 one with a PVH note, and returns the guest physical range its
/// PT_LOAD segments occupy.
pub fn check_elf_header(image: &[u8], path: &Path) -> Result<(u64, u64), BootError> {
    parse_elf(image, path).map(|elf| elf.range)
}

/// Parses and checks an ELF kernel's headers and notes (see [`ElfImage`]).
pub fn parse_elf(image: &[u8], path: &Path) -> Result<ElfImage, BootError> {
    if image.len() < EI_NIDENT {
        return Err(wrong_elf(path, format!("truncated ({} bytes, e_ident alone is {EI_NIDENT})", image.len())));
    }
    let class = match image[4] {
        ELFCLASS64 => ELF64,
        ELFCLASS32 => ELF32,
        c => return Err(wrong_elf(path, format!("of unknown ELF class {c}"))),
    };
    if image.len() < class.header_len {
        return Err(wrong_elf(
            path,
            format!("truncated ({} bytes, the ELF header alone is {})", image.len(), class.header_len),
        ));
    }
    if image[5] != 1 {
        return Err(wrong_elf(path, "big-endian"));
    }
    let machine = u16_at(image, 18).unwrap_or(0);
    if machine != class.machine {
        let name = match machine {
            EM_386 => "i386",
            EM_X86_64 => "x86-64",
            40 => "ARM",
            183 => "AArch64",
            243 => "RISC-V",
            _ => "another architecture",
        };
        let what = if class.bits == 32 {
            format!("a 32-bit ELF (ELFCLASS32) for machine {machine} ({name}), not i386")
        } else {
            format!("for machine {machine} ({name})")
        };
        return Err(wrong_elf(path, what));
    }
    let (phoff, phentsize, phnum) = class.program_header_table(image);
    if phentsize != class.phdr_len || phnum == 0 {
        return Err(wrong_elf(path, "without usable program headers"));
    }
    // phnum < 65536 and phentsize <= 56: the product cannot overflow.
    let table_end =
        usize::try_from(phoff).ok().and_then(|o| o.checked_add(phnum * phentsize)).filter(|&end| end <= image.len());
    let Some(_) = table_end else {
        return Err(wrong_elf(path, "truncated (program headers beyond the end of the file)"));
    };
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    let mut loads = Vec::new();
    let mut pvh_entry = None;
    for i in 0..phnum {
        let ph = class.program_header(image, phoff as usize + i * phentsize);
        if ph.p_type != PT_LOAD && ph.p_type != PT_NOTE {
            continue;
        }
        let Some(data) = file_range(image, ph.offset, ph.filesz) else {
            return Err(wrong_elf(
                path,
                format!(
                    "truncated (segment {i} needs bytes up to {:#x}, the file has {:#x})",
                    ph.offset.saturating_add(ph.filesz),
                    image.len()
                ),
            ));
        };
        if ph.p_type == PT_NOTE {
            if pvh_entry.is_none() {
                pvh_entry = find_pvh_note(data, ph.align)
                    .map_err(|what| wrong_elf(path, format!("inconsistent (segment {i}: {what})")))?;
            }
            continue;
        }
        let end = ph
            .paddr
            .checked_add(ph.memsz.max(ph.filesz))
            .ok_or_else(|| wrong_elf(path, "inconsistent (segment wraps around)"))?;
        lo = lo.min(ph.paddr);
        hi = hi.max(end);
        loads.push(ph);
    }
    if lo >= hi {
        return Err(wrong_elf(path, "without loadable segments"));
    }
    if class.bits == 32 && pvh_entry.is_none() {
        return Err(wrong_elf(
            path,
            "a 32-bit i386 ELF (ELFCLASS32) without a Xen PVH note (XEN_ELFNOTE_PHYS32_ENTRY), \
             and PVH is the only entry rvmm has for a 32-bit ELF",
        ));
    }
    Ok(ElfImage { bits: class.bits, range: (lo, hi), pvh_entry, loads })
}

/// `image[offset..offset + len]`, if the file has those bytes.
fn file_range(image: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    image.get(start..end)
}

/// Looks through the notes of one PT_NOTE segment for the PVH entry note
/// (owner "Xen", type `XEN_ELFNOTE_PHYS32_ENTRY`). Names and descriptors are
/// padded to 4 bytes, or to 8 in a segment aligned to 8 (as GNU property notes
/// are). A truncated note ends the search, as in linux-loader and Linux's own
/// note parsers; a PVH note too short to hold an address is an error.
fn find_pvh_note(notes: &[u8], segment_align: u64) -> Result<Option<u64>, &'static str> {
    let align = if segment_align == 8 { 8 } else { 4 };
    let pad = |n: usize| n.checked_next_multiple_of(align);
    let mut pos = 0usize;
    while let Some(header) = pos.checked_add(NOTE_HEADER_LEN).and_then(|end| notes.get(pos..end)) {
        let word = |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]) as usize;
        let (namesz, descsz, n_type) = (word(0), word(4), word(8) as u32);
        let name_start = pos + NOTE_HEADER_LEN;
        let Some(desc_start) = name_start.checked_add(namesz).and_then(pad) else { break };
        let Some(desc_end) = desc_start.checked_add(descsz) else { break };
        let (Some(name), Some(desc)) = (notes.get(name_start..name_start + namesz), notes.get(desc_start..desc_end))
        else {
            break;
        };
        if n_type == XEN_ELFNOTE_PHYS32_ENTRY && name == XEN_NOTE_NAME {
            // The descriptor is the entry's physical address: a 32-bit word in a
            // 32-bit kernel, a 64-bit one in a 64-bit kernel (Linux's `_ASM_PTR`).
            // The caller refuses an entry above 4 GiB.
            return match desc.len() {
                0..=3 => Err("the Xen PVH entry note is shorter than an address"),
                4..=7 => Ok(Some(u64::from(u32::from_le_bytes([desc[0], desc[1], desc[2], desc[3]])))),
                _ => Ok(Some(u64::from_le_bytes([
                    desc[0], desc[1], desc[2], desc[3], desc[4], desc[5], desc[6], desc[7],
                ]))),
            };
        }
        match pad(desc_end) {
            Some(next) => pos = next,
            None => break,
        }
    }
    Ok(None)
}

/// Copies the PT_LOAD segments of a checked ELF to their physical addresses
/// and zeroes each one's memsz beyond its filesz. The caller checked that
/// `elf.range` lies in guest RAM; [`parse_elf`] that every segment is inside the file.
fn load_elf_segments(memory: &GuestMemoryMmap, image: &[u8], elf: &ElfImage) -> Result<(), BootError> {
    let zeros = vec![0u8; ZERO_CHUNK];
    for ph in &elf.loads {
        let data = file_range(image, ph.offset, ph.filesz)
            .ok_or(BootError::GuestWrite { what: "ELF segment (outside the file)", addr: ph.paddr })?;
        write_guest(memory, ph.paddr, data, "ELF segment")?;
        // Inside elf.range: paddr + max(memsz, filesz) did not overflow.
        let mut addr = ph.paddr + ph.filesz;
        let end = ph.paddr + ph.memsz.max(ph.filesz);
        while addr < end {
            let n = (end - addr).min(ZERO_CHUNK as u64);
            write_guest(memory, addr, &zeros[..n as usize], "ELF segment (zeroed part)")?;
            addr += n;
        }
    }
    Ok(())
}

/// Loads an ELF kernel: PVH entry if the image has the note (or it is asked
/// for), else the Linux 64-bit boot protocol. A 32-bit ELF boots only with PVH.
pub fn load_elf(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    config: &BootConfig,
    rsdp_addr: u64,
) -> Result<BootInfo, BootError> {
    let path = &config.kernel_name;
    let elf = parse_elf(&config.kernel, path)?;
    let (start, end) = elf.range;
    check_kernel_fits(layout, start, end)?;
    let pvh_entry = elf.pvh_entry;
    let protocol = match (config.protocol, pvh_entry) {
        (BootProtocol::Auto, Some(_)) | (BootProtocol::Pvh, Some(_)) => BootProtocol::Pvh,
        (BootProtocol::Linux64, _) if elf.bits == 32 => {
            return Err(BootError::ProtocolMismatch {
                path: path.clone(),
                protocol: BootProtocol::Linux64,
                reason: "a 32-bit ELF has no 64-bit entry; it boots with PVH",
            })
        }
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
    let entry64 = if elf.bits == 64 {
        let mut image = Cursor::new(config.kernel.as_slice());
        let loaded = Elf::load(memory, None, &mut image, Some(GuestAddress(HIGH_RAM_START)))
            .map_err(|source| BootError::Elf { path: path.clone(), source })?;
        // linux-loader's own PVH answer (`loaded.pvh_boot_cap`) is not used: it
        // reflects only the last PT_NOTE segment. `elf.pvh_entry` looked at all.
        loaded.kernel_load.0
    } else {
        load_elf_segments(memory, &config.kernel, &elf)?;
        0
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
        // No setup header states a limit: give the command line's length.
        hdr.cmdline_size = config.cmdline.len() as u32;
        fill_zero_page(&mut params, layout, initrd, rsdp_addr);
        write_guest(memory, ZERO_PAGE_ADDR, params.as_slice(), "boot_params")?;
        EntryPoint::Long64 { rip: entry64, rsi: ZERO_PAGE_ADDR }
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
pub(crate) fn fill_zero_page(params: &mut ZeroPage, layout: &MemoryLayout, initrd: Option<(u64, u64)>, rsdp_addr: u64) {
    fill_zero_page_at(params, layout, CMDLINE_ADDR, initrd, rsdp_addr)
}

/// As [`fill_zero_page`], with the command line at `cmdline_addr`.
pub(crate) fn fill_zero_page_at(
    params: &mut ZeroPage,
    layout: &MemoryLayout,
    cmdline_addr: u64,
    initrd: Option<(u64, u64)>,
    rsdp_addr: u64,
) {
    let p = &mut params.0;
    p.hdr.cmd_line_ptr = cmdline_addr as u32;
    p.ext_cmd_line_ptr = (cmdline_addr >> 32) as u32;
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

/// Where the setup header starts in a bzImage and in `boot_params`.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// End of the boot protocol 2.03 fields (`initrd_addr_max` at 0x22c): a header
/// of protocol 2.04 or later reaches at least this far.
const MIN_HEADER_END: usize = 0x230;
/// End of `cmdline_size` (0x238, protocol 2.06).
const CMDLINE_SIZE_END: usize = 0x23c;

/// What the setup header of a bzImage says, checked.
#[derive(Debug)]
pub struct BzImageHeader {
    /// The header as long as the image says it is (`header_len`), zero beyond:
    /// what goes into the zero page, where boot.rst has the loader copy the
    /// header's own bytes into a zeroed `boot_params`.
    pub header: setup_header,
    /// The header's length in the image (from 0x1f1), per the jump at 0x200.
    pub header_len: usize,
    /// Bytes of real-mode setup code including the boot sector.
    pub setup_len: usize,
}

impl BzImageHeader {
    /// Whether the header is long enough to hold a field that ends at `end` (an offset in the image).
    fn covers(&self, end: usize) -> bool {
        SETUP_HEADER_OFFSET + self.header_len >= end
    }
}

/// Parses and checks the setup header of a bzImage.
pub(crate) fn parse_bzimage(image: &[u8], path: &Path) -> Result<BzImageHeader, BootError> {
    let bad = |reason: String| BootError::BzImage { path: path.to_path_buf(), reason };
    let hdr_size = std::mem::size_of::<setup_header>();
    let raw = image
        .get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + hdr_size)
        .ok_or_else(|| bad("truncated inside the setup header".into()))?;
    let mut full = SetupHeader::default();
    full.as_mut_slice().copy_from_slice(raw);
    let full = full.0;
    if full.header != HDRS_MAGIC {
        return Err(bad("no 'HdrS' magic at 0x202".into()));
    }
    let version = full.version;
    if version < 0x0204 {
        return Err(bad(format!("boot protocol {version:#06x} is older than 2.04, which rvmm requires")));
    }
    if full.loadflags & LOADED_HIGH == 0 {
        return Err(bad("not a bzImage (LOADED_HIGH is clear: a zImage loads at 0x10000)".into()));
    }
    // The jump at 0x200 is `jmp short`; its target (0x202 + byte[0x201]) ends the header.
    let header_end = 0x202 + usize::from(image[0x201]);
    if header_end < MIN_HEADER_END {
        return Err(bad(format!(
            "the setup header ends at {header_end:#x} (the jump at 0x200), before the end of the fields \
             of boot protocol {version:#06x} at {MIN_HEADER_END:#x}"
        )));
    }
    let header_len = (header_end - SETUP_HEADER_OFFSET).min(hdr_size);
    // What follows the header in the image is setup code, not header fields.
    let mut header = SetupHeader::default();
    header.as_mut_slice()[..header_len].copy_from_slice(&raw[..header_len]);
    let header = header.0;
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

/// Where a bzImage's protected-mode kernel goes and the memory it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KernelPlacement {
    /// Where the protected-mode kernel is loaded (`code32_start`).
    load_addr: u64,
    /// boot.rst's "kernel runtime start address": where the kernel will run.
    runtime_start: u64,
    /// End of what the kernel occupies before it reads the memory map: the
    /// loaded image and `init_size` bytes from `runtime_start`. The initrd goes above.
    end: u64,
}

/// Places a bzImage's protected-mode kernel of `payload_len` bytes at 0x100000,
/// the bzImage load address of boot.rst (and where QEMU, Firecracker and
/// Cloud Hypervisor put it). A non-relocatable kernel moves itself to
/// `pref_address` (protocol 2.10+) if that is elsewhere; a relocatable one
/// (protocol 2.05+) realigns itself to `kernel_alignment`.
///
/// The kernel then needs `init_size` bytes (protocol 2.10+) from its runtime
/// start: `align_up(max(load address, pref_address), kernel_alignment)` if
/// relocatable, else `pref_address` (or the load address when the header has none).
/// Every value is the image's: all arithmetic is checked, and both the loaded
/// image and that window must lie in the RAM above 1 MiB.
fn place_bzimage(
    parsed: &BzImageHeader,
    payload_len: u64,
    layout: &MemoryLayout,
) -> Result<KernelPlacement, BootError> {
    let hdr = &parsed.header;
    let version = hdr.version;
    // Fields beyond the header's length are zero in `parsed.header`, i.e. absent.
    let relocatable = version >= 0x0205 && hdr.relocatable_kernel != 0;
    let alignment = if version >= 0x0205 { u64::from(hdr.kernel_alignment).max(1) } else { 1 };
    let (pref_address, init_size) =
        if version >= 0x020a { (hdr.pref_address, u64::from(hdr.init_size)) } else { (0, 0) };
    let too_far = |start: u64| BootError::KernelDoesNotFit { start, end: u64::MAX, ram_end: layout.low_ram_end() };
    // The protected-mode kernel goes at 1 MiB (code32_start's default), as QEMU,
    // Firecracker and Cloud Hypervisor load it. A relocatable kernel may be put
    // at any kernel_alignment boundary, but it realigns itself, and a kernel that
    // claims to be relocatable yet is not position-independent still works.
    let load_addr = HIGH_RAM_START;
    let runtime_start = if relocatable {
        load_addr.max(pref_address).checked_next_multiple_of(alignment).ok_or(too_far(pref_address))?
    } else if pref_address != 0 {
        pref_address
    } else {
        load_addr
    };
    let load_end = load_addr.checked_add(payload_len).ok_or(too_far(load_addr))?;
    let runtime_end = runtime_start.checked_add(init_size).ok_or(too_far(runtime_start))?;
    check_kernel_fits(layout, load_addr, load_end)?;
    check_kernel_fits(layout, runtime_start, runtime_end)?;
    Ok(KernelPlacement { load_addr, runtime_start, end: load_end.max(runtime_end) })
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
    let payload = &config.kernel[parsed.setup_len..];
    let placement = place_bzimage(&parsed, payload.len() as u64, layout)?;
    let (load_addr, kernel_end) = (placement.load_addr, placement.end);
    log::debug!(
        "bzImage: loaded at {load_addr:#x}, runs at {:#x}, needs up to {kernel_end:#x}",
        placement.runtime_start
    );
    write_guest(memory, load_addr, payload, "protected-mode kernel")?;

    let initrd_max = if hdr.version >= 0x0203 { u64::from(hdr.initrd_addr_max) } else { OLD_INITRD_ADDR_MAX };
    let initrd = match &config.initrd {
        Some(bytes) => Some(place_initrd(memory, layout, bytes, kernel_end, initrd_max.saturating_add(1))?),
        None => None,
    };
    let cmdline_max = if hdr.version >= 0x0206 && parsed.covers(CMDLINE_SIZE_END) {
        (hdr.cmdline_size as usize).saturating_add(1)
    } else {
        256
    };

    if protocol == BootProtocol::Legacy {
        let entry = realmode::prepare(memory, layout, config, &parsed, load_addr, initrd, cmdline_max, rsdp_addr)?;
        return Ok(BootInfo { entry, protocol, kernel_range: (load_addr, kernel_end), initrd, rsdp_addr });
    }

    write_cmdline(memory, CMDLINE_ADDR, &config.cmdline, cmdline_max.min(CMDLINE_MAX))?;
    // boot.rst (32-bit and 64-bit protocols): zero boot_params, then copy the
    // setup header from 0x1f1 for its own length; `parsed.header` is zero beyond it.
    let mut params = ZeroPage::default();
    params.0.hdr = hdr;
    let p = &mut params.0.hdr;
    p.type_of_loader = LOADER_TYPE_UNDEFINED;
    p.code32_start = load_addr as u32;
    fill_zero_page(&mut params, layout, initrd, rsdp_addr);
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
        // A 32-bit ELF for i386 without a PVH note, and one for x86-64.
        let e = check_elf_header(&elf(32, EM_386, 0x10_0000, &[load_seg(0x10_0000, 16, 32)]), p).unwrap_err();
        assert!(e.to_string().contains("32-bit") && e.to_string().contains("PVH"), "{e}");
        let e = check_elf_header(&elf(32, EM_X86_64, 0x10_0000, &[load_seg(0x10_0000, 16, 32)]), p).unwrap_err();
        assert!(e.to_string().contains("32-bit"), "{e}");
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

    // ---- synthetic images and a guest to load them into ----

    use crate::memory::MIB;
    use vm_memory::Bytes;

    fn guest(size: u64) -> (MemoryLayout, GuestMemoryMmap) {
        let layout = MemoryLayout::new(size).unwrap();
        let memory = layout.allocate().unwrap();
        (layout, memory)
    }

    fn boot_config(kernel: Vec<u8>, protocol: BootProtocol, initrd: Option<Vec<u8>>) -> BootConfig {
        BootConfig {
            kernel,
            kernel_name: "k".into(),
            initrd,
            cmdline: "console=ttyS0".into(),
            protocol,
            num_cpus: 1,
            pci: None,
            acpi_mmio_devices: Vec::new(),
        }
    }

    fn read_bytes(memory: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        memory.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn zero_page(memory: &GuestMemoryMmap) -> Vec<u8> {
        read_bytes(memory, ZERO_PAGE_ADDR, std::mem::size_of::<boot_params>())
    }

    /// One program header and the bytes it covers: (type, data, paddr, memsz, align).
    type Seg = (u32, Vec<u8>, u64, u64, u64);

    fn load_seg(paddr: u64, filesz: usize, memsz: u64) -> Seg {
        (PT_LOAD, (0..filesz).map(|i| i as u8 | 0x80).collect(), paddr, memsz, 0x1000)
    }

    /// An ELF note with 4-byte padding (or `align`).
    fn note(name: &[u8], n_type: u32, desc: &[u8], align: usize) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&n_type.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(align), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(align), 0);
        n
    }

    fn note_seg(notes: Vec<u8>) -> Seg {
        (PT_NOTE, notes, 0, 0, 4)
    }

    /// An ELF executable of `bits` 32 or 64 with the segments' data after the program headers.
    fn elf(bits: u8, machine: u16, entry: u64, segs: &[Seg]) -> Vec<u8> {
        let (hdr_len, ph_len) = if bits == 64 { (64, 56) } else { (52, 32) };
        let mut img = vec![0u8; hdr_len + ph_len * segs.len()];
        img[..4].copy_from_slice(b"\x7fELF");
        img[4] = if bits == 64 { ELFCLASS64 } else { ELFCLASS32 };
        img[5] = 1;
        img[6] = 1;
        img[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        img[18..20].copy_from_slice(&machine.to_le_bytes());
        if bits == 64 {
            img[24..32].copy_from_slice(&entry.to_le_bytes());
            img[32..40].copy_from_slice(&(hdr_len as u64).to_le_bytes());
            img[52..54].copy_from_slice(&(hdr_len as u16).to_le_bytes());
            img[54..56].copy_from_slice(&(ph_len as u16).to_le_bytes());
            img[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        } else {
            img[24..28].copy_from_slice(&(entry as u32).to_le_bytes());
            img[28..32].copy_from_slice(&(hdr_len as u32).to_le_bytes());
            img[40..42].copy_from_slice(&(hdr_len as u16).to_le_bytes());
            img[42..44].copy_from_slice(&(ph_len as u16).to_le_bytes());
            img[44..46].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        }
        for (i, (p_type, data, paddr, memsz, align)) in segs.iter().enumerate() {
            img.resize(img.len().next_multiple_of(8), 0);
            let offset = img.len() as u64;
            img.extend_from_slice(data);
            let ph = hdr_len + i * ph_len;
            let filesz = data.len() as u64;
            img[ph..ph + 4].copy_from_slice(&p_type.to_le_bytes());
            if bits == 64 {
                for (off, v) in [(8, offset), (16, *paddr), (24, *paddr), (32, filesz), (40, *memsz), (48, *align)] {
                    img[ph + off..ph + off + 8].copy_from_slice(&v.to_le_bytes());
                }
            } else {
                for (off, v) in [(4, offset), (8, *paddr), (12, *paddr), (16, filesz), (20, *memsz), (28, *align)] {
                    img[ph + off..ph + off + 4].copy_from_slice(&(v as u32).to_le_bytes());
                }
            }
        }
        img
    }

    /// A PVH kernel of either class: one PT_LOAD at 1 MiB (16 bytes, 64 in memory), the entry note `desc`.
    fn pvh_elf(bits: u8, desc: &[u8]) -> Vec<u8> {
        let machine = if bits == 64 { EM_X86_64 } else { EM_386 };
        let notes = [note(b"GNU\0", 3, &[1, 2, 3, 4, 5], 4), note(XEN_NOTE_NAME, 18, desc, 4)].concat();
        elf(bits, machine, 0x10_0000, &[load_seg(0x10_0000, 16, 64), note_seg(notes)])
    }

    #[test]
    fn elf32_pvh_kernel_boots_with_pvh() {
        let (layout, memory) = guest(16 * MIB);
        // Dirty the memory the segment's memsz covers: the loader must zero it.
        memory.write_slice(&[0xee; 64], GuestAddress(0x10_0000)).unwrap();
        let image = pvh_elf(32, &0x10_0008u32.to_le_bytes());
        let info = load_elf(&memory, &layout, &boot_config(image, BootProtocol::Auto, None), 0xe0000).unwrap();
        assert_eq!(info.protocol, BootProtocol::Pvh);
        assert_eq!(
            info.entry,
            EntryPoint::Protected32 { eip: 0x10_0008, esi: 0, ebx: super::super::PVH_INFO_ADDR as u32 }
        );
        assert_eq!(info.kernel_range, (0x10_0000, 0x10_0040));
        let loaded = read_bytes(&memory, 0x10_0000, 64);
        assert_eq!(&loaded[..16], &(0..16u8).map(|i| i | 0x80).collect::<Vec<_>>()[..]);
        assert_eq!(&loaded[16..], &[0u8; 48][..], "memsz beyond filesz is zeroed");
        assert_eq!(
            memory.read_obj::<u32>(GuestAddress(super::super::PVH_INFO_ADDR)).unwrap(),
            pvh::XEN_HVM_START_MAGIC
        );
        // --boot pvh takes it too; the 64-bit entry and the bzImage entries do not exist.
        let image = pvh_elf(32, &0x10_0008u32.to_le_bytes());
        assert!(load_elf(&memory, &layout, &boot_config(image.clone(), BootProtocol::Pvh, None), 0).is_ok());
        for p in [BootProtocol::Linux64, BootProtocol::Linux32, BootProtocol::Legacy] {
            let e = load_elf(&memory, &layout, &boot_config(image.clone(), p, None), 0).unwrap_err();
            assert!(matches!(e, BootError::ProtocolMismatch { .. }), "{p:?}: {e}");
        }
    }

    #[test]
    fn elf32_images_are_checked() {
        let p = Path::new("k");
        let entry = 0x10_0000u32.to_le_bytes();
        let xen = || note_seg(note(XEN_NOTE_NAME, 18, &entry, 4));
        // Segment data beyond the end of the file.
        let mut img = elf(32, EM_386, 0x10_0000, &[load_seg(0x10_0000, 16, 16), xen()]);
        let filesz_at = 52 + 16;
        img[filesz_at..filesz_at + 4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        let e = parse_elf(&img, p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        // A note segment beyond the end of the file.
        let mut img = elf(32, EM_386, 0x10_0000, &[load_seg(0x10_0000, 16, 16), xen()]);
        let note_offset_at = 52 + 32 + 4;
        img[note_offset_at..note_offset_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_elf(&img, p).unwrap_err().to_string().contains("truncated"));
        // Program headers beyond the end of the file, and a header cut short.
        let img = elf(32, EM_386, 0x10_0000, &[load_seg(0x10_0000, 16, 16), xen()]);
        assert!(parse_elf(&img[..60], p).unwrap_err().to_string().contains("truncated"));
        assert!(parse_elf(&img[..40], p).unwrap_err().to_string().contains("truncated"));
        assert!(parse_elf(&img[..8], p).unwrap_err().to_string().contains("truncated"));
        // Segments that do not fit the guest: above its RAM, at the top of the 32-bit space, below 1 MiB.
        let (layout, memory) = guest(16 * MIB);
        for (paddr, memsz) in [(0x2000_0000u64, 16u64), (0xffff_fff0, 0x100), (0x1000, 16)] {
            let img = elf(32, EM_386, paddr, &[load_seg(paddr, 16, memsz), xen()]);
            let e = load_elf(&memory, &layout, &boot_config(img, BootProtocol::Auto, None), 0).unwrap_err();
            assert!(matches!(e, BootError::KernelDoesNotFit { .. }), "{paddr:#x}: {e}");
        }
        // A PVH note too short for an address.
        let img =
            elf(32, EM_386, 0x10_0000, &[load_seg(0x10_0000, 16, 16), note_seg(note(XEN_NOTE_NAME, 18, &[1, 2], 4))]);
        assert!(parse_elf(&img, p).unwrap_err().to_string().contains("shorter than an address"));
    }

    #[test]
    fn elf64_pvh_note_is_found_in_any_pt_note() {
        let (layout, memory) = guest(16 * MIB);
        let xen = note(XEN_NOTE_NAME, 18, &0x10_0004u64.to_le_bytes(), 4);
        let other = note(b"GNU\0", 3, &[0xaa; 20], 4);
        let load = load_seg(0x10_0000, 16, 16);
        // The Xen note in the first PT_NOTE, another note in a later one (linux-loader
        // alone would report no PVH entry), and the other way round.
        for segs in [
            [load.clone(), note_seg(xen.clone()), note_seg(other.clone())],
            [load.clone(), note_seg(other.clone()), note_seg(xen.clone())],
        ] {
            let img = elf(64, EM_X86_64, 0x10_0000, &segs);
            assert_eq!(parse_elf(&img, Path::new("k")).unwrap().pvh_entry, Some(0x10_0004));
            let info = load_elf(&memory, &layout, &boot_config(img, BootProtocol::Auto, None), 0).unwrap();
            assert_eq!(info.protocol, BootProtocol::Pvh);
            assert!(matches!(info.entry, EntryPoint::Protected32 { eip: 0x10_0004, .. }));
        }
        // Without the note: the 64-bit entry at e_entry.
        let img = elf(64, EM_X86_64, 0x10_0000, &[load.clone(), note_seg(other)]);
        let info = load_elf(&memory, &layout, &boot_config(img, BootProtocol::Auto, None), 0).unwrap();
        assert_eq!(info.protocol, BootProtocol::Linux64);
        assert_eq!(info.entry, EntryPoint::Long64 { rip: 0x10_0000, rsi: ZERO_PAGE_ADDR });
        // The same 64-bit kernel from pvh_elf: found behind a GNU note in the same segment.
        let img = pvh_elf(64, &0x10_0010u64.to_le_bytes());
        assert_eq!(parse_elf(&img, Path::new("k")).unwrap().pvh_entry, Some(0x10_0010));
    }

    #[test]
    fn pvh_note_parsing() {
        let entry = 0x1234_5678u32.to_le_bytes();
        // 4-byte and 8-byte padded segments; descriptors of 4 and 8 bytes.
        let notes = [note(b"Linux\0", 1, &[9; 3], 4), note(XEN_NOTE_NAME, 18, &entry, 4)].concat();
        assert_eq!(find_pvh_note(&notes, 4), Ok(Some(0x1234_5678)));
        let notes = [note(b"GNU\0", 5, &[7; 12], 8), note(XEN_NOTE_NAME, 18, &(1u64 << 33).to_le_bytes(), 8)].concat();
        assert_eq!(find_pvh_note(&notes, 8), Ok(Some(1 << 33)));
        // Same type with another owner, another type of Xen's, a name without its NUL: no entry.
        let notes = [note(b"Xex\0", 18, &entry, 4), note(XEN_NOTE_NAME, 17, &entry, 4), note(b"Xen", 18, &entry, 4)];
        assert_eq!(find_pvh_note(&notes.concat(), 4), Ok(None));
        // Truncated or absurd sizes end the search without panicking.
        let mut cut = note(XEN_NOTE_NAME, 18, &entry, 4);
        cut.truncate(cut.len() - 1);
        assert_eq!(find_pvh_note(&cut, 4), Ok(None));
        let mut huge = note(b"A\0", 1, &[], 4);
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(find_pvh_note(&huge, 4), Ok(None));
        assert_eq!(find_pvh_note(&[0; 11], 4), Ok(None));
        assert_eq!(find_pvh_note(&[], 4), Ok(None));
        assert!(find_pvh_note(&note(XEN_NOTE_NAME, 18, &[1, 2, 3], 4), 4).is_err());
    }

    /// A bzImage: 4 setup sectors, `payload` bytes of protected-mode kernel, the
    /// header ending at `header_end`, the setup bytes after it all 0xaa.
    struct Bz {
        version: u16,
        header_end: usize,
        relocatable: bool,
        kernel_alignment: u32,
        pref_address: u64,
        init_size: u32,
        initrd_addr_max: u32,
        xloadflags: u16,
        payload: usize,
    }

    impl Default for Bz {
        fn default() -> Self {
            Bz {
                version: 0x020f,
                header_end: 0x26c,
                relocatable: false,
                kernel_alignment: 0x20_0000,
                pref_address: 0x100_0000,
                init_size: 0x40_0000,
                initrd_addr_max: 0x7fff_ffff,
                xloadflags: XLF_KERNEL_64,
                payload: 4096,
            }
        }
    }

    impl Bz {
        fn image(&self) -> Vec<u8> {
            let mut img = vec![0u8; 5 * 512];
            img[0x1f1] = 4;
            img[0x1f4..0x1f8].copy_from_slice(&((self.payload as u32).div_ceil(16)).to_le_bytes());
            img[0x1fe..0x200].copy_from_slice(&BOOT_FLAG.to_le_bytes());
            img[0x200] = 0xeb;
            img[0x201] = (self.header_end - 0x202) as u8;
            img[0x202..0x206].copy_from_slice(b"HdrS");
            img[0x206..0x208].copy_from_slice(&self.version.to_le_bytes());
            img[0x211] = LOADED_HIGH;
            img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
            img[0x22c..0x230].copy_from_slice(&self.initrd_addr_max.to_le_bytes());
            img[0x230..0x234].copy_from_slice(&self.kernel_alignment.to_le_bytes());
            img[0x234] = u8::from(self.relocatable);
            img[0x236..0x238].copy_from_slice(&self.xloadflags.to_le_bytes());
            img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
            img[0x258..0x260].copy_from_slice(&self.pref_address.to_le_bytes());
            img[0x260..0x264].copy_from_slice(&self.init_size.to_le_bytes());
            // Setup code after the header (what the jump at 0x200 skips to).
            for b in &mut img[self.header_end..0x300] {
                *b = 0xaa;
            }
            img.extend((0..self.payload).map(|i| (i % 251) as u8));
            img
        }

        fn load(&self, memory_size: u64, initrd: Option<Vec<u8>>) -> (Result<BootInfo, BootError>, GuestMemoryMmap) {
            let (layout, memory) = guest(memory_size);
            let config = boot_config(self.image(), BootProtocol::Auto, initrd);
            (load_bzimage(&memory, &layout, &config, 0xe0000), memory)
        }
    }

    #[test]
    fn non_relocatable_bzimage_loads_at_1mib() {
        // pref_address 16 MiB: loaded at 1 MiB all the same, the kernel moves itself.
        let bz = Bz::default();
        let (info, memory) = bz.load(64 * MIB, None);
        let info = info.unwrap();
        assert_eq!(info.entry, EntryPoint::Long64 { rip: 0x10_0200, rsi: ZERO_PAGE_ADDR });
        assert_eq!(info.kernel_range, (MIB, 16 * MIB + 0x40_0000), "init_size counts from pref_address");
        assert_eq!(read_bytes(&memory, MIB, 4096), bz.image()[5 * 512..].to_vec());
        let zp = zero_page(&memory);
        assert_eq!(u32::from_le_bytes(zp[0x214..0x218].try_into().unwrap()), 0x10_0000, "code32_start");
        // pref_address 0 (no preference): 1 MiB too, and the kernel runs there.
        let bz = Bz { pref_address: 0, ..Bz::default() };
        let (info, _) = bz.load(64 * MIB, None);
        assert_eq!(info.unwrap().kernel_range, (MIB, MIB + 0x40_0000));
        // The 32-bit entry of a kernel without XLF_KERNEL_64: 1 MiB as well.
        let bz = Bz { xloadflags: 0, ..Bz::default() };
        let (info, _) = bz.load(64 * MIB, None);
        assert_eq!(info.unwrap().entry, EntryPoint::Protected32 { eip: 0x10_0000, esi: ZERO_PAGE_ADDR as u32, ebx: 0 });
    }

    #[test]
    fn relocatable_bzimage_placement() {
        let reloc = Bz { relocatable: true, ..Bz::default() };
        let placement = |bz: &Bz, mem: u64| {
            let (layout, _) = guest(mem);
            let parsed = parse_bzimage(&bz.image(), Path::new("bz")).unwrap();
            place_bzimage(&parsed, bz.payload as u64, &layout)
        };
        // Loaded at 1 MiB; runs from pref_address.
        let p = placement(&reloc, 64 * MIB).unwrap();
        assert_eq!((p.load_addr, p.runtime_start, p.end), (MIB, 16 * MIB, 20 * MIB));
        let (info, _) = reloc.load(64 * MIB, None);
        assert_eq!(info.unwrap().entry, EntryPoint::Long64 { rip: MIB + 0x200, rsi: ZERO_PAGE_ADDR });
        // No preference: it runs at the first kernel_alignment boundary after where it was loaded.
        let p = placement(&Bz { pref_address: 0, ..reloc }, 64 * MIB).unwrap();
        assert_eq!((p.load_addr, p.runtime_start, p.end), (MIB, 2 * MIB, 6 * MIB));
        // No alignment stated: it runs where it was loaded; a pref_address off the alignment: align_up(pref_address).
        let p = placement(&Bz { kernel_alignment: 0, pref_address: 0, ..reloc }, 64 * MIB).unwrap();
        assert_eq!((p.load_addr, p.runtime_start), (MIB, MIB));
        let p = placement(&Bz { pref_address: 3 * MIB, ..reloc }, 64 * MIB).unwrap();
        assert_eq!((p.load_addr, p.runtime_start), (MIB, 4 * MIB));
        // An alignment that puts the kernel beyond RAM, or a pref_address near 2^64: errors.
        let e = placement(&Bz { kernel_alignment: 0x8000_0000, ..reloc }, 64 * MIB).unwrap_err();
        assert!(matches!(e, BootError::KernelDoesNotFit { start: 0x8000_0000, .. }), "{e}");
        let e = placement(&Bz { pref_address: u64::MAX - 5, ..reloc }, 64 * MIB).unwrap_err();
        assert!(matches!(e, BootError::KernelDoesNotFit { .. }), "{e}");
    }

    #[test]
    fn init_size_counts_from_the_runtime_start() {
        // 16 MiB + 8 MiB does not fit 20 MiB of RAM, though 1 MiB + 8 MiB would.
        let bz = Bz { init_size: 8 << 20, ..Bz::default() };
        let (info, _) = bz.load(20 * MIB, None);
        assert!(matches!(info, Err(BootError::KernelDoesNotFit { start: 0x100_0000, end: 0x180_0000, .. })));
        // Neither does a pref_address beyond RAM, one below 1 MiB, or one that overflows.
        for pref_address in [0x1_0000_0000, 0x1000, u64::MAX - 0x1000] {
            let (info, _) = Bz { pref_address, ..Bz::default() }.load(64 * MIB, None);
            assert!(matches!(info, Err(BootError::KernelDoesNotFit { .. })), "{pref_address:#x}");
        }
        // The initrd goes above runtime_start + init_size (24 MiB), not load address + init_size.
        let (info, _) = bz.load(64 * MIB, Some(vec![7; 8192]));
        let (addr, _) = info.unwrap().initrd.unwrap();
        assert!(addr >= 24 * MIB);
        // With initrd_addr_max inside the kernel's window, there is no room for it.
        let squeezed = Bz { init_size: 8 << 20, initrd_addr_max: (20 * MIB - 1) as u32, ..Bz::default() };
        let (info, _) = squeezed.load(64 * MIB, Some(vec![7; 8192]));
        assert!(matches!(info, Err(BootError::InitrdDoesNotFit { kernel_end: 0x180_0000, .. })), "{info:?}");
    }

    #[test]
    fn short_setup_header_is_copied_for_its_length_only() {
        // Protocol 2.04: the header ends at 0x230; 0x230.. is setup code (0xaa).
        let bz = Bz { version: 0x0204, header_end: 0x230, ..Bz::default() };
        let image = bz.image();
        let parsed = parse_bzimage(&image, Path::new("bz")).unwrap();
        assert_eq!(parsed.header_len, 0x230 - 0x1f1);
        let (info, memory) = bz.load(64 * MIB, None);
        // Without pref_address and init_size (2.10) the kernel is only its payload.
        assert_eq!(info.unwrap().kernel_range, (MIB, MIB + 4096));
        let zp = zero_page(&memory);
        let end = 0x1f1 + std::mem::size_of::<setup_header>();
        assert!(zp[0x230..end].iter().all(|&b| b == 0), "{:x?}", &zp[0x230..end]);
        // The header's own bytes are the image's, but for the fields the loader fills.
        let loader_fields = [0x210..0x211, 0x214..0x220, 0x228..0x22c];
        for i in 0x1f1..0x230 {
            if !loader_fields.iter().any(|r| r.contains(&i)) {
                assert_eq!(zp[i], image[i], "byte {i:#x}");
            }
        }
        // Protocol 2.12 with a header that ends before pref_address: it is absent, not 0xaaaa...
        let bz = Bz { version: 0x020c, header_end: 0x240, ..Bz::default() };
        let (info, memory) = bz.load(64 * MIB, None);
        assert_eq!(info.unwrap().kernel_range, (MIB, MIB + 4096));
        assert!(zero_page(&memory)[0x240..end].iter().all(|&b| b == 0));
        // A header too short for protocol 2.04's own fields is refused.
        let e = Bz { header_end: 0x220, ..Bz::default() }.load(64 * MIB, None).0.unwrap_err().to_string();
        assert!(e.contains("setup header ends at 0x220"), "{e}");
    }

    #[test]
    fn direct_boots_write_the_bda_and_reserve_kvm_pages() {
        use crate::interrupt::{KVM_IDENTITY_MAP_ADDR, KVM_PRIVATE_PAGES_SIZE};
        let kvm_pages = (KVM_IDENTITY_MAP_ADDR, KVM_PRIVATE_PAGES_SIZE, 2u32);
        let images = [
            (Bz::default().image(), BootProtocol::Linux64),
            (Bz::default().image(), BootProtocol::Linux32),
            (elf(64, EM_X86_64, 0x10_0000, &[load_seg(0x10_0000, 16, 16)]), BootProtocol::Linux64),
            (pvh_elf(64, &0x10_0000u64.to_le_bytes()), BootProtocol::Pvh),
            (pvh_elf(32, &0x10_0000u32.to_le_bytes()), BootProtocol::Pvh),
        ];
        for (image, protocol) in images {
            let (layout, memory) = guest(64 * MIB);
            let info = super::super::load(&memory, &layout, &boot_config(image, protocol, None)).unwrap();
            assert_eq!(info.protocol, protocol);
            assert_eq!(memory.read_obj::<u16>(GuestAddress(0x40e)).unwrap(), 0x9fc0, "{protocol:?}");
            assert_eq!(memory.read_obj::<u16>(GuestAddress(0x413)).unwrap(), 639, "{protocol:?}");
            // The e820 map the kernel reads has KVM's pages reserved.
            let map: Vec<(u64, u64, u32)> = if protocol == BootProtocol::Pvh {
                let info_addr = super::super::PVH_INFO_ADDR;
                let table = memory.read_obj::<u64>(GuestAddress(info_addr + 40)).unwrap();
                let n = memory.read_obj::<u32>(GuestAddress(info_addr + 48)).unwrap() as u64;
                (0..n)
                    .map(|i| {
                        let e = read_bytes(&memory, table + 24 * i, 24);
                        (u64_at(&e, 0).unwrap(), u64_at(&e, 8).unwrap(), u32_at(&e, 16).unwrap())
                    })
                    .collect()
            } else {
                let zp = zero_page(&memory);
                (0..usize::from(zp[0x1e8]))
                    .map(|i| {
                        let e = &zp[0x2d0 + 20 * i..];
                        (u64_at(e, 0).unwrap(), u64_at(e, 8).unwrap(), u32_at(e, 16).unwrap())
                    })
                    .collect()
            };
            assert!(map.contains(&kvm_pages), "{protocol:?}: {map:x?}");
            assert!(map.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0), "sorted, disjoint: {map:x?}");
        }
    }
}
