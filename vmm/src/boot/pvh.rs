//! The Xen PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h): the
//! kernel is entered in 32-bit protected mode with EBX pointing at an
//! `hvm_start_info` that carries the command line, modules and memory map.

use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::{write_guest, BootError, PVH_INFO_ADDR};
use crate::memory::MemoryLayout;

/// `hvm_start_info.magic`: "xEn3" with bit 7 of the last byte set.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Version 1 adds the memory map fields.
const START_INFO_VERSION: u32 = 1;

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(hvm_start_info);
// SAFETY: a plain C struct of integers; any bit pattern is valid.
unsafe impl ByteValued for StartInfo {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MemmapEntry(hvm_memmap_table_entry);
// SAFETY: a plain C struct of integers; any bit pattern is valid.
unsafe impl ByteValued for MemmapEntry {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModlistEntry(hvm_modlist_entry);
// SAFETY: a plain C struct of integers; any bit pattern is valid.
unsafe impl ByteValued for ModlistEntry {}

/// Writes `hvm_start_info` at [`PVH_INFO_ADDR`], followed by the module list (the
/// initrd, if any) and the memory map. The command line must already be at `cmdline_addr`.
pub fn write_start_info(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    cmdline_addr: u64,
    initrd: Option<(u64, u64)>,
    rsdp_addr: u64,
) -> Result<(), BootError> {
    let info_len = std::mem::size_of::<hvm_start_info>() as u64;
    let modlist_addr = (PVH_INFO_ADDR + info_len + 7) & !7;
    let module_count = u64::from(initrd.is_some());
    let memmap_addr = modlist_addr + module_count * std::mem::size_of::<hvm_modlist_entry>() as u64;
    let map = layout.e820_map();

    let mut bytes = Vec::new();
    for e in &map {
        let entry =
            MemmapEntry(hvm_memmap_table_entry { addr: e.addr, size: e.size, type_: e.kind as u32, reserved: 0 });
        bytes.extend_from_slice(entry.as_slice());
    }
    // Everything must stay below the command line, which sits above it.
    if memmap_addr + bytes.len() as u64 > super::ZERO_PAGE_ADDR.min(cmdline_addr) {
        return Err(BootError::GuestWrite { what: "PVH memory map (too many entries)", addr: memmap_addr });
    }
    write_guest(memory, memmap_addr, &bytes, "PVH memory map")?;
    if let Some((addr, size)) = initrd {
        let module = ModlistEntry(hvm_modlist_entry { paddr: addr, size, cmdline_paddr: 0, reserved: 0 });
        write_guest(memory, modlist_addr, module.as_slice(), "PVH module list")?;
    }
    let info = StartInfo(hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: START_INFO_VERSION,
        flags: 0,
        nr_modules: module_count as u32,
        modlist_paddr: if module_count > 0 { modlist_addr } else { 0 },
        cmdline_paddr: cmdline_addr,
        rsdp_paddr: rsdp_addr,
        memmap_paddr: memmap_addr,
        memmap_entries: map.len() as u32,
        reserved: 0,
    });
    write_guest(memory, PVH_INFO_ADDR, info.as_slice(), "hvm_start_info")
}
