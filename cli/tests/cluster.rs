//! Several `stoker serve` processes on 127.0.0.1 as one cache, their
//! membership in a real etcd (docs/CLUSTER.md): each block is fetched from
//! under storage once for the cluster, a node killed mid-epoch fails no
//! read, a restarted node rejoins, and a peer without the token gets
//! nothing. Skipped with a printed reason without etcd unless
//! STOKER_REQUIRE_ETCD=1 (scripts/test.sh installs etcd and sets it).

mod common;

use common::{make_tree, metric_or, run, wait_for, Server};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use stoker_cluster::testing::{free_port, Etcd};

struct Node {
    srv: Option<Server>,
    metrics: std::net::SocketAddr,
    cache: std::path::PathBuf,
    sock: String,
    args: Vec<String>,
}

impl Node {
    fn new(base: &Path, etcd: &Etcd, id: &str, src: &Path, token: &Path) -> Node {
        Node::with(base, etcd, id, src, token, &[])
    }

    fn with(base: &Path, etcd: &Etcd, id: &str, src: &Path, token: &Path, extra: &[&str]) -> Node {
        let port = free_port();
        let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut args = vec![
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
            "--metrics".into(),
            metrics.to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut n = Node { srv: None, metrics, cache: base.join(format!("cache-{id}")), sock: base.join(format!("{id}.sock")).display().to_string(), args };
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

    /// Wait until the blocks this node fetched are written to its store
    /// (they land in the background after the reads that fetched them).
    fn settle(&self) {
        let c = self.client();
        wait_for("writes to land", Duration::from_secs(30), || {
            c.engine_stats().unwrap().shards.iter().all(|s| s.pending_write_bytes == 0 && s.inflight_requests == 0)
        });
    }

    /// Under-storage calls of kind `op` (stat, read, list) this node made.
    fn ufs_ops(&self, op: &str) -> f64 {
        metric_or(self.metrics, &format!("stoker_ufs_request_duration_seconds_count{{mount=\"m\",op=\"{op}\"}}"), Some(0.0))
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
    // Nothing was asked of under storage but reads: a node that had not
    // seen a file asked the block's owner, whose answer brought the
    // file's attributes (no stat first).
    let stats: f64 = nodes.iter().map(|n| n.ufs_ops("stat")).sum();
    assert_eq!(stats, 0.0, "the cold reads made {stats} under-storage stats");
    assert!(nodes.iter().map(|n| n.ufs_ops("read")).sum::<f64>() > 0.0, "no under-storage reads counted");
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

    // Node 3 killed during an epoch through node 1: no read fails, every
    // byte exact, and the epoch reads the whole tree again after the kill.
    let reads = std::sync::atomic::AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let c = nodes[0].client();
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            while !stop.load(Relaxed) {
                for (p, data) in &tree {
                    let got = c.read_file(&format!("/m/{p}"));
                    assert!(got.as_ref().is_ok_and(|g| g == data), "read of {p} failed or was wrong around n3's death: {:?}", got.err());
                    reads.fetch_add(1, Relaxed);
                }
            }
        });
        wait_for("the epoch to be under way", Duration::from_secs(30), || reads.load(Relaxed) >= 10 || reader.is_finished());
        nodes[2].srv.take().unwrap().kill9();
        let at_kill = reads.load(Relaxed);
        wait_for("a whole pass after the kill", Duration::from_secs(60), || reads.load(Relaxed) >= at_kill + tree.len() || reader.is_finished());
        stop.store(true, Relaxed);
        reader.join().expect("a read failed while n3 died");
    });
    // Until its lease lapses (6 s) it is listed, as unreachable.
    let view = nodes[0].stats().cluster.unwrap();
    let n3 = view.members.iter().find(|m| m.id == "n3").expect("n3 left before its lease lapsed");
    assert_eq!(n3.state, "unreachable");
    assert!(view.asked.fallbacks > 0);
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
            // Placement hashes the path and block (not the version): the
            // shard routing hash (stoker_engine::cluster::placement_hash).
            let key = stoker_proto::key::route_hash(&path, b);
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
    // b keeps a local copy of the blocks it reads from their owners.
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            let extra: &[&str] = if *id == "b" { &["--mount-opt", "m:peer_copy=true"] } else { &[] };
            Node::with(dir.path(), &etcd, id, &src, &token, extra)
        })
        .collect();
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
    nodes.iter().for_each(Node::settle);
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
    // peer_copy: b now holds every block, c (without it) only its share.
    nodes[1..].iter().for_each(Node::settle);
    let all = blocks.iter().sum::<u64>();
    assert_eq!(nodes[1].stats().blocks, all, "b kept no copy of the blocks it read from peers");
    assert_eq!(nodes[2].stats().blocks, blocks[2], "c kept blocks it does not own");
    // A second read through b asks no peer.
    let asked = nodes[1].stats().cluster.unwrap().asked.hits;
    let c = nodes[1].client();
    for (p, data) in &tree {
        assert!(c.read_file(&format!("/m/{p}")).unwrap() == *data, "wrong bytes for {p}");
    }
    assert_eq!(nodes[1].stats().cluster.unwrap().asked.hits, asked, "b asked its peers again");
}

