/*
 * A small virtio 1.x block driver (token `blk`): virtio over PCI (spec 4.1, modern
 * interface through the vendor capabilities) or virtio-mmio version 2 (spec 4.2, token
 * `mmio`, devices from `virtio_mmio.device=<size>@<base>:<irq>` on the command line).
 *
 * One request queue (split ring), one request in flight. Completion is found by
 * polling the used ring (default), or by waiting with `sti; hlt` for an MSI-X interrupt
 * (token `msix`) or the INTx line / virtio-mmio IRQ through the IOAPIC (token `intx`).
 * Every wait is bounded. See README.md for the report lines.
 */
#include "pci.h"

/* Device status (2.1) */
#define ST_ACKNOWLEDGE 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FEATURES_OK 8
#define ST_NEEDS_RESET 64
#define ST_FAILED 128

/* Feature bits (5.2.3, 6) */
#define F(b) (1UL << (b))
#define BLK_F_RO 5
#define BLK_F_BLK_SIZE 6
#define BLK_F_FLUSH 9
#define BLK_F_DISCARD 13
#define BLK_F_WRITE_ZEROES 14
#define F_INDIRECT_DESC 28
#define F_VERSION_1 32
#define F_ACCESS_PLATFORM 33

/* Request types and status (5.2.6) */
#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define T_DISCARD 11
#define T_WRITE_ZEROES 13
#define S_OK 0
#define S_IOERR 1
#define S_UNSUPP 2

/* virtio_pci_common_cfg (4.1.4.3) */
#define CC_DFSELECT 0x00
#define CC_DF 0x04
#define CC_GFSELECT 0x08
#define CC_GF 0x0c
#define CC_MSIX_CONFIG 0x10
#define CC_NUM_QUEUES 0x12
#define CC_STATUS 0x14
#define CC_GENERATION 0x15
#define CC_Q_SELECT 0x16
#define CC_Q_SIZE 0x18
#define CC_Q_MSIX 0x1a
#define CC_Q_ENABLE 0x1c
#define CC_Q_NOTIFY_OFF 0x1e
#define CC_Q_DESC 0x20
#define CC_Q_DRIVER 0x28
#define CC_Q_DEVICE 0x30

/* virtio-mmio registers (4.2.2) */
#define MM_MAGIC 0x000
#define MM_VERSION 0x004
#define MM_DEVICE_ID 0x008
#define MM_VENDOR_ID 0x00c
#define MM_DF 0x010
#define MM_DFSEL 0x014
#define MM_GF 0x020
#define MM_GFSEL 0x024
#define MM_Q_SEL 0x030
#define MM_Q_NUM_MAX 0x034
#define MM_Q_NUM 0x038
#define MM_Q_READY 0x044
#define MM_Q_NOTIFY 0x050
#define MM_INT_STATUS 0x060
#define MM_INT_ACK 0x064
#define MM_STATUS 0x070
#define MM_Q_DESC_LO 0x080
#define MM_Q_DESC_HI 0x084
#define MM_Q_DRIVER_LO 0x090
#define MM_Q_DRIVER_HI 0x094
#define MM_Q_DEVICE_LO 0x0a0
#define MM_Q_DEVICE_HI 0x0a4
#define MM_GENERATION 0x0fc
#define MM_CONFIG 0x100

#define MMIO_MAGIC 0x74726976	/* "virt" */

/* Split virtqueue (2.7) */
#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define DESC_F_INDIRECT 4
#define AVAIL_F_NO_INTERRUPT 1

#define QMAX 16

struct vring_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

static struct vring_desc ring_desc[QMAX] __attribute__((aligned(4096)));
static volatile struct {
	u16 flags, idx;
	u16 ring[QMAX];
	u16 used_event;
} ring_avail __attribute__((aligned(4096)));
static volatile struct {
	u16 flags, idx;
	struct {
		u32 id, len;
	} ring[QMAX];
	u16 avail_event;
} ring_used __attribute__((aligned(4096)));
static struct vring_desc ind_table[4] __attribute__((aligned(16)));

struct blk_hdr {
	u32 type, reserved;
	u64 sector;
};
static struct blk_hdr hdr __attribute__((aligned(16)));
static volatile u8 status_byte;
static struct {
	u64 sector;
	u32 num_sectors, flags;
} dwz __attribute__((aligned(16)));
static u8 wbuf[4096] __attribute__((aligned(4096)));
static u8 rbuf[4096] __attribute__((aligned(4096)));
static u8 idbuf[20];

#define IRQ_POLL 0
#define IRQ_MSIX 1
#define IRQ_INTX 2

