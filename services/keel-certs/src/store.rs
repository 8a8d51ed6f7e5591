//! The certificate store on disk, and what the TLS server serves from it.
//!
//! ```text
//! <dir>/                      0700 (the console's user)
//!   assignments.json          which certificate is served where
//!   <id>/chain.pem            leaf first, then issuers (absent while pending)
//!   <id>/key.pem              unencrypted PKCS#8, 0600
//!   <id>/csr.pem              the request, for entries made by "create CSR"
//!   <id>/meta.json            label, origin, creation time
//! ```
//! The built-in self-signed identity (`DefaultIdentity`, in its own directory)
//! appears as entry `builtin`: served where nothing else is assigned.
//!
//! A new entry is written to a hidden directory and renamed into place, so a
//! crash never leaves half an entry; every check happens before anything is
//! written, so a refused import stores nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use keel_api::{
    CertAssignments, CertExportRequest, CertList, CertState, CertTargets, CertWarning,
    CertWarningCode, CertificateEntry, KeyType, NewCertRequest, BUILTIN_CERT_ID,
};
use keel_core::format::FileFormat;
use keel_core::store::{ensure_dir, remove_dir_durable, write_atomic};
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

use crate::export::{ExportOptions, Exported};
use crate::inspect::{self, Target};
use crate::material::{read_inputs, Bundle, Input, PrivateKey};
use crate::{generate, parse_certs, CertError};

// Copying entries to the peer of a failover pair (keel-failover config sync).
mod replica;
pub use replica::{check_entry, write_assignments, EntryFile, EntryFiles};

const CHAIN: &str = "chain.pem";
const KEY: &str = "key.pem";
const CSR: &str = "csr.pem";
const META: &str = "meta.json";
/// Each entry's `meta.json` (its PEM files are standard formats, described by it).
const META_FILE: FileFormat = FileFormat::first("certificate entry");
/// `assignments.json`: which certificate serves which address.
const ASSIGNMENTS_FILE: FileFormat = FileFormat::first("certificate assignments");
const ASSIGNMENTS: &str = "assignments.json";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Origin {
    Imported,
    SelfSigned,
    Csr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    label: String,
    created: String,
    origin: Origin,
    #[serde(default)]
    reordered: bool,
    #[serde(default)]
    dropped: usize,
    /// What a pending CSR asked for.
    #[serde(default)]
    requested_subject: String,
    #[serde(default)]
    requested_sans: Vec<String>,
    #[serde(default)]
    key_type: Option<KeyType>,
}

/// One entry as read from disk.
struct Loaded {
    id: String,
    meta: Meta,
    /// Empty while pending.
    chain: Vec<CertificateDer<'static>>,
}

impl Loaded {
    fn state(&self) -> CertState {
        if self.chain.is_empty() {
            CertState::Pending
        } else {
            CertState::Active
        }
    }
}

