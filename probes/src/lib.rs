//! Probe guest images for rvmm's tests, built by `build.rs` from the C and assembly
//! in `guest/` (see the crate's README.md).
//!
//! Each probe boots, reports what it was handed (boot protocol, command line, memory
//! map, initrd, ACPI, MP table, CPUs, RTC, serial input) as `key: value` lines on COM1,
//! and exits through the debug exit port 0xf4 (status 0 when every self-check passed).
//! Command-line tokens make it also enumerate PCI bus 0 (`pci`) and drive virtio devices
//! over PCI or virtio-mmio (`mmio`, `msix`, `intx`): block (`blk`), network (`net`, with
//! ARP and ping), entropy (`rng`) and console (`console`): see the README.

/// Path of `probe-linux64.elf`: an ELF64 image whose `e_entry` follows the Linux
/// 64-bit boot protocol (RSI = `struct boot_params`), loaded at physical 1 MiB.
pub const LINUX64_ELF: &str = concat!(env!("OUT_DIR"), "/probe-linux64.elf");

/// Path of `probe-pvh.elf`: the same image plus a Xen `PHYS32_ENTRY` note, booted
/// through the PVH entry (32-bit protected mode, EBX = `struct hvm_start_info`).
pub const PVH_ELF: &str = concat!(env!("OUT_DIR"), "/probe-pvh.elf");

/// Path of `probe.bzImage`: a boot protocol 2.15 bzImage with a real-mode setup
/// (E820 via `int 0x15`), a 32-bit entry at offset 0 and a 64-bit entry at 0x200 of
/// the protected-mode payload.
pub const BZIMAGE: &str = concat!(env!("OUT_DIR"), "/probe.bzImage");

/// The bytes of the PVH probe ELF, for a VMM to embed as its default guest.
pub fn hello_pvh_elf() -> &'static [u8] {
    include_bytes!(concat!(env!("OUT_DIR"), "/probe-pvh.elf"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_exist() {
        for p in [LINUX64_ELF, PVH_ELF, BZIMAGE] {
            assert!(std::fs::metadata(p).unwrap().len() > 512, "{p}");
        }
        assert_eq!(&hello_pvh_elf()[..4], b"\x7fELF");
    }

    #[test]
    fn bzimage_header() {
        let bz = std::fs::read(BZIMAGE).unwrap();
        assert_eq!(&bz[0x202..0x206], b"HdrS");
        assert_eq!(u16::from_le_bytes([bz[0x206], bz[0x207]]), 0x020f);
        let setup_sects = bz[0x1f1] as usize;
        let syssize = u32::from_le_bytes(bz[0x1f4..0x1f8].try_into().unwrap()) as usize;
        let payload = bz.len() - (setup_sects + 1) * 512;
        assert_eq!(syssize, payload.div_ceil(16));
    }
}
