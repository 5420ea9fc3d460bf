//! Range reads of format version 2: only the sub-blocks a range touches are
//! read (counted in `device_bytes_read`) and verified; a damaged sub-block
//! is never served; a store written in format version 1 still reads after
//! an upgrade.

mod store_common;

use store_common::{block, cfg, files_with_ext, flip_byte, key, key_hash, run};
use stoker_engine::store::format::{align_up, encode_record_v1, table_len, HEADER_LEN, SUB_BLOCK};
use stoker_engine::store::Store;

#[test]
fn ranges_return_exactly_the_bytes_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, _) = Store::open(cfg(&path, 16 << 20, 64 << 20)).await.unwrap();
        let sizes = [1usize, 5000, 110 * 1024 + 17, 1 << 20, (4 << 20) + 3];
        for (i, &len) in sizes.iter().enumerate() {
            let k = key(i as u64);
            store.put(key_hash(&k), &k, &block(i as u64, len)).await.unwrap();
        }
        for (i, &len) in sizes.iter().enumerate() {
            let k = key(i as u64);
            let want = block(i as u64, len);
            let l = len as u64;
            let cases = [(0, l), (0, 1), (l - 1, 1), (l / 2, 4096), (4095, 2), (l / 3, l / 3 + 1), (l, 0), (0, l + 100), (100, 0)];
            for (off, n) in cases {
                let b = store.get_range(key_hash(&k), &k, l, off, n).await.unwrap().unwrap_or_else(|| panic!("miss: size {len} range {off}+{n}"));
                assert_eq!(b.block_len(), l);
                let from = (off as usize).min(len);
                let to = (off + n).min(l) as usize;
                assert!(b.data() == &want[from..to], "size {len} range {off}+{n}");
            }
            // A caller expecting another length learns the stored one and gets no bytes.
            let b = store.get_range(key_hash(&k), &k, l + 1, 0, 10).await.unwrap().expect("found");
            assert_eq!(b.block_len(), l);
            assert!(b.data().is_empty());
        }
        // Another key with the same hash is a plain miss, not corruption.
        let (k0, other) = (key(0), key(12345));
        assert!(store.get_range(key_hash(&k0), &other, 1, 0, 1).await.unwrap().is_none());
        assert_eq!(store.stats().corrupt_records, 0);
    });
}

#[test]
fn a_range_reads_only_the_head_and_the_sub_blocks_it_touches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, _) = Store::open(cfg(&path, 16 << 20, 64 << 20)).await.unwrap();
        let k = key(7);
        let len = 4 << 20;
        let data = block(7, len);
        store.put(key_hash(&k), &k, &data).await.unwrap();
        // A block this large starts its data on a page after its head.
        let head = align_up((HEADER_LEN + k.len() + table_len(len)) as u64);
        let read = |before: u64| store.stats().device_bytes_read - before;
        // 4 KiB in the middle: the head's pages and one data page, in two reads.
        let before = store.stats().device_bytes_read;
        let off = 2 << 20;
        let b = store.get_range(key_hash(&k), &k, len as u64, off as u64, 4096).await.unwrap().unwrap();
        assert!(b.data() == &data[off..off + 4096]);
        assert_eq!(read(before), head + 4096, "first 4 KiB range");
        // The head is kept in memory: the next 4 KiB range reads one page.
        let before = store.stats().device_bytes_read;
        let off = 3 << 20;
        let b = store.get_range(key_hash(&k), &k, len as u64, off as u64 + 10, 4000).await.unwrap().unwrap();
        assert!(b.data() == &data[off + 10..off + 4010]);
        assert_eq!(read(before), 4096, "second 4 KiB range");
        // 1 MiB of a 4 MiB block reads 1 MiB, not 4.
        let before = store.stats().device_bytes_read;
        let b = store.get_range(key_hash(&k), &k, len as u64, 1 << 20, 1 << 20).await.unwrap().unwrap();
        assert!(b.data() == &data[1 << 20..2 << 20]);
        assert_eq!(read(before), 1 << 20);
        // A whole get reads the whole record.
        let before = store.stats().device_bytes_read;
        store.get(key_hash(&k), &k).await.unwrap().unwrap();
        assert_eq!(read(before), head + len as u64);
        // Is it there? With the head in memory, no read at all.
        let before = store.stats().device_bytes_read;
        assert_eq!(store.get_range(key_hash(&k), &k, len as u64, 0, 0).await.unwrap().unwrap().block_len(), len as u64);
        assert_eq!(read(before), 0);
        // A small file is one read of its own record.
        let k2 = key(8);
        store.put(key_hash(&k2), &k2, &block(8, 110 * 1024)).await.unwrap();
        let before = store.stats().device_bytes_read;
        let b = store.get_range(key_hash(&k2), &k2, 110 * 1024, 0, 110 * 1024).await.unwrap().unwrap();
        assert!(b.data() == block(8, 110 * 1024).as_slice());
        assert_eq!(read(before), align_up((HEADER_LEN + k2.len() + table_len(110 * 1024) + 110 * 1024) as u64));
        // A record rewritten elsewhere is never checked against the old head.
        let new = block(70, len);
        store.put(key_hash(&k), &k, &new).await.unwrap();
        let b = store.get_range(key_hash(&k), &k, len as u64, 3 << 20, 4096).await.unwrap().unwrap();
        assert!(b.data() == &new[3 << 20..(3 << 20) + 4096]);
        assert_eq!(store.stats().corrupt_records, 0);
    });
}

