//! netd against real kernels' networking: each test builds a network namespace with
//! veth pairs, runs netd's apply inside it, and checks the result with `ip -j`
//! (not with netd's own view).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Netns;
use keel_api::{NetChangeRequest, NetConfig};
use keel_netd::kernel::Kernel;
use keel_netd::service::{Netd, NetdError, Settings};

fn cfg(json: serde_json::Value) -> NetConfig {
    serde_json::from_value(json).unwrap()
}

/// A namespace with `eth0` (and `eth1`) wired to peers in the same namespace.
fn two_port_ns(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.veth("eth0", "peer0", None);
    ns.veth("eth1", "peer1", None);
    ns
}

fn settings(dir: &Path) -> Settings {
    Settings::new(&dir.join("data"), &dir.join("run"))
}

/// Writes `c` as the confirmed configuration netd starts from.
fn seed(dir: &Path, c: &NetConfig) {
    let p = dir.join("data/net/config.json");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, serde_json::to_vec(c).unwrap()).unwrap();
}

fn change(c: NetConfig, secs: u64) -> NetChangeRequest {
    NetChangeRequest {
        config: c,
        owner: "test".into(),
        confirm_seconds: Some(secs),
    }
}

fn base() -> NetConfig {
    cfg(serde_json::json!({
        "interfaces": [
            {"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/24"]},
            {"name": "eth1", "mode": "static", "addresses": []}
        ]
    }))
}

fn rich() -> NetConfig {
    cfg(serde_json::json!({
        "interfaces": [
            {"name": "eth0", "mode": "static", "mtu": 1400,
             "addresses": ["192.0.2.10/24", "192.0.2.11/24", "2001:db8:1::10/64"],
             "shared_address": "192.0.2.100/24"},
            {"name": "eth1", "mode": "static", "addresses": ["198.51.100.5/24"]}
        ],
        "gateway4": "192.0.2.1",
        "gateway6": "2001:db8:1::1",
        "routes": [{"destination": "10.20.0.0/16", "gateway": "198.51.100.1"},
                   {"destination": "2001:db8:99::/48", "gateway": "2001:db8:1::fe", "metric": 50}],
        "dns": {"servers": ["192.0.2.53"], "search": ["example.org"]},
        "hostname": "edge-1",
        "ntp_servers": ["ntp1.example.org", "192.0.2.123"]
    }))
}

#[test]
fn static_addresses_routes_and_gateways_reach_the_kernel() {
    need_netns!();
    let ns = two_port_ns("static");
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), &base());
    let s = settings(dir.path());
    let data = dir.path().join("data");
    keel_netd::netns::run_in(&ns.path(), move || async move {
        let netd = Netd::start(s, Kernel::connect().unwrap()).await.unwrap();
        netd.propose(change(rich(), 60)).await.unwrap();
        netd.confirm("test").await.unwrap();
    })
    .unwrap();

    let mut a0 = ns.addresses("eth0");
    a0.sort();
    assert_eq!(
        a0,
        ["192.0.2.10/24", "192.0.2.11/24", "2001:db8:1::10/64"],
        "the shared address is never brought up"
    );
    assert_eq!(ns.addresses("eth1"), ["198.51.100.5/24"]);
    let l0 = ns.link("eth0");
    assert_eq!(l0["mtu"], 1400);
    assert!(
        l0["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{l0}"
    );
    let r4 = ns.routes(false);
    for want in [
        "default via 192.0.2.1 dev eth0 proto 77",
        "10.20.0.0/16 via 198.51.100.1 dev eth1 proto 77",
    ] {
        assert!(r4.iter().any(|r| r == want), "{want:?} in {r4:?}");
    }
    let r6 = ns.routes(true);
    for want in [
        "default via 2001:db8:1::1 dev eth0 proto 77",
        "2001:db8:99::/48 via 2001:db8:1::fe dev eth0 proto 77",
    ] {
        assert!(r6.iter().any(|r| r == want), "{want:?} in {r6:?}");
    }
    // Confirmed: on disk, and the NTP list for keel-timed.
    let saved = keel_netd::files::read_config(&data.join("net/config.json"))
        .unwrap()
        .unwrap();
    assert_eq!(saved.hostname, "edge-1");
    let ntp: serde_json::Value = keel_netd::files::NTP_SERVERS
        .read(&data.join("net/ntp-servers.json"))
        .unwrap()
        .unwrap();
    assert_eq!(
        ntp,
        serde_json::json!({"servers": ["ntp1.example.org", "192.0.2.123"]})
    );
}

