//! The virtio-net I/O thread: transmit chains go to the backend with one
//! writev straight from guest memory; received frames are copied into the
//! guest's receive buffers, spread over several of them with MRG_RXBUF.
//!
//! Receive filtering ([`super::filter`]) happens on the bounce buffer every
//! frame is read into, before any receive buffer is taken: a frame the guest
//! did not ask for is counted and forgotten and never uses up a buffer.

use std::collections::HashMap;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use virtio_bindings::virtio_net::*;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::filter::{self, RxFilter};
use super::tap::NetBackend;
use super::{SharedMac, VNET_HDR_LEN};
use crate::device::{ActiveQueue, DeviceStatusSink, VirtioInterrupt};
use crate::queue::DescriptorChain;
use crate::worker::WorkerHandler;

/// Tokens at and above this are backends (queue pair = token - base).
pub const BACKEND_TOKEN_BASE: u64 = 1 << 32;
/// Largest frame with its header: 64 KiB of GSO payload plus headers.
const MAX_FRAME: usize = 65562 + VNET_HDR_LEN;

/// Counters a test or the statistics can read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames sent to the backend.
    pub tx_frames: u64,
    /// Frames the backend refused (full) or that were malformed.
    pub tx_dropped: u64,
    /// Frames given to the guest.
    pub rx_frames: u64,
    /// Frames that did not fit a non-mergeable buffer, or were too short to
    /// hold a virtio-net header and a destination MAC.
    pub rx_dropped: u64,
    /// Frames the receive filter kept from the guest (not an error).
    pub rx_filtered: u64,
}

/// The state of the virtio-net I/O thread.
pub struct NetWorker {
    mem: GuestMemoryMmap,
    backends: Vec<Box<dyn NetBackend>>,
    queues: HashMap<u16, ActiveQueue>,
    ctrl_index: u16,
    mergeable: bool,
    mac: SharedMac,
    /// The receive filter; its copy of the MAC follows VIRTIO_NET_CTRL_MAC_ADDR_SET,
    /// the only writer of `mac` while the worker runs.
    filter: RxFilter,
    /// VIRTIO_NET_F_CTRL_RX was negotiated: PROMISC, ALLMULTI and MAC_TABLE_SET.
    ctrl_rx: bool,
    /// VIRTIO_NET_F_CTRL_RX_EXTRA was negotiated: ALLUNI, NOMULTI, NOUNI, NOBCAST.
    ctrl_rx_extra: bool,
    active_pairs: u16,
    /// A frame read from a backend that found no receive buffers yet, per pair.
    pending: Vec<Option<Vec<u8>>>,
    interrupt: Arc<dyn VirtioInterrupt>,
    status: Arc<dyn DeviceStatusSink>,
    broken: bool,
    /// Control commands answered VIRTIO_NET_ERR, for a rate-limited log line.
    refused_commands: devices::ratelimit::LogLimiter,
    returned: Sender<Vec<Box<dyn NetBackend>>>,
    /// Frame counters.
    pub counters: NetCounters,
    /// Where frames are read from the backend before they are placed in the guest.
    bounce: Vec<u8>,
}

