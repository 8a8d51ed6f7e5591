//! Console access policy (`access.json` in the console's data directory, 0640):
//! allowed source networks, minimum TLS version, cipher policy, session lifetimes.
//! Loaded at start and applied at once on every change: the source filter reads it
//! per request, sessions through `Auth::set_session_limits`, TLS through the
//! resolver's `TlsPolicy` (new handshakes; open connections keep theirs).
//!
//! 127.0.0.1 and ::1 are always allowed — exactly those two, not all of 127/8 — so
//! the appliance's own tools keep working whatever the list says (and a test can
//! prove the filter from 127.0.0.2). A change that would refuse the client making
//! it is itself refused, naming the client's address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use askama::Template;
use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use ipnetwork::IpNetwork;
use keel_api::{AccessPolicy, AccessView, CipherPolicy, MinTlsVersion};
use keel_core::format::FileFormat;
use serde::Deserialize;

use crate::app::{self, JsonBody, Shared};
use crate::auth::{Auth, SessionLimits};
use crate::error::ApiError;
use crate::openapi::{routes, OpenApiRouter};
use crate::tls::{CertResolver, TlsPolicy};

/// `access.json`, format 1.
pub const ACCESS_FILE: FileFormat = FileFormat::first("console access policy");
const FILE_NAME: &str = "access.json";
/// More would make every request's check and the page unwieldy.
const MAX_NETWORKS: usize = 64;

/// What is wrong with a submitted policy, per field (the page shows each beside
/// its field; the API answers with the first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyErrors {
    pub allowed_networks: Option<String>,
    pub session_idle_minutes: Option<String>,
    pub session_lifetime_hours: Option<String>,
}

impl PolicyErrors {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn first(&self) -> String {
        [
            ("allowed_networks", &self.allowed_networks),
            ("session_idle_minutes", &self.session_idle_minutes),
            ("session_lifetime_hours", &self.session_lifetime_hours),
        ]
        .into_iter()
        .find_map(|(k, v)| v.as_ref().map(|m| format!("{k}: {m}")))
        .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{}", .0.first())]
    Invalid(PolicyErrors),
    #[error(
        "this change would lock you out: your address {0} is not in the allowed networks \
         (add {0} or a network holding it, or make the change from an allowed address)"
    )]
    LockOut(IpAddr),
    #[error("cannot store the access policy: {0}")]
    Store(String),
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        let status = match e {
            AccessError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AccessError::LockOut(_) => StatusCode::CONFLICT,
            AccessError::Store(_) => return ApiError::internal(e),
        };
        ApiError::new(status, e.to_string())
    }
}

/// One network entry: CIDR or a bare address (one host), canonical form
/// (host bits cleared). IPv4-mapped IPv6 networks are refused: clients arrive
/// canonicalised to IPv4, so such an entry would never match.
fn parse_network(s: &str) -> Result<IpNetwork, String> {
    let net: IpNetwork = s.parse().map_err(|_| {
        format!("{s} is not a network (write it as 192.0.2.0/24, 2001:db8::/32 or one address)")
    })?;
    if let IpNetwork::V6(v6) = net {
        if v6.ip().to_ipv4_mapped().is_some() {
            return Err(format!("{s}: write IPv4 networks in IPv4 form"));
        }
    }
    IpNetwork::new(net.network(), net.prefix()).map_err(|e| format!("{s}: {e}"))
}

