//! Online updates against real parts on loopback: an HTTPS server (rustls, a CA
//! made per test and given to keel-update as the extra CA) serving a feed and
//! bundles made with keel-bundle, Debian's tinyproxy (CONNECT, with and without
//! basic auth), a proxy that drops the tunnel mid-download, lying and expired
//! feeds; install all in order across simulated boots; the download key answered
//! by the real `keel-bundle` CLI.

mod common;
#[path = "common/tinyproxy.rs"]
mod tinyproxy;
#[path = "common/web.rs"]
mod web;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{payload, spec, Rig, BIG, SMALL};
use keel_api::{AvailableState, ChainState, UpdatePhase, UpdateSettingsRequest};
use keel_boot::Slot;
use keel_bundle::{
    build_bundle_bytes, read_unverified, sign_feed, FeedEntry, FeedSpec, Kind, Timestamp,
    VersionRange,
};
use keel_update::{ErrorKind, SlotContent, Updater};
use tinyproxy::Tinyproxy;
use web::{DroppingProxy, HttpsServer, TestCa};

const FEED: &str = "/keel/feed.kfeed";

/// A bundle of `version` (installs over `over`, e.g. ">=0.2.0", or anything).
fn bundle(rig: &Rig, version: &str, over: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut s = spec(version, Kind::Base);
    if let Some(o) = over {
        s.installs_over = vec![o.parse::<VersionRange>().unwrap()];
    }
    build_bundle_bytes(&rig.key, &s, data).unwrap()
}

fn entry(file: &str, bytes: &[u8]) -> FeedEntry {
    let (m, _) = read_unverified(bytes).unwrap();
    FeedEntry::from_manifest(file, &m)
}

fn feed(rig: &Rig, entries: Vec<FeedEntry>, created_min: i64, expires_min: i64) -> Vec<u8> {
    let now = Timestamp::now();
    sign_feed(
        &rig.key,
        &FeedSpec {
            product: "keel".into(),
            created: now.plus(time::Duration::minutes(created_min)),
            expires: now.plus(time::Duration::minutes(expires_min)),
            entries,
        },
    )
    .unwrap()
}

/// The rig with the image's roots absent: only the test CA is trusted.
fn rig() -> Rig {
    let mut rig = Rig::new();
    rig.cfg.ca_bundle = rig.path("no-system-roots.pem");
    rig
}

/// Serves 0.2.0 (over anything) and 0.3.0 (over >=0.2.0 only) and their feed.
struct Site {
    server: HttpsServer,
    ca: TestCa,
    p2: Vec<u8>,
    p3: Vec<u8>,
}

async fn site(rig: &Rig, p2_len: usize) -> Site {
    let ca = TestCa::new();
    let server = HttpsServer::start(&ca).await;
    let p2 = payload(p2_len, 2);
    let p3 = payload(SMALL, 3);
    let b2 = bundle(rig, "0.2.0", None, &p2);
    let b3 = bundle(rig, "0.3.0", Some(">=0.2.0"), &p3);
    let f = feed(
        rig,
        vec![
            entry("keel-0.2.0.kbundle", &b2),
            entry("keel-0.3.0.kbundle", &b3),
        ],
        -1,
        60,
    );
    server.put("/keel/keel-0.2.0.kbundle", b2);
    server.put("/keel/keel-0.3.0.kbundle", b3);
    server.put(FEED, f);
    Site { server, ca, p2, p3 }
}

fn settings(site: &Site, proxy: Option<String>) -> UpdateSettingsRequest {
    UpdateSettingsRequest {
        feed_url: Some(site.server.url(FEED)),
        proxy_url: proxy,
        ca_certificate: Some(site.ca.ca_pem.clone()),
        ..Default::default()
    }
}

macro_rules! tinyproxy_or_skip {
    ($e:expr) => {
        match $e {
            Some(t) => t,
            None => {
                eprintln!("SKIPPED: tinyproxy is not installed (scripts/deps.sh installs it)");
                return;
            }
        }
    };
}

