//! virtio-mmio (virtio 1.x section 4.2) driven register by register, as a
//! driver does it: discovery, feature negotiation, queue set-up, DRIVER_OK,
//! notifications, interrupts and reset.

use std::sync::Arc;

use devices::{BusDevice, RecordingIrqLine};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::queue::test_utils::{guest_memory, MockDriver, XorShift};
use crate::transport::mmio::{MmioTransport, MMIO_MAGIC, MMIO_VENDOR_ID};

// Register offsets (virtio 1.x 4.2.2, table "MMIO Device Register Layout").
const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const SHM_SEL: u64 = 0x0ac;
const SHM_LEN_LOW: u64 = 0x0b0;
const SHM_LEN_HIGH: u64 = 0x0b4;
const SHM_BASE_LOW: u64 = 0x0b8;
const SHM_BASE_HIGH: u64 = 0x0bc;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

const INT_VRING: u32 = 1;
const INT_CONFIG: u32 = 2;

/// A driver's view of one virtio-mmio device.
struct Mmio {
    t: MmioTransport,
    state: Shared,
    irq: Arc<RecordingIrqLine>,
    mem: GuestMemoryMmap,
}

impl Mmio {
    fn new() -> Self {
        let (dev, state) = FakeDevice::new(2);
        let mem = guest_memory(MEM_SIZE);
        let irq = Arc::new(RecordingIrqLine::default());
        let t = MmioTransport::new(dev, mem.clone(), irq.clone()).unwrap();
        Mmio { t, state, irq, mem }
    }

    fn read(&mut self, offset: u64) -> u32 {
        let mut d = [0u8; 4];
        self.t.read(offset, &mut d);
        u32::from_le_bytes(d)
    }

    fn write(&mut self, offset: u64, v: u32) {
        self.t.write(offset, &v.to_le_bytes());
    }

    fn status(&mut self) -> u8 {
        self.read(STATUS) as u8
    }

    /// Adds `bits` to the status the way Linux does: read, OR, write back.
    fn add_status(&mut self, bits: u8) {
        let s = self.status();
        self.write(STATUS, u32::from(s | bits));
    }

    fn device_features(&mut self) -> u64 {
        self.write(DEVICE_FEATURES_SEL, 0);
        let lo = self.read(DEVICE_FEATURES);
        self.write(DEVICE_FEATURES_SEL, 1);
        let hi = self.read(DEVICE_FEATURES);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    fn write_driver_features(&mut self, f: u64) {
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, f as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (f >> 32) as u32);
    }

    /// Steps 1-6 of 3.1.1; returns whether FEATURES_OK stuck.
    fn negotiate(&mut self, features: u64) -> bool {
        self.write(STATUS, 0);
        self.add_status(ACKNOWLEDGE);
        self.add_status(DRIVER);
        self.write_driver_features(features);
        self.add_status(FEATURES_OK);
        self.status() & FEATURES_OK != 0
    }

    /// Programs queue `index` with `d`'s layout and enables it (4.2.3.2).
    fn setup_queue(&mut self, index: u32, d: &MockDriver) {
        self.write(QUEUE_SEL, index);
        assert_eq!(self.read(QUEUE_READY), 0, "queue {index} already live");
        let max = self.read(QUEUE_NUM_MAX);
        assert!(u32::from(d.size()) <= max);
        self.write(QUEUE_NUM, u32::from(d.size()));
        self.write(QUEUE_DESC_LOW, d.desc_table() as u32);
        self.write(QUEUE_DESC_HIGH, (d.desc_table() >> 32) as u32);
        self.write(QUEUE_DRIVER_LOW, d.avail_ring() as u32);
        self.write(QUEUE_DRIVER_HIGH, (d.avail_ring() >> 32) as u32);
        self.write(QUEUE_DEVICE_LOW, d.used_ring() as u32);
        self.write(QUEUE_DEVICE_HIGH, (d.used_ring() >> 32) as u32);
        self.write(QUEUE_READY, 1);
        assert_eq!(self.read(QUEUE_READY), 1);
    }

    fn driver(&self, index: usize, size: u16) -> MockDriver {
        MockDriver::new(&self.mem, GuestAddress(queue_base(index)), size)
    }

    /// The whole of 3.1.1 with `queues` enabled; returns their drivers.
    fn bring_up(&mut self, features: u64, queues: &[usize]) -> Vec<MockDriver> {
        assert!(self.negotiate(features));
        let drivers: Vec<MockDriver> = queues.iter().map(|&q| self.driver(q, QUEUE_SIZES[q])).collect();
        for (&q, d) in queues.iter().zip(&drivers) {
            self.setup_queue(q as u32, d);
        }
        self.add_status(DRIVER_OK);
        drivers
    }

    fn activations(&self) -> usize {
        lock(&self.state).activations.len()
    }

    fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        lock(&self.state).interrupt.clone().expect("not activated")
    }
}

#[test]
fn identification_registers() {
    let mut m = Mmio::new();
    assert_eq!(m.read(MAGIC), 0x7472_6976, "\"virt\" (4.2.2.1)");
    assert_eq!(m.read(MAGIC), MMIO_MAGIC);
    assert_eq!(m.read(VERSION), 2, "non-legacy interface (4.2.2.1)");
    assert_eq!(m.read(DEVICE_ID), 2);
    assert_eq!(m.read(VENDOR_ID), MMIO_VENDOR_ID);
    assert_eq!(m.status(), 0);
    assert_eq!(m.read(INTERRUPT_STATUS), 0);
    assert_eq!(m.read(CONFIG_GENERATION), 0);
    // No shared memory regions: length reads as -1 (4.2.2).
    assert_eq!(m.read(SHM_LEN_LOW), u32::MAX);
    assert_eq!(m.read(SHM_LEN_HIGH), u32::MAX);
    // Identification registers are read-only.
    for reg in [MAGIC, VERSION, DEVICE_ID, VENDOR_ID, DEVICE_FEATURES] {
        m.write(reg, 0xdead_beef);
    }
    assert_eq!(m.read(MAGIC), MMIO_MAGIC);
    assert_eq!(m.read(VERSION), 2);
    assert_eq!(m.read(DEVICE_ID), 2);
    assert!(!m.irq.level());
}

