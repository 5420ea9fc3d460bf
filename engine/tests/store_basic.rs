//! Store round trips, argument checks, concurrency and key-hash collisions.

mod store_common;

use std::rc::Rc;

use store_common::{block, cfg, key, key_hash, run};
use stoker_engine::store::format::{MAX_DATA_LEN, MAX_KEY_LEN};
use stoker_engine::store::{Store, StoreError};

#[test]
fn put_get_round_trip_all_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, report) = Store::open(cfg(&path, 16 << 20, 64 << 20)).await.unwrap();
        assert_eq!(report.sealed_segments, 0);
        let sizes = [0usize, 1, 100, 4096 - 64, 4096, 4097, 100_000, 1 << 20, MAX_DATA_LEN];
        for (i, &len) in sizes.iter().enumerate() {
            let k = key(i as u64);
            store.put(key_hash(&k), &k, &block(i as u64, len)).await.unwrap();
        }
        for (i, &len) in sizes.iter().enumerate() {
            let k = key(i as u64);
            let b = store.get(key_hash(&k), &k).await.unwrap().expect("hit");
            assert_eq!(b.len(), len);
            assert!(b.data() == block(i as u64, len).as_slice(), "size {len}");
            assert!(store.contains(key_hash(&k)));
        }
        let missing = key(999);
        assert!(store.get(key_hash(&missing), &missing).await.unwrap().is_none());
        let st = store.stats();
        assert_eq!(st.blocks, sizes.len() as u64);
        assert_eq!(st.corrupt_records, 0);
        assert!(st.used_bytes > (MAX_DATA_LEN + (1 << 20)) as u64);
    });
}

#[test]
fn overwrite_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, _) = Store::open(cfg(&path, 1 << 20, 8 << 20)).await.unwrap();
        let k = key(1);
        let h = key_hash(&k);
        store.put(h, &k, b"first").await.unwrap();
        store.put(h, &k, b"second").await.unwrap();
        assert_eq!(store.get(h, &k).await.unwrap().unwrap().data(), b"second");
        assert!(store.remove(h));
        assert!(!store.remove(h));
        assert!(!store.contains(h));
        assert!(store.get(h, &k).await.unwrap().is_none());
        // The tombstone keeps it removed across a restart.
        store.flush().await.unwrap();
        drop(store);
        let (store, _) = Store::open(cfg(&path, 1 << 20, 8 << 20)).await.unwrap();
        assert!(store.get(h, &k).await.unwrap().is_none());
        store.put(h, &k, b"third").await.unwrap();
        assert_eq!(store.get(h, &k).await.unwrap().unwrap().data(), b"third");
    });
}

#[test]
fn bad_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        assert!(matches!(Store::open(cfg(&path, 1 << 20, 1000)).await, Err(StoreError::InvalidArgument(_))));
        // A 1 MiB capacity clamps the segment to a third of it.
        let (store, _) = Store::open(cfg(&path, 1 << 20, 1 << 20)).await.unwrap();
        assert!(store.segment_bytes() <= (1 << 20) / 3);
        let big_key = vec![7u8; MAX_KEY_LEN + 1];
        let r = store.put(1, &big_key, b"x").await;
        assert!(matches!(r, Err(StoreError::InvalidArgument(_))));
        let r = store.put(2, b"k", &vec![0u8; MAX_DATA_LEN + 1]).await;
        assert!(matches!(r, Err(StoreError::InvalidArgument(_))));
        // Larger than a (clamped) segment.
        let r = store.put(3, b"k", &vec![0u8; 400 << 10]).await;
        assert!(matches!(r, Err(StoreError::InvalidArgument(_))));
    });
}

#[test]
fn concurrent_puts_from_many_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, _) = Store::open(cfg(&path, 1 << 20, 64 << 20)).await.unwrap();
        let store = Rc::new(store);
        let mut tasks = Vec::new();
        for t in 0..32u64 {
            let store = store.clone();
            tasks.push(glommio::spawn_local(async move {
                for j in 0..40u64 {
                    let i = t * 1000 + j;
                    let k = key(i);
                    store.put(key_hash(&k), &k, &block(i, (i as usize * 37) % 9000)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        for t in 0..32u64 {
            for j in 0..40u64 {
                let i = t * 1000 + j;
                let k = key(i);
                let b = store.get(key_hash(&k), &k).await.unwrap().expect("hit");
                assert!(b.data() == block(i, (i as usize * 37) % 9000).as_slice());
            }
        }
        assert_eq!(store.stats().blocks, 32 * 40);
        assert!(store.stats().segments > 1, "the stream should have rolled segments");
    });
}

#[test]
fn key_hash_collision_never_serves_the_other_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, _) = Store::open(cfg(&path, 1 << 20, 8 << 20)).await.unwrap();
        store.put(42, b"key-a", b"bytes of a").await.unwrap();
        assert!(store.get(42, b"key-b").await.unwrap().is_none());
        assert_eq!(store.get(42, b"key-a").await.unwrap().unwrap().data(), b"bytes of a");
        assert_eq!(store.stats().corrupt_records, 0);
    });
}

#[test]
fn a_directory_is_opened_by_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, _) = Store::open(cfg(&path, 1 << 20, 8 << 20)).await.unwrap();
        let second = Store::open(cfg(&path, 1 << 20, 8 << 20)).await;
        assert!(matches!(second, Err(StoreError::InvalidArgument(_))), "second open of a locked dir not refused");
        drop(store);
        let (_store, _) = Store::open(cfg(&path, 1 << 20, 8 << 20)).await.unwrap();
    });
}
