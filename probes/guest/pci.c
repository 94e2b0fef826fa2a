/*
 * PCI bus 0: configuration mechanism 1 (0xCF8/0xCFC) or ECAM (ACPI MCFG), enumeration,
 * BAR sizing and, where firmware left them empty, BAR assignment.
 *
 * Report lines (token `pci`, implied by `blk` without `mmio`):
 *   pci-host: BB:DD.F vvvv:dddd mech=cf8|ecam [ecam=0x..]   (or pci-host: none ...)
 *   pci: BB:DD.F vvvv:dddd class=cc.ss.pp
 *   pci-bar: BB:DD.F bar=N type=io|mem32|mem64 addr=0x.. size=0x..
 *   pci-devices: <n>
 * and, when the probe assigns an address itself (pci_enable_device()):
 *   pci-assign: BB:DD.F bar=N addr=0x.. size=0x..
 */
#include "pci.h"

struct pci_dev pci_devs[PCI_MAX_DEVS];
u32 pci_ndevs;
const char *pci_mech;
static u64 ecam;	/* ECAM base when pci_mech is "ecam" */
static u64 ecam_size;	/* from the MCFG bus range; 256 MiB for ecam=<base> */

/* ---- configuration space access ---- */

static u32 cf8_addr(const struct pci_dev *d, u32 off)
{
	return 0x80000000U | (u32)d->bus << 16 | (u32)d->dev << 11 | (u32)d->fn << 8 | (off & 0xfc);
}

static u64 ecam_addr(const struct pci_dev *d, u32 off)
{
	return ecam + ((u64)d->bus << 20 | (u64)d->dev << 15 | (u64)d->fn << 12 | (off & 0xfff));
}

u32 pci_rd32(const struct pci_dev *d, u32 off)
{
	if (ecam)
		return rd32(ecam_addr(d, off & ~3));
	outl(0xcf8, cf8_addr(d, off));
	return inl(0xcfc);
}

u16 pci_rd16(const struct pci_dev *d, u32 off)
{
	if (ecam)
		return rd16(ecam_addr(d, off & ~1));
	outl(0xcf8, cf8_addr(d, off));
	return inw(0xcfc + (off & 2));
}

u8 pci_rd8(const struct pci_dev *d, u32 off)
{
	if (ecam)
		return rd8(ecam_addr(d, off));
	outl(0xcf8, cf8_addr(d, off));
	return inb(0xcfc + (off & 3));
}

void pci_wr32(const struct pci_dev *d, u32 off, u32 v)
{
	if (ecam) {
		wr32(ecam_addr(d, off & ~3), v);
		return;
	}
	outl(0xcf8, cf8_addr(d, off));
	outl(0xcfc, v);
}

void pci_wr16(const struct pci_dev *d, u32 off, u16 v)
{
	if (ecam) {
		wr16(ecam_addr(d, off & ~1), v);
		return;
	}
	outl(0xcf8, cf8_addr(d, off));
	outw(0xcfc + (off & 2), v);
}

void pci_wr8(const struct pci_dev *d, u32 off, u8 v)
{
	if (ecam) {
		wr8(ecam_addr(d, off), v);
		return;
	}
	outl(0xcf8, cf8_addr(d, off));
	outb(0xcfc + (off & 3), v);
}

/* ---- helpers ---- */

void pci_put_bdf(const struct pci_dev *d)
{
	put_hexn(d->bus, 2);
	putc(':');
	put_hexn(d->dev, 2);
	putc('.');
	put_hexn(d->fn, 1);
}

u8 pci_find_cap(const struct pci_dev *d, u8 id, u8 after)
{
	if (!(pci_rd16(d, 0x06) & 0x10))	/* status: capabilities list */
		return 0;
	u8 p = after ? pci_rd8(d, after + 1) : pci_rd8(d, 0x34);
	for (int n = 0; n < 48 && p >= 0x40; n++) {
		p &= 0xfc;
		if (pci_rd8(d, p) == id)
			return p;
		p = pci_rd8(d, p + 1);
	}
	return 0;
}

static const char *bar_type_name(u8 t)
{
	switch (t) {
	case BAR_IO: return "io";
	case BAR_MEM32: return "mem32";
	case BAR_MEM64: return "mem64";
	}
	return "none";
}

static void put_bar(const char *key, const struct pci_dev *d, u32 i)
{
	puts(key);
	pci_put_bdf(d);
	puts(" bar=");
	put_dec(i);
	puts(" type=");
	puts(bar_type_name(d->bar[i].type));
	puts(" addr=");
	put_hex(d->bar[i].addr);
	puts(" size=");
	put_hex(d->bar[i].size);
	puts("\n");
}

