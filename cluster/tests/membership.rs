//! Membership against a real etcd on 127.0.0.1 (Debian's etcd-server):
//! nodes join and see each other, a clean leave is seen at once, a crashed
//! node leaves with its lease, and with etcd stopped the nodes keep their
//! last member list and converge again once it is back. Skipped with a
//! printed reason when etcd is not installed, unless STOKER_REQUIRE_ETCD=1
//! (scripts/test.sh sets it and installs etcd).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use stoker_cluster::{JoinConfig, Member, Membership, View};

struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: std::path::PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Etcd {
    fn start(dir: &Path) -> Option<Etcd> {
        if Command::new("etcd").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            assert!(std::env::var_os("STOKER_REQUIRE_ETCD").is_none(), "etcd is required (STOKER_REQUIRE_ETCD=1) but not installed");
            println!("skipping: etcd is not installed (apt-get install etcd-server)");
            return None;
        }
        let mut e = Etcd { child: None, client_port: free_port(), peer_port: free_port(), dir: dir.to_path_buf() };
        e.spawn();
        Some(e)
    }

    fn spawn(&mut self) {
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

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn endpoints(&self) -> Vec<String> {
        vec![format!("http://127.0.0.1:{}", self.client_port)]
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn node(etcd: &Etcd, id: &str) -> Membership {
    let me = Member { id: id.into(), addr: format!("127.0.0.1:{}", free_port()), capacity_bytes: 1 << 30 };
    let mut cfg = JoinConfig::new(etcd.endpoints(), "test", me);
    cfg.lease_ttl = Duration::from_secs(2);
    cfg.timeout = Duration::from_secs(2);
    Membership::join(cfg)
}

fn ids(v: &View) -> Vec<&str> {
    v.members.iter().map(|m| m.id.as_str()).collect()
}

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_leave_crash_and_ride_out_an_etcd_outage() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut etcd) = Etcd::start(dir.path()) else { return };
    let a = node(&etcd, "a");
    let b = node(&etcd, "b");
    let c = node(&etcd, "c");
    for n in [&a, &b, &c] {
        let v = n.wait_for(LIMIT, |v| v.etcd_ok && v.members.len() == 3).await;
        let v = v.unwrap_or_else(|| panic!("a node never saw all three: {:?}", n.view()));
        assert_eq!(ids(&v), vec!["a", "b", "c"]);
    }

    // A clean leave is seen well before the lease would expire.
    c.leave().await;
    for n in [&a, &b] {
        assert!(n.wait_for(Duration::from_secs(1), |v| ids(v) == ["a", "b"]).await.is_some(), "a clean leave was not seen: {:?}", n.view());
    }

    // A crash: the node's lease expires (2 s) and the others drop it.
    let d = node(&etcd, "d");
    assert!(a.wait_for(LIMIT, |v| v.members.len() == 3).await.is_some());
    d.abandon();
    assert!(a.wait_for(LIMIT, |v| ids(v) == ["a", "b"]).await.is_some(), "a crashed node stayed: {:?}", a.view());

    // etcd goes away: the nodes say so and keep the last list.
    etcd.stop();
    for n in [&a, &b] {
        let v = n.wait_for(LIMIT, |v| !v.etcd_ok).await.unwrap_or_else(|| panic!("etcd loss not noticed: {:?}", n.view()));
        assert_eq!(ids(&v), vec!["a", "b"], "the member list changed while etcd was away");
    }

    // etcd back (same data): the nodes register again and a newcomer is seen by all.
    etcd.spawn();
    let e = node(&etcd, "e");
    for n in [&a, &b, &e] {
        let v = n.wait_for(LIMIT, |v| v.etcd_ok && v.members.len() == 3).await;
        let v = v.unwrap_or_else(|| panic!("no convergence after etcd came back: {:?}", n.view()));
        assert_eq!(ids(&v), vec!["a", "b", "e"]);
    }
    for n in [a, b, e] {
        n.leave().await;
    }
}
