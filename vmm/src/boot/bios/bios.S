/*
 * rvmm's minimal real-mode BIOS (book chapter 2.2): just enough firmware for a
 * Linux real-mode setup program, which asks the BIOS for the memory map with
 * `int 0x15, eax=0xE820` before it switches to protected mode.
 *
 * The image is linked to run at F000:8000 (physical 0xF8000). The VMM reads the
 * handler table at its start to fill the interrupt vector table, and writes the
 * data block at F000:7000 (physical 0xF7000) before the guest starts:
 *
 *   +0  u32  number of e820 entries
 *   +4  u16  int 15h/E801: KiB between 1 MiB and 16 MiB
 *   +6  u16  int 15h/E801: 64 KiB blocks above 16 MiB (below the 32-bit hole)
 *   +8  u16  int 15h/AH=88: KiB above 1 MiB (capped at 0xFFFF)
 *   +10 u16  int 12h: KiB of conventional memory
 *   +16      e820 entries, 20 bytes each (u64 base, u64 length, u32 type)
 *
 * Handlers return a status in CF (and ZF for int 16h) by editing the FLAGS
 * image that `int` pushed, so that `iret` hands it back to the caller.
 * Only plain 8086/386 instructions are used; no BIOS calls are nested.
 */
	.code16
	.section .text
	.globl _start
_start:
	/* Handler table read by the VMM: (vector, offset) pairs, ended by 0xffff. */
	.word 0x10, int10
	.word 0x12, int12
	.word 0x15, int15
	.word 0x16, int16
	.word 0x1a, int1a
	.word 0xffff, default_handler

	.set DATA, 0x7000
	.set E820_COUNT, DATA + 0
	.set E801_LOW, DATA + 4
	.set E801_HIGH, DATA + 6
	.set EXT88, DATA + 8
	.set BASE_KB, DATA + 10
	.set E820_TABLE, DATA + 16
	.set COM1, 0x3f8

/* Sets CF in the caller's FLAGS. Stack on entry: ret, ip, cs, flags. */
set_carry:
	push %bp
	mov %sp, %bp
	orw $1, 8(%bp)
	pop %bp
	ret
clear_carry:
	push %bp
	mov %sp, %bp
	andw $0xfffe, 8(%bp)
	pop %bp
	ret

default_handler:
	iret

/* int 12h: conventional memory size in KiB. */
int12:
	mov %cs:BASE_KB, %ax
	iret

/* int 1Ah: no RTC services; report failure. */
int1a:
	call set_carry
	iret

/* int 10h: video. Teletype output goes to COM1; the rest answers "80x25 text". */
int10:
	cmp $0x0e, %ah
	je 1f
	cmp $0x0f, %ah
	je 2f
	cmp $0x03, %ah
	je 3f
	iret
1:	push %dx
	push %ax
	mov $COM1 + 5, %dx
4:	in %dx, %al
	test $0x20, %al
	jz 4b
	pop %ax
	mov $COM1, %dx
	out %al, %dx
	pop %dx
	iret
2:	mov $0x5003, %ax	/* AH = 80 columns, AL = mode 3 */
	xor %bh, %bh
	iret
3:	xor %cx, %cx
	xor %dx, %dx
	iret

/* int 16h: keyboard. There is none: no key waiting, no shift keys. */
int16:
	cmp $0x01, %ah
	je 1f
	cmp $0x11, %ah
	je 1f
	xor %ax, %ax
	iret
1:	push %bp
	mov %sp, %bp
	orw $0x40, 6(%bp)	/* ZF = 1: no keystroke */
	pop %bp
	iret

/* int 15h: system services. */
int15:
	cmp $0xe820, %eax
	je e820
	cmp $0xe801, %ax
	je e801
	cmp $0x88, %ah
	je ext88
	cmp $0x24, %ah
	je a20
	mov $0x86, %ah		/* function not supported */
	call set_carry
	iret

ext88:
	mov %cs:EXT88, %ax
	call clear_carry
	iret

e801:
	mov %cs:E801_LOW, %ax
	mov %cs:E801_HIGH, %bx
	mov %ax, %cx
	mov %bx, %dx
	call clear_carry
	iret

/* The A20 gate is always open in a VM. */
a20:
	cmp $0x02, %al
	je 1f
	cmp $0x03, %al
	je 2f
	xor %ah, %ah
	call clear_carry
	iret
1:	mov $0x0001, %ax	/* AH = 0, AL = 1: enabled */
	call clear_carry
	iret
2:	xor %ax, %ax
	mov $0x0003, %bx	/* supported through the keyboard controller and port 0x92 */
	call clear_carry
	iret

/*
 * E820: EBX = continuation (entry index), ES:DI = buffer, ECX = its size,
 * EDX = 'SMAP'. Returns EAX = 'SMAP', ECX = 20, EBX = next index or 0 after
 * the last entry, CF clear; CF set for a bad call.
 */
e820:
	cmp $0x534d4150, %edx
	jne 9f
	cmp $20, %ecx
	jb 9f
	cmp %cs:E820_COUNT, %ebx
	jae 9f
	push %si
	push %di
	push %ds
	push %cs
	pop %ds
	/* SI = E820_TABLE + EBX * 20 (EBX < 128, checked by the VMM's count). */
	mov %bx, %si
	shl $2, %si		/* 4 * index */
	mov %si, %cx
	shl $2, %cx		/* 16 * index */
	add %cx, %si		/* 20 * index */
	add $E820_TABLE, %si
	mov $20, %cx
	cld
	rep movsb
	pop %ds
	pop %di
	pop %si
	inc %ebx
	cmp %cs:E820_COUNT, %ebx
	jb 1f
	xor %ebx, %ebx
1:	mov $0x534d4150, %eax
	mov $20, %ecx
	call clear_carry
	iret
9:	mov $0x86, %ah
	call set_carry
	iret
