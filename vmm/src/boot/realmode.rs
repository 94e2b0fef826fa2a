//! The legacy real-mode boot of a bzImage (Documentation/arch/x86/boot.rst,
//! "loading the rest of the kernel" and "running the kernel"): the setup code
//! runs in real mode at 0x10000, asks rvmm's [`bios`](super::bios) for the memory
//! map, and switches to protected mode by itself.

use vm_memory::{ByteValued, GuestMemoryMmap};

use super::linux::{BzImageHeader, ZeroPage, CAN_USE_HEAP};
use super::{bios, write_cmdline, write_guest, BootConfig, BootError, EntryPoint};
use crate::memory::MemoryLayout;

/// Segment the setup code runs in (its zero page starts at 0x10000).
pub const SETUP_SEGMENT: u16 = 0x1000;
/// Top of the setup code's stack and heap, relative to the segment (boot.rst's example).
const HEAP_END: u16 = 0xe000;
/// The command line follows the heap, below 0x20000.
const CMDLINE_OFFSET: u64 = HEAP_END as u64;
/// Room for the command line between 0x1e000 and 0x20000.
const CMDLINE_ROOM: usize = 0x2000;

/// Copies the setup code to 0x10000, fills its header as a boot loader must,
/// installs the BIOS, and returns the real-mode entry (seg + 0x20 : 0).
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    config: &BootConfig,
    parsed: &BzImageHeader,
    load_addr: u64,
    initrd: Option<(u64, u64)>,
    cmdline_max: usize,
    rsdp_addr: u64,
) -> Result<EntryPoint, BootError> {
    let base = u64::from(SETUP_SEGMENT) << 4;
    if parsed.setup_len as u64 > CMDLINE_OFFSET - 0x200 {
        return Err(BootError::BzImage {
            path: config.kernel_name.clone(),
            reason: format!("setup code of {} bytes does not fit below its heap", parsed.setup_len),
        });
    }
    write_guest(memory, base, &config.kernel[..parsed.setup_len], "real-mode setup code")?;
    let cmdline_addr = base + CMDLINE_OFFSET;
    write_cmdline(memory, cmdline_addr, &config.cmdline, cmdline_max.min(CMDLINE_ROOM))?;

    // Fill the header fields a loader owns and write back only the header's own
    // bytes: what follows it in the image is setup code.
    let mut params = ZeroPage::default();
    params.0.hdr = parsed.header;
    super::linux::fill_zero_page_at(&mut params, layout, cmdline_addr, initrd, rsdp_addr);
    let hdr = &mut params.0.hdr;
    hdr.type_of_loader = 0xff;
    hdr.loadflags |= CAN_USE_HEAP;
    hdr.heap_end_ptr = HEAP_END - 0x200;
    hdr.code32_start = load_addr as u32;
    let header_bytes = &params.as_slice()[0x1f1..0x1f1 + parsed.header_len];
    write_guest(memory, base + 0x1f1, header_bytes, "setup header")?;

    bios::install(memory, layout)?;
    Ok(EntryPoint::Real { cs: SETUP_SEGMENT + 0x20, ip: 0, data_segment: SETUP_SEGMENT, sp: HEAP_END })
}
