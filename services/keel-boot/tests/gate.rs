//! The binary's health gate: `keel-boot mark-good` with a stand-in systemctl (a
//! shell script reading unit states from files) and the console on a loopback
//! port of this test.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use keel_boot::{serialize, BootEnv, BootState, EnvCopy, Slot, Vars};

const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
# Stand-in for systemctl: unit states from $dir/units/<unit>, calls logged.
dir=$(dirname "$0")
echo "$*" >>"$dir/calls"
if [ "$1" = --no-block ] && [ "$2" = reboot ]; then
  echo reboot >>"$dir/rebooted"
  exit 0
fi
[ "$1" = show ] || exit 3
shift
first=1
for u in "$@"; do
  case $u in -*) continue ;; esac
  [ $first = 1 ] || echo
  first=0
  echo "Id=$u"
  if [ -f "$dir/units/$u" ]; then
    cat "$dir/units/$u"
  else
    printf 'LoadState=not-found\nActiveState=inactive\nSubState=dead\nResult=success\n'
  fi
done
"#;

struct Appliance {
    dir: tempfile::TempDir,
}

impl Appliance {
    fn new(slot: &str, vars: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("esp/grub")).unwrap();
        std::fs::create_dir_all(p.join("sd/units")).unwrap();
        let v: Vars = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let b = serialize(&v).unwrap();
        let env = BootEnv::new(p.join("esp"));
        std::fs::write(env.path(EnvCopy::Primary), &b).unwrap();
        std::fs::write(env.path(EnvCopy::Backup), &b).unwrap();
        std::fs::write(
            p.join("cmdline"),
            format!("root=PARTLABEL=root-{slot} keel.slot={slot} quiet\n"),
        )
        .unwrap();
        let sc = p.join("sd/systemctl");
        std::fs::write(&sc, FAKE_SYSTEMCTL).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sc, std::fs::Permissions::from_mode(0o755)).unwrap();
        let b = Self { dir };
        for u in ["keel-console", "keel-netd", "keel-timed"] {
            b.unit(u, "active", "running", "success");
        }
        b
    }

    fn p(&self) -> &Path {
        self.dir.path()
    }

    fn unit(&self, u: &str, active: &str, sub: &str, result: &str) {
        let f = self.p().join(format!("sd/units/{u}.service"));
        let tmp = f.with_extension("tmp");
        std::fs::write(
            &tmp,
            format!("LoadState=loaded\nActiveState={active}\nSubState={sub}\nResult={result}\n"),
        )
        .unwrap();
        std::fs::rename(tmp, f).unwrap();
    }

    fn env(&self) -> BootEnv {
        BootEnv::new(self.p().join("esp"))
    }

    fn state_file(&self) -> PathBuf {
        self.p().join("run/keel/boot/state.json")
    }

    fn state(&self) -> BootState {
        serde_json::from_slice(&std::fs::read(self.state_file()).unwrap()).unwrap()
    }

    fn rebooted(&self) -> bool {
        self.p().join("sd/rebooted").exists()
    }

    fn mark_good(&self, console: SocketAddr, deadline: &str) -> Output {
        Command::new(env!("CARGO_BIN_EXE_keel-boot"))
            .arg("--esp-dir")
            .arg(self.p().join("esp"))
            .arg("--state-file")
            .arg(self.state_file())
            .arg("--cmdline")
            .arg(self.p().join("cmdline"))
            .arg("mark-good")
            .arg("--systemctl")
            .arg(self.p().join("sd/systemctl"))
            .arg("--console")
            .arg(console.to_string())
            .args(["--deadline", deadline, "--interval-ms", "50"])
            .output()
            .unwrap()
    }
}

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// A loopback port nothing listens on.
fn closed_port() -> SocketAddr {
    listener().local_addr().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_healthy_trial_is_marked_good_and_a_missing_unit_skipped() {
    // GRUB counted the trial down to 1 before booting slot b.
    let b = Appliance::new("b", &[("keel_try", "b"), ("keel_tries", "1")]);
    let l = listener();
    let out = b.mark_good(l.local_addr().unwrap(), "30");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("not checked: keel-update: no such unit"),
        "{}",
        text(&out)
    );
    let st = b.env().status();
    assert_eq!(
        (st.good(), st.trial(), st.previous_good()),
        (Slot::B, None, Some(Slot::A))
    );
    let s = b.state();
    assert_eq!((s.problem, s.good_slot.as_str()), (None, "b"));
    assert!(!b.rebooted());
    // One systemctl call per look, for the default units.
    let calls = std::fs::read_to_string(b.p().join("sd/calls")).unwrap();
    assert!(
        calls.starts_with(
            "show --property=Id,LoadState,ActiveState,SubState,Result,After -- keel-console.service \
             keel-netd.service keel-timed.service keel-update.service"
        ),
        "{calls}"
    );
}

#[test]
fn a_failed_console_on_a_trial_reboots_at_once_and_says_why() {
    let b = Appliance::new(
        "b",
        &[("keel_good", "a"), ("keel_try", "b"), ("keel_tries", "1")],
    );
    b.unit("keel-console", "failed", "failed", "exit-code");
    let l = listener();
    let t = Instant::now();
    let out = b.mark_good(l.local_addr().unwrap(), "60");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "waited for the deadline"
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(b.rebooted());
    let s = b.state();
    assert_eq!(
        s.problem.as_deref(),
        Some("trial of slot b unhealthy: keel-console failed (exit-code); rebooting, 1 boot left")
    );
    // Nothing written: GRUB's count-down runs the trial out.
    let st = b.env().status();
    assert_eq!((st.good(), st.trial()), (Slot::A, Some((Slot::B, 1))));
}

