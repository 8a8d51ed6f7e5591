//! Pairing over TLS between two unpaired daemons (the built binary) in network
//! namespaces: establish through the local API, what each refusal says, the pin
//! after pairing, sync over the channel, become-primary with its last sync, and
//! break. Needs root and `ip netns`; skipped with the reason otherwise.

mod common;

use std::process::Child;
use std::time::Duration;

use common::{Node, Options, Pair, SHARED4};
use keel_api::FailoverRole;
use keel_failover::pair::{self, Identity, Msg};
use serde_json::json;

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const OTHER_KEY: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
const SETTLE: Duration = Duration::from_secs(30);

fn sync_root(pair: &Pair, n: Node) -> std::path::PathBuf {
    pair.dir.path().join(format!("root-{}", n.id()))
}

/// Two unpaired daemons, each with its own sync root.
fn unpaired(tag: &str) -> Pair {
    let mut pair = Pair::new(tag, Options::default());
    for n in [Node::A, Node::B] {
        let root = sync_root(&pair, n);
        for d in ["shared", "console", "update"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let root = root.to_str().unwrap().to_owned();
        pair.start_unpaired(n, &["--sync-root", &root]);
    }
    pair
}

fn set_key(pair: &Pair, n: Node, key: &str) {
    let r = pair
        .call(n, "PUT", "/psk", Some(&json!({ "psk": key })))
        .unwrap();
    assert_eq!(r["psk"], key);
}

fn request(peer: &str, shared: &str) -> serde_json::Value {
    json!({
        "peer": peer,
        "reverse": format!("{}:7947", Node::A.addr()),
        "shared_addresses": [shared],
        "interface": "eth0",
    })
}

fn establish(pair: &Pair) -> Result<serde_json::Value, String> {
    pair.call(
        Node::A,
        "POST",
        "/establish",
        Some(&request(Node::B.addr(), &format!("{SHARED4}/24"))),
    )
}

fn addresses(pair: &Pair, n: Node) -> String {
    common::run(std::process::Command::new("ip").args(["-n", pair.ns(n), "addr", "show", "eth0"]))
}

fn has_shared(pair: &Pair, n: Node) -> bool {
    addresses(pair, n).contains(&format!("{SHARED4}/24"))
}

fn assert_unpaired(pair: &Pair, n: Node) {
    let o = pair.overview(n);
    assert!(o.peer.is_none() && o.engine.is_none(), "{}: {o:?}", n.id());
    assert!(!pair.data(n).join("config.json").exists());
}

fn assert_err(r: Result<serde_json::Value, String>, status: &str, needle: &str) {
    let e = r.expect_err("refused");
    assert!(
        e.starts_with(status) && e.contains(needle),
        "wanted {status} …{needle}…, got: {e}"
    );
}

/// Connects to `to` from namespace `ns` as a node with `identity` and `psk`, and
/// sends `msg`: what the node answers (or the error).
fn stranger(ns: &str, identity: Identity, psk: &str, to: &str, msg: Msg) -> Result<Msg, String> {
    let (ns, psk, to) = (ns.to_owned(), psk.to_owned(), to.parse().unwrap());
    std::thread::spawn(move || {
        common::enter(&ns);
        common::rt().block_on(async move {
            let tls = pair::tls(&identity).unwrap();
            let local = pair::Local {
                identity: &identity,
                tls: &tls,
                psk: psk.as_bytes(),
                paired: false,
                protocol: pair::PROTOCOL,
            };
            let mut ch = pair::connect(&local, to).await.map_err(|e| e.to_string())?;
            ch.send(&msg).await.map_err(|e| e.to_string())?;
            ch.recv().await.map_err(|e| e.to_string())
        })
    })
    .join()
    .unwrap()
}

#[test]
fn establish_sync_become_primary_and_break() {
    need_netns!();
    let pair = unpaired("es");
    // Unpaired: status without engine, a fingerprint, a key of its own made.
    for n in [Node::A, Node::B] {
        assert_unpaired(&pair, n);
        assert_eq!(pair.overview(n).fingerprint.len(), 64);
        let own = pair.call(n, "GET", "/psk", None).unwrap();
        assert!(own["psk"].as_str().unwrap().len() >= 44, "{own}");
    }
    // The key: bad ones are refused and change nothing.
    let before = pair.call(Node::A, "GET", "/psk", None).unwrap();
    let e = pair.call(Node::A, "PUT", "/psk", Some(&json!({"psk": "c2hvcnQ="})));
    assert_err(e, "400", "at least 32 needed");
    let e = pair.call(Node::A, "PUT", "/psk", Some(&json!({"psk": "no base64!"})));
    assert_err(e, "400", "not base64");
    assert_eq!(pair.call(Node::A, "GET", "/psk", None).unwrap(), before);
    let generated = pair.call(Node::A, "POST", "/psk/generate", None).unwrap();
    assert_ne!(generated, before);
    set_key(&pair, Node::A, KEY);
    set_key(&pair, Node::B, KEY);

    let (fa, fb) = (
        pair.overview(Node::A).fingerprint,
        pair.overview(Node::B).fingerprint,
    );
    let o = establish(&pair).unwrap();
    assert_eq!(o["peer"]["fingerprint"], fb.as_str(), "{o}");
    let b = pair.overview(Node::B);
    let peer = b.peer.as_ref().expect("B knows A");
    assert_eq!(peer.fingerprint, fa);
    assert_eq!(peer.address, format!("{}:7947", Node::A.addr()));
    assert_eq!(
        b.engine.as_ref().unwrap().interface,
        "eth0",
        "B picked its interface"
    );
    pair.wait_settled(Node::A);
    assert!(has_shared(&pair, Node::A) && !has_shared(&pair, Node::B));

    // A first sync follows establish by itself.
    let first = common::wait_for("the first sync on B", SETTLE, || {
        pair.overview(Node::B).last_sync
    });
    assert!(first.ok && first.direction == "received", "{first:?}");
    // Sync over the channel: a file of the hosted product's shared data.
    std::fs::write(sync_root(&pair, Node::A).join("shared/site.txt"), b"hello").unwrap();
    let r = pair.call(Node::A, "POST", "/sync", None).unwrap();
    let sent = pair
        .overview(Node::A)
        .last_sync
        .expect("A records the sync");
    let got = pair
        .overview(Node::B)
        .last_sync
        .expect("B records the sync");
    assert_eq!(
        (sent.direction.as_str(), got.direction.as_str()),
        ("sent", "received")
    );
    assert_eq!(r["ok"], true, "{r}");
    assert!(sent.ok && got.ok, "{sent:?} {got:?}");
    assert_eq!(sent.items, got.items);
    assert!(
        got.items.iter().any(|i| i.contains("shared data")),
        "{got:?}"
    );
    assert_eq!(
        std::fs::read(sync_root(&pair, Node::B).join("shared/site.txt")).unwrap(),
        b"hello"
    );
    // The backup does not push.
    assert_err(pair.call(Node::B, "POST", "/sync", None), "409", "backup");

    // Become primary on B: a last sync pulled from A first, then the swap.
    std::fs::write(sync_root(&pair, Node::A).join("shared/site.txt"), b"again").unwrap();
    let before = pair.overview(Node::B).last_sync.unwrap().at;
    let r = pair.call(Node::B, "POST", "/become-primary", None).unwrap();
    assert_eq!(r["engine"]["role"], "primary", "{r}");
    let pulled = pair.overview(Node::B).last_sync.unwrap();
    assert_eq!(pulled.direction, "received");
    assert!(pulled.ok && pulled.at != before, "a new sync: {pulled:?}");
    assert_eq!(
        std::fs::read(sync_root(&pair, Node::B).join("shared/site.txt")).unwrap(),
        b"again"
    );
    assert_eq!(pair.overview(Node::A).last_sync.unwrap().direction, "sent");
    pair.wait_settled(Node::B);

    // Break on A (now backup): B was primary and keeps serving, A has nothing.
    let r = pair.call(Node::A, "POST", "/break", None).unwrap();
    assert!(r.get("warnings").is_none(), "{r}");
    assert_unpaired(&pair, Node::A);
    common::wait_for("B unpaired", SETTLE, || {
        pair.overview(Node::B).peer.is_none().then_some(())
    });
    assert_unpaired(&pair, Node::B);
    assert!(
        has_shared(&pair, Node::B),
        "the former primary keeps the address"
    );
    assert!(!has_shared(&pair, Node::A));
    // The key and the identity stay.
    assert_eq!(pair.call(Node::A, "GET", "/psk", None).unwrap()["psk"], KEY);
    assert_eq!(pair.overview(Node::A).fingerprint, fa);
    // Nothing to break any more.
    assert_err(
        pair.call(Node::A, "POST", "/break", None),
        "409",
        "no relationship",
    );
}

#[test]
fn every_refusal_says_which() {
    need_netns!();
    let mut pair = unpaired("rf");
    let shared = format!("{SHARED4}/24");
    // Malformed input and a shared address as a peer address: refused before any
    // connection.
    let cases = [
        (request("10.77.0.3:notaport", &shared), "peer: "),
        (
            request("10.77.0.3", "10.77.0.100/33"),
            "shared_addresses[0]",
        ),
        (
            request("10.77.0.3", "not-an-address"),
            "shared_addresses[0]",
        ),
        (request(SHARED4, &shared), "is a shared address"),
        (
            json!({"peer": "10.77.0.3", "reverse": "10.77.0.100", "shared_addresses": [shared], "interface": "eth0"}),
            "reverse: 10.77.0.100 is a shared address",
        ),
        (
            json!({"peer": "10.77.0.3", "reverse": "10.77.0.2", "shared_addresses": [shared], "interface": "nosuch0"}),
            "interface",
        ),
    ];
    for (body, needle) in &cases {
        assert_err(
            pair.call(Node::A, "POST", "/establish", Some(body)),
            "400",
            needle,
        );
    }
    // Unreachable: nothing listens there.
    let e = pair.call(
        Node::A,
        "POST",
        "/establish",
        Some(&request("10.77.0.3:7999", &shared)),
    );
    assert_err(e, "502", "cannot reach the peer at 10.77.0.3:7999");
    // Wrong key (each node still has its own random one): both sides say so.
    assert_err(establish(&pair), "409", pair::WRONG_KEY);
    common::wait_for("B logs the wrong key", SETTLE, || {
        pair.log_text(Node::B)
            .contains(pair::WRONG_KEY)
            .then_some(())
    });
    set_key(&pair, Node::A, KEY);
    set_key(&pair, Node::B, KEY);
    // B has no address in the shared subnet (A has one there).
    common::ip(
        pair.ns(Node::A),
        &["addr", "add", "10.88.0.2/24", "dev", "eth0"],
    );
    let e = pair.call(
        Node::A,
        "POST",
        "/establish",
        Some(&request("10.77.0.3", "10.88.0.100/24")),
    );
    assert_err(
        e,
        "400",
        "no interface of the peer has an address in the shared subnet 10.88.0.0/24",
    );
    // Incompatible version: B claims another pairing protocol.
    pair.kill(Node::B);
    let root = sync_root(&pair, Node::B).to_str().unwrap().to_owned();
    pair.start_unpaired(Node::B, &["--sync-root", &root, "--pair-protocol", "99"]);
    assert_err(
        establish(&pair),
        "409",
        "incompatible version: this node speaks pairing protocol 1, the peer protocol 99",
    );
    common::wait_for("B logs the other version", SETTLE, || {
        pair.log_text(Node::B)
            .contains("this node speaks pairing protocol 99, the peer protocol 1")
            .then_some(())
    });
    for n in [Node::A, Node::B] {
        assert_unpaired(&pair, n);
    }
    pair.kill(Node::B);
    pair.start_unpaired(Node::B, &["--sync-root", &root]);
    // Garbage on the pairing port is dropped; the port keeps answering.
    let ns = pair.client.clone();
    std::thread::spawn(move || {
        use std::io::Write;
        common::enter(&ns);
        let mut s = std::net::TcpStream::connect((Node::B.addr(), 7947)).unwrap();
        let _ = s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0, 0]);
        let _ = s.write_all(&[0xa5; 4096]);
    })
    .join()
    .unwrap();
    common::wait_for("B logs the dropped connection", SETTLE, || {
        pair.log_text(Node::B)
            .contains("pairing connection: pairing channel with 10.77.0.1")
            .then_some(())
    });
    establish(&pair).unwrap();
    pair.wait_settled(Node::A);

    // A third node with the right key: B and A are taken.
    let third = Third::start(&pair);
    set_key_at(&third, KEY);
    for (target, needle) in [
        (Node::B, "already in a relationship"),
        (Node::A, "already in a relationship"),
    ] {
        let body = json!({
            "peer": target.addr(), "reverse": "10.77.0.1",
            "shared_addresses": [shared], "interface": "br0",
        });
        let e = third.call("POST", "/establish", &body);
        assert!(e.contains("409") && e.contains(needle), "{e}");
    }
    assert_err(
        pair.call(
            Node::A,
            "POST",
            "/establish",
            Some(&request("10.77.0.1", &shared)),
        ),
        "409",
        "this node is already in a relationship",
    );

    // After pairing: a stranger's certificate is refused even with the right key,
    // and the pinned certificate is refused with the wrong key.
    let to = format!("{}:7947", Node::B.addr());
    let e = stranger(
        &pair.client,
        Identity::generate().unwrap(),
        KEY,
        &to,
        Msg::Break,
    )
    .unwrap_err();
    assert!(e.contains("is not the pinned peer's"), "{e}");
    let a_identity = Identity::load_or_create(&pair.data(Node::A)).unwrap();
    let e = stranger(&pair.client, a_identity, OTHER_KEY, &to, Msg::Break).unwrap_err();
    assert!(e.contains(pair::WRONG_KEY), "{e}");
    // A sync from a stranger is not applied either.
    let e = stranger(
        &pair.client,
        Identity::generate().unwrap(),
        KEY,
        &to,
        Msg::Sync {
            settings: pair::SharedSettings {
                shared_addresses: vec!["10.77.0.200/24".parse().unwrap()],
                interval_ms: 20,
                window_ms: 100,
                probe_ms: 20,
                auto_takeover: true,
                sync_interval_s: 60,
            },
            bundle_len: 0,
        },
    )
    .unwrap_err();
    assert!(e.contains("is not the pinned peer's"), "{e}");
    let b = pair.overview(Node::B);
    assert_eq!(
        b.peer.unwrap().fingerprint,
        pair.overview(Node::A).fingerprint
    );
    assert_eq!(b.engine.unwrap().shared_addresses, vec![shared.clone()]);
    assert_eq!(pair.status(Node::B).role, FailoverRole::Backup);
}