#[test]
fn a_flipped_byte_in_any_sub_block_is_never_served() {
    let len = 6 * SUB_BLOCK + 300;
    for sub in 0..7 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(move || async move {
            let (store, _) = Store::open(cfg(&path, 1 << 20, 8 << 20)).await.unwrap();
            let k = key(3);
            let data = block(3, len);
            store.put(key_hash(&k), &k, &data).await.unwrap();
            store.flush().await.unwrap();
            let data_start = (HEADER_LEN + k.len() + table_len(len)) as u64;
            let at = sub * SUB_BLOCK + 77;
            flip_byte(&files_with_ext(&path, ".dat")[0], data_start + at as u64);
            // Ranges away from the damage are still served, and right.
            let other = if sub == 0 { SUB_BLOCK } else { 0 };
            let b = store.get_range(key_hash(&k), &k, len as u64, other as u64, 100).await.unwrap().unwrap();
            assert!(b.data() == &data[other..other + 100]);
            // A range touching the damaged sub-block is refused and the block forgotten.
            let r = store.get_range(key_hash(&k), &k, len as u64, at as u64, 1).await.unwrap();
            assert!(r.is_none(), "damaged sub-block {sub} served");
            assert_eq!(store.stats().corrupt_records, 1);
            assert!(!store.contains(key_hash(&k)));
        });
    }
}

#[test]
fn a_store_written_in_format_1_reads_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    // The previous release's open segment: three version 1 records back to back.
    let sizes = [5000usize, 110 * 1024, 1 << 20];
    let mut seg = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let k = key(i as u64);
        seg.extend(encode_record_v1(key_hash(&k), &k, &block(i as u64, len)));
    }
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join("seg-00000000.dat"), &seg).unwrap();
    run(move || async move {
        let (store, report) = Store::open(cfg(&path, 16 << 20, 64 << 20)).await.unwrap();
        assert_eq!(report.open_segment_records, 3);
        assert_eq!(report.torn_bytes_dropped, 0);
        for (i, &len) in sizes.iter().enumerate() {
            let k = key(i as u64);
            let want = block(i as u64, len);
            assert!(store.get(key_hash(&k), &k).await.unwrap().unwrap().data() == want.as_slice());
            let b = store.get_range(key_hash(&k), &k, len as u64, 1000, 3000).await.unwrap().unwrap();
            assert!(b.data() == &want[1000..4000], "v1 record {i} range");
        }
        // New blocks are written in version 2 after the old ones; both survive a restart.
        let k9 = key(9);
        store.put(key_hash(&k9), &k9, &block(9, 70_000)).await.unwrap();
        store.flush().await.unwrap();
        drop(store);
        let (store, report) = Store::open(cfg(&path, 16 << 20, 64 << 20)).await.unwrap();
        assert_eq!(report.open_segment_records, 4);
        for (i, &len) in sizes.iter().enumerate().chain([(9, &70_000)]) {
            let k = key(i as u64);
            let b = store.get_range(key_hash(&k), &k, len as u64, 0, len as u64).await.unwrap().unwrap();
            assert!(b.data() == block(i as u64, len).as_slice());
        }
        assert_eq!(store.stats().corrupt_records, 0);
    });
}
