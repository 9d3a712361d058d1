//! Flattening a stored image into a directory: each layer blob streamed from the store,
//! decompressed, checked against its digest and diff_id, and applied in order.

use std::fs;
use std::io::{self, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::compress;
use super::digest::{Digest, HashingReader};
use super::manifest::StoredImage;
use super::store::{Store, StoreError};
use super::unpack::{UnpackError, UnpackOptions, UnpackReport, Unpacker};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("cannot read layer {layer}: {source}")]
    Decompress {
        layer: Digest,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer {layer} in the store is corrupt ({what} is {actual}): remove the image with \
         `peapod image rm`, run `peapod image prune` and import it again"
    )]
    Corrupt {
        layer: Digest,
        what: &'static str,
        actual: Digest,
    },
    #[error("{} already exists: pick a new directory to unpack into", .0.display())]
    Exists(PathBuf),
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Applies the image's layers to `dir` (an empty directory this process owns).
pub fn unpack_into(
    store: &Store,
    image: &StoredImage,
    dir: &Path,
    opts: UnpackOptions,
) -> Result<UnpackReport, RootfsError> {
    let mut unpacker = Unpacker::new(dir, opts);
    for (i, layer) in image.layers.iter().enumerate() {
        let label = format!("layer {} ({})", i + 1, layer.digest);
        let mut blob = HashingReader::new(store.open_blob(&layer.digest)?);
        let decompress_err = |source| RootfsError::Decompress {
            layer: layer.digest.clone(),
            source,
        };
        {
            let mut compressed = BufReader::with_capacity(1 << 20, &mut blob);
            let kind = compress::sniff(&mut compressed).map_err(decompress_err)?;
            let decompressed = compress::decompress(compressed, kind).map_err(decompress_err)?;
            let mut tar_stream = HashingReader::new(decompressed);
            unpacker.apply_layer(&mut tar_stream, &label)?;
            // Hash what follows the tar's end marker too: digests cover whole streams.
            let (diff_id, _, _) = tar_stream.finish().map_err(decompress_err)?;
            if diff_id != layer.diff_id {
                return Err(RootfsError::Corrupt {
                    layer: layer.digest.clone(),
                    what: "the digest of its uncompressed tar",
                    actual: diff_id,
                });
            }
        }
        let (digest, _, _) = blob.finish().map_err(decompress_err)?;
        if digest != layer.digest {
            return Err(RootfsError::Corrupt {
                layer: layer.digest.clone(),
                what: "its sha256",
                actual: digest,
            });
        }
    }
    Ok(unpacker.finish()?)
}

/// Unpacks into a new directory `dest`: first into a temporary sibling, renamed into place
/// only when every layer applied and verified, so a failure leaves nothing behind.
pub fn unpack_to(
    store: &Store,
    image: &StoredImage,
    dest: &Path,
    opts: UnpackOptions,
) -> Result<UnpackReport, RootfsError> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(RootfsError::Exists(dest.to_path_buf()));
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".peapod-unpack-")
        .tempdir_in(parent)
        .map_err(|source| RootfsError::Io {
            what: "create a temporary directory in",
            path: parent.to_path_buf(),
            source,
        })?;
    let report = unpack_into(store, image, tmp.path(), opts)?;
    let tmp = tmp.keep();
    fs::rename(&tmp, dest).map_err(|source| {
        let _ = fs::remove_dir_all(&tmp);
        RootfsError::Io {
            what: "rename the unpacked root into",
            path: dest.to_path_buf(),
            source,
        }
    })?;
    Ok(report)
}

/// Where the unpacked root of a layer chain is cached for the container runtime.
pub fn cache_dir(store: &Store, chain: &Digest) -> PathBuf {
    store.root().join("rootfs").join(chain.hex())
}

/// The image's unpacked root for the container runtime: from the cache, or unpacked into it
/// (whole or not at all, see [`unpack_to`]). Pods bind it read-only as their overlays' lower
/// layer, so it never changes once there; two processes unpacking the same image at once
/// both unpack and the first rename wins.
pub fn cached(
    store: &Store,
    image: &StoredImage,
    opts: UnpackOptions,
) -> Result<PathBuf, RootfsError> {
    let dir = cache_dir(store, &super::digest::chain_id(&image.diff_ids));
    if dir.is_dir() {
        return Ok(dir);
    }
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(|source| RootfsError::Io {
            what: "create",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    match unpack_to(store, image, &dir, opts) {
        Ok(_) => {}
        // Another process put it there first.
        Err(_) if dir.is_dir() => return Ok(dir),
        Err(e) => return Err(e),
    }
    // The temporary directory it was unpacked in was private (0700); a root's `/` is not,
    // unless the image said otherwise.
    let meta = fs::metadata(&dir).map_err(|source| RootfsError::Io {
        what: "inspect",
        path: dir.clone(),
        source,
    })?;
    if meta.permissions().mode() & 0o777 == 0o700 {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(|source| {
            RootfsError::Io {
                what: "set the mode of",
                path: dir.clone(),
                source,
            }
        })?;
    }
    Ok(dir)
}
