/*
 * virtio 1.x transports for the probe's drivers (see virtio.h): virtio over PCI through
 * the vendor capabilities (spec 4.1) and virtio-mmio version 2 (spec 4.2, devices from
 * `virtio_mmio.device=<size>@<base>:<irq>` on the command line), split virtqueues, and
 * the interrupt modes. Every wait is bounded.
 */
#include "virtio.h"
#include "virtio_regs.h"


/* ---- reporting ---- */

void put_key(struct vdev *v, const char *suffix)
{
	puts(v->name);
	puts(suffix);
}

void put_feat(u64 f)
{
	puts("0x");
	put_hexn(f, 16);
}

void vdev_fail(struct vdev *v, const char *reason)
{
	if (!v->err) {
		u32 n = 0;
		while (reason[n] && n < sizeof(v->errbuf) - 1) {
			v->errbuf[n] = reason[n];
			n++;
		}
		v->errbuf[n] = 0;
		v->err = v->errbuf;
	}
	char buf[96];
	u32 n = 0;
	for (const char *p = v->name; *p && n < 16; p++)
		buf[n++] = *p;
	buf[n++] = ':';
	buf[n++] = ' ';
	while (*reason && n < sizeof(buf) - 1)
		buf[n++] = *reason++;
	buf[n] = 0;
	fail(buf);
}

void vdev_put_result(struct vdev *v)
{
	if (v->event_idx) {
		put_key(v, "-event-idx: kicks=");
		put_dec(v->kicks);
		puts(" suppressed=");
		put_dec(v->kicks_suppressed);
		puts("\n");
	}
	put_key(v, "-result: ");
	if (v->err) {
		puts("fail ");
		puts(v->err);
	} else {
		puts("ok");
	}
	puts("\n");
}

/* ---- interrupts ---- */

/* Which device owns each of the vectors VEC_VIRTIO_FIRST..VEC_VIRTIO_LAST. */
static struct vdev *vec_owner[VEC_VIRTIO_LAST - VEC_VIRTIO_FIRST + 1];

static void own_vector(struct vdev *v, u32 vec)
{
	if (vec >= VEC_VIRTIO_FIRST && vec <= VEC_VIRTIO_LAST)
		vec_owner[vec - VEC_VIRTIO_FIRST] = v;
}

/* Called by the vector stubs in entry.S. */
void virtio_irq(u64 vec)
{
	struct vdev *v = NULL;
	if (vec >= VEC_VIRTIO_FIRST && vec <= VEC_VIRTIO_LAST)
		v = vec_owner[vec - VEC_VIRTIO_FIRST];
	if (v && v->irq == IRQ_INTX) {
		u32 isr;
		if (v->mmio) {
			isr = rd32(v->base + MM_INT_STATUS);
			wr32(v->base + MM_INT_ACK, isr);
		} else {
			isr = rd8(v->isr);	/* reading clears it and deasserts the line */
		}
		if (isr & 1)
			v->irqs = v->irqs + 1;
		else
			v->isr_other = v->isr_other + 1;
	} else if (v) {
		for (u32 e = 0; e < v->msix_entries && e < VDEV_MAX_VEC; e++)
			if (v->vec[e] == vec)
				v->entry_irqs[e] = v->entry_irqs[e] + 1;
		if (vec == v->vec[0])
			v->cfg_irqs = v->cfg_irqs + 1;
		else
			v->irqs = v->irqs + 1;
	}
	lapic_wr(0xb0, 0);	/* EOI (for a level-triggered IOAPIC pin, after the ack) */
}

void vdev_idle(struct vdev *v)
{
	if (v->irq != IRQ_POLL)
		wait_irq();
	else
		cpu_relax();
}

/* ---- transport ---- */

u8 vdev_status(struct vdev *v)
{
	return v->mmio ? (u8)rd32(v->base + MM_STATUS) : rd8(v->common + CC_STATUS);
}

void vdev_set_status(struct vdev *v, u8 s)
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

void vdev_write_features(struct vdev *v, u64 f)
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
	vdev_set_status(v, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK);
}

