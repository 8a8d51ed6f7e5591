//! Config sync between two appliance roots on one machine: the primary's files
//! exported, the backup's applied, through the real certificate store, the real
//! update-settings parser and real argon2 hashes; bad bundles leave the backup
//! byte-for-byte as it was. The agent is driven over a socket pair, in-process and
//! as the real `keel-failover sync-agent` binary.

use std::collections::BTreeMap;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use keel_api::{CertTargets, KeyType, NewCertRequest};
use keel_certs::CertStore;
use keel_failover::sync::{self, SyncBackend, SyncPaths};

const SHARED: &str = "10.0.0.100";
const B_NODE: &str = "10.0.0.2";

fn shared_nets() -> Vec<IpNetwork> {
    vec![format!("{SHARED}/24").parse().unwrap()]
}

fn shared_ips() -> Vec<IpAddr> {
    vec![SHARED.parse().unwrap()]
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn set_mode(p: &Path, m: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
}

fn write(p: &Path, data: &[u8], m: u32) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
    set_mode(p, m);
}

/// A real argon2id hash, as the console stores it.
fn admin_json(password: &str) -> Vec<u8> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string();
    format!("{{\n  \"password_hash\": \"{hash}\",\n  \"format\": 1\n}}\n").into_bytes()
}

/// keel-console's `users.json` with `admin` (the hash of `admin_json`) and an
/// auditor.
fn users_json(admin: &[u8]) -> Vec<u8> {
    let admin: serde_json::Value = serde_json::from_slice(admin).unwrap();
    let auditor: serde_json::Value =
        serde_json::from_slice(&admin_json("auditor's long pass")).unwrap();
    serde_json::to_vec_pretty(&serde_json::json!({"format": 1, "users": [
        {"name": "admin", "role": "administrator", "password_hash": admin["password_hash"],
         "disabled": false, "created": "2026-12-01T10:00:00Z"},
        {"name": "carol", "role": "auditor", "password_hash": auditor["password_hash"],
         "disabled": false, "created": "2026-12-01T10:00:00Z"},
    ]}))
    .unwrap()
}

fn new_cert(store: &CertStore, name: &str, ip: &str) -> String {
    store
        .create_self_signed(&NewCertRequest {
            label: name.into(),
            common_name: name.into(),
            sans: vec![name.into(), ip.into()],
            key_type: KeyType::EcdsaP256,
            days: Some(30),
            organization: String::new(),
        })
        .unwrap()
        .id
}

fn assign(store: &CertStore, id: &str, ips: &[&str]) {
    store
        .assign(
            id,
            &CertTargets {
                default: false,
                ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
                hostnames: Vec::new(),
            },
        )
        .unwrap();
}

struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
    paths: SyncPaths,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let paths = SyncPaths::under(&root);
        fs::create_dir_all(&paths.console).unwrap();
        set_mode(&paths.console, 0o700);
        fs::create_dir_all(paths.update_settings.parent().unwrap()).unwrap();
        set_mode(paths.update_settings.parent().unwrap(), 0o700);
        // The node's own identity (`builtin`): served where nothing else is, never
        // synced.
        keel_certs::DefaultIdentity::new(paths.console.join("tls"))
            .load_or_create("node.example.test", &[])
            .unwrap();
        Self {
            _dir: dir,
            root,
            paths,
        }
    }

    fn store(&self) -> CertStore {
        CertStore::open(
            self.paths.console.join("certs"),
            self.paths.console.join("tls"),
        )
        .unwrap()
    }

    fn file(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

struct Pair {
    a: Node,
    b: Node,
    a_cert: String,
    b_cert: String,
}

/// A: admin, a certificate on the shared address, update settings with a proxy
/// password, shared files with several modes. B: its own admin, its own
/// certificate on its node address and (until the sync) on the shared address,
/// older settings and a stale shared file.
fn pair() -> Pair {
    let a = Node::new();
    let a_admin = admin_json("primary-pass");
    write(&a.file("data/console/admin.json"), &a_admin, 0o600);
    write(
        &a.file("data/console/users.json"),
        &users_json(&a_admin),
        0o600,
    );
    let sa = a.store();
    let a_cert = new_cert(&sa, "site.example.test", SHARED);
    assign(&sa, &a_cert, &[SHARED]);
    let settings = keel_update::settings::StoredSettings {
        feed_url: Some("https://updates.example.test/feed.json".into()),
        proxy_url: Some("http://proxy.example.test:3128".into()),
        proxy_user: Some("keel".into()),
        proxy_password: Some("proxy-secret".into()),
        ca_certificate: None,
    };
    settings.save(&a.paths.update_settings).unwrap();
    write(
        &a.file("data/shared/app/config.ini"),
        b"[app]\nname=site\n",
        0o640,
    );
    write(&a.file("data/shared/app/secret.key"), b"k3y", 0o600);
    write(&a.file("data/shared/run.sh"), b"#!/bin/sh\n", 0o755);
    fs::create_dir_all(a.file("data/shared/empty")).unwrap();
    set_mode(&a.file("data/shared/empty"), 0o750);

    let b = Node::new();
    write(
        &b.file("data/console/admin.json"),
        &admin_json("backup-pass"),
        0o600,
    );
    let sb = b.store();
    let b_cert = new_cert(&sb, "node-b.example.test", B_NODE);
    assign(&sb, &b_cert, &[B_NODE, SHARED]);
    keel_update::settings::StoredSettings {
        feed_url: Some("https://old.example.test/feed.json".into()),
        ..Default::default()
    }
    .save(&b.paths.update_settings)
    .unwrap();
    write(&b.file("data/shared/stale.txt"), b"old", 0o644);
    Pair {
        a,
        b,
        a_cert,
        b_cert,
    }
}

/// Every entry under a root: kind, mode, owner, content or link target.
fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let (kind, data) = if m.is_symlink() {
                (
                    "link",
                    fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else if m.is_dir() {
                stack.push(p.clone());
                ("dir", Vec::new())
            } else {
                ("file", fs::read(&p).unwrap())
            };
            out.insert(
                rel,
                (format!("{kind} {}:{}", m.uid(), m.gid()), m.mode(), data),
            );
        }
    }
    out
}

type Snapshot = BTreeMap<PathBuf, (String, u32, Vec<u8>)>;

/// The paths that differ (only names: the contents hold keys and hashes).
fn changes(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let paths: std::collections::BTreeSet<&PathBuf> = before.keys().chain(after.keys()).collect();
    paths
        .into_iter()
        .filter(|p| before.get(*p) != after.get(*p))
        .map(|p| p.display().to_string())
        .collect()
}

