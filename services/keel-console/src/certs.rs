//! *Security › Certificates*: the certificate store's JSON API under
//! `/appliance/api/v1/certs` and its HTML page. Every change is pushed to the
//! TLS server at once (new handshakes only: open connections keep going).

use std::sync::Arc;

use crate::openapi::{routes, OpenApiRouter};
use askama::Template;
use axum::extract::multipart::MultipartError;
use axum::extract::{DefaultBodyLimit, Form, FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use keel_api::{
    CertCheck, CertDeleteRequest, CertExportRequest, CertImportRequest, CertList, CertTargets,
    CertWarning, CertificateEntry, CertificateSummary, CsrCreated, ExportFormat, KeyType,
    NewCertRequest,
};
use keel_certs::export::Exported;
use keel_certs::material::Input;
use keel_certs::{CertError, CertStore, ErrorKind};
use serde::Deserialize;

use crate::app::{self, JsonBody, Shared};
use crate::error::ApiError;
use crate::tls::CertResolver;

/// Import bodies carry base64 files (up to 8 × 256 KiB); everything else is small.
pub const IMPORT_MAX_BODY: usize = 3 * 1024 * 1024;

pub struct CertsState {
    pub app: Shared,
    pub store: Arc<CertStore>,
    pub resolver: Arc<CertResolver>,
}

pub type CertsShared = Arc<CertsState>;

impl CertsState {
    pub fn new(app: Shared, store: Arc<CertStore>, resolver: Arc<CertResolver>) -> CertsShared {
        let cs = Arc::new(Self {
            app,
            store,
            resolver,
        });
        // A console has one store; a second `new` for the same state keeps the first.
        let _ = cs.app.certs.set(Arc::downgrade(&cs));
        cs
    }

    /// Serves what the store now says (hot swap).
    pub fn reload(&self) -> Result<(), CertError> {
        self.resolver.set_serving(self.store.serving()?);
        Ok(())
    }
}

/// Adds the certificate routes to the console's router, and the store to every
/// request.
/// The import and answer routes, which take files up to `IMPORT_MAX_BODY` and check
/// sizes themselves (exempt from `app::refuse_oversized`).
pub fn own_body_limit(path: &str) -> bool {
    let Some(rest) = path.strip_prefix(API).or_else(|| path.strip_prefix(PAGE)) else {
        return false;
    };
    rest == "/import" || (rest.ends_with("/answer") && rest.matches('/').count() == 2)
}

/// The store's HTTPS routes, for `app::router_with`.
pub fn routes(cs: CertsShared) -> OpenApiRouter {
    self::router(cs.clone()).layer(Extension(cs))
}

/// A certificate as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedCert {
    /// The store's label (`Built-in self-signed` for the built-in one).
    pub label: String,
    pub subject: String,
    pub not_after: String,
    pub sha256_fingerprint: String,
    /// Where it is served: `default`, `ip:<address>`, `host:<name>`.
    pub assigned: Vec<String>,
    pub warnings: Vec<String>,
}

impl ServedCert {
    fn from_entry(c: CertificateEntry) -> Self {
        Self {
            label: c.label,
            subject: c.subject,
            not_after: c.not_after,
            sha256_fingerprint: c.sha256_fingerprint,
            assigned: c.assigned,
            warnings: c.warnings.into_iter().map(|w| w.message).collect(),
        }
    }

    pub fn summary(&self) -> CertificateSummary {
        CertificateSummary {
            sha256_fingerprint: self.sha256_fingerprint.clone(),
            subject: self.subject.clone(),
            not_after: self.not_after.clone(),
        }
    }
}

/// What the TLS server serves where no address or name has its own certificate,
/// as it serves it now (an assigned default that could not be loaded leaves the
/// built-in one in place, and this says so).
pub fn served_default(cs: &CertsState) -> ServedCert {
    served_default_among(cs, &cs.store.in_use().unwrap_or_default())
}

/// `served_default` with the store's in-use list already read.
fn served_default_among(cs: &CertsState, in_use: &[CertificateEntry]) -> ServedCert {
    let key = cs.resolver.choose(None, None);
    let leaf = key.cert.first().map(|c| c.as_ref()).unwrap_or_default();
    let fp = keel_certs::fingerprint(leaf);
    if let Some(c) = in_use.iter().find(|c| c.sha256_fingerprint == fp) {
        return ServedCert::from_entry(c.clone());
    }
    // Only while the store is unreadable, or a change is being swapped in.
    let d = keel_certs::inspect::details(leaf);
    ServedCert {
        label: "(not in the certificate store)".into(),
        subject: d.as_ref().map(|d| d.subject.clone()).unwrap_or_default(),
        not_after: d.map(|d| d.not_after_rfc3339()).unwrap_or_default(),
        sha256_fingerprint: fp,
        assigned: vec!["default".into()],
        warnings: Vec::new(),
    }
}

/// The certificate part of *Status › Basics*.
pub struct BasicsCerts {
    /// Served where nothing more specific is assigned.
    pub default: ServedCert,
    /// Every certificate served somewhere, with its warnings.
    pub in_use: Vec<ServedCert>,
    /// The store could not be read.
    pub error: Option<String>,
}

/// The certificates `app` serves; `None` for a console without a store.
pub fn basics_view(app: &crate::app::AppState) -> Option<BasicsCerts> {
    let cs = app.cert_store()?;
    let (in_use, error) = match cs.store.in_use() {
        Ok(l) => (l, None),
        Err(e) => (
            Vec::new(),
            Some(format!("certificate store unreadable: {e}")),
        ),
    };
    Some(BasicsCerts {
        default: served_default_among(&cs, &in_use),
        in_use: in_use.into_iter().map(ServedCert::from_entry).collect(),
        error,
    })
}

