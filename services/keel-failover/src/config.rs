//! The pair's settings (`config.json`) and the pre-shared key file.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use ipnetwork::IpNetwork;
use keel_api::FailoverRole;
use serde::{Deserialize, Serialize};

/// Shortest pre-shared key accepted: 256 bits.
pub const MIN_PSK_BYTES: usize = 32;
/// Longest node id: it travels in a fixed 16-byte field of every heartbeat.
pub const MAX_NODE_ID: usize = 16;

pub const DEFAULT_INTERVAL_MS: u64 = 20;
pub const DEFAULT_WINDOW_MS: u64 = 100;
pub const DEFAULT_PROBE_MS: u64 = 20;
pub const DEFAULT_PORT: u16 = 7946;
pub const DEFAULT_SYNC_INTERVAL_S: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}{field}: {message}", in_file(.path))]
    Parse {
        /// Empty when the bytes came from no file.
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("PSK file {path}: {message}")]
    Psk { path: PathBuf, message: String },
}

fn in_file(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!("{}: ", path.display())
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// `config.json`, format 1 (keel-core `format`; the key may be absent).
pub const CONFIG_FILE: keel_core::format::FileFormat =
    keel_core::format::FileFormat::first("failover settings");

/// One node's half of the pair. Both nodes share `shared_addresses`, `psk_file`
/// contents, `interval_ms` and `window_ms`; `local`/`peer` are mirror images.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's name in heartbeats: 1–16 bytes of `A-Z a-z 0-9 . _ -`.
    pub node_id: String,
    /// The interface that carries the shared addresses and the heartbeats.
    pub interface: String,
    /// CIDR, IPv4 and/or IPv6, e.g. `192.0.2.10/24`, `2001:db8::10/64`.
    pub shared_addresses: Vec<IpNetwork>,
    /// Where this node receives heartbeats (one of its own addresses, not a shared one).
    pub local: SocketAddr,
    /// Where the peer receives them.
    pub peer: SocketAddr,
    pub psk_file: PathBuf,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Silence from the primary after which a backup checks for takeover.
    #[serde(default = "default_window")]
    pub window_ms: u64,
    /// How long ARP / ND probes wait for answers.
    #[serde(default = "default_probe")]
    pub probe_ms: u64,
    /// Must answer ARP / ND before this node takes over (proves it is not cut off).
    /// Default: the interface's default gateway.
    #[serde(default)]
    pub check_address: Option<IpAddr>,
    #[serde(default = "yes")]
    pub auto_takeover: bool,
    /// Role on the very first start (no state in the data directory yet).
    #[serde(default = "backup")]
    pub initial_role: FailoverRole,
    /// Seconds between the primary's syncs to the backup.
    #[serde(default = "default_sync_interval")]
    pub sync_interval_s: u64,
    /// The relationship made by *establish* (absent in a config written by hand:
    /// heartbeats only, no pairing channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairing: Option<Pairing>,
}

/// The peer as pinned at *establish*.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pairing {
    /// SHA-256 (hex) of the peer's pairing certificate: the only one accepted.
    pub pin: String,
    /// The peer's pairing endpoint (TLS).
    pub address: SocketAddr,
    pub node_id: String,
    /// The product version the peer reported at *establish*.
    pub version: String,
}

fn default_interval() -> u64 {
    DEFAULT_INTERVAL_MS
}
fn default_window() -> u64 {
    DEFAULT_WINDOW_MS
}
fn default_probe() -> u64 {
    DEFAULT_PROBE_MS
}
fn default_sync_interval() -> u64 {
    DEFAULT_SYNC_INTERVAL_S
}
fn yes() -> bool {
    true
}
fn backup() -> FailoverRole {
    FailoverRole::Backup
}