#[test]
fn feature_windows() {
    let mut m = Mmio::new();
    assert_eq!(m.device_features(), OFFERED);
    m.write(DEVICE_FEATURES_SEL, 0);
    assert_eq!(m.read(DEVICE_FEATURES), OFFERED as u32);
    m.write(DEVICE_FEATURES_SEL, 1);
    assert_eq!(m.read(DEVICE_FEATURES), (OFFERED >> 32) as u32);
    assert_eq!(m.read(DEVICE_FEATURES), 0b1001, "VERSION_1 and IN_ORDER");
    // Windows beyond 64 bits read as 0.
    for sel in [2, 3, u32::MAX] {
        m.write(DEVICE_FEATURES_SEL, sel);
        assert_eq!(m.read(DEVICE_FEATURES), 0);
    }
    // DriverFeatures is write-only; the two windows are independent.
    m.write(DRIVER_FEATURES_SEL, 1);
    m.write(DRIVER_FEATURES, 1);
    m.write(DRIVER_FEATURES_SEL, 0);
    m.write(DRIVER_FEATURES, F_DEV_5 as u32);
    // A window beyond 64 bits takes nothing.
    m.write(DRIVER_FEATURES_SEL, 2);
    m.write(DRIVER_FEATURES, u32::MAX);
    m.add_status(ACKNOWLEDGE | DRIVER);
    m.add_status(FEATURES_OK);
    assert_ne!(m.status() & FEATURES_OK, 0);
    assert_eq!(lock(&m.state).acked, vec![F_DEV_5 | F_VERSION_1]);
}

#[test]
fn features_ok_needs_version_1() {
    let mut m = Mmio::new();
    assert!(!m.negotiate(F_DEV_1 | F_DEV_5));
    assert_eq!(m.status(), ACKNOWLEDGE | DRIVER, "FEATURES_OK reads back clear (3.1.1 step 6)");
    assert!(lock(&m.state).acked.is_empty());
    // DRIVER_OK without FEATURES_OK does not start the device.
    m.add_status(DRIVER_OK);
    assert_eq!(m.activations(), 0);
}

#[test]
fn features_ok_needs_a_subset_of_the_offer() {
    let mut m = Mmio::new();
    for extra in [1u64 << 0, 1 << 31, 1 << 33, 1 << 63] {
        assert!(!m.negotiate(F_VERSION_1 | extra), "bit {extra:#x} was not offered");
        assert!(lock(&m.state).acked.is_empty());
    }
    // The driver may retry with fewer features without a reset (the spec
    // only says the device fails to set FEATURES_OK).
    m.write_driver_features(F_VERSION_1 | F_DEV_1);
    m.add_status(FEATURES_OK);
    assert_ne!(m.status() & FEATURES_OK, 0);
    // Every offered feature at once is fine too.
    assert!(m.negotiate(OFFERED));
    assert_eq!(lock(&m.state).acked, vec![F_VERSION_1 | F_DEV_1, OFFERED]);
}

#[test]
fn driver_features_are_frozen_after_features_ok() {
    let mut m = Mmio::new();
    assert!(m.negotiate(F_VERSION_1));
    m.write_driver_features(OFFERED);
    // Setting FEATURES_OK again acknowledges nothing new.
    m.add_status(FEATURES_OK);
    assert_eq!(lock(&m.state).acked, vec![F_VERSION_1]);
    let _drivers = m.bring_up_after_negotiation(&[0]);
    let s = lock(&m.state);
    assert!(!s.activations[0][0].queue.event_idx(), "EVENT_IDX was written after FEATURES_OK and must not count");
}

impl Mmio {
    fn bring_up_after_negotiation(&mut self, queues: &[usize]) -> Vec<MockDriver> {
        let drivers: Vec<MockDriver> = queues.iter().map(|&q| self.driver(q, QUEUE_SIZES[q])).collect();
        for (&q, d) in queues.iter().zip(&drivers) {
            self.setup_queue(q as u32, d);
        }
        self.add_status(DRIVER_OK);
        drivers
    }
}

#[test]
fn queue_registers_before_activation() {
    let mut m = Mmio::new();
    for (i, &max) in QUEUE_SIZES.iter().enumerate() {
        m.write(QUEUE_SEL, i as u32);
        assert_eq!(m.read(QUEUE_NUM_MAX), u32::from(max));
        assert_eq!(m.read(QUEUE_READY), 0);
    }
    // Queues that do not exist have QueueNumMax 0 (4.2.2).
    for sel in [3u32, 4, 0xffff, 0x1_0000, 0x1_0001, u32::MAX] {
        m.write(QUEUE_SEL, sel);
        assert_eq!(m.read(QUEUE_NUM_MAX), 0, "QueueSel {sel:#x}");
        assert_eq!(m.read(QUEUE_READY), 0, "QueueSel {sel:#x}");
        // Writes to a missing queue go nowhere.
        m.write(QUEUE_NUM, 2);
        m.write(QUEUE_READY, 1);
        assert_eq!(m.read(QUEUE_READY), 0, "QueueSel {sel:#x}");
    }
    for i in 0..3 {
        m.write(QUEUE_SEL, i);
        assert_eq!(m.read(QUEUE_READY), 0, "queue {i} enabled by an aliased QueueSel");
    }
    // QueueReady goes back to 0 when the driver writes 0 (before DRIVER_OK).
    m.write(QUEUE_SEL, 1);
    m.write(QUEUE_READY, 1);
    assert_eq!(m.read(QUEUE_READY), 1);
    m.write(QUEUE_READY, 0);
    assert_eq!(m.read(QUEUE_READY), 0);
    // Write-only registers read as 0.
    for reg in [QUEUE_NUM, QUEUE_DESC_LOW, QUEUE_NOTIFY, INTERRUPT_ACK, DRIVER_FEATURES] {
        assert_eq!(m.read(reg), 0, "register {reg:#x}");
    }
}

