//! The running service: checks at start, periodically and on demand (concurrent
//! requests share one check), the gate, the server list, the hand-set time, and
//! the local API that serves them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keel_api::{ClockGate, ManualTimeRequest, NtpServerList, NtpServers, TimeState, TimeVerdict};

use crate::config::{self, ConfigError, Paths};
use crate::sntp::{self, CheckOptions, ServerOutcome};
use crate::system::{self, ClockSetter, TimesyncdPaths};
use crate::verdict::{self, ManualRecord};

/// A skewed verdict older than this is measured again before the gate refuses:
/// the sync daemon may have corrected the clock meanwhile.
const SKEW_RECHECK: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Settings {
    pub paths: Paths,
    pub options: CheckOptions,
    /// |offset| at or above this is `skewed`, seconds.
    pub threshold: f64,
    /// Between periodic checks while the clock is fine.
    pub interval: Duration,
    /// Between periodic checks while it is not (or nothing answered).
    pub retry: Duration,
    /// The gate measures again when the last verdict is older than this.
    pub gate_max_age: Duration,
    pub timesyncd: TimesyncdPaths,
    /// Where to render the timesyncd drop-in (`None`: leave timesyncd alone).
    pub timesyncd_dropin: Option<PathBuf>,
    /// A check that finds the servers answering removes the hand-set record. The
    /// service does; `keel-timed once` from a shell does not, so the running
    /// service stays the only writer of `manual.json`.
    pub forget_manual: bool,
}

