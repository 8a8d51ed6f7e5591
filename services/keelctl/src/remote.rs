//! `keelctl --url https://HOST ...`: a remote appliance through its console's JSON
//! API (`/appliance/api/v1`) with an API token, instead of the local sockets.
//!
//! The appliance's certificate is self-signed until an admin replaces it, so trust
//! is explicit: `--fingerprint SHA256` pins it (what the admin of a fresh box can
//! read off its console), `--ca-cert FILE` trusts a CA. Without either nothing is
//! sent: keelctl fetches the certificate once, without the token, and refuses with
//! its fingerprint and how to pin it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use keel_certs::pinning::FingerprintVerifier;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where the console's API lives under the URL.
const API: &str = "/appliance/api/v1";

#[derive(clap::Args)]
pub struct RemoteArgs {
    /// Drive a remote appliance through its console, e.g. https://192.0.2.10
    /// (default: this box's local sockets).
    #[arg(long, env = "KEEL_URL", global = true)]
    pub url: Option<String>,
    /// API token (My account › API tokens); prefer KEEL_TOKEN, which stays out of
    /// the process list.
    #[arg(long, env = "KEEL_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Trust the console's certificate when it is signed by this CA (PEM).
    #[arg(long, env = "KEEL_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Trust the console's certificate with this SHA-256 fingerprint (hex, colons
    /// allowed; shown on Status › Basics and by `keelctl status` on the box).
    #[arg(
        long,
        env = "KEEL_FINGERPRINT",
        global = true,
        conflicts_with = "ca_cert"
    )]
    pub fingerprint: Option<String>,
}

/// A console reached over HTTPS with a token.
pub struct Remote {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// Colon-separated uppercase pairs, as browsers show fingerprints.
fn colons(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|p| String::from_utf8_lossy(p).to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":")
}

fn client(tls: rustls::ClientConfig) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(15))
        .build()
        .context("building the HTTPS client")
}

fn ca_config(path: &std::path::Path) -> anyhow::Result<rustls::ClientConfig> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.with_context(|| format!("{} is not PEM", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{} holds an unusable certificate", path.display()))?;
    }
    if roots.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Remote {
    /// The remote named by `args`, or `None` without `--url`.
    pub async fn from_args(args: &RemoteArgs) -> anyhow::Result<Option<Remote>> {
        let Some(url) = &args.url else {
            return Ok(None);
        };
        let base = url.trim_end_matches('/').to_owned();
        let base = base
            .strip_suffix("/appliance")
            .map(str::to_owned)
            .unwrap_or(base);
        if !base.starts_with("https://") {
            bail!("--url must start with https:// (the console answers only over HTTPS): {url}");
        }
        let Some(token) = args.token.clone().filter(|t| !t.trim().is_empty()) else {
            bail!(
                "--url needs an API token: set KEEL_TOKEN (or --token); create one on the \
                 console under My account › API tokens"
            );
        };
        let http = match (&args.fingerprint, &args.ca_cert) {
            (Some(fp), _) => client(FingerprintVerifier::pinned(fp).client_config())?,
            (None, Some(ca)) => client(ca_config(ca)?)?,
            (None, None) => {
                // Fetch the certificate without sending the token, to say what to pin.
                let seen = FingerprintVerifier::record_any();
                let probe = client(seen.client_config())?;
                let result = probe.get(format!("{base}{API}/health")).send().await;
                return match seen.seen() {
                    Some(fp) => bail!(
                        "the certificate of {base} is not verified (self-signed?). Its \
                         SHA-256 fingerprint is\n  {}\nCompare it with the one on the \
                         appliance (Status › Basics, or `keelctl status` on its console); \
                         if it matches, pin it with --fingerprint {fp} (or KEEL_FINGERPRINT), \
                         or trust its CA with --ca-cert FILE",
                        colons(&fp)
                    ),
                    None => Err(result
                        .err()
                        .map(anyhow::Error::from)
                        .unwrap_or_else(|| anyhow::anyhow!("no certificate seen")))
                    .with_context(|| format!("connecting to {base}")),
                };
            }
        };
        Ok(Some(Remote {
            http,
            base,
            token: token.trim().to_owned(),
        }))
    }

    /// `METHOD /appliance/api/v1<path>` with the token; the console's refusal
    /// (`{"error": ...}`) becomes the error.
    pub async fn call<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<R> {
        let method = Method::from_bytes(method.as_bytes())?;
        let url = format!("{}{API}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("reading the answer")?;
        if !status.is_success() {
            let message = serde_json::from_slice::<keel_api::ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            if status == StatusCode::UNAUTHORIZED {
                bail!("{url}: {message} ({status})");
            }
            bail!("{message} ({status})");
        }
        // A 204 or an empty 202 carries nothing: read it as JSON null.
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).with_context(|| format!("{url}: unexpected answer"))
    }

    pub async fn get<R: DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        self.call::<(), R>("GET", path, None).await
    }
}

/// The refusal for a command that works on the box itself only.
pub fn local_only(what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`keelctl {what}` works on the appliance itself only (its local sockets); drop --url \
         (and KEEL_URL)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_shown_as_browsers_show_them() {
        assert_eq!(colons("0aff12"), "0A:FF:12");
    }
}
