//! The SNTPv4 client: a few requests to every server in parallel, each reply
//! checked like RFC 5905 asks before its timestamps are believed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::split_server;
use crate::packet::{self, Leap, Mode, Packet, ParseError, Timestamp};

/// RFC 5905 MAXDIST: a server further than this from its reference is not trusted.
pub const MAX_ROOT_DISTANCE: f64 = 1.5;

/// How a check queries. The defaults respect public servers' rate limits (ntpd's
/// `discard minimum` guard is 2 s, chrony's `iburst` spacing is 2 s too).
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Requests per server at most; the lowest-delay valid reply is used.
    pub samples: u32,
    /// At least this long between the starts of two requests to one server.
    pub interval: Duration,
    /// How long to wait for each reply.
    pub timeout: Duration,
    /// How long a name may take to resolve.
    pub resolve_timeout: Duration,
    /// Stop asking a server once two consecutive replies' offsets differ by less
    /// than this: more replies only sharpen the offset by finding a lower-delay
    /// one, and on a quiet path that gain is below anything a caller uses. `None`
    /// always takes all `samples`.
    pub settle: Option<f64>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            samples: 4,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            resolve_timeout: Duration::from_secs(3),
            settle: Some(0.001),
        }
    }
}

impl CheckOptions {
    /// The longest one server can take once resolved (a dead one that is not
    /// given up): requests go one at a time, each waiting up to `timeout`.
    pub fn per_server_bound(&self) -> Duration {
        self.interval.max(self.timeout) * self.samples.saturating_sub(1) + self.timeout
    }
}

/// Why a reply was not believed.
#[derive(Debug, Clone, PartialEq)]
pub enum Reject {
    Malformed(ParseError),
    NotServerMode,
    /// The origin timestamp is none of ours: spoofed or misdirected.
    OriginMismatch,
    /// Answers an earlier request of ours that already timed out.
    Late,
    KissOfDeath(String),
    Unsynchronized,
    BadStratum(u8),
    ZeroTimestamp,
    RootDistance(f64),
}

impl Reject {
    fn label(&self) -> String {
        match self {
            Reject::Malformed(e) => format!("malformed reply ({e})"),
            Reject::NotServerMode => "reply not in server mode".into(),
            Reject::OriginMismatch => "origin timestamp mismatch".into(),
            Reject::Late => "late reply".into(),
            Reject::KissOfDeath(code) => format!("kiss-o'-death {code}"),
            Reject::Unsynchronized => "server unsynchronized (leap indicator 3)".into(),
            Reject::BadStratum(s) => format!("stratum {s}"),
            Reject::ZeroTimestamp => "zero receive or transmit timestamp".into(),
            Reject::RootDistance(d) => format!("root distance {d:.2} s over {MAX_ROOT_DISTANCE} s"),
        }
    }
}

/// Checks one parsed reply to the request whose transmit timestamp was `nonce`.
/// The origin is checked before anything else is believed, kiss-o'-death
/// included: otherwise anyone could silence a server for us by spoofing a KoD.
pub fn validate(p: &Packet, nonce: Timestamp, earlier: &[Timestamp]) -> Result<(), Reject> {
    if p.mode != Mode::Server {
        return Err(Reject::NotServerMode);
    }
    if p.origin != nonce {
        return Err(if earlier.contains(&p.origin) {
            Reject::Late
        } else {
            Reject::OriginMismatch
        });
    }
    if let Some(code) = p.kiss_code() {
        return Err(Reject::KissOfDeath(code));
    }
    if p.leap == Leap::Unsynchronized {
        return Err(Reject::Unsynchronized);
    }
    if p.stratum >= 16 {
        return Err(Reject::BadStratum(p.stratum));
    }
    if p.transmit == Timestamp::ZERO || p.receive == Timestamp::ZERO {
        return Err(Reject::ZeroTimestamp);
    }
    let distance = p.root_delay.seconds() / 2.0 + p.root_dispersion.seconds();
    if distance > MAX_ROOT_DISTANCE {
        return Err(Reject::RootDistance(distance));
    }
    Ok(())
}

/// One valid exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Server minus local clock, seconds.
    pub offset: f64,
    /// Round trip minus the server's processing time, seconds.
    pub delay: f64,
    pub stratum: u8,
    pub leap: Leap,
    pub reference_id: String,
}

impl Sample {
    /// RFC 5905's on-wire equations: t1 our send, t2 their receive, t3 their
    /// send, t4 our receive.
    pub fn from_exchange(p: &Packet, t1: Timestamp, t4: Timestamp) -> Self {
        let (t2, t3) = (p.receive, p.transmit);
        let offset = (t2.seconds_since(t1) + t3.seconds_since(t4)) / 2.0;
        let delay = t4.seconds_since(t1) - t3.seconds_since(t2);
        Sample {
            offset,
            delay: delay.max(0.0),
            stratum: p.stratum,
            leap: p.leap,
            reference_id: p.reference_id_text(),
        }
    }
}

/// Why a server gave nothing at all.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    Unresolved(String),
    /// ICMP port unreachable: nothing listens there.
    Refused,
    Io(String),
}

