/*
 * The legacy interrupt hardware of a PC (book chapter 3), driven by three command-line
 * tokens. Without them nothing here runs.
 *
 *   pit     8254: counter 2 through port 0x61 (mode 0 calibrates the TSC, mode 3
 *           toggles OUT2), counter 0 in mode 2 at ~1 kHz read back with the counter
 *           latch and the read-back commands, and its IRQ 0 through the IOAPIC pin
 *           that the MADT interrupt source override names (GSI 2 on a PC), counted
 *           for 50 ms of TSC time.
 *   pic     8259A pair remapped to 0x30/0x38, the IOAPIC pin of the source masked,
 *           the BSP's LVT0 as ExtINT: IRR read while IRQ 0 is masked, the poll
 *           command, then IRQ 0 (the PIT) counted for 50 ms, or, with rx=N, COM1's
 *           IRQ 4 as the serial input's interrupt.
 *   ioapic  IOAPIC id and version registers; with rx=N, COM1 on pin 4 as a
 *           level-triggered entry: each interrupt reads one byte, so the line stays
 *           asserted and the IOAPIC delivers again after the EOI until the receive
 *           FIFO is empty; remote IRR (bit 14) must be set before the LAPIC EOI and
 *           clear after it.
 *
 * Every wait is bounded by the TSC and by the 10 ms LAPIC timer (`ticks`).
 * Only the first IOAPIC (0xfec00000, GSI base 0) is used.
 */
#include "irq.h"

#define IOAPIC_BASE 0xfec00000UL
#define PIC1 0x20
#define PIC2 0xa0
#define PIT_CH0 0x40
#define PIT_CH2 0x42
#define PIT_CTL 0x43
#define PORT_B 0x61
#define PIT_HZ 1193182UL
#define PIT_DIV 1193		/* counter 0: ~1000.15 Hz */
#define CAL_COUNT 11932		/* counter 2 mode 0: 10 ms */
#define WINDOW_MS 50
#define RTE_REMOTE_IRR (1u << 14)
#define RTE_LEVEL (1u << 15)
#define RTE_MASKED (1u << 16)
#define LVT_MASKED (1u << 16)

/* ------------------------------------------------------------------------- */
/* Tokens (probe.c ignores the ones it does not know) */

static int t_pit, t_pic, t_ioapic;
static u32 t_rx;
static int parsed;

static int tok_eq(const char *t, u32 len, const char *w)
{
	u32 i = 0;
	for (; i < len && w[i]; i++)
		if (t[i] != w[i])
			return 0;
	return i == len && !w[i];
}

static void parse_tokens(void)
{
	if (parsed)
		return;
	parsed = 1;
	const char *s = cmdline;
	while (*s) {
		u32 len;
		const char *t = next_token(&s, &len);
		u64 v;
		if (!len)
			continue;
		if (tok_eq(t, len, "pit"))
			t_pit = 1;
		else if (tok_eq(t, len, "pic"))
			t_pic = 1;
		else if (tok_eq(t, len, "ioapic"))
			t_ioapic = 1;
		else if (len > 3 && t[0] == 'r' && t[1] == 'x' && t[2] == '=' &&
			 parse_num(t + 3, len - 3, 0, &v) == len - 3)
			t_rx = (u32)v;
	}
}

/* ------------------------------------------------------------------------- */
/* Output helpers */

static void put_hex2(u32 v)
{
	puts("0x");
	put_hexn(v, 2);
}

/* ------------------------------------------------------------------------- */
/* IDT stubs: each pushes its vector; irqc_common saves the caller-saved registers and
 * calls irq_dispatch(vector). Vectors 0x30-0x3f (index 0-15), 0x60 (16), 0x61 (17). */

