//! Assembles rvmm's real-mode BIOS (src/boot/bios/bios.S) into a flat binary
//! that `boot::bios` embeds. Needs the system's `gcc` and `objcopy` (binutils).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install gcc and binutils)"));
    assert!(status.success(), "{cmd:?} failed with {status}");
}

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = "src/boot/bios/bios.S";
    println!("cargo:rerun-if-changed={src}");
    let obj = out.join("bios.o");
    let elf = out.join("bios.elf");
    let bin = out.join("bios.bin");
    run(Command::new("gcc").args(["-m32", "-c", "-o"]).arg(&obj).arg(src));
    // Linked at offset 0x8000 of segment 0xF000 (physical 0xF8000).
    run(Command::new("ld")
        .args(["-m", "elf_i386", "-nostdlib", "-Ttext=0x8000", "-e", "_start", "-o"])
        .arg(&elf)
        .arg(&obj));
    run(Command::new("objcopy").args(["-O", "binary", "-j", ".text"]).arg(&elf).arg(&bin));
}
