//! Manifests, configs and indexes: reading them (verified) out of the store, picking the
//! linux/amd64 image out of an index or manifest list, and writing new ones.

use oci_spec::image::{
    Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, ImageManifestBuilder,
    MediaType, Os,
};

use super::digest::{Digest, DigestError};
use super::store::{Staging, Store, StoreError};

/// Docker's media types, which OCI layouts and archives written by docker use.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error("{what} {digest} is not valid JSON of its kind: {reason}")]
    Parse {
        what: &'static str,
        digest: Digest,
        reason: String,
    },
    #[error(
        "image config {config} lists {diff_ids} layer diff_ids but manifest {manifest} has {layers} \
         layers: the image is malformed"
    )]
    LayerCount {
        manifest: Digest,
        config: Digest,
        diff_ids: usize,
        layers: usize,
    },
    #[error(
        "no linux/amd64 image in this index (it has: {available}): peapod runs linux/amd64 guests"
    )]
    NoPlatform { available: String },
    #[error("index {0} nests indexes too deeply: the image is malformed")]
    TooDeep(Digest),
    #[error("cannot write image JSON: {0}")]
    Serialize(String),
}

/// One layer of a stored image.
#[derive(Clone, Debug)]
pub struct Layer {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// The digest of the uncompressed tar (from the config's rootfs.diff_ids).
    pub diff_id: Digest,
}

/// The sum of layer sizes as descriptors declare them; `None` if it does not fit in a u64
/// (the sizes come from a registry or an archive: hostile).
pub fn total_size(sizes: impl IntoIterator<Item = u64>) -> Option<u64> {
    sizes
        .into_iter()
        .try_fold(0u64, |sum, size| sum.checked_add(size))
}

/// A manifest with its config, both read and verified.
#[derive(Clone, Debug)]
pub struct StoredImage {
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
    pub layers: Vec<Layer>,
    pub diff_ids: Vec<Digest>,
}

/// Reads an image manifest and its config from the store.
pub fn load(store: &Store, manifest: &Digest) -> Result<StoredImage, ManifestError> {
    load_with(manifest, |d| store.read_json_blob(d))
}

/// Reads an image manifest and its config from a staging area (or the store under it).
pub fn load_staged(staging: &Staging<'_>, manifest: &Digest) -> Result<StoredImage, ManifestError> {
    load_with(manifest, |d| staging.read_json_blob(d))
}

fn load_with(
    manifest_digest: &Digest,
    read: impl Fn(&Digest) -> Result<Vec<u8>, StoreError>,
) -> Result<StoredImage, ManifestError> {
    let bytes = read(manifest_digest)?;
    let manifest: ImageManifest = parse("image manifest", manifest_digest, &bytes)?;
    let config_digest = Digest::from_oci(manifest.config().digest())?;
    let config: ImageConfiguration = parse("image config", &config_digest, &read(&config_digest)?)?;
    let diff_ids = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| Digest::parse(d))
        .collect::<Result<Vec<_>, _>>()?;
    if diff_ids.len() != manifest.layers().len() {
        return Err(ManifestError::LayerCount {
            manifest: manifest_digest.clone(),
            config: config_digest,
            diff_ids: diff_ids.len(),
            layers: manifest.layers().len(),
        });
    }
    let layers = manifest
        .layers()
        .iter()
        .zip(&diff_ids)
        .map(|(d, diff_id)| {
            Ok(Layer {
                digest: Digest::from_oci(d.digest())?,
                size: d.size(),
                media_type: d.media_type().to_string(),
                diff_id: diff_id.clone(),
            })
        })
        .collect::<Result<Vec<_>, DigestError>>()?;
    Ok(StoredImage {
        manifest_digest: manifest_digest.clone(),
        manifest,
        config_digest,
        config,
        layers,
        diff_ids,
    })
}

pub fn parse<T: serde::de::DeserializeOwned>(
    what: &'static str,
    digest: &Digest,
    bytes: &[u8],
) -> Result<T, ManifestError> {
    serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse {
        what,
        digest: digest.clone(),
        reason: e.to_string(),
    })
}

