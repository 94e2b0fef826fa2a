/*
 * `vpci-spec`: spec points of the virtio 1.x PCI transport (spec 4.1) where two VMMs
 * could read the text differently, checked on the first virtio-rng PCI function
 * (1af4:1044, or 1005) with the transport of virtio.c. One line per check,
 * "vpci-spec-<name>: ok" or "vpci-spec-<name>: fail <what was seen>", every check runs
 * whatever the others gave, then "vpci-spec-result: ok | fail N of M: <names>". Each
 * check leaves the device reset at the end, so `rng` can run after it.
 *
 * See README.md ("virtio-pci transport checks") for the list.
 */
#include "virtio.h"

/* virtio_pci_common_cfg (4.1.4.3), as in virtio.c */
#define CC_DFSELECT 0x00
#define CC_DF 0x04
#define CC_NUM_QUEUES 0x12
#define CC_STATUS 0x14
#define CC_GENERATION 0x15
#define CC_Q_SELECT 0x16
#define CC_Q_SIZE 0x18
#define CC_Q_MSIX 0x1a
#define CC_Q_ENABLE 0x1c
#define CC_Q_NOTIFY_OFF 0x1e
#define CC_Q_DESC 0x20

/* struct virtio_pci_cap / virtio_pci_cfg_cap (4.1.4, 4.1.4.9) */
#define CAP_CFG_TYPE 3
#define CAP_BAR 4
#define CAP_OFFSET 8
#define CAP_LENGTH 12
#define CAP_PCI_CFG_DATA 16

#define NO_VECTOR 0xffff
#define PCI_STATUS_INTERRUPT 0x08

static u32 n_checks, n_failed;
static char failed_names[160];
static u32 failed_len;

/* Starts the line "vpci-spec-<name>: ok" or "...: fail"; the caller adds what it saw
 * after a failure and ends the line with end_line(). */
static void check(const char *name, int ok)
{
	n_checks++;
	puts("vpci-spec-");
	puts(name);
	puts(ok ? ": ok" : ": fail");
	if (ok)
		return;
	n_failed++;
	if (failed_len && failed_len < sizeof(failed_names) - 1)
		failed_names[failed_len++] = ' ';
	for (const char *p = name; *p && failed_len < sizeof(failed_names) - 1; p++)
		failed_names[failed_len++] = *p;
	failed_names[failed_len] = 0;
}

static void end_line(void) { puts("\n"); }

/* " key=0x.." after a failure. */
static void seen(const char *key, u64 val)
{
	putc(' ');
	puts(key);
	putc('=');
	put_hex(val);
}

/* ---- the device ---- */

static struct vdev dev;
static u8 cfg_cap;		/* the VIRTIO_PCI_CAP_PCI_CFG capability, 0 if none */
static u8 common_bar;		/* where the common configuration is */
static u32 common_off;
static u32 notify_len;		/* cap.length of the notification capability */

static u64 cc(u32 off) { return dev.common + off; }

/* Reset; returns the first status read and sets *after to the last one (bounded wait). */
static u8 reset(u8 *after)
{
	vdev_set_status(&dev, 0);
	u8 first = vdev_status(&dev), st = first;
	for (u32 i = 0; i < 1000 && st != 0; i++) {
		cpu_relax();
		st = vdev_status(&dev);
	}
	*after = st;
	return first;
}

/* Reset, ACKNOWLEDGE, DRIVER, VERSION_1 only, FEATURES_OK. Returns the status read back. */
static u8 start(void)
{
	u8 st;
	reset(&st);
	vdev_set_status(&dev, ST_ACKNOWLEDGE);
	vdev_set_status(&dev, ST_ACKNOWLEDGE | ST_DRIVER);
	vdev_write_features(&dev, F(F_VERSION_1));
	return vdev_status(&dev);
}

/* Points the PCI_CFG window at `off` bytes into the common configuration. */
static void window(u32 off, u32 len)
{
	pci_wr8(dev.pci, cfg_cap + CAP_BAR, common_bar);
	pci_wr32(dev.pci, cfg_cap + CAP_OFFSET, common_off + off);
	pci_wr32(dev.pci, cfg_cap + CAP_LENGTH, len);
}

/* Finds the PCI_CFG capability, the common configuration's BAR and offset and the
 * notification capability's length (the same capabilities vdev_find_pci took). */
