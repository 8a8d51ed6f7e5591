//! Installs through the library (the same code the socket serves): a good one,
//! every kind of refusal, read-back mismatch, concurrency and live progress.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use common::*;
use keel_api::UpdatePhase;
use keel_bundle::{build_bundle_bytes, Kind, SecretKey};
use keel_update::{ErrorKind, SlotContent};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// Watches a file for any open, write, close-after-write or attribute change.
fn watch(path: &std::path::Path) -> Inotify {
    let ino = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
    ino.add_watch(
        path,
        AddWatchFlags::IN_OPEN
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_ATTRIB,
    )
    .unwrap();
    ino
}

fn assert_untouched(ino: &Inotify, what: &str) {
    match ino.read_events() {
        Err(nix::errno::Errno::EAGAIN) => {}
        Ok(ev) => panic!("{what} was touched: {ev:?}"),
        Err(e) => panic!("inotify: {e}"),
    }
}

#[tokio::test]
async fn good_install_writes_the_inactive_slot_and_arms_the_trial() {
    let rig = Rig::new();
    let factory = rig.slot("a");
    let u = rig.start();
    let running = watch(&rig.path("slots/root-a"));
    let data = payload(BIG, 1);
    let answer = install(&u, rig.bundle("0.2.0", &data)).await.unwrap();
    assert_untouched(&running, "the running slot");
    assert_eq!(
        (
            answer.version.as_str(),
            answer.slot.as_str(),
            answer.rebooting
        ),
        ("0.2.0", "b", false)
    );

    // The exact payload, the rest of the slot as it was.
    let b = rig.slot("b");
    assert_eq!(b.len() as u64, SLOT_SIZE);
    assert!(b[..BIG] == data[..], "slot b does not hold the payload");
    assert!(b[BIG..].iter().all(|&x| x == 0));
    assert!(rig.slot("a") == factory, "the running slot changed");

    // Both copies armed.
    let (p, bak) = rig.esp_copies();
    for copy in [p, bak] {
        let vars = keel_boot::parse(&copy).unwrap();
        assert_eq!(vars.get("keel_try").map(String::as_str), Some("b"));
        assert_eq!(vars.get("keel_tries").map(String::as_str), Some("3"));
        assert_eq!(vars.get("keel_good").map(String::as_str), Some("a"));
    }

    // Recorded.
    let st = rig.state_json();
    assert_eq!(st["format"], 1);
    assert_eq!(st["slots"]["b"]["content"], "valid");
    assert_eq!(st["slots"]["b"]["version"], "0.2.0");
    let sha = {
        use sha2::Digest;
        hex_of(&sha2::Sha256::digest(&data))
    };
    assert_eq!(st["slots"]["b"]["sha256"], sha.as_str());
    assert_eq!(st["slots"]["a"]["version"], "0.1.0");
    let p = &st["pending"];
    assert_eq!(
        (
            p["slot"].as_str(),
            p["version"].as_str(),
            p["from_slot"].as_str(),
            p["from_version"].as_str()
        ),
        (Some("b"), Some("0.2.0"), Some("a"), Some("0.1.0"))
    );
    assert!(p["armed_at"].as_str().unwrap().ends_with('Z'));
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(rig.cfg.state_file())
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode, 0o600);

    // Status: reboot pending, no outcome yet (same boot), the console's boot state.
    let s = u.status();
    assert_eq!(s.progress.phase, UpdatePhase::RebootPending);
    assert_eq!(s.progress.version.as_deref(), Some("0.2.0"));
    assert_eq!(s.progress.error, None);
    assert_eq!(s.other.version.as_deref(), Some("0.2.0"));
    assert!(s.running.good && !s.other.good);
    assert_eq!(s.last_outcome, None);
    assert_eq!(s.rollback_to, None);
    assert!(rig.state().pending.is_some());
    let boot: keel_api::BootState = keel_core::store::read_json(&rig.path("run/boot/state.json"))
        .unwrap()
        .unwrap();
    assert_eq!(boot.trial.unwrap().slot, "b");
    assert_eq!(boot.written_by, "keel-update arm-trial");
    assert_eq!(rig.reboots.load(std::sync::atomic::Ordering::SeqCst), 0);
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Offsets in a bundle: manifest length at 10..14, manifest from 14.
fn manifest_len(b: &[u8]) -> usize {
    u32::from_be_bytes([b[10], b[11], b[12], b[13]]) as usize
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expect: &'static str,
    kind: ErrorKind,
    /// Writing began: the slot must be marked invalid.
    wrote: bool,
}