fn api_error(e: CertError) -> ApiError {
    let status = match (&e, e.kind()) {
        (CertError::TooLarge { .. }, _) => StatusCode::PAYLOAD_TOO_LARGE,
        (_, ErrorKind::BadInput) => StatusCode::BAD_REQUEST,
        (_, ErrorKind::NotFound) => StatusCode::NOT_FOUND,
        (_, ErrorKind::Conflict) => StatusCode::CONFLICT,
        (_, ErrorKind::Internal) => return ApiError::internal(e),
    };
    ApiError::new(status, e.to_string())
}

/// Key generation and passphrase derivation take time: off the executor.
async fn blocking<T: Send + 'static>(
    cs: &CertsShared,
    f: impl FnOnce(&CertStore) -> Result<T, CertError> + Send + 'static,
) -> Result<T, CertError> {
    let store = cs.store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| CertError::Invalid(format!("task failed: {e}")))?
}

fn reload(cs: &CertsState) -> Result<(), ApiError> {
    cs.reload()
        .map_err(|e| ApiError::internal(format!("certificate change stored but not served: {e}")))
}

fn api_session(cs: &CertsState, headers: &HeaderMap) -> Result<(), ApiError> {
    cs.app
        .session(headers)
        .map(|_| ())
        .ok_or_else(ApiError::unauthorized)
}

/// Session plus CSRF header and same-origin check for changes.
fn api_change(cs: &CertsState, headers: &HeaderMap) -> Result<(), ApiError> {
    let (_, session) = cs.app.session(headers).ok_or_else(ApiError::unauthorized)?;
    let presented = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !session.csrf_matches(presented) || !app::same_origin(headers) {
        return Err(ApiError::csrf());
    }
    Ok(())
}

struct Decoded {
    files: Vec<(String, Vec<u8>)>,
    passphrase: Option<String>,
    label: String,
}

fn decode(req: CertImportRequest) -> Result<Decoded, ApiError> {
    let mut files = Vec::new();
    for (i, f) in req.files.into_iter().enumerate() {
        let data = base64::engine::general_purpose::STANDARD
            .decode(f.data_base64.trim())
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("file {}: data_base64 is not valid base64", i + 1),
                )
            })?;
        let name = if f.name.is_empty() {
            format!("file {}", i + 1)
        } else {
            f.name
        };
        files.push((name, data));
    }
    Ok(Decoded {
        files,
        passphrase: req.passphrase,
        label: req.label,
    })
}

fn inputs(files: &[(String, Vec<u8>)]) -> Vec<Input<'_>> {
    files
        .iter()
        .map(|(name, data)| Input { name, data })
        .collect()
}

#[utoipa::path(get, path = "/appliance/api/v1/certs", tag = "certs",
    operation_id = "certs_api_list",
    summary = "Security › Certificates: the certificates and where each is served",
    responses((status = 200, body = CertList), (status = 401, description = "No session or token")),
    security(("session" = []), ("token" = [])))]
async fn api_list(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
) -> Result<Json<CertList>, ApiError> {
    api_session(&cs, &headers)?;
    Ok(Json(cs.store.list().map_err(api_error)?))
}

#[utoipa::path(get, path = "/appliance/api/v1/certs/{id}", tag = "certs",
    operation_id = "certs_api_get",
    summary = "One certificate: subject, names, issuer, validity, key, fingerprint, warnings",
    params(("id" = String, Path, description = "The certificate's id (12 hex digits, or `builtin`)")),
    responses((status = 200, body = CertificateEntry), (status = 401), (status = 404, description = "No such certificate")),
    security(("session" = []), ("token" = [])))]
async fn api_get(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<CertificateEntry>, ApiError> {
    api_session(&cs, &headers)?;
    Ok(Json(cs.store.get(&id).map_err(api_error)?))
}

#[utoipa::path(post, path = "/appliance/api/v1/certs/import", tag = "certs",
    operation_id = "certs_api_import",
    summary = "Import a certificate with its key and chain (PEM, DER or PKCS#12)",
    description = "At most 8 files of 256 KiB each, base64 in the JSON body (which may be up to \
        3 MiB). A certificate without a key completes the pending request whose key it matches.",
    request_body = CertImportRequest,
    responses((status = 201, body = CertificateEntry),
        (status = 400, description = "Unreadable, wrong passphrase, key mismatch, not base64"),
        (status = 401), (status = 403),
        (status = 409, description = "Refused by the store's state"),
        (status = 413, description = "Over the size limits")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_import(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CertImportRequest>,
) -> Result<(StatusCode, Json<CertificateEntry>), ApiError> {
    api_change(&cs, &headers)?;
    let d = decode(req)?;
    let entry = blocking(&cs, move |s| {
        s.import(&d.label, &inputs(&d.files), d.passphrase.as_deref())
    })
    .await
    .map_err(api_error)?;
    // A CA answer may complete an entry that is already assigned.
    reload(&cs)?;
    Ok((StatusCode::CREATED, Json(entry)))
}

#[utoipa::path(post, path = "/appliance/api/v1/certs/{id}/answer", tag = "certs",
    operation_id = "certs_api_answer",
    summary = "Import the CA's answer to a certificate request",
    description = "Like import (same limits), for the pending entry `id`.",
    params(("id" = String, Path, description = "The certificate's id (12 hex digits, or `builtin`)")),
    request_body = CertImportRequest,
    responses((status = 200, body = CertificateEntry),
        (status = 400, description = "Unreadable, or the key does not match the request"),
        (status = 401), (status = 403), (status = 404, description = "No such certificate"),
        (status = 409, description = "Not a pending request"),
        (status = 413, description = "Over the size limits")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_answer(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CertImportRequest>,
) -> Result<Json<CertificateEntry>, ApiError> {
    api_change(&cs, &headers)?;
    let d = decode(req)?;
    let entry = blocking(&cs, move |s| {
        s.answer(&id, &inputs(&d.files), d.passphrase.as_deref())
    })
    .await
    .map_err(api_error)?;
    reload(&cs)?;
    Ok(Json(entry))
}

#[utoipa::path(post, path = "/appliance/api/v1/certs/self-signed", tag = "certs",
    operation_id = "certs_api_self_signed",
    summary = "Create a self-signed certificate",
    request_body = NewCertRequest,
    responses((status = 201, body = CertificateEntry), (status = 400, description = "Bad names or validity"),
        (status = 401), (status = 403)),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_self_signed(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<NewCertRequest>,
) -> Result<(StatusCode, Json<CertificateEntry>), ApiError> {
    api_change(&cs, &headers)?;
    let entry = blocking(&cs, move |s| s.create_self_signed(&req))
        .await
        .map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(entry)))
}

#[utoipa::path(post, path = "/appliance/api/v1/certs/csr", tag = "certs",
    operation_id = "certs_api_csr",
    summary = "Create a key and a certificate request (CSR) for a CA",
    request_body = NewCertRequest,
    responses((status = 201, body = CsrCreated), (status = 400, description = "Bad names"),
        (status = 401), (status = 403)),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_csr(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<NewCertRequest>,
) -> Result<(StatusCode, Json<CsrCreated>), ApiError> {
    api_change(&cs, &headers)?;
    let (certificate, csr_pem) = blocking(&cs, move |s| s.create_csr(&req))
        .await
        .map_err(api_error)?;
    Ok((
        StatusCode::CREATED,
        Json(CsrCreated {
            certificate,
            csr_pem,
        }),
    ))
}

fn download(bytes: Vec<u8>, content_type: &'static str, file_name: &str) -> Response {
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

#[utoipa::path(get, path = "/appliance/api/v1/certs/{id}/csr", tag = "certs",
    operation_id = "certs_api_csr_pem",
    summary = "Download the certificate request (PEM)",
    params(("id" = String, Path, description = "The certificate's id (12 hex digits, or `builtin`)")),
    responses((status = 200, description = "The CSR", content_type = "application/pkcs10", body = String),
        (status = 401), (status = 404, description = "No such certificate, or no request")),
    security(("session" = []), ("token" = [])))]
