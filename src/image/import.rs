//! `peapod image import`: bringing an image into the store from
//!
//! - an OCI image layout directory (`oci-layout`, `index.json`, `blobs/`),
//! - an OCI archive (a tar of such a layout, e.g. `skopeo copy ... oci-archive:`),
//! - a `docker save` archive (`manifest.json` + layer tars; made into an OCI manifest over
//!   docker's config, which is OCI-compatible; newer docker writes an OCI layout too),
//! - a plain root filesystem tarball, gzip, zstd or none (one layer, a minimal config).
//!
//! Archives may be gzip- or zstd-compressed as a whole. Everything goes through a
//! [`Staging`] area; the store changes only at the final commit, so a bad input (a digest
//! that does not match, a truncated stream, an entry that climbs out with `..`) leaves it
//! as it was.
//!
//! A layout directory is someone else's: its files are opened without following a final
//! symlink and without blocking (`O_NOFOLLOW | O_NONBLOCK`), and anything that is not a
//! regular file (a symlink to `/dev/zero`, a FIFO that would hang the import, a device, a
//! socket) is refused. No file is read past what it may hold: index.json, manifest.json and
//! configs at most [`MAX_JSON_BLOB`] bytes, a blob with a descriptor at most its declared
//! size (one byte more is read to tell a longer file), a docker-save layer at most the size
//! the file had when it was opened, as `pull` bounds each blob by its descriptor.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use oci_spec::image::{
    ConfigBuilder, Descriptor, ImageConfiguration, ImageConfigurationBuilder, ImageIndex,
    ImageManifest, RootFsBuilder,
};
use serde::Deserialize;

use super::compress::{self, Compression};
use super::confine;
use super::digest::{Digest, HashingReader};
use super::manifest::{self, ManifestError};
use super::reference::{ImageName, ReferenceError};
use super::store::{CommitReport, MAX_JSON_BLOB, REF_NAME, Staging, Store, StoreError};

/// Entries in an OCI or docker archive (not a rootfs: those are checked at unpack time).
const MAX_ARCHIVE_ENTRIES: u64 = 100_000;

/// The PATH a plain rootfs image gets (as docker and podman set by default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("cannot read {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read archive {}: {source} (is it truncated or corrupt?)", path.display())]
    Archive {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} has entry {entry:?} that climbs out of it with '..': refusing the archive", path.display())]
    Escape { path: PathBuf, entry: String },
    #[error("{} has more than {MAX_ARCHIVE_ENTRIES} entries, too many for an image archive", path.display())]
    TooManyEntries { path: PathBuf },
    #[error(
        "{} is not an image: expected an OCI layout directory (oci-layout, index.json, blobs/), \
         an OCI or docker-save archive, or a root filesystem tarball",
        path.display()
    )]
    NotAnImage { path: PathBuf },
    #[error("{source_name} has no {what}: it is incomplete")]
    MissingFile { source_name: String, what: String },
    #[error("{source_name} carries no image name: pass --name NAME:TAG")]
    NeedName { source_name: String },
    #[error("{source_name} holds several images ({refs}): pick one with --ref")]
    Ambiguous { source_name: String, refs: String },
    #[error("{source_name} has no image named {reference:?} (it has: {available})")]
    NoSuchRef {
        source_name: String,
        reference: String,
        available: String,
    },
    #[error("{source_name}: manifest.json is not a docker-save manifest: {reason}")]
    DockerManifest { source_name: String, reason: String },
    #[error(
        "{source_name}: layer {layer} does not match the config's diff_id {expected} (its tar \
         hashes to {actual}): the archive is corrupt"
    )]
    DiffId {
        source_name: String,
        layer: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{source_name}: {what} uses digest {digest:?}: peapod stores sha256 content only")]
    Digest {
        source_name: String,
        what: &'static str,
        digest: String,
    },
    #[error(
        "{} is a {kind}, not a regular file: an image to import holds regular files only \
         (copy the layout with `cp -rL` to replace symlinks by what they point to)",
        path.display()
    )]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "{} is more than {limit} bytes, the most {what} may hold: refusing it",
        path.display()
    )]
    TooLong {
        path: PathBuf,
        limit: u64,
        what: String,
    },
}

/// How an import names and picks its image.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The name to store the image under; else the name the input carries.
    pub name: Option<ImageName>,
    /// Which image of a layout or archive holding several (its ref name or repo tag).
    pub reference: Option<String>,
}

