//! DNS swing: an authoritative answer for the site hostname with the current
//! primary's addresses, for pairs whose two nodes share no L2 segment (so no
//! address can move between them). The customer's DNS delegates that one name to
//! both appliances; each answers with whichever node is primary now.
//!
//! The zone is exactly one name, its apex: A/AAAA of the primary, plus SOA and NS
//! of its own. Other types there are NODATA, names below it NXDOMAIN, every other
//! name REFUSED. No recursion is offered (RA=0), whatever the query's RD says.
//! Off unless `enabled`. See README.md, *DNS swing*.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use keel_api::DnsSwingSettings;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tracing::{info, warn};

pub const DEFAULT_TTL: u32 = keel_api::DNS_SWING_DEFAULT_TTL;
pub const MAX_TTL: u32 = 300;
/// Addresses per node: keeps an A/AAAA answer below 512 bytes even for a 253-byte
/// name (no truncation, no TCP retry for plain UDP clients).
pub const MAX_ADDRESSES: usize = 8;
pub const MAX_NAMESERVERS: usize = 4;
/// The NS set does not swing; it changes only when an admin edits it.
const NS_TTL: u32 = 3600;
/// EDNS payload we offer: the DNS flag day 2020 size, no IP fragmentation.
const EDNS_PAYLOAD: u16 = 1232;
/// A TCP client that sends nothing for this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("listen {addr} ({proto}): {source}{hint}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("DNS server stopped: {0}")]
    Stopped(String),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> DnsError {
    DnsError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Who is primary now, as the engine sees it. The server reads it at every query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    ThisNode,
    PeerNode,
    /// No primary known (engine starting, peer silent, undecided). The server keeps
    /// answering with the last known primary; before any is known A/AAAA get SERVFAIL.
    Unknown,
}

impl Who {
    /// From the engine's status: this node when it is primary; the peer while its
    /// heartbeats (heard within `window_ms`) claim primary; else unknown.
    pub fn from_status(status: &keel_api::FailoverStatus, window_ms: u64) -> Self {
        let peer_fresh = status.peer_last_seen_ms.is_some_and(|ms| ms <= window_ms);
        if status.role == keel_api::FailoverRole::Primary {
            Self::ThisNode
        } else if peer_fresh && status.peer_holding == Some(true) {
            Self::PeerNode
        } else {
            Self::Unknown
        }
    }
}

/// The DNS swing settings, checked: [`keel_api::DnsSwingSettings`] (the one model
/// the console and keelctl see) once it passed [`DnsConfig::validate`], names
/// lowercased. Deserializing validates; errors name the field. Reads as the
/// settings it holds (`cfg.ttl`, `cfg.listen`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "DnsSwingSettings")]
pub struct DnsConfig(DnsSwingSettings);

impl std::ops::Deref for DnsConfig {
    type Target = DnsSwingSettings;

    fn deref(&self) -> &DnsSwingSettings {
        &self.0
    }
}

/// Written as the plain settings (`dns.json`, the local API's answers).
impl Serialize for DnsConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl DnsConfig {
    pub fn settings(&self) -> &DnsSwingSettings {
        &self.0
    }
}

pub fn default_listen() -> Vec<SocketAddr> {
    keel_api::dns_swing_default_listen()
}

impl TryFrom<DnsSwingSettings> for DnsConfig {
    type Error = DnsError;

    fn try_from(mut raw: DnsSwingSettings) -> Result<Self, DnsError> {
        if let Some(n) = &raw.name {
            raw.name = Some(hostname("name", n)?.0);
        }
        raw.nameservers = raw
            .nameservers
            .iter()
            .enumerate()
            .map(|(i, n)| hostname(&format!("nameservers[{i}]"), n).map(|(s, _)| s))
            .collect::<Result<_, _>>()?;
        let cfg = Self(raw);
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A hostname as DNS carries it: LDH labels of 1–63 bytes, ≤ 253 in all, at least
/// two labels (a delegated name lives under a parent), lowercased, no trailing dot.
fn hostname(field: &str, s: &str) -> Result<(String, Name), DnsError> {
    let bad = |why: &str| invalid(field, format!("{s:?} is not a DNS hostname: {why}"));
    if !s.is_ascii() {
        return Err(bad("give internationalized names in their xn-- form"));
    }
    let lower = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if lower.is_empty() {
        return Err(bad("empty"));
    }
    if lower.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    let labels: Vec<&str> = lower.split('.').collect();
    if labels.len() < 2 {
        return Err(bad("needs at least two labels, e.g. portal.example.com"));
    }
    for label in &labels {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("every label is 1-63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(bad(
                "labels are letters, digits and inner hyphens (a-z 0-9 -)",
            ));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad("the last label is all digits (an address?)"));
    }
    let name = Name::from_ascii(format!("{lower}.")).map_err(|e| bad(&e.to_string()))?;
    Ok((lower, name))
}

