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
    // B starts once A holds the address: started in the same moment, B may claim
    // while A resumes (and step down on the tie), which would count as a takeover
    // in tests that are about something else.
    common::wait_for(
        "A primary and holding, alone",
        Duration::from_secs(20),
        || {
            p.try_status(Node::A)
                .filter(|a| a.role == FailoverRole::Primary && a.holding)
        },
    );
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
    // Counted from here: when both start at once, B may claim in the same moment as
    // A resumes, and steps down at once (the start is not what this test is about).
    let takeovers = pair.status(Node::B).counters.takeovers;
    pair.cable(Node::B, false);
    std::thread::sleep(HOLD);
    let b = pair.status(Node::B);
    assert_eq!(b.role, FailoverRole::Backup);
    assert!(b.counters.isolated > 0, "{b:?}");
    assert_eq!(b.counters.takeovers, takeovers, "{b:?}");
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
                         // Version 9 of the same length, signed with the pair's key: a peer of another
                         // release.
    let version = other_version(&pair, 9, genuine.len());
    // Well-formed, but keyed with another PSK: a higher term, holding.
    let forged = keel_failover::wire::Heartbeat {
        sender: "a".into(),
        term: 1_000_000,
        seq: u64::MAX,
        nonce: 42,
        echo: 0,
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
    // Still hearing A (polled: one status read may fall into a stall of the host).
    let b = common::wait_for("B hears A", SETTLE, || {
        let b = pair.status(Node::B);
        b.peer_last_seen_ms
            .is_some_and(|ms| ms < pair.window_ms)
            .then_some(b)
    });

    // A peer of the previous wire version (80 bytes, version 1) is counted as
    // such, and while it speaks, become-primary is refused: it would not hear the
    // claim and keep the addresses.
    let v1 = other_version(&pair, 1, 80);
    let wrong = b.counters.wrong_version;
    let old_peer = pair.inject_paced(Node::B, &vec![v1; 150], Duration::from_millis(20));
    common::wait_for("B counts the version 1 heartbeats", SETTLE, || {
        (pair.status(Node::B).counters.wrong_version > wrong).then_some(())
    });
    let refused = pair.call(Node::B, "POST", "/become-primary", None);
    old_peer.join().unwrap();
    let e = refused.expect_err("become-primary beside a version 1 peer");
    assert!(e.contains("wire version 1"), "{e}");
    let counted = common::wait_for("B counts all 150", SETTLE, || {
        let c = pair.status(Node::B).counters.wrong_version;
        (c >= wrong + 150).then_some(c)
    });
    assert_eq!(counted - wrong, 150);
    assert!(pair
        .log_text(Node::B)
        .contains("heartbeats of wire version 1 arrive"));
    let a = pair.status(Node::A);
    assert_eq!((a.role, a.holding), (FailoverRole::Primary, true));
    assert_eq!(pair.status(Node::B).role, FailoverRole::Backup);
}

/// A heartbeat of wire version `version` (magic, version, zeros, and the MAC
/// under the pair's key last, over the rest: what every version ends with).
fn other_version(pair: &Pair, version: u8, len: usize) -> Vec<u8> {
    let psk = keel_failover::config::read_psk(&pair.dir.path().join("psk")).unwrap();
    let key = keel_failover::wire::derive_key(&psk, b"heartbeat mac");
    let mut b = vec![0u8; len];
    b[0..4].copy_from_slice(b"KFHB");
    b[4] = version;
    let tag = ring::hmac::sign(&key, &b[..len - 32]);
    b[len - 32..].copy_from_slice(tag.as_ref());
    b
}

