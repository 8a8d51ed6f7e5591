//! API tokens for automation (`Authorization: Bearer keel_<id>_<secret>`): the
//! store (`tokens.json` in the console's data directory), the *My account › API
//! tokens* page and `/appliance/api/v1/tokens`.
//!
//! A token's secret is 32 random bytes: its SHA-256 is all that is stored (a slow
//! password hash buys nothing against a 256-bit random value), looked up by the
//! token's id and compared in constant time. Every token has an expiry; revoking
//! deletes it. A token speaks for its owner with at most the owner's role, and
//! stops working when the owner cannot log in any more. A token cannot create
//! tokens: that needs a logged-in session (cookie and CSRF token).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{Form, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use base64::Engine;
use keel_api::{TokenCreateRequest, TokenCreated, TokenInfo, TokenList};
use keel_core::format::FileFormat;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::app::{self, AppState, JsonBody, Shared};
use crate::auth::{AuthError, Role, Session};
use crate::error::ApiError;
use crate::openapi::{routes, OpenApiRouter};

/// `tokens.json`, format 1.
const TOKENS_FILE: FileFormat = FileFormat::first("API tokens");
const PREFIX: &str = "keel_";
/// Hex digits of the id (8 random bytes).
const ID_LEN: usize = 16;
/// base64url without padding of 32 random bytes.
const SECRET_LEN: usize = 43;
const MAX_DAYS: i64 = 365;
const MAX_NAME: usize = 64;
/// Per account: bounds the file and the list.
const MAX_PER_OWNER: usize = 50;
/// Last-used times reach the disk at most this often (memory has them at once).
const LAST_USED_FLUSH: Duration = Duration::from_secs(60);

/// Who a valid token speaks for.
#[derive(Debug, Clone)]
pub struct TokenIdentity {
    pub id: String,
    pub user: String,
    pub role: Role,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error("an {0} can only create auditor tokens")]
    RoleTooHigh(&'static str),
    #[error("no API token {0} (revoked, or not yours)")]
    NotFound(String),
    #[error("{MAX_PER_OWNER} API tokens per account at most: revoke unused ones first")]
    TooMany,
    #[error("cannot store API tokens: {0}")]
    Store(String),
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        let status = match e {
            TokenError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            TokenError::RoleTooHigh(_) => StatusCode::FORBIDDEN,
            TokenError::NotFound(_) => StatusCode::NOT_FOUND,
            TokenError::TooMany => StatusCode::CONFLICT,
            TokenError::Store(_) => return ApiError::internal(e),
        };
        ApiError::new(status, e.to_string())
    }
}

/// Why a presented token opens nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "malformed API token: expected Authorization: Bearer keel_<16 hex digits>_<43 \
         base64url characters>"
    )]
    Malformed,
    #[error("unknown or revoked API token")]
    Unknown,
    #[error("the API token expired at {0}")]
    Expired(String),
    #[error("the API token's account is deleted or disabled")]
    OwnerGone,
}

#[derive(Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    /// SHA-256 of the secret, hex.
    secret_sha256: String,
    owner: String,
    role: Role,
    name: String,
    /// Unix seconds, UTC.
    created: i64,
    expires: i64,
    #[serde(default)]
    last_used: Option<i64>,
}

#[derive(Default, Serialize, Deserialize)]
struct TokensFile {
    tokens: Vec<Record>,
}

struct Inner {
    /// By id.
    records: BTreeMap<String, Record>,
    /// Last-used times not on disk yet.
    dirty: bool,
    flushed: Instant,
}

