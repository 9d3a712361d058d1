//! Length-prefixed frames: a 4-byte big-endian payload length, then the payload, a JSON
//! value. Reading and decoding check the length against [`MAX_FRAME_LEN`] before
//! allocating, and never panic on what the other side sends.

use std::io::{self, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest payload accepted or sent (1 MiB): far above any real request (a container spec
/// with a big environment is a few KiB), small enough that a hostile length cannot make
/// either side allocate much.
pub const MAX_FRAME_LEN: u32 = 1 << 20;

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream cleanly between frames.
    #[error("the peer closed the connection")]
    Closed,
    #[error("the connection ended inside a frame: {got} of {expected} bytes received")]
    Truncated { expected: usize, got: usize },
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u32 },
    #[error("malformed frame payload ({len} bytes): {source}")]
    Malformed {
        len: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding a frame failed: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("timed out {0} a frame (no data within the connection's timeout)")]
    TimedOut(&'static str),
    #[error("{op} a frame failed: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl FrameError {
    fn io(op: &'static str, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => FrameError::TimedOut(op),
            _ => FrameError::Io { op, source },
        }
    }
}

/// Serializes `msg` into one complete frame (header and payload).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; HEADER_LEN];
    serde_json::to_writer(&mut buf, msg).map_err(FrameError::Encode)?;
    let len = buf.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN as usize {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME_LEN,
        });
    }
    buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Writes `msg` as one frame and flushes.
pub fn write_frame<W: Write + ?Sized, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let buf = encode_frame(msg)?;
    w.write_all(&buf)
        .map_err(|e| FrameError::io("writing", e))?;
    w.flush().map_err(|e| FrameError::io("writing", e))
}

/// Reads exactly one frame, however the bytes are split across reads. End of stream before
/// the first byte is [`FrameError::Closed`]; anywhere else it is [`FrameError::Truncated`].
pub fn read_frame<R: Read + ?Sized, T: DeserializeOwned>(r: &mut R) -> Result<T, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Err(FrameError::Closed);
    }
    if got < HEADER_LEN {
        return Err(FrameError::Truncated {
            expected: HEADER_LEN,
            got,
        });
    }
    let len = check_len(u32::from_be_bytes(header))?;
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload)?;
    if got < len {
        return Err(FrameError::Truncated {
            expected: HEADER_LEN + len,
            got: HEADER_LEN + got,
        });
    }
    parse(&payload)
}

/// Decodes the first frame in `buf`: `Ok(None)` when `buf` does not hold a whole frame yet,
/// `Ok(Some((msg, consumed)))` when it does. Pure and panic-free: the fuzz target.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some((header, rest)) = buf.split_first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = check_len(u32::from_be_bytes(*header))?;
    let Some(payload) = rest.get(..len) else {
        return Ok(None);
    };
    Ok(Some((parse(payload)?, HEADER_LEN + len)))
}

fn check_len(len: u32) -> Result<usize, FrameError> {
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len as usize)
}

fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(payload).map_err(|source| FrameError::Malformed {
        len: payload.len(),
        source,
    })
}

