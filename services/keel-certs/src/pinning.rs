//! Client-side trust by certificate fingerprint: how one appliance (or a tool)
//! talks to another whose certificate is self-signed. Either the expected SHA-256
//! fingerprint is known (pinned), or the first one seen is recorded (trust on
//! first use) for the caller to show and compare.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, SignatureScheme};

#[derive(Debug)]
pub struct FingerprintVerifier {
    /// `None`: accept any certificate and record it.
    expected: Option<String>,
    seen: Mutex<Option<(String, Vec<u8>)>>,
    provider: Arc<CryptoProvider>,
}

impl FingerprintVerifier {
    /// Accepts only a certificate whose fingerprint equals `expected` (hex, any case,
    /// colons allowed).
    pub fn pinned(expected: &str) -> Arc<Self> {
        let normalized: String = expected
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        Self::new(Some(normalized))
    }

    /// Accepts any certificate and remembers the fingerprint of the last one.
    pub fn record_any() -> Arc<Self> {
        Self::new(None)
    }

    fn new(expected: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            expected,
            seen: Mutex::new(None),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    /// Fingerprint of the last certificate presented by a server.
    pub fn seen(&self) -> Option<String> {
        self.seen.lock().unwrap().as_ref().map(|(fp, _)| fp.clone())
    }

    /// The last certificate presented by a server, DER-encoded.
    pub fn seen_der(&self) -> Option<Vec<u8>> {
        self.seen
            .lock()
            .unwrap()
            .as_ref()
            .map(|(_, der)| der.clone())
    }

    /// A client configuration (ring provider) trusting through this verifier.
    pub fn client_config(self: &Arc<Self>) -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth()
    }
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let fp = crate::fingerprint(end_entity.as_ref());
        *self.seen.lock().unwrap() = Some((fp.clone(), end_entity.as_ref().to_vec()));
        match &self.expected {
            Some(want) if *want != fp => Err(Error::General(format!(
                "certificate fingerprint {fp} is not the pinned {want}"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    // Signatures are still checked: pinning replaces the chain, not the handshake proof.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
