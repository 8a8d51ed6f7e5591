//! Security checks enumerated from the console's own OpenAPI document
//! (`openapi::PATH`), so a new endpoint cannot be forgotten: the console is
//! served over real TLS with the certificate store's routes, every operation the
//! document lists is tried with every kind of wrong credentials (none, a session
//! without or with a wrong CSRF token, an auditor's session and token, a revoked
//! and an expired token, a token on an HTML form), every read is tried without
//! credentials and with the admin's session, and afterwards the accounts, tokens,
//! network configuration and update settings read as before. Where root can make
//! a network namespace, the real keel-netd (in one) and keel-update answer behind
//! the console, so a change that slips through would show. What is public, what
//! an auditor may do for itself, and the faults known today are explicit lists
//! below: a new public route or a fixed fault fails the test until its list is
//! brought up to date.

mod common;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use keel_api::{Role, TokenCreateRequest};
use keel_console::{app, certs, tls};
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

const API: &str = "/appliance/api/v1";
const AUDITOR: &str = "ann";
const AUDITOR_PASSWORD: &str = "another good password";
/// What every path parameter becomes: names nothing, so a request that got
/// through would still find nothing to change.
const NO_SUCH: &str = "no-such-id";

/// Operations open to anyone. A new public route fails the sweep until it is
/// added here: being public is a decision, not a default.
const PUBLIC: &[(&str, &str)] = &[
    // The login page (or the setup form before the first setup), the setup form
    // while `admin` waits for its password, and the stylesheet they need.
    ("GET", "/appliance"),
    ("GET", "/appliance/"),
    ("GET", "/appliance/setup"),
    ("GET", "/appliance/static/keel.css"),
    ("POST", "/appliance/login"),
    ("POST", "/appliance/setup"),
    ("GET", "/appliance/api/v1"),
    ("GET", "/appliance/api/v1/health"),
    ("GET", "/appliance/api/v1/setup"),
    ("POST", "/appliance/api/v1/setup"),
    ("POST", "/appliance/api/v1/login"),
];

/// State-changing operations the role gate lets an auditor make
/// (`users::role_gate`'s self-service list): leaving its own session, its own
/// password and second factor, its own tokens. Each is checked to pass the gate;
/// every other change must be refused.
const SELF_SERVICE: &[(&str, &str)] = &[
    ("POST", "/appliance/api/v1/logout"),
    ("POST", "/appliance/logout"),
    ("POST", "/appliance/api/v1/account/password"),
    ("POST", "/appliance/account/password"),
    ("POST", "/appliance/api/v1/account/totp"),
    ("DELETE", "/appliance/api/v1/account/totp"),
    ("POST", "/appliance/api/v1/account/totp/confirm"),
    ("POST", "/appliance/account/totp"),
    ("POST", "/appliance/api/v1/tokens"),
    ("DELETE", "/appliance/api/v1/tokens/{id}"),
    ("POST", "/appliance/account/tokens"),
    ("POST", "/appliance/account/tokens/revoke"),
];

/// POSTs documented to change nothing, so they take no CSRF token (still refused
/// to roles that may not change anything). Like `PUBLIC`, a conscious list. None
/// today: the console's `api_changes_need_credentials` asks every state-changing
/// API call for its CSRF token before any handler runs.
const READ_ONLY_POSTS: &[(&str, &str)] = &[];

/// Forms that take an API token as a session: none (`Session::form_csrf_matches`
/// refuses tokens on every form). An entry here is asserted to still accept a
/// token, so a fix fails the test until its entry goes: the list only shrinks.
const FORMS_TAKING_TOKENS: &[&str] = &[];

/// What the role gate says when it refuses (API error or page).
const GATE_API: &str = "can look but not change anything";
const GATE_PAGE: &str = "This account may not do that";

/// The operations of app.rs and time.rs when the sweep was written: a document
/// with fewer is broken, not small.
const FLOOR: usize = 15;

