//! The audit log on disk: one file per service in a shared directory
//! (`/data/audit/<service>.log` on the appliance), one JSON object per line.
//!
//! - **Format.** The first line of every file is `{"format":1,"service":".."}`
//!   (the keel-core format convention: `"format": N`, absent means 1); every other
//!   line is one [`AuditRecord`]. A reader skips lines it cannot parse — a torn last
//!   line after a power cut costs that record, never the file.
//! - **Append-only.** The file is opened `O_APPEND` (mode 0640: the console reads
//!   the other services' files through the directory's group); each record is one
//!   `write` of a whole line followed by `fdatasync`. fdatasync rather than fsync:
//!   the inode's times need not be durable, the data and size must; one flush per
//!   record costs a few milliseconds, which admin traffic can afford, and a record
//!   the admin was answered for must survive a power cut.
//! - **Bounded.** A file reaching [`MAX_FILE_BYTES`] becomes `<service>.log.1`
//!   (older ones shift up to [`KEEP_ROTATED`], the oldest goes): at most
//!   `(KEEP_ROTATED + 1) × MAX_FILE_BYTES` per service.
//! - **Secrets never.** [`AuditWriter::append`] takes the record's typed fields; no
//!   request body ever reaches it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use keel_api::{AuditQuery, AuditRecord, AuditVia};

/// The shared audit directory on the appliance.
pub const DEFAULT_DIR: &str = "/data/audit";
/// A file is rotated before it would grow past this.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Rotated files kept per service (`.log.1` newest … `.log.4` oldest).
pub const KEEP_ROTATED: u32 = 4;
/// Readable by the directory's group (the console), writable by the service only.
pub const FILE_MODE: u32 = 0o640;
/// Format of the files written by this build.
pub const FORMAT: u32 = 1;
/// Records one query returns at most.
pub const MAX_LIMIT: usize = 1000;
/// Longest user name, action or target kept; longer text is cut.
pub const MAX_FIELD: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Query(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `ok`, `refused: <reason>` or `failed: <status>`, as the `result` field says it.
pub enum Outcome<'a> {
    Ok,
    Refused(&'a str),
    Failed(&'a str),
}

impl Outcome<'_> {
    pub fn text(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Refused(r) => format!("refused: {}", clean(r, MAX_FIELD)),
            Outcome::Failed(s) => format!("failed: {}", clean(s, MAX_FIELD)),
        }
    }
}

/// Text fit for a record: control characters replaced, at most `max` characters.
pub fn clean(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(max)
        .collect()
}

/// Now, UTC, RFC 3339 with milliseconds: the records' fixed-width `ts`.
pub fn now() -> String {
    ts_of(time::OffsetDateTime::now_utc())
}

fn ts_of(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// A time bound of a query in the records' form: RFC 3339 (any offset), or a date
/// or date and minute/second taken as UTC. `end` extends a date to its last moment.
pub fn parse_bound(text: &str, end: bool) -> Result<String, AuditError> {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    let text = text.trim();
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(ts_of(t));
    }
    let as_utc = |p: time::PrimitiveDateTime| ts_of(p.assume_utc());
    if let Ok(p) = time::PrimitiveDateTime::parse(
        text,
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
    ) {
        return Ok(as_utc(p));
    }
    if let Ok(p) = time::PrimitiveDateTime::parse(
        text,
        format_description!("[year]-[month]-[day]T[hour]:[minute]"),
    ) {
        let p = if end {
            p + time::Duration::seconds(59) + time::Duration::milliseconds(999)
        } else {
            p
        };
        return Ok(as_utc(p));
    }
    if let Ok(d) = time::Date::parse(text, format_description!("[year]-[month]-[day]")) {
        let t = if end {
            time::Time::from_hms_milli(23, 59, 59, 999).expect("valid time")
        } else {
            time::Time::MIDNIGHT
        };
        return Ok(as_utc(time::PrimitiveDateTime::new(d, t)));
    }
    Err(AuditError::Query(format!(
        "{text:?} is not a time: use RFC 3339 (2026-12-01T18:00:00Z) or a UTC date \
         (2026-12-01, 2026-12-01T18:00)"
    )))
}

