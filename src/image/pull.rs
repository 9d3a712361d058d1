//! `peapod image pull`: an image from an OCI distribution registry into the store.
//!
//! The manifest is fetched by tag or digest (an index or manifest list is resolved to its
//! linux/amd64 manifest), then the config and every layer the store does not have yet are
//! streamed into a [`Staging`] area, each bounded by its descriptor's size and verified by
//! sha256 before it counts. Only the final commit, under the store's index lock, changes the
//! store: a failed or interrupted pull leaves it as it was, and two pulls of one image at
//! once both succeed with one copy of each blob.

use std::io::{self, Read};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};

use super::digest::{Digest, DigestError};
use super::manifest::{self, ManifestError};
use super::reference::ImageName;
use super::registry::reference::{RegistryRef, RegistryRefError};
use super::registry::{
    Client, ClientOptions, FetchedManifest, RegistryError, is_index_type, is_manifest_type,
};
use super::store::{CommitReport, MAX_JSON_BLOB, Staging, Store, StoreError, copy_large};

/// Indexes nested deeper than this are refused.
const MAX_INDEX_DEPTH: usize = 4;

/// Tries per layer when the connection fails midway (content that does not match its
/// digest is never tried again).
const DOWNLOAD_ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] RegistryRefError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{reference} names an image by digest only: pass --name NAME:TAG to store it under")]
    NeedName { reference: String },
    #[error(
        "{reference} is a {media_type} manifest, which peapod does not read (only OCI and \
         docker schema 2): push the image again with a current tool"
    )]
    Unsupported {
        reference: String,
        media_type: String,
    },
    #[error("{reference}: {what} uses digest {digest:?}: peapod pulls sha256 content only")]
    Digest {
        reference: String,
        what: &'static str,
        digest: String,
        #[source]
        source: DigestError,
    },
    #[error("{reference}: its config is {size} bytes, more than the {MAX_JSON_BLOB}-byte limit")]
    ConfigTooLarge { reference: String, size: u64 },
    #[error(
        "{reference}: its layers declare more than {} bytes in all: the manifest is malformed",
        u64::MAX
    )]
    LayerSizes { reference: String },
    #[error("{reference}: indexes nest more than {MAX_INDEX_DEPTH} deep: the image is malformed")]
    TooDeep { reference: String },
    #[error("cannot download {what} {digest}")]
    Download {
        what: &'static str,
        digest: Digest,
        #[source]
        source: io::Error,
    },
}

/// How to pull.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    pub client: ClientOptions,
    /// Store under this name instead of the registry-qualified reference.
    pub name: Option<ImageName>,
}

/// Where a layer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerState {
    /// The store already has it: nothing to download.
    Stored,
    /// Bytes are arriving (`done` of `size`).
    Downloading,
    /// Downloaded and verified.
    Done,
}

/// Progress, for a display on stderr.
#[derive(Clone, Debug)]
pub enum PullEvent<'a> {
    /// The platform manifest is known.
    Resolved {
        digest: &'a Digest,
        layers: usize,
        /// Compressed bytes of all layers.
        bytes: u64,
    },
    Layer {
        /// 1-based.
        index: usize,
        count: usize,
        digest: &'a Digest,
        size: u64,
        done: u64,
        state: LayerState,
    },
}

/// What a pull did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PullReport {
    pub name: String,
    pub digest: String,
    pub layers: usize,
    /// Bytes downloaded (blobs the store already had are not fetched).
    pub downloaded: u64,
    /// Blobs added to the store.
    pub added: usize,
    /// Blobs the store already had.
    pub reused: usize,
}

/// Pulls `reference` (`[HOST[:PORT]/]PATH[:TAG][@sha256:...]`) into `store`.
pub fn pull(
    store: &Store,
    reference: &str,
    opts: &PullOptions,
    progress: &mut dyn FnMut(PullEvent<'_>),
) -> Result<PullReport, PullError> {
    let parsed = RegistryRef::parse(reference)?;
    let shown = parsed.to_string();
    let name = opts
        .name
        .clone()
        .or_else(|| parsed.store_name())
        .ok_or_else(|| PullError::NeedName {
            reference: shown.clone(),
        })?;
    let mut client = Client::new(&parsed, &opts.client);
    let (fetched, media_type) = resolve_manifest(&mut client, &parsed, &shown)?;
    let image: ImageManifest = manifest::parse("image manifest", &fetched.digest, &fetched.bytes)?;

    let mut staging = store.stage()?;
    staging.add_blob(&fetched.bytes[..], Some((&fetched.digest, None)))?;
    let oci_digest = |what: &'static str, d: &Descriptor| {
        Digest::from_oci(d.digest()).map_err(|source| PullError::Digest {
            reference: shown.clone(),
            what,
            digest: d.digest().to_string(),
            source,
        })
    };
    let config = oci_digest("its config", image.config())?;
    if image.config().size() > MAX_JSON_BLOB {
        return Err(PullError::ConfigTooLarge {
            reference: shown,
            size: image.config().size(),
        });
    }
    let layers = image
        .layers()
        .iter()
        .map(|l| Ok((oci_digest("a layer", l)?, l.size())))
        .collect::<Result<Vec<_>, PullError>>()?;
    let total = manifest::total_size(layers.iter().map(|(_, size)| *size)).ok_or_else(|| {
        PullError::LayerSizes {
            reference: shown.clone(),
        }
    })?;
    let mut downloaded: u64 = 0;
    if !staging.has_blob(&config) {
        downloaded += download(
            &mut client,
            &mut staging,
            "config",
            &config,
            image.config().size(),
            &mut |_| {},
        )?;
    }
    progress(PullEvent::Resolved {
        digest: &fetched.digest,
        layers: layers.len(),
        bytes: total,
    });
    let count = layers.len();
    for (i, (digest, size)) in layers.iter().enumerate() {
        let event = |done, state| PullEvent::Layer {
            index: i + 1,
            count,
            digest,
            size: *size,
            done,
            state,
        };
        if staging.has_blob(digest) {
            progress(event(*size, LayerState::Stored));
            continue;
        }
        let mut attempt = 1;
        let got = loop {
            progress(event(0, LayerState::Downloading));
            let result = download(
                &mut client,
                &mut staging,
                "layer",
                digest,
                *size,
                &mut |done| progress(event(done, LayerState::Downloading)),
            );
            match result {
                Err(e) if attempt < DOWNLOAD_ATTEMPTS && is_transient(&e) => {
                    tracing::warn!("layer {digest}: {e}; trying again");
                    attempt += 1;
                }
                other => break other?,
            }
        };
        downloaded = downloaded.saturating_add(got);
        progress(event(*size, LayerState::Done));
    }
    let descriptor = Descriptor::new(
        MediaType::from(media_type.as_str()),
        fetched.bytes.len() as u64,
        fetched.digest.to_oci(),
    );
    let CommitReport { added, reused } = staging.commit(&name, &descriptor)?;
    Ok(PullReport {
        name: name.to_string(),
        digest: fetched.digest.to_string(),
        layers: count,
        downloaded,
        added,
        reused,
    })
}

