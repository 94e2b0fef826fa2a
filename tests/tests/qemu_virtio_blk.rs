//! Runs the probe's virtio-blk driver (tokens `blk`, `mmio`, `msix`, `intx`) against
//! QEMU's virtio-blk, the independent reference, and then checks the disk file on the
//! host: the probe's pattern in sectors 0..7, zeroes in 8..15 (DISCARD, with a hole
//! punched where the filesystem reports holes) and 16..23 (WRITE_ZEROES), and the
//! original bytes everywhere else.
//!
//! Each test skips (with a notice on stderr) when `qemu-system-x86_64` is not
//! installed. Every QEMU run is killed after a time limit.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rvmm_tests::{fnv1a32, qemu_probe_command, qemu_x86_64, QemuProbe, Report, VmOutput, VmRunner};

const TIMEOUT: Duration = Duration::from_secs(60);
const DISK_SIZE: usize = 1 << 20;
const SECTORS: u64 = (DISK_SIZE / 512) as u64;
const SERIAL: &str = "PROBE123";
/// Requests the probe makes: initial read, write, flush, readback, get-id, discard,
/// read after discard, write-zeroes, read after it, indirect read, read past the end.
const REQUESTS: u64 = 11;

fn qemu_or_skip(test: &str) -> Option<PathBuf> {
    let q = qemu_x86_64();
    if q.is_none() {
        eprintln!("SKIPPED {test}: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
    }
    q
}

/// What the disk holds before the run: no zero runs, different in every sector.
fn initial_contents() -> Vec<u8> {
    (0..DISK_SIZE).map(|i| (((i.wrapping_mul(13) ^ (i >> 9).wrapping_mul(31)) as u8) ^ 0xa5) | 1).collect()
}

/// The probe's pattern: sector s, byte i = (s * 7 + i + seed) & 0xff.
fn pattern(sector: usize, i: usize, seed: u32) -> u8 {
    (sector * 7 + i + seed as usize) as u8
}

struct Disk {
    path: PathBuf,
    initial: Vec<u8>,
}

impl Disk {
    fn new(test: &str) -> Disk {
        let path =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("qemu-virtio-blk-{test}-{}.img", std::process::id()));
        let initial = initial_contents();
        std::fs::write(&path, &initial).unwrap();
        Disk { path, initial }
    }

    fn drive_arg(&self) -> String {
        format!("file={},if=none,format=raw,id=d0,discard=unmap", self.path.display())
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

enum Transport {
    Pci,
    Mmio,
}

struct Case<'a> {
    test: &'a str,
    machine: &'a str,
    transport: Transport,
    /// Probe tokens besides `seed=`.
    tokens: &'a str,
    seed: u32,
    /// Extra QEMU arguments before the drive and the device.
    extra: &'a [&'a str],
}

fn run(case: &Case<'_>, disk: &Disk, qemu: &Path) -> VmOutput {
    let append = format!("{} seed={}", case.tokens, case.seed);
    let mut probe = QemuProbe::new(Path::new(rvmm_probes::PVH_ELF));
    probe.machine = case.machine;
    probe.append = Some(&append);
    probe.extra = case.extra.iter().map(|s| s.to_string()).collect();
    let device = match case.transport {
        Transport::Pci => format!("virtio-blk-pci,drive=d0,disable-legacy=on,serial={SERIAL}"),
        Transport::Mmio => format!("virtio-blk-device,drive=d0,serial={SERIAL}"),
    };
    probe.extra.extend(["-drive".to_string(), disk.drive_arg(), "-device".to_string(), device]);
    let out = VmRunner::new(qemu_probe_command(qemu, &probe)).timeout(TIMEOUT).run().expect("spawn qemu");
    assert!(!out.timed_out, "QEMU timed out\n{}", out.describe());
    eprintln!("{}: QEMU run took {:?}", case.test, out.elapsed);
    out
}

fn entries<'r>(r: &'r Report, key: &str) -> Vec<&'r str> {
    r.entries.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

