//! Builds the probe guest images from `guest/` with the system's `gcc`, `ld`,
//! `objcopy`, `objdump` and `nm` (binutils). See README.md.
//!
//! Outputs in OUT_DIR:
//! - `probe-linux64.elf`: ELF64, e_entry = Linux 64-bit boot protocol entry.
//! - `probe-pvh.elf`: the same plus a Xen PHYS32_ENTRY note (PVH).
//! - `probe.bzImage`: real-mode setup (guest/bzsetup.S) + the payload as a flat binary.
//! - `mbr-bios-services.bin`: a 512-byte boot sector (guest/mbr.S) that calls the
//!   firmware's int 0x13 and int 0x15 services, linked at 0x7c00.
//!
//! Every image is disassembled and the build fails if it contains an instruction that
//! the software KVM on the project's machines cannot emulate (SSE, x87, `int n`, ...);
//! the boot sector may use `int n` (see below).

use std::collections::HashMap;
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const LOAD_ADDR: u64 = 0x10_0000;

fn tool(var: &str, default: &str) -> String {
    println!("cargo:rerun-if-env-changed={var}");
    env::var(var).unwrap_or_else(|_| default.to_string())
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out =
        cmd.output().unwrap_or_else(|e| panic!("rvmm-probes: cannot run {cmd:?}: {e} (install gcc and binutils)"));
    if !out.status.success() {
        panic!(
            "rvmm-probes: {cmd:?} failed with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.stdout
}

const CFLAGS: &[&str] = &[
    "-O2",
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
    "-ffreestanding",
    "-nostdlib",
    "-static",
    "-mgeneral-regs-only",
    "-mno-red-zone",
    "-fno-pic",
    "-fno-pie",
    "-mcmodel=small",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fno-builtin",
    "-fno-tree-loop-distribute-patterns",
    "-fno-jump-tables",
    // Keep alignment padding (multi-byte NOPs) out of the code.
    "-falign-functions=1",
    "-falign-jumps=1",
    "-falign-loops=1",
    "-falign-labels=1",
];

fn compile(cc: &str, src: &Path, obj: &Path, include: &Path, flags: &[&str], extra: &[&str]) {
    let mut cmd = Command::new(cc);
    cmd.args(flags).args(extra).arg("-I").arg(include).arg("-c").arg(src).arg("-o").arg(obj);
    run(&mut cmd);
}

fn link(ld: &str, script: &Path, objs: &[&Path], out: &Path) {
    let mut cmd = Command::new(ld);
    cmd.args(["-m", "elf_x86_64", "-nostdlib", "-static", "-z", "max-page-size=0x1000", "-z", "noexecstack"])
        .args(["--no-dynamic-linker", "--build-id=none", "-T"])
        .arg(script)
        .args(objs)
        .arg("-o")
        .arg(out);
    run(&mut cmd);
}

fn symbols(nm: &str, elf: &Path) -> HashMap<String, u64> {
    let out = run(Command::new(nm).arg(elf));
    let mut map = HashMap::new();
    for line in String::from_utf8_lossy(&out).lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() == 3 {
            if let Ok(v) = u64::from_str_radix(parts[0], 16) {
                map.insert(parts[2].to_string(), v);
            }
        }
    }
    map
}

fn sym(map: &HashMap<String, u64>, name: &str) -> u64 {
    *map.get(name).unwrap_or_else(|| panic!("rvmm-probes: symbol {name} missing"))
}

/// Fails the build if the disassembly contains an instruction the host's KVM emulator
/// cannot run. `what` names the image in the message.
fn check_disassembly(text: &str, what: &str, allow_int: bool) {
    const BANNED: &[&str] = &[
        "int",
        "int3",
        "into",
        "int1",
        "icebp",
        "popcnt",
        "cmpxchg16b",
        "rdtscp",
        "xrstor",
        "xrstors",
        "xsave",
        "xsaves",
        "xsaveopt",
        "fwait",
        "wait",
        "endbr64",
        "endbr32",
        "lzcnt",
        "tzcnt",
    ];
    let mut bad = Vec::new();
    for line in text.lines() {
        let mut fields = line.splitn(3, '\t');
        let (Some(addr), Some(_bytes), Some(insn)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let insn = insn.trim();
        if insn.is_empty() {
            continue;
        }
        let lower = insn.to_ascii_lowercase();
        // Skip prefixes objdump prints as words.
        let mnemonic = lower
            .split_whitespace()
            .find(|w| {
                !matches!(
                    *w,
                    "lock"
                        | "rep"
                        | "repz"
                        | "repnz"
                        | "repe"
                        | "repne"
                        | "data16"
                        | "data32"
                        | "addr32"
                        | "addr16"
                        | "cs"
                        | "ds"
                        | "es"
                        | "ss"
                        | "fs"
                        | "gs"
                        | "notrack"
                        | "bnd"
                ) && !w.starts_with("rex")
            })
            .unwrap_or("");
        let banned = (BANNED.contains(&mnemonic) && !(allow_int && mnemonic == "int"))
            || (mnemonic.starts_with('f') && mnemonic.len() > 1)
            || lower.contains("xmm")
            || lower.contains("ymm")
            || lower.contains("zmm")
            || lower.contains("%st")
            || lower.contains("%mm");
        if banned {
            bad.push(format!("{}\t{insn}", addr.trim()));
        }
    }
    if !bad.is_empty() {
        panic!(
            "rvmm-probes: {what} contains instructions KVM's emulator cannot run here \
             (SSE/x87/int/...):\n{}",
            bad.join("\n")
        );
    }
}

fn check_elf(objdump: &str, elf: &Path) {
    let text = String::from_utf8_lossy(&run(Command::new(objdump).arg("-d").arg(elf))).into_owned();
    let xmm = text.lines().filter(|l| l.contains("xmm")).count();
    assert_eq!(xmm, 0, "rvmm-probes: {} uses SSE registers", elf.display());
    check_disassembly(&text, &elf.display().to_string(), false);
}

fn put_u8(buf: &mut [u8], off: usize, v: u8) {
    buf[off] = v;
}
fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let guest = manifest.join("guest");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=build.rs");
    for f in fs::read_dir(&guest).expect("probes/guest") {
        println!("cargo:rerun-if-changed={}", f.unwrap().path().display());
    }

    let cc = tool("PROBE_CC", "gcc");
    let ld = tool("PROBE_LD", "ld");
    let objcopy = tool("PROBE_OBJCOPY", "objcopy");
    let objdump = tool("PROBE_OBJDUMP", "objdump");
    let nm = tool("PROBE_NM", "nm");

    // ---- compile ----
    let probe_o = out.join("probe.o");
    let pci_o = out.join("pci.o");
    let virtio_o = out.join("virtio.o");
    let blk_o = out.join("virtio_blk.o");
    let net_o = out.join("virtio_net.o");
    let misc_o = out.join("virtio_misc.o");
    let spec_o = out.join("virtio_spec.o");
    let spec_common_o = out.join("spec.o");
    let legacy_o = out.join("legacy_spec.o");
    let vsock_o = out.join("virtio_vsock.o");
    let balloon_o = out.join("virtio_balloon.o");
    let irq_o = out.join("irq.o");
    let entry_o = out.join("entry.o");
    let note_o = out.join("pvhnote.o");
    let setup_o = out.join("bzsetup.o");
    compile(&cc, &guest.join("probe.c"), &probe_o, &guest, CFLAGS, &["-m64"]);
    for (src, obj) in [
        ("pci.c", &pci_o),
        ("virtio.c", &virtio_o),
        ("virtio_blk.c", &blk_o),
        ("virtio_net.c", &net_o),
        ("virtio_misc.c", &misc_o),
        ("virtio_spec.c", &spec_o),
        ("spec.c", &spec_common_o),
        ("legacy_spec.c", &legacy_o),
        ("virtio_vsock.c", &vsock_o),
        ("virtio_balloon.c", &balloon_o),
        ("irq.c", &irq_o),
    ] {
        compile(&cc, &guest.join(src), obj, &guest, CFLAGS, &["-m64"]);
    }
    compile(&cc, &guest.join("entry.S"), &entry_o, &guest, CFLAGS, &["-m64"]);
    compile(&cc, &guest.join("pvhnote.S"), &note_o, &guest, CFLAGS, &["-m64"]);
    compile(&cc, &guest.join("bzsetup.S"), &setup_o, &guest, &[], &["-m32"]);

    // ---- link the ELF images ----
    let template = fs::read_to_string(guest.join("payload.ld.in")).unwrap();
    let script = |entry: &str, note: bool| {
        template
            .replace("@ENTRY@", entry)
            .replace("@NOTE_PHDR@", if note { "note PT_NOTE FLAGS(4);" } else { "" })
            .replace("@NOTE_SEC@", if note { ".note : ALIGN(4) { KEEP(*(.note.Xen)) } :load :note" } else { "" })
    };
    let ld64 = out.join("linux64.ld");
    let ldpvh = out.join("pvh.ld");
    fs::write(&ld64, script("elf_entry64", false)).unwrap();
    fs::write(&ldpvh, script("elf_entry64", true)).unwrap();

    let linux64 = out.join("probe-linux64.elf");
    let pvh = out.join("probe-pvh.elf");
    let objs: [&Path; 13] = [
        &entry_o,
        &probe_o,
        &pci_o,
        &virtio_o,
        &blk_o,
        &net_o,
        &misc_o,
        &spec_o,
        &spec_common_o,
        &legacy_o,
        &vsock_o,
        &balloon_o,
        &irq_o,
    ];
    link(&ld, &ld64, &objs, &linux64);
    let mut pvh_objs = objs.to_vec();
    pvh_objs.push(&note_o);
    link(&ld, &ldpvh, &pvh_objs, &pvh);

    let syms = symbols(&nm, &linux64);
    assert_eq!(sym(&syms, "bz_entry32"), LOAD_ADDR, "bzImage 32-bit entry must be at offset 0");
    assert_eq!(sym(&syms, "bz_entry64"), LOAD_ADDR + 0x200, "bzImage 64-bit entry must be at offset 0x200");
    let tramp = sym(&syms, "tramp_end") - sym(&syms, "tramp_start");
    assert!(tramp < 0x1000, "AP trampoline too large");

    // ---- bzImage ----
    let payload_bin = out.join("payload.bin");
    run(Command::new(&objcopy).args(["-O", "binary"]).arg(&linux64).arg(&payload_bin));
    let payload = fs::read(&payload_bin).unwrap();
    let edata = sym(&syms, "_edata") - LOAD_ADDR;
    let end = sym(&syms, "_end") - LOAD_ADDR;
    assert!(payload.len() as u64 <= edata, "payload larger than _edata: {} > {edata}", payload.len());
    let mut payload = payload;
    payload.resize(edata as usize, 0);

    let setup_elf = out.join("bzsetup.elf");
    run(Command::new(&ld)
        .args(["-m", "elf_i386", "-nostdlib", "-static", "--build-id=none", "-T"])
        .arg(guest.join("bzsetup.ld"))
        .arg(&setup_o)
        .arg("-o")
        .arg(&setup_elf));
    let setup_bin = out.join("bzsetup.bin");
    run(Command::new(&objcopy).args(["-O", "binary", "-j", ".text"]).arg(&setup_elf).arg(&setup_bin));
    let mut setup = fs::read(&setup_bin).unwrap();
    assert!(setup.len() >= 1024 && setup.len() % 512 == 0, "setup size {}", setup.len());
    assert_eq!(&setup[0x202..0x206], b"HdrS");
    assert_eq!(&setup[0x1fe..0x200], &[0x55, 0xaa]);
    let setup_sects = setup.len() / 512 - 1;
    assert!(setup_sects <= 64);
    put_u8(&mut setup, 0x1f1, setup_sects as u8);
    put_u32(&mut setup, 0x1f4, payload.len().div_ceil(16) as u32); // syssize
    put_u32(&mut setup, 0x260, (end.div_ceil(0x1000) * 0x1000) as u32); // init_size
    put_u32(&mut setup, 0x268, (sym(&syms, "kernel_info") - LOAD_ADDR) as u32); // kernel_info_offset
    let mut bz = setup.clone();
    bz.extend_from_slice(&payload);
    // Like Linux's arch/x86/boot/tools/build.c, pad the payload to whole
    // paragraphs so that syssize * 16 is exactly what follows the setup code.
    bz.resize(setup.len() + payload.len().div_ceil(16) * 16, 0);
    fs::write(out.join("probe.bzImage"), &bz).unwrap();

    // ---- instruction checks ----
    check_elf(&objdump, &linux64);
    check_elf(&objdump, &pvh);
    let setup_dis = String::from_utf8_lossy(&run(Command::new(&objdump)
        .args(["-D", "-b", "binary", "-m", "i8086", "--start-address=0x26c"])
        .arg(&setup_bin)))
    .into_owned();
    assert!(!setup_dis.contains("xmm"), "bzImage setup uses SSE registers");

    // ---- the BIOS-services boot sector ----
    let mbr_o = out.join("mbr.o");
    let mbr_elf = out.join("mbr.elf");
    let mbr_bin = out.join("mbr-bios-services.bin");
    compile(&cc, &guest.join("mbr.S"), &mbr_o, &guest, &[], &["-m32"]);
    run(Command::new(&ld)
        .args(["-m", "elf_i386", "-nostdlib", "-static", "--build-id=none", "-Ttext=0x7c00", "-e", "_start"])
        .arg(&mbr_o)
        .arg("-o")
        .arg(&mbr_elf));
    run(Command::new(&objcopy).args(["-O", "binary", "-j", ".text"]).arg(&mbr_elf).arg(&mbr_bin));
    let mbr = fs::read(&mbr_bin).unwrap();
    assert_eq!(mbr.len(), 512, "mbr-bios-services.bin must be exactly one sector");
    assert_eq!(&mbr[510..], &[0x55, 0xaa], "mbr-bios-services.bin lacks the boot signature");
    // Check the code only (up to `code_end`): the strings after it would disassemble
    // into nonsense. The boot sector runs in real mode under a BIOS and calls its
    // services with `int 0x13` and `int 0x15`, which this host's KVM does run in real
    // mode (only `int n` in protected and long mode kills the guest), so `int` is
    // allowed here; SSE and x87 are still refused, as everywhere.
    let code_end = sym(&symbols(&nm, &mbr_elf), "code_end") - 0x7c00;
    let mbr_dis = String::from_utf8_lossy(&run(Command::new(&objdump)
        .args(["-D", "-b", "binary", "-m", "i8086"])
        .arg(format!("--stop-address={code_end:#x}"))
        .arg(&mbr_bin)))
    .into_owned();
    check_disassembly(&mbr_dis, "mbr-bios-services.bin", true);
}
