//! The REST API's JSON: every request body and answer that the server
//! parses or sends and the `hutch` CLI builds or reads.
//!
//! The sandbox routes and the template build API follow E2B's control-plane
//! API field for field (`sandboxID`, `templateID`, `memoryMB`, …): the
//! official SDKs read and write these shapes unmodified, so a field's name,
//! whether it may be absent and whether `null` is sent for it are part of
//! the contract. Hutch's own routes (`/hutch/v1/...`) use camelCase.
//!
//! | module | routes |
//! |---|---|
//! | [`sandboxes`] | `/sandboxes`, `/v2/sandboxes` |
//! | [`keys`] | `/hutch/v1/api-keys`, `/hutch/v1/teams`, `/teams`, `/api-keys`, `/access-tokens` |
//! | [`pool`] | `/hutch/v1/pool` |
//! | [`nodes`] | `/hutch/v1/nodes` |
//! | [`snapshots`] | `/sandboxes/{id}/snapshots`, `/snapshots`, `/sandboxes/{id}/fork` |
//! | [`templates`] | `/hutch/v1/templates` (import, pull, list) |
//! | [`builds`] | `/hutch/v1/builds` (Dockerfile builds) |
//! | [`template_builds`] | E2B's template build API (`/v3/templates`, …) |
//!
//! Types only deserialized by one side still derive both directions, so
//! that either side can build and read them.

pub mod builds;
pub mod keys;
pub mod nodes;
pub mod pool;
pub mod sandboxes;
pub mod snapshots;
pub mod template_builds;
pub mod template_catalog;
pub mod templates;
pub mod volumes;

pub use builds::{
    BuildEnd, BuildLogKind, BuildLogLine, BuildSpec, BuildStreamLine, LogLevel, LogStream,
};
pub use keys::{
    CreatedAccessToken, CreatedApiKey, CreatedTeamApiKey, KeyMask, ListedApiKey, NamedKey,
    NewApiKey, NewTeam, Team, TeamApiKey, TeamInfo,
};
pub use nodes::ClusterNode;
pub use pool::{PoolStatus, TemplatePool};
pub use sandboxes::{
    AutoResume, ConnectSandbox, LifecycleInfo, ListedSandbox, NewSandbox, PauseSandbox,
    SandboxCreated, SandboxLogEntry, SandboxLogLine, SandboxLogs, SandboxLogsV2, SandboxNetwork,
    SandboxNetworkUpdate, SandboxVolumeMount,
};
pub use snapshots::{ForkError, ForkRequest, ForkResult, SnapshotInfo, SnapshotRequest};
pub use template_builds::{
    BuildFilesUploaded, BuildLogEntry, BuildStatusReason, TemplateAliasInfo, TemplateBuildRequest,
    TemplateBuildRequested, TemplateBuildStart, TemplateBuildStatus, TemplateFileLink,
    TemplateStep,
};
pub use template_catalog::{
    AssignTags, AssignedTags, BuildLogs, RemoveTags, TemplateBuildSummary, TemplateDetails,
    TemplateSummary, TemplateTagInfo, TemplateUpdate, TemplateUpdated,
};
pub use templates::{
    ImageConfig, PullEvent, Template, TemplateLimits, TemplatePullRequest, TemplateSource,
};
pub use volumes::{NewVolume, VolumeAndToken, VolumeInfo};