/// The report lines every successful run has, whatever the transport and interrupts.
fn check_blk_report(case: &Case<'_>, disk: &Disk, r: &Report, out: &VmOutput) {
    let d = || out.describe();
    assert_eq!(r.get("blk-result"), Some("ok"), "{}", d());
    assert_eq!(r.get("probe-result"), Some("ok"), "{}", d());
    assert_eq!(out.exit_code(), Some(1), "debug-exit status 0 expected\n{}", d());

    let features = r
        .get("blk-features")
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("blk-features\n{}", d()));
    for bit in [32, 28, 9, 13, 14] {
        // VERSION_1, INDIRECT_DESC, FLUSH, DISCARD, WRITE_ZEROES: QEMU offers them all.
        assert!(features & (1 << bit) != 0, "feature bit {bit} not offered\n{}", d());
    }
    let accepted = r
        .get("blk-driver-features")
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("blk-driver-features\n{}", d()));
    assert_eq!(accepted & !features, 0, "accepted what was not offered\n{}", d());
    assert_eq!(r.get_u64("blk-capacity"), Some(SECTORS), "{}", d());
    assert_eq!(r.field("blk-queue", "size"), Some("16"), "the probe asks for 16 entries\n{}", d());
    assert_eq!(
        r.field("blk-initial", "fnv1a"),
        Some(format!("0x{:08x}", fnv1a32(&disk.initial[..4096])).as_str()),
        "the first read does not show the disk's contents\n{}",
        d()
    );
    for (key, want) in [
        ("blk-write", "ok"),
        ("blk-flush", "ok"),
        ("blk-readback", "ok"),
        ("blk-id", SERIAL),
        ("blk-discard", "ok"),
        ("blk-discard-read", "zeroes"),
        ("blk-write-zeroes", "ok"),
        ("blk-indirect", "ok"),
        ("blk-bounds", "status 1"),
    ] {
        assert_eq!(r.get(key), Some(want), "{key} ({})\n{}", case.test, d());
    }
}

fn check_pci_report(r: &Report, out: &VmOutput, mech: &str) {
    let d = || out.describe();
    assert!(
        r.get("pci-host").is_some_and(|v| v.starts_with("00:00.0 ") && v.contains(&format!("mech={mech}"))),
        "{}",
        d()
    );
    let pci = entries(r, "pci");
    let blk = pci
        .iter()
        .find(|v| v.contains(" 1af4:1042 "))
        .unwrap_or_else(|| panic!("no virtio-blk in the pci lines\n{}", d()));
    assert!(blk.ends_with("class=01.00.00"), "{}", d());
    let bdf = blk.split_whitespace().next().unwrap();
    assert_eq!(r.get("blk-transport"), Some(format!("pci {bdf} 1af4:1042").as_str()), "{}", d());
    // QEMU's virtio-blk-pci with disable-legacy=on: MSI-X table in BAR 1, the virtio
    // structures in the 64-bit BAR 4.
    let bars = entries(r, "pci-bar");
    let bar = |n: u32, ty: &str, size: &str| {
        bars.iter().any(|v| {
            v.starts_with(bdf) && v.contains(&format!(" bar={n} type={ty} ")) && v.ends_with(&format!("size={size}"))
        })
    };
    assert!(bar(1, "mem32", "0x1000"), "BAR 1\n{}", d());
    assert!(bar(4, "mem64", "0x4000"), "BAR 4\n{}", d());
    let vp = r.get("virtio-pci").unwrap_or("");
    for cap in ["common=bar4+", "notify=bar4+", "isr=bar4+", "device=bar4+", "mult=4"] {
        assert!(vp.contains(cap), "virtio-pci {cap}\n{}", d());
    }
}

fn check_irqs(r: &Report, out: &VmOutput) {
    let irqs: u64 = r
        .get("blk-irqs")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("blk-irqs\n{}", out.describe()));
    assert!(irqs >= REQUESTS, "{irqs} interrupts for {REQUESTS} requests\n{}", out.describe());
}

/// Seeks the next hole or data at or after `off` (SEEK_HOLE = 4, SEEK_DATA = 3).
fn seek(f: &File, off: u64, whence: i32) -> Option<u64> {
    extern "C" {
        fn lseek(fd: i32, offset: i64, whence: i32) -> i64;
    }
    // SAFETY: lseek only reads its integer arguments; the descriptor stays open.
    let r = unsafe { lseek(f.as_raw_fd(), off as i64, whence) };
    (r >= 0).then_some(r as u64)
}

