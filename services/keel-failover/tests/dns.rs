//! DNS swing against a real resolver client: the server on 127.0.0.1 (a free
//! port, UDP and TCP), queried with Debian's `dig` (bind9-dnsutils; installed by
//! scripts/deps.sh), and two of them behind Debian's dnsmasq as the customer's
//! caching resolver. Without `dig` (or dnsmasq) the tests say so and skip.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use keel_failover::dns::{self, DnsConfig, DnsServer, Who};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const NAME: &str = "portal.example.com";
const THIS4: &str = "192.0.2.10";
const THIS6: &str = "2001:db8::10";
const PEER4: &str = "198.51.100.20";
const PEER6: &str = "2001:db8::20";

fn have_dig() -> bool {
    std::process::Command::new("dig")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
}

macro_rules! need_dig {
    () => {
        if !have_dig() {
            eprintln!(
                "SKIPPED: no `dig` on this host (bind9-dnsutils; scripts/deps.sh installs it)"
            );
            return;
        }
    };
}

fn config(extra: serde_json::Value) -> DnsConfig {
    let mut v = json!({
        "enabled": true,
        "name": "Portal.Example.COM.",
        "listen": "127.0.0.1:0",
        "ttl": 7,
        "this_node": [THIS4, THIS6],
        "peer_node": [PEER4, PEER6],
        "nameservers": ["kf-a.example.net", "kf-b.example.net"],
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).expect("a valid config")
}

struct Site {
    addr: SocketAddr,
    primary: watch::Sender<Who>,
    task: JoinHandle<Result<(), dns::DnsError>>,
}

async fn start(cfg: DnsConfig, who: Who) -> Site {
    let (primary, rx) = watch::channel(who);
    let server = DnsServer::bind(&cfg, rx)
        .await
        .expect("binds")
        .expect("enabled");
    let addr = server.local_addrs()[0];
    assert_eq!(server.local_addrs().len(), 1);
    let task = tokio::spawn(server.run());
    Site {
        addr,
        primary,
        task,
    }
}

#[derive(Debug)]
struct Rr {
    name: String,
    ttl: u32,
    rtype: String,
    data: String,
}

#[derive(Debug)]
struct Reply {
    status: String,
    flags: Vec<String>,
    answer: Vec<Rr>,
    authority: Vec<Rr>,
    text: String,
}

impl Reply {
    fn flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
    fn data(&self, rtype: &str) -> Vec<&str> {
        self.answer
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.data.as_str())
            .collect()
    }
}

/// Parses dig's default presentation: the `->>HEADER<<-` status, the `flags:`
/// line and the ANSWER / AUTHORITY sections.
fn parse(text: &str) -> Reply {
    let mut status = None;
    let mut flags = None;
    let (mut answer, mut authority) = (Vec::new(), Vec::new());
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            status = Some(rest.split(',').next().unwrap().trim().to_owned());
        } else if let Some(rest) = line.strip_prefix(";; flags:") {
            let f = rest.split(';').next().unwrap();
            flags = Some(f.split_whitespace().map(str::to_owned).collect());
        } else if let Some(rest) = line.strip_prefix(";; ") {
            section = rest.split(' ').next().unwrap_or("");
        } else if !line.starts_with(';') && !line.trim().is_empty() {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() >= 5, "record line {line:?} in\n{text}");
            let rr = Rr {
                name: f[0].to_owned(),
                ttl: f[1].parse().unwrap(),
                rtype: f[3].to_owned(),
                data: f[4..].join(" "),
            };
            match section {
                "ANSWER" => answer.push(rr),
                "AUTHORITY" => authority.push(rr),
                _ => {}
            }
        }
    }
    Reply {
        status: status.unwrap_or_else(|| panic!("no status in dig output:\n{text}")),
        flags: flags.unwrap_or_else(|| panic!("no flags in dig output:\n{text}")),
        answer,
        authority,
        text: text.to_owned(),
    }
}

async fn dig(addr: SocketAddr, name: &str, rtype: &str, opts: &[&str]) -> Reply {
    parse(&dig_text(addr, name, rtype, opts).await)
}

async fn dig_text(addr: SocketAddr, name: &str, rtype: &str, opts: &[&str]) -> String {
    let (ok, text, err) = run_dig(addr, name, rtype, opts).await;
    assert!(ok, "dig {name} {rtype} {opts:?}: {err}\n{text}");
    eprintln!("dig {name} {rtype} {opts:?}:\n{text}");
    text
}

