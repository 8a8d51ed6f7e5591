//! The reset sequence on plain files: a data "partition" full of secrets and a
//! temporary ESP directory with GRUB's environment in its two copies.

use std::path::Path;
use std::process::Command;

use keel_boot::{BootEnv, BootEnvSource, EnvCopy, Esp, EspError, Slot};
use keel_reset::Outcome;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn new_esp() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("grub")).unwrap();
    BootEnv::new(dir.path()).mark_good(Slot::A).unwrap();
    dir
}

fn secrets(path: &Path) -> Vec<u8> {
    let marker = b"SECRET-MARKER-4242";
    let mut content = vec![0x5a_u8; 16 << 20];
    for off in (0..content.len() - marker.len()).step_by(1 << 20) {
        content[off..off + marker.len()].copy_from_slice(marker);
    }
    std::fs::write(path, &content).unwrap();
    content
}

fn noise(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7919 % 251) as u8 ^ 0xa5).collect()
}

#[test]
fn requested_reset_erases_every_byte_then_clears_the_request() {
    if !have("mkfs.ext4") {
        eprintln!("SKIPPED: mkfs.ext4 missing (scripts/deps.sh installs it)");
        return;
    }
    let dir = new_esp();
    let env = BootEnv::new(dir.path());
    let data = dir.path().join("data.img");
    let content = secrets(&data);
    let marker = b"SECRET-MARKER-4242";

    // Nothing requested: nothing touched.
    let report = keel_reset::carry_out(&env, &data).unwrap();
    assert_eq!(report.outcome, Outcome::NotRequested);
    assert_eq!(report.problem(), None);
    assert_eq!(std::fs::read(&data).unwrap(), content);

    keel_reset::request(&env, true).unwrap();
    assert_eq!(keel_reset::requested(&env), Some(true));
    // Both copies stay what GRUB can read: exactly 1024 bytes.
    for copy in [EnvCopy::Primary, EnvCopy::Backup] {
        assert_eq!(std::fs::metadata(env.path(copy)).unwrap().len(), 1024);
    }

    let report = keel_reset::carry_out(&env, &data).unwrap();
    assert_eq!(report.outcome, Outcome::Reset { power_off: true });
    let after = std::fs::read(&data).unwrap();
    assert!(!after.windows(marker.len()).any(|w| w == marker));
    assert!(!after.contains(&0x5a) || after.iter().filter(|b| **b == 0x5a).count() < 4096);
    // A fresh ext4 labelled "data" (superblock magic at 1080).
    assert_eq!(&after[1080..1082], &[0x53, 0xef]);
    let st = env.status();
    for vars in [st.primary.unwrap(), st.backup.unwrap()] {
        assert!(!vars.contains_key("keel_reset") && !vars.contains_key("keel_reset_poweroff"));
        assert_eq!(vars.get("keel_good").map(String::as_str), Some("a"));
    }
}

#[test]
fn interrupted_reset_is_still_requested() {
    let dir = new_esp();
    let env = BootEnv::new(dir.path());
    keel_reset::request(&env, false).unwrap();
    // The data device vanished mid-way (power cut, failing disk): the request stays.
    let err = keel_reset::carry_out(&env, &dir.path().join("missing")).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    assert_eq!(keel_reset::requested(&env), Some(false));
}

#[test]
fn a_request_in_the_backup_alone_is_still_carried_out() {
    if !have("mkfs.ext4") {
        eprintln!("SKIPPED: mkfs.ext4 missing");
        return;
    }
    let dir = new_esp();
    let env = BootEnv::new(dir.path());
    keel_reset::request(&env, false).unwrap();
    std::fs::write(env.path(EnvCopy::Primary), noise(1024)).unwrap();
    let data = dir.path().join("data.img");
    secrets(&data);
    let report = keel_reset::carry_out(&env, &data).unwrap();
    assert_eq!(report.outcome, Outcome::Reset { power_off: false });
    assert!(report.problem().unwrap().contains("used the backup copy"));
    // Clearing the request rewrote the damaged primary too.
    let st = env.status();
    assert_eq!(
        (st.source(), st.reset(), st.problem()),
        (BootEnvSource::Primary, None, None)
    );
}

