//! Register state at the guest's first instruction: segment descriptors, the
//! identity-mapped page tables of the 64-bit boot protocol, and the entry
//! registers of each [`EntryPoint`].

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::EntryPoint;

/// The boot GDT: null, null, 64-bit code (0x10), data (0x18), TSS (0x20);
/// Linux's boot protocol wants __BOOT_CS = 0x10 and __BOOT_DS = 0x18.
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const BOOT_IDT_ADDR: u64 = 0x520;
/// The top-level page table (PML4).
pub const PML4_ADDR: u64 = 0x9000;
/// The page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// Four page directories of 2 MiB pages: together they map 4 GiB.
pub const PD_ADDR: u64 = 0xb000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK: u64 = 0x8ff0;

const CODE_SELECTOR: u16 = 0x10;
const DATA_SELECTOR: u16 = 0x18;
const TSS_SELECTOR: u16 = 0x20;

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
/// CR0 at the 32-bit entries (PVH and the Linux 32-bit protocol): protected
/// mode, paging off, every other writable bit clear (pvh.pandoc: "CR0: PE set,
/// all other writable bits cleared"). In particular not KVM's reset value's
/// CD and NW (0x6000_0000): the guest starts with caches enabled. ET is
/// read-only 1 on every CPU since the i486.
const CR0_PROTECTED32: u64 = CR0_PE | CR0_ET;
/// CR0 at the Linux 64-bit entry: long mode needs PE and PG; nothing else is
/// set (the kernel loads its own CR0 early), and CD/NW are clear as above.
const CR0_LONG64: u64 = CR0_PE | CR0_ET | CR0_PG;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Errors while writing boot structures to guest memory.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the boot {0} to guest memory")]
pub struct RegsError(&'static str);

/// Packs a GDT entry from flags (bits 8-15 access, 20-23 flags of the second dword), base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The KVM segment register that a GDT entry describes when loaded with `selector`.
fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    let limit = if granularity == 1 { (limit_raw << 12) | 0xfff } else { limit_raw };
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    addr: u64,
    val: T,
    what: &'static str,
) -> Result<(), RegsError> {
    mem.write_obj(val, GuestAddress(addr)).map_err(|_| RegsError(what))
}

/// Writes the boot GDT for `long_mode` (64-bit code segment) or 32-bit flat segments, and an empty IDT.
fn write_gdt(mem: &GuestMemoryMmap, long_mode: bool) -> Result<[u64; 5], RegsError> {
    let code = if long_mode { gdt_entry(0xa09b, 0, 0xfffff) } else { gdt_entry(0xc09b, 0, 0xfffff) };
    let gdt = [
        0,
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        // A 32-bit busy TSS, as the PVH ABI requires a valid TR.
        gdt_entry(0x008b, 0, 0x67),
    ];
    for (i, entry) in gdt.iter().enumerate() {
        write(mem, BOOT_GDT_ADDR + 8 * i as u64, *entry, "GDT")?;
    }
    write(mem, BOOT_IDT_ADDR, 0u64, "IDT")?;
    Ok(gdt)
}

/// Writes identity-mapped page tables covering the low 4 GiB with 2 MiB pages.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    write(mem, PML4_ADDR, PDPT_ADDR | 0x3, "PML4")?;
    for pd in 0..4u64 {
        write(mem, PDPT_ADDR + pd * 8, (PD_ADDR + pd * 0x1000) | 0x3, "PDPT")?;
        for i in 0..512u64 {
            let phys = (pd << 30) | (i << 21);
            // Present, writable, 2 MiB page.
            write(mem, PD_ADDR + pd * 0x1000 + i * 8, phys | 0x83, "page directory")?;
        }
    }
    Ok(())
}

/// The register state for `entry`; writes the GDT (and page tables for long mode) to memory.
pub fn entry_state(
    mem: &GuestMemoryMmap,
    entry: EntryPoint,
    mut sregs: kvm_sregs,
) -> Result<(kvm_regs, kvm_sregs), RegsError> {
    let mut regs = kvm_regs { rflags: 0x2, ..Default::default() };
    match entry {
        EntryPoint::ResetVector => {
            // KVM's reset state already is the architectural one: `sregs` as read
            // from a new vCPU has CS = F000 with base 0xFFFF0000; IP is 0xFFF0.
            regs.rip = 0xfff0;
        }
        EntryPoint::Real { cs, ip, data_segment, sp } => {
            let seg = |selector: u16, code: bool| kvm_segment {
                base: u64::from(selector) << 4,
                limit: 0xffff,
                selector,
                type_: if code { 0xb } else { 0x3 },
                present: 1,
                s: 1,
                ..Default::default()
            };
            sregs.cs = seg(cs, true);
            sregs.ds = seg(data_segment, false);
            sregs.es = sregs.ds;
            sregs.fs = sregs.ds;
            sregs.gs = sregs.ds;
            sregs.ss = sregs.ds;
            sregs.cr0 &= !(CR0_PE | CR0_PG);
            regs.rip = u64::from(ip);
            regs.rsp = u64::from(sp);
        }
        EntryPoint::Protected32 { eip, esi, ebx } => {
            let gdt = write_gdt(mem, false)?;
            set_descriptor_tables(&mut sregs, &gdt);
            sregs.cs = segment_from_gdt(gdt[2], CODE_SELECTOR);
            let data = segment_from_gdt(gdt[3], DATA_SELECTOR);
            sregs.ds = data;
            sregs.es = data;
            sregs.fs = data;
            sregs.gs = data;
            sregs.ss = data;
            sregs.tr = segment_from_gdt(gdt[4], TSS_SELECTOR);
            sregs.cr0 = CR0_PROTECTED32;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = u64::from(eip);
            regs.rsi = u64::from(esi);
            regs.rbx = u64::from(ebx);
        }
        EntryPoint::Long64 { rip, rsi } => {
            let gdt = write_gdt(mem, true)?;
            write_page_tables(mem)?;
            set_descriptor_tables(&mut sregs, &gdt);
            sregs.cs = segment_from_gdt(gdt[2], CODE_SELECTOR);
            let data = segment_from_gdt(gdt[3], DATA_SELECTOR);
            sregs.ds = data;
            sregs.es = data;
            sregs.fs = data;
            sregs.gs = data;
            sregs.ss = data;
            sregs.tr = segment_from_gdt(gdt[4], TSS_SELECTOR);
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 = CR0_LONG64;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsi = rsi;
            regs.rsp = BOOT_STACK;
            regs.rbp = BOOT_STACK;
        }
    }
    Ok((regs, sregs))
}

