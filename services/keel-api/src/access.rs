//! Console access policy (`GET|PUT /appliance/api/v1/access`, page *Security ›
//! Console access*, stored as the console's `access.json`).

use serde::{Deserialize, Serialize};

/// Session idle timeout bounds, minutes.
pub const SESSION_IDLE_MINUTES: std::ops::RangeInclusive<u32> = 5..=240;
/// Session lifetime bounds, hours.
pub const SESSION_LIFETIME_HOURS: std::ops::RangeInclusive<u32> = 1..=24;

/// The oldest TLS version the console accepts.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum MinTlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

impl MinTlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            MinTlsVersion::Tls12 => "1.2",
            MinTlsVersion::Tls13 => "1.3",
        }
    }
}

/// Which cipher suites the console offers (the console's README names them).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CipherPolicy {
    /// Every suite of rustls's ring provider (all AEAD with forward secrecy).
    #[default]
    Default,
    /// Only the suites with 256-bit keys (AES-256-GCM, ChaCha20-Poly1305).
    Strict,
}

impl CipherPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            CipherPolicy::Default => "default",
            CipherPolicy::Strict => "strict",
        }
    }
}

fn default_idle() -> u32 {
    30
}

fn default_lifetime() -> u32 {
    12
}

/// Who may reach the console and how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AccessPolicy {
    /// Source networks allowed to reach the console, CIDR (`192.0.2.0/24`,
    /// `2001:db8::/32`; a bare address is one host). Empty: every source.
    /// 127.0.0.1 and ::1 are always allowed (the appliance's own tools).
    #[serde(default)]
    pub allowed_networks: Vec<String>,
    #[serde(default)]
    pub min_tls_version: MinTlsVersion,
    #[serde(default)]
    pub cipher_policy: CipherPolicy,
    /// A session ends this long after its last request (5–240).
    #[serde(default = "default_idle")]
    pub session_idle_minutes: u32,
    /// A session ends this long after login at the latest (1–24).
    #[serde(default = "default_lifetime")]
    pub session_lifetime_hours: u32,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        Self {
            allowed_networks: Vec::new(),
            min_tls_version: MinTlsVersion::default(),
            cipher_policy: CipherPolicy::default(),
            session_idle_minutes: default_idle(),
            session_lifetime_hours: default_lifetime(),
        }
    }
}

/// Answer of `GET /appliance/api/v1/access`: the policy and what it means now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccessView {
    pub policy: AccessPolicy,
    /// The address this request came from, as the filter sees it.
    pub client_address: String,
    /// The TLS 1.3 and 1.2 cipher suites offered under the policy (IANA names).
    pub cipher_suites: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        let p: AccessPolicy = serde_json::from_str(
            r#"{"allowed_networks":["10.0.0.0/8"],"min_tls_version":"1.3","cipher_policy":"strict"}"#,
        )
        .unwrap();
        assert_eq!(p.min_tls_version, MinTlsVersion::Tls13);
        assert_eq!(p.cipher_policy, CipherPolicy::Strict);
        assert_eq!((p.session_idle_minutes, p.session_lifetime_hours), (30, 12));
        assert!(serde_json::from_str::<AccessPolicy>(r#"{"min_tls_version":"1.1"}"#).is_err());
        assert!(serde_json::from_str::<AccessPolicy>(r#"{"allowed":[]}"#).is_err());
    }
}
