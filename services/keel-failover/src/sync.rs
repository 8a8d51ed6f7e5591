//! Config sync of a pair: what the primary pushes to the backup (console users,
//! the certificates assigned to the shared addresses, update settings, the hosted
//! product's `/data/shared/`), collected on one side and applied as a whole on the
//! other. In the image a root helper (`keel-failover sync-agent`, socket-activated)
//! reads and writes the other services' files; outside it (`--sync-root DIR`) the
//! daemon does it in-process under DIR.
//!
//! Interface contract (used by the pairing channel in `pair.rs`): `SyncBackend`.
//!
//! **Bundle** (JSON, `bundle_format` 2, file contents base64, at most
//! [`MAX_BUNDLE_BYTES`]): the files as they are on the primary, with their modes.
//! It holds the console's password hash, certificate keys and the update proxy
//! password, so it only ever travels inside the pair's pinned TLS channel and is
//! never logged.
//!
//! **Apply**: the whole bundle is checked first, each file by its owner's reader
//! (keel-core `format` for the copies kept for older slots, keel-certs for the
//! certificate entries, keel-update's settings parser, the console's hash shape);
//! then every changed file and directory is staged next to its target (same
//! filesystem), made durable (`syncfs`), and only then renamed into place in one
//! pass. An error
//! while staging removes the stages and changes nothing. Unchanged items are not
//! rewritten, so a sync every minute costs no writes and no service reloads.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use ipnetwork::IpNetwork;
use keel_api::BUILTIN_CERT_ID;
use keel_certs::store::{check_entry, write_assignments, EntryFile, EntryFiles};
use keel_certs::CertStore;
use keel_core::format::FileFormat;
use keel_core::store::{remove_dir_durable, remove_durable, sync_dir};
use serde::{Deserialize, Serialize};

/// The bundle format this build writes and reads (and every older one). 2 added
/// `console_accounts`.
pub const BUNDLE_FORMAT: u32 = 2;
/// All files under `/data/shared/` together (base64 in the bundle: 4/3 of it).
pub const MAX_SHARED_BYTES: u64 = 32 * 1024 * 1024;
/// Files and directories under `/data/shared/`.
pub const MAX_SHARED_ENTRIES: usize = 10_000;
/// One console or settings file (they are a few KiB).
pub const MAX_FILE_BYTES: usize = 256 * 1024;
/// A whole bundle: the shared data in base64 plus room for the rest; the same as
/// the pairing channel's cap (`pair::BUNDLE_CAP`).
pub const MAX_BUNDLE_BYTES: usize = 64 * 1024 * 1024;
/// Where the agent listens in the image (`keel-failover-sync.socket`).
pub const AGENT_SOCKET: &str = "/run/keel/failover-sync.sock";
/// Hidden: puts the agent's paths under this root (tests run it unprivileged).
pub const AGENT_ROOT_ENV: &str = "KEEL_FAILOVER_SYNC_ROOT";

/// keel-console's `admin.json` (auth.rs `ADMIN_FILE`, format 1: `password_hash`).
const ADMIN_FILE: FileFormat = FileFormat::first("administrator account");
const ADMIN: &str = "admin.json";
/// keel-console's `users.json` (auth.rs `USERS_FILE`, format 1: every account).
const USERS_FILE: FileFormat = FileFormat::first("console users");
const USERS: &str = "users.json";
/// Prefix of every stage; leftovers of a crash are removed by the next apply.
const STAGE: &str = ".sync-stage-";

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("config sync is not built yet")]
    NotBuilt,
    /// The bundle is refused; nothing was changed.
    #[error("sync bundle refused: {0}")]
    Invalid(String),
    /// Something on this node cannot be synced (e.g. a symlink in the shared data).
    #[error("cannot export: {0}")]
    Export(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] keel_core::StoreError),
    #[error("certificates: {0}")]
    Certs(#[from] keel_certs::CertError),
    #[error("sync agent: {0}")]
    Agent(String),
    /// The rename pass failed midway (the disk, not the bundle): what is named was
    /// not replaced.
    #[error("sync applied only in part: {0}")]
    Partial(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SyncError + '_ {
    move |source| SyncError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(m: impl Into<String>) -> SyncError {
    SyncError::Invalid(m.into())
}

/// Where the synced files live (the image's paths, or all under one root).
#[derive(Debug, Clone)]
pub struct SyncPaths {
    /// `/data/console`: `users.json` and `admin.json` (console users), `certs/`
    /// (the store).
    pub console: PathBuf,
    /// `/data/update/settings.json`.
    pub update_settings: PathBuf,
    /// `/data/shared`: the hosted product's shared data, synced whole.
    pub shared: PathBuf,
}

impl SyncPaths {
    /// The image's paths under `root` (`/` in the image).
    pub fn under(root: &Path) -> Self {
        Self {
            console: root.join("data/console"),
            update_settings: root.join("data/update/settings.json"),
            shared: root.join("data/shared"),
        }
    }

    fn certs(&self) -> CertStore {
        CertStore::peek(self.console.join("certs"), self.console.join("tls"))
    }
}

/// How this node reads and writes the synced files.
#[derive(Debug, Clone)]
pub enum SyncBackend {
    /// Read and write directly (standalone runs and tests).
    InProcess(SyncPaths),
    /// Ask the root sync agent over its Unix socket (the image).
    Agent(PathBuf),
}

impl SyncBackend {
    /// The bundle of everything to sync, as bytes for the pairing channel.
    pub async fn export(&self, shared_addresses: &[IpNetwork]) -> Result<Vec<u8>, SyncError> {
        match self {
            SyncBackend::InProcess(paths) => {
                let (paths, shared) = (paths.clone(), ips(shared_addresses));
                blocking(move || export(&paths, &shared)).await
            }
            SyncBackend::Agent(socket) => {
                let (answer, bundle) =
                    agent_call(socket, Op::Export, shared_addresses, Vec::new()).await?;
                let _ = answer;
                Ok(bundle)
            }
        }
    }

    /// Apply a bundle received from the primary, all of it or nothing; the answer
    /// lists what it held (`keel_api::SyncReport::items`).
    pub async fn apply(
        &self,
        bundle: Vec<u8>,
        shared_addresses: &[IpNetwork],
    ) -> Result<Vec<String>, SyncError> {
        match self {
            SyncBackend::InProcess(paths) => {
                let (paths, shared) = (paths.clone(), ips(shared_addresses));
                blocking(move || apply(&paths, &bundle, &shared).map(|a| a.items)).await
            }
            SyncBackend::Agent(socket) => {
                let (answer, _) = agent_call(socket, Op::Apply, shared_addresses, bundle).await?;
                Ok(answer.items)
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SyncError> + Send + 'static,
) -> Result<T, SyncError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SyncError::Agent(format!("sync task failed: {e}")))?
}

fn ips(nets: &[IpNetwork]) -> Vec<IpAddr> {
    nets.iter().map(|n| n.ip().to_canonical()).collect()
}

// ---------------------------------------------------------------------------------
// The bundle

/// File contents in the bundle: base64 in JSON.
#[derive(Clone, PartialEq, Eq)]
struct Data(Vec<u8>);

impl Serialize for Data {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Data)
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }
}

/// One file: a name in its directory, its permission bits, its bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Blob {
    name: String,
    mode: u32,
    data: Data,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertEntry {
    id: String,
    files: Vec<Blob>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Certs {
    /// What the primary serves on each shared address (`builtin`: its own
    /// identity, which stays on its node).
    served: BTreeMap<IpAddr, String>,
    entries: Vec<CertEntry>,
}

/// One entry under `/data/shared/`: a directory (no `data`) or a regular file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SharedEntry {
    /// Relative, `/`-separated, parents listed before their contents.
    path: String,
    mode: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<Data>,
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bundle {
    bundle_format: u32,
    /// `admin.json` (the `admin` account's hash, what consoles from before
    /// accounts read) and the copies kept of it for older slots; empty when the
    /// primary has no admin account.
    console_users: Vec<Blob>,
    /// `users.json` (every console account) and its copies; empty when the
    /// primary has none (a bundle of format 1, or a console that still has only
    /// its `admin.json`). Both empty: the primary is not set up, the backup's
    /// accounts stay.
    #[serde(default)]
    console_accounts: Vec<Blob>,
    certificates: Certs,
    /// `settings.json` and its copies; empty: the primary has no update settings.
    update_settings: Vec<Blob>,
    shared: Vec<SharedEntry>,
}

/// Only the version, read before anything else so that a newer bundle is named as
/// such instead of failing on a field this build does not know.
#[derive(Deserialize)]
struct Version {
    bundle_format: u32,
}

/// The file and the copies `keel_core::format` keeps beside it (`NAME.format-K`).
fn read_with_copies(path: &Path) -> Result<Vec<Blob>, SyncError> {
    let Some(dir) = path.parent() else {
        return Ok(Vec::new());
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut names = vec![name.to_string()];
    let prefix = format!("{name}.{}-", keel_core::format::KEY);
    for e in fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.strip_prefix(&prefix)
            .is_some_and(|k| k.parse::<u32>().is_ok())
        {
            names.push(n);
        }
    }
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let p = dir.join(&n);
            let (data, mode) = read_regular(&p, MAX_FILE_BYTES as u64)?;
            Ok(Blob {
                name: n,
                mode,
                data: Data(data),
            })
        })
        .collect()
}

