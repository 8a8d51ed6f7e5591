//! systemd readiness and watchdog. Outside systemd (no NOTIFY_SOCKET) these are no-ops.

use std::time::Duration;

/// Tells systemd the service is ready (Type=notify units order on this).
pub fn ready() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!("sd_notify READY failed: {e}");
    }
}

/// Tells systemd the service is stopping by itself (an idle exit), so a
/// connection to its socket meanwhile starts a new instance.
pub fn stopping() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]) {
        tracing::warn!("sd_notify STOPPING failed: {e}");
    }
}

/// Spawns a task that pets the systemd watchdog at half its interval, if one is set.
pub fn spawn_watchdog() {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
    });
}

/// What a service's main does once it serves: tells systemd it is ready, keeps the
/// watchdog fed, and returns when SIGTERM (systemd's stop) or Ctrl-C arrives.
pub async fn ready_until_stopped() -> std::io::Result<()> {
    ready();
    spawn_watchdog();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
    Ok(())
}
