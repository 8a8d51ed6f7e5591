//! Two keel-failover daemons (the built binary) in network namespaces on one
//! bridge, a client on the gateway side, and the kernel's own view of where the
//! shared address lives. Needs root and `ip netns`; skipped with the reason
//! otherwise. The cycle test also needs `nft`.
//!
//! Bounds are generous on purpose: the daemons are debug builds, tests run in
//! parallel on a 2-core box. A takeover is expected in ~150 ms; the tests allow
//! `TAKEOVER_BOUND` for it. What must never happen (the address live on both
//! nodes, a takeover by a cut-off or merely silent node) is asserted strictly.
//! Outage figures are printed, not asserted (speed is the bench's job).

mod common;

use std::time::{Duration, Instant};

use common::{Monitor, Node, Options, Pair, ProbeClient};
use keel_api::FailoverRole;

/// Ceiling for "neither node holds" after the primary died: window (100 ms) +
/// probe (20 ms) + netlink, plus a wide margin for a loaded machine.
const TAKEOVER_BOUND: Duration = Duration::from_secs(3);
/// How long nothing must happen in "no takeover" checks: many windows.
const HOLD: Duration = Duration::from_millis(1500);
const SETTLE: Duration = Duration::from_secs(20);

fn started_pair(tag: &str, opts: Options) -> Pair {
    let mut p = Pair::new(tag, opts);
    p.start(Node::A);
    p.start(Node::B);
    p.wait_settled(Node::A);
    p
}

/// The address must be live on both nodes for no longer than one heartbeat
/// interval (measured first-to-last sample).
fn assert_never_both(m: &Monitor, pair: &Pair, what: &str) -> (Duration, Duration, [bool; 2]) {
    let (both, neither, ever) = m.take();
    assert!(
        both <= Duration::from_millis(pair.interval_ms),
        "{what}: shared address live on both nodes for {both:?}"
    );
    (both, neither, ever)
}

#[test]
fn power_loss_takeover_then_the_old_primary_returns_as_backup() {
    need_netns!();
    let mut pair = started_pair(
        "pl",
        Options {
            default_gateway_check: true,
            ..Options::default()
        },
    );
    let monitor = Monitor::start(&pair);
    let client = ProbeClient::start(&pair);
    std::thread::sleep(Duration::from_millis(200));
    let term = pair.status(Node::A).term;
    let takeovers = pair.status(Node::B).counters.takeovers;

    pair.power_loss(Node::A);
    let t0 = Instant::now();
    monitor.wait_live_on(Node::B, TAKEOVER_BOUND);
    let outage = client.outage_after(t0, Duration::from_secs(10));
    eprintln!("power loss: client outage {outage:?}");
    let b = pair.status(Node::B);
    assert_eq!(b.role, FailoverRole::Primary);
    assert_eq!(b.term, term + 1, "a takeover bumps the term by one");
    assert_eq!(b.counters.takeovers, takeovers + 1);
    // Both shared addresses moved, IPv6 too.
    let addrs = common::run(std::process::Command::new("ip").args([
        "-n",
        pair.ns(Node::B),
        "addr",
        "show",
        "eth0",
    ]));
    assert!(addrs.contains(common::SHARED6), "{addrs}");
    let (_, neither, _) = assert_never_both(&monitor, &pair, "power loss");
    assert!(neither < TAKEOVER_BOUND, "no holder for {neither:?}");

    // A boots again with its old, lower term: it must come back as backup and
    // stay so (no flapping), adopting B's term.
    let b_steps = pair.status(Node::B).counters.step_downs;
    pair.power_on(Node::A);
    pair.wait_settled(Node::B);
    std::thread::sleep(HOLD);
    let a = pair.status(Node::A);
    assert_eq!(a.role, FailoverRole::Backup);
    assert_eq!(a.term, term + 1);
    let (_, _, ever) = assert_never_both(&monitor, &pair, "return");
    assert!(!ever[Node::A.idx()], "the returning node took the address");
    assert_eq!(pair.status(Node::B).counters.step_downs, b_steps);
}

