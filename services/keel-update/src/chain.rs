//! *Install all in order*: the chain of versions from the verified feed, kept in
//! `state.json` (`chain`), one step per boot. The first step is installed at the
//! request and reboots; keel-update starts in every boot after the health gate
//! (`keel-boot-ok`), settles the trial's outcome and then [`Updater::resume_chain`]
//! goes on with the next step, fetching and verifying the feed again. It stops,
//! with the reason recorded, at the first failure: a step that failed its health
//! check (GRUB's fallback), a download or verify error, a step no longer
//! installable.

use std::sync::Arc;

use keel_api::{ChainState, ChainStatus, OutcomeKind};
use keel_bundle::Timestamp;

use crate::service::{err, ErrorKind, UpdateError, Updater};
use crate::state::UpdateState;

/// Tries of a step after a boot when the feed server is not reachable yet.
const RESUME_TRIES: u32 = 6;
const RESUME_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// What the chain does next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Nothing,
    Install(String),
}

/// Moves the chain on from what the state says about the last step; the step to
/// install next is recorded as `current` before it starts.
fn advance(st: &mut UpdateState, running: Option<&str>) -> Next {
    let pending = st.pending.is_some();
    let outcome = st.last_outcome.clone();
    let Some(c) = st.chain.as_mut() else {
        return Next::Nothing;
    };
    if c.state != ChainState::Running || pending {
        return Next::Nothing; // ended, or the armed step waits for its boot
    }
    if let Some(cur) = c.current.clone() {
        let ended = outcome.as_ref().filter(|o| o.to_version == cur);
        match ended {
            Some(o) if o.kind != OutcomeKind::Installed => {
                c.state = ChainState::Failed;
                c.message = Some(format!(
                    "install all stopped at {cur}: {}; {} of {} steps installed",
                    o.message,
                    c.done,
                    c.steps.len()
                ));
                return Next::Nothing;
            }
            _ if running == Some(cur.as_str()) => {
                c.done += 1;
                c.current = None;
            }
            _ => {
                c.state = ChainState::Failed;
                c.message = Some(format!(
                    "install all stopped at {cur}: it is not running and no trial of it is \
                     armed any more; {} of {} steps installed",
                    c.done,
                    c.steps.len()
                ));
                return Next::Nothing;
            }
        }
    }
    if c.done >= c.steps.len() {
        c.state = ChainState::Done;
        c.message = Some(format!(
            "installed all {} steps in order: running {}",
            c.steps.len(),
            running.unwrap_or("?")
        ));
        tracing::info!("install all: done");
        return Next::Nothing;
    }
    let v = c.steps[c.done].clone();
    c.current = Some(v.clone());
    c.message = Some(format!(
        "installing {v} (step {} of {})",
        c.done + 1,
        c.steps.len()
    ));
    Next::Install(v)
}

impl Updater {
    /// Plans the chain from a fresh check, records it and installs its first step
    /// (which reboots). The answer comes once that step is armed.
    pub async fn install_all(self: &Arc<Self>) -> Result<ChainStatus, UpdateError> {
        let _work = self.online().begin();
        if self.installing() {
            return Err(err(
                ErrorKind::Busy,
                "another install is running; try again when it has finished",
            ));
        }
        let running_chain = self
            .status()
            .chain
            .filter(|c| c.state == ChainState::Running);
        if let Some(c) = running_chain {
            return Err(err(
                ErrorKind::Busy,
                format!(
                    "install all is already under way ({} of {} steps installed)",
                    c.done,
                    c.steps.len()
                ),
            ));
        }
        let steps = self.plan_now().await?;
        if steps.is_empty() {
            return Err(err(
                ErrorKind::Refused,
                "nothing to install: the running version is the newest the feed reaches",
            ));
        }
        tracing::info!(?steps, "install all in order");
        self.update_state(|st| {
            st.chain = Some(ChainStatus {
                steps,
                done: 0,
                current: None,
                state: ChainState::Running,
                message: None,
                started_at: Timestamp::now().to_string(),
            });
        });
        self.step(1).await?;
        self.status()
            .chain
            .ok_or_else(|| err(ErrorKind::Failed, "the chain was not recorded"))
    }

    /// Continues a chain after a boot (keel-update's start); a no-op without one.
    pub async fn resume_chain(self: &Arc<Self>) {
        let _work = self.online().begin();
        if let Err(e) = self.step(RESUME_TRIES).await {
            tracing::error!("install all: {}", e.message);
        }
    }

