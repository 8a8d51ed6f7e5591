//! Boots two factory-fresh appliances and drives them the way an admin does:
//! setup code from the serial console, password, status over HTTPS, certificate
//! identity, CSRF and login throttling, read-only root, persistence across a
//! reboot, clean power-off. One test function: the boots are the expensive part,
//! so each boot carries as many checks as it can.

use keel_qemu_tests::{
    answer, csrf_of, image_or_skip, json_get, json_post, sha256_hex, virtual_size, workspace_root,
    Firmware, Vm, BOOT_CEILING, POWEROFF_CEILING, READY_MARKER,
};
use serde_json::{json, Value};
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";
const API: &str = "/appliance/api/v1";
/// The boot menu's title on the serial line: once per boot.
const GRUB_MARKER: &str = "GNU GRUB";
/// Each VM's disk is this much larger than the image.
const GROW: u64 = 2 << 30;

/// The certificate's subjectAltName extension as the openssl CLI prints it.
fn subject_alt_names(der: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-ext", "subjectAltName"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl (scripts/deps.sh installs it)");
    child.stdin.take().unwrap().write_all(der).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

fn api(vm: &Vm, path: &str) -> String {
    vm.url(&format!("{API}{path}"))
}

/// An API error answer: the given status and `{"error": "<non-empty>"}`.
fn assert_error(what: &str, got: (u16, Value), want: u16) {
    let (st, body) = got;
    assert_eq!(st, want, "{what}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: answer {st} without a JSON error body: {body}"
    );
}

/// `XXXX-XXXX-XXXX` from the alphabet without 0/O/1/I.
fn assert_setup_code_format(code: &str) {
    let groups: Vec<&str> = code.split('-').collect();
    assert!(
        groups.len() == 3
            && groups.iter().all(|g| g.len() == 4
                && g.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                && !g.contains(['0', 'O', '1', 'I'])),
        "setup code {code:?} is not XXXX-XXXX-XXXX without 0/O/1/I"
    );
}

async fn setup_required(http: &reqwest::Client, vm: &Vm) -> bool {
    let (st, body) = json_get(http, &api(vm, "/setup")).await.unwrap();
    assert_eq!(st, 200, "{body}");
    body["setup_required"]
        .as_bool()
        .unwrap_or_else(|| panic!("GET /setup: {body}"))
}

async fn status(http: &reqwest::Client, vm: &Vm) -> Value {
    let (st, body) = json_get(http, &api(vm, "/status")).await.unwrap();
    assert_eq!(st, 200, "GET /status: {body}");
    body
}

