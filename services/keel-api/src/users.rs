//! Console accounts: `/appliance/api/v1/users` and `/appliance/api/v1/account`.

use serde::{Deserialize, Serialize};

/// What an account (or an API token made by it) may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees and changes everything.
    Administrator,
    /// Sees everything, changes nothing, downloads no keys or backups.
    Auditor,
}

impl Role {
    pub fn may_change(self) -> bool {
        self == Role::Administrator
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Administrator => "administrator",
            Role::Auditor => "auditor",
        }
    }
}

/// One account as the Users page and `GET /users` show it (no secrets).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    pub name: String,
    pub role: Role,
    /// A second factor (TOTP) is enrolled.
    pub totp: bool,
    pub disabled: bool,
    /// RFC 3339, UTC.
    pub created: String,
}

/// `GET /appliance/api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserList {
    pub users: Vec<User>,
}

/// `POST /appliance/api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub role: Role,
    pub password: String,
}

/// `PATCH /appliance/api/v1/users/{name}`: the fields given change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// `POST /appliance/api/v1/account/password`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

/// Answer of `POST /appliance/api/v1/account/totp`: an enrolment to confirm.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TotpEnrolment {
    /// Base32, for typing into an authenticator app.
    pub secret: String,
    /// `otpauth://totp/...`, for a QR code or a link.
    pub uri: String,
}

/// `POST /appliance/api/v1/account/totp/confirm`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TotpConfirm {
    pub code: String,
}

/// Answer of the confirmation: recovery codes, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TotpEnabled {
    pub recovery_codes: Vec<String>,
}

/// `DELETE /appliance/api/v1/account/totp`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TotpRemove {
    pub password: String,
}