/// A client without cookies: a script, or a browser with no session.
fn script() -> reqwest::Client {
    let verifier = keel_certs::pinning::FingerprintVerifier::record_any();
    reqwest::Client::builder()
        .use_preconfigured_tls(verifier.client_config())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The console as main.rs wires it (certificate store routes merged in), over
/// TLS on 127.0.0.1.
async fn serve(data: &Path) -> (String, Arc<app::AppState>) {
    let (identity, _) = common::identity(data);
    let state = common::app_state(data, &identity);
    let console = data.join("console");
    let store =
        Arc::new(keel_certs::CertStore::open(console.join("certs"), console.join("tls")).unwrap());
    let resolver = Arc::new(tls::CertResolver::from_serving(store.serving().unwrap()));
    state
        .access
        .apply_at_start(&state.auth, Some(resolver.clone()));
    let router = app::router_with(
        state.clone(),
        certs::routes(certs::CertsState::new(
            state.clone(),
            store,
            resolver.clone(),
        )),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(tls::serve_https(listener, resolver, router));
    (base, state)
}

/// A token that ran out: made two days ago for one day, through the clock
/// argument the token store takes (the expiry is whole days, so waiting is no
/// way for a test).
fn expired_token(state: &app::AppState) -> String {
    state
        .tokens
        .create(
            "admin",
            Role::Administrator,
            &TokenCreateRequest {
                name: "ran out".into(),
                role: None,
                expires_in_days: Some(1),
                expires: None,
            },
            time::OffsetDateTime::now_utc() - time::Duration::days(2),
        )
        .unwrap()
        .token
}

/// A network namespace, removed on drop.
struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The real keel-netd over `root`, its kernel a namespace made for the test, and
/// the real keel-update over temp files; the console pointed at both. `None`
/// (and said why) without root and iproute2: the sweep then runs with both
/// absent, and the net and update reads compare as unavailable.
async fn backends(root: &Path) -> Option<Ns> {
    let sockets = root.join("run");
    std::fs::create_dir_all(&sockets).unwrap();
    // Never the host's services, whatever happens below.
    keel_console::net::set_socket(sockets.join("netd.sock"));
    keel_console::update::set_socket(sockets.join("update.sock"));
    keel_console::time::set_socket(sockets.join("timed.sock"));
    if !nix::unistd::geteuid().is_root() || Command::new("ip").arg("-V").output().is_err() {
        eprintln!("NOTE: no root or iproute2: keel-netd and keel-update are not started");
        return None;
    }
    let ns = Ns(format!("keel-console-openapi-{}", std::process::id()));
    assert!(Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap()
        .success());
    let ip = |args: &[&str]| {
        assert!(Command::new("ip")
            .arg("-n")
            .arg(&ns.0)
            .args(args)
            .status()
            .unwrap()
            .success())
    };
    ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);
    ip(&["link", "set", "peer0", "up"]);
    let net_dir = root.join("data/net");
    std::fs::create_dir_all(&net_dir).unwrap();
    std::fs::write(
        net_dir.join("config.json"),
        json!({"interfaces": [{"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/24"]}]})
            .to_string(),
    )
    .unwrap();
    let settings = keel_netd::service::Settings::new(&root.join("data"), &root.join("run/netd"));
    let kernel =
        keel_netd::kernel::Kernel::connect_in(&Path::new("/run/netns").join(&ns.0)).unwrap();
    let netd = keel_netd::service::Netd::start(settings, kernel)
        .await
        .unwrap();
    let listener = keel_core::local_api::bind(&sockets.join("netd.sock"), 0o600).unwrap();
    tokio::spawn(keel_core::local_api::serve(
        listener,
        keel_netd::api::router(netd),
    ));

    // keel-update over files: two 1 MiB slots, an ESP directory, no keys (nothing
    // may be installed), no reboot.
    let etc = root.join("update-etc");
    std::fs::create_dir_all(root.join("update-keys")).unwrap();
    std::fs::create_dir_all(root.join("esp/grub")).unwrap();
    std::fs::create_dir_all(root.join("slots")).unwrap();
    std::fs::create_dir_all(&etc).unwrap();
    for s in ["a", "b"] {
        std::fs::write(root.join(format!("slots/root-{s}")), vec![0u8; 1 << 20]).unwrap();
    }
    std::fs::write(
        etc.join("os-release"),
        "NAME=Keel\nID=keel\nVERSION_ID=1.0.0\n",
    )
    .unwrap();
    std::fs::write(etc.join("cmdline"), "root=PARTLABEL=root-a keel.slot=a\n").unwrap();
    std::fs::write(etc.join("boot_id"), "openapi-sweep\n").unwrap();
    let mut cfg = keel_update::Config::new(root.join("data/update"));
    cfg.keys_dir = root.join("update-keys");
    cfg.os_release = etc.join("os-release");
    cfg.cmdline = etc.join("cmdline");
    cfg.boot_id_file = etc.join("boot_id");
    cfg.slot_device = root
        .join("slots/root-{slot}")
        .to_string_lossy()
        .into_owned();
    cfg.esp_dir = Some(root.join("esp"));
    cfg.boot_state_file = None;
    cfg.timed_socket = None;
    cfg.reboot = Arc::new(|| panic!("the sweep made keel-update reboot"));
    let updater = keel_update::Updater::start(cfg);
    let listener = keel_core::local_api::bind(&sockets.join("update.sock"), 0o600).unwrap();
    tokio::spawn(keel_core::local_api::serve(
        listener,
        keel_update::api::router(updater),
    ));
    Some(ns)
}

