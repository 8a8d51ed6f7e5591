//! The far side of an online update, all on loopback: an HTTPS static file server
//! (rustls, a certificate from a CA made per test) and a CONNECT proxy that drops
//! the tunnel after a number of bytes. Debian's tinyproxy is in `tinyproxy.rs`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type Files = Arc<Mutex<HashMap<String, Bytes>>>;

/// A test CA and a server certificate from it for 127.0.0.1 and localhost.
pub struct TestCa {
    pub ca_pem: String,
    pub cert_der: rustls::pki_types::CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Keel online test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let mut srv = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        srv.subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let key = KeyPair::generate().unwrap();
        let cert = srv.signed_by(&key, &ca_cert, &ca_key).unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

/// A static HTTPS server: GET of a path in `files` answers its bytes, else 404.
/// Counts the requests it answered per path.
pub struct HttpsServer {
    pub addr: SocketAddr,
    pub files: Files,
    pub hits: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpsServer {
    pub async fn start(ca: &TestCa) -> HttpsServer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![ca.cert_der.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(ca.key_der.clone().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let files: Files = Arc::default();
        let hits: Arc<Mutex<Vec<String>>> = Arc::default();
        let (f, h) = (files.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, f, h) = (acceptor.clone(), f.clone(), h.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let path = req.uri().path().to_string();
                            let body = f.lock().unwrap().get(&path).cloned();
                            h.lock().unwrap().push(path);
                            async move {
                                Ok::<_, std::convert::Infallible>(match body {
                                    Some(b) => Response::new(Full::new(b)),
                                    None => Response::builder()
                                        .status(404)
                                        .body(Full::new(Bytes::from_static(b"not found")))
                                        .unwrap(),
                                })
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        HttpsServer {
            addr,
            files,
            hits,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    pub fn put(&self, path: &str, bytes: Vec<u8>) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), Bytes::from(bytes));
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

/// A CONNECT proxy that tunnels and then drops the connection once `limit`
/// bytes went from the server to the client.
pub struct DroppingProxy {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DroppingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DroppingProxy {
    pub async fn start(limit: u64) -> DroppingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        if client.read_exact(&mut b).await.is_err() {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let Some(target) = head
                        .strip_prefix("CONNECT ")
                        .and_then(|r| r.split_whitespace().next())
                    else {
                        return;
                    };
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    if client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.split();
                    let up = tokio::io::copy(&mut cr, &mut sw);
                    let down = async {
                        let mut sent = 0u64;
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let n = n.min((limit - sent) as usize);
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            sent += n as u64;
                            if sent >= limit {
                                return; // the drop: both halves close below
                            }
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        DroppingProxy { port, task }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
