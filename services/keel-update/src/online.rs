//! Online: the settings, *Check for updates* (fetch the signed feed over HTTPS,
//! through the configured proxy, verify it, assess it against the running
//! version), *Install* of a feed entry (download streamed into the same verified
//! install path as an upload) and the appliance download key.
//!
//! The feed is fetched and verified again for every install: nothing installs
//! from a remembered list, and a feed that went stale meanwhile is refused. The
//! download is never held: the response body is the install's body, and the
//! feed's entry (size, SHA-256, version) must be the bundle's signed manifest
//! before the first byte reaches the slot ([`check_announced`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use keel_api::{
    AvailableEntry, AvailableState, AvailableUpdates, DownloadKeyAnswer, InstallAnswer,
    UpdateSettings, UpdateSettingsRequest,
};
use keel_bundle::{
    assess, make_download_key, plan_latest, verify_download_key, verify_feed, Feed, FeedEntry,
    Installed, Kind, Manifest, Status, Timestamp, TrustedKeys, Verifier, Version, MAX_FEED_LEN,
    MAX_MANIFEST_LEN,
};
use reqwest::Url;

use crate::service::{err, Config, ErrorKind, UpdateError, Updater, PRODUCT};
use crate::settings::{ca_certificates, StoredSettings};

/// Establishing a connection (to the proxy or the server).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Nothing arriving for this long ends a fetch (a stuck proxy).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Redirects followed (https only).
const MAX_REDIRECTS: usize = 5;
/// Framing around a bundle's manifest and payload (magic, lengths, signature).
const BUNDLE_FRAMING: u64 = 4096;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What keel-update keeps for the online part: the settings (from
/// `settings.json`), the last check's result and the work running now.
pub struct Online {
    settings: Mutex<StoredSettings>,
    available: Mutex<Option<AvailableUpdates>>,
    work: AtomicUsize,
}

/// Counts online work (a check, a download, a chain step) for the idle exit.
pub(crate) struct Working<'a>(&'a AtomicUsize);

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Online {
    pub fn load(cfg: &Config) -> Online {
        Online {
            settings: Mutex::new(StoredSettings::load(&cfg.settings_file())),
            available: Mutex::new(None),
            work: AtomicUsize::new(0),
        }
    }

    pub fn working(&self) -> bool {
        self.work.load(Ordering::SeqCst) > 0
    }

    pub(crate) fn begin(&self) -> Working<'_> {
        self.work.fetch_add(1, Ordering::SeqCst);
        Working(&self.work)
    }
}

/// An error and its sources in one line (reqwest's own message is only the top).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

fn network(what: &str, e: &reqwest::Error) -> UpdateError {
    err(ErrorKind::Network, format!("{what}: {}", chain(e)))
}

/// The feed's entry must be the bundle's signed manifest: a feed that lies about
/// a size or hash (or a server that sends another bundle) is refused before
/// anything is written.
pub fn check_announced(e: &FeedEntry, m: &Manifest) -> Result<(), UpdateError> {
    if e.matches(m) {
        return Ok(());
    }
    Err(err(
        ErrorKind::BadBundle,
        format!(
            "bundle refused: {} is not the bundle the feed announced (feed: {} {}, payload {} \
             bytes, sha256 {}; signed manifest: {} {}, payload {} bytes, sha256 {}); nothing \
             was written",
            e.file,
            e.component(),
            e.version,
            e.size,
            e.sha256,
            m.component(),
            m.version,
            m.payload_size,
            m.payload_sha256
        ),
    ))
}

fn state_of(s: &Status<'_>) -> (AvailableState, Option<String>, Vec<String>) {
    match s {
        Status::Fits => (AvailableState::Installable, None, vec![]),
        Status::Installed => (AvailableState::Installed, None, vec![]),
        Status::Older { .. } => (AvailableState::Older, Some(s.to_string()), vec![]),
        Status::NeedsFirst { steps, reason } => (
            AvailableState::NeedsFirst,
            Some(reason.clone()),
            steps.iter().map(|e| e.version.to_string()).collect(),
        ),
        Status::Blocked { reason } => (AvailableState::Blocked, Some(reason.clone()), vec![]),
    }
}

