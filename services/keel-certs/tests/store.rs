//! The certificate store against files made by a tool nobody here wrote: the
//! `openssl` CLI makes a CA, an intermediate, leaves, PKCS#12 files and reads
//! our exports back. Without openssl those tests print why and pass.

use std::path::PathBuf;
use std::process::Command;

use keel_api::{
    CertExportRequest, CertState, CertTargets, CertWarningCode, ExportFormat, KeyType,
    NewCertRequest, BUILTIN_CERT_ID,
};
use keel_certs::material::{Input, MAX_FILE_BYTES};
use keel_certs::{CertError, CertStore, DefaultIdentity};

struct Fixture {
    tmp: tempfile::TempDir,
    store: CertStore,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        DefaultIdentity::new(tmp.path().join("tls"))
            .load_or_create("keel-test", &["127.0.0.1".parse().unwrap()])
            .unwrap();
        let store = CertStore::open(tmp.path().join("certs"), tmp.path().join("tls")).unwrap();
        Self { tmp, store }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// Store entries on disk (to prove a refused import stored nothing).
    fn entries_on_disk(&self) -> usize {
        std::fs::read_dir(self.store.dir())
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .count()
    }

    fn import(
        &self,
        files: &[(&str, &[u8])],
        pass: Option<&str>,
    ) -> Result<keel_api::CertificateEntry, CertError> {
        let inputs: Vec<Input<'_>> = files
            .iter()
            .map(|(name, data)| Input { name, data })
            .collect();
        self.store.import("", &inputs, pass)
    }

    /// Runs openssl in the temp dir; `None` (with a printed reason) if absent.
    fn openssl(&self, args: &[&str]) -> Option<String> {
        let out = match Command::new("openssl")
            .args(args)
            .current_dir(self.tmp.path())
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                println!("SKIP: openssl not runnable ({e})");
                return None;
            }
        };
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn have_openssl(&self) -> bool {
        self.openssl(&["version"]).is_some()
    }

    /// CA (RSA) → intermediate (ECDSA) → leaf (ECDSA P-256 by default) with SANs.
    fn make_pki(&self, leaf_key_args: &[&str]) {
        let ext = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";
        std::fs::write(self.path("ca.ext"), ext).unwrap();
        let leaf_ext = "basicConstraints=CA:FALSE\nsubjectAltName=DNS:keel.example,IP:127.0.0.1\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";
        std::fs::write(self.path("leaf.ext"), leaf_ext).unwrap();
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=Test Root CA",
            "-days",
            "30",
        ]);
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "int.key",
            "-out",
            "int.csr",
            "-subj",
            "/CN=Test Intermediate",
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            "int.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "int.crt",
            "-days",
            "30",
            "-extfile",
            "ca.ext",
        ]);
        let mut args = vec!["req", "-newkey"];
        args.extend_from_slice(leaf_key_args);
        args.extend_from_slice(&[
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=keel.example",
        ]);
        self.openssl(&args);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "int.crt",
            "-CAkey",
            "int.key",
            "-CAcreateserial",
            "-out",
            "leaf.crt",
            "-days",
            "20",
            "-extfile",
            "leaf.ext",
        ]);
    }

    fn openssl_fingerprint(&self, cert_file: &str) -> String {
        let out = self
            .openssl(&[
                "x509",
                "-in",
                cert_file,
                "-noout",
                "-fingerprint",
                "-sha256",
            ])
            .unwrap();
        out.trim()
            .split('=')
            .nth(1)
            .unwrap()
            .replace(':', "")
            .to_ascii_lowercase()
    }
}

fn new_cert(sans: &[&str], kt: KeyType) -> NewCertRequest {
    NewCertRequest {
        label: "test".into(),
        common_name: String::new(),
        sans: sans.iter().map(|s| s.to_string()).collect(),
        key_type: kt,
        days: Some(90),
        organization: "Keel tests".into(),
    }
}

fn export(format: ExportFormat, key: bool, pass: Option<&str>) -> CertExportRequest {
    CertExportRequest {
        format,
        include_key: key,
        include_chain: true,
        passphrase: pass.map(str::to_owned),
    }
}

