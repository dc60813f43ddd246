//! The error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while importing or pulling images or handling the layer store.
///
/// Messages name what failed, on what, and (where there is something to do) what to do
/// about it. Variants carrying an [`io::Error`] expose it through [`std::error::Error::source`].
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum ImageError {
    /// A filesystem operation on a path failed.
    #[error("could not {action} {}: {cause}", path.display())]
    Io {
        /// What was being done, e.g. "create directory".
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        cause: io::Error,
    },

    /// The source is none of the supported image formats.
    #[error(
        "not an OCI layout, OCI archive or Docker archive: {}: {reason}; pass an OCI image \
         layout directory, or a tar written by `skopeo copy ... oci-archive:FILE` or `docker save`",
        path.display()
    )]
    NotAnImage {
        /// The source that was given.
        path: PathBuf,
        /// Why it was not recognised.
        reason: String,
    },

    /// A tar archive could not be read: it is damaged or cut short.
    #[error(
        "archive {archive} is damaged or truncated: {detail}; re-export or re-upload the image"
    )]
    Archive {
        /// The archive (a path, or a description of the stream).
        archive: String,
        /// What was wrong.
        detail: String,
    },

    /// A file the image needs is absent from the source.
    #[error(
        "{what} is missing from {image}: {detail}; the export is incomplete, re-export the image"
    )]
    Missing {
        /// What is missing, e.g. "blob sha256:… (layer 2 of 3)".
        what: String,
        /// The source.
        image: String,
        /// Details, e.g. the path that was looked up.
        detail: String,
    },

    /// A blob or layer does not match what the image says about it (digest, size, tar structure).
    #[error("{what} of {image} is corrupt: {detail}; re-export or re-download the image")]
    Corrupt {
        /// What is corrupt, e.g. "layer sha256:abcd… (2 of 3)".
        what: String,
        /// The source.
        image: String,
        /// What was found, e.g. "digest mismatch (expected …, got …)".
        detail: String,
    },

    /// Something in the image is larger than Hutch accepts: a layer that unpacks to more than
    /// the store's limit (a compression bomb, say), a compressed archive that decompresses to
    /// more, or a manifest, index or config above the metadata limits. Nothing of it is kept.
    #[error("{what} of {image} is too large: {detail}")]
    TooLarge {
        /// What is too large, e.g. "layer sha256:abcd… (2 of 3)".
        what: String,
        /// The source.
        image: String,
        /// The limit it exceeded, in bytes.
        limit: u64,
        /// What was found, which limit applies and how to raise it.
        detail: String,
    },

    /// A manifest, index, config or manifest.json is well-formed data of the wrong shape.
    #[error("{what} of {image} is invalid: {detail}")]
    Invalid {
        /// What is invalid, e.g. "image config sha256:…".
        what: String,
        /// The source.
        image: String,
        /// What was wrong.
        detail: String,
    },

    /// The image uses something this importer does not handle.
    #[error("{image} uses something unsupported: {detail}")]
    Unsupported {
        /// The source.
        image: String,
        /// What is unsupported and what to do instead.
        detail: String,
    },

    /// No image in the source matches the requested reference.
    #[error(
        "no image named {reference:?} in {image}; it contains: {available}; pass one of those names"
    )]
    ReferenceNotFound {
        /// The reference asked for.
        reference: String,
        /// The source.
        image: String,
        /// The names found (comma separated), or "no named images".
        available: String,
    },

    /// The source only holds images for other platforms.
    #[error(
        "{image} has no image for {wanted}; it has: {available}; export the {wanted} variant \
         (e.g. `skopeo copy --override-arch ...`) or pass a reference"
    )]
    NoSuitablePlatform {
        /// The source.
        image: String,
        /// The platform wanted, e.g. "linux/amd64".
        wanted: String,
        /// Platforms found (comma separated).
        available: String,
    },

    /// The source only holds images for other platforms.
    #[error(
        "image '{reference}' has no {wanted} variant; the registry has: {available}; pull an \
         image built for {wanted}"
    )]
    RegistryNoPlatform {
        /// The reference pulled.
        reference: String,
        /// The platform wanted, e.g. "linux/amd64".
        wanted: String,
        /// Platforms found (comma separated).
        available: String,
    },

    /// An image reference for a pull cannot be parsed.
    #[error(
        "invalid image reference {reference:?}: {detail}; use [REGISTRY/]NAME[:TAG|@DIGEST], \
         e.g. docker.io/library/debian:bookworm"
    )]
    InvalidReference {
        /// The reference given.
        reference: String,
        /// What is wrong with it.
        detail: String,
    },

    /// The registry has no such repository or tag.
    #[error("image '{reference}' not found in registry '{registry}'; check its name and tag")]
    RegistryNotFound {
        /// The reference pulled.
        reference: String,
        /// The registry, as the reference names it (`docker.io` for Docker Hub).
        registry: String,
    },

    /// The registry refused access (401/403, or its token service refused the credentials).
    #[error("registry '{registry}' refused access to '{reference}': {detail}")]
    RegistryAuth {
        /// The registry.
        registry: String,
        /// The reference pulled.
        reference: String,
        /// What the registry said, then which credentials to pass or check.
        detail: String,
    },

    /// The registry cannot be reached (DNS, connection, TLS, timeout) or the transfer broke.
    #[error("cannot reach registry '{registry}': {cause}")]
    RegistryUnreachable {
        /// The registry (`host[:port]`).
        registry: String,
        /// The cause, in words.
        cause: String,
    },

    /// The registry answered with an error not covered by the other variants.
    #[error("registry '{registry}' failed: {detail}")]
    Registry {
        /// The registry.
        registry: String,
        /// What happened.
        detail: String,
    },

    /// A layer could not be written into the store (the layer itself read fine).
    #[error("could not extract layer {layer} of {image}: {action} {}: {cause}", path.display())]
    Extract {
        /// The layer (its diff id or digest).
        layer: String,
        /// The source.
        image: String,
        /// What was being done.
        action: &'static str,
        /// The path inside the staging directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        cause: io::Error,
    },

    /// A diff id or digest string is malformed.
    #[error("invalid digest {digest:?}: {detail}")]
    InvalidDigest {
        /// The offending string.
        digest: String,
        /// What was wrong.
        detail: String,
    },

    /// Template metadata JSON could not be parsed.
    #[error("template metadata is not valid JSON of the expected shape: {cause}")]
    MetadataJson {
        /// The underlying error.
        #[source]
        cause: serde_json::Error,
    },

    /// Template metadata has a schema version this build does not understand.
    #[error(
        "template metadata has schema version {found}, but this build of hutch understands only \
         version {supported}; upgrade hutch or re-create the template"
    )]
    UnsupportedSchemaVersion {
        /// The version found in the JSON (0 if absent or not a number).
        found: u64,
        /// The version this build writes and reads.
        supported: u32,
    },
}

impl ImageError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> Self {
        ImageError::Io {
            action,
            path: path.into(),
            cause,
        }
    }
}
