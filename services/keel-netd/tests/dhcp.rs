//! DHCP as on the appliance: netd renders the `.network` file, the real
//! systemd-networkd (Debian's, as in the image) runs in the appliance's namespace
//! and gets a lease from a real dnsmasq in a second namespace. Then a static change
//! takes the link over and, unconfirmed, hands it back to DHCP.
//!
//! Skipped (with the reason printed) without root, dnsmasq or systemd-networkd.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Netns;
use keel_netd::kernel::Kernel;
use keel_netd::service::{Netd, Settings};

const NETWORKD: &str = "/lib/systemd/systemd-networkd";

/// Kills the process on drop (before the namespaces go).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dnsmasq(ns: &Netns, dir: &Path) -> Proc {
    dnsmasq_on(ns, dir, &[("srv0", "10.77.0")])
}

/// dnsmasq serving `NET.50`–`NET.60` (router `NET.1`) on each `(interface, NET)`.
fn dnsmasq_on(ns: &Netns, dir: &Path, nets: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.name,
        "dnsmasq",
        "--no-daemon",
        "--port=0",
    ])
    .args(["--bind-interfaces", "--conf-file=/dev/null", "-u", "root"]);
    for (iface, net) in nets {
        cmd.arg(format!("--interface={iface}"))
            .arg(format!("--dhcp-range={net}.50,{net}.60,255.255.255.0,1h"));
    }
    if let [(_, net)] = nets {
        cmd.arg(format!("--dhcp-option=option:router,{net}.1"));
    }
    let child = cmd
        .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq");
    Proc(child)
}

/// networkd in `ns`, in a mount namespace of its own where `/run/systemd/network`
/// is netd's rendered directory and the host's own files (and /run) are out of sight. /sys is
/// read-only there, so networkd does not wait for a udev that does not run. Its log
/// goes to `networkd.log` beside `rendered` (started anew each time).
fn networkd(ns: &Netns, rendered: &Path) -> Proc {
    let script = format!(
        "mount --make-rprivate / && mount -o remount,ro /sys && \
         mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/network && \
         mount --bind {} /run/systemd/network && mount -t tmpfs tmpfs /etc/systemd/network && \
         exec {NETWORKD}",
        rendered.display()
    );
    let child = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "unshare", "-m", "sh", "-c", &script,
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(networkd_log(rendered)).expect("networkd.log"))
        .spawn()
        .expect("systemd-networkd");
    Proc(child)
}

fn networkd_log(rendered: &Path) -> std::path::PathBuf {
    rendered.with_file_name("networkd.log")
}

/// Waits until the networkd just started has read its files and listed the links.
fn wait_enumerated(rendered: &Path) {
    wait_for("networkd to start", Duration::from_secs(30), || {
        std::fs::read_to_string(networkd_log(rendered))
            .is_ok_and(|l| l.contains("Enumeration completed"))
    });
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Why the DHCP tests cannot run here (no dnsmasq, unshare or networkd), if they cannot.
fn tools_missing() -> Option<String> {
    for (tool, why) in [("dnsmasq", "dnsmasq"), ("unshare", "util-linux unshare")] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("no {why}: DHCP test skipped"));
        }
    }
    if !Path::new(NETWORKD).exists() {
        return Some(format!("no {NETWORKD}: DHCP test skipped"));
    }
    None
}