#[test]
fn driver_ok_activates_exactly_the_ready_queues() {
    let mut m = Mmio::new();
    // Queues 0 and 2 enabled, queue 1 left alone; queue 2 at a reduced size
    // and with 64-bit addresses split into both halves.
    assert!(m.negotiate(F_VERSION_1 | F_EVENT_IDX));
    let d0 = m.driver(0, 8);
    let d2 = m.driver(2, 2);
    m.setup_queue(0, &d0);
    m.setup_queue(2, &d2);
    assert_eq!(m.activations(), 0, "nothing starts before DRIVER_OK");
    m.add_status(DRIVER_OK);
    assert_eq!(m.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    let s = lock(&m.state);
    assert_eq!(s.activations.len(), 1);
    let queues = &s.activations[0];
    assert_eq!(queues.len(), 2);
    for (aq, d) in queues.iter().zip([&d0, &d2]) {
        assert!(aq.queue.ready());
        assert_eq!(aq.queue.size(), d.size());
        assert_eq!(aq.queue.desc_table(), d.desc_table());
        assert_eq!(aq.queue.avail_ring(), d.avail_ring());
        assert_eq!(aq.queue.used_ring(), d.used_ring());
        assert!(aq.queue.event_idx(), "EVENT_IDX was negotiated");
        assert!(aq.queue.is_valid(&m.mem));
    }
    assert_eq!(queues[0].queue.max_size(), QUEUE_SIZES[0]);
    assert_eq!(queues[1].queue.max_size(), QUEUE_SIZES[2]);
    assert_eq!(s.acked, vec![F_VERSION_1 | F_EVENT_IDX]);
    assert!(s.interrupt.is_some() && s.status.is_some());
}

#[test]
fn driver_ok_with_every_bit_at_once() {
    // A driver may write the final status in one go; the device starts once.
    let mut m = Mmio::new();
    m.write_driver_features(F_VERSION_1);
    let d = m.driver(1, QUEUE_SIZES[1]);
    m.setup_queue(1, &d);
    m.write(STATUS, u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK));
    assert_eq!(m.activations(), 1);
    m.add_status(DRIVER_OK);
    assert_eq!(m.activations(), 1, "DRIVER_OK again does not re-activate");
}

#[test]
fn failed_status_blocks_activation() {
    let mut m = Mmio::new();
    assert!(m.negotiate(F_VERSION_1));
    m.add_status(FAILED);
    m.add_status(DRIVER_OK);
    assert_eq!(m.activations(), 0);
}

#[test]
fn queue_notify_writes_the_queue_eventfd() {
    let mut m = Mmio::new();
    m.bring_up(F_VERSION_1, &[0, 1, 2]);
    // Before any notification nothing is pending.
    {
        let s = lock(&m.state);
        assert!(s.activations[0].iter().all(|q| !signalled(&q.notify)));
    }
    m.write(QUEUE_NOTIFY, 1);
    {
        let s = lock(&m.state);
        let q = &s.activations[0];
        assert!(!signalled(&q[0].notify));
        assert!(signalled(&q[1].notify));
        assert!(!signalled(&q[2].notify));
    }
    // The transport's own eventfds are the same ones (for ioeventfd registration).
    m.write(QUEUE_NOTIFY, 2);
    assert!(signalled(&m.t.common().notify_events()[2]));
    // Queues that do not exist are ignored.
    m.write(QUEUE_NOTIFY, 3);
    m.write(QUEUE_NOTIFY, u32::MAX);
    let s = lock(&m.state);
    assert!(s.activations[0].iter().all(|q| !signalled(&q.notify)));
}

#[test]
fn notification_reaches_a_device_that_can_pop_the_chain() {
    let mut m = Mmio::new();
    let mut drivers = m.bring_up(F_VERSION_1, &[0]);
    let head = drivers[0].add_buffers(&[b"hello"], &[16]);
    m.write(QUEUE_NOTIFY, 0);
    let mut s = lock(&m.state);
    let mem = s.memory.clone().unwrap();
    let aq = &mut s.activations[0][0];
    assert!(signalled(&aq.notify));
    let chain = aq.queue.pop(&mem).unwrap().expect("a chain is available");
    assert_eq!(chain.head_index, head);
    assert_eq!(chain.read_all(&mem).unwrap(), b"hello");
    assert_eq!(chain.writable_len(), 16);
}