/// A regular file's bytes and permission bits; refuses links and oversize files.
fn read_regular(path: &Path, limit: u64) -> Result<(Vec<u8>, u32), SyncError> {
    let meta = fs::symlink_metadata(path).map_err(io(path))?;
    if !meta.file_type().is_file() {
        return Err(SyncError::Export(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if meta.len() > limit {
        return Err(SyncError::Export(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io(path))?;
    let mut data = Vec::with_capacity(meta.len() as usize);
    Read::by_ref(&mut f)
        .take(limit + 1)
        .read_to_end(&mut data)
        .map_err(io(path))?;
    if data.len() as u64 > limit {
        return Err(SyncError::Export(format!(
            "{} grew beyond {limit} bytes",
            path.display()
        )));
    }
    Ok((data, meta.mode() & 0o777))
}

/// Everything under `root` (absent: nothing), parents first, sorted; refuses
/// anything but regular files and directories, and more than the caps.
fn collect_shared(root: &Path) -> Result<Vec<SharedEntry>, SyncError> {
    let mut out = Vec::new();
    match fs::symlink_metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(root)(e)),
        Ok(m) if !m.is_dir() => {
            return Err(SyncError::Export(format!(
                "{} is not a directory",
                root.display()
            )))
        }
        Ok(_) => {}
    }
    let mut total = 0u64;
    walk(root, "", &mut out, &mut total)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    rel: &str,
    out: &mut Vec<SharedEntry>,
    total: &mut u64,
) -> Result<(), SyncError> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let name = name.into_string().map_err(|n| {
            SyncError::Export(format!("{}: the name {n:?} is not UTF-8", dir.display()))
        })?;
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if out.len() >= MAX_SHARED_ENTRIES {
            return Err(SyncError::Export(format!(
                "the shared data has more than {MAX_SHARED_ENTRIES} files and directories"
            )));
        }
        let meta = fs::symlink_metadata(&path).map_err(io(&path))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            out.push(SharedEntry {
                path: rel.clone(),
                mode: meta.mode() & 0o777,
                data: None,
            });
            walk(&path, &rel, out, total)?;
        } else if ft.is_file() {
            let left = MAX_SHARED_BYTES.saturating_sub(*total);
            if meta.len() > left {
                return Err(SyncError::Export(format!(
                    "the shared data is larger than {MAX_SHARED_BYTES} bytes (at {})",
                    path.display()
                )));
            }
            let (data, mode) = read_regular(&path, left)?;
            *total += data.len() as u64;
            out.push(SharedEntry {
                path: rel,
                mode,
                data: Some(Data(data)),
            });
        } else {
            let what = if ft.is_symlink() {
                "a symbolic link"
            } else {
                "not a regular file or directory"
            };
            return Err(SyncError::Export(format!(
                "{} is {what}: the shared data holds only files and directories",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Collects the bundle on the primary.
pub fn export(paths: &SyncPaths, shared: &[IpAddr]) -> Result<Vec<u8>, SyncError> {
    let console_users = read_with_copies(&paths.console.join(ADMIN))?;
    let console_accounts = read_with_copies(&paths.console.join(USERS))?;
    let store = paths.certs();
    let served = store.served_on(shared)?;
    let mut entries: Vec<CertEntry> = Vec::new();
    for id in served.values().collect::<BTreeSet<_>>() {
        if id == BUILTIN_CERT_ID {
            continue;
        }
        let e = store.entry_files(id)?;
        entries.push(CertEntry {
            id: e.id,
            files: e
                .files
                .into_iter()
                .map(|f| Blob {
                    name: f.name,
                    mode: f.mode,
                    data: Data(f.data),
                })
                .collect(),
        });
    }
    let bundle = Bundle {
        bundle_format: BUNDLE_FORMAT,
        console_users,
        console_accounts,
        certificates: Certs { served, entries },
        update_settings: read_with_copies(&paths.update_settings)?,
        shared: collect_shared(&paths.shared)?,
    };
    let bytes = serde_json::to_vec(&bundle).map_err(|e| SyncError::Export(e.to_string()))?;
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(SyncError::Export(format!(
            "the bundle is {} bytes, more than {MAX_BUNDLE_BYTES}",
            bytes.len()
        )));
    }
    // Checked as the backup will check it, so a bad file is named where it is.
    check(&bundle, shared).map_err(|e| SyncError::Export(e.to_string()))?;
    Ok(bytes)
}

// ---------------------------------------------------------------------------------
// Checks

fn decode(bytes: &[u8]) -> Result<Bundle, SyncError> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(invalid(format!(
            "{} bytes, more than the limit of {MAX_BUNDLE_BYTES}",
            bytes.len()
        )));
    }
    let v: Version =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not a sync bundle ({e})")))?;
    if v.bundle_format > BUNDLE_FORMAT {
        return Err(invalid(format!(
            "bundle format {} comes from a newer version; this one reads format \
             {BUNDLE_FORMAT} (update this appliance first)",
            v.bundle_format
        )));
    }
    if v.bundle_format == 0 {
        return Err(invalid("bundle format 0 does not exist"));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de)
        .map_err(|e| invalid(format!("{}: {}", e.path(), e.inner())))
}

/// The names a file may be stored under next to `main` (itself and its format
/// copies); each once, each a plain name.
fn check_blobs(what: &str, main: &str, blobs: &[Blob]) -> Result<(), SyncError> {
    let prefix = format!("{main}.{}-", keel_core::format::KEY);
    let mut seen = BTreeSet::new();
    for b in blobs {
        let ok = b.name == main
            || b.name
                .strip_prefix(&prefix)
                .is_some_and(|k| k.parse::<u32>().is_ok_and(|k| k > 0));
        if !ok {
            return Err(invalid(format!(
                "{what}: {:?} is not {main} or a copy of it",
                b.name.chars().take(60).collect::<String>()
            )));
        }
        if !seen.insert(&b.name) {
            return Err(invalid(format!("{what}: {} given twice", b.name)));
        }
        check_mode(what, b.mode)?;
        if b.data.0.len() > MAX_FILE_BYTES {
            return Err(invalid(format!(
                "{what}: {} is larger than {MAX_FILE_BYTES} bytes",
                b.name
            )));
        }
    }
    if !blobs.is_empty() && !seen.contains(&main.to_owned()) {
        return Err(invalid(format!("{what}: copies without {main}")));
    }
    Ok(())
}

/// Permission bits only: no setuid, setgid or sticky bit comes from a peer.
fn check_mode(what: &str, mode: u32) -> Result<(), SyncError> {
    if mode & !0o777 != 0 {
        return Err(invalid(format!(
            "{what}: mode {mode:o} has bits beyond rwx (setuid, setgid, sticky or a \
             file type)"
        )));
    }
    Ok(())
}

/// A relative path of normal components (no `..`, `.`, empty or absolute parts).
fn check_rel(path: &str) -> Result<(), SyncError> {
    let shown = || path.chars().take(80).collect::<String>();
    if path.is_empty()
        || path.len() > 4096
        || path.contains('\0')
        || path.starts_with('/')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        || Path::new(path)
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(invalid(format!(
            "shared data: {:?} is not a plain relative path",
            shown()
        )));
    }
    Ok(())
}

fn check_shared(entries: &[SharedEntry]) -> Result<(usize, u64), SyncError> {
    if entries.len() > MAX_SHARED_ENTRIES {
        return Err(invalid(format!(
            "shared data: more than {MAX_SHARED_ENTRIES} files and directories"
        )));
    }
    let mut dirs: BTreeSet<&str> = BTreeSet::new();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let (mut files, mut bytes) = (0usize, 0u64);
    for e in entries {
        check_rel(&e.path)?;
        check_mode(&format!("shared data: {}", e.path), e.mode)?;
        if !seen.insert(&e.path) {
            return Err(invalid(format!("shared data: {} given twice", e.path)));
        }
        if let Some((parent, _)) = e.path.rsplit_once('/') {
            if !dirs.contains(parent) {
                return Err(invalid(format!(
                    "shared data: {} comes before its directory",
                    e.path
                )));
            }
        }
        match &e.data {
            None => {
                dirs.insert(&e.path);
            }
            Some(d) => {
                files += 1;
                bytes += d.0.len() as u64;
                if bytes > MAX_SHARED_BYTES {
                    return Err(invalid(format!(
                        "shared data: larger than {MAX_SHARED_BYTES} bytes"
                    )));
                }
            }
        }
    }
    Ok((files, bytes))
}

/// The entry as keel-certs reads it.
fn entry_files(e: &CertEntry) -> EntryFiles {
    EntryFiles {
        id: e.id.clone(),
        files: e
            .files
            .iter()
            .map(|b| EntryFile {
                name: b.name.clone(),
                mode: b.mode,
                data: b.data.0.clone(),
            })
            .collect(),
    }
}

/// Everything that can be checked in memory; the JSON files are read by their
/// owners' readers once staged (see `stage_file_set`).
fn check(b: &Bundle, shared: &[IpAddr]) -> Result<(usize, u64), SyncError> {
    check_blobs("console users", ADMIN, &b.console_users)?;
    check_blobs("console users", USERS, &b.console_accounts)?;
    check_blobs("update settings", "settings.json", &b.update_settings)?;
    let mut ids = BTreeSet::new();
    for e in &b.certificates.entries {
        check_entry(&entry_files(e)).map_err(|err| invalid(err.to_string()))?;
        for f in &e.files {
            check_mode(&format!("certificate {}", e.id), f.mode)?;
        }
        if !ids.insert(e.id.as_str()) {
            return Err(invalid(format!("certificate {} given twice", e.id)));
        }
    }
    let served: BTreeSet<&str> = b
        .certificates
        .served
        .values()
        .map(String::as_str)
        .filter(|id| *id != BUILTIN_CERT_ID)
        .collect();
    if let Some(id) = served.iter().find(|id| !ids.contains(*id)) {
        return Err(invalid(format!(
            "certificate {id} is served on a shared address but not in the bundle"
        )));
    }
    if let Some(id) = ids.iter().find(|id| !served.contains(*id)) {
        return Err(invalid(format!(
            "certificate {id} is in the bundle but served on no shared address"
        )));
    }
    if let Some(ip) = shared
        .iter()
        .find(|ip| !b.certificates.served.contains_key(ip))
    {
        return Err(invalid(format!(
            "the primary says nothing about the certificate for shared address {ip}: \
             do both sides have the same shared addresses?"
        )));
    }
    check_shared(&b.shared)
}

// ---------------------------------------------------------------------------------
// Staging and the rename pass

/// One change, staged: renaming `stage` over `target` carries it out.
enum Step {
    /// A file (rename replaces it atomically).
    File { stage: PathBuf, target: PathBuf },
    /// A directory: exchanged with the old one (or renamed when there is none);
    /// the old one, then under `stage`, is removed afterwards.
    Dir { stage: PathBuf, target: PathBuf },
    /// A file the primary does not have (e.g. a stale format copy).
    Remove { target: PathBuf },
}

/// The stages made so far; dropped without `commit`, they are removed.
struct Plan {
    nonce: String,
    steps: Vec<Step>,
    committed: bool,
}

impl Plan {
    fn new() -> Self {
        let mut b = [0u8; 6];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        let nonce = b.iter().map(|x| format!("{x:02x}")).collect();
        Self {
            nonce,
            steps: Vec::new(),
            committed: false,
        }
    }

    fn stage_path(&self, target: &Path) -> PathBuf {
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        target.with_file_name(format!("{STAGE}{}-{name}", self.nonce))
    }

    /// Makes every stage durable: one `syncfs` per filesystem instead of an fsync
    /// per file (2000 small shared files: one journal commit, not 2000).
    fn make_durable(&self) -> Result<(), SyncError> {
        let mut done: BTreeSet<u64> = BTreeSet::new();
        for step in &self.steps {
            let (Step::File { stage, .. } | Step::Dir { stage, .. }) = step else {
                continue;
            };
            let dir = parent(stage);
            let f = File::open(&dir).map_err(io(&dir))?;
            let dev = f.metadata().map_err(io(&dir))?.dev();
            if done.insert(dev) {
                use std::os::fd::AsRawFd;
                nix::unistd::syncfs(f.as_raw_fd())
                    .map_err(|e| io(&dir)(std::io::Error::from(e)))?;
            }
        }
        Ok(())
    }

    /// Renames everything into place, then syncs the directories and removes what
    /// the new directories replaced.
    fn commit(mut self) -> Result<(), SyncError> {
        // Still all or nothing here: a stage that cannot be made durable is dropped
        // with the rest.
        self.make_durable()?;
        self.committed = true;
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        let mut failed: Vec<String> = Vec::new();
        let mut old: Vec<PathBuf> = Vec::new();
        for step in &self.steps {
            let result = match step {
                Step::File { stage, target } => {
                    dirs.insert(parent(target));
                    fs::rename(stage, target).map_err(io(target))
                }
                Step::Dir { stage, target } => {
                    dirs.insert(parent(target));
                    exchange(stage, target).map(|had_old| {
                        if had_old {
                            old.push(stage.clone());
                        }
                    })
                }
                Step::Remove { target } => {
                    dirs.insert(parent(target));
                    match fs::remove_file(target) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(target)(e)),
                        _ => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                failed.push(e.to_string());
            }
        }
        for d in &dirs {
            if let Err(e) = sync_dir(d) {
                failed.push(e.to_string());
            }
        }
        for o in old {
            if let Err(e) = remove_dir_durable(&o) {
                tracing::warn!("removing the replaced {}: {e}", o.display());
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(SyncError::Partial(failed.join("; ")))
        }
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for step in &self.steps {
            let r = match step {
                Step::File { stage, .. } => remove_durable(stage).map(drop),
                Step::Dir { stage, .. } => remove_dir_durable(stage).map(drop),
                Step::Remove { .. } => Ok(()),
            };
            if let Err(e) = r {
                tracing::warn!("removing a sync stage: {e}");
            }
        }
    }
}

fn parent(p: &Path) -> PathBuf {
    p.parent().unwrap_or(Path::new(".")).to_path_buf()
}

/// Swaps `stage` into `target` in one step; returns whether an old one was there
/// (now at `stage`).
fn exchange(stage: &Path, target: &Path) -> Result<bool, SyncError> {
    use nix::fcntl::{renameat2, RenameFlags};
    if fs::symlink_metadata(target).is_err() {
        fs::rename(stage, target).map_err(io(target))?;
        return Ok(false);
    }
    renameat2(None, stage, None, target, RenameFlags::RENAME_EXCHANGE)
        .map_err(|e| io(target)(std::io::Error::from(e)))?;
    Ok(true)
}

/// Who owns what is staged in `dir`: its owner (e.g. keel-console for the console's
/// files), so the service can still write them after the root agent did.
struct Owner {
    uid: u32,
    gid: u32,
    chown: bool,
}

impl Owner {
    fn of(dir: &Path) -> Result<Self, SyncError> {
        let m = fs::metadata(dir).map_err(io(dir))?;
        Ok(Self {
            uid: m.uid(),
            gid: m.gid(),
            chown: nix::unistd::geteuid().is_root(),
        })
    }

    fn apply(&self, path: &Path) -> Result<(), SyncError> {
        if self.chown {
            std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)).map_err(io(path))?;
        }
        Ok(())
    }
}

/// Writes a new file exactly: created exclusively (never through a link), mode set
/// past the umask (made durable with the rest by `Plan::make_durable`).
fn write_new(path: &Path, data: &[u8], mode: u32, owner: &Owner) -> Result<(), SyncError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io(path))?;
    f.write_all(data).map_err(io(path))?;
    owner.apply(path)?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io(path))
}

