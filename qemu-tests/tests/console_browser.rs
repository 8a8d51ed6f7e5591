//! The console end to end in headless Chromium (Debian's chromium + chromedriver over
//! WebDriver) against one booted image, the way an admin clicks through it: first
//! login with the setup code from the serial console, every page of the navigation
//! (a screenshot of each under build/screenshots/ for review), an address added and
//! confirmed, a certificate imported from a file, the admin's password changed, an
//! auditor added who can see but not change, TOTP enrolled and used to log in, and
//! the audit log listing all of it — written by the unprivileged console into
//! /data/audit on the real image. No JavaScript is needed for any of it: every step
//! is a plain form. On the same boot (no VM of their own): the example Ansible
//! playbook run with an API token against the forwarded port, TLS verified with a
//! test CA; and every state-changing operation of the OpenAPI document refused
//! without credentials.
//!
//! Chromium resolves names by itself (content autofill, updates) unless told not to:
//! every run passes the resolver rules of NOTES-env and opens the console by IP
//! literal, so nothing leaves the machine.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_qemu_tests::{
    ca_and_leaf, cert_file, image_or_skip, json_get, json_post, log_in, openssl, workspace_root,
    CaKey, Vm, BOOT_CEILING,
};
use serde_json::{json, Value};
use thirtyfour::prelude::*;

const PASSWORD: &str = "browser console passphrase";
/// The admin's password after the change on My account.
const NEW_PASSWORD: &str = "changed in the browser 2026";
const AUDITOR: &str = "auditor1";
const AUDITOR_PASSWORD: &str = "reads but never writes";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The address QEMU's user network gives the guest: connections forwarded from the
/// host arrive there, so the console picks the certificate assigned to it.
const GUEST_IP: &str = "10.0.2.15";
/// What the example playbook sets (documentation addresses: QEMU's `restrict=on`
/// user network drops the guest's NTP queries to them).
const PLAYBOOK_NTP: [&str; 2] = ["192.0.2.123", "198.51.100.7"];
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

/// Runs examples/ansible/keel-ntp.yml, unchanged, with Debian's ansible-playbook
/// against `url` (the VM's forwarded console port), the token and the CA that
/// signed the served certificate as the playbook's documented inputs. Returns
/// whether it succeeded and its output.
async fn run_playbook(dir: &Path, url: &str, token: &str, ca: &Path) -> (bool, String) {
    let inventory = dir.join("inventory.ini");
    std::fs::write(&inventory, format!("[keel]\nkeel-vm keel_url={url}\n")).unwrap();
    let extra = json!({"keel_ntp_servers": PLAYBOOK_NTP, "keel_confirm_seconds": 300}).to_string();
    let mut cmd = Command::new("ansible-playbook");
    cmd.arg("-i")
        .arg(&inventory)
        .arg("-e")
        .arg(extra)
        .arg(workspace_root().join("examples/ansible/keel-ntp.yml"))
        .env("KEEL_TOKEN", token)
        .env("KEEL_CA_CERT", ca)
        // Ansible's own state stays in the test's directory.
        .env("HOME", dir)
        .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
        .env("ANSIBLE_NOCOLOR", "1")
        // The VM is on loopback: never through a proxy the host may have set.
        .env("no_proxy", "127.0.0.1")
        .env("NO_PROXY", "127.0.0.1");
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("ansible-playbook"))
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The smallest body `schema` accepts: its required fields, each the simplest value
/// of its type (an enum's or alternative's first). It passes a handler's parsing,
/// so what refuses it is the credential check, not a malformed body.
fn example_body(schema: &Value, doc: &Value) -> Value {
    if let Some(name) = schema["$ref"].as_str().and_then(|r| r.rsplit('/').next()) {
        return example_body(&doc["components"]["schemas"][name], doc);
    }
    for alternatives in ["oneOf", "anyOf", "allOf"] {
        if let Some(first) = schema[alternatives].get(0) {
            return example_body(first, doc);
        }
    }
    if let Some(first) = schema["enum"].get(0) {
        return first.clone();
    }
    let ty = match &schema["type"] {
        Value::Array(types) => types.iter().find(|t| *t != "null").cloned(),
        t => Some(t.clone()),
    };
    match ty.as_ref().and_then(Value::as_str).unwrap_or("object") {
        "object" => Value::Object(
            schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|k| (k.to_owned(), example_body(&schema["properties"][k], doc)))
                .collect(),
        ),
        "array" => json!([]),
        "string" => json!("x"),
        "integer" | "number" => json!(schema["minimum"].as_u64().unwrap_or(1).max(1)),
        "boolean" => json!(false),
        _ => Value::Null,
    }
}

