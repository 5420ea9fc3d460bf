//! Per-mount capacity quotas, enforced by each shard on its share
//! (quota / shards): the shard remembers, per mount, the blocks it cached in
//! order, and when a mount's bytes pass its share it drops that mount's
//! oldest blocks. The global capacity and eviction policy still apply on top.
//!
//! Blocks the store evicted on its own stay counted until they reach the
//! front of the queue, so a mount's count can only over-estimate: the quota
//! holds, at worst with a little less cached than it allows. Pinned blocks
//! are never dropped for a quota (they count, and can hold a mount above it).

use crate::store::Store;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

#[derive(Default)]
struct MountUse {
    order: VecDeque<(u64, u64)>,
    bytes: u64,
}

pub struct Quotas {
    /// Mount name -> this shard's share of its quota, in bytes.
    limits: HashMap<String, u64>,
    used: RefCell<HashMap<String, MountUse>>,
}

/// The mount of a namespace path `/mount/...`.
pub fn mount_of(path: &str) -> &str {
    path.trim_start_matches('/').split('/').next().unwrap_or("")
}

impl Quotas {
    pub fn new(limits: HashMap<String, u64>) -> Quotas {
        Quotas { limits, used: RefCell::default() }
    }

    pub fn applies(&self, mount: &str) -> bool {
        self.limits.contains_key(mount)
    }

    /// Count a block the store now holds; returns how many blocks were
    /// dropped to keep the mount within its share.
    pub fn track(&self, store: &Store, mount: &str, key_hash: u64, len: u64) -> u64 {
        let Some(&limit) = self.limits.get(mount) else { return 0 };
        let mut used = self.used.borrow_mut();
        let u = used.entry(mount.to_string()).or_default();
        u.order.push_back((key_hash, len));
        u.bytes += len;
        let mut dropped = 0;
        let mut kept_pinned = Vec::new();
        while u.bytes > limit {
            let Some((k, l)) = u.order.pop_front() else { break };
            if store.is_pinned(k) && store.contains(k) {
                kept_pinned.push((k, l));
                continue;
            }
            u.bytes -= l;
            if store.remove(k) {
                dropped += 1;
            }
        }
        // Pinned blocks keep their place (and their bytes) at the front.
        for e in kept_pinned.into_iter().rev() {
            u.order.push_front(e);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_names() {
        assert_eq!(mount_of("/a/b/c"), "a");
        assert_eq!(mount_of("/a"), "a");
        assert_eq!(mount_of("/"), "");
    }
}
