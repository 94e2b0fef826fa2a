//! Boots each probe image through each boot path with rvmm and checks, from the
//! probe's own report, what Linux would read there: boot_params or
//! hvm_start_info, the e820 map, command line, initrd, ACPI and MP tables, the
//! CPUs actually started with INIT-SIPI-SIPI, the RTC, and serial input.

mod common;

use common::*;
use rvmm_tests::{fnv1a32, Report, VmRunner};
use vmm::memory::{MemoryLayout, MIB};

/// Checks the report against what rvmm was asked to build.
fn check_report(
    report: &Report,
    out: &rvmm_tests::VmOutput,
    boot: &str,
    cpus: u64,
    memory: u64,
    cmdline: &str,
    initrd: &[u8],
) {
    let ctx = out.describe();
    assert_eq!(report.get("rvmm-probe"), Some(format!("boot={boot}").as_str()), "{ctx}");
    assert_eq!(report.get("cmdline"), Some(cmdline), "{ctx}");

    // The e820 map the guest sees is exactly the layout rvmm's memory slots follow.
    let expected = MemoryLayout::new(memory).unwrap().e820_map();
    assert_eq!(report.get_u64("e820"), Some(expected.len() as u64), "{ctx}");
    for (i, e) in expected.iter().enumerate() {
        let line = format!("{:#x} {:#x} {}", e.addr, e.size, e.kind as u32);
        assert_eq!(report.get(&format!("e820[{i}]")), Some(line.as_str()), "e820[{i}]\n{ctx}");
    }

    // The initrd: the bytes we gave, page-aligned, above the kernel (which loads at 1 MiB).
    let size = initrd.len().to_string();
    let hash = format!("{:#010x}", fnv1a32(initrd));
    assert_eq!(report.field("initrd", "size"), Some(size.as_str()), "{ctx}");
    assert_eq!(report.field("initrd", "fnv1a"), Some(hash.as_str()), "{ctx}");
    let addr = u64::from_str_radix(report.field("initrd", "addr").unwrap().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(addr % 4096, 0, "{ctx}");
    assert!(addr > 2 * MIB && addr + initrd.len() as u64 <= memory, "{ctx}");

    // ACPI and the MP table describe every CPU, and every AP really started.
    assert_eq!(report.get("acpi-rsdp"), Some("0xe0000"), "{ctx}");
    let tables = report.get("acpi-tables").unwrap_or("");
    assert!(
        tables.split_whitespace().any(|t| t == "FACP") && tables.contains("APIC") && !tables.contains('!'),
        "{ctx}"
    );
    assert_eq!(report.get_u64("madt-cpus"), Some(cpus), "{ctx}");
    assert_eq!(report.get_u64("mptable-cpus"), Some(cpus), "{ctx}");
    assert_eq!(report.get_u64("smp-started"), Some(cpus), "{ctx}");

    check_rtc(report.get("rtc").unwrap_or(""), &ctx);
    assert!(report.ok(), "{ctx}");
    assert_exit(out, 0);
}

/// The RTC shows the host's UTC date (allowing for a run across midnight).
fn check_rtc(value: &str, ctx: &str) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let dates: Vec<String> = [now - 60, now + 60]
        .iter()
        .map(|&t| {
            let days = (t / 86400) as i64;
            // Civil-from-days (Howard Hinnant's algorithm).
            let z = days + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z - era * 146_097;
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let d = doy - (153 * mp + 2) / 5 + 1;
            let m = if mp < 10 { mp + 3 } else { mp - 9 };
            let y = yoe + era * 400 + i64::from(m <= 2);
            format!("{y:04}-{m:02}-{d:02}")
        })
        .collect();
    assert!(dates.iter().any(|d| value.starts_with(d.as_str())), "rtc {value:?} is not today ({dates:?})\n{ctx}");
    assert_eq!(value.len(), "YYYY-MM-DD hh:mm:ss".len(), "{ctx}");
}

