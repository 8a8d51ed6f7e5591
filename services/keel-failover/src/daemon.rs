//! The always-running daemon: pairing identity and PSK, the relationship
//! (`config.json`), the takeover engine while paired, the pairing listener and the
//! primary's periodic sync. The local API (`api.rs`) and the pairing channel's
//! requests (`pair.rs`) both act through [`Daemon`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnetwork::IpNetwork;
use keel_api::{
    EstablishRequest, FailoverOverview, FailoverPeer, FailoverRole, FailoverStatus, PskBody,
    SyncReport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::{self, Config, Pairing, CONFIG_FILE};
use crate::dns::DnsConfig;
use crate::engine::{self, BecomePrimaryError, Command, Engine, Persisted, Snapshot, STATE_FILE};
use crate::kernel::Kernel;
use crate::pair::{self, Channel, Identity, Msg, PairError, Proposal, Refusal, SharedSettings};
use crate::sync::SyncBackend;

/// `last-sync.json`, format 1 (keel-core `format`).
/// `dns.json`: the DNS swing settings (`dns::DnsConfig`), format 1.
pub const DNS_FILE: keel_core::format::FileFormat =
    keel_core::format::FileFormat::first("DNS swing settings");

pub const LAST_SYNC_FILE: keel_core::format::FileFormat =
    keel_core::format::FileFormat::first("failover last sync");
/// `kept.json`, format 1: the addresses a former primary keeps serving after a
/// break (there is no peer left to take them over).
pub const KEPT_FILE: keel_core::format::FileFormat =
    keel_core::format::FileFormat::first("failover addresses kept after a break");

/// At most this many pairing connections are served at once.
const MAX_PAIR_CONNECTIONS: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Kept {
    pub interface: String,
    pub shared_addresses: Vec<IpNetwork>,
}

/// A refused or failed request: the local API's status code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    pub message: String,
}

fn failure(status: u16, message: impl Into<String>) -> Failure {
    Failure {
        status,
        message: message.into(),
    }
}

impl From<PairError> for Failure {
    fn from(e: PairError) -> Self {
        let status = match &e {
            PairError::Refused { kind, .. } => kind.http_status(),
            _ => 502,
        };
        failure(status, e.to_string())
    }
}

pub struct Options {
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub pair_listen: SocketAddr,
    /// Pairing protocol announced (the build's; a test may claim another).
    pub protocol: u32,
    pub sync: Option<SyncBackend>,
}

struct Running {
    snapshot: Arc<Mutex<Snapshot>>,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
    /// The DNS swing server and the task that feeds it the engine's view.
    dns: Option<DnsTask>,
}

/// A running DNS swing server: its task (server and feed) and where it answers.
struct DnsTask {
    task: tokio::task::JoinHandle<()>,
    addrs: Vec<SocketAddr>,
}

#[derive(Default)]
struct Inner {
    cfg: Option<Config>,
    engine: Option<Running>,
    last_sync: Option<SyncReport>,
}

pub struct Daemon {
    opts: Options,
    identity: Identity,
    tls: pair::Tls,
    pair_port: u16,
    /// One administrative change at a time (establish, break, become-primary, sync).
    ops: tokio::sync::Mutex<()>,
    inner: tokio::sync::Mutex<Inner>,
    /// Requests and pairing connections in flight, and when the last one ended.
    activity: Mutex<(usize, tokio::time::Instant)>,
}

/// A request or pairing connection being served: the daemon is not idle.
pub struct InFlight(Arc<Daemon>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut a = self.0.activity.lock().expect("activity lock");
        a.0 -= 1;
        a.1 = tokio::time::Instant::now();
    }
}

/// An answer of the local API with what the caller should know besides it.
pub struct WithWarnings<T> {
    pub value: T,
    pub warnings: Vec<String>,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn report(direction: &str, r: Result<Vec<String>, String>) -> SyncReport {
    let (ok, items, error) = match r {
        Ok(items) => (true, items, None),
        Err(e) => (false, Vec::new(), Some(e)),
    };
    SyncReport {
        at: now_rfc3339(),
        direction: direction.into(),
        ok,
        items,
        error,
    }
}

impl SharedSettings {
    pub fn of(c: &Config) -> Self {
        Self {
            shared_addresses: c.shared_addresses.clone(),
            interval_ms: c.interval_ms,
            window_ms: c.window_ms,
            probe_ms: c.probe_ms,
            auto_takeover: c.auto_takeover,
            sync_interval_s: c.sync_interval_s,
        }
    }