/// Every state-changing operation of the console's OpenAPI document, sent once
/// without any credentials (a well-formed body, path parameters `x`): each must be
/// refused, 401 for the JSON API, 303 back to the login page for the `forms` of
/// the HTML console (see services/keel-console/src/openapi.rs). The public ones
/// (no `security`) are exactly login and setup. `base` is the console's
/// `https://host:port`; returns how many were sent.
async fn unauthenticated_sweep(anonymous: &reqwest::Client, base: &str, doc: &Value) -> usize {
    let (mut sent, mut public, mut wrong) = (0, Vec::new(), Vec::new());
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            if method == "get" || method == "head" {
                continue;
            }
            let name = format!("{} {path}", method.to_uppercase());
            if op["security"].is_null() {
                public.push(name);
                continue;
            }
            let url = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "x" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            let url = format!("{base}{url}");
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let form = op["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&json!("forms")));
            let req = anonymous.request(method, &url);
            let req = if form {
                req.header("content-type", "application/x-www-form-urlencoded")
                    .body("")
            } else {
                let schema = &op["requestBody"]["content"]["application/json"]["schema"];
                req.json(&if schema.is_null() {
                    json!({})
                } else {
                    example_body(schema, doc)
                })
            };
            let resp = req.send().await.unwrap_or_else(|e| panic!("{name}: {e}"));
            sent += 1;
            let status = resp.status().as_u16();
            let location = resp
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let refused = if form {
                status == 303 && location == "/appliance/"
            } else {
                status == 401
            };
            if !refused {
                wrong.push(format!("{name}: {status} {location}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "refused without credentials ({sent} sent): {wrong:#?}"
    );
    public.sort();
    assert_eq!(
        public,
        [
            "POST /appliance/api/v1/login",
            "POST /appliance/api/v1/setup",
            "POST /appliance/login",
            "POST /appliance/setup",
        ],
        "the only state-changing operations open to anyone"
    );
    sent
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
    if Command::new("ansible-playbook")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("skipped: ansible-playbook missing (scripts/deps.sh installs ansible-core)");
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
    // Said, not asserted: a browser that resends the form after a dropped
    // connection is answered "nothing waiting"; the API below is the judge.
    let answer = browser.text().await;
    if !answer.contains("The change is confirmed and saved.") {
        eprintln!("the confirmation's page: {answer}");
    }
    let (http, csrf) = log_in(&vm, PASSWORD).await.unwrap();
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

    // Automation: the example Ansible playbook with an API token, TLS verified. The
    // host reaches the VM as 127.0.0.1, which the built-in certificate never names
    // (it leaves out loopback), so a test CA signs one for 127.0.0.1, assigned to the
    // guest address the forwarded connections arrive on; the playbook trusts that CA.
    let automation = tempfile::tempdir().unwrap();
    let auto = automation.path();
    ca_and_leaf(auto, "IP:127.0.0.1", CaKey::P256);
    let api = |path: &str| vm.url(&format!("/appliance/api/v1{path}"));
    let (st, entry) = json_post(
        &http,
        &api("/certs/import"),
        serde_json::json!({
            "label": "automation",
            "files": [cert_file(auto, "leaf.crt"), cert_file(auto, "leaf.key"), cert_file(auto, "ca.crt")],
        }),
        Some(&csrf),
    )
    .await
    .unwrap();
    assert_eq!(st, 201, "{entry}");
    let id = entry["id"].as_str().unwrap();
    let (st, body) = json_post(
        &http,
        &api(&format!("/certs/{id}/assign")),
        serde_json::json!({"ips": [GUEST_IP]}),
        Some(&csrf),
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "{body}");
    let (st, created) = json_post(
        &http,
        &api("/tokens"),
        serde_json::json!({"name": "ansible", "expires_in_days": 1}),
        Some(&csrf),
    )
    .await
    .unwrap();
    assert_eq!(st, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    let console = vm.url("");
    let ca = auto.join("ca.crt");
    let t = Instant::now();
    let (ok, out) = run_playbook(auto, &console, &token, &ca).await;
    eprintln!("playbook, first run: {:?}", t.elapsed());
    assert!(ok, "the playbook against the VM: {out}");
    assert!(out.contains("Keel "), "status read: {out}");
    assert!(
        out.contains("changed=1") && out.contains("failed=0"),
        "{out}"
    );
    let (st, net) = json_get(&http, &api("/net/config")).await.unwrap();
    assert_eq!(st, 200, "{net}");
    assert_eq!(
        net["confirmed"]["ntp_servers"],
        serde_json::json!(PLAYBOOK_NTP),
        "the playbook's servers, confirmed: {net}"
    );
    assert!(net["pending"].is_null(), "nothing left pending: {net}");
    // Already so: the second run changes nothing.
    let (ok, out) = run_playbook(auto, &console, &token, &ca).await;
    assert!(ok && out.contains("changed=0"), "second run: {out}");

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
    let has = |user: &str, via: &str, action: &str, result: &str| {
        records.iter().any(|r| {
            r["user"] == user
                && r["via"] == via
                && r["action"].as_str().is_some_and(|a| a.contains(action))
                && r["result"].as_str().is_some_and(|x| x.starts_with(result))
        })
    };
    for (user, via, action, result) in [
        ("admin", "console", "setup", "ok"),
        ("admin", "console", "net.config.apply", "ok"),
        ("admin", "console", "net.config.confirm", "ok"),
        ("admin", "api", "/certs/{id}/assign", "ok"),
        ("admin", "api", "/tokens", "ok"),
        // The playbook's change and confirmation, made with the token.
        ("admin", "token", "net.config.apply", "ok"),
        ("admin", "token", "net.config.confirm", "ok"),
        ("admin", "console", "certificates/import", "ok"),
        ("admin", "console", "account/password", "ok"),
        ("admin", "console", "users/add", "ok"),
        ("admin", "console", "account/totp", "ok"),
        (AUDITOR, "console", "login", "ok"),
        (AUDITOR, "console", "system.reboot", "refused"),
    ] {
        // The message lists the records in one line each: the whole log is long.
        assert!(
            has(user, via, action, result),
            "audit record {user} via {via} {action} {result}:\n{}",
            records
                .iter()
                .map(|r| format!(
                    "{} {} {} {} {} {}",
                    r["ts"], r["service"], r["user"], r["via"], r["action"], r["result"]
                ))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let text = log.to_string();
    for secret in [PASSWORD, NEW_PASSWORD, AUDITOR_PASSWORD, token.as_str()] {
        assert!(
            !text.contains(secret),
            "no password or token in the audit log"
        );
    }

    // The OpenAPI document lists every route: each state-changing one is refused
    // without credentials, and the audit log records each attempt as refused.
    let (st, doc) = json_get(&http, &vm.url("/appliance/api/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(st, 200, "{doc}");
    let t = Instant::now();
    let (anonymous, _) = vm.client();
    let sent = unauthenticated_sweep(&anonymous, &vm.url(""), &doc).await;
    eprintln!(
        "{sent} operations refused without credentials in {:?}",
        t.elapsed()
    );
    assert!(
        sent > 40,
        "the document lists the console's operations: {sent}"
    );
    let (st, log) = json_get(
        &http,
        &vm.url(&format!("/appliance/api/v1/audit?limit={sent}")),
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "{log}");
    let newest = log["records"].as_array().expect("records");
    assert_eq!(newest.len(), sent, "{log:#}");
    for r in newest {
        assert!(
            r["user"] == "anonymous"
                && r["result"]
                    .as_str()
                    .is_some_and(|x| x.starts_with("refused")),
            "every attempt without credentials recorded as refused: {r}"
        );
    }

    assert!(
        !browser.source().await.contains("Internal Server Error"),
        "no page failed"
    );
    browser.quit().await;
}