/// What the TLS server serves: chosen per connection by the name the client
/// asked for (SNI), then by the local address it connected to, else `default`.
#[derive(Debug, Clone)]
pub struct Serving {
    pub default: Arc<CertifiedKey>,
    pub by_ip: HashMap<IpAddr, Arc<CertifiedKey>>,
    pub by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl Serving {
    pub fn single(default: Arc<CertifiedKey>) -> Self {
        Self {
            default,
            by_ip: HashMap::new(),
            by_name: HashMap::new(),
        }
    }

    /// A name assignment is the most specific: a client that asked for a name
    /// checks the certificate against that name, whatever address it used.
    pub fn choose(&self, local: Option<IpAddr>, sni: Option<&str>) -> Arc<CertifiedKey> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.by_name.get(&name) {
                return k.clone();
            }
        }
        if let Some(ip) = local {
            if let Some(k) = self.by_ip.get(&ip.to_canonical()) {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

pub struct CertStore {
    dir: PathBuf,
    builtin_dir: PathBuf,
    /// One change at a time; readers take it too so they never see half a change.
    lock: Mutex<()>,
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn new_id() -> Result<String, CertError> {
    let mut b = [0u8; 6];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| CertError::Key("no randomness".into()))?;
    Ok(hex::encode(b))
}

/// Ids come from URLs: only ours (12 hex digits) or `builtin` are looked up.
fn valid_id(id: &str) -> bool {
    id == BUILTIN_CERT_ID || (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| {
        CertError::Store(keel_core::StoreError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

fn clean_label(label: &str, fallback: &str) -> Result<String, CertError> {
    let l = label.trim();
    if l.chars().count() > 80 || l.chars().any(char::is_control) {
        return Err(CertError::Invalid(
            "label: at most 80 printable characters".into(),
        ));
    }
    Ok(if l.is_empty() {
        fallback.chars().take(80).collect()
    } else {
        l.to_owned()
    })
}

/// A host name to assign (SNI is matched exactly, lowercase).
fn clean_hostname(h: &str) -> Result<String, CertError> {
    let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
    if h.parse::<IpAddr>().is_ok() {
        return Err(CertError::Invalid(format!(
            "{h} is an address: assign it under \"ips\" (clients send no address in SNI)"
        )));
    }
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        return Err(CertError::Invalid(format!(
            "\"{h}\" is not a valid host name"
        )));
    }
    Ok(h)
}

fn leaf_cn(chain: &[CertificateDer<'_>]) -> String {
    chain
        .first()
        .and_then(|c| crate::material::parse_cert(c).ok())
        .and_then(|(_, c)| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok().map(str::to_owned))
        })
        .unwrap_or_else(|| "certificate".into())
}

impl CertStore {
    /// Opens (creating) the store in `dir`; `builtin_dir` holds the built-in
    /// identity (`default.crt`, `default.key`).
    pub fn open(
        dir: impl Into<PathBuf>,
        builtin_dir: impl Into<PathBuf>,
    ) -> Result<Self, CertError> {
        let store = Self {
            dir: dir.into(),
            builtin_dir: builtin_dir.into(),
            lock: Mutex::new(()),
        };
        ensure_dir(&store.dir, 0o700)?;
        // Left over from a crash in the middle of adding or deleting; each holds a
        // private key, so it goes for good (durably).
        for e in std::fs::read_dir(&store.dir)
            .map_err(io(&store.dir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".new-") || name.starts_with(".del-") {
                if let Err(err) = remove_dir_durable(&e.path()) {
                    tracing::warn!("removing a leftover certificate entry: {err}");
                }
            }
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn ids(&self) -> Result<Vec<String>, CertError> {
        let mut ids = Vec::new();
        for e in std::fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if valid_id(&name) && name != BUILTIN_CERT_ID && e.path().is_dir() {
                ids.push(name);
            }
        }
        Ok(ids)
    }

    fn load(&self, id: &str) -> Result<Loaded, CertError> {
        if !valid_id(id) {
            return Err(CertError::NotFound(id.chars().take(40).collect()));
        }
        if id == BUILTIN_CERT_ID {
            let pem = std::fs::read_to_string(self.builtin_dir.join("default.crt"))
                .map_err(|_| CertError::NotFound(id.into()))?;
            return Ok(Loaded {
                id: id.into(),
                meta: Meta {
                    label: "Built-in self-signed".into(),
                    created: String::new(),
                    origin: Origin::SelfSigned,
                    reordered: false,
                    dropped: 0,
                    requested_subject: String::new(),
                    requested_sans: Vec::new(),
                    key_type: None,
                },
                chain: parse_certs(&pem)?,
            });
        }
        let dir = self.entry_dir(id);
        let meta: Meta = META_FILE
            .read(&dir.join(META))?
            .ok_or_else(|| CertError::NotFound(id.into()))?;
        let chain = match std::fs::read_to_string(dir.join(CHAIN)) {
            Ok(pem) => parse_certs(&pem)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&dir)(e)),
        };
        Ok(Loaded {
            id: id.into(),
            meta,
            chain,
        })
    }

    fn key(&self, id: &str) -> Result<PrivateKey, CertError> {
        let path = if id == BUILTIN_CERT_ID {
            self.builtin_dir.join("default.key")
        } else {
            self.entry_dir(id).join(KEY)
        };
        let pem = std::fs::read_to_string(&path).map_err(io(&path))?;
        PrivateKey::from_pem(&pem)
    }

    pub fn assignments(&self) -> Result<CertAssignments, CertError> {
        Ok(ASSIGNMENTS_FILE
            .read(&self.dir.join(ASSIGNMENTS))?
            .unwrap_or_default())
    }

    fn save_assignments(&self, a: &CertAssignments) -> Result<(), CertError> {
        Ok(ASSIGNMENTS_FILE.write(&self.dir.join(ASSIGNMENTS), a, 0o600)?)
    }

    fn places(a: &CertAssignments, id: &str) -> (bool, Vec<Target>) {
        let default = match &a.default {
            Some(d) => d == id,
            None => id == BUILTIN_CERT_ID,
        };
        let mut targets: Vec<Target> = a
            .ips
            .iter()
            .filter(|(_, v)| *v == id)
            .map(|(ip, _)| Target::Ip(*ip))
            .collect();
        targets.extend(
            a.hostnames
                .iter()
                .filter(|(_, v)| *v == id)
                .map(|(h, _)| Target::Hostname(h.clone())),
        );
        (default, targets)
    }

    fn entry(&self, l: &Loaded, a: &CertAssignments) -> CertificateEntry {
        let (default, targets) = Self::places(a, &l.id);
        let mut assigned: Vec<String> = Vec::new();
        if default {
            assigned.push("default".into());
        }
        assigned.extend(targets.iter().map(Target::to_string));
        let builtin = l.id == BUILTIN_CERT_ID;
        if l.chain.is_empty() {
            return CertificateEntry {
                id: l.id.clone(),
                label: l.meta.label.clone(),
                state: CertState::Pending,
                builtin,
                subject: l.meta.requested_subject.clone(),
                sans: l.meta.requested_sans.clone(),
                issuer: String::new(),
                not_before: String::new(),
                not_after: String::new(),
                key_type: key_type_name(l.meta.key_type),
                sha256_fingerprint: String::new(),
                self_signed: false,
                chain_length: 0,
                assigned,
                warnings: Vec::new(),
            };
        }
        let key = self.key(&l.id).ok();
        let mut warnings = inspect::warnings(&l.chain, key.as_ref(), &targets, now());
        if key.is_none() {
            warnings.push(CertWarning {
                code: CertWarningCode::KeyMismatch,
                message: "the private key is missing or unreadable".into(),
            });
        }
        if l.meta.reordered || l.meta.dropped > 0 {
            let mut m = String::from("on import,");
            if l.meta.reordered {
                m.push_str(" the chain was put in order (leaf first)");
            }
            if l.meta.dropped > 0 {
                if l.meta.reordered {
                    m.push_str(" and");
                }
                m.push_str(&format!(
                    " {} certificate(s) not part of the chain were left out",
                    l.meta.dropped
                ));
            }
            warnings.push(CertWarning {
                code: CertWarningCode::ChainReordered,
                message: m,
            });
        }
        match inspect::details(&l.chain[0]) {
            Ok(d) => CertificateEntry {
                id: l.id.clone(),
                label: l.meta.label.clone(),
                state: CertState::Active,
                builtin,
                subject: d.subject.clone(),
                sans: d.sans.clone(),
                issuer: d.issuer.clone(),
                not_before: d.not_before_rfc3339(),
                not_after: d.not_after_rfc3339(),
                key_type: d.key_type.clone(),
                sha256_fingerprint: d.sha256_fingerprint.clone(),
                self_signed: d.self_signed,
                chain_length: l.chain.len(),
                assigned,
                warnings,
            },
            Err(e) => CertificateEntry {
                id: l.id.clone(),
                label: l.meta.label.clone(),
                state: CertState::Active,
                builtin,
                subject: format!("(unreadable: {e})"),
                sans: Vec::new(),
                issuer: String::new(),
                not_before: String::new(),
                not_after: String::new(),
                key_type: String::new(),
                sha256_fingerprint: String::new(),
                self_signed: false,
                chain_length: l.chain.len(),
                assigned,
                warnings,
            },
        }
    }

    fn list_locked(&self) -> Result<CertList, CertError> {
        let a = self.assignments()?;
        let mut loaded = Vec::new();
        if let Ok(b) = self.load(BUILTIN_CERT_ID) {
            loaded.push(b);
        }
        let mut rest: Vec<Loaded> = Vec::new();
        for id in self.ids()? {
            match self.load(&id) {
                Ok(l) => rest.push(l),
                Err(e) => tracing::warn!(%id, "unreadable certificate entry: {e}"),
            }
        }
        rest.sort_by(|x, y| x.meta.created.cmp(&y.meta.created).then(x.id.cmp(&y.id)));
        loaded.extend(rest);
        Ok(CertList {
            certificates: loaded.iter().map(|l| self.entry(l, &a)).collect(),
            assignments: a,
        })
    }

    pub fn list(&self) -> Result<CertList, CertError> {
        let _g = self.guard();
        self.list_locked()
    }

    pub fn get(&self, id: &str) -> Result<CertificateEntry, CertError> {
        let _g = self.guard();
        let l = self.load(id)?;
        Ok(self.entry(&l, &self.assignments()?))
    }

    fn find_fingerprint(&self, fp: &str) -> Result<Option<String>, CertError> {
        for id in std::iter::once(BUILTIN_CERT_ID.to_owned()).chain(self.ids()?) {
            if let Ok(l) = self.load(&id) {
                if l.chain.first().is_some_and(|c| crate::fingerprint(c) == fp) {
                    return Ok(Some(id));
                }
            }
        }
        Ok(None)
    }

    /// Writes a complete new entry and returns its id.
    fn write_new(
        &self,
        meta: &Meta,
        chain_pem: Option<&str>,
        key: &PrivateKey,
        csr_pem: Option<&str>,
    ) -> Result<String, CertError> {
        let id = new_id()?;
        let tmp = self.dir.join(format!(".new-{id}"));
        let result = (|| {
            ensure_dir(&tmp, 0o700)?;
            write_atomic(&tmp.join(KEY), key.to_pem().as_bytes(), 0o600)?;
            if let Some(pem) = chain_pem {
                write_atomic(&tmp.join(CHAIN), pem.as_bytes(), 0o644)?;
            }
            if let Some(pem) = csr_pem {
                write_atomic(&tmp.join(CSR), pem.as_bytes(), 0o644)?;
            }
            META_FILE.write(&tmp.join(META), meta, 0o644)?;
            let dest = self.entry_dir(&id);
            std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))
        })();
        if result.is_err() {
            // Holds the key: gone for good, or cleared by the next open.
            let _ = remove_dir_durable(&tmp);
        }
        result.map(|_| id)
    }

    fn store_bundle(
        &self,
        bundle: &Bundle,
        label: &str,
        origin: Origin,
    ) -> Result<String, CertError> {
        let fp = crate::fingerprint(&bundle.chain[0]);
        if let Some(id) = self.find_fingerprint(&fp)? {
            return Err(CertError::Duplicate(id));
        }
        let meta = Meta {
            label: clean_label(label, &leaf_cn(&bundle.chain))?,
            created: inspect_now(),
            origin,
            reordered: bundle.reordered,
            dropped: bundle.dropped,
            requested_subject: String::new(),
            requested_sans: Vec::new(),
            key_type: None,
        };
        let id = self.write_new(&meta, Some(&bundle.chain_pem()), &bundle.key, None)?;
        tracing::info!(%id, fingerprint = %fp, ?origin, "certificate stored");
        Ok(id)
    }

    /// Imports certificate(s) and key from uploaded files. Without a key, the
    /// certificate must answer a pending CSR of this store.
    pub fn import(
        &self,
        label: &str,
        inputs: &[Input<'_>],
        passphrase: Option<&str>,
    ) -> Result<CertificateEntry, CertError> {
        let material = read_inputs(inputs, passphrase)?;
        let _g = self.guard();
        if material.certs.is_empty() {
            return Err(if material.keys.is_empty() {
                CertError::NoCertificate
            } else {
                CertError::Invalid("only a private key was given: add its certificate".into())
            });
        }
        let key = match material.keys.len() {
            0 => {
                // The CA's answer to one of our CSRs?
                for id in self.ids()? {
                    let Ok(l) = self.load(&id) else { continue };
                    if l.state() != CertState::Pending {
                        continue;
                    }
                    let key = self.key(&id)?;
                    if material
                        .certs
                        .iter()
                        .any(|c| key.matches(c).unwrap_or(false))
                    {
                        return self.complete_pending(&l, key, &material.certs);
                    }
                }
                return Err(CertError::Invalid(
                    "no private key given, and the certificate answers none of the pending \
                     requests (CSRs): add the key file"
                        .into(),
                ));
            }
            1 => material.keys.into_iter().next().expect("one key"),
            n => {
                return Err(CertError::Invalid(format!(
                    "{n} different private keys given: import one certificate at a time"
                )))
            }
        };
        let bundle = Bundle::assemble(&material.certs, key)?;
        let id = self.store_bundle(&bundle, label, Origin::Imported)?;
        let l = self.load(&id)?;
        Ok(self.entry(&l, &self.assignments()?))
    }

    fn complete_pending(
        &self,
        l: &Loaded,
        key: PrivateKey,
        certs: &[CertificateDer<'static>],
    ) -> Result<CertificateEntry, CertError> {
        let bundle = Bundle::assemble(certs, key)?;
        let fp = crate::fingerprint(&bundle.chain[0]);
        if let Some(other) = self.find_fingerprint(&fp)? {
            return Err(CertError::Duplicate(other));
        }
        let dir = self.entry_dir(&l.id);
        let mut meta = l.meta.clone();
        meta.reordered = bundle.reordered;
        meta.dropped = bundle.dropped;
        META_FILE.write(&dir.join(META), &meta, 0o644)?;
        // The chain's arrival is what turns the entry active.
        write_atomic(&dir.join(CHAIN), bundle.chain_pem().as_bytes(), 0o644)?;
        tracing::info!(id = %l.id, fingerprint = %fp, "CA answer matched the pending request");
        let l = self.load(&l.id)?;
        Ok(self.entry(&l, &self.assignments()?))
    }

    /// Imports the CA's answer to the pending request `id`.
    pub fn answer(
        &self,
        id: &str,
        inputs: &[Input<'_>],
        passphrase: Option<&str>,
    ) -> Result<CertificateEntry, CertError> {
        let material = read_inputs(inputs, passphrase)?;
        let _g = self.guard();
        let l = self.load(id)?;
        if l.state() != CertState::Pending {
            return Err(CertError::Conflict(format!(
                "{id} is not waiting for a CA answer"
            )));
        }
        if material.certs.is_empty() {
            return Err(CertError::NoCertificate);
        }
        let key = self.key(id)?;
        if !material
            .certs
            .iter()
            .any(|c| key.matches(c).unwrap_or(false))
        {
            return Err(CertError::KeyMismatch(
                "the certificate does not answer this request: its public key is not the \
                 request's"
                    .into(),
            ));
        }
        self.complete_pending(&l, key, &material.certs)
    }

    /// Makes a key and a self-signed certificate (RSA key generation takes seconds).
    pub fn create_self_signed(&self, req: &NewCertRequest) -> Result<CertificateEntry, CertError> {
        let (pem, key) = generate::self_signed(req)?;
        let chain = parse_certs(&pem)?;
        let bundle = Bundle {
            chain,
            key,
            reordered: false,
            dropped: 0,
        };
        let _g = self.guard();
        let id = self.store_bundle(&bundle, &req.label, Origin::SelfSigned)?;
        let l = self.load(&id)?;
        Ok(self.entry(&l, &self.assignments()?))
    }

    /// Makes a key and a request for a CA; the entry stays pending until the
    /// answer is imported.
    pub fn create_csr(
        &self,
        req: &NewCertRequest,
    ) -> Result<(CertificateEntry, String), CertError> {
        let sans = generate::san_strings(&req.sans)?;
        let (csr, key) = generate::csr(req)?;
        let cn = if req.common_name.trim().is_empty() {
            req.sans
                .first()
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        } else {
            req.common_name.trim().to_owned()
        };
        let meta = Meta {
            label: clean_label(&req.label, &cn)?,
            created: inspect_now(),
            origin: Origin::Csr,
            reordered: false,
            dropped: 0,
            requested_subject: format!("CN={cn}"),
            requested_sans: sans,
            key_type: Some(req.key_type),
        };
        let _g = self.guard();
        let id = self.write_new(&meta, None, &key, Some(&csr))?;
        tracing::info!(%id, "certificate request created");
        let l = self.load(&id)?;
        Ok((self.entry(&l, &self.assignments()?), csr))
    }

    pub fn csr_pem(&self, id: &str) -> Result<String, CertError> {
        let _g = self.guard();
        self.load(id)?;
        std::fs::read_to_string(self.entry_dir(id).join(CSR))
            .map_err(|_| CertError::NotFound(format!("{id} (no certificate request)")))
    }

    pub fn export(&self, id: &str, req: &CertExportRequest) -> Result<Exported, CertError> {
        let _g = self.guard();
        let l = self.load(id)?;
        if l.chain.is_empty() {
            return Err(CertError::Conflict(
                "still waiting for the CA's answer: only the request (CSR) can be downloaded"
                    .into(),
            ));
        }
        let key = if req.include_key {
            Some(self.key(id)?)
        } else {
            None
        };
        let base = leaf_cn(&l.chain);
        let out = crate::export::export(
            &l.chain,
            key.as_ref(),
            &ExportOptions {
                format: req.format,
                include_key: req.include_key,
                include_chain: req.include_chain,
                passphrase: req.passphrase.as_deref(),
                base_name: &base,
            },
        )?;
        tracing::info!(%id, format = ?req.format, with_key = req.include_key, "certificate exported");
        Ok(out)
    }

    fn targets(t: &CertTargets) -> Result<Vec<Target>, CertError> {
        let mut out: Vec<Target> = t
            .ips
            .iter()
            .map(|ip| Target::Ip(ip.to_canonical()))
            .collect();
        for h in &t.hostnames {
            out.push(Target::Hostname(clean_hostname(h)?));
        }
        Ok(out)
    }

    /// What assigning `id` to `targets` would warn about (before doing it).
    pub fn check(&self, id: &str, targets: &CertTargets) -> Result<Vec<CertWarning>, CertError> {
        let _g = self.guard();
        let l = self.load(id)?;
        if l.chain.is_empty() {
            return Err(CertError::Conflict(
                "still waiting for the CA's answer".into(),
            ));
        }
        let targets = Self::targets(targets)?;
        let key = self.key(id).ok();
        Ok(inspect::warnings(&l.chain, key.as_ref(), &targets, now()))
    }

    /// Serves `id` at `targets` (replacing what was there).
    pub fn assign(&self, id: &str, targets: &CertTargets) -> Result<CertList, CertError> {
        let _g = self.guard();
        let l = self.load(id)?;
        if l.chain.is_empty() {
            return Err(CertError::Conflict(
                "still waiting for the CA's answer: it cannot be served yet".into(),
            ));
        }
        // Never assign something the TLS server could not load.
        crate::certified_key_from(&l.chain, &self.key(id)?)?;
        let list = Self::targets(targets)?;
        if list.is_empty() && !targets.default {
            return Err(CertError::Invalid(
                "nothing to assign: give ips, hostnames or default".into(),
            ));
        }
        let mut a = self.assignments()?;
        if targets.default {
            a.default = (id != BUILTIN_CERT_ID).then(|| id.to_owned());
        }
        for t in list {
            match t {
                Target::Ip(ip) => a.ips.insert(ip, id.to_owned()),
                Target::Hostname(h) => a.hostnames.insert(h, id.to_owned()),
            };
        }
        self.save_assignments(&a)?;
        tracing::info!(%id, ?targets, "certificate assigned");
        self.list_locked()
    }

    /// Stops serving whatever is assigned at `targets` (the default falls back
    /// to the built-in certificate).
    pub fn unassign(&self, targets: &CertTargets) -> Result<CertList, CertError> {
        let _g = self.guard();
        let mut a = self.assignments()?;
        if targets.default {
            a.default = None;
        }
        for t in Self::targets(targets)? {
            match t {
                Target::Ip(ip) => a.ips.remove(&ip),
                Target::Hostname(h) => a.hostnames.remove(&h),
            };
        }
        self.save_assignments(&a)?;
        tracing::info!(?targets, "certificate assignments removed");
        self.list_locked()
    }

    /// Deletes `id`. Where it is served, `replacement` (another id or
    /// `builtin`) takes over; without one, a certificate in use is kept.
    pub fn delete(&self, id: &str, replacement: Option<&str>) -> Result<(), CertError> {
        let _g = self.guard();
        if id == BUILTIN_CERT_ID {
            return Err(CertError::Conflict(
                "the built-in certificate cannot be deleted".into(),
            ));
        }
        self.load(id)?;
        let mut a = self.assignments()?;
        let (default, targets) = Self::places(&a, id);
        if default || !targets.is_empty() {
            let places: Vec<String> = default
                .then(|| "default".to_owned())
                .into_iter()
                .chain(targets.iter().map(Target::to_string))
                .collect();
            let Some(rep) = replacement.filter(|r| !r.is_empty()) else {
                return Err(CertError::Conflict(format!(
                    "the certificate is in use ({}): choose a replacement to delete it",
                    places.join(", ")
                )));
            };
            if rep == id {
                return Err(CertError::Invalid(
                    "the replacement must be another certificate".into(),
                ));
            }
            let r = self.load(rep)?;
            if r.chain.is_empty() {
                return Err(CertError::Conflict(
                    "the replacement is still waiting for the CA's answer".into(),
                ));
            }
            crate::certified_key_from(&r.chain, &self.key(rep)?)?;
            if default {
                a.default = (rep != BUILTIN_CERT_ID).then(|| rep.to_owned());
            }
            for v in a.ips.values_mut().chain(a.hostnames.values_mut()) {
                if v == id {
                    *v = rep.to_owned();
                }
            }
            self.save_assignments(&a)?;
        }
        // Rename first: the entry disappears at once even if removal is slow. The
        // store directory is synced after the removal: a power cut must not bring
        // the private key back.
        let gone = self.dir.join(format!(".del-{id}"));
        std::fs::rename(self.entry_dir(id), &gone).map_err(io(&gone))?;
        remove_dir_durable(&gone)?;
        tracing::info!(%id, ?replacement, "certificate deleted");
        Ok(())
    }

    fn certified(&self, id: &str) -> Result<Arc<CertifiedKey>, CertError> {
        let l = self.load(id)?;
        crate::certified_key_from(&l.chain, &self.key(id)?)
    }

    /// The certificates to serve, as assigned now. An entry that cannot be
    /// loaded is skipped (logged): its places fall back to the default.
    pub fn serving(&self) -> Result<Serving, CertError> {
        let _g = self.guard();
        let a = self.assignments()?;
        let builtin = self.certified(BUILTIN_CERT_ID)?;
        let mut cache: HashMap<String, Option<Arc<CertifiedKey>>> = HashMap::new();
        let mut get = |id: &str| -> Option<Arc<CertifiedKey>> {
            cache
                .entry(id.to_owned())
                .or_insert_with(|| match self.certified(id) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        tracing::error!(%id, "assigned certificate cannot be served: {e}");
                        None
                    }
                })
                .clone()
        };
        let default = a
            .default
            .as_deref()
            .and_then(&mut get)
            .unwrap_or_else(|| builtin.clone());
        let by_ip = a
            .ips
            .iter()
            .filter_map(|(ip, id)| get(id).map(|k| (ip.to_canonical(), k)))
            .collect();
        let by_name = a
            .hostnames
            .iter()
            .filter_map(|(h, id)| get(id).map(|k| (h.clone(), k)))
            .collect();
        Ok(Serving {
            default,
            by_ip,
            by_name,
        })
    }

    /// The certificates being served somewhere (default, an address or a name),
    /// with the warnings worth an admin's attention (a chain we re-ordered on
    /// import is served in order: not one of them).
    pub fn in_use(&self) -> Result<Vec<CertificateEntry>, CertError> {
        let list = self.list()?;
        Ok(list
            .certificates
            .into_iter()
            .filter(|c| !c.assigned.is_empty())
            .map(|mut c| {
                c.warnings
                    .retain(|w| w.code != CertWarningCode::ChainReordered);
                c
            })
            .collect())
    }

    /// Warnings of the certificates being served (for the status page).
    pub fn in_use_warnings(&self) -> Result<Vec<(CertificateEntry, CertWarning)>, CertError> {
        Ok(self
            .in_use()?
            .into_iter()
            .flat_map(|c| c.warnings.clone().into_iter().map(move |w| (c.clone(), w)))
            .collect())
    }
}

fn inspect_now() -> String {
    now()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn key_type_name(kt: Option<KeyType>) -> String {
    match kt {
        Some(KeyType::EcdsaP256) => "ECDSA P-256".into(),
        Some(KeyType::Rsa2048) => "RSA 2048".into(),
        Some(KeyType::Rsa3072) => "RSA 3072".into(),
        None => String::new(),
    }
}
