//! Host-side tests of virtio-vsock: a mock driver's queues in guest memory
//! (one region per queue), the real muxer, and real Unix sockets in a
//! temporary directory.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::connection::{CONN_BUF_ALLOC, CREDIT_UPDATE_THRESHOLD};
use super::muxer::{port_path, VsockWorker, CONN_REQUEST_TIMEOUT, CONN_SHUTDOWN_TIMEOUT, FIRST_HOST_PORT};
use super::packet::*;
use super::*;
use crate::device::{ActiveQueue, VirtioDevice};
use crate::queue::test_utils::{ChainFuzzer, MockDriver, RawDescriptor, XorShift};
use crate::worker::Worker;

const GUEST_CID: u64 = 3;
/// What a Linux guest posts: a header and 4 KiB of payload.
const RX_BUF: u32 = 4096 + PacketHeader::SIZE as u32;
const TIMEOUT: Duration = Duration::from_secs(5);

use crate::queue::test_utils::RecordingSignals as Signals;

/// A directory removed with everything in it at the end of the test.
struct TempDir(PathBuf);
impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("rvmm-vsock-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Memory with one 4 MiB region per queue, and the three mock queues.
fn queues() -> (GuestMemoryMmap, Vec<MockDriver>, Vec<ActiveQueue>) {
    let len = 4usize << 20;
    let bases = [0u64, 0x100_0000, 0x200_0000];
    let mem = GuestMemoryMmap::from_ranges(&bases.map(|b| (GuestAddress(b), len))).unwrap();
    let mut drivers = Vec::new();
    let mut active = Vec::new();
    for (index, base) in bases.iter().enumerate() {
        let driver = MockDriver::new(&mem, GuestAddress(base + 0x1000), 256);
        let mut queue = driver.queue();
        driver.configure(&mut queue);
        queue.set_event_idx(false);
        active.push(ActiveQueue { index: index as u16, queue, notify: EventFd::new(libc::EFD_NONBLOCK).unwrap() });
        drivers.push(driver);
    }
    (mem, drivers, active)
}

/// The guest side: drivers of the three queues, and the rx buffers in flight.
struct Guest {
    rx: MockDriver,
    tx: MockDriver,
    rx_bufs: HashMap<u32, u64>,
    rx_seen: u16,
}

impl Guest {
    /// Posts `n` receive buffers of `len` bytes.
    fn post_rx_sized(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            let addr = self.rx.alloc(len);
            let head = self.rx.add_chain(&[RawDescriptor::writable(addr, len)]);
            self.rx_bufs.insert(u32::from(head), addr);
        }
    }

    fn post_rx(&mut self, n: usize) {
        self.post_rx_sized(n, RX_BUF);
    }

    /// Packets the device put in the receive queue since the last call,
    /// with their used lengths checked against the headers.
    fn recv(&mut self) -> Vec<(PacketHeader, Vec<u8>)> {
        let mut out = Vec::new();
        while self.rx_seen != self.rx.used_idx() {
            let (id, len) = self.rx.used_elem(self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let addr = self.rx_bufs.remove(&id).expect("used buffer was posted");
            let bytes = self.rx.read(addr, len as usize);
            assert!(bytes.len() >= PacketHeader::SIZE, "used length {len} shorter than a header");
            let hdr = PacketHeader::from_bytes(bytes[..PacketHeader::SIZE].try_into().unwrap());
            assert_eq!(hdr.len as usize, bytes.len() - PacketHeader::SIZE, "used length matches the header");
            out.push((hdr, bytes[PacketHeader::SIZE..].to_vec()));
        }
        out
    }

    /// Puts a packet (header, then payload in its own descriptor) in the transmit queue.
    fn queue_tx(&mut self, hdr: &PacketHeader, payload: &[u8]) {
        let h = hdr.to_bytes();
        if payload.is_empty() {
            self.tx.add_buffers(&[&h], &[]);
        } else {
            self.tx.add_buffers(&[&h, payload], &[]);
        }
    }
}

struct Harness {
    guest: Guest,
    worker: VsockWorker,
    signals: Arc<Signals>,
    uds: PathBuf,
    _dir: TempDir,
}

fn harness() -> Harness {
    let dir = TempDir::new();
    let uds = dir.0.join("v.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    let (mem, mut drivers, mut active) = queues();
    let signals = Arc::new(Signals::default());
    let event = active.pop().unwrap();
    let tx = active.pop().unwrap();
    let rx = active.pop().unwrap();
    let worker =
        VsockWorker::new(mem, rx, tx, event, GUEST_CID, uds.clone(), listener, signals.clone(), signals.clone())
            .unwrap();
    drivers.pop();
    let tx = drivers.pop().unwrap();
    let rx = drivers.pop().unwrap();
    Harness { guest: Guest { rx, tx, rx_bufs: HashMap::new(), rx_seen: 0 }, worker, signals, uds, _dir: dir }
}

/// A guest packet from `src_port` to host port `dst_port` with the guest's credit.
fn guest_hdr(op: u16, src_port: u32, dst_port: u32) -> PacketHeader {
    PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        socket_type: VSOCK_TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

impl Harness {
    fn send(&mut self, hdr: PacketHeader, payload: &[u8]) {
        let mut hdr = hdr;
        hdr.len = payload.len() as u32;
        self.guest.queue_tx(&hdr, payload);
        self.worker.process_tx();
    }

    fn send_op(&mut self, op: u16, src_port: u32, dst_port: u32) {
        self.send(guest_hdr(op, src_port, dst_port), &[]);
    }

    /// A host listener for guest connections to `port`.
    fn listen(&self, port: u32) -> UnixListener {
        UnixListener::bind(port_path(&self.uds, port)).unwrap()
    }

    /// A guest-initiated connection from guest port `gp` to host port `hp`,
    /// established; returns the host's end.
    fn connect_from_guest(&mut self, listener: &UnixListener, gp: u32, hp: u32) -> UnixStream {
        self.guest.post_rx(4);
        self.send_op(VSOCK_OP_REQUEST, gp, hp);
        let got = self.guest.recv();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.op, VSOCK_OP_RESPONSE);
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s
    }

    /// Host-side work, then the packets the guest received.
    fn host_poll(&mut self) -> Vec<(PacketHeader, Vec<u8>)> {
        self.worker.process_host();
        self.guest.recv()
    }

    /// Gives the worker a clock that only moves when [`advance`](Self::advance) says.
    fn fake_clock(&mut self) -> Arc<AtomicU64> {
        let base = Instant::now();
        let elapsed_ms = Arc::new(AtomicU64::new(0));
        let e = elapsed_ms.clone();
        self.worker.set_clock(Box::new(move || base + Duration::from_millis(e.load(Ordering::SeqCst))));
        elapsed_ms
    }

    /// Moves the fake clock on by `d` and lets the worker handle what expired,
    /// as when its timer fires; returns the packets the guest received.
    fn advance(&mut self, clock: &AtomicU64, d: Duration) -> Vec<(PacketHeader, Vec<u8>)> {
        clock.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
        self.worker.process_timer();
        self.guest.recv()
    }

    /// A host client that sent `CONNECT port`, and the REQUEST the guest got
    /// for it (the guest must have receive buffers).
    fn client_connect(&mut self, port: u32) -> (UnixStream, PacketHeader) {
        let mut client = UnixStream::connect(&self.uds).unwrap();
        client.set_read_timeout(Some(TIMEOUT)).unwrap();
        client.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let got = self.host_poll();
        assert_eq!(ops(&got), vec![VSOCK_OP_REQUEST]);
        (client, got[0].0)
    }
}

fn ops(pkts: &[(PacketHeader, Vec<u8>)]) -> Vec<u16> {
    pkts.iter().map(|(h, _)| h.op).collect()
}

fn rw_bytes(pkts: &[(PacketHeader, Vec<u8>)]) -> Vec<u8> {
    pkts.iter().filter(|(h, _)| h.op == VSOCK_OP_RW).flat_map(|(_, d)| d.clone()).collect()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed).wrapping_add((i >> 8) as u8)).collect()
}

