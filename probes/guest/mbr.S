/*
 * mbr-bios-services.bin: a 512-byte boot sector (MBR) that exercises the BIOS disk and
 * memory services of the firmware that loaded it (SeaBIOS in rvmm's and QEMU's tests)
 * over the VMM's devices, and reports on COM1:
 *
 *   rvmm-mbr: edd=ok                        int 0x13 AH=0x41: EDD present
 *   rvmm-mbr: sectors=0x<hex>               int 0x13 AH=0x48: total sectors (low 32 bits)
 *   rvmm-mbr: read=ok fnv=0x<8 hex>         int 0x13 AH=0x42: LBA 1-16, FNV-1a 32 of them
 *   rvmm-mbr: write=ok                      int 0x13 AH=0x43: LBA 17 = "rvmm-mbr-wrote!!" x 32
 *   rvmm-mbr: e820=<dec> ram_kib=0x<hex>    int 0x15 EAX=0xE820: entries, type-1 KiB
 *   rvmm-mbr: done                          then status 42 to the debug exit port 0xf4
 *
 * A failed step prints `rvmm-mbr: fail=<step> ah=0x<AH>` instead, <step> being the
 * line's name (edd, sectors, read, write, e820), and writes its own status to 0xf4:
 * 2 edd, 3 sectors (drive parameters), 4 read, 5 write, 6 e820. Every line starts with
 * CR LF; the last one ends with CR LF too.
 *
 * Real mode, linked at 0x7c00 (build.rs: flat binary, exactly 512 bytes, 0x55 0xAA at
 * 510, no partition table). The firmware enters it at 0000:7C00; the drive used is
 * always 0x80. It uses 32-bit registers (operand-size prefixes), but no SSE or x87.
 * Output goes straight to the 16550 (polling LSR bit 5), not through int 0x10:
 * SeaBIOS's serial console sends what int 0x10 prints lazily.
 *
 * Memory: the stack below 0x7c00; the drive parameters at 0x7e00; the 8 KiB read at
 * 0x1000:0000, then the sector written at 0x1000:0000 and the E820 entry at
 * 0x1000:0200.
 *
 * It is packed to fit 510 bytes (build.rs disassembles the code up to `code_end`).
 */

#define SMAP	0x534d4150
#define SCRATCH	0x7e00
#define DRIVE	0x80

	.code16
	.text
	.globl	_start
_start:
	/* Segments 0, stack just below the boot sector. SeaBIOS enters at 0000:7C00
	 * with DF clear (the code has no far references, so CS needs no normalizing;
	 * a move to SS holds interrupts off for the next instruction). */
	xorw	%ax, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	$0x7c00, %sp

	/* Wait for the next interrupt, a timer tick: SeaBIOS's serial console still
	 * holds the end of "Booting from Hard Disk..." and sends it from its IRQ 0
	 * handler, which would otherwise put ".\r\n" into the middle of a line. */
	sti
	hlt

	/* BP points at the current step's line: `say` prints it and moves BP on to the
	 * next step's, `fail` prints its name (the line up to '=') and exits with the
	 * status byte before it. */
	movw	$s_edd, %bp

	/* 1. EDD: AH=0x41 BX=0x55AA; present if CF is clear, BX = 0xAA55 and CX bit 0
	 *    is set (the extended functions 0x42-0x44, 0x47, 0x48). */
	movb	$0x41, %ah
	movw	$0x55aa, %bx
	call	disk
	cmpw	$0xaa55, %bx
	jne	fail
	testb	$1, %cl
	jz	fail
	call	say

	/* 2. Drive parameters: AH=0x48, DS:SI = a buffer whose first word is its size
	 *    (0x1a); the total sector count is the quad at offset 0x10. */
	movw	$SCRATCH, %si
	movw	$0x1a, (%si)
	movb	$0x48, %ah
	call	disk
	movl	0x10(%si), %eax
	movb	$1, %cl
	call	sayhex

	/* 3. Extended read: AH=0x42, DS:SI = the disk address packet (16 sectors from
	 *    LBA 1 to 0x1000:0000). Then FNV-1a 32 over the 8192 bytes, through ES =
	 *    0x1000 (which stays for steps 4 and 5). */
	movw	$dap, %si
	movb	$0x42, %ah
	call	disk
	pushw	$0x1000
	popw	%es
	xorw	%si, %si
	movw	$8192, %cx
	movl	$0x811c9dc5, %eax	/* offset basis */
1:	xorb	%es:(%si), %al
	incw	%si
	imull	$0x01000193, %eax, %eax	/* FNV prime */
	loop	1b
	movb	$8, %cl
	call	sayhex

	/* 4. Extended write: 0x1000:0000 becomes "rvmm-mbr-wrote!!" 32 times, the
	 *    packet 1 sector from there to LBA 17. AH=0x43, AL=0 (no verify). */
	xorw	%di, %di
2:	movw	$s_pattern, %si
	movb	$16, %cl		/* CH is 0: the FNV loop ended with CX = 0 */
	rep movsb
	cmpw	$512, %di
	jb	2b
	movw	$dap, %si
	movb	$1, 2(%si)		/* sectors */
	movb	$17, 8(%si)		/* LBA */
	movw	$0x4300, %ax
	call	disk
	call	say

	/* 5. E820: EAX=0xE820, EDX='SMAP', ECX=24, ES:DI = the entry (0x1000:0x0200,
	 *    past the sector just written), EBX = the continuation (0 first). Stop on
	 *    CF or EBX = 0. e820_n counts the entries, ESI sums the low 32 bits of the
	 *    type-1 lengths (below 4 GiB of RAM in all); no RAM is a failure. */
	xorl	%ebx, %ebx
	xorl	%ecx, %ecx
	xorl	%esi, %esi
