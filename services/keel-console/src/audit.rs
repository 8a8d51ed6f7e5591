//! The audit log: every state-changing request the console carries out, recorded by
//! the [`record`] middleware into `<audit dir>/console.log` (keel-core's
//! [`keel_core::audit`] format), and the *Status › Audit log* page, its CSV and JSON
//! downloads and `GET /appliance/api/v1/audit`, which read every service's file in
//! the directory together.
//!
//! The middleware sees only the method, the matched route, the session and the
//! status: never a body, so no password, key or token can reach the log.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Json, Router};
use keel_api::{AuditPage, AuditQuery, AuditRecord, AuditVia};
use keel_core::audit::{self as log, AuditWriter, Filter, Outcome};

use crate::app::{self, Shared};
use crate::error::ApiError;
use crate::openapi::{routes, OpenApiRouter};

/// Put into a response's extensions by a handler whose actor is not the session's
/// (a login or setup names the account it tried).
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// Put into every audited request's extensions: a handler names the account a
/// login tried with [`attempted`], whatever it answers.
#[derive(Debug, Clone, Default)]
pub struct ActorSlot(Arc<Mutex<Option<String>>>);

/// Longest attempted user name kept.
pub const MAX_ATTEMPTED: usize = 64;
/// Rows per page of *Status › Audit log*; the downloads' default.
pub const PAGE_ROWS: usize = 50;

/// Records that `user` is who a login or setup tried to act as (sanitised: control
/// characters replaced, at most [`MAX_ATTEMPTED`] characters).
pub fn attempted(ext: &axum::http::Extensions, user: &str) {
    if let Some(slot) = ext.get::<ActorSlot>() {
        *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(log::clean(user, MAX_ATTEMPTED));
    }
}

pub struct AuditLog {
    writer: Arc<AuditWriter>,
}

impl AuditLog {
    /// The log in `dir`: the console writes `console.log` there and reads every
    /// service's file in it.
    pub fn open(dir: impl Into<PathBuf>) -> Self {
        Self {
            writer: Arc::new(AuditWriter::new(dir, "console")),
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self.writer.dir()
    }

    /// Writes one record off the async executor (it waits for the disk).
    pub async fn write(
        &self,
        user: String,
        source: String,
        via: AuditVia,
        action: String,
        target: Option<String>,
        result: String,
    ) {
        let writer = self.writer.clone();
        let rec = AuditRecord {
            ts: log::now(),
            service: writer.service().to_owned(),
            user: log::clean(&user, log::MAX_FIELD),
            source,
            via,
            action: log::clean(&action, log::MAX_FIELD),
            target: target.map(|t| log::clean(&t, log::MAX_FIELD)),
            result,
        };
        let done = tokio::task::spawn_blocking(move || writer.append(&rec)).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("audit record not written: {e}"),
            Err(e) => tracing::warn!("audit record not written: {e}"),
        }
    }

    /// Records matching `q`, newest first, from every service's file.
    pub async fn query(&self, q: &AuditQuery, default_limit: usize) -> Result<AuditPage, ApiError> {
        let filter = Filter::from_query(q, default_limit)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        let dir = self.dir().to_path_buf();
        let (records, more) = tokio::task::spawn_blocking(move || log::read(&dir, &filter))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        Ok(AuditPage { records, more })
    }
}