/// What one server's requests came to.
#[derive(Debug, Clone)]
pub struct ServerOutcome {
    pub server: String,
    pub address: Option<SocketAddr>,
    pub sent: u32,
    pub samples: Vec<Sample>,
    /// Reject labels with how often each happened, in first-seen order.
    pub rejects: Vec<(String, u32)>,
    pub failure: Option<Failure>,
}

impl ServerOutcome {
    fn new(server: &str) -> Self {
        Self {
            server: server.to_owned(),
            address: None,
            sent: 0,
            samples: Vec::new(),
            rejects: Vec::new(),
            failure: None,
        }
    }

    /// The lowest-delay sample: the one least bent by queueing on the path.
    pub fn best(&self) -> Option<&Sample> {
        self.samples
            .iter()
            .min_by(|a, b| a.delay.total_cmp(&b.delay))
    }

    fn reject(&mut self, r: &Reject) {
        let label = r.label();
        match self.rejects.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => self.rejects.push((label, 1)),
        }
    }
}

/// Queries every server in parallel. A server that has not answered at all is
/// given up once every server that did answer is finished and its own first
/// request has had its full timeout: one dead server does not hold the verdict
/// for all its retries.
pub async fn check_servers(servers: &[String], opts: &CheckOptions) -> Vec<ServerOutcome> {
    let (abandon_tx, abandon_rx) = watch::channel(false);
    let answered: Vec<Arc<AtomicBool>> = servers
        .iter()
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let mut tasks = JoinSet::new();
    for (i, server) in servers.iter().enumerate() {
        let (server, opts, rx, flag) = (
            server.clone(),
            opts.clone(),
            abandon_rx.clone(),
            answered[i].clone(),
        );
        tasks.spawn(async move { (i, query_server(&server, &opts, rx, &flag).await) });
    }
    let mut results: Vec<Option<ServerOutcome>> = servers.iter().map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, outcome)) => results[i] = Some(outcome),
            Err(e) => tracing::error!("NTP query task failed: {e}"),
        }
        let any_usable = results.iter().flatten().any(|o| !o.samples.is_empty());
        let waiting_only_on_silent = results
            .iter()
            .zip(&answered)
            .all(|(r, a)| r.is_some() || !a.load(Ordering::Relaxed));
        if any_usable && waiting_only_on_silent {
            let _ = abandon_tx.send(true);
        }
    }
    results
        .into_iter()
        .zip(servers)
        .map(|(r, s)| {
            r.unwrap_or_else(|| {
                let mut o = ServerOutcome::new(s);
                o.failure = Some(Failure::Io("query task failed".into()));
                o
            })
        })
        .collect()
}

fn nonce() -> Timestamp {
    // Random rather than our clock (as chrony does): the origin check then is a
    // 64-bit secret, and the request does not reveal the local time.
    loop {
        let n: u64 = rand::random();
        if n != 0 {
            return Timestamp(n);
        }
    }
}

async fn resolve(server: &str, opts: &CheckOptions) -> Result<SocketAddr, String> {
    let (host, port) = split_server(server).map_err(|e| e.to_string())?;
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let lookup = tokio::time::timeout(
        opts.resolve_timeout,
        tokio::net::lookup_host((host.clone(), port)),
    )
    .await;
    match lookup {
        Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| format!("{host}: no address")),
        Ok(Err(e)) => Err(format!("{host}: {e}")),
        Err(_) => Err(format!(
            "{host}: name resolution took over {:.1} s",
            opts.resolve_timeout.as_secs_f64()
        )),
    }
}

