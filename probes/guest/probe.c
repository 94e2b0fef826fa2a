/*
 * rvmm probe guest: reports what a boot loader / VMM handed it over COM1 and exits
 * through the debug exit port 0xf4. Freestanding, 64-bit long mode, identity-mapped.
 *
 * Built with -mgeneral-regs-only: no SSE or x87 anywhere (KVM's software emulator on
 * the project's machines cannot run most of them). Every emulated instruction costs
 * about 0.5 us and every port access about 10 us there, so the work is kept small and
 * every wait is bounded.
 */
#include "lib.h"
#include "irq.h"

/* ------------------------------------------------------------------------- */
/* libc bits that gcc may call even when freestanding */

void *memset(void *d, int c, u64 n)
{
	/* 8 bytes at a time: every instruction costs ~0.5 us under the host's KVM. */
	u8 *p = d;
	while (n && ((u64)p & 7)) {
		*p++ = (u8)c;
		n--;
	}
	u64 w = (u64)(u8)c * 0x0101010101010101UL;
	for (; n >= 8; n -= 8, p += 8)
		*(u64a *)p = w;
	while (n--)
		*p++ = (u8)c;
	return d;
}

void *memcpy(void *d, const void *s, u64 n)
{
	u8 *p = d;
	const u8 *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

void *memmove(void *d, const void *s, u64 n)
{
	u8 *p = d;
	const u8 *q = s;
	if (p < q) {
		while (n--)
			*p++ = *q++;
	} else {
		while (n--)
			p[n] = q[n];
	}
	return d;
}

int memcmp(const void *a, const void *b, u64 n)
{
	const u8 *p = a, *q = b;
	for (; n; n--, p++, q++)
		if (*p != *q)
			return *p - *q;
	return 0;
}

/* ------------------------------------------------------------------------- */
/* COM1 */


static void uart_init(void)
{
	outb(COM1 + 1, 0x00);	/* IER: no interrupts yet */
	outb(COM1 + 3, 0x80);	/* LCR: DLAB */
	outb(COM1 + 0, 0x01);	/* divisor 1: 115200 baud */
	outb(COM1 + 1, 0x00);
	outb(COM1 + 3, 0x03);	/* 8N1 */
	outb(COM1 + 2, 0x07);	/* FCR: enable and clear FIFOs, 1-byte trigger */
	outb(COM1 + 4, 0x03);	/* MCR: DTR | RTS */
}

static void putc_raw(char c)
{
	for (u32 i = 0; i < 100000; i++)
		if (inb(COM1 + 5) & 0x20)
			break;
	outb(COM1, (u8)c);
}

void putc(char c)
{
	if (c == '\n')
		putc_raw('\r');
	putc_raw(c);
}

void puts(const char *s)
{
	while (*s)
		putc(*s++);
}

void put_hex(u64 v)
{
	char buf[17];
	int i = 16;
	buf[i] = 0;
	do {
		u8 d = v & 0xf;
		buf[--i] = d < 10 ? '0' + d : 'a' + d - 10;
		v >>= 4;
	} while (v);
	puts("0x");
	puts(&buf[i]);
}

void put_hex8(u32 v)
{
	puts("0x");
	for (int s = 28; s >= 0; s -= 4) {
		u8 d = (v >> s) & 0xf;
		putc(d < 10 ? '0' + d : 'a' + d - 10);
	}
}

void put_dec(u64 v)
{
	char buf[21];
	int i = 20;
	buf[i] = 0;
	do {
		buf[--i] = '0' + v % 10;
		v /= 10;
	} while (v);
	puts(&buf[i]);
}

void put_hexn(u64 v, int digits)
{
	for (int sh = (digits - 1) * 4; sh >= 0; sh -= 4) {
		u8 d = (v >> sh) & 0xf;
		putc(d < 10 ? '0' + d : 'a' + d - 10);
	}
}

static void put_dec2(u32 v)
{
	putc('0' + (v / 10) % 10);
	putc('0' + v % 10);
}

static void put_sig(const u8 *sig)
{
	for (int i = 0; i < 4; i++) {
		u8 c = sig[i];
		putc(c >= 0x20 && c < 0x7f ? c : '?');
	}
}

/* ------------------------------------------------------------------------- */
/* Exit */

static int opt_reset;

static void __attribute__((noreturn)) finish(u8 status)
{
	if (opt_reset) {
		outb(0x64, 0xfe);	/* i8042: pulse the reset line */
	} else {
		outb(0xf4, status);	/* debug exit */
	}
	for (;;)
		__asm__ volatile("cli; hlt");
}

void __attribute__((noreturn)) exception_handler(u64 vector, u64 rip, u64 error)
{
	(void)error;
	puts("\nprobe: exception ");
	put_dec(vector);
	puts(" at ");
	put_hex(rip);
	puts("\n");
	opt_reset = 0;
	finish(0xee);
}

/* ------------------------------------------------------------------------- */
/* CPU setup: page tables for the low 4 GiB, GDT, IDT */

extern u64 pml4[512], pdpt[512], pd[4 * 512];
extern u8 gdt[];
extern const u64 exc_stubs[32];
extern void load_gdt_and_segments(void);
extern void serial_stub(void), timer_stub(void), spurious_stub(void);
extern const u64 virtio_stubs[VEC_VIRTIO_LAST - VEC_VIRTIO_FIRST + 1];
extern const u8 tramp_start[], tramp_end[];
extern volatile u32 ap_count;

struct idt_entry {
	u16 off0, sel;
	u8 ist, attr;
	u16 off1;
	u32 off2, zero;
} __attribute__((packed));

static struct idt_entry idt[256] __attribute__((aligned(16)));

static void set_gate(int vec, u64 handler)
{
	idt[vec].off0 = handler & 0xffff;
	idt[vec].sel = SEL_CODE64;
	idt[vec].ist = 0;
	idt[vec].attr = 0x8e;	/* present, DPL 0, 64-bit interrupt gate */
	idt[vec].off1 = (handler >> 16) & 0xffff;
	idt[vec].off2 = handler >> 32;
	idt[vec].zero = 0;
}

static void setup_cpu(void)
{
	/* Identity map 0..4 GiB with 2 MiB pages; the top GiB (MMIO) uncached. */
	pml4[0] = (u64)pdpt | 3;
	for (u64 i = 0; i < 4; i++)
		pdpt[i] = ((u64)pd + i * 4096) | 3;
	for (u64 i = 0; i < 4 * 512; i++)
		pd[i] = (i << 21) | (i >= 3 * 512 ? 0x9b : 0x83);
	__asm__ volatile("mov %0, %%cr3" : : "r"((u64)pml4) : "memory");

	load_gdt_and_segments();

	for (int v = 0; v < 32; v++)
		set_gate(v, exc_stubs[v]);
	set_gate(VEC_SERIAL, (u64)serial_stub);
	set_gate(VEC_TIMER, (u64)timer_stub);
	for (int v = VEC_VIRTIO_FIRST; v <= VEC_VIRTIO_LAST; v++)
		set_gate(v, virtio_stubs[v - VEC_VIRTIO_FIRST]);
	set_gate(VEC_SPURIOUS, (u64)spurious_stub);
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) idtr = { sizeof(idt) - 1, (u64)idt };
	__asm__ volatile("lidt %0" : : "m"(idtr));
}