async fn refused(rig: &Rig, case: Case) {
    let u = rig.start();
    let running = watch(&rig.path("slots/root-a"));
    let before_b = rig.slot("b");
    let e = install(&u, case.bytes).await.unwrap_err();
    assert_untouched(&running, "the running slot");
    assert_eq!(e.kind, case.kind, "{}: {e}", case.name);
    assert!(
        e.message.contains(case.expect),
        "{}: {:?} lacks {:?}",
        case.name,
        e.message,
        case.expect
    );
    rig.assert_not_armed();
    let s = u.status();
    assert_eq!(s.progress.phase, UpdatePhase::Idle, "{}", case.name);
    assert_eq!(s.progress.error.as_deref(), Some(e.message.as_str()));
    let st = rig.state();
    assert!(st.pending.is_none(), "{}", case.name);
    let b = st.slot("b");
    if case.wrote {
        assert_eq!(b.content, SlotContent::Invalid, "{}", case.name);
        assert!(b.note.unwrap().contains("failed"), "{}", case.name);
        assert_eq!(s.other.version, None);
    } else {
        assert_ne!(b.content, SlotContent::Invalid, "{}", case.name);
        assert!(rig.slot("b") == before_b, "{}: slot b changed", case.name);
    }
}

#[tokio::test]
async fn tampered_bundles_are_refused_and_never_armed() {
    let probe = Rig::new();
    let good = probe.bundle("0.2.0", &payload(SMALL, 2));
    let m = manifest_len(&good);
    let flip = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x01;
        b
    };
    let payload_at = 14 + m + 2 + 64 + 8;
    let cases = vec![
        Case {
            name: "manifest first byte",
            bytes: flip(14),
            expect: "signature invalid",
            kind: ErrorKind::BadBundle,
            wrote: false,
        },
        Case {
            name: "manifest middle",
            bytes: flip(14 + m / 2),
            expect: "signature invalid",
            kind: ErrorKind::BadBundle,
            wrote: false,
        },
        Case {
            name: "signature",
            bytes: flip(14 + m + 2 + 10),
            expect: "signature invalid",
            kind: ErrorKind::BadBundle,
            wrote: false,
        },
        Case {
            name: "payload first byte",
            bytes: flip(payload_at),
            expect: "payload SHA-256 mismatch",
            kind: ErrorKind::BadBundle,
            wrote: true,
        },
        Case {
            name: "payload last byte",
            bytes: flip(good.len() - 1),
            expect: "payload SHA-256 mismatch",
            kind: ErrorKind::BadBundle,
            wrote: true,
        },
        Case {
            name: "truncated payload",
            bytes: good[..good.len() - 1].to_vec(),
            expect: "payload truncated",
            kind: ErrorKind::BadBundle,
            wrote: true,
        },
        Case {
            name: "truncated header",
            bytes: good[..14 + m / 2].to_vec(),
            expect: "truncated",
            kind: ErrorKind::BadBundle,
            wrote: false,
        },
        Case {
            name: "appended byte",
            bytes: [good.clone(), vec![0]].concat(),
            expect: "trailing data",
            kind: ErrorKind::BadBundle,
            wrote: true,
        },
        Case {
            name: "random file",
            bytes: random_bytes(300 * 1024, 0x1234_5678_9abc_def1),
            expect: "bad magic",
            kind: ErrorKind::BadBundle,
            wrote: false,
        },
        Case {
            name: "empty file",
            bytes: vec![],
            expect: "truncated",
            kind: ErrorKind::BadBundle,
            wrote: false,
        },
    ];
    for case in cases {
        let rig = Rig::new();
        // Same key as the probe's bundle.
        std::fs::copy(probe.path("keys/test.pub"), rig.path("keys/test.pub")).unwrap();
        refused(&rig, case).await;
    }
}

