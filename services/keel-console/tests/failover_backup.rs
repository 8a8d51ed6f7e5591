//! The console of a backup: two real keel-failover daemons in network namespaces
//! (a bridge with a gateway, as in keel-failover's README) pair through their
//! local APIs; the console on the host talks to B's socket and must say "Backup
//! of <peer>", hide the update forms and refuse a certificate for the shared
//! address. Needs root and `ip netns`; skipped with the reason otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_api::{FailoverOverview, FailoverRole};
use keel_core::local_api::Client;
use reqwest::StatusCode;
use serde_json::json;

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const SHARED: &str = "10.78.0.100";

fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: no network namespaces".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`ip netns` unavailable (iproute2)".into()),
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("running a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(ns: &str, args: &[&str]) {
    run(Command::new("ip").arg("-n").arg(ns).args(args));
}

/// kc-<pid>-{a,b,c}: A 10.78.0.2 and B 10.78.0.3 on c's bridge, c the gateway
/// 10.78.0.1 (the address a node checks before it takes over). Removed on drop.
struct Segment {
    names: Vec<String>,
}

impl Segment {
    fn new() -> Self {
        let pid = std::process::id();
        let names: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|n| format!("kc-{pid}-{n}"))
            .collect();
        let seg = Segment { names };
        for n in &seg.names {
            run(Command::new("ip").args(["netns", "add", n]));
            ip(n, &["link", "set", "lo", "up"]);
        }
        let c = seg.ns(2);
        ip(
            c,
            &[
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        );
        ip(c, &["link", "set", "br0", "up"]);
        ip(c, &["addr", "add", "10.78.0.1/24", "dev", "br0"]);
        for (i, host) in [(0, "10.78.0.2/24"), (1, "10.78.0.3/24")] {
            let port = format!("p{i}");
            ip(
                c,
                &[
                    "link",
                    "add",
                    &port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    seg.ns(i),
                ],
            );
            ip(c, &["link", "set", &port, "master", "br0", "up"]);
            ip(seg.ns(i), &["link", "set", "eth0", "up"]);
            ip(seg.ns(i), &["addr", "add", host, "dev", "eth0"]);
            ip(seg.ns(i), &["route", "add", "default", "via", "10.78.0.1"]);
        }
        seg
    }

    fn ns(&self, i: usize) -> &str {
        &self.names[i]
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn keel_failover_bin() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "keel-failover",
            "--bin",
            "keel-failover",
        ])
        .status()
        .expect("cargo build keel-failover");
    assert!(st.success(), "building keel-failover failed");
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("keel-failover")
}

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// keel-failover unpaired inside `ns`, its files under `dir`.
fn start(bin: &Path, ns: &str, dir: PathBuf) -> Daemon {
    let root = dir.join("root");
    for d in ["shared", "console", "update"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin)
        .arg("--config")
        .arg(dir.join("config.json"))
        .arg("--data-dir")
        .arg(&dir)
        .arg("--socket")
        .arg(dir.join("api.sock"))
        .arg("--pair-listen")
        .arg("0.0.0.0:7947")
        .arg("--sync-root")
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Daemon { child, dir }
}

/// Polls `f` until it gives a value; the ceiling is generous for a loaded machine.
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    d: &[&Daemon],
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 90 s; logs:\n{}",
            d.iter()
                .map(|d| d.log())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn overview(c: &Client) -> Option<FailoverOverview> {
    c.call::<(), FailoverOverview>("GET", "/status", None)
        .await
        .ok()
}

