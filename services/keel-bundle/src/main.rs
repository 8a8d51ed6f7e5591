//! `keel-bundle`: the vendor-side tool. Makes keys, bundles and feeds, verifies
//! bundles with the very verifier the appliance runs, and answers download keys.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use keel_bundle::{
    assess, build_bundle_file, plan_latest, read_unverified, sign_feed, verify_download_key,
    verify_file, BundleSpec, FeedEntry, FeedSpec, Installed, KeyPurpose, Kind, PublicKey,
    Requirement, SecretKey, Status, Timestamp, TrustedKeys, Verifier, Version, VersionRange,
};

/// Bundle files the `index` and `answer` commands pick up from a directory.
const BUNDLE_EXT: &str = "kbundle";

#[derive(Parser)]
#[command(
    name = "keel-bundle",
    about = "Keel update bundles: keys, build, verify, feeds, download keys"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a signing key pair: PREFIX.secret (0600) and PREFIX.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// An appliance identity key (for download keys) instead of an update key.
        #[arg(long)]
        identity: bool,
    },
    /// Sign a payload into a bundle.
    Build {
        /// Secret update key file.
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "keel")]
        product: String,
        #[arg(long)]
        version: Version,
        /// base or app
        #[arg(long)]
        kind: Kind,
        /// The app's name (apps only).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        payload: PathBuf,
        /// e.g. 'base>=0.3.0' (repeatable; all must hold).
        #[arg(long = "requires")]
        requires: Vec<Requirement>,
        /// e.g. '>=0.1.0' or '>=0.1.0,<0.3.0' (repeatable; any may match).
        #[arg(long = "installs-over")]
        installs_over: Vec<VersionRange>,
        /// Days until the signature expires.
        #[arg(long, default_value_t = 365)]
        expires_days: u32,
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a bundle completely (signature, validity, payload hash) as the
    /// appliance does; with --installed also whether it would install.
    Verify {
        /// Trusted public key file (repeatable).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long, default_value = "keel")]
        product: String,
        /// Installed versions to check against, e.g. base=0.2.0 (repeatable).
        #[arg(long = "installed")]
        installed: Vec<String>,
        /// Target slot size in bytes (with --installed).
        #[arg(long, default_value_t = u64::MAX)]
        max_payload: u64,
        bundle: PathBuf,
    },
    /// Verify every *.kbundle in DIR and sign a feed listing them.
    Index {
        /// Secret update key file.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "keel")]
        product: String,
        /// Days until the feed is stale.
        #[arg(long, default_value_t = 14)]
        expires_days: u32,
        /// Further public keys bundles may be signed with (key rotation).
        #[arg(long)]
        trust: Vec<PathBuf>,
    },
    /// Print a bundle's manifest WITHOUT verifying it.
    Inspect { bundle: PathBuf },
    /// Check an appliance's download key and print the bundles it needs, in order.
    Answer {
        #[arg(long)]
        download_key: PathBuf,
        /// Directory of *.kbundle files.
        #[arg(long)]
        bundles: PathBuf,
        /// The appliance's identity public key, if known: the block must be its.
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long, default_value = "keel")]
        product: String,
        /// Apps to install that the appliance does not have yet (repeatable).
        #[arg(long)]
        app: Vec<String>,
    },
    /// Make a download key as an appliance would (for testing `answer`).
    MakeDownloadKey {
        /// Secret identity key file.
        #[arg(long)]
        identity: PathBuf,
        #[arg(long)]
        appliance_id: String,
        /// e.g. base=0.1.0 (repeatable).
        #[arg(long = "installed")]
        installed: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-bundle: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Keygen { out, identity } => keygen(&out, identity),
        Cmd::Build {
            key,
            product,
            version,
            kind,
            name,
            payload,
            requires,
            installs_over,
            expires_days,
            out,
        } => {
            let key = SecretKey::load(&key, KeyPurpose::Update)?;
            let created = Timestamp::now();
            let spec = BundleSpec {
                product,
                version,
                kind,
                name,
                requires,
                installs_over,
                created,
                expires: created.plus(time::Duration::days(expires_days.into())),
            };
            let m = build_bundle_file(&key, &spec, &payload, &out)?;
            println!(
                "{}: {} {} {}, payload {} bytes sha256 {}, key {}, expires {}",
                out.display(),
                m.product,
                m.component(),
                m.version,
                m.payload_size,
                m.payload_sha256,
                m.key_id,
                m.expires
            );
            Ok(())
        }
        Cmd::Verify {
            keys,
            product,
            installed,
            max_payload,
            bundle,
        } => {
            let mut trusted = TrustedKeys::new();
            for k in &keys {
                trusted.add(PublicKey::load(k, KeyPurpose::Update)?);
            }
            let now = Timestamp::now();
            let verifier = Verifier::new(&trusted, &product, now);
            let v = verify_file(&bundle, &verifier)
                .with_context(|| format!("{}: refused", bundle.display()))?;
            let m = v.manifest();
            if !installed.is_empty() {
                let installed = parse_installed(&installed)?;
                keel_bundle::check_installable(m, &installed, now, max_payload).with_context(
                    || format!("{}: verified but not installable", bundle.display()),
                )?;
            }
            println!(
                "{}: OK, verified: {} {} {}, payload {} bytes sha256 {}, key {}, expires {}",
                bundle.display(),
                m.product,
                m.component(),
                m.version,
                v.size(),
                v.sha256(),
                m.key_id,
                m.expires
            );
            Ok(())
        }
        Cmd::Index {
            key,
            dir,
            out,
            product,
            expires_days,
            trust,
        } => {
            let key = SecretKey::load(&key, KeyPurpose::Update)?;
            let mut trusted = TrustedKeys::new().with(key.public());
            for k in &trust {
                trusted.add(PublicKey::load(k, KeyPurpose::Update)?);
            }
            let now = Timestamp::now();
            let verifier = Verifier::new(&trusted, &product, now);
            let mut entries = Vec::new();
            // A feed only lists bundles that verify now: what the appliance will do.
            for path in bundle_files(&dir)? {
                let v = verify_file(&path, &verifier)
                    .with_context(|| format!("{}: refused", path.display()))?;
                entries.push(FeedEntry::from_manifest(&file_name(&path)?, v.manifest()));
            }
            let spec = FeedSpec {
                product,
                created: now,
                expires: now.plus(time::Duration::days(expires_days.into())),
                entries,
            };
            let bytes = sign_feed(&key, &spec)?;
            keel_core::store::write_atomic(&anchored(&out), &bytes, 0o644)?;
            println!(
                "{}: {} bundles, expires {}",
                out.display(),
                spec.entries.len(),
                spec.expires
            );
            Ok(())
        }
        Cmd::Inspect { bundle } => {
            let file = fs::File::open(&bundle).with_context(|| bundle.display().to_string())?;
            let (m, key_id) = read_unverified(std::io::BufReader::new(file))
                .with_context(|| bundle.display().to_string())?;
            println!("UNVERIFIED (signature not checked; use `keel-bundle verify`)");
            println!("signing key id: {key_id}");
            println!("{}", serde_json::to_string_pretty(&m)?);
            Ok(())
        }
        Cmd::Answer {
            download_key,
            bundles,
            key,
            product,
            app,
        } => answer(&download_key, &bundles, key.as_deref(), &product, &app),
        Cmd::MakeDownloadKey {
            identity,
            appliance_id,
            installed,
        } => {
            let key = SecretKey::load(&identity, KeyPurpose::Identity)?;
            let installed = parse_installed(&installed)?;
            let text =
                keel_bundle::make_download_key(&key, &appliance_id, &installed, Timestamp::now())?;
            print!("{text}");
            Ok(())
        }
    }
}

