/*
 * Entry points of the probe payload (linked at physical 0x100000).
 *
 *   bz_entry32   0x100000  bzImage 32-bit entry (ESI = boot_params, protected mode, paging off)
 *   bz_entry64   0x100200  bzImage 64-bit entry (RSI = boot_params, long mode, identity map)
 *   elf_entry64            ELF e_entry, Linux 64-bit boot protocol (RSI = boot_params)
 *   pvh_entry32            PVH entry from the Xen ELF note (EBX = hvm_start_info)
 *
 * Every path ends in probe_main(kind, info) in long mode. The 32-bit paths build
 * page tables for the first GiB here; probe_main() maps the rest of the low 4 GiB.
 *
 * Only instructions that KVM's instruction emulator handles are used: no int n,
 * no SSE, no x87 (see shared/HOST-KVM.md).
 */
#include "probe.h"

/* ------------------------------------------------------------------------- */
	.section .head, "ax"
	.code32
	.globl bz_entry32
bz_entry32:				/* offset 0x000 */
	cli
	movl	$KIND_BZIMAGE32, %edi
	jmp	entry32_common

	.org 0x200, 0xf4
	.code64
	.globl bz_entry64
bz_entry64:				/* offset 0x200 */
	cli
	movl	$KIND_BZIMAGE64, %edi
	jmp	entry64_common

/* ------------------------------------------------------------------------- */
	.text
	.code64
	.globl elf_entry64
elf_entry64:
	cli
	movl	$KIND_LINUX64, %edi
	jmp	entry64_common

	.code32
	.globl pvh_entry32
pvh_entry32:
	cli
	movl	%ebx, %esi
	movl	$KIND_PVH, %edi
	/* fall through */

/* EDI = kind, ESI = info pointer; 32-bit protected mode, flat segments, paging off. */
entry32_common:
	cld
	lgdt	gdt_desc
	ljmp	$SEL_CODE32, $1f
1:	movl	$SEL_DATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs
	movl	$stack_top, %esp
	movl	%edi, %ebx		/* kind */
	movl	%esi, %ebp		/* info */

	/* zero .bss */
	movl	$_bss_start, %edi
	movl	$_bss_end, %ecx
	subl	%edi, %ecx
	shrl	$2, %ecx
	xorl	%eax, %eax
	rep stosl

	/* PML4[0] -> PDPT, PDPT[0] -> PD0, PD0 = first GiB in 2 MiB pages */
	movl	$pdpt, %eax
	orl	$3, %eax
	movl	%eax, pml4
	movl	$pd, %eax
	orl	$3, %eax
	movl	%eax, pdpt
	movl	$pd, %edi
	movl	$0x83, %eax
	movl	$512, %ecx
2:	movl	%eax, (%edi)
	addl	$0x200000, %eax
	addl	$8, %edi
	decl	%ecx
	jnz	2b

	movl	%cr4, %eax
	orl	$0x20, %eax		/* PAE */
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$0xc0000080, %ecx	/* EFER.LME */
	rdmsr
	orl	$0x100, %eax
	wrmsr
	movl	%cr0, %eax
	orl	$0x80000001, %eax	/* PG | PE */
	movl	%eax, %cr0
	ljmp	$SEL_CODE64, $long_from32

	.code64
long_from32:
	movl	$SEL_DATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%ebx, %edi
	movl	%ebp, %esi
	jmp	call_main

/* EDI = kind, RSI = boot_params; long mode with the loader's identity map. */
entry64_common:
	cld
	movq	$stack_top, %rsp
	movl	%edi, %ebx
	movq	%rsi, %rbp
	movq	$_bss_start, %rdi
	movq	$_bss_end, %rcx
	subq	%rdi, %rcx
	shrq	$3, %rcx
	xorl	%eax, %eax
	rep stosq
	movl	%ebx, %edi
	movq	%rbp, %rsi
call_main:
	movq	$stack_top, %rsp
	xorl	%ebp, %ebp
	call	probe_main
3:	cli
	hlt
	jmp	3b

/* ------------------------------------------------------------------------- */
/* void load_gdt_and_segments(void): loads the probe GDT and reloads CS/DS/ES/SS. */
	.globl load_gdt_and_segments
load_gdt_and_segments:
	lgdt	gdt_desc(%rip)
	pushq	$SEL_CODE64
	leaq	1f(%rip), %rax
	pushq	%rax
	lretq
1:	movl	$SEL_DATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	xorl	%eax, %eax
	movl	%eax, %fs
	movl	%eax, %gs
	ret

/* ------------------------------------------------------------------------- */
/* Exception stubs: push a dummy error code where the CPU pushes none, then the vector. */
	.macro EXC_NOERR vec
	.globl exc_stub_\vec
exc_stub_\vec:
	pushq	$0
	pushq	$\vec
	jmp	exc_common
	.endm
	.macro EXC_ERR vec
	.globl exc_stub_\vec
