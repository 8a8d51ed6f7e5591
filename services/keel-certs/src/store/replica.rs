//! Copying entries between the stores of a failover pair (keel-failover's config
//! sync): the primary hands out the files of the entries it serves on the shared
//! addresses, the backup checks them exactly as this store reads its own entries
//! before anything is written, and merges the assignments.
//!
//! The files travel as they are on disk (the key unencrypted): only ever inside
//! the pair's pinned TLS channel.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use keel_api::{CertAssignments, BUILTIN_CERT_ID};

use super::{io, valid_id, CertStore, Meta, ASSIGNMENTS_FILE, CHAIN, CSR, KEY, META, META_FILE};
use crate::material::PrivateKey;
use crate::{parse_certs, CertError};

/// One stored file of an entry.
#[derive(Clone, PartialEq, Eq)]
pub struct EntryFile {
    pub name: String,
    /// Permission bits (0600 for the key).
    pub mode: u32,
    pub data: Vec<u8>,
}

/// Never prints the contents (the key is among them).
impl std::fmt::Debug for EntryFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryFile")
            .field("name", &self.name)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// An entry's files, as `CertStore::entry_files` reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFiles {
    pub id: String,
    pub files: Vec<EntryFile>,
}

/// The files an entry may consist of; nothing else is copied or accepted.
const FILES: [&str; 4] = [CHAIN, KEY, CSR, META];

impl CertStore {
    /// The store in `dir` for another process than its owner (the sync helper):
    /// unlike `open`, it creates nothing and leaves the hidden entries alone (the
    /// console may be writing one right now).
    pub fn peek(
        dir: impl Into<std::path::PathBuf>,
        builtin_dir: impl Into<std::path::PathBuf>,
    ) -> Self {
        Self {
            dir: dir.into(),
            builtin_dir: builtin_dir.into(),
            lock: std::sync::Mutex::new(()),
        }
    }

    /// What is served on each of `ips` that a peer must copy: the entry assigned to
    /// the address, else the store's default; `builtin` where that is the built-in
    /// certificate (the node's own identity, which is never copied).
    pub fn served_on(&self, ips: &[IpAddr]) -> Result<BTreeMap<IpAddr, String>, CertError> {
        let _g = self.guard();
        let a = self.assignments()?;
        Ok(ips
            .iter()
            .map(|ip| {
                let ip = ip.to_canonical();
                let id = a
                    .ips
                    .get(&ip)
                    .or(a.default.as_ref())
                    .cloned()
                    .unwrap_or_else(|| BUILTIN_CERT_ID.to_owned());
                (ip, id)
            })
            .collect())
    }

