//! Routes of the console: HTML pages under `/appliance/`, JSON under
//! `/appliance/api/v1/`, and the root-only local API on the Unix socket.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keel_api::{Banner, LoginRequest, SessionGranted, SetupRequest, SetupState, Status};
use serde::de::DeserializeOwned;

use crate::auth::{Auth, AuthError, Session, Throttle};
use crate::error::ApiError;
use crate::openapi::{routes, OpenApiRouter};
use crate::status;

pub const SESSION_COOKIE: &str = "keel_session";
/// Request bodies above this are refused (413) before they are read whole.
pub const MAX_BODY: usize = 64 * 1024;

pub struct AppState {
    pub auth: Auth,
    pub cert: keel_certs::CertInfo,
    pub requests_dir: PathBuf,
    /// Mount point whose size the status reports (`/data` on the appliance).
    pub data_mount: PathBuf,
    /// The certificate store serving this console, set once by
    /// `certs::CertsState::new` (weak: the store's state holds this state).
    pub certs: std::sync::OnceLock<std::sync::Weak<crate::certs::CertsState>>,
    /// The last status computed (see `status::StatusCache`).
    pub status_cache: status::StatusCache,
    /// What the status reads live: addresses, boot state, the last answer.
    pub live: status::Live,
    pub tokens: crate::tokens::Tokens,
    pub audit: crate::audit::AuditLog,
    pub access: crate::access::Access,
}

pub type Shared = Arc<AppState>;

/// The client's address, put into every request by the TLS server.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

pub fn client_ip(req_ext: &axum::http::Extensions) -> IpAddr {
    req_ext
        .get::<ClientAddr>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED))
}

/// JSON body extractor whose rejections answer in the API's error format.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(ApiError::new(rejection.status(), rejection.body_text())),
        }
    }
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

pub fn session_cookie(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/appliance; Secure; HttpOnly; SameSite=Strict"
    ))
    .expect("hex token is a valid header")
}

/// A cross-site page must not drive the console: when a browser says where the
/// request comes from, it must be this host.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .strip_prefix("https://")
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

impl AppState {
    /// The certificate store serving this console, when it has one.
    pub fn cert_store(&self) -> Option<Arc<crate::certs::CertsState>> {
        self.certs.get().and_then(std::sync::Weak::upgrade)
    }

    /// The session behind a request: an API token when it carries
    /// `Authorization: Bearer` (then cookies are not looked at), else the session
    /// cookie. For a token the first element is the token's id.
    pub fn session(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        if headers.contains_key(header::AUTHORIZATION) {
            // Why a token is refused is answered by `tokens::credentials`.
            return crate::tokens::bearer_session(self, headers).ok();
        }
        let token = cookie(headers, SESSION_COOKIE)?;
        let s = self.auth.session(&token)?;
        Some((token, s))
    }

    /// Session plus CSRF header check for state-changing API calls.
    pub(crate) fn api_session_for_change(
        &self,
        headers: &HeaderMap,
    ) -> Result<(String, Session), ApiError> {
        let (token, session) = self.session(headers).ok_or_else(ApiError::unauthorized)?;
        let presented = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !session.csrf_matches(presented) || !same_origin(headers) {
            return Err(ApiError::csrf());
        }
        Ok((token, session))
    }

    pub fn status(&self) -> Status {
        self.live(self.status_cache.get(|| self.status_now()))
    }

    /// The status API's answer, encoded, if the cache holds a good status: cheap
    /// enough to make on the runtime's thread, and the very bytes of the last
    /// answer while nothing in it changed (a monitoring poll gets them).
    pub fn status_json_kept(&self) -> Option<axum::body::Bytes> {
        let (addresses_version, addresses) = self.live.addresses.current();
        let (boot_version, boot) = self.live.boot.current();
        let key = status::AnswerKey {
            status: self.status_cache.kept_serial()?,
            unix_second: status::unix_second_now(),
            uptime_seconds: status::uptime_now(),
            addresses: addresses_version,
            boot: boot_version,
        };
        if let Some(bytes) = self.live.answer(&key) {
            return Some(bytes);
        }
        // The very values the key names: reading them again would drain the
        // event sources a second time and could answer newer ones under this key.
        let status = Status {
            time: status::rfc3339(key.unix_second),
            uptime_seconds: key.uptime_seconds,
            boot,
            addresses,
            ..self.status_cache.kept()?
        };
        let bytes = axum::body::Bytes::from(serde_json::to_vec(&status).ok()?);
        self.live.keep_answer(key, bytes.clone());
        Some(bytes)
    }

