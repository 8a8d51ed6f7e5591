//! A failover pair of two booted appliances on one private segment, driven through
//! the console API the way an admin does: static addresses (and the shared one on A)
//! through commit-confirm, the inter-appliance key (a wrong one refused by name),
//! *Establish relationship* on A, a certificate for the shared address and a new
//! admin password on A carried to B by *Sync now*, then A's power cut: B takes the
//! shared address over and serves the console on it with the synced certificate.
//!
//! The segment is a bridge in a network namespace with the host on it as an
//! observer (`Segment`): the only way to reach the shared IP, which QEMU's user
//! network cannot forward to. One boot of each VM, both booted at once.

use std::path::Path;
use std::time::{Duration, Instant};

use keel_qemu_tests::{
    answer, cert_file, image_or_skip, json_get, json_post, log_in, openssl, set_up_admin,
    sha256_hex, Firmware, Segment, Vm, BOOT_CEILING, READY_MARKER,
};
use serde_json::{json, Value};

const API: &str = "/appliance/api/v1";
const PASSWORD_A: &str = "failover console password A";
const PASSWORD_B: &str = "failover console password B";
/// A's admin password after the change that the sync carries to B.
const PASSWORD_NEW: &str = "failover console password, changed on A";
/// The segment (TEST-NET-2, inside the test's own namespace): the observer, A, B,
/// and the shared address the pair serves.
const OBSERVER: &str = "198.51.100.1/24";
const GATEWAY: &str = "198.51.100.1";
const ADDR_A: &str = "198.51.100.11";
const ADDR_B: &str = "198.51.100.12";
const SHARED: &str = "198.51.100.100";
const PREFIX: &str = "/24";
const PAIR_PORT: u16 = 7947;
/// Ceiling for one step the guests carry out (address applied, engine state, sync):
/// seconds normally, generous for a loaded 2-core TCG host.
const STEP: Duration = Duration::from_secs(90);

/// One appliance under test: its VM and an admin session.
struct Node {
    vm: Vm,
    http: reqwest::Client,
    csrf: String,
    /// The certificate it serves by default (its own, made on first boot).
    own_der: Vec<u8>,
}

impl Node {
    async fn get(&self, path: &str) -> Value {
        let (st, body) = json_get(&self.http, &self.vm.url(&format!("{API}{path}")))
            .await
            .unwrap();
        assert_eq!(st, 200, "{}: GET {path}: {body}", self.vm.name);
        body
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        json_post(
            &self.http,
            &self.vm.url(&format!("{API}{path}")),
            body,
            Some(&self.csrf),
        )
        .await
        .unwrap()
    }

