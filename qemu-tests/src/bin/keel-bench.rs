//! Keel's first benchmark, side by side with a stock minimal Debian in the same run
//! and under the same QEMU settings (scripts/qemu-lib.sh): image sizes, boot time,
//! idle memory of the keel processes. Prints a table; `--json PATH` writes the
//! numbers. Run by scripts/bench.sh (`make bench`).
//!
//! Boot time, Keel: QEMU start → first successful HTTPS GET /appliance/api/v1/health,
//! factory-fresh (first boot) and again after setup and a clean power-off.
//! Boot time, stock Debian: QEMU start → `login:` on its serial line.
//! The two are booted alternately, `--runs` times each, one VM at a time.
//! Factory reset, Keel only (no peer does this): API request → console answering
//! in setup mode again, beside Keel's own first boot.
//!
//! `--update-downtime` runs only the update downtime bench instead
//! (scripts/bench-update-downtime.sh): on one VM, a plain reboot through the API,
//! an update to the next version (install with reboot), and a plain reboot of the
//! new version; each timed from the last HTTPS answer before the outage to the
//! first after it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use keel_qemu_tests::{
    answer, csrf_of, image_path, json_get, json_post, log_in, set_up_admin, workspace_root, Vm,
    BOOT_CEILING, HEALTH_PATH, POWEROFF_CEILING, READY_MARKER,
};
use serde_json::{json, Value};

const USAGE: &str = "usage: keel-bench [--runs N] [--idle-seconds S] [--json PATH] \
                     [--stock PATH] [--update-downtime] (the Keel image: KEEL_IMAGE, default build/keel.qcow2; \
                     keel.raw and root.squashfs beside it)";

struct Options {
    runs: usize,
    idle: Duration,
    json: Option<PathBuf>,
    stock: PathBuf,
    update_downtime: bool,
}

fn options() -> Result<Options> {
    let root = workspace_root();
    let mut o = Options {
        runs: 3,
        idle: Duration::from_secs(10),
        json: None,
        stock: root.join("build/stock.qcow2"),
        update_downtime: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--runs" => o.runs = value()?.parse().context("--runs")?,
            "--idle-seconds" => o.idle = Duration::from_secs(value()?.parse()?),
            "--json" => o.json = Some(value()?.into()),
            "--stock" => o.stock = value()?.into(),
            "--update-downtime" => o.update_downtime = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a}\n{USAGE}"),
        }
    }
    if o.runs == 0 {
        bail!("--runs must be at least 1");
    }
    Ok(o)
}