__asm__(
	"	.text\n"
	"	.irp v, 48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,96,97\n"
	"irqc_stub_\\v:\n"
	"	pushq	$\\v\n"
	"	jmp	irqc_common\n"
	"	.endr\n"
	"irqc_common:\n"
	"	pushq	%rax\n"
	"	pushq	%rcx\n"
	"	pushq	%rdx\n"
	"	pushq	%rsi\n"
	"	pushq	%rdi\n"
	"	pushq	%r8\n"
	"	pushq	%r9\n"
	"	pushq	%r10\n"
	"	pushq	%r11\n"
	"	cld\n"
	"	movq	72(%rsp), %rdi\n"	/* the vector */
	"	subq	$8, %rsp\n"		/* keep the call 16-byte aligned */
	"	call	irq_dispatch\n"
	"	addq	$8, %rsp\n"
	"	popq	%r11\n"
	"	popq	%r10\n"
	"	popq	%r9\n"
	"	popq	%r8\n"
	"	popq	%rdi\n"
	"	popq	%rsi\n"
	"	popq	%rdx\n"
	"	popq	%rcx\n"
	"	popq	%rax\n"
	"	addq	$8, %rsp\n"		/* the vector */
	"	iretq\n"
	"	.section .rodata\n"
	"	.balign 8\n"
	"	.globl	irqc_stubs\n"
	"irqc_stubs:\n"
	"	.irp v, 48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,96,97\n"
	"	.quad	irqc_stub_\\v\n"
	"	.endr\n"
	"	.text\n");

extern const u64 irqc_stubs[18];

struct gate {
	u16 off0, sel;
	u8 ist, attr;
	u16 off1;
	u32 off2, zero;
} __attribute__((packed));

static struct gate *idt_gate(u32 vec)
{
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) idtr;
	__asm__ volatile("sidt %0" : "=m"(idtr));
	return (struct gate *)idtr.base + vec;
}

/* Points `vec` at its irq.c stub; the old gate goes to *save if given. */
static void gate_install(u32 vec, struct gate *save)
{
	u64 h = vec >= 0x30 && vec <= 0x3f ? irqc_stubs[vec - 0x30] : irqc_stubs[16 + (vec - VEC_PIT)];
	struct gate *g = idt_gate(vec);
	if (save)
		memcpy(save, g, sizeof(*g));
	g->off0 = h & 0xffff;
	g->sel = SEL_CODE64;
	g->ist = 0;
	g->attr = 0x8e;
	g->off1 = (h >> 16) & 0xffff;
	g->off2 = h >> 32;
	g->zero = 0;
}

static void gate_restore(u32 vec, const struct gate *save)
{
	memcpy(idt_gate(vec), save, sizeof(*save));
}

/* ------------------------------------------------------------------------- */
/* Time */

static u64 tsc_khz;	/* TSC cycles per ms from PIT counter 2; 0 if unknown */

static u64 ms_tsc(u64 ms) { return ms * (tsc_khz ? tsc_khz : TSC_PER_MS); }

/* Sleeps with interrupts enabled for `ms` of TSC time, or ms/10 ticks of the 10 ms
 * LAPIC timer if the TSC rate is unknown (the timer also bounds the TSC wait). */
static void irq_window(u32 ms)
{
	u64 saved = ticks, t0 = rdtsc();
	u64 len = tsc_khz ? ms * tsc_khz : ms * TSC_PER_MS * 4;
	u64 max_ticks = tsc_khz ? ms / 10 * 4 + 10 : ms / 10;
	ticks = 0;
	timer_start();
	while (rdtsc() - t0 < len && ticks < max_ticks)
		wait_irq();
	timer_stop();
	ticks = saved;
}

/* ------------------------------------------------------------------------- */
/* IOAPIC (the first one, pin = GSI) */

static u32 ioapic_rd(u32 reg)
{
	wr32(IOAPIC_BASE, reg);
	return rd32(IOAPIC_BASE + 0x10);
}

static void ioapic_wr(u32 reg, u32 v)
{
	wr32(IOAPIC_BASE, reg);
	wr32(IOAPIC_BASE + 0x10, v);
}

static u32 rte_lo(u32 pin) { return ioapic_rd(0x10 + 2 * pin); }

