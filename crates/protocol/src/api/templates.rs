//! Hutch's template routes (`/hutch/v1/templates`): import, pull, list.
//!
//! A template is shown as its metadata, the document the server stores for
//! it ([`Template`]).

use serde::{Deserialize, Serialize};

/// A template: the answer to an import or a pull, an element of
/// `GET /hutch/v1/templates`, and the `template` of a finished build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Template {
    /// Version of the metadata's schema (1).
    pub schema_version: u32,
    /// Template id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Where it came from.
    pub source: TemplateSource,
    /// What the image config said, recorded as is.
    pub image: ImageConfig,
    /// Its environment (image and template layers resolved), in order.
    pub env: Vec<(String, String)>,
    /// Default user.
    pub user: Option<String>,
    /// Default working directory.
    pub workdir: Option<String>,
    /// Diff ids of its layers, base first.
    pub layers: Vec<String>,
    /// Whether processes may gain privileges through setuid binaries such
    /// as `sudo`.
    #[serde(default)]
    pub allow_privilege_escalation: bool,
    /// Command started in the background in every sandbox of the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    /// Command run until it exits 0 before a sandbox counts as ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
    /// Limits its sandboxes get unless a create asks for others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<TemplateLimits>,
}

/// Where a template came from: `{"kind": "image" | "build" | "recipe" |
/// "snapshot", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum TemplateSource {
    /// Imported or pulled from an image.
    #[serde(rename_all = "camelCase")]
    Image {
        /// The path or reference the image came from.
        path_or_ref: String,
        /// Digest of its manifest.
        manifest_digest: String,
        /// Digest of its config.
        config_digest: String,
    },
    /// Built from a Dockerfile or through the template API.
    #[serde(rename_all = "camelCase")]
    Build {
        /// `dockerfile` or `template-api`.
        frontend: String,
        /// What the build started from (template name or image reference).
        from: String,
        /// Number of steps.
        steps: usize,
    },
    /// Built by Hutch from a recipe (the default `base` template).
    #[serde(rename_all = "camelCase")]
    Recipe {
        /// Which recipe, e.g. `debian-base`.
        recipe: String,
        /// What it was built from.
        description: String,
    },
    /// A sandbox's file system, captured (a snapshot, or the start of a
    /// fork).
    #[serde(rename_all = "camelCase")]
    Snapshot {
        /// The sandbox.
        sandbox_id: String,
        /// Its template's name.
        template: String,
    },
}

/// The runtime defaults an image config declares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    /// `K=V` strings, in order.
    pub env: Vec<String>,
    /// The working directory, if set.
    pub working_dir: Option<String>,
    /// The user, if set.
    pub user: Option<String>,
    /// The entrypoint, if set.
    pub entrypoint: Option<Vec<String>>,
    /// The default command, if set.
    pub cmd: Option<Vec<String>>,
}

/// A template's default resource limits, with the names of E2B's create
/// body. A field left `None` falls back to the server's default and is not
/// sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateLimits {
    /// CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<u32>,
    /// Memory, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "memoryMB")]
    pub memory_mb: Option<u64>,
    /// Disk (the writable layer), MiB.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "diskSizeMB"
    )]
    pub disk_size_mb: Option<u64>,
    /// Processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

impl TemplateLimits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == TemplateLimits::default()
    }
}

/// `POST /hutch/v1/templates/pull` body.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplatePullRequest {
    /// The template's name.
    pub name: String,
    /// The image: `[REGISTRY/]NAME[:TAG|@DIGEST]`.
    pub reference: String,
    /// Registry username (with `password`); without, the server host's
    /// Docker credentials for the registry, if any, else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Registry password or access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Let processes gain privileges through setuid binaries (`sudo`).
    #[serde(default)]
    pub allow_privilege_escalation: bool,
}

impl std::fmt::Debug for TemplatePullRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplatePullRequest")
            .field("name", &self.name)
            .field("reference", &self.reference)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "allow_privilege_escalation",
                &self.allow_privilege_escalation,
            )
            .finish()
    }
}