/// What was imported.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImportReport {
    pub name: String,
    pub digest: String,
    pub kind: SourceKind,
    pub layers: usize,
    /// Blobs added to the store.
    pub added: usize,
    /// Blobs the store already had.
    pub reused: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    OciLayout,
    OciArchive,
    DockerDirectory,
    DockerArchive,
    RootfsTarball,
}

/// Imports the image at `path` (see the module docs for what it may be).
pub fn import(
    store: &Store,
    path: &Path,
    opts: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let meta = std::fs::metadata(path).map_err(|source| ImportError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() && !meta.is_file() {
        // Archives are read twice (probed, then imported): a pipe or a device cannot be.
        return Err(ImportError::NotRegular {
            path: path.to_path_buf(),
            kind: file_kind(&meta.file_type()),
        });
    }
    let mut staging = store.stage()?;
    // Whatever index.json or manifest.json is (a symlink, a FIFO), its presence says what the
    // directory means to be; reading it then refuses what is not a regular file.
    let present = |name: &str| std::fs::symlink_metadata(path.join(name)).is_ok();
    let (kind, name, manifest) = if meta.is_dir() {
        let mut source = DirSource {
            dir: path.to_path_buf(),
        };
        if present("index.json") {
            let (name, manifest) = import_oci(&mut source, &mut staging, opts)?;
            (SourceKind::OciLayout, name, manifest)
        } else if present("manifest.json") {
            let (name, manifest) = import_docker(&mut source, &mut staging, opts)?;
            (SourceKind::DockerDirectory, name, manifest)
        } else {
            return Err(ImportError::NotAnImage {
                path: path.to_path_buf(),
            });
        }
    } else {
        let probe = probe_tar(path)?;
        match probe.kind {
            TarKind::Oci | TarKind::Docker => {
                let mut source = ArchiveSource::scan(&mut staging, path)?;
                if probe.kind == TarKind::Oci {
                    let (name, manifest) = import_oci(&mut source, &mut staging, opts)?;
                    (SourceKind::OciArchive, name, manifest)
                } else {
                    let (name, manifest) = import_docker(&mut source, &mut staging, opts)?;
                    (SourceKind::DockerArchive, name, manifest)
                }
            }
            TarKind::Rootfs => {
                let (name, manifest) = import_rootfs(&mut staging, path, &probe, opts)?;
                (SourceKind::RootfsTarball, name, manifest)
            }
        }
    };
    let digest = Digest::from_oci(manifest.digest()).map_err(ManifestError::from)?;
    let layers = manifest::load_staged(&staging, &digest)?.layers.len();
    let CommitReport { added, reused } = staging.commit(&name, &manifest)?;
    Ok(ImportReport {
        name: name.to_string(),
        digest: digest.to_string(),
        kind,
        layers,
        added,
        reused,
    })
}

/// What a file of a layout or docker-save is expected to be, and so how much of it is read.
#[derive(Clone, Copy, Debug)]
enum Want<'a> {
    /// A small JSON file (index.json, manifest.json, a docker config): at most
    /// [`MAX_JSON_BLOB`] bytes.
    Json,
    /// A blob a descriptor names: exactly `size` bytes hashing to the digest.
    Blob(&'a Digest, u64),
    /// A file nothing gives the size of (a docker-save layer): as long as it is.
    Any,
}

impl Want<'_> {
    /// The digest and size the staged file must have.
    fn expected(&self) -> Option<(&Digest, Option<u64>)> {
        match *self {
            Want::Blob(digest, size) => Some((digest, Some(size))),
            Want::Json | Want::Any => None,
        }
    }

    /// The most bytes the file may hold, given its size on disk, and what sets that limit.
    fn limit(&self, file_size: u64) -> (u64, &'static str) {
        match *self {
            Want::Json => (MAX_JSON_BLOB, "an image's JSON file"),
            Want::Blob(_, size) => (size, "the blob its descriptor names"),
            Want::Any => (file_size, "the file (it grew while it was read)"),
        }
    }
}

/// Where the files of a layout or docker-save come from.
trait Source {
    fn name(&self) -> String;
    /// Stages the file at `path` (relative to the layout) and returns its digest and size,
    /// checked against `want`; `Ok(None)` if there is no such file.
    fn stage(
        &mut self,
        staging: &mut Staging<'_>,
        path: &str,
        want: Want<'_>,
    ) -> Result<Option<(Digest, u64)>, ImportError>;
}