/// Whether a descriptor (or a document's own mediaType) names an index / manifest list.
pub fn is_index(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageIndex) || media_type.to_string() == DOCKER_MANIFEST_LIST
}

/// Whether a JSON document is an index (it has `manifests`) rather than a manifest.
pub fn json_is_index(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .is_some_and(|v| v.get("manifests").is_some() && v.get("layers").is_none())
}

/// Picks the linux/amd64 manifest of an index: an exact match without a variant first,
/// then `v1`, then any amd64 variant. An index with one manifest and no platforms at all
/// gives that manifest.
pub fn select_platform(index: &ImageIndex) -> Result<Descriptor, ManifestError> {
    let manifests = index.manifests();
    if manifests.len() == 1 && manifests[0].platform().is_none() {
        return Ok(manifests[0].clone());
    }
    let amd64: Vec<&Descriptor> = manifests
        .iter()
        .filter(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
        })
        .collect();
    let variant = |d: &Descriptor| d.platform().as_ref().and_then(|p| p.variant().clone());
    let best = amd64
        .iter()
        .find(|d| variant(d).is_none())
        .or_else(|| amd64.iter().find(|d| variant(d).as_deref() == Some("v1")))
        .or_else(|| amd64.first());
    match best {
        Some(d) => Ok((*d).clone()),
        None => {
            let available: Vec<String> = manifests
                .iter()
                .map(|d| match d.platform() {
                    Some(p) => format!("{}/{}", p.os(), p.architecture()),
                    None => "no platform".to_string(),
                })
                .collect();
            Err(ManifestError::NoPlatform {
                available: if available.is_empty() {
                    "nothing".to_string()
                } else {
                    available.join(", ")
                },
            })
        }
    }
}

/// Stages a config and an OCI manifest over `layers` (already staged); returns the
/// manifest's descriptor, ready for [`Staging::commit`].
pub fn stage_image(
    staging: &mut Staging<'_>,
    config: &ImageConfiguration,
    layers: Vec<Descriptor>,
) -> Result<Descriptor, ManifestError> {
    let config_bytes =
        serde_json::to_vec(config).map_err(|e| ManifestError::Serialize(e.to_string()))?;
    stage_manifest(staging, &config_bytes, layers)
}

/// Stages config bytes as they are (e.g. docker's config JSON) and an OCI manifest over them.
pub fn stage_manifest(
    staging: &mut Staging<'_>,
    config_bytes: &[u8],
    layers: Vec<Descriptor>,
) -> Result<Descriptor, ManifestError> {
    let config_digest = staging.add_bytes(config_bytes)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config_bytes.len() as u64,
            config_digest.to_oci(),
        ))
        .layers(layers)
        .build()
        .map_err(|e| ManifestError::Serialize(e.to_string()))?;
    let bytes =
        serde_json::to_vec(&manifest).map_err(|e| ManifestError::Serialize(e.to_string()))?;
    let digest = staging.add_bytes(&bytes)?;
    Ok(Descriptor::new(
        MediaType::ImageManifest,
        bytes.len() as u64,
        digest.to_oci(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(json: &str) -> ImageIndex {
        serde_json::from_str(json).unwrap()
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    #[test]
    fn picks_linux_amd64_from_a_manifest_list() {
        let list = index(&format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[
              {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D1}","size":1,
                "platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
              {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D2}","size":2,
                "platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D3}","size":3,
                "platform":{{"architecture":"unknown","os":"unknown"}}}}]}}"#
        ));
        assert_eq!(select_platform(&list).unwrap().digest().to_string(), D2);
        assert!(is_index(&MediaType::from(DOCKER_MANIFEST_LIST)));
    }

    #[test]
    fn no_amd64_is_a_clear_error() {
        let list = index(&format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D1}","size":1,
                "platform":{{"architecture":"arm64","os":"linux"}}}},
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D2}","size":1,
                "platform":{{"architecture":"amd64","os":"windows"}}}}]}}"#
        ));
        let err = select_platform(&list).unwrap_err().to_string();
        assert!(err.contains("linux/arm64, windows/amd64"), "{err}");
    }
}
