//! The heartbeat: one fixed-size UDP datagram, authenticated with HMAC-SHA256.
//!
//! ```text
//! offset size
//!  0      4   magic "KFHB"
//!  4      1   version (1)
//!  5      1   flags: bit 0 holding the shared addresses, bit 1 auto-takeover on
//!  6      2   reserved, zero
//!  8     16   sender node id, UTF-8, zero-padded
//! 24      8   term, big-endian
//! 32      8   sequence, big-endian, +1 per datagram since the sender started
//! 40      8   nonce, random per start of the sender
//! 48     32   HMAC-SHA256 over bytes 0..48
//! ```
//!
//! The MAC key is derived from the pre-shared key with HKDF-SHA256; the PSK itself
//! never keys anything on the wire, so the same PSK can later key other purposes
//! (pairing, config sync) under their own labels.

use ring::{hkdf, hmac};

pub const MAGIC: &[u8; 4] = b"KFHB";
pub const VERSION: u8 = 1;
pub const LEN: usize = 80;
const BODY: usize = 48;

pub const FLAG_HOLDING: u8 = 1;
pub const FLAG_AUTO: u8 = 2;

const SALT: &[u8] = b"keel-failover v1";
const INFO_HEARTBEAT: &[u8] = b"heartbeat mac";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub sender: String,
    pub term: u64,
    pub seq: u64,
    pub nonce: u64,
    pub holding: bool,
    pub auto_takeover: bool,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Truncated,
    WrongVersion,
    BadMac,
}

/// The heartbeat MAC key.
pub struct Key(hmac::Key);

impl Key {
    pub fn derive(psk: &[u8]) -> Self {
        Key(derive_key(psk, INFO_HEARTBEAT))
    }
}

/// An HMAC-SHA256 key of its own for one use of the PSK (HKDF-SHA256, salt
/// `keel-failover v1`, `info` naming the use): a MAC of one use never verifies
/// in another.
pub fn derive_key(psk: &[u8], info: &[u8]) -> hmac::Key {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(psk);
    let info = [info];
    let okm = prk
        .expand(&info, hmac::HMAC_SHA256)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    hmac::Key::from(okm)
}

impl Heartbeat {
    pub fn encode(&self, key: &Key) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..4].copy_from_slice(MAGIC);
        b[4] = VERSION;
        b[5] = if self.holding { FLAG_HOLDING } else { 0 }
            | if self.auto_takeover { FLAG_AUTO } else { 0 };
        let id = self.sender.as_bytes();
        let n = id.len().min(16);
        b[8..8 + n].copy_from_slice(&id[..n]);
        b[24..32].copy_from_slice(&self.term.to_be_bytes());
        b[32..40].copy_from_slice(&self.seq.to_be_bytes());
        b[40..48].copy_from_slice(&self.nonce.to_be_bytes());
        let tag = hmac::sign(&key.0, &b[..BODY]);
        b[BODY..].copy_from_slice(tag.as_ref());
        b
    }

    /// Checks size, magic, version and MAC, in that order, then decodes.
    pub fn decode(b: &[u8], key: &Key) -> Result<Self, Reject> {
        if b.len() != LEN || &b[0..4] != MAGIC {
            return Err(Reject::Truncated);
        }
        if b[4] != VERSION {
            return Err(Reject::WrongVersion);
        }
        hmac::verify(&key.0, &b[..BODY], &b[BODY..]).map_err(|_| Reject::BadMac)?;
        let id = &b[8..24];
        let end = id.iter().position(|c| *c == 0).unwrap_or(16);
        let u64_at = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        Ok(Heartbeat {
            sender: String::from_utf8_lossy(&id[..end]).into_owned(),
            term: u64_at(24),
            seq: u64_at(32),
            nonce: u64_at(40),
            holding: b[5] & FLAG_HOLDING != 0,
            auto_takeover: b[5] & FLAG_AUTO != 0,
        })
    }
}

/// Replay guard for one peer: the current start (nonce) with its highest
/// sequence, and the starts it replaced. A datagram of a retired start, or one
/// whose sequence is not above the highest seen, is a replay.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    current: Option<(u64, u64)>,
    retired: std::collections::VecDeque<u64>,
}

const RETIRED_KEPT: usize = 64;

impl ReplayGuard {
    /// Accepts (and records) or refuses `hb`. A new nonce is a restart of the peer.
    pub fn accept(&mut self, hb: &Heartbeat) -> bool {
        match self.current {
            Some((nonce, seq)) if nonce == hb.nonce && hb.seq <= seq => return false,
            Some((nonce, _)) if nonce == hb.nonce => {}
            Some((nonce, _)) => {
                if self.retired.contains(&hb.nonce) {
                    return false;
                }
                if self.retired.len() == RETIRED_KEPT {
                    self.retired.pop_front();
                }
                self.retired.push_back(nonce);
            }
            None => {}
        }
        self.current = Some((hb.nonce, hb.seq));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(seq: u64, nonce: u64) -> Heartbeat {
        Heartbeat {
            sender: "node-b".into(),
            term: 7,
            seq,
            nonce,
            holding: true,
            auto_takeover: false,
        }
    }

    #[test]
    fn round_trip_and_every_rejection() {
        let key = Key::derive(&[1u8; 32]);
        let b = hb(3, 9).encode(&key);
        assert_eq!(Heartbeat::decode(&b, &key).unwrap(), hb(3, 9));
        assert_eq!(Heartbeat::decode(&b[..79], &key), Err(Reject::Truncated));
        assert_eq!(Heartbeat::decode(b"garbage", &key), Err(Reject::Truncated));
        let mut v = b;
        v[4] = 2;
        assert_eq!(Heartbeat::decode(&v, &key), Err(Reject::WrongVersion));
        for i in [5, 8, 24, 31, 40, 79] {
            let mut f = b;
            f[i] ^= 1;
            assert_eq!(Heartbeat::decode(&f, &key), Err(Reject::BadMac), "byte {i}");
        }
        let other = Key::derive(&[2u8; 32]);
        assert_eq!(Heartbeat::decode(&b, &other), Err(Reject::BadMac));
    }

    #[test]
    fn the_psk_is_not_the_mac_key() {
        let psk = [5u8; 32];
        let b = hb(1, 1).encode(&Key::derive(&psk));
        let raw = hmac::Key::new(hmac::HMAC_SHA256, &psk);
        assert_ne!(hmac::sign(&raw, &b[..BODY]).as_ref(), &b[BODY..]);
    }

    #[test]
    fn replays_and_old_starts_are_refused() {
        let mut g = ReplayGuard::default();
        assert!(g.accept(&hb(1, 100)));
        assert!(g.accept(&hb(2, 100)));
        assert!(!g.accept(&hb(2, 100)));
        assert!(!g.accept(&hb(1, 100)));
        // The peer restarted: a new nonce, its sequence starts over.
        assert!(g.accept(&hb(1, 200)));
        assert!(!g.accept(&hb(3, 100)), "a datagram of the previous start");
        assert!(g.accept(&hb(2, 200)));
    }
}
