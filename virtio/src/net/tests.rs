//! Host-side tests of virtio-net: a mock driver's queues in guest memory, the
//! real worker, and a datagram socketpair standing in for the tap.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, VIRTIO_NET_CTRL_MAC_TABLE_SET, VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLMULTI, VIRTIO_NET_CTRL_RX_ALLUNI,
    VIRTIO_NET_CTRL_RX_NOBCAST, VIRTIO_NET_CTRL_RX_NOMULTI, VIRTIO_NET_CTRL_RX_NOUNI, VIRTIO_NET_CTRL_RX_PROMISC,
    VIRTIO_NET_ERR, VIRTIO_NET_F_CTRL_MAC_ADDR, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_RX_EXTRA, VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_OK,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::filter::MAC_TABLE_ENTRIES;
use super::tap::{NetBackend, SocketBackend};
use super::worker::NetWorker;
use super::VNET_HDR_LEN;
use crate::device::ActiveQueue;
use crate::queue::test_utils::{ChainFuzzer, MockDriver, RawDescriptor, XorShift};

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
    harness_with(mergeable, false)
}

/// Three queues in their own memory regions, and the memory.
fn queues(event_idx: bool) -> (GuestMemoryMmap, Vec<ActiveQueue>, Vec<MockDriver>) {
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
        queue.set_event_idx(event_idx);
        queues.push(ActiveQueue { index, queue, notify: EventFd::new(libc::EFD_NONBLOCK).unwrap() });
        drivers.push(driver);
    }
    (mem, queues, drivers)
}

