//! Test rig: a temp directory with plain files as slot devices, an ESP directory
//! whose grubenv pair keel-boot made, a data dir, a fresh key and bundles made
//! with keel-bundle's library.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use hyper::body::Frame;
use keel_boot::{BootEnv, Slot};
use keel_bundle::{
    build_bundle_bytes, BundleSpec, KeyPurpose, Kind, SecretKey, Timestamp, Version,
};
use keel_update::{Config, UpdateError, UpdateState, Updater};

pub const SLOT_SIZE: u64 = 8 * 1024 * 1024;
/// A payload crossing the 4 MiB write size, ending unaligned.
pub const BIG: usize = 5 * 1024 * 1024 + 12345;
pub const SMALL: usize = 100 * 1024 + 7;

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub key: SecretKey,
    pub cfg: Config,
    pub reboots: Arc<AtomicU32>,
}

/// Deterministic, varied bytes (`seed` tells payloads apart).
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + usize::from(seed) * 7) % 251) as u8 ^ seed)
        .collect()
}

/// Pseudo-random bytes (xorshift), for "a random file".
pub fn random_bytes(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn spec(version: &str, kind: Kind) -> BundleSpec {
    let now = Timestamp::now();
    BundleSpec {
        product: "keel".into(),
        version: version.parse::<Version>().unwrap(),
        kind,
        name: (kind == Kind::App).then(|| "demo".to_string()),
        requires: vec![],
        installs_over: vec![],
        created: now.plus(time_minutes(-1)),
        expires: now.plus(time_minutes(60 * 24 * 30)),
    }
}

/// keel-bundle's `Timestamp::plus` takes a `time::Duration`.
fn time_minutes(m: i64) -> time::Duration {
    time::Duration::minutes(m)
}

impl Rig {
    pub fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate();
        let p = dir.path();
        std::fs::create_dir_all(p.join("keys")).unwrap();
        std::fs::write(
            p.join("keys/test.pub"),
            key.public().to_text(KeyPurpose::Update),
        )
        .unwrap();
        std::fs::write(p.join("keys/README"), "not a key\n").unwrap();
        std::fs::create_dir_all(p.join("slots")).unwrap();
        // Slot A: the factory image; slot B: empty.
        let factory = payload(SLOT_SIZE as usize, 0xA5);
        std::fs::write(p.join("slots/root-a"), &factory).unwrap();
        std::fs::write(p.join("slots/root-b"), vec![0u8; SLOT_SIZE as usize]).unwrap();
        std::fs::create_dir_all(p.join("esp/grub")).unwrap();
        // The grubenv pair as keel-boot-ok leaves it after the first boot.
        BootEnv::new(p.join("esp")).mark_good(Slot::A).unwrap();
        let reboots = Arc::new(AtomicU32::new(0));
        let mut cfg = Config::new(p.join("data/update"));
        cfg.keys_dir = p.join("keys");
        cfg.os_release = p.join("os-release");
        cfg.cmdline = p.join("cmdline");
        cfg.slot_device = p.join("slots/root-{slot}").display().to_string();
        cfg.esp_dir = Some(p.join("esp"));
        cfg.boot_state_file = Some(p.join("run/boot/state.json"));
        cfg.timed_socket = None;
        cfg.boot_id_file = p.join("boot_id");
        // App bundles below the temp dir; nothing merges unless a test says how.
        cfg.apps_dir = p.join("data/apps");
        cfg.usr_dir = p.join("usr");
        cfg.block_sysfs = Some(p.join("sys/block"));
        cfg.sysext_refresh = Arc::new(|| Ok(()));
        let r = reboots.clone();
        cfg.reboot = Arc::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        let rig = Rig {
            dir,
            key,
            cfg,
            reboots,
        };
        rig.set_boot(Slot::A, "0.1.0", "boot-1");
        rig
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// What this boot is: the running slot, its version, the boot id.
    pub fn set_boot(&self, slot: Slot, version: &str, boot_id: &str) {
        std::fs::write(
            &self.cfg.cmdline,
            format!("root=PARTLABEL=root-{slot} keel.slot={slot} ro quiet\n"),
        )
        .unwrap();
        std::fs::write(
            &self.cfg.os_release,
            format!("NAME=Keel\nID=keel\nVERSION_ID={version}\nPRETTY_NAME=\"Keel {version}\"\n"),
        )
        .unwrap();
        std::fs::write(&self.cfg.boot_id_file, format!("{boot_id}\n")).unwrap();
    }

    pub fn start(&self) -> Arc<Updater> {
        Updater::start(self.cfg.clone())
    }

    pub fn bundle(&self, version: &str, payload: &[u8]) -> Vec<u8> {
        build_bundle_bytes(&self.key, &spec(version, Kind::Base), payload).unwrap()
    }

    pub fn slot(&self, s: &str) -> Vec<u8> {
        std::fs::read(self.path(&format!("slots/root-{s}"))).unwrap()
    }

    pub fn env(&self) -> BootEnv {
        BootEnv::new(self.path("esp"))
    }

    pub fn esp_copies(&self) -> (Vec<u8>, Vec<u8>) {
        (
            std::fs::read(self.path("esp/grub/grubenv")).unwrap(),
            std::fs::read(self.path("esp/grub/grubenv.bak")).unwrap(),
        )
    }

    pub fn state(&self) -> UpdateState {
        keel_core::store::read_json(&self.cfg.state_file())
            .unwrap()
            .unwrap_or_default()
    }

    pub fn state_json(&self) -> serde_json::Value {
        keel_core::store::read_json(&self.cfg.state_file())
            .unwrap()
            .unwrap_or_default()
    }

    /// Asserts that no trial is armed in either copy.
    pub fn assert_not_armed(&self) {
        let (p, b) = self.esp_copies();
        for copy in [p, b] {
            let vars = keel_boot::parse(&copy).unwrap();
            assert!(!vars.contains_key("keel_try"), "trial armed: {vars:?}");
            assert_eq!(vars.get("keel_good").map(String::as_str), Some("a"));
        }
    }

    /// What GRUB does at a boot (image/grub/grub.cfg): count a trial down and boot
    /// it, or drop a used-up trial and boot the good slot.
    pub fn grub_boot(&self) -> Slot {
        let mut booted = None;
        self.env()
            .transition(|st, v| {
                match st.trial() {
                    Some((slot, left)) if left >= 1 => {
                        v.insert("keel_tries".into(), (left - 1).to_string());
                        booted = Some(slot);
                    }
                    Some(_) => {
                        v.remove("keel_try");
                        v.remove("keel_tries");
                    }
                    None => {}
                }
                Ok(())
            })
            .unwrap();
        booted.unwrap_or_else(|| self.env().status().good())
    }
}

/// An upload fed by the test, chunk by chunk.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    (tx, Body::new(ChannelBody(rx)))
}

pub async fn install(
    u: &Arc<Updater>,
    bytes: Vec<u8>,
) -> Result<keel_api::InstallAnswer, UpdateError> {
    let len = bytes.len() as u64;
    u.install(Body::from(bytes), Some(len), false).await
}

pub fn assert_path_exists(p: &Path) {
    assert!(p.exists(), "{} missing", p.display());
}