static int madt_scanned, madt_id = -1;
static u32 iso_gsi[16];	/* ISA IRQ -> GSI from the MADT interrupt source overrides */
static void madt_scan(void);

/* Masks the IOAPIC pin of ISA IRQ `irq` (after the MADT overrides). */
static void isa_mask(u32 irq)
{
	madt_scan();
	ioapic_mask_gsi(iso_gsi[irq]);
}

static u8 sum8(u64 a, u32 n)
{
	u8 s = 0;
	while (n--)
		s += rd8(a++);
	return s;
}

/* From the MADT: the ID of the IOAPIC at IOAPIC_BASE (madt_id, -1 if none) and the
 * interrupt source overrides (iso_gsi). The RSDP is found by a scan of the EBDA's first
 * KiB and 0xE0000-0xFFFFF, where SeaBIOS and rvmm put it. */
static void madt_scan(void)
{
	if (madt_scanned)
		return;
	madt_scanned = 1;
	for (u32 i = 0; i < 16; i++)
		iso_gsi[i] = i;
	u64 rsdp = 0, ebda = (u64)rd16(0x40e) << 4;
	for (u64 a = ebda && ebda < 0xa0000 ? ebda : 0xe0000; a < 0x100000 && !rsdp; a += 16) {
		if (rd32(a) == 0x20445352 && rd32(a + 4) == 0x20525450 && !sum8(a, 20))
			rsdp = a;
		if (a == ebda + 1008)
			a = 0xe0000 - 16;
	}
	if (!rsdp)
		return;
	u64 root = rd32(rsdp + 16);
	u32 esz = 4;
	if (rd8(rsdp + 15) >= 2 && rd64(rsdp + 24) && rd64(rsdp + 24) < 0x100000000UL) {
		root = rd64(rsdp + 24);
		esz = 8;
	}
	if (!root)
		return;
	u32 rlen = rd32(root + 4);
	for (u32 off = 36; off + esz <= rlen && rlen <= 65536; off += esz) {
		u64 t = esz == 8 ? rd64(root + off) : rd32(root + off);
		if (!t || t >= 0x100000000UL || rd32(t) != 0x43495041) /* "APIC" */
			continue;
		u32 len = rd32(t + 4);
		for (u32 e = 44; e + 12 <= len;) {
			u8 type = rd8(t + e), elen = rd8(t + e + 1);
			if (elen < 2)
				break;
			if (type == 1 && elen >= 12 && rd32(t + e + 4) == IOAPIC_BASE && madt_id < 0)
				madt_id = rd8(t + e + 2);
			if (type == 2 && elen >= 10 && rd8(t + e + 2) == 0 && rd8(t + e + 3) < 16)
				iso_gsi[rd8(t + e + 3)] = rd32(t + e + 4);
			e += elen;
		}
		return;
	}
}

/* ------------------------------------------------------------------------- */
/* 8259A pair */

static u8 pic_read_isr(u16 base)
{
	outb(base, 0x0b);	/* OCW3: read ISR */
	u8 v = inb(base);
	outb(base, 0x0a);	/* OCW3: back to IRR */
	return v;
}

static u8 pic_read_irr(u16 base)
{
	outb(base, 0x0a);	/* OCW3: read IRR */
	return inb(base);
}

/* ICW1-ICW4: edge, cascade, vectors 0x30/0x38, slave on IRQ 2, 8086 mode. */
static void pic_init(u8 mask1, u8 mask2)
{
	outb(PIC1, 0x11);
	outb(PIC2, 0x11);
	outb(PIC1 + 1, VEC_PIC_MASTER);
	outb(PIC2 + 1, VEC_PIC_SLAVE);
	outb(PIC1 + 1, 0x04);
	outb(PIC2 + 1, 0x02);
	outb(PIC1 + 1, 0x01);
	outb(PIC2 + 1, 0x01);
	outb(PIC1 + 1, mask1);
	outb(PIC2 + 1, mask2);
}

