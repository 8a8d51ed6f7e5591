//! Format versions of the JSON files in `/data`, and how a file moves between them
//! when the slot that runs changes.
//!
//! Every JSON file a service keeps in `/data` carries `"format": N` at its top level
//! (a file without it is format 1: it was written before formats were recorded).
//! A build knows one format per kind of file ([`FileFormat::current`]) and the steps
//! between formats: each step converts format `n` to `n + 1` (`forward`) and back
//! (`backward`).
//!
//! - **Forward, on the first use by a newer slot.** A file in an older format is
//!   converted in memory when read; the first write stores it in the current format
//!   and keeps the file's older-format bytes beside it as `NAME.format-K`.
//! - **What the old slot needs is kept current.** While a `NAME.format-K` copy exists,
//!   every later write also rewrites it, converted back with the `backward` steps,
//!   so a rollback to the older slot (automatic after a failed trial, or asked for by
//!   the admin) finds the settings as they are now, not as they were before the
//!   update — as far as format K can say them.
//! - **The older slot reads its copy.** A build that finds the main file in a format
//!   newer than it knows reads `NAME.format-<its current>` instead; its next write
//!   stores the main file in its own format again and removes that copy (the newer
//!   slot then converts forward again, as after any update).
//!
//! Bottlerocket keeps a versioned copy of its whole data store per version for the
//! same reason; per file is enough here (few, small files), and it keeps the copies
//! current instead of frozen at the update.

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};
use serde_json::{Map, Value};

use crate::store::{read_optional, write_atomic, StoreError};

/// The key that carries the format in every file.
pub const KEY: &str = "format";

/// A conversion of one file's JSON object between two adjacent formats.
pub type Convert = fn(Map<String, Value>) -> Result<Map<String, Value>, String>;

/// One step between format `n` and `n + 1`.
#[derive(Clone, Copy)]
pub struct Step {
    pub forward: Convert,
    pub backward: Convert,
}

/// One kind of file: what this build writes, and the steps from format 1 to it
/// (`steps[i]` converts format `i + 1` to `i + 2`; so `steps.len() == current - 1`).
pub struct FileFormat {
    /// Names the kind in messages ("network configuration").
    pub name: &'static str,
    pub current: u32,
    pub steps: &'static [Step],
}

impl FileFormat {
    /// A kind whose format has not changed since formats were recorded.
    pub const fn first(name: &'static str) -> Self {
        Self {
            name,
            current: 1,
            steps: &[],
        }
    }
}

/// `/data/net/ntp-servers.json` (`keel_api::NtpServers`): written by keel-netd, read
/// by keel-timed, so its format is defined here, once.
pub const NTP_SERVERS: FileFormat = FileFormat::first("NTP server list");

/// The copy kept for a slot that reads format `k`.
pub fn copy_path(path: &Path, k: u32) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{KEY}-{k}"));
    path.with_file_name(name)
}

fn bad(path: &Path, message: impl Into<String>) -> StoreError {
    StoreError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn json_err(path: &Path) -> impl FnOnce(serde_json::Error) -> StoreError + '_ {
    move |source| StoreError::Json {
        path: path.to_path_buf(),
        source,
    }
}

/// The object and its format (1 when the file does not say), for a reader that
/// deserializes the object itself (e.g. to name a bad field).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<(Map<String, Value>, u32), StoreError> {
    let mut obj = match serde_json::from_slice::<Value>(bytes).map_err(json_err(path))? {
        Value::Object(o) => o,
        _ => return Err(bad(path, "not a JSON object")),
    };
    let format = match obj.remove(KEY) {
        None => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=u32::MAX as u64).contains(n))
            .map(|n| n as u32)
            .ok_or_else(|| bad(path, format!("\"{KEY}\" is not a format number: {v}")))?,
    };
    Ok((obj, format))
}

impl FileFormat {
    fn step(&self, from: u32) -> Option<&Step> {
        self.steps.get(from.checked_sub(1)? as usize)
    }