/// Status JSON with every field of the contract (docs/interfaces.md), well typed.
fn assert_status_contract(s: &Value, version: &str) {
    assert_eq!(s["version"], version, "{s}");
    assert_eq!(s["slot"], "a", "{s}");
    assert_eq!(s["root_readonly"], true, "{s}");
    assert_eq!(s["hostname"], "keel", "{s}");
    assert!(s["uptime_seconds"].is_u64(), "{s}");
    assert!(
        s["kernel"].as_str().is_some_and(|k| k.ends_with("-amd64")),
        "{s}"
    );
    assert!(s["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{s}");
    let addresses = s["addresses"].as_array().expect("addresses");
    assert!(
        addresses
            .iter()
            .any(|a| a["address"] == "10.0.2.15/24" && a["interface"].is_string()),
        "{s}"
    );
    let fp = s["certificate"]["sha256_fingerprint"]
        .as_str()
        .unwrap_or("");
    assert!(
        fp.len() == 64 && fp.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "fingerprint is 64 lowercase hex digits: {s}"
    );
    assert!(s["certificate"]["subject"].is_string(), "{s}");
    assert!(s["certificate"]["not_after"].is_string(), "{s}");
    let processes = s["processes"].as_array().expect("processes");
    assert!(
        processes
            .iter()
            .all(|p| p["name"].is_string() && p["pid"].is_u64() && p["rss_kib"].is_u64()),
        "{s}"
    );
    assert!(
        processes
            .iter()
            .any(|p| p["name"] == "keel-console" && p["rss_kib"].as_u64() > Some(0)),
        "keel-console listed with its RSS: {s}"
    );
}

/// /data was grown to the end of a disk larger than the image: it holds more than
/// the whole image's disk did.
fn assert_data_grown(s: &Value, image_bytes: u64) {
    assert!(
        s["data_total_bytes"].as_u64() > Some(image_bytes),
        "/data not grown past the image's {image_bytes} bytes on a disk {GROW} bytes larger: {s}"
    );
}

/// Sets the admin password with the setup code; checks the session cookie and
/// returns the CSRF token.
async fn complete_setup(http: &reqwest::Client, vm: &Vm, code: &str) -> String {
    let resp = http
        .post(api(vm, "/setup"))
        .json(&json!({"setup_code": code, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("keel_session="))
        .unwrap_or_else(|| panic!("no keel_session cookie: {:?}", resp.headers()))
        .to_owned();
    for attr in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(
            cookie.contains(attr),
            "session cookie without {attr}: {cookie}"
        );
    }
    let body: Value = resp.json().await.unwrap();
    let csrf = csrf_of(&body).unwrap();
    assert!(csrf.len() >= 32, "short CSRF token {csrf:?}");
    csrf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appliance_smoke() {
    let Some(image) = image_or_skip() else {
        return;
    };
    let version = std::fs::read_to_string(workspace_root().join("VERSION"))
        .unwrap()
        .trim()
        .to_owned();

    // Two appliances at once, one disk image booted by both firmware types: each
    // must come up with its own setup code and certificate.
    let image_bytes = virtual_size(&image).unwrap();
    let mut a = Vm::start_grown("a", &image, Firmware::Bios, GROW).unwrap();
    let mut b = Vm::start_grown("b", &image, Firmware::Uefi, GROW).unwrap();
    let (up_a, up_b) = tokio::join!(a.wait_https(BOOT_CEILING), b.wait_https(BOOT_CEILING));
    eprintln!(
        "console answering: a (BIOS) {:?}, b (UEFI) {:?} after QEMU start",
        up_a.unwrap(),
        up_b.unwrap()
    );
    // The banner (URL, setup code) follows once the console answers.
    let (boot_a, boot_b) = tokio::join!(
        a.wait_serial(READY_MARKER, BOOT_CEILING),
        b.wait_serial(READY_MARKER, BOOT_CEILING)
    );
    for boot in [boot_a.unwrap(), boot_b.unwrap()] {
        assert!(
            boot.contains(&format!("Keel {version} console: https://")),
            "banner with URL on serial"
        );
    }

    let code_a = a.setup_code().expect("setup code on a's serial console");
    let code_b = b.setup_code().expect("setup code on b's serial console");
    assert_setup_code_format(&code_a);
    assert_setup_code_format(&code_b);
    assert_ne!(code_a, code_b);

    let (http, seen) = a.client();
    let setup_url = api(&a, "/setup");
    assert!(setup_required(&http, &a).await);

    // Bad input: wrong code, not JSON, no content type, oversized, weak password —
    // each a clear 4xx with a JSON error, and setup is still required afterwards.
    let wrong = json!({"setup_code": "AAAA-BBBB-CCCC", "password": PASSWORD});
    let got = json_post(&http, &setup_url, wrong.clone(), None)
        .await
        .unwrap();
    assert_eq!(got.1["error"], "wrong setup code");
    assert_error("wrong setup code", got, 401);
    let form = http
        .post(&setup_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("setup_code={code_a}&password={PASSWORD}"))
        .send()
        .await
        .unwrap();
    assert_error("form-encoded setup", answer(form).await, 415);
    let untyped = http
        .post(&setup_url)
        .body(wrong.to_string())
        .send()
        .await
        .unwrap();
    assert_error("setup without Content-Type", answer(untyped).await, 415);
    // (On a connection of its own: the answer may come before the body is read.)
    let (oversized, _) = a.client();
    let big = oversized
        .post(&setup_url)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_error("2 MiB setup body", answer(big).await, 413);
    let weak = json_post(
        &http,
        &setup_url,
        json!({"setup_code": code_a, "password": "short"}),
        None,
    )
    .await
    .unwrap();
    assert_error("weak password", weak, 422);
    assert!(
        setup_required(&http, &a).await,
        "setup done by a refused request"
    );

    // Status is private until logged in.
    let got = json_get(&http, &api(&a, "/status")).await.unwrap();
    assert_error("status without session", got, 401);

    let csrf = complete_setup(&http, &a, &code_a).await;
    assert!(!setup_required(&http, &a).await);

    let status_a = status(&http, &a).await;
    assert_status_contract(&status_a, &version);
    assert_data_grown(&status_a, image_bytes);

    // The HTML console: every page of a logged-in admin links to the others and
    // renders with the services' state behind it.
    for (path, title) in [
        ("/appliance/", "Status › Basics"),
        ("/appliance/network/ip", "Networking › IP configuration"),
        (
            "/appliance/security/certificates",
            "Security › Certificates",
        ),
        ("/appliance/support/updates", "Support › Updates"),
    ] {
        let resp = http.get(a.url(path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let html = resp.text().await.unwrap();
        assert!(html.contains(&format!("<title>{title}")), "{path}: {html}");
        for link in [
            "/appliance/",
            "/appliance/network/ip",
            "/appliance/security/certificates",
            "/appliance/support/updates",
        ] {
            assert!(
                link == path || html.contains(&format!("href=\"{link}\"")),
                "{path} does not link to {link}"
            );
        }
    }

    // The certificate on the wire is the one status reports (hashed here, not by
    // the console's code), and it is this box's own.
    let fp_a = status_a["certificate"]["sha256_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let der_a = seen.seen_der().expect("a's certificate recorded");
    assert_eq!(sha256_hex(&der_a), fp_a);
    assert_eq!(seen.seen().as_deref(), Some(fp_a.as_str()));
    // Made on first boot for this box: its DHCP address and hostname are in it.
    let sans = subject_alt_names(&der_a);
    assert!(
        sans.contains("IP Address:10.0.2.15") && sans.contains("DNS:keel"),
        "first-boot certificate names: {sans}"
    );

    // The setup code is spent.
    let got = json_post(
        &http,
        &setup_url,
        json!({"setup_code": code_a, "password": "another password"}),
        None,
    )
    .await
    .unwrap();
    assert_error("second setup", got, 409);

    // State changes need the CSRF token: refused without it, or with a wrong one,
    // and nothing happens (the session survives a refused logout; the refused
    // reboot is checked below: still the first boot).
    let reboot = api(&a, "/system/reboot");
    let got = json_post(&http, &reboot, json!({}), None).await.unwrap();
    assert_error("reboot without CSRF token", got, 403);
    let got = json_post(&http, &reboot, json!({}), Some(&"0".repeat(64)))
        .await
        .unwrap();
    assert_error("reboot with a wrong CSRF token", got, 403);
    let got = json_post(&http, &api(&a, "/logout"), json!({}), None)
        .await
        .unwrap();
    assert_error("logout without CSRF token", got, 403);
    assert_eq!(status(&http, &a).await["version"], version.as_str());

    // Plain HTTP moves to the same path on HTTPS.
    let (plain, _) = a.client();
    let resp = plain
        .get(format!(
            "http://127.0.0.1:{}/appliance/api/v1/health?x=1",
            a.http_port
        ))
        .send()
        .await
        .unwrap();
    assert!(
        matches!(resp.status().as_u16(), 301 | 302 | 307 | 308),
        "plain HTTP: {}",
        resp.status()
    );
    assert_eq!(
        resp.headers()["location"].to_str().unwrap(),
        "https://127.0.0.1/appliance/api/v1/health?x=1"
    );

    // b: its own certificate, reported truthfully; then a clean power-off through
    // the API ends QEMU by itself.
    let (http_b, seen_b) = b.client();
    let csrf_b = complete_setup(&http_b, &b, &code_b).await;
    let status_b = status(&http_b, &b).await;
    assert_status_contract(&status_b, &version);
    assert_data_grown(&status_b, image_bytes);
    let fp_b = sha256_hex(&seen_b.seen_der().unwrap());
    assert_eq!(status_b["certificate"]["sha256_fingerprint"], fp_b.as_str());
    assert_ne!(fp_a, fp_b, "two fresh appliances share a certificate");
    let got = json_post(
        &http_b,
        &api(&b, "/system/shutdown"),
        json!({}),
        Some(&csrf_b),
    )
    .await
    .unwrap();
    assert_eq!(got.0, 202, "{}", got.1);
    let exit = b.wait_exit(POWEROFF_CEILING).await.unwrap();
    assert!(exit.success(), "QEMU exit after guest power-off: {exit}");

    // The refused reboot did nothing: a is still in its first boot.
    assert_eq!(a.serial().matches(GRUB_MARKER).count(), 1, "a rebooted");
    let uptime = status(&http, &a).await["uptime_seconds"].as_u64().unwrap();
    assert!(
        uptime >= status_a["uptime_seconds"].as_u64().unwrap(),
        "uptime went back: rebooted"
    );

    // Reboot a through the API: same password, same certificate, no setup code.
    let got = json_post(&http, &reboot, json!({}), Some(&csrf))
        .await
        .unwrap();
    assert_eq!(got.0, 202, "{}", got.1);
    // QEMU keeps running across a guest reboot; wait for the second banner.
    a.wait_serial_count(READY_MARKER, 2, BOOT_CEILING)
        .await
        .unwrap();
    a.wait_https(BOOT_CEILING).await.unwrap();
    // The banner follows the addresses: a boot without key generation can be ready
    // before its DHCP lease, and the URL line comes when the address does.
    let url_line = format!("Keel {version} console: https://");
    let deadline = std::time::Instant::now() + BOOT_CEILING;
    let after = loop {
        let s = a.serial();
        let since_menu = &s[s.rfind(GRUB_MARKER).unwrap_or(0)..];
        if since_menu.contains(&url_line) || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Everything since the boot menu came up again.
    let second_boot = &after[after.rfind(GRUB_MARKER).unwrap()..];
    assert!(
        after.matches(GRUB_MARKER).count() == 2 && second_boot.contains(READY_MARKER),
        "no second boot through GRUB"
    );
    assert!(
        second_boot.contains(&url_line),
        "banner with the URL after reboot"
    );
    assert!(
        !second_boot.contains("Setup code"),
        "setup code shown again after setup"
    );
    // Sessions live in memory: the reboot logged the old session out.
    let got = json_get(&http, &api(&a, "/status")).await.unwrap();
    assert_error("status with a session from before the reboot", got, 401);

    let (http, seen) = a.client();
    assert!(!setup_required(&http, &a).await, "setup required again");
    let login = api(&a, "/login");
    let got = json_post(
        &http,
        &login,
        json!({"username": "admin", "password": "wrong password"}),
        None,
    )
    .await
    .unwrap();
    assert_error("wrong password", got, 401);
    let (st, body) = json_post(
        &http,
        &login,
        json!({"username": "admin", "password": PASSWORD}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "{body}");
    let csrf = csrf_of(&body).unwrap();
    let status_a2 = status(&http, &a).await;
    assert_status_contract(&status_a2, &version);
    assert_eq!(
        status_a2["certificate"]["sha256_fingerprint"],
        fp_a.as_str()
    );
    assert_eq!(seen.seen_der().as_deref(), Some(der_a.as_slice()));

    // Repeated wrong passwords are throttled; while throttled even the right
    // password is refused.
    let mut throttled = None;
    for attempt in 1..=10 {
        let got = json_post(
            &http,
            &login,
            json!({"username": "admin", "password": format!("guess {attempt}")}),
            None,
        )
        .await
        .unwrap();
        if got.0 == 429 {
            assert_error("throttled login", got, 429);
            throttled = Some(attempt);
            break;
        }
        assert_error("wrong password", got, 401);
    }
    let throttled = throttled.expect("no 429 within 10 wrong passwords");
    eprintln!("login throttled at wrong attempt {throttled}");
    let got = json_post(
        &http,
        &login,
        json!({"username": "admin", "password": PASSWORD}),
        None,
    )
    .await
    .unwrap();
    assert_error("right password while throttled", got, 429);

    // Clean power-off of a too (the session from before the throttling still works).
    let got = json_post(&http, &api(&a, "/system/shutdown"), json!({}), Some(&csrf))
        .await
        .unwrap();
    assert_eq!(got.0, 202, "{}", got.1);
    let exit = a.wait_exit(POWEROFF_CEILING).await.unwrap();
    assert!(exit.success(), "QEMU exit after guest power-off: {exit}");
}
