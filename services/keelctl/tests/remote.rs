//! `keelctl --url` against the real keel-console on loopback (and the real
//! keel-netd in a network namespace behind it, when root): trust only by pinned
//! fingerprint or CA, the token in the header, the console's answers and refusals
//! passed through, `net ntp` + `net confirm` through the console.

mod common;

use common::{keelctl, text};

#[tokio::test(flavor = "multi_thread")]
async fn keelctl_drives_a_remote_console() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let netd = common::can_netns().then(|| common::netd(d, "keelctl-remote"));
    let console = common::console(d, &d.join("netd.sock")).await;
    let url = console.base.as_str();
    let fp = console.fingerprint.as_str();
    let token = console.token.as_str();
    let pinned = |args: &[&str]| {
        let mut all = vec!["--url", url, "--fingerprint", fp];
        all.extend_from_slice(args);
        keelctl(&all, &[("KEEL_TOKEN", token)])
    };

    // Unverified certificate: refused with its fingerprint and how to pin it.
    let o = keelctl(&["--url", url, "status"], &[("KEEL_TOKEN", token)]);
    assert!(!o.status.success());
    let colons = fp
        .as_bytes()
        .chunks(2)
        .map(|p| String::from_utf8_lossy(p).to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    assert!(
        text(&o).contains(&colons) && text(&o).contains(&format!("--fingerprint {fp}")),
        "{}",
        text(&o)
    );
    // Another certificate pinned: refused before anything is sent.
    let wrong = "00".repeat(32);
    let o = keelctl(
        &["--url", url, "--fingerprint", &wrong, "status"],
        &[("KEEL_TOKEN", token)],
    );
    assert!(!o.status.success(), "{}", text(&o));
    // No token: says where one comes from.
    let o = keelctl(&["--url", url, "--fingerprint", fp, "status"], &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("API tokens"), "{}", text(&o));
    // A wrong token: the console's refusal.
    let o = keelctl(
        &["--url", url, "--fingerprint", fp, "status"],
        &[(
            "KEEL_TOKEN",
            "keel_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("unknown or revoked"), "{}", text(&o));

    // Pinned, by option and by environment; also trusted through its certificate
    // as the CA.
    let o = pinned(&["status"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("sha256:"), "{}", text(&o));
    let o = keelctl(
        &["status", "--json"],
        &[
            ("KEEL_TOKEN", token),
            ("KEEL_URL", url),
            ("KEEL_FINGERPRINT", fp),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let served: String = s["certificate"]["sha256_fingerprint"]
        .as_str()
        .unwrap()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    assert!(served.eq_ignore_ascii_case(fp), "{s}");
    let ca = console.cert_pem.to_str().unwrap();
    let o = keelctl(
        &["--url", &console.by_name, "--ca-cert", ca, "status"],
        &[("KEEL_TOKEN", token)],
    );
    assert!(o.status.success(), "{}", text(&o));

    // A change without CSRF: the reboot request lands where root picks it up.
    let o = pinned(&["reboot"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(console.requests.join("reboot").exists());

    // Services the console calls but this test does not run: their absence comes
    // back as the console says it.
    for cmd in [
        &["update", "status"][..],
        &["failover", "show"],
        &["time", "status"],
    ] {
        let o = pinned(cmd);
        assert!(!o.status.success(), "{cmd:?}");
        assert!(text(&o).contains("unavailable"), "{cmd:?}: {}", text(&o));
    }
    // What only the box itself can do.
    let o = pinned(&["certs", "list"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("appliance itself only"), "{}", text(&o));

    let Some((_ns, _netd)) = netd else {
        eprintln!("SKIPPED: net show/ntp/confirm need root and iproute2 for keel-netd's namespace");
        return;
    };
    let o = pinned(&["net", "show"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("interface: eth0 static 10.0.0.2/24"),
        "{}",
        text(&o)
    );
    // Bad input: netd's refusal, nothing pending.
    let o = pinned(&["net", "ntp", "not a host!"]);
    assert!(!o.status.success(), "{}", text(&o));
    let o = pinned(&[
        "net",
        "ntp",
        "192.0.2.123",
        "ntp.example.net",
        "--confirm-seconds",
        "300",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("unless confirmed"), "{}", text(&o));
    let o = pinned(&["net", "show"]);
    assert!(
        text(&o).contains("ntp:       192.0.2.123 ntp.example.net"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("PENDING"), "{}", text(&o));
    let o = pinned(&["net", "confirm"]);
    assert!(o.status.success(), "{}", text(&o));
    let saved = std::fs::read_to_string(d.join("data/net/ntp-servers.json")).unwrap();
    assert!(saved.contains("192.0.2.123"), "{saved}");
    let o = pinned(&["net", "show"]);
    assert!(!text(&o).contains("PENDING"), "{}", text(&o));
    // The address stayed.
    assert!(text(&o).contains("10.0.0.2/24"), "{}", text(&o));
}
