//! Console accounts and their credentials, the one-time setup code, sessions and
//! login rate limiting.
//!
//! Stored under the console's data dir: `users.json` (every account: name, role,
//! argon2id hash, disabled flag, creation time, TOTP secret and hashed recovery
//! codes; 0600), `admin.json` (the `admin` account's hash alone, 0600: what a slot
//! from before accounts reads, and the authority on that hash — see
//! [`Auth::open_with`]) and `setup-code` (0600) while the `admin` account waits
//! for its password. Sessions live in memory only: a reboot logs everyone out,
//! which is what an appliance admin expects.
//!
//! Every login or setup attempt is counted before its credential is checked (so a
//! parallel burst cannot outrun the count), against its source (an IPv4 address or
//! an IPv6 /64) and against the account; the argon2 checks themselves run a few at
//! a time (see [`AuthLimits::verify_permits`]) because each needs ~19 MiB.

mod policy;
mod totp;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use axum::http::StatusCode;
use keel_core::format::FileFormat;
use rand::{rngs::OsRng, Rng, RngCore};
use serde::{Deserialize, Serialize};

pub use keel_api::Role;
pub use policy::{name_problem, password_problem, MAX_PASSWORD_LEN, MIN_PASSWORD_LEN};

/// Letters and digits that cannot be confused when read off a screen (no 0/O, 1/I).
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// The account the setup code and the local console's password reset act on.
pub const ADMIN: &str = "admin";
/// Failed attempts allowed per source (IPv4 address or IPv6 /64) within
/// `FAILURE_WINDOW`.
pub const MAX_FAILURES: usize = 5;
/// Failed attempts allowed on one account within `FAILURE_WINDOW`, from all
/// sources together (user names that do not exist share one budget). Larger than
/// the per-source budget, so one noisy source (whose refused attempts never count
/// here) cannot lock an account out. The trade-off: an attacker with 4 or more
/// sources can keep an account locked for as long as it keeps going, but gets no
/// more than 20 guesses a minute however many addresses it has; the local
/// console's password reset always works for `admin`.
pub const MAX_ACCOUNT_FAILURES: usize = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Session lifetimes until the access policy sets others.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
pub const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);

/// How long a session lives: since its last request, and at most since login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    pub idle: Duration,
    pub max: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            idle: SESSION_IDLE,
            max: SESSION_MAX,
        }
    }
}
const MAX_SESSIONS: usize = 64;

/// How hard the console may be pushed by login and setup attempts.
#[derive(Debug, Clone)]
pub struct AuthLimits {
    /// Attempts (failed or still being checked) per source within `window`.
    pub source_failures: usize,
    /// Attempts on one account within `window`, all sources together.
    pub account_failures: usize,
    pub window: Duration,
    /// Sources remembered at once; past this the least guilty are forgotten first.
    pub max_sources: usize,
    /// Password hashes computed at once. Each needs one argon2 work area of
    /// `m_cost` KiB (19 MiB with the default parameters), given back to the kernel
    /// when the hash is done, so logins add at most `verify_permits × m_cost` to
    /// the resident size: 2 × 19 MiB = 38 MiB by default, on top of the console's
    /// idle baseline (~8 MiB on the appliance) — whatever the number of requests.
    pub verify_permits: usize,
    /// Attempts that may wait for a permit; more are refused at once as busy.
    pub verify_queue: usize,
    /// How long an attempt waits for a permit before it is refused as busy.
    pub verify_wait: Duration,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self {
            source_failures: MAX_FAILURES,
            account_failures: MAX_ACCOUNT_FAILURES,
            window: FAILURE_WINDOW,
            max_sources: 4096,
            // A 2-core appliance: two checks keep both cores busy and take ~38 MiB.
            verify_permits: 2,
            verify_queue: 8,
            verify_wait: Duration::from_secs(5),
        }
    }
}

/// Why an attempt was refused before its credential was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// The source used its budget; seconds until it may try again.
    Source(u64),
    /// The account used its budget; seconds until it may be tried again.
    Account(u64),
    /// Every password check slot is taken and no more may wait.
    Busy,
}

impl std::fmt::Display for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Throttle::Source(s) => write!(
                f,
                "too many failed attempts from this address; try again in {s} s"
            ),
            Throttle::Account(s) => write!(
                f,
                "too many failed attempts on this account; try again in {s} s"
            ),
            Throttle::Busy => f.write_str("busy, try again in a few seconds"),
        }
    }
}

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
    #[error("{0}")]
    RateLimited(Throttle),
    /// Which password rule failed.
    #[error("{0}")]
    WeakPassword(String),
    #[error("{0}")]
    BadUserName(String),
    #[error("a user named {0} exists already")]
    UserExists(String),
    #[error("no user named {0}")]
    NoSuchUser(String),
    /// A change that would leave the appliance without an administrator, or that
    /// an account may not make to itself.
    #[error("{0}")]
    Refused(String),
    #[error(
        "this account has a second factor: enter the code from its authenticator app \
         (or one of its recovery codes)"
    )]
    CodeRequired,
    #[error("wrong or already used authenticator code")]
    WrongCode,
    #[error("no authenticator enrolment is under way: begin one first")]
    NoEnrolment,
    #[error("cannot store credentials: {0}")]
    Store(String),
}

