//! The virtio-vsock I/O thread: it multiplexes every guest connection onto
//! host Unix sockets (Firecracker's convention).
//!
//! - Guest to host: a REQUEST to port P connects to the socket `{uds_path}_P`;
//!   nobody listening there is answered with RST.
//! - Host to guest: a client connects to the listening socket `uds_path` and
//!   writes `CONNECT <port>\n`; the guest gets a REQUEST from a host port the
//!   muxer allocates (from [`FIRST_HOST_PORT`]), and on its RESPONSE the
//!   client reads `OK <host port>\n`, after which bytes flow both ways. A
//!   guest RST closes the client.
//!
//! The worker thread polls the three queue eventfds, the listening socket and
//! one epoll of its own holding every connection's socket (added and removed
//! as connections come and go; an epoll fd is itself pollable), plus a
//! timerfd armed for the earliest connection deadline (see [`Timeout`]): a
//! host-initiated REQUEST the guest does not answer, or a shutdown that does
//! not finish, ends the connection after [`CONN_REQUEST_TIMEOUT`] or
//! [`CONN_SHUTDOWN_TIMEOUT`] as in Firecracker. The timer is disarmed while
//! no connection has a deadline.
//!
//! Packets for the guest only go into receive buffers the guest posted. What
//! waits for buffers is bounded: per connection, a few flags (REQUEST,
//! RESPONSE, CREDIT_UPDATE owed) and "its socket is readable" (host data is
//! read only when a buffer is in hand); plus a queue of at most
//! [`CONTROL_QUEUE_CAP`] RSTs, which stops the transmit queue while full.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnState, Connection, Reset, RxPacket, Timeout, MAX_PKT_PAYLOAD};
use super::packet::*;
use super::{EVENT_QUEUE, HOST_CID, MAX_CONNECTIONS, RX_QUEUE, TX_QUEUE};
use crate::device::{ActiveQueue, DeviceStatusSink, VirtioInterrupt};
use crate::queue::DescriptorChain;
use crate::worker::WorkerHandler;

/// Worker token of the listening socket (the queues use their index).
pub const LISTENER_TOKEN: u64 = 3;
/// Worker token of the connections' epoll.
pub const CONNECTIONS_TOKEN: u64 = 4;
/// Worker token of the timerfd of connection deadlines.
pub const TIMER_TOKEN: u64 = 5;
/// How long the guest has to answer a host-initiated REQUEST with RESPONSE
/// or RST (Firecracker's `CONN_REQUEST_TIMEOUT_MS`).
pub const CONN_REQUEST_TIMEOUT: Duration = Duration::from_millis(2000);
/// How long a connection whose both directions are over may take to finish
/// (Firecracker's `CONN_SHUTDOWN_TIMEOUT_MS`).
pub const CONN_SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(2000);
/// The first host port given to host-initiated connections.
pub const FIRST_HOST_PORT: u32 = 1024;
/// Most RSTs waiting for receive buffers; the transmit queue is not processed
/// while it is full (each guest packet causes at most one).
pub const CONTROL_QUEUE_CAP: usize = 2 * MAX_CONNECTIONS;
/// Longest `CONNECT <port>` line a host client may send, newline included.
pub const CONNECT_LINE_MAX: usize = 32;

/// Counters a test or the statistics can read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VsockCounters {
    /// Well-formed guest packets handled.
    pub tx_packets: u64,
    /// Guest packets dropped as malformed (short, bad length, wrong CIDs).
    pub tx_dropped: u64,
    /// Packets given to the guest.
    pub rx_packets: u64,
    /// RSTs dropped because the control queue was full.
    pub rx_dropped: u64,
    /// Receive buffers too small for a header, returned empty.
    pub rx_bad_buffers: u64,
    /// Connections reset by the device (RST sent or owed).
    pub resets: u64,
    /// Of those, connections ended because a [`Timeout`] expired.
    pub timeouts: u64,
    /// Well-formed guest packets ignored: a REQUEST or RESPONSE on an
    /// established connection (counted in `tx_packets` too).
    pub tx_ignored: u64,
}

/// Where the muxer reads the time for connection deadlines; injectable so
/// tests need not wait for timeouts.
pub type Clock = Box<dyn Fn() -> Instant + Send>;

