//! A Keel service the console calls over its local socket (keel-netd, keel-timed):
//! where the socket is, and a call bounded in time whose failures become API
//! errors. The services decide; the console forwards, so their refusals keep
//! their status and message.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Duration;

use axum::http::StatusCode;
use keel_core::local_api::{Client, LocalApiError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ApiError;

pub struct LocalService {
    /// Its name under the run directory (`paths::service_socket`).
    name: &'static str,
    /// Begins the message of a failure that is not the service's own refusal.
    unavailable: &'static str,
    /// Says that no answer came within the limit (after `unavailable`).
    no_answer: fn(Duration) -> String,
    /// The message of a refusal as the console shows it.
    refusal: fn(&str) -> &str,
    /// Set by main (`--netd-socket`, ...) and tests; the default path otherwise.
    socket: RwLock<Option<PathBuf>>,
}

impl LocalService {
    pub const fn new(
        name: &'static str,
        unavailable: &'static str,
        no_answer: fn(Duration) -> String,
        refusal: fn(&str) -> &str,
    ) -> Self {
        Self {
            name,
            unavailable,
            no_answer,
            refusal,
            socket: RwLock::new(None),
        }
    }

    pub fn set_socket(&self, path: PathBuf) {
        *self.socket.write().unwrap_or_else(|p| p.into_inner()) = Some(path);
    }

    fn client(&self) -> Client {
        let path = self
            .socket
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| keel_core::paths::service_socket(self.name));
        Client::new(path)
    }

    pub async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
        limit: Duration,
    ) -> Result<R, ApiError> {
        match tokio::time::timeout(limit, self.client().call(method, path, body)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(LocalApiError::Status { status, message })) => Err(ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                (self.refusal)(&message),
            )),
            Ok(Err(e)) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}: {e}", self.unavailable),
            )),
            Err(_) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}: {}", self.unavailable, (self.no_answer)(limit)),
            )),
        }
    }
}
