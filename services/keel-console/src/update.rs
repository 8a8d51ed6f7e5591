//! Updates: `/appliance/api/v1/update...` and the *Support › Updates* page.
//! keel-update writes the inactive slot, verifies it and arms the trial boot; the
//! console checks the admin's session and passes the bundle on as it arrives.
//!
//! A bundle is up to [`MAX_BUNDLE`] bytes, so it is never held whole: the upload
//! (the request body, or the file field of the page's multipart form) goes on to
//! keel-update chunk by chunk through a small channel. The page's form carries
//! its CSRF token *before* the file: the fields are read in order, and the token is
//! checked before the first byte of the file is passed on. These two routes are
//! exempt from the console's 64 KiB body limit ([`own_body_limit`]); they keep
//! their own, 1 GiB.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Duration;

use askama::Template;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Form, FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use keel_api::{
    AvailableState, AvailableUpdates, ChainState, ChainStatus, DownloadKeyAnswer, InstallAnswer,
    InstallOnlineRequest, RollbackRequest, SlotInfo, UpdatePhase, UpdateSettings,
    UpdateSettingsRequest, UpdateStatus, ROLLBACK_CONFIRMATION,
};
use keel_core::local_api::{Client, LocalApiError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::app::{self, JsonBody, Shared};
use crate::error::ApiError;
use crate::openapi::{routes, OpenApiRouter};

/// keel-update's local API (`keel_api::update`).
pub const DEFAULT_SOCKET: &str = "/run/keel/update.sock";

/// The largest bundle the console passes on.
pub const MAX_BUNDLE: u64 = 1 << 30;
/// What a multipart form may add around the bundle (boundaries, the small fields).
const FORM_OVERHEAD: u64 = 64 * 1024;
/// A small field of the upload form (the token, the checkbox) is at most this.
const MAX_SMALL_FIELD: usize = 1024;
/// Fields the form may have before its file.
const MAX_FIELDS_BEFORE_FILE: usize = 8;

/// A client that sends nothing for this long has given up.
const UPLOAD_IDLE_LIMIT: Duration = Duration::from_secs(60);
/// keel-update not taking a chunk for this long is stuck (it writes as it reads).
const SERVICE_IDLE_LIMIT: Duration = Duration::from_secs(120);
/// After the last byte: reading the slot back, hashing, arming.
const ANSWER_LIMIT: Duration = Duration::from_secs(15 * 60);
/// Status and rollback calls.
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// A check fetches the feed (through a proxy, maybe slow): connect and read
/// timeouts of keel-update are 30 s and 60 s.
const CHECK_LIMIT: Duration = Duration::from_secs(120);
/// The Basics page does not wait longer for its one line.
const PAGE_LIMIT: Duration = Duration::from_secs(2);
/// Chunks in flight between the upload and keel-update.
const CHANNEL_CHUNKS: usize = 4;

const API_INSTALL: &str = "/appliance/api/v1/update/install";
const PAGE: &str = "/appliance/support/updates";
const PAGE_INSTALL: &str = "/appliance/support/updates/install";

const UNAVAILABLE: &str = "update service unavailable";

static SOCKET: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Where keel-update's socket is (tests; main's default otherwise).
pub fn set_socket(path: PathBuf) {
    *SOCKET.write().unwrap_or_else(|p| p.into_inner()) = Some(path);
}

fn client() -> Client {
    let path = SOCKET
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    Client::new(path)
}

/// The routes that bring a bundle: the console's global body limit does not apply
/// to them (they have their own, [`MAX_BUNDLE`]).
pub fn own_body_limit(path: &str) -> bool {
    path == API_INSTALL || path == PAGE_INSTALL
}

/// keel-update's refusals keep their status and message; not reaching it is 503.
fn service_error(e: LocalApiError) -> ApiError {
    match e {
        LocalApiError::Status { status, message } => ApiError::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            message,
        ),
        e => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{UNAVAILABLE}: {e}"),
        ),
    }
}

fn no_answer(limit: Duration) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "{UNAVAILABLE}: keel-update did not answer within {} s",
            limit.as_secs()
        ),
    )
}

async fn call<B: Serialize, R: DeserializeOwned>(
    method: &str,
    path: &str,
    body: Option<&B>,
    limit: Duration,
) -> Result<R, ApiError> {
    match tokio::time::timeout(limit, client().call(method, path, body)).await {
        Ok(r) => r.map_err(service_error),
        Err(_) => Err(no_answer(limit)),
    }
}

async fn status(limit: Duration) -> Result<UpdateStatus, ApiError> {
    call::<(), _>("GET", "/status", None, limit).await
}

// ---- Streaming the bundle ----------------------------------------------------

/// Where the bundle comes from: the request body (API) or the form's file field.
enum Upload<'a> {
    Body(Body),
    Field(Box<axum::extract::multipart::Field<'a>>),
}

impl Upload<'_> {
    async fn chunk(&mut self) -> Option<Result<Bytes, String>> {
        use http_body_util::BodyExt;
        match self {
            Upload::Body(body) => loop {
                match body.frame().await? {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => return Some(Ok(data)),
                        Err(_) => continue, // trailers
                    },
                    Err(e) => return Some(Err(e.to_string())),
                }
            },
            Upload::Field(field) => field.chunk().await.map_err(|e| e.body_text()).transpose(),
        }
    }
}

/// Why the console stopped passing an upload on.
#[derive(Debug)]
enum Cut {
    TooLarge,
    Stalled,
    Broken(String),
    /// keel-update stopped taking the bundle without answering.
    ServiceStuck,
}

impl Cut {
    fn error(&self) -> ApiError {
        match self {
            Cut::TooLarge => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the bundle is over the limit of {MAX_BUNDLE} bytes: nothing was installed"
                ),
            ),
            Cut::Stalled => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the upload stopped (nothing arrived for {} s): nothing was installed",
                    UPLOAD_IDLE_LIMIT.as_secs()
                ),
            ),
            Cut::Broken(why) => ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the upload broke off ({why}): nothing was installed"),
            ),
            Cut::ServiceStuck => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{UNAVAILABLE}: keel-update took nothing for {} s",
                    SERVICE_IDLE_LIMIT.as_secs()
                ),
            ),
        }
    }
}

type Chunk = Result<Bytes, std::io::Error>;

/// Passes the upload on until it ends; a cut upload ends keel-update's body with an
/// error (never a clean end), so nothing short can pass for a whole bundle.
async fn pump(upload: &mut Upload<'_>, tx: mpsc::Sender<Chunk>) -> Result<u64, Cut> {
    let mut total = 0u64;
    let cut = loop {
        let chunk = match tokio::time::timeout(UPLOAD_IDLE_LIMIT, upload.chunk()).await {
            Err(_) => break Cut::Stalled,
            Ok(None) => return Ok(total),
            Ok(Some(Err(why))) => break Cut::Broken(why),
            Ok(Some(Ok(c))) => c,
        };
        total += chunk.len() as u64;
        if total > MAX_BUNDLE {
            break Cut::TooLarge;
        }
        match tokio::time::timeout(SERVICE_IDLE_LIMIT, tx.send(Ok(chunk))).await {
            Ok(Ok(())) => {}
            // keel-update answered already; the answer says why.
            Ok(Err(_)) => return Ok(total),
            Err(_) => break Cut::ServiceStuck,
        }
    };
    // An error, never a clean end: a cut upload must not pass for a whole bundle.
    let _ = tokio::time::timeout(
        SERVICE_IDLE_LIMIT,
        tx.send(Err(std::io::Error::other("upload cut off"))),
    )
    .await;
    Err(cut)
}