#[test]
fn interrupt_status_and_ack_drive_the_line() {
    let mut m = Mmio::new();
    m.bring_up(F_VERSION_1, &[0]);
    let intr = m.interrupt();
    assert!(!m.irq.level());
    intr.notify_queue(0);
    assert_eq!(m.read(INTERRUPT_STATUS), INT_VRING);
    assert!(m.irq.level());
    intr.notify_config();
    assert_eq!(m.read(INTERRUPT_STATUS), INT_VRING | INT_CONFIG);
    assert_eq!(m.irq.rising_edges(), 1, "the line stays asserted");
    // Reading the status does not acknowledge it.
    assert_eq!(m.read(INTERRUPT_STATUS), INT_VRING | INT_CONFIG);
    // Acknowledging one bit leaves the other asserting the line (4.2.2.1).
    m.write(INTERRUPT_ACK, INT_VRING);
    assert_eq!(m.read(INTERRUPT_STATUS), INT_CONFIG);
    assert!(m.irq.level());
    m.write(INTERRUPT_ACK, INT_CONFIG);
    assert_eq!(m.read(INTERRUPT_STATUS), 0);
    assert!(!m.irq.level());
    // A new event asserts the line again.
    intr.notify_queue(0);
    assert!(m.irq.level());
    assert_eq!(m.irq.rising_edges(), 2);
    // Acknowledging bits that are not set changes nothing.
    m.write(INTERRUPT_ACK, INT_CONFIG | 0x10);
    assert_eq!(m.read(INTERRUPT_STATUS), INT_VRING);
    assert!(m.irq.level());
    m.write(INTERRUPT_ACK, u32::MAX);
    assert!(!m.irq.level());
    // InterruptStatus is read-only.
    m.write(INTERRUPT_STATUS, INT_VRING);
    assert_eq!(m.read(INTERRUPT_STATUS), 0);
    assert!(!m.irq.level());
}

#[test]
fn status_zero_resets_everything() {
    let mut m = Mmio::new();
    m.bring_up(F_VERSION_1 | F_EVENT_IDX, &[0, 2]);
    let intr = m.interrupt();
    intr.notify_queue(0);
    intr.notify_config();
    // A notification that arrived before the reset must not survive it.
    m.write(QUEUE_NOTIFY, 0);
    m.write(QUEUE_SEL, 2);
    m.write(DEVICE_FEATURES_SEL, 1);
    assert!(m.irq.level());

    m.write(STATUS, 0);
    assert_eq!(m.status(), 0, "2.1.2: status is 0 after reset");
    assert_eq!(lock(&m.state).resets, 1);
    // Upon reset InterruptStatus and every QueueReady are cleared (4.2.2.1).
    assert_eq!(m.read(INTERRUPT_STATUS), 0);
    assert!(!m.irq.level());
    let common = m.t.common();
    assert!(!common.activated());
    assert!(!signalled(&common.notify_events()[0]), "stale notification dropped");
    assert_eq!(common.device_features_select, 0);
    assert_eq!(common.queue_select, 0);
    assert_eq!(common.driver_features_window(), 0);
    m.write(DRIVER_FEATURES_SEL, 1);
    assert_eq!(m.t.common().driver_features_window(), 0);
    for (i, &max) in QUEUE_SIZES.iter().enumerate() {
        m.write(QUEUE_SEL, i as u32);
        assert_eq!(m.read(QUEUE_READY), 0);
        assert_eq!(m.read(QUEUE_NUM_MAX), u32::from(max));
    }
    // Every queue is back to its reset state (size = max, addresses 0).
    for (i, &max) in QUEUE_SIZES.iter().enumerate() {
        m.write(QUEUE_SEL, i as u32);
        let q = m.t.common().selected_queue().unwrap();
        assert_eq!(
            (q.size(), q.desc_table(), q.avail_ring(), q.used_ring(), q.ready()),
            (max, 0, 0, 0, false),
            "queue {i}"
        );
        assert!(!q.event_idx());
    }
    // The device can be brought up again, and resetting twice is harmless.
    m.write(STATUS, 0);
    assert_eq!(lock(&m.state).resets, 1, "an idle device is not reset again");
    m.bring_up(F_VERSION_1, &[1]);
    let s = lock(&m.state);
    assert_eq!(s.activations.len(), 2);
    assert_eq!(s.activations[1].len(), 1);
    assert_eq!(s.activations[1][0].queue.max_size(), QUEUE_SIZES[1]);
    assert!(!s.activations[1][0].queue.event_idx());
}

#[test]
fn reset_clears_the_line_even_without_activation() {
    let mut m = Mmio::new();
    // An invalid queue makes DRIVER_OK fail, which raises a config interrupt.
    assert!(m.negotiate(F_VERSION_1));
    m.write(QUEUE_SEL, 0);
    m.write(QUEUE_NUM, 3);
    m.write(QUEUE_READY, 1);
    m.add_status(DRIVER_OK);
    assert!(m.irq.level());
    m.write(STATUS, 0);
    assert_eq!(m.status(), 0);
    assert_eq!(m.read(INTERRUPT_STATUS), 0);
    assert!(!m.irq.level());
}

#[test]
fn config_space_reads_of_every_width() {
    let mut m = Mmio::new();
    let mut b = [0u8; 1];
    m.t.read(CONFIG + 3, &mut b);
    assert_eq!(b, [0x44]);
    let mut h = [0u8; 2];
    m.t.read(CONFIG + 2, &mut h);
    assert_eq!(u16::from_le_bytes(h), 0x4433);
    let mut w = [0u8; 4];
    m.t.read(CONFIG + 4, &mut w);
    assert_eq!(u32::from_le_bytes(w), 0x8877_6655);
    assert_eq!(m.read(CONFIG), 0x4433_2211);
    // Past the device's configuration: zeros (and bytes straddling the end).
    m.t.read(CONFIG + 6, &mut w);
    assert_eq!(w, [0x77, 0x88, 0, 0]);
    assert_eq!(m.read(CONFIG + 0x100), 0);
    assert_eq!(m.read(0xffc), 0);
    // Writes reach the device at the offset relative to the config space.
    m.t.write(CONFIG + 1, &[0xaa]);
    m.t.write(CONFIG + 2, &0xbbccu16.to_le_bytes());
    let s = lock(&m.state);
    assert_eq!(s.config_writes, vec![(1, vec![0xaa]), (2, vec![0xcc, 0xbb])]);
    drop(s);
    assert_eq!(m.read(CONFIG), 0xbbcc_aa11);
}