#[tokio::test]
async fn a_sync_carries_users_certificate_settings_and_shared_data() {
    let p = pair();
    let identity = "data/console/tls/default.crt";
    let b_identity = fs::read(p.b.file(identity)).unwrap();
    let bundle = SyncBackend::InProcess(p.a.paths.clone())
        .export(&shared_nets())
        .await
        .unwrap();
    let items = SyncBackend::InProcess(p.b.paths.clone())
        .apply(bundle.clone(), &shared_nets())
        .await
        .unwrap();
    assert_eq!(
        items,
        vec![
            "console users".to_string(),
            format!("certificate {} for {SHARED}", p.a_cert),
            "update settings".into(),
            "shared data: 3 files, 29 bytes".into(),
        ]
    );

    // Console users: A's users.json and admin.json, byte for byte, still 0600.
    for file in ["data/console/admin.json", "data/console/users.json"] {
        assert_eq!(
            fs::read(p.b.file(file)).unwrap(),
            fs::read(p.a.file(file)).unwrap()
        );
        assert_eq!(mode(&p.b.file(file)), 0o600);
    }

    // Certificates: A's on the shared address, B's own one still on its node
    // address, both served by B's store.
    let sb = p.b.store();
    let a = sb.assignments().unwrap();
    assert_eq!(a.ips[&SHARED.parse::<IpAddr>().unwrap()], p.a_cert);
    assert_eq!(a.ips[&B_NODE.parse::<IpAddr>().unwrap()], p.b_cert);
    let list = sb.list().unwrap();
    let ids: Vec<&str> = list.certificates.iter().map(|c| c.id.as_str()).collect();
    assert!(ids.contains(&p.a_cert.as_str()) && ids.contains(&p.b_cert.as_str()));
    let synced = sb.get(&p.a_cert).unwrap();
    let original = p.a.store().get(&p.a_cert).unwrap();
    assert_eq!(synced.sha256_fingerprint, original.sha256_fingerprint);
    assert_eq!(synced.assigned, vec![format!("ip:{SHARED}")]);
    let key =
        p.b.file(&format!("data/console/certs/{}/key.pem", p.a_cert));
    assert_eq!(mode(&key), 0o600);
    let serving = sb.serving().unwrap();
    let on_shared = serving.choose(Some(SHARED.parse().unwrap()), None);
    assert_eq!(
        keel_certs::fingerprint(on_shared.cert[0].as_ref()),
        original.sha256_fingerprint
    );
    // B's own identity stays B's.
    assert_eq!(fs::read(p.b.file(identity)).unwrap(), b_identity);
    assert_ne!(b_identity, fs::read(p.a.file(identity)).unwrap());

    // Update settings: A's, password included, 0600.
    let s = "data/update/settings.json";
    assert_eq!(
        fs::read(p.b.file(s)).unwrap(),
        fs::read(p.a.file(s)).unwrap()
    );
    assert_eq!(mode(&p.b.file(s)), 0o600);
    let loaded = keel_update::settings::StoredSettings::load(&p.b.paths.update_settings);
    assert_eq!(loaded.proxy_password.as_deref(), Some("proxy-secret"));

    // Shared data replaced as a whole, modes kept.
    let a_shared = snapshot(&p.a.paths.shared);
    let b_shared = snapshot(&p.b.paths.shared);
    let strip = |m: Snapshot| {
        m.into_iter()
            .map(|(k, (kind, mode, d))| (k, kind.split(' ').next().unwrap().to_owned(), mode, d))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(b_shared), strip(a_shared));
    assert!(!p.b.file("data/shared/stale.txt").exists());
    assert_eq!(mode(&p.b.file("data/shared/app/secret.key")), 0o600);
    assert_eq!(mode(&p.b.file("data/shared/empty")), 0o750);

    // Nothing left beside the targets.
    for d in ["data", "data/console", "data/console/certs", "data/update"] {
        for e in fs::read_dir(p.b.file(d)).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!n.starts_with(".sync-stage-"), "{d}/{n} left behind");
        }
    }

    // The same bundle again changes nothing and rewrites nothing.
    let before = snapshot(&p.b.root);
    let again = sync::apply(&p.b.paths, &bundle, &shared_ips()).unwrap();
    assert!(
        !again.console_users_changed
            && !again.certificates_changed
            && !again.update_settings_changed
            && !again.shared_changed,
        "{again:?}"
    );
    let after = snapshot(&p.b.root);
    assert!(after == before, "rewritten: {:?}", changes(&before, &after));
}

/// Applies `bundle` on B, expects an error containing `says`, and B unchanged.
fn refused(p: &Pair, bundle: &[u8], says: &str) {
    let before = snapshot(&p.b.root);
    let e = sync::apply(&p.b.paths, bundle, &shared_ips())
        .err()
        .unwrap_or_else(|| panic!("applied; expected an error saying {says:?}"));
    assert!(e.to_string().contains(says), "{e} (expected {says:?})");
    let after = snapshot(&p.b.root);
    assert!(
        after == before,
        "B changed after {e}: {:?}",
        changes(&before, &after)
    );
}