3:	movl	$0xe820, %eax
	movl	$SMAP, %edx
	movb	$24, %cl		/* the BIOS sets all of ECX (20 or 24) */
	int	$0x15
	jc	5f
	cmpl	$SMAP, %eax
	jne	fail
	incb	e820_n
	cmpl	$1, %es:16(%di)		/* type: 1 = RAM */
	jne	4f
	addl	%es:8(%di), %esi	/* length, low 32 bits */
4:	testl	%ebx, %ebx
	jnz	3b
5:	testl	%esi, %esi
	jz	fail
	pushl	%esi
	call	say
	movzbl	e820_n, %eax
	movb	$10, %bl
	movb	$1, %cl
	call	putnum			/* leaves CL <= 0: at least 1 digit next time */
	movw	$s_ramkib, %si
	call	puts
	popl	%eax
	shrl	$10, %eax		/* bytes to KiB */
	call	puthex

	/* 6. Every step passed: "done", status 42. */
	movw	$s_done, %si
	call	line
	movb	$42, %al
	jmp	exit

	/* A failed step (BP): "fail=<name> ah=0x<AH>", and the step's status. */
fail:
	pushw	%ax			/* AH = the BIOS's status */
	movw	$s_fail, %si
	call	line
	movw	%bp, %si
6:	lodsb				/* the name: the step's line up to '=' */
	cmpb	$'=', %al
	je	7f
	call	putc
	jmp	6b
7:	movw	$s_ah, %si
	call	puts
	popw	%ax
	movzbl	%ah, %eax
	movb	$2, %cl
	call	puthex
	movw	$s_crlf, %si
	call	puts
	movb	-1(%bp), %al		/* the status */

	/* Write AL to the debug exit port, and stop. */
exit:
	outb	%al, $0xf4
	cli
8:	hlt
	jmp	8b

	/* disk: int 0x13 on drive 0x80 (AH and the rest set by the caller); a failure
	 * (CF) goes to `fail`. */
disk:
	movb	$DRIVE, %dl
	int	$0x13
	jc	fail
	ret

	/* say: the step's line (BP), and BP on to the next step's line. sayhex: the
	 * same, then EAX in hex with at least CL digits. */
say:
	movw	%bp, %si
	call	line
	movw	%si, %bp
	ret
sayhex:
	pushl	%eax
	call	say
	popl	%eax

	/* puthex: EAX in hex, at least CL digits (CL >= 1). putnum: the same in radix BL.
	 * Both clobber EAX, EBX, CL, DX. digits recurses once per digit, so the most
	 * significant comes out first. */
puthex:
	movb	$16, %bl
putnum:
	movzbl	%bl, %ebx
digits:
	xorl	%edx, %edx
	divl	%ebx			/* DX = this digit, EAX = the ones before it */
	pushw	%dx
	decb	%cl
	jg	9f			/* leading zeros still wanted */
	testl	%eax, %eax
	jz	10f
9:	call	digits
10:	popw	%ax
	addb	$'0', %al
	cmpb	$'9', %al
	jbe	putc
	addb	$'a' - '0' - 10, %al	/* and on into putc */

	/* putc: AL to COM1 once the transmit holding register is empty (LSR bit 5).
	 * Clobbers DX. */
putc:
	pushw	%ax
	movw	$0x3fd, %dx
11:	inb	%dx, %al
	testb	$0x20, %al
	jz	11b
	popw	%ax
	movb	$0xf8, %dl
	outb	%al, %dx
	ret

	/* line: CR LF and "rvmm-mbr: ", then puts. puts: the string at DS:SI up to a
	 * byte below 8 (NUL, or a step's status byte), leaving SI past that byte. They
	 * clobber SI, AL and DX. */
line:
	pushw	%si
	movw	$s_prefix, %si
	call	puts
	popw	%si
puts:
	lodsb
	cmpb	$8, %al
	jb	12f
	call	putc
	jmp	puts
12:	ret

	.globl	code_end
code_end:

	/* The disk address packet for AH=0x42, then changed for AH=0x43. */
dap:
	.byte	0x10, 0			/* size, reserved */
	.word	16			/* sectors */
	.word	0, 0x1000		/* buffer offset, segment */
	.quad	1			/* first LBA */

s_pattern:
	.ascii	"rvmm-mbr-wrote!!"	/* 16 bytes */

	/* The line prefix, then each step's line ended by the next one's exit status
	 * (the first status ends the prefix). */
s_prefix:
	.ascii	"\r\nrvmm-mbr: "
	.byte	2
s_edd:
	.ascii	"edd=ok"
	.byte	3
s_sectors:
	.ascii	"sectors=0x"
	.byte	4
s_read:
	.ascii	"read=ok fnv=0x"
	.byte	5
s_write:
	.ascii	"write=ok"
	.byte	6
s_e820:
	.asciz	"e820="
s_ramkib:
	.asciz	" ram_kib=0x"
s_done:
	.ascii	"done"
s_crlf:
	.asciz	"\r\n"
s_fail:
	.asciz	"fail="
s_ah:
	.asciz	" ah=0x"
e820_n:
	.byte	0			/* E820 entries seen */

	/* The boot signature; .org fails the build if the rest grew past 510 bytes. */
	.org	510
	.byte	0x55, 0xaa