async fn api_csr_pem(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    api_session(&cs, &headers)?;
    let pem = cs.store.csr_pem(&id).map_err(api_error)?;
    Ok(download(
        pem.into_bytes(),
        "application/pkcs10",
        &format!("{id}.csr"),
    ))
}

/// The certificate chain alone (public): a plain GET, e.g. for a browser link.
#[utoipa::path(get, path = "/appliance/api/v1/certs/{id}/certificate", tag = "certs",
    operation_id = "certs_api_cert_pem",
    summary = "Download the certificate chain (PEM, no key)",
    params(("id" = String, Path, description = "The certificate's id (12 hex digits, or `builtin`)")),
    responses((status = 200, description = "The chain", content_type = "application/x-pem-file", body = String),
        (status = 401), (status = 404, description = "No such certificate"),
        (status = 409, description = "A pending request has no certificate yet")),
    security(("session" = []), ("token" = [])))]
async fn api_cert_pem(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    api_session(&cs, &headers)?;
    let out = blocking(&cs, move |s| {
        s.export(
            &id,
            &CertExportRequest {
                format: ExportFormat::Pem,
                include_key: false,
                include_chain: true,
                passphrase: None,
            },
        )
    })
    .await
    .map_err(api_error)?;
    Ok(exported(out))
}

fn exported(out: Exported) -> Response {
    download(out.bytes, out.content_type, &out.file_name)
}

