/*
 * Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18): the physical address of the PVH
 * 32-bit entry. Linked only into probe-pvh.elf. Kept 4-byte aligned: QEMU pads
 * the note name to the PT_NOTE segment's alignment.
 */
	.section .note.Xen, "a", @note
	.balign 4
	.long	4		/* namesz */
	.long	4		/* descsz */
	.long	18		/* type: XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz	"Xen"
	.long	pvh_entry32	/* desc */
