//! The audit log's local-API middleware over a real Unix socket: a test binary of
//! its own, since `audit::init` sets the process's one writer.

use axum::routing::{get, post};
use keel_api::AuditVia;
use keel_core::{audit, local_api};

/// A change over a real local socket is recorded when root asked (keelctl); a read
/// never is.
#[tokio::test]
async fn local_changes_by_root_are_recorded_with_their_route_and_result() {
    let dir = tempfile::tempdir().unwrap();
    let audit_dir = dir.path().join("audit");
    std::fs::create_dir(&audit_dir).unwrap();
    audit::init(&audit_dir, "svc");
    let router = axum::Router::new()
        .route("/servers", post(|| async { "set" }))
        .route(
            "/things/{id}",
            post(|| async { axum::http::StatusCode::CONFLICT }),
        )
        .route("/verdict", get(|| async { "fine" }))
        .layer(axum::middleware::from_fn(audit::local_changes));
    let sock = dir.path().join("api.sock");
    let listener = local_api::bind(&sock, 0o600).unwrap();
    tokio::spawn(local_api::serve(listener, router));
    let client = local_api::Client::new(&sock);
    let _ = client
        .call::<(), serde_json::Value>("GET", "/verdict", None)
        .await;
    let _ = client
        .call::<(), serde_json::Value>("POST", "/servers", None)
        .await;
    let _ = client
        .call::<(), serde_json::Value>("POST", "/things/7", None)
        .await;
    let all = audit::Filter {
        limit: 10,
        ..Default::default()
    };
    let (records, _) = audit::read(&audit_dir, &all).unwrap();
    if !nix::unistd::geteuid().is_root() {
        assert!(
            records.is_empty(),
            "only root's changes are recorded: {records:?}"
        );
        return;
    }
    let seen: Vec<(&str, &str, AuditVia, &str)> = records
        .iter()
        .map(|r| (r.action.as_str(), r.user.as_str(), r.via, r.result.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                "POST /things/{id}",
                "root",
                AuditVia::Keelctl,
                "refused: 409 Conflict"
            ),
            ("POST /servers", "root", AuditVia::Keelctl, "ok"),
        ],
        "newest first, no GET"
    );
    assert!(records
        .iter()
        .all(|r| r.service == "svc" && r.source == "local"));
}
