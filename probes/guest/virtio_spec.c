/*
 * Spec points of the virtio 1.x transports where two VMMs could read the text
 * differently, checked on the first virtio-rng device with the transports of virtio.c:
 *
 * - `vpci-spec`: virtio over PCI (spec 4.1) on the first virtio-rng PCI function
 *   (1af4:1044, or 1005);
 * - `vmmio-spec`: virtio-mmio version 2 (spec 4.2) on the first virtio-rng virtio-mmio
 *   device (ID 4) among the `virtio_mmio.device=` tokens.
 *
 * One line per check, "<token>-<name>: ok" or "<token>-<name>: fail <what was seen>",
 * every check runs whatever the others gave, then "<token>-result: ok | fail N of M:
 * <names>" (the bookkeeping is spec.c's, shared with `legacy-spec`). Each token leaves the
 * device reset at the end, so `rng` can run after it.
 *
 * See README.md ("virtio-pci transport checks", "virtio-mmio transport checks").
 */
#include "virtio.h"
#include "virtio_regs.h"
#include "spec.h"

/* struct virtio_pci_cap / virtio_pci_cfg_cap (4.1.4, 4.1.4.9) */
#define CAP_CFG_TYPE 3
#define CAP_BAR 4
#define CAP_OFFSET 8
#define CAP_LENGTH 12
#define CAP_PCI_CFG_DATA 16

#define NO_VECTOR 0xffff
#define PCI_STATUS_INTERRUPT 0x08

/* ---- the device, and the checks both transports share ---- */

static struct vdev dev;

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

/* device_feature_select / DeviceFeaturesSel, then device_feature / DeviceFeatures. */
static u32 device_features(u32 sel)
{
	if (dev.mmio) {
		wr32(dev.base + MM_DFSEL, sel);
		return rd32(dev.base + MM_DF);
	}
	wr32(dev.common + CC_DFSELECT, sel);
	return rd32(dev.common + CC_DF);
}

static u32 config_generation(void)
{
	return dev.mmio ? rd32(dev.base + MM_GENERATION) : rd8(dev.common + CC_GENERATION);
}

/* After reset, ACKNOWLEDGE, DRIVER: selecting feature bits 64-95 (select 2) and the
 * last window (0xffffffff) reads 0, the device offering nothing there (4.1.4.3, 4.2.2:
 * the window holds bits select * 32 to select * 32 + 31). */
static void check_feature_select_high(void)
{
	u8 st;
	reset(&st);
	vdev_set_status(&dev, ST_ACKNOWLEDGE);
	vdev_set_status(&dev, ST_ACKNOWLEDGE | ST_DRIVER);
	u32 df2 = device_features(2), dfm = device_features(0xffffffff);
	(void)device_features(0);
	int ok = df2 == 0 && dfm == 0;
	spec_check("feature-select-high", ok);
	if (!ok) {
		spec_seen("select2", df2);
		spec_seen("select0xffffffff", dfm);
	}
	spec_end_line();
}

/* DRIVER_OK with no queue set up is allowed (a device may have nothing to run): the
 * status reads 0x0f, no NEEDS_RESET. Then the reset reads 0 at once. */