impl AuthError {
    /// How the API answers it; `None` for the server's own failures.
    pub fn status(&self) -> Option<StatusCode> {
        Some(match self {
            AuthError::AlreadySetUp | AuthError::NotSetUp => StatusCode::CONFLICT,
            AuthError::WrongSetupCode
            | AuthError::WrongPassword
            | AuthError::CodeRequired
            | AuthError::WrongCode => StatusCode::UNAUTHORIZED,
            AuthError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            AuthError::WeakPassword(_) | AuthError::BadUserName(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            AuthError::UserExists(_) | AuthError::Refused(_) | AuthError::NoEnrolment => {
                StatusCode::CONFLICT
            }
            AuthError::NoSuchUser(_) => StatusCode::NOT_FOUND,
            AuthError::Store(_) => return None,
        })
    }
}

/// `admin.json`, format 1: the `admin` account's hash, as slots from before
/// accounts read it.
const ADMIN_FILE: FileFormat = FileFormat::first("administrator account");
/// `users.json`, format 1.
pub const USERS_FILE: FileFormat = FileFormat::first("console users");

#[derive(Serialize, Deserialize)]
pub struct AdminRecord {
    /// PHC string (argon2id with its salt and parameters).
    pub password_hash: String,
}

/// `users.json`.
#[derive(Serialize, Deserialize, Default)]
pub struct UsersRecord {
    pub users: Vec<UserRecord>,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct UserRecord {
    pub name: String,
    pub role: Role,
    /// PHC string (argon2id); `None` while `admin` waits for the setup code.
    pub password_hash: Option<String>,
    #[serde(default)]
    pub disabled: bool,
    /// RFC 3339, UTC.
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<TotpRecord>,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct TotpRecord {
    /// Base32 (RFC 4648, no padding), as authenticator apps take it.
    pub secret: String,
    /// SHA-256 (hex) of each unused recovery code. The codes are random (50 bits),
    /// so a fast hash is enough.
    pub recovery_codes: Vec<String>,
    /// The last time step accepted: a code is good once (RFC 6238 §5.2), across
    /// restarts too, so it is stored (older files lack it: 0).
    #[serde(default)]
    pub last_step: u64,
}

#[derive(Clone)]
pub struct Session {
    pub csrf_token: String,
    /// The account it belongs to.
    pub user: String,
    pub role: Role,
    /// Opened by an API token (`Authorization: Bearer`): no cookie, so no CSRF token
    /// is needed — a browser never sends the header by itself.
    pub via_token: bool,
    created: Instant,
    last_seen: Instant,
    /// The account's credential generation it was opened under: void once the
    /// password changes or the account is disabled or deleted.
    generation: u64,
}

/// An account in memory: its record and what is not stored.
struct Account {
    rec: UserRecord,
    /// Unique across accounts and never reused (from `Inner::next_generation`).
    generation: u64,
    /// Attempts on this account within the window, all sources together.
    failures: Vec<Instant>,
    /// A TOTP secret shown but not yet confirmed with a code.
    pending_totp: Option<String>,
}

#[derive(Default)]
struct Inner {
    session_limits: SessionLimits,
    accounts: BTreeMap<String, Account>,
    setup_code: Option<String>,
    next_generation: u64,
    sessions: HashMap<String, Session>,
    /// Attempts per source within the window, oldest first; an attempt is in here
    /// from before its check starts (only a success or an unchecked attempt takes
    /// it out again).
    sources: HashMap<IpAddr, Vec<Instant>>,
    /// The account budget of user names that do not exist, all together (so a
    /// spray of made-up names cannot grow memory).
    unknown: Vec<Instant>,
}

impl Inner {
    fn fresh_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn account_failures(&mut self, user: Option<&str>) -> &mut Vec<Instant> {
        match user.and_then(|u| self.accounts.get_mut(u)) {
            Some(a) => &mut a.failures,
            None => &mut self.unknown,
        }
    }

    fn insert(&mut self, rec: UserRecord) {
        let generation = self.fresh_generation();
        self.accounts.insert(
            rec.name.clone(),
            Account {
                rec,
                generation,
                failures: Vec::new(),
                pending_totp: None,
            },
        );
    }

    /// Ends every session of `user` and voids those being opened.
    fn end_sessions(&mut self, user: &str) {
        let generation = self.fresh_generation();
        if let Some(a) = self.accounts.get_mut(user) {
            a.generation = generation;
        }
        self.sessions.retain(|_, s| s.user != user);
    }

    fn enabled_admins(&self) -> usize {
        self.accounts
            .values()
            .filter(|a| a.rec.role == Role::Administrator && !a.rec.disabled)
            .count()
    }
}

/// One counted attempt: where it came from, on which account and when.
struct Attempt {
    source: IpAddr,
    /// `None`: a user name that does not exist.
    account: Option<String>,
    at: Instant,
}

pub struct Auth {
    dir: PathBuf,
    limits: AuthLimits,
    inner: Mutex<Inner>,
    gate: Gate,
}

/// The per-source key: an IPv4 address (also when it arrives IPv4-mapped on a
/// dual-stack socket) or an IPv6 /64, the smallest block a site is given.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
    }
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

/// Admits a few password hashes at a time (each allocates its work area, see
/// `work_area`).
struct Gate {
    permits: usize,
    queue: usize,
    wait: Duration,
    state: Mutex<GateState>,
    freed: Condvar,
}

#[derive(Default)]
struct GateState {
    running: usize,
    waiting: usize,
}

struct GatePermit<'a> {
    gate: &'a Gate,
}

impl Gate {
    fn new(limits: &AuthLimits) -> Self {
        Self {
            permits: limits.verify_permits.max(1),
            queue: limits.verify_queue,
            wait: limits.verify_wait,
            state: Mutex::default(),
            freed: Condvar::new(),
        }
    }

    /// A permit, waiting a bounded time in a bounded queue; `None` when busy.
    fn acquire(&self) -> Option<GatePermit<'_>> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.running >= self.permits {
            if s.waiting >= self.queue {
                return None;
            }
            s.waiting += 1;
            let deadline = Instant::now() + self.wait;
            while s.running >= self.permits {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    s.waiting -= 1;
                    return None;
                }
                s = self
                    .freed
                    .wait_timeout(s, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            s.waiting -= 1;
        }
        s.running += 1;
        Some(GatePermit { gate: self })
    }
}

impl Drop for GatePermit<'_> {
    fn drop(&mut self) {
        let mut s = self.gate.state.lock().unwrap_or_else(|p| p.into_inner());
        s.running -= 1;
        drop(s);
        self.gate.freed.notify_one();
    }
}

/// Blocks (1 KiB each) reserved for a work area at least: above glibc's largest
/// dynamic mmap threshold (32 MiB on 64-bit), so each area is a mapping of its
/// own that goes back to the kernel when freed. A 19 MiB area would otherwise come
/// from a thread's arena after the first, and stay resident there once freed —
/// in every arena that ever ran a hash. Only the blocks written become resident.
const AREA_RESERVE_BLOCKS: usize = 33 * 1024;

/// An argon2 work area for `params` (only while a `GatePermit` is held).
fn work_area(params: &Params) -> Vec<Block> {
    let mut area = Vec::with_capacity(params.block_count().max(AREA_RESERVE_BLOCKS));
    area.resize(params.block_count(), Block::default());
    area
}

