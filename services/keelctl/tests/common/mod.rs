//! What keelctl's integration tests share: the workspace's service binaries, run
//! as daemons in a temporary directory (the console on loopback with an API token,
//! keel-netd in a network namespace), and keelctl itself.

// Each test binary compiles this module on its own and uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Daemons get this long to answer on a loaded machine.
const START_LIMIT: Duration = Duration::from_secs(60);

/// The binary `name` of package `name` in this workspace, built first.
pub fn workspace_bin(name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-q", "-p", name, "--bin", name])
        .status()
        .unwrap_or_else(|e| panic!("cargo build {name}: {e}"));
    assert!(st.success(), "building {name} failed");
    // target/debug/deps/<test>-... → target/debug/<name>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(name)
}

/// A service process, killed on drop (also when an assertion fails).
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Runs `cmd` with its output in `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Daemon {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    /// Waits until `ready` holds, failing when the process exits first or the
    /// limit passes.
    pub fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("{what} exited ({st}): {}", self.log());
            }
            if ready() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not answer within {START_LIMIT:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on loopback (released for the daemon to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real keel-console on 127.0.0.1 over `dir`, set up, with an API token.
pub struct Console {
    /// `https://127.0.0.1:PORT`
    pub base: String,
    /// SHA-256 of the certificate it serves (lowercase hex).
    pub fingerprint: String,
    /// That certificate (PEM), for clients that trust it as their CA; it names
    /// `localhost`.
    pub cert_pem: PathBuf,
    /// `https://localhost:PORT`, for those clients.
    pub by_name: String,
    pub requests: PathBuf,
    /// An administrator's API token.
    pub token: String,
    pub daemon: Daemon,
}

/// Starts keel-console over `dir/console` with its service sockets in `dir` (a
/// netd there answers when the test starts one), sets the admin password with the
/// setup code and creates an administrator token with a session.
pub async fn console(dir: &Path, netd_socket: &Path) -> Console {
    let data = dir.join("console");
    // The built-in certificate as first boot makes it, for the host name
    // "localhost" (loopback addresses are never put into it): clients that verify
    // names reach the console as https://localhost:PORT.
    let (identity, _) = keel_certs::DefaultIdentity::new(data.join("tls"))
        .load_or_create("localhost", &[])
        .unwrap();
    let fingerprint = keel_certs::info(&identity.cert_pem)
        .unwrap()
        .sha256_fingerprint;
    let cert_pem = dir.join("console.crt");
    std::fs::write(&cert_pem, &identity.cert_pem).unwrap();
    let requests = dir.join("requests");
    std::fs::create_dir_all(&requests).unwrap();
    let port = free_port();
    let mut cmd = Command::new(workspace_bin("keel-console"));
    cmd.arg("--data-dir")
        .arg(&data)
        .arg("--https")
        .arg(format!("127.0.0.1:{port}"))
        .args(["--http", "none", "--first-boot-address-wait", "0"])
        .arg("--socket")
        .arg(dir.join("console.sock"))
        .arg("--netd-socket")
        .arg(netd_socket)
        .arg("--timed-socket")
        .arg(dir.join("timed.sock"))
        .arg("--failover-socket")
        .arg(dir.join("failover.sock"))
        .arg("--requests-dir")
        .arg(&requests)
        .arg("--boot-state")
        .arg(dir.join("boot-state"));
    let mut daemon = Daemon::spawn(cmd, dir.join("console.log"));
    daemon.wait_until("keel-console", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let base = format!("https://127.0.0.1:{port}");

    let http = reqwest::Client::builder()
        .use_preconfigured_tls(
            keel_certs::pinning::FingerprintVerifier::pinned(&fingerprint).client_config(),
        )
        .cookie_store(true)
        .build()
        .unwrap();
    let code = std::fs::read_to_string(data.join("setup-code")).unwrap();
    let resp = http
        .post(format!("{base}/appliance/api/v1/setup"))
        .json(&json!({"setup_code": code.trim(), "password": "a good password"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "setup: {}", resp.status());
    let csrf = resp.json::<Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = http
        .post(format!("{base}/appliance/api/v1/tokens"))
        .header("x-csrf-token", csrf)
        .json(&json!({"name": "keelctl tests", "expires_in_days": 1}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "token: {}", resp.status());
    let token = resp.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    Console {
        by_name: base.replace("127.0.0.1", "localhost"),
        base,
        fingerprint,
        cert_pem,
        requests,
        token,
        daemon,
    }
}

/// A network namespace made for a test; removed on drop.
pub struct Netns(pub String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Whether this machine can run netd in a namespace (root, iproute2).
pub fn can_netns() -> bool {
    nix::unistd::geteuid().is_root() && Command::new("ip").arg("-V").output().is_ok()
}

/// The real keel-netd in a new namespace `name` holding `eth0` (a veth) at
/// 10.0.0.2/24, its data under `dir/data`, socket `dir/netd.sock`.
pub fn netd(dir: &Path, name: &str) -> (Netns, Daemon) {
    let ns = Netns(format!("{name}-{}", std::process::id()));
    let ip = |args: &[&str]| {
        let st = Command::new("ip").args(args).status().unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    ip(&["netns", "add", &ns.0]);
    ip(&[
        "-n", &ns.0, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);
    ip(&["-n", &ns.0, "link", "set", "peer0", "up"]);
    let net = dir.join("data/net");
    std::fs::create_dir_all(&net).unwrap();
    std::fs::write(
        net.join("config.json"),
        json!({"interfaces": [{"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/24"]}]})
            .to_string(),
    )
    .unwrap();
    let socket = dir.join("netd.sock");
    let mut cmd = Command::new(workspace_bin("keel-netd"));
    cmd.arg("--netns")
        .arg(&ns.0)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--socket")
        .arg(&socket)
        .args([
            "--networkd-dir",
            "none",
            "--resolved-dropin",
            "none",
            "--hostname-file",
            "none",
            "--reload-request",
            "none",
            "--reconcile-seconds",
            "0",
        ]);
    let mut daemon = Daemon::spawn(cmd, dir.join("netd.log"));
    daemon.wait_until("keel-netd", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    (ns, daemon)
}

/// keelctl with `args`, its environment free of the caller's KEEL_* settings.
pub fn keelctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keelctl"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("KEEL_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Standard output and error of a run, for assertions and their messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
