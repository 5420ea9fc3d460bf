//! Which member owns a block: weighted rendezvous hashing (highest random
//! weight) of the block's key hash over the members, weighted by capacity.
//!
//! Every member scores every key; the highest score owns it. A member's score
//! for a key is `w / -ln(u)`, with `u` in (0, 1) hashed from the key and the
//! member's id and `w` its capacity: the chance a member wins is exactly its
//! share of the total capacity, and a member joining or leaving moves only
//! the keys it wins or held — about its own share — and nothing between the
//! others. No ring to build or agree on: the member list alone decides, the
//! same on every node. The cost is one hash per member per lookup (docs/CLUSTER.md
//! says what that means at 1,000 nodes).

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// One engine of the cluster, as it registers itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `--node-id`: stable across restarts, so a restarted node owns what it cached.
    pub id: String,
    /// `--peer-advertise`: where other members reach it (HOST:PORT).
    pub addr: String,
    /// Bytes of cache it brings: its weight in placement.
    pub capacity_bytes: u64,
}

/// The score of `member` for `key`; the highest wins.
fn score(key: u64, member: &Member) -> f64 {
    let h = xxh3_64_with_seed(member.id.as_bytes(), key);
    // 53 random bits into (0, 1), never 0 or 1.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    // A member with no capacity declared weighs as one byte: it still owns
    // keys if it is alone, and almost none beside any real member.
    (member.capacity_bytes.max(1) as f64) / -u.ln()
}

/// The member that owns `key` (a block key hash), or None with no members.
/// Ties (vanishingly rare) go to the smaller id, so every node agrees.
pub fn owner(key: u64, members: &[Member]) -> Option<&Member> {
    let mut best: Option<(&Member, f64)> = None;
    for m in members {
        let s = score(key, m);
        match best {
            Some((b, bs)) if bs > s || (bs == s && b.id <= m.id) => {}
            _ => best = Some((m, s)),
        }
    }
    best.map(|(m, _)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize, cap: u64) -> Vec<Member> {
        (0..n).map(|i| Member { id: format!("node-{i}"), addr: format!("127.0.0.1:{}", 7000 + i), capacity_bytes: cap }).collect()
    }

    fn keys() -> impl Iterator<Item = u64> {
        (0..100_000u64).map(|i| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()))
    }

    #[test]
    fn every_node_agrees_whatever_the_order() {
        let m = members(5, 1 << 30);
        let mut rev = m.clone();
        rev.reverse();
        for k in keys().take(10_000) {
            assert_eq!(owner(k, &m).unwrap().id, owner(k, &rev).unwrap().id);
        }
        assert!(owner(1, &[]).is_none());
    }

    #[test]
    fn equal_members_share_evenly_and_weights_count() {
        let m = members(4, 1 << 30);
        let mut count = std::collections::HashMap::new();
        for k in keys() {
            *count.entry(owner(k, &m).unwrap().id.clone()).or_insert(0u32) += 1;
        }
        for (id, n) in &count {
            assert!((23_000..27_000).contains(n), "{id} owns {n} of 100000 keys");
        }
        // One member with three times the capacity of each of two others: 3/5.
        let mut w = members(3, 1 << 30);
        w[0].capacity_bytes = 3 << 30;
        let big = keys().filter(|&k| owner(k, &w).unwrap().id == "node-0").count();
        assert!((58_000..62_000).contains(&big), "the big member owns {big} of 100000 keys");
    }

    #[test]
    fn a_joining_member_moves_only_its_share() {
        let three = members(3, 1 << 30);
        let four = members(4, 1 << 30);
        let mut moved = 0;
        for k in keys() {
            let (a, b) = (owner(k, &three).unwrap(), owner(k, &four).unwrap());
            if a != b {
                // Only to the newcomer, never between the old members.
                assert_eq!(b.id, "node-3");
                moved += 1;
            }
        }
        assert!((23_000..27_000).contains(&moved), "{moved} of 100000 keys moved (about 1/4 expected)");
    }
}
