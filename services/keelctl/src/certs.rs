//! `keelctl certs ...`: the certificate store through the console's local socket.
//! Passphrases come from a file or the environment, never from the command
//! line (where `ps` would show them).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Subcommand, ValueEnum};
use keel_api::{
    CertCheck, CertDeleteRequest, CertExportFile, CertExportRequest, CertFile, CertImportRequest,
    CertList, CertTargets, CertificateEntry, CsrCreated, ExportFormat, KeyType, NewCertRequest,
};
use keel_core::local_api::Client;

#[derive(Clone, Copy, ValueEnum)]
pub enum KeyArg {
    EcdsaP256,
    Rsa2048,
    Rsa3072,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Pem,
    Pkcs12,
}

#[derive(clap::Args)]
pub struct Passphrase {
    /// Read the passphrase from this file (first line).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Read the passphrase from this environment variable.
    #[arg(long, default_value = "KEEL_CERT_PASSPHRASE")]
    passphrase_env: String,
}

impl Passphrase {
    fn get(&self) -> anyhow::Result<Option<String>> {
        if let Some(f) = &self.passphrase_file {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            return Ok(Some(text.lines().next().unwrap_or("").to_owned()));
        }
        Ok(std::env::var(&self.passphrase_env).ok())
    }
}

#[derive(clap::Args)]
pub struct Targets {
    /// Local IP address to serve it on (repeatable).
    #[arg(long = "ip")]
    ips: Vec<IpAddr>,
    /// Host name (SNI) to serve it for (repeatable).
    #[arg(long = "host")]
    hostnames: Vec<String>,
    /// As the default certificate.
    #[arg(long)]
    default: bool,
}

impl Targets {
    fn body(&self) -> CertTargets {
        CertTargets {
            default: self.default,
            ips: self.ips.clone(),
            hostnames: self.hostnames.clone(),
        }
    }
}

#[derive(Subcommand)]
pub enum CertsCommand {
    /// List certificates, where they are served and their warnings.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Import PEM files (certificate, key, chain) or a PKCS#12 file.
    Import {
        files: Vec<PathBuf>,
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        passphrase: Passphrase,
    },
    /// Create a new key and a self-signed certificate.
    SelfSigned {
        /// Host name or IP address (repeatable; at least one).
        #[arg(long = "san", required = true)]
        sans: Vec<String>,
        #[arg(long, value_enum, default_value = "ecdsa-p256")]
        key: KeyArg,
        #[arg(long)]
        days: Option<u32>,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Create a new key and a certificate signing request (CSR) for a CA.
    Csr {
        #[arg(long = "san", required = true)]
        sans: Vec<String>,
        #[arg(long, value_enum, default_value = "ecdsa-p256")]
        key: KeyArg,
        #[arg(long, default_value = "")]
        label: String,
        /// Write the CSR here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Import the CA's answer to a pending CSR.
    Answer { id: String, files: Vec<PathBuf> },
    /// Export a certificate (and, encrypted, its key).
    Export {
        id: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "pem")]
        format: FormatArg,
        /// Include the private key, encrypted with the passphrase.
        #[arg(long)]
        with_key: bool,
        #[command(flatten)]
        passphrase: Passphrase,
    },
    /// Show what assigning would warn about.
    Check {
        id: String,
        #[command(flatten)]
        targets: Targets,
    },
    /// Serve a certificate on addresses / for names / as the default.
    Assign {
        id: String,
        #[command(flatten)]
        targets: Targets,
    },
    /// Stop serving whatever is assigned there.
    Unassign {
        #[command(flatten)]
        targets: Targets,
    },
    /// Delete a certificate; one in use needs a replacement (an id or `builtin`).
    Delete {
        id: String,
        #[arg(long)]
        replacement: Option<String>,
    },
}

fn key_type(k: KeyArg) -> KeyType {
    match k {
        KeyArg::EcdsaP256 => KeyType::EcdsaP256,
        KeyArg::Rsa2048 => KeyType::Rsa2048,
        KeyArg::Rsa3072 => KeyType::Rsa3072,
    }
}

fn files(paths: &[PathBuf]) -> anyhow::Result<Vec<CertFile>> {
    if paths.is_empty() {
        bail!("give at least one file");
    }
    paths
        .iter()
        .map(|p| {
            let data = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Ok(CertFile {
                name: p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                data_base64: base64::engine::general_purpose::STANDARD.encode(data),
            })
        })
        .collect()
}

