//! Default locations on the appliance. Every service takes these as flag defaults
//! so it also runs outside the image (tests, laptops).

/// Persistent, writable state. Everything that survives a reboot lives below it.
pub const DATA_DIR: &str = "/data";
/// Per-service runtime directories with the local API sockets.
pub const RUN_DIR: &str = "/run/keel";
/// Where the unprivileged console drops power requests that root carries out.
pub const REQUESTS_DIR: &str = "/run/keel/requests";

/// The local API socket of a service, e.g. `/run/keel/console/api.sock`.
pub fn service_socket(service: &str) -> std::path::PathBuf {
    std::path::Path::new(RUN_DIR).join(service).join("api.sock")
}
