//! The service through its local API socket: verdicts, the gate, the server
//! list, timesyncd's drop-in and state, and the hand-set time (with a stand-in
//! clock: tests never touch the real one).

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{fake, fast, Behaviour};
use keel_api::{
    ClockGate, ManualTimeRequest, NtpServerList, NtpServers, ServerState, TimeState, TimeVerdict,
};
use keel_core::local_api::{Client, LocalApiError};
use keel_timed::system::{ClockSetter, TimesyncdPaths};
use keel_timed::{service, Settings, Timed};

#[derive(Clone, Default)]
struct FakeClock(Arc<Mutex<Vec<SystemTime>>>);

impl ClockSetter for FakeClock {
    fn set(&self, to: SystemTime) -> std::io::Result<()> {
        self.0.lock().unwrap().push(to);
        Ok(())
    }
}

struct Svc {
    dir: tempfile::TempDir,
    client: Client,
    clock: FakeClock,
    timed: Arc<Timed>,
}

impl Svc {
    fn dropin(&self) -> std::path::PathBuf {
        self.dir.path().join("run/timesyncd.conf.d/keel.conf")
    }

    async fn get<R: serde::de::DeserializeOwned>(&self, path: &str) -> R {
        self.client.call::<(), R>("GET", path, None).await.unwrap()
    }

    async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, LocalApiError> {
        self.client.call("POST", path, Some(body)).await
    }

    async fn set_servers(&self, servers: &[String]) -> NtpServerList {
        self.post(
            "/servers",
            &NtpServers {
                servers: servers.to_vec(),
            },
        )
        .await
        .unwrap()
    }

    async fn check(&self) -> TimeVerdict {
        self.post("/check", &()).await.unwrap()
    }
}

async fn start() -> Svc {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::new(&dir.path().join("data"));
    settings.options = fast();
    settings.timesyncd = TimesyncdPaths {
        run_dir: dir.path().join("run/timesync"),
        synchronized: dir.path().join("run/timesync/synchronized"),
    };
    settings.timesyncd_dropin = Some(dir.path().join("run/timesyncd.conf.d/keel.conf"));
    let clock = FakeClock::default();
    let timed = Timed::new(settings, Box::new(clock.clone()));
    let sock = dir.path().join("timed/api.sock");
    let listener = keel_core::local_api::bind(&sock, 0o600).unwrap();
    tokio::spawn(keel_core::local_api::serve(
        listener,
        service::router(timed.clone()),
    ));
    Svc {
        client: Client::new(&sock),
        dir,
        clock,
        timed,
    }
}

#[tokio::test]
async fn unconfigured_then_skewed_and_the_gate_refuses() {
    let svc = start().await;
    let v: TimeVerdict = svc.get("/verdict").await;
    assert_eq!(v.state, TimeState::Unconfigured);
    assert!(
        v.message.contains("Networking › NTP servers"),
        "{}",
        v.message
    );
    let g: ClockGate = svc.get("/gate").await;
    assert!(g.allowed && g.reason.is_none());
    assert!(g.warning.unwrap().contains("no NTP server is configured"));

    let skewed = fake(Behaviour::Skew(300.0)).await;
    let list = svc.set_servers(&[skewed.server()]).await;
    assert_eq!((list.source.as_str(), list.servers.len()), ("timed", 1));
    let v = svc.check().await;
    assert_eq!(v.state, TimeState::Skewed, "{v:#?}");
    assert!((v.offset_seconds.unwrap() - 300.0).abs() < 0.5);
    assert_eq!(v.servers_source, "timed");
    let g: ClockGate = svc.get("/gate").await;
    assert!(!g.allowed && g.warning.is_none());
    let reason = g.reason.unwrap();
    assert!(
        reason.contains("+300.") && reason.contains("5 min 0 s behind"),
        "{reason}"
    );
    assert!(reason.contains("Networking › NTP servers"), "{reason}");
}

#[tokio::test]
async fn unreachable_warns_and_goes_on() {
    let svc = start().await;
    let silent = fake(Behaviour::Silent).await;
    svc.set_servers(&[silent.server()]).await;
    let g: ClockGate = svc.get("/gate").await;
    assert!(g.allowed && g.reason.is_none(), "{g:?}");
    assert_eq!(g.state, TimeState::Unreachable);
    assert!(g.warning.unwrap().contains("could not be checked"));
}

