//! The audit log over the real HTTPS server: logins (good and bad), a CSRF refusal,
//! a change through the API, a form posted without a session and the local API's
//! reset each leave a record with user, source, via and result; the CSV and JSON
//! downloads and the API parse and honour their filters; no password, token or CSRF
//! text reaches the files.

mod common;

use keel_console::{app, audit};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A wrong password that must never reach the log.
const WRONG: &str = "wrong-guess-Tr0ub4dor";
/// An API token nobody issued, presented as a bearer.
const FAKE_TOKEN: &str = "keel_0123456789abcdef0123456789abcdef";

async fn records(http: &reqwest::Client, base: &str, query: &str) -> Vec<Value> {
    let resp = http
        .get(format!("{base}/appliance/status/audit.json{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp
        .headers()
        .get("content-disposition")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("audit.json"));
    resp.json::<Vec<Value>>().await.unwrap()
}

/// The newest record of `action` with `result`.
fn find<'a>(recs: &'a [Value], action: &str, result: &str) -> &'a Value {
    recs.iter()
        .find(|r| r["action"] == action && r["result"] == result)
        .unwrap_or_else(|| panic!("no {action} with {result} in {recs:#?}"))
}

/// Every byte of every file in the audit directory.
fn audit_files_text(dir: &std::path::Path) -> String {
    let mut text = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        text.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_recorded_and_downloads_honour_filters() {
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("requests")).unwrap();
    let served = common::serve(data.path()).await;
    let (admin, _) = common::client();
    let setup_code = common::setup_code(data.path());
    let csrf = common::set_up(&admin, &served.base, data.path()).await;

    // A failed login, with a user name carrying a control character.
    let (other, _) = common::client();
    let resp = other
        .post(served.url("/appliance/api/v1/login"))
        .json(&json!({"username": "admin", "password": WRONG}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = other
        .post(served.url("/appliance/api/v1/login"))
        .json(&json!({"username": "mallory\u{1b}[2J", "password": WRONG}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    // A good one.
    let resp = other
        .post(served.url("/appliance/api/v1/login"))
        .json(&json!({"username": "admin", "password": common::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let other_csrf = resp.json::<Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Refused for want of the CSRF token, then done with it.
    let resp = admin
        .post(served.url("/appliance/api/v1/system/reboot"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = admin
        .post(served.url("/appliance/api/v1/system/reboot"))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    // A form posted with no session at all, and a bearer nobody issued.
    let (anon, _) = common::client();
    let resp = anon
        .post(served.url("/appliance/system/shutdown"))
        .form(&[("csrf", "0123")])
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_redirection(), "{}", resp.status());
    let resp = anon
        .post(served.url("/appliance/api/v1/system/shutdown"))
        .bearer_auth(FAKE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        !data.path().join("requests/poweroff").exists(),
        "nothing refused was carried out"
    );

    let recs = records(&admin, &served.base, "").await;
    let setup = find(&recs, "setup", "ok");
    assert_eq!(setup["user"], "admin");
    let bad = recs
        .iter()
        .find(|r| r["action"] == "login" && r["user"] == "admin" && r["result"] != "ok")
        .expect("the failed login");
    assert_eq!(bad["result"], "refused: 401 Unauthorized");
    assert_eq!(bad["source"], "127.0.0.1");
    assert_eq!(bad["via"], "api");
    assert_eq!(bad["service"], "console");
    assert!(
        recs.iter().any(|r| r["action"] == "login"
            && r["user"] == "mallory?[2J"
            && r["result"].as_str().unwrap().starts_with("refused: ")),
        "the tried name, sanitised: {recs:#?}"
    );
    let good = find(&recs, "login", "ok");
    assert_eq!(good["user"], "admin");
    let refused = find(&recs, "system.reboot", "refused: 403 Forbidden");
    assert_eq!(refused["user"], "admin");
    assert_eq!(refused["source"], "127.0.0.1");
    let done = find(&recs, "system.reboot", "ok");
    assert_eq!(done["via"], "api");
    let form = find(&recs, "system.shutdown", "refused: not logged in");
    assert_eq!(form["user"], "anonymous");
    assert_eq!(form["via"], "console");
    let bearer = find(&recs, "system.shutdown", "refused: 401 Unauthorized");
    assert_eq!(bearer["via"], "token");
    // Newest first: the last request is the first record.
    assert_eq!(recs[0], *bearer);
    let ts: Vec<&str> = recs.iter().map(|r| r["ts"].as_str().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] >= w[1]), "{ts:?}");
    // Reads are not changes.
    assert!(recs
        .iter()
        .all(|r| r["action"] != "GET /appliance/status/audit.json"));

    // Filters: by user, and by time in the API (empty fields are no filter).
    let anon_only = records(&admin, &served.base, "?user=anonymous").await;
    assert_eq!(anon_only.len(), 2, "{anon_only:#?}");
    assert!(anon_only.iter().all(|r| r["user"] == "anonymous"));
    let none = records(&admin, &served.base, "?until=2000-01-01").await;
    assert!(none.is_empty());
    let since_ok = records(&admin, &served.base, &format!("?since={}", ts[2])).await;
    let want = ts.iter().filter(|t| **t >= ts[2]).count();
    assert!(want >= 3 && want < ts.len());
    assert_eq!(since_ok.len(), want, "{since_ok:#?}");
    let page: Value = admin
        .get(served.url("/appliance/api/v1/audit?user=&since=&until=&limit=2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["records"].as_array().unwrap().len(), 2);
    assert_eq!(page["more"], true);
    assert_eq!(page["records"][0], recs[0]);
    let bad_time = admin
        .get(served.url("/appliance/api/v1/audit?since=last+week"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_time.status(), StatusCode::BAD_REQUEST);
    assert!(bad_time.text().await.unwrap().contains("is not a time"));

    // CSV: a header, one row per record, same order, the filter applied.
    let resp = admin
        .get(served.url("/appliance/status/audit.csv?user=admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = resp.text().await.unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], audit::CSV_HEADER);
    let admin_recs = records(&admin, &served.base, "?user=admin").await;
    assert_eq!(rows.len() - 1, admin_recs.len(), "{csv}");
    for (row, rec) in rows[1..].iter().zip(&admin_recs) {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells.len(), 8, "{row}");
        assert_eq!(cells[0], rec["ts"]);
        assert_eq!(cells[2], "admin");
        assert_eq!(cells[5], rec["action"]);
    }

    // The page lists them, with the filter kept in the form and the downloads.
    let html = common::page(&admin, &served.url("/appliance/status/audit?user=admin")).await;
    assert!(html.contains("Status › Audit log"), "{html}");
    assert!(html.contains("system.reboot"));
    assert!(html.contains("value=\"admin\""));
    assert!(html.contains("/appliance/status/audit.csv?user=admin"));
    assert!(!html.contains("mallory"), "filtered out");

    // Only a session reads it.
    for path in [
        "/appliance/status/audit.json",
        "/appliance/status/audit.csv",
        "/appliance/api/v1/audit",
    ] {
        let resp = anon.get(served.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }

    // The local menu's password reset, through the console's local API.
    let socket = data.path().join("api.sock");
    let local = keel_core::local_api::bind(&socket, 0o600).unwrap();
    tokio::spawn(keel_core::local_api::serve(
        local,
        audit::local(
            app::local_router(served.state.clone()),
            served.state.clone(),
        ),
    ));
    let client = keel_core::local_api::Client::new(&socket);
    let _: Value = client
        .call::<(), Value>("POST", "/admin/reset-password", None)
        .await
        .unwrap();
    // Every session is gone now: read the files themselves.
    let recs: Vec<Value> = served
        .state
        .audit
        .query(&Default::default(), 100)
        .await
        .unwrap()
        .records
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    let reset = find(&recs, "admin.reset-password", "ok");
    assert_eq!(reset["user"], "root");
    assert_eq!(reset["source"], "local");
    assert_eq!(reset["via"], "local-menu");
    // The reset ended every session.
    assert_eq!(
        admin
            .get(served.url("/appliance/status/audit.json"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // No secret anywhere in the files.
    let text = audit_files_text(&data.path().join("console/audit"));
    for secret in [
        common::PASSWORD,
        WRONG,
        FAKE_TOKEN,
        csrf.as_str(),
        other_csrf.as_str(),
        setup_code.trim(),
    ] {
        assert!(!text.contains(secret), "{secret:?} in the audit files");
    }
    assert!(text.starts_with("{\"format\":1,"), "{text}");
}

/// A client that hangs up while its change is being made: the change runs to its
/// end and is recorded (hyper drops a request's future when its connection closes;
/// the middleware runs the request on a task of its own for that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_client_hangs_up_is_finished_and_recorded() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    let data = tempfile::tempdir().unwrap();
    let (identity, _) = common::identity(data.path());
    let state = common::app_state(data.path(), &identity);
    let done = Arc::new(AtomicBool::new(false));
    let finished = done.clone();
    let started = Arc::new(tokio::sync::Notify::new());
    let starting = started.clone();
    let slow = axum::routing::post(move || async move {
        starting.notify_one();
        tokio::time::sleep(Duration::from_millis(600)).await;
        finished.store(true, Ordering::SeqCst);
        "made"
    });
    let router = axum::Router::new()
        .route("/appliance/slow-change", slow)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ));
    let resolver = Arc::new(keel_console::tls::CertResolver::new(
        keel_certs::certified_key(&identity).unwrap(),
    ));
    let config = Arc::new(keel_console::tls::server_config(resolver).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(keel_console::tls::serve_https(listener, config, router));

    let (http, _) = common::client();
    // The client gives up once the change has started (dropping the request
    // closes its connection), not after a fixed time: a TLS handshake on a busy
    // host may take longer than any short timeout.
    let client = tokio::spawn(async move {
        http.post(format!("{base}/appliance/slow-change"))
            .send()
            .await
    });
    tokio::time::timeout(Duration::from_secs(20), started.notified())
        .await
        .expect("the change started");
    client.abort();
    let sent = client.await;
    assert!(
        sent.as_ref().is_err_and(|e| e.is_cancelled()),
        "the client gave up before the answer: {sent:?}"
    );
    assert!(
        !done.load(Ordering::SeqCst),
        "hung up before the change ended"
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let recorded = loop {
        let dir = data.path().join("console/audit");
        let log = if dir.exists() {
            audit_files_text(&dir)
        } else {
            String::new()
        };
        if log.contains("POST /appliance/slow-change") {
            break log;
        }
        assert!(std::time::Instant::now() < deadline, "no record: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(done.load(Ordering::SeqCst), "the change ran to its end");
    assert!(recorded.contains(r#""result":"ok""#), "{recorded}");
}
