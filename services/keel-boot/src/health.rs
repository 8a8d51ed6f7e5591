//! The health gate of `keel-boot mark-good`: a slot is marked good only when the
//! appliance is healthy, i.e. every keel service is `active` and the console
//! accepts a TCP connection, within a deadline.
//!
//! * A unit that does not exist (`LoadState=not-found`, e.g. keel-update on an
//!   image without it) is skipped, and so is one ordered after the gate's own unit
//!   (`After=keel-boot-ok.service`, as keel-update is: it reads what the gate left
//!   and arms a trial only after it): it cannot start before the gate ends.
//! * A unit in `failed` (which is also where a restart loop ends once it is past
//!   its start limit: `Result=start-limit-hit`), or one that cannot be loaded
//!   (masked, bad setting), is unhealthy **at once**: no use waiting.
//! * Anything else not yet `active` (activating, auto-restart, inactive), or a
//!   console that refuses the connection, is waited for until the deadline; at the
//!   deadline what is still missing is the reason.
//!
//! The console's TLS is not checked: `active` for its `Type=notify` unit means it
//! sent READY after binding its listeners, and the TCP connect shows the port
//! answers; a handshake would pull rustls into keel-boot, which runs as root.

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The services that must be active, unless the flag says otherwise.
pub const DEFAULT_UNITS: &[&str] = &["keel-console", "keel-netd", "keel-timed", "keel-update"];
/// The console's HTTPS port, on loopback.
pub const DEFAULT_CONSOLE: &str = "127.0.0.1:443";
/// From the gate's start.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(90);
/// The gate's own unit: units ordered after it are not waited for.
pub const GATE_UNIT: &str = "keel-boot-ok.service";

/// What systemd says about one unit (`systemctl show`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitState {
    pub load: String,
    pub active: String,
    pub sub: String,
    pub result: String,
    /// The units it is ordered after (`After=`).
    pub after: Vec<String>,
}

impl UnitState {
    /// From `systemctl show -p LoadState,ActiveState,SubState,Result` lines.
    pub fn from_properties(props: &HashMap<String, String>) -> Self {
        let get = |k: &str| props.get(k).cloned().unwrap_or_default();
        Self {
            load: get("LoadState"),
            active: get("ActiveState"),
            sub: get("SubState"),
            result: get("Result"),
            after: get("After").split_whitespace().map(str::to_owned).collect(),
        }
    }

    /// `gate`: the gate's own unit (a unit ordered after it is not waited for).
    pub fn health(&self, gate: Option<&str>) -> UnitHealth {
        match self.load.as_str() {
            "not-found" => return UnitHealth::Skipped("no such unit".into()),
            _ if gate.is_some_and(|g| self.after.iter().any(|a| a == g)) => {
                return UnitHealth::Skipped(format!("ordered after {}", gate.unwrap_or("")))
            }
            "loaded" | "" => {}
            other => return UnitHealth::Failed(format!("not loadable ({other})")),
        }
        match self.active.as_str() {
            "active" => UnitHealth::Active,
            "failed" => UnitHealth::Failed(match self.result.as_str() {
                "" | "success" => "failed".into(),
                r => format!("failed ({r})"),
            }),
            a if self.sub.is_empty() || self.sub == a => UnitHealth::Waiting(a.into()),
            a => UnitHealth::Waiting(format!("{a} ({})", self.sub)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnitHealth {
    Active,
    /// Not checked: no such unit, or it waits for the gate.
    Skipped(String),
    /// Not active yet; the text says what it is.
    Waiting(String),
    /// Unhealthy at once.
    Failed(String),
}

/// systemd, as the gate needs it (injectable for tests).
pub trait Systemd {
    /// The state of each unit, in the order given.
    fn units(&self, units: &[String]) -> Result<Vec<UnitState>, String>;
    /// Asks for a reboot and returns (it does not wait for it).
    fn reboot(&self) -> Result<(), String>;
}

/// `systemctl` (or a stand-in with the same command line).
pub struct Systemctl {
    pub program: PathBuf,
}

/// `foo` → `foo.service`; names with a suffix stay.
pub fn unit_name(u: &str) -> String {
    if u.contains('.') {
        u.to_string()
    } else {
        format!("{u}.service")
    }
}

/// Parses `systemctl show` output for several units: blocks of `Key=value` lines
/// separated by empty lines, one block per unit, in order.
pub fn parse_show(out: &str) -> Vec<HashMap<String, String>> {
    let mut blocks = Vec::new();
    let mut cur = HashMap::new();
    for line in out.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                blocks.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            cur.insert(k.to_string(), v.to_string());
        }
    }
    if !cur.is_empty() {
        blocks.push(cur);
    }
    blocks
}

impl Systemd for Systemctl {
    fn units(&self, units: &[String]) -> Result<Vec<UnitState>, String> {
        let name = self.program.display();
        let out = Command::new(&self.program)
            .arg("show")
            .arg("--property=Id,LoadState,ActiveState,SubState,Result,After")
            .arg("--")
            .args(units.iter().map(|u| unit_name(u)))
            .output()
            .map_err(|e| format!("{name}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{name} show: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let blocks = parse_show(&String::from_utf8_lossy(&out.stdout));
        if blocks.len() != units.len() {
            return Err(format!(
                "{name} show: {} units asked, {} answered",
                units.len(),
                blocks.len()
            ));
        }
        Ok(blocks.iter().map(UnitState::from_properties).collect())
    }

    fn reboot(&self) -> Result<(), String> {
        let name = self.program.display();
        let status = Command::new(&self.program)
            .args(["--no-block", "reboot"])
            .status()
            .map_err(|e| format!("{name}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{name} --no-block reboot: {status}"))
        }
    }
}

#[derive(Clone, Debug)]
pub struct GateConfig {
    pub units: Vec<String>,
    pub console: SocketAddr,
    pub deadline: Duration,
    /// Between two looks.
    pub interval: Duration,
    /// For one TCP connect.
    pub connect_timeout: Duration,
    /// The gate's own unit ([`GATE_UNIT`]); `None`: wait for every unit.
    pub gate_unit: Option<String>,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            units: DEFAULT_UNITS.iter().map(|u| u.to_string()).collect(),
            console: DEFAULT_CONSOLE.parse().expect("a socket address"),
            deadline: DEFAULT_DEADLINE,
            interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            gate_unit: Some(GATE_UNIT.into()),
        }
    }
}

/// One look at the appliance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Everything there is active and the console answers; the units skipped
    /// ("unit: why").
    Healthy { skipped: Vec<String> },
    /// Not (yet) healthy: what is missing.
    NotYet(String),
    /// Unhealthy at once (a failed unit): why.
    Failed(String),
}

