//! Cheap deterministic fuzzing: thousands of mutations of a valid bundle (and
//! feed) through the parsers. None may panic, none may be accepted.

mod common;

use std::io::Cursor;

use common::*;
use keel_bundle::{
    read_unverified, sign_feed, verify_download_key, verify_feed, FeedSpec, Manifest, Verifier,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, so a failure reproduces.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = b.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                b[i] = rng.next() as u8;
            }
            2 => b.truncate(rng.below(len + 1)),
            3 => b.insert(rng.below(len + 1), rng.next() as u8),
            4 if len > 0 => {
                b.remove(rng.below(len));
            }
            5 => {
                let n = 1 + rng.below(16);
                b.extend((0..n).map(|_| rng.next() as u8));
            }
            6 if len >= 14 => {
                // The length field: small, near the real one, or huge.
                let v = match rng.below(3) {
                    0 => rng.next() as u32,
                    1 => u32::from_be_bytes(b[10..14].try_into().unwrap())
                        .wrapping_add(rng.below(5) as u32)
                        .wrapping_sub(2),
                    _ => rng.below(100) as u32,
                };
                b[10..14].copy_from_slice(&v.to_be_bytes());
            }
            _ if len > 1 => {
                let (i, j) = (rng.below(len), rng.below(len));
                b.swap(i, j);
            }
            _ => {}
        }
    }
    b
}

#[test]
fn mutated_bundles_never_verify() {
    let k = key(1);
    let keys = trusted(&k);
    let good = base_bundle(&k, "0.3.0", 300);
    verify(&good, &keys).unwrap();
    let verifier = Verifier::new(&keys, "keel", now());
    let mut rng = Rng(0x5EED_CAFE_F00D_1234);
    let mut tried = 0;
    // Each case costs an Ed25519 verification (milliseconds in a debug build).
    for _ in 0..3000 {
        let bad = mutate(&mut rng, &good);
        if bad == good {
            continue;
        }
        tried += 1;
        let result = verifier
            .open(Cursor::new(&bad))
            .and_then(|b| b.payload().drain());
        assert!(result.is_err(), "accepted a mutated bundle: {bad:?}");
        // The unverified paths must not panic either.
        let _ = read_unverified(Cursor::new(&bad));
        if bad.len() > 14 {
            let _ = Manifest::parse(&bad[14..]);
        }
        let _ = verify_feed(&verifier, Cursor::new(&bad));
    }
    assert!(tried > 2700, "{tried}");
}

#[test]
fn mutated_feeds_never_verify() {
    let k = key(1);
    let keys = trusted(&k);
    let entries = vec![keel_bundle::FeedEntry::from_manifest(
        "keel-base-0.3.0.kbundle",
        verify(&base_bundle(&k, "0.3.0", 10), &keys)
            .unwrap()
            .manifest(),
    )];
    let spec = FeedSpec {
        product: "keel".into(),
        created: t0(),
        expires: t0().plus(time::Duration::days(14)),
        entries,
    };
    let good = sign_feed(&k, &spec).unwrap();
    let verifier = Verifier::new(&keys, "keel", now());
    verify_feed(&verifier, Cursor::new(&good)).unwrap();
    let mut rng = Rng(42);
    for _ in 0..1000 {
        let bad = mutate(&mut rng, &good);
        if bad != good {
            assert!(verify_feed(&verifier, Cursor::new(&bad)).is_err());
        }
    }
}

#[test]
fn mutated_download_keys_never_verify() {
    let k = key(9);
    let installed = keel_bundle::Installed::new().with("base", v("0.1.0"));
    let good = keel_bundle::make_download_key(&k, "KEEL-1", &installed, t0()).unwrap();
    let at = t0().plus(time::Duration::minutes(1));
    verify_download_key(&good, at, None).unwrap();
    let mut rng = Rng(7);
    for _ in 0..3000 {
        let bad = mutate(&mut rng, good.as_bytes());
        let Ok(text) = String::from_utf8(bad) else {
            continue;
        };
        // Text around the armor is ignored by design, and so is whitespace at line
        // ends; anything that changes the armored base64 must fail.
        if verify_download_key(&text, at, None).is_ok() {
            assert_eq!(
                armored(&text),
                armored(&good),
                "accepted a mutated download key: {text}"
            );
        }
    }
}

/// The base64 between the markers, as the parser sees it.
fn armored(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN KEEL DOWNLOAD KEY-----")
        .skip(1)
        .take_while(|l| *l != "-----END KEEL DOWNLOAD KEY-----")
        .collect()
}
