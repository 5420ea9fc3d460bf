//! Direct reads against a real `stoker serve`: a cached single-block file,
//! or a small range of a large one, is read by the client from the segment
//! file itself (counted in
//! `direct_hits`), byte for byte; a changed file is never served stale; a
//! damaged record is never served; a client with direct reads off, or an
//! engine with them off, reads through the engine; and a client lets go of
//! the descriptors of segments the engine deleted.

mod common;

use common::{make_tree, wait_for, Server};
use std::path::Path;
use std::time::Duration;
use stoker_client::{Client, Options};

fn serve(dir: &Path, sizes: &[usize], extra: &[&str]) -> (Server, Vec<(String, Vec<u8>)>) {
    let src = dir.join("src");
    let tree = make_tree(&src, sizes, 21);
    let sock = dir.join("s.sock").to_string_lossy().into_owned();
    let mount = format!("m=file://{}", src.display());
    let mut args = vec!["--mount", &mount];
    for (flag, default) in [("--shards", "2"), ("--capacity", "256M")] {
        if !extra.contains(&flag) {
            args.extend([flag, default]);
        }
    }
    args.extend_from_slice(extra);
    let server = Server::start(&dir.join("cache"), &sock, &args);
    let tree = tree
        .into_iter()
        .map(|(rel, d)| (format!("/m/{rel}"), d))
        .collect();
    (server, tree)
}

fn direct_hits(c: &Client) -> u64 {
    c.engine_stats()
        .unwrap()
        .shards
        .iter()
        .map(|s| s.direct_hits)
        .sum()
}

fn hits(c: &Client) -> u64 {
    c.engine_stats().unwrap().hits
}

/// Read every file once (misses), then wait until all are in the store.
fn warm(c: &Client, tree: &[(String, Vec<u8>)]) {
    for (p, d) in tree {
        assert_eq!(&c.read_file(p).unwrap(), d, "{p}");
    }
    wait_for("blocks written", Duration::from_secs(30), || {
        let s = c.engine_stats().unwrap();
        s.blocks >= tree.len() as u64 && s.shards.iter().all(|x| x.pending_write_bytes == 0)
    });
}

fn no_direct() -> Options {
    Options {
        direct: false,
        ..Default::default()
    }
}

#[test]
fn cached_files_are_read_directly_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    // Sizes around sub-block and page edges, and one of several blocks.
    let sizes = [1, 4095, 4096, 4097, 110_000, 262_144, 300_001, 4 << 20, (4 << 20) + 5];
    let (server, tree) = serve(dir.path(), &sizes, &[]);
    let c = server.client();
    warm(&c, &tree);
    for (p, d) in tree.iter().filter(|(_, d)| d.len() <= 4 << 20) {
        let before = direct_hits(&c);
        assert_eq!(&c.read_file(p).unwrap(), d, "{p}");
        assert!(direct_hits(&c) > before, "{p}: a cached single-block file is read directly");
    }

    // A multi-block file: a stream (1 MiB reads, each where the last
    // ended) and random ranges are all read directly, a 4 KiB range one
    // device page once the block's head is known.
    let (p, d) = &tree[8];
    assert_eq!(&c.read_file(p).unwrap(), d, "{p}");
    let before = direct_hits(&c);
    for i in 0..4usize {
        assert_eq!(c.read(p, (i << 20) as u64, 1 << 20).unwrap(), d[i << 20..(i + 1) << 20]);
    }
    assert_eq!(direct_hits(&c) - before, 4, "a stream over a cached large file is read directly");
    let before = direct_hits(&c);
    assert_eq!(c.read(p, 3 << 19, 1 << 20).unwrap(), d[3 << 19..5 << 19]);
    assert_eq!(direct_hits(&c) - before, 1, "a random 1 MiB range is read directly");
    assert_eq!(c.read(p, 8192, 4096).unwrap(), d[8192..12_288]);
    for at in [2_000_000usize, 3_000_000, 4_194_300] {
        let (s0, h0) = (c.engine_stats().unwrap(), direct_hits(&c));
        let got = c.read(p, at as u64, 4096).unwrap();
        assert_eq!(got, d[at..(at + 4096).min(d.len())], "{p} at {at}");
        let s1 = c.engine_stats().unwrap();
        // A range across the block boundary is two pieces, each direct.
        let pieces = if at + 4096 > 4 << 20 { 2 } else { 1 };
        assert_eq!(direct_hits(&c) - h0, pieces, "at {at}: read directly");
        assert!(s1.device_bytes_read - s0.device_bytes_read <= 4 * 4096, "at {at}: {} device bytes", s1.device_bytes_read - s0.device_bytes_read);
    }

    // Ranges: inside one sub-block, across sub-blocks, past the end.
    let (p, d) = &tree[5]; // 262,144 bytes: data page-aligned
    let before = direct_hits(&c);
    for (off, len) in [
        (0usize, 1usize),
        (4095, 2),
        (100_000, 70_000),
        (262_000, 1_000),
        (8192, 4096),
    ] {
        let got = c.read(p, off as u64, len as u64).unwrap();
        let end = (off + len).min(d.len());
        assert_eq!(got, d[off..end], "{p} [{off}, +{len})");
    }
    assert_eq!(direct_hits(&c) - before, 5);
    // A 4 KiB range of a large block reads the head and one page, not the block.
    let s0 = c.engine_stats().unwrap();
    assert_eq!(c.read(p, 200_704, 4096).unwrap(), d[200_704..204_800]);
    let s1 = c.engine_stats().unwrap();
    assert_eq!(s1.bytes_served - s0.bytes_served, 4096);
    assert!(
        s1.device_bytes_read - s0.device_bytes_read <= 2 * 4096,
        "{} bytes read from disk",
        s1.device_bytes_read - s0.device_bytes_read
    );

    // Direct reads off in the client: every read goes through the engine.
    let off = Client::connect_with(&server.socket, no_direct()).unwrap();
    let (d0, h0) = (direct_hits(&c), hits(&c));
    for (p, d) in &tree {
        assert_eq!(&off.read_file(p).unwrap(), d, "{p}");
    }
    assert_eq!(direct_hits(&c), d0);
    assert!(hits(&c) - h0 >= tree.len() as u64);
}

