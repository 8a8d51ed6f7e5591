//! `keelctl update ...`: status, install a bundle file (streamed to keel-update's
//! socket, never loaded whole), roll back to the previous version; online:
//! settings, check, install-online, install-all, download-key.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use keel_api::{
    AvailableState, AvailableUpdates, ChainState, ChainStatus, DownloadKeyAnswer, InstallAnswer,
    InstallOnlineRequest, OutcomeKind, RollbackRequest, UpdatePhase, UpdateSettings,
    UpdateSettingsRequest, UpdateStatus, ROLLBACK_CONFIRMATION,
};
use keel_core::local_api::Client;
use tokio::io::{AsyncRead, ReadBuf};

#[derive(clap::Args)]
pub struct UpdateArgs {
    /// keel-update's local API socket.
    #[arg(
        long,
        env = "KEEL_UPDATE_SOCKET",
        default_value = "/run/keel/update.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: UpdateCommand,
}

#[derive(Subcommand)]
pub enum UpdateCommand {
    /// Slots, versions, the install in progress, the last outcome.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Install a base bundle into the inactive slot; the next boot tries it.
    Install {
        /// The bundle file (*.kbundle).
        file: PathBuf,
        /// Reboot into the new version once it is written, verified and armed.
        #[arg(long)]
        reboot: bool,
    },
    /// Boot the previous version again (the other slot) and reboot.
    Rollback {
        /// Confirms the rollback and the reboot.
        #[arg(long)]
        yes: bool,
    },
    /// Show the online settings; with options, change them (the others are kept).
    Settings {
        /// The signed feed, https://... ("" clears it).
        #[arg(long)]
        feed: Option<String>,
        /// HTTP(S) proxy, e.g. http://proxy:3128 ("" clears it).
        #[arg(long)]
        proxy: Option<String>,
        /// Proxy user for basic auth ("" clears it).
        #[arg(long)]
        proxy_user: Option<String>,
        /// Read the proxy password from the environment variable KEEL_PROXY_PASSWORD
        /// (never from the command line, where other users could see it).
        #[arg(long)]
        proxy_password_from_env: bool,
        /// Remove the stored proxy password.
        #[arg(long, conflicts_with = "proxy_password_from_env")]
        clear_proxy_password: bool,
        /// A PEM file with an extra CA certificate to trust for the feed server.
        #[arg(long, value_name = "FILE")]
        ca_cert: Option<PathBuf>,
        /// Remove the extra CA certificate.
        #[arg(long, conflicts_with = "ca_cert")]
        clear_ca_cert: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check for updates: fetch and verify the feed, show what fits and the plan.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Download and install a version listed in the feed.
    InstallOnline {
        version: String,
        /// The feed's app of that name instead of the base (no reboot needed).
        #[arg(long)]
        app: Option<String>,
        /// Reboot into it once written, verified and armed.
        #[arg(long)]
        reboot: bool,
    },
    /// Install every step to the newest version in order, one reboot per step.
    InstallAll {
        /// Confirms the reboots.
        #[arg(long)]
        yes: bool,
    },
    /// Make the signed download key (for an appliance without internet access).
    DownloadKey {
        #[arg(long)]
        json: bool,
    },
}

pub fn render_available(a: &AvailableUpdates) -> String {
    let mut out = format!(
        "feed:      {} (created {}, expires {})\nrunning:   {}\n",
        a.feed_url, a.feed_created, a.feed_expires, a.installed
    );
    if a.entries.is_empty() {
        out.push_str("the feed lists no bundles\n");
    }
    for e in &a.entries {
        let state = match e.state {
            AvailableState::Installable => "installable".to_string(),
            AvailableState::Installed => "installed".to_string(),
            _ => format!(
                "not installable: {}",
                e.reason.as_deref().unwrap_or("no reason given")
            ),
        };
        out.push_str(&format!(
            "  {} {:<10} {}  ({} bytes)\n",
            e.component, e.version, state, e.size
        ));
    }
    if a.plan.is_empty() {
        out.push_str("plan:      up to date\n");
    } else {
        out.push_str(&format!(
            "plan:      {} (keelctl update install-all)\n",
            a.plan.join(" → ")
        ));
    }
    out
}

fn render_chain(c: &ChainStatus) -> String {
    let state = match c.state {
        ChainState::Running => "running",
        ChainState::Done => "done",
        ChainState::Failed => "stopped",
    };
    let mut out = format!(
        "install all: {state}, {} of {} steps ({})",
        c.done,
        c.steps.len(),
        c.steps.join(" → ")
    );
    if let Some(m) = &c.message {
        out.push_str(&format!("\n             {m}"));
    }
    out.push('\n');
    out
}

fn render_settings(s: &UpdateSettings) -> String {
    let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
    format!(
        "feed:      {}\nproxy:     {}\nuser:      {}\npassword:  {}\nextra CA:  {}\n",
        or_none(&s.feed_url),
        or_none(&s.proxy_url),
        or_none(&s.proxy_user),
        if s.proxy_password_set {
            "set"
        } else {
            "(none)"
        },
        if s.ca_certificate.is_some() {
            "set"
        } else {
            "(none)"
        },
    )
}

fn phase(p: UpdatePhase) -> &'static str {
    match p {
        UpdatePhase::Idle => "idle",
        UpdatePhase::Download => "receiving",
        UpdatePhase::Verify => "verifying",
        UpdatePhase::Write => "writing",
        UpdatePhase::ReadBack => "reading back",
        UpdatePhase::Arm => "arming the trial boot",
        UpdatePhase::RebootPending => "installed, reboot pending",
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

pub fn render_status(s: &UpdateStatus) -> String {
    let slot = |i: &keel_api::SlotInfo| {
        format!(
            "slot {} {}{}",
            i.slot,
            i.version.as_deref().unwrap_or("(no known version)"),
            if i.good { " (good)" } else { "" }
        )
    };
    let mut out = format!(
        "running:   {}\nother:     {}\n",
        slot(&s.running),
        slot(&s.other)
    );
    let p = &s.progress;
    out.push_str(&format!("install:   {}", phase(p.phase)));
    if let Some(v) = &p.version {
        out.push_str(&format!(" {v}"));
    }
    if p.bytes_total > 0 {
        out.push_str(&format!(
            " ({} of {})",
            mib(p.bytes_done),
            mib(p.bytes_total)
        ));
    }
    out.push('\n');
    if let Some(e) = &p.error {
        out.push_str(&format!("error:     {e}\n"));
    }
    if let Some(c) = &s.chain {
        out.push_str(&render_chain(c));
    }
    if let Some(o) = &s.last_outcome {
        let kind = match o.kind {
            OutcomeKind::Installed => "installed",
            OutcomeKind::RolledBack => "rolled back",
            OutcomeKind::RolledBackByAdmin => "rolled back by the admin",
        };
        out.push_str(&format!("last:      {kind}: {} ({})\n", o.message, o.at));
    }
    match &s.rollback_to {
        Some(v) => out.push_str(&format!("rollback:  possible, to {v}\n")),
        None => out.push_str("rollback:  no previous version\n"),
    }
    for a in &s.apps {
        let state = if a.active {
            "active".to_owned()
        } else {
            format!("NOT active ({})", a.note.as_deref().unwrap_or("not merged"))
        };
        let prev = a
            .previous
            .as_ref()
            .map(|p| format!(", {p} kept"))
            .unwrap_or_default();
        out.push_str(&format!(
            "app:       {} {} {state}{prev}\n",
            a.name, a.version
        ));
    }
    out
}

/// What an install answer means, for the line keelctl prints.
fn installed_line(a: &InstallAnswer) -> String {
    match &a.app {
        Some(app) => format!(
            "installed app {app} {}; active (no reboot needed)",
            a.version
        ),
        None => format!(
            "installed {} into slot {}; {}",
            a.version,
            a.slot,
            if a.rebooting {
                "rebooting into it now"
            } else {
                "the next boot tries it (keelctl reboot)"
            }
        ),
    }
}

/// A file as a request body, read as it is sent (with its size, so the request
/// carries Content-Length and keel-update can show the upload's progress).
struct FileBody {
    file: tokio::fs::File,
    left: u64,
    buf: Box<[u8]>,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let mut rb = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file got shorter while it was sent",
                    ))));
                }
                let n = n.min(usize::try_from(this.left).unwrap_or(usize::MAX));
                let chunk = Bytes::copy_from_slice(&rb.filled()[..n]);
                this.left -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