    /// The stored files of entry `id` (not `builtin`).
    pub fn entry_files(&self, id: &str) -> Result<EntryFiles, CertError> {
        if !valid_id(id) || id == BUILTIN_CERT_ID {
            return Err(CertError::NotFound(id.chars().take(40).collect()));
        }
        let _g = self.guard();
        let dir = self.entry_dir(id);
        let mut files = Vec::new();
        for name in FILES {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(data) => {
                    let mode = std::fs::metadata(&path)
                        .map_err(io(&path))?
                        .permissions()
                        .mode();
                    files.push(EntryFile {
                        name: name.to_owned(),
                        mode: mode & 0o777,
                        data,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        let entry = EntryFiles {
            id: id.to_owned(),
            files,
        };
        check_entry(&entry)?;
        Ok(entry)
    }

    /// This store's assignments with those of `shared` taken from `theirs` (what the
    /// peer serves there, `served_on`): `builtin` there means this node's default,
    /// so the explicit assignment goes. Every other assignment stays.
    pub fn merged_assignments(
        &self,
        shared: &[IpAddr],
        theirs: &BTreeMap<IpAddr, String>,
    ) -> Result<CertAssignments, CertError> {
        let mut a = {
            let _g = self.guard();
            self.assignments()?
        };
        for ip in shared {
            let ip = ip.to_canonical();
            match theirs.get(&ip) {
                Some(id) if id != BUILTIN_CERT_ID => {
                    a.ips.insert(ip, id.clone());
                }
                _ => {
                    a.ips.remove(&ip);
                }
            }
        }
        Ok(a)
    }

    /// The path `assignments.json` has in this store.
    pub fn assignments_path(&self) -> std::path::PathBuf {
        self.dir.join(super::ASSIGNMENTS)
    }
}

/// Writes assignments to `path` in the store's file format (a staged copy that the
/// caller renames over `assignments_path()`).
pub fn write_assignments(path: &Path, a: &CertAssignments) -> Result<(), CertError> {
    Ok(ASSIGNMENTS_FILE.write(path, a, 0o600)?)
}

fn file<'a>(entry: &'a EntryFiles, name: &str) -> Option<&'a EntryFile> {
    entry.files.iter().find(|f| f.name == name)
}

fn text<'a>(entry: &'a EntryFiles, f: &'a EntryFile) -> Result<&'a str, CertError> {
    std::str::from_utf8(&f.data).map_err(|_| {
        CertError::Malformed(format!("certificate {}: {} is not text", entry.id, f.name))
    })
}

/// Checks an entry as the store would read and serve it: a valid id, only the
/// store's file names, once each, a readable `meta.json`, a chain, and a key the
/// TLS server can load that matches the leaf (a pending request cannot be served,
/// so it is refused).
pub fn check_entry(entry: &EntryFiles) -> Result<(), CertError> {
    let id = &entry.id;
    if !valid_id(id) || id == BUILTIN_CERT_ID {
        return Err(CertError::Malformed(format!(
            "{:?} is not a certificate id",
            id.chars().take(40).collect::<String>()
        )));
    }
    for (i, f) in entry.files.iter().enumerate() {
        if !FILES.contains(&f.name.as_str()) {
            return Err(CertError::Malformed(format!(
                "certificate {id}: {:?} is not a file of a certificate entry",
                f.name.chars().take(40).collect::<String>()
            )));
        }
        if entry.files[..i].iter().any(|g| g.name == f.name) {
            return Err(CertError::Malformed(format!(
                "certificate {id}: {} given twice",
                f.name
            )));
        }
        if f.data.len() > crate::material::MAX_FILE_BYTES {
            return Err(CertError::TooLarge {
                what: format!("certificate {id}: {}", f.name),
                limit: crate::material::MAX_FILE_BYTES,
            });
        }
    }
    let meta = file(entry, META)
        .ok_or_else(|| CertError::Malformed(format!("certificate {id}: no {META}")))?;
    let (obj, found) = keel_core::format::parse(Path::new(META), &meta.data)?;
    if found != META_FILE.current {
        return Err(CertError::Unsupported(format!(
            "certificate {id}: {META} is in format {found}, this version reads {}",
            META_FILE.current
        )));
    }
    serde_json::from_value::<Meta>(serde_json::Value::Object(obj))
        .map_err(|e| CertError::Malformed(format!("certificate {id}: {META}: {e}")))?;
    let chain = file(entry, CHAIN).ok_or_else(|| {
        CertError::Malformed(format!(
            "certificate {id}: no {CHAIN} (a pending request is never served)"
        ))
    })?;
    let chain = parse_certs(text(entry, chain)?)?;
    let key = file(entry, KEY)
        .ok_or_else(|| CertError::Malformed(format!("certificate {id}: no {KEY}")))?;
    let key = PrivateKey::from_pem(text(entry, key)?)?;
    if !key.matches(&chain[0])? {
        return Err(CertError::KeyMismatch(format!(
            "certificate {id}: the key does not match the certificate"
        )));
    }
    crate::certified_key_from(&chain, &key)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::{CertTargets, KeyType, NewCertRequest};

    fn store(dir: &Path) -> CertStore {
        CertStore::open(dir.join("certs"), dir.join("tls")).unwrap()
    }

    fn cert(s: &CertStore, name: &str) -> String {
        s.create_self_signed(&NewCertRequest {
            label: name.into(),
            common_name: name.into(),
            sans: vec![name.into()],
            key_type: KeyType::EcdsaP256,
            days: Some(10),
            organization: String::new(),
        })
        .unwrap()
        .id
    }

    fn targets(ips: &[IpAddr], default: bool) -> CertTargets {
        CertTargets {
            default,
            ips: ips.to_vec(),
            hostnames: Vec::new(),
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 100));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 101));
    const NODE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn served_on_is_the_assignment_else_the_default_else_builtin() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        assert_eq!(s.served_on(&[A]).unwrap()[&A], BUILTIN_CERT_ID);
        let x = cert(&s, "x.example.test");
        let y = cert(&s, "y.example.test");
        s.assign(&x, &targets(&[A], false)).unwrap();
        s.assign(&y, &targets(&[], true)).unwrap();
        let on = s.served_on(&[A, B]).unwrap();
        assert_eq!((on[&A].as_str(), on[&B].as_str()), (x.as_str(), y.as_str()));
    }

    #[test]
    fn merged_assignments_replace_only_the_shared_addresses() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let own = cert(&s, "own.example.test");
        s.assign(&own, &targets(&[A, B, NODE], false)).unwrap();
        let theirs = BTreeMap::from([(A, "0123456789ab".to_owned()), (B, BUILTIN_CERT_ID.into())]);
        let m = s.merged_assignments(&[A, B], &theirs).unwrap();
        assert_eq!(m.ips.get(&A).map(String::as_str), Some("0123456789ab"));
        assert_eq!(m.ips.get(&B), None, "builtin there: this node's default");
        assert_eq!(m.ips.get(&NODE), Some(&own));
    }

    #[test]
    fn entry_files_pass_the_check_and_altered_ones_do_not() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let id = cert(&s, "z.example.test");
        let e = s.entry_files(&id).unwrap();
        check_entry(&e).unwrap();
        let key = e.files.iter().find(|f| f.name == KEY).unwrap();
        assert_eq!(key.mode, 0o600);

        let mut extra = e.clone();
        extra.files.push(EntryFile {
            name: "../../etc/passwd".into(),
            mode: 0o644,
            data: Vec::new(),
        });
        assert!(check_entry(&extra).is_err());
        let mut twice = e.clone();
        twice.files.push(key.clone());
        assert!(check_entry(&twice).is_err());
        let mut pending = e.clone();
        pending.files.retain(|f| f.name != CHAIN);
        assert!(check_entry(&pending)
            .unwrap_err()
            .to_string()
            .contains("pending"));
        let other = s.entry_files(&cert(&s, "w.example.test")).unwrap();
        let mut swapped = e.clone();
        for f in swapped.files.iter_mut().filter(|f| f.name == KEY) {
            f.data = other
                .files
                .iter()
                .find(|g| g.name == KEY)
                .unwrap()
                .data
                .clone();
        }
        assert!(check_entry(&swapped).is_err());
        let mut bad_id = e;
        bad_id.id = "../x".into();
        assert!(check_entry(&bad_id).is_err());
        assert!(s.entry_files(BUILTIN_CERT_ID).is_err());
    }
}