/// The data ranges of a file, as SEEK_DATA/SEEK_HOLE report them.
fn data_ranges(path: &Path) -> Vec<(u64, u64)> {
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut ranges = Vec::new();
    let mut off = 0;
    while off < len {
        let Some(start) = seek(&f, off, 3) else { break };
        let end = seek(&f, start, 4).unwrap_or(len);
        ranges.push((start, end));
        off = end;
    }
    ranges
}

/// Whether this filesystem reports holes at all (a fresh sparse file is one hole).
fn fs_reports_holes(dir: &Path) -> bool {
    let p = dir.join(format!("qemu-virtio-blk-sparse-{}", std::process::id()));
    let f = File::create(&p).unwrap();
    f.set_len(1 << 20).unwrap();
    let hole = seek(&f, 0, 4);
    drop(f);
    let _ = std::fs::remove_file(&p);
    hole == Some(0)
}

fn check_disk(case: &Case<'_>, disk: &Disk) {
    let now = std::fs::read(&disk.path).unwrap();
    assert_eq!(now.len(), DISK_SIZE);
    for s in 0..8 {
        for i in 0..512 {
            let (got, want) = (now[s * 512 + i], pattern(s, i, case.seed));
            assert_eq!(got, want, "{}: sector {s} byte {i} on the host", case.test);
        }
    }
    assert!(now[8 * 512..16 * 512].iter().all(|&b| b == 0), "{}: sectors 8..15 not zero after DISCARD", case.test);
    assert!(
        now[16 * 512..24 * 512].iter().all(|&b| b == 0),
        "{}: sectors 16..23 not zero after WRITE_ZEROES",
        case.test
    );
    assert!(now[24 * 512..] == disk.initial[24 * 512..], "{}: the probe changed sectors past 23", case.test);

    // QEMU's raw driver with discard=unmap punches a hole (fallocate PUNCH_HOLE).
    let ranges = data_ranges(&disk.path);
    let blocks = std::fs::metadata(&disk.path).unwrap().blocks();
    eprintln!("{}: data ranges after the run {ranges:x?}, {blocks} blocks of 512 bytes allocated", case.test);
    if fs_reports_holes(disk.path.parent().unwrap()) {
        let in_hole = |off: u64| !ranges.iter().any(|&(a, b)| a <= off && off < b);
        assert!(
            in_hole(8 * 512) && in_hole(16 * 512 - 1),
            "{}: DISCARD of sectors 8..15 left no hole: {ranges:x?}",
            case.test
        );
        assert!(blocks < (DISK_SIZE / 512) as u64, "{}: {blocks} blocks", case.test);
    } else {
        eprintln!("{}: this filesystem reports no holes; hole check skipped", case.test);
    }
}

fn run_case(case: Case<'_>) -> Option<(Report, VmOutput)> {
    let qemu = qemu_or_skip(case.test)?;
    let disk = Disk::new(case.test);
    let out = run(&case, &disk, &qemu);
    let r = out.report();
    check_blk_report(&case, &disk, &r, &out);
    check_disk(&case, &disk);
    Some((r, out))
}

#[test]
fn pci_msix() {
    let case =
        Case { test: "pci_msix", machine: "q35", transport: Transport::Pci, tokens: "blk msix", seed: 11, extra: &[] };
    if let Some((r, out)) = run_case(case) {
        check_pci_report(&r, &out, "cf8");
        let irq = r.get("blk-irq").unwrap_or("");
        assert!(irq.starts_with("msix ") && irq.ends_with("enabled=1"), "{}", out.describe());
        check_irqs(&r, &out);
    }
}

#[test]
fn pci_intx() {
    let case =
        Case { test: "pci_intx", machine: "q35", transport: Transport::Pci, tokens: "blk intx", seed: 22, extra: &[] };
    if let Some((r, out)) = run_case(case) {
        check_pci_report(&r, &out, "cf8");
        // SeaBIOS fills in the interrupt line; the probe routes it through the IOAPIC.
        let irq = r.get("blk-irq").unwrap_or("");
        assert!(irq.starts_with("intx pin=A line="), "{}", out.describe());
        let line = r.field("blk-irq", "line").unwrap_or("?");
        assert_eq!(r.field("blk-irq", "gsi"), Some(line), "{}", out.describe());
        check_irqs(&r, &out);
        assert!(
            r.get("blk-irqs").is_some_and(|v| v.ends_with("other=0")),
            "interrupts with the ISR queue bit clear\n{}",
            out.describe()
        );
    }
}

