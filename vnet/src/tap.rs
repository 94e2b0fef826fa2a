//! Persistent tap devices for VM ports. rtnetlink cannot create a tap that outlives
//! the process (the tun driver's netlink support only describes taps), so this uses
//! the tun driver's own interface: TUNSETIFF then TUNSETPERSIST on /dev/net/tun.
//!
//! The flags match what rvmm's virtio-net opens the tap with later (`IFF_TAP |
//! IFF_NO_PI | IFF_VNET_HDR`, plus `IFF_MULTI_QUEUE` for more than one queue pair):
//! the tun driver refuses to attach a multi-queue opener to a single-queue tap and
//! the other way round.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

// _IOW('T', 202, int) and _IOW('T', 203, int) from <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates a persistent tap called `name` in the calling thread's network namespace.
pub fn create_persistent(name: &str, queues: u32) -> io::Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("'{name}' is not an interface name")));
    }
    let file = OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, _pad: [0; 22] };
    if queues > 1 {
        req.flags |= IFF_MULTI_QUEUE;
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and may write back an ifreq we own.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNSETPERSIST takes its argument by value.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