/// [`harness`], with or without `VIRTIO_F_EVENT_IDX` on every queue.
fn harness_with(mergeable: bool, event_idx: bool) -> Harness {
    let (mem, queues, mut drivers) = queues(event_idx);
    let (backend, peer) = SocketBackend::pair().unwrap();
    peer.set_nonblocking(true).unwrap();
    let signals = Arc::new(Signals::default());
    let (returned, _) = std::sync::mpsc::channel();
    let mut worker = NetWorker::new(
        mem,
        vec![Box::new(backend) as Box<dyn NetBackend>],
        queues,
        2,
        mergeable,
        Arc::new(Mutex::new([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
        signals.clone(),
        signals.clone(),
        returned,
    );
    worker.set_acked_features((1 << VIRTIO_NET_F_CTRL_RX) | (1 << VIRTIO_NET_F_CTRL_RX_EXTRA));
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

#[test]
fn event_idx_transmit_and_control_queues_keep_asking_for_kicks() {
    // With EVENT_IDX the driver notifies only when avail.idx crosses
    // avail_event; a device that drained a queue without moving avail_event
    // would hear nothing after the first frame or command.
    let mut h = harness_with(true, true);
    for i in 0..3u8 {
        let old = h.tx.avail_idx();
        let f = frame(60, i);
        h.tx.add_buffers(&[&f], &[]);
        assert!(h.tx.event_idx_kick_due(old), "tx frame {i}: the driver must be told to notify");
        h.worker.process_tx(0);
        assert_eq!(h.peer.recv(&mut [0u8; 2048]).unwrap(), f.len());
    }
    for i in 0..3u8 {
        let old = h.ctrl.avail_idx();
        let command = [VIRTIO_NET_CTRL_MAC as u8, VIRTIO_NET_CTRL_MAC_ADDR_SET as u8, 2, 0, 0, 0, 0, i];
        let cmd_addr = h.ctrl.alloc_with(&command);
        let ack = h.ctrl.alloc(1);
        h.ctrl.add_chain(&[RawDescriptor::readable(cmd_addr, command.len() as u32), RawDescriptor::writable(ack, 1)]);
        assert!(h.ctrl.event_idx_kick_due(old), "command {i}: the driver must be told to notify");
        h.worker.process_ctrl();
        assert_eq!(u32::from(h.ctrl.read(ack, 1)[0]), VIRTIO_NET_OK);
    }
}

#[test]
fn mac_addr_set_shows_in_the_configuration_space_until_reset() {
    use super::{Net, NetConfig};
    use crate::device::VirtioDevice;
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

    let (mem, queues, mut drivers) = queues(false);
    let (backend, _peer) = SocketBackend::pair().unwrap();
    let configured = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    let mut net = Net::new(vec![Box::new(backend)], NetConfig { mac: configured, mtu: None }).unwrap();
    net.ack_features((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_CTRL_VQ) | (1 << VIRTIO_NET_F_CTRL_MAC_ADDR));
    let kick = queues[2].notify.try_clone().unwrap();
    let signals = Arc::new(Signals::default());
    net.activate(mem, signals.clone(), signals.clone(), queues).unwrap();

    let ctrl = &mut drivers[2];
    let new_mac = [2, 0, 0, 0, 0, 9];
    let mut command = vec![VIRTIO_NET_CTRL_MAC as u8, VIRTIO_NET_CTRL_MAC_ADDR_SET as u8];
    command.extend_from_slice(&new_mac);
    let cmd_addr = ctrl.alloc_with(&command);
    let ack = ctrl.alloc(1);
    ctrl.add_chain(&[RawDescriptor::readable(cmd_addr, command.len() as u32), RawDescriptor::writable(ack, 1)]);
    kick.write(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctrl.used_idx() == 0 {
        assert!(Instant::now() < deadline, "the worker did not answer the command");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(u32::from(ctrl.read(ack, 1)[0]), VIRTIO_NET_OK);
    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, new_mac, "the configuration space shows the MAC the driver set");

    net.reset();
    net.read_config(0, &mut mac);
    assert_eq!(mac, configured, "a reset brings back the configured MAC");
}

// Receive filtering (5.1.6.5.1 and 5.1.6.5.2).

/// The harness's device MAC.
const OWN: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const OTHER: [u8; 6] = [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc];
const BROADCAST: [u8; 6] = [0xff; 6];
const MULTI: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const OTHER_MULTI: [u8; 6] = [0x01, 0x00, 0x5e, 0, 0, 0xfb];

/// An Ethernet frame to `dest` behind a virtio-net header.
fn frame_to(dest: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&dest);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    f.extend_from_slice(&[0xab; 46]);
    f
}

/// Sends a frame to `dest` through the "tap" with one receive buffer
/// available; whether the guest got it (a filtered frame is counted, and
/// leaves the buffer for the next frame).
fn receives(h: &mut Harness, dest: [u8; 6]) -> bool {
    if h.rx.avail_idx() == h.rx.used_idx() {
        let buf = h.rx.alloc(2048);
        h.rx.add_chain(&[RawDescriptor::writable(buf, 2048)]);
    }
    let used = h.rx.used_idx();
    let filtered = h.worker.counters.rx_filtered;
    h.peer.send(&frame_to(dest)).unwrap();
    h.worker.process_rx(0);
    let got = h.rx.used_idx() != used;
    assert_eq!(got, h.worker.counters.rx_filtered == filtered, "a frame is either delivered or filtered");
    got
}

fn rx_mode(h: &mut Harness, cmd: u32, on: bool) {
    assert_eq!(u32::from(ctrl(h, VIRTIO_NET_CTRL_RX, cmd, &[u8::from(on)])), VIRTIO_NET_OK, "RX command {cmd}");
}

/// MAC_TABLE_SET data: le32 count and addresses, unicast then multicast.
fn mac_tables(unicast: &[[u8; 6]], multicast: &[[u8; 6]]) -> Vec<u8> {
    let mut d = Vec::new();
    for table in [unicast, multicast] {
        d.extend_from_slice(&(table.len() as u32).to_le_bytes());
        for mac in table {
            d.extend_from_slice(mac);
        }
    }
    d
}

#[test]
fn default_is_promiscuous() {
    let mut h = harness(true);
    assert!(h.worker.filter().promisc());
    for dest in [OTHER, OWN, BROADCAST, MULTI] {
        assert!(receives(&mut h, dest), "{dest:x?}");
    }
    assert_eq!(h.worker.counters.rx_filtered, 0);
}

#[test]
fn without_promisc_only_the_asked_for_unicast_arrives() {
    let mut h = harness(true);
    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_PROMISC, false);
    assert!(!receives(&mut h, OTHER), "another host's unicast is filtered");
    assert_eq!(h.worker.counters.rx_filtered, 1);
    assert_eq!(h.worker.counters.rx_dropped, 0, "filtering is not an error");
    assert!(receives(&mut h, OWN));
    assert!(receives(&mut h, BROADCAST));
    let table = mac_tables(&[OTHER], &[]);
    assert_eq!(u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, &table)), VIRTIO_NET_OK);
    assert!(receives(&mut h, OTHER), "in the unicast table");
    assert!(!receives(&mut h, [0x52, 0x54, 0, 0xaa, 0xbb, 0xcd]));
    // A MAC the driver sets is the device's own from then on.
    let new_mac = [2, 0, 0, 0, 0, 9];
    assert_eq!(u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, &new_mac)), VIRTIO_NET_OK);
    assert!(receives(&mut h, new_mac));
    assert!(!receives(&mut h, OWN));
    assert_eq!(h.worker.counters.rx_filtered, 3);
}