impl NetWorker {
    /// A worker over `queues` (by index) and `backends` (one per pair).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mem: GuestMemoryMmap,
        backends: Vec<Box<dyn NetBackend>>,
        queues: Vec<ActiveQueue>,
        ctrl_index: u16,
        mergeable: bool,
        mac: SharedMac,
        interrupt: Arc<dyn VirtioInterrupt>,
        status: Arc<dyn DeviceStatusSink>,
        returned: Sender<Vec<Box<dyn NetBackend>>>,
    ) -> Self {
        let pending = backends.iter().map(|_| None).collect();
        let filter = RxFilter::new(*mac.lock().unwrap_or_else(|e| e.into_inner()));
        NetWorker {
            mem,
            backends,
            queues: queues.into_iter().map(|q| (q.index, q)).collect(),
            ctrl_index,
            mergeable,
            mac,
            filter,
            ctrl_rx: false,
            ctrl_rx_extra: false,
            active_pairs: 1,
            pending,
            interrupt,
            status,
            broken: false,
            refused_commands: devices::ratelimit::LogLimiter::new(),
            returned,
            counters: NetCounters::default(),
            bounce: vec![0u8; MAX_FRAME],
        }
    }

    /// Takes the receive-filter commands the driver may use from the acked
    /// `features` (VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_RX_EXTRA); without
    /// this call they are all refused and the filter stays promiscuous.
    pub fn set_acked_features(&mut self, features: u64) {
        self.ctrl_rx = features & (1 << VIRTIO_NET_F_CTRL_RX) != 0;
        self.ctrl_rx_extra = features & (1 << VIRTIO_NET_F_CTRL_RX_EXTRA) != 0;
    }

    /// The receive filter as the driver set it.
    pub fn filter(&self) -> &RxFilter {
        &self.filter
    }

    /// The MAC the driver last set through the control queue (or the configured one).
    pub fn mac(&self) -> [u8; 6] {
        *self.mac.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frames read from the backends and held for receive buffers (at most
    /// one per pair).
    #[cfg(test)]
    pub(crate) fn pending_frames(&self) -> usize {
        self.pending.iter().flatten().count()
    }

    fn fail(&mut self, what: &dyn std::fmt::Display) {
        if !self.broken {
            log::warn!("virtio-net: {what}; the device needs a reset");
            self.broken = true;
            self.status.needs_reset();
        }
    }

    fn signal(&mut self, q: u16) {
        let Some(active) = self.queues.get_mut(&q) else { return };
        match active.queue.needs_notification(&self.mem) {
            Ok(true) => self.interrupt.notify_queue(q),
            Ok(false) => {}
            Err(e) => self.fail(&e),
        }
    }

    /// Sends every available transmit chain of `pair`.
    pub fn process_tx(&mut self, pair: u16) {
        let q = 2 * pair + 1;
        if self.broken || usize::from(pair) >= self.backends.len() {
            return;
        }
        let mut sent_any = false;
        loop {
            let Some(active) = self.queues.get_mut(&q) else { return };
            let chain = match active.queue.pop(&self.mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return self.fail(&e),
            };
            match iovecs(&self.mem, &chain) {
                Some(iov) if total(&iov) >= VNET_HDR_LEN => match self.backends[usize::from(pair)].send(&iov) {
                    Ok(_) => self.counters.tx_frames += 1,
                    Err(e) => {
                        // A full tap drops like a full NIC queue would; counted, not fatal.
                        self.counters.tx_dropped += 1;
                        log::debug!("virtio-net: tx dropped: {e}");
                    }
                },
                _ => {
                    self.counters.tx_dropped += 1;
                    log::debug!("virtio-net: tx chain {} is not a frame", chain.head_index);
                }
            }
            let Some(active) = self.queues.get_mut(&q) else { return };
            if let Err(e) = active.queue.add_used(&self.mem, chain.head_index, 0) {
                return self.fail(&e);
            }
            sent_any = true;
        }
        if sent_any {
            self.signal(q);
        }
    }

    /// Moves frames from the backend of `pair` into the guest until either runs dry.
    pub fn process_rx(&mut self, pair: u16) {
        let p = usize::from(pair);
        if self.broken || p >= self.backends.len() || pair >= self.active_pairs {
            return;
        }
        let q = 2 * pair;
        let mut delivered = false;
        loop {
            let frame = match self.pending[p].take() {
                Some(f) => f,
                None => {
                    // One bounce buffer for the worker's life: a fresh 64 KiB zeroed
                    // buffer per frame cost more than the copy itself.
                    match self.backends[p].recv(&mut self.bounce) {
                        Ok(n) => {
                            // Filtered here, on the bounce buffer, so a frame the guest
                            // did not ask for never takes one of its buffers.
                            let frame = &self.bounce[..n.min(self.bounce.len())];
                            let dest =
                                frame.get(VNET_HDR_LEN..VNET_HDR_LEN + 6).and_then(|d| <&[u8; 6]>::try_from(d).ok());
                            match dest {
                                // No destination MAC: not a frame anyone could use.
                                None => {
                                    self.counters.rx_dropped += 1;
                                    continue;
                                }
                                Some(dest) if !self.filter.accepts(dest) => {
                                    self.counters.rx_filtered += 1;
                                    continue;
                                }
                                Some(_) => frame.to_vec(),
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            log::warn!("virtio-net: backend read failed: {e}");
                            break;
                        }
                    }
                }
            };
            match self.deliver(q, frame) {
                Ok(true) => delivered = true,
                Ok(false) => break,
                Err(()) => return,
            }
        }
        if delivered {
            self.signal(q);
        }
    }

    /// Places one frame in the receive queue. Ok(false): no buffers, the frame is
    /// kept for the next kick (never dropped silently). Err: the queue is broken.
    fn deliver(&mut self, q: u16, mut frame: Vec<u8>) -> Result<bool, ()> {
        let pair = usize::from(q / 2);
        let Some(active) = self.queues.get_mut(&q) else { return Err(()) };
        let mut chains: Vec<(DescriptorChain, u32)> = Vec::new();
        let mut placed = 0usize;
        while placed < frame.len() {
            let chain = match active.queue.pop(&self.mem) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    // Out of buffers: ask for a kick on the driver's next
                    // buffer, then give back what was taken and wait. Asked
                    // before the give-back, or the taken buffers would count
                    // as new ones and the retry below would recurse forever.
                    let more = active.queue.enable_notification(&self.mem);
                    for _ in &chains {
                        active.queue.undo_pop();
                    }
                    return match more {
                        Ok(true) => {
                            // Buffers arrived meanwhile: try again right away.
                            let _ = active.queue.disable_notification(&self.mem);
                            self.deliver(q, frame)
                        }
                        Ok(false) => {
                            self.pending[pair] = Some(frame);
                            Ok(false)
                        }
                        Err(e) => {
                            self.fail(&e);
                            Err(())
                        }
                    };
                }
                Err(e) => {
                    self.fail(&e);
                    return Err(());
                }
            };
            let room = chain.writable_len() as usize;
            if !self.mergeable && room < frame.len() {
                // Without MRG_RXBUF each buffer must hold a whole frame (5.1.6.3.1).
                self.counters.rx_dropped += 1;
                log::debug!("virtio-net: rx buffer of {room} bytes is too small for a {}-byte frame", frame.len());
                if let Err(e) = active.queue.add_used(&self.mem, chain.head_index, 0) {
                    self.fail(&e);
                    return Err(());
                }
                return Ok(true);
            }
            let n = room.min(frame.len() - placed);
            chains.push((chain, n as u32));
            placed += n;
            if room == 0 {
                // A buffer with no room would loop forever; treat it as the end.
                break;
            }
        }
        // num_buffers (offset 10 of the header) says how many buffers the frame spans.
        let num_buffers = chains.len() as u16;
        frame[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        let mut offset = 0usize;
        for (chain, n) in &chains {
            let end = offset + *n as usize;
            if let Err(e) = chain.write_at(&self.mem, 0, &frame[offset..end]) {
                log::warn!("virtio-net: rx write failed: {e}");
            }
            offset = end;
        }
        let Some(active) = self.queues.get_mut(&q) else { return Err(()) };
        for (chain, n) in &chains {
            if let Err(e) = active.queue.add_used(&self.mem, chain.head_index, *n) {
                self.fail(&e);
                return Err(());
            }
        }
        self.counters.rx_frames += 1;
        Ok(true)
    }

    /// Handles every command in the control queue (5.1.6.5).
    pub fn process_ctrl(&mut self) {
        let q = self.ctrl_index;
        let mut done = false;
        loop {
            let Some(active) = self.queues.get_mut(&q) else { return };
            let chain = match active.queue.pop(&self.mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return self.fail(&e),
            };
            let mut head = [0u8; 2];
            let ack = if chain.read_at(&self.mem, 0, &mut head).is_err() {
                VIRTIO_NET_ERR
            } else if (u32::from(head[0]), u32::from(head[1])) == (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET) {
                // Read in place: a table may be longer than the copy below allows.
                self.mac_table_set(&chain)
            } else {
                let command = chain.read_all_capped(&self.mem, 4096).unwrap_or_default();
                if command.len() >= 2 {
                    self.command(command[0], command[1], &command[2..])
                } else {
                    VIRTIO_NET_ERR
                }
            };
            if ack != VIRTIO_NET_OK {
                if let Some(n) = self.refused_commands.tick() {
                    log::warn!(
                        "virtio-net: refused control command {:#04x}/{:#04x} (malformed, unsupported or its \
                         feature not negotiated) (#{n})",
                        head[0],
                        head[1]
                    );
                }
            }
            let writable = chain.writable_len();
            let used =
                if writable > 0 && chain.write_at(&self.mem, writable - 1, &[ack as u8]).is_ok() { 1 } else { 0 };
            let Some(active) = self.queues.get_mut(&q) else { return };
            if let Err(e) = active.queue.add_used(&self.mem, chain.head_index, used) {
                return self.fail(&e);
            }
            done = true;
        }
        if done {
            self.signal(q);
        }
    }

    /// VIRTIO_NET_CTRL_MAC_TABLE_SET (5.1.6.5.2), parsed straight from the
    /// chain: both tables replace the old ones, or nothing changes (ERR).
    fn mac_table_set(&mut self, chain: &DescriptorChain) -> u32 {
        if !self.ctrl_rx {
            return VIRTIO_NET_ERR;
        }
        let mem = &self.mem;
        let len = chain.readable_len().saturating_sub(2);
        match filter::parse_mac_tables(len, |offset, buf| chain.read_at(mem, offset + 2, buf).is_ok()) {
            Some((unicast, multicast)) => {
                self.filter.set_tables(unicast, multicast);
                VIRTIO_NET_OK
            }
            None => VIRTIO_NET_ERR,
        }
    }

    /// Every command but MAC_TABLE_SET, with its data copied out of the chain.
    fn command(&mut self, class: u8, cmd: u8, data: &[u8]) -> u32 {
        match (u32::from(class), u32::from(cmd)) {
            // 5.1.6.5.1: one byte, 0 (off) or 1 (on); each command only with its feature.
            (VIRTIO_NET_CTRL_RX, c) => {
                let negotiated = match c {
                    VIRTIO_NET_CTRL_RX_PROMISC | VIRTIO_NET_CTRL_RX_ALLMULTI => self.ctrl_rx,
                    VIRTIO_NET_CTRL_RX_ALLUNI..=VIRTIO_NET_CTRL_RX_NOBCAST => self.ctrl_rx_extra,
                    _ => false,
                };
                match data {
                    [on @ (0 | 1)] if negotiated && self.filter.set_rx_mode(c, *on == 1) => VIRTIO_NET_OK,
                    _ => VIRTIO_NET_ERR,
                }
            }
            (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET) if data.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(data);
                // The configuration space shows the new MAC before the command
                // is used (5.1.6.5.2): it reads the same shared value.
                *self.mac.lock().unwrap_or_else(|e| e.into_inner()) = mac;
                self.filter.set_mac(mac);
                VIRTIO_NET_OK
            }
            (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) if data.len() == 2 => {
                let pairs = u16::from_le_bytes([data[0], data[1]]);
                if pairs >= 1 && usize::from(pairs) <= self.backends.len() {
                    self.active_pairs = pairs;
                    VIRTIO_NET_OK
                } else {
                    VIRTIO_NET_ERR
                }
            }
            _ => VIRTIO_NET_ERR,
        }
    }
}