fn edit(bundle: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(bundle).unwrap();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test]
async fn bad_bundles_change_nothing() {
    let p = pair();
    let bundle = sync::export(&p.a.paths, &shared_ips()).unwrap();

    let mut corrupt = bundle.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid..mid + 8].copy_from_slice(b"\"}]\x00\x01{[,");
    refused(&p, &corrupt, "not a sync bundle");
    refused(&p, &bundle[..bundle.len() / 2], "not a sync bundle");
    refused(&p, b"\x1f\x8b garbage", "not a sync bundle");

    let newer = edit(&bundle, |v| v["bundle_format"] = 3.into());
    refused(&p, &newer, "newer version");

    for escape in ["../escape", "/etc/escape", "app/../../escape"] {
        let b = edit(&bundle, |v| {
            v["shared"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"path": escape, "mode": 0o644, "data": "eA=="}));
        });
        refused(&p, &b, "not a plain relative path");
    }
    let setuid = edit(&bundle, |v| {
        v["shared"][1]["mode"] = 0o4755.into();
    });
    refused(&p, &setuid, "setuid");

    // A damaged password hash, a key that is not the certificate's, a bad setting:
    // each refused by its owner's reader.
    let bad_admin = edit(&bundle, |v| {
        v["console_users"][0]["data"] = base64_of(br#"{"format":1,"password_hash":"plain"}"#);
    });
    refused(&p, &bad_admin, "console users");
    // Every account's hash is checked, not only admin's.
    let bad_users = edit(&bundle, |v| {
        let mut users: serde_json::Value =
            serde_json::from_slice(&users_json(&admin_json("x"))).unwrap();
        users["users"][1]["password_hash"] =
            "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into();
        v["console_accounts"][0]["data"] = base64_of(&serde_json::to_vec(&users).unwrap());
    });
    refused(&p, &bad_users, "carol: a pbkdf2-sha256 hash");
    let bad_key = edit(&bundle, |v| {
        let files = v["certificates"]["entries"][0]["files"]
            .as_array_mut()
            .unwrap();
        let key = files.iter_mut().find(|f| f["name"] == "key.pem").unwrap();
        key["data"] = base64_of(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    });
    refused(&p, &bad_key, "sync bundle refused");
    let bad_settings = edit(&bundle, |v| {
        v["update_settings"][0]["data"] =
            base64_of(br#"{"format":1,"feed_url":"http://plain.example.test/feed"}"#);
    });
    refused(&p, &bad_settings, "https://");
    let newer_admin = edit(&bundle, |v| {
        v["console_users"][0]["data"] = base64_of(br#"{"format":7,"password_hash":"x"}"#);
    });
    refused(&p, &newer_admin, "newer version");

    // Over the caps: one file, and the whole bundle.
    let big = edit(&bundle, |v| {
        v["console_users"][0]["data"] = base64_of(&vec![b' '; sync::MAX_FILE_BYTES + 1]);
    });
    refused(&p, &big, "larger than");
    refused(
        &p,
        &vec![b' '; sync::MAX_BUNDLE_BYTES + 1],
        "more than the limit",
    );
}

fn base64_of(b: &[u8]) -> serde_json::Value {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b).into()
}

#[test]
fn a_symlink_or_device_in_the_shared_data_is_not_exported() {
    let p = pair();
    std::os::unix::fs::symlink("/etc/shadow", p.a.file("data/shared/app/link")).unwrap();
    let e = sync::export(&p.a.paths, &shared_ips()).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    fs::remove_file(p.a.file("data/shared/app/link")).unwrap();
    nix::unistd::mkfifo(&p.a.file("data/shared/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let e = sync::export(&p.a.paths, &shared_ips()).unwrap_err();
    assert!(
        e.to_string().contains("not a regular file or directory"),
        "{e}"
    );
}

#[test]
fn oversize_shared_data_is_not_exported() {
    let p = pair();
    let f = fs::File::create(p.a.file("data/shared/huge.bin")).unwrap();
    // Sparse: the size is what counts, no disk is used.
    f.set_len(sync::MAX_SHARED_BYTES + 1).unwrap();
    let e = sync::export(&p.a.paths, &shared_ips()).unwrap_err();
    assert!(e.to_string().contains("larger than"), "{e}");
}

#[test]
fn a_failure_while_staging_removes_the_stages_and_changes_nothing() {
    let p = pair();
    let bundle = sync::export(&p.a.paths, &shared_ips()).unwrap();
    // Where B's update settings directory should be there is a file: the console
    // users and the certificate are staged by then, the settings cannot be.
    let dir = p.b.paths.update_settings.parent().unwrap().to_path_buf();
    fs::remove_dir_all(&dir).unwrap();
    fs::write(&dir, b"not a directory").unwrap();
    refused(&p, &bundle, "Not a directory");
}

#[test]
fn a_certificate_missing_from_the_bundle_or_another_shared_address_is_refused() {
    let p = pair();
    let bundle = sync::export(&p.a.paths, &shared_ips()).unwrap();
    let no_entry = edit(&bundle, |v| {
        v["certificates"]["entries"] = serde_json::json!([]);
    });
    refused(&p, &no_entry, "not in the bundle");
    // B configured with a shared address A says nothing about.
    let before = snapshot(&p.b.root);
    let e = sync::apply(&p.b.paths, &bundle, &["10.0.0.200".parse().unwrap()]).unwrap_err();
    assert!(e.to_string().contains("same shared addresses"), "{e}");
    assert!(snapshot(&p.b.root) == before);
}

#[test]
fn the_agent_serves_one_request_per_connection() {
    use std::os::unix::net::UnixStream;
    let p = pair();
    // Export from A through the agent's framing.
    let (mut client, mut server) = UnixStream::pair().unwrap();
    let a_paths = p.a.paths.clone();
    let t = std::thread::spawn(move || {
        let mut r = server.try_clone().unwrap();
        sync::serve_one(&a_paths, &mut r, &mut server)
    });
    let bundle = roundtrip(&mut client, "export", &[]);
    assert!(t.join().unwrap().unwrap().is_none());
    assert_eq!(bundle.1, sync::export(&p.a.paths, &shared_ips()).unwrap());

    // A refused apply answers with the reason.
    let (mut client, mut server) = UnixStream::pair().unwrap();
    let b_paths = p.b.paths.clone();
    let t = std::thread::spawn(move || {
        let mut r = server.try_clone().unwrap();
        sync::serve_one(&b_paths, &mut r, &mut server)
    });
    let (answer, _) = roundtrip(&mut client, "apply", b"garbage");
    assert_eq!(answer["ok"], false);
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("not a sync bundle"));
    assert!(t.join().unwrap().is_err());
}

/// One request in the agent's framing; the answer's header and body.
fn roundtrip(
    s: &mut std::os::unix::net::UnixStream,
    op: &str,
    body: &[u8],
) -> (serde_json::Value, Vec<u8>) {
    use std::io::{Read, Write};
    let header = serde_json::to_vec(&serde_json::json!({
        "op": op,
        "shared": [format!("{SHARED}/24")],
        "bundle_len": body.len(),
    }))
    .unwrap();
    s.write_all(&(header.len() as u32).to_be_bytes()).unwrap();
    s.write_all(&header).unwrap();
    s.write_all(body).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut h = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut h).unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&h).unwrap();
    let mut out = vec![0u8; answer["bundle_len"].as_u64().unwrap() as usize];
    s.read_exact(&mut out).unwrap();
    (answer, out)
}

/// The client side (`SyncBackend::Agent`) against a socket that hands each
/// connection to the agent, as the `Accept=yes` unit does.
#[tokio::test]
async fn the_agent_backend_exports_and_applies_through_the_socket() {
    let p = pair();
    let dir = tempfile::tempdir().unwrap();
    let serve = |paths: SyncPaths, sock: PathBuf| {
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut r = s.try_clone().unwrap();
            sync::serve_one(&paths, &mut r, &mut s)
        })
    };
    let a_sock = dir.path().join("a.sock");
    let ta = serve(p.a.paths.clone(), a_sock.clone());
    let bundle = SyncBackend::Agent(a_sock)
        .export(&shared_nets())
        .await
        .unwrap();
    ta.join().unwrap().unwrap();
    let b_sock = dir.path().join("b.sock");
    let tb = serve(p.b.paths.clone(), b_sock.clone());
    let items = SyncBackend::Agent(b_sock)
        .apply(bundle, &shared_nets())
        .await
        .unwrap();
    let applied = tb.join().unwrap().unwrap().unwrap();
    assert_eq!(items, applied.items);
    assert!(applied.console_users_changed && applied.certificates_changed);
    let admin = "data/console/admin.json";
    assert_eq!(
        fs::read(p.b.file(admin)).unwrap(),
        fs::read(p.a.file(admin)).unwrap()
    );
}

