//! Several `stoker serve` processes on 127.0.0.1 as one cache, their
//! membership in a real etcd (docs/CLUSTER.md): each block is fetched from
//! under storage once for the cluster, a node killed mid-epoch fails no
//! read, a restarted node rejoins, and a peer without the token gets
//! nothing. Skipped with a printed reason without etcd unless
//! STOKER_REQUIRE_ETCD=1 (scripts/test.sh installs etcd and sets it).

mod common;

use common::{make_tree, run, wait_for, Server};
use std::path::Path;
use std::time::Duration;
use stoker_cluster::testing::{free_port, Etcd};

struct Node {
    srv: Option<Server>,
    cache: std::path::PathBuf,
    sock: String,
    args: Vec<String>,
}

impl Node {
    fn new(base: &Path, etcd: &Etcd, id: &str, src: &Path, token: &Path) -> Node {
        let port = free_port();
        let args = vec![
            "--shards".to_string(),
            "2".into(),
            "--capacity".into(),
            "256M".into(),
            "--block-size".into(),
            "64K".into(),
            "--mount".into(),
            format!("m=file://{}", src.display()),
            "--cluster".into(),
            format!("etcd://127.0.0.1:{}", etcd.client_port),
            "--node-id".into(),
            id.into(),
            "--peer-listen".into(),
            format!("127.0.0.1:{port}"),
            "--cluster-token-file".into(),
            token.display().to_string(),
        ];
        let mut n = Node { srv: None, cache: base.join(format!("cache-{id}")), sock: base.join(format!("{id}.sock")).display().to_string(), args };
        n.start();
        n
    }

    fn start(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.srv = Some(Server::start(&self.cache, &self.sock, &args));
    }

    fn client(&self) -> stoker_client::Client {
        self.srv.as_ref().expect("running").client()
    }

    fn stats(&self) -> stoker_proto::control::EngineStats {
        self.client().engine_stats().unwrap()
    }

    fn members(&self) -> usize {
        self.stats().cluster.map_or(0, |c| c.members.len())
    }
}

