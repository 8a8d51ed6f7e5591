//! The pairing channel between the two nodes (TCP port 7947): TLS 1.3 in which
//! both sides present their self-signed pairing certificate, then a proof of the
//! inter-appliance key (PSK) bound to that TLS session, then one request and its
//! answer. Frames are a 4-byte big-endian length and JSON (at most 64 KiB), or the
//! raw bytes of a sync bundle (at most 64 MiB).
//!
//! TLS accepts any certificate: which one is acceptable is the application's
//! decision (none is pinned before *establish*; afterwards only the pinned one),
//! made on [`Channel::peer_fingerprint`]. The PSK proof is an HMAC over both nonces
//! and the session's exporter keying material (RFC 8446 §7.5), so a relay that
//! terminates TLS towards each side cannot forward it: its two sessions export
//! different material.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use keel_api::SyncReport;
use ring::hmac;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// Pairing protocol spoken by this build; a peer speaking another is refused.
pub const PROTOCOL: u32 = 1;
pub const DEFAULT_PAIR_PORT: u16 = 7947;
/// Largest JSON frame.
pub const FRAME_CAP: usize = 64 * 1024;
/// Largest sync bundle.
pub const BUNDLE_CAP: usize = 64 * 1024 * 1024;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Each read of a frame (a peer that stops talking is dropped after it).
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// Reading or applying a whole bundle.
pub const BUNDLE_TIMEOUT: Duration = Duration::from_secs(120);
pub const WRONG_KEY: &str = "the peer does not hold the same inter-appliance key";

const EXPORTER_LABEL: &[u8] = b"EXPORTER-keel-failover-pairing";
/// HKDF info of the proof key (the heartbeat key has its own).
const PROOF_INFO: &[u8] = b"pairing proof";
const NONCE: usize = 32;
/// Only a name for TLS: the certificate is judged by its fingerprint.
const SERVER_NAME: &str = "keel-failover.pair";

#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error("cannot reach the peer at {addr}: {message}")]
    Unreachable { addr: SocketAddr, message: String },
    #[error("{message}")]
    Refused { kind: Refusal, message: String },
    #[error("pairing channel with {addr}: {message}")]
    Protocol { addr: SocketAddr, message: String },
    #[error("pairing identity {path}: {message}")]
    Identity { path: String, message: String },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why a request was refused; decides the local API's status code.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    WrongKey,
    IncompatibleVersion,
    AlreadyPaired,
    /// The certificate presented is not the pinned one.
    NotPinned,
    BadRequest,
    Failed,
}

impl Refusal {
    pub fn http_status(self) -> u16 {
        match self {
            Refusal::BadRequest => 400,
            Refusal::Failed => 502,
            _ => 409,
        }
    }
}

/// This node's pairing certificate and key (`pair.crt`, `pair.key` 0600).
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    /// SHA-256 of the certificate (DER), lowercase hex.
    pub fingerprint: String,
}

pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

