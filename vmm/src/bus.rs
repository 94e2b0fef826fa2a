//! Port-I/O and MMIO address spaces (book chapter 1.3, "trap and emulate").
//!
//! When the guest touches an I/O port or an unbacked physical address, KVM exits
//! to the vCPU thread with the address and the bytes; the thread looks the
//! address up here and hands the access to the device that registered the
//! range. Lookups are a binary search in a sorted map under a read lock, so the
//! vCPU threads never serialize on the bus itself, only on the one device.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use devices::BusDevice;

use crate::stats::DeviceCounters;

/// A device shared between the bus and whoever else drives it (e.g. console input).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors when registering a device on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range intersects one already registered.
    #[error("{bus} range {start:#x}+{len:#x} overlaps the range {other_start:#x}+{other_len:#x} already registered")]
    Overlap {
        /// Which bus.
        bus: &'static str,
        /// Start of the rejected range.
        start: u64,
        /// Its length.
        len: u64,
        /// Start of the range it hits.
        other_start: u64,
        /// That range's length.
        other_len: u64,
    },
    /// A zero-length range or one that wraps around the address space.
    #[error("{bus} range {start:#x}+{len:#x} is empty or wraps around")]
    BadRange {
        /// Which bus.
        bus: &'static str,
        /// Start of the rejected range.
        start: u64,
        /// Its length.
        len: u64,
    },
}

struct Entry {
    len: u64,
    /// Offsets passed to the device are `address - offset_base`; usually the range start.
    offset_base: u64,
    device: SharedDevice,
    /// What the range is, for statistics and logs.
    name: Arc<str>,
    counters: Arc<DeviceCounters>,
}

/// One address space (port I/O or MMIO).
pub struct Bus {
    name: &'static str,
    ranges: RwLock<BTreeMap<u64, Entry>>,
    /// Addresses already reported as unhandled, so a guest that polls one does not flood the log.
    reported: Mutex<HashSet<u64>>,
}

impl Bus {
    /// An empty bus; `name` appears in log lines and errors ("pio", "mmio").
    pub fn new(name: &'static str) -> Self {
        Bus { name, ranges: RwLock::new(BTreeMap::new()), reported: Mutex::new(HashSet::new()) }
    }

    /// Registers `device`, called `name` in statistics, for `[start, start + len)`;
    /// offsets are relative to `start`.
    pub fn insert(&self, device: SharedDevice, start: u64, len: u64, name: &str) -> Result<(), BusError> {
        self.insert_named(device, start, len, start, name)
    }

