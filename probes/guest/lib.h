/*
 * What the probe's C files share: fixed-size types, port and MMIO accessors, and the
 * helpers that probe.c provides to pci.c and virtio_blk.c (console output, failures,
 * command-line options, LAPIC/IOAPIC and the timer used to bound waits).
 *
 * Everything is built with -mgeneral-regs-only: no SSE or x87 (see shared/HOST-KVM.md).
 */
#ifndef PROBE_LIB_H
#define PROBE_LIB_H

#include "probe.h"

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;
/* For word-wise loops over byte buffers. */
typedef u64 __attribute__((may_alias)) u64a;

#define NULL ((void *)0)

/* ---- port I/O ---- */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline u16 inw(u16 port)
{
	u16 v;
	__asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline u32 inl(u16 port)
{
	u32 v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

/* ---- CPU ---- */
static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}
static inline u64 rdmsr(u32 msr)
{
	u32 lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((u64)hi << 32) | lo;
}
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
/* Full barrier between the driver's ring writes and the device's view (mfence works here). */
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }
/* Sleep until an interrupt, with no window between the check and the hlt. */
static inline void wait_irq(void) { __asm__ volatile("sti; hlt; cli" ::: "memory"); }

/* ---- MMIO (the probe identity-maps the low 4 GiB, the top GiB uncached) ---- */
static inline u8 rd8(u64 a) { return *(volatile u8 *)a; }
static inline u16 rd16(u64 a) { return *(volatile u16 *)a; }
static inline u32 rd32(u64 a) { return *(volatile u32 *)a; }
static inline u64 rd64(u64 a) { return *(volatile u64 *)a; }
static inline void wr8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void wr16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void wr32(u64 a, u32 v) { *(volatile u32 *)a = v; }

/* ---- probe.c: libc bits ---- */
void *memset(void *d, int c, u64 n);
void *memcpy(void *d, const void *s, u64 n);
int memcmp(const void *a, const void *b, u64 n);

/* ---- probe.c: COM1 report ---- */
#define COM1 0x3f8		/* the report's UART */
void putc(char c);
/* CMOS/RTC register `reg` through ports 0x70/0x71 (probe.c). */
u8 cmos_read(u8 reg);
void cmos_write(u8 reg, u8 v);
void puts(const char *s);
void put_hex(u64 v);		/* 0x, no leading zeros */
void put_hex8(u32 v);		/* 0x and 8 digits */
void put_hexn(u64 v, int digits);	/* exactly `digits` digits, no 0x */
void put_dec(u64 v);
/* Adds a reason to the probe-result failure list. */
void fail(const char *reason);

/* ---- probe.c: command line ---- */
extern char cmdline[4096];
/* Next whitespace-separated token at or after *s: returns its start, sets *len, advances *s. */
const char *next_token(const char **s, u32 *len);
/* Parses a number: 0x.. hex or decimal, with an optional K/M/G suffix if `suffix`.
 * Returns the number of characters used (0 if none). */
u32 parse_num(const char *s, u32 len, int suffix, u64 *out);

