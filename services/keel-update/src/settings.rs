//! `/data/update/settings.json`: where the feed is and how to reach it (proxy,
//! extra CA). Written atomically, mode 0600 (it holds the proxy password), in
//! keel-update's 0700 directory. The password is never logged and never returned:
//! [`StoredSettings::view`] says only whether one is set.

use std::fmt;
use std::path::Path;

use keel_api::{UpdateSettings, UpdateSettingsRequest};
use reqwest::Url;
use serde::{Deserialize, Serialize};

/// `settings.json`, format 1 (keel-core `format`).
pub const SETTINGS_FILE: keel_core::format::FileFormat =
    keel_core::format::FileFormat::first("update settings");
const MAX_URL: usize = 2048;
const MAX_USER: usize = 256;
/// A CA certificate or two in PEM; a whole bundle of roots is not what this is for.
pub const MAX_CA_PEM: usize = 64 * 1024;

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredSettings {
    #[serde(default)]
    pub feed_url: Option<String>,
    #[serde(default)]
    pub proxy_url: Option<String>,
    #[serde(default)]
    pub proxy_user: Option<String>,
    #[serde(default)]
    pub proxy_password: Option<String>,
    #[serde(default)]
    pub ca_certificate: Option<String>,
}

/// Never prints the password.
impl fmt::Debug for StoredSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSettings")
            .field("feed_url", &self.feed_url)
            .field("proxy_url", &self.proxy_url)
            .field("proxy_user", &self.proxy_user)
            .field(
                "proxy_password",
                &self.proxy_password.as_ref().map(|_| "set"),
            )
            .field("ca_certificate", &self.ca_certificate.is_some())
            .finish()
    }
}

fn blank(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn parse_url(what: &str, text: &str) -> Result<Url, String> {
    if text.len() > MAX_URL {
        return Err(format!("the {what} is longer than {MAX_URL} characters"));
    }
    let url = Url::parse(text).map_err(|e| format!("the {what} {text:?} is not a URL ({e})"))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("the {what} {text:?} names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "the {what} must not carry a user or password; use the proxy user and password \
             fields"
        ));
    }
    Ok(url)
}

/// The feed URL: https only (the feed is signed, but its transport is private too).
pub fn check_feed_url(text: &str) -> Result<Url, String> {
    let url = parse_url("feed URL", text)?;
    if url.scheme() != "https" {
        return Err(format!(
            "the feed URL must start with https:// (got {}://)",
            url.scheme()
        ));
    }
    if url.fragment().is_some() {
        return Err("the feed URL must not have a #fragment".into());
    }
    Ok(url)
}

fn check_proxy_url(text: &str) -> Result<Url, String> {
    let url = parse_url("proxy URL", text)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the proxy URL must start with http:// or https:// (got {}://)",
            url.scheme()
        ));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err("the proxy URL is scheme, host and port only (e.g. http://proxy:3128)".into());
    }
    Ok(url)
}

fn check_user(user: &str) -> Result<(), String> {
    if user.len() > MAX_USER {
        return Err(format!("the proxy user is longer than {MAX_USER} bytes"));
    }
    // Basic auth joins user and password with ':'.
    if user.contains(':') || user.chars().any(char::is_control) {
        return Err("the proxy user must not contain ':' or control characters".into());
    }
    Ok(())
}

fn check_password(password: &str) -> Result<(), String> {
    if password.len() > MAX_USER || password.chars().any(char::is_control) {
        return Err(format!(
            "the proxy password must be at most {MAX_USER} bytes without control characters"
        ));
    }
    Ok(())
}