/// The verified feed judged against the running base version and the installed
/// apps (an app whose base requirement is not met yet says "needs base X first").
pub fn available(feed: &Feed, url: &Url, installed: &Installed) -> AvailableUpdates {
    let running = installed
        .get("base")
        .map(|v| v.to_string())
        .unwrap_or_default();
    let entries = assess(installed, &feed.entries)
        .iter()
        .map(|a| {
            let (state, reason, steps) = state_of(&a.status);
            AvailableEntry {
                file: a.entry.file.clone(),
                component: a.entry.component().to_string(),
                version: a.entry.version.to_string(),
                size: a.entry.size,
                sha256: a.entry.sha256.to_string(),
                state,
                reason,
                steps,
            }
        })
        .collect();
    // Install all in order runs the base chain (one reboot per step); apps are
    // installed one by one.
    let plan = plan_latest(installed, &feed.entries, &[])
        .map(|p| {
            p.iter()
                .filter(|e| e.kind == Kind::Base)
                .map(|e| e.version.to_string())
                .collect()
        })
        .unwrap_or_default();
    AvailableUpdates {
        checked_at: Timestamp::now().to_string(),
        feed_url: url.to_string(),
        feed_created: feed.created.to_string(),
        feed_expires: feed.expires.to_string(),
        installed: running,
        entries,
        plan,
    }
}