#[test]
fn multicast_needs_allmulti_or_a_table_entry() {
    let mut h = harness(true);
    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_PROMISC, false);
    assert!(!receives(&mut h, MULTI));
    let table = mac_tables(&[], &[MULTI]);
    assert_eq!(u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, &table)), VIRTIO_NET_OK);
    assert!(receives(&mut h, MULTI), "in the multicast table");
    assert!(!receives(&mut h, OTHER_MULTI));
    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_ALLMULTI, true);
    assert!(receives(&mut h, OTHER_MULTI));
    assert!(!receives(&mut h, OTHER), "ALLMULTI says nothing about unicast");
    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_ALLMULTI, false);
    assert!(!receives(&mut h, OTHER_MULTI));
}

#[test]
fn rx_extra_switches() {
    let mut h = harness(true);
    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_PROMISC, false);
    let table = mac_tables(&[OTHER], &[MULTI]);
    assert_eq!(u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, &table)), VIRTIO_NET_OK);

    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_NOBCAST, true);
    assert!(!receives(&mut h, BROADCAST));
    assert!(receives(&mut h, MULTI), "NOBCAST leaves other multicast alone");
    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_NOBCAST, false);
    assert!(receives(&mut h, BROADCAST));

    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_NOUNI, true);
    assert!(!receives(&mut h, OWN), "NOUNI drops even the device's own MAC");
    assert!(!receives(&mut h, OTHER));
    assert!(receives(&mut h, BROADCAST));
    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_NOUNI, false);

    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_NOMULTI, true);
    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_ALLMULTI, true);
    assert!(!receives(&mut h, MULTI), "NOMULTI wins over the table and ALLMULTI");
    assert!(receives(&mut h, BROADCAST), "broadcast is governed by NOBCAST only");
    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_NOMULTI, false);
    assert!(receives(&mut h, OTHER_MULTI));

    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_ALLUNI, true);
    assert!(receives(&mut h, [0x02, 9, 9, 9, 9, 9]));
    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_ALLUNI, false);
    assert!(!receives(&mut h, [0x02, 9, 9, 9, 9, 9]));

    // Promiscuous mode overrides every other switch.
    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_NOUNI, true);
    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_NOBCAST, true);
    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_PROMISC, true);
    assert!(receives(&mut h, OTHER));
    assert!(receives(&mut h, BROADCAST));
}

