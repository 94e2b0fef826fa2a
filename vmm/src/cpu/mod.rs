//! Virtual CPUs (book chapter 1): one host thread per vCPU runs KVM_RUN and
//! routes each exit to the port-I/O or MMIO bus (chapter 1.3, "trap and
//! emulate"); anything that ends the VM is reported to the [`ExitSignal`].
//!
//! A vCPU moves through [`VcpuState`]: `Created` (configured, thread not yet
//! started) -> `Running` (inside the run loop) <-> `Paused` (waiting on the
//! VM's [`pause::PauseGate`]) -> `Stopped` (the loop returned).
//! Other threads never touch a vCPU's registers: they ask it to stop by setting
//! a flag and kicking its thread with a signal, whose handler sets
//! `kvm_run.immediate_exit` so KVM_RUN returns at once (chapter 1.2).

pub mod cpuid;
pub mod msr;
pub mod pause;
pub mod regs;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::{kvm_mp_state, kvm_run, CpuId, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::boot::EntryPoint;
use crate::bus::Bus;
use crate::exit::{CrashReport, ExitSignal, VmExit};
use crate::interrupt::split::UserIrqChip;
use crate::memory::pagewalk::{self, PagingMode};
use crate::stats::{ExitKind, VcpuStats};

// KVM_INTERRUPT = _IOW(KVMIO, 0x86, struct kvm_interrupt).
vmm_sys_util::ioctl_iow_nr!(KVM_INTERRUPT, kvm_bindings::KVMIO, 0x86, kvm_bindings::kvm_interrupt);

/// Offset from SIGRTMIN of the signal that kicks a vCPU out of KVM_RUN.
const KICK_SIGNAL_OFFSET: i32 = 0;
/// LAPIC register offsets of the local vector table entries for LINT0 and LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// KVM_SYSTEM_EVENT types (include/uapi/linux/kvm.h).
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// Errors while creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {vcpu}: {what} failed: {source}")]
    Kvm {
        /// Which vCPU.
        vcpu: u8,
        /// Which operation.
        what: &'static str,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// The MSR list could not be built.
    #[error("vCPU {0}: cannot build the MSR list")]
    Msrs(u8),
    /// The boot register state could not be written.
    #[error("vCPU {vcpu}: {source}")]
    Regs {
        /// Which vCPU.
        vcpu: u8,
        /// What failed.
        source: regs::RegsError,
    },
    /// KVM set fewer MSRs than asked.
    #[error("vCPU {vcpu}: KVM set only {set} of {wanted} boot MSRs")]
    PartialMsrs {
        /// Which vCPU.
        vcpu: u8,
        /// How many were set.
        set: usize,
        /// How many were asked for.
        wanted: usize,
    },
    /// The vCPU thread could not be started.
    #[error("vCPU {vcpu}: cannot start its thread: {source}")]
    Spawn {
        /// Which vCPU.
        vcpu: u8,
        /// The OS error.
        source: std::io::Error,
    },
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
}

/// The life-cycle state of a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum VcpuState {
    /// Created and configured; its thread has not entered the run loop.
    Created = 0,
    /// Inside the run loop.
    Running = 1,
    /// The run loop has returned; the thread is ending.
    Stopped = 2,
    /// Out of KVM_RUN, waiting for the VM to be resumed.
    Paused = 3,
}

impl VcpuState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => VcpuState::Created,
            1 => VcpuState::Running,
            3 => VcpuState::Paused,
            _ => VcpuState::Stopped,
        }
    }
}

/// What a vCPU thread shares with the rest of the VMM.
#[derive(Clone)]
pub struct VcpuContext {
    /// Port-I/O address space.
    pub pio_bus: Arc<Bus>,
    /// MMIO address space.
    pub mmio_bus: Arc<Bus>,
    /// Guest memory, to read instruction bytes for crash reports.
    pub memory: GuestMemoryMmap,
    /// Where the vCPU reports the end of the VM.
    pub exit: Arc<ExitSignal>,
    /// The user-space PIC and IOAPIC, with a split irqchip.
    pub user_irqchip: Option<Arc<UserIrqChip>>,
    /// The VM's pause gate, shared by all its vCPUs.
    pub pause: Arc<pause::PauseGate>,
}

/// One configured vCPU, before its thread starts.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    stats: Arc<VcpuStats>,
    context: VcpuContext,
    state: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
}

/// Configuration shared by all vCPUs of a VM.
pub struct CpuConfig<'a> {
    /// KVM's supported CPUID table (patched per vCPU).
    pub supported_cpuid: &'a CpuId,
    /// MSR indices KVM saves and restores.
    pub msr_index_list: &'a [u32],
    /// Number of vCPUs in the VM.
    pub num_cpus: u8,
}