/// Readable names of the console's actions, by route (without the `/appliance` or
/// `/appliance/api/v1` prefix: a form and its API call share the name). Routes not
/// listed are named by method and route template.
const ACTIONS: &[(&str, &str)] = &[
    ("/setup", "setup"),
    ("/login", "login"),
    ("/logout", "logout"),
    ("/system/shutdown", "system.shutdown"),
    ("/system/reboot", "system.reboot"),
    ("/system/factory-reset", "system.factory-reset"),
    ("/net/config", "net.config.apply"),
    ("/network/ip", "net.config.apply"),
    ("/net/confirm", "net.config.confirm"),
    ("/network/confirm", "net.config.confirm"),
    ("/net/cancel", "net.config.cancel"),
    ("/network/cancel", "net.config.cancel"),
    ("/time/check", "time.check"),
    ("/time/manual", "time.manual"),
    ("/time/servers", "time.servers.set"),
    ("/update/check", "update.check"),
    ("/support/updates/check", "update.check"),
    ("/update/rollback", "update.rollback"),
    ("/support/updates/rollback", "update.rollback"),
    ("/update/settings", "update.settings"),
    ("/support/updates/settings", "update.settings"),
    ("/update/install-online", "update.install-online"),
    ("/support/updates/install-online", "update.install-online"),
    ("/update/install-all", "update.install-all"),
    ("/support/updates/install-all", "update.install-all"),
    ("/update/download-key", "update.download-key"),
    ("/support/updates/download-key", "update.download-key"),
    ("/failover/establish", "failover.establish"),
    ("/failover/sync", "failover.sync"),
    ("/failover/become-primary", "failover.become-primary"),
    ("/failover/break", "failover.break"),
    ("/failover/auto-takeover", "failover.auto-takeover"),
    ("/failover/dns", "failover.dns.set"),
    ("/failover/psk", "failover.key.set"),
    ("/security/failover-key", "failover.key.set"),
    ("/failover/psk/generate", "failover.key.generate"),
];

/// The action's name and target (the route's parameters, e.g. a certificate's id).
fn action_of(method: &Method, matched: Option<&str>, path: &str) -> (String, Option<String>) {
    let Some(template) = matched.filter(|m| !m.contains("{*")) else {
        return (format!("{method} {path}"), None);
    };
    let params: Vec<&str> = template
        .split('/')
        .zip(path.split('/'))
        .filter(|(t, _)| t.starts_with('{'))
        .map(|(_, p)| p)
        .collect();
    let target = (!params.is_empty()).then(|| params.join("/"));
    let route = template
        .strip_prefix("/appliance/api/v1")
        .or_else(|| template.strip_prefix("/appliance"))
        .unwrap_or(template);
    let name = ACTIONS
        .iter()
        .find(|(r, _)| *r == route)
        .map(|(_, n)| (*n).to_owned())
        .unwrap_or_else(|| format!("{method} {template}"));
    (name, target)
}

/// `ok`, `refused: <status>` (the client's doing: not logged in, CSRF, role,
/// validation) or `failed: <status>` (the appliance's).
fn result_of(status: StatusCode, refused_login: bool) -> String {
    let code = || {
        format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .trim()
        .to_owned()
    };
    if refused_login {
        Outcome::Refused("not logged in").text()
    } else if status.is_client_error() {
        Outcome::Refused(&code()).text()
    } else if status.is_server_error() {
        Outcome::Failed(&code()).text()
    } else {
        Outcome::Ok.text()
    }
}

/// The session a response opened (a login or setup sets the session cookie).
fn opened_session(st: &Shared, resp: &Response) -> Option<String> {
    resp.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.trim().split_once('='))
        .find(|(k, _)| *k == app::SESSION_COOKIE)
        .and_then(|(_, token)| st.auth.session(token))
        .map(|s| s.user)
}