/* ------------------------------------------------------------------------- */
/* Failures */

static char fail_buf[256];
static u32 fail_len;

void fail(const char *reason)
{
	if (fail_len && fail_len < sizeof(fail_buf) - 3) {
		fail_buf[fail_len++] = ',';
		fail_buf[fail_len++] = ' ';
	}
	while (*reason && fail_len < sizeof(fail_buf) - 1)
		fail_buf[fail_len++] = *reason++;
	fail_buf[fail_len] = 0;
}

/* ------------------------------------------------------------------------- */
/* What the boot loader handed over, copied out before anything touches low memory */

#define E820_MAX 128
struct e820 {
	u64 addr, size;
	u32 type;
};

static u32 kind;
static u64 info;
char cmdline[4096];
static int has_cmdline;
static struct e820 e820[E820_MAX];
static u32 e820_n;
static u64 initrd_addr, initrd_size;
static int has_initrd;
static u64 rsdp_hint;

static void copy_cmdline(u64 addr)
{
	if (!addr || addr >= (4UL << 30))
		return;
	u32 n = 0;
	while (n < sizeof(cmdline) - 1) {
		char c = (char)rd8(addr + n);
		if (!c)
			break;
		cmdline[n++] = c;
	}
	cmdline[n] = 0;
	has_cmdline = n > 0;
}

static void read_boot_info(void)
{
	if (kind == KIND_PVH) {
		if (rd32(info) != 0x336ec578)
			return;
		u32 version = rd32(info + 4);
		u32 nr_modules = rd32(info + 12);
		u64 modlist = rd64(info + 16);
		copy_cmdline(rd64(info + 24));
		rsdp_hint = rd64(info + 32);
		if (version >= 1) {
			u64 map = rd64(info + 40);
			u32 n = rd32(info + 48);
			for (u32 i = 0; i < n && e820_n < E820_MAX; i++) {
				u64 e = map + 24 * (u64)i;
				e820[e820_n].addr = rd64(e);
				e820[e820_n].size = rd64(e + 8);
				e820[e820_n].type = rd32(e + 16);
				e820_n++;
			}
		}
		if (nr_modules && modlist) {
			initrd_addr = rd64(modlist);
			initrd_size = rd64(modlist + 8);
			has_initrd = 1;
		}
		return;
	}
	/* struct boot_params */
	u64 bp = info;
	copy_cmdline((u64)rd32(bp + 0x228) | ((u64)rd32(bp + 0xc8) << 32));
	u32 n = rd8(bp + 0x1e8);
	for (u32 i = 0; i < n && i < E820_MAX; i++) {
		u64 e = bp + 0x2d0 + 20 * (u64)i;
		e820[e820_n].addr = rd64(e);
		e820[e820_n].size = rd64(e + 8);
		e820[e820_n].type = rd32(e + 16);
		e820_n++;
	}
	initrd_addr = (u64)rd32(bp + 0x218) | ((u64)rd32(bp + 0xc0) << 32);
	initrd_size = (u64)rd32(bp + 0x21c) | ((u64)rd32(bp + 0xc4) << 32);
	has_initrd = initrd_addr != 0 && initrd_size != 0;
	rsdp_hint = rd64(bp + 0x070);
}

/* For drivers that need RAM of their own (virtio_balloon.c): the first `size` bytes at or
 * above `min` (4 KiB aligned) inside one e820 RAM entry, below 3 GiB (the cached part of
 * the probe's identity map), clear of the probe image and of the initrd. 0 if none. */
extern u8 _end[];

u64 probe_find_ram(u64 min, u64 size)
{
	u64 img_end = ((u64)_end + 0xfff) & ~0xfffUL;
	if (min < img_end)
		min = img_end;
	min = (min + 0xfff) & ~0xfffUL;
	u64 best = 0;
	for (u32 i = 0; i < e820_n; i++) {
		if (e820[i].type != 1)
			continue;
		u64 start = (e820[i].addr + 0xfff) & ~0xfffUL, end = (e820[i].addr + e820[i].size) & ~0xfffUL;
		if (end > (3UL << 30))
			end = 3UL << 30;
		if (start < min)
			start = min;
		/* Step past the initrd if it is in the way (at most once: one initrd). */
		if (has_initrd && start < initrd_addr + initrd_size && initrd_addr < start + size)
			start = (initrd_addr + initrd_size + 0xfff) & ~0xfffUL;
		if (start >= end || end - start < size)
			continue;
		if (!best || start < best)
			best = start;
	}
	return best;
}

/* The sum of the e820 RAM entries. */
u64 probe_ram_total(void)
{
	u64 total = 0;
	for (u32 i = 0; i < e820_n; i++)
		if (e820[i].type == 1)
			total += e820[i].size;
	return total;
}

/* ------------------------------------------------------------------------- */
/* Command line tokens */

static int opt_quick, opt_echo, opt_exit_set, opt_fault;
static u32 opt_rx, opt_exit, opt_rx_fifo;
struct probe_opts opts = {
	.pcimem = 0xe0000000UL,
	.pcimem_size = 0x10000000UL,
	.pciio = 0xc000,
	.ip = { 192, 0, 2, 2 },
	.peer = { 192, 0, 2, 1 },
	.vsock_port = 1234,
	.balloon_pages = 1024,
};

