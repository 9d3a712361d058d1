//! Container logs in the Kubernetes CRI log format, one record per line:
//!
//! ```text
//! 2024-05-01T12:00:00.123456789Z stdout F a whole line
//! 2024-05-01T12:00:00.200000000Z stderr P the first 16 KiB of a longer line...
//! 2024-05-01T12:00:00.200000001Z stderr F ...and its end
//! ```
//!
//! `F` ends a line; `P` is part of one (a chunk of a long line, or output not ended by a
//! newline yet). [`LogWriter`] writes and rotates them (`X.log` to `X.log.1`); [`read_logs`]
//! and [`follow_logs`] put the lines back together for `peapod logs`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::PodError;
use super::state::{format_rfc3339, parse_rfc3339};

/// Rotate a log once it would pass 10 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;
/// Keep one rotated file (`X.log.1`) beside the live one.
pub const DEFAULT_KEEP: usize = 1;
/// The longest content of one record; longer lines are split into `P` records.
pub const MAX_CHUNK: usize = 16 * 1024;
/// How often [`follow_logs`] looks for more.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Which output of a container a record holds (a terminal's output counts as stdout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            LogStream::Stdout => 0,
            LogStream::Stderr => 1,
        }
    }
}

/// Writes one container's log file, rotating it by size.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: usize,
    /// Output of each stream not ended by a newline yet.
    pending: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens `path` for appending (creating it). Before a record would take the file past
    /// `max_bytes` it is rotated: `X.log` becomes `X.log.1`, `X.log.1` becomes `X.log.2`, ...
    /// and the oldest beyond `keep` rotated files is dropped (`keep` 0: the file is emptied).
    pub fn create(path: &Path, max_bytes: u64, keep: usize) -> Result<Self, PodError> {
        let (file, size) = open_append(path)?;
        Ok(LogWriter {
            path: path.to_owned(),
            file,
            size,
            max_bytes,
            keep,
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Logs output of `stream`: a record per ended line; the unended rest waits for more,
    /// or goes out as `P` records once it passes [`MAX_CHUNK`].
    pub fn write(&mut self, stream: LogStream, bytes: &[u8]) -> Result<(), PodError> {
        let mut pending = std::mem::take(&mut self.pending[stream.index()]);
        let mut rest = bytes;
        let result = (|| {
            while let Some(at) = rest.iter().position(|&b| b == b'\n') {
                pending.extend_from_slice(&rest[..at]);
                rest = &rest[at + 1..];
                self.line(stream, &pending, true)?;
                pending.clear();
            }
            pending.extend_from_slice(rest);
            if pending.len() > MAX_CHUNK {
                let whole = pending.len() / MAX_CHUNK * MAX_CHUNK;
                self.line(stream, &pending[..whole], false)?;
                pending.drain(..whole);
            }
            Ok(())
        })();
        self.pending[stream.index()] = pending;
        result
    }

    /// Writes out what is left unended of both streams, as `P` records (the process has
    /// exited, or the writer is closing).
    pub fn finish(&mut self) -> Result<(), PodError> {
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let pending = std::mem::take(&mut self.pending[stream.index()]);
            if !pending.is_empty() {
                self.line(stream, &pending, false)?;
            }
        }
        Ok(())
    }

    /// Writes `content` (no newline in it) as records of at most [`MAX_CHUNK`] bytes; the
    /// last one is `F` when `ended`.
    fn line(&mut self, stream: LogStream, content: &[u8], ended: bool) -> Result<(), PodError> {
        if content.is_empty() {
            return if ended {
                self.record(stream, "F", b"")
            } else {
                Ok(())
            };
        }
        let chunks = content.len().div_ceil(MAX_CHUNK);
        for (i, chunk) in content.chunks(MAX_CHUNK).enumerate() {
            let tag = if ended && i + 1 == chunks { "F" } else { "P" };
            self.record(stream, tag, chunk)?;
        }
        Ok(())
    }

    fn record(&mut self, stream: LogStream, tag: &str, content: &[u8]) -> Result<(), PodError> {
        // A clock before 1970 or after 9999 is a broken host; the record still goes out.
        let now = format_rfc3339(SystemTime::now())
            .unwrap_or_else(|| "1970-01-01T00:00:00.000000000Z".into());
        let mut rec = Vec::with_capacity(now.len() + content.len() + 12);
        rec.extend_from_slice(now.as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(stream.as_str().as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(tag.as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(content);
        rec.push(b'\n');
        if self.size > 0 && self.size + rec.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file
            .write_all(&rec)
            .map_err(|e| PodError::io("write", &self.path, e))?;
        self.size += rec.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), PodError> {
        if self.keep == 0 {
            self.file
                .set_len(0)
                .map_err(|e| PodError::io("truncate", &self.path, e))?;
            self.size = 0;
            return Ok(());
        }
        for i in (1..self.keep).rev() {
            let from = rotated(&self.path, i);
            match fs::rename(&from, rotated(&self.path, i + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(PodError::io("rotate", from, e));
                }
                _ => {}
            }
        }
        fs::rename(&self.path, rotated(&self.path, 1))
            .map_err(|e| PodError::io("rotate", &self.path, e))?;
        (self.file, self.size) = open_append(&self.path)?;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<(File, u64), PodError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| PodError::io("open", path, e))?;
    let size = file
        .metadata()
        .map_err(|e| PodError::io("stat", path, e))?
        .len();
    Ok((file, size))
}

/// `X.log.<i>`.
fn rotated(path: &Path, i: usize) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(".{i}"));
    PathBuf::from(name)
}

/// The files of a log, oldest first: `X.log.N`, ..., `X.log.1` (those that exist), `X.log`.
fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..)
        .map(|i| rotated(path, i))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_owned());
    files
}

