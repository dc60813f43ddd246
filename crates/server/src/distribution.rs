//! Templates through an OCI registry: how a control plane's templates reach
//! nodes on other machines.
//!
//! The control side pushes a template's layers, as they are in its layer
//! store, to its template registry as one OCI image
//! (`<repository>:layers-<hash of the layer list>`), once per distinct
//! layer list — the push is skipped for blobs the registry has, and the
//! image's digest is remembered. A boot on a node then names that image by
//! digest ([`crate::node::BootSpec::image`]); the node pulls it with the
//! same code as `hutch template pull` (digests and diff ids verified, layers
//! it has already skipped) into its own layer store, and keeps what it
//! pulled.
//!
//! A layer is pushed as the OCI layer tar of its directory (overlayfs
//! whiteouts turned back into `.wh.` entries), gzip-compressed.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hutch_image::{LayerBlob, LayerStore, PullOptions};
use sha2::{Digest, Sha256};

/// Where a control plane keeps the images of its templates for its nodes.
pub(crate) struct TemplateRegistry {
    /// `registry/repository`.
    repository: String,
    /// Credentials and insecure registries.
    opts: PullOptions,
    /// Images pushed, by layer list key.
    pushed: Mutex<HashMap<String, String>>,
    /// One push per layer list at a time.
    pushing: hutch_runtime::KeyedLocks,
}

impl TemplateRegistry {
    /// The registry repository `repository` (`host[:port]/path`), reached
    /// with `opts`.
    pub fn new(repository: &str, opts: PullOptions) -> Result<TemplateRegistry, String> {
        let repository = repository.trim().trim_end_matches('/').to_owned();
        let (host, path) = repository.split_once('/').unwrap_or((&repository, ""));
        let tagged = path
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'));
        if host.is_empty() || path.is_empty() || tagged || repository.contains('@') {
            return Err(format!(
                "template registry {repository:?}: give a registry repository (host[:port]/path), without a tag or digest"
            ));
        }
        Ok(TemplateRegistry {
            repository,
            opts,
            pushed: Mutex::default(),
            pushing: Default::default(),
        })
    }

    /// The image (by digest) that holds `layers` (base first, all in
    /// `store`), pushed now unless it was already; `scratch` is where the
    /// layer blobs are written meanwhile.
    /// The registry tag of layer list `key`.
    fn tag(&self, key: &str) -> String {
        format!("{}:layers-{}", self.repository, &key[..16])
    }

    /// The image of `layers` if it was pushed before (by this server
    /// before a restart, or by another control plane), without pushing.
    pub async fn lookup(&self, layers: &[String]) -> Result<Option<String>, String> {
        let key = layer_list_key(layers);
        if let Some(image) = self.remembered(&key) {
            return Ok(Some(image));
        }
        self.pushed(&key).await
    }

    /// Asks the registry for the tag of layer list `key`.
    async fn pushed(&self, key: &str) -> Result<Option<String>, String> {
        let tag = self.tag(key);
        match hutch_image::manifest_digest(&tag, &self.opts).await {
            Ok(Some(digest)) => Ok(Some(self.remember(key.to_owned(), &digest))),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("cannot reach the template registry at {tag}: {e}")),
        }
    }

    pub async fn image_of(
        &self,
        store: &Arc<LayerStore>,
        scratch: &Path,
        layers: &[String],
    ) -> Result<String, String> {
        let key = layer_list_key(layers);
        if let Some(image) = self.remembered(&key) {
            return Ok(image);
        }
        let _one = self.pushing.lock(&key).await;
        if let Some(image) = self.remembered(&key) {
            return Ok(image);
        }
        if let Some(image) = self.pushed(&key).await? {
            return Ok(image);
        }
        let tag = self.tag(&key);
        std::fs::create_dir_all(scratch)
            .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("push-")
            .tempdir_in(scratch)
            .map_err(|e| format!("cannot create a directory in {}: {e}", scratch.display()))?;
        let mut blobs = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter().enumerate() {
            let store = store.clone();
            let layer = layer.clone();
            let out = dir.path().join(format!("{i}.tar.gz"));
            let blob = tokio::task::spawn_blocking(move || export_layer(&store, &layer, &out))
                .await
                .map_err(|e| format!("the task writing a layer failed: {e}"))??;
            blobs.push(blob);
        }
        let digest = hutch_image::push(&tag, &self.opts, &blobs)
            .await
            .map_err(|e| format!("cannot push the template's layers to {tag}: {e}"))?;
        let image = self.remember(key, &digest);
        tracing::info!(%image, layers = layers.len(), "template layers pushed");
        Ok(image)
    }

    /// Records that the layer list `key` is image `digest`; its name.
    fn remember(&self, key: String, digest: &str) -> String {
        let image = format!("{}@{digest}", self.repository);
        self.pushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, image.clone());
        image
    }

    fn remembered(&self, key: &str) -> Option<String> {
        self.pushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }
}

