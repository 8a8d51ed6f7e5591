//! The ESP (`/dev/disk/by-partlabel/esp`, vfat) is in no fstab: whoever reads or
//! writes GRUB's environment mounts it at `/boot/efi` for that moment only,
//! read-only, and remounts it writable just before a write. An ordinary boot that
//! changes nothing never has the ESP writable, so a power cut cannot hurt it.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount, MsFlags};

use crate::BootEnv;

pub const ESP_DEVICE: &str = "/dev/disk/by-partlabel/esp";
pub const ESP_MOUNT: &str = "/boot/efi";

#[derive(Debug, thiserror::Error)]
#[error("mounting {ESP_DEVICE} on {ESP_MOUNT}: {0}")]
pub struct EspError(#[source] pub nix::Error);

fn flags() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

/// The ESP's directory; mounted for as long as this lives when [`Esp::mount`] made it.
pub struct Esp {
    dir: PathBuf,
    mounted: bool,
}

impl Esp {
    /// Mounts the ESP read-only on `/boot/efi`.
    pub fn mount() -> Result<Self, EspError> {
        mount(
            Some(ESP_DEVICE),
            ESP_MOUNT,
            Some("vfat"),
            flags() | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(EspError)?;
        Ok(Self {
            dir: PathBuf::from(ESP_MOUNT),
            mounted: true,
        })
    }

    /// A directory laid out like the ESP (tests, `--esp-dir`): nothing is mounted.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            mounted: false,
        }
    }

    /// `Some(dir)`: that directory; `None`: the real ESP, mounted.
    pub fn open(dir: Option<&Path>) -> Result<Self, EspError> {
        match dir {
            Some(d) => Ok(Self::at(d)),
            None => Self::mount(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// GRUB's environment on this ESP; a write first remounts a mounted ESP writable.
    pub fn env(&self) -> BootEnv {
        let env = BootEnv::new(&self.dir);
        if !self.mounted {
            return env;
        }
        env.before_write(Box::new(|| {
            mount(
                None::<&str>,
                ESP_MOUNT,
                None::<&str>,
                MsFlags::MS_REMOUNT | flags(),
                None::<&str>,
            )
            .map_err(|e| format!("remounting {ESP_MOUNT} writable: {e}"))
        }))
    }
}

impl Drop for Esp {
    fn drop(&mut self) {
        if self.mounted {
            let _ = umount(ESP_MOUNT);
        }
    }
}