/// Reads and drops up to `limit` bytes of what is left of an upload, so that a
/// client still sending gets the answer rather than a reset connection. The bytes
/// read if it ended within the limit.
async fn drain(upload: &mut Upload<'_>, limit: u64) -> Option<u64> {
    let mut seen = 0u64;
    loop {
        match tokio::time::timeout(UPLOAD_IDLE_LIMIT, upload.chunk()).await {
            Ok(None) => return Some(seen),
            Ok(Some(Ok(c))) => {
                seen += c.len() as u64;
                if seen > limit {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// What a request refused before keel-update was asked may still send: read and
/// dropped (beyond it the connection just closes). Not one byte is passed on.
const REFUSAL_DRAIN: u64 = 8 * 1024 * 1024;

async fn drain_refused_body(body: Body, declared: Option<u64>) {
    if declared.is_none_or(|n| n <= REFUSAL_DRAIN) {
        drain(&mut Upload::Body(body), REFUSAL_DRAIN).await;
    }
}

/// The field of a refused form being read, read and dropped: what is left of
/// the budget for the rest of the form ([`drain_refused_form`]), if anything.
async fn drain_refused_field(
    field: axum::extract::multipart::Field<'_>,
    declared: Option<u64>,
) -> Option<u64> {
    if declared.is_some_and(|n| n > REFUSAL_DRAIN) {
        return None;
    }
    drain(&mut Upload::Field(Box::new(field)), REFUSAL_DRAIN)
        .await
        .map(|n| REFUSAL_DRAIN - n)
}

/// The rest of a refused form, within `budget` (see [`REFUSAL_DRAIN`]).
async fn drain_refused_form(form: &mut Multipart, budget: Option<u64>) {
    let Some(mut left) = budget else {
        return;
    };
    while let Ok(Some(f)) = form.next_field().await {
        match drain(&mut Upload::Field(Box::new(f)), left).await {
            Some(n) => left -= n,
            None => return,
        }
    }
}

/// The upload as keel-update's request body, chunk by chunk as the pump passes
/// them on; with `Content-Length` when the client declared one.
struct ChannelBody {
    rx: mpsc::Receiver<Chunk>,
    len: Option<u64>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|c| c.map(|r| r.map(hyper::body::Frame::data)))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.len {
            Some(n) => hyper::body::SizeHint::with_exact(n),
            None => hyper::body::SizeHint::default(),
        }
    }
}

/// keel-update's `POST /install`, its body what the pump passes on.
async fn send_bundle(
    path: &str,
    rx: mpsc::Receiver<Chunk>,
    len: Option<u64>,
) -> Result<InstallAnswer, ApiError> {
    client()
        .call_stream(
            "POST",
            path,
            "application/octet-stream",
            ChannelBody { rx, len },
        )
        .await
        .map_err(service_error)
}

/// Streams `upload` to keel-update's `POST /install`, the session and CSRF token
/// having been checked.
async fn install(
    upload: &mut Upload<'_>,
    len: Option<u64>,
    reboot: bool,
) -> Result<InstallAnswer, ApiError> {
    let path = if reboot {
        "/install?reboot=true"
    } else {
        "/install"
    };
    let (tx, rx) = mpsc::channel::<Chunk>(CHANNEL_CHUNKS);
    let answer = send_bundle(path, rx, len);
    tokio::pin!(answer);
    enum First {
        Answered(Result<InstallAnswer, ApiError>),
        Pumped(Result<u64, Cut>),
    }
    let first = {
        let pump = pump(upload, tx);
        tokio::pin!(pump);
        tokio::select! {
            a = &mut answer => First::Answered(a),
            p = &mut pump => First::Pumped(p),
        }
    };
    let pumped = match first {
        // Answered before the upload ended: a refusal (or a service that stopped
        // reading); the rest of the upload is read and dropped.
        First::Answered(a) => {
            drain(upload, MAX_BUNDLE + FORM_OVERHEAD).await;
            return a;
        }
        First::Pumped(p) => p,
    };
    match pumped {
        Err(cut) => {
            // keel-update's body ended in an error: whatever it says, nothing was
            // armed; the console says why.
            let _ = tokio::time::timeout(CALL_LIMIT, &mut answer).await;
            Err(cut.error())
        }
        Ok(total) => {
            let a = match tokio::time::timeout(ANSWER_LIMIT, answer).await {
                Ok(a) => a,
                Err(_) => Err(no_answer(ANSWER_LIMIT)),
            };
            // Nothing left unless keel-update stopped reading early.
            drain(upload, (MAX_BUNDLE + FORM_OVERHEAD).saturating_sub(total)).await;
            a
        }
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

// ---- JSON API ----------------------------------------------------------------

#[utoipa::path(get, path = "/appliance/api/v1/update", tag = "update",
    summary = "Support › Updates: the slots, the install in progress, the last outcome, the apps",
    responses((status = 200, body = UpdateStatus),
        (status = 401, description = "No session or token"),
        (status = 503, description = "keel-update not answering")),
    security(("session" = []), ("token" = [])))]
async fn api_status(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<UpdateStatus>, ApiError> {
    st.session(&headers).ok_or_else(ApiError::unauthorized)?;
    status(CALL_LIMIT).await.map(Json)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct InstallQuery {
    /// Restart into the new version once it is armed (a base bundle).
    #[serde(default)]
    reboot: bool,
}

#[utoipa::path(post, path = API_INSTALL, tag = "update",
    summary = "Install an update or app bundle (upload)",
    description = "The body is the bundle file itself, streamed on to keel-update as it \
        arrives (up to 1 GiB; the console's 64 KiB limit does not apply here). The session, \
        CSRF token, type and declared size are checked before a byte is read. keel-update \
        checks the signature before it writes anything; a base bundle goes to the inactive \
        slot and runs from the next restart on trial, an app bundle is active at once.",
    params(InstallQuery),
    request_body(content = inline(BundleFile), content_type = "application/octet-stream", description = "The bundle file"),
    responses((status = 200, body = InstallAnswer),
        (status = 400, description = "Not a valid bundle (damaged, truncated, not signed by a trusted key), a bad query, or the upload broke off"),
        (status = 401, description = "No session or token"),
        (status = 403, description = "CSRF token missing or wrong, or a role that may not change anything"),
        (status = 408, description = "The upload stalled"),
        (status = 409, description = "An install is running"),
        (status = 413, description = "Over 1 GiB"),
        (status = 415, description = "Not sent as application/octet-stream"),
        (status = 422, description = "Refused: clock, downgrade, replay, requirements, running on trial, ..."),
        (status = 500, description = "Writing, read-back or arming failed"),
        (status = 503, description = "keel-update not answering")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_install(
    State(st): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<InstallQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Json<InstallAnswer>, ApiError> {
    let declared = declared_length(&headers);
    match install_request(&st, &headers, query) {
        Ok(reboot) => install(&mut Upload::Body(body), declared, reboot)
            .await
            .map(Json),
        Err(e) => {
            drain_refused_body(body, declared).await;
            Err(e)
        }
    }
}

/// Checks an API install before a byte of its body is read: session, token,
/// origin, query, type, size. Whether to reboot.
fn install_request(
    st: &app::AppState,
    headers: &HeaderMap,
    query: Result<Query<InstallQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<bool, ApiError> {
    st.api_session_for_change(headers)?;
    let Query(q) = query.map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r.body_text()))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");
    if !content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/octet-stream")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send the bundle file itself as application/octet-stream, not {content_type}"),
        ));
    }
    if let Some(len) = declared_length(headers).filter(|l| *l > MAX_BUNDLE) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {len} bytes is over the limit of {MAX_BUNDLE} bytes"),
        ));
    }
    Ok(q.reboot)
}