#[test]
fn self_signed_round_trips_through_pem_and_pkcs12() {
    let f = Fixture::new();
    let made = f
        .store
        .create_self_signed(&new_cert(
            &["keel.example", "192.0.2.7"],
            KeyType::EcdsaP256,
        ))
        .unwrap();
    assert_eq!(made.state, CertState::Active);
    assert_eq!(made.key_type, "ECDSA P-256");
    assert_eq!(made.sans, vec!["DNS:keel.example", "IP:192.0.2.7"]);
    assert!(made.self_signed);
    assert!(made.warnings.is_empty(), "{:?}", made.warnings);
    let key_path = f.store.dir().join(&made.id).join("key.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A key never leaves without a passphrase.
    let err = f
        .store
        .export(&made.id, &export(ExportFormat::Pem, true, None))
        .unwrap_err();
    assert!(matches!(err, CertError::PassphraseRequired(_)), "{err}");
    let err = f
        .store
        .export(&made.id, &export(ExportFormat::Pkcs12, true, Some("")))
        .unwrap_err();
    assert!(matches!(err, CertError::PassphraseRequired(_)), "{err}");
    let err = f
        .store
        .export(&made.id, &export(ExportFormat::Pem, true, Some("short")))
        .unwrap_err();
    assert!(err.to_string().contains("at least"), "{err}");
    // Certificate only: no key material at all.
    let cert_only = f
        .store
        .export(&made.id, &export(ExportFormat::Pem, false, None))
        .unwrap();
    assert!(!String::from_utf8_lossy(&cert_only.bytes).contains("PRIVATE KEY"));

    let pem = f
        .store
        .export(
            &made.id,
            &export(ExportFormat::Pem, true, Some("correct horse")),
        )
        .unwrap();
    let text = String::from_utf8(pem.bytes.clone()).unwrap();
    assert!(text.contains("BEGIN ENCRYPTED PRIVATE KEY"));
    assert!(!text.contains("BEGIN PRIVATE KEY"));
    let p12 = f
        .store
        .export(
            &made.id,
            &export(ExportFormat::Pkcs12, true, Some("correct horse")),
        )
        .unwrap();
    assert_eq!(p12.content_type, "application/x-pkcs12");
    // Exporting removes nothing.
    assert!(f.store.get(&made.id).is_ok());

    f.store.delete(&made.id, None).unwrap();
    assert!(matches!(f.store.get(&made.id), Err(CertError::NotFound(_))));
    let back = f
        .import(&[("export.pem", &pem.bytes)], Some("correct horse"))
        .unwrap();
    assert_eq!(back.sha256_fingerprint, made.sha256_fingerprint);
    // Same certificate twice: refused, names the stored one.
    let err = f
        .import(&[("x.p12", &p12.bytes)], Some("correct horse"))
        .unwrap_err();
    assert!(
        matches!(err, CertError::Duplicate(ref id) if *id == back.id),
        "{err}"
    );

    f.store.delete(&back.id, None).unwrap();
    let back = f
        .import(&[("export.p12", &p12.bytes)], Some("correct horse"))
        .unwrap();
    assert_eq!(back.sha256_fingerprint, made.sha256_fingerprint);
    assert_eq!(back.key_type, "ECDSA P-256");

    // Nothing in the listing carries key material.
    let json = serde_json::to_string(&f.store.list().unwrap()).unwrap();
    assert!(!json.contains("PRIVATE"));
}

#[test]
fn rsa_keys_are_generated_and_served() {
    let f = Fixture::new();
    let t = std::time::Instant::now();
    let made = f
        .store
        .create_self_signed(&new_cert(&["rsa.example"], KeyType::Rsa2048))
        .unwrap();
    println!("RSA-2048 self-signed in {:?}", t.elapsed());
    assert_eq!(made.key_type, "RSA 2048");
    f.store
        .assign(
            &made.id,
            &CertTargets {
                hostnames: vec!["rsa.example".into()],
                ..Default::default()
            },
        )
        .unwrap();
    let serving = f.store.serving().unwrap();
    assert!(serving.by_name.contains_key("rsa.example"));
    if f.have_openssl() {
        let p12 = f
            .store
            .export(
                &made.id,
                &export(ExportFormat::Pkcs12, true, Some("rsa passphrase")),
            )
            .unwrap();
        std::fs::write(f.path("rsa.p12"), &p12.bytes).unwrap();
        let out = f
            .openssl(&[
                "pkcs12",
                "-in",
                "rsa.p12",
                "-passin",
                "pass:rsa passphrase",
                "-nodes",
            ])
            .unwrap();
        assert!(out.contains("BEGIN PRIVATE KEY"), "{out}");
    }
}

#[test]
fn openssl_made_ca_leaf_and_pkcs12_import_and_our_exports_read_back() {
    let f = Fixture::new();
    if !f.have_openssl() {
        return;
    }
    f.make_pki(&["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let want = f.openssl_fingerprint("leaf.crt");

    // Several files, chain given root first: put in order, nothing lost.
    let (leaf, int, ca, key) = (
        f.read("leaf.crt"),
        f.read("int.crt"),
        f.read("ca.crt"),
        f.read("leaf.key"),
    );
    let e = f
        .import(
            &[
                ("ca.crt", &ca),
                ("int.crt", &int),
                ("leaf.key", &key),
                ("leaf.crt", &leaf),
            ],
            None,
        )
        .unwrap();
    assert_eq!(e.sha256_fingerprint, want);
    assert_eq!(e.chain_length, 3);
    assert_eq!(e.issuer, "CN=Test Intermediate");
    assert!(e.sans.contains(&"IP:127.0.0.1".to_owned()));
    assert!(
        e.warnings
            .iter()
            .any(|w| w.code == CertWarningCode::ChainReordered),
        "{:?}",
        e.warnings
    );
    assert!(
        e.warnings
            .iter()
            .any(|w| w.code == CertWarningCode::ExpiringSoon),
        "{:?}",
        e.warnings
    );
    let chain_on_disk =
        std::fs::read_to_string(f.store.dir().join(&e.id).join("chain.pem")).unwrap();
    std::fs::write(f.path("stored-chain.pem"), &chain_on_disk).unwrap();
    assert_eq!(
        f.openssl_fingerprint("stored-chain.pem"),
        want,
        "leaf first on disk"
    );
    f.store.delete(&e.id, None).unwrap();

    // One file (leaf, key, intermediate), key as encrypted PKCS#8 from openssl.
    f.openssl(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes-256-cbc",
        "-in",
        "leaf.key",
        "-out",
        "leaf-enc.key",
        "-passout",
        "pass:open sesame",
    ]);
    let bundle = [leaf.clone(), f.read("leaf-enc.key"), int.clone()].concat();
    let err = f.import(&[("bundle.pem", &bundle)], None).unwrap_err();
    assert!(matches!(err, CertError::PassphraseRequired(_)), "{err}");
    let err = f
        .import(&[("bundle.pem", &bundle)], Some("wrong one"))
        .unwrap_err();
    assert!(matches!(err, CertError::WrongPassphrase), "{err}");
    let e = f
        .import(&[("bundle.pem", &bundle)], Some("open sesame"))
        .unwrap();
    assert_eq!(e.sha256_fingerprint, want);
    assert_eq!(e.chain_length, 2);
    assert!(!e
        .warnings
        .iter()
        .any(|w| w.code == CertWarningCode::ChainReordered));

    // Our PEM export is read by openssl with the passphrase.
    let pem = f
        .store
        .export(&e.id, &export(ExportFormat::Pem, true, Some("export pass")))
        .unwrap();
    std::fs::write(f.path("ours.pem"), &pem.bytes).unwrap();
    f.openssl(&[
        "pkey",
        "-in",
        "ours.pem",
        "-passin",
        "pass:export pass",
        "-noout",
    ]);
    assert_eq!(f.openssl_fingerprint("ours.pem"), want);
    // Our PKCS#12 export likewise.
    let p12 = f
        .store
        .export(
            &e.id,
            &export(ExportFormat::Pkcs12, true, Some("export pass")),
        )
        .unwrap();
    std::fs::write(f.path("ours.p12"), &p12.bytes).unwrap();
    let out = f
        .openssl(&[
            "pkcs12",
            "-in",
            "ours.p12",
            "-passin",
            "pass:export pass",
            "-nodes",
        ])
        .unwrap();
    assert!(
        out.contains("BEGIN PRIVATE KEY") && out.matches("BEGIN CERTIFICATE").count() == 2,
        "{out}"
    );
    std::fs::write(f.path("from-p12.pem"), &out).unwrap();
    assert_eq!(f.openssl_fingerprint("from-p12.pem"), want);
    f.store.delete(&e.id, None).unwrap();

    // PKCS#12 made by openssl: modern (AES/PBKDF2) and legacy-style (3DES).
    f.openssl(&[
        "pkcs12",
        "-export",
        "-in",
        "leaf.crt",
        "-inkey",
        "leaf.key",
        "-certfile",
        "int.crt",
        "-out",
        "leaf.p12",
        "-passout",
        "pass:p12 pass",
    ]);
    let p12 = f.read("leaf.p12");
    let before = f.entries_on_disk();
    let err = f.import(&[("leaf.p12", &p12)], Some("not it")).unwrap_err();
    assert!(matches!(err, CertError::WrongPassphrase), "{err}");
    let err = f.import(&[("leaf.p12", &p12)], None).unwrap_err();
    assert!(matches!(err, CertError::PassphraseRequired(_)), "{err}");
    let truncated = &p12[..p12.len() / 2];
    let err = f
        .import(&[("cut.p12", truncated)], Some("p12 pass"))
        .unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_eq!(f.entries_on_disk(), before, "refused imports store nothing");
    let e = f.import(&[("leaf.p12", &p12)], Some("p12 pass")).unwrap();
    assert_eq!(e.sha256_fingerprint, want);
    assert_eq!(e.chain_length, 2);
    f.store.delete(&e.id, None).unwrap();

    f.openssl(&[
        "pkcs12",
        "-export",
        "-in",
        "leaf.crt",
        "-inkey",
        "leaf.key",
        "-certfile",
        "int.crt",
        "-out",
        "legacy.p12",
        "-passout",
        "pass:p12 pass",
        "-keypbe",
        "PBE-SHA1-3DES",
        "-certpbe",
        "PBE-SHA1-3DES",
        "-macalg",
        "sha1",
    ]);
    let e = f
        .import(&[("legacy.p12", &f.read("legacy.p12"))], Some("p12 pass"))
        .unwrap();
    assert_eq!(e.sha256_fingerprint, want);
}

#[test]
fn rsa_leaf_from_openssl_and_legacy_encrypted_key_is_explained() {
    let f = Fixture::new();
    if !f.have_openssl() {
        return;
    }
    f.make_pki(&["rsa:2048"]);
    let (leaf, int) = (f.read("leaf.crt"), f.read("int.crt"));
    // PKCS#1 ("RSA PRIVATE KEY") is converted.
    f.openssl(&[
        "rsa",
        "-in",
        "leaf.key",
        "-out",
        "leaf-pkcs1.key",
        "-traditional",
    ]);
    let e = f
        .import(
            &[
                ("leaf.crt", &leaf),
                ("int.crt", &int),
                ("k", &f.read("leaf-pkcs1.key")),
            ],
            None,
        )
        .unwrap();
    assert_eq!(e.key_type, "RSA 2048");
    f.store.delete(&e.id, None).unwrap();
    // OpenSSL's legacy PEM encryption: refused with the command that fixes it.
    f.openssl(&[
        "rsa",
        "-in",
        "leaf.key",
        "-out",
        "leaf-legacy.key",
        "-traditional",
        "-aes256",
        "-passout",
        "pass:legacy pass",
    ]);
    let err = f
        .import(
            &[("leaf.crt", &leaf), ("k", &f.read("leaf-legacy.key"))],
            Some("legacy pass"),
        )
        .unwrap_err();
    assert!(err.to_string().contains("openssl pkcs8 -topk8"), "{err}");
    assert_eq!(f.entries_on_disk(), 0);
}

#[test]
fn bad_input_is_refused_clearly_and_nothing_is_stored() {
    let f = Fixture::new();
    let a = f
        .store
        .create_self_signed(&new_cert(&["a.example"], KeyType::EcdsaP256))
        .unwrap();
    let b = f
        .store
        .create_self_signed(&new_cert(&["b.example"], KeyType::EcdsaP256))
        .unwrap();
    let a_pem = f
        .store
        .export(&a.id, &export(ExportFormat::Pem, false, None))
        .unwrap()
        .bytes;
    let b_key = std::fs::read(f.store.dir().join(&b.id).join("key.pem")).unwrap();
    f.store.delete(&a.id, None).unwrap();
    f.store.delete(&b.id, None).unwrap();
    assert_eq!(f.entries_on_disk(), 0);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "mismatched key",
            [a_pem.clone(), b_key.clone()].concat(),
            "does not belong",
        ),
        (
            "garbage text",
            b"hello, this is not a certificate".to_vec(),
            "not a certificate",
        ),
        (
            "garbage binary",
            vec![0x30, 0x03, 0x01, 0x02, 0x03],
            "not a certificate",
        ),
        ("empty", b"  \n".to_vec(), "empty"),
        (
            "truncated PEM",
            a_pem[..a_pem.len() - 40].to_vec(),
            "truncated",
        ),
        ("key only", b_key.clone(), "only a private key"),
        ("cert without key", a_pem.clone(), "no private key"),
        (
            "oversized",
            [a_pem.clone(), vec![b'\n'; MAX_FILE_BYTES]].concat(),
            "larger than the limit",
        ),
    ];
    for (what, data, expect) in cases {
        let err = f.import(&[(what, &data)], None).unwrap_err();
        assert!(err.to_string().contains(expect), "{what}: {err}");
        assert_eq!(f.entries_on_disk(), 0, "{what}: nothing stored");
        assert_eq!(f.store.list().unwrap().certificates.len(), 1, "{what}");
    }
}