struct vdev {
	int mmio;
	u64 base;		/* virtio-mmio registers */
	u32 mmio_irq;
	struct pci_dev *pci;
	u64 common, isr, devcfg, notify_base;
	u32 notify_mult;
	u16 notify_off;
	int irq;		/* IRQ_* */
	int gsi;
};

static struct vdev vdev;
static u16 qsize, next_free, avail_idx, last_used;
static volatile u32 blk_irqs, blk_cfg_irqs, blk_isr_other;
static const char *blk_err;
static int vq_dead;	/* a request got lost: no further requests */

static void blk_fail(const char *reason)
{
	if (!blk_err)
		blk_err = reason;
	char buf[96] = "blk: ";
	u32 n = 5;
	while (*reason && n < sizeof(buf) - 1)
		buf[n++] = *reason++;
	buf[n] = 0;
	fail(buf);
}

/* ---- interrupts ---- */

void blk_isr(void)
{
	struct vdev *v = &vdev;
	if (v->irq == IRQ_INTX) {
		u32 isr;
		if (v->mmio) {
			isr = rd32(v->base + MM_INT_STATUS);
			wr32(v->base + MM_INT_ACK, isr);
		} else {
			isr = rd8(v->isr);	/* reading clears it and deasserts the line */
		}
		if (isr & 1)
			blk_irqs = blk_irqs + 1;
		else
			blk_isr_other = blk_isr_other + 1;
	} else {
		blk_irqs = blk_irqs + 1;
	}
	lapic_wr(0xb0, 0);	/* EOI (for a level-triggered IOAPIC pin, after the ack) */
}

void blk_cfg_isr(void)
{
	blk_cfg_irqs = blk_cfg_irqs + 1;
	lapic_wr(0xb0, 0);
}

/* ---- transport ---- */

static u8 st_get(struct vdev *v)
{
	return v->mmio ? (u8)rd32(v->base + MM_STATUS) : rd8(v->common + CC_STATUS);
}

static void st_set(struct vdev *v, u8 s)
{
	if (v->mmio)
		wr32(v->base + MM_STATUS, s);
	else
		wr8(v->common + CC_STATUS, s);
}

static u64 features_get(struct vdev *v)
{
	u64 f = 0;
	for (u32 sel = 0; sel < 2; sel++) {
		u32 w;
		if (v->mmio) {
			wr32(v->base + MM_DFSEL, sel);
			w = rd32(v->base + MM_DF);
		} else {
			wr32(v->common + CC_DFSELECT, sel);
			w = rd32(v->common + CC_DF);
		}
		f |= (u64)w << (32 * sel);
	}
	return f;
}

static void features_set(struct vdev *v, u64 f)
{
	for (u32 sel = 0; sel < 2; sel++) {
		u32 w = (u32)(f >> (32 * sel));
		if (v->mmio) {
			wr32(v->base + MM_GFSEL, sel);
			wr32(v->base + MM_GF, w);
		} else {
			wr32(v->common + CC_GFSELECT, sel);
			wr32(v->common + CC_GF, w);
		}
	}
}

static u64 cfg_base(struct vdev *v) { return v->mmio ? v->base + MM_CONFIG : v->devcfg; }
static u32 cfg_gen(struct vdev *v)
{
	return v->mmio ? rd32(v->base + MM_GENERATION) : rd8(v->common + CC_GENERATION);
}

/* A 32-bit config field (off) or, with wide, a 64-bit one read as two halves under the
 * configuration generation (2.4.1). */
static u64 cfg_read(struct vdev *v, u32 off, int wide)
{
	u64 val = 0;
	for (int tries = 0; tries < 10; tries++) {
		u32 g = cfg_gen(v);
		val = rd32(cfg_base(v) + off);
		if (wide)
			val |= (u64)rd32(cfg_base(v) + off + 4) << 32;
		if (cfg_gen(v) == g)
			break;
	}
	return val;
}

static void notify(struct vdev *v)
{
	if (v->mmio)
		wr32(v->base + MM_Q_NOTIFY, 0);
	else
		wr16(v->notify_base + (u64)v->notify_off * v->notify_mult, 0);
}

static void put_feat(u64 f)
{
	puts("0x");
	put_hexn(f, 16);
}

/* ---- the virtqueue ---- */

struct seg {
	void *addr;
	u32 len;
	int dev_writes;
};

/* Puts one request (n buffers, directly chained or through one indirect table) on the
 * ring, notifies, waits for it in the used ring. Returns the used length, or -1. */
