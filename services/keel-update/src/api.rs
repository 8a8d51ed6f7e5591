//! keel-update's local API (`/run/keel/update.sock`, 0660 root:keel-update), per
//! `keel_api::update`:
//!
//! | method, path | body → answer |
//! |---|---|
//! | GET `/status` | → `UpdateStatus` |
//! | POST `/install[?reboot=true]` | the bundle file, streamed → `InstallAnswer` |
//! | POST `/rollback` | `RollbackRequest {confirm: "ROLLBACK"}` → 202 `InstallAnswer` |
//! | GET, PUT `/settings` | `UpdateSettingsRequest` → `UpdateSettings` (no password) |
//! | POST `/check` | → `AvailableUpdates` (the signed feed, fetched and verified) |
//! | GET `/available` | → the last `AvailableUpdates` (404 before a check) |
//! | POST `/install-online` | `InstallOnlineRequest {version, reboot}` → `InstallAnswer` |
//! | POST `/install-all` | → `ChainStatus` once the first step is armed (it reboots) |
//! | POST `/download-key` | → `DownloadKeyAnswer` |
//!
//! Errors, body `{"error": "..."}`: 400 not a valid bundle (damaged, truncated,
//! not signed by a trusted key) or a bad request, 422 refused (clock gate, no
//! keys, downgrade, replay, requirements, too large, app bundle, running on
//! trial, nothing to roll back to, stale feed, settings refused), 409 an install is
//! running, 500 writing, read-back or arming failed, 502 the feed server or proxy
//! unreachable or broke off.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keel_api::{ErrorBody, InstallOnlineRequest, RollbackRequest, UpdateSettingsRequest};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::service::{ErrorKind, UpdateError, Updater};

/// A rollback or install-online request is a few bytes.
const MAX_JSON: usize = 4096;
/// Settings carry a PEM CA certificate (at most 64 KiB) and a few URLs.
const MAX_SETTINGS: usize = crate::settings::MAX_CA_PEM + 16 * 1024;

impl IntoResponse for UpdateError {
    fn into_response(self) -> Response {
        let status = match self.kind {
            ErrorKind::BadBundle | ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Refused => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Busy => StatusCode::CONFLICT,
            ErrorKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Network => StatusCode::BAD_GATEWAY,
        };
        (
            status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct InstallQuery {
    #[serde(default)]
    pub reboot: bool,
}

type Shared = Arc<Updater>;

async fn status(State(u): State<Shared>) -> Response {
    Json(u.status()).into_response()
}

async fn install(
    State(u): State<Shared>,
    Query(q): Query<InstallQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match u.install(body, len, q.reboot).await {
        Ok(a) => Json(a).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn rollback(State(u): State<Shared>, body: Bytes) -> Response {
    let req: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return UpdateError {
                    kind: ErrorKind::BadRequest,
                    message: format!("malformed JSON: {e}"),
                }
                .into_response()
            }
        }
    };
    match u.rollback(req).await {
        Ok(a) => (StatusCode::ACCEPTED, Json(a)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A small JSON body (empty: the type's default).
#[allow(clippy::result_large_err)]
fn json_body<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        UpdateError {
            kind: ErrorKind::BadRequest,
            message: format!("malformed JSON: {e}"),
        }
        .into_response()
    })
}

fn answer<T: serde::Serialize>(r: Result<T, UpdateError>) -> Response {
    match r {
        Ok(a) => Json(a).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn get_settings(State(u): State<Shared>) -> Response {
    Json(u.settings()).into_response()
}

async fn put_settings(State(u): State<Shared>, body: Bytes) -> Response {
    match json_body::<UpdateSettingsRequest>(&body) {
        Ok(req) => answer(u.put_settings(&req)),
        Err(r) => r,
    }
}

async fn check(State(u): State<Shared>) -> Response {
    answer(u.check().await)
}

async fn available(State(u): State<Shared>) -> Response {
    match u.last_available() {
        Some(a) => Json(a).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(ErrorBody {
                error: "no check for updates yet".into(),
            }),
        )
            .into_response(),
    }
}

async fn install_online(State(u): State<Shared>, body: Bytes) -> Response {
    match json_body::<InstallOnlineRequest>(&body) {
        Ok(req) => answer(
            u.install_from_feed(&req.version, req.app.as_deref(), req.reboot)
                .await,
        ),
        Err(r) => r,
    }
}

async fn install_all(State(u): State<Shared>) -> Response {
    answer(u.install_all().await)
}

async fn download_key(State(u): State<Shared>) -> Response {
    answer(u.download_key().await)
}

pub fn router(updater: Arc<Updater>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route(
            "/install",
            // The body is streamed into the slot, never collected: no size limit here
            // (the signed manifest and the slot size bound what is written).
            post(install).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/rollback",
            post(rollback).layer(DefaultBodyLimit::max(MAX_JSON)),
        )
        .route(
            "/settings",
            get(get_settings)
                .put(put_settings)
                .layer(DefaultBodyLimit::max(MAX_SETTINGS)),
        )
        .route("/check", post(check))
        .route("/available", get(available))
        .route(
            "/install-online",
            post(install_online).layer(DefaultBodyLimit::max(MAX_JSON)),
        )
        .route("/install-all", post(install_all))
        .route("/download-key", post(download_key))
        .with_state(updater)
}
