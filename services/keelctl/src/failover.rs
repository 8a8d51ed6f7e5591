//! `keelctl failover ...`: the pair through keel-failover's local socket: show,
//! establish, sync, become-primary, break, auto-takeover, and the inter-appliance
//! key (`psk show|set|generate`; `set` reads the key from stdin or
//! `KEEL_FAILOVER_PSK`, never from the command line, where other users could see it),
//! and DNS swing (`dns`, `dns set`: only the settings given change).

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use keel_api::{
    split_list, AutoTakeoverRequest, DnsSwingServer, DnsSwingSettings, EstablishRequest,
    FailoverOverview, NetState, PskBody, SyncReport,
};
use keel_core::local_api::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where `psk set` takes the key from when standard input is not used.
pub const PSK_ENV: &str = "KEEL_FAILOVER_PSK";

#[derive(clap::Args)]
pub struct FailoverArgs {
    /// keel-failover's local API socket.
    #[arg(
        long,
        env = "KEEL_FAILOVER_SOCKET",
        default_value = "/run/keel/failover/api.sock"
    )]
    socket: PathBuf,
    /// keel-netd's local API socket (establish without --shared reads the shared
    /// addresses from netd's configuration).
    #[arg(
        long,
        env = "KEEL_NETD_SOCKET",
        default_value = "/run/keel/netd/api.sock"
    )]
    netd_socket: PathBuf,
    #[command(subcommand)]
    command: FailoverCommand,
}