impl Settings {
    /// Appliance defaults below `data` (`/data`).
    pub fn new(data: &std::path::Path) -> Self {
        Self {
            paths: Paths::under(data),
            options: CheckOptions::default(),
            threshold: 1.0,
            interval: Duration::from_secs(600),
            retry: Duration::from_secs(60),
            gate_max_age: Duration::from_secs(600),
            timesyncd: TimesyncdPaths::default(),
            timesyncd_dropin: None,
            forget_manual: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TimedError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    BadTime(String),
    #[error("{0}")]
    Refused(String),
    #[error("setting the clock failed: {0} (keel-timed needs CAP_SYS_TIME)")]
    SetClock(std::io::Error),
    #[error(transparent)]
    Store(#[from] keel_core::StoreError),
}

impl TimedError {
    fn status(&self) -> StatusCode {
        match self {
            TimedError::Config(ConfigError::OwnedByNetd(_)) | TimedError::Refused(_) => {
                StatusCode::CONFLICT
            }
            TimedError::Config(ConfigError::BadServer(_) | ConfigError::TooMany)
            | TimedError::BadTime(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for TimedError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!("{self}");
        }
        (
            status,
            Json(keel_api::ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

struct Latest {
    verdict: TimeVerdict,
    outcomes: Vec<ServerOutcome>,
    finished: Instant,
}

pub struct Timed {
    settings: Settings,
    clock: Box<dyn ClockSetter>,
    latest: Mutex<Option<Latest>>,
    check_lock: tokio::sync::Mutex<()>,
    /// Held across every read-modify-write of timed's files (config.json,
    /// manual.json, the timesyncd drop-in): a check rendering the drop-in from the
    /// list it read must not interleave with a list being set, nor two lists being
    /// set with each other. Never held across an await.
    files: Mutex<()>,
    boot_id: String,
}

impl Timed {
    pub fn new(settings: Settings, clock: Box<dyn ClockSetter>) -> Arc<Self> {
        Arc::new(Self {
            settings,
            clock,
            latest: Mutex::new(None),
            check_lock: tokio::sync::Mutex::new(()),
            files: Mutex::new(()),
            boot_id: system::boot_id(),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn lock_latest(&self) -> std::sync::MutexGuard<'_, Option<Latest>> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_files(&self) -> std::sync::MutexGuard<'_, ()> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last verdict, if any check finished yet.
    pub fn latest(&self) -> Option<TimeVerdict> {
        self.lock_latest().as_ref().map(|l| l.verdict.clone())
    }

    fn latest_age(&self) -> Option<(TimeState, Duration)> {
        self.lock_latest()
            .as_ref()
            .map(|l| (l.verdict.state, l.finished.elapsed()))
    }

    /// Runs a check now. A caller that had to wait for a check already running
    /// takes that one's result: it started no earlier than the caller asked.
    pub async fn check(&self) -> TimeVerdict {
        let asked = Instant::now();
        let _running = self.check_lock.lock().await;
        if let Some(l) = self.lock_latest().as_ref() {
            if l.finished >= asked {
                return l.verdict.clone();
            }
        }
        let started = Instant::now();
        let mut warnings = Vec::new();
        let list = {
            let _files = self.lock_files();
            let list = config::load_servers(&self.settings.paths).unwrap_or_else(|e| {
                tracing::error!("NTP server list: {e}");
                warnings.push(format!("the NTP server list could not be read: {e}"));
                config::ServerList {
                    servers: Vec::new(),
                    source: config::Source::Timed,
                    path: self.settings.paths.config.clone(),
                }
            });
            self.render_timesyncd(&list.servers);
            list
        };
        let outcomes = sntp::check_servers(&list.servers, &self.settings.options).await;
        let manual = self.manual_record();
        let mut v = self.derive(&outcomes, list.source.as_str(), manual.as_ref(), started);
        v.warnings.extend(warnings);
        if self.settings.forget_manual
            && manual.is_some()
            && matches!(v.state, TimeState::Ok | TimeState::Skewed)
        {
            // Servers answer again: the hand-set time is history. Durably: a
            // power cut must not bring the record (and a "manual" verdict) back.
            let _files = self.lock_files();
            if let Err(e) = keel_core::store::remove_durable(&self.settings.paths.manual) {
                tracing::warn!("{e}");
            }
        }
        self.store(v.clone(), outcomes);
        v
    }

    fn derive(
        &self,
        outcomes: &[ServerOutcome],
        source: &str,
        manual: Option<&ManualRecord>,
        started: Instant,
    ) -> TimeVerdict {
        verdict::verdict(
            outcomes,
            verdict::Context {
                threshold: self.settings.threshold,
                timeout: self.settings.options.timeout,
                servers_source: source,
                manual,
                boot_id: &self.boot_id,
                daemon: system::daemon_sync(&self.settings.timesyncd),
                checked_at: SystemTime::now(),
                duration: started.elapsed(),
            },
        )
    }

    fn store(&self, v: TimeVerdict, outcomes: Vec<ServerOutcome>) {
        let mut latest = self.lock_latest();
        let before = latest.as_ref().map(|l| l.verdict.state);
        if before != Some(v.state) {
            if v.state == TimeState::Skewed {
                tracing::warn!(state = %v.state, "{}", v.message);
            } else {
                tracing::info!(state = %v.state, "{}", v.message);
            }
        } else {
            tracing::debug!(state = %v.state, "{}", v.message);
        }
        *latest = Some(Latest {
            verdict: v,
            outcomes,
            finished: Instant::now(),
        });
    }

    fn manual_record(&self) -> Option<ManualRecord> {
        config::MANUAL_RECORD
            .read(&self.settings.paths.manual)
            .unwrap_or_else(|e| {
                tracing::warn!("{e}");
                None
            })
    }

    fn render_timesyncd(&self, servers: &[String]) {
        let Some(path) = &self.settings.timesyncd_dropin else {
            return;
        };
        match config::write_timesyncd_dropin(path, servers) {
            Ok(true) => tracing::info!("timesyncd servers written to {}", path.display()),
            Ok(false) => {}
            Err(e) => tracing::warn!("timesyncd drop-in {}: {e}", path.display()),
        }
    }

    /// The last verdict, or the first one once it is there.
    pub async fn verdict(&self) -> TimeVerdict {
        match self.latest() {
            Some(v) => v,
            None => self.check().await,
        }
    }

    /// The clock gate. Measures again when the last verdict is stale, or is a
    /// refusal that is not quite fresh.
    pub async fn gate(&self) -> ClockGate {
        let fresh = match self.latest_age() {
            Some((TimeState::Skewed, age)) => age < SKEW_RECHECK,
            Some((_, age)) => age < self.settings.gate_max_age,
            None => false,
        };
        let v = match self.latest() {
            Some(v) if fresh => v,
            _ => self.check().await,
        };
        verdict::gate(&v)
    }

    pub fn servers(&self) -> Result<NtpServerList, TimedError> {
        Ok(config::load_servers(&self.settings.paths)?.to_api())
    }

    /// Stores timed's own server list (refused while netd owns it).
    pub fn set_servers(&self, servers: &[String]) -> Result<NtpServerList, TimedError> {
        let _files = self.lock_files();
        let list = config::save_servers(&self.settings.paths, servers)?;
        tracing::info!(servers = ?list.servers, "NTP server list set");
        self.render_timesyncd(&list.servers);
        Ok(list.to_api())
    }

    /// Sets the clock by hand: for networks where no NTP server is reachable.
    /// Refused while the servers answer and agree with the clock.
    pub async fn set_manual(&self, text: &str) -> Result<TimeVerdict, TimedError> {
        let to = parse_manual_time(text)?;
        let derived = {
            let _running = self.check_lock.lock().await;
            let last = self.lock_latest().as_ref().map(|l| l.verdict.state);
            if last == Some(TimeState::Ok) {
                return Err(TimedError::Refused(
                    "the NTP servers answer and agree with the clock; setting it by hand is \
                     for networks without NTP"
                        .into(),
                ));
            }
            let record = self.apply_manual(to)?;
            self.rederive_with(&record)
        };
        match derived {
            Some(v) => Ok(v),
            // Servers did answer (skewed): measure again against the new time.
            None => Ok(self.check().await),
        }
    }

    fn apply_manual(&self, to: SystemTime) -> Result<ManualRecord, TimedError> {
        let previous = SystemTime::now();
        self.clock.set(to).map_err(TimedError::SetClock)?;
        let record = ManualRecord {
            set_at: verdict::rfc3339(to),
            previous: verdict::rfc3339(previous),
            boot_id: self.boot_id.clone(),
        };
        {
            let _files = self.lock_files();
            if let Some(dir) = self.settings.paths.manual.parent() {
                keel_core::store::ensure_dir(dir, 0o755)?;
            }
            config::MANUAL_RECORD.write(&self.settings.paths.manual, &record, 0o644)?;
        }
        tracing::warn!(set_at = %record.set_at, previous = %record.previous, "clock set by hand");
        Ok(record)
    }

    /// When nothing answered last time, the verdict follows from the hand-set
    /// time without asking the servers again.
    fn rederive_with(&self, record: &ManualRecord) -> Option<TimeVerdict> {
        let (outcomes, source) = {
            let l = self.lock_latest();
            let l = l.as_ref()?;
            if !matches!(
                l.verdict.state,
                TimeState::Unreachable | TimeState::Unconfigured | TimeState::Manual
            ) {
                return None;
            }
            (l.outcomes.clone(), l.verdict.servers_source.clone())
        };
        let v = self.derive(&outcomes, &source, Some(record), Instant::now());
        self.store(v.clone(), outcomes);
        Some(v)
    }

    /// Checks at start, then every `interval` (every `retry` while not ok).
    pub async fn run_periodic(self: Arc<Self>) {
        loop {
            let v = self.check().await;
            let wait = if v.state == TimeState::Ok {
                self.settings.interval
            } else {
                self.settings.retry
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// RFC 3339, or `YYYY-MM-DD HH:MM[:SS]` (also with `T`) taken as UTC. Years
/// outside 2020–2099 are typing errors, not times anyone means to set.
pub fn parse_manual_time(text: &str) -> Result<SystemTime, TimedError> {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    let text = text.trim();
    let parsed = time::OffsetDateTime::parse(text, &Rfc3339).or_else(|_| {
        let t = text.replacen('T', " ", 1);
        time::PrimitiveDateTime::parse(
            &t,
            format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
        )
        .or_else(|_| {
            time::PrimitiveDateTime::parse(
                &t,
                format_description!("[year]-[month]-[day] [hour]:[minute]"),
            )
        })
        .map(|p| p.assume_utc())
    });
    let t = parsed.map_err(|_| {
        TimedError::BadTime(format!(
            "{text:?} is not a time: use RFC 3339 (2026-11-25T05:00:00Z) or \
             YYYY-MM-DD HH:MM[:SS] in UTC"
        ))
    })?;
    if !(2020..=2099).contains(&t.year()) {
        return Err(TimedError::BadTime(format!(
            "{text:?}: the year {} is out of range",
            t.year()
        )));
    }
    Ok(t.into())
}

type Shared = Arc<Timed>;

async fn get_verdict(State(t): State<Shared>) -> Json<TimeVerdict> {
    Json(t.verdict().await)
}

async fn post_check(State(t): State<Shared>) -> Json<TimeVerdict> {
    Json(t.check().await)
}

async fn get_gate(State(t): State<Shared>) -> Json<ClockGate> {
    Json(t.gate().await)
}

async fn get_servers(State(t): State<Shared>) -> Result<Json<NtpServerList>, TimedError> {
    t.servers().map(Json)
}

async fn post_servers(
    State(t): State<Shared>,
    Json(body): Json<NtpServers>,
) -> Result<Json<NtpServerList>, TimedError> {
    let list = t.set_servers(&body.servers)?;
    // Measure against the new list right away; callers read the verdict after.
    let t2 = t.clone();
    tokio::spawn(async move {
        t2.check().await;
    });
    Ok(Json(list))
}

async fn post_manual(
    State(t): State<Shared>,
    Json(body): Json<ManualTimeRequest>,
) -> Result<Json<TimeVerdict>, TimedError> {
    t.set_manual(&body.time).await.map(Json)
}

/// The local API (`/run/keel/timed/api.sock`).
pub fn router(timed: Shared) -> Router {
    Router::new()
        .route("/verdict", get(get_verdict))
        .route("/check", post(post_check))
        .route("/gate", get(get_gate))
        .route("/servers", get(get_servers).post(post_servers))
        .route("/manual", post(post_manual))
        .with_state(timed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_time_formats() {
        let t = |s: &str| verdict::rfc3339(parse_manual_time(s).unwrap());
        assert_eq!(t("2026-11-25T05:00:00Z"), "2026-11-25T05:00:00Z");
        assert_eq!(t("2026-11-25T06:00:00+01:00"), "2026-11-25T05:00:00Z");
        assert_eq!(t(" 2026-11-25 05:00:07 "), "2026-11-25T05:00:07Z");
        assert_eq!(t("2026-11-25T05:00"), "2026-11-25T05:00:00Z");
        for bad in [
            "",
            "yesterday",
            "2026-13-01 00:00",
            "1999-01-01 00:00",
            "2026-11-25",
        ] {
            assert!(
                matches!(parse_manual_time(bad), Err(TimedError::BadTime(_))),
                "{bad:?}"
            );
        }
    }
}