#[test]
fn pci_polling() {
    let case =
        Case { test: "pci_polling", machine: "q35", transport: Transport::Pci, tokens: "blk", seed: 33, extra: &[] };
    if let Some((r, out)) = run_case(case) {
        check_pci_report(&r, &out, "cf8");
        assert_eq!(r.get("blk-irq"), Some("poll"), "{}", out.describe());
        assert!(r.get("blk-irqs").is_none(), "{}", out.describe());
    }
}

/// microvm with PCIe: no configuration mechanism 1 and no firmware BAR assignment, so
/// the probe uses ECAM and gives the BARs addresses from the host bridge's window.
#[test]
fn pci_msix_ecam_unassigned_bars() {
    let case = Case {
        test: "pci_msix_ecam_unassigned_bars",
        machine: "microvm,pcie=on",
        transport: Transport::Pci,
        tokens: "blk msix ecam=0xe0000000 pcimem=0xc0000000",
        seed: 44,
        extra: &[],
    };
    if let Some((r, out)) = run_case(case) {
        check_pci_report(&r, &out, "ecam");
        let assigned = entries(&r, "pci-assign");
        assert_eq!(assigned.len(), 2, "{}", out.describe());
        assert!(assigned.iter().all(|v| v.contains(" addr=0xc") && !v.contains("no room")), "{}", out.describe());
        check_irqs(&r, &out);
    }
}

/// microvm without ACPI: QEMU appends `virtio_mmio.device=512@0xfeb00e00:12` to the
/// command line; the probe drives that transport (version 2) and waits for its IRQ.
#[test]
fn mmio_microvm_irq() {
    let case = Case {
        test: "mmio_microvm_irq",
        machine: "microvm,acpi=off",
        transport: Transport::Mmio,
        tokens: "mmio intx",
        seed: 55,
        extra: &["-global", "virtio-mmio.force-legacy=false"],
    };
    if let Some((r, out)) = run_case(case) {
        let d = || out.describe();
        assert!(r.get("cmdline").is_some_and(|c| c.contains("virtio_mmio.device=512@0xfeb00e00:12")), "{}", d());
        assert_eq!(
            r.get("mmio"),
            Some("base=0xfeb00e00 size=0x200 irq=12 version=2 device=2 vendor=0x554d4551"),
            "{}",
            d()
        );
        assert_eq!(r.get("blk-transport"), Some("mmio 0xfeb00e00 irq=12"), "{}", d());
        assert_eq!(r.get("blk-irq"), Some("mmio irq=12 gsi=12 trigger=level"), "{}", d());
        assert!(r.get("pci-host").is_none(), "{}", d());
        check_irqs(&r, &out);
    }
}

#[test]
fn mmio_microvm_polling() {
    let case = Case {
        test: "mmio_microvm_polling",
        machine: "microvm,acpi=off",
        transport: Transport::Mmio,
        tokens: "mmio",
        seed: 66,
        extra: &["-global", "virtio-mmio.force-legacy=false"],
    };
    if let Some((r, out)) = run_case(case) {
        assert_eq!(r.get("blk-irq"), Some("poll"), "{}", out.describe());
        assert_eq!(r.get("blk-transport"), Some("mmio 0xfeb00e00 irq=12"), "{}", out.describe());
    }
}

/// QEMU 7.2's virtio-mmio is legacy (version 1) unless told otherwise: the probe
/// drives only version 2 and says so, and leaves the disk alone.
#[test]
fn mmio_legacy_refused() {
    let test = "mmio_legacy_refused";
    let Some(qemu) = qemu_or_skip(test) else {
        return;
    };
    let disk = Disk::new(test);
    let case = Case {
        test,
        machine: "microvm,acpi=off",
        transport: Transport::Mmio,
        tokens: "mmio",
        seed: 77,
        extra: &["-global", "virtio-mmio.force-legacy=true"],
    };
    let out = run(&case, &disk, &qemu);
    let r = out.report();
    assert!(r.get("mmio").is_some_and(|v| v.contains(" version=1 device=2 ")), "{}", out.describe());
    assert_eq!(r.get("blk-result"), Some("fail virtio-mmio block device is version 1 (legacy)"), "{}", out.describe());
    assert_eq!(out.exit_code(), Some(3), "probe status 1 expected\n{}", out.describe());
    assert!(std::fs::read(&disk.path).unwrap() == disk.initial);
}