/// The real binary, its stdin and stdout one end of a socket pair (what systemd
/// passes with `Accept=yes`), its paths under a temp root.
#[test]
fn keel_failover_sync_agent_runs_on_a_socket_as_stdin_and_stdout() {
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_keel-failover");
    let help = Command::new(bin).arg("--help").output().unwrap();
    if !String::from_utf8_lossy(&help.stdout).contains("sync-agent") {
        eprintln!("SKIP: this keel-failover binary has no sync-agent command yet (main.rs)");
        return;
    }
    let p = pair();
    let run = |root: &Path, op: &str, body: &[u8]| {
        let (mut client, server) = UnixStream::pair().unwrap();
        let fd: OwnedFd = server.into();
        let child = Command::new(bin)
            .arg("sync-agent")
            .env(sync::AGENT_ROOT_ENV, root)
            .stdin(Stdio::from(fd.try_clone().unwrap()))
            .stdout(Stdio::from(fd))
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = roundtrip(&mut client, op, body);
        let status = child.wait_with_output().unwrap().status;
        (out, status)
    };
    let ((answer, bundle), status) = run(&p.a.root, "export", &[]);
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(status.success());
    let ((answer, _), status) = run(&p.b.root, "apply", &bundle);
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(status.success());
    assert_eq!(answer["items"][0], "console users", "{answer}");
    let s = "data/update/settings.json";
    assert_eq!(
        fs::read(p.b.file(s)).unwrap(),
        fs::read(p.a.file(s)).unwrap()
    );
    let ((answer, _), status) = run(&p.b.root, "apply", b"{\"bundle_format\": 9}");
    assert_eq!(answer["ok"], false);
    assert!(answer["error"].as_str().unwrap().contains("newer version"));
    assert!(!status.success());
}

