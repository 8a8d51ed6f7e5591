//! The console access policy over real HTTPS: security headers on every kind of
//! answer, TLS versions and suites as Debian's openssl client sees them, the source
//! filter (a client bound to 127.0.0.2; only 127.0.0.1 and ::1 are always allowed),
//! a lock-out refused, session limits applied, and no inline style on any page.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keel_console::{app, certs, tls};
use reqwest::{header, StatusCode};
use serde_json::{json, Value};

/// The console over `data` wired as `main` does: the certificate store's routes
/// merged in, the access filter and headers around everything, the TLS config per
/// connection under the access policy; on 127.0.0.1.
async fn serve(data: &Path) -> (common::Served, u16) {
    let (identity, created) = common::identity(data);
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
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(tls::serve_https(listener, resolver, router));
    let served = common::Served {
        base: format!("https://127.0.0.1:{port}"),
        fingerprint: state.cert.sha256_fingerprint.clone(),
        state,
        created,
    };
    (served, port)
}

/// A browser-like client whose connections come from `local`.
fn client_from(local: IpAddr) -> reqwest::Client {
    let verifier = keel_certs::pinning::FingerprintVerifier::record_any();
    reqwest::Client::builder()
        .use_preconfigured_tls(verifier.client_config())
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .local_address(local)
        .build()
        .unwrap()
}

