//! The probe's interrupt-controller tokens (book chapter 3) under QEMU TCG on q35, the
//! independent reference for `rvmm/tests/irqchip.rs`:
//!
//! - `pit`: 8254 counter 2 through port 0x61, counter 0 read back with the latch and
//!   read-back commands, and its IRQ 0 through the IOAPIC pin the MADT override names.
//! - `pic`: the 8259A pair at 0x30/0x38 through LINT0 (ExtINT): IRR while masked, the
//!   poll command, then IRQ 0 (with `pit`) or COM1's IRQ 4 (with `rx=N`).
//! - `ioapic`: the IOAPIC's id and version registers, and with `rx=N` COM1 on a
//!   level-triggered redirection entry (remote IRR set until the EOI, one byte per
//!   interrupt, the line re-asserting until the receive FIFO is empty).
//!
//!
//! It also runs the probe's `legacy-spec` datasheet checks of the legacy devices (16550A,
//! MC146818, 8042, port 0x61 and counter 2, PCI mechanism 1), as `rvmm/tests/boot_paths.rs`
//! does on rvmm, and prints their `info` lines to put beside rvmm's.
//!
//! SeaBIOS leaves the PIT running at 18.2 Hz; the probe reprograms it. Each test skips
//! (with a notice on stderr) when `qemu-system-x86_64` is not installed. Every QEMU run
//! is killed after a time limit.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rvmm_tests::{qemu_probe_command, qemu_x86_64, QemuProbe, Report, VmOutput, VmRunner};

const TIMEOUT: Duration = Duration::from_secs(60);
/// Typed into COM1 for `rx=3`, and how the probe shows it.
const RX_BYTES: &[u8] = b"a\x02c";
const RX_SHOWN: &str = "a\\x02c";
/// One QEMU at a time: the PIT's interrupts come from QEMU's main-loop timers, which
/// fall behind when several TCG guests share two cores, and lost periods are not caught up.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn qemu_or_skip(test: &str) -> Option<PathBuf> {
    let q = qemu_x86_64();
    if q.is_none() {
        eprintln!("SKIPPED {test}: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
    }
    q
}

/// Boots the PVH probe on q35 with `cmdline`, typing [`RX_BYTES`] once it is up if `rx`.
fn boot(test: &str, cmdline: &str, rx: bool) -> Option<(Report, VmOutput)> {
    boot_typing_after(test, cmdline, rx.then_some("rvmm-probe: boot="))
}

/// [`boot`], typing [`RX_BYTES`] once the probe printed `after`.
fn boot_typing_after(test: &str, cmdline: &str, after: Option<&str>) -> Option<(Report, VmOutput)> {
    let qemu = qemu_or_skip(test)?;
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut probe = QemuProbe::new(Path::new(rvmm_probes::PVH_ELF));
    probe.append = Some(cmdline);
    let mut runner = VmRunner::new(qemu_probe_command(&qemu, &probe)).timeout(TIMEOUT);
    if let Some(after) = after {
        runner = runner.send_after(after, RX_BYTES);
    }
    let out = runner.run().expect("spawn qemu");
    assert!(!out.timed_out, "QEMU timed out\n{}", out.describe());
    eprintln!("{test}: QEMU run took {:?}", out.elapsed);
    Some((out.report(), out))
}

/// The leading number of a line such as `pit-irqs: 50 gsi=2 vector=0x60`.
fn count(r: &Report, key: &str) -> Option<u64> {
    r.get(key)?.split_whitespace().next()?.parse().ok()
}

fn hex(v: &str) -> u64 {
    u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap_or(u64::MAX)
}

/// The probe passed: `probe-result: ok` and debug-exit status 0 (QEMU exits with 1).
fn assert_passed(r: &Report, out: &VmOutput) {
    assert_eq!(r.get("probe-result"), Some("ok"), "{}", out.describe());
    assert_eq!(out.exit_code(), Some(1), "debug-exit status 0 expected\n{}", out.describe());
}

