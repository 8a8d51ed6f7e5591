//! Feeds arbitrary bytes to every parser of untrusted input: the bundle verifier
//! (framing, lengths, signature, payload stream), the manifest parser directly
//! (behind the signature the verifier never reaches it with random bytes), the
//! unverified reader `inspect` uses, the feed verifier and download keys.
#![no_main]

use std::io::Cursor;

use keel_bundle::{
    read_unverified, verify_download_key, verify_feed, Manifest, SecretKey, Timestamp, TrustedKeys,
    Verifier,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SecretKey::from_seed(&[1; 32]);
    let keys = TrustedKeys::new().with(key.public());
    let Ok(now) = "2026-06-02T00:00:00Z".parse::<Timestamp>() else {
        return;
    };
    // A wide skew lets seed bundles made with the key `[1; 32]` on any later
    // day pass the time checks, so the fuzzer gets to the payload stream.
    let verifier = Verifier::new(&keys, "keel", now).with_skew(time::Duration::days(36_500));
    if let Ok(bundle) = verifier.open(Cursor::new(data)) {
        // Seeds signed with the test key get here: the payload stream is fuzzed.
        let _ = bundle.payload().drain();
    }
    let _ = read_unverified(Cursor::new(data));
    if let Ok(m) = Manifest::parse(data) {
        // Whatever parses must serialize back to something that parses.
        if let Ok(bytes) = m.to_bytes() {
            assert_eq!(Manifest::parse(&bytes).ok(), Some(m));
        }
    }
    let _ = verify_feed(&verifier, Cursor::new(data));
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = verify_download_key(text, now, None);
    }
});