async fn login(http: &reqwest::Client, base: &str) -> String {
    let resp = http
        .post(format!("{base}/appliance/api/v1/login"))
        .json(&json!({"username": "admin", "password": common::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json::<Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn put_policy(
    http: &reqwest::Client,
    base: &str,
    csrf: &str,
    policy: Value,
) -> reqwest::Response {
    http.put(format!("{base}/appliance/api/v1/access"))
        .header("x-csrf-token", csrf)
        .json(&policy)
        .send()
        .await
        .unwrap()
}

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn assert_security_headers(what: &str, resp: &reqwest::Response, cache: &str) {
    let h = resp.headers();
    let get = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{what}: no {name} header"))
            .to_owned()
    };
    assert!(
        get("strict-transport-security").starts_with("max-age="),
        "{what}"
    );
    assert_eq!(get("content-security-policy"), CSP, "{what}");
    assert_eq!(get("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(get("referrer-policy"), "same-origin", "{what}");
    assert_eq!(get("x-frame-options"), "DENY", "{what}");
    assert_eq!(get("cache-control"), cache, "{what}");
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = serve(dir.path()).await;
    let (http, _) = common::client();

    // 401 before login, the setup page, then a page and an API answer with a session.
    let resp = http
        .get(s.url("/appliance/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_security_headers("401", &resp, "no-store");
    let resp = http.get(s.url("/appliance/")).send().await.unwrap();
    assert_security_headers("setup page", &resp, "no-store");
    common::set_up(&http, &s.base, dir.path()).await;
    let resp = http.get(s.url("/appliance/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_security_headers("page", &resp, "no-store");
    let resp = http
        .get(s.url("/appliance/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_security_headers("API answer", &resp, "no-store");
    // The certificate routes (merged after app::router's layers) too.
    let resp = http
        .get(s.url("/appliance/security/certificates"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_security_headers("certificates page", &resp, "no-store");
    for path in [
        "/appliance/no-such-page",
        "/appliance/api/v1/no-such-endpoint",
    ] {
        let resp = http.get(s.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        assert_security_headers(path, &resp, "no-store");
    }

    // The stylesheet: CSS, cacheable, validated by its ETag, linked by version.
    let resp = http
        .get(s.url("/appliance/static/keel.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_security_headers("stylesheet", &resp, "public, max-age=86400");
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "text/css; charset=utf-8"
    );
    let etag = resp.headers()[header::ETAG].to_str().unwrap().to_owned();
    let css = resp.text().await.unwrap();
    assert!(css.contains("@media (max-width:"), "a phone layout");
    let resp = http
        .get(s.url("/appliance/static/keel.css"))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_security_headers("stylesheet 304", &resp, "public, max-age=86400");
    let html = common::page(&http, &s.url("/appliance/")).await;
    let version = etag.trim_matches('"');
    assert!(
        html.contains(&format!("href=\"/appliance/static/keel.css?v={version}\"")),
        "{html}"
    );
}

/// Every page a logged-in admin can open from the navigation (plus the pages
/// before login, the access page's refusals and the source filter's), with no
/// inline style: the CSP would block it.
#[tokio::test]
async fn no_page_has_inline_style() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = serve(dir.path()).await;
    let (http, _) = common::client();
    let check = |what: &str, html: &str| {
        assert!(!html.contains("style="), "{what} has a style attribute");
        assert!(!html.contains("<style"), "{what} has a style element");
        assert!(!html.contains("<script"), "{what} has a script");
    };
    check(
        "setup page",
        &common::page(&http, &s.url("/appliance/")).await,
    );
    let csrf = common::set_up(&http, &s.base, dir.path()).await;

    let basics = common::page(&http, &s.url("/appliance/")).await;
    // The header: the appliance's name and version, a Log out button.
    let hostname = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert!(
        basics.contains(&format!("id=\"appliance-name\">{hostname}</span>")),
        "{basics}"
    );
    assert!(basics.contains(&format!(
        "id=\"appliance-version\">Keel {}</span>",
        keel_console::status::running_version()
    )));
    assert!(basics.contains("class=\"logout\">Log out</button>"));
    let links: Vec<String> = basics
        .split("<nav")
        .nth(1)
        .unwrap()
        .split("</nav>")
        .next()
        .unwrap()
        .split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect();
    assert!(links.len() >= 8, "{links:?}");
    let mut pages = 0;
    for link in std::iter::once("/appliance/".to_owned()).chain(links) {
        let resp = http.get(s.url(&link)).send().await.unwrap();
        let status = resp.status();
        let html = resp.text().await.unwrap();
        check(&link, &html);
        if status == StatusCode::OK {
            assert!(html.contains("/appliance/static/keel.css"), "{link}");
            pages += 1;
        }
    }
    assert!(pages >= 6, "only {pages} pages answered");

    // Refusals render the same layout.
    let resp = http
        .post(s.url("/appliance/security/access"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("allowed_networks", "10.0.0.300/8"),
            ("min_tls_version", "1.2"),
            ("cipher_policy", "default"),
            ("session_idle_minutes", "30"),
            ("session_lifetime_hours", "12"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    check("access page with an error", &resp.text().await.unwrap());
    let resp = put_policy(
        &http,
        &s.base,
        &csrf,
        json!({"allowed_networks": ["127.0.0.1/32"]}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let other = client_from("127.0.0.2".parse().unwrap());
    let resp = other.get(s.url("/appliance/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    check("refused page", &resp.text().await.unwrap());
}

#[tokio::test]
async fn source_filter_and_lock_out() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = serve(dir.path()).await;
    let (http, _) = common::client();
    let csrf = common::set_up(&http, &s.base, dir.path()).await;
    let other = client_from("127.0.0.2".parse().unwrap());

    // Everyone by default.
    let resp = other.get(s.url("/appliance/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Only 127.0.0.1/32: 127.0.0.2 is refused before any handler, as a page and as
    // JSON, with the security headers; 127.0.0.1 goes on.
    let resp = put_policy(
        &http,
        &s.base,
        &csrf,
        json!({"allowed_networks": ["127.0.0.1/32"]}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let view: Value = resp.json().await.unwrap();
    assert_eq!(view["policy"]["allowed_networks"], json!(["127.0.0.1/32"]));
    assert_eq!(view["client_address"], "127.0.0.1");
    let resp = other.get(s.url("/appliance/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_security_headers("403 page", &resp, "no-store");
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("Your address 127.0.0.2 is not allowed to reach this console"),
        "{html}"
    );
    // Refused before the login handler: not even a wrong password is checked.
    let resp = other
        .post(s.url("/appliance/api/v1/login"))
        .json(&json!({"username": "admin", "password": common::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("127.0.0.2"),
        "{body}"
    );
    let resp = other
        .get(s.url("/appliance/api/v1/certs"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "certificate routes filtered"
    );
    let resp = http
        .get(s.url("/appliance/api/v1/access"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Let 127.0.0.2 in (as a /31 with the host bits written: stored canonical),
    // log in from there, and try to shut itself out.
    let resp = put_policy(
        &http,
        &s.base,
        &csrf,
        json!({"allowed_networks": ["127.0.0.3/31", "2001:db8::/32"]}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let view: Value = resp.json().await.unwrap();
    assert_eq!(
        view["policy"]["allowed_networks"],
        json!(["127.0.0.2/31", "2001:db8::/32"])
    );
    let other_csrf = login(&other, &s.base).await;
    let stored = std::fs::read(dir.path().join("console/access.json")).unwrap();
    let resp = put_policy(
        &other,
        &s.base,
        &other_csrf,
        json!({"allowed_networks": ["10.0.0.0/8"]}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let body: Value = resp.json().await.unwrap();
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("would lock you out: your address 127.0.0.2"),
        "{msg}"
    );
    // Nothing changed: the file, and 127.0.0.2 still gets in.
    assert_eq!(
        std::fs::read(dir.path().join("console/access.json")).unwrap(),
        stored
    );
    let resp = other
        .get(s.url("/appliance/api/v1/access"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // The same through the page: the refusal beside the field, the input kept.
    let page = common::page(&other, &s.url("/appliance/security/access")).await;
    assert!(page.contains("id=\"client-address\">127.0.0.2</code>"));
    let form_csrf = common::csrf_of(&page);
    let resp = other
        .post(s.url("/appliance/security/access"))
        .form(&[
            ("csrf", form_csrf.as_str()),
            ("allowed_networks", "10.0.0.0/8\n192.0.2.0/24"),
            ("min_tls_version", "1.2"),
            ("cipher_policy", "default"),
            ("session_idle_minutes", "30"),
            ("session_lifetime_hours", "12"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("10.0.0.0/8\n192.0.2.0/24</textarea>"),
        "{html}"
    );
    assert!(
        html.contains(
            "id=\"allowed_networks-error\">this change would lock you out: your address 127.0.0.2"
        ),
        "{html}"
    );

    // A bad CIDR and a bad number: each beside its field, the input kept, nothing
    // stored.
    let resp = other
        .post(s.url("/appliance/security/access"))
        .form(&[
            ("csrf", form_csrf.as_str()),
            ("allowed_networks", "127.0.0.2/31, 10.0.0.300/8"),
            ("min_tls_version", "1.3"),
            ("cipher_policy", "strict"),
            ("session_idle_minutes", "ten"),
            ("session_lifetime_hours", "48"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = resp.text().await.unwrap();
    assert!(html.contains("127.0.0.2/31, 10.0.0.300/8</textarea>"));
    assert!(html.contains("id=\"allowed_networks-error\">10.0.0.300/8 is not a network"));
    assert!(
        html.contains("id=\"session_idle_minutes-error\">&#34;ten&#34; is not a number of minutes")
            || html.contains(
                "id=\"session_idle_minutes-error\">&quot;ten&quot; is not a number of minutes"
            ),
        "{html}"
    );
    assert!(html.contains("id=\"session_lifetime_hours-error\">48 hours is outside 1–24"));
    assert!(html.contains("value=\"ten\""));
    assert!(html.contains("<option value=\"1.3\" selected>"));
    assert_eq!(
        std::fs::read(dir.path().join("console/access.json")).unwrap(),
        stored
    );

    // Without CSRF, without a session: refused, nothing stored.
    let resp = put_policy(&other, &s.base, "wrong", json!({"allowed_networks": []})).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let (anon, _) = common::client();
    let resp = put_policy(&anon, &s.base, "", json!({"allowed_networks": []})).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Unknown fields are refused by name.
    let resp = put_policy(&http, &s.base, &csrf, json!({"allowed": []})).await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("unknown field `allowed`"));
    assert_eq!(
        std::fs::read(dir.path().join("console/access.json")).unwrap(),
        stored
    );

    // A restart reads the stored policy: 127.0.0.2 in, 127.0.0.4 out.
    let (s2, _) = serve(dir.path()).await;
    let resp = other.get(s2.url("/appliance/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let far = client_from("127.0.0.4".parse().unwrap());
    let resp = far.get(s2.url("/appliance/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

/// A session idle longer than its limit is gone; a policy change replaces the
/// limits in force (here a 1 s idle limit set directly, below the public minimum).
#[tokio::test]
async fn session_limits_follow_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = serve(dir.path()).await;
    let (http, _) = common::client();
    common::set_up(&http, &s.base, dir.path()).await;
    let status = |c: &reqwest::Client| {
        let url = s.url("/appliance/api/v1/status");
        let c = c.clone();
        async move { c.get(url).send().await.unwrap().status() }
    };
    assert_eq!(status(&http).await, StatusCode::OK);

    let idle = Duration::from_secs(1);
    s.state
        .auth
        .set_session_limits(keel_console::auth::SessionLimits {
            idle,
            max: Duration::from_secs(3600),
        });
    tokio::time::sleep(idle + Duration::from_millis(500)).await;
    assert_eq!(status(&http).await, StatusCode::UNAUTHORIZED, "idle limit");

    // The policy (5 min idle, 1 h) replaces the 1 s limit: a session idle for
    // longer than 1 s lives on.
    let policy = keel_api::AccessPolicy {
        session_idle_minutes: 5,
        session_lifetime_hours: 1,
        ..Default::default()
    };
    s.state
        .access
        .update(policy.clone(), "127.0.0.1".parse().unwrap(), &s.state.auth)
        .unwrap();
    let again = login(&http, &s.base).await;
    tokio::time::sleep(idle + Duration::from_millis(500)).await;
    assert_eq!(status(&http).await, StatusCode::OK, "policy's idle limit");

    // The API shows and stores it; a bad value is refused by field.
    let view: Value = http
        .get(s.url("/appliance/api/v1/access"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["policy"]["session_idle_minutes"], 5);
    assert_eq!(view["policy"]["session_lifetime_hours"], 1);
    let resp = put_policy(
        &http,
        &s.base,
        &again,
        json!({"session_idle_minutes": 4, "session_lifetime_hours": 1}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"],
        "session_idle_minutes: 4 minutes is outside 5–240"
    );
    assert_eq!(
        keel_console::access::Access::open(dir.path().join("console")).policy(),
        policy
    );
}

/// `openssl s_client` against the console: whether the handshake completed, and
/// everything it printed. `None` when Debian's openssl is not installed.
async fn s_client(port: u16, args: &[&str]) -> Option<(bool, String)> {
    let out = tokio::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-brief")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("openssl: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((text.contains("CONNECTION ESTABLISHED"), text))
}

/// The server ended the handshake with an alert (protocol_version or
/// handshake_failure, as rustls chooses), as openssl reports it.
fn refused_by_server(openssl_output: &str) -> bool {
    openssl_output.contains("alert protocol version")
        || openssl_output.contains("alert handshake failure")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_versions_and_suites_follow_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (s, port) = serve(dir.path()).await;
    if s_client(port, &["-tls1_3"]).await.is_none() {
        eprintln!("skipped: no openssl binary (scripts/deps.sh installs Debian's openssl)");
        return;
    }
    // TLS 1.0 and 1.1: the client offers them (its own floor lowered to security
    // level 0) and the server refuses with an alert (a client that refused by
    // itself would print "no protocols available" and no alert).
    for v in ["-tls1", "-tls1_1"] {
        let (ok, text) = s_client(port, &[v, "-cipher", "DEFAULT@SECLEVEL=0"])
            .await
            .unwrap();
        assert!(!ok, "{v} accepted: {text}");
        assert!(refused_by_server(&text), "{v}: {text}");
    }
    let (ok, text) = s_client(port, &["-tls1_2"]).await.unwrap();
    assert!(ok && text.contains("Protocol version: TLSv1.2"), "{text}");
    let (ok, text) = s_client(
        port,
        &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"],
    )
    .await
    .unwrap();
    assert!(ok && text.contains("TLS_AES_128_GCM_SHA256"), "{text}");

    // Minimum 1.3 and strict suites: TLS 1.2 refused, AES-128 refused, AES-256 on.
    let (http, _) = common::client();
    let csrf = common::set_up(&http, &s.base, dir.path()).await;
    let resp = put_policy(
        &http,
        &s.base,
        &csrf,
        json!({"min_tls_version": "1.3", "cipher_policy": "strict"}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let view: Value = resp.json().await.unwrap();
    assert_eq!(
        view["cipher_suites"],
        json!(["TLS13_AES_256_GCM_SHA384", "TLS13_CHACHA20_POLY1305_SHA256"])
    );
    // The connection that made the change goes on (its handshake is done).
    assert_eq!(
        http.get(s.url("/appliance/api/v1/access"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let (ok, text) = s_client(port, &["-tls1_2"]).await.unwrap();
    assert!(!ok, "TLS 1.2 accepted after min 1.3: {text}");
    assert!(refused_by_server(&text), "{text}");
    let (ok, text) = s_client(
        port,
        &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"],
    )
    .await
    .unwrap();
    assert!(!ok, "AES-128 accepted under strict: {text}");
    assert!(refused_by_server(&text), "{text}");
    let (ok, text) = s_client(
        port,
        &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
    )
    .await
    .unwrap();
    assert!(ok && text.contains("Protocol version: TLSv1.3"), "{text}");

    // A rustls client limited to TLS 1.2 is refused too.
    let verifier = keel_certs::pinning::FingerprintVerifier::record_any();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls12 = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let old = reqwest::Client::builder()
        .use_preconfigured_tls(tls12)
        .build()
        .unwrap();
    assert!(old.get(s.url("/appliance/")).send().await.is_err());

    // Back to 1.2 without a restart.
    let resp = put_policy(&http, &s.base, &csrf, json!({})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (ok, text) = s_client(port, &["-tls1_2"]).await.unwrap();
    assert!(ok, "{text}");
}
