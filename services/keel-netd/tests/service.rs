//! The keel-netd binary in a network namespace, driven over its local socket the
//! way the console and keelctl drive it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Netns;
use keel_core::local_api::{Client, LocalApiError};
use serde_json::{json, Value};

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(ns: &Netns, dir: &Path, confirm_seconds: u64) -> Daemon {
    let socket = dir.join("run/api.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_keel-netd"))
        .arg("--netns")
        .arg(&ns.name)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--socket")
        .arg(&socket)
        .args(["--networkd-dir", "none", "--resolved-dropin", "none"])
        .args(["--confirm-seconds", &confirm_seconds.to_string()])
        .args(["--reconcile-seconds", "0"])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting keel-netd");
    let t0 = Instant::now();
    while !socket.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "keel-netd did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon { child, socket }
}

fn seed(dir: &Path, c: &Value) {
    let p = dir.join("data/net/config.json");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, serde_json::to_vec(c).unwrap()).unwrap();
}

fn base() -> Value {
    json!({"interfaces": [{"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/24"]}]})
}

async fn put(c: &Client, config: Value) -> Result<Value, LocalApiError> {
    c.call(
        "PUT",
        "/config",
        Some(&json!({"config": config, "owner": "keelctl"})),
    )
    .await
}

#[tokio::test]
async fn bad_input_gets_4xx_and_leaves_the_running_config() {
    need_netns!();
    let ns = Netns::new("svc-bad");
    ns.veth("eth0", "peer0", None);
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), &base());
    let d = start(&ns, dir.path(), 120);
    let c = Client::new(&d.socket);
    let before: Value = c.call::<(), _>("GET", "/state", None).await.unwrap();

    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"interfaces": [{"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/33"]}]}),
            400,
            "eth0: 10.0.0.2/33 is not a valid address",
        ),
        (
            json!({"interfaces": [{"name": "eth0", "mode": "static", "addresses": ["banana"]}]}),
            400,
            "eth0: banana is not a valid address",
        ),
        (
            json!({"interfaces": [{"name": "eth5", "mode": "static", "addresses": ["10.0.0.2/24"]}]}),
            422,
            "eth5: unknown interface \"eth5\"",
        ),
        (
            json!({"interfaces": [{"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/24"]}],
                "hostname": "$(reboot)"}),
            422,
            "hostname:",
        ),
        (
            json!({"interfaces": [{"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/24"]}],
                "hostname": "x".repeat(100_000)}),
            413,
            "",
        ),
    ];
    for (config, status, text) in cases {
        match put(&c, config).await {
            Err(LocalApiError::Status { status: s, message }) => {
                assert_eq!(s, status, "{message}");
                assert!(message.contains(text), "{text:?} in {message:?}");
            }
            other => panic!("expected {status}, got {other:?}"),
        }
    }
    let after: Value = c.call::<(), _>("GET", "/state", None).await.unwrap();
    assert_eq!(after["running"], before["running"]);
    assert!(after["pending"].is_null());
    assert_eq!(ns.addresses("eth0"), ["10.0.0.2/24"]);
}

#[tokio::test]
async fn change_confirm_and_revert_through_the_socket() {
    need_netns!();
    let ns = Netns::new("svc-cc");
    ns.veth("eth0", "peer0", None);
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), &base());
    let d = start(&ns, dir.path(), 2);
    let c = Client::new(&d.socket);

    // Confirmed: stays.
    let p = put(
        &c,
        json!({"interfaces": [{"name": "eth0", "mode": "static", "addresses": ["10.0.0.5/24"]}]}),
    )
    .await
    .unwrap();
    assert_eq!(p["window_seconds"], 2);
    assert_eq!(p["owner"], "keelctl");
    let pending: Value = c.call::<(), _>("GET", "/pending", None).await.unwrap();
    assert!(pending["seconds_left"].as_u64().unwrap() <= 2);
    // Another front end cannot confirm it.
    let err = c
        .call::<_, Value>("POST", "/confirm", Some(&json!({"owner": "console"})))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LocalApiError::Status { status: 403, .. }),
        "{err}"
    );
    let st: Value = c
        .call("POST", "/confirm", Some(&json!({"owner": "keelctl"})))
        .await
        .unwrap();
    assert!(st["pending"].is_null());
    assert_eq!(st["source"], "file");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(ns.addresses("eth0"), ["10.0.0.5/24"]);

    // Not confirmed: back by itself.
    put(
        &c,
        json!({"interfaces": [{"name": "eth0", "mode": "static", "addresses": ["10.0.0.6/24"]}]}),
    )
    .await
    .unwrap();
    assert_eq!(ns.addresses("eth0"), ["10.0.0.6/24"]);
    let t0 = Instant::now();
    while ns.addresses("eth0") != ["10.0.0.5/24"] {
        assert!(t0.elapsed() < Duration::from_secs(5), "not reverted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st: Value = c.call::<(), _>("GET", "/state", None).await.unwrap();
    assert!(st["pending"].is_null());
    assert_eq!(
        st["running"]["interfaces"][0]["addresses"][0],
        "10.0.0.5/24"
    );
    // The links listing is the kernel's.
    let links: Value = c.call::<(), _>("GET", "/links", None).await.unwrap();
    assert!(links
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["name"] == "eth0" && l["wired"] == true));
}