/// A primary without an admin account yet leaves the backup's (never a way in by
/// setup code); one without update settings clears the backup's, copies included;
/// one whose `admin` account was deleted removes the backup's `admin.json`.
#[test]
fn what_the_primary_lacks() {
    let p = pair();
    fs::remove_file(p.a.file("data/console/admin.json")).unwrap();
    let a_users = fs::read(p.a.file("data/console/users.json")).unwrap();
    fs::remove_file(p.a.file("data/console/users.json")).unwrap();
    fs::remove_file(&p.a.paths.update_settings).unwrap();
    let copy = p.b.file("data/update/settings.json.format-1");
    write(
        &copy,
        br#"{"format":1,"feed_url":"https://older.example.test/f"}"#,
        0o600,
    );
    let b_admin = fs::read(p.b.file("data/console/admin.json")).unwrap();
    let bundle = sync::export(&p.a.paths, &shared_ips()).unwrap();
    let applied = sync::apply(&p.b.paths, &bundle, &shared_ips()).unwrap();
    assert!(
        !applied.items.contains(&"console users".to_string()),
        "{applied:?}"
    );
    assert!(applied.items.contains(&"update settings: none".to_string()));
    assert!(!applied.console_users_changed && applied.update_settings_changed);
    assert_eq!(
        fs::read(p.b.file("data/console/admin.json")).unwrap(),
        b_admin
    );
    assert!(!p.b.paths.update_settings.exists() && !copy.exists());

    write(&p.a.file("data/console/users.json"), &a_users, 0o600);
    let bundle = sync::export(&p.a.paths, &shared_ips()).unwrap();
    let applied = sync::apply(&p.b.paths, &bundle, &shared_ips()).unwrap();
    assert!(applied.console_users_changed, "{applied:?}");
    assert!(!p.b.file("data/console/admin.json").exists());
    assert_eq!(
        fs::read(p.b.file("data/console/users.json")).unwrap(),
        a_users
    );
}