#[test]
fn non_32_bit_register_accesses_are_ignored() {
    let mut m = Mmio::new();
    // Reads of the wrong width or alignment return all ones, never a register.
    for (offset, len) in [(MAGIC, 1), (MAGIC, 2), (MAGIC, 8), (MAGIC + 1, 4), (STATUS + 2, 2), (VERSION, 3)] {
        let mut d = vec![0u8; len];
        m.t.read(offset, &mut d);
        assert!(d.iter().all(|&b| b == 0xff), "{len}-byte read at {offset:#x}: {d:x?}");
    }
    // Writes of the wrong width change nothing.
    m.t.write(STATUS, &[ACKNOWLEDGE]);
    m.t.write(STATUS, &u16::from(ACKNOWLEDGE).to_le_bytes());
    m.t.write(STATUS, &u64::from(ACKNOWLEDGE).to_le_bytes());
    m.t.write(STATUS + 1, &u32::from(ACKNOWLEDGE).to_le_bytes());
    assert_eq!(m.status(), 0);
    m.t.write(QUEUE_SEL, &[1]);
    m.t.write(DEVICE_FEATURES_SEL, &[1, 0]);
    assert_eq!(m.read(QUEUE_NUM_MAX), u32::from(QUEUE_SIZES[0]));
    assert_eq!(m.read(DEVICE_FEATURES), OFFERED as u32);
    // Bring the device up, then check a short write to Status does not reset it.
    m.bring_up(F_VERSION_1, &[0]);
    m.t.write(STATUS, &[0]);
    m.t.write(STATUS, &[0, 0]);
    assert_eq!(m.status() & DRIVER_OK, DRIVER_OK);
    assert_eq!(lock(&m.state).resets, 0);
    // Empty and huge accesses do not panic.
    m.t.read(STATUS, &mut []);
    m.t.write(STATUS, &[]);
    let mut big = [0u8; 16];
    m.t.read(STATUS, &mut big);
    m.t.write(QUEUE_NOTIFY, &big);
    for off in [0x0fd, 0x0ff, 0x1000, 0xffff_ffff, u64::MAX - 3, u64::MAX] {
        for len in [0usize, 1, 2, 3, 4, 8] {
            let mut d = vec![0u8; len];
            m.t.read(off, &mut d);
            m.t.write(off, &d);
        }
    }
    assert_eq!(m.status() & DRIVER_OK, DRIVER_OK);
}

#[test]
fn queue_registers_are_ignored_after_driver_ok() {
    let mut m = Mmio::new();
    let drivers = m.bring_up(F_VERSION_1, &[0]);
    m.write(QUEUE_SEL, 0);
    m.write(QUEUE_NUM, 2);
    m.write(QUEUE_DESC_LOW, 0x8000);
    m.write(QUEUE_DESC_HIGH, 1);
    m.write(QUEUE_DRIVER_LOW, 0x9000);
    m.write(QUEUE_DEVICE_LOW, 0xa000);
    m.write(QUEUE_READY, 2);
    assert_eq!(m.read(QUEUE_READY), 1);
    // An idle queue cannot be brought up either.
    m.write(QUEUE_SEL, 1);
    m.write(QUEUE_READY, 1);
    assert_eq!(m.read(QUEUE_READY), 0);
    m.write(QUEUE_SEL, 0);
    let q = m.t.common().selected_queue().unwrap().clone();
    assert_eq!(q.size(), drivers[0].size());
    assert_eq!(q.desc_table(), drivers[0].desc_table());
    assert_eq!(q.avail_ring(), drivers[0].avail_ring());
    assert_eq!(q.used_ring(), drivers[0].used_ring());
    assert_eq!(m.activations(), 1);
}

#[test]
fn queue_ready_0_after_driver_ok_stops_the_running_queue() {
    // 4.2.2.2: "To stop using the queue the driver MUST write zero (0x0) to
    // QueueReady and MUST read the value back to ensure synchronization."
    let mut m = Mmio::new();
    let mut drivers = m.bring_up(F_VERSION_1, &[0, 1]);
    let mem = drivers[0].memory().clone();
    drivers[0].add_buffers(&[b"before"], &[]);
    m.write(QUEUE_SEL, 0);
    m.write(QUEUE_READY, 0);
    assert_eq!(m.read(QUEUE_READY), 0, "reads back 0: the driver's synchronization");
    drivers[0].add_buffers(&[b"after"], &[]);
    // The running device's copy of queue 0 pops nothing more; queue 1 still works.
    let mut s = lock(&m.state);
    let active = s.activations.last_mut().expect("activated");
    assert!(active[0].queue.pop(&mem).unwrap().is_none());
    drivers[1].add_buffers(&[b"q1"], &[]);
    assert!(active[1].queue.pop(&mem).unwrap().is_some());
    drop(s);
    // Writing 1 does not bring it back; a reset does.
    m.write(QUEUE_READY, 1);
    assert_eq!(m.read(QUEUE_READY), 0);
    m.write(STATUS, 0);
    let q = m.t.common().selected_queue().unwrap();
    assert!(!q.stopped() && !q.ready());
}

