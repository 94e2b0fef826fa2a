/*
 * `legacy-spec`: datasheet points of the PC's legacy devices where two VMMs could
 * differ, so that one run under rvmm and one under QEMU can be put side by side:
 *
 * - the 16550A UART (PC16550D datasheet), on COM1 (the only UART QEMU has as the tests
 *   start it: `-nodefaults -serial stdio`), its setup saved and restored around the checks;
 * - the MC146818 RTC and its CMOS RAM;
 * - the 8042 keyboard controller's command port;
 * - port 0x61 (counter 2 gate, speaker enable, OUT2) and counter 2 of the 8254 in mode 0;
 * - PCI configuration mechanism 1 (PCI Local Bus 3.0, 3.2.2.3.2).
 *
 * Values the datasheet defines are checks ("legacy-spec-<name>: ok | fail key=0x.."),
 * values it leaves to the implementation (or that QEMU, the reference, does not follow)
 * are "legacy-spec-<name>: info key=0x.." lines with no verdict. The bookkeeping is
 * spec.c's. Everything runs with interrupts off and both 8259s masked; the IRQs the
 * checks raise (COM1's, the RTC's, the i8042's) are never delivered.
 *
 * Timing: waits are counted in TSC cycles at the assumed TSC_PER_MS (3 GHz), so
 * delay_ms(n) lasts at least n * 3 GHz / f_TSC ms; every wait below is long enough for
 * any TSC up to 10 GHz.
 *
 * See README.md ("Legacy device checks").
 */
#include "lib.h"
#include "spec.h"

static void delay_ms(u32 ms)
{
	u64 t0 = rdtsc();
	while (rdtsc() - t0 < ms * TSC_PER_MS)
		cpu_relax();
}

/* ------------------------------------------------------------------------- */
/* 16550A on COM1 */

#define U_RBR 0	/* RBR / THR; DLL with DLAB */
#define U_IER 1	/* IER; DLM with DLAB */
#define U_IIR 2	/* IIR (read) / FCR (write) */
#define U_LCR 3
#define U_MCR 4
#define U_LSR 5
#define U_MSR 6
#define U_SCR 7

static u8 urd(u32 reg) { return inb(COM1 + reg); }
static void uwr(u32 reg, u8 v) { outb(COM1 + reg, v); }

/* MCR values stepped through in loopback, and what MSR must read for each: bits 4-7
 * are the outputs mapped back (DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD); bits 0-3 are
 * the datasheet's deltas for the step from the previous MCR (TERI on RI's falling
 * edge only). The first step (from normal mode) has deltas that depend on the line. */
static const u8 loop_mcr[7] = {0x10, 0x11, 0x12, 0x14, 0x18, 0x1f, 0x10};
static const u8 loop_msr[7] = {0x00, 0x22, 0x13, 0x41, 0x8c, 0xf3, 0x0f};

struct uart_seen {
	u8 lsr_init;
	u8 scr55, scraa;
	u8 ier_ff;
	u8 iir_fifo_off, iir_fifo_on;
	u8 dll, dlm, ier_after_dlab;
	u8 msr_normal;
	u8 msr_first[7], msr_second[7];
	u8 lsr_before, lsr_with, rbr, lsr_after;
	int dr_seen;
	u8 iir_now, iir_later, rbr_timeout, iir_after_read;
};

/* All the UART work, with nothing printed in between (COM1 carries the report), and
 * COM1 restored afterwards: divisor, LCR, MCR, IER and scratch as they were, FIFOs on
 * and cleared (FCR 0x07, as uart_init() left them; pending input is lost). */
