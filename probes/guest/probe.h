/* Shared constants between the probe's assembly and C code. */
#ifndef PROBE_H
#define PROBE_H

/* Boot kinds passed from the entry points to probe_main(). */
#define KIND_LINUX64   1
#define KIND_PVH       2
#define KIND_BZIMAGE64 3
#define KIND_BZIMAGE32 4
#define KIND_REALMODE  5 /* decided in C: BZIMAGE32 + RM_MAGIC in boot_params.scratch */

/* Written by the bzImage real-mode setup into boot_params.scratch (0x1e4): "RVRM". */
#define RM_MAGIC 0x4d525652

/* GDT selectors (the probe's own GDT, also used by the AP trampoline). */
#define SEL_CODE64 0x08
#define SEL_DATA   0x10
#define SEL_CODE32 0x18

/* Interrupt vectors. */
#define VEC_SERIAL   0x30
#define VEC_TIMER    0x31
/* 0x40-0x5f: virtio devices (virtio.c dispatches them by vector). */
#define VEC_VIRTIO_FIRST 0x40
#define VEC_VIRTIO_LAST  0x5f
#define VEC_BLK      0x40 /* virtio-blk request queue (MSI-X entry 1, INTx or virtio-mmio IRQ) */
#define VEC_BLK_CFG  0x41 /* virtio-blk configuration change (MSI-X entry 0) */
#define VEC_SPEC     0x42 /* vmmio-spec: the virtio-rng virtio-mmio IRQ */
#define VEC_NET      0x48 /* virtio-net: 0x48 + MSI-X entry (0 config, 1.. queues); INTx 0x49 */
#define VEC_RNG      0x50 /* virtio-rng: 0x50 + MSI-X entry; INTx 0x51 */
#define VEC_VCON     0x54 /* virtio-console: 0x54 + MSI-X entry; INTx 0x55 */
#define VEC_VSOCK    0x58 /* virtio-vsock: 0x58 + MSI-X entry (0 config, 1-3 queues); INTx 0x59 */
#define VEC_BALLOON  0x5c /* virtio-balloon: 0x5c + MSI-X entry (0 config, 1-3 queues); INTx 0x5d */
#define VEC_SPURIOUS 0xff

/* Where the AP trampoline is copied (SIPI vector 0x08). */
#define TRAMPOLINE_ADDR 0x8000

#define STACK_SIZE 0x4000

#endif
