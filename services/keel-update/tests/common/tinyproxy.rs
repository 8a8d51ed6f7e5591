//! Debian's tinyproxy, started by a test on a free loopback port in the
//! foreground (CONNECT allowed to one port, optional basic auth), its log in a
//! file. Shared by keel-update's, the console's and the QEMU online tests
//! (included by path; std and tokio only).
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Waits until something accepts TCP connections on `port` (generous ceiling).
pub async fn wait_listening(port: u16, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} does not listen on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real tinyproxy (Debian's) on a free loopback port, in the foreground, its
/// log in a file. Killed when dropped.
pub struct Tinyproxy {
    pub port: u16,
    pub log: PathBuf,
    child: Child,
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tinyproxy {
    /// `None` when tinyproxy is not installed (the caller skips, saying why).
    pub async fn start(dir: &Path, connect_port: u16, auth: Option<(&str, &str)>) -> Option<Self> {
        let bin = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        // A free port: bound and released (tinyproxy binds it right after).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogLevel Connect\nMaxClients 20\n\
             Allow 127.0.0.1\nConnectPort {connect_port}\n"
        );
        // As root it drops to this user (and needs one to).
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if root {
            conf.push_str("User nobody\nGroup nogroup\n");
        }
        if let Some((u, p)) = auth {
            conf.push_str(&format!("BasicAuth {u} {p}\n"));
        }
        let cfg = dir.join(format!("tinyproxy-{port}.conf"));
        std::fs::write(&cfg, conf).unwrap();
        let log = dir.join(format!("tinyproxy-{port}.log"));
        let child = Command::new(bin)
            .arg("-d")
            .arg("-c")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start tinyproxy");
        let t = Tinyproxy { port, log, child };
        wait_listening(port, "tinyproxy").await;
        Some(t)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