static u32 lvt0_seen;

/* LVT0 must deliver the PIC's INTR as ExtINT, unmasked; fixes it if not. */
static void lvt0_extint(void)
{
	lvt0_seen = lapic_rd(0x350);
	if ((lvt0_seen & LVT_MASKED) || ((lvt0_seen >> 8) & 7) != 7) {
		lapic_wr(0x350, 0x700);
		fail("pic: LVT0 was not an unmasked ExtINT");
	}
}

/* ------------------------------------------------------------------------- */
/* Interrupt handlers */

static volatile u32 pit_n;
static volatile u64 pit_first, pit_last;

static volatile u32 pic_n, pic_spurious, pic_other, pic_other_vecs;
static volatile u32 pic_vector;
static volatile int pic_isr_seen = -1;
static int pic_rx;	/* the PIC carries COM1 (IRQ 4) */

static volatile u32 lvl_irqs, lvl_bytes, lvl_empty, lvl_rirr_missing, lvl_rirr_stuck, lvl_reasserted, lvl_isr_clear;

static void drain_uart(void)
{
	for (int i = 0; i < 64 && (inb(COM1 + 5) & 1); i++)
		rx_push(inb(COM1));
}

static void pic_isr(u32 vec)
{
	u32 irq = vec - VEC_PIC_MASTER;
	u16 base = irq < 8 ? PIC1 : PIC2;
	if ((irq & 7) == 7 && !(pic_read_isr(base) & 0x80)) {
		/* spurious IRQ 7/15: no EOI of its own (a slave's still needs the master's) */
		pic_spurious = pic_spurious + 1;
		if (irq == 15)
			outb(PIC1, 0x20);
		return;
	}
	if (pic_isr_seen < 0) {
		pic_isr_seen = irq < 8 ? pic_read_isr(PIC1) : pic_read_isr(PIC2);
		pic_vector = vec;
	}
	if (irq == 0) {
		pic_n = pic_n + 1;
	} else if (irq == 4 && pic_rx) {
		drain_uart();
		pic_n = pic_n + 1;
	} else {
		pic_other = pic_other + 1;
		pic_other_vecs = pic_other_vecs | (1u << irq);
	}
	/* Non-specific EOI to the 8259A(s). ExtINT is not in service at the LAPIC,
	 * so there is nothing to end there. */
	if (irq >= 8)
		outb(PIC2, 0x20);
	outb(PIC1, 0x20);
}

static void pit_isr(void)
{
	u64 t = rdtsc();
	if (!pit_n)
		pit_first = t;
	pit_last = t;
	pit_n = pit_n + 1;
	lapic_wr(0xb0, 0);
}

/* COM1 on a level-triggered IOAPIC entry: one byte per interrupt. */
static void level_isr(void)
{
	/* The LAPIC holds the vector in service (ISR) until the EOI; its EOI is what
	 * clears the entry's remote IRR. */
	if (!(lapic_rd(0x100 + 0x10 * (VEC_SER_LEVEL / 32)) & (1u << (VEC_SER_LEVEL % 32))))
		lvl_isr_clear = lvl_isr_clear + 1;
	if (!(rte_lo(4) & RTE_REMOTE_IRR))
		lvl_rirr_missing = lvl_rirr_missing + 1;
	if (inb(COM1 + 5) & 1) {
		rx_push(inb(COM1));
		lvl_bytes = lvl_bytes + 1;
	} else {
		lvl_empty = lvl_empty + 1;
	}
	int more = inb(COM1 + 5) & 1;
	lapic_wr(0xb0, 0);	/* EOI: broadcast to the IOAPIC for a level vector */
	u32 after = rte_lo(4);
	if (more)
		lvl_reasserted = lvl_reasserted + 1;	/* still asserted: delivered again */
	else if ((after & RTE_REMOTE_IRR) && !(inb(COM1 + 5) & 1))
		lvl_rirr_stuck = lvl_rirr_stuck + 1;
	lvl_irqs = lvl_irqs + 1;
}