fn set_descriptor_tables(sregs: &mut kvm_sregs, gdt: &[u64]) {
    sregs.gdt.base = BOOT_GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_ADDR;
    sregs.idt.limit = 7;
}

/// The x87/SSE state a freshly reset CPU has (FCW 0x37f, MXCSR 0x1f80).
pub fn initial_fpu() -> kvm_fpu {
    kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_round_trip() {
        let code = gdt_entry(0xa09b, 0, 0xfffff);
        assert_eq!(code, 0x00af_9b00_0000_ffff);
        let seg = segment_from_gdt(code, CODE_SELECTOR);
        assert_eq!((seg.l, seg.db, seg.g, seg.present, seg.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(seg.limit, 0xffff_ffff);
        let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), DATA_SELECTOR);
        assert_eq!((data.db, data.type_, data.s), (1, 3, 1));
        let tss = segment_from_gdt(gdt_entry(0x008b, 0, 0x67), TSS_SELECTOR);
        assert_eq!((tss.type_, tss.s, tss.limit), (0xb, 0, 0x67));
    }

    #[test]
    fn long_mode_tables_map_4g() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (regs, sregs) =
            entry_state(&mem, EntryPoint::Long64 { rip: 0x100_0000, rsi: 0x7000 }, Default::default()).unwrap();
        assert_eq!((regs.rip, regs.rsi), (0x100_0000, 0x7000));
        let mode =
            crate::memory::pagewalk::PagingMode { cr0: sregs.cr0, cr3: sregs.cr3, cr4: sregs.cr4, efer: sregs.efer };
        for addr in [0u64, 0x12_3456, 0xfee0_0000, 0xffff_ffff] {
            assert_eq!(crate::memory::pagewalk::translate(&mem, mode, addr), Ok(addr));
        }
    }

    /// The sregs a new KVM vCPU reports: CR0 = CD | NW | ET.
    fn kvm_reset_sregs() -> kvm_sregs {
        kvm_sregs { cr0: 0x6000_0010, ..Default::default() }
    }

    #[test]
    fn entry_cr0_has_caches_enabled() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        // PVH and the Linux 32-bit entry: PE (and the read-only ET) only.
        let entry = EntryPoint::Protected32 { eip: 0x10_0000, esi: 0x7000, ebx: 0x6000 };
        let (regs, sregs) = entry_state(&mem, entry, kvm_reset_sregs()).unwrap();
        assert_eq!(sregs.cr0, 0x11);
        assert_eq!((sregs.cr4, sregs.efer), (0, 0));
        assert_eq!((regs.rip, regs.rsi, regs.rbx, regs.rflags), (0x10_0000, 0x7000, 0x6000, 2));
        assert_eq!((sregs.cs.selector, sregs.cs.db, sregs.cs.l), (CODE_SELECTOR, 1, 0));
        assert_eq!((sregs.tr.selector, sregs.tr.type_), (TSS_SELECTOR, 0xb));
        // The Linux 64-bit entry: PE | PG (and ET); CD and NW clear.
        let entry = EntryPoint::Long64 { rip: 0x20_0200, rsi: 0x7000 };
        let (_, sregs) = entry_state(&mem, entry, kvm_reset_sregs()).unwrap();
        assert_eq!(sregs.cr0, 0x8000_0011);
        assert_eq!(sregs.cr4, CR4_PAE);
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        // The real-mode entry keeps the reset state's CR0 less PE and PG, as a CPU after reset.
        let entry = EntryPoint::Real { cs: 0x1020, ip: 0, data_segment: 0x1000, sp: 0xe000 };
        let (_, sregs) = entry_state(&mem, entry, kvm_reset_sregs()).unwrap();
        assert_eq!(sregs.cr0, 0x6000_0010);
    }
}