static i64 vq_run(struct vdev *v, const struct seg *s, u32 n, int indirect)
{
	if (vq_dead)
		return -1;
	u16 head = next_free;
	if (indirect) {
		for (u32 i = 0; i < n; i++) {
			ind_table[i].addr = (u64)s[i].addr;
			ind_table[i].len = s[i].len;
			ind_table[i].flags = (s[i].dev_writes ? DESC_F_WRITE : 0) | (i + 1 < n ? DESC_F_NEXT : 0);
			ind_table[i].next = i + 1 < n ? i + 1 : 0;
		}
		ring_desc[head].addr = (u64)ind_table;
		ring_desc[head].len = n * sizeof(struct vring_desc);
		ring_desc[head].flags = DESC_F_INDIRECT;
		ring_desc[head].next = 0;
		next_free = (head + 1) % qsize;
	} else {
		u16 idx = head;
		for (u32 i = 0; i < n; i++) {
			u16 nxt = (idx + 1) % qsize;
			ring_desc[idx].addr = (u64)s[i].addr;
			ring_desc[idx].len = s[i].len;
			ring_desc[idx].flags = (s[i].dev_writes ? DESC_F_WRITE : 0) | (i + 1 < n ? DESC_F_NEXT : 0);
			ring_desc[idx].next = i + 1 < n ? nxt : 0;
			idx = nxt;
		}
		next_free = idx;
	}
	ring_avail.ring[avail_idx % qsize] = head;
	mb();
	avail_idx++;
	ring_avail.idx = avail_idx;
	mb();
	u32 irqs0 = blk_irqs;
	u64 t0 = rdtsc(), tick0 = ticks;
	notify(v);
	for (;;) {
		int used = ring_used.idx != last_used;
		if (used && (v->irq == IRQ_POLL || blk_irqs != irqs0))
			break;
		if (rdtsc() - t0 > 2000 * TSC_PER_MS || ticks - tick0 > 200) {
			blk_fail(used ? "no interrupt for a completed request" : "request timeout");
			vq_dead = 1;
			return -1;
		}
		if (v->irq != IRQ_POLL)
			wait_irq();
		else
			cpu_relax();
	}
	mb();
	u32 id = ring_used.ring[last_used % qsize].id;
	u32 len = ring_used.ring[last_used % qsize].len;
	last_used++;
	if (id != head) {
		blk_fail("used ring id is not the request's head");
		vq_dead = 1;
		return -1;
	}
	return len;
}

/* One block request: header, optional data, status. Returns the status byte, or -1. */
static int blk_req(struct vdev *v, u32 type, u64 sector, void *data, u32 len, int indirect_split)
{
	hdr.type = type;
	hdr.reserved = 0;
	hdr.sector = sector;
	status_byte = 0xff;
	int dev_writes = type == T_IN || type == T_GET_ID;
	struct seg s[4];
	u32 n = 0;
	s[n++] = (struct seg){ &hdr, sizeof(hdr), 0 };
	if (data && indirect_split) {
		s[n++] = (struct seg){ data, len / 2, dev_writes };
		s[n++] = (struct seg){ (u8 *)data + len / 2, len / 2, dev_writes };
	} else if (data) {
		s[n++] = (struct seg){ data, len, dev_writes };
	}
	s[n++] = (struct seg){ (void *)&status_byte, 1, 1 };
	if (vq_run(v, s, n, indirect_split) < 0)
		return -1;
	return status_byte;
}

static void put_status(int st)
{
	if (st == S_UNSUPP)
		puts("unsupported");
	else {
		puts("status ");
		put_dec((u32)st);
	}
}

/* Sector s, byte i = (s * 7 + i + seed) & 0xff, built 8 bytes at a time: each byte of
 * b * 0x0101.. plus 0, 1, .. 7, added per byte without carries between bytes. */
static void fill_pattern(u8 *buf, u32 sectors)
{
	const u64 hi = 0x8080808080808080UL, step = 0x0706050403020100UL;
	for (u32 sec = 0; sec < sectors; sec++)
		for (u32 i = 0; i < 512; i += 8) {
			u64 w = (u64)(u8)(sec * 7 + i + opts.seed) * 0x0101010101010101UL;
			*(u64a *)(buf + sec * 512 + i) = ((w & ~hi) + (step & ~hi)) ^ ((w ^ step) & hi);
		}
}

/* Offset of the first differing byte, or n. Buffers 8-byte aligned, n a multiple of 8. */
static u32 first_diff(const u8 *a, const u8 *b, u32 n)
{
	u32 i = 0;
	while (i < n && *(const u64a *)(a + i) == *(const u64a *)(b + i))
		i += 8;
	while (i < n && a[i] == b[i])
		i++;
	return i;
}

static u32 fnv1a(const u8 *p, u32 n)
{
	u32 h = 0x811c9dc5;
	for (u32 i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x01000193;
	}
	return h;
}