fn read_small(
    source: &mut dyn Source,
    staging: &mut Staging<'_>,
    path: &str,
) -> Result<Option<Vec<u8>>, ImportError> {
    match source.stage(staging, path, Want::Json)? {
        Some((digest, _)) => Ok(Some(staging.read_json_blob(&digest)?)),
        None => Ok(None),
    }
}

fn require<T>(found: Option<T>, source: &dyn Source, what: &str) -> Result<T, ImportError> {
    found.ok_or_else(|| ImportError::MissingFile {
        source_name: source.name(),
        what: what.to_string(),
    })
}

/// A layout or docker-save unpacked in a directory.
struct DirSource {
    dir: PathBuf,
}

impl Source for DirSource {
    fn name(&self) -> String {
        self.dir.display().to_string()
    }

    fn stage(
        &mut self,
        staging: &mut Staging<'_>,
        path: &str,
        want: Want<'_>,
    ) -> Result<Option<(Digest, u64)>, ImportError> {
        let parts = confine::clean(Path::new(path)).map_err(|_| ImportError::Escape {
            path: self.dir.clone(),
            entry: path.to_string(),
        })?;
        let full: PathBuf = parts.iter().fold(self.dir.clone(), |p, c| p.join(c));
        let Some((file, file_size)) = open_regular(&full)? else {
            return Ok(None);
        };
        let (limit, what) = want.limit(file_size);
        let too_long = || ImportError::TooLong {
            path: full.clone(),
            limit,
            what: what.to_string(),
        };
        if file_size > limit {
            return Err(too_long());
        }
        // One byte past the limit tells a file that holds more than it said (one in /proc,
        // one still growing) from one that fits.
        let reader = file.take(limit.saturating_add(1));
        let staged = staging
            .add_blob(reader, want.expected())
            .map_err(|e| match e {
                StoreError::Io { source, .. } => ImportError::Open {
                    path: full.clone(),
                    source,
                },
                other => other.into(),
            })?;
        if staged.1 > limit {
            return Err(too_long());
        }
        Ok(Some(staged))
    }
}

/// Opens `path` for reading if it is a regular file, with its size; `Ok(None)` if there is
/// nothing there. A symlink as the last component is refused rather than followed, and the
/// open does not block (a FIFO without a writer would), so anything else is refused by its
/// type before a byte is read.
fn open_regular(path: &Path) -> Result<Option<(File, u64)>, ImportError> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(ImportError::NotRegular {
                path: path.to_path_buf(),
                kind: "symbolic link",
            });
        }
        // A socket cannot be opened at all.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(ImportError::NotRegular {
                path: path.to_path_buf(),
                kind: "socket",
            });
        }
        Err(source) => {
            return Err(ImportError::Open {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let meta = file.metadata().map_err(|source| ImportError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ImportError::NotRegular {
            path: path.to_path_buf(),
            kind: file_kind(&meta.file_type()),
        });
    }
    Ok(Some((file, meta.len())))
}

/// A file type in words, for messages.
fn file_kind(kind: &std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "directory"
    } else if kind.is_symlink() {
        "symbolic link"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

/// A layout or docker-save in a tar: every file is staged in one pass (tar has no index),
/// and looked up by path afterwards. Staged files no image refers to are dropped at commit.
struct ArchiveSource {
    path: PathBuf,
    files: HashMap<String, (Digest, u64)>,
    links: HashMap<String, String>,
}

impl ArchiveSource {
    fn scan(staging: &mut Staging<'_>, path: &Path) -> Result<Self, ImportError> {
        let archive_err = |source| ImportError::Archive {
            path: path.to_path_buf(),
            source,
        };
        let mut source = Self {
            path: path.to_path_buf(),
            files: HashMap::new(),
            links: HashMap::new(),
        };
        let file = File::open(path).map_err(archive_err)?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let kind = compress::sniff(&mut reader).map_err(archive_err)?;
        let mut archive =
            super::targuard::guarded(compress::decompress(reader, kind).map_err(archive_err)?);
        for (count, entry) in archive.entries().map_err(archive_err)?.enumerate() {
            if count as u64 >= MAX_ARCHIVE_ENTRIES {
                return Err(ImportError::TooManyEntries {
                    path: path.to_path_buf(),
                });
            }
            let mut entry = entry.map_err(archive_err)?;
            let name = normalize(path, &entry.path_bytes())?;
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut writer = staging.blob_writer()?;
                    super::store::copy_large(&mut entry, &mut writer).map_err(archive_err)?;
                    let staged = writer.finish(None)?;
                    source.files.insert(name, staged);
                }
                kind @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                    let target = entry
                        .link_name_bytes()
                        .map(|l| l.into_owned())
                        .unwrap_or_default();
                    // Symlinks are relative to their directory, hard links to the archive root.
                    let base = match (kind, name.rfind('/')) {
                        (tar::EntryType::Symlink, Some(i)) => format!("{}/", &name[..i]),
                        _ => String::new(),
                    };
                    let mut joined = base.into_bytes();
                    joined.extend_from_slice(&target);
                    let target = normalize(path, &joined)?;
                    source.links.insert(name, target);
                }
                _ => {}
            }
        }
        Ok(source)
    }

    fn lookup(&self, path: &str) -> Option<&(Digest, u64)> {
        let mut path = path.to_string();
        for _ in 0..16 {
            if let Some(found) = self.files.get(&path) {
                return Some(found);
            }
            path = self.links.get(&path)?.clone();
        }
        None
    }
}

