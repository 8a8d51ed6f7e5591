//! keel-reset: request a factory reset, confirm one from the boot menu, or carry it
//! out early at boot (see the library docs for the sequence).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand};
use keel_boot::Esp;
use keel_reset::Outcome;

#[derive(Parser)]
#[command(version, about = "Keel factory reset")]
struct Cli {
    /// A directory laid out like the ESP (grub/grubenv, grub/grubenv.bak) instead of
    /// mounting the ESP (tests).
    #[arg(long, global = true)]
    esp_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask for a reset at the next boot (the caller then reboots).
    Request {
        /// Power off after the reset instead of starting the appliance (to ship it).
        #[arg(long)]
        poweroff: bool,
    },
    /// Early boot: confirm a boot-menu request, then carry out any pending reset.
    Early {
        #[arg(long, default_value = "/dev/disk/by-partlabel/data")]
        data: PathBuf,
        #[arg(long, default_value = "/proc/cmdline")]
        cmdline: PathBuf,
        /// Terminals where a boot-menu reset asks for confirmation.
        #[arg(long = "tty", default_values = ["/dev/tty1", "/dev/ttyS0"])]
        ttys: Vec<PathBuf>,
        /// How long the confirmation waits before booting normally.
        #[arg(long, default_value_t = 120)]
        confirm_timeout: u64,
        /// Where the boot state is recorded for the console; "none" for nowhere.
        #[arg(long, default_value = keel_boot::STATE_FILE)]
        state_file: PathBuf,
    },
}

/// A boot-menu reset (`keel.reset=ask` on the kernel command line) needs a typed
/// confirmation on a local terminal: a stray kernel argument alone never erases.
fn confirm_on_terminals(ttys: &[PathBuf], timeout: Duration) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    for tty in ttys {
        let Ok(mut out) = keel_core::tty::open(tty) else {
            continue;
        };
        let _ = write!(
            out,
            "\r\n*** FACTORY RESET requested from the boot menu ***\r\n\
             All configuration, passwords, certificates and keys on this appliance\r\n\
             will be erased. Installed software stays.\r\n\
             Type RESET and press Enter to erase, or just Enter to boot normally: "
        );
        let Ok(input) = out.try_clone() else {
            continue;
        };
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(input).read_line(&mut line);
            let _ = tx.send(line.trim().to_owned());
        });
    }
    drop(tx);
    let confirmed = matches!(rx.recv_timeout(timeout), Ok(answer) if answer == "RESET");
    let note = if confirmed {
        "\r\nErasing ...\r\n"
    } else {
        "\r\nNot confirmed: booting normally.\r\n"
    };
    for tty in ttys {
        if let Ok(mut out) = keel_core::tty::open(tty) {
            let _ = out.write_all(note.as_bytes());
        }
    }
    confirmed
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Request { poweroff } => {
            let esp = Esp::open(cli.esp_dir.as_deref())?;
            keel_reset::request(&esp.env(), poweroff)?;
            println!("factory reset requested; it is carried out at the next boot");
        }
        Command::Early {
            data,
            cmdline,
            ttys,
            confirm_timeout,
            state_file,
        } => {
            let cmdline = std::fs::read_to_string(&cmdline).unwrap_or_default();
            let done = keel_reset::early(
                Esp::open(cli.esp_dir.as_deref()),
                &data,
                &cmdline,
                &|| confirm_on_terminals(&ttys, Duration::from_secs(confirm_timeout)),
                &state_file,
            )?;
            if done.outcome == (Outcome::Reset { power_off: true }) {
                let status = std::process::Command::new("systemctl")
                    .args(["poweroff", "--no-block"])
                    .status()?;
                if !status.success() {
                    bail!("power-off after reset failed");
                }
            }
        }
    }
    Ok(())
}