pub struct Tokens {
    path: PathBuf,
    inner: Mutex<Inner>,
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `keel_<id>_<secret>` split, when it has that shape.
fn parse(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = (rest.get(..ID_LEN)?, rest.get(ID_LEN..)?.strip_prefix('_')?);
    let id_ok = id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let secret_ok = secret.len() == SECRET_LEN
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((id, secret))
}

fn parse_role(s: &str) -> Result<Role, TokenError> {
    match s {
        "administrator" => Ok(Role::Administrator),
        "auditor" => Ok(Role::Auditor),
        other => Err(TokenError::Invalid(format!(
            "role {other:?} is not one of: administrator, auditor"
        ))),
    }
}

/// The lesser of two roles.
fn lesser(a: Role, b: Role) -> Role {
    if a.may_change() && b.may_change() {
        Role::Administrator
    } else {
        Role::Auditor
    }
}

/// When a token asked for by `req` at `now` expires (Unix seconds).
fn expiry(req: &TokenCreateRequest, now: OffsetDateTime) -> Result<i64, TokenError> {
    let max = now + time::Duration::days(MAX_DAYS);
    let at = match (req.expires_in_days, req.expires.as_deref().map(str::trim)) {
        (Some(_), Some(d)) if !d.is_empty() => {
            return Err(TokenError::Invalid(
                "give either expires_in_days or expires, not both".into(),
            ))
        }
        (Some(days), _) => {
            if !(1..=MAX_DAYS).contains(&i64::from(days)) {
                return Err(TokenError::Invalid(format!(
                    "expires_in_days must be 1 to {MAX_DAYS}, not {days}"
                )));
            }
            now + time::Duration::days(i64::from(days))
        }
        (None, Some(d)) if !d.is_empty() => {
            let date =
                time::Date::parse(d, time::macros::format_description!("[year]-[month]-[day]"))
                    .map_err(|_| {
                        TokenError::Invalid(format!("expires {d:?} is not a date YYYY-MM-DD"))
                    })?;
            let at = date.midnight().assume_utc();
            if at <= now || at > max {
                return Err(TokenError::Invalid(format!(
                    "expires {d} must be after today and at most {MAX_DAYS} days ahead"
                )));
            }
            at
        }
        _ => {
            return Err(TokenError::Invalid(format!(
                "an expiry is required: expires_in_days (1 to {MAX_DAYS}) or expires (YYYY-MM-DD)"
            )))
        }
    };
    Ok(at.unix_timestamp())
}

fn check_name(name: &str) -> Result<&str, TokenError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(TokenError::Invalid(format!(
            "the name must have 1 to {MAX_NAME} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(TokenError::Invalid(
            "the name must not contain control characters".into(),
        ));
    }
    Ok(name)
}

impl Record {
    fn info(&self, now: i64) -> TokenInfo {
        TokenInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            owner: self.owner.clone(),
            role: self.role,
            created: rfc3339(self.created),
            expires: rfc3339(self.expires),
            last_used: self.last_used.map(rfc3339),
            expired: now >= self.expires,
        }
    }
}

