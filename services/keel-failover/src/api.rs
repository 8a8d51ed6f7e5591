//! The local API (Unix socket, keel-core style): status, become-primary,
//! automatic takeover on/off. Later the console and keelctl call it.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use keel_api::{AutoTakeoverRequest, ErrorBody, FailoverStatus};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Command, Snapshot};

#[derive(Clone)]
struct Api {
    snapshot: Arc<Mutex<Snapshot>>,
    commands: mpsc::Sender<Command>,
}

type Answer = Result<Json<FailoverStatus>, (StatusCode, Json<ErrorBody>)>;

fn fail(status: StatusCode, error: impl Into<String>) -> (StatusCode, Json<ErrorBody>) {
    (
        status,
        Json(ErrorBody {
            error: error.into(),
        }),
    )
}

pub fn router(snapshot: Arc<Mutex<Snapshot>>, commands: mpsc::Sender<Command>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/become-primary", post(become_primary))
        .route("/auto-takeover", post(auto_takeover))
        .with_state(Api { snapshot, commands })
}

async fn status(State(api): State<Api>) -> Json<FailoverStatus> {
    Json(api.snapshot.lock().expect("snapshot lock").status())
}

async fn ask<T>(
    api: &Api,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, (StatusCode, Json<ErrorBody>)> {
    let (tx, rx) = oneshot::channel();
    let gone = || fail(StatusCode::SERVICE_UNAVAILABLE, "the engine is stopping");
    api.commands.send(make(tx)).await.map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

async fn become_primary(State(api): State<Api>) -> Answer {
    ask(&api, Command::BecomePrimary)
        .await?
        .map(Json)
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e))
}

async fn auto_takeover(State(api): State<Api>, Json(req): Json<AutoTakeoverRequest>) -> Answer {
    ask(&api, |tx| Command::SetAutoTakeover(req.enabled, tx))
        .await
        .map(Json)
}
