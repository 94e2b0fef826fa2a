//! The legacy interrupt hardware (book chapter 3) in both irqchip modes: `--irqchip
//! kernel` (KVM's 8259A pair, IOAPIC and PIT) and `--irqchip split` (rvmm's own, with
//! KVM's local APICs). Each test boots the probe with the same tokens in both modes and
//! asserts the observations `tests/tests/qemu_irq.rs` checks under QEMU, the reference,
//! and that both modes agree:
//!
//! - `pit`: counter 2 through port 0x61, counter 0 read back with the latch and
//!   read-back commands, IRQ 0 through the IOAPIC pin the MADT override names (GSI 2).
//! - `pit pic`: IRR while masked, the poll command, IRQ 0 through the 8259A and LINT0.
//! - `rx=3 ioapic`: id/version registers; COM1 on a level-triggered IOAPIC entry.
//! - `rx=3 pic`: COM1's IRQ 4 through the 8259A.
//!
//! Every failing check of both modes is collected, so a failure shows what the probe
//! saw in each mode side by side.

mod common;

use std::sync::Mutex;

use common::*;
use rvmm_tests::{Report, VmOutput, VmRunner};

/// Typed into COM1 for `rx=3` (no Ctrl-A: that is rvmm's console escape), and how the
/// probe shows it.
const RX_BYTES: &[u8] = b"a\x02c";
const RX_SHOWN: &str = "a\\x02c";

/// One VM at a time: the split PIT's timer thread and KVM's hrtimers both fall behind
/// when several guests share the two cores, which would blur the 50 ms counts.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Kernel,
    Split,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Kernel => "kernel",
            Mode::Split => "split",
        }
    }
}

const MODES: [Mode; 2] = [Mode::Kernel, Mode::Split];

struct Run {
    mode: Mode,
    out: VmOutput,
    report: Report,
    /// Failed checks, each a sentence naming what the probe printed.
    errors: Vec<String>,
}

impl Run {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.errors.push(what());
        }
    }
    fn line(&self, key: &str) -> &str {
        self.report.get(key).unwrap_or("(missing)")
    }
    fn field(&self, key: &str, name: &str) -> Option<&str> {
        self.report.field(key, name)
    }
    /// The leading number of a line such as `pit-irqs: 50 gsi=2 vector=0x60`.
    fn count(&self, key: &str) -> Option<u64> {
        self.report.get(key)?.split_whitespace().next()?.parse().ok()
    }
}

fn hex(v: Option<&str>) -> u64 {
    v.and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()).unwrap_or(u64::MAX)
}

/// Boots the PVH probe with `cmdline` in `mode`, typing [`RX_BYTES`] once it is up if `rx`.
fn boot(mode: Mode, cmdline: &str, rx: bool) -> Run {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cmd = rvmm_run(&["--kernel", rvmm_probes::PVH_ELF, "--irqchip", mode.arg(), "--cmdline", cmdline]);
    let mut runner = VmRunner::new(cmd).timeout(TIMEOUT);
    if rx {
        runner = runner.send_after("rvmm-probe: boot=", RX_BYTES);
    }
    let out = runner.run().expect("spawn rvmm");
    let report = out.report();
    let mut run = Run { mode, out, report, errors: Vec::new() };
    run.check(!run.out.timed_out, || "rvmm timed out".into());
    run
}

/// Panics with every failed check of every mode and both transcripts.
fn finish(runs: &[Run], cross: Vec<String>) {
    let failed = runs.iter().any(|r| !r.errors.is_empty()) || !cross.is_empty();
    if !failed {
        return;
    }
    let mut msg = String::new();
    for r in runs {
        for e in &r.errors {
            msg += &format!("--irqchip {}: {e}\n", r.mode.arg());
        }
    }
    for e in &cross {
        msg += &format!("kernel vs split: {e}\n");
    }
    for r in runs {
        msg += &format!("\n===== --irqchip {} =====\n{}\n", r.mode.arg(), r.out.describe());
    }
    panic!("{msg}");
}

/// `probe-result` names no failure starting with `prefix` (other tokens' failures are
/// other tests' business).
fn no_failure(run: &mut Run, prefix: &str) {
    let result = run.line("probe-result").to_string();
    let bad = result.strip_prefix("fail ").is_some_and(|r| r.split(", ").any(|f| f.starts_with(prefix)));
    run.check(!bad, || format!("probe-result names a {prefix} failure: {result}"));
}

