//! Guest physical memory (book chapter 2.2, "the VMM prepares guest memory").
//!
//! The guest's RAM is ordinary anonymous host memory mapped into the guest
//! physical address space with one KVM memory slot per region. The layout is a
//! PC's:
//!
//! ```text
//! 0x0000_0000 .. 0x0009_fc00  RAM        low memory: boot_params, command line, page tables
//! 0x0009_fc00 .. 0x000a_0000  reserved   EBDA (part of the low RAM slot)
//! 0x000a_0000 .. 0x000e_0000  (hole)     VGA window and option ROMs: not mapped, accesses exit as MMIO
//! 0x000e_0000 .. 0x0010_0000  reserved   BIOS area: ACPI tables, MP table, real-mode BIOS (its own slot)
//! 0x0010_0000 .. low_end      RAM        the kernel, initrd, the rest of the guest's memory
//! 0xc000_0000 .. 0x1_0000_0000 (hole)    32-bit MMIO: IOAPIC, LAPIC, PCI BARs later
//!   0xfeff_c000 .. 0xff00_0000 reserved  KVM's identity map and TSS pages (not backed)
//! 0x1_0000_0000 .. high_end   RAM        what did not fit below the hole
//! ```
//!
//! The e820 map handed to the guest is derived from the same [`MemoryLayout`]
//! that creates the slots, so the two can never disagree.

pub mod allocator;
pub mod e820;
pub mod pagewalk;

use std::fmt;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

pub use e820::{E820Entry, E820Type};

/// One kibibyte.
pub const KIB: u64 = 1 << 10;
/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// End of conventional low memory that the guest may use as RAM.
pub const EBDA_START: u64 = 0x9_fc00;
/// End of the low RAM slot (start of the VGA window).
pub const LOW_RAM_END: u64 = 0xa_0000;
/// Start of the option-ROM and BIOS area that firmware shadows into RAM
/// ([`MemoryLayout::for_firmware`]).
pub const SHADOW_RAM_START: u64 = 0xc_0000;
/// Start of the BIOS area (ACPI tables, MP table, BIOS code).
pub const BIOS_AREA_START: u64 = 0xe_0000;
/// Size of the BIOS area; it ends at 1 MiB.
pub const BIOS_AREA_SIZE: u64 = 0x2_0000;
/// Where "high memory" (above the real-mode megabyte) starts: kernels load here.
pub const HIGH_RAM_START: u64 = MIB;
/// Start of the 32-bit MMIO hole below 4 GiB.
pub const MMIO32_HOLE_START: u64 = 0xc000_0000;
/// Where RAM continues above the hole.
pub const RAM_ABOVE_4G_START: u64 = 4 * GIB;
/// The IOAPIC's MMIO window (in-kernel irqchip).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APICs' MMIO window.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// Smallest guest memory rvmm accepts: low memory, the BIOS area and a few MiB to boot from.
pub const MIN_MEMORY: u64 = 8 * MIB;
/// Largest guest memory rvmm accepts (keeps the layout arithmetic far from overflow).
pub const MAX_MEMORY: u64 = 1 << 40;
/// Guest memory is a whole number of these: KVM memory slots are made of 4 KiB pages.
pub const PAGE_SIZE: u64 = 4 * KIB;

/// Errors while building or mapping guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is below [`MIN_MEMORY`] or above [`MAX_MEMORY`].
    #[error("guest memory of {requested} bytes is out of range: use between {} MiB and {} GiB", MIN_MEMORY / MIB, MAX_MEMORY / GIB)]
    SizeOutOfRange {
        /// What was asked for.
        requested: u64,
    },
    /// The requested size is not a whole number of 4 KiB pages.
    #[error("guest memory of {requested} bytes is not a multiple of 4 KiB (the page size of KVM's memory slots)")]
    SizeNotPageAligned {
        /// What was asked for.
        requested: u64,
    },
    /// The host could not allocate the guest's memory.
    #[error("cannot allocate {size} bytes of guest memory: {source}")]
    Allocate {
        /// Bytes requested.
        size: u64,
        /// What mmap said.
        source: vm_memory::mmap::FromRangesError,
    },
    /// KVM refused a memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} at {guest_addr:#x} failed: {source}")]
    SetSlot {
        /// Slot number.
        slot: u32,
        /// Guest physical start.
        guest_addr: u64,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
}

/// What a region of guest physical memory is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// RAM the guest owns (e820 type 1).
    Ram,
    /// Memory backed like RAM but reserved for firmware tables and BIOS code (e820 type 2).
    Firmware,
}

/// One contiguous range of guest physical memory backed by host memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Guest physical start address.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// RAM or firmware.
    pub kind: RegionKind,
}