fn make_dir(path: &Path, mode: u32, owner: &Owner) -> Result<(), SyncError> {
    fs::create_dir(path).map_err(io(path))?;
    owner.apply(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// Removes stages a crash left behind in `dir` (they may hold keys).
fn clear_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(STAGE) {
            let p = e.path();
            let r = if p.is_dir() && !p.is_symlink() {
                remove_dir_durable(&p)
            } else {
                remove_durable(&p)
            };
            if let Err(err) = r {
                tracing::warn!("removing a leftover sync stage: {err}");
            }
        }
    }
}

/// Whether `path` holds exactly `data` with `mode`.
fn same_file(path: &Path, data: &[u8], mode: u32) -> bool {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() && m.mode() & 0o777 == mode && m.len() == data.len() as u64 => {
            fs::read(path).is_ok_and(|d| d == data)
        }
        _ => false,
    }
}

/// Stages a file and its format copies next to `main` (replacing the local set:
/// copies the primary does not have go), and reads the staged set through `read`
/// (the owner's reader, which picks the copy in this build's format). Returns
/// whether anything changes.
fn stage_file_set(
    plan: &mut Plan,
    main: &Path,
    blobs: &[Blob],
    read: impl FnOnce(&Path) -> Result<(), SyncError>,
) -> Result<bool, SyncError> {
    let dir = parent(main);
    let owner = Owner::of(&dir)?;
    let local: Vec<Blob> = read_with_copies(main).unwrap_or_default();
    let mut staged_main = None;
    let mut changed = false;
    let mut steps = Vec::new();
    for b in blobs {
        let target = dir.join(&b.name);
        // Staged under the main stage's name, so the owner's reader finds the
        // copies beside it (`NAME.format-K`).
        let stage_main = plan.stage_path(main);
        let stage = if b.name == main.file_name().unwrap_or_default().to_string_lossy() {
            staged_main = Some(stage_main.clone());
            stage_main
        } else {
            let suffix = &b.name[main.file_name().unwrap_or_default().len()..];
            PathBuf::from(format!("{}{suffix}", stage_main.display()))
        };
        write_new(&stage, &b.data.0, b.mode, &owner)?;
        plan.steps.push(Step::File {
            stage: stage.clone(),
            target: target.clone(),
        });
        if !same_file(&target, &b.data.0, b.mode) {
            changed = true;
        }
        steps.push(target);
    }
    if let Some(s) = &staged_main {
        read(s)?;
    }
    for l in local {
        let target = dir.join(&l.name);
        if !steps.contains(&target) {
            changed = true;
            plan.steps.push(Step::Remove { target });
        }
    }
    if !changed {
        // Nothing to do: take this set's stages out again now.
        let n = blobs.len();
        let keep = plan.steps.len() - n;
        for s in plan.steps.drain(keep..) {
            if let Step::File { stage, .. } = s {
                let _ = fs::remove_file(stage);
            }
        }
    }
    Ok(changed)
}

