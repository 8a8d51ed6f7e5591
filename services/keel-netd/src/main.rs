//! keel-netd: the network configuration service.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use keel_netd::render::SystemFiles;
use keel_netd::service::{Netd, Settings};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Keel network configuration, applied with commit-confirm"
)]
struct Args {
    /// Data root: <data>/net/config.json (confirmed configuration),
    /// <data>/net/ntp-servers.json (for keel-timed).
    #[arg(long, default_value = keel_core::paths::DATA_DIR)]
    data_dir: PathBuf,
    /// Runtime directory (pending change, hostname, reload requests).
    #[arg(long, default_value = "/run/keel/netd")]
    run_dir: PathBuf,
    /// Local API socket.
    #[arg(long, default_value = "/run/keel/netd/api.sock")]
    socket: PathBuf,
    /// Group that may use the socket too (mode 0660); without it the socket is 0600.
    #[arg(long)]
    socket_group: Option<String>,
    /// Run inside this network namespace (a name under /run/netns, or a path).
    #[arg(long)]
    netns: Option<String>,
    /// Where systemd-networkd files for DHCP interfaces go; "none" to leave networkd alone.
    #[arg(long, default_value = "/run/systemd/network")]
    networkd_dir: String,
    /// systemd-resolved drop-in for DNS servers and search domains; "none" to skip.
    #[arg(long, default_value = "/run/systemd/resolved.conf.d/keel-netd.conf")]
    resolved_dropin: String,
    /// The hostname, for the root side to set; "none" to skip. Default: <run-dir>/hostname.
    #[arg(long)]
    hostname_file: Option<String>,
    /// Request file naming what the root side reloads; "none" to skip.
    /// Default: <run-dir>/reload-request.
    #[arg(long)]
    reload_request: Option<String>,
    /// Seconds a change waits for confirmation before it is reverted.
    #[arg(long, default_value_t = keel_api::NET_CONFIRM_SECONDS)]
    confirm_seconds: u64,
    /// Re-apply the running configuration every this many seconds; 0 = never.
    #[arg(long, default_value_t = 10)]
    reconcile_seconds: u64,
    /// The shared audit directory: changes keelctl and the local menu make go to
    /// <audit-dir>/netd.log. Default: <data-dir>/audit.
    #[arg(long)]
    audit_dir: Option<PathBuf>,
}

fn opt_path(s: &str) -> Option<PathBuf> {
    (s != "none").then(|| PathBuf::from(s))
}

impl Args {
    fn settings(&self) -> Settings {
        let mut s = Settings::new(&self.data_dir, &self.run_dir);
        let under_run = |v: &Option<String>, name: &str| match v {
            Some(p) => opt_path(p),
            None => Some(self.run_dir.join(name)),
        };
        s.files = SystemFiles {
            networkd_dir: opt_path(&self.networkd_dir),
            resolved_dropin: opt_path(&self.resolved_dropin),
            hostname_file: under_run(&self.hostname_file, "hostname"),
            reload_request: under_run(&self.reload_request, "reload-request"),
        };
        s.window = Duration::from_secs(self.confirm_seconds.max(1));
        s.reconcile =
            (self.reconcile_seconds > 0).then(|| Duration::from_secs(self.reconcile_seconds));
        s
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let kernel = keel_netd::kernel::Kernel::connect().context("netlink")?;
    let netd = Netd::start(args.settings(), kernel).await?;
    let audit_dir = args
        .audit_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("audit"));
    keel_core::audit::init(audit_dir, "netd");
    let listener = keel_core::local_api::bind_for(&args.socket, args.socket_group.as_deref())?;
    tokio::spawn(keel_core::local_api::serve(
        listener,
        keel_netd::api::router(netd.clone()),
    ));
    tokio::spawn(netd.clone().reconcile_forever());
    keel_core::notify::ready_until_stopped().await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    keel_core::logging::init("keel-netd");
    let args = Args::parse();
    // Before the runtime starts its threads: they inherit the namespace.
    if let Some(ns) = &args.netns {
        let path = keel_netd::netns::path_of(ns);
        keel_netd::netns::enter(&path).with_context(|| format!("entering {}", path.display()))?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}