#[test]
fn cut_link_moves_the_address_and_the_cut_node_releases_it() {
    need_netns!();
    let pair = started_pair("lc", Options::default());
    let monitor = Monitor::start(&pair);
    let client = ProbeClient::start(&pair);
    std::thread::sleep(Duration::from_millis(200));

    pair.cable(Node::A, false);
    let t0 = Instant::now();
    monitor.wait_live_on(Node::B, TAKEOVER_BOUND);
    eprintln!(
        "link cut: client outage {:?}",
        client.outage_after(t0, Duration::from_secs(10))
    );
    // A hears nothing and its check address is silent: it is the cut-off one.
    common::wait_for("A releases the address", SETTLE, || {
        let a = pair.status(Node::A);
        (a.role == FailoverRole::Backup && !a.holding && a.counters.isolated > 0).then_some(())
    });
    let (_, neither, _) = assert_never_both(&monitor, &pair, "link cut");
    assert!(neither < TAKEOVER_BOUND, "no holder for {neither:?}");
    pair.cable(Node::A, true);
    pair.wait_settled(Node::B);
    std::thread::sleep(HOLD);
    assert_eq!(pair.status(Node::A).role, FailoverRole::Backup);
    assert_eq!(pair.status(Node::B).role, FailoverRole::Primary);
    let (_, _, ever) = assert_never_both(&monitor, &pair, "link restored");
    assert!(!ever[Node::A.idx()], "A took the address back");
}

#[test]
fn a_crashed_process_alone_never_leaves_the_address_on_both() {
    need_netns!();
    let mut pair = started_pair("cr", Options::default());
    let monitor = Monitor::start(&pair);
    let client = ProbeClient::start(&pair);

    // The engine dies, A's kernel keeps the address and answers ARP for it: B
    // must hold off (clients are still served by A), for as long as that lasts.
    pair.kill(Node::A);
    std::thread::sleep(HOLD);
    assert_eq!(monitor.live(), [true, false]);
    let b = pair.status(Node::B);
    assert_eq!(b.role, FailoverRole::Backup);
    assert!(b.counters.held_off_address_answered > 0, "{b:?}");
    assert_eq!(b.counters.takeovers, 0);
    let t0 = Instant::now();
    let served = client.outage_after(t0, Duration::from_secs(5));
    eprintln!("crash alone: clients still served (next connection after {served:?})");

    // What ExecStopPost= does under systemd: release. Then B takes over.
    common::run(
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                pair.ns(Node::A),
                env!("CARGO_BIN_EXE_keel-failover"),
                "--config",
            ])
            .arg(pair.config(Node::A))
            .arg("release"),
    );
    let t0 = Instant::now();
    monitor.wait_live_on(Node::B, TAKEOVER_BOUND);
    eprintln!(
        "crash + release: client outage {:?}",
        client.outage_after(t0, Duration::from_secs(10))
    );
    let (_, neither, _) = assert_never_both(&monitor, &pair, "crash");
    assert!(neither < TAKEOVER_BOUND, "no holder for {neither:?}");

    // The restarted engine finds B holding with a newer term and stays backup.
    pair.start(Node::A);
    pair.wait_settled(Node::B);
    assert_never_both(&monitor, &pair, "restart after crash");
}

#[test]
fn an_isolated_backup_does_not_take_over() {
    need_netns!();
    let pair = started_pair("is", Options::default());
    let monitor = Monitor::start(&pair);
    pair.cable(Node::B, false);
    std::thread::sleep(HOLD);
    let b = pair.status(Node::B);
    assert_eq!(b.role, FailoverRole::Backup);
    assert!(b.counters.isolated > 0, "{b:?}");
    assert_eq!(b.counters.takeovers, 0);
    // A hears nothing from B, but its check address answers: it keeps serving.
    let a = pair.status(Node::A);
    assert_eq!((a.role, a.holding), (FailoverRole::Primary, true));
    let (_, _, ever) = assert_never_both(&monitor, &pair, "isolated backup");
    assert!(!ever[Node::B.idx()]);
    pair.cable(Node::B, true);
    pair.wait_settled(Node::A);
}

#[test]
fn replayed_forged_and_truncated_heartbeats_are_dropped_and_counted() {
    need_netns!();
    let pair = started_pair("rp", Options::default());
    let genuine = pair.capture_heartbeat(Node::B);
    assert_eq!(genuine.len(), keel_failover::wire::LEN);
    let before = pair.status(Node::B).counters;

    let mut flipped = genuine.clone();
    flipped[30] ^= 0x40; // the term
    let mut version = genuine.clone();
    version[4] = 9;
    // Well-formed, but keyed with another PSK: a higher term, holding.
    let forged = keel_failover::wire::Heartbeat {
        sender: "a".into(),
        term: 1_000_000,
        seq: u64::MAX,
        nonce: 42,
        holding: true,
        auto_takeover: true,
    }
    .encode(&keel_failover::wire::Key::derive(
        b"another key of at least 32 bytes!",
    ));
    pair.inject(
        Node::B,
        &[
            genuine.clone(),
            flipped,
            forged.to_vec(),
            version,
            genuine[..40].to_vec(),
            b"garbage".to_vec(),
        ],
    );
    // A forged higher term must not make the primary step down either.
    pair.inject(Node::A, &[forged.to_vec()]);

    let after = common::wait_for("B counts the injected datagrams", SETTLE, || {
        let c = pair.status(Node::B).counters;
        (c.truncated >= before.truncated + 2 && c.replayed > before.replayed).then_some(c)
    });
    assert_eq!(after.truncated - before.truncated, 2);
    assert_eq!(after.wrong_version - before.wrong_version, 1);
    assert_eq!(after.bad_mac - before.bad_mac, 2);
    assert_eq!(after.replayed - before.replayed, 1);
    let a_bad = common::wait_for("A counts the forged datagram", SETTLE, || {
        let c = pair.status(Node::A).counters.bad_mac;
        (c > 0).then_some(c)
    });
    assert_eq!(a_bad, 1);
    std::thread::sleep(Duration::from_millis(300));
    let a = pair.status(Node::A);
    assert_eq!((a.role, a.holding), (FailoverRole::Primary, true));
    assert!(a.term < 1_000_000);
    let b = pair.status(Node::B);
    assert_eq!(b.role, FailoverRole::Backup);
    assert!(b.term < 1_000_000);
    assert!(
        b.peer_last_seen_ms.is_some_and(|ms| ms < pair.window_ms),
        "{b:?}"
    );
}

