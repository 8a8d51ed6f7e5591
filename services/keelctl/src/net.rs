//! `keelctl net ...`: the network configuration through keel-netd's local socket.
//! Changes are commit-confirm: `set` applies at once and netd reverts it unless
//! `keelctl net confirm` follows within the window.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use keel_api::{NetChangeRequest, NetConfig, NetConfirmRequest, NetPending, NetState};
use keel_core::local_api::Client;

use crate::remote::Remote;

/// Changes made here are confirmed (or cancelled) here: netd checks the owner.
const OWNER: &str = "keelctl";

#[derive(clap::Args)]
pub struct NetArgs {
    /// keel-netd's local API socket.
    #[arg(
        long,
        env = "KEEL_NETD_SOCKET",
        default_value = "/run/keel/netd/api.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: NetCommand,
}

#[derive(Subcommand)]
pub enum NetCommand {
    /// Show the running configuration, a pending change and the kernel's addresses.
    Show {
        /// Print the raw JSON (`NetState`).
        #[arg(long)]
        json: bool,
    },
    /// Apply a configuration (JSON, as `show --json` prints under "running"; `-` reads
    /// standard input). Reverted unless confirmed within the window. A VLAN is an entry
    /// of "vlans" plus its interface: {"interfaces": [..., {"name": "eth0.100", "mode":
    /// "static", "addresses": ["192.0.2.10/24"]}], "vlans": [{"parent": "eth0", "id": 100}]}
    Set {
        file: PathBuf,
        /// Confirmation window in seconds (default: netd's, 120).
        #[arg(long)]
        confirm_seconds: Option<u64>,
    },
    /// Set the NTP servers (the rest of the running configuration is kept);
    /// reverted unless confirmed within the window, like `set`.
    Ntp {
        /// Host names or addresses, optionally with :port.
        servers: Vec<String>,
        /// Set an empty list.
        #[arg(long, conflicts_with = "servers")]
        clear: bool,
        /// Confirmation window in seconds (default: netd's, 120).
        #[arg(long)]
        confirm_seconds: Option<u64>,
    },
    /// Keep the pending change (and save it).
    Confirm,
    /// Put the previous configuration back now.
    Cancel,
}

pub fn render_state(s: &NetState) -> String {
    let c = &s.running;
    let mut out = format!("hostname:  {}\nsource:    {}\n", c.hostname, s.source);
    for i in &c.interfaces {
        let addrs: Vec<String> = i.addresses.iter().map(|a| a.to_string()).collect();
        let vlan = c
            .vlans
            .iter()
            .find(|v| v.link_name() == i.name)
            .map(|v| format!(" (VLAN {} on {})", v.id, v.parent))
            .unwrap_or_default();
        out.push_str(&format!(
            "interface: {}{vlan} {}{}{}{}{}\n",
            i.name,
            i.mode.as_str(),
            if i.enabled { "" } else { " (disabled)" },
            if addrs.is_empty() {
                String::new()
            } else {
                format!(" {}", addrs.join(" "))
            },
            i.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default(),
            i.shared_address
                .map(|a| format!(" shared {a}"))
                .unwrap_or_default(),
        ));
    }
    if let Some(g) = c.gateway4 {
        out.push_str(&format!("gateway4:  {g}\n"));
    }
    if let Some(g) = c.gateway6 {
        out.push_str(&format!("gateway6:  {g}\n"));
    }
    for r in &c.routes {
        out.push_str(&format!("route:     {} via {}\n", r.destination, r.gateway));
    }
    if !c.dns.servers.is_empty() || !c.dns.search.is_empty() {
        let servers: Vec<String> = c.dns.servers.iter().map(|s| s.to_string()).collect();
        out.push_str(&format!(
            "dns:       {} (search {})\n",
            servers.join(" "),
            c.dns.search.join(" ")
        ));
    }
    if !c.ntp_servers.is_empty() {
        out.push_str(&format!("ntp:       {}\n", c.ntp_servers.join(" ")));
    }
    if let Some(p) = &s.pending {
        out.push_str(&render_pending(p));
    }
    for l in &s.links {
        out.push_str(&format!(
            "kernel:    {} {} {} mtu {} {}\n",
            l.name,
            if l.mac.is_empty() { "-" } else { &l.mac },
            if l.up { "up" } else { "down" },
            l.mtu,
            l.addresses.join(" ")
        ));
    }
    out
}

