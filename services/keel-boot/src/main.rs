//! keel-boot: GRUB's boot state from the command line. `status` shows it,
//! `mark-good` (keel-boot-ok.service) waits until the appliance is healthy, then
//! makes the running slot the good one, ends a trial and repairs a damaged copy;
//! an unhealthy trial reboots (GRUB falls back once its tries are used up).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use keel_boot::health::{self, GateConfig, Systemctl, Systemd, Verdict};
use keel_boot::{boot_state, record_state, unavailable_state, BootState, Esp, Slot};

#[derive(Parser)]
#[command(
    version,
    about = "Keel boot state: A/B slots, trial, reset request (GRUB environment)"
)]
struct Cli {
    /// A directory laid out like the ESP (grub/grubenv, grub/grubenv.bak) instead of
    /// mounting the ESP (tests).
    #[arg(long, global = true)]
    esp_dir: Option<PathBuf>,
    /// The state file for the console; "none" to write none.
    #[arg(long, global = true, default_value = keel_boot::STATE_FILE)]
    state_file: PathBuf,
    /// Where the running slot is read from (`keel.slot=`).
    #[arg(long, global = true, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the boot state (which copy was read, good slot, trial, reset).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Once the appliance is healthy (every unit active, the console answering,
    /// within the deadline): make the running slot the good slot, end a trial,
    /// repair a damaged copy. Writes the ESP only when that changes anything.
    /// Unhealthy: a trial of the running slot reboots; any other boot records the
    /// problem and exits non-zero.
    MarkGood(Gate),
}

#[derive(Args)]
struct Gate {
    /// Units that must be active (comma-separated; `.service` implied); units
    /// that do not exist are skipped.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "keel-console,keel-netd,keel-timed,keel-update"
    )]
    units: Vec<String>,
    /// The console's address: a TCP connect must succeed.
    #[arg(long, default_value = health::DEFAULT_CONSOLE)]
    console: SocketAddr,
    /// Seconds from the gate's start until the appliance must be healthy.
    #[arg(long, default_value_t = 90.0)]
    deadline: f64,
    /// The gate's own unit: a unit ordered after it cannot start before the gate
    /// ends, so it is not waited for.
    #[arg(long, default_value = health::GATE_UNIT)]
    gate_unit: String,
    /// The systemctl to ask (`show`, `--no-block reboot`).
    #[arg(long, default_value = "systemctl")]
    systemctl: PathBuf,
    /// Milliseconds between two looks.
    #[arg(long, default_value_t = 1000, hide = true)]
    interval_ms: u64,
}

fn record(cli: &Cli, state: &BootState) {
    if cli.state_file.as_os_str() == "none" {
        return;
    }
    if let Err(e) = record_state(&cli.state_file, state.clone()) {
        eprintln!("keel-boot: state file: {e}");
    }
}