#[test]
fn become_primary_swaps_roles_with_one_short_outage() {
    need_netns!();
    let pair = started_pair("bp", Options::default());
    let monitor = Monitor::start(&pair);
    let client = ProbeClient::start(&pair);
    std::thread::sleep(Duration::from_millis(200));
    let term = pair.status(Node::A).term;

    let t0 = Instant::now();
    let s = pair.post(Node::B, "/become-primary", None);
    assert_eq!(
        (s.role, s.holding, s.term),
        (FailoverRole::Primary, true, term + 1)
    );
    monitor.wait_live_on(Node::B, TAKEOVER_BOUND);
    eprintln!(
        "become-primary: client outage {:?}",
        client.outage_after(t0, Duration::from_secs(10))
    );
    pair.wait_settled(Node::B);
    let a = pair.status(Node::A);
    assert_eq!(
        (a.role, a.term, a.counters.step_downs),
        (FailoverRole::Backup, term + 1, 1)
    );
    // Both hold only until the peer's next heartbeat reaches A.
    assert_never_both(&monitor, &pair, "become-primary");

    // Automatic takeover off: B's death is not followed by A taking over.
    let a = pair.post(
        Node::A,
        "/auto-takeover",
        Some(&serde_json::json!({"enabled": false})),
    );
    assert!(!a.auto_takeover);
    pair.cable(Node::B, false);
    std::thread::sleep(HOLD);
    assert_eq!(pair.status(Node::A).role, FailoverRole::Backup);
    assert!(!monitor.live()[Node::A.idx()]);
}

/// 52 cycles of kill (power loss), link cut, one-way heartbeat loss and
/// heartbeat-only loss, with the kernel's view sampled every few milliseconds.
#[test]
fn cycles_never_split_and_never_leave_the_address_unserved() {
    need_netns!();
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: no `nft` (nftables; scripts/deps.sh installs it)");
        return;
    }
    let mut pair = started_pair("cy", Options::default());
    let monitor = Monitor::start(&pair);
    let mut primary = Node::A;
    let mut worst_both = Duration::ZERO;
    let mut worst_neither = Duration::ZERO;
    let (mut takeovers, mut kept) = (0, 0);
    let started = Instant::now();
    for cycle in 0..52 {
        let backup = primary.other();
        monitor.take();
        let kind = cycle % 4;
        match kind {
            0 => {
                pair.power_loss(primary);
                monitor.wait_live_on(backup, TAKEOVER_BOUND);
                pair.power_on(primary);
                pair.wait_settled(backup);
            }
            1 => {
                pair.cable(primary, false);
                monitor.wait_live_on(backup, TAKEOVER_BOUND);
                common::wait_for("the cut node releases", SETTLE, || {
                    (pair.status(primary).role == FailoverRole::Backup).then_some(())
                });
                pair.cable(primary, true);
                pair.wait_settled(backup);
            }
            2 | 3 => {
                // One-way: the backup hears nothing; both ways: neither hears the
                // other. Either way the primary's kernel still answers ARP.
                pair.drop_heartbeats_to(backup, true);
                if kind == 3 {
                    pair.drop_heartbeats_to(primary, true);
                }
                std::thread::sleep(Duration::from_millis(400));
                pair.drop_heartbeats_to(backup, false);
                if kind == 3 {
                    pair.drop_heartbeats_to(primary, false);
                }
                pair.wait_settled(primary);
            }
            _ => unreachable!(),
        }
        let (both, neither, ever) =
            assert_never_both(&monitor, &pair, &format!("cycle {cycle} kind {kind}"));
        assert!(
            neither < TAKEOVER_BOUND,
            "cycle {cycle}: no holder for {neither:?}"
        );
        worst_both = worst_both.max(both);
        worst_neither = worst_neither.max(neither);
        if kind < 2 {
            takeovers += 1;
            primary = backup;
        } else {
            assert!(
                !ever[backup.idx()],
                "cycle {cycle}: takeover on heartbeat loss alone"
            );
            kept += 1;
        }
    }
    eprintln!(
        "52 cycles in {:?}: {takeovers} takeovers, {kept} losses without takeover; \
         longest on both {worst_both:?}, longest on neither {worst_neither:?}",
        started.elapsed()
    );
}

