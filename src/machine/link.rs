//! The link between `peapod machine run` on the host and peapod's init inside the L1.
//!
//! It runs over the L1's second serial port (ttyS1, in raw mode), so the command's output never
//! mixes with kernel messages (those go to ttyS0, the console log). A frame is a one-byte tag,
//! a little-endian u32 payload length and the payload. The host never trusts the length: a frame
//! above [`MAX_PAYLOAD`] or an unknown tag ends the run with an error, not a panic.

use std::io::{self, Write};

/// The largest payload either side sends; the decoder refuses anything larger.
pub const MAX_PAYLOAD: usize = 1 << 20;
const HEADER: usize = 5;

const TAG_READY: u8 = 1;
const TAG_STDOUT: u8 = 2;
const TAG_STDERR: u8 = 3;
const TAG_EXIT: u8 = 4;
const TAG_ERROR: u8 = 5;

/// What the L1 tells the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Init has set up the L1 (modules loaded, /dev/kvm ready); the L1 kernel's uptime then.
    Ready {
        uptime_ms: u64,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The command ended with this status (128+N when killed by signal N).
    Exit(u8),
    /// Init could not do its job (e.g. the command does not exist); the text says why.
    Error(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("link frame with unknown tag {0}")]
    UnknownTag(u8),
    #[error("link frame of {0} bytes is larger than the limit of {MAX_PAYLOAD}")]
    Oversized(usize),
    #[error("link frame tag {tag} has a malformed payload of {len} bytes")]
    Malformed { tag: u8, len: usize },
}

impl Frame {
    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, payload): (u8, &[u8]) = match self {
            Frame::Ready { uptime_ms } => return frame(TAG_READY, &uptime_ms.to_le_bytes()),
            Frame::Exit(status) => return frame(TAG_EXIT, &[*status]),
            Frame::Stdout(data) => (TAG_STDOUT, data),
            Frame::Stderr(data) => (TAG_STDERR, data),
            Frame::Error(text) => (TAG_ERROR, text.as_bytes()),
        };
        frame(tag, payload)
    }

    /// Writes the frame; large output is split into frames of at most [`MAX_PAYLOAD`].
    pub fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        match self {
            Frame::Stdout(data) | Frame::Stderr(data) if data.len() > MAX_PAYLOAD => {
                for chunk in data.chunks(MAX_PAYLOAD) {
                    let part = match self {
                        Frame::Stdout(_) => Frame::Stdout(chunk.to_vec()),
                        _ => Frame::Stderr(chunk.to_vec()),
                    };
                    out.write_all(&part.encode())?;
                }
                Ok(())
            }
            _ => out.write_all(&self.encode()),
        }
    }
}

fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.push(tag);
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Turns a byte stream, fed in pieces of any size, back into frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, LinkError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let tag = self.buf[0];
        let len = u32::from_le_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if !(TAG_READY..=TAG_ERROR).contains(&tag) {
            return Err(LinkError::UnknownTag(tag));
        }
        if len > MAX_PAYLOAD {
            return Err(LinkError::Oversized(len));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let payload: Vec<u8> = self.buf.drain(..HEADER + len).skip(HEADER).collect();
        let malformed = LinkError::Malformed { tag, len };
        let frame = match tag {
            TAG_READY => Frame::Ready {
                uptime_ms: u64::from_le_bytes(payload.try_into().map_err(|_| malformed)?),
            },
            TAG_STDOUT => Frame::Stdout(payload),
            TAG_STDERR => Frame::Stderr(payload),
            TAG_EXIT => match payload[..] {
                [status] => Frame::Exit(status),
                _ => return Err(malformed),
            },
            _ => Frame::Error(String::from_utf8_lossy(&payload).into_owned()),
        };
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Ready { uptime_ms: 2345 },
            Frame::Stdout(b"hello\n".to_vec()),
            Frame::Stderr(Vec::new()),
            Frame::Error("cannot run `nope`: No such file".into()),
            Frame::Exit(7),
        ]
    }

    #[test]
    fn frames_round_trip_fed_byte_by_byte() {
        let wire: Vec<u8> = all_frames().iter().flat_map(Frame::encode).collect();
        let mut decoder = FrameDecoder::default();
        let mut got = Vec::new();
        for byte in wire {
            decoder.push(&[byte]);
            while let Some(frame) = decoder.next_frame().unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got, all_frames());
    }

    #[test]
    fn large_output_is_split_and_reassembles() {
        let data: Vec<u8> = (0..(MAX_PAYLOAD * 2 + 10)).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        Frame::Stdout(data.clone()).write_to(&mut wire).unwrap();
        let mut decoder = FrameDecoder::default();
        decoder.push(&wire);
        let mut joined = Vec::new();
        let mut count = 0;
        while let Some(Frame::Stdout(part)) = decoder.next_frame().unwrap() {
            assert!(part.len() <= MAX_PAYLOAD);
            joined.extend(part);
            count += 1;
        }
        assert_eq!(count, 3);
        assert_eq!(joined, data);
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        let cases: Vec<(Vec<u8>, LinkError)> = vec![
            (vec![9, 0, 0, 0, 0], LinkError::UnknownTag(9)),
            (vec![0, 0, 0, 0, 0], LinkError::UnknownTag(0)),
            (
                vec![TAG_STDOUT, 0xff, 0xff, 0xff, 0xff],
                LinkError::Oversized(u32::MAX as usize),
            ),
            (
                vec![TAG_EXIT, 2, 0, 0, 0, 1, 2],
                LinkError::Malformed {
                    tag: TAG_EXIT,
                    len: 2,
                },
            ),
            (
                vec![TAG_EXIT, 0, 0, 0, 0],
                LinkError::Malformed {
                    tag: TAG_EXIT,
                    len: 0,
                },
            ),
            (
                vec![TAG_READY, 3, 0, 0, 0, 1, 2, 3],
                LinkError::Malformed {
                    tag: TAG_READY,
                    len: 3,
                },
            ),
        ];
        for (wire, expected) in cases {
            let mut decoder = FrameDecoder::default();
            decoder.push(&wire);
            assert_eq!(decoder.next_frame(), Err(expected), "{wire:?}");
        }
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&[TAG_STDOUT, 3, 0]);
        assert_eq!(decoder.next_frame(), Ok(None));
        decoder.push(&[0, 0, b'a', b'b']);
        assert_eq!(decoder.next_frame(), Ok(None));
        decoder.push(b"c");
        assert_eq!(
            decoder.next_frame(),
            Ok(Some(Frame::Stdout(b"abc".to_vec())))
        );
    }
}
