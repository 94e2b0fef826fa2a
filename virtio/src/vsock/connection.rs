//! One stream connection between a guest vsock port and a host Unix socket:
//! its handshake state, the credit accounting of both directions
//! (virtio 1.x 5.10.6.3) and its shutdown state.
//!
//! Host to guest, nothing is buffered here: the socket is read only when the
//! muxer has a receive buffer in hand and the guest has credit, so a guest
//! that stops reading (or posts no buffers) throttles the host writer through
//! its socket buffer. Guest to host, data the socket does not take at once is
//! kept, up to the [`CONN_BUF_ALLOC`] we advertise; the guest may not send
//! more than that (its credit), so a slow host reader throttles the guest
//! through credit, and a guest that overruns it is reset.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::packet::*;
use super::HOST_CID;

/// Receive buffer space we advertise to the guest per connection
/// (`buf_alloc`): the most guest data held for a host socket that does not
/// read.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Bytes of guest data consumed (written to the socket) since our last
/// advertised `fwd_cnt` that make us send a CREDIT_UPDATE. At most half of
/// [`CONN_BUF_ALLOC`], so a guest waiting for credit always gets it.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;
/// Most payload bytes of one RW packet to the guest.
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;

/// Where a connection is in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: the REQUEST is (to be) sent, the guest has not answered.
    AwaitingResponse,
    /// Data may flow.
    Established,
}

/// The timeouts a connection can be under, after Firecracker's
/// `CONN_REQUEST_TIMEOUT_MS` and `CONN_SHUTDOWN_TIMEOUT_MS`: without them a
/// guest that never answers would hold a host client and a connection slot
/// for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// Host-initiated and the guest has not answered the REQUEST.
    Request,
    /// Both directions are over (the guest shut both, or shut sending and we
    /// sent it our SHUTDOWN), but the connection has not finished: guest data
    /// is still waiting for the host socket, or the guest owes its RST.
    Shutdown,
}

/// Why a connection must be reset (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset(pub &'static str);

/// What a connection has for the guest's next receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxPacket {
    /// A packet with this header; an RW packet's payload is in the scratch
    /// buffer passed to [`Connection::next_rx`].
    Packet(PacketHeader),
    /// Nothing to send now.
    Nothing,
    /// The socket failed: reset the connection.
    Reset(Reset),
}

/// One connection. The muxer owns it, keyed by (host port, guest port).
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    local_port: u32,
    peer_port: u32,
    state: ConnState,
    /// Control packets owed to the guest.
    request_pending: bool,
    request_sent: bool,
    response_pending: bool,
    credit_update_pending: bool,
    // Host to guest.
    /// Payload bytes sent to the guest (wrapping).
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The socket has data (or EOF) we have not read yet.
    readable: bool,
    /// The socket reached EOF and the guest was (or is being) told.
    host_eof: bool,
    /// We asked the guest for credit and wait for it.
    credit_requested: bool,
    // Guest to host.
    /// Bytes of ours that precede guest data on the socket (the `OK <port>` line).
    prefix: Vec<u8>,
    prefix_sent: usize,
    /// Guest data the socket has not taken yet.
    to_host: VecDeque<u8>,
    /// Guest payload bytes written to the socket (wrapping).
    fwd_cnt: u32,
    /// The `fwd_cnt` in the last header we sent.
    advertised_fwd_cnt: u32,
    guest_shut_rcv: bool,
    guest_shut_send: bool,
    write_shut: bool,
    /// Both directions are over: reset once `to_host` is written.
    closing: bool,
    /// The socket hung up; it is no longer in the epoll set.
    hung_up: bool,
    /// The events the socket is registered for in the muxer's epoll (None: not registered).
    pub(super) interest: Option<EventSet>,
    /// Whether the connection is in the muxer's list of connections with work for the guest.
    pub(super) in_rx_list: bool,
    /// The timeout the muxer runs for the connection and when it expires
    /// (kept here so a change of [`timeout`](Self::timeout) is noticed).
    pub(super) deadline: Option<(Timeout, Instant)>,
}