#[tokio::test]
async fn wrong_key_and_no_keys_are_refused() {
    let rig = Rig::new();
    let other = SecretKey::generate();
    let bytes = build_bundle_bytes(&other, &spec("0.2.0", Kind::Base), &payload(SMALL, 3)).unwrap();
    refused(
        &rig,
        Case {
            name: "wrong key",
            bytes,
            expect: "unknown key",
            kind: ErrorKind::BadBundle,
            wrote: false,
        },
    )
    .await;

    let rig = Rig::new();
    std::fs::remove_file(rig.path("keys/test.pub")).unwrap();
    let bytes = rig.bundle("0.2.0", &payload(SMALL, 3));
    refused(
        &rig,
        Case {
            name: "no keys",
            bytes: bytes.clone(),
            expect: "no trusted update keys",
            kind: ErrorKind::Refused,
            wrote: false,
        },
    )
    .await;
    std::fs::remove_dir_all(rig.path("keys")).unwrap();
    refused(
        &rig,
        Case {
            name: "no key directory",
            bytes,
            expect: "no trusted update keys",
            kind: ErrorKind::Refused,
            wrote: false,
        },
    )
    .await;
}

#[tokio::test]
async fn policy_refusals() {
    let rig = Rig::new();
    let cases = [
        (
            "downgrade",
            rig.bundle("0.0.9", &payload(SMALL, 4)),
            "downgrade refused",
        ),
        (
            "replay",
            rig.bundle("0.1.0", &payload(SMALL, 4)),
            "replay refused",
        ),
        (
            "larger than the slot",
            rig.bundle("0.2.0", &payload(SLOT_SIZE as usize + 1, 4)),
            "does not fit the target slot",
        ),
    ];
    for (name, bytes, expect) in cases {
        refused(
            &rig,
            Case {
                name,
                bytes,
                expect,
                kind: ErrorKind::Refused,
                wrote: false,
            },
        )
        .await;
    }
    // Requirements and installs_over come from keel-bundle's policy.
    let mut s = spec("0.3.0", Kind::Base);
    s.installs_over = vec![">=0.2.0".parse().unwrap()];
    let bytes = build_bundle_bytes(&rig.key, &s, &payload(SMALL, 5)).unwrap();
    refused(
        &rig,
        Case {
            name: "installs_over",
            bytes,
            expect: "cannot be installed over 0.1.0",
            kind: ErrorKind::Refused,
            wrote: false,
        },
    )
    .await;
    let mut s = spec("0.3.0", Kind::Base);
    s.requires = vec!["demo>=1.0.0".parse().unwrap()];
    let bytes = build_bundle_bytes(&rig.key, &s, &payload(SMALL, 5)).unwrap();
    refused(
        &rig,
        Case {
            name: "requirement",
            bytes,
            expect: "needs demo >= 1.0.0 first",
            kind: ErrorKind::Refused,
            wrote: false,
        },
    )
    .await;
}

#[tokio::test]
async fn read_back_mismatch_is_an_error_and_not_armed() {
    let mut rig = Rig::new();
    rig.cfg.before_read_back = Some(Arc::new(|path: &std::path::Path| {
        // The disk returns something else than was written.
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&[0xFF], 4096).unwrap();
    }));
    let bytes = rig.bundle("0.2.0", &payload(SMALL, 6));
    refused(
        &rig,
        Case {
            name: "read-back mismatch",
            bytes,
            expect: "read-back of slot b differs from the bundle",
            kind: ErrorKind::Failed,
            wrote: true,
        },
    )
    .await;
}