impl MemoryRegion {
    /// First address after the region.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// The guest physical memory map for a given memory size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    regions: Vec<MemoryRegion>,
    ram_bytes: u64,
}

impl MemoryLayout {
    /// Lays out `ram_bytes` of guest memory around the legacy holes and the 32-bit MMIO hole.
    ///
    /// `ram_bytes` counts from guest physical 0; the VGA/ROM window
    /// (0xA0000-0xE0000) and the MMIO hole are skipped, and what falls into the
    /// MMIO hole continues above 4 GiB, so the guest gets at least what it asked for
    /// minus the 256 KiB of the VGA window.
    pub fn new(ram_bytes: u64) -> Result<Self, MemoryError> {
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&ram_bytes) {
            return Err(MemoryError::SizeOutOfRange { requested: ram_bytes });
        }
        // KVM_SET_USER_MEMORY_REGION refuses slots that are not whole pages.
        if ram_bytes % PAGE_SIZE != 0 {
            return Err(MemoryError::SizeNotPageAligned { requested: ram_bytes });
        }
        let mut regions = vec![
            MemoryRegion { start: 0, size: LOW_RAM_END, kind: RegionKind::Ram },
            MemoryRegion { start: BIOS_AREA_START, size: BIOS_AREA_SIZE, kind: RegionKind::Firmware },
        ];
        let low_end = ram_bytes.min(MMIO32_HOLE_START);
        regions.push(MemoryRegion { start: HIGH_RAM_START, size: low_end - HIGH_RAM_START, kind: RegionKind::Ram });
        if ram_bytes > MMIO32_HOLE_START {
            regions.push(MemoryRegion {
                start: RAM_ABOVE_4G_START,
                size: ram_bytes - MMIO32_HOLE_START,
                kind: RegionKind::Ram,
            });
        }
        Ok(MemoryLayout { regions, ram_bytes })
    }

    /// The layout for booting PC firmware (SeaBIOS): as [`new`](Self::new), but
    /// the BIOS area is 0xC0000-0xFFFFF, all RAM. This is the "shadow RAM" of a PC
    /// chipset with every PAM segment set to read/write: firmware keeps its
    /// runtime code (a copy of its ROM's top 128 KiB), option ROMs, its low heap
    /// and the tables it builds there. Only the VGA window 0xA0000-0xBFFFF stays
    /// unbacked.
    pub fn for_firmware(ram_bytes: u64) -> Result<Self, MemoryError> {
        let mut layout = Self::new(ram_bytes)?;
        for region in &mut layout.regions {
            if region.kind == RegionKind::Firmware {
                *region = MemoryRegion {
                    start: SHADOW_RAM_START,
                    size: HIGH_RAM_START - SHADOW_RAM_START,
                    kind: RegionKind::Firmware,
                };
            }
        }
        Ok(layout)
    }

    /// The backed regions in ascending address order (one KVM slot each).
    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions
    }

    /// The memory size this layout was made for.
    pub fn ram_bytes(&self) -> u64 {
        self.ram_bytes
    }

    /// End of the RAM that starts at 1 MiB (below the MMIO hole).
    pub fn low_ram_end(&self) -> u64 {
        self.ram_bytes.min(MMIO32_HOLE_START)
    }

    /// The e820 map describing this layout, in ascending order.
    ///
    /// Every backed region appears with the type of its use, and the EBDA at the
    /// top of low memory is carved out as reserved, as on a PC. Nothing that is
    /// not backed is reported as RAM. KVM's private pages (identity map and TSS,
    /// [`KVM_IDENTITY_MAP_ADDR`](crate::interrupt::KVM_IDENTITY_MAP_ADDR)) are
    /// reported as reserved, as QEMU's map does, so that a guest never places a
    /// PCI BAR or anything else over them.
    pub fn e820_map(&self) -> Vec<E820Entry> {
        use crate::interrupt::{KVM_IDENTITY_MAP_ADDR, KVM_PRIVATE_PAGES_SIZE};
        let mut map = Vec::with_capacity(self.regions.len() + 2);
        for region in &self.regions {
            match region.kind {
                RegionKind::Ram if region.start == 0 => {
                    map.push(E820Entry::new(0, EBDA_START, E820Type::Ram));
                    map.push(E820Entry::new(EBDA_START, LOW_RAM_END - EBDA_START, E820Type::Reserved));
                }
                RegionKind::Ram => map.push(E820Entry::new(region.start, region.size, E820Type::Ram)),
                RegionKind::Firmware => map.push(E820Entry::new(region.start, region.size, E820Type::Reserved)),
            }
        }
        // The pages lie in the MMIO hole, which no region overlaps: insert in order.
        let kvm_pages = E820Entry::new(KVM_IDENTITY_MAP_ADDR, KVM_PRIVATE_PAGES_SIZE, E820Type::Reserved);
        let at = map.partition_point(|e| e.addr < KVM_IDENTITY_MAP_ADDR);
        map.insert(at, kvm_pages);
        map
    }

    /// Allocates host memory for every region (anonymous, not yet touched).
    pub fn allocate(&self) -> Result<GuestMemoryMmap, MemoryError> {
        let ranges: Vec<(GuestAddress, usize)> =
            self.regions.iter().map(|r| (GuestAddress(r.start), r.size as usize)).collect();
        GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate { size: self.ram_bytes, source })
    }
}

