//! The benchmark's network: a fresh network namespace for the whole process (made
//! with `unshare(CLONE_NEWNET)` before any thread starts, so every thread and child
//! is in it, and gone when the process ends: nothing to clean up), with one tap
//! interface in it, up, with a MAC and an IPv4 address, IPv6 off (so the kernel sends
//! no router solicitations or DAD probes into the tap while frames are counted).
//!
//! Interface settings use the classic `SIOCSIF*` ioctls, statistics come from
//! `/proc/net/dev` (which, unlike `/sys/class/net`, shows the reader's namespace).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use virtio::net::tap::{NetBackend, Tap};
use virtio::net::VNET_HDR_LEN;

use crate::frames::{TAP_IP, TAP_MAC};

/// The tap's name (inside the private namespace, so it cannot clash).
pub const TAP_NAME: &str = "rvmmbench0";

/// Why the benchmark cannot go on.
#[derive(Debug)]
pub enum Problem {
    /// Not possible here (no privileges, no tun driver): skip, exit 0.
    Skip(String),
    /// Something failed that should have worked.
    Fail(String),
}

/// The tap, up in its own namespace.
pub struct TapEnv {
    /// The tap's queue (an `IFF_VNET_HDR` tap with 12-byte headers, non-blocking).
    pub tap: Box<dyn NetBackend>,
    /// The interface index.
    pub ifindex: i32,
    /// The interface's queue length: how many frames the tap holds for its reader.
    pub txqueuelen: i32,
    /// Its MTU.
    pub mtu: i32,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut r = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }
    fn int(&self) -> i32 {
        i32::from_ne_bytes(self.data[0..4].try_into().unwrap())
    }
    fn short(&self) -> i16 {
        i16::from_ne_bytes(self.data[0..2].try_into().unwrap())
    }
}

fn ioctl(sock: &OwnedFd, request: libc::c_ulong, req: &mut IfReq, what: &str) -> Result<(), String> {
    // SAFETY: the SIOC*IF* requests read and write an ifreq, which `req` is.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut IfReq) };
    if rc < 0 {
        return Err(format!("{what} of {TAP_NAME}: {}", io::Error::last_os_error()));
    }
    Ok(())
}

fn write_sysctl(path: &str, value: &str) -> Result<(), String> {
    match std::fs::write(path, value) {
        Ok(()) => Ok(()),
        // A kernel without IPv6 has nothing to turn off.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot write {value} to {path}: {e}")),
    }
}

/// Moves this process into a new network namespace and creates the tap there.
/// Must run before any other thread starts.
pub fn setup() -> Result<TapEnv, Problem> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(Problem::Skip("/dev/net/tun is missing (no tun driver here), nothing to measure".into()));
    }
    // SAFETY: unshare has no memory-safety preconditions.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EPERM) {
            Problem::Skip(format!(
                "cannot create a network namespace ({e}): this benchmark needs root \
                 (CAP_SYS_ADMIN and CAP_NET_ADMIN) for its private namespace and tap"
            ))
        } else {
            Problem::Fail(format!("unshare(CLONE_NEWNET): {e}"))
        });
    }
    // New interfaces in this namespace get IPv6 off.
    for p in ["/proc/sys/net/ipv6/conf/default/disable_ipv6", "/proc/sys/net/ipv6/conf/all/disable_ipv6"] {
        write_sysctl(p, "1").map_err(Problem::Fail)?;
    }
    let mut taps = Tap::open(TAP_NAME, 1, VNET_HDR_LEN).map_err(|e| {
        if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
            Problem::Skip(format!("cannot create a tap ({e}): this benchmark needs CAP_NET_ADMIN"))
        } else {
            Problem::Fail(format!("cannot create the tap {TAP_NAME}: {e}"))
        }
    })?;
    let tap = taps.pop().ok_or_else(|| Problem::Fail("Tap::open returned no queue".into()))?;
    configure().map_err(Problem::Fail).map(|(ifindex, txqueuelen, mtu)| TapEnv {
        tap: Box::new(tap),
        ifindex,
        txqueuelen,
        mtu,
    })
}

