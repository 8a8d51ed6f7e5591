//! App bundles: the hosted product's layer over the base, a systemd-sysext image
//! kept in `/data/apps`.
//!
//! Layout (`Config::apps_dir`, `/data/apps` on the appliance):
//!
//! ```text
//! /data/apps/<name>/<name>-<version>.raw       the verified images (current + one previous)
//! /data/apps/extensions/<name>.raw             hard link of the active image
//! /etc/extensions -> /data/apps/extensions     (in the image: systemd-sysext looks here)
//! ```
//!
//! A hard link, not a symlink: systemd-sysext 252 skips symlinks in its search
//! directories (a directory symlink is followed). Switching is a new link renamed
//! over the old one: it sees one image or the other, never none.
//!
//! keel-update runs in its own mount namespace, so a merge it did itself would be
//! invisible to the rest of the system: it only switches the link and asks systemd
//! to restart `systemd-sysext.service` (unmerge + merge in the host's namespace,
//! the same unit that merges at every boot). Mounts propagate into the service's
//! namespace, so afterwards it reads what the system sees in `/usr`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_api::{AppInfo, InstallAnswer, UpdatePhase};
use keel_bundle::{Installed, Version};
use sha2::{Digest, Sha256};

use crate::service::{err, ErrorKind, UpdateError, Updater};

/// Where the extension-release file sits inside an app image (systemd-sysext(8)).
pub fn release_path(name: &str) -> String {
    format!("usr/lib/extension-release.d/extension-release.{name}")
}

/// Space on `/data` an app install leaves free (config, certificates, state).
pub const DATA_RESERVE: u64 = 64 << 20;
/// An extension-release file larger than this is not one.
const MAX_RELEASE_LEN: usize = 16 * 1024;
/// How long the merged file may take to show after systemd-sysext returned.
const MERGE_WAIT: Duration = Duration::from_secs(5);

/// Parses os-release(5) syntax: `KEY=value`, values optionally quoted.
pub fn parse_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// systemd-sysext's rule (252, `extension_release_validate`), said in words before
/// anything is activated: `ID=` must be the host's (`keel`); when both say
/// `SYSEXT_LEVEL=` the levels must be equal, otherwise `VERSION_ID=` must be the
/// host's exactly. `ID=_any` is refused: an app layer is made for Keel.
pub fn check_release(name: &str, ext: &str, host: &str) -> Result<(), String> {
    let e = parse_release(ext);
    let h = parse_release(host);
    let file = format!("/{}", release_path(name));
    let host_id = h.get("ID").map(String::as_str).unwrap_or("");
    match e.get("ID").map(String::as_str) {
        None | Some("") => return Err(format!("{file} has no ID= (it must say ID={host_id})")),
        Some(id) if id != host_id => {
            return Err(format!(
                "{file} says ID={id}: it is made for another system, this one is ID={host_id}"
            ))
        }
        Some(_) => {}
    }
    let nonempty =
        |m: &BTreeMap<String, String>, k: &str| m.get(k).filter(|v| !v.is_empty()).cloned();
    match (nonempty(&h, "SYSEXT_LEVEL"), nonempty(&e, "SYSEXT_LEVEL")) {
        (Some(hl), Some(el)) if hl != el => Err(format!(
            "{file} says SYSEXT_LEVEL={el}, this base is SYSEXT_LEVEL={hl}"
        )),
        (Some(_), Some(_)) => Ok(()),
        (hl, _) => match (nonempty(&h, "VERSION_ID"), nonempty(&e, "VERSION_ID")) {
            (Some(hv), Some(ev)) if hv == ev => Ok(()),
            (Some(hv), ev) => Err(format!(
                "{file} says {}, but this base is VERSION_ID={hv}{}: systemd-sysext would not \
                 merge it",
                ev.map(|v| format!("VERSION_ID={v}"))
                    .unwrap_or_else(|| "neither SYSEXT_LEVEL= nor VERSION_ID=".into()),
                hl.map(|l| format!(" (SYSEXT_LEVEL={l})"))
                    .unwrap_or_default()
            )),
            (None, _) => Ok(()),
        },
    }
}