    /// Registers `device` for `[start, start + len)` with offsets relative to
    /// `offset_base`, called `name` in statistics.
    ///
    /// The offset base lets one device own scattered ranges, e.g. the i8042 at
    /// ports 0x60 and 0x64, seeing offsets 0 and 4 without claiming 0x61-0x63.
    pub fn insert_named(
        &self,
        device: SharedDevice,
        start: u64,
        len: u64,
        offset_base: u64,
        name: &str,
    ) -> Result<(), BusError> {
        let end = start.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::BadRange { bus: self.name, start, len });
        };
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        // The only candidates for overlap are the last range starting before `end`.
        if let Some((&other_start, other)) = ranges.range(..end).next_back() {
            if other_start + other.len > start {
                return Err(BusError::Overlap { bus: self.name, start, len, other_start, other_len: other.len });
            }
        }
        let name: Arc<str> = Arc::from(name);
        ranges.insert(start, Entry { len, offset_base, device, name, counters: Arc::default() });
        Ok(())
    }

    /// Removes the range that starts at `start`, returning its device.
    pub fn remove(&self, start: u64) -> Option<SharedDevice> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        ranges.remove(&start).map(|e| e.device)
    }

    /// (name and range, reads, writes) of every registered range, for statistics.
    pub fn counters(&self) -> Vec<(String, u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        ranges
            .iter()
            .map(|(start, e)| {
                let label = format!("{} {} {:#x}-{:#x}", self.name, e.name, start, start + e.len - 1);
                (label, e.counters.reads.load(Relaxed), e.counters.writes.load(Relaxed))
            })
            .collect()
    }

    /// Finds the device for an access of `width` bytes at `addr` and counts the
    /// access while the range is in hand; only the device handle leaves the lock.
    fn lookup(&self, addr: u64, width: usize, write: bool) -> Option<(u64, SharedDevice)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&start, entry) = ranges.range(..=addr).next_back()?;
        // The whole access must fall inside the range.
        let last = addr.checked_add(width.max(1) as u64 - 1)?;
        if last >= start + entry.len {
            return None;
        }
        let counter = if write { &entry.counters.writes } else { &entry.counters.reads };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some((addr - entry.offset_base, entry.device.clone()))
    }

    /// Performs a guest read; unclaimed addresses read as all ones.
    /// Returns whether a device handled it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.lookup(addr, data.len(), false) {
            Some((offset, device)) => {
                device.lock().unwrap_or_else(|e| e.into_inner()).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                self.report_unhandled("read", addr, data.len());
                false
            }
        }
    }

    /// Performs a guest write; writes to unclaimed addresses are dropped.
    /// Returns whether a device handled it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.lookup(addr, data.len(), true) {
            Some((offset, device)) => {
                device.lock().unwrap_or_else(|e| e.into_inner()).write(offset, data);
                true
            }
            None => {
                self.report_unhandled("write", addr, data.len());
                false
            }
        }
    }

    fn report_unhandled(&self, what: &str, addr: u64, width: usize) {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded so a guest scanning the whole space cannot grow the set without limit.
        if reported.len() < 4096 && reported.insert(addr) {
            log::info!("{}: unhandled {what} of {width} bytes at {addr:#x} (reported once)", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let bus = Bus::new("pio");
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x3f8, 8, "test").unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(dev.lock().unwrap().writes, vec![(0, vec![0x41])]);
    }

    #[test]
    fn unclaimed_reads_are_all_ones() {
        let bus = Bus::new("pio");
        let mut b = [0u8; 4];
        assert!(!bus.read(0x80, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert!(!bus.write(0x80, &[1]));
    }

    #[test]
    fn overlaps_are_rejected() {
        let bus = Bus::new("mmio");
        let dev: SharedDevice = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x1000, 0x100, "test").unwrap();
        assert!(matches!(bus.insert(dev.clone(), 0x10ff, 1, "test"), Err(BusError::Overlap { .. })));
        assert!(matches!(bus.insert(dev.clone(), 0xf00, 0x101, "test"), Err(BusError::Overlap { .. })));
        assert!(matches!(bus.insert(dev.clone(), 0x1000, 0, "test"), Err(BusError::BadRange { .. })));
        assert!(matches!(bus.insert(dev.clone(), u64::MAX, 2, "test"), Err(BusError::BadRange { .. })));
        bus.insert(dev.clone(), 0x1100, 0x10, "test").unwrap();
        bus.insert(dev.clone(), 0xf00, 0x100, "test").unwrap();
        // A removed range frees its addresses, as when a guest moves a PCI BAR.
        assert!(bus.remove(0x1000).is_some());
        assert!(bus.remove(0x1000).is_none());
        let mut b = [0u8; 1];
        assert!(!bus.read(0x1000, &mut b));
        bus.insert(dev, 0x1000, 0x100, "test").unwrap();
    }

    #[test]
    fn access_straddling_the_end_is_unhandled() {
        let bus = Bus::new("mmio");
        let dev: SharedDevice = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev, 0x1000, 4, "test").unwrap();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x1002, &mut b));
        assert!(!bus.read(u64::MAX, &mut b));
    }

    #[test]
    fn offset_base_lets_one_device_own_scattered_ports() {
        let bus = Bus::new("pio");
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert_named(dev.clone(), 0x60, 1, 0x60, "i8042").unwrap();
        bus.insert_named(dev.clone(), 0x64, 1, 0x60, "i8042").unwrap();
        bus.write(0x64, &[0xfe]);
        assert_eq!(dev.lock().unwrap().writes, vec![(4, vec![0xfe])]);
        let mut b = [0u8; 1];
        assert!(!bus.read(0x61, &mut b));
    }
}
