//! `/data/update/state.json`: what keel-update knows across reboots. Written
//! atomically (keel-core's store), mode 0600, in a directory only root reads.

use std::collections::BTreeMap;
use std::path::Path;

use keel_api::{ChainStatus, UpdateOutcome};
use keel_core::format::FileFormat;
use keel_core::StoreError;
use serde::{Deserialize, Serialize};

/// `state.json`, format 1 (keel-core `format`): a file this build cannot read is
/// set aside for a fresh state, not guessed at.
pub const STATE_FILE: FileFormat = FileFormat::first("update state");

/// What a slot holds, as far as keel-update knows.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SlotContent {
    /// Never written by keel-update and not running (factory-fresh slot B).
    #[default]
    Unknown,
    /// Holds `version` (running it, or written, read back and verified).
    Valid,
    /// An install began writing it and did not finish: nothing bootable.
    Invalid,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotRecord {
    #[serde(default)]
    pub content: SlotContent,
    #[serde(default)]
    pub version: Option<String>,
    /// SHA-256 of the payload written there (lowercase hex); unknown for the
    /// factory image.
    #[serde(default)]
    pub sha256: Option<String>,
    /// RFC 3339 UTC.
    #[serde(default)]
    pub written_at: Option<String>,
    /// Why it is invalid, or what became of its trial.
    #[serde(default)]
    pub note: Option<String>,
}

/// An armed trial whose outcome is not known yet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingTrial {
    pub slot: String,
    pub version: String,
    pub from_slot: String,
    pub from_version: String,
    /// RFC 3339 UTC.
    pub armed_at: String,
    /// The kernel's boot id when it was armed: the outcome is decided in a later boot.
    #[serde(default)]
    pub boot_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpdateState {
    /// `a` and `b`.
    #[serde(default)]
    pub slots: BTreeMap<String, SlotRecord>,
    #[serde(default)]
    pub pending: Option<PendingTrial>,
    #[serde(default)]
    pub last_outcome: Option<UpdateOutcome>,
    /// *Install all in order*: the chain, continued after each healthy boot.
    /// Older builds ignore the field (the format stays 1).
    #[serde(default)]
    pub chain: Option<ChainStatus>,
}

impl UpdateState {
    pub fn slot(&self, slot: &str) -> SlotRecord {
        self.slots.get(slot).cloned().unwrap_or_default()
    }

    pub fn slot_mut(&mut self, slot: &str) -> &mut SlotRecord {
        self.slots.entry(slot.to_string()).or_default()
    }

    /// The version a slot holds, if it is known to hold a whole one.
    pub fn valid_version(&self, slot: &str) -> Option<String> {
        let r = self.slots.get(slot)?;
        (r.content == SlotContent::Valid)
            .then(|| r.version.clone())
            .flatten()
    }

    /// Loads the file; missing is a fresh state. An unreadable file or a format
    /// this build cannot read is logged and replaced by a fresh state (it only describes slots,
    /// which a fresh state treats as unknown: nothing is rolled back to blindly).
    pub fn load(path: &Path) -> UpdateState {
        STATE_FILE
            .read(path)
            .unwrap_or_else(|e| {
                tracing::error!("{e}: starting afresh");
                None
            })
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        if let Some(dir) = path.parent() {
            keel_core::store::ensure_dir(dir, 0o700)?;
        }
        STATE_FILE.write(path, self, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_other_formats_start_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("update/state.json");
        assert_eq!(UpdateState::load(&p), UpdateState::default());
        let mut st = UpdateState::default();
        *st.slot_mut("b") = SlotRecord {
            content: SlotContent::Valid,
            version: Some("0.2.0".into()),
            ..SlotRecord::default()
        };
        st.save(&p).unwrap();
        assert_eq!(UpdateState::load(&p), st);
        assert_eq!(st.valid_version("b").as_deref(), Some("0.2.0"));
        st.slot_mut("b").content = SlotContent::Invalid;
        assert_eq!(st.valid_version("b"), None);
        assert_eq!(st.valid_version("a"), None);

        std::fs::write(&p, r#"{"format": 2, "slots": {}}"#).unwrap();
        assert_eq!(UpdateState::load(&p), UpdateState::default());
        std::fs::write(&p, "garbage").unwrap();
        assert_eq!(UpdateState::load(&p), UpdateState::default());
        std::fs::write(&p, r#"{"format": 1, "slots": {"a": {"content": "weird"}}}"#).unwrap();
        assert_eq!(UpdateState::load(&p), UpdateState::default());
    }
}
