//! The console's Failover page, its JSON API and the inter-appliance key page,
//! against the real keel-failover binary started unpaired in a temporary
//! directory (pairing two nodes is keel-failover's own netns test). "Service
//! unreachable" is a socket path nothing listens on.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::csrf_of;
use keel_api::{DnsSwingSettings, FailoverOverview, PskBody};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The keel-failover binary of this workspace, built on first use.
fn keel_failover_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .args([
                    "build",
                    "-q",
                    "-p",
                    "keel-failover",
                    "--bin",
                    "keel-failover",
                ])
                .status()
                .expect("cargo build keel-failover");
            assert!(st.success(), "building keel-failover failed");
            // target/debug/deps/failover-... → target/debug/keel-failover
            let exe = std::env::current_exe().unwrap();
            exe.parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("keel-failover")
        })
        .clone()
}

/// keel-failover running unpaired over a temporary directory; killed on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback TCP port for the pairing listener (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts keel-failover with no relationship (no config.json yet). `Err` with
/// the daemon's output when it exits instead of answering on its socket.
async fn start_unpaired(dir: &Path) -> Result<Daemon, String> {
    let socket = dir.join("api.sock");
    let log = dir.join("keel-failover.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(keel_failover_bin())
        .arg("--config")
        .arg(dir.join("config.json"))
        .arg("--data-dir")
        .arg(dir)
        .arg("--socket")
        .arg(&socket)
        // Loopback only, and a port of its own: tests run side by side.
        .arg("--pair-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--sync-root")
        .arg(dir.join("root"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("starting keel-failover");
    let mut d = Daemon { child, socket, log };
    let client = keel_core::local_api::Client::new(&d.socket);
    // Generous: a loaded 2-core machine may take a while to start it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            return Err(format!(
                "keel-failover exited ({status}) instead of serving unpaired: {}",
                std::fs::read_to_string(&d.log).unwrap_or_default()
            ));
        }
        if d.socket.exists()
            && client
                .call::<(), FailoverOverview>("GET", "/status", None)
                .await
                .is_ok()
        {
            return Ok(d);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "keel-failover did not answer on {} within 60 s: {}",
                d.socket.display(),
                std::fs::read_to_string(&d.log).unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let r = http.get(url).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The state-changing API routes with a body each would accept.
fn api_changes() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "POST",
            "/establish",
            json!({"peer": "127.0.0.1:9", "reverse": "127.0.0.1:9",
                   "shared_addresses": ["192.0.2.100/24"], "interface": "lo"}),
        ),
        ("POST", "/sync", json!({})),
        ("POST", "/become-primary", json!({})),
        ("POST", "/break", json!({})),
        ("POST", "/auto-takeover", json!({"enabled": false})),
        ("PUT", "/psk", json!({"psk": base64_key(7)})),
        ("POST", "/psk/generate", json!({})),
        ("PUT", "/dns", json!({"enabled": false, "ttl": 60})),
    ]
}

/// A valid inter-appliance key: 32 bytes of `fill`, base64.
fn base64_key(fill: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([fill; 32])
}

/// The HTML form routes.
const FORMS: [&str; 8] = [
    "/appliance/failover/establish",
    "/appliance/failover/sync",
    "/appliance/failover/become-primary",
    "/appliance/failover/break",
    "/appliance/failover/auto-takeover",
    "/appliance/security/failover-key",
    "/appliance/security/failover-key/generate",
    "/appliance/failover/dns",
];