/// The hook runs before each written range is read back, so a byte the "disk"
/// returns wrong is caught wherever it is: in a later 4 MiB range, or the very
/// last byte (the unaligned tail, written without O_DIRECT).
#[tokio::test]
async fn read_back_catches_a_changed_byte_in_a_later_range_and_at_the_end() {
    use keel_update::slot::CHUNK;
    let data = payload(BIG, 13);
    for (name, off) in [("later range", CHUNK + 777), ("last byte", BIG - 1)] {
        let mut rig = Rig::new();
        // Not the payload's byte there; written again at every call (the writer may
        // not have reached that range yet, and would overwrite it).
        let bad = !data[off];
        rig.cfg.before_read_back = Some(Arc::new(move |path: &std::path::Path| {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.write_all_at(&[bad], off as u64).unwrap();
        }));
        let bytes = rig.bundle("0.2.0", &data);
        refused(
            &rig,
            Case {
                name,
                bytes,
                expect: "read-back of slot b differs from the bundle",
                kind: ErrorKind::Failed,
                wrote: true,
            },
        )
        .await;
    }
}

/// Payload sizes around the write path's edges: shorter than one block, one
/// block, one whole buffer, one block past it. Each lands exactly, the rest of
/// the slot as it was, and the trial is armed.
#[tokio::test]
async fn short_and_aligned_payloads_land_exactly() {
    use keel_update::slot::{ALIGN, CHUNK};
    for len in [1, ALIGN - 1, ALIGN, CHUNK, CHUNK + ALIGN] {
        let rig = Rig::new();
        let before = vec![0x5Au8; SLOT_SIZE as usize];
        std::fs::write(rig.path("slots/root-b"), &before).unwrap();
        let data = payload(len, 14);
        let u = rig.start();
        let a = install(&u, rig.bundle("0.2.0", &data)).await.unwrap();
        assert_eq!(a.slot, "b", "{len} bytes");
        let b = rig.slot("b");
        assert_eq!(b.len(), before.len(), "{len} bytes: the slot changed size");
        assert!(
            b[..len] == data[..],
            "{len} bytes: slot b does not hold the payload"
        );
        assert!(
            b[len..] == before[len..],
            "{len} bytes: written past the payload"
        );
        let p = u.status().progress;
        assert_eq!(p.phase, UpdatePhase::RebootPending, "{len} bytes");
        assert_eq!((p.bytes_done, p.bytes_total), (len as u64, len as u64));
    }
}

/// A slot whose size is a multiple of neither the 4 MiB buffer nor the 4 KiB
/// block, filled to its last byte: the direct read-back of the tail ends at the
/// end of the device and still gets every byte.
#[tokio::test]
async fn a_payload_filling_an_odd_sized_slot_to_its_last_byte() {
    use keel_update::slot::CHUNK;
    let rig = Rig::new();
    let size = CHUNK + 3 * 4096 + 513;
    std::fs::write(rig.path("slots/root-b"), vec![0u8; size]).unwrap();
    let data = payload(size, 15);
    let u = rig.start();
    let a = install(&u, rig.bundle("0.2.0", &data)).await.unwrap();
    assert_eq!(a.slot, "b");
    assert!(rig.slot("b") == data, "slot b does not hold the payload");
    // One byte more does not fit.
    let rig = Rig::new();
    std::fs::write(rig.path("slots/root-b"), vec![0u8; size]).unwrap();
    let bytes = rig.bundle("0.2.0", &payload(size + 1, 15));
    refused(
        &rig,
        Case {
            name: "one byte over an odd-sized slot",
            bytes,
            expect: "does not fit the target slot",
            kind: ErrorKind::Refused,
            wrote: false,
        },
    )
    .await;
}

