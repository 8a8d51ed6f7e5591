//! The console end to end in headless Chromium (Debian's chromium + chromedriver over
//! WebDriver) against one booted image, the way an admin clicks through it: first
//! login with the setup code from the serial console, every page of the navigation
//! (a screenshot of each under build/screenshots/ for review), an address added and
//! confirmed, a certificate imported from a file, the admin's password changed, an
//! auditor added who can see but not change, TOTP enrolled and used to log in, and
//! the audit log listing all of it — written by the unprivileged console into
//! /data/audit on the real image. No JavaScript is needed for any of it: every step
//! is a plain form.
//!
//! Chromium resolves names by itself (content autofill, updates) unless told not to:
//! every run passes the resolver rules of NOTES-env and opens the console by IP
//! literal, so nothing leaves the machine.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_qemu_tests::{image_or_skip, json_get, log_in, openssl, workspace_root, Vm, BOOT_CEILING};
use thirtyfour::prelude::*;

const PASSWORD: &str = "browser console passphrase";
/// The admin's password after the change on My account.
const NEW_PASSWORD: &str = "changed in the browser 2026";
const AUDITOR: &str = "auditor1";
const AUDITOR_PASSWORD: &str = "reads but never writes";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// A page load through QEMU's port forward on a busy TCG guest.
const PAGE_CEILING: Duration = Duration::from_secs(60);

/// chromedriver on a loopback port, one browser session, and the profile directory
/// (so no profile is left in /tmp).
struct Browser {
    _driver: Driver,
    web: WebDriver,
    shots: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        // thirtyfour's HTTP client (reqwest) needs a process-wide TLS provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Driver(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver (scripts/deps.sh installs chromium-driver)"),
        );
        let server = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while reqwest::get(format!("{server}/status")).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary(CHROMIUM).unwrap();
        for arg in [
            "--headless=new",
            // Root in CI: Chromium's sandbox needs an unprivileged user.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
            // Nothing may leave the machine: no name is ever resolved.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.path().display()),
        ] {
            caps.add_arg(arg).unwrap();
        }
        // The console's certificate is self-signed on first boot.
        caps.accept_insecure_certs(true).unwrap();
        let web = WebDriver::new(&server, caps)
            .await
            .expect("browser session");
        web.set_page_load_timeout(PAGE_CEILING).await.unwrap();
        let shots = workspace_root().join("build/screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            _driver: driver,
            web,
            shots,
            _profile: profile,
        }
    }

    async fn open(&self, url: &str) {
        self.web
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
    }

    async fn source(&self) -> String {
        self.web.source().await.unwrap()
    }

    /// Types into the field with this id (after clearing it).
    async fn fill(&self, id: &str, text: &str) {
        let field = self
            .web
            .find(By::Id(id))
            .await
            .unwrap_or_else(|e| panic!("field #{id}: {e}"));
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Clicks the button `css` (every button here submits a form) and waits until
    /// the page it was on is gone, so the next step sees the answer's page.
    async fn submit(&self, css: &str) {
        let button = self
            .web
            .find(By::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        button.click().await.unwrap();
        let deadline = Instant::now() + PAGE_CEILING;
        while button.is_present().await.unwrap_or(false) {
            assert!(
                Instant::now() < deadline,
                "{css}: the form's answer never came"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The page's visible text.
    async fn text(&self) -> String {
        self.web
            .find(By::Tag("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn log_out(&self) {
        self.submit("form[action='/appliance/logout'] button").await;
    }

    /// The login form: user name, password and, when given, the second factor.
    async fn log_in(&self, base: &str, user: &str, password: &str, code: Option<&str>) {
        self.open(base).await;
        self.fill("username", user).await;
        self.fill("password", password).await;
        if let Some(code) = code {
            self.fill("code", code).await;
        }
        self.submit("form[action='/appliance/login'] button").await;
        let page = self.text().await;
        assert!(page.contains("Log out"), "{user} logged in: {page}");
    }

    async fn screenshot(&self, name: &str) {
        let path = self.shots.join(format!("{name}.png"));
        self.web.screenshot(&path).await.unwrap();
        assert!(
            std::fs::metadata(&path).unwrap().len() > 1000,
            "{}: empty screenshot",
            path.display()
        );
    }

    async fn quit(self) {
        self.web.clone().quit().await.ok();
    }
}

/// The chromedriver process, stopped however the test ends: one left running keeps
/// holding whatever descriptors it inherited (the VM lock of `make test`).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// RFC 4648 base32 (no padding needed), as authenticator apps take the secret.
fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut value, mut out) = (0u32, 0u64, Vec::new());
    for c in text.trim_end_matches('=').bytes() {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c.to_ascii_uppercase())
            .unwrap_or_else(|| panic!("{c:?} in the secret is not base32"));
        value = (value << 5) | v as u64;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((value >> bits) as u8);
        }
    }
    out
}

/// The RFC 6238 code (HMAC-SHA-1, 30 s, 6 digits) for time step `step`.
fn totp(secret: &[u8], step: u64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mac = ring::hmac::sign(&key, &step.to_be_bytes());
    let h = mac.as_ref();
    let at = (h[19] & 0x0f) as usize;
    let n = u32::from_be_bytes([h[at] & 0x7f, h[at + 1], h[at + 2], h[at + 3]]);
    format!("{:06}", n % 1_000_000)
}

fn time_step() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 30
}

/// A file name for a page's screenshot: its navigation label in lower case.
fn slug(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// A certificate and key made with the openssl CLI, for the import form.
fn test_certificate(dir: &Path) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "30",
            "-subj",
            "/CN=browser-import.example",
        ],
    );
    let both = dir.join("both.pem");
    let mut pem = std::fs::read(dir.join("cert.pem")).unwrap();
    pem.extend(std::fs::read(dir.join("key.pem")).unwrap());
    std::fs::write(&both, pem).unwrap();
    both
}

