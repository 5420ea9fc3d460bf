//! Routing and naming of cached blocks.
//!
//! Routing uses (mount, path, block index) only, so a client can route a read
//! before it knows the object's version. The cache key adds the version token,
//! so a changed object gets new keys and its stale blocks age out.

use xxhash_rust::xxh3::xxh3_64_with_seed;

const ROUTE_SEED: u64 = 0x5354_4f4b_4552_0001; // "STOKER" + 1
const KEY_SEED: u64 = 0x5354_4f4b_4552_0002;

/// Shard that owns block `block` of `path` (a full namespace path, `/mount/rel`).
pub fn shard_for(path: &str, block: u64, nr_shards: usize) -> usize {
    debug_assert!(nr_shards > 0);
    (route_hash(path, block) % nr_shards.max(1) as u64) as usize
}

/// The 64-bit hash of (path, block) that routing (and the direct-read
/// table) is built on.
pub fn route_hash(path: &str, block: u64) -> u64 {
    let mut buf = Vec::with_capacity(path.len() + 8);
    buf.extend_from_slice(path.as_bytes());
    buf.extend_from_slice(&block.to_le_bytes());
    xxh3_64_with_seed(&buf, ROUTE_SEED)
}

/// The full name of a cached block: `path \0 version \0 block` as bytes,
/// and its 64-bit hash used by the in-memory index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockKey {
    pub hash: u64,
    pub bytes: Vec<u8>,
}

impl BlockKey {
    /// Whether `key` (the bytes of a record's key) names block `block` of
    /// `path`, whatever the version.
    pub fn names(key: &[u8], path: &str, block: u64) -> bool {
        let Some(rest) = key.strip_prefix(path.as_bytes()).and_then(|r| r.strip_prefix(b"\0")) else { return false };
        let b = block.to_string();
        rest.len() > b.len() && rest.ends_with(b.as_bytes()) && rest[rest.len() - b.len() - 1] == 0 && !rest[..rest.len() - b.len() - 1].contains(&0)
    }

    /// The hash of full key bytes (what `new` puts in `hash`).
    pub fn hash_of(bytes: &[u8]) -> u64 {
        xxh3_64_with_seed(bytes, KEY_SEED)
    }

    pub fn new(path: &str, version: &str, block: u64) -> BlockKey {
        let mut bytes = Vec::with_capacity(path.len() + version.len() + 24);
        bytes.extend_from_slice(path.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(version.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(block.to_string().as_bytes());
        BlockKey { hash: xxh3_64_with_seed(&bytes, KEY_SEED), bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_spreads_and_is_stable() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_for(&format!("/m/f{i}"), 0, 4)] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven routing: {counts:?}");
        }
        assert_eq!(shard_for("/m/a", 3, 7), shard_for("/m/a", 3, 7));
    }

    #[test]
    fn names_matches_path_and_block_only() {
        let k = BlockKey::new("/m/a", "v1", 12);
        assert!(BlockKey::names(&k.bytes, "/m/a", 12));
        assert!(!BlockKey::names(&k.bytes, "/m/a", 2));
        assert!(!BlockKey::names(&k.bytes, "/m/", 12));
        assert!(!BlockKey::names(&k.bytes, "/m/ab", 12));
        assert!(!BlockKey::names(&BlockKey::new("/m/a", "v\01", 12).bytes, "/m/a", 12));
        assert!(BlockKey::names(&BlockKey::new("/m/a", "", 0).bytes, "/m/a", 0));
    }

    #[test]
    fn version_changes_key() {
        let a = BlockKey::new("/m/a", "v1", 0);
        let b = BlockKey::new("/m/a", "v2", 0);
        assert_ne!(a.hash, b.hash);
        assert_ne!(a.bytes, b.bytes);
    }
}