    /// `obj` converted from format `from` to `to` (either direction).
    fn convert(
        &self,
        path: &Path,
        mut obj: Map<String, Value>,
        from: u32,
        to: u32,
    ) -> Result<Map<String, Value>, StoreError> {
        let mut at = from;
        while at != to {
            let (next, step) = if at < to {
                (at + 1, self.step(at).map(|s| s.forward))
            } else {
                (at - 1, self.step(at - 1).map(|s| s.backward))
            };
            let step =
                step.ok_or_else(|| bad(path, format!("no conversion from format {at} to {next}")))?;
            obj = step(obj).map_err(|e| {
                bad(
                    path,
                    format!("converting {} from format {at} to {next}: {e}", self.name),
                )
            })?;
            at = next;
        }
        Ok(obj)
    }

    fn encode(
        &self,
        path: &Path,
        mut obj: Map<String, Value>,
        k: u32,
    ) -> Result<Vec<u8>, StoreError> {
        obj.insert(KEY.into(), Value::from(k));
        let mut bytes = serde_json::to_vec_pretty(&Value::Object(obj)).map_err(json_err(path))?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Reads `path` as `T` in this build's format; `Ok(None)` when it does not exist.
    /// An older format is converted forward; a newer one is read from the copy kept
    /// in this build's format, and refused with a message that says so without one.
    pub fn read<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>, StoreError> {
        let Some(bytes) = read_optional(path)? else {
            return Ok(None);
        };
        let (mut obj, mut found) = parse(path, &bytes)?;
        let mut from = path.to_path_buf();
        if found > self.current {
            let copy = copy_path(path, self.current);
            let Some(bytes) = read_optional(&copy)? else {
                return Err(bad(
                    path,
                    format!(
                        "the {} is in format {found}, written by a newer version; this \
                         version reads format {} and no copy in that format was kept",
                        self.name, self.current
                    ),
                ));
            };
            (obj, found) = parse(&copy, &bytes)?;
            if found != self.current {
                return Err(bad(
                    &copy,
                    format!("holds format {found}, not {}", self.current),
                ));
            }
            tracing::info!(
                path = %path.display(),
                "{} written by a newer version: reading the copy kept in format {}",
                self.name,
                self.current
            );
            from = copy;
        }
        let obj = self.convert(&from, obj, found, self.current)?;
        let value = from_object(&from, obj)?;
        Ok(Some(value))
    }

    /// Writes `value` atomically in this build's format (see the module's rules for
    /// the copies kept for older slots).
    pub fn write<T: Serialize>(&self, path: &Path, value: &T, mode: u32) -> Result<(), StoreError> {
        let obj = match serde_json::to_value(value).map_err(json_err(path))? {
            Value::Object(o) => o,
            _ => return Err(bad(path, "only JSON objects carry a format")),
        };
        // The main file's present format: an older one is kept for its slot first.
        let on_disk = match read_optional(path)? {
            Some(bytes) => parse(path, &bytes).ok().map(|(_, f)| (f, bytes)),
            None => None,
        };
        if let Some((k, bytes)) = &on_disk {
            if *k < self.current && read_optional(&copy_path(path, *k))?.is_none() {
                write_atomic(&copy_path(path, *k), bytes, mode)?;
            }
        }
        for k in 1..self.current {
            let copy = copy_path(path, k);
            if !copy.exists() {
                continue;
            }
            // A copy that cannot be converted back keeps its last good content: the
            // older slot then reads that rather than nothing.
            match self
                .convert(path, obj.clone(), self.current, k)
                .and_then(|o| self.encode(path, o, k))
            {
                Ok(bytes) => write_atomic(&copy, &bytes, mode)?,
                Err(e) => tracing::warn!("keeping {} as it was: {e}", copy.display()),
            }
        }
        write_atomic(path, &self.encode(path, obj, self.current)?, mode)?;
        // Written by an older slot over a newer file: the copy kept for this format
        // is now stale, and the main file is what this format reads.
        if on_disk.is_some_and(|(k, _)| k > self.current) {
            crate::store::remove_durable(&copy_path(path, self.current))?;
        }
        Ok(())
    }

    /// Removes the file and every copy kept of it for other formats (a credential
    /// removed must not come back with a rollback). Returns whether the main file
    /// existed.
    pub fn remove(&self, path: &Path) -> Result<bool, StoreError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut prefix = path.file_name().unwrap_or_default().to_os_string();
        prefix.push(format!(".{KEY}-"));
        let prefix = prefix.to_string_lossy().into_owned();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(StoreError::Io {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                crate::store::remove_durable(&entry.path())?;
            }
        }
        crate::store::remove_durable(path)
    }

