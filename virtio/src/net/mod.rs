//! virtio-net (virtio 1.x section 5.1): an Ethernet device whose frames go to
//! a host tap interface (book chapter 6 builds the networks around it).
//!
//! Queues: receiveq/transmitq pairs (rx 2n, tx 2n+1), then the control queue.
//! [`tap`] is the backend, [`worker`] moves frames between the queues and it,
//! [`filter`] decides which received frames the guest asked for.

pub mod filter;
pub mod tap;
pub mod worker;

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use crate::device::{read_config_bytes, ActivateError, ActiveQueue, DeviceStatusSink, VirtioDevice, VirtioInterrupt};
use crate::worker::Worker;
use tap::{NetBackend, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO};

/// The virtio device ID of a network card.
/// (From virtio-bindings, re-exported under the name the device code uses.)
pub use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// The virtio-net header with num_buffers, which VERSION_1 always uses (5.1.6).
pub const VNET_HDR_LEN: usize = 12;
/// Most queue pairs rvmm offers.
pub const MAX_QUEUE_PAIRS: u16 = 16;

/// How a network device is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The MTU announced to the guest (VIRTIO_NET_F_MTU), if any.
    pub mtu: Option<u16>,
}

/// The device's current MAC address, shared between the device and its worker.
pub type SharedMac = Arc<Mutex<[u8; 6]>>;

/// A virtio-net device with one backend per queue pair.
pub struct Net {
    backends: Vec<Box<dyn NetBackend>>,
    config: NetConfig,
    /// The MAC in the configuration space: `config.mac` until the driver sets
    /// another with VIRTIO_NET_CTRL_MAC_ADDR_SET (shared with the worker,
    /// which handles the control queue), and again after a reset.
    mac: SharedMac,
    offered: u64,
    acked: u64,
    worker: Option<Worker>,
    /// The backends while a worker owns them are handed back at reset.
    returned: Option<std::sync::mpsc::Receiver<Vec<Box<dyn NetBackend>>>>,
}

/// Errors while creating a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No backend, or more queue pairs than supported.
    #[error("a network device needs 1 to {MAX_QUEUE_PAIRS} backends (queue pairs), got {0}")]
    QueuePairs(usize),
}

