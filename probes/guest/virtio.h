/*
 * The virtio 1.x transports the probe's drivers share (virtio.c): virtio over PCI
 * (spec 4.1, modern interface through the vendor capabilities) and virtio-mmio version 2
 * (spec 4.2), split virtqueues (2.7), and the interrupt modes (polling, MSI-X, INTx or
 * the virtio-mmio IRQ through the IOAPIC). The drivers: virtio_blk.c (`blk`),
 * virtio_net.c (`net`), virtio_misc.c (`rng`, `console`).
 */
#ifndef PROBE_VIRTIO_H
#define PROBE_VIRTIO_H

#include "pci.h"

/* Device status (2.1) */
#define ST_ACKNOWLEDGE 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FEATURES_OK 8
#define ST_NEEDS_RESET 64
#define ST_FAILED 128

/* Reserved feature bits (6) */
#define F(b) (1UL << (b))
#define F_INDIRECT_DESC 28
#define F_EVENT_IDX 29
#define F_VERSION_1 32
#define F_ACCESS_PLATFORM 33

/* Split virtqueue (2.7) */
#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define DESC_F_INDIRECT 4
#define AVAIL_F_NO_INTERRUPT 1

/* The largest queue the probe uses: the device's maximum is cut to this. */
#define VQ_MAX 16

struct vring_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct vring_avail {
	u16 flags, idx;
	u16 ring[VQ_MAX];
	u16 used_event;
};

struct vring_used {
	u16 flags, idx;
	struct {
		u32 id, len;
	} ring[VQ_MAX];
	u16 avail_event;
};

/* One queue's three rings in one page: descriptors (16-byte aligned), driver area
 * (2-byte aligned) and device area (4-byte aligned). */
struct vring_page {
	struct vring_desc desc[VQ_MAX];
	struct vring_avail avail;
	struct vring_used used __attribute__((aligned(64)));
} __attribute__((aligned(4096)));

struct vq {
	u16 index;		/* the queue's number on the device */
	u16 size, max;
	u16 notify_off;		/* PCI: queue_notify_off */
	u16 msix_entry;		/* with msix: the MSI-X table entry of this queue */
	u16 next_free;		/* vq_run(): where the next chain starts */
	u16 avail_idx, last_used;
	u16 kicked_idx;		/* EVENT_IDX: avail_idx at the last vq_kick */
	int event_idx;		/* EVENT_IDX negotiated: used_event/avail_event rule */
	int dead;		/* a request got lost: no further requests */
	struct vring_desc *desc;
	volatile struct vring_avail *avail;
	volatile struct vring_used *used;
};

#define IRQ_POLL 0
#define IRQ_MSIX 1
#define IRQ_INTX 2

#define VDEV_MAX_VEC 8

struct vdev {
	const char *name;	/* report prefix: "blk", "net", "rng", "vcon" */
	const char *err;	/* the first failure, for <name>-result (points to errbuf) */
	char errbuf[80];
	int quiet_scan;		/* find_mmio: do not print a `mmio:` line per token */
	int mmio;
	u64 base;		/* virtio-mmio registers */
	u32 mmio_irq;
	struct pci_dev *pci;
	u64 common, isr, devcfg, notify_base;
	u32 notify_mult;
	int irq;		/* IRQ_* */
	int gsi;
	/* CPU vector of MSI-X entry e (entry 0: configuration change). INTx and the
	 * virtio-mmio IRQ use vec[1]. */
	u8 vec[VDEV_MAX_VEC];
	u32 msix_entries;	/* MSI-X table entries in use (config + queues) */
	volatile u32 irqs, cfg_irqs, isr_other;
	volatile u32 entry_irqs[VDEV_MAX_VEC];	/* MSI-X interrupts per entry */
	int event_idx;		/* VIRTIO_F_EVENT_IDX negotiated (token evidx) */
	u32 kicks, kicks_suppressed;	/* vq_kick calls that notified / that avail_event spared */
};

/* Adds "<name>: reason" to the probe's failures; the first reason is kept in v->err. */
void vdev_fail(struct vdev *v, const char *reason);
/* Prints "<name><suffix>", e.g. put_key(v, "-queue: "). */
void put_key(struct vdev *v, const char *suffix);
/* "0x" and 16 hex digits. */
void put_feat(u64 f);

