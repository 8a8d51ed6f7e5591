//! One writer per file: timed's server list (config.json) and the timesyncd drop-in
//! made from it stay in step while lists are set concurrently and checks run.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keel_timed::config;
use keel_timed::sntp::CheckOptions;
use keel_timed::system::{ClockSetter, TimesyncdPaths};
use keel_timed::{Settings, Timed};

struct NoClock;

impl ClockSetter for NoClock {
    fn set(&self, _: SystemTime) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_set_servers_and_checks_lose_no_update() {
    // On tmpfs where there is one: fsync costs nothing there, so many rounds are
    // quick (the race is between writers, not with the disk).
    let dir = match std::path::Path::new("/dev/shm") {
        shm if shm.is_dir() => tempfile::tempdir_in(shm).unwrap(),
        _ => tempfile::tempdir().unwrap(),
    };
    let mut settings = Settings::new(&dir.path().join("data"));
    // Closed loopback ports: a check is quick, so the periodic writer runs often.
    settings.options = CheckOptions {
        samples: 1,
        timeout: Duration::from_millis(20),
        ..common::fast()
    };
    settings.timesyncd = TimesyncdPaths {
        run_dir: dir.path().join("run/timesync"),
        synchronized: dir.path().join("run/timesync/synchronized"),
    };
    let dropin = dir.path().join("run/timesyncd.conf.d/keel.conf");
    settings.timesyncd_dropin = Some(dropin.clone());
    let paths = settings.paths.clone();
    let timed = Timed::new(settings, Box::new(NoClock));

    // The periodic writer, back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let checker = {
        let (timed, stop) = (timed.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                timed.check().await;
            }
        })
    };

    for round in 0..200u8 {
        let setters: Vec<_> = (1..=6u8)
            .map(|i| {
                let timed = timed.clone();
                std::thread::spawn(move || {
                    let list = vec![format!("127.0.{round}.{i}")];
                    let got = timed.set_servers(&list).unwrap();
                    assert_eq!(got.servers, list, "set_servers answers with its own list");
                })
            })
            .collect();
        for s in setters {
            s.join().unwrap();
        }
        // Whoever wrote last, the drop-in is made from the list on disk.
        let stored = config::load_servers(&paths).unwrap();
        assert_eq!(stored.servers.len(), 1, "{stored:?}");
        let want = config::render_timesyncd(&stored.servers).unwrap();
        let have = std::fs::read_to_string(&dropin).unwrap();
        assert_eq!(
            have, want,
            "round {round}: the drop-in lost the last update"
        );
    }
    stop.store(true, Ordering::Relaxed);
    checker.await.unwrap();
}

#[tokio::test]
async fn only_the_service_forgets_the_hand_set_time() {
    let ok = common::fake(common::Behaviour::Skew(0.0)).await;
    for forget in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::new(&dir.path().join("data"));
        settings.options = common::fast();
        settings.forget_manual = forget;
        config::save_servers(&settings.paths, &[ok.server()]).unwrap();
        let manual = settings.paths.manual.clone();
        std::fs::write(
            &manual,
            br#"{"set_at":"2026-11-25T05:00:00Z","previous":"2026-11-25T04:00:00Z","boot_id":"x"}"#,
        )
        .unwrap();
        let timed = Timed::new(settings, Box::new(NoClock));
        let v = timed.check().await;
        assert_eq!(v.state, keel_api::TimeState::Ok, "{v:#?}");
        // `keel-timed once` (forget_manual = false) leaves the service's file alone.
        assert_eq!(manual.exists(), !forget);
    }
}