#[test]
fn three_nodes_fetch_each_block_once_and_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let Some(etcd) = Etcd::start(dir.path()) else { return };
    let src = dir.path().join("src");
    // 60 files of 100-300 KiB: 2 to 5 blocks each.
    let sizes: Vec<usize> = (0..60).map(|i| 100_000 + (i * 3_433) % 200_000).collect();
    let tree = make_tree(&src, &sizes, 14);
    let total: u64 = tree.iter().map(|(_, d)| d.len() as u64).sum();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-cluster-token\n").unwrap();
    let mut nodes: Vec<Node> = ["n1", "n2", "n3"].iter().map(|id| Node::new(dir.path(), &etcd, id, &src, &token)).collect();
    for n in &nodes {
        wait_for("three members", Duration::from_secs(30), || n.members() == 3);
    }

    // Through node 1, then node 2: every byte exact.
    for n in &nodes[..2] {
        let c = n.client();
        for (p, data) in &tree {
            assert!(c.read_file(&format!("/m/{p}")).unwrap() == *data, "wrong bytes for {p}");
        }
    }
    // Each block came from under storage once for the cluster.
    let ufs: u64 = nodes.iter().map(|n| n.stats().ufs_bytes_read).sum();
    assert_eq!(ufs, total, "under storage read {ufs} bytes for a {total}-byte tree over three nodes");
    let asked: u64 = nodes.iter().map(|n| n.stats().cluster.unwrap().asked.hits).sum();
    let served: u64 = nodes.iter().map(|n| n.stats().cluster.unwrap().served.requests).sum();
    assert!(asked > 0 && asked == served, "peer reads asked {asked}, served {served}");
    let s = nodes[0].stats().cluster.unwrap();
    assert_eq!(s.node_id, "n1");
    assert!(s.etcd_ok);
    assert_eq!(s.members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["n1", "n2", "n3"]);
    let out = run(&["stat", "--json", "--socket", &nodes[0].sock]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cluster"]["members"][2]["state"], "up");
    let out = run(&["stat", "--socket", &nodes[0].sock]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cluster    node n1, 3 members, etcd ok"), "{text}");

    // Node 3 killed: reads through node 1 still all succeed, exact.
    nodes[2].srv.take().unwrap().kill9();
    let c = nodes[0].client();
    for (p, data) in &tree {
        assert!(c.read_file(&format!("/m/{p}")).unwrap() == *data, "wrong bytes for {p} with n3 dead");
    }
    // Its lease expires and its keys move to the others.
    wait_for("n3 to leave the member list", Duration::from_secs(30), || nodes[0].members() == 2);
    // Restarted, it rejoins and serves what it had cached.
    let before = nodes[2].cache.clone();
    assert!(before.exists());
    nodes[2].start();
    for n in &nodes {
        wait_for("n3 to rejoin", Duration::from_secs(30), || n.members() == 3);
    }
    let ufs_before: u64 = nodes.iter().map(|n| n.stats().ufs_bytes_read).sum();
    let c = nodes[1].client();
    for (p, data) in &tree {
        assert!(c.read_file(&format!("/m/{p}")).unwrap() == *data, "wrong bytes for {p} after n3 rejoined");
    }
    let ufs_after: u64 = nodes.iter().map(|n| n.stats().ufs_bytes_read).sum();
    assert_eq!(ufs_after, ufs_before, "blocks cached before were fetched from under storage again");

    // etcd stopped: the nodes say so, keep their members and serve on.
    let mut etcd = etcd;
    etcd.stop();
    for n in &nodes {
        wait_for("a node to notice etcd is gone", Duration::from_secs(30), || !n.stats().cluster.unwrap().etcd_ok);
        assert_eq!(n.members(), 3, "the member list changed while etcd was away");
    }
    let c = nodes[2].client();
    for (p, data) in tree.iter().take(20) {
        assert!(c.read_file(&format!("/m/{p}")).unwrap() == *data, "wrong bytes for {p} with etcd down");
    }
    etcd.spawn();
    for n in &nodes {
        wait_for("etcd to be back", Duration::from_secs(30), || n.stats().cluster.unwrap().etcd_ok);
    }

    // A fourth node joins: measured over the tree's blocks, about a quarter
    // of them change owner, all to the newcomer.
    let n4 = Node::new(dir.path(), &etcd, "n4", &src, &token);
    wait_for("four members", Duration::from_secs(30), || nodes[0].members() == 4);
    let members = |n: &Node| -> Vec<stoker_cluster::Member> {
        let c = n.stats().cluster.unwrap();
        c.members.iter().map(|m| stoker_cluster::Member { id: m.id.clone(), addr: m.addr.clone(), capacity_bytes: m.capacity_bytes }).collect()
    };
    let four = members(&nodes[0]);
    let three: Vec<_> = four.iter().filter(|m| m.id != "n4").cloned().collect();
    let c = nodes[0].client();
    let (mut blocks, mut moved) = (0, 0);
    for (p, _) in &tree {
        let path = format!("/m/{p}");
        let attr = c.stat(&path).unwrap();
        for b in 0..attr.size.div_ceil(64 << 10) {
            let key = stoker_proto::key::BlockKey::new(&path, &attr.version, b).hash;
            let (before, after) = (stoker_cluster::owner(key, &three).unwrap(), stoker_cluster::owner(key, &four).unwrap());
            blocks += 1;
            if before.id != after.id {
                assert_eq!(after.id, "n4", "a block moved between old members");
                moved += 1;
            }
        }
    }
    let frac = moved as f64 / blocks as f64;
    println!("a 4th node took {moved} of {blocks} blocks ({:.1}%)", frac * 100.0);
    assert!((0.12..0.40).contains(&frac), "a 4th node took {moved} of {blocks} blocks");
    drop(n4);

    // Bad cluster flags: one line each, no start.
    for bad in [
        &["--cluster", "http://x:1"][..],
        &["--cluster", "etcd://127.0.0.1:1"][..],
        &["--node-id", "x"][..],
    ] {
        let mut args = vec!["serve", "--cache-dir", "/nonexistent/c", "--mount", "m=file:///tmp"];
        args.extend_from_slice(bad);
        let out = run(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    drop(nodes);
}

/// `stoker load` on one node fills the whole cluster: each owner fetches
/// its share from under storage (once for the cluster) and keeps it, so
/// a read through any node afterwards reads nothing from under storage.
#[test]
fn a_load_on_one_node_fills_every_owner() {
    let dir = tempfile::tempdir().unwrap();
    let Some(etcd) = Etcd::start(dir.path()) else { return };
    let src = dir.path().join("src");
    let sizes: Vec<usize> = (0..40).map(|i| 70_000 + (i * 7_919) % 150_000).collect();
    let tree = make_tree(&src, &sizes, 15);
    let total: u64 = tree.iter().map(|(_, d)| d.len() as u64).sum();
    let token = dir.path().join("token");
    std::fs::write(&token, "another-token").unwrap();
    let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|id| Node::new(dir.path(), &etcd, id, &src, &token)).collect();
    for n in &nodes {
        wait_for("three members", Duration::from_secs(30), || n.members() == 3);
    }
    let out = run(&["load", "/m", "--socket", &nodes[0].sock]);
    assert!(out.status.success(), "stoker load: {}", String::from_utf8_lossy(&out.stderr));
    let ufs: u64 = nodes.iter().map(|n| n.stats().ufs_bytes_read).sum();
    assert_eq!(ufs, total, "the load read {ufs} bytes under storage for a {total}-byte tree");
    // Blocks reach each store in the background after the load returns
    // (reads meanwhile are served from the write queue): wait for the
    // writes to land before counting what each node keeps.
    for n in &nodes {
        let c = n.client();
        wait_for("writes to land", Duration::from_secs(30), || {
            c.engine_stats().unwrap().shards.iter().all(|s| s.pending_write_bytes == 0 && s.inflight_requests == 0)
        });
    }
    // Every owner holds a share: no node was left out, none holds it all.
    let blocks: Vec<u64> = nodes.iter().map(|n| n.stats().blocks).collect();
    assert!(blocks.iter().all(|&b| b > 0), "a node cached nothing: {blocks:?}");
    // Each kept about its third, the loading node no more than the others.
    let sum: u64 = blocks.iter().sum();
    assert!(blocks.iter().all(|&b| b * 3 < sum * 2), "one node holds most blocks: {blocks:?}");
    for n in &nodes[1..] {
        let c = n.client();
        for (p, data) in &tree {
            assert!(c.read_file(&format!("/m/{p}")).unwrap() == *data, "wrong bytes for {p}");
        }
    }
    let after: u64 = nodes.iter().map(|n| n.stats().ufs_bytes_read).sum();
    assert_eq!(after, total, "reads after the load went to under storage");
}