fn render_pending(p: &NetPending) -> String {
    format!(
        "PENDING:   change by {} is reverted in {} s (at {}) unless confirmed: keelctl net confirm\n",
        p.owner, p.seconds_left, p.deadline
    )
}

/// keel-netd on this box, or a remote appliance's console (which forwards to its
/// netd; changes made there are the console's, confirmed by any of its sessions).
enum Netd<'a> {
    Local(Client),
    Remote(&'a Remote),
}

impl Netd<'_> {
    async fn state(&self) -> anyhow::Result<NetState> {
        Ok(match self {
            Netd::Local(c) => c.call::<(), _>("GET", "/state", None).await?,
            Netd::Remote(r) => r.get("/net/config").await?,
        })
    }

    async fn propose(
        &self,
        config: NetConfig,
        confirm_seconds: Option<u64>,
    ) -> anyhow::Result<NetPending> {
        Ok(match self {
            Netd::Local(c) => {
                let req = NetChangeRequest {
                    config,
                    owner: OWNER.into(),
                    confirm_seconds,
                };
                c.call("PUT", "/config", Some(&req)).await?
            }
            Netd::Remote(r) => {
                let query = confirm_seconds
                    .map(|s| format!("?confirm_seconds={s}"))
                    .unwrap_or_default();
                r.call("PUT", &format!("/net/config{query}"), Some(&config))
                    .await?
            }
        })
    }

    /// `confirm` or `cancel` the pending change.
    async fn settle(&self, verb: &str) -> anyhow::Result<NetState> {
        Ok(match self {
            Netd::Local(c) => {
                let owner = NetConfirmRequest {
                    owner: OWNER.into(),
                };
                c.call("POST", &format!("/{verb}"), Some(&owner)).await?
            }
            Netd::Remote(r) => {
                r.call::<(), _>("POST", &format!("/net/{verb}"), None)
                    .await?
            }
        })
    }
}

pub async fn run(args: NetArgs, remote: Option<&Remote>) -> anyhow::Result<()> {
    let netd = match remote {
        Some(r) => Netd::Remote(r),
        None => Netd::Local(Client::new(&args.socket)),
    };
    match args.command {
        NetCommand::Show { json } => {
            let s = netd.state().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", render_state(&s));
            }
        }
        NetCommand::Set {
            file,
            confirm_seconds,
        } => {
            let mut text = String::new();
            if file.as_os_str() == "-" {
                std::io::stdin().read_to_string(&mut text)?;
            } else {
                text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
            }
            // Whole `show --json` output or just the configuration.
            let value: serde_json::Value = serde_json::from_str(&text).context("not JSON")?;
            let config = value.get("running").cloned().unwrap_or(value);
            let config: NetConfig =
                serde_json::from_value(config).context("not a network configuration")?;
            let p = netd.propose(config, confirm_seconds).await?;
            print!("applied; {}", render_pending(&p));
        }
        NetCommand::Ntp {
            servers,
            clear,
            confirm_seconds,
        } => {
            if servers.is_empty() && !clear {
                bail!("name the NTP servers, or --clear for none");
            }
            let mut config = netd.state().await?.running;
            config.ntp_servers = servers;
            let p = netd.propose(config, confirm_seconds).await?;
            print!("applied; {}", render_pending(&p));
        }
        NetCommand::Confirm => {
            netd.settle("confirm").await?;
            println!("confirmed and saved");
        }
        NetCommand::Cancel => {
            netd.settle("cancel").await?;
            println!("previous configuration restored");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlans_are_shown_with_parent_and_id() {
        let running: NetConfig = serde_json::from_value(serde_json::json!({
            "interfaces": [
                {"name": "eth0", "mode": "dhcp"},
                {"name": "eth0.100", "mode": "static", "addresses": ["192.0.2.10/24"]}
            ],
            "vlans": [{"parent": "eth0", "id": 100}]
        }))
        .unwrap();
        let s = NetState {
            running: running.clone(),
            confirmed: running,
            source: "file".into(),
            pending: None,
            links: Vec::new(),
            learned: Default::default(),
        };
        let out = render_state(&s);
        assert!(out.contains("interface: eth0 dhcp\n"), "{out}");
        assert!(
            out.contains("interface: eth0.100 (VLAN 100 on eth0) static 192.0.2.10/24\n"),
            "{out}"
        );
    }
}
