//! keelctl: the appliance from the command line, through the services' local sockets.

mod certs;
mod menu;
mod net;
mod time;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use keel_api::{Banner, Status};
use keel_core::local_api::Client;

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
    /// The local console menu on a terminal (run by keel-menu@<tty>.service): banner,
    /// addresses, admin password reset, factory reset, reboot, shut down.
    Menu {
        /// The terminal, e.g. /dev/ttyS0 or /dev/tty1.
        #[arg(long)]
        tty: PathBuf,
        /// keel-netd's local API socket (for "Set an address").
        #[arg(
            long,
            env = "KEEL_NETD_SOCKET",
            default_value = "/run/keel/netd/api.sock"
        )]
        netd_socket: PathBuf,
        /// A directory kept across restarts of the menu, where it notes that it has
        /// printed KEEL-READY this boot (systemd's RuntimeDirectory= sets it).
        #[arg(long, env = "RUNTIME_DIRECTORY")]
        state_dir: Option<PathBuf>,
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
    /// Carry out power requests dropped by the console (run as root by a path unit).
    ApplyRequests {
        #[arg(long, default_value = keel_core::paths::REQUESTS_DIR)]
        dir: PathBuf,
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
        s.certificate.subject, s.certificate.not_after, s.certificate.sha256_fingerprint
    ));
    for p in &s.processes {
        out.push_str(&format!("memory:    {} {} KiB\n", p.name, p.rss_kib));
    }
    out
}

fn render_banner(b: &Banner) -> String {
    let mut out = String::from("\r\n");
    if b.urls.is_empty() {
        out.push_str(&format!(
            "Keel {} console: no network address yet\r\n",
            b.version
        ));
    }
    for url in &b.urls {
        out.push_str(&format!("Keel {} console: {}\r\n", b.version, url));
    }
    if let Some(code) = &b.setup_code {
        out.push_str(&format!("Setup code: {code}\r\n"));
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

fn systemctl(verb: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("systemctl")
        .args([verb, "--no-block"])
        .status()
        .context("running systemctl")?;
    if !status.success() {
        bail!("systemctl {verb} failed: {status}");
    }
    Ok(())
}

/// Requests the reset (it is carried out early in the next boot) and reboots.
fn factory_reset(poweroff: bool) -> anyhow::Result<()> {
    let mut cmd = std::process::Command::new("keel-reset");
    cmd.arg("request");
    if poweroff {
        cmd.arg("--poweroff");
    }
    let status = cmd.status().context("running keel-reset")?;
    if !status.success() {
        bail!("keel-reset request failed: {status}");
    }
    systemctl("reboot")
}

fn apply_requests(dir: &PathBuf) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    // The weightiest pending request wins: reset over power-off over reboot.
    let mut action = None;
    for name in entries {
        std::fs::remove_file(dir.join(&name)).ok();
        let rank = match name.as_str() {
            "factory-reset-poweroff" => 4,
            "factory-reset" => 3,
            "poweroff" => 2,
            "reboot" => 1,
            other if other.starts_with('.') => continue,
            other => {
                eprintln!("ignoring unknown request {other:?}");
                continue;
            }
        };
        if action.as_ref().is_none_or(|(r, _)| rank > *r) {
            action = Some((rank, name));
        }
    }
    match action.map(|(_, name)| name).as_deref() {
        Some("factory-reset-poweroff") => factory_reset(true),
        Some("factory-reset") => factory_reset(false),
        Some(verb) => systemctl(verb),
        None => Ok(()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
        Command::Menu {
            tty,
            netd_socket,
            state_dir,
        } => {
            menu::run(
                console,
                Client::new(netd_socket),
                &tty,
                state_dir.as_deref(),
            )
            .await?
        }
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
        Command::Time(args) => time::run(args).await?,
        Command::Net(args) => net::run(args).await?,
        Command::ApplyRequests { dir } => apply_requests(&dir)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_shows_code_only_before_setup() {
        let mut b = Banner {
            version: "1.2.3".into(),
            urls: vec!["https://10.0.2.15/appliance".into()],
            setup_code: Some("ABCD-EFGH-JKLM".into()),
        };
        let text = render_banner(&b);
        assert!(text.contains("Keel 1.2.3 console: https://10.0.2.15/appliance"));
        assert!(text.contains("Setup code: ABCD-EFGH-JKLM"));
        b.setup_code = None;
        assert!(!render_banner(&b).contains("Setup code"));
    }

    #[test]
    fn unknown_requests_are_dropped_without_action() {
        let dir = tempfile_dir();
        std::fs::write(dir.join("format-disk"), b"").unwrap();
        apply_requests(&dir).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("keelctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