/// One service's writer; records of one process go through one `AuditWriter`.
pub struct AuditWriter {
    dir: PathBuf,
    service: String,
    file: Mutex<Option<File>>,
}

impl AuditWriter {
    pub fn new(dir: impl Into<PathBuf>, service: &str) -> Self {
        Self {
            dir: dir.into(),
            service: service.to_owned(),
            file: Mutex::new(None),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.service))
    }

    /// The one call a service makes per action. `source` is the client address or
    /// `local`; user, action and target are cut to [`MAX_FIELD`] and cleaned of
    /// control characters.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        user: &str,
        source: &str,
        via: AuditVia,
        action: &str,
        target: Option<&str>,
        outcome: Outcome<'_>,
    ) -> Result<(), AuditError> {
        self.append(&AuditRecord {
            ts: now(),
            service: self.service.clone(),
            user: clean(user, MAX_FIELD),
            source: clean(source, MAX_FIELD),
            via,
            action: clean(action, MAX_FIELD),
            target: target.map(|t| clean(t, MAX_FIELD)),
            result: outcome.text(),
        })
    }

    /// As [`record`](Self::record), logging a failure instead of returning it: the
    /// action happened whether or not its record could be written.
    pub fn record_or_warn(
        &self,
        user: &str,
        source: &str,
        via: AuditVia,
        action: &str,
        target: Option<&str>,
        outcome: Outcome<'_>,
    ) {
        if let Err(e) = self.record(user, source, via, action, target, outcome) {
            tracing::warn!("audit record of {action} not written: {e}");
        }
    }

    pub fn append(&self, rec: &AuditRecord) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(rec).expect("a record serializes");
        line.push(b'\n');
        let path = self.path();
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let size = match guard.as_ref() {
            Some(f) => f.metadata().map_err(io_err(&path))?.len(),
            None => std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        };
        if size > 0 && size + line.len() as u64 > MAX_FILE_BYTES {
            *guard = None;
            self.rotate()?;
        }
        if guard.is_none() {
            *guard = Some(self.open()?);
        }
        let file = guard.as_mut().expect("opened above");
        // One write of the whole line: O_APPEND puts it at the end in one piece.
        file.write_all(&line).map_err(io_err(&path))?;
        file.sync_data().map_err(io_err(&path))?;
        Ok(())
    }

    /// Opens the current file for appending; a new one gets the format line, one
    /// that a crash left without a final newline gets one (so the next record does
    /// not join the torn one).
    fn open(&self) -> Result<File, AuditError> {
        let path = self.path();
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(FILE_MODE)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len == 0 {
            // The service's umask may be stricter: the console reads this file
            // through the group.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
                .map_err(io_err(&path))?;
            let header = serde_json::json!({ "format": FORMAT, "service": self.service });
            let mut bytes = serde_json::to_vec(&header).expect("serializes");
            bytes.push(b'\n');
            file.write_all(&bytes).map_err(io_err(&path))?;
            file.sync_data().map_err(io_err(&path))?;
            // The new name must survive a power cut too.
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
        } else {
            let mut last = [0u8];
            file.seek(SeekFrom::End(-1)).map_err(io_err(&path))?;
            file.read_exact(&mut last).map_err(io_err(&path))?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(io_err(&path))?;
            }
        }
        Ok(file)
    }

    fn rotate(&self) -> Result<(), AuditError> {
        let base = self.path();
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", base.display()));
        for n in (1..KEEP_ROTATED).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1)).map_err(io_err(&from))?;
            }
        }
        std::fs::rename(&base, numbered(1)).map_err(io_err(&base))?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// This process's writer, for [`local`]; set once by [`init`].
static SERVICE_LOG: std::sync::OnceLock<std::sync::Arc<AuditWriter>> = std::sync::OnceLock::new();

