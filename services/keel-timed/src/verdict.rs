//! From per-server outcomes to one verdict, and from the verdict to the gate.

use std::time::{Duration, SystemTime};

use keel_api::{
    ClockGate, DaemonSync, ManualTime, ServerReport, ServerState, TimeState, TimeVerdict,
};
use serde::{Deserialize, Serialize};

use crate::sntp::{Failure, ServerOutcome};

/// Where the settings for the server list live, as the messages name it.
pub const SETTINGS_PLACE: &str = "Networking › NTP servers";

/// RFC 3339 in UTC to the second, e.g. `2026-11-25T05:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// "5 min 0 s", "2.3 s", "3 h 12 min", "4 d 2 h".
pub fn human_seconds(secs: f64) -> String {
    let a = secs.abs();
    if a < 60.0 {
        return format!("{a:.1} s");
    }
    let s = a.round() as u64;
    if s < 3600 {
        format!("{} min {} s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{} h {} min", s / 3600, s % 3600 / 60)
    } else {
        format!("{} d {} h", s / 86_400, s % 86_400 / 3600)
    }
}

/// An offset for people: microseconds show while it is small, milliseconds
/// once it is not ("-0.000004 s", "+300.000 s").
pub fn format_offset(offset: f64) -> String {
    if offset.abs() < 1.0 {
        format!("{offset:+.6} s")
    } else {
        format!("{offset:+.3} s")
    }
}

/// "5 min 0 s behind" (positive NTP offset: the servers are ahead of us).
pub fn describe_offset(offset: f64) -> String {
    format!(
        "{} {}",
        human_seconds(offset),
        if offset >= 0.0 { "behind" } else { "ahead of" }
    )
}

/// The record of a time set by hand (`/data/timed/manual.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManualRecord {
    pub set_at: String,
    pub previous: String,
    pub boot_id: String,
}

/// What the servers say together.
#[derive(Debug, Clone)]
pub struct Combined {
    /// `Ok` or `Skewed`; `None` when no server gave a usable answer.
    pub state: Option<TimeState>,
    pub offset: Option<f64>,
    pub reports: Vec<ServerReport>,
    pub warnings: Vec<String>,
}