/// The console's admin record (auth.rs `AdminRecord`): an argon2 PHC string.
#[derive(Deserialize)]
struct AdminShape {
    password_hash: String,
}

fn read_admin(path: &Path) -> Result<(), SyncError> {
    let rec: AdminShape = ADMIN_FILE
        .read(path)
        .map_err(|e| invalid(format!("console users: {e}")))?
        .ok_or_else(|| invalid("console users: no admin.json"))?;
    check_hash("admin", &rec.password_hash)
}

/// Every console password hash must be one the console checks: argon2id.
fn check_hash(user: &str, phc: &str) -> Result<(), SyncError> {
    let hash = argon2::password_hash::PasswordHash::new(phc)
        .map_err(|e| invalid(format!("console users: {user}: not a password hash ({e})")))?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(invalid(format!(
            "console users: {user}: a {} hash, the console checks argon2id",
            hash.algorithm
        )));
    }
    Ok(())
}

/// The console's accounts (auth.rs `UsersRecord`), as far as the sync checks them.
#[derive(Deserialize)]
struct UsersShape {
    users: Vec<UserShape>,
}

#[derive(Deserialize)]
struct UserShape {
    name: String,
    /// `None`: `admin` waits for the setup code.
    password_hash: Option<String>,
}

fn read_users(path: &Path) -> Result<(), SyncError> {
    let rec: UsersShape = USERS_FILE
        .read(path)
        .map_err(|e| invalid(format!("console users: {e}")))?
        .ok_or_else(|| invalid("console users: no users.json"))?;
    let mut names = BTreeSet::new();
    for u in &rec.users {
        if u.name.is_empty() || u.name.len() > 32 || u.name.chars().any(char::is_control) {
            return Err(invalid(
                "console users: a user name the console does not take",
            ));
        }
        if !names.insert(u.name.as_str()) {
            return Err(invalid(format!("console users: {} given twice", u.name)));
        }
        if let Some(h) = &u.password_hash {
            check_hash(&u.name, h)?;
        }
    }
    Ok(())
}