/// Records every non-GET/HEAD request under `/appliance` once it is answered.
pub async fn record(State(st): State<Shared>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let audited = method != Method::GET
        && method != Method::HEAD
        && (path == "/appliance" || path.starts_with("/appliance/"));
    if !audited {
        return next.run(req).await;
    }
    let session_user = st.session(req.headers()).map(|(_, s)| s.user);
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "));
    let via = if bearer {
        AuditVia::Token
    } else if path.starts_with("/appliance/api/") {
        AuditVia::Api
    } else {
        AuditVia::Console
    };
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let (action, target) = action_of(&method, matched.as_deref(), &path);
    let source = app::client_ip(req.extensions()).to_string();
    let slot = ActorSlot::default();
    req.extensions_mut().insert(slot.clone());

    // On a task of its own: a client that goes away mid-request would otherwise
    // cancel the handler between the change and its record (hyper drops the
    // request's future), leaving a change made and not logged, or half made.
    let task = tokio::spawn(async move {
        let resp = next.run(req).await;
        finish(&st, resp, session_user, slot, (via, action, target, source)).await
    });
    match task.await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::error!("request task failed: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Writes the record of an answered request.
async fn finish(
    st: &Shared,
    resp: Response,
    session_user: Option<String>,
    slot: ActorSlot,
    (via, action, target, source): (AuditVia, String, Option<String>, String),
) -> Response {
    let named = resp
        .extensions()
        .get::<Actor>()
        .map(|a| log::clean(&a.0, MAX_ATTEMPTED))
        .or_else(|| slot.0.lock().unwrap_or_else(|e| e.into_inner()).take());
    let opened = opened_session(st, &resp);
    // A form posted without a session is answered with a redirect to the login
    // page: refused, although the status is not an error.
    let refused_login = resp.status().is_redirection()
        && session_user.is_none()
        && named.is_none()
        && opened.is_none();
    let user = named
        .or(opened)
        .or(session_user)
        .unwrap_or_else(|| "anonymous".into());
    let result = result_of(resp.status(), refused_login);
    st.audit
        .write(user, source, via, action, target, result)
        .await;
    resp
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditHtml {
    csrf: String,
    error: Option<String>,
    user: String,
    since: String,
    until: String,
    records: Vec<AuditRecord>,
    newer: Option<String>,
    older: Option<String>,
    csv: String,
    json: String,
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The query string of `q` (empty fields left out).
fn query_string(q: &AuditQuery) -> String {
    let mut parts = Vec::new();
    for (k, v) in [("user", &q.user), ("since", &q.since), ("until", &q.until)] {
        if let Some(v) = v.as_deref().filter(|v| !v.trim().is_empty()) {
            parts.push(format!("{k}={}", encode(v)));
        }
    }
    if let Some(o) = q.offset.filter(|o| *o > 0) {
        parts.push(format!("offset={o}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, e.body_text())
}

#[utoipa::path(get, path = "/appliance/status/audit", tag = "pages",
    summary = "Status › Audit log",
    params(AuditQuery),
    responses((status = 200, description = "The page (50 records, newest first)", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 400, description = "The page, saying which filter is wrong", content_type = "text/html", body = String)),
    security(("session" = []), ("token" = [])))]
async fn html_page(
    State(st): State<Shared>,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let Some((_, session)) = st.session(&headers) else {
        return Redirect::to("/appliance/").into_response();
    };
    let (q, mut error) = match q {
        Ok(Query(q)) => (q, None),
        Err(e) => (AuditQuery::default(), Some(e.body_text())),
    };
    let q = AuditQuery { limit: None, ..q };
    let offset = q.offset.unwrap_or(0);
    let (records, more, status) = match st.audit.query(&q, PAGE_ROWS).await {
        Ok(p) => (p.records, p.more, StatusCode::OK),
        Err(e) => {
            error = Some(e.message);
            (Vec::new(), false, StatusCode::BAD_REQUEST)
        }
    };
    let at = |offset: usize| {
        format!(
            "/appliance/status/audit{}",
            query_string(&AuditQuery {
                offset: Some(offset),
                ..q.clone()
            })
        )
    };
    let filters = AuditQuery {
        offset: None,
        ..q.clone()
    };
    let page = AuditHtml {
        csrf: session.csrf_token,
        error,
        user: q.user.clone().unwrap_or_default(),
        since: q.since.clone().unwrap_or_default(),
        until: q.until.clone().unwrap_or_default(),
        records,
        newer: (offset > 0).then(|| at(offset.saturating_sub(PAGE_ROWS))),
        older: more.then(|| at(offset + PAGE_ROWS)),
        csv: format!("/appliance/status/audit.csv{}", query_string(&filters)),
        json: format!("/appliance/status/audit.json{}", query_string(&filters)),
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// Downloads hold up to this many records unless `limit` says fewer.
const DOWNLOAD_ROWS: usize = log::MAX_LIMIT;

async fn read_for(
    st: &Shared,
    headers: &HeaderMap,
    q: Result<Query<AuditQuery>, QueryRejection>,
    default_limit: usize,
) -> Result<AuditPage, ApiError> {
    st.session(headers).ok_or_else(ApiError::unauthorized)?;
    let Query(q) = q.map_err(bad_query)?;
    st.audit.query(&q, default_limit).await
}

#[utoipa::path(get, path = "/appliance/api/v1/audit", tag = "audit",
    summary = "The audit log of every service, newest first",
    params(AuditQuery),
    responses((status = 200, body = AuditPage),
        (status = 400, description = "A filter is wrong (named)"),
        (status = 401, description = "No session or token")),
    security(("session" = []), ("token" = [])))]
async fn api_list(
    State(st): State<Shared>,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    read_for(&st, &headers, q, PAGE_ROWS).await.map(Json)
}

fn attachment(name: &str, content_type: &'static str, body: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
                    .expect("plain file name"),
            ),
        ],
        body,
    )
        .into_response()
}

#[utoipa::path(get, path = "/appliance/status/audit.json", tag = "pages",
    summary = "Status › Audit log: Download JSON",
    params(AuditQuery),
    responses((status = 200, description = "`audit.json`, an attachment: the records (up to 1000)", content_type = "application/json", body = [AuditRecord]),
        (status = 400, description = "A filter is wrong (named)"),
        (status = 401, description = "No session or token")),
    security(("session" = []), ("token" = [])))]
