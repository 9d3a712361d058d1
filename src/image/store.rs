//! The content-addressed image store, laid out as an OCI image layout so that other tools
//! (umoci, skopeo `oci:`) can read it:
//!
//! ```text
//! ROOT/oci-layout            {"imageLayoutVersion": "1.0.0"}
//! ROOT/index.json            an OCI image index; each entry is a manifest named by the
//!                            org.opencontainers.image.ref.name annotation (NAME:TAG)
//! ROOT/index.lock            flock(2)ed while the index or the blob set changes
//! ROOT/blobs/sha256/<hex>    manifests, configs, layers: written once, verified on use
//! ROOT/disks/<chain>.<fmt>   guest block images, by the chain ID of their layers
//! ROOT/tmp/                  staging for imports and conversions (same filesystem)
//! ```
//!
//! Writers put blobs into a [`Staging`] area first (hashed while written, fsynced) and
//! [`Staging::commit`] moves them into `blobs/` and names the image, all under the index lock;
//! `prune` takes the same lock, so it never sees a blob that is about to be referenced. A
//! registry client puts what it pulls into a `Staging` the same way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, MediaType};

use super::digest::{Digest, HashingWriter, chain_id};
use super::manifest::{self, ManifestError};
use super::reference::ImageName;

/// Where images live unless `--root` or `PEAPOD_ROOT` says otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/peapod";

/// The annotation that names an image in `index.json` (OCI image layout spec).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// JSON blobs (manifests, configs, indexes) larger than this are refused.
pub const MAX_JSON_BLOB: u64 = 8 << 20;

