//! keel-failover: the takeover engine daemon, and `release` for ExecStopPost.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keel_failover::config::{read_psk, Config};
use keel_failover::engine::Engine;

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
    /// Group that may use the socket too (mode 0660); without it the socket is 0600.
    #[arg(long)]
    socket_group: Option<String>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Drop the shared addresses from the interface (run when the daemon exits).
    Release,
    /// Validate the configuration and the PSK file, then exit.
    Check,
}

/// Keeps the heartbeat path out of swap: a page fault on a loaded box is exactly
/// the delay that makes a peer look dead. Needs CAP_IPC_LOCK or a large
/// RLIMIT_MEMLOCK (LimitMEMLOCK= in the unit); without them it only warns.
fn lock_memory() {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    if let Err(e) = mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
        tracing::debug!("mlockall: {e} (memory stays swappable)");
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config)?;
    match args.command {
        Some(Cmd::Check) => {
            read_psk(&cfg.psk_file)?;
            println!("{}: ok", args.config.display());
            return Ok(());
        }
        Some(Cmd::Release) => {
            keel_failover::engine::release(&cfg)
                .await
                .context("releasing the shared addresses")?;
            tracing::info!("shared addresses released");
            return Ok(());
        }
        None => {}
    }
    let psk = read_psk(&cfg.psk_file)?;
    lock_memory();
    let engine = Engine::start(cfg.clone(), &psk, &args.data_dir).await?;
    drop(psk);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let listener = keel_core::local_api::bind_for(&args.socket, args.socket_group.as_deref())?;
    tokio::spawn(keel_core::local_api::serve(
        listener,
        keel_failover::api::router(engine.snapshot(), tx),
    ));
    let engine = tokio::spawn(engine.run(rx));
    keel_core::notify::ready_until_stopped().await?;
    // A stopped engine no longer answers heartbeats: it must not keep serving
    // the addresses either (the peer takes over after its window). Under
    // systemd ExecStopPost= does the same, also after a crash.
    engine.abort();
    let _ = engine.await;
    keel_failover::engine::release(&cfg)
        .await
        .context("releasing the shared addresses")?;
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