#[test]
fn unconfirmed_change_reverts_after_the_window() {
    need_netns!();
    let ns = two_port_ns("revert");
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), &base());
    let s = settings(dir.path());
    let path = ns.path();
    let name = ns.name.clone();
    let (applied, reverted) = keel_netd::netns::run_in(&path, move || async move {
        let netd = Netd::start(s, Kernel::connect().unwrap()).await.unwrap();
        let mut next = base();
        next.interfaces[0].addresses = vec!["10.0.0.3/24".parse().unwrap()];
        next.gateway4 = Some("10.0.0.1".parse().unwrap());
        // From before the proposal: the window runs from its apply, and the
        // `ip` run below may take a while on a busy host.
        let t0 = Instant::now();
        let p = netd.propose(change(next, 2)).await.unwrap();
        assert_eq!(p.window_seconds, 2);
        assert!(p.seconds_left <= 2);
        let applied = addresses_of(&name, "eth0");
        // Poll the kernel until the old address is back.
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if addresses_of(&name, "eth0") == ["10.0.0.2/24"]
                || t0.elapsed() > Duration::from_secs(10)
            {
                break;
            }
        }
        assert!(netd.pending().await.is_none(), "no longer pending");
        let err = netd.confirm("test").await.unwrap_err();
        assert!(matches!(err, NetdError::Conflict(_)), "{err}");
        (applied, t0.elapsed())
    })
    .unwrap();
    assert_eq!(applied, ["10.0.0.3/24"], "applied at once");
    assert_eq!(ns.addresses("eth0"), ["10.0.0.2/24"], "reverted");
    assert!(
        ns.routes(false).is_empty(),
        "the gateway went with it: {:?}",
        ns.routes(false)
    );
    assert!(
        reverted >= Duration::from_millis(1500) && reverted < Duration::from_secs(8),
        "reverted after {reverted:?}"
    );
    let saved = keel_netd::files::read_config(&dir.path().join("data/net/config.json"))
        .unwrap()
        .unwrap();
    assert_eq!(saved, base(), "the file was never touched");
}

fn addresses_of(ns: &str, dev: &str) -> Vec<String> {
    common::addresses(ns, dev)
}

#[test]
fn confirmed_change_stays_and_cancel_reverts_at_once() {
    need_netns!();
    let ns = two_port_ns("confirm");
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), &base());
    let s = settings(dir.path());
    let name = ns.name.clone();
    keel_netd::netns::run_in(&ns.path(), move || async move {
        let netd = Netd::start(s, Kernel::connect().unwrap()).await.unwrap();
        let mut next = base();
        next.interfaces[0].addresses = vec!["10.0.0.4/24".parse().unwrap()];
        netd.propose(change(next.clone(), 2)).await.unwrap();
        // Only the front end that made the change may confirm it.
        let err = netd.confirm("console").await.unwrap_err();
        assert!(matches!(err, NetdError::NotOwner(_)), "{err}");
        // A second change waits for the first.
        let err = netd.propose(change(base(), 2)).await.unwrap_err();
        assert!(matches!(err, NetdError::Conflict(_)), "{err}");
        netd.confirm("test").await.unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            addresses_of(&name, "eth0"),
            ["10.0.0.4/24"],
            "kept past the window"
        );

        // Cancel: the confirmed configuration is back without waiting.
        let mut third = next.clone();
        third.interfaces[1].addresses = vec!["10.1.0.4/24".parse().unwrap()];
        netd.propose(change(third, 60)).await.unwrap();
        assert_eq!(addresses_of(&name, "eth1"), ["10.1.0.4/24"]);
        netd.cancel("test").await.unwrap();
        assert!(addresses_of(&name, "eth1").is_empty());
        assert_eq!(addresses_of(&name, "eth0"), ["10.0.0.4/24"]);
    })
    .unwrap();
    let saved = keel_netd::files::read_config(&dir.path().join("data/net/config.json"))
        .unwrap()
        .unwrap();
    assert_eq!(saved.interfaces[0].addresses[0].to_string(), "10.0.0.4/24");
}

