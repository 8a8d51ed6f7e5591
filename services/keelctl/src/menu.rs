//! `keel-menu --tty DEV` (or `keelctl menu`, which runs it): the local console menu
//! on tty1 and the serial line (`keel-menu@<tty>.service`, as root).
//!
//! Physical access is the authority, so there is no password; instead every action
//! is chosen by its number and then confirmed with a typed word (`yes`, `RESET` for
//! a factory reset). The menu also prints the banner (console URLs, the setup code
//! before setup, `KEEL-READY` on a serial line) whenever it changes.
//!
//! The dialog (`Menu`) is generic over its input, output and `Actions`, so tests
//! feed it lines and fake the appliance; `run` wires it to the terminal and the
//! services' local sockets.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, Context};
use keel_api::{
    AddressMode, Banner, InterfaceConfig, NetChangeRequest, NetConfig, NetConfirmRequest,
    NetPending, NetState, Status,
};
use keel_core::local_api::{Client, LocalApiError};

/// Changes made here are confirmed here, at once: netd checks the owner.
const NET_OWNER: &str = "local-menu";
/// Longer lines are cut: nothing typed here needs more.
const MAX_LINE: usize = 1024;
/// What the terminal keeps to repeat after the banner watcher's news.
const MAX_SHOWN: usize = 4096;
const READY_MARKER: &str = "KEEL-READY\r\n";
const BANNER_POLL: Duration = Duration::from_secs(2);

/// Why an action did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionError {
    /// The service's socket does not answer (still starting, restarting).
    NotAnswering(&'static str),
    /// The service or command said no; its message, verbatim.
    Refused(String),
}

impl fmt::Display for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionError::NotAnswering(service) => write!(f, "{service} not answering yet"),
            ActionError::Refused(message) => f.write_str(message),
        }
    }
}

type Outcome<T> = Result<T, ActionError>;

/// What the menu can do to the appliance (faked in tests).
pub trait Actions {
    fn banner(&mut self) -> Outcome<Banner>;
    fn status(&mut self) -> Outcome<Status>;
    fn net_state(&mut self) -> Outcome<NetState>;
    /// Proposes `config` to keel-netd and confirms it at once.
    fn set_network(&mut self, config: NetConfig) -> Outcome<()>;
    /// Removes the admin password, ends every session, makes a new setup code.
    fn reset_admin_password(&mut self) -> Outcome<()>;
    fn factory_reset(&mut self, power_off: bool) -> Outcome<()>;
    fn reboot(&mut self) -> Outcome<()>;
    fn shutdown(&mut self) -> Outcome<()>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Show,
    SetAddress,
    ResetPassword,
    FactoryReset,
    Reboot,
    Shutdown,
}

const ITEMS: [(Item, &str); 6] = [
    (Item::Show, "Show addresses and console URL"),
    (Item::SetAddress, "Set an address"),
    (Item::ResetPassword, "Reset the admin password"),
    (Item::FactoryReset, "Factory reset"),
    (Item::Reboot, "Reboot"),
    (Item::Shutdown, "Shut down"),
];

fn parse_choice(text: &str) -> Option<Item> {
    let n: usize = text.parse().ok()?;
    ITEMS.get(n.checked_sub(1)?).map(|(item, _)| *item)
}

fn render_menu(tty: &str) -> String {
    let mut out = format!(
        "\nKeel {} local menu on {tty}: type a number and press Enter.\n",
        keel_core::release::running_version()
    );
    for (n, (_, label)) in ITEMS.iter().enumerate() {
        out.push_str(&format!("  {}  {label}\n", n + 1));
    }
    out
}

/// Terminals want `\r\n`; text here is written with `\n` (or already `\r\n`).
fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// The input the terminal gives: lines ending in `\r` (serial terminals), `\n`, or
/// `\r\n`, counted once.
pub struct LineReader<R> {
    inner: R,
    after_cr: bool,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            after_cr: false,
        }
    }

    /// The next line without its ending; `None` at end of input (hangup, EOF).
    pub fn next_line(&mut self) -> std::io::Result<Option<String>> {
        let mut line: Vec<u8> = Vec::new();
        loop {
            let buf = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                return Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into()));
            }
            let mut used = 0;
            let mut done = false;
            for &b in buf {
                used += 1;
                match b {
                    // The second half of a `\r\n`.
                    b'\n' if self.after_cr && line.is_empty() => self.after_cr = false,
                    b'\r' | b'\n' => {
                        self.after_cr = b == b'\r';
                        done = true;
                        break;
                    }
                    // A terminal in raw mode sends its erase key through.
                    0x08 | 0x7f => {
                        self.after_cr = false;
                        line.pop();
                    }
                    b if b < 0x20 => self.after_cr = false,
                    b => {
                        self.after_cr = false;
                        if line.len() < MAX_LINE {
                            line.push(b);
                        }
                    }
                }
            }
            self.inner.consume(used);
            if done {
                return Ok(Some(String::from_utf8_lossy(&line).into()));
            }
        }
    }
}

/// The dialog on one terminal.
pub struct Menu<A, R, W> {
    actions: A,
    input: LineReader<R>,
    out: W,
    tty: String,
}

/// How a dialog step ended early (the person said no, or the input was unusable):
/// the message is shown and nothing changes.
struct Stop(String);

impl<A: Actions, R: BufRead, W: Write> Menu<A, R, W> {
    pub fn new(actions: A, input: R, out: W, tty: &str) -> Self {
        Self {
            actions,
            input: LineReader::new(input),
            out,
            tty: tty.to_owned(),
        }
    }

    fn say(&mut self, text: &str) -> anyhow::Result<()> {
        self.out
            .write_all(crlf(text).as_bytes())
            .and_then(|_| self.out.flush())
            .context("writing to the terminal")
    }