static void find_caps(void)
{
	struct pci_dev *d = dev.pci;
	int have_common = 0, have_notify = 0;
	for (u8 p = pci_find_cap(d, 0x09, 0); p; p = pci_find_cap(d, 0x09, p)) {
		u8 type = pci_rd8(d, p + CAP_CFG_TYPE), bar = pci_rd8(d, p + CAP_BAR);
		u32 off = pci_rd32(d, p + CAP_OFFSET), len = pci_rd32(d, p + CAP_LENGTH);
		if (type == 5 && !cfg_cap)
			cfg_cap = p;
		if ((type != 1 && type != 2) || bar > 5 || d->bar[bar].type == BAR_NONE ||
		    d->bar[bar].type == BAR_IO || (u64)off + len > d->bar[bar].size)
			continue;
		if (type == 1 && !have_common) {
			have_common = 1;
			common_bar = bar;
			common_off = off;
		} else if (type == 2 && !have_notify) {
			have_notify = 1;
			notify_len = len;
		}
	}
}

/* ---- 4.1.4.9: the PCI configuration access capability ---- */

static void pci_cfg_checks(void)
{
	struct pci_dev *d = dev.pci;
	u32 data = cfg_cap + CAP_PCI_CFG_DATA;
	int ok;

	/* 32-bit window on device_feature (both halves), against direct reads. */
	u32 direct[2], via[2];
	for (u32 sel = 0; sel < 2; sel++) {
		wr32(cc(CC_DFSELECT), sel);
		direct[sel] = rd32(cc(CC_DF));
		window(CC_DF, 4);
		via[sel] = pci_rd32(d, data);
	}
	ok = direct[0] == via[0] && direct[1] == via[1];
	check("pcicfg-read32", ok);
	if (!ok) {
		seen("bar0", direct[0]);
		seen("window0", via[0]);
		seen("bar1", direct[1]);
		seen("window1", via[1]);
	}
	end_line();

	/* A known dword with four different bytes: queue_desc (low half) of queue 0. */
	const u32 pat = 0x87654320;
	wr16(cc(CC_Q_SELECT), 0);
	wr32(cc(CC_Q_DESC), pat);
	u32 back = rd32(cc(CC_Q_DESC));
	window(CC_Q_DESC, 4);
	u16 w0 = pci_rd16(d, data), w2 = pci_rd16(d, data + 2);
	ok = back == pat && w0 == (u16)pat && w2 == (u16)(pat >> 16);
	check("pcicfg-read16", ok);
	if (!ok) {
		seen("bar", back);
		seen("at0", w0);
		seen("at2", w2);
	}
	end_line();

	u8 b[4];
	for (u32 i = 0; i < 4; i++)
		b[i] = pci_rd8(d, data + i);
	ok = 1;
	for (u32 i = 0; i < 4; i++)
		if (b[i] != (u8)(pat >> (8 * i)))
			ok = 0;
	check("pcicfg-read8", ok);
	if (!ok) {
		seen("at0", b[0]);
		seen("at1", b[1]);
		seen("at2", b[2]);
		seen("at3", b[3]);
	}
	end_line();
	wr32(cc(CC_Q_DESC), 0);

	/* cap.length 2: queue_size of queue 0; cap.length 1: device_status. */
	u16 qs = rd16(cc(CC_Q_SIZE));
	window(CC_Q_SIZE, 2);
	u16 qs_via = pci_rd16(d, data);
	ok = qs == qs_via;
	check("pcicfg-len2", ok);
	if (!ok) {
		seen("bar", qs);
		seen("window", qs_via);
	}
	end_line();

	u8 st = vdev_status(&dev);
	window(CC_STATUS, 1);
	u8 st_via = pci_rd8(d, data);
	ok = st == st_via;
	check("pcicfg-len1", ok);
	if (!ok) {
		seen("bar", st);
		seen("window", st_via);
	}
	end_line();

	/* Writes: device_feature_select with cap.length 4, queue_select with 2. */
	wr32(cc(CC_DFSELECT), 0);
	window(CC_DFSELECT, 4);
	pci_wr32(d, data, 1);
	u32 sel = rd32(cc(CC_DFSELECT)), df = rd32(cc(CC_DF));
	ok = sel == 1 && df == direct[1];
	check("pcicfg-write32", ok);
	if (!ok) {
		seen("device_feature_select", sel);
		seen("device_feature", df);
	}
	end_line();

	window(CC_Q_SELECT, 2);
	pci_wr16(d, data, 5);
	u16 qsel = rd16(cc(CC_Q_SELECT));
	ok = qsel == 5;
	check("pcicfg-write16", ok);
	if (!ok)
		seen("queue_select", qsel);
	end_line();
	wr16(cc(CC_Q_SELECT), 0);
	wr32(cc(CC_DFSELECT), 0);
	pci_wr32(d, cfg_cap + CAP_LENGTH, 0);
}

