//! keelctl: the appliance from the command line, through the services' local sockets,
//! or with `--url` a remote appliance through its console's JSON API (`remote`). The
//! local console menu is keel-menu (src/bin/keel-menu.rs); `keelctl menu` runs it.

mod certs;
mod failover;
mod net;
mod netd_reload;
mod remote;
mod time;
mod update;

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use keel_api::{Banner, Status};
use keel_core::local_api::Client;
use keelctl::local::{factory_reset, render_banner, Executor, System};

#[derive(Parser)]
#[command(version, about = "Keel appliance command line")]
struct Cli {
    /// The console's local API socket.
    #[arg(
        long,
        env = "KEEL_CONSOLE_SOCKET",
        default_value = "/run/keel/console/api.sock"
    )]
    console_socket: PathBuf,
    #[command(flatten)]
    remote: remote::RemoteArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show version, slot, addresses, certificate, memory.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Power the appliance off.
    Shutdown,
    /// Restart the appliance.
    Reboot,
    /// Print the console URL(s) and, before setup, the setup code to local terminals.
    Banner {
        /// Terminal devices to write to (default: standard output).
        #[arg(long = "tty")]
        ttys: Vec<PathBuf>,
        /// Keep running and print again whenever the addresses or the setup state change.
        #[arg(long)]
        follow: bool,
    },
    /// The local console menu on a terminal: runs keel-menu (`keelctl menu --help`
    /// shows its options).
    #[command(disable_help_flag = true)]
    Menu {
        /// keel-menu's arguments, e.g. --tty /dev/ttyS0.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Erase all configuration and secrets and start over as a new appliance.
    Reset {
        /// Confirms the erase (required: there is no undo).
        #[arg(long)]
        yes: bool,
        /// Power off afterwards instead of starting again (ready to ship).
        #[arg(long)]
        poweroff: bool,
    },
    /// Certificates: list, import, export, create, request, assign, delete.
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// NTP check: verdict, check now, clock gate, servers, set the time by hand.
    Time(time::TimeArgs),
    /// Network: addresses, gateways, routes, DNS, hostname, NTP list (commit-confirm).
    Net(net::NetArgs),
    /// Updates: status, install a bundle file, roll back; online settings, check,
    /// install from the feed, install all in order, the download key.
    Update(update::UpdateArgs),
    /// Failover pair: show, establish, sync, become-primary, break, auto-takeover,
    /// the inter-appliance key.
    Failover(failover::FailoverArgs),
    /// Carry out power requests dropped by the console (run as root by a path unit).
    ApplyRequests {
        #[arg(long, default_value = keel_core::paths::REQUESTS_DIR)]
        dir: PathBuf,
    },
    /// Carry out keel-netd's reload request (run as root by a path unit): restart
    /// networkd or resolved, set the kernel hostname.
    NetdReload {
        #[arg(long, default_value = "/run/keel/netd")]
        dir: PathBuf,
        /// The service user whose files are read there (besides root's).
        #[arg(long, default_value = "keel-netd")]
        user: String,
    },
}

fn render_status(s: &Status) -> String {
    let mut out = format!(
        "Keel {} (slot {})\nhostname:  {}\nkernel:    {}\ntime:      {}\nuptime:    {} s\nroot fs:   {}\n",
        s.version,
        s.slot,
        s.hostname,
        s.kernel,
        s.time,
        s.uptime_seconds,
        if s.root_readonly { "read-only" } else { "writable" }
    );
    for a in &s.addresses {
        out.push_str(&format!("address:   {} on {}\n", a.address, a.interface));
    }
    out.push_str(&format!(
        "cert:      {} (until {})\nsha256:    {}\n",
        s.certificate.subject,
        s.certificate.not_after,
        keel_certs::fingerprint_display(&s.certificate.sha256_fingerprint)
    ));
    for p in &s.processes {
        out.push_str(&format!("memory:    {} {} KiB\n", p.name, p.rss_kib));
    }
    if let Some(b) = &s.boot {
        let trial = b
            .trial
            .as_ref()
            .map(|t| format!(", trial {} ({} left)", t.slot, t.tries_left));
        out.push_str(&format!(
            "boot:      good slot {}{}\n",
            b.good_slot,
            trial.unwrap_or_default()
        ));
        if let Some(p) = &b.problem {
            let fixed = if b.repaired { " (repaired)" } else { "" };
            out.push_str(&format!("WARNING:   {p}{fixed}\n"));
        }
    }
    out
}

