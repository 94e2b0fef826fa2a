//! The e820 memory map: how a PC tells its OS which physical ranges are RAM.

/// The type field of an e820 entry (ACPI "address range types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Type {
    /// Usable RAM.
    Ram = 1,
    /// Reserved: firmware, tables, holes the OS must not use.
    Reserved = 2,
    /// ACPI tables the OS may reclaim after reading them.
    Acpi = 3,
    /// ACPI non-volatile storage.
    Nvs = 4,
}

/// One entry of the map, as `struct boot_e820_entry` and `hvm_memmap_table_entry` carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Type,
}

impl E820Entry {
    /// A new entry.
    pub const fn new(addr: u64, size: u64, kind: E820Type) -> Self {
        E820Entry { addr, size, kind }
    }

    /// The 20-byte packed form used by boot_params and by the BIOS's `int 0x15, e820` answer.
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[0..8].copy_from_slice(&self.addr.to_le_bytes());
        out[8..16].copy_from_slice(&self.size.to_le_bytes());
        out[16..20].copy_from_slice(&(self.kind as u32).to_le_bytes());
        out
    }
}