/// Staging leftovers older than this (a crashed import) are removed by prune.
const STALE_TMP: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {what} {}: {source} (is --root / PEAPOD_ROOT writable?)", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock the image index {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error(
        "image index {} is not a valid OCI index: {reason}; move it away and import the images again",
        path.display()
    )]
    BadIndex { path: PathBuf, reason: String },
    #[error("image {name} is not in the store at {}: import it with `peapod image import`", root.display())]
    NotFound { name: String, root: PathBuf },
    #[error("blob {digest} is not in the store at {}: import the image again", root.display())]
    MissingBlob { digest: Digest, root: PathBuf },
    #[error(
        "blob {digest} in the store is corrupt (its content hashes to {actual}): remove the image \
         with `peapod image rm`, run `peapod image prune` and import it again"
    )]
    CorruptBlob { digest: Digest, actual: Digest },
    #[error(
        "content does not match its descriptor: expected {expected} ({expected_size} bytes), got {actual} ({actual_size} bytes)"
    )]
    Mismatch {
        expected: Digest,
        expected_size: String,
        actual: Digest,
        actual_size: u64,
    },
    #[error(
        "JSON blob {digest} is {size} bytes, more than the {MAX_JSON_BLOB}-byte limit for manifests and configs"
    )]
    TooLarge { digest: Digest, size: u64 },
    #[error("cannot name an image whose content is incomplete: {0}")]
    Incomplete(#[source] Box<ManifestError>),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A named image in the index.
#[derive(Clone, Debug)]
pub struct IndexedImage {
    pub name: ImageName,
    pub manifest: Digest,
    pub media_type: MediaType,
    pub size: u64,
}

/// What prune removed.
#[derive(Debug, Default)]
pub struct PruneReport {
    pub blobs: usize,
    pub blob_bytes: u64,
    pub disks: usize,
    pub disk_bytes: u64,
    pub tmp: usize,
}

/// What a commit did with the staged blobs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitReport {
    /// Blobs moved into the store.
    pub added: usize,
    /// Blobs the store already had.
    pub reused: usize,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// `--root` / `PEAPOD_ROOT`, else [`DEFAULT_ROOT`].
    pub fn default_root() -> PathBuf {
        std::env::var_os("PEAPOD_ROOT")
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from)
    }

    /// Opens the store at `root`, creating its layout if it is new.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let store = Self {
            root: root.to_path_buf(),
        };
        for dir in [store.blob_dir(), store.tmp_dir(), store.disk_dir()] {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomically(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn disk_dir(&self) -> PathBuf {
        self.root.join("disks")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Opens a blob for streaming; the caller verifies its digest as it reads
    /// (see [`super::digest::HashingReader`]).
    pub fn open_blob(&self, digest: &Digest) -> Result<File, StoreError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => StoreError::MissingBlob {
                digest: digest.clone(),
                root: self.root.clone(),
            },
            _ => StoreError::Io {
                what: "open blob",
                path,
                source,
            },
        })
    }

    /// Reads a small (JSON) blob whole and checks its digest.
    pub fn read_json_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        read_verified(&mut self.open_blob(digest)?, digest, &path)
    }

    /// Takes the index lock until the guard is dropped.
    fn lock(&self) -> Result<Flock<File>, StoreError> {
        let path = self.root.join("index.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, source)| StoreError::Lock { path, source })
    }

    fn read_index(&self) -> Result<ImageIndex, StoreError> {
        let path = self.index_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::BadIndex {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(empty_index()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    fn write_index(&self, index: &ImageIndex) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(index).map_err(|e| StoreError::BadIndex {
            path: self.index_path(),
            reason: e.to_string(),
        })?;
        write_atomically(&self.index_path(), &bytes)
    }

    /// All named images, sorted by name. Index entries without a valid name are left out.
    pub fn list(&self) -> Result<Vec<IndexedImage>, StoreError> {
        let index = self.read_index()?;
        let mut images: Vec<IndexedImage> = index.manifests().iter().filter_map(indexed).collect();
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// The manifest digest of a named image.
    pub fn lookup(&self, name: &ImageName) -> Result<IndexedImage, StoreError> {
        self.list()?
            .into_iter()
            .find(|image| &image.name == name)
            .ok_or_else(|| StoreError::NotFound {
                name: name.to_string(),
                root: self.root.clone(),
            })
    }

    /// Removes a name. Its blobs stay until `prune`.
    pub fn remove(&self, name: &ImageName) -> Result<IndexedImage, StoreError> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let found = self.lookup(name)?;
        let mut manifests = index.manifests().clone();
        manifests.retain(|d| indexed(d).is_none_or(|image| &image.name != name));
        index.set_manifests(manifests);
        self.write_index(&index)?;
        Ok(found)
    }

    /// Starts putting blobs into the store.
    pub fn stage(&self) -> Result<Staging<'_>, StoreError> {
        let dir = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(self.tmp_dir())
            .map_err(io_err("create a staging directory in", &self.tmp_dir()))?;
        Ok(Staging {
            store: self,
            dir,
            blobs: BTreeMap::new(),
            next: 0,
        })
    }

    /// Removes blobs no named image refers to, block images of layer chains no named image
    /// has, and staging leftovers older than a day.
    pub fn prune(&self) -> Result<PruneReport, StoreError> {
        let _lock = self.lock()?;
        let mut keep_blobs = BTreeSet::new();
        let mut keep_chains = BTreeSet::new();
        for image in self.list()? {
            keep_blobs.insert(image.manifest.clone());
            match manifest::load(self, &image.manifest) {
                Ok(loaded) => {
                    keep_blobs.insert(loaded.config_digest.clone());
                    keep_blobs.extend(loaded.layers.iter().map(|l| l.digest.clone()));
                    keep_chains.insert(chain_id(&loaded.diff_ids).hex().to_string());
                }
                Err(e) => tracing::warn!("prune: keeping what {} still names: {e}", image.name),
            }
        }
        let mut report = PruneReport::default();
        let blob_dir = self.blob_dir();
        for entry in fs::read_dir(&blob_dir).map_err(io_err("list", &blob_dir))? {
            let entry = entry.map_err(io_err("list", &blob_dir))?;
            let keep = entry
                .file_name()
                .to_str()
                .and_then(|name| Digest::from_hex(name).ok())
                .is_some_and(|d| keep_blobs.contains(&d));
            if !keep {
                report.blob_bytes += entry.metadata().map_or(0, |m| m.len());
                remove_any(&entry.path())?;
                report.blobs += 1;
            }
        }
        let disk_dir = self.disk_dir();
        for entry in fs::read_dir(&disk_dir).map_err(io_err("list", &disk_dir))? {
            let entry = entry.map_err(io_err("list", &disk_dir))?;
            let name = entry.file_name();
            let chain = name
                .to_str()
                .and_then(|n| n.split('.').next())
                .unwrap_or("");
            if !keep_chains.contains(chain) {
                report.disk_bytes += entry.metadata().map_or(0, |m| m.len());
                remove_any(&entry.path())?;
                report.disks += 1;
            }
        }
        // Unpacked roots of the container runtime, one directory per layer chain.
        let rootfs_dir = self.root.join("rootfs");
        if let Ok(entries) = fs::read_dir(&rootfs_dir) {
            for entry in entries {
                let entry = entry.map_err(io_err("list", &rootfs_dir))?;
                let name = entry.file_name();
                if !keep_chains.contains(name.to_str().unwrap_or("")) {
                    remove_any(&entry.path())?;
                    report.disks += 1;
                }
            }
        }
        let tmp_dir = self.tmp_dir();
        let now = SystemTime::now();
        for entry in fs::read_dir(&tmp_dir).map_err(io_err("list", &tmp_dir))? {
            let entry = entry.map_err(io_err("list", &tmp_dir))?;
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > STALE_TMP);
            if old {
                remove_any(&entry.path())?;
                report.tmp += 1;
            }
        }
        Ok(report)
    }
}

