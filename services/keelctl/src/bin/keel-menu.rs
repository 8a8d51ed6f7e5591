//! keel-menu: the local console menu (`keel-menu.service`), a program of its own so
//! that the menu resident on every appliance links only the local sockets' client
//! (see src/lib.rs). One process serves every terminal it is given (tty1 and the
//! serial line): a second process would map the binary, libc and a heap again for
//! the same code (~3 MiB of resident memory).
//!
//! Four options, read by hand: clap's parser, help and error machinery was a fifth
//! of this program's text, and every page of it that is touched stays resident.

use std::ffi::OsString;
use std::path::PathBuf;

use keel_core::local_api::Client;

const USAGE: &str = "\
The local console menu on a terminal: banner, addresses, admin password reset,
factory reset, reboot, shut down.

Usage: keel-menu --tty DEV [--tty DEV]... [OPTIONS]

Options:
  --tty DEV                a terminal, e.g. /dev/ttyS0 or /dev/tty1; repeated for
                           more (each has a menu of its own)
  --console-socket PATH    the console's local API socket
                           [env: KEEL_CONSOLE_SOCKET] [default: /run/keel/console/api.sock]
  --netd-socket PATH       keel-netd's local API socket (for \"Set an address\")
                           [env: KEEL_NETD_SOCKET] [default: /run/keel/netd/api.sock]
  --state-dir DIR          kept across restarts of the menu: notes that KEEL-READY
                           was printed this boot [env: RUNTIME_DIRECTORY]
  -h, --help               this text
  -V, --version            the version
";

#[derive(Debug, PartialEq)]
struct Args {
    ttys: Vec<PathBuf>,
    console_socket: PathBuf,
    netd_socket: PathBuf,
    state_dir: Option<PathBuf>,
}

#[derive(Debug, PartialEq)]
enum Parsed {
    Run(Args),
    Help,
    Version,
}

/// The options in `args` (without the program name); an option missing there is
/// read from `env`, then the default.
fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Parsed, String> {
    let (mut ttys, mut console, mut netd, mut state) = (Vec::new(), None, None, None);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(OsString::from(v))),
            _ => (text.into_owned(), None),
        };
        let slot = match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "--tty" => None,
            "--console-socket" => Some(&mut console),
            "--netd-socket" => Some(&mut netd),
            "--state-dir" => Some(&mut state),
            _ => return Err(format!("unexpected argument {arg:?}")),
        };
        let value = match inline.or_else(|| args.next()) {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => return Err(format!("{name} needs a value")),
        };
        match slot {
            Some(slot) => *slot = Some(value),
            None if ttys.contains(&value) => {
                return Err(format!("--tty {} is given twice", value.display()))
            }
            None => ttys.push(value),
        }
    }
    if ttys.is_empty() {
        return Err("--tty is required".into());
    }
    let from_env = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    Ok(Parsed::Run(Args {
        ttys,
        console_socket: console
            .or_else(|| from_env("KEEL_CONSOLE_SOCKET"))
            .unwrap_or_else(|| "/run/keel/console/api.sock".into()),
        netd_socket: netd
            .or_else(|| from_env("KEEL_NETD_SOCKET"))
            .unwrap_or_else(|| "/run/keel/netd/api.sock".into()),
        state_dir: state.or_else(|| from_env("RUNTIME_DIRECTORY")),
    }))
}

fn main() -> anyhow::Result<()> {
    let args = match parse(std::env::args_os().skip(1), |n| std::env::var_os(n)) {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return Ok(());
        }
        Ok(Parsed::Version) => {
            println!("keel-menu {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Err(e) => {
            eprint!("keel-menu: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut menus = tokio::task::JoinSet::new();
        for tty in args.ttys {
            let console = Client::new(&args.console_socket);
            let netd = Client::new(&args.netd_socket);
            let state_dir = args.state_dir.clone();
            menus.spawn(keelctl::menu::serve(console, netd, tty, state_dir));
        }
        // Each terminal's menu starts again by itself when it ends; one that
        // panics ends the process, and systemd starts it again.
        match menus.join_next().await {
            Some(Err(e)) => Err(anyhow::anyhow!("a terminal's menu failed: {e}")),
            _ => Err(anyhow::anyhow!("a terminal's menu stopped")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Parsed, String> {
        let env: Vec<(String, OsString)> =
            env.iter().map(|(k, v)| (k.to_string(), v.into())).collect();
        parse(args.iter().map(OsString::from), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn options_then_environment_then_defaults() {
        let Parsed::Run(a) = run(&["--tty", "/dev/ttyS0"], &[]).unwrap() else {
            panic!("not a run");
        };
        assert_eq!(
            a,
            Args {
                ttys: vec!["/dev/ttyS0".into()],
                console_socket: "/run/keel/console/api.sock".into(),
                netd_socket: "/run/keel/netd/api.sock".into(),
                state_dir: None,
            }
        );
        let env = [
            ("KEEL_CONSOLE_SOCKET", "/e/console.sock"),
            ("KEEL_NETD_SOCKET", "/e/netd.sock"),
            ("RUNTIME_DIRECTORY", "/run/keel/menu"),
        ];
        let args = [
            "--netd-socket=/o/netd.sock",
            "--tty=/dev/tty1",
            "--tty",
            "/dev/ttyS0",
        ];
        let Parsed::Run(a) = run(&args, &env).unwrap() else {
            panic!("not a run");
        };
        assert_eq!(a.ttys, [PathBuf::from("/dev/tty1"), "/dev/ttyS0".into()]);
        assert_eq!(a.console_socket, PathBuf::from("/e/console.sock"));
        assert_eq!(a.netd_socket, PathBuf::from("/o/netd.sock"));
        assert_eq!(a.state_dir, Some(PathBuf::from("/run/keel/menu")));
    }

    #[test]
    fn bad_input_is_refused_with_what_is_wrong() {
        assert_eq!(run(&[], &[]), Err("--tty is required".into()));
        assert_eq!(run(&["--tty"], &[]), Err("--tty needs a value".into()));
        assert_eq!(
            run(&["--tty", "/dev/tty1", "--tty=/dev/tty1"], &[]),
            Err("--tty /dev/tty1 is given twice".into())
        );
        assert_eq!(run(&["--tty="], &[]), Err("--tty needs a value".into()));
        assert_eq!(
            run(&["--tty", "/dev/tty1", "--colour"], &[]),
            Err("unexpected argument \"--colour\"".into())
        );
        assert_eq!(run(&["--tty", "x", "--help"], &[]), Ok(Parsed::Help));
        assert_eq!(run(&["-V"], &[]), Ok(Parsed::Version));
    }
}
