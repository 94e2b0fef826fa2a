/*
 * virtio-balloon (spec 5.5), the traditional memory balloon, over PCI or virtio-mmio
 * (`mmio`), with the transports of virtio.c (token `balloon`).
 *
 * The probe gives back `balloon-pages=N` 4 KiB pages (default 1024, 4 MiB) of RAM it
 * does not otherwise use: the first N pages at or above 64 MiB in one e820 RAM entry,
 * clear of the probe image and the initrd. It writes every page first, so the host has
 * them resident, and reports `balloon-ready`. Then it waits (at most `balloon-wait=S`
 * seconds, default 10, polling the configuration at each 10 ms timer tick or
 * configuration interrupt) until the host's num_pages is at least N, inflates exactly
 * N PFNs (256 per buffer), sets `actual`, and waits again until num_pages is 0, when it
 * deflates them all, clears `actual` and uses the pages again. With STATS_VQ it posts a
 * statistics buffer at the start and a fresh one each time the device returns it.
 *
 * See README.md for the report lines.
 */
#include "virtio.h"

#define BAL_F_MUST_TELL_HOST 0
#define BAL_F_STATS_VQ 1
#define BAL_F_DEFLATE_ON_OOM 2
#define BAL_F_FREE_PAGE_HINT 3
#define BAL_F_PAGE_POISON 4
#define BAL_F_PAGE_REPORTING 5

#define BAL_CFG_NUM_PAGES 0
#define BAL_CFG_ACTUAL 4

#define BAL_BATCH 256		/* PFNs per inflate or deflate buffer (as Linux) */
#define BAL_AREA_MIN (64UL << 20)
#define BAL_MAX_PAGES (256UL << 10)	/* 1 GiB */

/* Statistics tags (5.5.6.3) */
#define S_SWAP_IN 0
#define S_SWAP_OUT 1
#define S_MAJFLT 2
#define S_MINFLT 3
#define S_MEMFREE 4
#define S_MEMTOT 5
#define S_AVAIL 6
#define BAL_NSTATS 7

struct bal_stat {
	u16 tag;
	u64 val;
} __attribute__((packed));
_Static_assert(sizeof(struct bal_stat) == 10, "virtio_balloon_stat is 10 bytes");

static struct vring_page bal_rings[3] NOINIT;
static u32 bal_pfns[BAL_BATCH] NOINIT __attribute__((aligned(64)));
static struct bal_stat bal_stats[BAL_NSTATS] __attribute__((aligned(16)));

extern u8 _end[];

static struct {
	struct vdev dev;
	struct vq infq, defq, statq;
	int stats;		/* STATS_VQ negotiated */
	u64 area;		/* first page */
	u32 pages;		/* N */
	u32 held;		/* pages in the balloon (what `actual` says) */
	u32 stats_sent, stats_requests;
} bal;

static u64 pattern(u64 pfn) { return 0x5256424cUL << 32 | (pfn & 0xffffffffUL) | 1; }

static void bal_names(u64 f)
{
	static const char *const names[] = { " must-tell-host", " stats-vq", " deflate-on-oom", " free-page-hint",
					     " page-poison", " page-reporting" };
	for (u32 b = 0; b < 6; b++)
		if (f & F(b))
			puts(names[b]);
	if (f & F(F_VERSION_1))
		puts(" version-1");
}

static u64 cfg_addr(u32 off) { return (bal.dev.mmio ? bal.dev.base + 0x100 : bal.dev.devcfg) + off; }

static u32 num_pages(void) { return (u32)vdev_cfg_read(&bal.dev, BAL_CFG_NUM_PAGES, 0); }

static int set_actual(u32 n)
{
	wr32(cfg_addr(BAL_CFG_ACTUAL), n);
	u32 back = (u32)vdev_cfg_read(&bal.dev, BAL_CFG_ACTUAL, 0);
	if (back != n) {
		vdev_fail(&bal.dev, "actual does not read back");
		return -1;
	}
	return 0;
}

/* ---- statistics ---- */

static void stats_fill(void)
{
	u64 total = probe_ram_total();
	u64 image = (u64)_end - 0x100000UL;
	/* Pages we hold (N less those in the balloon) are in use, like the image. */
	u64 used = image + (u64)(bal.pages - bal.held) * 4096;
	u64 free = total > used ? total - used : 0;
	static const u16 tags[BAL_NSTATS] = { S_SWAP_IN, S_SWAP_OUT, S_MAJFLT, S_MINFLT, S_MEMFREE, S_MEMTOT, S_AVAIL };
	for (u32 i = 0; i < BAL_NSTATS; i++) {
		bal_stats[i].tag = tags[i];
		bal_stats[i].val = tags[i] == S_MEMFREE || tags[i] == S_AVAIL ? free : tags[i] == S_MEMTOT ? total : 0;
	}
}

