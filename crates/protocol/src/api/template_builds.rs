//! E2B's template build API, as the official SDKs' `Template` builder
//! drives it: request a build (`POST /v3/templates`), upload the `COPY`
//! steps' files (`GET /templates/{id}/files/{hash}`, then a `PUT` to the
//! URL it gives), start it (`POST /v2/templates/{id}/builds/{build}`), poll
//! its status and logs (`GET /templates/{id}/builds/{build}/status`), and
//! look a name up (`GET /templates/aliases/{name}`).

use serde::{Deserialize, Serialize};

use super::builds::LogLevel;

/// `POST /v3/templates` body (E2B's `TemplateBuildRequestV3`). Other
/// fields (`minFreeDiskMB`, …) are accepted and ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuildRequest {
    /// The template's name, possibly `name:tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What SDKs before `name` sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Tags to give the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// CPUs of the template's sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<u64>,
    /// Memory of the template's sandboxes, MiB.
    #[serde(default, rename = "memoryMB", skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
}

/// `202` answer to `POST /v3/templates` (E2B's
/// `TemplateRequestResponseV3`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuildRequested {
    /// The template's id (that of the template of that name when there is
    /// one).
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// The build's id.
    #[serde(rename = "buildID")]
    pub build_id: String,
    /// Always false.
    pub public: bool,
    /// The template's names.
    pub names: Vec<String>,
    /// The build's tags.
    pub tags: Vec<String>,
    /// The template's names, for SDKs before `names`.
    pub aliases: Vec<String>,
}

/// `201` answer to `GET /templates/{templateID}/files/{hash}` (E2B's
/// `TemplateBuildFileUpload`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateFileLink {
    /// Whether the server has the file set already.
    pub present: bool,
    /// Where to `PUT` a tar of it (also given when it is present, for a
    /// forced upload).
    pub url: String,
}

/// Answer to `PUT /hutch/v1/build-files/{hash}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BuildFilesUploaded {
    /// Always true: the file set is stored.
    pub present: bool,
}

/// `POST /v2/templates/{templateID}/builds/{buildID}` body (E2B's
/// `TemplateBuildStartV2`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuildStart {
    /// The image to start from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_image: Option<String>,
    /// The template to start from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_template: Option<String>,
    /// Credentials for `from_image`'s registry, as E2B describes them (Hutch
    /// refuses them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_image_registry: Option<serde_json::Value>,
    /// Ignore the layer cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// The steps, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<TemplateStep>>,
    /// Start command of the template's sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    /// Ready command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
}

/// One build step (E2B's `TemplateStep`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateStep {
    /// `ENV`, `ARG`, `RUN`, `WORKDIR`, `USER` or `COPY`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// A `COPY` step's uploaded file set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_hash: Option<String>,
    /// Run it even when it is cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
}

/// Answer to `GET /templates/{templateID}/builds/{buildID}/status` (E2B's
/// `TemplateBuildInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuildStatus {
    /// The template's id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// The build's id.
    #[serde(rename = "buildID")]
    pub build_id: String,
    /// [`TemplateBuildStatus::WAITING`], [`TemplateBuildStatus::BUILDING`],
    /// [`TemplateBuildStatus::READY`] or [`TemplateBuildStatus::ERROR`].
    pub status: String,
    /// The page's log messages.
    pub logs: Vec<String>,
    /// The page's log entries.
    pub log_entries: Vec<BuildLogEntry>,
    /// Why it failed (status `error` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<BuildStatusReason>,
}

impl TemplateBuildStatus {
    /// Requested, not started.
    pub const WAITING: &'static str = "waiting";
    /// Running.
    pub const BUILDING: &'static str = "building";
    /// Done: the template is registered.
    pub const READY: &'static str = "ready";
    /// Failed.
    pub const ERROR: &'static str = "error";
}

/// A log entry of a template build (E2B's `BuildLogEntry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BuildLogEntry {
    /// RFC 3339 with milliseconds.
    pub timestamp: String,
    /// Its level.
    pub level: LogLevel,
    /// The text.
    pub message: String,
    /// The step it belongs to: `base`, the step's number (1-based), or
    /// `finalize`.
    pub step: String,
}

/// Why a template build failed (E2B's `BuildStatusReason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BuildStatusReason {
    /// What went wrong.
    pub message: String,
    /// The step that failed.
    pub step: String,
    /// The failing step's last output.
    pub log_entries: Vec<BuildLogEntry>,
}

/// Answer to `GET /templates/aliases/{name}` (E2B's
/// `TemplateAliasResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateAliasInfo {
    /// The template's id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Always false.
    pub public: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_uses_e2b_names() {
        let entry = BuildLogEntry {
            timestamp: "2023-11-14T22:13:20.123Z".into(),
            level: LogLevel::Info,
            message: "out".into(),
            step: "1".into(),
        };
        let status = TemplateBuildStatus {
            template_id: "t".into(),
            build_id: "b".into(),
            status: TemplateBuildStatus::BUILDING.into(),
            logs: vec!["out".into()],
            log_entries: vec![entry.clone()],
            reason: None,
        };
        let wire = json!({
            "templateID": "t", "buildID": "b", "status": "building", "logs": ["out"],
            "logEntries": [{"timestamp": "2023-11-14T22:13:20.123Z", "level": "info",
                            "message": "out", "step": "1"}],
        });
        assert_eq!(serde_json::to_value(&status).unwrap(), wire);
        let failed = TemplateBuildStatus {
            status: TemplateBuildStatus::ERROR.into(),
            reason: Some(BuildStatusReason {
                message: "boom".into(),
                step: "1".into(),
                log_entries: vec![entry],
            }),
            ..status
        };
        let v = serde_json::to_value(&failed).unwrap();
        assert_eq!(v["reason"]["logEntries"][0]["step"], "1");
        assert_eq!(
            serde_json::from_value::<TemplateBuildStatus>(v).unwrap(),
            failed
        );
    }

    #[test]
    fn start_bodies_parse() {
        let body: TemplateBuildStart = serde_json::from_value(json!({
            "fromImage": "python:3.12",
            "force": false,
            "steps": [{"type": "COPY", "args": ["a", "/b"], "filesHash": "ab", "force": true}],
            "startCmd": "serve",
        }))
        .unwrap();
        let step = &body.steps.as_ref().unwrap()[0];
        assert_eq!(step.kind, "COPY");
        assert_eq!(step.files_hash.as_deref(), Some("ab"));
        assert_eq!(body.start_cmd.as_deref(), Some("serve"));
        let req: TemplateBuildRequest =
            serde_json::from_value(json!({"name": "app", "memoryMB": 512, "minFreeDiskMB": 1}))
                .unwrap();
        assert_eq!(req.memory_mb, Some(512));
    }
}