fn read_update_settings(path: &Path) -> Result<(), SyncError> {
    use keel_update::settings::{StoredSettings, SETTINGS_FILE};
    let s: StoredSettings = SETTINGS_FILE
        .read(path)
        .map_err(|e| invalid(format!("update settings: {e}")))?
        .unwrap_or_default();
    // The same checks as a change on this node (keel-update's PUT /settings).
    StoredSettings::default()
        .apply(&settings_request(&s))
        .map_err(|e| invalid(format!("update settings: {e}")))?;
    Ok(())
}

fn settings_request(s: &keel_update::settings::StoredSettings) -> keel_api::UpdateSettingsRequest {
    keel_api::UpdateSettingsRequest {
        feed_url: s.feed_url.clone(),
        proxy_url: s.proxy_url.clone(),
        proxy_user: s.proxy_user.clone(),
        // Present, so that none on the primary clears one here.
        proxy_password: Some(s.proxy_password.clone().unwrap_or_default()),
        ca_certificate: s.ca_certificate.clone(),
    }
}

/// What an apply did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The lines for `SyncReport::items`.
    pub items: Vec<String>,
    /// users.json or admin.json changed: the console reads them only when it starts.
    pub console_users_changed: bool,
    /// Certificates or their assignments changed: the console builds its serving
    /// table when it starts and after its own changes.
    pub certificates_changed: bool,
    /// keel-update keeps its settings in memory from its start.
    pub update_settings_changed: bool,
    pub shared_changed: bool,
}