    /// `c` with these settings (node-local fields untouched).
    pub fn onto(&self, c: &Config) -> Config {
        Config {
            shared_addresses: self.shared_addresses.clone(),
            interval_ms: self.interval_ms,
            window_ms: self.window_ms,
            probe_ms: self.probe_ms,
            auto_takeover: self.auto_takeover,
            sync_interval_s: self.sync_interval_s,
            ..c.clone()
        }
    }
}

/// `ip:port`, `[v6]:port`, or an address alone (port 7947).
pub fn parse_endpoint(field: &str, s: &str) -> Result<SocketAddr, Failure> {
    let s = s.trim();
    let addr = s.parse::<SocketAddr>().or_else(|_| {
        s.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .map(|ip| SocketAddr::new(ip, pair::DEFAULT_PAIR_PORT))
    });
    let addr = addr.map_err(|_| {
        failure(
            400,
            format!("{field}: {s:?} is not an address (ip:port, [ipv6]:port or an address alone)"),
        )
    })?;
    let ip = addr.ip();
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || addr.port() == 0 {
        return Err(failure(
            400,
            format!("{field}: {addr} cannot be a pairing endpoint"),
        ));
    }
    Ok(addr)
}

impl Daemon {
    /// Prepares the data directory (PSK and pairing identity made when missing)
    /// and starts the engine when a relationship exists.
    pub async fn start(opts: Options) -> anyhow::Result<Arc<Self>> {
        keel_core::store::ensure_dir(&opts.data_dir, 0o700)?;
        config::ensure_psk(&psk_path(&opts.data_dir))?;
        let identity = Identity::load_or_create(&opts.data_dir)?;
        let tls = pair::tls(&identity)?;
        let cfg = if opts.config.exists() {
            Some(Config::load(&opts.config)?)
        } else {
            None
        };
        let last_sync = LAST_SYNC_FILE
            .read::<SyncReport>(&opts.data_dir.join("last-sync.json"))
            .unwrap_or_else(|e| {
                tracing::warn!("{e}");
                None
            });
        let daemon = Arc::new(Self {
            pair_port: opts.pair_listen.port(),
            opts,
            identity,
            tls,
            ops: tokio::sync::Mutex::new(()),
            activity: Mutex::new((0, tokio::time::Instant::now())),
            inner: tokio::sync::Mutex::new(Inner {
                last_sync,
                ..Inner::default()
            }),
        });
        {
            let mut inner = daemon.inner.lock().await;
            match cfg {
                Some(cfg) => daemon.start_engine(&mut inner, cfg).await?,
                None => daemon.keep_addresses().await,
            }
        }
        Ok(daemon)
    }

    /// Marks a request or connection in flight until the guard drops.
    pub fn in_flight(self: &Arc<Self>) -> InFlight {
        self.activity.lock().expect("activity lock").0 += 1;
        InFlight(self.clone())
    }