    /// Prints `prompt` and reads the answer, trimmed. The end of input ends the
    /// menu (an error, so that systemd starts it again).
    fn ask(&mut self, prompt: &str) -> anyhow::Result<String> {
        self.say(prompt)?;
        match self.input.next_line().context("reading the terminal")? {
            Some(line) => Ok(line.trim().to_owned()),
            None => Err(anyhow!("the terminal closed (end of input)")),
        }
    }

    fn confirmed(&mut self, prompt: &str, word: &str) -> anyhow::Result<bool> {
        let answer = self.ask(prompt)?;
        // `yes` in any case; `RESET` exactly as shown.
        Ok(if word == "yes" {
            answer.eq_ignore_ascii_case(word)
        } else {
            answer == word
        })
    }

    fn say_menu(&mut self) -> anyhow::Result<()> {
        let menu = render_menu(&self.tty);
        self.say(&menu)
    }

    /// Runs until the terminal ends; returns only with that error.
    pub fn run(&mut self) -> anyhow::Result<()> {
        self.say_menu()?;
        loop {
            let answer = self.ask(&format!("Choice [1-{}]: ", ITEMS.len()))?;
            if answer.is_empty() {
                self.say_menu()?;
                continue;
            }
            let Some(item) = parse_choice(&answer) else {
                self.say(&format!(
                    "unknown choice {answer:?}: type a number from 1 to {}\n",
                    ITEMS.len()
                ))?;
                self.say_menu()?;
                continue;
            };
            let done = match item {
                Item::Show => self.show().map(|_| Ok(())),
                Item::SetAddress => self.set_address(),
                Item::ResetPassword => self.reset_password(),
                Item::FactoryReset => self.factory_reset(),
                Item::Reboot => {
                    self.power("Type yes to restart the appliance: ", "restarting", |a| {
                        a.reboot()
                    })
                }
                Item::Shutdown => self.power(
                    "Type yes to power the appliance off: ",
                    "powering off",
                    |a| a.shutdown(),
                ),
            }?;
            if let Err(Stop(message)) = done {
                self.say(&format!("{message}\n"))?;
            }
            self.say_menu()?;
        }
    }

    fn show(&mut self) -> anyhow::Result<()> {
        let console = self.actions.banner().and_then(|b| {
            let s = self.actions.status()?;
            Ok((b, s))
        });
        let net = self.actions.net_state();
        let mut text = String::new();
        match &console {
            Ok((banner, status)) => {
                text.push_str(&crate::local::render_banner(banner));
                text.push_str(&render_status(status));
            }
            Err(e) => text.push_str(&format!("\n{e}\n")),
        }
        match &net {
            Ok(state) => text.push_str(&render_net(state, console.is_err())),
            Err(e) => text.push_str(&format!("network service: {e}\n")),
        }
        self.say(&text)
    }

    fn reset_password(&mut self) -> anyhow::Result<Result<(), Stop>> {
        self.say(
            "\nReset the admin password: the web console's password is removed and every \
             session ends.\nThen set a new one in the browser with the new setup code shown \
             here.\n",
        )?;
        if !self.confirmed("Type yes to reset the admin password: ", "yes")? {
            return Ok(Err(Stop("cancelled; nothing changed".into())));
        }
        if let Err(e) = self.actions.reset_admin_password() {
            return Ok(Err(Stop(format!("{e}; nothing changed"))));
        }
        self.say("admin password removed; every session ended\n")?;
        match self.actions.banner() {
            Ok(b) => self.say(&crate::local::render_banner(&b))?,
            Err(e) => self.say(&format!("{e}; the new setup code follows here\n"))?,
        }
        Ok(Ok(()))
    }

    fn factory_reset(&mut self) -> anyhow::Result<Result<(), Stop>> {
        self.say(
            "\nFactory reset: erases all configuration, passwords, certificates and keys,\n\
             then starts over as a new appliance. There is no undo.\n",
        )?;
        if !self.confirmed("Type RESET to erase everything: ", "RESET")? {
            return Ok(Err(Stop("cancelled; nothing changed".into())));
        }
        let answer = self.ask("Power off afterwards? [y/N]: ")?;
        let power_off = match answer.to_ascii_lowercase().as_str() {
            "" | "n" | "no" => false,
            "y" | "yes" => true,
            _ => {
                return Ok(Err(Stop(format!(
                    "{answer:?} is neither y nor n; nothing changed"
                ))))
            }
        };
        if let Err(e) = self.actions.factory_reset(power_off) {
            return Ok(Err(Stop(format!("factory reset not requested: {e}"))));
        }
        self.say(if power_off {
            "factory reset requested; restarting to carry it out, then powering off\n"
        } else {
            "factory reset requested; restarting to carry it out\n"
        })?;
        Ok(Ok(()))
    }

    fn power(
        &mut self,
        prompt: &str,
        doing: &str,
        act: impl FnOnce(&mut A) -> Outcome<()>,
    ) -> anyhow::Result<Result<(), Stop>> {
        if !self.confirmed(prompt, "yes")? {
            return Ok(Err(Stop("cancelled".into())));
        }
        match act(&mut self.actions) {
            Ok(()) => {
                self.say(&format!("{doing}\n"))?;
                Ok(Ok(()))
            }
            Err(e) => Ok(Err(Stop(format!("not done: {e}")))),
        }
    }