fn check_confirmation(confirm: &str) -> Result<RollbackRequest, ApiError> {
    if confirm != ROLLBACK_CONFIRMATION {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "a rollback restarts the appliance into the previous version: confirm with \
                 \"confirm\": \"{ROLLBACK_CONFIRMATION}\""
            ),
        ));
    }
    Ok(RollbackRequest {
        confirm: confirm.to_owned(),
    })
}

async fn rollback(req: &RollbackRequest) -> Result<serde_json::Value, ApiError> {
    call("POST", "/rollback", Some(req), CALL_LIMIT).await
}

#[utoipa::path(post, path = "/appliance/api/v1/update/rollback", tag = "update",
    summary = "Roll back to the previous version (restarts the appliance)",
    description = "`confirm` must be `ROLLBACK`.",
    request_body = RollbackRequest,
    responses((status = 202, description = "Restarting into the other slot", body = serde_json::Value),
        (status = 400, description = "Not JSON"),
        (status = 401, description = "No session or token"),
        (status = 403, description = "CSRF token missing or wrong, or a role that may not change anything"),
        (status = 409, description = "An install is running"),
        (status = 422, description = "Not confirmed, or nothing to roll back to"),
        (status = 503, description = "keel-update not answering")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_rollback(
    State(st): State<Shared>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RollbackRequest>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    st.api_session_for_change(&headers)?;
    let req = check_confirmation(&body.confirm)?;
    let answer = rollback(&req).await?;
    let answer = if answer.is_null() {
        serde_json::json!({"accepted": "rollback"})
    } else {
        answer
    };
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

// ---- Online: settings, check, install from the feed, download key -------------

#[utoipa::path(get, path = "/appliance/api/v1/update/settings", tag = "update",
    summary = "Online updates: feed, proxy and CA settings (no password)",
    responses((status = 200, body = UpdateSettings),
        (status = 401, description = "No session or token"),
        (status = 503, description = "keel-update not answering")),
    security(("session" = []), ("token" = [])))]