/* Transport discovery. find_pci: the first function with vendor 0x1af4 and one of the
 * two device IDs; prints "<name>-transport: pci ..." and the capabilities line
 * ("virtio-pci:" for blk, "<name>-virtio-pci:" for the others), enables the device.
 * find_mmio: the first version-2 device with this ID among the virtio_mmio.device=
 * tokens. `what` names the device in failures ("virtio-blk", ...). */
int vdev_find_pci(struct vdev *v, u16 modern, u16 transitional, const char *what);
int vdev_find_mmio(struct vdev *v, u32 id, const char *what);

/* Reset, ACKNOWLEDGE, DRIVER; returns the offered features (0 and a failure if the
 * device does not reset). */
u64 vdev_start(struct vdev *v);
void vdev_set_status(struct vdev *v, u8 s);
u8 vdev_status(struct vdev *v);
/* Writes the accepted features and sets FEATURES_OK. */
void vdev_write_features(struct vdev *v, u64 f);
/* Sets DRIVER_OK and checks the status; returns 0 or -1 (with a failure). */
int vdev_driver_ok(struct vdev *v);

/* Device configuration reads under the configuration generation (2.4.1). */
u64 vdev_cfg_read(struct vdev *v, u32 off, int wide);	/* 32-bit, or 64 with wide */
u16 vdev_cfg16(struct vdev *v, u32 off);
u8 vdev_cfg8(struct vdev *v, u32 off);

/* Interrupts: masks the 8259s and sets the TPR (not for polling); then MSI-X with
 * `nentries` table entries (config + queues), or INTx / the virtio-mmio IRQ. Each prints
 * "<name>-irq: ...". Return 0 or -1 (with a failure). */
void vdev_irq_prepare(struct vdev *v);
int vdev_setup_msix(struct vdev *v, u32 nentries);
int vdev_setup_intx(struct vdev *v);
/* The MSI-X entry a queue should use when the driver wants `want` (entry 1 if the
 * table is smaller). Valid after vdev_setup_msix. */
u16 vdev_msix_entry(struct vdev *v, u16 want);

/* Sets up queue q->index with the rings in `ring` (cleared here): size = the device's
 * maximum cut to `want` (at most VQ_MAX), addresses, msix vector, enable. Prints
 * "<name>-queue: [q=N ]size=N max=N [notify_off=N]" (q= with show_index). */
int vq_setup(struct vdev *v, struct vq *q, u16 index, struct vring_page *ring, u16 want, int show_index);

/* Puts descriptor chain `head` in the avail ring (no notification). */
void vq_publish(struct vq *q, u16 head);
/* Notifies the device about queue q. */
void vq_kick(struct vdev *v, struct vq *q);
/* Takes the next used element: returns its id and sets *len, or -1 if there is none. */
int vq_pop(struct vq *q, u32 *len);

/* One request through vq_run(): n buffers, chained directly (descriptors go round the
 * ring) or, with `ind`, through one indirect table. Notifies and waits (at most about
 * 2 s; with interrupts, also for the interrupt). Returns the used length, or -1. */
struct seg {
	void *addr;
	u32 len;
	int dev_writes;
};
i64 vq_run(struct vdev *v, struct vq *q, const struct seg *s, u32 n, struct vring_desc *ind);

/* Prints "<name>-irqs: N config=N other=N" (interrupt modes only). */
void vdev_put_irqs(struct vdev *v);
/* Resets the device and masks its IOAPIC pin. */
void vdev_stop(struct vdev *v);
/* Prints "<name>-result: ok" or "<name>-result: fail <reason>". */
void vdev_put_result(struct vdev *v);

/* Common waits: with interrupts `sti; hlt` (the timer wakes it), else `pause`. */
void vdev_idle(struct vdev *v);

/* Reset, features (printed as "<name>-features: 0x.." and, after what the driver
 * accepts, "<name>-driver-features: 0x.."; `names` may append names of bits), VERSION_1
 * required, FEATURES_OK checked. Returns the accepted features, or 0 after a failure. */
u64 vdev_negotiate(struct vdev *v, u64 want, void (*names)(u64));

/* Memory that is not cleared at boot (rings are cleared by vq_setup, buffers are written
 * before use): keeps the boot-time .bss clearing short. */
#define NOINIT __attribute__((section(".noinit")))

#endif
