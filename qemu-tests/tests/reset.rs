//! Factory reset on the real image: from the API, and from the boot menu driven on
//! the serial line (afterwards nothing of the old identity is on the disk); a power
//! cut in the middle of a reset; the admin password reset from the local menu.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_qemu_tests::{
    cert_file, image_or_skip, json_post, log_in, openssl, set_up_admin, Firmware, Vm, BOOT_CEILING,
    POWEROFF_CEILING, READY_MARKER,
};
use serde_json::json;

const PASSWORD: &str = "old console password";

/// The last full line of the certificate's PEM body: it encodes signature bytes, so
/// it exists only in that appliance's stored certificate (the first lines encode
/// the issuer name, which every self-signed Keel certificate shares).
fn pem_line(der: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-inform", "DER", "-outform", "PEM"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl (scripts/deps.sh installs it)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(der).unwrap();
    let out = child.wait_with_output().unwrap();
    let pem = String::from_utf8(out.stdout).unwrap();
    pem.lines()
        .rfind(|l| !l.starts_with("-----") && l.len() == 64)
        .expect("a full PEM body line")
        .to_owned()
}

/// Waits for the `n`-th console start of this QEMU run, then for HTTPS.
async fn wait_boots(vm: &mut Vm, n: usize) {
    vm.wait_serial_count(READY_MARKER, n, BOOT_CEILING)
        .await
        .unwrap();
    vm.wait_https(BOOT_CEILING).await.unwrap();
}

/// POSTs `body` to the console API's `path` with the CSRF token: status and body.
async fn post(
    http: &reqwest::Client,
    vm: &Vm,
    csrf: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    json_post(
        http,
        &vm.url(&format!("/appliance/api/v1{path}")),
        body,
        Some(csrf),
    )
    .await
    .unwrap()
}

/// The admin's login with `password` from a new client: the answer's status and
/// body, and the certificate the console showed that client.
async fn try_log_in(vm: &Vm, password: &str) -> (u16, serde_json::Value, Vec<u8>) {
    let (http, seen) = vm.client();
    let (st, body) = json_post(
        &http,
        &vm.url("/appliance/api/v1/login"),
        json!({"username": "admin", "password": password}),
        None,
    )
    .await
    .unwrap();
    (st, body, seen.seen_der().unwrap())
}

