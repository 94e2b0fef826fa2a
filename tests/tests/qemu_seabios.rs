//! Boots Debian's SeaBIOS under QEMU `-M pc` with TCG, the independent reference for
//! issue 7, from the MBR test disks of `rvmm_tests::seabios` on virtio-blk-pci: to show
//! that the disks and the log lines the rvmm test expects are right before rvmm is
//! judged by them. One of them boots `rvmm_probes::MBR_BIOS_SERVICES`, which uses
//! SeaBIOS's int 0x13 and int 0x15 services (EDD, read, write, E820).
//!
//! COM1 is QEMU's stdio (SeaBIOS's `sercon` prints the banner and boot messages there
//! because QEMU runs it with `-nographic`); SeaBIOS's debug log (port 0x402) goes to a
//! file. Each test skips (with a notice on stderr) when `qemu-system-x86_64` or
//! `/usr/share/seabios/bios-256k.bin` is missing. Every QEMU run is killed after a
//! time limit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rvmm_tests::seabios::{
    check_bios_services_disk, check_bios_services_serial, seabios_bios, write_bios_services_disk, write_boot_disk,
    write_unbootable_disk, write_wait_disk, BOOT_DEBUG, BOOT_SERIAL, MBR_EXIT_STATUS, MBR_MARKER, NO_BOOT_SERIAL,
    SEABIOS_BIOS_256K, WAIT_EXIT_STATUS,
};
use rvmm_tests::{qemu_x86_64, VmOutput, VmRunner};

const TIMEOUT: Duration = Duration::from_secs(60);
const SMP: u32 = 2;

/// QEMU and the SeaBIOS image, or `None` (with a notice) if either is missing.
fn tools_or_skip(test: &str) -> Option<(PathBuf, PathBuf)> {
    let Some(qemu) = qemu_x86_64() else {
        eprintln!("SKIPPED {test}: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
        return None;
    };
    let Some(bios) = seabios_bios() else {
        eprintln!("SKIPPED {test}: no SeaBIOS image ($RVMM_SEABIOS or {SEABIOS_BIOS_256K}; apt-get install seabios)");
        return None;
    };
    Some((qemu, bios))
}

/// The disk image and the debug log of one test, removed when dropped.
struct Scratch {
    disk: PathBuf,
    debug_log: PathBuf,
}

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let name = format!("qemu-seabios-{test}-{}", std::process::id());
        Scratch { disk: dir.join(format!("{name}.img")), debug_log: dir.join(format!("{name}.debug.log")) }
    }

    fn debug_log(&self) -> String {
        std::fs::read(&self.debug_log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.disk);
        let _ = std::fs::remove_file(&self.debug_log);
    }
}

