//! HTTPS serving: rustls with certificates chosen per connection (by the name
//! the client asks for, then by the local address it connected to — SNI never
//! carries an IP literal — else the default), hyper HTTP/1.1 per connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use keel_certs::Serving;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::app::ClientAddr;

/// The certificates being served. Replacing them affects new handshakes only:
/// open connections keep going with what they negotiated.
#[derive(Debug)]
pub struct CertResolver {
    serving: RwLock<Arc<Serving>>,
    /// One server config per local address, each knowing its address; they all
    /// read `serving` at handshake time, so a swap needs no new configs.
    configs: Mutex<Configs>,
}

/// The configs made so far and the policy they were made under (one lock: a config
/// built while the policy changes cannot outlive the change).
#[derive(Debug, Default)]
struct Configs {
    policy: TlsPolicy,
    by_local: HashMap<IpAddr, Arc<rustls::ServerConfig>>,
}

/// The protocol versions and cipher suites new handshakes may use (the console's
/// access policy). rustls implements no CBC suite, no RSA key exchange and no TLS
/// below 1.2, so even `default` offers only AEAD suites with ECDHE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsPolicy {
    pub min_version: keel_api::MinTlsVersion,
    pub ciphers: keel_api::CipherPolicy,
}

impl TlsPolicy {
    pub fn versions(&self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static FROM_12: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY_13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self.min_version {
            keel_api::MinTlsVersion::Tls12 => &FROM_12,
            keel_api::MinTlsVersion::Tls13 => &ONLY_13,
        }
    }

    /// ring's provider with the policy's suites: `default` keeps all nine,
    /// `strict` keeps the six with 256-bit keys (drops the AES-128-GCM ones).
    pub fn provider(&self) -> rustls::crypto::CryptoProvider {
        use rustls::crypto::ring::cipher_suite as cs;
        let mut provider = rustls::crypto::ring::default_provider();
        if self.ciphers == keel_api::CipherPolicy::Strict {
            provider.cipher_suites = vec![
                cs::TLS13_AES_256_GCM_SHA384,
                cs::TLS13_CHACHA20_POLY1305_SHA256,
                cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            ];
        }
        provider
    }

    /// The suites offered under this policy (IANA names), for the page and API.
    pub fn suite_names(&self) -> Vec<String> {
        let versions = self.versions();
        self.provider()
            .cipher_suites
            .iter()
            .filter(|s| versions.contains(&s.version()))
            .map(|s| format!("{:?}", s.suite()))
            .collect()
    }
}

impl CertResolver {
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        Self::from_serving(Serving::single(key))
    }

    pub fn from_serving(serving: Serving) -> Self {
        Self {
            serving: RwLock::new(Arc::new(serving)),
            configs: Mutex::default(),
        }
    }

    /// New protocol versions and suites for the handshakes from now on; open
    /// connections keep what they negotiated.
    pub fn set_policy(&self, policy: TlsPolicy) {
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        configs.policy = policy;
        configs.by_local.clear();
    }

    pub fn policy(&self) -> TlsPolicy {
        self.configs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .policy
    }

    /// Replaces the default certificate only.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        let mut cur = self.serving.write().unwrap_or_else(|p| p.into_inner());
        let mut next = Serving::clone(&cur);
        next.default = key;
        *cur = Arc::new(next);
    }

    /// Hot swap of everything served (after the store changed).
    pub fn set_serving(&self, serving: Serving) {
        *self.serving.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(serving);
    }

    pub fn choose(&self, local: Option<IpAddr>, sni: Option<&str>) -> Arc<CertifiedKey> {
        let serving = self
            .serving
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        serving.choose(local, sni)
    }

    /// The server config for connections accepted on `local`.
    pub fn config_for(
        self: &Arc<Self>,
        local: IpAddr,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let local = local.to_canonical();
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = configs.by_local.get(&local) {
            return Ok(c.clone());
        }
        // Addresses come and go (DHCP, failover); never grow without bound.
        if configs.by_local.len() >= 64 {
            configs.by_local.clear();
        }
        let config = Arc::new(build_config(
            Arc::new(LocalResolver {
                shared: self.clone(),
                local,
            }),
            configs.policy,
        )?);
        configs.by_local.insert(local, config.clone());
        Ok(config)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(None, hello.server_name()))
    }
}