impl Tokens {
    /// Opens `tokens.json` in `dir` (none yet: no tokens).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, AuthError> {
        let path = dir.into().join("tokens.json");
        let file: TokensFile = TOKENS_FILE
            .read(&path)
            .map_err(|e| AuthError::Store(e.to_string()))?
            .unwrap_or_default();
        let records = file.tokens.into_iter().map(|r| (r.id.clone(), r)).collect();
        Ok(Self {
            path,
            inner: Mutex::new(Inner {
                records,
                dirty: false,
                flushed: Instant::now(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `records` whole (0600); the caller takes them into memory only after.
    fn write(&self, records: &BTreeMap<String, Record>) -> Result<(), TokenError> {
        let file = TokensFile {
            tokens: records.values().cloned().collect(),
        };
        TOKENS_FILE
            .write(&self.path, &file, 0o600)
            .map_err(|e| TokenError::Store(e.to_string()))
    }

    /// The identity behind a presented token, when it is valid now.
    pub fn authenticate(&self, presented: &str) -> Option<TokenIdentity> {
        self.check(presented, OffsetDateTime::now_utc()).ok()
    }

    /// `authenticate` with the reason of a refusal; records the use.
    pub fn check(&self, presented: &str, now: OffsetDateTime) -> Result<TokenIdentity, Refusal> {
        let (id, secret) = parse(presented).ok_or(Refusal::Malformed)?;
        let hash = sha256_hex(secret);
        let mut inner = self.lock();
        let record = inner.records.get_mut(id).ok_or(Refusal::Unknown)?;
        if !bool::from(record.secret_sha256.as_bytes().ct_eq(hash.as_bytes())) {
            return Err(Refusal::Unknown);
        }
        let now = now.unix_timestamp();
        if now >= record.expires {
            return Err(Refusal::Expired(rfc3339(record.expires)));
        }
        // To the minute: a burst of calls changes nothing on disk.
        let minute = now - now.rem_euclid(60);
        let identity = TokenIdentity {
            id: record.id.clone(),
            user: record.owner.clone(),
            role: record.role,
        };
        if record.last_used != Some(minute) {
            record.last_used = Some(minute);
            inner.dirty = true;
        }
        if inner.dirty && inner.flushed.elapsed() >= LAST_USED_FLUSH {
            self.flush(&mut inner);
        }
        Ok(identity)
    }

    fn flush(&self, inner: &mut Inner) {
        match self.write(&inner.records) {
            Ok(()) => inner.dirty = false,
            // Last-used times are a convenience: the token keeps working.
            Err(e) => tracing::warn!("cannot record API token use: {e}"),
        }
        inner.flushed = Instant::now();
    }

    /// A new token for `owner` (whose role is `owner_role`), shown once.
    pub fn create(
        &self,
        owner: &str,
        owner_role: Role,
        req: &TokenCreateRequest,
        now: OffsetDateTime,
    ) -> Result<TokenCreated, TokenError> {
        let name = check_name(&req.name)?;
        let role = req.role.unwrap_or(owner_role);
        if role.may_change() && !owner_role.may_change() {
            return Err(TokenError::RoleTooHigh(owner_role.as_str()));
        }
        let expires = expiry(req, now)?;
        let mut rng = rand::rngs::OsRng;
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        let id = hex::encode(id);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let record = Record {
            id: id.clone(),
            secret_sha256: sha256_hex(&secret),
            owner: owner.to_owned(),
            role,
            name: name.to_owned(),
            created: now.unix_timestamp(),
            expires,
            last_used: None,
        };
        let mut inner = self.lock();
        if inner.records.values().filter(|r| r.owner == owner).count() >= MAX_PER_OWNER {
            return Err(TokenError::TooMany);
        }
        let mut records = inner.records.clone();
        records.insert(id.clone(), record.clone());
        self.write(&records)?;
        inner.records = records;
        inner.dirty = false;
        tracing::info!(owner, id, role = role.as_str(), "API token created");
        Ok(TokenCreated {
            token: format!("{PREFIX}{id}_{secret}"),
            info: record.info(now.unix_timestamp()),
        })
    }

    /// Deletes token `id`: `user`'s own, or anyone's for an administrator.
    pub fn revoke(&self, id: &str, user: &str, admin: bool) -> Result<TokenInfo, TokenError> {
        let mut inner = self.lock();
        let found = inner
            .records
            .get(id)
            .filter(|r| admin || r.owner == user)
            .cloned()
            .ok_or_else(|| TokenError::NotFound(id.chars().take(ID_LEN).collect()))?;
        let mut records = inner.records.clone();
        records.remove(id);
        self.write(&records)?;
        inner.records = records;
        inner.dirty = false;
        tracing::info!(by = user, id, owner = found.owner, "API token revoked");
        Ok(found.info(OffsetDateTime::now_utc().unix_timestamp()))
    }

    /// `user`'s tokens (`all`: everyone's), the newest first.
    pub fn list(&self, user: &str, all: bool) -> Vec<TokenInfo> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let inner = self.lock();
        let mut list: Vec<&Record> = inner
            .records
            .values()
            .filter(|r| all || r.owner == user)
            .collect();
        list.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        list.into_iter().map(|r| r.info(now)).collect()
    }
}

/// The `Authorization` header's token: `Ok(None)` without the header.
fn presented(headers: &HeaderMap) -> Result<Option<&str>, Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| Refusal::Malformed)?;
    // The scheme is case-insensitive (RFC 9110 11.1).
    let (scheme, token) = value.trim().split_once(' ').ok_or(Refusal::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::Malformed);
    }
    Ok(Some(token.trim()))
}

/// The session of a request carrying `Authorization` (the token's id is the first
/// element), or why it is refused.
pub fn bearer_session(st: &AppState, headers: &HeaderMap) -> Result<(String, Session), Refusal> {
    let token = presented(headers)?.ok_or(Refusal::Malformed)?;
    let id = st.tokens.check(token, OffsetDateTime::now_utc())?;
    // A deleted or disabled owner ends its tokens; a demoted one limits them.
    let owner = st.auth.account_role(&id.user).ok_or(Refusal::OwnerGone)?;
    Ok((id.id, Session::bearer(id.user, lesser(id.role, owner))))
}

fn refused(message: String) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// Refuses credentials that cannot be right with a message that says why (401): a
/// token sent as the session cookie, a malformed `Authorization` header, an
/// unknown, revoked or expired token. Everything else goes on.
pub async fn credentials(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    if app::cookie(headers, app::SESSION_COOKIE).is_some_and(|c| c.starts_with(PREFIX)) {
        return refused(format!(
            "an API token was sent as the {} cookie: send it as the header \
             \"Authorization: Bearer <token>\"",
            app::SESSION_COOKIE
        ));
    }
    if headers.contains_key(header::AUTHORIZATION) {
        if let Err(why) = bearer_session(&st, headers) {
            return refused(why.to_string());
        }
    }
    next.run(req).await
}

// ---- JSON API ----------------------------------------------------------------------

fn no_minting() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "an API token cannot create tokens: log in to the console (session and CSRF token)",
    )
}

