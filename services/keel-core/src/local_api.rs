//! The uniform local API: HTTP/1.1 + JSON over a Unix socket per service.
//! Who may call is decided by the socket's owner and mode (0600 by default).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    #[error("cannot reach {path}: {source} (is the service running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("local API protocol error: {0}")]
    Http(String),
    #[error("{status}: {message}")]
    Status { status: u16, message: String },
    #[error("unexpected answer: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("group {name}")]
    Group {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("no group {name}")]
    NoGroup { name: String },
    #[error("chgrp {name} {path}")]
    Chgrp {
        name: String,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Binds `path` (replacing a stale socket) with permission bits `mode`.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, LocalApiError> {
    let err = |source| LocalApiError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

/// Binds a service's socket for its owner (0600) or, with `group`, for that group
/// too (0660, the socket handed to the group).
pub fn bind_for(path: &Path, group: Option<&str>) -> Result<UnixListener, LocalApiError> {
    let listener = bind(path, if group.is_some() { 0o660 } else { 0o600 })?;
    if let Some(name) = group {
        // A member of the group may hand its own file to it: no privilege needed.
        let group = nix::unistd::Group::from_name(name)
            .map_err(|source| LocalApiError::Group {
                name: name.to_owned(),
                source,
            })?
            .ok_or_else(|| LocalApiError::NoGroup {
                name: name.to_owned(),
            })?;
        nix::unistd::chown(path, None, Some(group.gid)).map_err(|source| LocalApiError::Chgrp {
            name: name.to_owned(),
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(listener)
}

/// Serves `router` on a bound Unix listener until the task is dropped.
pub async fn serve(listener: UnixListener, router: axum::Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

/// Client for one service's local socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// Sends a request; a JSON body when `body` is `Some`. Non-2xx answers become
    /// `LocalApiError::Status` carrying the service's `error` message.
    pub async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, LocalApiError> {
        let bytes = self.call_raw(method, path, body).await?;
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"null")
        } else {
            bytes
        };
        Ok(serde_json::from_slice(&bytes)?)
    }

    async fn call_raw<B: Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<Bytes, LocalApiError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| LocalApiError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| LocalApiError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let payload = match body {
            Some(b) => serde_json::to_vec(b)?,
            None => Vec::new(),
        };
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| LocalApiError::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| LocalApiError::Http(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| LocalApiError::Http(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|m| m.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(LocalApiError::Status {
                status: status.as_u16(),
                message,
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{routing::get, Json};

    #[tokio::test]
    async fn round_trip_and_error_message() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("svc").join("api.sock");
        let listener = bind(&sock, 0o600).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let router = axum::Router::new()
            .route(
                "/hello",
                get(|| async { Json(serde_json::json!({"hi": 1})) }),
            )
            .route(
                "/fail",
                get(|| async {
                    (
                        axum::http::StatusCode::CONFLICT,
                        Json(serde_json::json!({"error": "busy"})),
                    )
                }),
            );
        tokio::spawn(serve(listener, router));
        let client = Client::new(&sock);
        let v: serde_json::Value = client.call::<(), _>("GET", "/hello", None).await.unwrap();
        assert_eq!(v["hi"], 1);
        let err = client
            .call::<(), serde_json::Value>("GET", "/fail", None)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "409: busy");
    }

    #[tokio::test]
    async fn missing_socket_says_so() {
        let client = Client::new("/nonexistent/keel.sock");
        let err = client
            .call::<(), serde_json::Value>("GET", "/", None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is the service running"), "{err}");
    }
}
