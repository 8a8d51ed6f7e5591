//! Keel update bundles: the signed file format, the one verifier that both the
//! vendor tool and the appliance's update service run, signed feeds, the install
//! planner and download keys for offline appliances.
//!
//! The order of trust is fixed by the API: [`Verifier::open`] checks the Ed25519
//! signature over the exact manifest bytes before it parses them, and the payload
//! is only ever read through [`PayloadReader`], which hashes while it reads and
//! fails (instead of returning the last bytes) if size or SHA-256 differ from the
//! signed manifest. Whether a verified bundle may be installed is a separate
//! question, answered by [`check_installable`].
//!
//! The byte layout is described in `README.md`.

mod build;
mod download_key;
mod feed;
mod framing;
mod keys;
mod manifest;
mod plan;
mod policy;
mod timestamp;
mod verify;
mod version;

pub use build::{build_bundle_bytes, build_bundle_file, BundleSpec};
pub use download_key::{make_download_key, verify_download_key, DownloadKey};
pub use feed::{sign_feed, verify_feed, Feed, FeedEntry, FeedSpec};
pub use framing::{FEED_MAGIC, MAX_FEED_LEN, MAX_MANIFEST_LEN};
pub use keys::{KeyId, KeyPurpose, PublicKey, SecretKey, TrustedKeys};
pub use manifest::{Kind, Manifest, Sha256Digest};
pub use plan::{assess, plan_latest, plan_to, Assessment, Status};
pub use policy::{
    check_fits, check_installable, check_not_downgrade, check_validity, Installed, Rollback,
};
pub use timestamp::Timestamp;
pub use verify::{read_unverified, verify_file, Bundle, PayloadReader, VerifiedPayload, Verifier};
pub use version::{Constraint, Op, Requirement, Version, VersionRange};

/// The format version this build writes and reads (bundles, feeds, download keys).
pub const FORMAT_VERSION: u16 = 1;

/// First bytes of every bundle.
pub const BUNDLE_MAGIC: &[u8; 8] = b"KEELBNDL";

/// Allowed clock difference for "created in the future" (appliance clocks drift).
pub const DEFAULT_SKEW: time::Duration = time::Duration::minutes(5);

/// Everything that can make a bundle, feed or download key unusable. Each refusal
/// has its own variant so that callers (and tests) can tell them apart.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("{path}: {source}")]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] keel_core::StoreError),
    #[error("not a Keel {what} (bad magic)")]
    BadMagic { what: &'static str },
    #[error("unsupported format version {0} (this build reads version {FORMAT_VERSION})")]
    UnsupportedFormat(u16),
    #[error("declared length {len} is outside 1..={max} bytes")]
    ManifestTooLarge { len: u64, max: u64 },
    #[error("truncated: file ends inside the {0}")]
    Truncated(&'static str),
    #[error("bad signature length {0} (Ed25519 signatures are 64 bytes)")]
    BadSignatureLength(u16),
    #[error("no trusted update keys: refusing to verify anything")]
    NoTrustedKeys,
    #[error("signed by unknown key {0}")]
    UnknownKey(KeyId),
    #[error("signature invalid")]
    SignatureInvalid,
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("signature expired at {expires} (now {now})")]
    Expired { expires: Timestamp, now: Timestamp },
    #[error("signature created at {created}, in the future (now {now})")]
    CreatedInFuture { created: Timestamp, now: Timestamp },
    #[error("validity period of {minutes} minutes is longer than the allowed {max_minutes}")]
    LifetimeTooLong { minutes: i64, max_minutes: i64 },
    #[error("made for product {found:?}, expected {expected:?}")]
    ProductMismatch { expected: String, found: String },
    #[error("payload truncated: {got} of the declared {expected} bytes")]
    PayloadTruncated { expected: u64, got: u64 },
    #[error("payload SHA-256 mismatch: the payload is not the one the manifest signs")]
    PayloadHashMismatch,
    #[error("payload read only to byte {read} of {expected}; finish() needs it read to the end")]
    PayloadNotConsumed { read: u64, expected: u64 },
    #[error("trailing data after the end of the signed content (payload longer than declared?)")]
    TrailingData,
    #[error("{component} {bundle} is older than the installed {installed} (downgrade refused)")]
    Downgrade {
        component: String,
        bundle: Version,
        installed: Version,
    },
    #[error("{component} {version} is already installed (replay refused)")]
    Replay { component: String, version: Version },
    #[error("needs {requirement} first (installed: {installed})")]
    Unmet {
        requirement: Requirement,
        installed: String,
    },
    #[error(
        "{component} {bundle} cannot be installed over {installed} (it installs over {ranges})"
    )]
    NotInstallableOver {
        component: String,
        bundle: Version,
        installed: Version,
        ranges: String,
    },
    #[error("payload of {size} bytes does not fit the target slot ({max} bytes)")]
    PayloadTooLarge { size: u64, max: u64 },
    #[error("key file {path}: {reason}")]
    KeyFile {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("download key: {0}")]
    Armor(String),
    #[error("public key of the download key is not the expected one")]
    KeyMismatch,
    #[error("no installation plan: {0}")]
    NoPlan(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
