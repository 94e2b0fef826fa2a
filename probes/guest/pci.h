/* PCI bus 0 as the probe sees it (pci.c), for the virtio-pci driver (virtio_blk.c). */
#ifndef PROBE_PCI_H
#define PROBE_PCI_H

#include "lib.h"

#define BAR_NONE  0
#define BAR_IO    1
#define BAR_MEM32 2
#define BAR_MEM64 3

struct pci_bar {
	u64 addr;
	u64 size;
	u8 type;	/* BAR_* (a mem64 BAR's upper half is BAR_NONE) */
	u8 prefetch;
};

struct pci_dev {
	u8 bus, dev, fn, hdr;
	u16 vendor, device;
	u8 class, subclass, progif, rev;
	u8 irq_line, irq_pin;
	struct pci_bar bar[6];
};

#define PCI_MAX_DEVS 64
extern struct pci_dev pci_devs[PCI_MAX_DEVS];
extern u32 pci_ndevs;
/* "cf8", "ecam" or NULL if the bus was not found. */
extern const char *pci_mech;

u8 pci_rd8(const struct pci_dev *d, u32 off);
u16 pci_rd16(const struct pci_dev *d, u32 off);
u32 pci_rd32(const struct pci_dev *d, u32 off);
void pci_wr8(const struct pci_dev *d, u32 off, u8 v);
void pci_wr16(const struct pci_dev *d, u32 off, u16 v);
void pci_wr32(const struct pci_dev *d, u32 off, u32 v);

/* Prints "BB:DD.F". */
void pci_put_bdf(const struct pci_dev *d);
/* Offset of the first capability with this ID after `after` (0: from the start), or 0. */
u8 pci_find_cap(const struct pci_dev *d, u8 id, u8 after);
/* Gives every memory/I/O BAR of `d` an address if it has none (or always with
 * pci-reassign) from the probe's windows, then enables memory and I/O decode and bus
 * mastering. Returns 0, or -1 if a BAR did not fit. */
int pci_enable_device(struct pci_dev *d);

#endif
