//! Shared foundation of the Keel services.

pub mod local_api;
pub mod logging;
pub mod notify;
pub mod paths;
pub mod store;

pub use store::StoreError;