static void uart_run(struct uart_seen *s)
{
	/* Let the report's last bytes leave: TEMT. */
	for (u32 i = 0; i < 100000 && !(urd(U_LSR) & 0x40); i++)
		cpu_relax();
	s->lsr_init = urd(U_LSR);

	u8 lcr = urd(U_LCR), mcr = urd(U_MCR), ier = urd(U_IER), scr = urd(U_SCR);
	uwr(U_LCR, lcr | 0x80);
	u8 dll = urd(U_RBR), dlm = urd(U_IER);
	uwr(U_LCR, lcr & 0x7f);

	/* Scratch register. */
	uwr(U_SCR, 0x55);
	s->scr55 = urd(U_SCR);
	uwr(U_SCR, 0xaa);
	s->scraa = urd(U_SCR);
	uwr(U_SCR, scr);

	/* IER: only bits 0-3 exist. */
	uwr(U_IER, 0xff);
	s->ier_ff = urd(U_IER);
	uwr(U_IER, 0x00);

	/* IIR with nothing pending (IER 0): FIFOs off, then on. */
	uwr(U_IIR, 0x00);
	s->iir_fifo_off = urd(U_IIR);
	uwr(U_IIR, 0x07);
	s->iir_fifo_on = urd(U_IIR);

	/* DLAB: the divisor latch, IER untouched underneath. */
	uwr(U_IER, 0x05);
	uwr(U_LCR, (lcr & 0x7f) | 0x80);
	uwr(U_RBR, 0x34);
	uwr(U_IER, 0x12);
	s->dll = urd(U_RBR);
	s->dlm = urd(U_IER);
	uwr(U_RBR, dll);	/* back to the report's baud rate before the timeout check */
	uwr(U_IER, dlm);
	uwr(U_LCR, lcr & 0x7f);
	s->ier_after_dlab = urd(U_IER);
	uwr(U_IER, 0x00);

	/* Loopback: MSR for each MCR step, read twice (the first read clears the deltas). */
	s->msr_normal = urd(U_MSR);
	for (u32 i = 0; i < 7; i++) {
		uwr(U_MCR, loop_mcr[i]);
		s->msr_first[i] = urd(U_MSR);
		s->msr_second[i] = urd(U_MSR);
	}

	/* Loopback data (MCR 0x10, FIFOs on and cleared). */
	uwr(U_IIR, 0x07);
	s->lsr_before = urd(U_LSR);
	uwr(U_RBR, 0xa5);
	u64 t0 = rdtsc();
	u8 lsr = urd(U_LSR);
	while (!(lsr & 0x01) && rdtsc() - t0 < 10 * TSC_PER_MS)
		lsr = urd(U_LSR);
	s->dr_seen = lsr & 0x01;
	s->lsr_with = lsr;
	s->rbr = urd(U_RBR);
	s->lsr_after = urd(U_LSR);

	/* Character timeout: trigger level 14, IER.RDA, one byte through the loop. */
	uwr(U_IIR, 0xc7);
	uwr(U_IER, 0x01);
	uwr(U_RBR, 0x5a);
	s->iir_now = urd(U_IIR);
	delay_ms(5);	/* 4 character times at divisor 1 are 0.35 ms */
	s->iir_later = urd(U_IIR);
	s->rbr_timeout = urd(U_RBR);
	s->iir_after_read = urd(U_IIR);

	/* Restore. */
	uwr(U_IER, 0x00);
	uwr(U_IIR, 0x07);
	uwr(U_MCR, mcr);
	uwr(U_LCR, lcr | 0x80);
	uwr(U_RBR, dll);
	uwr(U_IER, dlm);
	uwr(U_LCR, lcr & 0x7f);
	uwr(U_SCR, scr);
	for (u32 i = 0; i < 32 && (urd(U_LSR) & 0x01); i++)
		urd(U_RBR);
	uwr(U_IER, ier);
	urd(U_MSR);	/* clears what leaving loopback may have set */
}

