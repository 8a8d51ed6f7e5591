//! Console access policy: allowed source networks, minimum TLS version, session
//! lifetimes. Scaffold: everything is allowed.

use std::path::PathBuf;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;

use crate::app::Shared;

pub struct Access {
    #[allow(dead_code)]
    dir: PathBuf,
}

impl Access {
    pub fn open(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

/// Refuses clients outside the allowed source networks.
pub async fn source_filter(State(_st): State<Shared>, req: Request, next: Next) -> Response {
    next.run(req).await
}

pub fn router() -> Router<Shared> {
    Router::new()
}