impl Vcpu {
    /// Creates vCPU `id` and gives it its CPUID, MSRs, FPU and LAPIC state.
    /// The boot vCPU (id 0) gets the entry registers; the others wait for INIT/SIPI.
    pub fn new(
        vm: &VmFd,
        id: u8,
        config: &CpuConfig<'_>,
        entry: EntryPoint,
        context: VcpuContext,
    ) -> Result<Self, CpuError> {
        let err = |what: &'static str| move |source| CpuError::Kvm { vcpu: id, what, source };
        let fd = vm.create_vcpu(u64::from(id)).map_err(err("KVM_CREATE_VCPU"))?;

        let mut cpuid = config.supported_cpuid.clone();
        cpuid::patch_cpuid(&mut cpuid, id, config.num_cpus);
        fd.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;

        let msrs = msr::boot_msrs(config.msr_index_list).map_err(|_| CpuError::Msrs(id))?;
        let set = fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
        if set != msrs.as_slice().len() {
            return Err(CpuError::PartialMsrs { vcpu: id, set, wanted: msrs.as_slice().len() });
        }
        fd.set_fpu(&regs::initial_fpu()).map_err(err("KVM_SET_FPU"))?;

        // LINT0 delivers the PIC's ExtINT, LINT1 the NMI, as PC firmware programs them.
        let mut lapic = fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
        set_lapic_reg(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT << 8);
        set_lapic_reg(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI << 8);
        fd.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;

        if id == 0 {
            // Firmware starts from KVM's reset state untouched (RDX keeps the CPU signature).
            if entry != EntryPoint::ResetVector {
                let sregs = fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
                let (r, s) = regs::entry_state(&context.memory, entry, sregs)
                    .map_err(|source| CpuError::Regs { vcpu: id, source })?;
                fd.set_sregs(&s).map_err(err("KVM_SET_SREGS"))?;
                fd.set_regs(&r).map_err(err("KVM_SET_REGS"))?;
            }
            fd.set_mp_state(kvm_mp_state { mp_state: KVM_MP_STATE_RUNNABLE }).map_err(err("KVM_SET_MP_STATE"))?;
        } else {
            // Application processors sleep until the guest sends INIT-SIPI-SIPI (chapter 1.4.2).
            fd.set_mp_state(kvm_mp_state { mp_state: KVM_MP_STATE_UNINITIALIZED }).map_err(err("KVM_SET_MP_STATE"))?;
        }
        Ok(Vcpu {
            id,
            fd,
            stats: Arc::new(VcpuStats::default()),
            context,
            state: Arc::new(AtomicU8::new(VcpuState::Created as u8)),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The vCPU's exit counters.
    pub fn stats(&self) -> Arc<VcpuStats> {
        self.stats.clone()
    }

    /// Starts the vCPU's thread.
    pub fn start(self) -> Result<VcpuHandle, CpuError> {
        install_kick_handler()?;
        let id = self.id;
        let state = self.state.clone();
        let stop = self.stop.clone();
        let pause = self.context.pause.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || self.run())
            .map_err(|source| CpuError::Spawn { vcpu: id, source })?;
        Ok(VcpuHandle { id, thread: Some(thread), state, stop, pause })
    }

    fn set_state(&self, state: VcpuState) {
        log::debug!("vCPU {}: {:?}", self.id, state);
        self.state.store(state as u8, Ordering::SeqCst);
    }

    fn run(mut self) {
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN_PTR.with(|p| p.set(run_ptr));
        self.set_state(VcpuState::Running);
        while !self.stop.load(Ordering::SeqCst) {
            if self.context.pause.requested() {
                self.set_state(VcpuState::Paused);
                self.context.pause.wait(&self.stop);
                self.set_state(VcpuState::Running);
                continue;
            }
            if self.id == 0 {
                self.inject_pic_interrupt(run_ptr);
            }
            if let Some(reason) = self.run_once(run_ptr) {
                self.context.exit.request(reason);
                break;
            }
        }
        KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
        self.set_state(VcpuState::Stopped);
    }

    /// With a split irqchip, hands the PIC's interrupt to vCPU 0 (the CPU whose
    /// LINT0 is ExtINT) when KVM says it can take one, else asks KVM for an exit
    /// as soon as it can (the interrupt window).
    fn inject_pic_interrupt(&mut self, run_ptr: *mut kvm_run) {
        let Some(chip) = &self.context.user_irqchip else { return };
        // SAFETY: run_ptr is this thread's kvm_run mapping, alive while `fd` is;
        // KVM only writes it during KVM_RUN, which is not running now.
        let run = unsafe { &mut *run_ptr };
        let mut pic = chip.pic.lock().unwrap_or_else(|e| e.into_inner());
        if !pic.has_interrupt() {
            run.request_interrupt_window = 0;
            return;
        }
        if run.ready_for_interrupt_injection != 0 && run.if_flag != 0 {
            if let Some(vector) = pic.acknowledge() {
                let irq = kvm_bindings::kvm_interrupt { irq: u32::from(vector) };
                // SAFETY: KVM_INTERRUPT reads a kvm_interrupt we own from a vCPU fd.
                // kvm-ioctls has no wrapper for it, hence the raw ioctl.
                let rc = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.fd, KVM_INTERRUPT(), &irq) };
                if rc < 0 {
                    log::warn!("vCPU 0: KVM_INTERRUPT({vector:#x}) failed: {}", std::io::Error::last_os_error());
                }
            }
            run.request_interrupt_window = u8::from(pic.has_interrupt());
        } else {
            run.request_interrupt_window = 1;
        }
    }