exc_stub_\vec:
	pushq	$\vec
	jmp	exc_common
	.endm

	EXC_NOERR 0
	EXC_NOERR 1
	EXC_NOERR 2
	EXC_NOERR 3
	EXC_NOERR 4
	EXC_NOERR 5
	EXC_NOERR 6
	EXC_NOERR 7
	EXC_ERR   8
	EXC_NOERR 9
	EXC_ERR   10
	EXC_ERR   11
	EXC_ERR   12
	EXC_ERR   13
	EXC_ERR   14
	EXC_NOERR 15
	EXC_NOERR 16
	EXC_ERR   17
	EXC_NOERR 18
	EXC_NOERR 19
	EXC_NOERR 20
	EXC_ERR   21
	EXC_NOERR 22
	EXC_NOERR 23
	EXC_NOERR 24
	EXC_NOERR 25
	EXC_NOERR 26
	EXC_NOERR 27
	EXC_NOERR 28
	EXC_ERR   29
	EXC_ERR   30
	EXC_NOERR 31

exc_common:
	movq	(%rsp), %rdi		/* vector */
	movq	8(%rsp), %rdx		/* error code */
	movq	16(%rsp), %rsi		/* RIP */
	andq	$-16, %rsp
	call	exception_handler	/* does not return */
4:	cli
	hlt
	jmp	4b

	.section .rodata
	.balign 8
	.globl exc_stubs
exc_stubs:
	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad exc_stub_\v
	.endr

/* ------------------------------------------------------------------------- */
/* Interrupt stubs: save the caller-saved registers, call the C handler, iretq. */
	.text
	.macro IRQ_STUB name, handler
	.globl \name
\name:
	pushq	%rax
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	cld
	call	\handler
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rax
	iretq
	.endm

	IRQ_STUB serial_stub, serial_isr
	IRQ_STUB timer_stub, timer_isr

/* The virtio vectors VEC_VIRTIO_FIRST..VEC_VIRTIO_LAST: each stub pushes its vector and
 * virtio_common calls virtio_irq(vector) (virtio.c). */
	.macro VIRTIO_STUB vec
virtio_stub_\vec:
	pushq	$\vec
	jmp	virtio_common
	.endm
	.irp v, 64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95
	VIRTIO_STUB \v
	.endr

virtio_common:
	pushq	%rax
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	cld
	movq	72(%rsp), %rdi		/* the vector */
	subq	$8, %rsp		/* keep the call 16-byte aligned */
	call	virtio_irq
	addq	$8, %rsp
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rax
	addq	$8, %rsp		/* the vector */
	iretq

	.section .rodata
	.balign 8
	.globl virtio_stubs
virtio_stubs:
	.irp v, 64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95
	.quad virtio_stub_\v
	.endr
	.text

	.globl spurious_stub
spurious_stub:
	iretq

/* ------------------------------------------------------------------------- */
/* AP entry in long mode, reached from the trampoline. */
	.globl ap_long64
ap_long64:
	movl	$SEL_DATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	$1, %eax
	lock xaddl %eax, ap_count(%rip)
5:	cli
	hlt
	jmp	5b

/* ------------------------------------------------------------------------- */
/*
 * AP trampoline, copied to TRAMPOLINE_ADDR (0x8000) and started with SIPI vector 0x08
 * (CS = 0x0800, IP = 0). Real mode -> protected mode -> long mode with the probe's
 * GDT and page tables, then ap_long64. Kept in .rodata: it is data until copied.
 */
	.section .rodata
	.balign 16
	.globl tramp_start, tramp_end
	.code16
tramp_start:
	cli
	cld
	movw	%cs, %ax
	movw	%ax, %ds
	lgdtl	(tramp_gdtr - tramp_start)
	movl	%cr0, %eax
	andl	$0x9fffffff, %eax	/* clear CD, NW */
	orl	$1, %eax
	movl	%eax, %cr0
	ljmpl	$SEL_CODE32, $(tramp_pm32 - tramp_start + TRAMPOLINE_ADDR)
	.code32
tramp_pm32:
	movl	$SEL_DATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%cr4, %eax
	orl	$0x20, %eax
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$0xc0000080, %ecx
	rdmsr
	orl	$0x100, %eax
	wrmsr
	movl	%cr0, %eax
	orl	$0x80000000, %eax
	movl	%eax, %cr0
	ljmp	$SEL_CODE64, $ap_long64
	.balign 4
tramp_gdtr:
	.word	gdt_end - gdt - 1
	.long	gdt
tramp_end:
	.code64

/* ------------------------------------------------------------------------- */
	.data
	.balign 16
	.globl gdt
gdt:
	.quad	0
	.quad	0x00af9a000000ffff	/* 0x08: 64-bit code */
	.quad	0x00cf92000000ffff	/* 0x10: data */
	.quad	0x00cf9a000000ffff	/* 0x18: 32-bit code */
gdt_end:
	.balign 8
	.word	0, 0, 0
gdt_desc:
	.word	gdt_end - gdt - 1
	.quad	gdt

	.bss
	.balign 4096
	.globl pml4, pdpt, pd
pml4:	.skip 4096
pdpt:	.skip 4096
pd:	.skip 4 * 4096			/* 4 page directories: the low 4 GiB */
stack:	.skip STACK_SIZE
stack_top:
	.globl ap_count
	.balign 4
ap_count: .skip 4

/* ------------------------------------------------------------------------- */
/* kernel_info (boot protocol 2.15), referenced by the bzImage's kernel_info_offset. */
	.section .rodata
	.balign 4
	.globl kernel_info
kernel_info:
	.ascii	"LToP"			/* header */
	.long	kernel_info_var - kernel_info	/* size */
	.long	kernel_info_end - kernel_info	/* size_total */
	.long	0			/* setup_type_max */
kernel_info_var:
kernel_info_end:
