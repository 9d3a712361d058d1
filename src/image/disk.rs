//! Guest block images: an image's layers flattened into one filesystem image (erofs, read
//! only and compact, or ext4), cached under `ROOT/disks/<chain-id>.<format>`. The chain ID
//! names the flattened content whatever the layers' compression, so two images that share
//! all layers share one disk, and a second conversion is a lookup.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::digest::{Digest, chain_id};
use super::manifest::StoredImage;
use super::rootfs::{self, RootfsError};
use super::store::{Store, StoreError, sync_dir};
use super::unpack::{UnpackOptions, UnpackReport};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("{tool} not found in PATH, /usr/sbin or /sbin: {fix}")]
    ToolMissing {
        tool: &'static str,
        fix: &'static str,
    },
    #[error("{tool} failed ({status}) making {}: {stderr}", out.display())]
    ToolFailed {
        tool: &'static str,
        status: String,
        out: PathBuf,
        stderr: String,
    },
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The filesystem of a guest block image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// Read-only, compact, fast to build (mkfs.erofs from erofs-utils).
    #[default]
    Erofs,
    /// Writable ext4 (mkfs.ext4 -d from e2fsprogs).
    Ext4,
}

impl DiskFormat {
    pub fn extension(self) -> &'static str {
        match self {
            DiskFormat::Erofs => "erofs",
            DiskFormat::Ext4 => "ext4",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

/// A block image ready to attach to a guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskImage {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub chain_id: Digest,
    /// The image was already built: this call did no work.
    pub cache_hit: bool,
    pub size: u64,
    /// What unpacking did, when this call built the image.
    pub unpack: Option<UnpackReport>,
}

/// Where the block image of a layer chain is cached.
pub fn cache_path(store: &Store, chain: &Digest, format: DiskFormat) -> PathBuf {
    store
        .disk_dir()
        .join(format!("{}.{}", chain.hex(), format.extension()))
}

/// The image's block image: from the cache, or built (unpacked into the store's tmp/,
/// formatted, renamed into the cache only when complete). Two processes converting the
/// same image at once both build and the second rename wins; the files are equivalent.
pub fn build(
    store: &Store,
    image: &StoredImage,
    format: DiskFormat,
    opts: UnpackOptions,
) -> Result<DiskImage, DiskError> {
    let chain = chain_id(&image.diff_ids);
    let path = cache_path(store, &chain, format);
    if let Ok(meta) = fs::metadata(&path)
        && meta.is_file()
    {
        return Ok(DiskImage {
            path,
            format,
            chain_id: chain,
            cache_hit: true,
            size: meta.len(),
            unpack: None,
        });
    }
    let tool = find_tool(format)?;
    let work = tempfile::Builder::new()
        .prefix("disk-")
        .tempdir_in(store.tmp_dir())
        .map_err(io_err("create a work directory in", &store.tmp_dir()))?;
    let rootfs = work.path().join("rootfs");
    fs::create_dir(&rootfs).map_err(io_err("create", &rootfs))?;
    let report = rootfs::unpack_into(store, image, &rootfs, opts)?;
    let out = work.path().join(format!("disk.{}", format.extension()));
    match format {
        DiskFormat::Erofs => mkfs_erofs(&tool, &rootfs, &out, &chain)?,
        DiskFormat::Ext4 => mkfs_ext4(&tool, &rootfs, &out, &chain)?,
    }
    let file = File::open(&out).map_err(io_err("open", &out))?;
    file.sync_all().map_err(io_err("sync", &out))?;
    let size = file.metadata().map_err(io_err("inspect", &out))?.len();
    fs::rename(&out, &path).map_err(io_err("move the block image to", &path))?;
    sync_dir(&store.disk_dir())?;
    Ok(DiskImage {
        path,
        format,
        chain_id: chain,
        cache_hit: false,
        size,
        unpack: Some(report),
    })
}

fn find_tool(format: DiskFormat) -> Result<PathBuf, DiskError> {
    let (tool, fix) = match format {
        DiskFormat::Erofs => (
            "mkfs.erofs",
            "install erofs-utils (apt-get install erofs-utils) or pass --format ext4",
        ),
        DiskFormat::Ext4 => ("mkfs.ext4", "install e2fsprogs (apt-get install e2fsprogs)"),
    };
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .ok_or(DiskError::ToolMissing { tool, fix })
}

/// A filesystem UUID from the chain ID, so the same layers give the same image.
fn uuid_of(chain: &Digest) -> String {
    let h = chain.hex();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// An erofs image of the host directory `source` as it is now (a read-only snapshot for a
/// pod's `-v SRC:DST:ro`), written to `out`.
pub fn snapshot_dir(source: &Path, out: &Path) -> Result<(), DiskError> {
    let tool = find_tool(DiskFormat::Erofs)?;
    let mut cmd = Command::new(tool);
    cmd.arg("--quiet").arg(out).arg(source);
    run(cmd, "mkfs.erofs", out)
}

fn mkfs_erofs(tool: &Path, rootfs: &Path, out: &Path, chain: &Digest) -> Result<(), DiskError> {
    let mut cmd = Command::new(tool);
    cmd.arg("--quiet")
        .arg(format!("-U{}", uuid_of(chain)))
        .arg(out)
        .arg(rootfs);
    run(cmd, "mkfs.erofs", out)
}

fn mkfs_ext4(tool: &Path, rootfs: &Path, out: &Path, chain: &Digest) -> Result<(), DiskError> {
    let (bytes, inodes) = tree_size(rootfs).map_err(io_err("measure", rootfs))?;
    // Room for metadata and a little slack; ext4 has no "just big enough" mode.
    let size = (bytes + bytes / 4 + inodes * 512 + (16 << 20)).div_ceil(1 << 20) * (1 << 20);
    let file = File::create(out).map_err(io_err("create", out))?;
    file.set_len(size).map_err(io_err("size", out))?;
    drop(file);
    let mut cmd = Command::new(tool);
    cmd.args([
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-m",
        "0",
        "-O",
        "^has_journal",
    ])
    .arg("-N")
    .arg((inodes + inodes / 4 + 64).to_string())
    .arg("-U")
    .arg(uuid_of(chain))
    .arg("-E")
    .arg(format!("hash_seed={}", uuid_of(chain)))
    .arg("-d")
    .arg(rootfs)
    .arg(out);
    run(cmd, "mkfs.ext4", out)
}

fn run(mut cmd: Command, tool: &'static str, out: &Path) -> Result<(), DiskError> {
    let output = cmd.output().map_err(io_err("run the formatter for", out))?;
    if output.status.success() {
        return Ok(());
    }
    Err(DiskError::ToolFailed {
        tool,
        status: output.status.to_string(),
        out: out.to_path_buf(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}

/// Bytes (in 4 KiB blocks) and inodes of a tree, not following symlinks.
fn tree_size(dir: &Path) -> io::Result<(u64, u64)> {
    let mut bytes = 0u64;
    let mut inodes = 1u64;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            inodes += 1;
            bytes += meta.len().div_ceil(4096) * 4096;
            if meta.is_dir() {
                todo.push(entry.path());
            }
        }
    }
    Ok((bytes, inodes))
}