async fn set_up(vm: &Vm) -> (reqwest::Client, String, Vec<u8>) {
    set_up_admin(vm, PASSWORD).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factory_reset_from_api_and_boot_menu() {
    let Some(image) = image_or_skip() else {
        return;
    };
    let mut vm = Vm::start("reset", &image).unwrap();
    wait_boots(&mut vm, 1).await;
    let code1 = vm.setup_code().unwrap();
    let (http, csrf, cert1) = set_up(&vm).await;
    let line1 = pem_line(&cert1);

    // Configure it the way an admin would: an imported certificate with its key, a
    // static address, and a marker string in the network configuration.
    let work = tempfile::tempdir().unwrap();
    openssl(
        work.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "imported.key",
            "-out",
            "imported.crt",
            "-days",
            "90",
            "-subj",
            "/CN=imported.keel.test",
            "-addext",
            "subjectAltName=DNS:imported.keel.test",
        ],
    );
    let key_line = std::fs::read_to_string(work.path().join("imported.key"))
        .unwrap()
        .lines()
        .rfind(|l| !l.starts_with("-----") && l.len() == 64)
        .unwrap()
        .to_owned();
    let (st, body) = json_post(
        &http,
        &vm.url("/appliance/api/v1/certs/import"),
        json!({"label": "imported", "files": [
            cert_file(work.path(), "imported.crt"),
            cert_file(work.path(), "imported.key"),
        ]}),
        Some(&csrf),
    )
    .await
    .unwrap();
    assert_eq!(st, 201, "{body}");
    let marker = format!("mk{}", &keel_qemu_tests::sha256_hex(&cert1)[..12]);
    let (st, state) = keel_qemu_tests::json_get(&http, &vm.url("/appliance/api/v1/net/config"))
        .await
        .unwrap();
    assert_eq!(st, 200, "{state}");
    let mut config = state["running"].clone();
    config["hostname"] = json!(marker);
    config["interfaces"][0]["addresses"]
        .as_array_mut()
        .unwrap()
        .push(json!("10.0.2.77/24"));
    let resp = http
        .put(vm.url("/appliance/api/v1/net/config"))
        .header("x-csrf-token", &csrf)
        .json(&config)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let (st, body) = post(&http, &vm, &csrf, "/net/confirm", json!({})).await;
    assert_eq!(st, 200, "{body}");
    // Written through to the disk: the scan sees all of it before the reset (it can
    // find things).
    let mut found = Vec::new();
    for _ in 0..30 {
        found = vm.disk_contains(&[&line1, &key_line, &marker]).unwrap();
        if found == [true, true, true] {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(
        found,
        [true, true, true],
        "[certificate, imported key, marker] on disk"
    );

    // Without the typed confirmation nothing happens.
    let url = vm.url("/appliance/api/v1/system/factory-reset");
    let (st, body) = json_post(&http, &url, json!({"confirm": "yes"}), Some(&csrf))
        .await
        .unwrap();
    assert_eq!(st, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("RESET"));
    let (st, _) = json_post(&http, &url, json!({"confirm": "RESET"}), None)
        .await
        .unwrap();
    assert_eq!(st, 403, "reset without CSRF token");

    let (st, body) = json_post(&http, &url, json!({"confirm": "RESET"}), Some(&csrf))
        .await
        .unwrap();
    assert_eq!(st, 202, "{body}");
    wait_boots(&mut vm, 2).await;

    // A new appliance: new setup code, new certificate, the old password is gone.
    let code2 = vm.setup_code().unwrap();
    assert_ne!(code1, code2);
    let (http2, seen2) = vm.client();
    let state: serde_json::Value = http2
        .get(vm.url("/appliance/api/v1/setup"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["setup_required"], true);
    let (st, _) = json_post(
        &http2,
        &vm.url("/appliance/api/v1/login"),
        json!({"password": PASSWORD}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 409, "old password still accepted");
    assert_ne!(seen2.seen_der().unwrap(), cert1);

    // Boot menu: restart, pick "Factory reset" with its hotkey on the serial line,
    // confirm at the prompt.
    let (http, csrf, cert2) = set_up(&vm).await;
    let line2 = pem_line(&cert2);
    let grub_before = vm.serial().matches("GNU GRUB").count();
    let (st, _) = post(&http, &vm, &csrf, "/system/reboot", json!({})).await;
    assert_eq!(st, 202);
    let deadline = Instant::now() + BOOT_CEILING;
    while vm.serial().matches("GNU GRUB").count() <= grub_before {
        assert!(Instant::now() < deadline, "{}", vm.serial_tail());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    vm.type_serial("f").unwrap();
    vm.wait_serial("Type RESET", BOOT_CEILING).await.unwrap();
    vm.type_serial("RESET\r").unwrap();
    wait_boots(&mut vm, 3).await;
    let code3 = vm.setup_code().unwrap();
    assert_ne!(code3, code2);
    let (http, csrf, cert3) = set_up(&vm).await;
    assert_ne!(cert3, cert2);

    // Power off cleanly so the disk image holds everything the guest wrote, then
    // scan it as a thief with the disk in hand would.
    let (st, _) = post(&http, &vm, &csrf, "/system/shutdown", json!({})).await;
    assert_eq!(st, 202);
    vm.wait_exit(Duration::from_secs(120)).await.unwrap();

    // Nothing of the earlier identities is left on the disk; the current one is.
    let line3 = pem_line(&cert3);
    let found = vm
        .disk_contains(&[&line1, &key_line, &marker, &line2, &code1, &code2, &line3])
        .unwrap();
    assert_eq!(
        found,
        [false, false, false, false, false, false, true],
        "[cert 1, imported key, marker, cert 2, setup code 1, setup code 2] must be gone; \
         the live cert 3 present"
    );
}

/// The local console menu on the serial line: "Reset the admin password", confirmed
/// with `yes`, ends the old password (`password`) and the session `http` and shows a
/// new setup code, which sets `new_password` through the web setup.
async fn local_menu_resets_admin_password(
    vm: &mut Vm,
    http: &reqwest::Client,
    password: &str,
    new_password: &str,
) -> (reqwest::Client, String) {
    let code1 = vm.setup_code().unwrap();
    // Item 3 of the menu, then its confirmation.
    vm.type_serial("3\r").unwrap();
    vm.wait_serial(
        "Type yes to reset the admin password",
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    vm.type_serial("yes\r").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let code2 = loop {
        match vm.setup_code() {
            Some(c) if c != code1 => break c,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no new setup code after the menu's password reset\n{}",
            vm.serial_tail()
        );
        assert!(
            vm.exited().unwrap().is_none(),
            "QEMU ended\n{}",
            vm.serial_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The session from before is gone, and so is the old password.
    let resp = http
        .get(vm.url("/appliance/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "old session still valid");
    let (st, body, _) = try_log_in(vm, password).await;
    assert!(st == 401 || st == 409, "old password: {st} {body}");

    // The new code (the last one on the serial line) sets a new password.
    assert_eq!(vm.setup_code().as_deref(), Some(code2.as_str()));
    let (http, csrf, _) = set_up_admin(vm, new_password).await.unwrap();
    (http, csrf)
}

const ERASING: &str = "keel-reset: factory reset: erasing";
const ERASED: &str = "keel-reset: data erased";
/// A larger disk makes the erase take long enough to cut into it.
const GROW: u64 = 16 << 30;

/// A power cut in the middle of a factory reset: the next boot resumes the reset and
/// ends with a factory-fresh appliance, never a half-erased or unbootable one. The
/// same VM then resets the admin password from the local menu.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factory_reset_resumes_after_a_power_cut_and_local_menu_resets_the_password() {
    let Some(image) = image_or_skip() else {
        return;
    };
    let mut vm = Vm::start_grown("powercut", &image, Firmware::Bios, GROW).unwrap();
    wait_boots(&mut vm, 1).await;
    let first_code = vm.setup_code().unwrap();
    let (http, csrf, first_cert) = set_up(&vm).await;

    let (st, body) = post(
        &http,
        &vm,
        &csrf,
        "/system/factory-reset",
        json!({"confirm": "RESET"}),
    )
    .await;
    assert_eq!(st, 202, "{body}");

    // Pull the plug as soon as the erase has started.
    let deadline = Instant::now() + BOOT_CEILING;
    while !vm.serial().contains(ERASING) {
        assert!(Instant::now() < deadline, "no erase\n{}", vm.serial_tail());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    vm.kill();
    let cut_mid_erase = !vm.serial().contains(ERASED);
    eprintln!(
        "power cut {} the erase had finished",
        if cut_mid_erase { "before" } else { "after" }
    );

    // The next boot carries the reset out again, to the end.
    vm.boot().unwrap();
    wait_boots(&mut vm, 1).await;
    let serial = vm.serial();
    if cut_mid_erase {
        assert!(
            serial.contains(ERASING) && serial.contains(ERASED),
            "reset not resumed after the power cut\n{}",
            vm.serial_tail()
        );
    }
    let code = vm.setup_code().expect("a new setup code after the reset");
    assert_ne!(code, first_code);
    let (st, _, cert) = try_log_in(&vm, PASSWORD).await;
    assert_ne!(st, 200, "the old password still works");
    assert_ne!(cert, first_cert, "same certificate after the reset");

    // The reset is over: set up, reboot, and nothing is erased again.
    let (http, csrf, _) = set_up_admin(&vm, "a new console password").await.unwrap();
    let erases = vm.serial().matches(ERASING).count();
    let (st, body) = post(&http, &vm, &csrf, "/system/reboot", json!({})).await;
    assert_eq!(st, 202, "{body}");
    wait_boots(&mut vm, 2).await;
    assert_eq!(vm.serial().matches(ERASING).count(), erases, "erased again");
    let (http, _) = log_in(&vm, "a new console password").await.unwrap();

    let (http, csrf) =
        local_menu_resets_admin_password(&mut vm, &http, "a new console password", "menu password")
            .await;
    let (st, body) = post(&http, &vm, &csrf, "/system/shutdown", json!({})).await;
    assert_eq!(st, 202, "{body}");
    vm.wait_exit(POWEROFF_CEILING).await.unwrap();
}
