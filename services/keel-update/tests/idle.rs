//! Socket activation and the idle exit: the server exits once idle and not while
//! a request (a slow upload, a slow body) is in flight or an install's work still
//! runs; a client arriving after the exit waits in the socket systemd keeps and is
//! answered by the next start; the binary serves the socket passed as fd 3
//! (LISTEN_FDS/LISTEN_PID) and exits with status 0 after STOPPING=1.

mod common;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener as StdListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use common::*;
use http_body_util::Full;
use keel_api::{InstallAnswer, UpdateStatus};
use keel_core::local_api::{Client, LocalApiError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

const IDLE: Duration = Duration::from_millis(300);
const OCTETS: &str = "application/octet-stream";

/// A socket bound as systemd binds `ListenStream=`: the test keeps its own copy
/// (as systemd does) and hands the other to the server.
fn activated_socket(path: &Path) -> (StdListener, tokio::net::UnixListener) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let kept = StdListener::bind(path).unwrap();
    let passed = kept.try_clone().unwrap();
    passed.set_nonblocking(true).unwrap();
    (kept, tokio::net::UnixListener::from_std(passed).unwrap())
}

fn serve_idle(
    listener: tokio::net::UnixListener,
    u: Arc<keel_update::Updater>,
    idle: Option<Duration>,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(keel_update::idle::serve(listener, u, idle))
}

async fn status(c: &Client) -> UpdateStatus {
    c.call::<(), _>("GET", "/status", None).await.unwrap()
}

/// A status is answered at once (the server accepts, not only drains).
async fn answered_now(c: &Client) -> UpdateStatus {
    tokio::time::timeout(Duration::from_secs(5), status(c))
        .await
        .expect("a status was not answered while a request was in flight")
}

