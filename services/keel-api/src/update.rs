//! Update install (keel-update): *Support › Updates*, `/appliance/api/v1/update/...`,
//! `keelctl update`. One model for service, console and CLI.
//!
//! keel-update's local API (`/run/keel/update.sock`, 0660 root:keel-update; the
//! console is a member of the group):
//! - `GET /status` → [`UpdateStatus`]
//! - `POST /install[?reboot=true]`, body: the bundle file itself
//!   (`application/octet-stream`, streamed) → [`InstallAnswer`] once the payload is
//!   written, read back and verified and the trial boot armed; any refusal is a 4xx
//!   with the reason, and then nothing was armed.
//! - `POST /rollback` with [`RollbackRequest`] → 202; boots the previous good slot.

use serde::{Deserialize, Serialize};

/// Where an install is.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UpdatePhase {
    /// Nothing running.
    #[default]
    Idle,
    /// Receiving the bundle (upload or download).
    Download,
    /// Checking the signature, the manifest and whether it may be installed.
    Verify,
    /// Streaming the payload into the inactive slot while hashing it.
    Write,
    /// Reading the slot back and hashing what is on the disk.
    ReadBack,
    /// Arming the trial boot of the new slot.
    Arm,
    /// Written, verified and armed: the next boot tries the new version.
    RebootPending,
}

/// Progress of the install running now (or of the last one, until the next starts).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpdateProgress {
    pub phase: UpdatePhase,
    /// The version being installed, once the manifest was verified.
    #[serde(default)]
    pub version: Option<String>,
    /// Bytes done and total of the current phase (0/0 when it has none).
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
    /// Why the last install stopped, when it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// One root slot as keel-update knows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotInfo {
    /// `a` or `b`.
    pub slot: String,
    /// The version it holds; `None` for an empty slot.
    #[serde(default)]
    pub version: Option<String>,
    /// GRUB boots it when no trial runs (`keel_good`).
    #[serde(default)]
    pub good: bool,
}

/// What the last update ended in.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeKind {
    /// The new version booted healthy and was marked good.
    Installed,
    /// The new version never became healthy: its tries ran out and GRUB booted
    /// the previous slot again.
    RolledBack,
    /// An admin rolled back to the previous version.
    RolledBackByAdmin,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpdateOutcome {
    pub kind: OutcomeKind,
    pub from_version: String,
    pub to_version: String,
    /// For the admin, e.g. "update to 0.1.2 failed its health check, running
    /// 0.1.1 again".
    pub message: String,
    /// RFC 3339 UTC.
    pub at: String,
}

/// Answer of `GET /status` (local) and `GET /appliance/api/v1/update`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpdateStatus {
    /// The slot running now and its version.
    pub running: SlotInfo,
    /// The other slot.
    pub other: SlotInfo,
    pub progress: UpdateProgress,
    #[serde(default)]
    pub last_outcome: Option<UpdateOutcome>,
    /// The version a rollback would boot, when the other slot holds a good one.
    #[serde(default)]
    pub rollback_to: Option<String>,
}

/// Answer of a successful install.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstallAnswer {
    pub version: String,
    /// The slot that now holds it and boots on trial next.
    pub slot: String,
    /// Whether keel-update asked for the reboot itself (`?reboot=true`).
    pub rebooting: bool,
}

/// The typed confirmation a rollback needs.
pub const ROLLBACK_CONFIRMATION: &str = "ROLLBACK";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RollbackRequest {
    #[serde(default)]
    pub confirm: String,
}