static void uart_checks(void)
{
	struct uart_seen s;
	uart_run(&s);

	spec_check("uart-lsr-idle", s.lsr_init == 0x60);
	if (s.lsr_init != 0x60)
		spec_seen("lsr", s.lsr_init);
	spec_end_line();

	int ok = s.scr55 == 0x55 && s.scraa == 0xaa;
	spec_check("uart-scratch", ok);
	if (!ok) {
		spec_seen("wrote55", s.scr55);
		spec_seen("wroteaa", s.scraa);
	}
	spec_end_line();

	spec_check("uart-ier-bits", s.ier_ff == 0x0f);
	if (s.ier_ff != 0x0f)
		spec_seen("wroteff", s.ier_ff);
	spec_end_line();

	spec_check("uart-iir-fifo-off", s.iir_fifo_off == 0x01);
	if (s.iir_fifo_off != 0x01)
		spec_seen("iir", s.iir_fifo_off);
	spec_end_line();

	spec_check("uart-iir-fifo-on", s.iir_fifo_on == 0xc1);
	if (s.iir_fifo_on != 0xc1)
		spec_seen("iir", s.iir_fifo_on);
	spec_end_line();

	ok = s.dll == 0x34 && s.dlm == 0x12 && s.ier_after_dlab == 0x05;
	spec_check("uart-dlab", ok);
	if (!ok) {
		spec_seen("dll", s.dll);
		spec_seen("dlm", s.dlm);
		spec_seen("ier", s.ier_after_dlab);
	}
	spec_end_line();

	/* Bits 4-7 on every read are the datasheet's mapping; the deltas are info. */
	ok = 1;
	for (u32 i = 0; i < 7; i++)
		ok &= (s.msr_first[i] & 0xf0) == (loop_msr[i] & 0xf0) && (s.msr_second[i] & 0xf0) == (loop_msr[i] & 0xf0);
	spec_check("uart-loop-msr", ok);
	if (!ok)
		for (u32 i = 0; i < 7; i++) {
			char key[] = "mcrXX";
			key[3] = "0123456789abcdef"[loop_mcr[i] >> 4];
			key[4] = "0123456789abcdef"[loop_mcr[i] & 15];
			spec_seen(key, s.msr_first[i]);
		}
	spec_end_line();
	/* The first read after each step (the datasheet: 0x22 0x13 0x41 0x8c 0xf3 0x0f
	 * after the first), and the deltas left for a second read (0). */
	spec_info("uart-loop-msr-raw");
	spec_seen("normal", s.msr_normal);
	for (u32 i = 0; i < 7; i++) {
		char key[] = "mcrXX";
		key[3] = "0123456789abcdef"[loop_mcr[i] >> 4];
		key[4] = "0123456789abcdef"[loop_mcr[i] & 15];
		spec_seen(key, s.msr_first[i]);
	}
	u8 left = 0;
	for (u32 i = 0; i < 7; i++)
		left |= s.msr_second[i] & 0x0f;
	spec_seen("deltas-on-second-read", left);
	spec_end_line();

	ok = !(s.lsr_before & 0x01) && s.dr_seen && s.rbr == 0xa5 && !(s.lsr_after & 0x01);
	spec_check("uart-loop-data", ok);
	if (!ok) {
		spec_seen("lsr-before", s.lsr_before);
		spec_seen("lsr-with", s.lsr_with);
		spec_seen("rbr", s.rbr);
		spec_seen("lsr-after", s.lsr_after);
	}
	spec_end_line();
	spec_info("uart-loop-lsr");
	spec_seen("before", s.lsr_before);
	spec_seen("with-data", s.lsr_with);
	spec_seen("after-read", s.lsr_after);
	spec_end_line();

	ok = s.iir_later == 0xcc && s.rbr_timeout == 0x5a && s.iir_after_read == 0xc1;
	spec_check("uart-char-timeout", ok);
	if (!ok) {
		spec_seen("later", s.iir_later);
		spec_seen("rbr", s.rbr_timeout);
		spec_seen("after-read", s.iir_after_read);
	}
	spec_end_line();
	spec_info("uart-timeout-iir");
	spec_seen("at-once", s.iir_now);
	spec_seen("after-5ms", s.iir_later);
	spec_seen("after-read", s.iir_after_read);
	spec_end_line();
}

/* ------------------------------------------------------------------------- */
/* MC146818 RTC */

#define RTC_SEC 0x00
#define RTC_MIN 0x02
#define RTC_HOUR 0x04
#define RTC_DOW 0x06
#define RTC_DOM 0x07
#define RTC_MON 0x08
#define RTC_YEAR 0x09
#define RTC_A 0x0a
#define RTC_B 0x0b
#define RTC_C 0x0c
#define RTC_D 0x0d
#define B_SET 0x80
#define B_PIE 0x40
#define B_DM 0x04	/* binary */
#define B_24H 0x02
#define C_IRQF 0x80
#define C_PF 0x40
#define C_UF 0x10


static void wait_no_uip(void)
{
	for (u32 i = 0; i < 20000 && (cmos_read(RTC_A) & 0x80); i++)
		cpu_relax();
}

