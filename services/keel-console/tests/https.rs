//! The console's routers behind its real TLS server on loopback, driven by a real
//! HTTPS client (reqwest + rustls) that pins the served certificate.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use keel_certs::pinning::FingerprintVerifier;
use keel_console::{app, auth};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Console {
    base: String,
    fingerprint: String,
    data: tempfile::TempDir,
    /// The root-only local API (what keelctl on the box calls).
    local: keel_core::local_api::Client,
}

impl Console {
    fn requests_dir(&self) -> PathBuf {
        self.data.path().join("requests")
    }

    fn setup_code(&self) -> String {
        common::setup_code(self.data.path())
    }

    fn client(&self) -> (reqwest::Client, Arc<FingerprintVerifier>) {
        common::client()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

async fn start() -> Console {
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("requests")).unwrap();
    let served = common::serve(data.path()).await;
    assert!(served.created);
    let socket = data.path().join("api.sock");
    let local = keel_core::local_api::bind(&socket, 0o600).unwrap();
    tokio::spawn(keel_core::local_api::serve(
        local,
        app::local_router(served.state),
    ));
    Console {
        base: served.base,
        fingerprint: served.fingerprint,
        data,
        local: keel_core::local_api::Client::new(socket),
    }
}

async fn json_of(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn api_setup_login_status_and_power_with_csrf() {
    let c = start().await;
    let (http, verifier) = c.client();

    let (st, body) = json_of(
        http.get(c.url("/appliance/api/v1/setup"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body["setup_required"], true);
    // The certificate on the wire is the stored one.
    assert_eq!(verifier.seen().as_deref(), Some(c.fingerprint.as_str()));

    // Status needs a session.
    let resp = http
        .get(c.url("/appliance/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Wrong setup code: clear error, still not set up.
    let (st, body) = json_of(
        http.post(c.url("/appliance/api/v1/setup"))
            .json(&json!({"setup_code": "XXXX-XXXX-XXXX", "password": "a good password"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "wrong setup code");
    assert!(!c.data.path().join("console/admin.json").exists());

    // A form-encoded post (what a cross-site form can send) is refused.
    let resp = http
        .post(c.url("/appliance/api/v1/setup"))
        .body("setup_code=x&password=y")
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let (st, body) = json_of(
        http.post(c.url("/appliance/api/v1/setup"))
            .json(&json!({"setup_code": c.setup_code(), "password": "a good password"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();

    let (st, status) = json_of(
        http.get(c.url("/appliance/api/v1/status"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(status["certificate"]["sha256_fingerprint"], c.fingerprint);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].as_u64().unwrap() > 0);
    assert!(status["data_total_bytes"].as_u64().unwrap() > 0);

    // State changes need the CSRF header and a same-origin request.
    let resp = http
        .post(c.url("/appliance/api/v1/system/reboot"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = http
        .post(c.url("/appliance/api/v1/system/reboot"))
        .header("x-csrf-token", &csrf)
        .header("origin", "https://evil.example")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(std::fs::read_dir(c.requests_dir()).unwrap().count(), 0);

    // A factory reset needs the typed confirmation.
    let (st, body) = json_of(
        http.post(c.url("/appliance/api/v1/system/factory-reset"))
            .header("x-csrf-token", &csrf)
            .json(&json!({"confirm": "reset please"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("RESET"));
    assert_eq!(std::fs::read_dir(c.requests_dir()).unwrap().count(), 0);
    let resp = http
        .post(c.url("/appliance/api/v1/system/factory-reset"))
        .header("x-csrf-token", &csrf)
        .json(&json!({"confirm": "RESET", "power_off": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(c.requests_dir().join("factory-reset-poweroff").exists());

    let resp = http
        .post(c.url("/appliance/api/v1/system/shutdown"))
        .header("x-csrf-token", &csrf)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(c.requests_dir().join("poweroff").exists());

    // Logout ends the session for good.
    let resp = http
        .post(c.url("/appliance/api/v1/logout"))
        .header("x-csrf-token", &csrf)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = http
        .get(c.url("/appliance/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn local_password_reset_starts_setup_over() {
    let c = start().await;
    let (http, _) = c.client();
    let old_code = c.setup_code();
    let (st, body) = json_of(
        http.post(c.url("/appliance/api/v1/setup"))
            .json(&json!({"setup_code": old_code, "password": "a good password"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let banner: keel_api::Banner = c.local.call::<(), _>("GET", "/banner", None).await.unwrap();
    assert_eq!(banner.setup_code, None);

    let answer: Value = c
        .local
        .call::<(), _>("POST", "/admin/reset-password", None)
        .await
        .unwrap();
    assert_eq!(answer["setup_required"], true);

    // The session from before is gone; the old password no longer logs in.
    let resp = http
        .get(c.url("/appliance/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (st, _) = json_of(
        http.post(c.url("/appliance/api/v1/login"))
            .json(&json!({"password": "a good password"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);

    // The banner carries the new code, and it sets a new password.
    let banner: keel_api::Banner = c.local.call::<(), _>("GET", "/banner", None).await.unwrap();
    let code = banner.setup_code.expect("a new setup code on the banner");
    assert_ne!(code, old_code);
    assert_eq!(code, c.setup_code());
    let (st, _) = json_of(
        http.post(c.url("/appliance/api/v1/setup"))
            .json(&json!({"setup_code": old_code, "password": "another password"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, body) = json_of(
        http.post(c.url("/appliance/api/v1/setup"))
            .json(&json!({"setup_code": code, "password": "another password"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let resp = http
        .get(c.url("/appliance/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let c = start().await;
    let (http, _) = c.client();
    let big = vec![b'a'; 2 * 1024 * 1024];
    let (st, body) = json_of(
        http.post(c.url("/appliance/api/v1/login"))
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["error"].as_str().unwrap().contains("over the limit"));

    let (st, body) = json_of(
        http.post(c.url("/appliance/api/v1/login"))
            .header("content-type", "application/json")
            .body("{\"password\": 12")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(st.is_client_error(), "{st}");
    assert!(body["error"].is_string());

    // Not set up yet: login says what to do instead.
    let (st, body) = json_of(
        http.post(c.url("/appliance/api/v1/login"))
            .json(&json!({"password": "whatever"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert!(body["error"].as_str().unwrap().contains("setup code"));

    let (st, _) = json_of(
        http.get(c.url("/appliance/api/v1/nope"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn repeated_wrong_passwords_are_rate_limited() {
    let c = start().await;
    let (http, _) = c.client();
    let resp = http
        .post(c.url("/appliance/api/v1/setup"))
        .json(&json!({"setup_code": c.setup_code(), "password": "a good password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut codes = Vec::new();
    for _ in 0..auth::MAX_FAILURES + 1 {
        let resp = http
            .post(c.url("/appliance/api/v1/login"))
            .json(&json!({"password": "wrong password"}))
            .send()
            .await
            .unwrap();
        codes.push(resp.status().as_u16());
    }
    assert_eq!(codes[..auth::MAX_FAILURES], [401; auth::MAX_FAILURES]);
    assert_eq!(codes[auth::MAX_FAILURES], 429);
}

#[tokio::test]
async fn html_console_setup_and_basics_page() {
    let c = start().await;
    let (http, _) = c.client();
    let resp = http.get(c.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    let page = common::page(&http, &c.url("/appliance/")).await;
    assert!(page.contains("Set up this appliance"));
    let csrf = common::csrf_of(&page);
    let code = c.setup_code();
    // Without the form's token: refused, nothing stored.
    let resp = http
        .post(c.url("/appliance/setup"))
        .form(&[
            ("setup_code", code.as_str()),
            ("password", "a good password"),
            ("password2", "a good password"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(!c.data.path().join("console/admin.json").exists());
    // Mismatched repeat.
    let resp = http
        .post(c.url("/appliance/setup"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("setup_code", code.as_str()),
            ("password", "a good password"),
            ("password2", "another password"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(resp.text().await.unwrap().contains("differ"));
    let resp = http
        .post(c.url("/appliance/setup"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("setup_code", code.as_str()),
            ("password", "a good password"),
            ("password2", "a good password"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let page = common::page(&http, &c.url("/appliance/")).await;
    assert!(page.contains("Status › Basics"), "{page}");
    // Shown as browsers show it (AB:CD:...), the API keeps the bare hex.
    assert!(
        page.contains(&keel_certs::fingerprint_display(&c.fingerprint)),
        "{page}"
    );
    assert!(!page.contains(&c.fingerprint), "{page}");
    // Escaping: nothing a client controls is rendered raw (hostname etc. come from
    // the kernel, but the template engine escapes every field).
    assert!(!page.contains("<script"));
}

#[tokio::test]
async fn restart_and_shut_down_ask_first_in_the_html_console() {
    let c = start().await;
    let (http, _) = c.client();
    common::set_up(&http, &c.base, c.data.path()).await;
    let basics = common::page(&http, &c.url("/appliance/")).await;
    let csrf = common::csrf_of(&basics);
    // The buttons lead to a page; nothing is requested by opening it.
    assert!(
        basics.contains("method=\"get\" action=\"/appliance/system/reboot\""),
        "{basics}"
    );
    for (path, file, question) in [
        (
            "/appliance/system/reboot",
            "reboot",
            "Restart the appliance?",
        ),
        (
            "/appliance/system/shutdown",
            "poweroff",
            "Shut down the appliance?",
        ),
    ] {
        let ask = common::page(&http, &c.url(path)).await;
        assert!(ask.contains(question), "{ask}");
        assert!(ask.contains("name=\"confirm\" value=\"yes\""), "{ask}");
        assert_eq!(
            common::csrf_of(&ask),
            csrf,
            "the form carries the session's token"
        );
        // A post without the confirmation (the old one-click form) only asks.
        let resp = http
            .post(c.url(path))
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.text().await.unwrap().contains(question));
        assert!(
            !c.requests_dir().join(file).exists(),
            "{file} without confirmation"
        );
        // Confirmed, but with another token: refused.
        let resp = http
            .post(c.url(path))
            .form(&[("csrf", "0".repeat(32).as_str()), ("confirm", "yes")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(!c.requests_dir().join(file).exists());
        // Confirmed from the page: done.
        let resp = http
            .post(c.url(path))
            .form(&[("csrf", csrf.as_str()), ("confirm", "yes")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        assert!(c.requests_dir().join(file).exists(), "{file} requested");
    }
    // Without a session the confirmation page is the login page.
    let (anon, _) = c.client();
    let resp = anon
        .get(c.url("/appliance/system/reboot"))
        .send()
        .await
        .unwrap();
    assert!(!resp
        .text()
        .await
        .unwrap()
        .contains("Restart the appliance?"));
}

#[tokio::test]
async fn api_base_answers_an_index_and_unknown_endpoints_point_at_it() {
    let c = start().await;
    let (http, _) = c.client();
    for path in ["/appliance/api/v1", "/appliance/api/v1/"] {
        let (status, v) = json_of(http.get(c.url(path)).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{path}: {v}");
        assert_eq!(v["api_version"], "v1", "{v}");
        assert!(v["name"].as_str().unwrap().contains("Keel"), "{v}");
        let areas = v["areas"].as_array().unwrap();
        let paths: Vec<&str> = areas.iter().map(|a| a["path"].as_str().unwrap()).collect();
        for want in [
            "/appliance/api/v1/status",
            "/appliance/api/v1/net/config",
            "/appliance/api/v1/certs",
        ] {
            assert!(paths.contains(&want), "{want} in {paths:?}");
        }
        assert!(
            v["documentation"]["reference"]
                .as_str()
                .unwrap()
                .contains("docs/interfaces.md"),
            "{v}"
        );
        assert_eq!(
            v["documentation"]["openapi"],
            keel_console::openapi::PATH,
            "{v}"
        );
        assert!(
            v.get("product_version").is_none(),
            "version only to a session: {v}"
        );
    }
    common::set_up(&http, &c.base, c.data.path()).await;
    let (_, v) = json_of(http.get(c.url("/appliance/api/v1")).send().await.unwrap()).await;
    assert!(v["product_version"].is_string(), "{v}");
    // Every endpoint listed exists: with a session, a GET answers anything but the
    // unknown-endpoint 404 (405 for POST-only ones).
    for a in v["areas"].as_array().unwrap() {
        let path = a["path"].as_str().unwrap();
        if path == "/appliance/api/v1/certs" {
            // Added by certs::routes over the store, which this server has not
            // (tests/certs.rs serves it).
            continue;
        }
        let resp = http.get(c.url(path)).send().await.unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert!(
            !(status == StatusCode::NOT_FOUND && body.contains("lists what the API offers")),
            "{path} is listed but not routed: {status} {body}"
        );
    }
    let (status, e) = json_of(
        http.get(c.url("/appliance/api/v1/no-such-thing"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("GET /appliance/api/v1 lists"),
        "{e}"
    );
}
