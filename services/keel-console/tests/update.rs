//! *Support › Updates* end to end: HTTPS console → the real keel-update (in this
//! process, on its local socket) → temp files as the root slots and a temp
//! directory as the ESP. Bundles are made with keel-bundle and a test key the
//! keel-update instance trusts; the end of a trial boot is played by changing
//! GRUB's environment with keel-boot and starting keel-update again ("the next
//! boot").

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::csrf_of;
use keel_bundle::{build_bundle_bytes, BundleSpec, KeyPurpose, Kind, SecretKey, Timestamp};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SLOT_SIZE: usize = 1024 * 1024;
const BOUNDARY: &str = "keeltestboundary7MA4YWxkTrZu0gW";

fn key() -> SecretKey {
    SecretKey::from_seed(&[7; 32])
}

/// Deterministic payload bytes, different per `seed`.
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 31 % 251) as u8 ^ seed.wrapping_mul(17))
        .collect()
}

fn bundle(version: &str, payload: &[u8]) -> Vec<u8> {
    let now = Timestamp::now();
    let spec = BundleSpec {
        product: "keel".into(),
        version: version.parse().unwrap(),
        kind: Kind::Base,
        name: None,
        requires: vec![],
        installs_over: vec![],
        created: now.plus(time::Duration::hours(-1)),
        expires: now.plus(time::Duration::days(30)),
    };
    build_bundle_bytes(&key(), &spec, payload).unwrap()
}

/// One "boot" of the appliance as keel-update sees it.
struct Boot<'a> {
    slot: &'a str,
    version: &'a str,
    id: &'a str,
}