/// Whether the host end of a connection was closed (EOF or reset), within the timeout.
fn host_sees_eof(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut b = [0u8; 16];
    // Closing a socket with unread data resets the peer instead.
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

#[test]
fn packet_header_round_trips_little_endian() {
    let h = PacketHeader {
        src_cid: 0x0102_0304_0506_0708,
        dst_cid: 2,
        src_port: 0xaabb_ccdd,
        dst_port: 52,
        len: 7,
        socket_type: 1,
        op: VSOCK_OP_RW,
        flags: 3,
        buf_alloc: 0x40000,
        fwd_cnt: 0xffff_fff0,
    };
    let b = h.to_bytes();
    assert_eq!(b.len(), 44);
    assert_eq!(&b[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(&b[28..30], &[1, 0]);
    assert_eq!(&b[30..32], &[5, 0]);
    assert_eq!(PacketHeader::from_bytes(&b), h);
    let r = h.reset_reply();
    assert_eq!((r.src_cid, r.dst_cid, r.src_port, r.dst_port, r.op), (2, h.src_cid, 52, 0xaabb_ccdd, VSOCK_OP_RST));
}

#[test]
fn guest_connect_to_a_listener_gets_response_then_data_flows_both_ways() {
    let mut h = harness();
    let l = h.listen(1234);
    h.guest.post_rx(4);
    h.send_op(VSOCK_OP_REQUEST, 5000, 1234);
    let got = h.guest.recv();
    assert_eq!(ops(&got), vec![VSOCK_OP_RESPONSE]);
    let r = got[0].0;
    assert_eq!((r.src_cid, r.dst_cid, r.src_port, r.dst_port), (HOST_CID, GUEST_CID, 1234, 5000));
    assert_eq!(r.socket_type, VSOCK_TYPE_STREAM);
    assert_eq!(r.buf_alloc, CONN_BUF_ALLOC);
    assert_eq!(h.worker.connection_count(), 1);
    let (mut host, _) = l.accept().unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();

    // Guest to host, split over two packets.
    h.send(guest_hdr(VSOCK_OP_RW, 5000, 1234), b"hello ");
    h.send(guest_hdr(VSOCK_OP_RW, 5000, 1234), b"from the guest");
    let mut buf = [0u8; 20];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello from the guest");

    // Host to guest.
    let data = pattern(10_000, 1);
    host.write_all(&data).unwrap();
    let got = h.host_poll();
    assert!(got.iter().all(|(p, _)| p.op == VSOCK_OP_RW && p.src_port == 1234 && p.dst_port == 5000));
    assert!(got.iter().all(|(p, _)| p.len as usize <= 4096), "packets fit the guest's buffers");
    assert_eq!(rw_bytes(&got), data);
    // Every header carries our credit: 20 bytes consumed.
    assert_eq!(got.last().unwrap().0.fwd_cnt, 20);
    assert!(h.signals.interrupts.load(Ordering::SeqCst) > 0);
    assert_eq!(h.signals.resets.load(Ordering::SeqCst), 0);
}

#[test]
fn guest_connect_to_a_closed_port_is_reset() {
    let mut h = harness();
    h.guest.post_rx(2);
    h.send_op(VSOCK_OP_REQUEST, 5000, 4321);
    let got = h.guest.recv();
    assert_eq!(ops(&got), vec![VSOCK_OP_RST]);
    let r = got[0].0;
    assert_eq!((r.src_cid, r.dst_cid, r.src_port, r.dst_port), (HOST_CID, GUEST_CID, 4321, 5000));
    assert_eq!(h.worker.connection_count(), 0);
    // A packet for no connection is reset too; an RST for none is not answered.
    h.send_op(VSOCK_OP_RW, 5000, 4321);
    h.send_op(VSOCK_OP_RST, 5000, 4321);
    assert_eq!(ops(&h.guest.recv()), vec![VSOCK_OP_RST]);
}

#[test]
fn host_connect_handshake_then_echo() {
    let mut h = harness();
    h.guest.post_rx(4);
    let mut client = UnixStream::connect(&h.uds).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();
    let got = h.host_poll();
    assert_eq!(ops(&got), vec![VSOCK_OP_REQUEST]);
    let req = got[0].0;
    assert_eq!((req.src_cid, req.dst_cid, req.src_port, req.dst_port), (HOST_CID, GUEST_CID, FIRST_HOST_PORT, 52));
    assert_eq!(req.buf_alloc, CONN_BUF_ALLOC);

    h.send_op(VSOCK_OP_RESPONSE, 52, FIRST_HOST_PORT);
    let want = format!("OK {FIRST_HOST_PORT}\n");
    let mut ok = vec![0u8; want.len()];
    client.read_exact(&mut ok).unwrap();
    assert_eq!(ok, want.as_bytes());

    // Echo: client to guest, guest back to client.
    client.write_all(b"ping").unwrap();
    let got = h.host_poll();
    assert_eq!(ops(&got), vec![VSOCK_OP_RW]);
    assert_eq!(got[0].1, b"ping");
    h.send(guest_hdr(VSOCK_OP_RW, 52, FIRST_HOST_PORT), &got[0].1);
    let mut back = [0u8; 4];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");

    // A second client gets the next host port.
    let mut c2 = UnixStream::connect(&h.uds).unwrap();
    c2.write_all(b"CONNECT 52\n").unwrap();
    let got = h.host_poll();
    assert_eq!(got[0].0.src_port, FIRST_HOST_PORT + 1);
    assert_eq!(h.worker.connection_count(), 2);
}

#[test]
fn host_connect_refused_by_the_guest_closes_the_client() {
    let mut h = harness();
    h.guest.post_rx(4);
    let mut client = UnixStream::connect(&h.uds).unwrap();
    client.write_all(b"CONNECT 7\n").unwrap();
    let got = h.host_poll();
    assert_eq!(ops(&got), vec![VSOCK_OP_REQUEST]);
    h.send_op(VSOCK_OP_RST, 7, got[0].0.src_port);
    assert!(host_sees_eof(&mut client));
    assert_eq!(h.worker.connection_count(), 0);
    assert!(h.guest.recv().is_empty(), "an RST is not answered");
}

#[test]
fn bad_connect_lines_close_the_client() {
    let mut h = harness();
    h.guest.post_rx(4);
    for line in [&b"HELLO 52\n"[..], b"CONNECT x\n", b"CONNECT 99999999999\n", &[b'C'; 40]] {
        let mut client = UnixStream::connect(&h.uds).unwrap();
        client.write_all(line).unwrap();
        assert!(h.host_poll().is_empty());
        assert!(host_sees_eof(&mut client), "{:?}", String::from_utf8_lossy(line));
    }
    // A line in pieces (and with CRLF) is fine.
    let mut client = UnixStream::connect(&h.uds).unwrap();
    client.write_all(b"CONN").unwrap();
    assert!(h.host_poll().is_empty());
    client.write_all(b"ECT 9\r\n").unwrap();
    assert_eq!(ops(&h.host_poll()), vec![VSOCK_OP_REQUEST]);
}

#[test]
fn device_never_exceeds_the_guest_credit_until_a_credit_update() {
    let mut h = harness();
    let l = h.listen(80);
    h.guest.post_rx(2);
    let mut req = guest_hdr(VSOCK_OP_REQUEST, 6000, 80);
    req.buf_alloc = 1000;
    h.send(req, &[]);
    assert_eq!(ops(&h.guest.recv()), vec![VSOCK_OP_RESPONSE]);
    let (mut host, _) = l.accept().unwrap();
    let data = pattern(5000, 9);
    host.write_all(&data).unwrap();

    h.guest.post_rx(32);
    let mut got = h.host_poll();
    for _ in 0..3 {
        got.extend(h.host_poll());
        h.worker.process_rx();
        got.extend(h.guest.recv());
    }
    // Exactly the 1000 bytes of credit, then one CREDIT_REQUEST, and nothing more.
    assert_eq!(rw_bytes(&got), &data[..1000]);
    assert_eq!(ops(&got).iter().filter(|&&o| o == VSOCK_OP_CREDIT_REQUEST).count(), 1);
    assert_eq!(*ops(&got).last().unwrap(), VSOCK_OP_CREDIT_REQUEST);

    // The guest consumed it all: 1000 more.
    let mut upd = guest_hdr(VSOCK_OP_CREDIT_UPDATE, 6000, 80);
    upd.buf_alloc = 1000;
    upd.fwd_cnt = 1000;
    h.send(upd, &[]);
    let got = h.guest.recv();
    assert_eq!(rw_bytes(&got), &data[1000..2000]);

    // A bigger buffer: the rest.
    upd.buf_alloc = 10_000;
    upd.fwd_cnt = 2000;
    h.send(upd, &[]);
    let got = h.guest.recv();
    assert_eq!(rw_bytes(&got), &data[2000..]);
}

#[test]
fn credit_request_is_answered_with_our_credit() {
    let mut h = harness();
    let l = h.listen(81);
    let mut host = h.connect_from_guest(&l, 6001, 81);
    h.send(guest_hdr(VSOCK_OP_RW, 6001, 81), b"abc");
    let mut b = [0u8; 3];
    host.read_exact(&mut b).unwrap();
    h.send_op(VSOCK_OP_CREDIT_REQUEST, 6001, 81);
    let got = h.guest.recv();
    assert_eq!(ops(&got), vec![VSOCK_OP_CREDIT_UPDATE]);
    assert_eq!((got[0].0.buf_alloc, got[0].0.fwd_cnt), (CONN_BUF_ALLOC, 3));
}

#[test]
fn slow_host_reader_throttles_the_guest_through_credit_without_loss() {
    let mut h = harness();
    let l = h.listen(82);
    let mut host = h.connect_from_guest(&l, 6002, 82);
    h.guest.post_rx(64);
    // The guest sends exactly its credit while the host reads nothing.
    let data = pattern(CONN_BUF_ALLOC as usize, 3);
    for chunk in data.chunks(4096) {
        h.send(guest_hdr(VSOCK_OP_RW, 6002, 82), chunk);
    }
    assert_eq!(h.worker.connection_count(), 1, "nothing reset");
    assert!(h.worker.buffered_bytes() > 0, "the socket filled up and the device holds the rest");
    assert!(h.guest.recv().iter().all(|(p, _)| p.op == VSOCK_OP_CREDIT_UPDATE));
    // The host drains slowly; the device writes the rest as the socket takes it.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + TIMEOUT;
    while got.len() < data.len() && Instant::now() < deadline {
        let n = host.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
        h.worker.process_host();
    }
    assert!(got == data, "the host got every byte in order");
    assert_eq!(h.worker.buffered_bytes(), 0);
    // Credit came back as the host consumed.
    let pkts = h.guest.recv();
    let updates: Vec<u32> =
        pkts.iter().filter(|(p, _)| p.op == VSOCK_OP_CREDIT_UPDATE).map(|(p, _)| p.fwd_cnt).collect();
    assert!(!updates.is_empty());
    assert!(*updates.last().unwrap() >= CONN_BUF_ALLOC - CREDIT_UPDATE_THRESHOLD);
}

#[test]
fn guest_overrunning_its_credit_is_reset() {
    let mut h = harness();
    let l = h.listen(83);
    let mut host = h.connect_from_guest(&l, 6003, 83);
    h.guest.post_rx(8);
    let chunk = vec![0x5a; 32 * 1024];
    let mut reset = false;
    for _ in 0..64 {
        h.send(guest_hdr(VSOCK_OP_RW, 6003, 83), &chunk);
        if ops(&h.guest.recv()).contains(&VSOCK_OP_RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "a guest ignoring credit is reset, not buffered without bound");
    assert_eq!(h.worker.connection_count(), 0);
    // The host socket is closed after what was written.
    let mut sink = Vec::new();
    let _ = host.read_to_end(&mut sink);
    assert!(sink.len() <= 2 * 1024 * 1024);
}

#[test]
fn guest_shutdown_of_both_directions_closes_the_socket_and_resets() {
    let mut h = harness();
    let l = h.listen(84);
    let mut host = h.connect_from_guest(&l, 6004, 84);
    h.send(guest_hdr(VSOCK_OP_RW, 6004, 84), b"bye");
    let mut sd = guest_hdr(VSOCK_OP_SHUTDOWN, 6004, 84);
    sd.flags = VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND;
    h.send(sd, &[]);
    assert_eq!(ops(&h.guest.recv()), vec![VSOCK_OP_RST]);
    assert_eq!(h.worker.connection_count(), 0);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"bye", "data before the shutdown is delivered, then EOF");
}

#[test]
fn guest_half_close_then_host_eof_ends_cleanly() {
    let mut h = harness();
    let l = h.listen(85);
    let mut host = h.connect_from_guest(&l, 6005, 85);
    // The guest is done sending: the host reads its data, then EOF.
    h.send(guest_hdr(VSOCK_OP_RW, 6005, 85), b"request");
    let mut sd = guest_hdr(VSOCK_OP_SHUTDOWN, 6005, 85);
    sd.flags = VSOCK_SHUTDOWN_SEND;
    h.send(sd, &[]);
    let mut req = Vec::new();
    host.read_to_end(&mut req).unwrap();
    assert_eq!(req, b"request");
    // The host can still answer, and its close reaches the guest as a SHUTDOWN for both directions.
    host.write_all(b"response").unwrap();
    drop(host);
    let got = h.host_poll();
    assert_eq!(ops(&got), vec![VSOCK_OP_RW, VSOCK_OP_SHUTDOWN]);
    assert_eq!(got[0].1, b"response");
    assert_eq!(got[1].0.flags, VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND);
    // The guest's RST ends it.
    h.send_op(VSOCK_OP_RST, 6005, 85);
    assert_eq!(h.worker.connection_count(), 0);
    assert!(h.guest.recv().is_empty());
}

#[test]
fn host_eof_sends_shutdown_to_the_guest() {
    let mut h = harness();
    let l = h.listen(86);
    let mut host = h.connect_from_guest(&l, 6006, 86);
    host.write_all(b"last words").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let got = h.host_poll();
    assert_eq!(ops(&got), vec![VSOCK_OP_RW, VSOCK_OP_SHUTDOWN]);
    assert_eq!(got[0].1, b"last words");
    assert_eq!(got[1].0.flags, VSOCK_SHUTDOWN_SEND);
    // Half-closed: the guest may still send.
    h.send(guest_hdr(VSOCK_OP_RW, 6006, 86), b"ack");
    let mut b = [0u8; 3];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ack");
    // The guest closes: both directions are over, the device resets and closes.
    let mut sd = guest_hdr(VSOCK_OP_SHUTDOWN, 6006, 86);
    sd.flags = VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND;
    h.send(sd, &[]);
    assert_eq!(ops(&h.guest.recv()), vec![VSOCK_OP_RST]);
    assert!(host_sees_eof(&mut host));
    assert_eq!(h.worker.connection_count(), 0);
}

#[test]
fn guest_rst_closes_the_host_socket() {
    let mut h = harness();
    let l = h.listen(87);
    let mut host = h.connect_from_guest(&l, 6007, 87);
    h.send_op(VSOCK_OP_RST, 6007, 87);
    assert!(host_sees_eof(&mut host));
    assert_eq!(h.worker.connection_count(), 0);
    assert!(h.guest.recv().is_empty());
}

#[test]
fn host_socket_closed_with_guest_data_pending_resets_the_guest() {
    let mut h = harness();
    let l = h.listen(88);
    let host = h.connect_from_guest(&l, 6008, 88);
    drop(host);
    // The host end is gone: the guest's data cannot be delivered.
    let got = h.host_poll();
    assert_eq!(ops(&got), vec![VSOCK_OP_SHUTDOWN]);
    h.send(guest_hdr(VSOCK_OP_RW, 6008, 88), b"anyone?");
    assert_eq!(ops(&h.guest.recv()), vec![VSOCK_OP_RST]);
    assert_eq!(h.worker.connection_count(), 0);
}

#[test]
fn malformed_packets_are_dropped_safely() {
    let mut h = harness();
    let l = h.listen(90);
    l.set_nonblocking(true).unwrap();
    h.guest.post_rx(8);
    // Shorter than a header.
    h.guest.tx.add_buffers(&[&[0u8; 20]], &[]);
    // len past the end of the chain.
    let mut long = guest_hdr(VSOCK_OP_REQUEST, 1, 90);
    long.len = 100;
    h.guest.queue_tx(&long, &[0u8; 10]);
    // Wrong source CID, wrong destination CID, upper bits set.
    for (src, dst) in [(4, HOST_CID), (GUEST_CID, 5), (GUEST_CID | 1 << 32, HOST_CID), (GUEST_CID, HOST_CID | 1 << 40)]
    {
        let mut p = guest_hdr(VSOCK_OP_REQUEST, 1, 90);
        p.src_cid = src;
        p.dst_cid = dst;
        h.guest.queue_tx(&p, &[]);
    }
    // A chain with nothing readable.
    let w = h.guest.tx.alloc(64);
    h.guest.tx.add_chain(&[RawDescriptor::writable(w, 64)]);
    h.worker.process_tx();
    assert_eq!(h.worker.counters.tx_dropped, 7);
    assert_eq!(h.guest.tx.used_idx(), 7, "every chain is returned");
    assert!(h.guest.recv().is_empty(), "nothing answered");
    assert!(l.accept().is_err(), "nothing connected");
    assert_eq!(h.worker.connection_count(), 0);

    // Wrong type: refused with an RST of the same type, never connected.
    let mut seq = guest_hdr(VSOCK_OP_REQUEST, 1, 90);
    seq.socket_type = VSOCK_TYPE_SEQPACKET;
    h.send(seq, &[]);
    let got = h.guest.recv();
    assert_eq!(ops(&got), vec![VSOCK_OP_RST]);
    assert_eq!(got[0].0.socket_type, VSOCK_TYPE_SEQPACKET);
    assert!(l.accept().is_err());
    // An unknown operation: RST too.
    h.send_op(42, 1, 90);
    assert_eq!(ops(&h.guest.recv()), vec![VSOCK_OP_RST]);
    assert_eq!(h.signals.resets.load(Ordering::SeqCst), 0, "the device keeps working");

    // And a good request still works, with its header split over descriptors.
    let b = guest_hdr(VSOCK_OP_REQUEST, 1, 90).to_bytes();
    h.guest.tx.add_buffers(&[&b[..10], &b[10..]], &[]);
    h.worker.process_tx();
    assert_eq!(ops(&h.guest.recv()), vec![VSOCK_OP_RESPONSE]);
}

#[test]
fn stray_request_or_response_on_an_open_connection_is_ignored() {
    // As in Linux's virtio_transport_recv_connected and Firecracker: dropped,
    // the connection untouched (credit fields included).
    let mut h = harness();
    let l = h.listen(91);
    let mut host = h.connect_from_guest(&l, 6010, 91);
    let mut req = guest_hdr(VSOCK_OP_REQUEST, 6010, 91);
    req.buf_alloc = 0;
    h.send(req, &[]);
    h.send_op(VSOCK_OP_RESPONSE, 6010, 91);
    assert!(h.guest.recv().is_empty(), "nothing answered");
    assert_eq!(h.worker.counters.tx_ignored, 2);
    assert_eq!(h.worker.counters.resets, 0);
    assert_eq!(h.worker.connection_count(), 1);
    // Data still flows both ways, with the guest's credit as it was.
    h.send(guest_hdr(VSOCK_OP_RW, 6010, 91), b"still");
    let mut b = [0u8; 5];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still");
    host.write_all(b"here").unwrap();
    let got = h.host_poll();
    assert_eq!(ops(&got), vec![VSOCK_OP_RW]);
    assert_eq!(got[0].1, b"here");

    // A host-initiated connection: a second RESPONSE is ignored too.
    let (mut client, req) = h.client_connect(92);
    h.send_op(VSOCK_OP_RESPONSE, 92, req.src_port);
    h.send_op(VSOCK_OP_RESPONSE, 92, req.src_port);
    assert!(h.guest.recv().is_empty());
    let want = format!("OK {}\n", req.src_port);
    let mut ok = vec![0u8; want.len()];
    client.read_exact(&mut ok).unwrap();
    assert_eq!(ok, want.as_bytes(), "one OK line");
    assert_eq!(h.worker.counters.tx_ignored, 3);
    assert_eq!(h.worker.connection_count(), 2);
}

#[test]
fn protocol_violations_reset_the_connection() {
    let mut h = harness();
    let l = h.listen(91);
    // An unknown operation on an open connection.
    let mut host = h.connect_from_guest(&l, 6011, 91);
    h.send_op(42, 6011, 91);
    assert_eq!(ops(&h.guest.recv()), vec![VSOCK_OP_RST]);
    assert!(host_sees_eof(&mut host));
    // A REQUEST crossing ours (both sides connecting at once).
    let (mut client, req) = h.client_connect(93);
    h.send_op(VSOCK_OP_REQUEST, 93, req.src_port);
    assert_eq!(ops(&h.guest.recv()), vec![VSOCK_OP_RST]);
    assert!(host_sees_eof(&mut client));
    assert_eq!(h.worker.connection_count(), 0);
    assert_eq!(h.worker.counters.tx_ignored, 0);
}

#[test]
fn unanswered_host_request_times_out_with_rst() {
    let mut h = harness();
    let clock = h.fake_clock();
    h.guest.post_rx(4);
    assert!(!h.worker.timer_armed(), "no timer while nothing is pending");
    let (mut client, req) = h.client_connect(52);
    assert!(h.worker.timer_armed());
    assert!(h.advance(&clock, CONN_REQUEST_TIMEOUT - Duration::from_millis(1)).is_empty());
    assert_eq!(h.worker.connection_count(), 1, "not yet");
    let got = h.advance(&clock, Duration::from_millis(1));
    assert_eq!(ops(&got), vec![VSOCK_OP_RST], "the guest forgets the REQUEST too");
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (req.src_port, 52));
    assert!(host_sees_eof(&mut client));
    assert_eq!(h.worker.connection_count(), 0);
    assert_eq!(h.worker.counters.timeouts, 1);
    assert!(!h.worker.timer_armed());
    // A late RESPONSE is for no connection: refused.
    h.send_op(VSOCK_OP_RESPONSE, 52, req.src_port);
    assert_eq!(ops(&h.guest.recv()), vec![VSOCK_OP_RST]);
}

#[test]
fn undelivered_host_request_times_out_without_rst() {
    // A guest that posts no receive buffers never learns of the REQUEST: the
    // client and the slot are freed, and the guest is told nothing.
    let mut h = harness();
    h.worker.set_connection_limit(1);
    let clock = h.fake_clock();
    let mut client = UnixStream::connect(&h.uds).unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();
    h.worker.process_host();
    assert_eq!(h.worker.connection_count(), 1);
    h.advance(&clock, CONN_REQUEST_TIMEOUT);
    assert!(host_sees_eof(&mut client));
    assert_eq!(h.worker.connection_count(), 0);
    h.guest.post_rx(4);
    h.worker.process_rx();
    assert!(h.guest.recv().is_empty());
    // The slot is free again.
    h.client_connect(53);
}

#[test]
fn answered_host_request_has_no_deadline() {
    let mut h = harness();
    let clock = h.fake_clock();
    h.guest.post_rx(4);
    let (mut client, req) = h.client_connect(52);
    h.send_op(VSOCK_OP_RESPONSE, 52, req.src_port);
    assert!(!h.worker.timer_armed());
    assert!(h.advance(&clock, 10 * CONN_REQUEST_TIMEOUT).is_empty());
    assert_eq!(h.worker.connection_count(), 1);
    let want = format!("OK {}\n", req.src_port);
    let mut ok = vec![0u8; want.len()];
    client.read_exact(&mut ok).unwrap();
    assert_eq!(ok, want.as_bytes());
    // Neither does a half-closed connection: the guest may still send.
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let got = h.host_poll();
    assert_eq!(ops(&got), vec![VSOCK_OP_SHUTDOWN]);
    assert_eq!(got[0].0.flags, VSOCK_SHUTDOWN_SEND);
    assert!(!h.worker.timer_armed());
    assert!(h.advance(&clock, 10 * CONN_SHUTDOWN_TIMEOUT).is_empty());
    h.send(guest_hdr(VSOCK_OP_RW, 52, req.src_port), b"late");
    let mut b = [0u8; 4];
    client.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"late");
    assert_eq!(h.worker.counters.timeouts, 0);
}

#[test]
fn shutdown_stuck_on_a_host_that_does_not_read_is_forced_closed() {
    let mut h = harness();
    let clock = h.fake_clock();
    let l = h.listen(82);
    let mut host = h.connect_from_guest(&l, 6002, 82);
    h.guest.post_rx(64);
    let data = pattern(CONN_BUF_ALLOC as usize, 5);
    for chunk in data.chunks(4096) {
        h.send(guest_hdr(VSOCK_OP_RW, 6002, 82), chunk);
    }
    assert!(h.worker.buffered_bytes() > 0, "the socket is full");
    h.guest.recv();
    let mut sd = guest_hdr(VSOCK_OP_SHUTDOWN, 6002, 82);
    sd.flags = VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND;
    h.send(sd, &[]);
    assert!(h.guest.recv().is_empty(), "no RST while data waits for the host");
    assert!(h.worker.timer_armed());
    assert!(h.advance(&clock, CONN_SHUTDOWN_TIMEOUT - Duration::from_millis(1)).is_empty());
    assert_eq!(ops(&h.advance(&clock, Duration::from_millis(1))), vec![VSOCK_OP_RST]);
    assert_eq!(h.worker.connection_count(), 0);
    assert_eq!(h.worker.buffered_bytes(), 0, "what the host did not take is dropped");
    assert!(!h.worker.timer_armed());
    // The socket is closed: the host reads what reached it, then EOF.
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert!(got.len() < data.len() && data.starts_with(&got));
    assert_eq!((h.worker.counters.timeouts, h.worker.counters.resets), (1, 1));
}

#[test]
fn guest_that_never_answers_our_shutdown_is_reset() {
    let mut h = harness();
    let clock = h.fake_clock();
    let l = h.listen(85);
    let mut host = h.connect_from_guest(&l, 6005, 85);
    let mut sd = guest_hdr(VSOCK_OP_SHUTDOWN, 6005, 85);
    sd.flags = VSOCK_SHUTDOWN_SEND;
    h.send(sd, &[]);
    assert!(!h.worker.timer_armed(), "half-closed: the host may still send");
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let got = h.host_poll();
    assert_eq!(ops(&got), vec![VSOCK_OP_SHUTDOWN]);
    assert_eq!(got[0].0.flags, VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND);
    // The guest owes its RST; it never comes.
    assert!(h.worker.timer_armed());
    assert_eq!(ops(&h.advance(&clock, CONN_SHUTDOWN_TIMEOUT)), vec![VSOCK_OP_RST]);
    assert!(host_sees_eof(&mut host));
    assert_eq!(h.worker.connection_count(), 0);
    assert_eq!(h.worker.counters.timeouts, 1);
}

#[test]
fn the_timer_follows_the_earliest_deadline() {
    let mut h = harness();
    let clock = h.fake_clock();
    h.guest.post_rx(8);
    let (mut c1, _) = h.client_connect(1);
    clock.fetch_add(1000, Ordering::SeqCst);
    let (mut c2, r2) = h.client_connect(2);
    // The first expires alone; the second still has a second to go.
    assert_eq!(ops(&h.advance(&clock, Duration::from_millis(1000))), vec![VSOCK_OP_RST]);
    assert!(host_sees_eof(&mut c1));
    assert_eq!(h.worker.connection_count(), 1);
    assert!(h.worker.timer_armed());
    // Answered: nothing left, no timer.
    h.send_op(VSOCK_OP_RESPONSE, 2, r2.src_port);
    assert!(!h.worker.timer_armed());
    assert!(h.advance(&clock, Duration::from_millis(5000)).is_empty());
    c2.write_all(b"x").unwrap();
    assert_eq!(ops(&h.host_poll()), vec![VSOCK_OP_RW]);
}

#[test]
fn worker_thread_wakes_for_an_expired_request_on_its_timerfd() {
    let Harness { mut guest, mut worker, uds, _dir, .. } = harness();
    worker.set_timeouts(Duration::from_millis(50), Duration::from_millis(50));
    guest.post_rx(4);
    let mut client = UnixStream::connect(&uds).unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();
    let fds = worker.polled_fds();
    let start = Instant::now();
    // start() takes the waiting client; nothing else wakes the thread.
    let _w = Worker::spawn("vsock-test", fds, worker).unwrap();
    assert!(host_sees_eof(&mut client));
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert!(wait_for(|| guest.rx.used_idx() == 2));
    assert_eq!(ops(&guest.recv()), vec![VSOCK_OP_REQUEST, VSOCK_OP_RST]);
}

#[test]
fn without_receive_buffers_packets_wait_for_the_guest() {
    let mut h = harness();
    let l = h.listen(92);
    // No buffers: the RESPONSE and an RST wait.
    h.send_op(VSOCK_OP_REQUEST, 7000, 92);
    h.send_op(VSOCK_OP_REQUEST, 7001, 9999);
    assert_eq!(h.guest.rx.used_idx(), 0);
    let (mut host, _) = l.accept().unwrap();
    host.write_all(b"early data").unwrap();
    h.worker.process_host();
    assert_eq!(h.guest.rx.used_idx(), 0);
    // One buffer: RSTs go first.
    h.guest.post_rx(1);
    h.worker.process_rx();
    let got = h.guest.recv();
    assert_eq!(ops(&got), vec![VSOCK_OP_RST]);
    assert_eq!(got[0].0.dst_port, 7001);
    // More: the RESPONSE, then the data, in order.
    h.guest.post_rx(4);
    h.worker.process_rx();
    let got = h.guest.recv();
    assert_eq!(ops(&got), vec![VSOCK_OP_RESPONSE, VSOCK_OP_RW]);
    assert_eq!(got[1].1, b"early data");
}

#[test]
fn receive_buffers_too_small_for_a_header_are_returned_empty() {
    let mut h = harness();
    h.guest.post_rx_sized(1, 20);
    h.guest.post_rx(1);
    h.send_op(VSOCK_OP_REQUEST, 1, 9999);
    assert_eq!(h.guest.rx.used_elem(0).1, 0);
    assert_eq!(h.guest.rx.used_elem(1).1, PacketHeader::SIZE as u32);
    assert_eq!(h.worker.counters.rx_bad_buffers, 1);
}

#[test]
fn header_only_receive_buffers_carry_control_packets() {
    // 44 bytes hold any packet without payload: here the RST that answers a
    // request to a port nobody listens on.
    let mut h = harness();
    h.guest.post_rx_sized(1, PacketHeader::SIZE as u32);
    h.send_op(VSOCK_OP_REQUEST, 1, 9999);
    assert_eq!(h.guest.rx.used_elem(0).1, PacketHeader::SIZE as u32);
    assert_eq!(ops(&h.guest.recv()), vec![VSOCK_OP_RST]);
    assert_eq!(h.worker.counters.rx_bad_buffers, 0);
}

#[test]
fn header_only_receive_buffers_carry_a_connections_response() {
    let mut h = harness();
    let _l = h.listen(94);
    h.guest.post_rx_sized(1, PacketHeader::SIZE as u32);
    h.send_op(VSOCK_OP_REQUEST, 6013, 94);
    assert_eq!(h.guest.rx.used_elem(0).1, PacketHeader::SIZE as u32);
    assert_eq!(ops(&h.guest.recv()), vec![VSOCK_OP_RESPONSE]);
    assert_eq!(h.worker.counters.rx_bad_buffers, 0);
}

#[test]
fn connections_that_come_and_go_without_receive_buffers_leave_nothing_behind() {
    // REQUEST (answered by a RESPONSE that waits for a buffer), then RST:
    // without buffers from the guest, nothing of either may accumulate.
    let mut h = harness();
    let _l = h.listen(95);
    for port in 0..200u32 {
        h.send_op(VSOCK_OP_REQUEST, 7000 + port, 95);
        h.send_op(VSOCK_OP_RST, 7000 + port, 95);
    }
    assert_eq!(h.worker.connection_count(), 0);
    assert_eq!(h.worker.rx_waiting(), 0);
}

#[test]
fn small_receive_buffers_split_host_data() {
    let mut h = harness();
    let l = h.listen(93);
    h.guest.post_rx(1);
    h.send_op(VSOCK_OP_REQUEST, 6012, 93);
    assert_eq!(ops(&h.guest.recv()), vec![VSOCK_OP_RESPONSE]);
    let (mut host, _) = l.accept().unwrap();
    h.guest.post_rx_sized(10, PacketHeader::SIZE as u32 + 100);
    let data = pattern(1000, 4);
    host.write_all(&data).unwrap();
    let got = h.host_poll();
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|(p, _)| p.len == 100));
    assert_eq!(rw_bytes(&got), data);
}

