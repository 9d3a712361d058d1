//! A bound on tar header extensions, checked before the `tar` crate reads them.
//!
//! The `tar` crate reads a GNU long name (`L`), long link (`K`) or PAX extension (`x`)
//! member whole into memory to apply it to the next entry, however large its header says it
//! is: a small gzip can hold a multi-GiB run of one byte. [`guarded`] puts a reader between
//! the tar crate and the stream that follows the archive's block structure as the bytes go
//! by, the way the tar crate walks it (header, GNU sparse extension blocks, data rounded up to
//! 512 bytes, a PAX `size` overriding the next entry's header), and fails the read that
//! carries an `L`, `K`, `x` or `g` header declaring more than [`MAX_EXTENSION`] bytes, before
//! any of that member is read.

use std::io::{self, Read};

/// The largest header extension member accepted: long names and links are at most a path
/// (4 KiB on Linux), PAX records a few of those plus extended attributes.
pub const MAX_EXTENSION: u64 = 1 << 20;

const BLOCK: usize = 512;
/// In a GNU sparse extension block: whether another one follows.
const EXT_ISEXTENDED: usize = 504;

#[derive(Debug, thiserror::Error)]
#[error(
    "a tar {what} member declares {size} bytes, more than the {MAX_EXTENSION} allowed for a \
     header extension: the archive is malformed or hostile"
)]
pub struct ExtensionTooLarge {
    pub what: &'static str,
    pub size: u64,
}

/// A tar archive over `reader` whose header extensions are bounded by [`MAX_EXTENSION`].
pub fn guarded<R: Read>(reader: R) -> tar::Archive<ExtensionLimit<R>> {
    tar::Archive::new(ExtensionLimit::new(reader))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a header block.
    Header,
    /// Collecting a GNU sparse extension block; `data` bytes of the entry follow them.
    SparseExt { data: u64 },
    /// Passing an entry's data (and its padding). For a PAX extension (`pax`), which may
    /// override the size of the entry it describes, the first `keep` bytes are collected.
    Data { left: u64, keep: u64, pax: bool },
    /// Past the end marker (or a header the tar crate refuses): nothing more is parsed.
    Done,
}

/// See [`guarded`].
pub struct ExtensionLimit<R> {
    inner: R,
    state: State,
    block: Box<[u8; BLOCK]>,
    filled: usize,
    /// The data of a PAX extension being read.
    collecting: Vec<u8>,
    /// The last PAX extension, until the entry it describes.
    pax: Option<Vec<u8>>,
}

impl<R: Read> ExtensionLimit<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            state: State::Header,
            block: Box::new([0; BLOCK]),
            filled: 0,
            collecting: Vec::new(),
            pax: None,
        }
    }

    /// Follows the archive's structure over `bytes`, the next ones of the stream.
    fn observe(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.state {
                State::Done => return Ok(()),
                State::Header | State::SparseExt { .. } => {
                    let n = (BLOCK - self.filled).min(bytes.len());
                    self.block[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
                    self.filled += n;
                    bytes = &bytes[n..];
                    if self.filled == BLOCK {
                        self.filled = 0;
                        self.state = match self.state {
                            State::SparseExt { data } if self.block[EXT_ISEXTENDED] == 1 => {
                                State::SparseExt { data }
                            }
                            State::SparseExt { data } => data_state(data),
                            _ => self.header()?,
                        };
                    }
                }
                State::Data { left, keep, pax } => {
                    let n = usize::try_from(left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    let kept = usize::try_from(keep).map_or(n, |k| k.min(n));
                    self.collecting.extend_from_slice(&bytes[..kept]);
                    bytes = &bytes[n..];
                    let left = left - n as u64;
                    let keep = keep - kept as u64;
                    self.state = if left > 0 {
                        State::Data { left, keep, pax }
                    } else {
                        if pax {
                            self.pax = Some(std::mem::take(&mut self.collecting));
                        }
                        State::Header
                    };
                }
            }
        }
        Ok(())
    }

    /// A complete header block: the state that follows it.
    fn header(&mut self) -> io::Result<State> {
        if self.block.iter().all(|&b| b == 0) {
            // The end marker: the tar crate reads no further.
            return Ok(State::Done);
        }
        let header = tar::Header::from_byte_slice(&self.block[..]);
        let kind = header.entry_type();
        let what = match kind.as_byte() {
            b'L' => Some("GNU long name"),
            b'K' => Some("GNU long link"),
            b'x' => Some("PAX extension"),
            b'g' => Some("PAX global extension"),
            _ => None,
        };
        let Ok(mut size) = header.entry_size() else {
            // The tar crate fails on it too.
            return Ok(State::Done);
        };
        if let Some(what) = what
            && size > MAX_EXTENSION
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                ExtensionTooLarge { what, size },
            ));
        }
        if what.is_none()
            && let Some(pax_size) = self.pax.as_deref().and_then(pax_size)
        {
            size = pax_size;
        }
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        if recognized && matches!(kind.as_byte(), b'L' | b'K' | b'x') {
            // Applied to the next entry; a PAX extension is kept for its size.
            if kind.as_byte() != b'x' {
                return Ok(data_state(size));
            }
            self.collecting = Vec::with_capacity(size as usize);
            return Ok(match data_state(size) {
                State::Data { left, .. } => State::Data {
                    left,
                    keep: size,
                    pax: true,
                },
                _ => {
                    self.pax = Some(Vec::new());
                    State::Header
                }
            });
        }
        // The entry the extensions describe.
        self.pax = None;
        if kind.is_gnu_sparse() && header.as_gnu().is_some_and(|g| g.isextended[0] == 1) {
            return Ok(State::SparseExt { data: size });
        }
        Ok(data_state(size))
    }
}

