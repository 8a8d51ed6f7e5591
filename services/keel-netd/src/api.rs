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
//! Errors: 400 malformed JSON, 413 too large, 422 invalid configuration, 409 state
//! conflict, 403 not the owner of the pending change, 500 apply failure (the
//! previous configuration is put back). Body `{"error": ..., "field": ...}`: `error`
//! is for people and names the interface (`eth0: 10.0.0.1/33 is not a valid
//! address`, see `fields`); `field`, when there is one, is the path of the first
//! field at fault in the body (`config.interfaces[0].addresses[0]`) for programs.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keel_api::{NetChangeRequest, NetConfirmRequest};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::fields;

use crate::service::{Netd, NetdError};

/// A configuration of 64 interfaces with many addresses stays well under this.
pub const MAX_BODY: usize = 64 * 1024;

pub struct ApiError(StatusCode, String, Option<String>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.1 });
        if let Some(f) = self.2 {
            body["field"] = Value::String(f);
        }
        (self.0, Json(body)).into_response()
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
        ApiError(status, e.to_string(), None)
    }
}

/// The configuration inside a request body and the path within it, for a path
/// of the whole body (`config.interfaces[0]` → `interfaces[0]`).
fn within_config<'a>(root: &'a Value, path: &'a str) -> (&'a Value, &'a str) {
    match path.strip_prefix("config.") {
        Some(rest) => (root.get("config").unwrap_or(&Value::Null), rest),
        None => (root, path),
    }
}

/// JSON body whose errors name what is at fault in the admin's terms (`fields`),
/// and give the path in `field`.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            return ApiError(
                StatusCode::BAD_REQUEST,
                format!("malformed JSON: {inner}"),
                None,
            );
        }
        // Well-formed JSON of the wrong shape: the value at the path is at hand.
        let root: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let (config, field) = within_config(&root, &path);
        let msg = fields::parse_error(config, field, &inner.to_string());
        ApiError(StatusCode::BAD_REQUEST, msg, Some(path))
    })
}

/// A refusal of `config`: validation errors name the interface, not its index.
fn refusal(e: NetdError, config: &Value) -> ApiError {
    match e {
        NetdError::Invalid(v) => {
            let msg =
                v.0.iter()
                    .map(|f| fields::validation_error(config, &f.field, &f.message))
                    .collect::<Vec<_>>()
                    .join("; ");
            let field = v.0.first().map(|f| format!("config.{}", f.field));
            ApiError(StatusCode::UNPROCESSABLE_ENTITY, msg, field)
        }
        e => e.into(),
    }
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
    let config = serde_json::to_value(&req.config).unwrap_or(Value::Null);
    let owner = req.owner.clone();
    let proposed = n.propose(req).await;
    keel_core::audit::local(&owner, "net.config.apply", None, &proposed).await;
    let pending = proposed.map_err(|e| refusal(e, &config))?;
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
    let owner = owner_of(&body)?;
    let done = n.confirm(&owner).await;
    keel_core::audit::local(&owner, "net.config.confirm", None, &done).await;
    done?;
    Ok(Json(n.state().await?).into_response())
}

async fn cancel(State(n): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let owner = owner_of(&body)?;
    let done = n.cancel(&owner).await;
    keel_core::audit::local(&owner, "net.config.cancel", None, &done).await;
    done?;
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
