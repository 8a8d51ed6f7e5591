//! NTPv4 packets (RFC 5905 §7.3, client side of RFC 4330): a pure parser for what
//! arrives from the network, and the serializer for requests (and for the fake
//! servers of the tests). `parse` never panics on any input: it is fuzzed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Size of the fixed header; extension fields and a MAC may follow.
pub const HEADER_LEN: usize = 48;
/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
pub const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("packet of {len} bytes is shorter than the 48-byte NTP header")]
    TooShort { len: usize },
    #[error("NTP version {0} is not 1 to 4")]
    BadVersion(u8),
    #[error("{len} bytes after the header are neither extension fields nor a MAC")]
    BadTrailer { len: usize },
}

/// Leap indicator (2 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leap {
    None,
    AddSecond,
    DeleteSecond,
    /// "Alarm condition": the server's clock is not synchronized.
    Unsynchronized,
}

impl Leap {
    fn from_bits(b: u8) -> Self {
        match b & 3 {
            0 => Leap::None,
            1 => Leap::AddSecond,
            2 => Leap::DeleteSecond,
            _ => Leap::Unsynchronized,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Leap::None => 0,
            Leap::AddSecond => 1,
            Leap::DeleteSecond => 2,
            Leap::Unsynchronized => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Leap::None => "none",
            Leap::AddSecond => "add_second",
            Leap::DeleteSecond => "delete_second",
            Leap::Unsynchronized => "unsynchronized",
        }
    }
}

/// Association mode (3 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Reserved,
    SymmetricActive,
    SymmetricPassive,
    Client,
    Server,
    Broadcast,
    Control,
    Private,
}

impl Mode {
    fn from_bits(b: u8) -> Self {
        match b & 7 {
            0 => Mode::Reserved,
            1 => Mode::SymmetricActive,
            2 => Mode::SymmetricPassive,
            3 => Mode::Client,
            4 => Mode::Server,
            5 => Mode::Broadcast,
            6 => Mode::Control,
            _ => Mode::Private,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Mode::Reserved => 0,
            Mode::SymmetricActive => 1,
            Mode::SymmetricPassive => 2,
            Mode::Client => 3,
            Mode::Server => 4,
            Mode::Broadcast => 5,
            Mode::Control => 6,
            Mode::Private => 7,
        }
    }
}

/// NTP timestamp: 32.32 fixed-point seconds since 1900 (era-relative: it wraps in
/// 2036, so differences are taken modulo 2^64 and read as signed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    pub fn from_system(t: SystemTime) -> Self {
        let (secs, nanos, negative) = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs(), d.subsec_nanos(), false),
            Err(e) => (e.duration().as_secs(), e.duration().subsec_nanos(), true),
        };
        let frac = ((u64::from(nanos)) << 32) / 1_000_000_000;
        let unix = (secs << 32) | frac;
        let ntp_epoch = NTP_UNIX_OFFSET << 32;
        Timestamp(if negative {
            ntp_epoch.wrapping_sub(unix)
        } else {
            ntp_epoch.wrapping_add(unix)
        })
    }

    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    /// `self − earlier` in seconds, correct while the two are within 68 years.
    pub fn seconds_since(self, earlier: Timestamp) -> f64 {
        (self.0.wrapping_sub(earlier.0) as i64) as f64 / 4_294_967_296.0
    }

    /// This timestamp shifted by `secs` (negative moves back).
    pub fn add_seconds(self, secs: f64) -> Timestamp {
        let delta = (secs * 4_294_967_296.0) as i64;
        Timestamp(self.0.wrapping_add(delta as u64))
    }

    /// The wall-clock time this stands for, taking the NTP era nearest to `near`.
    pub fn to_system_near(self, near: SystemTime) -> SystemTime {
        let diff = self.seconds_since(Timestamp::from_system(near));
        if diff >= 0.0 {
            near + Duration::from_secs_f64(diff)
        } else {
            near - Duration::from_secs_f64(-diff)
        }
    }
}

