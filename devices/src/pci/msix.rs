//! MSI-X: message-signalled interrupts with a per-vector table (book chapter 3.4).
//!
//! References: PCI Local Bus Specification 3.0, section 6.8.2 (MSI-X capability
//! and table structures), and the PCI Express Base Specification section on the
//! MSI-X capability (7.7.2 in 4.0 and later), which define:
//!
//! - the capability (ID 0x11): message control (table size N-1 in bits 10:0,
//!   function mask bit 14, enable bit 15), then two dwords each holding an 8-byte
//!   aligned offset with a BAR indicator (BIR) in bits 2:0, for the table and the
//!   pending bit array (PBA);
//! - the table, 16 bytes per vector in a memory BAR: message address low and
//!   high, message data, vector control (bit 0: mask; set after reset);
//! - the PBA, one bit per vector in 64-bit words, read-only.
//!
//! A vector is delivered only while MSI-X is enabled, the function is not masked
//! and the vector is not masked. An event on a masked vector sets its pending
//! bit instead; when the vector becomes deliverable again, the pending message is
//! sent and the bit cleared. Events while MSI-X is disabled are dropped without a
//! pending bit, as QEMU does: the function then signals through INTx (if enabled)
//! and [`MsixConfig::notify`] tells the device so.
//!
//! The VMM learns the message of every vector through [`MsiInterrupt::update`]
//! (with `None` while it cannot be delivered), so it can keep KVM's GSI routes in
//! sync and deliver through an irqfd on [`MsiInterrupt::trigger`].

use std::fmt;
use std::sync::Arc;

use crate::ratelimit::LogLimiter;

use super::configuration::{PciBarKind, PciConfiguration};
use super::PciError;

/// Capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Bytes per MSI-X table entry.
pub const MSIX_TABLE_ENTRY_SIZE: u64 = 16;
/// Largest number of vectors a function can have (an 11-bit table size field).
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Length of the capability body after its ID and next-pointer bytes.
pub const MSIX_CAP_BODY_LEN: usize = 10;

/// Message control bit 15: MSI-X enable.
pub const MSIX_MSG_CTL_ENABLE: u16 = 1 << 15;
/// Message control bit 14: function mask.
pub const MSIX_MSG_CTL_FUNCTION_MASK: u16 = 1 << 14;
const MSIX_MSG_CTL_TABLE_SIZE: u16 = 0x7ff;
/// Vector control bit 0: the vector is masked.
const VECTOR_CTL_MASKED: u32 = 1;
const BIR_MASK: u32 = 0x7;

/// One MSI message: a memory write of `data` to `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Message address (on x86, 0xFEExxxxx selects the destination LAPIC).
    pub address: u64,
    /// Message data (on x86, vector and delivery mode).
    pub data: u32,
}

/// The VMM's side of MSI-X delivery.
pub trait MsiInterrupt: Send + Sync {
    /// Vector `vector` now delivers `msg`, or cannot be delivered at all
    /// (`None`: masked, function-masked or MSI-X disabled). Called only on
    /// changes, before any [`trigger`](Self::trigger) that depends on them.
    fn update(&self, vector: u16, msg: Option<MsiMessage>);
    /// Sends the message last given for `vector` by [`update`](Self::update).
    fn trigger(&self, vector: u16);
}

/// What [`MsixConfig::notify`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixNotify {
    /// The message was sent.
    Delivered,
    /// The vector or the function is masked: the pending bit is set.
    Pending,
    /// MSI-X is disabled: nothing was recorded; the device should use INTx.
    Disabled,
    /// The vector number is beyond the table.
    InvalidVector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MsixEntry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    vector_ctl: u32,
}

impl MsixEntry {
    /// The state after reset: everything zero except the mask bit.
    const RESET: MsixEntry = MsixEntry { addr_lo: 0, addr_hi: 0, data: 0, vector_ctl: VECTOR_CTL_MASKED };

    fn masked(&self) -> bool {
        self.vector_ctl & VECTOR_CTL_MASKED != 0
    }

    fn message(&self) -> MsiMessage {
        MsiMessage { address: (u64::from(self.addr_hi) << 32) | u64::from(self.addr_lo), data: self.data }
    }

    fn dword(&self, index: u64) -> u32 {
        match index {
            0 => self.addr_lo,
            1 => self.addr_hi,
            2 => self.data,
            _ => self.vector_ctl,
        }
    }
}

