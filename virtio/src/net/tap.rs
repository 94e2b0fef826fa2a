//! The host end of a virtio-net device: a tap interface (Documentation/
//! networking/tuntap.rst), opened with IFF_VNET_HDR so every frame carries the
//! virtio-net header and offloads pass through untouched.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use vmm_sys_util::ioctl::{ioctl_with_ref, ioctl_with_val};
use vmm_sys_util::ioctl_iow_nr;

const TUNTAP: u32 = b'T' as u32;
ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, libc::c_int);
ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, libc::c_uint);
ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, libc::c_int);

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

/// TUNSETOFFLOAD bits: what the guest can take (tuntap.rst).
pub const TUN_F_CSUM: u32 = 0x01;
/// The guest takes TCPv4 segmentation offload.
pub const TUN_F_TSO4: u32 = 0x02;
/// The guest takes TCPv6 segmentation offload.
pub const TUN_F_TSO6: u32 = 0x04;
/// The guest takes TSO with ECN.
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// The guest takes UDP fragmentation offload (old kernels only).
pub const TUN_F_UFO: u32 = 0x10;

/// Where a network device's frames go.
pub trait NetBackend: Send {
    /// Receives one frame (with its virtio-net header) into `buf`.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame (with its virtio-net header) gathered from `iov`.
    fn send(&mut self, iov: &[libc::iovec]) -> io::Result<usize>;
    /// The descriptor to poll for incoming frames.
    fn as_raw_fd(&self) -> RawFd;
    /// Tells the backend which offloads the guest accepts (TUN_F_* bits).
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
}

/// One queue of a tap interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Opens queue(s) of the tap `name`, creating it if it does not exist (that needs
    /// CAP_NET_ADMIN). `queues` > 1 opens a multi-queue tap, one fd per queue.
    pub fn open(name: &str, queues: usize, vnet_hdr_len: usize) -> io::Result<Vec<Tap>> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("'{name}' is not a network interface name"),
            ));
        }
        let mut taps = Vec::new();
        for _ in 0..queues.max(1) {
            // SAFETY: open(2) on a constant NUL-terminated path.
            let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd was just opened and is owned by nobody else.
            let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, _pad: [0; 22] };
            if queues > 1 {
                req.flags |= IFF_MULTI_QUEUE;
            }
            req.name[..name.len()].copy_from_slice(name.as_bytes());
            // SAFETY: TUNSETIFF reads (and may write back) an ifreq we own.
            if unsafe { ioctl_with_ref(&file, TUNSETIFF(), &req) } < 0 {
                return Err(io::Error::last_os_error());
            }
            let hdr = vnet_hdr_len as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads an int we own.
            if unsafe { ioctl_with_ref(&file, TUNSETVNETHDRSZ(), &hdr) } < 0 {
                return Err(io::Error::last_os_error());
            }
            let end = req.name.iter().position(|&b| b == 0).unwrap_or(libc::IFNAMSIZ);
            let real = String::from_utf8_lossy(&req.name[..end]).into_owned();
            taps.push(Tap { file, name: real });
        }
        Ok(taps)
    }

    /// Wraps an already open and configured tap fd (e.g. passed in by a management tool).
    pub fn from_fd(fd: OwnedFd, vnet_hdr_len: usize) -> io::Result<Tap> {
        let file = File::from(fd);
        // SAFETY: fcntl on an fd we own.
        unsafe {
            let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        let hdr = vnet_hdr_len as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int we own; it fails on a non-tap fd.
        if unsafe { ioctl_with_ref(&file, TUNSETVNETHDRSZ(), &hdr) } < 0 {
            return Err(io::Error::other(format!(
                "fd {} is not a tap opened with IFF_VNET_HDR: {}",
                file.as_raw_fd(),
                io::Error::last_os_error()
            )));
        }
        let name = format!("fd{}", file.as_raw_fd());
        Ok(Tap { file, name })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NetBackend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: read(2) into a buffer we own, of its length.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn send(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: the iovecs point into guest memory (see IoVecs in block::disk), which stays mapped.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe { ioctl_with_val(&self.file, TUNSETOFFLOAD(), libc::c_ulong::from(flags)) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A backend made of one end of a datagram socketpair: each datagram is one
/// frame, as with a tap. For tests and benchmarks, no privileges needed.
#[derive(Debug)]
pub struct SocketBackend {
    socket: std::os::unix::net::UnixDatagram,
}

impl SocketBackend {
    /// A connected pair: the device's end and the peer's end.
    pub fn pair() -> io::Result<(SocketBackend, std::os::unix::net::UnixDatagram)> {
        let (a, b) = std::os::unix::net::UnixDatagram::pair()?;
        a.set_nonblocking(true)?;
        Ok((SocketBackend { socket: a }, b))
    }
}

impl NetBackend for SocketBackend {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.recv(buf)
    }
    fn send(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: as for Tap::send.
        let n = unsafe { libc::writev(self.socket.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
}
