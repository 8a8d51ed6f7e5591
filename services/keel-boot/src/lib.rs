//! keel-boot: the one owner of GRUB's boot state on the ESP.
//!
//! GRUB's environment block holds which slot boots (`keel_good`), a trial after an
//! update (`keel_try`, `keel_tries`), the slot that was good before (`keel_prev`)
//! and a pending factory reset (`keel_reset`, `keel_reset_poweroff`). It lives in
//! **two copies**, `grub/grubenv` and `grub/grubenv.bak`, because FAT has no
//! journal: a power cut while one copy is rewritten may leave it as garbage.
//!
//! * **Writing** goes copy by copy, primary first: a new file beside it, fsync,
//!   rename over it, fsync of the directory, read back and compared byte for byte.
//!   Only after the primary is verified is the backup touched, so at every instant
//!   at least one copy is a complete block (the old state or the new). A failed
//!   write or a read-back that differs is an error, never "done".
//! * **Reading** takes the primary; when it is unreadable, the backup (and says
//!   which and why); when both are, the defaults GRUB also falls back to: good slot
//!   `a`, no trial, **no factory reset**. Reading never fails.
//! * **Transitions** ([`BootEnv::mark_good`], [`BootEnv::arm_trial`], ...) write
//!   only what differs from the copies, so an unchanged, healthy environment is
//!   never rewritten, and a damaged or stale copy is rewritten by the next one.

pub mod block;
pub mod esp;
pub mod health;

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

pub use block::{parse, serialize, BlockError, Vars, BLOCK_SIZE, HEADER};
pub use esp::{Esp, EspError, ESP_DEVICE, ESP_MOUNT};
pub use keel_api::{BootEnvSource, BootState, BootTrial};

/// The primary copy, relative to the ESP (GRUB's `$prefix` is `/grub`).
pub const PRIMARY: &str = "grub/grubenv";
/// The backup copy, beside it.
pub const BACKUP: &str = "grub/grubenv.bak";
/// The state file for the unprivileged console (dir 0755, file 0644).
pub const STATE_FILE: &str = "/run/keel/boot/state.json";

pub const GOOD_KEY: &str = "keel_good";
pub const TRY_KEY: &str = "keel_try";
pub const TRIES_KEY: &str = "keel_tries";
pub const PREV_KEY: &str = "keel_prev";
pub const RESET_KEY: &str = "keel_reset";
pub const POWEROFF_KEY: &str = "keel_reset_poweroff";

/// The most boots a trial may have: grub.cfg's count-down knows 1 to 9.
pub const MAX_TRIES: u8 = 9;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `keel.slot=` on a kernel command line (what GRUB booted).
    pub fn from_cmdline(cmdline: &str) -> Option<Slot> {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("keel.slot="))
            .and_then(Slot::parse)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvCopy {
    Primary,
    Backup,
}

impl EnvCopy {
    pub fn rel_path(self) -> &'static str {
        match self {
            EnvCopy::Primary => PRIMARY,
            EnvCopy::Backup => BACKUP,
        }
    }
}

/// Why a copy could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("{0}: missing")]
    Missing(&'static str),
    #[error("{0}: {1}")]
    Io(&'static str, String),
    #[error("{0}: {1}")]
    Block(&'static str, BlockError),
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] io::Error),
    #[error("{0}: read back differs from what was written")]
    Mismatch(PathBuf),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("{0}")]
    Prepare(String),
    #[error("no rollback: no other slot is recorded as holding a good version")]
    NoRollback,
    #[error("a trial needs 1 to {MAX_TRIES} tries, not {0}")]
    Tries(u8),
    #[error("slot {0} is the good slot: a trial is of the other one")]
    TrialOfGood(Slot),
}

/// The steps of writing one copy, for tests that cut the power after each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteStep {
    /// The new block is complete and synced beside the copy (`<copy>.new`).
    NewWritten,
    /// Renamed over the copy.
    Renamed,
    /// The directory is synced.
    DirSynced,
    /// Read back and compared.
    Verified,
}

/// Called after each step with the copy's path; an error stops the write there.
pub type WriteHook = Box<dyn Fn(WriteStep, &Path) -> io::Result<()>>;
/// Called once before anything is written (e.g. remounting the ESP writable).
pub type PrepareHook = Box<dyn Fn() -> Result<(), String>>;