fn addresses(field: &str, list: &[IpAddr]) -> Result<(), DnsError> {
    if list.is_empty() {
        return Err(invalid(field, "at least one address (IPv4 and/or IPv6)"));
    }
    if list.len() > MAX_ADDRESSES {
        return Err(invalid(field, format!("at most {MAX_ADDRESSES} addresses")));
    }
    for (i, ip) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let unusable = ip.is_unspecified()
            || ip.is_loopback()
            || ip.is_multicast()
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if unusable {
            return Err(invalid(f, format!("{ip} cannot be published")));
        }
        if list[..i].contains(ip) {
            return Err(invalid(f, format!("{ip} is listed twice")));
        }
    }
    Ok(())
}

impl DnsConfig {
    /// Checks every field; a disabled config may leave out what only serving needs.
    pub fn validate(&self) -> Result<(), DnsError> {
        if !(1..=MAX_TTL).contains(&self.ttl) {
            return Err(invalid(
                "ttl",
                format!(
                    "{} s: 1-{MAX_TTL} s (short: resolvers follow a takeover within one TTL)",
                    self.ttl
                ),
            ));
        }
        if self.listen.is_empty() {
            return Err(invalid("listen", "at least one address:port"));
        }
        for (i, a) in self.listen.iter().enumerate() {
            if self.listen[..i].contains(a) {
                return Err(invalid(
                    format!("listen[{i}]"),
                    format!("{a} is listed twice"),
                ));
            }
        }
        if self.enabled {
            self.zone()?;
        } else {
            // Off: the zone fields may be missing, but what is given must be right.
            let lower = match &self.name {
                Some(n) => Some(hostname("name", n)?.0),
                None => None,
            };
            if !self.this_node.is_empty() {
                addresses("this_node", &self.this_node)?;
            }
            if !self.peer_node.is_empty() {
                addresses("peer_node", &self.peer_node)?;
            }
            self.nameserver_names(lower.as_deref())?;
        }
        Ok(())
    }

    /// Everything serving needs, all required.
    fn zone(&self) -> Result<Zone, DnsError> {
        let Some(name) = &self.name else {
            return Err(invalid(
                "name",
                "the site hostname is required when DNS swing is on",
            ));
        };
        let (lower, apex) = hostname("name", name)?;
        addresses("this_node", &self.this_node)?;
        addresses("peer_node", &self.peer_node)?;
        if self.nameservers.is_empty() {
            return Err(invalid(
                "nameservers",
                "the names under which the parent zone delegates to both appliances (at least one)",
            ));
        }
        let ns = self.nameserver_names(Some(&lower))?;
        Ok(Zone::new(
            apex,
            self.ttl,
            &self.this_node,
            &self.peer_node,
            ns,
        ))
    }

    fn nameserver_names(&self, zone: Option<&str>) -> Result<Vec<Name>, DnsError> {
        if self.nameservers.len() > MAX_NAMESERVERS {
            return Err(invalid("nameservers", format!("at most {MAX_NAMESERVERS}")));
        }
        let mut ns = Vec::new();
        for (i, n) in self.nameservers.iter().enumerate() {
            let field = format!("nameservers[{i}]");
            let (s, n) = hostname(&field, n)?;
            if let Some(zone) = zone.filter(|z| s == *z || s.ends_with(&format!(".{z}"))) {
                return Err(invalid(
                    field,
                    format!("{s} is inside the zone {zone}, which answers only its apex (no glue): use a name outside it"),
                ));
            }
            if ns.contains(&n) {
                return Err(invalid(field, format!("{s} is listed twice")));
            }
            ns.push(n);
        }
        Ok(ns)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    This,
    Peer,
}

/// The records of the one-name zone; only the SOA serial changes at run time.
struct Zone {
    apex: Name,
    lower: LowerName,
    ttl: u32,
    this: Vec<Record>,
    peer: Vec<Record>,
    ns: Vec<Record>,
}

impl Zone {
    fn new(apex: Name, ttl: u32, this: &[IpAddr], peer: &[IpAddr], ns: Vec<Name>) -> Self {
        let addr = |ip: &IpAddr| {
            let data = match ip {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            };
            Record::from_rdata(apex.clone(), ttl, data)
        };
        Self {
            lower: LowerName::new(&apex),
            ttl,
            this: this.iter().map(addr).collect(),
            peer: peer.iter().map(addr).collect(),
            ns: ns
                .into_iter()
                .map(|n| Record::from_rdata(apex.clone(), NS_TTL, RData::NS(NS(n))))
                .collect(),
            apex,
        }
    }