/// One parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord<'a> {
    /// RFC 3339, as written.
    pub timestamp: &'a str,
    pub stream: LogStream,
    /// `P`: the line goes on in the next record of this stream.
    pub partial: bool,
    pub content: &'a [u8],
}

/// Parses one record (without its newline); `None` for a malformed one.
pub fn parse_record(line: &[u8]) -> Option<LogRecord<'_>> {
    let mut fields = line.splitn(4, |&b| b == b' ');
    let timestamp = std::str::from_utf8(fields.next()?).ok()?;
    parse_rfc3339(timestamp)?;
    let stream = match fields.next()? {
        b"stdout" => LogStream::Stdout,
        b"stderr" => LogStream::Stderr,
        _ => return None,
    };
    let partial = match fields.next()? {
        b"F" => false,
        b"P" => true,
        _ => return None,
    };
    let content = fields.next().unwrap_or_default();
    Some(LogRecord {
        timestamp,
        stream,
        partial,
        content,
    })
}

/// A line put back together from its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The timestamp of its first record.
    pub timestamp: String,
    pub stream: LogStream,
    pub content: Vec<u8>,
    /// False for output that never got its newline.
    pub ended: bool,
}

/// What `peapod logs` prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Only the last N lines (of what is there when reading starts).
    pub tail: Option<usize>,
    /// Each line preceded by its RFC 3339 timestamp and a space.
    pub timestamps: bool,
}

/// Turns bytes of log files into lines and prints them.
struct Reader<'a, 'b> {
    opts: LogOptions,
    out: &'a mut dyn Write,
    err: Option<&'b mut dyn Write>,
    /// Each stream's line being put together.
    pending: [Option<LogLine>; 2],
    /// Bytes after the last newline read (a record still being written).
    carry: Vec<u8>,
    /// While reading what is there at first with `tail`: the last lines.
    tail: Option<VecDeque<LogLine>>,
}

impl<'a, 'b> Reader<'a, 'b> {
    fn new(opts: LogOptions, out: &'a mut dyn Write, err: Option<&'b mut dyn Write>) -> Self {
        Reader {
            opts,
            out,
            err,
            pending: [None, None],
            carry: Vec::new(),
            tail: opts.tail.map(|_| VecDeque::new()),
        }
    }