u64 vdev_start(struct vdev *v)
{
	/* 3.1.1: reset, ACKNOWLEDGE, DRIVER */
	vdev_set_status(v, 0);
	for (u32 i = 0; i < 1000 && vdev_status(v) != 0; i++)
		cpu_relax();
	if (vdev_status(v) != 0) {
		vdev_fail(v, "device does not reset");
		return 0;
	}
	vdev_set_status(v, ST_ACKNOWLEDGE);
	vdev_set_status(v, ST_ACKNOWLEDGE | ST_DRIVER);
	return features_get(v);
}

u64 vdev_negotiate(struct vdev *v, u64 want, void (*names)(u64))
{
	u64 offered = vdev_start(v);
	if (v->err)
		return 0;
	put_key(v, "-features: ");
	put_feat(offered);
	if (names)
		names(offered);
	puts("\n");
	if (!(offered & F(F_VERSION_1))) {
		vdev_set_status(v, ST_FAILED);
		vdev_fail(v, "VIRTIO_F_VERSION_1 not offered");
		return 0;
	}
	if (opts.event_idx)
		want |= F(F_EVENT_IDX);
	u64 feat = offered & (want | F(F_VERSION_1));
	vdev_write_features(v, feat);
	put_key(v, "-driver-features: ");
	put_feat(feat);
	if (names)
		names(feat);
	puts("\n");
	if (!(vdev_status(v) & ST_FEATURES_OK)) {
		vdev_set_status(v, ST_FAILED);
		vdev_fail(v, "FEATURES_OK not kept");
		return 0;
	}
	v->event_idx = !!(feat & F(F_EVENT_IDX));
	return feat;
}

