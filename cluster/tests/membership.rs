//! Membership against a real etcd on 127.0.0.1 (Debian's etcd-server):
//! nodes join and see each other, a clean leave is seen at once, a crashed
//! node leaves with its lease, and with etcd stopped the nodes keep their
//! last member list and converge again once it is back. Skipped with a
//! printed reason when etcd is not installed, unless STOKER_REQUIRE_ETCD=1
//! (scripts/test.sh sets it and installs etcd).

use std::time::Duration;
use stoker_cluster::testing::{free_port, Etcd};
use stoker_cluster::{JoinConfig, Member, Membership, View};

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
    // Both must have dropped it before etcd goes: each keeps its own last list.
    for n in [&a, &b] {
        assert!(n.wait_for(LIMIT, |v| ids(v) == ["a", "b"]).await.is_some(), "a crashed node stayed: {:?}", n.view());
    }

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