/// SeaBIOS on an i440FX machine with TCG: COM1 on stdio, the debug log to a file, the
/// debug exit device at 0xf4 (exit code `(status << 1) | 1`), the disk on
/// virtio-blk-pci, 2 vCPUs, 256 MiB, and `extra` last.
fn qemu_seabios_command(qemu: &Path, bios: &Path, scratch: &Scratch, extra: &[&str]) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args(["-M", "pc", "-accel", "tcg", "-nographic", "-nodefaults", "-monitor", "none", "-serial", "stdio"])
        .arg("-bios")
        .arg(bios)
        .arg("-debugcon")
        .arg(format!("file:{}", scratch.debug_log.display()))
        .args(["-global", "isa-debugcon.iobase=0x402"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=none,id=d0", scratch.disk.display()))
        .args(["-device", "virtio-blk-pci,drive=d0"])
        .arg("-smp")
        .arg(SMP.to_string())
        .args(["-m", "256"])
        .args(extra);
    cmd
}

fn describe(out: &VmOutput, debug_log: &str) -> String {
    format!("{}\n--- SeaBIOS debug log (port 0x402) ---\n{debug_log}", out.describe())
}

/// SeaBIOS finds the virtio-blk disk, loads its MBR to 0000:7C00 and jumps to it; the
/// MBR prints its marker on COM1 and exits through port 0xf4 with 42.
///
/// About 0.15 s under QEMU 7.2 TCG on this 2-core machine.
#[test]
fn seabios_boots_the_mbr_from_virtio_blk_under_qemu() {
    let test = "seabios_boots_the_mbr_from_virtio_blk_under_qemu";
    let Some((qemu, bios)) = tools_or_skip(test) else { return };
    let scratch = Scratch::new("boot");
    write_boot_disk(&scratch.disk).unwrap();

    let out = VmRunner::new(qemu_seabios_command(&qemu, &bios, &scratch, &[])).timeout(TIMEOUT).run().unwrap();
    let log = scratch.debug_log();
    let d = || describe(&out, &log);
    eprintln!("{test}: QEMU run took {:?}", out.elapsed);

    assert!(!out.timed_out, "QEMU timed out\n{}", d());
    assert_eq!(
        out.exit_code(),
        Some(((MBR_EXIT_STATUS as i32) << 1) | 1),
        "the MBR's debug-exit status 42 (QEMU exit code 85) expected\n{}",
        d()
    );
    for s in BOOT_SERIAL {
        assert!(out.stdout.contains(s), "serial lacks {s:?}\n{}", d());
    }
    let booting = out.stdout.find("Booting from Hard Disk").unwrap();
    assert!(out.stdout[booting..].contains(MBR_MARKER), "the marker must follow the boot message\n{}", d());
    for s in BOOT_DEBUG.iter().copied().chain([format!("Found {SMP} cpu(s)").as_str()]) {
        assert!(log.contains(s), "debug log lacks {s:?}\n{}", d());
    }
}

/// SeaBIOS reads the disk without 0x55 0xAA, refuses it, finds nothing else to boot and,
/// after the 1 s reboot timeout, resets the machine; `-no-reboot` makes QEMU exit (0)
/// on that reset. Without `-boot reboot-timeout` SeaBIOS would wait forever (QEMU
/// passes `etc/boot-fail-wait` = -1).
///
/// About 1.2 s under QEMU 7.2 TCG, 1 s of it the reboot timeout.
#[test]
fn seabios_reports_a_disk_without_boot_signature_under_qemu() {
    let test = "seabios_reports_a_disk_without_boot_signature_under_qemu";
    let Some((qemu, bios)) = tools_or_skip(test) else { return };
    let scratch = Scratch::new("noboot");
    write_unbootable_disk(&scratch.disk).unwrap();

    let extra = ["-no-reboot", "-boot", "reboot-timeout=1000"];
    let out = VmRunner::new(qemu_seabios_command(&qemu, &bios, &scratch, &extra)).timeout(TIMEOUT).run().unwrap();
    let log = scratch.debug_log();
    let d = || describe(&out, &log);
    eprintln!("{test}: QEMU run took {:?}", out.elapsed);

    assert!(!out.timed_out, "QEMU timed out\n{}", d());
    assert_eq!(out.exit_code(), Some(0), "QEMU exits 0 on the guest's reset with -no-reboot\n{}", d());
    for s in NO_BOOT_SERIAL.iter().copied().chain(["SeaBIOS (version", "Retrying in 1 seconds."]) {
        assert!(out.stdout.contains(s), "serial lacks {s:?}\n{}", d());
    }
    assert!(!out.stdout.contains(MBR_MARKER), "SeaBIOS ran an MBR without the boot signature\n{}", d());
    for s in ["found virtio-blk at", "Booting from Hard Disk...", "Rebooting."] {
        assert!(log.contains(s), "debug log lacks {s:?}\n{}", d());
    }
}

/// The BIOS-services boot sector (`rvmm_probes::MBR_BIOS_SERVICES`): SeaBIOS's int 0x13
/// reports EDD and the disk's 2048 sectors, reads LBA 1-16 (the MBR's FNV-1a must match
/// the host's) and writes LBA 17 through its virtio-blk driver, and int 0x15 E820 lists
/// about 255.5 MiB of RAM for `-m 256` (the rest is the EBDA, the BIOS area and
/// SeaBIOS's own high reservation). The MBR exits with 42 (QEMU: 85), and the host file
/// holds the written sector and nothing else changed.
///
/// About 0.12 s under QEMU 7.2 TCG on this 2-core machine, up to 55 ms of it the MBR's
/// wait for a timer tick (see `probes/README.md`).
#[test]
fn seabios_bios_services_under_qemu() {
    let test = "seabios_bios_services_under_qemu";
    let Some((qemu, bios)) = tools_or_skip(test) else { return };
    let scratch = Scratch::new("services");
    let mbr = std::fs::read(rvmm_probes::MBR_BIOS_SERVICES).unwrap();
    let fnv = write_bios_services_disk(&scratch.disk, &mbr).unwrap();

    let out = VmRunner::new(qemu_seabios_command(&qemu, &bios, &scratch, &[])).timeout(TIMEOUT).run().unwrap();
    let log = scratch.debug_log();
    let d = || describe(&out, &log);
    eprintln!("{test}: QEMU run took {:?}", out.elapsed);

    assert!(!out.timed_out, "QEMU timed out\n{}", d());
    let e820 = check_bios_services_serial(&out.stdout, fnv).unwrap_or_else(|e| panic!("{e}\n{}", d()));
    assert_eq!(
        out.exit_code(),
        Some(((MBR_EXIT_STATUS as i32) << 1) | 1),
        "the MBR's debug-exit status 42 (QEMU exit code 85) expected\n{}",
        d()
    );
    assert!(
        (250 * 1024..=256 * 1024).contains(&e820.ram_kib),
        "E820 RAM of {} KiB is not 250-256 MiB\n{}",
        e820.ram_kib,
        d()
    );
    assert!(e820.entries >= 3, "{e820:?}\n{}", d());
    check_bios_services_disk(&scratch.disk, &mbr).unwrap_or_else(|e| panic!("{e}\n{}", d()));
}

/// The wait boot sector: SeaBIOS's `int 15h AH=86h` (100 ms on the RTC's periodic
/// interrupt, IRQ 8) returns and the MBR exits with 42.
#[test]
fn seabios_int15_wait_under_qemu() {
    let test = "seabios_int15_wait_under_qemu";
    let Some((qemu, bios)) = tools_or_skip(test) else { return };
    let scratch = Scratch::new("wait");
    write_wait_disk(&scratch.disk).unwrap();
    let out = VmRunner::new(qemu_seabios_command(&qemu, &bios, &scratch, &[])).timeout(TIMEOUT).run().unwrap();
    let log = scratch.debug_log();
    assert!(!out.timed_out, "QEMU timed out\n{}", describe(&out, &log));
    assert_eq!(out.exit_code(), Some(((WAIT_EXIT_STATUS as i32) << 1) | 1), "{}", describe(&out, &log));
}
