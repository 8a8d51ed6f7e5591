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

/// `GET /appliance/api/v1/openapi.json`, the finished document serialized once.
/// Only to a session or token, like everything but the index: the document names
/// the version.
pub fn route(state: Shared, doc: &utoipa::openapi::OpenApi) -> Router {
    let json: Arc<[u8]> = serde_json::to_vec(doc)
        .expect("an OpenAPI document serializes")
        .into();
    Router::new()
        .route(
            PATH,
            get(
                move |axum::extract::State(st): axum::extract::State<Shared>,
                      headers: HeaderMap| {
                    let json = json.clone();
                    async move {
                        if st.session(&headers).is_none() {
                            return ApiError::unauthorized().into_response();
                        }
                        serve(json)
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