fn print_state(s: &BootState, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(s).unwrap_or_else(|e| e.to_string())
        );
        return;
    }
    let source = serde_json::to_value(s.source).unwrap_or_default();
    println!("source:    {}", source.as_str().unwrap_or("?"));
    println!("good slot: {}", s.good_slot);
    if let Some(r) = &s.running_slot {
        println!("running:   {r}");
    }
    match &s.trial {
        Some(t) => println!("trial:     slot {} ({} tries left)", t.slot, t.tries_left),
        None => println!("trial:     none"),
    }
    if let Some(p) = &s.previous_good_slot {
        println!("previous:  {p} (rollback target)");
    }
    if s.reset_requested {
        println!("reset:     factory reset pending for the next boot");
    }
    if let Some(p) = &s.problem {
        println!(
            "PROBLEM:   {p}{}",
            if s.repaired { " (repaired)" } else { "" }
        );
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let cmdline = std::fs::read_to_string(&cli.cmdline).unwrap_or_default();
    let running = Slot::from_cmdline(&cmdline);
    let by = match cli.command {
        Command::Status { .. } => "keel-boot status",
        Command::MarkGood(_) => "keel-boot mark-good",
    };
    // The health gate runs before the ESP is touched (it may wait a while).
    let gate = match (&cli.command, running) {
        (Command::MarkGood(g), Some(slot)) => {
            if !(g.deadline.is_finite() && g.deadline >= 0.0) {
                return Err(format!(
                    "--deadline {}: not a number of seconds",
                    g.deadline
                ));
            }
            let sd = Systemctl {
                program: g.systemctl.clone(),
            };
            let cfg = GateConfig {
                units: g.units.clone(),
                console: g.console,
                deadline: Duration::from_secs_f64(g.deadline),
                interval: Duration::from_millis(g.interval_ms.max(1)),
                gate_unit: Some(g.gate_unit.clone()),
                ..GateConfig::default()
            };
            println!(
                "slot {slot}: waiting up to {} s for {} active and the console on {}",
                g.deadline,
                cfg.units.join(", "),
                cfg.console
            );
            let verdict = health::wait_healthy(&sd, &cfg);
            println!("slot {slot}: {verdict}");
            Some((sd, verdict))
        }
        _ => None,
    };
    let esp = match Esp::open(cli.esp_dir.as_deref()) {
        Ok(esp) => esp,
        Err(e) => {
            let mut problem = format!("ESP unavailable ({e}): boot state not read");
            if let (Some((_, Verdict::Unhealthy { reason, .. })), Some(slot)) = (&gate, running) {
                // Not knowing whether this is a trial, never reboot (no loop).
                problem = format!("{problem}; slot {slot} unhealthy: {reason}; no reboot");
            }
            record(cli, &unavailable_state(problem.clone(), running, by));
            return Err(problem);
        }
    };
    let env = esp.env();
    match cli.command {
        Command::Status { json } => {
            let st = env.status();
            let state = boot_state(&st, &st, false, running, by);
            record(cli, &state);
            print_state(&state, json);
            Ok(())
        }
        Command::MarkGood(_) => {
            let (Some(slot), Some((sd, verdict))) = (running, gate) else {
                let st = env.status();
                record(cli, &boot_state(&st, &st, false, None, by));
                println!("no keel.slot= on the kernel command line: nothing to mark");
                return Ok(());
            };
            if let Verdict::Unhealthy { reason, .. } = verdict {
                return unhealthy(cli, &env.status(), slot, &reason, &sd, by);
            }
            match env.mark_good(slot) {
                Ok(change) => {
                    let now = env.status();
                    record(
                        cli,
                        &boot_state(&change.before, &now, change.repaired, running, by),
                    );
                    if let Some(p) = change.before.problem() {
                        eprintln!("keel-boot: {p}");
                    }
                    if change.wrote() {
                        println!(
                            "slot {slot} marked good (was: good={} try={}){}",
                            change.before.good(),
                            change
                                .before
                                .trial()
                                .map(|(s, _)| s.as_str())
                                .unwrap_or("none"),
                            if change.repaired {
                                "; damaged copy rewritten"
                            } else {
                                ""
                            }
                        );
                    }
                    Ok(())
                }
                Err(e) => {
                    let st = env.status();
                    let mut state = boot_state(&st, &st, false, running, by);
                    let msg = format!("marking slot {slot} good failed: {e}");
                    state.problem = Some(match state.problem {
                        Some(p) => format!("{p}; {msg}"),
                        None => msg.clone(),
                    });
                    record(cli, &state);
                    Err(msg)
                }
            }
        }
    }
}

/// The gate said unhealthy: record why; reboot only a trial of the running slot.
fn unhealthy(
    cli: &Cli,
    st: &keel_boot::Status,
    slot: Slot,
    reason: &str,
    sd: &dyn Systemd,
    by: &str,
) -> Result<(), String> {
    let (mut msg, reboot) = health::unhealthy_outcome(slot, st.trial(), reason);
    let mut state = boot_state(st, st, false, Some(slot), by);
    let reboot_failed = if reboot { sd.reboot().err() } else { None };
    if let Some(e) = &reboot_failed {
        msg = format!("{msg}; reboot failed: {e}");
    }
    state.problem = Some(match state.problem.take() {
        Some(p) => format!("{p}; {msg}"),
        None => msg.clone(),
    });
    record(cli, &state);
    Err(msg)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-boot: {e}");
            ExitCode::FAILURE
        }
    }
}
