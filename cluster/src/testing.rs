//! A real etcd on 127.0.0.1 for tests (this crate's and the cli's): Debian's
//! `etcd` binary on free ports with its data in a directory of the test's;
//! and TLS certificates made with the `openssl` command. Not used by stoker
//! itself.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Etcd {
    child: Option<Child>,
    pub client_port: u16,
    peer_port: u16,
    dir: std::path::PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Etcd {
    /// None (with a printed reason) when etcd is not installed, unless
    /// STOKER_REQUIRE_ETCD is set, which makes that a failure.
    pub fn start(dir: &Path) -> Option<Etcd> {
        if Command::new("etcd").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            assert!(std::env::var_os("STOKER_REQUIRE_ETCD").is_none(), "etcd is required (STOKER_REQUIRE_ETCD=1) but not installed");
            println!("skipping: etcd is not installed (apt-get install etcd-server)");
            return None;
        }
        let mut e = Etcd { child: None, client_port: free_port(), peer_port: free_port(), dir: dir.to_path_buf() };
        e.spawn();
        Some(e)
    }

    /// Start (again) on the same ports and data.
    pub fn spawn(&mut self) {
        let c = format!("http://127.0.0.1:{}", self.client_port);
        let p = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.join("etcd"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args(["--initial-cluster", &format!("t={p}"), "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting etcd");
        self.child = Some(child);
    }

    /// Kill it (data kept).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        vec![format!("http://127.0.0.1:{}", self.client_port)]
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}


/// Test certificates made with the `openssl` command (Debian's `openssl`
/// package; scripts/setup.sh installs it): a CA, and node certificates it
/// signs for both server and client use.
pub struct TestCa {
    dir: std::path::PathBuf,
    name: String,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("running openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TestCa {
    /// A new CA `name` in `dir` (`name.pem`, `name.key`), P-256, valid 30 days.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let ca = TestCa { dir: dir.to_path_buf(), name: name.to_string() };
        let (key, cert) = (ca.file(name, "key"), ca.file(name, "pem"));
        let subject = format!("/CN={name}");
        let mut args = vec!["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", &key, "-out", &cert];
        args.extend(["-days", "30", "-subj", &subject, "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(&args);
        ca
    }

    fn file(&self, stem: &str, ext: &str) -> String {
        self.dir.join(format!("{stem}.{ext}")).display().to_string()
    }

    /// The CA's certificate (what `--cluster-tls-ca` names).
    pub fn cert(&self) -> std::path::PathBuf {
        self.file(&self.name, "pem").into()
    }

    /// Certificate and key of `node`, signed by this CA, for the subject
    /// alternative names `sans` (openssl syntax: `IP:127.0.0.1,DNS:localhost`),
    /// with this CA as its `ca`.
    pub fn node(&self, node: &str, sans: &str) -> crate::tls::TlsFiles {
        let stem = format!("{}-{node}", self.name);
        let (key, csr, cert, ext) = (self.file(&stem, "key"), self.file(&stem, "csr"), self.file(&stem, "pem"), self.file(&stem, "ext"));
        std::fs::write(&ext, format!("subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n")).unwrap();
        let subject = format!("/CN={node}");
        openssl(&["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &subject]);
        let (ca_cert, ca_key, serial) = (self.file(&self.name, "pem"), self.file(&self.name, "key"), self.file(&self.name, "srl"));
        openssl(&["x509", "-req", "-in", &csr, "-CA", &ca_cert, "-CAkey", &ca_key, "-CAserial", &serial, "-CAcreateserial", "-days", "30", "-out", &cert, "-extfile", &ext]);
        crate::tls::TlsFiles { cert: cert.into(), key: key.into(), ca: self.cert() }
    }
}