int vdev_driver_ok(struct vdev *v)
{
	vdev_set_status(v, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
	u8 st = vdev_status(v);
	if (st & (ST_NEEDS_RESET | ST_FAILED) || !(st & ST_DRIVER_OK)) {
		vdev_fail(v, "device status after DRIVER_OK");
		return -1;
	}
	return 0;
}

static u64 cfg_base(struct vdev *v) { return v->mmio ? v->base + MM_CONFIG : v->devcfg; }
static u32 cfg_gen(struct vdev *v)
{
	return v->mmio ? rd32(v->base + MM_GENERATION) : rd8(v->common + CC_GENERATION);
}

/* A 32-bit config field (off) or, with wide, a 64-bit one read as two halves under the
 * configuration generation (2.4.1). */
u64 vdev_cfg_read(struct vdev *v, u32 off, int wide)
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

u16 vdev_cfg16(struct vdev *v, u32 off)
{
	u16 val = 0;
	for (int tries = 0; tries < 10; tries++) {
		u32 g = cfg_gen(v);
		val = rd16(cfg_base(v) + off);
		if (cfg_gen(v) == g)
			break;
	}
	return val;
}

u8 vdev_cfg8(struct vdev *v, u32 off)
{
	u8 val = 0;
	for (int tries = 0; tries < 10; tries++) {
		u32 g = cfg_gen(v);
		val = rd8(cfg_base(v) + off);
		if (cfg_gen(v) == g)
			break;
	}
	return val;
}

/* ---- virtqueues ---- */

/* EVENT_IDX (2.7.10): avail_event sits after the used ring's entries, used_event
 * after the available ring's; both follow the negotiated queue size. */
static volatile u16 *avail_event(struct vq *q) { return (volatile u16 *)&q->used->ring[q->size]; }
static volatile u16 *used_event(struct vq *q) { return &q->avail->ring[q->size]; }

void vq_kick(struct vdev *v, struct vq *q)
{
	if (q->event_idx) {
		/* Notify only if avail.idx moved past avail_event since the last
		 * kick: vring_need_event(avail_event, new, old). */
		mb();
		u16 ev = *avail_event(q), new = q->avail_idx, old = q->kicked_idx;
		q->kicked_idx = new;
		if ((u16)(new - ev - 1) >= (u16)(new - old)) {
			v->kicks_suppressed++;
			return;
		}
	}
	v->kicks++;
	if (v->mmio)
		wr32(v->base + MM_Q_NOTIFY, q->index);
	else
		wr16(v->notify_base + (u64)q->notify_off * v->notify_mult, q->index);
}

void vq_publish(struct vq *q, u16 head)
{
	q->avail->ring[q->avail_idx % q->size] = head;
	mb();
	q->avail_idx++;
	q->avail->idx = q->avail_idx;
	mb();
}

int vq_pop(struct vq *q, u32 *len)
{
	if (q->used->idx == q->last_used)
		return -1;
	mb();
	u32 id = q->used->ring[q->last_used % q->size].id;
	*len = q->used->ring[q->last_used % q->size].len;
	q->last_used++;
	/* EVENT_IDX: interrupt again for the next entry the device uses. */
	if (q->event_idx)
		*used_event(q) = q->last_used;
	return (int)id;
}

i64 vq_run(struct vdev *v, struct vq *q, const struct seg *s, u32 n, struct vring_desc *ind)
{
	if (q->dead)
		return -1;
	u16 head = q->next_free;
	if (ind) {
		for (u32 i = 0; i < n; i++) {
			ind[i].addr = (u64)s[i].addr;
			ind[i].len = s[i].len;
			ind[i].flags = (s[i].dev_writes ? DESC_F_WRITE : 0) | (i + 1 < n ? DESC_F_NEXT : 0);
			ind[i].next = i + 1 < n ? i + 1 : 0;
		}
		q->desc[head].addr = (u64)ind;
		q->desc[head].len = n * sizeof(struct vring_desc);
		q->desc[head].flags = DESC_F_INDIRECT;
		q->desc[head].next = 0;
		q->next_free = (head + 1) % q->size;
	} else {
		u16 idx = head;
		for (u32 i = 0; i < n; i++) {
			u16 nxt = (idx + 1) % q->size;
			q->desc[idx].addr = (u64)s[i].addr;
			q->desc[idx].len = s[i].len;
			q->desc[idx].flags = (s[i].dev_writes ? DESC_F_WRITE : 0) | (i + 1 < n ? DESC_F_NEXT : 0);
			q->desc[idx].next = i + 1 < n ? nxt : 0;
			idx = nxt;
		}
		q->next_free = idx;
	}
	vq_publish(q, head);
	u32 irqs0 = v->irqs;
	u64 t0 = rdtsc(), tick0 = ticks;
	vq_kick(v, q);
	for (;;) {
		int used = q->used->idx != q->last_used;
		if (used && (v->irq == IRQ_POLL || v->irqs != irqs0))
			break;
		if (rdtsc() - t0 > 2000 * TSC_PER_MS || ticks - tick0 > 200) {
			vdev_fail(v, used ? "no interrupt for a completed request" : "request timeout");
			q->dead = 1;
			return -1;
		}
		vdev_idle(v);
	}
	u32 len;
	int id = vq_pop(q, &len);
	if (id != head) {
		vdev_fail(v, "used ring id is not the request's head");
		q->dead = 1;
		return -1;
	}
	return len;
}

int vq_setup(struct vdev *v, struct vq *q, u16 index, struct vring_page *ring, u16 want, int show_index)
{
	u32 max;
	memset(q, 0, sizeof(*q));
	q->index = index;
	if (v->mmio) {
		wr32(v->base + MM_Q_SEL, index);
		if (rd32(v->base + MM_Q_READY)) {
			vdev_fail(v, index == 0 ? "queue 0 ready before setup" : "queue ready before setup");
			return -1;
		}
		max = rd32(v->base + MM_Q_NUM_MAX);
	} else {
		wr16(v->common + CC_Q_SELECT, index);
		max = rd16(v->common + CC_Q_SIZE);
	}
	if (!max) {
		vdev_fail(v, index == 0 ? "queue 0 not available" : "queue not available");
		return -1;
	}
	if (want > VQ_MAX)
		want = VQ_MAX;
	q->size = want;
	while (q->size > max)
		q->size >>= 1;
	q->max = max;
	/* The rings only; the rest of the page is padding. */
	memset(ring, 0, (u64)((u8 *)&ring->used + sizeof(ring->used) - (u8 *)ring));
	q->desc = ring->desc;
	q->avail = &ring->avail;
	q->used = &ring->used;
	q->avail->flags = v->irq == IRQ_POLL ? AVAIL_F_NO_INTERRUPT : 0;
	q->event_idx = v->event_idx;
	u64 desc = (u64)q->desc, drv = (u64)q->avail, dev = (u64)q->used;
	if (v->mmio) {
		wr32(v->base + MM_Q_NUM, q->size);
		wr32(v->base + MM_Q_DESC_LO, (u32)desc);
		wr32(v->base + MM_Q_DESC_HI, (u32)(desc >> 32));
		wr32(v->base + MM_Q_DRIVER_LO, (u32)drv);
		wr32(v->base + MM_Q_DRIVER_HI, (u32)(drv >> 32));
		wr32(v->base + MM_Q_DEVICE_LO, (u32)dev);
		wr32(v->base + MM_Q_DEVICE_HI, (u32)(dev >> 32));
		wr32(v->base + MM_Q_READY, 1);
		if (rd32(v->base + MM_Q_READY) != 1) {
			vdev_fail(v, "QueueReady does not read back 1");
			return -1;
		}
	} else {
		u64 c = v->common;
		wr16(c + CC_Q_SIZE, q->size);
		if (rd16(c + CC_Q_SIZE) != q->size) {
			vdev_fail(v, "queue_size does not read back");
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
			vdev_fail(v, "queue addresses do not read back");
			return -1;
		}
		if (v->irq == IRQ_MSIX) {
			q->msix_entry = vdev_msix_entry(v, 1 + index);
			wr16(c + CC_Q_MSIX, q->msix_entry);
			u16 got = rd16(c + CC_Q_MSIX);
			if (got != q->msix_entry) {
				vdev_fail(v, q->msix_entry == 1 ? "queue_msix_vector does not read back 1"
							       : "queue_msix_vector does not read back");
				return -1;
			}
		}
		q->notify_off = rd16(c + CC_Q_NOTIFY_OFF);
		wr16(c + CC_Q_ENABLE, 1);
		if (rd16(c + CC_Q_ENABLE) != 1) {
			vdev_fail(v, "queue_enable does not read back 1");
			return -1;
		}
	}
	put_key(v, "-queue: ");
	if (show_index) {
		puts("q=");
		put_dec(index);
		putc(' ');
	}
	puts("size=");
	put_dec(q->size);
	puts(" max=");
	put_dec(max);
	if (!v->mmio) {
		puts(" notify_off=");
		put_dec(q->notify_off);
	}
	if (v->irq == IRQ_MSIX && show_index) {
		puts(" msix=");
		put_dec(q->msix_entry);
	}
	puts("\n");
	return 0;
}

/* ---- interrupt setup ---- */

void vdev_irq_prepare(struct vdev *v)
{
	if (v->irq == IRQ_POLL)
		return;
	/* Firmware may have left the 8259 unmasked (SeaBIOS: the PIT on IRQ 0 at vector 8,
	 * through LINT0): nothing but our vectors may come in sti; hlt. */
	pic_mask_all();
	lapic_wr(0x80, 0);	/* TPR: accept everything */
}

u16 vdev_msix_entry(struct vdev *v, u16 want)
{
	return want < v->msix_entries ? want : 1;
}

int vdev_setup_msix(struct vdev *v, u32 nentries)
{
	struct pci_dev *d = v->pci;
	u8 cap = pci_find_cap(d, 0x11, 0);
	if (!cap) {
		vdev_fail(v, "no MSI-X capability");
		return -1;
	}
	u16 ctrl = pci_rd16(d, cap + 2);
	u32 n = (ctrl & 0x7ff) + 1;
	u32 tbl = pci_rd32(d, cap + 4);
	u32 bir = tbl & 7;
	if (n < 2 || bir > 5 || d->bar[bir].type == BAR_NONE || d->bar[bir].type == BAR_IO) {
		vdev_fail(v, "unusable MSI-X table");
		return -1;
	}
	if (nentries > VDEV_MAX_VEC)
		nentries = VDEV_MAX_VEC;
	if (nentries > n)
		nentries = n;	/* the queues past the table share entry 1 */
	v->msix_entries = nentries;
	u64 table = d->bar[bir].addr + (tbl & ~7U);
	/* Enable with the function masked, fill entries 0 (config) and 1.. (queues), unmask. */
	pci_wr16(d, cap + 2, (ctrl & ~0x7ff) | 0x8000 | 0x4000);
	for (u32 e = 0; e < nentries; e++) {
		u64 ent = table + 16 * e;
		wr32(ent + 0, 0xfee00000U | (bsp_apic_id << 12));
		wr32(ent + 4, 0);
		wr32(ent + 8, v->vec[e]);	/* fixed, edge */
		wr32(ent + 12, 0);		/* unmasked */
		own_vector(v, v->vec[e]);
	}
	for (u32 e = 0; e < nentries; e++)
		if (rd32(table + 16 * e + 8) != v->vec[e]) {
			vdev_fail(v, "MSI-X table does not read back");
			return -1;
		}
	pci_wr16(d, cap + 2, (ctrl & ~0x7ff & ~0x4000) | 0x8000);
	pci_wr16(d, 0x04, pci_rd16(d, 0x04) | (1 << 10));	/* INTx disable */
	wr16(v->common + CC_MSIX_CONFIG, 0);
	u16 got = rd16(v->common + CC_MSIX_CONFIG);
	put_key(v, "-irq: msix entries=");
	put_dec(n);
	puts(" table=bar");
	put_dec(bir);
	puts("+");
	put_hex(tbl & ~7U);
	if (nentries <= 2) {
		puts(" config=0 queue=1 vector=");
		put_hex(v->vec[1]);
	} else {
		puts(" config=0 queues=1-");
		put_dec(nentries - 1);
		puts(" vectors=");
		put_hex(v->vec[1]);
		putc('-');
		put_hex(v->vec[nentries - 1]);
	}
	puts(" enabled=");
	put_dec(pci_rd16(d, cap + 2) >> 15);
	puts("\n");
	if (got != 0) {
		vdev_fail(v, "config_msix_vector does not read back 0");
		return -1;
	}
	return 0;
}

int vdev_setup_intx(struct vdev *v)
{
	u32 irq;
	if (v->mmio) {
		irq = v->mmio_irq;
		put_key(v, "-irq: mmio irq=");
		put_dec(irq);
	} else {
		struct pci_dev *d = v->pci;
		irq = d->irq_line;
		put_key(v, "-irq: intx pin=");
		putc(d->irq_pin >= 1 && d->irq_pin <= 4 ? 'A' + d->irq_pin - 1 : '?');
		puts(" line=");
		put_dec(irq);
		if (!d->irq_pin || irq == 0 || irq == 0xff) {
			puts("\n");
			vdev_fail(v, "no INTx pin or interrupt line");
			return -1;
		}
		pci_wr16(d, 0x04, pci_rd16(d, 0x04) & ~(1 << 10));	/* INTx enabled */
	}
	own_vector(v, v->vec[1]);
	/*
	 * Level-triggered. PCI INTx is active low, as Linux programs a GSI that an
	 * ACPI _PRT entry names; the VMM's IOAPIC must still deliver the device's
	 * assertions. virtio-mmio lines are active high (LNRO0005 _CRS).
	 */
	v->gsi = ioapic_route_irq(irq, v->vec[1], 1, v->pci ? 1 : 0);
	puts(" gsi=");
	if (v->gsi < 0)
		puts("none");
	else
		put_dec((u32)v->gsi);
	puts(" trigger=level\n");
	if (v->gsi < 0) {
		vdev_fail(v, "no IOAPIC pin for the interrupt");
		return -1;
	}
	return 0;
}

void vdev_put_irqs(struct vdev *v)
{
	put_key(v, "-irqs: ");
	put_dec(v->irqs);
	puts(" config=");
	put_dec(v->cfg_irqs);
	puts(" other=");
	put_dec(v->isr_other);
	puts("\n");
}

void vdev_stop(struct vdev *v)
{
	vdev_set_status(v, 0);	/* reset: the device stops using our memory */
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

static void fail2(struct vdev *v, const char *a, const char *b, const char *c)
{
	const char *parts[3] = { a, b, c };
	char buf[80];
	u32 n = 0;
	for (u32 i = 0; i < 3; i++)
		for (const char *q = parts[i]; *q && n < sizeof(buf) - 1; q++)
			buf[n++] = *q;
	buf[n] = 0;
	vdev_fail(v, buf);
}

int vdev_find_pci(struct vdev *v, u16 modern, u16 transitional, const char *what)
{
	struct pci_dev *d = NULL;
	for (u32 i = 0; i < pci_ndevs && !d; i++)
		if (pci_devs[i].vendor == 0x1af4 &&
		    (pci_devs[i].device == modern || pci_devs[i].device == transitional))
			d = &pci_devs[i];
	if (!d) {
		fail2(v, "no ", what, " PCI device");
		return -1;
	}
	v->pci = d;
	put_key(v, "-transport: pci ");
	pci_put_bdf(d);
	putc(' ');
	put_hexn(d->vendor, 4);
	putc(':');
	put_hexn(d->device, 4);
	puts("\n");
	if (pci_enable_device(d) < 0) {
		vdev_fail(v, "BAR assignment");
		return -1;
	}

	u8 found = 0;
	/* blk keeps the key it always had; the others carry their prefix. */
	if (v->name[0] == 'b' && v->name[1] == 'l' && v->name[2] == 'k' && !v->name[3])
		puts("virtio-pci:");
	else
		put_key(v, "-virtio-pci:");
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
		vdev_fail(v, "missing virtio PCI capabilities");
		return -1;
	}
	return 0;
}

/* ---- virtio-mmio ---- */

int vdev_find_mmio(struct vdev *v, u32 want_id, const char *what)
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
		if (!v->quiet_scan) {
			puts("mmio: base=");
			put_hex(base);
			puts(" size=");
			put_hex(size);
			puts(" irq=");
			put_dec(irq);
		}
		if (base + 0x100 > 0x100000000UL || size < 0x100) {
			if (!v->quiet_scan)
				puts(" unusable\n");
			continue;
		}
		u32 magic = rd32(base + MM_MAGIC);
		if (magic != MMIO_MAGIC) {
			if (!v->quiet_scan) {
				puts(" magic=");
				put_hex8(magic);
				puts(" bad\n");
			}
			continue;
		}
		u32 version = rd32(base + MM_VERSION), id = rd32(base + MM_DEVICE_ID);
		if (!v->quiet_scan) {
			puts(" version=");
			put_dec(version);
			puts(" device=");
			put_dec(id);
			puts(" vendor=");
			put_hex8(rd32(base + MM_VENDOR_ID));
			puts("\n");
		}
		if (id == want_id && version == 1)
			legacy = 1;
		if (id == want_id && version == 2 && !found) {
			v->mmio = 1;
			v->base = base;
			v->mmio_irq = (u32)irq;
			found = 1;
		}
		continue;
bad:
		if (!v->quiet_scan) {
			puts("mmio: cannot parse ");
			for (const char *q = t; q < end; q++)
				putc(*q);
			puts("\n");
		}
	}
	if (!found) {
		if (legacy)
			fail2(v, "virtio-mmio ", what, " is version 1 (legacy)");
		else
			fail2(v, "no virtio-mmio ", what, "");
		return -1;
	}
	put_key(v, "-transport: mmio ");
	put_hex(v->base);
	puts(" irq=");
	put_dec(v->mmio_irq);
	puts("\n");
	return 0;
}