#[test]
fn an_engine_with_direct_reads_off_serves_everything_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (server, tree) = serve(dir.path(), &[10_000, 110_000], &["--direct-entries", "0"]);
    let c = server.client();
    warm(&c, &tree);
    for (p, d) in &tree {
        assert_eq!(&c.read_file(p).unwrap(), d, "{p}");
    }
    assert_eq!(direct_hits(&c), 0);
}

#[test]
fn a_changed_file_is_never_served_stale() {
    let dir = tempfile::tempdir().unwrap();
    let (server, tree) = serve(dir.path(), &[50_000], &["--metadata-sync", "1s"]);
    let c = server.client();
    warm(&c, &tree);
    let (p, old) = &tree[0];
    let before = direct_hits(&c);
    assert_eq!(&c.read_file(p).unwrap(), old);
    assert_eq!(direct_hits(&c) - before, 1, "read directly while fresh");
    // Change it in place, same size (a new mtime makes a new version).
    let src = dir.path().join("src").join(p.strip_prefix("/m/").unwrap());
    let new: Vec<u8> = old.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(&src, &new).unwrap();
    let t = std::time::SystemTime::now() + Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_modified(t)
        .unwrap();
    // Within the sync interval the old bytes may be served; once the engine
    // has seen the change, never again.
    wait_for("the change seen", Duration::from_secs(20), || {
        c.read_file(p).unwrap() == new
    });
    for _ in 0..50 {
        assert_eq!(
            c.read_file(p).unwrap(),
            new,
            "old bytes after the change was seen"
        );
    }
}

#[test]
fn a_freed_file_is_read_through_the_engine_again() {
    let dir = tempfile::tempdir().unwrap();
    let (server, tree) = serve(dir.path(), &[50_000, 70_000], &["--metadata-sync", "never"]);
    let c = server.client();
    warm(&c, &tree);
    let (p, d) = &tree[0];
    let before = direct_hits(&c);
    assert_eq!(&c.read_file(p).unwrap(), d);
    assert_eq!(direct_hits(&c) - before, 1, "read directly");
    let out = common::run(&["free", p, "--socket", &server.socket]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (before, misses) = (direct_hits(&c), c.engine_stats().unwrap().misses);
    assert_eq!(&c.read_file(p).unwrap(), d);
    assert_eq!(
        direct_hits(&c),
        before,
        "a freed block is not read directly"
    );
    assert!(
        c.engine_stats().unwrap().misses > misses,
        "a freed block is fetched again"
    );
}

#[test]
fn a_damaged_record_is_never_served_directly() {
    let dir = tempfile::tempdir().unwrap();
    let (server, tree) = serve(dir.path(), &[60_000, 70_000], &[]);
    let c = server.client();
    warm(&c, &tree);
    let (p, d) = &tree[0];
    assert_eq!(&c.read_file(p).unwrap(), d); // published
                                             // Flip one byte of the file's data in its segment file.
    let needle = &d[30_000..30_064];
    let mut flipped = false;
    let mut stack = vec![server.cache.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let seg = e.unwrap().path();
            if seg.is_dir() {
                stack.push(seg);
                continue;
            }
            if !seg.extension().is_some_and(|e| e == "dat") {
                continue;
            }
            let bytes = std::fs::read(&seg).unwrap();
            if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::options().write(true).open(&seg).unwrap();
                f.write_all_at(&[bytes[at + 7] ^ 0xff], (at + 7) as u64)
                    .unwrap();
                flipped = true;
            }
        }
    }
    assert!(flipped, "found the record to damage");
    let before = direct_hits(&c);
    let corrupt0 = c
        .engine_stats()
        .unwrap()
        .shards
        .iter()
        .map(|s| s.corrupt_records)
        .sum::<u64>();
    assert_eq!(
        &c.read_file(p).unwrap(),
        d,
        "refetched, never the damaged bytes"
    );
    assert_eq!(
        direct_hits(&c),
        before,
        "the damaged record was not a direct hit"
    );
    // The shard's counters are published once the refetched block is written.
    wait_for(
        "the engine to count the damaged record",
        Duration::from_secs(30),
        || {
            c.engine_stats()
                .unwrap()
                .shards
                .iter()
                .map(|s| s.corrupt_records)
                .sum::<u64>()
                > corrupt0
        },
    );
}

