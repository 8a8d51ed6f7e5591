//! The services on the booted image, driven through the console's API the way an
//! admin does: a CA-signed certificate made with the openssl CLI is imported and
//! served; a network change is applied, reverts by itself when nobody confirms it,
//! and holds once confirmed; the NTP check reports the configured server and the
//! clock set by hand. A reboot then shows that all of it was kept in /data. One
//! VM, two boots: the boots are the expensive part.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keel_qemu_tests::{
    answer, ca_and_leaf, cert_file, image_or_skip, json_get, json_post, openssl, set_up_admin,
    sha256_hex, CaKey, Vm, BOOT_CEILING, READY_MARKER,
};
use serde_json::{json, Value};

const PASSWORD: &str = "services console password";
const API: &str = "/appliance/api/v1";
/// QEMU's user network gives the guest this address; the host reaches it through
/// the forwarded port, so the console sees this as the local address.
const GUEST_IP: &str = "10.0.2.15";
/// An address added by the network change under test (same subnet: the forwarded
/// port keeps working whatever happens to it).
const EXTRA_IP: &str = "10.0.2.99";
/// QEMU's user-network host address: with `restrict=on` nothing answers on it, so
/// an NTP server configured here is unreachable by construction.
const DEAD_NTP: &str = "10.0.2.2";

/// A CA (RSA), and a P-256 leaf it signed for the guest's address, with the leaf
/// key encrypted (PKCS#8, AES) under `passphrase`. Returns the leaf's DER.
fn make_ca_signed(dir: &Path, passphrase: &str) -> Vec<u8> {
    ca_and_leaf(dir, &format!("IP:{GUEST_IP},DNS:keel.test"), CaKey::Rsa2048);
    let pass = format!("pass:{passphrase}");
    openssl(
        dir,
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            "leaf.key",
            "-out",
            "leaf.enc.key",
            "-passout",
            &pass,
        ],
    );
    openssl(
        dir,
        &[
            "x509", "-in", "leaf.crt", "-outform", "DER", "-out", "leaf.der",
        ],
    );
    std::fs::read(dir.join("leaf.der")).unwrap()
}

async fn put(http: &reqwest::Client, url: &str, body: &Value, csrf: &str) -> (u16, Value) {
    let resp = http
        .put(url)
        .header("x-csrf-token", csrf)
        .json(body)
        .send()
        .await
        .unwrap();
    answer(resp).await
}

async fn get(http: &reqwest::Client, vm: &Vm, path: &str) -> Value {
    let (st, body) = json_get(http, &vm.url(&format!("{API}{path}")))
        .await
        .unwrap();
    assert_eq!(st, 200, "GET {path}: {body}");
    body
}

