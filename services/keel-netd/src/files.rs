//! netd's files in `/data/net` and their formats (`keel_core::format`): the
//! confirmed configuration (`config.json`) and the NTP server list keel-timed reads
//! (`ntp-servers.json`, format shared through keel-core).

use std::path::Path;

use keel_api::NetConfig;
use keel_core::format::FileFormat;
use keel_core::StoreError;

pub use keel_core::format::NTP_SERVERS;

/// `config.json`: `keel_api::NetConfig` at the top level, format 1.
#[cfg(not(feature = "format-next"))]
pub const NET_CONFIG: FileFormat = FileFormat::first("network configuration");

/// The build with the `format-next` feature stores `config.json` in a format 2
/// that nests the configuration under `"network"`. It exists to test an update
/// and a rollback across a format change on the booted image
/// (qemu-tests/tests/update_format.rs); the shipped build never has it.
#[cfg(feature = "format-next")]
pub const NET_CONFIG: FileFormat = FileFormat {
    name: "network configuration",
    current: 2,
    steps: &[keel_core::format::Step {
        forward: next::nest,
        backward: next::unnest,
    }],
};

#[cfg(feature = "format-next")]
mod next {
    use serde_json::{Map, Value};

    pub fn nest(o: Map<String, Value>) -> Result<Map<String, Value>, String> {
        Ok(Map::from_iter([("network".to_string(), Value::Object(o))]))
    }

    pub fn unnest(mut o: Map<String, Value>) -> Result<Map<String, Value>, String> {
        match o.remove("network") {
            Some(Value::Object(inner)) => Ok(inner),
            _ => Err("no \"network\" object".into()),
        }
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct Nested {
        pub network: keel_api::NetConfig,
    }
}

/// What `config.json` holds in this build's format.
#[cfg(not(feature = "format-next"))]
type ConfigFile = NetConfig;
#[cfg(feature = "format-next")]
type ConfigFile = next::Nested;

#[cfg(not(feature = "format-next"))]
fn file_of(cfg: &NetConfig) -> ConfigFile {
    cfg.clone()
}
#[cfg(feature = "format-next")]
fn file_of(cfg: &NetConfig) -> ConfigFile {
    next::Nested {
        network: cfg.clone(),
    }
}

#[cfg(not(feature = "format-next"))]
fn config_of(file: ConfigFile) -> NetConfig {
    file
}
#[cfg(feature = "format-next")]
fn config_of(file: ConfigFile) -> NetConfig {
    file.network
}

pub fn read_config(path: &Path) -> Result<Option<NetConfig>, StoreError> {
    Ok(NET_CONFIG.read::<ConfigFile>(path)?.map(config_of))
}

pub fn write_config(path: &Path, cfg: &NetConfig) -> Result<(), StoreError> {
    NET_CONFIG.write(path, &file_of(cfg), 0o644)
}

/// Moves `config.json` to this build's format when it is older (first boot of a
/// newer version); the older copy stays for a rollback.
pub fn upgrade_config(path: &Path) -> Result<bool, StoreError> {
    NET_CONFIG.upgrade::<ConfigFile>(path, 0o644)
}
