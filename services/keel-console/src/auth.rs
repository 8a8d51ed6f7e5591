//! Admin credentials, the one-time setup code, sessions and login rate limiting.
//!
//! Stored under the console's data dir: `admin.json` (argon2id hash, 0600) once set
//! up, `setup-code` (0600) until then. Sessions live in memory only: a reboot logs
//! everyone out, which is what an appliance admin expects.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::{rngs::OsRng, Rng, RngCore};
use serde::{Deserialize, Serialize};

/// Letters and digits that cannot be confused when read off a screen (no 0/O, 1/I).
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
pub const MIN_PASSWORD_LEN: usize = 8;
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Failed attempts allowed per client address within `FAILURE_WINDOW`.
pub const MAX_FAILURES: usize = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSIONS: usize = 64;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the appliance is already set up; log in instead")]
    AlreadySetUp,
    #[error("the appliance is not set up yet; use the setup code shown on its local console")]
    NotSetUp,
    #[error("wrong setup code")]
    WrongSetupCode,
    #[error("wrong user name or password")]
    WrongPassword,
    #[error("too many failed attempts from this address; try again in {0} s")]
    RateLimited(u64),
    #[error("the password must have {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters")]
    WeakPassword,
    #[error("cannot store credentials: {0}")]
    Store(String),
}

#[derive(Serialize, Deserialize)]
struct AdminRecord {
    /// PHC string (argon2id with its salt and parameters).
    password_hash: String,
}

#[derive(Clone)]
pub struct Session {
    pub csrf_token: String,
    created: Instant,
    last_seen: Instant,
}

#[derive(Default)]
struct Inner {
    admin_hash: Option<String>,
    setup_code: Option<String>,
    sessions: HashMap<String, Session>,
    failures: HashMap<IpAddr, Vec<Instant>>,
}

pub struct Auth {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

fn new_setup_code() -> String {
    let mut rng = OsRng;
    let chars: Vec<char> = (0..12)
        .map(|_| CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char)
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// Case and separators do not matter when a technician types the code.
fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Opens the credential store in `dir`, creating a setup code when the
    /// appliance has no admin password yet.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, AuthError> {
        let dir = dir.into();
        let store = |e: keel_core::StoreError| AuthError::Store(e.to_string());
        keel_core::store::ensure_dir(&dir, 0o700).map_err(store)?;
        let admin: Option<AdminRecord> =
            keel_core::store::read_json(&dir.join("admin.json")).map_err(store)?;
        let mut inner = Inner {
            admin_hash: admin.map(|a| a.password_hash),
            ..Default::default()
        };
        if inner.admin_hash.is_none() {
            let path = dir.join("setup-code");
            let code = match std::fs::read_to_string(&path) {
                Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
                _ => {
                    let c = new_setup_code();
                    keel_core::store::write_atomic(&path, c.as_bytes(), 0o600).map_err(store)?;
                    tracing::info!("new setup code created (shown on the local console only)");
                    c
                }
            };
            inner.setup_code = Some(code);
        }
        Ok(Self {
            dir,
            inner: Mutex::new(inner),
        })
    }

    pub fn setup_required(&self) -> bool {
        self.inner.lock().unwrap().admin_hash.is_none()
    }

    /// The code for the local console banner; `None` once set up.
    pub fn setup_code(&self) -> Option<String> {
        self.inner.lock().unwrap().setup_code.clone()
    }

    fn check_rate(&self, client: IpAddr) -> Result<(), AuthError> {
        let mut inner = self.inner.lock().unwrap();
        let now = Instant::now();
        let list = inner.failures.entry(client).or_default();
        list.retain(|t| now.duration_since(*t) < FAILURE_WINDOW);
        if list.len() >= MAX_FAILURES {
            let wait = FAILURE_WINDOW.saturating_sub(now.duration_since(list[0]));
            return Err(AuthError::RateLimited(wait.as_secs().max(1)));
        }
        Ok(())
    }

    fn record_failure(&self, client: IpAddr) {
        let mut inner = self.inner.lock().unwrap();
        // Bound memory under a spray of source addresses.
        if inner.failures.len() > 4096 {
            inner.failures.clear();
        }
        inner
            .failures
            .entry(client)
            .or_default()
            .push(Instant::now());
    }