/// The networks of a policy, or what is wrong with each field.
pub fn validate(p: &AccessPolicy) -> Result<Vec<IpNetwork>, PolicyErrors> {
    let mut errors = PolicyErrors::default();
    let mut nets = Vec::new();
    let mut bad = Vec::new();
    for s in p.allowed_networks.iter().map(|s| s.trim()) {
        match parse_network(s) {
            Ok(n) if !nets.contains(&n) => nets.push(n),
            Ok(_) => {}
            Err(e) => bad.push(e),
        }
    }
    if !bad.is_empty() {
        errors.allowed_networks = Some(bad.join("; "));
    } else if nets.len() > MAX_NETWORKS {
        errors.allowed_networks = Some(format!("at most {MAX_NETWORKS} networks"));
    }
    let idle = keel_api::SESSION_IDLE_MINUTES;
    if !idle.contains(&p.session_idle_minutes) {
        errors.session_idle_minutes = Some(format!(
            "{} minutes is outside {}–{}",
            p.session_idle_minutes,
            idle.start(),
            idle.end()
        ));
    }
    let life = keel_api::SESSION_LIFETIME_HOURS;
    if !life.contains(&p.session_lifetime_hours) {
        errors.session_lifetime_hours = Some(format!(
            "{} hours is outside {}–{}",
            p.session_lifetime_hours,
            life.start(),
            life.end()
        ));
    }
    if errors.is_empty() {
        Ok(nets)
    } else {
        Err(errors)
    }
}

/// Whether `networks` let `client` in (loopback's two addresses always).
pub fn allows(networks: &[IpNetwork], client: IpAddr) -> bool {
    let client = client.to_canonical();
    client == IpAddr::V4(Ipv4Addr::LOCALHOST)
        || client == IpAddr::V6(Ipv6Addr::LOCALHOST)
        || networks.is_empty()
        || networks.iter().any(|n| n.contains(client))
}

fn session_limits(p: &AccessPolicy) -> SessionLimits {
    SessionLimits {
        idle: Duration::from_secs(u64::from(p.session_idle_minutes) * 60),
        max: Duration::from_secs(u64::from(p.session_lifetime_hours) * 3600),
    }
}

fn tls_policy(p: &AccessPolicy) -> TlsPolicy {
    TlsPolicy {
        min_version: p.min_tls_version,
        ciphers: p.cipher_policy,
    }
}

struct Current {
    policy: AccessPolicy,
    networks: Vec<IpNetwork>,
}

pub struct Access {
    path: PathBuf,
    current: RwLock<Arc<Current>>,
    /// Why the stored policy could not be used at start (the defaults are in force
    /// until the next save; the page says so).
    load_error: Option<String>,
    tls: OnceLock<Arc<CertResolver>>,
}

