//! The console's OpenAPI 3 document, generated from the code: every route is
//! registered with `utoipa_axum::routes!` from the `#[utoipa::path]` annotation
//! that documents it, so a route cannot exist without its entry (and the security
//! checks in tests/openapi.rs, which walk the document, cannot miss it).
//!
//! Conventions every annotation follows (the tests rely on them):
//! - `tag`: the area (`time`, `net`, ...) for the JSON API under
//!   `/appliance/api/v1`; `pages` for HTML pages (GET), `forms` for the HTML
//!   forms they post to.
//! - `security`: what the route accepts. Reads: `(("session" = []), ("token" = []))`.
//!   JSON changes: `(("session" = [], "csrf" = []), ("token" = []))`. Form posts:
//!   `(("session" = [], "form_csrf" = []))` (the CSRF token is the form's `csrf`
//!   field; tokens are API-only). No `security` at all means public (login, setup,
//!   health): the tests hold that list, so a new public route is a conscious act.

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::app::Shared;
use crate::error::ApiError;

mod router;

pub use router::{DocFn, MethodRoutes, OpenApiRouter, Operations};

/// `utoipa_axum::routes!`, with the operations made only when the document is
/// asked for (see `router`): the handlers of one path, each with its
/// `#[utoipa::path]` annotation.
macro_rules! routes {
    ( $( $handler:ident ),+ $(,)? ) => {{
        #[allow(unused_imports)]
        use utoipa_axum::PathItemExt as _;
        // One path for all: axum routes them on it together.
        let mut path = Vec::<String>::new();
        let mut router = axum::routing::MethodRouter::new();
        let mut docs: Vec<$crate::openapi::DocFn> = Vec::new();
        $(
            path.push(utoipa_axum::routes!(@path [path()] of $handler));
            for method in utoipa_axum::routes!(@path [methods()] of $handler) {
                router = router.on(method.to_method_filter(), $handler);
            }
            docs.push(|paths, mut schemas| {
                let (path, item, types) = utoipa_axum::routes!(@resolve_types $handler : schemas);
                paths.add_path_operation(&path, types, item);
            });
        )+
        $crate::openapi::MethodRoutes { path: path.pop().unwrap_or_default(), router, docs }
    }};
}
pub(crate) use routes;

/// Where the document is served.
pub const PATH: &str = "/appliance/api/v1/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keel appliance console",
        description = "The /appliance console of a Keel appliance: its JSON API under \
            /appliance/api/v1 (tags other than `pages` and `forms`), and the HTML pages \
            and forms of the console itself.",
    ),
    modifiers(&SecuritySchemes),
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::app::SESSION_COOKIE,
                "Session cookie from POST /appliance/api/v1/login or the login form",
            ))),
        );
        components.add_security_scheme(
            "csrf",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-CSRF-Token",
                "The CSRF token the login answered; every state-changing call with a \
                 session sends it",
            ))),
        );
        components.add_security_scheme(
            "form_csrf",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "csrf",
                "The form's hidden `csrf` field (sent in the urlencoded or multipart body, \
                 not the query)",
            ))),
        );
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("keel_<id>_<secret>")
                    .description(Some(
                        "An API token (Users › My account › API tokens); no CSRF token needed",
                    ))
                    .build(),
            ),
        );
    }
}

/// The empty document the routers fill in (title, version, security schemes).
pub fn base() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc
}

/// What the annotations leave out and OpenAPI requires, filled in once the routes
/// are together: a unique `operationId` per operation (handlers of different
/// modules share names such as `api_check`), made from method and path; and a
/// description for every response, its status's reason phrase where the
/// annotation gave none.
pub fn finish(doc: &mut utoipa::openapi::OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
            ("patch", &mut item.patch),
            ("head", &mut item.head),
        ];
        for (method, op) in ops {
            let Some(op) = op.as_mut() else { continue };
            op.operation_id = Some(operation_id(method, path));
            for (status, response) in op.responses.responses.iter_mut() {
                if let utoipa::openapi::RefOr::T(r) = response {
                    if r.description.is_empty() {
                        r.description = reason(status);
                    }
                }
            }
        }
    }
}

/// `post /appliance/api/v1/certs/{id}/assign` → `post_api_v1_certs_id_assign`.
fn operation_id(method: &str, path: &str) -> String {
    let rest = path.strip_prefix("/appliance").unwrap_or(path);
    let mut id = method.to_owned();
    for part in rest.split('/').filter(|p| !p.is_empty()) {
        id.push('_');
        id.extend(part.chars().filter(|c| !matches!(c, '{' | '}')).map(|c| {
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '_'
            }
        }));
    }
    id
}

fn reason(status: &str) -> String {
    status
        .parse::<u16>()
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Answer")
        .to_owned()
}

/// The document of `operations`, finished.
pub fn document(operations: &Operations) -> utoipa::openapi::OpenApi {
    let mut doc = base();
    operations.add_to(&mut doc);
    finish(&mut doc);
    doc
}

/// `GET /appliance/api/v1/openapi.json`: made and serialized at the first request,
/// then kept. Only to a session or token, like everything but the index: the
/// document names the version.
pub fn route(state: Shared, operations: Operations) -> Router {
    let operations = Arc::new(operations);
    let json: Arc<std::sync::OnceLock<Arc<[u8]>>> = Default::default();
    Router::new()
        .route(
            PATH,
            get(
                move |axum::extract::State(st): axum::extract::State<Shared>,
                      headers: HeaderMap| {
                    let (operations, json) = (operations.clone(), json.clone());
                    async move {
                        if st.session(&headers).is_none() {
                            return ApiError::unauthorized().into_response();
                        }
                        let bytes = json.get_or_init(|| {
                            serde_json::to_vec(&document(&operations))
                                .expect("an OpenAPI document serializes")
                                .into()
                        });
                        serve(bytes.clone())
                    }
                },
            ),
        )
        .with_state(state)
}

fn serve(json: Arc<[u8]>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json.to_vec(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_come_from_method_and_path() {
        assert_eq!(
            operation_id("post", "/appliance/api/v1/certs/{id}/assign"),
            "post_api_v1_certs_id_assign"
        );
        assert_eq!(
            operation_id("get", "/appliance/status/audit.csv"),
            "get_status_audit_csv"
        );
        assert_eq!(reason("404"), "Not Found");
    }
}
