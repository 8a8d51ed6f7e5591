//! The console's time routes and Basics section, against a stand-in keel-timed on
//! a local socket (keel-timed's own tests cover the measuring).

mod common;

use std::sync::{Arc, Mutex};

use axum::routing::{get, post};
use axum::{http::StatusCode as AxStatus, Json};
use common::csrf_of;
use keel_api::{DaemonSync, ServerReport, ServerState, TimeState, TimeVerdict};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn verdict(state: TimeState) -> TimeVerdict {
    TimeVerdict {
        state,
        offset_seconds: Some(300.0),
        threshold_seconds: 1.0,
        message: "The clock is 5 min 0 s behind the NTP servers (offset +300.000 s).".into(),
        checked_at: "2026-11-25T05:00:00Z".into(),
        duration_ms: 5,
        servers: vec![ServerReport {
            server: "ntp.test".into(),
            address: Some("192.0.2.1:123".into()),
            state: ServerState::Ok,
            offset_seconds: Some(300.0),
            delay_seconds: Some(0.002),
            stratum: Some(2),
            leap: Some("none".into()),
            reference_id: Some("192.0.2.9".into()),
            requests_sent: 4,
            valid_replies: 4,
            error: None,
        }],
        servers_source: "timed".into(),
        manual: None,
        daemon: DaemonSync {
            name: "systemd-timesyncd".into(),
            running: true,
            synchronized: false,
            last_sync: None,
            kernel_synchronized: false,
        },
        warnings: vec![],
    }
}

/// A stand-in keel-timed: answers a skewed verdict, records manual times.
fn fake_timed(set: Arc<Mutex<Vec<String>>>) -> axum::Router {
    axum::Router::new()
        .route(
            "/verdict",
            get(|| async { Json(verdict(TimeState::Skewed)) }),
        )
        .route(
            "/check",
            post(|| async { Json(verdict(TimeState::Skewed)) }),
        )
        .route(
            "/manual",
            post(move |Json(body): Json<Value>| {
                let set = set.clone();
                async move {
                    let t = body["time"].as_str().unwrap_or("").to_owned();
                    if t == "bad" {
                        return Err((
                            AxStatus::BAD_REQUEST,
                            Json(json!({"error": "\"bad\" is not a time"})),
                        ));
                    }
                    set.lock().unwrap().push(t);
                    Ok(Json(verdict(TimeState::Manual)))
                }
            }),
        )
}

/// One test: the timed socket location is process-wide.
#[tokio::test]
async fn time_api_and_basics_section() {
    let data = tempfile::tempdir().unwrap();
    let console = common::serve(data.path()).await;
    let url = |p: &str| console.url(p);
    let (http, _) = common::client();

    // timed not running (nothing at the socket yet).
    let sock = data.path().join("timed/api.sock");
    keel_console::time::set_socket(sock.clone());

    // Needs a session.
    let resp = http
        .get(url("/appliance/api/v1/time"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let csrf = common::set_up(&http, &console.base, data.path()).await;

    let resp = http
        .get(url("/appliance/api/v1/time"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .starts_with("NTP check unavailable"),
        "{err}"
    );
    // The Basics page still renders, and says so.
    let page = common::page(&http, &url("/appliance/")).await;
    assert!(page.contains("Status › Basics"), "{page}");
    assert!(page.contains("<h2>Time</h2>") && page.contains("NTP check unavailable"));

    // Now timed answers.
    let set = Arc::new(Mutex::new(Vec::new()));
    let listener = keel_core::local_api::bind(&sock, 0o600).unwrap();
    tokio::spawn(keel_core::local_api::serve(
        listener,
        fake_timed(set.clone()),
    ));

    let v: TimeVerdict = http
        .get(url("/appliance/api/v1/time"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v.state, TimeState::Skewed);

    // A check is a change: CSRF header required.
    let resp = http
        .post(url("/appliance/api/v1/time/check"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = http
        .post(url("/appliance/api/v1/time/check"))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Manual time: timed's refusal passes through with its status.
    let resp = http
        .post(url("/appliance/api/v1/time/manual"))
        .header("x-csrf-token", &csrf)
        .json(&json!({"time": "bad"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = http
        .post(url("/appliance/api/v1/time/manual"))
        .json(&json!({"time": "2026-11-25 05:00"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let v: TimeVerdict = http
        .post(url("/appliance/api/v1/time/manual"))
        .header("x-csrf-token", &csrf)
        .json(&json!({"time": "2026-11-25 05:00"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v.state, TimeState::Manual);
    assert_eq!(*set.lock().unwrap(), vec!["2026-11-25 05:00".to_string()]);

    // The Basics page shows the verdict, the servers and the forms.
    let page = common::page(&http, &url("/appliance/")).await;
    assert!(page.contains("5 min 0 s behind the NTP servers"), "{page}");
    assert!(page.contains("ntp.test (192.0.2.1:123)") && page.contains("+300.000 s"));
    assert!(page.contains("systemd-timesyncd: running, not synchronized yet"));
    assert!(page.contains("action=\"/appliance/time/manual\""));
    let form_csrf = csrf_of(&page);

    // The HTML forms: CSRF field required, then back to the page.
    let resp = http
        .post(url("/appliance/time/manual"))
        .form(&[("time", "2026-11-25 06:00")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = http
        .post(url("/appliance/time/manual"))
        .form(&[("csrf", form_csrf.as_str()), ("time", "2026-11-25 06:00")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(set.lock().unwrap().len(), 2);
    let resp = http
        .post(url("/appliance/time/manual"))
        .form(&[("csrf", form_csrf.as_str()), ("time", "bad")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().contains("is not a time"));
    let resp = http
        .post(url("/appliance/time/check"))
        .form(&[("csrf", form_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    // Other API paths still reach the API's own fallback.
    let resp = http
        .get(url("/appliance/api/v1/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}
