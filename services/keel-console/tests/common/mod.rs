//! The harness the console's integration tests share: its state over a temporary
//! data directory laid out as on the box, the real TLS server on loopback, and an
//! HTTPS client that pins whatever certificate it is served.

// Each test binary compiles this module on its own and uses a different part of it.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use keel_certs::pinning::FingerprintVerifier;
use keel_console::{app, auth, tls};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The admin password the tests set up.
pub const PASSWORD: &str = "a good password";

/// The built-in identity in `<data>/console/tls`, for 127.0.0.1; `true` if made now.
pub fn identity(data: &Path) -> (keel_certs::Identity, bool) {
    keel_certs::DefaultIdentity::new(data.join("console/tls"))
        .load_or_create("keel-test", &["127.0.0.1".parse().unwrap()])
        .unwrap()
}

/// The console's state over `data` (`console/` for auth, `requests/` for power
/// requests), serving `identity`.
pub fn app_state(data: &Path, identity: &keel_certs::Identity) -> Arc<app::AppState> {
    Arc::new(app::AppState {
        certs: Default::default(),
        status_cache: Default::default(),
        live: Default::default(),
        auth: auth::Auth::open(data.join("console")).unwrap(),
        cert: keel_certs::info(&identity.cert_pem).unwrap(),
        requests_dir: data.join("requests"),
        data_mount: data.to_path_buf(),
        tokens: keel_console::tokens::Tokens::open(data.join("console")).unwrap(),
        audit: keel_console::audit::AuditLog::open(data.join("console/audit")),
        access: keel_console::access::Access::open(data.join("console")),
    })
}

/// A console serving `app::router` over HTTPS on 127.0.0.1.
pub struct Served {
    /// `https://127.0.0.1:PORT`
    pub base: String,
    /// SHA-256 fingerprint of the certificate it serves.
    pub fingerprint: String,
    pub state: Arc<app::AppState>,
    /// Whether the identity was made by this start (not found on disk).
    pub created: bool,
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

/// Starts the console over `data` with its built-in certificate, on a free port.
pub async fn serve(data: &Path) -> Served {
    let (identity, created) = identity(data);
    let state = app_state(data, &identity);
    let fingerprint = state.cert.sha256_fingerprint.clone();
    let resolver = Arc::new(tls::CertResolver::new(
        keel_certs::certified_key(&identity).unwrap(),
    ));
    let config = Arc::new(tls::server_config(resolver).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(tls::serve_https(
        listener,
        config,
        app::router(state.clone()),
    ));
    Served {
        base,
        fingerprint,
        state,
        created,
    }
}

/// A browser-like client: keeps cookies, follows no redirects, accepts any
/// certificate and records which one it saw.
pub fn client() -> (reqwest::Client, Arc<FingerprintVerifier>) {
    let verifier = FingerprintVerifier::record_any();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(verifier.client_config())
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    (client, verifier)
}

/// The setup code the console wrote under `data`.
pub fn setup_code(data: &Path) -> String {
    std::fs::read_to_string(data.join("console/setup-code")).unwrap()
}

/// Sets the admin password with the setup code (the client is then logged in);
/// returns the session's CSRF token.
pub async fn set_up(http: &reqwest::Client, base: &str, data: &Path) -> String {
    let resp = http
        .post(format!("{base}/appliance/api/v1/setup"))
        .json(&json!({"setup_code": setup_code(data), "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json::<Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The CSRF token of an HTML form.
pub fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned()
}

/// The text of a page the client gets.
pub async fn page(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}