#[utoipa::path(post, path = "/appliance/api/v1/certs/{id}/export", tag = "certs",
    operation_id = "certs_api_export",
    summary = "Export: PEM or PKCS#12, with the key on request",
    description = "The key (and any PKCS#12) needs a passphrase of at least 8 characters. \
        Refused to roles that may not change anything: it hands out the key.",
    params(("id" = String, Path, description = "The certificate's id (12 hex digits, or `builtin`)")),
    request_body = CertExportRequest,
    responses((status = 200, description = "The file", content(("application/x-pem-file"), ("application/x-pkcs12"))),
        (status = 400, description = "No or a short passphrase"),
        (status = 401), (status = 403), (status = 404, description = "No such certificate"),
        (status = 409, description = "A pending request has no certificate yet")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_export(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CertExportRequest>,
) -> Result<Response, ApiError> {
    api_change(&cs, &headers)?;
    let out = blocking(&cs, move |s| s.export(&id, &req))
        .await
        .map_err(api_error)?;
    Ok(exported(out))
}

#[utoipa::path(post, path = "/appliance/api/v1/certs/{id}/check", tag = "certs",
    operation_id = "certs_api_check",
    summary = "What assigning would warn about (names not covered, expiry, ...)",
    description = "Changes nothing; a POST all the same, so it takes the CSRF token like \
        every other and is refused (403) to roles that may not change anything.",
    params(("id" = String, Path, description = "The certificate's id (12 hex digits, or `builtin`)")),
    request_body = CertTargets,
    responses((status = 200, body = CertCheck), (status = 400), (status = 401), (status = 403),
        (status = 404, description = "No such certificate")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_check(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(t): JsonBody<CertTargets>,
) -> Result<Json<CertCheck>, ApiError> {
    api_session(&cs, &headers)?;
    let warnings = cs.store.check(&id, &t).map_err(api_error)?;
    Ok(Json(CertCheck { warnings }))
}

#[utoipa::path(post, path = "/appliance/api/v1/certs/{id}/assign", tag = "certs",
    operation_id = "certs_api_assign",
    summary = "Assign: serve it by default, on addresses or for host names",
    description = "Served from the next handshake on. On a failover backup the shared \
        addresses' certificates come from the primary (409).",
    params(("id" = String, Path, description = "The certificate's id (12 hex digits, or `builtin`)")),
    request_body = CertTargets,
    responses((status = 200, body = CertList), (status = 400), (status = 401), (status = 403),
        (status = 404, description = "No such certificate"),
        (status = 409, description = "A pending request, or a shared address on a failover backup")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_assign(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(t): JsonBody<CertTargets>,
) -> Result<Json<CertList>, ApiError> {
    api_change(&cs, &headers)?;
    refuse_shared_on_backup(&t).await?;
    let list = cs.store.assign(&id, &t).map_err(api_error)?;
    reload(&cs)?;
    Ok(Json(list))
}

/// A backup's shared addresses get their certificates from the primary's sync.
async fn refuse_shared_on_backup(t: &CertTargets) -> Result<(), ApiError> {
    match crate::failover::shared_assignment_refused(&t.ips).await {
        Some(why) => Err(ApiError::new(StatusCode::CONFLICT, why)),
        None => Ok(()),
    }
}

#[utoipa::path(post, path = "/appliance/api/v1/certs/unassign", tag = "certs",
    operation_id = "certs_api_unassign",
    summary = "Unassign: addresses or names go back to the default certificate",
    request_body = CertTargets,
    responses((status = 200, body = CertList), (status = 400), (status = 401), (status = 403),
        (status = 409, description = "A shared address on a failover backup")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_unassign(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    JsonBody(t): JsonBody<CertTargets>,
) -> Result<Json<CertList>, ApiError> {
    api_change(&cs, &headers)?;
    refuse_shared_on_backup(&t).await?;
    let list = cs.store.unassign(&t).map_err(api_error)?;
    reload(&cs)?;
    Ok(Json(list))
}

#[utoipa::path(post, path = "/appliance/api/v1/certs/{id}/delete", tag = "certs",
    operation_id = "certs_api_delete",
    summary = "Delete a certificate",
    description = "Refused (409) while it is assigned, unless a replacement (an id or \
        `builtin`) takes its places.",
    params(("id" = String, Path, description = "The certificate's id (12 hex digits, or `builtin`)")),
    request_body = CertDeleteRequest,
    responses((status = 204), (status = 400), (status = 401), (status = 403),
        (status = 404, description = "No such certificate"),
        (status = 409, description = "Assigned, and no replacement")),
    security(("session" = [], "csrf" = []), ("token" = [])))]
async fn api_delete(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CertDeleteRequest>,
) -> Result<StatusCode, ApiError> {
    api_change(&cs, &headers)?;
    cs.store
        .delete(&id, req.replacement.as_deref())
        .map_err(api_error)?;
    reload(&cs)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Like the console's own guard: answer 413 before reading a body that is too big
/// (on the page, for a form of the page).
async fn refuse_oversized(
    State(cs): State<CertsShared>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    use http_body_util::BodyExt;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > IMPORT_MAX_BODY as u64 => {
            let session = req
                .uri()
                .path()
                .starts_with(PAGE)
                .then(|| cs.app.session(req.headers()))
                .flatten();
            // Read (up to a bound) so a client still sending sees the answer.
            if len <= 2 * IMPORT_MAX_BODY as u64 {
                let mut body = req.into_body();
                while let Some(Ok(_)) = body.frame().await {}
            }
            if let Some((_, s)) = session {
                return page(
                    &cs,
                    s.csrf_token,
                    PageOpts::message(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "The upload ({len} bytes) is over the limit of {IMPORT_MAX_BODY} \
                             bytes (each file at most {} bytes): nothing was imported.",
                            keel_certs::material::MAX_FILE_BYTES
                        ),
                    ),
                );
            }
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body of {len} bytes is over the limit of {IMPORT_MAX_BODY} bytes"),
            )
            .into_response()
        }
        _ => next.run(req).await,
    }
}

// ---- HTML: Security › Certificates ----

#[derive(Template)]
#[template(path = "certificates.html")]
struct CertificatesPage {
    csrf: String,
    error: Option<String>,
    notice: Option<String>,
    list: CertList,
    /// A CSR just made: (id, PEM).
    csr: Option<(String, String)>,
    /// Result of "check" before assigning: (id, targets as typed, warnings).
    check: Option<(String, String, Vec<CertWarning>)>,
}

const PAGE: &str = "/appliance/security/certificates";

struct PageOpts {
    status: StatusCode,
    error: Option<String>,
    notice: Option<String>,
    csr: Option<(String, String)>,
    check: Option<(String, String, Vec<CertWarning>)>,
}

impl PageOpts {
    fn ok() -> Self {
        Self {
            status: StatusCode::OK,
            error: None,
            notice: None,
            csr: None,
            check: None,
        }
    }
    fn error(e: &CertError) -> Self {
        let status = api_error_status(e);
        Self {
            status,
            error: Some(e.to_string()),
            ..Self::ok()
        }
    }
    fn message(status: StatusCode, error: String) -> Self {
        Self {
            status,
            error: Some(error),
            ..Self::ok()
        }
    }
    fn notice(n: impl Into<String>) -> Self {
        Self {
            notice: Some(n.into()),
            ..Self::ok()
        }
    }
}

