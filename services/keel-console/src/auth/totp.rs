//! The second factor: RFC 6238 codes (SHA-1, 6 digits, 30 s steps, one step of
//! skew either way: what every authenticator app makes) and recovery codes.

use rand::{rngs::OsRng, Rng, RngCore};
use sha2::{Digest, Sha256};
use totp_rs::{Builder, Secret, Totp};

use super::{normalize_code, AuthError, CODE_ALPHABET};

/// Recovery codes made at each enrolment.
pub const RECOVERY_CODES: usize = 10;

/// 160 bits, as RFC 4226 recommends; Base32.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 20];
    OsRng.fill_bytes(&mut bytes);
    Secret::from(bytes.to_vec()).to_base32()
}

fn totp(secret: &str, user: &str, issuer: Option<String>) -> Option<Totp> {
    let secret = Secret::try_from_base32(secret).ok()?;
    Builder::new()
        .with_secret(secret)
        .with_account_name(user)
        .with_issuer(issuer)
        .build()
        .ok()
}

/// `otpauth://totp/...` for an authenticator app, naming the appliance.
pub fn uri(secret: &str, user: &str, hostname: &str) -> Result<String, AuthError> {
    let issuer = format!("Keel {hostname}")
        .replace(':', " ")
        .trim()
        .to_owned();
    totp(secret, user, Some(issuer))
        .and_then(|t| t.to_url().ok())
        .ok_or_else(|| AuthError::Store("cannot build the authenticator URI".into()))
}

/// The time step `code` is good for now, if any (6 digits only: anything else
/// may be a recovery code).
pub fn check(secret: &str, user: &str, code: &str) -> Option<u64> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    totp(secret, user, None)?.check_current(code)
}

fn digest(code: &str) -> String {
    hex::encode(Sha256::digest(normalize_code(code).as_bytes()))
}

/// Which stored recovery code `code` is.
pub fn find_recovery(hashes: &[String], code: &str) -> Option<usize> {
    if normalize_code(code).len() != 10 {
        return None;
    }
    let d = digest(code);
    hashes
        .iter()
        .position(|h| super::constant_time_eq(h.as_bytes(), d.as_bytes()))
}

/// New recovery codes (`XXXXX-XXXXX`, 50 bits each) and their hashes.
pub fn recovery_codes() -> (Vec<String>, Vec<String>) {
    let mut rng = OsRng;
    let codes: Vec<String> = (0..RECOVERY_CODES)
        .map(|_| {
            let c: String = (0..10)
                .map(|_| CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char)
                .collect();
            format!("{}-{}", &c[..5], &c[5..])
        })
        .collect();
    let hashes = codes.iter().map(|c| digest(c)).collect();
    (codes, hashes)
}

/// The code an authenticator app shows now (for the tests).
#[cfg(test)]
pub fn current_code(secret: &str, user: &str) -> String {
    totp(secret, user, None)
        .unwrap()
        .generate_current()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_check_and_recovery_codes_match_once_stored() {
        let s = new_secret();
        let code = current_code(&s, "alice");
        assert!(check(&s, "alice", &code).is_some());
        assert!(check(&s, "alice", "12345").is_none());
        let uri = uri(&s, "alice", "edge").unwrap();
        assert!(
            uri.starts_with("otpauth://totp/") && uri.contains(&s),
            "{uri}"
        );
        let (codes, hashes) = recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert_eq!(find_recovery(&hashes, &codes[3].to_lowercase()), Some(3));
        assert_eq!(find_recovery(&hashes, "AAAAA-AAAAA"), None);
        assert!(hashes.iter().all(|h| !codes.iter().any(|c| h.contains(c))));
    }
}
