//! App bundles through the library: real squashfs images (mksquashfs), read by the
//! same `unsquashfs -cat` the appliance runs; the merge step is a stand-in for
//! systemd-sysext (unprivileged: it unpacks each linked image's `usr/` into the
//! rig's `usr` directory, the way the overlay would show it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use keel_bundle::{build_bundle_bytes, Kind};
use keel_update::{ErrorKind, Updater};

const HELLO: &str = "usr/share/keel-app-demo/hello.txt";

/// A squashfs image holding `release` as demo's extension-release (None: no such
/// file) and a hello.txt naming `tag`.
fn image(dir: &Path, tag: &str, release: Option<&str>) -> Vec<u8> {
    let tree = dir.join(format!("tree-{tag}"));
    let hello = tree.join(HELLO);
    std::fs::create_dir_all(hello.parent().unwrap()).unwrap();
    std::fs::write(&hello, format!("hello from {tag}\n")).unwrap();
    if let Some(r) = release {
        let d = tree.join("usr/lib/extension-release.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("extension-release.demo"), r).unwrap();
    }
    let out = dir.join(format!("{tag}.raw"));
    let st = Command::new("mksquashfs")
        .arg(&tree)
        .arg(&out)
        .args(["-noappend", "-quiet", "-no-progress", "-all-root"])
        .status()
        .expect("mksquashfs (squashfs-tools, scripts/deps.sh)");
    assert!(st.success(), "mksquashfs failed");
    std::fs::read(out).unwrap()
}

const GOOD: &str = "ID=keel\nSYSEXT_LEVEL=1\n";

fn app_bundle(rig: &Rig, version: &str, requires: &[&str], payload: &[u8]) -> Vec<u8> {
    let mut s = spec(version, Kind::App);
    s.requires = requires.iter().map(|r| r.parse().unwrap()).collect();
    build_bundle_bytes(&rig.key, &s, payload).unwrap()
}

/// The rig with Keel's os-release (SYSEXT_LEVEL=1) and a merge that works.
fn rig_at(base: &str) -> Rig {
    let mut rig = Rig::new();
    rig.set_boot(keel_boot::Slot::A, base, "boot-1");
    let os = std::fs::read_to_string(&rig.cfg.os_release).unwrap();
    std::fs::write(&rig.cfg.os_release, format!("{os}SYSEXT_LEVEL=1\n")).unwrap();
    let (ext, usr) = (rig.cfg.apps_dir.join("extensions"), rig.cfg.usr_dir.clone());
    let sys = rig.cfg.block_sysfs.clone().unwrap();
    rig.cfg.sysext_refresh = Arc::new(move || merge(&ext, &usr, &sys));
    rig
}

/// The stand-in for `systemd-sysext merge`: `usr` shows exactly the linked images,
/// and a "loop device" in `sys` is backed by each.
fn merge(ext: &Path, usr: &Path, sys: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(usr);
    let _ = std::fs::remove_dir_all(sys);
    std::fs::create_dir_all(usr).map_err(|e| e.to_string())?;
    for (n, e) in std::fs::read_dir(ext)
        .map_err(|e| e.to_string())?
        .enumerate()
    {
        let p = e.map_err(|e| e.to_string())?.path();
        if p.extension().is_none_or(|x| x != "raw") {
            continue;
        }
        let lo = sys.join(format!("loop{n}/loop"));
        std::fs::create_dir_all(&lo).map_err(|e| e.to_string())?;
        let backing = std::fs::canonicalize(&p).map_err(|e| e.to_string())?;
        std::fs::write(lo.join("backing_file"), format!("{}\n", backing.display()))
            .map_err(|e| e.to_string())?;
        let tmp = usr.with_extension(format!("unpack-{}", p.display().to_string().len()));
        let _ = std::fs::remove_dir_all(&tmp);
        let st = Command::new("unsquashfs")
            .args(["-quiet", "-no-progress", "-no-xattrs", "-d"])
            .arg(&tmp)
            .arg(&p)
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("unsquashfs {}: {st}", p.display()));
        }
        let st = Command::new("cp")
            .arg("-a")
            .arg(tmp.join("usr/."))
            .arg(usr)
            .status()
            .map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(&tmp);
        if !st.success() {
            return Err("cp failed".into());
        }
    }
    Ok(())
}