/// Sets up queue 0 with `tweak` applied after a valid layout, then DRIVER_OK.
fn driver_ok_with_bad_queue(tweak: impl FnOnce(&mut Mmio)) -> Mmio {
    let mut m = Mmio::new();
    assert!(m.negotiate(F_VERSION_1));
    let d = m.driver(0, QUEUE_SIZES[0]);
    m.setup_queue(0, &d);
    let d1 = m.driver(1, QUEUE_SIZES[1]);
    m.setup_queue(1, &d1);
    m.write(QUEUE_SEL, 0);
    tweak(&mut m);
    m.add_status(DRIVER_OK);
    m
}

#[test]
fn invalid_queue_at_driver_ok_sets_needs_reset() {
    let cases: Vec<(&str, Box<dyn FnOnce(&mut Mmio)>)> = vec![
        ("size 3", Box::new(|m| m.write(QUEUE_NUM, 3))),
        ("size 0", Box::new(|m| m.write(QUEUE_NUM, 0))),
        ("size above QueueNumMax", Box::new(|m| m.write(QUEUE_NUM, 32))),
        ("size 0x10010 (truncates to 16)", Box::new(|m| m.write(QUEUE_NUM, 0x1_0010))),
        ("descriptors past memory", Box::new(|m| m.write(QUEUE_DESC_LOW, MEM_SIZE as u32 - 0x80))),
        ("descriptors above 4 GiB", Box::new(|m| m.write(QUEUE_DESC_HIGH, 1))),
        ("avail ring past memory", Box::new(|m| m.write(QUEUE_DRIVER_HIGH, 0x8000_0000))),
        (
            "used ring past memory",
            Box::new(|m| {
                m.write(QUEUE_DEVICE_LOW, 0xffff_fff0);
                m.write(QUEUE_DEVICE_HIGH, 0xffff_ffff);
            }),
        ),
        ("misaligned descriptors", Box::new(|m| m.write(QUEUE_DESC_LOW, queue_base(0) as u32 + 8))),
        ("misaligned used ring", Box::new(|m| m.write(QUEUE_DEVICE_LOW, 0x2002))),
    ];
    for (what, tweak) in cases {
        let mut m = driver_ok_with_bad_queue(tweak);
        assert_eq!(m.activations(), 0, "{what}: device started");
        assert_eq!(m.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | NEEDS_RESET, "{what}");
        // DEVICE_NEEDS_RESET after DRIVER_OK comes with a configuration
        // change notification (2.1.2).
        assert_eq!(m.read(INTERRUPT_STATUS), INT_CONFIG, "{what}");
        assert!(m.irq.level(), "{what}");
        // The driver recovers with a reset.
        m.write(INTERRUPT_ACK, INT_CONFIG);
        m.write(STATUS, 0);
        assert_eq!(m.status(), 0, "{what}");
        assert_eq!(lock(&m.state).resets, 0, "{what}: never activated");
        m.bring_up(F_VERSION_1, &[0]);
        assert_eq!(m.activations(), 1, "{what}: bring-up after reset");
    }
}

#[test]
fn failed_activation_sets_needs_reset() {
    let mut m = Mmio::new();
    lock(&m.state).fail_activation = true;
    m.bring_up(F_VERSION_1, &[0]);
    assert_ne!(m.status() & NEEDS_RESET, 0);
    assert_eq!(m.read(INTERRUPT_STATUS), INT_CONFIG);
    assert!(m.irq.level());
}

#[test]
fn device_reported_error_sets_needs_reset() {
    let mut m = Mmio::new();
    m.bring_up(F_VERSION_1, &[0]);
    let sink = lock(&m.state).status.clone().unwrap();
    sink.needs_reset();
    assert_eq!(m.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | NEEDS_RESET);
    assert_eq!(m.read(INTERRUPT_STATUS), INT_CONFIG);
    assert!(m.irq.level());
    m.write(STATUS, 0);
    assert_eq!(m.status(), 0);
    assert_eq!(lock(&m.state).resets, 1);
    assert!(!m.irq.level());
}

#[test]
fn status_write_with_high_bits_is_not_a_reset_that_keeps_the_interrupt() {
    // Status is a 32-bit register with the status in its low byte. Whatever a
    // write with only reserved bits set does, it must not reset the device
    // while leaving InterruptStatus set: upon reset the device clears every
    // InterruptStatus bit (4.2.2.1).
    let mut m = Mmio::new();
    m.bring_up(F_VERSION_1, &[0]);
    m.interrupt().notify_queue(0);
    m.write(STATUS, 0x100);
    if m.status() == 0 {
        assert_eq!(m.read(INTERRUPT_STATUS), 0);
        assert!(!m.irq.level());
    }
}

#[test]
fn shared_memory_regions_do_not_exist() {
    // 4.2.2: reading SHMLen and SHMBase of a nonexistent region returns
    // 0xffffffffffffffff, whatever SHMSel names.
    let mut m = Mmio::new();
    for sel in [0u32, 1, 0xff, u32::MAX] {
        m.write(SHM_SEL, sel);
        for reg in [SHM_LEN_LOW, SHM_LEN_HIGH, SHM_BASE_LOW, SHM_BASE_HIGH] {
            assert_eq!(m.read(reg), u32::MAX, "register {reg:#x} with SHMSel {sel:#x}");
        }
        assert_eq!(m.read(SHM_SEL), 0, "SHMSel is write-only");
    }
    // The registers are read-only.
    m.write(SHM_BASE_LOW, 0);
    m.write(SHM_BASE_HIGH, 0);
    assert_eq!(m.read(SHM_BASE_LOW), u32::MAX);
    assert_eq!(m.read(SHM_BASE_HIGH), u32::MAX);
}

