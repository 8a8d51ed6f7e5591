//! API tokens (`Authorization: Bearer keel_<id>_<secret>`): `GET/POST
//! /appliance/api/v1/tokens`, `DELETE /appliance/api/v1/tokens/{id}`.
//! Times are RFC 3339, UTC.

use serde::{Deserialize, Serialize};

use crate::Role;

/// Body of `POST /appliance/api/v1/tokens`. The expiry is required: exactly one of
/// `expires_in_days` (1–365) and `expires` (a date `YYYY-MM-DD` within a year; the
/// token ends at that day's start, UTC).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenCreateRequest {
    /// What the token is for ("ansible", "monitoring"), 1–64 characters.
    pub name: String,
    /// At most the creating account's role; that role when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// One token as listed: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    /// 16 hex digits; the part of the token after `keel_`.
    pub id: String,
    pub name: String,
    /// The account it speaks for.
    pub owner: String,
    pub role: Role,
    pub created: String,
    pub expires: String,
    /// Recorded to the minute.
    pub last_used: Option<String>,
    pub expired: bool,
}

/// Answer of `POST /appliance/api/v1/tokens`: the token itself, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenCreated {
    pub token: String,
    pub info: TokenInfo,
}

/// Answer of `GET /appliance/api/v1/tokens`: the caller's tokens (an
/// administrator's list holds every account's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}