/// Reads the extension-release file out of a squashfs image without mounting it
/// (`unsquashfs -cat`): no loop device in keel-update's namespace, and the check
/// runs before the image is anywhere systemd would look.
pub fn read_image_release(unsquashfs: &str, image: &Path, name: &str) -> Result<String, String> {
    let inner = release_path(name);
    let out = Command::new(unsquashfs)
        .arg("-cat")
        .arg(image)
        .arg(&inner)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{unsquashfs}: {e}"))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        return Err(format!(
            "the payload is not a squashfs image holding /{inner} ({why})"
        ));
    }
    if out.stdout.len() > MAX_RELEASE_LEN {
        return Err(format!("/{inner} is larger than {MAX_RELEASE_LEN} bytes"));
    }
    String::from_utf8(out.stdout).map_err(|_| format!("/{inner} is not UTF-8 text"))
}

/// An image file name: `<name>-<version>.raw`.
fn image_name(name: &str, version: &str) -> String {
    format!("{name}-{version}.raw")
}

fn version_of(name: &str, file: &str) -> Option<Version> {
    file.strip_prefix(name)?
        .strip_prefix('-')?
        .strip_suffix(".raw")?
        .parse()
        .ok()
}

/// The app directory layout below `apps_dir`.
#[derive(Debug, Clone)]
pub struct AppsDir {
    pub root: PathBuf,
}

impl AppsDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn extensions(&self) -> PathBuf {
        self.root.join("extensions")
    }

    fn link(&self, name: &str) -> PathBuf {
        self.extensions().join(format!("{name}.raw"))
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The version whose image the extension link of `name` is (same inode).
    pub fn active_version(&self, name: &str) -> Option<Version> {
        use std::os::unix::fs::MetadataExt;
        let l = fs::symlink_metadata(self.link(name)).ok()?;
        self.kept(name).into_iter().find(|v| {
            fs::symlink_metadata(self.dir(name).join(image_name(name, &v.to_string())))
                .is_ok_and(|m| m.ino() == l.ino() && m.dev() == l.dev())
        })
    }

    /// Versions of `name` whose image is kept, ascending.
    fn kept(&self, name: &str) -> Vec<Version> {
        let mut v: Vec<Version> = fs::read_dir(self.dir(name))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| version_of(name, e.file_name().to_str()?))
            .collect();
        v.sort();
        v
    }

    /// Installed apps (those with an extension link), by name.
    pub fn installed(&self) -> BTreeMap<String, Version> {
        fs::read_dir(self.extensions())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let f = e.file_name();
                let name = f.to_str()?.strip_suffix(".raw")?.to_string();
                let v = self.active_version(&name)?;
                Some((name, v))
            })
            .collect()
    }

    /// `base` plus every installed app: what requirements are checked against.
    pub fn with_base(&self, base: Version) -> Installed {
        self.installed()
            .into_iter()
            .fold(Installed::new().with("base", base), |i, (n, v)| {
                i.with(&n, v)
            })
    }

    /// Installed apps with whether `/usr` shows each one merged.
    pub fn list(&self, view: MergeView<'_>) -> Vec<AppInfo> {
        self.installed()
            .into_iter()
            .map(|(name, v)| {
                let image = self.dir(&name).join(image_name(&name, &v.to_string()));
                let (active, note) = match merged(view, &name, &image, &self.link(&name)) {
                    Ok(()) => (true, None),
                    Err(e) => (false, Some(e)),
                };
                let previous = self
                    .kept(&name)
                    .into_iter()
                    .filter(|k| *k != v)
                    .max()
                    .map(|k| k.to_string());
                AppInfo {
                    name,
                    version: v.to_string(),
                    active,
                    previous,
                    note,
                }
            })
            .collect()
    }
}

/// Where to see what is merged.
#[derive(Debug, Clone, Copy)]
pub struct MergeView<'a> {
    /// `/usr`.
    pub usr: &'a Path,
    /// `/sys/block`: loop devices and their backing files; `None` skips that check.
    pub block_sysfs: Option<&'a Path>,
    pub unsquashfs: &'a str,
}

