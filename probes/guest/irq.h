/*
 * irq.c: the 8254 PIT, the 8259A pair and the IOAPIC (book chapter 3), driven by the
 * command-line tokens `pit`, `pic` and `ioapic` (see the README, "Interrupt
 * controllers"). Without those tokens none of this runs and nothing is printed.
 */
#ifndef PROBE_IRQ_H
#define PROBE_IRQ_H

#include "lib.h"

/* Vectors used only by irq.c (its own IDT stubs, installed while a test runs). */
#define VEC_PIC_MASTER 0x30	/* the 8259A pair remapped to 0x30-0x37 / 0x38-0x3f (`pic`) */
#define VEC_PIC_SLAVE  0x38
#define VEC_PIT        0x60	/* PIT IRQ 0 through the IOAPIC (`pit`) */
#define VEC_SER_LEVEL  0x61	/* COM1 through IOAPIC pin 4, level-triggered (`rx=N ioapic`) */

/* Runs the `pit`, `pic` and `ioapic` tests that need no serial input and prints
 * their lines (before serial-rx). Does nothing without those tokens. */
void irq_report(void);
/* With rx=N and `ioapic` (level-triggered IOAPIC pin 4) or `pic` (8259A IRQ 4):
 * routes COM1's interrupt that way instead of rx_setup()'s edge IOAPIC entry and
 * returns 1; returns 0 otherwise (the caller then does rx_setup()). */
int irq_rx_setup(void);
/* After report_rx(): prints ioapic-level or pic-irqs for the serial input. */
void irq_rx_report(void);

/* probe.c: stores one received byte for report_rx() (as serial_isr() does). */
void rx_push(u8 c);

#endif
