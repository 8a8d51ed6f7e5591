//! API tokens for automation (`Authorization: Bearer`). Scaffold: no token is valid
//! yet; the store, its pages and API come next.

use std::path::PathBuf;

use axum::Router;

use crate::app::Shared;
use crate::auth::{AuthError, Role};

/// Who a valid token speaks for.
#[derive(Debug, Clone)]
pub struct TokenIdentity {
    pub id: String,
    pub user: String,
    pub role: Role,
}

pub struct Tokens {
    #[allow(dead_code)]
    dir: PathBuf,
}

impl Tokens {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, AuthError> {
        Ok(Self { dir: dir.into() })
    }

    /// The identity behind a presented token, when it is valid now.
    pub fn authenticate(&self, _presented: &str) -> Option<TokenIdentity> {
        None
    }
}

pub fn router() -> Router<Shared> {
    Router::new()
}