/// The replay gap of a guard held in memory only: B restarts and forgets what it
/// heard; a recording of the primary's earlier run (its start nonce unknown to the
/// new B) replayed at the primary's pace would fake a live primary and hold off
/// B's takeover for as long as the recording lasts. Each is refused (it does not
/// echo B's new start) and counted, and B takes over while the replay runs.
#[test]
fn a_recording_replayed_after_the_receiver_restarted_is_ignored() {
    need_netns!();
    let mut pair = started_pair("rr", Options::default());
    // A's first run, five seconds of it, as B received it: longer than the
    // replay below needs to outlast the takeover bound.
    let recorded = pair.capture_heartbeats(Node::B, 250);
    // A restarts in place (it keeps the addresses and its term), then B restarts.
    pair.kill(Node::A);
    pair.start(Node::A);
    pair.wait_settled(Node::A);
    pair.kill(Node::B);
    pair.start(Node::B);
    pair.wait_settled(Node::A);
    let before = pair.status(Node::B);
    assert_eq!(before.role, FailoverRole::Backup);

    // The recording alone, while A is alive: ignored and counted exactly.
    pair.inject(Node::B, &recorded[..5]);
    let c = common::wait_for("B counts the replays", SETTLE, || {
        let c = pair.status(Node::B).counters;
        (c.replayed >= before.counters.replayed + 5).then_some(c)
    });
    assert_eq!(c.replayed - before.counters.replayed, 5);
    // and A's live heartbeats still count (the replay did not pass for a restart
    // of A, which would retire A's live start).
    common::wait_for("B still hears A", SETTLE, || {
        let b = pair.status(Node::B);
        (b.counters.received > c.received + 5).then_some(())
    });

    // A dies; the recording plays on at A's pace from the segment. B must not
    // take it for A: it takes over within the usual bound.
    let monitor = Monitor::start(&pair);
    let replayed = pair.status(Node::B).counters.replayed;
    let replay = pair.inject_paced(
        Node::B,
        &recorded[5..],
        Duration::from_millis(pair.interval_ms),
    );
    std::thread::sleep(Duration::from_millis(200));
    pair.power_loss(Node::A);
    monitor.wait_live_on(Node::B, TAKEOVER_BOUND);
    assert!(
        !replay.is_finished(),
        "the takeover came only after the replay"
    );
    replay.join().unwrap();
    let b = common::wait_for("B counts the whole replay", SETTLE, || {
        let b = pair.status(Node::B);
        (b.counters.replayed >= replayed + 245).then_some(b)
    });
    assert_eq!(b.counters.replayed - replayed, 245, "{b:?}");
    assert_eq!(b.role, FailoverRole::Primary);
    assert_eq!(b.term, before.term + 1);
    assert_never_both(&monitor, &pair, "replay");
}

/// A probe socket of `ns`'s `dev`, opened there (a packet socket belongs to the
/// namespace it was made in), with the time the opening took.
fn prober_in(ns: &str, dev: &'static str) -> (keel_failover::raw::Prober, Duration) {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        common::enter(&ns);
        let l = common::rt()
            .block_on(async { keel_failover::kernel::Kernel::connect()?.link(dev).await })
            .unwrap();
        let t0 = Instant::now();
        let p = keel_failover::raw::Prober::open(keel_failover::raw::Link {
            index: l.index,
            mac: l.mac,
        })
        .unwrap();
        (p, t0.elapsed())
    })
    .join()
    .unwrap()
}

/// An unfiltered packet socket on `ns`'s eth0 (every protocol): the control that
/// shows the traffic did arrive.
fn tap_in(ns: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        common::enter(&ns);
        let index = nix::net::if_::if_nametoindex("eth0").unwrap();
        // SAFETY: plain socket(2) and bind(2) with a zeroed sockaddr_ll filled in.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            );
            assert!(fd >= 0, "{}", std::io::Error::last_os_error());
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            sll.sll_ifindex = index as i32;
            let r = libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
            std::os::fd::OwnedFd::from_raw_fd(fd)
        }
    })
    .join()
    .unwrap()
}

/// Incoming frames read from `tap` so far: (ARP, IPv6, the last one's bytes).
fn read_tap(tap: &std::os::fd::OwnedFd, seen: &mut (usize, usize, Vec<Vec<u8>>)) {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: valid buffer and out-parameters of the given sizes.
        let (n, from) = unsafe {
            let mut from: libc::sockaddr_ll = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            let n = libc::recvfrom(
                tap.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            );
            (n, from)
        };
        if n < 0 {
            return;
        }
        if from.sll_pkttype == libc::PACKET_OUTGOING || n < 14 {
            continue;
        }
        let f = buf[..n as usize].to_vec();
        match u16::from_be_bytes([f[12], f[13]]) {
            0x0806 => seen.0 += 1,
            0x86dd => seen.1 += 1,
            _ => continue,
        }
        seen.2.push(f);
    }
}