impl Net {
    /// A device over `backends` (one per queue pair).
    pub fn new(mut backends: Vec<Box<dyn NetBackend>>, config: NetConfig) -> Result<Self, NetError> {
        if backends.is_empty() || backends.len() > usize::from(MAX_QUEUE_PAIRS) {
            return Err(NetError::QueuePairs(backends.len()));
        }
        let mut offered = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_STATUS)
            | (1 << VIRTIO_NET_F_MRG_RXBUF)
            | (1 << VIRTIO_NET_F_CTRL_VQ)
            | (1 << VIRTIO_NET_F_CTRL_RX)
            | (1 << VIRTIO_NET_F_CTRL_RX_EXTRA)
            | (1 << VIRTIO_NET_F_CTRL_MAC_ADDR)
            // The tap takes checksum-offloaded and TSO frames from the guest.
            | (1 << VIRTIO_NET_F_CSUM)
            | (1 << VIRTIO_NET_F_HOST_TSO4)
            | (1 << VIRTIO_NET_F_HOST_TSO6)
            | (1 << VIRTIO_NET_F_HOST_ECN);
        // What the guest may receive depends on what the backend can hand it.
        if backends.iter_mut().all(|b| b.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN).is_ok()) {
            offered |= (1 << VIRTIO_NET_F_GUEST_CSUM)
                | (1 << VIRTIO_NET_F_GUEST_TSO4)
                | (1 << VIRTIO_NET_F_GUEST_TSO6)
                | (1 << VIRTIO_NET_F_GUEST_ECN);
        }
        // UFO only where the kernel still accepts it.
        if backends.iter_mut().all(|b| b.set_offload(TUN_F_CSUM | TUN_F_UFO).is_ok()) {
            offered |= (1 << VIRTIO_NET_F_GUEST_UFO) | (1 << VIRTIO_NET_F_HOST_UFO);
        }
        for b in &mut backends {
            let _ = b.set_offload(0);
        }
        if backends.len() > 1 {
            offered |= 1 << VIRTIO_NET_F_MQ;
        }
        if config.mtu.is_some() {
            offered |= 1 << VIRTIO_NET_F_MTU;
        }
        let mac = Arc::new(Mutex::new(config.mac));
        Ok(Net { backends, config, mac, offered, acked: 0, worker: None, returned: None })
    }

    fn max_pairs(&self) -> u16 {
        self.backends.len() as u16
    }

    /// The TUN_F_* offloads the acked features allow towards the guest.
    fn tap_offloads(features: u64) -> u32 {
        let has = |bit: u32| features & (1u64 << bit) != 0;
        let mut flags = 0;
        if has(VIRTIO_NET_F_GUEST_CSUM) {
            flags |= TUN_F_CSUM;
            if has(VIRTIO_NET_F_GUEST_TSO4) {
                flags |= TUN_F_TSO4;
            }
            if has(VIRTIO_NET_F_GUEST_TSO6) {
                flags |= TUN_F_TSO6;
            }
            if has(VIRTIO_NET_F_GUEST_ECN) {
                flags |= TUN_F_TSO_ECN;
            }
            if has(VIRTIO_NET_F_GUEST_UFO) {
                flags |= TUN_F_UFO;
            }
        }
        flags
    }

    fn config_space(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[0..6].copy_from_slice(&*self.mac.lock().unwrap_or_else(|e| e.into_inner()));
        // Link status: always up while the backend exists.
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&self.max_pairs().to_le_bytes());
        c[10..12].copy_from_slice(&self.config.mtu.unwrap_or(1500).to_le_bytes());
        c
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        // rx/tx for every pair, then the control queue.
        vec![QUEUE_SIZE; 2 * usize::from(self.max_pairs()) + 1]
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.offered;
        let flags = Self::tap_offloads(self.acked);
        for b in &mut self.backends {
            if let Err(e) = b.set_offload(flags) {
                log::warn!("virtio-net: cannot set tap offloads {flags:#x}: {e}");
            }
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC field is writable only for legacy drivers; virtio 1.x uses the control queue.
        log::debug!("virtio-net: ignoring a config write of {} bytes at {offset}", data.len());
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        status: Arc<dyn DeviceStatusSink>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let backends = std::mem::take(&mut self.backends);
        let fds: Vec<RawFd> = backends.iter().map(|b| b.as_raw_fd()).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let mq = self.acked & (1 << VIRTIO_NET_F_MQ) != 0;
        let ctrl_index = if mq { 2 * fds.len() as u16 } else { 2 };
        let mut polled: Vec<(RawFd, u64, EventSet)> =
            queues.iter().map(|q| (q.notify_fd(), u64::from(q.index), EventSet::IN)).collect();
        for (i, fd) in fds.iter().enumerate() {
            // Edge-triggered: rx stops reading the tap when the guest has no buffers
            // and resumes at the next kick instead of spinning.
            polled.push((*fd, worker::BACKEND_TOKEN_BASE + i as u64, EventSet::IN | EventSet::EDGE_TRIGGERED));
        }
        let mut w = worker::NetWorker::new(
            memory,
            backends,
            queues,
            ctrl_index,
            self.acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
            self.mac.clone(),
            interrupt,
            status,
            tx,
        );
        // A new worker has a new receive filter: promiscuous, empty tables, as
        // a reset requires.
        w.set_acked_features(self.acked);
        match Worker::spawn("virtio-net", polled, w) {
            Ok(worker) => {
                self.worker = Some(worker);
                self.returned = Some(rx);
                Ok(())
            }
            Err(e) => Err(ActivateError::Worker(e)),
        }
    }

    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
        // The worker hands its backends back when it ends.
        if let Some(rx) = self.returned.take() {
            if let Ok(backends) = rx.recv() {
                self.backends = backends;
            }
        }
        self.acked = 0;
        *self.mac.lock().unwrap_or_else(|e| e.into_inner()) = self.config.mac;
        for b in &mut self.backends {
            let _ = b.set_offload(0);
        }
    }
}

#[cfg(test)]
mod tests;