static u64 lowest_bit(u64 m) { return m & (~m + 1); }

/* Sizes every BAR: decode off, write all ones, read the mask, restore, decode back on.
 * Like Linux (mmio_always_on), decode stays on for host bridges. */
static void size_bars(struct pci_dev *d)
{
	u32 nbars = (d->hdr & 0x7f) == 0 ? 6 : (d->hdr & 0x7f) == 1 ? 2 : 0;
	if (!nbars)
		return;
	u16 cmd = pci_rd16(d, 0x04);
	int host = d->class == 0x06 && d->subclass == 0x00;
	if (!host)
		pci_wr16(d, 0x04, cmd & ~3);
	for (u32 i = 0; i < nbars; i++) {
		u32 off = 0x10 + 4 * i;
		u32 orig = pci_rd32(d, off);
		pci_wr32(d, off, 0xffffffff);
		u32 mask = pci_rd32(d, off);
		pci_wr32(d, off, orig);
		struct pci_bar *b = &d->bar[i];
		if (!mask || mask == 0xffffffff)
			continue;	/* not implemented (or a broken all-ones read) */
		if (orig & 1) {
			b->type = BAR_IO;
			b->addr = orig & ~3U;
			b->size = lowest_bit(mask & ~3U);
		} else if (((orig >> 1) & 3) == 2 && i + 1 < nbars) {
			u32 orig_hi = pci_rd32(d, off + 4);
			pci_wr32(d, off + 4, 0xffffffff);
			u32 mask_hi = pci_rd32(d, off + 4);
			pci_wr32(d, off + 4, orig_hi);
			b->type = BAR_MEM64;
			b->prefetch = (orig >> 3) & 1;
			b->addr = ((u64)orig_hi << 32) | (orig & ~0xfU);
			b->size = lowest_bit(((u64)mask_hi << 32) | (mask & ~0xfU));
			i++;	/* the upper half */
		} else {
			b->type = BAR_MEM32;
			b->prefetch = (orig >> 3) & 1;
			b->addr = orig & ~0xfU;
			b->size = lowest_bit(mask & ~0xfU);
		}
	}
	if (!host)
		pci_wr16(d, 0x04, cmd);
}

/* ---- discovery ---- */

static int cf8_present(void)
{
	/* As Linux's pci_check_type1(): the address register must read back. */
	u32 save = inl(0xcf8);
	outl(0xcf8, 0x80000000U);
	u32 v = inl(0xcf8);
	outl(0xcf8, save);
	return v == 0x80000000U;
}

static void probe_function(u8 dev, u8 fn)
{
	if (pci_ndevs >= PCI_MAX_DEVS)
		return;
	struct pci_dev *d = &pci_devs[pci_ndevs];
	memset(d, 0, sizeof(*d));
	d->bus = 0;
	d->dev = dev;
	d->fn = fn;
	u32 id = pci_rd32(d, 0x00);
	if ((id & 0xffff) == 0xffff || (id & 0xffff) == 0)
		return;
	d->vendor = id & 0xffff;
	d->device = id >> 16;
	u32 cls = pci_rd32(d, 0x08);
	d->rev = cls & 0xff;
	d->progif = (cls >> 8) & 0xff;
	d->subclass = (cls >> 16) & 0xff;
	d->class = cls >> 24;
	d->hdr = pci_rd8(d, 0x0e);
	d->irq_line = pci_rd8(d, 0x3c);
	d->irq_pin = pci_rd8(d, 0x3d);
	size_bars(d);
	pci_ndevs++;
}

static void scan_bus0(void)
{
	for (u8 dev = 0; dev < 32; dev++) {
		struct pci_dev probe = { .dev = dev };
		u16 vendor = pci_rd16(&probe, 0x00);
		if (vendor == 0xffff || vendor == 0)
			continue;
		u32 nfn = (pci_rd8(&probe, 0x0e) & 0x80) ? 8 : 1;
		for (u8 fn = 0; fn < nfn; fn++)
			probe_function(dev, fn);
	}
}

