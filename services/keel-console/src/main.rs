//! keel-console: the appliance's only public listener.

use keel_console::{app, auth, certs, status, tls};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(version, about = "Keel web console: HTTPS /appliance and its JSON API")]
struct Args {
    /// The console's persistent state (credentials, certificates).
    #[arg(long, default_value = "/data/console")]
    data_dir: PathBuf,
    /// HTTPS listen addresses.
    #[arg(long, default_value = "[::]:443")]
    https: Vec<SocketAddr>,
    /// Plain-HTTP listen address that redirects to HTTPS; "none" to disable.
    #[arg(long, default_value = "[::]:80")]
    http: String,
    /// Local API socket for keelctl (mode 0600).
    #[arg(long, default_value = "/run/keel/console/api.sock")]
    socket: PathBuf,
    /// keel-timed's local API socket (NTP check, clock gate, time set by hand).
    #[arg(long, default_value = "/run/keel/timed/api.sock")]
    timed_socket: PathBuf,
    /// keel-netd's local API socket (network configuration).
    #[arg(long, default_value = "/run/keel/netd/api.sock")]
    netd_socket: PathBuf,
    /// keel-failover's local API socket (pair, sync, inter-appliance key).
    #[arg(long, default_value = "/run/keel/failover/api.sock")]
    failover_socket: PathBuf,
    /// Directory where power requests are dropped for root to carry out.
    #[arg(long, default_value = keel_core::paths::REQUESTS_DIR)]
    requests_dir: PathBuf,
    /// What keel-reset/keel-boot found in GRUB's environment this boot.
    #[arg(long, default_value = keel_console::boot::DEFAULT_STATE_FILE)]
    boot_state: PathBuf,
    /// How long first boot waits for a routable address to put into the
    /// self-signed certificate.
    #[arg(long, default_value_t = 15)]
    first_boot_address_wait: u64,
    /// The shared audit directory: the console writes console.log there and reads
    /// every service's file (group keel-audit on the appliance). Default: `audit`
    /// beside the data dir (/data/audit).
    #[arg(long)]
    audit_dir: Option<PathBuf>,
}

/// Binds `[::]:port` dual-stack, or 0.0.0.0 on a kernel without IPv6.
async fn bind_tcp(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            tracing::warn!("{addr}: {e}; falling back to IPv4 only");
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            TcpListener::bind(v4)
                .await
                .with_context(|| format!("bind {v4}"))
        }
        Err(e) => Err(e).with_context(|| format!("bind {addr}")),
    }
}