    /// `status` with what changes every second read now.
    fn live(&self, status: Status) -> Status {
        Status {
            time: status::rfc3339(status::unix_second_now()),
            uptime_seconds: status::uptime_now(),
            // Written at boot and by a trial's end, by root: read again when its
            // directory says it changed.
            boot: self.live.boot.get(),
            // Changed by netd and keel-failover (a takeover) without the console:
            // the kernel's list, read again when the kernel announces a change.
            addresses: self.live.addresses.get(),
            ..status
        }
    }

    /// What `live` does not fill in (left at their defaults here).
    fn status_now(&self) -> Status {
        let data = status::filesystem_bytes(&self.data_mount);
        Status {
            version: status::running_version().to_owned(),
            slot: status::slot_from_cmdline(&status::read_trimmed("/proc/cmdline")),
            hostname: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
            uptime_seconds: 0,
            kernel: status::read_trimmed("/proc/sys/kernel/osrelease"),
            time: String::new(),
            root_readonly: status::root_readonly(
                &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
            ),
            addresses: Vec::new(),
            // What the TLS server serves by default now: an admin may have made
            // another certificate the default.
            certificate: match self.cert_store() {
                Some(cs) => crate::certs::served_default(&cs).summary(),
                None => keel_api::CertificateSummary {
                    sha256_fingerprint: self.cert.sha256_fingerprint.clone(),
                    subject: self.cert.subject.clone(),
                    not_after: self.cert.not_after.clone(),
                },
            },
            processes: status::keel_processes(),
            data_total_bytes: data.0,
            data_free_bytes: data.1,
            boot: None,
        }
    }

    pub fn banner(&self) -> Banner {
        let addrs = self.live.addresses.get();
        Banner {
            version: status::running_version().to_owned(),
            urls: status::reachable_ips(&addrs)
                .into_iter()
                .map(status::console_url)
                .collect(),
            setup_code: self.auth.setup_code(),
        }
    }

    /// Hands a power action to root (a systemd path unit watches the directory).
    pub fn request_power(&self, action: PowerAction) -> Result<(), ApiError> {
        let path = self.requests_dir.join(action.file_name());
        keel_core::store::write_atomic(&path, b"", 0o640).map_err(ApiError::internal)?;
        tracing::info!(action = action.file_name(), "power action requested");
        Ok(())
    }
}

/// What the console may ask root to do (see keelctl apply-requests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    Poweroff,
    Reboot,
    FactoryReset,
    FactoryResetPoweroff,
}

impl PowerAction {
    pub fn file_name(self) -> &'static str {
        match self {
            PowerAction::Poweroff => "poweroff",
            PowerAction::Reboot => "reboot",
            PowerAction::FactoryReset => "factory-reset",
            PowerAction::FactoryResetPoweroff => "factory-reset-poweroff",
        }
    }
}

/// The typed confirmation a factory reset needs, in the API and the HTML form.
pub const RESET_CONFIRMATION: &str = "RESET";

#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct FactoryResetRequest {
    #[serde(default)]
    pub confirm: String,
    #[serde(default)]
    pub power_off: bool,
}

impl FactoryResetRequest {
    pub fn action(&self) -> Result<PowerAction, ApiError> {
        if self.confirm != RESET_CONFIRMATION {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "a factory reset erases all configuration and keys: confirm with \
                     \"confirm\": \"{RESET_CONFIRMATION}\""
                ),
            ));
        }
        Ok(if self.power_off {
            PowerAction::FactoryResetPoweroff
        } else {
            PowerAction::FactoryReset
        })
    }
}

/// Runs the slow password hash off the async executor (`Auth` bounds how many
/// hashes run at once, so this cannot pile up argon2 work areas).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)
}

/// How a login or setup refusal answers: as `ApiError::from`, except that busy
/// password checks are the server's state (503), not the client's doing.
pub(crate) fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::RateLimited(Throttle::Busy) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        e => e.into(),
    }
}

fn granted(token: &str, session: &Session) -> Response {
    let mut resp = Json(SessionGranted {
        csrf_token: session.csrf_token.clone(),
    })
    .into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(token));
    resp
}

#[utoipa::path(get, path = "/health", tag = "system",
    summary = "Liveness: answers while the console serves",
    responses((status = 200, body = serde_json::Value)))]
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/setup", tag = "system",
    summary = "Whether first setup (the setup code from the serial console) is still due",
    responses((status = 200, body = SetupState)))]
