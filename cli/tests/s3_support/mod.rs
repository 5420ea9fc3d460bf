//! A real S3-compatible server on 127.0.0.1 for the s3_* tests: moto's
//! server (`pip install 'moto[server]'`; scripts/test.sh installs it when
//! missing), started per test on a free port and killed when dropped.
//! Objects are written through OpenDAL (`BlockingStore`), the same client
//! code the engine reads with.
//!
//! With `STOKER_S3_SERVER=s3s-fs` (the measurements in s3_bench.rs) the
//! server is s3s-fs 0.14.1 instead (`cargo install s3s-fs@0.14.1 --locked
//! --features binary`), which keeps objects as files under a directory:
//! large datasets are put in place as files (`bucket_dir`) instead of
//! uploaded, and it serves reads several times faster than moto.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stoker_engine::ufs::blocking::BlockingStore;

pub const ACCESS_KEY: &str = "stoker-test-key";
pub const SECRET_KEY: &str = "stoker-test-secret-DO-NOT-LOG";

/// The Python that has moto: `STOKER_MOTO_PYTHON` or `python3`.
fn python() -> String {
    std::env::var("STOKER_MOTO_PYTHON").unwrap_or_else(|_| "python3".into())
}

pub fn moto_available() -> bool {
    Command::new(python())
        .args(["-c", "import moto.server, flask_cors"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    /// The s3s-fs root (None: moto).
    fs_root: Option<tempfile::TempDir>,
}

/// Whether the tests should run s3s-fs rather than moto.
pub fn use_s3s_fs() -> bool {
    std::env::var("STOKER_S3_SERVER").is_ok_and(|v| v == "s3s-fs")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl S3Server {
    pub fn start() -> S3Server {
        let fs_root = use_s3s_fs().then(|| tempfile::tempdir_in("/var/tmp").unwrap());
        let mut s = S3Server { child: None, port: free_port(), fs_root };
        s.spawn();
        s
    }

    /// Where s3s-fs keeps `bucket`'s objects (one file per key), if it is
    /// the server.
    pub fn bucket_dir(&self, bucket: &str) -> Option<std::path::PathBuf> {
        self.fs_root.as_ref().map(|r| r.path().join(bucket))
    }

    fn spawn(&mut self) {
        let mut cmd = match &self.fs_root {
            Some(root) => {
                let mut cmd = Command::new("s3s-fs");
                cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()]);
                cmd.args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY]).arg(root.path());
                cmd
            }
            None => {
                assert!(moto_available(), "moto server missing: pip install 'moto[server]' (scripts/test.sh does)");
                let mut cmd = Command::new(python());
                cmd.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &self.port.to_string()]);
                cmd
            }
        };
        // The machine's CA variables make some clients load bundles even
        // for plain http; the server needs none of them.
        for v in ["AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"] {
            cmd.env_remove(v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawning the S3 server");
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("moto server exited early: {st}");
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "moto server did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kill the server (its objects are gone: moto keeps them in memory).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Create a bucket (moto takes unsigned requests; s3s-fs buckets are
    /// directories).
    pub fn create_bucket(&self, bucket: &str) {
        if let Some(d) = self.bucket_dir(bucket) {
            std::fs::create_dir_all(d).unwrap();
            return;
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.port)
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200"), "create bucket: {resp}");
    }

    /// `--mount-opt` values for a mount of this server (without the name).
    pub fn options(&self) -> Vec<(String, String)> {
        vec![
            ("endpoint".into(), self.endpoint()),
            ("region".into(), "us-east-1".into()),
            ("access_key_id".into(), ACCESS_KEY.into()),
            ("secret_access_key".into(), SECRET_KEY.into()),
            // Never look for instance credentials: nothing but 127.0.0.1.
            ("disable_ec2_metadata".into(), "true".into()),
            ("disable_config_load".into(), "true".into()),
        ]
    }

    /// `stoker serve` arguments mounting `s3://bucket/prefix` at `/name`.
    pub fn mount_args(&self, name: &str, uri: &str) -> Vec<String> {
        let mut v = vec!["--mount".to_string(), format!("{name}={uri}")];
        for (k, val) in self.options() {
            v.push("--mount-opt".into());
            v.push(format!("{name}:{k}={val}"));
        }
        v
    }

    pub fn store(&self, uri: &str) -> BlockingStore {
        BlockingStore::open(uri, &self.options(), 4).expect("opening the test store")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Skip (with a loud line) when moto cannot be found, unless CI requires it.
pub fn require_moto() -> bool {
    if use_s3s_fs() || moto_available() {
        return true;
    }
    if std::env::var_os("STOKER_REQUIRE_S3").is_some() {
        panic!("moto server is required (STOKER_REQUIRE_S3 is set) but python3 cannot import moto.server");
    }
    eprintln!("SKIPPED: moto server not installed (pip install 'moto[server]')");
    false
}
