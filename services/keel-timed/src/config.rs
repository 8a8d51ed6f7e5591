//! Where the NTP server list comes from, and the timesyncd drop-in made from it.
//!
//! netd will own the list (`/data/net/ntp-servers.json`); until it exists timed
//! keeps its own (`/data/timed/config.json`), which the console and keelctl set
//! through timed. Both files are read at every check, so a change by netd is
//! picked up without a restart.

use std::path::{Path, PathBuf};

use keel_api::NtpServers;
use keel_core::format::{FileFormat, NTP_SERVERS};
use serde::{Deserialize, Serialize};

/// More servers than this only slow the check down.
pub const MAX_SERVERS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0:?} is not a host name or IP address (optionally with :port)")]
    BadServer(String),
    #[error("at most {MAX_SERVERS} NTP servers")]
    TooMany,
    #[error(
        "the NTP server list is managed by the network service ({}): change it under \
         Networking › NTP servers",
        .0.display()
    )]
    OwnedByNetd(PathBuf),
    #[error(transparent)]
    Store(#[from] keel_core::StoreError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Netd,
    Timed,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Netd => "netd",
            Source::Timed => "timed",
        }
    }
}

/// The files timed reads and writes.
#[derive(Debug, Clone)]
pub struct Paths {
    /// netd's list; takes precedence when it exists.
    pub netd_servers: PathBuf,
    /// timed's own settings (`TimedConfig`).
    pub config: PathBuf,
    /// The record of a time set by hand.
    pub manual: PathBuf,
}

impl Paths {
    /// `data` is the data root (`/data` on the appliance).
    pub fn under(data: &Path) -> Self {
        Self {
            netd_servers: data.join("net").join("ntp-servers.json"),
            config: data.join("timed").join("config.json"),
            manual: data.join("timed").join("manual.json"),
        }
    }
}

/// `/data/timed/config.json`: timed's own settings, format 1.
pub const TIMED_CONFIG: FileFormat = FileFormat::first("time settings");

/// `/data/timed/manual.json`: the record of a time set by hand, format 1.
pub const MANUAL_RECORD: FileFormat = FileFormat::first("record of the time set by hand");

/// `/data/timed/config.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimedConfig {
    #[serde(default)]
    pub servers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerList {
    pub servers: Vec<String>,
    pub source: Source,
    pub path: PathBuf,
}

impl ServerList {
    pub fn to_api(&self) -> keel_api::NtpServerList {
        keel_api::NtpServerList {
            servers: self.servers.clone(),
            source: self.source.as_str().into(),
            path: self.path.display().to_string(),
        }
    }
}

/// The list in force: netd's if its file exists, else timed's (empty if neither).
pub fn load_servers(paths: &Paths) -> Result<ServerList, ConfigError> {
    if let Some(n) = NTP_SERVERS.read::<NtpServers>(&paths.netd_servers)? {
        return Ok(ServerList {
            servers: n.servers,
            source: Source::Netd,
            path: paths.netd_servers.clone(),
        });
    }
    let c = TIMED_CONFIG
        .read::<TimedConfig>(&paths.config)?
        .unwrap_or_default();
    Ok(ServerList {
        servers: c.servers,
        source: Source::Timed,
        path: paths.config.clone(),
    })
}

/// Validates and stores timed's own list; refused while netd owns the list.
pub fn save_servers(paths: &Paths, servers: &[String]) -> Result<ServerList, ConfigError> {
    if paths.netd_servers.exists() {
        return Err(ConfigError::OwnedByNetd(paths.netd_servers.clone()));
    }
    let servers = validate_servers(servers)?;
    if let Some(dir) = paths.config.parent() {
        keel_core::store::ensure_dir(dir, 0o755)?;
    }
    let mut config = TIMED_CONFIG
        .read::<TimedConfig>(&paths.config)?
        .unwrap_or_default();
    config.servers = servers;
    TIMED_CONFIG.write(&paths.config, &config, 0o644)?;
    load_servers(paths)
}

/// Trims, drops empties and duplicates, checks each entry's shape.
pub fn validate_servers(servers: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    for s in servers {
        let s = s.trim();
        if s.is_empty() || out.iter().any(|o| o == s) {
            continue;
        }
        split_server(s)?;
        out.push(s.to_owned());
    }
    if out.len() > MAX_SERVERS {
        return Err(ConfigError::TooMany);
    }
    Ok(out)
}

/// `host`, `host:port`, `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]:123` → (host, port).
pub fn split_server(s: &str) -> Result<(String, u16), ConfigError> {
    let bad = || ConfigError::BadServer(s.to_owned());
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok((ip.to_string(), 123));
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Ok((
            sa.ip().to_string(),
            nonzero_port(sa.port()).ok_or_else(bad)?,
        ));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .ok()
                .and_then(nonzero_port)
                .ok_or_else(bad)?,
        ),
        None => (s, 123),
    };
    if !is_host_name(host) {
        return Err(bad());
    }
    Ok((host.to_ascii_lowercase(), port))
}

