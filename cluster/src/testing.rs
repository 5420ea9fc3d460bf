//! A real etcd on 127.0.0.1 for tests (this crate's and the cli's): Debian's
//! `etcd` binary on free ports with its data in a directory of the test's.
//! Not used by stoker itself.

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

