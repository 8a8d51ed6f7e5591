//! Checks on the built root slot that need no boot.

use std::process::Command;

use keel_qemu_tests::{image_or_skip, workspace_root};

/// Every kernel module of image/required-modules.txt is in the root slot: a later
/// trim of the module tree cannot silently drop a NIC or storage driver.
#[test]
fn root_slot_carries_required_kernel_modules() {
    if image_or_skip().is_none() {
        return;
    }
    let root = workspace_root();
    let squashfs = root.join("build/root.squashfs");
    let out = Command::new(root.join("image/check-modules.sh"))
        .arg(&squashfs)
        .output()
        .expect("run check-modules.sh");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = std::fs::read_to_string(root.join("image/required-modules.txt")).unwrap();
    for m in [
        "virtio_net",
        "vmxnet3",
        "hv_netvsc",
        "ixgbe",
        "nvme",
        "mpt3sas",
    ] {
        assert!(listed.lines().any(|l| l == m), "{m} dropped from the list");
    }
}

/// The check really fails when a module is missing (it is not a test that cannot fail).
#[test]
fn module_check_names_a_missing_module() {
    if image_or_skip().is_none() {
        return;
    }
    let root = workspace_root();
    let list = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(list.path(), "virtio_net\nno_such_driver_xyz\n").unwrap();
    let out = Command::new(root.join("image/check-modules.sh"))
        .arg(root.join("build/root.squashfs"))
        .arg(list.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no_such_driver_xyz") && !err.contains("virtio_net"),
        "{err}"
    );
}
