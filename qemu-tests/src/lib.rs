//! Harness for tests that boot the real image: one QEMU per `Vm`, its own
//! copy-on-write disk, serial log and loopback ports. Waits are event-driven
//! (serial markers, ports answering) with generous ceilings: a TCG boot can take
//! 40 s on a busy machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use keel_certs::pinning::FingerprintVerifier;

/// Ceiling for one boot to the console being ready.
pub const BOOT_CEILING: Duration = Duration::from_secs(300);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The image under test, or `None` (with the reason printed) when the tests should
/// be skipped. With `KEEL_QEMU_TESTS=1` (what `make test` sets) a missing image or
/// QEMU is a failure, not a skip.
pub fn image_or_skip() -> Option<PathBuf> {
    let image = std::env::var_os("KEEL_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/keel.qcow2"));
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
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
    qemu: Option<Child>,
}

impl Vm {
    /// Starts a factory-fresh appliance from `image` under legacy BIOS.
    pub fn start(name: &str, image: &Path) -> Result<Self> {
        Self::start_with(name, image, Firmware::Bios)
    }

    /// Starts a factory-fresh appliance from `image` under the given firmware.
    pub fn start_with(name: &str, image: &Path, firmware: Firmware) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("keel-{name}-"))
            .tempdir()?;
        let disk = dir.path().join("disk.qcow2");
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(image.canonicalize()?)
            .arg(&disk)
            .status()?;
        if !status.success() {
            bail!("qemu-img create failed");
        }
        let mut vm = Vm {
            name: name.into(),
            firmware,
            dir,
            https_port: free_port(),
            http_port: free_port(),
            qemu: None,
        };
        vm.boot()?;
        Ok(vm)
    }

    pub fn serial_path(&self) -> PathBuf {
        self.dir.path().join("serial.log")
    }

    /// (Re)starts QEMU on the same disk; the serial log is appended to.
    pub fn boot(&mut self) -> Result<()> {
        let disk = self.dir.path().join("disk.qcow2");
        let script = format!(
            "source '{}/scripts/qemu-lib.sh' && keel_qemu_args '{}' 'file:{}' {} {} && \
             exec qemu-system-x86_64 \"${{KEEL_QEMU_ARGS[@]}}\"",
            workspace_root().display(),
            disk.display(),
            self.dir.path().join("serial-current.log").display(),
            self.https_port,
            self.http_port
        );
        // Keep the whole history: append the previous boot's log before starting.
        self.collect_serial();
        let firmware = match self.firmware {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        };
        let child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("KEEL_FIRMWARE", firmware)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("qemu.err"))?)
            .spawn()
            .context("starting QEMU")?;
        self.qemu = Some(child);
        Ok(())
    }

    fn collect_serial(&self) {
        let current = self.dir.path().join("serial-current.log");
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

    /// Serial output of the current boot (QEMU truncates the file when it starts).
    pub fn serial(&self) -> String {
        String::from_utf8_lossy(
            &std::fs::read(self.dir.path().join("serial-current.log")).unwrap_or_default(),
        )
        .into_owned()
    }

    /// Everything printed on the serial line across all boots so far.
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
        clean
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until the current boot's serial output contains `marker`.
    pub async fn wait_serial(&mut self, marker: &str, ceiling: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            let s = self.serial();
            if s.contains(marker) {
                return Ok(s);
            }
            if let Some(code) = self.exited()? {
                bail!(
                    "{}: QEMU exited ({code}) before {marker:?}\n{}",
                    self.name,
                    self.serial_tail()
                );
            }
            if start.elapsed() > ceiling {
                bail!(
                    "{}: no {marker:?} on serial within {ceiling:?}\n{}",
                    self.name,
                    self.serial_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
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
            .build()
            .expect("client");
        (client, verifier)
    }

    /// Waits until GET /health answers over HTTPS.
    pub async fn wait_https(&mut self, ceiling: Duration) -> Result<Duration> {
        let start = Instant::now();
        let (client, _) = self.client();
        loop {
            if let Ok(r) = client
                .get(self.url("/appliance/api/v1/health"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                if r.status().is_success() {
                    return Ok(start.elapsed());
                }
            }
            if let Some(code) = self.exited()? {
                bail!(
                    "{}: QEMU exited ({code})\n{}",
                    self.name,
                    self.serial_tail()
                );
            }
            if start.elapsed() > ceiling {
                bail!(
                    "{}: HTTPS not answering within {ceiling:?}\n{}",
                    self.name,
                    self.serial_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The setup code the current boot printed on the serial line.
    pub fn setup_code(&self) -> Option<String> {
        setup_code_in(&self.serial())
    }

    pub fn disk_path(&self) -> PathBuf {
        self.dir.path().join("disk.qcow2")
    }
}

pub fn setup_code_in(serial: &str) -> Option<String> {
    serial
        .lines()
        .filter_map(|l| l.split("Setup code: ").nth(1))
        .map(|c| c.trim().chars().take_while(|c| *c != '\r').collect())
        .next_back()
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.qemu.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, body))
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
    }
}
