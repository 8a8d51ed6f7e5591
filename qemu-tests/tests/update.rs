//! Update install on the real image, one VM: bad bundles refused with nothing
//! armed; the plug pulled while the new slot is written (the box boots the old
//! slot and installs again); an update to a new version through the console's API
//! (reboot into slot B, version and slot change), with the plug pulled during its
//! first trial boot (one try used up, B tried again and marked good); an update
//! whose console never becomes healthy (its trial boots run out, GRUB boots the
//! previous slot again, and the console says so).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keel_qemu_tests::updates::{
    api, base_version, booted_into, make_bundle, outcome, status, update_status, upload,
    wait_update_service,
};
use keel_qemu_tests::{
    image_or_skip, page_text, set_up_admin, workspace_root, Firmware, Vm, BOOT_CEILING,
    READY_MARKER,
};

const PASSWORD: &str = "update console password";
const NEW: &str = "0.1.1";
const BROKEN: &str = "0.1.2";
/// Three trial boots that fail fast, then the fallback boot.
const FALLBACK_CEILING: Duration = Duration::from_secs(900);
/// GRUB's serial line as it starts slot B's kernel (after counting the try).
const TRIAL_B_MARKER: &str = "Booting `Keel (slot B)'";

/// GRUB's environment as the disk holds it (the primary copy, which GRUB loads
/// and counts down in); QEMU must be stopped.
fn grubenv(vm: &Vm) -> HashMap<String, String> {
    let bytes = vm
        .read_esp_file("grub/grubenv")
        .unwrap()
        .expect("grub/grubenv on the ESP");
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Nothing armed, the running slot unchanged, the bundle refused with `want`.
async fn assert_refused(
    http: &reqwest::Client,
    vm: &Vm,
    csrf: &str,
    what: &str,
    bytes: Vec<u8>,
    want: u16,
    says: &str,
) {
    let (st, body) = upload(http, vm, csrf, bytes, true).await;
    assert_eq!(st, want, "{what}: {body}");
    let msg = body["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(msg.contains(says), "{what}: {msg:?} should say {says:?}");
    let s = status(http, vm).await;
    assert!(s["boot"]["trial"].is_null(), "{what} armed a trial: {s}");
    assert_eq!(s["slot"], "a", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_install_on_the_booted_image() {
    let Some(image) = image_or_skip() else {
        return;
    };
    let base = base_version();
    let work = tempfile::tempdir().unwrap();
    let work_path = work.path().to_path_buf();
    // The bundles are made while the VM boots.
    let dir = work_path.clone();
    let bundles = std::thread::spawn(move || {
        (
            make_bundle(&dir, NEW, &[]),
            make_bundle(&dir, BROKEN, &["--unhealthy"]),
        )
    });
    let mut vm = Vm::prepare("update", &image, Firmware::Bios, 0).unwrap();
    vm.boot().unwrap();
    vm.wait_serial(READY_MARKER, BOOT_CEILING).await.unwrap();
    vm.wait_https(BOOT_CEILING).await.unwrap();
    let (http, csrf, _) = set_up_admin(&vm, PASSWORD).await.unwrap();

    let u = wait_update_service(&http, &vm).await;
    assert_eq!(u["running"]["slot"], "a", "{u}");
    assert_eq!(u["running"]["version"], base.as_str(), "{u}");
    assert!(u["other"]["version"].is_null(), "slot B is empty: {u}");
    assert!(u["rollback_to"].is_null(), "{u}");

    let (new_bundle, broken_bundle) = bundles.join().unwrap();
    let new_bytes = std::fs::read(&new_bundle).unwrap();
    let own = std::fs::read(workspace_root().join(format!("build/keel-{base}.bundle"))).unwrap();

    // Bad input: refused before anything is armed.
    let mut random = vec![0u8; 1 << 20];
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new().fill(&mut random).unwrap();
    assert_refused(&http, &vm, &csrf, "random file", random, 400, "").await;
    assert_refused(&http, &vm, &csrf, "empty file", Vec::new(), 400, "").await;
    let mut tampered = new_bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_refused(&http, &vm, &csrf, "payload's last byte", tampered, 400, "").await;
    assert_refused(&http, &vm, &csrf, "the running version", own, 422, &base).await;
    let (st, body) = upload(&http, &vm, "wrong token", new_bytes.clone(), true).await;
    assert_eq!(st, 403, "install without the CSRF token: {body}");

    // The plug pulled while the new slot is being written.
    let upload_task = {
        let http = http.clone();
        let url = vm.url(&api("/update/install?reboot=true"));
        let csrf = csrf.clone();
        let bytes = new_bytes.clone();
        tokio::spawn(async move {
            let _ = http
                .post(url)
                .header("x-csrf-token", csrf)
                .header("content-type", "application/octet-stream")
                .body(bytes)
                .send()
                .await;
        })
    };
    let start = Instant::now();
    let mut seen_write = None;
    while start.elapsed() < Duration::from_secs(300) {
        let u = update_status(&http, &vm).await;
        let p = &u["progress"];
        if p["phase"] == "write" && p["bytes_done"].as_u64() > Some(8 << 20) {
            seen_write = Some(p.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen_write = seen_write.expect("the write phase shows its progress");
    assert_eq!(seen_write["version"], NEW, "{seen_write}");
    assert!(seen_write["bytes_total"].as_u64() > seen_write["bytes_done"].as_u64());
    vm.kill();
    upload_task.abort();
    vm.boot().unwrap();
    let (http, csrf) = booted_into(&mut vm, PASSWORD, 1, BOOT_CEILING, "a", &base).await;
    let s = status(&http, &vm).await;
    assert!(
        s["boot"]["trial"].is_null(),
        "a half-written slot is never armed: {s}"
    );

    // Installed whole this time: the box reboots into slot B, version NEW.
    let (st, body) = upload(&http, &vm, &csrf, new_bytes, true).await;
    assert_eq!(st, 200, "install {NEW}: {body}");
    assert_eq!(body["version"], NEW, "{body}");
    assert_eq!(body["slot"], "b", "{body}");
    assert_eq!(body["rebooting"], true, "{body}");

    // The plug pulled during the trial boot, once GRUB has counted the try and
    // started slot B's kernel: that try is used up, and the next boot is a trial
    // of B again (not the old slot), one try fewer.
    vm.wait_serial(TRIAL_B_MARKER, BOOT_CEILING).await.unwrap();
    vm.kill();
    let env = grubenv(&vm);
    assert_eq!(
        (
            env.get("keel_good").map(String::as_str),
            env.get("keel_try").map(String::as_str),
            env.get("keel_tries").map(String::as_str),
        ),
        (Some("a"), Some("b"), Some("2")),
        "after the power cut in the first trial boot: {env:?}"
    );
    vm.boot().unwrap();
    vm.wait_serial(TRIAL_B_MARKER, BOOT_CEILING).await.unwrap();
    let (http, csrf) = booted_into(&mut vm, PASSWORD, 1, BOOT_CEILING, "b", NEW).await;
    // The gate marks the new slot good once everything is up.
    let u = outcome(&http, &vm, "installed").await;
    assert_eq!(u["last_outcome"]["kind"], "installed", "{u}");
    assert_eq!(
        u["rollback_to"],
        base.as_str(),
        "the old slot holds a good version: {u}"
    );

    // An update whose console never comes up: its tries run out, GRUB boots B again.
    let broken = std::fs::read(&broken_bundle).unwrap();
    let (st, body) = upload(&http, &vm, &csrf, broken, true).await;
    assert_eq!(st, 200, "install {BROKEN}: {body}");
    assert_eq!(body["slot"], "a", "{body}");
    // This QEMU run: B's trial boot (1), A's failing trials, B again (2).
    let (http, _) = booted_into(&mut vm, PASSWORD, 2, FALLBACK_CEILING, "b", NEW).await;
    let u = update_status(&http, &vm).await;
    assert_eq!(u["last_outcome"]["kind"], "rolled-back", "{u}");
    let message = format!("update to {BROKEN} failed its health check, running {NEW} again");
    assert_eq!(u["last_outcome"]["message"], message.as_str(), "{u}");
    assert!(
        u["rollback_to"].is_null(),
        "slot A holds the failed version: {u}"
    );
    let basics = page_text(&http, &vm.url("/appliance/")).await.unwrap();
    assert!(
        basics.contains(&message),
        "Basics says what happened:\n{basics}"
    );
}
