/*
 * virtio 1.x transport register maps: the virtio-pci common configuration
 * (spec 4.1.4.3) and the virtio-mmio version 2 registers (spec 4.2.2).
 * Shared by the drivers (virtio.c) and the transport checks (virtio_spec.c).
 */
#ifndef VIRTIO_REGS_H
#define VIRTIO_REGS_H

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
#define MM_SHM_SEL 0x0ac
#define MM_SHM_LEN_LO 0x0b0
#define MM_SHM_LEN_HI 0x0b4
#define MM_SHM_BASE_LO 0x0b8
#define MM_SHM_BASE_HI 0x0bc
#define MM_GENERATION 0x0fc
#define MM_CONFIG 0x100

#define MMIO_MAGIC 0x74726976	/* "virt" */

#endif
