//! E2B's snapshot and fork routes: `POST /sandboxes/{id}/snapshots`,
//! `GET /snapshots`, `POST /sandboxes/{id}/fork` (a snapshot is removed
//! with `DELETE /templates/{id}`).

use serde::{Deserialize, Serialize};

use super::SandboxCreated;

/// `POST /sandboxes/{id}/snapshots` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRequest {
    /// The snapshot's name: a template name, replaced when it exists;
    /// unnamed snapshots are known by their id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether to keep the sandbox's memory as well (E2B's `full` mode).
    /// Hutch keeps the file system only; see `docs/e2b-compatibility.md`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<bool>,
}

/// A snapshot: the answer to a snapshot request, an element of
/// `GET /snapshots`. `Sandbox.create(snapshotID)` starts from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotInfo {
    /// What a create names to start from it.
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    /// Its names (empty when unnamed).
    pub names: Vec<String>,
}

/// `POST /sandboxes/{id}/fork` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ForkRequest {
    /// Lifetime of the new sandboxes, seconds (the source's default when
    /// absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// How many (1–20; 1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// One fork: the new sandbox, or why it could not start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ForkResult {
    /// The new sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxCreated>,
    /// Why it did not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ForkError>,
}

/// E2B's error shape, inside a [`ForkResult`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ForkError {
    /// The HTTP status the failure would have had.
    pub code: u16,
    /// What went wrong.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes() {
        let r: SnapshotRequest = serde_json::from_str(r#"{"name":"s1","memory":false}"#).unwrap();
        assert_eq!((r.name.as_deref(), r.memory), (Some("s1"), Some(false)));
        let r: SnapshotRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(r, SnapshotRequest::default());
        let info = SnapshotInfo {
            snapshot_id: "abc".into(),
            names: vec!["s1".into()],
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"snapshotID":"abc","names":["s1"]}"#
        );
        let f: ForkRequest = serde_json::from_str(r#"{"timeout":60,"count":2}"#).unwrap();
        assert_eq!((f.timeout, f.count), (Some(60), Some(2)));
        let failed = ForkResult {
            sandbox: None,
            error: Some(ForkError {
                code: 500,
                message: "no".into(),
            }),
        };
        assert_eq!(
            serde_json::to_string(&failed).unwrap(),
            r#"{"error":{"code":500,"message":"no"}}"#
        );
    }
}