static void rtc_checks(void)
{
	wait_no_uip();
	u8 a = cmos_read(RTC_A), b = cmos_read(RTC_B), d = cmos_read(RTC_D);
	spec_info("rtc-regs");
	spec_seen("a", a & 0x7f);	/* without UIP, which comes and goes */
	spec_seen("b", b);
	spec_end_line();

	spec_check("rtc-reg-d", d == 0x80);
	if (d != 0x80)
		spec_seen("d", d);
	spec_end_line();

	/* PF with PIE off: the datasheet sets PF at the periodic rate whatever PIE says. */
	cmos_read(RTC_C);
	delay_ms(10);
	u8 c = cmos_read(RTC_C);
	spec_info("rtc-pf-without-pie");
	spec_seen("rate", a & 0x0f);
	spec_seen("pf", !!(c & C_PF));
	spec_seen("irqf", !!(c & C_IRQF));
	spec_end_line();

	/* Read-to-clear: PIE on at 1024 Hz (A 0x26) sets PF and IRQF; an immediate second
	 * read is 0 (a new period may fall in between: up to 3 tries). */
	cmos_write(RTC_A, 0x26);
	cmos_write(RTC_B, (b & ~B_SET) | B_PIE);
	u8 c1 = 0, c2 = 0xff;
	for (u32 i = 0; i < 3 && c2; i++) {
		delay_ms(5);
		c1 = cmos_read(RTC_C);
		c2 = cmos_read(RTC_C);
	}
	cmos_write(RTC_B, b & ~B_SET);
	cmos_read(RTC_C);
	cmos_write(RTC_A, a & 0x7f);
	int ok = (c1 & (C_IRQF | C_PF)) == (C_IRQF | C_PF) && c2 == 0;
	spec_check("rtc-reg-c-clear", ok);
	if (!ok) {
		spec_seen("first", c1);
		spec_seen("second", c2);
	}
	spec_end_line();

	/* SET holds the clock: time registers read back what was written, BCD and binary. */
	wait_no_uip();
	static const u8 regs[7] = {RTC_SEC, RTC_MIN, RTC_HOUR, RTC_DOW, RTC_DOM, RTC_MON, RTC_YEAR};
	u8 saved[7];
	for (u32 i = 0; i < 7; i++)
		saved[i] = cmos_read(regs[i]);
	u8 hold = B_SET | (b & B_24H);
	cmos_write(RTC_B, hold);
	cmos_write(RTC_SEC, 0x45);
	cmos_write(RTC_MIN, 0x12);
	cmos_write(RTC_DOW, 0x03);
	u8 s1 = cmos_read(RTC_SEC), m1 = cmos_read(RTC_MIN), w1 = cmos_read(RTC_DOW);
	ok = s1 == 0x45 && m1 == 0x12 && w1 == 0x03;
	spec_check("rtc-set-bcd", ok);
	if (!ok) {
		spec_seen("sec", s1);
		spec_seen("min", m1);
		spec_seen("dow", w1);
	}
	spec_end_line();

	/* DM changed with the registers left alone: the datasheet does not convert them. */
	cmos_write(RTC_B, hold | B_DM);
	u8 s2 = cmos_read(RTC_SEC), m2 = cmos_read(RTC_MIN), w2 = cmos_read(RTC_DOW);

	cmos_write(RTC_SEC, 45);
	cmos_write(RTC_MIN, 12);
	cmos_write(RTC_DOW, 5);
	u8 s3 = cmos_read(RTC_SEC), m3 = cmos_read(RTC_MIN), w3 = cmos_read(RTC_DOW);
	ok = s3 == 45 && m3 == 12 && w3 == 5;
	spec_check("rtc-set-binary", ok);
	if (!ok) {
		spec_seen("sec", s3);
		spec_seen("min", m3);
		spec_seen("dow", w3);
	}
	spec_end_line();

	cmos_write(RTC_B, hold);
	u8 s4 = cmos_read(RTC_SEC), m4 = cmos_read(RTC_MIN), w4 = cmos_read(RTC_DOW);
	spec_info("rtc-dm-switch");
	spec_seen("to-binary-sec", s2);
	spec_seen("to-binary-min", m2);
	spec_seen("to-binary-dow", w2);
	spec_seen("to-bcd-sec", s4);
	spec_seen("to-bcd-min", m4);
	spec_seen("to-bcd-dow", w4);
	spec_end_line();

	/* Put the clock back as it was (in the original mode), then release SET. */
	cmos_write(RTC_B, B_SET | (b & (B_DM | B_24H)));
	for (u32 i = 0; i < 7; i++)
		cmos_write(regs[i], saved[i]);
	cmos_write(RTC_B, b & ~B_SET);
	cmos_read(RTC_C);

	/* CMOS RAM. */
	u8 old = cmos_read(0x40);
	cmos_write(0x40, 0x5a);
	u8 r1 = cmos_read(0x40);
	cmos_write(0x40, 0xa5);
	u8 r2 = cmos_read(0x40);
	cmos_write(0x40, old);
	ok = r1 == 0x5a && r2 == 0xa5;
	spec_check("rtc-cmos-ram", ok);
	if (!ok) {
		spec_seen("wrote5a", r1);
		spec_seen("wrotea5", r2);
	}
	spec_end_line();
}

