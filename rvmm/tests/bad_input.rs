//! Bad input gets one clear error line naming the problem and exit code 64
//! (71 for a host problem such as a missing /dev/kvm), never a panic or a hang.

mod common;

use common::*;

/// Runs rvmm with `args` and checks the exit code and that stderr names the problem.
fn rejects(args: &[&str], code: i32, needle: &str) {
    let out = run(args);
    assert_exit(&out, code);
    assert!(out.stderr.to_lowercase().contains(&needle.to_lowercase()), "stderr lacks {needle:?}\n{}", out.describe());
    assert!(!out.stderr.contains("panicked"), "{}", out.describe());
    assert!(out.stdout.is_empty(), "the guest must not have run\n{}", out.describe());
}

fn probe_bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn write_scratch(name: &str, bytes: &[u8]) -> String {
    let path = scratch(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn missing_kernel() {
    rejects(&["--kernel", "/nonexistent/vmlinux"], 64, "cannot read kernel /nonexistent/vmlinux");
}

#[test]
fn unreadable_kernel_directory() {
    rejects(&["--kernel", "/"], 64, "cannot read kernel");
}

#[test]
fn file_that_is_not_a_kernel() {
    let path = write_scratch("text", b"#!/bin/sh\necho this is not a kernel\n");
    rejects(&["--kernel", &path], 64, "not a kernel image");
    let path = write_scratch("empty", b"");
    rejects(&["--kernel", &path], 64, "not a kernel image");
}

#[test]
fn truncated_elf() {
    let elf = probe_bytes(rvmm_probes::LINUX64_ELF);
    let path = write_scratch("trunc-hdr.elf", &elf[..40]);
    rejects(&["--kernel", &path], 64, "truncated");
    let path = write_scratch("trunc-seg.elf", &elf[..elf.len() / 2]);
    rejects(&["--kernel", &path], 64, "truncated");
}

#[test]
fn truncated_bzimage() {
    let bz = probe_bytes(rvmm_probes::BZIMAGE);
    let path = write_scratch("trunc-setup.bzImage", &bz[..1024]);
    rejects(&["--kernel", &path], 64, "truncated");
    let path = write_scratch("trunc-kernel.bzImage", &bz[..bz.len() - 100]);
    rejects(&["--kernel", &path], 64, "truncated");
}

#[test]
fn elf_for_another_architecture() {
    let mut elf = probe_bytes(rvmm_probes::LINUX64_ELF);
    elf[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    let path = write_scratch("arm64.elf", &elf);
    rejects(&["--kernel", &path], 64, "AArch64");
    let mut elf32 = probe_bytes(rvmm_probes::LINUX64_ELF);
    elf32[4] = 1; // ELFCLASS32
    let path = write_scratch("i386.elf", &elf32);
    rejects(&["--kernel", &path], 64, "32-bit");
}

#[test]
fn initrd_that_does_not_fit() {
    let (path, _) = initrd("big-initrd", 40 << 20);
    rejects(
        &["--kernel", rvmm_probes::PVH_ELF, "--memory", "32M", "--initrd", path.to_str().unwrap()],
        64,
        "initrd of",
    );
}

#[test]
fn missing_initrd() {
    rejects(&["--kernel", rvmm_probes::PVH_ELF, "--initrd", "/nonexistent/initrd"], 64, "cannot read initrd");
}

#[test]
fn memory_too_small() {
    rejects(&["--kernel", rvmm_probes::PVH_ELF, "--memory", "4M"], 64, "out of range");
    // Enough for the layout, not for kernel plus initrd.
    let (path, _) = initrd("7m-initrd", 7 << 20);
    rejects(
        &["--kernel", rvmm_probes::PVH_ELF, "--memory", "8M", "--initrd", path.to_str().unwrap()],
        64,
        "does not fit",
    );
}

#[test]
fn memory_not_a_multiple_of_4k() {
    // Caught while parsing the arguments, not by KVM_SET_USER_MEMORY_REGION later.
    rejects(&["--kernel", rvmm_probes::PVH_ELF, "--memory", "268435457"], 64, "not a multiple of 4 KiB");
    rejects(&["--kernel", rvmm_probes::PVH_ELF, "--memory", "65538K"], 64, "not a multiple of 4 KiB");
}

#[test]
fn vcpu_counts() {
    rejects(&["--cpus", "0"], 64, "1 to 254");
    rejects(&["--cpus", "255"], 64, "1 to 254");
    rejects(&["--cpus", "many"], 64, "not a number of vcpus");
}

#[test]
fn unparsable_sizes() {
    rejects(&["--memory", "12Q"], 64, "not a size");
    rejects(&["--memory", ""], 64, "not a size");
    rejects(&["--memory", "0"], 64, "zero");
    rejects(&["--memory", "99999999999T"], 64, "too large");
}

#[test]
fn unknown_options() {
    rejects(&["--frobnicate"], 64, "--frobnicate");
    let out = rvmm_tests::VmRunner::new({
        let mut c = std::process::Command::new(RVMM);
        c.arg("fly");
        c
    })
    .timeout(TIMEOUT)
    .run()
    .unwrap();
    assert_exit(&out, 64);
}

#[test]
fn kvm_device_missing() {
    rejects(&["--kvm-device", "/nonexistent/kvm"], 71, "cannot open /nonexistent/kvm");
}

#[test]
fn protocol_that_does_not_fit_the_image() {
    rejects(&["--kernel", rvmm_probes::LINUX64_ELF, "--boot", "pvh"], 64, "no XEN_ELFNOTE_PHYS32_ENTRY");
    rejects(&["--kernel", rvmm_probes::LINUX64_ELF, "--boot", "legacy"], 64, "only a bzImage");
    rejects(&["--kernel", rvmm_probes::BZIMAGE, "--boot", "pvh"], 64, "PVH");
}

#[test]
fn command_line_too_long() {
    let long = "x".repeat(5000);
    rejects(&["--kernel", rvmm_probes::PVH_ELF, "--cmdline", &long], 64, "command line of 5000 bytes");
}

#[test]
fn console_file_that_cannot_be_created() {
    rejects(&["--console", "file:/nonexistent/dir/log"], 64, "cannot open console file");
    rejects(&["--console", "tty9"], 64, "not a console");
}

#[test]
fn help_and_version() {
    for arg in ["--help", "--version"] {
        let mut c = std::process::Command::new(RVMM);
        c.arg(arg);
        let out = rvmm_tests::VmRunner::new(c).timeout(TIMEOUT).run().unwrap();
        assert_exit(&out, 0);
        assert!(out.stdout.contains("rvmm"), "{}", out.describe());
    }
}
