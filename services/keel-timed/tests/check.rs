//! The SNTP check against a real chronyd and fake servers on loopback.

mod common;

use std::time::{Duration, Instant};

use common::{closed_port, fake, fast, Behaviour, Chrony};
use keel_api::{ServerState, TimeState, TimeVerdict};
use keel_timed::sntp::{check_servers, CheckOptions};
use keel_timed::verdict::{self, Context};

async fn run(servers: &[String], opts: &CheckOptions) -> (TimeVerdict, Duration) {
    let start = Instant::now();
    let outcomes = check_servers(servers, opts).await;
    let took = start.elapsed();
    let v = verdict::verdict(
        &outcomes,
        Context {
            threshold: 1.0,
            timeout: opts.timeout,
            servers_source: "timed",
            manual: None,
            boot_id: "",
            daemon: keel_timed::system::daemon_sync(&Default::default()),
            checked_at: std::time::SystemTime::now(),
            duration: took,
        },
    );
    (v, took)
}

#[tokio::test]
async fn real_chronyd_agrees_with_the_host_clock() {
    if let Some(why) = common::chrony_unavailable() {
        common::skip("real_chronyd_agrees_with_the_host_clock", &why);
        return;
    }
    let chrony = Chrony::start().await;
    let opts = CheckOptions {
        samples: 4,
        ..fast()
    };
    let (v, _) = run(&[chrony.server()], &opts).await;
    assert_eq!(v.state, TimeState::Ok, "{v:#?}");
    let ours = v.offset_seconds.unwrap();
    let s = &v.servers[0];
    assert_eq!(
        (s.state, s.stratum, s.valid_replies),
        (ServerState::Ok, Some(8), 4)
    );
    assert_eq!(s.leap.as_deref(), Some("none"));
    // chrony serves this very clock: the truth is 0.
    assert!(ours.abs() < 0.005, "offset {ours}");
    assert!(s.delay_seconds.unwrap() < 0.05, "{s:?}");
    // And chrony's own client measures the same.
    let port = chrony.addr.port();
    let c = tokio::task::spawn_blocking(move || common::chrony_q_offset(port))
        .await
        .unwrap();
    assert!((ours - c).abs() < 0.005, "ours {ours}, chronyd -Q {c}");
    eprintln!("offset: ours {ours:+.6} s, chronyd -Q {c:+.6} s");
}

#[tokio::test]
async fn a_skewed_server_gives_skewed_with_its_offset() {
    let skewed = fake(Behaviour::Skew(300.0)).await;
    let (v, _) = run(&[skewed.server()], &fast()).await;
    assert_eq!(v.state, TimeState::Skewed, "{v:#?}");
    let off = v.offset_seconds.unwrap();
    assert!((off - 300.0).abs() < 0.5, "offset {off}");
    assert!(v.message.contains("5 min 0 s behind"), "{}", v.message);
    let ahead = fake(Behaviour::Skew(-42.0)).await;
    let (v, _) = run(&[ahead.server()], &fast()).await;
    assert!((v.offset_seconds.unwrap() + 42.0).abs() < 0.5);
    assert!(v.message.contains("ahead of"), "{}", v.message);
}

#[tokio::test]
async fn chronyd_sees_the_fake_skew_with_our_sign() {
    if let Some(why) = common::chrony_unavailable() {
        common::skip("chronyd_sees_the_fake_skew_with_our_sign", &why);
        return;
    }
    let skewed = fake(Behaviour::Skew(300.0)).await;
    let port = skewed.addr.port();
    let c = tokio::task::spawn_blocking(move || common::chrony_q_offset(port))
        .await
        .unwrap();
    assert!((c - 300.0).abs() < 0.5, "chronyd -Q says {c}");
}

#[tokio::test]
async fn wrong_origin_replies_are_ignored() {
    let liar = fake(Behaviour::WrongOrigin).await;
    let (v, _) = run(&[liar.server()], &fast()).await;
    assert_eq!(v.state, TimeState::Unreachable, "{v:#?}");
    let s = &v.servers[0];
    assert_eq!((s.state, s.offset_seconds), (ServerState::Rejected, None));
    assert!(
        s.error
            .as_deref()
            .unwrap()
            .contains("origin timestamp mismatch"),
        "{s:?}"
    );
    // A spoofed reply racing ahead of the true one loses: the true one counts.
    let raced = fake(Behaviour::SpoofThenTrue).await;
    let (v, _) = run(&[raced.server()], &fast()).await;
    assert_eq!(v.state, TimeState::Ok, "{v:#?}");
    assert!(v.offset_seconds.unwrap().abs() < 0.05);
    assert_eq!(v.servers[0].valid_replies, 3);
    assert!(v.servers[0].error.as_deref().unwrap().contains("origin"));
}

