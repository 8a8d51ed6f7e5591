//! Signed feeds and the planner.

mod common;

use std::io::Cursor;

use common::*;
use keel_bundle::{
    assess, plan_latest, plan_to, sign_feed, verify_feed, Error, FeedEntry, FeedSpec, Installed,
    Kind, Sha256Digest, Status, Verifier,
};

fn entry(
    kind: Kind,
    name: Option<&str>,
    version: &str,
    requires: &[&str],
    over: &[&str],
) -> FeedEntry {
    let file = format!("keel-{}-{version}.kbundle", name.unwrap_or("base"));
    FeedEntry {
        file,
        kind,
        name: name.map(str::to_string),
        version: v(version),
        requires: requires.iter().map(|r| req(r)).collect(),
        installs_over: over.iter().map(|r| range(r)).collect(),
        size: 1000,
        sha256: Sha256Digest([7; 32]),
    }
}

/// The example: base 0.1.0 installed; 0.3.0 only installs over 0.2.x+;
/// app 1.0 needs base 0.3.0.
fn example() -> Vec<FeedEntry> {
    vec![
        entry(Kind::App, Some("app"), "1.0.0", &["base>=0.3.0"], &[]),
        entry(Kind::Base, None, "0.3.0", &[], &[">=0.2.0"]),
        entry(Kind::Base, None, "0.2.0", &[], &[">=0.1.0"]),
    ]
}

fn feed_spec(entries: Vec<FeedEntry>) -> FeedSpec {
    FeedSpec {
        product: "keel".into(),
        created: t0(),
        expires: t0().plus(time::Duration::days(14)),
        entries,
    }
}

fn open(bytes: &[u8], now: keel_bundle::Timestamp) -> Result<keel_bundle::Feed, Error> {
    let k = key(1);
    verify_feed(
        &Verifier::new(&trusted(&k), "keel", now),
        Cursor::new(bytes),
    )
}

#[test]
fn feed_round_trip() {
    let bytes = sign_feed(&key(1), &feed_spec(example())).unwrap();
    let feed = open(&bytes, now()).unwrap();
    assert_eq!(feed.entries, example());
    assert_eq!(feed.key_id, key(1).public().id());
}

#[test]
fn stale_feed_refused() {
    let bytes = sign_feed(&key(1), &feed_spec(example())).unwrap();
    let later = t0().plus(time::Duration::days(14));
    assert!(matches!(open(&bytes, later), Err(Error::Expired { .. })));
    assert!(matches!(
        open(&bytes, t0().plus(time::Duration::hours(-1))),
        Err(Error::CreatedInFuture { .. })
    ));
}

#[test]
fn tampered_feed_refused() {
    let bytes = sign_feed(&key(1), &feed_spec(example())).unwrap();
    let mlen = u32::from_be_bytes(bytes[10..14].try_into().unwrap()) as usize;
    for offset in [
        14,
        14 + mlen / 2,
        14 + mlen - 1,
        14 + mlen + 2,
        bytes.len() - 9,
    ] {
        let mut bad = bytes.clone();
        bad[offset] ^= 0x10;
        assert!(
            matches!(open(&bad, now()), Err(Error::SignatureInvalid)),
            "{offset}"
        );
    }
    let mut bad = bytes.clone();
    bad[bytes.len() - 1] ^= 1;
    assert!(matches!(open(&bad, now()), Err(Error::UnknownKey(_))));
    let mut long = bytes.clone();
    long.push(b'\n');
    assert!(matches!(open(&long, now()), Err(Error::TrailingData)));
    assert!(matches!(
        open(&bytes[..bytes.len() - 1], now()),
        Err(Error::Truncated(_))
    ));
    // Signed by someone else, or a bundle presented as a feed.
    let other = sign_feed(&key(2), &feed_spec(example())).unwrap();
    assert!(matches!(open(&other, now()), Err(Error::UnknownKey(_))));
    let bundle = base_bundle(&key(1), "0.3.0", 10);
    assert!(matches!(open(&bundle, now()), Err(Error::BadMagic { .. })));
    // Entries that would let the appliance write outside its download directory.
    let mut spec = feed_spec(example());
    spec.entries[0].file = "../../etc/passwd".into();
    assert!(sign_feed(&key(1), &spec).is_err());
}

