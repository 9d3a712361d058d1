//! cpio "newc" archives, the format of Linux initramfs images.
//!
//! Only writing is needed: peapod assembles initramfs images for the nested host VM and for
//! guests. The kernel accepts several archives concatenated, each padded to 4 bytes; `finish`
//! pads the end to 512 bytes so that another archive can follow.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Component, Path};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("archive path {0:?} must be absolute and normal (no `..`, no `.`)")]
    BadPath(String),
    #[error("{path:?} is {size} bytes: cpio newc entries stop at 4 GiB")]
    TooLarge { path: String, size: u64 },
    #[error("{path:?} is already in the archive as another kind of entry")]
    Conflict { path: String },
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("cannot write the archive: {0}")]
    Write(#[from] io::Error),
}

/// Writes a newc archive entry by entry. Parent directories are created on demand, so entries
/// may come in any order; every entry gets mtime 0, so equal inputs give equal archives.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    dirs: BTreeSet<String>,
    others: BTreeSet<String>,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
            dirs: BTreeSet::new(),
            others: BTreeSet::new(),
        }
    }

    /// A directory (and its parents).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), CpioError> {
        let name = archive_name(path)?;
        self.ensure_parents(&name)?;
        if self.others.contains(&name) {
            return Err(CpioError::Conflict { path: name });
        }
        if self.dirs.insert(name.clone()) {
            self.entry(&name, S_IFDIR | (mode & 0o7777), 2, 0, 0, &mut io::empty())?;
        }
        Ok(())
    }

    /// A regular file with the given bytes.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), CpioError> {
        let name = self.claim(path)?;
        self.entry(
            &name,
            S_IFREG | (mode & 0o7777),
            1,
            0,
            data.len() as u64,
            &mut &data[..],
        )
    }

    /// A regular file copied from the host (streamed, not loaded whole).
    pub fn file_from(&mut self, path: &str, mode: u32, source: &Path) -> Result<(), CpioError> {
        let read_err = |err| CpioError::Read {
            path: source.display().to_string(),
            source: err,
        };
        let file = File::open(source).map_err(read_err)?;
        let size = file.metadata().map_err(read_err)?.len();
        let name = self.claim(path)?;
        self.entry(
            &name,
            S_IFREG | (mode & 0o7777),
            1,
            0,
            size,
            &mut file.take(size),
        )
    }

    /// A symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        let name = self.claim(path)?;
        self.entry(
            &name,
            S_IFLNK | 0o777,
            1,
            0,
            target.len() as u64,
            &mut target.as_bytes(),
        )
    }

    /// A character device node.
    pub fn char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        let name = self.claim(path)?;
        let rdev = (u64::from(major) << 32) | u64::from(minor);
        self.entry(
            &name,
            S_IFCHR | (mode & 0o7777),
            1,
            rdev,
            0,
            &mut io::empty(),
        )
    }

    /// Writes the trailer, pads to 512 bytes and returns the output.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.entry(TRAILER, 0, 1, 0, 0, &mut io::empty())?;
        let pad = (512 - self.written % 512) % 512;
        self.out.write_all(&vec![0u8; pad as usize])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn claim(&mut self, path: &str) -> Result<String, CpioError> {
        let name = archive_name(path)?;
        self.ensure_parents(&name)?;
        if self.dirs.contains(&name) || !self.others.insert(name.clone()) {
            return Err(CpioError::Conflict { path: name });
        }
        Ok(name)
    }

    fn ensure_parents(&mut self, name: &str) -> Result<(), CpioError> {
        let mut prefix = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.others.contains(&prefix) {
                return Err(CpioError::Conflict { path: prefix });
            }
            if self.dirs.insert(prefix.clone()) {
                self.entry(&prefix.clone(), S_IFDIR | 0o755, 2, 0, 0, &mut io::empty())?;
            }
        }
        Ok(())
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: u64,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<(), CpioError> {
        let size32 = u32::try_from(size).map_err(|_| CpioError::TooLarge {
            path: name.to_string(),
            size,
        })?;
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let header = format!(
            "{MAGIC}{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size32:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0, // uid
            0, // gid
            0, // mtime
            0, // dev major
            0, // dev minor
            (rdev >> 32) as u32,
            rdev as u32,
            name.len() + 1,
            0, // check
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad4()?;
        let copied = io::copy(data, &mut self.out)?;
        if copied != size {
            return Err(CpioError::Read {
                path: name.to_string(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("expected {size} bytes, read {copied} (file changed while archiving?)"),
                ),
            });
        }
        self.written += copied;
        self.pad4()
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> Result<(), CpioError> {
        let pad = ((4 - self.written % 4) % 4) as usize;
        self.put(&[0u8; 3][..pad])
    }
}

/// `/usr/bin/x` → `usr/bin/x`, refusing `..`, `.` and relative paths.
fn archive_name(path: &str) -> Result<String, CpioError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(CpioError::BadPath(path.to_string()));
    }
    let mut parts = Vec::new();
    for component in p.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => parts.push(
                part.to_str()
                    .ok_or_else(|| CpioError::BadPath(path.to_string()))?,
            ),
            _ => return Err(CpioError::BadPath(path.to_string())),
        }
    }
    if parts.is_empty() {
        return Err(CpioError::BadPath(path.to_string()));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An archive entry as the test reader sees it: (name, mode, rdev, data).
    type Entry = (String, u32, (u32, u32), Vec<u8>);

    /// A minimal newc reader for the tests.
    fn parse(mut bytes: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let total = bytes.len();
        loop {
            let field = |h: &[u8], i: usize| {
                u32::from_str_radix(std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).unwrap(), 16)
                    .unwrap()
            };
            assert_eq!(&bytes[..6], b"070701");
            let header = &bytes[..110];
            let mode = field(header, 1);
            let size = field(header, 6) as usize;
            let rdev = (field(header, 9), field(header, 10));
            let namesize = field(header, 11) as usize;
            let name = std::str::from_utf8(&bytes[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            let mut offset = (110 + namesize).div_ceil(4) * 4;
            let data = bytes[offset..offset + size].to_vec();
            offset = (offset + size).div_ceil(4) * 4;
            bytes = &bytes[offset..];
            if name == TRAILER {
                assert_eq!((total - bytes.len()) % 4, 0);
                assert!(bytes.iter().all(|b| *b == 0));
                return entries;
            }
            entries.push((name, mode, rdev, data));
        }
    }

    #[test]
    fn entries_round_trip_with_parents_first() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/usr/bin/tool", 0o755, b"#!/bin/sh\necho hi\n")
            .unwrap();
        w.symlink("/bin/sh", "busybox").unwrap();
        w.char_device("/dev/console", 0o600, 5, 1).unwrap();
        w.dir("/usr", 0o755).unwrap(); // already there: no second entry
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 512, 0);
        let entries = parse(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "usr",
                "usr/bin",
                "usr/bin/tool",
                "bin",
                "bin/sh",
                "dev",
                "dev/console"
            ]
        );
        assert_eq!(entries[2].1, S_IFREG | 0o755);
        assert_eq!(entries[2].3, b"#!/bin/sh\necho hi\n");
        assert_eq!(entries[4].1, S_IFLNK | 0o777);
        assert_eq!(entries[4].3, b"busybox");
        assert_eq!(entries[6].1, S_IFCHR | 0o600);
        assert_eq!(entries[6].2, (5, 1));
    }

    #[test]
    fn host_files_are_streamed() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("blob");
        let data: Vec<u8> = (0..10_001u32).map(|i| i as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let mut w = CpioWriter::new(Vec::new());
        w.file_from("/data/blob", 0o644, &src).unwrap();
        let entries = parse(&w.finish().unwrap());
        assert_eq!(entries[1].0, "data/blob");
        assert_eq!(entries[1].3, data);
    }

    #[test]
    fn bad_paths_and_conflicts_are_refused() {
        let mut w = CpioWriter::new(Vec::new());
        for bad in ["relative", "/a/../b", "/", "./x"] {
            assert!(
                matches!(w.file(bad, 0o644, b""), Err(CpioError::BadPath(_))),
                "{bad}"
            );
        }
        w.file("/etc/x", 0o644, b"1").unwrap();
        assert!(matches!(
            w.file("/etc/x", 0o644, b"2"),
            Err(CpioError::Conflict { .. })
        ));
        assert!(matches!(
            w.file("/etc/x/y", 0o644, b"2"),
            Err(CpioError::Conflict { .. })
        ));
        assert!(matches!(
            w.dir("/etc/x", 0o755),
            Err(CpioError::Conflict { .. })
        ));
    }

    #[test]
    fn missing_source_names_the_file() {
        let mut w = CpioWriter::new(Vec::new());
        let err = w
            .file_from("/x", 0o644, Path::new("/nonexistent/peapod"))
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/peapod"), "{err}");
    }
}