#[test]
fn malformed_filter_commands_are_refused_and_change_nothing() {
    let mut h = harness(true);
    let good = mac_tables(&[OTHER], &[MULTI]);
    assert_eq!(u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, &good)), VIRTIO_NET_OK);
    let before = h.worker.filter().clone();
    let mut trailing = good.clone();
    trailing.push(0);
    let one_missing = {
        let mut d = mac_tables(&[OTHER], &[]);
        d[0] = 2;
        d
    };
    let bad: Vec<Vec<u8>> = vec![
        vec![],
        vec![0, 0, 0],
        vec![0, 0, 0, 0],                              // no multicast table
        mac_tables(&[OTHER], &[])[..8].to_vec(),       // unicast entry cut short
        one_missing,                                   // says 2 unicast entries, has 1
        trailing,                                      // a byte too many
        good[..good.len() - 1].to_vec(),               // a byte too few
        [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0].to_vec(), // 4 billion entries, none there
        mac_tables(&[], &[MULTI; 2])[..10].to_vec(),
    ];
    for data in &bad {
        assert_eq!(
            u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, data)),
            VIRTIO_NET_ERR,
            "{data:x?}"
        );
        assert_eq!(h.worker.filter(), &before, "{data:x?}");
    }
    for data in [&[][..], &[2], &[0xff], &[0, 1], &[1, 0]] {
        assert_eq!(u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, data)), VIRTIO_NET_ERR);
        assert!(h.worker.filter().promisc(), "{data:x?}");
    }
    assert_eq!(u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_RX, 6, &[1])), VIRTIO_NET_ERR, "no RX command 6");
}

#[test]
fn filter_commands_need_their_feature() {
    let mut h = harness(true);
    h.worker.set_acked_features(1 << VIRTIO_NET_F_CTRL_RX);
    for cmd in
        [VIRTIO_NET_CTRL_RX_ALLUNI, VIRTIO_NET_CTRL_RX_NOMULTI, VIRTIO_NET_CTRL_RX_NOUNI, VIRTIO_NET_CTRL_RX_NOBCAST]
    {
        assert_eq!(u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_RX, cmd, &[1])), VIRTIO_NET_ERR, "{cmd} needs RX_EXTRA");
    }
    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_ALLMULTI, true);

    h.worker.set_acked_features(0);
    assert_eq!(u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[0])), VIRTIO_NET_ERR);
    let table = mac_tables(&[OTHER], &[]);
    assert_eq!(u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, &table)), VIRTIO_NET_ERR);
    assert!(h.worker.filter().promisc());
    assert!(h.worker.filter().unicast().entries().is_empty());
}

#[test]
fn too_many_addresses_accept_all_of_their_kind() {
    let mut h = harness(true);
    rx_mode(&mut h, VIRTIO_NET_CTRL_RX_PROMISC, false);
    let unicast: Vec<[u8; 6]> = (0..=MAC_TABLE_ENTRIES as u8).map(|i| [2, 0, 0, 0, 1, i]).collect();
    let table = mac_tables(&unicast, &[MULTI]);
    assert_eq!(u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, &table)), VIRTIO_NET_OK);
    assert!(h.worker.filter().unicast().overflow());
    assert!(receives(&mut h, OTHER), "unicast overflow: every unicast");
    assert!(receives(&mut h, MULTI));
    assert!(!receives(&mut h, OTHER_MULTI), "the multicast table still filters");

    // A table larger than the 4 KiB other commands may be is still read (in place).
    let multicast: Vec<[u8; 6]> = (0..700u16).map(|i| [1, 0, 0x5e, 0, (i >> 8) as u8, i as u8]).collect();
    let table = mac_tables(&[OTHER], &multicast);
    assert!(table.len() > 4096);
    assert_eq!(u32::from(ctrl(&mut h, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, &table)), VIRTIO_NET_OK);
    assert!(h.worker.filter().multicast().overflow() && !h.worker.filter().unicast().overflow());
    assert_eq!(h.worker.filter().unicast().entries(), &[OTHER]);
    assert!(receives(&mut h, OTHER_MULTI));
    assert!(!receives(&mut h, [0x02, 9, 9, 9, 9, 9]));
}