#[tokio::test]
async fn check_and_install_through_tinyproxy_with_and_without_basic_auth() {
    let rig = rig();
    let site = site(&rig, SMALL).await;
    let port = site.server.addr.port();
    let open = tinyproxy_or_skip!(Tinyproxy::start(rig.dir.path(), port, None).await);
    let u = rig.start();

    // Settings: a non-https feed is refused, nothing stored.
    let mut bad = settings(&site, None);
    bad.feed_url = Some(format!("http://127.0.0.1:{port}{FEED}"));
    let e = u.put_settings(&bad).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Refused);
    assert!(e.message.contains("must start with https://"), "{e}");
    assert_eq!(u.settings().feed_url, None);

    u.put_settings(&settings(&site, Some(open.url()))).unwrap();
    let a = u.check().await.expect("check through tinyproxy");
    assert_eq!(a.installed, "0.1.0");
    assert_eq!(a.plan, ["0.2.0", "0.3.0"]);
    let e2 = &a.entries[0];
    assert_eq!(
        (e2.version.as_str(), e2.state),
        ("0.2.0", AvailableState::Installable)
    );
    let e3 = &a.entries[1];
    assert_eq!(
        (e3.version.as_str(), e3.state),
        ("0.3.0", AvailableState::NeedsFirst)
    );
    assert_eq!(e3.reason.as_deref(), Some("needs base 0.2.0 first"));
    assert_eq!(e3.steps, ["0.2.0"]);
    assert_eq!(u.last_available().as_ref(), Some(&a));
    // It went through the proxy: tinyproxy tunnelled to the server.
    let log = open.log();
    assert!(log.contains(&format!("CONNECT 127.0.0.1:{port}")), "{log}");

    // Not installable yet: refused with the reason, nothing downloaded.
    let e = u.install_online("0.3.0", false).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Refused);
    assert!(e.message.contains("needs base 0.2.0 first"), "{e}");
    assert_eq!(site.server.hits("/keel/keel-0.3.0.kbundle"), 0);
    drop(open);

    // Basic auth: a wrong password is refused by the proxy, the right one works.
    let auth = tinyproxy_or_skip!(
        Tinyproxy::start(rig.dir.path(), port, Some(("bob", "s3cret-pw"))).await
    );
    let mut s = settings(&site, Some(auth.url()));
    s.proxy_user = Some("bob".into());
    s.proxy_password = Some("wrong".into());
    u.put_settings(&s).unwrap();
    let e = u.check().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Network, "{e}");
    assert!(e.message.contains("through the proxy"), "{e}");
    assert!(!e.message.contains("wrong"), "no password in errors: {e}");
    // No auth at all: refused too.
    let mut none = s.clone();
    none.proxy_user = None;
    none.proxy_password = None;
    u.put_settings(&none).unwrap();
    assert_eq!(u.check().await.unwrap_err().kind, ErrorKind::Network);

    s.proxy_password = Some("s3cret-pw".into());
    let shown = u.put_settings(&s).unwrap();
    assert!(shown.proxy_password_set);
    let text = std::fs::read_to_string(rig.cfg.settings_file()).unwrap();
    assert!(text.contains("s3cret-pw"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(rig.cfg.settings_file())
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(!serde_json::to_string(&u.settings())
        .unwrap()
        .contains("s3cret-pw"));
    // The settings are kept across a restart.
    let u = rig.start();
    assert!(u.settings().proxy_password_set);

    let answer = u
        .install_online("0.2.0", false)
        .await
        .expect("install online");
    assert_eq!(
        (answer.version.as_str(), answer.slot.as_str()),
        ("0.2.0", "b")
    );
    assert_eq!(&rig.slot("b")[..site.p2.len()], &site.p2[..]);
    assert_eq!(rig.env().status().trial(), Some((Slot::B, 3)));
    let st = u.status();
    assert_eq!(st.progress.phase, UpdatePhase::RebootPending);
    assert_eq!(st.other.version.as_deref(), Some("0.2.0"));
    assert!(auth.log().contains(&format!("CONNECT 127.0.0.1:{port}")));
    assert_eq!(site.server.hits("/keel/keel-0.2.0.kbundle"), 1);
}

#[tokio::test]
async fn lying_expired_and_broken_feeds_and_downloads_arm_nothing() {
    let rig = rig();
    let site = site(&rig, BIG).await;
    let u = rig.start();
    u.put_settings(&settings(&site, None)).unwrap();
    let factory_b = rig.slot("b");

    // Without the extra CA the server is not trusted.
    let mut s = settings(&site, None);
    s.ca_certificate = None;
    u.put_settings(&s).unwrap();
    let e = u.check().await.unwrap_err();
    assert!(e.message.contains("no trusted CA certificates"), "{e}");
    u.put_settings(&settings(&site, None)).unwrap();

    // An expired feed: refused with the reason.
    let b2 = bundle(&rig, "0.2.0", None, &site.p2);
    let good_entry = entry("keel-0.2.0.kbundle", &b2);
    site.server
        .put(FEED, feed(&rig, vec![good_entry.clone()], -60 * 48, -60));
    let e = u.check().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Refused);
    assert!(
        e.message.contains("feed refused") && e.message.contains("expired"),
        "{e}"
    );

    // A feed that lies about the size (and one about the hash): refused once the
    // signed manifest is read, before a byte of the slot changes.
    for lie in ["size", "sha256"] {
        let mut e2 = good_entry.clone();
        match lie {
            "size" => e2.size += 1,
            _ => e2.sha256.0[0] ^= 1,
        }
        site.server.put(FEED, feed(&rig, vec![e2], -1, 60));
        let e = u.install_online("0.2.0", false).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadBundle, "{lie}: {e}");
        assert!(
            e.message.contains("is not the bundle the feed announced"),
            "{e}"
        );
        assert!(e.message.contains("nothing was written"), "{e}");
        rig.assert_not_armed();
        assert!(rig.slot("b") == factory_b, "{lie}: slot b untouched");
        assert_ne!(rig.state().slot("b").content, SlotContent::Invalid);
        assert_eq!(u.status().progress.phase, UpdatePhase::Idle);
    }

    // A server that sends more than the feed's bundle can be.
    let mut small = good_entry.clone();
    small.size = 1000;
    site.server.put(FEED, feed(&rig, vec![small], -1, 60));
    let e = u.install_online("0.2.0", false).await.unwrap_err();
    assert!(e.message.contains("more than a bundle"), "{e}");
    rig.assert_not_armed();

    // A 404 for the bundle.
    site.server
        .put(FEED, feed(&rig, vec![good_entry.clone()], -1, 60));
    site.server
        .files
        .lock()
        .unwrap()
        .remove("/keel/keel-0.2.0.kbundle");
    let e = u.install_online("0.2.0", false).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Network);
    assert!(e.message.contains("404"), "{e}");
    site.server.put("/keel/keel-0.2.0.kbundle", b2);

    // A proxy that drops the tunnel 1 MiB into the 5 MiB download.
    let dropping = DroppingProxy::start(1 << 20).await;
    u.put_settings(&settings(&site, Some(dropping.url())))
        .unwrap();
    let e = u.install_online("0.2.0", false).await.unwrap_err();
    assert!(e.message.contains("download interrupted"), "{e}");
    rig.assert_not_armed();
    let st = u.status();
    assert_eq!(st.progress.phase, UpdatePhase::Idle);
    assert!(st.progress.error.unwrap().contains("download interrupted"));
    // It had begun writing: the slot is recorded as holding nothing bootable.
    assert_eq!(rig.state().slot("b").content, SlotContent::Invalid);
    assert_eq!(st.other.version, None);

    // And the same download directly works afterwards.
    u.put_settings(&settings(&site, None)).unwrap();
    u.install_online("0.2.0", false).await.expect("install");
    assert_eq!(&rig.slot("b")[..site.p2.len()], &site.p2[..]);
}

