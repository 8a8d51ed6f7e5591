//! The appliance's identity key (`/data/update/identity.secret`, 0600): signs its
//! download keys. Made on first need; a factory reset wipes `/data`, so a reset
//! appliance gets a new identity.

use std::path::Path;

use keel_bundle::{KeyPurpose, SecretKey};

/// The key in `path`, made (and written atomically, 0600) when there is none.
/// A file that is there but unreadable, too open or damaged is an error, never
/// silently replaced: the vendor may know this identity.
pub fn load_or_create(path: &Path) -> Result<SecretKey, String> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => SecretKey::load(path, KeyPurpose::Identity).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate();
            if let Some(dir) = path.parent() {
                keel_core::store::ensure_dir(dir, 0o700).map_err(|e| e.to_string())?;
            }
            keel_core::store::write_atomic(
                path,
                key.to_text(KeyPurpose::Identity).as_bytes(),
                0o600,
            )
            .map_err(|e| e.to_string())?;
            tracing::info!(
                "made the appliance identity key {} ({})",
                key.public().id(),
                path.display()
            );
            Ok(key)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The appliance id in its download keys: derived from the identity key, so it
/// is stable until a factory reset and names no host or customer.
pub fn appliance_id(key: &SecretKey) -> String {
    format!("keel-{}", key.public().id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_kept_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("update/identity.secret");
        let k1 = load_or_create(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let k2 = load_or_create(&p).unwrap();
        assert_eq!(k1.public(), k2.public());
        assert!(appliance_id(&k1).starts_with("keel-"));
        std::fs::write(&p, "damaged").unwrap();
        assert!(load_or_create(&p).is_err(), "a damaged key is not replaced");
    }
}
