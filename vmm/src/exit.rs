//! Why a VM stopped, and the one place every thread reports it to.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Details of a guest that stopped because it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashReport {
    /// The vCPU that reported it.
    pub vcpu: u8,
    /// What happened, e.g. "triple fault" or "KVM internal error, suberror 1 (emulation failure)".
    pub what: String,
    /// The guest's instruction pointer (CS base + RIP).
    pub rip: u64,
    /// Up to 16 instruction bytes at RIP, if they could be read.
    pub instruction: Vec<u8>,
}

impl std::fmt::Display for CrashReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vCPU {}: {} at RIP {:#x}", self.vcpu, self.what, self.rip)?;
        if !self.instruction.is_empty() {
            write!(f, ", instruction bytes:")?;
            for b in &self.instruction {
                write!(f, " {b:02x}")?;
            }
        }
        Ok(())
    }
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (ACPI sleep state S5 or KVM_SYSTEM_EVENT_SHUTDOWN).
    PowerOff,
    /// The guest asked for a reset (i8042, KVM_SYSTEM_EVENT_RESET); rvmm ends the VM.
    Reset,
    /// A test guest wrote a status byte to the debug exit port.
    DebugExit(u8),
    /// The person at the console typed the quit escape sequence.
    UserQuit,
    /// rvmm received this signal (SIGTERM, SIGINT, SIGHUP).
    Signal(i32),
    /// The guest crashed: triple fault, emulation failure, KVM_SYSTEM_EVENT_CRASH.
    GuestCrash(CrashReport),
    /// KVM or the host failed (an ioctl error, a failed VM entry).
    HostError(String),
}

/// Collects the first exit reason from any thread and wakes the main loop.
pub struct ExitSignal {
    reason: Mutex<Option<VmExit>>,
    event: EventFd,
}

impl ExitSignal {
    /// A new, unsignalled exit; `event` becomes readable when it is signalled.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal { reason: Mutex::new(None), event: EventFd::new(libc::EFD_NONBLOCK)? })
    }

    /// Records `reason` unless an earlier one is already recorded, and wakes the main loop.
    pub fn request(&self, reason: VmExit) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        // An eventfd write only fails if the counter would overflow: it is already set then.
        let _ = self.event.write(1);
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<VmExit> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The eventfd the main loop waits on.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}