#[test]
fn early_with_an_unreadable_environment_boots_on_without_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("grub")).unwrap();
    let env = BootEnv::new(dir.path());
    // 1024 random bytes over both copies, as a power cut on FAT can leave them.
    std::fs::write(env.path(EnvCopy::Primary), noise(1024)).unwrap();
    std::fs::write(env.path(EnvCopy::Backup), [0xffu8; 1024]).unwrap();
    let data = dir.path().join("data.img");
    let content = secrets(&data);
    let state_file = dir.path().join("run/keel/boot/state.json");

    let done = keel_reset::early(
        Ok(Esp::at(dir.path())),
        &data,
        "root=PARTLABEL=root-a keel.slot=a quiet",
        &|| panic!("no boot-menu reset: nothing to confirm"),
        &state_file,
    )
    .unwrap();
    assert_eq!(done.outcome, Outcome::NotRequested);
    let problem = done.state.problem.clone().unwrap();
    assert!(problem.contains("boot environment unreadable"), "{problem}");
    assert!(problem.contains("no factory reset assumed"), "{problem}");
    assert_eq!(done.state.source, BootEnvSource::Defaults);
    assert_eq!(done.state.running_slot.as_deref(), Some("a"));
    assert!(!done.state.reset_requested);
    // Nothing erased, nothing written to the ESP (that is mark-good's job).
    assert_eq!(std::fs::read(&data).unwrap(), content);
    assert_eq!(
        std::fs::read(env.path(EnvCopy::Primary)).unwrap(),
        noise(1024)
    );
    let recorded: keel_boot::BootState =
        serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(recorded, done.state);

    // The carry-out alone says the same: NotRequested plus a problem, no error.
    let report = keel_reset::carry_out(&env, &data).unwrap();
    assert_eq!(report.outcome, Outcome::NotRequested);
    assert!(report.problem().unwrap().contains("unreadable"));
}

#[test]
fn early_without_an_esp_boots_on_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.img");
    let state_file = dir.path().join("state.json");
    let done = keel_reset::early(
        Err(EspError(nix::errno::Errno::ENOENT)),
        &data,
        "keel.slot=a keel.reset=ask",
        &|| panic!("nowhere to record a confirmation"),
        &state_file,
    )
    .unwrap();
    assert_eq!(done.outcome, Outcome::NotRequested);
    assert_eq!(done.state.source, BootEnvSource::Unavailable);
    assert!(done.state.problem.unwrap().contains("ESP unavailable"));
    assert!(state_file.exists());
}

#[test]
fn boot_menu_reset_on_an_unreadable_environment_still_erases_when_confirmed() {
    if !have("mkfs.ext4") {
        eprintln!("SKIPPED: mkfs.ext4 missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("grub")).unwrap();
    let env = BootEnv::new(dir.path());
    std::fs::write(env.path(EnvCopy::Primary), noise(1024)).unwrap();
    let data = dir.path().join("data.img");
    secrets(&data);
    let done = keel_reset::early(
        Ok(Esp::at(dir.path())),
        &data,
        "keel.slot=a keel.reset=ask",
        &|| true,
        Path::new("none"),
    )
    .unwrap();
    assert_eq!(done.outcome, Outcome::Reset { power_off: false });
    // What was found at boot is still reported; the environment is whole again.
    assert!(done.state.problem.unwrap().contains("unreadable"));
    assert_eq!(env.status().problem(), None);
    assert_eq!(env.status().reset(), None);
}

#[test]
fn grub_editenv_blocks_are_read_and_ours_are_listed_by_it() {
    if !have("grub-editenv") {
        eprintln!("SKIPPED: grub-editenv missing (scripts/deps.sh installs grub-common)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("grub")).unwrap();
    let env = BootEnv::new(dir.path());
    let primary = env.path(EnvCopy::Primary);
    let editenv = |args: &[&str]| {
        let out = Command::new("grub-editenv")
            .arg(&primary)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // A block as the image build makes it (make-disk.sh), with a request set by
    // an older keel-reset.
    editenv(&["create"]);
    editenv(&["set", "keel_good=a", "keel_reset=1"]);
    assert_eq!(keel_reset::requested(&env), Some(false));
    keel_reset::request(&env, true).unwrap();
    assert_eq!(
        editenv(&["list"]),
        "keel_good=a\nkeel_reset=1\nkeel_reset_poweroff=1\n"
    );
    env.clear_reset().unwrap();
    assert_eq!(editenv(&["list"]), "keel_good=a\n");
}