impl Source for ArchiveSource {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn stage(
        &mut self,
        _staging: &mut Staging<'_>,
        path: &str,
        want: Want<'_>,
    ) -> Result<Option<(Digest, u64)>, ImportError> {
        let key = normalize(&self.path, path.as_bytes())?;
        let Some((digest, size)) = self.lookup(&key).cloned() else {
            return Ok(None);
        };
        if let Want::Json = want
            && size > MAX_JSON_BLOB
        {
            return Err(ImportError::TooLong {
                path: self.path.join(key),
                limit: MAX_JSON_BLOB,
                what: want.limit(size).1.to_string(),
            });
        }
        if let Some((want, want_size)) = want.expected()
            && (want != &digest || want_size.is_some_and(|s| s != size))
        {
            return Err(StoreError::Mismatch {
                expected: want.clone(),
                expected_size: want_size.map_or_else(|| "any".to_string(), |s| s.to_string()),
                actual: digest,
                actual_size: size,
            }
            .into());
        }
        Ok(Some((digest, size)))
    }
}

/// An archive path as `a/b/c`; `..` above the top is refused.
fn normalize(archive: &Path, raw: &[u8]) -> Result<String, ImportError> {
    let path = Path::new(std::ffi::OsStr::from_bytes(raw));
    let parts = confine::clean(path).map_err(|_| ImportError::Escape {
        path: archive.to_path_buf(),
        entry: path.display().to_string(),
    })?;
    Ok(parts
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/"))
}

fn blob_path(
    source: &dyn Source,
    what: &'static str,
    descriptor: &Descriptor,
) -> Result<(String, Digest), ImportError> {
    let digest = Digest::from_oci(descriptor.digest()).map_err(|_| ImportError::Digest {
        source_name: source.name(),
        what,
        digest: descriptor.digest().to_string(),
    })?;
    Ok((format!("blobs/sha256/{}", digest.hex()), digest))
}

/// Stages the blob a descriptor names, checked against it; skipped if the store has it.
/// A manifest or config (`json`) may not declare more than [`MAX_JSON_BLOB`] bytes.
fn stage_blob(
    source: &mut dyn Source,
    staging: &mut Staging<'_>,
    what: &'static str,
    descriptor: &Descriptor,
    json: bool,
) -> Result<Digest, ImportError> {
    let (path, digest) = blob_path(source, what, descriptor)?;
    if staging.has_blob(&digest) {
        return Ok(digest);
    }
    if json && descriptor.size() > MAX_JSON_BLOB {
        return Err(ImportError::TooLong {
            path: PathBuf::from(source.name()).join(&path),
            limit: MAX_JSON_BLOB,
            what: format!("an image's {what}"),
        });
    }
    let want = Want::Blob(&digest, descriptor.size());
    let staged = source.stage(staging, &path, want)?;
    require(staged, source, &format!("{what} {path}"))?;
    Ok(digest)
}

fn import_oci(
    source: &mut dyn Source,
    staging: &mut Staging<'_>,
    opts: &ImportOptions,
) -> Result<(ImageName, Descriptor), ImportError> {
    let index_bytes = require(
        read_small(source, staging, "index.json")?,
        source,
        "index.json",
    )?;
    let index: ImageIndex = manifest::parse(
        "index.json of",
        &Digest::of_bytes(&index_bytes),
        &index_bytes,
    )?;
    let top = pick_from_index(source, &index, opts)?;
    let name = match &opts.name {
        Some(name) => name.clone(),
        None => name_from_annotations(&top).ok_or_else(|| ImportError::NeedName {
            source_name: source.name(),
        })?,
    };
    // Descend through nested indexes (manifest lists) to the linux/amd64 manifest.
    let mut descriptor = top;
    for _ in 0..4 {
        let digest = stage_blob(source, staging, "manifest", &descriptor, true)?;
        let bytes = staging.read_json_blob(&digest)?;
        if !(manifest::is_index(descriptor.media_type()) || manifest::json_is_index(&bytes)) {
            let image: ImageManifest = manifest::parse("image manifest", &digest, &bytes)?;
            stage_blob(source, staging, "config", image.config(), true)?;
            for layer in image.layers() {
                stage_blob(source, staging, "layer", layer, false)?;
            }
            return Ok((name, descriptor));
        }
        let nested: ImageIndex = manifest::parse("image index", &digest, &bytes)?;
        descriptor = manifest::select_platform(&nested)?;
    }
    Err(
        ManifestError::TooDeep(Digest::from_oci(descriptor.digest()).map_err(ManifestError::from)?)
            .into(),
    )
}

/// The entry of a layout's index.json to import: the one `--ref` names, the only one, or
/// the linux/amd64 one of several platforms.
fn pick_from_index(
    source: &dyn Source,
    index: &ImageIndex,
    opts: &ImportOptions,
) -> Result<Descriptor, ImportError> {
    let refs_of = |d: &Descriptor| -> Vec<String> {
        let Some(annotations) = d.annotations() else {
            return Vec::new();
        };
        [REF_NAME, CONTAINERD_NAME]
            .iter()
            .filter_map(|k| annotations.get(*k).cloned())
            .collect()
    };
    let all = index.manifests();
    let shown_refs = || {
        let refs: Vec<String> = all.iter().flat_map(refs_of).collect();
        if refs.is_empty() {
            "no named images".to_string()
        } else {
            refs.join(", ")
        }
    };
    let candidates: Vec<Descriptor> = match &opts.reference {
        Some(wanted) => {
            let wanted_name = ImageName::parse(wanted).ok();
            all.iter()
                .filter(|d| {
                    refs_of(d).iter().any(|r| {
                        r == wanted
                            || (wanted_name.is_some() && ImageName::parse(r).ok() == wanted_name)
                    })
                })
                .cloned()
                .collect()
        }
        None => all.clone(),
    };
    if candidates.is_empty() {
        return Err(match &opts.reference {
            Some(reference) => ImportError::NoSuchRef {
                source_name: source.name(),
                reference: reference.clone(),
                available: shown_refs(),
            },
            None => ImportError::MissingFile {
                source_name: source.name(),
                what: "image in its index.json".to_string(),
            },
        });
    }
    let first_digest = candidates[0].digest().clone();
    if candidates.iter().all(|d| d.digest() == &first_digest) {
        return Ok(candidates[0].clone());
    }
    if candidates.iter().any(|d| d.platform().is_some()) {
        let mut sub = index.clone();
        sub.set_manifests(candidates);
        return Ok(manifest::select_platform(&sub)?);
    }
    Err(ImportError::Ambiguous {
        source_name: source.name(),
        refs: shown_refs(),
    })
}

/// A full image name from a layout's annotations: containerd's, or the OCI ref name when
/// it is more than a bare tag.
fn name_from_annotations(descriptor: &Descriptor) -> Option<ImageName> {
    let annotations = descriptor.annotations().as_ref()?;
    if let Some(name) = annotations
        .get(CONTAINERD_NAME)
        .and_then(|n| ImageName::parse(n).ok())
    {
        return Some(name);
    }
    annotations
        .get(REF_NAME)
        .filter(|r| r.contains('/') || r.contains(':'))
        .and_then(|r| ImageName::parse(r).ok())
}

/// One image of a docker-save `manifest.json` (docker owns the format: unknown fields such
/// as `LayerSources` are allowed).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn import_docker(
    source: &mut dyn Source,
    staging: &mut Staging<'_>,
    opts: &ImportOptions,
) -> Result<(ImageName, Descriptor), ImportError> {
    let bytes = require(
        read_small(source, staging, "manifest.json")?,
        source,
        "manifest.json",
    )?;
    let entries: Vec<DockerSaveEntry> =
        serde_json::from_slice(&bytes).map_err(|e| ImportError::DockerManifest {
            source_name: source.name(),
            reason: e.to_string(),
        })?;
    let tags = |e: &DockerSaveEntry| e.repo_tags.clone().unwrap_or_default();
    let all_tags = || {
        let t: Vec<String> = entries.iter().flat_map(tags).collect();
        if t.is_empty() {
            "no tags".to_string()
        } else {
            t.join(", ")
        }
    };
    let entry = match &opts.reference {
        Some(wanted) => {
            let wanted_name = ImageName::parse(wanted).ok();
            entries
                .iter()
                .find(|e| {
                    tags(e).iter().any(|t| {
                        t == wanted
                            || (wanted_name.is_some() && ImageName::parse(t).ok() == wanted_name)
                    })
                })
                .ok_or_else(|| ImportError::NoSuchRef {
                    source_name: source.name(),
                    reference: wanted.clone(),
                    available: all_tags(),
                })?
        }
        None => match entries.as_slice() {
            [one] => one,
            [] => {
                return Err(ImportError::MissingFile {
                    source_name: source.name(),
                    what: "image in its manifest.json".to_string(),
                });
            }
            _ => {
                return Err(ImportError::Ambiguous {
                    source_name: source.name(),
                    refs: all_tags(),
                });
            }
        },
    };
    let name = match &opts.name {
        Some(name) => name.clone(),
        None => tags(entry)
            .iter()
            .find_map(|t| ImageName::parse(t).ok())
            .ok_or_else(|| ImportError::NeedName {
                source_name: source.name(),
            })?,
    };
    let config_bytes = require(
        read_small(source, staging, &entry.config)?,
        source,
        &entry.config,
    )?;
    let config_digest = Digest::of_bytes(&config_bytes);
    let config: ImageConfiguration =
        manifest::parse("image config", &config_digest, &config_bytes)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(ImportError::DockerManifest {
            source_name: source.name(),
            reason: format!(
                "{} layers listed but the config has {} diff_ids",
                entry.layers.len(),
                diff_ids.len()
            ),
        });
    }
    let mut layers = Vec::new();
    for (layer_path, diff_id) in entry.layers.iter().zip(diff_ids) {
        let diff_id = Digest::parse(diff_id).map_err(|_| ImportError::Digest {
            source_name: source.name(),
            what: "a diff_id",
            digest: diff_id.clone(),
        })?;
        let staged = source.stage(staging, layer_path, Want::Any)?;
        let (digest, size) = require(staged, source, layer_path)?;
        let (compression, actual) = uncompressed_digest(staging, &digest)?;
        if actual != diff_id {
            return Err(ImportError::DiffId {
                source_name: source.name(),
                layer: layer_path.clone(),
                expected: diff_id,
                actual,
            });
        }
        layers.push(Descriptor::new(
            compression.layer_media_type(),
            size,
            digest.to_oci(),
        ));
    }
    let manifest = manifest::stage_manifest(staging, &config_bytes, layers)?;
    Ok((name, manifest))
}

