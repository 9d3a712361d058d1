//! The virtio-vsock packet (virtio 1.2 §5.10.6): a 44-byte little-endian header, then `len`
//! bytes of payload for `VIRTIO_VSOCK_OP_RW`.
//!
//! A tx chain (guest → device) is parsed from its device-readable buffers however the driver
//! split them (Linux before 6.2 uses one descriptor for the header and one for the payload,
//! later kernels one for both). Nothing in the header is trusted: `len` must fit in the
//! buffers and under [`MAX_PAYLOAD`]; the other fields are checked by whoever acts on them.

use super::super::queue::{BufCursor, ChainError, CheckedChain};
use crate::vmm::memory::GuestMemory;

/// Size of the packet header.
pub const HDR_LEN: usize = 44;
/// The largest payload a packet may carry (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// The host's CID (`VMADDR_CID_HOST`).
pub const HOST_CID: u64 = 2;

/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type the device carries.
pub const TYPE_STREAM: u16 = 1;

/// `VIRTIO_VSOCK_SHUTDOWN_RCV`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_SEND`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// `VIRTIO_VSOCK_OP_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    pub fn from_raw(op: u16) -> Option<Op> {
        Some(match op {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// `struct virtio_vsock_hdr`, decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or_default());
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The decoded operation, `None` for an unknown one.
    pub fn op(&self) -> Option<Op> {
        Op::from_raw(self.op)
    }

    /// A reply to this packet: source and destination swapped, nothing else set.
    pub fn reply(&self, op: Op) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: op as u16,
            ..Header::default()
        }
    }
}

/// A tx packet the device drops.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("bad descriptor chain: {0}")]
    Chain(#[from] ChainError),
    #[error("a tx packet has device-writable buffers")]
    Writable,
    #[error("a tx packet of {len} bytes is shorter than the {HDR_LEN}-byte header")]
    ShortHeader { len: u64 },
    #[error(
        "the header claims a {}-byte payload, more than the {MAX_PAYLOAD} bytes allowed",
        hdr.len
    )]
    PayloadTooLong { hdr: Header },
    #[error(
        "the header claims a {}-byte payload but the buffers hold {available} bytes",
        hdr.len
    )]
    PayloadBeyondBuffers { hdr: Header, available: u64 },
}

impl PacketError {
    /// The packet's header, where it could be read: the connection it names is reset, since
    /// its byte stream now has a hole.
    pub fn header(&self) -> Option<&Header> {
        match self {
            PacketError::PayloadTooLong { hdr } | PacketError::PayloadBeyondBuffers { hdr, .. } => {
                Some(hdr)
            }
            _ => None,
        }
    }
}

/// Parses the packet in a checked tx chain, copying its payload (`hdr.len` bytes; none unless
/// the operation is RW) into the front of `payload`, which must hold [`MAX_PAYLOAD`] bytes.
pub fn read_tx(
    mem: &GuestMemory,
    chain: CheckedChain,
    payload: &mut [u8],
) -> Result<(Header, usize), PacketError> {
    if !chain.writable.is_empty() {
        return Err(PacketError::Writable);
    }
    let mut cursor = BufCursor::new(mem, chain.readable);
    if cursor.remaining() < HDR_LEN as u64 {
        return Err(PacketError::ShortHeader {
            len: cursor.remaining(),
        });
    }
    let mut raw = [0u8; HDR_LEN];
    cursor.read_to_slice(&mut raw)?;
    let hdr = Header::from_bytes(&raw);
    if hdr.op() != Some(Op::Rw) {
        // Only data packets carry a payload; a `len` on anything else is ignored, as Linux
        // does.
        return Ok((hdr, 0));
    }
    let len = hdr.len as usize;
    if len > MAX_PAYLOAD || len > payload.len() {
        return Err(PacketError::PayloadTooLong { hdr });
    }
    if u64::from(hdr.len) > cursor.remaining() {
        return Err(PacketError::PayloadBeyondBuffers {
            hdr,
            available: cursor.remaining(),
        });
    }
    cursor.read_to_slice(&mut payload[..len])?;
    Ok((hdr, len))
}

/// Room for payload in an rx chain's writable buffers, or `None` if they cannot hold even a
/// header.
pub fn rx_payload_room(chain: &CheckedChain) -> Option<usize> {
    let total: u64 = chain.writable.iter().map(|b| u64::from(b.len)).sum();
    let room = total.checked_sub(HDR_LEN as u64)?;
    Some(
        usize::try_from(room)
            .unwrap_or(MAX_PAYLOAD)
            .min(MAX_PAYLOAD),
    )
}

/// Writes `hdr` (whose `len` must be `payload.len()`) and `payload` into an rx chain's
/// writable buffers; returns the bytes written, for the used ring.
pub fn write_rx(
    mem: &GuestMemory,
    chain: CheckedChain,
    hdr: &Header,
    payload: &[u8],
) -> Result<u32, PacketError> {
    let mut cursor = BufCursor::new(mem, chain.writable);
    cursor.write_from_slice(&hdr.to_bytes())?;
    cursor.write_from_slice(payload)?;
    // At most HDR_LEN + MAX_PAYLOAD.
    Ok((HDR_LEN + payload.len()) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_in_the_spec_layout() {
        let hdr = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 52,
            len: 7,
            type_: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: SHUTDOWN_SEND,
            buf_alloc: 0x4_0000,
            fwd_cnt: 9,
        };
        let b = hdr.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[16..20], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!(Header::from_bytes(&b), hdr);
        assert_eq!(hdr.op(), Some(Op::Rw));
        assert_eq!(Header { op: 0, ..hdr }.op(), None);
        assert_eq!(Header { op: 8, ..hdr }.op(), None);
        let r = hdr.reply(Op::Rst);
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port, r.len),
            (2, 3, 52, 0x1122_3344, 0)
        );
    }
}
