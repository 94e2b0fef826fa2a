//! Firmware boot (issue 7): rvmm runs Debian's SeaBIOS from its reset vector, and
//! SeaBIOS enumerates rvmm's PCI bus, drives rvmm's virtio-blk with its own driver,
//! starts the APs and boots the MBR of a test disk.
//!
//! The disks and the expected log lines are `rvmm_tests::seabios`'s, which
//! `tests/tests/qemu_seabios.rs` checks against QEMU `-M pc` first. Each test skips
//! (with a notice) when `/usr/share/seabios/bios-256k.bin` is missing (`apt-get
//! install seabios`; CI installs it).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{rvmm_run, scratch};
use rvmm_tests::seabios::{
    seabios_bios, write_boot_disk, write_unbootable_disk, BOOT_DEBUG, BOOT_SERIAL, MBR_EXIT_STATUS, MBR_MARKER,
    NO_BOOT_SERIAL,
};
use rvmm_tests::{VmOutput, VmRunner};

/// SeaBIOS takes about 3 s to reach the MBR on this host's software KVM.
const TIMEOUT: Duration = Duration::from_secs(90);

fn bios_or_skip(test: &str) -> Option<PathBuf> {
    let bios = seabios_bios();
    if bios.is_none() {
        eprintln!("SKIPPED {test}: no SeaBIOS image (apt-get install seabios)");
    }
    bios
}

fn run_firmware(bios: &PathBuf, args: &[&str], envs: &[(&str, &str)]) -> VmOutput {
    let mut cmd = rvmm_run(&["--firmware", bios.to_str().unwrap()]);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    VmRunner::new(cmd).timeout(TIMEOUT).run().expect("spawn rvmm")
}

fn describe(out: &VmOutput, debug_log: &str) -> String {
    format!("{}\n--- SeaBIOS debug log (port 0x402) ---\n{debug_log}", out.describe())
}

fn read_lossy(path: &PathBuf) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// The main check: banner on COM1, "Running on QEMU (i440fx)" (the host bridge),
/// fw_cfg found, 2 CPUs started, the virtio-blk disk found and booted.
#[test]
fn seabios_boots_the_mbr_from_virtio_blk() {
    let Some(bios) = bios_or_skip("seabios_boots_the_mbr_from_virtio_blk") else { return };
    let disk = scratch("seabios-boot.img");
    let debug_log = scratch("seabios-boot.debug.log");
    write_boot_disk(&disk).unwrap();
    let debugcon = format!("file:{}", debug_log.display());
    let out = run_firmware(
        &bios,
        &["--cpus", "2", "--disk", disk.to_str().unwrap(), "--debugcon", &debugcon, "--console", "stdio"],
        &[],
    );
    let log = read_lossy(&debug_log);
    let d = || describe(&out, &log);
    eprintln!("SeaBIOS to the MBR under rvmm: {:?}", out.elapsed);
    assert!(!out.timed_out, "rvmm timed out\n{}", d());
    assert_eq!(out.exit_code(), Some(i32::from(MBR_EXIT_STATUS)), "{}", d());
    for s in BOOT_SERIAL {
        assert!(out.stdout.contains(s), "COM1 lacks {s:?}\n{}", d());
    }
    let booting = out.stdout.find("Booting from Hard Disk").unwrap();
    assert!(out.stdout[booting..].contains(MBR_MARKER), "the marker must follow the boot message\n{}", d());
    for s in BOOT_DEBUG.iter().copied().chain(["Running on QEMU (i440fx)", "Found 2 cpu(s) max supported 2 cpu(s)"]) {
        assert!(log.contains(s), "debug log lacks {s:?}\n{}", d());
    }
    // SeaBIOS reassigned the BAR itself, top-down below the IOAPIC, and rvmm's
    // BAR mapper followed it there.
    assert!(log.contains("PCI: map device bdf=00:01.0  bar 0, addr febf8000"), "{}", d());
    // The boot order came from fw_cfg's `bootorder`.
    assert!(log.contains("boot order:\n1: /pci@i0cf8/scsi@1/disk@0,0"), "{}", d());
    // rvmm's ACPI tables went through the table loader.
    assert!(log.contains("(via xsdt)"), "{}", d());
    let _ = std::fs::remove_file(&disk);
    let _ = std::fs::remove_file(&debug_log);
}