    /// How long nothing has happened, when this daemon has nothing to keep
    /// running for: no relationship, no addresses kept after a break, no engine,
    /// no change, request or pairing connection in progress. `None` otherwise.
    /// An unpaired, socket-activated daemon exits after `--idle-exit` of it.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.opts.config.exists() || self.kept_path().exists() || self.ops.try_lock().is_err() {
            return None;
        }
        let inner = self.inner.try_lock().ok()?;
        if inner.engine.is_some() {
            return None;
        }
        let a = self.activity.lock().expect("activity lock");
        (a.0 == 0).then(|| a.1.elapsed())
    }

    pub fn fingerprint(&self) -> &str {
        &self.identity.fingerprint
    }

    fn psk_path(&self) -> PathBuf {
        psk_path(&self.opts.data_dir)
    }

    fn dns_path(&self) -> PathBuf {
        self.opts.data_dir.join("dns.json")
    }

    /// The DNS swing settings: node-local, kept apart from `config.json` so they
    /// outlive a break and a new establish. Off when the file is absent.
    fn dns_settings(&self) -> anyhow::Result<DnsConfig> {
        Ok(DNS_FILE.read(&self.dns_path())?.unwrap_or_default())
    }

    pub async fn dns(&self) -> Result<DnsConfig, Failure> {
        self.dns_settings().map_err(|e| failure(500, e.to_string()))
    }

    /// New DNS swing settings; a running engine's server is replaced at once. A
    /// server that cannot bind refuses the change and the old one answers again.
    pub async fn set_dns(&self, dns: DnsConfig) -> Result<DnsConfig, Failure> {
        let _op = self.ops.lock().await;
        let mut inner = self.inner.lock().await;
        let old = self
            .dns_settings()
            .map_err(|e| failure(500, e.to_string()))?;
        if let (Some(cfg), Some(running)) = (inner.cfg.clone(), inner.engine.as_mut()) {
            if let Some(dns) = running.dns.take() {
                dns.task.abort();
                let _ = dns.task.await;
            }
            match dns_swing(&dns, &cfg, running.snapshot.clone()).await {
                Ok(task) => running.dns = task,
                Err(e) => {
                    running.dns = dns_swing(&old, &cfg, running.snapshot.clone())
                        .await
                        .unwrap_or_else(|e| {
                            tracing::warn!("DNS swing: the previous settings: {e}");
                            None
                        });
                    return Err(failure(400, format!("dns: {e}")));
                }
            }
        }
        DNS_FILE
            .write(&self.dns_path(), &dns, 0o600)
            .map_err(|e| failure(500, e.to_string()))?;
        tracing::info!(enabled = dns.enabled, "DNS swing settings replaced");
        Ok(dns)
    }

    fn kept_path(&self) -> PathBuf {
        self.opts.data_dir.join("kept.json")
    }

    async fn start_engine(&self, inner: &mut Inner, cfg: Config) -> anyhow::Result<()> {
        lock_memory();
        let psk = config::read_psk(&cfg.psk_file)?;
        let engine = Engine::start(cfg.clone(), &psk, &self.opts.data_dir).await?;
        let (tx, rx) = mpsc::channel(8);
        let snapshot = engine.snapshot();
        // Bound before the engine runs: a bad listen address or a port in use
        // fails the start (and establish) instead of a silent missing answer.
        let dns = dns_swing(&self.dns_settings()?, &cfg, snapshot.clone()).await?;
        let task = tokio::spawn(engine.run(rx));
        inner.engine = Some(Running {
            snapshot,
            commands: tx,
            task,
            dns,
        });
        inner.cfg = Some(cfg);
        Ok(())
    }

    /// Stops the engine and leaves the addresses as they are (the caller decides).
    async fn stop_engine(inner: &mut Inner) {
        if let Some(r) = inner.engine.take() {
            if let Some(dns) = r.dns {
                dns.task.abort();
            }
            drop(r.commands);
            let _ = r.task.await;
        }
    }

    fn engine_status(inner: &Inner) -> Option<FailoverStatus> {
        inner
            .engine
            .as_ref()
            .map(|r| r.snapshot.lock().expect("snapshot lock").status())
    }

    /// After a break this node held the addresses: it keeps serving them (the
    /// site stays up) until a new relationship's engine takes them over.
    async fn keep_addresses(&self) {
        let kept = match KEPT_FILE.read::<Kept>(&self.kept_path()) {
            Ok(Some(k)) => k,
            Ok(None) => return,
            Err(e) => return tracing::warn!("{e}"),
        };
        let r = async {
            let kernel = Kernel::connect()?;
            let link = kernel.link(&kept.interface).await?;
            kernel.add(link.index, &kept.shared_addresses).await
        };
        match r.await {
            Ok(()) => tracing::info!(
                interface = %kept.interface,
                "no relationship: serving the shared addresses kept after the break"
            ),
            Err(e) => tracing::warn!("keeping the shared addresses after the break: {e}"),
        }
    }

    pub async fn overview(&self) -> FailoverOverview {
        let inner = self.inner.lock().await;
        self.overview_of(&inner)
    }

    fn overview_of(&self, inner: &Inner) -> FailoverOverview {
        FailoverOverview {
            pair_port: self.pair_port,
            fingerprint: self.identity.fingerprint.clone(),
            peer: inner
                .cfg
                .as_ref()
                .and_then(|c| c.pairing.as_ref())
                .map(|p| FailoverPeer {
                    node_id: p.node_id.clone(),
                    address: p.address.to_string(),
                    version: p.version.clone(),
                    fingerprint: p.pin.clone(),
                }),
            engine: Self::engine_status(inner),
            last_sync: inner.last_sync.clone(),
            // A server whose task ended (a listener failed for good) answers no more.
            dns_listening: inner
                .engine
                .as_ref()
                .and_then(|r| r.dns.as_ref())
                .filter(|d| !d.task.is_finished())
                .map(|d| d.addrs.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
        }
    }

    async fn local_psk(&self) -> Result<Vec<u8>, Failure> {
        config::read_psk(&self.psk_path()).map_err(|e| failure(500, e.to_string()))
    }

    async fn connect(&self, addr: SocketAddr, paired: bool) -> Result<Channel, PairError> {
        let psk = config::read_psk(&self.psk_path()).map_err(|e| PairError::Protocol {
            addr,
            message: e.to_string(),
        })?;
        let local = pair::Local {
            identity: &self.identity,
            tls: &self.tls,
            psk: &psk,
            paired,
            protocol: self.opts.protocol,
        };
        pair::connect(&local, addr).await
    }

    /// A channel to the pinned peer, refused if it shows another certificate.
    async fn connect_peer(&self, p: &Pairing) -> Result<Channel, PairError> {
        let ch = self.connect(p.address, true).await?;
        if ch.peer_fingerprint != p.pin {
            return Err(PairError::Refused {
                kind: Refusal::NotPinned,
                message: format!(
                    "the peer at {} shows certificate {}, not the pinned {}",
                    p.address, ch.peer_fingerprint, p.pin
                ),
            });
        }
        Ok(ch)
    }

    // ----- local API ---------------------------------------------------------

    pub async fn psk(&self) -> Result<PskBody, Failure> {
        let key = self.local_psk().await?;
        Ok(PskBody {
            psk: String::from_utf8_lossy(&key).into_owned(),
        })
    }

    pub async fn set_psk(&self, body: PskBody) -> Result<PskBody, Failure> {
        let _op = self.ops.lock().await;
        config::write_psk(&self.psk_path(), &body.psk).map_err(|e| failure(400, e.to_string()))?;
        tracing::info!("inter-appliance key replaced");
        self.restart_engine().await?;
        self.psk().await
    }

    pub async fn generate_psk(&self) -> Result<PskBody, Failure> {
        let _op = self.ops.lock().await;
        let _ = std::fs::remove_file(self.psk_path());
        config::ensure_psk(&self.psk_path()).map_err(|e| failure(500, e.to_string()))?;
        self.restart_engine().await?;
        self.psk().await
    }

    /// The engine again with the config on disk and the current key (a primary
    /// keeps holding across it: the addresses stay on the interface).
    async fn restart_engine(&self) -> Result<(), Failure> {
        let mut inner = self.inner.lock().await;
        let Some(cfg) = inner.cfg.clone() else {
            return Ok(());
        };
        Self::stop_engine(&mut inner).await;
        self.start_engine(&mut inner, cfg)
            .await
            .map_err(|e| failure(500, format!("restarting the engine: {e:#}")))
    }

    /// `POST /establish` on A.
    pub async fn establish(&self, req: EstablishRequest) -> Result<FailoverOverview, Failure> {
        let _op = self.ops.lock().await;
        if let Some(c) = &self.inner.lock().await.cfg {
            return Err(failure(
                409,
                match &c.pairing {
                    Some(p) => format!(
                        "this node is already in a relationship with {} ({}): break it first",
                        p.node_id, p.address
                    ),
                    None => "this node already has a failover configuration: break it first".into(),
                },
            ));
        }
        let peer = parse_endpoint("peer", &req.peer)?;
        let reverse = parse_endpoint("reverse", &req.reverse)?;
        if req.shared_addresses.is_empty() {
            return Err(failure(400, "shared_addresses: at least one address"));
        }
        let mut shared = Vec::new();
        for (i, a) in req.shared_addresses.iter().enumerate() {
            let net: IpNetwork = a
                .trim()
                .parse()
                .map_err(|e| failure(400, format!("shared_addresses[{i}]: {a:?}: {e}")))?;
            shared.push(net);
        }
        for (field, ep) in [("peer", peer), ("reverse", reverse)] {
            if shared.iter().any(|s| s.ip() == ep.ip()) {
                return Err(failure(
                    400,
                    format!(
                        "{field}: {} is a shared address; give the node's own address",
                        ep.ip()
                    ),
                ));
            }
        }
        let mut cfg = Config {
            node_id: self.identity.node_id(),
            interface: req.interface.trim().to_owned(),
            shared_addresses: shared,
            local: SocketAddr::new(reverse.ip(), config::DEFAULT_PORT),
            peer: SocketAddr::new(peer.ip(), config::DEFAULT_PORT),
            psk_file: self.psk_path(),
            interval_ms: config::DEFAULT_INTERVAL_MS,
            window_ms: config::DEFAULT_WINDOW_MS,
            probe_ms: config::DEFAULT_PROBE_MS,
            check_address: None,
            auto_takeover: true,
            initial_role: FailoverRole::Primary,
            sync_interval_s: config::DEFAULT_SYNC_INTERVAL_S,
            pairing: None,
        };
        cfg.validate().map_err(|e| failure(400, e.to_string()))?;
        let kernel = Kernel::connect().map_err(|e| failure(500, e.to_string()))?;
        kernel
            .link(&cfg.interface)
            .await
            .map_err(|e| failure(400, format!("interface: {e}")))?;

        let mut ch = self.connect(peer, false).await?;
        if ch.peer_fingerprint == self.identity.fingerprint {
            return Err(failure(
                400,
                format!("peer: {peer} is this node (same pairing certificate)"),
            ));
        }
        ch.send(&Msg::Establish(Proposal {
            primary_heartbeat: cfg.local,
            backup_heartbeat: cfg.peer,
            primary_pair: reverse,
            settings: SharedSettings::of(&cfg),
        }))
        .await?;
        let interface = match ch.recv().await {
            Ok(Msg::Accepted { interface }) => interface,
            Ok(other) => {
                return Err(failure(
                    502,
                    format!("the peer answered {other:?} to the proposal"),
                ))
            }
            Err(PairError::Refused { kind, message }) => {
                return Err(failure(
                    kind.http_status(),
                    format!("the peer refused: {message}"),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        let pairing = Pairing {
            pin: ch.peer_fingerprint.clone(),
            address: peer,
            node_id: ch.peer.node_id.clone(),
            version: ch.peer.version.clone(),
        };
        cfg.pairing = Some(pairing.clone());
        let mut inner = self.inner.lock().await;
        if let Err(e) = self.commit(&mut inner, cfg, FailoverRole::Primary).await {
            // B holds the relationship already: take it back there.
            drop(inner);
            let undo = self.tell_break(&pairing).await;
            return Err(failure(
                500,
                format!(
                    "writing this node's relationship: {e:#}; {}",
                    match undo {
                        Ok(()) => "the peer was told to break it again".to_owned(),
                        Err(u) => format!("telling the peer to break it failed too: {u}"),
                    }
                ),
            ));
        }
        // The new primary takes the addresses at once (B listens for three
        // windows after its start before it would act alone).
        if let Some(r) = &inner.engine {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if r.commands.send(Command::BecomePrimary(tx)).await.is_ok() {
                if let Ok(Err(e)) = rx.await {
                    tracing::error!("taking the shared addresses: {e}");
                }
            }
        }
        tracing::info!(
            peer = %pairing.node_id,
            address = %peer,
            peer_interface = %interface,
            "relationship established: this node is primary"
        );
        Ok(self.overview_of(&inner))
    }

    /// Writes the relationship (state first: the role to start in, the term kept),
    /// then starts the engine; on failure nothing of it stays.
    async fn commit(
        &self,
        inner: &mut Inner,
        cfg: Config,
        role: FailoverRole,
    ) -> anyhow::Result<()> {
        Self::stop_engine(inner).await;
        let state = engine::state_path(&self.opts.data_dir);
        let term = STATE_FILE.read::<Persisted>(&state)?.map_or(0, |p| p.term);
        STATE_FILE.write(&state, &Persisted { term, role }, 0o600)?;
        CONFIG_FILE.write(&self.opts.config, &cfg, 0o600)?;
        if let Err(e) = self.start_engine(inner, cfg).await {
            inner.cfg = None;
            let _ = CONFIG_FILE.remove(&self.opts.config);
            return Err(e);
        }
        // The engine owns the addresses now.
        let _ = KEPT_FILE.remove(&self.kept_path());
        Ok(())
    }

    /// `POST /break`: tells the peer, then removes the relationship here. The
    /// node holding the addresses keeps serving them; the other drops them.
    pub async fn break_relationship(&self) -> Result<WithWarnings<FailoverOverview>, Failure> {
        let _op = self.ops.lock().await;
        let cfg = self.inner.lock().await.cfg.clone();
        let Some(cfg) = cfg else {
            return Err(failure(409, "no relationship to break"));
        };
        let mut warnings = Vec::new();
        if let Some(p) = &cfg.pairing {
            if let Err(e) = self.tell_break(p).await {
                warnings.push(format!(
                    "the peer at {} was not told ({e}); break the relationship there too",
                    p.address
                ));
            }
        }
        let mut inner = self.inner.lock().await;
        self.break_local(&mut inner)
            .await
            .map_err(|e| failure(500, e))?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        Ok(WithWarnings {
            value: self.overview_of(&inner),
            warnings,
        })
    }

    async fn tell_break(&self, p: &Pairing) -> Result<(), PairError> {
        let mut ch = self.connect_peer(p).await?;
        ch.send(&Msg::Break).await?;
        match ch.recv().await? {
            Msg::Done => Ok(()),
            other => Err(PairError::Protocol {
                addr: p.address,
                message: format!("unexpected answer {other:?}"),
            }),
        }
    }

    async fn break_local(&self, inner: &mut Inner) -> Result<(), String> {
        let holding = Self::engine_status(inner).is_some_and(|s| s.holding);
        Self::stop_engine(inner).await;
        let Some(cfg) = inner.cfg.take() else {
            return Ok(());
        };
        if holding {
            let kept = Kept {
                interface: cfg.interface.clone(),
                shared_addresses: cfg.shared_addresses.clone(),
            };
            KEPT_FILE
                .write(&self.kept_path(), &kept, 0o600)
                .map_err(|e| e.to_string())?;
        } else if let Err(e) = engine::release(&cfg).await {
            tracing::warn!("releasing the shared addresses: {e}");
        }
        CONFIG_FILE
            .remove(&self.opts.config)
            .map_err(|e| e.to_string())?;
        tracing::info!(
            kept = holding,
            "relationship broken{}",
            if holding {
                ": this node keeps serving the shared addresses"
            } else {
                ""
            }
        );
        Ok(())
    }

    async fn engine_command<T>(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Command,
    ) -> Result<T, Failure> {
        let inner = self.inner.lock().await;
        let Some(r) = &inner.engine else {
            return Err(failure(409, "not in a relationship (no engine running)"));
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || failure(503, "the engine is stopping");
        r.commands.send(make(tx)).await.map_err(|_| gone())?;
        drop(inner);
        rx.await.map_err(|_| gone())
    }

    pub async fn set_auto_takeover(&self, on: bool) -> Result<FailoverOverview, Failure> {
        self.engine_command(|tx| Command::SetAutoTakeover(on, tx))
            .await?;
        Ok(self.overview().await)
    }

    /// `POST /become-primary`: a last sync pulled from the primary when it answers,
    /// then the takeover.
    pub async fn become_primary(&self) -> Result<WithWarnings<FailoverOverview>, Failure> {
        let _op = self.ops.lock().await;
        let (pairing, status) = {
            let inner = self.inner.lock().await;
            (
                inner.cfg.as_ref().and_then(|c| c.pairing.clone()),
                Self::engine_status(&inner),
            )
        };
        let Some(status) = status else {
            return Err(failure(409, "not in a relationship (no engine running)"));
        };
        let mut warnings = Vec::new();
        if let (Some(p), false) = (&pairing, status.role == FailoverRole::Primary) {
            match self.pull(p).await {
                Ok(r) if r.ok => {}
                Ok(r) => warnings.push(format!(
                    "the last sync before the switch failed: {}",
                    r.error.unwrap_or_default()
                )),
                Err(e) => warnings.push(format!(
                    "no last sync from the peer ({e}): switched without it"
                )),
            }
        }
        self.engine_command(Command::BecomePrimary)
            .await?
            .map_err(|e| match e {
                BecomePrimaryError::Refused(m) => failure(409, m),
                BecomePrimaryError::Failed(m) => failure(500, m),
            })?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        Ok(WithWarnings {
            value: self.overview().await,
            warnings,
        })
    }

    /// `POST /sync`: the primary pushes now.
    pub async fn sync_now(&self) -> Result<SyncReport, Failure> {
        let _op = self.ops.lock().await;
        let (cfg, status) = {
            let inner = self.inner.lock().await;
            (inner.cfg.clone(), Self::engine_status(&inner))
        };
        let Some(p) = cfg.as_ref().and_then(|c| c.pairing.clone()) else {
            return Err(failure(409, "not in a relationship"));
        };
        if status.map(|s| s.role) != Some(FailoverRole::Primary) {
            return Err(failure(
                409,
                "this node is the backup: the primary pushes the sync",
            ));
        }
        Ok(self.push(cfg.as_ref().expect("paired"), &p).await)
    }

    fn backend(&self) -> Result<&SyncBackend, String> {
        self.opts.sync.as_ref().ok_or_else(|| {
            "no sync backend (start with --sync-root DIR or --sync-agent SOCKET)".into()
        })
    }

    async fn record(&self, r: &SyncReport) {
        if let Err(e) = LAST_SYNC_FILE.write(&self.opts.data_dir.join("last-sync.json"), r, 0o600) {
            tracing::warn!("{e}");
        }
        self.inner.lock().await.last_sync = Some(r.clone());
        if r.ok {
            tracing::info!(direction = %r.direction, items = r.items.len(), "sync");
        } else {
            tracing::warn!(
                direction = %r.direction,
                "sync failed: {}",
                r.error.as_deref().unwrap_or("")
            );
        }
    }

    /// Exports and sends a sync to the peer; the report is the peer's outcome.
    async fn push(&self, cfg: &Config, p: &Pairing) -> SyncReport {
        let r = async {
            let bundle = self
                .backend()?
                .export(&cfg.shared_addresses)
                .await
                .map_err(|e| e.to_string())?;
            let mut ch = self.connect_peer(p).await.map_err(|e| e.to_string())?;
            send_sync(&mut ch, cfg, &bundle)
                .await
                .map_err(|e| e.to_string())?;
            match ch.recv().await.map_err(|e| e.to_string())? {
                Msg::SyncDone { report } if report.ok => Ok(report.items),
                Msg::SyncDone { report } => Err(format!(
                    "the peer did not apply it: {}",
                    report.error.unwrap_or_default()
                )),
                other => Err(format!("unexpected answer {other:?}")),
            }
        };
        let report = report("sent", r.await);
        self.record(&report).await;
        report
    }

    /// Asks the primary for a sync now and applies it here.
    async fn pull(&self, p: &Pairing) -> Result<SyncReport, PairError> {
        let mut ch = self.connect_peer(p).await?;
        ch.send(&Msg::Pull).await?;
        let report = self.receive_sync(&mut ch).await?;
        let _ = ch
            .send(&Msg::SyncDone {
                report: report.clone(),
            })
            .await;
        Ok(report)
    }

    /// Reads `Sync` + bundle from `ch` and applies it (recorded either way).
    async fn receive_sync(&self, ch: &mut Channel) -> Result<SyncReport, PairError> {
        let header = ch.recv().await?;
        if !matches!(header, Msg::Sync { .. }) {
            return Err(PairError::Protocol {
                addr: ch.addr,
                message: "expected a sync".into(),
            });
        }
        self.receive_sync_from(ch, header).await
    }

    /// Applies a sync on the backup: the settings are checked first, then the
    /// bundle (all or nothing), then the shared settings are written.
    async fn apply_sync(
        &self,
        settings: SharedSettings,
        bundle: Vec<u8>,
    ) -> Result<Vec<String>, String> {
        let cfg = {
            let inner = self.inner.lock().await;
            if Self::engine_status(&inner).is_some_and(|s| s.role == FailoverRole::Primary) {
                return Err("this node is primary: it does not take a sync".into());
            }
            inner.cfg.clone().ok_or("not in a relationship")?
        };
        let new = settings.onto(&cfg);
        new.validate()
            .map_err(|e| format!("the pair settings: {e}"))?;
        let mut items = self
            .backend()?
            .apply(bundle, &new.shared_addresses)
            .await
            .map_err(|e| e.to_string())?;
        if new != cfg {
            let mut inner = self.inner.lock().await;
            CONFIG_FILE
                .write(&self.opts.config, &new, 0o600)
                .map_err(|e| e.to_string())?;
            Self::stop_engine(&mut inner).await;
            self.start_engine(&mut inner, new)
                .await
                .map_err(|e| format!("restarting the engine with the new settings: {e:#}"))?;
            items.push("pair settings".into());
        }
        Ok(items)
    }

    /// `POST /establish`, then a first sync in the background: the backup should
    /// not wait a whole interval for the users and certificates it would serve.
    pub async fn establish_and_sync(
        self: &Arc<Self>,
        req: EstablishRequest,
    ) -> Result<FailoverOverview, Failure> {
        let overview = self.establish(req).await?;
        let me = self.clone();
        tokio::spawn(async move { me.sync_if_primary().await });
        Ok(overview)
    }

    async fn sync_if_primary(&self) {
        let _op = self.ops.lock().await;
        let (cfg, status) = {
            let inner = self.inner.lock().await;
            (inner.cfg.clone(), Self::engine_status(&inner))
        };
        if let (Some(cfg), Some(s)) = (cfg, status) {
            if let (Some(p), FailoverRole::Primary) = (cfg.pairing.clone(), s.role) {
                self.push(&cfg, &p).await;
            }
        }
    }

    /// Every `sync_interval_s` the primary pushes a sync.
    pub async fn sync_loop(self: Arc<Self>) {
        loop {
            let every = {
                let inner = self.inner.lock().await;
                inner
                    .cfg
                    .as_ref()
                    .map_or(config::DEFAULT_SYNC_INTERVAL_S, |c| c.sync_interval_s)
            };
            tokio::time::sleep(Duration::from_secs(every)).await;
            self.sync_if_primary().await;
        }
    }

    // ----- pairing listener --------------------------------------------------

    pub async fn serve_pairing(self: Arc<Self>, listener: tokio::net::TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PAIR_CONNECTIONS));
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("pairing port: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%from, "pairing connection refused: too many at once");
                continue;
            };
            let me = self.clone();
            let busy = self.in_flight();
            tokio::spawn(async move {
                let _busy = busy;
                if let Err(e) = me.serve_one(tcp).await {
                    tracing::warn!(%from, "pairing connection: {e}");
                }
                drop(slot);
            });
        }
    }

    async fn serve_one(&self, tcp: tokio::net::TcpStream) -> Result<(), PairError> {
        let (paired, pin) = {
            let inner = self.inner.lock().await;
            let pin = inner
                .cfg
                .as_ref()
                .and_then(|c| c.pairing.as_ref())
                .map(|p| p.pin.clone());
            (inner.cfg.is_some(), pin)
        };
        let psk = config::read_psk(&self.psk_path()).map_err(|e| PairError::Protocol {
            addr: tcp.peer_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into()),
            message: e.to_string(),
        })?;
        let local = pair::Local {
            identity: &self.identity,
            tls: &self.tls,
            psk: &psk,
            paired,
            protocol: self.opts.protocol,
        };
        let mut ch = pair::accept(&local, tcp).await?;
        let request = ch.recv().await?;
        if !matches!(request, Msg::Establish(_)) && pin.as_deref() != Some(&ch.peer_fingerprint) {
            let m = match &pin {
                Some(pin) => format!(
                    "certificate {} is not the pinned peer's ({pin})",
                    ch.peer_fingerprint
                ),
                None => "this node is not in a relationship".into(),
            };
            ch.refuse(Refusal::NotPinned, m.clone()).await;
            return Err(PairError::Refused {
                kind: Refusal::NotPinned,
                message: m,
            });
        }
        match request {
            Msg::Establish(p) => {
                let _op = self.ops.lock().await;
                match self.accept_establish(&ch, p).await {
                    Ok(interface) => ch.send(&Msg::Accepted { interface }).await,
                    Err((kind, m)) => {
                        tracing::warn!(from = %ch.addr, "establish refused: {m}");
                        ch.refuse(kind, m).await;
                        Ok(())
                    }
                }
            }
            Msg::Sync { .. } => {
                let _op = self.ops.lock().await;
                let report = self.receive_sync_from(&mut ch, request).await?;
                ch.send(&Msg::SyncDone { report }).await
            }
            Msg::Pull => {
                let _op = self.ops.lock().await;
                let Some(cfg) = self.inner.lock().await.cfg.clone() else {
                    ch.refuse(Refusal::Failed, "not in a relationship").await;
                    return Ok(());
                };
                let bundle = match self.backend() {
                    Ok(b) => b
                        .export(&cfg.shared_addresses)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                let bundle = match bundle {
                    Ok(b) => b,
                    Err(e) => {
                        self.record(&report("sent", Err(e.clone()))).await;
                        ch.refuse(Refusal::Failed, format!("the primary's export: {e}"))
                            .await;
                        return Ok(());
                    }
                };
                send_sync(&mut ch, &cfg, &bundle).await?;
                let r = match ch.recv().await? {
                    Msg::SyncDone { report } if report.ok => Ok(report.items),
                    Msg::SyncDone { report } => Err(format!(
                        "the peer did not apply it: {}",
                        report.error.unwrap_or_default()
                    )),
                    other => Err(format!("unexpected answer {other:?}")),
                };
                self.record(&report("sent", r)).await;
                Ok(())
            }
            Msg::Break => {
                let _op = self.ops.lock().await;
                let mut inner = self.inner.lock().await;
                match self.break_local(&mut inner).await {
                    Ok(()) => ch.send(&Msg::Done).await,
                    Err(e) => {
                        ch.refuse(Refusal::Failed, e).await;
                        Ok(())
                    }
                }
            }
            other => {
                ch.refuse(Refusal::BadRequest, format!("unexpected request {other:?}"))
                    .await;
                Ok(())
            }
        }
    }

    async fn receive_sync_from(
        &self,
        ch: &mut Channel,
        header: Msg,
    ) -> Result<SyncReport, PairError> {
        let Msg::Sync {
            settings,
            bundle_len,
        } = header
        else {
            unreachable!("called with a sync header")
        };
        let bundle = if bundle_len as usize > pair::BUNDLE_CAP {
            Err(format!(
                "a bundle of {bundle_len} bytes, more than the {} allowed",
                pair::BUNDLE_CAP
            ))
        } else {
            ch.recv_bytes(pair::BUNDLE_CAP, pair::BUNDLE_TIMEOUT)
                .await
                .map_err(|e| e.to_string())
        };
        let r = match bundle {
            Ok(b) => self.apply_sync(settings, b).await,
            Err(e) => Err(e),
        };
        let report = report("received", r);
        self.record(&report).await;
        Ok(report)
    }

    /// B's side of *establish*: checks the proposal against this node, writes the
    /// relationship and starts the engine as backup. Answers the interface chosen.
    async fn accept_establish(
        &self,
        ch: &Channel,
        p: Proposal,
    ) -> Result<String, (Refusal, String)> {
        let bad = |m: String| (Refusal::BadRequest, m);
        let mut inner = self.inner.lock().await;
        if let Some(c) = &inner.cfg {
            let same = c
                .pairing
                .as_ref()
                .is_some_and(|x| x.pin == ch.peer_fingerprint);
            if !same {
                return Err((
                    Refusal::AlreadyPaired,
                    match &c.pairing {
                        Some(x) => format!(
                            "the peer is already in a relationship with {} ({}); break it there first",
                            x.node_id, x.address
                        ),
                        None => "the peer already has a failover configuration; break it there first"
                            .into(),
                    },
                ));
            }
        }
        let shared = &p.settings.shared_addresses;
        let Some(first) = shared.first() else {
            return Err(bad("no shared addresses proposed".into()));
        };
        let kernel = Kernel::connect().map_err(|e| (Refusal::Failed, e.to_string()))?;
        let ip = p.backup_heartbeat.ip();
        if shared.iter().any(|s| s.ip() == ip) {
            return Err(bad(format!("{ip} is a shared address, not the peer's own")));
        }
        match kernel.is_local(ip).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(bad(format!(
                    "{ip} is not an address of the peer (it answered from another)"
                )))
            }
            Err(e) => return Err((Refusal::Failed, e.to_string())),
        }
        let interface = match kernel.interface_in(*first).await {
            Ok(Some(i)) => i,
            Ok(None) => {
                return Err(bad(format!(
                    "no interface of the peer has an address in the shared subnet {}/{}",
                    first.network(),
                    first.prefix()
                )))
            }
            Err(e) => return Err((Refusal::Failed, e.to_string())),
        };
        let cfg = Config {
            node_id: self.identity.node_id(),
            interface: interface.clone(),
            shared_addresses: shared.clone(),
            local: p.backup_heartbeat,
            peer: p.primary_heartbeat,
            psk_file: self.psk_path(),
            interval_ms: p.settings.interval_ms,
            window_ms: p.settings.window_ms,
            probe_ms: p.settings.probe_ms,
            check_address: None,
            auto_takeover: p.settings.auto_takeover,
            initial_role: FailoverRole::Backup,
            sync_interval_s: p.settings.sync_interval_s,
            pairing: Some(Pairing {
                pin: ch.peer_fingerprint.clone(),
                address: p.primary_pair,
                node_id: ch.peer.node_id.clone(),
                version: ch.peer.version.clone(),
            }),
        };
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        self.commit(&mut inner, cfg, FailoverRole::Backup)
            .await
            .map_err(|e| (Refusal::Failed, format!("{e:#}")))?;
        tracing::info!(
            peer = %ch.peer.node_id,
            interface = %interface,
            "relationship established: this node is backup"
        );
        Ok(interface)
    }

    /// The daemon is stopping: the engine ends, and the addresses go with it
    /// unless they were kept after a break.
    pub async fn shutdown(&self) {
        let mut inner = self.inner.lock().await;
        Self::stop_engine(&mut inner).await;
        if let Some(cfg) = &inner.cfg {
            if let Err(e) = engine::release(cfg).await {
                tracing::error!("releasing the shared addresses: {e}");
            }
        }
    }
}

