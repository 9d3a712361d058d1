//! Applying layer tars, in order, to one directory: the flattened root filesystem.
//!
//! Whiteouts follow the OCI layer spec: `.wh.NAME` deletes `NAME` from lower layers,
//! `.wh..wh..opq` hides everything lower layers put in its directory; neither touches what
//! the same layer adds. Every path goes through [`super::confine`], so no entry, symlink
//! chain or hard link reaches outside the target. Streams are read once, entry by entry;
//! nothing is buffered whole. A byte and an entry budget stop archive bombs; the byte budget
//! counts the zeros written for holes in GNU sparse files too, which the tar holds as a
//! length only.
//!
//! Ownership is kept when running as root (`chown`), modes always; device nodes are made
//! only as root and skipped (counted in the report) otherwise. Directory modes and times
//! are set last, so a read-only directory can still be filled by later layers.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;

use super::confine::{self, ConfineError};
use super::store::copy_large;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot read {layer}: {source} (is the archive truncated or corrupt?)")]
    Read {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error("{layer}: entry {entry:?}: {source}")]
    Confine {
        layer: String,
        entry: String,
        #[source]
        source: ConfineError,
    },
    #[error("{layer}: hard link {entry:?} -> {target:?}: {reason}")]
    HardLink {
        layer: String,
        entry: String,
        target: String,
        reason: String,
    },
    #[error("{layer}: whiteout {entry:?} names no file: the archive is malformed")]
    BadWhiteout { layer: String, entry: String },
    #[error("{layer}: cannot {what} {entry:?}: {source}")]
    Write {
        layer: String,
        entry: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "the image has more than {limit} entries, the unpack limit: if it is genuine, raise \
         the limit (UnpackLimits::max_entries, --max-entries)"
    )]
    TooManyEntries { limit: u64 },
    #[error(
        "the image unpacks to more than {limit} bytes, the unpack limit: if it is genuine, raise \
         the limit (UnpackLimits::max_bytes, --max-bytes)"
    )]
    TooLarge { limit: u64 },
    #[error("cannot set the mode of directory {}: {source}", path.display())]
    Finish {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Budgets against archive bombs, over all layers of one unpack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Uncompressed tar bytes (data, headers, long names), plus the holes of sparse files.
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_bytes: 32 << 30,
            max_entries: 2_000_000,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct UnpackOptions {
    pub limits: UnpackLimits,
    /// Give files the owners the archive names (needs root).
    pub chown: bool,
    /// Make character and block devices (needs root).
    pub devices: bool,
}

impl UnpackOptions {
    /// Ownership and devices when running as root, modes only otherwise.
    pub fn for_current_user() -> Self {
        let root = nix::unistd::geteuid().is_root();
        Self {
            limits: UnpackLimits::default(),
            chown: root,
            devices: root,
        }
    }
}

/// What an unpack did, including what it left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackReport {
    pub entries: u64,
    /// Uncompressed tar bytes read.
    pub bytes: u64,
    /// Device nodes not made (not root).
    pub skipped_devices: u64,
    /// Extended attributes that could not be set (e.g. security.* when not root).
    pub skipped_xattrs: u64,
    /// Entries of other kinds (global headers, unknown types).
    pub skipped_other: u64,
}

#[derive(Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: Option<SystemTime>,
}

/// Owner, mode, time and extended attributes of one entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<SystemTime>,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Applies layers to a directory. Call [`Unpacker::apply_layer`] per layer, bottom first,
/// then [`Unpacker::finish`].
pub struct Unpacker {
    root: PathBuf,
    opts: UnpackOptions,
    report: UnpackReport,
    /// Directory modes and times, set in `finish`; keyed by path relative to the root.
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// The last parent directory resolved, while nothing was removed since.
    last_parent: Option<(Vec<OsString>, PathBuf)>,
    /// Zeros written for holes in sparse files (charged to the byte budget with
    /// `report.bytes`).
    hole_bytes: u64,
}

/// What one layer spent of the byte budget: tar bytes read (counted by [`Budget`] as the tar
/// crate reads them) and zeros written for sparse holes (counted as files are written).
struct LayerBudget {
    limit: u64,
    read: Cell<u64>,
    holes: Cell<u64>,
}