/// The reboot after an armed step comes just after its answer.
async fn wait_reboots(rig: &Rig, n: u32) {
    let start = std::time::Instant::now();
    while rig.reboots.load(Ordering::SeqCst) < n {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no reboot {n}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(rig.reboots.load(Ordering::SeqCst), n);
}

/// GRUB boots the armed trial, keel-boot-ok marks it good, keel-update starts.
fn healthy_boot(rig: &Rig, slot: Slot, version: &str, boot: &str) -> Arc<Updater> {
    assert_eq!(rig.grub_boot(), slot);
    rig.set_boot(slot, version, boot);
    rig.env().mark_good(slot).unwrap();
    rig.start()
}

#[tokio::test]
async fn install_all_runs_the_chain_one_healthy_boot_at_a_time() {
    let rig = rig();
    let site = site(&rig, SMALL).await;
    let u = rig.start();
    u.put_settings(&settings(&site, None)).unwrap();

    let c = u.install_all().await.expect("install all");
    assert_eq!(c.steps, ["0.2.0", "0.3.0"]);
    assert_eq!(
        (c.done, c.current.as_deref(), c.state),
        (0, Some("0.2.0"), ChainState::Running)
    );
    wait_reboots(&rig, 1).await; // the first step reboots
    assert_eq!(rig.env().status().trial(), Some((Slot::B, 3)));
    let e = u.install_all().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Busy, "{e}");
    // keel-update restarting in the same boot does not go on.
    let u = rig.start();
    u.resume_chain().await;
    assert_eq!(rig.reboots.load(Ordering::SeqCst), 1);

    // Boot 2: 0.2.0 healthy → 0.3.0 goes into slot a.
    let u = healthy_boot(&rig, Slot::B, "0.2.0", "boot-2");
    u.resume_chain().await;
    let c = u.status().chain.unwrap();
    assert_eq!((c.done, c.current.as_deref()), (1, Some("0.3.0")), "{c:?}");
    wait_reboots(&rig, 2).await;
    assert_eq!(&rig.slot("a")[..site.p3.len()], &site.p3[..]);
    assert_eq!(rig.env().status().trial(), Some((Slot::A, 3)));

    // Boot 3: 0.3.0 healthy → done.
    let u = healthy_boot(&rig, Slot::A, "0.3.0", "boot-3");
    u.resume_chain().await;
    let c = u.status().chain.unwrap();
    assert_eq!((c.state, c.done), (ChainState::Done, 2), "{c:?}");
    assert_eq!(
        rig.reboots.load(Ordering::SeqCst),
        2,
        "no reboot after the last"
    );
    assert!(c.message.unwrap().contains("running 0.3.0"));
}