/// Waits for the server to return (the idle exit), at most `limit`.
async fn exited(server: JoinHandle<std::io::Result<()>>, limit: Duration) {
    tokio::time::timeout(limit, server)
        .await
        .expect("the server did not exit when idle")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn exits_when_idle_and_the_next_start_answers_a_queued_client() {
    let rig = Rig::new();
    let sock = rig.path("run/update.sock");
    let (kept, listener) = activated_socket(&sock);
    let server = serve_idle(listener, rig.start(), Some(IDLE));
    let c = Client::new(&sock);
    assert_eq!(status(&c).await.running.slot, "a");
    let answered = Instant::now();

    // A keep-alive connection left open does not keep it alive: it is closed.
    let mut keep = tokio::net::UnixStream::connect(&sock).await.unwrap();
    keep.write_all(b"GET /status HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    keep.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    exited(server, Duration::from_secs(10)).await;
    assert!(
        answered.elapsed() >= IDLE,
        "exited {:?} after the last request",
        answered.elapsed()
    );
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), keep.read_to_end(&mut rest))
        .await
        .expect("the idle keep-alive connection was not closed")
        .unwrap();

    // After the exit a client waits in the queue of the socket systemd keeps...
    let c2 = c.clone();
    let waiting = tokio::spawn(async move { status(&c2).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "answered by a server that had exited"
    );
    // ...and the next start (socket activation) answers it; nothing was lost.
    kept.set_nonblocking(true).unwrap();
    let listener = tokio::net::UnixListener::from_std(kept).unwrap();
    let _next = serve_idle(listener, rig.start(), None);
    let s = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the queued client was not answered")
        .unwrap();
    assert_eq!(s.running.slot, "a");
}

#[tokio::test]
async fn a_slow_install_upload_is_never_cut_off() {
    let rig = Rig::new();
    let sock = rig.path("run/update.sock");
    let (_kept, listener) = activated_socket(&sock);
    let server = serve_idle(listener, rig.start(), Some(IDLE));
    let c = Client::new(&sock);
    let bundle = rig.bundle("0.2.0", &payload(BIG, 21));
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let c1 = c.clone();
    let upload = tokio::spawn(async move {
        c1.call_stream::<_, InstallAnswer>("POST", "/install", OCTETS, ChannelBody(rx))
            .await
    });
    // Pauses of several idle times between the parts of the upload: before the
    // header is complete, mid-manifest, mid-payload.
    let cuts = [7, 300, 1 << 20, 4608 * 1024, bundle.len()];
    let mut from = 0;
    for to in cuts {
        tx.send(Bytes::copy_from_slice(&bundle[from..to]))
            .await
            .unwrap();
        from = to;
        tokio::time::sleep(IDLE * 3).await;
        assert!(
            !server.is_finished(),
            "exited during an upload ({to} of {} bytes sent)",
            bundle.len()
        );
        // Still accepting: the console's status polls are answered meanwhile.
        answered_now(&c).await;
    }
    drop(tx);
    let a = upload.await.unwrap().unwrap();
    assert_eq!((a.version.as_str(), a.slot.as_str()), ("0.2.0", "b"));
    assert!(rig.slot("b")[..BIG] == payload(BIG, 21)[..]);
    let vars = keel_boot::parse(&rig.esp_copies().1).unwrap();
    assert_eq!(vars.get("keel_try").map(String::as_str), Some("b"));
    exited(server, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_request_in_flight_keeps_it_running() {
    let rig = Rig::new();
    let sock = rig.path("run/update.sock");
    let (_kept, listener) = activated_socket(&sock);
    let server = serve_idle(listener, rig.start(), Some(IDLE));
    let c = Client::new(&sock);
    // A rollback whose small body comes slowly: in flight until it is answered.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let c1 = c.clone();
    let rollback = tokio::spawn(async move {
        c1.call_stream::<_, serde_json::Value>(
            "POST",
            "/rollback",
            "application/json",
            ChannelBody(rx),
        )
        .await
    });
    tx.send(Bytes::from_static(b"{\"confirm\":")).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(IDLE).await;
        assert!(!server.is_finished(), "exited with a request in flight");
    }
    answered_now(&c).await;
    tx.send(Bytes::from_static(b"\"ROLLBACK\"}")).await.unwrap();
    drop(tx);
    match rollback.await.unwrap() {
        Err(LocalApiError::Status { status: 422, .. }) => {}
        other => panic!("rollback on a factory box: {other:?}"),
    }
    exited(server, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn install_work_outliving_its_client_keeps_it_running() {
    let mut rig = Rig::new();
    let in_hook = Arc::new(AtomicBool::new(false));
    let flag = in_hook.clone();
    // The read-back waits here (on the install's blocking thread) for 1.5 s.
    rig.cfg.before_read_back = Some(Arc::new(move |_| {
        flag.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1500));
    }));
    let sock = rig.path("run/update.sock");
    let (_kept, listener) = activated_socket(&sock);
    let server = serve_idle(listener, rig.start(), Some(IDLE));
    let c = Client::new(&sock);
    let bundle = rig.bundle("0.2.0", &payload(SMALL, 22));
    let client = tokio::spawn(async move {
        c.call_stream::<_, InstallAnswer>(
            "POST",
            "/install",
            OCTETS,
            Full::new(Bytes::from(bundle)),
        )
        .await
    });
    for _ in 0..250 {
        if in_hook.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        in_hook.load(Ordering::SeqCst),
        "the install never reached the read-back"
    );
    // The client gives up (its connection closes) while the slot is read back.
    client.abort();
    tokio::time::sleep(IDLE * 3).await;
    assert!(
        !server.is_finished(),
        "exited while the install's read-back ran"
    );
    exited(server, Duration::from_secs(10)).await;
    // The install finished: armed and recorded.
    let vars = keel_boot::parse(&rig.esp_copies().1).unwrap();
    assert_eq!(vars.get("keel_try").map(String::as_str), Some("b"));
    assert_eq!(
        rig.state().pending.map(|p| p.version).as_deref(),
        Some("0.2.0")
    );
}

// ---- Started long after the boot ----------------------------------------------

/// The outcome of a trial when keel-update first starts boots later (nothing
/// asked for it during the trial boots): settled by that first status.
#[tokio::test]
async fn the_outcome_is_settled_at_a_first_start_boots_later() {
    use keel_api::OutcomeKind;
    use keel_boot::Slot;

    // Healthy: the trial boot is marked good by keel-boot-ok; keel-update never
    // runs in that boot nor the next; the first status of a later boot says so.
    let rig = Rig::new();
    install(&rig.start(), rig.bundle("0.2.0", &payload(SMALL, 24)))
        .await
        .unwrap();
    assert_eq!(rig.grub_boot(), Slot::B);
    rig.env().mark_good(Slot::B).unwrap();
    assert_eq!(rig.grub_boot(), Slot::B);
    rig.set_boot(Slot::B, "0.2.0", "boot-3");
    let sock = rig.path("run/update.sock");
    let (_kept, listener) = activated_socket(&sock);
    let server = serve_idle(listener, rig.start(), Some(IDLE));
    let s = status(&Client::new(&sock)).await;
    let o = s.last_outcome.expect("no outcome");
    assert_eq!(o.kind, OutcomeKind::Installed);
    assert_eq!(o.message, "updated from 0.1.0 to 0.2.0");
    assert!(rig.state().pending.is_none());
    exited(server, Duration::from_secs(10)).await;
    // Recorded: the next start (after this one's idle exit) still says so.
    let o = rig.start().status().last_outcome.unwrap();
    assert_eq!(o.kind, OutcomeKind::Installed);

    // Failed: three trial boots and GRUB's fallback without keel-update running.
    let rig = Rig::new();
    install(&rig.start(), rig.bundle("0.2.0", &payload(SMALL, 25)))
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(rig.grub_boot(), Slot::B);
    }
    assert_eq!(rig.grub_boot(), Slot::A);
    rig.set_boot(Slot::A, "0.1.0", "boot-5");
    let o = rig.start().status().last_outcome.expect("no outcome");
    assert_eq!(o.kind, OutcomeKind::RolledBack);
    assert_eq!(
        o.message,
        "update to 0.2.0 failed its health check, running 0.1.0 again"
    );
}

// ---- The binary, socket-activated ------------------------------------------------

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts keel-update as systemd does for a socket unit: `listener` as fd 3,
/// `LISTEN_FDS=1`, `LISTEN_PID` its own pid (set by a shell that then execs the
/// binary, so the pid stays), `NOTIFY_SOCKET` for READY/STOPPING.
fn spawn_activated(rig: &Rig, listener: RawFd, notify: &Path, idle_exit: &str) -> Child {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_keel-update"))
        .arg("--state-dir")
        .arg(&rig.cfg.state_dir)
        // Not bound: the passed socket is used instead.
        .arg("--socket")
        .arg(rig.path("run/not-bound.sock"))
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
        .arg("--boot-id-file")
        .arg(&rig.cfg.boot_id_file)
        .args([
            "--boot-state-file",
            "none",
            "--no-clock-gate",
            "--reboot-command",
            "none",
            "--idle-exit",
            idle_exit,
        ])
        .env("LISTEN_FDS", "1")
        .env("NOTIFY_SOCKET", notify);
    // SAFETY: only dup2/fcntl between fork and exec (async-signal-safe). dup2 onto
    // fd 3 clears close-on-exec there; when the socket already is fd 3, fcntl does.
    unsafe {
        cmd.pre_exec(move || {
            let r = if listener == 3 {
                nix::libc::fcntl(3, nix::libc::F_SETFD, 0)
            } else {
                nix::libc::dup2(listener, 3)
            };
            if r == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Child(cmd.spawn().unwrap())
}

/// The notifications sent so far.
fn notifications(sock: &UnixDatagram) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

#[tokio::test]
async fn the_binary_serves_the_socket_systemd_passes_and_exits_when_idle() {
    let rig = Rig::new();
    let sock = rig.path("run/update.sock");
    let (kept, _) = activated_socket(&sock);
    let notify = UnixDatagram::bind(rig.path("notify.sock")).unwrap();
    notify.set_nonblocking(true).unwrap();
    let c = Client::new(&sock);

    let started = Instant::now();
    let mut child = spawn_activated(&rig, kept.as_raw_fd(), &rig.path("notify.sock"), "1");
    // Connecting needs no running server (the socket is there before it): this
    // is the first request of a cold start.
    let s = tokio::time::timeout(Duration::from_secs(20), status(&c))
        .await
        .expect("no answer on the passed socket");
    let cold = started.elapsed();
    let answered = Instant::now();
    assert_eq!(s.running.slot, "a");
    assert_eq!(s.running.version.as_deref(), Some("0.1.0"));
    assert!(
        !rig.path("run/not-bound.sock").exists(),
        "bound --socket although systemd passed one"
    );
    eprintln!("keel-update (this build's profile): cold start to the first answer {cold:?}");

    // Idle for --idle-exit 1: exits with status 0 after STOPPING=1.
    let mut exit = None;
    for _ in 0..500 {
        if let Some(st) = child.0.try_wait().unwrap() {
            exit = Some(st);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exit = exit.expect("keel-update did not exit when idle");
    assert!(exit.success(), "idle exit: {exit}");
    assert!(
        answered.elapsed() >= Duration::from_secs(1),
        "exited {:?} after its last request",
        answered.elapsed()
    );
    let sent = notifications(&notify);
    let ready = sent.iter().position(|m| m.contains("READY=1"));
    let stopping = sent.iter().position(|m| m.contains("STOPPING=1"));
    assert!(
        ready.is_some() && stopping > ready,
        "notifications: {sent:?}"
    );

    // The next connection starts it again (as the socket unit would): the same
    // state, and an install through the passed socket.
    let _again = spawn_activated(&rig, kept.as_raw_fd(), &rig.path("notify.sock"), "1");
    let a: InstallAnswer = c
        .call_stream(
            "POST",
            "/install",
            OCTETS,
            Full::new(Bytes::from(rig.bundle("0.2.0", &payload(SMALL, 23)))),
        )
        .await
        .unwrap();
    assert_eq!(a.slot, "b");
    let s = status(&c).await;
    assert_eq!(s.other.version.as_deref(), Some("0.2.0"));
}
