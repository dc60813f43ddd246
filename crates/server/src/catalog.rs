//! The template catalog: importing and pulling images as templates,
//! registering a template (one path for imports, pulls, builds and the
//! default `base` template), listing, removing, and collecting the layers
//! no template uses any more.
//!
//! A registered template gets its warm pool at once. A build of a name
//! that exists replaces the template: the old one is renamed
//! `name@<id>` by the store and deleted once none of its sandboxes is left
//! ([`prune_replaced`]); its pooled sandboxes, which would hand out the old
//! template, are destroyed. Layers are removed only when a template is
//! removed, under the layers lock held exclusively, so that no create,
//! import or build can be using one.

use hutch_image::TemplateDocument as _;
use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;

use hutch_image::{
    ImageError, ImportProgress, ImportedImage, PullOptions, PullProgress, RegistryAuth,
    TEMPLATE_SCHEMA_VERSION, TemplateMetadata, TemplateSource,
};

use crate::db::{DbError, TemplateRow};
use crate::state::AppState;
use crate::{ids, time};

/// How a new template meets one of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Registration {
    /// It must not exist ([`CatalogError::Exists`]).
    New,
    /// It replaces the existing one.
    Replace,
}

/// Why the catalog could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CatalogError {
    /// A template of that name exists.
    #[error("template '{0}' already exists; remove it first with `hutch template rm {0}`")]
    Exists(String),
    /// No template has that name or id.
    #[error("template '{0}' not found")]
    NotFound(String),
    /// Sandboxes of the template run.
    #[error(
        "template '{name}' has {running} running sandbox{}; kill {} first",
        if *running == 1 { "" } else { "es" },
        if *running == 1 { "it" } else { "them" }
    )]
    InUse {
        /// The template.
        name: String,
        /// How many.
        running: u64,
    },
    /// The name is not a valid template name ([`valid_template_name`]).
    #[error(
        "invalid template name '{0}': use 1 to 63 characters from a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
    )]
    InvalidName(String),
    /// An image could not be imported.
    #[error("cannot import template '{name}': {error}")]
    Import {
        /// The template.
        name: String,
        /// Why.
        error: ImageError,
    },
    /// An image could not be pulled (the error names the image and the
    /// registry, except for local failures).
    #[error("{}", pull_message(reference, error))]
    Pull {
        /// The image.
        reference: String,
        /// Why.
        error: ImageError,
    },
    /// A stored template's metadata does not read.
    #[error("template '{name}' has unreadable metadata: {cause}")]
    Corrupt {
        /// The template.
        name: String,
        /// The parse error.
        cause: String,
    },
    /// A task of the server failed.
    #[error("{0}")]
    Task(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

fn pull_message(reference: &str, e: &ImageError) -> String {
    match e {
        ImageError::Io { .. } | ImageError::Extract { .. } => {
            format!("cannot pull {reference}: {e}")
        }
        _ => e.to_string(),
    }
}

/// Whether `name` is a valid template name: `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn valid_template_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..].iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

/// The tag every build of a template has (E2B's `name:default`).
pub(crate) const DEFAULT_TAG: &str = "default";

/// The template a create names: `name`, `id`, or either with the default
/// tag (`name:default`, the form E2B's snapshot ids take); other tags are
/// not known to Hutch and are kept, so that the lookup fails naming them.
pub(crate) fn reference(template: &str) -> &str {
    template
        .strip_suffix(DEFAULT_TAG)
        .and_then(|t| t.strip_suffix(':'))
        .unwrap_or(template)
}

/// Checks that `name` is a valid template name no template has yet.
pub(crate) async fn check_new_name(st: &AppState, name: &str) -> Result<(), CatalogError> {
    if !valid_template_name(name) {
        return Err(CatalogError::InvalidName(name.to_owned()));
    }
    if st
        .db
        .find_template(name.to_owned())
        .await?
        .is_some_and(|t| t.name == name)
    {
        return Err(CatalogError::Exists(name.to_owned()));
    }
    Ok(())
}

/// What an image becomes as a template.
pub(crate) struct ImageTemplate {
    /// The template's name (new: [`check_new_name`]).
    pub name: String,
    /// Where the image came from (a path or reference), for display.
    pub source: String,
    /// Let processes gain privileges through setuid binaries.
    pub allow_privilege_escalation: bool,
}

/// Imports the image in `tar` (an OCI archive, a tarred OCI layout or a
/// Docker archive; `reference` picks one of several) into the layer store
/// as it is read, and registers it as a template.
pub(crate) async fn import(
    st: &Arc<AppState>,
    template: ImageTemplate,
    reference: Option<String>,
    mut tar: impl Read + Send + 'static,
) -> Result<TemplateMetadata, CatalogError> {
    check_new_name(st, &template.name).await?;
    // Imports share the layer store; removal of unreferenced layers waits.
    let _layers = st.layers_lock.read().await;
    let store = st.store.clone();
    let log_name = template.name.clone();
    let imported = tokio::task::spawn_blocking(move || {
        store.import_tar_stream(&mut tar, reference.as_deref(), &mut |p| {
            log_import(&log_name, &p)
        })
    })
    .await
    .map_err(|e| CatalogError::Task(format!("import task failed: {e}")))?
    .map_err(|error| CatalogError::Import {
        name: template.name.clone(),
        error,
    })?;
    register_image(st, template, imported).await
}

/// Pulls `reference` from its registry into the layer store and registers
/// it as a template.
pub(crate) async fn pull(
    st: &Arc<AppState>,
    template: ImageTemplate,
    auth: RegistryAuth,
    progress: &mut (dyn FnMut(PullProgress) + Send),
) -> Result<TemplateMetadata, CatalogError> {
    check_new_name(st, &template.name).await?;
    // Pulls share the layer store; removal of unreferenced layers waits.
    let _layers = st.layers_lock.read().await;
    let imported = pull_image(st, template.source.trim(), auth, progress).await?;
    register_image(st, template, imported).await
}

/// Pulls `reference` into the layer store, with the server's insecure
/// registries and, without `auth`, the credentials of the server host's
/// Docker config file (if any). The caller holds the layers lock (read)
/// from before the pull until a template refers to the layers, so that a
/// removal does not collect them in between.
pub(crate) async fn pull_image(
    st: &AppState,
    reference: &str,
    auth: RegistryAuth,
    progress: &mut (dyn FnMut(PullProgress) + Send),
) -> Result<ImportedImage, CatalogError> {
    let opts = PullOptions {
        auth,
        insecure_registries: st.insecure_registries.clone(),
        docker_config: None,
    };
    hutch_image::pull(&st.store, reference, &opts, progress)
        .await
        .map_err(|error| CatalogError::Pull {
            reference: reference.to_owned(),
            error,
        })
}

/// Registers an imported or pulled image as a template. The caller holds
/// the layers lock (read) since the image's layers were stored.
async fn register_image(
    st: &Arc<AppState>,
    template: ImageTemplate,
    imported: ImportedImage,
) -> Result<TemplateMetadata, CatalogError> {
    let id = ids::new_id();
    let user = imported.config.user.clone().filter(|u| !u.is_empty());
    let workdir = imported
        .config
        .working_dir
        .clone()
        .filter(|w| !w.is_empty());
    let meta = TemplateMetadata {
        schema_version: TEMPLATE_SCHEMA_VERSION,
        id,
        name: template.name,
        created_at: time::rfc3339(time::now_ms()),
        source: TemplateSource::Image {
            path_or_ref: template.source,
            manifest_digest: imported.manifest_digest.clone(),
            config_digest: imported.config_digest.clone(),
        },
        env: hutch_env::image_layer(&imported.config.env),
        user,
        workdir,
        layers: imported.layers.clone(),
        image: imported.config,
        allow_privilege_escalation: template.allow_privilege_escalation,
        start_cmd: None,
        ready_cmd: None,
        limits: None,
    };
    register(st, &meta, Registration::New).await?;
    tracing::info!(template = %meta.name, layers = meta.layers.len(), "template imported");
    Ok(meta)
}

fn log_import(name: &str, p: &ImportProgress) {
    match p {
        ImportProgress::Manifest { layers } => {
            tracing::debug!(template = %name, layers, "importing image")
        }
        ImportProgress::LayerDone { index, reused } => {
            tracing::debug!(template = %name, layer = index, reused, "layer ready")
        }
        _ => {}
    }
}

/// A stored template's metadata.
pub(crate) fn metadata(row: &TemplateRow) -> Result<TemplateMetadata, CatalogError> {
    TemplateMetadata::from_json(&row.metadata).map_err(|e| CatalogError::Corrupt {
        name: row.name.clone(),
        cause: e.to_string(),
    })
}

/// The template with this id (or, failing that, name) and its metadata.
pub(crate) async fn find(
    st: &AppState,
    id_or_name: &str,
) -> Result<Option<(TemplateRow, TemplateMetadata)>, CatalogError> {
    match st.db.find_template(id_or_name.to_owned()).await? {
        Some(row) => {
            let meta = metadata(&row)?;
            Ok(Some((row, meta)))
        }
        None => Ok(None),
    }
}

/// Every template's metadata, by name (templates replaced by a newer build
/// of the same name are hidden).
pub(crate) async fn list(st: &AppState) -> Result<Vec<TemplateMetadata>, CatalogError> {
    st.db
        .list_templates()
        .await?
        .iter()
        .filter(|t| !t.name.contains('@'))
        .map(metadata)
        .collect()
}

/// Records `meta` (whose layers are stored) as a template and fills its
/// warm pool. `Ok(true)` if it replaced a template of the same name
/// ([`Registration::Replace`]).
pub(crate) async fn register(
    st: &Arc<AppState>,
    meta: &TemplateMetadata,
    how: Registration,
) -> Result<bool, CatalogError> {
    let row = TemplateRow {
        id: meta.id.clone(),
        name: meta.name.clone(),
        metadata: meta.to_json(),
        created_at: time::now_ms(),
    };
    let replaced = match how {
        Registration::New => {
            if !st.db.insert_template(row).await? {
                return Err(CatalogError::Exists(meta.name.clone()));
            }
            false
        }
        Registration::Replace => match st.db.replace_template(row).await? {
            Some(old) => {
                drain_pool(st, &old).await;
                prune_replaced(st).await;
                true
            }
            None => false,
        },
    };
    crate::pool::refill(st, &meta.id);
    Ok(replaced)
}

/// Removes template `name` (a name or an id) unless sandboxes of it run
/// (its pooled sandboxes do not count: they are destroyed), then the
/// layers no template and no cached build step uses any more. The
/// template's name, as found.
pub(crate) async fn remove(st: &Arc<AppState>, name: &str) -> Result<String, CatalogError> {
    let _layers = st.layers_lock.write().await;
    let template = st
        .db
        .find_template(name.to_owned())
        .await?
        .ok_or_else(|| CatalogError::NotFound(name.to_owned()))?;
    let running = st.db.live_sandboxes_of(template.id.clone()).await?;
    if running > 0 {
        return Err(CatalogError::InUse {
            name: template.name,
            running,
        });
    }
    // No claim can take one meanwhile: a claim holds the layers lock.
    drain_pool(st, &template.id).await;
    st.db.delete_template(template.id.clone()).await?;
    prune_replaced(st).await;
    match collect_layers(st).await {
        Ok(Some(n)) => {
            tracing::info!(template = %template.name, layers_removed = n, "template removed")
        }
        Ok(None) => tracing::info!(template = %template.name, "template removed"),
        Err(e) => tracing::warn!(template = %template.name, "removing unused layers: {e}"),
    }
    Ok(template.name)
}

/// Keeps template `id` from being pruned while the pin lives: a fork's
/// snapshot, hidden from the start, between its registration and the rows
/// of the sandboxes started from it.
pub(crate) fn pin<'a>(st: &'a AppState, id: &str) -> Pin<'a> {
    pinned(st).insert(id.to_owned());
    Pin {
        st,
        id: id.to_owned(),
    }
}