/// Applies a bundle on the backup: checks all of it, stages every change, then
/// renames them into place in one pass; on any error before that pass nothing
/// changes. One apply at a time (a lock on the console directory).
pub fn apply(paths: &SyncPaths, bytes: &[u8], shared: &[IpAddr]) -> Result<Applied, SyncError> {
    let bundle = decode(bytes)?;
    let (files, file_bytes) = check(&bundle, shared)?;

    let _lock = lock(&paths.console)?;
    let certs_dir = paths.console.join("certs");
    let shared_parent = parent(&paths.shared);
    for d in [
        &paths.console,
        &certs_dir,
        &parent(&paths.update_settings),
        &shared_parent,
    ] {
        clear_leftovers(d);
    }

    let mut plan = Plan::new();
    let mut out = Applied::default();

    // Both files as the primary has them (one missing there goes here too: an
    // admin account deleted there must not come back here through admin.json),
    // unless the primary has neither.
    if !bundle.console_users.is_empty() || !bundle.console_accounts.is_empty() {
        let admin = stage_file_set(
            &mut plan,
            &paths.console.join(ADMIN),
            &bundle.console_users,
            read_admin,
        )?;
        let users = stage_file_set(
            &mut plan,
            &paths.console.join(USERS),
            &bundle.console_accounts,
            read_users,
        )?;
        out.console_users_changed = admin || users;
        out.items.push("console users".into());
    }

    // Certificates: A's entries for the shared addresses, then B's assignments
    // with those addresses taken from A. B's other entries and assignments stay.
    let store = paths.certs();
    for e in &bundle.certificates.entries {
        let files = entry_files(e);
        let target = certs_dir.join(&e.id);
        if target.is_dir()
            && store
                .entry_files(&e.id)
                .is_ok_and(|l| same_entry(&l, &files))
        {
            continue;
        }
        if !certs_dir.is_dir() {
            return Err(SyncError::Invalid(format!(
                "certificates: {} does not exist (the console creates it)",
                certs_dir.display()
            )));
        }
        let owner = Owner::of(&certs_dir)?;
        let stage = plan.stage_path(&target);
        make_dir(&stage, 0o700, &owner)?;
        plan.steps.push(Step::Dir {
            stage: stage.clone(),
            target,
        });
        for f in &files.files {
            write_new(&stage.join(&f.name), &f.data, f.mode, &owner)?;
        }
        out.certificates_changed = true;
    }
    let merged = store.merged_assignments(shared, &bundle.certificates.served)?;
    if merged != store.assignments()? {
        let target = store.assignments_path();
        let stage = plan.stage_path(&target);
        write_assignments(&stage, &merged)?;
        Owner::of(&certs_dir)?.apply(&stage)?;
        plan.steps.push(Step::File { stage, target });
        out.certificates_changed = true;
    }
    for ip in shared {
        let id = &bundle.certificates.served[ip];
        out.items.push(format!("certificate {id} for {ip}"));
    }

    out.update_settings_changed = stage_file_set(
        &mut plan,
        &paths.update_settings,
        &bundle.update_settings,
        read_update_settings,
    )?;
    out.items.push(if bundle.update_settings.is_empty() {
        "update settings: none".into()
    } else {
        "update settings".into()
    });

    // /data/shared as a whole: a new tree staged beside it, swapped in one rename.
    let local = collect_shared(&paths.shared).ok();
    if local.as_ref() != Some(&bundle.shared) {
        // The new tree belongs to whoever owns the present one (the hosted product's
        // user, say), else to the owner of its parent.
        let owner = match fs::symlink_metadata(&paths.shared) {
            Ok(m) if m.is_dir() => Owner::of(&paths.shared)?,
            _ => Owner::of(&shared_parent)?,
        };
        let mode = fs::metadata(&paths.shared)
            .map(|m| m.mode() & 0o777)
            .unwrap_or(0o755);
        let stage = plan.stage_path(&paths.shared);
        make_dir(&stage, mode, &owner)?;
        plan.steps.push(Step::Dir {
            stage: stage.clone(),
            target: paths.shared.clone(),
        });
        for e in &bundle.shared {
            let p = stage.join(&e.path);
            match &e.data {
                None => {
                    // Owner-writable while filled; its mode is set at the end.
                    make_dir(&p, 0o700, &owner)?;
                }
                Some(d) => write_new(&p, &d.0, e.mode, &owner)?,
            }
        }
        for e in bundle.shared.iter().filter(|e| e.data.is_none()).rev() {
            let p = stage.join(&e.path);
            fs::set_permissions(&p, fs::Permissions::from_mode(e.mode)).map_err(io(&p))?;
        }
        out.shared_changed = true;
    }
    out.items
        .push(format!("shared data: {files} files, {file_bytes} bytes"));

    plan.commit()?;
    Ok(out)
}

fn same_entry(a: &EntryFiles, b: &EntryFiles) -> bool {
    let key = |e: &EntryFiles| {
        let mut v: Vec<_> = e
            .files
            .iter()
            .map(|f| (f.name.clone(), f.mode, f.data.clone()))
            .collect();
        v.sort();
        v
    };
    a.id == b.id && key(a) == key(b)
}

fn lock(dir: &Path) -> Result<nix::fcntl::Flock<File>, SyncError> {
    let f = File::open(dir).map_err(io(dir))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io(dir)(std::io::Error::from(e)))
}

