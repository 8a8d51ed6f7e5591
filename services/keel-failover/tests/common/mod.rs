//! A failover pair in network namespaces: nodes `a` and `b` and a client/gateway
//! namespace `c` holding the bridge. `c`'s bridge address (10.77.0.1) is the
//! check address and default gateway; the shared addresses are 10.77.0.100/24 and
//! fd77::100/64. The daemons are the built binary; everything is removed on drop.
//! Only addresses inside these namespaces are ever contacted.

#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_api::{FailoverOverview, FailoverRole, FailoverStatus};
use nix::sched::CloneFlags;

pub const SHARED4: &str = "10.77.0.100";
pub const SHARED6: &str = "fd77::100";
pub const GATEWAY: &str = "10.77.0.1";
pub const PORT: u16 = 7946;
pub const SERVICE_PORT: u16 = 8080;

/// Why these tests cannot run here, if they cannot (they then pass, saying so).
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: failover namespace tests skipped".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`ip netns` unavailable (iproute2): failover namespace tests skipped".into()),
    }
}

#[macro_export]
macro_rules! need_netns {
    () => {
        if let Some(why) = common::unavailable() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn ip(ns: &str, args: &[&str]) {
    run(Command::new("ip").arg("-n").arg(ns).args(args));
}

/// Moves the calling thread into namespace `ns`.
pub fn enter(ns: &str) {
    let f = File::open(Path::new("/run/netns").join(ns)).expect("namespace");
    nix::sched::setns(f, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Polls `f` until it returns `Some`, for at most `ceiling` (generous: the box may
/// be loaded; only a real failure takes that long).
pub fn wait_for<T>(what: &str, ceiling: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + ceiling;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {ceiling:?}: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    A,
    B,
}

impl Node {
    pub fn idx(self) -> usize {
        self as usize
    }
    pub fn other(self) -> Node {
        match self {
            Node::A => Node::B,
            Node::B => Node::A,
        }
    }
    pub fn id(self) -> &'static str {
        ["a", "b"][self.idx()]
    }
    pub fn addr(self) -> &'static str {
        ["10.77.0.2", "10.77.0.3"][self.idx()]
    }
}

pub struct Pair {
    pub ns: [String; 2],
    pub client: String,
    pub dir: tempfile::TempDir,
    pub daemons: [Option<Child>; 2],
    pub interval_ms: u64,
    pub window_ms: u64,
}

pub struct Options {
    pub interval_ms: u64,
    pub window_ms: u64,
    /// Leave check_address out: the default gateway is used.
    pub default_gateway_check: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            interval_ms: keel_failover::config::DEFAULT_INTERVAL_MS,
            window_ms: keel_failover::config::DEFAULT_WINDOW_MS,
            default_gateway_check: false,
        }
    }
}

impl Pair {
    pub fn new(tag: &str, opts: Options) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("kf{}{n}{tag}", std::process::id() % 10000);
        let names: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|s| format!("{base}-{s}"))
            .collect();
        for name in &names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            run(Command::new("ip").args(["netns", "add", name]));
            ip(name, &["link", "set", "lo", "up"]);
        }
        let c = &names[2];
        // No multicast snooping: neighbour solicitations reach every port at once.
        ip(
            c,
            &[
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        );
        ip(c, &["link", "set", "br0", "up"]);
        ip(c, &["addr", "add", "10.77.0.1/24", "dev", "br0"]);
        ip(c, &["addr", "add", "fd77::1/64", "dev", "br0", "nodad"]);
        for (i, node) in [Node::A, Node::B].iter().enumerate() {
            let ns = &names[i];
            let port = format!("p{}", node.id());
            ip(
                c,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
                ],
            );
            ip(c, &["link", "set", &port, "master", "br0", "up"]);
            ip(ns, &["link", "set", "eth0", "up"]);
            ip(
                ns,
                &["addr", "add", &format!("{}/24", node.addr()), "dev", "eth0"],
            );
            ip(ns, &["route", "add", "default", "via", GATEWAY]);
        }
        let dir = tempfile::tempdir().unwrap();
        let psk = dir.path().join("psk");
        std::fs::write(&psk, b"0123456789abcdef0123456789abcdef-test-key").unwrap();
        std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).unwrap();
        for node in [Node::A, Node::B] {
            let mut cfg = serde_json::json!({
                "node_id": node.id(),
                "interface": "eth0",
                "shared_addresses": [format!("{SHARED4}/24"), format!("{SHARED6}/64")],
                "local": format!("{}:{PORT}", node.addr()),
                "peer": format!("{}:{PORT}", node.other().addr()),
                "psk_file": psk,
                "interval_ms": opts.interval_ms,
                "window_ms": opts.window_ms,
                "initial_role": if node == Node::A { "primary" } else { "backup" },
            });
            if !opts.default_gateway_check {
                cfg["check_address"] = GATEWAY.into();
            }
            std::fs::write(
                dir.path().join(format!("{}.json", node.id())),
                cfg.to_string(),
            )
            .unwrap();
        }
        let mut names = names.into_iter();
        let pair = Pair {
            ns: [names.next().unwrap(), names.next().unwrap()],
            client: names.next().unwrap(),
            dir,
            daemons: [None, None],
            interval_ms: opts.interval_ms,
            window_ms: opts.window_ms,
        };
        for node in [Node::A, Node::B] {
            pair.serve_tcp(node);
        }
        pair
    }

    pub fn ns(&self, n: Node) -> &str {
        &self.ns[n.idx()]
    }

    pub fn config(&self, n: Node) -> PathBuf {
        self.dir.path().join(format!("{}.json", n.id()))
    }

    pub fn socket(&self, n: Node) -> PathBuf {
        self.dir.path().join(format!("{}.sock", n.id()))
    }

    pub fn log(&self, n: Node) -> PathBuf {
        self.dir.path().join(format!("{}.log", n.id()))
    }

    /// A TCP service on every address of the node (the shared one included, once
    /// it is there): what the client measures the outage against.
    fn serve_tcp(&self, n: Node) {
        let ns = self.ns(n).to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            enter(&ns);
            let l = TcpListener::bind(("0.0.0.0", SERVICE_PORT)).unwrap();
            tx.send(()).unwrap();
            for s in l.incoming() {
                drop(s);
            }
        });
        rx.recv().unwrap();
    }

    pub fn start(&mut self, n: Node) {
        self.spawn(n, &[], self.config(n), &[]);
    }

    /// This node's data directory.
    pub fn data(&self, n: Node) -> PathBuf {
        self.dir.path().join(format!("data-{}", n.id()))
    }

    /// Starts the daemon with no relationship (its config.json in its data
    /// directory, absent at first) and the pairing port on its own address.
    pub fn start_unpaired(&mut self, n: Node, extra: &[&str]) {
        self.start_unpaired_at(n, self.data(n).join("config.json"), extra);
    }

    /// `start_unpaired` with the relationship kept at `config`.
    pub fn start_unpaired_at(&mut self, n: Node, config: PathBuf, extra: &[&str]) {
        let listen = format!("{}:7947", n.addr());
        let mut args = vec!["--pair-listen", &listen];
        args.extend_from_slice(extra);
        self.spawn(n, &[], config, &args);
    }

    /// Starts the daemon as `nobody` with CAP_NET_ADMIN and CAP_NET_RAW only (what
    /// the systemd unit grants), through util-linux `setpriv`. The test directory
    /// becomes nobody's (root passes anyway).
    pub fn start_unprivileged(&mut self, n: Node) {
        run(Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(self.dir.path()));
        self.spawn(
            n,
            &[
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all,+net_admin,+net_raw",
                "--ambient-caps=+net_admin,+net_raw",
                "--bounding-set=-all,+net_admin,+net_raw",
            ],
            self.config(n),
            &[],
        );
    }

    fn spawn(&mut self, n: Node, wrapper: &[&str], config: PathBuf, extra: &[&str]) {
        let _ = std::fs::remove_file(self.socket(n));
        let child = launch(
            self.ns(n),
            wrapper,
            &config,
            &self.data(n),
            &self.socket(n),
            extra,
            &self.log(n),
        );
        self.daemons[n.idx()] = Some(child);
        wait_for(
            "daemon answers on its socket",
            Duration::from_secs(20),
            || self.try_overview(n),
        );
    }

    /// SIGKILL: no cleanup runs, as in a crash.
    pub fn kill(&mut self, n: Node) {
        if let Some(mut c) = self.daemons[n.idx()].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Power loss: the link and the process die at once (link first: the test's
    /// TCP service lives in the test process, so the link is what ends service,
    /// and an outage measured from this call's return then starts no later than
    /// the heartbeats stopped).
    pub fn power_loss(&mut self, n: Node) {
        let ns = self.ns(n).to_owned();
        ip(&ns, &["link", "set", "eth0", "down"]);
        self.kill(n);
    }

    /// Power back: the node boots without the shared addresses, link up, daemon on.
    pub fn power_on(&mut self, n: Node) {
        let ns = self.ns(n).to_owned();
        let _ = Command::new("ip")
            .args([
                "-n",
                &ns,
                "addr",
                "del",
                &format!("{SHARED4}/24"),
                "dev",
                "eth0",
            ])
            .output();
        let _ = Command::new("ip")
            .args([
                "-n",
                &ns,
                "addr",
                "del",
                &format!("{SHARED6}/64"),
                "dev",
                "eth0",
            ])
            .output();
        ip(&ns, &["link", "set", "eth0", "up"]);
        self.start(n);
    }

    /// Cuts (or restores) the node's cable at the bridge: its own side loses carrier.
    pub fn cable(&self, n: Node, connected: bool) {
        let port = format!("p{}", n.id());
        ip(
            &self.client,
            &["link", "set", &port, if connected { "up" } else { "down" }],
        );
    }

    /// Drops heartbeats arriving at node `n` (nftables in its namespace), or stops.
    pub fn drop_heartbeats_to(&self, n: Node, drop: bool) {
        let ns = self.ns(n);
        if drop {
            let rules = self.dir.path().join(format!("drop-{}.nft", n.id()));
            std::fs::write(
                &rules,
                format!(
                    "table inet kftest {{\n chain in {{\n  type filter hook input priority 0;\n  udp dport {PORT} drop\n }}\n}}\n"
                ),
            )
            .unwrap();
            run(Command::new("ip")
                .args(["netns", "exec", ns, "nft", "-f"])
                .arg(&rules));
        } else {
            run(Command::new("ip").args([
                "netns", "exec", ns, "nft", "delete", "table", "inet", "kftest",
            ]));
        }
    }

    pub fn try_overview(&self, n: Node) -> Option<FailoverOverview> {
        let client = keel_core::local_api::Client::new(self.socket(n));
        rt().block_on(client.call::<(), FailoverOverview>("GET", "/status", None))
            .ok()
    }

    pub fn overview(&self, n: Node) -> FailoverOverview {
        self.try_overview(n)
            .unwrap_or_else(|| panic!("no status from {}: log:\n{}", n.id(), self.log_text(n)))
    }

    /// The engine's view; `None` also while the node is unpaired.
    pub fn try_status(&self, n: Node) -> Option<FailoverStatus> {
        self.try_overview(n)?.engine
    }

    pub fn status(&self, n: Node) -> FailoverStatus {
        self.try_status(n)
            .unwrap_or_else(|| panic!("no status from {}: log:\n{}", n.id(), self.log_text(n)))
    }

    /// A POST answered with the overview; the engine's part of it.
    pub fn post(&self, n: Node, path: &str, body: Option<&serde_json::Value>) -> FailoverStatus {
        let client = keel_core::local_api::Client::new(self.socket(n));
        let o: FailoverOverview = rt().block_on(client.call("POST", path, body)).unwrap();
        o.engine.expect("an engine")
    }

    /// Any local API request, the answer as JSON or the error's text.
    pub fn call(
        &self,
        n: Node,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let client = keel_core::local_api::Client::new(self.socket(n));
        rt().block_on(client.call(method, path, body))
            .map_err(|e| e.to_string())
    }

    pub fn log_text(&self, n: Node) -> String {
        std::fs::read_to_string(self.log(n)).unwrap_or_default()
    }

    /// Waits until `n` is primary holding and its peer a backup that hears it.
    pub fn wait_settled(&self, primary: Node) {
        wait_for(
            &format!(
                "{} primary, {} backup hearing it",
                primary.id(),
                primary.other().id()
            ),
            Duration::from_secs(20),
            || {
                let p = self.try_status(primary)?;
                let b = self.try_status(primary.other())?;
                (p.role == FailoverRole::Primary
                    && p.holding
                    && b.role == FailoverRole::Backup
                    && b.peer_holding == Some(true)
                    && b.peer_last_seen_ms.is_some_and(|ms| ms < self.window_ms))
                .then_some(())
            },
        );
    }

    /// Raw socket in `n`'s namespace capturing the next heartbeat payload arriving
    /// there (a genuine datagram of the peer, for replay tests).
    pub fn capture_heartbeat(&self, n: Node) -> Vec<u8> {
        self.capture_heartbeats(n, 1).remove(0)
    }

    /// The next `count` heartbeat payloads arriving in `n`'s namespace, in order.
    pub fn capture_heartbeats(&self, n: Node, count: usize) -> Vec<Vec<u8>> {
        let ns = self.ns(n).to_owned();
        std::thread::spawn(move || {
            enter(&ns);
            // SAFETY: plain socket(2); closed below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_DGRAM,
                    i32::from(0x0800u16.to_be()),
                )
            };
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut buf = [0u8; 2048];
            let end = Instant::now() + Duration::from_secs(30);
            let mut out = Vec::with_capacity(count);
            while out.len() < count {
                assert!(
                    Instant::now() < end,
                    "{} of {count} heartbeats captured",
                    out.len()
                );
                // SAFETY: valid buffer of the given size.
                let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if r < 28 {
                    continue;
                }
                let p = &buf[..r as usize];
                let ihl = usize::from(p[0] & 0x0f) * 4;
                if p[9] != 17 || p.len() < ihl + 8 {
                    continue;
                }
                let dport = u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]);
                if dport == PORT {
                    out.push(p[ihl + 8..].to_vec());
                }
            }
            // SAFETY: our descriptor.
            unsafe { libc::close(fd) };
            out
        })
        .join()
        .unwrap()
    }

    /// Sends raw datagrams to `n`'s heartbeat port from the client namespace.
    pub fn inject(&self, n: Node, datagrams: &[Vec<u8>]) {
        self.inject_paced(n, datagrams, Duration::ZERO)
            .join()
            .unwrap();
    }

    /// `inject` in the background, `gap` between datagrams (a replay at the
    /// sender's pace).
    pub fn inject_paced(
        &self,
        n: Node,
        datagrams: &[Vec<u8>],
        gap: Duration,
    ) -> std::thread::JoinHandle<()> {
        let ns = self.client.clone();
        let to: SocketAddr = format!("{}:{PORT}", n.addr()).parse().unwrap();
        let datagrams = datagrams.to_vec();
        std::thread::spawn(move || {
            enter(&ns);
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for d in datagrams {
                s.send_to(&d, to).unwrap();
                std::thread::sleep(gap);
            }
        })
    }
}