    async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .put(self.vm.url(&format!("{API}{path}")))
            .header("x-csrf-token", &self.csrf)
            .json(body)
            .send()
            .await
            .unwrap();
        answer(resp).await
    }

    async fn addresses(&self) -> Vec<String> {
        self.get("/status").await["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["address"].as_str())
            .map(|a| a.split('/').next().unwrap_or(a).to_owned())
            .collect()
    }

    /// Polls `GET path` until `want` holds; returns that answer.
    async fn wait_for(&self, path: &str, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + STEP;
        loop {
            let got = self.get(path).await;
            if want(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {what} within {STEP:?}: {got}",
                self.vm.name
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The kernel name of the NIC on the segment, found by its MAC.
    async fn segment_link(&self) -> String {
        let mac = self.vm.segment_mac().unwrap();
        let state = self.get("/net/config").await;
        state["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["mac"] == mac)
            .and_then(|l| l["name"].as_str())
            .unwrap_or_else(|| panic!("{}: no link with MAC {mac}: {state}", self.vm.name))
            .to_owned()
    }

    /// Gives the segment NIC `addr` (static) and the default route via the observer,
    /// and `shared` marked as the shared address, through commit-confirm; returns
    /// the link's name.
    async fn configure_segment(&self, addr: &str, shared: Option<&str>) -> String {
        let link = self.segment_link().await;
        let mut config = self.get("/net/config").await["running"].clone();
        let entry = json!({
            "name": link,
            "mode": "static",
            "addresses": [format!("{addr}{PREFIX}")],
            "shared_address": shared.map(|s| format!("{s}{PREFIX}")),
        });
        // The observer is the site's router: keel-failover checks that the gateway
        // out of the pair's interface answers before it takes over (an isolated
        // backup must not).
        config["gateway4"] = json!(GATEWAY);
        let interfaces = config["interfaces"].as_array_mut().unwrap();
        match interfaces.iter_mut().find(|i| i["name"] == link) {
            Some(i) => *i = entry,
            None => interfaces.push(entry),
        }
        let (st, pending) = self.put("/net/config?confirm_seconds=120", &config).await;
        assert_eq!(st, 202, "{}: {pending}", self.vm.name);
        let deadline = Instant::now() + STEP;
        while !self.addresses().await.iter().any(|a| a == addr) {
            assert!(
                Instant::now() < deadline,
                "{}: {addr} not applied within {STEP:?}",
                self.vm.name
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (st, state) = self.post("/net/confirm", json!({})).await;
        assert_eq!(st, 200, "{}: confirm: {state}", self.vm.name);
        link
    }
}

/// Boots a factory-fresh appliance with a NIC on `seg` (QEMU started; not waited for).
fn start(name: &str, image: &Path, seg: &Segment) -> Vm {
    let mut vm = Vm::prepare(name, image, Firmware::Bios, 0)
        .unwrap()
        .with_segment(seg)
        .unwrap();
    vm.boot().unwrap();
    vm
}

async fn ready(mut vm: Vm, password: &str) -> Node {
    vm.wait_serial(READY_MARKER, BOOT_CEILING).await.unwrap();
    vm.wait_https(BOOT_CEILING).await.unwrap();
    let (http, csrf, own_der) = set_up_admin(&vm, password).await.unwrap();
    Node {
        vm,
        http,
        csrf,
        own_der,
    }
}

/// A self-signed P-256 certificate for the shared address; returns its DER.
fn make_shared_cert(dir: &Path) -> Vec<u8> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "shared.key",
            "-out",
            "shared.crt",
            "-days",
            "90",
            "-subj",
            "/CN=site.keel.test",
            "-addext",
            &format!("subjectAltName=IP:{SHARED},DNS:site.keel.test"),
            "-addext",
            "extendedKeyUsage=serverAuth",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-in",
            "shared.crt",
            "-outform",
            "DER",
            "-out",
            "shared.der",
        ],
    );
    std::fs::read(dir.join("shared.der")).unwrap()
}

/// GET /health on `https://addr` from the observer until it answers 200; returns the
/// DER of the certificate served there.
async fn served_on_segment(seg: &Segment, addr: &str) -> Vec<u8> {
    let deadline = Instant::now() + STEP;
    loop {
        match seg.https_get(addr, &format!("{API}/health")).await {
            Ok((200, _, der)) => return der,
            other => assert!(
                Instant::now() < deadline,
                "no console on {addr} within {STEP:?}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn error_of(body: &Value) -> String {
    body["error"].as_str().unwrap_or_default().to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_pair_syncs_and_takes_over() {
    let Some(image) = image_or_skip() else {
        return;
    };
    let t0 = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let cert_der = make_shared_cert(work.path());
    let Some(seg) = Segment::new_or_skip(OBSERVER) else {
        return;
    };

    // --- two appliances, booted at once --------------------------------------------
    let vm_a = start("failover-a", &image, &seg);
    let vm_b = start("failover-b", &image, &seg);
    let (mut a, b) = tokio::join!(ready(vm_a, PASSWORD_A), ready(vm_b, PASSWORD_B));
    eprintln!("both consoles ready after {:?}", t0.elapsed());

    // --- addresses on the segment; the shared one on A is stored, not brought up ---
    let (if_a, _) = tokio::join!(
        a.configure_segment(ADDR_A, Some(SHARED)),
        b.configure_segment(ADDR_B, None)
    );
    // The observer reaches each console on its segment address: the segment works.
    assert_eq!(
        served_on_segment(&seg, ADDR_A).await,
        a.own_der,
        "{ADDR_A} is not A"
    );
    assert_eq!(
        served_on_segment(&seg, ADDR_B).await,
        b.own_der,
        "{ADDR_B} is not B"
    );
    let confirmed = a.get("/net/config").await["confirmed"].to_string();
    assert!(
        confirmed.contains(&format!("{SHARED}{PREFIX}")),
        "A's configuration keeps the shared address: {confirmed}"
    );
    assert!(
        !a.addresses().await.iter().any(|x| x == SHARED),
        "netd brought the shared address up by itself"
    );
    eprintln!("segment up after {:?}", t0.elapsed());

    // --- the failover API is there, both unpaired ----------------------------------
    let (st, body) = json_get(&a.http, &a.vm.url(&format!("{API}/failover")))
        .await
        .unwrap();
    assert_eq!(
        st, 200,
        "GET {API}/failover: {body} (the image has no failover console API?)"
    );
    for n in [&a, &b] {
        let o = n.get("/failover").await;
        assert!(
            o["peer"].is_null(),
            "{}: paired before establish: {o}",
            n.vm.name
        );
        assert_eq!(o["pair_port"], PAIR_PORT, "{}: {o}", n.vm.name);
    }

    // --- the inter-appliance key: bad input refused, a wrong key named -------------
    let (st, body) = a
        .put("/failover/psk", &json!({"psk": "not base64 at all!"}))
        .await;
    assert_eq!(st, 400, "{body}");
    let (st, body) = a.put("/failover/psk", &json!({"psk": "c2hvcnQ="})).await;
    assert_eq!(st, 400, "a 5-byte key: {body}");
    let (st, key_a) = a.post("/failover/psk/generate", json!({})).await;
    assert_eq!(st, 200, "{key_a}");
    let psk = key_a["psk"].as_str().unwrap().to_owned();
    assert_eq!(a.get("/failover/psk").await["psk"], psk.as_str());
    let (st, key_b) = b.post("/failover/psk/generate", json!({})).await;
    assert_eq!(st, 200, "{key_b}");
    assert_ne!(key_b["psk"], psk.as_str(), "two generated keys are equal");

    let establish = json!({
        "peer": format!("{ADDR_B}:{PAIR_PORT}"),
        "reverse": format!("{ADDR_A}:{PAIR_PORT}"),
        "shared_addresses": [format!("{SHARED}{PREFIX}")],
        "interface": if_a,
    });
    let (st, body) = a.post("/failover/establish", establish.clone()).await;
    assert!(st >= 400, "establish with different keys: {st} {body}");
    assert!(
        error_of(&body).contains("key"),
        "the error names the key: {body}"
    );
    assert!(
        b.get("/failover").await["peer"].is_null(),
        "B paired by a refused establish"
    );

    // A shared address given as the peer: refused by name.
    let mut bad = establish.clone();
    bad["peer"] = json!(format!("{SHARED}:{PAIR_PORT}"));
    let (st, body) = a.post("/failover/establish", bad).await;
    assert!(
        (400..500).contains(&st),
        "shared address as peer: {st} {body}"
    );
    assert!(error_of(&body).contains("shared"), "{body}");

    let (st, body) = b.put("/failover/psk", &json!({"psk": psk})).await;
    assert_eq!(st, 200, "{body}");

    // --- establish on A: each pins the other, A holds the shared address -----------
    let (st, est) = a.post("/failover/establish", establish).await;
    assert_eq!(st, 200, "establish: {est}");
    let over_a = a
        .wait_for("/failover", "A primary and holding", |o| {
            o["engine"]["holding"] == true
        })
        .await;
    let over_b = b
        .wait_for("/failover", "B paired as backup", |o| {
            o["engine"]["role"] == "backup"
        })
        .await;
    assert_eq!(over_a["engine"]["role"], "primary", "{over_a}");
    assert_eq!(
        over_a["peer"]["address"],
        format!("{ADDR_B}:{PAIR_PORT}"),
        "{over_a}"
    );
    assert_eq!(
        over_b["peer"]["address"],
        format!("{ADDR_A}:{PAIR_PORT}"),
        "{over_b}"
    );
    assert_eq!(
        over_a["peer"]["fingerprint"], over_b["fingerprint"],
        "A pinned B: {over_a}"
    );
    assert_eq!(
        over_b["peer"]["fingerprint"], over_a["fingerprint"],
        "B pinned A: {over_b}"
    );
    assert_eq!(
        over_b["engine"]["holding"], false,
        "both hold the address: {over_b}"
    );
    assert!(
        a.addresses().await.iter().any(|x| x == SHARED),
        "A's kernel lacks {SHARED}"
    );
    assert!(
        !b.addresses().await.iter().any(|x| x == SHARED),
        "B's kernel has {SHARED}"
    );
    eprintln!("established after {:?}", t0.elapsed());

    // --- a certificate for the shared address on A, served there by A --------------
    let (st, entry) = a
        .post(
            "/certs/import",
            json!({
                "label": "site",
                "files": [cert_file(work.path(), "shared.crt"), cert_file(work.path(), "shared.key")],
            }),
        )
        .await;
    assert_eq!(st, 201, "{entry}");
    let fingerprint = sha256_hex(&cert_der);
    assert_eq!(entry["sha256_fingerprint"], fingerprint.as_str(), "{entry}");
    let id = entry["id"].as_str().unwrap().to_owned();
    let (st, body) = a
        .post(&format!("/certs/{id}/assign"), json!({"ips": [SHARED]}))
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        served_on_segment(&seg, SHARED).await,
        cert_der,
        "A does not serve the assigned certificate on the shared address"
    );

    // --- A's admin password changed (local console menu, then the web setup) -------
    let code = a.vm.setup_code().unwrap();
    a.vm.type_serial("3\r").unwrap();
    a.vm.wait_serial("Type yes to reset the admin password", STEP)
        .await
        .unwrap();
    a.vm.type_serial("yes\r").unwrap();
    let deadline = Instant::now() + STEP;
    while a.vm.setup_code() == Some(code.clone()) {
        assert!(
            Instant::now() < deadline,
            "no new setup code\n{}",
            a.vm.serial_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (http, csrf, _) = set_up_admin(&a.vm, PASSWORD_NEW).await.unwrap();
    a.http = http;
    a.csrf = csrf;

    // --- Sync now: B receives the users and the certificate ------------------------
    let (st, sent) = a.post("/failover/sync", json!({})).await;
    assert_eq!(st, 200, "sync: {sent}");
    assert_eq!(sent["ok"], true, "{sent}");
    // The primary's report is B's outcome: what B applied.
    let items = sent["items"].to_string();
    assert!(items.contains("console users"), "{sent}");
    assert!(
        items.contains(&format!("certificate {id} for {SHARED}")),
        "the sync names certificate {id} for {SHARED}: {sent}"
    );
    // B's admin is A's now: A's new password logs in on B (B's console restarts to
    // read the synced files: its sessions end), B's own no longer does. Spaced
    // attempts: the console limits failed logins per source.
    let deadline = Instant::now() + STEP;
    let (b_http, b_csrf) = loop {
        match log_in(&b.vm, PASSWORD_NEW).await {
            Ok(session) => break session,
            Err(e) => assert!(
                Instant::now() < deadline,
                "A's new password does not log in on B: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    let (st, body) = json_post(
        &b.vm.client().0,
        &b.vm.url(&format!("{API}/login")),
        json!({"username": "admin", "password": PASSWORD_B}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 401, "B's own password after the sync: {body}");
    let b = Node {
        http: b_http,
        csrf: b_csrf,
        ..b
    };
    let over_b = b.get("/failover").await;
    let report = &over_b["last_sync"];
    assert_eq!(report["direction"], "received", "{over_b}");
    assert_eq!(report["ok"], true, "{report}");
    let items = report["items"].to_string();
    assert!(items.contains("console users"), "{report}");
    assert!(
        items.contains(&format!("certificate {id} for {SHARED}")),
        "the sync names certificate {id} for {SHARED}: {report}"
    );
    let certs_b = b.get("/certs").await.to_string();
    assert!(
        certs_b.contains(&fingerprint),
        "B lacks the synced certificate: {certs_b}"
    );
    assert!(
        !b.addresses().await.iter().any(|x| x == SHARED),
        "B took over while A lives"
    );
    eprintln!("synced after {:?}", t0.elapsed());
    // For the README's memory figures (not asserted: RSS right after a sync is no
    // idle figure): the keel processes of a paired node, keel-failover among them.
    for (name, node) in [("A", &a), ("B", &b)] {
        let status = node.get("/status").await;
        let procs = status["processes"].as_array().cloned().unwrap_or_default();
        let kib: u64 = procs.iter().filter_map(|p| p["rss_kib"].as_u64()).sum();
        let each: Vec<String> = procs
            .iter()
            .map(|p| format!("{} {}", p["name"].as_str().unwrap_or("?"), p["rss_kib"]))
            .collect();
        eprintln!(
            "{name} paired, RSS of keel processes: {kib} KiB ({})",
            each.join(", ")
        );
    }

    // --- A's power cut: B takes over and serves the console on the shared IP -------
    a.vm.kill();
    let killed = Instant::now();
    let over_b = b
        .wait_for("/failover", "B holding after A's power cut", |o| {
            o["engine"]["holding"] == true
        })
        .await;
    assert_eq!(over_b["engine"]["role"], "primary", "{over_b}");
    let served = served_on_segment(&seg, SHARED).await;
    eprintln!(
        "B serves {SHARED} {:?} after A's power cut",
        killed.elapsed()
    );
    assert_eq!(
        sha256_hex(&served),
        fingerprint,
        "B does not serve the synced certificate on the shared address"
    );
    // It is B answering: B's kernel holds the address (A's QEMU is gone).
    assert!(
        b.addresses().await.iter().any(|x| x == SHARED),
        "B's kernel lacks {SHARED}"
    );
    eprintln!("failover test wall time {:?}", t0.elapsed());
}