    /// One KVM_RUN and the handling of its exit; `Some` ends the VM.
    fn run_once(&mut self, run_ptr: *mut kvm_run) -> Option<VmExit> {
        let ctx = &self.context;
        let exit = self.fd.run();
        // Time from the exit to the return to the guest: what user space adds per exit.
        let start = Instant::now();
        let kind = match &exit {
            Ok(e) => exit_kind(e),
            Err(_) => ExitKind::Interrupted,
        };
        let result = match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                // SAFETY: run_ptr is this vCPU's kvm_run mapping, alive as long as `fd`;
                // the kernel filled the `io` member for this exit and does not change it
                // until the next KVM_RUN. `data` covers other bytes of the mapping.
                let size = usize::from(unsafe { (*run_ptr).__bindgen_anon_1.io.size }).max(1);
                // String instructions (`rep insb`) deliver `count` accesses of `size` bytes.
                for chunk in data.chunks_mut(size) {
                    ctx.pio_bus.read(u64::from(port), chunk);
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                // SAFETY: as above.
                let size = usize::from(unsafe { (*run_ptr).__bindgen_anon_1.io.size }).max(1);
                for chunk in data.chunks(size) {
                    ctx.pio_bus.write(u64::from(port), chunk);
                }
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                ctx.mmio_bus.read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                ctx.mmio_bus.write(addr, data);
                None
            }
            Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => None,
            Ok(VcpuExit::IoapicEoi(vector)) => {
                if let Some(chip) = &ctx.user_irqchip {
                    chip.end_of_interrupt(vector);
                }
                None
            }
            Ok(VcpuExit::Shutdown) => Some(VmExit::GuestCrash(self.crash_report("triple fault (KVM_EXIT_SHUTDOWN)"))),
            Ok(VcpuExit::Hlt) => {
                Some(VmExit::GuestCrash(self.crash_report("HLT exit (the vCPU halted with no irqchip to wake it)")))
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::PowerOff,
                KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
                KVM_SYSTEM_EVENT_CRASH => VmExit::GuestCrash(self.crash_report("guest crash (KVM_SYSTEM_EVENT_CRASH)")),
                other => VmExit::HostError(format!("vCPU {}: unknown KVM system event {other}", self.id)),
            }),
            Ok(VcpuExit::InternalError) => {
                // SAFETY: the kernel filled the `internal` member for KVM_EXIT_INTERNAL_ERROR
                // and the exit's borrow of the mapping has ended.
                let internal = unsafe { (*run_ptr).__bindgen_anon_1.internal };
                let what = match internal.suberror {
                    1 => "KVM internal error, suberror 1 (instruction emulation failure)".to_string(),
                    2 => "KVM internal error, suberror 2 (simultaneous exceptions)".to_string(),
                    3 => "KVM internal error, suberror 3 (delivery event failed)".to_string(),
                    n => format!("KVM internal error, suberror {n}"),
                };
                Some(VmExit::GuestCrash(self.crash_report(&what)))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(VmExit::HostError(format!(
                "vCPU {}: VM entry failed, hardware reason {reason:#x} on host CPU {cpu}",
                self.id
            ))),
            Ok(other) => Some(VmExit::HostError(format!("vCPU {}: unexpected exit {other:?}", self.id))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked (or a spurious signal): clear the request and look at the stop flag.
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(VmExit::HostError(format!("vCPU {}: KVM_RUN failed: {e}", self.id))),
        };
        self.stats.record(kind, start.elapsed().as_nanos() as u64);
        result
    }

