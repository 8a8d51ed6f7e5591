//! Harness for tests that boot the real image: one QEMU per `Vm`, its own
//! copy-on-write disk, serial log and loopback ports. Waits are event-driven
//! (serial markers, ports answering) with generous ceilings: a TCG boot can take
//! 40 s on a busy machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use keel_certs::pinning::FingerprintVerifier;

pub mod segment;
pub mod updates;

pub use segment::{Segment, SegmentNic};

/// Ceiling for one boot to the console being ready.
pub const BOOT_CEILING: Duration = Duration::from_secs(300);
/// Ceiling for QEMU to end by itself after the guest was told to power off.
pub const POWEROFF_CEILING: Duration = Duration::from_secs(120);
/// Printed on the serial line once the console answers on 443 (docs/interfaces.md).
pub const READY_MARKER: &str = "KEEL-READY";
pub const HEALTH_PATH: &str = "/appliance/api/v1/health";

/// Where `make build` (scripts/cargo-release.sh) puts the release binaries.
pub fn release_bin_dir() -> PathBuf {
    let out = Command::new(workspace_root().join("scripts/cargo-release.sh"))
        .arg("--bin-dir")
        .output()
        .expect("scripts/cargo-release.sh runs");
    assert!(out.status.success(), "cargo-release.sh --bin-dir: {out:?}");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The image under test: `KEEL_IMAGE`, else `build/keel.qcow2` of the workspace.
pub fn image_path() -> PathBuf {
    std::env::var_os("KEEL_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/keel.qcow2"))
}

/// The image under test, or `None` (with the reason printed) when the tests should
/// be skipped. With `KEEL_QEMU_TESTS=1` (what `make test` sets) a missing image or
/// QEMU is a failure, not a skip.
pub fn image_or_skip() -> Option<PathBuf> {
    let image = image_path();
    let required = std::env::var("KEEL_QEMU_TESTS").is_ok_and(|v| v == "1");
    let problem = if !image.exists() {
        Some(format!(
            "no image at {} (run `make image`)",
            image.display()
        ))
    } else if Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        Some("qemu-system-x86_64 is not installed (run scripts/deps.sh)".into())
    } else {
        None
    };
    match problem {
        None => Some(image),
        Some(p) if required => panic!("KEEL_QEMU_TESTS=1 but {p}"),
        Some(p) => {
            eprintln!("SKIPPED: {p}; set KEEL_QEMU_TESTS=1 to make this a failure");
            None
        }
    }
}

/// The descriptor number QEMU finds the segment's tap on.
const SEGMENT_FD: i32 = 3;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `bash -c` running `script` after sourcing scripts/qemu-lib.sh, the one place
/// that knows how Keel is booted under QEMU.
fn qemu_lib(script: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c").arg(format!(
        "source '{}/scripts/qemu-lib.sh' && {script}",
        workspace_root().display()
    ));
    c
}

/// The accelerator scripts/qemu-lib.sh chooses, asked once per process and handed
/// to every QEMU start as `KEEL_ACCEL`: the KVM probe does not run (and is not
/// timed) per boot.
fn accel() -> &'static str {
    static ACCEL: OnceLock<String> = OnceLock::new();
    ACCEL.get_or_init(|| {
        let out = qemu_lib("keel_qemu_accel")
            .stderr(Stdio::inherit())
            .output()
            .expect("bash runs scripts/qemu-lib.sh");
        let accel = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if accel.is_empty() {
            "tcg".into()
        } else {
            accel
        }
    })
}