    /// Stores a file found in an older format in the current one (keeping the old
    /// one for its slot); a service calls this for its files when it starts, so the
    /// move happens on the first boot of a new version. Returns whether it did.
    pub fn upgrade<T: Serialize + DeserializeOwned>(
        &self,
        path: &Path,
        mode: u32,
    ) -> Result<bool, StoreError> {
        let Some(bytes) = read_optional(path)? else {
            return Ok(false);
        };
        let (_, found) = parse(path, &bytes)?;
        if found >= self.current {
            return Ok(false);
        }
        let Some(value) = self.read::<T>(path)? else {
            return Ok(false);
        };
        self.write(path, &value, mode)?;
        tracing::info!(
            path = %path.display(),
            "{} moved from format {found} to {}",
            self.name,
            self.current
        );
        Ok(true)
    }
}

fn from_object<T: DeserializeOwned>(path: &Path, obj: Map<String, Value>) -> Result<T, StoreError> {
    serde_json::from_value(Value::Object(obj)).map_err(json_err(path))
}

/// The format a file on disk says it is in (1 without the key); `None` if absent.
pub fn format_of(path: &Path) -> Result<Option<u32>, StoreError> {
    read_optional(path)?
        .map(|bytes| parse(path, &bytes).map(|(_, f)| f))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::fs;

    /// Format 1: `{"name": ..}`; format 2: `{"names": [..]}`; format 3 adds `"tag"`.
    fn f1_to_2(mut o: Map<String, Value>) -> Result<Map<String, Value>, String> {
        let name = o.remove("name").ok_or("no name")?;
        o.insert("names".into(), Value::Array(vec![name]));
        Ok(o)
    }
    fn f2_to_1(mut o: Map<String, Value>) -> Result<Map<String, Value>, String> {
        let names = o.remove("names").ok_or("no names")?;
        let first = names
            .as_array()
            .and_then(|a| a.first())
            .cloned()
            .ok_or("no first name")?;
        o.insert("name".into(), first);
        Ok(o)
    }
    fn f2_to_3(mut o: Map<String, Value>) -> Result<Map<String, Value>, String> {
        o.insert("tag".into(), Value::from("new"));
        Ok(o)
    }
    fn f3_to_2(mut o: Map<String, Value>) -> Result<Map<String, Value>, String> {
        o.remove("tag");
        Ok(o)
    }

    const V1: FileFormat = FileFormat::first("test file");
    const V2: FileFormat = FileFormat {
        name: "test file",
        current: 2,
        steps: &[Step {
            forward: f1_to_2,
            backward: f2_to_1,
        }],
    };
    const V3: FileFormat = FileFormat {
        name: "test file",
        current: 3,
        steps: &[
            Step {
                forward: f1_to_2,
                backward: f2_to_1,
            },
            Step {
                forward: f2_to_3,
                backward: f3_to_2,
            },
        ],
    };

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct One {
        name: String,
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Two {
        names: Vec<String>,
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Three {
        names: Vec<String>,
        tag: String,
    }

    fn one(n: &str) -> One {
        One { name: n.into() }
    }

    #[test]
    fn a_file_carries_its_format_and_one_without_it_is_format_1() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        V1.write(&p, &one("a"), 0o600).unwrap();
        assert_eq!(format_of(&p).unwrap(), Some(1));
        let v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["format"], 1);
        fs::write(&p, br#"{"name":"old"}"#).unwrap();
        assert_eq!(V1.read::<One>(&p).unwrap(), Some(one("old")));
        assert_eq!(V1.read::<One>(&d.path().join("none")).unwrap(), None);
    }

    #[test]
    fn an_update_converts_forward_and_keeps_the_old_format_current() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        V1.write(&p, &one("a"), 0o640).unwrap();
        // The new slot reads the old file converted, then stores it in its format.
        assert_eq!(
            V2.read::<Two>(&p).unwrap(),
            Some(Two {
                names: vec!["a".into()]
            })
        );
        assert!(V2.upgrade::<Two>(&p, 0o640).unwrap());
        assert!(!V2.upgrade::<Two>(&p, 0o640).unwrap(), "once");
        assert_eq!(format_of(&p).unwrap(), Some(2));
        assert_eq!(format_of(&copy_path(&p, 1)).unwrap(), Some(1));
        // A change on the new slot reaches the old slot's copy.
        V2.write(
            &p,
            &Two {
                names: vec!["b".into(), "c".into()],
            },
            0o640,
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(copy_path(&p, 1)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // Rolled back: the old slot reads its copy, with the change.
        assert_eq!(V1.read::<One>(&p).unwrap(), Some(one("b")));
        // Its next write makes the main file its own again; the copy goes.
        V1.write(&p, &one("d"), 0o640).unwrap();
        assert_eq!(format_of(&p).unwrap(), Some(1));
        assert!(!copy_path(&p, 1).exists());
        // And the new slot, booted again, converts forward again.
        assert_eq!(
            V2.read::<Two>(&p).unwrap(),
            Some(Two {
                names: vec!["d".into()]
            })
        );
    }

    #[test]
    fn two_steps_at_once_and_every_older_copy_kept() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        V1.write(&p, &one("a"), 0o600).unwrap();
        V2.upgrade::<Two>(&p, 0o600).unwrap();
        // 1 → 2 → 3 in one read, and a write keeps both older copies current.
        assert_eq!(
            V3.read::<Three>(&p).unwrap(),
            Some(Three {
                names: vec!["a".into()],
                tag: "new".into()
            })
        );
        V3.write(
            &p,
            &Three {
                names: vec!["z".into()],
                tag: "t".into(),
            },
            0o600,
        )
        .unwrap();
        assert_eq!(
            V2.read::<Two>(&p).unwrap(),
            Some(Two {
                names: vec!["z".into()]
            })
        );
        assert_eq!(V1.read::<One>(&p).unwrap(), Some(one("z")));
    }

    #[test]
    fn removing_takes_the_copies_too() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        let other = d.path().join("f.json2");
        fs::write(&other, "{}").unwrap();
        V1.write(&p, &one("secret"), 0o600).unwrap();
        V3.upgrade::<Three>(&p, 0o600).unwrap();
        assert!(copy_path(&p, 1).exists());
        assert!(V3.remove(&p).unwrap());
        assert!(!p.exists() && !copy_path(&p, 1).exists());
        assert_eq!(V1.read::<One>(&p).unwrap(), None);
        assert!(other.exists(), "only its own copies");
        assert!(!V3.remove(&p).unwrap());
    }

    #[test]
    fn a_newer_file_without_a_copy_is_refused_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        V2.write(
            &p,
            &Two {
                names: vec!["a".into()],
            },
            0o600,
        )
        .unwrap();
        let before = fs::read(&p).unwrap();
        let e = V1.read::<One>(&p).unwrap_err().to_string();
        assert!(e.contains("format 2, written by a newer version"), "{e}");
        assert!(e.contains("reads format 1"), "{e}");
        assert_eq!(fs::read(&p).unwrap(), before);
    }

    #[test]
    fn bad_formats_and_failed_conversions_say_what() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        for (text, want) in [
            (r#"{"format":"two"}"#, "not a format number"),
            (r#"{"format":0}"#, "not a format number"),
            (r#"[1,2]"#, "not a JSON object"),
        ] {
            fs::write(&p, text).unwrap();
            let e = V2.read::<Two>(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        // Format 1 without the field the step needs: the step's reason, named.
        fs::write(&p, r#"{"format":1}"#).unwrap();
        let e = V2.read::<Two>(&p).unwrap_err().to_string();
        assert!(
            e.contains("converting test file from format 1 to 2: no name"),
            "{e}"
        );
        // A backward step that fails leaves the old slot's copy as it was.
        V1.write(&p, &one("keep"), 0o600).unwrap();
        V2.upgrade::<Two>(&p, 0o600).unwrap();
        V2.write(&p, &Two { names: vec![] }, 0o600).unwrap();
        assert_eq!(V1.read::<One>(&p).unwrap(), Some(one("keep")));
    }
}
