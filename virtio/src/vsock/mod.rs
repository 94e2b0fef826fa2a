//! virtio-vsock (virtio 1.x section 5.10), the socket device, with a
//! user-space backend: guest `AF_VSOCK` stream connections to the host (CID 2)
//! end on host Unix sockets, after Firecracker's design; no vhost-vsock needed.
//!
//! | queue | name | direction |
//! |---|---|---|
//! | 0 | rx | host → guest packets, into buffers the guest posted |
//! | 1 | tx | guest → host packets |
//! | 2 | event | device events (none are sent: there is no migration) |
//!
//! Host side, for `Vsock::new(cid, "/path/v.sock")`:
//!
//! - a guest connecting to host port P reaches whoever listens on the Unix
//!   socket `/path/v.sock_P`; if nobody does, the guest's connect is refused
//!   (RST);
//! - a host program reaches guest port P by connecting to `/path/v.sock`
//!   (rvmm listens there) and writing `CONNECT P\n`; it reads
//!   `OK <host port>\n` once the guest accepted, then the socket is the
//!   stream. If the guest refuses, or does not answer within 2 s
//!   ([`muxer::CONN_REQUEST_TIMEOUT`]), the socket is closed;
//! - a connection whose both directions are shut but that does not finish
//!   (the host does not take the guest's last data, or the guest does not
//!   send its final RST) is reset after 2 s ([`muxer::CONN_SHUTDOWN_TIMEOUT`]).
//!
//! [`packet`] is the wire header, [`connection`] one connection's state and
//! flow control, [`muxer`] the I/O thread that moves packets between the
//! queues and the sockets.

#![warn(missing_docs)]

pub mod connection;
pub mod muxer;
pub mod packet;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::GuestMemoryMmap;

use crate::device::{read_config_bytes, ActivateError, ActiveQueue, DeviceStatusSink, VirtioDevice, VirtioInterrupt};
use crate::worker::Worker;
use muxer::VsockWorker;

/// The virtio device ID of a socket device.
/// (From virtio-bindings, re-exported under the name the device code uses.)
pub use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the rx queue (host to guest).
pub const RX_QUEUE: u16 = 0;
/// Index of the tx queue (guest to host).
pub const TX_QUEUE: u16 = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: u16 = 2;
/// The well-known CID of the host.
pub const HOST_CID: u64 = 2;
/// Most connections (and host clients still sending `CONNECT`) at once;
/// guest requests beyond it are refused with RST, host clients closed.
pub const MAX_CONNECTIONS: usize = 1024;

/// Errors while creating a socket device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0-2 and 0xffffffff are reserved, and the upper 32 bits are zero (5.10.4).
    #[error("guest CID {0} is reserved or too large (use 3 to 4294967294)")]
    InvalidCid(u64),
    /// Something else is at the socket path (a live socket or another file).
    #[error("{0} is in use")]
    InUse(PathBuf),
    /// Binding the listening socket failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What bind(2) or listen(2) said.
        source: std::io::Error,
    },
}

/// A virtio-vsock device backed by Unix sockets.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    /// Device and inode of the socket we bound, to remove only our own at the end.
    bound: (u64, u64),
    acked: u64,
    worker: Option<Worker>,
}

impl Vsock {
    /// A device giving the guest CID `guest_cid` and listening for host
    /// clients on the Unix socket `uds_path` (created now; a stale socket
    /// there that nobody listens on is replaced, and removed again when the
    /// device is dropped).
    pub fn new(guest_cid: u64, uds_path: impl AsRef<Path>) -> Result<Self, VsockError> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let uds_path = uds_path.as_ref().to_path_buf();
        if let Ok(meta) = std::fs::symlink_metadata(&uds_path) {
            let stale = meta.file_type().is_socket()
                && matches!(muxer::connect_nonblocking(&uds_path),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
            if !stale {
                return Err(VsockError::InUse(uds_path));
            }
            let _ = std::fs::remove_file(&uds_path);
        }
        let bind_err = |source| VsockError::Bind { path: uds_path.clone(), source };
        let listener = UnixListener::bind(&uds_path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let bound = std::fs::metadata(&uds_path).map(|m| (m.dev(), m.ino())).map_err(bind_err)?;
        Ok(Vsock { guest_cid, uds_path, listener, bound, acked: 0, worker: None })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The listening socket's path (guest ports are at `{path}_{port}`).
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        1u64 << VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!("virtio-vsock: ignoring a config write of {} bytes at {offset}", data.len());
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        status: Arc<dyn DeviceStatusSink>,
        mut queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        queues.sort_by_key(|q| q.index);
        if got != 3 || queues.iter().enumerate().any(|(i, q)| usize::from(q.index) != i) {
            return Err(ActivateError::QueueCount { expected: 3, got });
        }
        let event = queues.pop().expect("three queues");
        let tx = queues.pop().expect("three queues");
        let rx = queues.pop().expect("three queues");
        let listener = self.listener.try_clone().map_err(ActivateError::Worker)?;
        let w =
            VsockWorker::new(memory, rx, tx, event, self.guest_cid, self.uds_path.clone(), listener, interrupt, status)
                .map_err(ActivateError::Worker)?;
        let fds = w.polled_fds();
        self.worker = Some(Worker::spawn("virtio-vsock", fds, w).map_err(ActivateError::Worker)?);
        Ok(())
    }

    fn reset(&mut self) {
        // Dropping the worker closes every connection; clients waiting on the
        // listener stay queued for the next activation.
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
        self.acked = 0;
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.reset();
        if std::fs::metadata(&self.uds_path).is_ok_and(|m| (m.dev(), m.ino()) == self.bound) {
            let _ = std::fs::remove_file(&self.uds_path);
        }
    }
}

#[cfg(test)]
mod tests;