#[test]
fn filtered_frames_do_not_use_up_receive_buffers() {
    for mergeable in [true, false] {
        let mut h = harness(mergeable);
        rx_mode(&mut h, VIRTIO_NET_CTRL_RX_PROMISC, false);
        let buf = h.rx.alloc(2048);
        h.rx.add_chain(&[RawDescriptor::writable(buf, 2048)]);
        for _ in 0..3 {
            h.peer.send(&frame_to(OTHER)).unwrap();
        }
        // Too short for a destination MAC: dropped as malformed, also without a buffer.
        h.peer.send(&frame_to(OWN)[..VNET_HDR_LEN + 5]).unwrap();
        let wanted = frame_to(OWN);
        h.peer.send(&wanted).unwrap();
        h.worker.process_rx(0);
        assert_eq!(h.worker.counters.rx_filtered, 3);
        assert_eq!(h.worker.counters.rx_dropped, 1);
        assert_eq!(h.rx.used_idx(), 1, "only the wanted frame took the buffer");
        assert_eq!(h.rx.used_elem(0).1 as usize, wanted.len());
        assert_eq!(&h.rx.read(buf, wanted.len())[VNET_HDR_LEN..], &wanted[VNET_HDR_LEN..]);
    }
}

#[test]
fn reset_restores_promiscuous_mode() {
    use super::{Net, NetConfig};
    use crate::device::VirtioDevice;
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    let (backend, peer) = SocketBackend::pair().unwrap();
    let mut net = Net::new(vec![Box::new(backend)], NetConfig { mac: OWN, mtu: None }).unwrap();
    let features = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_CTRL_VQ) | (1 << VIRTIO_NET_F_CTRL_RX);
    assert_ne!(net.features() & (1 << VIRTIO_NET_F_CTRL_RX_EXTRA), 0, "RX_EXTRA is offered");

    // First life: the driver turns promiscuous mode off.
    let (mem, active, mut drivers) = queues(false);
    let buf = drivers[0].alloc(2048);
    drivers[0].add_chain(&[RawDescriptor::writable(buf, 2048)]);
    let kick = active[2].notify.try_clone().unwrap();
    let signals = Arc::new(Signals::default());
    net.ack_features(features);
    net.activate(mem, signals.clone(), signals.clone(), active).unwrap();
    let command = [VIRTIO_NET_CTRL_RX as u8, VIRTIO_NET_CTRL_RX_PROMISC as u8, 0];
    let cmd_addr = drivers[2].alloc_with(&command);
    let ack = drivers[2].alloc(1);
    drivers[2].add_chain(&[RawDescriptor::readable(cmd_addr, 3), RawDescriptor::writable(ack, 1)]);
    kick.write(1).unwrap();
    wait_for("the PROMISC command", || drivers[2].used_idx() == 1);
    assert_eq!(u32::from(drivers[2].read(ack, 1)[0]), VIRTIO_NET_OK);
    // Frames keep their order: the first one was filtered when the second arrives.
    peer.send(&frame_to(OTHER)).unwrap();
    peer.send(&frame_to(OWN)).unwrap();
    wait_for("the frame to the device", || drivers[0].used_idx() == 1);
    assert_eq!(drivers[0].read(buf + VNET_HDR_LEN as u64, 6), OWN);

    // Second life after a reset: promiscuous again, the frame to another MAC arrives.
    net.reset();
    let (mem, active, mut drivers) = queues(false);
    let buf = drivers[0].alloc(2048);
    drivers[0].add_chain(&[RawDescriptor::writable(buf, 2048)]);
    net.ack_features(features);
    net.activate(mem, signals.clone(), signals.clone(), active).unwrap();
    peer.send(&frame_to(OTHER)).unwrap();
    wait_for("the frame to another MAC", || drivers[0].used_idx() == 1);
    assert_eq!(drivers[0].read(buf + VNET_HDR_LEN as u64, 6), OTHER);
    net.reset();
}

