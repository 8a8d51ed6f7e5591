//! Time: `/appliance/api/v1/time...`, the *Time* section of *Status › Basics* and
//! its two forms. Everything goes through keel-timed's local socket: timed
//! measures, and timed (which holds CAP_SYS_TIME) sets the clock by hand — the
//! console stays unprivileged.

use std::path::PathBuf;
use std::time::Duration;

use askama::Template;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use keel_api::{ManualTimeRequest, NtpServerList, NtpServers, ServerState, TimeState, TimeVerdict};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::app::{JsonBody, Shared};
use crate::error::ApiError;
use crate::local_service::LocalService;
use crate::openapi::{routes, OpenApiRouter};

/// A check with a dead server takes its timeouts: long enough for the default
/// settings (4 samples 2 s apart, 1 s timeout, 3 s name resolution).
const CALL_LIMIT: Duration = Duration::from_secs(30);
/// The Basics page does not wait for a check in progress.
const PAGE_LIMIT: Duration = Duration::from_secs(2);

// timed's own refusals (400 bad time, 409 list owned by netd, ...) pass through.
static TIMED: LocalService = LocalService::new(
    "timed",
    "NTP check unavailable",
    |limit| {
        format!(
            "keel-timed did not answer within {} s (a check may still be running; reload in \
             a few seconds)",
            limit.as_secs()
        )
    },
    |m| m,
);

/// Where timed's local socket is (main's `--timed-socket`, tests).
pub fn set_socket(path: PathBuf) {
    TIMED.set_socket(path);
}

async fn call<B: Serialize, R: DeserializeOwned>(
    method: &str,
    path: &str,
    body: Option<&B>,
    limit: Duration,
) -> Result<R, ApiError> {
    TIMED.call(method, path, body, limit).await
}

#[utoipa::path(get, path = "/appliance/api/v1/time", tag = "time",
    summary = "The clock's verdict: synchronised, unknown or known wrong, and why",
    responses((status = 200, body = TimeVerdict), (status = 401, description = "No session or token")),
    security(("session" = []), ("token" = [])))]
