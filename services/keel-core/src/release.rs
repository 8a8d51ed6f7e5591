//! The running version of the appliance (docs/interfaces.md, *Version*).

/// `VERSION_ID` from an os-release(5) text, if it is Keel's (`ID=keel`): the
/// version of the root slot that is running. Quotes around values are removed.
pub fn os_release_version(os_release: &str) -> Option<String> {
    let mut id = None;
    let mut version = None;
    for line in os_release.lines() {
        let Some((k, v)) = line.trim().split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        match k.trim() {
            "ID" => id = Some(v.to_owned()),
            "VERSION_ID" => version = Some(v.to_owned()),
            _ => {}
        }
    }
    version.filter(|v| !v.is_empty() && id.as_deref() == Some("keel"))
}

/// The running slot's version (docs/interfaces.md, *Version*): `VERSION_ID` of
/// `/etc/os-release` (else `/usr/lib/os-release`) when that is Keel's, else the
/// version compiled in (a development host's os-release names its own system).
/// Read once: the root filesystem is read-only.
pub fn running_version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        ["/etc/os-release", "/usr/lib/os-release"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| os_release_version(&text))
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_os_release() {
        let keel = "PRETTY_NAME=\"Keel 0.2.0\"\nNAME=\"Keel\"\nID=keel\nID_LIKE=debian\n\
                    VERSION=\"0.2.0\"\nVERSION_ID=0.2.0\nVERSION_CODENAME=bookworm\n";
        assert_eq!(os_release_version(keel).as_deref(), Some("0.2.0"));
        assert_eq!(
            os_release_version("ID=\"keel\"\nVERSION_ID='0.10.1'\n").as_deref(),
            Some("0.10.1")
        );
        // Another system's os-release (a development host) is not Keel's version.
        let debian =
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n";
        assert_eq!(os_release_version(debian), None);
        assert_eq!(os_release_version("ID=keel\nVERSION_ID=\n"), None);
        assert_eq!(os_release_version(""), None);
        // Here: this host's os-release or, outside the image, the compiled-in one.
        assert!(!running_version().is_empty());
    }
}
