//! Versions (`x.y.z`, compared numerically), constraints (`>=0.3.0`), ranges (all
//! constraints of a range must hold) and requirements on components.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// `major.minor.patch`, each a decimal without leading zeros. Ordered numerically
/// (0.10.0 > 0.9.0), which string comparison would get wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

fn number(part: &str, whole: &str) -> Result<u32, Error> {
    let bad = || Error::Invalid(format!("version {whole:?} is not x.y.z (decimal numbers)"));
    // Only ASCII digits and no leading zeros: one spelling per version, so that
    // "1.02.0" cannot pose as another release than "1.2.0".
    if part.is_empty()
        || !part.bytes().all(|b| b.is_ascii_digit())
        || (part.len() > 1 && part.starts_with('0'))
    {
        return Err(bad());
    }
    part.parse().map_err(|_| bad())
}

impl FromStr for Version {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut parts = s.split('.');
        let (Some(a), Some(b), Some(c), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::Invalid(format!("version {s:?} is not x.y.z")));
        };
        Ok(Version::new(number(a, s)?, number(b, s)?, number(c, s)?))
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Comparison operator of a constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Lt => "<",
            Op::Eq => "=",
        }
    }

    pub fn holds(self, have: &Version, want: &Version) -> bool {
        match self {
            Op::Ge => have >= want,
            Op::Gt => have > want,
            Op::Le => have <= want,
            Op::Lt => have < want,
            Op::Eq => have == want,
        }
    }

    /// Splits a leading operator off `s` (longest match first).
    fn split(s: &str) -> Option<(Op, &str)> {
        for (text, op) in [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("==", Op::Eq),
            (">", Op::Gt),
            ("<", Op::Lt),
            ("=", Op::Eq),
        ] {
            if let Some(rest) = s.strip_prefix(text) {
                return Some((op, rest));
            }
        }
        None
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Op {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match Op::split(s) {
            Some((op, "")) => Ok(op),
            _ => Err(Error::Invalid(format!("unknown operator {s:?}"))),
        }
    }
}

impl Serialize for Op {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One comparison against a version, e.g. `>=0.3.0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    pub op: Op,
    pub version: Version,
}

impl Constraint {
    pub fn holds(&self, have: &Version) -> bool {
        self.op.holds(have, &self.version)
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.op, self.version)
    }
}

impl FromStr for Constraint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        let (op, rest) = Op::split(s).ok_or_else(|| {
            Error::Invalid(format!("{s:?}: expected an operator (>=, >, <=, <, =)"))
        })?;
        Ok(Constraint {
            op,
            version: rest.trim().parse()?,
        })
    }
}

/// A range: every constraint must hold (`>=0.1.0,<0.3.0`). In JSON an array of
/// constraints. An empty range matches every version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct VersionRange(pub Vec<Constraint>);

impl VersionRange {
    pub fn contains(&self, v: &Version) -> bool {
        self.0.iter().all(|c| c.holds(v))
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("*");
        }
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl FromStr for VersionRange {
    type Err = Error;
    /// `>=0.1.0` or `>=0.1.0,<0.3.0`.
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.trim() == "*" {
            return Ok(VersionRange::default());
        }
        s.split(',')
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(VersionRange)
    }
}

/// Formats a list of ranges ("any of these") for messages.
pub(crate) fn ranges_text(ranges: &[VersionRange]) -> String {
    if ranges.is_empty() {
        return "*".into();
    }
    ranges
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A requirement on another component, e.g. `base >= 0.3.0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub component: String,
    pub op: Op,
    pub version: Version,
}

impl Requirement {
    pub fn holds(&self, have: &Version) -> bool {
        self.op.holds(have, &self.version)
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.component, self.op, self.version)
    }
}

impl FromStr for Requirement {
    type Err = Error;
    /// `base>=0.3.0` or `base >= 0.3.0`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        let at = s.find(['>', '<', '=']).ok_or_else(|| {
            Error::Invalid(format!("requirement {s:?}: expected NAME OP VERSION"))
        })?;
        let component = s[..at].trim().to_string();
        crate::manifest::check_component(&component)?;
        let c: Constraint = s[at..].parse()?;
        Ok(Requirement {
            component,
            op: c.op,
            version: c.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        let a: Version = "0.10.0".parse().unwrap();
        let b: Version = "0.9.12".parse().unwrap();
        assert!(a > b);
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "01.2.3",
            "1.-2.3",
            "1.2.x",
            " 1.2.3",
            "1.2.99999999999",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }

    #[test]
    fn requirements_and_ranges_parse() {
        let r: Requirement = "base>=0.3.0".parse().unwrap();
        assert_eq!(r.to_string(), "base >= 0.3.0");
        let r: Requirement = "web-ui = 1.0.0".parse().unwrap();
        assert_eq!((r.component.as_str(), r.op), ("web-ui", Op::Eq));
        let range: VersionRange = ">=0.1.0,<0.3.0".parse().unwrap();
        assert!(range.contains(&Version::new(0, 2, 9)));
        assert!(!range.contains(&Version::new(0, 3, 0)));
        assert!("0.1.0".parse::<VersionRange>().is_err());
        assert!(">=0.1.0".parse::<Requirement>().is_err());
    }
}