/// Registers every region of `memory` with KVM, one slot per region, in order.
pub fn register_slots(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in memory.iter().enumerate() {
        register_region(vm, slot as u32, region, 0)?;
    }
    Ok(())
}

/// Maps `image` read-only at guest physical `addr` as KVM slot `slot`
/// (KVM_MEM_READONLY): the guest reads it like memory, and its writes exit to
/// the MMIO bus, where nothing claims them, as writes to a flash chip or ROM
/// would be lost. Returns the host memory behind the slot, which must live as
/// long as the VM. Kept out of the guest's RAM map so that no device can DMA
/// into it.
pub fn map_read_only(vm: &VmFd, slot: u32, addr: u64, image: &[u8]) -> Result<GuestMemoryMmap, MemoryError> {
    let size = image.len() as u64;
    let rom = GuestMemoryMmap::from_ranges(&[(GuestAddress(addr), image.len())])
        .map_err(|source| MemoryError::Allocate { size, source })?;
    let region = rom.iter().next().ok_or(MemoryError::SetSlot {
        slot,
        guest_addr: addr,
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    let fault = || MemoryError::SetSlot { slot, guest_addr: addr, source: kvm_ioctls::Error::new(libc::EFAULT) };
    vm_memory::Bytes::write_slice(region, image, vm_memory::MemoryRegionAddress(0)).map_err(|_| fault())?;
    register_region(vm, slot, region, kvm_bindings::KVM_MEM_READONLY)?;
    Ok(rom)
}

fn register_region(vm: &VmFd, slot: u32, region: &vm_memory::GuestRegionMmap, flags: u32) -> Result<(), MemoryError> {
    let guest_addr = region.start_addr().0;
    let host = region.get_host_address(vm_memory::MemoryRegionAddress(0)).map_err(|_| MemoryError::SetSlot {
        slot,
        guest_addr,
        source: kvm_ioctls::Error::new(libc::EFAULT),
    })?;
    let descriptor = kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: guest_addr,
        memory_size: region.len(),
        userspace_addr: host as u64,
    };
    // SAFETY: the host range [host, host + len) is a live mmap owned by the caller's
    // GuestMemoryMmap, which the VM keeps alive for as long as the VM fd exists.
    unsafe { vm.set_user_memory_region(descriptor) }.map_err(|source| MemoryError::SetSlot { slot, guest_addr, source })
}

/// How many bytes of guest memory are resident in host RAM (pages the guest or
/// the loader touched), by asking the kernel with mincore(2).
pub fn resident_bytes(memory: &GuestMemoryMmap) -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let mut total = 0;
    for region in memory.iter() {
        let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
            continue;
        };
        let pages = region.len().div_ceil(page) as usize;
        let mut vec = vec![0u8; pages];
        // SAFETY: [host, host + len) is one live mapping owned by `memory`, and `vec`
        // has one byte per page of it, as mincore requires.
        let rc = unsafe { libc::mincore(host.cast(), region.len() as usize, vec.as_mut_ptr()) };
        if rc == 0 {
            total += vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * page;
        }
    }
    total
}

impl fmt::Display for MemoryLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.regions {
            writeln!(f, "{:#014x}-{:#014x} {:?}", r.start, r.end(), r.kind)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_no_high_region() {
        let layout = MemoryLayout::new(256 * MIB).unwrap();
        assert_eq!(layout.regions().len(), 3);
        assert_eq!(layout.low_ram_end(), 256 * MIB);
        let e820 = layout.e820_map();
        assert_eq!(e820[0], E820Entry::new(0, EBDA_START, E820Type::Ram));
        let last_ram = e820.iter().rev().find(|e| e.kind == E820Type::Ram).unwrap();
        assert_eq!(last_ram.addr + last_ram.size, 256 * MIB);
        assert!(e820.iter().all(|e| e.kind != E820Type::Ram || e.addr + e.size <= 256 * MIB));
    }