async fn api_setup_state(State(st): State<Shared>) -> Json<SetupState> {
    Json(SetupState {
        setup_required: st.auth.setup_required(),
    })
}

#[utoipa::path(post, path = "/setup", tag = "system",
    summary = "First setup: the setup code and the admin password; answers a session",
    description = "Public until done. Same-origin only (a cross-site Origin is refused).",
    request_body = SetupRequest,
    responses((status = 200, body = serde_json::Value), (status = 400), (status = 403), (status = 409), (status = 429)))]
async fn api_setup(
    State(st): State<Shared>,
    req_ext: axum::http::Extensions,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SetupRequest>,
) -> Result<Response, ApiError> {
    if !same_origin(&headers) {
        return Err(ApiError::csrf());
    }
    let client = client_ip(&req_ext);
    let (token, session) =
        blocking(move || st.auth.setup(client, &body.setup_code, &body.password))
            .await?
            .map_err(auth_error)?;
    Ok(granted(&token, &session))
}

#[utoipa::path(post, path = "/login", tag = "system",
    summary = "Log in: a session cookie and the CSRF token for later changes",
    description = "Public. Rate-limited per account and per source address.",
    request_body = LoginRequest,
    responses((status = 200, body = serde_json::Value), (status = 401), (status = 403), (status = 429)))]
async fn api_login(
    State(st): State<Shared>,
    req_ext: axum::http::Extensions,
    headers: HeaderMap,
    JsonBody(body): JsonBody<LoginRequest>,
) -> Result<Response, ApiError> {
    if !same_origin(&headers) {
        return Err(ApiError::csrf());
    }
    let client = client_ip(&req_ext);
    crate::audit::attempted(&req_ext, &body.username);
    let (token, session) = blocking(move || {
        st.auth
            .login_with_code(client, &body.username, &body.password, body.code.as_deref())
    })
    .await?
    .map_err(auth_error)?;
    Ok(granted(&token, &session))
}

#[utoipa::path(post, path = "/logout", tag = "system",
    summary = "End this session",
    responses((status = 204), (status = 401), (status = 403)),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_logout(State(st): State<Shared>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    let (token, _) = st.api_session_for_change(&headers)?;
    st.auth.logout(&token);
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/status", tag = "system",
    summary = "Status › Basics and Health: version, slots, services, addresses, certificate",
    responses((status = 200, body = serde_json::Value), (status = 401)),
    security(("session" = []), ("token" = [])))]
async fn api_status(State(st): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    st.session(&headers).ok_or_else(ApiError::unauthorized)?;
    if let Some(json) = st.status_json_kept() {
        return Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response());
    }
    // Reads /proc, mountinfo, netlink and the certificate store: off the runtime's
    // threads, so handshakes and other requests go on meanwhile.
    Ok(Json(blocking(move || st.status()).await?).into_response())
}

async fn api_power(
    st: Shared,
    headers: HeaderMap,
    action: PowerAction,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    st.api_session_for_change(&headers)?;
    st.request_power(action)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"accepted": action.file_name()})),
    ))
}

#[utoipa::path(post, path = "/system/shutdown", tag = "system",
    summary = "Shut the appliance down",
    responses((status = 202, body = serde_json::Value), (status = 401), (status = 403)),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_shutdown(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    api_power(st, headers, PowerAction::Poweroff).await
}

#[utoipa::path(post, path = "/system/reboot", tag = "system",
    summary = "Restart the appliance",
    responses((status = 202, body = serde_json::Value), (status = 401), (status = 403)),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_reboot(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    api_power(st, headers, PowerAction::Reboot).await
}

#[utoipa::path(post, path = "/system/factory-reset", tag = "system",
    summary = "Erase /data and restart (or shut down) as from the factory",
    request_body = FactoryResetRequest,
    responses((status = 202, body = serde_json::Value), (status = 400), (status = 401), (status = 403)),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_factory_reset(
    State(st): State<Shared>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<FactoryResetRequest>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    st.api_session_for_change(&headers)?;
    let action = body.action()?;
    st.request_power(action)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"accepted": action.file_name()})),
    ))
}

/// Where the API is.
pub const API_BASE: &str = "/appliance/api/v1";

