//! Logging to stderr; under systemd, stderr goes to the (volatile) journal.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// hickory-server logs every DNS query at info: on a public DNS swing listener
/// that would let anyone fill the journal.
const DEFAULT_FILTER: &str = "info,hickory_server=warn";

/// The filter `KEEL_LOG` asks for (`debug`, `warn,keel_netd=trace`), or the default
/// when it is unset or not understood. Per-target levels are all a service needs:
/// tracing-subscriber's `EnvFilter` would add a regex engine (~0.5 MiB of text
/// mapped into every keel process) for span-field matching nobody uses.
fn filter(keel_log: Option<&str>) -> Targets {
    keel_log
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| DEFAULT_FILTER.parse().expect("the default filter parses"))
}

/// Installs the global subscriber. `KEEL_LOG` overrides the filter (e.g. `debug`).
pub fn init(service: &str) {
    let filter = filter(std::env::var("KEEL_LOG").ok().as_deref());
    // The journal stamps every line itself; a second timestamp is noise there.
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    // Colour codes only for a person at a terminal, not in the journal or a log file.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if under_journal {
        registry.with(fmt.without_time()).try_init()
    } else {
        registry.with(fmt).try_init()
    };
    tracing::debug!(service, "logging started");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::level_filters::LevelFilter;
    use tracing::Level;

    #[test]
    fn keel_log_sets_levels_per_target_and_bad_input_keeps_the_default() {
        let f = filter(Some("warn,keel_netd=trace"));
        assert!(f.would_enable("keel_netd::apply", &Level::TRACE));
        assert!(!f.would_enable("keel_console", &Level::INFO));
        assert!(f.would_enable("keel_console", &Level::WARN));

        let default = filter(None);
        assert!(default.would_enable("keel_console", &Level::INFO));
        assert!(!default.would_enable("keel_console", &Level::DEBUG));
        assert!(!default.would_enable("hickory_server::server", &Level::INFO));
        assert!(default.would_enable("hickory_server::server", &Level::WARN));

        assert_eq!(
            filter(Some("no such=level")).to_string(),
            default.to_string()
        );
        assert_eq!(
            filter(Some("debug")).default_level(),
            Some(LevelFilter::DEBUG)
        );
    }
}
