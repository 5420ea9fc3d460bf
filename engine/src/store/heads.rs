//! Heads (header, key, crc table) of large records already read and
//! verified, so a range read of a large block reads only the sub-blocks it
//! wants. An entry is used only while the index still points at the same
//! place (`Location::same_place`), so a moved, replaced or removed record is
//! never verified against a stale table. Bounded in bytes, oldest first out.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use super::index::Location;

pub struct HeadCache {
    budget: u64,
    used: u64,
    map: HashMap<u64, (u64, Rc<[u8]>)>,
    /// Insertion order (may name keys removed since; skipped on eviction).
    order: VecDeque<u64>,
}

impl HeadCache {
    pub fn new(budget: u64) -> HeadCache {
        HeadCache { budget, used: 0, map: HashMap::new(), order: VecDeque::new() }
    }

    /// The head of `key_hash` if it was read at `packed`'s place.
    pub fn get(&self, key_hash: u64, packed: u64) -> Option<Rc<[u8]>> {
        let (at, head) = self.map.get(&key_hash)?;
        Location::same_place(*at, packed).then(|| head.clone())
    }

    pub fn insert(&mut self, key_hash: u64, packed: u64, head: Rc<[u8]>) {
        if head.len() as u64 > self.budget {
            return;
        }
        if let Some((at, _)) = self.map.get(&key_hash) {
            if Location::same_place(*at, packed) {
                return;
            }
        }
        self.remove(key_hash);
        while self.used + head.len() as u64 > self.budget {
            let Some(old) = self.order.pop_front() else { break };
            self.remove(old);
        }
        self.used += head.len() as u64;
        self.map.insert(key_hash, (packed, head));
        self.order.push_back(key_hash);
    }

    pub fn remove(&mut self, key_hash: u64) {
        if let Some((_, h)) = self.map.remove(&key_hash) {
            self.used -= h.len() as u64;
        }
        // Keep `order` from growing without bound when keys churn.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_only_for_the_same_place() {
        let mut c = HeadCache::new(100);
        let at = |seg: u32| Location { seg_id: seg, offset_units: 1, len_units: 2, accessed: false }.pack();
        c.insert(1, at(1), Rc::from(&[1u8; 40][..]));
        c.insert(2, at(1), Rc::from(&[2u8; 40][..]));
        assert!(c.get(1, at(1)).is_some());
        assert!(c.get(1, at(2)).is_none(), "a moved record must not use the old head");
        assert!(c.get(1, Location::with_accessed(at(1))).is_some());
        c.insert(3, at(1), Rc::from(&[3u8; 40][..]));
        assert!(c.get(1, at(1)).is_none(), "oldest out first");
        assert!(c.get(2, at(1)).is_some() && c.get(3, at(1)).is_some());
        assert!(c.used <= 100);
        c.remove(2);
        c.remove(3);
        assert_eq!(c.used, 0);
    }
}
