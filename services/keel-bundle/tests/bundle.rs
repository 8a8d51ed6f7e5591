//! Bundle format and verifier: round trip, and every kind of damage refused with
//! its own error.

mod common;

use std::io::Cursor;

use common::*;
use keel_bundle::{
    build_bundle_file, check_installable, check_not_downgrade, read_unverified, verify_file, Error,
    Installed, KeyPurpose, Kind, Manifest, PublicKey, Rollback, SecretKey, TrustedKeys, Verifier,
};

const PAYLOAD: usize = 10_000;

fn flip(bytes: &[u8], offset: usize, bit: u8) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[offset] ^= 1 << bit;
    b
}

#[test]
fn round_trip() {
    let k = key(1);
    let bytes = base_bundle(&k, "0.3.0", PAYLOAD);
    let (got, result) = stream(&bytes, &trusted(&k));
    let verified = result.unwrap();
    assert_eq!(got, payload(PAYLOAD));
    let m = verified.manifest();
    assert_eq!(
        (m.product.as_str(), m.kind, m.version),
        ("keel", Kind::Base, v("0.3.0"))
    );
    assert_eq!(m.component(), "base");
    assert_eq!(m.payload_size, PAYLOAD as u64);
    assert_eq!(m.key_id, k.public().id());
    assert_eq!(verified.size(), PAYLOAD as u64);
    // The manifest is compact JSON, as signed, and parses back to itself.
    let (_, mlen) = layout(&bytes);
    let parsed = Manifest::parse(&bytes[14..14 + mlen]).unwrap();
    assert_eq!(&parsed, m);
    assert_eq!(parsed.to_bytes().unwrap(), bytes[14..14 + mlen].to_vec());
}

#[test]
fn round_trip_through_files() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(1);
    let payload_path = dir.path().join("rootfs.squashfs");
    std::fs::write(&payload_path, payload(300_000)).unwrap();
    let out = dir.path().join("keel-base-0.3.0.kbundle");
    let mut s = spec(Kind::Base, None, "0.3.0");
    s.requires = vec![];
    s.installs_over = vec![range(">=0.2.0")];
    build_bundle_file(&k, &s, &payload_path, &out).unwrap();
    let v = verify_file(&out, &Verifier::new(&trusted(&k), "keel", now())).unwrap();
    assert_eq!(v.size(), 300_000);
    let (m, id) = read_unverified(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!((m, id), (v.manifest().clone(), k.public().id()));
}

#[test]
fn app_bundle_round_trip() {
    let k = key(1);
    let mut s = spec(Kind::App, Some("web-filter"), "1.0.0");
    s.requires = vec![req("base>=0.3.0")];
    let bytes = keel_bundle::build_bundle_bytes(&k, &s, b"app payload").unwrap();
    let v = verify(&bytes, &trusted(&k)).unwrap();
    assert_eq!(v.manifest().component(), "web-filter");
    assert_eq!(v.manifest().requires, vec![req("base >= 0.3.0")]);
}

#[test]
fn flipped_manifest_bits_are_refused() {
    let k = key(1);
    let bytes = base_bundle(&k, "0.3.0", PAYLOAD);
    let (_, mlen) = layout(&bytes);
    for offset in [14, 15, 14 + mlen / 2, 14 + mlen - 1] {
        for bit in [0, 5, 7] {
            let err = verify(&flip(&bytes, offset, bit), &trusted(&k)).unwrap_err();
            assert!(
                matches!(err, Error::SignatureInvalid),
                "{offset}/{bit}: {err}"
            );
        }
    }
}

#[test]
fn flipped_signature_bits_are_refused() {
    let k = key(1);
    let bytes = base_bundle(&k, "0.3.0", PAYLOAD);
    let (_, mlen) = layout(&bytes);
    let sig = 14 + mlen + 2;
    for offset in [sig, sig + 1, sig + 31, sig + 32, sig + 63] {
        for bit in [0, 7] {
            let err = verify(&flip(&bytes, offset, bit), &trusted(&k)).unwrap_err();
            assert!(
                matches!(err, Error::SignatureInvalid),
                "{offset}/{bit}: {err}"
            );
        }
    }
    // The signature length field.
    let err = verify(&flip(&bytes, 14 + mlen + 1, 0), &trusted(&k)).unwrap_err();
    assert!(matches!(err, Error::BadSignatureLength(65)), "{err}");
    // The key id picks no trusted key.
    let err = verify(&flip(&bytes, sig + 64, 0), &trusted(&k)).unwrap_err();
    assert!(matches!(err, Error::UnknownKey(_)), "{err}");
}

