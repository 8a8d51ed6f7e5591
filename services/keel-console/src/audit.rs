//! The audit log: every state-changing request the console carries out. Scaffold:
//! the middleware passes requests through; the writer, page and download come next.

use std::path::PathBuf;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;

use crate::app::Shared;

/// Put into a response's extensions by a handler whose actor is not the session's
/// (a login or setup names the account it tried).
#[derive(Debug, Clone)]
pub struct Actor(pub String);

pub struct AuditLog {
    #[allow(dead_code)]
    dir: PathBuf,
}

impl AuditLog {
    pub fn open(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

pub async fn record(State(_st): State<Shared>, req: Request, next: Next) -> Response {
    next.run(req).await
}

pub fn router() -> Router<Shared> {
    Router::new()
}
