//! Publishing where blocks live to direct readers (`crate::direct`): after
//! a read or a write-back, and for every cached block at start-up; voiding
//! this shard's entries when blocks go.

use super::Shard;
use crate::namespace::Namespace;
use crate::store::Store;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use stoker_proto::control::{Attr, Kind};
use stoker_proto::key::BlockKey;

impl Shard {
    /// Void this shard's direct-read entries.
    pub(super) fn void_direct(&self) {
        if let Some(p) = &self.direct {
            p.areas.table.bump_epoch(self.id);
        }
    }
    /// The direct-read epoch of this shard (0 without direct reads).
    pub(super) fn direct_epoch(&self) -> u64 {
        self.direct.as_ref().map_or(0, |p| p.areas.table.epoch(self.id))
    }
}

/// What a shard needs to publish a block to direct readers.
#[derive(Clone)]
pub(super) struct DirectPublisher {
    pub(super) areas: Arc<crate::direct::DirectAreas>,
    pub(super) shard: u32,
    pub(super) ns: Arc<Namespace>,
}

impl DirectPublisher {
    /// Tell direct readers where block `block` of `path` (`key`, under
    /// `attr`) lives. (Clients read random ranges of multi-block objects
    /// directly and leave streams to the shard, whose read-ahead serves
    /// them.) `epoch` was read before `attr` was.
    pub(super) fn publish(&self, store: &Store, epoch: u64, path: &str, block: u64, key: &BlockKey, attr: &Attr) {
        let bs = self.ns.block_bytes(path);
        let block_len = attr.size.saturating_sub(block.saturating_mul(bs)).min(bs);
        if attr.kind != Kind::File || block_len == 0 {
            return;
        }
        let Some(until) = self.ns.fresh_for(path) else { return };
        let Some(loc) = store.location(key.hash) else { return };
        let header = stoker_proto::format::RecordHeader::for_block(key.hash, &key.bytes, &[]);
        let header = stoker_proto::format::RecordHeader { data_len: block_len as u32, ..header };
        if header.record_len() != loc.len_bytes() {
            return; // not a version 2 record of this length (an old one)
        }
        let now = stoker_proto::direct::now_ns();
        let hit = stoker_proto::direct::Hit {
            key_hash: key.hash,
            seg_id: loc.seg_id,
            offset: loc.offset_bytes(),
            record_len: loc.len_bytes(),
            data_at: header.data_start() as u32,
            block_len: block_len as u32,
            object_size: attr.size,
            valid_until_ns: until.map_or(u64::MAX, |u| now.saturating_add(u.as_nanos() as u64)),
        };
        self.areas.table.publish(self.shard, stoker_proto::direct::tag(path, block), &hit, epoch, now);
    }
}


/// At start-up, publish every block this shard holds of the files whose
/// attributes the namespace remembers, so clients read directly from the
/// first read after a restart rather than after one pass through the shard.
pub(super) async fn publish_cached(shard: Rc<Shard>) {
    let Some(p) = shard.direct.clone() else { return };
    let epoch = shard.direct_epoch();
    let shards = shard.peers.len();
    let t0 = Instant::now();
    let mut published = 0u64;
    for (i, (path, attr)) in shard.ns.known_files_under("/").into_iter().enumerate() {
        let bs = shard.ns.block_bytes(&path).max(1);
        for block in 0..attr.size.div_ceil(bs) {
            if stoker_proto::key::shard_for(&path, block, shards) != shard.id as usize {
                continue;
            }
            let key = shard.ns.block_key(&path, &attr.version, block);
            if shard.store.contains(key.hash) {
                p.publish(&shard.store, epoch, &path, block, &key, &attr);
                published += 1;
            }
        }
        if i % 1024 == 0 {
            glommio::yield_if_needed().await;
        }
    }
    tracing::info!(shard = shard.id, published, ms = t0.elapsed().as_millis() as u64, "direct-read table filled from the cache");
}