/// The console as main.rs builds it (with its certificate store) on 127.0.0.1.
async fn serve_with_certs(data: &Path) -> String {
    use keel_console::{app, certs, tls};
    let (identity, _) = common::identity(data);
    let state = common::app_state(data, &identity);
    let dir = data.join("console");
    let store = std::sync::Arc::new(
        keel_certs::CertStore::open(dir.join("certs"), dir.join("tls")).unwrap(),
    );
    let resolver = std::sync::Arc::new(tls::CertResolver::from_serving(store.serving().unwrap()));
    let router = app::router_with(
        state.clone(),
        certs::routes(certs::CertsState::new(state, store, resolver.clone())),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(tls::serve_https(listener, resolver, router));
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_console_says_so_and_leaves_the_primary_s_settings_alone() {
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let bin = keel_failover_bin();
    let seg = Segment::new();
    let tmp = tempfile::tempdir().unwrap();
    let a = start(&bin, seg.ns(0), tmp.path().join("a"));
    let b = start(&bin, seg.ns(1), tmp.path().join("b"));
    let (ca, cb) = (Client::new(a.socket()), Client::new(b.socket()));
    for c in [&ca, &cb] {
        wait_for("keel-failover answering", &[&a, &b], || overview(c)).await;
        let r: serde_json::Value = c
            .call("PUT", "/psk", Some(&json!({ "psk": KEY })))
            .await
            .unwrap();
        assert_eq!(r["psk"], KEY);
    }
    let a_overview: FailoverOverview = ca
        .call(
            "POST",
            "/establish",
            Some(&json!({
                "peer": "10.78.0.3:7947",
                "reverse": "10.78.0.2:7947",
                "shared_addresses": [format!("{SHARED}/24")],
                "interface": "eth0",
            })),
        )
        .await
        .unwrap_or_else(|e| panic!("establish: {e}\nA: {}\nB: {}", a.log(), b.log()));
    let b_view = wait_for("B running as the backup", &[&a, &b], || async {
        overview(&cb).await.filter(|o| {
            o.engine
                .as_ref()
                .is_some_and(|e| e.role == FailoverRole::Backup)
        })
    })
    .await;
    let peer = b_view.peer.clone().expect("B knows its peer");
    assert_eq!(peer.address, "10.78.0.2:7947");

    let data = tempfile::tempdir().unwrap();
    let base = serve_with_certs(data.path()).await;
    let url = |p: &str| format!("{base}{p}");
    let (http, _) = common::client();
    keel_console::failover::set_socket(b.socket());
    keel_console::net::set_socket(data.path().join("no-netd.sock"));
    let csrf = common::set_up(&http, &base, data.path()).await;
    let backup_of = format!("Backup of {} ({})", peer.node_id, peer.address);

    let basics = common::page(&http, &url("/appliance/")).await;
    assert!(basics.contains(&backup_of), "{basics}");

    let page = common::page(&http, &url("/appliance/failover")).await;
    assert!(page.contains(&backup_of), "{page}");
    assert!(page.contains("<strong>backup</strong>"), "{page}");
    assert!(
        page.contains(&keel_certs::fingerprint_display(&peer.fingerprint)),
        "{page}"
    );
    assert!(page.contains("action=\"/appliance/failover/become-primary\""));
    assert!(!page.contains("action=\"/appliance/failover/establish\""));
    assert!(!page.contains("action=\"/appliance/failover/sync\""));

    let updates = common::page(&http, &url("/appliance/support/updates")).await;
    assert!(
        updates.contains(&format!(
            "Managed by the primary {} ({})",
            peer.node_id, peer.address
        )),
        "{updates}"
    );
    assert!(!updates.contains("action=\"/appliance/support/updates/settings\""));
    assert!(!updates.contains("action=\"/appliance/support/updates/install\""));

    // The shared address's certificate is the primary's; another address is ours.
    let assign = |ip: &str| {
        http.post(url("/appliance/api/v1/certs/builtin/assign"))
            .header("x-csrf-token", &csrf)
            .json(&json!({"ips": [ip]}))
            .send()
    };
    let r = assign(SHARED).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("managed by the primary"),
        "{body}"
    );
    let r = assign("10.78.0.3").await.unwrap();
    assert_ne!(
        r.status(),
        StatusCode::CONFLICT,
        "{}",
        r.text().await.unwrap()
    );

    // The primary's own console would show no such note.
    assert!(keel_console::failover::backup_of(&a_overview).is_none());
    drop((a, b, seg));
}
