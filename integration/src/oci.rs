//! Writes flowguard's `.wasm` as an OCI image layout (the form `skopeo copy oci:...` or
//! `oras` push to a registry), in the layout Istio's Wasm puller accepts: one
//! `tar+gzip` layer holding `plugin.wasm` at its root, as `envoy/oci/Dockerfile` builds.

use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `bytes` as a content-addressed blob; returns its `sha256:` digest.
fn blob(dir: &Path, bytes: &[u8]) -> std::io::Result<String> {
    let hex = sha256_hex(bytes);
    let path = dir.join("blobs/sha256").join(&hex);
    std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
    std::fs::write(path, bytes)?;
    Ok(format!("sha256:{hex}"))
}

/// Builds the image layout in `dir` from `wasm`; returns the manifest digest.
pub fn build(wasm: &[u8], dir: &Path, tag: &str) -> std::io::Result<String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    // The layer: a tar holding plugin.wasm, with fixed metadata so builds are reproducible.
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(wasm.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, "plugin.wasm", wasm)?;
    let layer_tar = tar.into_inner()?;
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&layer_tar)?;
    let layer = gz.finish()?;
    let layer_digest = blob(dir, &layer)?;

    let config = serde_json::to_vec(&json!({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&layer_tar))] },
    }))?;
    let config_digest = blob(dir, &config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len() }],
    }))?;
    let manifest_digest = blob(dir, &manifest)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": { "org.opencontainers.image.ref.name": tag },
            }],
        }))?,
    )?;
    Ok(manifest_digest)
}
