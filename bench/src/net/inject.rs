//! The host side of tap-to-guest: a thread that sends frames out of the tap
//! interface as fast as it can, through a raw `AF_PACKET` socket and the tap's normal
//! transmit path (its qdisc, then the tun driver, which queues each frame for the
//! reader of the tap's fd and drops it when that queue — `txqueuelen` frames — is
//! full). Two ways ([`Method`]):
//!
//! - [`Method::Copy`]: `sendmmsg`, 64 frames per call; the kernel copies each frame
//!   into a fresh packet, as packets from a host socket or another interface arrive.
//! - [`Method::Ring`]: a transmit ring (`PACKET_TX_RING`, TPACKET_V2) filled with the
//!   frame once; the thread flips slots back to "send" and calls `sendto` once per
//!   batch. The kernel builds each packet's payload from the ring's pages without
//!   copying (the tun driver releases the slot as soon as it has queued the packet;
//!   the data stays referenced by the packet and the benchmark never changes it). The
//!   injector costs less per frame, but the reader then copies out of pages shared by
//!   many packets, whose reference counts both threads keep changing.
//!
//! The TSO frame goes with a `virtio_net_hdr` (`PACKET_VNET_HDR`): the kernel builds
//! a 64 KiB GSO packet from it. If the tap has the guest's TSO offload
//! (`TUNSETOFFLOAD`), the reader gets it whole with a GSO header; if not, the kernel
//! cuts it into 45 MTU-sized frames and computes their checksums on the way, in the
//! injector's thread, as it would for a guest without offloads.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::frames::{self, Kind, GUEST_MAC};

const SOL_PACKET: libc::c_int = 263;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_TX_RING: libc::c_int = 13;
const PACKET_VNET_HDR: libc::c_int = 15;
const TPACKET_V2: libc::c_int = 1;
const TP_STATUS_AVAILABLE: u32 = 0;
const TP_STATUS_SEND_REQUEST: u32 = 1;
const TP_STATUS_WRONG_FORMAT: u32 = 4;
/// Where a TPACKET_V2 transmit frame's data starts in its slot: the aligned
/// `tpacket2_hdr` (TPACKET2_HDRLEN - sizeof(struct sockaddr_ll)).
const TX_DATA_OFFSET: usize = 32;
/// `tp_len` in `tpacket2_hdr`.
const TP_LEN_OFFSET: usize = 4;

#[repr(C)]
struct TpacketReq {
    tp_block_size: u32,
    tp_block_nr: u32,
    tp_frame_size: u32,
    tp_frame_nr: u32,
}

/// Frames per `sendmmsg` ([`Method::Copy`]).
const BATCH: usize = 64;

/// How the injector hands frames to the kernel (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `sendmmsg`: every frame copied into a new packet.
    Copy,
    /// `PACKET_TX_RING`: packets refer to the ring's pages.
    Ring,
}

impl Method {
    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Method::Copy => "copy",
            Method::Ring => "ring",
        }
    }
}

/// What the injector did.
#[derive(Debug, Clone, Copy, Default)]
pub struct InjectStats {
    /// Frames the kernel took.
    pub sent: u64,
    /// `sendmmsg` calls that failed with ENOBUFS (the tap's queue was full and it said so).
    pub refused: u64,
}

/// A running injector.
pub struct Injector {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<InjectStats, String>>,
}

/// The mapped transmit ring: `blocks` of `block_size` bytes, each holding
/// `per_block` slots of `frame_size` bytes from its start (the kernel's layout).
struct Ring {
    base: *mut u8,
    len: usize,
    block_size: usize,
    per_block: usize,
    frame_size: usize,
    frames: usize,
}

// SAFETY: the mapping belongs to the Ring alone; it moves to the injector thread whole.
unsafe impl Send for Ring {}

impl Ring {
    /// Slot `i`.
    fn slot(&self, i: usize) -> *mut u8 {
        let offset = (i / self.per_block) * self.block_size + (i % self.per_block) * self.frame_size;
        assert!(i < self.frames && offset + self.frame_size <= self.len);
        // SAFETY: inside the mapping (checked above).
        unsafe { self.base.add(offset) }
    }