    /// Advances the chain and installs the next step, recording a failure. A
    /// network error is tried again up to `tries` times in all (after a boot the
    /// network may still be coming up).
    async fn step(self: &Arc<Self>, tries: u32) -> Result<(), UpdateError> {
        let running = self.running_version().map(str::to_string);
        let next = self.update_state(|st| advance(st, running.as_deref()));
        let Next::Install(v) = next else {
            return Ok(());
        };
        tracing::info!("install all: installing {v}");
        let mut attempt = 1;
        let result = loop {
            match self.install_step(&v).await {
                Err(e) if e.kind == ErrorKind::Network && attempt < tries => {
                    tracing::warn!(
                        "install all: {v}: {} (try {attempt} of {tries}; again in {} s)",
                        e.message,
                        RESUME_RETRY.as_secs()
                    );
                    attempt += 1;
                    tokio::time::sleep(RESUME_RETRY).await;
                }
                r => break r,
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                self.update_state(|st| {
                    if let Some(c) = st.chain.as_mut() {
                        c.state = ChainState::Failed;
                        c.message = Some(format!(
                            "install all stopped at {v}: {}; {} of {} steps installed",
                            e.message,
                            c.done,
                            c.steps.len()
                        ));
                    }
                });
                Err(UpdateError {
                    kind: e.kind,
                    message: format!("install all stopped at {v}: {}", e.message),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::UpdateOutcome;

    fn chain(steps: &[&str]) -> UpdateState {
        UpdateState {
            chain: Some(ChainStatus {
                steps: steps.iter().map(|s| s.to_string()).collect(),
                done: 0,
                current: None,
                state: ChainState::Running,
                message: None,
                started_at: "2026-12-01T10:00:00Z".into(),
            }),
            ..UpdateState::default()
        }
    }

    fn outcome(kind: OutcomeKind, to: &str) -> Option<UpdateOutcome> {
        Some(UpdateOutcome {
            kind,
            from_version: "0.1.0".into(),
            to_version: to.into(),
            message: format!("update to {to}: {kind:?}"),
            at: "2026-12-01T10:05:00Z".into(),
        })
    }

    #[test]
    fn steps_in_order_then_done() {
        let mut st = chain(&["0.2.0", "0.3.0"]);
        assert_eq!(
            advance(&mut st, Some("0.1.0")),
            Next::Install("0.2.0".into())
        );
        // Same boot, trial armed: waits.
        st.pending = Some(crate::state::PendingTrial {
            slot: "b".into(),
            version: "0.2.0".into(),
            from_slot: "a".into(),
            from_version: "0.1.0".into(),
            armed_at: String::new(),
            boot_id: "x".into(),
        });
        assert_eq!(advance(&mut st, Some("0.1.0")), Next::Nothing);
        // Next boot: healthy.
        st.pending = None;
        st.last_outcome = outcome(OutcomeKind::Installed, "0.2.0");
        assert_eq!(
            advance(&mut st, Some("0.2.0")),
            Next::Install("0.3.0".into())
        );
        assert_eq!(st.chain.as_ref().unwrap().done, 1);
        st.last_outcome = outcome(OutcomeKind::Installed, "0.3.0");
        assert_eq!(advance(&mut st, Some("0.3.0")), Next::Nothing);
        let c = st.chain.as_ref().unwrap();
        assert_eq!((c.state, c.done), (ChainState::Done, 2));
        assert_eq!(advance(&mut st, Some("0.3.0")), Next::Nothing);
    }

    #[test]
    fn a_failed_health_check_stops_it() {
        let mut st = chain(&["0.2.0", "0.3.0"]);
        assert_eq!(
            advance(&mut st, Some("0.1.0")),
            Next::Install("0.2.0".into())
        );
        st.last_outcome = outcome(OutcomeKind::RolledBack, "0.2.0");
        assert_eq!(advance(&mut st, Some("0.1.0")), Next::Nothing);
        let c = st.chain.as_ref().unwrap();
        assert_eq!(c.state, ChainState::Failed);
        assert!(
            c.message
                .as_deref()
                .unwrap()
                .starts_with("install all stopped at 0.2.0"),
            "{c:?}"
        );
        // A trial that vanished without an outcome stops it too.
        let mut st = chain(&["0.2.0"]);
        advance(&mut st, Some("0.1.0"));
        assert_eq!(advance(&mut st, Some("0.1.0")), Next::Nothing);
        assert_eq!(st.chain.unwrap().state, ChainState::Failed);
    }
}
