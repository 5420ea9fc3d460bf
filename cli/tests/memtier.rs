//! The DRAM tier (`--memory-cache`): repeated reads are served from memory
//! with the right bytes, and `stoker free` drops blocks from memory too.

mod common;

use common::*;

#[test]
fn memory_tier_serves_repeats_and_free_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let tree = make_tree(&src, &[0, 1, 4097, 200_000, 3 << 20], 9);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let mount = format!("m=file://{}", src.display());
    let srv = Server::start(
        &dir.path().join("cache"),
        &sock,
        &["--shards", "2", "--capacity", "256M", "--block-size", "1M", "--memory-cache", "64M", "--mount", &mount],
    );
    let c = srv.client();
    let mem_hits = |c: &stoker_client::Client| c.engine_stats().unwrap().shards.iter().map(|s| s.mem_hits).sum::<u64>();
    for _ in 0..3 {
        for (rel, data) in &tree {
            assert!(c.read_file(&format!("/m/{rel}")).unwrap() == *data, "wrong bytes for {rel}");
        }
    }
    let blocks: u64 = tree.iter().map(|(_, d)| (d.len() as u64).div_ceil(1 << 20)).sum();
    assert!(mem_hits(&c) >= 2 * blocks, "repeats were not served from memory: {} mem hits", mem_hits(&c));
    let s = c.engine_stats().unwrap();
    assert!(s.shards.iter().map(|s| s.mem_bytes).sum::<u64>() > 0);

    // free drops the blocks from memory as well: the next read is a miss.
    let out = run(&["free", "/m", "--socket", &sock]);
    assert!(out.status.success());
    let (before_hits, before_misses) = (mem_hits(&c), c.engine_stats().unwrap().misses);
    let (rel, data) = &tree[3];
    assert!(c.read_file(&format!("/m/{rel}")).unwrap() == *data);
    assert_eq!(mem_hits(&c), before_hits, "a freed block was served from memory");
    assert_eq!(c.engine_stats().unwrap().misses, before_misses + 1);
    drop(c);
    srv.stop();
}
