//! The takeover engine: one task that sends and receives heartbeats, decides the
//! role, and moves the shared addresses. The rules (README "Takeover rule"):
//!
//! - A holder's authenticated heartbeat with a higher term (equal term: the
//!   smaller node id wins) makes a primary drop the addresses at once.
//! - A backup takes over only when the primary was silent for `window`, the check
//!   address answers ARP / ND (this node is not cut off), and nothing answers for
//!   the shared addresses (the primary's kernel is not still serving them).
//! - Every new term is on disk before the addresses are added.
//! - A primary that hears nothing and whose check address is silent is the cut-off
//!   one: it drops the addresses (same term) and becomes backup.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_api::{FailoverCounters, FailoverRole, FailoverStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::kernel::{Kernel, KernelError, LinkInfo};
use crate::raw;
use crate::wire::{Freshness, Heartbeat, Key, Reject, ReplayGuard};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("ARP / ND sockets on the interface (CAP_NET_RAW?): {0}")]
    Raw(#[source] std::io::Error),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Store(#[from] keel_core::StoreError),
    #[error("heartbeat socket {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("random nonce: no system randomness")]
    Random,
}

/// Become-primary is refused while a peer of another wire version was heard this
/// recently (or within one window, if that is longer).
pub const FOREIGN_PEER_HEARD: Duration = Duration::from_secs(2);

/// `state.json`, format 1 (keel-core `format`).
pub const STATE_FILE: keel_core::format::FileFormat =
    keel_core::format::FileFormat::first("failover state");

/// What survives a restart, in `<data-dir>/state.json`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Persisted {
    pub term: u64,
    /// The role last taken: a node that was primary resumes when nobody holds.
    pub role: FailoverRole,
}

pub fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("state.json")
}

/// The engine's view, published for the local API.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub status: FailoverStatus,
    pub peer_at: Option<Instant>,
}

