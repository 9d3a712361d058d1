//! The frames an attached connection carries after [`super::api::ApiResponse::Attached`]:
//! one byte of kind, a 4-byte big-endian length, the payload. Output is raw bytes (no JSON:
//! this is bulk data); the last frame from the supervisor is [`StreamFrame::Exit`].
//!
//! supervisor → client: `Stdout`, `Stderr` (a tty's output is all `Stdout`), then `Exit`.
//! client → supervisor: `Stdin`, `StdinClose` (the process gets end of file), `Signal`.

use std::io::{self, Read, Write};

use super::api::ProcessEnd;

/// Largest payload of one frame; output is cut into chunks of at most this.
pub const MAX_CHUNK: usize = 64 * 1024;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const EXIT: u8 = 3;
const STDIN_CLOSE: u8 = 4;
const SIGNAL: u8 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFrame {
    Stdin(Vec<u8>),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    StdinClose,
    Signal(i32),
    Exit(ProcessEnd),
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the attached connection closed")]
    Closed,
    #[error("the attached connection: {0}")]
    Io(#[from] io::Error),
    #[error("a malformed frame on the attached connection: {0}")]
    Malformed(String),
}

impl StreamFrame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, std::borrow::Cow<'_, [u8]>) = match self {
            StreamFrame::Stdin(b) => (STDIN, b.into()),
            StreamFrame::Stdout(b) => (STDOUT, b.into()),
            StreamFrame::Stderr(b) => (STDERR, b.into()),
            StreamFrame::StdinClose => (STDIN_CLOSE, (&[][..]).into()),
            StreamFrame::Signal(sig) => (SIGNAL, sig.to_be_bytes().to_vec().into()),
            StreamFrame::Exit(end) => (EXIT, serde_json::to_vec(end).unwrap_or_default().into()),
        };
        let mut buf = Vec::with_capacity(5 + payload.len());
        buf.push(kind);
        buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        buf.extend_from_slice(&payload);
        buf
    }

    pub fn write_to(&self, w: &mut impl Write) -> Result<(), StreamError> {
        w.write_all(&self.encode())?;
        w.flush()?;
        Ok(())
    }

    /// Reads one frame; end of stream between frames is [`StreamError::Closed`]. A length
    /// over [`MAX_CHUNK`] or an unknown kind is refused before anything is allocated.
    pub fn read_from(r: &mut impl Read) -> Result<Self, StreamError> {
        let mut header = [0u8; 5];
        let mut got = 0;
        while got < header.len() {
            match r.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Err(StreamError::Closed),
                Ok(0) => return Err(StreamError::Malformed("truncated header".into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let kind = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_CHUNK {
            return Err(StreamError::Malformed(format!(
                "a frame of {len} bytes (at most {MAX_CHUNK})"
            )));
        }
        if !matches!(kind, STDIN..=SIGNAL) {
            return Err(StreamError::Malformed(format!("unknown frame kind {kind}")));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => StreamError::Malformed("truncated payload".into()),
            _ => StreamError::Io(e),
        })?;
        Ok(match kind {
            STDIN => StreamFrame::Stdin(payload),
            STDOUT => StreamFrame::Stdout(payload),
            STDERR => StreamFrame::Stderr(payload),
            STDIN_CLOSE => StreamFrame::StdinClose,
            SIGNAL => {
                let bytes: [u8; 4] = payload
                    .as_slice()
                    .try_into()
                    .map_err(|_| StreamError::Malformed("a signal frame of wrong size".into()))?;
                StreamFrame::Signal(i32::from_be_bytes(bytes))
            }
            _ => StreamFrame::Exit(
                serde_json::from_slice(&payload)
                    .map_err(|e| StreamError::Malformed(format!("exit frame: {e}")))?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ExitStatus;

    #[test]
    fn frames_round_trip() {
        let frames = [
            StreamFrame::Stdin(b"abc".to_vec()),
            StreamFrame::Stdout(vec![0, 1, 2, 255]),
            StreamFrame::Stderr(Vec::new()),
            StreamFrame::StdinClose,
            StreamFrame::Signal(15),
            StreamFrame::Exit(ProcessEnd {
                status: ExitStatus::exited(127),
                start_error: Some("nope: not found".into()),
            }),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            f.write_to(&mut wire).unwrap();
        }
        let mut r = wire.as_slice();
        for f in &frames {
            assert_eq!(&StreamFrame::read_from(&mut r).unwrap(), f);
        }
        assert!(matches!(
            StreamFrame::read_from(&mut r),
            Err(StreamError::Closed)
        ));
    }

    #[test]
    fn hostile_frames_are_refused_without_panic() {
        let cases: [&[u8]; 5] = [
            &[1, 0xff, 0xff, 0xff, 0xff],
            &[9, 0, 0, 0, 0],
            &[5, 0, 0, 0, 2, 1, 2],
            &[3, 0, 0, 0, 2, b'{', b'}'],
            &[1, 0, 0, 0, 9, 1],
        ];
        for case in cases {
            let mut r = case;
            assert!(
                matches!(
                    StreamFrame::read_from(&mut r),
                    Err(StreamError::Malformed(_))
                ),
                "{case:?}"
            );
        }
        let mut rng = 0x1234_5678u32;
        for _ in 0..2000 {
            let len = (rng % 16) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 17;
                    rng ^= rng << 5;
                    rng as u8
                })
                .collect();
            let _ = StreamFrame::read_from(&mut bytes.as_slice());
        }
    }
}
