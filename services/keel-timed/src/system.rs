//! What the running system says about time: the sync daemon's state, the
//! kernel's sync flag, the boot id, and setting the clock by hand.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use keel_api::DaemonSync;

/// Where systemd-timesyncd leaves its traces.
#[derive(Debug, Clone)]
pub struct TimesyncdPaths {
    /// Its RuntimeDirectory (`/run/systemd/timesync`): present while it runs.
    pub run_dir: PathBuf,
    /// Touched on each successful synchronization (systemd-timesyncd.service(8)).
    pub synchronized: PathBuf,
}

impl Default for TimesyncdPaths {
    fn default() -> Self {
        Self {
            run_dir: PathBuf::from("/run/systemd/timesync"),
            synchronized: PathBuf::from("/run/systemd/timesync/synchronized"),
        }
    }
}

/// timesyncd's state from its files. Without D-Bus on the image,
/// `timedatectl show-timesync` cannot ask it; the flag file is its documented
/// signal (the same one systemd-time-wait-sync uses).
pub fn daemon_sync(paths: &TimesyncdPaths) -> DaemonSync {
    let flag = std::fs::metadata(&paths.synchronized).ok();
    DaemonSync {
        name: "systemd-timesyncd".into(),
        running: paths.run_dir.is_dir(),
        synchronized: flag.is_some(),
        last_sync: flag
            .and_then(|m| m.modified().ok())
            .map(crate::verdict::rfc3339),
        kernel_synchronized: kernel_synchronized(),
    }
}

/// The kernel's own flag, as `timedatectl` reports "System clock synchronized":
/// adjtimex (read-only, mode 0) answers TIME_ERROR while STA_UNSYNC is set, which
/// every NTP daemon clears while it disciplines the clock.
pub fn kernel_synchronized() -> bool {
    // SAFETY: a zeroed timex with modes = 0 only reads; the kernel fills it in.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    state >= 0 && state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0
}

/// This boot's id: a hand-set time from an earlier boot may not have survived.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Sets the system clock (needs CAP_SYS_TIME). Tests substitute their own.
pub trait ClockSetter: Send + Sync {
    fn set(&self, to: SystemTime) -> std::io::Result<()>;
}

/// The real clock.
pub struct SystemClock;

impl ClockSetter for SystemClock {
    fn set(&self, to: SystemTime) -> std::io::Result<()> {
        let d = to
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| std::io::Error::other("time before 1970"))?;
        let secs = i64::try_from(d.as_secs()).map_err(std::io::Error::other)?;
        let ts = nix::sys::time::TimeSpec::new(secs, i64::from(d.subsec_nanos()));
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
            .map_err(std::io::Error::from)
    }
}

/// Creates an empty file and its directory, as timesyncd does with its flag
/// (for tests that stand in for it).
pub fn touch(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesyncd_state_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let paths = TimesyncdPaths {
            run_dir: dir.path().join("timesync"),
            synchronized: dir.path().join("timesync/synchronized"),
        };
        let s = daemon_sync(&paths);
        assert!(!s.running && !s.synchronized && s.last_sync.is_none());
        std::fs::create_dir(&paths.run_dir).unwrap();
        assert!(daemon_sync(&paths).running);
        touch(&paths.synchronized).unwrap();
        let s = daemon_sync(&paths);
        assert!(s.synchronized && s.last_sync.is_some());
        assert_eq!(s.name, "systemd-timesyncd");
    }

    #[test]
    fn boot_id_is_read() {
        assert_eq!(boot_id().len(), 36);
    }
}