fn render_entry(c: &CertificateEntry) -> String {
    let mut out = format!(
        "{}  {}{}\n  subject:  {}\n",
        c.id,
        c.label,
        if c.sha256_fingerprint.is_empty() {
            "  (pending: waiting for the CA's answer)"
        } else {
            ""
        },
        c.subject
    );
    if !c.sans.is_empty() {
        out.push_str(&format!("  names:    {}\n", c.sans.join(", ")));
    }
    if !c.sha256_fingerprint.is_empty() {
        out.push_str(&format!(
            "  issuer:   {}\n  valid:    {} .. {}\n  key:      {}\n  sha256:   {}\n",
            c.issuer, c.not_before, c.not_after, c.key_type, c.sha256_fingerprint
        ));
    }
    if !c.assigned.is_empty() {
        out.push_str(&format!("  served:   {}\n", c.assigned.join(", ")));
    }
    for w in &c.warnings {
        out.push_str(&format!("  WARNING:  {}\n", w.message));
    }
    out
}

pub fn render_list(l: &CertList) -> String {
    l.certificates
        .iter()
        .map(render_entry)
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn run(console: &Client, cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::List { json } => {
            let l: CertList = console.call::<(), _>("GET", "/certs", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&l)?);
            } else {
                print!("{}", render_list(&l));
            }
        }
        CertsCommand::Import {
            files: paths,
            label,
            passphrase,
        } => {
            let body = CertImportRequest {
                label,
                files: files(&paths)?,
                passphrase: passphrase.get()?,
            };
            let e: CertificateEntry = console.call("POST", "/certs/import", Some(&body)).await?;
            print!("{}", render_entry(&e));
        }
        CertsCommand::SelfSigned {
            sans,
            key,
            days,
            label,
        } => {
            let body = NewCertRequest {
                label,
                sans,
                key_type: key_type(key),
                days,
                ..Default::default()
            };
            let e: CertificateEntry = console
                .call("POST", "/certs/self-signed", Some(&body))
                .await?;
            print!("{}", render_entry(&e));
        }
        CertsCommand::Csr {
            sans,
            key,
            label,
            out,
        } => {
            let body = NewCertRequest {
                label,
                sans,
                key_type: key_type(key),
                ..Default::default()
            };
            let c: CsrCreated = console.call("POST", "/certs/csr", Some(&body)).await?;
            match out {
                Some(p) => {
                    std::fs::write(&p, &c.csr_pem)
                        .with_context(|| format!("writing {}", p.display()))?;
                    println!("request {} written to {}", c.certificate.id, p.display());
                }
                None => print!("{}", c.csr_pem),
            }
        }
        CertsCommand::Answer { id, files: paths } => {
            let body = CertImportRequest {
                files: files(&paths)?,
                ..Default::default()
            };
            let e: CertificateEntry = console
                .call("POST", &format!("/certs/{id}/answer"), Some(&body))
                .await?;
            print!("{}", render_entry(&e));
        }
        CertsCommand::Export {
            id,
            out,
            format,
            with_key,
            passphrase,
        } => {
            let body = CertExportRequest {
                format: match format {
                    FormatArg::Pem => ExportFormat::Pem,
                    FormatArg::Pkcs12 => ExportFormat::Pkcs12,
                },
                include_key: with_key,
                include_chain: true,
                passphrase: passphrase.get()?,
            };
            let f: CertExportFile = console
                .call("POST", &format!("/certs/{id}/export"), Some(&body))
                .await?;
            let data = base64::engine::general_purpose::STANDARD.decode(f.data_base64)?;
            std::fs::write(&out, data).with_context(|| format!("writing {}", out.display()))?;
            println!("written to {}", out.display());
        }
        CertsCommand::Check { id, targets } => {
            let c: CertCheck = console
                .call("POST", &format!("/certs/{id}/check"), Some(&targets.body()))
                .await?;
            if c.warnings.is_empty() {
                println!("no warnings");
            }
            for w in c.warnings {
                println!("WARNING: {}", w.message);
            }
        }
        CertsCommand::Assign { id, targets } => {
            let l: CertList = console
                .call(
                    "POST",
                    &format!("/certs/{id}/assign"),
                    Some(&targets.body()),
                )
                .await?;
            print!("{}", render_list(&l));
        }
        CertsCommand::Unassign { targets } => {
            let l: CertList = console
                .call("POST", "/certs/unassign", Some(&targets.body()))
                .await?;
            print!("{}", render_list(&l));
        }
        CertsCommand::Delete { id, replacement } => {
            console
                .call::<_, serde_json::Value>(
                    "POST",
                    &format!("/certs/{id}/delete"),
                    Some(&CertDeleteRequest { replacement }),
                )
                .await?;
            println!("deleted {id}");
        }
    }
    Ok(())
}