impl Identity {
    /// A fresh self-signed ECDSA P-256 certificate (what a node makes on first start).
    pub fn generate() -> Result<Self, PairError> {
        let err = |e: rcgen::Error| PairError::Identity {
            path: "(new)".into(),
            message: e.to_string(),
        };
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let mut params =
            rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()]).map_err(err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "keel-failover pairing");
        // Pinned by fingerprint, never by expiry: valid for as long as X.509 allows.
        params.not_after = rcgen::date_time_ymd(9999, 12, 31);
        let cert = params.self_signed(&kp).map_err(err)?;
        Ok(Self::from_der(cert.der().to_vec(), kp.serialize_der()))
    }

    fn from_der(cert: Vec<u8>, key: Vec<u8>) -> Self {
        Self {
            fingerprint: fingerprint(&cert),
            cert: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(key),
        }
    }

    /// Reads `dir/pair.key` and `dir/pair.crt`, making both first if neither exists.
    pub fn load_or_create(dir: &Path) -> Result<Self, PairError> {
        let (key_path, crt_path) = (dir.join("pair.key"), dir.join("pair.crt"));
        let err = |p: &Path, m: String| PairError::Identity {
            path: p.display().to_string(),
            message: m,
        };
        if !key_path.exists() && !crt_path.exists() {
            let id = Self::generate()?;
            let key_pem = pem("PRIVATE KEY", id.key.secret_pkcs8_der());
            let crt_pem = pem("CERTIFICATE", id.cert.as_ref());
            keel_core::store::write_atomic(&key_path, key_pem.as_bytes(), 0o600)
                .map_err(|e| err(&key_path, e.to_string()))?;
            keel_core::store::write_atomic(&crt_path, crt_pem.as_bytes(), 0o644)
                .map_err(|e| err(&crt_path, e.to_string()))?;
            tracing::info!(fingerprint = %id.fingerprint, "made the pairing identity");
            return Ok(id);
        }
        let read = |p: &Path| std::fs::read(p).map_err(|e| err(p, e.to_string()));
        let key_pem = read(&key_path)?;
        let crt_pem = read(&crt_path)?;
        let key = match rustls_pemfile::private_key(&mut key_pem.as_slice()) {
            Ok(Some(PrivateKeyDer::Pkcs8(k))) => k.secret_pkcs8_der().to_vec(),
            _ => return Err(err(&key_path, "no PKCS#8 private key".into())),
        };
        let cert = match rustls_pemfile::certs(&mut crt_pem.as_slice()).next() {
            Some(Ok(c)) => c.to_vec(),
            _ => return Err(err(&crt_path, "no certificate".into())),
        };
        let id = Self::from_der(cert, key);
        // The pair must belong together, or every handshake would fail later.
        tls(&id).map_err(|e| err(&key_path, format!("does not match pair.crt: {e}")))?;
        Ok(id)
    }

    /// The node id derived from the certificate: stable, hostname-independent, 16
    /// characters (the heartbeat's field).
    pub fn node_id(&self) -> String {
        self.fingerprint[..crate::config::MAX_NODE_ID].to_owned()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Accepts any certificate at the TLS layer (signatures are still checked: the
/// peer proves it holds the key of the certificate it shows).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl AnyCertificate {
    fn tls12(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn tls13(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for AnyCertificate {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// TLS 1.3 only, both directions, this node's certificate on both.
#[derive(Clone)]
pub struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

pub fn tls(id: &Identity) -> Result<Tls, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let any = Arc::new(AnyCertificate(provider.clone()));
    let key = || PrivateKeyDer::Pkcs8(id.key.clone_key());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(any.clone())
        .with_single_cert(vec![id.cert.clone()], key())?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(any)
        .with_client_auth_cert(vec![id.cert.clone()], key())?;
    Ok(Tls {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// The pair's shared settings: what a sync carries besides the bundle and what a
/// backup takes over from its primary (never its own addresses or interface).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SharedSettings {
    pub shared_addresses: Vec<IpNetwork>,
    pub interval_ms: u64,
    pub window_ms: u64,
    pub probe_ms: u64,
    pub auto_takeover: bool,
    pub sync_interval_s: u64,
}

/// What A proposes to B at *establish*.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proposal {
    /// Heartbeat endpoints: the pairing addresses with the heartbeat port.
    pub primary_heartbeat: SocketAddr,
    pub backup_heartbeat: SocketAddr,
    /// Where B reaches A's pairing port (the admin's `reverse`).
    pub primary_pair: SocketAddr,
    pub settings: SharedSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub protocol: u32,
    /// Product version (`keel_core::release::running_version`).
    pub version: String,
    pub node_id: String,
    pub paired: bool,
    /// Hex, 32 random bytes per connection.
    pub nonce: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    Hello(Hello),
    Proof {
        mac: String,
    },
    Refused {
        kind: Refusal,
        message: String,
    },
    Establish(Proposal),
    /// B took the proposal: its config is written and its engine runs.
    Accepted {
        interface: String,
    },
    /// A sync; the bundle follows as one raw frame of `bundle_len` bytes.
    Sync {
        settings: SharedSettings,
        bundle_len: u64,
    },
    /// The receiver's outcome of a sync.
    SyncDone {
        report: SyncReport,
    },
    /// "Push a sync to me now" (the backup before *become primary*); answered
    /// with `Sync` + bundle on this connection, then the asker's `SyncDone`.
    Pull,
    Break,
    Done,
}

/// What this node says about itself in a handshake.
pub struct Local<'a> {
    pub identity: &'a Identity,
    pub tls: &'a Tls,
    pub psk: &'a [u8],
    pub paired: bool,
    pub protocol: u32,
}

/// An authenticated channel: the TLS session, the peer's certificate fingerprint
/// and its hello. Both sides have proven the PSK.
pub struct Channel {
    stream: TlsStream<TcpStream>,
    pub addr: SocketAddr,
    pub peer_fingerprint: String,
    pub peer: Hello,
}

fn random_nonce() -> [u8; NONCE] {
    let mut n = [0u8; NONCE];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut n)
        .expect("system randomness");
    n
}

/// What a proof covers: role ‖ client nonce ‖ server nonce ‖ exporter, each
/// length-prefixed.
fn proof_input(role: &[u8], client: &[u8], server: &[u8], exporter: &[u8]) -> Vec<u8> {
    let mut msg = Vec::new();
    for part in [role, client, server, exporter] {
        msg.extend_from_slice(&(part.len() as u32).to_be_bytes());
        msg.extend_from_slice(part);
    }
    msg
}

fn proof(psk: &[u8], role: &[u8], client: &[u8], server: &[u8], exporter: &[u8]) -> hmac::Tag {
    let key = crate::wire::derive_key(psk, PROOF_INFO);
    hmac::sign(&key, &proof_input(role, client, server, exporter))
}

fn verify_proof(
    psk: &[u8],
    role: &[u8],
    client: &[u8],
    server: &[u8],
    exporter: &[u8],
    mac_hex: &str,
) -> bool {
    let Ok(mac) = hex::decode(mac_hex) else {
        return false;
    };
    let key = crate::wire::derive_key(psk, PROOF_INFO);
    hmac::verify(&key, &proof_input(role, client, server, exporter), &mac).is_ok()
}

impl Channel {
    fn protocol_error(&self, message: impl Into<String>) -> PairError {
        PairError::Protocol {
            addr: self.addr,
            message: message.into(),
        }
    }

    pub async fn send(&mut self, m: &Msg) -> Result<(), PairError> {
        let bytes = serde_json::to_vec(m).expect("messages serialize");
        self.send_bytes(&bytes).await
    }

    pub async fn send_bytes(&mut self, b: &[u8]) -> Result<(), PairError> {
        let r = async {
            self.stream
                .write_all(&(b.len() as u32).to_be_bytes())
                .await?;
            self.stream.write_all(b).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(BUNDLE_TIMEOUT, r).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.protocol_error(format!("sending: {e}"))),
            Err(_) => Err(self.protocol_error("sending: timed out")),
        }
    }

    /// One frame of at most `cap` bytes, read within `within`.
    pub async fn recv_bytes(&mut self, cap: usize, within: Duration) -> Result<Vec<u8>, PairError> {
        let r = async {
            let mut len = [0u8; 4];
            self.stream.read_exact(&mut len).await?;
            let len = u32::from_be_bytes(len) as usize;
            if len > cap {
                return Ok(Err(len));
            }
            let mut buf = vec![0u8; len];
            self.stream.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(Ok(buf))
        };
        match tokio::time::timeout(within, r).await {
            Ok(Ok(Ok(b))) => Ok(b),
            Ok(Ok(Err(len))) => Err(self.protocol_error(format!(
                "a frame of {len} bytes, more than the {cap} allowed"
            ))),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(self.protocol_error("the peer closed the connection"))
            }
            Ok(Err(e)) => Err(self.protocol_error(format!("reading: {e}"))),
            Err(_) => Err(self.protocol_error(format!("no answer within {} s", within.as_secs()))),
        }
    }

    /// The next message; a `Refused` becomes the error it carries.
    pub async fn recv(&mut self) -> Result<Msg, PairError> {
        let b = self.recv_bytes(FRAME_CAP, IO_TIMEOUT).await?;
        match serde_json::from_slice::<Msg>(&b) {
            Ok(Msg::Refused { kind, message }) => Err(PairError::Refused { kind, message }),
            Ok(m) => Ok(m),
            Err(e) => Err(self.protocol_error(format!("not a pairing message: {e}"))),
        }
    }

    /// Refuses with `kind` and closes (best effort: the peer may be gone).
    pub async fn refuse(&mut self, kind: Refusal, message: impl Into<String>) {
        let message = message.into();
        let _ = self.send(&Msg::Refused { kind, message }).await;
        let _ = self.stream.shutdown().await;
    }

    fn exporter(&self) -> Result<Vec<u8>, PairError> {
        let out = vec![0u8; 32];
        let r = match &self.stream {
            TlsStream::Client(s) => s
                .get_ref()
                .1
                .export_keying_material(out, EXPORTER_LABEL, None),
            TlsStream::Server(s) => s
                .get_ref()
                .1
                .export_keying_material(out, EXPORTER_LABEL, None),
        };
        r.map_err(|e| self.protocol_error(format!("TLS exporter: {e}")))
    }
}

fn hello(local: &Local<'_>, nonce: &[u8]) -> Msg {
    Msg::Hello(Hello {
        protocol: local.protocol,
        version: keel_core::release::running_version().to_owned(),
        node_id: local.identity.node_id(),
        paired: local.paired,
        nonce: hex::encode(nonce),
    })
}

fn peer_certificate(stream: &TlsStream<TcpStream>) -> Option<String> {
    let (_, conn) = stream.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| fingerprint(c.as_ref()))
}

