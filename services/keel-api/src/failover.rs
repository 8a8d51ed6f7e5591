//! Failover pair (keel-failover): the local API (`GET /status`, `GET|PUT /psk`,
//! `POST /psk/generate`, `POST /establish`, `POST /sync`, `POST /become-primary`,
//! `POST /break`, `POST /auto-takeover`), used by the console's *Failover* page and
//! `keelctl failover`.

use serde::{Deserialize, Serialize};

/// What this node does with the shared addresses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailoverCounters {
    pub sent: u64,
    pub send_errors: u64,
    pub received: u64,
    /// Shorter or longer than a heartbeat, or not starting with the magic.
    pub truncated: u64,
    pub wrong_version: u64,
    /// The MAC did not verify (wrong key, or altered).
    pub bad_mac: u64,
    /// A sequence number already seen (or older), a retired start nonce, our own
    /// packet reflected back, or a heartbeat that does not echo this node's current
    /// start nonce (a recording from before this start, or the first one or two
    /// after either node starts).
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AutoTakeoverRequest {
    pub enabled: bool,
}

/// The other node of an established pair, as this node pinned it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailoverPeer {
    pub node_id: String,
    /// The peer's pairing endpoint (`ip:port`, TLS), where this node reaches it.
    pub address: String,
    /// Product version the peer reported when the relationship was made.
    pub version: String,
    /// SHA-256 of the peer's pairing certificate (hex, lowercase), pinned at *establish*.
    pub fingerprint: String,
}

/// Outcome of the last sync this node sent (primary) or applied (backup).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncReport {
    /// RFC 3339, UTC.
    pub at: String,
    /// `sent` on the primary, `received` on the backup.
    pub direction: String,
    pub ok: bool,
    /// What the sync held, one line per item, e.g. `console users`,
    /// `certificate 3f2a… for 10.0.0.100`, `update settings`, `shared data: 12 files`.
    pub items: Vec<String>,
    /// Why it failed (nothing of it was applied); `None` when `ok`.
    pub error: Option<String>,
}

/// Answer of `GET /status` on a node in any state: unpaired nodes carry no
/// `engine`, paired ones carry the takeover engine's view.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailoverOverview {
    /// This node's own pairing endpoint port (TLS).
    pub pair_port: u16,
    /// SHA-256 of this node's pairing certificate (hex), for the admin to compare.
    pub fingerprint: String,
    /// `None` until a relationship exists.
    pub peer: Option<FailoverPeer>,
    pub engine: Option<FailoverStatus>,
    pub last_sync: Option<SyncReport>,
}

/// Body of `POST /establish`, given on the node that becomes primary (A).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EstablishRequest {
    /// B's pairing endpoint as A reaches it: `ip:port` or `[v6]:port`; port optional
    /// (default 7947).
    pub peer: String,
    /// A's pairing endpoint as B reaches it back.
    pub reverse: String,
    /// The shared addresses (CIDR) the pair serves; the console fills them from the
    /// addresses netd marks *shared*.
    pub shared_addresses: Vec<String>,
    /// A's interface that carries them (B picks its own interface on the same subnet).
    pub interface: String,
}

/// Body of `PUT /psk`: the inter-appliance key, base64 (standard alphabet), at least
/// 32 bytes decoded. Answer of `GET /psk` (administrators only in the console).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PskBody {
    pub psk: String,
}