// ---------------------------------------------------------------------------------
// The root agent and its client

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Export,
    Apply,
}

/// The request's header; an apply's bundle follows it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentRequest {
    op: Op,
    /// CIDR strings.
    shared: Vec<String>,
    bundle_len: u64,
}

/// The answer's header; an export's bundle follows it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentAnswer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    items: Vec<String>,
    bundle_len: u64,
}

const MAX_HEADER: u32 = 64 * 1024;

/// A frame: 4 bytes big-endian length, then JSON.
fn header_bytes<T: Serialize>(h: &T) -> Vec<u8> {
    let json = serde_json::to_vec(h).unwrap_or_default();
    let mut out = (json.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&json);
    out
}

fn read_header<T: serde::de::DeserializeOwned>(r: &mut impl Read) -> Result<T, SyncError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|e| SyncError::Agent(format!("reading the request: {e}")))?;
    let len = u32::from_be_bytes(len);
    if len > MAX_HEADER {
        return Err(SyncError::Agent(format!("a header of {len} bytes")));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)
        .map_err(|e| SyncError::Agent(format!("reading the request: {e}")))?;
    serde_json::from_slice(&buf).map_err(|e| SyncError::Agent(format!("bad header: {e}")))
}

fn read_body(r: &mut impl Read, len: u64) -> Result<Vec<u8>, SyncError> {
    if len > MAX_BUNDLE_BYTES as u64 {
        return Err(invalid(format!(
            "{len} bytes, more than the limit of {MAX_BUNDLE_BYTES}"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)
        .map_err(|e| SyncError::Agent(format!("reading the bundle: {e}")))?;
    Ok(buf)
}

fn parse_nets(list: &[String]) -> Result<Vec<IpAddr>, SyncError> {
    list.iter()
        .map(|s| {
            s.parse::<IpNetwork>()
                .map(|n| n.ip().to_canonical())
                .map_err(|e| SyncError::Agent(format!("shared address {s:?}: {e}")))
        })
        .collect()
}

/// One request on `r`/`w` against `paths`; returns what an apply did (the caller
/// makes the services see it).
pub fn serve_one(
    paths: &SyncPaths,
    r: &mut impl Read,
    w: &mut impl Write,
) -> Result<Option<Applied>, SyncError> {
    let result = (|| {
        let req: AgentRequest = read_header(r)?;
        let shared = parse_nets(&req.shared)?;
        match req.op {
            Op::Export => {
                if req.bundle_len != 0 {
                    return Err(SyncError::Agent("an export carries no bundle".into()));
                }
                Ok((export(paths, &shared)?, None))
            }
            Op::Apply => {
                let bytes = read_body(r, req.bundle_len)?;
                Ok((Vec::new(), Some(apply(paths, &bytes, &shared)?)))
            }
        }
    })();
    let (answer, body, applied) = match result {
        Ok((body, applied)) => (
            AgentAnswer {
                ok: true,
                error: None,
                items: applied
                    .as_ref()
                    .map(|a| a.items.clone())
                    .unwrap_or_default(),
                bundle_len: body.len() as u64,
            },
            body,
            Ok(applied),
        ),
        Err(e) => (
            AgentAnswer {
                ok: false,
                error: Some(e.to_string()),
                items: Vec::new(),
                bundle_len: 0,
            },
            Vec::new(),
            Err(e),
        ),
    };
    w.write_all(&header_bytes(&answer))
        .and_then(|_| w.write_all(&body))
        .and_then(|_| w.flush())
        .map_err(|e| SyncError::Agent(format!("writing the answer: {e}")))?;
    applied
}

async fn agent_call(
    socket: &Path,
    op: Op,
    shared: &[IpNetwork],
    bundle: Vec<u8>,
) -> Result<(AgentAnswer, Vec<u8>), SyncError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let call = async {
        let mut s = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| SyncError::Agent(format!("{}: {e}", socket.display())))?;
        let req = AgentRequest {
            op,
            shared: shared.iter().map(|n| n.to_string()).collect(),
            bundle_len: bundle.len() as u64,
        };
        let ioe = |e: std::io::Error| SyncError::Agent(format!("{}: {e}", socket.display()));
        s.write_all(&header_bytes(&req)).await.map_err(ioe)?;
        s.write_all(&bundle).await.map_err(ioe)?;
        s.flush().await.map_err(ioe)?;
        let len = s.read_u32().await.map_err(ioe)?;
        if len > MAX_HEADER {
            return Err(SyncError::Agent(format!("a header of {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        s.read_exact(&mut buf).await.map_err(ioe)?;
        let answer: AgentAnswer = serde_json::from_slice(&buf)
            .map_err(|e| SyncError::Agent(format!("bad answer: {e}")))?;
        if !answer.ok {
            return Err(SyncError::Agent(
                answer.error.unwrap_or_else(|| "failed".into()),
            ));
        }
        if answer.bundle_len > MAX_BUNDLE_BYTES as u64 {
            return Err(SyncError::Agent(format!(
                "an answer of {} bytes",
                answer.bundle_len
            )));
        }
        let mut body = vec![0u8; answer.bundle_len as usize];
        s.read_exact(&mut body).await.map_err(ioe)?;
        Ok((answer, body))
    };
    // Generous: 64 MiB of shared data staged and fsynced on a busy 2-core box.
    tokio::time::timeout(std::time::Duration::from_secs(120), call)
        .await
        .map_err(|_| SyncError::Agent("no answer within 120 s".into()))?
}

/// Makes the services see what an apply changed. The console reads `admin.json`
/// and builds its certificate table only when it starts: it is restarted
/// (`systemctl try-restart`, so a stopped console stays stopped). keel-update keeps
/// its settings from its start: they are handed to it through its own
/// `PUT /settings` (it checks and stores them itself; no restart that could cut an
/// install short).
fn notify_services(a: &Applied, paths: &SyncPaths) {
    if a.console_users_changed || a.certificates_changed {
        match std::process::Command::new("systemctl")
            .args(["try-restart", "keel-console.service"])
            .status()
        {
            Ok(s) if s.success() => tracing::info!("keel-console restarted for the synced files"),
            Ok(s) => tracing::warn!("systemctl try-restart keel-console: {s}"),
            Err(e) => tracing::warn!("systemctl try-restart keel-console: {e}"),
        }
    }
    if a.update_settings_changed {
        let settings = keel_update::settings::StoredSettings::load(&paths.update_settings);
        let req = settings_request(&settings);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let result = rt.map_err(|e| e.to_string()).and_then(|rt| {
            rt.block_on(async {
                let client = keel_core::local_api::Client::new("/run/keel/update.sock");
                tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    client.call::<_, serde_json::Value>("PUT", "/settings", Some(&req)),
                )
                .await
                .map_err(|_| "no answer within 30 s".to_string())?
                .map_err(|e| e.to_string())
            })
        });
        match result {
            Ok(_) => tracing::info!("keel-update has the synced update settings"),
            // The file is in place: keel-update reads it at its next start.
            Err(e) => tracing::warn!("handing the synced update settings to keel-update: {e}"),
        }
    }
}

/// The socket's group also lets keel-console in (it uses the daemon's API socket);
/// a bundle holds what the console may not read (the update proxy password), so
/// only the daemon's user and root are served.
fn check_peer() -> Result<(), SyncError> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let stdin = std::io::stdin();
    let Ok(cred) = getsockopt(&stdin, PeerCredentials) else {
        // Not a socket: started by hand (as root), not by the socket unit.
        return Ok(());
    };
    let daemon = nix::unistd::User::from_name("keel-failover")
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
    let uid = cred.uid();
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() || Some(uid) == daemon {
        Ok(())
    } else {
        Err(SyncError::Agent(format!(
            "uid {uid} may not use the sync agent (only keel-failover)"
        )))
    }
}

/// `keel-failover sync-agent`: serve one connection on stdin/stdout
/// (`Accept=yes` socket unit) with the image's paths.
pub fn run_agent() -> anyhow::Result<()> {
    if let Err(e) = check_peer() {
        tracing::warn!("{e}");
        let answer = AgentAnswer {
            ok: false,
            error: Some(e.to_string()),
            items: Vec::new(),
            bundle_len: 0,
        };
        let mut out = std::io::stdout().lock();
        let _ = out
            .write_all(&header_bytes(&answer))
            .and_then(|_| out.flush());
        return Err(e.into());
    }
    let root = std::env::var_os(AGENT_ROOT_ENV).map(PathBuf::from);
    let paths = SyncPaths::under(root.as_deref().unwrap_or(Path::new("/")));
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    match serve_one(&paths, &mut stdin, &mut stdout) {
        Ok(Some(applied)) => {
            tracing::info!(items = ?applied.items, "sync applied");
            if root.is_none() {
                notify_services(&applied, &paths);
            }
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            tracing::warn!("sync request failed: {e}");
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(name: &str) -> Blob {
        Blob {
            name: name.into(),
            mode: 0o600,
            data: Data(b"{}".to_vec()),
        }
    }

    #[test]
    fn paths_must_be_plain_and_relative() {
        for ok in ["a", "a/b", "a.b/c..d", "...", ".hidden"] {
            check_rel(ok).unwrap();
        }
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a/",
            "a/.",
            "a\0b",
        ] {
            assert!(check_rel(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn modes_carry_permission_bits_only() {
        check_mode("x", 0o600).unwrap();
        check_mode("x", 0o777).unwrap();
        for bad in [0o4755, 0o2755, 0o1777, 0o100644] {
            assert!(check_mode("x", bad).is_err(), "{bad:o} accepted");
        }
    }

    #[test]
    fn file_sets_are_the_file_and_its_format_copies() {
        check_blobs("c", ADMIN, &[blob(ADMIN), blob("admin.json.format-1")]).unwrap();
        check_blobs("c", ADMIN, &[]).unwrap();
        for bad in [
            vec![blob("admin.json.format-1")],
            vec![blob(ADMIN), blob(ADMIN)],
            vec![blob(ADMIN), blob("../admin.json")],
            vec![blob(ADMIN), blob("admin.json.format-x")],
            vec![blob(ADMIN), blob("admin.json.format-0")],
        ] {
            assert!(check_blobs("c", ADMIN, &bad).is_err());
        }
    }

    fn entry(path: &str, data: Option<&[u8]>) -> SharedEntry {
        SharedEntry {
            path: path.into(),
            mode: 0o644,
            data: data.map(|d| Data(d.to_vec())),
        }
    }

    #[test]
    fn shared_entries_need_their_directory_first_and_count_bytes() {
        let ok = [
            entry("d", None),
            entry("d/f", Some(b"abc")),
            entry("g", Some(b"de")),
        ];
        assert_eq!(check_shared(&ok).unwrap(), (2, 5));
        assert!(check_shared(&[entry("d/f", Some(b"x"))]).is_err());
        assert!(check_shared(&[entry("f", Some(b"x")), entry("f/g", Some(b"x"))]).is_err());
        assert!(check_shared(&[entry("f", None), entry("f", None)]).is_err());
    }

    #[test]
    fn a_newer_bundle_or_garbage_is_named_as_such() {
        let e = decode(br#"{"bundle_format": 3, "whatever": []}"#)
            .err()
            .unwrap();
        assert!(e.to_string().contains("newer version"), "{e}");
        let e = decode(b"\x00\x01garbage").err().unwrap();
        assert!(e.to_string().contains("not a sync bundle"), "{e}");
        let e = decode(br#"{"bundle_format": 1, "console_users": 3}"#)
            .err()
            .unwrap();
        assert!(e.to_string().contains("console_users"), "{e}");
    }

    #[test]
    fn the_agent_frames_round_trip() {
        let req = AgentRequest {
            op: Op::Apply,
            shared: vec!["10.0.0.100/24".into()],
            bundle_len: 3,
        };
        let mut bytes = header_bytes(&req);
        bytes.extend_from_slice(b"abc");
        let mut r = &bytes[..];
        let back: AgentRequest = read_header(&mut r).unwrap();
        assert_eq!(back.op, Op::Apply);
        assert_eq!(read_body(&mut r, back.bundle_len).unwrap(), b"abc");
        let mut huge = (MAX_HEADER + 1).to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 8]);
        assert!(read_header::<AgentRequest>(&mut &huge[..]).is_err());
    }
}