async fn send_sync(ch: &mut Channel, cfg: &Config, bundle: &[u8]) -> Result<(), PairError> {
    ch.send(&Msg::Sync {
        settings: SharedSettings::of(cfg),
        bundle_len: bundle.len() as u64,
    })
    .await?;
    ch.send_bytes(bundle).await
}

/// Starts the DNS swing server when the config enables it: it answers with
/// whoever the engine says is primary, checked every heartbeat interval.
async fn dns_swing(
    dns: &DnsConfig,
    cfg: &Config,
    snapshot: Arc<Mutex<Snapshot>>,
) -> anyhow::Result<Option<DnsTask>> {
    let (tx, rx) = tokio::sync::watch::channel(crate::dns::Who::Unknown);
    // A server just stopped closes its sockets when its tasks are next polled:
    // a few short retries cover that instead of failing the rebind.
    let mut tries = 0;
    let server = loop {
        match crate::dns::DnsServer::bind(dns, rx.clone()).await {
            Ok(Some(server)) => break server,
            Ok(None) => return Ok(None),
            Err(e) if tries >= 10 => return Err(e.into()),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (interval, window) = (cfg.interval(), cfg.window_ms);
    let addrs = server.local_addrs().to_vec();
    let task = tokio::spawn(async move {
        let feed = async {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let status = snapshot.lock().expect("snapshot lock").status();
                let who = crate::dns::Who::from_status(&status, window);
                tx.send_if_modified(|w| std::mem::replace(w, who) != who);
            }
        };
        tokio::select! {
            r = server.run() => if let Err(e) = r { tracing::error!("DNS swing: {e}") },
            () = feed => {}
        }
    });
    Ok(Some(DnsTask { task, addrs }))
}

/// Keeps the heartbeat path out of swap once there is an engine: a page fault
/// on a loaded box is exactly the delay that makes a peer look dead. Pages are
/// locked as they are first touched (`MCL_ONFAULT`): what the engine uses stays
/// resident, the rest of the binary and the idle thread stacks are not faulted in
/// (locking them all up front tripled the paired daemon's RSS). Unpaired, nothing
/// is time-critical and nothing is locked. Needs CAP_IPC_LOCK or a large
/// RLIMIT_MEMLOCK (LimitMEMLOCK= in the unit); without them it only logs.
fn lock_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let flags = libc::MCL_CURRENT | libc::MCL_FUTURE;
        // SAFETY: mlockall(2) takes flags only and touches no Rust-visible memory.
        let r = unsafe { libc::mlockall(flags | libc::MCL_ONFAULT) };
        // SAFETY: as above (kernels before 4.4 refuse MCL_ONFAULT with EINVAL).
        if r != 0 && unsafe { libc::mlockall(flags) } != 0 {
            tracing::debug!(
                "mlockall: {} (memory stays swappable)",
                std::io::Error::last_os_error()
            );
        }
    });
}

pub fn psk_path(data_dir: &Path) -> PathBuf {
    data_dir.join("psk")
}