/// The compression of a staged (or stored) blob and the digest of its uncompressed content
/// (the blob's own digest when it is not compressed).
fn uncompressed_digest(
    staging: &Staging<'_>,
    digest: &Digest,
) -> Result<(Compression, Digest), ImportError> {
    let path = staging
        .staged_path(digest)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| staging.store().blob_path(digest));
    let archive_err = |source| ImportError::Archive {
        path: path.clone(),
        source,
    };
    let mut reader = BufReader::with_capacity(1 << 20, File::open(&path).map_err(archive_err)?);
    let compression = compress::sniff(&mut reader).map_err(archive_err)?;
    if compression == Compression::None {
        return Ok((compression, digest.clone()));
    }
    let decompressed = compress::decompress(reader, compression).map_err(archive_err)?;
    let (actual, _, _) = HashingReader::new(decompressed)
        .finish()
        .map_err(archive_err)?;
    Ok((compression, actual))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TarKind {
    Oci,
    Docker,
    Rootfs,
}

struct Probe {
    kind: TarKind,
    compression: Compression,
    /// For a rootfs: the digest of the uncompressed tar (its diff_id).
    diff_id: Option<Digest>,
}

/// Reads a tar file once to tell what it is. An OCI archive has `oci-layout` or
/// `index.json` at its top, a docker-save `manifest.json`; anything else is a root
/// filesystem, whose entries are checked for `..` escapes and whose uncompressed digest is
/// computed on the way.
fn probe_tar(path: &Path) -> Result<Probe, ImportError> {
    let archive_err = |source| ImportError::Archive {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|source| ImportError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let compression = compress::sniff(&mut reader).map_err(archive_err)?;
    let mut hashed =
        HashingReader::new(compress::decompress(reader, compression).map_err(archive_err)?);
    let mut has_docker_manifest = false;
    let mut entries_seen = 0u64;
    {
        let mut archive = super::targuard::guarded(&mut hashed);
        for entry in archive.entries().map_err(archive_err)? {
            let entry = entry.map_err(|source| match entries_seen {
                // Not a tar at all (a random file) rather than a damaged one.
                0 if compression == Compression::None => ImportError::NotAnImage {
                    path: path.to_path_buf(),
                },
                _ => archive_err(source),
            })?;
            entries_seen += 1;
            let name = normalize(path, &entry.path_bytes())?;
            match name.as_str() {
                "oci-layout" | "index.json" => {
                    return Ok(Probe {
                        kind: TarKind::Oci,
                        compression,
                        diff_id: None,
                    });
                }
                "manifest.json" => has_docker_manifest = true,
                _ => {}
            }
            if entry.header().entry_type() == tar::EntryType::Link
                && let Some(target) = entry.link_name_bytes()
            {
                normalize(path, &target)?;
            }
        }
    }
    if entries_seen == 0 {
        return Err(ImportError::NotAnImage {
            path: path.to_path_buf(),
        });
    }
    if has_docker_manifest {
        return Ok(Probe {
            kind: TarKind::Docker,
            compression,
            diff_id: None,
        });
    }
    let (diff_id, _, _) = hashed.finish().map_err(archive_err)?;
    Ok(Probe {
        kind: TarKind::Rootfs,
        compression,
        diff_id: Some(diff_id),
    })
}

fn import_rootfs(
    staging: &mut Staging<'_>,
    path: &Path,
    probe: &Probe,
    opts: &ImportOptions,
) -> Result<(ImageName, Descriptor), ImportError> {
    let name = opts.name.clone().ok_or_else(|| ImportError::NeedName {
        source_name: path.display().to_string(),
    })?;
    let diff_id = probe
        .diff_id
        .clone()
        .ok_or_else(|| ImportError::NotAnImage {
            path: path.to_path_buf(),
        })?;
    let file = File::open(path).map_err(|source| ImportError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let (digest, size) = staging.add_blob(file, None)?;
    let layer = Descriptor::new(probe.compression.layer_media_type(), size, digest.to_oci());
    let config = minimal_config(vec![diff_id], vec!["/bin/sh".to_string()])?;
    let manifest = manifest::stage_image(staging, &config, vec![layer])?;
    Ok((name, manifest))
}

/// A linux/amd64 config with the default PATH and `cmd`, over the given layers.
pub fn minimal_config(
    diff_ids: Vec<Digest>,
    cmd: Vec<String>,
) -> Result<ImageConfiguration, ManifestError> {
    let serialize = |e: oci_spec::OciSpecError| ManifestError::Serialize(e.to_string());
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(diff_ids.iter().map(ToString::to_string).collect::<Vec<_>>())
        .build()
        .map_err(serialize)?;
    let run = ConfigBuilder::default()
        .env(vec![DEFAULT_PATH.to_string()])
        .cmd(cmd)
        .build()
        .map_err(serialize)?;
    ImageConfigurationBuilder::default()
        .architecture(oci_spec::image::Arch::Amd64)
        .os(oci_spec::image::Os::Linux)
        .config(run)
        .rootfs(rootfs)
        .build()
        .map_err(serialize)
}