/// On first boot DHCP may still be running; give it a moment so the certificate
/// names the address the admin will type. The IPv4 link-local fallback
/// (169.254.1.1, up at once) does not end the wait: it is rarely the address in use.
async fn wait_for_address(limit: Duration) -> Vec<std::net::IpAddr> {
    let start = Instant::now();
    loop {
        let ips = status::reachable_ips(&status::addresses());
        let routable = ips.iter().any(|ip| match ip {
            std::net::IpAddr::V4(v4) => !v4.is_link_local(),
            std::net::IpAddr::V6(_) => true,
        });
        if routable || start.elapsed() >= limit {
            return ips;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// File descriptors kept for what is not a client connection: listeners, the
/// local API and its clients, certificate files, the journal.
const RESERVED_FDS: u64 = 64;

/// The default connection limits, within the file descriptors the console may
/// open. systemd's default soft limit (1024) is no more than the connection cap
/// alone, so the soft limit is raised as far as the cap needs (the hard limit
/// allowing); if it cannot be, the cap comes down instead.
fn connection_limits() -> tls::ConnLimits {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let mut limits = tls::ConnLimits::default();
    let wanted = limits.max_connections as u64 + RESERVED_FDS;
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            let mut soft = soft;
            if soft < wanted {
                let raised = wanted.min(hard);
                match setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
                    Ok(()) => soft = raised,
                    Err(e) => tracing::warn!("raising RLIMIT_NOFILE to {raised}: {e}"),
                }
            }
            let room = soft.saturating_sub(RESERVED_FDS).max(1) as usize;
            if room < limits.max_connections {
                tracing::warn!("{soft} file descriptors: at most {room} connections");
                limits.max_connections = room;
            }
        }
        Err(e) => tracing::warn!("RLIMIT_NOFILE: {e}"),
    }
    limits.max_per_source = limits.max_per_source.min(limits.max_connections);
    limits
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    keel_core::logging::init("keel-console");
    let args = Args::parse();
    keel_console::time::set_socket(args.timed_socket.clone());
    keel_console::net::set_socket(args.netd_socket.clone());
    keel_console::failover::set_socket(args.failover_socket.clone());
    keel_console::boot::set_state_file(args.boot_state.clone());

    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "keel".into());
    let identity_store = keel_certs::DefaultIdentity::new(args.data_dir.join("tls"));
    let ips = if identity_store.dir().join("default.crt").exists() {
        Vec::new()
    } else {
        wait_for_address(Duration::from_secs(args.first_boot_address_wait)).await
    };
    let (identity, _) = identity_store
        .load_or_create(&hostname, &ips)
        .context("console certificate")?;
    let cert = keel_certs::info(&identity.cert_pem)?;
    let cert_store = Arc::new(
        keel_certs::CertStore::open(args.data_dir.join("certs"), identity_store.dir())
            .context("certificate store")?,
    );
    // A damaged store must not keep the console from starting.
    let serving = cert_store.serving().or_else(|e| {
        tracing::error!("certificate store: {e}; serving the built-in certificate");
        keel_certs::certified_key(&identity).map(keel_certs::Serving::single)
    })?;
    let resolver = Arc::new(tls::CertResolver::from_serving(serving));

    let auth = auth::Auth::open(&args.data_dir).context("credential store")?;
    let state = Arc::new(app::AppState {
        certs: Default::default(),
        status_cache: Default::default(),
        live: Default::default(),
        auth,
        cert,
        requests_dir: args.requests_dir.clone(),
        data_mount: PathBuf::from(keel_core::paths::DATA_DIR),
        tokens: keel_console::tokens::Tokens::open(&args.data_dir).context("API tokens")?,
        audit: keel_console::audit::AuditLog::open(args.audit_dir.clone().unwrap_or_else(|| {
            args.data_dir
                .parent()
                .unwrap_or(&args.data_dir)
                .join("audit")
        })),
        access: keel_console::access::Access::open(&args.data_dir),
    });

    // Sessions and TLS under the stored access policy before the first connection.
    state
        .access
        .apply_at_start(&state.auth, Some(resolver.clone()));

    let certs_state = certs::CertsState::new(state.clone(), cert_store, resolver.clone());
    let local = keel_core::local_api::bind(&args.socket, 0o600)?;
    tokio::spawn(keel_core::local_api::serve(
        local,
        keel_console::audit::local(
            app::local_router(state.clone()).merge(certs::local_router(certs_state.clone())),
            state.clone(),
        ),
    ));

    let router = app::router_with(state.clone(), certs::routes(certs_state));
    // One limiter for every listener: the limits are on the process's descriptors.
    let limiter = tls::ConnLimiter::new(connection_limits());
    for addr in &args.https {
        let listener = bind_tcp(*addr).await?;
        tracing::info!("HTTPS on {addr}");
        tokio::spawn(tls::serve_https_limited(
            listener,
            resolver.clone(),
            router.clone(),
            limiter.clone(),
        ));
    }
    if args.http != "none" {
        let addr: SocketAddr = args.http.parse().context("--http")?;
        let listener = bind_tcp(addr).await?;
        tokio::spawn(tls::serve_plain_limited(
            listener,
            app::redirect_router(),
            limiter.clone(),
        ));
    }

    keel_core::notify::ready_until_stopped().await?;
    Ok(())
}
