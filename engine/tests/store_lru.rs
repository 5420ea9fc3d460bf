//! The `lru` eviction policy: the segment read least recently goes first,
//! whole, so an old segment that is still being read keeps even its unread
//! blocks, while `fifo-reinsert` reclaims it and keeps only the read ones.

mod store_common;

use store_common::*;
use stoker_engine::store::{Eviction, Store};

/// Fill segment A (blocks 0..16), read block 0 often while 400 more blocks
/// stream in; returns whether block 5 (in A, never read) is still cached and
/// how many blocks were copied forward.
fn run_policy(policy: Eviction) -> (bool, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        // 64 KiB segments (16 one-unit records), capacity 6 segments.
        let (store, _) = Store::open(cfg(&path, 64 << 10, 384 << 10)).await.unwrap();
        store.set_eviction(policy);
        for i in 0..400u64 {
            let k = key(i);
            store.put(key_hash(&k), &k, &block(i, 300)).await.unwrap();
            if i >= 16 && i % 4 == 0 {
                let k0 = key(0);
                let got = store.get(key_hash(&k0), &k0).await.unwrap();
                assert!(got.expect("block 0 is read all along and must stay").data() == block(0, 300).as_slice());
            }
        }
        let st = store.stats();
        assert!(st.evicted_blocks >= 200, "no pressure: {st:?}");
        // Whatever survives is right.
        for i in 0..400u64 {
            let k = key(i);
            if let Some(b) = store.get(key_hash(&k), &k).await.unwrap() {
                assert!(b.data() == block(i, 300).as_slice());
            }
        }
        (store.contains(key_hash(&key(5))), st.reinserted_blocks)
    })
}

#[test]
fn lru_keeps_the_segment_being_read_fifo_keeps_only_the_read_block() {
    let (lru_kept_5, lru_copies) = run_policy(Eviction::Lru);
    assert!(lru_kept_5, "lru: the segment read most recently must not be reclaimed");
    assert_eq!(lru_copies, 0, "lru copies nothing forward");
    let (fifo_kept_5, fifo_copies) = run_policy(Eviction::FifoReinsert);
    assert!(!fifo_kept_5, "fifo-reinsert: the oldest segment goes, its unread blocks with it");
    assert!(fifo_copies > 0, "fifo-reinsert gives the read block a second chance");
}

#[test]
fn policy_names_parse() {
    assert_eq!("lru".parse::<Eviction>(), Ok(Eviction::Lru));
    assert_eq!("fifo-reinsert".parse::<Eviction>(), Ok(Eviction::FifoReinsert));
    assert!("random".parse::<Eviction>().is_err());
}