#[test]
fn driver_ok_without_queues_reads_back_0x0f() {
    let mut m = Mmio::new();
    // Devices refuse to start without queues, as real ones do.
    lock(&m.state).fail_activation = true;
    assert!(m.negotiate(F_VERSION_1));
    m.add_status(DRIVER_OK);
    assert_eq!(m.status(), 0x0f);
    assert_eq!(m.activations(), 0);
    assert_eq!(m.read(INTERRUPT_STATUS), 0);
    assert!(!m.irq.level());
    assert_eq!(m.read(CONFIG_GENERATION), 0);
    assert!(!m.t.common().activated());
    // Queue registers are read-only after DRIVER_OK, and DRIVER_OK again
    // starts nothing.
    m.write(QUEUE_SEL, 0);
    m.write(QUEUE_READY, 1);
    assert_eq!(m.read(QUEUE_READY), 0);
    m.add_status(DRIVER_OK);
    assert_eq!(m.status(), 0x0f);
    assert_eq!(m.activations(), 0);
    // Reset, then a real bring-up.
    m.write(STATUS, 0);
    assert_eq!(m.status(), 0);
    assert_eq!(lock(&m.state).resets, 0, "never activated");
    lock(&m.state).fail_activation = false;
    m.bring_up(F_VERSION_1, &[1]);
    assert_eq!(m.status(), 0x0f);
    assert_eq!(m.activations(), 1);
    m.write(STATUS, 0);
    assert_eq!(lock(&m.state).resets, 1);
}

#[test]
fn queue_num_is_checked_at_driver_ok() {
    // QueueNum is write-only: the device does not present it, so a bad value
    // is caught when the driver sets DRIVER_OK (NEEDS_RESET), not at the write.
    for bad in [0u32, 5, 32, 0x1_0000, u32::MAX] {
        let mut m = Mmio::new();
        assert!(m.negotiate(F_VERSION_1));
        let d = m.driver(0, QUEUE_SIZES[0]);
        m.setup_queue(0, &d);
        m.write(QUEUE_NUM, bad);
        assert_eq!(m.read(QUEUE_NUM), 0);
        assert_eq!(m.read(QUEUE_NUM_MAX), u32::from(QUEUE_SIZES[0]));
        m.add_status(DRIVER_OK);
        assert_eq!(m.activations(), 0, "QueueNum {bad:#x}");
        assert_ne!(m.status() & NEEDS_RESET, 0, "QueueNum {bad:#x}");
    }
}

#[test]
fn config_generation_changes_with_each_configuration_change() {
    let mut m = Mmio::new();
    m.bring_up(F_VERSION_1, &[0]);
    let g0 = m.read(CONFIG_GENERATION);
    let intr = m.interrupt();
    assert_eq!(m.read(CONFIG), 0x4433_2211);
    lock(&m.state).config[0] = 0x99;
    intr.notify_config();
    let g1 = m.read(CONFIG_GENERATION);
    assert_ne!(g1, g0);
    assert_eq!(m.read(CONFIG_GENERATION), g1, "stable while nothing changes");
    assert_eq!(m.read(INTERRUPT_STATUS), INT_CONFIG);
    intr.notify_queue(0);
    assert_eq!(m.read(CONFIG_GENERATION), g1, "queue interrupts leave it alone");
    lock(&m.state).status.clone().unwrap().needs_reset();
    assert_ne!(m.read(CONFIG_GENERATION), g1, "NEEDS_RESET is a configuration change");
}

#[test]
fn balloon_target_change_changes_config_generation() {
    // The balloon's host-side target change is the run-time configuration
    // change there is: num_pages changes, and so must config_generation.
    use crate::balloon::Balloon;
    let (balloon, control) = Balloon::new(false);
    let mem = guest_memory(MEM_SIZE);
    let irq = Arc::new(RecordingIrqLine::default());
    let mut m = Mmio {
        t: MmioTransport::new(Box::new(balloon), mem.clone(), irq.clone()).unwrap(),
        // (Unused: the device is the real balloon, not the fake.)
        state: FakeDevice::new(5).1,
        irq,
        mem,
    };
    assert!(m.negotiate(F_VERSION_1));
    let d = m.driver(0, 64);
    m.setup_queue(0, &d);
    m.add_status(DRIVER_OK);
    assert_eq!(m.status(), 0x0f);
    assert!(m.t.common().activated());
    let g0 = m.read(CONFIG_GENERATION);
    assert_eq!(m.read(CONFIG), 0, "num_pages");
    control.set_target_pages(100);
    assert_eq!(m.read(INTERRUPT_STATUS), INT_CONFIG);
    let g1 = m.read(CONFIG_GENERATION);
    assert_ne!(g1, g0);
    assert_eq!(m.read(CONFIG), 100);
    assert_eq!(m.read(CONFIG_GENERATION), g1);
    control.set_target_pages(50);
    assert_ne!(m.read(CONFIG_GENERATION), g1);
    assert_eq!(m.read(CONFIG), 50);
    m.write(STATUS, 0);
    assert_eq!(m.status(), 0);
}

/// Register offsets the random traffic aims at.
const REGISTERS: [u64; 29] = [
    MAGIC,
    VERSION,
    DEVICE_ID,
    VENDOR_ID,
    DEVICE_FEATURES,
    DEVICE_FEATURES_SEL,
    DRIVER_FEATURES,
    DRIVER_FEATURES_SEL,
    QUEUE_SEL,
    QUEUE_NUM_MAX,
    QUEUE_NUM,
    QUEUE_READY,
    QUEUE_NOTIFY,
    INTERRUPT_STATUS,
    INTERRUPT_ACK,
    STATUS,
    QUEUE_DESC_LOW,
    QUEUE_DESC_HIGH,
    QUEUE_DRIVER_LOW,
    QUEUE_DRIVER_HIGH,
    QUEUE_DEVICE_LOW,
    QUEUE_DEVICE_HIGH,
    SHM_SEL,
    SHM_LEN_LOW,
    SHM_LEN_HIGH,
    SHM_BASE_LOW,
    SHM_BASE_HIGH,
    CONFIG_GENERATION,
    CONFIG,
];

