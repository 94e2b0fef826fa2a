/*
 * Two small virtio 1.x drivers over PCI or virtio-mmio (`mmio`), with the transports of
 * virtio.c:
 *
 * - `rng` (virtio-rng, spec 5.4): one 64-byte device-writable buffer on the request
 *   queue; reports how many bytes came and how many distinct values they hold.
 * - `console` (virtio-console, spec 5.3), a single port (no MULTIPORT): writes a line
 *   to transmitq (queue 1) and, with `vcon-rx=N`, waits for N bytes on receiveq
 *   (queue 0). With VIRTIO_CONSOLE_F_SIZE it also writes `vcon-size: cols=C rows=R` to
 *   transmitq, so a host that only sees the console's output can check the size.
 *
 * See README.md for the report lines.
 */
#include "virtio.h"

static void put_escaped(const u8 *p, u32 n)
{
	static const char hex[] = "0123456789abcdef";
	for (u32 i = 0; i < n; i++) {
		u8 c = p[i];
		if (c >= 0x20 && c < 0x7f && c != '\\') {
			putc(c);
		} else {
			puts("\\x");
			putc(hex[c >> 4]);
			putc(hex[c & 15]);
		}
	}
}

/* Finds the device, negotiates `want` and sets up interrupts. Returns the accepted
 * features, or 0 after a failure. */
static u64 common_start(struct vdev *v, u32 mmio_id, u16 pci_id, u16 pci_legacy_id, const char *pci_what,
			const char *mmio_what, u64 want, u32 nqueues)
{
	v->quiet_scan = 1;
	v->irq = opts.msix ? IRQ_MSIX : opts.intx ? IRQ_INTX : IRQ_POLL;
	if (opts.mmio && v->irq == IRQ_MSIX) {
		vdev_fail(v, "msix needs PCI");
		return 0;
	}
	if (opts.mmio ? vdev_find_mmio(v, mmio_id, mmio_what) < 0
		      : vdev_find_pci(v, pci_id, pci_legacy_id, pci_what) < 0)
		return 0;
	u64 feat = vdev_negotiate(v, want, NULL);
	if (!feat)
		return 0;
	vdev_irq_prepare(v);
	if (v->irq == IRQ_MSIX && vdev_setup_msix(v, 1 + nqueues) < 0)
		return 0;
	if (v->irq == IRQ_INTX && vdev_setup_intx(v) < 0)
		return 0;
	if (v->irq == IRQ_POLL) {
		put_key(v, "-irq: poll\n");
	}
	return feat;
}

static void common_end(struct vdev *v)
{
	if (v->irq != IRQ_POLL) {
		timer_stop();
		vdev_put_irqs(v);
		if (!v->err && !v->irqs)
			vdev_fail(v, "no queue interrupts");
	}
	vdev_stop(v);
}

/* ---- virtio-rng ---- */

#define RNG_BYTES 64

static struct vring_page rng_ring NOINIT;
static u8 rng_buf[RNG_BYTES] __attribute__((aligned(64)));

void rng_report(void)
{
	static struct vdev dev;
	static struct vq q;
	struct vdev *v = &dev;
	memset(v, 0, sizeof(*v));
	v->name = "rng";
	v->vec[0] = VEC_RNG;
	v->vec[1] = VEC_RNG + 1;
	if (!common_start(v, 4, 0x1044, 0x1005, "virtio-rng", "entropy device", F(F_ACCESS_PLATFORM), 1))
		goto out;
	if (vq_setup(v, &q, 0, &rng_ring, VQ_MAX, 0) < 0 || vdev_driver_ok(v) < 0) {
		vdev_stop(v);
	} else {
		if (v->irq != IRQ_POLL)
			timer_start();
		memset(rng_buf, 0, sizeof(rng_buf));
		struct seg s = { rng_buf, RNG_BYTES, 1 };
		i64 n = vq_run(v, &q, &s, 1, NULL);
		if (n >= 0) {
			u64 seen[4] = { 0, 0, 0, 0 };
			u32 distinct = 0;
			u32 got = n > RNG_BYTES ? RNG_BYTES : (u32)n;
			for (u32 i = 0; i < got; i++) {
				u8 b = rng_buf[i];
				if (!(seen[b >> 6] & (1UL << (b & 63)))) {
					seen[b >> 6] |= 1UL << (b & 63);
					distinct++;
				}
			}
			puts("rng: bytes=");
			put_dec((u64)n);
			puts(" distinct=");
			put_dec(distinct);
			puts("\n");
			if (n > RNG_BYTES)
				vdev_fail(v, "used length larger than the buffer");
			else if (n < 16)
				vdev_fail(v, "fewer than 16 bytes");
			else if (distinct < 2)
				vdev_fail(v, "all bytes equal");
		}
		common_end(v);
	}
out:
	vdev_put_result(v);
}

/* ---- virtio-console ---- */

