//! Snapshots and forks.
//!
//! A snapshot is a template: the sandbox's template's layers plus one more,
//! what the sandbox changed (written by the node while the sandbox is
//! frozen, so it is one moment of it: only the changed files are read and
//! stored, never the whole disk), with the sandbox's own variables folded
//! into its environment ([`hutch_env::snapshot_layer`]) and its limits as
//! the defaults. Sandboxes created from it boot on those files; processes
//! and memory are not kept. A fork is a hidden snapshot and sandboxes
//! created from it with the source's configuration; the source keeps
//! running.

use std::collections::BTreeMap;
use std::sync::Arc;

use hutch_image::{TEMPLATE_SCHEMA_VERSION, TemplateLimits, TemplateMetadata, TemplateSource};

use super::{CreateArgs, LISTED, SandboxError, create, find, recorded_policy};
use crate::catalog::{self, Registration};
use crate::db::{Ingress, SandboxRow};
use crate::node::NodeError;
use crate::state::AppState;
use crate::{DEFAULT_SANDBOX_TIMEOUT_SECS, ids, limits, time};

/// Most sandboxes one fork request makes (E2B's bound).
pub(crate) const MAX_FORKS: u64 = 20;

/// What a snapshot is called.
enum Naming {
    /// Named by the user: a template of that name, replaced if it is a
    /// snapshot already.
    Named(String),
    /// Known by its id.
    Unnamed,
    /// The start of a fork, with this id: hidden from listings, removed
    /// once none of its sandboxes is left.
    Hidden(String),
}

/// Captures the file system of the running or paused sandbox `id` as a
/// snapshot named `name` (else known by its id).
pub(crate) async fn snapshot_sandbox(
    st: &Arc<AppState>,
    id: &str,
    name: Option<String>,
) -> Result<TemplateMetadata, SandboxError> {
    let naming = match name {
        Some(name) => Naming::Named(name),
        None => Naming::Unnamed,
    };
    let _transition = st.transitions.lock(id).await;
    let row = find(st, id, LISTED).await?;
    capture(st, &row, naming).await
}

/// Forks the running or paused sandbox `id` `count` times: one snapshot,
/// then `count` sandboxes from it, each with the source's metadata,
/// variables, limits, network rules and lifecycle, and a lifetime of
/// `timeout_secs` (the default when absent). Each fork succeeds or fails on
/// its own.
pub(crate) async fn fork_sandbox(
    st: &Arc<AppState>,
    id: &str,
    timeout_secs: Option<u64>,
    count: u64,
) -> Result<Vec<Result<SandboxRow, SandboxError>>, SandboxError> {
    if !(1..=MAX_FORKS).contains(&count) {
        return Err(SandboxError::Invalid(format!(
            "count {count} is invalid: a fork makes 1 to {MAX_FORKS} sandboxes"
        )));
    }
    // Not pruned before its sandboxes exist.
    let snapshot_id = ids::new_id();
    let _pin = catalog::pin(st, &snapshot_id);
    let (row, snapshot) = {
        let _transition = st.transitions.lock(id).await;
        let row = find(st, id, LISTED).await?;
        let snapshot = capture(st, &row, Naming::Hidden(snapshot_id.clone())).await?;
        (row, snapshot)
    };
    let args = || CreateArgs {
        team: row.team_id.clone(),
        template: snapshot.id.clone(),
        timeout_secs: timeout_secs.unwrap_or(DEFAULT_SANDBOX_TIMEOUT_SECS),
        metadata: row.metadata.clone(),
        // In the snapshot's environment already.
        env: BTreeMap::new(),
        access_token: row.access_token.is_some().then(ids::new_access_token),
        network: recorded_policy(&row),
        limits: limits::Requested {
            cpu_count: Some(i64::from(row.cpu_count)),
            memory_mb: i64::try_from(row.memory_mb).ok(),
            disk_size_mb: i64::try_from(row.disk_size_mb).ok(),
            pids: row.pids.and_then(|p| i64::try_from(p).ok()),
        },
        lifecycle: row.lifecycle,
        // The same volumes (by id).
        volume_mounts: row
            .volume_mounts
            .iter()
            .map(|m| (m.volume_id.clone(), m.path.clone()))
            .collect(),
        // A fork of a private sandbox is private, with a token of its own.
        ingress: Ingress {
            traffic_token: row
                .ingress
                .traffic_token
                .is_some()
                .then(ids::new_access_token),
            mask_request_host: row.ingress.mask_request_host.clone(),
        },
    };
    let forks = (0..count).map(|_| create(st, args()));
    let forks = futures::future::join_all(forks).await;
    let started = forks.iter().filter(|f| f.is_ok()).count();
    tracing::info!(sandbox = %id, forks = started, failed = forks.len() - started, "sandbox forked");
    Ok(forks)
}

