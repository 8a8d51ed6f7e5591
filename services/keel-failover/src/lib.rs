//! keel-failover: a primary/backup pair of appliances sharing service addresses.
//! See README.md for the wire format, the takeover rule and why it cannot split.

pub mod api;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod engine;
pub mod kernel;
pub mod pair;
pub mod raw;
pub mod sync;
pub mod wire;
