//! Online update on the real image, one VM: the vendor's site is on the host's
//! loopback — `openssl s_server -WWW` serving a feed signed with the build's key
//! (`keel-bundle index`) and bundles made from the built root slot, with a
//! certificate from a CA made here — and the appliance reaches it only through
//! Debian's tinyproxy with basic auth, which QEMU forwards to the guest as
//! 10.0.2.100:3128 (`guestfwd`, the one way out of `restrict=on`). Settings and
//! check through the console's API, install online, reboot into slot B; then
//! *install all in order* over a two-step chain (0.1.2, then 0.1.3 which installs
//! only over 0.1.2): two more reboots, the second started by keel-update itself
//! after the first healthy boot. An app bundle (systemd-sysext image) that needs
//! base 0.1.3 is refused on 0.1.0 (upload through the console's API), listed as
//! "needs base 0.1.3 first" by the check, and installs and merges on 0.1.3 (no
//! reboot; no extra boot for it either).

#[path = "../../services/keel-update/tests/common/tinyproxy.rs"]
mod tinyproxy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_qemu_tests::updates::{
    api, base_version, booted_into, make_app_bundle, make_bundle, outcome, status, upload,
};
use keel_qemu_tests::{
    ca_and_leaf, image_or_skip, json_post, release_bin_dir, set_up_admin, workspace_root, CaKey,
    Firmware, Vm, BOOT_CEILING, READY_MARKER,
};
use serde_json::{json, Value};
use tinyproxy::Tinyproxy;

const PASSWORD: &str = "online update console password";
const PROXY_IN_GUEST: &str = "10.0.2.100:3128";
/// An install downloads ~110 MiB through the proxy, writes and reads it back.
const INSTALL_CEILING: Duration = Duration::from_secs(600);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn release_tool() -> PathBuf {
    release_bin_dir().join("keel-bundle")
}

/// A CA and a server certificate for 127.0.0.1 (the proxy connects to its own
/// loopback): `leaf.crt`, `leaf.key`. Returns the CA's PEM.
fn make_certs(dir: &Path) -> String {
    ca_and_leaf(dir, "IP:127.0.0.1", CaKey::P256);
    std::fs::read_to_string(dir.join("ca.crt")).unwrap()
}

/// The feed over every *.kbundle in `www`, signed with the build's key.
fn index(www: &Path) {
    let st = Command::new(release_tool())
        .arg("index")
        .arg("--key")
        .arg(workspace_root().join("build/dev-signing.secret"))
        .arg("--dir")
        .arg(www)
        .arg("--out")
        .arg(www.join("feed.kfeed"))
        .status()
        .unwrap();
    assert!(st.success(), "keel-bundle index: {st}");
}

/// `bundle` signed again as installing only over `over` (same payload).
fn resign(bundle: &Path, version: &str, over: &str, out: &Path) {
    let bytes = std::fs::read(bundle).unwrap();
    let inspect = Command::new(release_tool())
        .arg("inspect")
        .arg(bundle)
        .output()
        .unwrap();
    // Two lines of warning and key id, then the manifest as JSON.
    let text = String::from_utf8_lossy(&inspect.stdout);
    let manifest: Value =
        serde_json::from_str(&text.lines().skip(2).collect::<Vec<_>>().join("\n"))
            .unwrap_or_else(|e| panic!("inspect: {e}: {text}"));
    let size = manifest["payload_size"].as_u64().expect("payload_size") as usize;
    let payload = out.with_extension("payload");
    std::fs::write(&payload, &bytes[bytes.len() - size..]).unwrap();
    let st = Command::new(release_tool())
        .args(["build", "--kind", "base", "--version", version])
        .arg("--key")
        .arg(workspace_root().join("build/dev-signing.secret"))
        .arg("--payload")
        .arg(&payload)
        .arg("--installs-over")
        .arg(over)
        .arg("--out")
        .arg(out)
        .status()
        .unwrap();
    assert!(st.success(), "keel-bundle build: {st}");
    std::fs::remove_file(payload).unwrap();
}

