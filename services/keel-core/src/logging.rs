//! Logging to stderr; under systemd, stderr goes to the (volatile) journal.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `KEEL_LOG` overrides the filter (e.g. `debug`).
pub fn init(service: &str) {
    // hickory-server logs every DNS query at info: on a public DNS swing listener
    // that would let anyone fill the journal.
    let filter = EnvFilter::try_from_env("KEEL_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,hickory_server=warn"));
    // The journal stamps every line itself; a second timestamp is noise there.
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if under_journal {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
    tracing::debug!(service, "logging started");
}
