//! Login rate limiting over the real HTTPS server: a parallel burst of wrong
//! passwords from one address is counted before any hash is checked, locks that
//! address only, and an admin elsewhere still gets in.

mod common;

use std::net::IpAddr;

use keel_console::auth;
use reqwest::StatusCode;
use serde_json::json;

/// A client like `common::client`, its connections from `local`.
fn client_from(local: IpAddr) -> reqwest::Client {
    let verifier = keel_certs::pinning::FingerprintVerifier::record_any();
    reqwest::Client::builder()
        .use_preconfigured_tls(verifier.client_config())
        .local_address(local)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parallel_burst_locks_its_source_only() {
    let data = tempfile::tempdir().unwrap();
    let served = common::serve(data.path()).await;
    let (http, _) = common::client();
    common::set_up(&http, &served.base, data.path()).await;

    let attacker = client_from("127.0.0.1".parse().unwrap());
    let url = served.url("/appliance/api/v1/login");
    let burst = (0..60).map(|_| {
        let (attacker, url) = (attacker.clone(), url.clone());
        tokio::spawn(async move {
            attacker
                .post(url)
                .json(&json!({"password": "wrong password"}))
                .send()
                .await
                .unwrap()
                .status()
        })
    });
    let mut codes = Vec::new();
    for task in burst.collect::<Vec<_>>() {
        codes.push(task.await.unwrap());
    }
    let wrong = codes
        .iter()
        .filter(|c| **c == StatusCode::UNAUTHORIZED)
        .count();
    assert!(
        wrong <= auth::MAX_FAILURES,
        "{wrong} passwords checked: {codes:?}"
    );
    assert!(
        codes
            .iter()
            .all(|c| *c == StatusCode::UNAUTHORIZED || *c == StatusCode::TOO_MANY_REQUESTS),
        "{codes:?}"
    );
    // Locked out even with the password...
    let resp = attacker
        .post(&url)
        .json(&json!({"password": common::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("this address"));
    // ...while the admin at another address gets in.
    let admin = client_from("127.0.0.2".parse().unwrap());
    let resp = admin
        .post(&url)
        .json(&json!({"password": common::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Over the HTML form too: the same limiter, and a refusal says why.
#[tokio::test]
async fn the_login_form_is_limited_the_same_way() {
    let data = tempfile::tempdir().unwrap();
    let served = common::serve(data.path()).await;
    let (http, _) = common::client();
    common::set_up(&http, &served.base, data.path()).await;
    let (browser, _) = common::client();
    let page = common::page(&browser, &served.url("/appliance/")).await;
    let csrf = common::csrf_of(&page);
    let mut codes = Vec::new();
    for _ in 0..auth::MAX_FAILURES + 1 {
        let resp = browser
            .post(served.url("/appliance/login"))
            .form(&[("csrf", csrf.as_str()), ("password", "wrong password")])
            .send()
            .await
            .unwrap();
        codes.push(resp.status().as_u16());
    }
    assert_eq!(codes[..auth::MAX_FAILURES], [401; auth::MAX_FAILURES]);
    assert_eq!(codes[auth::MAX_FAILURES], 429);
}
