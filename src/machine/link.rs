//! The link between `peapod machine run` on the host and peapod's init inside the L1.
//!
//! It runs over the L1's second serial port (ttyS1, in raw mode), so the command's output never
//! mixes with kernel messages (those go to ttyS0, the console log). A frame is a one-byte tag,
//! a little-endian u32 payload length and the payload. The host never trusts the length: a frame
//! above [`MAX_PAYLOAD`] or an unknown tag ends the run with an error, not a panic.
//!
//! Init sends a [`Frame::Heartbeat`] every [`HEARTBEAT_INTERVAL`] from the moment the link is
//! open, so a silent link means a stalled L1; the host decides that with a [`StallWatch`].

use std::io::{self, Write};
use std::time::{Duration, Instant};

/// The largest payload either side sends; the decoder refuses anything larger.
pub const MAX_PAYLOAD: usize = 1 << 20;
const HEADER: usize = 5;

const TAG_READY: u8 = 1;
const TAG_STDOUT: u8 = 2;
const TAG_STDERR: u8 = 3;
const TAG_EXIT: u8 = 4;
const TAG_ERROR: u8 = 5;
const TAG_HEARTBEAT: u8 = 6;

/// How often init says it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

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
    /// Init is alive (sent every [`HEARTBEAT_INTERVAL`]); no payload.
    Heartbeat,
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
            Frame::Heartbeat => (TAG_HEARTBEAT, &[]),
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
        if !(TAG_READY..=TAG_HEARTBEAT).contains(&tag) {
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
            TAG_HEARTBEAT if payload.is_empty() => Frame::Heartbeat,
            TAG_HEARTBEAT => return Err(malformed),
            _ => Frame::Error(String::from_utf8_lossy(&payload).into_owned()),
        };
        Ok(Some(frame))
    }
}

/// Decides when the L1 has been silent on the link for too long. Any bytes count as a sign
/// of life (a long frame still arriving is one); init's heartbeat keeps an idle command's L1
/// from looking stalled.
#[derive(Debug, Clone)]
pub struct StallWatch {
    /// `None`: never stalled.
    limit: Option<Duration>,
    last: Instant,
    /// Whether anything arrived yet: until then the L1 is booting, which takes a few
    /// seconds on an idle host and many more on a loaded one (the TCG L1 shares the host's
    /// cores), so the boot gets [`BOOT_STALL_LIMIT`] when that is longer than `limit`.
    booted: bool,
}

/// The most silence allowed from QEMU's start to the L1's first frame: a boot that hangs
/// is caught after this, not only at the run's --timeout.
pub const BOOT_STALL_LIMIT: Duration = Duration::from_secs(120);

impl StallWatch {
    /// A watch whose silence starts at `now` (QEMU's start: it also bounds the L1's boot).
    pub fn new(limit: Option<Duration>, now: Instant) -> Self {
        StallWatch {
            limit,
            last: now,
            booted: false,
        }
    }

    /// Something arrived on the link at `now`.
    pub fn seen(&mut self, now: Instant) {
        self.last = self.last.max(now);
        self.booted = true;
    }

    /// How long the link has been silent, once that reaches the limit.
    pub fn stalled(&self, now: Instant) -> Option<Duration> {
        let silence = now.saturating_duration_since(self.last);
        self.limit
            .map(|limit| match self.booted {
                true => limit,
                false => limit.max(BOOT_STALL_LIMIT),
            })
            .filter(|limit| silence >= *limit)
            .map(|_| silence)
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
            Frame::Heartbeat,
            Frame::Exit(7),
        ]
    }

    #[test]
    fn heartbeat_is_a_bare_header() {
        assert_eq!(Frame::Heartbeat.encode(), vec![TAG_HEARTBEAT, 0, 0, 0, 0]);
        let mut decoder = FrameDecoder::default();
        decoder.push(&[TAG_HEARTBEAT, 0, 0, 0, 0, TAG_EXIT, 1, 0, 0, 0, 3]);
        assert_eq!(decoder.next_frame(), Ok(Some(Frame::Heartbeat)));
        assert_eq!(decoder.next_frame(), Ok(Some(Frame::Exit(3))));
    }

    #[test]
    fn stall_watch_fires_only_after_the_limit_of_silence() {
        let start = Instant::now();
        let secs = Duration::from_secs;
        let mut watch = StallWatch::new(Some(secs(30)), start);
        // the boot (nothing seen yet) has the longer boot limit
        assert_eq!(watch.stalled(start + secs(30)), None);
        assert_eq!(
            watch.stalled(start + BOOT_STALL_LIMIT),
            Some(BOOT_STALL_LIMIT)
        );
        // once the L1 spoke, `limit` counts
        watch.seen(start);
        assert_eq!(watch.stalled(start + secs(29)), None);
        assert_eq!(watch.stalled(start + secs(30)), Some(secs(30)));
        // a heartbeat every 5 s keeps it quiet for as long as they come
        for beat in 1..=20 {
            watch.seen(start + secs(5 * beat));
            assert_eq!(watch.stalled(start + secs(5 * beat + 4)), None);
        }
        assert_eq!(watch.stalled(start + secs(100 + 29)), None);
        assert_eq!(watch.stalled(start + secs(100 + 31)), Some(secs(31)));
        // an older instant (a clock read before the last one) does not move it back
        watch.seen(start);
        assert_eq!(watch.stalled(start + secs(100 + 31)), Some(secs(31)));
        // a time before the last sign of life is no silence
        assert_eq!(watch.stalled(start), None);
    }

    #[test]
    fn stall_watch_without_a_limit_never_fires() {
        let start = Instant::now();
        let watch = StallWatch::new(None, start);
        assert_eq!(watch.stalled(start + Duration::from_secs(86_400)), None);
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
            (vec![7, 0, 0, 0, 0], LinkError::UnknownTag(7)),
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
                vec![TAG_HEARTBEAT, 1, 0, 0, 0, 0],
                LinkError::Malformed {
                    tag: TAG_HEARTBEAT,
                    len: 1,
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