impl Config {
    /// Reads and validates `path`; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&bytes).map_err(|e| match e {
            ConfigError::Parse { field, message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                field,
                message,
            },
            other => other,
        })
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let parse_error = |field: &str, message: String| ConfigError::Parse {
            path: PathBuf::new(),
            field: field.into(),
            message,
        };
        let (object, format) = keel_core::format::parse(Path::new(""), bytes).map_err(|e| {
            parse_error("(top level)", e.to_string().trim_start_matches(": ").into())
        })?;
        if format != CONFIG_FILE.current {
            return Err(parse_error(
                keel_core::format::KEY,
                format!(
                    "format {format}; this version reads format {}",
                    CONFIG_FILE.current
                ),
            ));
        }
        let config: Config = serde_path_to_error::deserialize(serde_json::Value::Object(object))
            .map_err(|e| {
                let field = e.path().to_string();
                parse_error(
                    if field == "." { "(top level)" } else { &field },
                    e.into_inner().to_string(),
                )
            })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let id = self.node_id.as_bytes();
        if id.is_empty()
            || id.len() > MAX_NODE_ID
            || !id
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
        {
            return Err(invalid(
                "node_id",
                format!("{:?}: 1-{MAX_NODE_ID} of A-Z a-z 0-9 . _ -", self.node_id),
            ));
        }
        if self.interface.is_empty() || self.interface.len() > 15 || self.interface.contains('/') {
            return Err(invalid(
                "interface",
                format!("{:?} is not an interface name", self.interface),
            ));
        }
        if self.shared_addresses.is_empty() {
            return Err(invalid("shared_addresses", "at least one address"));
        }
        for (i, a) in self.shared_addresses.iter().enumerate() {
            let field = format!("shared_addresses[{i}]");
            let ip = a.ip();
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                return Err(invalid(&field, format!("{a} cannot be a shared address")));
            }
            if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast() || (a.prefix() < 31 && ip == a.broadcast()))
            {
                return Err(invalid(&field, format!("{a} is a broadcast address")));
            }
            if self.shared_addresses[..i].iter().any(|b| b.ip() == ip) {
                return Err(invalid(&field, format!("{ip} is listed twice")));
            }
            if self.peer.ip() == ip {
                return Err(invalid(
                    "peer",
                    format!("{ip} is a shared address: heartbeats go to the peer's own address"),
                ));
            }
            if self.local.ip() == ip {
                return Err(invalid(
                    "local",
                    format!("{ip} is a shared address: heartbeats bind this node's own address"),
                ));
            }
            if self.check_address == Some(ip) {
                return Err(invalid(
                    "check_address",
                    format!("{ip} is a shared address: it cannot prove this node is connected"),
                ));
            }
        }
        if self.local.ip().is_unspecified() || self.peer.ip().is_unspecified() {
            return Err(invalid("local", "local and peer need concrete addresses"));
        }
        if self.local.is_ipv4() != self.peer.is_ipv4() {
            return Err(invalid("peer", "local and peer must be of one IP version"));
        }
        if self.local.ip() == self.peer.ip() {
            return Err(invalid("peer", "the peer's address is this node's own"));
        }
        if self.peer.port() == 0 || self.local.port() == 0 {
            return Err(invalid("peer", "port 0"));
        }
        if let Some(c) = self.check_address {
            if c.is_unspecified() || c.is_multicast() || c.is_loopback() {
                return Err(invalid(
                    "check_address",
                    format!("{c} cannot answer ARP / ND"),
                ));
            }
        }
        if !(5..=1000).contains(&self.interval_ms) {
            return Err(invalid("interval_ms", "5 to 1000"));
        }
        if self.window_ms < 3 * self.interval_ms || self.window_ms > 60_000 {
            return Err(invalid(
                "window_ms",
                format!(
                    "at least 3 heartbeat intervals ({} ms), at most 60000",
                    3 * self.interval_ms
                ),
            ));
        }
        if !(5..=2000).contains(&self.probe_ms) {
            return Err(invalid("probe_ms", "5 to 2000"));
        }
        if !(5..=86_400).contains(&self.sync_interval_s) {
            return Err(invalid("sync_interval_s", "5 to 86400"));
        }
        Ok(())
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }
    pub fn probe(&self) -> Duration {
        Duration::from_millis(self.probe_ms)
    }
}

/// Reads the pre-shared key: the file's bytes (one trailing newline dropped),
/// refused unless only its owner can read it and it is at least 32 bytes long.
pub fn read_psk(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let err = |message: String| ConfigError::Psk {
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "mode {mode:04o}: readable by others; it must be 0600"
        )));
    }
    let mut key = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if key.last() == Some(&b'\n') {
        key.pop();
    }
    if key.len() < MIN_PSK_BYTES {
        return Err(err(format!(
            "{} bytes; at least {MIN_PSK_BYTES} needed",
            key.len()
        )));
    }
    Ok(key)
}