/// The registry image a node pulls `layers` from: `None` without a
/// template registry (the node is this machine), or when a layer is not in
/// this server's store (a snapshot's, which only the node that took it
/// has). The caller keeps the layers from being collected meanwhile (a
/// boot: its sandbox's row or the pool fill's layers lock).
pub(crate) async fn image_for(
    st: &crate::state::AppState,
    layers: &[String],
) -> Result<Option<String>, String> {
    let Some(registry) = &st.registry else {
        return Ok(None);
    };
    // Layers another control plane imported (and pushed), or a snapshot a
    // node made (found on that node only).
    // Without the registry, placement keeps to the nodes that hold them.
    if !layers.iter().all(|l| st.store.has_layer(l)) {
        return Ok(registry.lookup(layers).await.unwrap_or_else(|e| {
            tracing::warn!("{e}; placing on the nodes that hold the layers");
            None
        }));
    }
    registry
        .image_of(&st.store, &push_scratch(&st.data_dir), layers)
        .await
        .map(Some)
}

/// Where a control plane writes the layers it pushes, under its data
/// directory `data`.
pub(crate) fn push_scratch(data: &Path) -> PathBuf {
    data.join("tmp")
}

/// Removes what pushes cut short by a crash left in `scratch` (the
/// `push-*` directories [`TemplateRegistry::image_of`] writes layers to);
/// how many.
pub(crate) fn clear_push_scratch(scratch: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("push-") {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(path = %entry.path().display(), "cannot remove a push's leftovers: {e}")
            }
        }
    }
    removed
}

/// Pushes a newly registered template's `layers` now, so that its first
/// sandbox does not wait for it (a create meanwhile waits for this push
/// instead of starting another).
pub(crate) fn push_in_background(st: &Arc<crate::state::AppState>, layers: &[String]) {
    if st.registry.is_none() {
        return;
    }
    let st = st.clone();
    let layers = layers.to_vec();
    tokio::spawn(async move {
        // The template may be removed meanwhile, but not while its layers
        // are read.
        let _layers = st.layers_lock.read().await;
        if let Err(e) = image_for(&st, &layers).await {
            tracing::warn!("{e}; the template's first sandbox tries again");
        }
    });
}

/// Names a list of layers: the hex SHA-256 of the diff ids, one per line.
fn layer_list_key(layers: &[String]) -> String {
    let mut h = Sha256::new();
    for l in layers {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// Counts and hashes what passes through.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    count: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }

    fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hash.clone().finalize()))
    }
}

/// Writes layer `diff_id` of `store` to `out` as a gzip-compressed OCI
/// layer tar.
fn export_layer(store: &LayerStore, diff_id: &str, out: &Path) -> Result<LayerBlob, String> {
    let dir = store.layer_dir(diff_id);
    if !dir.is_dir() {
        return Err(format!("layer {diff_id} is not in the layer store"));
    }
    let file =
        std::fs::File::create(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let compressed = Hashing::new(std::io::BufWriter::new(file));
    let gz = flate2::write::GzEncoder::new(compressed, flate2::Compression::fast());
    let mut tar = Hashing::new(gz);
    let empty = hutch_builder::rootfs::LayerStack::new(Vec::<PathBuf>::new());
    hutch_builder::layer::export_upper(&dir, &empty, &mut tar)
        .map_err(|e| format!("cannot write layer {diff_id} as a tar: {e}"))?;
    let diff = tar.digest();
    let mut compressed = tar
        .inner
        .finish()
        .map_err(|e| format!("cannot compress layer {diff_id}: {e}"))?;
    compressed
        .flush()
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(LayerBlob {
        path: out.to_owned(),
        digest: compressed.digest(),
        size: compressed.count,
        diff_id: diff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_only() {
        assert!(
            TemplateRegistry::new("127.0.0.1:5000/hutch/templates", PullOptions::default()).is_ok()
        );
        assert!(TemplateRegistry::new("127.0.0.1:5000/hutch:v1", PullOptions::default()).is_err());
        assert_ne!(
            layer_list_key(&["a".into(), "b".into()]),
            layer_list_key(&["ab".into()])
        );
    }

    #[test]
    fn a_crashed_push_leaves_nothing_after_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = push_scratch(dir.path());
        std::fs::create_dir_all(scratch.join("push-abc/inner")).unwrap();
        std::fs::write(scratch.join("push-abc/inner/0.tar.gz"), b"partial").unwrap();
        std::fs::create_dir_all(scratch.join("snapshots")).unwrap();
        assert_eq!(clear_push_scratch(&scratch), 1);
        assert!(!scratch.join("push-abc").exists());
        assert!(
            scratch.join("snapshots").is_dir(),
            "only pushes' leftovers go"
        );
        assert_eq!(clear_push_scratch(&dir.path().join("absent")), 0);
    }
}