/// An account logged in through the API: its cookie client and CSRF token.
struct Login {
    http: reqwest::Client,
    csrf: String,
}

async fn login(base: &str, user: &str, password: &str) -> Login {
    let (http, _) = common::client();
    let resp = http
        .post(format!("{base}{API}/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "login of {user}");
    let v: Value = resp.json().await.unwrap();
    Login {
        http,
        csrf: v["csrf_token"].as_str().unwrap().to_owned(),
    }
}

/// Makes a token through the API as `by` and returns it.
async fn make_token(base: &str, by: &Login, name: &str, role: &str) -> String {
    let resp = by
        .http
        .post(format!("{base}{API}/tokens"))
        .header("x-csrf-token", &by.csrf)
        .json(&json!({"name": name, "role": role, "expires_in_days": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "token {name}");
    let v: Value = resp.json().await.unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// How an operation takes its input and answers its refusals.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// JSON API (`/appliance/api/v1`).
    Api,
    /// HTML page (tag `pages`, GET).
    Page,
    /// HTML form (tag `forms`): urlencoded or multipart.
    Form { multipart: bool },
}

/// One operation of the document.
struct Op {
    method: Method,
    /// As documented, with `{params}`.
    path: String,
    /// With the parameters filled in.
    url_path: String,
    kind: Kind,
    /// `None`: public.
    security: Option<Vec<BTreeSet<String>>>,
}

impl Op {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    fn changes(&self) -> bool {
        !matches!(self.method, Method::GET | Method::HEAD | Method::OPTIONS)
    }
}

fn operations(doc: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            let Ok(m) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            if !matches!(
                m,
                Method::GET | Method::POST | Method::PUT | Method::PATCH | Method::DELETE
            ) {
                continue;
            }
            let tags: Vec<&str> = op["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let content = &op["requestBody"]["content"];
            let kind = if tags.contains(&"forms") {
                Kind::Form {
                    multipart: content.get("multipart/form-data").is_some(),
                }
            } else if tags.contains(&"pages") {
                Kind::Page
            } else {
                Kind::Api
            };
            let security = op.get("security").map(|s| {
                s.as_array()
                    .expect("security is a list")
                    .iter()
                    .map(|req| req.as_object().unwrap().keys().cloned().collect())
                    .collect()
            });
            let url_path = path
                .split('/')
                .map(|seg| {
                    if seg.starts_with('{') && seg.ends_with('}') {
                        NO_SUCH
                    } else {
                        seg
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            ops.push(Op {
                method: m,
                path: path.clone(),
                url_path,
                kind,
                security,
            });
        }
    }
    ops
}

/// The credentials of one try.
#[derive(Clone, Copy)]
enum Creds<'a> {
    None,
    /// A cookie client and the CSRF token it sends (`None`: no token at all).
    Session(&'a reqwest::Client, Option<&'a str>),
    Token(&'a str),
}

struct Answer {
    status: StatusCode,
    headers: header::HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn by_role_gate(&self) -> bool {
        self.status == StatusCode::FORBIDDEN
            && (self.body.contains(GATE_API) || self.body.contains(GATE_PAGE))
    }

    fn short(&self) -> String {
        let body: String = self.body.chars().take(160).collect();
        format!("{} {body:?}", self.status)
    }
}

const BOUNDARY: &str = "keelopenapisweep4f1c";

/// Sends `op` with `creds` and a plausible, empty body: `{}` to the API, an empty
/// form (only the CSRF field when there is one) to a form.
async fn send(anon: &reqwest::Client, base: &str, op: &Op, creds: Creds<'_>) -> Answer {
    let http = match creds {
        Creds::Session(c, _) => c,
        _ => anon,
    };
    let mut req = http.request(op.method.clone(), format!("{base}{}", op.url_path));
    let csrf = match creds {
        Creds::Session(_, csrf) => csrf,
        _ => None,
    };
    if let Creds::Token(t) = creds {
        req = req.bearer_auth(t);
    }
    if op.changes() {
        req = match op.kind {
            Kind::Api | Kind::Page => {
                if let Some(c) = csrf {
                    req = req.header("x-csrf-token", c);
                }
                req.header(header::CONTENT_TYPE, "application/json")
                    .body("{}")
            }
            Kind::Form { multipart: false } => {
                let body = csrf.map(|c| format!("csrf={c}")).unwrap_or_default();
                req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body)
            }
            Kind::Form { multipart: true } => {
                let mut body = String::new();
                if let Some(c) = csrf {
                    body += &format!(
                        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{c}\r\n"
                    );
                }
                body += &format!("--{BOUNDARY}--\r\n");
                req.header(
                    header::CONTENT_TYPE,
                    format!("multipart/form-data; boundary={BOUNDARY}"),
                )
                .body(body)
            }
        };
    }
    let resp = req.send().await.unwrap();
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap(),
    }
}

/// The headers `app::security_headers` puts on every HTTPS answer; what is
/// missing, if anything.
fn missing_security_headers(a: &Answer) -> Vec<&'static str> {
    let h = |name: header::HeaderName| {
        a.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut missing = Vec::new();
    if !h(header::STRICT_TRANSPORT_SECURITY).starts_with("max-age=") {
        missing.push("Strict-Transport-Security");
    }
    if !h(header::CONTENT_SECURITY_POLICY).contains("frame-ancestors 'none'") {
        missing.push("Content-Security-Policy with frame-ancestors 'none'");
    }
    if h(header::X_CONTENT_TYPE_OPTIONS) != "nosniff" {
        missing.push("X-Content-Type-Options: nosniff");
    }
    if h(header::REFERRER_POLICY).is_empty() {
        missing.push("Referrer-Policy");
    }
    if h(header::X_FRAME_OPTIONS) != "DENY" {
        missing.push("X-Frame-Options: DENY");
    }
    missing
}

/// What must not change: accounts, tokens (without their last use, which any
/// request with one records), the network configuration and pending change, and
/// the update settings.
async fn snapshot(base: &str, admin: &reqwest::Client) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for path in [
        "/users",
        "/tokens",
        "/net/config",
        "/net/pending",
        "/update/settings",
    ] {
        let resp = admin
            .get(format!("{base}{API}{path}"))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let mut v: Value = resp.json().await.unwrap_or(Value::Null);
        if let Some(tokens) = v["tokens"].as_array_mut() {
            for t in tokens {
                t.as_object_mut().unwrap().remove("last_used");
            }
        }
        out.push((format!("{path} ({status})"), v));
    }
    out
}

#[tokio::test]
async fn every_documented_operation_refuses_wrong_credentials() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("requests")).unwrap();
    let ns = backends(dir.path()).await;
    let (base, state) = serve(dir.path()).await;
    let url = |p: &str| format!("{base}{p}");
    let anon = script();

    // The admin (setup), the auditor (added through the Users API), the tokens.
    let (admin_http, _) = common::client();
    let admin = Login {
        csrf: common::set_up(&admin_http, &base, dir.path()).await,
        http: admin_http,
    };
    let resp = admin
        .http
        .post(url(&format!("{API}/users")))
        .header("x-csrf-token", &admin.csrf)
        .json(&json!({"name": AUDITOR, "role": "auditor", "password": AUDITOR_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "auditor added");
    let mut auditor = login(&base, AUDITOR, AUDITOR_PASSWORD).await;
    let admin_token = make_token(&base, &admin, "automation", "administrator").await;
    let auditor_token = make_token(&base, &auditor, "monitoring", "auditor").await;
    let revoked = make_token(&base, &admin, "gone", "administrator").await;
    let revoked_id = &revoked["keel_".len().."keel_".len() + 16];
    let resp = admin
        .http
        .delete(url(&format!("{API}/tokens/{revoked_id}")))
        .header("x-csrf-token", &admin.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "revoked");
    let expired = expired_token(&state);
    // Each credential answers as intended before the sweep relies on it.
    for (token, want) in [
        (&admin_token, StatusCode::OK),
        (&auditor_token, StatusCode::OK),
        (&revoked, StatusCode::UNAUTHORIZED),
        (&expired, StatusCode::UNAUTHORIZED),
    ] {
        let resp = anon
            .get(url(&format!("{API}/status")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), want);
    }

    // The document: only to a session, OpenAPI 3, this build's version, the
    // four security schemes the annotations name.
    let doc_url = url(keel_console::openapi::PATH);
    let resp = anon.get(&doc_url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = admin.http.get(&doc_url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let doc: Value = resp.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let schemes: BTreeSet<String> = doc["components"]["securitySchemes"]
        .as_object()
        .expect("components.securitySchemes")
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        schemes,
        ["csrf", "form_csrf", "session", "token"]
            .map(String::from)
            .into()
    );

    let before = snapshot(&base, &admin.http).await;
    if ns.is_some() {
        // With netd and keel-update there, every read compares real state.
        for (what, _) in &before {
            assert!(what.ends_with("(200 OK)"), "{what}");
        }
    }
    let ops = operations(&doc);
    // Collected, so one run names every fault the document's routes have.
    let failures: RefCell<Vec<String>> = RefCell::default();
    let mut token_on_forms = Vec::new();
    let mut public = BTreeSet::new();
    for op in &ops {
        let name = op.name();
        // Refused or not, every answer carries the security headers.
        let expect = |what: &str, a: &Answer, ok: bool| {
            if !ok {
                failures
                    .borrow_mut()
                    .push(format!("{name}: {what}: got {}", a.short()));
            }
            let missing = missing_security_headers(a);
            if !missing.is_empty() {
                failures
                    .borrow_mut()
                    .push(format!("{name}: {what}: no {}", missing.join(", ")));
            }
        };
        let Some(security) = op
            .security
            .as_ref()
            .filter(|reqs| !reqs.iter().any(BTreeSet::is_empty))
        else {
            public.insert((op.method.to_string(), op.path.clone()));
            let a = send(&anon, &base, op, Creds::None).await;
            expect("public, no credentials", &a, true);
            continue;
        };
        let key = (op.method.as_str(), op.path.as_str());
        let read_only = READ_ONLY_POSTS.contains(&key);
        if read_only && security.iter().any(|r| r.contains("csrf")) {
            failures
                .borrow_mut()
                .push(format!("{name}: in READ_ONLY_POSTS but takes a CSRF token"));
        }
        // The conventions of openapi.rs: known schemes; a session on a change
        // goes with its CSRF token; a form takes no token.
        for req in security {
            if let Some(unknown) = req.iter().find(|s| !schemes.contains(*s)) {
                failures
                    .borrow_mut()
                    .push(format!("{name}: unknown security scheme {unknown}"));
            }
            let csrf = if matches!(op.kind, Kind::Form { .. }) {
                "form_csrf"
            } else {
                "csrf"
            };
            if op.changes() && !read_only && req.contains("session") && !req.contains(csrf) {
                failures
                    .borrow_mut()
                    .push(format!("{name}: a session without {csrf} in its security"));
            }
            if matches!(op.kind, Kind::Form { .. }) && req.contains("token") {
                failures
                    .borrow_mut()
                    .push(format!("{name}: a form documented to take a token"));
            }
        }
        let under_api = op.path.starts_with(API);
        if under_api != (op.kind == Kind::Api) {
            failures.borrow_mut().push(format!(
                "{name}: tagged {:?} but {} the API",
                op.kind,
                if under_api { "under" } else { "outside" }
            ));
        }
        // No credentials: the API answers 401; a page or form sends the browser
        // to the login (or refuses), never does what it was asked.
        let refused_anonymous = |a: &Answer| match op.kind {
            Kind::Api => a.status == StatusCode::UNAUTHORIZED,
            _ => {
                (a.status == StatusCode::SEE_OTHER && a.location() == "/appliance/")
                    || a.status == StatusCode::UNAUTHORIZED
                    || (op.changes() && a.status == StatusCode::FORBIDDEN)
            }
        };
        let a = send(&anon, &base, op, Creds::None).await;
        expect("no credentials", &a, refused_anonymous(&a));

        if !op.changes() {
            // A read the admin's session may make (the services behind may be
            // absent: then 502/503, but never a refusal of the credentials).
            let a = send(&anon, &base, op, Creds::Session(&admin.http, None)).await;
            let s = a.status;
            expect(
                "admin session",
                &a,
                s.is_success()
                    || s.is_redirection()
                    || s == StatusCode::NOT_FOUND
                    || s == StatusCode::BAD_GATEWAY
                    || s == StatusCode::SERVICE_UNAVAILABLE,
            );
            continue;
        }

        if !read_only {
            let wrong = "0".repeat(admin.csrf.len());
            for (what, csrf) in [
                ("admin session, no CSRF token", None),
                ("admin session, wrong CSRF token", Some(wrong.as_str())),
            ] {
                let a = send(&anon, &base, op, Creds::Session(&admin.http, csrf)).await;
                expect(what, &a, a.status == StatusCode::FORBIDDEN);
            }
        }

        // The auditor: refused by the role gate, except its self-service.
        let own = SELF_SERVICE.contains(&(op.method.as_str(), op.path.as_str()));
        let a = send(
            &anon,
            &base,
            op,
            Creds::Session(&auditor.http, Some(&auditor.csrf)),
        )
        .await;
        if own {
            expect("auditor session, own account", &a, !a.by_role_gate());
        } else {
            expect("auditor session", &a, a.status == StatusCode::FORBIDDEN);
        }
        // A logout (or anything of its own) may have ended the auditor's session.
        let alive = auditor
            .http
            .get(url(&format!("{API}/status")))
            .send()
            .await
            .unwrap()
            .status();
        if alive != StatusCode::OK {
            auditor = login(&base, AUDITOR, AUDITOR_PASSWORD).await;
        }
        let a = send(&anon, &base, op, Creds::Token(&auditor_token)).await;
        if own {
            expect("auditor token, own account", &a, !a.by_role_gate());
        } else {
            expect("auditor token", &a, a.status == StatusCode::FORBIDDEN);
        }
        for (what, token) in [("revoked token", &revoked), ("expired token", &expired)] {
            let a = send(&anon, &base, op, Creds::Token(token)).await;
            expect(what, &a, a.status == StatusCode::UNAUTHORIZED);
        }
        if let Kind::Form { .. } = op.kind {
            // Tried last: the admin's token is the one credential here that a
            // form may (wrongly) act on.
            token_on_forms.push(op);
        }
    }

    // Everything so far changed nothing.
    let after = snapshot(&base, &admin.http).await;
    for ((what, was), (_, is)) in before.iter().zip(&after) {
        assert_eq!(was, is, "{what} changed in the sweep");
    }

    // Tokens are for the API: a form refuses even the admin's. The forms that
    // do not (FORMS_TAKING_TOKENS) go last, so the check above stays whole.
    token_on_forms.sort_by_key(|op| FORMS_TAKING_TOKENS.contains(&op.name().as_str()));
    let mut taken = Vec::new();
    for op in token_on_forms {
        let name = op.name();
        let a = send(&anon, &base, op, Creds::Token(&admin_token)).await;
        let refused = match a.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => true,
            StatusCode::SEE_OTHER => a.location() == "/appliance/",
            _ => false,
        };
        if !missing_security_headers(&a).is_empty() {
            failures
                .borrow_mut()
                .push(format!("{name}: admin token: no security headers"));
        }
        if FORMS_TAKING_TOKENS.contains(&name.as_str()) {
            if refused {
                failures.borrow_mut().push(format!(
                    "{name}: refuses an API token now: take it off FORMS_TAKING_TOKENS"
                ));
            }
            taken.push(format!("{name} ({})", a.status));
        } else if !refused {
            failures
                .borrow_mut()
                .push(format!("{name}: admin token on a form: got {}", a.short()));
        }
    }
    if !taken.is_empty() {
        let changed: Vec<String> = snapshot(&base, &admin.http)
            .await
            .into_iter()
            .zip(&after)
            .filter(|((_, is), (_, was))| is != was)
            .map(|((what, _), _)| what)
            .collect();
        println!(
            "KNOWN FAULT: {} forms took the admin's API token as a session (changed: {:?}):\n  {}",
            taken.len(),
            changed,
            taken.join("\n  ")
        );
    }

    let mut names: Vec<String> = ops.iter().map(Op::name).collect();
    names.sort();
    println!(
        "{} operations walked:\n  {}",
        names.len(),
        names.join("\n  ")
    );
    assert!(
        names.len() >= FLOOR,
        "only {} operations in the document",
        names.len()
    );
    // The lists of this file name only what the document holds.
    for listed in SELF_SERVICE
        .iter()
        .chain(READ_ONLY_POSTS)
        .map(|(m, p)| format!("{m} {p}"))
        .chain(FORMS_TAKING_TOKENS.iter().map(|n| n.to_string()))
    {
        assert!(
            names.contains(&listed),
            "{listed} is listed in tests/openapi.rs but not in the document"
        );
    }
    let listed: BTreeSet<(String, String)> = PUBLIC
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        public, listed,
        "the public operations differ from PUBLIC: a new public route is added there on purpose"
    );
    let failures = failures.into_inner();
    assert!(
        failures.is_empty(),
        "{} failures:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    // Not even the forms that took a token asked for a power action.
    assert!(
        std::fs::read_dir(dir.path().join("requests"))
            .unwrap()
            .next()
            .is_none(),
        "a power request was written"
    );
}
