//! Download keys: the signed block an offline appliance hands to the vendor.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;
use keel_bundle::{make_download_key, verify_download_key, Error, Installed, SecretKey};

fn installed() -> Installed {
    Installed::new()
        .with("base", v("0.1.0"))
        .with("vpn", v("1.2.0"))
}

fn block(k: &SecretKey) -> String {
    make_download_key(k, "KEEL-0042", &installed(), t0()).unwrap()
}

/// The bytes inside the armor.
fn raw(text: &str) -> Vec<u8> {
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    B64.decode(b64).unwrap()
}

fn armor(raw: &[u8]) -> String {
    let b64 = B64.encode(raw);
    let mut t = "-----BEGIN KEEL DOWNLOAD KEY-----\n".to_string();
    for c in b64.as_bytes().chunks(64) {
        t.push_str(std::str::from_utf8(c).unwrap());
        t.push('\n');
    }
    t + "-----END KEEL DOWNLOAD KEY-----\n"
}

#[test]
fn round_trip() {
    let k = key(9);
    let text = block(&k);
    assert!(text.starts_with("-----BEGIN KEEL DOWNLOAD KEY-----\n"));
    assert!(text
        .lines()
        .all(|l| l.len() <= 64 || l.starts_with("-----")));
    let now = t0().plus(time::Duration::minutes(10));
    let dk = verify_download_key(&text, now, None).unwrap();
    assert_eq!(dk.appliance_id, "KEEL-0042");
    assert_eq!(dk.installed, installed());
    assert_eq!(dk.public_key, k.public());
    assert_eq!(dk.expires, t0().plus(time::Duration::minutes(25)));
    // With the expected identity key; and pasted inside an e-mail with CRLFs.
    verify_download_key(&text, now, Some(&k.public())).unwrap();
    let mail = format!(
        "Hello,\r\nhere it is:\r\n\r\n{}\r\nRegards\r\n",
        text.replace('\n', "\r\n")
    );
    verify_download_key(&mail, now, None).unwrap();
}

#[test]
fn expired_refused() {
    let text = block(&key(9));
    let at = |m| t0().plus(time::Duration::minutes(m));
    assert!(matches!(
        verify_download_key(&text, at(25), None),
        Err(Error::Expired { .. })
    ));
    assert!(matches!(
        verify_download_key(&text, at(24 * 60), None),
        Err(Error::Expired { .. })
    ));
    assert!(matches!(
        verify_download_key(&text, at(-30), None),
        Err(Error::CreatedInFuture { .. })
    ));
}

#[test]
fn tampered_refused() {
    let k = key(9);
    let text = block(&k);
    let now = t0().plus(time::Duration::minutes(1));
    let bytes = raw(&text);
    // Flip bits in the public key, the body and the signature.
    let body_start = 8 + 2 + 32 + 4;
    for offset in [
        10,
        41,
        body_start,
        body_start + 20,
        bytes.len() - 66,
        bytes.len() - 1,
    ] {
        let mut bad = bytes.clone();
        bad[offset] ^= 0x04;
        let err = verify_download_key(&armor(&bad), now, None).unwrap_err();
        assert!(
            matches!(err, Error::SignatureInvalid | Error::BadSignatureLength(_)),
            "{offset}: {err}"
        );
    }
    // Another appliance's (valid) block is not the expected one.
    let other = block(&key(10));
    assert!(matches!(
        verify_download_key(&other, now, Some(&k.public())),
        Err(Error::KeyMismatch)
    ));
    // Cut off, broken base64, extra bytes, no markers.
    let cut: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    assert!(matches!(
        verify_download_key(&cut, now, None),
        Err(Error::Armor(_))
    ));
    assert!(matches!(
        verify_download_key(&text.replace('A', "*"), now, None),
        Err(Error::Armor(_))
    ));
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        verify_download_key(&armor(&long), now, None),
        Err(Error::TrailingData)
    ));
    assert!(matches!(
        verify_download_key("hello", now, None),
        Err(Error::Armor(_))
    ));
    assert!(matches!(
        verify_download_key(&armor(&bytes[..60]), now, None),
        Err(Error::Truncated(_))
    ));
}

#[test]
fn overlong_lifetime_refused() {
    // A correctly self-signed block claiming a day of validity.
    let k = key(9);
    let public = k.public().to_bytes();
    let body = serde_json::json!({
        "format": 1,
        "appliance_id": "KEEL-0042",
        "public_key": B64.encode(public),
        "installed": {"base": "0.1.0"},
        "created": t0().to_string(),
        "expires": t0().plus(time::Duration::days(1)).to_string(),
    });
    let body = serde_json::to_vec(&body).unwrap();
    let mut msg = b"keel-download-key v1\0".to_vec();
    msg.extend_from_slice(&public);
    msg.extend_from_slice(&body);
    let mut raw = b"KEELDLKY\x00\x01".to_vec();
    raw.extend_from_slice(&public);
    raw.extend_from_slice(&(body.len() as u32).to_be_bytes());
    raw.extend_from_slice(&body);
    raw.extend_from_slice(&64u16.to_be_bytes());
    raw.extend_from_slice(&k.sign(&msg));
    let err = verify_download_key(&armor(&raw), t0(), None).unwrap_err();
    assert!(matches!(err, Error::LifetimeTooLong { .. }), "{err}");
}