fn api_error_status(e: &CertError) -> StatusCode {
    match e.kind() {
        ErrorKind::BadInput => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn page(cs: &CertsState, csrf: String, opts: PageOpts) -> Response {
    let (list, error) = match cs.store.list() {
        Ok(l) => (l, opts.error),
        Err(e) => (
            CertList {
                certificates: Vec::new(),
                assignments: Default::default(),
            },
            Some(e.to_string()),
        ),
    };
    let page = CertificatesPage {
        csrf,
        error,
        notice: opts.notice,
        list,
        csr: opts.csr,
        check: opts.check,
    };
    match page.render() {
        Ok(html) => (opts.status, Html(html)).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

#[utoipa::path(get, path = "/appliance/security/certificates", tag = "pages",
    operation_id = "certs_html_page",
    summary = "Security › Certificates",
    responses((status = 200, description = "The page", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page")),
    security(("session" = []), ("token" = [])))]
async fn html_page(State(cs): State<CertsShared>, headers: HeaderMap) -> Response {
    match cs.app.session(&headers) {
        Some((_, s)) => {
            let opts = match crate::failover::managed_by().await {
                Some(primary) => PageOpts::notice(format!(
                    "This node is the failover backup of {primary}: the certificates of the \
                     shared addresses are assigned there and come here with its sync."
                )),
                None => PageOpts::ok(),
            };
            page(&cs, s.csrf_token, opts)
        }
        None => Redirect::to("/appliance/").into_response(),
    }
}

fn to_login() -> Box<Response> {
    Box::new(Redirect::to("/appliance/").into_response())
}

fn forged() -> Box<Response> {
    Box::new(
        (
            StatusCode::FORBIDDEN,
            Html("The form expired or came from another site; nothing was changed."),
        )
            .into_response(),
    )
}

/// The session's CSRF token behind a form post, or the answer to give instead.
fn form_session(cs: &CertsState, headers: &HeaderMap, csrf: &str) -> Result<String, Box<Response>> {
    let Some((_, session)) = cs.app.session(headers) else {
        return Err(to_login());
    };
    if !session.form_csrf_matches(csrf) || !app::same_origin(headers) {
        return Err(forged());
    }
    Ok(session.csrf_token)
}

fn split_list(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

fn key_type(s: &str) -> KeyType {
    match s {
        "rsa-2048" => KeyType::Rsa2048,
        "rsa-3072" => KeyType::Rsa3072,
        _ => KeyType::EcdsaP256,
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    sans: String,
    #[serde(default)]
    key_type: String,
    #[serde(default)]
    days: String,
}

impl NewForm {
    fn request(&self) -> Result<NewCertRequest, CertError> {
        let days = match self.days.trim() {
            "" => None,
            d => Some(
                d.parse()
                    .map_err(|_| CertError::Invalid("validity: a number of days".into()))?,
            ),
        };
        Ok(NewCertRequest {
            label: self.label.clone(),
            common_name: String::new(),
            sans: split_list(&self.sans),
            key_type: key_type(&self.key_type),
            days,
            organization: String::new(),
        })
    }
}

#[utoipa::path(post, path = "/appliance/security/certificates/self-signed", tag = "forms",
    operation_id = "certs_form_self_signed",
    summary = "Security › Certificates: Create self-signed",
    request_body(content = NewForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page with the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything", content_type = "text/html", body = String),
        (status = 422, description = "The page with the reason", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn form_self_signed(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    Form(f): Form<NewForm>,
) -> Response {
    let csrf = match form_session(&cs, &headers, &f.csrf) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let result = match f.request() {
        Ok(req) => blocking(&cs, move |s| s.create_self_signed(&req)).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(e) => page(
            &cs,
            csrf,
            PageOpts::notice(format!("Created \"{}\".", e.label)),
        ),
        Err(e) => page(&cs, csrf, PageOpts::error(&e)),
    }
}

#[utoipa::path(post, path = "/appliance/security/certificates/csr", tag = "forms",
    operation_id = "certs_form_csr",
    summary = "Security › Certificates: Create request (CSR)",
    request_body(content = NewForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page with the request to give to the CA", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything", content_type = "text/html", body = String),
        (status = 422, description = "The page with the reason", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn form_csr(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    Form(f): Form<NewForm>,
) -> Response {
    let csrf = match form_session(&cs, &headers, &f.csrf) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let result = match f.request() {
        Ok(req) => blocking(&cs, move |s| s.create_csr(&req)).await,
        Err(e) => Err(e),
    };
    match result {
        Ok((e, pem)) => page(
            &cs,
            csrf,
            PageOpts {
                csr: Some((e.id.clone(), pem)),
                ..PageOpts::notice(format!(
                    "Request for \"{}\" created: give it to your CA, then import the answer.",
                    e.label
                ))
            },
        ),
        Err(e) => page(&cs, csrf, PageOpts::error(&e)),
    }
}

/// The import forms as an older page sent them: pasted text only, urlencoded.
#[derive(Deserialize, utoipa::ToSchema)]
struct PasteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    pem: String,
    #[serde(default)]
    passphrase: String,
}

// Only for the OpenAPI document: `read_upload` reads these parts one by one into
// an `Upload`.
/// The Import and Answer forms with files (`multipart/form-data`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct UploadForm {
    csrf: String,
    /// Import only.
    label: Option<String>,
    /// Of an encrypted key or PKCS#12 file.
    passphrase: Option<String>,
    /// Pasted PEM text.
    pem: Option<String>,
    /// Certificate, key, chain or PKCS#12 files.
    #[schema(value_type = Option<Vec<String>>, format = Binary)]
    files: Vec<Vec<u8>>,
}

/// What an import form sent.
#[derive(Default)]
struct Upload {
    label: String,
    passphrase: Option<String>,
    /// (name, bytes) of the chosen files and the pasted text, as the form sent them.
    files: Vec<(String, Vec<u8>)>,
}

impl Upload {
    fn paste(&mut self, text: String) {
        if !text.trim().is_empty() {
            self.files.push(("pasted text".into(), text.into_bytes()));
        }
    }

    fn passphrase(&mut self, p: String) {
        if !p.is_empty() {
            self.passphrase = Some(p);
        }
    }
}

/// The name of an uploaded file for messages: the browser's, without a path
/// (some send one), printable, not too long.
fn upload_name(name: Option<&str>, n: usize) -> String {
    let base = name
        .unwrap_or("")
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect::<String>();
    if base.trim().is_empty() {
        format!("file {n}")
    } else {
        base
    }
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .get(..19)
                .is_some_and(|m| m.eq_ignore_ascii_case("multipart/form-data"))
        })
}

/// Reads an import form (files and pasted text, `multipart/form-data`; or pasted
/// text alone, urlencoded) after checking the session. Nothing comes back to be
/// stored unless the form's CSRF field matched the session's: a missing or wrong
/// one answers 403. Returns the session's CSRF token for the page.
async fn read_upload(cs: &CertsState, req: Request) -> Result<(String, Upload), Box<Response>> {
    let Some((_, session)) = cs.app.session(req.headers()) else {
        return Err(to_login());
    };
    if !app::same_origin(req.headers()) {
        return Err(forged());
    }
    let csrf = session.csrf_token.clone();
    let unreadable = |status: StatusCode, why: String| {
        Box::new(page(
            cs,
            csrf.clone(),
            PageOpts::message(
                status,
                format!("The upload could not be read ({why}): nothing was imported."),
            ),
        ))
    };
    let mut up = Upload::default();
    if !is_multipart(req.headers()) {
        let Form(f) = Form::<PasteForm>::from_request(req, &())
            .await
            .map_err(|r| unreadable(r.status(), r.body_text()))?;
        if !session.form_csrf_matches(&f.csrf) {
            return Err(forged());
        }
        up.label = f.label;
        up.passphrase(f.passphrase);
        up.paste(f.pem);
        return Ok((csrf, up));
    }
    let failed = |e: MultipartError| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => unreadable(
            e.status(),
            format!("over the limit of {IMPORT_MAX_BODY} bytes"),
        ),
        status => unreadable(status, e.body_text()),
    };
    let mut form = Multipart::from_request(req, &())
        .await
        .map_err(|r| unreadable(r.status(), r.body_text()))?;
    let mut checked = false;
    while let Some(field) = form.next_field().await.map_err(failed)? {
        match field.name().unwrap_or("") {
            "csrf" => {
                if !session.form_csrf_matches(&field.text().await.map_err(failed)?) {
                    return Err(forged());
                }
                checked = true;
            }
            "label" => up.label = field.text().await.map_err(failed)?,
            "passphrase" => up.passphrase(field.text().await.map_err(failed)?),
            "pem" => up.paste(field.text().await.map_err(failed)?),
            "files" => {
                let chosen = field.file_name().is_some_and(|n| !n.is_empty());
                let name = upload_name(field.file_name(), up.files.len() + 1);
                let data = field.bytes().await.map_err(failed)?;
                // An empty file input still sends a part, without a name.
                if chosen || !data.is_empty() {
                    up.files.push((name, data.to_vec()));
                }
            }
            // A button's name, say: nothing to read.
            _ => {}
        }
    }
    if !checked {
        return Err(forged());
    }
    Ok((csrf, up))
}

fn nothing_uploaded() -> CertError {
    CertError::Invalid("nothing to import: choose files or paste PEM text".into())
}

#[utoipa::path(post, path = "/appliance/security/certificates/import", tag = "forms",
    operation_id = "certs_form_import",
    summary = "Security › Certificates: Import",
    description = "Files and pasted PEM text (`multipart/form-data`), or pasted text alone \
        (urlencoded). At most 8 files of 256 KiB each, 3 MiB in all.",
    request_body(content((UploadForm = "multipart/form-data"), (PasteForm = "application/x-www-form-urlencoded"))),
    responses((status = 200, description = "The page with the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything", content_type = "text/html", body = String),
        (status = 409, description = "Refused by the store's state", content_type = "text/html", body = String),
        (status = 413, description = "Over the size limits: the page says so, nothing imported", content_type = "text/html", body = String),
        (status = 422, description = "The page with the reason", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn form_import(State(cs): State<CertsShared>, req: Request) -> Response {
    let (csrf, up) = match read_upload(&cs, req).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if up.files.is_empty() {
        return page(&cs, csrf, PageOpts::error(&nothing_uploaded()));
    }
    let Upload {
        label,
        passphrase,
        files,
    } = up;
    let result = blocking(&cs, move |s| {
        s.import(&label, &inputs(&files), passphrase.as_deref())
    })
    .await;
    match result.and_then(|e| cs.reload().map(|_| e)) {
        Ok(e) => page(
            &cs,
            csrf,
            PageOpts::notice(format!("Imported \"{}\".", e.label)),
        ),
        Err(e) => page(&cs, csrf, PageOpts::error(&e)),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct AssignForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    targets: String,
    #[serde(default)]
    default: Option<String>,
    /// `check` (show warnings first) or `assign`.
    #[serde(default)]
    action: String,
}

/// Splits typed targets into addresses and host names.
fn targets(text: &str, default: bool) -> CertTargets {
    let mut t = CertTargets {
        default,
        ..Default::default()
    };
    for item in split_list(text) {
        match item.parse() {
            Ok(ip) => t.ips.push(ip),
            Err(_) => t.hostnames.push(item),
        }
    }
    t
}

#[utoipa::path(post, path = "/appliance/security/certificates/{id}/assign", tag = "forms",
    operation_id = "certs_form_assign",
    summary = "Security › Certificates: Check or Assign",
    description = "`action=check` shows what assigning would warn about and changes nothing; \
        `action=assign` assigns.",
    params(("id" = String, Path, description = "The certificate's id (12 hex digits, or `builtin`)")),
    request_body(content = AssignForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page with the warnings (check) or the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything", content_type = "text/html", body = String),
        (status = 404, description = "No such certificate", content_type = "text/html", body = String),
        (status = 409, description = "Refused by the store's state", content_type = "text/html", body = String),
        (status = 422, description = "The page with the reason", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn form_assign(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<AssignForm>,
) -> Response {
    let csrf = match form_session(&cs, &headers, &f.csrf) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let t = targets(&f.targets, f.default.is_some());
    if f.action == "check" {
        return match cs.store.check(&id, &t) {
            Ok(w) => page(
                &cs,
                csrf,
                PageOpts {
                    check: Some((id, f.targets, w)),
                    ..PageOpts::ok()
                },
            ),
            Err(e) => page(&cs, csrf, PageOpts::error(&e)),
        };
    }
    if let Err(e) = refuse_shared_on_backup(&t).await {
        return page(&cs, csrf, PageOpts::error(&CertError::Invalid(e.message)));
    }
    match cs.store.assign(&id, &t).and_then(|_| cs.reload()) {
        Ok(()) => page(
            &cs,
            csrf,
            PageOpts::notice("Assigned; new connections get it now."),
        ),
        Err(e) => page(&cs, csrf, PageOpts::error(&e)),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct UnassignForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    target: String,
}

#[utoipa::path(post, path = "/appliance/security/certificates/unassign", tag = "forms",
    operation_id = "certs_form_unassign",
    summary = "Security › Certificates: Unassign",
    request_body(content = UnassignForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page with the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything", content_type = "text/html", body = String),
        (status = 409, description = "Refused by the store's state", content_type = "text/html", body = String),
        (status = 422, description = "The page with the reason", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn form_unassign(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    Form(f): Form<UnassignForm>,
) -> Response {
    let csrf = match form_session(&cs, &headers, &f.csrf) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let t = match f.target.split_once(':') {
        Some(("ip", v)) => targets(v, false),
        Some(("host", v)) => targets(v, false),
        _ if f.target == "default" => targets("", true),
        _ => {
            return page(
                &cs,
                csrf,
                PageOpts::error(&CertError::Invalid("unknown target".into())),
            )
        }
    };
    if let Err(e) = refuse_shared_on_backup(&t).await {
        return page(&cs, csrf, PageOpts::error(&CertError::Invalid(e.message)));
    }
    match cs.store.unassign(&t).and_then(|_| cs.reload()) {
        Ok(()) => page(
            &cs,
            csrf,
            PageOpts::notice(format!("{} no longer assigned.", f.target)),
        ),
        Err(e) => page(&cs, csrf, PageOpts::error(&e)),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct DeleteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    replacement: String,
}

#[utoipa::path(post, path = "/appliance/security/certificates/{id}/delete", tag = "forms",
    operation_id = "certs_form_delete",
    summary = "Security › Certificates: Delete",
    params(("id" = String, Path, description = "The certificate's id (12 hex digits, or `builtin`)")),
    request_body(content = DeleteForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The page with the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything", content_type = "text/html", body = String),
        (status = 404, description = "No such certificate", content_type = "text/html", body = String),
        (status = 409, description = "Refused by the store's state", content_type = "text/html", body = String),
        (status = 422, description = "The page with the reason", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn form_delete(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<DeleteForm>,
) -> Response {
    let csrf = match form_session(&cs, &headers, &f.csrf) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let rep = (!f.replacement.is_empty()).then_some(f.replacement);
    match cs
        .store
        .delete(&id, rep.as_deref())
        .and_then(|_| cs.reload())
    {
        Ok(()) => page(&cs, csrf, PageOpts::notice("Deleted.")),
        Err(e) => page(&cs, csrf, PageOpts::error(&e)),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ExportForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    format: String,
    #[serde(default)]
    include_key: Option<String>,
    #[serde(default)]
    passphrase: String,
}

#[utoipa::path(post, path = "/appliance/security/certificates/{id}/export", tag = "forms",
    operation_id = "certs_form_export",
    summary = "Security › Certificates: Export",
    description = "Answers the file itself; the page only with a refusal.",
    params(("id" = String, Path, description = "The certificate's id (12 hex digits, or `builtin`)")),
    request_body(content = ExportForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The file", content(("application/x-pem-file"), ("application/x-pkcs12"))),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything", content_type = "text/html", body = String),
        (status = 404, description = "No such certificate", content_type = "text/html", body = String),
        (status = 409, description = "Refused by the store's state", content_type = "text/html", body = String),
        (status = 422, description = "The page with the reason", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn form_export(
    State(cs): State<CertsShared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ExportForm>,
) -> Response {
    let csrf = match form_session(&cs, &headers, &f.csrf) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let req = CertExportRequest {
        format: if f.format == "pkcs12" {
            ExportFormat::Pkcs12
        } else {
            ExportFormat::Pem
        },
        include_key: f.include_key.is_some(),
        include_chain: true,
        passphrase: (!f.passphrase.is_empty()).then_some(f.passphrase),
    };
    match blocking(&cs, move |s| s.export(&id, &req)).await {
        Ok(out) => exported(out),
        Err(e) => page(&cs, csrf, PageOpts::error(&e)),
    }
}

#[utoipa::path(post, path = "/appliance/security/certificates/{id}/answer", tag = "forms",
    operation_id = "certs_form_answer",
    summary = "Security › Certificates: Import the CA's answer",
    description = "Like Import (same limits), for the pending request `id`.",
    params(("id" = String, Path, description = "The certificate's id (12 hex digits, or `builtin`)")),
    request_body(content((UploadForm = "multipart/form-data"), (PasteForm = "application/x-www-form-urlencoded"))),
    responses((status = 200, description = "The page with the outcome", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the login page"),
        (status = 403, description = "Form expired or from another site, or the role may not change anything", content_type = "text/html", body = String),
        (status = 404, description = "No such certificate", content_type = "text/html", body = String),
        (status = 409, description = "Refused by the store's state", content_type = "text/html", body = String),
        (status = 413, description = "Over the size limits: the page says so, nothing imported", content_type = "text/html", body = String),
        (status = 422, description = "The page with the reason", content_type = "text/html", body = String)),
    security(("session" = [], "form_csrf" = [])))]
async fn form_answer(
    State(cs): State<CertsShared>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let (csrf, up) = match read_upload(&cs, req).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if up.files.is_empty() {
        return page(&cs, csrf, PageOpts::error(&nothing_uploaded()));
    }
    let Upload {
        passphrase, files, ..
    } = up;
    let result = blocking(&cs, move |s| {
        s.answer(&id, &inputs(&files), passphrase.as_deref())
    })
    .await;
    match result.and_then(|e| cs.reload().map(|_| e)) {
        Ok(e) => page(
            &cs,
            csrf,
            PageOpts::notice(format!("The CA's answer completed \"{}\".", e.label)),
        ),
        Err(e) => page(&cs, csrf, PageOpts::error(&e)),
    }
}

const API: &str = "/appliance/api/v1/certs";

/// The store's HTTPS routes, full paths, over the store's state.
pub fn router(cs: CertsShared) -> OpenApiRouter {
    let big = || DefaultBodyLimit::max(IMPORT_MAX_BODY);
    OpenApiRouter::new()
        .routes(routes!(api_list))
        .routes(routes!(api_import).layer(big()))
        .routes(routes!(api_self_signed))
        .routes(routes!(api_csr))
        .routes(routes!(api_unassign))
        .routes(routes!(api_get))
        .routes(routes!(api_csr_pem))
        .routes(routes!(api_cert_pem))
        .routes(routes!(api_answer).layer(big()))
        .routes(routes!(api_export))
        .routes(routes!(api_check))
        .routes(routes!(api_assign))
        .routes(routes!(api_delete))
        .routes(routes!(html_page))
        .routes(routes!(form_self_signed))
        .routes(routes!(form_csr))
        .routes(routes!(form_import).layer(big()))
        .routes(routes!(form_unassign))
        .routes(routes!(form_assign))
        .routes(routes!(form_delete))
        .routes(routes!(form_export))
        .routes(routes!(form_answer).layer(big()))
        .layer(DefaultBodyLimit::max(app::MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            cs.clone(),
            refuse_oversized,
        ))
        .layer(axum::middleware::map_response(app::security_headers))
        .with_state(cs)
}

// ---- Local API (Unix socket, root only: keelctl) ----
// No session: the socket's permissions decide who may call.

async fn local_list(State(cs): State<CertsShared>) -> Result<Json<CertList>, ApiError> {
    Ok(Json(cs.store.list().map_err(api_error)?))
}

async fn local_import(
    State(cs): State<CertsShared>,
    JsonBody(req): JsonBody<CertImportRequest>,
) -> Result<Json<CertificateEntry>, ApiError> {
    let d = decode(req)?;
    let entry = blocking(&cs, move |s| {
        s.import(&d.label, &inputs(&d.files), d.passphrase.as_deref())
    })
    .await
    .map_err(api_error)?;
    reload(&cs)?;
    Ok(Json(entry))
}

async fn local_answer(
    State(cs): State<CertsShared>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CertImportRequest>,
) -> Result<Json<CertificateEntry>, ApiError> {
    let d = decode(req)?;
    let entry = blocking(&cs, move |s| {
        s.answer(&id, &inputs(&d.files), d.passphrase.as_deref())
    })
    .await
    .map_err(api_error)?;
    reload(&cs)?;
    Ok(Json(entry))
}

async fn local_self_signed(
    State(cs): State<CertsShared>,
    JsonBody(req): JsonBody<NewCertRequest>,
) -> Result<Json<CertificateEntry>, ApiError> {
    Ok(Json(
        blocking(&cs, move |s| s.create_self_signed(&req))
            .await
            .map_err(api_error)?,
    ))
}

async fn local_csr(
    State(cs): State<CertsShared>,
    JsonBody(req): JsonBody<NewCertRequest>,
) -> Result<Json<CsrCreated>, ApiError> {
    let (certificate, csr_pem) = blocking(&cs, move |s| s.create_csr(&req))
        .await
        .map_err(api_error)?;
    Ok(Json(CsrCreated {
        certificate,
        csr_pem,
    }))
}

async fn local_export(
    State(cs): State<CertsShared>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CertExportRequest>,
) -> Result<Json<keel_api::CertExportFile>, ApiError> {
    let out = blocking(&cs, move |s| s.export(&id, &req))
        .await
        .map_err(api_error)?;
    Ok(Json(keel_api::CertExportFile {
        file_name: out.file_name,
        content_type: out.content_type.to_owned(),
        data_base64: base64::engine::general_purpose::STANDARD.encode(&out.bytes),
    }))
}

async fn local_check(
    State(cs): State<CertsShared>,
    Path(id): Path<String>,
    JsonBody(t): JsonBody<CertTargets>,
) -> Result<Json<CertCheck>, ApiError> {
    let warnings = cs.store.check(&id, &t).map_err(api_error)?;
    Ok(Json(CertCheck { warnings }))
}

async fn local_assign(
    State(cs): State<CertsShared>,
    Path(id): Path<String>,
    JsonBody(t): JsonBody<CertTargets>,
) -> Result<Json<CertList>, ApiError> {
    let list = cs.store.assign(&id, &t).map_err(api_error)?;
    reload(&cs)?;
    Ok(Json(list))
}

async fn local_unassign(
    State(cs): State<CertsShared>,
    JsonBody(t): JsonBody<CertTargets>,
) -> Result<Json<CertList>, ApiError> {
    let list = cs.store.unassign(&t).map_err(api_error)?;
    reload(&cs)?;
    Ok(Json(list))
}

async fn local_delete(
    State(cs): State<CertsShared>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CertDeleteRequest>,
) -> Result<StatusCode, ApiError> {
    cs.store
        .delete(&id, req.replacement.as_deref())
        .map_err(api_error)?;
    reload(&cs)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The certificate routes of the console's local socket (for keelctl).
pub fn local_router(cs: CertsShared) -> Router {
    Router::new()
        .route("/certs", get(local_list))
        .route("/certs/import", post(local_import))
        .route("/certs/self-signed", post(local_self_signed))
        .route("/certs/csr", post(local_csr))
        .route("/certs/unassign", post(local_unassign))
        .route("/certs/{id}/answer", post(local_answer))
        .route("/certs/{id}/export", post(local_export))
        .route("/certs/{id}/check", post(local_check))
        .route("/certs/{id}/assign", post(local_assign))
        .route("/certs/{id}/delete", post(local_delete))
        .layer(DefaultBodyLimit::max(IMPORT_MAX_BODY))
        .with_state(cs)
}