/// `None` when dig got no answer at all.
async fn dig_try(addr: SocketAddr, name: &str, rtype: &str, opts: &[&str]) -> Option<Reply> {
    let (ok, text, _) = run_dig(addr, name, rtype, opts).await;
    ok.then(|| parse(&text))
}

async fn run_dig(
    addr: SocketAddr,
    name: &str,
    rtype: &str,
    opts: &[&str],
) -> (bool, String, String) {
    // Generous: answers come in milliseconds; the retries only matter on a
    // machine so loaded that a datagram waits.
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string()])
        .args(["+nocmd", "+nostats", "+time=5", "+tries=3"])
        .args(opts)
        .args([name, rtype])
        .env("HOME", "/nonexistent") // no ~/.digrc
        .output()
        .await
        .expect("running dig");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_authoritative_answer(r: &Reply, rtype: &str, want: &[&str], ttl: u32) {
    assert_eq!(r.status, "NOERROR", "{}", r.text);
    assert!(r.flag("aa"), "AA not set:\n{}", r.text);
    assert!(!r.flag("ra"), "recursion offered:\n{}", r.text);
    assert_eq!(r.data(rtype), want, "{}", r.text);
    for rr in &r.answer {
        assert_eq!(rr.name, format!("{NAME}."), "{}", r.text);
        assert_eq!(rr.ttl, ttl, "{}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_and_aaaa_follow_the_primary_at_once() {
    need_dig!();
    let site = start(config(json!({})), Who::ThisNode).await;
    let r = dig(site.addr, NAME, "A", &[]).await;
    assert_authoritative_answer(&r, "A", &[THIS4], 7);
    assert!(
        r.flag("rd"),
        "dig asks for recursion by default: {}",
        r.text
    );
    assert!(
        r.text.contains("recursion requested but not available"),
        "{}",
        r.text
    );
    assert_authoritative_answer(
        &dig(site.addr, NAME, "AAAA", &[]).await,
        "AAAA",
        &[THIS6],
        7,
    );

    // The peer becomes primary: the very next query answers with its addresses.
    site.primary.send(Who::PeerNode).unwrap();
    assert_authoritative_answer(&dig(site.addr, NAME, "A", &[]).await, "A", &[PEER4], 7);
    assert_authoritative_answer(
        &dig(site.addr, NAME, "AAAA", &[]).await,
        "AAAA",
        &[PEER6],
        7,
    );
    // Any case of the name (DNS is case-insensitive; 0x20-style clients).
    let r = dig(site.addr, "PORTAL.example.Com", "A", &["+norecurse"]).await;
    assert_authoritative_answer(&r, "A", &[PEER4], 7);
    assert!(!r.flag("rd"));

    // Unknown: the last known primary is kept.
    site.primary.send(Who::Unknown).unwrap();
    assert_authoritative_answer(&dig(site.addr, NAME, "A", &[]).await, "A", &[PEER4], 7);

    site.primary.send(Who::ThisNode).unwrap();
    assert_authoritative_answer(&dig(site.addr, NAME, "A", &[]).await, "A", &[THIS4], 7);
    assert!(!site.task.is_finished());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_answers_the_same_and_follows_too() {
    need_dig!();
    let site = start(config(json!({})), Who::PeerNode).await;
    let r = dig(site.addr, NAME, "A", &["+tcp"]).await;
    assert_authoritative_answer(&r, "A", &[PEER4], 7);
    site.primary.send(Who::ThisNode).unwrap();
    assert_authoritative_answer(
        &dig(site.addr, NAME, "AAAA", &["+tcp"]).await,
        "AAAA",
        &[THIS6],
        7,
    );
    let r = dig(site.addr, "example.com", "A", &["+tcp"]).await;
    assert_eq!(r.status, "REFUSED", "{}", r.text);
    let r = dig(site.addr, &format!("x.{NAME}"), "A", &["+tcp"]).await;
    assert_eq!(r.status, "NXDOMAIN", "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_zone_is_answered_and_nothing_is_resolved() {
    need_dig!();
    let site = start(config(json!({})), Who::ThisNode).await;
    // Other names, the parent included, with and without RD: REFUSED, not
    // authoritative, no recursion offered, nothing in the answer.
    for name in [
        "example.com",
        "www.example.org",
        "com",
        ".",
        "portal.example.com.evil.net",
    ] {
        for opts in [&[][..], &["+norecurse"][..]] {
            let r = dig(site.addr, name, "A", opts).await;
            assert_eq!(r.status, "REFUSED", "{name} {opts:?}: {}", r.text);
            assert!(!r.flag("aa") && !r.flag("ra"), "{}", r.text);
            assert!(r.answer.is_empty() && r.authority.is_empty(), "{}", r.text);
        }
    }
    // Below the name: NXDOMAIN, authoritative, SOA with the configured TTL.
    for name in [format!("www.{NAME}"), format!("a.b.{NAME}")] {
        let r = dig(site.addr, &name, "A", &[]).await;
        assert_eq!(r.status, "NXDOMAIN", "{}", r.text);
        assert!(r.flag("aa") && !r.flag("ra"), "{}", r.text);
        assert!(r.answer.is_empty(), "{}", r.text);
        assert_eq!(r.authority.len(), 1, "{}", r.text);
        assert_eq!(r.authority[0].rtype, "SOA");
        assert_eq!(r.authority[0].ttl, 7);
    }
    // Other types at the name: NODATA (NOERROR, no answer, SOA in authority).
    for t in ["MX", "TXT", "CNAME", "SRV"] {
        let r = dig(site.addr, NAME, t, &[]).await;
        assert_eq!(r.status, "NOERROR", "{}", r.text);
        assert!(r.flag("aa"), "{}", r.text);
        assert!(r.answer.is_empty(), "{}", r.text);
        assert_eq!(r.authority.len(), 1, "{}", r.text);
        let soa = &r.authority[0];
        assert_eq!(
            (soa.rtype.as_str(), soa.name.as_str()),
            ("SOA", "portal.example.com.")
        );
        // mname = the first nameserver, rname = hostmaster@ the zone, minimum = ttl.
        let f: Vec<&str> = soa.data.split(' ').collect();
        assert_eq!(f[0], "kf-a.example.net.", "{}", r.text);
        assert_eq!(f[1], "hostmaster.portal.example.com.", "{}", r.text);
        assert_eq!(f[6], "7", "{}", r.text);
    }
    // The zone's own SOA and NS.
    let r = dig(site.addr, NAME, "NS", &[]).await;
    assert_eq!(r.status, "NOERROR");
    let mut ns = r.data("NS");
    ns.sort();
    assert_eq!(ns, ["kf-a.example.net.", "kf-b.example.net."], "{}", r.text);
    let r = dig(site.addr, NAME, "SOA", &[]).await;
    assert_eq!(r.data("SOA").len(), 1, "{}", r.text);
    assert!(r.flag("aa"));
    // ANY: the addresses (RFC 8482 lets a subset stand for the whole).
    let r = dig(site.addr, NAME, "ANY", &[]).await;
    assert_authoritative_answer(&r, "A", &[THIS4], 7);
    assert_eq!(r.data("AAAA"), [THIS6], "{}", r.text);
    assert_eq!(r.answer.len(), 2, "{}", r.text);
    // No zone transfer.
    // (dig prints this for a REFUSED transfer; a dead server would be a
    // "communications error".)
    let t = dig_text(site.addr, NAME, "AXFR", &[]).await;
    assert!(
        t.contains("; Transfer failed.") && !t.contains("error"),
        "{t}"
    );
    assert!(!t.contains("IN\tSOA"), "{t}");
    // A newer EDNS version than 0: BADVERS; no EDNS at all: still answered.
    let r = dig(site.addr, NAME, "A", &["+edns=1", "+noednsnegotiation"]).await;
    assert_eq!(r.status, "BADVERS", "{}", r.text);
    assert_authoritative_answer(
        &dig(site.addr, NAME, "A", &["+noedns"]).await,
        "A",
        &[THIS4],
        7,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_primary_known_yet_is_servfail_then_answers() {
    need_dig!();
    let site = start(config(json!({})), Who::Unknown).await;
    let r = dig(site.addr, NAME, "A", &[]).await;
    assert_eq!(r.status, "SERVFAIL", "{}", r.text);
    assert!(r.answer.is_empty());
    // What does not depend on the primary is still answered.
    let r = dig(site.addr, NAME, "SOA", &[]).await;
    assert_eq!(r.status, "NOERROR", "{}", r.text);
    site.primary.send(Who::PeerNode).unwrap();
    assert_authoritative_answer(&dig(site.addr, NAME, "A", &[]).await, "A", &[PEER4], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_without_ipv6_gets_nodata_for_aaaa() {
    need_dig!();
    let site = start(
        config(json!({"this_node": THIS4, "ttl": 30})),
        Who::ThisNode,
    )
    .await;
    assert_authoritative_answer(&dig(site.addr, NAME, "A", &[]).await, "A", &[THIS4], 30);
    let r = dig(site.addr, NAME, "AAAA", &[]).await;
    assert_eq!(r.status, "NOERROR", "{}", r.text);
    assert!(r.flag("aa") && r.answer.is_empty(), "{}", r.text);
    assert_eq!(r.authority[0].rtype, "SOA", "{}", r.text);
    assert_eq!(r.authority[0].ttl, 30, "{}", r.text);
    site.primary.send(Who::PeerNode).unwrap();
    assert_authoritative_answer(
        &dig(site.addr, NAME, "AAAA", &[]).await,
        "AAAA",
        &[PEER6],
        30,
    );
}

/// Deterministic junk (xorshift): the same bytes every run.
fn junk(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_ignored_and_the_server_keeps_answering() {
    need_dig!();
    let site = start(config(json!({})), Who::ThisNode).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut datagrams: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 5],
        // A header that promises a question and brings none.
        vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0],
        // Counts of 65535 in every section.
        [&[0xab, 0xcd, 0x01, 0x00][..], &[0xff; 8]].concat(),
        // A compression pointer that points at itself.
        [
            &[0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0][..],
            &[0xc0, 12, 0, 1, 0, 1],
        ]
        .concat(),
        // A response, not a query: must not be answered (reflection).
        [&[0, 2, 0x84, 0, 0, 0, 0, 0, 0, 0, 0, 0][..]].concat(),
        vec![0; 65000],
    ];
    datagrams.extend((0..64).map(|i| junk(i, 12 + (i as usize * 37) % 1400)));
    for d in &datagrams {
        sock.send_to(d, site.addr).await.unwrap();
    }
    // TCP: a length prefix promising more than comes, junk, a zero length.
    for bytes in [
        vec![0xff, 0xff, 1, 2, 3],
        junk(99, 3000),
        vec![0, 0],
        [&[0, 12][..], &junk(7, 12)].concat(),
    ] {
        let mut c = tokio::net::TcpStream::connect(site.addr).await.unwrap();
        let _ = c.write_all(&bytes).await;
        drop(c);
    }
    // Still alive on both transports, answers unchanged.
    assert_authoritative_answer(&dig(site.addr, NAME, "A", &[]).await, "A", &[THIS4], 7);
    assert_authoritative_answer(
        &dig(site.addr, NAME, "A", &["+tcp"]).await,
        "A",
        &[THIS4],
        7,
    );
    assert!(
        !site.task.is_finished(),
        "server task ended: {:?}",
        site.task
    );
}

/// A port with nothing on it, UDP or TCP, right now.
fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_listens_on_nothing() {
    let port = free_port();
    let mut cfg = config(json!({"enabled": false, "listen": format!("127.0.0.1:{port}")}));
    assert!(!cfg.enabled);
    let (_tx, rx) = watch::channel(Who::ThisNode);
    assert!(DnsServer::bind(&cfg, rx.clone()).await.unwrap().is_none());
    // serve() returns at once (the ceiling is only there so a bug cannot hang CI).
    let served = tokio::time::timeout(Duration::from_secs(60), dns::serve(cfg.clone(), rx)).await;
    assert!(matches!(served, Ok(Ok(()))), "{served:?}");
    // Nothing holds the port: we can bind it ourselves, on both transports.
    UdpSocket::bind(("127.0.0.1", port)).expect("UDP port free");
    TcpListener::bind(("127.0.0.1", port)).expect("TCP port free");
    // And the default is off.
    cfg = serde_json::from_value(json!({})).unwrap();
    assert_eq!(cfg, DnsConfig::default());
    assert!(!cfg.enabled);
}

fn parse_err(v: serde_json::Value) -> String {
    let de = serde_json::to_vec(&json!({ "dns": v })).unwrap();
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Outer {
        dns: DnsConfig,
    }
    let mut d = serde_json::Deserializer::from_slice(&de);
    match serde_path_to_error::deserialize::<_, Outer>(&mut d) {
        Ok(o) => panic!("accepted: {o:?}"),
        Err(e) => format!("{}: {}", e.path(), e.inner()),
    }
}

#[test]
fn config_defaults_and_normalization() {
    let cfg = config(json!({"ttl": 300}));
    assert_eq!(
        cfg.name.as_deref(),
        Some(NAME),
        "lowercased, no trailing dot"
    );
    assert_eq!(cfg.ttl, 300);
    let cfg: DnsConfig = serde_json::from_value(json!({
        "enabled": true, "name": "site.example.com", "this_node": "192.0.2.1",
        "peer_node": ["2001:db8::2"], "nameservers": "NS1.Example.net"
    }))
    .unwrap();
    assert_eq!(cfg.ttl, dns::DEFAULT_TTL);
    assert_eq!(cfg.listen, dns::default_listen());
    assert_eq!(cfg.nameservers, ["ns1.example.net"]);
    // It survives a round trip through its own serialization.
    let back: DnsConfig = serde_json::from_value(serde_json::to_value(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
}

#[test]
fn config_errors_name_the_field() {
    let ok = || {
        json!({
            "enabled": true, "name": "site.example.com", "this_node": ["192.0.2.1"],
            "peer_node": ["192.0.2.2"], "nameservers": ["ns.example.net"]
        })
    };
    let with = |k: &str, v: serde_json::Value| {
        let mut o = ok();
        if v.is_null() {
            o.as_object_mut().unwrap().remove(k);
        } else {
            o[k] = v;
        }
        parse_err(o)
    };
    let cases = [
        (
            with("name", json!("not a name")),
            "name: \"not a name\" is not a DNS hostname",
        ),
        (
            with("name", json!("com")),
            "name: \"com\" is not a DNS hostname: needs at least two labels",
        ),
        (
            with("name", serde_json::Value::Null),
            "name: the site hostname is required",
        ),
        (with("ttl", json!(0)), "ttl: 0 s: 1-300 s"),
        (with("ttl", json!(301)), "ttl: 301 s: 1-300 s"),
        (
            with("listen", json!(["127.0.0.1:53", "nope"])),
            "dns.listen: [1] \"nope\": invalid socket address",
        ),
        (with("listen", json!([])), "listen: at least one"),
        (
            with("listen", json!(["[::1]:53", "[::1]:53"])),
            "listen[1]: [::1]:53 is listed twice",
        ),
        (
            with("this_node", serde_json::Value::Null),
            "this_node: at least one address",
        ),
        (
            with("this_node", json!(["192.0.2.1", "300.1.1.1"])),
            "dns.this_node: [1] \"300.1.1.1\": invalid IP address",
        ),
        (
            with("peer_node", json!(["127.0.0.1"])),
            "peer_node[0]: 127.0.0.1 cannot be published",
        ),
        (
            with("peer_node", json!(["::", "192.0.2.9"])),
            "peer_node[0]: :: cannot be published",
        ),
        (
            with("peer_node", json!(["192.0.2.9", "192.0.2.9"])),
            "peer_node[1]: 192.0.2.9 is listed twice",
        ),
        (
            with("nameservers", json!([])),
            "nameservers: the names under which the parent zone delegates",
        ),
        (
            with("nameservers", json!(["ns.site.example.com"])),
            "nameservers[0]: ns.site.example.com is inside the zone",
        ),
        (
            with(
                "nameservers",
                json!(["ns.example.net", "bad_ns.example.net"]),
            ),
            "nameservers[1]: \"bad_ns.example.net\" is not a DNS hostname",
        ),
        (with("recursion", json!(true)), "unknown field `recursion`"),
        (
            with("listen", json!(53)),
            "dns.listen: expected a string or a list of strings",
        ),
    ];
    for (got, want) in cases {
        assert!(got.contains(want), "got {got:?}, want {want:?}");
    }
    // Off: the zone fields may be left out, but what is given is still checked.
    assert!(serde_json::from_value::<DnsConfig>(json!({"enabled": false, "ttl": 60})).is_ok());
    let e = parse_err(json!({"enabled": false, "name": "x"}));
    assert!(e.contains("name: \"x\" is not a DNS hostname"), "{e}");
}

/// dnsmasq (Debian's, as a customer's caching resolver would) forwarding the
/// site name to both appliances, killed on drop.
struct Resolver(std::process::Child);

impl Drop for Resolver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn resolver(port: u16, appliances: &[SocketAddr]) -> Resolver {
    let mut cmd = std::process::Command::new("dnsmasq");
    cmd.args(["--no-daemon", "--conf-file=/dev/null", "-u", "root"])
        .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
        .arg(format!("--port={port}"))
        // Nothing but our zone, nowhere else to ask; no pid file, no log.
        .args([
            "--no-resolv",
            "--no-hosts",
            "--pid-file",
            "--cache-size=100",
        ])
        // Ask both, take the first answer: what a recursive resolver does with the
        // two NS of a delegation when one stays silent. (dnsmasq's default sticks
        // to the server that answered last, even once it is gone for good.)
        .arg("--all-servers");
    for a in appliances {
        cmd.arg(format!("--server=/{NAME}/{}#{}", a.ip(), a.port()));
    }
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("dnsmasq");
    Resolver(child)
}

/// Short, so the resolver's cache runs out soon.
const RESOLVER_TTL: u32 = 2;

/// Asks `resolver` until the A answer is `want` (ceiling `within`, generous: the
/// point is that it happens, not how fast); returns how long it took.
async fn until_a(resolver: SocketAddr, want: &str, within: Duration) -> Duration {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(r) = dig_try(resolver, NAME, "A", &["+tries=1", "+time=2"]).await {
            if r.status == "NOERROR" && r.data("A") == [want] {
                assert!(
                    r.answer[0].ttl <= RESOLVER_TTL,
                    "the resolver keeps our TTL: {}",
                    r.text
                );
                return t0.elapsed();
            }
        }
        assert!(
            t0.elapsed() < within,
            "the resolver never answered {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caching_resolver_follows_the_swing_and_outlives_one_appliance() {
    need_dig!();
    if !std::path::Path::new("/usr/sbin/dnsmasq").exists() {
        eprintln!("SKIPPED: no dnsmasq (scripts/deps.sh installs it)");
        return;
    }
    // Two appliances, each with its own view (mirror-image configs), A primary.
    let a = start(
        config(json!({"listen": "127.0.0.1:0", "ttl": RESOLVER_TTL})),
        Who::ThisNode,
    )
    .await;
    let b_cfg = config(json!({
        "listen": "127.0.0.2:0", "ttl": RESOLVER_TTL, "this_node": [PEER4, PEER6], "peer_node": [THIS4, THIS6]
    }));
    let b = start(b_cfg, Who::PeerNode).await;
    let port = free_port();
    let _dnsmasq = resolver(port, &[a.addr, b.addr]);
    let via = SocketAddr::from(([127, 0, 0, 1], port));
    eprintln!(
        "resolver up, first answer after {:?}",
        until_a(via, THIS4, Duration::from_secs(60)).await
    );

    // Takeover by B: both views change; the resolver follows once its cached
    // answer (TTL RESOLVER_TTL) runs out.
    a.primary.send(Who::PeerNode).unwrap();
    b.primary.send(Who::ThisNode).unwrap();
    let took = until_a(via, PEER4, Duration::from_secs(60)).await;
    eprintln!("resolver followed the swing after {took:?} (TTL {RESOLVER_TTL} s)");

    // Appliance A gone entirely (its server dropped, sockets closed): the
    // resolver still gets the name from B.
    a.task.abort();
    let _ = a.task.await;
    // Dropping the server closes its sockets (its listener tasks end with it).
    let t0 = std::time::Instant::now();
    while tokio::net::TcpStream::connect(a.addr).await.is_ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "A still listens on {}",
            a.addr
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t0 = std::time::Instant::now();
    let r = loop {
        // Past the cache: the first query after the TTL has to reach an appliance.
        tokio::time::sleep(Duration::from_secs(RESOLVER_TTL.into()) + Duration::from_millis(500))
            .await;
        if let Some(r) = dig_try(via, NAME, "A", &["+tries=3", "+time=3"]).await {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "no answer through the resolver with A gone"
        );
    };
    assert_eq!(r.status, "NOERROR", "{}", r.text);
    assert_eq!(r.data("A"), [PEER4], "{}", r.text);
    assert!(!b.task.is_finished());
}