/// The DER certificates of a PEM text, each one a valid trust anchor.
pub fn ca_certificates(
    pem: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    if pem.len() > MAX_CA_PEM {
        return Err(format!(
            "the CA certificate is larger than {} KiB",
            MAX_CA_PEM / 1024
        ));
    }
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the CA certificate is not valid PEM ({e})"))?;
    if certs.is_empty() {
        return Err("the CA certificate holds no \"-----BEGIN CERTIFICATE-----\" block".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in &certs {
        roots
            .add(c.clone())
            .map_err(|e| format!("the CA certificate cannot be used as a trust anchor ({e})"))?;
    }
    Ok(certs)
}

impl StoredSettings {
    pub fn load(path: &Path) -> StoredSettings {
        SETTINGS_FILE
            .read(path)
            .unwrap_or_else(|e| {
                tracing::error!("update settings: {e}: no settings");
                None
            })
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> Result<(), keel_core::StoreError> {
        if let Some(dir) = path.parent() {
            keel_core::store::ensure_dir(dir, 0o700)?;
        }
        SETTINGS_FILE.write(path, self, 0o600)
    }

    /// The settings a request asks for, validated; `self` is what is stored now
    /// (an absent password keeps it).
    pub fn apply(&self, req: &UpdateSettingsRequest) -> Result<StoredSettings, String> {
        let feed_url = blank(req.feed_url.clone());
        if let Some(u) = &feed_url {
            check_feed_url(u)?;
        }
        let proxy_url = blank(req.proxy_url.clone());
        if let Some(u) = &proxy_url {
            check_proxy_url(u)?;
        }
        let proxy_user = blank(req.proxy_user.clone());
        if let Some(u) = &proxy_user {
            if proxy_url.is_none() {
                return Err("a proxy user needs a proxy URL".into());
            }
            check_user(u)?;
        }
        let proxy_password = match &req.proxy_password {
            None => self.proxy_password.clone(),
            Some(p) if p.is_empty() => None,
            Some(p) => {
                check_password(p)?;
                Some(p.clone())
            }
        };
        // A kept password goes with its user: no user, no password.
        let proxy_password = proxy_user.as_ref().and(proxy_password);
        if req.proxy_password.as_deref().is_some_and(|p| !p.is_empty()) && proxy_user.is_none() {
            return Err("a proxy password needs a proxy user".into());
        }
        let ca_certificate = blank(req.ca_certificate.clone());
        if let Some(pem) = &ca_certificate {
            ca_certificates(pem)?;
        }
        Ok(StoredSettings {
            feed_url,
            proxy_url,
            proxy_user,
            proxy_password,
            ca_certificate: ca_certificate.map(|p| format!("{p}\n")),
        })
    }

    pub fn view(&self) -> UpdateSettings {
        UpdateSettings {
            feed_url: self.feed_url.clone(),
            proxy_url: self.proxy_url.clone(),
            proxy_user: self.proxy_user.clone(),
            proxy_password_set: self.proxy_password.is_some(),
            ca_certificate: self.ca_certificate.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(feed: &str) -> UpdateSettingsRequest {
        UpdateSettingsRequest {
            feed_url: Some(feed.into()),
            ..Default::default()
        }
    }

    #[test]
    fn urls_are_checked() {
        let s = StoredSettings::default();
        assert!(s.apply(&req("https://updates.example/keel/feed")).is_ok());
        let e = s.apply(&req("http://updates.example/feed")).unwrap_err();
        assert!(e.contains("must start with https://"), "{e}");
        let e = s.apply(&req("updates.example/feed")).unwrap_err();
        assert!(e.contains("is not a URL"), "{e}");
        let e = s
            .apply(&req("https://u:p@updates.example/feed"))
            .unwrap_err();
        assert!(e.contains("must not carry a user"), "{e}");
        let mut r = req("https://updates.example/feed");
        r.proxy_url = Some("ftp://proxy:21".into());
        assert!(s.apply(&r).unwrap_err().contains("http:// or https://"));
        r.proxy_url = Some("http://proxy:3128/path".into());
        assert!(s.apply(&r).unwrap_err().contains("host and port only"));
        r.proxy_url = None;
        r.proxy_user = Some("bob".into());
        assert!(s.apply(&r).unwrap_err().contains("needs a proxy URL"));
        r.proxy_url = Some("http://proxy:3128".into());
        r.proxy_user = Some("a:b".into());
        assert!(s.apply(&r).unwrap_err().contains("must not contain ':'"));
        r.ca_certificate = Some("not pem".into());
        r.proxy_user = None;
        assert!(s
            .apply(&r)
            .unwrap_err()
            .contains("no \"-----BEGIN CERTIFICATE"));
    }

    #[test]
    fn password_is_kept_cleared_and_never_shown() {
        let s = StoredSettings::default();
        let mut r = req("https://updates.example/feed");
        r.proxy_url = Some("http://proxy:3128".into());
        r.proxy_user = Some("bob".into());
        r.proxy_password = Some("s3cret".into());
        let s = s.apply(&r).unwrap();
        assert_eq!(s.proxy_password.as_deref(), Some("s3cret"));
        assert!(s.view().proxy_password_set);
        assert!(!format!("{s:?}").contains("s3cret"));
        assert!(!serde_json::to_string(&s.view()).unwrap().contains("s3cret"));
        r.proxy_password = None;
        let s = s.apply(&r).unwrap();
        assert_eq!(
            s.proxy_password.as_deref(),
            Some("s3cret"),
            "absent keeps it"
        );
        r.proxy_password = Some(String::new());
        let s2 = s.apply(&r).unwrap();
        assert_eq!(s2.proxy_password, None, "empty clears it");
        r.proxy_password = None;
        r.proxy_user = None;
        assert_eq!(
            s.apply(&r).unwrap().proxy_password,
            None,
            "no user, no password"
        );
    }
}