struct probe_opts {
	int pci;	/* enumerate PCI bus 0 */
	int blk;	/* drive a virtio-blk device */
	int mmio;	/* ... through virtio-mmio rather than PCI */
	int msix;	/* wait for MSI-X interrupts */
	int intx;	/* wait for the legacy INTx line (or the virtio-mmio IRQ) */
	int ecam;	/* prefer ECAM (ACPI MCFG, or ecam=<base>) over mechanism 1 */
	u64 ecam_base;	/* ecam=<base>: ECAM of bus 0 when there is no MCFG */
	int reassign;	/* assign the virtio device's BARs even if firmware did */
	u32 seed;	/* pattern seed */
	u64 pcimem;	/* 32-bit memory window for BARs the probe assigns */
	u64 pcimem_size;
	u64 pciio;	/* I/O window for BARs the probe assigns */
	int net;	/* drive a virtio-net device */
	int rng;	/* drive a virtio-rng device */
	int vcon;	/* drive a virtio-console device (token `console`) */
	int vpci_spec;	/* vpci-spec: virtio-pci transport spec checks on the virtio-rng function */
	int vmmio_spec;	/* vmmio-spec: virtio-mmio transport spec checks on the virtio-rng device */
	int legacy_spec;	/* legacy-spec: UART, RTC, i8042, port 0x61 and CF8 datasheet checks */
	int mq;		/* virtio-net: 2 queue pairs through the control queue */
	int event_idx;	/* evidx: negotiate VIRTIO_F_EVENT_IDX and follow avail_event/used_event */
	u8 ip[4];	/* virtio-net: our IPv4 address (ip=), default 192.0.2.2 */
	u8 peer[4];	/* virtio-net: the peer to ARP and ping (peer=), default 192.0.2.1 */
	u32 net_serve;	/* net-serve=SECONDS: answer ARP and ping that long afterwards */
	u32 vcon_rx;	/* vcon-rx=N: bytes to wait for on the console's receiveq */
	int vsock;	/* vsock: connect to the host (vsock-port=P, default 1234) and echo */
	u32 vsock_port;
	int vsock_listen_set;	/* vsock-listen=Q: accept one host connection on guest port Q */
	u32 vsock_listen;
	u32 vsock_bytes;	/* vsock-bytes=N: the listener shuts down after echoing N bytes */
	u32 vsock_wait;	/* vsock-wait=SECONDS: how long the listener waits (default 10) */
	int balloon;	/* drive a virtio-balloon device */
	u32 balloon_pages;	/* balloon-pages=N: pages to give back (default 1024) */
	u32 balloon_wait;	/* balloon-wait=SECONDS: each wait for the host's target (default 10) */
	int exits_set;	/* exits=N: N port reads of 0xf4 and N ECAM reads before exiting */
	u32 exits;	/* (rvmm-bench --exits: the VMM's exit round trip) */
};
extern struct probe_opts opts;

/* ---- probe.c: platform ---- */
extern u32 bsp_apic_id;
u32 lapic_rd(u32 reg);
void lapic_wr(u32 reg, u32 v);
/* Masks both 8259s (after remapping them to 0x20/0x28). */
void pic_mask_all(void);
/* Points `gsi` at `vector` on the BSP through the IOAPIC that serves it (from the MADT,
 * the MP table, or 0xfec00000). ISA IRQs < 16 go through the MADT interrupt source
 * overrides first. Returns the GSI used, or -1 if no IOAPIC has that pin. */
int ioapic_route_irq(u32 irq, u32 vector, int level, int active_low);
void ioapic_mask_gsi(u32 gsi);
/* ECAM from the ACPI MCFG (segment 0), 0 if none. */
extern u64 mcfg_base;
extern u32 mcfg_bus_end;

/* 10 ms periodic LAPIC timer (VEC_TIMER) as a wake-up for bounded waits. */
extern volatile u64 ticks;
void timer_start(void);
void timer_stop(void);

/* A rough TSC rate for bounding waits; only ever used as an upper bound. */
#define TSC_PER_MS 3000000UL

/* The RTC's seconds register as it is (BCD or binary), or 0xff during an update: for
 * counting seconds of wall-clock time without trusting the TSC rate. */
u8 rtc_second(void);

/* ---- pci.c, virtio_blk.c, virtio_net.c, virtio_misc.c, virtio_spec.c, legacy_spec.c ---- */
void pci_report(void);
void blk_report(void);
void net_report(void);
void rng_report(void);
void vpci_spec_report(void);
void vmmio_spec_report(void);
void legacy_spec_report(void);	/* legacy_spec.c */
void vcon_report(void);
void vsock_report(void);
void balloon_report(void);

/* probe.c: RAM for a driver's own use (see probe.c), and the e820 RAM total. */
u64 probe_find_ram(u64 min, u64 size);
u64 probe_ram_total(void);

#endif