impl Snapshot {
    pub fn status(&self) -> FailoverStatus {
        let mut s = self.status.clone();
        s.peer_last_seen_ms = self.peer_at.map(|t| t.elapsed().as_millis() as u64);
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BecomePrimaryError {
    /// Not attempted: it would put the addresses on both nodes.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

pub enum Command {
    BecomePrimary(oneshot::Sender<Result<FailoverStatus, BecomePrimaryError>>),
    SetAutoTakeover(bool, oneshot::Sender<FailoverStatus>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Backup: may it take over? Targets: check address, then the shared ones.
    Takeover,
    /// Primary that hears nothing: is it the one cut off? Target: check address.
    Isolation,
}

#[derive(Debug, Clone, Copy)]
struct PeerSeen {
    at: Instant,
    term: u64,
    holding: bool,
    /// The peer's node id sorts before ours (wins ties).
    first: bool,
}

pub struct Engine {
    cfg: Config,
    key: Key,
    kernel: Kernel,
    link: LinkInfo,
    prober: Arc<raw::Prober>,
    sock: tokio::net::UdpSocket,
    state_file: PathBuf,
    term: u64,
    role: FailoverRole,
    holding: bool,
    auto: bool,
    /// Was primary before this start: resumes when the window passes in silence.
    resume: bool,
    nonce: u64,
    seq: u64,
    guard: ReplayGuard,
    /// Last heartbeat of another wire version: when, and which version.
    foreign_version: Option<(Instant, u8)>,
    peer: Option<PeerSeen>,
    /// Last heartbeat of a peer holding the addresses.
    holder_at: Option<Instant>,
    started: Instant,
    next_probe: Instant,
    announce_at: Vec<Instant>,
    /// The last probe verdict, so repeats log once.
    last_verdict: Option<&'static str>,
    counters: FailoverCounters,
    snapshot: Arc<Mutex<Snapshot>>,
}

impl Engine {
    /// Reads the persisted term and role, opens the heartbeat socket and brings the
    /// interface in line with the starting role.
    pub async fn start(cfg: Config, psk: &[u8], data_dir: &Path) -> Result<Self, EngineError> {
        keel_core::store::ensure_dir(data_dir, 0o700)?;
        let state_file = state_path(data_dir);
        let persisted = STATE_FILE
            .read::<Persisted>(&state_file)?
            .unwrap_or(Persisted {
                term: 0,
                role: cfg.initial_role,
            });
        let kernel = Kernel::connect()?;
        let link = kernel.link(&cfg.interface).await?;
        let sock = tokio::net::UdpSocket::bind(cfg.local)
            .await
            .map_err(|source| EngineError::Bind {
                addr: cfg.local,
                source,
            })?;
        let mut nonce = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| EngineError::Random)?;
        let prober = Arc::new(open_prober(link)?);
        let present = kernel.present(link.index, &cfg.shared_addresses).await?;
        let was_primary = persisted.role == FailoverRole::Primary;
        // A primary restarted in place (crash, upgrade) still holds: it stays
        // primary, with its term; a newer holder will make it step down.
        let holding = was_primary && present.iter().any(|p| *p);
        if !holding && present.iter().any(|p| *p) {
            kernel.remove(link.index, &cfg.shared_addresses).await?;
        }
        let now = Instant::now();
        let status = FailoverStatus {
            node_id: cfg.node_id.clone(),
            role: FailoverRole::Backup,
            term: persisted.term,
            holding: false,
            auto_takeover: cfg.auto_takeover,
            interface: cfg.interface.clone(),
            shared_addresses: cfg.shared_addresses.iter().map(|a| a.to_string()).collect(),
            peer_last_seen_ms: None,
            peer_term: None,
            peer_holding: None,
            counters: FailoverCounters::default(),
        };
        let nonce = u64::from_be_bytes(nonce);
        let engine = Engine {
            key: Key::derive(psk),
            auto: cfg.auto_takeover,
            cfg,
            kernel,
            link,
            prober,
            sock,
            state_file,
            term: persisted.term,
            role: if holding {
                FailoverRole::Primary
            } else {
                FailoverRole::Backup
            },
            holding,
            resume: was_primary && !holding,
            nonce,
            seq: 0,
            guard: ReplayGuard::new(nonce),
            foreign_version: None,
            peer: None,
            holder_at: None,
            started: now,
            next_probe: now,
            announce_at: Vec::new(),
            last_verdict: None,
            counters: FailoverCounters::default(),
            snapshot: Arc::new(Mutex::new(Snapshot {
                status,
                peer_at: None,
            })),
        };
        if holding {
            engine.announce();
        }
        engine.publish();
        tracing::info!(
            node = %engine.cfg.node_id,
            role = %engine.role,
            term = engine.term,
            resume = engine.resume,
            "started"
        );
        Ok(engine)
    }

    pub fn snapshot(&self) -> Arc<Mutex<Snapshot>> {
        self.snapshot.clone()
    }

    /// Runs until the command channel closes (the daemon is stopping).
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(self.cfg.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut reconcile = tokio::time::interval(Duration::from_secs(1));
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut probe: Option<tokio::task::JoinHandle<(Purpose, std::io::Result<Vec<bool>>)>> =
            None;
        let mut buf = [0u8; 512];
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.send_heartbeat().await;
                    // Judge silence on everything that has arrived: after this
                    // process waited for a CPU, heartbeats are queued, not missing.
                    self.drain(&mut buf).await;
                    if probe.is_none() {
                        probe = self.due_probe().await;
                    }
                    self.announce_due();
                    self.publish();
                }
                r = self.sock.recv_from(&mut buf) => {
                    if let Ok((n, _)) = r {
                        self.on_datagram(&buf[..n]).await;
                        self.publish();
                    }
                }
                cmd = commands.recv() => {
                    match cmd {
                        Some(Command::BecomePrimary(reply)) => {
                            let r = self.become_primary().await;
                            self.publish();
                            let _ = reply.send(r.map(|()| self.status()));
                        }
                        Some(Command::SetAutoTakeover(on, reply)) => {
                            self.auto = on;
                            tracing::info!(enabled = on, "automatic takeover");
                            self.publish();
                            let _ = reply.send(self.status());
                        }
                        None => return,
                    }
                }
                r = async { probe.as_mut().expect("guarded").await }, if probe.is_some() => {
                    probe = None;
                    // A heartbeat (or a new holder's claim) that came while the
                    // probe ran overrides its verdict.
                    self.drain(&mut buf).await;
                    match r {
                        Ok((purpose, Ok(answered))) => self.on_probe(purpose, &answered).await,
                        Ok((_, Err(e))) => tracing::warn!("ARP / ND probe: {e}"),
                        Err(e) => tracing::warn!("probe task: {e}"),
                    }
                    self.next_probe = Instant::now() + self.cfg.interval();
                    self.publish();
                }
                _ = reconcile.tick() => self.reconcile().await,
                // The moment the peer's silence (less the probe's length) is up:
                // probing starts then, so the decision falls exactly on the window.
                _ = Self::sleep_until(self.wake_at()), if probe.is_none() => {
                    self.drain(&mut buf).await;
                    probe = self.due_probe().await;
                    self.publish();
                }
            }
        }
    }

