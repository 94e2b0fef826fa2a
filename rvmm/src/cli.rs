//! Command-line parsing: `rvmm run ...`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use virtio::block::disk::EngineKind;
use virtio::block::BlockConfig;
use vmm::boot::firmware::FirmwareImage;
use vmm::device_manager::{DiskSpec, NetBackendSpec, NetSpec, VirtioTransport, VsockSpec};
use vmm::vm::{DebugconTarget, FirmwareConfig};
use vmm::{BootProtocol, ConsoleConfig, VmConfig, MAX_VCPUS};

/// rvmm: a small virtual machine monitor for Linux/KVM.
#[derive(Parser, Debug)]
#[command(name = "rvmm", version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: CommandArgs,
}

#[derive(Subcommand, Debug)]
enum CommandArgs {
    /// Boot a kernel (ELF vmlinux, PVH ELF or bzImage) and run it until it ends.
    ///
    /// Without --kernel, rvmm boots its bundled hello probe guest.
    Run(RunArgs),
    /// Network virtualization (book chapter 6): apply, destroy or show a node's part
    /// of a declarative overlay network (`rvmm net --help`).
    #[command(disable_help_flag = true)]
    Net {
        /// Arguments for `rvmm net` (apply, destroy, show, check, port).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Send one command to a running VM's --api-socket and print the answer.
    ///
    /// Commands: `pause`, `resume`, `state`, `balloon [MIB]`, `balloon-stats`, `stats`, `quit`.
    Ctl {
        /// The VM's --api-socket path.
        socket: PathBuf,
        /// The command and its arguments.
        #[arg(required = true, num_args = 1..)]
        command: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Kernel image: ELF vmlinux (64-bit or PVH entry) or bzImage. Default: the bundled hello probe.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk loaded next to the kernel.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Boot PC firmware instead of a kernel, e.g. SeaBIOS's /usr/share/seabios/bios-256k.bin:
    /// mapped read-only below 4 GiB and started at its reset vector, on an i440FX-like machine
    /// with QEMU's fw_cfg; it boots from the --disk devices in order.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["kernel", "initrd", "cmdline", "boot"])]
    firmware: Option<PathBuf>,
    /// Where the firmware's debug console (port 0x402) goes: log (rvmm's log at info level,
    /// shown with RVMM_LOG=info), file:PATH or none.
    #[arg(long, value_name = "WHERE", default_value = "log", value_parser = parse_debugcon, requires = "firmware")]
    debugcon: DebugconTarget,
    /// Number of vCPUs (1-254).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_cpus)]
    cpus: u8,
    /// Guest memory, in bytes or with a K, M or G suffix; a multiple of 4 KiB.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_memory)]
    memory: u64,
    /// Where the console goes: stdio (COM1 on the terminal), virtio (a virtio-console,
    /// the guest's hvc0, on the terminal, with its size), file:PATH (COM1's output) or none.
    #[arg(long, value_name = "WHERE", default_value = "stdio", value_parser = parse_console)]
    console: ConsoleConfig,
    /// Boot entry: auto picks PVH for an ELF with the PVH note, else the 64-bit entry.
    #[arg(long, value_enum, default_value_t = BootArg::Auto)]
    boot: BootArg,
    /// The KVM device.
    #[arg(long, value_name = "PATH", default_value = "/dev/kvm")]
    kvm_device: PathBuf,
    /// A virtio-blk disk: PATH[,ro][,direct][,serial=STR][,queues=N][,engine=auto|io_uring|threads]
    /// [,transport=pci|mmio]. Repeat for more disks.
    #[arg(long, value_name = "SPEC", value_parser = parse_disk)]
    disk: Vec<DiskSpec>,
    /// Transport of virtio devices that do not choose one: a PCI function, or a
    /// virtio-mmio window announced on the kernel command line.
    #[arg(long, value_enum, default_value_t = TransportArg::Pci)]
    transport: TransportArg,
    /// Print exit statistics (per vCPU and exit reason, per device, handling
    /// latency) to stderr when the VM ends; SIGUSR1 prints them at any time.
    #[arg(long)]
    stats: bool,
    /// A virtio-net device: tap=NAME, fd=N or port=NAME[,state=DIR] (a port of `rvmm net apply`), then
    /// [,mac=52:54:00:12:34:56][,queues=N][,transport=pci|mmio]. A missing tap is created
    /// (needs CAP_NET_ADMIN).
    #[arg(long, value_name = "SPEC", value_parser = parse_net)]
    net: Vec<NetSpec>,
    /// Add a virtio-rng device fed from the host's getrandom(2).
    #[arg(long)]
    rng: bool,
    /// Where the PIC, IOAPIC and PIT are emulated: in KVM, or in rvmm with only
    /// the local APICs in KVM.
    #[arg(long, value_enum, default_value_t = IrqChipArg::Kernel)]
    irqchip: IrqChipArg,
    /// How the guest learns about virtio-mmio devices: `virtio_mmio.device=` on the
    /// kernel command line, or LNRO0005 devices in the ACPI DSDT (always ACPI with --firmware).
    #[arg(long, value_enum, default_value_t = MmioDiscoveryArg::Cmdline)]
    mmio_discovery: MmioDiscoveryArg,
    /// Add a virtio-balloon device; steer it with `rvmm ctl SOCKET balloon MIB`.
    #[arg(long)]
    balloon: bool,
    /// Let the guest deflate the balloon when it runs out of memory (VIRTIO_BALLOON_F_DEFLATE_ON_OOM).
    #[arg(long, requires = "balloon")]
    balloon_deflate_on_oom: bool,
    /// Listen for control commands (see `rvmm ctl`) on this Unix socket.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// A virtio-vsock device: cid=N,uds=PATH[,transport=pci|mmio]. Guest connections to
    /// port P go to the Unix socket PATH_P; host clients connect to PATH and send `CONNECT P`.
    #[arg(long, value_name = "SPEC", value_parser = parse_vsock)]
    vsock: Option<VsockSpec>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum MmioDiscoveryArg {
    /// On the kernel command line.
    Cmdline,
    /// In the ACPI DSDT.
    Acpi,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum IrqChipArg {
    /// KVM's in-kernel PIC, IOAPIC and PIT.
    Kernel,
    /// rvmm's user-space 8259A, IOAPIC and 8254 with KVM's local APICs.
    Split,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum TransportArg {
    /// virtio-pci (modern), with MSI-X.
    Pci,
    /// virtio-mmio version 2.
    Mmio,
}

impl From<TransportArg> for VirtioTransport {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Pci => VirtioTransport::Pci,
            TransportArg::Mmio => VirtioTransport::Mmio,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum BootArg {
    /// PVH for an ELF with the Xen PVH note, else the Linux 64-bit entry; bzImage 64-bit entry.
    Auto,
    /// The Linux 64-bit boot protocol (ELF vmlinux or bzImage).
    Linux64,
    /// The Linux 32-bit boot protocol (bzImage).
    Linux32,
    /// The Xen PVH entry (ELF with the PVH note).
    Pvh,
    /// The bzImage's real-mode setup code under rvmm's minimal BIOS.
    Legacy,
}

impl From<BootArg> for BootProtocol {
    fn from(b: BootArg) -> Self {
        match b {
            BootArg::Auto => BootProtocol::Auto,
            BootArg::Linux64 => BootProtocol::Linux64,
            BootArg::Linux32 => BootProtocol::Linux32,
            BootArg::Pvh => BootProtocol::Pvh,
            BootArg::Legacy => BootProtocol::Legacy,
        }
    }
}

/// What to do.
pub enum Command {
    /// Run a VM.
    Run(VmConfig),
    /// Run `rvmm net` with these arguments.
    Net(Vec<String>),
    /// Send a command to a running VM.
    Ctl {
        /// Its control socket.
        socket: PathBuf,
        /// The command line to send.
        command: String,
    },
}

/// Why parsing did not produce a command.
pub enum CliExit {
    /// --help or --version was printed.
    Done,
    /// The arguments are wrong; the message says how.
    Usage(String),
}

/// Parses a size such as `256M`, `1G`, `512k` or `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        Some((i, 't' | 'T')) => (&t[..i], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("'{s}' is not a size (try 256M, 1G or a number of bytes)"))?;
    if n == 0 {
        return Err(format!("'{s}': the size must not be zero"));
    }
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("'{s}' is too large"))
}

/// Parses `--memory`: a size that is a whole number of 4 KiB pages, which KVM's memory slots are made of.
fn parse_memory(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n % vmm::memory::PAGE_SIZE != 0 {
        return Err(format!("'{s}' is not a multiple of 4 KiB"));
    }
    Ok(n)
}

fn parse_cpus(s: &str) -> Result<u8, String> {
    let n: u64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number of vCPUs"))?;
    if n == 0 || n > u64::from(MAX_VCPUS) {
        return Err(format!("{n} vCPUs requested; rvmm supports 1 to {MAX_VCPUS}"));
    }
    Ok(n as u8)
}

fn parse_debugcon(s: &str) -> Result<DebugconTarget, String> {
    match s {
        "log" => Ok(DebugconTarget::Log),
        "none" => Ok(DebugconTarget::None),
        _ => match s.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(DebugconTarget::File(PathBuf::from(path))),
            _ => Err(format!("'{s}' is not a debug console target: use log, file:PATH or none")),
        },
    }
}

fn parse_console(s: &str) -> Result<ConsoleConfig, String> {
    match s {
        "stdio" => Ok(ConsoleConfig::Stdio),
        "virtio" => Ok(ConsoleConfig::Virtio),
        "none" => Ok(ConsoleConfig::None),
        _ => match s.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(ConsoleConfig::File(PathBuf::from(path))),
            _ => Err(format!("'{s}' is not a console: use stdio, virtio, file:PATH or none")),
        },
    }
}

/// Parses `PATH[,ro][,direct][,serial=STR][,queues=N][,engine=E][,transport=T]`.
pub fn parse_disk(s: &str) -> Result<DiskSpec, String> {
    let mut parts = s.split(',');
    let path = parts.next().filter(|p| !p.is_empty()).ok_or_else(|| format!("'{s}': a disk needs a path"))?;
    let mut disk = BlockConfig {
        path: PathBuf::from(path),
        read_only: false,
        direct: false,
        serial: None,
        queues: 1,
        engine: EngineKind::Auto,
    };
    let mut transport = None;
    for option in parts {
        match option.split_once('=') {
            None if option == "ro" => disk.read_only = true,
            None if option == "direct" => disk.direct = true,
            Some(("serial", v)) => disk.serial = Some(v.to_string()),
            Some(("queues", v)) => {
                disk.queues = v
                    .parse()
                    .ok()
                    .filter(|&n| (1..=64).contains(&n))
                    .ok_or_else(|| format!("'{option}': queues must be a number from 1 to 64"))?
            }
            Some(("engine", v)) => {
                disk.engine = match v {
                    "auto" => EngineKind::Auto,
                    "io_uring" => EngineKind::IoUring,
                    "threads" => EngineKind::Threads,
                    _ => return Err(format!("'{option}': engine is auto, io_uring or threads")),
                }
            }
            Some(("transport", "pci")) => transport = Some(VirtioTransport::Pci),
            Some(("transport", "mmio")) => transport = Some(VirtioTransport::Mmio),
            _ => {
                return Err(format!(
                    "'{option}' is not a disk option (ro, direct, serial=, queues=, engine=, transport=pci|mmio)"
                ))
            }
        }
    }
    Ok(DiskSpec { block: disk, transport })
}

/// Parses `cid=N,uds=PATH[,transport=T]`.
pub fn parse_vsock(s: &str) -> Result<VsockSpec, String> {
    let (mut cid, mut uds, mut transport) = (None, None, None);
    for option in s.split(',') {
        match option.split_once('=') {
            Some(("cid", v)) => {
                cid = Some(
                    v.parse::<u64>()
                        .ok()
                        .filter(|&c| (3..=0xffff_fffe).contains(&c))
                        .ok_or_else(|| format!("'{option}': the guest CID is a number from 3 to 4294967294"))?,
                )
            }
            Some(("uds", p)) if !p.is_empty() => uds = Some(PathBuf::from(p)),
            Some(("transport", "pci")) => transport = Some(VirtioTransport::Pci),
            Some(("transport", "mmio")) => transport = Some(VirtioTransport::Mmio),
            _ => return Err(format!("'{option}' is not a vsock option (cid=, uds=, transport=)")),
        }
    }
    match (cid, uds) {
        (Some(cid), Some(uds)) => Ok(VsockSpec { cid, uds, transport }),
        _ => Err(format!("'{s}': vsock needs cid=N and uds=PATH")),
    }
}

/// Parses `52:54:00:12:34:56`.
fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || format!("'{s}' is not a MAC address (like 52:54:00:12:34:56)");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("'{s}' is a multicast address; a NIC needs a unicast one"));
    }
    Ok(mac)
}

