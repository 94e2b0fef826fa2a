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
//!
//! [`write_bios_services_disk`] writes the disk for a stronger boot sector, the probe
//! crate's `MBR_BIOS_SERVICES` (`probes/guest/mbr.S`), which is passed in as bytes (this
//! library does not depend on `rvmm-probes`): that MBR calls SeaBIOS's int 0x13 (EDD
//! check, drive parameters, extended read of LBA 1-16, extended write of LBA 17) and
//! int 0x15 E820, so SeaBIOS's own virtio-blk driver reads and writes the disk through
//! the VMM's device. [`check_bios_services_serial`] and [`check_bios_services_disk`]
//! check its report and the sector it wrote.

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

/// The first sector `MBR_BIOS_SERVICES` reads (LBA 1 to 16, 8192 bytes).
pub const BIOS_SERVICES_READ_LBA: usize = 1;

/// How many sectors `MBR_BIOS_SERVICES` reads and hashes.
pub const BIOS_SERVICES_READ_SECTORS: usize = 16;

/// The sector `MBR_BIOS_SERVICES` writes: [`BIOS_SERVICES_WRITE_PATTERN`] 32 times.
pub const BIOS_SERVICES_WRITE_LBA: usize = 17;

/// The 16 bytes `MBR_BIOS_SERVICES` repeats over the sector it writes.
pub const BIOS_SERVICES_WRITE_PATTERN: &[u8; 16] = b"rvmm-mbr-wrote!!";

/// Byte `i` of the 8192 bytes at LBA 1-16 of [`write_bios_services_disk`]'s disk: no
/// two sectors alike, no sector a repeat of a short pattern, so a wrong LBA, a short
/// read or a shifted buffer all change the hash.
pub fn bios_services_read_byte(i: usize) -> u8 {
    (i.wrapping_mul(131) ^ (i >> 9).wrapping_mul(29) ^ (i >> 3)) as u8
}

/// Writes the disk for `MBR_BIOS_SERVICES`: [`BOOT_DISK_SIZE`] bytes (2048 sectors) at
/// `path`, replacing any file. LBA 0 is `mbr` (512 bytes, signed), LBA 1-16 hold
/// [`bios_services_read_byte`], the rest is zero. Returns the FNV-1a 32 of LBA 1-16,
/// which the MBR must print as `read=ok fnv=0x%08x`.
pub fn write_bios_services_disk(path: &Path, mbr: &[u8]) -> io::Result<u32> {
    if mbr.len() != 512 || mbr[510..] != [0x55, 0xaa] {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "the MBR must be 512 bytes ending in 0x55 0xAA"));
    }
    let disk = bios_services_disk_before(mbr);
    std::fs::write(path, &disk)?;
    Ok(crate::fnv1a32(&disk[BIOS_SERVICES_READ_LBA * 512..(BIOS_SERVICES_READ_LBA + BIOS_SERVICES_READ_SECTORS) * 512]))
}

/// The image [`write_bios_services_disk`] writes.
fn bios_services_disk_before(mbr: &[u8]) -> Vec<u8> {
    let mut disk = vec![0u8; BOOT_DISK_SIZE];
    disk[..512].copy_from_slice(mbr);
    let read = BIOS_SERVICES_READ_LBA * 512..(BIOS_SERVICES_READ_LBA + BIOS_SERVICES_READ_SECTORS) * 512;
    for (i, b) in disk[read].iter_mut().enumerate() {
        *b = bios_services_read_byte(i);
    }
    disk
}

/// Checks the disk at `path` after `mbr` ran on [`write_bios_services_disk`]'s image:
/// LBA [`BIOS_SERVICES_WRITE_LBA`] holds [`BIOS_SERVICES_WRITE_PATTERN`] 32 times and
/// every other byte is as written (nothing else was written, the image kept its size).
/// The error names the first difference.
pub fn check_bios_services_disk(path: &Path, mbr: &[u8]) -> Result<(), String> {
    let disk = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut expected = bios_services_disk_before(mbr);
    let wrote = BIOS_SERVICES_WRITE_LBA * 512..(BIOS_SERVICES_WRITE_LBA + 1) * 512;
    for (i, b) in expected[wrote.clone()].iter_mut().enumerate() {
        *b = BIOS_SERVICES_WRITE_PATTERN[i % 16];
    }
    if disk.len() != expected.len() {
        return Err(format!("the disk is {} bytes, not {}", disk.len(), expected.len()));
    }
    match disk.iter().zip(&expected).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(at) => {
            let sector = at / 512;
            let what = if wrote.contains(&at) { "the written sector" } else { "a sector the MBR must not write" };
            Err(format!(
                "byte {at:#x} (LBA {sector}, {what}) is {:#04x}, expected {:#04x}; LBA {sector}: {:?}",
                disk[at],
                expected[at],
                String::from_utf8_lossy(&disk[sector * 512..(sector + 1) * 512])
            ))
        }
    }
}