fn empty_index() -> ImageIndex {
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(Vec::new())
        .build()
        .unwrap_or_else(|_| unreachable!("all required fields are set"))
}

fn indexed(descriptor: &Descriptor) -> Option<IndexedImage> {
    let name = descriptor.annotations().as_ref()?.get(REF_NAME)?;
    Some(IndexedImage {
        name: ImageName::parse(name).ok()?,
        manifest: Digest::from_oci(descriptor.digest()).ok()?,
        media_type: descriptor.media_type().clone(),
        size: descriptor.size(),
    })
}

fn remove_any(path: &Path) -> Result<(), StoreError> {
    let meta = fs::symlink_metadata(path).map_err(io_err("inspect", path))?;
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    result.map_err(io_err("remove", path))
}

/// Reads at most [`MAX_JSON_BLOB`] bytes and checks they hash to `digest`.
fn read_verified(
    reader: &mut impl Read,
    digest: &Digest,
    path: &Path,
) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_JSON_BLOB + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", path))?;
    if bytes.len() as u64 > MAX_JSON_BLOB {
        return Err(StoreError::TooLarge {
            digest: digest.clone(),
            size: bytes.len() as u64,
        });
    }
    let actual = Digest::of_bytes(&bytes);
    if &actual != digest {
        return Err(StoreError::CorruptBlob {
            digest: digest.clone(),
            actual,
        });
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a part:
/// a temporary file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err("create a temporary file in", dir))?;
    tmp.write_all(bytes).map_err(io_err("write", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err("sync", path))?;
    tmp.persist(path)
        .map_err(|e| io_err("rename into place", path)(e.error))?;
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}

/// Blobs on their way into the store. Dropping it without [`Staging::commit`] removes them.
pub struct Staging<'s> {
    store: &'s Store,
    dir: tempfile::TempDir,
    blobs: BTreeMap<Digest, PathBuf>,
    next: u64,
}

