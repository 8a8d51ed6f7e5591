//! Commit-confirm. A change is validated, applied at once and held as *pending*;
//! unless its owner confirms it within the window, netd puts the last confirmed
//! configuration back. Only a confirmed configuration is written to
//! `/data/net/config.json` (atomically), so a crash or reboot during the window
//! also comes back with the old one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keel_api::{NetChangeRequest, NetConfig, NetPending, NetState, NtpServers};
use keel_core::StoreError;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::kernel::{Kernel, KernelError};
use crate::render::SystemFiles;
use crate::validate::{validate, FieldError, ValidationError};

/// Bounds of a confirmation window a caller may ask for.
pub const MIN_WINDOW: u64 = 1;
pub const MAX_WINDOW: u64 = 3600;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Data root: `<data>/net/config.json`, `<data>/net/ntp-servers.json`.
    pub data_dir: PathBuf,
    /// Runtime directory: `pending.json` while a change waits.
    pub run_dir: PathBuf,
    pub files: SystemFiles,
    /// Default confirmation window.
    pub window: Duration,
    /// Re-apply the running configuration this often (links that appear late,
    /// changes made by hand); `None` to apply only on change.
    pub reconcile: Option<Duration>,
}

impl Settings {
    pub fn new(data_dir: &Path, run_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
            files: SystemFiles::default(),
            window: Duration::from_secs(keel_api::NET_CONFIRM_SECONDS),
            reconcile: None,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.data_dir.join("net").join("config.json")
    }

    /// keel-timed reads the NTP server list here (`keel_api::NtpServers`).
    pub fn ntp_path(&self) -> PathBuf {
        self.data_dir.join("net").join("ntp-servers.json")
    }