/// Three CPUs with the user-space PIC, IOAPIC and PIT (SeaBIOS's timer ticks
/// arrive through rvmm's 8259A), and the debug console in rvmm's log.
#[test]
fn seabios_with_split_irqchip_and_the_log_as_debug_console() {
    let Some(bios) = bios_or_skip("seabios_with_split_irqchip_and_the_log_as_debug_console") else { return };
    let disk = scratch("seabios-split.img");
    write_boot_disk(&disk).unwrap();
    let out = run_firmware(
        &bios,
        &["--cpus", "3", "--irqchip", "split", "--disk", disk.to_str().unwrap(), "--console", "stdio"],
        &[("RVMM_LOG", "firmware=info")],
    );
    assert_eq!(out.exit_code(), Some(i32::from(MBR_EXIT_STATUS)), "{}", out.describe());
    assert!(out.stdout.contains(MBR_MARKER), "{}", out.describe());
    for s in ["Found QEMU fw_cfg", "Found 3 cpu(s) max supported 3 cpu(s)", "Booting from 0000:7c00"] {
        assert!(out.stderr.contains(s), "the log lacks {s:?}\n{}", out.describe());
    }
    let _ = std::fs::remove_file(&disk);
}

/// A disk without 0x55 0xAA: SeaBIOS says so, waits rvmm's 5 s boot-fail delay
/// and resets the machine, which ends rvmm with status 0 and a message.
#[test]
fn seabios_reports_a_disk_without_boot_signature() {
    let Some(bios) = bios_or_skip("seabios_reports_a_disk_without_boot_signature") else { return };
    let disk = scratch("seabios-noboot.img");
    write_unbootable_disk(&disk).unwrap();
    let out = run_firmware(&bios, &["--disk", disk.to_str().unwrap(), "--debugcon", "none"], &[]);
    assert!(!out.timed_out, "{}", out.describe());
    assert_eq!(out.exit_code(), Some(0), "{}", out.describe());
    for s in NO_BOOT_SERIAL.iter().copied().chain(["Retrying in 5 seconds."]) {
        assert!(out.stdout.contains(s), "COM1 lacks {s:?}\n{}", out.describe());
    }
    assert!(!out.stdout.contains(MBR_MARKER), "{}", out.describe());
    assert!(out.stderr.contains("the guest reset the machine"), "{}", out.describe());
    let _ = std::fs::remove_file(&disk);
}

/// Without any disk SeaBIOS still comes up and reports that nothing boots.
#[test]
fn seabios_without_disks() {
    let Some(bios) = bios_or_skip("seabios_without_disks") else { return };
    let out = run_firmware(&bios, &[], &[]);
    assert_eq!(out.exit_code(), Some(0), "{}", out.describe());
    assert!(out.stdout.contains("SeaBIOS (version"), "{}", out.describe());
    assert!(out.stdout.contains("No bootable device."), "{}", out.describe());
}

/// Every wrong firmware argument is refused with one line and exit code 64,
/// before any VM exists.
#[test]
fn bad_firmware_arguments() {
    let empty = scratch("fw-empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let odd = scratch("fw-odd.bin");
    std::fs::write(&odd, vec![0u8; 65536 + 1000]).unwrap();
    let huge = scratch("fw-huge.bin");
    std::fs::File::create(&huge).unwrap().set_len(32 << 20).unwrap();
    let bios = seabios_bios().unwrap_or_else(|| empty.clone());
    let bios = bios.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--firmware", "/nonexistent/bios.bin"], "cannot read firmware /nonexistent/bios.bin"),
        (vec!["--firmware", "/"], "cannot read firmware /"),
        (vec!["--firmware", empty.to_str().unwrap()], "is 0 bytes; a firmware image is a non-empty multiple of 64 KiB"),
        (
            vec!["--firmware", odd.to_str().unwrap()],
            "is 66536 bytes; a firmware image is a non-empty multiple of 64 KiB",
        ),
        (vec!["--firmware", huge.to_str().unwrap()], "at most 16 MiB fit below 4 GiB"),
        (vec!["--firmware", bios, "--kernel", "/boot/vmlinuz"], "cannot be used with"),
        (vec!["--firmware", bios, "--cmdline", "console=ttyS0"], "cannot be used with"),
        (vec!["--debugcon", "none"], "--firmware"),
        (vec!["--firmware", bios, "--debugcon", "tty"], "is not a debug console target"),
        (vec!["--firmware", bios, "--debugcon", "file:/nonexistent/dir/log"], "cannot create debug console file"),
    ];
    for (args, expected) in cases {
        let out = common::run(&args);
        assert_eq!(out.exit_code(), Some(64), "{args:?}\n{}", out.describe());
        assert!(out.stderr.contains(expected), "{args:?}: stderr lacks {expected:?}\n{}", out.describe());
        assert!(!out.stderr.contains("panicked"), "{}", out.describe());
    }
    for f in [empty, odd, huge] {
        let _ = std::fs::remove_file(f);
    }
}