#[test]
fn random_register_traffic_keeps_the_status_invariants() {
    // Random reads and writes of every width at registers, next to them,
    // in the configuration space and anywhere; status writes (resets
    // included); proper bring-ups in between; the device interrupting and
    // asking for a reset. Invariants: no panic; after writing 0 to the status
    // it reads 0 with no interrupt pending; the device is activated only with
    // ACKNOWLEDGE, DRIVER, FEATURES_OK and DRIVER_OK set, once per reset, with
    // features it offered including VERSION_1; FEATURES_OK only with such
    // features acknowledged; the line is up exactly while InterruptStatus is
    // not 0.
    let mut rng = XorShift::new(0x3310_0000_0000_0001);
    let mut m = Mmio::new();
    let mut activated_since_reset = false;
    let mut _drivers = Vec::new();
    let (mut bring_ups, mut resets_seen) = (0u32, 0u32);
    for _ in 0..6000 {
        let activations = m.activations();
        let device_resets = lock(&m.state).resets;
        let mut reset_written = false;
        let offset = match rng.below(10) {
            0..=5 => rng.pick(&REGISTERS),
            6 => rng.pick(&REGISTERS) + 1 + rng.below(3),
            7 => CONFIG + rng.below(16),
            8 => rng.below(0x1000),
            _ => u64::MAX - rng.below(8),
        };
        let width = if rng.chance(80) { 4 } else { rng.below(9) as usize };
        match rng.below(20) {
            0..=6 => {
                let mut d = vec![0u8; width];
                m.t.read(offset, &mut d);
                if offset < CONFIG && (width != 4 || offset % 4 != 0) {
                    assert!(d.iter().all(|&b| b == 0xff), "odd register read at {offset:#x}");
                }
            }
            7..=11 => {
                let v = match rng.below(4) {
                    0 => 0,
                    1 => 1,
                    2 => rng.below(4),
                    _ => rng.next_u64(),
                };
                let d = &v.to_le_bytes()[..width.min(8)];
                let mut d = d.to_vec();
                d.resize(width, 0);
                m.t.write(offset, &d);
                reset_written = offset == STATUS && width == 4 && d[0] == 0;
            }
            12..=14 => {
                let v = random_status(&mut rng);
                m.write(STATUS, u32::from(v));
                reset_written = v == 0;
            }
            15 => {
                let features = match rng.below(3) {
                    0 => F_VERSION_1 | (OFFERED & rng.next_u64()),
                    1 => OFFERED & rng.next_u64(),
                    _ => rng.next_u64(),
                };
                // From a reset: nothing runs until DRIVER_OK again.
                let accepted = m.negotiate(features);
                activated_since_reset = false;
                resets_seen += 1;
                if rng.chance(50) {
                    // Queues and DRIVER_OK whether or not FEATURES_OK stuck.
                    _drivers = m.bring_up_after_negotiation(&[0, 1]);
                    assert_eq!(m.activations() > activations, accepted);
                }
            }
            16 => {
                // A proper bring-up from a reset.
                let features = F_VERSION_1 | (OFFERED & rng.next_u64());
                _drivers = m.bring_up(features, &[0, 1]);
                bring_ups += 1;
                assert_ne!(m.status() & DRIVER_OK, 0);
                // bring_up starts with a reset.
                activated_since_reset = false;
            }
            17 => {
                // The device side: interrupts and NEEDS_RESET.
                let (interrupt, status) = {
                    let s = lock(&m.state);
                    (s.interrupt.clone(), s.status.clone())
                };
                if let Some(i) = interrupt {
                    match rng.below(3) {
                        0 => i.notify_queue(rng.below(4) as u16),
                        1 => i.notify_config(),
                        _ => {
                            if let Some(s) = status {
                                s.needs_reset();
                            }
                        }
                    }
                }
            }
            18 => {
                m.write(QUEUE_SEL, rng.below(4) as u32);
                m.write(QUEUE_READY, 0);
            }
            _ => m.write(INTERRUPT_ACK, rng.next_u64() as u32),
        }

        let status = m.status();
        if reset_written {
            assert_eq!((status, m.read(INTERRUPT_STATUS)), (0, 0), "status and interrupts after a reset");
            activated_since_reset = false;
            resets_seen += 1;
        }
        let activated = m.activations();
        if activated > activations {
            assert_eq!(activated, activations + 1);
            let all = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
            assert_eq!(status & all, all, "activated with status {status:#x}");
            assert!(!activated_since_reset, "activated twice without a reset");
            activated_since_reset = true;
        }
        if status & FEATURES_OK != 0 {
            let acked = *lock(&m.state).acked.last().expect("FEATURES_OK without acknowledged features");
            assert_eq!(acked & !OFFERED, 0, "acknowledged features not offered");
            assert_ne!(acked & F_VERSION_1, 0);
        }
        if status & FEATURES_OK == 0 {
            assert!(!activated_since_reset, "running without FEATURES_OK (status {status:#x})");
        }
        let device_resets_now = lock(&m.state).resets;
        assert!(device_resets_now - device_resets <= 1);
        assert_eq!(m.irq.level(), m.read(INTERRUPT_STATUS) != 0, "line and InterruptStatus disagree");
    }
    // A status write of 0 through the plain register path reads back 0.
    m.write(STATUS, 0);
    assert_eq!((m.status(), m.read(INTERRUPT_STATUS), m.irq.level()), (0, 0, false));
    assert!(bring_ups > 100 && resets_seen > 300, "{bring_ups} {resets_seen}");
}
