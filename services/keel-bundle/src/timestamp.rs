//! RFC 3339 timestamps in UTC, whole seconds (`2026-12-01T09:00:00Z`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// Truncates to whole seconds and converts to UTC: one spelling per instant.
    pub fn new(t: OffsetDateTime) -> Self {
        let t = t.to_offset(UtcOffset::UTC);
        Timestamp(t.replace_nanosecond(0).unwrap_or(t))
    }

    pub fn now() -> Self {
        Timestamp::new(OffsetDateTime::now_utc())
    }

    pub fn get(self) -> OffsetDateTime {
        self.0
    }

    /// `self + d`; on overflow (an absurd `--expires-days`) `self` unchanged, which
    /// validation then refuses as "expires is not after created".
    pub fn plus(self, d: time::Duration) -> Self {
        Timestamp(self.0.checked_add(d).unwrap_or(self.0))
    }
}

impl From<OffsetDateTime> for Timestamp {
    fn from(t: OffsetDateTime) -> Self {
        Timestamp::new(t)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.format(&Rfc3339) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{}", self.0.unix_timestamp()),
        }
    }
}

impl FromStr for Timestamp {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let t = OffsetDateTime::parse(s, &Rfc3339)
            .map_err(|e| Error::Invalid(format!("time {s:?}: {e}")))?;
        // UTC only, as the format says; an offset would be a second spelling.
        if t.offset() != UtcOffset::UTC || !s.ends_with('Z') {
            return Err(Error::Invalid(format!("time {s:?} is not UTC (…Z)")));
        }
        Ok(Timestamp::new(t))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
