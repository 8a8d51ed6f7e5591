//! Whatever arrives on the NTP socket: the parser must not panic, an accepted
//! packet must re-serialize to its own header, and validating and computing a
//! sample from it must not panic either.
#![no_main]

use keel_timed::packet::{self, HEADER_LEN};
use keel_timed::sntp::{validate, Sample};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = packet::parse(data) {
        assert_eq!(p.to_bytes()[..], data[..HEADER_LEN]);
        let _ = (p.reference_id_text(), p.kiss_code());
        let _ = validate(&p, p.origin, &[p.transmit]);
        let s = Sample::from_exchange(&p, p.reference, p.origin);
        assert!(s.delay >= 0.0 || s.delay.is_nan());
    }
});