/// A node killed in the middle of `stoker load`: the load still succeeds,
/// says the node left, and has its share fetched by the new owners, so a
/// read of the whole tree through either survivor afterwards reads nothing
/// from under storage. No block crosses the network during the load.
#[test]
fn a_load_redoes_the_share_of_a_node_lost_midway() {
    let dir = tempfile::tempdir().unwrap();
    let Some(etcd) = Etcd::start(dir.path()) else { return };
    let src = dir.path().join("src");
    let sizes: Vec<usize> = (0..240).map(|i| 20_000 + (i * 7_919) % 100_000).collect();
    let tree = make_tree(&src, &sizes, 16);
    let token = dir.path().join("token");
    std::fs::write(&token, "load-token").unwrap();
    let slow = ["--ufs-latency", "20ms"];
    let mut nodes: Vec<Node> = ["a", "b", "c"].iter().map(|id| Node::with(dir.path(), &etcd, id, &src, &token, &slow)).collect();
    for n in &nodes {
        wait_for("three members", Duration::from_secs(30), || n.members() == 3);
    }
    let load = common::stoker()
        .args(["load", "/m", "--parallel", "1", "--socket", &nodes[0].sock])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("c to take part of the load", Duration::from_secs(60), || nodes[2].stats().cluster.unwrap().served.requests >= 10);
    nodes[2].srv.take().unwrap().kill9();
    let out = load.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stoker load: {err}");
    assert!(err.contains("c left the cluster during the load"), "{err}");
    // Preloads carry no bytes: nothing was sent between nodes.
    for n in &nodes[..2] {
        let c = n.stats().cluster.unwrap();
        assert_eq!((c.asked.bytes, c.served.bytes), (0, 0), "bytes crossed the network during the load");
    }
    nodes[..2].iter().for_each(Node::settle);
    let before: u64 = nodes[..2].iter().map(|n| n.stats().ufs_bytes_read).sum();
    for n in &nodes[..2] {
        let c = n.client();
        for (p, data) in &tree {
            assert!(c.read_file(&format!("/m/{p}")).unwrap() == *data, "wrong bytes for {p}");
        }
    }
    let after: u64 = nodes[..2].iter().map(|n| n.stats().ufs_bytes_read).sum();
    assert_eq!(after, before, "c's share was not loaded on its new owners");
}

/// A node with `--cluster-tls-*` flags (`tls`) or without.
fn tls_node(base: &Path, etcd: &Etcd, id: &str, src: &Path, token: &Path, tls: Option<&stoker_cluster::tls::TlsFiles>) -> Node {
    let Some(t) = tls else { return Node::new(base, etcd, id, src, token) };
    let (cert, key, ca) = (t.cert.display().to_string(), t.key.display().to_string(), t.ca.display().to_string());
    Node::with(base, etcd, id, src, token, &["--cluster-tls-cert", &cert, "--cluster-tls-key", &key, "--cluster-tls-ca", &ca])
}