/// keel-update over `root` (state, keys, slots, ESP), serving on its socket, which
/// the console is pointed at.
fn start_update(root: &Path, boot: Boot, reboots: &Arc<AtomicUsize>) -> PathBuf {
    let keys = root.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(
        keys.join("test.pub"),
        key().public().to_text(KeyPurpose::Update),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("esp/grub")).unwrap();
    let slots = root.join("slots");
    std::fs::create_dir_all(&slots).unwrap();
    for s in ["a", "b"] {
        let p = slots.join(format!("root-{s}"));
        if !p.exists() {
            std::fs::write(&p, vec![0u8; SLOT_SIZE]).unwrap();
        }
    }
    let etc = root.join(format!("boot-{}", boot.id));
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("os-release"),
        format!("NAME=Keel\nID=keel\nVERSION_ID={}\n", boot.version),
    )
    .unwrap();
    std::fs::write(
        etc.join("cmdline"),
        format!(
            "console=ttyS0 root=PARTLABEL=root-{0} keel.slot={0}\n",
            boot.slot
        ),
    )
    .unwrap();
    std::fs::write(etc.join("boot_id"), format!("{}\n", boot.id)).unwrap();

    let mut cfg = keel_update::Config::new(root.join("data/update"));
    cfg.keys_dir = keys;
    cfg.os_release = etc.join("os-release");
    cfg.cmdline = etc.join("cmdline");
    cfg.boot_id_file = etc.join("boot_id");
    cfg.slot_device = slots.join("root-{slot}").to_string_lossy().into_owned();
    cfg.esp_dir = Some(root.join("esp"));
    cfg.boot_state_file = None;
    cfg.timed_socket = None;
    let r = reboots.clone();
    cfg.reboot = Arc::new(move || {
        r.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    let updater = keel_update::Updater::start(cfg);
    let sock = root.join(format!("run/update-{}.sock", boot.id));
    let listener = keel_core::local_api::bind(&sock, 0o600).unwrap();
    tokio::spawn(keel_core::local_api::serve(
        listener,
        keel_update::api::router(updater),
    ));
    keel_console::update::set_socket(sock.clone());
    sock
}

fn slot(root: &Path, s: &str) -> Vec<u8> {
    std::fs::read(root.join(format!("slots/root-{s}"))).unwrap()
}

/// A multipart body with `fields` in this order; `("bundle", bytes)` is the file.
fn multipart(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        if *name == "bundle" {
            out.extend_from_slice(
                b"Content-Disposition: form-data; name=\"bundle\"; filename=\"keel-0.1.3.kbundle\"\r\n\
                  Content-Type: application/octet-stream\r\n\r\n",
            );
        } else {
            out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            );
        }
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

async fn status(http: &reqwest::Client, base: &str) -> Value {
    let resp = http
        .get(format!("{base}/appliance/api/v1/update"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

async fn error_of(resp: reqwest::Response) -> String {
    let v: Value = resp.json().await.unwrap();
    v["error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn updates_through_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let reboots = Arc::new(AtomicUsize::new(0));
    start_update(
        root,
        Boot {
            slot: "a",
            version: "0.1.1",
            id: "1",
        },
        &reboots,
    );
    let console = common::serve(root).await;
    let base = console.base.clone();
    let url = |p: &str| console.url(p);
    let (http, _) = common::client();
    let api = url("/appliance/api/v1/update");
    let install_api = url("/appliance/api/v1/update/install");
    let page_url = url("/appliance/support/updates");
    let form_url = url("/appliance/support/updates/install");

    assert_eq!(
        http.get(&api).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let csrf = common::set_up(&http, &base, root).await;

    // The status, forwarded.
    let st = status(&http, &base).await;
    assert_eq!(st["running"]["slot"], "a");
    assert_eq!(st["running"]["version"], "0.1.1");
    assert_eq!(st["other"]["slot"], "b");
    assert_eq!(st["other"]["version"], Value::Null);
    assert_eq!(st["progress"]["phase"], "idle");
    assert_eq!(st["rollback_to"], Value::Null);
    let empty_b = slot(root, "b");

    // No CSRF header: refused before a byte reaches keel-update.
    let p2 = payload(80 * 1024, 2);
    let b2 = bundle("0.1.2", &p2);
    assert!(b2.len() > 70 * 1024);
    let resp = http
        .post(&install_api)
        .header("content-type", "application/octet-stream")
        .body(b2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(status(&http, &base).await, st, "keel-update saw nothing");
    assert_eq!(slot(root, "b"), empty_b);
    // Nor from another site, token or not.
    let resp = http
        .post(&install_api)
        .header("x-csrf-token", &csrf)
        .header("origin", "https://evil.example")
        .header("content-type", "application/octet-stream")
        .body(b2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(status(&http, &base).await, st, "keel-update saw nothing");

    // The global 64 KiB limit still holds everywhere else.
    for path in [
        "/appliance/api/v1/update/rollback",
        "/appliance/api/v1/system/factory-reset",
    ] {
        let resp = http
            .post(url(path))
            .header("x-csrf-token", &csrf)
            .header("content-type", "application/json")
            .body(format!("{{\"confirm\": \"{}\"}}", "x".repeat(70 * 1024)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
    }

    // Over 1 GiB by its own word: 413 before a byte is read or passed on.
    let (big_tx, big_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let big_body = futures_util::stream::unfold(big_rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    big_tx.send(b2[..1024].to_vec()).await.unwrap();
    let resp = http
        .post(&install_api)
        .header("x-csrf-token", &csrf)
        .header("content-type", "application/octet-stream")
        .header("content-length", (1u64 << 30) + 1)
        .body(reqwest::Body::wrap_stream(big_body))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_of(resp)
        .await
        .contains("over the limit of 1073741824 bytes"));
    drop(big_tx);
    assert_eq!(status(&http, &base).await, st, "keel-update saw nothing");

    // A tampered bundle: keel-update's refusal, status and message.
    let mut bad = b2.clone();
    bad[40] ^= 0x20;
    let resp = http
        .post(&install_api)
        .header("x-csrf-token", &csrf)
        .header("content-type", "application/octet-stream")
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let e = error_of(resp).await;
    assert!(e.starts_with("bundle refused"), "{e}");
    let st = status(&http, &base).await;
    assert_eq!(st["progress"]["error"], json!(e), "keel-update's own words");
    assert_eq!(st["other"]["version"], Value::Null);
    assert_eq!(slot(root, "b"), empty_b);

    // Not a bundle at all, in the wrong type: said by the console.
    let resp = http
        .post(&install_api)
        .header("x-csrf-token", &csrf)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Install through the API, streamed: keel-update reads the manifest while the
    // upload is still under way.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    let upload = tokio::spawn(
        http.post(&install_api)
            .header("x-csrf-token", &csrf)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    let half = b2.len() / 2;
    tx.send(b2[..half].to_vec()).await.unwrap();
    let t0 = Instant::now();
    let during = loop {
        let st = status(&http, &base).await;
        if st["progress"]["version"] == "0.1.2" {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "keel-update never saw the first half: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(during["progress"]["phase"], "idle");
    assert_ne!(during["progress"]["phase"], "reboot-pending");
    // Meanwhile the page reloads itself and says what runs.
    let html = common::page(&http, &page_url).await;
    assert!(
        html.contains("<meta http-equiv=\"refresh\" content=\"2\">"),
        "{html}"
    );
    assert!(html.contains("Installing"), "{html}");
    assert!(!html.contains("type=\"file\""), "{html}");
    tx.send(b2[half..].to_vec()).await.unwrap();
    drop(tx);
    let resp = upload.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let a: Value = resp.json().await.unwrap();
    assert_eq!(
        a,
        json!({"version": "0.1.2", "slot": "b", "rebooting": false})
    );
    let b = slot(root, "b");
    assert_eq!(&b[..p2.len()], &p2[..], "the slot holds the payload");
    assert_eq!(b.len(), SLOT_SIZE);
    let st = status(&http, &base).await;
    assert_eq!(st["progress"]["phase"], "reboot-pending");
    assert_eq!(st["other"]["version"], "0.1.2");
    assert_eq!(reboots.load(Ordering::SeqCst), 0);

    // The page: both slots, the form (token before the file), no reload.
    let html = common::page(&http, &page_url).await;
    for want in [
        "Support › Updates",
        "slot a: Keel 0.1.1",
        "slot b: Keel 0.1.2",
        "Manual install",
        "enctype=\"multipart/form-data\"",
        "Reboot when installed",
        "name=\"reboot\" value=\"1\" checked",
    ] {
        assert!(html.contains(want), "{want:?} in\n{html}");
    }
    assert!(!html.contains("http-equiv=\"refresh\""), "{html}");
    assert!(!html.contains("Roll back to the previous version"));
    assert!(!html.contains("<script"));
    let form_csrf = csrf_of(&html);
    assert!(html.find("name=\"csrf\"").unwrap() < html.find("type=\"file\"").unwrap());

    // Forms that are refused before a byte of the file goes anywhere.
    let p3 = payload(90 * 1024, 3);
    let b3 = bundle("0.1.3", &p3);
    let before = status(&http, &base).await;
    let slot_before = slot(root, "b");
    let post_form = |body: Vec<u8>| {
        http.post(&form_url)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(body)
            .send()
    };
    for (what, body) in [
        (
            "token after the file",
            multipart(&[
                ("reboot", b"1"),
                ("bundle", &b3),
                ("csrf", form_csrf.as_bytes()),
            ]),
        ),
        ("no token", multipart(&[("reboot", b"1"), ("bundle", &b3)])),
        (
            "wrong token",
            multipart(&[("csrf", b"0123456789abcdef"), ("bundle", &b3)]),
        ),
    ] {
        let resp = post_form(body).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{what}");
        assert!(resp.text().await.unwrap().contains("nothing was installed"));
        assert_eq!(
            status(&http, &base).await,
            before,
            "{what}: keel-update saw nothing"
        );
        assert_eq!(slot(root, "b"), slot_before, "{what}");
    }
    // No file chosen (a browser sends an empty part): said beside the form, the
    // checkbox as it was.
    let mut empty = multipart(&[("csrf", form_csrf.as_bytes())]);
    empty.truncate(empty.len() - format!("--{BOUNDARY}--\r\n").len());
    empty.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n\r\n--{BOUNDARY}--\r\n"
        )
        .as_bytes(),
    );
    let resp = post_form(empty).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("Choose the bundle file to install."),
        "{html}"
    );
    assert!(
        !html.contains("value=\"1\" checked"),
        "unchecked as sent: {html}"
    );
    assert_eq!(status(&http, &base).await, before);

    // A tampered bundle through the form: keel-update's message beside the form.
    let mut bad = b3.clone();
    bad[40] ^= 0x20;
    let resp = post_form(multipart(&[
        ("csrf", form_csrf.as_bytes()),
        ("bundle", &bad),
    ]))
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let html = resp.text().await.unwrap();
    assert!(html.contains("bundle refused"), "{html}");

    // The form, in order: installed, and it reboots.
    let resp = post_form(multipart(&[
        ("csrf", form_csrf.as_bytes()),
        ("reboot", b"1"),
        ("bundle", &b3),
    ]))
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html = resp.text().await.unwrap();
    assert!(html.contains("Keel 0.1.3 is installed in slot b"), "{html}");
    assert!(html.contains("restarts now"), "{html}");
    assert_eq!(&slot(root, "b")[..p3.len()], &p3[..]);
    let t0 = Instant::now();
    while reboots.load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "no reboot asked for");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The trial fails: GRUB runs out of tries and boots slot a again.
    keel_boot::BootEnv::new(root.join("esp"))
        .cancel_trial()
        .unwrap();
    start_update(
        root,
        Boot {
            slot: "a",
            version: "0.1.1",
            id: "2",
        },
        &reboots,
    );
    let st = status(&http, &base).await;
    let message = "update to 0.1.3 failed its health check, running 0.1.1 again";
    assert_eq!(st["last_outcome"]["kind"], "rolled-back");
    assert_eq!(st["last_outcome"]["message"], message);
    let basics = common::page(&http, &url("/appliance/")).await;
    assert!(basics.contains(message), "{basics}");
    assert!(basics.contains("href=\"/appliance/support/updates\""));
    let html = common::page(&http, &page_url).await;
    assert!(html.contains(message), "{html}");

    // Nothing to roll back to: keel-update says so, the console passes it on.
    let rollback = url("/appliance/api/v1/update/rollback");
    let resp = http
        .post(&rollback)
        .header("x-csrf-token", &csrf)
        .json(&json!({"confirm": "ROLLBACK"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error_of(resp).await.contains("no previous version"));

    // 0.1.2 after all, healthy this time: then the rollback to 0.1.1 is offered.
    let resp = http
        .post(&install_api)
        .header("x-csrf-token", &csrf)
        .header("content-type", "application/octet-stream")
        .body(b2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    keel_boot::BootEnv::new(root.join("esp"))
        .mark_good(keel_boot::Slot::B)
        .unwrap();
    start_update(
        root,
        Boot {
            slot: "b",
            version: "0.1.2",
            id: "3",
        },
        &reboots,
    );
    let st = status(&http, &base).await;
    assert_eq!(st["last_outcome"]["kind"], "installed");
    assert_eq!(st["rollback_to"], "0.1.1");
    let html = common::page(&http, &page_url).await;
    assert!(html.contains("Roll back to the previous version"), "{html}");
    assert!(html.contains("Roll back to Keel 0.1.1"), "{html}");
    let form_csrf = csrf_of(&html);
    // A wrong confirmation: refused beside the form, the input kept.
    let resp = http
        .post(url("/appliance/support/updates/rollback"))
        .form(&[("csrf", form_csrf.as_str()), ("confirm", "rollback")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = resp.text().await.unwrap();
    assert!(html.contains("value=\"rollback\""), "{html}");
    assert!(html.contains("confirm with"), "{html}");
    let resp = http
        .post(&rollback)
        .header("x-csrf-token", &csrf)
        .json(&json!({"confirm": "yes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let reboots_before = reboots.load(Ordering::SeqCst);
    let resp = http
        .post(url("/appliance/support/updates/rollback"))
        .form(&[("csrf", form_csrf.as_str()), ("confirm", "ROLLBACK")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(resp.text().await.unwrap().contains("Keel 0.1.1"));
    let t0 = Instant::now();
    while reboots.load(Ordering::SeqCst) == reboots_before {
        assert!(t0.elapsed() < Duration::from_secs(5), "no reboot asked for");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status(&http, &base).await["last_outcome"]["kind"],
        "rolled-back-by-admin"
    );

    // keel-update not running: a clear 503, and the page says it.
    keel_console::update::set_socket(root.join("run/nothing.sock"));
    let resp = http.get(&api).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let e = error_of(resp).await;
    assert!(
        e.starts_with("update service unavailable") && e.contains("is the service running"),
        "{e}"
    );
    let resp = http
        .post(&install_api)
        .header("x-csrf-token", &csrf)
        .header("content-type", "application/octet-stream")
        .body(b2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(error_of(resp)
        .await
        .starts_with("update service unavailable"));
    let html = common::page(&http, &page_url).await;
    assert!(html.contains("update service unavailable"), "{html}");
    assert!(!html.contains("type=\"file\""));
    // Basics renders without the line.
    let basics = common::page(&http, &url("/appliance/")).await;
    assert!(!basics.contains(message));
}