async fn api_get_settings(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<UpdateSettings>, ApiError> {
    st.session(&headers).ok_or_else(ApiError::unauthorized)?;
    call::<(), _>("GET", "/settings", None, CALL_LIMIT)
        .await
        .map(Json)
}

#[utoipa::path(put, path = "/appliance/api/v1/update/settings", tag = "update",
    summary = "Change the online update settings",
    description = "Absent members stay as they are; an empty `proxy_password` clears it.",
    request_body = UpdateSettingsRequest,
    responses((status = 200, body = UpdateSettings),
        (status = 400, description = "Not JSON"),
        (status = 401, description = "No session or token"),
        (status = 403, description = "CSRF token missing or wrong, or a role that may not change anything"),
        (status = 422, description = "A setting refused (named)"),
        (status = 503, description = "keel-update not answering")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_put_settings(
    State(st): State<Shared>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<UpdateSettingsRequest>,
) -> Result<Json<UpdateSettings>, ApiError> {
    st.api_session_for_change(&headers)?;
    call("PUT", "/settings", Some(&body), CALL_LIMIT)
        .await
        .map(Json)
}

async fn check() -> Result<AvailableUpdates, ApiError> {
    call::<(), _>("POST", "/check", None, CHECK_LIMIT).await
}

#[utoipa::path(post, path = "/appliance/api/v1/update/check", tag = "update",
    summary = "Check for updates: fetch and verify the signed feed now",
    responses((status = 200, body = AvailableUpdates),
        (status = 401, description = "No session or token"),
        (status = 403, description = "CSRF token missing or wrong, or a role that may not change anything"),
        (status = 422, description = "The feed refused (not signed by a trusted key, stale, no feed set)"),
        (status = 502, description = "The feed server or proxy unreachable"),
        (status = 503, description = "keel-update not answering")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_check(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<AvailableUpdates>, ApiError> {
    st.api_session_for_change(&headers)?;
    check().await.map(Json)
}

#[utoipa::path(get, path = "/appliance/api/v1/update/available", tag = "update",
    summary = "The updates the last check found",
    responses((status = 200, body = AvailableUpdates),
        (status = 401, description = "No session or token"),
        (status = 404, description = "No check yet"),
        (status = 503, description = "keel-update not answering")),
    security(("session" = []), ("token" = [])))]
async fn api_available(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<AvailableUpdates>, ApiError> {
    st.session(&headers).ok_or_else(ApiError::unauthorized)?;
    call::<(), _>("GET", "/available", None, CALL_LIMIT)
        .await
        .map(Json)
}

async fn install_online(req: &InstallOnlineRequest) -> Result<InstallAnswer, ApiError> {
    call("POST", "/install-online", Some(req), ANSWER_LIMIT).await
}

#[utoipa::path(post, path = "/appliance/api/v1/update/install-online", tag = "update",
    summary = "Download, verify and install one version from the feed",
    request_body = InstallOnlineRequest,
    responses((status = 200, body = InstallAnswer),
        (status = 400, description = "Not JSON, or the download is not a valid bundle"),
        (status = 401, description = "No session or token"),
        (status = 403, description = "CSRF token missing or wrong, or a role that may not change anything"),
        (status = 409, description = "An install is running"),
        (status = 422, description = "Refused (not in the feed, downgrade, requirements, ...)"),
        (status = 500, description = "Writing, read-back or arming failed"),
        (status = 502, description = "The feed server or proxy unreachable"),
        (status = 503, description = "keel-update not answering")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_install_online(
    State(st): State<Shared>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<InstallOnlineRequest>,
) -> Result<Json<InstallAnswer>, ApiError> {
    st.api_session_for_change(&headers)?;
    install_online(&body).await.map(Json)
}

async fn install_all() -> Result<ChainStatus, ApiError> {
    call::<(), _>("POST", "/install-all", None, ANSWER_LIMIT).await
}

#[utoipa::path(post, path = "/appliance/api/v1/update/install-all", tag = "update",
    summary = "Install every update of the plan in order (one restart per step)",
    description = "Answers once the first step is armed; the appliance restarts into it and \
        goes on with the next after each healthy start.",
    responses((status = 200, body = ChainStatus),
        (status = 401, description = "No session or token"),
        (status = 403, description = "CSRF token missing or wrong, or a role that may not change anything"),
        (status = 409, description = "An install is running"),
        (status = 422, description = "Refused (nothing to install, no check yet, ...)"),
        (status = 500, description = "Writing, read-back or arming failed"),
        (status = 502, description = "The feed server or proxy unreachable"),
        (status = 503, description = "keel-update not answering")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_install_all(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<ChainStatus>, ApiError> {
    st.api_session_for_change(&headers)?;
    install_all().await.map(Json)
}

async fn download_key() -> Result<DownloadKeyAnswer, ApiError> {
    call::<(), _>("POST", "/download-key", None, CALL_LIMIT).await
}

#[utoipa::path(post, path = "/appliance/api/v1/update/download-key", tag = "update",
    summary = "This appliance's download key (for a feed that asks for one)",
    responses((status = 200, body = DownloadKeyAnswer),
        (status = 401, description = "No session or token"),
        (status = 403, description = "CSRF token missing or wrong, or a role that may not change anything"),
        (status = 500, description = "The key could not be made"),
        (status = 503, description = "keel-update not answering")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_download_key(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<DownloadKeyAnswer>, ApiError> {
    st.api_session_for_change(&headers)?;
    download_key().await.map(Json)
}

// ---- HTML: Support › Updates ---------------------------------------------------

/// The running or the other slot, as a line.
fn slot_line(s: &SlotInfo) -> String {
    if s.slot.is_empty() {
        return "unknown".into();
    }
    let what = match &s.version {
        Some(v) => format!("Keel {v}"),
        None => "empty".into(),
    };
    let good = if s.good { " (known good)" } else { "" };
    format!("slot {}: {what}{good}", s.slot)
}

fn phase_text(p: UpdatePhase) -> &'static str {
    match p {
        UpdatePhase::Idle => "idle",
        UpdatePhase::Download => "receiving the bundle",
        UpdatePhase::Verify => "checking the signature and the manifest",
        UpdatePhase::Write => "writing the new version into the other slot",
        UpdatePhase::ReadBack => "reading the slot back and checking it",
        UpdatePhase::Arm => "arming the trial boot",
        UpdatePhase::RebootPending => "installed: the next restart tries the new version",
    }
}

/// An install is under way (the page reloads itself meanwhile).
fn running(p: UpdatePhase) -> bool {
    !matches!(p, UpdatePhase::Idle | UpdatePhase::RebootPending)
}

/// The install in progress (or the last one), ready to print.
pub struct ProgressView {
    pub phase: String,
    pub version: String,
    /// `done of total bytes`, empty when the phase counts none.
    pub bytes: String,
    /// 0–100, `None` when the phase counts no bytes.
    pub percent: Option<u64>,
    pub error: String,
}

pub struct StatusView {
    pub running: String,
    pub other: String,
    pub outcome: Option<OutcomeLine>,
    pub progress: Option<ProgressView>,
    pub in_progress: bool,
    pub rollback_to: Option<String>,
    /// Installed app bundles, one line each.
    pub apps: Vec<String>,
}

/// An installed app as a line: version, whether systemd-sysext merged it.
fn app_line(a: &keel_api::AppInfo) -> String {
    let state = if a.active {
        "active".to_owned()
    } else {
        format!("NOT active: {}", a.note.as_deref().unwrap_or("not merged"))
    };
    let prev = a
        .previous
        .as_ref()
        .map(|p| format!("; {p} kept for a rollback"))
        .unwrap_or_default();
    format!("{} {} — {state}{prev}", a.name, a.version)
}

/// The last update's outcome, for *Support › Updates* and the Basics page.
pub struct OutcomeLine {
    pub message: String,
    pub at: String,
    /// The update did not stay (rolled back by itself or by the admin).
    pub rolled_back: bool,
}

fn outcome_line(s: &UpdateStatus) -> Option<OutcomeLine> {
    s.last_outcome.as_ref().map(|o| OutcomeLine {
        message: o.message.clone(),
        at: o.at.clone(),
        rolled_back: o.kind != keel_api::OutcomeKind::Installed,
    })
}

fn view(s: &UpdateStatus) -> StatusView {
    let p = &s.progress;
    let progress = (p.phase != UpdatePhase::Idle || p.error.is_some()).then(|| ProgressView {
        phase: phase_text(p.phase).to_owned(),
        version: p.version.clone().unwrap_or_default(),
        bytes: if p.bytes_total > 0 {
            format!("{} of {} bytes", p.bytes_done, p.bytes_total)
        } else if p.bytes_done > 0 {
            format!("{} bytes", p.bytes_done)
        } else {
            String::new()
        },
        percent: (p.bytes_total > 0).then(|| {
            (p.bytes_done.min(p.bytes_total) as u128 * 100 / p.bytes_total as u128) as u64
        }),
        error: p.error.clone().unwrap_or_default(),
    });
    StatusView {
        running: slot_line(&s.running),
        other: slot_line(&s.other),
        outcome: outcome_line(s),
        progress,
        in_progress: running(p.phase),
        rollback_to: s.rollback_to.clone(),
        apps: s.apps.iter().map(app_line).collect(),
    }
}

/// One feed entry as the page lists it.
pub struct EntryView {
    pub version: String,
    pub component: String,
    pub size: String,
    /// Installable now: it gets an *Install* button; otherwise greyed out.
    pub installable: bool,
    pub state: String,
}

/// The online part of the page: settings, the last check, the chain.
#[derive(Default)]
pub struct OnlineView {
    pub settings: Option<UpdateSettings>,
    pub checked: Option<String>,
    pub entries: Vec<EntryView>,
    /// *Install all in order*: the versions in order.
    pub plan: Vec<String>,
    pub chain: Option<String>,
    pub chain_failed: bool,
    pub chain_running: bool,
    pub error: Option<String>,
    pub settings_error: Option<String>,
    pub download_key: Option<DownloadKeyAnswer>,
    /// On a failover backup: the primary that manages updates (forms hidden).
    pub managed_by: Option<String>,
}

fn entry_view(e: &keel_api::AvailableEntry) -> EntryView {
    let state = match e.state {
        AvailableState::Installable => "installable".to_owned(),
        AvailableState::Installed => "installed (running now)".to_owned(),
        _ => e.reason.clone().unwrap_or_else(|| "not installable".into()),
    };
    EntryView {
        version: e.version.clone(),
        component: e.component.clone(),
        size: format!("{:.1} MiB", e.size as f64 / (1024.0 * 1024.0)),
        installable: e.state == AvailableState::Installable,
        state,
    }
}

fn chain_line(c: &ChainStatus) -> String {
    let state = match c.state {
        ChainState::Running => "running",
        ChainState::Done => "done",
        ChainState::Failed => "stopped",
    };
    let mut line = format!(
        "{state}: {} of {} steps ({})",
        c.done,
        c.steps.len(),
        c.steps.join(" → ")
    );
    if let Some(m) = &c.message {
        line.push_str(&format!(". {m}"));
    }
    line
}

fn online_view(
    settings: Option<UpdateSettings>,
    available: Option<&AvailableUpdates>,
    chain: Option<&ChainStatus>,
) -> OnlineView {
    OnlineView {
        settings,
        checked: available.map(|a| {
            format!(
                "checked {} against Keel {} (feed signed {}, valid until {})",
                a.checked_at, a.installed, a.feed_created, a.feed_expires
            )
        }),
        entries: available
            .map(|a| a.entries.iter().map(entry_view).collect())
            .unwrap_or_default(),
        plan: available.map(|a| a.plan.clone()).unwrap_or_default(),
        chain: chain.map(chain_line),
        chain_failed: chain.is_some_and(|c| c.state == ChainState::Failed),
        chain_running: chain.is_some_and(|c| c.state == ChainState::Running),
        ..OnlineView::default()
    }
}

/// The Basics page's line about the last update, when keel-update has one.
pub async fn basics_line() -> Option<OutcomeLine> {
    status(PAGE_LIMIT)
        .await
        .ok()
        .as_ref()
        .and_then(outcome_line)
}

#[derive(Template)]
#[template(path = "support_updates.html")]
struct UpdatesPage {
    csrf: String,
    /// For the base template (errors here stand beside their forms).
    error: Option<String>,
    notice: Option<String>,
    unavailable: Option<String>,
    status: Option<StatusView>,
    install_error: Option<String>,
    reboot: bool,
    rollback_error: Option<String>,
    rollback_confirm: String,
    online: OnlineView,
}

impl UpdatesPage {
    fn refresh(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.in_progress)
    }
}

/// What the page shows besides the status.
#[derive(Default)]
struct PageOpts {
    notice: Option<String>,
    install_error: Option<String>,
    /// The checkbox as submitted; `None`: as on a fresh page (on).
    reboot: Option<bool>,
    rollback_error: Option<String>,
    rollback_confirm: String,
    /// A fresh check's answer (else the last one keel-update has).
    available: Option<AvailableUpdates>,
    online_error: Option<String>,
    settings_error: Option<String>,
    download_key: Option<DownloadKeyAnswer>,
}

async fn page(status_code: StatusCode, csrf: String, opts: PageOpts) -> Response {
    let (raw, unavailable) = match status(CALL_LIMIT).await {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e.message)),
    };
    let status = raw.as_ref().map(view);
    let mut online = OnlineView::default();
    if let Some(s) = &raw {
        let settings = call::<(), UpdateSettings>("GET", "/settings", None, CALL_LIMIT)
            .await
            .ok();
        let available = match opts.available {
            Some(a) => Some(a),
            None => call::<(), AvailableUpdates>("GET", "/available", None, CALL_LIMIT)
                .await
                .ok(),
        };
        online = online_view(settings, available.as_ref(), s.chain.as_ref());
    }
    online.error = opts.online_error;
    online.settings_error = opts.settings_error;
    online.download_key = opts.download_key;
    online.managed_by = crate::failover::managed_by().await;
    let page = UpdatesPage {
        csrf,
        error: None,
        notice: opts.notice,
        unavailable,
        status,
        install_error: opts.install_error,
        reboot: opts.reboot.unwrap_or(true),
        rollback_error: opts.rollback_error,
        rollback_confirm: opts.rollback_confirm,
        online,
    };
    match page.render() {
        Ok(html) => (status_code, Html(html)).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

#[utoipa::path(get, path = PAGE, tag = "pages",
    summary = "Support › Updates",
    responses((status = 200, description = "The page (saying so when keel-update is not answering)", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page")),
    security(("session" = []), ("token" = [])))]
async fn html_page(State(st): State<Shared>, headers: HeaderMap) -> Response {
    let Some((_, session)) = st.session(&headers) else {
        return Redirect::to("/appliance/").into_response();
    };
    page(StatusCode::OK, session.csrf_token, PageOpts::default()).await
}

#[derive(Template)]
#[template(path = "message.html")]
struct Refused {
    heading: String,
    text: String,
    error: Option<String>,
}

fn forged() -> Response {
    let page = Refused {
        heading: "Request refused".into(),
        text: "The form expired or came from another site; nothing was installed.".into(),
        error: None,
    };
    match page.render() {
        Ok(html) => (StatusCode::FORBIDDEN, Html(html)).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// A small field of the upload form, read up to [`MAX_SMALL_FIELD`] bytes.
async fn small_field(field: &mut axum::extract::multipart::Field<'_>) -> Result<String, String> {
    let mut out = Vec::new();
    while let Some(c) = field.chunk().await.map_err(|e| e.body_text())? {
        if out.len() + c.len() > MAX_SMALL_FIELD {
            return Err(format!(
                "the field {:?} is longer than {MAX_SMALL_FIELD} bytes",
                field.name().unwrap_or("")
            ));
        }
        out.extend_from_slice(&c);
    }
    String::from_utf8(out).map_err(|_| "a form field is not UTF-8".to_owned())
}

// The two upload bodies as the OpenAPI document describes them. The uploads are
// streamed (`install`), never held, so nothing builds these.

/// A bundle file.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
struct BundleFile(Vec<u8>);

/// The Updates page's upload form, its fields in this order.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct InstallUpload {
    /// First: checked before a byte of the file is passed on.
    csrf: String,
    /// A checkbox: restart into the new version once it is armed.
    reboot: Option<String>,
    /// The bundle file, last.
    #[schema(value_type = String, format = Binary)]
    bundle: Vec<u8>,
}

/// The upload form: `csrf`, then `reboot` (checkbox), then the file `bundle`, in
/// this order; the file is passed on only once the token before it matched.
#[utoipa::path(post, path = PAGE_INSTALL, tag = "forms",
    summary = "Support › Updates: Install (upload a bundle)",
    description = "Fields in this order: `csrf`, `reboot`, the file `bundle` (up to 1 GiB; \
        the console's 64 KiB limit does not apply here). The token is checked before a byte \
        of the file is passed on to keel-update, which checks the signature before it writes.",
    request_body(content = InstallUpload, content_type = "multipart/form-data"),
    responses((status = 200, description = "The page: installed and verified (and restarting, with `reboot`)", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 400, description = "The page: no file, not a valid bundle, or the upload broke off", content_type = "text/html", body = String),
        (status = 403, description = "Form expired or from another site, or a role that may not change anything", content_type = "text/html", body = String),
        (status = 409, description = "The page: an install is running", content_type = "text/html", body = String),
        (status = 413, description = "The page: over 1 GiB", content_type = "text/html", body = String),
        (status = 422, description = "The page: refused (clock, downgrade, requirements, ...)", content_type = "text/html", body = String),
        (status = 503, description = "The page: keel-update not answering", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn install_submit(State(st): State<Shared>, req: Request) -> Response {
    let headers = req.headers().clone();
    let declared = declared_length(&headers);
    let Some((_, session)) = st.session(&headers) else {
        drain_refused_body(req.into_body(), declared).await;
        return Redirect::to("/appliance/").into_response();
    };
    if !app::same_origin(&headers) {
        drain_refused_body(req.into_body(), declared).await;
        return forged();
    }
    let csrf = session.csrf_token.clone();
    let refused = |status: StatusCode, why: String, reboot: bool| {
        page(
            status,
            csrf.clone(),
            PageOpts {
                install_error: Some(why),
                reboot: Some(reboot),
                ..PageOpts::default()
            },
        )
    };
    if let Some(len) = declared.filter(|l| *l > MAX_BUNDLE + FORM_OVERHEAD) {
        return refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "The upload ({len} bytes) is over the limit of {MAX_BUNDLE} bytes: nothing was \
                 installed."
            ),
            true,
        )
        .await;
    }
    let mut form = match Multipart::from_request(req, &()).await {
        Ok(f) => f,
        Err(r) => {
            return refused(
                StatusCode::BAD_REQUEST,
                format!("The upload could not be read ({}).", r.body_text()),
                true,
            )
            .await
        }
    };
    let mut token_ok = false;
    let mut reboot = false;
    let mut before = 0;
    // Refusals past this point: the rest of the form is read and dropped first.
    let (status, why) = loop {
        let mut field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) if token_ok => {
                break (
                    StatusCode::BAD_REQUEST,
                    "Choose the bundle file to install.".to_owned(),
                )
            }
            Ok(None) => return forged(),
            Err(e) => {
                return refused(
                    e.status(),
                    format!("The upload could not be read ({}).", e.body_text()),
                    reboot,
                )
                .await
            }
        };
        let name = field.name().unwrap_or("").to_owned();
        if name == "bundle" {
            // Not one byte of the file before the token was seen and matched.
            if !token_ok {
                let budget = drain_refused_field(field, declared).await;
                drain_refused_form(&mut form, budget).await;
                return forged();
            }
            // A browser sends an empty file part when no file was chosen.
            if field.file_name() == Some("") {
                let budget = drain_refused_field(field, declared).await;
                drain_refused_form(&mut form, budget).await;
                break (
                    StatusCode::BAD_REQUEST,
                    "Choose the bundle file to install.".to_owned(),
                );
            }
            let mut upload = Upload::Field(Box::new(field));
            // The file's own size is not known (only the whole form's): chunked.
            let result = install(&mut upload, None, reboot).await;
            drop(upload);
            // What follows the file (the closing boundary, stray fields).
            drain_refused_form(&mut form, Some(REFUSAL_DRAIN)).await;
            let a = match result {
                Ok(a) => a,
                Err(e) => return refused(e.status, e.message, reboot).await,
            };
            if let Some(app) = &a.app {
                let notice = format!(
                    "App {app} {} is installed, verified and active (no restart needed).",
                    a.version
                );
                let opts = PageOpts {
                    notice: Some(notice),
                    ..PageOpts::default()
                };
                return page(StatusCode::OK, csrf.clone(), opts).await;
            }
            let next = if a.rebooting {
                "The appliance restarts now to try it; this page answers again once it is back."
            } else {
                "It runs from the next restart (Status › Basics › Restart this appliance)."
            };
            return page(
                StatusCode::OK,
                csrf.clone(),
                PageOpts {
                    notice: Some(format!(
                        "Keel {} is installed in slot {} and verified. {next} If it does not \
                         come up healthy, the appliance goes back to the version running now \
                         by itself.",
                        a.version, a.slot
                    )),
                    reboot: Some(reboot),
                    ..PageOpts::default()
                },
            )
            .await;
        }
        before += 1;
        if before > MAX_FIELDS_BEFORE_FILE {
            let budget = drain_refused_field(field, declared).await;
            drain_refused_form(&mut form, budget).await;
            break (
                StatusCode::BAD_REQUEST,
                "The upload has too many fields.".to_owned(),
            );
        }
        let value = match small_field(&mut field).await {
            Ok(v) => v,
            Err(why) => {
                let budget = drain_refused_field(field, declared).await;
                drain_refused_form(&mut form, budget).await;
                break (
                    StatusCode::BAD_REQUEST,
                    format!("The upload could not be read ({why})."),
                );
            }
        };
        drop(field);
        match name.as_str() {
            "csrf" => {
                if !session.form_csrf_matches(&value) {
                    drain_refused_form(
                        &mut form,
                        declared
                            .is_none_or(|n| n <= REFUSAL_DRAIN)
                            .then_some(REFUSAL_DRAIN),
                    )
                    .await;
                    return forged();
                }
                token_ok = true;
            }
            "reboot" => reboot = true,
            _ => {}
        }
    };
    if !token_ok {
        return forged();
    }
    refused(status, why, reboot).await
}

#[derive(Deserialize, utoipa::ToSchema)]
struct RollbackForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
}

#[utoipa::path(post, path = "/appliance/support/updates/rollback", tag = "forms",
    summary = "Support › Updates: Roll back",
    description = "`confirm` must be `ROLLBACK`; the appliance restarts into the other slot.",
    request_body(content = RollbackForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 202, description = "Rolling back", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or a role that may not change anything", content_type = "text/html", body = String),
        (status = 409, description = "The page: an install is running", content_type = "text/html", body = String),
        (status = 422, description = "The page: not confirmed, or nothing to roll back to", content_type = "text/html", body = String),
        (status = 503, description = "The page: keel-update not answering", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn rollback_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<RollbackForm>,
) -> Response {
    if let Err(resp) = crate::web::form_session(&st, &headers, &form.csrf) {
        return *resp;
    }
    let csrf = st
        .session(&headers)
        .map(|(_, s)| s.csrf_token)
        .unwrap_or_default();
    let confirm = form.confirm.trim().to_owned();
    let target = status(CALL_LIMIT).await.ok().and_then(|s| s.rollback_to);
    let result = match check_confirmation(&confirm) {
        Ok(req) => rollback(&req).await.map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            let page = Refused {
                heading: "Rolling back".into(),
                text: match target {
                    Some(v) => format!(
                        "The appliance restarts into Keel {v}. Reload this page in a minute."
                    ),
                    None => "The appliance restarts into the previous version. Reload this \
                             page in a minute."
                        .into(),
                },
                error: None,
            };
            match page.render() {
                Ok(html) => (StatusCode::ACCEPTED, Html(html)).into_response(),
                Err(e) => ApiError::internal(e).into_response(),
            }
        }
        Err(e) => {
            page(
                e.status,
                csrf,
                PageOpts {
                    rollback_error: Some(e.message),
                    rollback_confirm: confirm,
                    ..PageOpts::default()
                },
            )
            .await
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct SettingsForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    feed_url: String,
    #[serde(default)]
    proxy_url: String,
    #[serde(default)]
    proxy_user: String,
    /// Empty keeps the stored password.
    #[serde(default)]
    proxy_password: String,
    #[serde(default)]
    clear_password: Option<String>,
    #[serde(default)]
    ca_certificate: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    version: String,
    /// `base` or an app's name (the online list's entries).
    #[serde(default)]
    component: String,
}

/// The session's CSRF token after a form's session and token were checked.
#[allow(clippy::result_large_err)]
fn form_csrf(st: &app::AppState, headers: &HeaderMap, token: &str) -> Result<String, Response> {
    crate::web::form_session(st, headers, token).map_err(|r| *r)?;
    Ok(st
        .session(headers)
        .map(|(_, s)| s.csrf_token)
        .unwrap_or_default())
}

/// A form's action on the Updates page, shown on the page: `action` runs only
/// after the session and CSRF token were checked (a future does nothing until
/// awaited).
async fn form_action(
    st: &app::AppState,
    headers: &HeaderMap,
    token: &str,
    action: impl std::future::Future<Output = PageOpts>,
) -> Response {
    let csrf = match form_csrf(st, headers, token) {
        Ok(c) => c,
        Err(r) => return r,
    };
    page(StatusCode::OK, csrf, action.await).await
}

#[utoipa::path(post, path = "/appliance/support/updates/settings", tag = "forms",
    summary = "Support › Updates: Save online update settings",
    description = "An empty `proxy_password` keeps the stored one; `clear_password` (a \
        checkbox) removes it.",
    request_body(content = SettingsForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page: saved, or why not", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or a role that may not change anything", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn settings_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<SettingsForm>,
) -> Response {
    form_action(&st, &headers, &form.csrf, async {
        let req = UpdateSettingsRequest {
            feed_url: Some(form.feed_url),
            proxy_url: Some(form.proxy_url),
            proxy_user: Some(form.proxy_user),
            proxy_password: if form.clear_password.is_some() {
                Some(String::new())
            } else if form.proxy_password.is_empty() {
                None
            } else {
                Some(form.proxy_password)
            },
            ca_certificate: Some(form.ca_certificate),
        };
        match call::<_, UpdateSettings>("PUT", "/settings", Some(&req), CALL_LIMIT).await {
            Ok(_) => PageOpts {
                notice: Some("Online update settings saved.".into()),
                ..PageOpts::default()
            },
            Err(e) => PageOpts {
                settings_error: Some(e.message),
                ..PageOpts::default()
            },
        }
    })
    .await
}

#[utoipa::path(post, path = "/appliance/support/updates/check", tag = "forms",
    summary = "Support › Updates: Check for updates",
    request_body(content = ActionForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page with what the feed offers, or why the check failed", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or a role that may not change anything", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn check_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    form_action(&st, &headers, &form.csrf, async {
        match check().await {
            Ok(a) => PageOpts {
                notice: Some(if a.plan.is_empty() {
                    "Checked: this appliance is up to date.".into()
                } else {
                    format!("Checked: updates available ({}).", a.plan.join(" → "))
                }),
                available: Some(a),
                ..PageOpts::default()
            },
            Err(e) => PageOpts {
                online_error: Some(format!("Check for updates failed: {}", e.message)),
                ..PageOpts::default()
            },
        }
    })
    .await
}

#[utoipa::path(post, path = "/appliance/support/updates/install-online", tag = "forms",
    summary = "Support › Updates: Install (one version from the feed)",
    description = "`version`, and `component`: `base` or an app's name. A base version \
        restarts the appliance to try it.",
    request_body(content = ActionForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page: installed, or why not", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or a role that may not change anything", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn install_online_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    form_action(&st, &headers, &form.csrf, async {
        let req = InstallOnlineRequest {
            version: form.version.trim().to_owned(),
            app: Some(form.component.trim())
                .filter(|c| !c.is_empty() && *c != "base")
                .map(str::to_owned),
            reboot: true,
        };
        match install_online(&req).await {
            Ok(a) => PageOpts {
                notice: Some(match &a.app {
                    Some(app) => format!(
                        "App {app} {} was downloaded, verified and installed; it is active \
                         (no restart needed).",
                        a.version
                    ),
                    None => format!(
                        "Keel {} was downloaded, verified and installed in slot {}. The \
                         appliance restarts now to try it; if it does not come up healthy, it \
                         goes back to the version running now by itself.",
                        a.version, a.slot
                    ),
                }),
                ..PageOpts::default()
            },
            Err(e) => PageOpts {
                online_error: Some(format!(
                    "Install of Keel {} failed: {}",
                    req.version, e.message
                )),
                ..PageOpts::default()
            },
        }
    })
    .await
}

#[utoipa::path(post, path = "/appliance/support/updates/install-all", tag = "forms",
    summary = "Support › Updates: Install all (in order)",
    request_body(content = ActionForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page: the first step armed (the appliance restarts), or why not", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or a role that may not change anything", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn install_all_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    form_action(&st, &headers, &form.csrf, async {
        match install_all().await {
            Ok(c) => PageOpts {
                notice: Some(format!(
                    "Installing in order: {}. The appliance restarts once per step and goes \
                         on after each healthy start.",
                    c.steps.join(" → ")
                )),
                ..PageOpts::default()
            },
            Err(e) => PageOpts {
                online_error: Some(e.message),
                ..PageOpts::default()
            },
        }
    })
    .await
}

#[utoipa::path(post, path = "/appliance/support/updates/download-key", tag = "forms",
    summary = "Support › Updates: Show download key",
    request_body(content = ActionForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page with the key, or why there is none", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or a role that may not change anything", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn download_key_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    form_action(&st, &headers, &form.csrf, async {
        match download_key().await {
            Ok(k) => PageOpts {
                download_key: Some(k),
                ..PageOpts::default()
            },
            Err(e) => PageOpts {
                install_error: Some(format!("No download key: {}", e.message)),
                ..PageOpts::default()
            },
        }
    })
    .await
}

/// The update routes, full paths (merged into the console's router). The two
/// install routes read up to a bundle's size (the global limit skips them, see
/// `app::refuse_oversized` and [`own_body_limit`]).
pub fn router() -> OpenApiRouter<Shared> {
    let bundle = || DefaultBodyLimit::max((MAX_BUNDLE + FORM_OVERHEAD) as usize);
    OpenApiRouter::new()
        .routes(routes!(api_status))
        .routes(routes!(api_install).layer(bundle()))
        .routes(routes!(api_rollback))
        .routes(routes!(html_page))
        .routes(routes!(install_submit).layer(bundle()))
        .routes(routes!(rollback_submit))
        .routes(routes!(api_get_settings, api_put_settings))
        .routes(routes!(api_check))
        .routes(routes!(api_available))
        .routes(routes!(api_install_online))
        .routes(routes!(api_install_all))
        .routes(routes!(api_download_key))
        .routes(routes!(settings_submit))
        .routes(routes!(check_submit))
        .routes(routes!(install_online_submit))
        .routes(routes!(install_all_submit))
        .routes(routes!(download_key_submit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::{OutcomeKind, UpdateOutcome, UpdateProgress};

    fn sample() -> UpdateStatus {
        UpdateStatus {
            running: SlotInfo {
                slot: "a".into(),
                version: Some("0.1.1".into()),
                good: true,
            },
            other: SlotInfo {
                slot: "b".into(),
                version: Some("0.1.2".into()),
                good: false,
            },
            progress: UpdateProgress {
                phase: UpdatePhase::Write,
                version: Some("0.1.3".into()),
                bytes_done: 256,
                bytes_total: 1024,
                error: None,
            },
            last_outcome: Some(UpdateOutcome {
                kind: OutcomeKind::RolledBack,
                from_version: "0.1.1".into(),
                to_version: "0.1.2".into(),
                message: "update to 0.1.2 failed its health check, running 0.1.1 again".into(),
                at: "2026-12-01T09:00:00Z".into(),
            }),
            rollback_to: None,
            chain: None,
            apps: vec![keel_api::AppInfo {
                name: "demo".into(),
                version: "1.0.0".into(),
                active: true,
                previous: Some("0.9.0".into()),
                note: None,
            }],
        }
    }

    fn render(s: Option<UpdateStatus>, opts: PageOpts) -> String {
        UpdatesPage {
            csrf: "tok".into(),
            error: None,
            notice: opts.notice,
            unavailable: s
                .is_none()
                .then(|| "update service unavailable: x".to_owned()),
            status: s.as_ref().map(view),
            install_error: opts.install_error,
            reboot: opts.reboot.unwrap_or(true),
            rollback_error: opts.rollback_error,
            rollback_confirm: opts.rollback_confirm,
            online: OnlineView::default(),
        }
        .render()
        .unwrap()
    }

    #[test]
    fn page_shows_status_progress_and_forms() {
        let html = render(Some(sample()), PageOpts::default());
        for want in [
            "slot a: Keel 0.1.1 (known good)",
            "slot b: Keel 0.1.2",
            "update to 0.1.2 failed its health check, running 0.1.1 again",
            "writing the new version into the other slot",
            "256 of 1024 bytes",
            "25 %",
            "<meta http-equiv=\"refresh\" content=\"2\">",
            "An install is running",
            "demo 1.0.0 — active; 0.9.0 kept for a rollback",
        ] {
            assert!(html.contains(want), "{want:?} in\n{html}");
        }
        assert!(!html.contains("<script"));
        assert!(
            !html.contains("type=\"file\""),
            "no second install meanwhile"
        );
        assert!(!html.contains("Roll back to the previous version"));

        // Idle: the upload form, the token before the file.
        let mut s = sample();
        s.progress = UpdateProgress::default();
        let html = render(Some(s), PageOpts::default());
        assert!(html.contains("enctype=\"multipart/form-data\""), "{html}");
        assert!(
            html.contains("name=\"reboot\" value=\"1\" checked"),
            "{html}"
        );
        let token = html.find("name=\"csrf\" value=\"tok\"").unwrap();
        let file = html.find("type=\"file\"").unwrap();
        assert!(token < file);
        assert!(html.find("name=\"reboot\"").unwrap() < file);
        assert!(!html.contains("http-equiv"), "{html}");

        // Idle, a rollback possible: no refresh, the rollback form.
        let mut s = sample();
        s.progress = UpdateProgress::default();
        s.rollback_to = Some("0.1.0".into());
        let html = render(
            Some(s),
            PageOpts {
                reboot: Some(false),
                rollback_error: Some("confirm with ROLLBACK".into()),
                rollback_confirm: "rollbak".into(),
                ..PageOpts::default()
            },
        );
        assert!(!html.contains("http-equiv"), "{html}");
        assert!(html.contains("Roll back to the previous version"));
        assert!(html.contains("Keel 0.1.0"));
        assert!(html.contains("value=\"rollbak\""));
        assert!(html.contains("confirm with ROLLBACK"));
        assert!(!html.contains("value=\"1\" checked"), "{html}");

        // keel-update down: said, no forms.
        let html = render(None, PageOpts::default());
        assert!(html.contains("update service unavailable: x"));
        assert!(!html.contains("type=\"file\""));
    }

    #[test]
    fn online_sections_grey_out_what_does_not_fit() {
        let mut st = sample();
        st.progress = UpdateProgress::default();
        let entry = |v: &str, state, reason: Option<&str>| keel_api::AvailableEntry {
            file: format!("keel-{v}.kbundle"),
            component: "base".into(),
            version: v.into(),
            size: 3 << 20,
            sha256: "00".into(),
            state,
            reason: reason.map(str::to_owned),
            steps: vec![],
        };
        let available = AvailableUpdates {
            checked_at: "2026-12-01T10:00:00Z".into(),
            feed_url: "https://u.example/feed".into(),
            feed_created: "c".into(),
            feed_expires: "e".into(),
            installed: "0.1.1".into(),
            entries: vec![
                entry("0.2.0", AvailableState::Installable, None),
                entry(
                    "0.3.0",
                    AvailableState::NeedsFirst,
                    Some("needs base 0.2.0 first"),
                ),
            ],
            plan: vec!["0.2.0".into(), "0.3.0".into()],
        };
        let chain = ChainStatus {
            steps: available.plan.clone(),
            done: 1,
            current: Some("0.3.0".into()),
            state: ChainState::Failed,
            message: Some("install all stopped at 0.3.0: boom".into()),
            started_at: "t".into(),
        };
        let settings = UpdateSettings {
            feed_url: Some("https://u.example/feed".into()),
            proxy_url: Some("http://proxy:3128".into()),
            proxy_user: Some("bob".into()),
            proxy_password_set: true,
            ca_certificate: None,
        };
        let mut online = online_view(Some(settings), Some(&available), Some(&chain));
        online.download_key = Some(DownloadKeyAnswer {
            text: "-----BEGIN KEEL DOWNLOAD KEY-----\nAAAA\n-----END KEEL DOWNLOAD KEY-----\n"
                .into(),
            appliance_id: "keel-0123".into(),
            installed: vec!["base 0.1.1".into()],
            created: "c".into(),
            expires: "x".into(),
        });
        let html = UpdatesPage {
            csrf: "tok".into(),
            error: None,
            notice: None,
            unavailable: None,
            status: Some(view(&st)),
            install_error: None,
            reboot: true,
            rollback_error: None,
            rollback_confirm: String::new(),
            online,
        }
        .render()
        .unwrap();
        for want in [
            "<button type=\"submit\">Install 0.2.0</button>",
            "class=\"unavailable\"><td>base 0.3.0</td>",
            "needs base 0.2.0 first",
            "Keel 0.2.0 → Keel 0.3.0",
            "Install all in order</button>",
            "Check for updates</button>",
            "stopped: 1 of 2 steps (0.2.0 → 0.3.0). install all stopped at 0.3.0: boom",
            "Proxy password (set; empty keeps it)",
            "value=\"http://proxy:3128\"",
            "<pre id=\"download-key\">-----BEGIN KEEL DOWNLOAD KEY-----",
            "Make download key</button>",
        ] {
            assert!(html.contains(want), "{want:?} in\n{html}");
        }
        assert!(
            !html.contains("Install 0.3.0"),
            "no install button for 0.3.0"
        );
        assert!(!html.contains("<script"));
        let forms = html.matches("<form method=\"post\"").count();
        let tokens = html.matches("name=\"csrf\" value=\"tok\"").count();
        // (The navigation's logout form carries one too.)
        assert!(
            tokens > forms,
            "every form carries the CSRF token: {forms} {tokens}"
        );
    }

    #[tokio::test]
    async fn pump_cuts_at_the_limit_with_an_error() {
        // 1 GiB + 1 MiB in 1 MiB chunks (one buffer, shared).
        let mib = Bytes::from(vec![0u8; 1 << 20]);
        let chunks = (0..1025).map(move |_| Ok::<_, std::io::Error>(mib.clone()));
        let mut upload = Upload::Body(Body::from_stream(futures_util::stream::iter(chunks)));
        let (tx, mut rx) = mpsc::channel::<Chunk>(CHANNEL_CHUNKS);
        let counted = tokio::spawn(async move {
            let (mut total, mut last_err) = (0u64, false);
            while let Some(c) = rx.recv().await {
                match c {
                    Ok(b) => total += b.len() as u64,
                    Err(_) => last_err = true,
                }
            }
            (total, last_err)
        });
        let cut = pump(&mut upload, tx).await.unwrap_err();
        assert!(matches!(cut, Cut::TooLarge), "{cut:?}");
        assert_eq!(cut.error().status, StatusCode::PAYLOAD_TOO_LARGE);
        let (total, last_err) = counted.await.unwrap();
        assert_eq!(total, MAX_BUNDLE, "never more than the limit passed on");
        assert!(
            last_err,
            "the body to keel-update ends in an error, not cleanly"
        );

        // A whole upload ends cleanly.
        let chunks = (0..3).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(b"abc")));
        let mut upload = Upload::Body(Body::from_stream(futures_util::stream::iter(chunks)));
        let (tx, mut rx) = mpsc::channel::<Chunk>(CHANNEL_CHUNKS);
        assert_eq!(pump(&mut upload, tx).await.unwrap(), 9);
        let mut got = Vec::new();
        while let Some(c) = rx.recv().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, b"abcabcabc");
    }

    #[test]
    fn percent_and_phases() {
        let mut s = sample();
        s.progress.bytes_done = 2048;
        assert_eq!(view(&s).progress.unwrap().percent, Some(100));
        s.progress.bytes_total = 0;
        s.progress.bytes_done = 0;
        assert_eq!(view(&s).progress.unwrap().percent, None);
        assert!(running(UpdatePhase::Verify));
        assert!(!running(UpdatePhase::RebootPending));
        assert!(!running(UpdatePhase::Idle));
        assert!(own_body_limit(API_INSTALL) && own_body_limit(PAGE_INSTALL));
        assert!(!own_body_limit("/appliance/api/v1/update/rollback"));
        assert!(!own_body_limit("/appliance/api/v1/net/config"));
    }
}
