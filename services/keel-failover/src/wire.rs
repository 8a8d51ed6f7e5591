//! The heartbeat: one fixed-size UDP datagram, authenticated with HMAC-SHA256.
//!
//! ```text
//! offset size
//!  0      4   magic "KFHB"
//!  4      1   version (2)
//!  5      1   flags: bit 0 holding the shared addresses, bit 1 auto-takeover on
//!  6      2   reserved, zero
//!  8     16   sender node id, UTF-8, zero-padded
//! 24      8   term, big-endian
//! 32      8   sequence, big-endian, +1 per datagram since the sender started
//! 40      8   nonce, random per start of the sender
//! 48      8   echo: the receiver's start nonce as the sender last heard it (0: none)
//! 56     32   HMAC-SHA256 over bytes 0..56
//! ```
//!
//! The MAC key is derived from the pre-shared key with HKDF-SHA256; the PSK itself
//! never keys anything on the wire, so the same PSK can later key other purposes
//! (pairing, config sync) under their own labels.
//!
//! Version 2 added `echo`: a receiver acts only on heartbeats that carry its own
//! current start nonce, so nothing recorded before it started can be replayed to it
//! ([`ReplayGuard`]). Every version starts with magic and version and ends with the
//! HMAC (same key) over all bytes before it (version 1: 80 bytes, MAC over 0..48),
//! so a heartbeat of another version is authenticated before it counts as one.

use std::collections::VecDeque;

use ring::{hkdf, hmac};

pub const MAGIC: &[u8; 4] = b"KFHB";
pub const VERSION: u8 = 2;
pub const LEN: usize = 88;
const BODY: usize = 56;

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
    /// The receiver's start nonce the sender last heard (0: none yet).
    pub echo: u64,
    pub holding: bool,
    pub auto_takeover: bool,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Truncated,
    /// Authentic, of the version it carried, which this build does not speak.
    WrongVersion(u8),
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
        b[48..56].copy_from_slice(&self.echo.to_be_bytes());
        let tag = hmac::sign(&key.0, &b[..BODY]);
        b[BODY..].copy_from_slice(tag.as_ref());
        b
    }

    /// Checks magic, version, size and MAC, in that order, then decodes. The
    /// version comes before the size, so a peer of another version (whose
    /// datagrams are of another length) is told apart from junk — by its MAC,
    /// which ends every version.
    pub fn decode(b: &[u8], key: &Key) -> Result<Self, Reject> {
        const TAG: usize = 32;
        if b.len() < 8 || &b[0..4] != MAGIC {
            return Err(Reject::Truncated);
        }
        if b[4] != VERSION {
            if b.len() < 8 + TAG {
                return Err(Reject::Truncated);
            }
            let (body, tag) = b.split_at(b.len() - TAG);
            hmac::verify(&key.0, body, tag).map_err(|_| Reject::BadMac)?;
            return Err(Reject::WrongVersion(b[4]));
        }
        if b.len() != LEN {
            return Err(Reject::Truncated);
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
            echo: u64_at(48),
            holding: b[5] & FLAG_HOLDING != 0,
            auto_takeover: b[5] & FLAG_AUTO != 0,
        })
    }
}

/// What the guard makes of an authenticated heartbeat of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Made after the peer heard this start of this node, and newer than anything
    /// accepted from that start of the peer: act on it.
    Fresh,
    /// Does not echo this node's current start: recorded before this node started,
    /// or sent by a live peer that has not heard this start yet (the first one or
    /// two after either node starts). Its nonce is learned to be echoed.
    Unconfirmed,
    /// A sequence not above the highest accepted for its start, or a start of the
    /// peer that a newer one replaced.
    Replayed,
}

/// Replay guard for one peer, in memory only: nothing from before this node's
/// start can pass it, because a heartbeat counts only when it echoes `own`, a
/// random nonce of this start that no earlier datagram can carry. Within the run,
/// the peer's current start with its highest sequence, and the starts it replaced.
#[derive(Debug)]
pub struct ReplayGuard {
    own: u64,
    /// The peer's start confirmed fresh, and its highest sequence.
    current: Option<(u64, u64)>,
    retired: VecDeque<u64>,
    /// The peer's start last heard while none is confirmed: echoed back, so the
    /// peer can confirm this node (and then this node the peer) — a handshake of
    /// one heartbeat each way.
    heard: Option<u64>,
}

