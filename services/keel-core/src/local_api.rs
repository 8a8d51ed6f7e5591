//! The uniform local API: HTTP/1.1 + JSON over a Unix socket per service.
//! Who may call is decided by the socket's owner and mode (0600 by default).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
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
    #[error("socket passed by systemd (LISTEN_FDS): {source}")]
    Inherited {
        #[source]
        source: std::io::Error,
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

/// What systemd passed (socket activation: `LISTEN_PID` is this process, the
/// sockets are fd 3 onwards, `LISTEN_FDS` of them): each a listening Unix or TCP
/// stream socket, in the order of the socket unit's `Listen*=` lines, made
/// close-on-exec and non-blocking. Empty when nothing was passed (started by
/// hand, or `LISTEN_PID` names another process). `LISTEN_PID`, `LISTEN_FDS` and
/// `LISTEN_FDNAMES` are removed from the environment either way, so the sockets
/// are taken once and a child never mistakes them for its own.
///
/// A descriptor that is not a listening stream socket is an error (the unit is
/// wrong). Call it inside the tokio runtime (the listeners register with it) and
/// before other threads start: it changes the environment.
pub fn inherited_sockets() -> Result<Vec<Inherited>, LocalApiError> {
    use nix::sys::socket::{
        getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
    };
    use std::os::fd::{FromRawFd, OwnedFd};

    let err = |source| LocalApiError::Inherited { source };
    let invalid = |m: String| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, m));
    // sd_listen_fds(3): checks LISTEN_PID, sets FD_CLOEXEC, unsets both variables.
    let fds = sd_notify::listen_fds().map(|fds| fds.collect::<Vec<_>>());
    std::env::remove_var("LISTEN_FDNAMES");
    let fds = fds.map_err(err)?;
    // Every descriptor is checked before any is owned: on a wrong unit (or a
    // wrong LISTEN_FDS naming descriptors this process uses otherwise) nothing
    // is closed that is not ours.
    let mut families = Vec::with_capacity(fds.len());
    for &fd in &fds {
        // SAFETY: only borrowed for the checks below; fd is not closed here.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let sys = |e: nix::Error| err(std::io::Error::from(e));
        let stream = getsockopt(&borrowed, sockopt::SockType).map_err(sys)? == SockType::Stream;
        let listening = getsockopt(&borrowed, sockopt::AcceptConn).map_err(sys)?;
        if !(stream && listening) {
            return Err(invalid(format!(
                "fd {fd} is not a listening stream socket (ListenStream=)"
            )));
        }
        match getsockname::<SockaddrStorage>(fd).map_err(sys)?.family() {
            Some(f @ (AddressFamily::Unix | AddressFamily::Inet | AddressFamily::Inet6)) => {
                families.push(f)
            }
            other => return Err(invalid(format!("fd {fd}: socket family {other:?}"))),
        }
    }
    let mut out = Vec::with_capacity(fds.len());
    for (fd, family) in fds.into_iter().zip(families) {
        // SAFETY: systemd passed this descriptor to this process (LISTEN_PID is
        // ours) and nothing else in it knows the number: the variables naming it
        // are gone, so it is owned here exactly once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        out.push(if family == AddressFamily::Unix {
            let l = std::os::unix::net::UnixListener::from(owned);
            l.set_nonblocking(true).map_err(err)?;
            Inherited::Unix(UnixListener::from_std(l).map_err(err)?)
        } else {
            let l = std::net::TcpListener::from(owned);
            l.set_nonblocking(true).map_err(err)?;
            Inherited::Tcp(tokio::net::TcpListener::from_std(l).map_err(err)?)
        });
    }
    Ok(out)
}

/// One socket passed by systemd.
#[derive(Debug)]
pub enum Inherited {
    Unix(UnixListener),
    Tcp(tokio::net::TcpListener),
}

/// The one listening Unix socket systemd passed (`LISTEN_FDS=1`), or `None` when
/// it passed none; see [`inherited_sockets`]. More than one socket, or not a
/// Unix one, is an error (the unit is wrong).
pub fn inherited_listener() -> Result<Option<UnixListener>, LocalApiError> {
    let invalid = |m: String| LocalApiError::Inherited {
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, m),
    };
    let mut sockets = inherited_sockets()?;
    match (sockets.pop(), sockets.len()) {
        (None, _) => Ok(None),
        (Some(Inherited::Unix(l)), 0) => Ok(Some(l)),
        (Some(Inherited::Tcp(_)), 0) => Err(invalid(
            "fd 3 is not a listening Unix stream socket (ListenStream= with a path)".into(),
        )),
        (Some(_), more) => Err(invalid(format!(
            "{} sockets passed, one expected",
            more + 1
        ))),
    }
}

/// The process at the other end of a local-socket connection (SO_PEERCRED).
/// Every request served by [`serve`] carries it as `ConnectInfo<Peer>`, so a
/// service knows whether root (keelctl, the local menu) or another service asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

impl Peer {
    fn of(stream: &UnixStream) -> Self {
        match stream.peer_cred() {
            Ok(c) => Peer {
                uid: Some(c.uid()),
                pid: c.pid(),
            },
            Err(_) => Peer {
                uid: None,
                pid: None,
            },
        }
    }
}

/// A Unix listener whose connections are addressed by their [`Peer`], so
/// `into_make_service_with_connect_info::<Peer>()` puts it in every request.
pub struct WithPeer<L>(pub L);

impl<L: Listener<Io = UnixStream>> Listener for WithPeer<L> {
    type Io = UnixStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (UnixStream, Peer) {
        let (io, _) = self.0.accept().await;
        let peer = Peer::of(&io);
        (io, peer)
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            uid: None,
            pid: None,
        })
    }
}