/// A host client that connected to `uds_path` and has not sent its whole
/// `CONNECT` line yet.
struct HostClient {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The state of the virtio-vsock I/O thread.
pub struct VsockWorker {
    mem: GuestMemoryMmap,
    rx: ActiveQueue,
    tx: ActiveQueue,
    event: ActiveQueue,
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    /// Connections by id (their epoll token).
    conns: HashMap<u64, Connection>,
    /// Connection ids by (host port, guest port).
    keys: HashMap<(u32, u32), u64>,
    /// Host clients before their CONNECT line, by id (their epoll token).
    clients: HashMap<u64, HostClient>,
    next_id: u64,
    next_host_port: u32,
    /// Connections that may have a packet for the guest, in turn.
    rx_list: VecDeque<u64>,
    /// RSTs for the guest, sent before any connection's packets.
    control: VecDeque<PacketHeader>,
    tx_stalled: bool,
    max_connections: usize,
    scratch: Vec<u8>,
    interrupt: Arc<dyn VirtioInterrupt>,
    status: Arc<dyn DeviceStatusSink>,
    broken: bool,
    /// Deadlines of the connections that have one, earliest first, with
    /// their ids (at most one entry per connection).
    deadlines: BTreeSet<(Instant, u64)>,
    /// Non-blocking, armed for the first of `deadlines`.
    timer: TimerFd,
    /// What `timer` is armed for (None: disarmed), to skip needless syscalls.
    timer_at: Option<Instant>,
    /// `timer_at` may be wrong (the timer fired, or arming failed): set it again.
    timer_stale: bool,
    clock: Clock,
    request_timeout: Duration,
    shutdown_timeout: Duration,
    /// Packet counters.
    pub counters: VsockCounters,
}

impl VsockWorker {
    /// A worker for the guest `guest_cid` over its `rx`, `tx` and `event`
    /// queues, accepting host clients on `listener` (non-blocking) and
    /// connecting guest requests to `{uds_path}_{port}`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mem: GuestMemoryMmap,
        rx: ActiveQueue,
        tx: ActiveQueue,
        event: ActiveQueue,
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
        interrupt: Arc<dyn VirtioInterrupt>,
        status: Arc<dyn DeviceStatusSink>,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(VsockWorker {
            mem,
            rx,
            tx,
            event,
            guest_cid,
            uds_path,
            listener,
            epoll: Epoll::new()?,
            conns: HashMap::new(),
            keys: HashMap::new(),
            clients: HashMap::new(),
            next_id: 1,
            next_host_port: FIRST_HOST_PORT,
            rx_list: VecDeque::new(),
            control: VecDeque::new(),
            tx_stalled: false,
            max_connections: MAX_CONNECTIONS,
            scratch: vec![0u8; MAX_PKT_PAYLOAD],
            interrupt,
            status,
            broken: false,
            deadlines: BTreeSet::new(),
            timer: nonblocking_timerfd()?,
            timer_at: None,
            timer_stale: false,
            clock: Box::new(Instant::now),
            request_timeout: CONN_REQUEST_TIMEOUT,
            shutdown_timeout: CONN_SHUTDOWN_TIMEOUT,
            counters: VsockCounters::default(),
        })
    }

    /// What the worker thread polls: the queue eventfds (token = queue
    /// index), the listener, the connections' epoll and the deadline timer.
    pub fn polled_fds(&self) -> Vec<(RawFd, u64, EventSet)> {
        vec![
            (self.rx.notify_fd(), u64::from(RX_QUEUE), EventSet::IN),
            (self.tx.notify_fd(), u64::from(TX_QUEUE), EventSet::IN),
            (self.event.notify_fd(), u64::from(EVENT_QUEUE), EventSet::IN),
            (self.listener.as_raw_fd(), LISTENER_TOKEN, EventSet::IN),
            (self.epoll.as_raw_fd(), CONNECTIONS_TOKEN, EventSet::IN),
            (self.timer.as_raw_fd(), TIMER_TOKEN, EventSet::IN),
        ]
    }

