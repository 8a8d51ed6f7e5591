//! The planner: which feed entries fit the installed versions, and the chain of
//! bundles, in install order, that reaches a target (intermediate versions of the
//! same component where `installs_over` demands them, other components' versions
//! where requirements demand them). Each step is checked with the same
//! [`check_fits`] the update service applies to the real bundle.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use crate::feed::FeedEntry;
use crate::policy::{check_fits, check_not_downgrade, Installed, Rollback};
use crate::version::{ranges_text, Version};
use crate::Error;

/// Upper bound on recursive install attempts: a feed is signed, but a silly one
/// should make planning fail, not hang.
const MAX_WORK: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status<'a> {
    /// Installable now, over what is installed.
    Fits,
    /// Exactly this version is installed.
    Installed,
    /// Older than the installed version.
    Older { installed: Version },
    /// Installable after `steps` (in order); `reason` says so in words, e.g.
    /// "needs base 0.3.0 first".
    NeedsFirst {
        steps: Vec<&'a FeedEntry>,
        reason: String,
    },
    /// No chain of feed entries leads to it.
    Blocked { reason: String },
}

impl fmt::Display for Status<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Fits => f.write_str("installable"),
            Status::Installed => f.write_str("installed"),
            Status::Older { installed } => write!(f, "older than the installed {installed}"),
            Status::NeedsFirst { reason, .. } | Status::Blocked { reason } => f.write_str(reason),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment<'a> {
    pub entry: &'a FeedEntry,
    pub status: Status<'a>,
}

struct Planner<'a> {
    entries: &'a [FeedEntry],
    work: Cell<usize>,
}

impl<'a> Planner<'a> {
    fn new(entries: &'a [FeedEntry]) -> Self {
        Planner {
            entries,
            work: Cell::new(0),
        }
    }

    /// Entries of `component`, ascending by version, one per version (the first
    /// listed wins if a feed lists a version twice).
    fn of(&self, component: &str) -> Vec<usize> {
        let mut by_version = BTreeMap::new();
        for (i, e) in self.entries.iter().enumerate() {
            if e.component() == component {
                by_version.entry(e.version).or_insert(i);
            }
        }
        by_version.into_values().collect()
    }

    /// Shortest chain of `target`'s component from `current` to `target`, each
    /// step installable over the one before (breadth first, lower versions tried
    /// first, so the result is deterministic).
    fn path(&self, current: Option<Version>, target: usize) -> Result<Vec<usize>, String> {
        let t = &self.entries[target];
        let comp = t.component();
        let Some(current) = current else {
            return Ok(vec![target]); // first install: installs_over does not apply
        };
        check_not_downgrade(comp, Some(current), t.version, Rollback::Refuse)
            .map_err(|e| e.to_string())?;
        let nodes: Vec<usize> = self
            .of(comp)
            .into_iter()
            .filter(|&i| self.entries[i].version > current && self.entries[i].version <= t.version)
            .map(|i| {
                if self.entries[i].version == t.version {
                    target
                } else {
                    i
                }
            })
            .collect();
        let accepts = |j: usize, from: Version| {
            let e = &self.entries[j];
            e.version > from
                && (e.installs_over.is_empty() || e.installs_over.iter().any(|r| r.contains(&from)))
        };
        let mut prev: BTreeMap<usize, Option<usize>> = BTreeMap::new();
        let mut queue: VecDeque<(Option<usize>, Version)> = VecDeque::from([(None, current)]);
        while let Some((at, version)) = queue.pop_front() {
            for &j in &nodes {
                if prev.contains_key(&j) || !accepts(j, version) {
                    continue;
                }
                prev.insert(j, at);
                if j == target {
                    let mut chain = vec![target];
                    let mut cur = at;
                    while let Some(p) = cur {
                        chain.push(p);
                        cur = prev.get(&p).copied().flatten();
                    }
                    chain.reverse();
                    return Ok(chain);
                }
                queue.push_back((Some(j), self.entries[j].version));
            }
        }
        Err(format!(
            "no chain of bundles leads from {comp} {current} to {} (it installs over {})",
            t.version,
            ranges_text(&t.installs_over)
        ))
    }

    /// Plans `target` on top of `state`: appends the steps to `out` and applies
    /// them to `state`. On error both may hold a partial plan; callers pass clones.
    fn install(
        &self,
        state: &mut Installed,
        target: usize,
        out: &mut Vec<usize>,
        depth: usize,
    ) -> Result<(), String> {
        self.work.set(self.work.get() + 1);
        if self.work.get() > MAX_WORK || depth > self.entries.len() + 1 {
            return Err("requirements too deep or cyclic".into());
        }
        let comp = self.entries[target].component();
        for step in self.path(state.get(comp), target)? {
            let e = &self.entries[step];
            for r in &e.requires {
                if state.get(&r.component).is_some_and(|v| r.holds(&v)) {
                    continue;
                }
                let have = state.get(&r.component);
                let candidates: Vec<usize> = self
                    .of(&r.component)
                    .into_iter()
                    .filter(|&i| {
                        let v = self.entries[i].version;
                        r.holds(&v) && have.is_none_or(|h| v > h)
                    })
                    .collect();
                if candidates.is_empty() {
                    return Err(format!("needs {r}, which no bundle in the feed provides"));
                }
                let mut last_err = String::new();
                let mut done = false;
                for c in candidates {
                    let (mut s, mut o) = (state.clone(), Vec::new());
                    match self.install(&mut s, c, &mut o, depth + 1) {
                        Ok(()) => {
                            *state = s;
                            out.extend(o);
                            done = true;
                            break;
                        }
                        Err(e) => last_err = e,
                    }
                }
                if !done {
                    return Err(format!("needs {r}, but {last_err}"));
                }
            }
            // Prerequisites may have moved things; check the step as it would run.
            check_fits(comp, e.version, &e.requires, &e.installs_over, state)
                .map_err(|e| e.to_string())?;
            state.set(comp, e.version);
            out.push(step);
        }
        Ok(())
    }