/// Whether this very image is merged, from the kernel's side: `/usr` shows its
/// extension-release file (it exists there only through the overlay), and a loop
/// device is backed by the extension link as it is now (systemd-sysext keeps it
/// attached while the overlay uses it; a loop device of a link renamed over since
/// says "(deleted)"), so an older image with the same release text does not count.
fn merged(view: MergeView<'_>, name: &str, image: &Path, link: &Path) -> Result<(), String> {
    let seen_at = view
        .usr
        .join(format!("lib/extension-release.d/extension-release.{name}"));
    let seen = fs::read_to_string(&seen_at)
        .map_err(|e| format!("not merged: {} ({e})", seen_at.display()))?;
    let want = read_image_release(view.unsquashfs, image, name)?;
    if seen != want {
        return Err(format!(
            "not merged: {} is another image's",
            seen_at.display()
        ));
    }
    let Some(sysfs) = view.block_sysfs else {
        return Ok(());
    };
    let link = fs::canonicalize(link).map_err(|e| format!("{}: {e}", link.display()))?;
    let backing: Vec<String> = fs::read_dir(sysfs)
        .map_err(|e| format!("{}: {e}", sysfs.display()))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter_map(|e| fs::read_to_string(e.path().join("loop/backing_file")).ok())
        .map(|b| b.trim_end_matches('\n').to_string())
        .collect();
    if backing.iter().any(|b| backed_by(b, &link)) {
        Ok(())
    } else {
        Err(format!(
            "not merged: no loop device is backed by {} (loop devices: {})",
            link.display(),
            if backing.is_empty() {
                "none".into()
            } else {
                backing.join(", ")
            }
        ))
    }
}

/// Whether a loop device's `backing_file` is `link`. systemd-sysext opens the image
/// in a short-lived mount namespace of its own; once that is gone the file's mount
/// is detached and the kernel prints the path from that mount's root
/// (`/apps/extensions/demo.raw` for `/data/apps/extensions/demo.raw`). A link renamed
/// over since reads `… (deleted)` and matches neither way.
fn backed_by(backing: &str, link: &Path) -> bool {
    let b = Path::new(backing);
    b == link
        || (b.is_absolute()
            && b.components().count() > 2
            && link.ends_with(b.strip_prefix("/").unwrap_or(b)))
}

/// Makes the extension link the image `target` (or removes it): a new hard link
/// renamed over the old one, so systemd-sysext sees one image or the other.
fn set_link(apps: &AppsDir, name: &str, target: Option<&Path>) -> io::Result<()> {
    let link = apps.link(name);
    match target {
        Some(t) => {
            let tmp = apps.extensions().join(format!(".{name}.raw.new"));
            let _ = fs::remove_file(&tmp);
            fs::hard_link(t, &tmp)?;
            fs::rename(&tmp, &link)?;
        }
        None => match fs::remove_file(&link) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        },
    }
    File::open(apps.extensions())?.sync_all()
}

fn io_msg(what: &Path) -> impl FnOnce(io::Error) -> String + '_ {
    move |e| format!("{}: {e}", what.display())
}

impl Updater {
    /// Installed apps for the status.
    pub(crate) fn apps_status(&self) -> Vec<AppInfo> {
        let c = self.config();
        AppsDir::new(&c.apps_dir).list(c.merge_view())
    }

    /// `base` (the running version) plus the installed apps.
    pub(crate) fn installed_components(&self, base: Version) -> Installed {
        AppsDir::new(&self.config().apps_dir).with_base(base)
    }

    /// Free space for an app image on the data partition, less [`DATA_RESERVE`].
    pub(crate) fn app_space(&self) -> Result<u64, UpdateError> {
        let root = &self.config().apps_dir;
        keel_core::store::ensure_dir(root, 0o755)
            .map_err(|e| err(ErrorKind::Failed, e.to_string()))?;
        let st = nix::sys::statvfs::statvfs(root).map_err(|e| {
            err(
                ErrorKind::Failed,
                format!("{}: {e} (is /data mounted?)", root.display()),
            )
        })?;
        let free = st.blocks_available() * st.fragment_size();
        Ok(free.saturating_sub(DATA_RESERVE))
    }