#[test]
fn break_with_the_peer_gone_works_here_with_a_warning() {
    need_netns!();
    let mut pair = unpaired("bg");
    set_key(&pair, Node::A, KEY);
    set_key(&pair, Node::B, KEY);
    establish(&pair).unwrap();
    pair.wait_settled(Node::A);
    pair.kill(Node::B);
    let r = pair.call(Node::A, "POST", "/break", None).unwrap();
    let w = r["warnings"][0].as_str().unwrap_or_default();
    assert!(
        w.contains("was not told") && w.contains("break the relationship there too"),
        "{r}"
    );
    assert_unpaired(&pair, Node::A);
    assert!(has_shared(&pair, Node::A), "the primary keeps serving");
    // A restart of the unpaired former primary keeps serving too.
    pair.kill(Node::A);
    common::ip(
        pair.ns(Node::A),
        &["addr", "del", &format!("{SHARED4}/24"), "dev", "eth0"],
    );
    let root = sync_root(&pair, Node::A).to_str().unwrap().to_owned();
    pair.start_unpaired(Node::A, &["--sync-root", &root]);
    common::wait_for("A serves the kept address again", SETTLE, || {
        has_shared(&pair, Node::A).then_some(())
    });
}

#[test]
fn a_that_cannot_write_its_half_takes_it_back_on_b() {
    need_netns!();
    let mut pair = Pair::new("hw", Options::default());
    // A's config.json goes to a directory that does not exist: its write fails
    // after B has accepted.
    let nowhere = pair.dir.path().join("missing/config.json");
    pair.start_unpaired_at(Node::A, nowhere, &[]);
    pair.start_unpaired(Node::B, &[]);
    set_key(&pair, Node::A, KEY);
    set_key(&pair, Node::B, KEY);
    let e = establish(&pair).unwrap_err();
    assert!(
        e.starts_with("500") && e.contains("the peer was told to break it again"),
        "{e}"
    );
    assert!(pair.overview(Node::A).peer.is_none());
    assert_unpaired(&pair, Node::B);
    assert!(!has_shared(&pair, Node::A) && !has_shared(&pair, Node::B));
}

/// A third daemon in the gateway namespace (10.77.0.1 on br0), unpaired.
struct Third {
    child: Child,
    socket: std::path::PathBuf,
}

impl Third {
    fn start(pair: &Pair) -> Self {
        let dir = pair.dir.path().join("data-c");
        let socket = pair.dir.path().join("c.sock");
        let child = common::launch(
            &pair.client,
            &[],
            &dir.join("config.json"),
            &dir,
            &socket,
            &["--pair-listen", "10.77.0.1:7947"],
            &pair.dir.path().join("c.log"),
        );
        let t = Third { child, socket };
        common::wait_for("the third daemon answers", SETTLE, || {
            t.try_call("GET", "/status", None).ok()
        });
        t
    }

    fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let client = keel_core::local_api::Client::new(&self.socket);
        common::rt()
            .block_on(client.call(method, path, body))
            .map_err(|e| e.to_string())
    }

    fn call(&self, method: &str, path: &str, body: &serde_json::Value) -> String {
        self.try_call(method, path, Some(body))
            .expect_err("refused")
    }
}

fn set_key_at(t: &Third, key: &str) {
    t.try_call("PUT", "/psk", Some(&json!({ "psk": key })))
        .unwrap();
}

impl Drop for Third {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