#[tokio::test]
async fn install_all_stops_at_a_step_that_fails_its_health_check() {
    let rig = rig();
    let site = site(&rig, SMALL).await;
    let u = rig.start();
    u.put_settings(&settings(&site, None)).unwrap();
    u.install_all().await.expect("install all");
    wait_reboots(&rig, 1).await;
    drop(u);
    // 0.2.0 never becomes healthy: three trial boots, then GRUB's fallback.
    for i in 0..3 {
        assert_eq!(rig.grub_boot(), Slot::B);
        rig.set_boot(Slot::B, "0.2.0", &format!("trial-{i}"));
    }
    assert_eq!(rig.grub_boot(), Slot::A);
    rig.set_boot(Slot::A, "0.1.0", "boot-back");
    let u = rig.start();
    u.resume_chain().await;
    let c = u.status().chain.unwrap();
    assert_eq!(c.state, ChainState::Failed, "{c:?}");
    let m = c.message.unwrap();
    assert!(
        m.contains("install all stopped at 0.2.0")
            && m.contains("failed its health check, running 0.1.0 again"),
        "{m}"
    );
    assert_eq!(
        rig.reboots.load(Ordering::SeqCst),
        1,
        "nothing more installed"
    );
    assert_eq!(site.server.hits("/keel/keel-0.3.0.kbundle"), 0);

    // A download error stops a chain too (recorded, with the reason).
    site.server.files.lock().unwrap().clear();
    let e = u.install_all().await.unwrap_err();
    assert!(
        e.message.contains("fetching the feed") && e.message.contains("404"),
        "{e}"
    );
}

