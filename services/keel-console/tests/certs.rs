//! The certificate store through the console: its API over the real TLS server,
//! certificates chosen per local address (127.0.0.1 vs 127.0.0.2) and per SNI
//! name, checked with a rustls client and with `openssl s_client`, and a hot
//! swap while a connection stays open.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;

use base64::Engine;
use keel_certs::pinning::FingerprintVerifier;
use keel_console::{app, certs, tls};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Console {
    port: u16,
    data: tempfile::TempDir,
    http: reqwest::Client,
    csrf: String,
}

const IP1: &str = "127.0.0.1";
const IP2: &str = "127.0.0.2";

/// The console's state over `data` with its certificate store (`console/certs`,
/// the built-in identity beside it) and the resolver serving from that store.
fn with_store(
    data: &std::path::Path,
) -> (
    Arc<keel_certs::CertStore>,
    Arc<tls::CertResolver>,
    Arc<app::AppState>,
) {
    let (identity, _) = common::identity(data);
    let console_dir = data.join("console");
    let store = Arc::new(
        keel_certs::CertStore::open(console_dir.join("certs"), console_dir.join("tls")).unwrap(),
    );
    let resolver = Arc::new(tls::CertResolver::from_serving(store.serving().unwrap()));
    (store, resolver, common::app_state(data, &identity))
}

/// The console as main.rs builds it, listening on 127.0.0.1:P and 127.0.0.2:P
/// (the same port: two local addresses of one appliance), logged in.
async fn start() -> Console {
    let data = tempfile::tempdir().unwrap();
    let (store, resolver, state) = with_store(data.path());
    let router = app::router_with(
        state.clone(),
        certs::routes(certs::CertsState::new(state, store, resolver.clone())),
    );
    // Same port on both addresses; retry if the second is taken.
    let (l1, l2) = loop {
        let l1 = tokio::net::TcpListener::bind((IP1, 0)).await.unwrap();
        let port = l1.local_addr().unwrap().port();
        if let Ok(l2) = tokio::net::TcpListener::bind((IP2, port)).await {
            break (l1, l2);
        }
    };
    let port = l1.local_addr().unwrap().port();
    tokio::spawn(tls::serve_https(l1, resolver.clone(), router.clone()));
    tokio::spawn(tls::serve_https(l2, resolver, router));

    let (http, _) = common::client();
    let csrf = common::set_up(&http, &format!("https://{IP1}:{port}"), data.path()).await;
    Console {
        port,
        data,
        http,
        csrf,
    }
}