#[test]
fn connection_limit_refuses_with_rst() {
    let mut h = harness();
    h.worker.set_connection_limit(2);
    let l = h.listen(94);
    h.guest.post_rx(8);
    for port in [1, 2, 3] {
        h.send_op(VSOCK_OP_REQUEST, port, 94);
    }
    assert_eq!(ops(&h.guest.recv()), vec![VSOCK_OP_RESPONSE, VSOCK_OP_RESPONSE, VSOCK_OP_RST]);
    assert_eq!(h.worker.connection_count(), 2);
    // Host clients beyond the limit are closed.
    let mut c = UnixStream::connect(&h.uds).unwrap();
    h.worker.process_host();
    assert!(host_sees_eof(&mut c));
    drop(l);
}

#[test]
fn device_config_features_and_socket_path() {
    let dir = TempDir::new();
    let path = dir.0.join("dev.sock");
    assert!(matches!(Vsock::new(2, &path), Err(VsockError::InvalidCid(2))));
    assert!(matches!(Vsock::new(0xffff_ffff, &path), Err(VsockError::InvalidCid(_))));
    let dev = Vsock::new(0x1234, &path).unwrap();
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.features(), 1 << 32);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    let mut cfg = [0xffu8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 0x1234);
    // A live socket is not taken over; a stale one is.
    assert!(matches!(Vsock::new(3, &path), Err(VsockError::InUse(_))));
    drop(dev);
    assert!(!path.exists(), "the socket is removed with the device");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let dev = Vsock::new(3, &path).unwrap();
    drop(dev);
    // A file that is not a socket is never removed.
    std::fs::write(&path, b"keep").unwrap();
    assert!(matches!(Vsock::new(3, &path), Err(VsockError::InUse(_))));
    assert_eq!(std::fs::read(&path).unwrap(), b"keep");
}