/// The top-level areas of the API, for its index: (name, an endpoint of it under
/// `API_BASE`, what it is). Keep in step with the routes below and the modules'
/// routers (tests/https.rs checks that every endpoint listed exists).
const API_AREAS: &[(&str, &str, &str)] = &[
    ("health", "/health", "liveness, no session needed"),
    (
        "setup",
        "/setup",
        "first setup with the code from the local console",
    ),
    ("login", "/login", "POST: session cookie and CSRF token"),
    ("logout", "/logout", "POST: ends the session"),
    (
        "status",
        "/status",
        "version, slot, addresses, certificate, processes",
    ),
    (
        "system",
        "/system/reboot",
        "POST /system/shutdown, /system/reboot, /system/factory-reset",
    ),
    (
        "net",
        "/net/config",
        "network configuration, commit-confirm (/net/pending, /net/confirm, /net/cancel)",
    ),
    ("time", "/time", "NTP check and manual time"),
    ("certs", "/certs", "console certificates"),
    ("update", "/update", "software updates and app bundles"),
    ("failover", "/failover", "failover pair"),
    ("users", "/users", "console accounts"),
    (
        "account",
        "/account/password",
        "the caller's own account: POST /account/password, /account/totp",
    ),
    ("tokens", "/tokens", "API tokens"),
    ("audit", "/audit", "audit log"),
    ("access", "/access", "console access policy"),
];

/// `GET /appliance/api/v1[/]`: what the API offers, for an admin who types the
/// base address. The product version only to a session (it helps an attacker
/// pick an exploit; the status page shows it to the logged-in).
#[utoipa::path(get, path = "/", tag = "system",
    summary = "What the API offers (the version only to a session)",
    responses((status = 200, body = serde_json::Value)))]
async fn api_index(State(st): State<Shared>, headers: HeaderMap) -> Json<serde_json::Value> {
    let areas: Vec<serde_json::Value> = API_AREAS
        .iter()
        .map(|(name, path, about)| {
            serde_json::json!({"name": name, "path": format!("{API_BASE}{path}"), "about": about})
        })
        .collect();
    let mut index = serde_json::json!({
        "name": "Keel appliance console API",
        "api_version": "v1",
        "base": API_BASE,
        "areas": areas,
        "documentation": {
            "reference": "docs/interfaces.md of the Keel source, section \"Console HTTP API\"",
            "openapi": crate::openapi::PATH,
        },
        "authentication": "POST /login gives a session cookie and a CSRF token; every \
            state-changing call sends the token in the X-CSRF-Token header",
    });
    if st.session(&headers).is_some() {
        index["product_version"] = status::running_version().into();
    }
    Json(index)
}

async fn api_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such API endpoint; GET {API_BASE} lists what the API offers"),
    )
}

/// Every HTTPS route but the certificate store's (tests without a store).
pub fn router(state: Shared) -> Router {
    router_with(state, OpenApiRouter::new())
}

/// The OpenAPI document of every HTTPS route (`extra`: see `router_with`).
pub fn document(state: Shared, extra: OpenApiRouter) -> utoipa::openapi::OpenApi {
    crate::openapi::document(&all_routes(state, extra).split_for_parts().1)
}

fn all_routes(state: Shared, extra: OpenApiRouter) -> OpenApiRouter {
    let api = OpenApiRouter::new()
        .routes(routes!(api_index))
        .routes(routes!(health))
        .routes(routes!(api_setup_state, api_setup))
        .routes(routes!(api_login))
        .routes(routes!(api_logout))
        .routes(routes!(api_status))
        .routes(routes!(api_shutdown))
        .routes(routes!(api_reboot))
        .routes(routes!(api_factory_reset))
        .fallback(api_not_found);
    OpenApiRouter::new()
        // Aliases, not routes of their own: the bare host, and the API base with a
        // slash (the nested "/" above is the base without one).
        .route("/", get(|| async { Redirect::permanent("/appliance/") }))
        .route("/appliance/api/v1/", get(api_index))
        .nest("/appliance/api/v1", api)
        .merge(crate::web::router())
        .merge(crate::time::router())
        .merge(crate::net::router())
        .merge(crate::update::router())
        .merge(crate::failover::router())
        .merge(crate::users::router())
        .merge(crate::tokens::router())
        .merge(crate::audit::router())
        .merge(crate::access::router())
        .with_state(state)
        .merge(extra)
}

