//! The vsock packet header (`struct virtio_vsock_hdr`, 44 bytes, little
//! endian) and its operations.

/// The header's size in bytes.
pub const HDR_LEN: usize = 44;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// The only socket type: a stream.
pub const TYPE_STREAM: u16 = 1;

/// Header operations (`VIRTIO_VSOCK_OP_*`).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset (refused, or closed for good).
    pub const RST: u16 = 3;
    /// No more data in one or both directions (see `flags`).
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// The sender's buffer space, unsolicited or asked for.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `SHUTDOWN` flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `SHUTDOWN` flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A decoded packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload bytes after the header.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub kind: u16,
    /// Operation ([`op`]).
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

fn le<const N: usize>(bytes: &[u8; HDR_LEN], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

impl Header {
    /// Decodes a header from its 44 bytes.
    pub fn decode(bytes: &[u8; HDR_LEN]) -> Header {
        Header {
            src_cid: u64::from_le_bytes(le(bytes, 0)),
            dst_cid: u64::from_le_bytes(le(bytes, 8)),
            src_port: u32::from_le_bytes(le(bytes, 16)),
            dst_port: u32::from_le_bytes(le(bytes, 20)),
            len: u32::from_le_bytes(le(bytes, 24)),
            kind: u16::from_le_bytes(le(bytes, 28)),
            op: u16::from_le_bytes(le(bytes, 30)),
            flags: u32::from_le_bytes(le(bytes, 32)),
            buf_alloc: u32::from_le_bytes(le(bytes, 36)),
            fwd_cnt: u32::from_le_bytes(le(bytes, 40)),
        }
    }

    /// Decodes the header at the start of `bytes`; `None` if it is shorter.
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        bytes.first_chunk::<HDR_LEN>().map(Header::decode)
    }

    /// The header's 44 bytes.
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut out = [0; HDR_LEN];
        out[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        out[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        out[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        out[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        out[24..28].copy_from_slice(&self.len.to_le_bytes());
        out[28..30].copy_from_slice(&self.kind.to_le_bytes());
        out[30..32].copy_from_slice(&self.op.to_le_bytes());
        out[32..36].copy_from_slice(&self.flags.to_le_bytes());
        out[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        out[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        out
    }

    /// The reset answering this packet (ports and CIDs swapped).
    pub fn reset_reply(&self) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            kind: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_sit_at_the_offsets_of_virtio_vsock_hdr() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 1234,
            len: 5,
            kind: TYPE_STREAM,
            op: op::RW,
            flags: SHUTDOWN_SEND,
            buf_alloc: 0x4_0000,
            fwd_cnt: 0xdead_beef,
        };
        let b = h.encode();
        assert_eq!(b[0], 0x08);
        assert_eq!(b[7], 0x01);
        assert_eq!(b[8], 2);
        assert_eq!(b[16..20], [0x44, 0x33, 0x22, 0x11]);
        assert_eq!(b[20..24], 1234u32.to_le_bytes());
        assert_eq!(b[24..28], [5, 0, 0, 0]);
        assert_eq!(b[28..30], [1, 0]);
        assert_eq!(b[30..32], [5, 0]);
        assert_eq!(b[32..36], [2, 0, 0, 0]);
        assert_eq!(b[36..40], 0x4_0000u32.to_le_bytes());
        assert_eq!(b[40..44], [0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(Header::decode(&b), h);
    }

    #[test]
    fn a_short_buffer_is_no_header() {
        assert_eq!(Header::parse(&[0; HDR_LEN - 1]), None);
        assert_eq!(Header::parse(&[0; HDR_LEN + 3]), Some(Header::default()));
    }

    #[test]
    fn a_reset_reply_swaps_the_ends() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 10,
            dst_port: 20,
            op: op::RW,
            len: 9,
            ..Header::default()
        };
        let r = h.reset_reply();
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port),
            (2, 3, 20, 10)
        );
        assert_eq!((r.op, r.len, r.kind), (op::RST, 0, TYPE_STREAM));
    }
}
