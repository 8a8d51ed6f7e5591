//! utoipa-axum's router with the document made on demand. `utoipa_axum::routes!`
//! builds every operation (schemas and all) while the router is put together: a
//! few MiB of code run once at startup and then resident for nothing, since the
//! document is read rarely. Here a route is registered from the same annotation
//! (its path and methods), and the rest of the annotation — the operation — is
//! kept as a function that runs when the document is first asked for.

use axum::handler::Handler;
use axum::routing::{MethodRouter, Route};
use axum::Router;
use tower::{Layer, Service};
use utoipa::openapi::path::Paths;
use utoipa::openapi::{schema::Schema, OpenApi, RefOr};

/// Adds one handler's operation (and the schemas it names) to a document.
pub type DocFn = fn(&mut Paths, &mut Vec<(String, RefOr<Schema>)>);

/// One path's handlers, from [`routes!`](crate::openapi::routes).
pub struct MethodRoutes<S> {
    pub path: String,
    pub router: MethodRouter<S>,
    pub docs: Vec<DocFn>,
}

impl<S: Clone + Send + Sync + 'static> MethodRoutes<S> {
    /// A layer on these handlers only (e.g. a larger body limit).
    pub fn layer<L>(self, layer: L) -> Self
    where
        L: Layer<Route> + Clone + Send + Sync + 'static,
        L::Service: Service<axum::extract::Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<axum::extract::Request>>::Response:
            axum::response::IntoResponse + 'static,
        <L::Service as Service<axum::extract::Request>>::Error:
            Into<std::convert::Infallible> + 'static,
        <L::Service as Service<axum::extract::Request>>::Future: Send + 'static,
    {
        Self {
            router: self.router.layer(layer),
            ..self
        }
    }
}

/// An axum router and the operations of its documented routes, each under the
/// prefix it was nested at.
pub struct OpenApiRouter<S = ()> {
    router: Router<S>,
    docs: Vec<(String, DocFn)>,
}

impl<S: Clone + Send + Sync + 'static> Default for OpenApiRouter<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone + Send + Sync + 'static> OpenApiRouter<S> {
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            docs: Vec::new(),
        }
    }

    /// Documented handlers of one path.
    pub fn routes(mut self, routes: MethodRoutes<S>) -> Self {
        let path = if routes.path.is_empty() {
            "/"
        } else {
            &routes.path
        };
        self.router = self.router.route(path, routes.router);
        self.docs
            .extend(routes.docs.into_iter().map(|d| (String::new(), d)));
        self
    }

    /// An undocumented route: only for aliases of documented ones.
    pub fn route(self, path: &str, method_router: MethodRouter<S>) -> Self {
        Self {
            router: self.router.route(path, method_router),
            ..self
        }
    }

    pub fn nest(mut self, prefix: &str, other: OpenApiRouter<S>) -> Self {
        self.router = self.router.nest(prefix, other.router);
        self.docs
            .extend(other.docs.into_iter().map(|(p, d)| (nested(prefix, &p), d)));
        self
    }

    pub fn merge(mut self, other: OpenApiRouter<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.docs.extend(other.docs);
        self
    }

    pub fn fallback<H, T>(self, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        Self {
            router: self.router.fallback(handler),
            ..self
        }
    }

    pub fn layer<L>(self, layer: L) -> Self
    where
        L: Layer<Route> + Clone + Send + Sync + 'static,
        L::Service: Service<axum::extract::Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<axum::extract::Request>>::Response:
            axum::response::IntoResponse + 'static,
        <L::Service as Service<axum::extract::Request>>::Error:
            Into<std::convert::Infallible> + 'static,
        <L::Service as Service<axum::extract::Request>>::Future: Send + 'static,
    {
        Self {
            router: self.router.layer(layer),
            ..self
        }
    }

    pub fn with_state<S2>(self, state: S) -> OpenApiRouter<S2> {
        OpenApiRouter {
            router: self.router.with_state(state),
            docs: self.docs,
        }
    }

    /// The router, and what makes its document.
    pub fn split_for_parts(self) -> (Router<S>, Operations) {
        (self.router, Operations(self.docs))
    }
}

/// The operations of a router, not made yet.
pub struct Operations(Vec<(String, DocFn)>);

impl Operations {
    /// Adds every operation to `doc`, nested paths under their prefix.
    pub fn add_to(&self, doc: &mut OpenApi) {
        let mut schemas = Vec::new();
        for (prefix, add) in &self.0 {
            let mut paths = Paths::new();
            add(&mut paths, &mut schemas);
            for (path, item) in paths.paths {
                let path = nested(prefix, &path);
                match doc.paths.paths.get_mut(&path) {
                    Some(it) => it.merge_operations(item),
                    None => {
                        doc.paths.paths.insert(path, item);
                    }
                }
            }
        }
        doc.components
            .get_or_insert_with(Default::default)
            .schemas
            .extend(schemas);
    }
}

/// `prefix` + `path` as axum nests them (`/api` + `/` is `/api`).
fn nested(prefix: &str, path: &str) -> String {
    if prefix.is_empty() {
        return path.to_owned();
    }
    match path {
        "" | "/" => prefix.to_owned(),
        p => format!("{}{p}", prefix.trim_end_matches('/')),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nested_paths_compose_as_axum_nests_them() {
        assert_eq!(super::nested("", "/a"), "/a");
        assert_eq!(super::nested("/api", "/"), "/api");
        assert_eq!(super::nested("/api", "/x/{id}"), "/api/x/{id}");
    }
}
