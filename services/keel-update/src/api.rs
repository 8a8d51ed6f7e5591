//! keel-update's local API (`/run/keel/update.sock`, 0660 root:keel-update), per
//! `keel_api::update`:
//!
//! | method, path | body → answer |
//! |---|---|
//! | GET `/status` | → `UpdateStatus` |
//! | POST `/install[?reboot=true]` | the bundle file, streamed → `InstallAnswer` |
//! | POST `/rollback` | `RollbackRequest {confirm: "ROLLBACK"}` → 202 `InstallAnswer` |
//!
//! Errors, body `{"error": "..."}`: 400 not a valid bundle (damaged, truncated,
//! not signed by a trusted key) or a bad request, 422 refused (clock gate, no
//! keys, downgrade, replay, requirements, too large, app bundle, running on
//! trial, nothing to roll back to), 409 an install is running, 500 writing,
//! read-back or arming failed.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keel_api::{ErrorBody, RollbackRequest};
use serde::Deserialize;

use crate::service::{ErrorKind, UpdateError, Updater};

/// A rollback request is a few bytes.
const MAX_JSON: usize = 4096;

impl IntoResponse for UpdateError {
    fn into_response(self) -> Response {
        let status = match self.kind {
            ErrorKind::BadBundle | ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Refused => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Busy => StatusCode::CONFLICT,
            ErrorKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
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
        .with_state(updater)
}
