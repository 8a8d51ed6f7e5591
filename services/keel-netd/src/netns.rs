//! Network namespaces: tests and benches run netd against a namespace of their own,
//! never the host's interfaces. A namespace is a property of a thread, so netd either
//! enters one before its runtime starts (`--netns`), or a test runs work on a thread
//! of its own that entered it.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

/// `/run/netns/NAME` for a name, as `ip netns add` creates it; a path stays a path.
pub fn path_of(name_or_path: &str) -> PathBuf {
    if name_or_path.contains('/') {
        PathBuf::from(name_or_path)
    } else {
        Path::new("/run/netns").join(name_or_path)
    }
}

/// Moves the calling thread into the network namespace at `path`. Threads it starts
/// afterwards inherit the namespace.
pub fn enter(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    nix::sched::setns(f, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Runs `f` to completion on a new thread inside the namespace, on a runtime of its
/// own: netlink sockets and `/proc/sys/net` opened there all belong to the namespace.
pub fn run_in<F, Fut, T>(path: &Path, f: F) -> std::io::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = path.to_path_buf();
    std::thread::spawn(move || -> std::io::Result<T> {
        enter(&path)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(f()))
    })
    .join()
    // A failed assertion inside shows as itself, not as a lost thread.
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