fn check_pit(run: &mut Run) {
    let ch2 = run.line("pit-ch2").to_string();
    run.check(ch2.starts_with("ok") && run.field("pit-ch2", "toggles") == Some("8"), || {
        format!("counter 2 through port 0x61: pit-ch2: {ch2}")
    });
    let rb = run.line("pit-readback").to_string();
    let status = hex(run.field("pit-readback", "status"));
    run.check(rb.ends_with(" ok") && status & 0x7f == 0x34, || {
        format!("counter 0 latch/read-back (want status & 0x7f = 0x34, LSB/MSB mode 2): pit-readback: {rb}")
    });
    let n = run.count("pit-irqs").unwrap_or(0);
    let irqs = run.line("pit-irqs").to_string();
    let pin0 = run.report.get("pit-irqs-pin0").map(|v| format!(" (pit-irqs-pin0: {v})")).unwrap_or_default();
    run.check((25..=75).contains(&n), || {
        format!("IRQ 0 through the IOAPIC: want ~50 in 50 ms on the MADT's GSI: pit-irqs: {irqs}{pin0}")
    });
    run.check(run.field("pit-irqs", "gsi") == Some("2") && run.field("pit-irqs", "vector") == Some("0x60"), || {
        format!("IRQ 0 GSI/vector: pit-irqs: {irqs}")
    });
    let rate: u64 = run
        .report
        .get("pit-rate")
        .and_then(|v| v.trim_start_matches('~').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let rate_line = run.line("pit-rate").to_string();
    run.check((700..=1300).contains(&rate), || format!("IRQ 0 rate: want ~1000 Hz: pit-rate: {rate_line}"));
    no_failure(run, "pit");
}

fn check_pic_poll(run: &mut Run) {
    let line = run.line("pic-poll").to_string();
    let irr = hex(run.field("pic-poll", "irr"));
    run.check(line.starts_with("ok") && irr & 1 == 1 && run.field("pic-poll", "poll") == Some("0x80"), || {
        format!("IRR with IRQ 0 masked, then poll (want irr bit 0, poll=0x80): pic-poll: {line}")
    });
    // The 8259A datasheet (and QEMU): a poll is an INTA, so IRQ 0 stays in service
    // until the EOI. KVM's in-kernel i8259 (pic_poll_read) clears the ISR bit at once,
    // which only `--irqchip kernel` can show.
    let isr = run.field("pic-poll", "isr-after-poll").unwrap_or("").to_string();
    if run.mode == Mode::Split {
        run.check(isr == "0x01", || format!("a poll must leave IRQ 0 in service: isr-after-poll={isr}"));
    } else if isr != "0x01" {
        eprintln!("note: --irqchip kernel: KVM's 8259A clears ISR on a poll (isr-after-poll={isr})");
    }
    no_failure(run, "pic-poll");
}

fn check_pic_irqs(run: &mut Run, min: u64, max: u64, vector: &str, isr: &str) {
    let line = run.line("pic-irqs").to_string();
    let n = run.count("pic-irqs").unwrap_or(0);
    run.check((min..=max).contains(&n), || {
        format!("want {min}..={max} interrupts through the 8259A: pic-irqs: {line}")
    });
    run.check(run.field("pic-irqs", "vector") == Some(vector) && run.field("pic-irqs", "isr") == Some(isr), || {
        format!("want vector={vector} isr={isr} (ISR read in the handler): pic-irqs: {line}")
    });
    let lvt0 = hex(run.field("pic-irqs", "lvt0"));
    run.check(lvt0 & 0x1_0700 == 0x700, || format!("the BSP's LVT0 must be an unmasked ExtINT: pic-irqs: {line}"));
    no_failure(run, "pic");
}

fn check_serial(run: &mut Run) {
    let rx = run.line("serial-rx").to_string();
    run.check(rx == RX_SHOWN, || format!("serial-rx: {rx} (want {RX_SHOWN})"));
    no_failure(run, "serial-rx");
}

/// Both modes' counts in the same 50 ms window differ by at most `tolerance`.
fn same_count(runs: &[Run], key: &str, tolerance: u64, cross: &mut Vec<String>) {
    let (a, b) = (runs[0].count(key).unwrap_or(0), runs[1].count(key).unwrap_or(0));
    if a.abs_diff(b) > tolerance {
        cross.push(format!("{key}: {a} vs {b} in the same window"));
    }
}

fn same_field(runs: &[Run], key: &str, name: &str, cross: &mut Vec<String>) {
    let (a, b) = (runs[0].field(key, name), runs[1].field(key, name));
    if a != b {
        cross.push(format!("{key} {name}: {a:?} vs {b:?}"));
    }
}

#[test]
fn pit_counters_and_irq0_through_the_ioapic() {
    let mut runs: Vec<Run> = MODES.iter().map(|&m| boot(m, "pit", false)).collect();
    for run in &mut runs {
        check_pit(run);
        let (ok, code) = (run.report.ok(), run.out.exit_code());
        let result = run.line("probe-result").to_string();
        run.check(ok && code == Some(0), || format!("probe-result: {result}, exit {code:?}"));
    }
    let mut cross = Vec::new();
    same_count(&runs, "pit-irqs", 20, &mut cross);
    same_field(&runs, "pit-ch2", "toggles", &mut cross);
    finish(&runs, cross);
}

#[test]
fn pit_irq0_through_the_8259a() {
    // The pit-* lines of this run are the previous test's; here the 8259A's.
    let mut runs: Vec<Run> = MODES.iter().map(|&m| boot(m, "pit pic", false)).collect();
    for run in &mut runs {
        check_pic_poll(run);
        check_pic_irqs(run, 25, 75, "0x30", "0x01");
    }
    let mut cross = Vec::new();
    same_count(&runs, "pic-irqs", 20, &mut cross);
    for (key, name) in [("pic-poll", "irr"), ("pic-poll", "poll"), ("pic-irqs", "vector"), ("pic-irqs", "isr")] {
        same_field(&runs, key, name, &mut cross);
    }
    finish(&runs, cross);
}

#[test]
fn serial_irq4_through_the_8259a() {
    let mut runs: Vec<Run> = MODES.iter().map(|&m| boot(m, "rx=3 pic", true)).collect();
    for run in &mut runs {
        check_pic_poll(run);
        check_serial(run);
        check_pic_irqs(run, 1, 3, "0x34", "0x10");
        let ok = run.report.ok() && run.out.exit_code() == Some(0);
        let result = run.line("probe-result").to_string();
        run.check(ok, || format!("probe-result: {result}"));
    }
    let mut cross = Vec::new();
    for (key, name) in [("pic-irqs", "vector"), ("pic-irqs", "isr"), ("pic-poll", "poll")] {
        same_field(&runs, key, name, &mut cross);
    }
    finish(&runs, cross);
}

#[test]
fn ioapic_level_triggered_serial_input() {
    let mut runs: Vec<Run> = MODES.iter().map(|&m| boot(m, "rx=3 ioapic", true)).collect();
    for run in &mut runs {
        check_serial(run);
        let line = run.line("ioapic").to_string();
        // KVM's in-kernel IOAPIC is an 82093AA (0x11); rvmm's has the EOI register (0x20).
        let version = if run.mode == Mode::Kernel { "0x11" } else { "0x20" };
        run.check(
            run.field("ioapic", "entries") == Some("24") && run.field("ioapic", "version") == Some(version),
            || format!("want entries=24 version={version}: ioapic: {line}"),
        );
        let level = run.line("ioapic-level").to_string();
        if level.starts_with("fail vector not in service at the LAPIC") {
            // The host's KVM (kvm_pvm) never shows a delivered vector in the LAPIC's
            // ISR and ends a level-triggered interrupt at the IOAPIC when it delivers
            // it, not at the guest's EOI; QEMU with kernel-irqchip=on|split shows the
            // same. Nothing rvmm does can change that, so only the bytes are checked.
            eprintln!(
                "NOTICE --irqchip {}: remote IRR / EOI not checkable on this host's KVM: ioapic-level: {level}",
                run.mode.arg()
            );
            run.check(run.field("ioapic-level", "bytes") == Some("3"), || format!("ioapic-level: {level}"));
        } else {
            run.check(level.starts_with("ok") && run.field("ioapic-level", "bytes") == Some("3"), || {
                format!(
                    "level-triggered pin 4: want ok, one byte per interrupt, remote IRR set before the EOI \
                     and clear after: ioapic-level: {level}"
                )
            });
            run.check(run.field("ioapic-level", "irqs") == Some("3"), || {
                format!("want exactly 3 interrupts for 3 bytes: ioapic-level: {level}")
            });
        }
    }
    let mut cross = Vec::new();
    same_field(&runs, "ioapic", "entries", &mut cross);
    same_field(&runs, "ioapic-level", "bytes", &mut cross);
    finish(&runs, cross);
}

#[test]
fn ioapic_id_register_matches_the_madt() {
    let mut runs: Vec<Run> = MODES.iter().map(|&m| boot(m, "ioapic", false)).collect();
    for run in &mut runs {
        let line = run.line("ioapic").to_string();
        let (id, madt) =
            (run.field("ioapic", "id").map(str::to_string), run.field("ioapic", "madt-id").map(str::to_string));
        run.check(id.is_some() && id == madt, || {
            format!("the IOAPIC's ID register must be the ID the MADT (and MP table) give it: ioapic: {line}")
        });
    }
    let mut cross = Vec::new();
    same_field(&runs, "ioapic", "id", &mut cross);
    finish(&runs, cross);
}
