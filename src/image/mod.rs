//! OCI images: a content-addressed store (`store`), imports from layouts, archives and
//! tarballs (`import`), pulls from registries (`pull`, `registry`), safe layer unpacking
//! (`unpack`, `confine`, `rootfs`; every tar is read through `targuard`), guest block
//! images cached by layer chain (`disk`), and the built-in busybox image (`builtin`).
//!
//! The pod runtime calls [`resolve`]: a reference in, a block image to attach and the
//! image's run config (entrypoint, cmd, env, working dir, user) out.

pub mod builtin;
pub mod compress;
pub mod confine;
pub mod digest;
pub mod disk;
pub mod import;
pub mod layout;
pub mod manifest;
pub mod process;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod store;
pub mod targuard;
pub mod unpack;

use std::path::Path;

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use self::builtin::BuiltinError;
use self::digest::{Digest, chain_id};
use self::disk::{DiskError, DiskFormat, DiskImage};
use self::manifest::{ManifestError, StoredImage};
use self::reference::{ImageName, ReferenceError};
use self::store::{Store, StoreError};
use self::unpack::UnpackOptions;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("cannot make the default image peapod/busybox:latest: {0}")]
    Builtin(#[from] BuiltinError),
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
}

/// What the runtime needs from an image config to start its process (the OCI config's
/// `config` object, the fields a container runtime uses).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ImageRunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// Empty means `/`.
    pub working_dir: String,
    /// `user`, `uid`, `user:group` or `uid:gid`; empty means root.
    pub user: String,
}

impl ImageRunConfig {
    pub fn from_config(config: &ImageConfiguration) -> Self {
        let Some(c) = config.config() else {
            return Self::default();
        };
        Self {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
        }
    }

    /// The process to run when the user gives no command: entrypoint then cmd.
    pub fn default_argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// An image ready for a guest: its block image and how to run it.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    pub name: ImageName,
    pub manifest_digest: Digest,
    pub disk: DiskImage,
    pub config: ImageRunConfig,
    pub image: StoredImage,
}

impl ResolvedImage {
    pub fn block_image(&self) -> &Path {
        &self.disk.path
    }
}

/// Finds a named image, importing the built-in default on first use. A name without a
/// registry is also looked for as pulled (`busybox` as `docker.io/library/busybox:latest`).
pub fn open(store: &Store, reference: &str) -> Result<(ImageName, StoredImage), ImageError> {
    let name = ImageName::parse(reference)?;
    let indexed = match store.lookup(&name) {
        Err(StoreError::NotFound { .. }) if name.to_string() == builtin::DEFAULT_IMAGE => {
            builtin::import_default(store, &builtin::find_busybox()?)?;
            store.lookup(&name)?
        }
        Err(not_found @ StoreError::NotFound { .. }) => {
            match registry::reference::qualified(&name).map(|q| store.lookup(&q)) {
                Some(Ok(found)) => found,
                _ => return Err(not_found.into()),
            }
        }
        other => other?,
    };
    let image = manifest::load(store, &indexed.manifest)?;
    Ok((name, image))
}

/// What the pod runtime calls: the image's block image (built once, then cached by layer
/// chain) and its run config.
pub fn resolve(
    store: &Store,
    reference: &str,
    format: DiskFormat,
) -> Result<ResolvedImage, ImageError> {
    let (name, image) = open(store, reference)?;
    let disk = disk::build(store, &image, format, UnpackOptions::for_current_user())?;
    Ok(ResolvedImage {
        name,
        manifest_digest: image.manifest_digest.clone(),
        disk,
        config: ImageRunConfig::from_config(&image.config),
        image,
    })
}

/// What `peapod vm run-container --image` needs: the image resolved to its (cached) erofs
/// block image, and the process its config and the command line make.
pub fn prepare_run(
    store: &Store,
    reference: &str,
    overrides: &process::Overrides,
) -> Result<(ResolvedImage, process::Process), ImageError> {
    let resolved = resolve(store, reference, DiskFormat::Erofs)?;
    let process = process::process_for(store, &resolved.image, &resolved.config, overrides)?;
    Ok((resolved, process))
}

/// A pod container's image as its runtime takes it.
#[derive(Clone, Debug)]
pub struct PodImage {
    pub manifest_digest: Digest,
    /// The erofs block image (a pod VM attaches it) or the unpacked root directory (the
    /// container runtime binds it as the overlay's lower layer).
    pub root: std::path::PathBuf,
}

/// What `peapod run` and `peapod pod apply` need of an image for a pod in `runtime`: its
/// root in the form that runtime takes (built once, then cached by layer chain) and the
/// process its config and `overrides` make.
pub fn prepare_pod_image(
    store: &Store,
    reference: &str,
    overrides: &process::Overrides,
    runtime: crate::runtime::RuntimeKind,
) -> Result<(PodImage, process::Process), ImageError> {
    let (_, image) = open(store, reference)?;
    let root = match runtime {
        crate::runtime::RuntimeKind::Vm => {
            disk::build(
                store,
                &image,
                DiskFormat::Erofs,
                UnpackOptions::for_current_user(),
            )?
            .path
        }
        crate::runtime::RuntimeKind::Container => {
            rootfs::cached(store, &image, UnpackOptions::for_current_user())?
        }
    };
    let config = ImageRunConfig::from_config(&image.config);
    let process = process::process_for(store, &image, &config, overrides)?;
    Ok((
        PodImage {
            manifest_digest: image.manifest_digest.clone(),
            root,
        },
        process,
    ))
}

/// `peapod image inspect`'s view of an image.
#[derive(Debug, Serialize)]
pub struct ImageInfo {
    pub name: String,
    pub digest: String,
    pub config_digest: String,
    pub chain_id: String,
    pub architecture: String,
    pub os: String,
    pub layers: Vec<LayerInfo>,
    pub config: ImageRunConfig,
    /// Block images already built for it.
    pub disks: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct LayerInfo {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
}

pub fn info(store: &Store, name: &ImageName, image: &StoredImage) -> ImageInfo {
    let chain = chain_id(&image.diff_ids);
    let disks = [DiskFormat::Erofs, DiskFormat::Ext4]
        .into_iter()
        .map(|f| disk::cache_path(store, &chain, f))
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    ImageInfo {
        name: name.to_string(),
        digest: image.manifest_digest.to_string(),
        config_digest: image.config_digest.to_string(),
        chain_id: chain.to_string(),
        architecture: image.config.architecture().to_string(),
        os: image.config.os().to_string(),
        layers: image
            .layers
            .iter()
            .map(|l| LayerInfo {
                digest: l.digest.to_string(),
                diff_id: l.diff_id.to_string(),
                size: l.size,
                media_type: l.media_type.clone(),
            })
            .collect(),
        config: ImageRunConfig::from_config(&image.config),
        disks,
    }
}

#[cfg(test)]
mod tests;