#[test]
fn every_validation_error_leaves_the_kernel_alone() {
    need_netns!();
    let ns = two_port_ns("invalid");
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), &base());
    let s = settings(dir.path());
    keel_netd::netns::run_in(&ns.path(), move || async move {
        let netd = Netd::start(s, Kernel::connect().unwrap()).await.unwrap();
        let cases: Vec<(serde_json::Value, &str)> = vec![
            // overlapping subnets
            (
                serde_json::json!({"interfaces": [
                {"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/24"]},
                {"name": "eth1", "mode": "static", "addresses": ["10.0.0.130/25"]}]}),
                "interfaces[1].addresses[0]",
            ),
            // gateway outside every connected subnet
            (
                serde_json::json!({"interfaces": [
                {"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/24"]}],
                "gateway4": "10.9.0.1"}),
                "gateway4",
            ),
            // duplicate addresses
            (
                serde_json::json!({"interfaces": [
                {"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/24"]},
                {"name": "eth1", "mode": "static", "addresses": ["10.0.0.2/24"]}]}),
                "interfaces[1].addresses[0]",
            ),
            // hostile hostname
            (
                serde_json::json!({"interfaces": [
                {"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/24"]}],
                "hostname": "x;reboot"}),
                "hostname",
            ),
            // no address left for the console
            (
                serde_json::json!({"interfaces": [
                {"name": "eth0", "mode": "static", "addresses": []},
                {"name": "eth1", "enabled": false, "mode": "dhcp"}]}),
                "interfaces",
            ),
            // unknown interface
            (
                serde_json::json!({"interfaces": [
                {"name": "eth9", "mode": "static", "addresses": ["10.0.0.2/24"]}]}),
                "interfaces[0].name",
            ),
        ];
        for (json, field) in cases {
            let err = netd
                .propose(change(cfg(json.clone()), 2))
                .await
                .unwrap_err();
            match &err {
                NetdError::Invalid(v) => assert_eq!(v.fields(), [field], "{json}: {err}"),
                other => panic!("{json}: {other}"),
            }
            assert!(netd.pending().await.is_none());
        }
    })
    .unwrap();
    assert_eq!(ns.addresses("eth0"), ["10.0.0.2/24"]);
    assert!(ns.addresses("eth1").is_empty());
}

#[test]
fn static_to_dhcp_hands_the_link_to_networkd() {
    need_netns!();
    let ns = two_port_ns("handover");
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), &base());
    let mut s = settings(dir.path());
    let nd = dir.path().join("network");
    s.files.networkd_dir = Some(nd.clone());
    s.files.reload_request = Some(dir.path().join("reload-request"));
    keel_netd::netns::run_in(&ns.path(), move || async move {
        let netd = Netd::start(s, Kernel::connect().unwrap()).await.unwrap();
        let mut next = base();
        next.interfaces[0].mode = keel_api::AddressMode::Dhcp;
        next.interfaces[0].addresses = vec!["169.254.1.1/16".parse().unwrap()];
        next.interfaces[1].addresses = vec!["10.1.0.2/24".parse().unwrap()];
        netd.propose(change(next, 60)).await.unwrap();
        netd.confirm("test").await.unwrap();
    })
    .unwrap();
    // netd took its static address off eth0; networkd gets the link (and the fallback).
    assert!(
        ns.addresses("eth0").is_empty(),
        "{:?}",
        ns.addresses("eth0")
    );
    assert_eq!(ns.addresses("eth1"), ["10.1.0.2/24"]);
    let f0 = std::fs::read_to_string(nd.join("10-keel-netd-eth0.network")).unwrap();
    assert!(
        f0.contains("DHCP=yes") && f0.contains("Address=169.254.1.1/16"),
        "{f0}"
    );
    let f1 = std::fs::read_to_string(nd.join("10-keel-netd-eth1.network")).unwrap();
    assert!(f1.contains("Unmanaged=yes"), "{f1}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("reload-request")).unwrap(),
        "networkd\n"
    );
}

