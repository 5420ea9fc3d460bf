//! An optional DRAM tier in front of a shard's store (`--memory-cache SIZE`):
//! the most recently served blocks, up to a byte budget, evicted least
//! recently used first. A hit here skips the O_DIRECT read entirely.
//!
//! Entries keep their full key bytes, so a 64-bit hash collision is a miss,
//! never another key's bytes. Whatever removes a block from the cache on
//! purpose (free, TTL) removes it here too; capacity eviction of the disk
//! store does not need to — a cached copy of the same key is still right.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

struct Entry {
    key: Vec<u8>,
    data: Rc<Vec<u8>>,
    tick: u64,
}

pub struct MemTier {
    budget: u64,
    used: Cell<u64>,
    clock: Cell<u64>,
    map: RefCell<HashMap<u64, Entry>>,
    /// (key hash, tick) in use order; stale pairs (tick moved on) are skipped.
    order: RefCell<VecDeque<(u64, u64)>>,
}

impl MemTier {
    pub fn new(budget: u64) -> MemTier {
        MemTier { budget, used: Cell::new(0), clock: Cell::new(0), map: RefCell::default(), order: RefCell::default() }
    }

    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    fn tick(&self) -> u64 {
        let t = self.clock.get() + 1;
        self.clock.set(t);
        t
    }

    pub fn get(&self, key_hash: u64, key: &[u8]) -> Option<Rc<Vec<u8>>> {
        if !self.enabled() {
            return None;
        }
        let t = self.tick();
        let data = {
            let mut map = self.map.borrow_mut();
            let e = map.get_mut(&key_hash).filter(|e| e.key == key)?;
            e.tick = t;
            e.data.clone()
        };
        self.order.borrow_mut().push_back((key_hash, t));
        self.compact();
        Some(data)
    }

    pub fn insert(&self, key_hash: u64, key: &[u8], data: Rc<Vec<u8>>) {
        let len = data.len() as u64;
        if !self.enabled() || len > self.budget / 4 {
            return;
        }
        let t = self.tick();
        if let Some(old) = self.map.borrow_mut().insert(key_hash, Entry { key: key.to_vec(), data, tick: t }) {
            self.used.set(self.used.get() - old.data.len() as u64);
        }
        self.used.set(self.used.get() + len);
        self.order.borrow_mut().push_back((key_hash, t));
        while self.used.get() > self.budget {
            let Some((k, t)) = self.order.borrow_mut().pop_front() else { break };
            let mut map = self.map.borrow_mut();
            if map.get(&k).is_some_and(|e| e.tick == t) {
                let e = map.remove(&k).expect("checked above");
                self.used.set(self.used.get() - e.data.len() as u64);
            }
        }
        self.compact();
    }

    pub fn remove(&self, key_hash: u64) {
        if let Some(e) = self.map.borrow_mut().remove(&key_hash) {
            self.used.set(self.used.get() - e.data.len() as u64);
        }
    }

    pub fn used_bytes(&self) -> u64 {
        self.used.get()
    }

    /// Keep the order queue from growing without bound under hits.
    fn compact(&self) {
        let live = self.map.borrow().len();
        let mut order = self.order.borrow_mut();
        if order.len() <= 4 * live + 1024 {
            return;
        }
        let mut fresh: Vec<(u64, u64)> = self.map.borrow().iter().map(|(k, e)| (*k, e.tick)).collect();
        fresh.sort_unstable_by_key(|(_, t)| *t);
        *order = fresh.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: usize, b: u8) -> Rc<Vec<u8>> {
        Rc::new(vec![b; n])
    }

    #[test]
    fn lru_within_budget_and_keys_checked() {
        let m = MemTier::new(400);
        m.insert(1, b"a", v(100, 1));
        m.insert(2, b"b", v(100, 2));
        m.insert(3, b"c", v(100, 3));
        assert!(m.get(1, b"a").is_some()); // 1 is now most recent
        m.insert(4, b"d", v(100, 4));
        m.insert(5, b"e", v(100, 5)); // over budget: 2 (least recent) goes
        assert!(m.get(2, b"b").is_none());
        assert_eq!(m.get(1, b"a").unwrap()[0], 1);
        assert!(m.used_bytes() <= 400);
        // Same hash, other key: a miss, never the other key's bytes.
        assert!(m.get(1, b"zz").is_none());
        m.remove(1);
        assert!(m.get(1, b"a").is_none());
        // Many hits do not grow the order queue without bound.
        for _ in 0..10_000 {
            m.get(3, b"c");
        }
        assert!(m.order.borrow().len() <= 4 * m.map.borrow().len() + 1024);
        // Disabled tier holds nothing.
        let off = MemTier::new(0);
        off.insert(1, b"a", v(10, 1));
        assert!(off.get(1, b"a").is_none());
    }
}
