//! keel-timed: the NTP check service (and `keel-timed once` for one check from a shell).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use keel_timed::service::{self, Settings, Timed};
use keel_timed::sntp::CheckOptions;
use keel_timed::system::SystemClock;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Keel NTP check: is the clock right, and the clock gate"
)]
struct Args {
    /// Data root: servers from <data>/net/ntp-servers.json (netd) or
    /// <data>/timed/config.json; a hand-set time is recorded in <data>/timed/.
    #[arg(long, default_value = keel_core::paths::DATA_DIR)]
    data_dir: PathBuf,
    /// Local API socket.
    #[arg(long, default_value = "/run/keel/timed/api.sock")]
    socket: PathBuf,
    /// Group that may use the socket too (mode 0660); without it the socket is 0600.
    #[arg(long)]
    socket_group: Option<String>,
    /// |offset| at or above this many seconds is "skewed".
    #[arg(long, default_value_t = 1.0)]
    threshold: f64,
    /// Minutes between checks while the clock is fine.
    #[arg(long, default_value_t = 10)]
    interval_minutes: u64,
    /// Seconds between checks while it is not, or nothing answered.
    #[arg(long, default_value_t = 60)]
    retry_seconds: u64,
    /// Requests per server (the lowest-delay valid reply counts).
    #[arg(long, default_value_t = 4)]
    samples: u32,
    /// Milliseconds between two requests to one server.
    #[arg(long, default_value_t = 2000)]
    sample_interval_ms: u64,
    /// Milliseconds to wait for each reply.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Stop asking a server once two consecutive offsets agree within this many
    /// milliseconds; 0 always takes all samples.
    #[arg(long, default_value_t = 1.0)]
    settle_ms: f64,
    /// The systemd-timesyncd drop-in rendered from the server list; "none" to leave
    /// timesyncd alone.
    #[arg(long, default_value = "/run/systemd/timesyncd.conf.d/keel.conf")]
    timesyncd_dropin: String,
    /// The shared audit directory: changes keelctl and the local menu ask for go to
    /// <audit-dir>/timed.log. None: not recorded (a run outside the image).
    #[arg(long)]
    audit_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one check, print the verdict as JSON and exit (0 ok, 1 skewed, 2 otherwise).
    Once {
        /// Servers to ask (default: the configured list).
        #[arg(long = "server")]
        servers: Vec<String>,
    },
}

impl Args {
    fn settings(&self) -> Settings {
        let mut s = Settings::new(&self.data_dir);
        s.threshold = self.threshold;
        s.interval = Duration::from_secs(self.interval_minutes.max(1) * 60);
        s.retry = Duration::from_secs(self.retry_seconds.max(1));
        s.options = CheckOptions {
            samples: self.samples.max(1),
            interval: Duration::from_millis(self.sample_interval_ms),
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            settle: (self.settle_ms > 0.0).then_some(self.settle_ms / 1000.0),
            ..CheckOptions::default()
        };
        s.timesyncd_dropin =
            (self.timesyncd_dropin != "none").then(|| PathBuf::from(&self.timesyncd_dropin));
        s
    }
}

async fn once(args: &Args, servers: Vec<String>) -> anyhow::Result<i32> {
    let mut settings = args.settings();
    // Only looks: the running service is the one writer of timed's files.
    settings.timesyncd_dropin = None;
    settings.forget_manual = false;
    if !servers.is_empty() {
        // A throwaway data root holding just this list.
        let dir = std::env::temp_dir().join(format!("keel-timed-once-{}", std::process::id()));
        settings.paths = keel_timed::config::Paths::under(&dir);
        keel_timed::config::save_servers(&settings.paths, &servers)?;
        let timed = Timed::new(settings, Box::new(SystemClock));
        let v = timed.check().await;
        let _ = std::fs::remove_dir_all(&dir);
        return print_verdict(&v);
    }
    let timed = Timed::new(settings, Box::new(SystemClock));
    print_verdict(&timed.check().await)
}

fn print_verdict(v: &keel_api::TimeVerdict) -> anyhow::Result<i32> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(match v.state {
        keel_api::TimeState::Ok => 0,
        keel_api::TimeState::Skewed => 1,
        _ => 2,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    keel_core::logging::init("keel-timed");
    let args = Args::parse();
    if let Some(Command::Once { servers }) = &args.command {
        let code = once(&args, servers.clone()).await?;
        std::process::exit(code);
    }
    if let Some(dir) = &args.audit_dir {
        keel_core::audit::init(dir, "timed");
    }
    let timed = Timed::new(args.settings(), Box::new(SystemClock));
    let listener = keel_core::local_api::bind_for(&args.socket, args.socket_group.as_deref())?;
    tokio::spawn(keel_core::local_api::serve(
        listener,
        service::router(timed.clone())
            .layer(axum::middleware::from_fn(keel_core::audit::local_changes)),
    ));
    tokio::spawn(timed.clone().run_periodic());
    keel_core::notify::ready_until_stopped().await?;
    Ok(())
}
