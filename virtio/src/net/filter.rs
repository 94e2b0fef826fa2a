//! Which frames the guest asked for: the receive filter of virtio 1.x
//! 5.1.6.5.1 (RX mode: PROMISC, ALLMULTI, and with CTRL_RX_EXTRA ALLUNI,
//! NOMULTI, NOUNI, NOBCAST) and 5.1.6.5.2 (the unicast and multicast MAC
//! tables). The worker asks [`RxFilter::accepts`] about every frame the
//! backend returns, before it takes a receive buffer.
//!
//! Defaults (also after a reset, which builds a new worker and so a new
//! filter): promiscuous, no flags, empty tables, as QEMU does. A driver that
//! never uses the control queue gets every frame; Linux turns promiscuous
//! mode off and sends its MAC tables when the interface comes up.

use virtio_bindings::virtio_net::*;

/// Addresses kept per table. A table with more entries is not stored: the
/// device then accepts every address of its kind (unicast or multicast), which
/// the spec allows ("it can ... silently switch to allmulti or promiscuous
/// mode if it is given too many addresses"). QEMU keeps 64 for both tables
/// together; rvmm keeps 64 for each, so the filter stays fixed-size.
pub const MAC_TABLE_ENTRIES: usize = 64;

const BROADCAST: [u8; 6] = [0xff; 6];

/// One MAC table of VIRTIO_NET_CTRL_MAC_TABLE_SET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacTable {
    macs: [[u8; 6]; MAC_TABLE_ENTRIES],
    len: usize,
    /// The driver sent more than [`MAC_TABLE_ENTRIES`]: accept all of this kind.
    overflow: bool,
}

impl Default for MacTable {
    fn default() -> Self {
        MacTable { macs: [[0; 6]; MAC_TABLE_ENTRIES], len: 0, overflow: false }
    }
}

impl MacTable {
    /// The stored addresses.
    pub fn entries(&self) -> &[[u8; 6]] {
        &self.macs[..self.len]
    }

    /// Whether the driver gave more addresses than the table keeps.
    pub fn overflow(&self) -> bool {
        self.overflow
    }

    /// Whether `mac` passes this table (a small linear search).
    fn matches(&self, mac: &[u8; 6]) -> bool {
        self.overflow || self.entries().contains(mac)
    }
}

/// The receive filter's state; see the module documentation for the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFilter {
    promisc: bool,
    allmulti: bool,
    alluni: bool,
    nomulti: bool,
    nouni: bool,
    nobcast: bool,
    /// The device's MAC (the worker keeps it in step with the shared one).
    mac: [u8; 6],
    unicast: MacTable,
    multicast: MacTable,
}

impl RxFilter {
    /// The reset state for a device whose MAC is `mac`.
    pub fn new(mac: [u8; 6]) -> Self {
        RxFilter {
            promisc: true,
            allmulti: false,
            alluni: false,
            nomulti: false,
            nouni: false,
            nobcast: false,
            mac,
            unicast: MacTable::default(),
            multicast: MacTable::default(),
        }
    }

    /// Whether promiscuous mode is on.
    pub fn promisc(&self) -> bool {
        self.promisc
    }

    /// Follows a VIRTIO_NET_CTRL_MAC_ADDR_SET.
    pub fn set_mac(&mut self, mac: [u8; 6]) {
        self.mac = mac;
    }

    /// Sets one VIRTIO_NET_CTRL_RX switch; false for an unknown command.
    /// (Whether the command's feature was negotiated is the caller's check.)
    pub fn set_rx_mode(&mut self, cmd: u32, on: bool) -> bool {
        let flag = match cmd {
            VIRTIO_NET_CTRL_RX_PROMISC => &mut self.promisc,
            VIRTIO_NET_CTRL_RX_ALLMULTI => &mut self.allmulti,
            VIRTIO_NET_CTRL_RX_ALLUNI => &mut self.alluni,
            VIRTIO_NET_CTRL_RX_NOMULTI => &mut self.nomulti,
            VIRTIO_NET_CTRL_RX_NOUNI => &mut self.nouni,
            VIRTIO_NET_CTRL_RX_NOBCAST => &mut self.nobcast,
            _ => return false,
        };
        *flag = on;
        true
    }

    /// Replaces both tables (a VIRTIO_NET_CTRL_MAC_TABLE_SET that parsed).
    pub fn set_tables(&mut self, unicast: MacTable, multicast: MacTable) {
        self.unicast = unicast;
        self.multicast = multicast;
    }

    /// The unicast table.
    pub fn unicast(&self) -> &MacTable {
        &self.unicast
    }

    /// The multicast table.
    pub fn multicast(&self) -> &MacTable {
        &self.multicast
    }

    /// Whether a frame for destination `dest` goes to the guest. Promiscuous
    /// mode is one compare; otherwise a few more and at most one table search.
    #[inline]
    pub fn accepts(&self, dest: &[u8; 6]) -> bool {
        if self.promisc {
            return true;
        }
        if dest[0] & 1 == 0 {
            // Unicast: NOUNI wins over everything else, even the device's own MAC.
            !self.nouni && (self.alluni || *dest == self.mac || self.unicast.matches(dest))
        } else if *dest == BROADCAST {
            !self.nobcast
        } else {
            !self.nomulti && (self.allmulti || self.multicast.matches(dest))
        }
    }
}

/// Parses the data of a VIRTIO_NET_CTRL_MAC_TABLE_SET (after class and
/// command): `le32 entries` and entries * 6 bytes, unicast then multicast,
/// which must fill exactly `len` bytes. `read(offset, buf)` fills `buf` from
/// the data at `offset` and says whether it could, so a command larger than
/// any buffer is parsed in place: only the counts and at most
/// [`MAC_TABLE_ENTRIES`] addresses per table are read. None: malformed.
pub fn parse_mac_tables(len: u64, mut read: impl FnMut(u64, &mut [u8]) -> bool) -> Option<(MacTable, MacTable)> {
    let mut offset = 0u64;
    let unicast = parse_table(&mut offset, len, &mut read)?;
    let multicast = parse_table(&mut offset, len, &mut read)?;
    (offset == len).then_some((unicast, multicast))
}

fn parse_table(offset: &mut u64, len: u64, read: &mut impl FnMut(u64, &mut [u8]) -> bool) -> Option<MacTable> {
    let mut count = [0u8; 4];
    if len.checked_sub(*offset)? < 4 || !read(*offset, &mut count) {
        return None;
    }
    *offset += 4;
    let entries = u64::from(u32::from_le_bytes(count));
    // At most (2^32 - 1) * 6: no overflow in u64.
    let bytes = entries * 6;
    if bytes > len - *offset {
        return None;
    }
    let mut table = MacTable::default();
    if entries as usize <= MAC_TABLE_ENTRIES {
        for (i, mac) in table.macs.iter_mut().take(entries as usize).enumerate() {
            if !read(*offset + 6 * i as u64, mac) {
                return None;
            }
        }
        table.len = entries as usize;
    } else {
        table.overflow = true;
    }
    *offset += bytes;
    Some(table)
}