    /// The app part of an install, after signature and policy: write the verified
    /// image (temp file, hashed while streaming, read back and hashed again), check
    /// its extension-release, rename it into place, switch the extension link, let
    /// systemd merge, check the merge, and go back to the previous image if it did
    /// not take.
    pub(crate) fn install_app<R: Read>(
        &self,
        bundle: keel_bundle::Bundle<R>,
        name: &str,
    ) -> Result<InstallAnswer, UpdateError> {
        let c = self.config();
        let failed = |m: String| err(ErrorKind::Failed, m);
        let refused = |m: String| err(ErrorKind::Refused, m);
        let m = bundle.manifest().clone();
        let version = m.version.to_string();
        let apps = AppsDir::new(&c.apps_dir);
        let dir = apps.dir(name);
        for d in [&c.apps_dir, &apps.extensions(), &dir] {
            keel_core::store::ensure_dir(d, 0o755).map_err(|e| failed(e.to_string()))?;
        }
        let file = image_name(name, &version);
        let tmp = dir.join(format!(".{file}.tmp"));
        // A temp file of an install cut short (power cut) is garbage.
        let _ = fs::remove_file(&tmp);
        let result = (|| {
            self.write_app_image(bundle, &tmp)?;
            let release = read_image_release(&c.unsquashfs, &tmp, name)
                .map_err(|e| refused(format!("app {name} {version} refused: {e}")))?;
            let host = fs::read_to_string(&c.os_release)
                .map_err(|e| failed(format!("{}: {e}", c.os_release.display())))?;
            check_release(name, &release, &host).map_err(|e| {
                refused(format!(
                    "app {name} {version} refused before activation: {e}"
                ))
            })?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let image = dir.join(&file);
        fs::rename(&tmp, &image)
            .map_err(io_msg(&image))
            .map_err(failed)?;
        keel_core::store::sync_dir(&dir).map_err(|e| failed(e.to_string()))?;

        // Activate.
        self.set_progress(|p| {
            p.phase = UpdatePhase::Arm;
            p.bytes_done = 0;
            p.bytes_total = 0;
        });
        let before = apps.active_version(name);
        let before_image = before.map(|v| dir.join(image_name(name, &v.to_string())));
        set_link(&apps, name, Some(&image))
            .map_err(|e| failed(format!("activating app {name} {version}: {e}")))?;
        let why = match (c.sysext_refresh)() {
            Err(e) => Some(format!("systemd-sysext failed: {e}")),
            Ok(()) => self.wait_merged(name, &image).err(),
        };
        if let Some(why) = why {
            let back = match &before {
                Some(v) => format!("back to {name} {v}"),
                None => format!("{name} is not installed"),
            };
            tracing::error!("app {name} {version} did not activate ({why}); {back}");
            let restored = set_link(&apps, name, before_image.as_deref())
                .map_err(|e| e.to_string())
                .and_then(|()| (c.sysext_refresh)());
            let _ = keel_core::store::remove_durable(&image);
            let restored = match restored {
                Ok(()) => back,
                Err(e) => format!("going back failed too: {e}"),
            };
            return Err(failed(format!(
                "app {name} {version} did not activate: {why}; {restored}"
            )));
        }
        // Keep the image it replaced for one rollback, nothing older.
        for v in apps.kept(name) {
            if Some(v) != before && v != m.version {
                let old = dir.join(image_name(name, &v.to_string()));
                if let Err(e) = keel_core::store::remove_durable(&old) {
                    tracing::warn!("removing {}: {e}", old.display());
                }
            }
        }
        tracing::info!(
            app = name,
            version,
            "app installed and merged (previous: {})",
            before
                .map(|v| v.to_string())
                .unwrap_or_else(|| "none".into())
        );
        self.set_progress(|p| {
            p.phase = UpdatePhase::Idle;
            p.bytes_done = m.payload_size;
            p.bytes_total = m.payload_size;
            p.error = None;
        });
        Ok(InstallAnswer {
            version,
            slot: String::new(),
            rebooting: false,
            app: Some(name.to_string()),
        })
    }

    fn wait_merged(&self, name: &str, image: &Path) -> Result<(), String> {
        let c = self.config();
        let link = AppsDir::new(&c.apps_dir).link(name);
        let start = Instant::now();
        loop {
            match merged(c.merge_view(), name, image, &link) {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() >= MERGE_WAIT => {
                    return Err(format!("systemd-sysext did not merge it ({e})"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Streams the payload into `tmp` (hashed by keel-bundle's reader), syncs it,
    /// drops it from the page cache and reads it back for a second SHA-256.
    fn write_app_image<R: Read>(
        &self,
        bundle: keel_bundle::Bundle<R>,
        tmp: &Path,
    ) -> Result<(), UpdateError> {
        let failed = |m: String| err(ErrorKind::Failed, m);
        let total = bundle.manifest().payload_size;
        self.set_progress(|p| {
            p.phase = UpdatePhase::Write;
            p.bytes_done = 0;
            p.bytes_total = total;
        });
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(tmp)
            .map_err(io_msg(tmp))
            .map_err(failed)?;
        let mut payload = bundle.payload();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n = match payload.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let why = match payload.finish() {
                        Err(be) => be.to_string(),
                        Ok(_) => e.to_string(),
                    };
                    return Err(err(ErrorKind::BadBundle, format!("bundle refused: {why}")));
                }
            };
            out.write_all(&buf[..n])
                .map_err(io_msg(tmp))
                .map_err(failed)?;
            done += n as u64;
            self.set_progress(|p| p.bytes_done = done);
        }
        let verified = payload
            .finish()
            .map_err(|e| err(ErrorKind::BadBundle, format!("bundle refused: {e}")))?;
        out.sync_all().map_err(io_msg(tmp)).map_err(failed)?;
        // Read back what the disk holds, not the page cache's copy of what we wrote.
        let _ = nix::fcntl::posix_fadvise(
            out.as_raw_fd(),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        drop(out);
        self.set_progress(|p| {
            p.phase = UpdatePhase::ReadBack;
            p.bytes_done = 0;
        });
        let mut f = File::open(tmp).map_err(io_msg(tmp)).map_err(failed)?;
        let mut h = Sha256::new();
        let mut back = 0u64;
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(failed(format!("reading back {}: {e}", tmp.display()))),
            };
            h.update(&buf[..n]);
            back += n as u64;
            self.set_progress(|p| p.bytes_done = back);
        }
        let digest: [u8; 32] = h.finalize().into();
        if back != verified.size() || keel_bundle::Sha256Digest(digest) != verified.sha256() {
            return Err(failed(format!(
                "read-back of the app image differs from the bundle ({back} bytes, sha256 {} \
                 on the disk; {} bytes, sha256 {} signed): not activated",
                keel_bundle::Sha256Digest(digest),
                verified.size(),
                verified.sha256()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "NAME=\"Keel\"\nID=keel\nVERSION_ID=0.1.3\nSYSEXT_LEVEL=1\n";

    #[test]
    fn release_rules_are_systemd_sysexts() {
        assert_eq!(
            check_release("demo", "ID=keel\nSYSEXT_LEVEL=1\n", HOST),
            Ok(())
        );
        assert_eq!(
            check_release("demo", "ID=\"keel\"\nSYSEXT_LEVEL='1'\n", HOST),
            Ok(())
        );
        // Without a level, the version must be the host's exactly.
        assert_eq!(
            check_release("demo", "ID=keel\nVERSION_ID=0.1.3\n", HOST),
            Ok(())
        );
        let e = check_release("demo", "ID=keel\nVERSION_ID=0.1.2\n", HOST).unwrap_err();
        assert!(
            e.contains("VERSION_ID=0.1.2") && e.contains("VERSION_ID=0.1.3"),
            "{e}"
        );
        let e = check_release("demo", "ID=debian\nSYSEXT_LEVEL=1\n", HOST).unwrap_err();
        assert!(
            e.contains("ID=debian") && e.contains("another system"),
            "{e}"
        );
        let e = check_release("demo", "ID=_any\n", HOST).unwrap_err();
        assert!(e.contains("ID=_any"), "{e}");
        let e = check_release("demo", "SYSEXT_LEVEL=1\n", HOST).unwrap_err();
        assert!(e.contains("has no ID="), "{e}");
        let e = check_release("demo", "ID=keel\nSYSEXT_LEVEL=2\n", HOST).unwrap_err();
        assert!(
            e.contains("SYSEXT_LEVEL=2") && e.contains("SYSEXT_LEVEL=1"),
            "{e}"
        );
        let e = check_release("demo", "ID=keel\n", HOST).unwrap_err();
        assert!(e.contains("neither SYSEXT_LEVEL= nor VERSION_ID="), "{e}");
        assert!(e.contains("extension-release.demo"), "{e}");
    }

    #[test]
    fn loop_backing_files() {
        let link = Path::new("/data/apps/extensions/demo.raw");
        assert!(backed_by("/data/apps/extensions/demo.raw", link));
        assert!(backed_by("/apps/extensions/demo.raw", link));
        assert!(!backed_by("/data/apps/extensions/demo.raw (deleted)", link));
        assert!(!backed_by("/apps/extensions/demo.raw (deleted)", link));
        assert!(!backed_by("/demo.raw", link));
        assert!(!backed_by("/data/apps/extensions/other.raw", link));
        assert!(!backed_by("apps/extensions/demo.raw", link));
    }

    #[test]
    fn image_names_carry_the_version() {
        assert_eq!(
            version_of("demo", "demo-1.2.3.raw"),
            Some("1.2.3".parse().unwrap())
        );
        assert_eq!(version_of("demo", "demo-x-1.2.3.raw"), None);
        assert_eq!(version_of("demo", ".demo-1.2.3.raw.tmp"), None);
        assert_eq!(version_of("demo", "demo-1.2.3.img"), None);
    }
}