#[tokio::test]
async fn refused_while_the_running_slot_is_on_trial() {
    let rig = Rig::new();
    // Slot b runs its trial, not yet marked good: a is the good slot.
    rig.env().arm_trial(keel_boot::Slot::B, 3).unwrap();
    rig.grub_boot();
    rig.set_boot(keel_boot::Slot::B, "0.2.0", "boot-2");
    let u = rig.start();
    let before = rig.slot("a");
    let e = install(&u, rig.bundle("0.3.0", &payload(SMALL, 7)))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Refused);
    assert!(e.message.contains("runs on trial"), "{e}");
    assert!(rig.slot("a") == before, "the good slot was written");
}

#[tokio::test]
async fn a_second_install_while_one_runs_is_409_and_progress_is_live() {
    let rig = Rig::new();
    let u = rig.start();
    let bytes = rig.bundle("0.2.0", &payload(BIG, 8));
    let (tx, body) = channel_body();
    let u1 = u.clone();
    let first = tokio::spawn(async move { u1.install(body, None, false).await });

    // The header and one write buffer and an eighth of the payload, then wait.
    let head = 14 + manifest_len(&bytes) + 2 + 64 + 8;
    let first_part = head + keel_update::slot::CHUNK * 9 / 8;
    for chunk in bytes[..first_part].chunks(64 * 1024) {
        tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let mut seen = None;
    for _ in 0..200 {
        let s = u.status();
        if s.progress.phase == UpdatePhase::Write && s.progress.bytes_done > 0 {
            seen = Some(s.progress);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = seen.expect("no write progress while the upload was stalled");
    assert_eq!(p.version.as_deref(), Some("0.2.0"));
    assert_eq!(p.bytes_total, BIG as u64);
    assert_eq!(p.bytes_done, keel_update::slot::CHUNK as u64, "{p:?}");

    // A second install meanwhile: 409, and the first goes on.
    let e = install(&u, rig.bundle("0.2.1", &payload(SMALL, 9)))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Busy, "{e}");
    assert_eq!(u.status().progress.phase, UpdatePhase::Write);

    for chunk in bytes[first_part..].chunks(256 * 1024) {
        tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    drop(tx);
    let answer = first.await.unwrap().unwrap();
    assert_eq!(answer.slot, "b");
    assert_eq!(u.status().progress.phase, UpdatePhase::RebootPending);
    // And now another may start (a replay of what is in slot b is fine: it is
    // not the running version).
    install(&u, rig.bundle("0.2.1", &payload(SMALL, 9)))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_upload_cut_off_is_an_error_and_the_slot_invalid() {
    let rig = Rig::new();
    let u = rig.start();
    let bytes = rig.bundle("0.2.0", &payload(SMALL, 10));
    let (tx, body) = channel_body();
    let u1 = u.clone();
    let first = tokio::spawn(async move { u1.install(body, None, false).await });
    tx.send(Bytes::copy_from_slice(&bytes[..bytes.len() / 2]))
        .await
        .unwrap();
    drop(tx);
    let e = first.await.unwrap().unwrap_err();
    assert!(e.message.contains("payload truncated"), "{e}");
    rig.assert_not_armed();
    assert_eq!(rig.state().slot("b").content, SlotContent::Invalid);
}

#[tokio::test]
async fn a_template_naming_the_running_slot_is_refused() {
    let mut rig = Rig::new();
    // Both slots resolve to the same file (a symlink for b): never written.
    std::fs::remove_file(rig.path("slots/root-b")).unwrap();
    std::os::unix::fs::symlink(rig.path("slots/root-a"), rig.path("slots/root-b")).unwrap();
    rig.cfg.slot_device = rig.path("slots/root-{slot}").display().to_string();
    let before = rig.slot("a");
    let u = rig.start();
    let e = install(&u, rig.bundle("0.2.0", &payload(SMALL, 11)))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Failed);
    assert!(e.message.contains("is the running slot's"), "{e}");
    assert!(rig.slot("a") == before);
    rig.assert_not_armed();
}