/// Parses `tap=NAME|fd=N[,mac=MAC][,queues=N][,transport=T]`.
pub fn parse_net(s: &str) -> Result<NetSpec, String> {
    let mut backend = None;
    let mut spec = NetSpec { backend: NetBackendSpec::Fd(-1), mac: None, queues: 1, mtu: None, transport: None };
    let (mut port, mut state_dir) = (None, None);
    for option in s.split(',') {
        match option.split_once('=') {
            Some(("tap", name)) if !name.is_empty() => backend = Some(NetBackendSpec::Tap(name.to_string())),
            Some(("port", name)) if !name.is_empty() => port = Some(name.to_string()),
            Some(("state", dir)) if !dir.is_empty() => state_dir = Some(PathBuf::from(dir)),
            Some(("fd", n)) => {
                backend = Some(NetBackendSpec::Fd(
                    n.parse()
                        .ok()
                        .filter(|&n: &i32| n >= 0)
                        .ok_or_else(|| format!("'{option}': fd must be an open file descriptor number"))?,
                ))
            }
            Some(("mac", m)) => spec.mac = Some(parse_mac(m)?),
            Some(("queues", v)) => {
                spec.queues = v
                    .parse()
                    .ok()
                    .filter(|&n| (1..=16).contains(&n))
                    .ok_or_else(|| format!("'{option}': queues must be a number from 1 to 16"))?
            }
            Some(("transport", "pci")) => spec.transport = Some(VirtioTransport::Pci),
            Some(("transport", "mmio")) => spec.transport = Some(VirtioTransport::Mmio),
            _ => {
                return Err(format!("'{option}' is not a network option (tap=, fd=, port=, mac=, queues=, transport=)"))
            }
        }
    }
    if let Some(name) = port {
        // A port of an overlay network made by `rvmm net apply`: its tap, MAC, MTU and
        // queue count come from what apply recorded (in `state=DIR`, default /run/rvmm/net).
        let dir = state_dir.unwrap_or_else(|| PathBuf::from(vnet::DEFAULT_STATE_DIR));
        let attachment = vnet::port_tap(vnet::PortSource::StateDir(&dir), &name).map_err(|e| e.to_string())?;
        backend = Some(NetBackendSpec::Tap(attachment.tap_name));
        spec.mac = spec.mac.or(Some(attachment.mac.0));
        spec.mtu = u16::try_from(attachment.mtu).ok();
        spec.queues = u16::try_from(attachment.queues).unwrap_or(1).max(1);
    } else if state_dir.is_some() {
        return Err(format!("'{s}': state= goes with port="));
    }
    spec.backend = backend.ok_or_else(|| format!("'{s}': a network device needs tap=NAME, fd=N or port=NAME"))?;
    Ok(spec)
}