/// The probe sockets' BPF filters: the segment's other ARP and IPv6 traffic
/// (address resolution, RFC 5227 probes, DAD-style solicitations) reaches the
/// interface — an unfiltered socket sees it — but not the probe sockets; the
/// announcements do, and a probe still gets its answers.
#[test]
fn the_probe_sockets_queue_only_answers_and_announcements() {
    need_netns!();
    let pair = Pair::new("bpf", Options::default());
    let a = pair.ns(Node::A).to_owned();
    let tap = tap_in(&a);
    let (prober, opened) = prober_in(&a, "eth0");
    eprintln!("probe sockets opened in {opened:?}");
    assert_eq!(prober.drain().unwrap(), [0, 0]);
    let (gateway, _) = prober_in(&pair.client, "br0");

    // Noise from the gateway: probes for addresses nobody has (ARP from 0.0.0.0,
    // DAD-style solicitations), and pings that resolve addresses (ARP requests,
    // solicitations from the gateway's own addresses) nobody answers.
    assert_eq!(
        gateway
            .probe(
                &["10.77.0.50".parse().unwrap(), "fd77::50".parse().unwrap()],
                Duration::from_millis(40),
            )
            .unwrap(),
        [false, false]
    );
    // Datagrams to addresses nobody has: the gateway's kernel resolves them
    // (ARP requests, neighbour solicitations from its own addresses).
    let client = pair.client.clone();
    std::thread::spawn(move || {
        common::enter(&client);
        for to in ["10.77.0.51:9", "[fd77::51]:9"] {
            let to: std::net::SocketAddr = to.parse().unwrap();
            let s = std::net::UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
                .unwrap();
            s.send_to(b"x", to).unwrap();
        }
    })
    .join()
    .unwrap();
    // Then the announcements the filters let through (last: they arrive last).
    let (garp, na) = ("10.77.0.77".parse().unwrap(), "fd77::77".parse().unwrap());
    gateway.announce(&[garp, na]).unwrap();
    let mut seen = (0, 0, Vec::new());
    // 2 probes, the resolution and the announcement of each family.
    common::wait_for(
        "the tap sees the noise and the announcements",
        SETTLE,
        || {
            read_tap(&tap, &mut seen);
            let f = &seen.2;
            let v6: std::net::Ipv6Addr = "fd77::77".parse().unwrap();
            (seen.0 >= 4
                && seen.1 >= 4
                && f.iter()
                    .any(|f| f[12..14] == [8, 6] && f[28..32] == [10, 77, 0, 77])
                && f.iter()
                    .any(|f| f.len() > 70 && f[54] == 136 && f[62..78] == v6.octets()))
            .then_some(())
        },
    );
    eprintln!("unfiltered: {} ARP, {} IPv6 frames", seen.0, seen.1);
    assert_eq!(
        prober.drain().unwrap(),
        [1, 1],
        "only the gratuitous ARP and the advertisement were queued"
    );

    // The answers a probe waits for still get through.
    assert_eq!(
        prober
            .probe(
                &[common::GATEWAY.parse().unwrap(), "fd77::1".parse().unwrap()],
                Duration::from_secs(5),
            )
            .unwrap(),
        [true, true]
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
        // The overview (the console's DNS swing section) says where it answers.
        let status = pair.call(n, "GET", "/status", None).unwrap();
        let listening = serde_json::json!([format!("{}:5353", n.addr())]);
        assert_eq!(status["dns_listening"], listening, "{status}");
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
    // The old server still answers (polled: one query may time out on a busy host).
    common::wait_for("A's old server answers", SETTLE, || {
        (dig_a(&pair, Node::A) == Node::A.addr()).then_some(())
    });
    // A dies: B takes over and its server answers with its own address.
    pair.power_loss(Node::A);
    common::wait_for("B answers as primary", SETTLE, || {
        (dig_a(&pair, Node::B) == Node::B.addr()).then_some(())
    });
}