impl Connection {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: ConnState) -> Self {
        Connection {
            stream,
            local_port,
            peer_port,
            state,
            request_pending: false,
            request_sent: false,
            response_pending: false,
            credit_update_pending: false,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            readable: false,
            host_eof: false,
            credit_requested: false,
            prefix: Vec::new(),
            prefix_sent: 0,
            to_host: VecDeque::new(),
            fwd_cnt: 0,
            advertised_fwd_cnt: 0,
            guest_shut_rcv: false,
            guest_shut_send: false,
            write_shut: false,
            closing: false,
            hung_up: false,
            interest: None,
            in_rx_list: false,
            deadline: None,
        }
    }

    /// A connection the guest asked for with a REQUEST (whose credit fields
    /// are `buf_alloc`, `fwd_cnt`), connected to a host socket: it owes the
    /// guest a RESPONSE.
    pub fn guest_initiated(stream: UnixStream, local_port: u32, peer_port: u32, buf_alloc: u32, fwd_cnt: u32) -> Self {
        let mut c = Connection::new(stream, local_port, peer_port, ConnState::Established);
        c.peer_buf_alloc = buf_alloc;
        c.peer_fwd_cnt = fwd_cnt;
        c.response_pending = true;
        c
    }

    /// A connection a host client asked for (`CONNECT <peer_port>`): it owes
    /// the guest a REQUEST and waits for its RESPONSE.
    pub fn host_initiated(stream: UnixStream, local_port: u32, peer_port: u32) -> Self {
        let mut c = Connection::new(stream, local_port, peer_port, ConnState::AwaitingResponse);
        c.request_pending = true;
        c
    }

    /// The host-side port.
    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    /// The guest-side port.
    pub fn peer_port(&self) -> u32 {
        self.peer_port
    }

    /// The handshake state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// The host socket's descriptor.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Whether the guest knows of the connection (so ending it needs an RST).
    pub fn guest_knows(&self) -> bool {
        self.state == ConnState::Established || self.request_sent
    }

    /// Guest data held for the socket.
    pub fn buffered(&self) -> usize {
        self.to_host.len()
    }

    /// Bytes we may still send the guest: `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`,
    /// zero if the guest's numbers do not add up.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Takes the credit fields every guest packet carries.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// The guest accepted our REQUEST: tell the host client `OK <port>`.
    ///
    /// A RESPONSE on an established connection does not get here (the muxer
    /// drops it); one for a REQUEST not sent yet is a guest that guessed our
    /// port, and is reset like any packet before the handshake.
    pub fn on_response(&mut self) -> Result<(), Reset> {
        if self.state != ConnState::AwaitingResponse || !self.request_sent {
            return Err(Reset("unexpected RESPONSE"));
        }
        self.state = ConnState::Established;
        self.prefix = format!("OK {}\n", self.local_port).into_bytes();
        self.flush()
    }

    /// Guest data for the socket.
    pub fn on_rw(&mut self, data: &[u8]) -> Result<(), Reset> {
        if self.state != ConnState::Established {
            return Err(Reset("RW before the connection was established"));
        }
        if self.guest_shut_send {
            return Err(Reset("RW after the guest's SHUTDOWN(SEND)"));
        }
        if self.to_host.len() + data.len() > CONN_BUF_ALLOC as usize {
            return Err(Reset("the guest sent more than its credit"));
        }
        self.to_host.extend(data);
        self.flush()
    }

    /// The guest will receive (`VSOCK_SHUTDOWN_RCV`) and/or send
    /// (`VSOCK_SHUTDOWN_SEND`) no more.
    pub fn on_shutdown(&mut self, flags: u32) -> Result<(), Reset> {
        if self.state != ConnState::Established {
            return Err(Reset("SHUTDOWN before the connection was established"));
        }
        if flags & VSOCK_SHUTDOWN_RCV != 0 && !self.guest_shut_rcv {
            self.guest_shut_rcv = true;
            // The host writer learns at its next write (EPIPE).
            let _ = self.stream.shutdown(Shutdown::Read);
        }
        if flags & VSOCK_SHUTDOWN_SEND != 0 {
            self.guest_shut_send = true;
        }
        // Both directions are over once the guest shut both, or shut sending
        // after we told it the host will send no more: we answer with the RST
        // that ends a clean disconnect (5.10.6.4), after writing what we hold.
        if self.guest_shut_send && (self.guest_shut_rcv || self.host_eof) {
            self.closing = true;
        }
        self.flush()
    }

    /// The guest asked for our credit.
    pub fn on_credit_request(&mut self) {
        self.credit_update_pending = true;
    }

    /// The socket is ready with `events` (as epoll reported them).
    pub fn on_socket_event(&mut self, events: EventSet) -> Result<(), Reset> {
        if events.contains(EventSet::ERROR) {
            return Err(Reset("socket error"));
        }
        if events.contains(EventSet::HANG_UP) {
            if self.state == ConnState::AwaitingResponse {
                return Err(Reset("the host client left before the guest answered"));
            }
            // No more events will come: what is left to read is read when the
            // guest has credit and buffers, writes will fail.
            self.hung_up = true;
            self.readable = true;
        }
        if events.contains(EventSet::IN) {
            self.readable = true;
        }
        if events.intersects(EventSet::OUT | EventSet::HANG_UP) {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes what we hold to the socket until it would block.
    pub fn flush(&mut self) -> Result<(), Reset> {
        while self.prefix_sent < self.prefix.len() {
            match send_nosignal(self.stream.as_raw_fd(), &self.prefix[self.prefix_sent..]) {
                Ok(n) => self.prefix_sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(_) => return Err(Reset("socket write failed")),
            }
        }
        while !self.to_host.is_empty() {
            let (front, back) = self.to_host.as_slices();
            let chunk = if front.is_empty() { back } else { front };
            match send_nosignal(self.stream.as_raw_fd(), chunk) {
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return Err(Reset("socket write failed")),
            }
        }
        if self.fwd_cnt.wrapping_sub(self.advertised_fwd_cnt) >= CREDIT_UPDATE_THRESHOLD {
            self.credit_update_pending = true;
        }
        if self.to_host.is_empty() && self.guest_shut_send && !self.write_shut {
            // The host reader sees EOF after the guest's last byte.
            self.write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    /// Whether both directions are over and everything was written: time for the RST.
    pub fn should_close(&self) -> bool {
        self.closing && self.to_host.is_empty() && self.prefix_sent == self.prefix.len()
    }

    /// The timeout that should run for the connection now, if any. A
    /// half-closed connection has none: either side may legitimately keep
    /// sending in the other direction for as long as it likes.
    pub fn timeout(&self) -> Option<Timeout> {
        if self.state == ConnState::AwaitingResponse {
            Some(Timeout::Request)
        } else if self.guest_shut_send && (self.guest_shut_rcv || self.host_eof) {
            Some(Timeout::Shutdown)
        } else {
            None
        }
    }

    /// Whether host data may be read for the guest at all.
    fn may_read(&self) -> bool {
        self.state == ConnState::Established && !self.host_eof && !self.guest_shut_rcv && !self.closing
    }

    /// Whether [`next_rx`](Self::next_rx) would produce a packet.
    pub fn wants_rx(&self) -> bool {
        self.request_pending
            || self.response_pending
            || (self.may_read() && self.readable && (self.peer_credit() > 0 || !self.credit_requested))
            || self.credit_update_pending
    }

    /// The epoll events the socket should be registered for now: readable
    /// only while we want to read and do not yet know it is (level-triggered
    /// epoll would repeat it otherwise), writable while we hold data.
    pub fn desired_interest(&self) -> EventSet {
        let mut e = EventSet::empty();
        if self.may_read() && !self.readable {
            e |= EventSet::IN;
        }
        if self.prefix_sent < self.prefix.len() || !self.to_host.is_empty() {
            e |= EventSet::OUT;
        }
        e
    }

    /// Whether the socket hung up (and left the epoll set).
    pub fn hung_up(&self) -> bool {
        self.hung_up
    }

    /// The next packet for the guest, for a receive buffer with room for
    /// `scratch.len()` (at least 1) payload bytes; RW payload is read from the
    /// socket into `scratch`. Updates the connection as if the packet was sent.
    pub fn next_rx(&mut self, guest_cid: u64, scratch: &mut [u8]) -> RxPacket {
        if self.request_pending {
            self.request_pending = false;
            self.request_sent = true;
            return RxPacket::Packet(self.header(guest_cid, VSOCK_OP_REQUEST, 0, 0));
        }
        if self.response_pending {
            self.response_pending = false;
            return RxPacket::Packet(self.header(guest_cid, VSOCK_OP_RESPONSE, 0, 0));
        }
        if self.may_read() && self.readable && !scratch.is_empty() {
            let credit = self.peer_credit() as usize;
            if credit == 0 {
                if !self.credit_requested {
                    self.credit_requested = true;
                    return RxPacket::Packet(self.header(guest_cid, VSOCK_OP_CREDIT_REQUEST, 0, 0));
                }
            } else {
                let want = scratch.len().min(credit);
                loop {
                    match self.stream.read(&mut scratch[..want]) {
                        Ok(0) => {
                            self.host_eof = true;
                            self.readable = false;
                            let mut flags = VSOCK_SHUTDOWN_SEND;
                            if self.guest_shut_send {
                                flags |= VSOCK_SHUTDOWN_RCV;
                            }
                            return RxPacket::Packet(self.header(guest_cid, VSOCK_OP_SHUTDOWN, flags, 0));
                        }
                        Ok(n) => {
                            let h = self.header(guest_cid, VSOCK_OP_RW, 0, n as u32);
                            self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
                            return RxPacket::Packet(h);
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            self.readable = false;
                            break;
                        }
                        Err(_) => return RxPacket::Reset(Reset("socket read failed")),
                    }
                }
            }
        }
        if self.credit_update_pending {
            return RxPacket::Packet(self.header(guest_cid, VSOCK_OP_CREDIT_UPDATE, 0, 0));
        }
        RxPacket::Nothing
    }

    /// A header from us to the guest on this connection, carrying our credit
    /// (which counts as advertised from here on).
    fn header(&mut self, guest_cid: u64, op: u16, flags: u32, len: u32) -> PacketHeader {
        self.advertised_fwd_cnt = self.fwd_cnt;
        self.credit_update_pending = false;
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            socket_type: VSOCK_TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The RST that ends this connection for the guest.
    pub fn reset_header(&self, guest_cid: u64) -> PacketHeader {
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            socket_type: VSOCK_TYPE_STREAM,
            op: VSOCK_OP_RST,
            ..PacketHeader::default()
        }
    }
}

/// send(2) with MSG_NOSIGNAL: a peer that went away is an EPIPE error, never
/// a SIGPIPE for the whole VMM.
fn send_nosignal(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: send reads at most `buf.len()` bytes from `buf`; `fd` is an open socket we own.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
