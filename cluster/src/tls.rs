//! Mutual TLS between members (`stoker serve --cluster-tls-cert/-key/-ca`,
//! docs/CLUSTER.md "TLS between nodes").
//!
//! Every node has a certificate and its key, and every node trusts one CA.
//! The server asks each connecting peer for a certificate signed by that CA
//! and refuses the handshake without one; the client checks the server's
//! certificate against the same CA and against the host of the address the
//! server advertises (`--peer-advertise`), so a node's certificate must
//! carry that host (or IP address) as a subject alternative name. TLS
//! authenticates the node; the cluster token still runs inside it and
//! decides membership of this cluster.
//!
//! Crypto is rustls's ring provider, named explicitly so nothing depends on
//! which process-wide default another part of the engine installed.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The three files of a node's TLS setup, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate (PEM), optionally followed by intermediates.
    pub cert: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA (PEM, one or more certificates) every member's certificate is signed by.
    pub ca: PathBuf,
}

/// A file of the TLS setup that cannot be used; one line, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("cluster TLS {what} {}: {why}", path.display())]
pub struct TlsError {
    what: &'static str,
    path: PathBuf,
    why: String,
}

fn fail(what: &'static str, path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError { what, path: path.to_path_buf(), why: why.to_string() }
}

/// Both sides of a node's TLS: what it presents and checks as a server and
/// as a client. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| fail(what, path, e))
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| fail(what, path, format_args!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(fail(what, path, "no PEM certificate (-----BEGIN CERTIFICATE-----) in it"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => fail("key", path, "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it"),
        e => fail("key", path, format_args!("bad PEM: {e}")),
    })
}

impl TlsFiles {
    /// Read and check the three files; any problem is one line naming the file.
    pub fn load(&self) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certs("certificate", &self.cert)?;
        let key = key(&self.key)?;
        let mut roots = RootCertStore::empty();
        for ca in certs("CA", &self.ca)? {
            roots.add(ca).map_err(|e| fail("CA", &self.ca, format_args!("not a usable CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| fail("CA", &self.ca, e))?;
        let unusable = |e: rustls::Error| fail("key", &self.key, format_args!("cannot be used with certificate {}: {e}", self.cert.display()));
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(unusable)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(unusable)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(unusable)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(unusable)?;
        Ok(Tls { server: Arc::new(server), client: Arc::new(client) })
    }
}

/// The name a client checks a member's certificate against: the host of
/// the address it advertises (`HOST:PORT`, `[IPv6]:PORT`); an IP address is
/// checked as an IP address SAN, anything else as a DNS name SAN.
pub fn server_name(advertised: &str) -> Result<ServerName<'static>, String> {
    let host = match advertised.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(h, _)| h),
        None => advertised.rsplit_once(':').map_or(advertised, |(h, _)| h),
    };
    ServerName::try_from(host.to_string()).map_err(|_| format!("{advertised}: {host:?} is neither a DNS name nor an IP address for TLS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_advertised_host() {
        let ip = |s: &str| ServerName::IpAddress(s.parse::<std::net::IpAddr>().unwrap().into());
        assert_eq!(server_name("10.0.0.7:7070").unwrap(), ip("10.0.0.7"));
        assert_eq!(server_name("[::1]:7070").unwrap(), ip("::1"));
        assert_eq!(server_name("gpu-07.example:7070").unwrap(), ServerName::try_from("gpu-07.example").unwrap());
        assert!(server_name("bad host:7070").is_err());
    }
}