/// NTP short format (16.16 seconds): root delay and root dispersion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Short(pub u32);

impl Short {
    pub fn seconds(self) -> f64 {
        f64::from(self.0) / 65_536.0
    }
}

/// One NTP packet's header, plus what followed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub leap: Leap,
    pub version: u8,
    pub mode: Mode,
    pub stratum: u8,
    pub poll: i8,
    pub precision: i8,
    pub root_delay: Short,
    pub root_dispersion: Short,
    pub reference_id: [u8; 4],
    pub reference: Timestamp,
    pub origin: Timestamp,
    pub receive: Timestamp,
    pub transmit: Timestamp,
    /// RFC 7822 extension fields after the header (NTS, ...): their types.
    pub extension_types: Vec<u16>,
    /// A MAC (key id + digest) or crypto-NAK (key id only) closed the packet.
    pub mac_len: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    (u64::from(u32_at(b, at)) << 32) | u64::from(u32_at(b, at + 4))
}

/// MACs that RFC 5905 clients meet: crypto-NAK (4), key id + MD5 (20) or SHA-1 (24).
fn is_mac_len(len: usize) -> bool {
    matches!(len, 4 | 20 | 24)
}

/// Parses one datagram. Everything a server controls is checked for shape here;
/// whether the reply is *acceptable* (mode, origin, stratum...) is `sntp`'s call.
pub fn parse(b: &[u8]) -> Result<Packet, ParseError> {
    if b.len() < HEADER_LEN {
        return Err(ParseError::TooShort { len: b.len() });
    }
    let version = (b[0] >> 3) & 7;
    if !(1..=4).contains(&version) {
        return Err(ParseError::BadVersion(version));
    }
    let (extension_types, mac_len) = parse_trailer(&b[HEADER_LEN..])?;
    Ok(Packet {
        leap: Leap::from_bits(b[0] >> 6),
        version,
        mode: Mode::from_bits(b[0]),
        stratum: b[1],
        poll: b[2] as i8,
        precision: b[3] as i8,
        root_delay: Short(u32_at(b, 4)),
        root_dispersion: Short(u32_at(b, 8)),
        reference_id: [b[12], b[13], b[14], b[15]],
        reference: Timestamp(u64_at(b, 16)),
        origin: Timestamp(u64_at(b, 24)),
        receive: Timestamp(u64_at(b, 32)),
        transmit: Timestamp(u64_at(b, 40)),
        extension_types,
        mac_len,
    })
}

/// RFC 7822: extension fields (type 16 bit, length 16 bit counting the whole field,
/// a multiple of 4 and at least 16), then an optional MAC. A trailer that is
/// exactly a MAC's size is a MAC (the RFC's own disambiguation).
fn parse_trailer(mut rest: &[u8]) -> Result<(Vec<u16>, usize), ParseError> {
    let total = rest.len();
    let mut types = Vec::new();
    loop {
        if rest.is_empty() {
            return Ok((types, 0));
        }
        if is_mac_len(rest.len()) {
            return Ok((types, rest.len()));
        }
        if rest.len() < 16 {
            return Err(ParseError::BadTrailer { len: total });
        }
        let field_type = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if len < 16 || len % 4 != 0 || len > rest.len() {
            return Err(ParseError::BadTrailer { len: total });
        }
        types.push(field_type);
        rest = &rest[len..];
    }
}

impl Packet {
    /// A client request (mode 3, version 4) whose transmit timestamp is `nonce`:
    /// the server copies it into its origin field, which is how replies are matched.
    pub fn request(nonce: Timestamp) -> Self {
        Packet {
            leap: Leap::None,
            version: 4,
            mode: Mode::Client,
            stratum: 0,
            poll: 0,
            precision: 0,
            root_delay: Short(0),
            root_dispersion: Short(0),
            reference_id: [0; 4],
            reference: Timestamp::ZERO,
            origin: Timestamp::ZERO,
            receive: Timestamp::ZERO,
            transmit: nonce,
            extension_types: Vec::new(),
            mac_len: 0,
        }
    }

