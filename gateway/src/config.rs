//! The gateway's settings and the credentials file (`--s3-credentials`).
//! Every bound the gateway keeps is a field here, with its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Where S3 clients connect.
    pub listen: SocketAddr,
    /// The engine's control socket.
    pub socket: String,
    /// (access key, secret key) pairs; empty: unauthenticated (loopback only).
    pub credentials: Vec<(String, String)>,
    /// Base domain of virtual-host-style requests (`BUCKET.DOMAIN`).
    pub domain: String,
    /// Where multipart parts are staged until their upload completes.
    pub staging_dir: PathBuf,
    /// Client connections open at once; more are closed at accept.
    pub connections_max: usize,
    /// Threads running blocking engine calls (reads, writes, listings).
    pub blocking_threads: usize,
    /// Longest wait for a request's headers.
    pub header_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    pub body_idle_timeout: Duration,
    /// Longest a whole request may take (a 5 GiB upload included).
    pub request_timeout: Duration,
    /// Largest object of one PutObject, and largest part.
    pub object_bytes_max: u64,
    /// Multipart uploads open at once (each is a staging directory).
    pub uploads_max: usize,
}

impl GatewayConfig {
    pub fn new(listen: SocketAddr, socket: String, staging_dir: PathBuf) -> GatewayConfig {
        GatewayConfig {
            listen,
            socket,
            credentials: Vec::new(),
            domain: "localhost".into(),
            staging_dir,
            connections_max: 256,
            blocking_threads: 16,
            header_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(3600),
            object_bytes_max: 5 << 30,
            uploads_max: 1000,
        }
    }

    /// The refusal of a start that would expose an unauthenticated gateway.
    pub fn check(&self) -> Result<(), String> {
        if self.credentials.is_empty() && !self.listen.ip().is_loopback() {
            return Err(format!(
                "--s3 {}: without --s3-credentials the gateway is unauthenticated and binds only a loopback address (127.0.0.1 or ::1)",
                self.listen
            ));
        }
        if self.domain.is_empty() || self.domain.contains('/') {
            return Err(format!("bad --s3-domain {:?}: expected a host name, e.g. localhost", self.domain));
        }
        Ok(())
    }
}

/// `ACCESS_KEY:SECRET_KEY` pairs, one a line; blank lines and `#` comments
/// are skipped. Errors name the line, never its secret.
pub fn parse_credentials(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((access, secret)) = line.split_once(':') else {
            return Err(format!("line {}: expected ACCESS_KEY:SECRET_KEY", i + 1));
        };
        let (access, secret) = (access.trim(), secret.trim());
        if access.is_empty() || secret.is_empty() || access.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(format!("line {}: expected ACCESS_KEY:SECRET_KEY (both non-empty, no spaces or '/' in the key)", i + 1));
        }
        if out.iter().any(|(a, _)| a == access) {
            return Err(format!("line {}: access key {access:?} is given twice", i + 1));
        }
        out.push((access.to_string(), secret.to_string()));
    }
    if out.is_empty() {
        return Err("no ACCESS_KEY:SECRET_KEY line".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_lines() {
        let c = parse_credentials("# keys\nAK1:secret one\n\n  AK2 : s2 \n").unwrap();
        assert_eq!(c, vec![("AK1".into(), "secret one".into()), ("AK2".into(), "s2".into())]);
        assert_eq!(parse_credentials("AK1secret").unwrap_err(), "line 1: expected ACCESS_KEY:SECRET_KEY");
        assert!(parse_credentials("A:x\n:y").unwrap_err().starts_with("line 2:"));
        assert!(parse_credentials("A:x\nA:y").unwrap_err().contains("twice"));
        assert_eq!(parse_credentials("\n# none\n").unwrap_err(), "no ACCESS_KEY:SECRET_KEY line");
        // The secret never appears in an error.
        assert!(!parse_credentials("A:topsecret\nA:topsecret").unwrap_err().contains("topsecret"));
    }

    #[test]
    fn unauthenticated_binds_loopback_only() {
        let mut c = GatewayConfig::new("0.0.0.0:9000".parse().unwrap(), "/s".into(), "/d".into());
        assert!(c.check().unwrap_err().contains("loopback"));
        c.listen = "127.0.0.1:9000".parse().unwrap();
        assert!(c.check().is_ok());
        c.listen = "0.0.0.0:9000".parse().unwrap();
        c.credentials = vec![("a".into(), "b".into())];
        assert!(c.check().is_ok());
    }
}