    fn soa(&self, serial: u32) -> Record {
        let RData::NS(NS(mname)) = &self.ns[0].data else {
            unreachable!("the NS set holds NS records")
        };
        // RFC 2142 mailbox; refresh/retry/expire matter to secondaries only (there
        // are none). minimum = ttl: negative answers are cached no longer than
        // positive ones (RFC 2308).
        let rname = Name::from_ascii("hostmaster")
            .and_then(|h| h.append_domain(&self.apex))
            .unwrap_or_else(|_| self.apex.clone());
        let soa = SOA::new(mname.clone(), rname, serial, 3600, 600, 86400, self.ttl);
        Record::from_rdata(self.apex.clone(), self.ttl, RData::SOA(soa))
    }

    fn addresses(&self, side: Side) -> &[Record] {
        match side {
            Side::This => &self.this,
            Side::Peer => &self.peer,
        }
    }
}

struct Last {
    /// The last primary known; answered while the engine says Unknown.
    side: Option<Side>,
    serial: u32,
    unknown: bool,
}

struct Handler {
    zone: Zone,
    primary: watch::Receiver<Who>,
    last: Mutex<Last>,
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() as u32)
}

impl Handler {
    /// The side to answer with and the SOA serial, read from the watch at every
    /// query (so an answer never lags the engine), noting changes.
    fn current(&self) -> (Option<Side>, u32) {
        let who = *self.primary.borrow();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = match who {
            Who::ThisNode => Some(Side::This),
            Who::PeerNode => Some(Side::Peer),
            Who::Unknown => None,
        };
        match now {
            Some(side) if last.side != Some(side) => {
                // The serial moves with the answer (monotonic even if the clock is not).
                last.serial = unix_now().max(last.serial.wrapping_add(1));
                last.side = Some(side);
                last.unknown = false;
                info!(name = %self.zone.apex, primary = ?side, serial = last.serial, "DNS swing: answering with the new primary");
            }
            Some(_) => last.unknown = false,
            None if !last.unknown => {
                last.unknown = true;
                match last.side {
                    Some(side) => {
                        warn!(name = %self.zone.apex, ?side, "DNS swing: primary unknown, answering with the last known")
                    }
                    None => {
                        warn!(name = %self.zone.apex, "DNS swing: no primary known yet, A/AAAA get SERVFAIL")
                    }
                }
            }
            None => {}
        }
        (last.side, last.serial)
    }
}

/// What one query gets, before encoding.
struct Answer {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authority: Vec<Record>,
}

impl Answer {
    fn error(code: ResponseCode) -> Self {
        Self {
            code,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
        }
    }
}