/// Names where this service's records go (`<dir>/<service>.log`); its `main` calls
/// this once, before serving.
pub fn init(dir: impl Into<PathBuf>, service: &str) {
    let _ = SERVICE_LOG.set(std::sync::Arc::new(AuditWriter::new(dir, service)));
}

/// Records an action a local front end asked this service for over its socket.
/// `front_end` is what the request names as its maker: `keelctl` or `local-menu`
/// (user `root`, source `local`). For `console` nothing is written here: the console
/// records the action itself, with the admin's name and address. A no-op before
/// [`init`] (tests, a service run by hand without an audit directory).
pub async fn local<T, E: std::fmt::Display>(
    front_end: &str,
    action: &str,
    target: Option<&str>,
    result: &Result<T, E>,
) {
    let via = match front_end {
        "console" => return,
        "local-menu" => AuditVia::LocalMenu,
        _ => AuditVia::Keelctl,
    };
    let Some(writer) = SERVICE_LOG.get().cloned() else {
        return;
    };
    let error = result.as_ref().err().map(|e| e.to_string());
    let (action, target) = (action.to_owned(), target.map(str::to_owned));
    let done = tokio::task::spawn_blocking(move || {
        let outcome = match &error {
            None => Outcome::Ok,
            Some(e) => Outcome::Failed(e),
        };
        writer.record_or_warn("root", "local", via, &action, target.as_deref(), outcome);
    })
    .await;
    if let Err(e) = done {
        tracing::warn!("audit record not written: {e}");
    }
}

/// Middleware for a service's local API: every change a root process asks for —
/// keelctl, or the local menu (`keel-menu`) — goes to this service's audit file
/// ([`init`]) as user `root` from `local`, named by method and route, with the
/// answer's status as the result. Other services' calls (the console, which
/// records the admin's action itself; keel-failover) run as their own users and
/// are not recorded here. A no-op before [`init`].
pub async fn local_changes(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::extract::{ConnectInfo, MatchedPath};
    let method = req.method().clone();
    let peer = req
        .extensions()
        .get::<ConnectInfo<crate::local_api::Peer>>()
        .map(|c| c.0);
    let writer = SERVICE_LOG.get().cloned();
    let (Some(writer), Some(peer)) = (writer, peer) else {
        return next.run(req).await;
    };
    if matches!(method, axum::http::Method::GET | axum::http::Method::HEAD) || peer.uid != Some(0) {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let via = match peer.pid.map(front_end_of) {
        Some(AuditVia::LocalMenu) => AuditVia::LocalMenu,
        _ => AuditVia::Keelctl,
    };
    let resp = next.run(req).await;
    let status = resp.status();
    let code = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let action = format!("{method} {route}");
    let done = tokio::task::spawn_blocking(move || {
        let outcome = if status.is_client_error() {
            Outcome::Refused(code.trim())
        } else if status.is_server_error() {
            Outcome::Failed(code.trim())
        } else {
            Outcome::Ok
        };
        writer.record_or_warn("root", "local", via, &action, None, outcome);
    })
    .await;
    if let Err(e) = done {
        tracing::warn!("audit record not written: {e}");
    }
    resp
}

/// Which local front end process `pid` is, by its name.
fn front_end_of(pid: i32) -> AuditVia {
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) if comm.trim() == "keel-menu" => AuditVia::LocalMenu,
        _ => AuditVia::Keelctl,
    }
}

/// A query resolved: bounds in the records' form, limit capped.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub user: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: usize,
    pub offset: usize,
}

impl Filter {
    /// Empty fields mean "no filter"; a bad time is refused with a message.
    pub fn from_query(q: &AuditQuery, default_limit: usize) -> Result<Self, AuditError> {
        fn some(s: &Option<String>) -> Option<&str> {
            s.as_deref().map(str::trim).filter(|s| !s.is_empty())
        }
        let since = some(&q.since).map(|s| parse_bound(s, false)).transpose()?;
        let until = some(&q.until).map(|s| parse_bound(s, true)).transpose()?;
        Ok(Self {
            user: some(&q.user).map(str::to_owned),
            since,
            until,
            limit: q.limit.unwrap_or(default_limit).clamp(1, MAX_LIMIT),
            offset: q.offset.unwrap_or(0),
        })
    }