    /// The 48-byte header (extension fields and MAC are not written).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = (self.leap.bits() << 6) | ((self.version & 7) << 3) | self.mode.bits();
        b[1] = self.stratum;
        b[2] = self.poll as u8;
        b[3] = self.precision as u8;
        b[4..8].copy_from_slice(&self.root_delay.0.to_be_bytes());
        b[8..12].copy_from_slice(&self.root_dispersion.0.to_be_bytes());
        b[12..16].copy_from_slice(&self.reference_id);
        b[16..24].copy_from_slice(&self.reference.0.to_be_bytes());
        b[24..32].copy_from_slice(&self.origin.0.to_be_bytes());
        b[32..40].copy_from_slice(&self.receive.0.to_be_bytes());
        b[40..48].copy_from_slice(&self.transmit.0.to_be_bytes());
        b
    }

    /// Stratum 0 carries a four-letter kiss code in the reference ID (RFC 5905 §7.4).
    pub fn kiss_code(&self) -> Option<String> {
        (self.stratum == 0).then(|| ascii_id(&self.reference_id))
    }

    /// The reference ID as people read it: a source name for stratum 0/1, else
    /// the upstream server's IPv4 address (for an IPv6 upstream, the first four
    /// bytes of its address's MD5, shown the same way as `ntpq` does).
    pub fn reference_id_text(&self) -> String {
        if self.stratum <= 1 {
            ascii_id(&self.reference_id)
        } else {
            std::net::Ipv4Addr::from(self.reference_id).to_string()
        }
    }
}