static void check_driver_ok_no_queue(void)
{
	u8 st = start(), st_ok = 0, st_reset = 0xff, st_reset_after = 0xff;
	if (st == (ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK)) {
		vdev_set_status(&dev, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
		st_ok = vdev_status(&dev);
		st_reset = reset(&st_reset_after);
	}
	int ok = st_ok == 0x0f;
	spec_check("driver-ok-no-queue", ok);
	if (!ok) {
		spec_seen("features-ok-status", st);
		spec_seen("status", st_ok);
	}
	spec_end_line();
	ok = st_reset == 0;
	spec_check("reset", ok);
	if (!ok) {
		spec_seen("first-read", st_reset);
		spec_seen("later", st_reset_after);
	}
	spec_end_line();
}

/* config_generation / ConfigGeneration does not move without a configuration change. */
static void check_config_generation(void)
{
	u32 g1 = config_generation(), g2 = config_generation();
	int ok = g1 == g2;
	spec_check("config-generation", ok);
	if (!ok) {
		spec_seen("first", g1);
		spec_seen("second", g2);
	}
	spec_end_line();
}

/* Reset, ACKNOWLEDGE, DRIVER, VERSION_1, FEATURES_OK for the checks that follow; a
 * device that refuses gives "features-ok: fail". Returns 0 if it refused. */
static int features_ok(void)
{
	u8 st = start();
	if (st == (ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK))
		return 1;
	spec_check("features-ok", 0);
	spec_seen("status", st);
	spec_end_line();
	return 0;
}

/* The largest power of two below `max`, at most VQ_MAX (0 if max < 2). */
static u16 smaller_size(u32 max)
{
	u16 size = VQ_MAX;
	while (size && size >= max)
		size >>= 1;
	return size;
}

/* Rings and the buffer of the one request each token makes. */
static struct vring_page spec_ring NOINIT;
static u8 spec_buf[16] __attribute__((aligned(16)));

/* ---- virtio-pci ---- */

static u8 cfg_cap;		/* the VIRTIO_PCI_CAP_PCI_CFG capability, 0 if none */
static u8 common_bar;		/* where the common configuration is */
static u32 common_off;
static u32 notify_len;		/* cap.length of the notification capability */

static u64 cc(u32 off) { return dev.common + off; }

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
	spec_check("pcicfg-read32", ok);
	if (!ok) {
		spec_seen("bar0", direct[0]);
		spec_seen("window0", via[0]);
		spec_seen("bar1", direct[1]);
		spec_seen("window1", via[1]);
	}
	spec_end_line();

	/* A known dword with four different bytes: queue_desc (low half) of queue 0. */
	const u32 pat = 0x87654320;
	wr16(cc(CC_Q_SELECT), 0);
	wr32(cc(CC_Q_DESC), pat);
	u32 back = rd32(cc(CC_Q_DESC));
	window(CC_Q_DESC, 4);
	u16 w0 = pci_rd16(d, data), w2 = pci_rd16(d, data + 2);
	ok = back == pat && w0 == (u16)pat && w2 == (u16)(pat >> 16);
	spec_check("pcicfg-read16", ok);
	if (!ok) {
		spec_seen("bar", back);
		spec_seen("at0", w0);
		spec_seen("at2", w2);
	}
	spec_end_line();

	u8 b[4];
	for (u32 i = 0; i < 4; i++)
		b[i] = pci_rd8(d, data + i);
	ok = 1;
	for (u32 i = 0; i < 4; i++)
		if (b[i] != (u8)(pat >> (8 * i)))
			ok = 0;
	spec_check("pcicfg-read8", ok);
	if (!ok) {
		spec_seen("at0", b[0]);
		spec_seen("at1", b[1]);
		spec_seen("at2", b[2]);
		spec_seen("at3", b[3]);
	}
	spec_end_line();
	wr32(cc(CC_Q_DESC), 0);

	/* cap.length 2: queue_size of queue 0; cap.length 1: device_status. */
	u16 qs = rd16(cc(CC_Q_SIZE));
	window(CC_Q_SIZE, 2);
	u16 qs_via = pci_rd16(d, data);
	ok = qs == qs_via;
	spec_check("pcicfg-len2", ok);
	if (!ok) {
		spec_seen("bar", qs);
		spec_seen("window", qs_via);
	}
	spec_end_line();

	u8 st = vdev_status(&dev);
	window(CC_STATUS, 1);
	u8 st_via = pci_rd8(d, data);
	ok = st == st_via;
	spec_check("pcicfg-len1", ok);
	if (!ok) {
		spec_seen("bar", st);
		spec_seen("window", st_via);
	}
	spec_end_line();

	/* Writes: device_feature_select with cap.length 4, queue_select with 2. */
	wr32(cc(CC_DFSELECT), 0);
	window(CC_DFSELECT, 4);
	pci_wr32(d, data, 1);
	u32 sel = rd32(cc(CC_DFSELECT)), df = rd32(cc(CC_DF));
	ok = sel == 1 && df == direct[1];
	spec_check("pcicfg-write32", ok);
	if (!ok) {
		spec_seen("device_feature_select", sel);
		spec_seen("device_feature", df);
	}
	spec_end_line();

	window(CC_Q_SELECT, 2);
	pci_wr16(d, data, 5);
	u16 qsel = rd16(cc(CC_Q_SELECT));
	ok = qsel == 5;
	spec_check("pcicfg-write16", ok);
	if (!ok)
		spec_seen("queue_select", qsel);
	spec_end_line();
	wr16(cc(CC_Q_SELECT), 0);
	wr32(cc(CC_DFSELECT), 0);
	pci_wr32(d, cfg_cap + CAP_LENGTH, 0);
}