fn version_mismatch(ours: u32, hello: &Hello) -> String {
    format!(
        "incompatible version: this node speaks pairing protocol {ours}, the peer \
         protocol {} (product version {})",
        hello.protocol, hello.version
    )
}

/// Connects to a peer's pairing port and runs the handshake as the client.
pub async fn connect(local: &Local<'_>, addr: SocketAddr) -> Result<Channel, PairError> {
    let unreachable = |message: String| PairError::Unreachable { addr, message };
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => {
            return Err(unreachable(format!(
                "no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            )))
        }
    };
    let connector = tokio_rustls::TlsConnector::from(local.tls.client.clone());
    let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
    let stream = match tokio::time::timeout(IO_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => TlsStream::Client(s),
        Ok(Err(e)) => {
            return Err(PairError::Protocol {
                addr,
                message: format!("TLS handshake: {e} (is this a Keel pairing port?)"),
            })
        }
        Err(_) => return Err(unreachable("TLS handshake timed out".into())),
    };
    let fp = peer_certificate(&stream).unwrap_or_default();
    let mut ch = Channel {
        stream,
        addr,
        peer_fingerprint: fp,
        peer: Hello {
            protocol: 0,
            version: String::new(),
            node_id: String::new(),
            paired: false,
            nonce: String::new(),
        },
    };
    let exporter = ch.exporter()?;
    let nonce = random_nonce();
    ch.send(&hello(local, &nonce)).await?;
    let Msg::Hello(peer) = ch.recv().await? else {
        return Err(ch.protocol_error("expected the peer's hello"));
    };
    if peer.protocol != local.protocol {
        let m = version_mismatch(local.protocol, &peer);
        ch.refuse(Refusal::IncompatibleVersion, m.clone()).await;
        return Err(PairError::Refused {
            kind: Refusal::IncompatibleVersion,
            message: m,
        });
    }
    let server_nonce = hex::decode(&peer.nonce).unwrap_or_default();
    let mac = proof(local.psk, b"client", &nonce, &server_nonce, &exporter);
    ch.send(&Msg::Proof {
        mac: hex::encode(mac.as_ref()),
    })
    .await?;
    let Msg::Proof { mac } = ch.recv().await? else {
        return Err(ch.protocol_error("expected the peer's proof"));
    };
    if !verify_proof(local.psk, b"server", &nonce, &server_nonce, &exporter, &mac) {
        ch.refuse(Refusal::WrongKey, WRONG_KEY).await;
        return Err(PairError::Refused {
            kind: Refusal::WrongKey,
            message: WRONG_KEY.into(),
        });
    }
    ch.peer = peer;
    Ok(ch)
}

/// Runs the handshake as the server on an accepted connection.
pub async fn accept(local: &Local<'_>, tcp: TcpStream) -> Result<Channel, PairError> {
    let addr = tcp.peer_addr().map_err(|e| PairError::Protocol {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        message: e.to_string(),
    })?;
    let acceptor = tokio_rustls::TlsAcceptor::from(local.tls.server.clone());
    let stream = match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => TlsStream::Server(s),
        Ok(Err(e)) => {
            return Err(PairError::Protocol {
                addr,
                message: format!("TLS handshake: {e}"),
            })
        }
        Err(_) => {
            return Err(PairError::Protocol {
                addr,
                message: "TLS handshake timed out".into(),
            })
        }
    };
    let fp = peer_certificate(&stream).unwrap_or_default();
    let mut ch = Channel {
        stream,
        addr,
        peer_fingerprint: fp,
        peer: Hello {
            protocol: 0,
            version: String::new(),
            node_id: String::new(),
            paired: false,
            nonce: String::new(),
        },
    };
    let exporter = ch.exporter()?;
    let Msg::Hello(peer) = ch.recv().await? else {
        return Err(ch.protocol_error("expected a hello"));
    };
    let nonce = random_nonce();
    ch.send(&hello(local, &nonce)).await?;
    // The client judges the versions too, and words the refusal for its admin.
    if peer.protocol != local.protocol {
        return Err(PairError::Refused {
            kind: Refusal::IncompatibleVersion,
            message: version_mismatch(local.protocol, &peer),
        });
    }
    let client_nonce = hex::decode(&peer.nonce).unwrap_or_default();
    let Msg::Proof { mac } = ch.recv().await? else {
        return Err(ch.protocol_error("expected a proof"));
    };
    if !verify_proof(local.psk, b"client", &client_nonce, &nonce, &exporter, &mac) {
        ch.refuse(Refusal::WrongKey, WRONG_KEY).await;
        return Err(PairError::Refused {
            kind: Refusal::WrongKey,
            message: WRONG_KEY.into(),
        });
    }
    let mac = proof(local.psk, b"server", &client_nonce, &nonce, &exporter);
    ch.send(&Msg::Proof {
        mac: hex::encode(mac.as_ref()),
    })
    .await?;
    ch.peer = peer;
    Ok(ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_are_bound_to_role_nonces_session_and_key() {
        let psk = [7u8; 32];
        let (c, s, x) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let mac = hex::encode(proof(&psk, b"client", &c, &s, &x).as_ref());
        assert!(verify_proof(&psk, b"client", &c, &s, &x, &mac));
        // Reflected as the server's proof, another session, other nonces, other key.
        assert!(!verify_proof(&psk, b"server", &c, &s, &x, &mac));
        assert!(!verify_proof(&psk, b"client", &c, &s, &[4u8; 32], &mac));
        assert!(!verify_proof(&psk, b"client", &s, &c, &x, &mac));
        assert!(!verify_proof(&[8u8; 32], b"client", &c, &s, &x, &mac));
        assert!(!verify_proof(&psk, b"client", &c, &s, &x, "zz"));
        // Not the heartbeat key's MAC either.
        let hb = hmac::sign(&crate::wire::derive_key(&psk, b"heartbeat mac"), b"x");
        assert_ne!(hb.as_ref(), proof(&psk, b"client", &[], &[], &[]).as_ref());
    }

    #[test]
    fn identity_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.node_id().len(), 16);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("pair.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A key that is not the certificate's is refused by name.
        let other = Identity::generate().unwrap();
        std::fs::write(
            dir.path().join("pair.key"),
            pem("PRIVATE KEY", other.key.secret_pkcs8_der()),
        )
        .unwrap();
        let e = Identity::load_or_create(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("does not match pair.crt"), "{e}");
    }
}