/// An `admin.json` in a newer format travels with the copy kept in this build's
/// format (keel-core `format`), which is what the backup's console reads.
#[test]
fn format_copies_travel_with_their_file() {
    let p = pair();
    let hash = admin_json("primary-pass");
    let v: serde_json::Value = serde_json::from_slice(&hash).unwrap();
    let newer = serde_json::json!({"format": 2, "users": [{"name": "admin",
        "password_hash": v["password_hash"]}]});
    write(
        &p.a.file("data/console/admin.json"),
        &serde_json::to_vec(&newer).unwrap(),
        0o600,
    );
    write(&p.a.file("data/console/admin.json.format-1"), &hash, 0o600);
    let bundle = sync::export(&p.a.paths, &shared_ips()).unwrap();
    sync::apply(&p.b.paths, &bundle, &shared_ips()).unwrap();
    for f in [
        "data/console/admin.json",
        "data/console/admin.json.format-1",
    ] {
        assert_eq!(
            fs::read(p.b.file(f)).unwrap(),
            fs::read(p.a.file(f)).unwrap()
        );
    }
    // Without the copy the backup cannot read it: refused, nothing changed.
    let no_copy = edit(&bundle, |v| {
        v["console_users"]
            .as_array_mut()
            .unwrap()
            .retain(|b| b["name"] == "admin.json");
    });
    fs::remove_file(p.b.file("data/console/admin.json.format-1")).unwrap();
    write(
        &p.b.file("data/console/admin.json"),
        &admin_json("backup-pass"),
        0o600,
    );
    refused(&p, &no_copy, "newer version");
}

/// The client half of `the_agent_serves_only_the_daemons_user`, run by that test
/// as another user (this test binary again); does nothing on its own.
#[test]
fn peer_client_helper() {
    let Some(sock) = std::env::var_os("KEEL_SYNC_TEST_PEER_SOCKET") else {
        return;
    };
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    let (answer, body) = roundtrip(&mut s, "export", &[]);
    println!("ANSWER {answer} {}", body.len());
}

/// The socket's group lets the console in too; the agent itself serves only the
/// daemon's user and root (SO_PEERCRED of the connection it is given).
#[test]
fn the_agent_serves_only_the_daemons_user() {
    use std::os::fd::OwnedFd;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root to connect as another user (nobody)");
        return;
    }
    let p = pair();
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o755);
    let sock = dir.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    set_mode(&sock, 0o777);
    let client = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "peer_client_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KEEL_SYNC_TEST_PEER_SOCKET", &sock)
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (conn, _) = listener.accept().unwrap();
    let fd: OwnedFd = conn.into();
    let agent = Command::new(env!("CARGO_BIN_EXE_keel-failover"))
        .arg("sync-agent")
        .env(sync::AGENT_ROOT_ENV, &p.a.root)
        .stdin(Stdio::from(fd.try_clone().unwrap()))
        .stdout(Stdio::from(fd))
        .status()
        .unwrap();
    let out = client.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(!agent.success());
    // The test harness prints its own words before the helper's line.
    let line = out
        .lines()
        .find_map(|l| l.find("ANSWER ").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no answer: {out}"));
    assert!(line.contains("\"ok\":false"), "{line}");
    assert!(
        line.contains("uid 65534 may not use the sync agent"),
        "{line}"
    );
    assert!(line.ends_with(" 0"), "{line}");
}