fn ascii_id(r: &[u8; 4]) -> String {
    r.iter()
        .take_while(|&&c| c != 0)
        .map(|&c| {
            if c.is_ascii_graphic() {
                char::from(c)
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    fn sample() -> Packet {
        Packet {
            leap: Leap::AddSecond,
            version: 4,
            mode: Mode::Server,
            stratum: 2,
            poll: 6,
            precision: -20,
            root_delay: Short(0x0001_8000),
            root_dispersion: Short(0x0000_4000),
            reference_id: [192, 0, 2, 1],
            reference: Timestamp(0xe8f0_0000_0000_0001),
            origin: Timestamp(0x1122_3344_5566_7788),
            receive: Timestamp(0xe8f0_0001_8000_0000),
            transmit: Timestamp(0xe8f0_0001_c000_0000),
            extension_types: Vec::new(),
            mac_len: 0,
        }
    }

    #[test]
    fn round_trip_and_fields() {
        let p = sample();
        let q = parse(&p.to_bytes()).unwrap();
        assert_eq!(p, q);
        assert_eq!(q.root_delay.seconds(), 1.5);
        assert_eq!(q.root_dispersion.seconds(), 0.25);
        assert_eq!(q.reference_id_text(), "192.0.2.1");
        assert_eq!(q.kiss_code(), None);
        assert_eq!(q.leap.as_str(), "add_second");
    }

    #[test]
    fn kiss_codes_and_stratum_one_names() {
        let mut p = sample();
        p.stratum = 0;
        p.reference_id = *b"RATE";
        assert_eq!(parse(&p.to_bytes()).unwrap().kiss_code().unwrap(), "RATE");
        p.stratum = 1;
        p.reference_id = *b"GPS\0";
        assert_eq!(parse(&p.to_bytes()).unwrap().reference_id_text(), "GPS");
        p.reference_id = [b'X', 0x01, 0, 0];
        assert_eq!(parse(&p.to_bytes()).unwrap().reference_id_text(), "X?");
    }

    #[test]
    fn short_and_bad_version_are_errors() {
        let b = sample().to_bytes();
        for len in 0..HEADER_LEN {
            assert_eq!(parse(&b[..len]), Err(ParseError::TooShort { len }));
        }
        let mut v0 = b;
        v0[0] &= !(7 << 3);
        assert_eq!(parse(&v0), Err(ParseError::BadVersion(0)));
        let mut v5 = b;
        v5[0] = (v5[0] & !(7 << 3)) | (5 << 3);
        assert_eq!(parse(&v5), Err(ParseError::BadVersion(5)));
        let mut v3 = b;
        v3[0] = (v3[0] & !(7 << 3)) | (3 << 3);
        assert_eq!(parse(&v3).unwrap().version, 3);
    }

    #[test]
    fn trailers_extensions_and_macs() {
        let head = sample().to_bytes().to_vec();
        for mac in [4, 20, 24] {
            let mut b = head.clone();
            b.extend(std::iter::repeat_n(0xab, mac));
            assert_eq!(parse(&b).unwrap().mac_len, mac);
        }
        // One 16-byte extension field, then a 20-byte MAC.
        let mut b = head.clone();
        b.extend([0x01, 0x04, 0x00, 0x10]);
        b.extend([0u8; 12]);
        b.extend([0u8; 20]);
        let p = parse(&b).unwrap();
        assert_eq!(
            (p.extension_types.as_slice(), p.mac_len),
            (&[0x0104][..], 20)
        );
        // A field claiming more than there is, a length not a multiple of 4, junk.
        for trailer in [
            &[0x01, 0x04, 0x00, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
            &[
                0x01, 0x04, 0x00, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            &[1, 2, 3],
            &[0; 17],
        ] {
            let mut b = head.clone();
            b.extend_from_slice(trailer);
            assert!(
                matches!(parse(&b), Err(ParseError::BadTrailer { .. })),
                "{trailer:?}"
            );
        }
    }

    #[test]
    fn timestamps_convert_and_subtract_across_the_era() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_000_000_250);
        let ts = Timestamp::from_system(t);
        assert_eq!(ts.0 >> 32, 1_764_000_000 + NTP_UNIX_OFFSET);
        let back = ts.to_system_near(SystemTime::now());
        let err = back.duration_since(t).unwrap_or_else(|e| e.duration());
        assert!(err < Duration::from_micros(1), "{err:?}");
        // 2036 rollover: one second after the wrap minus one second before it.
        let before = Timestamp(u64::MAX - (1u64 << 32) + 1);
        let after = Timestamp(1u64 << 32);
        assert!((after.seconds_since(before) - 2.0).abs() < 1e-9);
        assert!((before.seconds_since(after) + 2.0).abs() < 1e-9);
        assert!((ts.add_seconds(300.5).seconds_since(ts) - 300.5).abs() < 1e-6);
        assert!((ts.add_seconds(-2.0).seconds_since(ts) + 2.0).abs() < 1e-6);
    }

    /// Robustness: truncations, bit flips and random garbage of every length never
    /// panic, and a packet the parser accepts re-serializes to its own header.
    #[test]
    fn garbage_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b65_656c);
        let good = sample().to_bytes();
        for len in 0..=good.len() {
            let _ = parse(&good[..len]);
        }
        let mut buf = vec![0u8; 256];
        for round in 0..20_000 {
            let len = rng.gen_range(0..buf.len());
            rng.fill_bytes(&mut buf[..len]);
            if round % 2 == 0 && len >= HEADER_LEN {
                // Keep a plausible first byte so the deeper paths are reached too.
                buf[0] = (buf[0] & 0xc7) | (4 << 3);
            }
            if let Ok(p) = parse(&buf[..len]) {
                assert_eq!(p.to_bytes()[..], buf[..HEADER_LEN]);
                let _ = (p.reference_id_text(), p.kiss_code());
            }
        }
        for bit in 0..HEADER_LEN * 8 {
            let mut b = good;
            b[bit / 8] ^= 1 << (bit % 8);
            let _ = parse(&b);
        }
    }
}