    fn set_address(&mut self) -> anyhow::Result<Result<(), Stop>> {
        let state = match self.actions.net_state() {
            Ok(s) => s,
            Err(e) => return Ok(Err(Stop(format!("network service: {e}; nothing changed")))),
        };
        if let Some(p) = &state.pending {
            return Ok(Err(Stop(format!(
                "a change made through {} is waiting for confirmation ({} s left); confirm \
                 or cancel it there first",
                p.owner, p.seconds_left
            ))));
        }
        let mut links: Vec<_> = state.links.iter().filter(|l| l.name != "lo").collect();
        links.sort_by_key(|l| l.index);
        let default = links
            .iter()
            .find(|l| l.wired)
            .map(|l| l.name.clone())
            .or_else(|| state.running.interfaces.first().map(|i| i.name.clone()));
        let mut text = String::from("\nInterfaces:\n");
        for l in &links {
            let line = format!(
                "  {} ({}{}) {}",
                l.name,
                if l.wired { "wired, " } else { "" },
                if l.up { "up" } else { "down" },
                l.addresses.join(" ")
            );
            text.push_str(line.trim_end());
            text.push('\n');
        }
        self.say(&text)?;

        let name = match &default {
            Some(d) => self.ask(&format!("Interface [{d}]: "))?,
            None => self.ask("Interface: ")?,
        };
        let name = match (name.is_empty(), default) {
            (true, Some(d)) => d,
            (true, None) => return Ok(Err(Stop("no interface given; nothing changed".into()))),
            (false, _) => name,
        };
        if !links.iter().any(|l| l.name == name) {
            let known: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
            return Ok(Err(Stop(format!(
                "no interface {name:?} (the appliance has: {}); nothing changed",
                known.join(", ")
            ))));
        }
        let mode = match self
            .ask("Mode, static or dhcp: ")?
            .to_ascii_lowercase()
            .as_str()
        {
            "static" => AddressMode::Static,
            "dhcp" => AddressMode::Dhcp,
            other => {
                return Ok(Err(Stop(format!(
                    "{other:?} is neither static nor dhcp; nothing changed"
                ))))
            }
        };
        let current = state
            .running
            .interfaces
            .iter()
            .find(|i| i.name == name)
            .map(|i| {
                i.addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let prompt = match (mode, current.is_empty()) {
            (AddressMode::Static, true) => {
                "Address, CIDR form (e.g. 192.0.2.10/24 or 2001:db8::10/64): ".to_owned()
            }
            (AddressMode::Static, false) => format!(
                "Address, CIDR form (e.g. 192.0.2.10/24) [{}]: ",
                current.join(" ")
            ),
            (AddressMode::Dhcp, true) => {
                "Fixed address beside DHCP, CIDR form (empty for none): ".to_owned()
            }
            (AddressMode::Dhcp, false) => format!(
                "Fixed address beside DHCP, CIDR form [{}; none to remove]: ",
                current.join(" ")
            ),
        };
        let address = match parse_address_answer(&self.ask(&prompt)?, mode, &current) {
            Ok(a) => a,
            Err(e) => return Ok(Err(Stop(format!("{e}; nothing changed")))),
        };
        let gateway = match address {
            AddressAnswer::New { ip, .. } => {
                let (family, now) = if ip.is_ipv4() {
                    ("IPv4", state.running.gateway4.map(IpAddr::V4))
                } else {
                    ("IPv6", state.running.gateway6.map(IpAddr::V6))
                };
                let prompt = match now {
                    Some(g) => format!("{family} gateway [{g}; none to remove]: "),
                    None => format!("{family} gateway (empty for none): "),
                };
                match parse_gateway_answer(&self.ask(&prompt)?, ip, now) {
                    Ok(g) => Some((ip.is_ipv4(), g)),
                    Err(e) => return Ok(Err(Stop(format!("{e}; nothing changed")))),
                }
            }
            _ => None,
        };
        let config = match apply_choice(&state.running, &name, mode, &address, gateway) {
            Ok(c) => c,
            Err(e) => return Ok(Err(Stop(format!("{e}; nothing changed")))),
        };
        self.say(&format!(
            "\nNew setting: {}\nIt takes effect at once and is saved (connections to an old \
             address drop).\n",
            describe(&config, &name)
        ))?;
        if !self.confirmed("Type yes to apply: ", "yes")? {
            return Ok(Err(Stop("cancelled; nothing changed".into())));
        }
        match self.actions.set_network(config) {
            Ok(()) => {
                self.say("applied and saved\n")?;
                Ok(Ok(()))
            }
            Err(e @ ActionError::NotAnswering(_)) => {
                Ok(Err(Stop(format!("network service: {e}; nothing changed"))))
            }
            Err(e) => Ok(Err(Stop(format!(
                "keel-netd refused the change; nothing changed:\n{e}"
            )))),
        }
    }
}

/// The answer to the address question.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AddressAnswer {
    /// Keep the interface's addresses as they are.
    Keep,
    /// No fixed address (DHCP only).
    None,
    /// This address in CIDR form, replacing the interface's.
    New { cidr: String, ip: IpAddr },
}

fn parse_address_answer(
    answer: &str,
    mode: AddressMode,
    current: &[String],
) -> Result<AddressAnswer, String> {
    let parsed = match answer {
        "" if current.is_empty() => AddressAnswer::None,
        "" => AddressAnswer::Keep,
        a if a.eq_ignore_ascii_case("none") => AddressAnswer::None,
        a => AddressAnswer::New {
            cidr: a.to_owned(),
            ip: parse_cidr(a)?.0,
        },
    };
    if mode == AddressMode::Static && parsed == AddressAnswer::None {
        return Err("a static interface needs an address".into());
    }
    Ok(parsed)
}

/// `192.0.2.10/24` or `2001:db8::10/64`: the address and the prefix length.
fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("{text:?} is not an address in CIDR form (e.g. 192.0.2.10/24)");
    let (ip, prefix) = text.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("{text:?}: the prefix length is at most {max}"));
    }
    Ok((ip, prefix))
}

/// The gateway answer for an address `ip`: `None` means no gateway of its family.
fn parse_gateway_answer(
    answer: &str,
    ip: IpAddr,
    now: Option<IpAddr>,
) -> Result<Option<IpAddr>, String> {
    if answer.is_empty() {
        return Ok(now);
    }
    if answer.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let g: IpAddr = answer
        .parse()
        .map_err(|_| format!("{answer:?} is not an IP address"))?;
    if g.is_ipv4() != ip.is_ipv4() {
        return Err(format!(
            "the gateway {g} is not of the address's family ({ip})"
        ));
    }
    Ok(Some(g))
}