    async fn sleep_until(at: Option<Instant>) {
        match at {
            Some(t) => tokio::time::sleep_until(t.into()).await,
            None => std::future::pending().await,
        }
    }

    /// When a probe could next be due, if that is still ahead (the heartbeat tick
    /// covers everything else).
    fn wake_at(&self) -> Option<Instant> {
        let since = self.peer.map_or(self.quiet_since(), |p| p.at);
        let at = (since + self.cfg.window())
            .checked_sub(self.cfg.probe())
            .unwrap_or(since)
            .max(self.next_probe);
        (at > Instant::now()).then_some(at)
    }

    /// Handles every datagram already queued on the heartbeat socket.
    async fn drain(&mut self, buf: &mut [u8]) {
        while let Ok((n, _)) = self.sock.try_recv_from(buf) {
            self.on_datagram(&buf[..n]).await;
        }
    }

    fn status(&self) -> FailoverStatus {
        self.snapshot.lock().expect("snapshot lock").status()
    }

    fn publish(&self) {
        let mut s = self.snapshot.lock().expect("snapshot lock");
        s.status.role = self.role;
        s.status.term = self.term;
        s.status.holding = self.holding;
        s.status.auto_takeover = self.auto;
        s.status.peer_term = self.peer.map(|p| p.term);
        s.status.peer_holding = self.peer.map(|p| p.holding);
        s.status.counters = self.counters.clone();
        s.peer_at = self.peer.map(|p| p.at);
    }

    fn persist(&self, term: u64, role: FailoverRole) -> Result<(), keel_core::StoreError> {
        STATE_FILE.write(&self.state_file, &Persisted { term, role }, 0o600)
    }

    async fn send_heartbeat(&mut self) {
        self.seq += 1;
        let hb = Heartbeat {
            sender: self.cfg.node_id.clone(),
            term: self.term,
            seq: self.seq,
            nonce: self.nonce,
            echo: self.guard.echo(),
            // The role is the claim: a new primary says so before its addresses
            // are in, so the old one drops them while they are being added.
            holding: self.role == FailoverRole::Primary,
            auto_takeover: self.auto,
        };
        match self
            .sock
            .send_to(&hb.encode(&self.key), self.cfg.peer)
            .await
        {
            Ok(_) => self.counters.sent += 1,
            Err(e) => {
                self.counters.send_errors += 1;
                tracing::debug!("heartbeat to {}: {e}", self.cfg.peer);
            }
        }
    }