/// See [`pin`].
pub(crate) struct Pin<'a> {
    st: &'a AppState,
    id: String,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        pinned(self.st).remove(&self.id);
    }
}

fn pinned(st: &AppState) -> std::sync::MutexGuard<'_, HashSet<String>> {
    st.pinned_templates
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// After a sandbox of template `id` is gone: when that template is hidden
/// (replaced by a newer build, or a fork's snapshot) and no sandbox uses
/// it any more, it is deleted, and the layers nothing else uses with it.
pub(crate) async fn sandbox_gone(st: &Arc<AppState>, id: &str) {
    match st.db.find_template(id.to_owned()).await {
        Ok(Some(t)) if t.name.contains('@') && t.id == id => {}
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(template = %id, "cannot look up a killed sandbox's template: {e}");
            return;
        }
    }
    let _layers = st.layers_lock.write().await;
    match st.db.live_sandboxes_of(id.to_owned()).await {
        Ok(0) => {}
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(template = %id, "cannot count its sandboxes: {e}");
            return;
        }
    }
    prune_replaced(st).await;
    match collect_layers(st).await {
        Ok(Some(n)) if n > 0 => tracing::info!(layers_removed = n, "unused layers removed"),
        Ok(_) => {}
        Err(e) => tracing::warn!("removing unused layers: {e}"),
    }
}

