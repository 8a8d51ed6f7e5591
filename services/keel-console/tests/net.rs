//! *Networking › IP configuration* end to end: HTTPS console → the real keel-netd
//! (in this process) → the kernel of a network namespace made for the test, checked
//! with `ip -j`. Needs root; elsewhere it says so and passes.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::csrf_of;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The test's namespace; removed on drop, also when an assertion fails.
struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn addresses(ns: &str, dev: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(&ip(ns, &["-j", "addr", "show", "dev", dev])).unwrap();
    v[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| !a["local"].as_str().unwrap_or("").starts_with("fe80:"))
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// netd's commit-confirm window here: short, so the reverts come quickly, but
/// long enough for a form flow of several requests on a busy host to fit in it.
const WINDOW: Duration = Duration::from_secs(5);

#[tokio::test]
async fn ip_configuration_through_the_console() {
    if !nix::unistd::geteuid().is_root() || Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIPPED: needs root and iproute2 for a network namespace");
        return;
    }
    let ns = Ns(format!("keel-console-net-{}", std::process::id()));
    assert!(Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap()
        .success());
    ip(
        &ns.0,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ],
    );
    ip(&ns.0, &["link", "set", "peer0", "up"]);

    // keel-netd, confirmed configuration 10.0.0.2/24, short windows (WINDOW).
    let dir = tempfile::tempdir().unwrap();
    let net_dir = dir.path().join("data/net");
    std::fs::create_dir_all(&net_dir).unwrap();
    std::fs::write(
        net_dir.join("config.json"),
        json!({"interfaces": [{"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/24"]}]})
            .to_string(),
    )
    .unwrap();
    let mut settings =
        keel_netd::service::Settings::new(&dir.path().join("data"), &dir.path().join("run"));
    settings.window = WINDOW;
    let kernel =
        keel_netd::kernel::Kernel::connect_in(&std::path::Path::new("/run/netns").join(&ns.0))
            .unwrap();
    let netd = keel_netd::service::Netd::start(settings, kernel)
        .await
        .unwrap();
    let sock = dir.path().join("run/netd.sock");
    let listener = keel_core::local_api::bind(&sock, 0o600).unwrap();
    tokio::spawn(keel_core::local_api::serve(
        listener,
        keel_netd::api::router(netd),
    ));
    keel_console::net::set_socket(sock);
    assert_eq!(addresses(&ns.0, "eth0"), ["10.0.0.2/24"]);

    // The console.
    let console = common::serve(dir.path()).await;
    let url = |p: &str| console.url(p);
    let (http, _) = common::client();
    let api = url("/appliance/api/v1/net/config");
    assert_eq!(
        http.get(&api).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let csrf = common::set_up(&http, &console.base, dir.path()).await;

    let st: Value = http.get(&api).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        st["running"]["interfaces"][0]["addresses"][0],
        "10.0.0.2/24"
    );
    assert_eq!(st["source"], "file");

    // Bad input: 4xx naming the field, nothing changed.
    let put = |body: Value| {
        http.put(&api)
            .header("x-csrf-token", &csrf)
            .json(&body)
            .send()
    };
    let one = |addr: &str| json!({"interfaces": [{"name": "eth0", "mode": "static", "addresses": [addr]}]});
    assert_eq!(
        http.put(&api)
            .json(&one("10.0.0.3/24"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN,
        "no CSRF header"
    );
    let resp = put(one("10.0.0.3/40")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let e: Value = resp.json().await.unwrap();
    // Said in the admin's terms: the interface by name, no parser internals.
    assert_eq!(
        e["error"], "eth0: 10.0.0.3/40 is not a valid address",
        "{e}"
    );
    let resp = put(json!({"interfaces": [{"name": "wlan9", "mode": "dhcp"}]}))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let e: Value = resp.json().await.unwrap();
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("unknown interface \"wlan9\""),
        "{e}"
    );
    let resp = put(json!({"hostname": "x".repeat(70_000)})).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(addresses(&ns.0, "eth0"), ["10.0.0.2/24"]);

    // A change that is not confirmed comes back by itself.
    let resp = put(one("10.0.0.3/24")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let p: Value = resp.json().await.unwrap();
    assert_eq!(p["owner"], "console");
    assert_eq!(addresses(&ns.0, "eth0"), ["10.0.0.3/24"]);
    let p: Value = http
        .get(url("/appliance/api/v1/net/pending"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        p["seconds_left"].as_u64().unwrap() <= WINDOW.as_secs(),
        "{p}"
    );
    let t0 = Instant::now();
    while addresses(&ns.0, "eth0") != ["10.0.0.2/24"] {
        assert!(t0.elapsed() < WINDOW * 3, "not reverted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Confirmed: stays, saved.
    assert_eq!(
        put(one("10.0.0.4/24")).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    let resp = http
        .post(url("/appliance/api/v1/net/confirm"))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::time::sleep(WINDOW + Duration::from_millis(200)).await;
    assert_eq!(addresses(&ns.0, "eth0"), ["10.0.0.4/24"]);
    let saved = std::fs::read_to_string(net_dir.join("config.json")).unwrap();
    assert!(saved.contains("10.0.0.4/24"), "{saved}");

    // The HTML page and its form.
    let page = common::page(&http, &url("/appliance/network/ip")).await;
    assert!(page.contains("Networking › IP configuration"), "{page}");
    assert!(page.contains("name=\"if0_name\" value=\"eth0\""), "{page}");
    let form_csrf = csrf_of(&page);
    let form = [
        ("csrf", form_csrf.as_str()),
        ("if0_name", "eth0"),
        ("if0_mac", ""),
        ("if0_enabled", "on"),
        ("if0_mode", "static"),
        ("if0_addresses", "10.0.0.9/24\r\n2001:db8::9/64"),
        ("if0_mtu", "1400"),
        ("if0_shared", ""),
        ("gateway4", "10.0.0.1"),
        ("gateway6", ""),
        ("routes", "10.50.0.0/16 via 10.0.0.254"),
        ("dns_servers", "10.0.0.53"),
        ("dns_search", "example.org"),
        ("hostname", "edge-9"),
        ("ntp_servers", "ntp.example.org"),
    ];
    let resp = http
        .post(url("/appliance/network/ip"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let mut live = addresses(&ns.0, "eth0");
    live.sort();
    assert_eq!(live, ["10.0.0.9/24", "2001:db8::9/64"]);
    let page = common::page(&http, &url("/appliance/network/ip")).await;
    assert!(page.contains("Change waiting for confirmation"), "{page}");
    // A bad form comes back with the message and the input kept.
    let mut bad = form.to_vec();
    bad[13] = ("hostname", "edge 9");
    let resp = http
        .post(url("/appliance/network/ip"))
        .form(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CONFLICT,
        "a change is already pending"
    );
    let resp = http
        .post(url("/appliance/network/cancel"))
        .form(&[("csrf", form_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("The previous configuration is back."));
    assert_eq!(addresses(&ns.0, "eth0"), ["10.0.0.4/24"]);
    let resp = http
        .post(url("/appliance/network/ip"))
        .form(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("hostname: &quot;edge 9&quot; is not a valid host name")
            || text.contains("hostname: \"edge 9\""),
        "{text}"
    );
    assert!(text.contains("10.50.0.0/16 via 10.0.0.254"), "input kept");

    // A malformed address: the sentence stands in eth0's fieldset, input kept.
    let mut bad = form.to_vec();
    bad[5] = ("if0_addresses", "10.0.0.300/24");
    let resp = http
        .post(url("/appliance/network/ip"))
        .form(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let text = resp.text().await.unwrap();
    let said = text
        .find("eth0: 10.0.0.300/24 is not a valid address")
        .unwrap_or_else(|| panic!("readable message in {text}"));
    let fieldset = text.find("<strong>eth0</strong>").unwrap();
    let next_field = text.find("name=\"if0_name\"").unwrap();
    assert!(fieldset < said && said < next_field, "beside eth0: {text}");
    assert!(!text.contains("line 1 column"), "{text}");
    assert!(
        text.contains(">10.0.0.300/24</textarea>"),
        "input kept: {text}"
    );
    assert_eq!(addresses(&ns.0, "eth0"), ["10.0.0.4/24"]);

    // Networking › NTP servers: listed, changed through commit-confirm, the rest
    // of the configuration left as it runs.
    let page = common::page(&http, &url("/appliance/network/ntp")).await;
    assert!(page.contains("<h1>Networking › NTP servers</h1>"), "{page}");
    assert!(page.contains("none configured"), "{page}");
    let ntp_csrf = csrf_of(&page);
    let resp = http
        .post(url("/appliance/network/ntp"))
        .form(&[
            ("csrf", ntp_csrf.as_str()),
            ("ntp_servers", "ntp1.example.org\r\nno-such!"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let ntp = resp.text().await.unwrap();
    assert!(
        ntp.contains("id=\"ntp_servers-error\" role=\"alert\">NTP servers: &quot;no-such!&quot; is not a host name"),
        "beside the field: {ntp}"
    );
    assert!(
        ntp.contains(">ntp1.example.org\r\nno-such!</textarea>")
            || ntp.contains(">ntp1.example.org\nno-such!</textarea>"),
        "input kept: {ntp}"
    );
    let ntp_file = net_dir.join("ntp-servers.json");
    let before = std::fs::read_to_string(&ntp_file).unwrap_or_default();
    assert!(!before.contains("ntp1.example.org"), "{before}");
    // Applied, then confirmed from the page (within netd's window here).
    let resp = http
        .post(url("/appliance/network/ntp"))
        .form(&[
            ("csrf", ntp_csrf.as_str()),
            ("ntp_servers", "ntp1.example.org\r\n192.0.2.123:1123"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        resp.headers()["location"],
        "/appliance/network/ntp",
        "back to the page, which shows the pending change"
    );
    let resp = http
        .post(url("/appliance/network/confirm"))
        .form(&[("csrf", ntp_csrf.as_str()), ("back", "ntp")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ntp = resp.text().await.unwrap();
    assert!(ntp.contains("<h1>Networking › NTP servers</h1>"), "{ntp}");
    assert!(ntp.contains("The change is confirmed and saved."), "{ntp}");
    assert!(ntp.contains("<code>192.0.2.123:1123</code>"), "{ntp}");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(net_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(
        saved["ntp_servers"],
        json!(["ntp1.example.org", "192.0.2.123:1123"])
    );
    assert_eq!(saved["interfaces"][0]["addresses"], json!(["10.0.0.4/24"]));
    let written = std::fs::read_to_string(&ntp_file).unwrap();
    assert!(
        written.contains("192.0.2.123:1123"),
        "for keel-timed: {written}"
    );
    assert_eq!(addresses(&ns.0, "eth0"), ["10.0.0.4/24"]);

    // Networking › Hostname & DNS: a bad hostname is refused beside its field.
    let page = common::page(&http, &url("/appliance/network/dns")).await;
    assert!(page.contains("Hostname &amp; DNS"), "{page}");
    let resp = http
        .post(url("/appliance/network/dns"))
        .form(&[
            ("csrf", ntp_csrf.as_str()),
            ("hostname", "edge 9"),
            ("dns_servers", "10.0.0.53"),
            ("dns_search", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let dns = resp.text().await.unwrap();
    let field = dns.find("id=\"hostname\"").unwrap();
    let said = dns.find("hostname: &quot;edge 9&quot;").expect(&dns);
    assert!(field < said, "after the hostname field: {dns}");
    assert!(dns.contains("value=\"10.0.0.53\""), "input kept: {dns}");

    // VLANs through the form. A bad ID: refused naming the field, input kept, no link.
    assert!(text.contains("Add a VLAN"), "{text}");
    let mut vlan = form.to_vec();
    vlan.extend([
        ("newvlan_parent", "eth0"),
        ("newvlan_id", "4095"),
        ("newvlan_name", ""),
        ("newvlan_mode", "static"),
        ("newvlan_addresses", "192.0.2.10/24"),
        ("newvlan_mtu", ""),
    ]);
    let resp = http
        .post(url("/appliance/network/ip"))
        .form(&vlan)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = resp.text().await.unwrap();
    assert!(text.contains("eth0.4095: 4095 is outside 1–4094"), "{text}");
    assert!(text.contains("value=\"4095\""), "input kept: {text}");
    assert!(vlans(&ns.0).is_empty());
    assert_eq!(addresses(&ns.0, "eth0"), ["10.0.0.4/24"]);

    // A good one, where the kernel has 802.1Q: made, addressed, listed; undone.
    if !vlan_capable(&ns.0) {
        eprintln!("SKIPPED: the kernel cannot make VLANs: VLAN part of the console test");
        return;
    }
    let at = vlan.iter().position(|(k, _)| *k == "newvlan_id").unwrap();
    vlan[at] = ("newvlan_id", "100");
    let resp = http
        .post(url("/appliance/network/ip"))
        .form(&vlan)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(vlans(&ns.0), ["eth0.100 eth0 100"]);
    assert_eq!(addresses(&ns.0, "eth0.100"), ["192.0.2.10/24"]);
    // Not confirmed within the window: the VLAN goes with the rest.
    let t0 = Instant::now();
    while !vlans(&ns.0).is_empty() || addresses(&ns.0, "eth0") != ["10.0.0.4/24"] {
        assert!(t0.elapsed() < WINDOW * 3, "not reverted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Listed on the page (applied through the API, with time to look), undone by the form.
    let resp = http
        .put(format!("{api}?confirm_seconds=60"))
        .header("x-csrf-token", &csrf)
        .json(&json!({
            "interfaces": [
                {"name": "eth0", "mode": "static", "addresses": ["10.0.0.4/24"]},
                {"name": "eth0.100", "mode": "static", "addresses": ["192.0.2.10/24"]}
            ],
            "vlans": [{"parent": "eth0", "id": 100}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let page = common::page(&http, &url("/appliance/network/ip")).await;
    assert!(
        page.contains("<strong>eth0.100</strong> (VLAN 100 on eth0)"),
        "{page}"
    );
    assert!(
        page.contains("name=\"if1_vlan_id\" value=\"100\""),
        "{page}"
    );
    let resp = http
        .post(url("/appliance/network/cancel"))
        .form(&[("csrf", form_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(vlans(&ns.0).is_empty());
}

/// VLANs in the namespace as `name parent id` (`ip -d -j link`).
fn vlans(ns: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(&ip(ns, &["-d", "-j", "link", "show"])).unwrap();
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["linkinfo"]["info_kind"] == "vlan")
        .map(|l| {
            format!(
                "{} {} {}",
                l["ifname"].as_str().unwrap_or_default(),
                l["link"].as_str().unwrap_or_default(),
                l["linkinfo"]["info_data"]["id"]
            )
        })
        .collect()
}

/// Can this kernel make a VLAN (`CONFIG_VLAN_8021Q`)? Tried on `eth0` and undone.
fn vlan_capable(ns: &str) -> bool {
    let ok = Command::new("ip")
        .args(["-n", ns, "link", "add", "link", "eth0", "name", "probe.1"])
        .args(["type", "vlan", "id", "1"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        ip(ns, &["link", "del", "probe.1"]);
    }
    ok
}
