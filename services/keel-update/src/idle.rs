//! Serving the local API, and exiting once idle (`--idle-exit`): keel-update is
//! socket-activated (`keel-update.socket`), so systemd holds the socket while the
//! process is gone and starts it again at the next connection.
//!
//! Idle means: no request in flight (counted around the router, from its head
//! until its handler answered: an install's upload is in flight until the slot is
//! written, read back and armed), no install or rollback running
//! ([`Updater::busy`]: also its blocking work when the client went away), and no
//! connection accepted nor request begun or ended for the idle time. Then the
//! accept loop stops first (no connection is accepted after the decision: it is
//! taken under the same lock as every accept), systemd is told `STOPPING=1`, open
//! connections finish (an idle keep-alive one is closed), and [`serve`] returns.
//! A client that connects meanwhile waits in the socket's queue, which systemd
//! keeps: the next process answers it. Nothing is kept in memory that is not in
//! `state.json`; the outcome of a trial is settled again when the next one starts.

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Instant;

use crate::Updater;

/// Re-checks this often while something runs (at most the idle time).
const BUSY_RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Inner {
    in_flight: usize,
    /// The last accept, request start or request end.
    last: Instant,
    /// Decided to exit: no more accepts.
    closing: bool,
}

/// What the idle exit watches: requests in flight, the last activity.
#[derive(Debug, Clone)]
pub struct Activity(Arc<Mutex<Inner>>);

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(Inner {
            in_flight: 0,
            last: Instant::now(),
            closing: false,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests whose handler has not answered yet.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Counts a request from now until the guard is dropped (its handler answered,
    /// or hyper dropped it because the connection went away).
    pub fn begin(&self) -> InFlight {
        let mut st = self.lock();
        st.in_flight += 1;
        st.last = Instant::now();
        InFlight(self.clone())
    }

    /// Returns once nothing has happened for `idle` while `busy()` said no and no
    /// request was in flight; from then on the listener accepts no more.
    pub async fn until_idle(&self, idle: Duration, busy: impl Fn() -> bool) {
        loop {
            let next = {
                let mut st = self.lock();
                let now = Instant::now();
                let quiet_until = st.last + idle;
                let running = st.in_flight > 0 || busy();
                if !running && now >= quiet_until {
                    st.closing = true;
                    return;
                }
                if now < quiet_until {
                    quiet_until
                } else {
                    now + idle.min(BUSY_RECHECK)
                }
            };
            tokio::time::sleep_until(next).await;
        }
    }
}

/// One request in flight (see [`Activity::begin`]).
#[derive(Debug)]
pub struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.in_flight -= 1;
        st.last = Instant::now();
    }
}

/// The middleware around the router counting requests in flight.
pub async fn track(State(activity): State<Activity>, req: Request, next: Next) -> Response {
    let _in_flight = activity.begin();
    next.run(req).await
}

/// The listener as axum's server sees it: every accept is activity, and none
/// happens once the exit was decided (checked under the lock the decision takes,
/// so a connection is either accepted before it, and counts, or left queued).
pub struct Tracked {
    listener: UnixListener,
    activity: Activity,
}

impl Tracked {
    pub fn new(listener: UnixListener, activity: Activity) -> Self {
        Self { listener, activity }
    }
}

impl axum::serve::Listener for Tracked {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let accepted = poll_fn(|cx| {
                let mut st = self.activity.lock();
                if st.closing {
                    // The server's shutdown signal ends the wait.
                    return Poll::Pending;
                }
                let r = self.listener.poll_accept(cx);
                if let Poll::Ready(Ok(_)) = &r {
                    st.last = Instant::now();
                }
                r
            })
            .await;
            match accepted {
                Ok(conn) => return conn,
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::error!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset
    )
}

/// The API with keelctl's and the local menu's changes recorded in the audit log.
fn audited(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::from_fn(keel_core::audit::local_changes))
}

/// Serves keel-update's API on `listener`. Without `idle_exit` until the task is
/// dropped; with it, returns `Ok(())` once idle that long (see the module), after
/// telling systemd `STOPPING=1` and letting open connections finish.
pub async fn serve(
    listener: UnixListener,
    updater: Arc<Updater>,
    idle_exit: Option<Duration>,
) -> std::io::Result<()> {
    let Some(idle) = idle_exit else {
        return keel_core::local_api::serve(listener, audited(crate::api::router(updater))).await;
    };
    let activity = Activity::new();
    let router = audited(crate::api::router(updater.clone())).layer(
        axum::middleware::from_fn_with_state(activity.clone(), track),
    );
    let watch = activity.clone();
    let idle_now = async move {
        watch.until_idle(idle, || updater.busy()).await;
        tracing::info!(
            "idle for {} s: exiting (systemd starts keel-update again at the next connection)",
            idle.as_secs_f64()
        );
        keel_core::notify::stopping();
    };
    axum::serve(
        keel_core::local_api::WithPeer(Tracked::new(listener, activity)),
        router.into_make_service_with_connect_info::<keel_core::local_api::Peer>(),
    )
    .with_graceful_shutdown(idle_now)
    .await
}
