//! virtio-blk (virtio 1.x section 5.2; book chapter 5.1 is the guest side it
//! serves): a disk image or block device presented as a virtio block device.
//!
//! The device model is split like Firecracker's: this module holds the
//! device (features, configuration space, life cycle), [`request`] parses
//! descriptor chains, [`worker`] is the I/O thread that runs the queues, and
//! [`disk`] performs the I/O asynchronously with io_uring or a thread pool.

pub mod disk;
pub mod request;
pub mod worker;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::GuestMemoryMmap;

use crate::device::{read_config_bytes, ActivateError, ActiveQueue, DeviceStatusSink, VirtioDevice, VirtioInterrupt};
use disk::{DiskFile, EngineKind};

/// The virtio device ID of a block device.
/// (From virtio-bindings, re-exported under the name the device code uses.)
pub use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest single data segment the device accepts (size_max).
pub const SIZE_MAX: u32 = 1 << 20;
/// Most data segments in one request (seg_max): a queue's worth minus header and status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest discard or write-zeroes request, in sectors (32 MiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 16;

/// How a block device is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// The image or device.
    pub path: std::path::PathBuf,
    /// Refuse writes (VIRTIO_BLK_F_RO; the file is opened read-only).
    pub read_only: bool,
    /// Bypass the host page cache (O_DIRECT).
    pub direct: bool,
    /// The ID string returned by GET_ID (at most 20 bytes).
    pub serial: Option<String>,
    /// Number of request queues (VIRTIO_BLK_F_MQ when more than one).
    pub queues: u16,
    /// Which engine performs the I/O.
    pub engine: EngineKind,
}

/// Errors while creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image cannot be opened.
    #[error("cannot open disk {path}: {source}")]
    Open {
        /// The image.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The serial is longer than GET_ID can return.
    #[error("disk serial {0:?} is longer than 20 bytes")]
    SerialTooLong(String),
    /// Zero or too many queues.
    #[error("{0} queues requested; a disk has 1 to 64")]
    QueueCount(u16),
}

/// A virtio-blk device.
pub struct Block {
    disk: Arc<DiskFile>,
    config: BlockConfig,
    acked_features: u64,
    config_space: Vec<u8>,
    worker: Option<crate::worker::Worker>,
}

impl Block {
    /// Opens the disk and builds the device.
    pub fn new(config: BlockConfig) -> Result<Self, BlockError> {
        if config.serial.as_ref().is_some_and(|s| s.len() > request::VIRTIO_BLK_ID_BYTES) {
            return Err(BlockError::SerialTooLong(config.serial.clone().unwrap_or_default()));
        }
        if config.queues == 0 || config.queues > 64 {
            return Err(BlockError::QueueCount(config.queues));
        }
        let disk = DiskFile::open(&config.path, config.read_only, config.direct)
            .map_err(|source| BlockError::Open { path: config.path.clone(), source })?;
        let config_space = Self::config_space(&disk, config.queues);
        Ok(Block { disk: Arc::new(disk), config, acked_features: 0, config_space, worker: None })
    }

    /// The configuration space (struct virtio_blk_config, virtio 1.x 5.2.4).
    fn config_space(disk: &DiskFile, queues: u16) -> Vec<u8> {
        let mut c = vec![0u8; 60];
        c[0..8].copy_from_slice(&disk.capacity_sectors().to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&512u32.to_le_bytes()); // blk_size
                                                          // topology: physical_block_exp 3 (4 KiB physical blocks), alignment 0,
                                                          // min_io_size 1 block, opt_io_size 0 (none).
        c[24] = 3;
        c[26..28].copy_from_slice(&1u16.to_le_bytes());
        c[34..36].copy_from_slice(&queues.to_le_bytes()); // num_queues
        c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes()); // max_discard_sectors
        c[40..44].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
        c[44..48].copy_from_slice(&8u32.to_le_bytes()); // discard_sector_alignment (4 KiB)
        c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        c[52..56].copy_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
        c[56] = 1; // write_zeroes_may_unmap
        c
    }

    /// The disk's capacity in sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; usize::from(self.config.queues)]
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_TOPOLOGY)
            | (1 << VIRTIO_BLK_F_FLUSH);
        if self.config.queues > 1 {
            f |= 1 << VIRTIO_BLK_F_MQ;
        }
        if self.disk.read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `writeback` is writable, and only with VIRTIO_BLK_F_CONFIG_WCE, which
        // rvmm does not offer: the cache mode is always write-back with FLUSH.
        log::debug!("virtio-blk: ignoring a config write of {} bytes at {offset}", data.len());
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        status: Arc<dyn DeviceStatusSink>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        // Drivers may enable fewer queues than offered (Linux uses min(num_queues, CPUs)).
        if queues.is_empty() || queues.len() > usize::from(self.config.queues) {
            return Err(ActivateError::QueueCount { expected: usize::from(self.config.queues), got: queues.len() });
        }
        let engine = disk::create_engine(self.config.engine, &self.disk).map_err(ActivateError::Worker)?;
        let worker = worker::BlockWorker::new(
            memory,
            self.disk.clone(),
            engine,
            queues,
            interrupt,
            status,
            self.config.serial.clone().unwrap_or_default(),
        );
        self.worker = Some(worker.spawn().map_err(ActivateError::Worker)?);
        Ok(())
    }

    fn reset(&mut self) {
        // Dropping the worker stops its thread after the I/O in flight is done.
        self.worker = None;
        self.acked_features = 0;
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.reset();
    }
}
