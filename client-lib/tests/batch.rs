//! Batched and zero-copy reads against an engine started in this process:
//! 10,000 small files through an area far smaller than the batch, views
//! held and released, `read_with`, whole files spanning several blocks and
//! slots, and control calls that do not queue behind each other.

use rand::{RngCore, SeedableRng};
use std::path::Path;
use std::time::Duration;
use stoker_client::{Client, Data, Options, ReadReq};
use stoker_engine::config::EngineConfig;
use stoker_engine::{Engine, MountSpec};

fn write_tree(root: &Path, n: usize, size: impl Fn(usize) -> usize) -> Vec<(String, Vec<u8>)> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    (0..n)
        .map(|i| {
            let rel = format!("d{}/f{i:05}", i % 16);
            let mut data = vec![0u8; size(i)];
            rng.fill_bytes(&mut data);
            std::fs::create_dir_all(root.join(&rel).parent().unwrap()).unwrap();
            std::fs::write(root.join(&rel), &data).unwrap();
            (format!("/m/{rel}"), data)
        })
        .collect()
}

fn start(src: &Path, cache: &Path, sock: &str, block_bytes: u64) -> Engine {
    let mut cfg = EngineConfig::new(cache.to_path_buf());
    cfg.shards = 2;
    cfg.capacity_bytes = 256 << 20;
    cfg.block_bytes = block_bytes;
    cfg.segment_bytes = 4 << 20;
    cfg.socket = sock.to_string();
    cfg.mounts = vec![MountSpec { name: "m".into(), uri: format!("file://{}", src.display()), ..Default::default() }];
    Engine::start(cfg).expect("engine starts")
}

fn small_client(sock: &str) -> Client {
    // 1 MiB of area against a 10,000-file batch: back-pressure is the rule.
    let opts = Options { area_bytes: 1 << 20, ring_entries: 64, timeout: Duration::from_secs(60), ..Default::default() };
    Client::connect_with(sock, opts).unwrap()
}

#[test]
fn batch_of_10000_small_files_through_a_small_area() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let tree = write_tree(&src, 10_000, |i| 1 + (i * 37) % 3000);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let _engine = start(&src, &dir.path().join("cache"), &sock, 1 << 20);
    let c = small_client(&sock);
    for pass in 0..2 {
        let reqs = tree.iter().map(|(p, _)| ReadReq::file(p.clone())).collect();
        let mut seen = vec![false; tree.len()];
        let mut views = 0;
        // Held views: the iterator must keep going (copies) rather than stall.
        let mut held: Vec<Data> = Vec::new();
        for (i, r) in c.read_batch(reqs) {
            let d = r.unwrap_or_else(|e| panic!("pass {pass} {}: {e}", tree[i].0));
            assert_eq!(&d[..], &tree[i].1[..], "pass {pass} {}", tree[i].0);
            assert!(!seen[i], "answer {i} twice");
            seen[i] = true;
            views += d.is_view() as usize;
            if i % 10 == 0 {
                held.push(d);
            }
        }
        assert!(seen.iter().all(|&s| s), "every request answered");
        assert!(views > 100, "most answers are views into shared memory: {views}");
        assert!(held.len() < 10_000 && held.iter().any(|d| !d.is_view()), "views held past half the area come back as copies");
    }
    let s = c.engine_stats().unwrap();
    assert!(s.hits >= 10_000, "second pass hits: {s:?}");
}

#[test]
fn ranges_views_and_read_with_match_source() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // 64 KiB blocks: files span blocks; 1 MiB area: slot cap 256 KiB, so the
    // largest files take several slots.
    let sizes = [0usize, 1, 4095, 65_535, 65_536, 65_537, 200_000, 300_000, 1 << 20, 3 << 20];
    let tree = write_tree(&src, sizes.len(), |i| sizes[i]);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let _engine = start(&src, &dir.path().join("cache"), &sock, 64 << 10);
    let c = small_client(&sock);

    let all: Vec<&str> = tree.iter().map(|(p, _)| p.as_str()).collect();
    let got = c.read_many(&all).unwrap();
    for ((p, data), d) in tree.iter().zip(&got) {
        assert_eq!(&d[..], &data[..], "{p}");
    }
    drop(got);
    for (p, data) in &tree {
        assert_eq!(&c.read_file(p).unwrap(), data, "{p}");
        for (off, len) in [(0u64, 10u64), (65_530, 20), (1, 200_000), (data.len() as u64, 5), (70_000, 1 << 20)] {
            let lo = (off as usize).min(data.len());
            let hi = (off as usize + len as usize).min(data.len());
            assert_eq!(c.read(p, off, len).unwrap(), &data[lo..hi], "{p} {off}+{len}");
            let n = c.read_with(p, off, len, |b| {
                assert_eq!(b, &data[lo..hi], "read_with {p} {off}+{len}");
                b.len()
            });
            assert_eq!(n.unwrap(), hi - lo);
        }
    }
    // Ranges in one batch, answers in any order, copies when asked.
    let reqs: Vec<ReadReq> = tree.iter().map(|(p, d)| ReadReq::range(p.clone(), 3, d.len() as u64)).collect();
    for (i, r) in c.read_batch_copied(reqs) {
        let d = r.unwrap();
        assert!(!d.is_view());
        assert_eq!(&d[..], &tree[i].1[3.min(tree[i].1.len())..]);
    }
    let missing = c.read_many(&["/m/nope"]).unwrap_err();
    assert_eq!(missing.errno(), libc::ENOENT);
    assert!(missing.to_string().contains("/m/nope"), "{missing}");
    assert_eq!(c.read_file("relative").unwrap_err().errno(), libc::EINVAL);
}

#[test]
fn control_calls_use_several_connections() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let tree = write_tree(&src, 50, |_| 10);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let _engine = start(&src, &dir.path().join("cache"), &sock, 1 << 20);
    let c = small_client(&sock);
    // Hold the control socket's peer busy from many threads at once; every
    // call must answer correctly (the pool opens connections on demand).
    std::thread::scope(|s| {
        for t in 0..8 {
            let (c, tree) = (&c, &tree);
            s.spawn(move || {
                for (p, d) in tree.iter().skip(t) {
                    assert_eq!(c.stat(p).unwrap().size, d.len() as u64);
                    assert!(!c.list("/m").unwrap().is_empty());
                }
            });
        }
    });
}