/* ---- the rest of 4.1.4.3-4.1.4.5 ---- */

static struct vring_page spec_ring NOINIT;
static u8 spec_buf[16] __attribute__((aligned(16)));

/* One 16-byte request on queue 0 (size `size`) with interrupts wanted, then the ISR. */
static void isr_checks(u16 size)
{
	static struct vq q;
	struct pci_dev *d = dev.pci;
	/* Whatever an earlier read left: start with a clear ISR. */
	(void)rd8(dev.isr);
	u8 idle = rd8(dev.isr);
	if (vq_setup(&dev, &q, 0, &spec_ring, size, 0) < 0 || vdev_driver_ok(&dev) < 0) {
		check("isr-read-clear", 0);
		puts(" queue setup or DRIVER_OK failed");
		end_line();
		return;
	}
	q.avail->flags = 0;	/* vq_setup asked for no interrupts (polling): want one here */
	mb();
	struct seg s = { spec_buf, sizeof(spec_buf), 1 };
	i64 n = vq_run(&dev, &q, &s, 1, NULL);
	if (n < 0) {
		check("isr-read-clear", 0);
		puts(" request failed");
		end_line();
		return;
	}
	/* The device sets the ISR (and the PCI status bit, MSI-X being off) before it
	 * notifies, but under TCG the used index may show before: wait a little. */
	u16 pst1 = 0;
	u64 t0 = rdtsc();
	while (!((pst1 = pci_rd16(d, 0x06)) & PCI_STATUS_INTERRUPT) && rdtsc() - t0 < 100 * TSC_PER_MS)
		cpu_relax();
	u8 isr1 = rd8(dev.isr);
	u16 pst2 = pci_rd16(d, 0x06);
	t0 = rdtsc();
	while (!isr1 && rdtsc() - t0 < 100 * TSC_PER_MS) {
		cpu_relax();
		isr1 = rd8(dev.isr);
	}
	u8 isr2 = rd8(dev.isr);
	int ok = idle == 0 && (isr1 & 1) && isr2 == 0;
	check("isr-read-clear", ok);
	if (!ok) {
		seen("before", idle);
		seen("first", isr1);
		seen("second", isr2);
	}
	end_line();
	ok = (pst1 & PCI_STATUS_INTERRUPT) && !(pst2 & PCI_STATUS_INTERRUPT);
	check("isr-pci-status", ok);
	if (!ok) {
		seen("status-before-isr-read", pst1);
		seen("status-after", pst2);
	}
	end_line();
}