#[tokio::test]
async fn concurrent_requests_share_one_check() {
    let svc = start().await;
    let ok = fake(Behaviour::Skew(0.0)).await;
    svc.set_servers(&[ok.server()]).await;
    // The check that setting the list started is over when one asked after it
    // answers (it joins that check or runs after it): none is left running.
    svc.check().await;
    let before = ok.requests.load(Ordering::SeqCst);
    let (a, b) = tokio::join!(svc.check(), svc.check());
    assert_eq!(a, b);
    assert_eq!(a.state, TimeState::Ok);
    assert_eq!(ok.requests.load(Ordering::SeqCst) - before, fast().samples);
}

#[tokio::test]
async fn server_list_rules_and_timesyncd() {
    let svc = start().await;
    // Bad entries are refused with the reason.
    let err = svc
        .post::<_, NtpServerList>(
            "/servers",
            &NtpServers {
                servers: vec!["not a host".into()],
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("400: "), "{err}");
    // timesyncd gets the port-123 servers (it takes no ports).
    let ok = fake(Behaviour::Skew(0.0)).await;
    svc.set_servers(&[ok.server(), "127.0.0.1".into()]).await;
    let dropin = std::fs::read_to_string(svc.dropin()).unwrap();
    assert!(
        dropin.ends_with("[Time]\nNTP=\nNTP=127.0.0.1\n"),
        "{dropin}"
    );
    // timesyncd's state comes from its runtime files.
    std::fs::create_dir_all(svc.dir.path().join("run/timesync")).unwrap();
    keel_timed::system::touch(&svc.dir.path().join("run/timesync/synchronized")).unwrap();
    let v = svc.check().await;
    assert!(v.daemon.running && v.daemon.synchronized, "{:?}", v.daemon);
    let closed = v.servers.iter().find(|s| s.server == "127.0.0.1").unwrap();
    assert_eq!(closed.state, ServerState::Unreachable);
    assert_eq!(v.state, TimeState::Ok);

    // Once netd owns the list, timed reads it and refuses to set it.
    let netd = svc.dir.path().join("data/net/ntp-servers.json");
    std::fs::create_dir_all(netd.parent().unwrap()).unwrap();
    std::fs::write(&netd, format!(r#"{{"servers":["{}"]}}"#, ok.server())).unwrap();
    let list: NtpServerList = svc.get("/servers").await;
    assert_eq!((list.source.as_str(), list.servers.len()), ("netd", 1));
    let err = svc
        .post::<_, NtpServerList>(
            "/servers",
            &NtpServers {
                servers: vec!["a.org".into()],
            },
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("409: ")
            && err.to_string().contains("Networking › NTP servers"),
        "{err}"
    );
    let v = svc.check().await;
    assert_eq!(v.servers_source, "netd");
    // The drop-in follows the list in force: no port-123 server there now.
    assert!(!svc.dropin().exists());
}

#[tokio::test]
async fn time_set_by_hand_when_nothing_answers() {
    let svc = start().await;
    let dead = fake(Behaviour::Silent).await;
    svc.set_servers(&[dead.server()]).await;
    let v = svc.check().await;
    assert_eq!(v.state, TimeState::Unreachable);

    let err = svc
        .post::<_, TimeVerdict>(
            "/manual",
            &ManualTimeRequest {
                time: "next tuesday".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("400: "), "{err}");

    let v: TimeVerdict = svc
        .post(
            "/manual",
            &ManualTimeRequest {
                time: "2026-11-25 05:00:00".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(v.state, TimeState::Manual, "{v:#?}");
    assert_eq!(
        v.message,
        "Time set by hand at 2026-11-25T05:00:00Z, no NTP server reachable."
    );
    let set = svc.clock.0.lock().unwrap().clone();
    assert_eq!(
        set,
        vec![SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_582_800)]
    );
    let g: ClockGate = svc.get("/gate").await;
    assert!(g.allowed && g.warning.unwrap().starts_with("Time set by hand"));
    // The record outlives the service; a later check still says manual.
    let v = svc.check().await;
    assert_eq!(v.state, TimeState::Manual);
    assert!(!v.manual.unwrap().earlier_boot);

    // When servers answer again they decide, and setting by hand is refused.
    let ok = fake(Behaviour::Skew(0.0)).await;
    svc.set_servers(&[ok.server()]).await;
    let v = svc.check().await;
    assert_eq!(v.state, TimeState::Ok);
    assert!(v.manual.is_none());
    let err = svc
        .post::<_, TimeVerdict>(
            "/manual",
            &ManualTimeRequest {
                time: "2026-11-25T05:00:00Z".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("409: "), "{err}");
    assert_eq!(svc.clock.0.lock().unwrap().len(), 1);
    assert!(svc.timed.latest().is_some());
}