/// The MSI-X state of one function: capability, vector table and PBA.
///
/// Set-up: create it with the table and PBA locations, declare the BARs on the
/// [`PciConfiguration`], then [`add_capability`](Self::add_capability). At run
/// time the device forwards accesses to the BARs (see
/// [`read_bar`](Self::read_bar)), calls [`config_written`](Self::config_written)
/// after every configuration write, and [`notify`](Self::notify) for each event.
pub struct MsixConfig {
    entries: Vec<MsixEntry>,
    pba: Vec<u64>,
    /// What `interrupt.update` was last told for each vector.
    routes: Vec<Option<MsiMessage>>,
    enabled: bool,
    function_masked: bool,
    table_bir: u8,
    table_offset: u32,
    pba_bir: u8,
    pba_offset: u32,
    cap_offset: Option<u16>,
    interrupt: Arc<dyn MsiInterrupt>,
    bad_access: LogLimiter,
}

impl fmt::Debug for MsixConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsixConfig")
            .field("vectors", &self.entries.len())
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .field("table", &(self.table_bir, self.table_offset))
            .field("pba", &(self.pba_bir, self.pba_offset))
            .field("cap_offset", &self.cap_offset)
            .finish_non_exhaustive()
    }
}

impl MsixConfig {
    /// MSI-X with `num_vectors` vectors (1-2048), its table at `table_offset` in
    /// BAR `table_bir` and its PBA at `pba_offset` in BAR `pba_bir` (BIRs 0-5,
    /// offsets 8-byte aligned, not overlapping when in the same BAR). Every
    /// vector starts masked and MSI-X disabled.
    pub fn new(
        num_vectors: u16,
        table_bir: u8,
        table_offset: u32,
        pba_bir: u8,
        pba_offset: u32,
        interrupt: Arc<dyn MsiInterrupt>,
    ) -> Result<Self, PciError> {
        if num_vectors == 0 || num_vectors > MSIX_MAX_VECTORS {
            return Err(PciError::MsixVectorCount(num_vectors));
        }
        for (bir, offset) in [(table_bir, table_offset), (pba_bir, pba_offset)] {
            if bir > 5 || offset % 8 != 0 {
                return Err(PciError::MsixLocation { bir, offset });
            }
        }
        let n = usize::from(num_vectors);
        let cfg = MsixConfig {
            entries: vec![MsixEntry::RESET; n],
            pba: vec![0; n.div_ceil(64)],
            routes: vec![None; n],
            enabled: false,
            function_masked: false,
            table_bir,
            table_offset,
            pba_bir,
            pba_offset,
            cap_offset: None,
            interrupt,
            bad_access: LogLimiter::new(),
        };
        if table_bir == pba_bir {
            let (t0, t1) = (u64::from(table_offset), u64::from(table_offset) + cfg.table_len());
            let (p0, p1) = (u64::from(pba_offset), u64::from(pba_offset) + cfg.pba_len());
            if t0 < p1 && p0 < t1 {
                return Err(PciError::MsixOverlap);
            }
        }
        Ok(cfg)
    }

    /// Number of vectors.
    pub fn num_vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// BAR holding the table.
    pub fn table_bir(&self) -> u8 {
        self.table_bir
    }

    /// Offset of the table in its BAR.
    pub fn table_offset(&self) -> u32 {
        self.table_offset
    }

    /// Length of the table in bytes (16 per vector).
    pub fn table_len(&self) -> u64 {
        self.entries.len() as u64 * MSIX_TABLE_ENTRY_SIZE
    }

    /// BAR holding the PBA.
    pub fn pba_bir(&self) -> u8 {
        self.pba_bir
    }

    /// Offset of the PBA in its BAR.
    pub fn pba_offset(&self) -> u32 {
        self.pba_offset
    }

    /// Length of the PBA in bytes (8 per 64 vectors).
    pub fn pba_len(&self) -> u64 {
        self.pba.len() as u64 * 8
    }

    /// Where [`add_capability`](Self::add_capability) put the capability.
    pub fn capability_offset(&self) -> Option<u16> {
        self.cap_offset
    }

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the guest set the function mask.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// The message control register as the capability holds it.
    pub fn message_control(&self) -> u16 {
        let mut ctl = (self.num_vectors() - 1) & MSIX_MSG_CTL_TABLE_SIZE;
        if self.enabled {
            ctl |= MSIX_MSG_CTL_ENABLE;
        }
        if self.function_masked {
            ctl |= MSIX_MSG_CTL_FUNCTION_MASK;
        }
        ctl
    }

    /// The capability after its ID and next-pointer bytes: message control,
    /// table offset/BIR, PBA offset/BIR.
    pub fn capability_body(&self) -> [u8; MSIX_CAP_BODY_LEN] {
        let mut body = [0; MSIX_CAP_BODY_LEN];
        body[0..2].copy_from_slice(&self.message_control().to_le_bytes());
        let table = self.table_offset | (u32::from(self.table_bir) & BIR_MASK);
        let pba = self.pba_offset | (u32::from(self.pba_bir) & BIR_MASK);
        body[2..6].copy_from_slice(&table.to_le_bytes());
        body[6..10].copy_from_slice(&pba.to_le_bytes());
        body
    }

