//! Whether a verified bundle may be installed here and now. Kept apart from the
//! parser: verification says who made the bundle, policy says whether it fits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::{check_component, Manifest};
use crate::timestamp::Timestamp;
use crate::version::{ranges_text, Requirement, Version, VersionRange};
use crate::{Error, DEFAULT_SKEW};

/// Installed components and their versions (`base` plus one entry per app).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Installed(BTreeMap<String, Version>);

impl Installed {
    pub fn new() -> Self {
        Installed::default()
    }

    /// Builder: `Installed::new().with("base", v)`.
    pub fn with(mut self, component: &str, version: Version) -> Self {
        self.set(component, version);
        self
    }

    pub fn set(&mut self, component: &str, version: Version) {
        self.0.insert(component.to_string(), version);
    }

    pub fn get(&self, component: &str) -> Option<Version> {
        self.0.get(component).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, Version)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn validate(&self) -> Result<(), Error> {
        self.0.keys().try_for_each(|c| check_component(c))
    }

    fn describe(&self, component: &str) -> String {
        match self.get(component) {
            Some(v) => format!("{component} {v}"),
            None => format!("no {component}"),
        }
    }
}

impl std::fmt::Display for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.iter().map(|(c, v)| format!("{c} {v}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// Whether an older version may replace a newer one. Bundle installs always
/// refuse; the "roll back to the previous slot" path (which uses no bundle)
/// is the only caller meant to pass `Allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollback {
    Refuse,
    Allow,
}

/// Replay (same version) and downgrade (older version) checks.
pub fn check_not_downgrade(
    component: &str,
    installed: Option<Version>,
    candidate: Version,
    rollback: Rollback,
) -> Result<(), Error> {
    let Some(installed) = installed else {
        return Ok(());
    };
    if rollback == Rollback::Allow && candidate != installed {
        return Ok(());
    }
    if candidate == installed {
        Err(Error::Replay {
            component: component.into(),
            version: candidate,
        })
    } else if candidate < installed {
        Err(Error::Downgrade {
            component: component.into(),
            bundle: candidate,
            installed,
        })
    } else {
        Ok(())
    }
}

/// The signature's validity period against `now`, allowing `skew` for a
/// `created` slightly ahead of the local clock.
pub fn check_validity(
    created: Timestamp,
    expires: Timestamp,
    now: Timestamp,
    skew: time::Duration,
) -> Result<(), Error> {
    if now >= expires {
        return Err(Error::Expired { expires, now });
    }
    if created > now.plus(skew) {
        return Err(Error::CreatedInFuture { created, now });
    }
    Ok(())
}

/// Version checks shared by [`check_installable`] and the planner: not a replay
/// or downgrade, installable over the installed version, requirements met.
pub fn check_fits(
    component: &str,
    version: Version,
    requires: &[Requirement],
    installs_over: &[VersionRange],
    installed: &Installed,
) -> Result<(), Error> {
    let current = installed.get(component);
    check_not_downgrade(component, current, version, Rollback::Refuse)?;
    if let Some(current) = current {
        if !installs_over.is_empty() && !installs_over.iter().any(|r| r.contains(&current)) {
            return Err(Error::NotInstallableOver {
                component: component.into(),
                bundle: version,
                installed: current,
                ranges: ranges_text(installs_over),
            });
        }
    }
    for r in requires {
        if !installed.get(&r.component).is_some_and(|v| r.holds(&v)) {
            return Err(Error::Unmet {
                requirement: r.clone(),
                installed: installed.describe(&r.component),
            });
        }
    }
    Ok(())
}

/// May this (verified) bundle be installed now over `installed` into a slot of
/// `max_payload` bytes? Checks, in order: validity period, slot size, replay and
/// downgrade, `installs_over`, requirements.
pub fn check_installable(
    manifest: &Manifest,
    installed: &Installed,
    now: Timestamp,
    max_payload: u64,
) -> Result<(), Error> {
    check_validity(manifest.created, manifest.expires, now, DEFAULT_SKEW)?;
    if manifest.payload_size > max_payload {
        return Err(Error::PayloadTooLarge {
            size: manifest.payload_size,
            max: max_payload,
        });
    }
    check_fits(
        manifest.component(),
        manifest.version,
        &manifest.requires,
        &manifest.installs_over,
        installed,
    )
}