impl LayerBudget {
    fn spent(&self) -> u64 {
        self.read.get().saturating_add(self.holes.get())
    }

    fn left(&self) -> u64 {
        self.limit.saturating_sub(self.spent())
    }
}

impl Unpacker {
    pub fn new(root: &Path, opts: UnpackOptions) -> Self {
        Self {
            root: root.to_path_buf(),
            opts,
            report: UnpackReport::default(),
            dirs: BTreeMap::new(),
            last_parent: None,
            hole_bytes: 0,
        }
    }

    /// Applies one uncompressed layer tar. `layer` names it in errors. The reader is left
    /// just after the tar's end marker (the caller drains it to finish a digest).
    pub fn apply_layer(&mut self, reader: &mut dyn Read, layer: &str) -> Result<(), UnpackError> {
        let budget = LayerBudget {
            limit: self
                .opts
                .limits
                .max_bytes
                .saturating_sub(self.report.bytes.saturating_add(self.hole_bytes)),
            read: Cell::new(0),
            holes: Cell::new(0),
        };
        let mut counted = Budget {
            inner: reader,
            budget: &budget,
        };
        let result = {
            let mut archive = super::targuard::guarded(&mut counted);
            self.apply_entries(&mut archive, layer, &budget)
        };
        self.report.bytes = self.report.bytes.saturating_add(budget.read.get());
        self.hole_bytes = self.hole_bytes.saturating_add(budget.holes.get());
        if budget.spent() > budget.limit {
            return Err(UnpackError::TooLarge {
                limit: self.opts.limits.max_bytes,
            });
        }
        result
    }