    async fn on_datagram(&mut self, b: &[u8]) {
        let hb = match Heartbeat::decode(b, &self.key) {
            Ok(hb) => hb,
            Err(Reject::Truncated) => return self.counters.truncated += 1,
            Err(Reject::WrongVersion(v)) => return self.on_foreign_version(v),
            Err(Reject::BadMac) => return self.counters.bad_mac += 1,
        };
        // Our own datagram sent back to us carries our id and nonce.
        if hb.sender == self.cfg.node_id
            || hb.nonce == self.nonce
            || self.guard.accept(&hb) != Freshness::Fresh
        {
            self.counters.replayed += 1;
            return;
        }
        self.counters.received += 1;
        let now = Instant::now();
        self.peer = Some(PeerSeen {
            at: now,
            term: hb.term,
            holding: hb.holding,
            first: hb.sender.as_str() < self.cfg.node_id.as_str(),
        });
        if hb.holding {
            // Someone serves the addresses: nothing to resume.
            self.resume = false;
            self.holder_at = Some(now);
        }
        let newer = hb.term > self.term
            || (hb.term == self.term && hb.sender.as_str() < self.cfg.node_id.as_str());
        match self.role {
            FailoverRole::Primary if hb.holding && newer => {
                self.step_down(hb.term, &hb.sender).await;
            }
            FailoverRole::Backup if hb.term > self.term => {
                // Remembered, so a later takeover is sure to be newer than this one.
                if let Err(e) = self.persist(hb.term, FailoverRole::Backup) {
                    tracing::error!("persisting term {}: {e}", hb.term);
                } else {
                    self.term = hb.term;
                }
            }
            _ => {}
        }
    }

    /// A heartbeat of another wire version: the peer runs another release. Its
    /// heartbeats cannot be judged, nor ours by it (it would not hear a claim), so
    /// it is counted, logged once per version, and blocks become-primary.
    fn on_foreign_version(&mut self, v: u8) {
        self.counters.wrong_version += 1;
        if self.foreign_version.map(|(_, seen)| seen) != Some(v) {
            tracing::warn!(
                "heartbeats of wire version {v} arrive: this node speaks version {}; \
                 the nodes cannot hear each other until both run the same release",
                crate::wire::VERSION
            );
        }
        self.foreign_version = Some((Instant::now(), v));
    }

    /// Before anything was heard, silence is counted from a moment two windows
    /// after the start: a node that just started (on a busy box, next to a peer
    /// that just started too) listens for three windows before it acts alone.
    fn quiet_since(&self) -> Instant {
        self.started + 2 * self.cfg.window()
    }

    fn peer_silent(&self, now: Instant) -> bool {
        let since = self.peer.map_or(self.quiet_since(), |p| p.at);
        now.saturating_duration_since(since) >= self.cfg.window()
    }

    /// May this backup try to take over now? Nobody held for a window, and either
    /// the peer is silent too, or it is alive without the addresses and this node
    /// is the one to take them (it was primary before, or it wins the id order).
    fn may_take_over(&self, now: Instant) -> bool {
        let holder_since = self.holder_at.unwrap_or(self.quiet_since());
        self.role == FailoverRole::Backup
            && (self.auto || self.resume)
            && now.saturating_duration_since(holder_since) >= self.cfg.window()
            && (self.peer_silent(now) || self.resume || self.peer.is_some_and(|p| !p.first))
    }

    async fn check_address(&self) -> Option<IpAddr> {
        if let Some(c) = self.cfg.check_address {
            return Some(c);
        }
        match self.kernel.default_gateway(self.link.index).await {
            Ok(gw) => gw,
            Err(e) => {
                tracing::warn!("default gateway of {}: {e}", self.cfg.interface);
                None
            }
        }
    }

    async fn due_probe(
        &mut self,
    ) -> Option<tokio::task::JoinHandle<(Purpose, std::io::Result<Vec<bool>>)>> {
        let now = Instant::now();
        if now < self.next_probe {
            return None;
        }
        // A probe lasts `probe` when nothing answers: started that much early, it
        // ends when the window does, and its answers are the latest evidence.
        let ends = now + self.cfg.probe();
        let purpose = if self.may_take_over(ends) {
            Purpose::Takeover
        } else if self.role == FailoverRole::Primary && self.holding && self.peer_silent(ends) {
            Purpose::Isolation
        } else {
            return None;
        };
        let Some(check) = self.check_address().await else {
            self.verdict(
                "no check address",
                "no check_address configured and no default gateway: cannot tell whether this node is cut off",
            );
            self.next_probe = now + self.cfg.window();
            return None;
        };
        let mut targets = vec![check];
        if purpose == Purpose::Takeover {
            targets.extend(self.cfg.shared_addresses.iter().map(|a| a.ip()));
        }
        let prober = self.prober.clone();
        let wait = self.cfg.probe();
        tracing::debug!(?purpose, "probing");
        Some(tokio::task::spawn_blocking(move || {
            let r = prober.probe(&targets, wait);
            (purpose, r)
        }))
    }

