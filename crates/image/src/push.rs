//! Pushing layers to an OCI registry as an image: see [`push`].
//!
//! The counterpart of [`crate::pull`]: what one Hutch pushes, another pulls
//! (a control plane's templates reaching its nodes). The same credentials,
//! insecure-registry list and error messages apply.

use std::path::PathBuf;

use oci_client::RegistryOperation;
use oci_client::manifest::{OciDescriptor, OciImageManifest};

use crate::digest::sha256_of;
use crate::pull::{Phase, open_client};
use crate::{ImageError, PullOptions};

/// The media type of the layers [`push`] writes.
pub const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// One layer to push: a gzip-compressed layer tar in a file.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    /// The file.
    pub path: PathBuf,
    /// `sha256:<hex>` of the file.
    pub digest: String,
    /// The file's size, bytes.
    pub size: u64,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
}

/// The digest of the manifest `reference` (`registry/repository:tag`)
/// names; `None` if the registry has no such tag.
pub async fn manifest_digest(
    reference: &str,
    opts: &PullOptions,
) -> Result<Option<String>, ImageError> {
    let (client, parsed, auth, ctx) = open_client(reference, opts, true)?;
    match client.fetch_manifest_digest(&parsed, &auth).await {
        Ok(digest) => Ok(Some(digest)),
        Err(e) => match ctx.registry_error(e, Phase::Manifest) {
            ImageError::RegistryNotFound { .. } => Ok(None),
            e => Err(e),
        },
    }
}

/// Pushes `layers` (base first) to `reference` (`registry/repository:tag`)
/// as a linux/amd64 OCI image with an empty runtime configuration; blobs the
/// repository has already are not sent again. Returns the manifest's digest:
/// `registry/repository@<digest>` names exactly this image.
pub async fn push(
    reference: &str,
    opts: &PullOptions,
    layers: &[LayerBlob],
) -> Result<String, ImageError> {
    let (client, parsed, auth, ctx) = open_client(reference, opts, true)?;
    client
        .auth(&parsed, &auth, RegistryOperation::Push)
        .await
        .map_err(|e| ctx.registry_error(e, Phase::Manifest))?;

    let mut descriptors = Vec::with_capacity(layers.len());
    for layer in layers {
        let what = || Phase::Blob(format!("layer {}", layer.diff_id));
        let present = client
            .blob_exists(&parsed, &layer.digest)
            .await
            .map_err(|e| ctx.registry_error(e, what()))?;
        if !present {
            let file = tokio::fs::File::open(&layer.path)
                .await
                .map_err(|e| ImageError::io("open", &layer.path, e))?;
            let stream = futures::TryStreamExt::map_err(
                tokio_util::io::ReaderStream::with_capacity(file, 1 << 20),
                oci_client::errors::OciDistributionError::IoError,
            );
            client
                .push_blob_stream(&parsed, stream, &layer.digest, Some(layer.size))
                .await
                .map_err(|e| ctx.registry_error(e, what()))?;
        }
        descriptors.push(OciDescriptor {
            media_type: GZIP_LAYER.to_owned(),
            digest: layer.digest.clone(),
            size: layer.size as i64,
            urls: None,
            annotations: None,
            artifact_type: None,
        });
    }

    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
    });
    let config = serde_json::to_vec(&config).expect("a JSON value serializes");
    let config_digest = sha256_of(&config);
    let config_size = config.len() as i64;
    if !client
        .blob_exists(&parsed, &config_digest)
        .await
        .map_err(|e| ctx.registry_error(e, Phase::Blob("the config".to_owned())))?
    {
        client
            .push_blob(&parsed, config, &config_digest)
            .await
            .map_err(|e| ctx.registry_error(e, Phase::Blob("the config".to_owned())))?;
    }
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(MANIFEST.to_owned()),
        config: OciDescriptor {
            media_type: CONFIG.to_owned(),
            digest: config_digest,
            size: config_size,
            urls: None,
            annotations: None,
            artifact_type: None,
        },
        layers: descriptors,
        subject: None,
        artifact_type: None,
        annotations: None,
    };
    let body = serde_json::to_vec(&manifest).expect("a manifest serializes");
    let digest = sha256_of(&body);
    client
        .push_manifest_raw(&parsed, body, http::HeaderValue::from_static(MANIFEST))
        .await
        .map_err(|e| ctx.registry_error(e, Phase::Manifest))?;
    Ok(digest)
}