/// What `MBR_BIOS_SERVICES` reported in its `e820=` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Summary {
    /// The number of entries int 0x15 E820 returned.
    pub entries: u32,
    /// The sum of the type-1 (RAM) lengths, in KiB.
    pub ram_kib: u32,
}

/// Checks the COM1 output of `MBR_BIOS_SERVICES` on [`write_bios_services_disk`]'s disk
/// (whose LBA 1-16 hash to `fnv`): these lines, in this order, each whole:
///
/// ```text
/// rvmm-mbr: edd=ok
/// rvmm-mbr: sectors=0x800
/// rvmm-mbr: read=ok fnv=0x<fnv>
/// rvmm-mbr: write=ok
/// rvmm-mbr: e820=<N> ram_kib=0x<KiB>
/// rvmm-mbr: done
/// ```
///
/// and no `rvmm-mbr: fail=` line. Returns the `e820=` line's values for the caller to
/// judge against the guest's memory size; the error says what is missing.
pub fn check_bios_services_serial(serial: &str, fnv: u32) -> Result<E820Summary, String> {
    if let Some(at) = serial.find("rvmm-mbr: fail=") {
        let line = serial[at..].lines().next().unwrap_or_default();
        return Err(format!("the MBR reported a failure: {line:?}"));
    }
    let sectors = BOOT_DISK_SIZE / 512;
    let fixed = [
        "rvmm-mbr: edd=ok\r\n".to_string(),
        format!("rvmm-mbr: sectors={sectors:#x}\r\n"),
        format!("rvmm-mbr: read=ok fnv={fnv:#010x}\r\n"),
        "rvmm-mbr: write=ok\r\n".to_string(),
    ];
    let mut rest = serial;
    for line in &fixed {
        let at = rest.find(line.as_str()).ok_or_else(|| format!("no {line:?} (in this order)"))?;
        rest = &rest[at + line.len()..];
    }
    let e820_at = rest.find("rvmm-mbr: e820=").ok_or("no \"rvmm-mbr: e820=\" line after write=ok")?;
    rest = &rest[e820_at + "rvmm-mbr: e820=".len()..];
    let (e820, after) = rest.split_once("\r\n").ok_or("the e820= line does not end")?;
    let parsed = e820.split_once(" ram_kib=0x").and_then(|(n, kib)| {
        Some(E820Summary { entries: n.parse().ok()?, ram_kib: u32::from_str_radix(kib, 16).ok()? })
    });
    let summary = parsed.ok_or_else(|| format!("cannot parse the e820= line {e820:?}"))?;
    if !after.contains("rvmm-mbr: done\r\n") {
        return Err("no \"rvmm-mbr: done\" after the e820= line".into());
    }
    Ok(summary)
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

/// The status the wait boot sector ([`wait_boot_sector`]) writes to port 0xf4 when
/// SeaBIOS's `int 15h AH=86h` returned with the carry flag clear; 3 if it failed.
pub const WAIT_EXIT_STATUS: u8 = 42;

/// A boot sector that asks the BIOS to wait 100 ms (`int 15h AH=86h`, CX:DX =
/// 100000 µs) and then exits through port 0xf4 with [`WAIT_EXIT_STATUS`] (3 if the
/// BIOS refused). SeaBIOS implements the wait with the CMOS RTC's periodic
/// interrupt (IRQ 8, register B's PIE, 1024 Hz): without it the wait never ends.
#[rustfmt::skip]
pub fn wait_boot_sector() -> [u8; 512] {
    const CODE: [u8; 25] = [
        0xfb,                   // 00: sti
        0xb4, 0x86,             // 01: mov ah, 0x86       ; BIOS wait
        0xb9, 0x01, 0x00,       // 03: mov cx, 0x0001     ; CX:DX = 0x000186a0 = 100000 us
        0xba, 0xa0, 0x86,       // 06: mov dx, 0x86a0
        0xcd, 0x15,             // 09: int 0x15
        0x72, 0x04,             // 0b: jc 0x11            ; refused
        0xb0, WAIT_EXIT_STATUS, // 0d: mov al, 42
        0xeb, 0x02,             // 0f: jmp 0x13
        0xb0, 0x03,             // 11: mov al, 3
        0xe6, 0xf4,             // 13: out 0xf4, al       ; isa-debug-exit
        0xfa,                   // 15: cli
        0xf4,                   // 16: hlt
        0xeb, 0xfd,             // 17: jmp 0x16
    ];
    let mut sector = [0u8; 512];
    sector[..CODE.len()].copy_from_slice(&CODE);
    sector[510] = 0x55;
    sector[511] = 0xaa;
    sector
}

/// Writes a [`BOOT_DISK_SIZE`] disk whose MBR is [`wait_boot_sector`].
pub fn write_wait_disk(path: &Path) -> io::Result<()> {
    write_disk(path, &wait_boot_sector())
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
    fn bios_services_disk_and_checks() {
        let path = std::env::temp_dir().join(format!("rvmm-seabios-unit-bs-{}.img", std::process::id()));
        let mut mbr = [0x90u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert!(write_bios_services_disk(&path, &mbr[..511]).is_err());
        let fnv = write_bios_services_disk(&path, &mbr).unwrap();
        let d = std::fs::read(&path).unwrap();
        assert_eq!(d.len(), BOOT_DISK_SIZE);
        assert_eq!(&d[..512], &mbr);
        assert_eq!(fnv, crate::fnv1a32(&d[512..17 * 512]));
        // The read area: sectors differ from each other, and the rest is zero.
        let sectors: Vec<&[u8]> = d[512..17 * 512].chunks(512).collect();
        for (i, a) in sectors.iter().enumerate() {
            assert!(sectors[i + 1..].iter().all(|b| a != b), "sector {} repeats", i + 1);
        }
        assert!(d[17 * 512..].iter().all(|&b| b == 0));
        // Not written yet: LBA 17 is zero.
        let err = check_bios_services_disk(&path, &mbr).unwrap_err();
        assert!(err.contains("LBA 17, the written sector"), "{err}");
        // As the MBR leaves it.
        let mut after = d.clone();
        for i in 0..512 {
            after[17 * 512 + i] = BIOS_SERVICES_WRITE_PATTERN[i % 16];
        }
        std::fs::write(&path, &after).unwrap();
        check_bios_services_disk(&path, &mbr).unwrap();
        after[18 * 512] = 1;
        std::fs::write(&path, &after).unwrap();
        let err = check_bios_services_disk(&path, &mbr).unwrap_err();
        assert!(err.contains("LBA 18, a sector the MBR must not write"), "{err}");
        let _ = std::fs::remove_file(&path);

        // The serial check, on what QEMU printed.
        let good = "Booting from Hard Disk..\r\nrvmm-mbr: edd=ok\r\nrvmm-mbr: sectors=0x800\r\n\
                    rvmm-mbr: read=ok fnv=0x0812abcd\r\nrvmm-mbr: write=ok\r\n\
                    rvmm-mbr: e820=7 ram_kib=0x3fdf3\r\nrvmm-mbr: done\r\n";
        assert_eq!(check_bios_services_serial(good, 0x0812abcd), Ok(E820Summary { entries: 7, ram_kib: 0x3fdf3 }));
        assert!(check_bios_services_serial(good, 0x812abcd0).unwrap_err().contains("fnv=0x812abcd0"));
        let failed = "rvmm-mbr: edd=ok\r\nrvmm-mbr: fail=sectors ah=0x01\r\n";
        assert!(check_bios_services_serial(failed, 0).unwrap_err().contains("fail=sectors ah=0x01"));
        assert!(check_bios_services_serial(&good.replace("done", "dome"), 0x0812abcd).is_err());
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