async fn download_json(
    State(st): State<Shared>,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let page = read_for(&st, &headers, q, DOWNLOAD_ROWS).await?;
    let body = serde_json::to_vec_pretty(&page.records).map_err(ApiError::internal)?;
    Ok(attachment("audit.json", "application/json", body))
}

#[utoipa::path(get, path = "/appliance/status/audit.csv", tag = "pages",
    summary = "Status › Audit log: Download CSV",
    params(AuditQuery),
    responses((status = 200, description = "`audit.csv`, an attachment: RFC 4180, columns ts,service,user,source,via,action,target,result (up to 1000 rows)", content_type = "text/csv", body = String),
        (status = 400, description = "A filter is wrong (named)"),
        (status = 401, description = "No session or token")),
    security(("session" = []), ("token" = [])))]
async fn download_csv(
    State(st): State<Shared>,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let page = read_for(&st, &headers, q, DOWNLOAD_ROWS).await?;
    Ok(attachment(
        "audit.csv",
        "text/csv; charset=utf-8",
        to_csv(&page.records).into_bytes(),
    ))
}

pub const CSV_HEADER: &str = "ts,service,user,source,via,action,target,result";

/// RFC 4180 rows; a cell a spreadsheet would take as a formula (`= + - @`, or a
/// tab/CR start) gets a leading `'`.
pub fn to_csv(records: &[AuditRecord]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push_str("\r\n");
    for r in records {
        let cells = [
            r.ts.as_str(),
            r.service.as_str(),
            r.user.as_str(),
            r.source.as_str(),
            r.via.as_str(),
            r.action.as_str(),
            r.target.as_deref().unwrap_or(""),
            r.result.as_str(),
        ];
        let row: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

fn csv_cell(text: &str) -> String {
    let mut cell = String::new();
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        cell.push('\'');
    }
    cell.push_str(text);
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell
    }
}

pub fn router() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(html_page))
        .routes(routes!(download_csv))
        .routes(routes!(download_json))
        .routes(routes!(api_list))
}

