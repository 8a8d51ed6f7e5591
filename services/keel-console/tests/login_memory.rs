//! What a flood of simultaneous wrong logins costs in resident memory: each
//! argon2 check needs a 19 MiB work area, so only a few may run at once. Alone in
//! its test binary (its own process), so the measurement is its own.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use keel_console::auth::{Auth, AuthError, AuthLimits};

/// One argon2 work area with the default parameters (m = 19456 KiB).
const AREA: u64 = 19456 * 1024;

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// The highest resident size while `f` runs (sampled every millisecond).
fn peak_rss_during<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss()));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let out = f();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    (peak.load(Ordering::Relaxed), out)
}

/// `n` logins at once, from the addresses `client(i)`.
fn flood(a: &Arc<Auth>, n: usize, client: impl Fn(usize) -> IpAddr) -> Vec<AuthError> {
    let start = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (a, start, ip) = (a.clone(), start.clone(), client(i));
            std::thread::spawn(move || {
                start.wait();
                a.login(ip, "admin", "wrong password")
                    .map(|_| ())
                    .unwrap_err()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn simultaneous_wrong_logins_cannot_exhaust_memory() {
    // Measured from before the first hash: the work areas it keeps count too.
    let baseline = rss();
    let dir = tempfile::tempdir().unwrap();
    let a = Auth::open(dir.path()).unwrap();
    let code = a.setup_code().unwrap();
    a.setup("192.0.2.1".parse().unwrap(), &code, "a good password")
        .unwrap();
    let a = Arc::new(a);
    let permits = AuthLimits::default().verify_permits as u64;
    // Thread stacks, the sampler, allocator slack.
    let slack = 24 << 20;

    // 60 at once from one address (what got the console OOM-killed).
    let (peak, results) = peak_rss_during(|| flood(&a, 60, |_| "198.51.100.1".parse().unwrap()));
    let checked = results
        .iter()
        .filter(|e| **e == AuthError::WrongPassword)
        .count();
    println!(
        "one source: {checked} checked, peak RSS +{} MiB",
        (peak - baseline) >> 20
    );
    assert!(checked <= 5, "{checked} passwords checked from one address");
    assert!(
        peak - baseline <= permits * AREA + slack,
        "one source: resident size grew by {} MiB",
        (peak - baseline) >> 20
    );

    // 60 at once from 60 addresses: the account's budget and the permits bound it
    // (the work areas kept from above count against the same bound).
    let (peak, results) =
        peak_rss_during(|| flood(&a, 60, |i| format!("203.0.113.{i}").parse().unwrap()));
    let checked = results
        .iter()
        .filter(|e| **e == AuthError::WrongPassword)
        .count();
    println!(
        "60 sources: {checked} checked, peak RSS +{} MiB, {:?}",
        (peak.saturating_sub(baseline)) >> 20,
        results
    );
    assert!(
        peak.saturating_sub(baseline) <= permits * AREA + slack,
        "60 sources: resident size grew by {} MiB",
        (peak - baseline) >> 20
    );
    // And the work areas went back to the kernel: the idle console stays small.
    let after = rss();
    println!("after: +{} MiB", after.saturating_sub(baseline) >> 20);
    assert!(
        after.saturating_sub(baseline) <= 12 << 20,
        "still {} MiB more resident once idle",
        after.saturating_sub(baseline) >> 20
    );
}
