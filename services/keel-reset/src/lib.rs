//! Factory reset of a Keel appliance.
//!
//! A reset is *requested* by setting `keel_reset=1` in GRUB's environment block on
//! the ESP (from the console, keelctl, or the boot menu after a typed confirmation)
//! and *carried out* early at the next boot, before `/data` is mounted: the data
//! partition is zeroed end to end (keys, password hash, peer secrets become
//! unrecoverable), a fresh ext4 is made, and only then is the request cleared. A
//! power cut anywhere in between leaves the request set, so the next boot resumes.
//! Installed software and the active slot are not touched.

pub mod grubenv;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const RESET_KEY: &str = "keel_reset";
pub const POWEROFF_KEY: &str = "keel_reset_poweroff";

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error(transparent)]
    Env(#[from] grubenv::EnvError),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("making the new data filesystem failed: {0}")]
    Mkfs(String),
}

/// What the early-boot step found and did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    NotRequested,
    Reset { power_off: bool },
}

pub fn request(env: &grubenv::GrubEnv, power_off: bool) -> Result<(), ResetError> {
    let mut pairs = vec![(RESET_KEY, "1")];
    if power_off {
        pairs.push((POWEROFF_KEY, "1"));
    }
    env.set(&pairs)?;
    Ok(())
}

pub fn requested(env: &grubenv::GrubEnv) -> Result<Option<bool>, ResetError> {
    let vars = env.read()?;
    if vars.get(RESET_KEY).map(String::as_str) != Some("1") {
        return Ok(None);
    }
    Ok(Some(
        vars.get(POWEROFF_KEY).map(String::as_str) == Some("1"),
    ))
}

// BLKGETSIZE64 and BLKZEROOUT from <linux/fs.h>.
nix::ioctl_read!(blk_getsize64, 0x12, 114, u64);
nix::ioctl_write_ptr_bad!(blk_zeroout, 0x127f, [u64; 2]);

/// Overwrites the whole device (or file) with zeros. Block devices use BLKZEROOUT,
/// which lets the storage zero efficiently; anything else is written chunk by chunk.
pub fn zero_device(path: &Path) -> Result<u64, ResetError> {
    let io = |e| ResetError::Io(path.to_path_buf(), e);
    let mut dev = OpenOptions::new().write(true).open(path).map_err(io)?;
    let meta = dev.metadata().map_err(io)?;
    use std::os::unix::fs::FileTypeExt;
    if meta.file_type().is_block_device() {
        let mut size = 0u64;
        unsafe { blk_getsize64(dev.as_raw_fd(), &mut size) }
            .map_err(|e| io(std::io::Error::from(e)))?;
        let range = [0u64, size];
        if unsafe { blk_zeroout(dev.as_raw_fd(), &range) }.is_ok() {
            dev.sync_all().map_err(io)?;
            return Ok(size);
        }
        return write_zeros(&mut dev, size).map_err(io);
    }
    let size = meta.len();
    write_zeros(&mut dev, size).map_err(io)
}

fn write_zeros(dev: &mut std::fs::File, size: u64) -> std::io::Result<u64> {
    let chunk = vec![0u8; 1 << 20];
    dev.seek(SeekFrom::Start(0))?;
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        dev.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    dev.sync_all()?;
    Ok(size)
}

/// Makes the empty data filesystem (what the image ships, at the partition's size).
pub fn make_data_fs(path: &Path) -> Result<(), ResetError> {
    // Writing the device makes udev re-probe it, and mke2fs's exclusive-open check
    // then sees it "in use". Let udev finish; -F twice proceeds past that check,
    // which is safe because this runs before anything mounts /data.
    let _ = Command::new("udevadm").arg("settle").status();
    let mut last = String::new();
    for _ in 0..3 {
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-F", "-L", "data", "-m", "0"])
            .arg(path)
            .output()
            .map_err(|e| ResetError::Mkfs(e.to_string()))?;
        if out.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    Err(ResetError::Mkfs(last))
}

/// The early-boot step: when a reset is requested, wipe and recreate the data
/// filesystem, then clear the request (last, so a power cut resumes the reset).
pub fn carry_out(env: &grubenv::GrubEnv, data: &Path) -> Result<Outcome, ResetError> {
    let Some(power_off) = requested(env)? else {
        return Ok(Outcome::NotRequested);
    };
    eprintln!("keel-reset: factory reset: erasing {}", data.display());
    let bytes = zero_device(data)?;
    eprintln!("keel-reset: {} MiB zeroed", bytes >> 20);
    make_data_fs(data)?;
    env.unset(&[RESET_KEY, POWEROFF_KEY])?;
    eprintln!("keel-reset: data erased; first-boot provisioning follows");
    Ok(Outcome::Reset { power_off })
}