/// A new argon2id PHC string for `password` (the same as `PasswordHasher` makes).
fn hash_password(password: &[u8], _permit: &GatePermit<'_>) -> Result<String, AuthError> {
    let err = |e: argon2::password_hash::Error| AuthError::Store(format!("hashing: {e}"));
    let argon2 = Argon2::default();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_buf).map_err(err)?;
    let len = argon2
        .params()
        .output_len()
        .unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(len, |out| {
        Ok(argon2.hash_password_into_with_memory(
            password,
            salt_bytes,
            out,
            work_area(argon2.params()),
        )?)
    })
    .map_err(err)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon2.params()).map_err(err)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc` (as `PasswordVerifier` does,
/// in constant time).
fn verify_password(
    phc: &str,
    password: &[u8],
    _permit: &GatePermit<'_>,
) -> Result<bool, AuthError> {
    let err = |e: argon2::password_hash::Error| AuthError::Store(format!("stored hash: {e}"));
    let parsed = PasswordHash::new(phc).map_err(err)?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(err)?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(|e| err(e.into()))?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).map_err(err)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(AuthError::Store("stored hash has no salt or output".into()));
    };
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf).map_err(err)?;
    let argon2 = Argon2::new(algorithm, version, params);
    let output = Output::init_with(expected.len(), |out| {
        Ok(argon2.hash_password_into_with_memory(
            password,
            salt,
            out,
            work_area(argon2.params()),
        )?)
    })
    .map_err(err)?;
    Ok(output == expected)
}

fn user_view(rec: &UserRecord) -> keel_api::User {
    keel_api::User {
        name: rec.name.clone(),
        role: rec.role,
        totp: rec.totp.is_some(),
        disabled: rec.disabled,
        created: rec.created.clone(),
    }
}

fn store_err(e: keel_core::StoreError) -> AuthError {
    AuthError::Store(e.to_string())
}

impl Auth {
    /// Opens the credential store in `dir`, creating a setup code when the
    /// appliance has no admin password yet.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, AuthError> {
        Self::open_with(dir, AuthLimits::default())
    }

    /// `open` with other limits (tests use small ones).
    ///
    /// `admin.json` is the authority on the `admin` account's hash: every write
    /// stores it before `users.json`, and a slot from before accounts (after a
    /// rollback) changes only it. So an `admin.json` that says otherwise than
    /// `users.json` was written later; none means no admin password (a reset).
    /// Without `users.json` (the first start after the update) it becomes the
    /// `admin` account.
    pub fn open_with(dir: impl Into<PathBuf>, limits: AuthLimits) -> Result<Self, AuthError> {
        let dir = dir.into();
        keel_core::store::ensure_dir(&dir, 0o700).map_err(store_err)?;
        let users: Option<UsersRecord> = USERS_FILE
            .read(&dir.join("users.json"))
            .map_err(store_err)?;
        let admin: Option<AdminRecord> = ADMIN_FILE
            .read(&dir.join("admin.json"))
            .map_err(store_err)?;
        let mut inner = Inner::default();
        let migrated = users.is_none();
        for rec in users.unwrap_or_default().users {
            inner.insert(rec);
        }
        let admin_hash = admin.map(|a| a.password_hash);
        match inner.accounts.get_mut(ADMIN) {
            Some(a) if a.rec.password_hash != admin_hash => {
                if admin_hash.is_none() {
                    // A reset from the local console starts over, second factor too.
                    a.rec.totp = None;
                }
                a.rec.password_hash = admin_hash;
            }
            Some(_) => {}
            None if admin_hash.is_some() => {
                if migrated {
                    tracing::info!("admin.json becomes the admin account of users.json");
                }
                inner.insert(UserRecord {
                    name: ADMIN.into(),
                    role: Role::Administrator,
                    password_hash: admin_hash,
                    disabled: false,
                    created: crate::status::now_rfc3339(),
                    totp: None,
                });
            }
            None => {}
        }
        let admin_waits = inner
            .accounts
            .get(ADMIN)
            .is_some_and(|a| a.rec.password_hash.is_none());
        if inner.accounts.is_empty() || admin_waits {
            let path = dir.join("setup-code");
            let code = match std::fs::read_to_string(&path) {
                Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
                _ => {
                    let c = new_setup_code();
                    keel_core::store::write_atomic(&path, c.as_bytes(), 0o600)
                        .map_err(store_err)?;
                    tracing::info!("new setup code created (shown on the local console only)");
                    c
                }
            };
            inner.setup_code = Some(code);
        }
        Ok(Self {
            dir,
            gate: Gate::new(&limits),
            limits,
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what `inner` holds: `admin.json` first (see `open_with`), then
    /// `users.json`.
    fn persist(&self, inner: &Inner) -> Result<(), AuthError> {
        let admin_path = self.dir.join("admin.json");
        match inner
            .accounts
            .get(ADMIN)
            .and_then(|a| a.rec.password_hash.clone())
        {
            Some(password_hash) => {
                ADMIN_FILE.write(&admin_path, &AdminRecord { password_hash }, 0o600)
            }
            None => ADMIN_FILE.remove(&admin_path).map(|_| ()),
        }
        .map_err(store_err)?;
        let users = UsersRecord {
            users: inner.accounts.values().map(|a| a.rec.clone()).collect(),
        };
        USERS_FILE
            .write(&self.dir.join("users.json"), &users, 0o600)
            .map_err(store_err)
    }

    /// Whether the `admin` account waits for its password (setup code).
    pub fn setup_required(&self) -> bool {
        self.lock().setup_code.is_some()
    }

    /// Whether no account can log in at all (then the console shows the setup).
    pub fn nobody_can_log_in(&self) -> bool {
        !self
            .lock()
            .accounts
            .values()
            .any(|a| a.rec.password_hash.is_some() && !a.rec.disabled)
    }

    /// The code for the local console banner; `None` once set up.
    pub fn setup_code(&self) -> Option<String> {
        self.lock().setup_code.clone()
    }

    /// Counts an attempt from `client` on `user` against its source and the
    /// account, before anything is checked: a parallel burst sees every earlier
    /// attempt of it. Refusals create no entry, and one refused for its source
    /// does not count against the account (a noisy source must not lock it out).
    fn reserve(&self, inner: &mut Inner, client: IpAddr, user: &str) -> Result<Attempt, AuthError> {
        let now = Instant::now();
        let window = self.limits.window;
        let wait = |first: Instant| {
            let left = window.saturating_sub(now.duration_since(first));
            left.as_secs().max(1)
        };
        let source = source_key(client);
        if let Some(list) = inner.sources.get_mut(&source) {
            list.retain(|t| now.duration_since(*t) < window);
            if list.len() >= self.limits.source_failures {
                return Err(AuthError::RateLimited(Throttle::Source(wait(list[0]))));
            }
        }
        let account = inner.accounts.contains_key(user).then(|| user.to_owned());
        let budget = inner.account_failures(account.as_deref());
        budget.retain(|t| now.duration_since(*t) < window);
        if budget.len() >= self.limits.account_failures {
            return Err(AuthError::RateLimited(Throttle::Account(wait(budget[0]))));
        }
        budget.push(now);
        let filled = budget.len() == self.limits.account_failures;
        if !inner.sources.contains_key(&source) {
            self.make_room(inner, now);
        }
        inner.sources.entry(source).or_default().push(now);
        if filled {
            // Once per filling, not per refusal: a flood must not flood the journal.
            tracing::warn!(
                %client,
                account = account.as_deref().unwrap_or("(unknown names)"),
                "{} attempts within {} s, further ones refused for now",
                self.limits.account_failures,
                window.as_secs()
            );
        }
        Ok(Attempt {
            source,
            account,
            at: now,
        })
    }

    /// Bounds the source table without forgetting the worst offenders: expired
    /// entries go first, then those with the fewest recent attempts (the stalest
    /// of them first).
    fn make_room(&self, inner: &mut Inner, now: Instant) {
        if inner.sources.len() < self.limits.max_sources {
            return;
        }
        let window = self.limits.window;
        inner.sources.retain(|_, list| {
            list.retain(|t| now.duration_since(*t) < window);
            !list.is_empty()
        });
        while !inner.sources.is_empty() && inner.sources.len() >= self.limits.max_sources {
            let victim = inner
                .sources
                .iter()
                .min_by_key(|(_, list)| (list.len(), list.last().copied()))
                .map(|(k, _)| *k);
            if let Some(k) = victim {
                inner.sources.remove(&k);
            }
        }
    }

    /// The attempt checked nothing (busy, weak password, changed meanwhile): it
    /// was no guess, so it leaves no trace.
    fn unreserve(inner: &mut Inner, attempt: &Attempt) {
        if let Some(list) = inner.sources.get_mut(&attempt.source) {
            remove_one(list, attempt.at);
            if list.is_empty() {
                inner.sources.remove(&attempt.source);
            }
        }
        remove_one(
            inner.account_failures(attempt.account.as_deref()),
            attempt.at,
        );
    }

    /// The right credential: the source's failures are forgiven and the attempt
    /// does not count against the account.
    fn succeeded(inner: &mut Inner, attempt: &Attempt) {
        inner.sources.remove(&attempt.source);
        remove_one(
            inner.account_failures(attempt.account.as_deref()),
            attempt.at,
        );
    }

    /// A password check slot, or the attempt is given back and refused as busy.
    fn permit(&self, attempt: &Attempt, client: IpAddr) -> Result<GatePermit<'_>, AuthError> {
        self.gate.acquire().ok_or_else(|| {
            Self::unreserve(&mut self.lock(), attempt);
            tracing::warn!(%client, "attempt refused: password checks busy");
            AuthError::RateLimited(Throttle::Busy)
        })
    }

    /// A slot for hashing a new password (an administrator's or the user's own
    /// change: no guess, so nothing is counted).
    fn hash_new(&self, password: &str) -> Result<String, AuthError> {
        let permit = self
            .gate
            .acquire()
            .ok_or(AuthError::RateLimited(Throttle::Busy))?;
        hash_password(password.as_bytes(), &permit)
    }

    /// First login: proves physical access with the setup code and sets the
    /// password of `admin` (an administrator, made anew if it was deleted). Returns
    /// a new session token and its CSRF token. Ends every other session of `admin`.
    pub fn setup(
        &self,
        client: IpAddr,
        code: &str,
        password: &str,
    ) -> Result<(String, Session), AuthError> {
        let (attempt, expected) = {
            let mut inner = self.lock();
            let Some(expected) = inner.setup_code.clone() else {
                return Err(AuthError::AlreadySetUp);
            };
            (self.reserve(&mut inner, client, ADMIN)?, expected)
        };
        if !constant_time_eq(
            normalize_code(code).as_bytes(),
            normalize_code(&expected).as_bytes(),
        ) {
            tracing::warn!(%client, "wrong setup code");
            return Err(AuthError::WrongSetupCode);
        }
        if let Some(problem) = password_problem(password, ADMIN, &policy::hostname()) {
            Self::unreserve(&mut self.lock(), &attempt);
            return Err(AuthError::WeakPassword(problem));
        }
        let hash = {
            let permit = self.permit(&attempt, client)?;
            hash_password(password.as_bytes(), &permit)
        };
        let mut inner = self.lock();
        let hash = match hash {
            Ok(h) => h,
            Err(e) => {
                Self::unreserve(&mut inner, &attempt);
                return Err(e);
            }
        };
        // Checked again under the lock: a password reset from the local console
        // while the hash was computed replaced the code this setup was checked
        // against, and another setup may have come first.
        if inner.setup_code.as_deref() != Some(expected.as_str()) {
            Self::unreserve(&mut inner, &attempt);
            return Err(match inner.setup_code {
                None => AuthError::AlreadySetUp,
                Some(_) => AuthError::WrongSetupCode,
            });
        }
        let previous = inner.accounts.get(ADMIN).map(|a| a.rec.clone());
        let mut rec = previous.clone().unwrap_or_else(|| UserRecord {
            name: ADMIN.into(),
            role: Role::Administrator,
            password_hash: None,
            disabled: false,
            created: crate::status::now_rfc3339(),
            totp: None,
        });
        rec.password_hash = Some(hash);
        rec.role = Role::Administrator;
        rec.disabled = false;
        rec.totp = None;
        match inner.accounts.get_mut(ADMIN) {
            Some(a) => a.rec = rec,
            None => inner.insert(rec),
        }
        if let Err(e) = self.persist(&inner) {
            match previous {
                Some(p) => inner.accounts.get_mut(ADMIN).expect("just set").rec = p,
                None => {
                    inner.accounts.remove(ADMIN);
                }
            }
            Self::unreserve(&mut inner, &attempt);
            return Err(e);
        }
        // A code file left behind would be ignored while admin.json exists.
        if let Err(e) = keel_core::store::remove_durable(&self.dir.join("setup-code")) {
            tracing::warn!("removing the used setup code: {e}");
        }
        inner.setup_code = None;
        inner.end_sessions(ADMIN);
        Self::succeeded(&mut inner, &attempt);
        let granted = Self::new_session(&mut inner, ADMIN).expect("admin exists");
        drop(inner);
        tracing::info!(%client, "admin password set with the setup code");
        Ok(granted)
    }

    /// `login_with_code` for an account without a second factor.
    pub fn login(
        &self,
        client: IpAddr,
        username: &str,
        password: &str,
    ) -> Result<(String, Session), AuthError> {
        self.login_with_code(client, username, password, None)
    }

    /// Checks the password of `username` (argon2id: slow on purpose, call off the
    /// async executor), then its TOTP or recovery code when it has a second factor,
    /// and opens a session, unless the account changed meanwhile. A disabled
    /// account fails as a wrong password does.
    pub fn login_with_code(
        &self,
        client: IpAddr,
        username: &str,
        password: &str,
        code: Option<&str>,
    ) -> Result<(String, Session), AuthError> {
        let (attempt, hash, generation) = {
            let mut inner = self.lock();
            if !inner
                .accounts
                .values()
                .any(|a| a.rec.password_hash.is_some())
            {
                return Err(AuthError::NotSetUp);
            }
            let attempt = self.reserve(&mut inner, client, username)?;
            let account = inner.accounts.get(username).filter(|a| !a.rec.disabled);
            (
                attempt,
                account.and_then(|a| a.rec.password_hash.clone()),
                account.map(|a| a.generation),
            )
        };
        // A name that does not exist (or cannot log in) fails without a slow hash,
        // counted the same.
        let ok = match &hash {
            Some(hash) if password.len() <= MAX_PASSWORD_LEN => {
                let permit = self.permit(&attempt, client)?;
                match verify_password(hash, password.as_bytes(), &permit) {
                    Ok(ok) => ok,
                    Err(e) => {
                        drop(permit);
                        Self::unreserve(&mut self.lock(), &attempt);
                        return Err(e);
                    }
                }
            }
            _ => false,
        };
        if !ok {
            // Already counted by `reserve`.
            tracing::warn!(%client, user = username, "failed login");
            return Err(AuthError::WrongPassword);
        }
        let mut inner = self.lock();
        let Some(account) = inner
            .accounts
            .get_mut(username)
            .filter(|a| Some(a.generation) == generation && !a.rec.disabled)
        else {
            // Checked against a password that is gone: it opens nothing now.
            Self::unreserve(&mut inner, &attempt);
            tracing::warn!(%client, user = username, "login refused: the account changed while it was checked");
            return Err(AuthError::WrongPassword);
        };
        if let Some(t) = account.rec.totp.clone() {
            // The attempt stays counted until the second factor passes too.
            let Some(code) = code.map(str::trim).filter(|c| !c.is_empty()) else {
                return Err(AuthError::CodeRequired);
            };
            if let Some(step) = totp::check(&t.secret, username, code) {
                if step <= t.last_step {
                    tracing::warn!(%client, user = username, "authenticator code replayed");
                    return Err(AuthError::WrongCode);
                }
                account.rec.totp.as_mut().expect("checked").last_step = step;
                // Stored before the session opens: after a restart the code is
                // still spent.
                self.persist(&inner)?;
            } else if let Some(i) = totp::find_recovery(&t.recovery_codes, code) {
                let rec = &mut account.rec;
                rec.totp.as_mut().expect("checked").recovery_codes.remove(i);
                // Not stored as used: it must not open a session either.
                self.persist(&inner)?;
                tracing::warn!(%client, user = username, "recovery code used");
            } else {
                tracing::warn!(%client, user = username, "wrong authenticator code");
                return Err(AuthError::WrongCode);
            }
        }
        Self::succeeded(&mut inner, &attempt);
        let granted = Self::new_session(&mut inner, username).expect("account checked");
        drop(inner);
        tracing::info!(%client, user = username, "logged in");
        Ok(granted)
    }

    /// A new session of `user`'s current generation; the caller holds the lock,
    /// so it cannot outlive a password change that came first.
    fn new_session(inner: &mut Inner, user: &str) -> Option<(String, Session)> {
        let account = inner.accounts.get(user)?;
        let token = random_hex(32);
        let now = Instant::now();
        let session = Session {
            csrf_token: random_hex(32),
            user: user.to_owned(),
            role: account.rec.role,
            via_token: false,
            created: now,
            last_seen: now,
            generation: account.generation,
        };
        let limits = inner.session_limits;
        inner.sessions.retain(|_, s| s.valid(now, &limits));
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
        Some((token, session))
    }

    /// The live session behind a cookie token, refreshing its idle timer. Its role
    /// is the account's now.
    pub fn session(&self, token: &str) -> Option<Session> {
        let mut inner = self.lock();
        let now = Instant::now();
        let limits = inner.session_limits;
        let Inner {
            sessions, accounts, ..
        } = &mut *inner;
        let valid = match sessions.get_mut(token) {
            Some(s) if s.valid(now, &limits) => accounts
                .get(&s.user)
                .filter(|a| a.generation == s.generation && !a.rec.disabled)
                .map(|a| {
                    s.last_seen = now;
                    s.role = a.rec.role;
                    s.clone()
                }),
            _ => None,
        };
        if valid.is_none() {
            inner.sessions.remove(token);
        }
        valid
    }

    /// The role of an enabled account (what an API token of it may do now).
    pub fn account_role(&self, user: &str) -> Option<Role> {
        self.lock()
            .accounts
            .get(user)
            .filter(|a| !a.rec.disabled)
            .map(|a| a.rec.role)
    }

    /// New lifetimes (the access policy); open sessions are held to them at once.
    pub fn set_session_limits(&self, limits: SessionLimits) {
        self.lock().session_limits = limits;
    }

    pub fn logout(&self, token: &str) {
        self.lock().sessions.remove(token);
    }

    /// Forgets the `admin` account's password and second factor (the local console
    /// menu: physical access is the authority), ends its sessions and makes a new
    /// one-time setup code, so the web setup runs again for it (and makes it an
    /// enabled administrator, anew if it was deleted). Other accounts stay.
    /// Returns the new code.
    pub fn reset_admin_password(&self) -> Result<String, AuthError> {
        let code = new_setup_code();
        let mut inner = self.lock();
        // The code first: a crash in between leaves the old password in force (a
        // stale code file is ignored while admin.json exists), never no way in.
        keel_core::store::write_atomic(&self.dir.join("setup-code"), code.as_bytes(), 0o600)
            .map_err(store_err)?;
        if let Some(a) = inner.accounts.get_mut(ADMIN) {
            a.rec.password_hash = None;
            a.rec.totp = None;
        }
        // Durably gone: after a power cut the old password must not come back.
        self.persist(&inner)?;
        inner.setup_code = Some(code.clone());
        inner.end_sessions(ADMIN);
        tracing::warn!(
            "admin password reset from the local console: its sessions ended, new setup \
             code created (shown on the local console only)"
        );
        Ok(code)
    }

    /// Every account, by name.
    pub fn users(&self) -> Vec<keel_api::User> {
        self.lock()
            .accounts
            .values()
            .map(|a| user_view(&a.rec))
            .collect()
    }

    /// Adds an account (by an administrator: hashes the password off the lock).
    pub fn add_user(&self, new: &keel_api::NewUser) -> Result<keel_api::User, AuthError> {
        if let Some(p) = name_problem(&new.name) {
            return Err(AuthError::BadUserName(p));
        }
        if self.lock().accounts.contains_key(&new.name) {
            return Err(AuthError::UserExists(new.name.clone()));
        }
        if let Some(p) = password_problem(&new.password, &new.name, &policy::hostname()) {
            return Err(AuthError::WeakPassword(p));
        }
        let hash = self.hash_new(&new.password)?;
        let mut inner = self.lock();
        if inner.accounts.contains_key(&new.name) {
            return Err(AuthError::UserExists(new.name.clone()));
        }
        let rec = UserRecord {
            name: new.name.clone(),
            role: new.role,
            password_hash: Some(hash),
            disabled: false,
            created: crate::status::now_rfc3339(),
            totp: None,
        };
        let view = user_view(&rec);
        inner.insert(rec);
        if let Err(e) = self.persist(&inner) {
            inner.accounts.remove(&new.name);
            return Err(e);
        }
        tracing::info!(user = %new.name, role = new.role.as_str(), "user added");
        Ok(view)
    }

    /// Whether taking `name` out of the enabled administrators leaves one.
    fn check_keeps_an_admin(inner: &Inner, name: &str) -> Result<(), AuthError> {
        let a = &inner.accounts[name];
        if a.rec.role == Role::Administrator && !a.rec.disabled && inner.enabled_admins() <= 1 {
            return Err(AuthError::Refused(format!(
                "{name} is the last enabled administrator: add or enable another first"
            )));
        }
        Ok(())
    }

    /// Disables or enables an account, or changes its role (by `actor`, an
    /// administrator). Disabling ends its sessions at once.
    pub fn change_user(
        &self,
        actor: &str,
        name: &str,
        change: &keel_api::UserChange,
    ) -> Result<keel_api::User, AuthError> {
        let mut inner = self.lock();
        let Some(before) = inner.accounts.get(name).map(|a| a.rec.clone()) else {
            return Err(AuthError::NoSuchUser(name.to_owned()));
        };
        let disable = change.disabled == Some(true) && !before.disabled;
        let demote = change.role == Some(Role::Auditor) && before.role == Role::Administrator;
        if name == actor && (disable || demote) {
            return Err(AuthError::Refused(
                "you cannot disable your own account or take away your own role; ask \
                 another administrator"
                    .into(),
            ));
        }
        if disable || demote {
            Self::check_keeps_an_admin(&inner, name)?;
        }
        let account = inner.accounts.get_mut(name).expect("checked");
        if let Some(d) = change.disabled {
            account.rec.disabled = d;
        }
        if let Some(r) = change.role {
            account.rec.role = r;
        }
        let view = user_view(&account.rec);
        if let Err(e) = self.persist(&inner) {
            inner.accounts.get_mut(name).expect("checked").rec = before;
            return Err(e);
        }
        if disable {
            inner.end_sessions(name);
        }
        tracing::info!(
            user = name,
            by = actor,
            disabled = view.disabled,
            role = view.role.as_str(),
            "user changed"
        );
        Ok(view)
    }

    /// Deletes an account (by `actor`); its sessions end at once.
    pub fn delete_user(&self, actor: &str, name: &str) -> Result<(), AuthError> {
        let mut inner = self.lock();
        if !inner.accounts.contains_key(name) {
            return Err(AuthError::NoSuchUser(name.to_owned()));
        }
        if name == actor {
            return Err(AuthError::Refused(
                "you cannot delete your own account; ask another administrator".into(),
            ));
        }
        Self::check_keeps_an_admin(&inner, name)?;
        let removed = inner.accounts.remove(name).expect("checked");
        if let Err(e) = self.persist(&inner) {
            inner.accounts.insert(name.to_owned(), removed);
            return Err(e);
        }
        inner.sessions.retain(|_, s| s.user != name);
        tracing::info!(user = name, by = actor, "user deleted");
        Ok(())
    }

    /// Checks `password` of `user` for a change of its own credentials: counted
    /// like a login (a stolen session must not become a password oracle).
    fn check_own_password(
        &self,
        client: IpAddr,
        user: &str,
        password: &str,
    ) -> Result<(Attempt, u64), AuthError> {
        let (attempt, hash, generation) = {
            let mut inner = self.lock();
            let attempt = self.reserve(&mut inner, client, user)?;
            let a = inner.accounts.get(user);
            (
                attempt,
                a.and_then(|a| a.rec.password_hash.clone()),
                a.map(|a| a.generation).unwrap_or_default(),
            )
        };
        let ok = match hash {
            Some(h) if password.len() <= MAX_PASSWORD_LEN => {
                let permit = self.permit(&attempt, client)?;
                verify_password(&h, password.as_bytes(), &permit).inspect_err(|_| {
                    Self::unreserve(&mut self.lock(), &attempt);
                })?
            }
            _ => false,
        };
        if !ok {
            tracing::warn!(%client, user, "wrong current password");
            return Err(AuthError::Refused("the current password is wrong".into()));
        }
        Ok((attempt, generation))
    }

    /// The user's own password change: the current one must be right; every other
    /// session of the account ends, the one behind `token` stays.
    pub fn change_password(
        &self,
        client: IpAddr,
        token: &str,
        user: &str,
        current: &str,
        new: &str,
    ) -> Result<(), AuthError> {
        if let Some(p) = password_problem(new, user, &policy::hostname()) {
            return Err(AuthError::WeakPassword(p));
        }
        let (attempt, generation) = self.check_own_password(client, user, current)?;
        let hash = self.hash_new(new).inspect_err(|_| {
            Self::unreserve(&mut self.lock(), &attempt);
        })?;
        let mut inner = self.lock();
        Self::succeeded(&mut inner, &attempt);
        let Some(account) = inner
            .accounts
            .get_mut(user)
            .filter(|a| a.generation == generation)
        else {
            return Err(AuthError::Refused(
                "the account changed meanwhile; log in again".into(),
            ));
        };
        let before = account.rec.password_hash.replace(hash);
        if let Err(e) = self.persist(&inner) {
            inner
                .accounts
                .get_mut(user)
                .expect("checked")
                .rec
                .password_hash = before;
            return Err(e);
        }
        let keep = inner.sessions.remove(token);
        inner.end_sessions(user);
        if let Some(mut s) = keep {
            s.generation = inner.accounts[user].generation;
            inner.sessions.insert(token.to_owned(), s);
        }
        tracing::info!(%client, user, "password changed by its user");
        Ok(())
    }

    /// Starts a TOTP enrolment for `user`: a new secret, in force only once
    /// `totp_confirm` sees a code made with it.
    pub fn totp_begin(&self, user: &str) -> Result<keel_api::TotpEnrolment, AuthError> {
        let secret = totp::new_secret();
        let uri = totp::uri(&secret, user, &policy::hostname())?;
        let mut inner = self.lock();
        let a = inner
            .accounts
            .get_mut(user)
            .ok_or_else(|| AuthError::NoSuchUser(user.to_owned()))?;
        a.pending_totp = Some(secret.clone());
        Ok(keel_api::TotpEnrolment { secret, uri })
    }

    /// Puts the enrolment in force when `code` was made with its secret; the ten
    /// recovery codes, shown this once.
    pub fn totp_confirm(&self, user: &str, code: &str) -> Result<Vec<String>, AuthError> {
        let mut inner = self.lock();
        let a = inner
            .accounts
            .get_mut(user)
            .ok_or_else(|| AuthError::NoSuchUser(user.to_owned()))?;
        let secret = a.pending_totp.clone().ok_or(AuthError::NoEnrolment)?;
        let step = totp::check(&secret, user, code.trim()).ok_or(AuthError::WrongCode)?;
        let (codes, hashes) = totp::recovery_codes();
        let before = a.rec.totp.replace(TotpRecord {
            secret,
            recovery_codes: hashes,
            last_step: step,
        });
        if let Err(e) = self.persist(&inner) {
            inner.accounts.get_mut(user).expect("checked").rec.totp = before;
            return Err(e);
        }
        inner.accounts.get_mut(user).expect("checked").pending_totp = None;
        tracing::info!(user, "second factor (TOTP) enrolled");
        Ok(codes)
    }

    /// Removes the second factor of `user` (its password must be right).
    pub fn totp_remove(&self, client: IpAddr, user: &str, password: &str) -> Result<(), AuthError> {
        let (attempt, _) = self.check_own_password(client, user, password)?;
        let mut inner = self.lock();
        Self::succeeded(&mut inner, &attempt);
        let a = inner
            .accounts
            .get_mut(user)
            .ok_or_else(|| AuthError::NoSuchUser(user.to_owned()))?;
        let before = a.rec.totp.take();
        a.pending_totp = None;
        if let Err(e) = self.persist(&inner) {
            inner.accounts.get_mut(user).expect("checked").rec.totp = before;
            return Err(e);
        }
        tracing::info!(user, "second factor (TOTP) removed");
        Ok(())
    }
}

/// Removes one occurrence of `at` (an attempt's own timestamp).
fn remove_one(list: &mut Vec<Instant>, at: Instant) {
    if let Some(i) = list.iter().position(|t| *t == at) {
        list.remove(i);
    }
}

impl std::fmt::Debug for Session {
    // Tokens are secrets: never in logs or panic messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session { .. }")
    }
}

impl Session {
    fn valid(&self, now: Instant, limits: &SessionLimits) -> bool {
        now.duration_since(self.last_seen) < limits.idle
            && now.duration_since(self.created) < limits.max
    }

    /// The identity of a request made with an API token (checked by `tokens`).
    pub fn bearer(user: String, role: Role) -> Self {
        let now = Instant::now();
        Session {
            csrf_token: String::new(),
            user,
            role,
            via_token: true,
            created: now,
            last_seen: now,
            generation: 0,
        }
    }

    /// For an HTML form: a browser's session with its CSRF token. An API token
    /// (which needs no CSRF token) is refused: forms are not the API.
    pub fn form_csrf_matches(&self, presented: &str) -> bool {
        !self.via_token && self.csrf_matches(presented)
    }

    pub fn csrf_matches(&self, presented: &str) -> bool {
        if self.via_token {
            return true;
        }
        !self.csrf_token.is_empty()
            && constant_time_eq(self.csrf_token.as_bytes(), presented.as_bytes())
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
            a.setup(CLIENT, "AAAA-AAAA-AAAA", "long enough password")
                .unwrap_err(),
            AuthError::WrongSetupCode
        );
        assert_eq!(
            a.setup(CLIENT, &code, "short").unwrap_err(),
            AuthError::WeakPassword(
                "the password is too short: it needs at least 12 characters (5 given)".into()
            )
        );
        assert!(a.setup_required());
        let (token, session) = a
            .setup(CLIENT, &code.to_lowercase(), "long enough password")
            .unwrap();
        assert!(a.session(&token).unwrap().csrf_matches(&session.csrf_token));
        assert!(!a.setup_required());
        assert!(a.setup_code().is_none());
        assert!(!dir.path().join("setup-code").exists());
        let a = Auth::open(dir.path()).unwrap();
        assert!(!a.setup_required());
        assert_eq!(
            a.setup(CLIENT, &code, "long enough password").unwrap_err(),
            AuthError::AlreadySetUp
        );
        assert!(a.login(CLIENT, "admin", "long enough password").is_ok());
        let hash = std::fs::read_to_string(dir.path().join("admin.json")).unwrap();
        assert!(hash.contains("$argon2id$") && !hash.contains("long enough password"));
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

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn set_up(limits: AuthLimits) -> (tempfile::TempDir, Arc<Auth>) {
        let dir = tempfile::tempdir().unwrap();
        let a = Auth::open_with(dir.path(), limits).unwrap();
        let code = a.setup_code().unwrap();
        a.setup(CLIENT, &code, "correct horse").unwrap();
        (dir, Arc::new(a))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Runs `n` logins from `client` at once; their results.
    fn burst(a: &Arc<Auth>, n: usize, client: IpAddr, password: &str) -> Vec<AuthError> {
        let start = Arc::new(std::sync::Barrier::new(n));
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let (a, start, password) = (a.clone(), start.clone(), password.to_owned());
                std::thread::spawn(move || {
                    start.wait();
                    a.login(client, "admin", &password).map(|_| ()).unwrap_err()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    #[test]
    fn a_parallel_burst_is_counted_before_any_hash_is_checked() {
        let (_dir, a) = set_up(AuthLimits::default());
        let results = burst(&a, 40, CLIENT, "wrong");
        let wrong = results
            .iter()
            .filter(|e| **e == AuthError::WrongPassword)
            .count();
        assert_eq!(wrong, MAX_FAILURES, "{results:?}");
        assert!(results.iter().all(|e| *e == AuthError::WrongPassword
            || matches!(e, AuthError::RateLimited(Throttle::Source(_)))));
        // Refused attempts did not count against the account: another address
        // logs in, and the noisy one stays locked out even with the password.
        assert_eq!(a.lock().accounts[ADMIN].failures.len(), MAX_FAILURES);
        assert!(a.login(ip("192.0.2.99"), "admin", "correct horse").is_ok());
        assert!(matches!(
            a.login(CLIENT, "admin", "correct horse"),
            Err(AuthError::RateLimited(Throttle::Source(_)))
        ));
    }

    #[test]
    fn two_hundred_wrong_logins_lock_their_source_only() {
        let (_dir, a) = set_up(AuthLimits::default());
        for _ in 0..200 {
            assert!(a.login(CLIENT, "admin", "wrong").is_err());
        }
        let other = ip("198.51.100.7");
        assert!(a.login(other, "admin", "correct horse").is_ok());
    }

    #[test]
    fn the_account_has_a_budget_of_its_own() {
        let (_dir, a) = set_up(AuthLimits::default());
        let sources = MAX_ACCOUNT_FAILURES / MAX_FAILURES;
        for i in 0..sources {
            let client = ip(&format!("203.0.113.{i}"));
            for _ in 0..MAX_FAILURES {
                assert_eq!(
                    a.login(client, "admin", "wrong").unwrap_err(),
                    AuthError::WrongPassword
                );
            }
        }
        // A fresh source is refused without its password being checked, and the
        // refusal leaves no entry behind.
        let fresh = ip("203.0.113.200");
        assert!(matches!(
            a.login(fresh, "admin", "correct horse"),
            Err(AuthError::RateLimited(Throttle::Account(_)))
        ));
        assert!(!a.lock().sources.contains_key(&fresh));
        assert_eq!(a.lock().sources.len(), sources);
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_64s() {
        assert_eq!(source_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(source_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(source_key(ip("192.0.2.1")), ip("192.0.2.1"));
        let (_dir, a) = set_up(AuthLimits::default());
        for i in 0..MAX_FAILURES {
            let client = ip(&format!("2001:db8:0:1::{:x}", i + 1));
            assert_eq!(
                a.login(client, "root", "wrong").unwrap_err(),
                AuthError::WrongPassword
            );
        }
        assert!(matches!(
            a.login(ip("2001:db8:0:1:ffff::1"), "admin", "correct horse"),
            Err(AuthError::RateLimited(Throttle::Source(_)))
        ));
        assert!(a
            .login(ip("2001:db8:0:2::1"), "admin", "correct horse")
            .is_ok());
        // IPv4-mapped is the same source as plain IPv4.
        for _ in 0..MAX_FAILURES {
            assert!(a.login(ip("192.0.2.50"), "root", "wrong").is_err());
        }
        assert!(matches!(
            a.login(ip("::ffff:192.0.2.50"), "admin", "correct horse"),
            Err(AuthError::RateLimited(Throttle::Source(_)))
        ));
    }

    #[test]
    fn a_totp_code_is_spent_across_a_restart() {
        let (dir, a) = set_up(AuthLimits::default());
        let enrolment = a.totp_begin("admin").unwrap();
        let code = totp::current_code(&enrolment.secret, "admin");
        a.totp_confirm("admin", &code).unwrap();
        // The code that confirmed the enrolment opens no session, before a restart
        // or after it (the console restarted within the code's window).
        assert_eq!(
            a.login_with_code(CLIENT, "admin", "correct horse", Some(&code))
                .unwrap_err(),
            AuthError::WrongCode
        );
        drop(a);
        let a = Auth::open_with(dir.path(), AuthLimits::default()).unwrap();
        assert_eq!(
            a.login_with_code(CLIENT, "admin", "correct horse", Some(&code))
                .unwrap_err(),
            AuthError::WrongCode
        );
    }

    #[test]
    fn a_full_table_forgets_the_least_guilty_first() {
        let limits = AuthLimits {
            account_failures: 1000,
            max_sources: 8,
            ..Default::default()
        };
        let (_dir, a) = set_up(limits);
        let worst = ip("192.0.2.66");
        for _ in 0..MAX_FAILURES {
            assert!(a.login(worst, "root", "x").is_err());
        }
        // A spray of other sources, one failure each.
        for i in 0..100 {
            let client = ip(&format!("10.0.{}.{}", i / 250, i % 250));
            assert_eq!(
                a.login(client, "root", "x").unwrap_err(),
                AuthError::WrongPassword
            );
            assert!(a.lock().sources.len() <= 8);
        }
        assert!(matches!(
            a.login(worst, "admin", "correct horse"),
            Err(AuthError::RateLimited(Throttle::Source(_)))
        ));
        // Expired entries go before anyone with recent failures.
        let limits = AuthLimits {
            account_failures: 1000,
            max_sources: 4,
            window: Duration::from_millis(300),
            ..Default::default()
        };
        let (_dir, a) = set_up(limits);
        for i in 0..3 {
            assert!(a.login(ip(&format!("10.1.0.{i}")), "root", "x").is_err());
        }
        std::thread::sleep(Duration::from_millis(400));
        for _ in 0..2 {
            assert!(a.login(worst, "root", "x").is_err());
        }
        for i in 0..3 {
            assert!(a.login(ip(&format!("10.2.0.{i}")), "root", "x").is_err());
        }
        let inner = a.lock();
        assert_eq!(inner.sources.len(), 4);
        assert_eq!(inner.sources[&worst].len(), 2);
        assert!(!inner.sources.contains_key(&ip("10.1.0.0")));
    }

    #[test]
    fn a_success_forgives_its_source_and_leaves_the_account_alone() {
        let (_dir, a) = set_up(AuthLimits::default());
        for _ in 0..MAX_FAILURES - 1 {
            assert!(a.login(CLIENT, "admin", "wrong").is_err());
        }
        assert!(a.login(CLIENT, "admin", "correct horse").is_ok());
        let inner = a.lock();
        assert!(inner.sources.is_empty());
        assert_eq!(inner.accounts[ADMIN].failures.len(), MAX_FAILURES - 1);
    }

    #[test]
    fn checks_create_no_entries() {
        let dir = tempfile::tempdir().unwrap();
        let a = Auth::open(dir.path()).unwrap();
        // Not set up: nothing to guess, nothing counted.
        assert_eq!(
            a.login(CLIENT, "admin", "x").unwrap_err(),
            AuthError::NotSetUp
        );
        let code = a.setup_code().unwrap();
        // The right code with a weak password is no guess either.
        assert_eq!(
            a.setup(CLIENT, &code, "short").unwrap_err(),
            AuthError::WeakPassword(
                "the password is too short: it needs at least 12 characters (5 given)".into()
            )
        );
        let inner = a.lock();
        assert!(inner.sources.is_empty() && inner.unknown.is_empty());
    }

    #[test]
    fn setup_codes_go_through_the_same_limiter() {
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(Auth::open(dir.path()).unwrap());
        let code = a.setup_code().unwrap();
        let start = Arc::new(std::sync::Barrier::new(20));
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let (a, start) = (a.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    a.setup(CLIENT, "AAAA-AAAA-AAAA", "long enough password")
                        .unwrap_err()
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let wrong = results
            .iter()
            .filter(|e| **e == AuthError::WrongSetupCode)
            .count();
        assert_eq!(wrong, MAX_FAILURES, "{results:?}");
        assert!(matches!(
            a.setup(CLIENT, &code, "long enough password"),
            Err(AuthError::RateLimited(Throttle::Source(_)))
        ));
        assert!(a
            .setup(ip("192.0.2.3"), &code, "long enough password")
            .is_ok());
    }

    #[test]
    fn password_checks_run_a_few_at_a_time_and_busy_ones_are_not_counted() {
        let limits = AuthLimits {
            verify_permits: 2,
            verify_queue: 1,
            verify_wait: Duration::from_millis(200),
            ..Default::default()
        };
        let (_dir, a) = set_up(limits);
        let p1 = a.gate.acquire().unwrap();
        let p2 = a.gate.acquire().unwrap();
        let started = Instant::now();
        assert_eq!(
            a.login(CLIENT, "admin", "correct horse").unwrap_err(),
            AuthError::RateLimited(Throttle::Busy)
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(a.lock().sources.is_empty() && a.lock().accounts[ADMIN].failures.is_empty());
        // With the queue taken, the next is refused at once.
        let a2 = a.clone();
        let waiter = std::thread::spawn(move || a2.gate.acquire().is_some());
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        assert_eq!(
            a.login(CLIENT, "admin", "correct horse").unwrap_err(),
            AuthError::RateLimited(Throttle::Busy)
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        // A freed permit goes to the one waiting.
        drop(p1);
        assert!(waiter.join().unwrap());
        drop(p2);
        assert!(a.login(CLIENT, "admin", "correct horse").is_ok());
    }

    #[test]
    fn hashes_are_compatible_with_the_argon2_crate() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let gate = Gate::new(&AuthLimits::default());
        let permit = gate.acquire().unwrap();
        let ours = hash_password(b"correct horse", &permit).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        let theirs = Argon2::default()
            .hash_password(b"battery staple", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(verify_password(&theirs, b"battery staple", &permit).unwrap());
        assert!(!verify_password(&theirs, b"battery stapler", &permit).unwrap());
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
    }

    #[test]
    fn logins_in_flight_open_nothing_after_a_password_reset() {
        let limits = AuthLimits {
            source_failures: 10_000,
            account_failures: 10_000,
            verify_queue: 64,
            verify_wait: Duration::from_secs(60),
            ..Default::default()
        };
        let (_dir, a) = set_up(limits);
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (a, stop) = (a.clone(), stop.clone());
                std::thread::spawn(move || {
                    let client = ip(&format!("192.0.2.{}", 10 + i));
                    let mut tokens = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((token, _)) = a.login(client, "admin", "correct horse") {
                            tokens.push(token);
                        }
                    }
                    tokens
                })
            })
            .collect();
        // Until two of them got in (besides the setup's session) and more are under
        // way (each check takes a while in a debug build).
        let deadline = Instant::now() + Duration::from_secs(60);
        while a.lock().sessions.len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let code = a.reset_admin_password().unwrap();
        let (mine, _) = a.setup(CLIENT, &code, "battery staple").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let tokens: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert!(tokens.len() >= 2);
        let working = tokens.iter().filter(|t| a.session(t).is_some()).count();
        assert_eq!(working, 0, "{working} of {} tokens survived", tokens.len());
        assert!(a.session(&mine).is_some());
    }

    #[test]
    fn setting_a_password_ends_every_other_session() {
        let dir = tempfile::tempdir().unwrap();
        let a = Auth::open(dir.path()).unwrap();
        let code = a.setup_code().unwrap();
        let (old, _) = a.setup(CLIENT, &code, "correct horse").unwrap();
        // A session the store still holds from an older generation is void.
        let g = a.lock().fresh_generation();
        a.lock().accounts.get_mut(ADMIN).unwrap().generation = g;
        assert!(a.session(&old).is_none());
        let code = a.reset_admin_password().unwrap();
        let (token, _) = a.setup(CLIENT, &code, "battery staple").unwrap();
        assert!(a.session(&token).is_some());
        assert_eq!(a.lock().sessions.len(), 1);
    }

    fn new_user(name: &str, role: Role) -> keel_api::NewUser {
        keel_api::NewUser {
            name: name.into(),
            role,
            password: format!("{} has a long phrase", name.len()),
        }
    }

    #[test]
    fn admin_json_becomes_the_admin_account_and_stays_written_for_older_slots() {
        let dir = tempfile::tempdir().unwrap();
        // What a slot from before accounts left behind.
        let (_old, a) = set_up(AuthLimits::default());
        let admin_json = std::fs::read(_old.path().join("admin.json")).unwrap();
        drop(a);
        std::fs::write(dir.path().join("admin.json"), &admin_json).unwrap();
        let a = Auth::open(dir.path()).unwrap();
        assert!(!a.setup_required());
        assert!(a.login(CLIENT, ADMIN, "correct horse").is_ok());
        assert_eq!(a.users()[0].role, Role::Administrator);
        assert!(
            !dir.path().join("users.json").exists(),
            "written on the first change"
        );
        a.add_user(&new_user("carol", Role::Auditor)).unwrap();
        let users = std::fs::read_to_string(dir.path().join("users.json")).unwrap();
        assert!(
            users.contains("\"format\": 1") && users.contains("carol"),
            "{users}"
        );
        // The older slot still finds the admin hash it knows.
        assert_eq!(
            std::fs::read(dir.path().join("admin.json")).unwrap(),
            admin_json
        );

        // An older slot (after a rollback) changed the admin password: admin.json wins.
        let (_other, b) = set_up(AuthLimits::default());
        let code = b.reset_admin_password().unwrap();
        b.setup(CLIENT, &code, "battery staple").unwrap();
        std::fs::copy(
            _other.path().join("admin.json"),
            dir.path().join("admin.json"),
        )
        .unwrap();
        let a = Auth::open(dir.path()).unwrap();
        assert!(a.login(CLIENT, ADMIN, "battery staple").is_ok());
        assert!(a.login(ip("192.0.2.77"), ADMIN, "correct horse").is_err());
        assert!(a.login(CLIENT, "carol", "5 has a long phrase").is_ok());
        // ...or reset it (admin.json gone): admin waits for the setup code again.
        std::fs::remove_file(dir.path().join("admin.json")).unwrap();
        let a = Auth::open(dir.path()).unwrap();
        assert!(a.setup_required() && !a.nobody_can_log_in());
        assert!(a.login(CLIENT, "carol", "5 has a long phrase").is_ok());
    }

    #[test]
    fn never_the_last_enabled_administrator() {
        let (_dir, a) = set_up(AuthLimits::default());
        a.add_user(&new_user("carol", Role::Auditor)).unwrap();
        // Whoever asks (even an account that is not there any more, as a token of
        // a deleted account would), the last administrator stays.
        let refused = |r: Result<keel_api::User, AuthError>| match r {
            Err(AuthError::Refused(m)) => m,
            other => panic!("{:?}", other.map(|u| u.name)),
        };
        let disable = keel_api::UserChange {
            disabled: Some(true),
            role: None,
        };
        let demote = keel_api::UserChange {
            disabled: None,
            role: Some(Role::Auditor),
        };
        assert!(
            refused(a.change_user("carol", ADMIN, &disable)).contains("last enabled administrator")
        );
        assert!(
            refused(a.change_user("carol", ADMIN, &demote)).contains("last enabled administrator")
        );
        assert!(matches!(
            a.delete_user("carol", ADMIN),
            Err(AuthError::Refused(_))
        ));
        // With a second one, either may go.
        a.add_user(&new_user("dave", Role::Administrator)).unwrap();
        a.change_user("dave", ADMIN, &disable).unwrap();
        assert!(refused(a.change_user("carol", "dave", &disable)).contains("last enabled"));
        assert!(matches!(
            a.add_user(&new_user("Bad Name", Role::Auditor)),
            Err(AuthError::BadUserName(_))
        ));
    }

    #[test]
    fn the_local_reset_brings_admin_back_and_leaves_the_others() {
        let (dir, a) = set_up(AuthLimits::default());
        a.add_user(&new_user("dave", Role::Administrator)).unwrap();
        a.add_user(&new_user("carol", Role::Auditor)).unwrap();
        let (dave, _) = a.login(CLIENT, "dave", "4 has a long phrase").unwrap();
        a.delete_user("dave", ADMIN).unwrap();
        assert!(!dir.path().join("admin.json").exists());
        assert!(!a.setup_required());
        let code = a.reset_admin_password().unwrap();
        assert!(a.setup_required() && a.session(&dave).is_some());
        // Others log in meanwhile; the setup makes admin an administrator anew.
        assert!(a.login(CLIENT, "carol", "5 has a long phrase").is_ok());
        let (token, s) = a.setup(CLIENT, &code, "battery staple").unwrap();
        assert_eq!((s.user.as_str(), s.role), (ADMIN, Role::Administrator));
        assert!(a.session(&token).is_some());
        assert_eq!(a.users().len(), 3);
        let a = Auth::open(dir.path()).unwrap();
        assert!(!a.setup_required());
        assert!(a.login(CLIENT, ADMIN, "battery staple").is_ok());
        assert!(a.login(CLIENT, "dave", "4 has a long phrase").is_ok());
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
