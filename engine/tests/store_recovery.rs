//! The index rebuilt at open (rkyv archives + open-segment scan) equals the
//! index before a clean close and before a simulated crash (drop without
//! flush).

mod store_common;

use store_common::{block, cfg, files_with_ext, key, key_hash, run};
use stoker_engine::store::Store;

/// Fills several 64 KiB segments with blocks of varied sizes, overwrites and
/// removes some, then reopens (after `flush` when `clean`) and compares.
fn reopen_matches(clean: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let c = || cfg(&path, 64 << 10, 64 << 20);
        let (store, _) = Store::open(c()).await.unwrap();
        for i in 0..300u64 {
            let k = key(i % 200); // keys 0..100 written twice
            store.put(key_hash(&k), &k, &block(i, (i as usize * 101) % 9000)).await.unwrap();
        }
        for i in (0..200u64).step_by(7) {
            assert!(store.remove(key_hash(&key(i))));
        }
        if clean {
            store.flush().await.unwrap();
        } else {
            // Let the queued tombstones reach the writer; a put completes
            // only after everything queued before it was written.
            let k = key(10_000);
            store.put(key_hash(&k), &k, b"last").await.unwrap();
        }
        let before = store.index_snapshot();
        let stats_before = store.stats();
        assert!(stats_before.segments >= 5, "segments: {}", stats_before.segments);
        drop(store);

        let (store, report) = Store::open(c()).await.unwrap();
        assert_eq!(store.index_snapshot(), before);
        assert_eq!(report.sealed_segments + 1, stats_before.segments);
        assert_eq!(report.torn_bytes_dropped, 0);
        assert!(report.open_segment_records > 0);
        assert_eq!(files_with_ext(&path, ".idx").len() as u64, report.sealed_segments);
        assert_eq!(store.stats().used_bytes, stats_before.used_bytes);
        for i in 100..300u64 {
            let k = key(i % 200);
            let got = store.get(key_hash(&k), &k).await.unwrap();
            if (i % 200) % 7 == 0 {
                assert!(got.is_none(), "removed key {} came back", i % 200);
            } else {
                assert!(got.expect("hit").data() == block(i, (i as usize * 101) % 9000).as_slice());
            }
        }
    });
}

#[test]
fn index_rebuilt_after_clean_close_equals_index_before() {
    reopen_matches(true);
}

#[test]
fn index_rebuilt_after_crash_equals_index_before() {
    reopen_matches(false);
}

#[test]
fn crash_after_archive_before_next_segment_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let c = || cfg(&path, 64 << 10, 64 << 20);
        let (store, _) = Store::open(c()).await.unwrap();
        for i in 0..20u64 {
            let k = key(i);
            store.put(key_hash(&k), &k, &block(i, 100)).await.unwrap();
        }
        store.flush().await.unwrap();
        let before = store.index_snapshot();
        drop(store);
        // Simulate: the open segment (2) is empty and was never created; a
        // stray temporary archive is left over.
        let dat = files_with_ext(&path, ".dat");
        assert_eq!(dat.len(), 2);
        std::fs::remove_file(&dat[1]).unwrap();
        std::fs::write(path.join("seg-00000002.idx.tmp"), b"partial").unwrap();
        let (store, report) = Store::open(c()).await.unwrap();
        let seg1_only: Vec<_> = before.iter().copied().filter(|e| e.1 == 1).collect();
        assert_eq!(store.index_snapshot(), seg1_only);
        assert_eq!(report.sealed_segments, 1);
        assert!(files_with_ext(&path, ".tmp").is_empty());
        // Appends go to a fresh segment id after the sealed one.
        let k = key(99);
        store.put(key_hash(&k), &k, b"x").await.unwrap();
        assert!(store.index_snapshot().iter().any(|e| e.0 == key_hash(&k) && e.1 == 2));
    });
}
