//! API tokens over the real HTTPS console: created by a logged-in session and shown
//! once, stored hashed, used for reads and for changes without CSRF, refused when
//! expired, revoked, sent as a cookie, malformed, of an auditor for a change, of a
//! disabled owner, and for minting tokens; the *My account › API tokens* page.

mod common;

use std::os::unix::fs::PermissionsExt;

use keel_api::{NewUser, Role, TokenCreateRequest, UserChange};
use reqwest::{header, StatusCode};
use serde_json::{json, Value};

const TOKENS: &str = "/appliance/api/v1/tokens";

/// A client without cookies: what a script holding a token is.
fn script() -> reqwest::Client {
    let verifier = keel_certs::pinning::FingerprintVerifier::record_any();
    reqwest::Client::builder()
        .use_preconfigured_tls(verifier.client_config())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn error_of(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn tokens_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("requests")).unwrap();
    let console = common::serve(dir.path()).await;
    let url = |p: &str| console.url(p);
    let (browser, _) = common::client();
    let csrf = common::set_up(&browser, &console.base, dir.path()).await;

    // Creating needs the session's CSRF token.
    let ask = json!({"name": "ansible", "expires_in_days": 30});
    let resp = browser.post(url(TOKENS)).json(&ask).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // An expiry is required.
    let resp = browser
        .post(url(TOKENS))
        .header("x-csrf-token", &csrf)
        .json(&json!({"name": "forever"}))
        .send()
        .await
        .unwrap();
    let (status, msg) = error_of(resp).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(msg.contains("expiry is required"), "{msg}");
    assert!(!dir.path().join("console/tokens.json").exists());

    let resp = browser
        .post(url(TOKENS))
        .header("x-csrf-token", &csrf)
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let made: Value = resp.json().await.unwrap();
    let token = made["token"].as_str().unwrap().to_owned();
    let id = made["info"]["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with(&format!("keel_{id}_")), "{token}");
    assert_eq!(made["info"]["role"], "administrator");
    assert_eq!(made["info"]["owner"], "admin");

    // Stored hashed: the file (0600) holds neither the token nor its secret.
    let file = dir.path().join("console/tokens.json");
    let stored = std::fs::read_to_string(&file).unwrap();
    let secret = token.rsplit_once('_').map(|(_, s)| s).unwrap();
    assert!(stored.contains(&id) && !stored.contains(secret), "{stored}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Listed without the secret.
    let list = browser
        .get(url(TOKENS))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains(&id) && !list.contains(secret), "{list}");

    // A read and a change, no cookie, no CSRF token.
    let http = script();
    let bearer = format!("Bearer {token}");
    let resp = http
        .get(url("/appliance/api/v1/status"))
        .header(header::AUTHORIZATION, &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http
        .post(url("/appliance/api/v1/system/reboot"))
        .header(header::AUTHORIZATION, &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(dir.path().join("requests/reboot").exists());
    std::fs::remove_file(dir.path().join("requests/reboot")).unwrap();
    // The scheme is case-insensitive.
    let resp = http
        .get(url("/appliance/api/v1/status"))
        .header(header::AUTHORIZATION, format!("bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Last use is recorded.
    let list: Value = browser
        .get(url(TOKENS))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list["tokens"][0]["last_used"].is_string(), "{list}");

    // A token cannot mint tokens, not even with a CSRF header.
    let resp = http
        .post(url(TOKENS))
        .header(header::AUTHORIZATION, &bearer)
        .header("x-csrf-token", &csrf)
        .json(&ask)
        .send()
        .await
        .unwrap();
    let (status, msg) = error_of(resp).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(msg.contains("cannot create tokens"), "{msg}");

    // A token in the session cookie: told where it goes.
    let resp = http
        .get(url("/appliance/api/v1/status"))
        .header(header::COOKIE, format!("keel_session={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
    let (status, msg) = error_of(resp).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(msg.contains("Authorization: Bearer"), "{msg}");

    // Malformed headers: 401 saying what is expected.
    for bad in [
        format!("Token {token}"),
        "Bearer".to_owned(),
        "Bearer keel_nothex".to_owned(),
        token.clone(),
    ] {
        let resp = http
            .post(url("/appliance/api/v1/system/reboot"))
            .header(header::AUTHORIZATION, &bad)
            .send()
            .await
            .unwrap();
        let (status, msg) = error_of(resp).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(msg.contains("malformed API token"), "{bad}: {msg}");
    }
    assert!(!dir.path().join("requests/reboot").exists());

    // Expired: made in the past, for one day.
    let old = console
        .state
        .tokens
        .create(
            "admin",
            Role::Administrator,
            &TokenCreateRequest {
                name: "old".into(),
                role: None,
                expires_in_days: Some(1),
                expires: None,
            },
            time::OffsetDateTime::now_utc() - time::Duration::days(2),
        )
        .unwrap();
    let resp = http
        .get(url("/appliance/api/v1/status"))
        .bearer_auth(&old.token)
        .send()
        .await
        .unwrap();
    let (status, msg) = error_of(resp).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(msg.contains("expired"), "{msg}");

    // An auditor token (an administrator may make one) reads but changes nothing.
    let resp = browser
        .post(url(TOKENS))
        .header("x-csrf-token", &csrf)
        .json(&json!({"name": "monitoring", "role": "auditor", "expires": (time::OffsetDateTime::now_utc().date() + time::Duration::days(7)).to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let auditor: Value = resp.json().await.unwrap();
    let auditor = auditor["token"].as_str().unwrap().to_owned();
    let resp = http
        .get(url("/appliance/api/v1/status"))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http
        .post(url("/appliance/api/v1/system/reboot"))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(!dir.path().join("requests/reboot").exists());

    // Revoked: gone at once, and from the file.
    let resp = browser
        .delete(url(&format!("{TOKENS}/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "no CSRF token");
    let resp = browser
        .delete(url(&format!("{TOKENS}/{id}")))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http
        .get(url("/appliance/api/v1/status"))
        .header(header::AUTHORIZATION, &bearer)
        .send()
        .await
        .unwrap();
    let (status, msg) = error_of(resp).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(msg.contains("revoked"), "{msg}");
    assert!(!std::fs::read_to_string(&file).unwrap().contains(&id));
    let resp = browser
        .delete(url(&format!("{TOKENS}/{id}")))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

/// A console set up with an admin (the client, logged in) and the auditor "ann".
async fn with_auditor(dir: &std::path::Path) -> (common::Served, reqwest::Client) {
    let console = common::serve(dir).await;
    let (admin, _) = common::client();
    common::set_up(&admin, &console.base, dir).await;
    console
        .state
        .auth
        .add_user(&NewUser {
            name: "ann".into(),
            role: Role::Auditor,
            password: "another good password".into(),
        })
        .unwrap();
    (console, admin)
}

#[tokio::test]
async fn an_auditor_makes_auditor_tokens_only() {
    let dir = tempfile::tempdir().unwrap();
    let (console, admin) = with_auditor(dir.path()).await;
    let url = |p: &str| console.url(p);
    let (ann, _) = common::client();
    let resp = ann
        .post(url("/appliance/api/v1/login"))
        .json(&json!({"username": "ann", "password": "another good password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let csrf: Value = resp.json().await.unwrap();
    let csrf = csrf["csrf_token"].as_str().unwrap().to_owned();
    let make = |role: &str| {
        ann.post(url(TOKENS))
            .header("x-csrf-token", &csrf)
            .json(&json!({"name": "mine", "role": role, "expires_in_days": 1}))
            .send()
    };
    let (status, msg) = error_of(make("administrator").await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(msg.contains("only create auditor tokens"), "{msg}");
    let resp = make("auditor").await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "an auditor's own token");
    let made: Value = resp.json().await.unwrap();
    let id = made["info"]["id"].as_str().unwrap().to_owned();
    // The admin sees it among everyone's; ann revokes her own.
    let all: Value = admin
        .get(url(TOKENS))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["tokens"][0]["owner"], "ann");
    let resp = ann
        .delete(url(&format!("{TOKENS}/{id}")))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_disabled_owner_ends_its_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (console, admin) = with_auditor(dir.path()).await;
    let url = |p: &str| console.url(p);
    let made = console
        .state
        .tokens
        .create(
            "ann",
            Role::Auditor,
            &TokenCreateRequest {
                name: "monitoring".into(),
                role: None,
                expires_in_days: Some(30),
                expires: None,
            },
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    // The admin sees ann's token among everyone's.
    let all: Value = admin
        .get(url(TOKENS))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["tokens"][0]["owner"], "ann");
    let http = script();
    let status = || {
        http.get(url("/appliance/api/v1/status"))
            .bearer_auth(&made.token)
            .send()
    };
    assert_eq!(status().await.unwrap().status(), StatusCode::OK);
    console
        .state
        .auth
        .change_user(
            "admin",
            "ann",
            &UserChange {
                disabled: Some(true),
                role: None,
            },
        )
        .unwrap();
    let (code, msg) = error_of(status().await.unwrap()).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(msg.contains("disabled"), "{msg}");
}

#[tokio::test]
async fn the_page_shows_a_new_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let console = common::serve(dir.path()).await;
    let url = |p: &str| console.url(p);
    let (browser, _) = common::client();
    common::set_up(&browser, &console.base, dir.path()).await;
    let page = common::page(&browser, &url("/appliance/account/tokens")).await;
    assert!(
        page.contains("Create token") && page.contains("no API tokens"),
        "{page}"
    );
    let csrf = common::csrf_of(&page);

    // Bad input keeps what was typed and says what is wrong.
    let resp = browser
        .post(url("/appliance/account/tokens"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("name", "ci runner"),
            ("role", "auditor"),
            ("days", "400"),
            ("expires", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("1 to 365") && text.contains("value=\"ci runner\""),
        "{text}"
    );

    let resp = browser
        .post(url("/appliance/account/tokens"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("name", "ci runner"),
            ("role", "auditor"),
            ("days", "30"),
            ("expires", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(text.contains("will not be shown again"), "{text}");
    let token = text
        .split("value=\"keel_")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .map(|s| format!("keel_{s}"))
        .expect("the token on the page");
    let http = script();
    let resp = http
        .get(url("/appliance/api/v1/status"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Listed afterwards, never shown again; revoked from the page.
    let page = common::page(&browser, &url("/appliance/account/tokens")).await;
    assert!(
        page.contains("ci runner") && !page.contains(&token),
        "{page}"
    );
    let id = &token[5..21];
    let resp = browser
        .post(url("/appliance/account/tokens/revoke"))
        .form(&[("csrf", "wrong"), ("id", id)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = browser
        .post(url("/appliance/account/tokens/revoke"))
        .form(&[("csrf", csrf.as_str()), ("id", id)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let resp = http
        .get(url("/appliance/api/v1/status"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_demoted_owner_limits_its_tokens() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("requests")).unwrap();
    let (console, _admin) = with_auditor(dir.path()).await;
    let url = |p: &str| console.url(p);
    let auth = &console.state.auth;
    auth.add_user(&NewUser {
        name: "bob".into(),
        role: Role::Administrator,
        password: "yet another good password".into(),
    })
    .unwrap();
    let made = console
        .state
        .tokens
        .create(
            "bob",
            Role::Administrator,
            &TokenCreateRequest {
                name: "deploy".into(),
                role: None,
                expires_in_days: Some(30),
                expires: None,
            },
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    auth.change_user(
        "admin",
        "bob",
        &UserChange {
            disabled: None,
            role: Some(Role::Auditor),
        },
    )
    .unwrap();
    let http = script();
    let resp = http
        .get(url("/appliance/api/v1/status"))
        .bearer_auth(&made.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "still reads");
    let resp = http
        .post(url("/appliance/api/v1/system/reboot"))
        .bearer_auth(&made.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "changes no more");
    assert!(!dir.path().join("requests/reboot").exists());
}