/// `running` with interface `name` set as chosen; the gateway (`(is_ipv4, gateway)`)
/// only when a new address was given. netd validates the whole of it.
fn apply_choice(
    running: &NetConfig,
    name: &str,
    mode: AddressMode,
    address: &AddressAnswer,
    gateway: Option<(bool, Option<IpAddr>)>,
) -> Result<NetConfig, String> {
    let mut config = running.clone();
    let index = match config.interfaces.iter().position(|i| i.name == name) {
        Some(i) => i,
        None => {
            config.interfaces.push(InterfaceConfig {
                name: name.to_owned(),
                mac: None,
                enabled: true,
                mode,
                addresses: Vec::new(),
                mtu: None,
                shared_address: None,
            });
            config.interfaces.len() - 1
        }
    };
    let iface = &mut config.interfaces[index];
    iface.mode = mode;
    iface.enabled = true;
    match address {
        AddressAnswer::Keep => {}
        AddressAnswer::None => iface.addresses.clear(),
        // Through serde: the same parser netd applies to the JSON it receives.
        AddressAnswer::New { cidr, .. } => {
            iface.addresses = serde_json::from_value(serde_json::json!([cidr]))
                .map_err(|e| format!("{cidr:?}: {e}"))?
        }
    }
    match gateway {
        Some((true, g)) => {
            config.gateway4 = g
                .map(|g| match g {
                    IpAddr::V4(v4) => Ok(v4),
                    IpAddr::V6(_) => Err(format!("{g} is not an IPv4 gateway")),
                })
                .transpose()?
        }
        Some((false, g)) => {
            config.gateway6 = g
                .map(|g| match g {
                    IpAddr::V6(v6) => Ok(v6),
                    IpAddr::V4(_) => Err(format!("{g} is not an IPv6 gateway")),
                })
                .transpose()?
        }
        None => {}
    }
    Ok(config)
}

/// One line for the confirmation: the interface as it will be, and the gateways.
fn describe(config: &NetConfig, name: &str) -> String {
    let mut out = match config.interfaces.iter().find(|i| i.name == name) {
        Some(i) => {
            let addrs: Vec<String> = i.addresses.iter().map(|a| a.to_string()).collect();
            format!(
                "{name} {} {}",
                i.mode.as_str(),
                if addrs.is_empty() {
                    "(no fixed address)".to_owned()
                } else {
                    addrs.join(" ")
                }
            )
        }
        None => name.to_owned(),
    };
    if let Some(g) = config.gateway4 {
        out.push_str(&format!(", IPv4 gateway {g}"));
    }
    if let Some(g) = config.gateway6 {
        out.push_str(&format!(", IPv6 gateway {g}"));
    }
    out
}

fn render_status(s: &Status) -> String {
    let mut out = format!(
        "\nKeel {} (slot {}), hostname {}, up {} s\n",
        s.version, s.slot, s.hostname, s.uptime_seconds
    );
    for a in &s.addresses {
        out.push_str(&format!("address:   {} on {}\n", a.address, a.interface));
    }
    out.push_str(&format!(
        "cert:      SHA-256 {}\n",
        keel_certs::fingerprint_display(&s.certificate.sha256_fingerprint)
    ));
    out
}

/// The configured interfaces; with the kernel's addresses when the console cannot
/// list them.
fn render_net(n: &NetState, with_kernel: bool) -> String {
    let mut out = String::new();
    for i in &n.running.interfaces {
        let addrs: Vec<String> = i.addresses.iter().map(|a| a.to_string()).collect();
        let line = format!(
            "config:    {} {}{} {}",
            i.name,
            i.mode.as_str(),
            if i.enabled { "" } else { " (disabled)" },
            addrs.join(" ")
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if let Some(g) = n.running.gateway4 {
        out.push_str(&format!("gateway4:  {g}\n"));
    }
    if let Some(g) = n.running.gateway6 {
        out.push_str(&format!("gateway6:  {g}\n"));
    }
    if let Some(p) = &n.pending {
        out.push_str(&format!(
            "pending:   a change made through {} is reverted in {} s unless confirmed\n",
            p.owner, p.seconds_left
        ));
    }
    if with_kernel {
        for l in n.links.iter().filter(|l| l.name != "lo") {
            let line = format!("address:   {} {}", l.name, l.addresses.join(" "));
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

// --- the terminal ---------------------------------------------------------------

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked writer leaves nothing half-done that matters here.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct TtyState<W> {
    out: W,
    /// What the menu has written since the person last typed.
    shown: String,
}

/// The terminal's output, shared by the menu and the banner watcher. The watcher's
/// news would land in the middle of a question: it comes on lines of its own,
/// followed by the last paragraph the menu showed since the last input (the open
/// question, or the menu).
pub struct SharedTty<W> {
    state: Arc<Mutex<TtyState<W>>>,
}

impl<W> Clone for SharedTty<W> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
        }
    }
}

impl<W: Write> SharedTty<W> {
    pub fn new(out: W) -> Self {
        Self {
            state: Arc::new(Mutex::new(TtyState {
                out,
                shown: String::new(),
            })),
        }
    }

    /// Writes `text` (with `\r\n` line ends) on a fresh line, then repeats the open
    /// question.
    pub fn interject(&self, text: &str) -> std::io::Result<()> {
        let mut st = lock(&self.state);
        let open = match st.shown.rfind("\r\n\r\n") {
            Some(i) => &st.shown[i + 2..],
            None => &st.shown[..],
        };
        let all = format!("\r\n{text}{open}");
        st.out.write_all(all.as_bytes())?;
        st.out.flush()
    }

    fn input_seen(&self) {
        lock(&self.state).shown.clear();
    }
}

impl<W: Write> Write for SharedTty<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut st = lock(&self.state);
        let n = st.out.write(buf)?;
        st.shown.push_str(&String::from_utf8_lossy(&buf[..n]));
        if st.shown.len() > MAX_SHOWN {
            let mut cut = st.shown.len() - MAX_SHOWN;
            while !st.shown.is_char_boundary(cut) {
                cut += 1;
            }
            st.shown.drain(..cut);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        lock(&self.state).out.flush()
    }
}

/// The terminal's input: whatever arrives answers the open question.
pub struct TtyInput<R, W> {
    inner: R,
    tty: SharedTty<W>,
}

impl<R: Read, W: Write> Read for TtyInput<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.tty.input_seen();
        }
        Ok(n)
    }
}