    /// The status word of slot `i`, shared with the kernel.
    fn status(&self, i: usize) -> &AtomicU32 {
        // SAFETY: the slot's first word is its u32 tp_status, 16-byte aligned, which the
        // kernel reads and writes with single-word accesses; it lives as long as self.
        unsafe { &*(self.slot(i) as *const AtomicU32) }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping the ring mapped in `start`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Starts sending frames of `kind` out of interface `ifindex`.
pub fn start(ifindex: i32, kind: Kind, method: Method) -> Result<Injector, String> {
    // Protocol 0: the socket sends, it receives nothing.
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("cannot open an AF_PACKET socket: {}", io::Error::last_os_error()));
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let setopt = |level, name, value: *const libc::c_void, len: usize, what: &str| {
        // SAFETY: setsockopt reads `len` bytes at `value`, which the callers own.
        let rc = unsafe { libc::setsockopt(sock.as_raw_fd(), level, name, value, len as libc::socklen_t) };
        if rc < 0 {
            return Err(format!("setsockopt {what}: {}", io::Error::last_os_error()));
        }
        Ok(())
    };
    let int = |v: &libc::c_int| (v as *const libc::c_int).cast::<libc::c_void>();
    let isz = std::mem::size_of::<libc::c_int>();
    let mut data = Vec::new();
    if kind == Kind::Tso {
        setopt(SOL_PACKET, PACKET_VNET_HDR, int(&1), isz, "PACKET_VNET_HDR")?;
        // The socket's header is the 10-byte virtio_net_hdr (no num_buffers).
        data.extend_from_slice(&frames::vnet_header(kind)[..10]);
    }
    data.extend(frames::host_to_guest_frame(kind));
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let spawn = |f: Box<dyn FnOnce() -> Result<InjectStats, String> + Send>| {
        std::thread::Builder::new().name("injector".into()).spawn(f).map(|handle| Injector { stop, handle })
    };
    if method == Method::Copy {
        let big = 8 << 20;
        setopt(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, int(&big), isz, "SO_SNDBUFFORCE")?;
        return spawn(Box::new(move || run_copy(sock, ifindex, data, &stop2)))
            .map_err(|e| format!("cannot start the injector thread: {e}"));
    }
    setopt(SOL_PACKET, PACKET_VERSION, int(&TPACKET_V2), isz, "PACKET_VERSION")?;
    // Slots of whole 16-byte units; 64 KiB blocks (4 MiB for the TSO frame's 64 slots,
    // 512 KiB for 256 small ones).
    let frame_size = (TX_DATA_OFFSET + data.len()).next_multiple_of(16);
    let block_size = 64 * 1024;
    let per_block = block_size / frame_size;
    if per_block == 0 {
        return Err(format!("a {}-byte frame does not fit a {block_size}-byte ring block", data.len()));
    }
    let slots: usize = if kind == Kind::Tso { 64 } else { 256 };
    let blocks = slots.div_ceil(per_block);
    let req = TpacketReq {
        tp_block_size: block_size as u32,
        tp_block_nr: blocks as u32,
        tp_frame_size: frame_size as u32,
        tp_frame_nr: (blocks * per_block) as u32,
    };
    setopt(
        SOL_PACKET,
        PACKET_TX_RING,
        (&req as *const TpacketReq).cast(),
        std::mem::size_of::<TpacketReq>(),
        "PACKET_TX_RING",
    )?;
    let len = block_size * blocks;
    // SAFETY: mapping the socket's ring, as packet(7) says; checked below.
    let base = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, sock.as_raw_fd(), 0)
    };
    if base == libc::MAP_FAILED {
        return Err(format!("cannot map the AF_PACKET transmit ring: {}", io::Error::last_os_error()));
    }
    let ring = Ring { base: base.cast(), len, block_size, per_block, frame_size, frames: blocks * per_block };
    for i in 0..ring.frames {
        let slot = ring.slot(i);
        // SAFETY: the slot holds frame_size >= TX_DATA_OFFSET + data.len() bytes.
        unsafe {
            std::ptr::copy_nonoverlapping((data.len() as u32).to_ne_bytes().as_ptr(), slot.add(TP_LEN_OFFSET), 4);
            std::ptr::copy_nonoverlapping(data.as_ptr(), slot.add(TX_DATA_OFFSET), data.len());
        }
    }
    spawn(Box::new(move || run_ring(sock, ring, ifindex, &stop2)))
        .map_err(|e| format!("cannot start the injector thread: {e}"))
}

impl Injector {
    /// Stops the thread; returns what it did.
    pub fn stop(self) -> Result<InjectStats, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().map_err(|_| "the injector thread panicked".to_string())?
    }
}

/// The destination of every frame: the tap, as an IPv4 frame to the guest's MAC.
fn destination(ifindex: i32) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zeros is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&GUEST_MAC);
    addr
}

fn run_copy(sock: OwnedFd, ifindex: i32, frame: Vec<u8>, stop: &AtomicBool) -> Result<InjectStats, String> {
    let mut addr = destination(ifindex);
    let mut iov = libc::iovec { iov_base: frame.as_ptr() as *mut libc::c_void, iov_len: frame.len() };
    // SAFETY: mmsghdr is plain data; all-zeros is valid.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for m in &mut msgs {
        m.msg_hdr.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
        m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut stats = InjectStats::default();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: every mmsghdr points at `addr` and `iov`, which point at `frame`; all
        // outlive the call, and the kernel only reads them.
        let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n >= 0 {
            stats.sent += n as u64;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOBUFS) | Some(libc::EAGAIN) => stats.refused += 1,
            Some(libc::EINTR) => {}
            _ => return Err(format!("sendmmsg on the tap: {e}")),
        }
    }
    Ok(stats)
}

fn run_ring(sock: OwnedFd, ring: Ring, ifindex: i32, stop: &AtomicBool) -> Result<InjectStats, String> {
    let addr = destination(ifindex);
    let mut stats = InjectStats::default();
    let mut next = 0usize;
    while !stop.load(Ordering::Relaxed) {
        // Hand every free slot, in ring order, back to the kernel.
        let mut queued = 0u64;
        for _ in 0..ring.frames {
            let st = ring.status(next);
            match st.load(Ordering::Acquire) {
                TP_STATUS_AVAILABLE => {
                    st.store(TP_STATUS_SEND_REQUEST, Ordering::Release);
                    queued += 1;
                    next = (next + 1) % ring.frames;
                }
                TP_STATUS_WRONG_FORMAT => {
                    return Err("the kernel refused the injected frame (TP_STATUS_WRONG_FORMAT)".into())
                }
                _ => break,
            }
        }
        if queued == 0 {
            std::hint::spin_loop();
        }
        // SAFETY: sendto with no data (the ring holds it) and a sockaddr_ll we own.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n >= 0 {
            stats.sent += queued;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOBUFS) | Some(libc::EAGAIN) => stats.refused += 1,
            Some(libc::EINTR) => {}
            _ => return Err(format!("sendto on the tap's transmit ring: {e}")),
        }
    }
    Ok(stats)
}
