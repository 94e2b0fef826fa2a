//! Firmware boot (issue 7): rvmm runs Debian's SeaBIOS from its reset vector, and
//! SeaBIOS enumerates rvmm's PCI bus, drives rvmm's virtio-blk with its own driver,
//! starts the APs and boots the MBR of a test disk.
//!
//! The disks and the expected log lines are `rvmm_tests::seabios`'s, which
//! `tests/tests/qemu_seabios.rs` checks against QEMU `-M pc` first. Each test skips
//! (with a notice) when `/usr/share/seabios/bios-256k.bin` is missing (`apt-get
//! install seabios`; CI installs it).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{rvmm_run, scratch};
use rvmm_tests::seabios::{
    check_bios_services_disk, check_bios_services_serial, seabios_bios, write_bios_services_disk, write_boot_disk,
    write_unbootable_disk, write_wait_disk, BOOT_DEBUG, BOOT_SERIAL, MBR_EXIT_STATUS, MBR_MARKER, NO_BOOT_SERIAL,
    WAIT_EXIT_STATUS,
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

fn run_firmware(bios: &Path, args: &[&str], envs: &[(&str, &str)]) -> VmOutput {
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

/// The BIOS-services boot sector (`rvmm_probes::MBR_BIOS_SERVICES`, checked under QEMU
/// by `tests/tests/qemu_seabios.rs`): SeaBIOS's int 0x13 drives rvmm's virtio-blk for
/// the EDD check, the drive parameters (2048 sectors), an extended read of LBA 1-16
/// (the MBR's FNV-1a must match the host's) and an extended write of LBA 17, which must
/// reach the host file; int 0x15 E820 must list 250-256 MiB of RAM for the default
/// `--memory 256M`. The MBR exits with 42.
#[test]
fn seabios_bios_services_over_rvmm_virtio_blk() {
    let Some(bios) = bios_or_skip("seabios_bios_services_over_rvmm_virtio_blk") else { return };
    let disk = scratch("seabios-services.img");
    let mbr = std::fs::read(rvmm_probes::MBR_BIOS_SERVICES).unwrap();
    let fnv = write_bios_services_disk(&disk, &mbr).unwrap();
    let out = run_firmware(
        &bios,
        &["--cpus", "2", "--disk", disk.to_str().unwrap(), "--console", "stdio", "--debugcon", "none"],
        &[],
    );
    eprintln!("SeaBIOS and the BIOS-services MBR under rvmm: {:?}", out.elapsed);
    assert!(!out.timed_out, "rvmm timed out\n{}", out.describe());
    let e820 = check_bios_services_serial(&out.stdout, fnv).unwrap_or_else(|e| panic!("{e}\n{}", out.describe()));
    assert_eq!(out.exit_code(), Some(i32::from(MBR_EXIT_STATUS)), "{}", out.describe());
    assert!(
        (250 * 1024..=256 * 1024).contains(&e820.ram_kib),
        "E820 RAM of {} KiB is not 250-256 MiB\n{}",
        e820.ram_kib,
        out.describe()
    );
    assert!(e820.entries >= 3, "{e820:?}\n{}", out.describe());
    check_bios_services_disk(&disk, &mbr).unwrap_or_else(|e| panic!("{e}\n{}", out.describe()));
    let _ = std::fs::remove_file(&disk);
}

/// A virtio-mmio disk and a virtio-pci disk: SeaBIOS finds the MMIO one in rvmm's DSDT
/// (LNRO0005) and boots whichever `--disk` comes first, in both orders, so the
/// `bootorder` file decides and not the firmware's own scan order.
#[test]
fn seabios_follows_the_boot_order_across_transports() {
    let Some(bios) = bios_or_skip("seabios_follows_the_boot_order_across_transports") else { return };
    let bootable = scratch("seabios-order-boot.img");
    let unbootable = scratch("seabios-order-noboot.img");
    write_boot_disk(&bootable).unwrap();
    write_unbootable_disk(&unbootable).unwrap();
    let debug_log = scratch("seabios-order.debug.log");
    let debugcon = format!("file:{}", debug_log.display());
    let (b, u) = (bootable.to_str().unwrap(), unbootable.to_str().unwrap());
    for (first, second) in
        [(format!("{b},transport=mmio"), u.to_string()), (b.to_string(), format!("{u},transport=mmio"))]
    {
        let out = run_firmware(&bios, &["--disk", &first, "--disk", &second, "--debugcon", &debugcon], &[]);
        let log = read_lossy(&debug_log);
        let d = || format!("--disk {first} --disk {second}\n{}", describe(&out, &log));
        assert_eq!(out.exit_code(), Some(i32::from(MBR_EXIT_STATUS)), "{}", d());
        assert!(out.stdout.contains(MBR_MARKER), "{}", d());
        assert!(log.contains("found virtio-blk-mmio at 0xd0000000"), "{}", d());
        assert!(log.contains("found virtio-blk at 00:01.0"), "{}", d());
        let order = if first.contains("mmio") {
            "1: /virtio-mmio@00000000d0000000/disk@0,0\n2: /pci@i0cf8/scsi@1/disk@0,0"
        } else {
            "1: /pci@i0cf8/scsi@1/disk@0,0\n2: /virtio-mmio@00000000d0000000/disk@0,0"
        };
        assert!(log.contains(order), "{}", d());
    }
    for f in [bootable, unbootable, debug_log] {
        let _ = std::fs::remove_file(f);
    }
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

/// SeaBIOS's `int 15h AH=86h` waits on the CMOS RTC's periodic interrupt (IRQ 8):
/// the wait boot sector asks for 100 ms and exits with 42 when it returns, in both
/// irqchip modes. Without IRQ 8 the wait never ends.
#[test]
fn seabios_int15_wait_runs_on_the_rtc_interrupt() {
    let Some(bios) = bios_or_skip("seabios_int15_wait_runs_on_the_rtc_interrupt") else { return };
    let disk = scratch("seabios-wait.img");
    write_wait_disk(&disk).unwrap();
    for irqchip in ["kernel", "split"] {
        let out = run_firmware(
            &bios,
            &["--disk", disk.to_str().unwrap(), "--irqchip", irqchip, "--console", "none", "--debugcon", "none"],
            &[],
        );
        assert!(!out.timed_out, "--irqchip {irqchip}: the BIOS wait never ended\n{}", out.describe());
        assert_eq!(out.exit_code(), Some(i32::from(WAIT_EXIT_STATUS)), "--irqchip {irqchip}\n{}", out.describe());
    }
    let _ = std::fs::remove_file(&disk);
}
