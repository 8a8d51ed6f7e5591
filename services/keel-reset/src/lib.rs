//! Factory reset of a Keel appliance.
//!
//! A reset is *requested* by setting `keel_reset=1` in GRUB's environment block on
//! the ESP (from the console, keelctl, or the boot menu after a typed confirmation)
//! and *carried out* early at the next boot, before `/data` is mounted: the data
//! partition is zeroed end to end (keys, password hash, peer secrets become
//! unrecoverable), a fresh ext4 is made, and only then is the request cleared. A
//! power cut anywhere in between leaves the request set, so the next boot resumes.
//! Installed software and the active slot are not touched.
//!
//! All access to GRUB's environment goes through keel-boot (two copies, verified
//! writes). An environment that cannot be read is *no reset requested*: it is
//! reported, never an error that would stop the boot.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use keel_boot::{
    boot_state, record_state, unavailable_state, BootEnv, BootState, Esp, EspError, Slot,
};
pub use keel_boot::{POWEROFF_KEY, RESET_KEY};

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error(transparent)]
    Env(#[from] keel_boot::BootError),
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

/// The early-boot step's result: what it did and what it read.
#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    /// The environment as read before anything was done.
    pub status: keel_boot::Status,
    /// The reset was done but its request could not be cleared (why).
    pub not_cleared: Option<String>,
}

impl Report {
    /// What the admin should hear about: an unreadable copy, a request that could
    /// not be cleared.
    pub fn problem(&self) -> Option<String> {
        join_problems([self.status.problem(), self.not_cleared.clone()])
    }
}

/// Joins the problems there are with "; ".
pub fn join_problems(problems: impl IntoIterator<Item = Option<String>>) -> Option<String> {
    let all: Vec<String> = problems.into_iter().flatten().collect();
    (!all.is_empty()).then(|| all.join("; "))
}

pub fn request(env: &BootEnv, power_off: bool) -> Result<(), ResetError> {
    env.request_reset(power_off)?;
    Ok(())
}

/// `Some(power_off)` when a reset is pending; an unreadable environment is `None`.
pub fn requested(env: &BootEnv) -> Option<bool> {
    env.status().reset()
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
///
/// An unreadable environment is `NotRequested` with a problem. Zeroing or mkfs
/// failing is an error (the request stays; keel-reset.service reboots to retry). A
/// request that cannot be cleared after the erase is a problem, not an error: the
/// reset is done, and a reboot loop would make the box unreachable.
pub fn carry_out(env: &BootEnv, data: &Path) -> Result<Report, ResetError> {
    let status = env.status();
    let Some(power_off) = status.reset() else {
        return Ok(Report {
            outcome: Outcome::NotRequested,
            status,
            not_cleared: None,
        });
    };
    eprintln!("keel-reset: factory reset: erasing {}", data.display());
    let bytes = zero_device(data)?;
    eprintln!("keel-reset: {} MiB zeroed", bytes >> 20);
    make_data_fs(data)?;
    let not_cleared = env.clear_reset().err().map(|e| {
        let msg = format!("factory reset done, but its request could not be cleared: {e}");
        eprintln!("keel-reset: {msg}");
        msg
    });
    eprintln!("keel-reset: data erased; first-boot provisioning follows");
    Ok(Report {
        outcome: Outcome::Reset { power_off },
        status,
        not_cleared,
    })
}

/// What `keel-reset early` did, and the boot state it recorded.
#[derive(Debug)]
pub struct Early {
    pub outcome: Outcome,
    pub state: BootState,
}

const EARLY: &str = "keel-reset early";

fn record(path: &Path, state: &BootState) {
    if path.as_os_str() == "none" {
        return;
    }
    if let Err(e) = record_state(path, state.clone()) {
        eprintln!("keel-reset: boot state file: {e}");
    }
}

/// `keel-reset early`: confirm a boot-menu request (`keel.reset=ask` on `cmdline`,
/// `confirm` asks on the terminals), carry out a pending reset, record the boot
/// state in `state_file` ("none": nowhere).
///
/// Nothing about GRUB's environment stops the boot: an ESP that does not mount or
/// an environment that cannot be read is logged, recorded for the console and
/// means "no reset requested". Only a requested reset that fails (zeroing, mkfs)
/// is an error: the request stays and keel-reset.service reboots to retry.
pub fn early(
    esp: Result<Esp, EspError>,
    data: &Path,
    cmdline: &str,
    confirm: &dyn Fn() -> bool,
    state_file: &Path,
) -> Result<Early, ResetError> {
    let ask = cmdline.split_whitespace().any(|w| w == "keel.reset=ask");
    let running = Slot::from_cmdline(cmdline);
    let esp = match esp {
        Ok(esp) => esp,
        Err(e) => {
            let problem = format!(
                "ESP unavailable ({e}): boot environment not read, no factory reset assumed"
            );
            eprintln!("keel-reset: {problem}");
            let state = unavailable_state(problem, running, EARLY);
            record(state_file, &state);
            return Ok(Early {
                outcome: Outcome::NotRequested,
                state,
            });
        }
    };
    let env = esp.env();
    let first = env.status();
    let mut not_recorded = None;
    if ask && first.reset().is_none() && confirm() {
        if let Err(e) = request(&env, false) {
            let msg = format!(
                "factory reset confirmed at the boot menu but not recorded ({e}): nothing erased"
            );
            eprintln!("keel-reset: {msg}");
            not_recorded = Some(msg);
        }
    }
    let report = match carry_out(&env, data) {
        Ok(r) => r,
        Err(e) => {
            let mut state = boot_state(&first, &env.status(), false, running, EARLY);
            state.problem =
                join_problems([first.problem(), Some(format!("factory reset failed: {e}"))]);
            record(state_file, &state);
            return Err(e);
        }
    };
    let mut state = boot_state(&first, &env.status(), false, running, EARLY);
    state.problem = join_problems([first.problem(), not_recorded, report.not_cleared]);
    if let Some(p) = &state.problem {
        eprintln!("keel-reset: {p}");
    }
    record(state_file, &state);
    Ok(Early {
        outcome: report.outcome,
        state,
    })
}
