//! Capacity and second-chance eviction: used bytes stay within capacity over
//! a long put stream; blocks re-read since they were written survive while
//! unread ones go.

mod store_common;

use store_common::{block, cfg, data_bytes_on_disk, key, key_hash, run};
use stoker_engine::store::Store;

#[test]
fn used_bytes_stay_within_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let capacity = 1 << 20;
        let (store, _) = Store::open(cfg(&path, 256 << 10, capacity)).await.unwrap();
        let mut max_used = 0;
        for i in 0..3000u64 {
            let k = key(i);
            // 1..5 units per record; every 10th block is read back (hot).
            store.put(key_hash(&k), &k, &block(i, (i as usize * 1777) % 18000)).await.unwrap();
            if i % 10 == 0 {
                let _ = store.get(key_hash(&k), &k).await.unwrap();
            }
            let st = store.stats();
            assert!(st.used_bytes <= capacity, "used {} > capacity {capacity} at put {i}", st.used_bytes);
            assert!(data_bytes_on_disk(&path) <= capacity, "files exceed capacity at put {i}");
            max_used = max_used.max(st.used_bytes);
        }
        let st = store.stats();
        assert!(st.evicted_blocks > 2000, "{st:?}");
        assert!(max_used > capacity / 2, "capacity badly underused: {max_used}");
        // Whatever is still indexed is readable and correct.
        let mut hits = 0;
        for i in 0..3000u64 {
            let k = key(i);
            if let Some(b) = store.get(key_hash(&k), &k).await.unwrap() {
                assert!(b.data() == block(i, (i as usize * 1777) % 18000).as_slice());
                hits += 1;
            }
        }
        assert_eq!(hits, store.stats().blocks);
        assert_eq!(store.stats().corrupt_records, 0);
        // And after a restart with the same capacity.
        store.flush().await.unwrap();
        let blocks = store.stats().blocks;
        drop(store);
        let (store, _) = Store::open(cfg(&path, 256 << 10, capacity)).await.unwrap();
        assert_eq!(store.stats().blocks, blocks);
        assert!(store.stats().used_bytes <= capacity);
    });
}

#[test]
fn reread_blocks_get_a_second_chance_unread_ones_go() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        // 64 KiB segments (16 one-unit records), capacity 6 segments.
        let (store, _) = Store::open(cfg(&path, 64 << 10, 384 << 10)).await.unwrap();
        let hot: Vec<u64> = (0..6).collect();
        for &i in &hot {
            let k = key(i);
            store.put(key_hash(&k), &k, &block(i, 300)).await.unwrap();
        }
        for i in 100..1100u64 {
            let k = key(i);
            store.put(key_hash(&k), &k, &block(i, 300)).await.unwrap();
            if i % 8 == 0 {
                // Re-read the hot set about twice per segment written.
                for &h in &hot {
                    let k = key(h);
                    let b = store.get(key_hash(&k), &k).await.unwrap();
                    assert!(b.expect("hot block evicted").data() == block(h, 300).as_slice());
                }
            }
        }
        let st = store.stats();
        assert!(st.reinserted_blocks >= 6, "{st:?}");
        assert!(st.evicted_blocks >= 800, "{st:?}");
        for i in 100..500u64 {
            assert!(!store.contains(key_hash(&key(i))), "unread block {i} survived");
        }
    });
}

#[test]
fn without_rereads_the_oldest_go_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, _) = Store::open(cfg(&path, 64 << 10, 384 << 10)).await.unwrap();
        for i in 0..200u64 {
            let k = key(i);
            store.put(key_hash(&k), &k, &block(i, 300)).await.unwrap();
        }
        let st = store.stats();
        assert_eq!(st.reinserted_blocks, 0);
        assert_eq!(st.blocks + st.evicted_blocks, 200);
        // FIFO: the survivors are exactly the newest blocks.
        let oldest_alive = (0..200u64).find(|&i| store.contains(key_hash(&key(i)))).unwrap();
        assert!((oldest_alive..200).all(|i| store.contains(key_hash(&key(i)))));
    });
}