/* ---- the rest of 4.1.4.3-4.1.4.5 ---- */

/* One 16-byte request on queue 0 (size `size`) with interrupts wanted, then the ISR. */
static void isr_checks(u16 size)
{
	static struct vq q;
	struct pci_dev *d = dev.pci;
	/* Whatever an earlier read left: start with a clear ISR. */
	(void)rd8(dev.isr);
	u8 idle = rd8(dev.isr);
	if (vq_setup(&dev, &q, 0, &spec_ring, size, 0) < 0 || vdev_driver_ok(&dev) < 0) {
		spec_check("isr-read-clear", 0);
		puts(" queue setup or DRIVER_OK failed");
		spec_end_line();
		return;
	}
	q.avail->flags = 0;	/* vq_setup asked for no interrupts (polling): want one here */
	mb();
	struct seg s = { spec_buf, sizeof(spec_buf), 1 };
	i64 n = vq_run(&dev, &q, &s, 1, NULL);
	if (n < 0) {
		spec_check("isr-read-clear", 0);
		puts(" request failed");
		spec_end_line();
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
	spec_check("isr-read-clear", ok);
	if (!ok) {
		spec_seen("before", idle);
		spec_seen("first", isr1);
		spec_seen("second", isr2);
	}
	spec_end_line();
	ok = (pst1 & PCI_STATUS_INTERRUPT) && !(pst2 & PCI_STATUS_INTERRUPT);
	spec_check("isr-pci-status", ok);
	if (!ok) {
		spec_seen("status-before-isr-read", pst1);
		spec_seen("status-after", pst2);
	}
	spec_end_line();
}

void vpci_spec_report(void)
{
	struct vdev *v = &dev;
	memset(v, 0, sizeof(*v));
	v->name = "vpci";
	v->irq = IRQ_POLL;
	v->quiet_scan = 1;
	spec_begin("vpci-spec");
	cfg_cap = 0;
	if (vdev_find_pci(v, 0x1044, 0x1005, "virtio-rng") < 0)
		goto out;
	find_caps();

	check_feature_select_high();
	check_driver_ok_no_queue();

	/* The rest on a device with FEATURES_OK, as a driver sets up its queues. */
	if (!features_ok())
		goto done;

	/* 1: the PCI_CFG window. */
	spec_check("pcicfg-cap", cfg_cap != 0);
	spec_end_line();
	if (cfg_cap)
		pci_cfg_checks();

	/* A queue past num_queues is unavailable: queue_size 0, no MSI-X vector. */
	u16 nq = rd16(cc(CC_NUM_QUEUES));
	int ok = 1;
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
	spec_check("queue-select-high", ok);
	if (!ok) {
		spec_seen("num_queues", nq);
		spec_seen("queue_select", bad_sel);
		spec_seen("queue_size", bad_size);
		spec_seen("queue_msix_vector", bad_vec);
	}
	spec_end_line();

	/* A smaller power of two written to queue_size reads back. */
	u16 max = rd16(cc(CC_Q_SIZE));
	u16 size = smaller_size(max);
	u16 size_back = 0;
	if (size) {
		wr16(cc(CC_Q_SIZE), size);
		size_back = rd16(cc(CC_Q_SIZE));
	}
	ok = size && size_back == size;
	spec_check("queue-size-smaller", ok);
	if (!ok) {
		spec_seen("max", max);
		spec_seen("wrote", size);
		spec_seen("read", size_back);
	}
	spec_end_line();

	check_config_generation();

	/* queue_notify_off is stable; notify_off_multiplier is 0 or an even power of
	 * 2; the notification capability covers the queue's address (4.1.4.4). */
	u16 no1 = rd16(cc(CC_Q_NOTIFY_OFF)), no2 = rd16(cc(CC_Q_NOTIFY_OFF));
	u32 m = v->notify_mult;
	int mult_ok = m == 0 || (!(m & (m - 1)) && !(m & 1));
	ok = no1 == no2 && mult_ok && (u64)no1 * m + 2 <= notify_len;
	spec_check("notify-off", ok);
	if (!ok) {
		spec_seen("first", no1);
		spec_seen("second", no2);
		spec_seen("multiplier", m);
		spec_seen("cap-length", notify_len);
	}
	spec_end_line();

	/* One request with interrupts wanted; the ISR clears on read. */
	isr_checks(size ? size : max);

	/* After a reset queue 0 is back to its maximum size and disabled. */
	u8 st;
	reset(&st);
	wr16(cc(CC_Q_SELECT), 0);
	u16 size_reset = rd16(cc(CC_Q_SIZE)), enable_reset = rd16(cc(CC_Q_ENABLE));
	ok = st == 0 && size_reset == max && enable_reset == 0;
	spec_check("reset-queue", ok);
	if (!ok) {
		spec_seen("status", st);
		spec_seen("queue_size", size_reset);
		spec_seen("max", max);
		spec_seen("queue_enable", enable_reset);
	}
	spec_end_line();

done:
	vdev_set_status(v, 0);
	(void)rd8(v->isr);	/* nothing may stay pending for the next driver */
out:
	spec_result(v->err);
}

/* ---- virtio-mmio (4.2.2, version 2) ---- */

static u64 mm(u32 off) { return dev.base + off; }

/* LAPIC IRR: is `vec` waiting for delivery (interrupts off)? */
static int irr_pending(u8 vec) { return (lapic_rd(0x200 + 0x10 * (vec >> 5)) >> (vec & 31)) & 1; }

/* With queue 0 running: one 16-byte request with interrupts wanted (`flags` 0) while
 * the probe's interrupts are off and the device's line is routed to dev.vec[1] (or
 * not routed, gsi < 0). InterruptStatus bit 0 comes up and InterruptACK clears it
 * (4.2.2); the vector waits in the LAPIC's IRR, and one `sti; hlt` lets it in. */
static void mmio_irq_checks(struct vq *q)
{
	u32 idle = rd32(mm(MM_INT_STATUS));
	q->avail->flags = 0;	/* vq_setup asked for no interrupts (polling): want one here */
	mb();
	struct seg s = { spec_buf, sizeof(spec_buf), 1 };
	if (vq_run(&dev, q, &s, 1, NULL) < 0) {
		spec_check("interrupt-status", 0);
		puts(" request failed");
		spec_end_line();
		return;
	}
	/* The device sets InterruptStatus before it raises the line, but under TCG the used
	 * index may show before either: wait a little for both. */
	u8 vec = dev.vec[1];
	u32 st1 = 0;
	int pending = 0;
	u64 t0 = rdtsc();
	do {
		st1 = rd32(mm(MM_INT_STATUS));
		pending = dev.gsi >= 0 && irr_pending(vec);
		if ((st1 & 1) && (pending || dev.gsi < 0))
			break;
		cpu_relax();
	} while (rdtsc() - t0 < 100 * TSC_PER_MS);
	wr32(mm(MM_INT_ACK), st1);
	u32 st2 = rd32(mm(MM_INT_STATUS));
	int ok = idle == 0 && (st1 & 1) && st2 == 0;
	spec_check("interrupt-status", ok);
	if (!ok) {
		spec_seen("before", idle);
		spec_seen("after-request", st1);
		spec_seen("after-ack", st2);
	}
	spec_end_line();
	if (dev.gsi < 0)
		return;	/* no IOAPIC pin: vdev_setup_intx failed and said so */

	/* The line went down with the ACK: the one interrupt latched in the IRR is taken
	 * (the handler, in INTx mode, finds InterruptStatus 0) and no other follows. */
	u32 seen0 = dev.irqs + dev.isr_other;
	dev.irq = IRQ_INTX;
	if (pending)
		wait_irq();
	u32 taken = dev.irqs + dev.isr_other - seen0;
	int again = irr_pending(vec);
	dev.irq = IRQ_POLL;
	ok = pending && taken == 1 && !again;
	spec_check("interrupt-line", ok);
	if (!ok) {
		spec_seen("irr", pending);
		spec_seen("taken", taken);
		spec_seen("irr-after", again);
	}
	spec_end_line();
}

void vmmio_spec_report(void)
{
	static struct vq q;
	struct vdev *v = &dev;
	memset(v, 0, sizeof(*v));
	v->name = "vmmio";
	v->irq = IRQ_POLL;
	v->quiet_scan = 1;
	v->vec[1] = VEC_SPEC;
	v->gsi = -1;
	spec_begin("vmmio-spec");
	if (vdev_find_mmio(v, 4, "entropy device") < 0)
		goto out;

	/* MagicValue, Version, DeviceID as vdev_find_mmio took them; VendorID any value,
	 * but the same on every read. */
	u32 magic = rd32(mm(MM_MAGIC)), version = rd32(mm(MM_VERSION)), id = rd32(mm(MM_DEVICE_ID));
	u32 vendor = rd32(mm(MM_VENDOR_ID)), vendor2 = rd32(mm(MM_VENDOR_ID));
	puts("vmmio-id: vendor=");
	put_hex8(vendor);
	puts("\n");
	int ok = magic == MMIO_MAGIC && version == 2 && id == 4 && vendor == vendor2;
	spec_check("id", ok);
	if (!ok) {
		spec_seen("magic", magic);
		spec_seen("version", version);
		spec_seen("device", id);
		spec_seen("vendor", vendor);
		spec_seen("vendor-again", vendor2);
	}
	spec_end_line();

	check_feature_select_high();
	check_driver_ok_no_queue();

	/* The rest on a device with FEATURES_OK, as a driver sets up its queues. */
	if (!features_ok())
		goto done;

	/* virtio-rng has one queue (5.4.2): QueueSel 1 and 2 name none, QueueNumMax reads 0
	 * ("the queue is not available") and QueueReady 0. */
	ok = 1;
	u32 bad_sel = 0, bad_max = 0, bad_ready = 0;
	for (u32 qi = 1; qi <= 2; qi++) {
		wr32(mm(MM_Q_SEL), qi);
		u32 max = rd32(mm(MM_Q_NUM_MAX)), ready = rd32(mm(MM_Q_READY));
		if (ok && (max != 0 || ready != 0)) {
			ok = 0;
			bad_sel = qi;
			bad_max = max;
			bad_ready = ready;
		}
	}
	wr32(mm(MM_Q_SEL), 0);
	spec_check("queue-select-high", ok);
	if (!ok) {
		spec_seen("queue_sel", bad_sel);
		spec_seen("queue_num_max", bad_max);
		spec_seen("queue_ready", bad_ready);
	}
	spec_end_line();

	/* No shared memory region 0 (4.2.2): SHMLen reads 0xffffffffffffffff, and so does
	 * SHMBase. */
	wr32(mm(MM_SHM_SEL), 0);
	u32 len_lo = rd32(mm(MM_SHM_LEN_LO)), len_hi = rd32(mm(MM_SHM_LEN_HI));
	u32 base_lo = rd32(mm(MM_SHM_BASE_LO)), base_hi = rd32(mm(MM_SHM_BASE_HI));
	ok = len_lo == 0xffffffff && len_hi == 0xffffffff;
	spec_check("shm-len", ok);
	if (!ok)
		spec_seen("len", (u64)len_hi << 32 | len_lo);
	spec_end_line();
	ok = base_lo == 0xffffffff && base_hi == 0xffffffff;
	spec_check("shm-base", ok);
	if (!ok)
		spec_seen("base", (u64)base_hi << 32 | base_lo);
	spec_end_line();

	check_config_generation();

	/* Queue 0 with a smaller power of two in QueueNum, the three addresses as 32-bit
	 * halves, QueueReady 1 (vq_setup), which reads back 1. */
	wr32(mm(MM_Q_SEL), 0);
	u32 max = rd32(mm(MM_Q_NUM_MAX));
	u16 size = smaller_size(max);
	int set_up = size && vq_setup(v, &q, 0, &spec_ring, size, 0) == 0;
	u32 ready = rd32(mm(MM_Q_READY));
	ok = set_up && q.size == size && ready == 1;
	spec_check("queue-setup", ok);
	if (!ok) {
		spec_seen("queue_num_max", max);
		spec_seen("queue_num", size);
		spec_seen("queue_ready", ready);
	}
	spec_end_line();
	if (!set_up)
		goto done;

	/* The device's line through the IOAPIC to VEC_SPEC (masked again at the end; the
	 * requests still poll), with only our vectors let in, then DRIVER_OK. */
	pic_mask_all();
	lapic_wr(0x80, 0);	/* TPR: accept everything */
	vdev_setup_intx(v);	/* "vmmio-irq: mmio irq=N gsi=N trigger=level" */
	if (vdev_driver_ok(v) < 0)
		goto done;
	mmio_irq_checks(&q);

	/* 4.2.2.2: to stop using the queue the driver writes 0 to QueueReady and reads it
	 * back; while the device runs (after DRIVER_OK) it reads 0. */
	wr32(mm(MM_Q_SEL), 0);
	u32 ready_before = rd32(mm(MM_Q_READY));
	wr32(mm(MM_Q_READY), 0);
	u32 ready_after = rd32(mm(MM_Q_READY));
	ok = ready_before == 1 && ready_after == 0;
	spec_check("queue-ready-stop", ok);
	if (!ok) {
		spec_seen("before", ready_before);
		spec_seen("after", ready_after);
	}
	spec_end_line();

	/* After a reset queue 0 is not ready and still offers its maximum. */
	u8 st;
	reset(&st);
	wr32(mm(MM_Q_SEL), 0);
	u32 ready_reset = rd32(mm(MM_Q_READY)), max_reset = rd32(mm(MM_Q_NUM_MAX));
	ok = st == 0 && ready_reset == 0 && max_reset == max;
	spec_check("reset-queue", ok);
	if (!ok) {
		spec_seen("status", st);
		spec_seen("queue_ready", ready_reset);
		spec_seen("queue_num_max", max_reset);
		spec_seen("max", max);
	}
	spec_end_line();

done:
	vdev_set_status(v, 0);
	if (v->gsi >= 0)
		ioapic_mask_gsi((u32)v->gsi);
	wr32(mm(MM_INT_ACK), rd32(mm(MM_INT_STATUS)));	/* nothing may stay pending */
out:
	spec_result(v->err);
}