/* Posts the stats buffer (descriptor 0 of the stats queue, device-readable). */
static void stats_post(void)
{
	stats_fill();
	bal.statq.desc[0].addr = (u64)bal_stats;
	bal.statq.desc[0].len = sizeof(bal_stats);
	bal.statq.desc[0].flags = 0;
	bal.statq.desc[0].next = 0;
	vq_publish(&bal.statq, 0);
	vq_kick(&bal.dev, &bal.statq);
	bal.stats_sent++;
}

/* The device returns the stats buffer when it wants fresh statistics: answer it. */
static void stats_service(void)
{
	if (!bal.stats)
		return;
	u32 len;
	int id;
	while ((id = vq_pop(&bal.statq, &len)) >= 0) {
		if (id != 0) {
			vdev_fail(&bal.dev, "bad used element on the stats queue");
			continue;
		}
		bal.stats_requests++;
		stats_post();
	}
}

/* ---- waiting for the host ---- */

/* Waits until the host's num_pages satisfies `ok` (at least N, or 0): checked at every
 * wake-up (10 ms timer tick or interrupt). Returns the last value, and sets *timeout. */
static u32 wait_target(int want_zero, int *timeout)
{
	u32 secs = opts.balloon_wait ? opts.balloon_wait : 10;
	u64 t0 = rdtsc(), tick0 = ticks;
	*timeout = 0;
	for (;;) {
		stats_service();
		u32 n = num_pages();
		if (want_zero ? n == 0 : n >= bal.pages)
			return n;
		if (ticks - tick0 > (u64)secs * 100 || rdtsc() - t0 > (u64)secs * 1000 * TSC_PER_MS) {
			*timeout = 1;
			return n;
		}
		wait_irq();
	}
}

/* Gives the PFNs of pages [0, N) to the inflate or deflate queue, 256 per buffer. */
static int send_pfns(struct vq *q)
{
	for (u32 first = 0; first < bal.pages; first += BAL_BATCH) {
		u32 n = bal.pages - first < BAL_BATCH ? bal.pages - first : BAL_BATCH;
		for (u32 i = 0; i < n; i++)
			bal_pfns[i] = (u32)((bal.area >> 12) + first + i);
		struct seg s = { bal_pfns, n * 4, 0 };
		if (vq_run(&bal.dev, q, &s, 1, NULL) < 0)
			return -1;
		stats_service();
	}
	return 0;
}

static void put_pages(const char *key, u32 n)
{
	puts(key);
	put_dec(n);
	puts("\n");
}

