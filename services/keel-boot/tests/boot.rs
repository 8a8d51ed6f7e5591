//! The two copies on a temporary "ESP": corruption, repair, failed writes, power
//! cuts after every step, and GRUB's own tool on both sides.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;

use keel_boot::{
    parse, serialize, BootEnv, BootEnvSource, BootError, EnvCopy, Slot, Vars, WriteStep,
    BLOCK_SIZE, HEADER,
};

fn esp() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("grub")).unwrap();
    dir
}

fn vars(pairs: &[(&str, &str)]) -> Vars {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn put(env: &BootEnv, copy: EnvCopy, bytes: &[u8]) {
    std::fs::write(env.path(copy), bytes).unwrap();
}

fn both(env: &BootEnv, v: &Vars) {
    let b = serialize(v).unwrap();
    put(env, EnvCopy::Primary, &b);
    put(env, EnvCopy::Backup, &b);
}

fn noise(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random()).collect()
}

/// What a torn write, a bad sector or a confused tool can leave.
fn corruptions() -> Vec<(&'static str, Vec<u8>)> {
    let good = serialize(&vars(&[("keel_good", "b")])).unwrap();
    let mut wrong_header = good.clone();
    wrong_header[..8].copy_from_slice(b"# GRAB E");
    let mut not_utf8 = good.clone();
    not_utf8[HEADER.len() + 2] = 0xc3;
    not_utf8[HEADER.len() + 3] = 0x28;
    vec![
        ("random bytes", noise(BLOCK_SIZE)),
        ("truncated", good[..512].to_vec()),
        ("zero-length", Vec::new()),
        ("wrong header", wrong_header),
        ("invalid UTF-8", not_utf8),
        ("zeros", vec![0; BLOCK_SIZE]),
    ]
}

#[test]
fn corrupt_primary_falls_back_to_the_backup_and_says_so() {
    for (what, bytes) in corruptions() {
        let dir = esp();
        let env = BootEnv::new(dir.path());
        both(&env, &vars(&[("keel_good", "b"), ("keel_reset", "1")]));
        put(&env, EnvCopy::Primary, &bytes);
        let st = env.status();
        assert_eq!(st.source(), BootEnvSource::Backup, "{what}");
        assert_eq!(st.good(), Slot::B, "{what}");
        assert_eq!(
            st.reset(),
            Some(false),
            "{what}: the backup's request stands"
        );
        let problem = st.problem().unwrap();
        assert!(
            problem.contains("primary copy unreadable") && problem.contains("grub/grubenv"),
            "{what}: {problem}"
        );
    }
    // A missing primary too.
    let dir = esp();
    let env = BootEnv::new(dir.path());
    put(&env, EnvCopy::Backup, &serialize(&Vars::new()).unwrap());
    assert_eq!(env.status().source(), BootEnvSource::Backup);
    assert!(env.status().problem().unwrap().contains("missing"));
}

#[test]
fn both_corrupt_means_defaults_and_no_reset() {
    for (what, bytes) in corruptions() {
        let dir = esp();
        let env = BootEnv::new(dir.path());
        put(&env, EnvCopy::Primary, &bytes);
        put(&env, EnvCopy::Backup, &noise(BLOCK_SIZE));
        let st = env.status();
        assert_eq!(st.source(), BootEnvSource::Defaults, "{what}");
        assert_eq!(st.good(), Slot::A);
        assert_eq!(st.trial(), None);
        assert_eq!(st.reset(), None, "{what}: unreadable is no reset");
        let p = st.problem().unwrap();
        assert!(
            p.starts_with("boot environment unreadable (primary: "),
            "{p}"
        );
        assert!(p.contains("no factory reset assumed"), "{p}");
    }
    // Nothing at all on the ESP: the same.
    let dir = esp();
    let st = BootEnv::new(dir.path()).status();
    assert_eq!(st.source(), BootEnvSource::Defaults);
    assert_eq!(st.reset(), None);
}