/// An API session of the admin after TOTP is on (password + the current code; waits
/// out a step whose code was already used).
async fn log_in_totp(vm: &Vm, secret: &[u8]) -> (reqwest::Client, String) {
    let (http, _) = vm.client();
    let step = time_step() + 1;
    while time_step() < step {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (st, body) = keel_qemu_tests::json_post(
        &http,
        &vm.url("/appliance/api/v1/login"),
        serde_json::json!({"username": "admin", "password": NEW_PASSWORD, "code": totp(secret, step)}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "API login with TOTP: {body}");
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    (http, csrf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_browser() {
    let Some(image) = image_or_skip() else {
        return;
    };
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        eprintln!("skipped: {CHROMIUM} or {CHROMEDRIVER} missing (scripts/deps.sh installs them)");
        return;
    }
    let mut vm = Vm::start("browser", &image).unwrap();
    let (browser, up) = tokio::join!(Browser::start(), vm.wait_https(BOOT_CEILING));
    up.unwrap();
    vm.wait_serial(keel_qemu_tests::READY_MARKER, BOOT_CEILING)
        .await
        .unwrap();
    let code = vm.setup_code().expect("setup code on the serial console");
    let base = vm.url("/appliance/");

    // First login: the setup page, with the code read off the serial console.
    browser.open(&base).await;
    browser.screenshot("setup").await;
    browser.fill("setup_code", &code).await;
    browser.fill("password", PASSWORD).await;
    browser.fill("password2", PASSWORD).await;
    browser
        .submit("form[action='/appliance/setup'] button")
        .await;
    let basics = browser.text().await;
    assert!(
        basics.contains("Status › Basics") && basics.contains("Log out"),
        "after setup the admin sees Basics: {basics}"
    );

    // Every page of the navigation opens, shows itself as current, and is saved.
    let mut pages = Vec::new();
    for link in browser.web.find_all(By::Css("nav a")).await.unwrap() {
        let href = link.attr("href").await.unwrap().expect("nav link href");
        pages.push((link.text().await.unwrap(), href));
    }
    assert!(
        pages.len() >= 5,
        "navigation lists the console's pages: {pages:?}"
    );
    browser.screenshot("status-basics").await;
    for (label, href) in &pages {
        browser.open(&vm.url(href)).await;
        let current = browser
            .web
            .find(By::Css("nav [aria-current=page]"))
            .await
            .unwrap_or_else(|e| panic!("{label} ({href}): no current page in nav: {e}"))
            .text()
            .await
            .unwrap();
        assert_eq!(&current, label, "{href} shows itself as the current page");
        browser.screenshot(&slug(label)).await;
    }

    // Networking › IP configuration: one more address on the first interface, then
    // confirmed (a change that is not confirmed reverts by itself).
    browser.open(&vm.url("/appliance/network/ip")).await;
    let field = browser.web.find(By::Id("if0_addresses")).await.unwrap();
    let before = field.prop("value").await.unwrap().unwrap_or_default();
    field
        .send_keys(format!(
            "{}192.0.2.77/24",
            if before.trim().is_empty() { "" } else { "\n" }
        ))
        .await
        .unwrap();
    browser
        .submit("form[action='/appliance/network/ip'] button[type=submit]")
        .await;
    let pending = browser.text().await;
    assert!(
        pending.to_lowercase().contains("confirm"),
        "the change waits for a confirmation: {pending}"
    );
    browser.screenshot("networking-ip-pending").await;
    browser
        .submit("form[action='/appliance/network/confirm'] button")
        .await;
    let (http, _) = log_in(&vm, PASSWORD).await.unwrap();
    let deadline = Instant::now() + PAGE_CEILING;
    loop {
        let (_, net) = json_get(&http, &vm.url("/appliance/api/v1/net/config"))
            .await
            .unwrap();
        if net["confirmed"].to_string().contains("192.0.2.77/24") && net["pending"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "address confirmed: {net}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Security › Certificates: import a certificate and its key from one PEM file.
    let material = tempfile::tempdir().unwrap();
    let pem = test_certificate(material.path());
    browser
        .open(&vm.url("/appliance/security/certificates"))
        .await;
    browser.fill("import-label", "browser import").await;
    browser
        .web
        .find(By::Id("import-files"))
        .await
        .unwrap()
        .send_keys(pem.display().to_string())
        .await
        .unwrap();
    browser
        .submit("form[action='/appliance/security/certificates/import'] button")
        .await;
    let certs = browser.text().await;
    assert!(
        certs.contains("browser import") && certs.contains("browser-import.example"),
        "the imported certificate is listed: {certs}"
    );
    browser.screenshot("security-certificates-imported").await;

    // My account: the admin's own password.
    browser.open(&vm.url("/appliance/account")).await;
    browser.fill("current", PASSWORD).await;
    browser.fill("password", NEW_PASSWORD).await;
    browser.fill("password2", NEW_PASSWORD).await;
    browser
        .submit("form[action='/appliance/account/password'] button")
        .await;
    let page = browser.text().await;
    assert!(page.to_lowercase().contains("password changed"), "{page}");

    // Users: an auditor.
    browser.open(&vm.url("/appliance/users")).await;
    browser.fill("name", AUDITOR).await;
    browser
        .web
        .find(By::Css("#role option[value=auditor]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.fill("password", AUDITOR_PASSWORD).await;
    browser.fill("password2", AUDITOR_PASSWORD).await;
    browser
        .submit("form[action='/appliance/users/add'] button")
        .await;
    let users = browser.text().await;
    assert!(users.contains(AUDITOR), "{users}");
    browser.screenshot("users-with-auditor").await;

    // TOTP: enrol with the secret the page shows, confirmed by a code.
    browser.open(&vm.url("/appliance/account")).await;
    browser
        .submit("form[action='/appliance/account/totp'] button[value=begin]")
        .await;
    let secret = browser
        .web
        .find(By::Id("secret"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .expect("the TOTP secret is shown");
    let secret = base32_decode(&secret);
    let enrolled_step = time_step();
    browser.fill("code", &totp(&secret, enrolled_step)).await;
    browser
        .submit("form[action='/appliance/account/totp'] button[value=confirm]")
        .await;
    let page = browser.text().await;
    assert!(
        page.to_lowercase().contains("recovery"),
        "TOTP on, recovery codes shown once: {page}"
    );
    browser.screenshot("my-account-totp-on").await;
    browser.log_out().await;

    // The auditor sees the console but cannot change anything: the forms an auditor
    // cannot use are gone from Users, and a restart it confirms anyway is refused.
    browser.log_in(&base, AUDITOR, AUDITOR_PASSWORD, None).await;
    browser.open(&vm.url("/appliance/users")).await;
    assert!(
        browser
            .web
            .find_all(By::Css("form[action='/appliance/users/add']"))
            .await
            .unwrap()
            .is_empty(),
        "no Add user form for an auditor"
    );
    browser.open(&base).await;
    browser
        .submit("form[action='/appliance/system/reboot'] button")
        .await;
    browser.submit("#power-confirm form button").await;
    let refused = browser.text().await;
    assert!(
        refused.to_lowercase().contains("auditor"),
        "an auditor's restart is refused and says why: {refused}"
    );
    browser.screenshot("auditor-refused").await;
    browser.open(&base).await;
    browser.log_out().await;

    // The admin logs in with the new password and a fresh TOTP code (the one used to
    // enrol is spent: a replay within its window is refused).
    while time_step() == enrolled_step {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    browser
        .log_in(
            &base,
            "admin",
            NEW_PASSWORD,
            Some(&totp(&secret, time_step())),
        )
        .await;

    // Status › Audit log lists all of it, with user and result.
    browser.open(&vm.url("/appliance/status/audit")).await;
    browser.screenshot("status-audit-log").await;
    let page = browser.text().await;
    for want in ["net.config.apply", "net.config.confirm", AUDITOR, "setup"] {
        assert!(page.contains(want), "audit log page lists {want}: {page}");
    }
    let (http, _) = log_in_totp(&vm, &secret).await;
    let (st, log) = json_get(&http, &vm.url("/appliance/api/v1/audit?limit=500"))
        .await
        .unwrap();
    assert_eq!(st, 200, "{log}");
    let records = log["records"].as_array().expect("records").clone();
    let has = |user: &str, action: &str, result: &str| {
        records.iter().any(|r| {
            r["user"] == user
                && r["action"].as_str().is_some_and(|a| a.contains(action))
                && r["result"].as_str().is_some_and(|x| x.starts_with(result))
        })
    };
    for (user, action, result) in [
        ("admin", "setup", "ok"),
        ("admin", "net.config.apply", "ok"),
        ("admin", "net.config.confirm", "ok"),
        ("admin", "certificates/import", "ok"),
        ("admin", "account/password", "ok"),
        ("admin", "users/add", "ok"),
        ("admin", "account/totp", "ok"),
        (AUDITOR, "login", "ok"),
        (AUDITOR, "system.reboot", "refused"),
    ] {
        assert!(
            has(user, action, result),
            "audit record {user} {action} {result}: {log:#}"
        );
    }
    let text = log.to_string();
    for secret in [PASSWORD, NEW_PASSWORD, AUDITOR_PASSWORD] {
        assert!(!text.contains(secret), "no password in the audit log");
    }

    assert!(
        !browser.source().await.contains("Internal Server Error"),
        "no page failed"
    );
    browser.quit().await;
}
