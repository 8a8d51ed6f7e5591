//! The local API over a real Unix socket (library router and the binary), and the
//! clock gate with the real keel-timed in-process (its SNTP check against a fake
//! NTP server on loopback).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use common::*;
use http_body_util::Full;
use keel_api::{InstallAnswer, RollbackRequest, UpdatePhase, UpdateStatus};
use keel_core::local_api::{Client, LocalApiError};
use keel_timed::packet::{self, Mode, Packet, Short, Timestamp as NtpTime};
use keel_update::ErrorKind;

const OCTETS: &str = "application/octet-stream";

fn serve(rig: &Rig, u: Arc<keel_update::Updater>) -> Client {
    let sock = rig.path("run/update.sock");
    let listener = keel_core::local_api::bind(&sock, 0o600).unwrap();
    tokio::spawn(keel_core::local_api::serve(
        listener,
        keel_update::api::router(u),
    ));
    Client::new(&sock)
}

async fn post_file(c: &Client, path: &str, bytes: Vec<u8>) -> Result<InstallAnswer, LocalApiError> {
    c.call_stream("POST", path, OCTETS, Full::new(Bytes::from(bytes)))
        .await
}

fn status_code(e: &LocalApiError) -> u16 {
    match e {
        LocalApiError::Status { status, .. } => *status,
        other => panic!("not an HTTP status: {other}"),
    }
}

#[tokio::test]
async fn over_the_socket_status_install_reboot_conflict_rollback() {
    let rig = Rig::new();
    let c = serve(&rig, rig.start());
    let s: UpdateStatus = c.call::<(), _>("GET", "/status", None).await.unwrap();
    assert_eq!(s.running.slot, "a");
    assert_eq!(s.running.version.as_deref(), Some("0.1.0"));
    assert_eq!(s.progress.phase, UpdatePhase::Idle);

    // A large damaged upload is refused early; the client still gets the answer.
    let e = c
        .call_stream::<_, InstallAnswer>(
            "POST",
            "/install",
            OCTETS,
            Full::new(Bytes::from(random_bytes(6 << 20, 99))),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), 400, "{e}");
    assert!(e.to_string().contains("bad magic"), "{e}");
    // A policy refusal is 422.
    let e = c
        .call_stream::<_, InstallAnswer>(
            "POST",
            "/install",
            OCTETS,
            Full::new(Bytes::from(rig.bundle("0.0.1", &payload(SMALL, 1)))),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), 422, "{e}");

    // 409 while an upload is in progress (fed slowly through a channel).
    let bundle = rig.bundle("0.2.0", &payload(BIG, 2));
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let c1 = c.clone();
    let first = tokio::spawn(async move {
        c1.call_stream::<_, InstallAnswer>("POST", "/install?reboot=true", OCTETS, ChannelBody(rx))
            .await
    });
    // More than one 4 MiB write of the payload, less than all of it.
    let half = bundle.len() - 512 * 1024;
    tx.send(Bytes::copy_from_slice(&bundle[..half]))
        .await
        .unwrap();
    let mut live = None;
    for _ in 0..200 {
        let s: UpdateStatus = c.call::<(), _>("GET", "/status", None).await.unwrap();
        if s.progress.phase == UpdatePhase::Write && s.progress.bytes_done > 0 {
            live = Some(s.progress);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live = live.expect("no live progress over the socket");
    assert!(live.bytes_done < live.bytes_total);
    let e = post_file(&c, "/install", rig.bundle("0.2.1", &payload(SMALL, 3)))
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), 409, "{e}");
    let e = c
        .call::<_, serde_json::Value>(
            "POST",
            "/rollback",
            Some(&RollbackRequest {
                confirm: "ROLLBACK".into(),
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), 409, "{e}");
    for chunk in bundle[half..].chunks(512 * 1024) {
        tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    drop(tx);
    let a = first.await.unwrap().unwrap();
    assert_eq!(
        (a.version.as_str(), a.slot.as_str(), a.rebooting),
        ("0.2.0", "b", true)
    );
    for _ in 0..100 {
        if rig.reboots.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        rig.reboots.load(Ordering::SeqCst),
        1,
        "no reboot after ?reboot=true"
    );
    assert!(rig.slot("b")[..BIG] == payload(BIG, 2)[..]);

    // Rollback: nothing to roll back to on this box yet (422); bad JSON is 400.
    let e = c
        .call::<_, serde_json::Value>(
            "POST",
            "/rollback",
            Some(&RollbackRequest {
                confirm: "ROLLBACK".into(),
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), 422, "{e}");
    assert!(
        e.to_string()
            .contains("no previous version to roll back to"),
        "{e}"
    );
    let e = c
        .call::<_, serde_json::Value>(
            "POST",
            "/rollback",
            Some(&serde_json::json!({"confirm": "yes"})),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), 400, "{e}");
}

/// Answers SNTP requests with its clock `skew` seconds ahead of ours.
async fn fake_ntp(skew: f64) -> String {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((len, from)) = sock.recv_from(&mut buf).await {
            let Ok(req) = packet::parse(&buf[..len]) else {
                continue;
            };
            let now = NtpTime::now().add_seconds(skew);
            let mut p = Packet::request(NtpTime::ZERO);
            p.mode = Mode::Server;
            p.version = req.version;
            p.stratum = 2;
            p.poll = 6;
            p.precision = -20;
            p.root_delay = Short(0x100);
            p.root_dispersion = Short(0x100);
            p.reference_id = [192, 0, 2, 123];
            p.reference = now.add_seconds(-10.0);
            p.origin = req.transmit;
            p.receive = now;
            p.transmit = now;
            let _ = sock.send_to(&p.to_bytes(), from).await;
        }
    });
    addr
}