impl<'s> Staging<'s> {
    pub fn store(&self) -> &'s Store {
        self.store
    }

    /// A scratch directory on the store's filesystem, removed with the staging area.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts writing one blob; [`BlobWriter::finish`] stages it.
    pub fn blob_writer(&mut self) -> Result<BlobWriter<'_, 's>, StoreError> {
        self.next += 1;
        let path = self.dir.path().join(format!("partial-{}", self.next));
        let file = File::create(&path).map_err(io_err("create", &path))?;
        Ok(BlobWriter {
            staging: self,
            path,
            out: HashingWriter::new(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Copies a blob in, checking it against `expected` (digest and size) when given.
    pub fn add_blob(
        &mut self,
        mut reader: impl Read,
        expected: Option<(&Digest, Option<u64>)>,
    ) -> Result<(Digest, u64), StoreError> {
        let mut writer = self.blob_writer()?;
        let path = writer.path.clone();
        copy_large(&mut reader, &mut writer).map_err(io_err("copy a blob into", &path))?;
        writer.finish(expected)
    }

    pub fn add_bytes(&mut self, bytes: &[u8]) -> Result<Digest, StoreError> {
        Ok(self.add_blob(bytes, None)?.0)
    }

    /// Whether a blob is staged or already stored.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blobs.contains_key(digest) || self.store.has_blob(digest)
    }

    /// The staged file of a blob, if it was staged here.
    pub fn staged_path(&self, digest: &Digest) -> Option<&Path> {
        self.blobs.get(digest).map(PathBuf::as_path)
    }

    /// Reads a small staged (or stored) blob, verified.
    pub fn read_json_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        match self.blobs.get(digest) {
            Some(path) => {
                let mut file = File::open(path).map_err(io_err("open", path))?;
                read_verified(&mut file, digest, path)
            }
            None => self.store.read_json_blob(digest),
        }
    }

    /// Names `manifest` as `name`: checks that the manifest, its config and its layers are
    /// all staged or stored, moves the staged ones into the store (blobs the store already
    /// has are left as they are) and points the name at the manifest, all under the index
    /// lock. Staged blobs the manifest does not refer to are dropped.
    pub fn commit(
        self,
        name: &ImageName,
        manifest_descriptor: &Descriptor,
    ) -> Result<CommitReport, StoreError> {
        let manifest_digest = Digest::from_oci(manifest_descriptor.digest())
            .map_err(|e| StoreError::Incomplete(Box::new(ManifestError::Digest(e))))?;
        let _lock = self.store.lock()?;
        let loaded = manifest::load_staged(&self, &manifest_digest)
            .map_err(|e| StoreError::Incomplete(Box::new(e)))?;
        let mut needed = vec![manifest_digest.clone(), loaded.config_digest.clone()];
        needed.extend(loaded.layers.iter().map(|l| l.digest.clone()));
        let mut report = CommitReport::default();
        for digest in &needed {
            let dest = self.store.blob_path(digest);
            if dest.is_file() {
                report.reused += 1;
                continue;
            }
            match self.blobs.get(digest) {
                Some(staged) => {
                    fs::rename(staged, &dest).map_err(io_err("move a blob into", &dest))?;
                    report.added += 1;
                }
                None => {
                    return Err(StoreError::MissingBlob {
                        digest: digest.clone(),
                        root: self.store.root.clone(),
                    });
                }
            }
        }
        if report.added > 0 {
            sync_dir(&self.store.blob_dir())?;
        }
        let mut index = self.store.read_index()?;
        let mut manifests = index.manifests().clone();
        manifests.retain(|d| indexed(d).is_none_or(|image| &image.name != name));
        let mut entry = manifest_descriptor.clone();
        entry.set_platform(None);
        entry.set_annotations(Some(HashMap::from([(
            REF_NAME.to_string(),
            name.to_string(),
        )])));
        manifests.push(entry);
        index.set_manifests(manifests);
        self.store.write_index(&index)?;
        Ok(report)
    }
}

/// One blob being written into a staging area.
pub struct BlobWriter<'a, 's> {
    staging: &'a mut Staging<'s>,
    path: PathBuf,
    out: HashingWriter<BufWriter<File>>,
}

impl BlobWriter<'_, '_> {
    /// Flushes and fsyncs the blob and stages it under its digest, after checking it
    /// against `expected` (digest and, when known, size).
    pub fn finish(
        self,
        expected: Option<(&Digest, Option<u64>)>,
    ) -> Result<(Digest, u64), StoreError> {
        let (digest, size, out) = self.out.finish();
        let file = out
            .into_inner()
            .map_err(|e| io_err("write", &self.path)(e.into_error()))?;
        if let Some((want, want_size)) = expected
            && (want != &digest || want_size.is_some_and(|s| s != size))
        {
            let _ = fs::remove_file(&self.path);
            return Err(StoreError::Mismatch {
                expected: want.clone(),
                expected_size: want_size.map_or_else(|| "any".to_string(), |s| s.to_string()),
                actual: digest,
                actual_size: size,
            });
        }
        if self.staging.blobs.contains_key(&digest) {
            let _ = fs::remove_file(&self.path);
            return Ok((digest, size));
        }
        file.sync_all().map_err(io_err("sync", &self.path))?;
        let dest = self.staging.dir.path().join(digest.hex());
        fs::rename(&self.path, &dest).map_err(io_err("rename", &dest))?;
        self.staging.blobs.insert(digest.clone(), dest);
        Ok((digest, size))
    }
}

impl Write for BlobWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `io::copy` with a 1 MiB buffer (blobs are large; 8 KiB reads cost syscalls).
pub fn copy_large(reader: &mut impl Read, writer: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
}