static int token_is(const char *tok, u32 len, const char *word)
{
	u32 i = 0;
	for (; i < len && word[i]; i++)
		if (tok[i] != word[i])
			return 0;
	return i == len && !word[i];
}

static int token_num(const char *tok, u32 len, const char *prefix, u32 *out)
{
	u32 p = 0;
	while (prefix[p]) {
		if (p >= len || tok[p] != prefix[p])
			return 0;
		p++;
	}
	if (p == len)
		return 0;
	u32 v = 0;
	for (; p < len; p++) {
		if (tok[p] < '0' || tok[p] > '9')
			return 0;
		v = v * 10 + (tok[p] - '0');
	}
	*out = v;
	return 1;
}

const char *next_token(const char **sp, u32 *len)
{
	const char *s = *sp;
	while (*s == ' ' || *s == '\t' || *s == '\n')
		s++;
	const char *t = s;
	while (*s && *s != ' ' && *s != '\t' && *s != '\n')
		s++;
	*len = s - t;
	*sp = s;
	return t;
}

u32 parse_num(const char *s, u32 len, int suffix, u64 *out)
{
	u32 p = 0, base = 10;
	u64 v = 0;
	if (len >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		p = 2;
	}
	u32 first = p;
	for (; p < len; p++) {
		char c = s[p];
		u32 d;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (base == 16 && c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (base == 16 && c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			break;
		v = v * base + d;
	}
	if (p == first)
		return 0;
	if (suffix && p < len) {
		char c = s[p];
		if (c == 'k' || c == 'K')
			v <<= 10, p++;
		else if (c == 'm' || c == 'M')
			v <<= 20, p++;
		else if (c == 'g' || c == 'G')
			v <<= 30, p++;
	}
	*out = v;
	return p;
}

/* `prefix` followed by a number that fills the rest of the token (0x.. or decimal). */
static int token_u64(const char *tok, u32 len, const char *prefix, u64 *out)
{
	u32 p = 0;
	while (prefix[p]) {
		if (p >= len || tok[p] != prefix[p])
			return 0;
		p++;
	}
	u64 v;
	u32 n = parse_num(tok + p, len - p, 0, &v);
	if (!n || p + n != len)
		return 0;
	*out = v;
	return 1;
}

/* `prefix` followed by a dotted-quad IPv4 address that fills the rest of the token. */
static int token_ipv4(const char *tok, u32 len, const char *prefix, u8 out[4])
{
	u32 p = 0;
	while (prefix[p]) {
		if (p >= len || tok[p] != prefix[p])
			return 0;
		p++;
	}
	u8 a[4];
	for (int i = 0; i < 4; i++) {
		u32 v = 0, digits = 0;
		while (p < len && tok[p] >= '0' && tok[p] <= '9' && digits < 4) {
			v = v * 10 + (tok[p++] - '0');
			digits++;
		}
		if (!digits || v > 255)
			return 0;
		a[i] = (u8)v;
		if (i < 3) {
			if (p >= len || tok[p] != '.')
				return 0;
			p++;
		}
	}
	if (p != len)
		return 0;
	for (int i = 0; i < 4; i++)
		out[i] = a[i];
	return 1;
}

static void parse_cmdline(void)
{
	const char *s = cmdline;
	while (*s) {
		u32 len;
		const char *t = next_token(&s, &len);
		if (!len)
			continue;
		u64 v;
		if (token_is(t, len, "quick"))
			opt_quick = 1;
		else if (token_is(t, len, "echo"))
			opt_echo = 1;
		else if (token_is(t, len, "reset"))
			opt_reset = 1;
		else if (token_is(t, len, "fault"))
			opt_fault = 1;
		else if (token_num(t, len, "rx=", &opt_rx))
			;
		else if (token_num(t, len, "rx-fifo=", &opt_rx_fifo))
			;
		else if (token_num(t, len, "exit=", &opt_exit))
			opt_exit_set = 1;
		else if (token_is(t, len, "pci"))
			opts.pci = 1;
		else if (token_is(t, len, "blk"))
			opts.blk = 1;
		else if (token_is(t, len, "mmio"))
			opts.mmio = 1;
		else if (token_is(t, len, "msix"))
			opts.msix = 1;
		else if (token_is(t, len, "intx"))
			opts.intx = 1;
		else if (token_is(t, len, "ecam"))
			opts.ecam = 1;
		else if (token_u64(t, len, "ecam=", &opts.ecam_base))
			opts.ecam = 1;
		else if (token_is(t, len, "pci-reassign"))
			opts.reassign = 1;
		else if (token_num(t, len, "seed=", &opts.seed))
			;
		else if (token_u64(t, len, "pcimem=", &v))
			opts.pcimem = v;
		else if (token_u64(t, len, "pcimem-size=", &v))
			opts.pcimem_size = v;
		else if (token_u64(t, len, "pciio=", &v))
			opts.pciio = v;
		else if (token_is(t, len, "net"))
			opts.net = 1;
		else if (token_is(t, len, "rng"))
			opts.rng = 1;
		else if (token_is(t, len, "console"))
			opts.vcon = 1;
		else if (token_is(t, len, "vpci-spec"))
			opts.vpci_spec = opts.pci = 1;	/* PCI only, also with mmio */
		else if (token_is(t, len, "vmmio-spec"))
			opts.vmmio_spec = 1;	/* virtio-mmio only, also without mmio */
		else if (token_is(t, len, "legacy-spec"))
			opts.legacy_spec = 1;
		else if (token_is(t, len, "mq"))
			opts.mq = 1;
		else if (token_is(t, len, "evidx"))
			opts.event_idx = 1;
		else if (token_ipv4(t, len, "ip=", opts.ip))
			;
		else if (token_ipv4(t, len, "peer=", opts.peer))
			;
		else if (token_num(t, len, "net-serve=", &opts.net_serve))
			;
		else if (token_num(t, len, "vcon-rx=", &opts.vcon_rx))
			;
		else if (token_is(t, len, "vsock"))
			opts.vsock = 1;
		else if (token_num(t, len, "vsock-port=", &opts.vsock_port))
			;
		else if (token_num(t, len, "vsock-listen=", &opts.vsock_listen))
			opts.vsock_listen_set = 1;
		else if (token_num(t, len, "vsock-bytes=", &opts.vsock_bytes))
			;
		else if (token_num(t, len, "vsock-wait=", &opts.vsock_wait))
			;
		else if (token_is(t, len, "balloon"))
			opts.balloon = 1;
		else if (token_num(t, len, "balloon-pages=", &opts.balloon_pages))
			;
		else if (token_num(t, len, "balloon-wait=", &opts.balloon_wait))
			;
		else if (token_num(t, len, "exits=", &opts.exits)) {
			opts.exits_set = 1;
		}
	}
	/* `mmio` alone means the block device; with another driver it is that driver's transport. */
	int other = opts.net || opts.rng || opts.vcon || opts.vsock || opts.vsock_listen_set || opts.balloon ||
		    opts.vpci_spec;
	if (opts.mmio && !other && !opts.vmmio_spec)
		opts.blk = 1;
	if ((opts.blk || other) && !opts.mmio)
		opts.pci = 1;
}

/* ------------------------------------------------------------------------- */
/* Report sections */

static const char *kind_name(void)
{
	switch (kind) {
	case KIND_LINUX64: return "linux64";
	case KIND_PVH: return "pvh";
	case KIND_BZIMAGE64: return "bzimage64";
	case KIND_BZIMAGE32: return "bzimage32";
	case KIND_REALMODE: return "bzimage-realmode";
	}
	return "unknown";
}

static void report_e820(void)
{
	puts("e820: ");
	put_dec(e820_n);
	puts("\n");
	u64 total = 0;
	for (u32 i = 0; i < e820_n; i++) {
		puts("e820[");
		put_dec(i);
		puts("]: ");
		put_hex(e820[i].addr);
		puts(" ");
		put_hex(e820[i].size);
		puts(" ");
		put_dec(e820[i].type);
		puts("\n");
		if (e820[i].type == 1)
			total += e820[i].size;
	}
	puts("ram-total: ");
	put_dec(total);
	puts("\n");
	if (!e820_n)
		fail("e820 empty");
}

static void report_initrd(void)
{
	if (!has_initrd) {
		puts("initrd: none\n");
		return;
	}
	u32 h = 0x811c9dc5;
	if (initrd_addr + initrd_size <= (4UL << 30)) {
		const volatile u8 *p = (const volatile u8 *)initrd_addr;
		for (u64 i = 0; i < initrd_size; i++) {
			h ^= p[i];
			h *= 0x01000193;
		}
	} else {
		fail("initrd above 4 GiB");
	}
	puts("initrd: addr=");
	put_hex(initrd_addr);
	puts(" size=");
	put_dec(initrd_size);
	puts(" fnv1a=");
	put_hex8(h);
	puts("\n");
}

static void report_bootparams(void)
{
	if (kind == KIND_PVH)
		return;
	u64 bp = info;
	puts("bootparams: version=");
	put_hex(rd16(bp + 0x206));
	puts(" loadflags=");
	put_hex(rd8(bp + 0x211));
	puts(" type_of_loader=");
	put_hex(rd8(bp + 0x210));
	puts(" cmd_line_ptr=");
	put_hex(rd32(bp + 0x228));
	puts(" kernel_alignment=");
	put_hex(rd32(bp + 0x230));
	puts("\n");
}

/* ---- ACPI ---- */

static u8 sum8(u64 addr, u32 len)
{
	u8 s = 0;
	for (u32 i = 0; i < len; i++)
		s += rd8(addr + i);
	return s;
}

#define MAX_CPUS 256
static u32 madt_ids[MAX_CPUS];
static u32 madt_n;
static int have_madt;
static u32 mp_ids[MAX_CPUS];
static u32 mp_n;
static int have_mp;

/* IOAPICs from the MADT (type 1) or, without one, the MP table (type 2). */
#define MAX_IOAPICS 8
static struct {
	u64 addr;
	u32 gsi_base;
} ioapics[MAX_IOAPICS];
static u32 ioapic_n;
/* MADT interrupt source overrides (type 2): ISA IRQ -> GSI, MPS INTI flags. */
static struct {
	u8 irq;
	u16 flags;
	u32 gsi;
} isos[16];
static u32 iso_n;
u64 mcfg_base;
u32 mcfg_bus_end;

static void add_ioapic(u64 addr, u32 gsi_base)
{
	if (ioapic_n < MAX_IOAPICS && addr && addr < 0x100000000UL) {
		ioapics[ioapic_n].addr = addr;
		ioapics[ioapic_n].gsi_base = gsi_base;
		ioapic_n++;
	}
}

static u64 ebda_base(void)
{
	u64 seg = rd16(0x40e);
	return seg ? seg << 4 : 0;
}

static u64 base_mem_top(void)
{
	u64 kb = rd16(0x413);
	if (kb < 64 || kb > 640)
		kb = 640;
	return kb * 1024;
}

static int is_rsdp(u64 a)
{
	if (rd32(a) != 0x20445352 || rd32(a + 4) != 0x20525450) /* "RSD PTR " */
		return 0;
	return sum8(a, 20) == 0;
}

static u64 scan_rsdp(void)
{
	u64 e = ebda_base();
	if (e && e < 0xa0000)
		for (u64 a = e; a < e + 1024; a += 16)
			if (is_rsdp(a))
				return a;
	for (u64 a = 0xe0000; a < 0x100000; a += 16)
		if (is_rsdp(a))
			return a;
	return 0;
}

static void parse_madt(u64 t)
{
	u32 len = rd32(t + 4);
	have_madt = 1;
	for (u32 off = 44; off + 2 <= len;) {
		u8 type = rd8(t + off), elen = rd8(t + off + 1);
		if (elen < 2)
			break;
		if (type == 0 && elen >= 8) {
			if ((rd32(t + off + 4) & 1) && madt_n < MAX_CPUS)
				madt_ids[madt_n++] = rd8(t + off + 3);
		} else if (type == 9 && elen >= 16) {
			if ((rd32(t + off + 8) & 1) && madt_n < MAX_CPUS)
				madt_ids[madt_n++] = rd32(t + off + 4);
		} else if (type == 1 && elen >= 12) {
			add_ioapic(rd32(t + off + 4), rd32(t + off + 8));
		} else if (type == 2 && elen >= 10 && iso_n < 16) {
			isos[iso_n].irq = rd8(t + off + 3);
			isos[iso_n].gsi = rd32(t + off + 4);
			isos[iso_n].flags = rd16(t + off + 8);
			iso_n++;
		}
		off += elen;
	}
}

/* The RSDP: the boot loader's pointer (which must have the signature), else a scan of
 * the EBDA and the BIOS area; 0 if none. */
static u64 find_rsdp(void)
{
	if (!rsdp_hint || rsdp_hint >= 0x100000000UL)
		return scan_rsdp();
	if (rd32(rsdp_hint) != 0x20445352 || rd32(rsdp_hint + 4) != 0x20525450) {
		fail("rsdp pointer has no RSD PTR signature");
		return 0;
	}
	return rsdp_hint;
}

/* The XSDT (entry size 8) from RSDP revision 2 on, else the RSDT (entry size 4). */
static u64 acpi_root(u64 rsdp, u32 *esz)
{
	if (rd8(rsdp + 15) >= 2 && rd64(rsdp + 24)) {
		*esz = 8;
		return rd64(rsdp + 24);
	}
	*esz = 4;
	return rd32(rsdp + 16);
}

/* The MCFG's first segment-0 allocation, into mcfg_base and mcfg_bus_end. */
static void parse_mcfg(u64 t, u32 len)
{
	if (len < 60 || mcfg_base)
		return;
	for (u32 e = 44; e + 16 <= len; e += 16)
		if (rd16(t + e + 8) == 0 && rd8(t + e + 10) == 0) {
			mcfg_base = rd64(t + e);
			mcfg_bus_end = rd8(t + e + 11);
			return;
		}
}

/* What report_acpi() learns about ECAM, without the report: for `quick exits=N`. */
static void find_mcfg(void)
{
	u64 rsdp = find_rsdp();
	if (!rsdp)
		return;
	u32 esz;
	u64 root = acpi_root(rsdp, &esz);
	if (!root || root >= 0x100000000UL)
		return;
	u32 rlen = rd32(root + 4);
	if (rlen < 36 || rlen > 65536)
		return;
	for (u32 off = 36; off + esz <= rlen; off += esz) {
		u64 t = esz == 8 ? rd64(root + off) : rd32(root + off);
		if (!t || t >= 0x100000000UL || rd32(t) != 0x4746434d) /* "MCFG" */
			continue;
		u32 len = rd32(t + 4);
		if (len >= 36 && len <= (1U << 20) && !sum8(t, len))
			parse_mcfg(t, len);
	}
}

static void report_acpi(void)
{
	u64 rsdp = find_rsdp();
	if (!rsdp) {
		puts("acpi-rsdp: none\nacpi-tables: none\nmadt-cpus: none\n");
		return;
	}
	puts("acpi-rsdp: ");
	put_hex(rsdp);
	puts("\n");
	if (sum8(rsdp, 20))
		fail("rsdp checksum");
	u32 esz;
	u64 root = acpi_root(rsdp, &esz);
	if (esz == 8 && sum8(rsdp, rd32(rsdp + 20)))
		fail("rsdp extended checksum");
	puts("acpi-tables:");
	if (!root || root >= 0x100000000UL) {
		puts(" none\nmadt-cpus: none\n");
		fail("no rsdt/xsdt");
		return;
	}
	u32 rlen = rd32(root + 4);
	if (rlen < 36 || rlen > 65536 || sum8(root, rlen)) {
		fail(esz == 8 ? "xsdt checksum" : "rsdt checksum");
		if (rlen < 36 || rlen > 65536)
			rlen = 36;
	}
	for (u32 off = 36; off + esz <= rlen; off += esz) {
		u64 t = esz == 8 ? rd64(root + off) : rd32(root + off);
		putc(' ');
		if (!t || t >= 0x100000000UL) {
			puts("?!");
			fail("acpi table pointer");
			continue;
		}
		u8 sig[4];
		u32 s = rd32(t);
		for (int i = 0; i < 4; i++)
			sig[i] = (s >> (8 * i)) & 0xff;
		put_sig(sig);
		u32 len = rd32(t + 4);
		if (len < 36 || len > (1U << 20) || sum8(t, len)) {
			putc('!');
			fail("acpi table checksum");
			continue;
		}
		if (s == 0x43495041 && !have_madt) /* "APIC" */
			parse_madt(t);
		if (s == 0x4746434d) /* "MCFG" */
			parse_mcfg(t, len);
	}
	puts("\nmadt-cpus: ");
	if (have_madt)
		put_dec(madt_n);
	else
		puts("none");
	puts("\n");
}

/* ---- MP table ---- */

static u64 scan_mp_range(u64 start, u64 len)
{
	for (u64 a = start; a + 16 <= start + len; a += 16) {
		if (rd32(a) != 0x5f504d5f) /* "_MP_" */
			continue;
		u32 l = rd8(a + 8) * 16;
		if (l && l <= 64 && sum8(a, l) == 0)
			return a;
	}
	return 0;
}

static void report_mptable(void)
{
	u64 fp = 0, e = ebda_base();
	if (e && e < 0xa0000)
		fp = scan_mp_range(e, 1024);
	if (!fp)
		fp = scan_mp_range(base_mem_top() - 1024, 1024);
	if (!fp)
		fp = scan_mp_range(0xf0000, 0x10000);
	if (!fp) {
		puts("mptable: none\n");
		return;
	}
	u64 ct = rd32(fp + 4);
	if (!ct) {
		puts("mptable: default-config ");
		put_dec(rd8(fp + 11));
		puts("\n");
		return;
	}
	if (rd32(ct) != 0x504d4350) { /* "PCMP" */
		puts("mptable: bad-config-table\n");
		fail("mptable signature");
		return;
	}
	u32 blen = rd16(ct + 4);
	if (sum8(ct, blen))
		fail("mptable checksum");
	/* Walk the entries by the table length, as Linux does (smp_read_mpc), not by
	 * the entry count: qboot (QEMU microvm without ACPI) leaves the count at 0. */
	u64 p = ct + 0x2c, end = ct + blen;
	have_mp = 1;
	while (p < end) {
		u8 type = rd8(p);
		if (type == 0) {
			if ((rd8(p + 3) & 1) && mp_n < MAX_CPUS)
				mp_ids[mp_n++] = rd8(p + 1);
			p += 20;
		} else if (type <= 4) {
			if (type == 2 && (rd8(p + 3) & 1) && !have_madt)
				add_ioapic(rd32(p + 4), ioapic_n ? 0xffffffff : 0);
			p += 8;
		} else {
			break;
		}
	}
	puts("mptable-cpus: ");
	put_dec(mp_n);
	puts("\n");
}

/* ---- LAPIC / SMP ---- */

static u64 lapic = 0xfee00000;
u32 bsp_apic_id;

u32 lapic_rd(u32 reg) { return rd32(lapic + reg); }
void lapic_wr(u32 reg, u32 v) { wr32(lapic + reg, v); }

static void delay_ms(u64 ms)
{
	u64 end = rdtsc() + ms * TSC_PER_MS;
	while (rdtsc() < end)
		cpu_relax();
}

static void lapic_enable(void)
{
	lapic = rdmsr(0x1b) & 0xfffff000UL;
	if (!lapic || lapic >= 0x100000000UL)
		lapic = 0xfee00000;
	lapic_wr(0xf0, 0x100 | VEC_SPURIOUS);	/* SVR: APIC enable */
	bsp_apic_id = lapic_rd(0x20) >> 24;
}

static void send_ipi(u32 apic_id, u32 low)
{
	lapic_wr(0x310, apic_id << 24);
	lapic_wr(0x300, low);
	for (u32 i = 0; i < 10000 && (lapic_rd(0x300) & (1 << 12)); i++)
		cpu_relax();
}

static void start_aps(void)
{
	const u32 *ids = have_madt ? madt_ids : mp_ids;
	u32 n = have_madt ? madt_n : (have_mp ? mp_n : 0);
	u32 expected = have_madt || have_mp ? n : 1;

	u32 aps = 0;
	for (u32 i = 0; i < n; i++)
		if (ids[i] != bsp_apic_id)
			aps++;
	if (aps) {
		memcpy((void *)TRAMPOLINE_ADDR, tramp_start, tramp_end - tramp_start);
		__asm__ volatile("mfence" ::: "memory");
		for (u32 i = 0; i < n; i++)
			if (ids[i] != bsp_apic_id)
				send_ipi(ids[i], 0x4500);	/* INIT, level assert */
		delay_ms(10);
		for (int round = 0; round < 2; round++) {
			for (u32 i = 0; i < n; i++)
				if (ids[i] != bsp_apic_id)
					send_ipi(ids[i], 0x4600 | (TRAMPOLINE_ADDR >> 12));
			if (round == 0) {
				u64 end = rdtsc() + TSC_PER_MS / 5;
				while (rdtsc() < end && ap_count < aps)
					cpu_relax();
			}
		}
		u64 end = rdtsc() + 1000 * TSC_PER_MS;
		while (rdtsc() < end && ap_count < aps)
			cpu_relax();
	}
	u32 started = 1 + ap_count;
	puts("smp-started: ");
	put_dec(started);
	puts("\n");
	if (started != expected)
		fail(have_madt ? "madt-cpus != smp-started" : "mptable-cpus != smp-started");
}

/* ---- RTC ---- */

u8 cmos_read(u8 reg)
{
	outb(0x70, reg);
	return inb(0x71);
}

void cmos_write(u8 reg, u8 v)
{
	outb(0x70, reg);
	outb(0x71, v);
}

u8 rtc_second(void)
{
	if (cmos_read(0x0a) & 0x80)	/* update in progress */
		return 0xff;
	return cmos_read(0x00);
}

static u32 bcd(u32 v) { return (v & 0x0f) + (v >> 4) * 10; }

static void report_rtc(void)
{
	u8 r[7], prev[7];
	int tries = 0;
	for (;;) {
		for (u32 i = 0; i < 20000 && (cmos_read(0x0a) & 0x80); i++)
			;
		r[0] = cmos_read(0x00);
		r[1] = cmos_read(0x02);
		r[2] = cmos_read(0x04);
		r[3] = cmos_read(0x07);
		r[4] = cmos_read(0x08);
		r[5] = cmos_read(0x09);
		r[6] = cmos_read(0x32);
		if (tries && !memcmp(r, prev, sizeof(r)))
			break;
		if (++tries > 5)
			break;
		memcpy(prev, r, sizeof(r));
	}
	u8 b = cmos_read(0x0b);
	u32 sec = r[0], min = r[1], hour = r[2], day = r[3], mon = r[4], year = r[5], cent = r[6];
	int pm = hour & 0x80;
	hour &= 0x7f;
	if (!(b & 0x04)) {
		sec = bcd(sec);
		min = bcd(min);
		hour = bcd(hour);
		day = bcd(day);
		mon = bcd(mon);
		year = bcd(year);
		cent = bcd(cent);
	}
	if (!(b & 0x02)) {	/* 12-hour mode */
		hour %= 12;
		if (pm)
			hour += 12;
	}
	if (cent < 19 || cent > 21)
		cent = 20;
	puts("rtc: ");
	put_dec(cent * 100 + year);
	putc('-');
	put_dec2(mon);
	putc('-');
	put_dec2(day);
	putc(' ');
	put_dec2(hour);
	putc(':');
	put_dec2(min);
	putc(':');
	put_dec2(sec);
	puts("\n");
}

/* ---- serial input (interrupt driven) ---- */

#define RX_RING 256
static volatile u8 rx_ring[RX_RING];
static volatile u32 rx_head, rx_tail;	/* head: written by the ISR */
volatile u64 ticks;

void serial_isr(void)
{
	for (int i = 0; i < 64 && (inb(COM1 + 5) & 1); i++) {
		u8 c = inb(COM1);
		if (rx_head - rx_tail < RX_RING) {
			rx_ring[rx_head % RX_RING] = c;
			rx_head = rx_head + 1;
		}
	}
	lapic_wr(0xb0, 0);	/* EOI */
}

/* irq.c (`pic`, `ioapic` with rx=N): stores one received byte, as serial_isr() does. */
void rx_push(u8 c)
{
	if (rx_head - rx_tail < RX_RING) {
		rx_ring[rx_head % RX_RING] = c;
		rx_head = rx_head + 1;
	}
}

void timer_isr(void)
{
	ticks = ticks + 1;
	lapic_wr(0xb0, 0);
}

#define IOAPIC 0xfec00000UL

static void ioapic_wr_at(u64 base, u32 reg, u32 v)
{
	wr32(base, reg);
	wr32(base + 0x10, v);
}

static u32 ioapic_rd_at(u64 base, u32 reg)
{
	wr32(base, reg);
	return rd32(base + 0x10);
}

static void ioapic_wr(u32 reg, u32 v) { ioapic_wr_at(IOAPIC, reg, v); }

/* Finds the IOAPIC pin of `gsi`: returns its base address and sets *pin, or 0. */
static u64 ioapic_for_gsi(u32 gsi, u32 *pin)
{
	if (!ioapic_n)
		add_ioapic(IOAPIC, 0);
	/* MP table IOAPICs after the first have no GSI base: they follow each other. */
	for (u32 i = 1; i < ioapic_n; i++)
		if (ioapics[i].gsi_base == 0xffffffff)
			ioapics[i].gsi_base = ioapics[i - 1].gsi_base +
				((ioapic_rd_at(ioapics[i - 1].addr, 1) >> 16) & 0xff) + 1;
	for (u32 i = 0; i < ioapic_n; i++) {
		u32 ver = ioapic_rd_at(ioapics[i].addr, 1);
		if (ver == 0xffffffff)
			continue;
		u32 pins = ((ver >> 16) & 0xff) + 1;
		if (gsi >= ioapics[i].gsi_base && gsi < ioapics[i].gsi_base + pins) {
			*pin = gsi - ioapics[i].gsi_base;
			return ioapics[i].addr;
		}
	}
	return 0;
}

int ioapic_route_irq(u32 irq, u32 vector, int level, int active_low)
{
	u32 gsi = irq;
	if (irq < 16) {
		for (u32 i = 0; i < iso_n; i++) {
			if (isos[i].irq != irq)
				continue;
			gsi = isos[i].gsi;
			u32 pol = isos[i].flags & 3, trig = (isos[i].flags >> 2) & 3;
			if (pol == 1 || pol == 3)
				active_low = pol == 3;
			if (trig == 1 || trig == 3)
				level = trig == 3;
		}
	}
	u32 pin;
	u64 base = ioapic_for_gsi(gsi, &pin);
	if (!base)
		return -1;
	ioapic_wr_at(base, 0x10 + 2 * pin + 1, bsp_apic_id << 24);
	ioapic_wr_at(base, 0x10 + 2 * pin,
		     vector | (active_low ? 1 << 13 : 0) | (level ? 1 << 15 : 0));
	return (int)gsi;
}

void ioapic_mask_gsi(u32 gsi)
{
	u32 pin;
	u64 base = ioapic_for_gsi(gsi, &pin);
	if (base)
		ioapic_wr_at(base, 0x10 + 2 * pin, 1 << 16);
}

void pic_mask_all(void)
{
	/* 8259s: remap to 0x20/0x28, then mask everything. */
	outb(0x20, 0x11);
	outb(0xa0, 0x11);
	outb(0x21, 0x20);
	outb(0xa1, 0x28);
	outb(0x21, 0x04);
	outb(0xa1, 0x02);
	outb(0x21, 0x01);
	outb(0xa1, 0x01);
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
}

static void rx_setup(void)
{
	pic_mask_all();

	/* IOAPIC pin 4 (COM1) -> VEC_SERIAL, edge, active high, fixed, physical dest BSP. */
	ioapic_wr(0x10 + 2 * 4 + 1, bsp_apic_id << 24);
	ioapic_wr(0x10 + 2 * 4, VEC_SERIAL);

	lapic_wr(0x80, 0);	/* TPR: accept everything */

	/* UART: 115200 8N1, FIFO on (without clearing what already arrived), OUT2, RX irq. */
	outb(COM1 + 3, 0x80);
	outb(COM1 + 0, 0x01);
	outb(COM1 + 1, 0x00);
	outb(COM1 + 3, 0x03);
	outb(COM1 + 2, 0x01);
	outb(COM1 + 4, 0x0b);
	outb(COM1 + 1, 0x01);
}

void timer_start(void)
{
	lapic_wr(0x3e0, 0x0b);			/* divide by 1 */
	lapic_wr(0x320, VEC_TIMER | (1 << 17));	/* periodic */
	lapic_wr(0x380, 10000000);		/* ~10 ms at a 1 GHz APIC clock */
}

void timer_stop(void)
{
	lapic_wr(0x320, 1 << 16);	/* masked */
	lapic_wr(0x380, 0);
}

static void report_rx(u32 want)
{
	if (want > RX_RING)
		want = RX_RING;
	timer_start();
	u64 start = rdtsc();
	int timeout = 0;
	for (;;) {
		if (rx_head - rx_tail >= want)
			break;
		if (ticks >= 500 || rdtsc() - start > 5000 * TSC_PER_MS) {
			timeout = 1;
			break;
		}
		wait_irq();
	}
	timer_stop();
	puts("serial-rx: ");
	while (rx_tail != rx_head && want) {
		u8 c = rx_ring[rx_tail % RX_RING];
		rx_tail = rx_tail + 1;
		want--;
		if (c >= 0x20 && c < 0x7f && c != '\\') {
			putc(c);
		} else {
			static const char hex[] = "0123456789abcdef";
			puts("\\x");
			putc(hex[c >> 4]);
			putc(hex[c & 15]);
		}
	}
	puts("\n");
	if (timeout)
		fail("serial-rx timeout");
}

static void __attribute__((noreturn)) echo_forever(void)
{
	for (;;) {
		while (rx_tail == rx_head)
			wait_irq();
		u8 c = rx_ring[rx_tail % RX_RING];
		rx_tail = rx_tail + 1;
		if (c == 0x04) {	/* Ctrl-D ends the demo */
			puts("\n");
			finish(opt_exit_set ? (u8)opt_exit : 0);
		}
		if (c == '\r')
			putc_raw('\r'), putc_raw('\n');
		else
			putc_raw(c);
	}
}

/* ------------------------------------------------------------------------- */
/* exits=N: exits whose handling is trivial, for timing the VMM's exit round trip */

/* 8 reads of the debug exit port: unrolled so that the loop's own instructions (each
 * one emulated on this project's nested KVM, about 0.5 us) add little per exit. */
static inline void inb_f4_x8(void)
{
	__asm__ volatile("inb $0xf4, %%al\n\tinb $0xf4, %%al\n\tinb $0xf4, %%al\n\tinb $0xf4, %%al\n\t"
			 "inb $0xf4, %%al\n\tinb $0xf4, %%al\n\tinb $0xf4, %%al\n\tinb $0xf4, %%al"
			 : : : "eax", "memory");
}

/* 8 32-bit loads from the same MMIO address. */
static inline u32 rd32_x8(u64 a)
{
	u32 v;
	__asm__ volatile("movl (%1), %0\n\tmovl (%1), %0\n\tmovl (%1), %0\n\tmovl (%1), %0\n\t"
			 "movl (%1), %0\n\tmovl (%1), %0\n\tmovl (%1), %0\n\tmovl (%1), %0"
			 : "=&r"(v) : "r"(a) : "memory");
	return v;
}

/*
 * opts.exits reads of port 0xf4 (the debug exit device: a claimed port whose read is
 * trivial) and as many 32-bit reads of 00:00.0's vendor/device ID dword through ECAM
 * (ecam=<base>, else the ACPI MCFG), then one report line:
 *   exits: pio=N mmio=N ecam=0x.. id=vvvv:dddd      or, without ECAM,
 *   exits: pio=N mmio=0 ecam=none
 * Paging must cover the ECAM (setup_cpu) and the MCFG must have been parsed.
 */
static void run_exits(void)
{
	u32 n = opts.exits;
	u64 ecam = opts.ecam_base ? opts.ecam_base : mcfg_base;
	if (ecam >= 0x100000000UL)
		ecam = 0;	/* the probe maps the low 4 GiB only */
	for (u32 i = 0; i < n / 8; i++)
		inb_f4_x8();
	for (u32 i = 0; i < n % 8; i++)
		inb(0xf4);
	u32 id = 0;
	if (ecam) {
		for (u32 i = 0; i < n / 8; i++)
			id = rd32_x8(ecam);
		for (u32 i = 0; i < n % 8; i++)
			id = rd32(ecam);
	}
	puts("exits: pio=");
	put_dec(n);
	puts(" mmio=");
	put_dec(ecam ? n : 0);
	puts(" ecam=");
	if (ecam) {
		put_hex(ecam);
		if (n) {
			puts(" id=");
			put_hexn(id & 0xffff, 4);
			putc(':');
			put_hexn(id >> 16, 4);
		}
	} else {
		puts("none");
	}
	puts("\n");
}

/* ------------------------------------------------------------------------- */

void probe_main(u32 boot_kind, u64 boot_info)
{
	kind = boot_kind;
	info = boot_info;
	uart_init();

	if (kind == KIND_BZIMAGE32 && rd32(info + 0x1e4) == RM_MAGIC)
		kind = KIND_REALMODE;

	/* Everything is copied out of the boot structures before low memory is reused. */
	read_boot_info();
	parse_cmdline();
	if (opt_quick) {
		puts("rvmm-probe: quick\n");
		if (opts.exits_set) {
			setup_cpu();	/* the identity map reaches the ECAM */
			find_mcfg();
			run_exits();
		}
		finish(0);
	}

	puts("rvmm-probe: boot=");
	puts(kind_name());
	puts("\n");

	setup_cpu();
	if (opt_fault)	/* test hook: the exception path (prints, exits with 0xee) */
		__asm__ volatile("ud2");

	puts("cmdline: ");
	puts(has_cmdline ? cmdline : "(none)");
	puts("\n");
	report_e820();
	report_initrd();
	report_bootparams();
	report_acpi();
	report_mptable();

	lapic_enable();
	start_aps();
	report_rtc();

	if (opts.pci)
		pci_report();
	if (opts.blk)
		blk_report();
	if (opts.vpci_spec)
		vpci_spec_report();
	if (opts.vmmio_spec)
		vmmio_spec_report();
	if (opts.rng)
		rng_report();
	if (opts.vcon)
		vcon_report();
	if (opts.net)
		net_report();
	if (opts.vsock || opts.vsock_listen_set)
		vsock_report();
	if (opts.balloon)
		balloon_report();
	if (opts.legacy_spec)
		legacy_spec_report();	/* uses COM1 itself: before any serial input is taken */

	irq_report();	/* pit, pic, ioapic (irq.c): nothing without those tokens */
	int irqs = 0;
	if (opt_rx || opt_echo) {
		if (!irq_rx_setup())	/* rx with pic or ioapic: irq.c routes COM1 */
			rx_setup();
		if (opt_rx_fifo) {
			/* rx-fifo=1|4|8|14: the RX trigger level. Below it, bytes
			 * arrive by the character timeout (IIR 0xCC), 4 character
			 * times after the last one. The FIFO is not cleared. */
			u8 level = opt_rx_fifo >= 14 ? 0xc0 : opt_rx_fifo >= 8 ? 0x80 : opt_rx_fifo >= 4 ? 0x40 : 0x00;
			outb(COM1 + 2, (u8)(0x01 | level));
			puts("serial-rx-fifo: trigger=");
			put_dec(level == 0xc0 ? 14 : level == 0x80 ? 8 : level == 0x40 ? 4 : 1);
			puts("\n");
		}
		irqs = 1;
	}
	if (opt_rx)
		report_rx(opt_rx);
	irq_rx_report();
	if (opts.exits_set)
		run_exits();

	if (fail_len) {
		puts("probe-result: fail ");
		puts(fail_buf);
		puts("\n");
	} else {
		puts("probe-result: ok\n");
	}
	if (opt_echo && irqs)
		echo_forever();
	if (fail_len)
		finish(1);
	finish(opt_exit_set ? (u8)opt_exit : 0);
}
