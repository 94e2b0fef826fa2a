//! The frames of the benchmark: Ethernet/IPv4/UDP frames of a fixed length, and one
//! 64 KiB TCPv4 segmentation-offload frame with a checksum-offload virtio-net header,
//! laid out as Linux's TCP would hand it to virtio-net.
//!
//! Every frame starts with the 12-byte virtio-net header rvmm's tap uses
//! (`virtio_net_hdr_mrg_rxbuf`, virtio 1.x 5.1.6), then the Ethernet frame. Lengths
//! in the report are Ethernet frame lengths without the virtio-net header and without
//! the 4-byte FCS a wire would add.

use virtio::net::VNET_HDR_LEN;

/// The guest's MAC (the device's).
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The tap interface's MAC (set by the benchmark so that frames can avoid it).
pub const TAP_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Where the guest's frames go: a MAC on the tap's segment that is not the host's, so
/// the host stack drops them at the IP layer as PACKET_OTHERHOST (the cheapest sink).
pub const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
/// The tap's IPv4 address.
pub const TAP_IP: [u8; 4] = [10, 77, 0, 1];
/// The guest's IPv4 address.
pub const GUEST_IP: [u8; 4] = [10, 77, 0, 2];
/// The peer's IPv4 address.
pub const PEER_IP: [u8; 4] = [10, 77, 0, 3];

/// TCP maximum segment size of the offload frame: a 1500-byte MTU less 20 bytes of
/// IPv4 header and 32 bytes of TCP header with the timestamp option, as Linux uses it.
pub const GSO_SIZE: u16 = 1448;
/// Segments in the offload frame: as many as fit in an IPv4 packet of at most 64 KiB.
pub const GSO_SEGMENTS: usize = 45;
/// Ethernet + IPv4 + TCP (with timestamps) header bytes of the offload frame.
pub const GSO_HDR_LEN: usize = 14 + 20 + 32;
/// The Ethernet frame length of the offload frame.
pub const GSO_FRAME_LEN: usize = GSO_HDR_LEN + GSO_SEGMENTS * GSO_SIZE as usize;
/// The frame length of each segment the offload frame is cut into (a full 1514-byte
/// frame: the payload is an exact multiple of the MSS).
pub const GSO_SEGMENT_LEN: usize = GSO_HDR_LEN + GSO_SIZE as usize;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;

/// A frame's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// IPv4/UDP of this many Ethernet bytes (60 to 1514), no offloads in the header.
    Udp(usize),
    /// The 64 KiB TCPv4 TSO frame with NEEDS_CSUM.
    Tso,
}

impl Kind {
    /// Ethernet frame length (without the virtio-net header).
    pub fn frame_len(self) -> usize {
        match self {
            Kind::Udp(n) => n,
            Kind::Tso => GSO_FRAME_LEN,
        }
    }
}

/// The virtio-net header (12 bytes) of a frame of `kind`.
pub fn vnet_header(kind: Kind) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    if kind == Kind::Tso {
        h[0] = F_NEEDS_CSUM;
        h[1] = GSO_TCPV4;
        h[2..4].copy_from_slice(&(GSO_HDR_LEN as u16).to_le_bytes());
        h[4..6].copy_from_slice(&GSO_SIZE.to_le_bytes());
        // csum_start: the TCP header; csum_offset: TCP's checksum field.
        h[6..8].copy_from_slice(&(14u16 + 20).to_le_bytes());
        h[8..10].copy_from_slice(&16u16.to_le_bytes());
    }
    h
}

