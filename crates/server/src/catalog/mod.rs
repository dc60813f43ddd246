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

mod listing;
mod tags;

pub(crate) use listing::{TemplateView, describe, overview, set_public};
pub(crate) use tags::{assign_tags, remove_tags, tags_of};

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
    /// Another team's template has that name (names are unique across
    /// teams).
    #[error("template name '{0}' is taken by another team; choose another name")]
    Taken(String),
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
        #[source]
        error: ImageError,
    },
    /// An image could not be pulled (the error names the image and the
    /// registry, except for local failures).
    #[error("{}", pull_message(reference, error))]
    Pull {
        /// The image.
        reference: String,
        /// Why.
        #[source]
        error: ImageError,
    },
    /// A tag is not a valid tag ([`valid_tag`]).
    #[error(
        "invalid tag '{0}': use 1 to 128 characters from A-Z, a-z, 0-9, '.', '_' and '-', not starting with '.' or '-'"
    )]
    InvalidTag(String),
    /// The `default` tag cannot be removed.
    #[error(
        "the '{DEFAULT_TAG}' tag of template '{0}' cannot be removed: it names the build `{0}` starts; remove the template instead"
    )]
    DefaultTag(String),
    /// Tags asked for do not exist.
    #[error("template '{name}' has no tag {}", quoted(tags))]
    NoSuchTags {
        /// The template.
        name: String,
        /// The missing tags.
        tags: Vec<String>,
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

fn quoted(list: &[String]) -> String {
    list.iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ")
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

/// A template reference split into the template (a name or an id) and the
/// tag (a tag or a build id): `None` for the default build (`name`,
/// `name:default`).
pub(crate) fn split_reference(reference: &str) -> (&str, Option<&str>) {
    match reference.split_once(':') {
        Some((name, DEFAULT_TAG)) => (name, None),
        Some((name, tag)) => (name, Some(tag)),
        None => (reference, None),
    }
}

/// The template name a template row belongs to: its name, without the
/// `@…` of a hidden build.
pub(crate) fn template_name(row: &TemplateRow) -> &str {
    row.name.split_once('@').map_or(&row.name, |(name, _)| name)
}

/// Whether team `team` may start sandboxes from template row `row`: its
/// own, or a public one.
pub(crate) fn visible(row: &TemplateRow, team: &str) -> bool {
    row.team_id == team || row.public
}

/// The template row (the build) a reference names, if team `team` may
/// use it ([`visible`]): `name` or `id` (the default build; any row by id,
/// hidden builds included), `name:tag`, or `name:<buildID>` (any kept
/// build of the name).
pub(crate) async fn resolve(
    st: &AppState,
    team: &str,
    reference: &str,
) -> Result<Option<TemplateRow>, CatalogError> {
    Ok(resolve_any(st, reference)
        .await?
        .filter(|row| visible(row, team)))
}

/// The template row of team `team` a reference names (see [`resolve`]).
pub(crate) async fn resolve_owned(
    st: &AppState,
    team: &str,
    reference: &str,
) -> Result<Option<TemplateRow>, CatalogError> {
    Ok(resolve_any(st, reference)
        .await?
        .filter(|row| row.team_id == team))
}

/// [`resolve`], whoever owns the row.
async fn resolve_any(st: &AppState, reference: &str) -> Result<Option<TemplateRow>, CatalogError> {
    let (template, tag) = split_reference(reference);
    let Some(tag) = tag else {
        return Ok(st.db.find_template(template.to_owned()).await?);
    };
    // `id:tag` works too: the tags belong to the name.
    let name = match st.db.find_template(template.to_owned()).await? {
        Some(row) => template_name(&row).to_owned(),
        None => template.to_owned(),
    };
    let tags = st.db.list_tags(Some(name.clone())).await?;
    if let Some(t) = tags.iter().find(|t| t.tag == tag) {
        return Ok(st.db.find_template(t.template_id.clone()).await?);
    }
    if !ids::looks_like_build_id(tag) {
        return Ok(None);
    }
    Ok(st
        .db
        .list_templates()
        .await?
        .into_iter()
        .find(|row| row.build_id == tag && template_name(row) == name))
}

/// Whether `tag` is a valid tag: 1 to 128 characters from `A-Za-z0-9._-`,
/// not starting with `.` or `-` (Docker's rule for image tags).
pub(crate) fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn log_collection(result: Result<Option<usize>, String>) {
    match result {
        Ok(Some(n)) if n > 0 => tracing::info!(layers_removed = n, "unused layers removed"),
        Ok(_) => {}
        Err(e) => tracing::warn!("removing unused layers: {e}"),
    }
}

/// Checks that `name` is a valid template name no template has yet.
pub(crate) async fn check_new_name(
    st: &AppState,
    team: &str,
    name: &str,
) -> Result<(), CatalogError> {
    if !valid_template_name(name) {
        return Err(CatalogError::InvalidName(name.to_owned()));
    }
    match named(st, name).await? {
        Some(t) if t.team_id == team => Err(CatalogError::Exists(name.to_owned())),
        Some(_) => Err(CatalogError::Taken(name.to_owned())),
        None => Ok(()),
    }
}

/// The template named `name` (not by id), whoever owns it.
async fn named(st: &AppState, name: &str) -> Result<Option<TemplateRow>, CatalogError> {
    Ok(st
        .db
        .find_template(name.to_owned())
        .await?
        .filter(|t| t.name == name))
}

/// Checks that team `team` may build template `name`: a new name, or one
/// of its own templates.
pub(crate) async fn check_buildable(
    st: &AppState,
    team: &str,
    name: &str,
) -> Result<(), CatalogError> {
    match named(st, name).await? {
        Some(t) if t.team_id != team => Err(CatalogError::Taken(name.to_owned())),
        _ => Ok(()),
    }
}

/// What an image becomes as a template.
pub(crate) struct ImageTemplate {
    /// The team it is for.
    pub team: String,
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
    check_new_name(st, &template.team, &template.name).await?;
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
    check_new_name(st, &template.team, &template.name).await?;
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
    register(st, &template.team, &meta, Registration::New).await?;
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

/// The metadata of every template team `team` may use ([`visible`]), by
/// name (templates replaced by a newer build of the same name are hidden).
pub(crate) async fn list(st: &AppState, team: &str) -> Result<Vec<TemplateMetadata>, CatalogError> {
    st.db
        .list_templates()
        .await?
        .iter()
        .filter(|t| !t.name.contains('@') && visible(t, team))
        .map(metadata)
        .collect()
}

/// Records `meta` (whose layers are stored) as a template, a new build,
/// and fills its warm pool. `Ok(true)` if it replaced a template of the
/// same name ([`Registration::Replace`]).
pub(crate) async fn register(
    st: &Arc<AppState>,
    team: &str,
    meta: &TemplateMetadata,
    how: Registration,
) -> Result<bool, CatalogError> {
    register_build(st, team, meta, how, ids::new_build_id()).await
}

/// [`register`], with the build id the build was known by. A build that
/// replaces a template must be its team's (else
/// [`CatalogError::Taken`]); it keeps the template's public flag.
pub(crate) async fn register_build(
    st: &Arc<AppState>,
    team: &str,
    meta: &TemplateMetadata,
    how: Registration,
    build_id: String,
) -> Result<bool, CatalogError> {
    let mut public = false;
    if how == Registration::Replace
        && let Some(old) = named(st, &meta.name).await?
    {
        if old.team_id != team {
            return Err(CatalogError::Taken(meta.name.clone()));
        }
        public = old.public;
    }
    let row = TemplateRow {
        id: meta.id.clone(),
        name: meta.name.clone(),
        metadata: meta.to_json(),
        created_at: time::now_ms(),
        build_id,
        public,
        team_id: team.to_owned(),
    };
    let replaced = match how {
        Registration::New => {
            if !st.db.insert_template(row).await? {
                return Err(match named(st, &meta.name).await? {
                    Some(t) if t.team_id != team => CatalogError::Taken(meta.name.clone()),
                    _ => CatalogError::Exists(meta.name.clone()),
                });
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
    crate::distribution::push_in_background(st, &meta.layers);
    Ok(replaced)
}

/// Removes template `name` (a name or an id) unless sandboxes of it run
/// (its pooled sandboxes do not count: they are destroyed), with its tags,
/// then the builds and layers nothing uses any more (a tagged build that
/// still has sandboxes stays until they end). The template's name, as
/// found.
pub(crate) async fn remove(
    st: &Arc<AppState>,
    team: &str,
    name: &str,
) -> Result<String, CatalogError> {
    let _layers = st.layers_lock.write().await;
    let found = st.db.find_template(name.to_owned()).await?;
    let tagged_only = match &found {
        Some(_) => false,
        None => owned_tags(st, team, name).await?,
    };
    let removed = match found.filter(|t| t.team_id == team) {
        Some(template) => {
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
            if !template.name.contains('@') {
                st.db.delete_tags_of(template.name.clone()).await?;
            }
            template.name
        }
        // A template with tagged builds only (built as `name:tag`).
        None if tagged_only => {
            st.db.delete_tags_of(name.to_owned()).await?;
            name.to_owned()
        }
        None => return Err(CatalogError::NotFound(name.to_owned())),
    };
    prune_replaced(st).await;
    match collect_layers(st).await {
        Ok(Some(n)) => tracing::info!(template = %removed, layers_removed = n, "template removed"),
        Ok(None) => tracing::info!(template = %removed, "template removed"),
        Err(e) => tracing::warn!(template = %removed, "removing unused layers: {e}"),
    }
    Ok(removed)
}

/// Whether template name `name` has tags, on builds of team `team`.
async fn owned_tags(st: &AppState, team: &str, name: &str) -> Result<bool, CatalogError> {
    let Some(tag) = st.db.list_tags(Some(name.to_owned())).await?.pop() else {
        return Ok(false);
    };
    Ok(st
        .db
        .find_template(tag.template_id)
        .await?
        .is_some_and(|t| t.team_id == team))
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
    log_collection(collect_layers(st).await);
}

/// Deletes templates replaced by a newer build of the same name, and the
/// snapshots forks started from, once no sandbox uses them and no tag
/// names them any more (their layers go at the next collection).
pub(crate) async fn prune_replaced(st: &Arc<AppState>) {
    let (Ok(rows), Ok(tags)) = (st.db.list_templates().await, st.db.list_tags(None).await) else {
        return;
    };
    let tagged: HashSet<String> = tags.into_iter().map(|t| t.template_id).collect();
    let hidden: Vec<TemplateRow> = {
        let pinned = pinned(st);
        rows.into_iter()
            .filter(|t| t.name.contains('@') && !pinned.contains(&t.id) && !tagged.contains(&t.id))
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
    fn references_split_into_template_and_tag() {
        assert_eq!(split_reference("app"), ("app", None));
        assert_eq!(split_reference("app:default"), ("app", None));
        assert_eq!(split_reference("abc123:default"), ("abc123", None));
        assert_eq!(split_reference("app:v1"), ("app", Some("v1")));
        assert_eq!(split_reference("default"), ("default", None));
        assert_eq!(split_reference(":default"), ("", None));
        assert_eq!(split_reference("app:a:b"), ("app", Some("a:b")));
    }

    #[test]
    fn tags() {
        for ok in ["v1", "v1.2.0", "latest", "_x", "A-b_c.d", &"t".repeat(128)] {
            assert!(valid_tag(ok), "{ok}");
        }
        for bad in ["", "-v", ".v", "a:b", "a/b", "a b", "é", &"t".repeat(129)] {
            assert!(!valid_tag(bad), "{bad}");
        }
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
    async fn a_team_sees_its_own_templates_and_public_ones() {
        let h = Harness::new().await;
        let other = "another-team";
        let not_found = |e: CatalogError| matches!(e, CatalogError::NotFound(_));
        // `app` is the default team's, and private.
        assert!(resolve(&h.st, other, "app").await.unwrap().is_none());
        assert!(list(&h.st, other).await.unwrap().is_empty());
        assert!(overview(&h.st, other).await.unwrap().is_empty());
        assert!(not_found(describe(&h.st, other, "app").await.unwrap_err()));
        assert!(not_found(tags_of(&h.st, other, "app").await.unwrap_err()));
        let e = check_new_name(&h.st, other, "app").await.unwrap_err();
        assert!(matches!(e, CatalogError::Taken(_)), "{e}");
        let again = template(&h, "app", vec![]);
        let e = register(&h.st, other, &again, Registration::Replace)
            .await
            .unwrap_err();
        assert!(matches!(e, CatalogError::Taken(_)), "{e}");
        let e = register(&h.st, other, &again, Registration::New)
            .await
            .unwrap_err();
        assert!(matches!(e, CatalogError::Taken(_)), "{e}");

        // Public: every team starts sandboxes from it, and only its team
        // manages it.
        set_public(&h.st, h.team(), "app", true).await.unwrap();
        assert!(resolve(&h.st, other, "app").await.unwrap().is_some());
        assert_eq!(list(&h.st, other).await.unwrap().len(), 1);
        assert!(tags_of(&h.st, other, "app").await.is_ok());
        assert!(overview(&h.st, other).await.unwrap().is_empty());
        assert!(not_found(
            set_public(&h.st, other, "app", false).await.unwrap_err()
        ));
        assert!(not_found(
            assign_tags(&h.st, other, "app", &["v1".to_owned()])
                .await
                .unwrap_err()
        ));
        assert!(not_found(
            remove_tags(&h.st, other, "app", &["v1".to_owned()])
                .await
                .unwrap_err()
        ));
        assert!(not_found(remove(&h.st, other, "app").await.unwrap_err()));
        // A rebuild by its team keeps it public.
        register(&h.st, h.team(), &again, Registration::Replace)
            .await
            .unwrap();
        assert!(resolve(&h.st, other, "app").await.unwrap().is_some());
        remove(&h.st, h.team(), "app").await.unwrap();
    }

    #[tokio::test]
    async fn a_name_is_registered_once_unless_replaced() {
        let h = Harness::new().await;
        let again = template(&h, "app", vec![]);
        let e = register(&h.st, h.team(), &again, Registration::New)
            .await
            .unwrap_err();
        assert!(
            matches!(e, CatalogError::Exists(ref n) if n == "app"),
            "{e}"
        );
        assert_eq!(crate::error::ApiError::from(e).status().as_u16(), 409);

        // A replacement takes the name; the old template, unused, goes.
        assert!(
            register(&h.st, h.team(), &again, Registration::Replace)
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
            !register(&h.st, h.team(), &fresh, Registration::Replace)
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
        register(
            &h.st,
            h.team(),
            &template(&h, "app", vec![]),
            Registration::Replace,
        )
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
        register(&h.st, h.team(), &first, Registration::New)
            .await
            .unwrap();
        register(&h.st, h.team(), &second, Registration::New)
            .await
            .unwrap();

        let e = remove(&h.st, h.team(), "nope").await.unwrap_err();
        assert_eq!(e.to_string(), "template 'nope' not found");

        assert_eq!(remove(&h.st, h.team(), &first.id).await.unwrap(), "first");
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
        let e = remove(&h.st, h.team(), "app").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "template 'app' has 1 running sandbox; kill it first"
        );
        assert!(h.st.db.find_template("app".into()).await.unwrap().is_some());
        assert!(crate::lifecycle::kill_sandbox(&h.st, &id).await.unwrap());
        remove(&h.st, h.team(), "app").await.unwrap();
    }

    #[tokio::test]
    async fn tags_name_builds_and_keep_them() {
        let h = Harness::new().await;
        let (l1, l2) = (layer(&h.st, "one"), layer(&h.st, "two"));
        let first = template(&h, "app", vec![l1.clone()]);
        register(&h.st, h.team(), &first, Registration::Replace)
            .await
            .unwrap();
        let v1 = assign_tags(&h.st, h.team(), "app", &["v1".into()])
            .await
            .unwrap();
        assert_eq!(v1.id, first.id);
        assert!(
            crate::ids::looks_like_build_id(&v1.build_id),
            "{}",
            v1.build_id
        );

        // A new default build: the tagged one is kept, and named.
        let second = template(&h, "app", vec![l2.clone()]);
        register(&h.st, h.team(), &second, Registration::Replace)
            .await
            .unwrap();
        let name = |r: &str| {
            let st = h.st.clone();
            let r = r.to_owned();
            async move {
                let team = st.default_team.clone();
                resolve(&st, &team, &r).await.unwrap().map(|row| row.id)
            }
        };
        assert_eq!(name("app").await.unwrap(), second.id);
        assert_eq!(name("app:default").await.unwrap(), second.id);
        assert_eq!(name("app:v1").await.unwrap(), first.id);
        assert_eq!(
            name(&format!("app:{}", v1.build_id)).await.unwrap(),
            first.id
        );
        assert_eq!(name(&format!("{}:v1", second.id)).await.unwrap(), first.id);
        assert!(name("app:v2").await.is_none());
        assert!(name("nope:v1").await.is_none());
        assert!(h.st.store.layer_dir(&l1).exists());
        let tags: Vec<(String, String)> = tags_of(&h.st, h.team(), "app")
            .await
            .unwrap()
            .into_iter()
            .map(|(t, row, _)| (t, row.id))
            .collect();
        assert_eq!(
            tags,
            [
                ("default".to_owned(), second.id.clone()),
                ("v1".to_owned(), first.id.clone())
            ]
        );

        // A sandbox of a tag runs that build.
        let mut args = h.create_args();
        args.template = "app:v1".into();
        let sandbox = crate::lifecycle::create_sandbox(&h.st, args).await.unwrap();
        assert_eq!(sandbox.template_id, first.id);
        assert!(
            crate::lifecycle::kill_sandbox(&h.st, &sandbox.id)
                .await
                .unwrap()
        );

        // Tagging `default` makes the build the default, under the
        // template's id.
        assign_tags(&h.st, h.team(), "app:v1", &["default".into()])
            .await
            .unwrap();
        let default = h.st.db.find_template("app".into()).await.unwrap().unwrap();
        assert_eq!(default.id, second.id);
        assert_eq!(default.build_id, v1.build_id);
        assert_eq!(
            metadata(&default).unwrap().layers,
            std::slice::from_ref(&l1)
        );

        // Removing the tag lets go of what only it kept.
        remove_tags(&h.st, h.team(), "app", &["v1".into()])
            .await
            .unwrap();
        assert!(name("app:v1").await.is_none());
        assert!(h.st.store.layer_dir(&l1).exists(), "the default uses it");
        assert!(!h.st.store.layer_dir(&l2).exists(), "nothing uses it");

        let e = remove_tags(&h.st, h.team(), "app", &["v1".into()])
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "template 'app' has no tag 'v1'");
        assert_eq!(crate::error::ApiError::from(e).status().as_u16(), 404);
        let e = remove_tags(&h.st, h.team(), "app", &["default".into()])
            .await
            .unwrap_err();
        assert_eq!(crate::error::ApiError::from(e).status().as_u16(), 400);
        let e = assign_tags(&h.st, h.team(), "app", &["bad/tag".into()])
            .await
            .unwrap_err();
        assert_eq!(crate::error::ApiError::from(e).status().as_u16(), 400);
        let e = assign_tags(&h.st, h.team(), "nope", &["x".into()])
            .await
            .unwrap_err();
        assert_eq!(crate::error::ApiError::from(e).status().as_u16(), 404);
    }

    #[tokio::test]
    async fn a_template_known_by_tags_only_is_listed_and_removed() {
        let h = Harness::new().await;
        let own = layer(&h.st, "own");
        let mut meta = template(&h, "tool", vec![own.clone()]);
        meta.name = format!("tool@{}", meta.id);
        register(&h.st, h.team(), &meta, Registration::New)
            .await
            .unwrap();
        h.st.db
            .set_tags("tool".into(), vec!["v1".into()], meta.id.clone(), 1)
            .await
            .unwrap();
        prune_replaced(&h.st).await;
        assert!(resolve(&h.st, h.team(), "tool").await.unwrap().is_none());
        assert_eq!(
            resolve(&h.st, h.team(), "tool:v1")
                .await
                .unwrap()
                .unwrap()
                .id,
            meta.id
        );
        let views = overview(&h.st, h.team()).await.unwrap();
        let names: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["app", "tool"]);
        let tool = describe(&h.st, h.team(), "tool").await.unwrap();
        assert_eq!(
            (tool.main.id.as_str(), tool.builds.len()),
            (meta.id.as_str(), 1)
        );

        assert_eq!(remove(&h.st, h.team(), "tool").await.unwrap(), "tool");
        assert!(resolve(&h.st, h.team(), "tool:v1").await.unwrap().is_none());
        assert!(!h.st.store.layer_dir(&own).exists());
        assert!(describe(&h.st, h.team(), "tool").await.is_err());
    }

    #[tokio::test]
    async fn listings_count_builds_and_spawns_and_keep_the_public_flag() {
        let h = Harness::new().await;
        let id = h.create().await;
        let view = describe(&h.st, h.team(), "app").await.unwrap();
        assert_eq!(view.spawns.count, 1);
        assert!(view.spawns.last_at.is_some());
        assert_eq!(view.builds.len(), 1);
        register(
            &h.st,
            h.team(),
            &template(&h, "app", vec![]),
            Registration::Replace,
        )
        .await
        .unwrap();
        // The old build is kept while its sandbox runs.
        let view = describe(&h.st, h.team(), "app").await.unwrap();
        assert_eq!(view.builds.len(), 2);
        assert_eq!(view.spawns.count, 1);
        assert!(!view.main.public);
        let view = set_public(&h.st, h.team(), &view.main.id, true)
            .await
            .unwrap();
        assert!(view.main.public);
        assert!(crate::lifecycle::kill_sandbox(&h.st, &id).await.unwrap());
    }
}
