//! Test disks for booting SeaBIOS (issue 7), shared by the QEMU reference test
//! (`tests/tests/qemu_seabios.rs`) and rvmm's own firmware-boot test.
//!
//! [`write_boot_disk`] writes a raw disk whose MBR is a few bytes of 16-bit real-mode
//! code ([`boot_sector`]): it prints [`MBR_MARKER`] on COM1 by polling the 16550 and
//! then writes [`MBR_EXIT_STATUS`] to the isa-debug-exit port 0xf4. It uses no BIOS
//! interrupts (`int` is not available to guests on every host's KVM), so it shows only
//! that the firmware found the disk, read LBA 0 to 0000:7C00 and jumped to it.
//! [`write_unbootable_disk`] writes the same disk without the 0x55 0xAA signature,
//! which SeaBIOS must refuse ("Boot failed: not a bootable disk", then
//! "No bootable device.").
//!
//! The strings in [`BOOT_SERIAL`], [`BOOT_DEBUG`] and [`NO_BOOT_SERIAL`] are what
//! Debian's SeaBIOS 1.16.2 (`bios-256k.bin`) prints under QEMU 7.2 `-M pc` with these
//! disks on virtio-blk-pci.

use std::io;
use std::path::{Path, PathBuf};

/// Where Debian's `seabios` package puts the 256 KiB SeaBIOS image (the one QEMU's
/// `pc` and `q35` machines load).
pub const SEABIOS_BIOS_256K: &str = "/usr/share/seabios/bios-256k.bin";

/// The size of the disks [`write_boot_disk`] and [`write_unbootable_disk`] write: 1 MiB,
/// 2048 sectors (SeaBIOS logs `PCHS=2/16/63 ... s=2048` for it).
pub const BOOT_DISK_SIZE: usize = 1 << 20;

/// What the boot sector prints on COM1.
pub const MBR_MARKER: &str = "rvmm-mbr: hello\r\n";

/// The status the boot sector writes to port 0xf4 (isa-debug-exit). QEMU then exits
/// with `(42 << 1) | 1` = 85.
pub const MBR_EXIT_STATUS: u8 = 42;

/// Serial (COM1) text that shows SeaBIOS booted [`write_boot_disk`]'s disk: the banner,
/// the boot message and the MBR's marker.
///
/// SeaBIOS's serial console (`sercon`) emulates a text screen and sends characters
/// lazily, so the end of "Booting from Hard Disk...\n" is still buffered when the MBR
/// takes over: COM1 shows `Booting from Hard Disk..rvmm-mbr: hello\r\n`. Match the
/// message without the dots.
pub const BOOT_SERIAL: &[&str] = &["SeaBIOS (version", "Booting from Hard Disk", MBR_MARKER];

/// Debug-console (port 0x402) lines that show SeaBIOS found the machine's parts and
/// jumped to the MBR. "Found N cpu(s)" depends on the vCPU count and is left to the test.
pub const BOOT_DEBUG: &[&str] = &["Found QEMU fw_cfg", "found virtio-blk at", "Booting from 0000:7c00"];

/// Serial (COM1) text that shows SeaBIOS read [`write_unbootable_disk`]'s disk and
/// refused it for the missing signature, then gave up. With a reboot timeout
/// (`etc/boot-fail-wait`, QEMU's `-boot reboot-timeout=MS`) the last line goes on with
/// "  Retrying in N seconds." and SeaBIOS resets the machine; without one (QEMU's
/// default, -1) it waits forever.
pub const NO_BOOT_SERIAL: &[&str] = &["Boot failed: not a bootable disk", "No bootable device."];

/// Offset of the message in the boot sector.
const MSG_OFFSET: usize = 0x2a;

/// The boot sector's code, hand-assembled for 16-bit real mode (checked with
/// `objdump -D -b binary -m i8086`). It is position-independent: it finds its message
/// with call/pop and reads it through CS, so it runs at 0000:7C00 or 07C0:0000 with any
/// DS. It needs only the stack SeaBIOS leaves.
#[rustfmt::skip]
const CODE: [u8; MSG_OFFSET] = [
    0xfa,                   // 00: cli
    0xfc,                   // 01: cld                  ; lodsb counts up
    0xe8, 0x00, 0x00,       // 02: call 0x05            ; pushes the offset of 0x05
    0x5e,                   // 05: pop si               ; si = offset of 0x05 in CS
    0x83, 0xc6, 0x25,       // 06: add si, 0x25         ; si = message (0x05 + 0x25 = 0x2a)
    0xba, 0xfd, 0x03,       // 09: mov dx, 0x3fd        ; COM1 line status register
                            // next_char:
    0x2e, 0xac,             // 0c: cs lodsb             ; al = cs:[si], si += 1
    0x84, 0xc0,             // 0e: test al, al
    0x74, 0x10,             // 10: jz 0x22 (done)       ; NUL ends the message
    0x88, 0xc4,             // 12: mov ah, al           ; keep the character
                            // wait_thre:
    0xec,                   // 14: in al, dx            ; read LSR
    0xa8, 0x20,             // 15: test al, 0x20        ; THR empty?
    0x74, 0xfb,             // 17: jz 0x14 (wait_thre)
    0x88, 0xe0,             // 19: mov al, ah
    0xb2, 0xf8,             // 1b: mov dl, 0xf8         ; dx = 0x3f8, COM1 data
    0xee,                   // 1d: out dx, al
    0xb2, 0xfd,             // 1e: mov dl, 0xfd         ; dx = 0x3fd again
    0xeb, 0xea,             // 20: jmp 0x0c (next_char)
                            // done:
    0xb0, MBR_EXIT_STATUS,  // 22: mov al, 42
    0xe6, 0xf4,             // 24: out 0xf4, al         ; isa-debug-exit
    0xfa,                   // 26: cli
    0xf4,                   // 27: hlt
    0xeb, 0xfe,             // 28: jmp 0x28             ; if the exit port is missing
];