    /// First login: proves physical access with the setup code and sets the admin
    /// password. Returns a new session token and its CSRF token.
    pub fn setup(
        &self,
        client: IpAddr,
        code: &str,
        password: &str,
    ) -> Result<(String, Session), AuthError> {
        self.check_rate(client)?;
        let expected = {
            let inner = self.inner.lock().unwrap();
            if inner.admin_hash.is_some() {
                return Err(AuthError::AlreadySetUp);
            }
            inner.setup_code.clone().unwrap_or_default()
        };
        if !constant_time_eq(
            normalize_code(code).as_bytes(),
            normalize_code(&expected).as_bytes(),
        ) {
            self.record_failure(client);
            return Err(AuthError::WrongSetupCode);
        }
        if password.chars().count() < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
            return Err(AuthError::WeakPassword);
        }
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| AuthError::Store(e.to_string()))?
            .to_string();
        let store = |e: keel_core::StoreError| AuthError::Store(e.to_string());
        {
            // Stored under the lock: a password reset from the local console while
            // the hash was computed replaced the code this setup was checked against.
            let mut inner = self.inner.lock().unwrap();
            if inner.admin_hash.is_some() {
                return Err(AuthError::AlreadySetUp);
            }
            if inner.setup_code.as_deref() != Some(expected.as_str()) {
                return Err(AuthError::WrongSetupCode);
            }
            keel_core::store::write_json(
                &self.dir.join("admin.json"),
                &AdminRecord {
                    password_hash: hash.clone(),
                },
                0o600,
            )
            .map_err(store)?;
            let _ = std::fs::remove_file(self.dir.join("setup-code"));
            inner.admin_hash = Some(hash);
            inner.setup_code = None;
        }
        tracing::info!(%client, "admin password set with the setup code");
        Ok(self.new_session(client))
    }

    /// Checks the admin password (argon2id: slow on purpose, call off the async
    /// executor) and opens a session.
    pub fn login(
        &self,
        client: IpAddr,
        username: &str,
        password: &str,
    ) -> Result<(String, Session), AuthError> {
        self.check_rate(client)?;
        let hash = self
            .inner
            .lock()
            .unwrap()
            .admin_hash
            .clone()
            .ok_or(AuthError::NotSetUp)?;
        let parsed = PasswordHash::new(&hash).map_err(|e| AuthError::Store(e.to_string()))?;
        let ok = username == "admin"
            && password.len() <= MAX_PASSWORD_LEN
            && Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
        if !ok {
            self.record_failure(client);
            tracing::warn!(%client, "failed login");
            return Err(AuthError::WrongPassword);
        }
        self.inner.lock().unwrap().failures.remove(&client);
        tracing::info!(%client, "admin logged in");
        Ok(self.new_session(client))
    }

    fn new_session(&self, _client: IpAddr) -> (String, Session) {
        let token = random_hex(32);
        let now = Instant::now();
        let session = Session {
            csrf_token: random_hex(32),
            created: now,
            last_seen: now,
        };
        let mut inner = self.inner.lock().unwrap();
        inner.sessions.retain(|_, s| s.valid(now));
        if inner.sessions.len() >= MAX_SESSIONS {
            // Drop the oldest: a flood of logins must not grow memory without bound.
            if let Some(oldest) = inner
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            {
                inner.sessions.remove(&oldest);
            }
        }
        inner.sessions.insert(token.clone(), session.clone());
        (token, session)
    }

    /// The live session behind a cookie token, refreshing its idle timer.
    pub fn session(&self, token: &str) -> Option<Session> {
        let mut inner = self.inner.lock().unwrap();
        let now = Instant::now();
        let valid = match inner.sessions.get_mut(token) {
            Some(s) if s.valid(now) => {
                s.last_seen = now;
                Some(s.clone())
            }
            _ => None,
        };
        if valid.is_none() {
            inner.sessions.remove(token);
        }
        valid
    }

    pub fn logout(&self, token: &str) {
        self.inner.lock().unwrap().sessions.remove(token);
    }

    /// Forgets the admin password (the local console menu: physical access is the
    /// authority), ends every session and makes a new one-time setup code, so the
    /// web setup runs again. Returns the new code.
    pub fn reset_admin_password(&self) -> Result<String, AuthError> {
        let store = |e: keel_core::StoreError| AuthError::Store(e.to_string());
        let code = new_setup_code();
        let mut inner = self.inner.lock().unwrap();
        // The code first: a crash in between leaves the old password in force (a
        // stale code file is ignored while admin.json exists), never no way in.
        keel_core::store::write_atomic(&self.dir.join("setup-code"), code.as_bytes(), 0o600)
            .map_err(store)?;
        match std::fs::remove_file(self.dir.join("admin.json")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(AuthError::Store(format!("removing admin.json: {e}"))),
        }
        inner.admin_hash = None;
        inner.setup_code = Some(code.clone());
        inner.sessions.clear();
        tracing::warn!(
            "admin password reset from the local console: every session ended, new setup \
             code created (shown on the local console only)"
        );
        Ok(code)
    }
}

impl std::fmt::Debug for Session {
    // Tokens are secrets: never in logs or panic messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session { .. }")
    }
}