async fn api_time(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<TimeVerdict>, ApiError> {
    st.session(&headers).ok_or_else(ApiError::unauthorized)?;
    call::<(), _>("GET", "/verdict", None, CALL_LIMIT)
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/appliance/api/v1/time/check", tag = "time",
    summary = "Measure the configured NTP servers now",
    responses((status = 200, body = TimeVerdict), (status = 401), (status = 403)),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_check(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<TimeVerdict>, ApiError> {
    st.api_session_for_change(&headers)?;
    call::<(), _>("POST", "/check", None, CALL_LIMIT)
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/appliance/api/v1/time/manual", tag = "time",
    summary = "Set the clock by hand (refused while NTP answers)",
    request_body = ManualTimeRequest,
    responses((status = 200, body = TimeVerdict), (status = 400), (status = 401), (status = 403), (status = 409)),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_manual(
    State(st): State<Shared>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ManualTimeRequest>,
) -> Result<Json<TimeVerdict>, ApiError> {
    st.api_session_for_change(&headers)?;
    call("POST", "/manual", Some(&body), CALL_LIMIT)
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/appliance/api/v1/time/servers", tag = "time",
    summary = "The NTP servers and their last measurement",
    responses((status = 200, body = NtpServerList), (status = 401)),
    security(("session" = []), ("token" = [])))]
async fn api_servers(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<NtpServerList>, ApiError> {
    st.session(&headers).ok_or_else(ApiError::unauthorized)?;
    call::<(), _>("GET", "/servers", None, CALL_LIMIT)
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/appliance/api/v1/time/servers", tag = "time",
    summary = "Replace timed's own NTP server list",
    request_body = NtpServers,
    responses((status = 200, body = NtpServerList), (status = 400), (status = 401), (status = 403), (status = 409)),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_set_servers(
    State(st): State<Shared>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<NtpServers>,
) -> Result<Json<NtpServerList>, ApiError> {
    st.api_session_for_change(&headers)?;
    call("POST", "/servers", Some(&body), CALL_LIMIT)
        .await
        .map(Json)
}

/// One server's line on the Basics page.
pub struct ServerRow {
    pub server: String,
    pub state: String,
    pub offset: String,
    pub delay: String,
    pub stratum: String,
    pub reference: String,
    pub note: String,
}

/// The Basics page's *Time* section, ready to print.
pub struct TimeView {
    /// Why there is no verdict (timed not running, ...); empty when there is one.
    pub unavailable: String,
    pub state: String,
    pub alarm: bool,
    pub message: String,
    pub checked_at: String,
    pub daemon: String,
    pub servers: Vec<ServerRow>,
    pub warnings: Vec<String>,
    /// Offer the hand-set form (never while the servers agree with the clock).
    pub manual_allowed: bool,
    pub now_utc: String,
}

fn seconds(v: Option<f64>, signed: bool) -> String {
    match v {
        Some(s) if signed && s.abs() < 1.0 => format!("{s:+.6} s"),
        Some(s) if signed => format!("{s:+.3} s"),
        Some(s) => format!("{:.1} ms", s * 1000.0),
        None => "—".into(),
    }
}

fn daemon_line(v: &TimeVerdict) -> String {
    let d = &v.daemon;
    let own = match (d.running, d.synchronized, &d.last_sync) {
        (_, true, Some(at)) => format!("synchronized (last {at})"),
        (_, true, None) => "synchronized".into(),
        (true, false, _) => "running, not synchronized yet".into(),
        (false, false, _) => "not running".into(),
    };
    format!(
        "{}: {own}; kernel clock {}",
        d.name,
        if d.kernel_synchronized {
            "synchronized"
        } else {
            "not marked synchronized"
        }
    )
}

impl TimeView {
    fn from_verdict(v: TimeVerdict) -> Self {
        let servers = v
            .servers
            .iter()
            .map(|s| ServerRow {
                server: match &s.address {
                    Some(a) if *a != s.server => format!("{} ({a})", s.server),
                    _ => s.server.clone(),
                },
                state: s.state.as_str().to_owned(),
                offset: seconds(s.offset_seconds, true),
                delay: seconds(s.delay_seconds, false),
                stratum: s.stratum.map(|x| x.to_string()).unwrap_or_default(),
                reference: s.reference_id.clone().unwrap_or_default(),
                note: match s.state {
                    ServerState::Ok => String::new(),
                    _ => s.error.clone().unwrap_or_default(),
                },
            })
            .collect();
        TimeView {
            unavailable: String::new(),
            state: v.state.to_string(),
            alarm: v.state == TimeState::Skewed,
            message: v.message.clone(),
            checked_at: v.checked_at.clone(),
            daemon: daemon_line(&v),
            servers,
            warnings: v.warnings.clone(),
            manual_allowed: v.state != TimeState::Ok,
            now_utc: String::new(),
        }
    }

    fn unavailable(why: String) -> Self {
        TimeView {
            unavailable: why,
            state: String::new(),
            alarm: false,
            message: String::new(),
            checked_at: String::new(),
            daemon: String::new(),
            servers: Vec::new(),
            warnings: Vec::new(),
            manual_allowed: false,
            now_utc: String::new(),
        }
    }
}

/// The Basics page's *Time* section; renders whether or not timed is running.
pub async fn basics_view() -> TimeView {
    let mut view = match call::<(), TimeVerdict>("GET", "/verdict", None, PAGE_LIMIT).await {
        Ok(v) => TimeView::from_verdict(v),
        Err(e) => {
            let why = e.message;
            TimeView::unavailable(if why.starts_with("NTP check unavailable") {
                why
            } else {
                format!("NTP check unavailable: {why}")
            })
        }
    };
    view.now_utc = crate::status::now_rfc3339();
    view
}

#[derive(Template)]
#[template(path = "message.html")]
struct TimeMessage {
    heading: String,
    text: String,
    error: Option<String>,
}

fn message(status: StatusCode, heading: &str, text: String) -> Response {
    let page = TimeMessage {
        heading: heading.into(),
        text,
        error: None,
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

#[derive(Deserialize)]
struct CheckForm {
    #[serde(default)]
    csrf: String,
}

#[utoipa::path(post, path = "/appliance/time/check", tag = "forms",
    summary = "Basics › Time: Check now",
    responses((status = 303, description = "Back to Basics")),
    security(("session" = [], "form_csrf" = [])))]
async fn check_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<CheckForm>,
) -> Response {
    if let Err(resp) = crate::web::form_session(&st, &headers, &form.csrf) {
        return *resp;
    }
    match call::<(), TimeVerdict>("POST", "/check", None, CALL_LIMIT).await {
        Ok(_) => Redirect::to("/appliance/").into_response(),
        Err(e) => message(e.status, "Time check failed", e.message),
    }
}

#[derive(Deserialize)]
struct ManualForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    time: String,
}

#[utoipa::path(post, path = "/appliance/time/manual", tag = "forms",
    summary = "Basics › Time: set the clock by hand",
    responses((status = 303, description = "Back to Basics")),
    security(("session" = [], "form_csrf" = [])))]
async fn manual_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<ManualForm>,
) -> Response {
    if let Err(resp) = crate::web::form_session(&st, &headers, &form.csrf) {
        return *resp;
    }
    let body = ManualTimeRequest { time: form.time };
    match call::<_, TimeVerdict>("POST", "/manual", Some(&body), CALL_LIMIT).await {
        Ok(_) => Redirect::to("/appliance/").into_response(),
        Err(e) => message(e.status, "The time was not set", e.message),
    }
}

/// The time routes, full paths (merged into the console's router).
pub fn router() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(api_time))
        .routes(routes!(api_check))
        .routes(routes!(api_manual))
        .routes(routes!(api_servers, api_set_servers))
        .routes(routes!(check_submit))
        .routes(routes!(manual_submit))
}
