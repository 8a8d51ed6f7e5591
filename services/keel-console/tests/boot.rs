//! The boot state root recorded (`/run/keel/boot/state.json`) reaches the status
//! API and the Basics page.

mod common;

use keel_api::{BootEnvSource, BootState};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn an_unreadable_boot_environment_is_shown_to_the_admin() {
    let data = tempfile::tempdir().unwrap();
    let state_file = data.path().join("run/keel/boot/state.json");
    keel_console::boot::set_state_file(state_file.clone());
    let console = common::serve(data.path()).await;
    let (http, _) = common::client();
    common::set_up(&http, &console.base, data.path()).await;

    // Nothing recorded (outside the image): no boot field, no section.
    let s: Value = http
        .get(console.url("/appliance/api/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(s["boot"].is_null(), "{s}");
    let page = common::page(&http, &console.url("/appliance/")).await;
    assert!(!page.contains("Boot environment"), "{page}");

    // What keel-reset early records when both copies are garbage.
    std::fs::create_dir_all(state_file.parent().unwrap()).unwrap();
    let state = BootState {
        source: BootEnvSource::Defaults,
        problem: Some(
            "boot environment unreadable (primary: grub/grubenv: no \"# GRUB Environment \
             Block\" header; backup: grub/grubenv.bak: not valid UTF-8): booted the factory \
             slot, no factory reset assumed"
                .into(),
        ),
        good_slot: "a".into(),
        running_slot: Some("a".into()),
        written_by: "keel-reset early".into(),
        ..BootState::default()
    };
    keel_core::store::write_json(&state_file, &state, 0o644).unwrap();
    let resp = http
        .get(console.url("/appliance/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let s: Value = resp.json().await.unwrap();
    assert_eq!(s["boot"]["source"], "defaults", "{s}");
    assert_eq!(s["boot"]["running_slot"], "a", "{s}");
    assert!(s["boot"]["problem"]
        .as_str()
        .unwrap()
        .contains("unreadable"));
    let page = common::page(&http, &console.url("/appliance/")).await;
    assert!(page.contains("<h2>Boot environment</h2>"), "{page}");
    assert!(
        page.contains("Boot environment unreadable (primary: grub/grubenv"),
        "{page}"
    );
}