void irq_dispatch(u64 vec)
{
	if (vec == VEC_PIT)
		pit_isr();
	else if (vec == VEC_SER_LEVEL)
		level_isr();
	else if (vec >= VEC_PIC_MASTER && vec <= VEC_PIC_SLAVE + 7)
		pic_isr((u32)vec);
}

/* ------------------------------------------------------------------------- */
/* 8254 */

static void pit_ch0_start(void)
{
	outb(PIT_CTL, 0x34);	/* counter 0, LSB then MSB, mode 2, binary */
	outb(PIT_CH0, PIT_DIV & 0xff);
	outb(PIT_CH0, PIT_DIV >> 8);
}

static void pit_ch0_stop(void)
{
	outb(PIT_CTL, 0x30);	/* mode 0 with the longest count: one last edge, 55 ms on */
	outb(PIT_CH0, 0);
	outb(PIT_CH0, 0);
}

/* One mode 0 run of counter 2 (gate on): TSC cycles until OUT2 rose, or 0. The rise
 * lies between the last read that saw OUT2 low and the one that saw it high; a run in
 * which that interval, or the one around the count write, is over 1% of the whole
 * (the vCPU was descheduled) is thrown away. *low is set if OUT2 was low at the start. */
static u64 ch2_mode0(int *low)
{
	outb(PIT_CTL, 0xb0);			/* counter 2, LSB then MSB, mode 0 */
	outb(PIT_CH2, CAL_COUNT & 0xff);
	u64 a = rdtsc();
	outb(PIT_CH2, CAL_COUNT >> 8);		/* counting starts with this byte */
	u64 t0 = rdtsc();
	*low = !(inb(PORT_B) & 0x20);
	u64 last_low = rdtsc(), t1 = 0;
	for (;;) {
		u8 v = inb(PORT_B);
		u64 t = rdtsc();
		if (v & 0x20) {
			t1 = t;
			break;
		}
		last_low = t;
		if (t - t0 > 300 * TSC_PER_MS)
			return 0;
	}
	u64 total = t1 - t0;
	if ((t1 - last_low) * 100 > total || (t0 - a) * 100 > total)
		return 0;
	return total;
}

/* Counter 2, gated through port 0x61: mode 0 (OUT2 rises after CAL_COUNT clocks: the
 * TSC rate) and mode 3 (OUT2 toggles). Prints pit-ch2 if `report`. */
static void pit_ch2(int report)
{
	u8 b = inb(PORT_B);
	const char *why = NULL;
	outb(PORT_B, (b & 0x0c) | 0x01);	/* GATE2 on, speaker data off */
	int low = 0, lows = 0;
	u64 cycles = 0;
	for (int i = 0; i < 5 && !cycles; i++) {
		cycles = ch2_mode0(&low);
		lows += low;
	}
	u64 khz = cycles * PIT_HZ / (CAL_COUNT * 1000UL);
	if (!lows)
		why = "OUT2 not low after a mode 0 count";
	else if (!cycles)
		why = "OUT2 never rose in mode 0 (or every run was disturbed)";
	else if (khz < 100000 || khz > 10000000)
		why = "TSC rate from counter 2 out of range";
	else
		tsc_khz = khz;

	/* Mode 3, ~1 kHz: count 8 OUT2 transitions within 50 ms. */
	u32 toggles = 0;
	if (!why) {
		outb(PIT_CTL, 0xb6);
		outb(PIT_CH2, PIT_DIV & 0xff);
		outb(PIT_CH2, PIT_DIV >> 8);
		u8 last = inb(PORT_B) & 0x20;
		u64 s = rdtsc();
		while (toggles < 8 && rdtsc() - s < ms_tsc(50)) {
			u8 now = inb(PORT_B) & 0x20;
			if (now != last)
				toggles++;
			last = now;
		}
		if (toggles < 8)
			why = "OUT2 does not toggle in mode 3";
	}
	outb(PORT_B, b & 0x0f);	/* GATE2 and speaker as they were */

	if (!report)
		return;
	puts("pit-ch2: ");
	if (why) {
		puts("fail ");
		puts(why);
		fail("pit-ch2");
	} else {
		puts("ok toggles=");
		put_dec(toggles);
		puts(" tsc-khz=");
		put_dec(tsc_khz);
	}
	puts("\n");
}

