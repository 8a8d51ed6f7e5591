//! Connection limits of the console's listeners, in process over loopback with
//! real TLS: idle or slow connections cannot use up its file descriptors, and
//! the server closes them within its timeouts. Loopback answers the whole 127/8,
//! so client sockets bound to 127.x.y.z are distinct sources.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_console::{app, tls};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn connect_from(local: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(server).await
}

/// Whether the server closed its end (end of stream or reset) within `within`;
/// anything it sends on the way is read and dropped.
async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Waits until the limiter counts `n` open connections (the server accepts and
/// closes on its own time; a busy host may take a while).
async fn open_becomes(limiter: &tls::ConnLimiter, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while limiter.open() != n {
        assert!(
            Instant::now() < deadline,
            "{} connections open, not {n}",
            limiter.open()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lets this process open `extra` more descriptors than it has open now, and no
/// more: enough for the client ends of the test's connections and some room,
/// far too few if the server kept a descriptor for each of them too.
fn fd_budget(extra: u64) -> Result<(), String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let open = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("/proc/self/fd: {e}"))?
        .count() as u64;
    let want = open + extra;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    if hard < want {
        return Err(format!("the hard RLIMIT_NOFILE is {hard}, {want} needed"));
    }
    setrlimit(Resource::RLIMIT_NOFILE, want, hard)
        .map_err(|e| format!("setting RLIMIT_NOFILE to {want}: {e}"))
}

fn client_from(local: IpAddr) -> reqwest::Client {
    let verifier = keel_certs::pinning::FingerprintVerifier::record_any();
    reqwest::Client::builder()
        .use_preconfigured_tls(verifier.client_config())
        .local_address(local)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `count` connections from `local`, each made within a second.
async fn open_idle(local: IpAddr, server: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let s = tokio::time::timeout(Duration::from_secs(1), connect_from(local, server))
            .await
            .unwrap_or_else(|_| panic!("connection {i} from {local}: timed out"))
            .unwrap_or_else(|e| panic!("connection {i} from {local}: {e}"));
        conns.push(s);
    }
    conns
}

/// How many of `conns` the server has not closed, once that is at most `max` (or
/// at `deadline`: the server closes on its own time, and a busy host is slow).
/// Callers keep `deadline` well before the handshake timeout, which would close
/// them all whatever the limits do.
async fn still_open(conns: &mut [TcpStream], max: usize, deadline: Instant) -> usize {
    loop {
        let mut open = 0;
        for s in conns.iter_mut() {
            if !closed_within(s, Duration::from_millis(1)).await {
                open += 1;
            }
        }
        if open <= max || Instant::now() >= deadline {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the server closed every one of `conns`, at most `within`.
async fn all_closed(conns: Vec<TcpStream>, within: Duration) -> usize {
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut s| tokio::spawn(async move { closed_within(&mut s, within).await }))
        .collect();
    let mut left = 0;
    for t in tasks {
        if !t.await.unwrap() {
            left += 1;
        }
    }
    left
}

#[test]
fn the_defaults_are_the_documented_ones() {
    let d = tls::ConnLimits::default();
    assert_eq!(d.max_connections, 1024);
    assert_eq!(d.max_per_source, 64);
    assert_eq!(d.handshake_timeout, Duration::from_secs(10));
    assert_eq!(d.header_read_timeout, Duration::from_secs(20));
    assert_eq!(d.body_idle_timeout, Duration::from_secs(30));
}

/// With the default limits, as the console runs: 2000 idle connections from one
/// address, then a login from another; then over 1024 from 17 addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_use_up_descriptors() {
    let data = tempfile::tempdir().unwrap();
    let served = common::serve(data.path()).await;
    let (http, _) = common::client();
    common::set_up(&http, &served.base, data.path()).await;
    drop(http);
    let server: SocketAddr = served.base.trim_start_matches("https://").parse().unwrap();
    let limits = tls::ConnLimits::default();
    const IDLE: usize = 2000;
    if let Err(why) = fd_budget(IDLE as u64 + 400) {
        println!("skipped: cannot set the file descriptor limit: {why}");
        return;
    }

    let opened = Instant::now();
    let mut idle = open_idle(ip("127.0.0.1"), server, IDLE).await;
    let admin = client_from(ip("127.0.0.2"));
    let resp = admin
        .post(served.url("/appliance/api/v1/login"))
        .json(&json!({"password": common::PASSWORD}))
        .send()
        .await
        .expect("login from 127.0.0.2 while 127.0.0.1 holds 2000 connections");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    drop(admin);
    // All but the per-source limit were closed at once...
    let open = still_open(
        &mut idle,
        limits.max_per_source,
        opened + limits.handshake_timeout / 2,
    )
    .await;
    assert!(open <= limits.max_per_source, "{open} still open");
    // ...and the rest when their handshake did not come.
    let wait = (limits.handshake_timeout + Duration::from_secs(3)).saturating_sub(opened.elapsed());
    assert_eq!(all_closed(idle, wait).await, 0);

    // The overall cap: 17 addresses × 64 = 1088 connections, 1024 kept.
    let opened = Instant::now();
    let mut many = Vec::new();
    for i in 1..=17 {
        many.extend(open_idle(ip(&format!("127.1.0.{i}")), server, limits.max_per_source).await);
    }
    let open = still_open(
        &mut many,
        limits.max_connections,
        opened + limits.handshake_timeout / 2,
    )
    .await;
    assert!(
        open <= limits.max_connections && open + 4 >= limits.max_connections,
        "{open} open"
    );
    let wait = (limits.handshake_timeout + Duration::from_secs(3)).saturating_sub(opened.elapsed());
    assert_eq!(all_closed(many, wait).await, 0);
}

/// A console with `limits` on 127.0.0.1: its address and limiter.
async fn serve_limited(
    data: &std::path::Path,
    limits: tls::ConnLimits,
) -> (SocketAddr, Arc<tls::ConnLimiter>) {
    let (identity, _) = common::identity(data);
    let state = common::app_state(data, &identity);
    let resolver = Arc::new(tls::CertResolver::new(
        keel_certs::certified_key(&identity).unwrap(),
    ));
    let config = Arc::new(tls::server_config(resolver).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limiter = tls::ConnLimiter::new(limits);
    tokio::spawn(tls::serve_https_limited(
        listener,
        config,
        app::router(state),
        limiter.clone(),
    ));
    (addr, limiter)
}

async fn tls_connect(
    server: SocketAddr,
    local: IpAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let verifier = keel_certs::pinning::FingerprintVerifier::record_any();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(verifier.client_config()));
    let tcp = connect_from(local, server).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

#[tokio::test]
async fn over_limit_connections_are_closed_at_once() {
    let data = tempfile::tempdir().unwrap();
    let limits = tls::ConnLimits {
        max_connections: 4,
        max_per_source: 2,
        ..Default::default()
    };
    let (server, limiter) = serve_limited(data.path(), limits).await;
    // Kept open for this long is "not closed"; closing is waited for much longer.
    let quick = Duration::from_millis(300);
    let closing = Duration::from_secs(10);

    let mut a = open_idle(ip("127.0.0.3"), server, 3).await;
    assert!(!closed_within(&mut a[0], quick).await);
    assert!(!closed_within(&mut a[1], quick).await);
    assert!(
        closed_within(&mut a[2], closing).await,
        "third from one source"
    );
    let mut b = open_idle(ip("127.0.0.4"), server, 2).await;
    assert!(!closed_within(&mut b[1], quick).await);
    open_becomes(&limiter, 4).await;
    let mut c = connect_from(ip("127.0.0.5"), server).await.unwrap();
    assert!(closed_within(&mut c, closing).await, "fifth overall");
    // A closed connection gives its place back.
    drop(a.remove(0));
    open_becomes(&limiter, 3).await;
    let mut c = connect_from(ip("127.0.0.5"), server).await.unwrap();
    assert!(!closed_within(&mut c, quick).await);
    // And a real HTTPS request goes through once there is room.
    drop((a, b, c));
    open_becomes(&limiter, 0).await;
    let resp = client_from(ip("127.0.0.6"))
        .get(format!("https://{server}/appliance/api/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
}

#[tokio::test]
async fn the_plain_listener_is_limited_too() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let limiter = tls::ConnLimiter::new(tls::ConnLimits {
        max_per_source: 1,
        ..Default::default()
    });
    tokio::spawn(tls::serve_plain_limited(
        listener,
        app::redirect_router(),
        limiter,
    ));
    let mut conns = open_idle(ip("127.0.0.7"), server, 2).await;
    assert!(!closed_within(&mut conns[0], Duration::from_millis(300)).await);
    assert!(closed_within(&mut conns[1], Duration::from_millis(300)).await);
    let mut other = connect_from(ip("127.0.0.8"), server).await.unwrap();
    other
        .write_all(b"GET /x HTTP/1.1\r\nHost: keel\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    other.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
}

/// Closes within `timeout` (and not long before it) after `since`.
fn closed_on_time(since: Instant, timeout: Duration, what: &str) {
    let took = since.elapsed();
    assert!(
        took >= timeout.mul_f32(0.8) && took <= timeout + Duration::from_secs(2),
        "{what}: closed after {took:?}, timeout {timeout:?}"
    );
}

#[tokio::test]
async fn silent_slow_and_idle_connections_are_closed_on_time() {
    let data = tempfile::tempdir().unwrap();
    let limits = tls::ConnLimits {
        handshake_timeout: Duration::from_secs(2),
        header_read_timeout: Duration::from_secs(2),
        body_idle_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let (server, limiter) = serve_limited(data.path(), limits.clone()).await;
    let local = ip("127.0.0.9");
    let patience = Duration::from_secs(10);

    // No TLS handshake at all.
    let since = Instant::now();
    let mut tcp = connect_from(local, server).await.unwrap();
    assert!(closed_within(&mut tcp, patience).await);
    closed_on_time(since, limits.handshake_timeout, "no handshake");

    // A handshake, then not a byte of a request.
    let mut tls = tls_connect(server, local).await;
    let since = Instant::now();
    assert!(closed_within(&mut tls, patience).await);
    closed_on_time(since, limits.header_read_timeout, "no request");

    // Headers sent a line at a time, never finished.
    let mut tls = tls_connect(server, local).await;
    let since = Instant::now();
    tls.write_all(b"GET /appliance/api/v1/health HTTP/1.1\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let dripping = tokio::spawn(async move {
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let line = format!("X-Slow-{i}: still coming\r\n");
            if wr.write_all(line.as_bytes()).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
    });
    assert!(closed_within(&mut rd, patience).await);
    closed_on_time(since, limits.header_read_timeout, "slow headers");
    dripping.abort();

    // Headers whole, then a body that stops: the request ends, the connection goes.
    let mut tls = tls_connect(server, local).await;
    tls.write_all(
        b"POST /appliance/api/v1/login HTTP/1.1\r\nHost: keel\r\n\
          Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"password\": \"",
    )
    .await
    .unwrap();
    tls.flush().await.unwrap();
    let since = Instant::now();
    assert!(closed_within(&mut tls, patience).await);
    closed_on_time(since, limits.body_idle_timeout, "stalled body");

    // One request answered, then idle on keep-alive.
    let mut tls = tls_connect(server, local).await;
    tls.write_all(b"GET /appliance/api/v1/health HTTP/1.1\r\nHost: keel\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"ok\"") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&buf[..n]);
    }
    let since = Instant::now();
    assert!(closed_within(&mut tls, patience).await);
    closed_on_time(since, limits.header_read_timeout, "idle keep-alive");

    open_becomes(&limiter, 0).await;
}