    fn refs(&self, steps: &[usize]) -> Vec<&'a FeedEntry> {
        steps.iter().map(|&i| &self.entries[i]).collect()
    }
}

/// "needs base 0.3.0 first": the last version each component reaches before
/// the target.
fn needs_text(steps: &[&FeedEntry]) -> String {
    let mut order: Vec<&str> = Vec::new();
    let mut last: BTreeMap<&str, Version> = BTreeMap::new();
    for s in steps {
        if !order.contains(&s.component()) {
            order.push(s.component());
        }
        last.insert(s.component(), s.version);
    }
    let parts: Vec<String> = order
        .iter()
        .filter_map(|c| last.get(c).map(|v| format!("{c} {v}")))
        .collect();
    format!("needs {} first", parts.join(" and "))
}

/// Every entry with what stands between it and installation.
pub fn assess<'a>(installed: &Installed, entries: &'a [FeedEntry]) -> Vec<Assessment<'a>> {
    let planner = Planner::new(entries);
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let comp = e.component();
            let status = match installed.get(comp) {
                Some(v) if v == e.version => Status::Installed,
                Some(v) if v > e.version => Status::Older { installed: v },
                _ if check_fits(comp, e.version, &e.requires, &e.installs_over, installed)
                    .is_ok() =>
                {
                    Status::Fits
                }
                _ => {
                    planner.work.set(0);
                    let (mut state, mut out) = (installed.clone(), Vec::new());
                    match planner.install(&mut state, i, &mut out, 0) {
                        Ok(()) => {
                            let steps = planner.refs(&out[..out.len().saturating_sub(1)]);
                            let reason = needs_text(&steps);
                            Status::NeedsFirst { steps, reason }
                        }
                        Err(reason) => Status::Blocked { reason },
                    }
                }
            };
            Assessment { entry: e, status }
        })
        .collect()
}

/// The bundles to install, in order, to reach `component` `version` (the target
/// last).
pub fn plan_to<'a>(
    installed: &Installed,
    entries: &'a [FeedEntry],
    component: &str,
    version: Version,
) -> Result<Vec<&'a FeedEntry>, Error> {
    let planner = Planner::new(entries);
    let target = planner
        .of(component)
        .into_iter()
        .find(|&i| entries[i].version == version)
        .ok_or_else(|| Error::NoPlan(format!("the feed has no {component} {version}")))?;
    let (mut state, mut out) = (installed.clone(), Vec::new());
    planner
        .install(&mut state, target, &mut out, 0)
        .map_err(|r| Error::NoPlan(format!("{component} {version}: {r}")))?;
    Ok(planner.refs(&out))
}

/// Brings every installed component (base first, then apps by name) and each of
/// `add` (apps to install) to the newest version a chain reaches. Installed
/// components with no reachable update are left as they are (see [`assess`]
/// for why); an `add` that cannot be installed is an error.
pub fn plan_latest<'a>(
    installed: &Installed,
    entries: &'a [FeedEntry],
    add: &[&str],
) -> Result<Vec<&'a FeedEntry>, Error> {
    let planner = Planner::new(entries);
    let mut components: Vec<String> = vec!["base".into()];
    for (c, _) in installed.iter() {
        if !components.iter().any(|x| x == c) {
            components.push(c.into());
        }
    }
    for c in add {
        if !components.iter().any(|x| x == c) {
            components.push((*c).into());
        }
    }
    let (mut state, mut out) = (installed.clone(), Vec::new());
    for comp in &components {
        let mut candidates = planner.of(comp);
        candidates.retain(|&i| state.get(comp).is_none_or(|v| entries[i].version > v));
        let mut last_err = None;
        let mut reached = false;
        for &c in candidates.iter().rev() {
            planner.work.set(0);
            let (mut s, mut o) = (state.clone(), Vec::new());
            match planner.install(&mut s, c, &mut o, 0) {
                Ok(()) => {
                    state = s;
                    out.extend(o);
                    reached = true;
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let wanted = add.contains(&comp.as_str()) && installed.get(comp).is_none();
        if wanted && !reached {
            return Err(Error::NoPlan(match last_err {
                Some(e) => format!("{comp}: {e}"),
                None => format!("the feed has no {comp}"),
            }));
        }
    }
    Ok(planner.refs(&out))
}