/// The console's last banner that reached the terminal, so neither the watcher nor
/// the menu prints the same one twice in a row.
type Shown = Arc<Mutex<Option<Banner>>>;

/// Marks `b` as shown; true when it differs from what was shown last.
fn note_banner(shown: &Shown, b: &Banner) -> bool {
    let mut last = lock(shown);
    if last.as_ref() == Some(b) {
        return false;
    }
    *last = Some(b.clone());
    true
}

/// Polls the console's banner and prints it when it changes; `KEEL-READY` once on
/// a serial line after the console first answers (test harnesses wait for it, and
/// count it per boot). `ready_file`, when given, remembers across restarts of the
/// menu that it was printed.
async fn watch_banner<W: Write + Send + 'static>(
    console: Client,
    tty: SharedTty<W>,
    shown: Shown,
    serial: bool,
    ready_file: Option<PathBuf>,
) {
    let mut announced = ready_file.as_deref().is_some_and(Path::exists);
    loop {
        if let Ok(b) = console.call::<(), Banner>("GET", "/banner", None).await {
            let mut text = String::new();
            if note_banner(&shown, &b) {
                text.push_str(&crate::local::render_banner(&b));
            }
            if !announced && serial {
                text.push_str(READY_MARKER);
                if let Some(f) = &ready_file {
                    if let Err(e) = std::fs::write(f, b"") {
                        eprintln!("{}: {e}", f.display());
                    }
                }
            }
            announced = true;
            if !text.is_empty() {
                let tty = tty.clone();
                // A serial line can stall (XOFF): never on the runtime's thread.
                let _ = tokio::task::spawn_blocking(move || tty.interject(&text)).await;
            }
        }
        tokio::time::sleep(BANNER_POLL).await;
    }
}

/// The appliance as the menu sees it: the console's and netd's local sockets, and
/// keelctl's own reset and power paths.
struct Live {
    console: Client,
    netd: Client,
    rt: tokio::runtime::Handle,
    shown: Shown,
}

fn console_error(e: LocalApiError) -> ActionError {
    service_error("console", e)
}

fn service_error(service: &'static str, e: LocalApiError) -> ActionError {
    match e {
        LocalApiError::Connect { .. } => ActionError::NotAnswering(service),
        LocalApiError::Status { message, .. } => ActionError::Refused(message),
        other => ActionError::Refused(other.to_string()),
    }
}

impl Live {
    fn power(&mut self, path: &str, verb: &str) -> Outcome<()> {
        let asked = self.rt.block_on(
            self.console
                .call::<(), serde_json::Value>("POST", path, None),
        );
        match asked {
            Ok(_) => Ok(()),
            // Root here: restarting the box must not depend on the console.
            Err(LocalApiError::Connect { .. }) => {
                crate::local::systemctl(verb).map_err(|e| ActionError::Refused(format!("{e:#}")))
            }
            Err(e) => Err(console_error(e)),
        }
    }
}

impl Actions for Live {
    fn banner(&mut self) -> Outcome<Banner> {
        let b = self
            .rt
            .block_on(self.console.call::<(), Banner>("GET", "/banner", None))
            .map_err(console_error)?;
        // The menu prints it now: the watcher need not repeat it.
        note_banner(&self.shown, &b);
        Ok(b)
    }

    fn status(&mut self) -> Outcome<Status> {
        self.rt
            .block_on(self.console.call::<(), Status>("GET", "/status", None))
            .map_err(console_error)
    }

    fn net_state(&mut self) -> Outcome<NetState> {
        self.rt
            .block_on(self.netd.call::<(), NetState>("GET", "/state", None))
            .map_err(|e| service_error("keel-netd", e))
    }

    fn set_network(&mut self, config: NetConfig) -> Outcome<()> {
        let netd_error = |e| service_error("keel-netd", e);
        let req = NetChangeRequest {
            config,
            owner: NET_OWNER.into(),
            confirm_seconds: None,
        };
        let _: NetPending = self
            .rt
            .block_on(self.netd.call("PUT", "/config", Some(&req)))
            .map_err(netd_error)?;
        let owner = NetConfirmRequest {
            owner: NET_OWNER.into(),
        };
        // The person at the box is the one who would be locked out: keep it now.
        let kept = self.rt.block_on(self.netd.call::<_, NetState>(
            "POST",
            "/confirm",
            Some(&owner),
        ));
        if let Err(e) = kept {
            // Not kept: put the previous configuration back now, not at the window's end.
            let _ = self.rt.block_on(self.netd.call::<_, NetState>(
                "POST",
                "/cancel",
                Some(&owner),
            ));
            return Err(netd_error(e));
        }
        Ok(())
    }

    fn reset_admin_password(&mut self) -> Outcome<()> {
        self.rt
            .block_on(self.console.call::<(), serde_json::Value>(
                "POST",
                "/admin/reset-password",
                None,
            ))
            .map(|_| ())
            .map_err(console_error)
    }

    fn factory_reset(&mut self, power_off: bool) -> Outcome<()> {
        crate::local::factory_reset(power_off).map_err(|e| ActionError::Refused(format!("{e:#}")))
    }

    fn reboot(&mut self) -> Outcome<()> {
        self.power("/system/reboot", "reboot")
    }

    fn shutdown(&mut self) -> Outcome<()> {
        self.power("/system/shutdown", "poweroff")
    }
}

