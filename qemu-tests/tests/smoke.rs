//! Boots two factory-fresh appliances and drives them the way an admin does:
//! setup code from the serial console, password, status over HTTPS, certificate
//! identity, read-only root, persistence across a reboot, clean power-off.

use std::time::Duration;

use keel_qemu_tests::{csrf_of, image_or_skip, json_post, Firmware, Vm, BOOT_CEILING};
use serde_json::json;

const PASSWORD: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appliance_smoke() {
    let Some(image) = image_or_skip() else {
        return;
    };
    let version = std::fs::read_to_string(keel_qemu_tests::workspace_root().join("VERSION"))
        .unwrap()
        .trim()
        .to_owned();

    // Two appliances at once, one disk image booted by both firmware types: the
    // certificate must be each box's own.
    let mut a = Vm::start_with("a", &image, Firmware::Bios).unwrap();
    let mut b = Vm::start_with("b", &image, Firmware::Uefi).unwrap();
    let boot_a = a.wait_serial("KEEL-READY", BOOT_CEILING).await.unwrap();
    b.wait_serial("KEEL-READY", BOOT_CEILING).await.unwrap();
    assert!(
        boot_a.contains(&format!("Keel {version} console: https://")),
        "banner with URL"
    );
    a.wait_https(BOOT_CEILING).await.unwrap();
    b.wait_https(BOOT_CEILING).await.unwrap();

    let code_a = a.setup_code().expect("setup code on a's serial console");
    let code_b = b.setup_code().expect("setup code on b's serial console");
    assert_ne!(code_a, code_b);

    let (http, seen) = a.client();
    let setup_url = a.url("/appliance/api/v1/setup");

    // Bad input: wrong code, not JSON, oversized — each a clear 4xx, nothing changes.
    let (st, body) = json_post(
        &http,
        &setup_url,
        json!({"setup_code": "AAAA-BBBB-CCCC", "password": PASSWORD}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 401, "{body}");
    assert_eq!(body["error"], "wrong setup code");
    let resp = http
        .post(&setup_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("setup_code={code_a}&password=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    let resp = http
        .post(&setup_url)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let state: serde_json::Value = http
        .get(&setup_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["setup_required"], true);

    // Status is private until logged in.
    let resp = http
        .get(a.url("/appliance/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    let (st, body) = json_post(
        &http,
        &setup_url,
        json!({"setup_code": code_a, "password": PASSWORD}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "{body}");
    let csrf = csrf_of(&body).unwrap();

    let status: serde_json::Value = http
        .get(a.url("/appliance/api/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["version"], version.as_str());
    assert_eq!(status["slot"], "a");
    assert_eq!(status["root_readonly"], true, "{status}");
    assert_eq!(status["hostname"], "keel");
    assert!(status["kernel"].as_str().unwrap().ends_with("-amd64"));
    assert!(
        status["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["address"] == "10.0.2.15/24"),
        "{status}"
    );
    // /data was grown from the image's 64 MiB to (nearly) the whole 2 GiB disk.
    assert!(
        status["data_total_bytes"].as_u64().unwrap() > 1024 * 1024 * 1024,
        "{status}"
    );
    let rss: u64 = status["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "keel-console")
        .map(|p| p["rss_kib"].as_u64().unwrap())
        .sum();
    assert!(rss > 0, "console process listed: {status}");

    // The certificate on the wire is the one status reports, and it is this box's own.
    let fp_a = status["certificate"]["sha256_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(seen.seen().as_deref(), Some(fp_a.as_str()));
    let (http_b, seen_b) = b.client();
    http_b
        .get(b.url("/appliance/api/v1/health"))
        .send()
        .await
        .unwrap();
    let fp_b = seen_b.seen().unwrap();
    assert_ne!(fp_a, fp_b, "two fresh appliances share a certificate");

    // The setup code is spent, and it never shows up again.
    let (st, _) = json_post(
        &http,
        &setup_url,
        json!({"setup_code": code_a, "password": "another password"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 409);

    // State changes need the CSRF token.
    let (st, _) = json_post(
        &http,
        &a.url("/appliance/api/v1/system/reboot"),
        json!({}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 403);

    // Plain HTTP moves to HTTPS.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = plain
        .get(format!("http://127.0.0.1:{}/appliance/", a.http_port))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 308);
    assert!(resp.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("https://"));

    // b is done: power it off through the API and see QEMU end by itself.
    let (http_b, _) = b.client();
    let (st, body) = json_post(
        &http_b,
        &b.url("/appliance/api/v1/setup"),
        json!({"setup_code": code_b, "password": PASSWORD}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "{body}");
    let (st, _) = json_post(
        &http_b,
        &b.url("/appliance/api/v1/system/shutdown"),
        json!({}),
        Some(&csrf_of(&body).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(st, 202);
    let exit = b.wait_exit(Duration::from_secs(120)).await.unwrap();
    assert!(exit.success(), "QEMU exit after guest power-off: {exit}");

    // Reboot a through the API: same password, same certificate, no setup code.
    let (st, _) = json_post(
        &http,
        &a.url("/appliance/api/v1/system/reboot"),
        json!({}),
        Some(&csrf),
    )
    .await
    .unwrap();
    assert_eq!(st, 202);
    // QEMU keeps running across a guest reboot; wait for the second banner.
    let deadline = std::time::Instant::now() + BOOT_CEILING;
    while a.serial().matches("KEEL-READY").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no second boot\n{}",
            a.serial_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    a.wait_https(BOOT_CEILING).await.unwrap();
    let after_reboot = a.serial();
    let second_boot = &after_reboot[after_reboot.find("KEEL-READY").unwrap() + 10..];
    assert!(
        !second_boot.contains("Setup code"),
        "setup code shown again after setup"
    );

    let (http, seen) = a.client();
    let (st, body) = json_post(
        &http,
        &a.url("/appliance/api/v1/login"),
        json!({"username": "admin", "password": "wrong password"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 401, "{body}");
    let (st, body) = json_post(
        &http,
        &a.url("/appliance/api/v1/login"),
        json!({"username": "admin", "password": PASSWORD}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "{body}");
    let status: serde_json::Value = http
        .get(a.url("/appliance/api/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["certificate"]["sha256_fingerprint"], fp_a.as_str());
    assert_eq!(seen.seen().as_deref(), Some(fp_a.as_str()));
    assert_eq!(status["slot"], "a");

    // Repeated wrong passwords are throttled.
    let mut got_429 = false;
    for _ in 0..10 {
        let (st, _) = json_post(
            &http,
            &a.url("/appliance/api/v1/login"),
            json!({"password": "guess"}),
            None,
        )
        .await
        .unwrap();
        if st == 429 {
            got_429 = true;
            break;
        }
        assert_eq!(st, 401);
    }
    assert!(got_429, "no rate limit after 10 wrong passwords");

    // Clean power-off of a too.
    let (st, _) = json_post(
        &http,
        &a.url("/appliance/api/v1/system/shutdown"),
        json!({}),
        Some(&csrf_of(&body).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(st, 202);
    let exit = a.wait_exit(Duration::from_secs(120)).await.unwrap();
    assert!(exit.success(), "{exit}");
}
