//! One typed model per message, shared by services, console and CLI.

use serde::{Deserialize, Serialize};

mod certs;
pub use certs::*;
mod time;
pub use time::*;
mod net;
pub use net::*;
mod boot;
pub use boot::*;
mod update;
pub use update::*;
mod failover;
pub use failover::*;
mod access;
pub use access::*;
mod tokens;
pub use tokens::*;
mod audit;
pub use audit::*;
mod users;
pub use users::*;

/// Answer of `GET /appliance/api/v1/status` and of the console's local `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Status {
    pub version: String,
    /// Active root slot, `a` or `b`; `unknown` outside the image.
    pub slot: String,
    pub hostname: String,
    pub uptime_seconds: u64,
    pub kernel: String,
    /// Current time, RFC 3339, UTC.
    pub time: String,
    /// The root filesystem is mounted read-only (from /proc/self/mountinfo).
    pub root_readonly: bool,
    pub addresses: Vec<InterfaceAddress>,
    pub certificate: CertificateSummary,
    pub processes: Vec<ProcessMemory>,
    /// Size of the persistent data filesystem (`/data`); 0 when it is not mounted.
    pub data_total_bytes: u64,
    pub data_free_bytes: u64,
    /// GRUB's boot state as found at boot (`/run/keel/boot/state.json`); `None`
    /// outside the image or from an older console.
    #[serde(default)]
    pub boot: Option<BootState>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InterfaceAddress {
    pub interface: String,
    /// CIDR form, e.g. `10.0.2.15/24` or `fe80::1/64`.
    pub address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertificateSummary {
    /// SHA-256 over the DER certificate, 64 lowercase hex digits.
    pub sha256_fingerprint: String,
    pub subject: String,
    pub not_after: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessMemory {
    pub name: String,
    pub pid: u32,
    pub rss_kib: u64,
    /// Peak resident memory since the process started (VmHWM): what a burst cost,
    /// even after it is over.
    #[serde(default)]
    pub peak_rss_kib: u64,
}

/// What the local console banner needs (console-local API only: it carries the
/// setup code, which must never leave the box except on its own screen).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Banner {
    pub version: String,
    pub urls: Vec<String>,
    /// Present while no admin password is set.
    pub setup_code: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetupRequest {
    pub setup_code: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginRequest {
    #[serde(default = "admin")]
    pub username: String,
    pub password: String,
    /// The authenticator (TOTP) code or a recovery code, for an account with a
    /// second factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

fn admin() -> String {
    "admin".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionGranted {
    pub csrf_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetupState {
    pub setup_required: bool,
}

/// Every error answer: `{"error": "..."}` with a 4xx/5xx status.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_username_defaults_to_admin() {
        let r: LoginRequest = serde_json::from_str(r#"{"password":"x"}"#).unwrap();
        assert_eq!(r.username, "admin");
    }
}
