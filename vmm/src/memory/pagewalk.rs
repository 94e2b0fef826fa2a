//! A guest page-table walker (book chapter 2.1, "paging").
//!
//! Translates a guest virtual address to a guest physical one by reading the
//! guest's own page tables out of guest memory, the way the MMU does. rvmm uses
//! it to show the instruction bytes at RIP when a guest crashes; it is also the
//! clearest way to see what CR0, CR4, EFER and CR3 mean together.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Bits 12..51 of an entry: the next table's (or the page's) physical address.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The control registers that decide how an address is translated.
#[derive(Debug, Clone, Copy, Default)]
pub struct PagingMode {
    /// CR0.
    pub cr0: u64,
    /// CR3: the physical address of the top-level table.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// The EFER MSR.
    pub efer: u64,
}

/// Why a translation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// An entry on the way was not present: the guest would take a page fault.
    #[error("page not present at level {level} (entry {entry:#x})")]
    NotPresent {
        /// Level of the table whose entry was not present (4 = PML4).
        level: u8,
        /// The raw entry.
        entry: u64,
    },
    /// A table lies outside guest memory.
    #[error("page table at {0:#x} is outside guest memory")]
    TableOutsideMemory(u64),
    /// A paging mode this walker does not implement (5-level paging).
    #[error("unsupported paging mode")]
    Unsupported,
}

/// Translates `gva` to a guest physical address under `mode`.
pub fn translate(memory: &GuestMemoryMmap, mode: PagingMode, gva: u64) -> Result<u64, WalkError> {
    if mode.cr0 & CR0_PG == 0 {
        // Paging off: linear addresses are physical (segment bases are the caller's business).
        return Ok(gva);
    }
    if mode.cr4 & CR4_LA57 != 0 {
        return Err(WalkError::Unsupported);
    }
    let read = |addr: u64| -> Result<u64, WalkError> {
        memory.read_obj::<u64>(GuestAddress(addr)).map_err(|_| WalkError::TableOutsideMemory(addr))
    };
    if mode.efer & EFER_LMA != 0 {
        // 4-level paging: 9 bits per level from bit 39 down, then the page offset.
        let mut table = mode.cr3 & ADDR_MASK;
        for level in (1..=4u8).rev() {
            let shift = 12 + 9 * (u32::from(level) - 1);
            let index = (gva >> shift) & 0x1ff;
            let entry = read(table + index * 8)?;
            if entry & PRESENT == 0 {
                return Err(WalkError::NotPresent { level, entry });
            }
            // A large page ends the walk at level 3 (1 GiB) or 2 (2 MiB).
            if level > 1 && level < 4 && entry & PAGE_SIZE_BIT != 0 {
                let page_mask = (1u64 << shift) - 1;
                return Ok((entry & ADDR_MASK & !page_mask) | (gva & page_mask));
            }
            table = entry & ADDR_MASK;
        }
        return Ok(table | (gva & 0xfff));
    }
    if mode.cr4 & CR4_PAE != 0 {
        // PAE: a 4-entry PDPT, then 9 + 9 + 12 bits.
        let pdpte = read((mode.cr3 & 0xffff_ffe0) + ((gva >> 30) & 3) * 8)?;
        if pdpte & PRESENT == 0 {
            return Err(WalkError::NotPresent { level: 3, entry: pdpte });
        }
        let pde = read((pdpte & ADDR_MASK) + ((gva >> 21) & 0x1ff) * 8)?;
        if pde & PRESENT == 0 {
            return Err(WalkError::NotPresent { level: 2, entry: pde });
        }
        if pde & PAGE_SIZE_BIT != 0 {
            return Ok((pde & ADDR_MASK & !0x1f_ffff) | (gva & 0x1f_ffff));
        }
        let pte = read((pde & ADDR_MASK) + ((gva >> 12) & 0x1ff) * 8)?;
        if pte & PRESENT == 0 {
            return Err(WalkError::NotPresent { level: 1, entry: pte });
        }
        return Ok((pte & ADDR_MASK) | (gva & 0xfff));
    }
    // Legacy 32-bit paging with 4-byte entries (4 MiB pages need PSE; treat PS the same way).
    let read32 = |addr: u64| -> Result<u64, WalkError> {
        memory.read_obj::<u32>(GuestAddress(addr)).map(u64::from).map_err(|_| WalkError::TableOutsideMemory(addr))
    };
    let gva = gva & 0xffff_ffff;
    let pde = read32((mode.cr3 & 0xffff_f000) + (gva >> 22) * 4)?;
    if pde & PRESENT == 0 {
        return Err(WalkError::NotPresent { level: 2, entry: pde });
    }
    if pde & PAGE_SIZE_BIT != 0 {
        return Ok((pde & 0xffc0_0000) | (gva & 0x3f_ffff));
    }
    let pte = read32((pde & 0xffff_f000) + ((gva >> 12) & 0x3ff) * 4)?;
    if pte & PRESENT == 0 {
        return Err(WalkError::NotPresent { level: 1, entry: pte });
    }
    Ok((pte & 0xffff_f000) | (gva & 0xfff))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    #[test]
    fn long_mode_4k_and_2m_pages() {
        let mem = memory();
        // PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000.
        mem.write_obj(0x2000u64 | 3, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0x3000u64 | 3, GuestAddress(0x2000)).unwrap();
        // PD[0] -> PT; PD[1] is a 2 MiB page at 0x20_0000.
        mem.write_obj(0x4000u64 | 3, GuestAddress(0x3000)).unwrap();
        mem.write_obj(0x20_0000u64 | 0x83, GuestAddress(0x3008)).unwrap();
        // PT[5] maps virtual 0x5000 to physical 0x9000.
        mem.write_obj(0x9000u64 | 3, GuestAddress(0x4000 + 5 * 8)).unwrap();
        let mode = PagingMode { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PAE, efer: EFER_LMA | (1 << 8) };
        assert_eq!(translate(&mem, mode, 0x5123), Ok(0x9123));
        assert_eq!(translate(&mem, mode, 0x20_1234), Ok(0x20_1234));
        assert!(matches!(translate(&mem, mode, 0x6000), Err(WalkError::NotPresent { level: 1, .. })));
        assert!(matches!(translate(&mem, mode, 1 << 39), Err(WalkError::NotPresent { level: 4, .. })));
    }

    #[test]
    fn tables_outside_memory_are_reported() {
        let mem = memory();
        let mode = PagingMode { cr0: CR0_PG, cr3: 0x1_0000_0000, cr4: CR4_PAE, efer: EFER_LMA };
        assert_eq!(translate(&mem, mode, 0), Err(WalkError::TableOutsideMemory(0x1_0000_0000)));
    }

    #[test]
    fn paging_off_is_identity() {
        assert_eq!(translate(&memory(), PagingMode::default(), 0x1234), Ok(0x1234));
    }
}
