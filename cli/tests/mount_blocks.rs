//! Large objects: a per-mount block size (`--mount-opt NAME:block_size=`)
//! and read-ahead of the next blocks on sequential access
//! (`--readahead-blocks`, `--mount-opt NAME:readahead=`).

mod common;

use common::*;
use std::time::Duration;

fn path_stat(sock: &str, path: &str) -> serde_json::Value {
    let out = run(&["stat", path, "--json", "--socket", sock]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ufs_bytes(c: &stoker_client::Client) -> u64 {
    c.engine_stats().unwrap().shards.iter().map(|s| s.ufs_bytes_read).sum()
}

fn settled(c: &stoker_client::Client) -> bool {
    c.engine_stats().unwrap().shards.iter().all(|s| s.pending_write_bytes == 0 && s.inflight_requests == 0)
}

#[test]
fn a_mount_with_small_blocks_reads_less_for_small_ranges_and_serves_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // 3.3 MiB: not a multiple of either block size.
    let files = make_tree(&src, &[3_460_000], 7);
    let (rel, data) = &files[0];
    let uri = format!("file://{}", src.display());
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let args = [
        "--shards", "2", "--capacity", "256M", "--block-size", "1M",
        "--mount", &format!("small={uri}"), "--mount", &format!("big={uri}"),
        "--mount-opt", "small:block_size=64K",
        // Read-ahead off: only what is read is fetched.
        "--readahead-blocks", "0",
    ];

    // A block size above the engine's is refused with one line.
    let out = run(&["serve", "--cache-dir", "/tmp/unused-mb", "--socket", "/tmp/unused-mb.sock", "--block-size", "1M",
        "--mount", &format!("small={uri}"), "--mount-opt", "small:block_size=2M"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("block_size") && err.lines().count() == 1, "{err}");

    let srv = Server::start(&dir.path().join("cache"), &sock, &args);
    let c = srv.client();
    // A 4 KiB read at 1.5 MiB: one 64 KiB block from under storage on
    // `small`, one 1 MiB block on `big`.
    let at = 1_572_864u64;
    let before = ufs_bytes(&c);
    assert_eq!(c.read(&format!("/small/{rel}"), at, 4096).unwrap(), data[at as usize..at as usize + 4096]);
    assert_eq!(ufs_bytes(&c) - before, 64 << 10);
    let before = ufs_bytes(&c);
    assert_eq!(c.read(&format!("/big/{rel}"), at, 4096).unwrap(), data[at as usize..at as usize + 4096]);
    assert_eq!(ufs_bytes(&c) - before, 1 << 20);

    // Whole file and ranges across block boundaries, cold then cached.
    for pass in 0..2 {
        for m in ["small", "big"] {
            let p = format!("/{m}/{rel}");
            assert_eq!(&c.read_file(&p).unwrap(), data, "{p} pass {pass}");
            for (off, len) in [(65_000u64, 200_000u64), (1_048_000, 1_000), (3_400_000, 100_000)] {
                let want = &data[off as usize..(off + len).min(data.len() as u64) as usize];
                assert_eq!(c.read(&p, off, len).unwrap(), want, "{p} {off}+{len} pass {pass}");
            }
        }
        wait_for("background writes", Duration::from_secs(30), || settled(&c));
    }
    // Each mount cached the file in its own blocks.
    let s = path_stat(&sock, &format!("/small/{rel}"));
    assert_eq!((s["blocks"].as_u64(), s["cached_blocks"].as_u64()), (Some(53), Some(53)), "{s}");
    let s = path_stat(&sock, &format!("/big/{rel}"));
    assert_eq!((s["blocks"].as_u64(), s["cached_blocks"].as_u64()), (Some(4), Some(4)), "{s}");
    srv.stop();

    // After a restart with the mount's block size changed, the blocks cut
    // at the old size are never served: reads are right, from new blocks.
    let args2 = [
        "--shards", "2", "--capacity", "256M", "--block-size", "1M",
        "--mount", &format!("small={uri}"), "--mount", &format!("big={uri}"),
        "--mount-opt", "small:block_size=128K", "--readahead-blocks", "0",
    ];
    let srv = Server::start(&dir.path().join("cache"), &sock, &args2);
    let c = srv.client();
    let before = ufs_bytes(&c);
    assert_eq!(&c.read_file(&format!("/small/{rel}")).unwrap(), data);
    assert_eq!(ufs_bytes(&c) - before, data.len() as u64, "old 64K blocks served for 128K ones");
    let s = path_stat(&sock, &format!("/big/{rel}"));
    assert_eq!(s["cached_blocks"].as_u64(), Some(4), "the other mount's blocks survive: {s}");
    srv.stop();
}

#[test]
fn sequential_reads_fetch_ahead_and_random_reads_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // 16 blocks of 64 KiB each.
    let files = make_tree(&src, &[16 << 16, 16 << 16], 9);
    let uri = format!("file://{}", src.display());
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let args = [
        "--shards", "2", "--capacity", "256M", "--block-size", "64K",
        "--mount", &format!("seq={uri}"), "--mount", &format!("off={uri}"),
        "--readahead-blocks", "4", "--mount-opt", "off:readahead=0",
    ];
    let srv = Server::start(&dir.path().join("cache"), &sock, &args);
    let c = srv.client();
    let (rel, data) = &files[0];
    let bs = 64u64 << 10;
    let cached = |p: &str| path_stat(&sock, p)["cached_blocks"].as_u64().unwrap();

    // Block 0 starts a stream and asks for block 1. Once that has landed,
    // a read of block 2 (past the block fetched ahead, which a reader may
    // take from the cache without the engine) is the same stream: the window
    // doubles and blocks 3 and 4 are asked for. (Reading block 1 instead
    // would race: a direct read of it, once it has landed, never reaches the
    // engine.)
    let read = |p: &str, b: u64| {
        let got = c.read(p, b * bs, bs).unwrap();
        assert_eq!(got, data[(b * bs) as usize..((b + 1) * bs) as usize], "{p} block {b}");
    };
    for m in ["seq", "off"] {
        read(&format!("/{m}/{rel}"), 0);
    }
    wait_for("block 1 fetched ahead", Duration::from_secs(30), || settled(&c) && cached(&format!("/seq/{rel}")) >= 2);
    for m in ["seq", "off"] {
        read(&format!("/{m}/{rel}"), 2);
    }
    wait_for("read-ahead to land", Duration::from_secs(30), || {
        settled(&c) && cached(&format!("/seq/{rel}")) >= 5
    });
    assert_eq!(cached(&format!("/seq/{rel}")), 5, "blocks 0-4 only");
    assert_eq!(cached(&format!("/off/{rel}")), 2, "read-ahead off: only what was read");
    let ra: u64 = c.engine_stats().unwrap().shards.iter().map(|s| s.readahead_blocks).sum();
    assert_eq!(ra, 3, "read-ahead blocks (1, then 3 and 4)");

    // A random reader of the other file: nothing beyond what it read.
    let (rel2, data2) = &files[1];
    let p2 = format!("/seq/{rel2}");
    for b in [9u64, 3, 12, 6] {
        assert_eq!(c.read(&p2, b * bs, 100).unwrap(), data2[(b * bs) as usize..(b * bs + 100) as usize]);
    }
    wait_for("writes", Duration::from_secs(30), || settled(&c));
    assert_eq!(cached(&p2), 4, "random reads fetched ahead");
    srv.stop();
}

#[test]
fn mount_options_from_the_config_file_apply_like_mount_opt() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let files = make_tree(&src, &[2_000_000], 3);
    let (rel, data) = &files[0];
    let cfg = dir.path().join("stoker.toml");
    std::fs::write(
        &cfg,
        format!(
            "[serve]\nshards = 1\ncapacity = \"256M\"\nblock_size = \"1M\"\nreadahead_blocks = 0\n\
             mounts = [\"small=file://{}\"]\n[serve.mount_options.small]\nblock_size = \"64K\"\n",
            src.display()
        ),
    )
    .unwrap();
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let srv = Server::start(&dir.path().join("cache"), &sock, &["--config", cfg.to_str().unwrap()]);
    let c = srv.client();
    let before = ufs_bytes(&c);
    assert_eq!(c.read(&format!("/small/{rel}"), 1_000_000, 10).unwrap(), data[1_000_000..1_000_010]);
    assert_eq!(ufs_bytes(&c) - before, 64 << 10, "the file's block_size was not applied");
    srv.stop();

    // An option table for a mount that does not exist is one clear line.
    std::fs::write(&cfg, format!("[serve]\nmounts = [\"a=file://{}\"]\n[serve.mount_options.b]\nsync = \"1s\"\n", src.display()))
        .unwrap();
    let out = run(&["serve", "--config", cfg.to_str().unwrap(), "--cache-dir", "/tmp/unused-mo", "--socket", "/tmp/unused-mo.sock"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("mount_options.b") && err.lines().count() == 1, "{err}");
}
