//! Shared by the integration tests: fixed keys, times and bundle specs.
#![allow(dead_code)]

use std::io::{Cursor, Read};

use keel_bundle::{
    build_bundle_bytes, BundleSpec, Error, Kind, Requirement, SecretKey, Timestamp, TrustedKeys,
    VerifiedPayload, Verifier, Version, VersionRange,
};

pub fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

pub fn trusted(k: &SecretKey) -> TrustedKeys {
    TrustedKeys::new().with(k.public())
}

pub fn t0() -> Timestamp {
    "2026-06-01T00:00:00Z".parse().unwrap()
}

/// A day after `t0()`: inside every default validity period.
pub fn now() -> Timestamp {
    t0().plus(time::Duration::days(1))
}

pub fn v(s: &str) -> Version {
    s.parse().unwrap()
}

pub fn spec(kind: Kind, name: Option<&str>, version: &str) -> BundleSpec {
    BundleSpec {
        product: "keel".into(),
        version: v(version),
        kind,
        name: name.map(str::to_string),
        requires: vec![],
        installs_over: vec![],
        created: t0(),
        expires: t0().plus(time::Duration::days(365)),
    }
}

pub fn req(s: &str) -> Requirement {
    s.parse().unwrap()
}

pub fn range(s: &str) -> VersionRange {
    s.parse().unwrap()
}

/// Deterministic payload bytes (not all equal, so a flipped bit changes the hash).
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

pub fn base_bundle(k: &SecretKey, version: &str, payload_len: usize) -> Vec<u8> {
    build_bundle_bytes(k, &spec(Kind::Base, None, version), &payload(payload_len)).unwrap()
}

/// Verifies a bundle fully (header, signature, validity, payload) at `now`.
pub fn verify_at(
    bytes: &[u8],
    keys: &TrustedKeys,
    now: Timestamp,
) -> Result<VerifiedPayload, Error> {
    Verifier::new(keys, "keel", now)
        .open(Cursor::new(bytes))?
        .payload()
        .drain()
}

pub fn verify(bytes: &[u8], keys: &TrustedKeys) -> Result<VerifiedPayload, Error> {
    verify_at(bytes, keys, now())
}

/// Reads the payload the way a slot writer would (`read` until 0 or error);
/// returns what it got and how it ended.
pub fn stream(bytes: &[u8], keys: &TrustedKeys) -> (Vec<u8>, Result<VerifiedPayload, Error>) {
    let bundle = match Verifier::new(keys, "keel", now()).open(Cursor::new(bytes)) {
        Ok(b) => b,
        Err(e) => return (vec![], Err(e)),
    };
    let mut reader = bundle.payload();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    (got, reader.finish())
}

/// Offset of the first payload byte and the manifest length.
pub fn layout(bytes: &[u8]) -> (usize, usize) {
    let m = u32::from_be_bytes(bytes[10..14].try_into().unwrap()) as usize;
    (14 + m + 2 + 64 + 8, m)
}

/// Signs arbitrary manifest bytes the way the format says (for crafted cases).
pub fn sign_raw(k: &SecretKey, manifest: &[u8], frame_key_id: [u8; 8], payload: &[u8]) -> Vec<u8> {
    let mut msg = b"keel-bundle manifest v1\0".to_vec();
    msg.extend_from_slice(manifest);
    let sig = k.sign(&msg);
    let mut out = b"KEELBNDL".to_vec();
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(manifest.len() as u32).to_be_bytes());
    out.extend_from_slice(manifest);
    out.extend_from_slice(&64u16.to_be_bytes());
    out.extend_from_slice(&sig);
    out.extend_from_slice(&frame_key_id);
    out.extend_from_slice(payload);
    out
}