static int all_zero(const u8 *p, u32 n)
{
	u64 acc = 0;
	for (u32 i = 0; i < n; i += 8)
		acc |= *(const u64a *)(p + i);
	return acc == 0;
}

/* ---- the test sequence, common to both transports ---- */

static int setup_queue(struct vdev *v)
{
	u32 max;
	if (v->mmio) {
		wr32(v->base + MM_Q_SEL, 0);
		if (rd32(v->base + MM_Q_READY)) {
			blk_fail("queue 0 ready before setup");
			return -1;
		}
		max = rd32(v->base + MM_Q_NUM_MAX);
	} else {
		wr16(v->common + CC_Q_SELECT, 0);
		max = rd16(v->common + CC_Q_SIZE);
	}
	if (!max) {
		blk_fail("queue 0 not available");
		return -1;
	}
	qsize = QMAX;
	while (qsize > max)
		qsize >>= 1;
	ring_avail.flags = v->irq == IRQ_POLL ? AVAIL_F_NO_INTERRUPT : 0;
	u64 desc = (u64)ring_desc, drv = (u64)&ring_avail, dev = (u64)&ring_used;
	if (v->mmio) {
		wr32(v->base + MM_Q_NUM, qsize);
		wr32(v->base + MM_Q_DESC_LO, (u32)desc);
		wr32(v->base + MM_Q_DESC_HI, (u32)(desc >> 32));
		wr32(v->base + MM_Q_DRIVER_LO, (u32)drv);
		wr32(v->base + MM_Q_DRIVER_HI, (u32)(drv >> 32));
		wr32(v->base + MM_Q_DEVICE_LO, (u32)dev);
		wr32(v->base + MM_Q_DEVICE_HI, (u32)(dev >> 32));
		wr32(v->base + MM_Q_READY, 1);
		if (rd32(v->base + MM_Q_READY) != 1) {
			blk_fail("QueueReady does not read back 1");
			return -1;
		}
	} else {
		u64 c = v->common;
		wr16(c + CC_Q_SIZE, qsize);
		if (rd16(c + CC_Q_SIZE) != qsize) {
			blk_fail("queue_size does not read back");
			return -1;
		}
		/* 64-bit fields as two 32-bit halves, low then high (4.1.3.1). */
		wr32(c + CC_Q_DESC, (u32)desc);
		wr32(c + CC_Q_DESC + 4, (u32)(desc >> 32));
		wr32(c + CC_Q_DRIVER, (u32)drv);
		wr32(c + CC_Q_DRIVER + 4, (u32)(drv >> 32));
		wr32(c + CC_Q_DEVICE, (u32)dev);
		wr32(c + CC_Q_DEVICE + 4, (u32)(dev >> 32));
		if (rd32(c + CC_Q_DESC) != (u32)desc || rd32(c + CC_Q_DESC + 4) != (u32)(desc >> 32) ||
		    rd32(c + CC_Q_DRIVER) != (u32)drv || rd32(c + CC_Q_DRIVER + 4) != (u32)(drv >> 32) ||
		    rd32(c + CC_Q_DEVICE) != (u32)dev || rd32(c + CC_Q_DEVICE + 4) != (u32)(dev >> 32)) {
			blk_fail("queue addresses do not read back");
			return -1;
		}
		if (v->irq == IRQ_MSIX) {
			wr16(c + CC_Q_MSIX, 1);
			u16 got = rd16(c + CC_Q_MSIX);
			if (got != 1) {
				blk_fail("queue_msix_vector does not read back 1");
				return -1;
			}
		}
		v->notify_off = rd16(c + CC_Q_NOTIFY_OFF);
		wr16(c + CC_Q_ENABLE, 1);
		if (rd16(c + CC_Q_ENABLE) != 1) {
			blk_fail("queue_enable does not read back 1");
			return -1;
		}
	}
	puts("blk-queue: size=");
	put_dec(qsize);
	puts(" max=");
	put_dec(max);
	if (!v->mmio) {
		puts(" notify_off=");
		put_dec(v->notify_off);
	}
	puts("\n");
	return 0;
}

