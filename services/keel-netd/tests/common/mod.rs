//! Network namespaces for tests: unique names (test threads run in parallel), and
//! removal on drop, so a failed assertion still cleans up. Everything the tests
//! configure lives inside these namespaces; the host's interfaces are never touched.

#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Netns {
    pub name: String,
}

/// Why namespace tests cannot run here, if they cannot (they then pass, saying so).
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: network namespace tests skipped".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("no `ip` (iproute2): network namespace tests skipped".into());
    }
    None
}

/// Returns early from a test (with the reason printed) where namespaces are unavailable.
#[macro_export]
macro_rules! need_netns {
    () => {
        if let Some(why) = common::unavailable() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why VLAN tests cannot run here, if they cannot: no namespaces, or a kernel
/// without 802.1Q (`CONFIG_VLAN_8021Q`). Probed in a namespace of its own.
pub fn vlan_unavailable() -> Option<String> {
    if let Some(why) = unavailable() {
        return Some(why);
    }
    let ns = Netns::new("vlan-probe");
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);
    let out = Command::new("ip")
        .args([
            "-n", &ns.name, "link", "add", "link", "eth0", "name", "eth0.1",
        ])
        .args(["type", "vlan", "id", "1"])
        .output()
        .expect("running ip");
    (!out.status.success()).then(|| {
        format!(
            "the kernel cannot make VLANs ({}): VLAN tests skipped",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// Returns early from a test (with the reason printed) where VLANs are unavailable.
#[macro_export]
macro_rules! need_vlans {
    () => {
        if let Some(why) = common::vlan_unavailable() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

impl Netns {
    /// A fresh namespace with loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "keel-netd-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> std::path::PathBuf {
        std::path::Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n NS ARGS...`, its output.
    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip -j -n NS ARGS...`, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let out = run(Command::new("ip")
            .arg("-j")
            .arg("-n")
            .arg(&self.name)
            .args(args));
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).expect("ip -j output")
    }

    /// A veth pair `inner` (here) ↔ `outer` (here too, or in `peer_ns`), both up.
    pub fn veth(&self, inner: &str, outer: &str, peer_ns: Option<&Netns>) {
        self.ip(&["link", "add", inner, "type", "veth", "peer", "name", outer]);
        match peer_ns {
            Some(p) => {
                self.ip(&["link", "set", outer, "netns", &p.name]);
                p.ip(&["link", "set", outer, "up"]);
            }
            None => {
                self.ip(&["link", "set", outer, "up"]);
            }
        }
    }

    /// Addresses of `dev` as the kernel lists them (`ip -j addr`), CIDR form,
    /// link-local IPv6 left out.
    pub fn addresses(&self, dev: &str) -> Vec<String> {
        addresses(&self.name, dev)
    }

    /// Routes (`ip -j [-6] route show`) as `dst via gw dev D proto P` lines.
    pub fn routes(&self, v6: bool) -> Vec<String> {
        let mut args = vec![];
        if v6 {
            args.push("-6");
        }
        args.extend(["route", "show"]);
        let v = self.ip_json(&args);
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["gateway"].is_string())
            .map(|r| {
                format!(
                    "{} via {} dev {} proto {}",
                    r["dst"].as_str().unwrap_or_default(),
                    r["gateway"].as_str().unwrap_or_default(),
                    r["dev"].as_str().unwrap_or_default(),
                    r["protocol"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| r["protocol"].to_string())
                )
            })
            .collect()
    }

    pub fn link(&self, dev: &str) -> Value {
        self.ip_json(&["link", "show", "dev", dev])[0].clone()
    }

    /// `ip -d -j link show`: every link with its details (`linkinfo`, `ifalias`).
    pub fn links_detailed(&self) -> Vec<Value> {
        self.ip_json(&["-d", "link", "show"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The VLANs of the namespace as `name parent id alias` (alias `-` when none),
    /// sorted, from `ip -d -j link show`.
    pub fn vlans(&self) -> Vec<String> {
        vlans(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its interfaces (and a veth's far end).
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Addresses of `dev` in namespace `ns` (`ip -j addr`), CIDR form, link-local
/// IPv6 left out; callable from inside a test's namespace thread.
pub fn addresses(ns: &str, dev: &str) -> Vec<String> {
    let out = run(Command::new("ip").args(["-j", "-n", ns, "addr", "show", "dev", dev]));
    let v: Value = serde_json::from_str(&out).expect("ip -j output");
    let mut out = Vec::new();
    for link in v.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            let local = a["local"].as_str().unwrap_or_default();
            if local.starts_with("fe80:") {
                continue;
            }
            out.push(format!("{local}/{}", a["prefixlen"]));
        }
    }
    out
}

/// The VLANs of namespace `ns` as `name parent id alias`, sorted (see `Netns::vlans`).
pub fn vlans(ns: &str) -> Vec<String> {
    let out = run(Command::new("ip").args(["-d", "-j", "-n", ns, "link", "show"]));
    let v: Value = serde_json::from_str(&out).expect("ip -j output");
    let mut out: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["linkinfo"]["info_kind"] == "vlan")
        .map(|l| {
            format!(
                "{} {} {} {}",
                l["ifname"].as_str().unwrap_or_default(),
                l["link"].as_str().unwrap_or_default(),
                l["linkinfo"]["info_data"]["id"],
                l["ifalias"].as_str().unwrap_or("-")
            )
        })
        .collect();
    out.sort();
    out
}
