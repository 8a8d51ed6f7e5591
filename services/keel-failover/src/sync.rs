//! Config sync of a pair: what the primary pushes to the backup (console users,
//! the certificates assigned to the shared addresses, update settings, the hosted
//! product's `/data/shared/`), collected on one side and applied as a whole on the
//! other. In the image a root helper (`keel-failover sync-agent`, socket-activated)
//! reads and writes the other services' files; outside it (`--sync-root DIR`) the
//! daemon does it in-process under DIR.
//!
//! Interface contract (used by the pairing channel in `pair.rs`): `SyncBackend`.

use std::path::PathBuf;

use ipnetwork::IpNetwork;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("config sync is not built yet")]
    NotBuilt,
}

/// Where the synced files live (the image's paths, or all under one root).
#[derive(Debug, Clone)]
pub struct SyncPaths {
    /// `/data/console`: `admin.json` (console users), `certs/` (the store).
    pub console: PathBuf,
    /// `/data/update/settings.json`.
    pub update_settings: PathBuf,
    /// `/data/shared`: the hosted product's shared data, synced whole.
    pub shared: PathBuf,
}

/// How this node reads and writes the synced files.
#[derive(Debug, Clone)]
pub enum SyncBackend {
    /// Read and write directly (standalone runs and tests).
    InProcess(SyncPaths),
    /// Ask the root sync agent over its Unix socket (the image).
    Agent(PathBuf),
}

impl SyncBackend {
    /// The bundle of everything to sync, as bytes for the pairing channel.
    pub async fn export(&self, shared_addresses: &[IpNetwork]) -> Result<Vec<u8>, SyncError> {
        let _ = shared_addresses;
        Err(SyncError::NotBuilt)
    }

    /// Apply a bundle received from the primary, all of it or nothing; the answer
    /// lists what it held (`keel_api::SyncReport::items`).
    pub async fn apply(
        &self,
        bundle: Vec<u8>,
        shared_addresses: &[IpNetwork],
    ) -> Result<Vec<String>, SyncError> {
        let _ = (bundle, shared_addresses);
        Err(SyncError::NotBuilt)
    }
}

/// `keel-failover sync-agent`: serve one connection on stdin/stdout
/// (`Accept=yes` socket unit) with the image's paths.
pub fn run_agent() -> anyhow::Result<()> {
    Err(SyncError::NotBuilt.into())
}
