//! The local API (Unix socket, keel-core style), used by the console's *Failover*
//! page and `keelctl failover`: status in any state, the inter-appliance key,
//! establish, sync, become-primary, break, automatic takeover on/off.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use keel_api::{
    AutoTakeoverRequest, ErrorBody, EstablishRequest, FailoverOverview, PskBody, SyncReport,
};
use serde::Serialize;

use crate::daemon::{Daemon, Failure, WithWarnings};
use crate::dns::DnsConfig;

type Answer<T> = Result<Json<T>, (StatusCode, Json<ErrorBody>)>;

fn fail(f: Failure) -> (StatusCode, Json<ErrorBody>) {
    (
        StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(ErrorBody { error: f.message }),
    )
}

/// `FailoverOverview` and, when there are any, `warnings` beside its fields
/// (e.g. a break done here while the peer did not answer).
#[derive(Serialize)]
pub struct Warned {
    #[serde(flatten)]
    pub overview: FailoverOverview,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn warned(r: Result<WithWarnings<FailoverOverview>, Failure>) -> Answer<Warned> {
    r.map(|w| {
        Json(Warned {
            overview: w.value,
            warnings: w.warnings,
        })
    })
    .map_err(fail)
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/psk", get(psk).put(set_psk))
        .route("/psk/generate", post(generate_psk))
        .route("/establish", post(establish))
        .route("/sync", post(sync))
        .route("/become-primary", post(become_primary))
        .route("/break", post(break_relationship))
        .route("/auto-takeover", post(auto_takeover))
        .route("/dns", get(dns).put(set_dns))
        .layer(axum::middleware::from_fn_with_state(daemon.clone(), busy))
        .with_state(daemon)
}

async fn status(State(d): State<Arc<Daemon>>) -> Json<FailoverOverview> {
    Json(d.overview().await)
}

async fn psk(State(d): State<Arc<Daemon>>) -> Answer<PskBody> {
    d.psk().await.map(Json).map_err(fail)
}

async fn set_psk(State(d): State<Arc<Daemon>>, Json(body): Json<PskBody>) -> Answer<PskBody> {
    d.set_psk(body).await.map(Json).map_err(fail)
}

async fn generate_psk(State(d): State<Arc<Daemon>>) -> Answer<PskBody> {
    d.generate_psk().await.map(Json).map_err(fail)
}

async fn establish(
    State(d): State<Arc<Daemon>>,
    Json(req): Json<EstablishRequest>,
) -> Answer<FailoverOverview> {
    d.establish_and_sync(req).await.map(Json).map_err(fail)
}

async fn sync(State(d): State<Arc<Daemon>>) -> Answer<SyncReport> {
    d.sync_now().await.map(Json).map_err(fail)
}

async fn become_primary(State(d): State<Arc<Daemon>>) -> Answer<Warned> {
    warned(d.become_primary().await)
}

async fn break_relationship(State(d): State<Arc<Daemon>>) -> Answer<Warned> {
    warned(d.break_relationship().await)
}

async fn auto_takeover(
    State(d): State<Arc<Daemon>>,
    Json(req): Json<AutoTakeoverRequest>,
) -> Answer<FailoverOverview> {
    d.set_auto_takeover(req.enabled)
        .await
        .map(Json)
        .map_err(fail)
}

async fn dns(State(d): State<Arc<Daemon>>) -> Answer<DnsConfig> {
    d.dns().await.map(Json).map_err(fail)
}

/// The body is checked here rather than by axum's `Json<DnsConfig>`: a refusal
/// (`ttl: 0 s: 1-300 s ...`, `listen: [1] "x": invalid socket address syntax`) is
/// a 400 `ErrorBody` naming the field, which the console and keelctl show as is.
async fn set_dns(
    State(d): State<Arc<Daemon>>,
    Json(body): Json<serde_json::Value>,
) -> Answer<DnsConfig> {
    let req: DnsConfig = serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let message = if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        };
        (StatusCode::BAD_REQUEST, Json(ErrorBody { error: message }))
    })?;
    d.set_dns(req).await.map(Json).map_err(fail)
}

/// Every request counts as activity: an unpaired daemon does not exit under it.
async fn busy(
    State(d): State<Arc<Daemon>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let _busy = d.in_flight();
    next.run(req).await
}