void pci_report(void)
{
	u64 ecam_at = opts.ecam_base ? opts.ecam_base : mcfg_base;
	if (!opts.ecam && cf8_present()) {
		pci_mech = "cf8";
	} else if (ecam_at && ecam_at < 0x100000000UL) {
		ecam = ecam_at;
		ecam_size = opts.ecam_base ? 256UL << 20 : ((u64)mcfg_bus_end + 1) << 20;
		pci_mech = "ecam";
	} else if (cf8_present()) {
		pci_mech = "cf8";
	}
	if (!pci_mech) {
		puts("pci-host: none\npci-devices: 0\n");
		return;
	}
	scan_bus0();

	struct pci_dev *host = NULL;
	for (u32 i = 0; i < pci_ndevs && !host; i++)
		if (pci_devs[i].class == 0x06 && pci_devs[i].subclass == 0x00)
			host = &pci_devs[i];
	puts("pci-host: ");
	if (host) {
		pci_put_bdf(host);
		putc(' ');
		put_hexn(host->vendor, 4);
		putc(':');
		put_hexn(host->device, 4);
	} else {
		puts("none");
	}
	puts(" mech=");
	puts(pci_mech);
	if (ecam) {
		puts(" ecam=");
		put_hex(ecam);
	}
	puts("\n");

	for (u32 i = 0; i < pci_ndevs; i++) {
		struct pci_dev *d = &pci_devs[i];
		puts("pci: ");
		pci_put_bdf(d);
		putc(' ');
		put_hexn(d->vendor, 4);
		putc(':');
		put_hexn(d->device, 4);
		puts(" class=");
		put_hexn(d->class, 2);
		putc('.');
		put_hexn(d->subclass, 2);
		putc('.');
		put_hexn(d->progif, 2);
		puts("\n");
		for (u32 b = 0; b < 6; b++)
			if (d->bar[b].type != BAR_NONE)
				put_bar("pci-bar: ", d, b);
	}
	puts("pci-devices: ");
	put_dec(pci_ndevs);
	puts("\n");
}

/* ---- BAR assignment ---- */

static int overlaps_any(const struct pci_dev *self, u32 self_bar, u8 io, u64 a, u64 size)
{
	for (u32 i = 0; i < pci_ndevs; i++) {
		const struct pci_dev *d = &pci_devs[i];
		for (u32 b = 0; b < 6; b++) {
			const struct pci_bar *r = &d->bar[b];
			if (r->type == BAR_NONE || !r->addr || (r->type == BAR_IO) != io)
				continue;
			if (d == self && b == self_bar)
				continue;
			if (a < r->addr + r->size && r->addr < a + size)
				return 1;
		}
	}
	return 0;
}

static u64 alloc_in(const struct pci_dev *d, u32 bar, u8 io, u64 base, u64 limit, u64 size)
{
	u64 align = size < 16 ? 16 : size;
	u64 a = (base + align - 1) & ~(align - 1);
	while (a + size <= limit) {
		if (!io && ecam && a < ecam + ecam_size && ecam < a + size) {
			a = (ecam + ecam_size + align - 1) & ~(align - 1);
			continue;
		}
		if (!overlaps_any(d, bar, io, a, size))
			return a;
		a += align;
	}
	return 0;
}

static int needs_address(const struct pci_bar *b)
{
	if (b->type == BAR_NONE)
		return 0;
	if (opts.reassign || !b->addr)
		return 1;
	/* The probe maps only the low 4 GiB. */
	return b->type != BAR_IO && b->addr + b->size > 0x100000000UL;
}

int pci_enable_device(struct pci_dev *d)
{
	int rc = 0;
	/* Clear the BARs we are about to move, so they do not block their own new place. */
	for (u32 i = 0; i < 6; i++)
		if (needs_address(&d->bar[i]))
			d->bar[i].addr = 0;
	u16 cmd = pci_rd16(d, 0x04);
	pci_wr16(d, 0x04, cmd & ~3);
	for (u32 i = 0; i < 6; i++) {
		struct pci_bar *b = &d->bar[i];
		if (b->type == BAR_NONE || b->addr)
			continue;
		u8 io = b->type == BAR_IO;
		u64 a = io ? alloc_in(d, i, 1, opts.pciio, 0x10000, b->size)
			   : alloc_in(d, i, 0, opts.pcimem, opts.pcimem + opts.pcimem_size, b->size);
		if (!a) {
			puts("pci-assign: ");
			pci_put_bdf(d);
			puts(" bar=");
			put_dec(i);
			puts(" no room\n");
			rc = -1;
			continue;
		}
		u32 off = 0x10 + 4 * i;
		u32 low_flags = pci_rd32(d, off) & (io ? 3 : 0xf);
		pci_wr32(d, off, (u32)a | low_flags);
		if (b->type == BAR_MEM64)
			pci_wr32(d, off + 4, (u32)(a >> 32));
		b->addr = a;
		put_bar("pci-assign: ", d, i);
	}
	/* I/O and memory decode, bus mastering (the device reads and writes the rings). */
	pci_wr16(d, 0x04, cmd | 0x7);
	return rc;
}
