//! keel-failover: the always-running daemon (pairing, and the takeover engine
//! while paired), `release` for ExecStopPost, `sync-agent`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keel_core::local_api::Inherited;
use keel_failover::config::{read_psk, Config};
use keel_failover::daemon::{Daemon, Options};
use keel_failover::sync::{SyncBackend, SyncPaths};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Keel failover pair: heartbeats and shared-address takeover"
)]
struct Args {
    /// The pair's settings (JSON).
    #[arg(long, global = true, default_value = "/data/failover/config.json")]
    config: PathBuf,
    /// Persistent state: <data-dir>/state.json (term, last role).
    #[arg(long, global = true, default_value = "/data/failover")]
    data_dir: PathBuf,
    /// Local API socket.
    #[arg(long, default_value = "/run/keel/failover/api.sock")]
    socket: PathBuf,
    /// The shared audit directory: changes keelctl and the local menu ask for go to
    /// <audit-dir>/failover.log. None: not recorded (a run outside the image).
    #[arg(long)]
    audit_dir: Option<PathBuf>,
    /// Group that may use the socket too (mode 0660); without it the socket is 0600.
    #[arg(long)]
    socket_group: Option<String>,
    /// The pairing port (TLS): where the peer establishes, syncs and breaks.
    #[arg(long, default_value = "[::]:7947")]
    pair_listen: SocketAddr,
    /// Config sync in this process, with DIR/console, DIR/update/settings.json and
    /// DIR/shared (standalone runs and tests).
    #[arg(long, value_name = "DIR", conflicts_with = "sync_agent")]
    sync_root: Option<PathBuf>,
    /// Config sync through the root sync agent on this socket (the image).
    #[arg(long, value_name = "SOCKET")]
    sync_agent: Option<PathBuf>,
    /// Exit (status 0) after this many seconds with nothing to do while unpaired
    /// (no relationship, no kept addresses, no request): the socket unit starts
    /// it again at the next connection. 0: never.
    #[arg(long, default_value_t = 0)]
    idle_exit: u64,
    /// Pairing protocol announced (tests provoke an incompatible peer with it).
    #[arg(long, hide = true, default_value_t = keel_failover::pair::PROTOCOL)]
    pair_protocol: u32,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Drop the shared addresses from the interface (run when the daemon exits).
    Release,
    /// Validate the configuration and the PSK file, then exit.
    Check,
    /// The root helper that reads and writes the synced files (one connection on
    /// stdin/stdout, socket-activated).
    SyncAgent,
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Cmd::SyncAgent) => return keel_failover::sync::run_agent(),
        Some(Cmd::Check) => {
            if !args.config.exists() {
                println!("{}: no relationship", args.config.display());
                return Ok(());
            }
            let cfg = Config::load(&args.config)?;
            read_psk(&cfg.psk_file)?;
            println!("{}: ok", args.config.display());
            return Ok(());
        }
        Some(Cmd::Release) => {
            // Unpaired, or kept after a break: nobody else serves the addresses.
            if !args.config.exists() {
                tracing::info!("no relationship: nothing to release");
                return Ok(());
            }
            let cfg = Config::load(&args.config)?;
            keel_failover::engine::release(&cfg)
                .await
                .context("releasing the shared addresses")?;
            tracing::info!("shared addresses released");
            return Ok(());
        }
        None => {}
    }
    if let Some(dir) = &args.audit_dir {
        keel_core::audit::init(dir, "failover");
    }
    let sync = match (args.sync_root, args.sync_agent) {
        (Some(root), _) => Some(SyncBackend::InProcess(SyncPaths {
            console: root.join("console"),
            update_settings: root.join("update/settings.json"),
            shared: root.join("shared"),
        })),
        (None, Some(socket)) => Some(SyncBackend::Agent(socket)),
        (None, None) => None,
    };
    // First, on one thread yet: it takes LISTEN_FDS out of the environment.
    // keel-failover.socket passes the local API socket and the pairing port.
    let (mut api_socket, mut pair_socket) = (None, None);
    for s in keel_core::local_api::inherited_sockets()? {
        match s {
            Inherited::Unix(l) => api_socket = Some(l),
            Inherited::Tcp(l) => pair_socket = Some(l),
        }
    }
    let activated = api_socket.is_some() || pair_socket.is_some();
    if args.idle_exit > 0 && !activated {
        tracing::warn!("--idle-exit without socket activation: nothing starts keel-failover again");
    }
    let pair_listen = pair_socket
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .unwrap_or(args.pair_listen);
    let daemon = Daemon::start(Options {
        config: args.config,
        data_dir: args.data_dir,
        pair_listen,
        protocol: args.pair_protocol,
        sync,
    })
    .await?;
    let pairing = match pair_socket {
        Some(l) => l,
        None => tokio::net::TcpListener::bind(pair_listen)
            .await
            .with_context(|| format!("pairing port {pair_listen}"))?,
    };
    let listener = match api_socket {
        Some(l) => l,
        None => keel_core::local_api::bind_for(&args.socket, args.socket_group.as_deref())?,
    };
    tokio::spawn(keel_core::local_api::serve(
        listener,
        keel_failover::api::router(daemon.clone())
            .layer(axum::middleware::from_fn(keel_core::audit::local_changes)),
    ));
    tokio::spawn(daemon.clone().serve_pairing(pairing));
    tokio::spawn(daemon.clone().sync_loop());
    tracing::info!(
        fingerprint = daemon.fingerprint(),
        pair = %pair_listen,
        activated,
        "ready"
    );
    let idle = async {
        if args.idle_exit == 0 || !activated {
            return std::future::pending().await;
        }
        let limit = std::time::Duration::from_secs(args.idle_exit);
        loop {
            tokio::time::sleep(limit.min(std::time::Duration::from_secs(5))).await;
            if daemon.idle_for().is_some_and(|d| d >= limit) {
                return;
            }
        }
    };
    tokio::select! {
        stopped = keel_core::notify::ready_until_stopped() => stopped?,
        () = idle => {
            // Connections arriving from now on wait in the sockets' queues, which
            // systemd keeps; the next process answers them.
            keel_core::notify::stopping();
            tracing::info!("unpaired and idle: exiting until the next connection");
        }
    }
    // A stopped engine no longer answers heartbeats: it must not keep serving
    // the addresses either (the peer takes over after its window). Under
    // systemd ExecStopPost= does the same, also after a crash.
    daemon.shutdown().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    keel_core::logging::init("keel-failover");
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}