    /// Logs a probe verdict once per change.
    fn verdict(&mut self, what: &'static str, message: &str) {
        if self.last_verdict != Some(what) {
            tracing::warn!("{message}");
            self.last_verdict = Some(what);
        }
    }

    async fn on_probe(&mut self, purpose: Purpose, answered: &[bool]) {
        let now = Instant::now();
        let check_ok = answered.first().copied().unwrap_or(false);
        match purpose {
            Purpose::Takeover => {
                if !self.may_take_over(now) {
                    return; // a holder spoke while the probe ran
                }
                if !check_ok {
                    self.counters.isolated += 1;
                    self.verdict(
                        "isolated",
                        "peer silent but the check address does not answer: this node is cut off, no takeover",
                    );
                } else if answered[1..].iter().any(|a| *a) {
                    self.counters.held_off_address_answered += 1;
                    self.verdict(
                        "answered",
                        "peer silent but its kernel still answers for the shared addresses: no takeover",
                    );
                } else {
                    self.last_verdict = None;
                    let why = if self.resume {
                        "resuming as primary: nobody holds the shared addresses"
                    } else {
                        "primary silent, check address answers, shared addresses free"
                    };
                    if let Err(e) = self.take_over(why).await {
                        tracing::error!("takeover failed: {e}");
                    }
                }
            }
            Purpose::Isolation => {
                if self.role != FailoverRole::Primary || check_ok || !self.peer_silent(now) {
                    return;
                }
                self.counters.isolated += 1;
                tracing::warn!("peer silent and check address silent: this node is cut off, releasing the shared addresses");
                self.role = FailoverRole::Backup;
                self.release().await;
                if let Err(e) = self.persist(self.term, FailoverRole::Backup) {
                    tracing::error!("persisting role: {e}");
                }
            }
        }
    }

    /// Bumps the term (on disk first), adds the addresses, announces them, and
    /// tells the peer with an immediate heartbeat.
    async fn take_over(&mut self, why: &str) -> Result<(), EngineError> {
        let t0 = Instant::now();
        let silent_ms = self
            .peer
            .map(|p| t0.duration_since(p.at).as_millis() as u64);
        let term = self.term.max(self.peer.map_or(0, |p| p.term)) + 1;
        self.persist(term, FailoverRole::Primary)?;
        let persist_ms = t0.elapsed().as_millis() as u64;
        self.term = term;
        self.role = FailoverRole::Primary;
        self.resume = false;
        self.counters.takeovers += 1;
        // The claim goes out first: a live peer (become-primary) releases while
        // the addresses are being added here, so they are on both only briefly.
        self.send_heartbeat().await;
        self.publish();
        self.kernel
            .add(self.link.index, &self.cfg.shared_addresses)
            .await?;
        self.holding = true;
        self.publish();
        let add_ms = t0.elapsed().as_millis() as u64;
        self.announce();
        let now = Instant::now();
        // Repeats for neighbours that missed the first (keepalived sends five).
        self.announce_at = [100, 500, 2000]
            .iter()
            .map(|ms| now + Duration::from_millis(*ms))
            .collect();
        self.send_heartbeat().await;
        tracing::info!(
            term,
            silent_ms,
            persist_ms,
            add_ms,
            "took over the shared addresses: {why}"
        );
        Ok(())
    }