/// Two nodes over mutual TLS serve each other's blocks (each block read
/// from under storage once for the cluster); a plain node among them cannot
/// talk to them and reads under storage instead, every byte still exact.
#[test]
fn tls_nodes_serve_each_other_and_a_plain_node_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let Some(etcd) = Etcd::start(dir.path()) else { return };
    let src = dir.path().join("src");
    let sizes: Vec<usize> = (0..30).map(|i| 70_000 + (i * 7_919) % 150_000).collect();
    let tree = make_tree(&src, &sizes, 16);
    let total: u64 = tree.iter().map(|(_, d)| d.len() as u64).sum();
    let token = dir.path().join("token");
    std::fs::write(&token, "tls-and-a-token").unwrap();
    let ca = stoker_cluster::testing::TestCa::new(dir.path(), "ca");
    let nodes: Vec<Node> = ["a", "b"].iter().map(|id| tls_node(dir.path(), &etcd, id, &src, &token, Some(&ca.node(id, "IP:127.0.0.1")))).collect();
    for n in &nodes {
        wait_for("two members", Duration::from_secs(30), || n.members() == 2);
    }
    for n in &nodes {
        let c = n.client();
        for (p, data) in &tree {
            assert!(c.read_file(&format!("/m/{p}")).unwrap() == *data, "wrong bytes for {p}");
        }
    }
    let ufs: u64 = nodes.iter().map(|n| n.stats().ufs_bytes_read).sum();
    assert_eq!(ufs, total, "two TLS nodes read {ufs} bytes under storage for a {total}-byte tree");
    for n in &nodes {
        let s = n.stats().cluster.unwrap();
        assert!(s.asked.hits > 0 && s.asked.errors == 0 && s.served.requests > 0 && s.served.refused == 0, "{}: {:?} {:?}", s.node_id, s.asked, s.served);
    }

    // A plain node joins: it and the TLS nodes refuse each other, and its reads fall back.
    let plain = tls_node(dir.path(), &etcd, "c", &src, &token, None);
    wait_for("three members", Duration::from_secs(30), || plain.members() == 3);
    let c = plain.client();
    for (p, data) in &tree {
        assert!(c.read_file(&format!("/m/{p}")).unwrap() == *data, "wrong bytes for {p} through the plain node");
    }
    let s = plain.stats().cluster.unwrap();
    assert!(s.asked.hits == 0 && s.asked.errors > 0 && s.asked.fallbacks > 0, "{:?}", s.asked);
    let refused: u64 = nodes.iter().map(|n| n.stats().cluster.unwrap().served.refused).sum();
    assert!(refused > 0, "the TLS nodes refused nothing");
}

/// `--cluster-tls-*` given in part, without `--cluster`, or naming a bad
/// file: one line, no start.
#[test]
fn bad_cluster_tls_flags_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let token = token.display().to_string();
    let missing = dir.path().join("missing.pem").display().to_string();
    let cluster = ["--cluster", "etcd://127.0.0.1:1", "--node-id", "x", "--peer-listen", "127.0.0.1:0", "--cluster-token-file", &token];
    let all_three = ["--cluster-tls-cert", &missing, "--cluster-tls-key", &missing, "--cluster-tls-ca", &missing];
    for (bad, says) in [
        ([&cluster[..], &["--cluster-tls-cert", &missing]].concat(), "--cluster-tls-key and --cluster-tls-ca missing"),
        (all_three.to_vec(), "need --cluster"),
        ([&cluster[..], &all_three].concat(), "cluster TLS certificate"),
    ] {
        let mut args = vec!["serve", "--cache-dir", "/nonexistent/c", "--mount", "m=file:///tmp"];
        args.extend_from_slice(&bad);
        let out = run(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(says), "{bad:?}: {err}");
    }
}
