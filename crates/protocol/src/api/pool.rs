//! `GET /hutch/v1/pool`: the warm pool's state, per template.

use serde::{Deserialize, Serialize};

/// The warm pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// Sandboxes kept ready per template (0: the pool is off).
    pub size: usize,
    /// Every template, by name.
    pub templates: Vec<TemplatePool>,
}

/// One template's pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplatePool {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Template name.
    pub alias: String,
    /// Sandboxes ready to be claimed.
    pub ready: usize,
    /// Whether one is being booted for the pool.
    pub booting: bool,
    /// Creates served from the pool since the server started.
    pub claimed: u64,
    /// Creates that booted their sandbox since the server started.
    pub cold: u64,
    /// Why the last boot for the pool failed, if it did.
    pub last_error: Option<String>,
}