/* Counter 0 (mode 2, PIT_DIV) through the counter latch and the read-back command. */
static void pit_readback(void)
{
	const char *why = NULL;
	outb(PIT_CTL, 0x00);			/* counter latch, counter 0 */
	u32 latched = inb(PIT_CH0);
	latched |= (u32)inb(PIT_CH0) << 8;
	outb(PIT_CTL, 0xe2);			/* read-back: status of counter 0 */
	u8 st = inb(PIT_CH0);
	outb(PIT_CTL, 0xc2);			/* read-back: status and count of counter 0 */
	u8 st2 = inb(PIT_CH0);
	u32 count = inb(PIT_CH0);
	count |= (u32)inb(PIT_CH0) << 8;
	if (latched < 1 || latched > PIT_DIV)
		why = "latched count out of range";
	else if ((st & 0x7f) != 0x34)	/* null count 0, LSB/MSB, mode 2, binary */
		why = "status";
	else if ((st2 & 0x7f) != 0x34)
		why = "status with count";
	else if (count < 1 || count > PIT_DIV)
		why = "read-back count out of range";
	puts("pit-readback: status=");
	put_hex2(st);
	if (why) {
		puts(" fail ");
		puts(why);
		puts(" latch=");
		put_dec(latched);
		puts(" count=");
		put_dec(count);
		puts(" status2=");
		put_hex2(st2);
		fail("pit-readback");
	} else {
		puts(" ok");
	}
	puts("\n");
}

/* IRQ 0 through the IOAPIC, edge, for WINDOW_MS. */
static void pit_ioapic(void)
{
	gate_install(VEC_PIT, NULL);	/* stays: a late edge must not find no gate */
	int gsi = ioapic_route_irq(0, VEC_PIT, 0, 0);
	pit_n = 0;
	if (gsi >= 0) {
		irq_window(WINDOW_MS);
		ioapic_mask_gsi(gsi);
	}
	u32 n = pit_n;
	puts("pit-irqs: ");
	put_dec(n);
	puts(" gsi=");
	if (gsi >= 0)
		put_dec(gsi);
	else
		puts("none");
	puts(" vector=");
	put_hex2(VEC_PIT);
	puts("\n");
	puts("pit-rate: ");
	u64 hz = 0;
	if (n >= 2 && tsc_khz && pit_last > pit_first) {
		hz = ((u64)(n - 1) * tsc_khz * 1000 + (pit_last - pit_first) / 2) / (pit_last - pit_first);
		puts("~");
		put_dec(hz);
		puts(" Hz\n");
	} else {
		puts("unknown\n");
	}
	if (gsi < 0) {
		fail("pit: no IOAPIC pin for IRQ 0");
	} else if (!n) {
		fail("pit: no IRQ 0 through the IOAPIC");
		/* Where does it go instead? Pin 0, as with an identity GSI routing? */
		if (gsi != 0) {
			ioapic_wr(0x11, bsp_apic_id << 24);
			ioapic_wr(0x10, VEC_PIT);
			irq_window(20);
			ioapic_wr(0x10, RTE_MASKED);
			puts("pit-irqs-pin0: ");
			put_dec(pit_n);
			puts("\n");
		}
	} else if (hz && (hz < 500 || hz > 2000)) {
		fail("pit: IRQ 0 rate not ~1 kHz");
	}
}

/* ------------------------------------------------------------------------- */
/* 8259A tests */