impl Console {
    fn url(&self, path: &str) -> String {
        format!("https://{IP1}:{}/appliance/api/v1{path}", self.port)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .header("x-csrf-token", &self.csrf)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains("PRIVATE KEY"),
            "key material in an API answer: {text}"
        );
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains("PRIVATE KEY"),
            "key material in an API answer: {text}"
        );
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn self_signed(&self, label: &str, sans: &[&str]) -> Value {
        let (st, e) = self
            .post(
                "/certs/self-signed",
                json!({"label": label, "sans": sans, "days": 90}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{e}");
        e
    }

    async fn assign(&self, id: &str, targets: Value) -> Value {
        let (st, list) = self.post(&format!("/certs/{id}/assign"), targets).await;
        assert_eq!(st, StatusCode::OK, "{list}");
        list
    }

    async fn count(&self) -> usize {
        self.get("/certs").await.1["certificates"]
            .as_array()
            .unwrap()
            .len()
    }

    fn addr(&self, ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse::<IpAddr>().unwrap(), self.port)
    }

    fn page_url(&self, path: &str) -> String {
        format!(
            "https://{IP1}:{}/appliance/security/certificates{path}",
            self.port
        )
    }

    /// Posts a form of the certificates page as a browser does with
    /// `enctype="multipart/form-data"`; returns the status and the page.
    async fn upload(&self, path: &str, parts: &[Part<'_>]) -> (StatusCode, String) {
        let (content_type, body) = multipart(parts);
        let resp = self
            .http
            .post(self.page_url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(!text.contains("PRIVATE KEY"), "key material on the page");
        (status, text)
    }

    async fn status_fingerprint(&self) -> String {
        let (st, s) = self.get("/status").await;
        assert_eq!(st, StatusCode::OK, "{s}");
        s["certificate"]["sha256_fingerprint"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// One part of a `multipart/form-data` body.
enum Part<'a> {
    Field(&'a str, &'a str),
    /// Field name, file name (empty: no file chosen), content.
    File(&'a str, &'a str, &'a [u8]),
}

/// A `multipart/form-data` body as browsers build it: (content type, body).
fn multipart(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    let boundary = "----KeelTestBoundary5pQ2ZxW9vLr";
    let mut body = Vec::new();
    for p in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match p {
            Part::Field(name, value) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                    .as_bytes(),
            ),
            Part::File(name, file, data) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\n\
                         Content-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(data);
                body.extend_from_slice(b"\r\n");
            }
        }
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Fingerprint a fresh rustls handshake to `ip` sees (with SNI `name`, if any).
async fn served(c: &Console, ip: &str, name: Option<&str>) -> String {
    let (stream, verifier) = connect(c, ip, name).await;
    drop(stream);
    verifier.seen().unwrap()
}

async fn connect(
    c: &Console,
    ip: &str,
    name: Option<&str>,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Arc<FingerprintVerifier>,
) {
    let verifier = FingerprintVerifier::record_any();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(verifier.client_config()));
    let server_name = match name {
        Some(n) => rustls::pki_types::ServerName::try_from(n.to_owned()).unwrap(),
        // An IP literal: rustls sends no SNI.
        None => rustls::pki_types::ServerName::IpAddress(ip.parse::<IpAddr>().unwrap().into()),
    };
    let tcp = tokio::net::TcpStream::connect(c.addr(ip)).await.unwrap();
    let stream = connector.connect(server_name, tcp).await.unwrap();
    (stream, verifier)
}

/// One HTTP/1.1 request on an open TLS connection; returns the response head+body.
async fn health_on(stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    stream
        .write_all(b"GET /appliance/api/v1/health HTTP/1.1\r\nHost: keel\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&buf).contains("\"ok\"}") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).unwrap()
}

/// What `openssl s_client` is served at `ip` (with `-servername`, if any);
/// `None` if openssl is not installed.
fn openssl_served(c: &Console, ip: &str, name: Option<&str>) -> Option<String> {
    let connect = c.addr(ip).to_string();
    let mut args = vec!["s_client", "-connect", connect.as_str(), "-showcerts"];
    if let Some(n) = name {
        args.extend(["-servername", n]);
    } else {
        args.push("-noservername");
    }
    let out = match Command::new("openssl")
        .args(&args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            println!("SKIP openssl s_client: {e}");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let info = keel_certs::info(&text).unwrap_or_else(|e| panic!("s_client output: {e}\n{text}"));
    Some(info.sha256_fingerprint)
}

#[tokio::test(flavor = "multi_thread")]
async fn per_address_and_sni_certificates_with_hot_swap() {
    let c = start().await;
    let builtin = c.get("/certs/builtin").await.1["sha256_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(served(&c, IP1, None).await, builtin);
    assert_eq!(served(&c, IP2, None).await, builtin);

    let one = c.self_signed("one", &["one.example", IP1]).await;
    let two = c.self_signed("two", &["two.example", IP2]).await;
    let (one_id, one_fp) = (
        one["id"].as_str().unwrap(),
        one["sha256_fingerprint"].as_str().unwrap(),
    );
    let (two_id, two_fp) = (
        two["id"].as_str().unwrap(),
        two["sha256_fingerprint"].as_str().unwrap(),
    );

    // Warnings are shown before assigning: 127.0.0.2 is not in "one".
    let (st, chk) = c
        .post(&format!("/certs/{one_id}/check"), json!({"ips": [IP2]}))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(chk["warnings"][0]["code"], "name_not_in_sans", "{chk}");

    c.assign(one_id, json!({"ips": [IP1]})).await;
    let list = c
        .assign(two_id, json!({"ips": [IP2], "hostnames": ["two.example"]}))
        .await;
    assert_eq!(list["assignments"]["ips"][IP1], one_id);

    // Two local addresses, two certificates, no restart.
    assert_eq!(served(&c, IP1, None).await, one_fp);
    assert_eq!(served(&c, IP2, None).await, two_fp);
    // The name asked for wins over the address.
    assert_eq!(served(&c, IP1, Some("two.example")).await, two_fp);
    assert_eq!(served(&c, IP1, Some("other.example")).await, one_fp);
    // A client nobody here wrote sees the same.
    if let Some(fp) = openssl_served(&c, IP1, None) {
        assert_eq!(fp, one_fp);
        assert_eq!(openssl_served(&c, IP2, None).unwrap(), two_fp);
        assert_eq!(
            openssl_served(&c, IP1, Some("two.example")).unwrap(),
            two_fp
        );
    }

    // Hot swap with a connection held open: it keeps working (with the
    // certificate it negotiated); new connections get the new one.
    let (mut held, held_verifier) = connect(&c, IP1, None).await;
    assert!(health_on(&mut held).await.starts_with("HTTP/1.1 200"));
    c.assign(two_id, json!({"ips": [IP1]})).await;
    assert_eq!(served(&c, IP1, None).await, two_fp);
    assert!(health_on(&mut held).await.starts_with("HTTP/1.1 200"));
    assert_eq!(held_verifier.seen().unwrap(), one_fp);
    let (_, conn) = held.get_ref();
    let peer = conn.peer_certificates().unwrap();
    assert_eq!(keel_certs::fingerprint(peer[0].as_ref()), one_fp);

    // In use: not deleted without a replacement; with one, it takes over.
    let (st, err) = c.post(&format!("/certs/{two_id}/delete"), json!({})).await;
    assert_eq!(st, StatusCode::CONFLICT, "{err}");
    assert!(err["error"].as_str().unwrap().contains("replacement"));
    let (st, _) = c
        .post(
            &format!("/certs/{two_id}/delete"),
            json!({"replacement": one_id}),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(served(&c, IP2, None).await, one_fp);
    assert_eq!(served(&c, IP1, Some("two.example")).await, one_fp);

    // Unassigning falls back to the default (the built-in one).
    c.post(
        "/certs/unassign",
        json!({"ips": [IP1, IP2], "hostnames": ["two.example"]}),
    )
    .await;
    assert_eq!(served(&c, IP2, None).await, builtin);
    // The store survives a restart of the console: same assignments file.
    assert!(c
        .data
        .path()
        .join("console/certs/assignments.json")
        .exists());
}

fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
    match Command::new("openssl").args(args).current_dir(dir).output() {
        Ok(o) => {
            assert!(
                o.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            true
        }
        Err(e) => {
            println!("SKIP: openssl not runnable ({e})");
            false
        }
    }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[tokio::test(flavor = "multi_thread")]
async fn import_a_ca_signed_pkcs12_through_the_api_and_serve_it() {
    let c = start().await;
    let dir = c.data.path();
    if !openssl(dir, &["version"]) {
        return;
    }
    std::fs::write(
        dir.join("leaf.ext"),
        format!("subjectAltName=DNS:keel.example,IP:{IP2}\n"),
    )
    .unwrap();
    assert!(openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=Console Test CA",
            "-days",
            "30",
        ]
    ));
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=keel.example",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.crt",
            "-days",
            "60",
            "-extfile",
            "leaf.ext",
        ],
    );
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-in",
            "leaf.crt",
            "-inkey",
            "leaf.key",
            "-certfile",
            "ca.crt",
            "-out",
            "leaf.p12",
            "-passout",
            "pass:p12 secret",
        ],
    );
    let p12 = std::fs::read(dir.join("leaf.p12")).unwrap();
    let want = keel_certs::info(&std::fs::read_to_string(dir.join("leaf.crt")).unwrap())
        .unwrap()
        .sha256_fingerprint;
    let before = c.count().await;

    // Refusals: clear errors, nothing stored.
    let file = json!([{"name": "leaf.p12", "data_base64": b64(&p12)}]);
    let (st, err) = c
        .post(
            "/certs/import",
            json!({"files": file, "passphrase": "wrong"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        err["error"].as_str().unwrap().contains("wrong passphrase"),
        "{err}"
    );
    let cut = json!([{"name": "cut.p12", "data_base64": b64(&p12[..p12.len() - 100])}]);
    let (st, err) = c
        .post(
            "/certs/import",
            json!({"files": cut, "passphrase": "p12 secret"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        err["error"].as_str().unwrap().contains("truncated"),
        "{err}"
    );
    let junk =
        json!([{"name": "junk.pem", "data_base64": b64(b"-----BEGIN CERTIFICATE-----\nabc\n")}]);
    let (st, err) = c.post("/certs/import", json!({"files": junk})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(err["error"].as_str().unwrap().contains("junk.pem"), "{err}");
    let big = json!([{"name": "big.pem", "data_base64": b64(&vec![b'A'; 300 * 1024])}]);
    let (st, err) = c.post("/certs/import", json!({"files": big})).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(err["error"].as_str().unwrap().contains("limit"), "{err}");
    let huge = vec![b'x'; 4 * 1024 * 1024];
    let resp = c
        .http
        .post(c.url("/certs/import"))
        .header("x-csrf-token", &c.csrf)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(c.count().await, before);
    // Without the CSRF header: refused.
    let resp = c
        .http
        .post(c.url("/certs/import"))
        .json(&json!({"files": file, "passphrase": "p12 secret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    let (st, e) = c
        .post(
            "/certs/import",
            json!({"label": "CA-signed", "files": file, "passphrase": "p12 secret"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{e}");
    assert_eq!(e["sha256_fingerprint"], want.as_str());
    assert_eq!(e["chain_length"], 2);
    assert_eq!(e["key_type"], "RSA 2048");
    let id = e["id"].as_str().unwrap();
    c.assign(id, json!({"ips": [IP2]})).await;
    assert_eq!(served(&c, IP2, None).await, want);
    if let Some(fp) = openssl_served(&c, IP2, None) {
        assert_eq!(fp, want);
    }
    // openssl verifies the served chain against the CA.
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &c.addr(IP2).to_string(),
            "-CAfile",
            "ca.crt",
            "-verify_return_error",
            "-verify_ip",
            IP2,
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");

    // Export: a key only with a passphrase; openssl reads what we give.
    let (st, err) = c
        .post(
            &format!("/certs/{id}/export"),
            json!({"format": "pkcs12", "include_key": true}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{err}");
    assert!(err["error"].as_str().unwrap().contains("passphrase"));
    let resp = c
        .http
        .post(c.url(&format!("/certs/{id}/export")))
        .header("x-csrf-token", &c.csrf)
        .json(&json!({"format": "pkcs12", "include_key": true, "passphrase": "export secret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-pkcs12");
    assert!(resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("keel.example.p12"));
    std::fs::write(dir.join("export.p12"), resp.bytes().await.unwrap()).unwrap();
    let out = Command::new("openssl")
        .args([
            "pkcs12",
            "-in",
            "export.p12",
            "-passin",
            "pass:export secret",
            "-nokeys",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported = keel_certs::info(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(exported.sha256_fingerprint, want);
    // The certificate alone is a plain download.
    let (st, _) = c.get(&format!("/certs/{id}/certificate")).await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn csr_through_the_api_and_the_html_page() {
    let c = start().await;
    let (st, made) = c
        .post(
            "/certs/csr",
            json!({"label": "for the CA", "sans": ["csr.example", IP1]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{made}");
    assert_eq!(made["certificate"]["state"], "pending");
    let id = made["certificate"]["id"].as_str().unwrap().to_owned();
    let csr = made["csr_pem"].as_str().unwrap();
    assert!(csr.contains("BEGIN CERTIFICATE REQUEST"));
    let resp = c
        .http
        .get(c.url(&format!("/certs/{id}/csr")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), csr);
    // Not servable yet.
    let (st, _) = c
        .post(&format!("/certs/{id}/assign"), json!({"default": true}))
        .await;
    assert_eq!(st, StatusCode::CONFLICT);

    let dir = c.data.path();
    if openssl(dir, &["version"]) {
        std::fs::write(dir.join("req.csr"), csr).unwrap();
        std::fs::write(
            dir.join("ext"),
            format!("subjectAltName=DNS:csr.example,IP:{IP1}\n"),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                "/CN=CSR Test CA",
                "-days",
                "30",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "req.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "answer.crt",
                "-days",
                "60",
                "-extfile",
                "ext",
            ],
        );
        let answer = std::fs::read(dir.join("answer.crt")).unwrap();
        let (st, e) = c
            .post(
                &format!("/certs/{id}/answer"),
                json!({"files": [{"data_base64": b64(&answer)}]}),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{e}");
        assert_eq!(e["state"], "active");
        assert_eq!(e["id"], id.as_str());
        // Only the answer came: the CA certificate is missing from the chain.
        assert!(
            e["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["code"] == "chain_incomplete"),
            "{e}"
        );
        c.assign(&id, json!({"default": true})).await;
        assert_eq!(
            served(&c, IP2, None).await,
            e["sha256_fingerprint"].as_str().unwrap()
        );

        // The CA's answer as a file chosen on the page (DER this time, with the
        // CA certificate as a second file).
        let (st, made) = c
            .post(
                "/certs/csr",
                json!({"label": "answered on the page", "sans": ["csr.example"]}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{made}");
        let id2 = made["certificate"]["id"].as_str().unwrap().to_owned();
        std::fs::write(dir.join("req2.csr"), made["csr_pem"].as_str().unwrap()).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "req2.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "answer2.der",
                "-outform",
                "DER",
                "-days",
                "60",
                "-extfile",
                "ext",
            ],
        );
        let der = std::fs::read(dir.join("answer2.der")).unwrap();
        let ca = std::fs::read(dir.join("ca.crt")).unwrap();
        let (st, page) = c
            .upload(
                &format!("/{id2}/answer"),
                &[
                    Part::Field("csrf", &c.csrf),
                    Part::File("files", "answer.cer", &der),
                    Part::File("files", "ca.crt", &ca),
                    Part::Field("pem", ""),
                ],
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{page}");
        assert!(page.contains("completed"), "{page}");
        let (_, e2) = c.get(&format!("/certs/{id2}")).await;
        assert_eq!(e2["state"], "active", "{e2}");
        assert_eq!(e2["chain_length"], 2, "{e2}");
        assert_eq!(
            e2["sha256_fingerprint"].as_str().unwrap(),
            keel_certs::fingerprint(&der)
        );
    }

    // The HTML page lists the store; nothing secret on it.
    let page = c
        .http
        .get(format!(
            "https://{IP1}:{}/appliance/security/certificates",
            c.port
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Security › Certificates"), "{page}");
    assert!(page.contains("for the CA"));
    assert!(page.contains("Built-in self-signed"));
    assert!(!page.contains("PRIVATE KEY"));
    // A form post needs the session's CSRF token.
    let resp = c
        .http
        .post(format!(
            "https://{IP1}:{}/appliance/security/certificates/self-signed",
            c.port
        ))
        .form(&[("label", "x"), ("sans", "x.example")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = c
        .http
        .post(format!(
            "https://{IP1}:{}/appliance/security/certificates/self-signed",
            c.port
        ))
        .form(&[
            ("csrf", c.csrf.as_str()),
            ("label", "from the page"),
            ("sans", "page.example, 192.0.2.9"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let page = resp.text().await.unwrap();
    assert!(page.contains("Created"), "{page}");
    assert!(page.contains("IP:192.0.2.9"));

    // Something in use expires soon: the Basics page says so.
    let (st, soon) = c
        .post(
            "/certs/self-signed",
            json!({"label": "short-lived", "sans": [IP2], "days": 10}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let basics = |c: &Console| {
        let url = format!("https://{IP1}:{}/appliance/", c.port);
        let http = c.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    assert!(!basics(&c).await.contains("short-lived"));
    c.assign(soon["id"].as_str().unwrap(), json!({"ips": [IP2]}))
        .await;
    let page = basics(&c).await;
    assert!(page.contains("short-lived: expires in"), "{page}");
    assert!(
        page.contains("<td>short-lived</td><td><code>ip:127.0.0.2</code>"),
        "{page}"
    );
}

/// The local socket (keelctl's way in): no session, the socket's mode decides.
#[tokio::test(flavor = "multi_thread")]
async fn local_api_for_keelctl() {
    let data = tempfile::tempdir().unwrap();
    let (store, resolver, state) = with_store(data.path());
    let cs = certs::CertsState::new(state, store, resolver.clone());
    let sock = data.path().join("api.sock");
    let listener = keel_core::local_api::bind(&sock, 0o600).unwrap();
    tokio::spawn(keel_core::local_api::serve(
        listener,
        certs::local_router(cs),
    ));
    let client = keel_core::local_api::Client::new(&sock);

    let e: keel_api::CertificateEntry = client
        .call(
            "POST",
            "/certs/self-signed",
            Some(&json!({"sans": ["local.example"], "label": "via keelctl"})),
        )
        .await
        .unwrap();
    let id = e.id.clone();
    let _: Value = client
        .call(
            "POST",
            &format!("/certs/{id}/assign"),
            Some(&json!({"default": true})),
        )
        .await
        .unwrap();
    // Served at once.
    assert_eq!(
        keel_certs::fingerprint(resolver.choose(None, None).cert[0].as_ref()),
        e.sha256_fingerprint
    );
    let err = client
        .call::<_, Value>(
            "POST",
            &format!("/certs/{id}/export"),
            Some(&json!({"include_key": true})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("passphrase"), "{err}");
    let f: keel_api::CertExportFile = client
        .call(
            "POST",
            &format!("/certs/{id}/export"),
            Some(&json!({"format": "pkcs12", "include_key": true, "passphrase": "local secret"})),
        )
        .await
        .unwrap();
    assert!(f.file_name.ends_with(".p12"));
    let list: keel_api::CertList = client.call::<(), _>("GET", "/certs", None).await.unwrap();
    assert_eq!(list.assignments.default.as_deref(), Some(id.as_str()));
}

/// An admin uploads a PKCS#12 file from the browser (the page's multipart form),
/// then makes it the default: the status reports what is served.
#[tokio::test(flavor = "multi_thread")]
async fn upload_a_pkcs12_through_the_page_and_make_it_the_default() {
    let c = start().await;
    let dir = c.data.path();
    if !openssl(dir, &["version"]) {
        return;
    }
    // OpenSSL 3's defaults, no -legacy: AES-256-CBC, PBKDF2, HMAC-SHA256 MAC.
    assert!(openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "up.key",
            "-out",
            "up.crt",
            "-subj",
            "/CN=upload.example",
            "-addext",
            &format!("subjectAltName=DNS:upload.example,IP:{IP1},IP:{IP2}"),
            "-days",
            "90",
        ]
    ));
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-in",
            "up.crt",
            "-inkey",
            "up.key",
            "-name",
            "uploaded",
            "-out",
            "up.p12",
            "-passout",
            "pass:upload secret",
        ],
    );
    let p12 = std::fs::read(dir.join("up.p12")).unwrap();
    let want = keel_certs::info(&std::fs::read_to_string(dir.join("up.crt")).unwrap())
        .unwrap()
        .sha256_fingerprint;
    let builtin = c.get("/certs/builtin").await.1["sha256_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(c.status_fingerprint().await, builtin);
    let before = c.count().await;

    // The page offers the upload.
    let page = c.http.get(c.page_url("")).send().await.unwrap();
    let page = page.text().await.unwrap();
    assert!(page.contains(r#"enctype="multipart/form-data""#), "{page}");
    assert!(page.contains(r#"<input type="file" id="import-files" name="files" multiple>"#));

    // Wrong passphrase: the store's error on the page, nothing stored.
    let (st, page) = c
        .upload(
            "/import",
            &[
                Part::Field("csrf", &c.csrf),
                Part::Field("label", "uploaded"),
                Part::File("files", "up.p12", &p12),
                Part::Field("pem", ""),
                Part::Field("passphrase", "not the one"),
            ],
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{page}");
    assert!(page.contains("wrong passphrase"), "{page}");
    assert!(page.contains("Security › Certificates"));
    // Garbage, and a file over the store's limit: named in the message.
    let (st, page) = c
        .upload(
            "/import",
            &[
                Part::Field("csrf", &c.csrf),
                Part::File("files", "certs/junk.pfx", b"not a certificate at all"),
                Part::Field("passphrase", "upload secret"),
            ],
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{page}");
    assert!(page.contains("junk.pfx"), "{page}");
    assert!(!page.contains("certs/junk"), "{page}");
    let big = vec![b'A'; 300 * 1024];
    let (st, page) = c
        .upload(
            "/import",
            &[
                Part::Field("csrf", &c.csrf),
                Part::File("files", "big.pem", &big),
            ],
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{page}");
    assert!(
        page.contains("big.pem is larger than the limit of 262144 bytes"),
        "{page}"
    );
    // Over the whole form's limit: said on the page before reading it.
    let huge = vec![b'A'; 4 * 1024 * 1024];
    let (st, page) = c
        .upload(
            "/import",
            &[
                Part::Field("csrf", &c.csrf),
                Part::File("files", "huge.p12", &huge),
            ],
        )
        .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{page}");
    assert!(page.contains("over the limit"), "{page}");
    assert!(page.contains("nothing was imported"), "{page}");
    // Nothing chosen, nothing pasted.
    let (st, page) = c
        .upload(
            "/import",
            &[
                Part::Field("csrf", &c.csrf),
                Part::File("files", "", b""),
                Part::Field("pem", "  "),
            ],
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{page}");
    assert!(page.contains("nothing to import"), "{page}");

    // No CSRF field, a wrong one, or one after the file that is wrong: 403.
    let good = [
        Part::File("files", "up.p12", &p12[..]),
        Part::Field("passphrase", "upload secret"),
    ];
    let (st, page) = c.upload("/import", &good).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{page}");
    assert!(page.contains("nothing was changed"), "{page}");
    let (st, _) = c
        .upload(
            "/import",
            &[
                Part::Field("csrf", "0123456789abcdef"),
                Part::File("files", "up.p12", &p12),
                Part::Field("passphrase", "upload secret"),
            ],
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = c
        .upload(
            "/import",
            &[
                Part::File("files", "up.p12", &p12),
                Part::Field("passphrase", "upload secret"),
                Part::Field("csrf", ""),
            ],
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Another site's page, even with the token: refused.
    let (content_type, body) = multipart(&[
        Part::Field("csrf", &c.csrf),
        Part::File("files", "up.p12", &p12),
        Part::Field("passphrase", "upload secret"),
    ]);
    let resp = c
        .http
        .post(c.page_url("/import"))
        .header("content-type", content_type)
        .header("origin", "https://evil.example")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(c.count().await, before, "a refused upload stored something");

    // The real thing: the token last, as a hand-made form might send it.
    let (st, page) = c
        .upload(
            "/import",
            &[
                Part::Field("label", "uploaded"),
                Part::File("files", "up.p12", &p12),
                Part::Field("pem", ""),
                Part::Field("passphrase", "upload secret"),
                Part::Field("csrf", &c.csrf),
            ],
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{page}");
    assert!(
        page.contains("Imported &#34;uploaded&#34;")
            || page.contains("Imported &quot;uploaded&quot;"),
        "{page}"
    );
    assert!(
        page.contains(&keel_certs::fingerprint_display(&want)),
        "{page}"
    );
    assert_eq!(c.count().await, before + 1);
    let list = c.get("/certs").await.1;
    let entry = list["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["label"] == "uploaded")
        .unwrap_or_else(|| panic!("{list}"))
        .clone();
    assert_eq!(entry["sha256_fingerprint"], want.as_str());
    assert_eq!(entry["key_type"], "ECDSA P-256");
    let id = entry["id"].as_str().unwrap();
    // The same again: already stored, said so.
    let (st, page) = c
        .upload(
            "/import",
            &[
                Part::Field("csrf", &c.csrf),
                Part::File("files", "up.p12", &p12),
                Part::Field("passphrase", "upload secret"),
            ],
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{page}");
    assert!(page.contains("already stored"), "{page}");

    // Made the default on the page: served at once, and the status says so.
    assert_eq!(c.status_fingerprint().await, builtin);
    let resp = c
        .http
        .post(c.page_url(&format!("/{id}/assign")))
        .form(&[
            ("csrf", c.csrf.as_str()),
            ("targets", ""),
            ("default", "1"),
            ("action", "assign"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(served(&c, IP1, None).await, want);
    assert_eq!(c.status_fingerprint().await, want);
    let (_, s) = c.get("/status").await;
    assert_eq!(s["certificate"]["subject"], "CN=upload.example", "{s}");
    // Basics: the default and every certificate in use, with its warnings.
    let basics = c
        .http
        .get(format!("https://{IP1}:{}/appliance/", c.port))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let section = &basics[basics.find(r#"<section id="certificate">"#).unwrap()..];
    let section = &section[..section.find("</section>").unwrap()];
    assert!(
        section.contains(&format!(
            "<tr><th>SHA-256 fingerprint</th><td><code>{}</code>",
            keel_certs::fingerprint_display(&want)
        )),
        "{section}"
    );
    assert!(
        section.contains("<tr><th>Certificate</th><td>uploaded</td></tr>"),
        "{section}"
    );
    assert!(
        !section.contains(&keel_certs::fingerprint_display(&builtin)),
        "{section}"
    );
    // The built-in one served at an address again: listed as in use there.
    c.assign("builtin", json!({"ips": [IP2]})).await;
    let basics = c
        .http
        .get(format!("https://{IP1}:{}/appliance/", c.port))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        basics.contains("<td>uploaded</td><td><code>default</code>"),
        "{basics}"
    );
    assert!(
        basics.contains("<td>Built-in self-signed</td><td><code>ip:127.0.0.2</code>"),
        "{basics}"
    );
    assert!(
        basics.contains("Built-in self-signed: the address 127.0.0.2 is not among"),
        "{basics}"
    );
    assert_eq!(c.status_fingerprint().await, want);

    // Paste still works in the same form (no file chosen).
    let (st, e) = c
        .post(
            "/certs/self-signed",
            json!({"label": "to paste", "sans": ["paste.example"], "days": 30}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let exported = c
        .http
        .post(c.url(&format!("/certs/{}/export", e["id"].as_str().unwrap())))
        .header("x-csrf-token", &c.csrf)
        .json(&json!({"format": "pem", "include_key": true, "passphrase": "paste secret"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(exported.contains("ENCRYPTED PRIVATE KEY"));
    let (st, _) = c
        .post(
            &format!("/certs/{}/delete", e["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, page) = c
        .upload(
            "/import",
            &[
                Part::Field("csrf", &c.csrf),
                Part::Field("label", "pasted"),
                Part::File("files", "", b""),
                Part::Field("pem", &exported),
                Part::Field("passphrase", "paste secret"),
            ],
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{page}");
    assert!(page.contains("pasted"), "{page}");
    assert!(page.contains(&keel_certs::fingerprint_display(
        e["sha256_fingerprint"].as_str().unwrap()
    )));
}
