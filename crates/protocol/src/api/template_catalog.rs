//! E2B's template management routes: `GET /templates`, `GET /v2/templates`,
//! `GET|PATCH /templates/{id}` (and `PATCH /v2/templates/{id}`), the build
//! logs, and tags (`POST|DELETE /templates/tags`,
//! `GET /templates/{id}/tags`).

use serde::{Deserialize, Serialize};

/// A template as `GET /templates` lists it (E2B's `Template`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateSummary {
    /// Its id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Its default build (the build `name` and `name:default` start).
    #[serde(rename = "buildID")]
    pub build_id: String,
    /// Default CPU count of its sandboxes.
    pub cpu_count: u64,
    /// Default memory of its sandboxes, MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    /// Default disk size of its sandboxes, MiB.
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    /// The recorded `public` flag.
    pub public: bool,
    /// Its name, for SDKs before `names`.
    pub aliases: Vec<String>,
    /// Its name.
    pub names: Vec<String>,
    /// When the template was first built (RFC 3339).
    pub created_at: String,
    /// When its default build was made (RFC 3339).
    pub updated_at: String,
    /// Who made it: always `null` (Hutch has no user accounts).
    pub created_by: Option<serde_json::Value>,
    /// When a sandbox last started from it (RFC 3339), if ever.
    pub last_spawned_at: Option<String>,
    /// How many sandboxes started from it.
    pub spawn_count: u64,
    /// How many of its builds are kept.
    pub build_count: u64,
    /// The agent version its sandboxes run.
    pub envd_version: String,
    /// `ready`: only finished builds are templates.
    pub build_status: String,
}

/// `GET /templates/{id}` (E2B's `TemplateWithBuilds`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateDetails {
    /// What the listing says of it.
    #[serde(flatten)]
    pub summary: TemplateSummary,
    /// Its kept builds, newest first.
    pub builds: Vec<TemplateBuildSummary>,
}

/// One build of a template (E2B's `TemplateBuild`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuildSummary {
    /// Its id (a UUID).
    #[serde(rename = "buildID")]
    pub build_id: String,
    /// `ready`.
    pub status: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// RFC 3339.
    pub finished_at: String,
    /// Default CPU count.
    pub cpu_count: u64,
    /// Default memory, MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    /// Default disk size, MiB.
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    /// The agent version.
    pub envd_version: String,
}

/// `PATCH /templates/{id}` body (E2B's `TemplateUpdateRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateUpdate {
    /// The new `public` flag; unchanged when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
}

/// `200` answer to `PATCH /v2/templates/{id}` (E2B's
/// `TemplateUpdateResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TemplateUpdated {
    /// The template's names.
    pub names: Vec<String>,
}

/// `POST /templates/tags` body (E2B's `AssignTemplateTagsRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AssignTags {
    /// The build to tag: `name`, `name:tag` or `name:<buildID>`.
    pub target: String,
    /// The tags to point at it.
    pub tags: Vec<String>,
}

/// `201` answer to `POST /templates/tags` (E2B's `AssignedTemplateTags`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AssignedTags {
    /// The build the tags now name.
    #[serde(rename = "buildID")]
    pub build_id: String,
    /// The tags assigned.
    pub tags: Vec<String>,
}

/// `DELETE /templates/tags` body (E2B's `DeleteTemplateTagsRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RemoveTags {
    /// The template's name (or id).
    pub name: String,
    /// The tags to remove.
    pub tags: Vec<String>,
}

/// An element of `GET /templates/{id}/tags` (E2B's `TemplateTag`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateTagInfo {
    /// The tag.
    pub tag: String,
    /// The build it names.
    #[serde(rename = "buildID")]
    pub build_id: String,
    /// When it was pointed there (RFC 3339).
    pub created_at: String,
}

/// `GET /templates/{id}/builds/{buildID}/logs` answer (E2B's
/// `TemplateBuildLogsResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildLogs {
    /// The entries asked for.
    pub logs: Vec<super::BuildLogEntry>,
}
