//! The signed feed: an index of bundles with its own validity period, so that an
//! appliance can tell a current list from a stale one (a replayed old feed would
//! hide newer fixes).

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::framing::{at_eof, read_signed, verify_signed, write_signed, FEED};
use crate::keys::{KeyId, SecretKey};
use crate::manifest::{check_component, Kind, Manifest, Sha256Digest};
use crate::policy::check_validity;
use crate::timestamp::Timestamp;
use crate::verify::Verifier;
use crate::version::{Requirement, Version, VersionRange};
use crate::{Error, FORMAT_VERSION};

const MAX_ENTRIES: usize = 10_000;

/// One bundle as the feed lists it (a copy of its manifest's fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedEntry {
    /// Bare file name, no directories.
    pub file: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub version: Version,
    pub requires: Vec<Requirement>,
    pub installs_over: Vec<VersionRange>,
    pub size: u64,
    pub sha256: Sha256Digest,
}

impl FeedEntry {
    pub fn from_manifest(file: &str, m: &Manifest) -> Self {
        FeedEntry {
            file: file.to_string(),
            kind: m.kind,
            name: m.name.clone(),
            version: m.version,
            requires: m.requires.clone(),
            installs_over: m.installs_over.clone(),
            size: m.payload_size,
            sha256: m.payload_sha256,
        }
    }

    pub fn component(&self) -> &str {
        match (self.kind, &self.name) {
            (Kind::App, Some(name)) => name,
            _ => "base",
        }
    }

    /// Whether the bundle's verified manifest is the one this entry announced.
    pub fn matches(&self, m: &Manifest) -> bool {
        *self == FeedEntry::from_manifest(&self.file, m)
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| {
            Err(Error::ManifestInvalid(format!(
                "feed entry {:?}: {m}",
                self.file
            )))
        };
        // The appliance joins the name to a download directory or URL.
        let name_ok = !self.file.is_empty()
            && self.file.len() <= 255
            && !self.file.starts_with('.')
            && self
                .file
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'));
        if !name_ok {
            return bad("not a plain file name".into());
        }
        match (self.kind, &self.name) {
            (Kind::Base, None) => {}
            (Kind::App, Some(n)) if n != "base" => {
                check_component(n).map_err(|e| Error::ManifestInvalid(e.to_string()))?
            }
            _ => return bad("name must be given for apps only".into()),
        }
        for r in &self.requires {
            check_component(&r.component).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feed {
    pub format: u16,
    pub product: String,
    pub created: Timestamp,
    pub expires: Timestamp,
    pub key_id: KeyId,
    pub entries: Vec<FeedEntry>,
}

/// What the vendor decides when signing a feed.
#[derive(Debug, Clone)]
pub struct FeedSpec {
    pub product: String,
    pub created: Timestamp,
    pub expires: Timestamp,
    pub entries: Vec<FeedEntry>,
}

impl Feed {
    fn validate(&self) -> Result<(), Error> {
        if self.format != FORMAT_VERSION {
            return Err(Error::UnsupportedFormat(self.format));
        }
        if self.entries.len() > MAX_ENTRIES {
            return Err(Error::ManifestInvalid("feed has too many entries".into()));
        }
        if self.expires <= self.created {
            return Err(Error::ManifestInvalid(
                "feed expires is not after created".into(),
            ));
        }
        self.entries.iter().try_for_each(FeedEntry::validate)
    }
}

/// The signed feed file.
pub fn sign_feed(key: &SecretKey, spec: &FeedSpec) -> Result<Vec<u8>, Error> {
    let feed = Feed {
        format: FORMAT_VERSION,
        product: spec.product.clone(),
        created: spec.created,
        expires: spec.expires,
        key_id: key.public().id(),
        entries: spec.entries.clone(),
    };
    feed.validate()?;
    let body = serde_json::to_vec(&feed).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
    let mut out = Vec::with_capacity(body.len() + 100);
    write_signed(&mut out, &FEED, &body, key)?;
    Ok(out)
}

/// Verifies a feed as [`Verifier::open`] does a bundle: signature first, then
/// parse, product, validity period (a stale feed is refused), and nothing after it.
pub fn verify_feed<R: Read>(verifier: &Verifier, mut reader: R) -> Result<Feed, Error> {
    if verifier.keys.is_empty() {
        return Err(Error::NoTrustedKeys);
    }
    let signed = read_signed(&mut reader, &FEED)?;
    verify_signed(&signed, &FEED, verifier.keys)?;
    if !at_eof(&mut reader)? {
        return Err(Error::TrailingData);
    }
    let feed: Feed =
        serde_json::from_slice(&signed.body).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
    feed.validate()?;
    if feed.key_id != signed.key_id {
        return Err(Error::ManifestInvalid(
            "key id in the feed differs from the signing key".into(),
        ));
    }
    if feed.product != verifier.product {
        return Err(Error::ProductMismatch {
            expected: verifier.product.clone(),
            found: feed.product,
        });
    }
    check_validity(feed.created, feed.expires, verifier.now, verifier.skew)?;
    Ok(feed)
}
