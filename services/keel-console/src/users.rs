//! Console accounts: the Users page and API, the user's own account page, and the
//! role gate. Scaffold: the gate passes everything through.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;

use crate::app::Shared;

/// Refuses every state-changing request of a role that may not change anything.
pub async fn role_gate(State(_st): State<Shared>, req: Request, next: Next) -> Response {
    next.run(req).await
}

pub fn router() -> Router<Shared> {
    Router::new()
}