    /// Sets directory modes and times; returns what was done.
    pub fn finish(mut self) -> Result<UnpackReport, UnpackError> {
        // The target is a private temporary directory: without an entry for "./" the image
        // root gets the usual 0755.
        self.dirs.entry(PathBuf::new()).or_insert(DirMeta {
            mode: 0o755,
            mtime: None,
        });
        // Deepest first, so a parent's mode never blocks its children.
        for (rel, meta) in self.dirs.iter().rev() {
            let parts: Vec<OsString> = rel.iter().map(OsStr::to_os_string).collect();
            let Some(path) = confine::lookup_no_symlinks(&self.root, &parts) else {
                continue;
            };
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                _ => continue,
            }
            let err = |source| UnpackError::Finish {
                path: path.clone(),
                source,
            };
            if let Some(mtime) = meta.mtime {
                fs::File::open(&path)
                    .and_then(|dir| dir.set_modified(mtime))
                    .map_err(err)?;
            }
            fs::set_permissions(&path, Permissions::from_mode(meta.mode)).map_err(err)?;
        }
        Ok(self.report)
    }

    fn apply_entries<R: Read>(
        &mut self,
        archive: &mut tar::Archive<R>,
        layer: &str,
        budget: &LayerBudget,
    ) -> Result<(), UnpackError> {
        let read_err = |source| UnpackError::Read {
            layer: layer.to_string(),
            source,
        };
        // What this layer put down (and their parents): whiteouts spare them.
        let mut unpacked: HashSet<PathBuf> = HashSet::new();
        for entry in archive.entries().map_err(read_err)? {
            let mut entry = entry.map_err(read_err)?;
            self.report.entries += 1;
            if self.report.entries > self.opts.limits.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: self.opts.limits.max_entries,
                });
            }
            let path = PathBuf::from(OsStr::from_bytes(&entry.path_bytes()));
            self.apply_entry(&mut entry, &path, layer, &mut unpacked, budget)?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
        layer: &str,
        unpacked: &mut HashSet<PathBuf>,
        budget: &LayerBudget,
    ) -> Result<(), UnpackError> {
        let shown = path.display().to_string();
        let confine_err = |source| UnpackError::Confine {
            layer: layer.to_string(),
            entry: shown.clone(),
            source,
        };
        let write_err = |what| {
            move |source| UnpackError::Write {
                layer: layer.to_string(),
                entry: path.display().to_string(),
                what,
                source,
            }
        };
        let kind = entry.header().entry_type();
        let parts = confine::clean(path).map_err(confine_err)?;
        let Some((name, parent_parts)) = parts.split_last() else {
            // The root itself ("./"): only its mode and time matter.
            if kind.is_dir() {
                let meta = self.meta(entry).map_err(write_err("read the header of"))?;
                self.dirs.insert(
                    PathBuf::new(),
                    DirMeta {
                        mode: meta.mode,
                        mtime: meta.mtime,
                    },
                );
            }
            return Ok(());
        };
        if let Some(hidden) = name.as_bytes().strip_prefix(b".wh.") {
            return self.whiteout(parent_parts, hidden, layer, &shown, unpacked);
        }
        let parent = self.parent_dir(parent_parts).map_err(confine_err)?;
        let target = parent.join(name);
        let meta = self.meta(entry).map_err(write_err("read the header of"))?;

        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    _ => {
                        self.remove_existing(&target)
                            .map_err(write_err("replace"))?;
                        fs::DirBuilder::new()
                            .mode(0o755)
                            .create(&target)
                            .map_err(write_err("create directory"))?;
                    }
                }
                self.set_owner_and_xattrs(&target, &meta)
                    .map_err(write_err("set the owner of"))?;
                let rel = target
                    .strip_prefix(&self.root)
                    .unwrap_or(&target)
                    .to_path_buf();
                self.dirs.insert(
                    rel,
                    DirMeta {
                        mode: meta.mode,
                        mtime: meta.mtime,
                    },
                );
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.remove_existing(&target)
                    .map_err(write_err("replace"))?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(write_err("create file"))?;
                // Every byte written is either read from the tar (and counted as it is read)
                // or a sparse hole's zero, charged here; so at most what is left is written.
                let read_before = budget.read.get();
                let room = budget.left();
                let copied = copy_large(&mut entry.take(room.saturating_add(1)), &mut file)
                    .map_err(write_err("unpack file"))?;
                let read = budget.read.get().saturating_sub(read_before);
                budget.holes.set(
                    budget
                        .holes
                        .get()
                        .saturating_add(copied.saturating_sub(read)),
                );
                if copied > room || budget.spent() > budget.limit {
                    return Err(UnpackError::TooLarge {
                        limit: self.opts.limits.max_bytes,
                    });
                }
                if self.opts.chown {
                    std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
                        .map_err(write_err("set the owner of"))?;
                }
                file.set_permissions(Permissions::from_mode(meta.mode))
                    .map_err(write_err("set the mode of"))?;
                if let Some(mtime) = meta.mtime {
                    file.set_modified(mtime)
                        .map_err(write_err("set the time of"))?;
                }
                self.set_xattrs(&target, &meta);
            }
            T::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                if link.is_empty() {
                    return Err(UnpackError::Write {
                        layer: layer.to_string(),
                        entry: shown,
                        what: "create symlink",
                        source: io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the symlink has no target",
                        ),
                    });
                }
                self.remove_existing(&target)
                    .map_err(write_err("replace"))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                    .map_err(write_err("create symlink"))?;
                self.set_owner_and_xattrs(&target, &meta)
                    .map_err(write_err("set the owner of"))?;
                if let Some(mtime) = meta.mtime {
                    set_symlink_mtime(&target, mtime).map_err(write_err("set the time of"))?;
                }
            }
            T::Link => {
                let link = entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                let source =
                    self.hard_link_source(&link)
                        .map_err(|reason| UnpackError::HardLink {
                            layer: layer.to_string(),
                            entry: shown.clone(),
                            target: String::from_utf8_lossy(&link).into_owned(),
                            reason,
                        })?;
                if source != target {
                    self.remove_existing(&target)
                        .map_err(write_err("replace"))?;
                    fs::hard_link(&source, &target).map_err(write_err("create hard link"))?;
                }
            }
            T::Char | T::Block | T::Fifo => {
                let (kind_flag, dev) = match kind {
                    T::Fifo => (SFlag::S_IFIFO, 0),
                    _ if !self.opts.devices => {
                        self.report.skipped_devices += 1;
                        tracing::debug!("{layer}: skipped device node {shown} (not root)");
                        return Ok(());
                    }
                    _ => {
                        let header = entry.header();
                        let major = header
                            .device_major()
                            .map_err(write_err("read the device number of"))?
                            .unwrap_or(0);
                        let minor = header
                            .device_minor()
                            .map_err(write_err("read the device number of"))?
                            .unwrap_or(0);
                        let flag = if kind == T::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (flag, makedev(major.into(), minor.into()))
                    }
                };
                self.remove_existing(&target)
                    .map_err(write_err("replace"))?;
                mknod(&target, kind_flag, Mode::from_bits_truncate(0o600), dev)
                    .map_err(|e| write_err("create node")(io::Error::from(e)))?;
                self.set_owner_and_xattrs(&target, &meta)
                    .map_err(write_err("set the owner of"))?;
                fs::set_permissions(&target, Permissions::from_mode(meta.mode))
                    .map_err(write_err("set the mode of"))?;
            }
            other => {
                self.report.skipped_other += 1;
                tracing::debug!("{layer}: skipped {shown}, an entry of type {other:?}");
                return Ok(());
            }
        }
        mark(&self.root, &target, unpacked);
        Ok(())
    }

    /// The directory that holds an entry, made if missing.
    fn parent_dir(&mut self, parts: &[OsString]) -> Result<PathBuf, ConfineError> {
        if let Some((cached, path)) = &self.last_parent
            && cached.as_slice() == parts
        {
            return Ok(path.clone());
        }
        let path =
            confine::resolve_dir(&self.root, parts, true)?.unwrap_or_else(|| self.root.clone());
        self.last_parent = Some((parts.to_vec(), path.clone()));
        Ok(path)
    }

    /// Removes whatever is at `path` (never following it).
    fn remove_existing(&mut self, path: &Path) -> io::Result<()> {
        match fs::symlink_metadata(path) {
            Ok(meta) => {
                self.last_parent = None;
                if meta.is_dir() {
                    fs::remove_dir_all(path)
                } else {
                    fs::remove_file(path)
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn whiteout(
        &mut self,
        parent_parts: &[OsString],
        hidden: &[u8],
        layer: &str,
        shown: &str,
        unpacked: &mut HashSet<PathBuf>,
    ) -> Result<(), UnpackError> {
        let confine_err = |source| UnpackError::Confine {
            layer: layer.to_string(),
            entry: shown.to_string(),
            source,
        };
        let remove_err = |source| UnpackError::Write {
            layer: layer.to_string(),
            entry: shown.to_string(),
            what: "apply whiteout",
            source,
        };
        if hidden == b".wh..opq" {
            let dir = confine::resolve_dir(&self.root, parent_parts, true)
                .map_err(confine_err)?
                .unwrap_or_else(|| self.root.clone());
            mark(&self.root, &dir, unpacked);
            self.last_parent = None;
            return clear_lower(&dir, unpacked).map_err(remove_err);
        }
        if hidden.starts_with(b".wh.") {
            // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): not part of the image.
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(UnpackError::BadWhiteout {
                layer: layer.to_string(),
                entry: shown.to_string(),
            });
        }
        let Some(dir) =
            confine::resolve_dir(&self.root, parent_parts, false).map_err(confine_err)?
        else {
            return Ok(());
        };
        let target = dir.join(OsStr::from_bytes(hidden));
        if unpacked.contains(&target) {
            return Ok(());
        }
        self.remove_existing(&target).map_err(remove_err)
    }

    /// Where a hard link's target is, inside the root; it must exist and not be a directory.
    fn hard_link_source(&self, link: &[u8]) -> Result<PathBuf, String> {
        let parts =
            confine::clean(Path::new(OsStr::from_bytes(link))).map_err(|e| e.to_string())?;
        let Some((name, parent)) = parts.split_last() else {
            return Err("it points at the image root".to_string());
        };
        let dir = confine::resolve_dir(&self.root, parent, false)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "its target does not exist (in this or an earlier entry)".to_string())?;
        let source = dir.join(name);
        match fs::symlink_metadata(&source) {
            Ok(m) if m.is_dir() => Err("its target is a directory".to_string()),
            Ok(_) => Ok(source),
            Err(_) => Err("its target does not exist (in this or an earlier entry)".to_string()),
        }
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
        let header = entry.header();
        // Empty numeric fields (some writers leave them blank) read as 0; a mode as 0644.
        // Every number is the archive's word: base-256 fields hold any u64.
        let mut meta = Meta {
            mode: header.mode().unwrap_or(0o644) & 0o7777,
            uid: owner_id("uid", header.uid().unwrap_or(0))?,
            gid: owner_id("gid", header.gid().unwrap_or(0))?,
            mtime: header.mtime().ok().map(mtime_from_secs),
            xattrs: Vec::new(),
        };
        if let Some(extensions) = entry.pax_extensions()? {
            for extension in extensions {
                let extension = extension?;
                let key = extension.key_bytes();
                let value = extension.value_bytes();
                let number = || {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                };
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    meta.xattrs
                        .push((OsStr::from_bytes(name).to_os_string(), value.to_vec()));
                } else if key == b"uid"
                    && let Some(uid) = number()
                {
                    meta.uid = owner_id("uid", uid)?;
                } else if key == b"gid"
                    && let Some(gid) = number()
                {
                    meta.gid = owner_id("gid", gid)?;
                }
            }
        }
        Ok(meta)
    }

    fn set_owner_and_xattrs(&mut self, path: &Path, meta: &Meta) -> io::Result<()> {
        if self.opts.chown {
            std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))?;
        }
        self.set_xattrs(path, meta);
        Ok(())
    }

    /// Sets extended attributes (after chown, which drops security.capability); one that
    /// cannot be set is counted, not fatal.
    fn set_xattrs(&mut self, path: &Path, meta: &Meta) {
        for (name, value) in &meta.xattrs {
            if let Err(e) = xattr::set(path, name, value) {
                self.report.skipped_xattrs += 1;
                tracing::debug!("cannot set xattr {name:?} on {}: {e}", path.display());
            }
        }
    }
}

