//! virtio-pci, modern interface (virtio 1.x section 4.1), driven through the
//! `PciDevice` trait the way a driver reaches it: configuration space for
//! discovery (capability list, MSI-X enable, the PCI_CFG window) and BAR 0 for
//! the common configuration, ISR, device configuration, notifications and
//! MSI-X table.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use devices::pci::configuration::{
    CAPABILITIES_POINTER, COMMAND, COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE, STATUS, STATUS_CAPABILITIES_LIST,
};
use devices::pci::{MsiMessage, PciDevice};
use devices::RecordingIrqLine;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::queue::test_utils::{guest_memory, MockDriver, XorShift};
use crate::transport::pci::{VirtioPciDevice, VIRTIO_MSI_NO_VECTOR};

// struct virtio_pci_common_cfg (4.1.4.3).
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

// virtio_pci_cap.cfg_type (4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
const PCI_CAP_ID_VNDR: u8 = 0x09;
const PCI_CAP_ID_MSIX: u8 = 0x11;

const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

const MSG: MsiMessage = MsiMessage { address: 0xfee0_0000, data: 0x4041 };

/// One `struct virtio_pci_cap` as read from configuration space.
#[derive(Debug, Clone, Copy, Default)]
struct VirtioCap {
    pos: u16,
    cap_len: u8,
    bar: u8,
    offset: u32,
    length: u32,
}

/// What the capability walk found.
#[derive(Debug, Default)]
struct Caps {
    common: VirtioCap,
    notify: VirtioCap,
    notify_off_multiplier: u32,
    isr: VirtioCap,
    device: VirtioCap,
    pci_cfg: VirtioCap,
    msix: u16,
}

/// A driver's view of one virtio-pci function.
struct Pci {
    dev: VirtioPciDevice,
    state: Shared,
    msi: Arc<RecordingMsi>,
    intx: Arc<RecordingIrqLine>,
    mem: GuestMemoryMmap,
    caps: Caps,
}

fn new_device() -> (VirtioPciDevice, Shared, Arc<RecordingMsi>, Arc<RecordingIrqLine>, GuestMemoryMmap) {
    let (device, state) = FakeDevice::new(2);
    let mem = guest_memory(MEM_SIZE);
    let msi = Arc::new(RecordingMsi::default());
    let intx = Arc::new(RecordingIrqLine::default());
    let dev = VirtioPciDevice::new(device, mem.clone(), msi.clone(), intx.clone(), 10, 0).unwrap();
    (dev, state, msi, intx, mem)
}

impl Pci {
    fn new() -> Self {
        let (dev, state, msi, intx, mem) = new_device();
        let mut p = Pci { dev, state, msi, intx, mem, caps: Caps::default() };
        p.caps = p.find_caps();
        // As firmware and the driver leave it: memory decoding and bus mastering.
        p.cfg_write(COMMAND, 2, u32::from(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER));
        p
    }

    fn cfg_read(&mut self, offset: u16, len: usize) -> u32 {
        let mut d = [0u8; 4];
        self.dev.read_config(offset, &mut d[..len]);
        u32::from_le_bytes(d)
    }

    fn cfg8(&mut self, offset: u16) -> u8 {
        self.cfg_read(offset, 1) as u8
    }

    fn cfg16(&mut self, offset: u16) -> u16 {
        self.cfg_read(offset, 2) as u16
    }

    fn cfg32(&mut self, offset: u16) -> u32 {
        self.cfg_read(offset, 4)
    }

    fn cfg_write(&mut self, offset: u16, len: usize, v: u32) {
        self.dev.write_config(offset, &v.to_le_bytes()[..len]);
    }

    /// Walks the capability list from 0x34 (PCI 3.0 6.7), checking it is well formed.
    fn walk(&mut self) -> Vec<(u16, u8)> {
        assert_ne!(self.cfg16(STATUS) & STATUS_CAPABILITIES_LIST, 0);
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let mut ptr = u16::from(self.cfg8(CAPABILITIES_POINTER) & !3);
        while ptr != 0 {
            assert!((0x40..0x100).contains(&ptr), "capability at {ptr:#x}");
            assert!(seen.insert(ptr), "capability loop at {ptr:#x}");
            out.push((ptr, self.cfg8(ptr)));
            ptr = u16::from(self.cfg8(ptr + 1) & !3);
        }
        out
    }

    fn read_virtio_cap(&mut self, pos: u16) -> VirtioCap {
        VirtioCap {
            pos,
            cap_len: self.cfg8(pos + 2),
            bar: self.cfg8(pos + 4),
            offset: self.cfg32(pos + 8),
            length: self.cfg32(pos + 12),
        }
    }

    /// Finds the structures as Linux's virtio_pci_find_capability does: the
    /// first vendor capability of each type.
    fn find_caps(&mut self) -> Caps {
        let mut caps = Caps::default();
        let mut found = BTreeSet::new();
        for (pos, id) in self.walk() {
            match id {
                PCI_CAP_ID_VNDR => {
                    let ty = self.cfg8(pos + 3);
                    if !found.insert(ty) {
                        continue;
                    }
                    let cap = self.read_virtio_cap(pos);
                    match ty {
                        CAP_COMMON => caps.common = cap,
                        CAP_NOTIFY => {
                            caps.notify = cap;
                            caps.notify_off_multiplier = self.cfg32(pos + 16);
                        }
                        CAP_ISR => caps.isr = cap,
                        CAP_DEVICE => caps.device = cap,
                        CAP_PCI_CFG => caps.pci_cfg = cap,
                        _ => {}
                    }
                }
                PCI_CAP_ID_MSIX => caps.msix = pos,
                _ => {}
            }
        }
        for ty in [CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE, CAP_PCI_CFG] {
            assert!(found.contains(&ty), "no virtio capability of type {ty}");
        }
        assert_ne!(caps.msix, 0, "no MSI-X capability");
        caps
    }

    fn bar_read(&mut self, offset: u64, len: usize) -> u64 {
        let mut d = [0u8; 8];
        self.dev.read_bar(0, offset, &mut d[..len]);
        u64::from_le_bytes(d)
    }

    fn bar_write(&mut self, offset: u64, len: usize, v: u64) {
        self.dev.write_bar(0, offset, &v.to_le_bytes()[..len]);
    }

    fn common_read(&mut self, field: u64, len: usize) -> u64 {
        let base = u64::from(self.caps.common.offset);
        self.bar_read(base + field, len)
    }

    fn common_write(&mut self, field: u64, len: usize, v: u64) {
        let base = u64::from(self.caps.common.offset);
        self.bar_write(base + field, len, v)
    }

    fn status(&mut self) -> u8 {
        self.common_read(DEVICE_STATUS, 1) as u8
    }

    fn add_status(&mut self, bits: u8) {
        let s = self.status();
        self.common_write(DEVICE_STATUS, 1, u64::from(s | bits));
    }

    fn isr(&mut self) -> u8 {
        let off = u64::from(self.caps.isr.offset);
        self.bar_read(off, 1) as u8
    }

    fn device_features(&mut self) -> u64 {
        self.common_write(DEVICE_FEATURE_SELECT, 4, 0);
        let lo = self.common_read(DEVICE_FEATURE, 4);
        self.common_write(DEVICE_FEATURE_SELECT, 4, 1);
        let hi = self.common_read(DEVICE_FEATURE, 4);
        lo | (hi << 32)
    }

    fn write_driver_features(&mut self, f: u64) {
        self.common_write(DRIVER_FEATURE_SELECT, 4, 0);
        self.common_write(DRIVER_FEATURE, 4, f & 0xffff_ffff);
        self.common_write(DRIVER_FEATURE_SELECT, 4, 1);
        self.common_write(DRIVER_FEATURE, 4, f >> 32);
    }

    fn negotiate(&mut self, features: u64) -> bool {
        self.common_write(DEVICE_STATUS, 1, 0);
        assert_eq!(self.status(), 0);
        self.add_status(ACKNOWLEDGE);
        self.add_status(DRIVER);
        self.write_driver_features(features);
        self.add_status(FEATURES_OK);
        self.status() & FEATURES_OK != 0
    }

    fn driver(&self, index: usize, size: u16) -> MockDriver {
        MockDriver::new(&self.mem, GuestAddress(queue_base(index)), size)
    }

    /// Queue set-up of 4.1.5.1.3 (vector optional).
    fn setup_queue(&mut self, index: u16, d: &MockDriver, vector: Option<u16>) {
        self.common_write(QUEUE_SELECT, 2, u64::from(index));
        assert!(self.common_read(QUEUE_SIZE, 2) as u16 >= d.size());
        assert_eq!(self.common_read(QUEUE_ENABLE, 2), 0);
        self.common_write(QUEUE_SIZE, 2, u64::from(d.size()));
        if let Some(v) = vector {
            self.common_write(QUEUE_MSIX_VECTOR, 2, u64::from(v));
            assert_eq!(self.common_read(QUEUE_MSIX_VECTOR, 2) as u16, v);
        }
        self.common_write(QUEUE_DESC, 8, d.desc_table());
        self.common_write(QUEUE_DRIVER, 8, d.avail_ring());
        self.common_write(QUEUE_DEVICE, 8, d.used_ring());
        self.common_write(QUEUE_ENABLE, 2, 1);
        assert_eq!(self.common_read(QUEUE_ENABLE, 2), 1);
    }

    fn bring_up(&mut self, features: u64, queues: &[usize], vectors: bool) -> Vec<MockDriver> {
        assert!(self.negotiate(features));
        if vectors {
            self.common_write(CONFIG_MSIX_VECTOR, 2, 0);
            assert_eq!(self.common_read(CONFIG_MSIX_VECTOR, 2), 0);
        }
        let drivers: Vec<MockDriver> = queues.iter().map(|&q| self.driver(q, QUEUE_SIZES[q])).collect();
        for (&q, d) in queues.iter().zip(&drivers) {
            self.setup_queue(q as u16, d, vectors.then_some(q as u16 + 1));
        }
        self.add_status(DRIVER_OK);
        drivers
    }

