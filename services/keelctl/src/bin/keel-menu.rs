//! keel-menu: the local console menu on one terminal (`keel-menu@<tty>.service`), a
//! program of its own so that the two menus resident on every appliance link only
//! the local sockets' client (see src/lib.rs).
//!
//! Four options, read by hand: clap's parser, help and error machinery was a fifth
//! of this program's text, and every page of it that is touched stays resident.

use std::ffi::OsString;
use std::path::PathBuf;

use keel_core::local_api::Client;

const USAGE: &str = "\
The local console menu on a terminal: banner, addresses, admin password reset,
factory reset, reboot, shut down.

Usage: keel-menu --tty DEV [OPTIONS]

Options:
  --tty DEV                the terminal, e.g. /dev/ttyS0 or /dev/tty1
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
    tty: PathBuf,
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
    let (mut tty, mut console, mut netd, mut state) = (None, None, None, None);
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
            "--tty" => &mut tty,
            "--console-socket" => &mut console,
            "--netd-socket" => &mut netd,
            "--state-dir" => &mut state,
            _ => return Err(format!("unexpected argument {arg:?}")),
        };
        let value = match inline.or_else(|| args.next()) {
            Some(v) if !v.is_empty() => v,
            _ => return Err(format!("{name} needs a value")),
        };
        *slot = Some(PathBuf::from(value));
    }
    let from_env = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    Ok(Parsed::Run(Args {
        tty: tty.ok_or("--tty is required")?,
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
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(keelctl::menu::run(
            Client::new(&args.console_socket),
            Client::new(&args.netd_socket),
            &args.tty,
            args.state_dir.as_deref(),
        ))
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
                tty: "/dev/ttyS0".into(),
                console_socket: "/run/keel/console/api.sock".into(),
                netd_socket: "/run/keel/netd/api.sock".into(),
                state_dir: None,
            }
        );
        let env = [
            ("KEEL_CONSOLE_SOCKET", "/e/console.sock"),
            ("KEEL_NETD_SOCKET", "/e/netd.sock"),
            ("RUNTIME_DIRECTORY", "/run/keel/menu-ttyS0"),
        ];
        let Parsed::Run(a) = run(&["--netd-socket=/o/netd.sock", "--tty=/dev/tty1"], &env).unwrap()
        else {
            panic!("not a run");
        };
        assert_eq!(a.tty, PathBuf::from("/dev/tty1"));
        assert_eq!(a.console_socket, PathBuf::from("/e/console.sock"));
        assert_eq!(a.netd_socket, PathBuf::from("/o/netd.sock"));
        assert_eq!(a.state_dir, Some(PathBuf::from("/run/keel/menu-ttyS0")));
    }

    #[test]
    fn bad_input_is_refused_with_what_is_wrong() {
        assert_eq!(run(&[], &[]), Err("--tty is required".into()));
        assert_eq!(run(&["--tty"], &[]), Err("--tty needs a value".into()));
        assert_eq!(run(&["--tty="], &[]), Err("--tty needs a value".into()));
        assert_eq!(
            run(&["--tty", "/dev/tty1", "--colour"], &[]),
            Err("unexpected argument \"--colour\"".into())
        );
        assert_eq!(run(&["--tty", "x", "--help"], &[]), Ok(Parsed::Help));
        assert_eq!(run(&["-V"], &[]), Ok(Parsed::Version));
    }
}