/// Sets the tap's MAC and address, brings it up; returns (ifindex, txqueuelen, mtu).
fn configure() -> Result<(i32, i32, i32), String> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("cannot open an AF_INET socket for ioctls: {}", io::Error::last_os_error()));
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };

    let mut r = IfReq::new(TAP_NAME);
    // struct sockaddr: sa_family ARPHRD_ETHER, then the address.
    r.data[0..2].copy_from_slice(&(libc::ARPHRD_ETHER).to_ne_bytes());
    r.data[2..8].copy_from_slice(&TAP_MAC);
    ioctl(&sock, libc::SIOCSIFHWADDR, &mut r, "setting the MAC")?;

    let sockaddr_in = |ip: [u8; 4]| {
        let mut d = [0u8; 24];
        d[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        d[4..8].copy_from_slice(&ip);
        d
    };
    let mut r = IfReq::new(TAP_NAME);
    r.data = sockaddr_in(TAP_IP);
    ioctl(&sock, libc::SIOCSIFADDR, &mut r, "setting the IPv4 address")?;
    let mut r = IfReq::new(TAP_NAME);
    r.data = sockaddr_in([255, 255, 255, 0]);
    ioctl(&sock, libc::SIOCSIFNETMASK, &mut r, "setting the netmask")?;

    let mut r = IfReq::new(TAP_NAME);
    ioctl(&sock, libc::SIOCGIFFLAGS, &mut r, "reading the flags")?;
    let flags = r.short() | libc::IFF_UP as i16;
    r.data[0..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl(&sock, libc::SIOCSIFFLAGS, &mut r, "bringing it up")?;

    let mut r = IfReq::new(TAP_NAME);
    ioctl(&sock, libc::SIOCGIFINDEX, &mut r, "reading the interface index")?;
    let ifindex = r.int();
    let mut r = IfReq::new(TAP_NAME);
    ioctl(&sock, libc::SIOCGIFTXQLEN, &mut r, "reading the queue length")?;
    let txqueuelen = r.int();
    let mut r = IfReq::new(TAP_NAME);
    ioctl(&sock, libc::SIOCGIFMTU, &mut r, "reading the MTU")?;
    Ok((ifindex, txqueuelen, r.int()))
}

/// An interface's counters from `/proc/net/dev`. For a tap, "rx" is what user space
/// wrote into it (frames the host received from the guest) and "tx" what the host sent
/// towards the reader of the tap (frames for the guest); `tx_dropped` counts frames
/// dropped because the tap's queue for its reader was full.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames written into the tap by its user.
    pub rx_packets: u64,
    /// Their bytes (without the virtio-net header).
    pub rx_bytes: u64,
    /// Written frames the tap dropped.
    pub rx_dropped: u64,
    /// Frames queued for the tap's reader.
    pub tx_packets: u64,
    /// Frames the tap dropped for want of room in its queue.
    pub tx_dropped: u64,
}

impl LinkStats {
    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &LinkStats) -> LinkStats {
        LinkStats {
            rx_packets: self.rx_packets.wrapping_sub(earlier.rx_packets),
            rx_bytes: self.rx_bytes.wrapping_sub(earlier.rx_bytes),
            rx_dropped: self.rx_dropped.wrapping_sub(earlier.rx_dropped),
            tx_packets: self.tx_packets.wrapping_sub(earlier.tx_packets),
            tx_dropped: self.tx_dropped.wrapping_sub(earlier.tx_dropped),
        }
    }
}

/// The tap's counters now.
pub fn link_stats() -> Result<LinkStats, String> {
    let text = std::fs::read_to_string("/proc/net/dev").map_err(|e| format!("cannot read /proc/net/dev: {e}"))?;
    parse_net_dev(&text, TAP_NAME).ok_or_else(|| format!("no {TAP_NAME} in /proc/net/dev"))
}

fn parse_net_dev(text: &str, name: &str) -> Option<LinkStats> {
    text.lines().find_map(|l| {
        let (iface, rest) = l.split_once(':')?;
        if iface.trim() != name {
            return None;
        }
        // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets errs drop ...
        let v: Vec<u64> = rest.split_whitespace().map(|x| x.parse().ok()).collect::<Option<_>>()?;
        (v.len() >= 12).then(|| LinkStats {
            rx_bytes: v[0],
            rx_packets: v[1],
            rx_dropped: v[3],
            tx_packets: v[9],
            tx_dropped: v[11],
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
            lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n\
            rvmmbench0: 6400 100 0 2 0 0 0 0 1514 1 0 7 0 0 0 0\n";
        let s = parse_net_dev(text, "rvmmbench0").unwrap();
        assert_eq!(s, LinkStats { rx_bytes: 6400, rx_packets: 100, rx_dropped: 2, tx_packets: 1, tx_dropped: 7 });
        assert!(parse_net_dev(text, "eth0").is_none());
    }
}