#[test]
fn activate_needs_three_queues() {
    let dir = TempDir::new();
    let mut dev = Vsock::new(3, dir.0.join("a.sock")).unwrap();
    let (mem, _drivers, mut active) = queues();
    active.pop();
    let signals = Arc::new(Signals::default());
    assert!(dev.activate(mem, signals.clone(), signals, active).is_err());
}

/// Waits until `f` holds or the timeout passes.
fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn worker_thread_serves_both_directions_through_its_epolls() {
    let dir = TempDir::new();
    let uds = dir.0.join("w.sock");
    let mut dev = Vsock::new(GUEST_CID, &uds).unwrap();
    let l = UnixListener::bind(port_path(&uds, 500)).unwrap();
    let (mem, mut drivers, active) = queues();
    let kicks: Vec<EventFd> = active.iter().map(|q| q.notify.try_clone().unwrap()).collect();
    let signals = Arc::new(Signals::default());
    dev.activate(mem, signals.clone(), signals.clone(), active).unwrap();
    drivers.pop();
    let tx = drivers.pop().unwrap();
    let rx = drivers.pop().unwrap();
    let mut g = Guest { rx, tx, rx_bufs: HashMap::new(), rx_seen: 0 };
    g.post_rx(16);
    kicks[0].write(1).unwrap();

    // Guest-initiated, through the tx kick.
    let mut req = guest_hdr(VSOCK_OP_REQUEST, 40, 500);
    req.len = 0;
    g.queue_tx(&req, &[]);
    kicks[1].write(1).unwrap();
    assert!(wait_for(|| g.rx.used_idx() == 1));
    assert_eq!(ops(&g.recv()), vec![VSOCK_OP_RESPONSE]);
    let (mut host, _) = l.accept().unwrap();
    host.write_all(b"via epoll").unwrap();
    assert!(wait_for(|| g.rx.used_idx() == 2), "the connection's socket woke the worker");
    assert_eq!(g.recv()[0].1, b"via epoll");

    // Host-initiated, through the listener.
    let mut client = UnixStream::connect(&uds).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    client.write_all(b"CONNECT 41\n").unwrap();
    assert!(wait_for(|| g.rx.used_idx() == 3));
    let got = g.recv();
    assert_eq!(ops(&got), vec![VSOCK_OP_REQUEST]);
    g.queue_tx(&guest_hdr(VSOCK_OP_RESPONSE, 41, got[0].0.src_port), &[]);
    kicks[1].write(1).unwrap();
    let mut line = String::new();
    let mut b = [0u8; 1];
    while !line.ends_with('\n') {
        client.read_exact(&mut b).unwrap();
        line.push(b[0] as char);
    }
    assert_eq!(line, format!("OK {}\n", got[0].0.src_port));

    // Reset closes every connection.
    dev.reset();
    assert!(host_sees_eof(&mut host));
    assert!(host_sees_eof(&mut client));
    assert_eq!(signals.resets.load(Ordering::SeqCst), 0);
    drop(dev);
    assert!(!Path::new(&uds).exists());
}