fn images(rig: &Rig) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(rig.cfg.apps_dir.join("demo"))
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The image the extension link is (a hard link of it).
fn link(rig: &Rig) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let l = std::fs::metadata(rig.cfg.apps_dir.join("extensions/demo.raw")).ok()?;
    images(rig)
        .into_iter()
        .map(|f| rig.cfg.apps_dir.join("demo").join(f))
        .find(|p| std::fs::metadata(p).unwrap().ino() == l.ino())
}

fn hello(rig: &Rig) -> Option<String> {
    std::fs::read_to_string(rig.cfg.usr_dir.join("share/keel-app-demo/hello.txt")).ok()
}

async fn refused(u: &Arc<Updater>, bytes: Vec<u8>, kind: ErrorKind, expect: &str) {
    let e = install(u, bytes).await.unwrap_err();
    assert_eq!(e.kind, kind, "{}", e.message);
    assert!(
        e.message.contains(expect),
        "{expect:?} not in {:?}",
        e.message
    );
    assert!(
        u.status()
            .progress
            .error
            .is_some_and(|m| m.contains(expect)),
        "progress does not say why"
    );
}

#[tokio::test]
async fn an_app_that_needs_a_newer_base_is_refused_until_the_base_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let payload = image(dir.path(), "1.0.0", Some(GOOD));
    let rig = rig_at("0.1.0");
    let bundle = app_bundle(&rig, "1.0.0", &["base >= 0.1.3"], &payload);
    let u = rig.start();
    refused(
        &u,
        bundle.clone(),
        ErrorKind::Refused,
        "needs base >= 0.1.3 first",
    )
    .await;
    assert!(images(&rig).is_empty(), "written: {:?}", images(&rig));
    assert_eq!(link(&rig), None);
    assert!(u.status().apps.is_empty());
    drop(u);

    // The newer base booted.
    let rig = {
        let r = rig;
        r.set_boot(keel_boot::Slot::A, "0.1.3", "boot-2");
        let os = std::fs::read_to_string(&r.cfg.os_release).unwrap();
        std::fs::write(&r.cfg.os_release, format!("{os}SYSEXT_LEVEL=1\n")).unwrap();
        r
    };
    let u = rig.start();
    let len = bundle.len() as u64;
    let a = u
        .install(axum::body::Body::from(bundle), Some(len), true)
        .await
        .expect("install");
    assert_eq!(a.app.as_deref(), Some("demo"));
    assert_eq!(
        (a.version.as_str(), a.slot.as_str(), a.rebooting),
        ("1.0.0", "", false)
    );
    assert_eq!(rig.reboots.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(images(&rig), ["demo-1.0.0.raw"]);
    let img = rig.cfg.apps_dir.join("demo/demo-1.0.0.raw");
    assert_eq!(link(&rig), Some(img.clone()));
    assert!(
        std::fs::read(&img).unwrap() == payload,
        "the image is not the payload"
    );
    assert_eq!(hello(&rig).as_deref(), Some("hello from 1.0.0\n"));
    let st = u.status();
    assert_eq!(st.apps.len(), 1, "{:?}", st.apps);
    let app = &st.apps[0];
    assert_eq!((app.name.as_str(), app.version.as_str()), ("demo", "1.0.0"));
    assert!(app.active, "{app:?}");
    assert_eq!(app.previous, None);
    // The slots are untouched, no trial armed.
    rig.assert_not_armed();
}