/// What was read: both copies, and the variables in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub primary: Result<Vars, ReadError>,
    pub backup: Result<Vars, ReadError>,
}

impl Status {
    pub fn source(&self) -> BootEnvSource {
        match (&self.primary, &self.backup) {
            (Ok(_), _) => BootEnvSource::Primary,
            (Err(_), Ok(_)) => BootEnvSource::Backup,
            (Err(_), Err(_)) => BootEnvSource::Defaults,
        }
    }

    /// The variables in force (empty: the defaults).
    pub fn vars(&self) -> Vars {
        match (&self.primary, &self.backup) {
            (Ok(v), _) | (Err(_), Ok(v)) => v.clone(),
            (Err(_), Err(_)) => Vars::new(),
        }
    }

    fn get(&self, key: &str) -> Option<String> {
        self.vars().get(key).cloned()
    }

    /// As grub.cfg reads it: anything but `b` is `a`, the factory slot.
    pub fn good(&self) -> Slot {
        if self.get(GOOD_KEY).as_deref() == Some("b") {
            Slot::B
        } else {
            Slot::A
        }
    }

    /// The slot on trial and the boots it has left (0 while its last one runs).
    pub fn trial(&self) -> Option<(Slot, u8)> {
        let slot = Slot::parse(&self.get(TRY_KEY)?)?;
        let left = self
            .get(TRIES_KEY)
            .and_then(|t| t.parse::<u8>().ok())
            .filter(|t| *t <= MAX_TRIES)
            .unwrap_or(0);
        Some((slot, left))
    }

    /// A pending factory reset: `Some(power_off)`. Unreadable means `None`.
    pub fn reset(&self) -> Option<bool> {
        (self.get(RESET_KEY).as_deref() == Some("1"))
            .then(|| self.get(POWEROFF_KEY).as_deref() == Some("1"))
    }

    pub fn previous_good(&self) -> Option<Slot> {
        Slot::parse(&self.get(PREV_KEY)?).filter(|p| *p != self.good())
    }

    /// What the admin should hear about, if anything.
    pub fn problem(&self) -> Option<String> {
        match (&self.primary, &self.backup) {
            (Ok(_), Ok(_)) => None,
            (Ok(_), Err(b)) => Some(format!(
                "boot environment: backup copy unreadable ({b}); the primary copy is fine"
            )),
            (Err(p), Ok(_)) => Some(format!(
                "boot environment: primary copy unreadable ({p}): used the backup copy"
            )),
            (Err(p), Err(b)) => Some(format!(
                "boot environment unreadable (primary: {p}; backup: {b}): booted the factory \
                 slot, no factory reset assumed"
            )),
        }
    }
}

/// What a transition did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What was read before.
    pub before: Status,
    /// The variables now in both copies.
    pub vars: Vars,
    /// Copies that were rewritten (primary first).
    pub written: Vec<EnvCopy>,
    /// An unreadable copy was among them.
    pub repaired: bool,
}

impl Change {
    pub fn wrote(&self) -> bool {
        !self.written.is_empty()
    }
}

/// GRUB's environment in the two copies on an ESP directory.
pub struct BootEnv {
    dir: PathBuf,
    prepare: Option<PrepareHook>,
    hook: Option<WriteHook>,
}