async fn file_body(path: &Path) -> anyhow::Result<FileBody> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let meta = file
        .metadata()
        .await
        .with_context(|| format!("{}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a file", path.display());
    }
    Ok(FileBody {
        file,
        left: meta.len(),
        buf: vec![0u8; 256 * 1024].into_boxed_slice(),
    })
}

pub async fn run(args: UpdateArgs, remote: Option<&crate::remote::Remote>) -> anyhow::Result<()> {
    if let Some(r) = remote {
        let UpdateCommand::Status { json } = args.command else {
            return Err(crate::remote::local_only("update (other than status)"));
        };
        let s: UpdateStatus = r.get("/update").await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            print!("{}", render_status(&s));
        }
        return Ok(());
    }
    let update = Client::new(&args.socket);
    match args.command {
        UpdateCommand::Status { json } => {
            let s: UpdateStatus = update.call::<(), _>("GET", "/status", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", render_status(&s));
            }
        }
        UpdateCommand::Install { file, reboot } => {
            let body = file_body(&file).await?;
            let path = if reboot {
                "/install?reboot=true"
            } else {
                "/install"
            };
            let upload = update.call_stream::<_, InstallAnswer>(
                "POST",
                path,
                "application/octet-stream",
                body,
            );
            tokio::pin!(upload);
            // Progress on stderr while it runs (the answer comes once it is armed).
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.tick().await;
            let answer = loop {
                tokio::select! {
                    a = &mut upload => break a?,
                    _ = tick.tick() => {
                        if let Ok(s) = update.call::<(), UpdateStatus>("GET", "/status", None).await {
                            let p = &s.progress;
                            eprintln!("{} {}/{}", phase(p.phase), mib(p.bytes_done), mib(p.bytes_total));
                        }
                    }
                }
            };
            println!("{}", installed_line(&answer));
        }
        UpdateCommand::Rollback { yes } => {
            if !yes {
                bail!(
                    "a rollback boots the previous version again and reboots now; run again \
                     with --yes to confirm"
                );
            }
            let a: InstallAnswer = update
                .call(
                    "POST",
                    "/rollback",
                    Some(&RollbackRequest {
                        confirm: ROLLBACK_CONFIRMATION.into(),
                    }),
                )
                .await?;
            println!("rolling back to {} (slot {}); rebooting", a.version, a.slot);
        }
        UpdateCommand::Settings {
            feed,
            proxy,
            proxy_user,
            proxy_password_from_env,
            clear_proxy_password,
            ca_cert,
            clear_ca_cert,
            json,
        } => {
            let cur: UpdateSettings = update.call::<(), _>("GET", "/settings", None).await?;
            let change = feed.is_some()
                || proxy.is_some()
                || proxy_user.is_some()
                || proxy_password_from_env
                || clear_proxy_password
                || ca_cert.is_some()
                || clear_ca_cert;
            let s = if change {
                let proxy_password = if proxy_password_from_env {
                    Some(
                        std::env::var("KEEL_PROXY_PASSWORD")
                            .context("--proxy-password-from-env: KEEL_PROXY_PASSWORD is not set")?,
                    )
                } else if clear_proxy_password {
                    Some(String::new())
                } else {
                    None
                };
                let ca_certificate = match (&ca_cert, clear_ca_cert) {
                    (Some(p), _) => Some(
                        std::fs::read_to_string(p)
                            .with_context(|| format!("reading {}", p.display()))?,
                    ),
                    (None, true) => None,
                    (None, false) => cur.ca_certificate.clone(),
                };
                let req = UpdateSettingsRequest {
                    feed_url: feed.or(cur.feed_url),
                    proxy_url: proxy.or(cur.proxy_url),
                    proxy_user: proxy_user.or(cur.proxy_user),
                    proxy_password,
                    ca_certificate,
                };
                update.call("PUT", "/settings", Some(&req)).await?
            } else {
                cur
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", render_settings(&s));
            }
        }
        UpdateCommand::Check { json } => {
            let a: AvailableUpdates = update.call::<(), _>("POST", "/check", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
            } else {
                print!("{}", render_available(&a));
            }
        }
        UpdateCommand::InstallOnline {
            version,
            app,
            reboot,
        } => {
            let a: InstallAnswer = update
                .call(
                    "POST",
                    "/install-online",
                    Some(&InstallOnlineRequest {
                        version,
                        app,
                        reboot,
                    }),
                )
                .await?;
            println!("{}", installed_line(&a));
        }
        UpdateCommand::InstallAll { yes } => {
            if !yes {
                bail!(
                    "install all reboots once per step, continuing after each healthy boot; \
                     run again with --yes to confirm"
                );
            }
            let c: ChainStatus = update.call::<(), _>("POST", "/install-all", None).await?;
            print!("{}", render_chain(&c));
            println!("rebooting into the first step now");
        }
        UpdateCommand::DownloadKey { json } => {
            let k: DownloadKeyAnswer = update.call::<(), _>("POST", "/download-key", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&k)?);
            } else {
                eprintln!(
                    "appliance {} ({}), valid until {}: give this block to the vendor",
                    k.appliance_id,
                    k.installed.join(", "),
                    k.expires
                );
                print!("{}", k.text);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::{SlotInfo, UpdateOutcome, UpdateProgress};

    #[test]
    fn status_text() {
        let s = UpdateStatus {
            running: SlotInfo {
                slot: "a".into(),
                version: Some("0.1.0".into()),
                good: true,
            },
            other: SlotInfo {
                slot: "b".into(),
                version: None,
                good: false,
            },
            progress: UpdateProgress {
                phase: UpdatePhase::Write,
                version: Some("0.2.0".into()),
                bytes_done: 1 << 20,
                bytes_total: 4 << 20,
                error: None,
            },
            last_outcome: Some(UpdateOutcome {
                kind: OutcomeKind::RolledBack,
                from_version: "0.1.0".into(),
                to_version: "0.1.9".into(),
                message: "update to 0.1.9 failed its health check, running 0.1.0 again".into(),
                at: "2026-12-01T09:00:00Z".into(),
            }),
            rollback_to: None,
            chain: Some(ChainStatus {
                steps: vec!["0.2.0".into(), "0.3.0".into()],
                done: 1,
                current: Some("0.3.0".into()),
                state: ChainState::Failed,
                message: Some("install all stopped at 0.3.0: download broke off".into()),
                started_at: "2026-12-01T09:00:00Z".into(),
            }),
            apps: vec![keel_api::AppInfo {
                name: "demo".into(),
                version: "1.0.0".into(),
                active: false,
                previous: None,
                note: Some("not merged: no loop device".into()),
            }],
        };
        let t = render_status(&s);
        assert!(
            t.ends_with("app:       demo 1.0.0 NOT active (not merged: no loop device)\n"),
            "{t}"
        );
        assert!(
            t.contains("install all: stopped, 1 of 2 steps (0.2.0 → 0.3.0)\n             install all stopped at 0.3.0"),
            "{t}"
        );
        assert!(
            t.starts_with("running:   slot a 0.1.0 (good)\nother:     slot b (no known version)\n"),
            "{t}"
        );
        assert!(
            t.contains("install:   writing 0.2.0 (1.0 MiB of 4.0 MiB)\n"),
            "{t}"
        );
        assert!(
            t.contains("last:      rolled back: update to 0.1.9 failed"),
            "{t}"
        );
        assert!(t.contains("rollback:  no previous version\n"), "{t}");
    }

    #[test]
    fn available_text() {
        let a = AvailableUpdates {
            checked_at: "t".into(),
            feed_url: "https://u.example/feed".into(),
            feed_created: "c".into(),
            feed_expires: "e".into(),
            installed: "0.1.0".into(),
            entries: vec![keel_api::AvailableEntry {
                file: "keel-0.3.0.kbundle".into(),
                component: "base".into(),
                version: "0.3.0".into(),
                size: 10,
                sha256: "00".into(),
                state: AvailableState::NeedsFirst,
                reason: Some("needs base 0.2.0 first".into()),
                steps: vec!["0.2.0".into()],
            }],
            plan: vec!["0.2.0".into(), "0.3.0".into()],
        };
        let t = render_available(&a);
        assert!(
            t.contains("base 0.3.0      not installable: needs base 0.2.0 first"),
            "{t}"
        );
        assert!(t.contains("plan:      0.2.0 → 0.3.0"), "{t}");
        let s = render_settings(&UpdateSettings {
            proxy_password_set: true,
            ..Default::default()
        });
        assert!(s.contains("password:  set\n"), "{s}");
    }

    #[tokio::test]
    async fn file_body_streams_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.kbundle");
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let body = file_body(&p).await.unwrap();
        assert_eq!(body.size_hint().exact(), Some(data.len() as u64));
        let mut body = body;
        let mut out = Vec::new();
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            out.extend_from_slice(f.unwrap().data_ref().unwrap());
        }
        assert_eq!(out, data);
    }
}