fn read_file(what: &str, path: &PathBuf) -> Result<Vec<u8>, CliExit> {
    std::fs::read(path).map_err(|e| CliExit::Usage(format!("cannot read {what} {}: {e}", path.display())))
}

/// Parses the process arguments.
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command, CliExit> {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    Err(CliExit::Done)
                }
                _ => Err(CliExit::Usage(e.render().to_string().trim_start_matches("error: ").trim_end().to_string())),
            };
        }
    };
    let run = match args.command {
        CommandArgs::Run(run) => run,
        CommandArgs::Ctl { socket, command } => return Ok(Command::Ctl { socket, command: command.join(" ") }),
        CommandArgs::Net { args } => return Ok(Command::Net(args)),
    };
    let firmware = match &run.firmware {
        Some(path) => Some(FirmwareConfig {
            image: FirmwareImage::load(path).map_err(|e| CliExit::Usage(e.to_string()))?,
            debugcon: run.debugcon.clone(),
        }),
        None => None,
    };
    let (kernel, kernel_name, default_cmdline) = match (&run.kernel, &firmware) {
        (Some(path), _) => (read_file("kernel", path)?, path.clone(), String::new()),
        (None, Some(_)) => (Vec::new(), PathBuf::new(), String::new()),
        (None, None) => {
            (rvmm_probes::hello_pvh_elf().to_vec(), PathBuf::from("<bundled hello probe>"), "hello".to_string())
        }
    };
    let initrd = match &run.initrd {
        Some(path) => Some(read_file("initrd", path)?),
        None => None,
    };
    Ok(Command::Run(VmConfig {
        kernel,
        kernel_name,
        initrd,
        cmdline: run.cmdline.unwrap_or(default_cmdline),
        cpus: run.cpus,
        memory_bytes: run.memory,
        console: run.console,
        boot_protocol: run.boot.into(),
        kvm_path: run.kvm_device,
        disks: run.disk,
        transport: run.transport.into(),
        stats: run.stats,
        nets: run.net,
        rng: run.rng,
        irqchip: match run.irqchip {
            IrqChipArg::Kernel => vmm::vm::IrqChipMode::Kernel,
            IrqChipArg::Split => vmm::vm::IrqChipMode::Split,
        },
        mmio_discovery: match run.mmio_discovery {
            MmioDiscoveryArg::Cmdline => vmm::vm::MmioDiscovery::Cmdline,
            MmioDiscoveryArg::Acpi => vmm::vm::MmioDiscovery::Acpi,
        },
        balloon: run.balloon.then_some(run.balloon_deflate_on_oom),
        api_socket: run.api_socket,
        vsock: run.vsock,
        firmware,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(parse_memory("256M"), Ok(256 << 20));
        assert_eq!(parse_memory("1028K"), Ok(1028 << 10));
        assert_eq!(parse_memory("268439552"), Ok((256 << 20) + 4096));
        for bad in ["1000000", "268435457", "1026K", "2K"] {
            let e = parse_memory(bad).unwrap_err();
            assert!(e.contains("not a multiple of 4 KiB"), "{e}");
        }
        assert!(parse_memory("0").is_err());
    }

    #[test]
    fn disks() {
        let spec = parse_disk("/tmp/a.img,ro,serial=abc,queues=2,engine=threads,transport=mmio").unwrap();
        assert_eq!(spec.transport, Some(VirtioTransport::Mmio));
        let d = spec.block;
        assert_eq!(d.path, PathBuf::from("/tmp/a.img"));
        assert!(d.read_only && !d.direct);
        assert_eq!((d.serial.as_deref(), d.queues, d.engine), (Some("abc"), 2, EngineKind::Threads));
        assert!(parse_disk("").is_err());
        assert!(parse_disk("a,queues=0").is_err());
        assert!(parse_disk("a,engine=aio").is_err());
        assert!(parse_disk("a,rw").is_err());
    }

    #[test]
    fn vsocks() {
        let v = parse_vsock("cid=3,uds=/tmp/v.sock").unwrap();
        assert_eq!((v.cid, v.uds.to_str()), (3, Some("/tmp/v.sock")));
        assert!(parse_vsock("cid=2,uds=/x").is_err());
        assert!(parse_vsock("cid=3").is_err());
        assert!(parse_vsock("uds=/x").is_err());
        assert!(parse_vsock("cid=3,uds=/x,port=1").is_err());
    }

    #[test]
    fn nets() {
        let n = parse_net("tap=tap0,mac=52:54:00:12:34:56,queues=2,transport=mmio").unwrap();
        assert_eq!(n.backend, NetBackendSpec::Tap("tap0".into()));
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!((n.queues, n.transport), (2, Some(VirtioTransport::Mmio)));
        assert_eq!(parse_net("fd=3").unwrap().backend, NetBackendSpec::Fd(3));
        assert!(parse_net("mac=52:54:00:12:34:56").is_err());
        assert!(parse_net("tap=t,mac=01:00:00:00:00:01").is_err());
        assert!(parse_net("tap=t,mac=zz").is_err());
        assert!(parse_net("tap=t,queues=0").is_err());
        assert!(parse_net("fd=-1").is_err());
        assert!(parse_net("tap=").is_err());
    }

    #[test]
    fn cpus_and_console() {
        assert_eq!(parse_cpus("4"), Ok(4));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("255").is_err());
        assert!(parse_cpus("x").is_err());
        assert_eq!(parse_console("file:/tmp/x"), Ok(ConsoleConfig::File("/tmp/x".into())));
        assert!(parse_console("file:").is_err());
        assert!(parse_console("tty").is_err());
    }
}
