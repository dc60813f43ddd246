//! E2B's volume routes: `GET|POST /volumes`, `GET|DELETE /volumes/{id}`.

use serde::{Deserialize, Serialize};

/// `POST /volumes` body (E2B's `NewVolume`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewVolume {
    /// Its name: 1 to 250 characters from `A-Za-z0-9_-`, unique.
    pub name: String,
}

/// A volume as `GET /volumes` lists it (E2B's `Volume`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VolumeInfo {
    /// Its id (a UUID).
    #[serde(rename = "volumeID")]
    pub volume_id: String,
    /// Its name.
    pub name: String,
}

/// A volume with a token for its content (E2B's `VolumeAndToken`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VolumeAndToken {
    /// Its id (a UUID).
    #[serde(rename = "volumeID")]
    pub volume_id: String,
    /// Its name.
    pub name: String,
    /// A token for the volume content API, valid for an hour.
    pub token: String,
}