#[test]
fn csr_answer_is_matched_to_the_pending_key() {
    let f = Fixture::new();
    let (pending, csr) = f
        .store
        .create_csr(&new_cert(&["csr.example", "10.0.0.5"], KeyType::EcdsaP256))
        .unwrap();
    assert_eq!(pending.state, CertState::Pending);
    assert!(csr.contains("BEGIN CERTIFICATE REQUEST"));
    assert_eq!(f.store.csr_pem(&pending.id).unwrap(), csr);
    // Pending: nothing to serve or export yet.
    assert!(f
        .store
        .export(&pending.id, &export(ExportFormat::Pem, false, None))
        .is_err());
    assert!(f
        .store
        .assign(
            &pending.id,
            &CertTargets {
                default: true,
                ..Default::default()
            }
        )
        .is_err());
    if !f.have_openssl() {
        return;
    }
    f.make_pki(&["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    std::fs::write(f.path("ours.csr"), &csr).unwrap();
    let ext = "subjectAltName=DNS:csr.example,IP:10.0.0.5\n";
    std::fs::write(f.path("csr.ext"), ext).unwrap();
    f.openssl(&[
        "x509",
        "-req",
        "-in",
        "ours.csr",
        "-CA",
        "int.crt",
        "-CAkey",
        "int.key",
        "-CAcreateserial",
        "-out",
        "answer.crt",
        "-days",
        "60",
        "-extfile",
        "csr.ext",
    ]);
    // Someone else's certificate is not an answer to this request.
    let err = f
        .store
        .answer(
            &pending.id,
            &[Input {
                name: "leaf.crt",
                data: &f.read("leaf.crt"),
            }],
            None,
        )
        .unwrap_err();
    assert!(matches!(err, CertError::KeyMismatch(_)), "{err}");
    // The answer, with the intermediate, imported without naming the request.
    let answer = [f.read("int.crt"), f.read("answer.crt")].concat();
    let done = f.import(&[("answer.pem", &answer)], None).unwrap();
    assert_eq!(done.id, pending.id);
    assert_eq!(done.state, CertState::Active);
    assert_eq!(done.sha256_fingerprint, f.openssl_fingerprint("answer.crt"));
    assert_eq!(done.chain_length, 2);
    assert!(done
        .warnings
        .iter()
        .all(|w| w.code != CertWarningCode::KeyMismatch));
}

#[test]
fn assignments_warnings_and_delete_in_use() {
    let f = Fixture::new();
    let one = f
        .store
        .create_self_signed(&new_cert(&["one.example", "127.0.0.1"], KeyType::EcdsaP256))
        .unwrap();
    let two = f
        .store
        .create_self_signed(&new_cert(&["two.example", "127.0.0.2"], KeyType::EcdsaP256))
        .unwrap();
    let targets = CertTargets {
        ips: vec!["127.0.0.1".parse().unwrap(), "127.0.0.9".parse().unwrap()],
        hostnames: vec!["One.Example".into(), "other.example".into()],
        default: false,
    };
    // Shown before assigning: the names the certificate does not carry.
    let w = f.store.check(&one.id, &targets).unwrap();
    let missing: Vec<_> = w
        .iter()
        .filter(|w| w.code == CertWarningCode::NameNotInSans)
        .collect();
    assert_eq!(missing.len(), 2, "{w:?}");
    assert!(missing[0].message.contains("127.0.0.9"));
    assert!(missing[1].message.contains("other.example"));

    let list = f.store.assign(&one.id, &targets).unwrap();
    let e = list.certificates.iter().find(|c| c.id == one.id).unwrap();
    assert!(e.assigned.contains(&"ip:127.0.0.1".to_owned()));
    assert!(e.assigned.contains(&"host:one.example".to_owned()));
    assert_eq!(
        e.warnings
            .iter()
            .filter(|w| w.code == CertWarningCode::NameNotInSans)
            .count(),
        2
    );
    f.store
        .assign(
            &two.id,
            &CertTargets {
                ips: vec!["127.0.0.2".parse().unwrap()],
                default: true,
                ..Default::default()
            },
        )
        .unwrap();
    let builtin = f.store.get(BUILTIN_CERT_ID).unwrap();
    assert!(builtin.assigned.is_empty(), "two took over the default");
    // What is in use, with its warnings (the status page's list).
    let in_use = f.store.in_use().unwrap();
    let ids: Vec<&str> = in_use.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&one.id.as_str()) && ids.contains(&two.id.as_str()));
    let used_one = in_use.iter().find(|c| c.id == one.id).unwrap();
    assert_eq!(used_one.warnings.len(), 2, "{:?}", used_one.warnings);
    assert_eq!(f.store.in_use_warnings().unwrap().len(), 2);

    let s = f.store.serving().unwrap();
    let fp = |k: &std::sync::Arc<rustls::sign::CertifiedKey>| {
        keel_certs::fingerprint(k.cert[0].as_ref())
    };
    let ip1 = "127.0.0.1".parse().ok();
    let ip2 = "127.0.0.2".parse().ok();
    assert_eq!(fp(&s.choose(ip1, None)), one.sha256_fingerprint);
    assert_eq!(
        fp(&s.choose("::ffff:127.0.0.1".parse().ok(), None)),
        one.sha256_fingerprint
    );
    assert_eq!(fp(&s.choose(ip2, None)), two.sha256_fingerprint);
    assert_eq!(
        fp(&s.choose(ip2, Some("ONE.example."))),
        one.sha256_fingerprint,
        "SNI name wins"
    );
    assert_eq!(
        fp(&s.choose("127.0.0.3".parse().ok(), None)),
        two.sha256_fingerprint,
        "default"
    );

    // In use: kept unless a replacement is named.
    let err = f.store.delete(&one.id, None).unwrap_err();
    assert!(
        matches!(err, CertError::Conflict(_)) && err.to_string().contains("ip:127.0.0.1"),
        "{err}"
    );
    assert!(f.store.get(&one.id).is_ok());
    assert!(f.store.delete(BUILTIN_CERT_ID, Some(&two.id)).is_err());
    f.store.delete(&one.id, Some(&two.id)).unwrap();
    let a = f.store.assignments().unwrap();
    assert!(a.ips.values().all(|v| *v == two.id) && a.hostnames.values().all(|v| *v == two.id));
    f.store.delete(&two.id, Some(BUILTIN_CERT_ID)).unwrap();
    let a = f.store.assignments().unwrap();
    // The built-in one, named as replacement, is served there explicitly.
    assert!(a.default.is_none(), "{a:?}");
    assert!(
        a.ips
            .values()
            .chain(a.hostnames.values())
            .all(|v| v == BUILTIN_CERT_ID),
        "{a:?}"
    );
    assert!(f
        .store
        .get(BUILTIN_CERT_ID)
        .unwrap()
        .assigned
        .contains(&"default".to_owned()));
}

