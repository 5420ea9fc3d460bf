//! Writing fetched blocks to the store in the background (bounded by the
//! write queue; dropped while the disk is behind or caching is paused),
//! applying pins, TTLs and quotas as they land, and publishing the store's
//! numbers into the shard's counters.

use super::{Shard, ShardCounters};
use crate::store::{Store, StoreError};
use std::cmp::Reverse;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use stoker_proto::control::Attr;
use stoker_proto::key::BlockKey;

impl Shard {
    /// Append a fetched block to the store in the background; with
    /// `publish` (the epoch read before its attributes, and them), tell
    /// direct readers where it landed. Returns whether it was queued.
    pub(super) fn cache_in_background(&self, path: &str, block: u64, key: BlockKey, data: Rc<Vec<u8>>, publish: Option<(u64, Attr)>) -> bool {
        let len = data.len() as u64;
        let queued = &self.write_queue_bytes;
        if queued.get() + len > self.write_queue_bytes_max || !self.store.accepts_writes() {
            // The disk is behind, or caching is paused after a write error (a
            // full disk): serve without caching rather than queue without bound.
            self.counters.write_dropped.fetch_add(1, Relaxed);
            publish_store(&self.store, &self.counters);
            return false;
        }
        queued.set(queued.get() + len);
        self.counters.pending_write_bytes.store(queued.get(), Relaxed);
        self.unwritten.borrow_mut().insert(key.bytes.clone(), data.clone());
        let (store, counters, queued) = (self.store.clone(), self.counters.clone(), queued.clone());
        let unwritten = self.unwritten.clone();
        let written = self.written.clone();
        let quotas = self.quotas.clone();
        let mount = crate::policy::quota::mount_of(path).to_string();
        let publisher = self.direct.clone().zip(publish).map(|(p, (epoch, attr))| (p, epoch, attr, path.to_string()));
        let policy = self.policies.effective(path);
        if policy.pinned {
            self.store.set_pinned(key.hash, true);
        }
        if let Some(ttl) = policy.ttl {
            // A TTL past what an Instant can hold (a policy file edited by
            // hand) never expires rather than panicking the shard.
            if let Some(at) = Instant::now().checked_add(ttl) {
                self.expiry.borrow_mut().push(Reverse((at, key.hash)));
            }
        }
        glommio::spawn_local(async move {
            match store.put(key.hash, &key.bytes, &data).await {
                Ok(()) if quotas.applies(&mount) => {
                    let dropped = quotas.track(&store, &mount, key.hash, len);
                    counters.quota_evicted_blocks.fetch_add(dropped, Relaxed);
                }
                Ok(()) => {}
                // The store logs a write error once, when it pauses caching.
                Err(e @ (StoreError::Io(_) | StoreError::Glommio(_) | StoreError::Full(_) | StoreError::Closed)) => {
                    tracing::debug!(error = %e, "caching a block failed")
                }
                Err(e) => tracing::warn!(error = %e, "caching a block failed"),
            }
            // Freed (`stoker free`) while it was being written: drop it now,
            // with a tombstone, instead of keeping what was asked to go.
            if unwritten.borrow_mut().remove(&key.bytes).is_none() {
                store.remove(key.hash);
            } else if let Some((p, epoch, attr, path)) = publisher {
                p.publish(&store, epoch, &path, block, &key, &attr);
            }
            queued.set(queued.get() - len);
            counters.pending_write_bytes.store(queued.get(), Relaxed);
            publish_store(&store, &counters);
            for w in written.take() {
                let _ = w.send(());
            }
        })
        .detach();
        true
    }

    /// A load (a no-data request, `stoker load`) is answered once its block
    /// is on disk: a block the write queue had no room for is queued again
    /// when a write finishes, rather than dropped, so a finished load means
    /// a cached tree and the loader goes at the disk's pace. Returns at once
    /// while caching is paused (a full disk) or the block was freed meanwhile.
    pub(super) async fn settle(&self, path: &str, block: u64, key: &BlockKey, data: &Rc<Vec<u8>>, publish: (u64, Attr)) {
        let mut queued = self.store.contains(key.hash) || self.unwritten.borrow().contains_key(&key.bytes);
        loop {
            if queued && !self.unwritten.borrow().contains_key(&key.bytes) {
                return; // written (or freed, or failed: caching then pauses)
            }
            if !queued {
                if !self.store.accepts_writes() || data.is_empty() {
                    return;
                }
                if self.write_queue_bytes.get() + data.len() as u64 <= self.write_queue_bytes_max {
                    queued = self.cache_in_background(path, block, key.clone(), data.clone(), Some(publish.clone()));
                    continue;
                }
            }
            if self.write_queue_bytes.get() == 0 {
                return; // nothing in flight to finish: nothing would wake us
            }
            let (tx, rx) = futures::channel::oneshot::channel();
            self.written.borrow_mut().push(tx);
            let _ = rx.await;
        }
    }
    pub(super) fn publish(&self) {
        self.counters.mem_bytes.store(self.mem.used_bytes(), Relaxed);
        publish_store(&self.store, &self.counters);
    }
}

pub(super) fn publish_store(store: &Store, c: &ShardCounters) {
    let s = store.stats();
    c.used_bytes.store(s.used_bytes, Relaxed);
    c.blocks.store(s.blocks, Relaxed);
    c.segments.store(s.segments, Relaxed);
    c.evicted_blocks.store(s.evicted_blocks, Relaxed);
    c.reinserted_blocks.store(s.reinserted_blocks, Relaxed);
    c.corrupt_records.store(s.corrupt_records, Relaxed);
    c.device_bytes_read.store(s.device_bytes_read, Relaxed);
    c.cache_write_errors.store(s.write_errors, Relaxed);
    c.caching_paused.store(s.caching_paused as u64, Relaxed);
}