/// Passing `size` bytes of data, padded to a whole block.
fn data_state(size: u64) -> State {
    match size.checked_next_multiple_of(BLOCK as u64) {
        // The tar crate fails on it too.
        None => State::Done,
        Some(0) => State::Header,
        Some(left) => State::Data {
            left,
            keep: 0,
            pax: false,
        },
    }
}

/// The `size` record of a PAX extension, read as the tar crate reads it.
fn pax_size(pax: &[u8]) -> Option<u64> {
    for extension in tar::PaxExtensions::new(pax) {
        let extension = extension.ok()?;
        if extension.key() != Ok("size") {
            continue;
        }
        return extension.value().ok()?.parse().ok();
    }
    None
}

impl<R: Read> Read for ExtensionLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands the archive out a few bytes at a time, as a decompressor may.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.step = self.step % 7 + 1;
            let n = self.step.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    /// Every entry's path and data, read through the guard.
    fn entries(bytes: &[u8]) -> io::Result<Vec<(String, Vec<u8>)>> {
        let mut archive = guarded(Trickle { bytes, step: 0 });
        let mut out = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            out.push((path, data));
        }
        Ok(out)
    }

    fn raw_header(kind: u8, path: &str, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_path(path).unwrap();
        h.set_mode(0o644);
        h.set_size(size);
        h.set_cksum();
        h
    }

    /// An archive using every structure the guard follows: GNU long names and links, a PAX
    /// `size` that overrides the header's, a GNU sparse file with an extension block, a
    /// global PAX header.
    fn honest(builder: &mut tar::Builder<Vec<u8>>) -> Vec<(String, Vec<u8>)> {
        let long = format!("{}file", "dir/".repeat(40));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(3);
        builder.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        builder.append_link(&mut h, "link", &long).unwrap();

        let record = b"13 size=1000\n";
        builder
            .append(&raw_header(b'x', "pax", record.len() as u64), &record[..])
            .unwrap();
        // The header says 0 bytes; the PAX record says 1000, and the tar crate believes it.
        builder
            .append(&raw_header(b'0', "paxed", 0), &[b'p'; 1000][..])
            .unwrap();

        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_path("sparse").unwrap();
        h.set_mode(0o644);
        h.set_size(1024);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(4608);
        gnu.sparse[0].set_offset(0);
        gnu.sparse[0].set_length(512);
        gnu.set_is_extended(true);
        h.set_cksum();
        let mut ext = tar::GnuExtSparseHeader::new();
        ext.sparse_mut()[0].set_offset(4096);
        ext.sparse_mut()[0].set_length(512);
        let out = builder.get_mut();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(ext.as_bytes());
        out.extend_from_slice(&[b's'; 1024]);

        let global = b"16 comment=hello\n";
        builder
            .append(
                &raw_header(b'g', "global", global.len() as u64),
                &global[..],
            )
            .unwrap();
        builder
            .append(&raw_header(b'0', "last", 2), &b"ok"[..])
            .unwrap();

        let mut sparse = vec![b's'; 512];
        sparse.resize(4096, 0);
        sparse.extend_from_slice(&[b's'; 512]);
        vec![
            (long.clone(), b"abc".to_vec()),
            ("link".to_string(), Vec::new()),
            ("paxed".to_string(), vec![b'p'; 1000]),
            ("sparse".to_string(), sparse),
            ("global".to_string(), global.to_vec()),
            ("last".to_string(), b"ok".to_vec()),
        ]
    }

    fn refused(err: &io::Error) -> bool {
        err.get_ref().is_some_and(|e| e.is::<ExtensionTooLarge>())
    }

    #[test]
    fn honest_archives_read_as_without_the_guard() {
        let mut builder = tar::Builder::new(Vec::new());
        let expected = honest(&mut builder);
        let bytes = builder.into_inner().unwrap();
        assert_eq!(entries(&bytes).unwrap(), expected);
        let mut plain = tar::Archive::new(&bytes[..]);
        assert_eq!(plain.entries().unwrap().count(), expected.len());
    }

    #[test]
    fn the_guard_keeps_step_and_catches_an_oversized_extension_after_anything() {
        for kind in [b'L', b'K', b'x', b'g'] {
            let mut builder = tar::Builder::new(Vec::new());
            honest(&mut builder);
            // Where the guard lost count of blocks, this header would go unseen.
            let bomb = raw_header(kind, "bomb", MAX_EXTENSION + 1);
            let out = builder.get_mut();
            out.extend_from_slice(bomb.as_bytes());
            out.extend_from_slice(&[b'a'; 4096]);
            let bytes = builder.into_inner().unwrap();
            let err = entries(&bytes).unwrap_err();
            assert!(refused(&err), "{}: {err}", kind as char);
            assert!(
                err.to_string()
                    .contains("1048577 bytes, more than the 1048576"),
                "{err}"
            );
        }
        // At the limit is fine; past the end marker nothing is looked at.
        let mut builder = tar::Builder::new(Vec::new());
        let long = vec![b'n'; MAX_EXTENSION as usize - 1];
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_path("././@LongLink").unwrap();
        h.set_size(MAX_EXTENSION);
        h.set_cksum();
        let mut name = long.clone();
        name.push(0);
        builder.append(&h, &name[..]).unwrap();
        builder
            .append(&raw_header(b'0', "short", 1), &b"x"[..])
            .unwrap();
        let mut bytes = builder.into_inner().unwrap();
        bytes.extend_from_slice(raw_header(b'L', "after", u64::MAX >> 1).as_bytes());
        let got = entries(&bytes).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.len(), long.len());
    }
}
