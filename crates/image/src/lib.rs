//! Importing Docker/OCI images into Hutch's content-addressed layer store, and the template
//! metadata that records what a template was made from.
//!
//! The store ([`LayerStore`]) keeps each layer extracted, ready to be an overlayfs lower
//! directory, under `ROOT/sha256/<hex of the layer's diff id>/`. Keying by diff id (the
//! digest of the *uncompressed* layer tar) means one layer is stored once however it was
//! compressed and however many images or templates use it.
//!
//! Importing verifies everything it reads against the digests the image declares, stages
//! each layer under `ROOT/tmp/`, and moves layers into place only once the whole image has
//! been read successfully, so a failed import leaves nothing behind.
//!
//! [`pull()`] fetches an image from an OCI / Docker registry into the same store, verifying
//! every blob against its digest and every layer against its diff id; its documentation
//! describes transport, credentials, atomicity and layer reuse.

mod digest;
mod error;
mod extract;
mod import;
mod pull;
mod push;
mod source;
mod store;
mod template;

pub use error::ImageError;
pub use pull::{PullOptions, PullProgress, RegistryAuth, pull};
pub use push::{GZIP_LAYER, LayerBlob, manifest_digest, push};
pub use store::LayerStore;
pub use template::{
    TEMPLATE_SCHEMA_VERSION, TemplateDocument, TemplateLimits, TemplateMetadata, TemplateSource,
};

/// The most bytes a manifest, image index, image config, `index.json` or `manifest.json` may
/// have, in an imported image or from a registry (registries refuse manifests above 4 MiB).
/// Larger ones are refused with [`ImageError::TooLarge`] before they are read into memory.
pub const MAX_METADATA_SIZE: u64 = 4 << 20;

/// Progress of an import, reported as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImportProgress {
    /// The manifest was read; the image has this many layers.
    Manifest {
        /// Number of layers.
        layers: usize,
    },
    /// Layer `index` (0 = base) starts. `digest` is the blob digest (the diff id for Docker
    /// archives whose layer files carry no digest); `size` is the blob's size in bytes.
    LayerStart {
        /// Layer index, base first.
        index: usize,
        /// Blob digest, `sha256:<hex>`.
        digest: String,
        /// Blob size in bytes (compressed, as stored in the source).
        size: u64,
    },
    /// `done` bytes of the blob of layer `index` have been read (reported about every MiB).
    LayerBytes {
        /// Layer index.
        index: usize,
        /// Bytes read so far.
        done: u64,
    },
    /// Layer `index` is ready; `reused` if it was already in the store (or earlier in the
    /// same image) and so was not extracted again.
    LayerDone {
        /// Layer index.
        index: usize,
        /// Whether the stored copy was reused.
        reused: bool,
    },
}

/// The result of a successful import or pull.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedImage {
    /// Digest of the manifest that was imported. For legacy Docker archives, which hold no
    /// manifest, this is the sha256 of the chosen `manifest.json` entry (re-serialized).
    pub manifest_digest: String,
    /// Digest of the image config blob.
    pub config_digest: String,
    /// The runtime defaults from the image config.
    pub config: ImageConfig,
    /// Diff ids (`sha256:<hex>`) of the layers, base first; each is in the store.
    pub layers: Vec<String>,
}

/// The runtime defaults an image config declares, recorded as they are
/// (`K=V` environment strings in order, empty values kept; the working
/// directory and user only when set and non-empty).
pub use hutch_protocol::api::ImageConfig;