#[test]
fn expiry_chain_and_weak_algorithm_warnings() {
    use rcgen::{CertificateParams, KeyPair};
    let f = Fixture::new();
    let mk = |from_days: i64, to_days: i64| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["t.example".into()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(from_days);
        p.not_after = now + time::Duration::days(to_days);
        let c = p.self_signed(&key).unwrap();
        [c.pem().into_bytes(), key.serialize_pem().into_bytes()].concat()
    };
    let codes =
        |e: &keel_api::CertificateEntry| e.warnings.iter().map(|w| w.code).collect::<Vec<_>>();
    let e = f.import(&[("expired", &mk(-10, -1))], None).unwrap();
    assert!(
        codes(&e).contains(&CertWarningCode::Expired),
        "{:?}",
        e.warnings
    );
    let e = f.import(&[("future", &mk(5, 50))], None).unwrap();
    assert!(
        codes(&e).contains(&CertWarningCode::NotYetValid),
        "{:?}",
        e.warnings
    );
    let e = f.import(&[("soon", &mk(-1, 10))], None).unwrap();
    assert!(
        codes(&e).contains(&CertWarningCode::ExpiringSoon),
        "{:?}",
        e.warnings
    );
    // Overwriting a stored key makes the mismatch visible.
    let other = keel_certs::generate::new_key(KeyType::EcdsaP256).unwrap();
    std::fs::write(
        f.store.dir().join(&e.id).join("key.pem"),
        other.to_pem().as_bytes(),
    )
    .unwrap();
    let e = f.store.get(&e.id).unwrap();
    assert!(
        codes(&e).contains(&CertWarningCode::KeyMismatch),
        "{:?}",
        e.warnings
    );
    assert!(f
        .store
        .assign(
            &e.id,
            &CertTargets {
                default: true,
                ..Default::default()
            }
        )
        .is_err());

    if !f.have_openssl() {
        return;
    }
    // A 1024-bit RSA intermediate signing with SHA-1, and a leaf alone (no issuer).
    f.openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:1024",
        "-nodes",
        "-keyout",
        "weak.key",
        "-out",
        "weak.crt",
        "-subj",
        "/CN=Weak CA",
        "-days",
        "30",
        "-sha1",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
    ]);
    f.openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "w-leaf.key",
        "-out",
        "w-leaf.csr",
        "-subj",
        "/CN=w.example",
    ]);
    std::fs::write(f.path("w.ext"), "subjectAltName=DNS:w.example\n").unwrap();
    f.openssl(&[
        "x509",
        "-req",
        "-in",
        "w-leaf.csr",
        "-CA",
        "weak.crt",
        "-CAkey",
        "weak.key",
        "-CAcreateserial",
        "-out",
        "w-leaf.crt",
        "-days",
        "60",
        "-sha1",
        "-extfile",
        "w.ext",
    ]);
    let e = f
        .import(
            &[("l", &f.read("w-leaf.crt")), ("k", &f.read("w-leaf.key"))],
            None,
        )
        .unwrap();
    assert!(
        codes(&e).contains(&CertWarningCode::ChainIncomplete),
        "{:?}",
        e.warnings
    );
    assert!(
        codes(&e).contains(&CertWarningCode::WeakSignature),
        "{:?}",
        e.warnings
    );
    f.store.delete(&e.id, None).unwrap();
    let e = f
        .import(
            &[
                ("l", &f.read("w-leaf.crt")),
                ("k", &f.read("w-leaf.key")),
                ("ca", &f.read("weak.crt")),
            ],
            None,
        )
        .unwrap();
    assert!(
        codes(&e).contains(&CertWarningCode::WeakKey),
        "{:?}",
        e.warnings
    );
    assert!(
        !codes(&e).contains(&CertWarningCode::ChainIncomplete),
        "{:?}",
        e.warnings
    );
}

#[test]
fn deleted_keys_leave_nothing_behind() {
    let f = Fixture::new();
    let one = f
        .store
        .create_self_signed(&new_cert(&["gone.example"], KeyType::EcdsaP256))
        .unwrap();
    let entry = f.store.dir().join(&one.id);
    assert!(entry.join("key.pem").exists());
    f.store.delete(&one.id, None).unwrap();
    assert!(!entry.exists());
    let names: Vec<String> = std::fs::read_dir(f.store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with('.')), "{names:?}");

    // A crash mid-add or mid-delete leaves a directory with a key: the next open
    // removes it.
    for leftover in [".new-0123456789ab", ".del-ba9876543210"] {
        let d = f.store.dir().join(leftover);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("key.pem"), b"secret").unwrap();
    }
    let store = CertStore::open(f.store.dir(), f.path("tls")).unwrap();
    assert_eq!(f.entries_on_disk(), 0);
    assert_eq!(
        store.list().unwrap().certificates.len(),
        1,
        "only the built-in one"
    );
}