/// (apparent size, allocated size as `du` counts it) of the file behind `path`.
fn sizes(path: &Path) -> Result<(u64, u64)> {
    let m = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    Ok((m.len(), m.blocks() * 512))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn stats(xs: &[f64]) -> Value {
    json!({
        "runs_s": xs,
        "median_s": median(xs),
        "min_s": xs.iter().copied().fold(f64::INFINITY, f64::min),
        "max_s": xs.iter().copied().fold(0.0, f64::max),
    })
}

/// One Keel appliance's numbers.
struct KeelRun {
    /// QEMU start → first HTTPS answer, factory-fresh (first boot: /data grown,
    /// identity key and certificate made).
    first: f64,
    /// The same, booting again after setup and a clean power-off through the API.
    second: f64,
    /// Factory reset through the API: request → console answering again and
    /// asking for setup (the wipe, a reboot, first-boot provisioning).
    reset: f64,
    /// Keel processes from /status after setup and an idle period (when asked).
    processes: Option<Vec<Value>>,
}

/// Boots a fresh Keel, sets it up (and with `idle`, lets it idle and reads its
/// processes), powers it off through the API and boots it again.
async fn boot_keel(image: &Path, idle: Option<Duration>) -> Result<KeelRun> {
    let mut vm = Vm::start("bench-keel", image)?;
    let first = vm.wait_https(BOOT_CEILING).await?.as_secs_f64();
    vm.wait_serial(READY_MARKER, BOOT_CEILING).await?;
    let code = vm
        .setup_code()
        .context("no setup code on the serial line")?;
    let (http, _) = vm.client();
    let (st, body) = json_post(
        &http,
        &vm.url("/appliance/api/v1/setup"),
        json!({"setup_code": code, "password": "bench password"}),
        None,
    )
    .await?;
    if st != 200 {
        bail!("setup answered {st}: {body}");
    }
    let csrf = csrf_of(&body)?;
    let mut processes = None;
    if let Some(idle) = idle {
        tokio::time::sleep(idle).await;
        let (st, status) = json_get(&http, &vm.url("/appliance/api/v1/status")).await?;
        if st != 200 {
            bail!("status answered {st}: {status}");
        }
        processes = Some(
            status["processes"]
                .as_array()
                .context("no processes in /status")?
                .clone(),
        );
    }
    let (st, body) = json_post(
        &http,
        &vm.url("/appliance/api/v1/system/shutdown"),
        json!({}),
        Some(&csrf),
    )
    .await?;
    if st != 202 {
        bail!("shutdown answered {st}: {body}");
    }
    vm.wait_exit(POWEROFF_CEILING).await?;
    vm.boot()?;
    let second = vm.wait_https(BOOT_CEILING).await?.as_secs_f64();
    let reset = factory_reset(&vm).await?;
    Ok(KeelRun {
        first,
        second,
        reset,
        processes,
    })
}

/// Logs in, requests a factory reset and times it until the console answers again
/// in setup mode. Fresh connections throughout: the reboot kills old ones.
async fn factory_reset(vm: &Vm) -> Result<f64> {
    let (http, _) = vm.client();
    let (st, body) = json_post(
        &http,
        &vm.url("/appliance/api/v1/login"),
        json!({"username": "admin", "password": "bench password"}),
        None,
    )
    .await?;
    if st != 200 {
        bail!("login answered {st}: {body}");
    }
    let csrf = csrf_of(&body)?;
    let start = std::time::Instant::now();
    let (st, body) = json_post(
        &http,
        &vm.url("/appliance/api/v1/system/factory-reset"),
        json!({"confirm": "RESET"}),
        Some(&csrf),
    )
    .await?;
    if st != 202 {
        bail!("factory reset answered {st}: {body}");
    }
    let url = vm.url("/appliance/api/v1/setup");
    loop {
        if start.elapsed() > BOOT_CEILING {
            bail!("console not back in setup mode within {BOOT_CEILING:?}");
        }
        let (probe, _) = vm.client();
        if let Ok(Ok((200, body))) =
            tokio::time::timeout(Duration::from_secs(2), json_get(&probe, &url)).await
        {
            if body["setup_required"] == true {
                return Ok(start.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Boots the stock Debian once; seconds from QEMU start to `login:` on serial.
async fn boot_stock(image: &Path) -> Result<f64> {
    let mut vm = Vm::start("bench-stock", image)?;
    vm.wait_serial("login:", BOOT_CEILING).await?;
    Ok(vm.started().elapsed().as_secs_f64())
}

const DOWNTIME_PASSWORD: &str = "bench password";
/// A pause between two answers this long is the outage (probes go out every
/// 100 ms and answer within a fraction of a second while the console is up).
const OUTAGE_GAP: Duration = Duration::from_secs(2);

/// GET /health every 100 ms, each on a new connection (a reboot kills old ones),
/// remembering when each successful answer arrived.
struct Prober {
    answers: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Prober {
    fn start(vm: &Vm) -> Self {
        let (client, _) = vm.client();
        let url = vm.url(HEALTH_PATH);
        let answers = Arc::new(Mutex::new(Vec::new()));
        let seen = answers.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let get = client.get(&url).timeout(Duration::from_secs(3)).send();
                let seen = seen.clone();
                tokio::spawn(async move {
                    if get.await.is_ok_and(|r| r.status().is_success()) {
                        seen.lock().unwrap().push(Instant::now());
                    }
                });
            }
        });
        Self { answers, task }
    }

    /// Waits for the first outage that ends after `from`: seconds from the last
    /// answer before it to the first answer after it.
    async fn outage_after(&self, from: Instant, ceiling: Duration) -> Result<f64> {
        let start = Instant::now();
        loop {
            {
                let mut a = self.answers.lock().unwrap();
                a.sort();
                // From the last answer at or before `from` on.
                let first = a.iter().rposition(|t| *t <= from).unwrap_or(0);
                if let Some(w) = a[first..]
                    .windows(2)
                    .find(|w| w[1].duration_since(w[0]) >= OUTAGE_GAP)
                {
                    return Ok(w[1].duration_since(w[0]).as_secs_f64());
                }
            }
            if start.elapsed() > ceiling {
                bail!("no outage and answer again within {ceiling:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plain reboot through the API: its downtime, then logged in again.
async fn timed_reboot(vm: &Vm, csrf: &str, http: &reqwest::Client) -> Result<f64> {
    let probe = Prober::start(vm);
    let (st, body) = json_post(
        http,
        &vm.url("/appliance/api/v1/system/reboot"),
        json!({}),
        Some(csrf),
    )
    .await?;
    if st != 202 {
        bail!("reboot answered {st}: {body}");
    }
    probe.outage_after(Instant::now(), BOOT_CEILING).await
}

/// keel-update starts after the boot's health gate: waits until the console
/// reaches it and returns its status.
async fn update_service(http: &reqwest::Client, vm: &Vm) -> Result<Value> {
    let start = Instant::now();
    loop {
        let (st, body) = json_get(http, &vm.url("/appliance/api/v1/update")).await?;
        if st == 200 {
            return Ok(body);
        }
        if st != 503 || start.elapsed() > Duration::from_secs(180) {
            bail!("keel-update not reachable through the console: {st} {body}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The next patch version after `v` (x.y.z).
fn next_version(v: &str) -> Result<String> {
    let parts: Vec<u64> = v
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("VERSION {v:?} is not x.y.z"))?;
    match parts[..] {
        [x, y, z] => Ok(format!("{x}.{y}.{}", z + 1)),
        _ => bail!("VERSION {v:?} is not x.y.z"),
    }
}

/// Update downtime vs a plain reboot, on one VM (see the top of this file).
async fn update_downtime(o: &Options) -> Result<()> {
    let root = workspace_root();
    let image = image_path();
    let base = std::fs::read_to_string(root.join("VERSION"))?
        .trim()
        .to_owned();
    let next = next_version(&base)?;
    let work = tempfile::tempdir()?;
    let bundle = work.path().join(format!("keel-{next}.bundle"));
    // Made from the built root slot while the VM boots.
    let making = {
        let (script, bundle, next) = (
            root.join("image/make-test-bundle.sh"),
            bundle.clone(),
            next.clone(),
        );
        std::thread::spawn(move || {
            std::process::Command::new(script)
                .arg(next)
                .arg(bundle)
                .status()
        })
    };
    let load_before = load_average();
    let mut vm = Vm::start("bench-downtime", &image)?;
    vm.wait_https(BOOT_CEILING).await?;
    vm.wait_serial(READY_MARKER, BOOT_CEILING).await?;
    let (http, csrf, _) = set_up_admin(&vm, DOWNTIME_PASSWORD).await?;
    update_service(&http, &vm).await?;
    let made = making
        .join()
        .map_err(|_| anyhow::anyhow!("make-test-bundle.sh thread"))??;
    if !made.success() {
        bail!("image/make-test-bundle.sh {next}: {made}");
    }
    let bytes = std::fs::read(&bundle)?;
    eprintln!(
        "update downtime: {base} -> {next} ({} bytes), one VM; host load {load_before}",
        bytes.len()
    );

    let reboot_old = timed_reboot(&vm, &csrf, &http)
        .await
        .context("reboot (old version)")?;
    eprintln!("  plain reboot ({base}): {reboot_old:.2} s without an answer");
    let (http, csrf) = log_in(&vm, DOWNTIME_PASSWORD).await?;
    update_service(&http, &vm).await?;

    // The install streams while the old version serves; the outage is the reboot
    // into the new slot (its trial boot) after the answer.
    let probe = Prober::start(&vm);
    let resp = http
        .post(vm.url("/appliance/api/v1/update/install?reboot=true"))
        .header("x-csrf-token", &csrf)
        .header("content-type", "application/octet-stream")
        .timeout(Duration::from_secs(600))
        .body(bytes)
        .send()
        .await?;
    let installed = Instant::now();
    let (st, body) = answer(resp).await;
    if st != 200 || body["rebooting"] != true {
        bail!("install answered {st}: {body}");
    }
    let update = probe
        .outage_after(installed, BOOT_CEILING)
        .await
        .context("update")?;
    drop(probe);
    let (http, csrf) = log_in(&vm, DOWNTIME_PASSWORD).await?;
    let (_, status) = json_get(&http, &vm.url("/appliance/api/v1/status")).await?;
    if status["version"] != next.as_str() || status["slot"] != "b" {
        bail!("after the update: not {next} in slot b: {status}");
    }
    eprintln!("  update ({base} -> {next}): {update:.2} s without an answer");
    // Marked good before the next reboot, so that one is a plain boot again.
    let start = Instant::now();
    loop {
        let u = update_service(&http, &vm).await?;
        if u["last_outcome"]["kind"] == "installed" {
            break;
        }
        if start.elapsed() > Duration::from_secs(180) {
            bail!("the update was not marked good: {u}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let reboot_new = timed_reboot(&vm, &csrf, &http)
        .await
        .context("reboot (new version)")?;
    eprintln!("  plain reboot ({next}): {reboot_new:.2} s without an answer");
    let load_after = load_average();

    let reboot = (reboot_old + reboot_new) / 2.0;
    let ratio = update / reboot;
    println!();
    println!(
        "{:<52} {:>8}",
        "downtime: last HTTPS answer -> first again", "s"
    );
    println!(
        "{:<52} {:>8.2}",
        format!("plain reboot ({base})"),
        reboot_old
    );
    println!(
        "{:<52} {:>8.2}",
        format!("update {base} -> {next} (install answered -> new)"),
        update
    );
    println!(
        "{:<52} {:>8.2}",
        format!("plain reboot ({next})"),
        reboot_new
    );
    println!("update / mean plain reboot: {ratio:.2}x (goal <= 1.1x); host load {load_before} -> {load_after}");
    if let Some(path) = &o.json {
        let report = json!({
            "version": base,
            "to": next,
            "host_load": {"before": load_before, "after": load_after},
            "downtime_s": {"reboot_old": reboot_old, "update": update, "reboot_new": reboot_new},
            "ratio_update_to_mean_reboot": ratio,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let o = options()?;
    if o.update_downtime {
        return update_downtime(&o).await;
    }
    let root = workspace_root();
    let image = image_path();
    // The raw disk and the slot image lie beside the qcow2 (image/build.sh).
    let dir = image.parent().unwrap_or(Path::new("."));
    let raw = dir.join("keel.raw");
    let squashfs = dir.join("root.squashfs");
    for p in [&image, &raw, &squashfs, &o.stock] {
        if !p.exists() {
            bail!(
                "{} is missing (make image; image/build-stock.sh for the stock peer)",
                p.display()
            );
        }
    }
    let (raw_len, raw_alloc) = sizes(&raw)?;
    let (qcow2, _) = sizes(&image)?;
    let (squash, _) = sizes(&squashfs)?;
    let (stock_qcow2, _) = sizes(&o.stock)?;

    let cpus = std::env::var("KEEL_VM_CPUS").unwrap_or_else(|_| "2".into());
    let mem = std::env::var("KEEL_VM_MEM").unwrap_or_else(|_| "1024".into());
    let load_before = load_average();
    eprintln!(
        "booting Keel and stock Debian alternately, {} times each (-smp {cpus} -m {mem}; \
         host load {load_before})",
        o.runs
    );
    let (mut keel, mut keel_again, mut stock) = (Vec::new(), Vec::new(), Vec::new());
    let mut resets = Vec::new();
    let mut processes = Vec::new();
    for run in 1..=o.runs {
        let idle = (run == 1).then_some(o.idle);
        let k = boot_keel(&image, idle).await.context("Keel boot")?;
        eprintln!(
            "  run {run}: Keel console answering after {:.2} s (first boot), {:.2} s (second)",
            k.first, k.second
        );
        keel.push(k.first);
        keel_again.push(k.second);
        eprintln!(
            "  run {run}: factory reset, request -> setup mode again: {:.2} s",
            k.reset
        );
        resets.push(k.reset);
        if let Some(p) = k.processes {
            processes = p;
        }
        let t = boot_stock(&o.stock).await.context("stock Debian boot")?;
        eprintln!("  run {run}: stock Debian login: after {t:.2} s");
        stock.push(t);
    }
    let load_after = load_average();
    let ratio = median(&keel) / median(&stock);
    let ratio_again = median(&keel_again) / median(&stock);
    let rss: u64 = processes.iter().filter_map(|p| p["rss_kib"].as_u64()).sum();
    let detail: Vec<String> = processes
        .iter()
        .map(|p| format!("{}={}", p["name"].as_str().unwrap_or("?"), p["rss_kib"]))
        .collect();

    println!();
    println!(
        "{:<48} {:>12} {:>14} {:>7}",
        format!("median of {} boots, -smp {cpus} -m {mem}", o.runs),
        "Keel",
        "stock Debian",
        "ratio"
    );
    println!(
        "{:<48} {:>10.2} s {:>12.2} s {:>7.2}",
        "boot: QEMU start -> HTTPS answer / login:",
        median(&keel),
        median(&stock),
        ratio
    );
    println!(
        "{:<48} {:>10.2} s {:>12.2} s {:>7.2}",
        "  Keel booting again (set up, powered off)",
        median(&keel_again),
        median(&stock),
        ratio_again
    );
    println!(
        "{:<48} {:>10.2} s   (first boot {:.2} s, ratio {:.2})",
        "factory reset: request -> console in setup mode",
        median(&resets),
        median(&keel),
        median(&resets) / median(&keel)
    );
    println!(
        "{:<48} {:>8.1} MiB {:>10.1} MiB {:>7.2}",
        "qcow2 image",
        mib(qcow2),
        mib(stock_qcow2),
        qcow2 as f64 / stock_qcow2 as f64
    );
    println!(
        "{:<48} {:>8.1} MiB   (of {:.0} MiB)",
        "raw image, allocated (du)",
        mib(raw_alloc),
        mib(raw_len)
    );
    println!("{:<48} {:>8.1} MiB", "root slot (squashfs)", mib(squash));
    println!(
        "{:<48} {:>8} KiB   ({})",
        format!(
            "idle RSS of keel processes ({} s after setup)",
            o.idle.as_secs()
        ),
        rss,
        detail.join(" ")
    );
    let runs = |xs: &[f64]| {
        xs.iter()
            .map(|t| format!("{t:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "boot runs (s): Keel {} | Keel again {} | stock {}; host load {load_before} -> {load_after}",
        runs(&keel),
        runs(&keel_again),
        runs(&stock)
    );

    if let Some(path) = &o.json {
        let report = json!({
            "version": std::fs::read_to_string(root.join("VERSION"))?.trim(),
            "qemu": {"cpus": cpus, "mem_mib": mem, "firmware": "bios"},
            "host_load": {"before": load_before, "after": load_after},
            "boot": {
                "keel_https_ready": stats(&keel),
                "keel_https_ready_second_boot": stats(&keel_again),
                "stock_login_prompt": stats(&stock),
                "ratio_of_medians": ratio,
                "ratio_of_medians_second_boot": ratio_again,
                "keel_factory_reset_to_setup_mode": stats(&resets),
            },
            "sizes_bytes": {
                "raw_apparent": raw_len,
                "raw_allocated": raw_alloc,
                "qcow2": qcow2,
                "root_squashfs": squash,
                "stock_qcow2": stock_qcow2,
            },
            "idle": {
                "seconds_after_setup": o.idle.as_secs(),
                "rss_kib_total": rss,
                "processes": processes,
            },
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