#[test]
fn flipped_payload_bits_are_refused_and_the_end_withheld() {
    let k = key(1);
    let bytes = base_bundle(&k, "0.3.0", PAYLOAD);
    let (start, _) = layout(&bytes);
    for offset in [
        start,
        start + 1,
        start + 4095,
        start + 4096,
        start + PAYLOAD / 2,
        bytes.len() - 1,
    ] {
        let bad = flip(&bytes, offset, 3);
        assert!(matches!(
            verify(&bad, &trusted(&k)),
            Err(Error::PayloadHashMismatch)
        ));
        let (got, result) = stream(&bad, &trusted(&k));
        assert!(
            matches!(result, Err(Error::PayloadHashMismatch)),
            "{offset}"
        );
        // The read that would have completed the payload failed instead.
        assert!(
            got.len() < PAYLOAD,
            "{offset}: {} bytes returned",
            got.len()
        );
    }
}

#[test]
fn header_damage_is_refused() {
    let k = key(1);
    let keys = trusted(&k);
    let bytes = base_bundle(&k, "0.3.0", PAYLOAD);
    assert!(matches!(
        verify(&flip(&bytes, 0, 1), &keys),
        Err(Error::BadMagic { .. })
    ));
    assert!(matches!(
        verify(&flip(&bytes, 9, 1), &keys),
        Err(Error::UnsupportedFormat(3))
    ));
    let mut huge = bytes.clone();
    huge[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(
        matches!(verify(&huge, &keys), Err(Error::ManifestTooLarge { len, .. }) if len == u32::MAX as u64)
    );
    let mut just_over = bytes.clone();
    just_over[10..14].copy_from_slice(&(64 * 1024 + 1u32).to_be_bytes());
    assert!(matches!(
        verify(&just_over, &keys),
        Err(Error::ManifestTooLarge { .. })
    ));
    let mut zero = bytes.clone();
    zero[10..14].copy_from_slice(&0u32.to_be_bytes());
    assert!(matches!(
        verify(&zero, &keys),
        Err(Error::ManifestTooLarge { len: 0, .. })
    ));
    // A length one short or one long shifts everything: refused, whatever the detail.
    for delta in [-1i64, 1] {
        let mut shifted = bytes.clone();
        let (_, mlen) = layout(&bytes);
        shifted[10..14].copy_from_slice(&((mlen as i64 + delta) as u32).to_be_bytes());
        assert!(verify(&shifted, &keys).is_err());
    }
}

#[test]
fn truncations_are_refused() {
    let k = key(1);
    let keys = trusted(&k);
    let bytes = base_bundle(&k, "0.3.0", PAYLOAD);
    let (start, mlen) = layout(&bytes);
    let cases: Vec<(usize, &str)> = vec![
        (0, "header"),
        (7, "header"),
        (8, "header"),
        (13, "header"),
        (14, "signed body"),
        (14 + mlen - 1, "signed body"),
        (14 + mlen, "signature"),
        (14 + mlen + 30, "signature"),
        (14 + mlen + 66, "key id"),
        (start - 1, "key id"),
    ];
    for (at, part) in cases {
        match verify(&bytes[..at], &keys) {
            Err(Error::Truncated(p)) => assert_eq!(p, part, "cut at {at}"),
            other => panic!("cut at {at}: {other:?}"),
        }
    }
    for at in [start, start + 1, start + PAYLOAD / 2, bytes.len() - 1] {
        match verify(&bytes[..at], &keys) {
            Err(Error::PayloadTruncated { expected, got }) => {
                assert_eq!((expected, got), (PAYLOAD as u64, (at - start) as u64))
            }
            other => panic!("cut at {at}: {other:?}"),
        }
    }
}

#[test]
fn appended_bytes_are_refused() {
    let k = key(1);
    let mut bytes = base_bundle(&k, "0.3.0", PAYLOAD);
    bytes.push(0);
    assert!(matches!(
        verify(&bytes, &trusted(&k)),
        Err(Error::TrailingData)
    ));
    let (got, result) = stream(&bytes, &trusted(&k));
    assert!(matches!(result, Err(Error::TrailingData)));
    assert!(got.len() < PAYLOAD);
}

#[test]
fn keys_wrong_missing_rotated() {
    let (a, b) = (key(1), key(2));
    let bytes = base_bundle(&a, "0.3.0", 100);
    assert!(
        matches!(verify(&bytes, &trusted(&b)), Err(Error::UnknownKey(id)) if id == a.public().id())
    );
    assert!(matches!(
        verify(&bytes, &TrustedKeys::new()),
        Err(Error::NoTrustedKeys)
    ));
    // Garbage and empty input with no keys: refused before reading.
    assert!(matches!(
        verify(b"", &TrustedKeys::new()),
        Err(Error::NoTrustedKeys)
    ));
    // Rotation: both keys trusted, either verifies.
    let both = TrustedKeys::new().with(a.public()).with(b.public());
    verify(&bytes, &both).unwrap();
    verify(&base_bundle(&b, "0.3.0", 100), &both).unwrap();
}

#[test]
fn validity_period() {
    let k = key(1);
    let keys = trusted(&k);
    let bytes = base_bundle(&k, "0.3.0", 100);
    let expires = t0().plus(time::Duration::days(365));
    assert!(matches!(
        verify_at(&bytes, &keys, expires),
        Err(Error::Expired { .. })
    ));
    assert!(matches!(
        verify_at(&bytes, &keys, expires.plus(time::Duration::days(400))),
        Err(Error::Expired { .. })
    ));
    verify_at(&bytes, &keys, expires.plus(time::Duration::seconds(-1))).unwrap();
    // Created ahead of the clock: a little is skew, more is refused.
    verify_at(&bytes, &keys, t0().plus(time::Duration::minutes(-4))).unwrap();
    assert!(matches!(
        verify_at(&bytes, &keys, t0().plus(time::Duration::minutes(-10))),
        Err(Error::CreatedInFuture { .. })
    ));
}

#[test]
fn product_mismatch() {
    let k = key(1);
    let mut s = spec(Kind::Base, None, "0.3.0");
    s.product = "other".into();
    let bytes = keel_bundle::build_bundle_bytes(&k, &s, b"x").unwrap();
    assert!(matches!(
        verify(&bytes, &trusted(&k)),
        Err(Error::ProductMismatch { .. })
    ));
}

#[test]
fn garbage_and_empty_files() {
    let k = key(1);
    let keys = trusted(&k);
    assert!(matches!(
        verify(b"", &keys),
        Err(Error::Truncated("header"))
    ));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let garbage: Vec<u8> = (0..5000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    assert!(matches!(
        verify(&garbage, &keys),
        Err(Error::BadMagic { .. })
    ));
    // Garbage behind a valid magic and format.
    let mut g = b"KEELBNDL\x00\x01".to_vec();
    g.extend_from_slice(&garbage);
    assert!(verify(&g, &keys).is_err());
}

#[test]
fn signed_but_bad_manifests() {
    let k = key(1);
    let keys = trusted(&k);
    let good = base_bundle(&k, "0.3.0", 1);
    let (_, mlen) = layout(&good);
    let json: serde_json::Value = serde_json::from_slice(&good[14..14 + mlen]).unwrap();
    let id = k.public().id().0;
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut j = json.clone();
        f(&mut j);
        sign_raw(&k, &serde_json::to_vec(&j).unwrap(), id, &payload(1))
    };
    // The signed key id must be the signing key.
    let other = edit(&|j| j["key_id"] = "0011223344556677".into());
    assert!(matches!(
        verify(&other, &keys),
        Err(Error::ManifestInvalid(_))
    ));
    // Unknown fields, wrong types, bad versions, a name on a base: all refused.
    for bad in [
        edit(&|j| j["surprise"] = 1.into()),
        edit(&|j| j["version"] = "0.3".into()),
        edit(&|j| j["version"] = "00.3.0".into()),
        edit(&|j| j["name"] = "x".into()),
        edit(&|j| j["kind"] = "kernel".into()),
        edit(&|j| j["payload_size"] = (-1).into()),
        edit(&|j| j["payload_sha256"] = "AB".into()),
        edit(&|j| j["created"] = "2026-06-01T02:00:00+02:00".into()),
        edit(&|j| j["expires"] = j["created"].clone()),
        edit(&|j| {
            j["requires"] =
                serde_json::json!([{"component": "base", "op": "~", "version": "1.0.0"}])
        }),
        sign_raw(&k, b"not json", id, b"x"),
        sign_raw(&k, br#"{"format":1,"format":1}"#, id, b"x"),
    ] {
        let err = verify(&bad, &keys).unwrap_err();
        assert!(matches!(err, Error::ManifestInvalid(_)), "{err}");
    }
    let v2 = edit(&|j| j["format"] = 2.into());
    assert!(matches!(
        verify(&v2, &keys),
        Err(Error::UnsupportedFormat(2))
    ));
    // A manifest signed for a feed context does not verify as a bundle.
    let mut msg = b"keel-bundle feed v1\0".to_vec();
    msg.extend_from_slice(&good[14..14 + mlen]);
    let mut cross = good.clone();
    cross[14 + mlen + 2..14 + mlen + 66].copy_from_slice(&k.sign(&msg));
    assert!(matches!(
        verify(&cross, &keys),
        Err(Error::SignatureInvalid)
    ));
}

#[test]
fn finish_needs_the_whole_payload() {
    let k = key(1);
    let bytes = base_bundle(&k, "0.3.0", PAYLOAD);
    let bundle = Verifier::new(&trusted(&k), "keel", now())
        .open(Cursor::new(&bytes))
        .unwrap();
    let mut reader = bundle.payload();
    let mut buf = [0u8; 100];
    std::io::Read::read_exact(&mut reader, &mut buf).unwrap();
    assert!(matches!(
        reader.finish(),
        Err(Error::PayloadNotConsumed { read: 100, .. })
    ));
}

fn installable(m: &Manifest, installed: &Installed) -> Result<(), Error> {
    check_installable(m, installed, now(), 1 << 30)
}

fn manifest(bytes: &[u8], k: &SecretKey) -> Manifest {
    verify(bytes, &trusted(k)).unwrap().manifest().clone()
}

#[test]
fn policy() {
    let k = key(1);
    let mut s = spec(Kind::Base, None, "0.3.0");
    s.installs_over = vec![range(">=0.2.0")];
    let m = manifest(
        &keel_bundle::build_bundle_bytes(&k, &s, &payload(1000)).unwrap(),
        &k,
    );
    let base = |ver: &str| Installed::new().with("base", v(ver));

    installable(&m, &base("0.2.0")).unwrap();
    installable(&m, &base("0.2.7")).unwrap();
    assert!(matches!(
        installable(&m, &base("0.3.0")),
        Err(Error::Replay { .. })
    ));
    assert!(matches!(
        installable(&m, &base("0.10.0")),
        Err(Error::Downgrade { .. })
    ));
    let err = installable(&m, &base("0.1.0")).unwrap_err();
    assert!(matches!(err, Error::NotInstallableOver { .. }), "{err}");
    assert!(matches!(
        check_installable(&m, &base("0.2.0"), now(), 999),
        Err(Error::PayloadTooLarge {
            size: 1000,
            max: 999
        })
    ));
    check_installable(&m, &base("0.2.0"), now(), 1000).unwrap();
    assert!(matches!(
        check_installable(
            &m,
            &base("0.2.0"),
            t0().plus(time::Duration::days(366)),
            1 << 30
        ),
        Err(Error::Expired { .. })
    ));

    // Requirements of an app.
    let mut a = spec(Kind::App, Some("vpn"), "1.0.0");
    a.requires = vec![req("base>=0.3.0")];
    let app = manifest(
        &keel_bundle::build_bundle_bytes(&k, &a, b"app").unwrap(),
        &k,
    );
    let err = installable(&app, &base("0.2.0")).unwrap_err();
    assert!(matches!(err, Error::Unmet { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "needs base >= 0.3.0 first (installed: base 0.2.0)"
    );
    installable(&app, &base("0.3.0")).unwrap();
    let with_app = base("0.3.0").with("vpn", v("1.0.0"));
    assert!(matches!(
        installable(&app, &with_app),
        Err(Error::Replay { .. })
    ));

    // Rollback is a separate, explicit decision.
    assert!(check_not_downgrade("base", Some(v("0.3.0")), v("0.2.0"), Rollback::Refuse).is_err());
    check_not_downgrade("base", Some(v("0.3.0")), v("0.2.0"), Rollback::Allow).unwrap();
    assert!(check_not_downgrade("base", Some(v("0.3.0")), v("0.3.0"), Rollback::Allow).is_err());
}

#[test]
fn key_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (key(1), key(2));
    let keys = dir.path().join("update-keys");
    std::fs::create_dir(&keys).unwrap();
    // An empty directory trusts nothing, so nothing verifies.
    let empty = TrustedKeys::load_dir(&keys).unwrap();
    assert!(matches!(
        verify(&base_bundle(&a, "0.3.0", 10), &empty),
        Err(Error::NoTrustedKeys)
    ));

    std::fs::write(
        keys.join("2026.pub"),
        a.public().to_text(KeyPurpose::Update),
    )
    .unwrap();
    std::fs::write(
        keys.join("2027.pub"),
        b.public().to_text(KeyPurpose::Update),
    )
    .unwrap();
    std::fs::write(keys.join("README"), "not a key").unwrap();
    let t = TrustedKeys::load_dir(&keys).unwrap();
    assert_eq!(t.len(), 2);
    verify(&base_bundle(&b, "0.3.0", 10), &t).unwrap();

    let text = a.public().to_text(KeyPurpose::Update);
    assert!(text.starts_with("keel-update-key v1 ed25519 "));
    assert_eq!(
        PublicKey::from_text(&text, KeyPurpose::Update).unwrap(),
        a.public()
    );
    assert!(PublicKey::from_text(&text, KeyPurpose::Identity).is_err());
    // A secret key dropped into the keys directory is not a public key.
    std::fs::write(
        keys.join("oops.pub"),
        a.to_text(KeyPurpose::Update).as_str(),
    )
    .unwrap();
    assert!(matches!(
        TrustedKeys::load_dir(&keys),
        Err(Error::KeyFile { .. })
    ));

    // Secret key files must be private.
    use std::os::unix::fs::PermissionsExt;
    let secret = dir.path().join("k.secret");
    std::fs::write(&secret, a.to_text(KeyPurpose::Update).as_str()).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        SecretKey::load(&secret, KeyPurpose::Update),
        Err(Error::KeyFile { .. })
    ));
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let loaded = SecretKey::load(&secret, KeyPurpose::Update).unwrap();
    assert_eq!(loaded.public(), a.public());
}

/// The sequence the update service runs (README, "What the update service calls").
#[test]
fn update_service_flow() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(1);
    let keys_dir = dir.path().join("update-keys");
    std::fs::create_dir(&keys_dir).unwrap();
    std::fs::write(
        keys_dir.join("vendor.pub"),
        k.public().to_text(KeyPurpose::Update),
    )
    .unwrap();
    let upload = dir.path().join("upload.kbundle");
    let mut s = spec(Kind::Base, None, "0.3.0");
    s.installs_over = vec![range(">=0.2.0")];
    std::fs::write(
        &upload,
        keel_bundle::build_bundle_bytes(&k, &s, &payload(70_000)).unwrap(),
    )
    .unwrap();

    let keys = TrustedKeys::load_dir(&keys_dir).unwrap();
    let installed = Installed::new().with("base", v("0.2.0"));
    let file = std::fs::File::open(&upload).unwrap();
    let bundle = Verifier::new(&keys, "keel", now()).open(file).unwrap();
    check_installable(bundle.manifest(), &installed, now(), 1 << 20).unwrap();
    let mut reader = bundle.payload();
    let mut slot = Vec::new();
    std::io::copy(&mut reader, &mut slot).unwrap();
    let verified = reader.finish().unwrap();
    assert_eq!(slot, payload(70_000));
    assert_eq!(verified.size(), 70_000);
    assert_eq!(verified.manifest().version, v("0.3.0"));

    // The same with the last byte damaged: copy fails, finish refuses, and the
    // slot never received the whole payload.
    let mut bytes = std::fs::read(&upload).unwrap();
    *bytes.last_mut().unwrap() ^= 0x80;
    let bundle = Verifier::new(&keys, "keel", now())
        .open(Cursor::new(bytes))
        .unwrap();
    let mut reader = bundle.payload();
    let mut slot = Vec::new();
    let err = std::io::copy(&mut reader, &mut slot).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(slot.len() < 70_000);
    assert!(matches!(reader.finish(), Err(Error::PayloadHashMismatch)));
}