impl Access {
    /// Reads `dir/access.json`. A missing file is the defaults; a damaged one is
    /// logged, shown on the page, and left on disk until the admin saves.
    pub fn open(dir: impl Into<PathBuf>) -> Self {
        let path = dir.into().join(FILE_NAME);
        let loaded = ACCESS_FILE
            .read::<AccessPolicy>(&path)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                let p = p.unwrap_or_default();
                validate(&p)
                    .map(|n| (p, n))
                    .map_err(|e| format!("{}: {}", path.display(), e.first()))
            });
        let (policy, networks, load_error) = match loaded {
            Ok((p, n)) => (p, n, None),
            Err(e) => {
                tracing::error!("console access policy: {e}; using the defaults");
                (AccessPolicy::default(), Vec::new(), Some(e))
            }
        };
        Self {
            path,
            current: RwLock::new(Arc::new(Current { policy, networks })),
            load_error,
            tls: OnceLock::new(),
        }
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn policy(&self) -> AccessPolicy {
        self.current().policy.clone()
    }

    pub fn allows(&self, client: IpAddr) -> bool {
        allows(&self.current().networks, client)
    }

    /// Puts the policy in force on `auth` and, from now on, on `resolver` (called
    /// once at start).
    pub fn apply_at_start(&self, auth: &Auth, resolver: Option<Arc<CertResolver>>) {
        let p = self.policy();
        auth.set_session_limits(session_limits(&p));
        if let Some(r) = resolver {
            r.set_policy(tls_policy(&p));
            let _ = self.tls.set(r);
        }
    }

    /// Checks, stores and applies a new policy asked for by `client`.
    pub fn update(
        &self,
        policy: AccessPolicy,
        client: IpAddr,
        auth: &Auth,
    ) -> Result<AccessPolicy, AccessError> {
        let networks = validate(&policy).map_err(AccessError::Invalid)?;
        if !allows(&networks, client) {
            return Err(AccessError::LockOut(client.to_canonical()));
        }
        let policy = AccessPolicy {
            allowed_networks: networks.iter().map(|n| n.to_string()).collect(),
            ..policy
        };
        // One writer at a time: the lock is held over the write, so the file and
        // what is in force cannot disagree.
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        ACCESS_FILE
            .write(&self.path, &policy, 0o640)
            .map_err(|e| AccessError::Store(e.to_string()))?;
        *cur = Arc::new(Current {
            policy: policy.clone(),
            networks,
        });
        drop(cur);
        auth.set_session_limits(session_limits(&policy));
        if let Some(r) = self.tls.get() {
            r.set_policy(tls_policy(&policy));
        }
        tracing::info!(
            networks = policy.allowed_networks.len(),
            min_tls = policy.min_tls_version.as_str(),
            ciphers = policy.cipher_policy.as_str(),
            idle_min = policy.session_idle_minutes,
            lifetime_h = policy.session_lifetime_hours,
            "console access policy changed"
        );
        Ok(policy)
    }

    fn view(&self, client: IpAddr) -> AccessView {
        let policy = self.policy();
        AccessView {
            cipher_suites: tls_policy(&policy).suite_names(),
            policy,
            client_address: client.to_canonical().to_string(),
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct DeniedPage {
    heading: String,
    text: String,
    error: Option<String>,
}

/// Refuses clients outside the allowed source networks, before anything else
/// looks at the request.
pub async fn source_filter(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let client = app::client_ip(req.extensions()).to_canonical();
    if st.access.allows(client) {
        return next.run(req).await;
    }
    tracing::debug!(%client, "refused by the console access policy");
    let text = format!(
        "Your address {client} is not allowed to reach this console. An administrator can \
         allow it under Security › Console access."
    );
    if req.uri().path().starts_with("/appliance/api/") {
        return ApiError::new(StatusCode::FORBIDDEN, text).into_response();
    }
    let page = DeniedPage {
        heading: "Access refused".into(),
        text,
        error: None,
    };
    match page.render() {
        Ok(html) => (StatusCode::FORBIDDEN, Html(html)).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

#[utoipa::path(get, path = "/appliance/api/v1/access", tag = "access",
    summary = "Security › Console access: the policy, the caller's address and the cipher suites offered",
    responses((status = 200, body = AccessView), (status = 401, description = "No session or token")),
    security(("session" = []), ("token" = [])))]
async fn api_get(
    State(st): State<Shared>,
    ext: axum::http::Extensions,
    headers: HeaderMap,
) -> Result<Json<AccessView>, ApiError> {
    st.session(&headers).ok_or_else(ApiError::unauthorized)?;
    Ok(Json(st.access.view(app::client_ip(&ext))))
}

#[utoipa::path(put, path = "/appliance/api/v1/access", tag = "access",
    summary = "Replace the console access policy",
    description = "In force at once: the source filter for every request, the session limits \
        for every session, TLS for new connections. A policy whose networks leave out the \
        caller's own address is refused (409); 127.0.0.1 and ::1 are always allowed.",
    request_body = AccessPolicy,
    responses((status = 200, body = AccessView),
        (status = 400, description = "Not JSON"),
        (status = 401, description = "No session or token"),
        (status = 403, description = "CSRF token missing or wrong, or a role that may not change anything"),
        (status = 409, description = "The policy would lock the caller out"),
        (status = 422, description = "A network or a session limit out of range (named)")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_put(
    State(st): State<Shared>,
    ext: axum::http::Extensions,
    headers: HeaderMap,
    JsonBody(policy): JsonBody<AccessPolicy>,
) -> Result<Json<AccessView>, ApiError> {
    st.api_session_for_change(&headers)?;
    let client = app::client_ip(&ext);
    st.access.update(policy, client, &st.auth)?;
    Ok(Json(st.access.view(client)))
}

/// The form as typed (kept as text, so a refused value comes back unchanged).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
struct AccessForm {
    #[serde(default)]
    csrf: String,
    /// One network per line (commas and spaces separate too).
    #[serde(default)]
    allowed_networks: String,
    #[serde(default)]
    min_tls_version: String,
    #[serde(default)]
    cipher_policy: String,
    #[serde(default)]
    session_idle_minutes: String,
    #[serde(default)]
    session_lifetime_hours: String,
}

impl AccessForm {
    fn of(p: &AccessPolicy) -> Self {
        Self {
            csrf: String::new(),
            allowed_networks: p.allowed_networks.join("\n"),
            min_tls_version: p.min_tls_version.as_str().into(),
            cipher_policy: p.cipher_policy.as_str().into(),
            session_idle_minutes: p.session_idle_minutes.to_string(),
            session_lifetime_hours: p.session_lifetime_hours.to_string(),
        }
    }

    /// The policy it asks for; a number that is none is reported beside its field.
    fn policy(&self) -> Result<AccessPolicy, PolicyErrors> {
        let mut errors = PolicyErrors::default();
        let number = |s: &str, unit: &str, slot: &mut Option<String>| {
            s.trim().parse::<u32>().unwrap_or_else(|_| {
                *slot = Some(format!("\"{}\" is not a number of {unit}", s.trim()));
                0
            })
        };
        let idle = number(
            &self.session_idle_minutes,
            "minutes",
            &mut errors.session_idle_minutes,
        );
        let lifetime = number(
            &self.session_lifetime_hours,
            "hours",
            &mut errors.session_lifetime_hours,
        );
        let policy = AccessPolicy {
            allowed_networks: self
                .allowed_networks
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            min_tls_version: if self.min_tls_version == "1.3" {
                MinTlsVersion::Tls13
            } else {
                MinTlsVersion::Tls12
            },
            cipher_policy: if self.cipher_policy == "strict" {
                CipherPolicy::Strict
            } else {
                CipherPolicy::Default
            },
            session_idle_minutes: idle,
            session_lifetime_hours: lifetime,
        };
        // Range checks only where the number parsed (one message per field).
        if let Err(e) = validate(&policy) {
            errors.allowed_networks = errors.allowed_networks.or(e.allowed_networks);
            if errors.session_idle_minutes.is_none() {
                errors.session_idle_minutes = e.session_idle_minutes;
            }
            if errors.session_lifetime_hours.is_none() {
                errors.session_lifetime_hours = e.session_lifetime_hours;
            }
        }
        if errors.is_empty() {
            Ok(policy)
        } else {
            Err(errors)
        }
    }
}

#[derive(Template)]
#[template(path = "access.html")]
struct AccessPage {
    csrf: String,
    /// For the base template (errors here stand beside their fields).
    error: Option<String>,
    notice: Option<String>,
    load_error: Option<String>,
    form: AccessForm,
    errors: PolicyErrors,
    client: String,
    suites: Vec<String>,
}

fn render_page(status: StatusCode, page: AccessPage) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

#[utoipa::path(get, path = "/appliance/security/access", tag = "pages",
    summary = "Security › Console access",
    responses((status = 200, description = "The page", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page")),
    security(("session" = []), ("token" = [])))]
async fn page(
    State(st): State<Shared>,
    ext: axum::http::Extensions,
    headers: HeaderMap,
) -> Response {
    let Some((_, session)) = st.session(&headers) else {
        return Redirect::to("/appliance/").into_response();
    };
    let client = app::client_ip(&ext);
    let view = st.access.view(client);
    render_page(
        StatusCode::OK,
        AccessPage {
            csrf: session.csrf_token,
            error: None,
            notice: None,
            load_error: st.access.load_error.clone(),
            form: AccessForm::of(&view.policy),
            errors: PolicyErrors::default(),
            client: view.client_address,
            suites: view.cipher_suites,
        },
    )
}

#[utoipa::path(post, path = "/appliance/security/access", tag = "forms",
    summary = "Security › Console access: Save",
    description = "In force at once, as for PUT /appliance/api/v1/access; a policy that would \
        lock out the address the form comes from is refused.",
    request_body(content = AccessForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page, saved", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or a role that may not change anything"),
        (status = 409, description = "The page: the policy would lock this address out", content_type = "text/html", body = String),
        (status = 422, description = "The page with the reasons beside their fields", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn submit(
    State(st): State<Shared>,
    ext: axum::http::Extensions,
    headers: HeaderMap,
    Form(form): Form<AccessForm>,
) -> Response {
    if let Err(resp) = crate::web::form_session(&st, &headers, &form.csrf) {
        return *resp;
    }
    let csrf = form.csrf.clone();
    let client = app::client_ip(&ext);
    let result = form
        .policy()
        .map_err(AccessError::Invalid)
        .and_then(|p| st.access.update(p, client, &st.auth));
    let (status, notice, errors, error, form) = match result {
        Ok(p) => (
            StatusCode::OK,
            Some("Saved: in force for new connections and every session now.".to_owned()),
            PolicyErrors::default(),
            None,
            AccessForm::of(&p),
        ),
        Err(AccessError::Invalid(errors)) => {
            (StatusCode::UNPROCESSABLE_ENTITY, None, errors, None, form)
        }
        Err(e @ AccessError::LockOut(_)) => {
            let errors = PolicyErrors {
                allowed_networks: Some(e.to_string()),
                ..Default::default()
            };
            (StatusCode::CONFLICT, None, errors, None, form)
        }
        Err(e) => {
            let status = ApiError::from(e);
            (
                status.status,
                None,
                PolicyErrors::default(),
                Some(status.message),
                form,
            )
        }
    };
    let view = st.access.view(client);
    render_page(
        status,
        AccessPage {
            csrf,
            error,
            notice,
            load_error: st.access.load_error.clone(),
            form,
            errors,
            client: view.client_address,
            suites: view.cipher_suites,
        },
    )
}

pub fn router() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(api_get, api_put))
        .routes(routes!(page, submit))
        .merge(crate::layout::router())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_loopback() {
        let p = AccessPolicy {
            allowed_networks: vec!["10.1.2.3/8".into(), "2001:db8::1".into()],
            ..Default::default()
        };
        let nets = validate(&p).unwrap();
        assert_eq!(nets[0].to_string(), "10.0.0.0/8");
        assert_eq!(nets[1].to_string(), "2001:db8::1/128");
        assert!(allows(&nets, "10.9.9.9".parse().unwrap()));
        // IPv4-mapped clients are matched as IPv4.
        assert!(allows(&nets, "::ffff:10.9.9.9".parse().unwrap()));
        assert!(!allows(&nets, "192.0.2.1".parse().unwrap()));
        assert!(allows(&nets, "127.0.0.1".parse().unwrap()));
        assert!(allows(&nets, "::1".parse().unwrap()));
        assert!(!allows(&nets, "127.0.0.2".parse().unwrap()));
        assert!(allows(&[], "192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn refusals_name_the_field() {
        let p = AccessPolicy {
            allowed_networks: vec!["10.0.0.300/8".into(), "::ffff:10.0.0.0/104".into()],
            session_idle_minutes: 4,
            session_lifetime_hours: 25,
            ..Default::default()
        };
        let e = validate(&p).unwrap_err();
        assert!(e
            .allowed_networks
            .unwrap()
            .contains("10.0.0.300/8 is not a network"));
        assert!(e.session_idle_minutes.unwrap().contains("5–240"));
        assert!(e.session_lifetime_hours.unwrap().contains("1–24"));
        let form = AccessForm {
            session_idle_minutes: "ten".into(),
            session_lifetime_hours: "12".into(),
            ..Default::default()
        };
        let e = form.policy().unwrap_err();
        assert_eq!(
            e.session_idle_minutes.as_deref(),
            Some("\"ten\" is not a number of minutes")
        );
        assert_eq!(e.session_lifetime_hours, None);
    }

    #[test]
    fn damaged_file_keeps_defaults_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, b"{\"allowed_networks\": [\"nonsense\"]}").unwrap();
        let a = Access::open(dir.path());
        assert!(a.load_error.as_deref().unwrap().contains("nonsense"));
        assert_eq!(a.policy(), AccessPolicy::default());
        assert!(std::fs::read_to_string(&path).unwrap().contains("nonsense"));
    }
}