/// Looks once: the units' states, then the console's port.
pub fn probe(sd: &dyn Systemd, cfg: &GateConfig) -> Probe {
    let mut failed = Vec::new();
    let mut waiting = Vec::new();
    let mut skipped = Vec::new();
    match sd.units(&cfg.units) {
        Ok(states) => {
            for (u, st) in cfg.units.iter().zip(&states) {
                match st.health(cfg.gate_unit.as_deref()) {
                    UnitHealth::Active => {}
                    UnitHealth::Skipped(why) => skipped.push(format!("{u}: {why}")),
                    UnitHealth::Waiting(w) => waiting.push(format!("{u} {w}")),
                    UnitHealth::Failed(f) => failed.push(format!("{u} {f}")),
                }
            }
        }
        Err(e) => waiting.push(format!("unit states unknown ({e})")),
    }
    if !failed.is_empty() {
        return Probe::Failed(failed.join(", "));
    }
    if let Err(e) = TcpStream::connect_timeout(&cfg.console, cfg.connect_timeout) {
        waiting.push(format!("console {} not answering ({e})", cfg.console));
    }
    if waiting.is_empty() {
        Probe::Healthy { skipped }
    } else {
        Probe::NotYet(waiting.join(", "))
    }
}

/// The gate's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Healthy {
        after: Duration,
        skipped: Vec<String>,
    },
    Unhealthy {
        after: Duration,
        reason: String,
    },
}

impl Verdict {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Verdict::Healthy { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Healthy { after, skipped } => {
                write!(f, "healthy after {:.1} s", after.as_secs_f64())?;
                if !skipped.is_empty() {
                    write!(f, " (not checked: {})", skipped.join("; "))?;
                }
                Ok(())
            }
            Verdict::Unhealthy { after, reason } => {
                write!(f, "{reason} (after {:.1} s)", after.as_secs_f64())
            }
        }
    }
}

/// Looks every `interval` until healthy, a unit failed, or the deadline (counted
/// from now) passed; at the deadline the last look's shortcomings are the reason,
/// with "not healthy within N s" in front.
pub fn wait_healthy(sd: &dyn Systemd, cfg: &GateConfig) -> Verdict {
    let start = Instant::now();
    loop {
        let p = probe(sd, cfg);
        let after = start.elapsed();
        match p {
            Probe::Healthy { skipped } => return Verdict::Healthy { after, skipped },
            Probe::Failed(reason) => return Verdict::Unhealthy { after, reason },
            Probe::NotYet(missing) => {
                if after >= cfg.deadline {
                    return Verdict::Unhealthy {
                        after,
                        reason: format!(
                            "not healthy within {} s: {missing}",
                            fmt_secs(cfg.deadline)
                        ),
                    };
                }
                std::thread::sleep(cfg.interval.min(cfg.deadline - after));
            }
        }
    }
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.1}")
    }
}