/// Opens the terminal; a missing one (no serial port on this hardware) is waited
/// for quietly rather than restarted every two seconds.
async fn open_tty(path: &Path) -> std::fs::File {
    let mut said = false;
    loop {
        match keel_core::tty::open(path) {
            Ok(f) => return f,
            Err(e) => {
                if !said {
                    eprintln!("{}: {e}; waiting for it", path.display());
                    said = true;
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}

/// The menu on terminal `tty` for as long as the process runs: when the terminal
/// ends (end of input, hangup) it is opened again after [`RESTART_DELAY`], without
/// touching the menus on other terminals of the same process.
pub async fn serve(console: Client, netd: Client, tty: PathBuf, state_dir: Option<PathBuf>) {
    loop {
        if let Err(e) = run(console.clone(), netd.clone(), &tty, state_dir.as_deref()).await {
            eprintln!("{}: {e:#}; starting the menu again", tty.display());
        }
        tokio::time::sleep(RESTART_DELAY).await;
    }
}

/// Between a terminal's menu ending and its start again (a hung-up serial line
/// must not spin).
const RESTART_DELAY: Duration = Duration::from_secs(2);

/// The menu on terminal `tty` until the terminal ends (then an error). `state_dir`
/// outlives restarts of the menu (but not a boot).
pub async fn run(
    console: Client,
    netd: Client,
    tty: &Path,
    state_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let file = open_tty(tty).await;
    let input = file
        .try_clone()
        .with_context(|| format!("{}: duplicating the handle", tty.display()))?;
    let out = SharedTty::new(file);
    let shown: Shown = Arc::default();
    let name = tty
        .strip_prefix("/dev")
        .unwrap_or(tty)
        .display()
        .to_string();
    let serial = tty
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("ttyS"));
    // One note per terminal: several menus share the state directory.
    let ready_file = tty
        .file_name()
        .zip(state_dir)
        .map(|(n, d)| d.join(format!("ready-announced.{}", n.to_string_lossy())));
    let watcher = tokio::spawn(watch_banner(
        console.clone(),
        out.clone(),
        shown.clone(),
        serial,
        ready_file,
    ));
    let actions = Live {
        console,
        netd,
        rt: tokio::runtime::Handle::current(),
        shown,
    };
    let reader = BufReader::new(TtyInput {
        inner: input,
        tty: out.clone(),
    });
    // The dialog blocks on the terminal; its socket calls run on this runtime, which
    // this thread keeps driving while it waits.
    let ended =
        tokio::task::spawn_blocking(move || Menu::new(actions, reader, out, &name).run()).await;
    // The next start of this terminal's menu watches the banner anew.
    watcher.abort();
    ended.context("the menu thread")??;
    Err(anyhow!("the menu ended"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::{CertificateSummary, InterfaceAddress, NetLink};
    use std::io::Cursor;

    #[derive(Default)]
    struct Fake {
        calls: Vec<String>,
        console_down: bool,
        net: Option<NetState>,
        net_refusal: Option<String>,
        set: Vec<NetConfig>,
        setup_code: Option<String>,
    }

    impl Fake {
        fn console(&self) -> Outcome<()> {
            if self.console_down {
                Err(ActionError::NotAnswering("console"))
            } else {
                Ok(())
            }
        }
    }

    impl Actions for Fake {
        fn banner(&mut self) -> Outcome<Banner> {
            self.console()?;
            Ok(Banner {
                version: "1.2.3".into(),
                urls: vec!["https://192.0.2.7/appliance".into()],
                setup_code: self.setup_code.clone(),
            })
        }
        fn status(&mut self) -> Outcome<Status> {
            self.console()?;
            Ok(Status {
                version: "1.2.3".into(),
                slot: "a".into(),
                hostname: "keel".into(),
                uptime_seconds: 42,
                kernel: "6.1".into(),
                time: "2026-01-01T00:00:00Z".into(),
                root_readonly: true,
                addresses: vec![InterfaceAddress {
                    interface: "ens3".into(),
                    address: "192.0.2.7/24".into(),
                }],
                certificate: CertificateSummary {
                    sha256_fingerprint: "ab".repeat(32),
                    subject: "CN=keel".into(),
                    not_after: "2036".into(),
                },
                processes: Vec::new(),
                data_total_bytes: 0,
                data_free_bytes: 0,
                boot: None,
            })
        }
        fn net_state(&mut self) -> Outcome<NetState> {
            self.net
                .clone()
                .ok_or(ActionError::NotAnswering("keel-netd"))
        }
        fn set_network(&mut self, config: NetConfig) -> Outcome<()> {
            self.calls.push("set_network".into());
            if let Some(m) = &self.net_refusal {
                return Err(ActionError::Refused(m.clone()));
            }
            self.set.push(config);
            Ok(())
        }
        fn reset_admin_password(&mut self) -> Outcome<()> {
            self.console()?;
            self.calls.push("reset_admin_password".into());
            self.setup_code = Some("NEWC-ODE2-3456".into());
            Ok(())
        }
        fn factory_reset(&mut self, power_off: bool) -> Outcome<()> {
            self.calls.push(format!("factory_reset({power_off})"));
            Ok(())
        }
        fn reboot(&mut self) -> Outcome<()> {
            self.calls.push("reboot".into());
            Ok(())
        }
        fn shutdown(&mut self) -> Outcome<()> {
            self.calls.push("shutdown".into());
            Ok(())
        }
    }

    fn link(name: &str, index: u32, wired: bool, addrs: &[&str]) -> NetLink {
        NetLink {
            name: name.into(),
            index,
            mac: format!("52:54:00:00:00:{index:02x}"),
            kind: None,
            wired,
            up: true,
            mtu: 1500,
            addresses: addrs.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// Two wired ports on the factory default (DHCP, the fallback address on the first).
    fn net() -> NetState {
        let running: NetConfig = serde_json::from_value(serde_json::json!({
            "interfaces": [
                {"name": "ens3", "addresses": ["169.254.1.1/16"]},
                {"name": "ens4"}
            ]
        }))
        .unwrap();
        NetState {
            confirmed: running.clone(),
            running,
            source: "default".into(),
            pending: None,
            links: vec![
                link("lo", 1, false, &["127.0.0.1/8"]),
                link("ens3", 2, true, &["10.0.2.15/24", "169.254.1.1/16"]),
                link("ens4", 3, true, &[]),
            ],
            learned: Default::default(),
        }
    }

    /// Runs the menu on `input` to its end; the output and the fake afterwards.
    fn drive(input: &str, fake: Fake) -> (String, Fake) {
        let mut out = Vec::new();
        let mut menu = Menu::new(
            fake,
            Cursor::new(input.as_bytes().to_vec()),
            &mut out,
            "ttyS0",
        );
        let end = menu.run().unwrap_err();
        assert!(end.to_string().contains("terminal closed"), "{end}");
        let fake = menu.actions;
        (String::from_utf8(out).unwrap(), fake)
    }

    #[test]
    fn lines_end_in_cr_lf_or_both() {
        let mut r = LineReader::new(Cursor::new(
            b"1\ryes\nRESET\r\n\r\nab\x7fc\r\r\nlast".to_vec(),
        ));
        let mut lines = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            lines.push(l);
        }
        assert_eq!(lines, ["1", "yes", "RESET", "", "ac", "", "last"]);
    }

    #[test]
    fn menu_lists_items_and_refuses_unknown_input() {
        let (out, fake) = drive("9\rreboot\r\r", Fake::default());
        assert!(fake.calls.is_empty(), "{:?}", fake.calls);
        assert!(out.contains("  3  Reset the admin password\r\n"), "{out}");
        assert!(out.contains("unknown choice \"9\": type a number from 1 to 6"));
        assert!(out.contains("unknown choice \"reboot\""));
        // The first showing, after each error, after the empty line.
        assert_eq!(out.matches("  6  Shut down").count(), 4);
        // Every line ends in \r\n.
        assert_eq!(out.matches('\n').count(), out.matches("\r\n").count());
    }

    #[test]
    fn power_actions_need_yes() {
        let (out, fake) = drive("5\ry\r6\r\r5\rYES\r6\ryes\r", Fake::default());
        assert_eq!(fake.calls, ["reboot", "shutdown"]);
        assert_eq!(out.matches("cancelled").count(), 2);
        assert!(out.contains("restarting\r\n") && out.contains("powering off\r\n"));
    }

    #[test]
    fn factory_reset_needs_reset_typed_and_asks_about_power() {
        let (out, fake) = drive(
            "4\ryes\r4\rreset\r4\rRESET\r\r4\rRESET\ry\r4\rRESET\rmaybe\r",
            Fake::default(),
        );
        assert_eq!(fake.calls, ["factory_reset(false)", "factory_reset(true)"]);
        assert!(out.contains("There is no undo."));
        assert!(out.contains("Power off afterwards? [y/N]: "));
        assert!(out.contains("\"maybe\" is neither y nor n; nothing changed"));
    }

    #[test]
    fn password_reset_shows_the_new_setup_code() {
        let fake = Fake {
            setup_code: None,
            ..Fake::default()
        };
        let (out, fake) = drive("3\rno\r3\ryes\r", fake);
        assert_eq!(fake.calls, ["reset_admin_password"]);
        assert!(out.contains("cancelled; nothing changed"));
        assert!(out.contains("Keel 1.2.3 console: https://192.0.2.7/appliance\r\n"));
        assert!(out.contains("\r\nSetup code: NEWC-ODE2-3456\r\n"), "{out}");
    }

    #[test]
    fn console_down_is_said_and_the_menu_goes_on() {
        let fake = Fake {
            console_down: true,
            net: Some(net()),
            ..Fake::default()
        };
        let (out, fake) = drive("1\r3\ryes\r5\ryes\r", fake);
        assert!(out.contains("console not answering yet\r\n"), "{out}");
        // The kernel's addresses instead of the console's.
        assert!(out.contains("address:   ens3 10.0.2.15/24 169.254.1.1/16"));
        assert!(out.contains("console not answering yet; nothing changed"));
        assert_eq!(fake.calls, ["reboot"]);
    }

    #[test]
    fn show_prints_banner_and_status() {
        let fake = Fake {
            net: Some(net()),
            setup_code: Some("ABCD-EFGH-JKLM".into()),
            ..Fake::default()
        };
        let (out, _) = drive("1\r", fake);
        assert!(out.contains("Keel 1.2.3 console: https://192.0.2.7/appliance\r\n"));
        assert!(out.contains("Setup code: ABCD-EFGH-JKLM\r\n"));
        assert!(out.contains("address:   192.0.2.7/24 on ens3"));
        // As a browser's certificate viewer shows it, to compare by eye.
        assert!(out.contains(&format!("SHA-256 {}", ["AB"; 32].join(":"))));
        assert!(out.contains("config:    ens3 dhcp 169.254.1.1/16"));
    }

    #[test]
    fn static_address_on_the_first_wired_port() {
        let fake = Fake {
            net: Some(net()),
            ..Fake::default()
        };
        let (out, fake) = drive("2\r\rstatic\r192.0.2.10/24\r192.0.2.1\ryes\r", fake);
        assert!(out.contains("Interface [ens3]: "), "{out}");
        assert!(out.contains("New setting: ens3 static 192.0.2.10/24, IPv4 gateway 192.0.2.1\r\n"));
        assert!(out.contains("applied and saved"));
        let [config] = &fake.set[..] else {
            panic!("{:?}", fake.set)
        };
        assert_eq!(config.interfaces[0].mode, AddressMode::Static);
        assert_eq!(
            config.interfaces[0].addresses[0].to_string(),
            "192.0.2.10/24"
        );
        assert_eq!(config.gateway4, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(config.interfaces[1], net().running.interfaces[1]);
    }

    #[test]
    fn dhcp_and_ipv6_choices() {
        let fake = Fake {
            net: Some(net()),
            ..Fake::default()
        };
        let (_, fake) = drive(
            "2\rens4\rdhcp\r\ryes\r2\rens3\rDHCP\rnone\ryes\r2\rens4\rstatic\r2001:db8::5/64\r\ryes\r",
            fake,
        );
        let [a, b, c] = &fake.set[..] else {
            panic!("{:?}", fake.set)
        };
        assert_eq!(a.interfaces[1].mode, AddressMode::Dhcp);
        assert!(a.interfaces[1].addresses.is_empty());
        assert!(
            b.interfaces[0].addresses.is_empty(),
            "none removes the fixed address"
        );
        assert_eq!(b.interfaces[0].mode, AddressMode::Dhcp);
        assert_eq!(c.interfaces[1].addresses[0].to_string(), "2001:db8::5/64");
        assert_eq!(c.gateway6, None);
    }

    #[test]
    fn bad_address_input_changes_nothing() {
        let fake = Fake {
            net: Some(net()),
            ..Fake::default()
        };
        let (out, fake) = drive(
            "2\reth9\r2\r\rmanual\r2\r\rstatic\r192.0.2.10\r2\r\rstatic\r192.0.2.10/24\r2001:db8::1\r2\rens4\rstatic\r\r2\r\rstatic\r192.0.2.10/24\r\rno\r",
            fake,
        );
        assert!(fake.calls.is_empty(), "{:?}", fake.calls);
        assert!(out.contains("no interface \"eth9\" (the appliance has: ens3, ens4)"));
        assert!(out.contains("\"manual\" is neither static nor dhcp"));
        assert!(out.contains("\"192.0.2.10\" is not an address in CIDR form"));
        assert!(out.contains("is not of the address's family"));
        assert!(out.contains("a static interface needs an address"));
        assert!(out.contains("cancelled; nothing changed"));
    }

    #[test]
    fn netd_refusal_is_printed_verbatim() {
        let refusal = "interfaces[0].addresses[0]: 192.0.2.0/24: is the network address of \
                       192.0.2.0/24; use a host address";
        let fake = Fake {
            net: Some(net()),
            net_refusal: Some(refusal.into()),
            ..Fake::default()
        };
        let (out, fake) = drive("2\r\rstatic\r192.0.2.0/24\r\ryes\r", fake);
        assert_eq!(fake.calls, ["set_network"]);
        assert!(out.contains(&format!(
            "keel-netd refused the change; nothing changed:\r\n{refusal}\r\n"
        )));
    }

    #[test]
    fn pending_change_or_netd_down_stop_early() {
        let mut state = net();
        state.pending = Some(NetPending {
            owner: "console".into(),
            deadline: "2026-01-01T00:02:00Z".into(),
            seconds_left: 100,
            window_seconds: 120,
            proposed: state.running.clone(),
            previous: state.running.clone(),
        });
        let fake = Fake {
            net: Some(state),
            ..Fake::default()
        };
        let (out, _) = drive("2\r", fake);
        assert!(out.contains("a change made through console is waiting for confirmation"));
        let (out, _) = drive("2\r", Fake::default());
        assert!(out.contains("network service: keel-netd not answering yet; nothing changed"));
    }

    #[test]
    fn banner_news_repeats_the_open_question() {
        let tty = SharedTty::new(Vec::new());
        let mut menu_out = tty.clone();
        menu_out
            .write_all(b"console not answering yet\r\n\r\n  1  Show\r\nChoice [1-6]: ")
            .unwrap();
        tty.interject("Setup code: ABCD-EFGH-JKLM\r\n").unwrap();
        let mut input = TtyInput {
            inner: Cursor::new(b"1\n".to_vec()),
            tty: tty.clone(),
        };
        let mut buf = [0u8; 8];
        assert_eq!(input.read(&mut buf).unwrap(), 2);
        // Answered: nothing open to repeat any more.
        tty.interject("KEEL-READY\r\n").unwrap();
        let out = String::from_utf8(lock(&tty.state).out.clone()).unwrap();
        assert_eq!(
            out,
            "console not answering yet\r\n\r\n  1  Show\r\nChoice [1-6]: \r\n\
             Setup code: ABCD-EFGH-JKLM\r\n\r\n  1  Show\r\nChoice [1-6]: \r\nKEEL-READY\r\n"
        );
    }

    #[test]
    fn banner_is_printed_once_per_change() {
        let shown: Shown = Arc::default();
        let mut b = Banner {
            version: "1".into(),
            urls: Vec::new(),
            setup_code: None,
        };
        assert!(note_banner(&shown, &b));
        assert!(!note_banner(&shown, &b));
        b.urls.push("https://192.0.2.7/appliance".into());
        assert!(note_banner(&shown, &b));
    }

    #[test]
    fn cidr_and_gateway_parsing() {
        assert_eq!(
            parse_cidr("192.0.2.10/24").unwrap(),
            ("192.0.2.10".parse().unwrap(), 24)
        );
        assert!(parse_cidr("2001:db8::1/129").is_err());
        assert!(parse_cidr("192.0.2.10/33").is_err());
        assert!(parse_cidr("eth0").is_err());
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let now: Option<IpAddr> = Some("192.0.2.254".parse().unwrap());
        assert_eq!(parse_gateway_answer("", ip, now), Ok(now));
        assert_eq!(parse_gateway_answer("NONE", ip, now), Ok(None));
        assert_eq!(
            parse_gateway_answer("192.0.2.1", ip, None),
            Ok(Some("192.0.2.1".parse().unwrap()))
        );
        assert!(parse_gateway_answer("fe80::1", ip, None).is_err());
        assert!(parse_choice("0").is_none() && parse_choice("7").is_none());
        assert_eq!(parse_choice("4"), Some(Item::FactoryReset));
    }
}