    fn matches(&self, r: &AuditRecord) -> bool {
        self.user.as_ref().is_none_or(|u| &r.user == u)
            && self
                .since
                .as_ref()
                .is_none_or(|s| r.ts.as_str() >= s.as_str())
            && self
                .until
                .as_ref()
                .is_none_or(|u| r.ts.as_str() <= u.as_str())
    }
}

/// Records matching `filter` from every service's files in `dir`, newest first,
/// and whether more match beyond the page. A missing directory is an empty log.
pub fn read(dir: &Path, filter: &Filter) -> Result<(Vec<AuditRecord>, bool), AuditError> {
    let mut all = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((all, false)),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_log_name(p))
        .collect();
    files.sort();
    for path in files {
        read_file(&path, filter, &mut all)?;
    }
    // Fixed-width UTC stamps: text order is time order. Stable, so records with one
    // stamp keep their file order (reversed with the rest).
    all.sort_by(|a, b| a.ts.cmp(&b.ts));
    all.reverse();
    let more = all.len() > filter.offset + filter.limit;
    let page = all
        .into_iter()
        .skip(filter.offset)
        .take(filter.limit)
        .collect();
    Ok((page, more))
}

/// `<service>.log` or `<service>.log.<n>`.
fn is_log_name(p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    match name.split_once(".log") {
        Some((svc, rest)) => {
            !svc.is_empty()
                && (rest.is_empty()
                    || rest
                        .strip_prefix('.')
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
        }
        None => false,
    }
}

fn read_file(path: &Path, filter: &Filter, out: &mut Vec<AuditRecord>) -> Result<(), AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        // Rotated away between listing and opening: its records are in `.1` now,
        // which the listing may have missed; the next read sees them.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    };
    // Bounded by rotation; `take` guards against a file grown by hand.
    let reader = BufReader::new(file.take(2 * MAX_FILE_BYTES));
    let mut skipped = 0usize;
    for line in reader.split(b'\n') {
        let line = line.map_err(io_err(path))?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<AuditRecord>(&line) {
            Ok(r) if filter.matches(&r) => out.push(r),
            Ok(_) => {}
            // The format line, or a line torn by a crash.
            Err(_) if line.starts_with(b"{\"format\"") => {}
            Err(_) => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(path = %path.display(), skipped, "unreadable audit lines skipped");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts: &str, service: &str, user: &str) -> AuditRecord {
        AuditRecord {
            ts: ts.into(),
            service: service.into(),
            user: user.into(),
            source: "local".into(),
            via: AuditVia::Keelctl,
            action: "test.action".into(),
            target: None,
            result: "ok".into(),
        }
    }

    fn all() -> Filter {
        Filter {
            limit: MAX_LIMIT,
            ..Filter::default()
        }
    }

    #[test]
    fn records_are_lines_after_a_format_line_and_the_file_is_0640() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let w = AuditWriter::new(d.path(), "netd");
        w.record(
            "root",
            "local",
            AuditVia::Keelctl,
            "net.config.apply",
            Some("enp0s2"),
            Outcome::Ok,
        )
        .unwrap();
        w.record(
            "bad\nname\u{7}",
            "local",
            AuditVia::Keelctl,
            "net.config.confirm",
            None,
            Outcome::Refused("nothing pending"),
        )
        .unwrap();
        let text = std::fs::read_to_string(d.path().join("netd.log")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], r#"{"format":1,"service":"netd"}"#);
        let first: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(first["action"], "net.config.apply");
        assert_eq!(first["target"], "enp0s2");
        assert_eq!(first["via"], "keelctl");
        assert_eq!(first["result"], "ok");
        let ts = first["ts"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-12-01T18:42:14.123Z".len(), "{ts}");
        assert!(ts.ends_with('Z'));
        let second: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(second["user"], "bad?name?");
        assert_eq!(second["result"], "refused: nothing pending");
        let mode = std::fs::metadata(d.path().join("netd.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, FILE_MODE);
    }

    #[test]
    fn rotation_bounds_the_files_of_a_service() {
        let d = tempfile::tempdir().unwrap();
        let w = AuditWriter::new(d.path(), "console");
        // Large records (`append` does not cut fields) keep the count of flushes low;
        // enough for every rotated file to fill and the oldest to be dropped twice.
        let per_record = 10 * 1024;
        let n = (MAX_FILE_BYTES as usize / per_record) * (KEEP_ROTATED as usize + 3);
        for i in 0..n {
            let mut r = rec(&now(), "console", "admin");
            r.action = format!("POST /t/{i}");
            r.target = Some("x".repeat(per_record - 200));
            w.append(&r).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "console.log",
                "console.log.1",
                "console.log.2",
                "console.log.3",
                "console.log.4"
            ]
        );
        let total: u64 = names
            .iter()
            .map(|n| {
                let len = std::fs::metadata(d.path().join(n)).unwrap().len();
                assert!(len <= MAX_FILE_BYTES, "{n}: {len}");
                len
            })
            .sum();
        assert!(total <= (KEEP_ROTATED as u64 + 1) * MAX_FILE_BYTES);
        // Every file starts with its format line; the newest record is the last one.
        for n in &names {
            let text = std::fs::read_to_string(d.path().join(n)).unwrap();
            assert!(text.starts_with(r#"{"format":1,"#), "{n}");
        }
        let (page, more) = read(d.path(), &Filter { limit: 1, ..all() }).unwrap();
        assert!(more);
        assert_eq!(page[0].action, format!("POST /t/{}", n - 1));
        let (kept, _) = read(d.path(), &all()).unwrap();
        assert!(kept.len() < n && kept.len() > n / 2, "{}", kept.len());
    }

    #[test]
    fn services_merge_newest_first_and_filters_apply() {
        let d = tempfile::tempdir().unwrap();
        let console = AuditWriter::new(d.path(), "console");
        let netd = AuditWriter::new(d.path(), "netd");
        console
            .append(&rec("2026-12-01T10:00:00.000Z", "console", "admin"))
            .unwrap();
        netd.append(&rec("2026-12-01T10:00:01.000Z", "netd", "root"))
            .unwrap();
        console
            .append(&rec("2026-12-01T10:00:02.000Z", "console", "alice"))
            .unwrap();
        netd.append(&rec("2026-12-02T09:00:00.000Z", "netd", "root"))
            .unwrap();
        // A rotated file of the console holding the oldest record.
        std::fs::write(
            d.path().join("console.log.1"),
            format!(
                "{{\"format\":1,\"service\":\"console\"}}\n{}\n",
                serde_json::to_string(&rec("2026-11-30T23:59:59.999Z", "console", "admin"))
                    .unwrap()
            ),
        )
        .unwrap();
        // Not an audit file: ignored.
        std::fs::write(d.path().join("notes.txt"), "{}\n").unwrap();
        let (page, more) = read(d.path(), &all()).unwrap();
        let ts: Vec<&str> = page.iter().map(|r| r.ts.as_str()).collect();
        assert_eq!(
            ts,
            [
                "2026-12-02T09:00:00.000Z",
                "2026-12-01T10:00:02.000Z",
                "2026-12-01T10:00:01.000Z",
                "2026-12-01T10:00:00.000Z",
                "2026-11-30T23:59:59.999Z"
            ]
        );
        assert!(!more);

        let q = |user: Option<&str>, since: Option<&str>, until: Option<&str>| {
            Filter::from_query(
                &AuditQuery {
                    user: user.map(Into::into),
                    since: since.map(Into::into),
                    until: until.map(Into::into),
                    ..AuditQuery::default()
                },
                100,
            )
            .unwrap()
        };
        let users = |f: Filter| -> Vec<String> {
            read(d.path(), &f)
                .unwrap()
                .0
                .into_iter()
                .map(|r| format!("{}@{}", r.user, &r.ts[..10]))
                .collect()
        };
        assert_eq!(
            users(q(Some("root"), None, None)),
            ["root@2026-12-02", "root@2026-12-01"]
        );
        // A date as `until` covers the whole day; as `since` it starts at midnight.
        assert_eq!(
            users(q(None, Some("2026-12-01"), Some("2026-12-01"))),
            ["alice@2026-12-01", "root@2026-12-01", "admin@2026-12-01"]
        );
        // Another offset is converted to UTC; a minute bound includes its seconds.
        assert_eq!(
            users(q(Some("admin"), Some("2026-12-01T11:00:00+01:00"), None)),
            ["admin@2026-12-01"]
        );
        assert_eq!(
            users(q(None, Some("2026-12-01T10:00"), Some("2026-12-01T10:00"))),
            ["alice@2026-12-01", "root@2026-12-01", "admin@2026-12-01"]
        );
        // Empty fields are no filter; paging skips and says whether more follow.
        assert_eq!(users(q(Some(""), Some(" "), None)).len(), 5);
        let page2 = Filter {
            limit: 2,
            offset: 2,
            ..all()
        };
        let (p, more) = read(d.path(), &page2).unwrap();
        assert_eq!(p[0].ts, "2026-12-01T10:00:01.000Z");
        assert!(more);
        let e = Filter::from_query(
            &AuditQuery {
                since: Some("yesterday".into()),
                ..AuditQuery::default()
            },
            100,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"yesterday\" is not a time"), "{e}");
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_the_next_record_stands_alone() {
        let d = tempfile::tempdir().unwrap();
        let w = AuditWriter::new(d.path(), "update");
        w.append(&rec("2026-12-01T10:00:00.000Z", "update", "root"))
            .unwrap();
        drop(w);
        // A power cut in the middle of the next line.
        let path = d.path().join("update.log");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"ts":"2026-12-01T10:00:01.000Z","service":"upd"#)
            .unwrap();
        drop(f);
        let (page, _) = read(d.path(), &all()).unwrap();
        assert_eq!(page.len(), 1, "the torn line is skipped, the rest read");
        // After the restart the next record is on a line of its own.
        let w = AuditWriter::new(d.path(), "update");
        w.append(&rec("2026-12-01T10:00:02.000Z", "update", "root"))
            .unwrap();
        let (page, _) = read(d.path(), &all()).unwrap();
        let ts: Vec<&str> = page.iter().map(|r| r.ts.as_str()).collect();
        assert_eq!(ts, ["2026-12-01T10:00:02.000Z", "2026-12-01T10:00:00.000Z"]);
    }

    #[tokio::test]
    async fn local_front_ends_are_recorded_and_the_console_records_its_own() {
        let d = tempfile::tempdir().unwrap();
        // Before `init`: nothing, and no error.
        local::<(), String>("keelctl", "net.config.apply", None, &Ok(())).await;
        init(d.path(), "netd");
        local::<(), String>("keelctl", "net.config.apply", None, &Ok(())).await;
        local::<(), String>("console", "net.config.apply", None, &Ok(())).await;
        local::<(), String>(
            "local-menu",
            "net.config.confirm",
            None,
            &Err("nothing to confirm".into()),
        )
        .await;
        let (page, _) = read(d.path(), &all()).unwrap();
        let got: Vec<(&str, AuditVia, &str, &str)> = page
            .iter()
            .map(|r| (r.user.as_str(), r.via, r.action.as_str(), r.result.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "root",
                    AuditVia::LocalMenu,
                    "net.config.confirm",
                    "failed: nothing to confirm"
                ),
                ("root", AuditVia::Keelctl, "net.config.apply", "ok"),
            ]
        );
        assert!(page
            .iter()
            .all(|r| r.service == "netd" && r.source == "local"));
    }

    #[test]
    fn a_missing_directory_is_an_empty_log() {
        let d = tempfile::tempdir().unwrap();
        let (page, more) = read(&d.path().join("none"), &all()).unwrap();
        assert!(page.is_empty() && !more);
    }
}