/* ------------------------------------------------------------------------- */
/* 8042 */

#define KBC_DATA 0x60
#define KBC_STATUS 0x64
#define KBC_OBF 0x01
#define KBC_IBF 0x02

static void kbc_wait_in(void)
{
	u64 t0 = rdtsc();
	while ((inb(KBC_STATUS) & KBC_IBF) && rdtsc() - t0 < 50 * TSC_PER_MS)
		cpu_relax();
}

/* Waits for the output buffer; returns the status that showed it (OBF clear: timeout). */
static u8 kbc_wait_out(void)
{
	u64 t0 = rdtsc();
	u8 st = inb(KBC_STATUS);
	while (!(st & KBC_OBF) && rdtsc() - t0 < 50 * TSC_PER_MS)
		st = inb(KBC_STATUS);
	return st;
}

/* A controller command that answers one byte: the byte, or 0x100 | status on a timeout. */
static u32 kbc_command(u8 cmd)
{
	kbc_wait_in();
	outb(KBC_STATUS, cmd);
	u8 st = kbc_wait_out();
	if (!(st & KBC_OBF))
		return 0x100 | st;
	return inb(KBC_DATA);
}

static void i8042_checks(void)
{
	u8 st0 = inb(KBC_STATUS);
	u32 drained = 0;
	while (drained < 16 && (inb(KBC_STATUS) & KBC_OBF)) {
		inb(KBC_DATA);
		drained++;
	}
	spec_info("i8042-status");
	spec_seen("status", st0);
	spec_seen("drained", drained);
	spec_end_line();

	u32 v = kbc_command(0xaa);
	u8 st_after = inb(KBC_STATUS);
	u8 again = inb(KBC_DATA);
	/* 0x55, the output buffer empty once read, the system flag set by the self-test. */
	int ok = v == 0x55 && !(st_after & KBC_OBF) && (st_after & 0x04);
	spec_check("i8042-self-test", ok);
	if (!ok) {
		spec_seen("answer", v);
		spec_seen("status-after-read", st_after);
	}
	spec_end_line();

	/* Port 0x60 read again with the output buffer empty. */
	spec_info("i8042-reread");
	spec_seen("data", again);
	spec_seen("status", inb(KBC_STATUS));
	spec_end_line();

	spec_info("i8042-cmd-byte");
	spec_seen("value", kbc_command(0x20));
	spec_end_line();

	spec_info("i8042-input-port");
	spec_seen("value", kbc_command(0xc0));
	spec_end_line();
}

/* ------------------------------------------------------------------------- */
/* Port 0x61 and counter 2 */

#define PORT_B 0x61
#define P61_GATE2 0x01
#define P61_SPK 0x02
#define P61_OUT2 0x20
#define P61_REFRESH 0x10

/* Waits (at most `ms`) for OUT2 to read high; returns the last port 0x61 value. */
static u8 wait_out2(u32 ms)
{
	u64 t0 = rdtsc();
	u8 p = inb(PORT_B);
	while (!(p & P61_OUT2) && rdtsc() - t0 < ms * TSC_PER_MS)
		p = inb(PORT_B);
	return p;
}

static int out2(void) { return !!(inb(PORT_B) & P61_OUT2); }