/// The HTTPS client of the settings: the image's roots plus the extra CA, ring,
/// the proxy (CONNECT, basic auth) or none at all (the environment's proxy
/// variables are ignored: only the settings decide).
fn http_client(cfg: &Config, s: &StoredSettings) -> Result<reqwest::Client, UpdateError> {
    let refused = |m: String| err(ErrorKind::Refused, m);
    let mut roots = rustls::RootCertStore::empty();
    match std::fs::read(&cfg.ca_bundle) {
        Ok(pem) => {
            let mut rd = pem.as_slice();
            let certs: Vec<_> = rustls_pemfile::certs(&mut rd).flatten().collect();
            let (added, _) = roots.add_parsable_certificates(certs);
            tracing::debug!("{} CA roots from {}", added, cfg.ca_bundle.display());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("{}: {e}", cfg.ca_bundle.display()),
    }
    if let Some(pem) = &s.ca_certificate {
        for c in ca_certificates(pem).map_err(refused)? {
            roots
                .add(c)
                .map_err(|e| refused(format!("the extra CA certificate: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(refused(format!(
            "no trusted CA certificates: {} has none and the settings give no extra CA",
            cfg.ca_bundle.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(ErrorKind::Failed, format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let redirects = reqwest::redirect::Policy::custom(|a| {
        if a.url().scheme() != "https" {
            a.error("redirected to a URL that is not https")
        } else if a.previous().len() >= MAX_REDIRECTS {
            a.error("too many redirects")
        } else {
            a.follow()
        }
    });
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .redirect(redirects)
        .user_agent(concat!("keel-update/", env!("CARGO_PKG_VERSION")));
    b = match &s.proxy_url {
        Some(url) => {
            let mut p = reqwest::Proxy::all(url.as_str())
                .map_err(|e| refused(format!("the proxy URL: {}", chain(&e))))?;
            if let Some(user) = &s.proxy_user {
                p = p.basic_auth(user, s.proxy_password.as_deref().unwrap_or(""));
            }
            b.proxy(p)
        }
        None => b.no_proxy(),
    };
    b.build()
        .map_err(|e| err(ErrorKind::Failed, format!("HTTPS client: {}", chain(&e))))
}

/// Says through which proxy a fetch went, for its errors.
fn via(s: &StoredSettings) -> String {
    match &s.proxy_url {
        Some(p) => format!(" through the proxy {p}"),
        None => String::new(),
    }
}

/// A fetched and verified feed with what it takes to download from it.
struct Fetched {
    feed: Feed,
    url: Url,
    client: reqwest::Client,
    via: String,
    running: Version,
}

impl Updater {
    pub fn settings(&self) -> UpdateSettings {
        lock(&self.online().settings).view()
    }

    /// Validates and stores new settings (nothing changes on an error).
    pub fn put_settings(&self, req: &UpdateSettingsRequest) -> Result<UpdateSettings, UpdateError> {
        let mut cur = lock(&self.online().settings);
        let new = cur
            .apply(req)
            .map_err(|m| err(ErrorKind::Refused, format!("settings refused: {m}")))?;
        new.save(&self.config().settings_file()).map_err(|e| {
            err(
                ErrorKind::Failed,
                format!("saving the update settings: {e}"),
            )
        })?;
        tracing::info!(settings = ?new, "update settings changed");
        *cur = new;
        Ok(cur.view())
    }

    /// The last check's result, if there was one since keel-update started.
    pub fn last_available(&self) -> Option<AvailableUpdates> {
        lock(&self.online().available).clone()
    }

    fn running_base(&self) -> Result<Version, UpdateError> {
        let v = self.running_version().ok_or_else(|| {
            err(
                ErrorKind::Refused,
                "the running version is unknown (no VERSION_ID= in os-release)",
            )
        })?;
        v.parse().map_err(|e| {
            err(
                ErrorKind::Refused,
                format!("the running version {v:?} is not x.y.z ({e})"),
            )
        })
    }

    /// Fetches the feed (at most [`MAX_FEED_LEN`] bytes) and verifies it.
    async fn fetch_feed(&self, what: &str) -> Result<Fetched, UpdateError> {
        if let Some(w) = self.clock_gate_for(what).await? {
            tracing::warn!("clock gate: {w}");
        }
        let running = self.running_base()?;
        let settings = lock(&self.online().settings).clone();
        let url = settings.feed_url.as_deref().ok_or_else(|| {
            err(
                ErrorKind::Refused,
                "no feed URL is set (Support › Updates › Online updates)",
            )
        })?;
        let url = crate::settings::check_feed_url(url).map_err(|m| err(ErrorKind::Refused, m))?;
        let keys = TrustedKeys::load_dir(&self.config().keys_dir)
            .ok()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                err(
                    ErrorKind::Refused,
                    format!(
                        "no trusted update keys in {}: every feed is refused",
                        self.config().keys_dir.display()
                    ),
                )
            })?;
        let client = http_client(self.config(), &settings)?;
        let via = via(&settings);
        let what_url = format!("fetching the feed {url}{via}");
        let mut resp = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| network(&what_url, &e))?;
        if !resp.status().is_success() {
            return Err(err(
                ErrorKind::Network,
                format!("{what_url}: the server answered {}", resp.status()),
            ));
        }
        let max = u64::from(MAX_FEED_LEN) + 1024;
        if resp.content_length().is_some_and(|n| n > max) {
            return Err(err(
                ErrorKind::Refused,
                format!("feed refused: {url} is larger than a feed can be ({max} bytes)"),
            ));
        }
        let mut bytes = Vec::new();
        while let Some(c) = resp.chunk().await.map_err(|e| network(&what_url, &e))? {
            if (bytes.len() + c.len()) as u64 > max {
                return Err(err(
                    ErrorKind::Refused,
                    format!("feed refused: {url} is larger than a feed can be ({max} bytes)"),
                ));
            }
            bytes.extend_from_slice(&c);
        }
        let feed = verify_feed(
            &Verifier::new(&keys, PRODUCT, Timestamp::now()),
            bytes.as_slice(),
        )
        .map_err(|e| {
            let kind = match e {
                keel_bundle::Error::Io(_) => ErrorKind::Failed,
                _ => ErrorKind::Refused,
            };
            err(kind, format!("feed refused ({url}): {e}"))
        })?;
        Ok(Fetched {
            feed,
            url,
            client,
            via,
            running,
        })
    }

    /// *Check for updates*: the verified feed against the running version.
    pub async fn check(self: &Arc<Self>) -> Result<AvailableUpdates, UpdateError> {
        let _work = self.online().begin();
        let f = self.fetch_feed("check for updates").await?;
        let a = available(&f.feed, &f.url, &self.installed_components(f.running));
        tracing::info!(
            entries = a.entries.len(),
            plan = ?a.plan,
            "checked {} (feed expires {})",
            f.url,
            a.feed_expires
        );
        *lock(&self.online().available) = Some(a.clone());
        Ok(a)
    }

    /// Downloads and installs base `version` from the feed.
    pub async fn install_online(
        self: &Arc<Self>,
        version: &str,
        reboot: bool,
    ) -> Result<InstallAnswer, UpdateError> {
        self.install_from_feed(version, None, reboot).await
    }

    /// Downloads and installs base (or app `app`) `version` from the feed; it must
    /// be installable over what is installed now.
    pub async fn install_from_feed(
        self: &Arc<Self>,
        version: &str,
        app: Option<&str>,
        reboot: bool,
    ) -> Result<InstallAnswer, UpdateError> {
        let _work = self.online().begin();
        if self.installing() {
            return Err(err(
                ErrorKind::Busy,
                "another install is running; try again when it has finished",
            ));
        }
        let wanted: Version = version.trim().parse().map_err(|e| {
            err(
                ErrorKind::BadRequest,
                format!("version {version:?} is not x.y.z ({e})"),
            )
        })?;
        let what = app.map_or_else(|| "Keel".to_string(), |a| format!("app {a}"));
        let f = self.fetch_feed("install").await?;
        let a = available(&f.feed, &f.url, &self.installed_components(f.running));
        *lock(&self.online().available) = Some(a.clone());
        let idx = f
            .feed
            .entries
            .iter()
            .position(|e| e.component() == app.unwrap_or("base") && e.version == wanted)
            .ok_or_else(|| {
                err(
                    ErrorKind::Refused,
                    format!("the feed lists no {what} {wanted}"),
                )
            })?;
        let entry = f.feed.entries[idx].clone();
        let judged = a
            .entries
            .iter()
            .find(|e| e.file == entry.file && e.version == entry.version.to_string());
        if let Some(j) = judged.filter(|j| j.state != AvailableState::Installable) {
            let why = j.reason.clone().unwrap_or_else(|| match j.state {
                AvailableState::Installed => "it is the running version".into(),
                _ => "it does not fit".into(),
            });
            return Err(err(
                ErrorKind::Refused,
                format!("{what} {wanted} cannot be installed now: {why}"),
            ));
        }
        self.download_install(&f, &entry, reboot).await
    }

    /// Streams the entry's bundle from next to the feed into the install.
    async fn download_install(
        self: &Arc<Self>,
        f: &Fetched,
        entry: &FeedEntry,
        reboot: bool,
    ) -> Result<InstallAnswer, UpdateError> {
        let url = f.url.join(&entry.file).map_err(|e| {
            err(
                ErrorKind::Refused,
                format!("bundle URL for {:?}: {e}", entry.file),
            )
        })?;
        let what = format!("downloading {url}{}", f.via);
        tracing::info!("{what}");
        let resp = f
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| network(&what, &e))?;
        if !resp.status().is_success() {
            return Err(err(
                ErrorKind::Network,
                format!("{what}: the server answered {}", resp.status()),
            ));
        }
        // The whole file is the signed manifest (bounded), the payload the feed
        // names and the framing: anything longer is not that bundle.
        let max = entry.size + u64::from(MAX_MANIFEST_LEN) + BUNDLE_FRAMING;
        let len = resp.content_length();
        if let Some(n) = len.filter(|&n| n > max) {
            return Err(err(
                ErrorKind::BadBundle,
                format!(
                    "bundle refused: the server sends {n} bytes for {}, more than a bundle with \
                     the feed's {}-byte payload can be; nothing was written",
                    entry.file, entry.size
                ),
            ));
        }
        let mut seen = 0u64;
        let broke = what.clone();
        let stream = resp.bytes_stream().map(move |c| match c {
            Ok(b) => {
                seen += b.len() as u64;
                if seen > max {
                    Err(std::io::Error::other(format!(
                        "the server sent more than the {max} bytes the bundle can be"
                    )))
                } else {
                    Ok::<Bytes, std::io::Error>(b)
                }
            }
            Err(e) => Err(std::io::Error::other(format!(
                "{broke} broke off: {}",
                chain(&e)
            ))),
        });
        self.install_with(
            Body::from_stream(stream),
            len,
            reboot,
            Some(entry.clone()),
            "download",
        )
        .await
    }

    /// Fetches the feed and installs the given step (used by the chain).
    pub(crate) async fn install_step(
        self: &Arc<Self>,
        version: &str,
    ) -> Result<InstallAnswer, UpdateError> {
        self.install_online(version, true).await
    }

    /// The chain *Install all in order* would run now, from a fresh check.
    pub(crate) async fn plan_now(self: &Arc<Self>) -> Result<Vec<String>, UpdateError> {
        let f = self.fetch_feed("install all").await?;
        let a = available(&f.feed, &f.url, &self.installed_components(f.running));
        *lock(&self.online().available) = Some(a.clone());
        Ok(a.plan)
    }

    /// The signed download key of this appliance (its identity key is made on
    /// first need), valid 25 minutes.
    pub async fn download_key(&self) -> Result<DownloadKeyAnswer, UpdateError> {
        if let Some(w) = self.clock_gate_for("download key").await? {
            tracing::warn!("clock gate: {w}");
        }
        let running = self.running_base()?;
        let key = crate::identity::load_or_create(&self.config().identity_file()).map_err(|e| {
            err(
                ErrorKind::Failed,
                format!("the appliance identity key: {e}"),
            )
        })?;
        let id = crate::identity::appliance_id(&key);
        let installed = self.installed_components(running);
        let text = make_download_key(&key, &id, &installed, Timestamp::now())
            .map_err(|e| err(ErrorKind::Failed, format!("making the download key: {e}")))?;
        // Read back as the vendor will: what it says is what is shown.
        let dk = verify_download_key(&text, Timestamp::now(), Some(&key.public()))
            .map_err(|e| err(ErrorKind::Failed, format!("the download key made: {e}")))?;
        tracing::info!(appliance = id, "download key made (expires {})", dk.expires);
        Ok(DownloadKeyAnswer {
            text,
            appliance_id: dk.appliance_id,
            installed: dk
                .installed
                .iter()
                .map(|(c, v)| format!("{c} {v}"))
                .collect(),
            created: dk.created.to_string(),
            expires: dk.expires.to_string(),
        })
    }
}
