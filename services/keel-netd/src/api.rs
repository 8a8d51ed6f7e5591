//! netd's local API (HTTP/JSON on `/run/keel/netd/api.sock`), for the console and
//! keelctl.
//!
//! | method, path | body → answer |
//! |---|---|
//! | GET `/state` | → `NetState` (running, confirmed, pending, kernel links) |
//! | GET `/config` | → the running `NetConfig` |
//! | PUT `/config` | `NetChangeRequest {config, owner, confirm_seconds?}` → 202 `NetPending` |
//! | GET `/pending` | → `NetPending` or `null` |
//! | POST `/confirm` | `NetConfirmRequest {owner}` → `NetState` |
//! | POST `/cancel` | `NetConfirmRequest {owner}` → `NetState` (reverted now) |
//! | GET `/links` | → `[NetLink]` |
//!
//! Errors: 400 malformed JSON (naming the field), 413 too large, 422 invalid
//! configuration (naming the field), 409 state conflict, 403 not the owner of the
//! pending change, 500 apply failure (the previous configuration is put back).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keel_api::{ErrorBody, NetChangeRequest, NetConfirmRequest};
use serde::de::DeserializeOwned;

use crate::service::{Netd, NetdError};

/// A configuration of 64 interfaces with many addresses stays well under this.
pub const MAX_BODY: usize = 64 * 1024;

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<NetdError> for ApiError {
    fn from(e: NetdError) -> Self {
        let status = match &e {
            NetdError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            NetdError::Conflict(_) => StatusCode::CONFLICT,
            NetdError::NotOwner(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

/// JSON body whose errors name the field: `config.interfaces[0].addresses[1]: ...`.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = if path == "." {
            format!("malformed JSON: {inner}")
        } else {
            format!("{path}: {inner}")
        };
        ApiError(StatusCode::BAD_REQUEST, msg)
    })
}

type Shared = Arc<Netd>;

async fn state(State(n): State<Shared>) -> Result<Response, ApiError> {
    Ok(Json(n.state().await?).into_response())
}

async fn config(State(n): State<Shared>) -> Result<Response, ApiError> {
    Ok(Json(n.state().await?.running).into_response())
}

async fn put_config(State(n): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let req: NetChangeRequest = parse(&body)?;
    let pending = n.propose(req).await?;
    Ok((StatusCode::ACCEPTED, Json(pending)).into_response())
}

async fn pending(State(n): State<Shared>) -> Json<Option<keel_api::NetPending>> {
    Json(n.pending().await)
}

fn owner_of(body: &[u8]) -> Result<String, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(String::new());
    }
    Ok(parse::<NetConfirmRequest>(body)?.owner)
}

async fn confirm(State(n): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    n.confirm(&owner_of(&body)?).await?;
    Ok(Json(n.state().await?).into_response())
}

async fn cancel(State(n): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    n.cancel(&owner_of(&body)?).await?;
    Ok(Json(n.state().await?).into_response())
}

async fn links(State(n): State<Shared>) -> Result<Response, ApiError> {
    let links = n.kernel().links().await.map_err(NetdError::from)?;
    Ok(Json(links).into_response())
}

pub fn router(netd: Arc<Netd>) -> Router {
    Router::new()
        .route("/state", get(state))
        .route("/config", get(config).put(put_config))
        .route("/pending", get(pending))
        .route("/confirm", post(confirm))
        .route("/cancel", post(cancel))
        .route("/links", get(links))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(netd)
}