void vpci_spec_report(void)
{
	struct vdev *v = &dev;
	memset(v, 0, sizeof(*v));
	v->name = "vpci";
	v->irq = IRQ_POLL;
	v->quiet_scan = 1;
	n_checks = n_failed = failed_len = 0;
	failed_names[0] = 0;
	cfg_cap = 0;
	if (vdev_find_pci(v, 0x1044, 0x1005, "virtio-rng") < 0)
		goto out;
	find_caps();

	/* 3: device_feature_select past the feature bits reads device_feature 0. */
	u8 st;
	reset(&st);
	vdev_set_status(v, ST_ACKNOWLEDGE);
	vdev_set_status(v, ST_ACKNOWLEDGE | ST_DRIVER);
	wr32(cc(CC_DFSELECT), 2);
	u32 df2 = rd32(cc(CC_DF));
	wr32(cc(CC_DFSELECT), 0xffffffff);
	u32 dfm = rd32(cc(CC_DF));
	wr32(cc(CC_DFSELECT), 0);
	int ok = df2 == 0 && dfm == 0;
	check("feature-select-high", ok);
	if (!ok) {
		seen("select2", df2);
		seen("select0xffffffff", dfm);
	}
	end_line();

	/* 2: DRIVER_OK with no queue enabled, then reset. */
	st = start();
	u8 st_ok = 0, st_reset = 0xff, st_reset_after = 0xff;
	if (st == (ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK)) {
		vdev_set_status(v, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
		st_ok = vdev_status(v);
		st_reset = reset(&st_reset_after);
	}
	ok = st_ok == 0x0f;
	check("driver-ok-no-queue", ok);
	if (!ok) {
		seen("features-ok-status", st);
		seen("status", st_ok);
	}
	end_line();
	ok = st_reset == 0;
	check("reset", ok);
	if (!ok) {
		seen("first-read", st_reset);
		seen("later", st_reset_after);
	}
	end_line();

	/* The rest on a device with FEATURES_OK, as a driver sets up its queues. */
	st = start();
	if (st != (ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK)) {
		check("features-ok", 0);
		seen("status", st);
		end_line();
		goto done;
	}

	/* 1: the PCI_CFG window. */
	check("pcicfg-cap", cfg_cap != 0);
	end_line();
	if (cfg_cap)
		pci_cfg_checks();

	/* 4: a queue past num_queues is unavailable: queue_size 0, no MSI-X vector. */
	u16 nq = rd16(cc(CC_NUM_QUEUES));
	ok = 1;
	u16 bad_sel = 0, bad_size = 0, bad_vec = 0;
	for (u16 qi = nq; qi < nq + 2; qi++) {
		wr16(cc(CC_Q_SELECT), qi);
		u16 size = rd16(cc(CC_Q_SIZE)), vec = rd16(cc(CC_Q_MSIX));
		if (ok && (size != 0 || vec != NO_VECTOR)) {
			ok = 0;
			bad_sel = qi;
			bad_size = size;
			bad_vec = vec;
		}
	}
	wr16(cc(CC_Q_SELECT), 0);
	check("queue-select-high", ok);
	if (!ok) {
		seen("num_queues", nq);
		seen("queue_select", bad_sel);
		seen("queue_size", bad_size);
		seen("queue_msix_vector", bad_vec);
	}
	end_line();

	/* 5: a smaller power of two written to queue_size reads back. */
	u16 max = rd16(cc(CC_Q_SIZE));
	u16 size = max > VQ_MAX ? VQ_MAX : max / 2;
	u16 size_back = 0;
	if (size) {
		wr16(cc(CC_Q_SIZE), size);
		size_back = rd16(cc(CC_Q_SIZE));
	}
	ok = size && size_back == size;
	check("queue-size-smaller", ok);
	if (!ok) {
		seen("max", max);
		seen("wrote", size);
		seen("read", size_back);
	}
	end_line();

	/* 6: config_generation does not move without a configuration change. */
	u8 g1 = rd8(cc(CC_GENERATION)), g2 = rd8(cc(CC_GENERATION));
	ok = g1 == g2;
	check("config-generation", ok);
	if (!ok) {
		seen("first", g1);
		seen("second", g2);
	}
	end_line();

	/* 8: queue_notify_off is stable; notify_off_multiplier is 0 or an even power of
	 * 2; the notification capability covers the queue's address (4.1.4.4). */
	u16 no1 = rd16(cc(CC_Q_NOTIFY_OFF)), no2 = rd16(cc(CC_Q_NOTIFY_OFF));
	u32 m = v->notify_mult;
	int mult_ok = m == 0 || (!(m & (m - 1)) && !(m & 1));
	ok = no1 == no2 && mult_ok && (u64)no1 * m + 2 <= notify_len;
	check("notify-off", ok);
	if (!ok) {
		seen("first", no1);
		seen("second", no2);
		seen("multiplier", m);
		seen("cap-length", notify_len);
	}
	end_line();

	/* 7: one request with interrupts wanted; the ISR clears on read. */
	isr_checks(size ? size : max);

	/* After a reset queue 0 is back to its maximum size and disabled. */
	reset(&st);
	wr16(cc(CC_Q_SELECT), 0);
	u16 size_reset = rd16(cc(CC_Q_SIZE)), enable_reset = rd16(cc(CC_Q_ENABLE));
	ok = st == 0 && size_reset == max && enable_reset == 0;
	check("reset-queue", ok);
	if (!ok) {
		seen("status", st);
		seen("queue_size", size_reset);
		seen("max", max);
		seen("queue_enable", enable_reset);
	}
	end_line();

done:
	vdev_set_status(v, 0);
	(void)rd8(v->isr);	/* nothing may stay pending for the next driver */
out:
	puts("vpci-spec-result: ");
	if (v->err) {
		puts("fail ");
		puts(v->err);
	} else if (n_failed) {
		puts("fail ");
		put_dec(n_failed);
		puts(" of ");
		put_dec(n_checks);
		puts(": ");
		puts(failed_names);
		fail("vpci-spec: checks failed");
	} else {
		puts("ok");
	}
	puts("\n");
}