#[test]
fn factory_default_is_dhcp_with_the_fallback_on_the_first_port() {
    need_netns!();
    let ns = two_port_ns("default");
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    let nd = dir.path().join("network");
    s.files.networkd_dir = Some(nd.clone());
    let state = keel_netd::netns::run_in(&ns.path(), move || async move {
        let netd = Netd::start(s, Kernel::connect().unwrap()).await.unwrap();
        netd.state().await.unwrap()
    })
    .unwrap();
    assert_eq!(state.source, "default");
    let names: Vec<&str> = state
        .running
        .interfaces
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(names, ["eth0", "eth1"], "the peers are not wired ports");
    let f0 = std::fs::read_to_string(nd.join("10-keel-netd-eth0.network")).unwrap();
    assert!(f0.contains("Address=169.254.1.1/16"), "{f0}");
    let f1 = std::fs::read_to_string(nd.join("10-keel-netd-eth1.network")).unwrap();
    assert!(f1.contains("DHCP=yes") && !f1.contains("Address="), "{f1}");
    assert!(
        !dir.path().join("data/net/config.json").exists(),
        "nothing confirmed yet"
    );
}

/// `base()` plus VLAN 100 on eth0, static, with an address, an MTU and a route.
fn with_vlan() -> NetConfig {
    cfg(serde_json::json!({
        "interfaces": [
            {"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/24"]},
            {"name": "eth1", "mode": "static", "addresses": []},
            {"name": "eth0.100", "mode": "static", "mtu": 1400,
             "addresses": ["192.0.2.10/24", "2001:db8:100::10/64"]}
        ],
        "vlans": [{"parent": "eth0", "id": 100}],
        "routes": [{"destination": "10.100.0.0/16", "gateway": "192.0.2.1"}]
    }))
}

/// A VLAN made by hand (`common::vlans` form): netd never touches it.
const HAND: &str = "eth1.5 eth1 5 -";