    /// Reads `file` from where it is to its end; returns whether there was anything.
    fn read_from(&mut self, file: &mut File, path: &Path) -> Result<bool, PodError> {
        let mut reader = BufReader::new(file);
        let mut any = false;
        loop {
            let n = reader
                .read_until(b'\n', &mut self.carry)
                .map_err(|e| PodError::io("read", path, e))?;
            if n == 0 {
                return Ok(any);
            }
            any = true;
            if self.carry.last() == Some(&b'\n') {
                let record = std::mem::take(&mut self.carry);
                self.record(&record[..record.len() - 1])?;
            }
        }
    }

    /// Reads a whole file that is no longer written (a rotated one).
    fn read_path(&mut self, path: &Path) -> Result<(), PodError> {
        match File::open(path) {
            Ok(mut file) => {
                self.read_from(&mut file, path)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(PodError::io("open", path, e)),
        }
        // A record cut off at the end of a finished file is lost.
        self.carry.clear();
        Ok(())
    }

    fn record(&mut self, bytes: &[u8]) -> Result<(), PodError> {
        let Some(rec) = parse_record(bytes) else {
            tracing::debug!("skipping a malformed log record");
            return Ok(());
        };
        let slot = &mut self.pending[rec.stream.index()];
        let line = slot.get_or_insert_with(|| LogLine {
            timestamp: rec.timestamp.to_owned(),
            stream: rec.stream,
            content: Vec::new(),
            ended: false,
        });
        line.content.extend_from_slice(rec.content);
        if !rec.partial
            && let Some(mut line) = slot.take()
        {
            line.ended = true;
            self.line(line)?;
        }
        Ok(())
    }

    fn line(&mut self, line: LogLine) -> Result<(), PodError> {
        if let (Some(tail), Some(n)) = (&mut self.tail, self.opts.tail) {
            tail.push_back(line);
            if tail.len() > n {
                tail.pop_front();
            }
            return Ok(());
        }
        let out: &mut dyn Write = match (line.stream, &mut self.err) {
            (LogStream::Stderr, Some(err)) => &mut **err,
            _ => &mut *self.out,
        };
        let write = |out: &mut dyn Write| {
            if self.opts.timestamps {
                out.write_all(line.timestamp.as_bytes())?;
                out.write_all(b" ")?;
            }
            out.write_all(&line.content)?;
            if line.ended {
                out.write_all(b"\n")?;
            }
            Ok(())
        };
        write(out).map_err(|source| PodError::Output { source })
    }

    /// Lines never ended: out as they are.
    fn finish_pending(&mut self) -> Result<(), PodError> {
        for i in 0..2 {
            if let Some(line) = self.pending[i].take() {
                self.line(line)?;
            }
        }
        Ok(())
    }

    /// Ends `tail` mode: prints the lines kept.
    fn end_tail(&mut self) -> Result<(), PodError> {
        if let Some(lines) = self.tail.take() {
            for line in lines {
                self.line(line)?;
            }
        }
        self.flush()
    }

    fn flush(&mut self) -> Result<(), PodError> {
        self.out
            .flush()
            .and_then(|()| self.err.as_mut().map_or(Ok(()), |e| e.flush()))
            .map_err(|source| PodError::Output { source })
    }
}

/// Prints a container's log (`X.log.1`, then `X.log`): each line's content, stderr lines to
/// `err` when given (else to `out`). A missing log is empty; malformed records are skipped.
pub fn read_logs(
    path: &Path,
    opts: LogOptions,
    out: &mut dyn Write,
    err: Option<&mut dyn Write>,
) -> Result<(), PodError> {
    let mut reader = Reader::new(opts, out, err);
    for file in log_files(path) {
        reader.read_path(&file)?;
    }
    reader.finish_pending()?;
    reader.end_tail()
}

/// Prints a log as [`read_logs`] does, then what is appended to it, following rotations,
/// every [`POLL_INTERVAL`], until `keep_going` returns false and nothing more is there.
pub fn follow_logs(
    path: &Path,
    opts: LogOptions,
    out: &mut dyn Write,
    err: Option<&mut dyn Write>,
    keep_going: &mut dyn FnMut() -> bool,
) -> Result<(), PodError> {
    let mut reader = Reader::new(opts, out, err);
    let files = log_files(path);
    for file in &files[..files.len() - 1] {
        reader.read_path(file)?;
    }
    let mut live = Live::new(path);
    live.poll(&mut reader)?;
    reader.end_tail()?;
    loop {
        if live.poll(&mut reader)? {
            reader.flush()?;
            continue;
        }
        if !keep_going() {
            while live.poll(&mut reader)? {}
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    reader.finish_pending()?;
    reader.flush()
}

/// The live log file being followed.
struct Live {
    path: PathBuf,
    /// The open file and its (device, inode).
    file: Option<(File, (u64, u64))>,
}

impl Live {
    fn new(path: &Path) -> Self {
        Live {
            path: path.to_owned(),
            file: None,
        }
    }

    /// Reads what is new; returns whether there was anything.
    fn poll(&mut self, reader: &mut Reader) -> Result<bool, PodError> {
        let mut any = false;
        if let Some((file, _)) = &mut self.file {
            any |= reader.read_from(file, &self.path)?;
        }
        let now = match fs::metadata(&self.path) {
            Ok(m) => (m.dev(), m.ino(), m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(any),
            Err(e) => return Err(PodError::io("stat", &self.path, e)),
        };
        match &mut self.file {
            Some((file, id)) if *id == (now.0, now.1) => {
                let pos = file
                    .stream_position()
                    .map_err(|e| PodError::io("read", &self.path, e))?;
                if now.2 < pos {
                    // Truncated in place: start again from its beginning.
                    file.rewind()
                        .map_err(|e| PodError::io("read", &self.path, e))?;
                    reader.carry.clear();
                    any |= reader.read_from(file, &self.path)?;
                }
            }
            old => {
                // Replaced (rotated) or new: finish the old file, then read the new one.
                if let Some((file, _)) = old {
                    any |= reader.read_from(file, &self.path)?;
                    reader.carry.clear();
                }
                let mut file = match File::open(&self.path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(any),
                    Err(e) => return Err(PodError::io("open", &self.path, e)),
                };
                let m = file
                    .metadata()
                    .map_err(|e| PodError::io("stat", &self.path, e))?;
                any |= reader.read_from(&mut file, &self.path)?;
                self.file = Some((file, (m.dev(), m.ino())));
            }
        }
        Ok(any)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    fn log() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        (dir, path)
    }

    fn records(path: &Path) -> Vec<(LogStream, bool, String)> {
        let bytes = fs::read(path).unwrap();
        bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let r = parse_record(l).unwrap();
                (
                    r.stream,
                    r.partial,
                    String::from_utf8_lossy(r.content).into(),
                )
            })
            .collect()
    }

    fn read(path: &Path, opts: LogOptions) -> String {
        let mut out = Vec::new();
        read_logs(path, opts, &mut out, None).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lines_are_split_and_unended_output_waits() {
        let (_tmp, path) = log();
        let mut w = LogWriter::create(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP).unwrap();
        w.write(LogStream::Stdout, b"one\ntw").unwrap();
        w.write(LogStream::Stderr, b"oops\n").unwrap();
        w.write(LogStream::Stdout, b"o\n\nthr").unwrap();
        use LogStream::*;
        let full = |s: LogStream, c: &str| (s, false, c.to_string());
        assert_eq!(
            records(&path),
            [
                full(Stdout, "one"),
                full(Stderr, "oops"),
                full(Stdout, "two"),
                full(Stdout, "")
            ]
        );
        w.finish().unwrap();
        assert_eq!(
            records(&path).last().unwrap(),
            &(Stdout, true, "thr".to_string())
        );
        assert_eq!(read(&path, LogOptions::default()), "one\noops\ntwo\n\nthr");
        // A record looks like CRI's.
        let text = fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        let (ts, rest) = first.split_once(' ').unwrap();
        assert!(
            parse_rfc3339(ts).is_some() && ts.ends_with('Z') && ts.len() == 30,
            "{ts}"
        );
        assert_eq!(rest, "stdout F one");
    }

    #[test]
    fn stderr_can_go_to_its_own_writer() {
        let (_tmp, path) = log();
        let mut w = LogWriter::create(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP).unwrap();
        w.write(LogStream::Stdout, b"out1\n").unwrap();
        w.write(LogStream::Stderr, b"err1\n").unwrap();
        w.write(LogStream::Stdout, b"out2\n").unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        read_logs(&path, LogOptions::default(), &mut out, Some(&mut err)).unwrap();
        assert_eq!(out, b"out1\nout2\n");
        assert_eq!(err, b"err1\n");
    }

    #[test]
    fn long_lines_become_partial_records_and_come_back_whole() {
        let (_tmp, path) = log();
        let mut w = LogWriter::create(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP).unwrap();
        let long = "x".repeat(MAX_CHUNK * 2 + 5);
        // Unended and past MAX_CHUNK: whole chunks go out as P, the rest waits.
        w.write(LogStream::Stdout, long.as_bytes()).unwrap();
        assert_eq!(records(&path).len(), 2);
        assert!(
            records(&path)
                .iter()
                .all(|(_, p, c)| *p && c.len() == MAX_CHUNK)
        );
        w.write(LogStream::Stderr, b"between\n").unwrap();
        w.write(LogStream::Stdout, b"\n").unwrap();
        let recs = records(&path);
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[3], (LogStream::Stdout, false, "xxxxx".to_string()));
        // One ended line longer than a chunk at once: P, P, F.
        let longer = "y".repeat(MAX_CHUNK * 2 + 1);
        w.write(LogStream::Stdout, format!("{longer}\n").as_bytes())
            .unwrap();
        let recs = records(&path);
        let flags: Vec<bool> = recs[4..].iter().map(|r| r.1).collect();
        assert_eq!(flags, [true, true, false]);
        assert_eq!(
            read(&path, LogOptions::default()),
            format!("between\n{long}\n{longer}\n")
        );
    }

    #[test]
    fn rotation_keeps_exactly_two_files_and_reads_in_order() {
        let (tmp, path) = log();
        let mut w = LogWriter::create(&path, 200, 1).unwrap();
        for i in 0..100 {
            w.write(LogStream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        let mut names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["app.log", "app.log.1"]);
        for f in [&path, &rotated(&path, 1)] {
            let len = fs::metadata(f).unwrap().len();
            assert!(len > 0 && len <= 200, "{} is {len} bytes", f.display());
        }
        let text = read(&path, LogOptions::default());
        let nums: Vec<usize> = text
            .lines()
            .map(|l| l.strip_prefix("line ").unwrap().parse().unwrap())
            .collect();
        assert_eq!(*nums.last().unwrap(), 99);
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
        assert!(nums.len() >= 4);
    }

    #[test]
    fn keep_more_and_keep_none() {
        let (tmp, path) = log();
        let mut w = LogWriter::create(&path, 100, 3).unwrap();
        for i in 0..100 {
            w.write(LogStream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 4);
        assert!(read(&path, LogOptions::default()).ends_with("line 99\n"));

        let (_tmp, path) = log();
        let mut w = LogWriter::create(&path, 100, 0).unwrap();
        for i in 0..100 {
            w.write(LogStream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        assert!(fs::metadata(&path).unwrap().len() <= 100);
        assert!(read(&path, LogOptions::default()).ends_with("line 99\n"));
    }

    #[test]
    fn tail_and_timestamps() {
        let (_tmp, path) = log();
        let mut w = LogWriter::create(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP).unwrap();
        for i in 0..10 {
            w.write(LogStream::Stdout, format!("{i}\n").as_bytes())
                .unwrap();
        }
        let tail = |n| LogOptions {
            tail: Some(n),
            timestamps: false,
        };
        assert_eq!(read(&path, tail(3)), "7\n8\n9\n");
        assert_eq!(read(&path, tail(0)), "");
        assert_eq!(read(&path, tail(100)).lines().count(), 10);
        let stamped = read(
            &path,
            LogOptions {
                tail: Some(1),
                timestamps: true,
            },
        );
        let (ts, line) = stamped.split_once(' ').unwrap();
        assert!(parse_rfc3339(ts).is_some(), "{stamped}");
        assert_eq!(line, "9\n");
    }

    #[test]
    fn malformed_records_are_skipped() {
        let (_tmp, path) = log();
        let ts = "2024-05-01T12:00:00.000000001Z";
        let mut text = Vec::new();
        for line in [
            format!("{ts} stdout F good"),
            "garbage".into(),
            format!("{ts} stdin F bad stream"),
            format!("{ts} stdout X bad tag"),
            "yesterday stdout F bad time".into(),
            format!("{ts} stdout"),
            String::new(),
            format!("{ts} stdout F"),
            format!("{ts} stderr P par"),
            format!("{ts} stderr F tial"),
        ] {
            text.extend_from_slice(line.as_bytes());
            text.push(b'\n');
        }
        text.extend_from_slice(b"\xff\xfe\x00 not utf8\n");
        text.extend_from_slice(format!("{ts} stdout F cut off, no newline").as_bytes());
        fs::write(&path, text).unwrap();
        assert_eq!(read(&path, LogOptions::default()), "good\n\npartial\n");
        // A missing log is empty.
        assert_eq!(
            read(&path.with_file_name("none.log"), LogOptions::default()),
            ""
        );
    }

    /// A `Write` the test can read while `follow_logs` writes to it in another thread.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }

        fn wait_for(&self, want: &str) {
            for _ in 0..100 {
                if self.text() == want {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(self.text(), want);
        }
    }

    #[test]
    fn follow_picks_up_appended_lines_and_rotations() {
        let (_tmp, path) = log();
        let mut w = LogWriter::create(&path, 300, 1).unwrap();
        w.write(LogStream::Stdout, b"old 1\nold 2\n").unwrap();
        let out = Shared::default();
        let stop = Arc::new(AtomicBool::new(false));
        let follower = {
            let (path, mut out, stop) = (path.clone(), out.clone(), stop.clone());
            std::thread::spawn(move || {
                let opts = LogOptions {
                    tail: Some(1),
                    timestamps: false,
                };
                follow_logs(&path, opts, &mut out, None, &mut || {
                    !stop.load(Ordering::SeqCst)
                })
            })
        };
        out.wait_for("old 2\n");
        w.write(LogStream::Stdout, b"new 1\nnew ").unwrap();
        out.wait_for("old 2\nnew 1\n");
        w.write(LogStream::Stdout, b"2\n").unwrap();
        out.wait_for("old 2\nnew 1\nnew 2\n");
        // Enough to rotate (300 bytes of ~42-byte records): lines keep coming, in order.
        let mut want = out.text();
        for i in 0..5 {
            w.write(LogStream::Stdout, format!("rot {i}\n").as_bytes())
                .unwrap();
            want.push_str(&format!("rot {i}\n"));
            out.wait_for(&want);
        }
        assert!(rotated(&path, 1).exists());
        // Lines written just before stopping are still printed.
        w.write(LogStream::Stderr, b"last\n").unwrap();
        w.write(LogStream::Stdout, b"unended").unwrap();
        w.finish().unwrap();
        stop.store(true, Ordering::SeqCst);
        follower.join().unwrap().unwrap();
        want.push_str("last\nunended");
        assert_eq!(out.text(), want);
    }

    #[test]
    fn follow_waits_for_a_log_that_does_not_exist_yet() {
        let (_tmp, path) = log();
        let out = Shared::default();
        let stop = Arc::new(AtomicBool::new(false));
        let follower = {
            let (path, mut out, stop) = (path.clone(), out.clone(), stop.clone());
            std::thread::spawn(move || {
                follow_logs(&path, LogOptions::default(), &mut out, None, &mut || {
                    !stop.load(Ordering::SeqCst)
                })
            })
        };
        std::thread::sleep(Duration::from_millis(150));
        let mut w = LogWriter::create(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP).unwrap();
        w.write(LogStream::Stdout, b"hello\n").unwrap();
        out.wait_for("hello\n");
        stop.store(true, Ordering::SeqCst);
        follower.join().unwrap().unwrap();
    }
}
