//! The client against a real engine started in this process: every byte of a
//! generated tree read back through the shared-memory path, from many threads.

use rand::{Rng, RngCore, SeedableRng};
use std::path::Path;
use stoker_client::{Client, Kind};
use stoker_engine::config::EngineConfig;
use stoker_engine::{Engine, MountSpec};

fn make_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
    let sizes = [0usize, 1, 4095, 4096, 4097, 65536, 100_000, 300_000, 1 << 20];
    let mut out = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let rel = format!("d{}/sub/f{i}", i % 3);
        let mut data = vec![0u8; size];
        rng.fill_bytes(&mut data);
        std::fs::create_dir_all(root.join(&rel).parent().unwrap()).unwrap();
        std::fs::write(root.join(&rel), &data).unwrap();
        out.push((rel, data));
    }
    out
}

fn start(src: &Path, cache: &Path, sock: &str) -> Engine {
    let mut cfg = EngineConfig::new(cache.to_path_buf());
    cfg.shards = 2;
    cfg.capacity_bytes = 64 << 20;
    cfg.block_bytes = 64 << 10; // small blocks: multi-block files are exercised
    cfg.segment_bytes = 1 << 20;
    cfg.socket = sock.to_string();
    cfg.mounts = vec![MountSpec { name: "m".into(), uri: format!("file://{}", src.display()), ..Default::default() }];
    Engine::start(cfg).expect("engine starts")
}

#[test]
fn reads_match_source_cold_and_warm() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let tree = make_tree(&src);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let engine = start(&src, &dir.path().join("cache"), &sock);
    let c = Client::connect(&sock).unwrap();

    assert_eq!(c.list("/").unwrap().iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["m"]);
    for pass in 0..2 {
        std::thread::scope(|s| {
            for t in 0..8 {
                let (c, tree) = (&c, &tree);
                s.spawn(move || {
                    let mut rng = rand::rngs::SmallRng::seed_from_u64(t);
                    for (rel, data) in tree {
                        let p = format!("/m/{rel}");
                        assert_eq!(&c.read_file(&p).unwrap(), data, "pass {pass} {p}");
                        let off = rng.gen_range(0..=data.len() as u64 + 10);
                        let len = rng.gen_range(0..200_000u64);
                        let got = c.read(&p, off, len).unwrap();
                        let lo = (off as usize).min(data.len());
                        let hi = (off as usize + len as usize).min(data.len());
                        assert_eq!(got, &data[lo..hi], "range {off}+{len} of {p}");
                    }
                });
            }
        });
    }
    let s = c.engine_stats().unwrap();
    assert!(s.hits > 0, "second pass must hit the cache: {s:?}");
    assert!(s.blocks > 0 && s.used_bytes > 0);
    let total: u64 = tree.iter().map(|(_, d)| d.len() as u64).sum();
    // Each block is fetched once however many threads missed it at once.
    assert!(s.ufs_bytes_read <= total, "ufs read {} > dataset {total}", s.ufs_bytes_read);
    assert_eq!(c.stat("/m/d0").unwrap().kind, Kind::Dir);
    drop(engine);
}

#[test]
fn errors_are_errnos() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let _engine = start(&src, &dir.path().join("cache"), &sock);
    let c = Client::connect(&sock).unwrap();
    assert_eq!(c.read_file("/m/nope").unwrap_err().errno(), libc_enoent());
    assert_eq!(c.read_file("/nomount/x").unwrap_err().errno(), libc_enoent());
    assert_eq!(c.read_file("/m/d0").unwrap_err().errno(), 21 /* EISDIR */);
    assert_eq!(c.stat("relative").unwrap_err().errno(), 22 /* EINVAL */);
    assert!(Client::connect(&format!("{sock}.absent")).unwrap_err().to_string().contains("stoker serve"));
}

fn libc_enoent() -> i32 {
    2
}