/// The problem to record when the gate says unhealthy, and whether to reboot:
/// only a trial of the running slot reboots (GRUB counted this boot already, so
/// the tries run out and the good slot boots); on any other boot a reboot would
/// just loop on the same slot.
pub fn unhealthy_outcome(
    running: crate::Slot,
    trial: Option<(crate::Slot, u8)>,
    reason: &str,
) -> (String, bool) {
    match trial {
        Some((slot, left)) if slot == running => {
            let next = match left {
                0 => format!("no boots left: slot {} boots next", running.other()),
                1 => "1 boot left".to_string(),
                n => format!("{n} boots left"),
            };
            (
                format!("trial of slot {running} unhealthy: {reason}; rebooting, {next}"),
                true,
            )
        }
        _ => (
            format!("slot {running} unhealthy: {reason}; not marked good, no reboot (not a trial)"),
            false,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Slot;
    use std::cell::RefCell;
    use std::net::TcpListener;

    fn st(load: &str, active: &str, sub: &str, result: &str) -> UnitState {
        UnitState {
            load: load.into(),
            active: active.into(),
            sub: sub.into(),
            result: result.into(),
            after: Vec::new(),
        }
    }

    #[test]
    fn unit_states() {
        let h = |s: UnitState| s.health(Some(GATE_UNIT));
        assert_eq!(
            h(st("loaded", "active", "running", "success")),
            UnitHealth::Active
        );
        assert_eq!(
            h(st("not-found", "inactive", "dead", "success")),
            UnitHealth::Skipped("no such unit".into())
        );
        let mut waits_for_gate = st("loaded", "inactive", "dead", "success");
        waits_for_gate.after = vec!["basic.target".into(), GATE_UNIT.into()];
        assert_eq!(
            h(waits_for_gate.clone()),
            UnitHealth::Skipped("ordered after keel-boot-ok.service".into())
        );
        assert_eq!(
            waits_for_gate.health(None),
            UnitHealth::Waiting("inactive (dead)".into())
        );
        assert_eq!(
            h(st("loaded", "failed", "failed", "exit-code")),
            UnitHealth::Failed("failed (exit-code)".into())
        );
        assert_eq!(
            h(st("loaded", "failed", "failed", "start-limit-hit")),
            UnitHealth::Failed("failed (start-limit-hit)".into())
        );
        assert_eq!(
            h(st("masked", "inactive", "dead", "success")),
            UnitHealth::Failed("not loadable (masked)".into())
        );
        assert_eq!(
            h(st("loaded", "activating", "auto-restart", "exit-code")),
            UnitHealth::Waiting("activating (auto-restart)".into())
        );
        assert_eq!(
            h(st("loaded", "activating", "start", "success")),
            UnitHealth::Waiting("activating (start)".into())
        );
    }

    #[test]
    fn show_output_parses_per_unit() {
        let out = "Id=keel-console.service\nLoadState=loaded\nActiveState=active\nSubState=running\nResult=success\n\n\
                   Result=success\nAfter=a.service keel-boot-ok.service\nId=keel-update.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\n";
        let b = parse_show(out);
        assert_eq!(b.len(), 2);
        assert_eq!(
            UnitState::from_properties(&b[0]).health(None),
            UnitHealth::Active
        );
        assert_eq!(
            UnitState::from_properties(&b[1]).health(None),
            UnitHealth::Skipped("no such unit".into())
        );
        assert_eq!(
            UnitState::from_properties(&b[1]).after,
            ["a.service", "keel-boot-ok.service"]
        );
        assert_eq!(unit_name("keel-console"), "keel-console.service");
        assert_eq!(unit_name("foo.socket"), "foo.socket");
    }

    /// Plays back unit states: each look takes the next row (the last one stays).
    struct Script {
        rows: RefCell<Vec<Vec<UnitState>>>,
        looks: RefCell<usize>,
        reboots: RefCell<usize>,
    }

    impl Script {
        fn new(rows: Vec<Vec<UnitState>>) -> Self {
            Self {
                rows: RefCell::new(rows),
                looks: RefCell::new(0),
                reboots: RefCell::new(0),
            }
        }
    }

    impl Systemd for Script {
        fn units(&self, units: &[String]) -> Result<Vec<UnitState>, String> {
            *self.looks.borrow_mut() += 1;
            let mut rows = self.rows.borrow_mut();
            let row = if rows.len() > 1 {
                rows.remove(0)
            } else {
                rows[0].clone()
            };
            assert_eq!(row.len(), units.len());
            Ok(row)
        }
        fn reboot(&self) -> Result<(), String> {
            *self.reboots.borrow_mut() += 1;
            Ok(())
        }
    }

    fn active() -> UnitState {
        st("loaded", "active", "running", "success")
    }

    fn cfg(console: SocketAddr, deadline_ms: u64) -> GateConfig {
        GateConfig {
            units: vec![
                "keel-console".into(),
                "keel-netd".into(),
                "keel-update".into(),
            ],
            console,
            deadline: Duration::from_millis(deadline_ms),
            interval: Duration::from_millis(20),
            connect_timeout: Duration::from_millis(200),
            gate_unit: Some(GATE_UNIT.into()),
        }
    }

    /// A loopback port nothing listens on.
    fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn healthy_once_every_unit_is_active_and_the_console_answers() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let absent = st("not-found", "inactive", "dead", "success");
        let sd = Script::new(vec![
            vec![
                st("loaded", "activating", "start", "success"),
                active(),
                absent.clone(),
            ],
            vec![
                active(),
                st("loaded", "activating", "auto-restart", "exit-code"),
                absent.clone(),
            ],
            vec![active(), active(), absent],
        ]);
        match wait_healthy(&sd, &cfg(l.local_addr().unwrap(), 5000)) {
            Verdict::Healthy { skipped, .. } => {
                assert_eq!(skipped, ["keel-update: no such unit"])
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(*sd.looks.borrow(), 3);
        assert_eq!(*sd.reboots.borrow(), 0);
    }

    #[test]
    fn a_failed_unit_is_unhealthy_at_once() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let sd = Script::new(vec![vec![
            st("loaded", "failed", "failed", "start-limit-hit"),
            active(),
            active(),
        ]]);
        let v = wait_healthy(&sd, &cfg(l.local_addr().unwrap(), 60_000));
        match v {
            Verdict::Unhealthy { after, reason } => {
                assert_eq!(reason, "keel-console failed (start-limit-hit)");
                assert!(after < Duration::from_secs(1), "{after:?}");
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(*sd.looks.borrow(), 1);
    }

    #[test]
    fn a_console_that_does_not_answer_is_unhealthy_at_the_deadline() {
        let sd = Script::new(vec![vec![active(), active(), active()]]);
        let t = Instant::now();
        let v = wait_healthy(&sd, &cfg(closed_port(), 300));
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        match v {
            Verdict::Unhealthy { reason, .. } => {
                assert!(
                    reason.starts_with("not healthy within 0.3 s: console 127.0.0.1:"),
                    "{reason}"
                );
                assert!(reason.contains("not answering"), "{reason}");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_unit_still_restarting_at_the_deadline_is_named() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let sd = Script::new(vec![vec![
            active(),
            st("loaded", "activating", "auto-restart", "exit-code"),
            active(),
        ]]);
        match wait_healthy(&sd, &cfg(l.local_addr().unwrap(), 200)) {
            Verdict::Unhealthy { reason, .. } => assert_eq!(
                reason,
                "not healthy within 0.2 s: keel-netd activating (auto-restart)"
            ),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn only_a_trial_of_the_running_slot_reboots() {
        let r = "keel-console failed";
        assert_eq!(
            unhealthy_outcome(Slot::B, Some((Slot::B, 1)), r),
            (
                "trial of slot b unhealthy: keel-console failed; rebooting, 1 boot left".into(),
                true
            )
        );
        assert_eq!(
            unhealthy_outcome(Slot::B, Some((Slot::B, 2)), r).0,
            "trial of slot b unhealthy: keel-console failed; rebooting, 2 boots left"
        );
        assert_eq!(
            unhealthy_outcome(Slot::B, Some((Slot::B, 0)), r).0,
            "trial of slot b unhealthy: keel-console failed; rebooting, no boots left: slot a \
             boots next"
        );
        // GRUB fell back to the good slot while a trial of the other is armed.
        let (p, reboot) = unhealthy_outcome(Slot::A, Some((Slot::B, 2)), r);
        assert!(!reboot);
        assert_eq!(
            p,
            "slot a unhealthy: keel-console failed; not marked good, no reboot (not a trial)"
        );
        assert!(!unhealthy_outcome(Slot::A, None, r).1);
    }
}