#[test]
fn mark_good_repairs_both_copies_and_otherwise_writes_nothing() {
    let dir = esp();
    let env = BootEnv::new(dir.path());
    put(&env, EnvCopy::Primary, &noise(BLOCK_SIZE));
    put(&env, EnvCopy::Backup, b"");
    let change = env.mark_good(Slot::A).unwrap();
    assert_eq!(change.written, vec![EnvCopy::Primary, EnvCopy::Backup]);
    assert!(change.repaired);
    assert_eq!(change.before.source(), BootEnvSource::Defaults);
    let st = env.status();
    assert_eq!(st.source(), BootEnvSource::Primary);
    assert_eq!(st.problem(), None);
    let want = vars(&[("keel_good", "a")]);
    assert_eq!(st.primary, Ok(want.clone()));
    assert_eq!(st.backup, Ok(want));

    // Healthy and unchanged: not one byte written (mtime and content untouched).
    let before = std::fs::metadata(env.path(EnvCopy::Primary))
        .unwrap()
        .modified()
        .unwrap();
    let change = env.mark_good(Slot::A).unwrap();
    assert!(!change.wrote() && !change.repaired);
    let after = std::fs::metadata(env.path(EnvCopy::Primary))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);

    // Only the damaged backup is rewritten.
    put(&env, EnvCopy::Backup, &noise(100));
    let change = env.mark_good(Slot::A).unwrap();
    assert_eq!(change.written, vec![EnvCopy::Backup]);
    assert!(change.repaired);
    assert_eq!(env.status().problem(), None);
}

#[test]
fn a_stale_backup_is_brought_in_line() {
    // GRUB's save_env counts tries down in the copy it loaded only.
    let dir = esp();
    let env = BootEnv::new(dir.path());
    put(
        &env,
        EnvCopy::Primary,
        &serialize(&vars(&[
            ("keel_good", "a"),
            ("keel_try", "b"),
            ("keel_tries", "2"),
        ]))
        .unwrap(),
    );
    put(
        &env,
        EnvCopy::Backup,
        &serialize(&vars(&[
            ("keel_good", "a"),
            ("keel_try", "b"),
            ("keel_tries", "3"),
        ]))
        .unwrap(),
    );
    assert_eq!(env.status().trial(), Some((Slot::B, 2)));
    let change = env.mark_good(Slot::B).unwrap();
    assert!(!change.repaired);
    let want = vars(&[("keel_good", "b"), ("keel_prev", "a")]);
    assert_eq!(env.status().primary, Ok(want.clone()));
    assert_eq!(env.status().backup, Ok(want));
}

#[test]
fn transitions() {
    let dir = esp();
    let env = BootEnv::new(dir.path());
    env.mark_good(Slot::A).unwrap();
    assert!(matches!(env.rollback(), Err(BootError::NoRollback)));
    assert!(matches!(
        env.arm_trial(Slot::A, 3),
        Err(BootError::TrialOfGood(Slot::A))
    ));
    assert!(matches!(
        env.arm_trial(Slot::B, 0),
        Err(BootError::Tries(0))
    ));
    assert!(matches!(
        env.arm_trial(Slot::B, 10),
        Err(BootError::Tries(10))
    ));
    env.arm_trial(Slot::B, 3).unwrap();
    assert_eq!(env.status().trial(), Some((Slot::B, 3)));
    env.cancel_trial().unwrap();
    assert_eq!(env.status().trial(), None);
    env.arm_trial(Slot::B, 3).unwrap();
    env.mark_good(Slot::B).unwrap();
    let st = env.status();
    assert_eq!(
        (st.good(), st.trial(), st.previous_good()),
        (Slot::B, None, Some(Slot::A))
    );
    // Rolling back boots A again; B is no longer a target.
    env.rollback().unwrap();
    let st = env.status();
    assert_eq!((st.good(), st.previous_good()), (Slot::A, None));
    // Replacing the rollback target's slot forgets it as a target.
    env.arm_trial(Slot::B, 2).unwrap();
    env.mark_good(Slot::B).unwrap();
    env.arm_trial(Slot::A, 2).unwrap();
    assert_eq!(env.status().previous_good(), None);

    env.request_reset(true).unwrap();
    assert_eq!(env.status().reset(), Some(true));
    env.request_reset(false).unwrap();
    assert_eq!(env.status().reset(), Some(false));
    env.clear_reset().unwrap();
    assert_eq!(env.status().reset(), None);
    let st = env.status();
    assert_eq!(st.primary, st.backup);
}