const RETIRED_KEPT: usize = 64;

impl ReplayGuard {
    /// A guard for this start of this node, whose heartbeats carry `own`.
    pub fn new(own: u64) -> Self {
        Self {
            own,
            current: None,
            retired: VecDeque::new(),
            heard: None,
        }
    }

    /// What to put in `echo` of the next heartbeat to the peer.
    pub fn echo(&self) -> u64 {
        self.current.map(|(n, _)| n).or(self.heard).unwrap_or(0)
    }

    /// Judges (and records) `hb`. A new confirmed nonce is a restart of the peer.
    pub fn accept(&mut self, hb: &Heartbeat) -> Freshness {
        if self.retired.contains(&hb.nonce) {
            return Freshness::Replayed;
        }
        if hb.echo != self.own {
            // While a start of the peer is confirmed, nothing unconfirmed changes
            // the echo: a replayed old start cannot break the live handshake. A
            // restarted peer still gets through: it echoes this node as soon as it
            // heard one heartbeat, and is then confirmed.
            if self.current.is_none() {
                self.heard = Some(hb.nonce);
            }
            return Freshness::Unconfirmed;
        }
        match self.current {
            Some((nonce, seq)) if nonce == hb.nonce && hb.seq <= seq => return Freshness::Replayed,
            Some((nonce, _)) if nonce == hb.nonce => {}
            Some((nonce, _)) => {
                if self.retired.len() == RETIRED_KEPT {
                    self.retired.pop_front();
                }
                self.retired.push_back(nonce);
            }
            None => {}
        }
        self.current = Some((hb.nonce, hb.seq));
        self.heard = None;
        Freshness::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: u64 = 0x5eed;

    fn hb(seq: u64, nonce: u64, echo: u64) -> Heartbeat {
        Heartbeat {
            sender: "node-b".into(),
            term: 7,
            seq,
            nonce,
            echo,
            holding: true,
            auto_takeover: false,
        }
    }

    #[test]
    fn round_trip_and_every_rejection() {
        let key = Key::derive(&[1u8; 32]);
        let b = hb(3, 9, 11).encode(&key);
        assert_eq!(b.len(), LEN);
        assert_eq!(Heartbeat::decode(&b, &key).unwrap(), hb(3, 9, 11));
        assert_eq!(
            Heartbeat::decode(&b[..LEN - 1], &key),
            Err(Reject::Truncated)
        );
        assert_eq!(Heartbeat::decode(b"garbage", &key), Err(Reject::Truncated));
        let mut long = b.to_vec();
        long.push(0);
        assert_eq!(Heartbeat::decode(&long, &key), Err(Reject::Truncated));
        let mut v = b;
        v[4] = 3;
        assert_eq!(Heartbeat::decode(&v, &key), Err(Reject::BadMac), "altered");
        for i in [5, 8, 24, 31, 40, 48, 55, 56, 87] {
            let mut f = b;
            f[i] ^= 1;
            assert_eq!(Heartbeat::decode(&f, &key), Err(Reject::BadMac), "byte {i}");
        }
        let other = Key::derive(&[2u8; 32]);
        assert_eq!(Heartbeat::decode(&b, &other), Err(Reject::BadMac));
    }

    /// A heartbeat of another version, signed the same way (MAC last, over the
    /// rest).
    fn other_version(key: &Key, version: u8, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[0..4].copy_from_slice(MAGIC);
        b[4] = version;
        let tag = hmac::sign(&key.0, &b[..len - 32]);
        b[len - 32..].copy_from_slice(tag.as_ref());
        b
    }

    /// A version 1 heartbeat (80 bytes, the layout before `echo`) is told apart
    /// from junk: the peer runs an older release. Only an authentic one counts.
    #[test]
    fn a_heartbeat_of_another_version_is_authenticated_first() {
        let key = Key::derive(&[1u8; 32]);
        let v1 = other_version(&key, 1, 80);
        assert_eq!(Heartbeat::decode(&v1, &key), Err(Reject::WrongVersion(1)));
        let v3 = other_version(&key, 3, 120);
        assert_eq!(Heartbeat::decode(&v3, &key), Err(Reject::WrongVersion(3)));
        let other = Key::derive(&[2u8; 32]);
        assert_eq!(Heartbeat::decode(&v1, &other), Err(Reject::BadMac));
        assert_eq!(
            Heartbeat::decode(&v1[..39], &key),
            Err(Reject::Truncated),
            "no room for a MAC"
        );
    }

    #[test]
    fn the_psk_is_not_the_mac_key() {
        let psk = [5u8; 32];
        let b = hb(1, 1, 1).encode(&Key::derive(&psk));
        let raw = hmac::Key::new(hmac::HMAC_SHA256, &psk);
        assert_ne!(hmac::sign(&raw, &b[..BODY]).as_ref(), &b[BODY..]);
    }

    #[test]
    fn replays_and_old_starts_are_refused() {
        let mut g = ReplayGuard::new(OWN);
        assert_eq!(g.accept(&hb(1, 100, OWN)), Freshness::Fresh);
        assert_eq!(g.accept(&hb(2, 100, OWN)), Freshness::Fresh);
        assert_eq!(g.accept(&hb(2, 100, OWN)), Freshness::Replayed);
        assert_eq!(g.accept(&hb(1, 100, OWN)), Freshness::Replayed);
        // The peer restarted: a new nonce, its sequence starts over.
        assert_eq!(g.accept(&hb(1, 200, OWN)), Freshness::Fresh);
        assert_eq!(
            g.accept(&hb(3, 100, OWN)),
            Freshness::Replayed,
            "a datagram of the previous start"
        );
        assert_eq!(g.accept(&hb(2, 200, OWN)), Freshness::Fresh);
        assert_eq!(g.echo(), 200);
    }

    /// The gap this closes: this node restarted (a new guard, a new own nonce)
    /// and forgot everything; a recording of the peer from before — of its
    /// current start or an older one, at any term — still does not pass.
    #[test]
    fn nothing_recorded_before_this_start_passes() {
        let old_own = 0x01d;
        let recorded = [hb(5, 100, old_own), hb(9, 90, old_own), hb(1, 80, 0)];
        let mut g = ReplayGuard::new(OWN);
        for r in &recorded {
            assert_eq!(g.accept(r), Freshness::Unconfirmed, "{r:?}");
        }
        // The live peer (start 100) has not heard this start yet either; once it
        // has, it echoes OWN and is confirmed, and the recordings stay refused.
        assert_eq!(g.accept(&hb(6, 100, old_own)), Freshness::Unconfirmed);
        assert_eq!(g.echo(), 100, "the last start heard is echoed");
        assert_eq!(g.accept(&hb(7, 100, OWN)), Freshness::Fresh);
        for r in &recorded {
            assert_eq!(g.accept(r), Freshness::Unconfirmed, "{r:?}");
        }
        assert_eq!(g.echo(), 100, "an unconfirmed start does not move the echo");
    }

    /// Two nodes starting together confirm each other after one heartbeat each
    /// way, whoever speaks first.
    #[test]
    fn the_handshake_takes_one_heartbeat_each_way() {
        let (na, nb) = (0xa, 0xb);
        let (mut a, mut b) = (ReplayGuard::new(na), ReplayGuard::new(nb));
        let from_a = |seq, echo| hb(seq, na, echo);
        let from_b = |seq, echo| hb(seq, nb, echo);
        assert_eq!(b.accept(&from_a(1, a.echo())), Freshness::Unconfirmed);
        assert_eq!(a.accept(&from_b(1, b.echo())), Freshness::Fresh);
        assert_eq!(b.accept(&from_a(2, a.echo())), Freshness::Fresh);
        assert_eq!(a.accept(&from_b(2, b.echo())), Freshness::Fresh);
        // B restarts: A keeps echoing B's old start until B's new start echoes A.
        let nb2 = 0xb2;
        let mut b = ReplayGuard::new(nb2);
        let from_b2 = |seq, echo| hb(seq, nb2, echo);
        assert_eq!(b.accept(&from_a(3, a.echo())), Freshness::Unconfirmed);
        assert_eq!(a.accept(&from_b2(1, b.echo())), Freshness::Fresh);
        assert_eq!(b.accept(&from_a(4, a.echo())), Freshness::Fresh);
        assert_eq!(
            a.accept(&from_b(3, na)),
            Freshness::Replayed,
            "B's old start, retired"
        );
    }
}