#[test]
fn planner_orders_the_chain() {
    let entries = example();
    let installed = Installed::new().with("base", v("0.1.0"));
    let plan = plan_to(&installed, &entries, "app", v("1.0.0")).unwrap();
    let steps: Vec<String> = plan
        .iter()
        .map(|e| format!("{} {}", e.component(), e.version))
        .collect();
    assert_eq!(steps, ["base 0.2.0", "base 0.3.0", "app 1.0.0"]);

    let plan = plan_to(&installed, &entries, "base", v("0.3.0")).unwrap();
    assert_eq!(plan.len(), 2);
    let all = plan_latest(&installed, &entries, &["app"]).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].component(), "app");
    // Without asking for the app, only base moves.
    assert_eq!(plan_latest(&installed, &entries, &[]).unwrap().len(), 2);

    let a = assess(&installed, &entries);
    assert_eq!(a[0].status.to_string(), "needs base 0.3.0 first");
    assert!(matches!(&a[0].status, Status::NeedsFirst { steps, .. } if steps.len() == 2));
    assert_eq!(a[1].status.to_string(), "needs base 0.2.0 first");
    assert_eq!(a[2].status, Status::Fits);

    // Up to date: nothing to do; older entries say so.
    let current = Installed::new()
        .with("base", v("0.3.0"))
        .with("app", v("1.0.0"));
    assert!(plan_latest(&current, &entries, &[]).unwrap().is_empty());
    let a = assess(&current, &entries);
    assert_eq!(a[0].status, Status::Installed);
    assert_eq!(
        a[2].status,
        Status::Older {
            installed: v("0.3.0")
        }
    );
}

#[test]
fn planner_reports_what_blocks() {
    let mut entries = example();
    entries.push(entry(
        Kind::App,
        Some("vpn"),
        "2.0.0",
        &["base>=0.9.0"],
        &[],
    ));
    entries.push(entry(Kind::Base, None, "0.5.0", &[], &[">=0.4.0"]));
    let installed = Installed::new().with("base", v("0.1.0"));
    let a = assess(&installed, &entries);
    match &a[3].status {
        Status::Blocked { reason } => assert!(reason.contains("needs base >= 0.9.0"), "{reason}"),
        s => panic!("{s:?}"),
    }
    match &a[4].status {
        Status::Blocked { reason } => assert!(reason.contains("no chain"), "{reason}"),
        s => panic!("{s:?}"),
    }
    assert!(matches!(
        plan_to(&installed, &entries, "vpn", v("2.0.0")),
        Err(Error::NoPlan(_))
    ));
    assert!(matches!(
        plan_to(&installed, &entries, "vpn", v("9.0.0")),
        Err(Error::NoPlan(_))
    ));
    // The newest reachable base is 0.3.0 (0.5.0 has no way in).
    let plan = plan_latest(&installed, &entries, &[]).unwrap();
    assert_eq!(plan.last().map(|e| e.version), Some(v("0.3.0")));
    assert!(matches!(
        plan_latest(&installed, &entries, &["vpn"]),
        Err(Error::NoPlan(_))
    ));
}

#[test]
fn planner_survives_cycles() {
    // a needs b >= 1, b needs a >= 1: neither can go first.
    let entries = vec![
        entry(Kind::App, Some("a"), "1.0.0", &["b>=1.0.0"], &[]),
        entry(Kind::App, Some("b"), "1.0.0", &["a>=1.0.0"], &[]),
    ];
    let installed = Installed::new().with("base", v("0.1.0"));
    let a = assess(&installed, &entries);
    assert!(a.iter().all(|x| matches!(x.status, Status::Blocked { .. })));
}