/// The 512-byte boot sector: [`CODE`], then [`MBR_MARKER`] and a NUL at offset 0x2a,
/// zeroes (no partition table), and 0x55 0xAA at offsets 510-511 if `signed`.
pub fn boot_sector(signed: bool) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[..MSG_OFFSET].copy_from_slice(&CODE);
    s[MSG_OFFSET..MSG_OFFSET + MBR_MARKER.len()].copy_from_slice(MBR_MARKER.as_bytes());
    // s[MSG_OFFSET + MBR_MARKER.len()] stays 0: the terminator.
    if signed {
        s[510] = 0x55;
        s[511] = 0xaa;
    }
    s
}

/// Writes a raw disk image of [`BOOT_DISK_SIZE`] bytes at `path` (replacing any file)
/// whose LBA 0 is [`boot_sector`]`(true)`, with zeroes after it.
pub fn write_boot_disk(path: &Path) -> io::Result<()> {
    write_disk(path, &boot_sector(true))
}

/// Like [`write_boot_disk`], but without the 0x55 0xAA boot signature (the code is
/// still there), so firmware must not boot it.
pub fn write_unbootable_disk(path: &Path) -> io::Result<()> {
    write_disk(path, &boot_sector(false))
}

fn write_disk(path: &Path, sector0: &[u8; 512]) -> io::Result<()> {
    let mut disk = vec![0u8; BOOT_DISK_SIZE];
    disk[..512].copy_from_slice(sector0);
    std::fs::write(path, disk)
}

/// The SeaBIOS image to boot: `$RVMM_SEABIOS` if set, else [`SEABIOS_BIOS_256K`];
/// `None` if that file does not exist (tests then skip).
pub fn seabios_bios() -> Option<PathBuf> {
    let p = std::env::var_os("RVMM_SEABIOS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(SEABIOS_BIOS_256K));
    p.is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_layout() {
        let s = boot_sector(true);
        assert_eq!(&s[510..], &[0x55, 0xaa]);
        assert_eq!(&boot_sector(false)[..510], &s[..510]);
        assert_eq!(&boot_sector(false)[510..], &[0, 0]);
        // The message follows the code and is NUL-terminated, well before the
        // partition table (0x1be).
        let end = MSG_OFFSET + MBR_MARKER.len();
        assert_eq!(&s[MSG_OFFSET..end], MBR_MARKER.as_bytes());
        assert_eq!(s[end], 0);
        assert!(end < 0x1be);
        // call 0x05 / pop si / add si, imm8: si lands on the message.
        assert_eq!(0x05 + s[0x08] as usize, MSG_OFFSET);
        // Short jumps: target = address of the next instruction + rel8.
        let target = |at: usize| (at as isize + 2 + s[at + 1] as i8 as isize) as usize;
        assert_eq!((s[0x10], target(0x10)), (0x74, 0x22)); // jz done
        assert_eq!((s[0x17], target(0x17)), (0x74, 0x14)); // jz wait_thre
        assert_eq!((s[0x20], target(0x20)), (0xeb, 0x0c)); // jmp next_char
        assert_eq!((s[0x28], target(0x28)), (0xeb, 0x28)); // jmp $
        assert_eq!(&s[0x22..0x26], &[0xb0, MBR_EXIT_STATUS, 0xe6, 0xf4]);
        // No `int` (0xcd) in the code.
        assert!(!CODE.contains(&0xcd));
    }

    #[test]
    fn disks_are_written() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("rvmm-seabios-unit-{}.img", std::process::id()));
        write_boot_disk(&path).unwrap();
        let d = std::fs::read(&path).unwrap();
        assert_eq!(d.len(), BOOT_DISK_SIZE);
        assert_eq!(&d[..512], &boot_sector(true));
        assert!(d[512..].iter().all(|&b| b == 0));
        write_unbootable_disk(&path).unwrap();
        let d = std::fs::read(&path).unwrap();
        assert_eq!(d.len(), BOOT_DISK_SIZE);
        assert_eq!(&d[..512], &boot_sector(false));
        let _ = std::fs::remove_file(&path);
    }
}