#[test]
fn mergeable_frame_larger_than_the_posted_buffers_waits_for_more() {
    // Buffers for part of a frame only: they are given back and the frame
    // waits for the driver's next kick (it used to retry on the very same
    // buffers, recursing until the stack overflowed).
    for event_idx in [false, true] {
        let mut h = harness_with(true, event_idx);
        let first = h.rx.alloc(256);
        h.rx.add_chain(&[RawDescriptor::writable(first, 256)]);
        let f = frame(1000, 5);
        h.peer.send(&f).unwrap();
        h.worker.process_rx(0);
        assert_eq!(h.rx.used_idx(), 0, "not enough room yet: nothing used");
        assert_eq!(h.worker.counters.rx_frames, 0);
        let mut bufs = vec![first];
        let old = h.rx.avail_idx();
        for _ in 0..3 {
            let b = h.rx.alloc(256);
            h.rx.add_chain(&[RawDescriptor::writable(b, 256)]);
            bufs.push(b);
        }
        if event_idx {
            assert!(h.rx.event_idx_kick_due(old), "the driver is asked to kick for its next buffer");
        } else {
            assert_eq!(h.rx.used_flags(), 0, "notifications are on");
        }
        h.worker.process_rx(0);
        assert_eq!(h.rx.used_idx(), 4);
        assert_eq!(h.worker.counters.rx_frames, 1);
        let got: Vec<u8> = (0..4).flat_map(|i| h.rx.read(bufs[i], h.rx.used_elem(i as u16).1 as usize)).collect();
        assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    }
}