/// The unit runs the engine as its own user with two capabilities: so must this.
#[test]
fn takes_over_as_an_unprivileged_user_with_two_capabilities() {
    need_netns!();
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: no `setpriv` (util-linux)");
        return;
    }
    let mut pair = Pair::new("up", Options::default());
    pair.start(Node::A);
    pair.start_unprivileged(Node::B);
    pair.wait_settled(Node::A);
    let pid = pair.daemons[Node::B.idx()].as_ref().unwrap().id();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(proc_status.contains("Uid:\t65534"), "{proc_status}");
    // CAP_NET_ADMIN (12) and CAP_NET_RAW (13), nothing else.
    assert!(
        proc_status.contains("CapEff:\t0000000000003000"),
        "{proc_status}"
    );
    let monitor = Monitor::start(&pair);
    pair.power_loss(Node::A);
    monitor.wait_live_on(Node::B, TAKEOVER_BOUND);
    let b = pair.status(Node::B);
    assert_eq!((b.role, b.holding), (FailoverRole::Primary, true));
}

/// `systemctl stop` (SIGTERM) on the primary: it drops the addresses as it
/// exits, and the backup takes over after its window.
#[test]
fn a_clean_stop_releases_and_the_peer_takes_over() {
    need_netns!();
    let mut pair = started_pair("st", Options::default());
    let monitor = Monitor::start(&pair);
    let mut child = pair.daemons[Node::A.idx()].take().unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(
        child.wait().unwrap().success(),
        "{}",
        pair.log_text(Node::A)
    );
    monitor.wait_live_on(Node::B, TAKEOVER_BOUND);
    let (_, neither, _) = assert_never_both(&monitor, &pair, "clean stop");
    assert!(neither < TAKEOVER_BOUND, "no holder for {neither:?}");
}

/// `dig +short NAME A` against one node's DNS swing server, from the client side.
fn dig_a(pair: &Pair, server: Node) -> String {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.client,
            "dig",
            "+short",
            "+tries=1",
            "+time=2",
        ])
        .arg(format!("@{}", server.addr()))
        .args(["-p", "5353", "portal.example.test", "A"])
        .output()
        .expect("dig runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn dns_swing_answers_with_the_current_primary() {
    need_netns!();
    if std::process::Command::new("dig")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: dig (bind9-dnsutils) is not installed");
        return;
    }
    let mut pair = started_pair("dn", Options::default());
    for n in [Node::A, Node::B] {
        let settings = serde_json::json!({
            "enabled": true,
            "name": "portal.example.test",
            "listen": [format!("{}:5353", n.addr())],
            "ttl": 5,
            "nameservers": ["ns-a.example.test", "ns-b.example.test"],
            "this_node": [n.addr()],
            "peer_node": [n.other().addr()],
        });
        let set = pair.call(n, "PUT", "/dns", Some(&settings)).unwrap();
        assert_eq!(set["enabled"], true, "{set}");
    }
    // Both servers name the primary, A.
    for n in [Node::A, Node::B] {
        common::wait_for("A answered as primary", SETTLE, || {
            (dig_a(&pair, n) == Node::A.addr()).then_some(())
        });
    }
    // A listen address this node does not have: refused, the old server stays.
    let bad = serde_json::json!({"enabled": true, "name": "portal.example.test",
        "listen": ["10.77.0.250:5353"], "this_node": [Node::A.addr()], "peer_node": [Node::B.addr()],
        "nameservers": ["ns-a.example.test"]});
    let e = pair.call(Node::A, "PUT", "/dns", Some(&bad)).unwrap_err();
    assert!(e.contains("dns:"), "{e}");
    assert_eq!(dig_a(&pair, Node::A), Node::A.addr());
    // A dies: B takes over and its server answers with its own address.
    pair.power_loss(Node::A);
    common::wait_for("B answers as primary", SETTLE, || {
        (dig_a(&pair, Node::B) == Node::B.addr()).then_some(())
    });
}
