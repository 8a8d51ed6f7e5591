//! `keelctl time ...`: the NTP check, the clock gate, the server list and the
//! hand-set time, through keel-timed's local socket.

use std::path::PathBuf;

use clap::Subcommand;
use keel_api::{ClockGate, ManualTimeRequest, NtpServerList, NtpServers, TimeState, TimeVerdict};
use keel_core::local_api::Client;

#[derive(clap::Args)]
pub struct TimeArgs {
    /// keel-timed's local API socket.
    #[arg(
        long,
        env = "KEEL_TIMED_SOCKET",
        default_value = "/run/keel/timed/api.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: TimeCommand,
}

#[derive(Subcommand)]
pub enum TimeCommand {
    /// Show the last verdict.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check now. Exit status: 0 ok, 1 skewed, 2 anything else.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// May clock-sensitive work (update install, download key) go on? Exit 1 if not.
    Gate {
        #[arg(long)]
        json: bool,
    },
    /// Show the NTP servers, or set timed's list (refused while netd manages it).
    Servers {
        /// New list: host names or addresses, optionally with :port.
        servers: Vec<String>,
        /// Set an empty list.
        #[arg(long, conflicts_with = "servers")]
        clear: bool,
    },
    /// Set the clock by hand, for networks without a reachable NTP server.
    Set {
        /// RFC 3339 (2026-11-25T05:00:00Z) or "YYYY-MM-DD HH:MM[:SS]" in UTC.
        time: String,
    },
}

pub fn render_verdict(v: &TimeVerdict) -> String {
    let mut out = format!("verdict:   {}", v.state);
    if let Some(off) = v.offset_seconds {
        out.push_str(&format!(
            " (offset {off:+.6} s, threshold {} s)",
            v.threshold_seconds
        ));
    }
    out.push_str(&format!(
        "\n           {}\nchecked:   {} in {} ms (servers from {})\n",
        v.message, v.checked_at, v.duration_ms, v.servers_source
    ));
    let d = &v.daemon;
    out.push_str(&format!(
        "daemon:    {} {}, {}; kernel clock {}\n",
        d.name,
        if d.running { "running" } else { "not running" },
        match &d.last_sync {
            Some(at) if d.synchronized => format!("synchronized (last {at})"),
            _ if d.synchronized => "synchronized".into(),
            _ => "not synchronized".into(),
        },
        if d.kernel_synchronized {
            "synchronized"
        } else {
            "unsynchronized"
        }
    ));
    for s in &v.servers {
        let name = match &s.address {
            Some(a) if *a != s.server => format!("{} ({a})", s.server),
            _ => s.server.clone(),
        };
        out.push_str(&format!("server:    {name} {}", s.state.as_str()));
        if let (Some(o), Some(d)) = (s.offset_seconds, s.delay_seconds) {
            out.push_str(&format!(
                " offset {o:+.6} s delay {:.3} ms stratum {} ref {}",
                d * 1000.0,
                s.stratum.unwrap_or_default(),
                s.reference_id.as_deref().unwrap_or("")
            ));
        }
        if let Some(e) = &s.error {
            out.push_str(&format!(" [{e}]"));
        }
        out.push('\n');
    }
    for w in &v.warnings {
        out.push_str(&format!("warning:   {w}\n"));
    }
    out
}

/// JSON for scripts, or the text for people.
fn show(json: bool, value: serde_json::Result<String>, text: impl FnOnce() -> String) {
    match value {
        Ok(j) if json => println!("{j}"),
        _ => print!("{}", text()),
    }
}

pub async fn run(args: TimeArgs, remote: Option<&crate::remote::Remote>) -> anyhow::Result<()> {
    if let Some(r) = remote {
        let TimeCommand::Status { json } = args.command else {
            return Err(crate::remote::local_only("time (other than status)"));
        };
        let v: TimeVerdict = r.get("/time").await?;
        show(json, serde_json::to_string_pretty(&v), || {
            render_verdict(&v)
        });
        return Ok(());
    }
    let timed = Client::new(&args.socket);
    match args.command {
        TimeCommand::Status { json } => {
            let v: TimeVerdict = timed.call::<(), _>("GET", "/verdict", None).await?;
            show(json, serde_json::to_string_pretty(&v), || {
                render_verdict(&v)
            });
        }
        TimeCommand::Check { json } => {
            let v: TimeVerdict = timed.call::<(), _>("POST", "/check", None).await?;
            show(json, serde_json::to_string_pretty(&v), || {
                render_verdict(&v)
            });
            match v.state {
                TimeState::Ok => {}
                TimeState::Skewed => std::process::exit(1),
                _ => std::process::exit(2),
            }
        }
        TimeCommand::Gate { json } => {
            let g: ClockGate = timed.call::<(), _>("GET", "/gate", None).await?;
            show(json, serde_json::to_string_pretty(&g), || {
                let mut t = format!("allowed:   {}\n", if g.allowed { "yes" } else { "no" });
                if let Some(r) = &g.reason {
                    t.push_str(&format!("reason:    {r}\n"));
                }
                if let Some(w) = &g.warning {
                    t.push_str(&format!("warning:   {w}\n"));
                }
                t
            });
            if !g.allowed {
                std::process::exit(1);
            }
        }
        TimeCommand::Servers { servers, clear } => {
            let list: NtpServerList = if servers.is_empty() && !clear {
                timed.call::<(), _>("GET", "/servers", None).await?
            } else {
                timed
                    .call("POST", "/servers", Some(&NtpServers { servers }))
                    .await?
            };
            println!("source: {} ({})", list.source, list.path);
            for s in &list.servers {
                println!("{s}");
            }
        }
        TimeCommand::Set { time } => {
            let v: TimeVerdict = timed
                .call("POST", "/manual", Some(&ManualTimeRequest { time }))
                .await?;
            print!("{}", render_verdict(&v));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::{DaemonSync, ServerReport, ServerState};

    #[test]
    fn verdict_text() {
        let v = TimeVerdict {
            state: TimeState::Skewed,
            offset_seconds: Some(300.0),
            threshold_seconds: 1.0,
            message: "The clock is 5 min 0 s behind the NTP servers.".into(),
            checked_at: "2026-11-25T05:00:00Z".into(),
            duration_ms: 7,
            servers: vec![ServerReport {
                server: "127.0.0.1:1123".into(),
                address: Some("127.0.0.1:1123".into()),
                state: ServerState::Ok,
                offset_seconds: Some(300.0),
                delay_seconds: Some(0.0004),
                stratum: Some(8),
                leap: Some("none".into()),
                reference_id: Some("127.127.1.1".into()),
                requests_sent: 4,
                valid_replies: 4,
                error: None,
            }],
            servers_source: "timed".into(),
            manual: None,
            daemon: DaemonSync {
                name: "systemd-timesyncd".into(),
                running: true,
                synchronized: true,
                last_sync: Some("2026-11-25T04:59:00Z".into()),
                kernel_synchronized: true,
            },
            warnings: vec!["1 of the answering NTP servers disagree".into()],
        };
        let t = render_verdict(&v);
        assert!(
            t.starts_with("verdict:   skewed (offset +300.000000 s, threshold 1 s)\n"),
            "{t}"
        );
        assert!(t.contains("server:    127.0.0.1:1123 ok offset +300.000000 s delay 0.400 ms stratum 8 ref 127.127.1.1\n"), "{t}");
        assert!(
            t.contains("synchronized (last 2026-11-25T04:59:00Z)"),
            "{t}"
        );
        assert!(t.contains("warning:   1 of the answering"), "{t}");
    }
}