/// Every HTTPS route, with `extra` (routes over their own state: the certificate
/// store, `certs::routes`) behind the same layers: source filter, size limit, audit
/// log, role gate and token check cover every route alike. The OpenAPI document
/// of exactly these routes is served at `openapi::PATH`.
pub fn router_with(state: Shared, extra: OpenApiRouter) -> Router {
    let (router, operations) = all_routes(state.clone(), extra).split_for_parts();
    router
        .merge(crate::openapi::route(state.clone(), operations))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api_changes_need_credentials,
        ))
        // Outermost last: the source filter and size limit run first, the audit
        // log sees what the role gate refused.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::tokens::credentials,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::users::role_gate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            fresh_status_after_changes,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::audit::record,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::access::source_filter,
        ))
        .layer(axum::middleware::map_response(security_headers))
}

/// The API calls anyone may make: first setup and login (both same-origin only).
const PUBLIC_API_CHANGES: &[&str] = &["/appliance/api/v1/setup", "/appliance/api/v1/login"];

/// Every other state-changing JSON API call is refused here, before its handler
/// reads the body, without a session or token (401) or with a session but no
/// matching CSRF token (403): the answer does not depend on the body, and a new
/// route cannot forget the check (its handler checks again).
async fn api_changes_need_credentials(
    State(st): State<Shared>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let changes = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if changes
        && path.starts_with(API_BASE)
        && !PUBLIC_API_CHANGES.contains(&path.trim_end_matches('/'))
    {
        if let Err(e) = st.api_session_for_change(req.headers()) {
            return e.into_response();
        }
    }
    next.run(req).await
}

/// After a state-changing request the next status is computed anew: the admin
/// who just assigned a certificate sees it at once.
async fn fresh_status_after_changes(
    State(st): State<Shared>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let changes = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let resp = next.run(req).await;
    if changes {
        st.status_cache.invalidate();
    }
    resp
}

/// Bodies up to this size are read and dropped before answering 413, so a client
/// that is still sending gets the answer rather than a reset connection.
const DRAIN_LIMIT: u64 = 8 * 1024 * 1024;

async fn refuse_oversized(req: Request, next: axum::middleware::Next) -> Response {
    use http_body_util::BodyExt;
    // A bundle upload streams up to 1 GiB: those routes keep a limit of their own.
    let path = req.uri().path();
    if crate::update::own_body_limit(path) || crate::certs::own_body_limit(path) {
        return next.run(req).await;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > MAX_BODY as u64 => {
            if len <= DRAIN_LIMIT {
                let mut body = req.into_body();
                while let Some(Ok(_)) = body.frame().await {}
            }
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body of {len} bytes is over the limit of {MAX_BODY} bytes"),
            )
            .into_response()
        }
        _ => next.run(req).await,
    }
}

/// The console's content policy: its own stylesheet and nothing else (no script,
/// no inline style, no framing, forms only to itself). A page that gains a script
/// file adds `script-src 'self'` here — never inline script.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; \
     img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// On every HTTPS answer (pages, API, errors, the stylesheet). Cache-Control is
/// `no-store` unless the handler chose otherwise (the static stylesheet).
pub async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    // Not `no-referrer`: under it a browser sends `Origin: null` with the console's
    // own form posts, which the same-origin check must then refuse. `same-origin`
    // still tells other sites nothing.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// Plain HTTP: everything moves to HTTPS on the same host and path.
pub fn redirect_router() -> Router {
    Router::new().fallback(|headers: HeaderMap, uri: axum::http::Uri| async move {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
            .map(|a| a.host().to_owned())
            .unwrap_or_else(|| "localhost".into());
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/appliance/");
        Redirect::permanent(&format!("https://{host}{path}"))
    })
}

/// Root-only local API (socket mode 0600) for keelctl on the box.
pub fn local_router(state: Shared) -> Router {
    Router::new()
        .route(
            "/status",
            get(|State(st): State<Shared>| async move { Json(st.status()) }),
        )
        .route(
            "/banner",
            get(|State(st): State<Shared>| async move { Json(st.banner()) }),
        )
        .route(
            "/system/shutdown",
            post(|State(st): State<Shared>| async move {
                st.request_power(PowerAction::Poweroff)
                    .map(|_| StatusCode::ACCEPTED)
            }),
        )
        .route(
            "/system/reboot",
            post(|State(st): State<Shared>| async move {
                st.request_power(PowerAction::Reboot)
                    .map(|_| StatusCode::ACCEPTED)
            }),
        )
        .route("/admin/reset-password", post(local_reset_password))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The local console menu's "Reset the admin password": the password is gone, every
/// session ends, and a new setup code appears on the local console (`/banner`).
async fn local_reset_password(State(st): State<Shared>) -> Result<Json<SetupState>, ApiError> {
    st.auth.reset_admin_password()?;
    Ok(Json(SetupState {
        setup_required: true,
    }))
}