impl Session {
    fn valid(&self, now: Instant) -> bool {
        now.duration_since(self.last_seen) < SESSION_IDLE
            && now.duration_since(self.created) < SESSION_MAX
    }

    pub fn csrf_matches(&self, presented: &str) -> bool {
        constant_time_eq(self.csrf_token.as_bytes(), presented.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn setup_code_is_stable_until_used_then_gone() {
        let dir = tempfile::tempdir().unwrap();
        let a = Auth::open(dir.path()).unwrap();
        let code = a.setup_code().unwrap();
        assert_eq!(code.len(), 14);
        assert!(code
            .chars()
            .all(|c| c == '-' || CODE_ALPHABET.contains(&(c as u8))));
        // Same code after a restart.
        let a = Auth::open(dir.path()).unwrap();
        assert_eq!(a.setup_code().unwrap(), code);
        assert_eq!(
            a.setup(CLIENT, "AAAA-AAAA-AAAA", "long enough")
                .unwrap_err(),
            AuthError::WrongSetupCode
        );
        assert_eq!(
            a.setup(CLIENT, &code, "short").unwrap_err(),
            AuthError::WeakPassword
        );
        assert!(a.setup_required());
        let (token, session) = a
            .setup(CLIENT, &code.to_lowercase(), "long enough")
            .unwrap();
        assert!(a.session(&token).unwrap().csrf_matches(&session.csrf_token));
        assert!(!a.setup_required());
        assert!(a.setup_code().is_none());
        assert!(!dir.path().join("setup-code").exists());
        let a = Auth::open(dir.path()).unwrap();
        assert!(!a.setup_required());
        assert_eq!(
            a.setup(CLIENT, &code, "long enough").unwrap_err(),
            AuthError::AlreadySetUp
        );
        assert!(a.login(CLIENT, "admin", "long enough").is_ok());
        let hash = std::fs::read_to_string(dir.path().join("admin.json")).unwrap();
        assert!(hash.contains("$argon2id$") && !hash.contains("long enough"));
    }

    #[test]
    fn failures_are_rate_limited_per_client() {
        let dir = tempfile::tempdir().unwrap();
        let a = Auth::open(dir.path()).unwrap();
        let code = a.setup_code().unwrap();
        a.setup(CLIENT, &code, "correct horse").unwrap();
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                a.login(CLIENT, "admin", "wrong").unwrap_err(),
                AuthError::WrongPassword
            );
        }
        // Even the right password is refused while limited.
        assert!(matches!(
            a.login(CLIENT, "admin", "correct horse"),
            Err(AuthError::RateLimited(_))
        ));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(a.login(other, "admin", "correct horse").is_ok());
        assert_eq!(
            a.login(other, "root", "correct horse").unwrap_err(),
            AuthError::WrongPassword
        );
    }

    #[test]
    fn password_reset_ends_sessions_and_restarts_setup() {
        let dir = tempfile::tempdir().unwrap();
        let a = Auth::open(dir.path()).unwrap();
        let old_code = a.setup_code().unwrap();
        let (token, _) = a.setup(CLIENT, &old_code, "correct horse").unwrap();
        let (token2, _) = a.login(CLIENT, "admin", "correct horse").unwrap();

        let code = a.reset_admin_password().unwrap();
        assert_ne!(code, old_code);
        assert_eq!(a.setup_code().as_deref(), Some(code.as_str()));
        assert!(a.setup_required());
        assert!(a.session(&token).is_none() && a.session(&token2).is_none());
        assert_eq!(
            a.login(CLIENT, "admin", "correct horse").unwrap_err(),
            AuthError::NotSetUp
        );
        assert!(!dir.path().join("admin.json").exists());
        // Survives a restart of the console: the new code, not set up.
        let a = Auth::open(dir.path()).unwrap();
        assert_eq!(a.setup_code().as_deref(), Some(code.as_str()));
        assert_eq!(
            a.setup(CLIENT, &old_code, "battery staple").unwrap_err(),
            AuthError::WrongSetupCode
        );
        let (token3, _) = a.setup(CLIENT, &code, "battery staple").unwrap();
        assert!(a.session(&token3).is_some());
        assert_eq!(
            a.login(CLIENT, "admin", "correct horse").unwrap_err(),
            AuthError::WrongPassword
        );
        assert!(a.login(CLIENT, "admin", "battery staple").is_ok());
    }

    #[test]
    fn logout_ends_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let a = Auth::open(dir.path()).unwrap();
        let code = a.setup_code().unwrap();
        let (token, _) = a.setup(CLIENT, &code, "correct horse").unwrap();
        a.logout(&token);
        assert!(a.session(&token).is_none());
        assert!(a.session("forged").is_none());
    }
}
