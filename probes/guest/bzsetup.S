/*
 * Real-mode setup of probe.bzImage (boot protocol 2.15), linked at offset 0 of the
 * setup segment. The boot loader loads it at SEG:0 (QEMU and rvmm: SEG = 0x1000, so
 * boot_params is at 0x10000), sets DS = ES = SS = SEG and jumps to SEG+0x20:0 (or
 * SEG:0x200). The setup uses the loaded image at SEG:0 as struct boot_params (its code
 * starts past boot_params.e820_table) and:
 *   1. normalizes CS to SEG and sets up a stack,
 *   2. reads the BIOS memory map with int 0x15 / E820 into boot_params.e820_table,
 *   3. records that it ran (RM_MAGIC in boot_params.scratch at 0x1e4),
 *   4. enables A20 if needed, enters 32-bit protected mode and jumps to
 *      code32_start with ESI = boot_params, as Linux's setup does.
 * build.rs patches setup_sects, syssize, init_size and kernel_info_offset.
 */
#include "probe.h"

#define SMAP 0x534d4150
#define E820_MAX 128

	.code16
	.text
	.globl _start
_start:
	/*
	 * The boot sector area (0x000-0x1f0) is left zero: a boot loader reads it as the
	 * first part of struct boot_params.
	 */
	.org	0x1f1, 0
hdr:
setup_sects:	.byte	0		/* patched */
root_flags:	.word	0
syssize:	.long	0		/* patched */
ram_size:	.word	0
vid_mode:	.word	0xffff
root_dev:	.word	0
boot_flag:	.word	0xaa55
	/* 0x200 */
	.byte	0xeb, start_of_setup - 1f	/* jmp short start_of_setup */
1:	.ascii	"HdrS"
version:	.word	0x020f
realmode_swtch:	.long	0
start_sys_seg:	.word	0x1000
kernel_version:	.word	kver - 0x200
type_of_loader:	.byte	0
loadflags:	.byte	0x01		/* LOADED_HIGH */
setup_move_size: .word	0x8000
code32_start:	.long	0x100000
ramdisk_image:	.long	0
ramdisk_size:	.long	0
bootsect_kludge: .long	0
heap_end_ptr:	.word	0
ext_loader_ver:	.byte	0
ext_loader_type: .byte	0
cmd_line_ptr:	.long	0
initrd_addr_max: .long	0x7fffffff
kernel_alignment: .long	0x200000
relocatable_kernel: .byte 0
min_alignment:	.byte	12
xloadflags:	.word	0x0001		/* XLF_KERNEL_64 */
cmdline_size:	.long	2047
hardware_subarch: .long	0
hardware_subarch_data: .quad 0
payload_offset:	.long	0
payload_length:	.long	0
setup_data:	.quad	0
pref_address:	.quad	0x100000
init_size:	.long	0		/* patched */
handover_offset: .long	0
kernel_info_offset: .long 0		/* patched */

start_of_setup:
	jmp	setup_main
	/*
	 * The setup runs in place, where its image doubles as struct boot_params: keep the
	 * code clear of boot_params.e820_table (0x2d0 + 128 * 20 = 0xcd0), which it fills.
	 */
	.org	0x2d0, 0
	.org	0xd00, 0
setup_main:
	cli
	cld
	movw	%ds, %ax
	movw	%ax, %es
	movw	%ax, %ss
	/* Stack: the top of the heap the loader gave us, else just past this code. */
	movw	$(setup_end + 0x600), %sp
	testb	$0x80, loadflags	/* CAN_USE_HEAP */
	jz	1f
	movw	heap_end_ptr, %sp
	addw	$0x200, %sp
1:	andw	$~0xf, %sp
	/* Normalize CS = DS. */
	pushw	%ds
	pushw	$2f
	lretw
2:
	/* ---- E820 ---- */
	xorl	%ebx, %ebx
	xorw	%bp, %bp
	movw	$0x2d0, %di
3:	movl	$0xe820, %eax
	movl	$20, %ecx
	movl	$SMAP, %edx
	pushw	%di
	pushw	%bp
	int	$0x15
	popw	%bp
	popw	%di
	jc	4f
	cmpl	$SMAP, %eax
	jne	4f
	incw	%bp
	addw	$20, %di
	cmpw	$E820_MAX, %bp
	jae	4f
	testl	%ebx, %ebx
	jnz	3b
4:	movw	%bp, %ax
	movb	%al, 0x1e8		/* boot_params.e820_entries */
	movl	$RM_MAGIC, 0x1e4	/* boot_params.scratch: the real-mode setup ran */

	/* ---- A20: enable through port 0x92 if 0000:0200 aliases FFFF:0210 ---- */
	xorw	%ax, %ax
	movw	%ax, %fs
	decw	%ax
	movw	%ax, %gs
	movw	%fs:0x200, %dx
	movw	%dx, %ax
	notw	%ax
	movw	%ax, %fs:0x200
	cmpw	%gs:0x210, %ax
	movw	%dx, %fs:0x200
	jne	5f
	inb	$0x92, %al
	orb	$0x02, %al
	andb	$0xfe, %al
	outb	%al, $0x92
5:
	/* ---- protected mode ---- */
	xorl	%ebx, %ebx
	movw	%ds, %bx
	shll	$4, %ebx		/* EBX = linear address of boot_params */
	leal	gdt(%ebx), %eax
	movl	%eax, gdtr + 2
	leal	pm32(%ebx), %eax
	movl	%eax, pm32_ptr
	lidtl	idtr_null
	lgdtl	gdtr
	movl	%cr0, %eax
	orb	$1, %al
	movl	%eax, %cr0
	ljmpl	*pm32_ptr

	.code32
pm32:
	movl	$0x18, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs
	movl	%ebx, %esi		/* ESI = boot_params */
	movl	0x214(%esi), %eax	/* code32_start */
	xorl	%ebp, %ebp
	xorl	%edi, %edi
	xorl	%ebx, %ebx
	jmp	*%eax

	.balign 8
gdt:
	.quad	0
	.quad	0
	.quad	0x00cf9a000000ffff	/* 0x10: __BOOT_CS */
	.quad	0x00cf92000000ffff	/* 0x18: __BOOT_DS */
gdt_end:
gdtr:
	.word	gdt_end - gdt - 1
	.long	0			/* set at run time */
idtr_null:
	.word	0
	.long	0
pm32_ptr:
	.long	0			/* set at run time */
	.word	0x10
kver:
	.asciz	"rvmm-probe"
	.balign	512, 0
setup_end:
