//! keel-console as a library, so tests drive the real routers and TLS server.

pub mod app;
pub mod auth;
pub mod error;
pub mod status;
pub mod tls;
pub mod web;