/// Fetches the reference's manifest, through indexes to the linux/amd64 one. Returns it and
/// its media type.
fn resolve_manifest(
    client: &mut Client,
    parsed: &RegistryRef,
    shown: &str,
) -> Result<(FetchedManifest, String), PullError> {
    let mut fetched = client.manifest(&parsed.manifest_reference())?;
    for _ in 0..MAX_INDEX_DEPTH {
        let media_type = media_type_of(&fetched);
        if is_index_type(&media_type) {
            let index: ImageIndex =
                manifest::parse("image index", &fetched.digest, &fetched.bytes)?;
            let chosen = manifest::select_platform(&index)?;
            let digest = Digest::from_oci(chosen.digest()).map_err(|source| PullError::Digest {
                reference: shown.to_string(),
                what: "its linux/amd64 manifest",
                digest: chosen.digest().to_string(),
                source,
            })?;
            fetched = client.manifest(&digest.to_string())?;
            continue;
        }
        if !is_manifest_type(&media_type) {
            return Err(PullError::Unsupported {
                reference: shown.to_string(),
                media_type,
            });
        }
        return Ok((fetched, media_type));
    }
    Err(PullError::TooDeep {
        reference: shown.to_string(),
    })
}

/// A manifest's media type: the `Content-Type` when it names a manifest kind, else the
/// JSON's `mediaType`, else guessed from its shape (an OCI document may leave it out).
fn media_type_of(fetched: &FetchedManifest) -> String {
    let declared = &fetched.media_type;
    if is_index_type(declared)
        || is_manifest_type(declared)
        || declared.starts_with("application/vnd.docker.distribution.manifest.v1")
    {
        return declared.clone();
    }
    let json: Option<serde_json::Value> = serde_json::from_slice(&fetched.bytes).ok();
    if let Some(media_type) = json
        .as_ref()
        .and_then(|j| j.get("mediaType"))
        .and_then(|m| m.as_str())
    {
        return media_type.to_string();
    }
    if manifest::json_is_index(&fetched.bytes) {
        return MediaType::ImageIndex.to_string();
    }
    let schema2 = json
        .as_ref()
        .and_then(|j| j.get("schemaVersion"))
        .and_then(|v| v.as_u64())
        == Some(2);
    if schema2 {
        MediaType::ImageManifest.to_string()
    } else {
        "schema 1 (or unknown)".to_string()
    }
}

/// A network failure (not a refusal, not wrong content) that another try may get past.
fn is_transient(error: &PullError) -> bool {
    matches!(
        error,
        PullError::Download { .. } | PullError::Registry(RegistryError::Http { .. })
    )
}

/// Streams one blob into the staging area: at most `size` + 1 bytes are read, and the
/// staging area refuses it unless it is exactly `size` bytes hashing to `digest`.
fn download(
    client: &mut Client,
    staging: &mut Staging<'_>,
    what: &'static str,
    digest: &Digest,
    size: u64,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<u64, PullError> {
    let download_err = |source| PullError::Download {
        what,
        digest: digest.clone(),
        source,
    };
    let body = client.blob(digest)?;
    let mut counted = Counted {
        inner: body.take(size.saturating_add(1)),
        done: 0,
        last_report: 0,
        on_bytes,
    };
    let mut writer = staging.blob_writer()?;
    copy_large(&mut counted, &mut writer).map_err(download_err)?;
    let (_, got) = writer.finish(Some((digest, Some(size))))?;
    Ok(got)
}

/// Counts bytes read and reports them every 256 KiB.
struct Counted<'a, R> {
    inner: R,
    done: u64,
    last_report: u64,
    on_bytes: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.done - self.last_report >= 256 << 10 {
            self.last_report = self.done;
            (self.on_bytes)(self.done);
        }
        Ok(n)
    }
}
