//! What every page shares: the stylesheet (`/appliance/static/keel.css`, compiled
//! in) and the header's appliance name and version. Templates call
//! `crate::layout::appliance_name()` and `crate::layout::version()` themselves, so no
//! handler passes them along.

use std::sync::OnceLock;

use crate::openapi::{routes, OpenApiRouter};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::app::Shared;

/// The console's only stylesheet: the CSP allows no inline style.
pub const STYLESHEET: &str = include_str!("../static/keel.css");
pub const STYLESHEET_PATH: &str = "/appliance/static/keel.css";

/// A digest of the stylesheet: its ETag and the `?v=` of the pages' link, so a
/// new build's stylesheet is fetched at once while an unchanged one stays cached.
pub fn stylesheet_version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        // SipHash with fixed keys: the same text gives the same value in every run.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        STYLESHEET.hash(&mut h);
        format!("{:016x}", h.finish())
    })
}

/// The appliance's name for the header: its hostname now (netd may change it).
pub fn appliance_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "keel".into())
}

/// The running version for the header.
pub fn version() -> &'static str {
    crate::status::running_version()
}

#[utoipa::path(get, path = STYLESHEET_PATH, tag = "pages",
    summary = "The console's stylesheet",
    description = "Public. Cached for a day, then revalidated by its ETag; the pages link it \
        with that ETag as `?v=`, so a new build's stylesheet is fetched at once.",
    responses((status = 200, description = "The stylesheet", content_type = "text/css", body = String),
        (status = 304, description = "Unchanged (If-None-Match holds its ETag)")))]
async fn stylesheet(headers: HeaderMap) -> Response {
    let etag = format!("\"{}\"", stylesheet_version());
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if cached {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            )],
            STYLESHEET,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    // Not secret: a day in the browser's cache, revalidated by ETag after that.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    resp
}

pub fn router() -> OpenApiRouter<Shared> {
    OpenApiRouter::new().routes(routes!(stylesheet))
}
