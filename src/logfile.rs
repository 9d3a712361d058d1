//! Log files on the host whose content a guest controls: the pod VM's serial console
//! (`console.log`), the VMM's own log (`vmm.log`, which a guest fills by making the VMM warn)
//! and the supervisor's (`supervisor.log`).
//!
//! A guest can write to its serial port forever, and a guest driver can loop on something
//! the VMM warns about. So:
//!
//! - the writers of those files stop at a byte cap ([`CappedWriter`]): the first write that
//!   would pass it is replaced by one marker line, and everything after is dropped (counted,
//!   not written). The file keeps its beginning, where a boot's story is; a cap rather than
//!   rotation, because the VMM writes these files under seccomp with nothing but `write`
//!   allowed, and because readers then never see a file swapped under them;
//! - the host reads only their tail ([`read_tail`]), never the whole file into memory, and
//!   never more than asked even if the file grows while it is read or is not a regular file.
//!
//! The rate of guest-triggered log lines is limited where they are made, in the VMM (see
//! [`crate::vmm::ratelimit`]).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// The most a pod VM's `console.log` holds (kernel and agent messages; containers' output
/// goes to their own logs). A boot writes some tens of KiB.
pub const CONSOLE_MAX_BYTES: u64 = 8 << 20;

/// The most a VMM's or a supervisor's log holds. They log warnings and errors only unless
/// `PEAPOD_LOG` asks for more.
pub const PROCESS_LOG_MAX_BYTES: u64 = 8 << 20;

/// How much of a log's end the host reads to show with an error.
pub const TAIL_MAX_BYTES: u64 = 64 << 10;

/// A writer that passes writes on until `max_bytes` have been written, then writes one marker
/// line and drops the rest (reporting it written, so that the guest's serial port or the
/// logger carries on as if nothing happened).
///
/// A write either fits whole or is dropped whole: put it under a `LineWriter` (or give it
/// whole log lines) and the file ends on a full line before the marker.
#[derive(Debug)]
pub struct CappedWriter<W: Write> {
    inner: W,
    what: &'static str,
    max_bytes: u64,
    written: u64,
    dropped: u64,
}

impl<W: Write> CappedWriter<W> {
    /// `what` names the output in the marker line ("the guest console", "the VMM log").
    pub fn new(inner: W, what: &'static str, max_bytes: u64) -> Self {
        CappedWriter {
            inner,
            what,
            max_bytes,
            written: 0,
            dropped: 0,
        }
    }

    /// Bytes dropped since the cap was reached.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes written through (the marker line not counted).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The marker line written once, when the cap is reached.
    pub fn marker(what: &str, max_bytes: u64) -> String {
        format!("\n[peapod: {what} reached its {max_bytes}-byte cap; the rest of it is dropped]\n")
    }
}

impl<W: Write> Write for CappedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let fits = self
            .written
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= self.max_bytes);
        if self.dropped == 0 && fits {
            let n = self.inner.write(buf)?;
            self.written += n as u64;
            return Ok(n);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if self.dropped == 0 {
            self.inner
                .write_all(Self::marker(self.what, self.max_bytes).as_bytes())?;
            self.inner.flush()?;
        }
        self.dropped = self.dropped.saturating_add(buf.len() as u64);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The last `max_bytes` of the file at `path` (all of it if it is shorter). Reads at most
/// `max_bytes` whatever the file does meanwhile: grows, or is a FIFO or a device that never
/// ends.
pub fn read_tail(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len > max_bytes {
        file.seek(SeekFrom::Start(len - max_bytes))?;
    }
    let mut buf = Vec::with_capacity(len.min(max_bytes) as usize);
    file.take(max_bytes).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The last `lines` lines of the last [`TAIL_MAX_BYTES`] of the file at `path`, as text;
/// empty if it cannot be read.
pub fn tail_lines(path: &Path, lines: usize) -> String {
    let Ok(bytes) = read_tail(path, TAIL_MAX_BYTES) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_stop_at_the_cap_with_one_marker() {
        let mut w = CappedWriter::new(Vec::new(), "the test log", 10);
        w.write_all(b"12345").unwrap();
        w.write_all(b"6789\n").unwrap();
        // Past the cap: dropped whole, though reported written.
        assert_eq!(w.write(b"abc").unwrap(), 3);
        w.write_all(b"d").unwrap();
        assert_eq!((w.written(), w.dropped()), (10, 4));
        let marker = CappedWriter::<Vec<u8>>::marker("the test log", 10);
        assert_eq!(w.inner, format!("123456789\n{marker}").into_bytes());
        assert!(marker.contains("the test log reached its 10-byte cap"));
        // An empty write is not output.
        assert_eq!(w.write(b"").unwrap(), 0);
    }

    #[test]
    fn a_write_that_would_pass_the_cap_is_dropped_whole() {
        let mut w = CappedWriter::new(Vec::new(), "x", 8);
        w.write_all(b"line 1\n").unwrap();
        w.write_all(b"line 2\n").unwrap();
        // Even one that would fit after: the output stays a prefix of what was written.
        w.write_all(b"\n").unwrap();
        let text = String::from_utf8(w.inner).unwrap();
        assert!(text.starts_with("line 1\n\n[peapod: x reached"), "{text}");
        assert_eq!(text.matches("[peapod:").count(), 1);
    }

    #[test]
    fn a_flood_through_a_line_writer_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let file = File::create(&path).unwrap();
        let mut w = io::LineWriter::new(CappedWriter::new(file, "the console", 64 << 10));
        for i in 0..100_000 {
            writeln!(w, "guest line {i}").unwrap();
        }
        w.flush().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len <= (64 << 10) + 200, "{len} bytes");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("guest line 0\n"));
        assert!(text.trim_end().ends_with("the rest of it is dropped]"));
    }

    #[test]
    fn tails_are_bounded_whatever_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.log");
        let text: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let tail = read_tail(&path, 100).unwrap();
        assert_eq!(tail, text.as_bytes()[text.len() - 100..]);
        assert_eq!(read_tail(&path, 1 << 20).unwrap(), text.as_bytes());
        assert_eq!(tail_lines(&path, 2), "line 9998\nline 9999");
        assert_eq!(tail_lines(&dir.path().join("absent"), 2), "");
        // A file without end: exactly the bound is read.
        assert_eq!(read_tail(Path::new("/dev/zero"), 4096).unwrap().len(), 4096);
        assert_eq!(
            tail_lines(Path::new("/dev/zero"), 20).len() as u64,
            TAIL_MAX_BYTES
        );
    }
}
