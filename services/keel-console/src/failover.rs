//! Failover: `/appliance/api/v1/failover...`, the *Failover* page and the
//! *Security › Inter-appliance key* page. keel-failover (CAP_NET_ADMIN, CAP_NET_RAW)
//! pairs, syncs and takes over; the console forwards over its local socket
//! (`/run/keel/failover/api.sock`, group keel-failover) and keeps keel-failover's
//! refusals with their status and message.
//!
//! On a backup the pages whose settings come from the primary's sync say so
//! ([`managed_by`]) instead of offering their forms. DNS swing settings are
//! node-local (keel-failover's `dns.json`, never in a sync): its form is offered
//! on both nodes.

use std::path::PathBuf;
use std::time::Duration;

use askama::Template;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use keel_api::{
    split_list, AutoTakeoverRequest, DnsSwingSettings, EstablishRequest, FailoverOverview,
    FailoverRole, PskBody, SyncReport,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::app::{JsonBody, Shared};
use crate::error::ApiError;
use crate::local_service::LocalService;
use crate::openapi::{routes, OpenApiRouter};

pub const PAGE: &str = "/appliance/failover";
pub const KEY_PAGE: &str = "/appliance/security/failover-key";

/// Establish reaches the peer over TLS and waits for its answer; sync carries the
/// configuration across. Both are bounded by keel-failover's own timeouts first.
const CALL_LIMIT: Duration = Duration::from_secs(60);
/// Other pages only ask whether this node is a backup: they do not wait long.
const PAGE_LIMIT: Duration = Duration::from_secs(2);

static FAILOVER: LocalService = LocalService::new(
    "failover",
    "failover service unavailable",
    |limit| format!("keel-failover did not answer within {} s", limit.as_secs()),
    |m| m,
);

/// Where keel-failover's local socket is (main's `--failover-socket`, tests).
pub fn set_socket(path: PathBuf) {
    FAILOVER.set_socket(path);
}

async fn call<B: Serialize, R: DeserializeOwned>(
    method: &str,
    path: &str,
    body: Option<&B>,
    limit: Duration,
) -> Result<R, ApiError> {
    FAILOVER.call(method, path, body, limit).await
}

async fn overview(limit: Duration) -> Result<FailoverOverview, ApiError> {
    call::<(), _>("GET", "/status", None, limit).await
}

/// How the peer is named to the admin: its id and where it is reached.
fn peer_name(o: &FailoverOverview) -> String {
    match &o.peer {
        Some(p) => format!("{} ({})", p.node_id, p.address),
        None => "the primary".into(),
    }
}

/// `Some(peer)` when this node is the backup of a pair: settings that the
/// primary's sync brings (console users, update settings, the shared address's
/// certificate) are then managed there. `None` when unpaired, primary, or
/// keel-failover is not running (nothing is hidden then).
pub fn backup_of(o: &FailoverOverview) -> Option<String> {
    match &o.engine {
        Some(e) if e.role == FailoverRole::Backup => Some(peer_name(o)),
        _ => None,
    }
}

/// [`backup_of`] for the other pages, asked with a short limit.
pub async fn managed_by() -> Option<String> {
    overview(PAGE_LIMIT).await.ok().as_ref().and_then(backup_of)
}

/// On a backup, why `ips` may not get a certificate assigned (or unassigned) here:
/// the shared addresses' certificates come with the primary's sync. `None` when
/// the change is this node's to make.
pub async fn shared_assignment_refused(ips: &[std::net::IpAddr]) -> Option<String> {
    if ips.is_empty() {
        return None;
    }
    let o = overview(PAGE_LIMIT).await.ok()?;
    let primary = backup_of(&o)?;
    let engine = o.engine.as_ref()?;
    let shared: Vec<std::net::IpAddr> = engine
        .shared_addresses
        .iter()
        .filter_map(|a| a.parse::<ipnetwork::IpNetwork>().ok())
        .map(|n| n.ip())
        .collect();
    let ip = ips.iter().find(|ip| shared.contains(ip))?;
    Some(format!(
        "the certificate of the shared address {ip} is managed by the primary {primary}: \
         assign it there, the sync brings it here"
    ))
}

// ---- JSON API ---------------------------------------------------------------------

#[utoipa::path(get, path = "/appliance/api/v1/failover", tag = "failover",
    operation_id = "failover_api_overview",
    summary = "Failover: this node, its peer, the takeover engine and the last sync",
    responses((status = 200, body = FailoverOverview), (status = 401, description = "No session or token"), (status = 503, description = "keel-failover not running")),
    security(("session" = []), ("token" = [])))]
