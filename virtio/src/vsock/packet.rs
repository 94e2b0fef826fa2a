//! The virtio-vsock packet header (virtio 1.x section 5.10.6): 44 little-endian
//! bytes in front of every packet, in both directions, and the constants of
//! its `type`, `op` and `flags` fields.

/// Socket type: a connection-oriented byte stream (the only one rvmm supports).
pub const VSOCK_TYPE_STREAM: u16 = 1;
/// Socket type: a connection-oriented message stream (answered with RST).
pub const VSOCK_TYPE_SEQPACKET: u16 = 2;

/// Not an operation; a packet carrying it is answered with RST.
pub const VSOCK_OP_INVALID: u16 = 0;
/// Opens a connection to `dst_port`.
pub const VSOCK_OP_REQUEST: u16 = 1;
/// Accepts a REQUEST: the connection is established.
pub const VSOCK_OP_RESPONSE: u16 = 2;
/// Refuses a REQUEST, or ends a connection at once.
pub const VSOCK_OP_RST: u16 = 3;
/// The sender will not receive and/or send any more (see the `SHUTDOWN_*` flags).
pub const VSOCK_OP_SHUTDOWN: u16 = 4;
/// Stream data: `len` payload bytes follow the header.
pub const VSOCK_OP_RW: u16 = 5;
/// The sender's `buf_alloc` and `fwd_cnt` changed (every header carries them).
pub const VSOCK_OP_CREDIT_UPDATE: u16 = 6;
/// Asks the peer to send a CREDIT_UPDATE.
pub const VSOCK_OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const VSOCK_SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const VSOCK_SHUTDOWN_SEND: u32 = 2;

/// The header of a virtio-vsock packet (`struct virtio_vsock_hdr`), decoded.
///
/// Decoding never fails and checks nothing: validating what the guest sent is
/// the muxer's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketHeader {
    /// Source context ID (the guest's CID for guest packets, 2 for the host).
    pub src_cid: u64,
    /// Destination context ID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload bytes after the header (only RW packets carry any).
    pub len: u32,
    /// The spec's `type`: [`VSOCK_TYPE_STREAM`] or [`VSOCK_TYPE_SEQPACKET`].
    pub socket_type: u16,
    /// The operation, one of the `VSOCK_OP_*` constants.
    pub op: u16,
    /// Operation flags (`VSOCK_SHUTDOWN_*` for SHUTDOWN).
    pub flags: u32,
    /// Bytes of receive buffer the sender has for this connection.
    pub buf_alloc: u32,
    /// Bytes of this connection's data the sender has consumed so far (wrapping).
    pub fwd_cnt: u32,
}

impl PacketHeader {
    /// Size of the header on the wire.
    pub const SIZE: usize = 44;

    /// Decodes a header from its wire bytes.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        PacketHeader {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            socket_type: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the header into its wire bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.socket_type.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The RST that answers this packet (addresses swapped, same type), for a
    /// packet that matches no connection or that the device refuses.
    pub fn reset_reply(&self) -> PacketHeader {
        PacketHeader {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            len: 0,
            socket_type: self.socket_type,
            op: VSOCK_OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }
}

/// A short name of an operation, for logs.
pub fn op_name(op: u16) -> &'static str {
    match op {
        VSOCK_OP_REQUEST => "REQUEST",
        VSOCK_OP_RESPONSE => "RESPONSE",
        VSOCK_OP_RST => "RST",
        VSOCK_OP_SHUTDOWN => "SHUTDOWN",
        VSOCK_OP_RW => "RW",
        VSOCK_OP_CREDIT_UPDATE => "CREDIT_UPDATE",
        VSOCK_OP_CREDIT_REQUEST => "CREDIT_REQUEST",
        _ => "INVALID",
    }
}
