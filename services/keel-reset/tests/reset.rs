//! The reset sequence on plain files: a data "partition" full of secrets and a
//! real GRUB environment block made with grub-editenv.

use std::path::Path;
use std::process::Command;

use keel_reset::{grubenv::GrubEnv, Outcome};

fn have_tools() -> bool {
    ["grub-editenv", "mkfs.ext4"].iter().all(|t| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn new_env(dir: &Path) -> GrubEnv {
    let path = dir.join("grubenv");
    assert!(Command::new("grub-editenv")
        .arg(&path)
        .arg("create")
        .status()
        .unwrap()
        .success());
    let env = GrubEnv::new(path);
    env.set(&[("keel_good", "a")]).unwrap();
    env
}

#[test]
fn requested_reset_erases_every_byte_then_clears_the_request() {
    if !have_tools() {
        eprintln!("SKIPPED: grub-editenv or mkfs.ext4 missing (scripts/deps.sh installs them)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = new_env(dir.path());
    let data = dir.path().join("data.img");
    let marker = b"SECRET-MARKER-4242";
    let mut content = vec![0x5a_u8; 16 << 20];
    for off in (0..content.len() - marker.len()).step_by(1 << 20) {
        content[off..off + marker.len()].copy_from_slice(marker);
    }
    std::fs::write(&data, &content).unwrap();

    // Nothing requested: nothing touched.
    assert_eq!(
        keel_reset::carry_out(&env, &data).unwrap(),
        Outcome::NotRequested
    );
    assert_eq!(std::fs::read(&data).unwrap(), content);

    keel_reset::request(&env, true).unwrap();
    assert_eq!(keel_reset::requested(&env).unwrap(), Some(true));
    // The block stays what GRUB can read: exactly 1024 bytes.
    assert_eq!(std::fs::metadata(env.path()).unwrap().len(), 1024);

    assert_eq!(
        keel_reset::carry_out(&env, &data).unwrap(),
        Outcome::Reset { power_off: true }
    );
    let after = std::fs::read(&data).unwrap();
    assert!(!after.windows(marker.len()).any(|w| w == marker));
    assert!(!after.contains(&0x5a) || after.iter().filter(|b| **b == 0x5a).count() < 4096);
    // A fresh ext4 labelled "data" (superblock magic at 1080).
    assert_eq!(&after[1080..1082], &[0x53, 0xef]);
    let vars = env.read().unwrap();
    assert!(!vars.contains_key("keel_reset") && !vars.contains_key("keel_reset_poweroff"));
    assert_eq!(vars.get("keel_good").map(String::as_str), Some("a"));
}

#[test]
fn interrupted_reset_is_still_requested() {
    if !have_tools() {
        eprintln!("SKIPPED: grub-editenv or mkfs.ext4 missing (scripts/deps.sh installs them)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = new_env(dir.path());
    keel_reset::request(&env, false).unwrap();
    // The data device vanished mid-way (power cut, failing disk): the request stays.
    let err = keel_reset::carry_out(&env, &dir.path().join("missing")).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    assert_eq!(keel_reset::requested(&env).unwrap(), Some(false));
}