fn report(o: &ServerOutcome, timeout: Duration) -> ServerReport {
    let best = o.best();
    let rejects = (!o.rejects.is_empty()).then(|| {
        o.rejects
            .iter()
            .map(|(label, n)| {
                if *n > 1 {
                    format!("{label} ({n} replies)")
                } else {
                    label.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    let (state, error) = match (&o.failure, best) {
        (Some(Failure::Unresolved(e)), _) => (ServerState::Unresolved, Some(e.clone())),
        (_, Some(_)) => (ServerState::Ok, rejects),
        (_, None) if rejects.is_some() => (ServerState::Rejected, rejects),
        (Some(Failure::Refused), None) => (
            ServerState::Unreachable,
            Some("port closed (ICMP port unreachable)".into()),
        ),
        (Some(Failure::Io(e)), None) => (ServerState::Unreachable, Some(e.clone())),
        (None, None) => (
            ServerState::Unreachable,
            Some(format!(
                "no reply within {:.1} s ({} request{})",
                timeout.as_secs_f64(),
                o.sent,
                if o.sent == 1 { "" } else { "s" }
            )),
        ),
    };
    ServerReport {
        server: o.server.clone(),
        address: o.address.map(|a| a.to_string()),
        state,
        offset_seconds: best.map(|s| s.offset),
        delay_seconds: best.map(|s| s.delay),
        stratum: best.map(|s| s.stratum),
        leap: best.map(|s| s.leap.as_str().to_owned()),
        reference_id: best.map(|s| s.reference_id.clone()),
        requests_sent: o.sent,
        valid_replies: o.samples.len() as u32,
        error,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The largest group of servers that agree with each other (within the
/// threshold plus their delays' uncertainty) decides; servers outside it are
/// outliers. The group's median offset is the clock's offset.
pub fn combine(outcomes: &[ServerOutcome], threshold: f64, timeout: Duration) -> Combined {
    let mut reports: Vec<ServerReport> = outcomes.iter().map(|o| report(o, timeout)).collect();
    let usable: Vec<(usize, f64, f64)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.best().map(|s| (i, s.offset, s.delay)))
        .collect();
    if usable.is_empty() {
        return Combined {
            state: None,
            offset: None,
            reports,
            warnings: Vec::new(),
        };
    }
    let agree = |a: &(usize, f64, f64), b: &(usize, f64, f64)| {
        (a.1 - b.1).abs() <= threshold + (a.2 + b.2) / 2.0
    };
    // Most members first, then the lowest-delay centre.
    let centre = usable
        .iter()
        .max_by(|a, b| {
            let na = usable.iter().filter(|x| agree(a, x)).count();
            let nb = usable.iter().filter(|x| agree(b, x)).count();
            na.cmp(&nb).then(b.2.total_cmp(&a.2))
        })
        .expect("usable is not empty");
    let (members, outliers): (Vec<&(usize, f64, f64)>, Vec<_>) =
        usable.iter().partition(|x| agree(centre, x));
    for o in &outliers {
        reports[o.0].state = ServerState::Outlier;
    }
    let offset = median(members.iter().map(|m| m.1).collect());
    let mut warnings = Vec::new();
    if !outliers.is_empty() {
        let names: Vec<&str> = outliers
            .iter()
            .map(|o| outcomes[o.0].server.as_str())
            .collect();
        let majority = members.len() * 2 > usable.len();
        warnings.push(format!(
            "{} of the answering NTP servers disagree{}: {}",
            outliers.len(),
            if majority {
                " with the others"
            } else {
                " and no majority agrees"
            },
            names.join(", ")
        ));
    }
    Combined {
        state: Some(if offset.abs() < threshold {
            TimeState::Ok
        } else {
            TimeState::Skewed
        }),
        offset: Some(offset),
        reports,
        warnings,
    }
}

/// Everything a verdict is made of besides the servers' answers.
pub struct Context<'a> {
    pub threshold: f64,
    pub timeout: Duration,
    pub servers_source: &'a str,
    pub manual: Option<&'a ManualRecord>,
    pub boot_id: &'a str,
    pub daemon: DaemonSync,
    pub checked_at: SystemTime,
    pub duration: Duration,
}

pub fn verdict(outcomes: &[ServerOutcome], ctx: Context<'_>) -> TimeVerdict {
    let c = combine(outcomes, ctx.threshold, ctx.timeout);
    let count = |state| c.reports.iter().filter(|r| r.state == state).count();
    let (agreeing, outliers) = (count(ServerState::Ok), count(ServerState::Outlier));
    let of = if outliers == 0 {
        format!("{agreeing} of {} servers answered", outcomes.len())
    } else {
        format!(
            "{agreeing} of {} answering servers agree",
            agreeing + outliers
        )
    };
    let manual = ctx.manual.map(|m| ManualTime {
        set_at: m.set_at.clone(),
        previous: m.previous.clone(),
        earlier_boot: m.boot_id != ctx.boot_id,
    });
    let (state, message) = match (c.state, c.offset) {
        (Some(TimeState::Ok), Some(off)) => (
            TimeState::Ok,
            format!(
                "The clock agrees with the NTP servers (offset {}; {of}).",
                format_offset(off)
            ),
        ),
        (Some(_), Some(off)) => (
            TimeState::Skewed,
            format!(
                "The clock is {} the NTP servers (offset {}; {of}).",
                describe_offset(off),
                format_offset(off)
            ),
        ),
        _ if outcomes.is_empty() && manual.is_none() => (
            TimeState::Unconfigured,
            format!("No NTP server is configured: set them under {SETTINGS_PLACE}."),
        ),
        _ => match &manual {
            Some(m) => (
                TimeState::Manual,
                format!(
                    "Time set by hand at {}, no NTP server reachable.{}",
                    m.set_at,
                    if m.earlier_boot {
                        " It was set before the last restart; check that the clock kept it."
                    } else {
                        ""
                    }
                ),
            ),
            None => (
                TimeState::Unreachable,
                format!(
                    "No NTP server gave a usable answer ({} configured): the clock could not \
                     be checked.",
                    outcomes.len()
                ),
            ),
        },
    };
    TimeVerdict {
        state,
        offset_seconds: c.offset,
        threshold_seconds: ctx.threshold,
        message,
        checked_at: rfc3339(ctx.checked_at),
        duration_ms: ctx.duration.as_millis() as u64,
        servers: c.reports,
        servers_source: ctx.servers_source.to_owned(),
        // Servers that answer outrank (and retire) a hand-set time.
        manual: manual.filter(|_| state == TimeState::Manual),
        daemon: ctx.daemon,
        warnings: c.warnings,
    }
}

/// May update install or download-key generation rely on the clock?
pub fn gate(v: &TimeVerdict) -> ClockGate {
    let (allowed, warning, reason) = match v.state {
        TimeState::Ok => (true, None, None),
        TimeState::Skewed => {
            let off = v.offset_seconds.unwrap_or_default();
            (
                false,
                None,
                Some(format!(
                    "The system clock is off by {} ({} the NTP servers). Correct the \
                     time first: check the servers under {SETTINGS_PLACE}.",
                    format_offset(off),
                    describe_offset(off)
                )),
            )
        }
        TimeState::Unreachable => (
            true,
            Some(format!(
                "The clock could not be checked: no NTP server answered (see {SETTINGS_PLACE})."
            )),
            None,
        ),
        TimeState::Unconfigured => (
            true,
            Some(format!(
                "The clock is unchecked: no NTP server is configured (see {SETTINGS_PLACE})."
            )),
            None,
        ),
        TimeState::Manual => (true, Some(v.message.clone()), None),
    };
    ClockGate {
        allowed,
        warning,
        reason,
        state: v.state,
        offset_seconds: v.offset_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Leap;
    use crate::sntp::Sample;

    fn server(name: &str, samples: &[(f64, f64)]) -> ServerOutcome {
        ServerOutcome {
            server: name.into(),
            address: None,
            sent: 4,
            samples: samples
                .iter()
                .map(|&(offset, delay)| Sample {
                    offset,
                    delay,
                    stratum: 2,
                    leap: Leap::None,
                    reference_id: "192.0.2.1".into(),
                })
                .collect(),
            rejects: Vec::new(),
            failure: None,
        }
    }

    fn ctx(manual: Option<&ManualRecord>) -> Context<'_> {
        Context {
            threshold: 1.0,
            timeout: Duration::from_secs(1),
            servers_source: "timed",
            manual,
            boot_id: "b1",
            daemon: DaemonSync {
                name: "systemd-timesyncd".into(),
                running: false,
                synchronized: false,
                last_sync: None,
                kernel_synchronized: false,
            },
            checked_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000),
            duration: Duration::from_millis(12),
        }
    }

    #[test]
    fn lowest_delay_sample_wins() {
        let v = verdict(
            &[server("a", &[(0.5, 0.2), (0.01, 0.01), (0.3, 0.1)])],
            ctx(None),
        );
        assert_eq!(v.state, TimeState::Ok);
        assert_eq!(v.offset_seconds, Some(0.01));
        assert_eq!(v.servers[0].delay_seconds, Some(0.01));
        assert_eq!(v.checked_at, "2025-11-24T16:00:00Z");
    }

    #[test]
    fn skew_outliers_and_gate() {
        let v = verdict(
            &[
                server("a", &[(300.0, 0.01)]),
                server("b", &[(300.2, 0.01)]),
                server("c", &[(0.0, 0.01)]),
            ],
            ctx(None),
        );
        assert_eq!(v.state, TimeState::Skewed);
        assert_eq!(v.offset_seconds, Some(300.1));
        assert_eq!(v.servers[2].state, ServerState::Outlier);
        assert!(v.warnings[0].contains("c"), "{:?}", v.warnings);
        assert!(v.message.contains("5 min 0 s behind"), "{}", v.message);
        let g = gate(&v);
        assert!(!g.allowed);
        let reason = g.reason.unwrap();
        assert!(
            reason.contains("+300.100 s") && reason.contains(SETTINGS_PLACE),
            "{reason}"
        );
    }

    #[test]
    fn nothing_usable() {
        let mut dead = server("dead", &[]);
        dead.failure = Some(Failure::Refused);
        let v = verdict(std::slice::from_ref(&dead), ctx(None));
        assert_eq!(v.state, TimeState::Unreachable);
        assert_eq!(v.servers[0].state, ServerState::Unreachable);
        let g = gate(&v);
        assert!(g.allowed && g.warning.is_some() && g.reason.is_none());
        let v = verdict(&[], ctx(None));
        assert_eq!(v.state, TimeState::Unconfigured);
        let m = ManualRecord {
            set_at: "2026-01-01T00:00:00Z".into(),
            previous: "2020-01-01T00:00:00Z".into(),
            boot_id: "b0".into(),
        };
        let v = verdict(&[dead], ctx(Some(&m)));
        assert_eq!(v.state, TimeState::Manual);
        assert!(v
            .message
            .starts_with("Time set by hand at 2026-01-01T00:00:00Z"));
        assert!(v.manual.unwrap().earlier_boot);
        // Servers that answer outrank a hand-set time.
        let v = verdict(&[server("a", &[(0.0, 0.01)])], ctx(Some(&m)));
        assert_eq!(v.state, TimeState::Ok);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(describe_offset(300.0), "5 min 0 s behind");
        assert_eq!(describe_offset(-2.3), "2.3 s ahead of");
        assert_eq!(human_seconds(7322.0), "2 h 2 min");
        assert_eq!(human_seconds(-90_000.0), "1 d 1 h");
    }
}
