//! Volumes (E2B's `/volumes`): named file systems that outlive sandboxes,
//! mounted into any number of them at create (`volumeMounts`).
//!
//! A volume is created on the node at once ([`crate::node::Node::create_volume`]:
//! a file system of its own, its size a quota) and recorded; a create that
//! names volumes records them with the sandbox (by id, so that a resume
//! finds them whatever happens to their names) and boots it with them. A
//! deleted volume's name is free at once, it can no longer be mounted, and
//! its data is removed as soon as no starting, running or paused sandbox
//! uses it ([`collect_garbage`], after a delete, a kill and a start).

use std::collections::HashSet;
use std::sync::Arc;

use hutch_runtime::VolumeMount;

use crate::db::{DbError, MountRecord, SandboxRow, SandboxState, VolumeRow};
use crate::node::NodeError;
use crate::state::AppState;
use crate::{ids, time};

/// How long a volume's token is valid, seconds (E2B's default).
pub(crate) const TOKEN_TTL_SECS: i64 = 3600;

/// A token for volume `id`'s content, valid for [`TOKEN_TTL_SECS`]:
/// `<volume id>.<expiry, unix s>.<HMAC-SHA256 of both>` (URL-safe base64),
/// signed with the data directory's volume key (made on first use, so
/// tokens outlive server restarts). The volume content API takes it as
/// `Authorization: Bearer` ([`token_valid`]).
pub(crate) fn token(st: &AppState, id: &str) -> Result<String, VolumeError> {
    use base64::Engine as _;
    let key = signing_key(st)?;
    let exp = time::now_ms() / 1000 + TOKEN_TTL_SECS;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    sign(
        &key,
        &format!("{}.{}", b64.encode(id), b64.encode(exp.to_string())),
    )
}

/// Whether `token` is a valid, unexpired token of volume `id` (its
/// signature compared in constant time).
pub(crate) fn token_valid(st: &AppState, token: &str, id: &str) -> bool {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let Some((claims, _)) = token.rsplit_once('.') else {
        return false;
    };
    let Some((vol, exp)) = claims.split_once('.') else {
        return false;
    };
    let decode = |s: &str| b64.decode(s).ok().and_then(|b| String::from_utf8(b).ok());
    let (Some(vol), Some(exp)) = (decode(vol), decode(exp).and_then(|e| e.parse::<i64>().ok()))
    else {
        return false;
    };
    if vol != id || exp < time::now_ms() / 1000 {
        return false;
    }
    // Signed again with the key: the same token if it was ours.
    let Ok(key) = signing_key(st) else {
        return false;
    };
    sign(&key, claims).is_ok_and(|expected| hutch_protocol::same_secret(&expected, token))
}

fn sign(key: &[u8], claims: &str) -> Result<String, VolumeError> {
    use base64::Engine as _;
    use hmac::Mac as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
        .map_err(|e| VolumeError::Key(e.to_string()))?;
    mac.update(claims.as_bytes());
    Ok(format!(
        "{claims}.{}",
        b64.encode(mac.finalize().into_bytes())
    ))
}

/// [`token_key`], read once per server.
fn signing_key(st: &AppState) -> Result<Vec<u8>, VolumeError> {
    if let Some(key) = st.volume_token_key.get() {
        return Ok(key.clone());
    }
    let key = token_key(&st.data_dir)?;
    // Two first calls at once read the same file.
    let _ = st.volume_token_key.set(key.clone());
    Ok(key)
}