/// Resolves for connections accepted on one local address.
#[derive(Debug)]
struct LocalResolver {
    shared: Arc<CertResolver>,
    local: IpAddr,
}

impl ResolvesServerCert for LocalResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.shared.choose(Some(self.local), hello.server_name()))
    }
}

fn build_config(
    resolver: Arc<dyn ResolvesServerCert>,
    policy: TlsPolicy,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(policy.provider()))
        .with_protocol_versions(policy.versions())?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// One config for every connection (no choice by local address), under the
/// resolver's policy as it is now.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<rustls::ServerConfig, rustls::Error> {
    let policy = resolver.policy();
    build_config(resolver, policy)
}

/// Where `serve_https` gets the TLS config of an accepted connection.
pub trait TlsConfigs: Clone + Send + Sync + 'static {
    fn config_for(&self, local: Option<SocketAddr>) -> Option<Arc<rustls::ServerConfig>>;
}

/// The same config everywhere.
impl TlsConfigs for Arc<rustls::ServerConfig> {
    fn config_for(&self, _local: Option<SocketAddr>) -> Option<Arc<rustls::ServerConfig>> {
        Some(self.clone())
    }
}

/// Certificates chosen by the connection's local address (and SNI).
impl TlsConfigs for Arc<CertResolver> {
    fn config_for(&self, local: Option<SocketAddr>) -> Option<Arc<rustls::ServerConfig>> {
        let result = match local {
            Some(addr) => CertResolver::config_for(self, addr.ip()),
            None => server_config(self.clone()).map(Arc::new),
        };
        result
            .map_err(|e| tracing::error!("TLS configuration: {e}"))
            .ok()
    }
}

/// How many connections the console keeps open, and for how long when they are
/// slow or silent. Every connection holds a file descriptor (and up to
/// `MAX_CONNECTION_BUFFER` of buffered request), so these bound both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections at once, over every listener sharing the limiter; past it
    /// new ones are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Open connections per source (an IPv4 address or an IPv6 /64), so that one
    /// client cannot take all of `max_connections`.
    pub max_per_source: usize,
    /// Time for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time to send a request's headers, counted from when the server starts
    /// waiting for them: before the first byte of a new connection and again each
    /// time a keep-alive connection goes idle, so it is also how long an idle
    /// connection is kept.
    pub header_read_timeout: Duration,
    /// Longest wait for the next piece of a request body once its headers are in:
    /// a body that stalls ends the request (and the connection) instead of
    /// holding it open. Counted per piece, so a long upload that keeps moving is
    /// never cut.
    pub body_idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            // Below the unit's file descriptor limit with room for everything else
            // the console opens (see `main`, which raises the soft limit).
            max_connections: 1024,
            // A browser opens ~6 per host; a NATed office shares one address.
            max_per_source: 64,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(20),
            body_idle_timeout: Duration::from_secs(30),
        }
    }
}

/// The most a connection buffers of a request (headers longer than this are
/// refused): 1024 connections × 64 KiB = 64 MiB at worst, where hyper's default
/// (~400 KiB) would allow ~400 MiB.
pub const MAX_CONNECTION_BUFFER: usize = 64 * 1024;

/// Counts open connections, in total and per source; shared by the listeners.
#[derive(Debug)]
pub struct ConnLimiter {
    limits: ConnLimits,
    state: Mutex<ConnState>,
}

#[derive(Debug, Default)]
struct ConnState {
    open: usize,
    per_source: HashMap<IpAddr, usize>,
    /// Refused since the last warning (warnings are at most one a minute).
    refused: u64,
    warned: Option<std::time::Instant>,
}