/// Starts the built daemon in namespace `ns` (output appended to `log`).
pub fn launch(
    ns: &str,
    wrapper: &[&str],
    config: &Path,
    data: &Path,
    socket: &Path,
    extra: &[&str],
    log: &Path,
) -> Child {
    let log = File::options().create(true).append(true).open(log).unwrap();
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(wrapper)
        .arg(env!("CARGO_BIN_EXE_keel-failover"))
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .arg("--socket")
        .arg(socket)
        .args(extra)
        .env("KEEL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.kill(Node::A);
        self.kill(Node::B);
        if std::thread::panicking() {
            for n in [Node::A, Node::B] {
                eprintln!("--- log of {} ---\n{}", n.id(), self.log_text(n));
            }
        }
        for ns in self.ns.iter().chain([&self.client]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The kernel's view, sampled every few milliseconds over netlink: on which node
/// the shared IPv4 address is *live* (assigned on an interface that is up with
/// carrier; an address on a dead link answers nobody).
pub struct Monitor {
    stop: Arc<AtomicBool>,
    pub state: Arc<Mutex<MonitorState>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
pub struct MonitorState {
    pub live: [bool; 2],
    pub samples: u64,
    /// Longest stretches, since the last `take`, with the address live on both
    /// nodes and on neither (first to last sample seen so).
    pub max_both: Duration,
    pub max_neither: Duration,
    both_since: Option<Instant>,
    neither_since: Option<Instant>,
    /// Whether each node was ever live since the last `take`.
    pub ever: [bool; 2],
}

impl MonitorState {
    fn record(&mut self, live: [bool; 2], now: Instant) {
        self.samples += 1;
        self.live = live;
        for (ever, l) in self.ever.iter_mut().zip(live) {
            *ever |= l;
        }
        if live[0] && live[1] {
            let since = *self.both_since.get_or_insert(now);
            self.max_both = self.max_both.max(now - since);
        } else {
            self.both_since = None;
        }
        if !live[0] && !live[1] {
            let since = *self.neither_since.get_or_insert(now);
            self.max_neither = self.max_neither.max(now - since);
        } else {
            self.neither_since = None;
        }
    }
}

impl Monitor {
    pub fn start(pair: &Pair) -> Self {
        let ns = pair.ns.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(MonitorState::default()));
        let (s2, st2) = (stop.clone(), state.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = rt();
            rt.block_on(async move {
                let mut kernels = Vec::new();
                for n in &ns {
                    enter(n);
                    kernels.push(keel_failover::kernel::Kernel::connect().unwrap());
                }
                let shared: Vec<ipnetwork::IpNetwork> =
                    vec![format!("{SHARED4}/24").parse().unwrap()];
                ready_tx.send(()).unwrap();
                while !s2.load(Ordering::Relaxed) {
                    let mut live = [false; 2];
                    for (i, k) in kernels.iter().enumerate() {
                        if let Ok(l) = k.link("eth0").await {
                            live[i] = l.up
                                && k.present(l.index, &shared)
                                    .await
                                    .map(|p| p[0])
                                    .unwrap_or(false);
                        }
                    }
                    st2.lock().unwrap().record(live, Instant::now());
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            });
        });
        ready_rx.recv().unwrap();
        Monitor {
            stop,
            state,
            thread: Some(thread),
        }
    }

    pub fn live(&self) -> [bool; 2] {
        self.state.lock().unwrap().live
    }

    /// Waits for a fresh sample showing the address live on exactly `n`.
    pub fn wait_live_on(&self, n: Node, ceiling: Duration) {
        let start = self.state.lock().unwrap().samples;
        wait_for(
            &format!("shared address live on {} only", n.id()),
            ceiling,
            || {
                let st = self.state.lock().unwrap();
                let want = [n == Node::A, n == Node::B];
                (st.samples > start && st.live == want).then_some(())
            },
        );
    }

    /// The maxima since the last call, and starts over (ongoing stretches continue).
    pub fn take(&self) -> (Duration, Duration, [bool; 2]) {
        let mut st = self.state.lock().unwrap();
        let out = (st.max_both, st.max_neither, st.ever);
        st.max_both = Duration::ZERO;
        st.max_neither = Duration::ZERO;
        st.ever = st.live;
        out
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client in the gateway namespace opening a new TCP connection to the shared
/// address every 10 ms (each attempt on its own thread, 500 ms connect timeout).
pub struct ProbeClient {
    stop: Arc<AtomicBool>,
    /// (attempt started, finished, succeeded)
    pub attempts: Arc<Mutex<Vec<(Instant, Instant, bool)>>>,
}

impl ProbeClient {
    pub fn start(pair: &Pair) -> Self {
        let ns = pair.client.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (s2, a2) = (stop.clone(), attempts.clone());
        std::thread::spawn(move || {
            enter(&ns);
            let to: SocketAddr = format!("{SHARED4}:{SERVICE_PORT}").parse().unwrap();
            while !s2.load(Ordering::Relaxed) {
                let a3 = a2.clone();
                std::thread::spawn(move || {
                    let t = Instant::now();
                    let ok = TcpStream::connect_timeout(&to, Duration::from_millis(500)).is_ok();
                    a3.lock().unwrap().push((t, Instant::now(), ok));
                });
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        ProbeClient { stop, attempts }
    }

    /// Time from `t0` to the end of the first successful connection started after it.
    pub fn outage_after(&self, t0: Instant, ceiling: Duration) -> Duration {
        wait_for(
            "a connection to the shared address after the event",
            ceiling,
            || {
                let a = self.attempts.lock().unwrap();
                a.iter()
                    .filter(|(start, _, ok)| *ok && *start >= t0)
                    .map(|(_, end, _)| *end - t0)
                    .min()
            },
        )
    }
}

impl Drop for ProbeClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
