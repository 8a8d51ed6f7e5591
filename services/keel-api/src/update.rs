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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// *Install all in order*, while it runs and after it ended.
    #[serde(default)]
    pub chain: Option<ChainStatus>,
    /// Installed app bundles (systemd-sysext images in `/data/apps`).
    #[serde(default)]
    pub apps: Vec<AppInfo>,
}

/// One installed app bundle: the hosted product's layer over the base.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppInfo {
    pub name: String,
    /// The version its extension link names.
    pub version: String,
    /// Merged into `/usr` now: the extension-release file of this very image is
    /// visible there (what systemd-sysext made of it, not what keel-update wrote).
    #[serde(default)]
    pub active: bool,
    /// The version kept for one rollback, if any.
    #[serde(default)]
    pub previous: Option<String>,
    /// Why it is not active, when it is not.
    #[serde(default)]
    pub note: Option<String>,
}

/// Answer of a successful install.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstallAnswer {
    pub version: String,
    /// The slot that now holds it and boots on trial next.
    pub slot: String,
    /// Whether keel-update asked for the reboot itself (`?reboot=true`).
    pub rebooting: bool,
    /// The app's name when an app bundle was installed: then `slot` is empty,
    /// nothing reboots and the extension is already active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// The typed confirmation a rollback needs.
pub const ROLLBACK_CONFIRMATION: &str = "ROLLBACK";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RollbackRequest {
    #[serde(default)]
    pub confirm: String,
}

// ---- Online: settings, check, install from the feed, install all in order ----
//
// - `GET /settings` → [`UpdateSettings`]; `PUT /settings` with
//   [`UpdateSettingsRequest`] → [`UpdateSettings`] (422 with the reason when a
//   value is refused; nothing is stored then)
// - `POST /check` → [`AvailableUpdates`] (fetches and verifies the signed feed);
//   `GET /available` → the last [`AvailableUpdates`] (404 before the first check)
// - `POST /install-online` with [`InstallOnlineRequest`] → [`InstallAnswer`]
// - `POST /install-all` → [`ChainStatus`] once the first step is armed (it reboots)
// - `POST /download-key` → [`DownloadKeyAnswer`]

/// Where and how keel-update fetches the feed, as shown (the proxy password
/// never leaves keel-update: only whether one is set).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateSettings {
    /// `https://...`, the signed feed; bundles are fetched next to it.
    #[serde(default)]
    pub feed_url: Option<String>,
    /// `http://host:port` or `https://host:port`: HTTPS goes through it with CONNECT.
    #[serde(default)]
    pub proxy_url: Option<String>,
    #[serde(default)]
    pub proxy_user: Option<String>,
    /// A proxy password is stored ("set"); its value is never returned.
    #[serde(default)]
    pub proxy_password_set: bool,
    /// An extra CA (PEM) trusted for the feed server besides the image's roots.
    #[serde(default)]
    pub ca_certificate: Option<String>,
}

/// `PUT /settings`: replaces the settings. Empty strings clear a value;
/// `proxy_password` absent keeps the stored one (`""` clears it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateSettingsRequest {
    #[serde(default)]
    pub feed_url: Option<String>,
    #[serde(default)]
    pub proxy_url: Option<String>,
    #[serde(default)]
    pub proxy_user: Option<String>,
    #[serde(default)]
    pub proxy_password: Option<String>,
    #[serde(default)]
    pub ca_certificate: Option<String>,
}

/// What stands between a feed entry and its installation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum AvailableState {
    /// Installable now, over the running version.
    Installable,
    /// This version runs now.
    Installed,
    /// Older than the running version.
    Older,
    /// Installable after the versions in `steps` (see `reason`).
    NeedsFirst,
    /// No chain of bundles in the feed leads to it (see `reason`).
    Blocked,
}

/// One bundle of the verified feed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AvailableEntry {
    pub file: String,
    /// `base` or the app's name.
    pub component: String,
    pub version: String,
    /// Payload bytes.
    pub size: u64,
    pub sha256: String,
    pub state: AvailableState,
    /// Why it cannot be installed now, e.g. "needs base 0.3.0 first".
    #[serde(default)]
    pub reason: Option<String>,
    /// Versions to install before it, in order.
    #[serde(default)]
    pub steps: Vec<String>,
}

/// Answer of `POST /check` and `GET /available`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AvailableUpdates {
    /// RFC 3339 UTC.
    pub checked_at: String,
    pub feed_url: String,
    pub feed_created: String,
    pub feed_expires: String,
    /// The running base version the entries were judged against.
    pub installed: String,
    pub entries: Vec<AvailableEntry>,
    /// *Install all in order*: the versions that reach the newest reachable base,
    /// in install order (empty: up to date).
    pub plan: Vec<String>,
}

/// `POST /install-online`: a version listed in the feed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstallOnlineRequest {
    pub version: String,
    /// The app to install; absent: the base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Reboot into it once armed.
    #[serde(default)]
    pub reboot: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ChainState {
    /// Installing a step or waiting for its healthy boot.
    Running,
    /// Every step installed and healthy.
    Done,
    /// Stopped at a step (see `message`).
    Failed,
}

/// *Install all in order*: the chain and where it is (in `UpdateStatus`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChainStatus {
    /// Versions in install order.
    pub steps: Vec<String>,
    /// Steps installed and booted healthy.
    pub done: usize,
    /// The step armed (or being installed) now.
    #[serde(default)]
    pub current: Option<String>,
    pub state: ChainState,
    #[serde(default)]
    pub message: Option<String>,
    /// RFC 3339 UTC.
    pub started_at: String,
}

/// Answer of `POST /download-key`: the signed block to copy to the vendor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DownloadKeyAnswer {
    /// `-----BEGIN KEEL DOWNLOAD KEY-----` ... `-----END KEEL DOWNLOAD KEY-----`.
    pub text: String,
    pub appliance_id: String,
    /// e.g. `base 0.1.0`.
    pub installed: Vec<String>,
    /// RFC 3339 UTC.
    pub created: String,
    pub expires: String,
}