/// QEMU's guestfwd runs this per guest connection: the connection on stdin and
/// stdout, bridged to the proxy on the host's loopback.
fn bridge_script(dir: &Path, port: u16) -> PathBuf {
    let p = dir.join("guestfwd-bridge");
    std::fs::write(
        &p,
        format!(
            r#"#!/usr/bin/env python3
import os, selectors, socket
s = socket.create_connection(("127.0.0.1", {port}))
sel = selectors.DefaultSelector()
sel.register(0, selectors.EVENT_READ)
sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj == 0:
            d = os.read(0, 65536)
            if not d:
                sel.unregister(0)
                s.shutdown(socket.SHUT_WR)
            else:
                s.sendall(d)
        else:
            d = s.recv(65536)
            if not d:
                raise SystemExit(0)
            while d:
                d = d[os.write(1, d):]
"#
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

async fn post(
    http: &reqwest::Client,
    vm: &Vm,
    csrf: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let resp = http
        .post(vm.url(&api(path)))
        .header("x-csrf-token", csrf)
        .timeout(INSTALL_CEILING)
        .json(&body)
        .send()
        .await;
    match resp {
        Ok(r) => keel_qemu_tests::answer(r).await,
        Err(e) => (0, json!({"transport error": e.to_string()})),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_update_through_a_proxy_on_the_booted_image() {
    let Some(image) = image_or_skip() else {
        return;
    };
    if !release_tool().exists() {
        panic!("no {} (make image builds it)", release_tool().display());
    }
    let t0 = Instant::now();
    let base = base_version();
    assert_eq!(base, "0.1.0", "the versions below follow VERSION {base}");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_path_buf();
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();

    // The bundles are made while the VM boots and installs: each one as soon as
    // it is done.
    let bdir = dir.clone();
    let (made, bundles) = std::sync::mpsc::channel();
    let maker = std::thread::spawn(move || {
        for v in ["0.1.1", "0.1.2", "0.1.3"] {
            made.send(make_bundle(&bdir, v, &[])).unwrap();
        }
    });

    // The vendor's site and the site's proxy, on the host's loopback.
    let ca_pem = make_certs(&dir);
    let site_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _site = Killed(
        Command::new("openssl")
            .current_dir(&www)
            .args(["s_server", "-quiet", "-WWW", "-accept"])
            .arg(format!("127.0.0.1:{site_port}"))
            .arg("-cert")
            .arg(dir.join("leaf.crt"))
            .arg("-key")
            .arg(dir.join("leaf.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    tinyproxy::wait_listening(site_port, "openssl s_server").await;
    let Some(proxy) = Tinyproxy::start(&dir, site_port, Some(("site", "proxy-pw-9"))).await else {
        panic!("tinyproxy is not installed (scripts/deps.sh installs it)");
    };
    let bridge = bridge_script(&dir, proxy.port);

    let mut vm = Vm::prepare("update-online", &image, Firmware::Bios, 0)
        .unwrap()
        .with_guestfwd(PROXY_IN_GUEST, &bridge);
    vm.boot().unwrap();
    vm.wait_serial(READY_MARKER, BOOT_CEILING).await.unwrap();
    vm.wait_https(BOOT_CEILING).await.unwrap();
    let (http, csrf, _) = set_up_admin(&vm, PASSWORD).await.unwrap();
    keel_qemu_tests::updates::wait_update_service(&http, &vm).await;
    eprintln!("booted and set up: {:?}", t0.elapsed());

    // The hosted product's layer needs a newer base than this one: refused, with
    // the reason, and nothing installed.
    let app = make_app_bundle(&dir, "demo", "1.0.0", &["base >= 0.1.3"]);
    let app_bytes = std::fs::read(&app).unwrap();
    let (st, refused) = upload(&http, &vm, &csrf, app_bytes.clone(), false).await;
    assert_eq!(st, 422, "app on 0.1.0: {refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("needs base >= 0.1.3 first")),
        "{refused}"
    );
    let u = keel_qemu_tests::updates::update_status(&http, &vm).await;
    assert_eq!(u["apps"], json!([]), "{u}");

    let b1 = bundles.recv().expect("bundle 0.1.1");
    eprintln!("bundle 0.1.1 made: {:?}", t0.elapsed());
    std::fs::copy(&b1, www.join("keel-0.1.1.kbundle")).unwrap();
    index(&www);

    // Settings: through the proxy, with its password, and the site's CA.
    let settings = json!({
        "feed_url": format!("https://127.0.0.1:{site_port}/feed.kfeed"),
        "proxy_url": format!("http://{PROXY_IN_GUEST}"),
        "proxy_user": "site",
        "proxy_password": "proxy-pw-9",
        "ca_certificate": ca_pem,
    });
    let resp = http
        .put(vm.url(&api("/update/settings")))
        .header("x-csrf-token", &csrf)
        .json(&settings)
        .send()
        .await
        .unwrap();
    let (st, shown) = keel_qemu_tests::answer(resp).await;
    assert_eq!(st, 200, "{shown}");
    assert_eq!(shown["proxy_password_set"], true, "{shown}");
    assert!(!shown.to_string().contains("proxy-pw-9"));

    let (st, a) = json_post(
        &http,
        &vm.url(&api("/update/check")),
        json!({}),
        Some(&csrf),
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "check: {a}");
    assert_eq!(a["plan"], json!(["0.1.1"]), "{a}");
    assert_eq!(a["entries"][0]["state"], "installable", "{a}");
    assert!(
        proxy
            .log()
            .contains(&format!("CONNECT 127.0.0.1:{site_port}")),
        "through tinyproxy: {}",
        proxy.log()
    );

    // Install online, reboot into slot B.
    let (st, ans) = post(
        &http,
        &vm,
        &csrf,
        "/update/install-online",
        json!({"version": "0.1.1", "reboot": true}),
    )
    .await;
    assert_eq!(st, 200, "install-online: {ans}");
    assert_eq!(
        (ans["slot"].as_str(), ans["rebooting"].as_bool()),
        (Some("b"), Some(true))
    );
    eprintln!("0.1.1 downloaded and armed: {:?}", t0.elapsed());
    let (http, csrf) = booted_into(&mut vm, PASSWORD, 2, BOOT_CEILING, "b", "0.1.1").await;
    let u = outcome(&http, &vm, "installed").await;
    assert_eq!(u["last_outcome"]["to_version"], "0.1.1", "{u}");
    assert_eq!(
        (
            u["running"]["slot"].as_str(),
            u["running"]["version"].as_str()
        ),
        (Some("b"), Some("0.1.1"))
    );
    eprintln!("running 0.1.1 in slot B: {:?}", t0.elapsed());

    // Install all in order: 0.1.3 installs only over 0.1.2.
    let b2 = bundles.recv().expect("bundle 0.1.2");
    let b3 = bundles.recv().expect("bundle 0.1.3");
    maker.join().unwrap();
    eprintln!("bundles 0.1.2, 0.1.3 made: {:?}", t0.elapsed());
    std::fs::copy(&b2, www.join("keel-0.1.2.kbundle")).unwrap();
    resign(&b3, "0.1.3", ">=0.1.2", &www.join("keel-0.1.3.kbundle"));
    std::fs::copy(&app, www.join("demo-1.0.0.kbundle")).unwrap();
    index(&www);
    let (st, a) = json_post(
        &http,
        &vm.url(&api("/update/check")),
        json!({}),
        Some(&csrf),
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "check: {a}");
    assert_eq!(a["plan"], json!(["0.1.2", "0.1.3"]), "{a}");
    let e3 = a["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["version"] == "0.1.3")
        .unwrap();
    assert_eq!(e3["state"], "needs-first", "{a}");
    assert_eq!(e3["reason"], "needs base 0.1.2 first", "{a}");
    let ea = a["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["component"] == "demo")
        .unwrap_or_else(|| panic!("no app entry: {a}"));
    assert_eq!(ea["state"], "needs-first", "{a}");
    assert_eq!(ea["reason"], "needs base 0.1.3 first", "{a}");
    let (st, c) = post(&http, &vm, &csrf, "/update/install-all", json!({})).await;
    assert_eq!(st, 200, "install-all: {c}");
    assert_eq!(c["steps"], json!(["0.1.2", "0.1.3"]), "{c}");
    eprintln!("0.1.2 armed: {:?}", t0.elapsed());
    // Boot 3 runs 0.1.2; keel-update goes on by itself with 0.1.3 and reboots:
    // boot 4 runs 0.1.3 in slot B.
    vm.wait_serial_count(READY_MARKER, 3, BOOT_CEILING)
        .await
        .unwrap();
    eprintln!("boot 3 (0.1.2) ready: {:?}", t0.elapsed());
    let (http, csrf) = booted_into(&mut vm, PASSWORD, 4, INSTALL_CEILING, "b", "0.1.3").await;
    let s = status(&http, &vm).await;
    eprintln!("running 0.1.3: {:?} ({})", t0.elapsed(), s["slot"]);
    let start = Instant::now();
    let u = loop {
        let u = outcome(&http, &vm, "installed").await;
        if u["chain"]["state"] == "done" || start.elapsed() > Duration::from_secs(180) {
            break u;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(u["chain"]["state"], "done", "{u}");
    assert_eq!(u["chain"]["done"], 2, "{u}");
    assert_eq!(u["last_outcome"]["to_version"], "0.1.3", "{u}");
    assert_eq!(u["running"]["version"], "0.1.3", "{u}");
    eprintln!("install all done: {:?}", t0.elapsed());

    // On 0.1.3 the same app bundle installs, and systemd-sysext merges it: "active"
    // is the kernel's view (its extension-release file shows in /usr through the
    // overlay, and a loop device is backed by its image), asked for reboot or not.
    let (st, ans) = upload(&http, &vm, &csrf, app_bytes, true).await;
    assert_eq!(st, 200, "app on 0.1.3: {ans}");
    assert_eq!(
        (
            ans["app"].as_str(),
            ans["version"].as_str(),
            ans["rebooting"].as_bool()
        ),
        (Some("demo"), Some("1.0.0"), Some(false)),
        "{ans}"
    );
    let u = keel_qemu_tests::updates::update_status(&http, &vm).await;
    assert_eq!(
        u["apps"],
        json!([{"name": "demo", "version": "1.0.0", "active": true, "previous": null, "note": null}]),
        "{u}"
    );
    assert_eq!(u["running"]["version"], "0.1.3", "no reboot: {u}");
    let (st, a) = json_post(
        &http,
        &vm.url(&api("/update/check")),
        json!({}),
        Some(&csrf),
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "check: {a}");
    let ea = a["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["component"] == "demo")
        .unwrap();
    assert_eq!(ea["state"], "installed", "{a}");
    eprintln!("app demo 1.0.0 installed and merged: {:?}", t0.elapsed());
}
