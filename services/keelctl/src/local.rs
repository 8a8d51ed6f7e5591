//! What `keelctl` and `keel-menu` both do on the box itself: the banner's text, the
//! factory-reset request and systemctl's power verbs.

use std::path::PathBuf;

use anyhow::{bail, Context};
use keel_api::Banner;

/// The console URLs and, before setup, the setup code, with terminal line ends.
pub fn render_banner(b: &Banner) -> String {
    let mut out = String::from("\r\n");
    if b.urls.is_empty() {
        out.push_str(&format!(
            "Keel {} console: no network address yet\r\n",
            b.version
        ));
    }
    for url in &b.urls {
        out.push_str(&format!("Keel {} console: {}\r\n", b.version, url));
    }
    if let Some(code) = &b.setup_code {
        out.push_str(&format!("Setup code: {code}\r\n"));
    }
    out
}

/// `systemctl VERB --no-block`: done once systemd accepted the job.
pub fn systemctl(verb: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("systemctl")
        .args([verb, "--no-block"])
        .status()
        .context("running systemctl")?;
    if !status.success() {
        bail!("systemctl {verb} failed: {status}");
    }
    Ok(())
}

/// What carrying out a request runs; tests substitute their own.
pub trait Executor {
    /// `keel-reset request [--poweroff]`: the reset happens early in the next boot.
    fn request_reset(&mut self, poweroff: bool) -> anyhow::Result<()>;
    /// `systemctl VERB --no-block`: done once systemd accepted the job.
    fn systemctl(&mut self, verb: &str) -> anyhow::Result<()>;
}

/// The real programs.
pub struct System;

impl Executor for System {
    fn request_reset(&mut self, poweroff: bool) -> anyhow::Result<()> {
        let mut cmd = std::process::Command::new("keel-reset");
        cmd.arg("request");
        if poweroff {
            cmd.arg("--poweroff");
        }
        let status = cmd.status().context("running keel-reset")?;
        if !status.success() {
            bail!("keel-reset request failed: {status}");
        }
        Ok(())
    }

    fn systemctl(&mut self, verb: &str) -> anyhow::Result<()> {
        systemctl(verb)
    }
}

/// Requests the reset (it is carried out early in the next boot) and reboots.
pub fn factory_reset(poweroff: bool) -> anyhow::Result<()> {
    System.request_reset(poweroff)?;
    systemctl("reboot")
}

/// Another program of this package: the one beside the running program (the image's
/// /usr/bin, cargo's target directory), else whatever `PATH` finds.
pub fn sibling_program(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(name)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_shows_code_only_before_setup() {
        let mut b = Banner {
            version: "1.2.3".into(),
            urls: vec!["https://10.0.2.15/appliance".into()],
            setup_code: Some("ABCD-EFGH-JKLM".into()),
        };
        let text = render_banner(&b);
        assert!(text.contains("Keel 1.2.3 console: https://10.0.2.15/appliance"));
        assert!(text.contains("Setup code: ABCD-EFGH-JKLM"));
        b.setup_code = None;
        assert!(!render_banner(&b).contains("Setup code"));
    }
}