fn write_ttys(ttys: &[PathBuf], text: &str) {
    if ttys.is_empty() {
        print!("{text}");
        let _ = std::io::stdout().flush();
        return;
    }
    for tty in ttys {
        // A missing tty (no screen, no serial port) is normal on some hardware.
        if let Ok(mut f) = keel_core::tty::open(tty) {
            let _ = f.write_all(text.as_bytes());
        }
    }
}

async fn banner(client: &Client, ttys: &[PathBuf], follow: bool) -> anyhow::Result<()> {
    let mut last: Option<Banner> = None;
    let mut announced = false;
    loop {
        match client.call::<(), Banner>("GET", "/banner", None).await {
            Ok(b) => {
                if last.as_ref() != Some(&b) {
                    write_ttys(ttys, &render_banner(&b));
                    last = Some(b);
                }
                if !announced {
                    // Machine-readable marker for test harnesses on the serial line.
                    write_ttys(
                        &ttys
                            .iter()
                            .filter(|t| t.to_string_lossy().contains("ttyS"))
                            .cloned()
                            .collect::<Vec<_>>(),
                        "KEEL-READY\r\n",
                    );
                    announced = true;
                }
            }
            Err(e) if !follow => return Err(e.into()),
            Err(_) => {}
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `keelctl menu ARGS`: keel-menu in this process's place, with the console socket
/// given here.
fn exec_menu(console_socket: &Path, args: Vec<OsString>) -> anyhow::Error {
    let program = keelctl::local::sibling_program("keel-menu");
    let err = std::process::Command::new(&program)
        .env("KEEL_CONSOLE_SOCKET", console_socket)
        .args(args)
        .exec();
    anyhow::Error::new(err).context(format!("running {}", program.display()))
}

/// Removes a request that was carried out (or superseded, or unknown). unlink acts
/// on the entry itself, never on what a link names.
fn remove_request(dir: &Path, name: impl AsRef<OsStr>) -> anyhow::Result<()> {
    let name = name.as_ref();
    match std::fs::remove_file(dir.join(name)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing request {name:?}")),
    }
}

/// A known request and its weight: reset over power-off over reboot.
fn known_request(name: &OsStr) -> Option<(u8, &'static str)> {
    Some(match name.to_str()? {
        "factory-reset-poweroff" => (4, "factory-reset-poweroff"),
        "factory-reset" => (3, "factory-reset"),
        "poweroff" => (2, "poweroff"),
        "reboot" => (1, "reboot"),
        _ => return None,
    })
}

/// Carries out the weightiest pending request. The directory is the console's
/// (it writes there with write_atomic: `.name.tmp.*`, then a rename), so:
/// dot-files are writes in progress and never touched; entries are looked at with
/// lstat, never opened, and only regular files count. A request is removed once it
/// was carried out; when that fails it stays (the path unit starts this again, up
/// to its start limit) and the run fails.
fn apply_requests(dir: &Path, exec: &mut dyn Executor) -> anyhow::Result<()> {
    let mut requests = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let kind = match std::fs::symlink_metadata(dir.join(&name)) {
            Ok(m) => m.file_type(),
            // Gone meanwhile: nothing to do for it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("lstat {name:?}")),
        };
        if !kind.is_file() {
            eprintln!("ignoring {name:?} in {}: not a regular file", dir.display());
            continue;
        }
        match known_request(&name) {
            Some(known) => requests.push(known),
            None => {
                eprintln!("ignoring unknown request {name:?}");
                remove_request(dir, &name)?;
            }
        }
    }
    // Weightiest first; the rest are superseded by it.
    requests.sort_by(|a, b| b.cmp(a));
    let Some(&(_, winner)) = requests.first() else {
        return Ok(());
    };
    let keep = || format!("request {winner:?} kept in {}", dir.display());
    match winner {
        "factory-reset" | "factory-reset-poweroff" => {
            exec.request_reset(winner == "factory-reset-poweroff")
                .with_context(keep)?;
            // Requested: the reset happens at the next boot whatever follows, so
            // the reboot is asked for even if the request file cannot be removed.
            let removed = remove_request(dir, winner);
            eprintln!("factory reset requested; rebooting to carry it out");
            exec.systemctl("reboot")?;
            removed?;
        }
        verb => {
            exec.systemctl(verb).with_context(keep)?;
            remove_request(dir, winner)?;
        }
    }
    for (_, superseded) in &requests[1..] {
        remove_request(dir, superseded)?;
    }
    Ok(())
}

/// The commands a remote console's API carries out (`--url`).
async fn run_remote(r: &remote::Remote, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Status { json } => {
            let s: Status = r.get("/status").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", render_status(&s));
            }
        }
        Command::Shutdown => {
            r.call::<(), serde_json::Value>("POST", "/system/shutdown", None)
                .await?;
            println!("shutting down");
        }
        Command::Reboot => {
            r.call::<(), serde_json::Value>("POST", "/system/reboot", None)
                .await?;
            println!("restarting");
        }
        Command::Reset { yes, poweroff } => {
            if !yes {
                bail!(
                    "a factory reset erases all configuration, passwords, certificates and \
                     keys; run again with --yes to confirm"
                );
            }
            let body = serde_json::json!({"confirm": "RESET", "power_off": poweroff});
            r.call::<_, serde_json::Value>("POST", "/system/factory-reset", Some(&body))
                .await?;
            println!("factory reset requested; the appliance restarts to carry it out");
        }
        Command::Time(args) => time::run(args, Some(r)).await?,
        Command::Net(args) => net::run(args, Some(r)).await?,
        Command::Update(args) => update::run(args, Some(r)).await?,
        Command::Failover(args) => failover::run(args, Some(r)).await?,
        Command::Banner { .. } => return Err(remote::local_only("banner")),
        Command::Menu { .. } => return Err(remote::local_only("menu")),
        Command::Certs { .. } => return Err(remote::local_only("certs")),
        Command::ApplyRequests { .. } => return Err(remote::local_only("apply-requests")),
        Command::NetdReload { .. } => return Err(remote::local_only("netd-reload")),
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(r) = remote::Remote::from_args(&cli.remote).await? {
        return run_remote(&r, cli.command).await;
    }
    let console = Client::new(&cli.console_socket);
    match cli.command {
        Command::Status { json } => {
            let s: Status = console.call::<(), _>("GET", "/status", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", render_status(&s));
            }
        }
        Command::Shutdown => {
            console
                .call::<(), serde_json::Value>("POST", "/system/shutdown", None)
                .await?;
            println!("shutting down");
        }
        Command::Reboot => {
            console
                .call::<(), serde_json::Value>("POST", "/system/reboot", None)
                .await?;
            println!("restarting");
        }
        Command::Banner { ttys, follow } => banner(&console, &ttys, follow).await?,
        Command::Menu { args } => return Err(exec_menu(&cli.console_socket, args)),
        Command::Reset { yes, poweroff } => {
            if !yes {
                bail!(
                    "a factory reset erases all configuration, passwords, certificates and \
                     keys; run again with --yes to confirm"
                );
            }
            factory_reset(poweroff)?;
            println!("factory reset requested; restarting to carry it out");
        }
        Command::Certs { command } => certs::run(&console, command).await?,
        Command::Time(args) => time::run(args, None).await?,
        Command::Net(args) => net::run(args, None).await?,
        Command::Update(args) => update::run(args, None).await?,
        Command::Failover(args) => failover::run(args, None).await?,
        Command::ApplyRequests { dir } => apply_requests(&dir, &mut System)?,
        Command::NetdReload { dir, user } => netd_reload::run(netd_reload::Reload {
            dir,
            owner_uid: netd_reload::uid_of(&user)?,
            kernel_hostname: PathBuf::from("/proc/sys/kernel/hostname"),
            systemctl: &mut netd_reload::systemctl,
        })?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what would run; fails what it is told to.
    #[derive(Default)]
    struct Fake {
        calls: Vec<String>,
        fail_reset: bool,
        fail_systemctl: bool,
    }

    impl Executor for Fake {
        fn request_reset(&mut self, poweroff: bool) -> anyhow::Result<()> {
            self.calls
                .push(format!("keel-reset request poweroff={poweroff}"));
            if self.fail_reset {
                bail!("keel-reset request failed: exit status: 1");
            }
            Ok(())
        }

        fn systemctl(&mut self, verb: &str) -> anyhow::Result<()> {
            self.calls.push(format!("systemctl {verb}"));
            if self.fail_systemctl {
                bail!("systemctl {verb} failed: exit status: 1");
            }
            Ok(())
        }
    }

    fn requests(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        dir
    }

    fn left(dir: &tempfile::TempDir) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn unknown_requests_are_dropped_without_action() {
        let dir = requests(&["format-disk"]);
        let mut fake = Fake::default();
        apply_requests(dir.path(), &mut fake).unwrap();
        assert!(left(&dir).is_empty());
        assert!(fake.calls.is_empty());
    }

    #[test]
    fn writes_in_progress_are_left_alone() {
        // The console's write_atomic: a temp file, then a rename to the request.
        let dir = requests(&[".reboot.tmp.812.0.1a2b3c4d"]);
        let mut fake = Fake::default();
        apply_requests(dir.path(), &mut fake).unwrap();
        assert_eq!(left(&dir), [".reboot.tmp.812.0.1a2b3c4d"]);
        assert!(fake.calls.is_empty());

        std::fs::write(dir.path().join("poweroff"), b"").unwrap();
        apply_requests(dir.path(), &mut fake).unwrap();
        assert_eq!(fake.calls, ["systemctl poweroff"]);
        assert_eq!(left(&dir), [".reboot.tmp.812.0.1a2b3c4d"]);
    }

    #[test]
    fn a_failed_reset_request_is_kept_and_fails_the_run() {
        let dir = requests(&["factory-reset", "reboot"]);
        let mut fake = Fake {
            fail_reset: true,
            ..Fake::default()
        };
        let err = apply_requests(dir.path(), &mut fake).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("\"factory-reset\" kept") && msg.contains("keel-reset request failed"),
            "{msg}"
        );
        // Nothing rebooted, nothing lost: the next run tries again.
        assert_eq!(fake.calls, ["keel-reset request poweroff=false"]);
        assert_eq!(left(&dir), ["factory-reset", "reboot"]);
    }

    #[test]
    fn a_reset_is_requested_then_rebooted_and_supersedes_the_rest() {
        let dir = requests(&[
            "reboot",
            "factory-reset-poweroff",
            "poweroff",
            "factory-reset",
        ]);
        let mut fake = Fake::default();
        apply_requests(dir.path(), &mut fake).unwrap();
        assert_eq!(
            fake.calls,
            ["keel-reset request poweroff=true", "systemctl reboot"]
        );
        assert!(left(&dir).is_empty());
    }

    #[test]
    fn a_refused_reboot_after_the_reset_keeps_the_lesser_requests() {
        // The reset is requested (the next boot carries it out); a reboot request
        // still waiting gets the box there on the next run.
        let dir = requests(&["factory-reset", "reboot"]);
        let mut fake = Fake {
            fail_systemctl: true,
            ..Fake::default()
        };
        assert!(apply_requests(dir.path(), &mut fake).is_err());
        assert_eq!(left(&dir), ["reboot"]);
    }

    #[test]
    fn a_refused_power_request_is_kept() {
        let dir = requests(&["reboot", "poweroff"]);
        let mut fake = Fake {
            fail_systemctl: true,
            ..Fake::default()
        };
        let err = apply_requests(dir.path(), &mut fake).unwrap_err();
        assert!(format!("{err:#}").contains("\"poweroff\" kept"), "{err:#}");
        assert_eq!(left(&dir), ["poweroff", "reboot"]);
        fake.fail_systemctl = false;
        apply_requests(dir.path(), &mut fake).unwrap();
        assert_eq!(fake.calls, ["systemctl poweroff", "systemctl poweroff"]);
        assert!(left(&dir).is_empty());
    }

    #[test]
    fn links_and_other_non_files_are_not_requests() {
        let dir = requests(&[]);
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("precious");
        std::fs::write(&target, b"keep me").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("factory-reset")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("junk")).unwrap();
        std::fs::create_dir(dir.path().join("reboot")).unwrap();
        let mut fake = Fake::default();
        apply_requests(dir.path(), &mut fake).unwrap();
        assert!(fake.calls.is_empty());
        assert_eq!(left(&dir), ["factory-reset", "junk", "reboot"]);
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    }
}
