//! Writing an OCI image layout from layer tars: the images that tests push and benchmarks
//! import are made here.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use super::digest::Digest;

/// Writes an OCI image layout in `dir` (created if missing): each of `layers` (uncompressed
/// tars, bottom first) as a gzip blob, a config whose `config` is `run_config` (Entrypoint,
/// Cmd, Env, ...), a manifest, and an index naming it `tag`.
pub fn write_oci_layout(
    dir: &Path,
    layers: &[Vec<u8>],
    run_config: serde_json::Value,
    tag: &str,
) -> io::Result<()> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> io::Result<(String, usize)> {
        let digest = Digest::of_bytes(bytes);
        fs::write(blobs.join(digest.hex()), bytes)?;
        Ok((digest.to_string(), bytes.len()))
    };
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        diff_ids.push(Digest::of_bytes(layer).to_string());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(layer)?;
        let (digest, size) = put(&gz.finish()?)?;
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": size,
        }));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": run_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": descriptors,
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}