async fn query_server(
    server: &str,
    opts: &CheckOptions,
    mut abandon: watch::Receiver<bool>,
    answered: &AtomicBool,
) -> ServerOutcome {
    let mut out = ServerOutcome::new(server);
    let addr = match resolve(server, opts).await {
        Ok(a) => a,
        Err(e) => {
            out.failure = Some(Failure::Unresolved(e));
            return out;
        }
    };
    out.address = Some(addr);
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // A connected socket on a random port (RFC 9109): the kernel drops datagrams
    // from other sources, and ICMP port-unreachable comes back as ECONNREFUSED.
    let sock = match UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => {
            out.failure = Some(Failure::Io(e.to_string()));
            return out;
        }
    };
    if let Err(e) = sock.connect(addr).await {
        out.failure = Some(Failure::Io(e.to_string()));
        return out;
    }
    let start = Instant::now();
    let first_deadline = start + opts.timeout;
    let mut sent_nonces: Vec<Timestamp> = Vec::new();
    let mut buf = [0u8; 1024];
    'samples: for i in 0..opts.samples {
        if i > 0 {
            let next = start + opts.interval * i;
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = wait_abandon(&mut abandon, !out.samples.is_empty(), first_deadline) => break 'samples,
            }
        }
        let n = nonce();
        let t1 = Timestamp::from_system(SystemTime::now());
        let t1_mono = Instant::now();
        match sock.send(&Packet::request(n).to_bytes()).await {
            Ok(_) => out.sent += 1,
            Err(e) => {
                out.failure = Some(io_failure(e));
                break;
            }
        }
        let deadline = t1_mono + opts.timeout;
        loop {
            tokio::select! {
                r = sock.recv(&mut buf) => {
                    // Monotonic time for t4: a clock step mid-exchange must not
                    // turn into a bogus delay.
                    let t4 = t1.add_seconds(t1_mono.elapsed().as_secs_f64());
                    let len = match r {
                        Ok(len) => len,
                        Err(e) => {
                            out.failure = Some(io_failure(e));
                            break 'samples;
                        }
                    };
                    let verdict = packet::parse(&buf[..len])
                        .map_err(Reject::Malformed)
                        .and_then(|p| validate(&p, n, &sent_nonces).map(|()| p));
                    match verdict {
                        Ok(p) => {
                            let s = Sample::from_exchange(&p, t1, t4);
                            tracing::debug!(server, offset = s.offset, delay = s.delay, "NTP reply");
                            out.samples.push(s);
                            answered.store(true, Ordering::Relaxed);
                            if settled(&out.samples, opts.settle) {
                                break 'samples;
                            }
                            break;
                        }
                        Err(r) => {
                            tracing::debug!(server, "NTP reply dropped: {}", r.label());
                            out.reject(&r);
                            if matches!(r, Reject::KissOfDeath(_)) {
                                // RFC 5905: a kiss means stop asking (DENY, RSTR) or
                                // slow down (RATE); a one-shot check just stops.
                                break 'samples;
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => break,
                _ = wait_abandon(&mut abandon, !out.samples.is_empty(), first_deadline) => break 'samples,
            }
        }
        sent_nonces.push(n);
    }
    out
}

/// The last two replies agree to within `settle`.
fn settled(samples: &[Sample], settle: Option<f64>) -> bool {
    match (settle, samples) {
        (Some(limit), [.., a, b]) => (a.offset - b.offset).abs() < limit,
        _ => false,
    }
}

/// Resolves when the coordinator gave up on waiting for this server and the
/// server may stop: at once if it has a sample, else once its first request
/// has had its full timeout.
async fn wait_abandon(
    abandon: &mut watch::Receiver<bool>,
    has_sample: bool,
    first_deadline: Instant,
) {
    if abandon.wait_for(|a| *a).await.is_err() {
        // The coordinator is gone: nobody will ever say so; never resolve.
        std::future::pending::<()>().await;
    }
    if !has_sample {
        tokio::time::sleep_until(first_deadline.into()).await;
    }
}

fn io_failure(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        Failure::Refused
    } else {
        Failure::Io(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Short;

    fn reply(origin: Timestamp) -> Packet {
        let mut p = Packet::request(Timestamp::ZERO);
        p.mode = Mode::Server;
        p.stratum = 2;
        p.origin = origin;
        p.receive = Timestamp::now();
        p.transmit = p.receive;
        p
    }

    #[test]
    fn validation_order_and_reasons() {
        let n = Timestamp(42);
        assert_eq!(validate(&reply(n), n, &[]), Ok(()));
        let mut p = reply(Timestamp(41));
        assert_eq!(validate(&p, n, &[]), Err(Reject::OriginMismatch));
        assert_eq!(validate(&p, n, &[Timestamp(41)]), Err(Reject::Late));
        // A KoD with the wrong origin is a spoof, not a kiss.
        p.stratum = 0;
        p.reference_id = *b"DENY";
        assert_eq!(validate(&p, n, &[]), Err(Reject::OriginMismatch));
        p.origin = n;
        assert_eq!(
            validate(&p, n, &[]),
            Err(Reject::KissOfDeath("DENY".into()))
        );
        let mut p = reply(n);
        p.leap = Leap::Unsynchronized;
        assert_eq!(validate(&p, n, &[]), Err(Reject::Unsynchronized));
        let mut p = reply(n);
        p.stratum = 16;
        assert_eq!(validate(&p, n, &[]), Err(Reject::BadStratum(16)));
        let mut p = reply(n);
        p.transmit = Timestamp::ZERO;
        assert_eq!(validate(&p, n, &[]), Err(Reject::ZeroTimestamp));
        let mut p = reply(n);
        p.mode = Mode::Broadcast;
        assert_eq!(validate(&p, n, &[]), Err(Reject::NotServerMode));
        let mut p = reply(n);
        p.root_dispersion = Short(2 << 16);
        assert!(matches!(validate(&p, n, &[]), Err(Reject::RootDistance(_))));
    }

    #[test]
    fn on_wire_equations() {
        // Server 300 s ahead, 10 ms each way, 1 ms processing.
        let t1 = Timestamp::now();
        let mut p = reply(t1);
        p.receive = t1.add_seconds(300.010);
        p.transmit = t1.add_seconds(300.011);
        let t4 = t1.add_seconds(0.021);
        let s = Sample::from_exchange(&p, t1, t4);
        assert!((s.offset - 300.0).abs() < 1e-6, "{}", s.offset);
        assert!((s.delay - 0.020).abs() < 1e-6, "{}", s.delay);
    }
}