/// Deletes templates replaced by a newer build of the same name, and the
/// snapshots forks started from, once no sandbox uses them any more (their
/// layers go at the next collection).
pub(crate) async fn prune_replaced(st: &Arc<AppState>) {
    let Ok(rows) = st.db.list_templates().await else {
        return;
    };
    let hidden: Vec<TemplateRow> = {
        let pinned = pinned(st);
        rows.into_iter()
            .filter(|t| t.name.contains('@') && !pinned.contains(&t.id))
            .collect()
    };
    for t in hidden {
        match st.db.live_sandboxes_of(t.id.clone()).await {
            Ok(0) => {
                drain_pool(st, &t.id).await;
                if let Err(e) = st.db.delete_template(t.id.clone()).await {
                    tracing::warn!(template = %t.name, "cannot delete a replaced template: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(template = %t.name, "cannot count its sandboxes: {e}"),
        }
    }
}

/// Destroys the warm pool of template `id`.
async fn drain_pool(st: &Arc<AppState>, id: &str) {
    let pooled = st.pool.remove_template(id);
    futures::future::join_all(pooled.iter().map(|p| crate::pool::destroy(st, &p.id))).await;
}

/// Removes the stored layers that no template and no cached build step
/// refers to (the cache's stay: rebuilding is then fast). The caller holds
/// the layers lock exclusively. `Ok(None)`: nothing was removed because a
/// template's metadata cannot be read (removing any layer could break it).
async fn collect_layers(st: &Arc<AppState>) -> Result<Option<usize>, String> {
    let mut referenced: HashSet<String> = st
        .builder
        .iter()
        .flat_map(|b| b.cache().referenced_layers())
        .collect();
    for t in st.db.list_templates().await.map_err(|e| e.to_string())? {
        match TemplateMetadata::from_json(&t.metadata) {
            Ok(m) => referenced.extend(m.layers),
            Err(e) => {
                tracing::warn!(template = %t.name, "unreadable metadata, keeping all layers: {e}");
                return Ok(None);
            }
        }
    }
    let store = st.store.clone();
    let removed = tokio::task::spawn_blocking(move || store.remove_unreferenced(&referenced))
        .await
        .map_err(|e| format!("layer collection task failed: {e}"))?
        .map_err(|e| e.to_string())?;
    Ok(Some(removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_may_carry_the_default_tag() {
        assert_eq!(reference("app"), "app");
        assert_eq!(reference("app:default"), "app");
        assert_eq!(reference("abc123:default"), "abc123");
        assert_eq!(reference("app:v1"), "app:v1");
        assert_eq!(reference("default"), "default");
        assert_eq!(reference(":default"), "");
    }

    #[test]
    fn template_names() {
        for ok in ["a", "base", "python-3.11", "x_y", "0abc", &"a".repeat(63)] {
            assert!(valid_template_name(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "A", "a b", "a/b", "é", &"a".repeat(64)] {
            assert!(!valid_template_name(bad), "{bad}");
        }
    }
    use crate::testing::Harness;

    /// A layer holding one file `name`, stored.
    fn layer(st: &AppState, name: &str) -> String {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        tar.append_data(&mut header, name, &b"hi"[..]).unwrap();
        let bytes = tar.into_inner().unwrap();
        st.store.add_layer_tar(&mut &bytes[..]).unwrap()
    }

    fn template(h: &Harness, name: &str, layers: Vec<String>) -> TemplateMetadata {
        let app = h.template();
        TemplateMetadata {
            id: crate::ids::new_id(),
            name: name.into(),
            layers,
            ..app
        }
    }

    #[tokio::test]
    async fn a_name_is_registered_once_unless_replaced() {
        let h = Harness::new().await;
        let again = template(&h, "app", vec![]);
        let e = register(&h.st, &again, Registration::New)
            .await
            .unwrap_err();
        assert!(
            matches!(e, CatalogError::Exists(ref n) if n == "app"),
            "{e}"
        );
        assert_eq!(crate::error::ApiError::from(e).status().as_u16(), 409);

        // A replacement takes the name; the old template, unused, goes.
        assert!(
            register(&h.st, &again, Registration::Replace)
                .await
                .unwrap()
        );
        let found = h.st.db.find_template("app".into()).await.unwrap().unwrap();
        assert_eq!(found.id, again.id);
        let names: Vec<String> =
            h.st.db
                .list_templates()
                .await
                .unwrap()
                .into_iter()
                .map(|t| t.name)
                .collect();
        assert_eq!(names, vec!["app".to_owned()]);

        let fresh = template(&h, "other", vec![]);
        assert!(
            !register(&h.st, &fresh, Registration::Replace)
                .await
                .unwrap()
        );
    }

    /// A replaced template whose sandboxes still run stays until they are
    /// gone.
    #[tokio::test]
    async fn a_replaced_template_stays_while_its_sandboxes_run() {
        let h = Harness::new().await;
        let id = h.create().await;
        let old = h.template().id;
        register(&h.st, &template(&h, "app", vec![]), Registration::Replace)
            .await
            .unwrap();
        let kept = h.st.db.find_template(old.clone()).await.unwrap().unwrap();
        assert!(kept.name.starts_with("app@"), "{}", kept.name);
        assert!(crate::lifecycle::kill_sandbox(&h.st, &id).await.unwrap());
        prune_replaced(&h.st).await;
        assert!(h.st.db.find_template(old).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn removing_a_template_collects_the_layers_nothing_else_uses() {
        let h = Harness::new().await;
        let shared = layer(&h.st, "shared");
        let own = layer(&h.st, "own");
        let first = template(&h, "first", vec![shared.clone(), own.clone()]);
        let second = template(&h, "second", vec![shared.clone()]);
        register(&h.st, &first, Registration::New).await.unwrap();
        register(&h.st, &second, Registration::New).await.unwrap();

        let e = remove(&h.st, "nope").await.unwrap_err();
        assert_eq!(e.to_string(), "template 'nope' not found");

        assert_eq!(remove(&h.st, &first.id).await.unwrap(), "first");
        assert!(
            h.st.db
                .find_template("first".into())
                .await
                .unwrap()
                .is_none()
        );
        assert!(!h.st.store.layer_dir(&own).exists(), "its own layer goes");
        assert!(h.st.store.layer_dir(&shared).exists(), "a shared one stays");
    }

    #[tokio::test]
    async fn a_template_in_use_is_not_removed() {
        let h = Harness::new().await;
        let id = h.create().await;
        let e = remove(&h.st, "app").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "template 'app' has 1 running sandbox; kill it first"
        );
        assert!(h.st.db.find_template("app".into()).await.unwrap().is_some());
        assert!(crate::lifecycle::kill_sandbox(&h.st, &id).await.unwrap());
        remove(&h.st, "app").await.unwrap();
    }
}