static int setup_msix(struct vdev *v)
{
	struct pci_dev *d = v->pci;
	u8 cap = pci_find_cap(d, 0x11, 0);
	if (!cap) {
		blk_fail("no MSI-X capability");
		return -1;
	}
	u16 ctrl = pci_rd16(d, cap + 2);
	u32 n = (ctrl & 0x7ff) + 1;
	u32 tbl = pci_rd32(d, cap + 4);
	u32 bir = tbl & 7;
	if (n < 2 || bir > 5 || d->bar[bir].type == BAR_NONE || d->bar[bir].type == BAR_IO) {
		blk_fail("unusable MSI-X table");
		return -1;
	}
	u64 table = d->bar[bir].addr + (tbl & ~7U);
	/* Enable with the function masked, fill entries 0 (config) and 1 (queue), unmask. */
	pci_wr16(d, cap + 2, (ctrl & ~0x7ff) | 0x8000 | 0x4000);
	for (u32 e = 0; e < 2; e++) {
		u64 ent = table + 16 * e;
		wr32(ent + 0, 0xfee00000U | (bsp_apic_id << 12));
		wr32(ent + 4, 0);
		wr32(ent + 8, e == 0 ? VEC_BLK_CFG : VEC_BLK);	/* fixed, edge */
		wr32(ent + 12, 0);	/* unmasked */
	}
	if (rd32(table + 8) != VEC_BLK_CFG || rd32(table + 16 + 8) != VEC_BLK) {
		blk_fail("MSI-X table does not read back");
		return -1;
	}
	pci_wr16(d, cap + 2, (ctrl & ~0x7ff & ~0x4000) | 0x8000);
	pci_wr16(d, 0x04, pci_rd16(d, 0x04) | (1 << 10));	/* INTx disable */
	wr16(v->common + CC_MSIX_CONFIG, 0);
	u16 got = rd16(v->common + CC_MSIX_CONFIG);
	puts("blk-irq: msix entries=");
	put_dec(n);
	puts(" table=bar");
	put_dec(bir);
	puts("+");
	put_hex(tbl & ~7U);
	puts(" config=0 queue=1 vector=");
	put_hex(VEC_BLK);
	puts(" enabled=");
	put_dec(pci_rd16(d, cap + 2) >> 15);
	puts("\n");
	if (got != 0) {
		blk_fail("config_msix_vector does not read back 0");
		return -1;
	}
	return 0;
}

static int setup_intx(struct vdev *v)
{
	u32 irq;
	if (v->mmio) {
		irq = v->mmio_irq;
		puts("blk-irq: mmio irq=");
		put_dec(irq);
	} else {
		struct pci_dev *d = v->pci;
		irq = d->irq_line;
		puts("blk-irq: intx pin=");
		putc(d->irq_pin >= 1 && d->irq_pin <= 4 ? 'A' + d->irq_pin - 1 : '?');
		puts(" line=");
		put_dec(irq);
		if (!d->irq_pin || irq == 0 || irq == 0xff) {
			puts("\n");
			blk_fail("no INTx pin or interrupt line");
			return -1;
		}
		pci_wr16(d, 0x04, pci_rd16(d, 0x04) & ~(1 << 10));	/* INTx enabled */
	}
	v->gsi = ioapic_route_irq(irq, VEC_BLK, 1, 0);	/* level, active high */
	puts(" gsi=");
	if (v->gsi < 0)
		puts("none");
	else
		put_dec((u32)v->gsi);
	puts(" trigger=level\n");
	if (v->gsi < 0) {
		blk_fail("no IOAPIC pin for the interrupt");
		return -1;
	}
	return 0;
}