impl BootEnv {
    pub fn new(esp_dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: esp_dir.into(),
            prepare: None,
            hook: None,
        }
    }

    /// Runs `f` once before a transition writes anything.
    pub fn before_write(mut self, f: PrepareHook) -> Self {
        self.prepare = Some(f);
        self
    }

    /// Test hook: runs after each step of writing a copy.
    #[doc(hidden)]
    pub fn with_write_hook(mut self, f: WriteHook) -> Self {
        self.hook = Some(f);
        self
    }

    pub fn path(&self, copy: EnvCopy) -> PathBuf {
        self.dir.join(copy.rel_path())
    }

    fn read_copy(&self, copy: EnvCopy) -> Result<Vars, ReadError> {
        let rel = copy.rel_path();
        let mut buf = Vec::with_capacity(BLOCK_SIZE);
        match File::open(self.path(copy)) {
            Ok(f) => f
                // A bit more than a block is enough to tell the size is wrong.
                .take(BLOCK_SIZE as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(|e| ReadError::Io(rel, e.to_string()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::Missing(rel)),
            Err(e) => return Err(ReadError::Io(rel, e.to_string())),
        };
        parse(&buf).map_err(|e| ReadError::Block(rel, e))
    }

    /// Reads both copies. Never fails: see [`Status::source`] and [`Status::problem`].
    pub fn status(&self) -> Status {
        Status {
            primary: self.read_copy(EnvCopy::Primary),
            backup: self.read_copy(EnvCopy::Backup),
        }
    }

    fn step(&self, step: WriteStep, path: &Path) -> Result<(), BootError> {
        match &self.hook {
            Some(h) => h(step, path).map_err(|e| BootError::Io(path.to_path_buf(), e)),
            None => Ok(()),
        }
    }

    /// New file beside the copy, fsync, rename over it, fsync the directory, read
    /// back and compare.
    fn write_copy(&self, copy: EnvCopy, bytes: &[u8]) -> Result<(), BootError> {
        let path = self.path(copy);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| BootError::Io(p, e)
        };
        let new = path.with_extension(match copy {
            EnvCopy::Primary => "new",
            EnvCopy::Backup => "bak.new",
        });
        let mut f = File::create(&new).map_err(io(&new))?;
        f.write_all(bytes).map_err(io(&new))?;
        f.sync_all().map_err(io(&new))?;
        drop(f);
        self.step(WriteStep::NewWritten, &path)?;
        fs::rename(&new, &path).map_err(io(&path))?;
        self.step(WriteStep::Renamed, &path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        keel_core::store::sync_dir(dir).map_err(|e| match e {
            keel_core::StoreError::Io { path, source } => BootError::Io(path, source),
            other => BootError::Prepare(other.to_string()),
        })?;
        self.step(WriteStep::DirSynced, &path)?;
        let back = fs::read(&path).map_err(io(&path))?;
        if back != bytes {
            return Err(BootError::Mismatch(path));
        }
        self.step(WriteStep::Verified, &path)
    }

    /// Reads, applies `f` to the variables in force, and writes each copy whose
    /// variables differ from the result (an unreadable one always does).
    pub fn transition(
        &self,
        f: impl FnOnce(&Status, &mut Vars) -> Result<(), BootError>,
    ) -> Result<Change, BootError> {
        let before = self.status();
        let mut vars = before.vars();
        f(&before, &mut vars)?;
        let bytes = serialize(&vars)?;
        let stale: Vec<EnvCopy> = [
            (EnvCopy::Primary, &before.primary),
            (EnvCopy::Backup, &before.backup),
        ]
        .into_iter()
        .filter(|(_, read)| read.as_ref().ok() != Some(&vars))
        .map(|(c, _)| c)
        .collect();
        if !stale.is_empty() {
            if let Some(prepare) = &self.prepare {
                prepare().map_err(BootError::Prepare)?;
            }
        }
        let mut repaired = false;
        for copy in &stale {
            self.write_copy(*copy, &bytes)?;
            let was = match copy {
                EnvCopy::Primary => &before.primary,
                EnvCopy::Backup => &before.backup,
            };
            repaired |= was.is_err();
        }
        Ok(Change {
            before,
            vars,
            written: stale,
            repaired,
        })
    }

    /// Asks for a factory reset at the next boot (`keel-reset early` carries it out).
    pub fn request_reset(&self, power_off: bool) -> Result<Change, BootError> {
        self.transition(|_, v| {
            v.insert(RESET_KEY.into(), "1".into());
            if power_off {
                v.insert(POWEROFF_KEY.into(), "1".into());
            } else {
                v.remove(POWEROFF_KEY);
            }
            Ok(())
        })
    }

    /// The reset was carried out.
    pub fn clear_reset(&self) -> Result<Change, BootError> {
        self.transition(|_, v| {
            v.remove(RESET_KEY);
            v.remove(POWEROFF_KEY);
            Ok(())
        })
    }

    /// Boots `slot` for up to `tries` boots (GRUB counts down before each); unless
    /// it is marked good in one of them, the good slot boots again. Call after the
    /// slot is written and verified (and after `keel-boot-ok.service` has run this
    /// boot: marking good ends any trial). A slot being replaced is no longer a
    /// rollback target.
    pub fn arm_trial(&self, slot: Slot, tries: u8) -> Result<Change, BootError> {
        if !(1..=MAX_TRIES).contains(&tries) {
            return Err(BootError::Tries(tries));
        }
        self.transition(|st, v| {
            if st.good() == slot {
                return Err(BootError::TrialOfGood(slot));
            }
            v.insert(TRY_KEY.into(), slot.as_str().into());
            v.insert(TRIES_KEY.into(), tries.to_string());
            if v.get(PREV_KEY).map(String::as_str) == Some(slot.as_str()) {
                v.remove(PREV_KEY);
            }
            Ok(())
        })
    }

    /// `slot` reached a healthy console: it becomes the good slot (the old good one
    /// is recorded in `keel_prev`) and any trial ends. Rewrites a damaged or stale
    /// copy; writes nothing when nothing changes and both copies are fine.
    pub fn mark_good(&self, slot: Slot) -> Result<Change, BootError> {
        self.transition(|st, v| {
            let old = st.good();
            if old != slot {
                v.insert(PREV_KEY.into(), old.as_str().into());
            }
            v.insert(GOOD_KEY.into(), slot.as_str().into());
            v.remove(TRY_KEY);
            v.remove(TRIES_KEY);
            Ok(())
        })
    }

    /// Drops a trial: the good slot boots next.
    pub fn cancel_trial(&self) -> Result<Change, BootError> {
        self.transition(|_, v| {
            v.remove(TRY_KEY);
            v.remove(TRIES_KEY);
            Ok(())
        })
    }

    /// Makes the previously good slot the good one again (it boots next). The slot
    /// rolled away from is no longer a rollback target.
    pub fn rollback(&self) -> Result<Change, BootError> {
        self.transition(|st, v| {
            let prev = st.previous_good().ok_or(BootError::NoRollback)?;
            v.insert(GOOD_KEY.into(), prev.as_str().into());
            v.remove(PREV_KEY);
            v.remove(TRY_KEY);
            v.remove(TRIES_KEY);
            Ok(())
        })
    }
}

/// The state file's content: `seen` is what was read this boot (source,
/// problem), `now` the variables in force after any write.
pub fn boot_state(
    seen: &Status,
    now: &Status,
    repaired: bool,
    running: Option<Slot>,
    written_by: &str,
) -> BootState {
    BootState {
        source: seen.source(),
        problem: seen.problem(),
        repaired,
        good_slot: now.good().as_str().into(),
        trial: now.trial().map(|(slot, tries_left)| BootTrial {
            slot: slot.as_str().into(),
            tries_left,
        }),
        running_slot: running.map(|s| s.as_str().into()),
        reset_requested: now.reset().is_some(),
        previous_good_slot: now.previous_good().map(|s| s.as_str().into()),
        written_by: written_by.into(),
    }
}

/// The state when the ESP could not be mounted: nothing read, no reset assumed.
pub fn unavailable_state(problem: String, running: Option<Slot>, written_by: &str) -> BootState {
    BootState {
        source: BootEnvSource::Unavailable,
        problem: Some(problem),
        good_slot: Slot::A.as_str().into(),
        running_slot: running.map(|s| s.as_str().into()),
        written_by: written_by.into(),
        ..BootState::default()
    }
}

/// Writes the state file (directory 0755, file 0644). The file is in `/run`, so it
/// describes this boot only: a problem recorded earlier in this boot (say by
/// `keel-reset early`) stays, so the admin still sees it after a later step found
/// everything fine; a new, different problem is added after it ("earlier; new").
pub fn record_state(path: &Path, mut state: BootState) -> Result<(), keel_core::StoreError> {
    if let Ok(Some(earlier)) = keel_core::store::read_json::<BootState>(path) {
        match (earlier.problem, &state.problem) {
            (Some(old), None) => {
                state.problem = Some(old);
                state.source = earlier.source;
                state.repaired |= earlier.repaired;
            }
            (Some(old), Some(new)) if !new.contains(&old) && !old.contains(new.as_str()) => {
                state.problem = Some(format!("{old}; {new}"));
            }
            (Some(old), Some(new)) if old.contains(new.as_str()) => {
                state.problem = Some(old);
            }
            _ => {}
        }
    }
    if let Some(dir) = path.parent() {
        keel_core::store::ensure_dir(dir, 0o755)?;
    }
    keel_core::store::write_json(path, &state, 0o644)
}