#[test]
fn a_read_back_that_differs_is_an_error() {
    for bad in [EnvCopy::Primary, EnvCopy::Backup] {
        let dir = esp();
        let target = BootEnv::new(dir.path()).path(bad);
        let env = BootEnv::new(dir.path()).with_write_hook(Box::new(move |step, path| {
            // The medium "keeps" something else than what was written.
            if step == WriteStep::DirSynced && path == target {
                std::fs::write(path, noise(BLOCK_SIZE))?;
            }
            Ok(())
        }));
        let err = env.mark_good(Slot::A).unwrap_err();
        assert!(matches!(err, BootError::Mismatch(_)), "{err}");
        assert!(err.to_string().contains("read back differs"), "{err}");
        // A failed primary stops before the backup is touched.
        if bad == EnvCopy::Primary {
            assert!(!BootEnv::new(dir.path()).path(EnvCopy::Backup).exists());
        }
    }
    // A write that fails outright is an error too (read-only directory).
    let dir = esp();
    let env = BootEnv::new(dir.path()).before_write(Box::new(|| Err("ESP is read-only".into())));
    let err = env.request_reset(false).unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    assert_eq!(BootEnv::new(dir.path()).status().reset(), None);
}

/// Cuts the power after the n-th step: the write stops there.
fn cut_after(dir: &Path, n: usize) -> BootEnv {
    let count = Rc::new(Cell::new(0usize));
    BootEnv::new(dir).with_write_hook(Box::new(move |_, _| {
        count.set(count.get() + 1);
        if count.get() == n {
            Err(std::io::Error::other("power cut"))
        } else {
            Ok(())
        }
    }))
}

#[test]
fn after_every_step_of_a_write_one_copy_is_old_or_new() {
    let old = vars(&[("keel_good", "a"), ("keel_reset", "1")]);
    let new = vars(&[("keel_good", "a")]);
    // Four steps per copy, two copies.
    for n in 1..=8 {
        let dir = esp();
        both(&BootEnv::new(dir.path()), &old);
        let result = cut_after(dir.path(), n).clear_reset();
        assert!(result.is_err(), "step {n}");
        let st = BootEnv::new(dir.path()).status();
        let readable: Vec<&Vars> = [&st.primary, &st.backup]
            .into_iter()
            .filter_map(|r| r.as_ref().ok())
            .collect();
        assert!(!readable.is_empty(), "step {n}: no readable copy");
        for v in &readable {
            assert!(**v == old || **v == new, "step {n}: {v:?}");
        }
        // The primary is the new state as soon as it was renamed.
        if n >= 2 {
            assert_eq!(st.primary.as_ref().ok(), Some(&new), "step {n}");
        }
        // Whatever the cut left, the next write finishes the job.
        BootEnv::new(dir.path()).clear_reset().unwrap();
        let st = BootEnv::new(dir.path()).status();
        assert_eq!(
            (st.primary.as_ref().ok(), st.backup.as_ref().ok()),
            (Some(&new), Some(&new))
        );
    }
    // The new file torn by the cut (before its rename) changes nothing either.
    let dir = esp();
    both(&BootEnv::new(dir.path()), &old);
    let env = BootEnv::new(dir.path()).with_write_hook(Box::new(|step, path| {
        if step == WriteStep::NewWritten {
            std::fs::write(path.with_extension("new"), noise(300))?;
            return Err(std::io::Error::other("power cut"));
        }
        Ok(())
    }));
    assert!(env.clear_reset().is_err());
    let st = BootEnv::new(dir.path()).status();
    assert_eq!((st.primary, st.backup), (Ok(old.clone()), Ok(old)));
}

