//! The example playbook (examples/ansible/keel-ntp.yml) run by Debian's
//! ansible-playbook against the real keel-console on loopback, with the real
//! keel-netd in a network namespace behind it: status read, NTP servers set and
//! confirmed with an API token, the appliance's certificate verified as the CA;
//! a bad server name fails the play and changes nothing.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn playbook(dir: &Path, console: &common::Console, servers: &[&str]) -> Output {
    let inventory = dir.join("inventory.ini");
    std::fs::write(
        &inventory,
        format!("[keel]\ntest-appliance keel_url={}\n", console.by_name),
    )
    .unwrap();
    let extra =
        serde_json::json!({"keel_ntp_servers": servers, "keel_confirm_seconds": 300}).to_string();
    let book = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/ansible/keel-ntp.yml");
    Command::new("ansible-playbook")
        .arg("-i")
        .arg(&inventory)
        .arg("-e")
        .arg(extra)
        .arg(book)
        .env("KEEL_TOKEN", &console.token)
        .env("KEEL_CA_CERT", &console.cert_pem)
        // Ansible's own state stays in the test's directory.
        .env("HOME", dir)
        .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
        .env("ANSIBLE_NOCOLOR", "1")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_playbook_sets_ntp_servers() {
    if Command::new("ansible-playbook")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIPPED: ansible-playbook is not installed (Debian ansible-core; scripts/deps.sh)"
        );
        return;
    }
    if !common::can_netns() {
        eprintln!("SKIPPED: needs root and iproute2 for keel-netd's network namespace");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_ns, _netd) = common::netd(d, "keelctl-ansible");
    let console = common::console(d, &d.join("netd.sock")).await;

    let o = playbook(d, &console, &["192.0.2.123", "ntp.example.net"]);
    let out = common::text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("Keel "), "status read: {out}");
    assert!(out.contains("changed=1"), "{out}");
    let saved = std::fs::read_to_string(d.join("data/net/ntp-servers.json")).unwrap();
    assert!(
        saved.contains("192.0.2.123") && saved.contains("ntp.example.net"),
        "confirmed and saved: {saved}"
    );
    // Nothing pending any more.
    let o = common::keelctl(
        &[
            "--url",
            &console.base,
            "--fingerprint",
            &console.fingerprint,
            "net",
            "show",
        ],
        &[("KEEL_TOKEN", &console.token)],
    );
    assert!(
        !common::text(&o).contains("PENDING"),
        "{}",
        common::text(&o)
    );

    // A second run that changes nothing (changed=0) is the QEMU test's
    // (qemu-tests/tests/console_browser.rs, against the booted image): ansible
    // takes ~25 s a run here.

    // A bad server name: the appliance's refusal fails the play, nothing pending.
    let o = playbook(d, &console, &["not a host!"]);
    assert!(!o.status.success(), "{}", common::text(&o));
    let saved = std::fs::read_to_string(d.join("data/net/ntp-servers.json")).unwrap();
    assert!(saved.contains("192.0.2.123"), "{saved}");
}