/// One test: the failover socket location is process-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_page_api_and_key() {
    let data = tempfile::tempdir().unwrap();
    let served = common::serve(data.path()).await;
    let (http, _) = common::client();
    let api = |p: &str| served.url(&format!("/appliance/api/v1/failover{p}"));

    // No netd here: the establish form says the shared addresses could not be read.
    keel_console::net::set_socket(data.path().join("no-netd.sock"));

    // keel-failover not running: the page says so, the API answers 503.
    keel_console::failover::set_socket(data.path().join("no-failover.sock"));
    let csrf = common::set_up(&http, &served.base, data.path()).await;
    let r = http
        .get(served.url("/appliance/failover"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("The failover service is not answering"),
        "{page}"
    );
    assert!(!page.contains("action=\"/appliance/failover/establish\""));
    let (status, body) = get_json(&http, &api("")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("failover service unavailable"),
        "{body}"
    );
    let page = common::page(&http, &served.url("/appliance/security/failover-key")).await;
    assert!(
        page.contains("The failover service is not answering"),
        "{page}"
    );

    // The real daemon, unpaired.
    let fdir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(fdir.path().join("root")).unwrap();
    let daemon = start_unpaired(fdir.path())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    keel_console::failover::set_socket(daemon.socket.clone());

    let (status, body) = get_json(&http, &api("")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let o: FailoverOverview = serde_json::from_value(body).unwrap();
    assert!(o.peer.is_none() && o.engine.is_none(), "{o:?}");
    assert_eq!(o.fingerprint.len(), 64, "{o:?}");

    let page = common::page(&http, &served.url("/appliance/failover")).await;
    assert!(page.contains("none: this appliance stands alone"), "{page}");
    assert!(
        page.contains(&keel_certs::fingerprint_display(&o.fingerprint)),
        "{page}"
    );
    assert!(
        page.contains("action=\"/appliance/failover/establish\""),
        "{page}"
    );
    assert!(
        page.contains("could not be read from the network configuration")
            && page.contains("href=\"/appliance/network/ip\""),
        "{page}"
    );
    assert!(
        page.contains("<a href=\"/appliance/failover\">Failover</a>")
            || page.contains("aria-current=\"page\">Failover<")
    );
    // The navigation of other pages links here.
    let basics = common::page(&http, &served.url("/appliance/")).await;
    assert!(basics.contains("href=\"/appliance/failover\""), "{basics}");

    // The key: shown to the logged-in admin, never without a session.
    let (status, body) = get_json(&http, &api("/psk")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let key = serde_json::from_value::<PskBody>(body).unwrap().psk;
    assert!(!key.is_empty());
    let page = common::page(&http, &served.url("/appliance/security/failover-key")).await;
    assert!(page.contains(&key), "{page}");
    assert!(page.contains("Both nodes of a failover pair must hold the same key"));
    let (anon, _) = common::client();
    let (status, body) = get_json(&anon, &api("/psk")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!body.to_string().contains(&key));
    let r = anon
        .get(served.url("/appliance/security/failover-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(!r.text().await.unwrap().contains(&key));
    let (status, _) = get_json(&anon, &api("")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A key too short, pasted: the error beside the field, the input kept, the
    // stored key unchanged.
    let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
    let form_csrf = csrf_of(&page);
    let r = http
        .post(served.url("/appliance/security/failover-key"))
        .form(&[("csrf", form_csrf.as_str()), ("psk", short.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = r.text().await.unwrap();
    let err_at = page
        .find("id=\"psk-error\"")
        .expect("error beside the key field");
    let field_at = page.find("id=\"psk\"").unwrap();
    assert!(err_at > field_at, "error not next to its field:\n{page}");
    assert!(page.contains(&format!("value=\"{short}\"")), "{page}");
    assert!(
        page.contains(&key),
        "the stored key is still shown:\n{page}"
    );
    let (_, body) = get_json(&http, &api("/psk")).await;
    assert_eq!(body["psk"], key.as_str());
    // The same through the API: refused with the daemon's reason.
    let r = http
        .put(api("/psk"))
        .header("x-csrf-token", &csrf)
        .json(&json!({"psk": short}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    let body: Value = r.json().await.unwrap();
    assert!(!body["error"].as_str().unwrap().is_empty(), "{body}");

    // Every change refuses without a session and without the CSRF token, and
    // nothing changed.
    for (method, path, body) in api_changes() {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = anon
            .request(m.clone(), api(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let r = http
            .request(m.clone(), api(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} without CSRF"
        );
        let r = http
            .request(m, api(path))
            .header("x-csrf-token", "0".repeat(64))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} wrong CSRF"
        );
    }
    for path in FORMS {
        let fields = [
            ("csrf", "nope"),
            ("psk", key.as_str()),
            ("confirm", "break"),
        ];
        let r = anon
            .post(served.url(path))
            .form(&fields)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path} without session");
        let r = http
            .post(served.url(path))
            .form(&fields)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path} wrong CSRF");
    }
    let (_, body) = get_json(&http, &api("/psk")).await;
    assert_eq!(
        body["psk"],
        key.as_str(),
        "a refused request changed the key"
    );
    let (_, body) = get_json(&http, &api("")).await;
    assert!(body["peer"].is_null(), "{body}");
    let (_, body) = get_json(&http, &api("/dns")).await;
    assert_eq!(
        body["enabled"], false,
        "a refused request changed DNS swing: {body}"
    );

    // Establish with a malformed peer address: a clear error, nothing paired.
    let r = http
        .post(api("/establish"))
        .header("x-csrf-token", &csrf)
        .json(
            &json!({"peer": "10.0.0.300:7947", "reverse": "127.0.0.1:7947",
                      "shared_addresses": ["192.0.2.100/24"], "interface": "lo"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("10.0.0.300"), "{msg}");
    // The same in the form: beside the peer field, the input kept.
    let page = common::page(&http, &served.url("/appliance/failover")).await;
    let form_csrf = csrf_of(&page);
    let r = http
        .post(served.url("/appliance/failover/establish"))
        .form(&[
            ("csrf", form_csrf.as_str()),
            ("peer", "10.0.0.300:7947"),
            ("reverse", "127.0.0.1:7947"),
            ("shared", "192.0.2.100/24"),
            ("interface", "lo"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = r.text().await.unwrap();
    let err = page
        .split("id=\"peer-error\">")
        .nth(1)
        .expect("the error stands beside the peer field");
    assert!(
        err.split('<').next().unwrap().contains("10.0.0.300"),
        "{page}"
    );
    assert!(page.contains("value=\"10.0.0.300:7947\""), "{page}");
    assert!(page.contains("192.0.2.100/24"), "{page}");
    assert!(page.contains("role=\"alert\""), "{page}");
    // An empty peer is caught before keel-failover is asked.
    let r = http
        .post(served.url("/appliance/failover/establish"))
        .form(&[("csrf", form_csrf.as_str()), ("reverse", "127.0.0.1:7947")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = r.text().await.unwrap();
    assert!(page.contains("id=\"peer-error\""), "{page}");
    assert!(page.contains("value=\"127.0.0.1:7947\""), "{page}");
    let (_, body) = get_json(&http, &api("")).await;
    assert!(body["peer"].is_null(), "{body}");

    // A good key pasted is stored; regenerate makes another, shown on the page.
    let good = base64_key(42);
    let r = http
        .post(served.url("/appliance/security/failover-key"))
        .form(&[("csrf", form_csrf.as_str()), ("psk", good.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, body) = get_json(&http, &api("/psk")).await;
    assert_eq!(body["psk"], good.as_str());
    let r = http
        .post(served.url("/appliance/security/failover-key/generate"))
        .form(&[("csrf", form_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    let (_, body) = get_json(&http, &api("/psk")).await;
    let regenerated = body["psk"].as_str().unwrap().to_owned();
    assert_ne!(regenerated, good);
    assert!(page.contains(&regenerated), "{page}");
    // And through the API.
    let r = http
        .put(api("/psk"))
        .header("x-csrf-token", &csrf)
        .json(&json!({"psk": good}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<PskBody>().await.unwrap().psk, good);

    dns_swing(&http, &served, &csrf).await;

    drop(daemon);
}

/// The text of the element with `id` (up to its first tag), e.g. an error beside
/// its field; `None` when the page has none.
fn text_of<'a>(page: &'a str, id: &str) -> Option<&'a str> {
    let rest = page.split(&format!("id=\"{id}\"")).nth(1)?;
    Some(rest.split_once('>')?.1.split('<').next().unwrap_or(""))
}

/// DNS swing through the JSON API and the Failover page's form, against the
/// unpaired daemon: settings stored and read back, refusals with keel-failover's
/// reason and nothing changed, the refused form keeps the input, every change in
/// the audit log. Unpaired, no takeover engine runs and so no DNS server either
/// (keel-failover binds it with the engine): the page and the overview say it is
/// not answering, and the port stays free.
async fn dns_swing(http: &reqwest::Client, served: &common::Served, csrf: &str) {
    let api = served.url("/appliance/api/v1/failover/dns");
    let (status, body) = get_json(http, &api).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let off: DnsSwingSettings = serde_json::from_value(body).unwrap();
    assert_eq!(off, DnsSwingSettings::default());

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let on = json!({
        "enabled": true, "name": "Portal.Example.TEST.", "listen": [listen], "ttl": 7,
        "this_node": ["192.0.2.10"], "peer_node": ["198.51.100.20", "2001:db8::20"],
        "nameservers": ["ns-a.example.net", "ns-b.example.net"],
    });
    let r = http
        .put(&api)
        .header("x-csrf-token", csrf)
        .json(&on)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let set: DnsSwingSettings = r.json().await.unwrap();
    assert_eq!(set.name.as_deref(), Some("portal.example.test"), "{set:?}");
    assert_eq!(set.listen, [listen.parse().unwrap()]);
    let (_, body) = get_json(http, &api).await;
    assert_eq!(
        serde_json::from_value::<DnsSwingSettings>(body).unwrap(),
        set
    );

    // Refused with keel-failover's status and reason; the stored settings stay.
    for (field, value, reason) in [
        ("ttl", json!(0), "ttl: 0 s: 1-300 s"),
        (
            "name",
            json!("bad_name.example"),
            "name: \"bad_name.example\" is not a DNS hostname",
        ),
        (
            "this_node",
            json!(["127.0.0.1"]),
            "this_node[0]: 127.0.0.1 cannot be published",
        ),
        (
            "listen",
            json!(["nope"]),
            "listen: [0] \"nope\": invalid socket address",
        ),
    ] {
        let mut bad = on.clone();
        bad[field] = value;
        let r = http
            .put(&api)
            .header("x-csrf-token", csrf)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{field}");
        let body: Value = r.json().await.unwrap();
        let msg = body["error"].as_str().unwrap();
        assert!(msg.starts_with(reason), "{field}: {msg}");
        let (_, body) = get_json(http, &api).await;
        assert_eq!(
            serde_json::from_value::<DnsSwingSettings>(body).unwrap(),
            set
        );
    }

    // The page shows the settings in the form and that nothing answers yet.
    let (_, o) = get_json(http, &served.url("/appliance/api/v1/failover")).await;
    assert_eq!(o["dns_listening"], json!([]), "{o}");
    std::net::UdpSocket::bind(("127.0.0.1", port)).expect("no DNS server unpaired");
    let page = common::page(http, &served.url("/appliance/failover")).await;
    assert!(page.contains("id=\"dns-swing\""), "{page}");
    assert!(page.contains("this node's own"), "{page}");
    assert!(
        text_of(&page, "dns-answering")
            .unwrap()
            .contains("not answering: the server runs while the takeover engine does"),
        "{page}"
    );
    assert!(page.contains("value=\"portal.example.test\""), "{page}");
    assert!(
        page.contains("value=\"198.51.100.20, 2001:db8::20\""),
        "{page}"
    );
    assert!(page.contains(&format!("value=\"{listen}\"")), "{page}");
    assert!(
        page.contains("name=\"enabled\" value=\"1\" checked> Answer DNS"),
        "{page}"
    );

    // The form: lists comma or whitespace separated; the change is stored.
    let form_csrf = csrf_of(&page);
    let fields = |ttl: &'static str, this_node: &'static str| {
        vec![
            ("csrf", form_csrf.clone()),
            ("enabled", "1".to_owned()),
            ("name", "portal.example.test".to_owned()),
            ("ttl", ttl.to_owned()),
            ("this_node", this_node.to_owned()),
            ("peer_node", "198.51.100.20".to_owned()),
            (
                "nameservers",
                "ns-a.example.net ns-b.example.net".to_owned(),
            ),
            ("listen", listen.clone()),
        ]
    };
    let r = http
        .post(served.url("/appliance/failover/dns"))
        .form(&fields("20", "192.0.2.11, 192.0.2.12"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("DNS swing is on for portal.example.test."),
        "{page}"
    );
    let (_, body) = get_json(http, &api).await;
    let changed: DnsSwingSettings = serde_json::from_value(body).unwrap();
    assert_eq!(changed.ttl, 20);
    assert_eq!(
        changed.this_node,
        [
            "192.0.2.11".parse::<std::net::IpAddr>().unwrap(),
            "192.0.2.12".parse().unwrap()
        ]
    );
    assert_eq!(
        changed.peer_node,
        ["198.51.100.20".parse::<std::net::IpAddr>().unwrap()]
    );

    // Refused in the form: the reason beside its field, every input kept as
    // typed, nothing stored.
    for (ttl, this_node, error_id, reason) in [
        (
            "0",
            "192.0.2.13 192.0.2.14",
            "dns-ttl-error",
            "ttl: 0 s: 1-300 s",
        ),
        (
            "abc",
            "192.0.2.13 192.0.2.14",
            "dns-ttl-error",
            "is not a number of seconds",
        ),
        (
            "30",
            "192.0.2.13 300.1.1.1",
            "dns-this-node-error",
            "300.1.1.1",
        ),
    ] {
        let r = http
            .post(served.url("/appliance/failover/dns"))
            .form(&fields(ttl, this_node))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{ttl} {this_node}"
        );
        let page = r.text().await.unwrap();
        let err = text_of(&page, error_id).unwrap_or_else(|| panic!("no {error_id}:\n{page}"));
        assert!(err.contains(reason), "{err}");
        let field_at = page
            .find(&format!("id=\"{}\"", error_id.trim_end_matches("-error")))
            .unwrap();
        assert!(
            page.find(&format!("id=\"{error_id}\"")).unwrap() > field_at,
            "{page}"
        );
        assert!(page.contains(&format!("value=\"{ttl}\"")), "{page}");
        assert!(page.contains(&format!("value=\"{this_node}\"")), "{page}");
        assert!(
            page.contains("value=\"ns-a.example.net ns-b.example.net\""),
            "{page}"
        );
        let (_, body) = get_json(http, &api).await;
        assert_eq!(
            serde_json::from_value::<DnsSwingSettings>(body).unwrap(),
            changed
        );
    }

    // Off through the form (no checkbox): stored, the rest kept.
    let mut off_fields = fields("20", "192.0.2.11, 192.0.2.12");
    off_fields.retain(|(k, _)| *k != "enabled");
    let r = http
        .post(served.url("/appliance/failover/dns"))
        .form(&off_fields)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(page.contains("DNS swing is off"), "{page}");
    assert!(
        text_of(&page, "dns-answering")
            .unwrap()
            .contains("not answering (off)"),
        "{page}"
    );
    let (_, body) = get_json(http, &api).await;
    let now: DnsSwingSettings = serde_json::from_value(body).unwrap();
    assert!(!now.enabled && now.name == changed.name, "{now:?}");

    // Each change is in the audit log, as made or refused.
    let (_, audit) = get_json(http, &served.url("/appliance/api/v1/audit?limit=1000")).await;
    let records = audit["records"].as_array().unwrap();
    let results = |action: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["action"] == action)
            .map(|r| r["result"].as_str().unwrap().to_owned())
            .collect()
    };
    // The form and its API call share one name.
    let all = results("failover.dns.set");
    assert!(all.len() >= 4, "{all:?}");
    let api_put = all.clone();
    assert!(api_put.iter().any(|r| r == "ok"), "{audit}");
    assert!(
        api_put.iter().any(|r| r.starts_with("refused: 400")),
        "{api_put:?}"
    );
    let form = all;
    assert!(form.iter().any(|r| r == "ok"), "{form:?}");
    assert!(
        form.iter().any(|r| r.starts_with("refused: 422")),
        "{form:?}"
    );
}