/// One admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct ConnGuard {
    limiter: Arc<ConnLimiter>,
    source: IpAddr,
}

impl ConnLimiter {
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::default(),
        })
    }

    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).open
    }

    /// A place for a connection from `peer`, or `None` when it is over a limit.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<ConnGuard> {
        let source = crate::auth::source_key(peer);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let from_source = s.per_source.get(&source).copied().unwrap_or(0);
        if s.open >= self.limits.max_connections || from_source >= self.limits.max_per_source {
            s.refused += 1;
            let now = std::time::Instant::now();
            if s.warned
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
            {
                tracing::warn!(
                    %source,
                    open = s.open,
                    from_source,
                    "connection limit reached: {} connection(s) refused",
                    s.refused
                );
                s.refused = 0;
                s.warned = Some(now);
            }
            return None;
        }
        s.open += 1;
        *s.per_source.entry(source).or_default() += 1;
        Some(ConnGuard {
            limiter: self.clone(),
            source,
        })
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut s = self.limiter.state.lock().unwrap_or_else(|p| p.into_inner());
        s.open -= 1;
        if let Some(n) = s.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                s.per_source.remove(&self.source);
            }
        }
    }
}

/// The next connection `limiter` admits; others are closed at once. Never gives
/// up: a failed accept (e.g. out of file descriptors) is retried shortly.
async fn accept(
    listener: &TcpListener,
    limiter: &Arc<ConnLimiter>,
) -> (TcpStream, SocketAddr, ConnGuard) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match limiter.admit(peer.ip()) {
            Some(guard) => return (tcp, peer, guard),
            None => drop(tcp),
        }
    }
}

/// Accepts TLS connections on `listener` and serves `router` on each, with the
/// default limits (its own limiter).
pub async fn serve_https<C: TlsConfigs>(listener: TcpListener, configs: C, router: axum::Router) {
    serve_https_limited(
        listener,
        configs,
        router,
        ConnLimiter::new(ConnLimits::default()),
    )
    .await
}

/// `serve_https` within `limiter` (which other listeners may share).
pub async fn serve_https_limited<C: TlsConfigs>(
    listener: TcpListener,
    configs: C,
    router: axum::Router,
    limiter: Arc<ConnLimiter>,
) {
    loop {
        // Counted before the handshake: that is where a silent client waits.
        let (tcp, peer, guard) = accept(&listener, &limiter).await;
        let Some(config) = configs.config_for(tcp.local_addr().ok()) else {
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let router = router.clone();
        let limits = limiter.limits().clone();
        tokio::spawn(async move {
            let _guard = guard;
            let tls =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                };
            serve_connection(TokioIo::new(tls), peer, router, &limits).await;
        });
    }
}

/// Accepts plain TCP connections (the redirect to HTTPS), with the default limits.
pub async fn serve_plain(listener: TcpListener, router: axum::Router) {
    serve_plain_limited(listener, router, ConnLimiter::new(ConnLimits::default())).await
}

/// `serve_plain` within `limiter`.
pub async fn serve_plain_limited(
    listener: TcpListener,
    router: axum::Router,
    limiter: Arc<ConnLimiter>,
) {
    loop {
        let (tcp, peer, guard) = accept(&listener, &limiter).await;
        let router = router.clone();
        let limits = limiter.limits().clone();
        tokio::spawn(async move {
            let _guard = guard;
            serve_connection(TokioIo::new(tcp), peer, router, &limits).await;
        });
    }
}

async fn serve_connection<I>(io: I, peer: SocketAddr, router: axum::Router, limits: &ConnLimits)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let body_idle = limits.body_idle_timeout;
    let service = router.map_request(move |mut req: axum::extract::Request<_>| {
        req.extensions_mut().insert(ClientAddr(peer));
        req.map(|body| {
            axum::body::Body::new(tower_http::timeout::TimeoutBody::new(body_idle, body))
        })
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_CONNECTION_BUFFER)
        .serve_connection(io, TowerToHyperService::new(service))
        .await;
    if let Err(e) = result {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}
