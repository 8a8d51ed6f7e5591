//! Socket activation as keel-failover.socket does it (systemd-socket-activate
//! passes the local API socket and the pairing port): the unpaired daemon serves
//! both from the inherited sockets and exits by itself once idle, so an appliance
//! outside a pair keeps no keel-failover process. Needs `systemd-socket-activate`
//! (package systemd); skipped with the reason without it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_api::FailoverOverview;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn status(socket: &Path) -> Result<FailoverOverview, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(keel_core::local_api::Client::new(socket).call::<(), _>("GET", "/status", None))
        .map_err(|e| e.to_string())
}

#[test]
fn an_unpaired_activated_daemon_serves_the_passed_sockets_then_exits_when_idle() {
    if Command::new("systemd-socket-activate")
        .arg("--help")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-socket-activate (package systemd) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let port = free_port();
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .args(["-l", &format!("127.0.0.1:{port}")])
        .arg(env!("CARGO_BIN_EXE_keel-failover"))
        .arg("--config")
        .arg(dir.path().join("config.json"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--idle-exit", "2"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    // The first connection starts it (the socket exists before the daemon does).
    let start = Instant::now();
    let overview = loop {
        match status(&socket) {
            Ok(o) => break o,
            Err(e) if start.elapsed() > Duration::from_secs(30) => panic!("{e}\n{}", log()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(overview.peer.is_none() && overview.engine.is_none());
    assert_eq!(
        overview.pair_port, port,
        "the pairing port is the passed one"
    );
    // The pairing port is the passed socket: it speaks TLS there (garbage is
    // answered by closing, not by a refused connection).
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("pairing port answers");
    // Idle: the process ends by itself, status 0 (systemd would not restart it).
    let start = Instant::now();
    let exit = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("still running after 60 s idle\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "{exit}\n{}", log());
    assert!(log().contains("unpaired and idle"), "{}", log());
}