fn parse_installed(items: &[String]) -> Result<Installed> {
    let mut installed = Installed::new();
    for item in items {
        let Some((c, v)) = item.split_once('=') else {
            bail!("--installed {item:?}: expected COMPONENT=VERSION");
        };
        installed.set(c.trim(), v.trim().parse()?);
    }
    installed.validate()?;
    Ok(installed)
}

/// Creates a new file; never replaces one (a key overwritten is a key lost).
fn create_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("{}: cannot create (refusing to overwrite)", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn keygen(prefix: &Path, identity: bool) -> Result<()> {
    let purpose = if identity {
        KeyPurpose::Identity
    } else {
        KeyPurpose::Update
    };
    let secret_path = PathBuf::from(format!("{}.secret", prefix.display()));
    let public_path = PathBuf::from(format!("{}.pub", prefix.display()));
    for p in [&secret_path, &public_path] {
        if p.symlink_metadata().is_ok() {
            bail!("{} exists; refusing to overwrite", p.display());
        }
    }
    let key = SecretKey::generate();
    create_new(&secret_path, key.to_text(purpose).as_bytes(), 0o600)?;
    if let Err(e) = create_new(
        &public_path,
        key.public().to_text(purpose).as_bytes(),
        0o644,
    ) {
        let _ = fs::remove_file(&secret_path);
        return Err(e);
    }
    if let Some(dir) = secret_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        keel_core::store::sync_dir(dir)?;
    }
    println!(
        "{} and {}: key id {}",
        secret_path.display(),
        public_path.display(),
        key.public().id()
    );
    Ok(())
}

