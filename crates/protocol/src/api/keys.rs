//! Keys and teams: Hutch's routes (`/hutch/v1/api-keys`,
//! `/hutch/v1/teams`) and E2B's (`/teams`, `/api-keys`, `/access-tokens`).

use serde::{Deserialize, Serialize};

/// `POST /hutch/v1/api-keys` body; `{}` or no body at all creates an API
/// key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewApiKey {
    /// [`NewApiKey::API_KEY`] (the default: `e2b_…`, for `X-API-Key`) or
    /// [`NewApiKey::ACCESS_TOKEN`] (`sk_e2b_…`, for `Authorization:
    /// Bearer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its name, for people (default: the kind's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl NewApiKey {
    /// The `kind` of a key sent as `X-API-Key`.
    pub const API_KEY: &'static str = "apiKey";
    /// The `kind` of an access token sent as `Authorization: Bearer`.
    pub const ACCESS_TOKEN: &'static str = "accessToken";
}

/// The answer to `POST /hutch/v1/api-keys`: the only time the key is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKey {
    /// The key's id (for revoking it).
    pub id: String,
    /// The key itself.
    pub key: String,
    /// Its first characters, as listed.
    pub prefix: String,
    /// RFC 3339.
    pub created_at: String,
}

/// A key as `GET /hutch/v1/api-keys` lists it: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ListedApiKey {
    /// The key's id.
    pub id: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// [`NewApiKey::API_KEY`] or [`NewApiKey::ACCESS_TOKEN`].
    #[serde(default)]
    pub kind: String,
    /// Its first characters.
    pub prefix: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; null while the key is valid.
    pub revoked_at: Option<String>,
}

/// `POST /hutch/v1/teams` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewTeam {
    /// Its name: unique, 1 to 63 characters from `a-z0-9._-`.
    pub name: String,
}

/// A team as `GET /hutch/v1/teams` lists it, and the answer to its
/// creation (with its first API key, shown only then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TeamInfo {
    /// Its id.
    #[serde(rename = "teamID")]
    pub team_id: String,
    /// Its name.
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    /// Whether it is the default team (which owns the built-in templates
    /// and manages teams).
    pub is_default: bool,
    /// On creation only: the team's first API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

/// A team as E2B's `GET /teams` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Team {
    /// Its id.
    #[serde(rename = "teamID")]
    pub team_id: String,
    /// Its name.
    pub name: String,
    /// A key of the team (the credential the request carried).
    pub api_key: String,
    /// Whether it is the caller's default team.
    pub is_default: bool,
}

/// How E2B shows a key without showing it (`IdentifierMaskingDetails`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct KeyMask {
    /// What every key of its kind starts with (`e2b_`, `sk_e2b_`).
    pub prefix: String,
    /// The length of the key after that prefix.
    pub value_length: usize,
    /// The first characters after the prefix.
    pub masked_value_prefix: String,
    /// The last characters.
    pub masked_value_suffix: String,
}

/// `POST /api-keys`, `PATCH /api-keys/{id}` and `POST /access-tokens`
/// body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NamedKey {
    /// The key's name.
    pub name: String,
}

/// A key as E2B's `GET /api-keys` lists it (`TeamAPIKey`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TeamApiKey {
    /// Its id (a UUID).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The key, masked.
    pub mask: KeyMask,
    /// RFC 3339.
    pub created_at: String,
    /// Who made it (Hutch has no users: null).
    pub created_by: Option<serde_json::Value>,
    /// When it was last used (not recorded: null).
    pub last_used: Option<String>,
}

/// The answer to E2B's `POST /api-keys` (`CreatedTeamAPIKey`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CreatedTeamApiKey {
    /// The key as listed.
    #[serde(flatten)]
    pub listed: TeamApiKey,
    /// The key itself, shown only now.
    pub key: String,
}

/// The answer to E2B's `POST /access-tokens` (`CreatedAccessToken`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CreatedAccessToken {
    /// Its id (a UUID).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The token itself, shown only now.
    pub token: String,
    /// The token, masked.
    pub mask: KeyMask,
    /// RFC 3339.
    pub created_at: String,
}