fn total(iov: &[libc::iovec]) -> usize {
    iov.iter().map(|v| v.iov_len).sum()
}

/// Host iovecs for the readable part of a chain (a transmit frame).
fn iovecs(mem: &GuestMemoryMmap, chain: &DescriptorChain) -> Option<Vec<libc::iovec>> {
    chain
        .readable()
        .filter(|d| d.len > 0)
        .map(|d| {
            let slice = mem.get_slice(GuestAddress(d.addr), d.len as usize).ok()?;
            Some(libc::iovec { iov_base: slice.ptr_guard_mut().as_ptr().cast(), iov_len: d.len as usize })
        })
        .collect()
}

impl WorkerHandler for NetWorker {
    fn start(&mut self) {
        for pair in 0..self.backends.len() as u16 {
            self.process_tx(pair);
            self.process_rx(pair);
        }
    }

    fn ready(&mut self, token: u64, _events: EventSet) {
        if token >= BACKEND_TOKEN_BASE {
            return self.process_rx((token - BACKEND_TOKEN_BASE) as u16);
        }
        let q = token as u16;
        if let Some(active) = self.queues.get(&q) {
            let _ = active.notify.read();
        }
        if q == self.ctrl_index {
            self.process_ctrl();
        } else if q % 2 == 0 {
            // New receive buffers: resume a receive that was waiting for them.
            self.process_rx(q / 2);
        } else {
            self.process_tx(q / 2);
        }
    }
}

impl Drop for NetWorker {
    fn drop(&mut self) {
        let _ = self.returned.send(std::mem::take(&mut self.backends));
    }
}
