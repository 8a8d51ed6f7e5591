//! The vendor CLI, run as a process: exit codes and messages.

use std::path::Path;
use std::process::{Command, Output};

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel-bundle"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn keygen_build_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["keygen", "--out", "vendor"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.join("vendor.secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let public = std::fs::read_to_string(d.join("vendor.pub")).unwrap();
    assert!(public.starts_with("keel-update-key v1 ed25519 "));
    let err = fails(d, &["keygen", "--out", "vendor"]);
    assert!(err.contains("refusing to overwrite"), "{err}");
    ok(d, &["keygen", "--out", "other"]);

    std::fs::write(d.join("rootfs.img"), vec![0x5a; 100_000]).unwrap();
    let built = ok(
        d,
        &[
            "build",
            "--key",
            "vendor.secret",
            "--product",
            "keel",
            "--version",
            "0.3.0",
            "--kind",
            "base",
            "--payload",
            "rootfs.img",
            "--installs-over",
            ">=0.2.0",
            "--out",
            "keel-base-0.3.0.kbundle",
        ],
    );
    assert!(built.contains("keel base 0.3.0"), "{built}");

    let verified = ok(
        d,
        &["verify", "--key", "vendor.pub", "keel-base-0.3.0.kbundle"],
    );
    assert!(verified.contains("OK, verified"), "{verified}");
    // Two keys (rotation): still fine.
    ok(
        d,
        &[
            "verify",
            "--key",
            "other.pub",
            "--key",
            "vendor.pub",
            "keel-base-0.3.0.kbundle",
        ],
    );
    let err = fails(
        d,
        &["verify", "--key", "other.pub", "keel-base-0.3.0.kbundle"],
    );
    assert!(err.contains("unknown key"), "{err}");
    let err = fails(
        d,
        &[
            "verify",
            "--key",
            "vendor.pub",
            "--product",
            "nope",
            "keel-base-0.3.0.kbundle",
        ],
    );
    assert!(err.contains("product"), "{err}");
    // With the installed versions: the appliance's policy.
    ok(
        d,
        &[
            "verify",
            "--key",
            "vendor.pub",
            "--installed",
            "base=0.2.0",
            "keel-base-0.3.0.kbundle",
        ],
    );
    let err = fails(
        d,
        &[
            "verify",
            "--key",
            "vendor.pub",
            "--installed",
            "base=0.3.0",
            "keel-base-0.3.0.kbundle",
        ],
    );
    assert!(err.contains("already installed"), "{err}");
    let err = fails(
        d,
        &[
            "verify",
            "--key",
            "vendor.pub",
            "--installed",
            "base=0.2.0",
            "--max-payload",
            "1000",
            "keel-base-0.3.0.kbundle",
        ],
    );
    assert!(err.contains("does not fit"), "{err}");

    // Damage the last payload byte.
    let mut bytes = std::fs::read(d.join("keel-base-0.3.0.kbundle")).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(d.join("bad.kbundle"), &bytes).unwrap();
    let err = fails(d, &["verify", "--key", "vendor.pub", "bad.kbundle"]);
    assert!(err.contains("SHA-256 mismatch"), "{err}");
    std::fs::write(d.join("empty.kbundle"), b"").unwrap();
    let err = fails(d, &["verify", "--key", "vendor.pub", "empty.kbundle"]);
    assert!(err.contains("truncated"), "{err}");

    let inspected = ok(d, &["inspect", "keel-base-0.3.0.kbundle"]);
    assert!(inspected.contains("UNVERIFIED"), "{inspected}");
    assert!(inspected.contains("\"version\": \"0.3.0\""), "{inspected}");

    // A bad argument is a usage error, not a crash.
    let out = run(
        d,
        &[
            "build",
            "--key",
            "vendor.secret",
            "--version",
            "1.2",
            "--kind",
            "base",
            "--payload",
            "rootfs.img",
            "--out",
            "x.kbundle",
        ],
    );
    assert!(!out.status.success());
}

#[test]
fn index_and_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["keygen", "--out", "vendor"]);
    ok(d, &["keygen", "--identity", "--out", "box"]);
    std::fs::create_dir(d.join("bundles")).unwrap();
    std::fs::write(d.join("p"), b"payload").unwrap();
    for (version, over, extra) in [
        ("0.2.0", ">=0.1.0", None),
        ("0.3.0", ">=0.2.0", None),
        ("1.0.0", "*", Some("app")),
    ] {
        let out = format!("bundles/{}-{version}.kbundle", extra.unwrap_or("base"));
        let mut args = vec![
            "build",
            "--key",
            "vendor.secret",
            "--version",
            version,
            "--payload",
            "p",
            "--installs-over",
            over,
            "--out",
            &out,
        ];
        match extra {
            Some(name) => {
                args.extend(["--kind", "app", "--name", name, "--requires", "base>=0.3.0"])
            }
            None => args.extend(["--kind", "base"]),
        }
        ok(d, &args);
    }
    let indexed = ok(
        d,
        &[
            "index",
            "--key",
            "vendor.secret",
            "--dir",
            "bundles",
            "--out",
            "feed",
        ],
    );
    assert!(indexed.contains("3 bundles"), "{indexed}");

    let dk = ok(
        d,
        &[
            "make-download-key",
            "--identity",
            "box.secret",
            "--appliance-id",
            "KEEL-1",
            "--installed",
            "base=0.1.0",
        ],
    );
    std::fs::write(d.join("dk.txt"), &dk).unwrap();
    let answer = ok(
        d,
        &[
            "answer",
            "--download-key",
            "dk.txt",
            "--bundles",
            "bundles",
            "--app",
            "app",
        ],
    );
    let order: Vec<&str> = answer
        .lines()
        .filter_map(|l| l.trim_start().split_once(". ").map(|(_, rest)| rest))
        .collect();
    assert_eq!(order.len(), 3, "{answer}");
    assert!(order[0].starts_with("base-0.2.0.kbundle"), "{answer}");
    assert!(order[1].starts_with("base-0.3.0.kbundle"), "{answer}");
    assert!(order[2].starts_with("app-1.0.0.kbundle"), "{answer}");
    ok(
        d,
        &[
            "answer",
            "--download-key",
            "dk.txt",
            "--bundles",
            "bundles",
            "--key",
            "box.pub",
        ],
    );
    // Another appliance's key, a tampered block.
    let err = fails(
        d,
        &[
            "answer",
            "--download-key",
            "dk.txt",
            "--bundles",
            "bundles",
            "--key",
            "vendor.pub",
        ],
    );
    assert!(err.contains("vendor.pub"), "{err}");
    std::fs::write(d.join("bad.txt"), dk.replacen("A", "B", 1)).unwrap();
    fails(
        d,
        &[
            "answer",
            "--download-key",
            "bad.txt",
            "--bundles",
            "bundles",
        ],
    );
}
