//! The console end to end in headless Chromium (Debian's chromium + chromedriver over
//! WebDriver) against one booted image, the way an admin clicks through it: first
//! login with the setup code from the serial console, every page of the navigation
//! (a screenshot of each under build/screenshots/ for review), an address added and
//! confirmed, a certificate imported from a file. No JavaScript is needed for any of
//! it: every step is a plain form.
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

    /// Clicks the submit button of the form that holds the field or button `css`.
    async fn submit(&self, css: &str) {
        self.web
            .find(By::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
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

    assert!(
        !browser.source().await.contains("Internal Server Error"),
        "no page failed"
    );
    browser.quit().await;
}