    pub fn pending_path(&self) -> PathBuf {
        self.run_dir.join("pending.json")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetdError {
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// A state conflict: a change already pending, nothing to confirm.
    #[error("{0}")]
    Conflict(String),
    /// Confirming or cancelling someone else's change.
    #[error("{0}")]
    NotOwner(String),
    #[error("applying the configuration failed ({0}); the previous configuration was put back")]
    ApplyFailed(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Pending {
    proposed: NetConfig,
    owner: String,
    window: Duration,
    deadline: Instant,
    deadline_wall: OffsetDateTime,
    generation: u64,
}

struct State {
    confirmed: NetConfig,
    source: &'static str,
    pending: Option<Pending>,
    generation: u64,
}

pub struct Netd {
    settings: Settings,
    kernel: Kernel,
    state: Mutex<State>,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

impl Netd {
    /// Loads the confirmed configuration (the factory default without one) and
    /// applies it. Problems applying are logged, not fatal: the re-apply retries.
    pub async fn start(settings: Settings, kernel: Kernel) -> Result<Arc<Self>, NetdError> {
        if let Err(e) = crate::files::upgrade_config(&settings.config_path()) {
            tracing::error!("{e}");
        }
        let (confirmed, source) = match crate::files::read_config(&settings.config_path()) {
            Ok(Some(c)) => (c, "file"),
            Ok(None) => (
                crate::defaults::default_config(&kernel.links().await?),
                "default",
            ),
            Err(e) => {
                // A damaged file must not leave the box unreachable: fall back to DHCP.
                tracing::error!("{e}; using the factory default (DHCP)");
                (
                    crate::defaults::default_config(&kernel.links().await?),
                    "default",
                )
            }
        };
        let netd = Arc::new(Self {
            settings,
            kernel,
            state: Mutex::new(State {
                confirmed: confirmed.clone(),
                source,
                pending: None,
                generation: 0,
            }),
        });
        let _ = std::fs::remove_file(netd.settings.pending_path());
        if source == "file" {
            netd.write_ntp(&confirmed)?;
        }
        if let Err(e) = netd.apply(&confirmed, None).await {
            tracing::warn!("initial apply incomplete: {e}");
        }
        tracing::info!(
            source,
            interfaces = confirmed.interfaces.len(),
            "network configuration applied"
        );
        Ok(netd)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    async fn apply(&self, cfg: &NetConfig, previous: Option<&NetConfig>) -> Result<(), NetdError> {
        let plan = crate::plan::kernel_plan(cfg, previous);
        let kernel = self.kernel.apply(&plan).await;
        match crate::render::write_all(&self.settings.files, cfg) {
            Ok(reload) if !reload.is_empty() => tracing::info!(?reload, "system files rewritten"),
            Ok(_) => {}
            Err(e) => tracing::error!("writing system files: {e}"),
        }
        kernel.map_err(NetdError::from)
    }

    fn write_ntp(&self, cfg: &NetConfig) -> Result<(), StoreError> {
        let path = self.settings.ntp_path();
        let want = NtpServers {
            servers: cfg.ntp_servers.clone(),
        };
        if crate::files::NTP_SERVERS
            .read::<NtpServers>(&path)
            .ok()
            .flatten()
            .as_ref()
            == Some(&want)
        {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            keel_core::store::ensure_dir(dir, 0o755)?;
        }
        crate::files::NTP_SERVERS.write(&path, &want, 0o644)
    }

    fn pending_view(p: &Pending, previous: &NetConfig) -> NetPending {
        NetPending {
            owner: p.owner.clone(),
            deadline: rfc3339(p.deadline_wall),
            seconds_left: p
                .deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
                .ceil() as u64,
            window_seconds: p.window.as_secs(),
            proposed: p.proposed.clone(),
            previous: previous.clone(),
        }
    }

    pub async fn state(&self) -> Result<NetState, NetdError> {
        let links = self.kernel.links().await?;
        let learned = keel_api::NetLearned {
            gateways: self.kernel.default_gateways(&links).await?,
            dns: self
                .settings
                .files
                .networkd_dir
                .as_deref()
                .and_then(crate::leases::dir_for)
                .map(|d| crate::leases::learned_dns(&d, &links))
                .unwrap_or_default(),
        };
        let st = self.state.lock().await;
        Ok(NetState {
            running: st
                .pending
                .as_ref()
                .map(|p| p.proposed.clone())
                .unwrap_or_else(|| st.confirmed.clone()),
            confirmed: st.confirmed.clone(),
            source: st.source.into(),
            pending: st
                .pending
                .as_ref()
                .map(|p| Self::pending_view(p, &st.confirmed)),
            links,
            learned,
        })
    }

    pub async fn pending(&self) -> Option<NetPending> {
        let st = self.state.lock().await;
        st.pending
            .as_ref()
            .map(|p| Self::pending_view(p, &st.confirmed))
    }

    /// Validates, applies and holds a change until confirmed or the window ends.
    pub async fn propose(self: &Arc<Self>, req: NetChangeRequest) -> Result<NetPending, NetdError> {
        let mut st = self.state.lock().await;
        if let Some(p) = &st.pending {
            return Err(NetdError::Conflict(format!(
                "a change made through {} is waiting for confirmation ({} s left): confirm or cancel it first",
                p.owner,
                p.deadline.saturating_duration_since(Instant::now()).as_secs()
            )));
        }
        let secs = req
            .confirm_seconds
            .unwrap_or(self.settings.window.as_secs());
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&secs) {
            return Err(ValidationError(vec![FieldError {
                field: "confirm_seconds".into(),
                message: format!("{secs} is outside {MIN_WINDOW}–{MAX_WINDOW}"),
            }])
            .into());
        }
        let (links, vlans) = self.kernel.inventory().await?;
        let proposed = validate(&req.config, &links, &vlans)?;
        let previous = st.confirmed.clone();
        let started = Instant::now();
        if let Err(e) = self.apply(&proposed, Some(&previous)).await {
            tracing::error!("apply failed: {e}; restoring the previous configuration");
            if let Err(e2) = self.apply(&previous, Some(&proposed)).await {
                tracing::error!("restoring failed too: {e2}");
            }
            return Err(NetdError::ApplyFailed(e.to_string()));
        }
        let owner = if req.owner.is_empty() {
            "api".to_owned()
        } else {
            req.owner
        };
        st.generation += 1;
        let window = Duration::from_secs(secs);
        let pending = Pending {
            proposed,
            owner,
            window,
            deadline: started + window,
            deadline_wall: OffsetDateTime::now_utc() + window,
            generation: st.generation,
        };
        let view = Self::pending_view(&pending, &previous);
        tracing::info!(
            owner = %pending.owner,
            window_s = secs,
            apply_ms = started.elapsed().as_millis() as u64,
            "change applied; reverting unless confirmed"
        );
        if let Err(e) = keel_core::store::ensure_dir(&self.settings.run_dir, 0o755)
            .and_then(|_| keel_core::store::write_json(&self.settings.pending_path(), &view, 0o644))
        {
            tracing::warn!("{e}");
        }
        let (generation, deadline) = (pending.generation, pending.deadline);
        st.pending = Some(pending);
        drop(st);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let mut st = me.state.lock().await;
            if st
                .pending
                .as_ref()
                .is_some_and(|p| p.generation == generation)
            {
                tracing::warn!("change not confirmed within {secs} s: reverting");
                me.revert(&mut st).await;
            }
        });
        Ok(view)
    }

    fn check_owner(st: &State, owner: &str) -> Result<(), NetdError> {
        let p = st
            .pending
            .as_ref()
            .ok_or_else(|| NetdError::Conflict("no change is waiting for confirmation".into()))?;
        let owner = if owner.is_empty() { "api" } else { owner };
        if p.owner != owner {
            return Err(NetdError::NotOwner(format!(
                "this change was made through {}; confirm or cancel it there",
                p.owner
            )));
        }
        Ok(())
    }

    /// Makes the pending change the confirmed configuration, on disk too.
    pub async fn confirm(&self, owner: &str) -> Result<(), NetdError> {
        let mut st = self.state.lock().await;
        Self::check_owner(&st, owner)?;
        let p = st.pending.as_ref().expect("checked");
        let path = self.settings.config_path();
        if let Some(dir) = path.parent() {
            keel_core::store::ensure_dir(dir, 0o755)?;
        }
        crate::files::write_config(&path, &p.proposed)?;
        self.write_ntp(&p.proposed)?;
        let p = st.pending.take().expect("checked");
        st.confirmed = p.proposed;
        st.source = "file";
        let _ = std::fs::remove_file(self.settings.pending_path());
        tracing::info!(owner = %p.owner, "change confirmed and saved");
        Ok(())
    }

    /// Puts the confirmed configuration back now.
    pub async fn cancel(&self, owner: &str) -> Result<(), NetdError> {
        let mut st = self.state.lock().await;
        Self::check_owner(&st, owner)?;
        tracing::info!("change cancelled: reverting");
        self.revert(&mut st).await;
        Ok(())
    }

    async fn revert(&self, st: &mut State) {
        let Some(p) = st.pending.take() else { return };
        let started = Instant::now();
        match self.apply(&st.confirmed, Some(&p.proposed)).await {
            Ok(()) => tracing::info!(
                revert_ms = started.elapsed().as_millis() as u64,
                "previous configuration restored"
            ),
            Err(e) => tracing::error!("restoring the previous configuration: {e}"),
        }
        let _ = std::fs::remove_file(self.settings.pending_path());
    }

    /// Re-applies the running configuration forever (see `Settings::reconcile`).
    pub async fn reconcile_forever(self: Arc<Self>) {
        let Some(every) = self.settings.reconcile else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let mut st = self.state.lock().await;
            // The factory default follows the ports: udev may rename them after netd
            // started, and a port may be plugged in later.
            if st.source == "default" && st.pending.is_none() {
                if let Ok(links) = self.kernel.links().await {
                    let d = crate::defaults::default_config(&links);
                    if d != st.confirmed {
                        tracing::info!(
                            "wired interfaces changed: the default configuration follows"
                        );
                        st.confirmed = d;
                    }
                }
            }
            let running = st
                .pending
                .as_ref()
                .map(|p| p.proposed.clone())
                .unwrap_or_else(|| st.confirmed.clone());
            if let Err(e) = self.apply(&running, None).await {
                tracing::debug!("re-apply: {e}");
            }
            drop(st);
        }
    }
}
