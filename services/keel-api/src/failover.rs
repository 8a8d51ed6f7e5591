//! Failover pair (keel-failover): the local API (`GET /status`, `GET|PUT /psk`,
//! `POST /psk/generate`, `POST /establish`, `POST /sync`, `POST /become-primary`,
//! `POST /break`, `POST /auto-takeover`, `GET|PUT /dns`), used by the console's
//! *Failover* page and `keelctl failover`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
    /// Where the DNS swing server answers now (`ip:port`, UDP and TCP); empty
    /// while it is off or no takeover engine runs (it follows the engine).
    #[serde(default)]
    pub dns_listening: Vec<String>,
}

/// Whether the DNS swing server answers, and when it does not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsSwingServer<'a> {
    /// Answering on these `ip:port` (UDP and TCP).
    Answering(&'a [String]),
    /// Turned off: nothing answers DNS.
    Off,
    /// On, but the server runs while the takeover engine does (once paired).
    WaitingForEngine,
    /// On with an engine running, yet not answering: it stopped (the log says why).
    Stopped,
}

impl DnsSwingServer<'_> {
    /// Why it does not answer although it is on; `None` when answering or off.
    pub fn silent_because(&self) -> Option<&'static str> {
        match self {
            Self::Answering(_) | Self::Off => None,
            Self::WaitingForEngine => Some(
                "the server runs while the takeover engine does, i.e. once a relationship \
                 is established",
            ),
            Self::Stopped => Some("the server stopped; keel-failover's log says why"),
        }
    }
}

impl FailoverOverview {
    /// The DNS swing server's state under `settings` (this node's).
    pub fn dns_server(&self, settings: &DnsSwingSettings) -> DnsSwingServer<'_> {
        if !self.dns_listening.is_empty() {
            DnsSwingServer::Answering(&self.dns_listening)
        } else if !settings.enabled {
            DnsSwingServer::Off
        } else if self.engine.is_none() {
            DnsSwingServer::WaitingForEngine
        } else {
            DnsSwingServer::Stopped
        }
    }
}

/// A list as an admin types it into a form field or a flag: comma or whitespace
/// separated, empty items dropped.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
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

/// TTL of the DNS swing answers when none is given, seconds.
pub const DNS_SWING_DEFAULT_TTL: u32 = 5;

/// Where the DNS swing server listens when nothing is given: both wildcards, port 53.
pub fn dns_swing_default_listen() -> Vec<SocketAddr> {
    vec![
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 53)),
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 53)),
    ]
}

fn dns_swing_default_ttl() -> u32 {
    DNS_SWING_DEFAULT_TTL
}

/// The DNS swing settings (node-local, never synced): keel-failover's `GET|PUT /dns`
/// and `dns.json`, the console's `/appliance/api/v1/failover/dns`, `keelctl failover
/// dns`. This is the plain form: keel-failover's `dns::DnsConfig` is it checked
/// (names, addresses, TTL range, what serving needs) and refuses what is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DnsSwingSettings {
    /// Nothing is bound while false.
    #[serde(default)]
    pub enabled: bool,
    /// The site hostname, e.g. `portal.example.com` (stored lowercase, no final dot).
    #[serde(default)]
    pub name: Option<String>,
    /// Where to answer, UDP and TCP on each: `ip:port`, one or a list.
    #[serde(default = "dns_swing_default_listen", deserialize_with = "one_or_many")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub listen: Vec<SocketAddr>,
    /// TTL of the A/AAAA answers and of negative answers, 1-300 s.
    #[serde(default = "dns_swing_default_ttl")]
    pub ttl: u32,
    /// What this node publishes while it is primary (1-8 IPv4/IPv6 addresses).
    #[serde(default, deserialize_with = "one_or_many")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub this_node: Vec<IpAddr>,
    /// What the peer publishes while it is primary.
    #[serde(default, deserialize_with = "one_or_many")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub peer_node: Vec<IpAddr>,
    /// The names the parent zone's NS records give the two appliances (1-4,
    /// outside `name`): the zone's own NS set.
    #[serde(default, deserialize_with = "one_or_many")]
    pub nameservers: Vec<String>,
}

impl Default for DnsSwingSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            name: None,
            listen: dns_swing_default_listen(),
            ttl: DNS_SWING_DEFAULT_TTL,
            this_node: Vec::new(),
            peer_node: Vec::new(),
            nameservers: Vec::new(),
        }
    }
}

/// Accepts one value or a list, each parsed from its string form (`"[::]:53"`,
/// `"192.0.2.1"`); the error names the item.
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        One(String),
        Many(Vec<String>),
    }
    let parse = |i: Option<usize>, s: &str| {
        s.parse::<T>().map_err(|e| {
            let at = i.map(|i| format!("[{i}] ")).unwrap_or_default();
            serde::de::Error::custom(format!("{at}{s:?}: {e}"))
        })
    };
    match Form::deserialize(d)
        .map_err(|_| serde::de::Error::custom("expected a string or a list of strings"))?
    {
        Form::One(s) => Ok(vec![parse(None, &s)?]),
        Form::Many(v) => v
            .iter()
            .enumerate()
            .map(|(i, s)| parse(Some(i), s))
            .collect(),
    }
}