/// A random guest packet: header fields mostly plausible (so connections
/// open, carry data and close) and sometimes anything, with a payload whose
/// length may disagree with the header's `len`.
fn garbage_packet(rng: &mut XorShift) -> Vec<u8> {
    let any = rng.next_u64();
    let some = rng.below(400) as usize;
    let payload = rng.pick(&[0usize, 1, 44, some]);
    let ops = [
        VSOCK_OP_REQUEST,
        VSOCK_OP_REQUEST,
        VSOCK_OP_RESPONSE,
        VSOCK_OP_RW,
        VSOCK_OP_RW,
        VSOCK_OP_RW,
        VSOCK_OP_SHUTDOWN,
        VSOCK_OP_RST,
        VSOCK_OP_CREDIT_UPDATE,
        VSOCK_OP_CREDIT_REQUEST,
        VSOCK_OP_INVALID,
        any as u16,
    ];
    let hdr = PacketHeader {
        src_cid: if rng.chance(92) { GUEST_CID } else { any },
        dst_cid: if rng.chance(92) { HOST_CID } else { any >> 3 },
        src_port: rng.pick(&[1, 2, 3, any as u32]),
        dst_port: rng.pick(&[1000, 1001, 1002, FIRST_HOST_PORT, FIRST_HOST_PORT + 1, (any >> 32) as u32]),
        len: rng.pick(&[payload as u32, payload as u32, 0, payload as u32 + 1, u32::MAX, CONN_BUF_ALLOC + 1]),
        socket_type: if rng.chance(92) { VSOCK_TYPE_STREAM } else { rng.pick(&[0, VSOCK_TYPE_SEQPACKET, any as u16]) },
        op: rng.pick(&ops),
        flags: rng.pick(&[0, VSOCK_SHUTDOWN_RCV, VSOCK_SHUTDOWN_SEND, 3, (any >> 16) as u32]),
        buf_alloc: rng.pick(&[0, 4096, 64 * 1024, u32::MAX, (any >> 24) as u32]),
        fwd_cnt: rng.pick(&[0, some as u32 * 7, (any >> 40) as u32]),
    };
    let mut b = hdr.to_bytes().to_vec();
    b.extend(rng.bytes(payload));
    b
}

