//! `rvmm`: the command line. It parses options, reads files, builds a
//! [`vmm::VmConfig`] and maps how the VM ended to the process exit code; all VM
//! logic lives in the `vmm` crate.

mod cli;

use std::process::ExitCode;

use vmm::{Vm, VmExit};

/// Exit codes (see README.md): debug-exit statuses pass through unchanged.
pub mod exit_code {
    /// Guest power-off or reset, debug-exit status 0, or Ctrl-A x at the console.
    pub const OK: u8 = 0;
    /// Bad input: options, sizes, a kernel or initrd that cannot be read or booted.
    pub const BAD_INPUT: u8 = 64;
    /// The guest crashed: triple fault, KVM emulation failure, guest-reported crash.
    pub const GUEST_CRASH: u8 = 70;
    /// KVM or the host failed: /dev/kvm missing, an ioctl error, a failed VM entry.
    pub const HOST_ERROR: u8 = 71;
    /// Ended by a signal: 128 + the signal number.
    pub const SIGNAL_BASE: u8 = 128;
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("RVMM_LOG", "warn").write_style("RVMM_LOG_STYLE"))
        .format_timestamp(None)
        .init();
    let command = match cli::parse(std::env::args_os()) {
        Ok(c) => c,
        Err(cli::CliExit::Done) => return ExitCode::from(exit_code::OK),
        Err(cli::CliExit::Usage(message)) => {
            eprintln!("rvmm: {message}");
            return ExitCode::from(exit_code::BAD_INPUT);
        }
    };
    match command {
        cli::Command::Run(config) => run(config),
        cli::Command::Ctl { socket, command } => ctl(&socket, &command),
        cli::Command::Net(args) => ExitCode::from(u8::try_from(vnet::run_cli(args)).unwrap_or(exit_code::HOST_ERROR)),
    }
}

/// `rvmm ctl`: one command to a running VM's control socket.
fn ctl(socket: &std::path::Path, command: &str) -> ExitCode {
    use std::io::{Read, Write};
    let mut stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rvmm: cannot connect to {}: {e} (is the VM running with --api-socket?)", socket.display());
            return ExitCode::from(exit_code::BAD_INPUT);
        }
    };
    let mut answer = String::new();
    let result = stream
        .write_all(format!("{command}\n").as_bytes())
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write))
        .and_then(|()| stream.read_to_string(&mut answer).map(|_| ()));
    if let Err(e) = result {
        eprintln!("rvmm: {}: {e}", socket.display());
        return ExitCode::from(exit_code::HOST_ERROR);
    }
    print!("{answer}");
    ExitCode::from(if answer.starts_with("ok") { exit_code::OK } else { 1 })
}

fn run(config: vmm::VmConfig) -> ExitCode {
    let vm = match Vm::new(config) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("rvmm: {e}");
            return ExitCode::from(if e.is_bad_input() { exit_code::BAD_INPUT } else { exit_code::HOST_ERROR });
        }
    };
    let exit = match vm.run() {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("rvmm: {e}");
            return ExitCode::from(exit_code::HOST_ERROR);
        }
    };
    log::info!("VM ended: {exit:?}");
    ExitCode::from(match exit {
        VmExit::Reset => {
            // rvmm does not reboot a VM: a reset (a guest's reboot, or firmware
            // giving up on booting) ends it, and whoever started it decides.
            eprintln!("rvmm: the guest reset the machine; the VM has stopped");
            exit_code::OK
        }
        VmExit::PowerOff | VmExit::UserQuit => exit_code::OK,
        VmExit::DebugExit(status) => status,
        VmExit::Signal(sig) => exit_code::SIGNAL_BASE.saturating_add(sig as u8),
        VmExit::GuestCrash(report) => {
            eprintln!("rvmm: guest crashed: {report}");
            exit_code::GUEST_CRASH
        }
        VmExit::HostError(message) => {
            eprintln!("rvmm: {message}");
            exit_code::HOST_ERROR
        }
    })
}