/// Lowercase hex SHA-256 of `der`, computed here rather than by keel-certs: the
/// fingerprint the console reports is checked against an independent hash.
pub fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The size of the disk a qcow2 image describes.
pub fn virtual_size(image: &Path) -> Result<u64> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(image)
        .output()?;
    if !out.status.success() {
        bail!(
            "qemu-img info {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    info["virtual-size"]
        .as_u64()
        .ok_or_else(|| anyhow!("no virtual-size for {}", image.display()))
}

/// How the VM's firmware boots the disk: legacy BIOS (SeaBIOS) or UEFI (OVMF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

pub struct Vm {
    pub name: String,
    firmware: Firmware,
    dir: tempfile::TempDir,
    pub https_port: u16,
    pub http_port: u16,
    /// Host port of the second NIC's 443, when the VM has one (`with_second_nic`).
    pub second_https_port: Option<u16>,
    /// Extra user-network options of the first NIC (`with_guestfwd`).
    guestfwd: Option<String>,
    /// A NIC on a private segment (`with_segment`).
    segment: Option<SegmentNic>,
    qemu: Option<Child>,
    started: Instant,
    /// Times QEMU itself crashed in this VM's first boot and was started again.
    qemu_crashes: u32,
}

/// An assertion of QEMU's own device code (e.g. `hw/pci/msix.c`, seen once under
/// TCG with a second virtio NIC): QEMU's defect, not the guest's.
fn qemu_assertion(stderr: &str) -> Option<&str> {
    stderr
        .lines()
        .find(|l| l.starts_with("qemu-system-") && l.contains("Assertion") && l.contains("failed"))
}

impl Vm {
    /// Starts a factory-fresh appliance from `image` under legacy BIOS.
    pub fn start(name: &str, image: &Path) -> Result<Self> {
        Self::start_with(name, image, Firmware::Bios)
    }

    /// Starts a factory-fresh appliance from `image` under the given firmware.
    pub fn start_with(name: &str, image: &Path, firmware: Firmware) -> Result<Self> {
        Self::start_grown(name, image, firmware, 0)
    }

    /// Like `start_with`, on a disk `grow_bytes` larger than the image (an admin
    /// who gives the VM more disk than the image has).
    pub fn start_grown(
        name: &str,
        image: &Path,
        firmware: Firmware,
        grow_bytes: u64,
    ) -> Result<Self> {
        let mut vm = Self::prepare(name, image, firmware, grow_bytes)?;
        vm.boot()?;
        Ok(vm)
    }

    /// A factory-fresh appliance's disk and ports, not booted yet: the test may
    /// change the disk (`patch_esp_file`) or add a NIC before `boot`.
    pub fn prepare(name: &str, image: &Path, firmware: Firmware, grow_bytes: u64) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("keel-{name}-"))
            .tempdir()?;
        let disk = dir.path().join("disk.qcow2");
        let base = image
            .canonicalize()
            .with_context(|| format!("image {}", image.display()))?;
        let size = match grow_bytes {
            0 => String::new(),
            n => (virtual_size(&base)? + n).to_string(),
        };
        let created = qemu_lib(&format!(
            "keel_qemu_overlay '{}' '{}' {size}",
            base.display(),
            disk.display()
        ))
        .status()?;
        if !created.success() {
            bail!("creating the overlay disk on {} failed", base.display());
        }
        Ok(Vm {
            name: name.into(),
            firmware,
            dir,
            https_port: free_port(),
            http_port: free_port(),
            second_https_port: None,
            guestfwd: None,
            segment: None,
            qemu: None,
            started: Instant::now(),
            qemu_crashes: 0,
        })
    }

    /// Gives the VM a second NIC on a user network of its own (10.0.3.0/24) with
    /// 443 forwarded from `second_https_port`: the console sees those clients as
    /// 10.0.3.2, another source address than the first NIC's 10.0.2.2.
    pub fn with_second_nic(mut self) -> Self {
        self.second_https_port = Some(free_port());
        self
    }

    /// Lets the guest reach a host service despite `restrict=on`: TCP connections
    /// to `guest_addr` (e.g. `10.0.2.100:3128`) run `command` on the host (one per
    /// connection) with the connection on its stdin and stdout. `command` is one
    /// word (a script's path: no spaces or commas).
    pub fn with_guestfwd(mut self, guest_addr: &str, command: &Path) -> Self {
        let cmd = command.display().to_string();
        assert!(
            !cmd.contains([' ', ',']),
            "guestfwd command {cmd:?} must be one word without commas"
        );
        self.guestfwd = Some(format!("guestfwd=tcp:{guest_addr}-cmd:{cmd}"));
        self
    }

    /// Gives the VM one more NIC, on `segment` (after the user-network NICs), with
    /// a MAC of its own there: `segment_mac` names it for the test.
    pub fn with_segment(mut self, segment: &Segment) -> Result<Self> {
        self.segment = Some(segment.nic()?);
        Ok(self)
    }

    /// The guest-side MAC of the segment NIC (lowercase, colon-separated).
    pub fn segment_mac(&self) -> Option<&str> {
        self.segment.as_ref().map(|n| n.mac.as_str())
    }

    /// The URL of `path` through the second NIC.
    pub fn second_url(&self, path: &str) -> String {
        let port = self.second_https_port.expect("VM started with_second_nic");
        format!("https://127.0.0.1:{port}{path}")
    }

    pub fn serial_path(&self) -> PathBuf {
        self.dir.path().join("serial.log")
    }

    fn current_serial_path(&self) -> PathBuf {
        self.dir.path().join("serial-current.log")
    }

    fn serial_socket(&self) -> PathBuf {
        self.dir.path().join("serial.sock")
    }

    /// (Re)starts QEMU on the same disk; the serial log is appended to.
    pub fn boot(&mut self) -> Result<()> {
        // The serial line is a socket (tests type into the boot menu) whose output
        // QEMU also logs to a file: qemu-lib.sh gets `chardev:s0`, the chardev is ours.
        let chardev = format!(
            "socket,id=s0,path={},server=on,wait=off,logfile={}",
            self.serial_socket().display(),
            self.current_serial_path().display()
        );
        let script = format!(
            "keel_qemu_args '{}' chardev:s0 {} {} && \
             exec qemu-system-x86_64 \"${{KEEL_QEMU_ARGS[@]}}\" -chardev '{chardev}'",
            self.disk_path().display(),
            self.https_port,
            self.http_port
        );
        // Keep the whole history: append the previous boot's log before starting.
        self.collect_serial();
        let firmware = match self.firmware {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        };
        let accel = accel();
        self.started = Instant::now();
        let mut cmd = qemu_lib(&script);
        if let Some(port) = self.second_https_port {
            cmd.env("KEEL_SECOND_HTTPS_PORT", port.to_string());
        }
        if let Some(g) = &self.guestfwd {
            cmd.env("KEEL_GUESTFWD", g);
        }
        if let Some(nic) = &self.segment {
            use std::os::fd::AsRawFd as _;
            use std::os::unix::process::CommandExt as _;
            cmd.env("KEEL_SEGMENT_NETDEV", format!("tap,fd={SEGMENT_FD}"))
                .env("KEEL_SEGMENT_MAC", &nic.mac);
            let raw = nic.fd.as_raw_fd();
            // SAFETY: between fork and exec only async-signal-safe calls (dup2,
            // fcntl) on descriptors this process owns.
            unsafe {
                cmd.pre_exec(move || {
                    let r = if raw == SEGMENT_FD {
                        // Already in place: only close-on-exec must go.
                        libc::fcntl(raw, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(raw, SEGMENT_FD)
                    };
                    if r < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .env("KEEL_FIRMWARE", firmware)
            .env("KEEL_ACCEL", accel)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("qemu.err"))?)
            .spawn()
            .context("starting QEMU")?;
        self.qemu = Some(child);
        Ok(())
    }

    /// When the current QEMU process was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    fn collect_serial(&self) {
        let current = self.current_serial_path();
        if let Ok(bytes) = std::fs::read(&current) {
            use std::io::Write;
            if let Ok(mut all) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.serial_path())
            {
                let _ = all.write_all(&bytes);
            }
            let _ = std::fs::remove_file(&current);
        }
    }

    /// Serial output of the current QEMU run (QEMU truncates the file when it
    /// starts; guest reboots inside one run all land here).
    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.current_serial_path()).unwrap_or_default())
            .into_owned()
    }

    /// Everything printed on the serial line across all QEMU runs so far.
    pub fn serial_all(&self) -> String {
        let mut all =
            String::from_utf8_lossy(&std::fs::read(self.serial_path()).unwrap_or_default())
                .into_owned();
        all.push_str(&self.serial());
        all
    }

    pub fn serial_tail(&self) -> String {
        let s = self.serial();
        let clean: String = s.chars().filter(|c| *c != '\u{1b}').collect();
        let lines: Vec<&str> = clean.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until the current run's serial output contains `marker`.
    pub async fn wait_serial(&mut self, marker: &str, ceiling: Duration) -> Result<String> {
        self.wait_serial_count(marker, 1, ceiling).await
    }

    /// Waits until `marker` occurs at least `n` times in the current run's serial
    /// output (e.g. the n-th boot's `KEEL-READY` after guest reboots).
    pub async fn wait_serial_count(
        &mut self,
        marker: &str,
        n: usize,
        ceiling: Duration,
    ) -> Result<String> {
        let start = Instant::now();
        loop {
            let s = self.serial();
            if s.matches(marker).count() >= n {
                return Ok(s);
            }
            if let Some(code) = self.exited()? {
                // Booted once more, only before the first marker: a power cut so
                // early changes nothing the test looks at, and a later one would
                // lose the count.
                let err =
                    std::fs::read_to_string(self.dir.path().join("qemu.err")).unwrap_or_default();
                if let Some(line) = qemu_assertion(&err) {
                    if n == 1 && self.qemu_crashes == 0 && !s.contains(marker) {
                        self.qemu_crashes += 1;
                        eprintln!(
                            "{}: QEMU itself crashed ({code}: {line}); starting it once more",
                            self.name
                        );
                        self.boot()?;
                        continue;
                    }
                }
                bail!(
                    "{}: QEMU exited ({code}) before {marker:?} #{n}\n{}",
                    self.name,
                    self.serial_tail()
                );
            }
            if start.elapsed() > ceiling {
                bail!(
                    "{}: no {marker:?} #{n} on serial within {ceiling:?}\n{}",
                    self.name,
                    self.serial_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Exit status if QEMU has ended.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.qemu.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    /// Waits for QEMU to end by itself (the guest powered off).
    pub async fn wait_exit(&mut self, ceiling: Duration) -> Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited()? {
                self.qemu = None;
                return Ok(status);
            }
            if start.elapsed() > ceiling {
                bail!(
                    "{}: still running {ceiling:?} after power-off\n{}",
                    self.name,
                    self.serial_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Ends QEMU now (pulls the plug).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.qemu.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.https_port)
    }

    /// An HTTPS client with a cookie jar that records the served certificate.
    pub fn client(&self) -> (reqwest::Client, Arc<FingerprintVerifier>) {
        let verifier = FingerprintVerifier::record_any();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(verifier.client_config())
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            // A connection kept from before a guest reboot is dead (QEMU's user
            // network does not reset it): a new connection for every request.
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        (client, verifier)
    }

    /// Waits until GET /health answers 200 over HTTPS; returns the time since QEMU
    /// started. A new attempt starts every 100 ms while earlier ones may still hang
    /// (QEMU's user network accepts the connection before the guest listens), so
    /// the answer is seen within ~100 ms of the console being able to give it.
    pub async fn wait_https(&mut self, ceiling: Duration) -> Result<Duration> {
        let start = Instant::now();
        let (client, _) = self.client();
        let url = self.url(HEALTH_PATH);
        let mut attempts = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(Ok(true)) = attempts.join_next() => return Ok(self.started.elapsed()),
                _ = tick.tick() => {
                    if let Some(code) = self.exited()? {
                        bail!("{}: QEMU exited ({code})\n{}", self.name, self.serial_tail());
                    }
                    if start.elapsed() > ceiling {
                        bail!(
                            "{}: HTTPS not answering within {ceiling:?}\n{}",
                            self.name,
                            self.serial_tail()
                        );
                    }
                    if attempts.len() < 30 {
                        let get = client.get(&url).timeout(Duration::from_secs(3)).send();
                        attempts.spawn(async move {
                            get.await.is_ok_and(|r| r.status().is_success())
                        });
                    }
                }
            }
        }
    }

    /// The setup code the current run printed last on the serial line.
    pub fn setup_code(&self) -> Option<String> {
        setup_code_in(&self.serial())
    }

    /// Types `text` on the VM's serial line.
    pub fn type_serial(&self, text: &str) -> Result<()> {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(self.serial_socket())
            .context("connecting to the serial socket")?;
        // One byte at a time: the emulated UART has a small FIFO.
        for b in text.bytes() {
            s.write_all(&[b])?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// For each needle, whether the guest-visible disk contains it anywhere (the
    /// disk is exported raw, readable while the VM runs, and searched with grep).
    pub fn disk_contains(&self, needles: &[&str]) -> Result<Vec<bool>> {
        let raw = self.dir.path().join("scan.raw");
        let status = Command::new("qemu-img")
            .args(["convert", "-U", "-O", "raw"])
            .arg(self.disk_path())
            .arg(&raw)
            .status()?;
        if !status.success() {
            bail!("qemu-img convert failed");
        }
        let found = needles
            .iter()
            .map(|n| {
                Command::new("grep")
                    .args(["-q", "-a", "-F", "--"])
                    .arg(n)
                    .arg(&raw)
                    .status()
                    .map(|s| s.success())
            })
            .collect::<std::io::Result<Vec<bool>>>()?;
        std::fs::remove_file(&raw)?;
        Ok(found)
    }

    pub fn disk_path(&self) -> PathBuf {
        self.dir.path().join("disk.qcow2")
    }

    /// The guest-visible disk as a raw file beside the overlay (QEMU must not be
    /// writing the disk while the caller changes it).
    fn export_raw(&self) -> Result<PathBuf> {
        let raw = self.dir.path().join("disk.raw");
        let status = Command::new("qemu-img")
            .args(["convert", "-U", "-O", "raw"])
            .arg(self.disk_path())
            .arg(&raw)
            .status()?;
        if !status.success() {
            bail!("qemu-img convert {} failed", self.disk_path().display());
        }
        Ok(raw)
    }

    /// Reads a file from the ESP (FAT) of the disk, e.g. `grub/grubenv`, with
    /// mtools; `None` when the file does not exist. Call while QEMU is stopped.
    pub fn read_esp_file(&self, esp_path: &str) -> Result<Option<Vec<u8>>> {
        let raw = self.export_raw()?;
        let offset = esp_offset(&raw)?;
        let out = self.dir.path().join("esp-file");
        let status = Command::new("mcopy")
            .args(["-n", "-o", "-i"])
            .arg(format!("{}@@{offset}", raw.display()))
            .arg(format!("::/{esp_path}"))
            .arg(&out)
            .stderr(Stdio::null())
            .status()?;
        std::fs::remove_file(&raw)?;
        if !status.success() {
            return Ok(None);
        }
        let bytes = std::fs::read(&out)?;
        std::fs::remove_file(&out)?;
        Ok(Some(bytes))
    }

    /// Replaces the contents of a file on the ESP, e.g. garbage over
    /// `grub/grubenv` as a torn write leaves it. Call before `boot` or while QEMU
    /// is stopped.
    pub fn patch_esp_file(&self, esp_path: &str, contents: &[u8]) -> Result<()> {
        let raw = self.export_raw()?;
        let offset = esp_offset(&raw)?;
        let img = format!("{}@@{offset}", raw.display());
        let src = self.dir.path().join("esp-patch");
        std::fs::write(&src, contents)?;
        let status = Command::new("mcopy")
            .args(["-o", "-i", &img])
            .arg(&src)
            .arg(format!("::/{esp_path}"))
            .status()?;
        if !status.success() {
            bail!("mcopy onto ::/{esp_path} failed");
        }
        std::fs::remove_file(&src)?;
        // Back into the qcow2 the VM boots from (full copy; the image is small).
        let status = Command::new("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(&raw)
            .arg(self.disk_path())
            .status()?;
        std::fs::remove_file(&raw)?;
        if !status.success() {
            bail!(
                "qemu-img convert back to {} failed",
                self.disk_path().display()
            );
        }
        Ok(())
    }
}

/// Byte offset of the partition labelled `esp` in a raw GPT disk (sfdisk reads
/// plain files: no loop device).
fn esp_offset(raw: &Path) -> Result<u64> {
    let out = Command::new("sfdisk").arg("-J").arg(raw).output()?;
    if !out.status.success() {
        bail!(
            "sfdisk -J {}: {}",
            raw.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let table: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let sector = table["partitiontable"]["sectorsize"]
        .as_u64()
        .unwrap_or(512);
    table["partitiontable"]["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "esp")
        .and_then(|p| p["start"].as_u64())
        .map(|start| start * sector)
        .ok_or_else(|| anyhow!("no partition named esp on {}", raw.display()))
}

pub fn setup_code_in(serial: &str) -> Option<String> {
    // Whole lines only: the serial log grows a few bytes at a time, and a line
    // still being written would give a prefix of the code.
    serial
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.split("Setup code: ").nth(1))
        .map(|c| c.trim().chars().take_while(|c| *c != '\r').collect())
        .next_back()
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} serial (tail) ---\n{}",
                self.name,
                self.serial_tail()
            );
            let err = std::fs::read_to_string(self.dir.path().join("qemu.err")).unwrap_or_default();
            if !err.is_empty() {
                eprintln!("--- {} qemu stderr ---\n{err}", self.name);
            }
        }
    }
}

/// Logs in as the admin (after setup, e.g. once a reboot ended the session):
/// returns a client holding the session cookie and the CSRF token.
pub async fn log_in(vm: &Vm, password: &str) -> Result<(reqwest::Client, String)> {
    let (http, _) = vm.client();
    let (st, body) = json_post(
        &http,
        &vm.url("/appliance/api/v1/login"),
        serde_json::json!({"username": "admin", "password": password}),
        None,
    )
    .await?;
    if st != 200 {
        bail!("{}: login answered {st}: {body}", vm.name);
    }
    Ok((http, csrf_of(&body)?))
}

/// The body of a page (e.g. the Basics page of a logged-in admin) as text.
pub async fn page_text(client: &reqwest::Client, url: &str) -> Result<String> {
    Ok(client.get(url).send().await?.text().await?)
}

/// POSTs JSON (with the CSRF header when given); returns status and JSON body.
pub async fn json_post(
    client: &reqwest::Client,
    url: &str,
    body: serde_json::Value,
    csrf: Option<&str>,
) -> Result<(u16, serde_json::Value)> {
    let mut req = client.post(url).json(&body);
    if let Some(t) = csrf {
        req = req.header("x-csrf-token", t);
    }
    Ok(answer(req.send().await?).await)
}

/// GETs JSON; returns status and JSON body.
pub async fn json_get(client: &reqwest::Client, url: &str) -> Result<(u16, serde_json::Value)> {
    Ok(answer(client.get(url).send().await?).await)
}

/// Status and JSON body of an answer (`Null` when the body is not JSON).
pub async fn answer(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// Sets the admin password with the setup code the VM's current run printed; returns
/// the logged-in client, its CSRF token and the certificate served (DER).
pub async fn set_up_admin(vm: &Vm, password: &str) -> Result<(reqwest::Client, String, Vec<u8>)> {
    let code = vm
        .setup_code()
        .ok_or_else(|| anyhow!("{}: no setup code on the serial line", vm.name))?;
    let (http, seen) = vm.client();
    let (st, body) = json_post(
        &http,
        &vm.url("/appliance/api/v1/setup"),
        serde_json::json!({"setup_code": code, "password": password}),
        None,
    )
    .await?;
    if st != 200 {
        bail!("{}: setup answered {st}: {body}", vm.name);
    }
    let der = seen
        .seen_der()
        .ok_or_else(|| anyhow!("no certificate seen"))?;
    Ok((http, csrf_of(&body)?, der))
}

/// Runs the openssl CLI in `dir` (a real tool nobody here wrote, for test material);
/// panics with its stderr when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The key type of a test CA.
#[derive(Clone, Copy, Debug)]
pub enum CaKey {
    P256,
    /// An RSA issuer over the P-256 leaf: a chain of mixed algorithms.
    Rsa2048,
}

/// A test CA (`ca.crt`, `ca.key`) and a P-256 server certificate it signed
/// (`leaf.crt`, `leaf.key`, unencrypted) naming `subject_alt_name` (e.g.
/// `IP:127.0.0.1`), made in `dir` with the openssl CLI.
pub fn ca_and_leaf(dir: &Path, subject_alt_name: &str, ca_key: CaKey) {
    let key_args: &[&str] = match ca_key {
        CaKey::P256 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        CaKey::Rsa2048 => &["-newkey", "rsa:2048"],
    };
    openssl(
        dir,
        &[
            &["req", "-x509"],
            key_args,
            &[
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "30",
                "-subj",
                "/CN=Keel test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    let san = format!("subjectAltName={subject_alt_name}");
    // OpenSSL 3's `req -CA` signs the new key's certificate in one step.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.crt",
            "-days",
            "30",
            "-subj",
            "/CN=keel.test",
            "-addext",
            &san,
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ],
    );
}

/// A file of `dir` as the certificate import API takes it.
pub fn cert_file(dir: &Path, name: &str) -> serde_json::Value {
    use base64::Engine as _;
    let data = std::fs::read(dir.join(name)).expect("test file");
    serde_json::json!({
        "name": name,
        "data_base64": base64::engine::general_purpose::STANDARD.encode(data),
    })
}

pub fn csrf_of(body: &serde_json::Value) -> Result<String> {
    body["csrf_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no csrf_token in {body}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn setup_code_is_found_in_serial_noise() {
        let s = "\u{1b}[H junk\r\nKeel 0.1.0 console: https://10.0.2.15/appliance\r\nSetup code: AB2C-DEFG-HJKL\r\nKEEL-READY\r\n";
        assert_eq!(super::setup_code_in(s).as_deref(), Some("AB2C-DEFG-HJKL"));
        assert_eq!(super::setup_code_in("nothing"), None);
        // A line still being written does not count; the last whole one does.
        let growing = format!("{s}Setup code: ZZ9Y-X");
        assert_eq!(
            super::setup_code_in(&growing).as_deref(),
            Some("AB2C-DEFG-HJKL")
        );
    }

    #[test]
    fn sha256_hex_is_lowercase_hex_of_the_digest() {
        assert_eq!(
            super::sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