#[tokio::test]
async fn kiss_unsynchronized_stratum16_and_zero_transmit_are_dropped() {
    let kod = fake(Behaviour::Kiss(*b"RATE")).await;
    let unsync = fake(Behaviour::Unsynchronized).await;
    let s16 = fake(Behaviour::Stratum16).await;
    let zero = fake(Behaviour::ZeroTransmit).await;
    let servers = [kod.server(), unsync.server(), s16.server(), zero.server()];
    let (v, _) = run(&servers, &fast()).await;
    assert_eq!(v.state, TimeState::Unreachable, "{v:#?}");
    let errors: Vec<&str> = v
        .servers
        .iter()
        .map(|s| s.error.as_deref().unwrap())
        .collect();
    assert!(v.servers.iter().all(|s| s.state == ServerState::Rejected));
    assert_eq!(errors[0], "kiss-o'-death RATE");
    assert!(
        errors[1].starts_with("server unsynchronized"),
        "{}",
        errors[1]
    );
    assert!(errors[2].starts_with("stratum 16"), "{}", errors[2]);
    assert!(
        errors[3].starts_with("zero receive or transmit"),
        "{}",
        errors[3]
    );
    // A kiss stops the questions at once.
    assert_eq!(v.servers[0].requests_sent, 1);
    assert_eq!(kod.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_dead_server_is_unreachable_within_the_bound() {
    let silent = fake(Behaviour::Silent).await;
    let opts = fast();
    let (v, took) = run(&[silent.server()], &opts).await;
    assert_eq!(v.state, TimeState::Unreachable);
    assert_eq!(v.servers[0].state, ServerState::Unreachable);
    assert_eq!(v.servers[0].requests_sent, opts.samples);
    assert!(v.servers[0]
        .error
        .as_deref()
        .unwrap()
        .starts_with("no reply within 0.8 s"));
    let bound = opts.per_server_bound();
    assert!(took >= opts.timeout, "{took:?}");
    // Upper bound with room for a busy host's timers: what it tells is that the
    // check ends near its bound, not long after.
    assert!(
        took < bound + Duration::from_millis(1500),
        "{took:?} vs {bound:?}"
    );
    // A closed port answers with ICMP: known at once, no waiting for timeouts.
    let (v, took) = run(&[closed_port().await], &opts).await;
    assert_eq!(v.servers[0].state, ServerState::Unreachable);
    assert!(v.servers[0]
        .error
        .as_deref()
        .unwrap()
        .contains("port closed"));
    assert!(took < opts.timeout, "{took:?}");
}

#[tokio::test]
async fn four_servers_one_dead_give_a_verdict_quickly() {
    let a = fake(Behaviour::Skew(0.0)).await;
    let b = fake(Behaviour::Skew(0.002)).await;
    let c = fake(Behaviour::Skew(-0.001)).await;
    let dead = fake(Behaviour::Silent).await;
    let opts = CheckOptions {
        samples: 4,
        interval: Duration::from_millis(300),
        timeout: Duration::from_secs(1),
        ..fast()
    };
    let servers = [a.server(), dead.server(), b.server(), c.server()];
    let (v, took) = run(&servers, &opts).await;
    assert_eq!(v.state, TimeState::Ok, "{v:#?}");
    assert_eq!(v.servers[1].state, ServerState::Unreachable);
    assert_eq!(
        v.servers
            .iter()
            .filter(|s| s.state == ServerState::Ok)
            .count(),
        3
    );
    // The live ones finish after 0.9 s; the dead one is given up after its first
    // timeout (1 s) rather than after all its retries (4 × 1 s).
    assert_eq!(opts.per_server_bound(), Duration::from_secs(4));
    assert!(took >= opts.timeout, "{took:?}");
    // Under the 4 s of all retries, with room for a busy host.
    assert!(took < Duration::from_secs(3), "{took:?}");
    eprintln!("4 servers, 1 dead: verdict in {} ms", took.as_millis());
}

#[tokio::test]
async fn quiet_paths_settle_after_two_replies_noisy_ones_take_all() {
    let quiet = fake(Behaviour::Skew(0.0)).await;
    let noisy = fake(Behaviour::Jitter(0.005)).await;
    let opts = CheckOptions {
        samples: 4,
        settle: Some(0.001),
        ..fast()
    };
    let (v, took) = run(&[quiet.server(), noisy.server()], &opts).await;
    assert_eq!(v.state, TimeState::Ok);
    assert_eq!(
        (v.servers[0].requests_sent, v.servers[0].valid_replies),
        (2, 2)
    );
    assert_eq!(
        (v.servers[1].requests_sent, v.servers[1].valid_replies),
        (4, 4)
    );
    assert!(took >= opts.interval * 3, "{took:?}");
}

#[tokio::test]
async fn a_lone_outlier_does_not_move_the_verdict() {
    let a = fake(Behaviour::Skew(0.0)).await;
    let b = fake(Behaviour::Skew(0.001)).await;
    let wrong = fake(Behaviour::Skew(3600.0)).await;
    let (v, _) = run(&[a.server(), b.server(), wrong.server()], &fast()).await;
    assert_eq!(v.state, TimeState::Ok, "{v:#?}");
    assert_eq!(v.servers[2].state, ServerState::Outlier);
    assert_eq!(v.warnings.len(), 1);
}

#[tokio::test]
async fn unresolvable_and_empty() {
    let (v, _) = run(&[], &fast()).await;
    assert_eq!(v.state, TimeState::Unconfigured);
    let (v, _) = run(&["bad host name".into()], &fast()).await;
    assert_eq!(v.servers[0].state, ServerState::Unresolved);
}