void balloon_report(void)
{
	struct vdev *v = &bal.dev;
	memset(&bal, 0, sizeof(bal));
	v->name = "balloon";
	for (u32 e = 0; e < 4; e++)
		v->vec[e] = VEC_BALLOON + e;
	v->quiet_scan = 1;
	v->irq = opts.msix ? IRQ_MSIX : opts.intx ? IRQ_INTX : IRQ_POLL;
	if (opts.mmio && v->irq == IRQ_MSIX) {
		vdev_fail(v, "msix needs PCI");
		goto out;
	}
	if (opts.mmio ? vdev_find_mmio(v, 5, "balloon device") < 0
		      : vdev_find_pci(v, 0x1045, 0x1002, "virtio-balloon") < 0)
		goto out;
	/* MUST_TELL_HOST is kept by construction: pages are deflated before they are used
	 * again. DEFLATE_ON_OOM, free page hinting, poisoning and reporting are not used. */
	u64 feat = vdev_negotiate(v, F(BAL_F_MUST_TELL_HOST) | F(BAL_F_STATS_VQ) | F(F_ACCESS_PLATFORM), bal_names);
	if (!feat)
		goto out;
	bal.stats = (feat & F(BAL_F_STATS_VQ)) != 0;
	u32 nq = bal.stats ? 3 : 2;
	vdev_irq_prepare(v);
	if (v->irq == IRQ_MSIX && vdev_setup_msix(v, 1 + nq) < 0)
		goto stop;
	if (v->irq == IRQ_INTX && vdev_setup_intx(v) < 0)
		goto stop;
	if (v->irq == IRQ_POLL) {
		put_key(v, "-irq: poll\n");
		pic_mask_all();	/* the timer below wakes the waits */
		lapic_wr(0x80, 0);
	}
	puts("balloon-config: num_pages=");
	put_dec(num_pages());
	puts(" actual=");
	put_dec((u32)vdev_cfg_read(v, BAL_CFG_ACTUAL, 0));
	puts("\n");
	if (vq_setup(v, &bal.infq, 0, &bal_rings[0], VQ_MAX, 1) < 0 ||
	    vq_setup(v, &bal.defq, 1, &bal_rings[1], VQ_MAX, 1) < 0 ||
	    (bal.stats && vq_setup(v, &bal.statq, 2, &bal_rings[2], VQ_MAX, 1) < 0))
		goto stop;
	if (vdev_driver_ok(v) < 0)
		goto stop;
	timer_start();

	/* The pages: N of our own, in one RAM entry. */
	bal.pages = opts.balloon_pages;
	if (!bal.pages || bal.pages > BAL_MAX_PAGES) {
		vdev_fail(v, "balloon-pages out of range (1 to 262144)");
		goto end;
	}
	bal.area = probe_find_ram(BAL_AREA_MIN, (u64)bal.pages * 4096);
	puts("balloon-area: ");
	put_hex(bal.area);
	puts(" pages=");
	put_dec(bal.pages);
	puts("\n");
	if (!bal.area) {
		vdev_fail(v, "no free RAM for the pages");
		goto end;
	}
	if (bal.stats) {
		stats_post();
		puts("balloon-stats-posted: tags=7\n");
	}

	/* Make every page resident on the host, and check it holds what we wrote. */
	u32 bad = 0;
	for (u32 i = 0; i < bal.pages; i++) {
		u64 p = bal.area + (u64)i * 4096, pfn = p >> 12;
		*(volatile u64 *)p = pattern(pfn);
		*(volatile u64 *)(p + 4088) = ~pattern(pfn);
	}
	for (u32 i = 0; i < bal.pages; i++) {
		u64 p = bal.area + (u64)i * 4096, pfn = p >> 12;
		if (rd64(p) != pattern(pfn) || rd64(p + 4088) != ~pattern(pfn))
			bad++;
	}
	put_pages("balloon-ready: pages=", bal.pages);
	if (bad) {
		vdev_fail(v, "the pages do not hold what was written");
		goto end;
	}

	/* Inflate once the host asks for at least N pages. */
	int timeout;
	u32 target = wait_target(0, &timeout);
	put_pages("balloon-target: ", target);
	if (timeout) {
		vdev_fail(v, "timeout waiting for num_pages >= balloon-pages");
		goto end;
	}
	if (send_pfns(&bal.infq) < 0)
		goto end;
	bal.held = bal.pages;
	if (set_actual(bal.held) < 0)
		goto end;
	put_pages("balloon-inflated: ", bal.pages);

	/* The pages are the host's now: not touched until deflated. */
	target = wait_target(1, &timeout);
	put_pages("balloon-target: ", target);
	if (timeout) {
		vdev_fail(v, "timeout waiting for num_pages 0");
		goto end;
	}
	if (send_pfns(&bal.defq) < 0)
		goto end;
	bal.held = 0;
	if (set_actual(0) < 0)
		goto end;
	put_pages("balloon-deflated: ", bal.pages);

	/* Use them again: what they hold now (the device may have dropped them: zeros). */
	u32 zero = 0, kept = 0, other = 0;
	for (u32 i = 0; i < bal.pages; i++) {
		u64 p = bal.area + (u64)i * 4096, pfn = p >> 12;
		u64 a = rd64(p), b = rd64(p + 4088);
		if (!a && !b)
			zero++;
		else if (a == pattern(pfn) && b == ~pattern(pfn))
			kept++;
		else
			other++;
		*(volatile u64 *)p = ~pattern(pfn);
		if (rd64(p) != ~pattern(pfn))
			bad++;
	}
	puts("balloon-reuse: zero=");
	put_dec(zero);
	puts(" kept=");
	put_dec(kept);
	puts(" other=");
	put_dec(other);
	puts("\n");
	if (bad)
		vdev_fail(v, "a deflated page does not hold what was written");
end:
	stats_service();
	if (bal.stats) {
		puts("balloon-stats: sent=");
		put_dec(bal.stats_sent);
		puts(" requests=");
		put_dec(bal.stats_requests);
		puts("\n");
	}
	timer_stop();
	if (v->irq != IRQ_POLL) {
		vdev_put_irqs(v);
		if (!v->err && !v->irqs)
			vdev_fail(v, "no queue interrupts");
	}
stop:
	vdev_stop(v);
out:
	vdev_put_result(v);
}