/// One line of the NDJSON stream of a pull (`Accept: application/x-ndjson`):
/// `{"event": "resolved" | "layer" | "done" | "error", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum PullEvent {
    /// The reference was resolved to an image manifest.
    #[serde(rename_all = "camelCase")]
    Resolved {
        /// The reference, as given.
        reference: String,
        /// Digest of the image manifest (the platform's, for a manifest
        /// list).
        manifest_digest: String,
        /// Number of layers, base first.
        layers: usize,
    },
    /// Where one layer stands; its first event has `done` 0 (or, when it
    /// is reused, `done` = `total` and `complete`), its last `complete`.
    #[serde(rename_all = "camelCase")]
    Layer {
        /// Layer index, base first.
        index: usize,
        /// Blob digest (compressed), `sha256:<hex>`.
        digest: String,
        /// Blob size in bytes.
        total: u64,
        /// Bytes downloaded so far.
        done: u64,
        /// The layer was already stored and is not downloaded.
        reused: bool,
        /// The layer is verified and stored.
        complete: bool,
    },
    /// The last line of a pull that worked: the new template.
    #[serde(rename_all = "camelCase")]
    Done {
        /// The template.
        template: Box<Template>,
    },
    /// The last line of a pull that failed.
    #[serde(rename_all = "camelCase")]
    Error {
        /// The HTTP status the failure would have had.
        code: u16,
        /// What went wrong.
        message: String,
    },
    /// An event this version does not know (read only).
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_round_trip() {
        let wire = json!({
            "schemaVersion": 1,
            "id": "tpl1",
            "name": "app",
            "createdAt": "2025-01-02T03:04:05Z",
            "source": {"kind": "build", "frontend": "dockerfile", "from": "base", "steps": 3},
            "image": {"env": ["PATH=/bin"], "workingDir": null, "user": null,
                      "entrypoint": null, "cmd": ["sh"]},
            "env": [["PATH", "/bin"]],
            "user": "root",
            "workdir": null,
            "layers": ["sha256:aa"],
            "allowPrivilegeEscalation": false,
            "limits": {"memoryMB": 256},
        });
        let t: Template = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(t.limits.unwrap().memory_mb, Some(256));
        assert_eq!(serde_json::to_value(&t).unwrap(), wire);
    }

    #[test]
    fn pull_events() {
        let line = r#"{"event":"layer","index":0,"digest":"sha256:aa","total":10,"done":4,"reused":false,"complete":false}"#;
        let e: PullEvent = serde_json::from_str(line).unwrap();
        assert!(matches!(e, PullEvent::Layer { done: 4, .. }));
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::from_str::<serde_json::Value>(line).unwrap()
        );
        let e = PullEvent::Resolved {
            reference: "r/x:1".into(),
            manifest_digest: "sha256:bb".into(),
            layers: 2,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"event": "resolved", "reference": "r/x:1", "manifestDigest": "sha256:bb", "layers": 2})
        );
        let e: PullEvent =
            serde_json::from_str(r#"{"event":"error","code":404,"message":"no such image"}"#)
                .unwrap();
        assert_eq!(
            e,
            PullEvent::Error {
                code: 404,
                message: "no such image".into()
            }
        );
        let e: PullEvent = serde_json::from_str(r#"{"event":"retrying","after":3}"#).unwrap();
        assert_eq!(e, PullEvent::Unknown);
    }

    #[test]
    fn pull_requests_leave_out_absent_credentials() {
        let req = TemplatePullRequest {
            name: "app".into(),
            reference: "r/x:1".into(),
            username: None,
            password: None,
            allow_privilege_escalation: false,
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"name": "app", "reference": "r/x:1", "allowPrivilegeEscalation": false})
        );
        let with = TemplatePullRequest {
            username: Some("u".into()),
            password: Some("secret".into()),
            ..req
        };
        assert!(!format!("{with:?}").contains("secret"));
    }
}
