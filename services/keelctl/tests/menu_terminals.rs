//! keel-menu serving two terminals from one process, as `keel-menu.service` runs it
//! on tty1 and the serial line: each terminal has a menu of its own, and a terminal
//! whose input ends gets its menu again while the other's goes on untouched.
//! Two pseudo-terminals stand in for tty1 and ttyS0; no console or netd runs (the
//! menu works without them).

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Daemon;

/// What a terminal showed, read off its master side by a thread of its own.
struct Terminal {
    master: File,
    /// Kept open so that the master side never sees a hangup while the menu
    /// reopens its end.
    _slave: File,
    path: String,
    output: mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl Terminal {
    fn open() -> Terminal {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let path = nix::unistd::ttyname(&pty.slave)
            .expect("ttyname")
            .display()
            .to_string();
        let master = File::from(pty.master);
        let mut reader = master.try_clone().unwrap();
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Terminal {
            master,
            _slave: File::from(pty.slave),
            path,
            output,
            seen: String::new(),
        }
    }

    /// Waits until the terminal has shown `text` `times` times in all.
    fn wait_for(&mut self, text: &str, times: usize, menu: &Daemon) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.seen.matches(text).count() < times {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{} did not show {text:?} {times} times; it showed:\n{}\nkeel-menu's log:\n{}",
                self.path,
                self.seen,
                menu.log()
            );
            if let Ok(bytes) = self
                .output
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                self.seen.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }

    fn type_in(&mut self, keys: &[u8]) {
        self.master.write_all(keys).unwrap();
    }
}

#[test]
fn one_process_serves_two_terminals_and_restarts_each_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, mut second) = (Terminal::open(), Terminal::open());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel-menu"));
    cmd.args(["--tty", &first.path, "--tty", &second.path])
        .arg("--console-socket")
        .arg(dir.path().join("no-console.sock"))
        .arg("--netd-socket")
        .arg(dir.path().join("no-netd.sock"))
        .arg("--state-dir")
        .arg(dir.path());
    let menu = Daemon::spawn(cmd, dir.path().join("log"));
    let header = |t: &Terminal| format!("local menu on {}", t.path.trim_start_matches("/dev/"));

    let (h1, h2) = (header(&first), header(&second));
    first.wait_for(&h1, 1, &menu);
    second.wait_for(&h2, 1, &menu);
    assert!(!first.seen.contains(&h2), "{}", first.seen);

    second.type_in(b"9\n");
    second.wait_for("unknown choice \"9\"", 1, &menu);
    assert!(!first.seen.contains("unknown choice"), "{}", first.seen);

    // End of input on the first terminal (Ctrl-D on an empty line): its menu ends
    // and starts again; the second terminal's dialog is not interrupted.
    first.type_in(b"\x04");
    first.wait_for(&h1, 2, &menu);
    assert!(
        menu.log().contains("starting the menu again"),
        "{}",
        menu.log()
    );
    second.type_in(b"8\n");
    second.wait_for("unknown choice \"8\"", 1, &menu);
    // A terminal shows its output in order: a start again would have shown the
    // header before the answer to "8" was read. The header after that answer is a
    // write of its own and may or may not be here yet, so only what came before
    // the answer is counted.
    let answered = second.seen.find("unknown choice \"8\"").unwrap();
    assert_eq!(
        second.seen[..answered].matches(&h2).count(),
        2,
        "the second terminal's menu was shown at its start and after the first \
         answer, never started again:\n{}",
        second.seen
    );
    first.type_in(b"7\n");
    first.wait_for("unknown choice \"7\"", 1, &menu);
}
