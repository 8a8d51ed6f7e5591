//! The audit log's records and the query over them (`GET /appliance/api/v1/audit`).

use serde::{Deserialize, Serialize};

/// Which front end an action came through.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum AuditVia {
    /// A console page's form (session cookie).
    Console,
    /// The JSON API with a session cookie.
    Api,
    /// The JSON API with an API token (`Authorization: Bearer`).
    Token,
    /// `keelctl` on the box, over a service's local socket.
    Keelctl,
    /// The menu on the local console (tty1, serial).
    LocalMenu,
}

impl AuditVia {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditVia::Console => "console",
            AuditVia::Api => "api",
            AuditVia::Token => "token",
            AuditVia::Keelctl => "keelctl",
            AuditVia::LocalMenu => "local-menu",
        }
    }
}

/// One line of an audit file: who did what, when, from where, with which result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditRecord {
    /// UTC, RFC 3339 with milliseconds (`2026-12-01T18:42:14.123Z`): fixed width, so
    /// records order by this text.
    pub ts: String,
    /// The service that carried the action out (`console`, `netd`, `update`, ...).
    pub service: String,
    /// The account, `root` for the box's own front ends, `anonymous` before login.
    pub user: String,
    /// The client's address, or `local`.
    pub source: String,
    pub via: AuditVia,
    /// A short stable name (`net.config.apply`, `users.add`) or method and route.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `ok`, `refused: <reason>` or `failed: <status>`.
    pub result: String,
}

/// Query of `GET /appliance/api/v1/audit` (and the page's filter form). Times are
/// RFC 3339, or a date / date and minute (`2026-12-01`, `2026-12-01T18:42`) read as UTC.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this account's records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Records from this time on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Records up to this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// At most this many records (1–1000; default 50, the console's downloads 1000).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_or_number"
    )]
    pub limit: Option<usize>,
    /// Records to skip (newest first), for paging.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_or_number"
    )]
    pub offset: Option<usize>,
}

/// Answer of `GET /appliance/api/v1/audit`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// More records match beyond this page.
    pub more: bool,
}

/// A query string sends numbers as text and an empty field as `limit=`: both are
/// accepted, as is a JSON number.
fn empty_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[serde(untagged)]
    enum N {
        Number(usize),
        Text(String),
    }
    match Option::<N>::deserialize(d)? {
        None => Ok(None),
        Some(N::Number(n)) => Ok(Some(n)),
        Some(N::Text(t)) if t.trim().is_empty() => Ok(None),
        Some(N::Text(t)) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("not a number: {t:?}"))),
    }
}