/// A random control command: every class and command (and unknown ones),
/// data of random length, MAC tables with random and absurd entry counts.
fn garbage_command(rng: &mut XorShift) -> Vec<u8> {
    let any = rng.next_u64();
    if rng.chance(40) {
        // Well formed (the chain around it may still spoil it).
        let mut c = match rng.below(4) {
            0 => vec![VIRTIO_NET_CTRL_RX as u8, rng.below(6) as u8, rng.below(2) as u8],
            1 => vec![VIRTIO_NET_CTRL_MAC as u8, VIRTIO_NET_CTRL_MAC_ADDR_SET as u8],
            2 => vec![VIRTIO_NET_CTRL_MQ as u8, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8, 1, 0],
            _ => vec![VIRTIO_NET_CTRL_MAC as u8, VIRTIO_NET_CTRL_MAC_TABLE_SET as u8, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        if c.len() == 2 {
            c.extend([2, 0, 0, 0, 0, any as u8]);
        }
        return c;
    }
    let class = rng.pick(&[0u8, 1, 2, 3, 4, 5, any as u8]);
    let cmd = rng.pick(&[0u8, 1, 2, 3, 4, 5, 6, (any >> 8) as u8]);
    let mut c = vec![class, cmd];
    if (u32::from(class), u32::from(cmd)) == (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET) && rng.chance(70) {
        for _ in 0..2 {
            let n = rng.pick(&[0u32, 1, 3, MAC_TABLE_ENTRIES as u32 + 1, u32::MAX, (any >> 16) as u32]);
            c.extend(n.to_le_bytes());
            let macs = rng.below(u64::from(n.min(8)) + 2) as usize;
            c.extend(rng.bytes(6 * macs));
        }
    } else {
        let some = rng.below(40) as usize;
        let n = rng.pick(&[0usize, 1, 2, 6, some]);
        c.extend(rng.bytes(n));
        if rng.chance(30) && !c[2..].is_empty() {
            c[2] = rng.pick(&[0, 1]);
        }
    }
    c
}

/// A random frame as the tap delivers it: header and payload of random
/// length (none, shorter than a header, up to 9000 bytes), to us, to
/// broadcast, multicast or someone else.
fn garbage_frame(rng: &mut XorShift, mac: [u8; 6]) -> Vec<u8> {
    let (small, big) = (rng.below(1600) as usize, rng.below(9000) as usize);
    let len = rng.pick(&[0usize, 5, VNET_HDR_LEN, VNET_HDR_LEN + 6, small, big]);
    let mut f = rng.bytes(len);
    if f.len() >= VNET_HDR_LEN + 6 && rng.chance(70) {
        let dest = rng.pick(&[mac, [0xff; 6], [0x01, 0, 0x5e, 0, 0, 1]]);
        f[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&dest);
    }
    f
}

#[test]
fn garbage_chains_and_frames_never_panic() {
    // Random transmit chains, receive chains, frames from the tap and control
    // commands, with and without MRG_RXBUF and EVENT_IDX: no panic; every
    // transmit and control chain is completed (or the device marked broken),
    // control answers are OK or ERR, at most one frame per pair waits for
    // buffers, and nothing is used that was not posted.
    let mut rng = XorShift::new(0x4e70_0000_0000_0001);
    let mut rebuilds = 0u32;
    let (mut h, mut fz) = fuzz_net(&mut rng);
    let mut acks = [0u32; 2];
    for _ in 0..1500 {
        match rng.below(4) {
            0 => {
                for _ in 0..1 + rng.below(3) {
                    let n = rng.below(200) as usize;
                    let f = rng.bytes(VNET_HDR_LEN + n);
                    fz[1].add(&mut rng, &mut h.tx, &f);
                }
                h.worker.process_tx(0);
                while h.peer.recv(&mut [0u8; 256]).is_ok() {}
            }
            1 => {
                for _ in 0..rng.below(3) {
                    fz[0].add(&mut rng, &mut h.rx, &[]);
                }
                for _ in 0..rng.below(3) {
                    let f = garbage_frame(&mut rng, h.worker.mac());
                    let _ = h.peer.send(&f);
                }
                h.worker.process_rx(0);
            }
            2 => {
                let c = garbage_command(&mut rng);
                let published = h.ctrl.avail_idx();
                let (_, descs) = fz[2].add(&mut rng, &mut h.ctrl, &c);
                h.worker.process_ctrl();
                if h.signals.resets.load(Ordering::SeqCst) == 0 {
                    let (_, len) = h.ctrl.used_elem(published);
                    let ack = descs.iter().rev().find(|d| d.flags & crate::queue::VIRTQ_DESC_F_WRITE != 0 && d.len > 0);
                    match ack {
                        Some(d) => {
                            assert_eq!(len, 1);
                            let a = u32::from(h.ctrl.read(d.addr + u64::from(d.len) - 1, 1)[0]);
                            assert!(a == VIRTIO_NET_OK || a == VIRTIO_NET_ERR, "ack {a}");
                            acks[a as usize] += 1;
                        }
                        None => assert_eq!(len, 0),
                    }
                }
            }
            _ => {
                // A frame waiting while the driver posts nothing, then buffers.
                let f = garbage_frame(&mut rng, h.worker.mac());
                let _ = h.peer.send(&f);
                h.worker.process_rx(0);
            }
        }
        assert!(h.worker.pending_frames() <= 1);
        if h.signals.resets.load(Ordering::SeqCst) > 0 {
            rebuilds += 1;
            (h, fz) = fuzz_net(&mut rng);
            continue;
        }
        assert_eq!(h.tx.used_idx(), h.tx.avail_idx(), "every transmit chain completed");
        assert_eq!(h.ctrl.used_idx(), h.ctrl.avail_idx(), "every control chain completed");
        let (rx_used, rx_posted) = (h.rx.used_idx(), h.rx.avail_idx());
        assert!(rx_posted.wrapping_sub(rx_used) <= 16, "used {rx_used} of {rx_posted} posted");
    }
    assert!((1..300).contains(&rebuilds), "{rebuilds} rebuilds");
    assert!(acks[0] > 10 && acks[1] > 10, "{acks:?}");
}

/// A fresh harness and a chain fuzzer per queue (rx, tx, ctrl).
fn fuzz_net(rng: &mut XorShift) -> (Harness, Vec<ChainFuzzer>) {
    let mut h = harness_with(rng.chance(50), rng.chance(50));
    let mut fz = vec![
        ChainFuzzer::new(&mut h.rx, 0x1_0000),
        ChainFuzzer::new(&mut h.tx, 0x1_0000),
        ChainFuzzer::new(&mut h.ctrl, 0x1_0000),
    ];
    for f in &mut fz {
        f.fatal_percent = 1;
    }
    (h, fz)
}