#[utoipa::path(get, path = "/appliance/api/v1/tokens", tag = "tokens",
    operation_id = "tokens_api_list",
    summary = "API tokens: the caller's own, an administrator's holds everyone's",
    responses((status = 200, body = TokenList), (status = 401, description = "No session or token")),
    security(("session" = []), ("token" = [])))]
async fn api_list(
    State(st): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<TokenList>, ApiError> {
    let (_, s) = st.session(&headers).ok_or_else(ApiError::unauthorized)?;
    Ok(Json(TokenList {
        tokens: st.tokens.list(&s.user, s.role.may_change()),
    }))
}

#[utoipa::path(post, path = "/appliance/api/v1/tokens", tag = "tokens",
    operation_id = "tokens_api_create",
    summary = "Create an API token (shown only in this answer)",
    description = "Needs a logged-in session with its CSRF token: an API token cannot create \
        tokens (403). An expiry is required (1 to 365 days); the role at most the caller's; \
        50 tokens per account.",
    request_body = TokenCreateRequest,
    responses((status = 201, body = TokenCreated),
        (status = 401, description = "No session"),
        (status = 403, description = "CSRF token missing or wrong, a role above the caller's, or called with a token"),
        (status = 409, description = "50 tokens for this account already"),
        (status = 422, description = "Bad name, or no, both or an out-of-range expiry")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_create(
    State(st): State<Shared>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<TokenCreateRequest>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let (_, s) = st.api_session_for_change(&headers)?;
    if s.via_token {
        return Err(no_minting());
    }
    let created = st
        .tokens
        .create(&s.user, s.role, &req, OffsetDateTime::now_utc())?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(delete, path = "/appliance/api/v1/tokens/{id}", tag = "tokens",
    operation_id = "tokens_api_revoke",
    summary = "Revoke an API token (the caller's own, or anyone's for an administrator)",
    params(("id" = String, Path, description = "The token's id (16 hex digits)")),
    responses((status = 200, body = TokenInfo), (status = 401), (status = 403),
        (status = 404, description = "No such token, or not the caller's")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_revoke(
    State(st): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    let (_, s) = st.api_session_for_change(&headers)?;
    Ok(Json(st.tokens.revoke(&id, &s.user, s.role.may_change())?))
}

// ---- HTML --------------------------------------------------------------------------

const PAGE: &str = "/appliance/account/tokens";

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    csrf: String,
    error: Option<String>,
    user: String,
    admin: bool,
    mine: Vec<TokenInfo>,
    others: Vec<TokenInfo>,
    /// The token just made: shown this once.
    created: Option<TokenCreated>,
    form: CreateForm,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    days: String,
    #[serde(default)]
    expires: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct RevokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
}

fn page(
    st: &AppState,
    s: &Session,
    status: StatusCode,
    error: Option<String>,
    created: Option<TokenCreated>,
    form: CreateForm,
) -> Response {
    let admin = s.role.may_change();
    let (mine, others) = st
        .tokens
        .list(&s.user, admin)
        .into_iter()
        .partition(|t| t.owner == s.user);
    let page = TokensPage {
        csrf: s.csrf_token.clone(),
        error,
        user: s.user.clone(),
        admin,
        mine,
        others,
        created,
        form,
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

#[utoipa::path(get, path = "/appliance/account/tokens", tag = "pages",
    operation_id = "tokens_show",
    summary = "My account › API tokens",
    responses((status = 200, description = "The page", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page")),
    security(("session" = []), ("token" = [])))]
async fn show(State(st): State<Shared>, headers: HeaderMap) -> Response {
    match st.session(&headers) {
        Some((_, s)) => page(
            &st,
            &s,
            StatusCode::OK,
            None,
            None,
            CreateForm {
                days: "90".into(),
                ..Default::default()
            },
        ),
        None => Redirect::to("/appliance/").into_response(),
    }
}

#[utoipa::path(post, path = "/appliance/account/tokens", tag = "forms",
    operation_id = "tokens_create_submit",
    summary = "My account › API tokens: Create token",
    request_body(content = CreateForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page with the new token, shown this once", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or a role above the account's"),
        (status = 409, description = "50 tokens for this account already", content_type = "text/html", body = String),
        (status = 422, description = "The page with the reason and the form as sent", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn create_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<CreateForm>,
) -> Response {
    let s = match crate::web::form_user(&st, &headers, &form.csrf) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    if s.via_token {
        return no_minting().into_response();
    }
    let days = form.days.trim();
    let days = if days.is_empty() {
        Ok(None)
    } else {
        days.parse::<u32>().map(Some).map_err(|_| {
            TokenError::Invalid(format!("days {days:?} is not a whole number of days"))
        })
    };
    let result = days.and_then(|expires_in_days| {
        let req = TokenCreateRequest {
            name: form.name.clone(),
            role: match form.role.trim() {
                "" => None,
                r => Some(parse_role(r)?),
            },
            expires_in_days,
            expires: Some(form.expires.clone()),
        };
        st.tokens
            .create(&s.user, s.role, &req, OffsetDateTime::now_utc())
    });
    match result {
        Ok(created) => page(
            &st,
            &s,
            StatusCode::OK,
            None,
            Some(created),
            CreateForm {
                days: "90".into(),
                ..Default::default()
            },
        ),
        Err(e) => {
            let status = ApiError::from(e.clone()).status;
            page(&st, &s, status, Some(e.to_string()), None, form)
        }
    }
}

#[utoipa::path(post, path = "/appliance/account/tokens/revoke", tag = "forms",
    operation_id = "tokens_revoke_submit",
    summary = "My account › API tokens: Revoke",
    request_body(content = RevokeForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Back to the page"),
        (status = 403, description = "Form expired or from another site"),
        (status = 404, description = "No such token, or not the account's", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn revoke_submit(
    State(st): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<RevokeForm>,
) -> Response {
    let s = match crate::web::form_user(&st, &headers, &form.csrf) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    match st.tokens.revoke(&form.id, &s.user, s.role.may_change()) {
        Ok(_) => Redirect::to(PAGE).into_response(),
        Err(e) => {
            let status = ApiError::from(e.clone()).status;
            page(
                &st,
                &s,
                status,
                Some(e.to_string()),
                None,
                CreateForm::default(),
            )
        }
    }
}

/// The token routes, full paths (merged into the console's router).
pub fn router() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(api_list, api_create))
        .routes(routes!(api_revoke))
        .routes(routes!(show, create_submit))
        .routes(routes!(revoke_submit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(days: Option<u32>, date: Option<&str>) -> TokenCreateRequest {
        TokenCreateRequest {
            name: "ci".into(),
            role: None,
            expires_in_days: days,
            expires: date.map(Into::into),
        }
    }

    #[test]
    fn the_secret_is_never_stored_and_the_token_opens_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc();
        let made = tokens
            .create("admin", Role::Administrator, &req(Some(30), None), now)
            .unwrap();
        let (id, secret) = parse(&made.token).unwrap();
        assert_eq!(id, made.info.id);
        let file = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(!file.contains(secret), "{file}");
        assert!(file.contains(&sha256_hex(secret)));
        let who = tokens.check(&made.token, now).unwrap();
        assert_eq!(
            (who.user.as_str(), who.role),
            ("admin", Role::Administrator)
        );
        // One character off: no such token.
        let mut wrong = made.token.clone();
        let last = if wrong.ends_with('A') { 'B' } else { 'A' };
        wrong.pop();
        wrong.push(last);
        assert_eq!(tokens.check(&wrong, now).unwrap_err(), Refusal::Unknown);
        // Reopened from disk: the same.
        let again = Tokens::open(dir.path()).unwrap();
        assert!(again.check(&made.token, now).is_ok());
    }

    #[test]
    fn expiry_is_required_and_bounded() {
        let now = OffsetDateTime::now_utc();
        assert!(expiry(&req(None, None), now).is_err());
        assert!(expiry(&req(Some(0), None), now).is_err());
        assert!(expiry(&req(Some(366), None), now).is_err());
        assert!(expiry(&req(Some(10), Some("2030-01-01")), now).is_err());
        assert!(expiry(&req(None, Some("yesterday")), now).is_err());
        assert_eq!(
            expiry(&req(Some(1), None), now).unwrap(),
            now.unix_timestamp() + 86400
        );
        let in_ten = (now + time::Duration::days(10)).date();
        let at = expiry(&req(None, Some(&in_ten.to_string())), now).unwrap();
        assert_eq!(at, in_ten.midnight().assume_utc().unix_timestamp());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc();
        let made = tokens
            .create("admin", Role::Administrator, &req(Some(1), None), now)
            .unwrap();
        let later = now + time::Duration::days(1);
        assert!(matches!(
            tokens.check(&made.token, later),
            Err(Refusal::Expired(_))
        ));
    }

    #[test]
    fn an_auditor_makes_auditor_tokens_only() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc();
        let mut r = req(Some(5), None);
        r.role = Some(Role::Administrator);
        assert_eq!(
            tokens.create("ann", Role::Auditor, &r, now).unwrap_err(),
            TokenError::RoleTooHigh("auditor")
        );
        r.role = None;
        let made = tokens.create("ann", Role::Auditor, &r, now).unwrap();
        assert_eq!(made.info.role, Role::Auditor);
        assert!(!dir.path().join("tokens.json.tmp").exists());
    }

    #[test]
    fn malformed_tokens_are_told_apart() {
        for bad in [
            "",
            "keel_",
            "keel_0123456789abcdef",
            "keel_0123456789ABCDEF_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "keel_0123456789abcdef_short",
            "keel_0123456789abcdef_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa=",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        assert!(
            parse("keel_0123456789abcdef_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-_aa").is_some()
        );
    }
}