static void pit_checks(void)
{
	u8 p0 = inb(PORT_B);

	/* Bits 0-1 read back what was written. */
	static const u8 w[4] = {0x01, 0x02, 0x03, 0x00};
	u8 r[4];
	for (u32 i = 0; i < 4; i++) {
		outb(PORT_B, w[i]);
		r[i] = inb(PORT_B);
	}
	int ok = 1;
	for (u32 i = 0; i < 4; i++)
		ok &= (r[i] & 3) == w[i];
	spec_check("p61-gate-speaker", ok);
	if (!ok)
		for (u32 i = 0; i < 4; i++) {
			char key[] = "wroteX";
			key[5] = '0' + w[i];
			spec_seen(key, r[i]);
		}
	spec_end_line();

	/* Bits 2-3 (parity/SERR# and IOCHK NMI enables: R/W on ICH9 and the AT), and
	 * whether bit 4 (refresh) toggles over 64 reads. */
	outb(PORT_B, 0x0c);
	u8 nmi = inb(PORT_B) & 0x0f;
	outb(PORT_B, 0x00);
	u8 prev = inb(PORT_B) & P61_REFRESH;
	u32 toggles = 0;
	for (u32 i = 0; i < 64; i++) {
		u8 now = inb(PORT_B) & P61_REFRESH;
		toggles += now != prev;
		prev = now;
	}
	spec_info("p61-bits");
	spec_seen("wrote0c", nmi);
	spec_seen("refresh-toggles", toggles != 0);
	spec_end_line();

	/* Counter 2, mode 0 (LSB/MSB, binary), gate on, speaker off: OUT2 low once the
	 * count is written, high at terminal count and held there (the check). Count
	 * 1193: 1 ms. */
	outb(PORT_B, P61_GATE2);
	outb(0x43, 0xb0);
	outb(0x42, 1193 & 0xff);
	outb(0x42, 1193 >> 8);
	int o_count = out2();
	u8 p = wait_out2(20);
	int rose = !!(p & P61_OUT2);
	delay_ms(5);
	int o_held = out2();
	ok = !o_count && rose && o_held;
	spec_check("pit-out2-mode0", ok);
	if (!ok) {
		spec_seen("after-count", o_count);
		spec_seen("rose", rose);
		spec_seen("held", o_held);
	}
	spec_end_line();

	/* Then (OUT2 high after a finished count) a new mode 0 control word, its LSB, its
	 * MSB: the datasheet has OUT low from the control word on (0 0 0); an 8254 that
	 * only acts on a complete count shows 1 1 0. Then the count runs out again. */
	outb(0x43, 0xb0);
	int o_ctrl = out2();
	outb(0x42, 1193 & 0xff);
	int o_lsb = out2();
	outb(0x42, 1193 >> 8);
	int o_msb = out2();
	p = wait_out2(20);
	spec_info("pit-out2-reprogram");
	spec_seen("control", o_ctrl);
	spec_seen("lsb", o_lsb);
	spec_seen("msb", o_msb);
	spec_seen("terminal", !!(p & P61_OUT2));
	spec_end_line();

	/* Gate low in mode 0: the datasheet stops the count, OUT2 stays low; gate high
	 * again lets it finish. Count 2. */
	outb(PORT_B, 0x00);
	outb(0x43, 0xb0);
	outb(0x42, 2);
	outb(0x42, 0);
	delay_ms(5);
	int o_gate_low = out2();
	outb(PORT_B, P61_GATE2);
	p = wait_out2(20);
	spec_info("pit-gate-low");
	spec_seen("out2-gate-low", o_gate_low);
	spec_seen("out2-gate-high", !!(p & P61_OUT2));
	spec_end_line();

	outb(0x43, 0xb0);	/* counter 2 stopped in mode 0 until a count comes */
	outb(PORT_B, p0 & 0x0f);
}

/* ------------------------------------------------------------------------- */
/* PCI configuration mechanism 1 */

static void pci_cf8_checks(void)
{
	u32 saved = inl(0xcf8);

	outl(0xcf8, 0x80000000);
	u32 en = inl(0xcf8);
	spec_check("pci-cf8-enable", en == 0x80000000);
	if (en != 0x80000000)
		spec_seen("read", en);
	spec_end_line();

	/* Bits 0-1 and 24-30: read-only 0 in the PCI spec. */
	outl(0xcf8, 0xff000003);
	u32 res = inl(0xcf8);
	spec_info("pci-cf8-reserved");
	spec_seen("wrote", 0xff000003);
	spec_seen("read", res);
	spec_end_line();

	outl(0xcf8, 0x80000000);
	u8 b = inb(0xcf8);
	u16 h = inw(0xcf8);
	u32 after = inl(0xcf8);
	spec_info("pci-cf8-narrow");
	spec_seen("inb", b);
	spec_seen("inw", h);
	spec_seen("dword-after", after);
	spec_end_line();

	outl(0xcf8, 0x80000000);
	u32 id = inl(0xcfc);
	u16 vendor = id & 0xffff;
	spec_check("pci-host-vendor", vendor != 0xffff && vendor != 0);
	if (vendor == 0xffff || vendor == 0)
		spec_seen("id", id);
	spec_end_line();
	spec_info("pci-host-id");
	spec_seen("vendor", vendor);
	spec_seen("device", id >> 16);
	spec_end_line();

	outl(0xcf8, saved);
}

void legacy_spec_report(void)
{
	pic_mask_all();
	spec_begin("legacy-spec");
	uart_checks();
	rtc_checks();
	i8042_checks();
	pit_checks();
	pci_cf8_checks();
	spec_result(NULL);
}
