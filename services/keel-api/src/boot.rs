//! GRUB's boot state as keel-boot found it this boot: `/run/keel/boot/state.json`,
//! written by `keel-reset early` and `keel-boot` (root), read by the unprivileged
//! console for the status API and the Basics page.

use serde::{Deserialize, Serialize};

/// Which copy of GRUB's environment block the boot state came from.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BootEnvSource {
    /// `grub/grubenv` on the ESP, the normal case.
    #[default]
    Primary,
    /// `grub/grubenv.bak`: the primary copy was unreadable.
    Backup,
    /// Neither copy was readable: good slot `a`, no trial, no factory reset.
    Defaults,
    /// The ESP could not be mounted: nothing was read (no factory reset assumed).
    Unavailable,
}

/// A slot on trial after an update.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BootTrial {
    /// `a` or `b`.
    pub slot: String,
    /// Boots the trial has left (GRUB counts down before each).
    pub tries_left: u8,
}

/// Content of `/run/keel/boot/state.json` and the `boot` field of the status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BootState {
    pub source: BootEnvSource,
    /// What was wrong with the boot environment this boot, for the admin; `None`
    /// when both copies were readable.
    #[serde(default)]
    pub problem: Option<String>,
    /// An unreadable copy was rewritten (when the running slot was marked good).
    #[serde(default)]
    pub repaired: bool,
    /// The slot GRUB boots when no trial runs (`a` or `b`).
    #[serde(default)]
    pub good_slot: String,
    #[serde(default)]
    pub trial: Option<BootTrial>,
    /// The slot running now (`keel.slot=` on the kernel command line).
    #[serde(default)]
    pub running_slot: Option<String>,
    /// A factory reset is pending for the next boot.
    #[serde(default)]
    pub reset_requested: bool,
    /// The slot that was good before `good_slot` (what a rollback boots).
    #[serde(default)]
    pub previous_good_slot: Option<String>,
    /// Which step wrote this (`keel-reset early`, `keel-boot mark-good`, ...).
    #[serde(default)]
    pub written_by: String,
}
