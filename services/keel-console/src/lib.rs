//! keel-console as a library, so tests drive the real routers and TLS server.

pub mod access;
pub mod app;
pub mod audit;
pub mod auth;
pub mod boot;
pub mod certs;
pub mod error;
pub mod failover;
pub mod layout;
pub mod local_service;
pub mod net;
pub mod openapi;
pub mod status;
pub mod time;
pub mod tls;
pub mod tokens;
pub mod update;
pub mod users;
pub mod web;