#[derive(Subcommand)]
pub enum FailoverCommand {
    /// Role, term, shared addresses, the peer, heartbeat counters, the last sync.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Pair with another node, run on the one that becomes the primary. Both must
    /// hold the same inter-appliance key (`keelctl failover psk`).
    Establish {
        /// The peer's pairing endpoint as this node reaches it: IP:PORT ([v6]:PORT).
        #[arg(long)]
        peer: String,
        /// This node's pairing endpoint as the peer reaches it back: IP:PORT.
        #[arg(long)]
        reverse: String,
        /// A shared address (CIDR); repeat for more. Default: the addresses netd's
        /// configuration marks shared.
        #[arg(long = "shared", value_name = "CIDR")]
        shared: Vec<String>,
        /// The interface that carries them. Default: the one netd marks them on.
        #[arg(long)]
        interface: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Primary: send the configuration to the backup now.
    Sync {
        #[arg(long)]
        json: bool,
    },
    /// Take the shared addresses now (the peer steps down).
    BecomePrimary {
        #[arg(long)]
        json: bool,
    },
    /// End the relationship; this node keeps its configuration.
    Break {
        /// Confirms it (pairing again needs establish and the shared key).
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Switch automatic takeover on or off.
    AutoTakeover {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[arg(long)]
        json: bool,
    },
    /// The inter-appliance key: both nodes must hold the same one.
    Psk {
        #[command(subcommand)]
        command: PskCommand,
    },
    /// DNS swing: this node's settings (node-local, not synced) and whether its
    /// server answers; `dns set` changes them.
    Dns {
        #[command(subcommand)]
        command: Option<DnsCommand>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum DnsCommand {
    /// Change the settings given; the others stay as they are. Lists are comma
    /// separated; an empty value clears (`--name ''`, `--listen ''` = port 53 on
    /// every address).
    Set(DnsSetArgs),
}

#[derive(clap::Args)]
pub struct DnsSetArgs {
    /// Turn DNS swing on (needs name, both nodes' addresses and nameservers).
    #[arg(long, conflicts_with = "disable")]
    enable: bool,
    /// Turn it off: nothing answers DNS on this node.
    #[arg(long)]
    disable: bool,
    /// The site hostname, e.g. portal.example.com.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// TTL of the answers, 1-300 s.
    #[arg(long, value_name = "SECONDS")]
    ttl: Option<u32>,
    /// This node's addresses, published while it is primary.
    #[arg(long, value_name = "ADDR,...")]
    this_node: Option<String>,
    /// The peer's addresses, published while it is primary.
    #[arg(long, value_name = "ADDR,...")]
    peer_node: Option<String>,
    /// The names the parent zone's NS records give the two appliances.
    #[arg(long, value_name = "NAME,...")]
    nameservers: Option<String>,
    /// Where the server answers (UDP and TCP).
    #[arg(long, value_name = "ADDR:PORT,...")]
    listen: Option<String>,
    #[arg(long)]
    json: bool,
}

impl DnsSetArgs {
    /// `current` (the settings as keel-failover gave them) with what was given
    /// changed. Values stay text: keel-failover parses and checks them, and its
    /// refusal names the field.
    fn apply(&self, mut current: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let Some(obj) = current.as_object_mut() else {
            bail!("unexpected DNS swing settings: {current}");
        };
        if self.enable || self.disable {
            obj.insert("enabled".into(), self.enable.into());
        }
        if let Some(n) = &self.name {
            let n = n.trim();
            obj.insert(
                "name".into(),
                if n.is_empty() {
                    serde_json::Value::Null
                } else {
                    n.into()
                },
            );
        }
        if let Some(t) = self.ttl {
            obj.insert("ttl".into(), t.into());
        }
        let lists = [
            ("this_node", &self.this_node),
            ("peer_node", &self.peer_node),
            ("nameservers", &self.nameservers),
        ];
        for (field, value) in lists {
            if let Some(v) = value {
                obj.insert(field.into(), split_list(v).into());
            }
        }
        match self.listen.as_deref().map(split_list) {
            // Empty: keel-failover's default (port 53 on every address).
            Some(l) if l.is_empty() => {
                obj.remove("listen");
            }
            Some(l) => {
                obj.insert("listen".into(), l.into());
            }
            None => {}
        }
        Ok(current)
    }
}

pub fn render_dns(s: &DnsSwingSettings, server: DnsSwingServer) -> String {
    let answering = match (server, server.silent_because()) {
        (DnsSwingServer::Answering(on), _) => {
            format!("answering on {} (UDP and TCP)", on.join(", "))
        }
        (_, Some(why)) => format!("not answering: {why}"),
        _ => "not answering (off)".into(),
    };
    let join = |v: Vec<String>| {
        if v.is_empty() {
            "-".into()
        } else {
            v.join(", ")
        }
    };
    format!(
        "dns swing:   {}\nname:        {}\nttl:         {} s\nthis node:   {}\npeer node:   {}\n\
         nameservers: {}\nlisten:      {}\nserver:      {answering}\n",
        if s.enabled { "on" } else { "off" },
        s.name.as_deref().unwrap_or("-"),
        s.ttl,
        join(s.this_node.iter().map(ToString::to_string).collect()),
        join(s.peer_node.iter().map(ToString::to_string).collect()),
        join(s.nameservers.clone()),
        join(s.listen.iter().map(ToString::to_string).collect()),
    )
}

/// keel-failover's socket on the box, or with `--url` the console's API (which
/// forwards to it: the same answers and refusals).
enum Api<'a> {
    Local(Client),
    Remote(&'a crate::remote::Remote),
}

impl Api<'_> {
    /// `path` as keel-failover names it (`/status`, `/dns`).
    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<R> {
        match self {
            Api::Local(c) => Ok(c.call(method, path, body).await?),
            Api::Remote(r) => {
                let path = match path {
                    "/status" => "/failover".to_owned(),
                    p => format!("/failover{p}"),
                };
                r.call(method, &path, body).await
            }
        }
    }
}

async fn dns(api: Api<'_>, set: Option<DnsSetArgs>, json: bool) -> anyhow::Result<()> {
    let (settings, json) = match set {
        None => (
            api.call::<(), DnsSwingSettings>("GET", "/dns", None)
                .await?,
            json,
        ),
        Some(args) => {
            let current: serde_json::Value = api.call::<(), _>("GET", "/dns", None).await?;
            let wanted = args.apply(current)?;
            let s: DnsSwingSettings = api
                .call("PUT", "/dns", Some(&wanted))
                .await
                .context("DNS swing not changed")?;
            (s, json || args.json)
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&settings)?);
        return Ok(());
    }
    let o: FailoverOverview = api.call::<(), _>("GET", "/status", None).await?;
    print!("{}", render_dns(&settings, o.dns_server(&settings)));
    Ok(())
}

#[derive(Subcommand)]
pub enum PskCommand {
    /// Print this node's key (base64).
    Show,
    /// Replace the key: read from KEEL_FAILOVER_PSK if set, else from standard input.
    Set,
    /// Make a new random key and print it (copy it to the other node).
    Generate,
}

pub fn render_overview(o: &FailoverOverview) -> String {
    let mut out = String::new();
    match &o.engine {
        Some(e) => {
            out.push_str(&format!(
                "node:      {} ({}, term {})\nshared:    {} on {} ({})\nauto:      takeover {}\n",
                e.node_id,
                e.role,
                e.term,
                e.shared_addresses.join(" "),
                e.interface,
                if e.holding {
                    "held here"
                } else {
                    "not held here"
                },
                if e.auto_takeover { "on" } else { "off" },
            ));
        }
        None if o.peer.is_some() => {
            out.push_str("pair:      established, takeover engine not running\n")
        }
        None => out.push_str("pair:      none (this appliance stands alone)\n"),
    }
    out.push_str(&format!(
        "pairing:   port {} (TLS), fingerprint {}\n",
        o.pair_port, o.fingerprint
    ));
    if let Some(p) = &o.peer {
        out.push_str(&format!(
            "peer:      {} at {}, Keel {}\npinned:    {}\n",
            p.node_id, p.address, p.version, p.fingerprint
        ));
    }
    if let Some(e) = &o.engine {
        let seen = e
            .peer_last_seen_ms
            .map(|ms| format!("{ms} ms ago"))
            .unwrap_or_else(|| "no heartbeat yet".into());
        out.push_str(&format!("heard:     {seen}\n"));
        let c = &e.counters;
        out.push_str(&format!(
            "heartbeats: sent {} (errors {}), received {}; dropped: truncated {}, wrong \
             version {}, bad MAC {}, replayed {}\ntakeovers: {}, step-downs {}, held off {}, \
             isolated {}\n",
            c.sent,
            c.send_errors,
            c.received,
            c.truncated,
            c.wrong_version,
            c.bad_mac,
            c.replayed,
            c.takeovers,
            c.step_downs,
            c.held_off_address_answered,
            c.isolated
        ));
    }
    if let Some(s) = &o.last_sync {
        out.push_str(&render_sync(s));
    }
    out
}

pub fn render_sync(s: &SyncReport) -> String {
    let mut out = format!(
        "sync:      {} {} {}\n",
        s.direction,
        s.at,
        if s.ok { "ok" } else { "FAILED" }
    );
    if let Some(e) = &s.error {
        out.push_str(&format!("           {e}\n"));
    }
    for i in &s.items {
        out.push_str(&format!("           {i}\n"));
    }
    out
}

/// The key `psk set` sends: the variable when set, else standard input; surrounding
/// whitespace (the newline of `echo` or a paste) is not part of it.
fn read_psk(env: Option<String>, stdin: &mut dyn Read) -> anyhow::Result<String> {
    let raw = match env {
        Some(v) => v,
        None => {
            let mut s = String::new();
            stdin
                .read_to_string(&mut s)
                .context("reading the key from standard input")?;
            s
        }
    };
    let key = raw.trim().to_owned();
    if key.is_empty() {
        bail!("no key given: pipe it to standard input or set {PSK_ENV}");
    }
    Ok(key)
}

/// The shared addresses and their interface from netd's configuration.
async fn netd_shared(netd: &Client) -> anyhow::Result<(Vec<String>, Option<String>)> {
    let s: NetState = netd
        .call::<(), _>("GET", "/state", None)
        .await
        .context("reading the shared addresses from keel-netd (or give --shared)")?;
    let marked: Vec<_> = s
        .running
        .interfaces
        .iter()
        .filter_map(|i| i.shared_address.map(|a| (i.name.clone(), a.to_string())))
        .collect();
    if marked.is_empty() {
        bail!(
            "no address is marked shared in the network configuration: give --shared CIDR \
             (and --interface), or mark one (keelctl net)"
        );
    }
    let interface = marked.first().map(|(i, _)| i.clone());
    Ok((marked.into_iter().map(|(_, a)| a).collect(), interface))
}

fn print<T: serde::Serialize>(
    json: bool,
    v: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        print!("{}", text(v));
    }
    Ok(())
}

pub async fn run(args: FailoverArgs, remote: Option<&crate::remote::Remote>) -> anyhow::Result<()> {
    if let Some(r) = remote {
        return match args.command {
            FailoverCommand::Show { json } => {
                let o: FailoverOverview = r.get("/failover").await?;
                print(json, &o, render_overview)
            }
            FailoverCommand::Dns { command, json } => {
                let set = command.map(|DnsCommand::Set(a)| a);
                dns(Api::Remote(r), set, json).await
            }
            _ => Err(crate::remote::local_only(
                "failover (other than show and dns)",
            )),
        };
    }
    let failover = Client::new(&args.socket);
    match args.command {
        FailoverCommand::Show { json } => {
            let o: FailoverOverview = failover.call::<(), _>("GET", "/status", None).await?;
            print(json, &o, render_overview)?;
        }
        FailoverCommand::Establish {
            peer,
            reverse,
            shared,
            interface,
            json,
        } => {
            let (shared_addresses, interface) = if shared.is_empty() {
                let (s, i) = netd_shared(&Client::new(&args.netd_socket)).await?;
                (s, interface.or(i))
            } else {
                (shared, interface)
            };
            let Some(interface) = interface else {
                bail!("--interface is needed with --shared");
            };
            let req = EstablishRequest {
                peer,
                reverse,
                shared_addresses,
                interface,
            };
            let o: FailoverOverview = failover.call("POST", "/establish", Some(&req)).await?;
            print(json, &o, render_overview)?;
        }
        FailoverCommand::Sync { json } => {
            let r: SyncReport = failover.call::<(), _>("POST", "/sync", None).await?;
            print(json, &r, render_sync)?;
            if !r.ok {
                bail!("sync failed");
            }
        }
        FailoverCommand::BecomePrimary { json } => {
            let o: FailoverOverview = failover
                .call::<(), _>("POST", "/become-primary", None)
                .await?;
            print(json, &o, render_overview)?;
        }
        FailoverCommand::Break { yes, json } => {
            if !yes {
                bail!(
                    "breaking ends the pair: both nodes stop watching each other and pairing \
                     again needs establish; run again with --yes to confirm"
                );
            }
            let o: FailoverOverview = failover.call::<(), _>("POST", "/break", None).await?;
            print(json, &o, render_overview)?;
        }
        FailoverCommand::AutoTakeover { state, json } => {
            let req = AutoTakeoverRequest {
                enabled: state == "on",
            };
            let o: FailoverOverview = failover.call("POST", "/auto-takeover", Some(&req)).await?;
            print(json, &o, render_overview)?;
        }
        FailoverCommand::Psk { command } => {
            let b: PskBody = match command {
                PskCommand::Show => failover.call::<(), _>("GET", "/psk", None).await?,
                PskCommand::Set => {
                    let psk = read_psk(std::env::var(PSK_ENV).ok(), &mut std::io::stdin())?;
                    failover.call("PUT", "/psk", Some(&PskBody { psk })).await?
                }
                PskCommand::Generate => {
                    let b = failover
                        .call::<(), _>("POST", "/psk/generate", None)
                        .await?;
                    eprintln!("new key made: set the same key on the other node");
                    b
                }
            };
            println!("{}", b.psk);
        }
        FailoverCommand::Dns { command, json } => {
            let set = command.map(|DnsCommand::Set(a)| a);
            dns(Api::Local(failover), set, json).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::{FailoverCounters, FailoverPeer, FailoverRole, FailoverStatus};

    fn unpaired() -> FailoverOverview {
        FailoverOverview {
            pair_port: 7947,
            fingerprint: "ab".repeat(32),
            peer: None,
            engine: None,
            last_sync: None,
            dns_listening: vec![],
        }
    }

    #[test]
    fn shows_an_unpaired_node() {
        let text = render_overview(&unpaired());
        assert!(text.contains("pair:      none"), "{text}");
        assert!(text.contains("port 7947"), "{text}");
        assert!(!text.contains("peer:"), "{text}");
    }

    #[test]
    fn shows_a_backup_with_its_peer_counters_and_failed_sync() {
        let mut o = unpaired();
        o.peer = Some(FailoverPeer {
            node_id: "a".into(),
            address: "192.0.2.10:7947".into(),
            version: "0.3.0".into(),
            fingerprint: "cd".repeat(32),
        });
        o.engine = Some(FailoverStatus {
            node_id: "b".into(),
            role: FailoverRole::Backup,
            term: 4,
            holding: false,
            auto_takeover: true,
            interface: "eth0".into(),
            shared_addresses: vec!["192.0.2.100/24".into()],
            peer_last_seen_ms: Some(12),
            peer_term: Some(4),
            peer_holding: Some(true),
            counters: FailoverCounters {
                received: 90,
                bad_mac: 3,
                ..FailoverCounters::default()
            },
        });
        o.last_sync = Some(SyncReport {
            at: "2026-12-01T10:00:00Z".into(),
            direction: "received".into(),
            ok: false,
            items: vec![],
            error: Some("signature did not verify".into()),
        });
        let text = render_overview(&o);
        for want in [
            "node:      b (backup, term 4)",
            "192.0.2.100/24 on eth0 (not held here)",
            "peer:      a at 192.0.2.10:7947, Keel 0.3.0",
            "heard:     12 ms ago",
            "received 90",
            "bad MAC 3",
            "sync:      received 2026-12-01T10:00:00Z FAILED",
            "signature did not verify",
        ] {
            assert!(text.contains(want), "{want:?} missing in:\n{text}");
        }
    }

    #[test]
    fn dns_set_changes_only_what_is_given() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            set: DnsSetArgs,
        }
        let current = serde_json::json!({"enabled": true, "name": "a.example.com",
            "listen": ["192.0.2.1:53"], "ttl": 5, "this_node": ["192.0.2.1"],
            "peer_node": ["192.0.2.2"], "nameservers": ["ns.example.net"]});
        let args = |a: &[&str]| Cli::parse_from([&["x"][..], a].concat()).set;
        let v = args(&["--ttl", "9", "--peer-node", "192.0.2.3, 2001:db8::3"])
            .apply(current.clone())
            .unwrap();
        let mut want = current.clone();
        want["ttl"] = 9.into();
        want["peer_node"] = serde_json::json!(["192.0.2.3", "2001:db8::3"]);
        assert_eq!(v, want);
        // Empty clears: no name, the default listen addresses; --disable turns off.
        let v = args(&["--disable", "--name", "", "--listen", ""])
            .apply(current.clone())
            .unwrap();
        assert_eq!(v["enabled"], false);
        assert!(v["name"].is_null() && v.get("listen").is_none(), "{v}");
        assert_eq!(v["nameservers"], current["nameservers"]);
        assert!(Cli::try_parse_from(["x", "--enable", "--disable"]).is_err());
    }

    #[test]
    fn the_key_comes_from_the_variable_before_stdin_and_is_trimmed() {
        let mut stdin: &[u8] = b"from-stdin\n";
        assert_eq!(
            read_psk(Some(" from-env\n".into()), &mut stdin).unwrap(),
            "from-env"
        );
        assert_eq!(read_psk(None, &mut stdin).unwrap(), "from-stdin");
        let mut empty: &[u8] = b"\n";
        let err = read_psk(None, &mut empty).unwrap_err().to_string();
        assert!(err.contains(PSK_ENV), "{err}");
    }
}