async fn api_overview(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<FailoverOverview>, ApiError> {
    st.session(&headers).ok_or_else(ApiError::unauthorized)?;
    overview(CALL_LIMIT).await.map(Json)
}

#[utoipa::path(post, path = "/appliance/api/v1/failover/establish", tag = "failover",
    operation_id = "failover_api_establish",
    summary = "Establish relationship: pair with the peer, this node becomes the primary",
    request_body = EstablishRequest,
    responses((status = 200, body = FailoverOverview), (status = 400, description = "A malformed address, or a shared address given as a pairing address"),
        (status = 401), (status = 403),
        (status = 409, description = "Wrong inter-appliance key, incompatible version, or the peer is paired already"),
        (status = 502, description = "The peer did not answer"), (status = 503, description = "keel-failover not running")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_establish(
    State(st): State<Shared>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<EstablishRequest>,
) -> Result<Json<FailoverOverview>, ApiError> {
    st.api_session_for_change(&headers)?;
    call("POST", "/establish", Some(&body), CALL_LIMIT)
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/appliance/api/v1/failover/sync", tag = "failover",
    operation_id = "failover_api_sync",
    summary = "Sync now: push the configuration to the backup (primary only)",
    responses((status = 200, body = SyncReport), (status = 401), (status = 403),
        (status = 409, description = "Not the primary of a pair"), (status = 503, description = "keel-failover not running")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_sync(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<SyncReport>, ApiError> {
    st.api_session_for_change(&headers)?;
    call::<(), _>("POST", "/sync", None, CALL_LIMIT)
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/appliance/api/v1/failover/become-primary", tag = "failover",
    operation_id = "failover_api_become_primary",
    summary = "Become primary: take the shared addresses now",
    responses((status = 200, body = FailoverOverview), (status = 401), (status = 403),
        (status = 409, description = "Not paired"), (status = 503, description = "keel-failover not running")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_become_primary(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<FailoverOverview>, ApiError> {
    st.api_session_for_change(&headers)?;
    call::<(), _>("POST", "/become-primary", None, CALL_LIMIT)
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/appliance/api/v1/failover/break", tag = "failover",
    operation_id = "failover_api_break",
    summary = "Break relationship: this node stands alone and keeps its configuration",
    responses((status = 200, body = FailoverOverview), (status = 401), (status = 403),
        (status = 409, description = "Not paired"), (status = 503, description = "keel-failover not running")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_break(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<FailoverOverview>, ApiError> {
    st.api_session_for_change(&headers)?;
    call::<(), _>("POST", "/break", None, CALL_LIMIT)
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/appliance/api/v1/failover/auto-takeover", tag = "failover",
    operation_id = "failover_api_auto_takeover",
    summary = "Automatic takeover on or off",
    request_body = AutoTakeoverRequest,
    responses((status = 200, body = FailoverOverview), (status = 401), (status = 403),
        (status = 409, description = "Not paired"), (status = 503, description = "keel-failover not running")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_auto_takeover(
    State(st): State<Shared>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AutoTakeoverRequest>,
) -> Result<Json<FailoverOverview>, ApiError> {
    st.api_session_for_change(&headers)?;
    call("POST", "/auto-takeover", Some(&body), CALL_LIMIT)
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/appliance/api/v1/failover/psk", tag = "failover",
    operation_id = "failover_api_psk",
    summary = "Security › Inter-appliance key: the key (base64)",
    description = "A secret: refused (403) to roles that may not change anything, though it is a read.",
    responses((status = 200, body = PskBody), (status = 401), (status = 403, description = "The role may not see secrets"), (status = 503, description = "keel-failover not running")),
    security(("session" = []), ("token" = [])))]
async fn api_psk(State(st): State<Shared>, headers: HeaderMap) -> Result<Json<PskBody>, ApiError> {
    st.session(&headers).ok_or_else(ApiError::unauthorized)?;
    call::<(), _>("GET", "/psk", None, CALL_LIMIT)
        .await
        .map(Json)
}

#[utoipa::path(put, path = "/appliance/api/v1/failover/psk", tag = "failover",
    operation_id = "failover_api_put_psk",
    summary = "Security › Inter-appliance key: paste the other node's key",
    description = "Refused unless base64 of at least 32 bytes; the stored key is kept then.",
    request_body = PskBody,
    responses((status = 200, body = PskBody), (status = 400, description = "Not base64, or under 32 bytes"),
        (status = 401), (status = 403), (status = 503, description = "keel-failover not running")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_put_psk(
    State(st): State<Shared>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PskBody>,
) -> Result<Json<PskBody>, ApiError> {
    st.api_session_for_change(&headers)?;
    call("PUT", "/psk", Some(&body), CALL_LIMIT).await.map(Json)
}

#[utoipa::path(post, path = "/appliance/api/v1/failover/psk/generate", tag = "failover",
    operation_id = "failover_api_psk_generate",
    summary = "Security › Inter-appliance key: make a new key (the other node needs it too)",
    responses((status = 200, body = PskBody), (status = 401), (status = 403), (status = 503, description = "keel-failover not running")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_psk_generate(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<PskBody>, ApiError> {
    st.api_session_for_change(&headers)?;
    call::<(), _>("POST", "/psk/generate", None, CALL_LIMIT)
        .await
        .map(Json)
}

// ---- HTML: the Failover page ------------------------------------------------------

/// The takeover engine's view, ready to print.
pub struct EngineView {
    pub node_id: String,
    pub role: String,
    pub term: u64,
    pub holding: bool,
    pub auto_takeover: bool,
    pub interface: String,
    pub shared_addresses: String,
    pub peer_seen: String,
    pub peer_term: String,
    pub peer_holding: String,
    /// (what, count) of the heartbeat counters.
    pub counters: Vec<(&'static str, u64)>,
}

pub struct SyncView {
    pub at: String,
    pub direction: String,
    pub ok: bool,
    pub items: Vec<String>,
    pub error: String,
}

/// The *Establish relationship* form: as submitted, or pre-filled; errors stand
/// beside the field they are about.
#[derive(Default)]
pub struct EstablishForm {
    pub peer: String,
    pub reverse: String,
    /// One CIDR per line.
    pub shared: String,
    pub interface: String,
    pub peer_error: Option<String>,
    pub reverse_error: Option<String>,
    pub shared_error: Option<String>,
    pub interface_error: Option<String>,
    /// A refusal that is about no single field (wrong key, peer already paired, ...).
    pub error: Option<String>,
    /// Why nothing was pre-filled (no shared address in netd's configuration, or
    /// netd not answering); the page links to the network page then.
    pub prefill_note: Option<String>,
}

#[derive(Template)]
#[template(path = "failover.html")]
struct FailoverPage {
    csrf: String,
    /// For the base template (errors here stand beside their forms).
    error: Option<String>,
    notice: Option<String>,
    /// keel-failover not answering: why.
    unavailable: Option<String>,
    pair_port: u16,
    fingerprint: String,
    peer: Option<keel_api::FailoverPeer>,
    /// "Backup of <peer>" when this node is the backup.
    backup_of: Option<String>,
    engine: Option<EngineView>,
    last_sync: Option<SyncView>,
    establish: EstablishForm,
    /// An action's refusal, shown over the action buttons.
    action_error: Option<String>,
    /// The break button was pressed once: ask again.
    confirm_break: bool,
    /// The *DNS swing* section (`None` while keel-failover is not answering).
    dns: Option<DnsView>,
}

impl FailoverPage {
    fn paired(&self) -> bool {
        self.peer.is_some() || self.engine.is_some()
    }
}

fn engine_view(e: &keel_api::FailoverStatus) -> EngineView {
    let c = &e.counters;
    EngineView {
        node_id: e.node_id.clone(),
        role: e.role.to_string(),
        term: e.term,
        holding: e.holding,
        auto_takeover: e.auto_takeover,
        interface: e.interface.clone(),
        shared_addresses: e.shared_addresses.join(" "),
        peer_seen: match e.peer_last_seen_ms {
            Some(ms) => format!("{ms} ms ago"),
            None => "no heartbeat yet".into(),
        },
        peer_term: e.peer_term.map(|t| t.to_string()).unwrap_or_default(),
        peer_holding: match e.peer_holding {
            Some(true) => "yes".into(),
            Some(false) => "no".into(),
            None => String::new(),
        },
        counters: vec![
            ("sent", c.sent),
            ("send errors", c.send_errors),
            ("received", c.received),
            ("dropped: truncated", c.truncated),
            ("dropped: wrong version", c.wrong_version),
            ("dropped: bad MAC (wrong key?)", c.bad_mac),
            ("dropped: replayed", c.replayed),
            ("takeovers", c.takeovers),
            ("step-downs", c.step_downs),
            (
                "takeovers held off: address still answered",
                c.held_off_address_answered,
            ),
            ("isolated (check address silent)", c.isolated),
        ],
    }
}

fn sync_view(s: &SyncReport) -> SyncView {
    SyncView {
        at: s.at.clone(),
        direction: s.direction.clone(),
        ok: s.ok,
        items: s.items.clone(),
        error: s.error.clone().unwrap_or_default(),
    }
}

/// The establish form pre-filled from the addresses netd marks *shared*.
async fn prefilled() -> EstablishForm {
    let mut form = EstablishForm::default();
    match crate::net::shared_addresses().await {
        Ok(shared) if shared.is_empty() => {
            form.prefill_note = Some(
                "No address is marked shared in the network configuration yet: enter one on \
                 Networking › IP configuration (\"Shared IP for failover\"), or type it below."
                    .into(),
            )
        }
        Ok(shared) => {
            form.interface = shared[0].0.clone();
            form.shared = shared
                .iter()
                .map(|(_, a)| a.to_string())
                .collect::<Vec<_>>()
                .join("\n");
        }
        Err(e) => {
            form.prefill_note = Some(format!(
                "The shared addresses could not be read from the network configuration ({}); \
                 type them below.",
                e.message
            ))
        }
    }
    form
}

/// What a page render adds to keel-failover's state.
#[derive(Default)]
struct PageOpts {
    notice: Option<String>,
    action_error: Option<String>,
    /// The establish form as submitted (else pre-filled).
    establish: Option<EstablishForm>,
    confirm_break: bool,
    /// The DNS swing form as submitted (else from the settings).
    dns: Option<DnsForm>,
}

async fn page(status: StatusCode, csrf: String, opts: PageOpts) -> Response {
    let (o, unavailable) = match overview(CALL_LIMIT).await {
        Ok(o) => (Some(o), None),
        Err(e) => (None, Some(e.message)),
    };
    let paired = o
        .as_ref()
        .is_some_and(|o| o.peer.is_some() || o.engine.is_some());
    let establish = match opts.establish {
        Some(f) => f,
        // Only an unpaired node offers the form: read netd only then.
        None if o.is_some() && !paired => prefilled().await,
        None => EstablishForm::default(),
    };
    let dns = match &o {
        Some(o) => Some(dns_view(
            call::<(), _>("GET", "/dns", None, CALL_LIMIT).await,
            o,
            opts.dns,
        )),
        None => None,
    };
    let page = FailoverPage {
        csrf,
        error: None,
        notice: opts.notice,
        unavailable,
        pair_port: o.as_ref().map(|o| o.pair_port).unwrap_or_default(),
        fingerprint: o
            .as_ref()
            .map(|o| o.fingerprint.clone())
            .unwrap_or_default(),
        peer: o.as_ref().and_then(|o| o.peer.clone()),
        backup_of: o.as_ref().and_then(backup_of),
        engine: o.as_ref().and_then(|o| o.engine.as_ref()).map(engine_view),
        last_sync: o.as_ref().and_then(|o| o.last_sync.as_ref()).map(sync_view),
        establish,
        action_error: opts.action_error,
        confirm_break: opts.confirm_break,
        dns,
    };
    render(status, page)
}

fn render(status: StatusCode, page: impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

#[utoipa::path(get, path = "/appliance/failover", tag = "pages",
    operation_id = "failover_html_page",
    summary = "Failover",
    responses((status = 200, description = "The page", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page")),
    security(("session" = []), ("token" = [])))]
async fn html_page(State(st): State<Shared>, headers: HeaderMap) -> Response {
    let Some((_, session)) = st.session(&headers) else {
        return Redirect::to("/appliance/").into_response();
    };
    page(StatusCode::OK, session.csrf_token, PageOpts::default()).await
}

/// The session's CSRF token once a form's session and token were checked, or the
/// page to show instead.
#[allow(clippy::result_large_err)]
fn form_csrf(
    st: &crate::app::AppState,
    headers: &HeaderMap,
    token: &str,
) -> Result<String, Response> {
    crate::web::form_session(st, headers, token).map_err(|r| *r)?;
    Ok(st
        .session(headers)
        .map(|(_, s)| s.csrf_token)
        .unwrap_or_default())
}

/// A form's action, answered with `render(csrf, outcome)`: `action` runs only after
/// the session and CSRF token were checked (a future does nothing until awaited).
async fn form_action<O, F>(
    st: &crate::app::AppState,
    headers: &HeaderMap,
    token: &str,
    action: impl std::future::Future<Output = O>,
    render: impl FnOnce(String, O) -> F,
) -> Response
where
    F: std::future::Future<Output = Response>,
{
    match form_csrf(st, headers, token) {
        Ok(csrf) => render(csrf, action.await).await,
        Err(r) => r,
    }
}

/// A failover form's outcome on the Failover page.
async fn on_page(csrf: String, opts: PageOpts) -> Response {
    // The page carries the error text; the status says whether it worked.
    let status = if opts.action_error.is_some()
        || opts.establish.as_ref().is_some_and(|f| f.has_error())
        || opts.dns.as_ref().is_some_and(|f| f.has_error())
    {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    page(status, csrf, opts).await
}

impl EstablishForm {
    fn has_error(&self) -> bool {
        self.error.is_some()
            || self.peer_error.is_some()
            || self.reverse_error.is_some()
            || self.shared_error.is_some()
            || self.interface_error.is_some()
    }

    /// Puts keel-failover's refusal beside the field it names (its messages start
    /// with the field, as `peer: ...`), else over the form.
    fn refused(&mut self, message: String) {
        let field = message.split_once(':').map(|(f, _)| f.trim()).unwrap_or("");
        let field = field.split('[').next().unwrap_or(field);
        match field {
            "peer" => self.peer_error = Some(message),
            "reverse" => self.reverse_error = Some(message),
            "shared_addresses" => self.shared_error = Some(message),
            "interface" => self.interface_error = Some(message),
            _ => self.error = Some(message),
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct EstablishFields {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    peer: String,
    #[serde(default)]
    reverse: String,
    #[serde(default)]
    shared: String,
    #[serde(default)]
    interface: String,
}

#[utoipa::path(post, path = "/appliance/failover/establish", tag = "forms",
    operation_id = "failover_establish_submit",
    summary = "Failover: Establish relationship",
    description = "Refusals stand beside the field they are about.",
    request_body(content = EstablishFields, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The Failover page with the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything"),
        (status = 422, description = "The page with keel-failover's refusal", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn establish_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<EstablishFields>,
) -> Response {
    let mut form = EstablishForm {
        peer: f.peer.trim().to_owned(),
        reverse: f.reverse.trim().to_owned(),
        shared: f.shared.trim().to_owned(),
        interface: f.interface.trim().to_owned(),
        ..EstablishForm::default()
    };
    form_action(
        &st,
        &headers,
        &f.csrf,
        async {
            if form.peer.is_empty() {
                form.peer_error =
                    Some("the peer's pairing address is needed, e.g. 192.0.2.11:7947".into());
            }
            if form.reverse.is_empty() {
                form.reverse_error = Some(
                    "this node's pairing address as the peer reaches it is needed, e.g. \
                     192.0.2.10:7947"
                        .into(),
                );
            }
            if form.has_error() {
                return PageOpts {
                    establish: Some(form),
                    ..PageOpts::default()
                };
            }
            let req = EstablishRequest {
                peer: form.peer.clone(),
                reverse: form.reverse.clone(),
                shared_addresses: form
                    .shared
                    .split(|c: char| c.is_whitespace() || c == ',')
                    .filter(|w| !w.is_empty())
                    .map(str::to_owned)
                    .collect(),
                interface: form.interface.clone(),
            };
            match call::<_, FailoverOverview>("POST", "/establish", Some(&req), CALL_LIMIT).await {
                Ok(o) => PageOpts {
                    notice: Some(format!(
                        "Relationship established: this node is the primary, {} its backup.",
                        peer_name(&o)
                    )),
                    ..PageOpts::default()
                },
                Err(e) => {
                    form.refused(e.message);
                    PageOpts {
                        establish: Some(form),
                        ..PageOpts::default()
                    }
                }
            }
        },
        on_page,
    )
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ActionFields {
    #[serde(default)]
    csrf: String,
    /// The break's second step.
    #[serde(default)]
    confirm: String,
    /// The auto-takeover checkbox (absent: off).
    #[serde(default)]
    enabled: Option<String>,
}

#[utoipa::path(post, path = "/appliance/failover/sync", tag = "forms",
    operation_id = "failover_sync_submit",
    summary = "Failover: Sync now",
    request_body(content = ActionFields, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The Failover page with the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything"),
        (status = 422, description = "The page with keel-failover's refusal", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn sync_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<ActionFields>,
) -> Response {
    form_action(
        &st,
        &headers,
        &f.csrf,
        async {
            match call::<(), SyncReport>("POST", "/sync", None, CALL_LIMIT).await {
                Ok(r) if r.ok => PageOpts {
                    notice: Some(format!("Synced to the backup: {}.", r.items.join(", "))),
                    ..PageOpts::default()
                },
                Ok(r) => PageOpts {
                    action_error: Some(format!(
                        "Sync failed: {}",
                        r.error.unwrap_or_else(|| "no reason given".into())
                    )),
                    ..PageOpts::default()
                },
                Err(e) => PageOpts {
                    action_error: Some(format!("Sync failed: {}", e.message)),
                    ..PageOpts::default()
                },
            }
        },
        on_page,
    )
    .await
}

#[utoipa::path(post, path = "/appliance/failover/become-primary", tag = "forms",
    operation_id = "failover_become_primary_submit",
    summary = "Failover: Become primary",
    request_body(content = ActionFields, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The Failover page with the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything"),
        (status = 422, description = "The page with keel-failover's refusal", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn become_primary_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<ActionFields>,
) -> Response {
    form_action(
        &st,
        &headers,
        &f.csrf,
        async {
            match call::<(), FailoverOverview>("POST", "/become-primary", None, CALL_LIMIT).await {
                Ok(_) => PageOpts {
                    notice: Some(
                        "This node is the primary now and holds the shared addresses.".into(),
                    ),
                    ..PageOpts::default()
                },
                Err(e) => PageOpts {
                    action_error: Some(format!("Become primary failed: {}", e.message)),
                    ..PageOpts::default()
                },
            }
        },
        on_page,
    )
    .await
}

/// What the second step of *Break relationship* sends.
const BREAK_CONFIRMATION: &str = "break";

#[utoipa::path(post, path = "/appliance/failover/break", tag = "forms",
    operation_id = "failover_break_submit",
    summary = "Failover: Break relationship",
    description = "Asks first: the page comes back with the question, and only the second press \
        (`confirm=break`) breaks the relationship.",
    request_body(content = ActionFields, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The Failover page: the question, or the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything"),
        (status = 422, description = "The page with keel-failover's refusal", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn break_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<ActionFields>,
) -> Response {
    let confirmed = f.confirm == BREAK_CONFIRMATION;
    form_action(
        &st,
        &headers,
        &f.csrf,
        async {
            if !confirmed {
                return PageOpts {
                    confirm_break: true,
                    ..PageOpts::default()
                };
            }
            match call::<(), FailoverOverview>("POST", "/break", None, CALL_LIMIT).await {
                Ok(_) => PageOpts {
                    notice: Some(
                        "The relationship is broken: this node stands alone and keeps its \
                         configuration."
                            .into(),
                    ),
                    ..PageOpts::default()
                },
                Err(e) => PageOpts {
                    action_error: Some(format!("Break failed: {}", e.message)),
                    ..PageOpts::default()
                },
            }
        },
        on_page,
    )
    .await
}

#[utoipa::path(post, path = "/appliance/failover/auto-takeover", tag = "forms",
    operation_id = "failover_auto_takeover_submit",
    summary = "Failover: Automatic takeover on or off",
    description = "The `enabled` checkbox: present turns it on, absent off.",
    request_body(content = ActionFields, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The Failover page with the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything"),
        (status = 422, description = "The page with keel-failover's refusal", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn auto_takeover_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<ActionFields>,
) -> Response {
    let enabled = f.enabled.is_some();
    form_action(
        &st,
        &headers,
        &f.csrf,
        async {
            let req = AutoTakeoverRequest { enabled };
            match call::<_, FailoverOverview>("POST", "/auto-takeover", Some(&req), CALL_LIMIT)
                .await
            {
                Ok(_) => PageOpts {
                    notice: Some(if enabled {
                        "Automatic takeover is on.".into()
                    } else {
                        "Automatic takeover is off: only Become primary moves the shared \
                         addresses."
                            .into()
                    }),
                    ..PageOpts::default()
                },
                Err(e) => PageOpts {
                    action_error: Some(format!("Automatic takeover not changed: {}", e.message)),
                    ..PageOpts::default()
                },
            }
        },
        on_page,
    )
    .await
}

// ---- DNS swing: JSON API and the form on the Failover page --------------------------

#[utoipa::path(get, path = "/appliance/api/v1/failover/dns", tag = "failover",
    operation_id = "failover_api_dns",
    summary = "DNS swing: the settings (node-local; the overview's `dns_listening` says where it answers)",
    responses((status = 200, body = DnsSwingSettings), (status = 401), (status = 503, description = "keel-failover not running")),
    security(("session" = []), ("token" = [])))]
async fn api_dns(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<DnsSwingSettings>, ApiError> {
    st.session(&headers).ok_or_else(ApiError::unauthorized)?;
    call::<(), _>("GET", "/dns", None, CALL_LIMIT)
        .await
        .map(Json)
}

#[utoipa::path(put, path = "/appliance/api/v1/failover/dns", tag = "failover",
    operation_id = "failover_api_put_dns",
    summary = "DNS swing: replace the settings",
    description = "keel-failover checks them (the error names the field: `ttl: 0 s: 1-300 s ...`) and, \
        while its engine runs, rebinds the server at once; settings whose server cannot bind \
        are refused (`dns: ...`) and the old ones stay.",
    request_body = DnsSwingSettings,
    responses((status = 200, body = DnsSwingSettings),
        (status = 400, description = "A bad name, address, TTL or listen address, or a server that cannot bind"),
        (status = 401), (status = 403), (status = 503, description = "keel-failover not running")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_put_dns(
    State(st): State<Shared>,
    headers: HeaderMap,
    // Forwarded as given: keel-failover parses and checks it, and its refusal
    // names the field.
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Json<DnsSwingSettings>, ApiError> {
    st.api_session_for_change(&headers)?;
    call("PUT", "/dns", Some(&body), CALL_LIMIT).await.map(Json)
}

/// The fields of the *DNS swing* form, in page order.
const DNS_FIELDS: [&str; 6] = [
    "name",
    "ttl",
    "this_node",
    "peer_node",
    "nameservers",
    "listen",
];

/// The *DNS swing* form: as submitted (kept when refused), or from the settings.
/// Lists are text the admin types, comma or whitespace separated.
#[derive(Default)]
pub struct DnsForm {
    pub enabled: bool,
    pub name: String,
    pub ttl: String,
    pub this_node: String,
    pub peer_node: String,
    pub nameservers: String,
    pub listen: String,
    /// (field, refusal) for the field a refusal names; `error` for the rest.
    pub field_errors: Vec<(&'static str, String)>,
    pub error: Option<String>,
}

fn joined<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl DnsForm {
    fn of(s: &DnsSwingSettings) -> Self {
        Self {
            enabled: s.enabled,
            name: s.name.clone().unwrap_or_default(),
            ttl: s.ttl.to_string(),
            this_node: joined(&s.this_node),
            peer_node: joined(&s.peer_node),
            nameservers: joined(&s.nameservers),
            listen: joined(&s.listen),
            ..Self::default()
        }
    }

    /// The refusal of `field`, empty when there is none (for the template).
    pub fn problem(&self, field: &str) -> &str {
        self.field_errors
            .iter()
            .find(|(f, _)| *f == field)
            .map_or("", |(_, m)| m.as_str())
    }

    fn has_error(&self) -> bool {
        self.error.is_some() || !self.field_errors.is_empty()
    }

    /// Puts keel-failover's refusal beside the field it names: its messages start
    /// with it (`ttl: ...`, `this_node[1]: ...`, `listen: [0] ...`, or for a server
    /// that cannot bind `dns: listen 192.0.2.1:53 (udp): ...`).
    fn refused(&mut self, message: String) {
        let rest = message.strip_prefix("dns: ").unwrap_or(&message);
        let head: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        match DNS_FIELDS.iter().find(|f| **f == head) {
            Some(f) => self.field_errors.push((f, message)),
            None => self.error = Some(message),
        }
    }

    /// The request for keel-failover, built from the text as typed: it parses and
    /// checks every value (one set of rules and messages), except the TTL, which
    /// must be a number to travel as one. An empty TTL or listen list takes
    /// keel-failover's default (5 s; port 53 on every address). Err: (field, refusal).
    fn request(&self) -> Result<serde_json::Value, (&'static str, String)> {
        let mut v = serde_json::json!({
            "enabled": self.enabled,
            "name": Some(self.name.as_str()).filter(|n| !n.is_empty()),
            "this_node": split_list(&self.this_node),
            "peer_node": split_list(&self.peer_node),
            "nameservers": split_list(&self.nameservers),
        });
        if !self.ttl.is_empty() {
            let ttl: u32 = self.ttl.parse().map_err(|_| {
                (
                    "ttl",
                    format!("ttl: {:?} is not a number of seconds (1-300)", self.ttl),
                )
            })?;
            v["ttl"] = ttl.into();
        }
        let listen = split_list(&self.listen);
        if !listen.is_empty() {
            v["listen"] = listen.into();
        }
        Ok(v)
    }
}

/// The *DNS swing* section: the settings, whether the server answers, the form.
pub struct DnsView {
    /// Why the settings could not be read (the section shows no form then).
    pub unreadable: Option<String>,
    pub enabled: bool,
    /// Where the server answers now; empty: not answering.
    pub listening: String,
    /// Why it does not answer although it is on.
    pub silent_because: Option<&'static str>,
    pub form: DnsForm,
}

fn dns_view(
    settings: Result<DnsSwingSettings, ApiError>,
    o: &FailoverOverview,
    form: Option<DnsForm>,
) -> DnsView {
    let s = match settings {
        Ok(s) => s,
        Err(e) => {
            return DnsView {
                unreadable: Some(e.message),
                enabled: false,
                listening: String::new(),
                silent_because: None,
                form: form.unwrap_or_default(),
            }
        }
    };
    let silent_because = o.dns_server(&s).silent_because();
    DnsView {
        unreadable: None,
        enabled: s.enabled,
        listening: o.dns_listening.join(", "),
        silent_because,
        form: form.unwrap_or_else(|| DnsForm::of(&s)),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct DnsFields {
    #[serde(default)]
    csrf: String,
    /// The checkbox: present turns DNS swing on, absent off.
    #[serde(default)]
    enabled: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    ttl: String,
    /// This node's addresses, comma or whitespace separated.
    #[serde(default)]
    this_node: String,
    #[serde(default)]
    peer_node: String,
    #[serde(default)]
    nameservers: String,
    /// `ip:port` list; empty: port 53 on every address.
    #[serde(default)]
    listen: String,
}

#[utoipa::path(post, path = "/appliance/failover/dns", tag = "forms",
    operation_id = "failover_dns_submit",
    summary = "Failover: DNS swing settings",
    description = "Refusals stand beside the field they are about, the input kept.",
    request_body(content = DnsFields, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The Failover page with the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything"),
        (status = 422, description = "The page with the refusal and the input", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn dns_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<DnsFields>,
) -> Response {
    let mut form = DnsForm {
        enabled: f.enabled.is_some(),
        name: f.name.trim().to_owned(),
        ttl: f.ttl.trim().to_owned(),
        this_node: f.this_node.trim().to_owned(),
        peer_node: f.peer_node.trim().to_owned(),
        nameservers: f.nameservers.trim().to_owned(),
        listen: f.listen.trim().to_owned(),
        ..DnsForm::default()
    };
    form_action(
        &st,
        &headers,
        &f.csrf,
        async {
            let req = match form.request() {
                Ok(req) => req,
                Err(refusal) => {
                    form.field_errors.push(refusal);
                    return PageOpts {
                        dns: Some(form),
                        ..PageOpts::default()
                    };
                }
            };
            match call::<_, DnsSwingSettings>("PUT", "/dns", Some(&req), CALL_LIMIT).await {
                Ok(s) => PageOpts {
                    notice: Some(if s.enabled {
                        format!(
                            "DNS swing is on for {}.",
                            s.name.as_deref().unwrap_or_default()
                        )
                    } else {
                        "DNS swing is off: nothing answers DNS here.".into()
                    }),
                    ..PageOpts::default()
                },
                Err(e) => {
                    form.refused(e.message);
                    PageOpts {
                        dns: Some(form),
                        ..PageOpts::default()
                    }
                }
            }
        },
        on_page,
    )
    .await
}

// ---- HTML: Security › Inter-appliance key -----------------------------------------

#[derive(Template)]
#[template(path = "failover_key.html")]
struct KeyPage {
    csrf: String,
    error: Option<String>,
    notice: Option<String>,
    unavailable: Option<String>,
    /// The key as keel-failover holds it.
    psk: String,
    /// The pasted key as submitted (kept when refused).
    pasted: String,
    paste_error: Option<String>,
}

async fn key_page(status: StatusCode, csrf: String, opts: KeyOpts) -> Response {
    let (psk, unavailable) = match call::<(), PskBody>("GET", "/psk", None, CALL_LIMIT).await {
        Ok(b) => (b.psk, None),
        Err(e) => (String::new(), Some(e.message)),
    };
    render(
        status,
        KeyPage {
            csrf,
            error: None,
            notice: opts.notice,
            unavailable,
            psk,
            pasted: opts.pasted,
            paste_error: opts.paste_error,
        },
    )
}

#[derive(Default)]
struct KeyOpts {
    notice: Option<String>,
    pasted: String,
    paste_error: Option<String>,
}

async fn on_key_page(csrf: String, opts: KeyOpts) -> Response {
    let status = if opts.paste_error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    key_page(status, csrf, opts).await
}

#[utoipa::path(get, path = "/appliance/security/failover-key", tag = "pages",
    operation_id = "failover_key_html",
    summary = "Security › Inter-appliance key",
    description = "Shows a secret: refused (403) to roles that may not change anything.",
    responses((status = 200, description = "The page", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "The role may not see secrets", content_type = "text/html", body = String)),
    security(("session" = []), ("token" = [])))]
async fn key_html(State(st): State<Shared>, headers: HeaderMap) -> Response {
    let Some((_, session)) = st.session(&headers) else {
        return Redirect::to("/appliance/").into_response();
    };
    key_page(StatusCode::OK, session.csrf_token, KeyOpts::default()).await
}

#[derive(Deserialize, utoipa::ToSchema)]
struct KeyFields {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    psk: String,
}

#[utoipa::path(post, path = "/appliance/security/failover-key", tag = "forms",
    operation_id = "failover_key_submit",
    summary = "Security › Inter-appliance key: Save the pasted key",
    request_body(content = KeyFields, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page with the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything"),
        (status = 422, description = "The page with keel-failover's refusal", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn key_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<KeyFields>,
) -> Response {
    let pasted = f.psk.trim().to_owned();
    form_action(
        &st,
        &headers,
        &f.csrf,
        async {
            let body = PskBody {
                psk: pasted.clone(),
            };
            match call::<_, PskBody>("PUT", "/psk", Some(&body), CALL_LIMIT).await {
                Ok(_) => KeyOpts {
                    notice: Some(
                        "Key saved. The other node must hold the same key: paste it there too."
                            .into(),
                    ),
                    ..KeyOpts::default()
                },
                Err(e) => KeyOpts {
                    pasted,
                    paste_error: Some(format!("Key not saved: {}", e.message)),
                    ..KeyOpts::default()
                },
            }
        },
        on_key_page,
    )
    .await
}

#[utoipa::path(post, path = "/appliance/security/failover-key/generate", tag = "forms",
    operation_id = "failover_key_generate_submit",
    summary = "Security › Inter-appliance key: Generate a new key",
    request_body(content = KeyFields, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page with the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything"),
        (status = 422, description = "The page with keel-failover's refusal", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn key_generate_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<KeyFields>,
) -> Response {
    form_action(
        &st,
        &headers,
        &f.csrf,
        async {
            match call::<(), PskBody>("POST", "/psk/generate", None, CALL_LIMIT).await {
                Ok(_) => KeyOpts {
                    notice: Some(
                        "A new key was made. Copy it to the other node (Security › \
                         Inter-appliance key there): until both hold it they cannot pair, \
                         and a paired backup drops this node's heartbeats."
                            .into(),
                    ),
                    ..KeyOpts::default()
                },
                Err(e) => KeyOpts {
                    paste_error: Some(format!("No new key: {}", e.message)),
                    ..KeyOpts::default()
                },
            }
        },
        on_key_page,
    )
    .await
}

/// The failover routes, full paths (merged into the console's router).
pub fn router() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(api_overview))
        .routes(routes!(api_establish))
        .routes(routes!(api_sync))
        .routes(routes!(api_become_primary))
        .routes(routes!(api_break))
        .routes(routes!(api_auto_takeover))
        .routes(routes!(api_psk, api_put_psk))
        .routes(routes!(api_psk_generate))
        .routes(routes!(html_page))
        .routes(routes!(establish_submit))
        .routes(routes!(sync_submit))
        .routes(routes!(become_primary_submit))
        .routes(routes!(break_submit))
        .routes(routes!(auto_takeover_submit))
        .routes(routes!(api_dns, api_put_dns))
        .routes(routes!(dns_submit))
        .routes(routes!(key_html, key_submit))
        .routes(routes!(key_generate_submit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::{FailoverCounters, FailoverPeer, FailoverStatus};

    fn backup() -> FailoverOverview {
        FailoverOverview {
            pair_port: 7947,
            fingerprint: "ab".repeat(32),
            peer: Some(FailoverPeer {
                node_id: "keel-a".into(),
                address: "192.0.2.10:7947".into(),
                version: "0.3.0".into(),
                fingerprint: "cd".repeat(32),
            }),
            engine: Some(FailoverStatus {
                node_id: "keel-b".into(),
                role: FailoverRole::Backup,
                term: 7,
                holding: false,
                auto_takeover: true,
                interface: "eth0".into(),
                shared_addresses: vec!["192.0.2.100/24".into()],
                peer_last_seen_ms: Some(15),
                peer_term: Some(7),
                peer_holding: Some(true),
                counters: FailoverCounters {
                    received: 1234,
                    bad_mac: 5,
                    ..FailoverCounters::default()
                },
            }),
            last_sync: Some(SyncReport {
                at: "2026-12-01T10:00:00Z".into(),
                direction: "received".into(),
                ok: false,
                items: vec!["console users".into()],
                error: Some("the certificate did not verify".into()),
            }),
            dns_listening: vec![],
        }
    }

    fn render_page(o: &FailoverOverview, confirm_break: bool) -> String {
        FailoverPage {
            csrf: "tok".into(),
            error: None,
            notice: None,
            unavailable: None,
            pair_port: o.pair_port,
            fingerprint: o.fingerprint.clone(),
            peer: o.peer.clone(),
            backup_of: backup_of(o),
            engine: o.engine.as_ref().map(engine_view),
            last_sync: o.last_sync.as_ref().map(sync_view),
            establish: EstablishForm::default(),
            action_error: None,
            confirm_break,
            dns: None,
        }
        .render()
        .unwrap()
    }

    #[test]
    fn a_backup_page_shows_role_peer_counters_sync_and_actions() {
        let o = backup();
        assert_eq!(backup_of(&o).as_deref(), Some("keel-a (192.0.2.10:7947)"));
        let html = render_page(&o, false);
        for want in [
            "Backup of keel-a (192.0.2.10:7947)",
            "<strong>backup</strong>, term 7",
            "not held here",
            "<code>192.0.2.100/24</code> on eth0",
            "Keel 0.3.0",
            // People compare it with a browser's view: AB:CD:... (keel_certs).
            &["CD"; 32].join(":"),
            "15 ms ago",
            "<th>received</th><td>1234</td>",
            "<th>dropped: bad MAC (wrong key?)</th><td>5</td>",
            "The last sync failed (2026-12-01T10:00:00Z): the certificate did not verify",
            "action=\"/appliance/failover/become-primary\"",
            "name=\"enabled\" value=\"1\" checked",
            "Break relationship…",
        ] {
            assert!(html.contains(want), "{want:?} missing in:\n{html}");
        }
        // Only the primary pushes a sync; a paired node offers no establish form.
        assert!(!html.contains("action=\"/appliance/failover/sync\""));
        assert!(!html.contains("action=\"/appliance/failover/establish\""));
        assert!(!html.contains("name=\"confirm\""));
    }

    #[test]
    fn break_asks_before_it_is_sent() {
        let mut o = backup();
        o.engine.as_mut().unwrap().role = FailoverRole::Primary;
        assert_eq!(backup_of(&o), None);
        let html = render_page(&o, true);
        assert!(html.contains("Break the relationship?"), "{html}");
        assert!(html.contains("name=\"confirm\" value=\"break\""), "{html}");
        assert!(
            html.contains("action=\"/appliance/failover/sync\""),
            "{html}"
        );
        assert!(!html.contains("Backup of"), "{html}");
    }

    #[test]
    fn dns_refusals_go_beside_their_field_and_a_backup_edits_its_own() {
        let mut f = DnsForm::default();
        f.refused("dns: listen 10.77.0.250:5353 (udp): Cannot assign requested address".into());
        f.refused("this_node[1]: 127.0.0.1 cannot be published".into());
        f.refused("listen2: odd".into());
        assert!(f.problem("listen").contains("10.77.0.250"));
        assert!(f.problem("this_node").contains("127.0.0.1"));
        assert_eq!(f.problem("ttl"), "");
        assert_eq!(f.error.as_deref(), Some("listen2: odd"));
        // Node-local settings: a backup shows the form, and says why.
        let o = backup();
        let s = DnsSwingSettings {
            enabled: true,
            ..DnsSwingSettings::default()
        };
        let mut page = FailoverPage {
            csrf: "tok".into(),
            error: None,
            notice: None,
            unavailable: None,
            pair_port: o.pair_port,
            fingerprint: o.fingerprint.clone(),
            peer: o.peer.clone(),
            backup_of: backup_of(&o),
            engine: o.engine.as_ref().map(engine_view),
            last_sync: None,
            establish: EstablishForm::default(),
            action_error: None,
            confirm_break: false,
            dns: Some(dns_view(Ok(s), &o, None)),
        };
        let html = page.render().unwrap();
        assert!(
            html.contains("action=\"/appliance/failover/dns\""),
            "{html}"
        );
        assert!(html.contains("set here, on the backup, too"), "{html}");
        assert!(html.contains("not answering: the server stopped"), "{html}");
        page.dns = Some(dns_view(
            Err(ApiError::new(StatusCode::BAD_GATEWAY, "broken")),
            &o,
            None,
        ));
        let html = page.render().unwrap();
        assert!(html.contains("could not be read: broken"), "{html}");
        assert!(
            !html.contains("action=\"/appliance/failover/dns\""),
            "{html}"
        );
    }

    #[test]
    fn refusals_go_beside_the_field_they_name() {
        let mut f = EstablishForm::default();
        f.refused("peer: 10.0.0.300:7947 is not an address".into());
        f.refused("shared_addresses[1]: invalid address: x".into());
        f.refused("the peer has another key (wrong inter-appliance key)".into());
        assert!(f.peer_error.as_deref().unwrap().contains("10.0.0.300"));
        assert!(f
            .shared_error
            .as_deref()
            .unwrap()
            .contains("invalid address"));
        assert!(f.error.as_deref().unwrap().contains("another key"));
        assert!(f.reverse_error.is_none() && f.interface_error.is_none());
    }
}
