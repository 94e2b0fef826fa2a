/*
 * A small virtio 1.x block driver (token `blk`): virtio over PCI (spec 4.1, modern
 * interface through the vendor capabilities) or virtio-mmio version 2 (spec 4.2, token
 * `mmio`, devices from `virtio_mmio.device=<size>@<base>:<irq>` on the command line).
 *
 * One request queue (split ring), one request in flight. Completion is found by
 * polling the used ring (default), or by waiting with `sti; hlt` for an MSI-X interrupt
 * (token `msix`) or the INTx line / virtio-mmio IRQ through the IOAPIC (token `intx`).
 * Every wait is bounded. The transports and the virtqueue are in virtio.c. See README.md
 * for the report lines.
 */
#include "virtio.h"

/* Feature bits (5.2.3) */
#define BLK_F_RO 5
#define BLK_F_BLK_SIZE 6
#define BLK_F_FLUSH 9
#define BLK_F_DISCARD 13
#define BLK_F_WRITE_ZEROES 14

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

static struct vring_page ring;
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

static struct vdev vdev;
static struct vq vq;

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
	if (vq_run(v, &vq, s, n, indirect_split ? ind_table : NULL) < 0)
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

static void run_sequence(struct vdev *v)
{
	u64 offered = vdev_start(v);
	if (v->err)
		return;
	puts("blk-features: ");
	put_feat(offered);
	puts("\n");
	if (!(offered & F(F_VERSION_1))) {
		vdev_set_status(v, ST_FAILED);
		vdev_fail(v, "VIRTIO_F_VERSION_1 not offered");
		return;
	}
	u64 want = F(F_VERSION_1) | F(F_ACCESS_PLATFORM) | F(F_INDIRECT_DESC) | F(BLK_F_RO) |
		   F(BLK_F_BLK_SIZE) | F(BLK_F_FLUSH) | F(BLK_F_DISCARD) | F(BLK_F_WRITE_ZEROES);
	u64 feat = offered & want;
	vdev_write_features(v, feat);
	puts("blk-driver-features: ");
	put_feat(feat);
	puts("\n");
	if (!(vdev_status(v) & ST_FEATURES_OK)) {
		vdev_set_status(v, ST_FAILED);
		vdev_fail(v, "FEATURES_OK not kept");
		return;
	}

	u64 capacity = vdev_cfg_read(v, 0, 1);
	puts("blk-capacity: ");
	put_dec(capacity);
	puts("\n");
	u32 blk_size = feat & F(BLK_F_BLK_SIZE) ? (u32)vdev_cfg_read(v, 20, 0) : 512;
	u32 max_discard = 0, discard_align = 0, max_wz = 0;
	if (feat & F(BLK_F_DISCARD)) {
		max_discard = vdev_cfg_read(v, 36, 0);
		discard_align = vdev_cfg_read(v, 44, 0);
	}
	if (feat & F(BLK_F_WRITE_ZEROES))
		max_wz = vdev_cfg_read(v, 48, 0);
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
		vdev_set_status(v, ST_FAILED);
		vdev_fail(v, "disk smaller than 32 sectors");
		return;
	}

	vdev_irq_prepare(v);
	if (v->irq == IRQ_MSIX && vdev_setup_msix(v, 2) < 0)
		return;
	if (v->irq == IRQ_INTX && vdev_setup_intx(v) < 0)
		return;
	if (v->irq == IRQ_POLL)
		puts("blk-irq: poll\n");
	if (vq_setup(v, &vq, 0, &ring, VQ_MAX, 0) < 0)
		return;
	if (vdev_driver_ok(v) < 0)
		return;
	if (v->irq != IRQ_POLL)
		timer_start();	/* a wake-up for the bounded waits */

	int s;
	/* What the disk held before: proves reads come from the backing file. */
	memset(rbuf, 0x55, sizeof(rbuf));
	s = blk_req(v, T_IN, 0, rbuf, 4096, 0);
	if (s != S_OK) {
		vdev_fail(v, "initial read");
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
			vdev_fail(v, "write");
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
			vdev_fail(v, "flush");
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
			vdev_fail(v, "readback");
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
				vdev_fail(v, "readback mismatch");
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
			vdev_fail(v, "get_id");
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
				vdev_fail(v, "read after discard");
			}
		} else {
			put_status(s);
			puts("\n");
			vdev_fail(v, "discard");
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
				vdev_fail(v, "write zeroes");
			}
		} else {
			put_status(s);
			puts("\n");
			vdev_fail(v, "write zeroes");
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
			vdev_fail(v, "indirect read");
		} else if (want && first_diff(rbuf, want, 1024) != 1024) {
			puts("mismatch\n");
			vdev_fail(v, "indirect read mismatch");
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
		vdev_fail(v, "read past the end succeeded");

	if (v->irq != IRQ_POLL) {
		timer_stop();
		vdev_put_irqs(v);
	}
	vdev_stop(v);
}

void blk_report(void)
{
	struct vdev *v = &vdev;
	memset(v, 0, sizeof(*v));
	v->name = "blk";
	v->irq = opts.msix ? IRQ_MSIX : opts.intx ? IRQ_INTX : IRQ_POLL;
	v->vec[0] = VEC_BLK_CFG;
	v->vec[1] = VEC_BLK;
	if (opts.mmio && v->irq == IRQ_MSIX) {
		vdev_fail(v, "msix needs PCI");
	} else if (opts.mmio ? vdev_find_mmio(v, 2, "block device") == 0
			     : vdev_find_pci(v, 0x1042, 0x1001, "virtio-blk") == 0) {
		run_sequence(v);
	}
	vdev_put_result(v);
}