fn grub_editenv() -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", "command -v grub-editenv"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

#[test]
fn blocks_of_grub_editenv_parse_and_ours_satisfy_it() {
    let Some(tool) = grub_editenv() else {
        eprintln!("SKIPPED: grub-editenv missing (scripts/deps.sh installs grub-common)");
        return;
    };
    let dir = esp();
    let env = BootEnv::new(dir.path());
    let primary = env.path(EnvCopy::Primary);
    let run = |args: &[&str]| {
        let out = Command::new(&tool)
            .arg(&primary)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["create"]);
    run(&[
        "set",
        "keel_good=b",
        "keel_try=a",
        "keel_tries=3",
        "odd=x\\y",
    ]);
    let bytes = std::fs::read(&primary).unwrap();
    assert_eq!(
        parse(&bytes).unwrap(),
        vars(&[
            ("keel_good", "b"),
            ("keel_try", "a"),
            ("keel_tries", "3"),
            ("odd", "x\\y")
        ])
    );

    // What we write, GRUB's tool lists and edits in place (same size).
    env.mark_good(Slot::A).unwrap();
    env.request_reset(true).unwrap();
    for copy in [EnvCopy::Primary, EnvCopy::Backup] {
        let out = Command::new(&tool)
            .arg(env.path(copy))
            .arg("list")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let listed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            listed, "keel_good=a\nkeel_prev=b\nkeel_reset=1\nkeel_reset_poweroff=1\nodd=x\\y\n",
            "{copy:?}"
        );
    }
    run(&["set", "keel_tries=2"]);
    assert_eq!(
        std::fs::metadata(&primary).unwrap().len(),
        BLOCK_SIZE as u64
    );
    assert_eq!(
        env.status()
            .primary
            .unwrap()
            .get("keel_tries")
            .map(String::as_str),
        Some("2")
    );
}

#[test]
fn the_binary_marks_good_and_records_the_state() {
    let dir = esp();
    let env = BootEnv::new(dir.path());
    put(&env, EnvCopy::Primary, &noise(BLOCK_SIZE));
    put(&env, EnvCopy::Backup, &noise(BLOCK_SIZE));
    let cmdline = dir.path().join("cmdline");
    std::fs::write(&cmdline, "root=PARTLABEL=root-a keel.slot=a quiet\n").unwrap();
    let state = dir.path().join("run/keel/boot/state.json");
    let keel_boot = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_keel-boot"))
            .arg("--esp-dir")
            .arg(dir.path())
            .arg("--state-file")
            .arg(&state)
            .arg("--cmdline")
            .arg(&cmdline)
            .args(args)
            .output()
            .unwrap()
    };
    // The health gate: every unit active (a stand-in systemctl), the console answering.
    let systemctl = dir.path().join("systemctl");
    std::fs::write(
        &systemctl,
        "#!/bin/sh\nfor u; do case $u in -*|show) continue;; esac\n\
         printf 'Id=%s\\nLoadState=loaded\\nActiveState=active\\nSubState=running\\n\\n' \"$u\"; done\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let console = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = keel_boot(&[
        "mark-good",
        "--systemctl",
        systemctl.to_str().unwrap(),
        "--console",
        &console.local_addr().unwrap().to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let s: keel_boot::BootState = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(s.source, BootEnvSource::Defaults);
    assert!(
        s.problem.as_deref().unwrap().contains("unreadable"),
        "{s:?}"
    );
    assert!(s.repaired);
    assert_eq!(s.running_slot.as_deref(), Some("a"));
    assert_eq!(s.good_slot, "a");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o644);
    assert_eq!(mode(state.parent().unwrap()), 0o755);
    let st = env.status();
    assert_eq!((st.source(), st.problem()), (BootEnvSource::Primary, None));

    // A later status still shows what this boot found, and says it was repaired.
    let out = keel_boot(&["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let s: keel_boot::BootState = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((s.source, s.problem), (BootEnvSource::Primary, None));
    let s: keel_boot::BootState = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert!(s.problem.is_some() && s.repaired, "{s:?}");
}
