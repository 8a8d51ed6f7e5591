//! The update service: install (clock gate, verify, write, read back, arm), the
//! outcome of a trial after the reboot, rollback, and the status.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use keel_api::{
    ClockGate, InstallAnswer, OutcomeKind, RollbackRequest, SlotInfo, UpdateOutcome, UpdatePhase,
    UpdateProgress, UpdateStatus, ROLLBACK_CONFIRMATION,
};
use keel_boot::{Esp, Slot};
use keel_bundle::{check_installable, Kind, Timestamp, TrustedKeys, Verifier, Version};
use tokio::sync::mpsc;

use crate::slot::{write_and_read_back, SlotDevice, StreamError, StreamEvents};
use crate::state::{PendingTrial, SlotContent, SlotRecord, UpdateState};

/// The product every bundle must be made for.
pub const PRODUCT: &str = "keel";
/// After a refusal the rest of an upload is read and dropped (so the client gets
/// the answer instead of a broken pipe), up to this much; then the connection closes.
pub const DRAIN_LIMIT: u64 = 1 << 30;
/// A status re-reads GRUB's environment (while a trial is pending) at most this often.
pub const BOOT_REREAD: Duration = Duration::from_secs(5);
/// How long the clock gate may take (keel-timed may measure first).
pub const GATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Unmerge and merge again, by the unit that merges at boot (keel-update's own
/// mount namespace would hide a merge it did itself).
pub const SYSEXT_REFRESH: &str = "systemctl restart systemd-sysext.service";

pub type RebootFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
/// Test hook: runs before each written range of the slot is read back.
pub type ReadBackHook = Arc<dyn Fn(&Path) + Send + Sync>;

#[derive(Clone)]
pub struct Config {
    /// `state.json` lives here (`/data/update`, 0700 root).
    pub state_dir: PathBuf,
    /// Trusted update keys (`*.pub`); none means every bundle is refused.
    pub keys_dir: PathBuf,
    /// `VERSION_ID=` is the running version.
    pub os_release: PathBuf,
    /// `keel.slot=` is the running slot.
    pub cmdline: PathBuf,
    /// Slot device path, `{slot}` replaced by `a` or `b`.
    pub slot_device: String,
    /// A directory laid out like the ESP instead of mounting it (tests).
    pub esp_dir: Option<PathBuf>,
    /// keel-boot's state file for the console, rewritten after our transitions.
    pub boot_state_file: Option<PathBuf>,
    /// keel-timed's socket for the clock gate; `None` skips the gate (tests only).
    pub timed_socket: Option<PathBuf>,
    pub boot_id_file: PathBuf,
    /// Boots the new slot gets to become healthy.
    pub tries: u8,
    pub reboot: RebootFn,
    pub before_read_back: Option<ReadBackHook>,
    /// The image's CA roots (PEM bundle) for the feed server; a missing file
    /// leaves only the extra CA of the settings.
    pub ca_bundle: PathBuf,
    /// App bundles' images and extension links (`apps.rs`).
    pub apps_dir: PathBuf,
    /// Where merged extensions show (`/usr`).
    pub usr_dir: PathBuf,
    /// Loop devices' backing files (`/sys/block`): which image is merged.
    pub block_sysfs: Option<PathBuf>,
    /// Reads an app image's extension-release before activation.
    pub unsquashfs: String,
    /// Merges the extension links again (systemd-sysext, in the host's namespace).
    pub sysext_refresh: RebootFn,
}

impl Config {
    /// The image's defaults below `state_dir`; reboots with systemctl.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            keys_dir: "/usr/share/keel/update-keys".into(),
            os_release: "/etc/os-release".into(),
            cmdline: "/proc/cmdline".into(),
            slot_device: "/dev/disk/by-partlabel/root-{slot}".into(),
            esp_dir: None,
            boot_state_file: Some(keel_boot::STATE_FILE.into()),
            timed_socket: Some("/run/keel/timed/api.sock".into()),
            boot_id_file: "/proc/sys/kernel/random/boot_id".into(),
            tries: 3,
            reboot: Arc::new(|| run_command("systemctl reboot --no-block")),
            before_read_back: None,
            ca_bundle: "/etc/ssl/certs/ca-certificates.crt".into(),
            apps_dir: "/data/apps".into(),
            usr_dir: "/usr".into(),
            block_sysfs: Some("/sys/block".into()),
            unsquashfs: "unsquashfs".into(),
            sysext_refresh: Arc::new(|| run_command(SYSEXT_REFRESH)),
        }
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    /// The online settings (feed URL, proxy, extra CA).
    pub fn settings_file(&self) -> PathBuf {
        self.state_dir.join("settings.json")
    }

    /// The appliance identity key that signs download keys.
    pub fn identity_file(&self) -> PathBuf {
        self.state_dir.join("identity.secret")
    }

    pub fn merge_view(&self) -> crate::apps::MergeView<'_> {
        crate::apps::MergeView {
            usr: &self.usr_dir,
            block_sysfs: self.block_sysfs.as_deref(),
            unsquashfs: &self.unsquashfs,
        }
    }

    pub fn slot_path(&self, slot: Slot) -> PathBuf {
        PathBuf::from(self.slot_device.replace("{slot}", slot.as_str()))
    }
}

