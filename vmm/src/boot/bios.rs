//! rvmm's minimal real-mode BIOS (book chapter 2.2): the interrupt vector
//! table, the BIOS data area, and the `int 0x15` E820 handler with its table.
//!
//! The handlers are assembled from `bios/bios.S` at build time. This module
//! writes them to 0xF8000, points the IVT at them, and fills the data block the
//! handlers answer from, all derived from the one [`MemoryLayout`].

use vm_memory::GuestMemoryMmap;

use super::{write_guest, BootError};
use crate::memory::{MemoryLayout, EBDA_START, GIB, HIGH_RAM_START, MIB};

/// The assembled handlers (see `bios/bios.S`).
const BIOS_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bios.bin"));
/// The BIOS's code segment.
pub const BIOS_SEGMENT: u16 = 0xf000;
/// Offset of the handlers in [`BIOS_SEGMENT`] (physical 0xF8000).
pub const BIOS_CODE_OFFSET: u16 = 0x8000;
/// Offset of the data block the handlers read (physical 0xF7000).
pub const BIOS_DATA_OFFSET: u16 = 0x7000;
/// Most e820 entries the data block holds.
pub const BIOS_E820_MAX: usize = 128;

/// BIOS data area: I/O port of COM1.
const BDA_COM1_PORT: u64 = 0x400;
/// BIOS data area: segment of the extended BIOS data area.
pub const BDA_EBDA_SEGMENT: u64 = 0x40e;
/// BIOS data area: conventional ("base") memory in KiB, below the EBDA.
pub const BDA_BASE_MEMORY_KB: u64 = 0x413;

/// Writes the BIOS data area's memory fields that a kernel reads on any boot
/// path: the EBDA segment (0x40E) and the base memory size in KiB (0x413).
/// Both describe the EBDA that [`MemoryLayout::e820_map`] reserves at
/// [`EBDA_START`] (segment 0x9FC0, 639 KiB of base memory), as a PC BIOS
/// leaves them. Kernels read them whatever entry they came through: Linux's
/// `reserve_bios_regions()` reserves from the lower of the two up to 1 MiB,
/// and the RSDP and MP floating pointer searches begin in the EBDA's first KiB.
pub fn write_bda_memory(memory: &GuestMemoryMmap) -> Result<(), BootError> {
    let ebda_segment = (EBDA_START >> 4) as u16;
    let base_kb = (EBDA_START / 1024) as u16;
    write_guest(memory, BDA_EBDA_SEGMENT, &ebda_segment.to_le_bytes(), "BIOS data area")?;
    write_guest(memory, BDA_BASE_MEMORY_KB, &base_kb.to_le_bytes(), "BIOS data area")
}

fn segment_address(offset: u16) -> u64 {
    (u64::from(BIOS_SEGMENT) << 4) + u64::from(offset)
}

/// The (vector, handler offset) pairs at the start of the image, and the default handler.
fn handler_table() -> (Vec<(u8, u16)>, u16) {
    let mut handlers = Vec::new();
    for pair in BIOS_IMAGE.chunks_exact(4) {
        let vector = u16::from_le_bytes([pair[0], pair[1]]);
        let offset = u16::from_le_bytes([pair[2], pair[3]]);
        if vector == 0xffff {
            return (handlers, offset);
        }
        handlers.push((vector as u8, offset));
    }
    // The table is part of our own assembly source; a missing terminator is a build bug.
    unreachable!("bios.S handler table has no 0xffff terminator")
}

/// Installs the BIOS: handlers, data block, IVT and BIOS data area.
pub fn install(memory: &GuestMemoryMmap, layout: &MemoryLayout) -> Result<(), BootError> {
    write_guest(memory, segment_address(BIOS_CODE_OFFSET), BIOS_IMAGE, "BIOS code")?;

    // Interrupt vector table: 256 far pointers (offset, segment) at 0.
    let (handlers, default) = handler_table();
    let mut ivt = [0u8; 256 * 4];
    for vector in 0..256usize {
        let offset = handlers.iter().find(|(v, _)| usize::from(*v) == vector).map_or(default, |(_, o)| *o);
        ivt[vector * 4..vector * 4 + 2].copy_from_slice(&offset.to_le_bytes());
        ivt[vector * 4 + 2..vector * 4 + 4].copy_from_slice(&BIOS_SEGMENT.to_le_bytes());
    }
    write_guest(memory, 0, &ivt, "interrupt vector table")?;

    // BIOS data area (0x400): COM1's port, then what every boot path has.
    write_guest(memory, BDA_COM1_PORT, &0x3f8u16.to_le_bytes(), "BIOS data area")?;
    write_bda_memory(memory)?;

    write_guest(memory, segment_address(BIOS_DATA_OFFSET), &data_block(layout), "BIOS data")
}

