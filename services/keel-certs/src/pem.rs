//! A small PEM reader that keeps every section (rustls-pemfile skips the ones it
//! does not know, such as `ENCRYPTED PRIVATE KEY`) and tells a truncated file
//! from a garbled one.

use base64::Engine;
use zeroize::Zeroizing;

use crate::CertError;

pub struct Section {
    pub label: String,
    /// `Proc-Type: 4,ENCRYPTED`: OpenSSL's legacy key encryption.
    pub legacy_encrypted: bool,
    pub der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Section")
            .field("label", &self.label)
            .field("der", &format_args!("<{} bytes>", self.der.len()))
            .finish()
    }
}

/// Does this look like PEM text (as opposed to DER or garbage)?
pub fn looks_like_pem(data: &[u8]) -> bool {
    data.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Every PEM section of `text`, in order. Text outside sections is ignored
/// (OpenSSL likes to put a human-readable dump before the certificate).
pub fn parse(text: &[u8], file: &str) -> Result<Vec<Section>, CertError> {
    let text = std::str::from_utf8(text)
        .map_err(|_| CertError::Malformed(format!("{file}: PEM file is not valid text")))?;
    let mut sections = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = Zeroizing::new(String::new());
        let mut legacy_encrypted = false;
        let mut closed = false;
        for line in lines.by_ref() {
            if line == end {
                closed = true;
                break;
            }
            if line.starts_with("-----") {
                break;
            }
            if let Some((key, value)) = line.split_once(':') {
                // RFC 1421 headers (only OpenSSL's legacy encrypted keys use them).
                if key.trim() == "Proc-Type" && value.contains("ENCRYPTED") {
                    legacy_encrypted = true;
                }
                continue;
            }
            body.push_str(line);
        }
        if !closed {
            return Err(CertError::Malformed(format!(
                "{file}: the PEM block \"{label}\" has no END line (is the file truncated?)"
            )));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|_| {
                CertError::Malformed(format!(
                    "{file}: the PEM block \"{label}\" is not valid base64 (damaged file?)"
                ))
            })?;
        sections.push(Section {
            label: label.to_owned(),
            legacy_encrypted,
            der: Zeroizing::new(der),
        });
    }
    Ok(sections)
}

/// PEM-encodes `der` under `label` with 64-column lines.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str(&format!("-----BEGIN {label}-----\n"));
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let pem = encode("CERTIFICATE", b"hello world, some bytes");
        let text = format!("Certificate:\n  dump...\n{pem}");
        let s = parse(text.as_bytes(), "x").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].label, "CERTIFICATE");
        assert_eq!(&s[0].der[..], b"hello world, some bytes");
        let cut = &pem[..pem.len() - 20];
        let err = parse(cut.as_bytes(), "x").unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let bad = pem.replace("aGVs", "!!!!");
        let err = parse(bad.as_bytes(), "x").unwrap_err().to_string();
        assert!(err.contains("base64"), "{err}");
    }
}
