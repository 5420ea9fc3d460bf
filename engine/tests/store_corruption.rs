//! Damaged records are detected and never served: flipped bytes in data,
//! header and key (at read time and at recovery), a torn tail, a damaged
//! index archive.

mod store_common;

use store_common::{block, cfg, files_with_ext, flip_byte, key, key_hash, run};
use stoker_engine::store::format::{align_up, table_len, HEADER_LEN};
use stoker_engine::store::Store;

/// Writes blocks 0..3 (5000 bytes each, two 4 KiB units per record) into the
/// open segment of a fresh store and flips one byte of record 1 at
/// `offset_in_record` while the store is open.
fn flipped_record_is_refused(offset_in_record: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, _) = Store::open(cfg(&path, 1 << 20, 8 << 20)).await.unwrap();
        for i in 0..3 {
            let k = key(i);
            store.put(key_hash(&k), &k, &block(i, 5000)).await.unwrap();
        }
        store.flush().await.unwrap();
        let rec_len = align_up((HEADER_LEN + key(0).len() + table_len(5000) + 5000) as u64);
        let seg = &files_with_ext(&path, ".dat")[0];
        flip_byte(seg, rec_len + offset_in_record);
        let k1 = key(1);
        assert!(store.get(key_hash(&k1), &k1).await.unwrap().is_none(), "damaged record served");
        assert!(!store.contains(key_hash(&k1)), "damaged record still indexed");
        assert_eq!(store.stats().corrupt_records, 1);
        for i in [0, 2] {
            let k = key(i);
            assert!(store.get(key_hash(&k), &k).await.unwrap().unwrap().data() == block(i, 5000).as_slice());
        }
    });
}

#[test]
fn flipped_data_byte_is_refused() {
    flipped_record_is_refused((HEADER_LEN + key(0).len() + table_len(5000) + 1234) as u64);
}

#[test]
fn flipped_header_byte_is_refused() {
    // data_len field, magic, and key_hash field
    flipped_record_is_refused(21);
    flipped_record_is_refused(0);
    flipped_record_is_refused(9);
}

#[test]
fn flipped_key_byte_is_refused() {
    flipped_record_is_refused(HEADER_LEN as u64 + 3);
}

#[test]
fn torn_tail_is_truncated_at_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, _) = Store::open(cfg(&path, 1 << 20, 8 << 20)).await.unwrap();
        for i in 0..3 {
            let k = key(i);
            store.put(key_hash(&k), &k, &block(i, 9000)).await.unwrap();
        }
        store.flush().await.unwrap();
        drop(store);
        let rec_len = align_up((HEADER_LEN + key(0).len() + table_len(9000) + 9000) as u64);
        let seg = files_with_ext(&path, ".dat")[0].clone();
        // Cut the file in the middle of the third record.
        let cut = 2 * rec_len + 5000;
        std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(cut).unwrap();

        let (store, report) = Store::open(cfg(&path, 1 << 20, 8 << 20)).await.unwrap();
        assert_eq!(report.open_segment_records, 2);
        assert_eq!(report.torn_bytes_dropped, 5000);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), 2 * rec_len);
        let k2 = key(2);
        assert!(store.get(key_hash(&k2), &k2).await.unwrap().is_none());
        for i in 0..2 {
            let k = key(i);
            assert!(store.get(key_hash(&k), &k).await.unwrap().unwrap().data() == block(i, 9000).as_slice());
        }
        // Appending continues after the valid prefix and survives a restart.
        store.put(key_hash(&k2), &k2, b"again").await.unwrap();
        store.flush().await.unwrap();
        drop(store);
        let (store, report) = Store::open(cfg(&path, 1 << 20, 8 << 20)).await.unwrap();
        assert_eq!(report.torn_bytes_dropped, 0);
        assert_eq!(report.open_segment_records, 3);
        assert_eq!(store.get(key_hash(&k2), &k2).await.unwrap().unwrap().data(), b"again");
    });
}

#[test]
fn flipped_byte_in_open_segment_stops_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, _) = Store::open(cfg(&path, 1 << 20, 8 << 20)).await.unwrap();
        for i in 0..4 {
            let k = key(i);
            store.put(key_hash(&k), &k, &block(i, 100)).await.unwrap();
        }
        store.flush().await.unwrap();
        drop(store);
        let seg = files_with_ext(&path, ".dat")[0].clone();
        flip_byte(&seg, 4096 + HEADER_LEN as u64 + 50); // data of record 1
        let (store, report) = Store::open(cfg(&path, 1 << 20, 8 << 20)).await.unwrap();
        assert_eq!(report.open_segment_records, 1);
        assert_eq!(report.torn_bytes_dropped, 3 * 4096);
        for i in 1..4 {
            let k = key(i);
            assert!(store.get(key_hash(&k), &k).await.unwrap().is_none());
        }
        let k0 = key(0);
        assert!(store.get(key_hash(&k0), &k0).await.unwrap().unwrap().data() == block(0, 100).as_slice());
    });
}

#[test]
fn sealed_segment_damage_is_caught_at_read_and_bad_idx_falls_back_to_scan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        // 64 KiB segments: 16 one-unit records each.
        let c = || cfg(&path, 64 << 10, 8 << 20);
        let (store, _) = Store::open(c()).await.unwrap();
        for i in 0..40 {
            let k = key(i);
            store.put(key_hash(&k), &k, &block(i, 200)).await.unwrap();
        }
        store.flush().await.unwrap();
        drop(store);
        let idx = files_with_ext(&path, ".idx");
        assert_eq!(idx.len(), 2, "two sealed segments expected");
        let dat = files_with_ext(&path, ".dat");
        // Damage record 3 of the first sealed segment and the second archive.
        flip_byte(&dat[0], 3 * 4096 + HEADER_LEN as u64 + 60);
        flip_byte(&idx[1], 40);

        let (store, report) = Store::open(c()).await.unwrap();
        assert_eq!(report.sealed_segments, 2);
        assert_eq!(report.sealed_entries, 32, "segment 2 rescanned after its archive failed its crc");
        assert_eq!(report.open_segment_records, 8);
        for i in 0..40 {
            let k = key(i);
            let got = store.get(key_hash(&k), &k).await.unwrap();
            if i == 3 {
                assert!(got.is_none(), "damaged sealed record served");
            } else {
                assert!(got.expect("hit").data() == block(i, 200).as_slice(), "block {i}");
            }
        }
        assert_eq!(store.stats().corrupt_records, 1);
        drop(store);
        // The rewritten archive is valid: no rescan the next time.
        let (_store, report) = Store::open(c()).await.unwrap();
        assert_eq!(report.sealed_entries, 32);
    });
}