#define CONSOLE_F_SIZE 0
#define CONSOLE_F_MULTIPORT 1
#define VCON_NRX 4
#define VCON_RXBUF 64
#define VCON_RX_MAX 256

static struct vring_page vcon_rings[2] NOINIT;
static u8 vcon_rxbufs[VCON_NRX][VCON_RXBUF] __attribute__((aligned(64)));
static u8 vcon_txbuf[64] __attribute__((aligned(64)));
static u8 vcon_got[VCON_RX_MAX];

/* Appends the decimal digits of `v` at `p`; returns the end. */
static u8 *fmt_dec(u8 *p, u32 v)
{
	char d[10];
	u32 n = 0;
	do {
		d[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*p++ = (u8)d[--n];
	return p;
}

static u8 *fmt_str(u8 *p, const char *s)
{
	while (*s)
		*p++ = (u8)*s++;
	return p;
}

void vcon_report(void)
{
	static const char hello[] = "rvmm virtio-console hello\n";
	static struct vdev dev;
	static struct vq rxq, txq;
	struct vdev *v = &dev;
	memset(v, 0, sizeof(*v));
	v->name = "vcon";
	for (u32 e = 0; e < 4; e++)
		v->vec[e] = VEC_VCON + e;
	u64 feat = common_start(v, 3, 0x1043, 0x1003, "virtio-console", "console device",
				F(F_ACCESS_PLATFORM) | F(CONSOLE_F_SIZE), 2);
	if (!feat)
		goto out;
	u16 cols = 0, rows = 0;
	if (feat & F(CONSOLE_F_SIZE)) {
		cols = vdev_cfg16(v, 0);
		rows = vdev_cfg16(v, 2);
		puts("vcon-config: cols=");
		put_dec(cols);
		puts(" rows=");
		put_dec(rows);
		puts("\n");
	}
	if (vq_setup(v, &rxq, 0, &vcon_rings[0], VQ_MAX, 1) < 0 ||
	    vq_setup(v, &txq, 1, &vcon_rings[1], VQ_MAX, 1) < 0)
		goto stop;
	u32 want = opts.vcon_rx > VCON_RX_MAX ? VCON_RX_MAX : opts.vcon_rx;
	u32 nrx = rxq.size < VCON_NRX ? rxq.size : VCON_NRX;
	if (want) {
		for (u16 i = 0; i < nrx; i++) {
			rxq.desc[i].addr = (u64)vcon_rxbufs[i];
			rxq.desc[i].len = VCON_RXBUF;
			rxq.desc[i].flags = DESC_F_WRITE;
			rxq.desc[i].next = 0;
			vq_publish(&rxq, i);
		}
	}
	if (vdev_driver_ok(v) < 0)
		goto stop;
	if (v->irq != IRQ_POLL)
		timer_start();
	if (want)
		vq_kick(v, &rxq);

	u32 hlen = sizeof(hello) - 1;
	memcpy(vcon_txbuf, hello, hlen);
	struct seg s = { vcon_txbuf, hlen, 0 };
	i64 r = vq_run(v, &txq, &s, 1, NULL);
	if (r >= 0 && (feat & F(CONSOLE_F_SIZE))) {
		/* The size on the console itself, for a host that sees only its output. */
		u8 *p = fmt_dec(fmt_str(vcon_txbuf, "vcon-size: cols="), cols);
		p = fmt_dec(fmt_str(p, " rows="), rows);
		*p++ = '\n';
		s.len = (u32)(p - vcon_txbuf);
		r = vq_run(v, &txq, &s, 1, NULL);
	}
	puts("vcon-tx: ");
	puts(r >= 0 ? "ok\n" : "fail\n");

	if (want) {
		u32 got = 0;
		u64 t0 = rdtsc(), tick0 = ticks;
		int timeout = 0;
		u32 irqs_seen = 0;
		while (got < want) {
			u32 len;
			int id;
			int any = 0;
			/* With interrupts, look at the ring only after one came. */
			int look = v->irq == IRQ_POLL || v->irqs != irqs_seen;
			irqs_seen = v->irqs;
			while (look && (id = vq_pop(&rxq, &len)) >= 0) {
				any = 1;
				if ((u32)id >= nrx || len > VCON_RXBUF) {
					vdev_fail(v, "bad used element on receiveq");
					continue;
				}
				for (u32 i = 0; i < len && got < VCON_RX_MAX; i++)
					vcon_got[got++] = vcon_rxbufs[id][i];
				vq_publish(&rxq, (u16)id);
			}
			if (any)
				vq_kick(v, &rxq);
			if (got >= want)
				break;
			if (rdtsc() - t0 > 5000 * TSC_PER_MS || ticks - tick0 > 500) {
				timeout = 1;
				break;
			}
			vdev_idle(v);
		}
		puts("vcon-rx: ");
		put_escaped(vcon_got, got);
		puts("\n");
		if (timeout)
			vdev_fail(v, "receiveq timeout");
	}
	common_end(v);
	goto out;
stop:
	vdev_stop(v);
out:
	vdev_put_result(v);
}