    /// Guest data held for host sockets that do not take it yet (at most
    /// `CONN_BUF_ALLOC` per connection).
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(Connection::buffered).sum()
    }

    /// Lowers (or raises) the connection limit from [`MAX_CONNECTIONS`].
    pub fn set_connection_limit(&mut self, limit: usize) {
        self.max_connections = limit;
    }

    /// Changes the [`CONN_REQUEST_TIMEOUT`] and [`CONN_SHUTDOWN_TIMEOUT`]
    /// of connections whose deadline starts from now on.
    pub fn set_timeouts(&mut self, request: Duration, shutdown: Duration) {
        self.request_timeout = request;
        self.shutdown_timeout = shutdown;
    }

    /// Reads the time from `clock` instead of [`Instant::now`], for
    /// deadlines that start from now on (tests set it before any connection).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// Whether the deadline timer is armed (it is exactly while some
    /// connection has a deadline).
    pub fn timer_armed(&self) -> bool {
        self.timer.is_armed().unwrap_or(false)
    }

    /// Open connections (host clients still sending `CONNECT` not included).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Connections waiting for a receive buffer (at most one entry each).
    pub fn rx_waiting(&self) -> usize {
        self.rx_list.len()
    }

    /// Handles every guest packet in the transmit queue, then delivers what
    /// the guest is owed into its receive buffers.
    pub fn process_tx(&mut self) {
        self.service();
    }

    /// Delivers what the guest is owed into its receive buffers (after the
    /// guest posted some), then resumes a stalled transmit queue.
    pub fn process_rx(&mut self) {
        self.service();
    }

    /// Ends the connections whose deadline passed (as when the timer fires),
    /// then moves packets as [`process_tx`](Self::process_tx) does.
    pub fn process_timer(&mut self) {
        self.expire();
        self.service();
    }

    /// Handles the host side without waiting: new clients on the listener,
    /// readiness of every socket; then moves packets as
    /// [`process_tx`](Self::process_tx) does.
    pub fn process_host(&mut self) {
        self.accept_clients();
        self.socket_events();
        self.service();
    }

    fn fail(&mut self, what: &dyn std::fmt::Display) {
        if !self.broken {
            log::warn!("virtio-vsock: {what}; the device needs a reset");
            self.broken = true;
            self.status.needs_reset();
        }
    }

    fn signal(&mut self, q: u16) {
        let active = if q == RX_QUEUE { &mut self.rx } else { &mut self.tx };
        match active.queue.needs_notification(&self.mem) {
            Ok(true) => self.interrupt.notify_queue(q),
            Ok(false) => {}
            Err(e) => self.fail(&e),
        }
    }

    /// Transmit, then receive, until neither can move.
    fn service(&mut self) {
        loop {
            self.tx_all();
            self.rx_all();
            if !(self.tx_stalled && self.control.len() < CONTROL_QUEUE_CAP) || self.broken {
                break;
            }
            self.tx_stalled = false;
        }
        self.arm_timer();
    }

    /// Arms the timer for the earliest deadline, or disarms it when there is
    /// none, unless it already is.
    fn arm_timer(&mut self) {
        let next = self.deadlines.first().map(|&(at, _)| at);
        if next == self.timer_at && !self.timer_stale {
            return;
        }
        let armed = match next {
            // A zero duration would disarm: a deadline already past fires at once.
            Some(at) => {
                self.timer.reset(at.saturating_duration_since((self.clock)()).max(Duration::from_nanos(1)), None)
            }
            None => self.timer.clear(),
        };
        match armed {
            Ok(()) => {
                self.timer_at = next;
                self.timer_stale = false;
            }
            // Retried at the next event; deadlines are checked then too.
            Err(e) => log::warn!("virtio-vsock: cannot arm the connection timer: {e}"),
        }
    }

    /// Ends every connection whose deadline passed.
    fn expire(&mut self) {
        // Non-blocking: after a rearm in the same round of events there is
        // nothing to read, and the deadlines below say what is due anyway.
        let _ = self.timer.wait();
        let now = (self.clock)();
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(conn) = self.conns.get_mut(&id) else { continue };
            let Some((kind, _)) = conn.deadline.take() else { continue };
            self.counters.timeouts += 1;
            let why = match kind {
                Timeout::Request => Reset("the guest did not answer the REQUEST in time"),
                Timeout::Shutdown => Reset("the shutdown did not finish in time"),
            };
            self.reset_connection(id, why);
        }
        // The timer fired (or was read early): arm it again whatever it was
        // armed for, or a clock behind the timer's would leave it disarmed
        // with deadlines pending.
        self.timer_stale = true;
    }

    fn tx_all(&mut self) {
        if self.broken {
            return;
        }
        let mut used = false;
        loop {
            if self.control.len() >= CONTROL_QUEUE_CAP {
                // Resumed once the guest takes RSTs off the control queue.
                self.tx_stalled = true;
                break;
            }
            let chain = match self.tx.queue.pop(&self.mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return self.fail(&e),
            };
            self.guest_packet(&chain);
            if let Err(e) = self.tx.queue.add_used(&self.mem, chain.head_index, 0) {
                return self.fail(&e);
            }
            used = true;
        }
        if used {
            self.signal(TX_QUEUE);
        }
    }

    fn drop_packet(&mut self, why: &str) {
        self.counters.tx_dropped += 1;
        log::debug!("virtio-vsock: dropping a guest packet: {why}");
    }

    /// Validates and handles one guest packet.
    fn guest_packet(&mut self, chain: &DescriptorChain) {
        let readable = chain.readable_len();
        let mut raw = [0u8; PacketHeader::SIZE];
        if readable < PacketHeader::SIZE as u64 || chain.read_at(&self.mem, 0, &mut raw).is_err() {
            return self.drop_packet("shorter than a header");
        }
        let hdr = PacketHeader::from_bytes(&raw);
        if u64::from(hdr.len) > readable - PacketHeader::SIZE as u64 {
            return self.drop_packet("len is past the end of the chain");
        }
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            return self.drop_packet("wrong source or destination CID");
        }
        if hdr.socket_type != VSOCK_TYPE_STREAM {
            // Only stream sockets here: refuse (never answer an RST, 5.10.6.4).
            self.counters.tx_dropped += 1;
            if hdr.op != VSOCK_OP_RST {
                self.queue_control(hdr.reset_reply());
            }
            return;
        }
        self.counters.tx_packets += 1;
        let Some(&id) = self.keys.get(&(hdr.dst_port, hdr.src_port)) else {
            match hdr.op {
                VSOCK_OP_REQUEST => self.guest_connect(&hdr),
                VSOCK_OP_RST => {}
                _ => self.queue_control(hdr.reset_reply()),
            }
            return;
        };
        if hdr.op == VSOCK_OP_RST {
            log::debug!("virtio-vsock: guest reset {}:{}", hdr.dst_port, hdr.src_port);
            return self.remove_connection(id, false, "");
        }
        let payload = if hdr.op == VSOCK_OP_RW && hdr.len > 0 {
            if hdr.len > super::connection::CONN_BUF_ALLOC {
                return self.reset_connection(id, Reset("RW larger than our buffer"));
            }
            let mut data = vec![0u8; hdr.len as usize];
            if chain.read_at(&self.mem, PacketHeader::SIZE as u64, &mut data).is_err() {
                return self.drop_packet("unreadable payload");
            }
            data
        } else {
            Vec::new()
        };
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.state() == ConnState::Established && matches!(hdr.op, VSOCK_OP_REQUEST | VSOCK_OP_RESPONSE) {
            // As Linux (virtio_transport_recv_connected) and Firecracker do: a
            // duplicate or late handshake packet says nothing about this
            // connection, and resetting it would let a confused guest kill a
            // working stream. Its credit fields are not taken either.
            self.counters.tx_ignored += 1;
            log::debug!(
                "virtio-vsock: ignoring {} on open connection {}:{}",
                op_name(hdr.op),
                hdr.dst_port,
                hdr.src_port
            );
            return;
        }
        conn.update_peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        let result = match hdr.op {
            VSOCK_OP_RESPONSE => conn.on_response(),
            VSOCK_OP_RW => conn.on_rw(&payload),
            VSOCK_OP_SHUTDOWN => conn.on_shutdown(hdr.flags),
            VSOCK_OP_CREDIT_UPDATE => Ok(()),
            VSOCK_OP_CREDIT_REQUEST => {
                conn.on_credit_request();
                Ok(())
            }
            // Only while we wait for the RESPONSE (both sides connecting at once).
            VSOCK_OP_REQUEST => Err(Reset("REQUEST on a connection being opened")),
            _ => Err(Reset("unknown operation")),
        };
        match result {
            Ok(()) => self.refresh(id),
            Err(why) => self.reset_connection(id, why),
        }
    }

    /// A guest REQUEST for no existing connection: connect to `{uds_path}_{port}`.
    fn guest_connect(&mut self, hdr: &PacketHeader) {
        if self.conns.len() + self.clients.len() >= self.max_connections {
            log::debug!("virtio-vsock: connection limit reached, refusing port {}", hdr.dst_port);
            self.counters.resets += 1;
            return self.queue_control(hdr.reset_reply());
        }
        let path = port_path(&self.uds_path, hdr.dst_port);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("virtio-vsock: guest port {} to {}: {e}", hdr.src_port, path.display());
                self.counters.resets += 1;
                return self.queue_control(hdr.reset_reply());
            }
        };
        let conn = Connection::guest_initiated(stream, hdr.dst_port, hdr.src_port, hdr.buf_alloc, hdr.fwd_cnt);
        let id = self.new_id();
        if let Err(e) = self.insert(id, conn, None) {
            log::warn!("virtio-vsock: cannot poll a connection socket: {e}");
            self.counters.resets += 1;
            self.queue_control(hdr.reset_reply());
        }
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Adds a connection under `id`; its socket is registered for
    /// `registered` already, or is added to the epoll now.
    fn insert(&mut self, id: u64, mut conn: Connection, registered: Option<EventSet>) -> std::io::Result<()> {
        match registered {
            Some(events) => conn.interest = Some(events),
            None => {
                let events = conn.desired_interest();
                self.epoll.ctl(ControlOperation::Add, conn.fd(), EpollEvent::new(events, id))?;
                conn.interest = Some(events);
            }
        }
        self.keys.insert((conn.local_port(), conn.peer_port()), id);
        self.conns.insert(id, conn);
        self.refresh(id);
        Ok(())
    }

    /// After a change to connection `id`: close it if it is over, start or
    /// stop its deadline, update its epoll interest, and queue it for the
    /// receive path if it has something.
    fn refresh(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.should_close() {
            return self.remove_connection(id, true, "clean disconnect");
        }
        let kind = conn.timeout();
        if conn.deadline.map(|(k, _)| k) != kind {
            if let Some((_, at)) = conn.deadline.take() {
                self.deadlines.remove(&(at, id));
            }
            if let Some(k) = kind {
                let after = match k {
                    Timeout::Request => self.request_timeout,
                    Timeout::Shutdown => self.shutdown_timeout,
                };
                // No deadline past the end of Instant: such a timeout never expires.
                if let Some(at) = (self.clock)().checked_add(after) {
                    conn.deadline = Some((k, at));
                    self.deadlines.insert((at, id));
                }
            }
        }
        let want = conn.desired_interest();
        if conn.interest.is_some_and(|have| have != want) {
            match self.epoll.ctl(ControlOperation::Modify, conn.fd(), EpollEvent::new(want, id)) {
                Ok(()) => conn.interest = Some(want),
                Err(e) => {
                    log::warn!("virtio-vsock: cannot poll a connection socket: {e}");
                    return self.reset_connection(id, Reset("epoll failed"));
                }
            }
        }
        if conn.wants_rx() && !conn.in_rx_list {
            conn.in_rx_list = true;
            self.rx_list.push_back(id);
        }
    }

    /// Ends connection `id` with an RST to the guest (if it knows of it).
    fn reset_connection(&mut self, id: u64, why: Reset) {
        self.counters.resets += 1;
        self.remove_connection(id, true, why.0);
    }

    /// Ends connection `id`, closing its socket, with an RST to the guest if
    /// `rst` (and the guest knows of it).
    fn remove_connection(&mut self, id: u64, rst: bool, why: &str) {
        let Some(conn) = self.conns.remove(&id) else { return };
        self.keys.remove(&(conn.local_port(), conn.peer_port()));
        // Its turn in the receive round goes too, or ids of connections that
        // came and went while the guest posted no buffers would pile up.
        if conn.in_rx_list {
            self.rx_list.retain(|&other| other != id);
        }
        if let Some((_, at)) = conn.deadline {
            self.deadlines.remove(&(at, id));
        }
        if conn.interest.is_some() {
            let _ = self.epoll.ctl(ControlOperation::Delete, conn.fd(), EpollEvent::default());
        }
        if rst {
            log::debug!("virtio-vsock: reset {}:{}: {why}", conn.local_port(), conn.peer_port());
            if conn.guest_knows() {
                let h = conn.reset_header(self.guest_cid);
                self.queue_control(h);
            }
        }
    }

    fn queue_control(&mut self, hdr: PacketHeader) {
        if self.control.len() >= CONTROL_QUEUE_CAP {
            self.counters.rx_dropped += 1;
            log::debug!("virtio-vsock: control queue full, dropping an {}", op_name(hdr.op));
        } else {
            self.control.push_back(hdr);
        }
    }

    /// Fills receive buffers while there is something for the guest.
    fn rx_all(&mut self) {
        if self.broken {
            return;
        }
        let mut used = false;
        while !self.control.is_empty() || !self.rx_list.is_empty() {
            let chain = match self.rx.queue.pop(&self.mem) {
                Ok(Some(c)) => c,
                Ok(None) => match self.rx.queue.enable_notification(&self.mem) {
                    // Buffers came while notifications were off: take them.
                    Ok(true) => continue,
                    // Resumed at the guest's next receive kick.
                    Ok(false) => break,
                    Err(e) => return self.fail(&e),
                },
                Err(e) => return self.fail(&e),
            };
            let room = chain.writable_len();
            // A header-only buffer carries any packet without payload (REQUEST,
            // RESPONSE, RST, SHUTDOWN, CREDIT_*); with max_payload 0 no data is
            // read for it, and if only data is waiting the buffer waits too.
            let max_payload = (room.saturating_sub(PacketHeader::SIZE as u64)).min(MAX_PKT_PAYLOAD as u64) as usize;
            if room < PacketHeader::SIZE as u64 {
                self.counters.rx_bad_buffers += 1;
                log::debug!("virtio-vsock: a {room}-byte receive buffer cannot hold a packet header");
                if let Err(e) = self.rx.queue.add_used(&self.mem, chain.head_index, 0) {
                    return self.fail(&e);
                }
                used = true;
                continue;
            }
            let Some(hdr) = self.next_packet(max_payload) else {
                self.rx.queue.undo_pop();
                break;
            };
            let len = hdr.len as usize;
            let written = chain
                .write_at(&self.mem, 0, &hdr.to_bytes())
                .and_then(|()| chain.write_at(&self.mem, PacketHeader::SIZE as u64, &self.scratch[..len]));
            let used_len = match written {
                Ok(()) => {
                    self.counters.rx_packets += 1;
                    (PacketHeader::SIZE + len) as u32
                }
                Err(e) => {
                    log::warn!("virtio-vsock: rx write failed: {e}");
                    0
                }
            };
            if let Err(e) = self.rx.queue.add_used(&self.mem, chain.head_index, used_len) {
                return self.fail(&e);
            }
            used = true;
        }
        if used {
            self.signal(RX_QUEUE);
        }
    }

    /// The next packet for a buffer with room for `max_payload` (≥ 1) payload
    /// bytes: queued RSTs first, then the connections in turn. An RW
    /// packet's payload is left in `scratch`.
    fn next_packet(&mut self, max_payload: usize) -> Option<PacketHeader> {
        if let Some(h) = self.control.pop_front() {
            return Some(h);
        }
        // Each connection gets one try: one that has nothing leaves the list.
        for _ in 0..self.rx_list.len() {
            let id = self.rx_list.pop_front()?;
            let Some(conn) = self.conns.get_mut(&id) else { continue };
            conn.in_rx_list = false;
            match conn.next_rx(self.guest_cid, &mut self.scratch[..max_payload]) {
                RxPacket::Packet(h) => {
                    self.refresh(id);
                    return Some(h);
                }
                RxPacket::Nothing => self.refresh(id),
                RxPacket::Reset(why) => {
                    self.reset_connection(id, why);
                    if let Some(h) = self.control.pop_front() {
                        return Some(h);
                    }
                }
            }
        }
        None
    }

    /// Accepts every waiting host client.
    fn accept_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("virtio-vsock: accept on {} failed: {e}", self.uds_path.display());
                    return;
                }
            };
            if self.conns.len() + self.clients.len() >= self.max_connections {
                log::debug!("virtio-vsock: connection limit reached, closing a host client");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let id = self.new_id();
            if let Err(e) = self.epoll.ctl(ControlOperation::Add, stream.as_raw_fd(), EpollEvent::new(EventSet::IN, id))
            {
                log::warn!("virtio-vsock: cannot poll a host client: {e}");
                continue;
            }
            self.clients.insert(id, HostClient { stream, line: Vec::new() });
        }
    }

    /// Handles whatever the connections' epoll has ready.
    fn socket_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        // Bounded: the worker's epoll reports the rest (level-triggered).
        for _ in 0..64 {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("virtio-vsock: epoll_wait failed: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                let (id, set) = (ev.data(), ev.event_set());
                if self.clients.contains_key(&id) {
                    self.client_ready(id);
                } else {
                    self.connection_ready(id, set);
                }
            }
            if n < events.len() {
                return;
            }
        }
    }

    fn connection_ready(&mut self, id: u64, set: EventSet) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) && conn.interest.is_some() {
            // Reported whatever the interest: out of the epoll set, or it repeats.
            let _ = self.epoll.ctl(ControlOperation::Delete, conn.fd(), EpollEvent::default());
            conn.interest = None;
        }
        match conn.on_socket_event(set) {
            Ok(()) => self.refresh(id),
            Err(why) => self.reset_connection(id, why),
        }
    }

    /// Reads a host client's `CONNECT <port>\n` (byte by byte: what follows
    /// the line is the client's data for the guest, read once connected).
    fn client_ready(&mut self, id: u64) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        let mut byte = [0u8; 1];
        let line = loop {
            match client.stream.read(&mut byte) {
                Ok(0) => break Err("closed before its CONNECT line"),
                Ok(_) if byte[0] == b'\n' => break Ok(parse_connect(&client.line)),
                Ok(_) if client.line.len() + 1 >= CONNECT_LINE_MAX => break Err("CONNECT line too long"),
                Ok(_) => client.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break Err("read failed"),
            }
        };
        let Some(client) = self.clients.remove(&id) else { return };
        let port = match line {
            Ok(Some(port)) => port,
            other => {
                let why = other.err().unwrap_or("not a CONNECT line");
                log::debug!("virtio-vsock: dropping a host client: {why}");
                let _ = self.epoll.ctl(ControlOperation::Delete, client.stream.as_raw_fd(), EpollEvent::default());
                return;
            }
        };
        let Some(local) = self.alloc_host_port(port) else {
            let _ = self.epoll.ctl(ControlOperation::Delete, client.stream.as_raw_fd(), EpollEvent::default());
            return;
        };
        log::debug!("virtio-vsock: host client connecting to guest port {port} from {local}");
        let conn = Connection::host_initiated(client.stream, local, port);
        // The socket stays registered under the same token.
        let _ = self.insert(id, conn, Some(EventSet::IN));
    }

    /// A host port for a connection to guest port `peer` that no open connection uses.
    fn alloc_host_port(&mut self, peer: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let p = self.next_host_port;
            self.next_host_port = if p == u32::MAX { FIRST_HOST_PORT } else { p + 1 };
            if !self.keys.contains_key(&(p, peer)) {
                return Some(p);
            }
        }
        None
    }
}

