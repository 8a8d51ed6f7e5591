//! *Support › Updates*, online part, end to end: HTTPS console → the real
//! keel-update (in this process, on its local socket) → a real HTTPS feed server
//! on loopback (a CA made per test, given as the extra CA) reached through
//! Debian's tinyproxy with basic auth. Settings, check, the page's greyed-out
//! entries and plan, install from the feed through the page's form, the download
//! key — each state-changing request refused without its CSRF token.

mod common;
// The same loopback feed server and proxies as keel-update's own online tests.
#[path = "../../keel-update/tests/common/tinyproxy.rs"]
mod tinyproxy;
#[path = "../../keel-update/tests/common/web.rs"]
mod web;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_bundle::{
    build_bundle_bytes, read_unverified, sign_feed, BundleSpec, FeedEntry, FeedSpec, KeyPurpose,
    Kind, SecretKey, Timestamp,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tinyproxy::Tinyproxy;
use web::{HttpsServer, TestCa};

const SLOT_SIZE: usize = 1024 * 1024;

fn key() -> SecretKey {
    SecretKey::from_seed(&[9; 32])
}

fn bundle(version: &str, over: Option<&str>, len: usize) -> Vec<u8> {
    let now = Timestamp::now();
    let spec = BundleSpec {
        product: "keel".into(),
        version: version.parse().unwrap(),
        kind: Kind::Base,
        name: None,
        requires: vec![],
        installs_over: over.map(|o| vec![o.parse().unwrap()]).unwrap_or_default(),
        created: now.plus(time::Duration::hours(-1)),
        expires: now.plus(time::Duration::days(30)),
    };
    let payload: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
    build_bundle_bytes(&key(), &spec, &payload).unwrap()
}

/// keel-update over `root` running slot a with 0.1.0, only the test CA trusted,
/// on a socket the console is pointed at.
fn start_update(root: &Path, reboots: &Arc<AtomicUsize>) {
    let keys = root.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(
        keys.join("t.pub"),
        key().public().to_text(KeyPurpose::Update),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("esp/grub")).unwrap();
    keel_boot::BootEnv::new(root.join("esp"))
        .mark_good(keel_boot::Slot::A)
        .unwrap();
    std::fs::create_dir_all(root.join("slots")).unwrap();
    for s in ["a", "b"] {
        std::fs::write(root.join(format!("slots/root-{s}")), vec![0u8; SLOT_SIZE]).unwrap();
    }
    std::fs::write(
        root.join("os-release"),
        "NAME=Keel\nID=keel\nVERSION_ID=0.1.0\n",
    )
    .unwrap();
    std::fs::write(root.join("cmdline"), "root=PARTLABEL=root-a keel.slot=a\n").unwrap();
    std::fs::write(root.join("boot_id"), "1\n").unwrap();
    let mut cfg = keel_update::Config::new(root.join("data/update"));
    cfg.keys_dir = keys;
    cfg.os_release = root.join("os-release");
    cfg.cmdline = root.join("cmdline");
    cfg.boot_id_file = root.join("boot_id");
    cfg.slot_device = root
        .join("slots/root-{slot}")
        .to_string_lossy()
        .into_owned();
    cfg.esp_dir = Some(root.join("esp"));
    cfg.boot_state_file = None;
    cfg.timed_socket = None;
    cfg.ca_bundle = root.join("no-system-roots.pem");
    let r = reboots.clone();
    cfg.reboot = Arc::new(move || {
        r.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    let updater = keel_update::Updater::start(cfg);
    let sock = root.join("run/update.sock");
    let listener = keel_core::local_api::bind(&sock, 0o600).unwrap();
    tokio::spawn(keel_core::local_api::serve(
        listener,
        keel_update::api::router(updater),
    ));
    keel_console::update::set_socket(sock);
}

async fn error_of(resp: reqwest::Response) -> String {
    let v: Value = resp.json().await.unwrap();
    v["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn online_updates_through_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let reboots = Arc::new(AtomicUsize::new(0));
    start_update(root, &reboots);

    // The vendor's site: 0.2.0 over anything, 0.3.0 over 0.2.0 only.
    let ca = TestCa::new();
    let site = HttpsServer::start(&ca).await;
    let b2 = bundle("0.2.0", None, 300 * 1024);
    let b3 = bundle("0.3.0", Some(">=0.2.0"), 10 * 1024);
    let entry = |f: &str, b: &[u8]| FeedEntry::from_manifest(f, &read_unverified(b).unwrap().0);
    let now = Timestamp::now();
    let feed = sign_feed(
        &key(),
        &FeedSpec {
            product: "keel".into(),
            created: now.plus(time::Duration::minutes(-1)),
            expires: now.plus(time::Duration::days(7)),
            entries: vec![
                entry("keel-0.2.0.kbundle", &b2),
                entry("keel-0.3.0.kbundle", &b3),
            ],
        },
    )
    .unwrap();
    site.put("/feed.kfeed", feed);
    site.put("/keel-0.2.0.kbundle", b2);
    site.put("/keel-0.3.0.kbundle", b3);
    let Some(proxy) = Tinyproxy::start(root, site.addr.port(), Some(("site", "pr0xy-pw"))).await
    else {
        eprintln!("SKIPPED: tinyproxy is not installed (scripts/deps.sh installs it)");
        return;
    };

    let console = common::serve(root).await;
    let base = console.base.clone();
    let url = |p: &str| console.url(p);
    let (http, _) = common::client();
    let settings_api = url("/appliance/api/v1/update/settings");
    assert_eq!(
        http.get(&settings_api).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let csrf = common::set_up(&http, &base, root).await;

    let good = json!({
        "feed_url": site.url("/feed.kfeed"),
        "proxy_url": proxy.url(),
        "proxy_user": "site",
        "proxy_password": "pr0xy-pw",
        "ca_certificate": ca.ca_pem,
    });
    // No CSRF token: refused, nothing stored.
    let resp = http.put(&settings_api).json(&good).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // A non-https feed: refused with the reason.
    let mut bad = good.clone();
    bad["feed_url"] = json!(format!("http://127.0.0.1:{}/feed.kfeed", site.addr.port()));
    let resp = http
        .put(&settings_api)
        .header("x-csrf-token", &csrf)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error_of(resp).await.contains("must start with https://"));
    let shown: Value = http
        .get(&settings_api)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["feed_url"], Value::Null);

    let resp = http
        .put(&settings_api)
        .header("x-csrf-token", &csrf)
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("pr0xy-pw"), "{text}");
    let shown: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["proxy_password_set"], true);

    // Check: without a token refused; with it, the verified feed.
    let check_api = url("/appliance/api/v1/update/check");
    let resp = http.post(&check_api).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = http
        .post(&check_api)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let a: Value = resp.json().await.unwrap();
    assert_eq!(a["plan"], json!(["0.2.0", "0.3.0"]));
    assert_eq!(a["entries"][1]["state"], "needs-first");
    assert_eq!(a["entries"][1]["reason"], "needs base 0.2.0 first");
    assert!(
        proxy.log().contains("CONNECT 127.0.0.1:"),
        "through tinyproxy"
    );
    let last: Value = http
        .get(url("/appliance/api/v1/update/available"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(last["plan"], a["plan"]);

    // The page: 0.2.0 with its Install button, 0.3.0 greyed out with the reason,
    // the plan and Install all in order; no password in it.
    let page_url = url("/appliance/support/updates");
    let html = common::page(&http, &page_url).await;
    for want in [
        "Install 0.2.0</button>",
        "class=\"unavailable\"><td>base 0.3.0</td>",
        "needs base 0.2.0 first",
        "Keel 0.2.0 → Keel 0.3.0",
        "Install all in order</button>",
        "Proxy password (set; empty keeps it)",
    ] {
        assert!(html.contains(want), "{want:?} in\n{html}");
    }
    assert!(!html.contains("pr0xy-pw"));
    assert!(!html.contains("Install 0.3.0"));
    let form_csrf = common::csrf_of(&html);

    // A forged form (wrong token) installs nothing.
    let resp = http
        .post(url("/appliance/support/updates/install-online"))
        .form(&[("csrf", "forged"), ("version", "0.2.0")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(site.hits("/keel-0.2.0.kbundle"), 0);

    // The settings form keeps the password when its field is left empty.
    let resp = http
        .post(url("/appliance/support/updates/settings"))
        .form(&[
            ("csrf", form_csrf.as_str()),
            ("feed_url", site.url("/feed.kfeed").as_str()),
            ("proxy_url", proxy.url().as_str()),
            ("proxy_user", "site"),
            ("proxy_password", ""),
            ("ca_certificate", ca.ca_pem.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("Online update settings saved."));

    // Install 0.2.0 from the page: downloaded through the proxy, verified, armed.
    let resp = http
        .post(url("/appliance/support/updates/install-online"))
        .form(&[("csrf", form_csrf.as_str()), ("version", "0.2.0")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("Keel 0.2.0 was downloaded, verified and installed in slot b"),
        "{html}"
    );
    let st: Value = http
        .get(url("/appliance/api/v1/update"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["other"]["version"], "0.2.0");
    assert_eq!(st["progress"]["phase"], "reboot-pending");
    let start = Instant::now();
    while reboots.load(Ordering::SeqCst) == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "no reboot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(site.hits("/keel-0.2.0.kbundle"), 1);

    // The download key: API (token needed) and the page's button.
    let dk_api = url("/appliance/api/v1/update/download-key");
    assert_eq!(
        http.post(&dk_api).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let dk: Value = http
        .post(&dk_api)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = dk["text"].as_str().unwrap();
    let verified = keel_bundle::verify_download_key(text, Timestamp::now(), None).unwrap();
    assert_eq!(verified.appliance_id, dk["appliance_id"].as_str().unwrap());
    let resp = http
        .post(url("/appliance/support/updates/download-key"))
        .form(&[("csrf", form_csrf.as_str())])
        .send()
        .await
        .unwrap();
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("<pre id=\"download-key\">-----BEGIN KEEL DOWNLOAD KEY-----"),
        "{html}"
    );
}