/* IRR with IRQ 0 masked, then the poll command with it unmasked and IF = 0. */
static void pic_poll_test(void)
{
	pic_init(0xff, 0xff);
	/* The next rising edge of OUT0 (1 ms) sets IRR bit 0; wait at most 100 ms. */
	u8 irr = 0;
	for (u64 t0 = rdtsc(); !(irr & 1) && rdtsc() - t0 < ms_tsc(100);)
		irr = pic_read_irr(PIC1);
	u8 isr0 = pic_read_isr(PIC1);
	outb(PIC1 + 1, 0xfe);			/* unmask IRQ 0; interrupts stay off */
	outb(PIC1, 0x0c);			/* OCW3: poll */
	u8 poll = inb(PIC1);
	u8 isr1 = pic_read_isr(PIC1);
	outb(PIC1, 0x20);			/* EOI for the polled level */
	outb(PIC1 + 1, 0xff);
	const char *why = NULL;
	if (!(irr & 1))
		why = "IRR bit 0 clear while IRQ 0 masked";
	else if (isr0 & 1)
		why = "ISR bit 0 set before the poll";
	else if (poll != 0x80)
		why = "poll byte is not 0x80 (IRQ 0 pending)";
	puts("pic-poll: ");
	puts(why ? "fail " : "ok");
	if (why)
		puts(why);
	puts(" irr=");
	put_hex2(irr);
	puts(" poll=");
	put_hex2(poll);
	/* The datasheet's poll is an INTA: ISR bit 0 is set until the EOI. */
	puts(" isr-after-poll=");
	put_hex2(isr1);
	puts("\n");
	if (why)
		fail("pic-poll");
}

static void pic_report_irqs(void)
{
	puts("pic-irqs: ");
	put_dec(pic_n);
	puts(" vector=");
	if (pic_isr_seen < 0) {
		puts("none isr=none");
	} else {
		put_hex2(pic_vector);
		puts(" isr=");
		put_hex2((u32)pic_isr_seen);
	}
	puts(" lvt0=");
	put_hex(lvt0_seen);
	if (pic_spurious) {
		puts(" spurious=");
		put_dec(pic_spurious);
	}
	if (pic_other) {
		puts(" other=");
		put_dec(pic_other);
		puts(" other-irqs=");
		put_hex(pic_other_vecs);
		fail("pic: interrupt from a masked IRQ");
	}
	puts("\n");
	if (!pic_n)
		fail(pic_rx ? "pic: no IRQ 4 through the 8259A" : "pic: no IRQ 0 through the 8259A");
}

/* IRQ 0 (the PIT) through the 8259A and LINT0 for WINDOW_MS. */
static void pic_pit(void)
{
	struct gate saved;	/* VEC_SERIAL's: rx=N may use it afterwards */
	for (u32 v = VEC_PIC_MASTER; v <= VEC_PIC_SLAVE + 7; v++)
		if (v != VEC_TIMER)
			gate_install(v, v == VEC_SERIAL ? &saved : NULL);
	pic_n = 0;
	pic_isr_seen = -1;
	pic_init(0xfe, 0xff);
	irq_window(WINDOW_MS);
	outb(PIC1 + 1, 0xff);
	pic_report_irqs();
	gate_restore(VEC_SERIAL, &saved);
}

/* ------------------------------------------------------------------------- */

