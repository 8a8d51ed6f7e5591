//! After the reboot: the outcome of a trial from the boot state (prepared with
//! keel-boot as GRUB and keel-boot-ok leave it), and the admin's rollback.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use keel_api::{OutcomeKind, RollbackRequest};
use keel_boot::Slot;
use keel_update::ErrorKind;

fn confirm() -> RollbackRequest {
    RollbackRequest {
        confirm: "ROLLBACK".into(),
    }
}

/// Installs 0.2.0 into slot b from slot a (0.1.0) in boot-1.
async fn installed_rig() -> Rig {
    let rig = Rig::new();
    let u = rig.start();
    install(&u, rig.bundle("0.2.0", &payload(SMALL, 1)))
        .await
        .unwrap();
    rig
}

#[tokio::test]
async fn healthy_trial_is_installed_then_rollback_to_the_previous_version() {
    let rig = installed_rig().await;
    // GRUB boots the trial; keel-boot-ok marks it good once the console is up.
    assert_eq!(rig.grub_boot(), Slot::B);
    // Before mark-good: the trial still runs, no outcome yet.
    rig.set_boot(Slot::B, "0.2.0", "boot-2");
    let u = rig.start();
    let s = u.status();
    assert_eq!(s.last_outcome, None);
    assert!(rig.state().pending.is_some());
    assert!(!s.running.good);
    drop(u);

    rig.env().mark_good(Slot::B).unwrap();
    let u = rig.start();
    let s = u.status();
    let o = s.last_outcome.clone().expect("no outcome");
    assert_eq!(o.kind, OutcomeKind::Installed);
    assert_eq!(o.message, "updated from 0.1.0 to 0.2.0");
    assert_eq!(
        (o.from_version.as_str(), o.to_version.as_str()),
        ("0.1.0", "0.2.0")
    );
    assert!(
        rig.state().pending.is_none(),
        "pending kept after the outcome"
    );
    assert_eq!(rig.state_json()["last_outcome"]["kind"], "installed");
    assert_eq!(s.running.slot, "b");
    assert_eq!(s.running.version.as_deref(), Some("0.2.0"));
    assert!(s.running.good);
    assert_eq!(s.other.version.as_deref(), Some("0.1.0"));
    assert_eq!(s.rollback_to.as_deref(), Some("0.1.0"));

    // The admin rolls back: needs the typed confirmation.
    let e = u.rollback(RollbackRequest::default()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
    let a = u.rollback(confirm()).await.unwrap();
    assert_eq!(
        (a.version.as_str(), a.slot.as_str(), a.rebooting),
        ("0.1.0", "a", true)
    );
    let st = rig.env().status();
    assert_eq!(st.good(), Slot::A);
    assert_eq!(st.trial(), None);
    let s = u.status();
    let o = s.last_outcome.unwrap();
    assert_eq!(o.kind, OutcomeKind::RolledBackByAdmin);
    assert_eq!(
        (o.from_version.as_str(), o.to_version.as_str()),
        ("0.2.0", "0.1.0")
    );
    assert_eq!(s.rollback_to, None);
    // The answer goes out first, then the reboot.
    for _ in 0..100 {
        if rig.reboots.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rig.reboots.load(Ordering::SeqCst), 1);
    // Back on slot a: 0.1.0 runs, nothing to roll back to any more.
    rig.set_boot(Slot::A, "0.1.0", "boot-3");
    let u = rig.start();
    let s = u.status();
    assert_eq!(s.rollback_to, None);
    let e = u.rollback(confirm()).await.unwrap_err();
    assert_eq!(e.message, "no previous version to roll back to");
}

#[tokio::test]
async fn failed_trial_is_rolled_back_by_grub() {
    let rig = installed_rig().await;
    // Three boots of slot b that never become healthy, then GRUB drops the trial.
    for _ in 0..3 {
        assert_eq!(rig.grub_boot(), Slot::B);
        rig.set_boot(Slot::B, "0.2.0", "boot-b");
        let u = rig.start();
        assert_eq!(
            u.status().last_outcome,
            None,
            "outcome while the trial runs"
        );
    }
    assert_eq!(rig.grub_boot(), Slot::A);
    rig.set_boot(Slot::A, "0.1.0", "boot-5");
    let u = rig.start();
    let s = u.status();
    let o = s.last_outcome.expect("no outcome");
    assert_eq!(o.kind, OutcomeKind::RolledBack);
    assert_eq!(
        o.message,
        "update to 0.2.0 failed its health check, running 0.1.0 again"
    );
    assert!(rig.state().pending.is_none());
    assert_eq!(rig.state_json()["last_outcome"]["kind"], "rolled-back");
    assert!(s.running.good && s.running.slot == "a");
    // The failed version is no rollback target.
    assert_eq!(s.rollback_to, None);
    let e = u.rollback(confirm()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Refused);
    // The outcome stays through later boots.
    rig.set_boot(Slot::A, "0.1.0", "boot-6");
    let o2 = rig.start().status().last_outcome.unwrap();
    assert_eq!(o2.kind, OutcomeKind::RolledBack);
}

#[tokio::test]
async fn no_outcome_in_the_same_boot_and_none_on_a_factory_box() {
    let rig = installed_rig().await;
    // keel-update restarts in the same boot: the trial is armed, nothing decided.
    let u = rig.start();
    assert_eq!(u.status().last_outcome, None);
    assert!(rig.state().pending.is_some());

    let fresh = Rig::new();
    let u = fresh.start();
    let s = u.status();
    assert_eq!(s.last_outcome, None);
    assert_eq!(s.rollback_to, None);
    assert_eq!(s.other.version, None);
    let e = u.rollback(confirm()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Refused);
    assert_eq!(e.message, "no previous version to roll back to");
    assert_eq!(fresh.reboots.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn rollback_refused_when_the_other_slot_version_is_unknown() {
    // keel_prev says b, but keel-update never wrote b (no state for it): refused.
    let rig = Rig::new();
    rig.env().mark_good(Slot::B).unwrap();
    rig.env().mark_good(Slot::A).unwrap();
    assert_eq!(rig.env().status().previous_good(), Some(Slot::B));
    let u = rig.start();
    let e = u.rollback(confirm()).await.unwrap_err();
    assert_eq!(e.message, "no previous version to roll back to");
    assert_eq!(rig.env().status().good(), Slot::A);
}
