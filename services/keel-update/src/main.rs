//! keel-update: the update service (root: block devices, the ESP).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use keel_update::{idle, Config, Updater};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Keel update install: verified streaming into the inactive slot, trial boot, rollback"
)]
struct Args {
    /// Where state.json lives.
    #[arg(long, default_value = "/data/update")]
    state_dir: PathBuf,
    /// Local API socket, bound when systemd passed none (socket activation:
    /// keel-update.socket binds /run/keel/update.sock and passes it as fd 3).
    #[arg(long, default_value = "/run/keel/update.sock")]
    socket: PathBuf,
    /// Group that may use the socket too (mode 0660); without it the socket is 0600.
    /// Only for a socket bound here: systemd's has the unit's SocketGroup=.
    #[arg(long)]
    socket_group: Option<String>,
    /// Exit (status 0) once idle this many seconds: no request in flight, no
    /// install or rollback running, none arrived for that long. For socket
    /// activation, which starts it again at the next connection. 0: never.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    idle_exit: u64,
    /// The shared audit directory: changes keelctl and the local menu ask for go to
    /// <audit-dir>/update.log. None: not recorded (a run outside the image).
    #[arg(long)]
    audit_dir: Option<PathBuf>,
    /// Trusted update keys (*.pub). None there: every bundle is refused.
    #[arg(long, default_value = "/usr/share/keel/update-keys")]
    keys_dir: PathBuf,
    /// The running version is its VERSION_ID=.
    #[arg(long, default_value = "/etc/os-release")]
    os_release: PathBuf,
    /// The running slot is its keel.slot=.
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    /// Slot devices; {slot} becomes a or b.
    #[arg(long, default_value = "/dev/disk/by-partlabel/root-{slot}")]
    slot_device: String,
    /// A directory laid out like the ESP (grub/grubenv, grub/grubenv.bak) instead of
    /// mounting the ESP (tests).
    #[arg(long)]
    esp_dir: Option<PathBuf>,
    /// keel-boot's state file for the console, rewritten after a transition; "none".
    #[arg(long, default_value = keel_boot::STATE_FILE)]
    boot_state_file: PathBuf,
    /// keel-timed's socket: its clock gate must allow an install.
    #[arg(long, default_value = "/run/keel/timed/api.sock")]
    timed_socket: PathBuf,
    /// Skip the clock gate. For tests only: the appliance never does.
    #[arg(long)]
    no_clock_gate: bool,
    /// The kernel's boot id (a trial's outcome is decided in a later boot).
    #[arg(long, default_value = "/proc/sys/kernel/random/boot_id")]
    boot_id_file: PathBuf,
    /// Boots the new slot gets to become healthy (1-9).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=9))]
    tries: u8,
    /// What reboots the box after an install with ?reboot=true or a rollback; "none"
    /// only logs.
    #[arg(long, default_value = "systemctl reboot --no-block")]
    reboot_command: String,
    /// The image's CA roots for the feed server (PEM bundle); the settings may add one CA.
    #[arg(long, default_value = "/etc/ssl/certs/ca-certificates.crt")]
    ca_bundle: PathBuf,
    /// App bundles: images in <dir>/<name>/, extension links in <dir>/extensions
    /// (the image's /etc/extensions points there).
    #[arg(long, default_value = "/data/apps")]
    apps_dir: PathBuf,
    /// Where merged extensions show.
    #[arg(long, default_value = "/usr")]
    usr_dir: PathBuf,
    /// Reads an app image's extension-release before activation.
    #[arg(long, default_value = "unsquashfs")]
    unsquashfs: String,
    /// Merges the extension links again after an app install.
    #[arg(long, default_value = keel_update::service::SYSEXT_REFRESH)]
    sysext_refresh_command: String,
}

impl Args {
    fn config(&self) -> Config {
        let mut c = Config::new(&self.state_dir);
        c.keys_dir = self.keys_dir.clone();
        c.os_release = self.os_release.clone();
        c.cmdline = self.cmdline.clone();
        c.slot_device = self.slot_device.clone();
        c.esp_dir = self.esp_dir.clone();
        c.boot_state_file =
            (self.boot_state_file.as_os_str() != "none").then(|| self.boot_state_file.clone());
        c.timed_socket = (!self.no_clock_gate).then(|| self.timed_socket.clone());
        c.boot_id_file = self.boot_id_file.clone();
        c.tries = self.tries;
        c.ca_bundle = self.ca_bundle.clone();
        c.apps_dir = self.apps_dir.clone();
        c.usr_dir = self.usr_dir.clone();
        c.unsquashfs = self.unsquashfs.clone();
        let refresh = self.sysext_refresh_command.clone();
        c.sysext_refresh = Arc::new(move || keel_update::service::run_command(&refresh));
        let cmd = self.reboot_command.clone();
        c.reboot = Arc::new(move || {
            if cmd == "none" {
                tracing::warn!("reboot requested; --reboot-command none: not rebooting");
                Ok(())
            } else {
                keel_update::service::run_command(&cmd)
            }
        });
        c
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.no_clock_gate {
        tracing::warn!("--no-clock-gate: installs do not consult keel-timed (tests only)");
    }
    // First: it takes LISTEN_FDS/LISTEN_PID out of the environment (one thread yet).
    let listener = match keel_core::local_api::inherited_listener()? {
        Some(l) => {
            tracing::info!("serving the socket systemd passed (socket activation)");
            if args.socket_group.is_some() {
                tracing::info!("--socket-group ignored: the socket unit sets the group");
            }
            l
        }
        None => {
            if args.idle_exit > 0 {
                tracing::warn!(
                    "--idle-exit without socket activation: nothing starts keel-update again"
                );
            }
            keel_core::local_api::bind_for(&args.socket, args.socket_group.as_deref())?
        }
    };
    let idle_exit = (args.idle_exit > 0).then(|| Duration::from_secs(args.idle_exit));
    if let Some(dir) = &args.audit_dir {
        keel_core::audit::init(dir, "update");
    }
    let updater = Updater::start(args.config());
    // Install all in order goes on after a healthy boot (the outcome is settled).
    let resume = updater.clone();
    tokio::spawn(async move { resume.resume_chain().await });
    tokio::select! {
        served = idle::serve(listener, updater, idle_exit) => served?,
        stopped = keel_core::notify::ready_until_stopped() => stopped?,
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    keel_core::logging::init("keel-update");
    let args = Args::parse();
    // The install's 4 MiB buffers come straight from mmap and go back at free:
    // glibc's dynamic threshold would otherwise move them into the blocking
    // thread's arena, whose top malloc_trim does not release (the idle service
    // would stay 4 MiB larger after every install).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: before any thread starts; only tunes the allocator.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 1 << 20);
        // Setting one threshold fixes the trim threshold at 128 KiB, below hyper's
        // read buffers: every upload chunk freed at the heap's top gave memory back
        // and faulted it in again (~4000 page faults per install). The install ends
        // with malloc_trim, which gives it back whatever this says.
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 8 << 20);
    }
    // One thread while idle; an install's blocking work (verify, write, read back)
    // gets one pool thread for its duration.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .thread_keep_alive(Duration::from_secs(2))
        .build()?
        .block_on(run(args))
}