void irq_report(void)
{
	parse_tokens();
	if (!t_pit && !t_pic && !t_ioapic)
		return;
	cli();
	pic_mask_all();		/* nothing from the 8259As at the BIOS's vectors */
	lapic_wr(0x80, 0);	/* TPR: accept everything */

	if (t_pit || t_pic) {
		pit_ch2(t_pit);
		pit_ch0_start();
	}
	if (t_pit) {
		pit_readback();
		pit_ioapic();
	}
	if (t_ioapic) {
		u32 id = ioapic_rd(0), ver = ioapic_rd(1);
		puts("ioapic: id=");
		put_dec((id >> 24) & 0xf);
		puts(" version=");
		put_hex2(ver & 0xff);
		puts(" entries=");
		put_dec(((ver >> 16) & 0xff) + 1);
		madt_scan();
		int madt = madt_id;
		puts(" madt-id=");
		if (madt >= 0)
			put_dec(madt);
		else
			puts("none");
		puts("\n");
		if (ver == 0xffffffff)
			fail("ioapic: no IOAPIC at 0xfec00000");
		else if (madt >= 0 && (u32)madt != ((id >> 24) & 0xf))
			fail("ioapic: ID register differs from the MADT");
	}
	if (t_pic) {
		isa_mask(0);	/* IRQ 0 comes through the 8259A only */
		lvt0_extint();
		pic_poll_test();
		if (!t_rx || t_ioapic)	/* else COM1's IRQ 4 is the 8259A's test */
			pic_pit();
		pic_mask_all();
	}
	if (t_pit || t_pic)
		pit_ch0_stop();
}

int irq_rx_setup(void)
{
	parse_tokens();
	if (!t_ioapic && !t_pic)
		return 0;
	cli();
	outb(COM1 + 1, 0x00);	/* IER: quiet while the route changes */
	if (t_ioapic) {
		/* Pin 4 -> VEC_SER_LEVEL: fixed, physical, active high, level. */
		pic_mask_all();
		gate_install(VEC_SER_LEVEL, NULL);
		ioapic_wr(0x10 + 2 * 4 + 1, bsp_apic_id << 24);
		ioapic_wr(0x10 + 2 * 4, VEC_SER_LEVEL | RTE_LEVEL);
	} else {
		/* The 8259A's IRQ 4, its IOAPIC pin masked. */
		pic_rx = 1;
		isa_mask(4);	/* IRQ 4 comes through the 8259A only */
		lvt0_extint();
		for (u32 v = VEC_PIC_MASTER; v <= VEC_PIC_SLAVE + 7; v++)
			if (v != VEC_TIMER)
				gate_install(v, NULL);
		pic_n = 0;
		pic_isr_seen = -1;
		pic_init(0xef, 0xff);
	}
	lapic_wr(0x80, 0);

	/* UART as rx_setup() programs it: 115200 8N1, FIFO on without clearing, OUT2, RX irq. */
	outb(COM1 + 3, 0x80);
	outb(COM1 + 0, 0x01);
	outb(COM1 + 1, 0x00);
	outb(COM1 + 3, 0x03);
	outb(COM1 + 2, 0x01);
	outb(COM1 + 4, 0x0b);
	outb(COM1 + 1, 0x01);
	return 1;
}

void irq_rx_report(void)
{
	if (!t_rx || (!t_ioapic && !t_pic))
		return;
	cli();
	if (t_ioapic) {
		const char *why = NULL;
		if (lvl_bytes < t_rx)
			why = "not every byte arrived";
		else if (lvl_isr_clear)
			why = "vector not in service at the LAPIC in the handler";
		else if (lvl_rirr_missing)
			why = "remote IRR clear before the EOI";
		else if (lvl_rirr_stuck)
			why = "remote IRR still set after the EOI";
		else if (lvl_empty)
			why = "interrupt with an empty receive FIFO";
		puts("ioapic-level: ");
		puts(why ? "fail " : "ok");
		if (why)
			puts(why);
		puts(" irqs=");
		put_dec(lvl_irqs);
		puts(" bytes=");
		put_dec(lvl_bytes);
		puts(" reasserted=");
		put_dec(lvl_reasserted);
		if (why) {
			puts(" lapic-isr-clear=");
			put_dec(lvl_isr_clear);
			puts(" rirr-missing=");
			put_dec(lvl_rirr_missing);
			puts(" rirr-stuck=");
			put_dec(lvl_rirr_stuck);
			puts(" empty=");
			put_dec(lvl_empty);
		}
		puts("\n");
		if (why)
			fail("ioapic-level");
	} else {
		outb(PIC1 + 1, 0xff);
		pic_report_irqs();
	}
}