#[test]
fn a_restart_loop_past_its_start_limit_ends_the_last_try() {
    let b = Appliance::new(
        "b",
        &[("keel_good", "a"), ("keel_try", "b"), ("keel_tries", "0")],
    );
    b.unit("keel-netd", "activating", "auto-restart", "exit-code");
    let dir = b.p().to_path_buf();
    let flip = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let f = dir.join("sd/units/keel-netd.service");
        std::fs::write(
            f.with_extension("tmp"),
            "LoadState=loaded\nActiveState=failed\nSubState=failed\nResult=start-limit-hit\n",
        )
        .unwrap();
        std::fs::rename(f.with_extension("tmp"), f).unwrap();
    });
    let l = listener();
    let out = b.mark_good(l.local_addr().unwrap(), "60");
    flip.join().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(b.rebooted());
    assert_eq!(
        b.state().problem.as_deref(),
        Some(
            "trial of slot b unhealthy: keel-netd failed (start-limit-hit); rebooting, no boots \
             left: slot a boots next"
        )
    );
}

#[test]
fn a_silent_console_on_a_normal_boot_is_recorded_without_reboot() {
    let b = Appliance::new("a", &[("keel_good", "a")]);
    let t = Instant::now();
    let out = b.mark_good(closed_port(), "1");
    assert!(t.elapsed() >= Duration::from_secs(1));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!b.rebooted(), "a good slot never reboots itself");
    let p = b.state().problem.unwrap();
    assert!(
        p.starts_with("slot a unhealthy: not healthy within 1 s: console 127.0.0.1:")
            && p.contains("not answering")
            && p.ends_with("not marked good, no reboot (not a trial)"),
        "{p}"
    );
    assert_eq!(b.env().status().good(), Slot::A);
}

#[test]
fn a_trial_that_fell_back_to_the_good_slot_does_not_reboot() {
    // Slot b's kernel would not load: GRUB fell back to a, the trial still armed.
    let b = Appliance::new(
        "a",
        &[("keel_good", "a"), ("keel_try", "b"), ("keel_tries", "2")],
    );
    b.unit("keel-timed", "failed", "failed", "signal");
    let out = b.mark_good(listener().local_addr().unwrap(), "30");
    assert!(!out.status.success());
    assert!(!b.rebooted());
    assert!(b
        .state()
        .problem
        .unwrap()
        .starts_with("slot a unhealthy: keel-timed failed (signal)"));
    assert_eq!(b.env().status().trial(), Some((Slot::B, 2)));
}

#[test]
fn services_that_come_up_during_the_wait_pass_the_gate() {
    let b = Appliance::new("a", &[]);
    b.unit("keel-console", "activating", "start", "success");
    b.unit("keel-update", "activating", "start", "success");
    let dir = b.p().to_path_buf();
    let port = closed_port();
    // The console stays up until the gate has answered (not for a fixed time: on a
    // busy host the gate may look later).
    let (gate_done, gate_answered) = std::sync::mpsc::channel::<()>();
    let up = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        // The console listens, then tells systemd it is ready.
        let l = TcpListener::bind(port).unwrap();
        for u in ["keel-console", "keel-update"] {
            let f = dir.join(format!("sd/units/{u}.service"));
            std::fs::write(
                f.with_extension("tmp"),
                "LoadState=loaded\nActiveState=active\nSubState=running\nResult=success\n",
            )
            .unwrap();
            std::fs::rename(f.with_extension("tmp"), f).unwrap();
        }
        let _ = gate_answered.recv_timeout(Duration::from_secs(60));
        drop(l);
    });
    let out = b.mark_good(port, "20");
    let _ = gate_done.send(());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("healthy after"), "{}", text(&out));
    assert_eq!(b.state().problem, None);
    up.join().unwrap();
}

#[test]
fn a_problem_recorded_earlier_in_the_boot_stays_in_front() {
    let b = Appliance::new("a", &[]);
    std::fs::create_dir_all(b.state_file().parent().unwrap()).unwrap();
    let earlier = BootState {
        problem: Some("boot environment: backup copy unreadable (x)".into()),
        ..BootState::default()
    };
    std::fs::write(b.state_file(), serde_json::to_vec(&earlier).unwrap()).unwrap();
    b.unit("keel-console", "failed", "failed", "exit-code");
    let out = b.mark_good(listener().local_addr().unwrap(), "30");
    assert!(!out.status.success());
    let p = b.state().problem.unwrap();
    assert!(
        p.starts_with(
            "boot environment: backup copy unreadable (x); slot a unhealthy: keel-console failed"
        ),
        "{p}"
    );
}

#[test]
fn a_unit_ordered_after_the_gate_is_not_waited_for() {
    // keel-update starts after keel-boot-ok.service (it reads what the gate left).
    let b = Appliance::new("b", &[("keel_try", "b"), ("keel_tries", "2")]);
    std::fs::write(
        b.p().join("sd/units/keel-update.service"),
        "LoadState=loaded\nActiveState=inactive\nSubState=dead\nResult=success\n\
         After=keel-boot-ok.service keel-timed.service basic.target\n",
    )
    .unwrap();
    let out = b.mark_good(listener().local_addr().unwrap(), "30");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("keel-update: ordered after keel-boot-ok.service"),
        "{}",
        text(&out)
    );
    assert_eq!(b.env().status().good(), Slot::B);
}