/// Runs a command line split on spaces (the reboot command).
pub fn run_command(line: &str) -> Result<(), String> {
    let mut parts = line.split_whitespace();
    let prog = parts.next().ok_or("empty command")?;
    let status = std::process::Command::new(prog)
        .args(parts)
        .status()
        .map_err(|e| format!("{line}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{line}: {status}"))
    }
}

/// How a request failed; the API maps it to the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not a bundle, damaged, not signed by a trusted key (400).
    BadBundle,
    /// Valid but not allowed here and now: policy, clock gate, keys, trial (422).
    Refused,
    /// Another install runs (409).
    Busy,
    /// Bad request (400).
    BadRequest,
    /// Reading, writing, read-back or arming failed (500).
    Failed,
    /// The feed server or the proxy could not be reached or broke off (502).
    Network,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateError {
    pub kind: ErrorKind,
    pub message: String,
}

impl std::fmt::Display for UpdateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UpdateError {}

pub(crate) fn err(kind: ErrorKind, message: impl Into<String>) -> UpdateError {
    UpdateError {
        kind,
        message: message.into(),
    }
}

/// What GRUB's environment says, as far as keel-update needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootView {
    pub good: Slot,
    pub trial: Option<(Slot, u8)>,
    pub prev: Option<Slot>,
}

impl From<&keel_boot::Status> for BootView {
    fn from(s: &keel_boot::Status) -> Self {
        Self {
            good: s.good(),
            trial: s.trial(),
            prev: s.previous_good(),
        }
    }
}

/// `VERSION_ID=` of Keel's os-release (`ID=keel`); one reader for every service.
pub use keel_core::release::os_release_version;