/// The console's local API (`app::local_router` with the certificates' routes
/// merged) with its changes recorded by [`record_local`].
pub fn local(router: Router, st: Shared) -> Router {
    router.layer(axum::middleware::from_fn_with_state(st, record_local))
}

/// The console's local API (keelctl, the local menu): its records, user `root`.
/// The menu resets the admin password; keelctl does everything else there.
pub async fn record_local(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    if method == Method::GET || method == Method::HEAD {
        return next.run(req).await;
    }
    let path = req.uri().path().to_owned();
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let via = if path == "/admin/reset-password" {
        AuditVia::LocalMenu
    } else {
        AuditVia::Keelctl
    };
    let (action, target) = match path.as_str() {
        "/admin/reset-password" => ("admin.reset-password".to_owned(), None),
        _ => action_of(&method, matched.as_deref(), &path),
    };
    let resp = next.run(req).await;
    let result = result_of(resp.status(), false);
    st.audit
        .write("root".into(), "local".into(), via, action, target, result)
        .await;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(user: &str, action: &str, target: Option<&str>) -> AuditRecord {
        AuditRecord {
            ts: "2026-12-01T10:00:00.000Z".into(),
            service: "console".into(),
            user: user.into(),
            source: "::1".into(),
            via: AuditVia::Console,
            action: action.into(),
            target: target.map(Into::into),
            result: "ok".into(),
        }
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let csv = to_csv(&[
            rec("=cmd|' /C calc'!A0", "a,b", Some("say \"hi\"\nthere")),
            rec("@x", "+1", Some("-2")),
        ]);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(
            lines[1],
            "2026-12-01T10:00:00.000Z,console,'=cmd|' /C calc'!A0,::1,console,\"a,b\",\"say \"\"hi\"\"\nthere\",ok"
        );
        assert_eq!(
            lines[2],
            "2026-12-01T10:00:00.000Z,console,'@x,::1,console,'+1,'-2,ok"
        );
    }

    #[test]
    fn routes_get_names_and_targets() {
        let post = Method::POST;
        assert_eq!(
            action_of(
                &post,
                Some("/appliance/api/v1/login"),
                "/appliance/api/v1/login"
            ),
            ("login".into(), None)
        );
        assert_eq!(
            action_of(
                &post,
                Some("/appliance/network/confirm"),
                "/appliance/network/confirm"
            ),
            ("net.config.confirm".into(), None)
        );
        assert_eq!(
            action_of(
                &post,
                Some("/appliance/security/certificates/{id}/delete"),
                "/appliance/security/certificates/c3/delete"
            ),
            (
                "POST /appliance/security/certificates/{id}/delete".into(),
                Some("c3".into())
            )
        );
        assert_eq!(
            action_of(&post, None, "/appliance/nowhere"),
            ("POST /appliance/nowhere".into(), None)
        );
    }

    #[test]
    fn results_say_whose_doing() {
        assert_eq!(result_of(StatusCode::OK, false), "ok");
        assert_eq!(result_of(StatusCode::SEE_OTHER, false), "ok");
        assert_eq!(
            result_of(StatusCode::SEE_OTHER, true),
            "refused: not logged in"
        );
        assert_eq!(
            result_of(StatusCode::FORBIDDEN, false),
            "refused: 403 Forbidden"
        );
        assert_eq!(
            result_of(StatusCode::BAD_GATEWAY, false),
            "failed: 502 Bad Gateway"
        );
    }

    #[test]
    fn query_strings_keep_the_filters() {
        let q = AuditQuery {
            user: Some("a b&c".into()),
            since: Some("2026-12-01T10:00".into()),
            until: Some(" ".into()),
            limit: None,
            offset: Some(50),
        };
        assert_eq!(
            query_string(&q),
            "?user=a%20b%26c&since=2026-12-01T10%3A00&offset=50"
        );
        assert_eq!(query_string(&AuditQuery::default()), "");
    }
}