#[tokio::test]
async fn download_key_is_answered_by_the_vendor_cli() {
    let rig = rig();
    let u = rig.start();
    let id_file = rig.cfg.identity_file();
    assert!(!id_file.exists());
    let dk = u.download_key().await.expect("download key");
    assert!(dk.text.starts_with("-----BEGIN KEEL DOWNLOAD KEY-----\n"));
    assert_eq!(dk.installed, ["base 0.1.0"]);
    let created =
        time::OffsetDateTime::parse(&dk.created, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let expires =
        time::OffsetDateTime::parse(&dk.expires, &time::format_description::well_known::Rfc3339)
            .unwrap();
    assert_eq!(expires - created, time::Duration::minutes(25));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&id_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // The same identity next time; a new one after a factory reset (no /data).
    let again = u.download_key().await.unwrap();
    assert_eq!(again.appliance_id, dk.appliance_id);

    // The vendor side: the real CLI over a directory of bundles.
    let vendor = rig.path("vendor");
    std::fs::create_dir_all(&vendor).unwrap();
    std::fs::write(
        vendor.join("keel-0.2.0.kbundle"),
        bundle(&rig, "0.2.0", None, &payload(SMALL, 2)),
    )
    .unwrap();
    std::fs::write(
        vendor.join("keel-0.3.0.kbundle"),
        bundle(&rig, "0.3.0", Some(">=0.2.0"), &payload(SMALL, 3)),
    )
    .unwrap();
    let key_file = rig.path("download-key.txt");
    std::fs::write(&key_file, &dk.text).unwrap();
    let out = std::process::Command::new(keel_bundle_cli())
        .arg("answer")
        .arg("--download-key")
        .arg(&key_file)
        .arg("--bundles")
        .arg(&vendor)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("Appliance {}", dk.appliance_id)),
        "{stdout}"
    );
    let first = stdout.find("1. keel-0.2.0.kbundle").expect(&stdout);
    let second = stdout.find("2. keel-0.3.0.kbundle").expect(&stdout);
    assert!(first < second);

    // A damaged block is refused by the CLI.
    let damaged = dk.text.replacen('A', "B", 1).replacen('Q', "R", 1);
    std::fs::write(&key_file, damaged).unwrap();
    let out = std::process::Command::new(keel_bundle_cli())
        .args(["answer", "--download-key"])
        .arg(&key_file)
        .arg("--bundles")
        .arg(&vendor)
        .output()
        .unwrap();
    assert!(!out.status.success());

    std::fs::remove_dir_all(rig.path("data")).unwrap();
    let u = rig.start();
    let fresh = u.download_key().await.unwrap();
    assert_ne!(
        fresh.appliance_id, dk.appliance_id,
        "a reset makes a new identity"
    );
}

/// The workspace's `keel-bundle` binary, built if needed (it is another package's).
fn keel_bundle_cli() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = std::process::Command::new(cargo)
                .args(["build", "-q", "-p", "keel-bundle", "--bin", "keel-bundle"])
                .status()
                .expect("cargo build keel-bundle");
            assert!(st.success());
            // target/debug/deps/online-... → target/debug/keel-bundle
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().join("keel-bundle")
        })
        .clone()
}