    /// The address in BAR 0 where queue `index` is notified (4.1.4.4).
    fn notify_addr(&mut self, index: u16) -> u64 {
        self.common_write(QUEUE_SELECT, 2, u64::from(index));
        let off = self.common_read(QUEUE_NOTIFY_OFF, 2);
        u64::from(self.caps.notify.offset) + off * u64::from(self.caps.notify_off_multiplier)
    }

    fn enable_msix(&mut self, enable: bool) {
        let ctl = self.caps.msix + 2;
        let v = self.cfg16(ctl);
        let v = if enable { v | 0x8000 } else { v & !0x8000 };
        self.cfg_write(ctl, 2, u32::from(v));
    }

    /// Programs and unmasks MSI-X table entry `vector`.
    fn program_vector(&mut self, vector: u16, msg: MsiMessage) {
        let table = self.cfg32(self.caps.msix + 4);
        assert_eq!(table & 7, 0, "table in BAR 0");
        let entry = u64::from(table & !7) + 16 * u64::from(vector);
        self.bar_write(entry, 4, msg.address & 0xffff_ffff);
        self.bar_write(entry + 4, 4, msg.address >> 32);
        self.bar_write(entry + 8, 4, u64::from(msg.data));
        self.bar_write(entry + 12, 4, 0);
    }

    /// Programs every vector (config and one per queue) with MSG's address and
    /// data MSG.data + vector, enables MSI-X and returns the vector count.
    fn program_all_vectors_and_enable(&mut self) -> u16 {
        let vectors = QUEUE_SIZES.len() as u16 + 1;
        for v in 0..vectors {
            self.program_vector(v, MsiMessage { data: MSG.data + u32::from(v), ..MSG });
        }
        self.enable_msix(true);
        vectors
    }

    fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        lock(&self.state).interrupt.clone().expect("not activated")
    }

    fn activations(&self) -> usize {
        lock(&self.state).activations.len()
    }

    /// Points the VIRTIO_PCI_CAP_PCI_CFG window at `bar`/`offset`/`length` (4.1.4.9).
    fn window(&mut self, bar: u8, offset: u32, length: u32) {
        let pos = self.caps.pci_cfg.pos;
        self.cfg_write(pos + 4, 1, u32::from(bar));
        self.cfg_write(pos + 8, 4, offset);
        self.cfg_write(pos + 12, 4, length);
    }

    fn window_read(&mut self, len: usize) -> u32 {
        let pos = self.caps.pci_cfg.pos;
        self.cfg_read(pos + 16, len)
    }

    fn window_write(&mut self, len: usize, v: u32) {
        let pos = self.caps.pci_cfg.pos;
        self.cfg_write(pos + 16, len, v)
    }
}

#[test]
fn identity_of_a_modern_block_device() {
    let mut p = Pci::new();
    assert_eq!(p.cfg16(0x00), 0x1af4, "vendor (4.1.2.1)");
    assert_eq!(p.cfg16(0x02), 0x1040 + 2, "device: 0x1040 + virtio ID (4.1.2.1)");
    assert!(p.cfg8(0x08) >= 1, "non-transitional devices have revision >= 1");
    assert_eq!(p.cfg16(0x2c), 0x1af4);
    assert!(p.cfg16(0x2e) >= 0x40, "subsystem ID >= 0x40 (4.1.2.1)");
    assert_eq!(p.cfg8(0x0b), 0x01, "mass storage class");
    assert_eq!(p.cfg8(0x0e) & 0x7f, 0, "header type 0");
    assert_eq!(p.cfg8(0x3d), 1, "INTA#");
    assert_eq!(p.cfg8(0x3c), 10, "interrupt line = the GSI");
    // BAR 0: 64-bit memory, sized 32 KiB by the usual protocol.
    let bar0 = p.cfg32(0x10);
    assert_eq!(bar0 & 0x7, 0x4, "64-bit memory BAR");
    p.cfg_write(0x10, 4, u32::MAX);
    p.cfg_write(0x14, 4, u32::MAX);
    let size = !(u64::from(p.cfg32(0x10) & !0xf) | (u64::from(p.cfg32(0x14)) << 32)) + 1;
    assert_eq!(size, 0x8000);
    // The ID registers are read-only.
    p.cfg_write(0x00, 4, 0);
    p.cfg_write(0x08, 4, 0);
    assert_eq!(p.cfg32(0x00), 0x1042_1af4);
    assert!(p.cfg8(0x08) >= 1);
}

#[test]
fn capability_list_describes_every_structure() {
    let mut p = Pci::new();
    let list = p.walk();
    let ids: Vec<u8> = list.iter().map(|&(_, id)| id).collect();
    assert_eq!(ids.iter().filter(|&&id| id == PCI_CAP_ID_VNDR).count(), 5);
    assert_eq!(ids.iter().filter(|&&id| id == PCI_CAP_ID_MSIX).count(), 1);
    let c = &p.caps;
    let num_queues = QUEUE_SIZES.len() as u32;

    // Every structure is in BAR 0 (the only BAR), inside it, with cap_len
    // covering the structure (4.1.4.1).
    for cap in [c.common, c.notify, c.isr, c.device] {
        assert_eq!(cap.bar, 0, "{cap:?}");
        assert!(u64::from(cap.offset) + u64::from(cap.length) <= 0x8000, "{cap:?}");
        assert!(cap.cap_len >= 16, "{cap:?}");
    }
    // Common configuration: at least the 1.0 layout (0x38 bytes).
    assert!(c.common.length >= 0x38);
    // Notifications: cap_len covers notify_off_multiplier; the multiplier is
    // an even power of two or 0, and the region reaches every queue's
    // notify address plus 2 bytes (4.1.4.4.1).
    assert!(c.notify.cap_len >= 20);
    let m = c.notify_off_multiplier;
    assert!(m == 0 || (m.is_power_of_two() && m.trailing_zeros() % 2 == 0), "multiplier {m}");
    assert_eq!(c.notify.offset % 2, 0);
    let notify_len = c.notify.length;
    for q in 0..num_queues as u16 {
        let off = {
            p.common_write(QUEUE_SELECT, 2, u64::from(q));
            p.common_read(QUEUE_NOTIFY_OFF, 2) as u32
        };
        assert!(off * m + 2 <= notify_len, "queue {q}: notify_off {off}");
    }
    let c = &p.caps;
    assert!(c.isr.length >= 1);
    assert!(c.device.length >= CONFIG.len() as u32);
    // PCI_CFG: cap_len covers pci_cfg_data (4.1.4.9).
    assert!(c.pci_cfg.cap_len >= 20);

    // MSI-X: one vector per queue plus one for configuration changes, table
    // and PBA in BAR 0, disabled at first.
    let msix = c.msix;
    let ctl = p.cfg16(msix + 2);
    assert_eq!(ctl & 0x7ff, num_queues as u16, "table size N-1");
    assert_eq!(ctl & 0xc000, 0);
    let table = p.cfg32(msix + 4);
    let pba = p.cfg32(msix + 8);
    assert_eq!((table & 7, pba & 7), (0, 0));
    assert!(u64::from(table & !7) + 16 * u64::from(num_queues + 1) <= 0x8000);
    assert!(u64::from(pba & !7) + 8 <= 0x8000);
    // No structure overlaps another in BAR 0.
    let c = &p.caps;
    let mut regions = vec![
        (u64::from(c.common.offset), u64::from(c.common.length)),
        (u64::from(c.notify.offset), u64::from(c.notify.length)),
        (u64::from(c.isr.offset), u64::from(c.isr.length)),
        (u64::from(c.device.offset), u64::from(c.device.length)),
        (u64::from(table & !7), 16 * u64::from(num_queues + 1)),
        (u64::from(pba & !7), 8),
    ];
    regions.sort();
    for w in regions.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "{:x?} overlaps {:x?}", w[0], w[1]);
    }
}

#[test]
fn capabilities_are_read_only_except_the_pci_cfg_window() {
    let mut p = Pci::new();
    let before: Vec<u32> = (0x34..0x100).step_by(4).map(|o| p.cfg32(o)).collect();
    for (pos, _) in p.walk() {
        for o in (pos..pos + 16).step_by(4) {
            if pos == p.caps.pci_cfg.pos || o == p.caps.msix {
                continue;
            }
            p.cfg_write(o, 4, 0xa5a5_a5a5);
        }
    }
    let after: Vec<u32> = (0x34..0x100).step_by(4).map(|o| p.cfg32(o)).collect();
    assert_eq!(before, after);
    assert_eq!(p.find_caps().common.offset, p.caps.common.offset);
}

#[test]
fn common_config_features() {
    let mut p = Pci::new();
    assert_eq!(p.device_features(), OFFERED);
    p.common_write(DEVICE_FEATURE_SELECT, 4, 1);
    assert_eq!(p.common_read(DEVICE_FEATURE_SELECT, 4), 1);
    assert_eq!(p.common_read(DEVICE_FEATURE, 4), OFFERED >> 32);
    for sel in [2u64, 0xffff_ffff] {
        p.common_write(DEVICE_FEATURE_SELECT, 4, sel);
        assert_eq!(p.common_read(DEVICE_FEATURE, 4), 0);
    }
    // device_feature is read-only.
    p.common_write(DEVICE_FEATURE_SELECT, 4, 0);
    p.common_write(DEVICE_FEATURE, 4, 0);
    assert_eq!(p.common_read(DEVICE_FEATURE, 4), OFFERED & 0xffff_ffff);
    // driver_feature reads back per window.
    p.write_driver_features(F_VERSION_1 | F_DEV_1);
    p.common_write(DRIVER_FEATURE_SELECT, 4, 0);
    assert_eq!(p.common_read(DRIVER_FEATURE, 4), F_DEV_1);
    p.common_write(DRIVER_FEATURE_SELECT, 4, 1);
    assert_eq!(p.common_read(DRIVER_FEATURE_SELECT, 4), 1);
    assert_eq!(p.common_read(DRIVER_FEATURE, 4), 1);
    // num_queues is read-only.
    assert_eq!(p.common_read(NUM_QUEUES, 2), QUEUE_SIZES.len() as u64);
    p.common_write(NUM_QUEUES, 2, 7);
    assert_eq!(p.common_read(NUM_QUEUES, 2), QUEUE_SIZES.len() as u64);
    assert_eq!(p.common_read(CONFIG_GENERATION, 1), 0);
}