#[tokio::test]
async fn bad_extension_release_is_refused_before_activation() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_at("0.1.3");
    let u = rig.start();
    let cases = [
        (
            "wrong ID",
            image(dir.path(), "id", Some("ID=debian\nSYSEXT_LEVEL=1\n")),
            "says ID=debian",
        ),
        (
            "other level",
            image(dir.path(), "level", Some("ID=keel\nSYSEXT_LEVEL=2\n")),
            "SYSEXT_LEVEL=2",
        ),
        (
            "no level, other version",
            image(dir.path(), "ver", Some("ID=keel\nVERSION_ID=0.1.2\n")),
            "VERSION_ID=0.1.2",
        ),
        (
            "no extension-release",
            image(dir.path(), "none", None),
            "extension-release.demo",
        ),
        (
            "not squashfs",
            random_bytes(SMALL, 9),
            "is not a squashfs image",
        ),
    ];
    for (name, payload, expect) in cases {
        eprintln!("case: {name}");
        refused(
            &u,
            app_bundle(&rig, "1.0.0", &[], &payload),
            ErrorKind::Refused,
            expect,
        )
        .await;
        assert!(images(&rig).is_empty(), "{name}: left {:?}", images(&rig));
        assert_eq!(link(&rig), None, "{name}: activated");
        assert_eq!(hello(&rig), None, "{name}: merged");
    }
}

#[tokio::test]
async fn upgrades_keep_one_previous_and_refuse_downgrade_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_at("0.1.3");
    let u = rig.start();
    for v in ["1.0.0", "1.1.0", "1.2.0"] {
        let p = image(dir.path(), v, Some(GOOD));
        install(&u, app_bundle(&rig, v, &[], &p)).await.expect(v);
        assert_eq!(hello(&rig), Some(format!("hello from {v}\n")));
    }
    assert_eq!(images(&rig), ["demo-1.1.0.raw", "demo-1.2.0.raw"]);
    let app = u.status().apps[0].clone();
    assert_eq!(
        (app.version.as_str(), app.previous.as_deref(), app.active),
        ("1.2.0", Some("1.1.0"), true)
    );
    let old = image(dir.path(), "0.9.0", Some(GOOD));
    refused(
        &u,
        app_bundle(&rig, "0.9.0", &[], &old),
        ErrorKind::Refused,
        "downgrade refused",
    )
    .await;
    let same = image(dir.path(), "1.2.0", Some(GOOD));
    refused(
        &u,
        app_bundle(&rig, "1.2.0", &[], &same),
        ErrorKind::Refused,
        "replay refused",
    )
    .await;
    assert_eq!(images(&rig), ["demo-1.1.0.raw", "demo-1.2.0.raw"]);
    assert_eq!(hello(&rig).as_deref(), Some("hello from 1.2.0\n"));
}

#[tokio::test]
async fn an_app_that_does_not_merge_goes_back_to_the_previous_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = rig_at("0.1.3");
    let u = rig.start();
    let p = image(dir.path(), "1.0.0", Some(GOOD));
    install(&u, app_bundle(&rig, "1.0.0", &[], &p))
        .await
        .unwrap();
    drop(u);
    // The next merge leaves the new image out (as systemd-sysext does with one it
    // refuses); the one after it (going back) works again.
    let (ext, usr) = (rig.cfg.apps_dir.join("extensions"), rig.cfg.usr_dir.clone());
    let sys = rig.cfg.block_sysfs.clone().unwrap();
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c = calls.clone();
    rig.cfg.sysext_refresh = Arc::new(move || {
        if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            let _ = std::fs::remove_dir_all(&usr);
            let _ = std::fs::remove_dir_all(&sys);
            Ok(())
        } else {
            merge(&ext, &usr, &sys)
        }
    });
    let u = rig.start();
    let p = image(dir.path(), "1.1.0", Some(GOOD));
    let e = install(&u, app_bundle(&rig, "1.1.0", &[], &p))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Failed, "{}", e.message);
    assert!(
        e.message.contains("did not merge") && e.message.contains("back to demo 1.0.0"),
        "{}",
        e.message
    );
    assert_eq!(images(&rig), ["demo-1.0.0.raw"]);
    assert_eq!(
        link(&rig),
        Some(rig.cfg.apps_dir.join("demo/demo-1.0.0.raw"))
    );
    let app = u.status().apps[0].clone();
    assert_eq!((app.version.as_str(), app.active), ("1.0.0", true));
    assert_eq!(hello(&rig).as_deref(), Some("hello from 1.0.0\n"));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}