async fn status_addresses(http: &reqwest::Client, vm: &Vm) -> Vec<String> {
    get(http, vm, "/status").await["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["address"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls the addresses the console reports until `want` says yes.
async fn wait_addresses(
    http: &reqwest::Client,
    vm: &Vm,
    what: &str,
    ceiling: Duration,
    want: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + ceiling;
    loop {
        let got = status_addresses(http, vm).await;
        if want(&got) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: addresses {got:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The served certificate, seen by a fresh client.
async fn served_der(vm: &Vm) -> Vec<u8> {
    let (http, seen) = vm.client();
    let (st, _) = json_get(&http, &vm.url(&format!("{API}/health")))
        .await
        .unwrap();
    assert_eq!(st, 200);
    seen.seen_der().unwrap()
}

fn has(addrs: &[String], ip: &str) -> bool {
    addrs.iter().any(|a| a.split('/').next() == Some(ip))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_on_the_booted_image() {
    let Some(image) = image_or_skip() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let leaf_der = make_ca_signed(work.path(), "leaf key passphrase");

    let mut vm = Vm::start("services", &image).unwrap();
    vm.wait_serial(READY_MARKER, BOOT_CEILING).await.unwrap();
    vm.wait_https(BOOT_CEILING).await.unwrap();
    let (http, csrf, builtin_der) = set_up_admin(&vm, PASSWORD).await.unwrap();
    let api_base = vm.url(API);
    let post = |path: &str, body: Value| {
        let http = http.clone();
        let url = format!("{api_base}{path}");
        let csrf = csrf.clone();
        async move { json_post(&http, &url, body, Some(&csrf)).await.unwrap() }
    };

    // --- certificates: import what openssl made, assign it to the guest address ---
    let before = get(&http, &vm, "/certs").await;
    let import = json!({
        "label": "CA-signed",
        "files": [cert_file(work.path(), "leaf.crt"), cert_file(work.path(), "leaf.enc.key"), cert_file(work.path(), "ca.crt")],
        "passphrase": "wrong passphrase",
    });
    let (st, body) = post("/certs/import", import.clone()).await;
    assert!((400..500).contains(&st), "wrong passphrase: {st} {body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("passphrase"),
        "{body}"
    );
    assert_eq!(
        get(&http, &vm, "/certs").await,
        before,
        "a refused import stored something"
    );

    let mut import = import;
    import["passphrase"] = json!("leaf key passphrase");
    let (st, entry) = post("/certs/import", import).await;
    assert_eq!(st, 201, "{entry}");
    assert_eq!(
        entry["sha256_fingerprint"],
        sha256_hex(&leaf_der),
        "{entry}"
    );
    // Leaf and CA; the leaf's 20 days are inside the 30-day warning.
    assert_eq!(entry["chain_length"], 2, "{entry}");
    assert!(
        entry["warnings"].to_string().contains("expiring_soon"),
        "{entry}"
    );
    assert!(
        entry.to_string().find("PRIVATE KEY").is_none(),
        "key material in {entry}"
    );
    let id = entry["id"].as_str().unwrap().to_owned();
    let (st, body) = post(&format!("/certs/{id}/assign"), json!({"ips": [GUEST_IP]})).await;
    assert_eq!(st, 200, "{body}");
    // Served from now on, without a restart of the console.
    assert_eq!(
        served_der(&vm).await,
        leaf_der,
        "assigned certificate not served"
    );
    assert_ne!(builtin_der, leaf_der);

    // --- network: a change that nobody confirms reverts by itself ------------------
    let state = get(&http, &vm, "/net/config").await;
    let running = state["running"].clone();
    let first = running["interfaces"][0].clone();
    assert_eq!(first["mode"], "dhcp", "factory default: {running}");
    assert!(
        first["addresses"].to_string().contains("169.254.1.1/16"),
        "factory default has the link-local fallback: {running}"
    );
    wait_addresses(&http, &vm, "fallback address up", BOOT_CEILING, |a| {
        has(a, "169.254.1.1") && has(a, GUEST_IP)
    })
    .await;

    // Bad input: a gateway outside every static subnet, a duplicate address. Each
    // refused with the field named, nothing applied.
    let config_url = vm.url(&format!("{API}/net/config?confirm_seconds=25"));
    let mut bad = running.clone();
    bad["gateway4"] = json!("192.0.2.1");
    let (st, body) = put(&http, &config_url, &bad, &csrf).await;
    assert!((400..500).contains(&st), "{st} {body}");
    assert!(
        body["error"].as_str().unwrap().contains("gateway"),
        "{body}"
    );
    let mut bad = running.clone();
    bad["interfaces"][0]["addresses"] = json!(["169.254.1.1/16", "169.254.1.1/16"]);
    let (st, body) = put(&http, &config_url, &bad, &csrf).await;
    assert!((400..500).contains(&st), "{st} {body}");
    assert!(
        body["error"].as_str().unwrap().contains("169.254.1.1"),
        "{body}"
    );
    assert!(get(&http, &vm, "/net/pending").await.is_null());

    let mut change = running.clone();
    change["interfaces"][0]["addresses"]
        .as_array_mut()
        .unwrap()
        .push(json!(format!("{EXTRA_IP}/24")));
    change["ntp_servers"] = json!([DEAD_NTP]);
    let (st, pending) = put(&http, &config_url, &change, &csrf).await;
    assert_eq!(st, 202, "{pending}");
    assert!(pending["seconds_left"].as_u64().unwrap() <= 25, "{pending}");
    wait_addresses(
        &http,
        &vm,
        "proposed address applied",
        Duration::from_secs(60),
        |a| has(a, EXTRA_IP),
    )
    .await;
    // The local console follows: the serial banner names the new address.
    vm.wait_serial(
        &format!("https://{EXTRA_IP}/appliance"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    // Unconfirmed: back to the confirmed configuration once the window ends.
    wait_addresses(
        &http,
        &vm,
        "unconfirmed change reverted",
        Duration::from_secs(120),
        |a| !has(a, EXTRA_IP) && has(a, GUEST_IP),
    )
    .await;
    assert!(get(&http, &vm, "/net/pending").await.is_null());
    assert_eq!(get(&http, &vm, "/net/config").await["confirmed"], running);

    // Confirmed: it stays.
    let (st, pending) = put(&http, &config_url, &change, &csrf).await;
    assert_eq!(st, 202, "{pending}");
    wait_addresses(
        &http,
        &vm,
        "address applied again",
        Duration::from_secs(60),
        |a| has(a, EXTRA_IP),
    )
    .await;
    let (st, state) = post("/net/confirm", json!({})).await;
    assert_eq!(st, 200, "{state}");
    assert_eq!(
        state["confirmed"]["ntp_servers"],
        json!([DEAD_NTP]),
        "{state}"
    );
    assert!(state["pending"].is_null(), "{state}");

    // A VLAN on the guest's port: the kernel's 802.1Q support loads on demand under
    // netd's sandbox, the sub-interface carries its address; cancel removes it.
    let port = first["name"].as_str().unwrap().to_owned();
    let vlan_name = format!("{port}.42");
    let mut with_vlan = state["confirmed"].clone();
    with_vlan["vlans"] = json!([{"parent": port, "id": 42}]);
    with_vlan["interfaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": vlan_name, "mode": "static", "addresses": ["192.0.2.42/24"]}));
    let (st, pending) = put(&http, &config_url, &with_vlan, &csrf).await;
    assert_eq!(st, 202, "{pending}");
    wait_addresses(
        &http,
        &vm,
        "VLAN address up",
        Duration::from_secs(60),
        |a| has(a, "192.0.2.42"),
    )
    .await;
    let links = get(&http, &vm, "/net/config").await["links"].to_string();
    assert!(links.contains(&vlan_name), "no {vlan_name} in {links}");
    let (st, body) = post("/net/cancel", json!({})).await;
    assert_eq!(st, 200, "{body}");
    wait_addresses(
        &http,
        &vm,
        "VLAN gone after cancel",
        Duration::from_secs(60),
        |a| !has(a, "192.0.2.42") && has(a, EXTRA_IP),
    )
    .await;

    // --- time: the configured server is checked and unreachable; then set by hand --
    let deadline = Instant::now() + Duration::from_secs(60);
    let verdict = loop {
        let (st, v) = post("/time/check", json!({})).await;
        assert_eq!(st, 200, "{v}");
        let listed = v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["server"] == DEAD_NTP);
        if listed || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(verdict["state"], "unreachable", "{verdict}");
    assert!(verdict["message"].as_str().unwrap().len() > 10, "{verdict}");
    let (st, body) = post("/time/manual", json!({"time": "yesterday-ish"})).await;
    assert!((400..500).contains(&st), "{st} {body}");
    let now = time_now_rfc3339();
    let (st, verdict) = post("/time/manual", json!({"time": now})).await;
    assert_eq!(st, 200, "{verdict}");
    assert_eq!(verdict["state"], "manual", "{verdict}");

    // --- reboot: everything above was kept in /data -------------------------------
    let (st, body) = post("/system/reboot", json!({})).await;
    assert_eq!(st, 202, "{body}");
    vm.wait_serial_count(READY_MARKER, 2, BOOT_CEILING)
        .await
        .unwrap();
    vm.wait_https(BOOT_CEILING).await.unwrap();
    assert_eq!(
        served_der(&vm).await,
        leaf_der,
        "assignment lost in the reboot"
    );
    let (http, _) = vm.client();
    let (st, body) = json_post(
        &http,
        &vm.url(&format!("{API}/login")),
        json!({"username": "admin", "password": PASSWORD}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "{body}");
    wait_addresses(
        &http,
        &vm,
        "confirmed address after reboot",
        Duration::from_secs(60),
        |a| has(a, EXTRA_IP),
    )
    .await;
    let (st, v) = json_get(&http, &vm.url(&format!("{API}/time")))
        .await
        .unwrap();
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["servers_source"], "netd", "{v}");
}

/// The host's clock as RFC 3339 UTC (the guest's clock is set to it).
fn time_now_rfc3339() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
