//! rvmm's virtual machine: everything between the command line and KVM.
//!
//! The modules follow the book's chapters:
//! - [`cpu`] (chapter 1): vCPU threads, the run loop, CPUID and MSRs;
//! - [`memory`] (chapter 2): the guest-physical layout, e820, a page-table walker;
//! - [`boot`] (chapters 1.4, 1.5, 2.2): kernel loaders, boot_params, PVH, MP table, ACPI, BIOS;
//! - [`interrupt`] (chapter 3): the irqchip and interrupt lines;
//! - [`bus`] (chapter 1.3): port-I/O and MMIO dispatch to the devices of the `devices` crate;
//! - [`vm`]: puts them together and runs the machine.

pub mod api;
pub mod boot;
pub mod bus;
pub mod console;
pub mod cpu;
pub mod device_manager;
pub mod event_loop;
pub mod exit;
pub mod interrupt;
pub mod memory;
pub mod rtc;
pub mod stats;
pub mod timer;
pub mod vm;

pub use boot::BootProtocol;
pub use console::ConsoleConfig;
pub use exit::{CrashReport, VmExit};
pub use vm::{Vm, VmConfig, VmError, MAX_VCPUS};