    /// Which bits of [`capability_body`](Self::capability_body) a guest may
    /// write: the enable and function mask bits.
    pub fn capability_write_mask() -> [u8; MSIX_CAP_BODY_LEN] {
        let mut mask = [0; MSIX_CAP_BODY_LEN];
        mask[0..2].copy_from_slice(&(MSIX_MSG_CTL_ENABLE | MSIX_MSG_CTL_FUNCTION_MASK).to_le_bytes());
        mask
    }

    /// Checks that the table and PBA lie inside memory BARs of `config`, adds the
    /// capability to its list and returns the capability's offset (remembered for
    /// [`config_written`](Self::config_written)). Declare the BARs first.
    pub fn add_capability(&mut self, config: &mut PciConfiguration) -> Result<u16, PciError> {
        let structures =
            [(self.table_bir, self.table_offset, self.table_len()), (self.pba_bir, self.pba_offset, self.pba_len())];
        for (bir, offset, len) in structures {
            let fits = config
                .bar(usize::from(bir))
                .is_some_and(|bar| bar.kind != PciBarKind::Io && u64::from(offset) + len <= bar.size);
            if !fits {
                return Err(PciError::MsixBar { bir });
            }
        }
        let offset =
            config.add_capability_with_mask(&self.capability_body(), &Self::capability_write_mask(), MSIX_CAP_ID)?;
        self.cap_offset = Some(offset);
        Ok(offset)
    }

    /// Picks up the enable and function mask bits after a guest wrote `len` bytes
    /// at `offset` of `config` (the configuration this capability was added to).
    /// A device calls this from its [`super::PciDevice::write_config`] after
    /// applying the write; writes elsewhere are ignored.
    pub fn config_written(&mut self, config: &PciConfiguration, offset: u16, len: usize) {
        let Some(cap) = self.cap_offset else {
            return;
        };
        let ctl = usize::from(cap) + 2;
        let start = usize::from(offset);
        if start < ctl + 2 && ctl < start + len {
            self.set_message_control(config.read_u16(cap + 2));
        }
    }

    /// Applies a message control value (only bits 14 and 15 matter): updates
    /// every vector's route and delivers pending vectors that became
    /// deliverable.
    pub fn set_message_control(&mut self, ctl: u16) {
        let enabled = ctl & MSIX_MSG_CTL_ENABLE != 0;
        let function_masked = ctl & MSIX_MSG_CTL_FUNCTION_MASK != 0;
        if enabled == self.enabled && function_masked == self.function_masked {
            return;
        }
        log::debug!("msix: enable {enabled}, function mask {function_masked}");
        self.enabled = enabled;
        self.function_masked = function_masked;
        for vector in 0..self.entries.len() {
            self.sync_vector(vector);
        }
    }

    /// Whether vector `vector` has its own mask bit set (`true` for vectors
    /// beyond the table).
    pub fn vector_masked(&self, vector: u16) -> bool {
        self.entries.get(usize::from(vector)).is_none_or(MsixEntry::masked)
    }

