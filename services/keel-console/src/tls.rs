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
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::app::ClientAddr;

/// The certificates being served. Replacing them affects new handshakes only:
/// open connections keep going with what they negotiated.
#[derive(Debug)]
pub struct CertResolver {
    serving: RwLock<Arc<Serving>>,
    /// One server config per local address, each knowing its address; they all
    /// read `serving` at handshake time, so a swap needs no new configs.
    configs: Mutex<HashMap<IpAddr, Arc<rustls::ServerConfig>>>,
}

impl CertResolver {
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        Self::from_serving(Serving::single(key))
    }

    pub fn from_serving(serving: Serving) -> Self {
        Self {
            serving: RwLock::new(Arc::new(serving)),
            configs: Mutex::new(HashMap::new()),
        }
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
        if let Some(c) = configs.get(&local) {
            return Ok(c.clone());
        }
        // Addresses come and go (DHCP, failover); never grow without bound.
        if configs.len() >= 64 {
            configs.clear();
        }
        let config = Arc::new(build_config(Arc::new(LocalResolver {
            shared: self.clone(),
            local,
        }))?);
        configs.insert(local, config.clone());
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
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// One config for every connection (no choice by local address).
pub fn server_config(resolver: Arc<CertResolver>) -> Result<rustls::ServerConfig, rustls::Error> {
    build_config(resolver)
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

/// Slow or silent clients must not hold a connection slot forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TLS connections on `listener` and serves `router` on each.
pub async fn serve_https<C: TlsConfigs>(listener: TcpListener, configs: C, router: axum::Router) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(config) = configs.config_for(tcp.local_addr().ok()) else {
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let router = router.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            serve_connection(TokioIo::new(tls), peer, router).await;
        });
    }
}

/// Accepts plain TCP connections (the redirect to HTTPS).
pub async fn serve_plain(listener: TcpListener, router: axum::Router) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let router = router.clone();
        tokio::spawn(serve_connection(TokioIo::new(tcp), peer, router));
    }
}

async fn serve_connection<I>(io: I, peer: SocketAddr, router: axum::Router)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = router.map_request(move |mut req: axum::extract::Request<_>| {
        req.extensions_mut().insert(ClientAddr(peer));
        req.map(axum::body::Body::new)
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(20))
        .serve_connection(io, TowerToHyperService::new(service))
        .await;
    if let Err(e) = result {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}