/// `feed` → `./feed`: the store syncs the parent directory, and a bare file
/// name's parent is the empty path.
fn anchored(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new(".").join(path),
        _ => path.to_path_buf(),
    }
}

fn bundle_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == BUNDLE_EXT) && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .with_context(|| format!("{}: file name is not UTF-8", path.display()))
}

fn answer(
    download_key: &Path,
    dir: &Path,
    expected: Option<&Path>,
    product: &str,
    apps: &[String],
) -> Result<()> {
    let mut text = String::new();
    fs::File::open(download_key)
        .with_context(|| download_key.display().to_string())?
        .take(64 * 1024 + 1)
        .read_to_string(&mut text)
        .with_context(|| download_key.display().to_string())?;
    let expected = expected
        .map(|p| PublicKey::load(p, KeyPurpose::Identity))
        .transpose()?;
    let now = Timestamp::now();
    let dk = verify_download_key(&text, now, expected.as_ref())
        .with_context(|| format!("{}: refused", download_key.display()))?;

    // The vendor's own files: manifests are read unverified here because the
    // appliance verifies every bundle itself before installing it.
    let mut entries = Vec::new();
    for path in bundle_files(dir)? {
        let file = fs::File::open(&path).with_context(|| path.display().to_string())?;
        let (m, _) = read_unverified(std::io::BufReader::new(file))
            .with_context(|| path.display().to_string())?;
        if m.product == product && m.expires > now {
            entries.push(FeedEntry::from_manifest(&file_name(&path)?, &m));
        }
    }
    let add: Vec<&str> = apps.iter().map(String::as_str).collect();
    let plan = plan_latest(&dk.installed, &entries, &add)?;

    println!(
        "Appliance {} (key {}{}), installed: {}",
        dk.appliance_id,
        dk.public_key.id(),
        if expected.is_some() {
            ", the expected one"
        } else {
            ", self-signed only"
        },
        dk.installed
    );
    if plan.is_empty() {
        println!("Up to date: nothing to download.");
    } else {
        println!("Download and install in this order:");
        for (i, e) in plan.iter().enumerate() {
            println!(
                "{:>3}. {}  ({} {}, {} bytes, sha256 {})",
                i + 1,
                e.file,
                e.component(),
                e.version,
                e.size,
                e.sha256
            );
        }
    }
    let blocked: Vec<_> = assess(&dk.installed, &entries)
        .into_iter()
        .filter(|a| matches!(a.status, Status::Blocked { .. }))
        .collect();
    for a in blocked {
        println!("Not installable: {}: {}", a.entry.file, a.status);
    }
    Ok(())
}