/// The latest modification time kept: 2^63 - 1 nanoseconds after the epoch (in 2262), what
/// every file system and `SystemTime` can hold. Later times in a header are clamped to it.
const MAX_MTIME_SECS: u64 = i64::MAX as u64 / 1_000_000_000;

/// A header's modification time (any u64 a base-256 field holds), clamped to
/// [`MAX_MTIME_SECS`].
fn mtime_from_secs(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs.min(MAX_MTIME_SECS))
}

/// A header's uid or gid as an owner `chown` can set: `u32::MAX` means "unchanged" to it
/// and anything larger does not fit, so both are refused rather than cut.
fn owner_id(field: &str, value: u64) -> io::Result<u32> {
    u32::try_from(value)
        .ok()
        .filter(|&id| id != u32::MAX)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{field} {value} is out of range (at most {}): the archive is malformed",
                    u32::MAX - 1
                ),
            )
        })
}

/// Sets a symlink's own modification time (the access time too: it is not kept).
fn set_symlink_mtime(path: &Path, mtime: SystemTime) -> io::Result<()> {
    let since_epoch = mtime
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let time = TimeSpec::from_duration(since_epoch);
    utimensat(
        AT_FDCWD,
        path,
        &time,
        &time,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// Records `path` and its parents up to the root as put down by the current layer.
fn mark(root: &Path, path: &Path, unpacked: &mut HashSet<PathBuf>) {
    let mut here = Some(path);
    while let Some(p) = here {
        if p == root || !p.starts_with(root) || !unpacked.insert(p.to_path_buf()) {
            break;
        }
        here = p.parent();
    }
}

/// Removes what lower layers put under `dir` (an opaque directory), keeping what this
/// layer put there.
fn clear_lower(dir: &Path, unpacked: &HashSet<PathBuf>) -> io::Result<()> {
    for child in fs::read_dir(dir)? {
        let child = child?;
        let path = child.path();
        let is_dir = child.file_type()?.is_dir();
        if unpacked.contains(&path) {
            if is_dir {
                clear_lower(&path, unpacked)?;
            }
        } else if is_dir {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Counts bytes read into the layer's budget and fails once more than it holds were asked
/// for.
struct Budget<'a> {
    inner: &'a mut dyn Read,
    budget: &'a LayerBudget,
}

impl Read for Budget<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let b = self.budget;
        if b.spent() > b.limit {
            return Err(io::Error::other("unpack byte limit reached"));
        }
        let room = b.left().saturating_add(1).min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..room])?;
        b.read.set(b.read.get().saturating_add(n as u64));
        if b.spent() > b.limit {
            return Err(io::Error::other("unpack byte limit reached"));
        }
        Ok(n)
    }
}
