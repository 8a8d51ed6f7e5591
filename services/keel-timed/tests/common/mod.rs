//! Test fixtures: fake NTP servers with chosen faults, and a real chronyd on loopback.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_timed::packet::{self, Leap, Mode, Packet, Short, Timestamp};
use keel_timed::sntp::CheckOptions;
use tokio::net::UdpSocket;

/// What a fake server does with each request.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// Answers correctly with its clock `skew` seconds ahead of ours.
    Skew(f64),
    /// Answers with a made-up origin timestamp (and +300 s, so believing it shows).
    WrongOrigin,
    /// First a spoofed reply (+300 s, wrong origin), then the true one (skew 0).
    SpoofThenTrue,
    /// Kiss-o'-death with this code.
    Kiss([u8; 4]),
    /// Leap indicator 3.
    Unsynchronized,
    Stratum16,
    ZeroTransmit,
    /// Receives and never answers (no ICMP either: the port is open).
    Silent,
    /// Correct answers whose offset alternates between 0 and this (a noisy path).
    Jitter(f64),
}

pub struct FakeServer {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub fn server(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(req: &Packet, skew: f64) -> Packet {
    let now = Timestamp::now().add_seconds(skew);
    let mut p = Packet::request(Timestamp::ZERO);
    p.mode = Mode::Server;
    p.version = req.version;
    p.stratum = 2;
    p.poll = 6;
    p.precision = -20;
    p.root_delay = Short(0x0000_0100);
    p.root_dispersion = Short(0x0000_0100);
    p.reference_id = [192, 0, 2, 123];
    p.reference = now.add_seconds(-10.0);
    p.origin = req.transmit;
    p.receive = now;
    p.transmit = now;
    p
}

pub async fn fake(b: Behaviour) -> FakeServer {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let requests = Arc::new(AtomicU32::new(0));
    let count = requests.clone();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((len, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let Ok(req) = packet::parse(&buf[..len]) else {
                continue;
            };
            let replies: Vec<Packet> = match b {
                Behaviour::Skew(s) => vec![answer(&req, s)],
                Behaviour::WrongOrigin => {
                    let mut p = answer(&req, 300.0);
                    p.origin = Timestamp(req.transmit.0 ^ 0x5555_0000_0000_0001);
                    vec![p]
                }
                Behaviour::SpoofThenTrue => {
                    let mut spoof = answer(&req, 300.0);
                    spoof.origin = Timestamp::now();
                    vec![spoof, answer(&req, 0.0)]
                }
                Behaviour::Kiss(code) => {
                    let mut p = answer(&req, 0.0);
                    p.stratum = 0;
                    p.reference_id = code;
                    vec![p]
                }
                Behaviour::Unsynchronized => {
                    let mut p = answer(&req, 0.0);
                    p.leap = Leap::Unsynchronized;
                    vec![p]
                }
                Behaviour::Stratum16 => {
                    let mut p = answer(&req, 0.0);
                    p.stratum = 16;
                    vec![p]
                }
                Behaviour::ZeroTransmit => {
                    let mut p = answer(&req, 0.0);
                    p.transmit = Timestamp::ZERO;
                    vec![p]
                }
                Behaviour::Silent => vec![],
                Behaviour::Jitter(j) => {
                    let n = count.load(Ordering::SeqCst);
                    vec![answer(&req, if n % 2 == 1 { 0.0 } else { j })]
                }
            };
            for p in replies {
                let _ = sock.send_to(&p.to_bytes(), from).await;
            }
        }
    });
    FakeServer {
        addr,
        requests,
        task,
    }
}

/// A loopback port with nothing listening: requests get ICMP port unreachable.
pub async fn closed_port() -> String {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.local_addr().unwrap().to_string()
}

/// Quick settings for loopback servers.
pub fn fast() -> CheckOptions {
    CheckOptions {
        samples: 3,
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(800),
        resolve_timeout: Duration::from_secs(1),
        // Every sample taken: the tests count requests and replies.
        settle: None,
    }
}

pub const CHRONYD: &str = "/usr/sbin/chronyd";

/// A real chronyd serving the host clock on 127.0.0.1 (`local stratum 8`, `-x`:
/// it never touches the clock). Killed on drop.
pub struct Chrony {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Chrony {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Says that `test` is skipped and why, past libtest's output capture (which
/// only catches the print macros), so the reason shows in every run.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Why chronyd cannot be used here, if it cannot.
pub fn chrony_unavailable() -> Option<String> {
    if !Path::new(CHRONYD).exists() {
        return Some(format!(
            "{CHRONYD} is absent (scripts/deps.sh installs chrony)"
        ));
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("chronyd needs root to start".into());
    }
    None
}

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

impl Chrony {
    /// Starts chronyd and waits until it serves synchronized time.
    pub async fn start() -> Chrony {
        let dir = tempfile::tempdir().unwrap();
        let port = free_udp_port();
        let conf = dir.path().join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbindaddress 127.0.0.1\nlocal stratum 8\nallow 127.0.0.1\n\
                 cmdport 0\nbindcmdaddress /\npidfile {pid}\ndriftfile {drift}\n",
                pid = dir.path().join("chronyd.pid").display(),
                drift = dir.path().join("drift").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("chronyd.log")).unwrap();
        // -d: foreground, logging to stderr; -x: never adjust the clock; -u root:
        // no privilege drop, so the temp files stay ours.
        let mut cmd = Command::new(CHRONYD);
        cmd.arg("-f")
            .arg(&conf)
            .args(["-d", "-x", "-u", "root"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // Also gone if the test binary is killed before Drop runs.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chronyd");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let chrony = Chrony {
            child,
            addr,
            _dir: dir,
        };
        chrony.wait_synchronized().await;
        chrony
    }

    async fn wait_synchronized(&self) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.connect(self.addr).await.unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 512];
        while start.elapsed() < Duration::from_secs(15) {
            let n = Timestamp(rand_nonce());
            let _ = sock.send(&Packet::request(n).to_bytes()).await;
            if let Ok(Ok(len)) =
                tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf)).await
            {
                if let Ok(p) = packet::parse(&buf[..len]) {
                    if p.origin == n && p.leap != Leap::Unsynchronized && p.stratum != 0 {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(self._dir.path().join("chronyd.log")).unwrap_or_default();
        panic!("chronyd did not serve synchronized time within 15 s; its log:\n{log}");
    }

    pub fn server(&self) -> String {
        self.addr.to_string()
    }
}

/// chrony's own measurement of the host clock against 127.0.0.1:`port`
/// (`chronyd -Q`), in NTP's sign (server − local), seconds. Blocks for seconds.
pub fn chrony_q_offset(port: u16) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(CHRONYD)
        .args(["-Q", "-u", "root", "-t", "20"])
        .arg(format!("pidfile {}", dir.path().join("q.pid").display()))
        .args(["cmdport 0", "bindcmdaddress /"])
        .arg(format!("server 127.0.0.1 port {port} iburst"))
        .stdin(Stdio::null())
        .output()
        .expect("run chronyd -Q");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // "System clock wrong by -0.000001 seconds (ignored)": chrony prints the
    // correction to apply, true − local, which is NTP's offset sign.
    text.split("wrong by ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no offset in chronyd -Q output:\n{text}"))
}

fn rand_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (t.as_nanos() as u64) | 1
}