#[test]
fn vlan_is_created_addressed_and_removed_on_revert_and_cancel() {
    need_vlans!();
    let ns = two_port_ns("vlan");
    // A VLAN made by hand: netd never touches it.
    ns.ip(&[
        "link", "add", "link", "eth1", "name", "eth1.5", "type", "vlan", "id", "5",
    ]);
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), &base());
    let mut s = settings(dir.path());
    let nd = dir.path().join("network");
    s.files.networkd_dir = Some(nd.clone());
    let name = ns.name.clone();
    keel_netd::netns::run_in(&ns.path(), move || async move {
        let netd = Netd::start(s, Kernel::connect().unwrap()).await.unwrap();

        // Applied at once: the link, its ID and parent, netd's mark, address, MTU, route.
        netd.propose(change(with_vlan(), 60)).await.unwrap();
        assert_eq!(common::vlans(&name), ["eth0.100 eth0 100 keel-netd", HAND]);
        let mut a = addresses_of(&name, "eth0.100");
        a.sort();
        assert_eq!(a, ["192.0.2.10/24", "2001:db8:100::10/64"]);
        let l = link_of(&name, "eth0.100");
        assert_eq!(l["mtu"], 1400);
        assert!(
            l["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "{l}"
        );
        assert!(
            routes_of(&name).contains(&"10.100.0.0/16 via 192.0.2.1 dev eth0.100 proto 77".into()),
            "{:?}",
            routes_of(&name)
        );
        let f = std::fs::read_to_string(nd.join("10-keel-netd-eth0.100.network")).unwrap();
        assert!(
            f.contains("Name=eth0.100\n") && f.contains("Unmanaged=yes"),
            "{f}"
        );
        // The running state shows it as a link of kind vlan, not as a wired port.
        let st = netd.state().await.unwrap();
        let k = st.links.iter().find(|l| l.name == "eth0.100").unwrap();
        assert_eq!(k.kind.as_deref(), Some("vlan"));
        assert!(!k.wired);

        // Cancel: gone at once, with its route; the hand-made VLAN stays.
        netd.cancel("test").await.unwrap();
        assert_eq!(common::vlans(&name), [HAND]);
        assert!(routes_of(&name).is_empty(), "{:?}", routes_of(&name));
        assert_eq!(addresses_of(&name, "eth0"), ["10.0.0.2/24"]);

        // Not confirmed: gone when the window ends.
        netd.propose(change(with_vlan(), 1)).await.unwrap();
        assert_eq!(common::vlans(&name).len(), 2);
        let t0 = Instant::now();
        while netd.pending().await.is_some() {
            assert!(t0.elapsed() < Duration::from_secs(5), "not reverted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(common::vlans(&name), [HAND]);

        // Confirmed; then a change that drops it, cancelled: it comes back, addressed.
        netd.propose(change(with_vlan(), 60)).await.unwrap();
        netd.confirm("test").await.unwrap();
        netd.propose(change(base(), 60)).await.unwrap();
        assert_eq!(common::vlans(&name), [HAND]);
        assert!(!nd.join("10-keel-netd-eth0.100.network").exists());
        netd.cancel("test").await.unwrap();
        assert_eq!(common::vlans(&name), ["eth0.100 eth0 100 keel-netd", HAND]);
        let mut a = addresses_of(&name, "eth0.100");
        a.sort();
        assert_eq!(a, ["192.0.2.10/24", "2001:db8:100::10/64"]);

        // Another ID under the same name: netd replaces its own link.
        let mut next = with_vlan();
        next.vlans[0].id = 200;
        next.vlans[0].name = Some("eth0.100".into());
        netd.propose(change(next, 60)).await.unwrap();
        assert_eq!(common::vlans(&name), ["eth0.100 eth0 200 keel-netd", HAND]);
        assert_eq!(addresses_of(&name, "eth0.100").len(), 2);
        netd.cancel("test").await.unwrap();
        assert_eq!(common::vlans(&name), ["eth0.100 eth0 100 keel-netd", HAND]);

        // A DHCP VLAN: netd makes the link and brings it up; networkd gets the file.
        let mut dhcp = with_vlan();
        dhcp.interfaces.push(
            serde_json::from_value(serde_json::json!({"name": "guest", "mode": "dhcp"})).unwrap(),
        );
        dhcp.vlans.push(keel_api::VlanConfig {
            name: Some("guest".into()),
            parent: "eth1".into(),
            id: 7,
        });
        netd.propose(change(dhcp, 60)).await.unwrap();
        assert!(common::vlans(&name).contains(&"guest eth1 7 keel-netd".to_string()));
        let l = link_of(&name, "guest");
        assert!(
            l["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "{l}"
        );
        let f = std::fs::read_to_string(nd.join("10-keel-netd-guest.network")).unwrap();
        assert!(f.contains("Name=guest\n") && f.contains("DHCP=yes"), "{f}");
        netd.cancel("test").await.unwrap();
        assert!(!common::vlans(&name).iter().any(|v| v.starts_with("guest ")));
    })
    .unwrap();
    // Confirmed before: it stays, and the hand-made one too.
    assert_eq!(
        ns.vlans(),
        ["eth0.100 eth0 100 keel-netd", "eth1.5 eth1 5 -"]
    );
}

fn link_of(ns: &str, dev: &str) -> serde_json::Value {
    let out = common::run(
        std::process::Command::new("ip").args(["-j", "-n", ns, "link", "show", "dev", dev]),
    );
    serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
}

fn routes_of(ns: &str) -> Vec<String> {
    let out = common::run(std::process::Command::new("ip").args(["-j", "-n", ns, "route", "show"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["gateway"].is_string())
        .map(|r| {
            format!(
                "{} via {} dev {} proto {}",
                r["dst"].as_str().unwrap_or_default(),
                r["gateway"].as_str().unwrap_or_default(),
                r["dev"].as_str().unwrap_or_default(),
                r["protocol"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| r["protocol"].to_string())
            )
        })
        .collect()
}

#[test]
fn a_vlan_left_by_a_netd_that_died_goes_at_the_next_start() {
    need_vlans!();
    let ns = two_port_ns("vlan-restart");
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), &base());
    let s = settings(dir.path());
    let s2 = s.clone();
    keel_netd::netns::run_in(&ns.path(), move || async move {
        let netd = Netd::start(s, Kernel::connect().unwrap()).await.unwrap();
        netd.propose(change(with_vlan(), 60)).await.unwrap();
        // Dropped while pending, as a crash would: nothing reverts.
    })
    .unwrap();
    assert_eq!(ns.vlans(), ["eth0.100 eth0 100 keel-netd"]);
    keel_netd::netns::run_in(&ns.path(), move || async move {
        Netd::start(s2, Kernel::connect().unwrap()).await.unwrap();
    })
    .unwrap();
    assert!(ns.vlans().is_empty(), "{:?}", ns.vlans());
    assert_eq!(ns.addresses("eth0"), ["10.0.0.2/24"]);
}

#[test]
fn bad_vlan_configs_are_refused_naming_the_field_and_change_nothing() {
    need_netns!();
    let ns = two_port_ns("vlan-invalid");
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), &base());
    let s = settings(dir.path());
    // Where the kernel has VLANs, one made by hand must not be taken over either.
    let hand = common::vlan_unavailable().is_none();
    if hand {
        ns.ip(&[
            "link", "add", "link", "eth1", "name", "eth1.5", "type", "vlan", "id", "5",
        ]);
    }
    let before = ns.links_detailed().len();
    keel_netd::netns::run_in(&ns.path(), move || async move {
        let netd = Netd::start(s, Kernel::connect().unwrap()).await.unwrap();
        let with = |vlans: serde_json::Value, extra: &[&str]| {
            let mut ifs = vec![
                serde_json::json!({"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/24"]}),
                serde_json::json!({"name": "eth1", "mode": "dhcp"}),
            ];
            for n in extra {
                ifs.push(serde_json::json!({"name": n, "mode": "static", "addresses": []}));
            }
            serde_json::json!({"interfaces": ifs, "vlans": vlans})
        };
        let mut cases: Vec<(serde_json::Value, &str, &str)> = vec![
            (
                with(
                    serde_json::json!([{"parent": "eth0", "id": 0}]),
                    &["eth0.0"],
                ),
                "vlans[0].id",
                "0 is outside 1–4094",
            ),
            (
                with(
                    serde_json::json!([{"parent": "eth0", "id": 4095}]),
                    &["eth0.4095"],
                ),
                "vlans[0].id",
                "4095 is outside 1–4094",
            ),
            (
                with(
                    serde_json::json!([{"parent": "eth9", "id": 10, "name": "v10"}]),
                    &["v10"],
                ),
                "vlans[0].parent",
                "unknown parent \"eth9\"",
            ),
            (
                with(
                    serde_json::json!([{"parent": "eth0", "id": 10},
                                       {"parent": "eth0", "id": 10, "name": "again"}]),
                    &["eth0.10", "again"],
                ),
                "vlans[1].id",
                "VLAN 10 on eth0 is listed twice",
            ),
            (
                with(serde_json::json!([{"parent": "eth0", "id": 10}]), &[]),
                "vlans[0]",
                "VLAN eth0.10 has no entry in interfaces",
            ),
        ];
        if hand {
            cases.push((
                with(
                    serde_json::json!([{"parent": "eth1", "id": 5}]),
                    &["eth1.5"],
                ),
                "vlans[0].name",
                "eth1.5 exists already as a VLAN (5 on eth1) not created by keel-netd",
            ));
        }
        for (json, field, msg) in cases {
            let err = netd
                .propose(change(cfg(json.clone()), 2))
                .await
                .unwrap_err();
            match &err {
                NetdError::Invalid(v) => {
                    assert_eq!(v.fields(), [field], "{json}: {err}");
                    assert!(err.to_string().contains(msg), "{json}: {err}");
                }
                other => panic!("{json}: {other}"),
            }
            assert!(netd.pending().await.is_none());
        }
    })
    .unwrap();
    assert_eq!(ns.links_detailed().len(), before, "no link came or went");
    if hand {
        assert_eq!(ns.vlans(), ["eth1.5 eth1 5 -"]);
    }
    assert_eq!(ns.addresses("eth0"), ["10.0.0.2/24"]);
    assert!(ns.addresses("eth1").is_empty());
}

/// The console asks for status while a change applies and the periodic re-apply
/// runs: several readers on one netlink socket at once. The kernel runs one dump per
/// socket and refuses a second with EBUSY, which once failed a confirm.
#[test]
fn concurrent_readers_share_one_netlink_socket() {
    need_netns!();
    let ns = two_port_ns("dumps");
    keel_netd::netns::run_in(&ns.path(), move || async move {
        let kernel = Kernel::connect().unwrap();
        let readers = (0..32).map(|i| {
            let kernel = kernel.clone();
            async move {
                let links = kernel.links().await?;
                if i % 2 == 0 {
                    kernel.default_gateways(&links).await?;
                }
                Ok::<_, keel_netd::kernel::KernelError>(links.len())
            }
        });
        for r in futures_util::future::join_all(readers).await {
            assert!(r.unwrap() >= 3, "lo, eth0 and eth1");
        }
    })
    .unwrap();
}
