//! Hutch's API key routes (`/hutch/v1/api-keys`).

use serde::{Deserialize, Serialize};

/// `POST /hutch/v1/api-keys` body; `{}` or no body at all creates an API
/// key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewApiKey {
    /// [`NewApiKey::API_KEY`] (the default: `e2b_…`, for `X-API-Key`) or
    /// [`NewApiKey::ACCESS_TOKEN`] (`sk_e2b_…`, for `Authorization:
    /// Bearer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl NewApiKey {
    /// The `kind` of a key sent as `X-API-Key`.
    pub const API_KEY: &'static str = "apiKey";
    /// The `kind` of an access token sent as `Authorization: Bearer`.
    pub const ACCESS_TOKEN: &'static str = "accessToken";
}

/// The answer to `POST /hutch/v1/api-keys`: the only time the key is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[serde(rename_all = "camelCase")]
pub struct ListedApiKey {
    /// The key's id.
    pub id: String,
    /// Its first characters.
    pub prefix: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; null while the key is valid.
    pub revoked_at: Option<String>,
}