struct NoClock;

impl keel_timed::system::ClockSetter for NoClock {
    fn set(&self, _: std::time::SystemTime) -> std::io::Result<()> {
        Err(std::io::Error::other("tests never set the clock"))
    }
}

/// The real keel-timed, serving its API on a socket in the rig.
async fn timed(rig: &Rig, name: &str, skew: f64) -> std::path::PathBuf {
    let server = fake_ntp(skew).await;
    let mut settings = keel_timed::Settings::new(&rig.path(&format!("{name}/data")));
    settings.options = keel_timed::sntp::CheckOptions {
        samples: 2,
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(800),
        resolve_timeout: Duration::from_secs(1),
        settle: None,
    };
    settings.timesyncd = keel_timed::system::TimesyncdPaths {
        run_dir: rig.path(&format!("{name}/timesync")),
        synchronized: rig.path(&format!("{name}/timesync/synchronized")),
    };
    settings.timesyncd_dropin = None;
    let t = keel_timed::Timed::new(settings, Box::new(NoClock));
    t.set_servers(&[server]).unwrap();
    let sock = rig.path(&format!("{name}/api.sock"));
    let listener = keel_core::local_api::bind(&sock, 0o600).unwrap();
    tokio::spawn(keel_core::local_api::serve(
        listener,
        keel_timed::service::router(t),
    ));
    sock
}

#[tokio::test]
async fn clock_gate_refuses_skewed_and_unreachable_and_allows_ok() {
    // Skewed by 5 minutes: refused with timed's reason (how to fix it).
    let mut rig = Rig::new();
    rig.cfg.timed_socket = Some(timed(&rig, "skewed", 300.0).await);
    let u = rig.start();
    let before = rig.slot("b");
    let e = install(&u, rig.bundle("0.2.0", &payload(SMALL, 1)))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Refused);
    assert!(
        e.message.contains("install refused by the clock gate"),
        "{e}"
    );
    assert!(e.message.contains("Correct the time"), "{e}");
    assert!(e.message.contains("NTP servers"), "{e}");
    rig.assert_not_armed();
    assert!(rig.slot("b") == before);
    assert_eq!(
        u.status().progress.error.as_deref(),
        Some(e.message.as_str())
    );
    // The online check and the download key consult the same gate (a feed's and a
    // download key's validity are judged by this clock): refused before anything
    // else, no identity key made.
    let e = u.check().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Refused);
    assert!(
        e.message
            .contains("check for updates refused by the clock gate"),
        "{e}"
    );
    let e = u.download_key().await.unwrap_err();
    assert!(
        e.message.contains("download key refused by the clock gate"),
        "{e}"
    );
    assert!(!rig.cfg.identity_file().exists());

    // keel-timed not running: refused too, saying so.
    rig.cfg.timed_socket = Some(rig.path("nothing/api.sock"));
    let u = rig.start();
    let e = install(&u, rig.bundle("0.2.0", &payload(SMALL, 1)))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Refused);
    assert!(e.message.contains("keel-timed is unreachable"), "{e}");
    assert!(e.message.contains("systemctl start keel-timed"), "{e}");
    rig.assert_not_armed();

    // A right clock: the gate lets it through.
    rig.cfg.timed_socket = Some(timed(&rig, "ok", 0.0).await);
    let u = rig.start();
    install(&u, rig.bundle("0.2.0", &payload(SMALL, 1)))
        .await
        .unwrap();
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_serves_its_socket() {
    let rig = Rig::new();
    let sock = rig.path("run/bin.sock");
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_keel-update"))
            .arg("--state-dir")
            .arg(&rig.cfg.state_dir)
            .arg("--socket")
            .arg(&sock)
            .arg("--keys-dir")
            .arg(&rig.cfg.keys_dir)
            .arg("--os-release")
            .arg(&rig.cfg.os_release)
            .arg("--cmdline")
            .arg(&rig.cfg.cmdline)
            .arg("--slot-device")
            .arg(&rig.cfg.slot_device)
            .arg("--esp-dir")
            .arg(rig.path("esp"))
            .args([
                "--boot-state-file",
                "none",
                "--no-clock-gate",
                "--reboot-command",
                "none",
            ])
            .arg("--boot-id-file")
            .arg(&rig.cfg.boot_id_file)
            .spawn()
            .unwrap(),
    );
    let c = Client::new(&sock);
    let mut up = false;
    for _ in 0..3000 {
        if c.call::<(), UpdateStatus>("GET", "/status", None)
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up, "keel-update did not answer on its socket");
    let pid = child.0.id();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle = rss_kib(pid).unwrap();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    eprintln!("keel-update (this build's profile) idle: VmRSS {idle} KiB, {threads} thread(s)");
    assert_eq!(threads, 1, "idle keel-update runs more than one thread");

    let a: InstallAnswer = post_file(&c, "/install", rig.bundle("0.2.0", &payload(BIG, 5)))
        .await
        .unwrap();
    assert_eq!(a.slot, "b");
    let vars = keel_boot::parse(&rig.esp_copies().1).unwrap();
    assert_eq!(vars.get("keel_try").map(String::as_str), Some("b"));
    eprintln!(
        "keel-update after an install: VmRSS {} KiB",
        rss_kib(pid).unwrap_or(0)
    );
}