impl WorkerHandler for VsockWorker {
    fn start(&mut self) {
        self.process_host();
    }

    fn ready(&mut self, token: u64, _events: EventSet) {
        match token {
            LISTENER_TOKEN => self.accept_clients(),
            CONNECTIONS_TOKEN => self.socket_events(),
            TIMER_TOKEN => self.expire(),
            t => {
                let q = match t as u16 {
                    RX_QUEUE => &self.rx,
                    TX_QUEUE => &self.tx,
                    _ => &self.event,
                };
                let _ = q.notify.read();
            }
        }
        // The event queue carries nothing from the guest; any token may have
        // made packets for the guest or freed room for them.
        self.service();
    }
}

/// A monotonic timerfd that is non-blocking, so reading one that a rearm
/// cleared after epoll reported it never stalls the worker.
fn nonblocking_timerfd() -> std::io::Result<TimerFd> {
    // SAFETY: timerfd_create with constant arguments; the result is checked.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    Ok(unsafe { TimerFd::from_raw_fd(fd) })
}

/// `CONNECT <port>` (an optional `\r` before the newline is accepted).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    line.strip_prefix("CONNECT ")?.trim().parse().ok()
}

/// `{uds_path}_{port}`: where guest connections to `port` go.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = OsString::from(uds_path.as_os_str());
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connects to the Unix socket at `path` without blocking: a listener whose
/// backlog is full refuses (EAGAIN) instead of stalling the worker. The
/// stream is non-blocking.
pub fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::new(ErrorKind::InvalidInput, "socket path too long"));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // SAFETY: addr is a valid sockaddr_un and len does not exceed its size.
    let rc =
        unsafe { libc::connect(owned.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len as libc::socklen_t) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}