    async fn become_primary(&mut self) -> Result<(), BecomePrimaryError> {
        if self.role == FailoverRole::Primary && self.holding {
            return Ok(());
        }
        // A live peer of another wire version would not hear the claim and keep
        // the addresses: both would serve them.
        if let Some((at, v)) = self.foreign_version {
            // Heard within FOREIGN_PEER_HEARD (not one window): a takeover wrongly
            // allowed is two holders, a refusal wrongly kept is a retry; and a
            // busy node's packet handling can lag by more than a window.
            if at.elapsed() < self.cfg.window().max(FOREIGN_PEER_HEARD) {
                return Err(BecomePrimaryError::Refused(format!(
                    "the peer sends heartbeats of wire version {v} (this node speaks {}): it would not \
                     hear the claim and keep the shared addresses; update it first or stop it",
                    crate::wire::VERSION
                )));
            }
        }
        self.take_over("become-primary requested")
            .await
            .map_err(|e| BecomePrimaryError::Failed(e.to_string()))
    }

    async fn step_down(&mut self, peer_term: u64, peer: &str) {
        // Release first: dropping the addresses is safe at any term, and the
        // newer holder is serving already (a sync to disk here would keep the
        // address on both nodes for its duration).
        self.role = FailoverRole::Backup;
        self.counters.step_downs += 1;
        self.release().await;
        self.publish();
        let term = peer_term.max(self.term);
        if let Err(e) = self.persist(term, FailoverRole::Backup) {
            tracing::error!("persisting term {term}: {e}");
        }
        self.term = term;
        tracing::info!(term, peer, "peer holds with a newer term: stepped down");
    }

    async fn release(&mut self) {
        self.announce_at.clear();
        if let Err(e) = self
            .kernel
            .remove(self.link.index, &self.cfg.shared_addresses)
            .await
        {
            tracing::error!("releasing the shared addresses: {e}");
        }
        self.holding = false;
    }

    fn announce(&self) {
        let addrs: Vec<IpAddr> = self.cfg.shared_addresses.iter().map(|a| a.ip()).collect();
        if let Err(e) = self.prober.announce(&addrs) {
            tracing::warn!("gratuitous ARP / unsolicited NA: {e}");
        }
    }

    fn announce_due(&mut self) {
        let now = Instant::now();
        let before = self.announce_at.len();
        self.announce_at.retain(|t| *t > now);
        if self.announce_at.len() != before && self.holding {
            self.announce();
        }
    }

    /// Keeps the kernel in line with the role (an address removed by hand, IPv6
    /// addresses flushed by a link flap, a replaced interface).
    async fn reconcile(&mut self) {
        match self.kernel.link(&self.cfg.interface).await {
            Ok(l) => {
                // A replaced interface (new index or MAC) needs sockets of its own.
                if (l.index, l.mac) != (self.link.index, self.link.mac) {
                    match open_prober(l) {
                        Ok(p) => self.prober = Arc::new(p),
                        Err(e) => return tracing::warn!("{e}"),
                    }
                }
                self.link = l;
            }
            Err(e) => return tracing::warn!("{e}"),
        }
        let present = match self
            .kernel
            .present(self.link.index, &self.cfg.shared_addresses)
            .await
        {
            Ok(p) => p,
            Err(e) => return tracing::warn!("{e}"),
        };
        let want = self.role == FailoverRole::Primary;
        if want && !present.iter().all(|p| *p) {
            tracing::warn!(
                "shared addresses missing on {}: adding them again",
                self.cfg.interface
            );
            if let Err(e) = self
                .kernel
                .add(self.link.index, &self.cfg.shared_addresses)
                .await
            {
                tracing::error!("{e}");
            } else {
                self.holding = true;
                self.announce();
            }
        } else if !want && present.iter().any(|p| *p) {
            tracing::warn!(
                "shared addresses on {} while backup: removing",
                self.cfg.interface
            );
            self.release().await;
        }
    }
}

fn open_prober(l: LinkInfo) -> Result<raw::Prober, EngineError> {
    raw::Prober::open(raw::Link {
        index: l.index,
        mac: l.mac,
    })
    .map_err(EngineError::Raw)
}

/// Drops the shared addresses from the interface: what `ExecStopPost=` runs when
/// the daemon exits for any reason, so a dead process never leaves them served.
pub async fn release(cfg: &Config) -> Result<(), KernelError> {
    let kernel = Kernel::connect()?;
    let link = kernel.link(&cfg.interface).await?;
    kernel.remove(link.index, &cfg.shared_addresses).await
}