/// The 32-byte key volume tokens are signed with (`DATA/volume-token.key`,
/// mode 0600, made on first use).
fn token_key(data_dir: &std::path::Path) -> Result<Vec<u8>, VolumeError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data_dir.join("volume-token.key");
    match std::fs::read(&path) {
        Ok(key) if key.len() == 32 => return Ok(key),
        Ok(_) => {
            return Err(VolumeError::Key(format!(
                "{} is not 32 bytes",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(VolumeError::Key(format!("read {}: {e}", path.display()))),
    }
    let key: [u8; 32] = rand::random();
    let tmp = data_dir.join(format!(".volume-token.key.{}", ids::new_id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()))
        .and_then(|()| {
            std::fs::hard_link(&tmp, &path).or_else(|e| {
                // Made by a concurrent call: use that one.
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
        });
    let _ = std::fs::remove_file(&tmp);
    written.map_err(|e| VolumeError::Key(format!("write {}: {e}", path.display())))?;
    std::fs::read(&path).map_err(|e| VolumeError::Key(format!("read {}: {e}", path.display())))
}

/// Volume `id`'s files, for a content API request carrying `token`: the
/// token must be valid for it, and the volume not deleted.
pub(crate) async fn content(
    st: &AppState,
    id: &str,
    token: Option<&str>,
) -> Result<hutch_runtime::VolumeFs, ContentError> {
    let Some(token) = token else {
        return Err(ContentError::Unauthenticated(
            "the volume token is missing (Authorization: Bearer)".to_owned(),
        ));
    };
    if !token_valid(st, token, id) {
        return Err(ContentError::Unauthenticated(
            "the volume token is not valid for this volume, or has expired".to_owned(),
        ));
    }
    // The token names the volume, whichever team's it is.
    match every_live(st).await {
        Ok(volumes) if volumes.iter().any(|v| v.id == id) => {}
        Ok(_) => {
            return Err(ContentError::Fs(hutch_runtime::VolumeFsError::NotFound(
                format!("volume {id}"),
            )));
        }
        Err(e) => return Err(ContentError::Failed(e.to_string())),
    }
    st.node
        .volume_fs(id)
        .map_err(|e| ContentError::Failed(e.to_string()))
}

/// Why a content API request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ContentError {
    /// No token, or one not valid for the volume.
    #[error("{0}")]
    Unauthenticated(String),
    /// What the file operation said.
    #[error(transparent)]
    Fs(#[from] hutch_runtime::VolumeFsError),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A failure of the server.
    #[error("{0}")]
    Failed(String),
}

/// Volumes a sandbox mounts, at most.
pub(crate) const MAX_MOUNTS: usize = 16;

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VolumeError {
    /// The name is not a valid volume name.
    #[error("Invalid volume name '{0}': use 1 to 250 characters from A-Z, a-z, 0-9, '_' and '-'")]
    InvalidName(String),
    /// A volume has that name.
    #[error("Volume with name '{0}' already exists")]
    Exists(String),
    /// No volume has that id.
    #[error("Volume '{0}' not found")]
    NotFound(String),
    /// The mounts a create asks for are not valid (each reason on its own
    /// line, E2B's wording).
    #[error("invalid mounts:{}", .0.iter().map(|r| format!("\n\t- {r}")).collect::<String>())]
    InvalidMounts(Vec<String>),
    /// The node failed.
    #[error("{0}")]
    Node(#[from] NodeError),
    /// The volume token key cannot be read or made.
    #[error("volume token key: {0}")]
    Key(String),
    /// The store failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Whether `name` is a valid volume name: 1 to 250 characters from
/// `A-Za-z0-9_-` (E2B's rule).
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 250
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Creates team `team`'s volume `name` of the server's volume size.
pub(crate) async fn create(
    st: &AppState,
    team: &str,
    name: &str,
) -> Result<VolumeRow, VolumeError> {
    if !valid_name(name) {
        return Err(VolumeError::InvalidName(name.to_owned()));
    }
    if live(st, team).await?.iter().any(|v| v.name == name) {
        return Err(VolumeError::Exists(name.to_owned()));
    }
    let row = VolumeRow {
        id: ids::new_build_id(),
        team_id: team.to_owned(),
        name: name.to_owned(),
        size_mb: st.volume_size_mb,
        created_at: time::now_ms(),
        deleted_at: None,
    };
    st.node.create_volume(&row.id, row.size_mb).await?;
    if !st.db.insert_volume(row.clone()).await? {
        // Created under the same name meanwhile.
        if let Err(e) = st.node.destroy_volume(&row.id).await {
            tracing::warn!(volume = %row.id, "cannot remove a volume not recorded: {e}");
        }
        return Err(VolumeError::Exists(name.to_owned()));
    }
    tracing::info!(volume = %row.id, name = %row.name, size_mb = row.size_mb, "volume created");
    Ok(row)
}

/// Team `team`'s volumes not deleted, oldest first.
pub(crate) async fn live(st: &AppState, team: &str) -> Result<Vec<VolumeRow>, VolumeError> {
    let mut volumes = every_live(st).await?;
    volumes.retain(|v| v.team_id == team);
    Ok(volumes)
}

/// Every team's volumes not deleted, oldest first.
async fn every_live(st: &AppState) -> Result<Vec<VolumeRow>, VolumeError> {
    Ok(st
        .db
        .list_volumes()
        .await?
        .into_iter()
        .filter(|v| v.deleted_at.is_none())
        .collect())
}

/// Team `team`'s volume with this id (not deleted).
pub(crate) async fn get(st: &AppState, team: &str, id: &str) -> Result<VolumeRow, VolumeError> {
    live(st, team)
        .await?
        .into_iter()
        .find(|v| v.id == id)
        .ok_or_else(|| VolumeError::NotFound(id.to_owned()))
}

/// Deletes team `team`'s volume `id`: its name is free and it cannot be
/// mounted from now on; its data goes once no sandbox uses it.
pub(crate) async fn delete(st: &Arc<AppState>, team: &str, id: &str) -> Result<(), VolumeError> {
    {
        let _mounts = st.volumes_lock.write().await;
        get(st, team, id).await?;
        if !st
            .db
            .mark_volume_deleted(id.to_owned(), time::now_ms())
            .await?
        {
            return Err(VolumeError::NotFound(id.to_owned()));
        }
    }
    tracing::info!(volume = %id, "volume deleted");
    collect_garbage(st).await;
    Ok(())
}

/// The mounts a create for team `team` asks for (`(name or id, path)`,
/// the volume named first; the team's volumes only), checked as E2B checks
/// them: each reason found, numbered by mount. The caller holds
/// [`AppState::volumes_lock`] (read) until the sandbox's row exists.
pub(crate) async fn resolve_mounts(
    st: &AppState,
    team: &str,
    wanted: &[(String, String)],
) -> Result<Vec<MountRecord>, VolumeError> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let volumes = live(st, team).await?;
    let mut reasons = Vec::new();
    if wanted.len() > MAX_MOUNTS {
        reasons.push(format!(
            "{} volume mounts asked for: at most {MAX_MOUNTS}",
            wanted.len()
        ));
    }
    let mut used = HashSet::new();
    let mut records = Vec::new();
    for (i, (volume, path)) in wanted.iter().enumerate() {
        let mut problem = |r: String| reasons.push(format!("volume mount #{i}: {r}"));
        let found = volumes
            .iter()
            .find(|v| &v.name == volume || &v.id == volume);
        if found.is_none() {
            problem(format!("volume '{volume}' not found"));
        }
        if let Err(r) = check_path(path) {
            problem(r);
        } else if !used.insert(path.clone()) {
            problem(format!("path '{path}' is already used"));
        }
        if let Some(v) = found {
            records.push(MountRecord {
                volume_id: v.id.clone(),
                name: v.name.clone(),
                path: path.clone(),
            });
        }
    }
    if reasons.is_empty() {
        Ok(records)
    } else {
        Err(VolumeError::InvalidMounts(reasons))
    }
}

/// Paths of the sandbox Hutch itself uses, and those of the kernel: no
/// volume may cover them.
const RESERVED: [&str; 4] = ["/proc", "/sys", "/dev", "/run/hutch"];

/// Whether `path` may be a mount path: absolute, clean (no `.` or `..`
/// component, no empty one, no trailing `/`), not `/`, not in a reserved
/// tree.
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("path cannot be empty".to_owned());
    }
    if !path.starts_with('/') {
        return Err("path must be absolute".to_owned());
    }
    if path == "/" {
        return Err("path '/' would hide the sandbox's root".to_owned());
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err("path must not contain any '.' or '..' components".to_owned());
    }
    if let Some(r) = RESERVED
        .iter()
        .find(|r| path == **r || path.starts_with(&format!("{r}/")))
    {
        return Err(format!("path '{path}' is reserved ({r})"));
    }
    Ok(())
}

/// What the node binds for `records`.
pub(crate) fn mounts(records: &[MountRecord]) -> Vec<VolumeMount> {
    records
        .iter()
        .map(|m| VolumeMount {
            volume_id: m.volume_id.clone(),
            destination: m.path.clone(),
        })
        .collect()
}

/// Removes the data of deleted volumes no starting, running or paused
/// sandbox uses, and their rows.
pub(crate) async fn collect_garbage(st: &AppState) {
    let _mounts = st.volumes_lock.write().await;
    let (volumes, sandboxes) = match (
        st.db.list_volumes().await,
        st.db
            .sandboxes_in(&[
                SandboxState::Starting,
                SandboxState::Running,
                SandboxState::Paused,
            ])
            .await,
    ) {
        (Ok(v), Ok(s)) => (v, s),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("cannot collect deleted volumes: {e}");
            return;
        }
    };
    let in_use: HashSet<&str> = sandboxes
        .iter()
        .flat_map(|s: &SandboxRow| s.volume_mounts.iter().map(|m| m.volume_id.as_str()))
        .collect();
    for v in volumes
        .iter()
        .filter(|v| v.deleted_at.is_some() && !in_use.contains(v.id.as_str()))
    {
        match st.node.destroy_volume(&v.id).await {
            Ok(()) => {
                if let Err(e) = st.db.purge_volume(v.id.clone()).await {
                    tracing::warn!(volume = %v.id, "cannot forget a removed volume: {e}");
                } else {
                    tracing::info!(volume = %v.id, name = %v.name, "deleted volume's data removed");
                }
            }
            Err(e) => tracing::warn!(volume = %v.id, "cannot remove a deleted volume: {e}"),
        }
    }
}

/// At start: every recorded volume mounted again where needed (after a
/// host reboot), volumes the node has that no row knows (a crash between
/// creating and recording one) removed, then the deleted ones collected.
pub(crate) async fn reconcile(st: &AppState) {
    let recorded = match st.db.list_volumes().await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("cannot read the volumes: {e}");
            return;
        }
    };
    for v in &recorded {
        if let Err(e) = st.node.mount_volume(&v.id).await {
            tracing::warn!(volume = %v.id, name = %v.name, "cannot mount volume: {e}");
        }
    }
    match st.node.list_volumes().await {
        Ok(on_node) => {
            for id in on_node {
                if !recorded.iter().any(|v| v.id == id) {
                    tracing::info!(volume = %id, "removing a volume no row records");
                    if let Err(e) = st.node.destroy_volume(&id).await {
                        tracing::warn!(volume = %id, "cannot remove it: {e}");
                    }
                }
            }
        }
        Err(e) => tracing::warn!("cannot list the node's volumes: {e}"),
    }
    collect_garbage(st).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["data", "my_vol-2", "A", &"v".repeat(250)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a.b", "a/b", "é", &"v".repeat(251)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn mount_paths() {
        for ok in [
            "/data",
            "/mnt/shared",
            "/home/user/work",
            "/devices",
            "/run/x",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "cannot be empty"),
            ("data", "must be absolute"),
            ("/", "root"),
            ("/a/../b", "'.' or '..'"),
            ("/a/./b", "'.' or '..'"),
            ("/a//b", "'.' or '..'"),
            ("/a/", "'.' or '..'"),
            ("/proc", "reserved"),
            ("/proc/x", "reserved"),
            ("/run/hutch/x", "reserved"),
            ("/dev", "reserved"),
        ] {
            let e = check_path(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