fn psk_error(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::Psk {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Makes the inter-appliance key on first start: 32 random bytes, base64, 0600.
/// An existing file is left alone (`read_psk` judges it when it is used).
pub fn ensure_psk(path: &Path) -> Result<(), ConfigError> {
    if path.exists() {
        return Ok(());
    }
    let mut key = [0u8; MIN_PSK_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| psk_error(path, "no random bytes from the kernel"))?;
    let text = base64::engine::general_purpose::STANDARD.encode(key);
    store_psk(path, &text)
}

/// Replaces the key with one the admin pasted: base64 (standard alphabet) of at
/// least 32 bytes, else refused and the file left as it was.
pub fn write_psk(path: &Path, text: &str) -> Result<(), ConfigError> {
    let text = text.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| psk_error(path, format!("not base64: {e}")))?;
    if decoded.len() < MIN_PSK_BYTES {
        return Err(psk_error(
            path,
            format!(
                "{} bytes decoded; at least {MIN_PSK_BYTES} needed",
                decoded.len()
            ),
        ));
    }
    store_psk(path, text)
}

fn store_psk(path: &Path, text: &str) -> Result<(), ConfigError> {
    keel_core::store::write_atomic(path, format!("{text}\n").as_bytes(), 0o600)
        .map_err(|e| psk_error(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "node_id": "a",
            "interface": "eth0",
            "shared_addresses": ["192.0.2.10/24", "2001:db8::10/64"],
            "local": "192.0.2.2:7946",
            "peer": "192.0.2.3:7946",
            "psk_file": "/data/failover/psk",
        })
    }

    fn parse(v: &serde_json::Value) -> Result<Config, ConfigError> {
        Config::parse(v.to_string().as_bytes())
    }

    #[test]
    fn defaults_fill_in() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.interval_ms, DEFAULT_INTERVAL_MS);
        assert_eq!(c.window_ms, DEFAULT_WINDOW_MS);
        assert!(c.auto_takeover);
        assert_eq!(c.initial_role, FailoverRole::Backup);
        assert_eq!(c.check_address, None);
    }

    #[test]
    fn the_file_may_carry_its_format_and_a_newer_one_is_refused() {
        let mut v = base();
        v["format"] = serde_json::json!(1);
        assert_eq!(parse(&v).unwrap(), parse(&base()).unwrap());
        v["format"] = serde_json::json!(2);
        let e = parse(&v).unwrap_err().to_string();
        assert!(
            e.contains("format: format 2; this version reads format 1"),
            "{e}"
        );
        let e = Config::parse(b"[1]").unwrap_err().to_string();
        assert!(
            e.contains("(top level): ") && e.contains("not a JSON object"),
            "{e}"
        );
        let e = Config::parse(b"{").unwrap_err().to_string();
        assert!(e.contains("(top level): not valid JSON"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, serde_json::Value, &str)] = &[
            (
                "shared_addresses",
                serde_json::json!(["192.0.2.10/24", "2001:db8::zz/64"]),
                "shared_addresses[1]",
            ),
            (
                "shared_addresses",
                serde_json::json!(["192.0.2.10/33"]),
                "shared_addresses[0]",
            ),
            (
                "shared_addresses",
                serde_json::json!([]),
                "shared_addresses",
            ),
            (
                "shared_addresses",
                serde_json::json!(["192.0.2.255/24"]),
                "shared_addresses[0]",
            ),
            ("peer", serde_json::json!("192.0.2.10:7946"), "peer"),
            ("local", serde_json::json!("192.0.2.10:7946"), "local"),
            ("peer", serde_json::json!("192.0.2.3"), "peer"),
            (
                "check_address",
                serde_json::json!("2001:db8::10"),
                "check_address",
            ),
            (
                "check_address",
                serde_json::json!("not-an-ip"),
                "check_address",
            ),
            (
                "node_id",
                serde_json::json!("a-name-longer-than-16"),
                "node_id",
            ),
            ("window_ms", serde_json::json!(30), "window_ms"),
            ("interval_ms", serde_json::json!(1), "interval_ms"),
            ("initial_role", serde_json::json!("leader"), "initial_role"),
            ("surprise", serde_json::json!(1), "surprise"),
        ];
        for (key, value, field) in cases {
            let mut v = base();
            v[*key] = value.clone();
            let e = parse(&v).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{field}: ")), "{key}={value}: {e}");
        }
    }

    #[test]
    fn psk_must_be_private_and_long() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("psk");
        std::fs::write(&p, [7u8; 32]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_psk(&p).unwrap_err().to_string().contains("0600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_psk(&p).unwrap().len(), 32);
        std::fs::write(&p, b"short-key-of-31-bytes..........\n").unwrap();
        let e = read_psk(&p).unwrap_err().to_string();
        assert!(e.contains("31 bytes"), "{e}");
    }

    #[test]
    fn a_pasted_key_is_checked_before_it_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("psk");
        ensure_psk(&path).unwrap();
        let made = read_psk(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        ensure_psk(&path).unwrap();
        assert_eq!(read_psk(&path).unwrap(), made, "an existing key stays");
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        let e = write_psk(&path, &short).unwrap_err().to_string();
        assert!(e.contains("16 bytes decoded; at least 32 needed"), "{e}");
        let e = write_psk(&path, "no base64!").unwrap_err().to_string();
        assert!(e.contains("not base64"), "{e}");
        assert_eq!(
            read_psk(&path).unwrap(),
            made,
            "a refused key changes nothing"
        );
        let good = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        write_psk(&path, &format!(" {good}\n")).unwrap();
        assert_eq!(read_psk(&path).unwrap(), good.as_bytes());
    }
}
