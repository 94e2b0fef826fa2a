//! Host-side tests of virtio-net: a mock driver's queues in guest memory, the
//! real worker, and a datagram socketpair standing in for the tap.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    VIRTIO_NET_ERR, VIRTIO_NET_OK,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::tap::{NetBackend, SocketBackend};
use super::worker::NetWorker;
use super::VNET_HDR_LEN;
use crate::device::ActiveQueue;
use crate::queue::test_utils::{MockDriver, RawDescriptor};

use crate::queue::test_utils::RecordingSignals as Signals;

struct Harness {
    rx: MockDriver,
    tx: MockDriver,
    ctrl: MockDriver,
    worker: NetWorker,
    peer: UnixDatagram,
    signals: Arc<Signals>,
}

/// Queues rx0 (index 0), tx0 (1) and ctrl (2), each in its own memory region.
fn harness(mergeable: bool) -> Harness {
    let mb = 1usize << 20;
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), mb),
        (GuestAddress(0x20_0000), mb),
        (GuestAddress(0x40_0000), mb),
    ])
    .unwrap();
    let mut queues = Vec::new();
    let mut drivers = Vec::new();
    for (index, base) in [(0u16, 0x1000u64), (1, 0x20_1000), (2, 0x40_1000)] {
        let driver = MockDriver::new(&mem, GuestAddress(base), 16);
        let mut queue = driver.queue();
        driver.configure(&mut queue);
        queue.set_event_idx(false);
        queues.push(ActiveQueue { index, queue, notify: EventFd::new(libc::EFD_NONBLOCK).unwrap() });
        drivers.push(driver);
    }
    let (backend, peer) = SocketBackend::pair().unwrap();
    peer.set_nonblocking(true).unwrap();
    let signals = Arc::new(Signals::default());
    let (returned, _) = std::sync::mpsc::channel();
    let worker = NetWorker::new(
        mem,
        vec![Box::new(backend) as Box<dyn NetBackend>],
        queues,
        2,
        mergeable,
        [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        signals.clone(),
        signals.clone(),
        returned,
    );
    let ctrl = drivers.pop().unwrap();
    let tx = drivers.pop().unwrap();
    let rx = drivers.pop().unwrap();
    Harness { rx, tx, ctrl, worker, peer, signals }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(3).wrapping_add(seed)));
    f
}

#[test]
fn transmit_gathers_the_chain_into_one_frame() {
    let mut h = harness(true);
    let f = frame(100, 1);
    h.tx.add_buffers(&[&f[..20], &f[20..]], &[]);
    h.worker.process_tx(0);
    let mut buf = [0u8; 2048];
    let n = h.peer.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &f[..]);
    assert_eq!(h.tx.used_idx(), 1);
    assert_eq!(h.worker.counters.tx_frames, 1);
    assert!(h.signals.interrupts.load(Ordering::SeqCst) >= 1);
}

#[test]
fn transmit_of_less_than_a_header_is_dropped_not_sent() {
    let mut h = harness(true);
    h.tx.add_buffers(&[&[1, 2, 3]], &[]);
    h.worker.process_tx(0);
    assert_eq!(h.worker.counters.tx_dropped, 1);
    assert_eq!(h.tx.used_idx(), 1);
    assert!(h.peer.recv(&mut [0u8; 64]).is_err());
}

#[test]
fn receive_into_one_buffer_sets_num_buffers() {
    let mut h = harness(true);
    let buf = h.rx.alloc(2048);
    h.rx.add_chain(&[RawDescriptor::writable(buf, 2048)]);
    let f = frame(300, 7);
    h.peer.send(&f).unwrap();
    h.worker.process_rx(0);
    assert_eq!(h.rx.used_elem(0).1 as usize, f.len());
    let got = h.rx.read(buf, f.len());
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
}

#[test]
fn mergeable_receive_spans_several_buffers() {
    let mut h = harness(true);
    let bufs: Vec<u64> = (0..3).map(|_| h.rx.alloc(512)).collect();
    for &b in &bufs {
        h.rx.add_chain(&[RawDescriptor::writable(b, 512)]);
    }
    let f = frame(1200, 9);
    h.peer.send(&f).unwrap();
    h.worker.process_rx(0);
    assert_eq!(h.rx.used_idx(), 3);
    let lens: Vec<u32> = (0..3).map(|i| h.rx.used_elem(i).1).collect();
    assert_eq!(lens, vec![512, 512, (f.len() - 1024) as u32]);
    let mut got = Vec::new();
    for (i, &b) in bufs.iter().enumerate() {
        got.extend(h.rx.read(b, lens[i] as usize));
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3);
    assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
}

#[test]
fn no_receive_buffers_keeps_the_frame_until_the_next_kick() {
    let mut h = harness(true);
    let f = frame(64, 3);
    h.peer.send(&f).unwrap();
    h.worker.process_rx(0);
    assert_eq!(h.rx.used_idx(), 0);
    // The driver adds a buffer and kicks: the same frame arrives, nothing was lost.
    let buf = h.rx.alloc(2048);
    h.rx.add_chain(&[RawDescriptor::writable(buf, 2048)]);
    h.worker.process_rx(0);
    assert_eq!(h.rx.used_idx(), 1);
    assert_eq!(&h.rx.read(buf, f.len())[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    assert_eq!(h.worker.counters.rx_dropped, 0);
}

#[test]
fn non_mergeable_buffer_too_small_drops_and_counts() {
    let mut h = harness(false);
    let buf = h.rx.alloc(100);
    h.rx.add_chain(&[RawDescriptor::writable(buf, 100)]);
    h.peer.send(&frame(500, 1)).unwrap();
    h.worker.process_rx(0);
    assert_eq!(h.worker.counters.rx_dropped, 1);
    assert_eq!(h.rx.used_elem(0).1, 0);
}

fn ctrl(h: &mut Harness, class: u32, cmd: u32, data: &[u8]) -> u8 {
    let mut command = vec![class as u8, cmd as u8];
    command.extend_from_slice(data);
    let cmd_addr = h.ctrl.alloc_with(&command);
    let ack = h.ctrl.alloc(1);
    h.ctrl.add_chain(&[RawDescriptor::readable(cmd_addr, command.len() as u32), RawDescriptor::writable(ack, 1)]);
    h.worker.process_ctrl();
    h.ctrl.read(ack, 1)[0]
}

#[test]
fn control_queue_commands() {
    let mut h = harness(true);
    let mac = [2, 0, 0, 0, 0, 9];
    assert_eq!(u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, &mac)), VIRTIO_NET_OK);
    assert_eq!(h.worker.mac(), mac);
    // One backend: two pairs is more than the device has.
    assert_eq!(
        u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, &2u16.to_le_bytes())),
        VIRTIO_NET_ERR
    );
    assert_eq!(
        u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, &1u16.to_le_bytes())),
        VIRTIO_NET_OK
    );
    assert_eq!(u32::from(ctrl(&mut h, 99, 0, &[])), VIRTIO_NET_ERR);
    assert_eq!(u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, &[1, 2])), VIRTIO_NET_ERR);
}

#[test]
fn malformed_transmit_chain_needs_reset() {
    let mut h = harness(true);
    h.tx.add_chain(&[RawDescriptor::readable(0x7fff_0000, 64)]);
    h.worker.process_tx(0);
    assert_eq!(h.signals.resets.load(Ordering::SeqCst), 1);
}
