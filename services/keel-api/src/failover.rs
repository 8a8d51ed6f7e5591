//! Failover pair (keel-failover): the engine's local API (`GET /status`,
//! `POST /become-primary`, `POST /auto-takeover`), later the console's *Failover*
//! page and `keelctl failover`.

use serde::{Deserialize, Serialize};

/// What this node does with the shared addresses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailoverRole {
    /// Holds the shared addresses and answers for them.
    Primary,
    /// Watches the primary's heartbeats; takes over when it is gone.
    Backup,
}

impl FailoverRole {
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverRole::Primary => "primary",
            FailoverRole::Backup => "backup",
        }
    }
}

impl std::fmt::Display for FailoverRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Heartbeats sent and received, and the ones dropped by reason (each counted once,
/// under the first check it failed).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailoverCounters {
    pub sent: u64,
    pub send_errors: u64,
    pub received: u64,
    /// Shorter or longer than a heartbeat, or not starting with the magic.
    pub truncated: u64,
    pub wrong_version: u64,
    /// The MAC did not verify (wrong key, or altered).
    pub bad_mac: u64,
    /// A sequence number already seen (or older), a retired start nonce, or our own
    /// packet reflected back.
    pub replayed: u64,
    pub takeovers: u64,
    pub step_downs: u64,
    /// Takeovers not made because the shared address still answered ARP / ND.
    pub held_off_address_answered: u64,
    /// Takeovers not made (or the address released) because the check address did
    /// not answer: this node is cut off.
    pub isolated: u64,
}

/// Answer of `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailoverStatus {
    pub node_id: String,
    pub role: FailoverRole,
    /// Highest term this node knows; persisted before it is acted on.
    pub term: u64,
    /// The shared addresses are on this node's interface.
    pub holding: bool,
    pub auto_takeover: bool,
    pub interface: String,
    /// CIDR form, e.g. `192.0.2.10/24`.
    pub shared_addresses: Vec<String>,
    /// Milliseconds since the last authenticated heartbeat; `None` before the first.
    pub peer_last_seen_ms: Option<u64>,
    pub peer_term: Option<u64>,
    pub peer_holding: Option<bool>,
    pub counters: FailoverCounters,
}

/// Body of `POST /auto-takeover`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct AutoTakeoverRequest {
    pub enabled: bool,
}
