//! `keelctl failover` against the real keel-failover, started unpaired in a
//! temporary directory: show, the key (set from stdin and from the environment,
//! refused when too short), establish refused with keel-failover's reason,
//! break without --yes, DNS swing shown, set field by field and refused with the
//! field named.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{text, workspace_bin, Daemon};

/// keel-failover with no relationship, its pairing port on loopback.
fn start(dir: &Path) -> Daemon {
    let port = common::free_port();
    std::fs::create_dir_all(dir.join("root")).unwrap();
    let mut cmd = Command::new(workspace_bin("keel-failover"));
    cmd.arg("--config")
        .arg(dir.join("config.json"))
        .arg("--data-dir")
        .arg(dir)
        .arg("--socket")
        .arg(dir.join("api.sock"))
        .arg("--pair-listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--sync-root")
        .arg(dir.join("root"));
    let mut d = Daemon::spawn(cmd, dir.join("log"));
    d.wait_until("keel-failover", || {
        dir.join("api.sock").exists()
            && keelctl(dir, &["failover", "show"], None, None)
                .status
                .success()
    });
    d
}

fn keelctl(dir: &Path, args: &[&str], stdin: Option<&str>, env_psk: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keelctl"));
    cmd.arg("failover")
        .arg("--socket")
        .arg(dir.join("api.sock"))
        .arg("--netd-socket")
        .arg(dir.join("no-netd.sock"))
        .args(&args[1..])
        .env_remove("KEEL_FAILOVER_PSK")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(v) = env_psk {
        cmd.env("KEEL_FAILOVER_PSK", v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

#[test]
fn failover_commands_against_keel_failover() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _daemon = start(d);

    let o = keelctl(d, &["failover", "show"], None, None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("pair:      none"), "{}", text(&o));
    let o = keelctl(d, &["failover", "show", "--json"], None, None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["peer"].is_null() && v["fingerprint"].as_str().unwrap().len() == 64,
        "{v}"
    );

    // The key from stdin, then from the environment; shown back by `psk show`.
    let a = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="; // 32 × 'A'
    let o = keelctl(
        d,
        &["failover", "psk", "set"],
        Some(&format!("{a}\n")),
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = keelctl(d, &["failover", "psk", "show"], None, None);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), a);
    let b = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="; // 32 × 'B'
    let o = keelctl(d, &["failover", "psk", "set"], Some("ignored"), Some(b));
    assert!(o.status.success(), "{}", text(&o));
    let o = keelctl(d, &["failover", "psk", "show"], None, None);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), b);

    // Too short: refused with the reason, the stored key kept.
    let o = keelctl(d, &["failover", "psk", "set"], Some("c2hvcnQ="), None);
    assert!(!o.status.success());
    assert!(!text(&o).trim().is_empty());
    let o = keelctl(d, &["failover", "psk", "show"], None, None);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), b);

    let o = keelctl(d, &["failover", "psk", "generate"], None, None);
    assert!(o.status.success(), "{}", text(&o));
    let made = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(!made.is_empty() && made != b);

    // Establish with a malformed peer address: keel-failover's reason, non-zero.
    let o = keelctl(
        d,
        &[
            "failover",
            "establish",
            "--peer",
            "10.0.0.300:7947",
            "--reverse",
            "127.0.0.1:7947",
            "--shared",
            "192.0.2.100/24",
            "--interface",
            "lo",
        ],
        None,
        None,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("10.0.0.300"), "{}", text(&o));
    // Without --shared the addresses come from netd; no netd here says so.
    let o = keelctl(
        d,
        &[
            "failover",
            "establish",
            "--peer",
            "127.0.0.1:9",
            "--reverse",
            "127.0.0.1:9",
        ],
        None,
        None,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("keel-netd"), "{}", text(&o));

    // DNS swing: off until set; `dns set` changes only what it is given.
    let dns_json = |d: &Path| {
        let o = keelctl(d, &["failover", "dns", "--json"], None, None);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    assert_eq!(dns_json(d)["enabled"], false);
    let listen = format!("127.0.0.1:{}", common::free_port());
    let o = keelctl(
        d,
        &[
            "failover",
            "dns",
            "set",
            "--enable",
            "--name",
            "Portal.Example.TEST",
            "--ttl",
            "9",
            "--this-node",
            "192.0.2.10",
            "--peer-node",
            "198.51.100.20, 2001:db8::20",
            "--nameservers",
            "ns-a.example.net,ns-b.example.net",
            "--listen",
            &listen,
        ],
        None,
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    let v = dns_json(d);
    assert_eq!(
        v,
        serde_json::json!({
            "enabled": true, "name": "portal.example.test", "ttl": 9,
            "this_node": ["192.0.2.10"], "peer_node": ["198.51.100.20", "2001:db8::20"],
            "nameservers": ["ns-a.example.net", "ns-b.example.net"], "listen": [listen],
        }),
        "{v}"
    );
    // Unpaired, no engine runs, so neither does the server: the text says so.
    let o = keelctl(d, &["failover", "dns"], None, None);
    assert!(o.status.success(), "{}", text(&o));
    for want in [
        "dns swing:   on",
        "name:        portal.example.test",
        "peer node:   198.51.100.20, 2001:db8::20",
        "not answering: the server runs while the takeover engine does",
    ] {
        assert!(text(&o).contains(want), "{want:?} in {}", text(&o));
    }
    let o = keelctl(d, &["failover", "dns", "set", "--ttl", "30"], None, None);
    assert!(o.status.success(), "{}", text(&o));
    let mut want = v.clone();
    want["ttl"] = 30.into();
    assert_eq!(dns_json(d), want, "only the TTL changed");
    // Refused values: keel-failover's reason naming the field, non-zero, nothing
    // changed.
    for (args, reason) in [
        (&["--ttl", "0"][..], "ttl: 0 s: 1-300 s"),
        (
            &["--this-node", "192.0.2.10,300.1.1.1"][..],
            "this_node: [1] \"300.1.1.1\"",
        ),
        (
            &["--name", "bad_name.example"][..],
            "name: \"bad_name.example\" is not a DNS hostname",
        ),
        (&["--name", ""][..], "name: the site hostname is required"),
    ] {
        let o = keelctl(
            d,
            &[&["failover", "dns", "set"][..], args].concat(),
            None,
            None,
        );
        assert!(!o.status.success(), "{args:?} accepted: {}", text(&o));
        assert!(text(&o).contains(reason), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("DNS swing not changed"), "{}", text(&o));
    }
    assert_eq!(dns_json(d), want, "a refused change changed something");
    let o = keelctl(
        d,
        &["failover", "dns", "set", "--disable", "--json"],
        None,
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    let off: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(off["enabled"], false, "{off}");
    assert_eq!(off["name"], "portal.example.test", "{off}");

    let o = keelctl(d, &["failover", "break"], None, None);
    assert!(!o.status.success());
    assert!(text(&o).contains("--yes"), "{}", text(&o));
    let o = keelctl(d, &["failover", "show", "--json"], None, None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["peer"].is_null(), "{v}");
}