/// Reads until `buf` is full or end of stream; returns the bytes read.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::io("reading", e)),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Request, Response};

    /// A reader handing out at most `chunk` bytes per read, like a slow socket.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn header_is_big_endian_length_then_json() {
        let buf = encode_frame(&Request::Shutdown).unwrap();
        assert_eq!(&buf[..4], &(buf.len() as u32 - 4).to_be_bytes());
        assert_eq!(&buf[4..], br#""shutdown""#);
    }

    #[test]
    fn split_reads_of_every_size_give_the_same_frames() {
        let mut stream = encode_frame(&Request::Hello { version: 7 }).unwrap();
        stream.extend(encode_frame(&Request::Shutdown).unwrap());
        for chunk in 1..stream.len() {
            let mut r = Trickle {
                data: &stream,
                chunk,
            };
            let a: Request = read_frame(&mut r).unwrap();
            let b: Request = read_frame(&mut r).unwrap();
            assert_eq!(a, Request::Hello { version: 7 });
            assert_eq!(b, Request::Shutdown);
            assert!(matches!(
                read_frame::<_, Request>(&mut r),
                Err(FrameError::Closed)
            ));
        }
    }

    #[test]
    fn decode_frame_waits_for_a_whole_frame() {
        let buf = encode_frame(&Response::Ok).unwrap();
        for cut in 0..buf.len() {
            assert!(decode_frame::<Response>(&buf[..cut]).unwrap().is_none());
        }
        let mut two = buf.clone();
        two.extend_from_slice(&buf[..3]);
        let (msg, used) = decode_frame::<Response>(&two).unwrap().unwrap();
        assert_eq!(msg, Response::Ok);
        assert_eq!(used, buf.len());
    }

    #[test]
    fn truncated_frames_are_errors() {
        let buf = encode_frame(&Request::Shutdown).unwrap();
        let err = read_frame::<_, Request>(&mut &buf[..2]).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Truncated {
                expected: 4,
                got: 2
            }
        ));
        let err = read_frame::<_, Request>(&mut &buf[..buf.len() - 1]).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }), "{err}");
    }

    #[test]
    fn oversized_frames_are_refused_before_reading_the_payload() {
        let header = (MAX_FRAME_LEN + 1).to_be_bytes();
        let err = read_frame::<_, Request>(&mut &header[..]).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, .. } if len == u64::from(MAX_FRAME_LEN) + 1)
        );
        assert!(err.to_string().contains("exceeds the limit"));
        let err = decode_frame::<Request>(&u32::MAX.to_be_bytes()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
    }

    #[test]
    fn oversized_messages_are_not_sent() {
        let huge = Request::Hello { version: 1 };
        assert!(encode_frame(&huge).is_ok());
        let big = "x".repeat(MAX_FRAME_LEN as usize);
        assert!(matches!(
            encode_frame(&big),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn malformed_payloads_are_errors() {
        for payload in [
            &b""[..],
            b"{",
            b"\xff\xfe",
            b"null",
            br#"{"no_such_request":{}}"#,
            br#"{"hello":{"version":1,"extra":2}}"#,
            br#"{"hello":{"version":-1}}"#,
            br#"{"hello":{"version":1}} trailing"#,
        ] {
            let mut buf = (payload.len() as u32).to_be_bytes().to_vec();
            buf.extend_from_slice(payload);
            let err = read_frame::<_, Request>(&mut &buf[..]).unwrap_err();
            assert!(
                matches!(err, FrameError::Malformed { .. }),
                "{payload:?}: {err}"
            );
            assert!(decode_frame::<Request>(&buf).is_err());
        }
    }

    /// A stable-toolchain stand-in for the cargo-fuzz target (fuzz/fuzz_targets/
    /// protocol_decode.rs): valid frames of every message, mutated by a fixed pseudo-random
    /// sequence (byte flips, cuts, splices, length rewrites), must never panic the decoder,
    /// and whatever still decodes must round-trip.
    #[test]
    fn mutated_frames_never_panic_the_decoder() {
        use crate::protocol::StreamHello;
        use crate::protocol::message::tests::{all_requests, all_responses};
        fn check<T>(data: &[u8])
        where
            T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
        {
            if let Ok(Some((msg, used))) = decode_frame::<T>(data) {
                assert!(used <= data.len());
                let again = encode_frame(&msg).unwrap();
                assert_eq!(decode_frame::<T>(&again).unwrap().unwrap().0, msg);
            }
            let _ = read_frame::<_, T>(&mut &data[..]);
        }
        let mut seeds: Vec<Vec<u8>> = all_requests()
            .iter()
            .map(|r| encode_frame(r).unwrap())
            .chain(all_responses().iter().map(|r| encode_frame(r).unwrap()))
            .collect();
        seeds.push(
            encode_frame(&StreamHello {
                version: 1,
                process: crate::protocol::ProcessRef::exec("a", "b"),
                stream: crate::protocol::StreamKind::Pty,
            })
            .unwrap(),
        );
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let mut data = seeds[round % seeds.len()].clone();
            for _ in 0..(next() % 4 + 1) {
                let r = next();
                let at = (r >> 8) as usize % data.len().max(1);
                match r % 5 {
                    0 if !data.is_empty() => data[at] ^= 1 << (r >> 3 & 7),
                    1 => data.truncate(at),
                    2 => data.insert(at.min(data.len()), (r >> 16) as u8),
                    3 if data.len() >= 4 => {
                        let len = (r >> 20) as u32 % 4096;
                        data[..4].copy_from_slice(&len.to_be_bytes());
                    }
                    _ => {
                        let other = &seeds[(r >> 32) as usize % seeds.len()];
                        data.extend_from_slice(&other[..other.len() / 2]);
                    }
                }
            }
            check::<Request>(&data);
            check::<Response>(&data);
            check::<StreamHello>(&data);
        }
    }

    #[test]
    fn timeouts_are_reported_as_such() {
        struct Slow;
        impl Read for Slow {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
        let err = read_frame::<_, Request>(&mut Slow).unwrap_err();
        assert!(matches!(err, FrameError::TimedOut("reading")));
    }
}