#[test]
fn features_ok_rules() {
    let mut p = Pci::new();
    assert!(!p.negotiate(F_DEV_1), "no VERSION_1");
    assert_eq!(p.status(), ACKNOWLEDGE | DRIVER);
    assert!(!p.negotiate(F_VERSION_1 | (1 << 40)), "not offered");
    assert_eq!(p.status(), ACKNOWLEDGE | DRIVER);
    assert!(lock(&p.state).acked.is_empty());
    assert!(p.negotiate(F_VERSION_1 | F_IN_ORDER | F_DEV_5));
    assert_eq!(lock(&p.state).acked, vec![F_VERSION_1 | F_IN_ORDER | F_DEV_5]);
    // Frozen after FEATURES_OK.
    p.write_driver_features(OFFERED);
    p.common_write(DRIVER_FEATURE_SELECT, 4, 0);
    assert_eq!(p.common_read(DRIVER_FEATURE, 4), F_DEV_5);
}

#[test]
fn queue_selection_and_sizes() {
    let mut p = Pci::new();
    for (i, &max) in QUEUE_SIZES.iter().enumerate() {
        p.common_write(QUEUE_SELECT, 2, i as u64);
        assert_eq!(p.common_read(QUEUE_SELECT, 2), i as u64);
        assert_eq!(p.common_read(QUEUE_SIZE, 2), u64::from(max), "max size on reset");
        assert_eq!(p.common_read(QUEUE_ENABLE, 2), 0);
        assert_eq!(p.common_read(QUEUE_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
        assert_eq!(p.common_read(QUEUE_DESC, 8), 0);
    }
    // The driver may shrink a queue.
    p.common_write(QUEUE_SELECT, 2, 0);
    p.common_write(QUEUE_SIZE, 2, 4);
    assert_eq!(p.common_read(QUEUE_SIZE, 2), 4);
    p.common_write(QUEUE_SELECT, 2, 1);
    assert_eq!(p.common_read(QUEUE_SIZE, 2), u64::from(QUEUE_SIZES[1]));
    // An unavailable queue reads queue_size 0 (4.1.4.3.1), and takes no writes.
    for sel in [3u64, 0x7fff, 0xffff] {
        p.common_write(QUEUE_SELECT, 2, sel);
        assert_eq!(p.common_read(QUEUE_SELECT, 2), sel);
        assert_eq!(p.common_read(QUEUE_SIZE, 2), 0);
        p.common_write(QUEUE_SIZE, 2, 2);
        p.common_write(QUEUE_ENABLE, 2, 1);
        p.common_write(QUEUE_MSIX_VECTOR, 2, 1);
        assert_eq!(p.common_read(QUEUE_SIZE, 2), 0);
        assert_eq!(p.common_read(QUEUE_ENABLE, 2), 0);
    }
    // queue_enable: writing 0 is ignored (the driver must not, 4.1.4.3.2).
    p.common_write(QUEUE_SELECT, 2, 2);
    p.common_write(QUEUE_ENABLE, 2, 1);
    p.common_write(QUEUE_ENABLE, 2, 0);
    assert_eq!(p.common_read(QUEUE_ENABLE, 2), 1);
    // queue_notify_off is read-only and distinct per queue here.
    let offs: BTreeSet<u64> = (0..3)
        .map(|q| {
            p.common_write(QUEUE_SELECT, 2, q);
            p.common_write(QUEUE_NOTIFY_OFF, 2, 9);
            p.common_read(QUEUE_NOTIFY_OFF, 2)
        })
        .collect();
    assert_eq!(offs.len(), 3);
}

#[test]
fn queue_addresses_in_halves_either_order_and_whole() {
    let mut p = Pci::new();
    p.common_write(QUEUE_SELECT, 2, 1);
    let fields = [QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE];
    for (n, &f) in fields.iter().enumerate() {
        let a = 0x1234_5678_9abc_def0u64 + n as u64 * 0x10;
        // Low then high.
        p.common_write(f, 4, a & 0xffff_ffff);
        p.common_write(f + 4, 4, a >> 32);
        assert_eq!(p.common_read(f, 8), a, "field {f:#x} lo/hi");
        assert_eq!(p.common_read(f, 4), a & 0xffff_ffff);
        assert_eq!(p.common_read(f + 4, 4), a >> 32);
        // High then low.
        let b = 0x0000_0001_0000_2000u64 + n as u64 * 0x100;
        p.common_write(f + 4, 4, b >> 32);
        assert_eq!(p.common_read(f, 8), (b & !0xffff_ffff) | (a & 0xffff_ffff), "high half alone");
        p.common_write(f, 4, b & 0xffff_ffff);
        assert_eq!(p.common_read(f, 8), b, "field {f:#x} hi/lo");
        // One 64-bit write.
        let c = 0xfedc_ba98_7654_3210u64 - n as u64;
        p.common_write(f, 8, c);
        assert_eq!(p.common_read(f, 8), c, "field {f:#x} 64-bit");
        assert_eq!(p.common_read(f, 4), c & 0xffff_ffff);
        assert_eq!(p.common_read(f + 4, 4), c >> 32);
        // Bytes and words read consistently too.
        assert_eq!(p.common_read(f + 2, 2), (c >> 16) & 0xffff);
        assert_eq!(p.common_read(f + 7, 1), c >> 56);
    }
    // The fields are per queue and did not leak into the others.
    for (f, v) in fields.iter().zip([0xfedc_ba98_7654_3210u64, 0xfedc_ba98_7654_320f, 0xfedc_ba98_7654_320e]) {
        assert_eq!(p.common_read(*f, 8), v);
    }
    p.common_write(QUEUE_SELECT, 2, 0);
    for f in fields {
        assert_eq!(p.common_read(f, 8), 0);
    }
    // Writes that are not a whole half or the whole field are ignored.
    p.common_write(QUEUE_DESC, 2, 0xffff);
    p.common_write(QUEUE_DESC + 2, 2, 0xffff);
    p.common_write(QUEUE_DESC + 1, 1, 0xff);
    p.common_write(QUEUE_DESC + 4, 8, u64::MAX);
    assert_eq!(p.common_read(QUEUE_DESC, 8), 0);
}

#[test]
fn msix_vector_registers() {
    let mut p = Pci::new();
    let vectors = QUEUE_SIZES.len() as u64 + 1;
    let no = u64::from(VIRTIO_MSI_NO_VECTOR);
    assert_eq!(p.common_read(CONFIG_MSIX_VECTOR, 2), no);
    for v in 0..vectors {
        p.common_write(CONFIG_MSIX_VECTOR, 2, v);
        assert_eq!(p.common_read(CONFIG_MSIX_VECTOR, 2), v);
    }
    // A vector the device cannot map reads back as NO_VECTOR (4.1.5.1.2.1).
    for v in [vectors, 0x7ff, 0x800, 0xfffe] {
        p.common_write(CONFIG_MSIX_VECTOR, 2, 1);
        p.common_write(CONFIG_MSIX_VECTOR, 2, v);
        assert_eq!(p.common_read(CONFIG_MSIX_VECTOR, 2), no, "config vector {v:#x}");
    }
    p.common_write(CONFIG_MSIX_VECTOR, 2, 2);
    p.common_write(CONFIG_MSIX_VECTOR, 2, no);
    assert_eq!(p.common_read(CONFIG_MSIX_VECTOR, 2), no, "unmapping");
    for q in 0..QUEUE_SIZES.len() as u64 {
        p.common_write(QUEUE_SELECT, 2, q);
        for v in 0..vectors {
            p.common_write(QUEUE_MSIX_VECTOR, 2, v);
            assert_eq!(p.common_read(QUEUE_MSIX_VECTOR, 2), v);
        }
        p.common_write(QUEUE_MSIX_VECTOR, 2, vectors);
        assert_eq!(p.common_read(QUEUE_MSIX_VECTOR, 2), no);
        p.common_write(QUEUE_MSIX_VECTOR, 2, q + 1);
    }
    // Each queue keeps its own vector.
    for q in 0..QUEUE_SIZES.len() as u64 {
        p.common_write(QUEUE_SELECT, 2, q);
        assert_eq!(p.common_read(QUEUE_MSIX_VECTOR, 2), q + 1);
    }
    // Vector registers take 16-bit writes only.
    p.common_write(CONFIG_MSIX_VECTOR, 1, 3);
    p.common_write(CONFIG_MSIX_VECTOR, 4, 3);
    assert_eq!(p.common_read(CONFIG_MSIX_VECTOR, 2), no);
}

#[test]
fn status_state_machine_and_reset() {
    let mut p = Pci::new();
    assert_eq!(p.status(), 0);
    p.add_status(ACKNOWLEDGE);
    assert_eq!(p.status(), ACKNOWLEDGE);
    p.add_status(DRIVER);
    assert_eq!(p.status(), ACKNOWLEDGE | DRIVER);
    // The status field takes byte writes only (4.1.3.1: natural width).
    p.common_write(DEVICE_STATUS, 2, 0);
    p.common_write(DEVICE_STATUS, 4, 0);
    assert_eq!(p.status(), ACKNOWLEDGE | DRIVER);
    p.write_driver_features(F_VERSION_1 | F_EVENT_IDX);
    p.add_status(FEATURES_OK);
    assert_eq!(p.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    p.common_write(CONFIG_MSIX_VECTOR, 2, 0);
    let d0 = p.driver(0, QUEUE_SIZES[0]);
    let d1 = p.driver(1, 4);
    p.setup_queue(0, &d0, Some(1));
    p.setup_queue(1, &d1, Some(2));
    p.add_status(DRIVER_OK);
    assert_eq!(p.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    {
        let s = lock(&p.state);
        assert_eq!(s.activations.len(), 1);
        let q = &s.activations[0];
        assert_eq!(q.len(), 2);
        for (aq, d) in q.iter().zip([&d0, &d1]) {
            assert_eq!(
                (aq.queue.size(), aq.queue.desc_table(), aq.queue.avail_ring(), aq.queue.used_ring()),
                (d.size(), d.desc_table(), d.avail_ring(), d.used_ring())
            );
            assert!(aq.queue.event_idx());
        }
        assert_eq!(s.acked, vec![F_VERSION_1 | F_EVENT_IDX]);
    }
    p.interrupt().notify_config();
    assert_eq!(p.isr() & ISR_CONFIG, ISR_CONFIG, "MSI-X disabled: ISR + INTx");
    p.interrupt().notify_queue(0);
    assert!(p.intx.level());

    // Reset: status 0, vectors unmapped (4.1.5.1.2.1), queues and interrupt cleared.
    p.common_write(DEVICE_STATUS, 1, 0);
    assert_eq!(p.status(), 0);
    assert_eq!(lock(&p.state).resets, 1);
    assert!(!p.intx.level());
    assert_eq!(p.isr(), 0);
    assert_eq!(p.common_read(CONFIG_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    for (i, &max) in QUEUE_SIZES.iter().enumerate() {
        p.common_write(QUEUE_SELECT, 2, i as u64);
        assert_eq!(p.common_read(QUEUE_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
        assert_eq!(p.common_read(QUEUE_ENABLE, 2), 0);
        assert_eq!(p.common_read(QUEUE_SIZE, 2), u64::from(max));
        for f in [QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE] {
            assert_eq!(p.common_read(f, 8), 0);
        }
    }
    p.common_write(DRIVER_FEATURE_SELECT, 4, 0);
    assert_eq!(p.common_read(DRIVER_FEATURE, 4), 0);
    assert_eq!(p.common_read(DEVICE_FEATURE_SELECT, 4), 0);

    // And it comes up again.
    p.bring_up(F_VERSION_1, &[2], true);
    let s = lock(&p.state);
    assert_eq!(s.activations.len(), 2);
    assert_eq!(s.activations[1].len(), 1);
    assert_eq!(s.activations[1][0].queue.max_size(), QUEUE_SIZES[2]);
}

#[test]
fn queue_registers_are_ignored_after_driver_ok() {
    let mut p = Pci::new();
    let d = p.bring_up(F_VERSION_1, &[0], true);
    p.common_write(QUEUE_SELECT, 2, 0);
    p.common_write(QUEUE_SIZE, 2, 2);
    p.common_write(QUEUE_DESC, 8, 0x8000);
    p.common_write(QUEUE_DRIVER, 4, 0x9000);
    p.common_write(QUEUE_DEVICE + 4, 4, 1);
    assert_eq!(p.common_read(QUEUE_SIZE, 2), u64::from(d[0].size()));
    assert_eq!(p.common_read(QUEUE_DESC, 8), d[0].desc_table());
    assert_eq!(p.common_read(QUEUE_DRIVER, 8), d[0].avail_ring());
    assert_eq!(p.common_read(QUEUE_DEVICE, 8), d[0].used_ring());
    // (queue_msix_vector is the exception: see msix_vectors_can_change_after_driver_ok.)
    p.common_write(QUEUE_SELECT, 2, 1);
    p.common_write(QUEUE_ENABLE, 2, 1);
    assert_eq!(p.common_read(QUEUE_ENABLE, 2), 0);
    assert_eq!(p.activations(), 1);
}

#[test]
fn invalid_queue_at_driver_ok_sets_needs_reset() {
    type Tweak = Box<dyn Fn(&mut Pci)>;
    // (Invalid queue sizes cannot get this far: queue_size ignores them, see
    // queue_size_takes_only_powers_of_two_up_to_the_maximum.)
    let cases: Vec<(&str, Tweak)> = vec![
        ("desc past memory", Box::new(|p| p.common_write(QUEUE_DESC, 8, MEM_SIZE as u64 - 0x10))),
        ("avail above 4 GiB", Box::new(|p| p.common_write(QUEUE_DRIVER + 4, 4, 2))),
        ("used at the top of the address space", Box::new(|p| p.common_write(QUEUE_DEVICE, 8, u64::MAX - 3))),
        ("misaligned avail", Box::new(|p| p.common_write(QUEUE_DRIVER, 4, 0x3001))),
    ];
    for (what, tweak) in cases {
        for msix in [false, true] {
            let mut p = Pci::new();
            if msix {
                p.program_vector(0, MSG);
                p.enable_msix(true);
                p.msi.take();
            }
            assert!(p.negotiate(F_VERSION_1));
            p.common_write(CONFIG_MSIX_VECTOR, 2, 0);
            let d = p.driver(0, QUEUE_SIZES[0]);
            p.setup_queue(0, &d, Some(1));
            p.common_write(QUEUE_SELECT, 2, 0);
            tweak(&mut p);
            p.add_status(DRIVER_OK);
            assert_eq!(p.activations(), 0, "{what}");
            assert_eq!(p.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | NEEDS_RESET, "{what}");
            if msix {
                // The configuration change goes out on config_msix_vector,
                // with the ISR configuration bit set but INTx left alone.
                assert_eq!(p.msi.triggers(), vec![0], "{what}");
                assert!(!p.intx.level(), "{what}");
                assert_eq!(p.isr(), ISR_CONFIG, "{what}");
                assert_eq!(p.intx.rising_edges(), 0, "{what}");
            } else {
                assert!(p.intx.level(), "{what}");
                assert_eq!(p.isr(), ISR_CONFIG, "{what}");
                assert!(!p.intx.level(), "{what}");
            }
            p.common_write(DEVICE_STATUS, 1, 0);
            assert_eq!(p.status(), 0, "{what}");
        }
    }
}

#[test]
fn isr_is_read_to_clear_and_lowers_intx() {
    let mut p = Pci::new();
    p.bring_up(F_VERSION_1, &[0, 1], false);
    let intr = p.interrupt();
    intr.notify_queue(1);
    assert!(p.intx.level());
    assert_eq!(p.isr(), ISR_QUEUE);
    assert!(!p.intx.level());
    assert_eq!(p.isr(), 0, "read clears");
    intr.notify_queue(0);
    intr.notify_config();
    assert_eq!(p.intx.rising_edges(), 2);
    // A 4-byte read of the ISR works the same way.
    let isr_off = u64::from(p.caps.isr.offset);
    assert_eq!(p.bar_read(isr_off, 4), u64::from(ISR_QUEUE | ISR_CONFIG));
    assert!(!p.intx.level());
    // Writes to the ISR do nothing.
    intr.notify_queue(0);
    p.bar_write(isr_off, 1, 0);
    assert!(p.intx.level());
    assert_eq!(p.isr(), ISR_QUEUE);
    // Reading an empty ISR leaves the line alone (low).
    assert_eq!(p.isr(), 0);
    assert!(!p.intx.level());
}

#[test]
fn interrupt_disable_keeps_intx_off_the_line_but_in_the_status_register() {
    const COMMAND_INTX_DISABLE: u32 = 1 << 10;
    const STATUS_INTERRUPT: u8 = 1 << 3;
    let mut p = Pci::new();
    p.bring_up(F_VERSION_1, &[0], false);
    let intr = p.interrupt();
    assert_eq!(p.cfg8(0x06) & STATUS_INTERRUPT, 0);
    let command = u32::from(p.cfg16(0x04));
    p.cfg_write(0x04, 2, command | COMMAND_INTX_DISABLE);
    intr.notify_queue(0);
    assert!(!p.intx.level(), "Interrupt Disable holds the line low");
    assert_ne!(p.cfg8(0x06) & STATUS_INTERRUPT, 0, "Interrupt Status shows it pending");
    assert_ne!((p.cfg32(0x04) >> 16) as u8 & STATUS_INTERRUPT, 0, "also through a dword read");
    p.cfg_write(0x04, 2, command);
    assert!(p.intx.level(), "clearing Interrupt Disable asserts the pending interrupt");
    p.cfg_write(0x04, 2, command | COMMAND_INTX_DISABLE);
    assert!(!p.intx.level(), "setting it again deasserts the line");
    assert_eq!(p.isr(), ISR_QUEUE);
    assert_eq!(p.cfg8(0x06) & STATUS_INTERRUPT, 0, "reading the ISR clears the status");
    p.cfg_write(0x04, 2, command);
    assert!(!p.intx.level());
}

#[test]
fn notifications_reach_the_queue_eventfd() {
    let mut p = Pci::new();
    let mut drivers = p.bring_up(F_VERSION_1, &[0, 1, 2], true);
    for q in 0..3u16 {
        let addr = p.notify_addr(q);
        // Linux writes the queue index as 16 bits (vp_notify).
        p.bar_write(addr, 2, u64::from(q));
        let s = lock(&p.state);
        for (i, aq) in s.activations[0].iter().enumerate() {
            assert_eq!(signalled(&aq.notify), i == usize::from(q), "notify {q}, queue {i}");
        }
    }
    // A 4-byte write works too, and the device can pop what the driver queued.
    let head = drivers[0].add_buffers(&[b"ping"], &[8]);
    let addr = p.notify_addr(0);
    p.bar_write(addr, 4, 0);
    let mut s = lock(&p.state);
    let mem = s.memory.clone().unwrap();
    let aq = &mut s.activations[0][0];
    assert!(signalled(&aq.notify));
    let chain = aq.queue.pop(&mem).unwrap().unwrap();
    assert_eq!(chain.head_index, head);
    assert_eq!(chain.read_all(&mem).unwrap(), b"ping");
    drop(s);
    // The notify region reads as 0; writes beyond the last queue go nowhere.
    let base = u64::from(p.caps.notify.offset);
    assert_eq!(p.bar_read(base, 4), 0);
    p.bar_write(base + 0x100, 2, 0);
    let s = lock(&p.state);
    assert!(s.activations[0].iter().all(|q| !signalled(&q.notify)));
}

#[test]
fn intx_when_msix_is_disabled() {
    let mut p = Pci::new();
    // Vectors are assigned, but MSI-X itself is off: INTx + ISR (4.1.5.3, 4.1.5.4).
    p.bring_up(F_VERSION_1, &[0], true);
    p.msi.take();
    p.interrupt().notify_queue(0);
    assert!(p.intx.level());
    assert!(p.msi.take().is_empty());
    assert_eq!(p.isr(), ISR_QUEUE);
    assert!(!p.intx.level());
}

#[test]
fn msix_when_enabled() {
    let mut p = Pci::new();
    let vectors = p.program_all_vectors_and_enable();
    let updates = p.msi.take();
    assert_eq!(updates.len(), usize::from(vectors), "{updates:?}");
    assert!(updates.contains(&MsiEvent::Update(2, Some(MsiMessage { data: MSG.data + 2, ..MSG }))));
    p.bring_up(F_VERSION_1, &[0, 1, 2], true);
    let intr = p.interrupt();
    // Queue q uses vector q + 1, configuration changes vector 0.
    intr.notify_queue(2);
    assert_eq!(p.msi.take(), vec![MsiEvent::Trigger(3)]);
    intr.notify_queue(0);
    intr.notify_config();
    assert_eq!(p.msi.triggers(), vec![1, 0]);
    assert_eq!(p.isr(), ISR_CONFIG, "with MSI-X, the ISR only shows configuration changes");
    assert!(!p.intx.level());
    assert_eq!(p.intx.rising_edges(), 0);

    // A masked vector sets its pending bit instead; unmasking delivers it.
    let table = u64::from(p.cfg32(p.caps.msix + 4) & !7);
    let pba = u64::from(p.cfg32(p.caps.msix + 8) & !7);
    p.bar_write(table + 16 * 2 + 12, 4, 1);
    p.msi.take();
    intr.notify_queue(1);
    assert!(p.msi.triggers().is_empty());
    assert_eq!(p.bar_read(pba, 8), 1 << 2);
    p.bar_write(table + 16 * 2 + 12, 4, 0);
    assert_eq!(p.msi.triggers(), vec![2]);
    assert_eq!(p.bar_read(pba, 8), 0);

    // A queue without a vector is silent under MSI-X (4.1.5.3).
    p.common_write(DEVICE_STATUS, 1, 0);
    assert!(p.negotiate(F_VERSION_1));
    let d = p.driver(0, QUEUE_SIZES[0]);
    p.setup_queue(0, &d, None);
    p.add_status(DRIVER_OK);
    p.msi.take();
    let intr = p.interrupt();
    intr.notify_queue(0);
    intr.notify_config();
    assert!(p.msi.take().is_empty());
    assert_eq!(p.isr(), ISR_CONFIG, "the configuration changed, even if no vector says so");
    assert!(!p.intx.level());

    // Turning MSI-X off sends interrupts back to INTx.
    p.enable_msix(false);
    intr.notify_queue(0);
    assert!(p.intx.level());
    assert_eq!(p.isr(), ISR_QUEUE);
}

#[test]
fn msix_table_through_bar0() {
    let mut p = Pci::new();
    let table = u64::from(p.cfg32(p.caps.msix + 4) & !7);
    p.program_vector(1, MSG);
    assert_eq!(p.bar_read(table + 16, 8), MSG.address);
    assert_eq!(p.bar_read(table + 24, 4), u64::from(MSG.data));
    assert_eq!(p.bar_read(table + 28, 4), 0, "unmasked");
    assert_eq!(p.bar_read(table + 12, 4), 1, "vector 0 masked after reset");
    // A virtio reset does not touch MSI-X (it is PCI state).
    p.common_write(DEVICE_STATUS, 1, 0);
    assert_eq!(p.bar_read(table + 16, 8), MSG.address);
}

#[test]
fn device_config_region() {
    let mut p = Pci::new();
    let base = u64::from(p.caps.device.offset);
    assert_eq!(p.bar_read(base + 1, 1), 0x22);
    assert_eq!(p.bar_read(base + 2, 2), 0x4433);
    assert_eq!(p.bar_read(base + 4, 4), 0x8877_6655);
    assert_eq!(p.bar_read(base, 8), u64::from_le_bytes(CONFIG));
    assert_eq!(p.bar_read(base + 8, 4), 0, "past the device's config");
    p.bar_write(base + 3, 1, 0xee);
    assert_eq!(lock(&p.state).config_writes, vec![(3, vec![0xee])]);
    assert_eq!(p.bar_read(base, 4), 0xee33_2211);
}

#[test]
fn pci_cfg_window_reaches_bar0() {
    let mut p = Pci::new();
    let common = p.caps.common.offset;
    // num_queues, 16 bits.
    p.window(0, common + NUM_QUEUES as u32, 2);
    assert_eq!(p.window_read(4), QUEUE_SIZES.len() as u32, "first cap.length bytes, rest 0");
    assert_eq!(p.window_read(2), QUEUE_SIZES.len() as u32);
    // device_feature_select written, device_feature read, 32 bits.
    p.window(0, common + DEVICE_FEATURE_SELECT as u32, 4);
    p.window_write(4, 1);
    assert_eq!(p.common_read(DEVICE_FEATURE_SELECT, 4), 1);
    p.window(0, common + DEVICE_FEATURE as u32, 4);
    assert_eq!(p.window_read(4), (OFFERED >> 32) as u32);
    // device_status, 8 bits.
    p.window(0, common + DEVICE_STATUS as u32, 1);
    p.window_write(1, u32::from(ACKNOWLEDGE));
    assert_eq!(p.status(), ACKNOWLEDGE);
    assert_eq!(p.window_read(1), u32::from(ACKNOWLEDGE));
    // A queue address half.
    p.common_write(QUEUE_SELECT, 2, 1);
    p.window(0, common + QUEUE_DEVICE as u32 + 4, 4);
    p.window_write(4, 0x55);
    assert_eq!(p.common_read(QUEUE_DEVICE, 8), 0x55 << 32);
    // The device configuration.
    p.window(0, p.caps.device.offset + 4, 4);
    assert_eq!(p.window_read(4), 0x8877_6655);
    // The ISR, read to clear through the window as well.
    p.add_status(DRIVER);
    p.write_driver_features(F_VERSION_1);
    p.add_status(FEATURES_OK);
    let d = p.driver(0, QUEUE_SIZES[0]);
    p.setup_queue(0, &d, None);
    p.add_status(DRIVER_OK);
    assert_eq!(p.activations(), 1);
    p.interrupt().notify_queue(0);
    assert!(p.intx.level());
    p.window(0, p.caps.isr.offset, 1);
    assert_eq!(p.window_read(1), u32::from(ISR_QUEUE));
    assert!(!p.intx.level());
    assert_eq!(p.window_read(1), 0);
    // Notifications.
    let addr = p.notify_addr(0) as u32;
    p.window(0, addr, 2);
    p.window_write(2, 0);
    assert!(signalled(&lock(&p.state).activations[0][0].notify));
    // The window's own fields read back what was written.
    let pos = p.caps.pci_cfg.pos;
    assert_eq!(p.cfg8(pos + 4), 0);
    assert_eq!(p.cfg32(pos + 8), addr);
    assert_eq!(p.cfg32(pos + 12), 2);
}

#[test]
fn pci_cfg_window_rejects_bad_windows() {
    let mut p = Pci::new();
    let status_off = p.caps.common.offset + DEVICE_STATUS as u32;
    let device = p.caps.device.offset;
    let notify = p.caps.notify.offset;
    // Bad BAR, bad lengths, outside the BAR, cap.offset not a multiple of
    // cap.length (4.1.4.9.1): no BAR access; pci_cfg_data is plain storage
    // then and reads back what was written.
    for (i, (bar, offset, length)) in [
        (1u8, status_off, 1u32),
        (5, status_off, 1),
        (0xff, status_off, 1),
        (0, status_off, 0),
        (0, status_off, 3),
        (0, status_off, 8),
        (0, 0x8000, 1),
        (0, 0x7ffe, 4),
        (0, u32::MAX, 1),
        (0, u32::MAX - 1, 4),
        (0, device + 1, 2),
        (0, device + 2, 4),
        (0, notify + 2, 4),
        (0, notify + 1, 2),
    ]
    .into_iter()
    .enumerate()
    {
        p.window(bar, offset, length);
        let v = 0x5a00_0000 | (i as u32) << 8 | u32::from(ACKNOWLEDGE);
        p.window_write(4, v);
        assert_eq!(p.window_read(4), v, "bar {bar} offset {offset:#x} length {length}");
        p.window_write(1, 0xee);
        assert_eq!(p.window_read(2), (v & 0xff00) | 0xee, "bar {bar} offset {offset:#x} length {length}");
    }
    assert_eq!(p.status(), 0);
    assert!(lock(&p.state).config_writes.is_empty(), "misaligned device config writes");
    assert!(p.dev.common().notify_events().iter().all(|e| !signalled(e)), "misaligned notifications");
    // Partial accesses of pci_cfg_data do not panic; accesses that are not
    // 1, 2 or 4 bytes within the dword read all ones, like any other.
    p.window(0, status_off, 1);
    for off in 0..4u16 {
        for len in [1usize, 2, 3, 4] {
            let pos = p.caps.pci_cfg.pos + 16 + off;
            let mut d = vec![0u8; len];
            p.dev.read_config(pos, &mut d);
            p.dev.write_config(pos, &d);
            if len == 3 || usize::from(off) + len > 4 {
                assert!(d.iter().all(|&b| b == 0xff), "{len} bytes at +{off}: {d:x?}");
            }
        }
    }
    assert_eq!(p.status(), 0, "all the window's writes were of status 0");
}

#[test]
fn odd_widths_and_offsets_never_panic() {
    let mut p = Pci::new();
    p.bring_up(F_VERSION_1, &[0, 1], true);
    let widths = [0usize, 1, 2, 3, 4, 5, 8, 16];
    // Reads: every offset of the interesting regions, every width.
    let mut offsets: Vec<u64> = Vec::new();
    for base in [0u64, 0x1000, 0x2000, 0x3000, 0x4000, 0x6000] {
        offsets.extend(base..base + 0x48);
        offsets.extend(base + 0xff8..base + 0x1000);
    }
    offsets.extend([0x7ffc, 0x7fff, 0x8000, 0x1_0000, u64::MAX - 7, u64::MAX]);
    for &o in &offsets {
        for &w in &widths {
            let mut d = vec![0u8; w];
            p.dev.read_bar(0, o, &mut d);
            p.dev.read_bar(1, o, &mut d);
            p.dev.read_bar(2, o, &mut d);
        }
    }
    // Writes of all ones, except to the status byte (which would just reset).
    for &o in &offsets {
        for &w in &widths {
            let d = vec![0xffu8; w];
            if o == DEVICE_STATUS && w == 1 {
                continue;
            }
            p.dev.write_bar(0, o, &d);
            p.dev.write_bar(3, o, &d);
        }
    }
    // Configuration space: every offset, every width, through the trait.
    for o in 0u16..0x1000 {
        for &w in &[0usize, 1, 2, 3, 4, 8] {
            let mut d = vec![0u8; w];
            p.dev.read_config(o, &mut d);
        }
    }
    for o in (0x40u16..0x100).chain([0xffe, 0xfff, 0x1000, u16::MAX]) {
        for &w in &[1usize, 2, 3, 4, 8] {
            p.dev.write_config(o, &vec![0u8; w]);
        }
    }
    // The device still answers sensibly.
    assert_eq!(p.cfg16(0), 0x1af4);
    assert_eq!(p.common_read(NUM_QUEUES, 2), QUEUE_SIZES.len() as u64);
}

#[test]
fn isr_and_intx_stay_consistent_under_a_concurrent_interrupt() {
    // The device worker raises interrupts on its own thread while a vCPU reads
    // the ISR. If the read lands between the worker setting the ISR bit and
    // asserting INTx, the driver takes the bit but the line goes up afterwards
    // and nothing ever lowers it: a level-triggered INTx stuck high with ISR 0,
    // which Linux's vp_interrupt answers with IRQ_NONE forever.
    use super::line::HookLine;

    let (device, state) = FakeDevice::new(2);
    let mem = guest_memory(MEM_SIZE);
    let msi = Arc::new(RecordingMsi::default());
    let line = HookLine::new(true);
    let dev = VirtioPciDevice::new(device, mem.clone(), msi, line.clone(), 10, 0).unwrap();
    let mut p = Pci {
        dev,
        state,
        msi: Arc::new(RecordingMsi::default()),
        intx: Arc::new(RecordingIrqLine::default()),
        mem,
        caps: Caps::default(),
    };
    p.caps = p.find_caps();
    p.bring_up(F_VERSION_1, &[0], false);
    let intr = p.interrupt();
    let isr = u64::from(p.caps.isr.offset);
    let dev = Arc::new(Mutex::new(p.dev));

    line.arm();
    let worker = std::thread::spawn(move || intr.notify_queue(0));
    line.wait_in_window();
    let vcpu = {
        let dev = dev.clone();
        let line = line.clone();
        std::thread::spawn(move || {
            let mut d = [0u8; 1];
            dev.lock().unwrap().read_bar(0, isr, &mut d);
            line.release();
            d[0]
        })
    };
    let got = vcpu.join().unwrap();
    worker.join().unwrap();
    assert_eq!(got, ISR_QUEUE);
    let mut d = [0u8; 1];
    dev.lock().unwrap().read_bar(0, isr, &mut d);
    assert_eq!(line.level(), d[0] != 0, "INTx is {} with ISR {:#x}", line.level(), d[0]);
}

#[test]
fn driver_ok_without_queues_reads_back_0x0f() {
    // A probe (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK) that sets up no
    // queue: real devices refuse to start without queues (as this one is made
    // to), so the device is not activated, but the status reads back 0x0f as
    // on QEMU and Cloud Hypervisor, and nothing is signalled.
    for msix in [false, true] {
        let mut p = Pci::new();
        lock(&p.state).fail_activation = true;
        if msix {
            p.program_vector(0, MSG);
            p.enable_msix(true);
            p.msi.take();
        }
        assert!(p.negotiate(F_VERSION_1));
        p.common_write(CONFIG_MSIX_VECTOR, 2, 0);
        let generation = p.common_read(CONFIG_GENERATION, 1);
        p.add_status(DRIVER_OK);
        assert_eq!(p.status(), 0x0f, "msix {msix}");
        assert_eq!(p.activations(), 0);
        assert!(p.msi.triggers().is_empty());
        assert!(!p.intx.level());
        assert_eq!(p.isr(), 0);
        assert_eq!(p.common_read(CONFIG_GENERATION, 1), generation);
        // Queue set-up after DRIVER_OK is ignored, and DRIVER_OK again
        // starts nothing.
        p.common_write(QUEUE_SELECT, 2, 0);
        p.common_write(QUEUE_SIZE, 2, 4);
        p.common_write(QUEUE_ENABLE, 2, 1);
        assert_eq!(p.common_read(QUEUE_ENABLE, 2), 0);
        assert_eq!(p.common_read(QUEUE_SIZE, 2), u64::from(QUEUE_SIZES[0]));
        p.add_status(DRIVER_OK);
        assert_eq!(p.status(), 0x0f);
        assert_eq!(p.activations(), 0);
        // A reset works (the device, never started, is not reset) and the
        // device comes up properly afterwards.
        p.common_write(DEVICE_STATUS, 1, 0);
        assert_eq!(p.status(), 0);
        assert_eq!(lock(&p.state).resets, 0);
        lock(&p.state).fail_activation = false;
        p.bring_up(F_VERSION_1, &[0, 2], true);
        assert_eq!(p.status(), 0x0f);
        assert_eq!(p.activations(), 1);
        assert_eq!(lock(&p.state).activations[0].len(), 2);
        p.common_write(DEVICE_STATUS, 1, 0);
        assert_eq!(lock(&p.state).resets, 1);
    }
}

/// A `Pci` with the PCI_CFG window's pci_cfg_data holding `stored`, put
/// there through a window that reaches no BAR.
fn pci_with_stored_cfg_data(stored: u32) -> Pci {
    let mut p = Pci::new();
    p.window(1, 0, 4);
    p.window_write(4, stored);
    p
}

#[test]
fn pci_cfg_window_reads_of_part_of_pci_cfg_data() {
    // cap.length 4: every read loads the 4 BAR bytes into pci_cfg_data and
    // returns the bytes the configuration read addresses (4.1.4.9).
    let mut p = Pci::new();
    let device = p.caps.device.offset;
    let data = p.caps.pci_cfg.pos + 16;
    p.window(0, device + 4, 4);
    assert_eq!(p.cfg16(data), 0x6655);
    assert_eq!(p.cfg16(data + 2), 0x8877);
    assert_eq!(p.cfg8(data + 1), 0x66);
    assert_eq!(p.cfg8(data + 3), 0x88);
    assert_eq!(p.cfg32(data), 0x8877_6655);
    // The device's configuration changes: the next read sees it, at any width.
    lock(&p.state).config[7] = 0x99;
    assert_eq!(p.cfg8(data + 3), 0x99);

    // cap.length 2: the BAR fills bytes 0-1, bytes 2-3 keep what was stored.
    let mut p = pci_with_stored_cfg_data(0xaabb_ccdd);
    p.window(0, device + 2, 2);
    assert_eq!(p.cfg32(data), 0xaabb_4433);
    assert_eq!(p.cfg8(data + 1), 0x44);
    assert_eq!(p.cfg16(data + 2), 0xaabb);
    assert_eq!(p.cfg8(data + 3), 0xaa);

    // cap.length 1.
    let mut p = pci_with_stored_cfg_data(0xaabb_ccdd);
    p.window(0, device + 5, 1);
    assert_eq!(p.cfg32(data), 0xaabb_cc66);
    assert_eq!(p.cfg16(data + 2), 0xaabb);
    // The window's reads stay within cap.length: nothing else was written.
    assert!(lock(&p.state).config_writes.is_empty());
}

#[test]
fn pci_cfg_window_writes_the_first_cap_length_bytes_of_pci_cfg_data() {
    let data_off = 16;
    // cap.length 4 and a byte write at +1: pci_cfg_data is updated, then its
    // 4 bytes (stored + new byte) go to the BAR.
    let mut p = pci_with_stored_cfg_data(0x4433_2211);
    let device = p.caps.device.offset;
    let data = p.caps.pci_cfg.pos + data_off;
    p.window(0, device, 4);
    p.cfg_write(data + 1, 1, 0xee);
    assert_eq!(lock(&p.state).config_writes, vec![(0, vec![0x11, 0xee, 0x33, 0x44])]);
    assert_eq!(p.bar_read(u64::from(device), 4), 0x4433_ee11);
    // A 16-bit write at +2 likewise writes all 4 bytes.
    lock(&p.state).config_writes.clear();
    p.cfg_write(data + 2, 2, 0xbeef);
    assert_eq!(lock(&p.state).config_writes, vec![(0, vec![0x11, 0xee, 0xef, 0xbe])]);

    // cap.length 2: a 4-byte write sends only bytes 0-1; a write of bytes
    // 2-3 alone sends bytes 0-1 as stored.
    let mut p = pci_with_stored_cfg_data(0);
    p.window(0, device + 2, 2);
    p.cfg_write(data, 4, 0x1234_5678);
    assert_eq!(lock(&p.state).config_writes, vec![(2, vec![0x78, 0x56])]);
    lock(&p.state).config_writes.clear();
    p.cfg_write(data + 2, 2, 0xabcd);
    assert_eq!(lock(&p.state).config_writes, vec![(2, vec![0x78, 0x56])]);
    assert_eq!(p.cfg_read(data, 4), 0xabcd_5678, "the read refreshes bytes 0-1 from the BAR");

    // cap.length 1 on device_status: a 4-byte write sends one byte.
    let mut p = pci_with_stored_cfg_data(0);
    let status = p.caps.common.offset + DEVICE_STATUS as u32;
    p.window(0, status, 1);
    p.cfg_write(data, 4, 0xffff_ff00 | u32::from(ACKNOWLEDGE));
    assert_eq!(p.status(), ACKNOWLEDGE);
    assert_eq!(p.common_read(CONFIG_GENERATION, 1), 0, "the byte after the status was not written");
    // A byte write at +3 with cap.length 1 writes byte 0 again.
    p.cfg_write(data + 3, 1, 0x55);
    assert_eq!(p.status(), ACKNOWLEDGE);
    assert_eq!(p.cfg_read(data, 4), 0x55ff_ff00 | u32::from(ACKNOWLEDGE));

    // cap.length 2 on queue_select, written through a byte write of its high
    // byte: the 16-bit BAR write carries the stored low byte.
    let mut p = pci_with_stored_cfg_data(0x0002);
    let select = p.caps.common.offset + QUEUE_SELECT as u32;
    p.window(0, select, 2);
    p.cfg_write(data + 1, 1, 0);
    assert_eq!(p.common_read(QUEUE_SELECT, 2), 2);
}

#[test]
fn config_change_sets_the_isr_bit_under_msix_without_intx() {
    const STATUS_INTERRUPT: u8 = 1 << 3;
    let mut p = Pci::new();
    p.program_vector(0, MSG);
    p.program_vector(1, MSG);
    p.enable_msix(true);
    p.bring_up(F_VERSION_1, &[0], true);
    p.msi.take();
    let intr = p.interrupt();
    intr.notify_config();
    assert_eq!(p.msi.triggers(), vec![0]);
    assert!(!p.intx.level());
    assert_eq!(p.intx.rising_edges(), 0);
    assert_eq!(p.cfg8(0x06) & STATUS_INTERRUPT, 0, "no INTx pending under MSI-X");
    assert_eq!(p.isr(), ISR_CONFIG, "4.1.4.5.1: the configuration bit is set whatever the interrupt kind");
    assert_eq!(p.isr(), 0);
    // Queue interrupts do not touch the ISR under MSI-X.
    intr.notify_queue(0);
    assert_eq!(p.msi.triggers(), vec![1]);
    assert_eq!(p.isr(), 0);
    assert_eq!(p.intx.rising_edges(), 0);
}

#[test]
fn enabling_msix_lowers_a_pending_intx() {
    const COMMAND_INTX_DISABLE: u32 = 1 << 10;
    let mut p = Pci::new();
    p.bring_up(F_VERSION_1, &[0], true);
    let intr = p.interrupt();
    intr.notify_queue(0);
    assert!(p.intx.level());
    p.program_vector(1, MSG);
    p.enable_msix(true);
    assert!(!p.intx.level(), "INTx is not used while MSI-X is enabled");
    p.msi.take();
    intr.notify_queue(0);
    intr.notify_config();
    assert_eq!(p.msi.triggers(), vec![1]);
    assert!(!p.intx.level());
    assert_eq!(p.intx.rising_edges(), 1);
    assert_eq!(p.isr(), ISR_QUEUE | ISR_CONFIG, "the INTx-time queue bit and the config bit");
    // Interrupt Disable toggled while MSI-X is enabled does not unmask INTx.
    let command = u32::from(p.cfg16(0x04));
    intr.notify_config();
    p.cfg_write(0x04, 2, command | COMMAND_INTX_DISABLE);
    p.cfg_write(0x04, 2, command);
    assert!(!p.intx.level());
    assert_eq!(p.isr(), ISR_CONFIG);
    // MSI-X off again: INTx works as before.
    p.enable_msix(false);
    assert!(!p.intx.level());
    intr.notify_queue(0);
    assert!(p.intx.level());
    assert_eq!(p.isr(), ISR_QUEUE);
    assert!(!p.intx.level());
    // A pending INTx while MSI-X goes on and off is asserted again (as with
    // Interrupt Disable: the status is kept).
    intr.notify_queue(0);
    p.enable_msix(true);
    assert!(!p.intx.level());
    p.enable_msix(false);
    assert!(p.intx.level());
    // With Interrupt Disable set, disabling MSI-X keeps the line low.
    p.enable_msix(true);
    p.cfg_write(0x04, 2, command | COMMAND_INTX_DISABLE);
    p.enable_msix(false);
    assert!(!p.intx.level());
    p.cfg_write(0x04, 2, command);
    assert!(p.intx.level());
}

#[test]
fn queue_msix_vector_of_a_missing_queue_reads_no_vector() {
    let mut p = Pci::new();
    for sel in [3u64, 4, 0x7fff, 0xfffe, 0xffff] {
        p.common_write(QUEUE_SELECT, 2, sel);
        assert_eq!(p.common_read(QUEUE_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR), "queue {sel:#x}");
        p.common_write(QUEUE_MSIX_VECTOR, 2, 1);
        assert_eq!(p.common_read(QUEUE_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR), "queue {sel:#x}");
        assert_eq!(p.common_read(QUEUE_SIZE, 2), 0);
        assert_eq!(p.common_read(QUEUE_ENABLE, 2), 0);
    }
    // The writes did not land on a real queue.
    for q in 0..QUEUE_SIZES.len() as u64 {
        p.common_write(QUEUE_SELECT, 2, q);
        assert_eq!(p.common_read(QUEUE_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    }
}

#[test]
fn msix_vectors_can_change_after_driver_ok() {
    let mut p = Pci::new();
    let vectors = p.program_all_vectors_and_enable();
    p.bring_up(F_VERSION_1, &[0, 1], true);
    p.msi.take();
    let intr = p.interrupt();
    intr.notify_queue(0);
    intr.notify_config();
    assert_eq!(p.msi.triggers(), vec![1, 0]);
    // Remap queue 0 to vector 3 and configuration changes to vector 2.
    p.common_write(QUEUE_SELECT, 2, 0);
    p.common_write(QUEUE_MSIX_VECTOR, 2, 3);
    assert_eq!(p.common_read(QUEUE_MSIX_VECTOR, 2), 3);
    p.common_write(CONFIG_MSIX_VECTOR, 2, 2);
    assert_eq!(p.common_read(CONFIG_MSIX_VECTOR, 2), 2);
    intr.notify_queue(0);
    intr.notify_queue(1);
    intr.notify_config();
    assert_eq!(p.msi.triggers(), vec![3, 2, 2]);
    // Two queues may share a vector.
    p.common_write(QUEUE_SELECT, 2, 1);
    p.common_write(QUEUE_MSIX_VECTOR, 2, 3);
    intr.notify_queue(1);
    assert_eq!(p.msi.triggers(), vec![3]);
    // Unmapping silences the queue; a vector out of range reads NO_VECTOR.
    p.common_write(QUEUE_MSIX_VECTOR, 2, u64::from(VIRTIO_MSI_NO_VECTOR));
    intr.notify_queue(1);
    assert!(p.msi.triggers().is_empty());
    p.common_write(QUEUE_MSIX_VECTOR, 2, u64::from(vectors));
    assert_eq!(p.common_read(QUEUE_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    intr.notify_queue(1);
    assert!(p.msi.triggers().is_empty());
    // A queue that was not enabled can be given a vector too (it never interrupts).
    p.common_write(QUEUE_SELECT, 2, 2);
    p.common_write(QUEUE_MSIX_VECTOR, 2, 1);
    assert_eq!(p.common_read(QUEUE_MSIX_VECTOR, 2), 1);
    assert_eq!(p.activations(), 1);
    // A reset unmaps them all again.
    p.common_write(DEVICE_STATUS, 1, 0);
    p.common_write(QUEUE_SELECT, 2, 0);
    assert_eq!(p.common_read(QUEUE_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    assert_eq!(p.common_read(CONFIG_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
}

#[test]
fn queue_size_takes_only_powers_of_two_up_to_the_maximum() {
    let mut p = Pci::new();
    p.common_write(QUEUE_SELECT, 2, 0);
    let max = u64::from(QUEUE_SIZES[0]);
    // 4.1.4.3.1: without VIRTIO_F_RING_PACKED queue_size reads 0 or a power
    // of 2; the device never presents anything else.
    for bad in [0u64, 3, 6, 15, 17, 24, max * 2, 0x8000, 0xfffe, 0xffff] {
        p.common_write(QUEUE_SIZE, 2, bad);
        assert_eq!(p.common_read(QUEUE_SIZE, 2), max, "write of {bad}");
    }
    for good in [8u64, 1, 2, max, 4] {
        p.common_write(QUEUE_SIZE, 2, good);
        assert_eq!(p.common_read(QUEUE_SIZE, 2), good);
        for bad in [0u64, 5, max + 1, max * 2] {
            p.common_write(QUEUE_SIZE, 2, bad);
            assert_eq!(p.common_read(QUEUE_SIZE, 2), good, "write of {bad} after {good}");
        }
    }
    // Only 16-bit writes count.
    p.common_write(QUEUE_SIZE, 1, 2);
    p.common_write(QUEUE_SIZE, 4, 2);
    assert_eq!(p.common_read(QUEUE_SIZE, 2), 4);
    // Each queue has its own maximum.
    p.common_write(QUEUE_SELECT, 2, 2);
    p.common_write(QUEUE_SIZE, 2, 8);
    assert_eq!(p.common_read(QUEUE_SIZE, 2), u64::from(QUEUE_SIZES[2]));
    p.common_write(QUEUE_SIZE, 2, 2);
    assert_eq!(p.common_read(QUEUE_SIZE, 2), 2);

    // A driver that writes a bad size and goes on gets a working queue of
    // the last good size.
    let mut p = Pci::new();
    assert!(p.negotiate(F_VERSION_1));
    let d = p.driver(0, 8);
    p.setup_queue(0, &d, None);
    p.common_write(QUEUE_SIZE, 2, 6);
    p.add_status(DRIVER_OK);
    assert_eq!(p.status(), 0x0f);
    assert_eq!(lock(&p.state).activations[0][0].queue.size(), 8);
}

#[test]
fn config_generation_changes_with_each_configuration_change() {
    for msix in [false, true] {
        let mut p = Pci::new();
        if msix {
            p.program_vector(0, MSG);
            p.enable_msix(true);
        }
        p.bring_up(F_VERSION_1, &[0], true);
        let g0 = p.common_read(CONFIG_GENERATION, 1) as u8;
        let intr = p.interrupt();
        // The driver reads the config, the device changes it and signals.
        assert_eq!(p.bar_read(u64::from(p.caps.device.offset), 4), 0x4433_2211);
        lock(&p.state).config[0] = 0x99;
        intr.notify_config();
        let g1 = p.common_read(CONFIG_GENERATION, 1) as u8;
        assert_ne!(g1, g0, "msix {msix}");
        assert_eq!(p.common_read(CONFIG_GENERATION, 1) as u8, g1, "stable while nothing changes");
        // Queue interrupts leave it alone.
        intr.notify_queue(0);
        assert_eq!(p.common_read(CONFIG_GENERATION, 1) as u8, g1);
        // Every change counts, and it wraps in its 8 bits.
        for _ in 0..300 {
            let before = p.common_read(CONFIG_GENERATION, 1) as u8;
            intr.notify_config();
            assert_ne!(p.common_read(CONFIG_GENERATION, 1) as u8, before);
        }
        // NEEDS_RESET is a configuration change too.
        let before = p.common_read(CONFIG_GENERATION, 1);
        lock(&p.state).status.clone().unwrap().needs_reset();
        assert_ne!(p.common_read(CONFIG_GENERATION, 1), before);
        // Through the PCI_CFG window as well.
        let g = p.common_read(CONFIG_GENERATION, 1) as u32;
        p.window(0, p.caps.common.offset + CONFIG_GENERATION as u32, 1);
        assert_eq!(p.window_read(1), g);
    }
}

#[test]
fn no_msix_message_without_bus_mastering() {
    let mut p = Pci::new();
    p.program_all_vectors_and_enable();
    p.bring_up(F_VERSION_1, &[0], true);
    p.msi.take();
    let intr = p.interrupt();
    // MSI-X messages are memory writes: with Bus Master Enable clear, none go out.
    p.cfg_write(COMMAND, 2, u32::from(COMMAND_MEMORY_SPACE));
    intr.notify_queue(0);
    intr.notify_config();
    assert!(p.msi.triggers().is_empty());
    assert!(!p.intx.level(), "and INTx stays off while MSI-X is enabled");
    p.cfg_write(COMMAND, 2, u32::from(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER));
    intr.notify_queue(0);
    assert_eq!(p.msi.triggers(), vec![1]);
}

#[test]
fn random_config_and_bar_traffic_keeps_the_status_invariants() {
    // Random configuration-space and BAR accesses of every width (the common
    // configuration, ISR, device configuration, notifications, MSI-X table
    // and PBA, the PCI_CFG window, BARs that do not exist), status writes and
    // resets, proper bring-ups, MSI-X on and off, the device interrupting.
    // Invariants: no panic; the status reads 0 after a write of 0; the device
    // is activated only with ACKNOWLEDGE, DRIVER, FEATURES_OK and DRIVER_OK,
    // once per reset, with features it offered including VERSION_1; INTx is
    // never up with the ISR clear, and reading the ISR lowers it; only
    // existing MSI-X vectors are ever signalled.
    let mut rng = XorShift::new(0x9c10_0000_0000_0001);
    let mut p = Pci::new();
    let vectors = QUEUE_SIZES.len() as u16 + 1;
    let mut activated_since_reset = false;
    let mut _drivers = Vec::new();
    let (mut bring_ups, mut resets_seen) = (0u32, 0u32);
    for _ in 0..6000 {
        let activations = p.activations();
        let mut reset_written = false;
        let width = rng.pick(&[1usize, 2, 4, 4, 4, 8, 0, 3, 16]);
        match rng.below(24) {
            0..=3 => {
                let offset = match rng.below(5) {
                    0..=2 => rng.below(0x100) as u16,
                    3 => rng.pick(&[p.caps.msix, p.caps.pci_cfg.pos, p.caps.common.pos]) + rng.below(20) as u16,
                    _ => rng.below(0x1001) as u16,
                };
                let mut d = vec![0u8; width.min(8)];
                p.dev.read_config(offset, &mut d);
            }
            4..=6 => {
                // Writes where they do something: command, BARs, interrupt
                // line, the capabilities (MSI-X control, the PCI_CFG window).
                let offset = match rng.below(4) {
                    0 => COMMAND,
                    1 => 0x10 + 4 * rng.below(6) as u16,
                    2 => rng.pick(&[p.caps.msix + 2, p.caps.pci_cfg.pos + 4, p.caps.pci_cfg.pos + 8]),
                    _ => rng.below(0x100) as u16,
                };
                let v = rng.next_u64().to_le_bytes();
                p.dev.write_config(offset, &v[..width.min(8)]);
            }
            7 => {
                // Through the PCI_CFG window (4.1.4.9): a random BAR access.
                let (bar, off, len) = (rng.below(7) as u8, rng.below(0x7000) as u32, rng.pick(&[0u32, 1, 2, 4, 8]));
                p.window(bar, off, len);
                let data = p.caps.pci_cfg.pos + 16;
                if rng.chance(50) {
                    p.cfg32(data);
                } else {
                    p.cfg_write(data, 4, rng.next_u64() as u32);
                }
            }
            8..=12 => {
                let base = rng.pick(&[0x0u64, 0x1000, 0x2000, 0x3000, 0x4000, 0x6000]);
                let offset = match rng.below(10) {
                    0 => rng.next_u64(),
                    1 => rng.below(0x8000),
                    _ => base + rng.below(0x48),
                };
                let bar = if rng.chance(90) { 0 } else { rng.below(7) as u8 };
                if rng.chance(50) {
                    let mut d = vec![0u8; width];
                    p.dev.read_bar(bar, offset, &mut d);
                } else {
                    let mut d = rng.next_u64().to_le_bytes().to_vec();
                    d.resize(width, 0xff);
                    p.dev.write_bar(bar, offset, &d);
                    reset_written = bar == 0 && offset == DEVICE_STATUS && width == 1 && d[0] == 0;
                }
            }
            13..=15 => {
                let v = random_status(&mut rng);
                p.common_write(DEVICE_STATUS, 1, u64::from(v));
                reset_written = v == 0;
            }
            16 => {
                // From a reset: nothing runs until DRIVER_OK again.
                let features = match rng.below(3) {
                    0 => F_VERSION_1 | (OFFERED & rng.next_u64()),
                    1 => OFFERED & rng.next_u64(),
                    _ => rng.next_u64(),
                };
                p.negotiate(features);
                activated_since_reset = false;
                resets_seen += 1;
            }
            17 | 18 => {
                let features = F_VERSION_1 | (OFFERED & rng.next_u64());
                let with_vectors = rng.chance(50);
                _drivers = p.bring_up(features, &[0, 1], with_vectors);
                bring_ups += 1;
                activated_since_reset = false;
                if rng.chance(50) {
                    p.program_all_vectors_and_enable();
                }
            }
            19 => {
                let (interrupt, status) = {
                    let s = lock(&p.state);
                    (s.interrupt.clone(), s.status.clone())
                };
                if let Some(i) = interrupt {
                    match rng.below(4) {
                        0 | 1 => i.notify_queue(rng.below(4) as u16),
                        2 => i.notify_config(),
                        _ => {
                            if let Some(s) = status {
                                s.needs_reset();
                            }
                        }
                    }
                }
            }
            20 => p.enable_msix(rng.chance(50)),
            21 => {
                let v = rng.below(u64::from(vectors) + 2) as u16;
                let msg = MsiMessage { address: rng.next_u64(), data: rng.next_u64() as u32 };
                if v < vectors {
                    p.program_vector(v, msg);
                }
                p.common_write(rng.pick(&[CONFIG_MSIX_VECTOR, QUEUE_MSIX_VECTOR]), 2, u64::from(v));
            }
            _ => {
                let up = p.intx.level();
                let isr = p.isr();
                assert!(!up || isr != 0, "INTx up with the ISR clear");
                assert!(!p.intx.level(), "INTx still up after the ISR read");
            }
        }

        let status = p.status();
        if reset_written {
            assert_eq!(status, 0, "status after a reset");
            activated_since_reset = false;
            resets_seen += 1;
        }
        let activated = p.activations();
        if activated > activations {
            assert_eq!(activated, activations + 1);
            let all = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
            assert_eq!(status & all, all, "activated with status {status:#x}");
            assert!(!activated_since_reset, "activated twice without a reset");
            activated_since_reset = true;
        }
        if status & FEATURES_OK != 0 {
            let acked = *lock(&p.state).acked.last().expect("FEATURES_OK without acknowledged features");
            assert_eq!(acked & !OFFERED, 0, "acknowledged features not offered");
            assert_ne!(acked & F_VERSION_1, 0);
        } else {
            assert!(!activated_since_reset, "running without FEATURES_OK (status {status:#x})");
        }
        for e in p.msi.take() {
            let v = match e {
                MsiEvent::Update(v, _) | MsiEvent::Trigger(v) => v,
            };
            assert!(v < vectors, "vector {v} of {vectors}: {e:?}");
        }
    }
    p.common_write(DEVICE_STATUS, 1, 0);
    assert_eq!(p.status(), 0);
    assert!(bring_ups > 200 && resets_seen > 300, "{bring_ups} {resets_seen}");
}
