//! What the update tests share: test bundles made from the built root slot, the
//! console's update API, and logging in again after each reboot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{json_get, log_in, workspace_root, Vm, BOOT_CEILING, READY_MARKER};

pub fn api(path: &str) -> String {
    format!("/appliance/api/v1{path}")
}

/// The version `make image` built (`VERSION`).
pub fn base_version() -> String {
    std::fs::read_to_string(workspace_root().join("VERSION"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A bundle of `version` made from the built root slot with
/// image/make-test-bundle.sh and its `options` (`--unhealthy`, `--binary FILE`).
pub fn make_bundle(dir: &Path, version: &str, options: &[&str]) -> PathBuf {
    let out = dir.join(format!("keel-{version}.bundle"));
    let status = Command::new(workspace_root().join("image/make-test-bundle.sh"))
        .arg(version)
        .arg(&out)
        .args(options)
        .status()
        .expect("image/make-test-bundle.sh runs");
    assert!(status.success(), "make-test-bundle.sh {version}: {status}");
    out
}

/// keel-update starts after the boot's health gate, a little after the console:
/// waits until the console reaches it.
pub async fn wait_update_service(http: &reqwest::Client, vm: &Vm) -> Value {
    let start = Instant::now();
    loop {
        let (st, body) = json_get(http, &vm.url(&api("/update"))).await.unwrap();
        if st == 200 {
            return body;
        }
        assert!(
            st == 503 && start.elapsed() < Duration::from_secs(180),
            "keel-update not reachable through the console: {st} {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn update_status(http: &reqwest::Client, vm: &Vm) -> Value {
    let (st, body) = json_get(http, &vm.url(&api("/update"))).await.unwrap();
    assert_eq!(st, 200, "GET /update: {body}");
    body
}

pub async fn status(http: &reqwest::Client, vm: &Vm) -> Value {
    let (st, body) = json_get(http, &vm.url(&api("/status"))).await.unwrap();
    assert_eq!(st, 200, "GET /status: {body}");
    body
}

/// After the `n`-th boot of this QEMU run: logged in again with `password` (the
/// reboot ended the session), keel-update reachable, and the box running `slot`
/// with `version`.
pub async fn booted_into(
    vm: &mut Vm,
    password: &str,
    n: usize,
    ceiling: Duration,
    slot: &str,
    version: &str,
) -> (reqwest::Client, String) {
    vm.wait_serial_count(READY_MARKER, n, ceiling)
        .await
        .unwrap();
    vm.wait_https(BOOT_CEILING).await.unwrap();
    let (http, csrf) = log_in(vm, password).await.unwrap();
    wait_update_service(&http, vm).await;
    let s = status(&http, vm).await;
    assert_eq!(
        (s["slot"].as_str(), s["version"].as_str()),
        (Some(slot), Some(version)),
        "{s}"
    );
    eprintln!("keel processes in slot {slot}: {}", s["processes"]);
    (http, csrf)
}

/// Waits (up to 3 minutes) until keel-update has recorded an outcome of `kind`
/// (`installed` once the health gate marked the new slot good, `rolled-back`,
/// `rolled-back-by-admin`); returns the update status then or at the ceiling.
pub async fn outcome(http: &reqwest::Client, vm: &Vm, kind: &str) -> Value {
    let start = Instant::now();
    loop {
        let u = update_status(http, vm).await;
        if u["last_outcome"]["kind"] == kind || start.elapsed() > Duration::from_secs(180) {
            return u;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Uploads `bytes` as a bundle through the console's API; returns the status and
/// JSON answer (status 0: the transport failed).
pub async fn upload(
    http: &reqwest::Client,
    vm: &Vm,
    csrf: &str,
    bytes: Vec<u8>,
    reboot: bool,
) -> (u16, Value) {
    let url = vm.url(&api(&format!("/update/install?reboot={reboot}")));
    let resp = http
        .post(url)
        .header("x-csrf-token", csrf)
        .header("content-type", "application/octet-stream")
        .timeout(Duration::from_secs(600))
        .body(bytes)
        .send()
        .await;
    match resp {
        Ok(r) => crate::answer(r).await,
        Err(e) => (0, json!({"transport error": e.to_string()})),
    }
}

/// An app bundle `name` `version` (a tiny systemd-sysext image with
/// usr/share/keel-app-NAME/hello.txt) made with image/make-test-bundle.sh --app,
/// with each of `requires` (e.g. `base >= 0.1.3`).
pub fn make_app_bundle(dir: &Path, name: &str, version: &str, requires: &[&str]) -> PathBuf {
    let out = dir.join(format!("{name}-{version}.bundle"));
    let mut cmd = Command::new(workspace_root().join("image/make-test-bundle.sh"));
    cmd.arg(version).arg(&out).args(["--app", name]);
    for r in requires {
        cmd.args(["--requires", r]);
    }
    let status = cmd.status().expect("image/make-test-bundle.sh runs");
    assert!(
        status.success(),
        "make-test-bundle.sh --app {name} {version}: {status}"
    );
    out
}
