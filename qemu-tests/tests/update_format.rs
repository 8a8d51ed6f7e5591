//! An update and a rollback across a change of a data format, on the real image,
//! one VM: the new version's keel-netd (built with the `format-next` feature)
//! stores `/data/net/config.json` in a format 2. Its first boot converts the
//! configuration forward; a change made on the new version is kept readable for the
//! old one; the admin rolls back, and the old version runs with the configuration
//! as it was changed on the new one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use keel_qemu_tests::updates::{
    api, base_version, booted_into, make_bundle, outcome, status, wait_update_service,
};
use keel_qemu_tests::{
    image_or_skip, json_get, json_post, release_bin_dir, set_up_admin, workspace_root, Firmware,
    Vm, BOOT_CEILING, READY_MARKER,
};
use serde_json::{json, Value};

const PASSWORD: &str = "format console password";
const NEXT: &str = "0.1.1";

/// keel-netd with `format-next`, copied out of the release build; the build's own
/// keel-netd is restored right after (the image and other tests use that one).
fn netd_format_next(dir: &Path) -> PathBuf {
    let bin_dir = release_bin_dir();
    // The Makefile's package set: the same feature unification as `make build`, so
    // only keel-netd is rebuilt (alone, its dependencies would be recompiled).
    let packages = std::env::var("KEEL_BUILD_PACKAGES").unwrap_or_else(|_| "keel-netd".into());
    let build = |features: &[&str]| {
        let mut cmd = Command::new(workspace_root().join("scripts/cargo-release.sh"));
        // cargo test sets the test's package variables (CARGO_PKG_NAME, ...); ring's
        // build script declares rerun-if-env-changed on those, so passing them on
        // would rebuild ring and everything on it instead of keel-netd alone.
        for (name, _) in std::env::vars_os() {
            if set_by_cargo_test(&name.to_string_lossy()) {
                cmd.env_remove(name);
            }
        }
        let status = cmd
            .current_dir(workspace_root())
            .args(packages.split_whitespace().flat_map(|p| ["-p", p]))
            .args(features)
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "cargo build keel-netd {features:?}: {status}"
        );
    };
    build(&["--features", "keel-netd/format-next"]);
    let out = dir.join("keel-netd");
    std::fs::copy(bin_dir.join("keel-netd"), &out).unwrap();
    build(&[]);
    let restored = std::fs::read(bin_dir.join("keel-netd")).unwrap();
    assert_ne!(
        restored,
        std::fs::read(&out).unwrap(),
        "the release keel-netd is the shipped build again"
    );
    out
}

/// The variables `cargo test` gives a test process that `make build` did not have.
fn set_by_cargo_test(name: &str) -> bool {
    const PREFIXES: [&str; 4] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
    ];
    const NAMES: [&str; 3] = ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

async fn net_state(http: &reqwest::Client, vm: &Vm) -> Value {
    let (st, body) = json_get(http, &vm.url(&api("/net/config"))).await.unwrap();
    assert_eq!(st, 200, "GET /net/config: {body}");
    body
}

/// Sets the hostname through the console's API and confirms the change.
async fn set_hostname(http: &reqwest::Client, vm: &Vm, csrf: &str, name: &str) {
    let mut config = net_state(http, vm).await["running"].clone();
    config["hostname"] = json!(name);
    let resp = http
        .put(vm.url(&api("/net/config")))
        .header("x-csrf-token", csrf)
        .json(&config)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        202,
        "{}",
        resp.text().await.unwrap()
    );
    let (st, body) = json_post(http, &vm.url(&api("/net/confirm")), json!({}), Some(csrf))
        .await
        .unwrap();
    assert_eq!(st, 200, "confirm {name}: {body}");
}

/// The configuration came from the file (not the factory default a failed read
/// falls back to) and has `hostname`, which reaches the kernel (set by a root
/// helper that a path unit starts: a moment later).
async fn assert_config(http: &reqwest::Client, vm: &Vm, hostname: &str, when: &str) {
    let n = net_state(http, vm).await;
    assert_eq!(n["source"], "file", "{when}: {n}");
    assert_eq!(n["confirmed"]["hostname"], hostname, "{when}: {n}");
    let start = Instant::now();
    loop {
        let s = status(http, vm).await;
        if s["hostname"] == hostname {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{when}: the kernel's hostname: {s}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_and_rollback_across_a_data_format_change() {
    let Some(image) = image_or_skip() else {
        return;
    };
    let base = base_version();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_path_buf();
    // The new version is built while the VM boots.
    let bundle = std::thread::spawn(move || {
        let netd = netd_format_next(&dir);
        make_bundle(&dir, NEXT, &["--binary", netd.to_str().unwrap()])
    });
    let mut vm = Vm::prepare("update-format", &image, Firmware::Bios, 0).unwrap();
    vm.boot().unwrap();
    vm.wait_serial(READY_MARKER, BOOT_CEILING).await.unwrap();
    vm.wait_https(BOOT_CEILING).await.unwrap();
    let (http, csrf, _) = set_up_admin(&vm, PASSWORD).await.unwrap();
    wait_update_service(&http, &vm).await;
    set_hostname(&http, &vm, &csrf, "before-update").await;
    assert_config(&http, &vm, "before-update", "format 1, old version").await;

    // The new version converts the format-1 file on its first boot.
    let bytes = std::fs::read(bundle.join().unwrap()).unwrap();
    let (st, body) = keel_qemu_tests::updates::upload(&http, &vm, &csrf, bytes, true).await;
    assert_eq!(st, 200, "install {NEXT}: {body}");
    let (http, csrf) = booted_into(&mut vm, PASSWORD, 2, BOOT_CEILING, "b", NEXT).await;
    let u = outcome(&http, &vm, "installed").await;
    assert_eq!(u["last_outcome"]["kind"], "installed", "{u}");
    assert_config(&http, &vm, "before-update", "converted to format 2").await;

    // A change on the new version, stored in format 2 and in the copy for format 1.
    set_hostname(&http, &vm, &csrf, "changed-on-next").await;
    assert_config(&http, &vm, "changed-on-next", "format 2, new version").await;

    // Back to the old version, on the admin's word.
    let (st, body) = json_post(
        &http,
        &vm.url(&api("/update/rollback")),
        json!({"confirm": "ROLLBACK"}),
        Some(&csrf),
    )
    .await
    .unwrap();
    assert_eq!(st, 202, "rollback: {body}");
    let (http, csrf) = booted_into(&mut vm, PASSWORD, 3, BOOT_CEILING, "a", &base).await;
    let u = outcome(&http, &vm, "rolled-back-by-admin").await;
    assert_eq!(u["last_outcome"]["kind"], "rolled-back-by-admin", "{u}");
    // The old version cannot read format 2; it reads the copy kept in format 1,
    // which carries the change made on the new version.
    assert_config(
        &http,
        &vm,
        "changed-on-next",
        "old version after the rollback",
    )
    .await;
    // And it goes on storing its own format.
    set_hostname(&http, &vm, &csrf, "back-on-old").await;
    assert_config(&http, &vm, "back-on-old", "format 1 again").await;
    vm.kill();
}