    #[test]
    fn large_guest_continues_above_4g() {
        let layout = MemoryLayout::new(4 * GIB).unwrap();
        let high = layout.regions().last().unwrap();
        assert_eq!(high.start, RAM_ABOVE_4G_START);
        assert_eq!(high.size, GIB);
        assert!(layout.regions().iter().all(|r| r.end() <= MMIO32_HOLE_START || r.start >= 4 * GIB));
    }

    #[test]
    fn e820_matches_slots_exactly() {
        use crate::interrupt::{KVM_IDENTITY_MAP_ADDR, KVM_PRIVATE_PAGES_SIZE};
        let kvm_pages = E820Entry::new(KVM_IDENTITY_MAP_ADDR, KVM_PRIVATE_PAGES_SIZE, E820Type::Reserved);
        for size in [MIN_MEMORY, 256 * MIB, 3 * GIB, 5 * GIB] {
            let layout = MemoryLayout::new(size).unwrap();
            let e820 = layout.e820_map();
            // KVM's private pages are reserved, once; they are not backed.
            assert_eq!(e820.iter().filter(|e| **e == kvm_pages).count(), 1, "{size:#x}");
            assert!(layout.regions().iter().all(|r| r.end() <= kvm_pages.addr || r.start >= kvm_pages.addr + 0x4000));
            let backed: Vec<&E820Entry> = e820.iter().filter(|e| **e != kvm_pages).collect();
            // Every byte of every slot is described once, nothing else is.
            let slot_bytes: u64 = layout.regions().iter().map(|r| r.size).sum();
            let e820_bytes: u64 = backed.iter().map(|e| e.size).sum();
            assert_eq!(slot_bytes, e820_bytes);
            for e in backed {
                assert!(layout.regions().iter().any(|r| e.addr >= r.start && e.addr + e.size <= r.end()));
            }
            // Sorted and non-overlapping.
            for pair in e820.windows(2) {
                assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{pair:?}");
            }
        }
    }

    #[test]
    fn e820_reserves_kvm_private_pages() {
        let small: Vec<(u64, u64, E820Type)> =
            MemoryLayout::new(256 * MIB).unwrap().e820_map().iter().map(|e| (e.addr, e.size, e.kind)).collect();
        assert_eq!(
            small,
            [
                (0, EBDA_START, E820Type::Ram),
                (EBDA_START, 0x400, E820Type::Reserved),
                (BIOS_AREA_START, BIOS_AREA_SIZE, E820Type::Reserved),
                (HIGH_RAM_START, 255 * MIB, E820Type::Ram),
                (0xfeff_c000, 0x4000, E820Type::Reserved),
            ]
        );
        // Above 4 GiB, the RAM there follows the pages.
        let big = MemoryLayout::new(5 * GIB).unwrap().e820_map();
        let n = big.len();
        assert_eq!((big[n - 2].addr, big[n - 2].kind), (0xfeff_c000, E820Type::Reserved));
        assert_eq!((big[n - 1].addr, big[n - 1].size), (RAM_ABOVE_4G_START, 2 * GIB));
    }

    #[test]
    fn firmware_layout_backs_the_whole_shadow_area() {
        let layout = MemoryLayout::for_firmware(256 * MIB).unwrap();
        let starts: Vec<(u64, u64)> = layout.regions().iter().map(|r| (r.start, r.end())).collect();
        assert_eq!(starts, [(0, LOW_RAM_END), (SHADOW_RAM_START, HIGH_RAM_START), (HIGH_RAM_START, 256 * MIB)]);
        assert_eq!(layout.ram_bytes(), 256 * MIB);
        let big = MemoryLayout::for_firmware(5 * GIB).unwrap();
        assert_eq!(big.regions().len(), 4);
        assert_eq!(big.regions()[1].start, SHADOW_RAM_START);
    }

    #[test]
    fn sizes_out_of_range_are_rejected() {
        assert!(matches!(MemoryLayout::new(MIB), Err(MemoryError::SizeOutOfRange { .. })));
        assert!(MemoryLayout::new(MAX_MEMORY + 1).is_err());
        for bad in [256 * MIB + 1, 256 * MIB + 2048, 9 * MIB - 512] {
            let e = MemoryLayout::new(bad).unwrap_err();
            assert!(matches!(e, MemoryError::SizeNotPageAligned { requested } if requested == bad));
            assert!(e.to_string().contains("multiple of 4 KiB"), "{e}");
            assert!(MemoryLayout::for_firmware(bad).is_err());
        }
        assert!(MemoryLayout::new(256 * MIB + 4096).is_ok());
    }
}