impl Handler {
    fn answer(&self, request: &Request) -> Answer {
        if request.metadata.op_code != OpCode::Query {
            return Answer::error(ResponseCode::NotImp);
        }
        let [query] = request.queries.queries() else {
            return Answer::error(ResponseCode::FormErr);
        };
        let zone = &self.zone;
        // Only IN; only our name and what lies below it. Everything else is not ours
        // to answer, and we resolve nothing for anyone.
        if query.query_class() != DNSClass::IN || !zone.lower.zone_of(query.name()) {
            return Answer::error(ResponseCode::Refused);
        }
        let (side, serial) = self.current();
        let soa = || zone.soa(serial);
        let mut a = Answer {
            code: ResponseCode::NoError,
            authoritative: true,
            answers: Vec::new(),
            authority: Vec::new(),
        };
        if *query.name() != zone.lower {
            a.code = ResponseCode::NXDomain;
            a.authority.push(soa());
            return a;
        }
        let qtype = query.query_type();
        let of_type = |side: Side, t: RecordType| {
            zone.addresses(side)
                .iter()
                .filter(move |r| r.record_type() == t)
                .cloned()
        };
        match qtype {
            RecordType::A | RecordType::AAAA | RecordType::ANY => {
                let Some(side) = side else {
                    // Never knew a primary: no address to give. SERVFAIL makes a
                    // resolver ask the other appliance, which may know.
                    return Answer::error(ResponseCode::ServFail);
                };
                if qtype == RecordType::ANY {
                    // RFC 8482: a subset is a full answer to ANY; the addresses
                    // alone keep it small (no amplification through ANY).
                    a.answers.extend(zone.addresses(side).iter().cloned());
                } else {
                    a.answers.extend(of_type(side, qtype));
                }
            }
            RecordType::SOA => a.answers.push(soa()),
            RecordType::NS => a.answers.extend(zone.ns.iter().cloned()),
            // No zone transfers: the zone is generated, there are no secondaries.
            RecordType::AXFR | RecordType::IXFR => return Answer::error(ResponseCode::Refused),
            _ => {}
        }
        if a.answers.is_empty() {
            // NODATA: the name exists, the type does not.
            a.authority.push(soa());
        }
        a
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut edns = None;
        let mut answer = match &request.edns {
            Some(req) => {
                let mut e = Edns::new();
                e.set_max_payload(req.max_payload().clamp(512, EDNS_PAYLOAD));
                e.set_version(0);
                edns = Some(e);
                if req.version() > 0 {
                    Answer::error(ResponseCode::BADVERS)
                } else {
                    self.answer(request)
                }
            }
            None => self.answer(request),
        };
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.response_code = answer.code;
        meta.authoritative = answer.authoritative;
        // Explicit, whatever the request's RD asked: this server never recurses.
        meta.recursion_available = false;
        let authority = std::mem::take(&mut answer.authority);
        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            meta,
            answer.answers.iter(),
            authority.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                warn!(%error, "DNS swing: sending a response failed");
                meta.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: meta,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// A bound DNS swing server: sockets open, answering once [`DnsServer::run`] runs.
pub struct DnsServer {
    server: hickory_server::Server<Handler>,
    addrs: Vec<SocketAddr>,
}

impl DnsServer {
    /// Validates `cfg` and binds UDP and TCP on every `listen` address (with port 0
    /// both get the same ephemeral port). `None` when DNS swing is off: then nothing
    /// is bound.
    pub async fn bind(
        cfg: &DnsConfig,
        primary: watch::Receiver<Who>,
    ) -> Result<Option<Self>, DnsError> {
        cfg.validate()?;
        if !cfg.enabled {
            return Ok(None);
        }
        let zone = cfg.zone()?;
        let handler = Handler {
            zone,
            primary,
            last: Mutex::new(Last {
                side: None,
                serial: unix_now(),
                unknown: false,
            }),
        };
        let mut server = hickory_server::Server::new(handler);
        let mut addrs = Vec::new();
        let defaults = cfg.listen == default_listen();
        for &addr in &cfg.listen {
            match bind_both(addr) {
                Ok((udp, tcp, local)) => {
                    server.register_socket(udp);
                    server.register_listener(tcp, TCP_IDLE, TCP_RESPONSE_BUFFER);
                    addrs.push(local);
                }
                // A host without IPv6 (or IPv4) still serves the other family when
                // the listen list is the default wildcard pair.
                Err(DnsError::Bind { source, .. })
                    if defaults && source.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
                {
                    warn!(%addr, "DNS swing: address family not supported here, skipped");
                }
                Err(e) => return Err(e),
            }
        }
        if addrs.is_empty() {
            return Err(invalid("listen", "no listen address could be bound"));
        }
        info!(name = ?cfg.name, listen = ?addrs, ttl = cfg.ttl, "DNS swing: listening");
        Ok(Some(Self { server, addrs }))
    }

    /// Where it answers (the bound addresses, ports resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Answers until a listener fails for good. Dropping the future stops the
    /// server and closes its sockets.
    pub async fn run(mut self) -> Result<(), DnsError> {
        self.server
            .block_until_done()
            .await
            .map_err(|e| DnsError::Stopped(e.to_string()))
    }
}

/// Binds and runs DNS swing per `cfg`, answering with `primary`'s current value.
/// Returns `Ok(())` at once when it is off: spawn it, do not `select!` on it.
pub async fn serve(cfg: DnsConfig, primary: watch::Receiver<Who>) -> Result<(), DnsError> {
    match DnsServer::bind(&cfg, primary).await? {
        Some(server) => server.run().await,
        None => {
            info!("DNS swing off");
            Ok(())
        }
    }
}

fn bind_error(addr: SocketAddr, proto: &'static str, source: io::Error) -> DnsError {
    let hint = match source.kind() {
        io::ErrorKind::AddrInUse => {
            " (another DNS server holds the port, e.g. systemd-resolved's stub on 127.0.0.53:53 \
             collides with 0.0.0.0:53: list this node's own addresses in listen)"
        }
        io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            " (a port below 1024 needs CAP_NET_BIND_SERVICE)"
        }
        _ => "",
    };
    DnsError::Bind {
        addr,
        proto,
        hint,
        source,
    }
}

fn socket(addr: SocketAddr, ty: socket2::Type) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Socket};
    let s = Socket::new(Domain::for_address(addr), ty, None)?;
    if addr.is_ipv6() {
        // So [::]:53 and 0.0.0.0:53 coexist whatever net.ipv6.bindv6only says.
        s.set_only_v6(true)?;
    }
    if ty == socket2::Type::STREAM {
        // A restart must not wait for old connections in TIME_WAIT.
        s.set_reuse_address(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    if ty == socket2::Type::STREAM {
        s.listen(128)?;
    }
    Ok(s)
}

/// UDP and TCP on one address; port 0 picks one port free for both.
fn bind_both(addr: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), DnsError> {
    let tries = if addr.port() == 0 { 32 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = socket(addr, socket2::Type::DGRAM).map_err(|e| bind_error(addr, "udp", e))?;
        let local = udp
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| bind_error(addr, "udp", io::Error::other("no local address")))?;
        match socket(local, socket2::Type::STREAM) {
            Ok(tcp) => {
                let udp = UdpSocket::from_std(std::net::UdpSocket::from(udp))
                    .map_err(|e| bind_error(addr, "udp", e))?;
                let tcp = TcpListener::from_std(std::net::TcpListener::from(tcp))
                    .map_err(|e| bind_error(addr, "tcp", e))?;
                return Ok((udp, tcp, local));
            }
            // The ephemeral UDP port is taken for TCP: draw another.
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(bind_error(local, "tcp", e)),
        }
    }
    Err(bind_error(
        addr,
        "tcp",
        last.unwrap_or_else(|| io::Error::other("no port free for UDP and TCP")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_checked_and_lowercased() {
        assert_eq!(
            hostname("name", "Portal.Example.COM.").unwrap().0,
            "portal.example.com"
        );
        for bad in [
            "",
            "com",
            "a..b",
            "-a.example.com",
            "a-.example.com",
            "a_b.example.com",
            "x.1",
            "ä.example.com",
        ] {
            let e = hostname("name", bad).unwrap_err().to_string();
            assert!(e.starts_with("name: "), "{bad}: {e}");
        }
        let long = format!("{}.example.com", "a".repeat(64));
        assert!(hostname("name", &long).is_err());
    }

    #[test]
    fn who_follows_the_engine_status() {
        let status = |role, peer_last_seen_ms, peer_holding| keel_api::FailoverStatus {
            node_id: "a".into(),
            role,
            term: 3,
            holding: role == keel_api::FailoverRole::Primary,
            auto_takeover: true,
            interface: "eth0".into(),
            shared_addresses: vec![],
            peer_last_seen_ms,
            peer_term: Some(3),
            peer_holding,
            counters: Default::default(),
        };
        use keel_api::FailoverRole::{Backup, Primary};
        assert_eq!(
            Who::from_status(&status(Primary, None, None), 100),
            Who::ThisNode
        );
        assert_eq!(
            Who::from_status(&status(Primary, Some(5), Some(true)), 100),
            Who::ThisNode
        );
        assert_eq!(
            Who::from_status(&status(Backup, Some(20), Some(true)), 100),
            Who::PeerNode
        );
        // A silent peer's old claim, a peer that is backup too, no peer yet: unknown.
        assert_eq!(
            Who::from_status(&status(Backup, Some(500), Some(true)), 100),
            Who::Unknown
        );
        assert_eq!(
            Who::from_status(&status(Backup, Some(20), Some(false)), 100),
            Who::Unknown
        );
        assert_eq!(
            Who::from_status(&status(Backup, None, None), 100),
            Who::Unknown
        );
    }

    #[test]
    fn the_serial_moves_with_the_answer() {
        let (tx, rx) = watch::channel(Who::Unknown);
        let zone = Zone::new(
            Name::from_ascii("s.example.com.").unwrap(),
            5,
            &["192.0.2.1".parse().unwrap()],
            &["192.0.2.2".parse().unwrap()],
            vec![Name::from_ascii("ns.example.net.").unwrap()],
        );
        let h = Handler {
            zone,
            primary: rx,
            last: Mutex::new(Last {
                side: None,
                serial: 7,
                unknown: false,
            }),
        };
        assert_eq!(h.current().0, None);
        tx.send(Who::ThisNode).unwrap();
        let (side, s1) = h.current();
        assert_eq!(side, Some(Side::This));
        assert!(s1 > 7);
        tx.send(Who::Unknown).unwrap();
        assert_eq!(
            h.current(),
            (Some(Side::This), s1),
            "unknown keeps the last answer"
        );
        tx.send(Who::PeerNode).unwrap();
        let (side, s2) = h.current();
        assert_eq!(side, Some(Side::Peer));
        assert!(s2 > s1);
    }
}
