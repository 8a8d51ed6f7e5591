//! The audit log on the booted image: the console — unprivileged, under
//! ProtectSystem=strict — writes its records into /data/audit (tmpfiles.d, group
//! keel-audit) and reads them back: setup, a refused login and a refused power
//! request appear with user, source and result, and no password text is in them.

use keel_qemu_tests::{
    image_or_skip, json_get, json_post, set_up_admin, Vm, BOOT_CEILING, READY_MARKER,
};
use serde_json::{json, Value};

const PASSWORD: &str = "audit console password";
const WRONG: &str = "not the audit password";

#[tokio::test]
async fn the_console_records_into_data_audit() {
    let Some(image) = image_or_skip() else {
        return;
    };
    let mut vm = Vm::start("audit", &image).unwrap();
    vm.wait_serial(READY_MARKER, BOOT_CEILING).await.unwrap();
    vm.wait_https(BOOT_CEILING).await.unwrap();
    let (http, csrf, _) = set_up_admin(&vm, PASSWORD).await.unwrap();

    let (other, _) = vm.client();
    let (st, _) = json_post(
        &other,
        &vm.url("/appliance/api/v1/login"),
        json!({"username": "admin", "password": WRONG}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 401);
    // A power request without the CSRF token: refused, recorded, not carried out.
    let (st, _) = json_post(
        &http,
        &vm.url("/appliance/api/v1/system/reboot"),
        json!({}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 403);
    assert!(!csrf.is_empty());

    let (st, page) = json_get(&http, &vm.url("/appliance/api/v1/audit?limit=100"))
        .await
        .unwrap();
    assert_eq!(st, 200, "{page}");
    let recs = page["records"].as_array().unwrap();
    let has = |action: &str, user: &str, result: &str| {
        recs.iter().any(|r: &Value| {
            r["action"] == action
                && r["user"] == user
                && r["result"].as_str().unwrap_or("").starts_with(result)
                && r["service"] == "console"
        })
    };
    assert!(has("setup", "admin", "ok"), "{page:#}");
    assert!(has("login", "admin", "refused: 401"), "{page:#}");
    assert!(has("system.reboot", "admin", "refused: 403"), "{page:#}");
    // From outside the VM through QEMU's forwarding: the guest's side of it.
    assert!(
        recs.iter().all(|r| r["source"]
            .as_str()
            .is_some_and(|s| !s.is_empty() && s != "local")),
        "{page:#}"
    );
    let text = page.to_string();
    assert!(!text.contains(PASSWORD) && !text.contains(WRONG));

    // The page lists them too.
    let html = http
        .get(vm.url("/appliance/status/audit"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("system.reboot"), "{html}");
}