/// Segment files this process holds open that were deleted.
fn deleted_segments_held() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .filter(|l| {
            let l = l.to_string_lossy();
            l.contains("seg-") && l.ends_with("(deleted)")
        })
        .count()
}

#[test]
fn descriptors_of_dropped_segments_are_let_go() {
    let dir = tempfile::tempdir().unwrap();
    // A small cache with small segments: reading the tree twice over drops segments.
    let sizes = vec![200_000; 60];
    let (server, tree) = serve(
        dir.path(),
        &sizes,
        &[
            "--capacity",
            "8M",
            "--segment-size",
            "1M",
            "--block-size",
            "256K",
            "--shards",
            "1",
        ],
    );
    let c = server.client();
    let writes_done = || {
        wait_for("writes done", Duration::from_secs(30), || {
            c.engine_stats()
                .unwrap()
                .shards
                .iter()
                .all(|x| x.pending_write_bytes == 0)
        })
    };
    for (p, d) in &tree {
        assert_eq!(&c.read_file(p).unwrap(), d, "{p}"); // a miss: fetched, then written
        writes_done();
        let before = direct_hits(&c);
        assert_eq!(&c.read_file(p).unwrap(), d, "{p}");
        assert!(direct_hits(&c) > before, "{p}: read directly once written");
        // The direct read just used a descriptor: none of a deleted segment may be held.
        assert_eq!(
            deleted_segments_held(),
            0,
            "holding a deleted segment open after a direct read"
        );
    }
    assert!(
        c.engine_stats()
            .unwrap()
            .shards
            .iter()
            .map(|s| s.evicted_blocks)
            .sum::<u64>()
            > 0,
        "segments were dropped"
    );
}

#[test]
fn a_restarted_engine_offers_direct_reads_from_the_first_read() {
    let dir = tempfile::tempdir().unwrap();
    let (server, tree) = serve(dir.path(), &[1000, 60_000, 110_000, 300_000], &[]);
    let c = server.client();
    warm(&c, &tree);
    drop(c);
    let (sock, cache) = (server.socket.clone(), server.cache.clone());
    server.stop();
    let mount = format!("m=file://{}", dir.path().join("src").display());
    let server = Server::start(&cache, &sock, &["--mount", &mount, "--shards", "2", "--capacity", "256M"]);
    let c = server.client();
    // The shards fill the table in the background right after start-up.
    wait_for("the table filled", Duration::from_secs(30), || {
        let (p, d) = &tree[0];
        let before = direct_hits(&c);
        assert_eq!(&c.read_file(p).unwrap(), d);
        direct_hits(&c) > before
    });
    for (p, d) in &tree {
        let (before, misses) = (direct_hits(&c), c.engine_stats().unwrap().misses);
        assert_eq!(&c.read_file(p).unwrap(), d, "{p}");
        assert!(direct_hits(&c) > before, "{p}: read directly after the restart");
        assert_eq!(c.engine_stats().unwrap().misses, misses, "{p}: still cached");
    }
}

#[test]
fn asynchronous_reads_are_answered_directly_and_past_the_end_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (server, tree) = serve(dir.path(), &[110_000, 5], &[]);
    let c = server.client();
    warm(&c, &tree);
    let (tx, rx) = std::sync::mpsc::channel();
    let before = direct_hits(&c);
    for (i, (p, _)) in tree.iter().enumerate() {
        let tx = tx.clone();
        // From byte 10: all but the start of the first file, nothing of the second.
        c.read_async(p, 10, 200_000, Box::new(move |r| tx.send((i, r.map(|b| b.to_vec()))).unwrap()));
    }
    let mut got: Vec<(usize, Vec<u8>)> = (0..tree.len()).map(|_| {
        let (i, r) = rx.recv_timeout(Duration::from_secs(30)).expect("an answer");
        (i, r.unwrap())
    }).collect();
    got.sort();
    assert!(got[0].1 == tree[0].1[10..], "bytes of the first file");
    assert!(got[1].1.is_empty(), "past the end: empty");
    assert_eq!(direct_hits(&c) - before, 2, "both answered directly");
}