fn now() -> String {
    Timestamp::now().to_string()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The upload as a blocking reader for the verifier: chunks from the request
/// handler, end of file when it drops its sender.
struct ChunkReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// Clears the busy flag when an install ends, however it ends.
struct Busy<'a>(&'a AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Counts work of an install or rollback that may run on without its request
/// until it ends: the blocking task (hyper drops the request's future when the
/// client goes away, the task goes on) or the reboot after the answer.
/// [`Updater::busy`] while any runs; no new install or rollback begins while a
/// blocking task does.
struct Working {
    upd: Arc<Updater>,
    reboot: bool,
}

impl Working {
    fn task(upd: &Arc<Updater>) -> Self {
        upd.tasks.fetch_add(1, Ordering::SeqCst);
        Self {
            upd: upd.clone(),
            reboot: false,
        }
    }

    fn reboot(upd: &Arc<Updater>) -> Self {
        upd.reboots.fetch_add(1, Ordering::SeqCst);
        Self {
            upd: upd.clone(),
            reboot: true,
        }
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        let n = if self.reboot {
            &self.upd.reboots
        } else {
            &self.upd.tasks
        };
        n.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Updater {
    cfg: Config,
    running: Option<Slot>,
    running_version: Option<String>,
    boot_id: String,
    state: Mutex<UpdateState>,
    progress: Mutex<UpdateProgress>,
    boot: Mutex<Option<BootView>>,
    /// When a status last re-read the boot environment (at most every few seconds).
    boot_read: Mutex<Option<Instant>>,
    busy: AtomicBool,
    /// Blocking tasks of installs and rollbacks ([`Working`]).
    tasks: AtomicUsize,
    /// Reboots about to run after their answer ([`Working`]).
    reboots: AtomicUsize,
    /// One ESP user at a time (mounting, reading, a transition).
    esp: Mutex<()>,
    /// Online check, download, install all in order (`online.rs`, `chain.rs`).
    online: crate::online::Online,
}

impl Updater {
    /// Reads what this boot is (slot, version, boot id), the state file and GRUB's
    /// environment, and settles the outcome of a trial armed in an earlier boot.
    pub fn start(cfg: Config) -> Arc<Self> {
        let cmdline = std::fs::read_to_string(&cfg.cmdline).unwrap_or_default();
        let running = Slot::from_cmdline(&cmdline);
        let running_version = std::fs::read_to_string(&cfg.os_release)
            .ok()
            .as_deref()
            .and_then(os_release_version);
        let boot_id = std::fs::read_to_string(&cfg.boot_id_file)
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let state = UpdateState::load(&cfg.state_file());
        let online = crate::online::Online::load(&cfg);
        let upd = Arc::new(Self {
            cfg,
            running,
            running_version,
            boot_id,
            state: Mutex::new(state),
            progress: Mutex::new(UpdateProgress::default()),
            boot: Mutex::new(None),
            boot_read: Mutex::new(None),
            busy: AtomicBool::new(false),
            tasks: AtomicUsize::new(0),
            reboots: AtomicUsize::new(0),
            esp: Mutex::new(()),
            online,
        });
        match (upd.running, &upd.running_version) {
            (Some(slot), Some(version)) => {
                let mut st = lock(&upd.state);
                let r = st.slot_mut(slot.as_str());
                if r.content != SlotContent::Valid || r.version.as_ref() != Some(version) {
                    *r = SlotRecord {
                        content: SlotContent::Valid,
                        version: Some(version.clone()),
                        note: Some("running".into()),
                        ..SlotRecord::default()
                    };
                    upd.save(&st);
                }
            }
            (None, _) => tracing::warn!(
                "no keel.slot= in {}: installs and rollbacks are refused",
                upd.cfg.cmdline.display()
            ),
            (_, None) => tracing::warn!(
                "no VERSION_ID= in {}: installs are refused",
                upd.cfg.os_release.display()
            ),
        }
        upd.refresh_boot(true);
        tracing::info!(
            running = ?upd.running.map(|s| s.as_str()),
            version = ?upd.running_version,
            "keel-update started"
        );
        upd
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn save(&self, st: &UpdateState) {
        if let Err(e) = st.save(&self.cfg.state_file()) {
            tracing::error!("saving the update state: {e}");
        }
    }

    pub(crate) fn online(&self) -> &crate::online::Online {
        &self.online
    }

    pub fn running_version(&self) -> Option<&str> {
        self.running_version.as_deref()
    }

    /// Changes the state under its lock and saves it.
    pub(crate) fn update_state<R>(&self, f: impl FnOnce(&mut UpdateState) -> R) -> R {
        let mut st = lock(&self.state);
        let r = f(&mut st);
        self.save(&st);
        r
    }

    pub(crate) fn set_progress(&self, f: impl FnOnce(&mut UpdateProgress)) {
        f(&mut lock(&self.progress));
    }

    /// Reads GRUB's environment (mounting the ESP for the moment). `wait`: take
    /// the ESP even if someone holds it; otherwise skip when it is busy.
    fn read_boot(&self, wait: bool) -> Option<Result<keel_boot::Status, String>> {
        let _esp = if wait {
            lock(&self.esp)
        } else {
            self.esp.try_lock().ok()?
        };
        Some(
            Esp::open(self.cfg.esp_dir.as_deref())
                .map(|esp| esp.env().status())
                .map_err(|e| e.to_string()),
        )
    }

    /// Re-reads the boot view and settles a pending trial.
    fn refresh_boot(&self, wait: bool) {
        match self.read_boot(wait) {
            Some(Ok(st)) => {
                let view = BootView::from(&st);
                *lock(&self.boot) = Some(view);
                self.resolve(&view);
            }
            Some(Err(e)) => tracing::warn!("boot environment not read: {e}"),
            None => {}
        }
    }

    /// Compares a pending trial with the boot state: healthy, rolled back, or
    /// still running (no outcome yet).
    fn resolve(&self, view: &BootView) {
        let Some(running) = self.running else {
            return;
        };
        let mut st = lock(&self.state);
        let Some(p) = st.pending.clone() else {
            return;
        };
        let slot = Slot::parse(&p.slot);
        let trial_on = slot.is_some() && view.trial.map(|(s, _)| s) == slot;
        if !self.boot_id.is_empty() && p.boot_id == self.boot_id {
            // Armed in this boot: the outcome comes after the reboot.
            if !trial_on {
                tracing::warn!(
                    slot = p.slot,
                    "the trial of {} is no longer armed: dropped without an outcome",
                    p.version
                );
                st.pending = None;
                self.save(&st);
            }
            return;
        }
        let kind = if Some(running) == slot {
            if view.good != running {
                return; // still on trial: keel-boot-ok has not marked it good
            }
            OutcomeKind::Installed
        } else if !trial_on {
            OutcomeKind::RolledBack
        } else {
            return; // the trial boot has not happened yet (or fell back): not over
        };
        let message = match kind {
            OutcomeKind::Installed => format!("updated from {} to {}", p.from_version, p.version),
            _ => format!(
                "update to {} failed its health check, running {} again",
                p.version, p.from_version
            ),
        };
        if kind == OutcomeKind::RolledBack {
            let r = st.slot_mut(&p.slot);
            r.note = Some(format!("{} failed its health check", p.version));
            tracing::error!("{message}");
        } else {
            tracing::info!("{message}");
        }
        st.last_outcome = Some(UpdateOutcome {
            kind,
            from_version: p.from_version.clone(),
            to_version: p.version.clone(),
            message,
            at: now(),
        });
        st.pending = None;
        self.save(&st);
    }

    pub fn status(&self) -> UpdateStatus {
        let pending = lock(&self.state).pending.is_some();
        if pending && !self.busy.load(Ordering::SeqCst) {
            let due = {
                let mut last = lock(&self.boot_read);
                let due = last.is_none_or(|t| t.elapsed() >= BOOT_REREAD);
                if due {
                    *last = Some(Instant::now());
                }
                due
            };
            if due {
                self.refresh_boot(false);
            }
        }
        let view = *lock(&self.boot);
        let st = lock(&self.state);
        let progress = lock(&self.progress).clone();
        let (running, other) = match self.running {
            Some(r) => {
                let o = r.other();
                (
                    SlotInfo {
                        slot: r.as_str().into(),
                        version: self.running_version.clone(),
                        good: view.is_some_and(|v| v.good == r),
                    },
                    SlotInfo {
                        slot: o.as_str().into(),
                        version: st.valid_version(o.as_str()),
                        good: view.is_some_and(|v| v.good == o),
                    },
                )
            }
            None => (
                SlotInfo {
                    slot: "unknown".into(),
                    version: self.running_version.clone(),
                    good: false,
                },
                SlotInfo {
                    slot: "unknown".into(),
                    ..SlotInfo::default()
                },
            ),
        };
        let rollback_to = match (self.running, view) {
            (Some(r), Some(v)) if rollback_possible(r, &v) => st.valid_version(r.other().as_str()),
            _ => None,
        };
        UpdateStatus {
            running,
            other,
            progress,
            last_outcome: st.last_outcome.clone(),
            rollback_to,
            chain: st.chain.clone(),
            apps: self.apps_status(),
        }
    }

    /// An install or a rollback is running, or work of one still ends (its
    /// blocking task, the reboot after the answer): the service must not exit now.
    pub fn busy(&self) -> bool {
        self.installing() || self.reboots.load(Ordering::SeqCst) > 0 || self.online.working()
    }

    /// An install or rollback (or its blocking task) runs.
    pub(crate) fn installing(&self) -> bool {
        self.busy.load(Ordering::SeqCst) || self.tasks.load(Ordering::SeqCst) > 0
    }

    /// The one install or rollback at a time: also not while the blocking task of
    /// one whose client went away still runs (it may still write and arm).
    fn try_begin(&self) -> Option<Busy<'_>> {
        self.busy
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()?;
        let busy = Busy(&self.busy);
        (self.tasks.load(Ordering::SeqCst) == 0).then_some(busy)
    }

    /// The clock gate of keel-timed: refused, or unreachable, means no install.
    async fn clock_gate(&self) -> Result<Option<String>, UpdateError> {
        self.clock_gate_for("install").await
    }

    /// The clock gate for `what` (an install, a check, a download key): signature
    /// and feed validity periods are judged by this clock.
    pub(crate) async fn clock_gate_for(&self, what: &str) -> Result<Option<String>, UpdateError> {
        let Some(sock) = &self.cfg.timed_socket else {
            return Ok(None);
        };
        let client = keel_core::local_api::Client::new(sock);
        let answer = tokio::time::timeout(
            GATE_TIMEOUT,
            client.call::<(), ClockGate>("GET", "/gate", None),
        )
        .await;
        let fix = "Start keel-timed (systemctl start keel-timed) and try again.";
        match answer {
            Err(_) => Err(err(
                ErrorKind::Refused,
                format!(
                    "{what} refused: the clock could not be checked, keel-timed did not answer \
                     within {} s. {fix}",
                    GATE_TIMEOUT.as_secs()
                ),
            )),
            Ok(Err(e)) => Err(err(
                ErrorKind::Refused,
                format!(
                    "{what} refused: the clock could not be checked, keel-timed is unreachable \
                     ({e}). {fix}"
                ),
            )),
            Ok(Ok(g)) if !g.allowed => Err(err(
                ErrorKind::Refused,
                format!(
                    "{what} refused by the clock gate: {}",
                    g.reason
                        .unwrap_or_else(|| "the clock is not right (no reason given)".into())
                ),
            )),
            Ok(Ok(g)) => Ok(g.warning),
        }
    }

    /// Installs the bundle in `body` (read once, streamed into the inactive slot).
    pub async fn install(
        self: &Arc<Self>,
        body: Body,
        content_length: Option<u64>,
        reboot: bool,
    ) -> Result<InstallAnswer, UpdateError> {
        self.install_with(body, content_length, reboot, None, "upload")
            .await
    }

    /// [`Updater::install`] of a bundle the verified feed announced (`expect`):
    /// its signed manifest must be that entry (size, hash, version) before a byte
    /// is written. `source` names the body in errors ("upload", "download").
    pub async fn install_with(
        self: &Arc<Self>,
        body: Body,
        content_length: Option<u64>,
        reboot: bool,
        expect: Option<keel_bundle::FeedEntry>,
        source: &'static str,
    ) -> Result<InstallAnswer, UpdateError> {
        let Some(busy) = self.try_begin() else {
            let _ = drain(body, None, None).await;
            return Err(err(
                ErrorKind::Busy,
                "another install is running; try again when it has finished",
            ));
        };
        self.set_progress(|p| {
            *p = UpdateProgress {
                phase: UpdatePhase::Download,
                bytes_total: content_length.unwrap_or(0),
                ..UpdateProgress::default()
            }
        });
        let result = match self.clock_gate().await {
            Err(e) => {
                let _ = drain(body, None, None).await;
                Err(e)
            }
            Ok(warning) => {
                if let Some(w) = warning {
                    tracing::warn!("clock gate: {w}");
                }
                let (tx, rx) = mpsc::channel::<Bytes>(4);
                let upd = self.clone();
                let work = Working::task(self);
                let worker = tokio::task::spawn_blocking(move || {
                    let _work = work;
                    upd.run_install(
                        ChunkReader {
                            rx,
                            cur: Bytes::new(),
                        },
                        expect.as_ref(),
                    )
                });
                let pumped = drain(body, Some(tx), Some(self)).await;
                let result = match worker.await {
                    Ok(r) => r,
                    Err(e) => Err(err(ErrorKind::Failed, format!("install task failed: {e}"))),
                };
                match (result, pumped) {
                    (Err(mut e), Err(upload)) => {
                        e.message = format!("{source} interrupted ({upload}): {}", e.message);
                        Err(e)
                    }
                    (r, _) => r,
                }
            }
        };
        // An app is active at once: nothing to reboot for.
        let reboot = reboot && result.as_ref().is_ok_and(|a| a.app.is_none());
        match &result {
            Ok(a) if a.app.is_some() => {}
            Ok(a) => {
                tracing::info!(version = a.version, slot = a.slot, "installed; trial armed");
                if reboot {
                    let upd = self.clone();
                    let work = Working::reboot(self);
                    tokio::spawn(async move {
                        let _work = work;
                        // Answer first: the reply is on its way before systemd stops us.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        upd.reboot_now();
                    });
                }
            }
            Err(e) => {
                tracing::error!("install failed: {}", e.message);
                self.set_progress(|p| {
                    p.phase = UpdatePhase::Idle;
                    p.error = Some(e.message.clone());
                });
            }
        }
        drop(busy);
        release_memory();
        result.map(|mut a| {
            a.rebooting = reboot;
            a
        })
    }

    fn reboot_now(&self) {
        tracing::info!("rebooting");
        if let Err(e) = (self.cfg.reboot)() {
            tracing::error!("reboot failed: {e}");
            self.set_progress(|p| p.error = Some(format!("reboot failed: {e}")));
        }
    }

    /// The blocking part of an install, on its own thread: verify, write, read
    /// back, arm. Any error leaves the trial unarmed.
    fn run_install(
        &self,
        reader: ChunkReader,
        expect: Option<&keel_bundle::FeedEntry>,
    ) -> Result<InstallAnswer, UpdateError> {
        let refused = |m: String| err(ErrorKind::Refused, m);
        let running = self.running.ok_or_else(|| {
            refused(format!(
                "install refused: the running slot is unknown (no keel.slot= in {})",
                self.cfg.cmdline.display()
            ))
        })?;
        let target = running.other();
        let running_version = self.running_version.clone().ok_or_else(|| {
            refused(format!(
                "install refused: the running version is unknown (no VERSION_ID= in {})",
                self.cfg.os_release.display()
            ))
        })?;
        let installed_version: Version = running_version.parse().map_err(|e| {
            refused(format!(
                "install refused: the running version {running_version:?} is not x.y.z ({e})"
            ))
        })?;
        let keys = TrustedKeys::load_dir(&self.cfg.keys_dir).map_err(|e| {
            refused(format!(
                "install refused: no trusted update keys ({e}); every bundle is refused"
            ))
        })?;
        if keys.is_empty() {
            return Err(refused(format!(
                "install refused: no trusted update keys in {}; every bundle is refused",
                self.cfg.keys_dir.display()
            )));
        }

        // Verify: signature and manifest from the first bytes.
        let bundle = Verifier::new(&keys, PRODUCT, Timestamp::now())
            .open(reader)
            .map_err(|e| bundle_error(&e))?;
        let m = bundle.manifest().clone();
        let version = m.version.to_string();
        self.set_progress(|p| {
            p.phase = UpdatePhase::Verify;
            p.version = Some(version.clone());
        });
        if let Some(e) = expect {
            crate::online::check_announced(e, &m)?;
        }
        if m.kind == Kind::App {
            let name = m.component().to_string();
            let installed = self.installed_components(installed_version);
            check_installable(&m, &installed, Timestamp::now(), self.app_space()?)
                .map_err(|e| refused(format!("bundle refused: {e}")))?;
            return self.install_app(bundle, &name);
        }
        let dev = SlotDevice::new(self.cfg.slot_path(target));
        let slot_size = dev
            .size()
            .map_err(|e| err(ErrorKind::Failed, format!("slot {target}: {e}")))?;
        let installed = self.installed_components(installed_version);
        check_installable(&m, &installed, Timestamp::now(), slot_size)
            .map_err(|e| refused(format!("bundle refused: {e}")))?;
        dev.check_not_root()
            .map_err(|e| err(ErrorKind::Failed, format!("slot {target}: {e}")))?;
        let running_dev = self.cfg.slot_path(running);
        if std::fs::canonicalize(&dev.path).ok() == std::fs::canonicalize(&running_dev).ok() {
            return Err(err(
                ErrorKind::Failed,
                format!(
                    "slot {target}'s device {} is the running slot's ({}): refusing to write it",
                    dev.path.display(),
                    running_dev.display()
                ),
            ));
        }
        self.check_boot_for_install(running, target)?;

        // Write: from here on the target slot holds nothing bootable until the end.
        {
            let mut st = lock(&self.state);
            *st.slot_mut(target.as_str()) = SlotRecord {
                content: SlotContent::Invalid,
                note: Some(format!("being written with {version} since {}", now())),
                ..SlotRecord::default()
            };
            if st
                .pending
                .as_ref()
                .is_some_and(|p| p.slot == target.as_str())
            {
                st.pending = None;
            }
            st.save(&self.cfg.state_file()).map_err(|e| {
                err(
                    ErrorKind::Failed,
                    format!("recording the update state (nothing written): {e}"),
                )
            })?;
        }
        let result =
            self.write_verify_arm(bundle, &dev, target, running, &running_version, &version);
        if let Err(e) = &result {
            let mut st = lock(&self.state);
            let r = st.slot_mut(target.as_str());
            r.content = SlotContent::Invalid;
            r.note = Some(format!("install of {version} failed: {}", e.message));
            self.save(&st);
        }
        result
    }

    /// Refuses to overwrite the good slot (the running one is on trial), and drops
    /// an older trial of the target slot before a byte of it changes.
    fn check_boot_for_install(&self, running: Slot, target: Slot) -> Result<(), UpdateError> {
        let _esp = lock(&self.esp);
        let esp = Esp::open(self.cfg.esp_dir.as_deref()).map_err(|e| {
            err(
                ErrorKind::Failed,
                format!("install refused: the boot environment cannot be read ({e})"),
            )
        })?;
        let env = esp.env();
        let st = env.status();
        if st.good() != running {
            return Err(err(
                ErrorKind::Refused,
                format!(
                    "install refused: slot {running} runs on trial and is not marked good yet; \
                     slot {target} holds the good version and must not be overwritten. Install \
                     once this version is marked good (after the console came up), or roll back."
                ),
            ));
        }
        if st.trial().map(|(s, _)| s) == Some(target) {
            tracing::info!("an earlier trial of slot {target} is cancelled: the slot is rewritten");
            let change = env.cancel_trial().map_err(|e| {
                err(
                    ErrorKind::Failed,
                    format!("cancelling the earlier trial of slot {target}: {e}"),
                )
            })?;
            let now = env.status();
            *lock(&self.boot) = Some(BootView::from(&now));
            self.record_boot(
                &change.before,
                &now,
                change.repaired,
                "keel-update cancel-trial",
            );
        }
        Ok(())
    }

    fn record_boot(
        &self,
        seen: &keel_boot::Status,
        now: &keel_boot::Status,
        repaired: bool,
        by: &str,
    ) {
        if let Some(path) = &self.cfg.boot_state_file {
            let state = keel_boot::boot_state(seen, now, repaired, self.running, by);
            if let Err(e) = keel_boot::record_state(path, state) {
                tracing::warn!("boot state file: {e}");
            }
        }
    }

    fn write_verify_arm<R: Read>(
        &self,
        bundle: keel_bundle::Bundle<R>,
        dev: &SlotDevice,
        target: Slot,
        running: Slot,
        running_version: &str,
        version: &str,
    ) -> Result<InstallAnswer, UpdateError> {
        let failed = |m: String| err(ErrorKind::Failed, m);
        let m = bundle.manifest().clone();
        let total = m.payload_size;
        self.set_progress(|p| {
            p.phase = UpdatePhase::Write;
            p.bytes_done = 0;
            p.bytes_total = total;
        });
        /// Progress and the read-back hook of one install's write path.
        struct InstallEvents<'a> {
            upd: &'a Updater,
            hook: Option<&'a ReadBackHook>,
            path: &'a Path,
            total: u64,
            read_back: AtomicU64,
        }

        impl StreamEvents for InstallEvents<'_> {
            fn written(&self, done: u64) {
                let checked = self.read_back.load(Ordering::SeqCst);
                self.upd.set_progress(|p| {
                    if done < self.total {
                        p.bytes_done = done;
                    } else {
                        p.phase = UpdatePhase::ReadBack;
                        p.bytes_done = checked;
                    }
                });
            }

            fn before_read_back(&self, _off: u64, _len: usize) {
                if let Some(hook) = self.hook {
                    hook(self.path);
                }
            }

            fn read_back(&self, done: u64) {
                self.read_back.store(done, Ordering::SeqCst);
                self.upd.set_progress(|p| {
                    if p.phase == UpdatePhase::ReadBack {
                        p.bytes_done = p.bytes_done.max(done);
                    }
                });
            }
        }

        // Receive+hash, write and read back+hash run as a pipeline (slot.rs says
        // why); the read-back phase is what is left once the last byte is written.
        let mut payload = bundle.payload();
        let events = InstallEvents {
            upd: self,
            hook: self.cfg.before_read_back.as_ref(),
            path: &dev.path,
            total,
            read_back: AtomicU64::new(0),
        };
        let started = Instant::now();
        let streamed = write_and_read_back(dev, &mut payload, &events);
        let written = match streamed {
            Ok(r) => r,
            Err(StreamError::Source(e)) => {
                let why = match payload.finish() {
                    Err(be) => be.to_string(),
                    Ok(_) => e.to_string(),
                };
                return Err(err(
                    ErrorKind::BadBundle,
                    format!("bundle refused while writing slot {target}: {why}"),
                ));
            }
            Err(StreamError::Slot(e)) => {
                return Err(failed(format!("slot {target}: {e}")));
            }
            Err(StreamError::Mismatch { at }) => {
                return Err(failed(format!(
                    "read-back of slot {target} differs from the bundle (the device returned \
                     other bytes than were written, first at byte {at}): the slot was not armed"
                )));
            }
        };
        tracing::info!(
            "slot {target}: {written} bytes written and read back in {:.3} s",
            started.elapsed().as_secs_f64()
        );
        // Nothing counts as written until the payload reader says it was the signed one.
        let verified = payload
            .finish()
            .map_err(|e| err(ErrorKind::BadBundle, format!("bundle refused: {e}")))?;
        // The device holds what was read from the reader, which hashed exactly those
        // bytes and checked them against the signed digest.
        if written != verified.size() {
            return Err(failed(format!(
                "slot {target}: {written} bytes written, the signed payload has {}: the slot \
                 was not armed",
                verified.size()
            )));
        }

        // Arm the trial boot.
        self.set_progress(|p| {
            p.phase = UpdatePhase::Arm;
            p.bytes_done = 0;
            p.bytes_total = 0;
        });
        let _esp = lock(&self.esp);
        let esp = Esp::open(self.cfg.esp_dir.as_deref())
            .map_err(|e| failed(format!("arming the trial boot: {e}")))?;
        let env = esp.env();
        let change = match env.arm_trial(target, self.cfg.tries) {
            Ok(c) => c,
            Err(e) => {
                // A half-done arm (primary written, backup not) must not boot it.
                if let Err(c) = env.cancel_trial() {
                    tracing::error!("cancelling the half-armed trial: {c}");
                }
                return Err(failed(format!(
                    "arming the trial boot of slot {target} failed: {e}"
                )));
            }
        };
        let armed_at = now();
        {
            let mut st = lock(&self.state);
            *st.slot_mut(target.as_str()) = SlotRecord {
                content: SlotContent::Valid,
                version: Some(version.to_string()),
                sha256: Some(verified.sha256().to_string()),
                written_at: Some(armed_at.clone()),
                note: None,
            };
            st.pending = Some(PendingTrial {
                slot: target.as_str().into(),
                version: version.to_string(),
                from_slot: running.as_str().into(),
                from_version: running_version.to_string(),
                armed_at,
                boot_id: self.boot_id.clone(),
            });
            if let Err(e) = st.save(&self.cfg.state_file()) {
                st.pending = None;
                drop(st);
                if let Err(c) = env.cancel_trial() {
                    tracing::error!("cancelling the trial: {c}");
                }
                return Err(failed(format!(
                    "recording the update state failed ({e}): the trial was cancelled"
                )));
            }
        }
        let now_st = env.status();
        *lock(&self.boot) = Some(BootView::from(&now_st));
        self.record_boot(
            &change.before,
            &now_st,
            change.repaired,
            "keel-update arm-trial",
        );
        self.set_progress(|p| {
            p.phase = UpdatePhase::RebootPending;
            p.bytes_done = total;
            p.bytes_total = total;
            p.error = None;
        });
        Ok(InstallAnswer {
            version: version.to_string(),
            slot: target.as_str().into(),
            rebooting: false,
            app: None,
        })
    }

    /// Boots the previous good version again (the other slot), then reboots.
    pub async fn rollback(
        self: &Arc<Self>,
        req: RollbackRequest,
    ) -> Result<InstallAnswer, UpdateError> {
        if req.confirm != ROLLBACK_CONFIRMATION {
            return Err(err(
                ErrorKind::BadRequest,
                format!("a rollback needs the confirmation {ROLLBACK_CONFIRMATION:?}"),
            ));
        }
        let Some(busy) = self.try_begin() else {
            return Err(err(ErrorKind::Busy, "an install is running"));
        };
        let upd = self.clone();
        let work = Working::task(self);
        let result = tokio::task::spawn_blocking(move || {
            let _work = work;
            upd.run_rollback()
        })
        .await
        .unwrap_or_else(|e| Err(err(ErrorKind::Failed, format!("rollback task failed: {e}"))));
        drop(busy);
        if result.is_ok() {
            let upd = self.clone();
            let work = Working::reboot(self);
            tokio::spawn(async move {
                let _work = work;
                tokio::time::sleep(Duration::from_millis(300)).await;
                upd.reboot_now();
            });
        }
        result
    }

    fn run_rollback(&self) -> Result<InstallAnswer, UpdateError> {
        let none = || err(ErrorKind::Refused, "no previous version to roll back to");
        let running = self.running.ok_or_else(|| {
            err(
                ErrorKind::Refused,
                "rollback refused: the running slot is unknown (no keel.slot=)",
            )
        })?;
        let other = running.other();
        let _esp = lock(&self.esp);
        let esp = Esp::open(self.cfg.esp_dir.as_deref()).map_err(|e| {
            err(
                ErrorKind::Failed,
                format!("rollback refused: the boot environment cannot be read ({e})"),
            )
        })?;
        let env = esp.env();
        let before = env.status();
        let view = BootView::from(&before);
        *lock(&self.boot) = Some(view);
        if !rollback_possible(running, &view) {
            return Err(none());
        }
        let to_version = lock(&self.state)
            .valid_version(other.as_str())
            .ok_or_else(none)?;
        let change = env
            .rollback()
            .map_err(|e| err(ErrorKind::Failed, format!("rollback failed: {e}")))?;
        let now_st = env.status();
        *lock(&self.boot) = Some(BootView::from(&now_st));
        self.record_boot(
            &change.before,
            &now_st,
            change.repaired,
            "keel-update rollback",
        );
        let from_version = self
            .running_version
            .clone()
            .unwrap_or_else(|| "unknown".into());
        let message = format!("rolled back from {from_version} to {to_version} by the admin");
        tracing::info!("{message}");
        let mut st = lock(&self.state);
        st.pending = None;
        st.last_outcome = Some(UpdateOutcome {
            kind: OutcomeKind::RolledBackByAdmin,
            from_version,
            to_version: to_version.clone(),
            message,
            at: now(),
        });
        self.save(&st);
        Ok(InstallAnswer {
            version: to_version,
            slot: other.as_str().into(),
            rebooting: true,
            app: None,
        })
    }
}

/// Gives the install's buffers back to the kernel: glibc keeps freed memory in
/// its arenas (the blocking thread's among them), which would leave an idle
/// service several MiB larger after every install.
fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's arenas.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// The other slot is the previous good one and the running slot is good (no trial).
fn rollback_possible(running: Slot, v: &BootView) -> bool {
    v.good == running && v.prev == Some(running.other()) && v.trial.is_none()
}

fn bundle_error(e: &keel_bundle::Error) -> UpdateError {
    use keel_bundle::Error as E;
    let kind = match e {
        E::NoTrustedKeys
        | E::Expired { .. }
        | E::CreatedInFuture { .. }
        | E::ProductMismatch { .. } => ErrorKind::Refused,
        E::Io(_) => ErrorKind::Failed,
        _ => ErrorKind::BadBundle,
    };
    err(kind, format!("bundle refused: {e}"))
}

/// Reads the request body to its end: forwarding it to the install while that
/// reads, then dropping the rest (up to [`DRAIN_LIMIT`]). Counts the bytes into
/// the progress while the install is still receiving the manifest.
async fn drain(
    mut body: Body,
    tx: Option<mpsc::Sender<Bytes>>,
    upd: Option<&Updater>,
) -> Result<u64, String> {
    let mut tx = tx;
    let mut received = 0u64;
    let mut dropped = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = data.len() as u64;
        received += len;
        if let Some(t) = &tx {
            if t.send(data).await.is_ok() {
                if let Some(u) = upd {
                    u.set_progress(|p| {
                        if p.phase == UpdatePhase::Download {
                            p.bytes_done = received;
                        }
                    });
                }
                continue;
            }
            tx = None;
        }
        dropped += len;
        if dropped > DRAIN_LIMIT {
            break;
        }
    }
    Ok(received)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_paths_from_the_template() {
        let mut c = Config::new("/tmp/x");
        assert_eq!(
            c.slot_path(Slot::B),
            PathBuf::from("/dev/disk/by-partlabel/root-b")
        );
        c.slot_device = "/t/root-{slot}.img".into();
        assert_eq!(c.slot_path(Slot::A), PathBuf::from("/t/root-a.img"));
    }

    #[test]
    fn chunk_reader_ends_when_the_sender_is_gone() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Bytes::from_static(b"abc")).unwrap();
        tx.try_send(Bytes::new()).unwrap();
        tx.try_send(Bytes::from_static(b"de")).unwrap();
        drop(tx);
        let mut r = ChunkReader {
            rx,
            cur: Bytes::new(),
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abcde");
    }
}
