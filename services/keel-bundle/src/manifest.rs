//! The manifest: what a bundle is, what it needs, and the payload it fixes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::keys::KeyId;
use crate::timestamp::Timestamp;
use crate::version::{Requirement, Version, VersionRange};
use crate::{Error, FORMAT_VERSION};

/// Caps on list lengths: nothing real comes near them; they keep a signed but
/// silly manifest from making the planner slow.
const MAX_REQUIRES: usize = 64;
const MAX_RANGES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The root file system image (A/B slot).
    Base,
    /// An application, named by `name`.
    App,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Base => "base",
            Kind::App => "app",
        })
    }
}

impl FromStr for Kind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "base" => Ok(Kind::Base),
            "app" => Ok(Kind::App),
            _ => Err(Error::Invalid(format!("kind {s:?}: expected base or app"))),
        }
    }
}

/// A SHA-256 digest; lowercase hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl FromStr for Sha256Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut d = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(Error::Invalid(
                "sha256 is not 64 lowercase hex digits".into(),
            ));
        }
        hex::decode_to_slice(s, &mut d).map_err(|_| Error::Invalid("sha256 is not hex".into()))?;
        Ok(Sha256Digest(d))
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The signed description of a bundle. Unknown fields are refused: a field this
/// build does not understand might be one it should have obeyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u16,
    pub product: String,
    pub version: Version,
    pub kind: Kind,
    /// The app's name; absent for `base`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Other components and the versions they must have before this installs.
    pub requires: Vec<Requirement>,
    /// Versions of this component it may replace: any of the ranges. Empty: any
    /// (older) version. Not consulted for a first install of an app.
    pub installs_over: Vec<VersionRange>,
    pub payload_size: u64,
    pub payload_sha256: Sha256Digest,
    /// Validity of the signature.
    pub created: Timestamp,
    pub expires: Timestamp,
    pub key_id: KeyId,
}

/// Component names: `base`, or an app name (lowercase letters, digits, `-`; it
/// ends up in paths and messages on the appliance).
pub(crate) fn check_component(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "component name {:?}: expected lowercase letters, digits and '-' (at most 63)",
            name.chars().take(70).collect::<String>()
        )))
    }
}

impl Manifest {
    /// Parses and checks manifest JSON. This does NOT verify anything: the
    /// verifier calls it only on bytes whose signature it has checked.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// The canonical bytes that get signed: compact JSON, fields in declaration order.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        self.validate()?;
        serde_json::to_vec(self).map_err(|e| Error::ManifestInvalid(e.to_string()))
    }

    /// `base`, or the app's name.
    pub fn component(&self) -> &str {
        match (self.kind, &self.name) {
            (Kind::App, Some(name)) => name,
            _ => "base",
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::ManifestInvalid(m));
        if self.format != FORMAT_VERSION {
            return Err(Error::UnsupportedFormat(self.format));
        }
        if check_component(&self.product).is_err() {
            return bad(format!("product {:?} is not a valid name", self.product));
        }
        match (self.kind, &self.name) {
            (Kind::Base, None) => {}
            (Kind::Base, Some(_)) => return bad("a base bundle has no name".into()),
            (Kind::App, None) => return bad("an app bundle needs a name".into()),
            (Kind::App, Some(n)) => {
                check_component(n).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
                if n == "base" {
                    return bad("an app cannot be called \"base\"".into());
                }
            }
        }
        if self.requires.len() > MAX_REQUIRES || self.installs_over.len() > MAX_RANGES {
            return bad("too many requirements or ranges".into());
        }
        for r in &self.requires {
            check_component(&r.component).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
            if r.component == self.component() {
                return bad(format!("requires itself ({r}); use installs_over"));
            }
        }
        if self.installs_over.iter().any(|r| r.0.len() > MAX_RANGES) {
            return bad("range with too many constraints".into());
        }
        if self.payload_size == 0 {
            return bad("payload is empty".into());
        }
        if self.expires <= self.created {
            return bad("expires is not after created".into());
        }
        Ok(())
    }
}
