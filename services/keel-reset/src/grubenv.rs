//! GRUB's environment block on the ESP: where the reset request lives, because it
//! must survive the wipe of /data and a power cut in the middle of it.
//! Reading is parsing a small text block; writing goes through `grub-editenv`,
//! which keeps the block at exactly 1024 bytes as GRUB requires.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: not a GRUB environment block")]
    Format(PathBuf),
    #[error("grub-editenv failed: {0}")]
    Edit(String),
}

/// Parses a GRUB environment block (`# GRUB Environment Block`, `key=value` lines,
/// `#` padding).
pub fn parse(text: &str) -> Option<BTreeMap<String, String>> {
    let mut lines = text.lines();
    if lines.next()? != "# GRUB Environment Block" {
        return None;
    }
    Some(
        lines
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

pub struct GrubEnv {
    path: PathBuf,
}

impl GrubEnv {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn read(&self) -> Result<BTreeMap<String, String>, EnvError> {
        let text =
            std::fs::read_to_string(&self.path).map_err(|e| EnvError::Io(self.path.clone(), e))?;
        parse(&text).ok_or_else(|| EnvError::Format(self.path.clone()))
    }

    fn edit(&self, args: &[&str]) -> Result<(), EnvError> {
        let out = Command::new("grub-editenv")
            .arg(&self.path)
            .args(args)
            .output()
            .map_err(|e| EnvError::Edit(e.to_string()))?;
        if !out.status.success() {
            return Err(EnvError::Edit(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        // The ESP is FAT: make the change durable before anything else happens.
        std::fs::File::open(&self.path)
            .and_then(|f| f.sync_all())
            .map_err(|e| EnvError::Io(self.path.clone(), e))
    }

    pub fn set(&self, pairs: &[(&str, &str)]) -> Result<(), EnvError> {
        let args: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut all = vec!["set"];
        all.extend(args.iter().map(String::as_str));
        self.edit(&all)
    }

    pub fn unset(&self, keys: &[&str]) -> Result<(), EnvError> {
        let mut all = vec!["unset"];
        all.extend_from_slice(keys);
        self.edit(&all)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grub_block_with_padding() {
        let text = format!(
            "# GRUB Environment Block\nkeel_good=a\nkeel_reset=1\n{}",
            "#".repeat(900)
        );
        let env = parse(&text).unwrap();
        assert_eq!(env.get("keel_good").map(String::as_str), Some("a"));
        assert_eq!(env.get("keel_reset").map(String::as_str), Some("1"));
        assert!(parse("keel_reset=1\n").is_none());
    }
}