#[test]
fn dhcp_lease_from_dnsmasq_static_takeover_and_revert() {
    need_netns!();
    if let Some(why) = tools_missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let app = Netns::new("dhcp-app");
    let srv = Netns::new("dhcp-srv");
    app.veth("eth0", "srv0", Some(&srv));
    srv.ip(&["addr", "add", "10.77.0.1/24", "dev", "srv0"]);
    let dir = tempfile::tempdir().unwrap();
    let _dnsmasq = dnsmasq(&srv, dir.path());

    // Factory default: netd renders DHCP + the fixed fallback for eth0.
    let rendered = dir.path().join("network");
    std::fs::create_dir_all(&rendered).unwrap();
    let mut s = Settings::new(&dir.path().join("data"), &dir.path().join("run"));
    s.files.networkd_dir = Some(rendered.clone());
    let path = app.path();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let (back, done) = std::sync::mpsc::channel::<()>();
    let netd_thread = std::thread::spawn(move || {
        keel_netd::netns::run_in(&path, move || async move {
            let netd = Netd::start(s, Kernel::connect().unwrap()).await.unwrap();
            back.send(()).unwrap();
            // Steps driven by the test thread, which restarts networkd in between
            // (on the image keel-netd-reload.service does that).
            while let Some(step) = rx.recv().await {
                match step {
                    "static" => {
                        let mut c = netd.state().await.unwrap().running;
                        c.interfaces[0].mode = keel_api::AddressMode::Static;
                        c.interfaces[0].addresses = vec!["10.77.0.200/24".parse().unwrap()];
                        c.gateway4 = Some("10.77.0.1".parse().unwrap());
                        netd.propose(keel_api::NetChangeRequest {
                            config: c,
                            owner: "test".into(),
                            confirm_seconds: Some(2),
                        })
                        .await
                        .unwrap();
                    }
                    // The gateway DHCP gave, as netd's state reports it.
                    "learned" => {
                        let s = netd.state().await.unwrap();
                        let g = &s.learned.gateways;
                        assert!(
                            g.iter().any(|g| g.gateway.to_string() == "10.77.0.1"
                                && g.interface == "eth0"
                                && g.source == "dhcp"),
                            "{g:?}"
                        );
                    }
                    "learned-static" => {
                        let s = netd.state().await.unwrap();
                        let g = &s.learned.gateways;
                        assert!(
                            g.iter()
                                .any(|g| g.gateway.to_string() == "10.77.0.1"
                                    && g.source == "config"),
                            "{g:?}"
                        );
                    }
                    "wait-revert" => {
                        while netd.pending().await.is_some() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    _ => break,
                }
                back.send(()).unwrap();
            }
        })
        .unwrap();
    });
    done.recv().unwrap();
    let f = std::fs::read_to_string(rendered.join("10-keel-netd-eth0.network")).unwrap();
    assert!(
        f.contains("DHCP=yes") && f.contains("Address=169.254.1.1/16"),
        "{f}"
    );

    let lease = |a: &Vec<String>| {
        a.iter()
            .any(|x| x.starts_with("10.77.0.5") || x.starts_with("10.77.0.60"))
    };
    let mut nd = networkd(&app, &rendered);
    // The lease, and the fixed fallback beside it.
    wait_for(
        "a DHCP lease and the fallback",
        Duration::from_secs(20),
        || {
            let a = app.addresses("eth0");
            lease(&a) && a.contains(&"169.254.1.1/16".to_string())
        },
    );
    assert!(
        app.routes(false)
            .iter()
            .any(|r| r == "default via 10.77.0.1 dev eth0 proto dhcp"),
        "{:?}",
        app.routes(false)
    );

    tx.send("learned").unwrap();
    done.recv().expect("netd reports the DHCP gateway");

    // Static: netd takes eth0 over (networkd is told Unmanaged=yes and restarted).
    tx.send("static").unwrap();
    done.recv().unwrap();
    drop(nd);
    nd = networkd(&app, &rendered);
    assert_eq!(app.addresses("eth0"), ["10.77.0.200/24"]);
    assert!(app
        .routes(false)
        .iter()
        .any(|r| r == "default via 10.77.0.1 dev eth0 proto 77"));
    tx.send("learned-static").unwrap();
    done.recv()
        .expect("netd reports its own gateway as the configuration's");

    // Not confirmed: back to DHCP.
    tx.send("wait-revert").unwrap();
    done.recv().unwrap();
    let f = std::fs::read_to_string(rendered.join("10-keel-netd-eth0.network")).unwrap();
    assert!(f.contains("DHCP=yes"), "{f}");
    assert!(!app
        .addresses("eth0")
        .contains(&"10.77.0.200/24".to_string()));
    drop(nd);
    let _nd = networkd(&app, &rendered);
    wait_for("the lease again", Duration::from_secs(20), || {
        lease(&app.addresses("eth0"))
    });
    assert!(
        !app.routes(false).iter().any(|r| r.ends_with("proto 77")),
        "{:?}",
        app.routes(false)
    );
    tx.send("stop").unwrap();
    netd_thread.join().unwrap();
}

/// VLANs beside the real networkd, with the image's catch-all (DHCP on `en* eth*`)
/// loaded: netd creates a static and a DHCP VLAN while networkd runs with its old
/// files. networkd must leave both alone (netd's `79-keel-netd-vlans.network`),
/// although dnsmasq offers leases on both; once restarted it runs DHCP on the DHCP
/// one only. Unconfirmed, both go.
#[test]
fn vlans_beside_networkd_static_left_alone_dhcp_gets_a_lease() {
    need_vlans!();
    if let Some(why) = tools_missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let app = Netns::new("vdhcp-app");
    let srv = Netns::new("vdhcp-srv");
    app.veth("eth0", "srv0", Some(&srv));
    for (id, net) in [("100", "10.78.0"), ("7", "10.79.0")] {
        let dev = format!("srv0.{id}");
        srv.ip(&[
            "link", "add", "link", "srv0", "name", &dev, "type", "vlan", "id", id,
        ]);
        srv.ip(&["addr", "add", &format!("{net}.1/24"), "dev", &dev]);
        srv.ip(&["link", "set", &dev, "up"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let _dnsmasq = dnsmasq_on(
        &srv,
        dir.path(),
        &[("srv0.100", "10.78.0"), ("srv0.7", "10.79.0")],
    );

    let rendered = dir.path().join("network");
    std::fs::create_dir_all(&rendered).unwrap();
    // The image's catch-all, beside netd's files as on the appliance (there it is in /etc).
    let wired = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../overlay/etc/systemd/network/80-keel-wired.network");
    std::fs::copy(wired, rendered.join("80-keel-wired.network")).unwrap();
    let confirmed = serde_json::json!({"interfaces": [
        {"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/24"]}]});
    std::fs::create_dir_all(dir.path().join("data/net")).unwrap();
    std::fs::write(
        dir.path().join("data/net/config.json"),
        confirmed.to_string(),
    )
    .unwrap();
    let mut s = Settings::new(&dir.path().join("data"), &dir.path().join("run"));
    s.files.networkd_dir = Some(rendered.clone());
    let path = app.path();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let (back, done) = std::sync::mpsc::channel::<()>();
    let netd_thread = std::thread::spawn(move || {
        keel_netd::netns::run_in(&path, move || async move {
            let netd = Netd::start(s, Kernel::connect().unwrap()).await.unwrap();
            back.send(()).unwrap();
            while let Some(step) = rx.recv().await {
                match step {
                    "vlans" => {
                        let c = serde_json::from_value(serde_json::json!({
                            "interfaces": [
                                {"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/24"]},
                                {"name": "eth0.100", "mode": "static",
                                 "addresses": ["10.78.0.200/24"]},
                                {"name": "eth0.7", "mode": "dhcp"}
                            ],
                            "vlans": [{"parent": "eth0", "id": 100}, {"parent": "eth0", "id": 7}]
                        }))
                        .unwrap();
                        netd.propose(keel_api::NetChangeRequest {
                            config: c,
                            owner: "test".into(),
                            confirm_seconds: Some(300),
                        })
                        .await
                        .unwrap();
                    }
                    "cancel" => netd.cancel("test").await.unwrap(),
                    _ => break,
                }
                back.send(()).unwrap();
            }
        })
        .unwrap();
    });
    done.recv().unwrap();
    assert!(rendered.join("79-keel-netd-vlans.network").exists());
    let _nd = networkd(&app, &rendered);
    wait_enumerated(&rendered);

    // Created while networkd runs with the files it started with.
    tx.send("vlans").unwrap();
    done.recv().unwrap();
    let lease = |a: &[String], net: &str| {
        a.iter()
            .any(|x| x.starts_with(&format!("{net}.5")) || x.starts_with(&format!("{net}.60")))
    };
    // Give networkd every chance to take them under the catch-all: without netd's
    // VLAN file it has a lease on both well within this (and a 169.254 address on
    // the static one). The log names the file each link got.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(12) {
        let log = || std::fs::read_to_string(networkd_log(&rendered)).unwrap_or_default();
        assert_eq!(app.addresses("eth0.100"), ["10.78.0.200/24"], "{}", log());
        assert!(
            app.addresses("eth0.7").is_empty(),
            "{:?}\n{}",
            app.addresses("eth0.7"),
            log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The restart netd asked for (keel-netd-reload on the image): DHCP on eth0.7 only.
    drop(_nd);
    let _nd = networkd(&app, &rendered);
    wait_for("a lease on the DHCP VLAN", Duration::from_secs(30), || {
        lease(&app.addresses("eth0.7"), "10.79.0")
    });
    assert_eq!(app.addresses("eth0.100"), ["10.78.0.200/24"]);

    tx.send("cancel").unwrap();
    done.recv().unwrap();
    assert!(app.vlans().is_empty(), "{:?}", app.vlans());
    tx.send("stop").unwrap();
    netd_thread.join().unwrap();
}