fn nonzero_port(p: u16) -> Option<u16> {
    (p != 0).then_some(p)
}

fn is_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The timesyncd drop-in for `servers`, or `None` when there is nothing to say
/// (timesyncd then keeps its own defaults). timesyncd takes no ports: servers
/// on another port than 123 are checked by timed but left out here.
pub fn render_timesyncd(servers: &[String]) -> Option<String> {
    let usable: Vec<String> = servers
        .iter()
        .filter_map(|s| split_server(s).ok())
        .filter(|(_, port)| *port == 123)
        .map(|(host, _)| host)
        .collect();
    if usable.is_empty() {
        return None;
    }
    Some(format!(
        "# Written by keel-timed from the appliance's NTP server list; do not edit.\n\
         [Time]\n\
         NTP=\n\
         NTP={}\n",
        usable.join(" ")
    ))
}

/// Writes (or removes) the drop-in; true when it changed, so timesyncd is only
/// restarted (by `keel-timesyncd-restart.path`) when there is something new.
pub fn write_timesyncd_dropin(path: &Path, servers: &[String]) -> Result<bool, ConfigError> {
    let current = std::fs::read_to_string(path).ok();
    match render_timesyncd(servers) {
        Some(text) if current.as_deref() == Some(text.as_str()) => Ok(false),
        Some(text) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| keel_core::StoreError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            keel_core::store::write_atomic(path, text.as_bytes(), 0o644)?;
            Ok(true)
        }
        None if current.is_none() => Ok(false),
        None => match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(keel_core::StoreError::Io {
                path: path.to_path_buf(),
                source,
            }
            .into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_shapes() {
        let ok = |s: &str| split_server(s).unwrap();
        assert_eq!(ok("Pool.Example.org"), ("pool.example.org".into(), 123));
        assert_eq!(ok("ntp1:1123"), ("ntp1".into(), 1123));
        assert_eq!(ok("192.0.2.7"), ("192.0.2.7".into(), 123));
        assert_eq!(ok("192.0.2.7:999"), ("192.0.2.7".into(), 999));
        assert_eq!(ok("2001:db8::1"), ("2001:db8::1".into(), 123));
        assert_eq!(ok("[2001:db8::1]:124"), ("2001:db8::1".into(), 124));
        for bad in [
            "", "a b", "host:0", "host:x", "-a.org", "a..b", "x:1:2", "[::1]",
        ] {
            assert!(split_server(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn list_validation() {
        let v = validate_servers(&[" a.org ".into(), "".into(), "a.org".into(), "b".into()]);
        assert_eq!(v.unwrap(), vec!["a.org".to_string(), "b".into()]);
        let many: Vec<String> = (0..=MAX_SERVERS).map(|i| format!("s{i}")).collect();
        assert!(matches!(validate_servers(&many), Err(ConfigError::TooMany)));
        assert!(matches!(
            validate_servers(&["bad host".into()]),
            Err(ConfigError::BadServer(_))
        ));
    }

    #[test]
    fn netd_list_wins_and_blocks_setting() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let l = load_servers(&paths).unwrap();
        assert_eq!((l.servers.len(), l.source), (0, Source::Timed));
        let l = save_servers(&paths, &["ntp.a".into()]).unwrap();
        assert_eq!(l.servers, vec!["ntp.a".to_string()]);
        std::fs::create_dir_all(dir.path().join("net")).unwrap();
        std::fs::write(&paths.netd_servers, br#"{"servers":["ntp.b"]}"#).unwrap();
        let l = load_servers(&paths).unwrap();
        assert_eq!(
            (l.servers, l.source),
            (vec!["ntp.b".to_string()], Source::Netd)
        );
        let err = save_servers(&paths, &["ntp.c".into()]).unwrap_err();
        assert!(
            err.to_string().contains("Networking › NTP servers"),
            "{err}"
        );
    }

    #[test]
    fn timesyncd_dropin() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keel.conf");
        let list = vec![
            "a.org".to_string(),
            "127.0.0.1:11123".into(),
            "[2001:db8::1]:123".into(),
        ];
        assert!(write_timesyncd_dropin(&p, &list).unwrap());
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("[Time]\nNTP=\nNTP=a.org 2001:db8::1\n"),
            "{text}"
        );
        assert!(!write_timesyncd_dropin(&p, &list).unwrap(), "unchanged");
        assert!(write_timesyncd_dropin(&p, &[]).unwrap());
        assert!(!p.exists());
        assert!(!write_timesyncd_dropin(&p, &[]).unwrap());
    }
}