/// What the host side of [`garbage_packets_and_host_traffic_never_panic`] holds.
struct FuzzHost {
    h: Harness,
    fz_tx: ChainFuzzer,
    fz_rx: ChainFuzzer,
    clock: Arc<AtomicU64>,
    listeners: Vec<UnixListener>,
    streams: Vec<UnixStream>,
}

const FUZZ_CONNECTIONS: usize = 6;

fn fuzz_host() -> FuzzHost {
    let mut h = harness();
    h.worker.set_connection_limit(FUZZ_CONNECTIONS);
    let clock = h.fake_clock();
    let listeners: Vec<UnixListener> = [1000, 1001]
        .iter()
        .map(|&p| {
            let l = h.listen(p);
            l.set_nonblocking(true).unwrap();
            l
        })
        .collect();
    let mut fz_tx = ChainFuzzer::new(&mut h.guest.tx, 0x4_0000);
    fz_tx.fatal_percent = 1;
    let mut fz_rx = ChainFuzzer::new(&mut h.guest.rx, 0x4_0000);
    fz_rx.fatal_percent = 1;
    FuzzHost { h, fz_tx, fz_rx, clock, listeners, streams: Vec::new() }
}

#[test]
fn garbage_packets_and_host_traffic_never_panic() {
    // Random guest packets in random chains, random receive buffers, host
    // programs connecting, writing, reading and hanging up, and deadlines
    // passing: no panic, the connection limit holds, buffered guest data
    // stays within each connection's buffer, and nothing is used that was
    // not posted.
    let mut rng = XorShift::new(0x50c4_0000_0000_0001);
    let mut f = fuzz_host();
    let mut rebuilds = 0u32;
    let mut max_conns = 0usize;
    let mut totals = super::muxer::VsockCounters::default();
    for _ in 0..1500 {
        match rng.below(10) {
            0..=4 => {
                for _ in 0..1 + rng.below(4) {
                    let p = garbage_packet(&mut rng);
                    f.fz_tx.add(&mut rng, &mut f.h.guest.tx, &p);
                }
                f.h.worker.process_tx();
            }
            5 | 6 => {
                for _ in 0..rng.below(4) {
                    f.fz_rx.add(&mut rng, &mut f.h.guest.rx, &[]);
                }
                f.h.worker.process_rx();
            }
            7 | 8 => {
                for l in &f.listeners {
                    while let Ok((s, _)) = l.accept() {
                        s.set_nonblocking(true).unwrap();
                        f.streams.push(s);
                    }
                }
                if rng.chance(20) {
                    // A host client, with a good or a bad CONNECT line.
                    if let Ok(mut c) = UnixStream::connect(&f.h.uds) {
                        c.set_nonblocking(true).unwrap();
                        let line = match rng.below(3) {
                            0 => format!("CONNECT {}\n", rng.pick(&[1, 2, 3])).into_bytes(),
                            1 => b"CONNECT 99999999999999999999\n".to_vec(),
                            _ => {
                                let n = rng.below(40) as usize;
                                rng.bytes(n)
                            }
                        };
                        let _ = c.write_all(&line);
                        f.streams.push(c);
                    }
                }
                if !f.streams.is_empty() {
                    let i = rng.below(f.streams.len() as u64) as usize;
                    match rng.below(3) {
                        0 => {
                            let n = rng.below(5000) as usize;
                            let _ = f.streams[i].write(&rng.bytes(n));
                        }
                        1 => {
                            let mut buf = [0u8; 4096];
                            while matches!(f.streams[i].read(&mut buf), Ok(n) if n > 0) {}
                        }
                        _ => {
                            f.streams.swap_remove(i);
                        }
                    }
                }
                f.h.worker.process_host();
            }
            _ => {
                // Time passes: unanswered requests and stuck shutdowns expire.
                let ms = rng.pick(&[1, 500, 2500]);
                f.clock.fetch_add(ms, Ordering::SeqCst);
                f.h.worker.process_timer();
            }
        }
        let w = &f.h.worker;
        let conns = w.connection_count();
        max_conns = max_conns.max(conns);
        assert!(conns <= FUZZ_CONNECTIONS, "{conns} connections");
        assert!(w.buffered_bytes() <= conns * CONN_BUF_ALLOC as usize, "{} bytes buffered", w.buffered_bytes());
        assert!(w.rx_waiting() <= conns);
        let g = &f.h.guest;
        assert!(g.tx.avail_idx().wrapping_sub(g.tx.used_idx()) <= 256);
        assert!(g.rx.avail_idx().wrapping_sub(g.rx.used_idx()) <= 256);
        if f.h.signals.resets.load(Ordering::SeqCst) > 0 {
            rebuilds += 1;
            add_counters(&mut totals, &f.h.worker.counters);
            f = fuzz_host();
        } else {
            assert_eq!(g.tx.used_idx(), g.tx.avail_idx(), "every transmit chain completed");
        }
    }
    assert!((1..300).contains(&rebuilds), "{rebuilds} rebuilds");
    add_counters(&mut totals, &f.h.worker.counters);
    assert_eq!(max_conns, FUZZ_CONNECTIONS, "the limit was never reached");
    let t = totals;
    assert!(t.tx_packets > 100 && t.tx_dropped > 10 && t.rx_packets > 50 && t.resets > 10 && t.timeouts > 0, "{t:?}");
}

fn add_counters(t: &mut super::muxer::VsockCounters, c: &super::muxer::VsockCounters) {
    t.tx_packets += c.tx_packets;
    t.tx_dropped += c.tx_dropped;
    t.rx_packets += c.rx_packets;
    t.resets += c.resets;
    t.timeouts += c.timeouts;
}