/// Captures `row`'s sandbox as a snapshot. The caller holds the sandbox's
/// transition lock.
async fn capture(
    st: &Arc<AppState>,
    row: &SandboxRow,
    naming: Naming,
) -> Result<TemplateMetadata, SandboxError> {
    let id = row.id.as_str();
    // Paused either way, nothing of it runs: it is read as it is.
    let frozen = match st.live().get(id).map(|e| e.paused) {
        None => return Err(SandboxError::NotFound(id.to_owned())),
        Some(paused) => paused.is_some(),
    };
    let how = match &naming {
        Naming::Named(name) => named_registration(st, &row.team_id, name).await?,
        Naming::Unnamed | Naming::Hidden(_) => Registration::New,
    };
    let (_, base) = catalog::find(st, &row.template_id).await?.ok_or_else(|| {
        SandboxError::Failed(format!(
            "sandbox {id}'s template {} is gone",
            row.template_id
        ))
    })?;

    // The new layer must not be collected before the snapshot's row
    // refers to it.
    let layers_guard = st.layers_lock.read().await;
    let failed = |e: NodeError| SandboxError::node(format!("cannot snapshot sandbox {id}"), &e);
    if !frozen {
        st.node.pause(id).await.map_err(failed)?;
    }
    let layer = st.node.snapshot_layer(id, &base.layers).await;
    if !frozen && let Err(e) = st.node.resume(id).await {
        tracing::warn!(sandbox = %id, "cannot thaw the sandbox after its snapshot: {e}");
    }
    let layer = layer.map_err(failed)?;

    // The template's own name, also when it was replaced since.
    let template = base.name.split('@').next().unwrap_or_default().to_owned();
    let (snapshot_id, name) = match naming {
        Naming::Named(name) => (ids::new_id(), name),
        Naming::Unnamed => {
            let id = ids::new_id();
            (id.clone(), id)
        }
        Naming::Hidden(id) => {
            let name = format!("{template}@fork-{id}");
            (id, name)
        }
    };
    let sandbox_env: Vec<(String, String)> = row
        .sandbox_env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut layers = base.layers.clone();
    layers.extend(layer);
    let meta = TemplateMetadata {
        schema_version: TEMPLATE_SCHEMA_VERSION,
        id: snapshot_id,
        name,
        created_at: time::rfc3339(time::now_ms()),
        source: TemplateSource::Snapshot {
            sandbox_id: id.to_owned(),
            template,
        },
        image: base.image,
        env: hutch_env::snapshot_layer(&base.env, &sandbox_env),
        user: base.user,
        workdir: base.workdir,
        layers,
        allow_privilege_escalation: base.allow_privilege_escalation,
        start_cmd: base.start_cmd,
        ready_cmd: base.ready_cmd,
        limits: Some(TemplateLimits {
            cpu_count: Some(row.cpu_count),
            memory_mb: Some(row.memory_mb),
            disk_size_mb: Some(row.disk_size_mb),
            pids: row.pids,
        }),
    };
    catalog::register(st, &row.team_id, &meta, how).await?;
    drop(layers_guard);
    tracing::info!(sandbox = %id, snapshot = %meta.id, name = %meta.name, "sandbox snapshotted");
    st.logs.event(
        id,
        hutch_protocol::api::LogLevel::Info,
        format!("snapshot {} taken", meta.id),
    );
    Ok(meta)
}

/// How a snapshot named `name` is registered for team `team`: it replaces
/// a snapshot of that name, never a template of another kind or another
/// team's.
async fn named_registration(
    st: &AppState,
    team: &str,
    name: &str,
) -> Result<Registration, SandboxError> {
    if !catalog::valid_template_name(name) {
        return Err(catalog::CatalogError::InvalidName(name.to_owned()).into());
    }
    let Some(existing) = st.db.find_template(name.to_owned()).await? else {
        return Ok(Registration::New);
    };
    if existing.name != name {
        return Ok(Registration::New);
    }
    if existing.team_id != team {
        return Err(catalog::CatalogError::Taken(name.to_owned()).into());
    }
    let is_snapshot = catalog::metadata(&existing)
        .is_ok_and(|m| matches!(m.source, TemplateSource::Snapshot { .. }));
    if is_snapshot {
        Ok(Registration::Replace)
    } else {
        Err(catalog::CatalogError::Exists(name.to_owned()).into())
    }
}

/// The snapshots of team `team` (hidden ones aside), oldest first; of one
/// sandbox, or of one name, when asked.
pub(crate) async fn list_snapshots(
    st: &AppState,
    team: &str,
    sandbox: Option<&str>,
    name: Option<&str>,
) -> Result<Vec<TemplateMetadata>, SandboxError> {
    // Rows, for their creation times in ms (the metadata's are in seconds).
    let mut rows = st.db.list_templates().await?;
    rows.retain(|t| !t.name.contains('@') && t.team_id == team);
    rows.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let mut snapshots = Vec::new();
    for row in &rows {
        let meta = catalog::metadata(row)?;
        if let TemplateSource::Snapshot { sandbox_id, .. } = &meta.source
            && sandbox.is_none_or(|s| s.is_empty() || s == sandbox_id)
            && name.is_none_or(|n| n.is_empty() || n == meta.name || n == meta.id)
        {
            snapshots.push(meta);
        }
    }
    Ok(snapshots)
}