impl<L: Listener<Io = UnixStream>> Connected<IncomingStream<'_, WithPeer<L>>> for Peer {
    fn connect_info(stream: IncomingStream<'_, WithPeer<L>>) -> Self {
        *stream.remote_addr()
    }
}

/// Serves `router` on a bound Unix listener until the task is dropped.
pub async fn serve(listener: UnixListener, router: axum::Router) -> std::io::Result<()> {
    axum::serve(
        WithPeer(listener),
        router.into_make_service_with_connect_info::<Peer>(),
    )
    .await
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
        let payload = match body {
            Some(b) => serde_json::to_vec(b)?,
            None => Vec::new(),
        };
        let bytes = self
            .send(
                method,
                path,
                "application/json",
                Full::new(Bytes::from(payload)),
            )
            .await?;
        json_answer(bytes)
    }

    /// Sends a request whose body is streamed as it is produced (e.g. a file or a
    /// browser upload forwarded as it arrives), never collected first; the answer
    /// is JSON as for [`Client::call`]. A body with an exact size hint is sent with
    /// `Content-Length`, otherwise chunked.
    pub async fn call_stream<B, R>(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: B,
    ) -> Result<R, LocalApiError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        R: DeserializeOwned,
    {
        json_answer(self.send(method, path, content_type, body).await?)
    }

    /// One request on a new connection; the answer's body, or the service's
    /// refusal as `LocalApiError::Status`.
    async fn send<B>(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: B,
    ) -> Result<Bytes, LocalApiError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
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
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", content_type)
            .body(body)
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

/// An answer's JSON (an empty body reads as `null`, for `()` answers).
fn json_answer<R: DeserializeOwned>(bytes: Bytes) -> Result<R, LocalApiError> {
    let bytes = if bytes.is_empty() {
        Bytes::from_static(b"null")
    } else {
        bytes
    };
    Ok(serde_json::from_slice(&bytes)?)
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

    const CHILD: &str = "local_api::tests::inherited_child";

    /// Runs [`inherited_child`] in a new process of this test binary with `fd3` as
    /// its fd 3 and the socket-activation variables set as systemd sets them:
    /// `LISTEN_PID` by a shell that then execs (the pid stays the same).
    fn run_child(case: &str, fd3: std::os::fd::RawFd, listen_pid: &str, socket: &Path) {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(format!("LISTEN_PID={listen_pid} exec \"$0\" \"$@\""))
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                CHILD,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LISTEN_FDS", if case == "two" { "2" } else { "1" })
            .env("KEEL_INHERIT_CASE", case)
            .env("KEEL_INHERIT_SOCKET", socket);
        // SAFETY: between fork and exec only dup2 and fcntl run (async-signal-safe);
        // dup2 onto fd 3 clears close-on-exec, and so does fcntl when it is fd 3.
        unsafe {
            cmd.pre_exec(move || {
                let r = if fd3 == 3 {
                    nix::libc::fcntl(3, nix::libc::F_SETFD, 0)
                } else {
                    nix::libc::dup2(fd3, 3)
                };
                if r == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "case {case}: {}\n{stdout}\n{stderr}",
            out.status
        );
    }

    #[test]
    fn inherited_listener_takes_what_systemd_passes() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("activated.sock");
        // Bound here as systemd binds a ListenStream= socket; the child only accepts.
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        run_child("ours", listener.as_raw_fd(), "$$", &sock);
        run_child("other-pid", listener.as_raw_fd(), "1", &sock);
        run_child("two", listener.as_raw_fd(), "$$", &sock);
        let not_listening = std::os::unix::net::UnixDatagram::unbound().unwrap();
        run_child("not-listening", not_listening.as_raw_fd(), "$$", &sock);
        let file = std::fs::File::open(dir.path()).unwrap();
        run_child("not-a-socket", file.as_raw_fd(), "$$", &sock);
    }

    /// The child half of [`inherited_listener_takes_what_systemd_passes`]; does
    /// nothing when run any other way.
    #[test]
    #[ignore = "run by inherited_listener_takes_what_systemd_passes in its own process"]
    fn inherited_child() {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
        let Ok(case) = std::env::var("KEEL_INHERIT_CASE") else {
            return;
        };
        let socket = PathBuf::from(std::env::var("KEEL_INHERIT_SOCKET").unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let got = inherited_listener();
            for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
                assert!(std::env::var_os(var).is_none(), "{var} left set ({case})");
            }
            match case.as_str() {
                "ours" => {
                    let listener = got.unwrap().expect("no listener from fd 3");
                    let fd = 3;
                    let fd_flags =
                        FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap());
                    assert!(fd_flags.contains(FdFlag::FD_CLOEXEC));
                    let fl = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).unwrap());
                    assert!(fl.contains(OFlag::O_NONBLOCK));
                    // Taken once: the variables are gone.
                    assert!(inherited_listener().unwrap().is_none());
                    let router = axum::Router::new().route(
                        "/hello",
                        get(|| async { Json(serde_json::json!({"hi": 3})) }),
                    );
                    tokio::spawn(serve(listener, router));
                    let v: serde_json::Value = Client::new(&socket)
                        .call::<(), _>("GET", "/hello", None)
                        .await
                        .unwrap();
                    assert_eq!(v["hi"], 3);
                }
                "other-pid" => {
                    assert!(got.unwrap().is_none());
                    // Not ours to take: fd 3 is left alone.
                    assert!(fcntl(3, FcntlArg::F_GETFD).is_ok());
                }
                _ => {
                    let e = got.unwrap_err();
                    assert!(e.to_string().contains("socket passed by systemd"), "{e}");
                }
            }
        });
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