static void run_sequence(struct vdev *v)
{
	/* 3.1.1: reset, ACKNOWLEDGE, DRIVER */
	st_set(v, 0);
	for (u32 i = 0; i < 1000 && st_get(v) != 0; i++)
		cpu_relax();
	if (st_get(v) != 0) {
		blk_fail("device does not reset");
		return;
	}
	st_set(v, ST_ACKNOWLEDGE);
	st_set(v, ST_ACKNOWLEDGE | ST_DRIVER);

	u64 offered = features_get(v);
	puts("blk-features: ");
	put_feat(offered);
	puts("\n");
	if (!(offered & F(F_VERSION_1))) {
		st_set(v, ST_FAILED);
		blk_fail("VIRTIO_F_VERSION_1 not offered");
		return;
	}
	u64 want = F(F_VERSION_1) | F(F_ACCESS_PLATFORM) | F(F_INDIRECT_DESC) | F(BLK_F_RO) |
		   F(BLK_F_BLK_SIZE) | F(BLK_F_FLUSH) | F(BLK_F_DISCARD) | F(BLK_F_WRITE_ZEROES);
	u64 feat = offered & want;
	features_set(v, feat);
	st_set(v, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK);
	puts("blk-driver-features: ");
	put_feat(feat);
	puts("\n");
	if (!(st_get(v) & ST_FEATURES_OK)) {
		st_set(v, ST_FAILED);
		blk_fail("FEATURES_OK not kept");
		return;
	}

	u64 capacity = cfg_read(v, 0, 1);
	puts("blk-capacity: ");
	put_dec(capacity);
	puts("\n");
	u32 blk_size = feat & F(BLK_F_BLK_SIZE) ? (u32)cfg_read(v, 20, 0) : 512;
	u32 max_discard = 0, discard_align = 0, max_wz = 0;
	if (feat & F(BLK_F_DISCARD)) {
		max_discard = cfg_read(v, 36, 0);
		discard_align = cfg_read(v, 44, 0);
	}
	if (feat & F(BLK_F_WRITE_ZEROES))
		max_wz = cfg_read(v, 48, 0);
	puts("blk-config: blk_size=");
	put_dec(blk_size);
	puts(" max_discard_sectors=");
	put_dec(max_discard);
	puts(" discard_sector_alignment=");
	put_dec(discard_align);
	puts(" max_write_zeroes_sectors=");
	put_dec(max_wz);
	puts("\n");
	if (capacity < 32) {
		st_set(v, ST_FAILED);
		blk_fail("disk smaller than 32 sectors");
		return;
	}

	if (v->irq != IRQ_POLL) {
		/* Firmware may have left the 8259 unmasked (SeaBIOS: the PIT on IRQ 0 at
		 * vector 8, through LINT0): nothing but our vectors may come in sti; hlt. */
		pic_mask_all();
		lapic_wr(0x80, 0);	/* TPR: accept everything */
	}
	if (v->irq == IRQ_MSIX && setup_msix(v) < 0)
		return;
	if (v->irq == IRQ_INTX && setup_intx(v) < 0)
		return;
	if (v->irq == IRQ_POLL)
		puts("blk-irq: poll\n");
	if (setup_queue(v) < 0)
		return;
	st_set(v, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
	u8 st = st_get(v);
	if (st & (ST_NEEDS_RESET | ST_FAILED) || !(st & ST_DRIVER_OK)) {
		blk_fail("device status after DRIVER_OK");
		return;
	}
	if (v->irq != IRQ_POLL)
		timer_start();	/* a wake-up for the bounded waits */

	int s;
	/* What the disk held before: proves reads come from the backing file. */
	memset(rbuf, 0x55, sizeof(rbuf));
	s = blk_req(v, T_IN, 0, rbuf, 4096, 0);
	if (s != S_OK) {
		blk_fail("initial read");
		return;
	}
	puts("blk-initial: fnv1a=");
	put_hex8(fnv1a(rbuf, 4096));
	puts("\n");

	/* Sectors 0..7: one 4 KiB OUT, FLUSH, IN, compare. */
	if (feat & F(BLK_F_RO)) {
		puts("blk-write: read-only\n");
	} else {
		fill_pattern(wbuf, 8);
		s = blk_req(v, T_OUT, 0, wbuf, 4096, 0);
		puts("blk-write: ");
		if (s == S_OK)
			puts("ok\n");
		else {
			put_status(s);
			puts("\n");
			blk_fail("write");
		}
	}
	if (feat & F(BLK_F_FLUSH)) {
		s = blk_req(v, T_FLUSH, 0, NULL, 0, 0);
		puts("blk-flush: ");
		if (s == S_OK)
			puts("ok\n");
		else {
			put_status(s);
			puts("\n");
			blk_fail("flush");
		}
	} else {
		puts("blk-flush: not offered\n");
	}
	if (!(feat & F(BLK_F_RO))) {
		memset(rbuf, 0x55, sizeof(rbuf));
		s = blk_req(v, T_IN, 0, rbuf, 4096, 0);
		puts("blk-readback: ");
		if (s != S_OK) {
			put_status(s);
			puts("\n");
			blk_fail("readback");
		} else {
			u32 bad = first_diff(rbuf, wbuf, 4096);
			if (bad == 4096) {
				puts("ok\n");
			} else {
				puts("mismatch at sector ");
				put_dec(bad / 512);
				puts(" byte ");
				put_dec(bad % 512);
				puts(" got ");
				put_hex(rbuf[bad]);
				puts(" want ");
				put_hex(wbuf[bad]);
				puts("\n");
				blk_fail("readback mismatch");
			}
		}
	}

	/* GET_ID has no feature bit; a device may answer UNSUPP. */
	memset(idbuf, 0, sizeof(idbuf));
	s = blk_req(v, T_GET_ID, 0, idbuf, sizeof(idbuf), 0);
	puts("blk-id: ");
	if (s == S_OK) {
		for (u32 i = 0; i < sizeof(idbuf) && idbuf[i]; i++)
			putc(idbuf[i] >= 0x20 && idbuf[i] < 0x7f ? idbuf[i] : '?');
		puts("\n");
	} else {
		put_status(s);
		puts("\n");
		if (s < 0)
			blk_fail("get_id");
	}

	/* DISCARD sectors 8..15, then read them. */
	puts("blk-discard: ");
	if (!(feat & F(BLK_F_DISCARD))) {
		puts("not offered\n");
	} else if (max_discard < 8 || (discard_align && 8 % discard_align)) {
		puts("skipped (limits)\n");
	} else {
		dwz.sector = 8;
		dwz.num_sectors = 8;
		dwz.flags = 0;	/* the unmap flag is for WRITE_ZEROES only */
		s = blk_req(v, T_DISCARD, 0, &dwz, sizeof(dwz), 0);
		if (s == S_OK) {
			puts("ok\n");
			memset(rbuf, 0x55, sizeof(rbuf));
			s = blk_req(v, T_IN, 8, rbuf, 4096, 0);
			puts("blk-discard-read: ");
			if (s == S_OK)
				puts(all_zero(rbuf, 4096) ? "zeroes\n" : "data\n");
			else {
				put_status(s);
				puts("\n");
				blk_fail("read after discard");
			}
		} else {
			put_status(s);
			puts("\n");
			blk_fail("discard");
		}
	}

	/* WRITE_ZEROES sectors 16..23: must read back as zeroes. */
	puts("blk-write-zeroes: ");
	if (!(feat & F(BLK_F_WRITE_ZEROES)) || (feat & F(BLK_F_RO))) {
		puts("not offered\n");
	} else if (max_wz < 8) {
		puts("skipped (limits)\n");
	} else {
		dwz.sector = 16;
		dwz.num_sectors = 8;
		dwz.flags = 0;
		s = blk_req(v, T_WRITE_ZEROES, 0, &dwz, sizeof(dwz), 0);
		if (s == S_OK) {
			memset(rbuf, 0x55, sizeof(rbuf));
			s = blk_req(v, T_IN, 16, rbuf, 4096, 0);
			if (s == S_OK && all_zero(rbuf, 4096)) {
				puts("ok\n");
			} else {
				puts("not zero after read\n");
				blk_fail("write zeroes");
			}
		} else {
			put_status(s);
			puts("\n");
			blk_fail("write zeroes");
		}
	}

	/* An IN of sectors 0..1 through one indirect descriptor whose table holds the
	 * header, two 512-byte data buffers and the status. */
	puts("blk-indirect: ");
	if (!(feat & F(F_INDIRECT_DESC))) {
		puts("not offered\n");
	} else {
		memset(rbuf, 0x55, sizeof(rbuf));
		s = blk_req(v, T_IN, 0, rbuf, 1024, 1);
		u8 *want = (feat & F(BLK_F_RO)) ? NULL : wbuf;
		if (s != S_OK) {
			put_status(s);
			puts("\n");
			blk_fail("indirect read");
		} else if (want && first_diff(rbuf, want, 1024) != 1024) {
			puts("mismatch\n");
			blk_fail("indirect read mismatch");
		} else {
			puts("ok\n");
		}
	}

	/* A read past the end must not succeed. */
	s = blk_req(v, T_IN, capacity, rbuf, 512, 0);
	puts("blk-bounds: ");
	put_status(s);
	puts("\n");
	if (s == S_OK)
		blk_fail("read past the end succeeded");

	if (v->irq != IRQ_POLL) {
		timer_stop();
		puts("blk-irqs: ");
		put_dec(blk_irqs);
		puts(" config=");
		put_dec(blk_cfg_irqs);
		puts(" other=");
		put_dec(blk_isr_other);
		puts("\n");
	}
	st_set(v, 0);	/* reset: the device stops using our memory */
	if (v->irq == IRQ_INTX && v->gsi >= 0)
		ioapic_mask_gsi((u32)v->gsi);
}

/* ---- virtio over PCI ---- */

static void put_loc(const char *name, u8 bar, u32 off)
{
	puts(name);
	puts("=bar");
	put_dec(bar);
	puts("+");
	put_hex(off);
}

static int find_pci(struct vdev *v)
{
	struct pci_dev *d = NULL;
	for (u32 i = 0; i < pci_ndevs && !d; i++)
		if (pci_devs[i].vendor == 0x1af4 &&
		    (pci_devs[i].device == 0x1042 || pci_devs[i].device == 0x1001))
			d = &pci_devs[i];
	if (!d) {
		blk_fail("no virtio-blk PCI device");
		return -1;
	}
	v->pci = d;
	puts("blk-transport: pci ");
	pci_put_bdf(d);
	putc(' ');
	put_hexn(d->vendor, 4);
	putc(':');
	put_hexn(d->device, 4);
	puts("\n");
	if (pci_enable_device(d) < 0) {
		blk_fail("BAR assignment");
		return -1;
	}

	u8 found = 0;
	puts("virtio-pci:");
	for (u8 p = pci_find_cap(d, 0x09, 0); p; p = pci_find_cap(d, 0x09, p)) {
		u8 type = pci_rd8(d, p + 3), bar = pci_rd8(d, p + 4);
		u32 off = pci_rd32(d, p + 8), len = pci_rd32(d, p + 12);
		if (type < 1 || type > 4 || (found & (1 << type)))
			continue;	/* PCI cfg access (5), shared memory, or a second one */
		if (bar > 5 || d->bar[bar].type == BAR_NONE || d->bar[bar].type == BAR_IO ||
		    (u64)off + len > d->bar[bar].size)
			continue;	/* only memory BARs; skip what does not fit */
		u64 a = d->bar[bar].addr + off;
		found |= 1 << type;
		switch (type) {
		case 1:
			v->common = a;
			put_loc(" common", bar, off);
			break;
		case 2:
			v->notify_base = a;
			v->notify_mult = pci_rd32(d, p + 16);
			put_loc(" notify", bar, off);
			puts(" mult=");
			put_dec(v->notify_mult);
			break;
		case 3:
			v->isr = a;
			put_loc(" isr", bar, off);
			break;
		case 4:
			v->devcfg = a;
			put_loc(" device", bar, off);
			break;
		}
	}
	puts("\n");
	if ((found & 0x1e) != 0x1e) {
		blk_fail("missing virtio PCI capabilities");
		return -1;
	}
	return 0;
}

/* ---- virtio-mmio ---- */

static int find_mmio(struct vdev *v)
{
	static const char key[] = "virtio_mmio.device=";
	const u32 klen = sizeof(key) - 1;
	const char *s = cmdline;
	int found = 0, legacy = 0;
	while (*s) {
		u32 len;
		const char *t = next_token(&s, &len);
		if (len <= klen || memcmp(t, key, klen))
			continue;
		/* <size>@<baseaddr>:<irq>[:<id>] as Linux's vm_cmdline_set() */
		const char *p = t + klen, *end = t + len;
		u64 size, base, irq;
		u32 n = parse_num(p, end - p, 1, &size);
		if (!n || p + n >= end || p[n] != '@')
			goto bad;
		p += n + 1;
		n = parse_num(p, end - p, 0, &base);
		if (!n || p + n >= end || p[n] != ':')
			goto bad;
		p += n + 1;
		n = parse_num(p, end - p, 0, &irq);
		if (!n)
			goto bad;
		puts("mmio: base=");
		put_hex(base);
		puts(" size=");
		put_hex(size);
		puts(" irq=");
		put_dec(irq);
		if (base + 0x100 > 0x100000000UL || size < 0x100) {
			puts(" unusable\n");
			continue;
		}
		u32 magic = rd32(base + MM_MAGIC);
		if (magic != MMIO_MAGIC) {
			puts(" magic=");
			put_hex8(magic);
			puts(" bad\n");
			continue;
		}
		u32 version = rd32(base + MM_VERSION), id = rd32(base + MM_DEVICE_ID);
		puts(" version=");
		put_dec(version);
		puts(" device=");
		put_dec(id);
		puts(" vendor=");
		put_hex8(rd32(base + MM_VENDOR_ID));
		puts("\n");
		if (id == 2 && version == 1)
			legacy = 1;
		if (id == 2 && version == 2 && !found) {
			v->mmio = 1;
			v->base = base;
			v->mmio_irq = (u32)irq;
			found = 1;
		}
		continue;
bad:
		puts("mmio: cannot parse ");
		for (const char *q = t; q < end; q++)
			putc(*q);
		puts("\n");
	}
	if (!found) {
		blk_fail(legacy ? "virtio-mmio block device is version 1 (legacy)"
				: "no virtio-mmio block device");
		return -1;
	}
	puts("blk-transport: mmio ");
	put_hex(v->base);
	puts(" irq=");
	put_dec(v->mmio_irq);
	puts("\n");
	return 0;
}

void blk_report(void)
{
	struct vdev *v = &vdev;
	memset(v, 0, sizeof(*v));
	v->irq = opts.msix ? IRQ_MSIX : opts.intx ? IRQ_INTX : IRQ_POLL;
	if (opts.mmio && v->irq == IRQ_MSIX) {
		blk_fail("msix needs PCI");
	} else if (opts.mmio ? find_mmio(v) == 0 : find_pci(v) == 0) {
		run_sequence(v);
	}
	puts("blk-result: ");
	if (blk_err) {
		puts("fail ");
		puts(blk_err);
	} else {
		puts("ok");
	}
	puts("\n");
}