fn check_pit(r: &Report, out: &VmOutput) {
    let d = || out.describe();
    let ch2 = r.get("pit-ch2").unwrap_or("");
    assert!(ch2.starts_with("ok"), "pit-ch2\n{}", d());
    assert_eq!(r.field("pit-ch2", "toggles"), Some("8"), "{}", d());
    // Counter 0: LSB/MSB, mode 2, binary, count loaded (OUT, bit 7, is the model's).
    let rb = r.get("pit-readback").unwrap_or("");
    assert!(rb.ends_with(" ok"), "pit-readback\n{}", d());
    assert_eq!(hex(r.field("pit-readback", "status").unwrap_or("")) & 0x7f, 0x34, "{}", d());
    // ~1 kHz for 50 ms (TCG under load loses some), on the MADT's GSI for IRQ 0.
    let n = count(r, "pit-irqs").unwrap_or(0);
    assert!((25..=75).contains(&n), "pit-irqs {n}\n{}", d());
    assert_eq!(r.field("pit-irqs", "gsi"), Some("2"), "{}", d());
    assert_eq!(r.field("pit-irqs", "vector"), Some("0x60"), "{}", d());
    let rate: u64 = r
        .get("pit-rate")
        .and_then(|v| v.trim_start_matches('~').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((500..=1500).contains(&rate), "pit-rate {rate}\n{}", d());
}

fn check_pic_poll(r: &Report, out: &VmOutput) {
    let d = || out.describe();
    assert!(r.get("pic-poll").unwrap_or("").starts_with("ok"), "pic-poll\n{}", d());
    assert_eq!(hex(r.field("pic-poll", "irr").unwrap_or("")) & 1, 1, "IRR bit 0 while masked\n{}", d());
    assert_eq!(r.field("pic-poll", "poll"), Some("0x80"), "{}", d());
    // The datasheet's poll is an INTA: IRQ 0 is in service until the EOI.
    assert_eq!(r.field("pic-poll", "isr-after-poll"), Some("0x01"), "{}", d());
}

fn check_lvt0(r: &Report, out: &VmOutput) {
    let lvt0 = hex(r.field("pic-irqs", "lvt0").unwrap_or(""));
    assert_eq!(lvt0 & 0x1_0700, 0x700, "LVT0 is an unmasked ExtINT\n{}", out.describe());
}

#[test]
fn pit_counters_and_irq0_through_the_ioapic() {
    let Some((r, out)) = boot("pit", "pit", false) else { return };
    check_pit(&r, &out);
    assert_passed(&r, &out);
}

#[test]
fn pit_irq0_through_the_8259a() {
    let Some((r, out)) = boot("pit_pic", "pit pic", false) else { return };
    check_pit(&r, &out);
    check_pic_poll(&r, &out);
    let n = count(&r, "pic-irqs").unwrap_or(0);
    assert!((25..=75).contains(&n), "pic-irqs {n}\n{}", out.describe());
    assert_eq!(r.field("pic-irqs", "vector"), Some("0x30"), "{}", out.describe());
    assert_eq!(r.field("pic-irqs", "isr"), Some("0x01"), "{}", out.describe());
    check_lvt0(&r, &out);
    assert_passed(&r, &out);
}

#[test]
fn ioapic_registers_and_level_triggered_serial() {
    let Some((r, out)) = boot("rx_ioapic", "rx=3 ioapic", true) else { return };
    let d = || out.describe();
    assert_eq!(r.field("ioapic", "entries"), Some("24"), "{}", d());
    assert_eq!(r.field("ioapic", "version"), Some("0x20"), "QEMU's q35 IOAPIC\n{}", d());
    assert_eq!(r.field("ioapic", "id"), r.field("ioapic", "madt-id"), "{}", d());
    assert_eq!(r.get("serial-rx"), Some(RX_SHOWN), "{}", d());
    assert!(r.get("ioapic-level").unwrap_or("").starts_with("ok"), "ioapic-level\n{}", d());
    // One byte per interrupt: the level line brought every byte.
    assert_eq!(r.field("ioapic-level", "bytes"), Some("3"), "{}", d());
    assert_eq!(r.field("ioapic-level", "irqs"), Some("3"), "{}", d());
    assert_passed(&r, &out);
}

#[test]
fn serial_irq4_through_the_8259a() {
    let Some((r, out)) = boot("rx_pic", "rx=3 pic", true) else { return };
    let d = || out.describe();
    check_pic_poll(&r, &out);
    assert_eq!(r.get("serial-rx"), Some(RX_SHOWN), "{}", d());
    let n = count(&r, "pic-irqs").unwrap_or(0);
    assert!((1..=3).contains(&n), "pic-irqs {n}\n{}", d());
    assert_eq!(r.field("pic-irqs", "vector"), Some("0x34"), "{}", d());
    assert_eq!(r.field("pic-irqs", "isr"), Some("0x10"), "{}", d());
    check_lvt0(&r, &out);
    assert_passed(&r, &out);
}

/// The probe's `rx-fifo=14`: input below the trigger level arrives through the
/// character-timeout interrupt, as the same test checks on rvmm.
#[test]
fn serial_input_below_the_fifo_trigger_by_character_timeout() {
    // Typed once the trigger is 14, so that no byte can come by data-available.
    let Some((r, out)) = boot_typing_after("rx_fifo", "rx=3 rx-fifo=14", Some("serial-rx-fifo:")) else { return };
    assert_eq!(r.get("serial-rx-fifo"), Some("trigger=14"), "{}", out.describe());
    assert_eq!(r.get("serial-rx"), Some(RX_SHOWN), "{}", out.describe());
    assert_passed(&r, &out);
}

/// Every `legacy-spec` check is `ok` under QEMU; the `info` lines are printed, prefixed
/// by `qemu`, to compare with rvmm's (`cargo test ... -- --nocapture`).
#[test]
fn legacy_device_spec_checks() {
    let Some((r, out)) = boot("legacy_spec", "legacy-spec", false) else { return };
    rvmm_tests::check_legacy_spec("qemu", &out);
    assert_passed(&r, &out);
}
