//! Model-based test: random put / get / remove / flush / restart / crash
//! sequences on small segments, against a `HashMap` model.
//!
//! Properties: a get returns exactly one of the values the model allows for
//! that key, or `None` (a cache may forget) — never other bytes; after a clean
//! restart with no eviction so far, every key the model knows is still there.

mod store_common;

use std::collections::HashMap;

use proptest::prelude::*;
use store_common::{cfg, key, key_hash, run};
use stoker_engine::store::Store;

#[derive(Debug, Clone)]
enum Op {
    Put { k: u64, len: usize, seed: u8 },
    /// Several puts issued concurrently from one task (distinct keys).
    PutMany(Vec<(u64, usize, u8)>),
    Get(u64),
    Remove(u64),
    Flush,
    Restart,
    Crash,
}

const KEYS: u64 = 24;

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![4 => 0usize..600, 2 => 600usize..9000, 1 => 9000usize..40_000];
    prop_oneof![
        8 => (0..KEYS, len.clone(), any::<u8>()).prop_map(|(k, len, seed)| Op::Put { k, len, seed }),
        2 => prop::collection::vec((0..KEYS, len, any::<u8>()), 1..12).prop_map(Op::PutMany),
        8 => (0..KEYS).prop_map(Op::Get),
        2 => (0..KEYS).prop_map(Op::Remove),
        1 => Just(Op::Flush),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
    ]
}

fn value(k: u64, len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(k as u8)).collect()
}

/// What the model allows for one key.
#[derive(Default, Clone)]
struct KeyModel {
    /// Values a get may return now (`None` = absent).
    possible: Vec<Option<Vec<u8>>>,
    /// Values a crash may roll back to: durable at the last flush, or
    /// written since.
    history: Vec<Option<Vec<u8>>>,
}

impl KeyModel {
    fn set(&mut self, v: Option<Vec<u8>>) {
        self.possible = vec![v.clone()];
        self.history.push(v);
    }
}

fn check(ops: Vec<Op>, small_capacity: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let capacity = if small_capacity { 384 << 10 } else { 64 << 20 };
        let c = || cfg(&path, 64 << 10, capacity);
        let (mut store, _) = Store::open(c()).await.unwrap();
        let mut model: HashMap<u64, KeyModel> =
            (0..KEYS).map(|k| (k, KeyModel { possible: vec![None], history: vec![None] })).collect();
        let mut evicted_total = 0;
        for op in ops {
            match op {
                Op::Put { k, len, seed } => {
                    let v = value(k, len, seed);
                    store.put(key_hash(&key(k)), &key(k), &v).await.unwrap();
                    model.get_mut(&k).unwrap().set(Some(v));
                }
                Op::PutMany(puts) => {
                    let mut seen = std::collections::HashSet::new();
                    let puts: Vec<_> = puts.into_iter().filter(|p| seen.insert(p.0)).collect();
                    let futs = puts.iter().map(|&(k, len, seed)| {
                        let store = &store;
                        async move {
                            let v = value(k, len, seed);
                            store.put(key_hash(&key(k)), &key(k), &v).await.map(|_| (k, v))
                        }
                    });
                    for r in futures::future::join_all(futs).await {
                        let (k, v) = r.unwrap();
                        model.get_mut(&k).unwrap().set(Some(v));
                    }
                }
                Op::Get(k) => {
                    let got = store.get(key_hash(&key(k)), &key(k)).await.unwrap();
                    if let Some(b) = got {
                        let m = model.get_mut(&k).unwrap();
                        let v = Some(b.data().to_vec());
                        assert!(m.possible.contains(&v), "key {k}: got {} bytes the model does not allow", b.len());
                        m.possible = vec![v];
                    }
                }
                Op::Remove(k) => {
                    store.remove(key_hash(&key(k)));
                    model.get_mut(&k).unwrap().set(None);
                }
                Op::Flush => {
                    store.flush().await.unwrap();
                    for m in model.values_mut() {
                        m.history = m.possible.clone();
                    }
                }
                Op::Restart => {
                    store.flush().await.unwrap();
                    evicted_total += store.stats().evicted_blocks;
                    drop(store);
                    let (s, report) = Store::open(c()).await.unwrap();
                    store = s;
                    assert_eq!(report.torn_bytes_dropped, 0);
                    for (k, m) in model.iter_mut() {
                        m.history = m.possible.clone();
                        let got = store.get(key_hash(&key(*k)), &key(*k)).await.unwrap().map(|b| b.data().to_vec());
                        if got.is_some() {
                            assert!(m.possible.contains(&got), "key {k}: wrong bytes after restart");
                        } else if evicted_total == 0 && m.possible.len() == 1 && m.possible[0].is_some() {
                            panic!("key {k}: flushed, never evicted, gone after a clean restart");
                        }
                    }
                }
                Op::Crash => {
                    evicted_total += store.stats().evicted_blocks;
                    drop(store);
                    let (s, _) = Store::open(c()).await.unwrap();
                    store = s;
                    for m in model.values_mut() {
                        let mut all = m.history.clone();
                        for v in &m.possible {
                            if !all.contains(v) {
                                all.push(v.clone());
                            }
                        }
                        m.possible = all.clone();
                        m.history = all;
                    }
                }
            }
            let st = store.stats();
            assert!(st.used_bytes <= capacity, "used {} > capacity {capacity}", st.used_bytes);
            assert_eq!(st.corrupt_records, 0);
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model_small_capacity(ops in prop::collection::vec(op(), 1..120)) {
        check(ops, true);
    }

    #[test]
    fn store_matches_model_no_eviction(ops in prop::collection::vec(op(), 1..120)) {
        check(ops, false);
    }
}