fn boot_and_check(image: &str, extra: &[&str], boot: &str, cpus: u64, memory: &str) {
    let (initrd_path, initrd) = initrd(boot, 70_000);
    let cmdline = format!("console=ttyS0 probe.path={boot} root=/dev/vda");
    let cpus_arg = cpus.to_string();
    let mut args = vec![
        "--kernel",
        image,
        "--initrd",
        initrd_path.to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--cpus",
        &cpus_arg,
        "--memory",
        memory,
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    let (n, unit) = memory.split_at(memory.len() - 1);
    let mem = n.parse::<u64>().unwrap() << if unit == "G" { 30 } else { 20 };
    check_report(&out.report(), &out, boot, cpus, mem, &cmdline, &initrd);
}

#[test]
fn linux64_elf_two_cpus() {
    boot_and_check(rvmm_probes::LINUX64_ELF, &[], "linux64", 2, "256M");
}

#[test]
fn linux64_elf_boot_params_fields() {
    let out = run(&["--kernel", rvmm_probes::LINUX64_ELF, "--cmdline", "x"]);
    let r = out.report();
    assert_eq!(r.field("bootparams", "type_of_loader"), Some("0xff"), "{}", out.describe());
    assert_eq!(r.field("bootparams", "cmd_line_ptr"), Some("0x20000"), "{}", out.describe());
    assert_exit(&out, 0);
}

#[test]
fn pvh_elf_four_cpus() {
    boot_and_check(rvmm_probes::PVH_ELF, &[], "pvh", 4, "256M");
}

#[test]
fn bzimage_64bit_entry() {
    boot_and_check(rvmm_probes::BZIMAGE, &[], "bzimage64", 2, "128M");
}

#[test]
fn bzimage_32bit_entry() {
    boot_and_check(rvmm_probes::BZIMAGE, &["--boot", "linux32"], "bzimage32", 1, "64M");
}

#[test]
fn bzimage_legacy_real_mode_through_rvmm_bios() {
    // The e820 lines come from the setup code's own `int 0x15, eax=0xE820` calls.
    boot_and_check(rvmm_probes::BZIMAGE, &["--boot", "legacy"], "bzimage-realmode", 2, "256M");
}

#[test]
fn memory_above_the_32bit_hole() {
    // 5 GiB: 3 GiB below the hole and 2 GiB from 4 GiB on, reported and mapped.
    boot_and_check(rvmm_probes::PVH_ELF, &[], "pvh", 1, "5G");
}

#[test]
fn serial_input_reaches_the_guest_by_interrupt() {
    let out = VmRunner::new(rvmm_run(&["--kernel", rvmm_probes::PVH_ELF, "--cmdline", "rx=6"]))
        .timeout(TIMEOUT)
        .send_after("rvmm-probe: boot=", b"hello\x02")
        .run()
        .unwrap();
    assert_eq!(out.report().get("serial-rx"), Some("hello\\x02"), "{}", out.describe());
    assert_exit(&out, 0);
}

#[test]
fn serial_input_below_the_fifo_trigger_arrives_by_the_character_timeout() {
    // 6 bytes against a trigger of 14: no data-available interrupt ever; the
    // bytes come through the character timeout, which COM1's timer thread
    // raises 4 character times after the last byte.
    let out = VmRunner::new(rvmm_run(&["--kernel", rvmm_probes::PVH_ELF, "--cmdline", "rx=6 rx-fifo=14"]))
        .timeout(TIMEOUT)
        .send_after("serial-rx-fifo: trigger=14", b"hello\x02")
        .run()
        .unwrap();
    assert_eq!(out.report().get("serial-rx"), Some("hello\\x02"), "{}", out.describe());
    assert_exit(&out, 0);
}

#[test]
fn debug_exit_status_is_the_exit_code() {
    let out = run(&["--kernel", rvmm_probes::PVH_ELF, "--cmdline", "exit=7"]);
    assert!(out.report().ok(), "{}", out.describe());
    assert_exit(&out, 7);
}

#[test]
fn i8042_reset_ends_the_vm_cleanly() {
    let out = run(&["--kernel", rvmm_probes::LINUX64_ELF, "--cmdline", "reset"]);
    assert!(out.report().ok(), "{}", out.describe());
    assert_exit(&out, 0);
}

#[test]
fn bundled_default_guest_runs() {
    let out = run(&[]);
    assert!(out.stdout.contains("rvmm-probe: boot=pvh"), "{}", out.describe());
    assert!(out.report().ok(), "{}", out.describe());
    assert_exit(&out, 0);
}

#[test]
fn console_to_a_file_and_to_nowhere() {
    let path = scratch("console.log");
    let _ = std::fs::remove_file(&path);
    let console = format!("file:{}", path.display());
    let out = run(&["--kernel", rvmm_probes::PVH_ELF, "--console", &console]);
    assert_exit(&out, 0);
    assert!(out.stdout.is_empty(), "{}", out.describe());
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(log.contains("probe-result: ok"), "{log}");

    let out = run(&["--kernel", rvmm_probes::PVH_ELF, "--console", "none"]);
    assert_exit(&out, 0);
    assert!(out.stdout.is_empty(), "{}", out.describe());
}

#[test]
fn guest_triple_fault_is_reported_as_a_crash() {
    // A 64-bit ELF whose entry is `ud2`: with the boot IDT empty, #UD escalates to
    // #GP, a double fault and a triple fault (KVM_EXIT_SHUTDOWN).
    let path = scratch("ud2.elf");
    std::fs::write(&path, tiny_elf(&[0x0f, 0x0b])).unwrap();
    let out = run(&["--kernel", path.to_str().unwrap()]);
    assert_exit(&out, 70);
    assert!(out.stderr.contains("guest crashed") && out.stderr.contains("0f 0b"), "{}", out.describe());
}

/// A minimal x86-64 ELF with one PT_LOAD at 1 MiB holding `code`, entered at its start.
pub fn tiny_elf(code: &[u8]) -> Vec<u8> {
    let mut elf = vec![0u8; 0x78];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // ELFCLASS64
    elf[5] = 1; // little-endian
    elf[6] = 1; // version
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // e_entry
    elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = 64;
    elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    elf[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes()); // p_offset
    elf[ph + 16..ph + 24].copy_from_slice(&0x10_0000u64.to_le_bytes()); // p_vaddr
    elf[ph + 24..ph + 32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // p_paddr
    elf[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    elf[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    elf.extend_from_slice(code);
    elf
}

#[test]
fn guest_int3_with_no_idt_is_a_crash_on_any_kvm() {
    // On hardware KVM this is #BP -> #GP -> #DF -> triple fault; on the software
    // KVM of our CI machines `int3` is an emulation failure (KVM_EXIT_INTERNAL_ERROR).
    // Either way the guest crashed, and rvmm says where.
    let path = scratch("int3.elf");
    std::fs::write(&path, tiny_elf(&[0xcc, 0xf4])).unwrap();
    let out = run(&["--kernel", path.to_str().unwrap()]);
    assert_exit(&out, 70);
    assert!(out.stderr.contains("guest crashed: vCPU 0:") && out.stderr.contains("RIP 0x10000"), "{}", out.describe());
}

#[test]
fn sigterm_stops_the_vm_with_128_plus_signal() {
    let (mut child, _) = spawn_until(&["--kernel", rvmm_probes::PVH_ELF, "--cmdline", "echo"], "probe-result: ok");
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
}

#[test]
fn stats_report_exits_and_devices() {
    let out = run(&["--kernel", rvmm_probes::PVH_ELF, "--cpus", "2", "--stats"]);
    assert_exit(&out, 0);
    let err = &out.stderr;
    assert!(err.contains("exit statistics") && err.contains("vcpu1"), "{}", out.describe());
    let count = |name: &str| -> u64 {
        err.lines()
            .find(|l| l.trim_start().starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    // The probe prints its report byte by byte on COM1: hundreds of port writes.
    assert!(count("io-out") > 100, "{err}");
    assert!(err.contains("pio COM1 0x3f8-0x3ff") && err.contains("pio debug exit 0xf4-0xf7"), "{err}");
    assert!(err.contains("user-space exit handling:"), "{err}");
}

#[test]
fn sigusr1_prints_stats_while_running() {
    let (mut child, _) = spawn_until(&["--kernel", rvmm_probes::PVH_ELF, "--cmdline", "echo"], "probe-result: ok");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Still running after the report.
    assert!(child.try_wait().unwrap().is_none());
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exit statistics") && err.contains("io-out"), "{err}");
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM));
}

#[test]
fn pause_and_resume_through_the_control_socket() {
    let socket = scratch("pause.sock");
    let _ = std::fs::remove_file(&socket);
    // `exits=N` keeps the probe reading port 0xf4 for a while: every read is an
    // exit. The second vCPU sits in KVM_RUN waiting for a SIPI: pausing kicks it out.
    let args = [
        "--kernel",
        rvmm_probes::PVH_ELF,
        "--cpus",
        "2",
        "--api-socket",
        socket.to_str().unwrap(),
        "--cmdline",
        "quick exits=2000000",
    ];
    let (mut child, _) = spawn_until(&args, "rvmm-probe: quick");
    let ctl = |words: &[&str]| -> String {
        let out = std::process::Command::new(RVMM).arg("ctl").arg(&socket).args(words).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Reads of port 0xf4 so far (the device's line appears after its first access).
    let port_reads = || -> u64 {
        let stats = ctl(&["stats"]);
        assert!(stats.starts_with("ok"), "{stats}");
        stats
            .lines()
            .find(|l| l.contains("debug exit"))
            .and_then(|l| l.split_whitespace().rev().nth(3))
            .map_or(0, |n| n.parse().unwrap_or_else(|_| panic!("{stats}")))
    };
    assert_eq!(ctl(&["state"]), "ok running");
    assert_eq!(ctl(&["pause"]), "ok paused");
    assert_eq!(ctl(&["state"]), "ok paused");
    let paused_at = port_reads();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(port_reads(), paused_at, "the guest ran while paused");
    assert_eq!(ctl(&["resume"]), "ok running");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(port_reads() > paused_at, "the guest did not run again after resume");
    // Quitting a paused VM works too.
    assert_eq!(ctl(&["pause"]), "ok paused");
    assert!(ctl(&["quit"]).starts_with("ok"));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Boots the probe with `legacy-spec` and `extra` rvmm arguments: every check line must
/// be `ok`; the `info` lines (implementation-specific values) are printed, prefixed by
/// `who`, to put beside QEMU's (`cargo test ... -- --nocapture`).
fn legacy_spec(who: &str, extra: &[&str]) {
    let mut args = vec!["--kernel", rvmm_probes::PVH_ELF, "--cmdline", "legacy-spec"];
    args.extend_from_slice(extra);
    let out = run(&args);
    rvmm_tests::check_legacy_spec(who, &out);
    assert!(out.report().ok(), "{}", out.describe());
    assert_exit(&out, 0);
}

#[test]
fn legacy_device_spec_checks() {
    legacy_spec("rvmm", &[]);
}

/// The same with rvmm's own 8259A, IOAPIC and 8254 (port 0x61 and counter 2 are then
/// rvmm's, not KVM's).
#[test]
fn legacy_device_spec_checks_split_irqchip() {
    legacy_spec("rvmm-split", &["--irqchip", "split"]);
}