    /// Whether vector `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        v < self.entries.len() && self.pba[v / 64] & (1 << (v % 64)) != 0
    }

    /// The message programmed for `vector`, masked or not.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        self.entries.get(usize::from(vector)).map(MsixEntry::message)
    }

    fn set_pending(&mut self, v: usize, pending: bool) {
        let bit = 1u64 << (v % 64);
        if pending {
            self.pba[v / 64] |= bit;
        } else {
            self.pba[v / 64] &= !bit;
        }
    }

    /// Brings the route of vector `v` in line with the state, then delivers it
    /// if it is pending and deliverable.
    fn sync_vector(&mut self, v: usize) {
        let entry = self.entries[v];
        let wanted = (self.enabled && !self.function_masked && !entry.masked()).then(|| entry.message());
        if self.routes[v] != wanted {
            self.routes[v] = wanted;
            self.interrupt.update(v as u16, wanted);
        }
        if wanted.is_some() && self.is_pending(v as u16) {
            self.set_pending(v, false);
            self.interrupt.trigger(v as u16);
        }
    }

    /// Signals an event on `vector`: delivered if MSI-X is enabled and neither the
    /// function nor the vector is masked, recorded in the PBA if masked, dropped
    /// if MSI-X is disabled. The device must not signal while bus mastering is
    /// disabled in its command register.
    pub fn notify(&mut self, vector: u16) -> MsixNotify {
        let v = usize::from(vector);
        let Some(entry) = self.entries.get(v) else {
            if let Some(n) = self.bad_access.tick() {
                log::warn!("msix: device notified vector {vector} beyond the table (#{n})");
            }
            return MsixNotify::InvalidVector;
        };
        if !self.enabled {
            return MsixNotify::Disabled;
        }
        if self.function_masked || entry.masked() {
            self.set_pending(v, true);
            return MsixNotify::Pending;
        }
        self.interrupt.trigger(vector);
        MsixNotify::Delivered
    }

    /// Returns the capability state to its reset value: disabled, unmasked
    /// function, every vector masked with zero address and data, nothing pending.
    /// Routes that were live are withdrawn with `update(None)`. The device resets
    /// the message control bits of its configuration space itself.
    pub fn reset(&mut self) {
        self.enabled = false;
        self.function_masked = false;
        self.entries.fill(MsixEntry::RESET);
        self.pba.fill(0);
        for v in 0..self.entries.len() {
            self.sync_vector(v);
        }
    }

    /// A guest read of the table at `offset` from the table's start. Any width
    /// and offset is answered byte by byte; bytes beyond the table read as 0xff.
    /// (The specification only defines aligned 4- and 8-byte accesses.)
    pub fn read_table(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() > 8 {
            self.log_bad_access("table read", offset, data.len());
            data.fill(0xff);
            return;
        }
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|o| {
                    let entry = self.entries.get(usize::try_from(o / 16).ok()?)?;
                    let dword = entry.dword((o % 16) / 4);
                    Some(dword.to_le_bytes()[(o % 4) as usize])
                })
                .unwrap_or(0xff);
        }
    }

    /// A guest write to the table at `offset` from the table's start: aligned
    /// 4-byte writes of one field or aligned 8-byte writes of two. Other widths
    /// and offsets beyond the table are ignored. Changes to a vector's mask,
    /// address or data update its route; unmasking a pending vector delivers it.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let aligned = match data.len() {
            4 => offset.is_multiple_of(4),
            8 => offset.is_multiple_of(8),
            _ => false,
        };
        let vector = usize::try_from(offset / 16).ok().filter(|&v| v < self.entries.len());
        let (true, Some(v)) = (aligned, vector) else {
            self.log_bad_access("table write", offset, data.len());
            return;
        };
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let entry = &mut self.entries[v];
            match (offset % 16) / 4 + i as u64 {
                0 => entry.addr_lo = value,
                1 => entry.addr_hi = value,
                2 => entry.data = value,
                _ => entry.vector_ctl = value & VECTOR_CTL_MASKED,
            }
        }
        self.sync_vector(v);
    }

    /// A guest read of the PBA at `offset` from its start: bit `n` of the array
    /// is vector `n`'s pending bit. Bytes beyond the PBA read as 0xff.
    pub fn read_pba(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() > 8 {
            self.log_bad_access("PBA read", offset, data.len());
            data.fill(0xff);
            return;
        }
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|o| {
                    let qword = self.pba.get(usize::try_from(o / 8).ok()?)?;
                    Some(qword.to_le_bytes()[(o % 8) as usize])
                })
                .unwrap_or(0xff);
        }
    }

    /// A guest write to the PBA: it is read-only, so the write is ignored.
    pub fn write_pba(&mut self, offset: u64, data: &[u8]) {
        self.log_bad_access("PBA write (read-only)", offset, data.len());
    }

    /// Serves a BAR read if it falls in the table or the PBA: `bar` and `offset`
    /// are as [`super::PciDevice::read_bar`] gets them. Returns whether it did.
    pub fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) -> bool {
        if let Some(o) = self.table_relative(bar, offset) {
            self.read_table(o, data);
        } else if let Some(o) = self.pba_relative(bar, offset) {
            self.read_pba(o, data);
        } else {
            return false;
        }
        true
    }

    /// Serves a BAR write if it falls in the table or the PBA; returns whether it did.
    pub fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) -> bool {
        if let Some(o) = self.table_relative(bar, offset) {
            self.write_table(o, data);
        } else if let Some(o) = self.pba_relative(bar, offset) {
            self.write_pba(o, data);
        } else {
            return false;
        }
        true
    }

    fn table_relative(&self, bar: u8, offset: u64) -> Option<u64> {
        let o = offset.checked_sub(u64::from(self.table_offset))?;
        (bar == self.table_bir && o < self.table_len()).then_some(o)
    }

    fn pba_relative(&self, bar: u8, offset: u64) -> Option<u64> {
        let o = offset.checked_sub(u64::from(self.pba_offset))?;
        (bar == self.pba_bir && o < self.pba_len()).then_some(o)
    }

    fn log_bad_access(&mut self, what: &str, offset: u64, len: usize) {
        if let Some(n) = self.bad_access.tick() {
            log::warn!("msix: ignoring {len}-byte {what} at offset {offset:#x} (#{n})");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::pci::configuration::{PciBar, PciIds};
    use crate::pci::{BarReprogram, PciDevice};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Ev {
        Update(u16, Option<MsiMessage>),
        Trigger(u16),
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Ev>>);

    impl Recorder {
        fn take(&self) -> Vec<Ev> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl MsiInterrupt for Recorder {
        fn update(&self, vector: u16, msg: Option<MsiMessage>) {
            self.0.lock().unwrap().push(Ev::Update(vector, msg));
        }
        fn trigger(&self, vector: u16) {
            self.0.lock().unwrap().push(Ev::Trigger(vector));
        }
    }

    /// A device with MSI-X in BAR 0: table at 0, PBA at 0x800.
    struct Dev {
        config: PciConfiguration,
        msix: MsixConfig,
    }

    impl Dev {
        fn new(vectors: u16) -> (Self, Arc<Recorder>) {
            let rec = Arc::new(Recorder::default());
            let mut config =
                PciConfiguration::new(&PciIds { vendor_id: 0x1af4, device_id: 0x1042, ..Default::default() });
            config
                .add_bar(0, PciBar { kind: PciBarKind::Mem64, size: 0x1_0000, prefetchable: false, addr: 0 })
                .unwrap();
            config.add_capability(&[0; 4], 0x09).unwrap();
            let mut msix = MsixConfig::new(vectors, 0, 0, 0, 0x8000, rec.clone()).unwrap();
            msix.add_capability(&mut config).unwrap();
            (Dev { config, msix }, rec)
        }

        fn ctl_offset(&self) -> u16 {
            self.msix.capability_offset().unwrap() + 2
        }

        fn set_ctl(&mut self, ctl: u16) {
            let off = self.ctl_offset();
            self.write_config(off, &ctl.to_le_bytes());
        }

        fn table_write32(&mut self, offset: u64, v: u32) {
            self.write_bar(0, offset, &v.to_le_bytes());
        }

        fn table_read32(&mut self, offset: u64) -> u32 {
            let mut d = [0; 4];
            self.read_bar(0, offset, &mut d);
            u32::from_le_bytes(d)
        }

        fn program(&mut self, v: u64, addr: u64, data: u32) {
            self.table_write32(v * 16, addr as u32);
            self.table_write32(v * 16 + 4, (addr >> 32) as u32);
            self.table_write32(v * 16 + 8, data);
        }

        fn mask(&mut self, v: u64, masked: bool) {
            self.table_write32(v * 16 + 12, masked as u32);
        }
    }

    impl PciDevice for Dev {
        fn config(&self) -> &PciConfiguration {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfiguration {
            &mut self.config
        }
        fn write_config(&mut self, offset: u16, data: &[u8]) -> Vec<BarReprogram> {
            let changes = self.config.write_config(offset, data);
            self.msix.config_written(&self.config, offset, data.len());
            changes
        }
        fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
            if !self.msix.read_bar(bar, offset, data) {
                data.fill(0xff);
            }
        }
        fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
            self.msix.write_bar(bar, offset, data);
        }
    }

    const MSG: MsiMessage = MsiMessage { address: 0xfee0_0000, data: 0x41 };

    #[test]
    fn capability_layout() {
        let (mut dev, _) = Dev::new(3);
        let cap = dev.msix.capability_offset().unwrap();
        assert_eq!(cap, 0x48);
        // Chained after the first capability.
        assert_eq!(dev.config.read_u8(0x41), 0x48);
        assert_eq!(dev.config.read_u8(cap), MSIX_CAP_ID);
        assert_eq!(dev.config.read_u8(cap + 1), 0);
        assert_eq!(dev.config.read_u16(cap + 2), 2); // N - 1
        assert_eq!(dev.config.read_u32(cap + 4), 0x0000_0000); // table: BAR 0 offset 0
        assert_eq!(dev.config.read_u32(cap + 8), 0x0000_8000); // PBA: BAR 0 offset 0x8000
                                                               // Only the enable and function mask bits are writable.
        dev.write_config(cap, &[0xff; 4]);
        dev.write_config(cap + 4, &[0xff; 4]);
        dev.write_config(cap + 8, &[0xff; 4]);
        assert_eq!(dev.config.read_u32(cap), 0xc002_0011);
        assert_eq!(dev.config.read_u32(cap + 4), 0);
        assert!(dev.msix.enabled() && dev.msix.function_masked());
        assert_eq!(dev.msix.message_control(), 0xc002);
        // A byte write to the high byte of message control works too.
        dev.write_config(cap + 3, &[0x80]);
        assert!(dev.msix.enabled() && !dev.msix.function_masked());
    }

    #[test]
    fn constructor_and_placement_checks() {
        let rec: Arc<dyn MsiInterrupt> = Arc::new(Recorder::default());
        let mk = |n, tb, to, pb, po| MsixConfig::new(n, tb, to, pb, po, rec.clone());
        assert_eq!(mk(0, 0, 0, 0, 0x800).err(), Some(PciError::MsixVectorCount(0)));
        assert_eq!(mk(2049, 0, 0, 0, 0x8000).err(), Some(PciError::MsixVectorCount(2049)));
        assert!(matches!(mk(1, 6, 0, 0, 0x800), Err(PciError::MsixLocation { .. })));
        assert!(matches!(mk(1, 0, 4, 0, 0x800), Err(PciError::MsixLocation { .. })));
        assert_eq!(mk(4, 0, 0, 0, 0x38).err(), Some(PciError::MsixOverlap));
        assert!(mk(4, 0, 0, 0, 0x40).is_ok());
        assert!(mk(4, 0, 0, 1, 0).is_ok());
        assert!(mk(2048, 2, 0, 2, 0x8000).is_ok());

        let mut config = PciConfiguration::new(&PciIds::default());
        let mut m = mk(4, 1, 0, 2, 0).unwrap();
        assert_eq!(m.add_capability(&mut config), Err(PciError::MsixBar { bir: 1 }));
        config.add_bar(1, PciBar { kind: PciBarKind::Io, size: 64, prefetchable: false, addr: 0 }).unwrap();
        assert_eq!(m.add_capability(&mut config), Err(PciError::MsixBar { bir: 1 }));
        let mut m = mk(64, 2, 0, 3, 0).unwrap();
        config
            .add_bar(
                2,
                PciBar {
                    kind: PciBarKind::Mem32,
                    size: 0x200, // 64 vectors need 0x400
                    prefetchable: false,
                    addr: 0,
                },
            )
            .unwrap();
        assert_eq!(m.add_capability(&mut config), Err(PciError::MsixBar { bir: 2 }));
        assert_eq!(m.capability_offset(), None);
    }

    #[test]
    fn table_writes_in_halves_and_quads() {
        let (mut dev, rec) = Dev::new(4);
        // Reset state: all masked, zero.
        assert_eq!(dev.table_read32(12), 1);
        assert_eq!(dev.table_read32(0), 0);
        dev.program(1, 0x1_fee0_1000, 0x4321);
        assert_eq!(dev.table_read32(16), 0xfee0_1000);
        assert_eq!(dev.table_read32(20), 1);
        assert_eq!(dev.table_read32(24), 0x4321);
        let mut q = [0; 8];
        dev.read_bar(0, 16, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x1_fee0_1000);
        // 64-bit write of data + vector control (unmask).
        dev.write_bar(0, 24, &(0x5555u64).to_le_bytes());
        assert_eq!(dev.table_read32(24), 0x5555);
        assert_eq!(dev.table_read32(28), 0);
        assert!(!dev.msix.vector_masked(1));
        // 64-bit write of the address.
        dev.write_bar(0, 32, &0x2_fee0_2000u64.to_le_bytes());
        assert_eq!(dev.msix.message(2).unwrap().address, 0x2_fee0_2000);
        // Reserved vector control bits read as 0.
        dev.table_write32(44, 0xffff_ffff);
        assert_eq!(dev.table_read32(44), 1);
        // Disabled: no routes were reported.
        assert!(rec.take().is_empty());
        // Misaligned or odd-width writes are ignored.
        dev.write_bar(0, 2, &[0xff; 4]);
        dev.write_bar(0, 4, &[0xff; 8]);
        dev.write_bar(0, 0, &[0xff; 2]);
        dev.write_bar(0, 0, &[0xff; 1]);
        assert_eq!(dev.msix.message(0), Some(MsiMessage::default()));
    }

    #[test]
    fn enable_gates_delivery_and_routes() {
        let (mut dev, rec) = Dev::new(2);
        dev.program(0, MSG.address, MSG.data);
        dev.mask(0, false);
        assert_eq!(dev.msix.notify(0), MsixNotify::Disabled);
        assert!(!dev.msix.is_pending(0));
        assert!(rec.take().is_empty());
        dev.set_ctl(MSIX_MSG_CTL_ENABLE);
        assert_eq!(rec.take(), vec![Ev::Update(0, Some(MSG))]);
        assert_eq!(dev.msix.notify(0), MsixNotify::Delivered);
        assert_eq!(rec.take(), vec![Ev::Trigger(0)]);
        // Vector 1 is still masked.
        assert_eq!(dev.msix.notify(1), MsixNotify::Pending);
        assert!(rec.take().is_empty());
        // Reprogramming an unmasked vector updates its route.
        dev.table_write32(8, 0x42);
        assert_eq!(rec.take(), vec![Ev::Update(0, Some(MsiMessage { data: 0x42, ..MSG }))]);
        // Disabling withdraws the route.
        dev.set_ctl(0);
        assert_eq!(rec.take(), vec![Ev::Update(0, None)]);
        assert_eq!(dev.msix.notify(0), MsixNotify::Disabled);
        assert_eq!(dev.msix.notify(7), MsixNotify::InvalidVector);
        // Writing the same control again reports nothing.
        dev.set_ctl(0);
        assert!(rec.take().is_empty());
    }

    #[test]
    fn vector_mask_pending_and_unmask_delivers() {
        let (mut dev, rec) = Dev::new(2);
        dev.set_ctl(MSIX_MSG_CTL_ENABLE);
        dev.program(1, MSG.address, MSG.data);
        assert!(rec.take().is_empty(), "masked vector has no route");
        assert_eq!(dev.msix.notify(1), MsixNotify::Pending);
        assert_eq!(dev.msix.notify(1), MsixNotify::Pending);
        assert!(dev.msix.is_pending(1));
        assert!(rec.take().is_empty());
        dev.mask(1, false);
        assert_eq!(rec.take(), vec![Ev::Update(1, Some(MSG)), Ev::Trigger(1)]);
        assert!(!dev.msix.is_pending(1));
        // Masking again withdraws the route; no spurious delivery on unmask.
        dev.mask(1, true);
        assert_eq!(rec.take(), vec![Ev::Update(1, None)]);
        dev.mask(1, false);
        assert_eq!(rec.take(), vec![Ev::Update(1, Some(MSG))]);
    }

    #[test]
    fn function_mask() {
        let (mut dev, rec) = Dev::new(3);
        for v in 0..3 {
            dev.program(v, MSG.address, MSG.data + v as u32);
            dev.mask(v, v == 2);
        }
        dev.set_ctl(MSIX_MSG_CTL_ENABLE | MSIX_MSG_CTL_FUNCTION_MASK);
        assert!(rec.take().is_empty());
        assert_eq!(dev.msix.notify(0), MsixNotify::Pending);
        assert_eq!(dev.msix.notify(2), MsixNotify::Pending);
        // Setting the function mask leaves the per-vector mask bits alone.
        assert!(!dev.msix.vector_masked(0) && dev.msix.vector_masked(2));
        dev.set_ctl(MSIX_MSG_CTL_ENABLE);
        let msg = |d| MsiMessage { data: MSG.data + d, ..MSG };
        assert_eq!(rec.take(), vec![Ev::Update(0, Some(msg(0))), Ev::Trigger(0), Ev::Update(1, Some(msg(1))),]);
        // Vector 2 stays pending until its own mask clears.
        assert!(dev.msix.is_pending(2) && !dev.msix.is_pending(0));
        dev.mask(2, false);
        assert_eq!(rec.take(), vec![Ev::Update(2, Some(msg(2))), Ev::Trigger(2)]);
        // Function mask withdraws every route.
        dev.set_ctl(MSIX_MSG_CTL_ENABLE | MSIX_MSG_CTL_FUNCTION_MASK);
        assert_eq!(rec.take(), vec![Ev::Update(0, None), Ev::Update(1, None), Ev::Update(2, None)]);
    }

    #[test]
    fn pba_reads_and_ignores_writes() {
        let (mut dev, _) = Dev::new(70);
        dev.set_ctl(MSIX_MSG_CTL_ENABLE);
        for v in [0u16, 3, 63, 64, 69] {
            assert_eq!(dev.msix.notify(v), MsixNotify::Pending);
        }
        let mut q = [0; 8];
        dev.read_bar(0, 0x8000, &mut q);
        assert_eq!(u64::from_le_bytes(q), (1 << 63) | (1 << 3) | 1);
        dev.read_bar(0, 0x8008, &mut q);
        assert_eq!(u64::from_le_bytes(q), (1 << 5) | 1);
        let mut d = [0; 4];
        dev.read_bar(0, 0x800c, &mut d);
        assert_eq!(d, [0; 4]);
        dev.read_bar(0, 0x8004, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1 << 31);
        // Beyond the PBA, the BAR is not MSI-X's.
        dev.read_bar(0, 0x8010, &mut d);
        assert_eq!(d, [0xff; 4]);
        // Writes change nothing.
        dev.write_bar(0, 0x8000, &[0; 8]);
        dev.write_bar(0, 0x8000, &[0xff; 4]);
        dev.read_bar(0, 0x8000, &mut q);
        assert_eq!(u64::from_le_bytes(q), (1 << 63) | (1 << 3) | 1);
        assert_eq!(dev.msix.pba_len(), 16);
    }

    #[test]
    fn out_of_range_table_accesses_are_safe() {
        let (mut dev, rec) = Dev::new(2);
        let mut d = [0; 4];
        dev.msix.read_table(32, &mut d);
        assert_eq!(d, [0xff; 4]);
        // A read straddling the end gets the in-range bytes.
        let mut q = [0; 8];
        dev.msix.read_table(28, &mut q);
        assert_eq!(q, [1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        for off in [32, 36, 48, u64::MAX - 3, u64::MAX - 7, 1 << 40] {
            dev.msix.write_table(off, &[0; 4]);
            dev.msix.write_table(off, &[0; 8]);
            dev.msix.read_table(off, &mut q);
            dev.msix.read_pba(off, &mut q);
            dev.msix.write_pba(off, &q);
            assert!(!dev.msix.read_bar(0, off, &mut d));
        }
        let mut big = [0; 16];
        dev.msix.read_table(0, &mut big);
        assert_eq!(big, [0xff; 16]);
        dev.msix.read_pba(0, &mut big);
        dev.msix.read_table(0, &mut []);
        dev.msix.write_table(0, &[]);
        assert!(rec.take().is_empty());
        // Other BARs are not MSI-X's.
        assert!(!dev.msix.read_bar(1, 0, &mut d));
        assert!(!dev.msix.write_bar(2, 0, &d));
    }

    #[test]
    fn reset_withdraws_routes() {
        let (mut dev, rec) = Dev::new(2);
        dev.set_ctl(MSIX_MSG_CTL_ENABLE);
        dev.program(0, MSG.address, MSG.data);
        dev.mask(0, false);
        dev.msix.notify(1);
        rec.take();
        dev.msix.reset();
        assert_eq!(rec.take(), vec![Ev::Update(0, None)]);
        assert!(!dev.msix.enabled());
        assert!(!dev.msix.is_pending(1));
        assert!(dev.msix.vector_masked(0));
        assert_eq!(dev.msix.message(0), Some(MsiMessage::default()));
    }
    #[test]
    fn random_table_pba_and_control_traffic_never_panics() {
        // Random table and PBA accesses of every width at every offset (in
        // range, straddling the end, far away), message control writes, and
        // the device notifying any vector: no panic; only vectors of the table
        // are ever updated or triggered; a notification is delivered exactly
        // when MSI-X is enabled and neither the function nor the vector is
        // masked, and otherwise left pending (while enabled).
        let vectors = 5u16;
        let (mut dev, rec) = Dev::new(vectors);
        let mut x: u64 = 0x5151_0000_0000_0001;
        let (mut delivered, mut pending) = (0u32, 0u32);
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let width = [0usize, 1, 2, 3, 4, 4, 4, 8, 8, 16][(x >> 8) as usize % 10];
            let offset = match (x >> 16) % 6 {
                0..=2 => (x >> 24) % (16 * u64::from(vectors) + 8),
                3 => 0x8000 + (x >> 24) % 16,
                4 => (x >> 24) % 0x1_0000,
                _ => u64::MAX - (x >> 24) % 16,
            };
            match x % 8 {
                0 | 1 => dev.read_bar((x >> 40) as u8 % 2, offset, &mut vec![0u8; width]),
                2..=4 => {
                    // Mostly clear the mask bit, so that vectors get unmasked.
                    let v = if x & (1 << 41) != 0 { x.rotate_left(7) } else { 0 };
                    dev.write_bar((x >> 40) as u8 % 2, offset, &v.to_le_bytes()[..width.min(8)]);
                }
                5 => {
                    let ctl =
                        [0, MSIX_MSG_CTL_ENABLE, MSIX_MSG_CTL_ENABLE | MSIX_MSG_CTL_FUNCTION_MASK, (x >> 24) as u16]
                            [(x >> 40) as usize % 4];
                    dev.set_ctl(ctl);
                }
                _ => {
                    let v = (x >> 24) as u16 % (vectors + 3);
                    let expect_delivery =
                        v < vectors && dev.msix.enabled() && !dev.msix.function_masked() && !dev.msix.vector_masked(v);
                    rec.take();
                    let r = dev.msix.notify(v);
                    let events = rec.take();
                    if expect_delivery {
                        assert_eq!(events, vec![Ev::Trigger(v)], "{r:?}");
                        delivered += 1;
                    } else {
                        assert!(events.is_empty(), "{events:?}");
                        if v < vectors && dev.msix.enabled() {
                            assert!(dev.msix.is_pending(v));
                            pending += 1;
                        }
                    }
                }
            }
            for e in rec.take() {
                let (Ev::Update(v, _) | Ev::Trigger(v)) = e;
                assert!(v < vectors, "{e:?}");
            }
        }
        assert!(delivered > 50 && pending > 50, "{delivered} {pending}");
    }
}