/// The Ones' complement sum of `data` as 16-bit big-endian words, not folded.
fn sum16(data: &[u8]) -> u32 {
    let mut s = 0u32;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// An IPv4 header (20 bytes, no options) with a valid checksum.
fn ipv4_header(total_len: usize, protocol: u8, src: [u8; 4], dst: [u8; 4], id: u16) -> [u8; 20] {
    assert!(total_len <= 0xffff);
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    // Don't fragment, as TCP and most UDP senders set it.
    h[6] = 0x40;
    h[8] = 64;
    h[9] = protocol;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let c = !fold(sum16(&h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

fn ethernet(dst: [u8; 6], src: [u8; 6]) -> [u8; 14] {
    let mut e = [0u8; 14];
    e[0..6].copy_from_slice(&dst);
    e[6..12].copy_from_slice(&src);
    e[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    e
}

/// Payload bytes that are not all zeros (nothing on the way may treat zeros specially).
fn payload(len: usize, seed: u8) -> impl Iterator<Item = u8> {
    (0..len).map(move |i| (i as u8).wrapping_mul(31).wrapping_add(seed))
}

/// A frame of `kind` from `src` to `dst` (MACs and IPs), without virtio-net header.
pub fn ethernet_frame(kind: Kind, src_mac: [u8; 6], dst_mac: [u8; 6], src_ip: [u8; 4], dst_ip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(kind.frame_len());
    f.extend_from_slice(&ethernet(dst_mac, src_mac));
    match kind {
        Kind::Udp(len) => {
            assert!((14 + 20 + 8..=1514).contains(&len), "UDP frame length {len} out of range");
            let ip_len = len - 14;
            f.extend_from_slice(&ipv4_header(ip_len, 17, src_ip, dst_ip, 1));
            let udp_len = ip_len - 20;
            f.extend_from_slice(&40000u16.to_be_bytes());
            // The discard port: no socket listens, nothing answers.
            f.extend_from_slice(&9u16.to_be_bytes());
            f.extend_from_slice(&(udp_len as u16).to_be_bytes());
            // Checksum 0: none (allowed for UDP over IPv4).
            f.extend_from_slice(&[0, 0]);
            f.extend(payload(udp_len - 8, 0x5a));
        }
        Kind::Tso => {
            let ip_len = GSO_FRAME_LEN - 14;
            let tcp_len = ip_len - 20;
            f.extend_from_slice(&ipv4_header(ip_len, 6, src_ip, dst_ip, 2));
            let mut t = [0u8; 32];
            t[0..2].copy_from_slice(&40001u16.to_be_bytes());
            t[2..4].copy_from_slice(&5001u16.to_be_bytes());
            t[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
            t[8..12].copy_from_slice(&0x2000_0000u32.to_be_bytes());
            // Data offset 8 words (32 bytes), flags ACK | PSH.
            t[12] = 8 << 4;
            t[13] = 0x18;
            t[14..16].copy_from_slice(&502u16.to_be_bytes());
            // With NEEDS_CSUM the checksum field holds the pseudo-header sum, folded
            // and not complemented; the segmenter or the receiver finishes it.
            let mut pseudo = [0u8; 12];
            pseudo[0..4].copy_from_slice(&src_ip);
            pseudo[4..8].copy_from_slice(&dst_ip);
            pseudo[9] = 6;
            pseudo[10..12].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            t[16..18].copy_from_slice(&fold(sum16(&pseudo)).to_be_bytes());
            // Options: NOP, NOP, timestamp (kind 8, length 10, TSval, TSecr).
            t[20] = 1;
            t[21] = 1;
            t[22] = 8;
            t[23] = 10;
            t[24..28].copy_from_slice(&1_000_000u32.to_be_bytes());
            t[28..32].copy_from_slice(&999_000u32.to_be_bytes());
            f.extend_from_slice(&t);
            f.extend(payload(tcp_len - 32, 0xa5));
        }
    }
    debug_assert_eq!(f.len(), kind.frame_len());
    f
}

/// A frame the guest sends (to [`PEER_MAC`]), with its 12-byte virtio-net header.
pub fn guest_tx_frame(kind: Kind) -> Vec<u8> {
    let mut f = vnet_header(kind).to_vec();
    f.extend(ethernet_frame(kind, GUEST_MAC, PEER_MAC, GUEST_IP, PEER_IP));
    f
}

/// A frame for the guest (from the tap's side to [`GUEST_MAC`]), without header.
pub fn host_to_guest_frame(kind: Kind) -> Vec<u8> {
    ethernet_frame(kind, TAP_MAC, GUEST_MAC, TAP_IP, GUEST_IP)
}

/// What a frame read from the tap must look like to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// Its Ethernet length.
    pub frame_len: usize,
    /// The `gso_type` of its virtio-net header.
    pub gso_type: u8,
}

impl Expect {
    /// Whether a frame of `frame_len` bytes whose virtio-net header starts with
    /// `header` (at least 2 bytes) is the expected one.
    pub fn matches(&self, header: &[u8], frame_len: usize) -> bool {
        frame_len == self.frame_len && header.len() >= 2 && header[1] == self.gso_type
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_checksums() {
        for kind in [Kind::Udp(64), Kind::Udp(1514), Kind::Tso] {
            let f = guest_tx_frame(kind);
            assert_eq!(f.len(), VNET_HDR_LEN + kind.frame_len());
            let ip = &f[VNET_HDR_LEN + 14..VNET_HDR_LEN + 34];
            // A valid IPv4 header sums to 0xffff.
            assert_eq!(fold(sum16(ip)), 0xffff, "{kind:?}");
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            assert_eq!(total + 14, kind.frame_len());
        }
        assert_eq!(GSO_FRAME_LEN, 65226);
        assert_eq!(GSO_SEGMENT_LEN, 1514);
        let h = vnet_header(Kind::Tso);
        assert_eq!(u16::from_le_bytes([h[2], h[3]]) as usize, GSO_HDR_LEN);
        assert_eq!(h[1], GSO_TCPV4);
        assert_eq!(vnet_header(Kind::Udp(64)), [0u8; VNET_HDR_LEN]);
    }

    #[test]
    fn pseudo_header_seed() {
        // The seed plus the TCP segment's own sum, complemented, is the real checksum:
        // check it against a checksum computed from scratch.
        let f = ethernet_frame(Kind::Tso, GUEST_MAC, PEER_MAC, GUEST_IP, PEER_IP);
        let tcp = &f[34..];
        let seed = u16::from_be_bytes([tcp[16], tcp[17]]);
        let mut zeroed = tcp.to_vec();
        zeroed[16] = 0;
        zeroed[17] = 0;
        let with_seed = !fold(u32::from(seed) + sum16(&zeroed));
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&GUEST_IP);
        pseudo.extend_from_slice(&PEER_IP);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        let scratch = !fold(sum16(&pseudo) + sum16(&zeroed));
        assert_eq!(with_seed, scratch);
    }
}