/// The data block at F000:7000 that the handlers answer from.
fn data_block(layout: &MemoryLayout) -> Vec<u8> {
    let map = layout.e820_map();
    let count = map.len().min(BIOS_E820_MAX);
    let low_end = layout.low_ram_end();
    // E801: KiB in 1-16 MiB (max 15 MiB), 64 KiB blocks from 16 MiB to the hole.
    let e801_low = ((low_end.min(16 * MIB) - HIGH_RAM_START) / 1024) as u16;
    let e801_high = (low_end.saturating_sub(16 * MIB).min(4 * GIB) / (64 * 1024)) as u16;
    let ext88 = ((low_end - HIGH_RAM_START) / 1024).min(0xffff) as u16;
    let mut data = vec![0u8; 16];
    data[0..4].copy_from_slice(&(count as u32).to_le_bytes());
    data[4..6].copy_from_slice(&e801_low.to_le_bytes());
    data[6..8].copy_from_slice(&e801_high.to_le_bytes());
    data[8..10].copy_from_slice(&ext88.to_le_bytes());
    data[10..12].copy_from_slice(&((EBDA_START / 1024) as u16).to_le_bytes());
    for entry in map.iter().take(count) {
        data.extend_from_slice(&entry.to_bytes());
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_table_covers_int15() {
        let (handlers, default) = handler_table();
        assert!(handlers.iter().any(|(v, _)| *v == 0x15));
        assert!(default >= BIOS_CODE_OFFSET);
        for (_, off) in handlers {
            assert!(usize::from(off - BIOS_CODE_OFFSET) < BIOS_IMAGE.len());
        }
        // The code must end before the data block would be overwritten... and it lives above it.
        assert!(
            segment_address(BIOS_DATA_OFFSET) + 16 + 20 * BIOS_E820_MAX as u64 <= segment_address(BIOS_CODE_OFFSET)
        );
    }

    #[test]
    fn bda_describes_the_reserved_ebda() {
        let layout = MemoryLayout::new(256 * MIB).unwrap();
        let memory = layout.allocate().unwrap();
        write_bda_memory(&memory).unwrap();
        let read16 = |addr: u64| {
            let mut b = [0u8; 2];
            vm_memory::Bytes::read_slice(&memory, &mut b, vm_memory::GuestAddress(addr)).unwrap();
            u16::from_le_bytes(b)
        };
        assert_eq!(read16(BDA_EBDA_SEGMENT), 0x9fc0);
        assert_eq!(read16(BDA_BASE_MEMORY_KB), 639);
        // Exactly what the e820 map reserves: RAM below, the EBDA from there.
        let map = layout.e820_map();
        assert_eq!(map[0].addr + map[0].size, u64::from(read16(BDA_BASE_MEMORY_KB)) * 1024);
        assert_eq!(map[1].addr, u64::from(read16(BDA_EBDA_SEGMENT)) << 4);
        assert_eq!(map[1].kind, crate::memory::E820Type::Reserved);
    }

    #[test]
    fn data_block_matches_layout() {
        let layout = MemoryLayout::new(256 * MIB).unwrap();
        let data = data_block(&layout);
        let count = u32::from_le_bytes(data[0..4].try_into().unwrap()) as usize;
        assert_eq!(count, layout.e820_map().len());
        assert_eq!(data.len(), 16 + 20 * count);
        assert_eq!(u16::from_le_bytes([data[4], data[5]]), 15 * 1024);
        assert_eq!(u16::from_le_bytes([data[6], data[7]]), ((256 - 16) * 16) as u16);
    }
}