    /// Describes where the guest is, with the instruction bytes at RIP found by
    /// walking the guest's own page tables.
    fn crash_report(&self, what: &str) -> CrashReport {
        let mut report = CrashReport { vcpu: self.id, what: what.to_string(), rip: 0, instruction: Vec::new() };
        let (Ok(r), Ok(s)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return report;
        };
        let linear = if s.efer & (1 << 10) != 0 { r.rip } else { s.cs.base.wrapping_add(r.rip) };
        report.rip = linear;
        let mode = PagingMode { cr0: s.cr0, cr3: s.cr3, cr4: s.cr4, efer: s.efer };
        if let Ok(phys) = pagewalk::translate(&self.context.memory, mode, linear) {
            let mut bytes = [0u8; 16];
            // Stop at the first byte that is not in RAM (e.g. the end of a region).
            for (i, b) in bytes.iter_mut().enumerate() {
                match self.context.memory.read_obj::<u8>(GuestAddress(phys + i as u64)) {
                    Ok(v) => *b = v,
                    Err(_) => {
                        report.instruction = bytes[..i].to_vec();
                        return report;
                    }
                }
            }
            report.instruction = bytes.to_vec();
        }
        report
    }
}

/// How an exit is counted in the statistics.
fn exit_kind(exit: &VcpuExit<'_>) -> ExitKind {
    match exit {
        VcpuExit::IoIn(..) => ExitKind::IoIn,
        VcpuExit::IoOut(..) => ExitKind::IoOut,
        VcpuExit::MmioRead(..) => ExitKind::MmioRead,
        VcpuExit::MmioWrite(..) => ExitKind::MmioWrite,
        VcpuExit::Intr => ExitKind::Interrupted,
        VcpuExit::IrqWindowOpen => ExitKind::IrqWindow,
        VcpuExit::IoapicEoi(_) => ExitKind::IoapicEoi,
        VcpuExit::Hlt => ExitKind::Hlt,
        VcpuExit::Shutdown => ExitKind::Shutdown,
        VcpuExit::SystemEvent(..) => ExitKind::SystemEvent,
        VcpuExit::InternalError => ExitKind::InternalError,
        _ => ExitKind::Other,
    }
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode_bits: u32) {
    let mut raw = [0u8; 4];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    // Keep everything but the delivery mode (bits 8-10).
    let value = (u32::from_le_bytes(raw) & !0x700) | mode_bits;
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

thread_local! {
    /// The running vCPU's kvm_run mapping, for the kick signal handler.
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN_PTR.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is set by this thread while its VcpuFd (and so the
            // mapping) is alive and cleared before it is dropped; a signal handler runs
            // on the same thread. A single byte store is async-signal-safe.
            unsafe { (*run).immediate_exit = 1 };
        }
    });
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

fn install_kick_handler() -> Result<(), CpuError> {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        result = register_signal_handler(kick_signal(), handle_kick).map_err(CpuError::Signal);
    });
    result
}

/// A running vCPU thread.
pub struct VcpuHandle {
    id: u8,
    thread: Option<JoinHandle<()>>,
    state: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    pause: Arc<pause::PauseGate>,
}

impl VcpuHandle {
    /// The vCPU's index.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The vCPU's current state.
    pub fn state(&self) -> VcpuState {
        VcpuState::from_u8(self.state.load(Ordering::SeqCst))
    }

    /// The shared cell the vCPU writes its state to, for a [`pause::PauseControl`].
    pub fn state_cell(&self) -> Arc<AtomicU8> {
        self.state.clone()
    }

    /// A function that kicks this vCPU out of KVM_RUN (or HLT) without stopping
    /// it, so it looks at pending work such as a PIC interrupt to inject.
    pub fn kicker(&self) -> Option<Box<dyn Fn() + Send + Sync>> {
        use std::os::unix::thread::JoinHandleExt;
        let thread = self.thread.as_ref()?.as_pthread_t();
        Some(Box::new(move || {
            // SAFETY: pthread_kill with the kick signal, whose handler only sets
            // immediate_exit; the thread outlives the VM's devices' use of this.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }))
    }

    /// Asks the vCPU to leave its run loop and kicks it out of KVM_RUN.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // A paused vCPU sleeps on the gate, not in KVM_RUN.
        self.pause.wake();
        if let Some(thread) = &self.thread {
            if self.state() != VcpuState::Stopped {
                // Fails only if the thread already ended, which is what we want anyway.
                let _ = thread.kill(kick_signal());
            }
        }
    }

    /// Stops the vCPU and waits for its thread.
    pub fn stop_and_join(mut self) {
        // The kick can land just before the thread enters KVM_RUN and sets immediate_exit
        // for nothing; repeat it until the thread is gone.
        while let Some(thread) = self.thread.take() {
            if thread.is_finished() {
                let _ = thread.join();
                break;
            }
            self.thread = Some(thread);
            self.request_stop();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
