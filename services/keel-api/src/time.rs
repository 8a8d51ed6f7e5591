//! NTP check and clock gate (keel-timed): the verdict shown on *Status › Basics*,
//! `GET /appliance/api/v1/time`, `keelctl time`, and the gate that update install
//! and download-key generation consult.
//!
//! Offsets follow NTP's sign: `offset = server time − local time`, so a positive
//! offset means the local clock is *behind* the servers.

use serde::{Deserialize, Serialize};

/// The combined answer to "is the clock right?".
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TimeState {
    /// |offset| is under the threshold.
    Ok,
    /// Servers answered and agree the local clock is off by at least the threshold.
    Skewed,
    /// Servers are configured but none gave a usable answer.
    Unreachable,
    /// No NTP server is configured.
    Unconfigured,
    /// No server reachable, and an admin set the time by hand.
    Manual,
}

impl TimeState {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeState::Ok => "ok",
            TimeState::Skewed => "skewed",
            TimeState::Unreachable => "unreachable",
            TimeState::Unconfigured => "unconfigured",
            TimeState::Manual => "manual",
        }
    }
}

impl std::fmt::Display for TimeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one server's replies came to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Valid replies; counted in the verdict.
    Ok,
    /// Valid replies, but its offset disagrees with the majority of the servers.
    Outlier,
    /// Replies came but none was valid (kiss-o'-death, unsynchronized, wrong origin, ...).
    Rejected,
    /// No reply within the timeout (or the port was closed).
    Unreachable,
    /// The name did not resolve.
    Unresolved,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Ok => "ok",
            ServerState::Outlier => "outlier",
            ServerState::Rejected => "rejected",
            ServerState::Unreachable => "unreachable",
            ServerState::Unresolved => "unresolved",
        }
    }
}

/// One configured server in the verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerReport {
    /// As configured: a host name or address, optionally with `:port`.
    pub server: String,
    /// The address queried (`ip:port`), once resolved.
    pub address: Option<String>,
    pub state: ServerState,
    /// Of the lowest-delay valid sample, in seconds.
    pub offset_seconds: Option<f64>,
    pub delay_seconds: Option<f64>,
    pub stratum: Option<u8>,
    /// `none`, `add_second`, `delete_second` (valid replies never carry `unsynchronized`).
    pub leap: Option<String>,
    /// Reference ID: an IPv4 address, a hash of an IPv6 address, or a source name
    /// such as `GPS` for stratum 1.
    pub reference_id: Option<String>,
    pub requests_sent: u32,
    pub valid_replies: u32,
    /// Why replies were dropped or why nothing came, e.g. `kiss-o'-death RATE`,
    /// `origin timestamp mismatch (2 replies)`, `no reply within 1.0 s`.
    pub error: Option<String>,
}

/// The time daemon that keeps the clock synchronized (systemd-timesyncd on the image).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DaemonSync {
    /// `systemd-timesyncd`.
    pub name: String,
    /// Its runtime directory exists (`/run/systemd/timesync`, removed when it stops).
    pub running: bool,
    /// It synchronized at least once since it started
    /// (`/run/systemd/timesync/synchronized` exists).
    pub synchronized: bool,
    /// When it last synchronized (the flag file's mtime), RFC 3339.
    pub last_sync: Option<String>,
    /// The kernel's view (adjtimex: no `STA_UNSYNC`, as `timedatectl` shows it):
    /// true while some NTP daemon disciplines the clock, whichever it is.
    pub kernel_synchronized: bool,
}

/// A time set by hand on a network without NTP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ManualTime {
    /// When the clock was set (the new time, RFC 3339 UTC).
    pub set_at: String,
    /// What the clock said just before (RFC 3339 UTC).
    pub previous: String,
    /// The time was set in an earlier boot: without a battery-backed RTC it may be lost.
    pub earlier_boot: bool,
}

/// Answer of `GET /appliance/api/v1/time`, timed's `GET /verdict` and `POST /check`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TimeVerdict {
    pub state: TimeState,
    /// Combined offset of the agreeing servers (median), seconds; present for ok and skewed.
    pub offset_seconds: Option<f64>,
    pub threshold_seconds: f64,
    /// One sentence for people, e.g. "The clock is 5 min behind the NTP servers (offset +300.000 s)."
    pub message: String,
    /// When the check finished, RFC 3339 UTC (by the local clock).
    pub checked_at: String,
    /// How long the check took.
    pub duration_ms: u64,
    pub servers: Vec<ServerReport>,
    /// `netd` (`/data/net/ntp-servers.json`) or `timed` (`/data/timed/config.json`).
    pub servers_source: String,
    pub manual: Option<ManualTime>,
    pub daemon: DaemonSync,
    /// E.g. the servers disagree among themselves.
    pub warnings: Vec<String>,
}

/// Answer of timed's `GET /gate`: may a clock-sensitive operation (update install,
/// download key) go on? `allowed == false` only for `skewed`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClockGate {
    pub allowed: bool,
    /// Go on, but tell the user (unreachable, unconfigured, manual).
    pub warning: Option<String>,
    /// Why it is refused, naming the offset and *Networking › NTP servers*.
    pub reason: Option<String>,
    pub state: TimeState,
    pub offset_seconds: Option<f64>,
}

/// The NTP server list (`/data/net/ntp-servers.json` is this, written by netd;
/// `/data/timed/config.json` carries the same field).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NtpServers {
    /// Host names or addresses, optionally with `:port` (`[v6]:port` for IPv6).
    pub servers: Vec<String>,
}

/// Answer of `GET`/`POST /appliance/api/v1/time/servers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NtpServerList {
    pub servers: Vec<String>,
    /// `netd` or `timed`: who owns the list (only `timed`'s can be set through timed).
    pub source: String,
    pub path: String,
}

/// Body of `POST /appliance/api/v1/time/manual`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ManualTimeRequest {
    /// RFC 3339 (`2026-11-25T05:00:00Z`), or `YYYY-MM-DD HH:MM[:SS]` taken as UTC.
    pub time: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_serialize_in_snake_case() {
        assert_eq!(
            serde_json::to_string(&TimeState::Unreachable).unwrap(),
            "\"unreachable\""
        );
        assert_eq!(TimeState::Skewed.to_string(), "skewed");
        let s: ServerState = serde_json::from_str("\"outlier\"").unwrap();
        assert_eq!(s, ServerState::Outlier);
        for s in [
            ServerState::Ok,
            ServerState::Outlier,
            ServerState::Rejected,
            ServerState::Unreachable,
            ServerState::Unresolved,
        ] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}
