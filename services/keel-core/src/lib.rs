//! Shared foundation of the Keel services.

pub mod audit;
pub mod format;
pub mod local_api;
pub mod logging;
pub mod notify;
pub mod paths;
pub mod release;
pub mod store;
pub mod tty;

pub use store::StoreError;
