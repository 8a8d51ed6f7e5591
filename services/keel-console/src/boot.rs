//! Boot state: what `keel-reset early` and `keel-boot mark-good` (root) found in
//! GRUB's environment this boot, from `/run/keel/boot/state.json` (0644). The
//! console only reads it: for the status API (`boot`) and the *Boot environment*
//! section of *Status › Basics*.

use std::path::PathBuf;
use std::sync::RwLock;

use keel_api::{BootEnvSource, BootState};

pub const DEFAULT_STATE_FILE: &str = "/run/keel/boot/state.json";

static STATE_FILE: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Where the state file is (main's `--boot-state`, tests).
pub fn set_state_file(path: PathBuf) {
    *STATE_FILE.write().unwrap_or_else(|p| p.into_inner()) = Some(path);
}

pub(crate) fn state_file() -> PathBuf {
    STATE_FILE
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_FILE))
}

/// The boot state, `None` when nobody recorded one (outside the image). A file
/// that cannot be read is itself reported as the problem.
pub fn read() -> Option<BootState> {
    let path = state_file();
    match keel_core::store::read_json::<BootState>(&path) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("boot state: {e}");
            Some(BootState {
                source: BootEnvSource::Unavailable,
                problem: Some(format!("boot state unreadable: {e}")),
                ..BootState::default()
            })
        }
    }
}

/// The Basics page's section.
pub struct BootView {
    /// The problem, for a warning; empty when all is well.
    pub problem: String,
    pub source: String,
    pub good_slot: String,
    pub trial: String,
    pub reset: bool,
}

pub fn view(state: Option<&BootState>) -> Option<BootView> {
    let s = state?;
    let mut problem = s.problem.clone().unwrap_or_default();
    if !problem.is_empty() {
        // The state file's text starts lower case (it is also a log line).
        let mut c = problem.chars();
        if let Some(first) = c.next() {
            problem = first.to_uppercase().chain(c).collect();
        }
        problem.push('.');
        if s.repaired {
            problem.push_str(" Both copies were rewritten once the console was up.");
        }
    }
    Some(BootView {
        problem,
        source: match s.source {
            BootEnvSource::Primary => "grub/grubenv",
            BootEnvSource::Backup => "grub/grubenv.bak (backup copy)",
            BootEnvSource::Defaults => "neither copy: built-in defaults",
            BootEnvSource::Unavailable => "not read (ESP unavailable)",
        }
        .to_owned(),
        good_slot: s.good_slot.clone(),
        trial: match &s.trial {
            Some(t) => format!("slot {}, {} boots left", t.slot, t.tries_left),
            None => "none".to_owned(),
        },
        reset: s.reset_requested,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_state_file_and_words_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        set_state_file(p.clone());
        assert_eq!(read(), None);
        let state = BootState {
            source: BootEnvSource::Defaults,
            problem: Some("boot environment unreadable (primary: x; backup: y)".into()),
            repaired: true,
            good_slot: "a".into(),
            running_slot: Some("a".into()),
            ..BootState::default()
        };
        keel_core::store::write_json(&p, &state, 0o644).unwrap();
        let got = read().unwrap();
        assert_eq!(got, state);
        let v = view(Some(&got)).unwrap();
        assert!(
            v.problem.starts_with("Boot environment unreadable"),
            "{}",
            v.problem
        );
        assert!(v.problem.contains("rewritten"));
        assert_eq!(v.trial, "none");
        std::fs::write(&p, b"{torn").unwrap();
        assert!(read().unwrap().problem.unwrap().contains("unreadable"));
        assert!(view(None).is_none());
    }
}
