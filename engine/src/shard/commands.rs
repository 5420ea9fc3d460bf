//! Commands from the control plane (pin, free, count, TTL, quota tracking,
//! read-ahead from other shards), applied in arrival order, and TTL expiry.

use super::{Shard, READAHEAD_INFLIGHT_MAX};
use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use std::cmp::Reverse;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use stoker_proto::control::Attr;

/// Commands from the control plane to a shard. Each carries block key hashes
/// this shard owns; a reply (where there is one) counts the blocks affected.
/// Dropping a command (shard gone) drops its reply sender: the caller sees a
/// cancelled reply and reports the shard as unavailable.
pub enum ShardCmd {
    /// Keep (or release) these blocks through reclaims.
    Pin { keys: Vec<u64>, pinned: bool, reply: oneshot::Sender<u64> },
    /// Drop these blocks now.
    Remove { keys: Vec<u64>, reply: oneshot::Sender<u64> },
    /// How many of these blocks are cached.
    Count { keys: Vec<u64>, reply: oneshot::Sender<u64> },
    /// Drop these blocks once `after` has passed (a TTL).
    Expire { keys: Vec<u64>, after: std::time::Duration },
    /// Count these (key hash, length) blocks against a mount's quota, if cached (at start-up).
    Track { mount: String, blocks: Vec<(u64, u64)> },
    /// Fetch this block ahead of a sequential reader, unless cached or on its way.
    /// With `from_cache`, a cached block is read from its segment into the
    /// shard's read-ahead buffer; without, only a block not cached is fetched.
    Prefetch { path: String, block: u64, attr: Attr, from_cache: bool },
    /// A block another cluster member asked this node for (it owns it).
    PeerRead { req: stoker_cluster::peer::BlockRequest, reply: oneshot::Sender<stoker_cluster::peer::Served> },
}

/// Apply control-plane commands in arrival order.
pub(super) async fn commands(shard: Rc<Shard>, mut cmds: mpsc::UnboundedReceiver<ShardCmd>) {
    while let Some(cmd) = cmds.next().await {
        match cmd {
            ShardCmd::Pin { keys, pinned, reply } => {
                for k in &keys {
                    shard.store.set_pinned(*k, pinned);
                }
                let _ = reply.send(keys.iter().filter(|k| shard.store.contains(**k)).count() as u64);
            }
            ShardCmd::Remove { keys, reply } => {
                for k in &keys {
                    shard.mem.remove(*k);
                    shard.ahead.remove(*k);
                }
                // Blocks still on their way to the store: not served from
                // memory any more, and dropped again once written (writeback.rs).
                let set: std::collections::HashSet<u64> = keys.iter().copied().collect();
                shard.unwritten.borrow_mut().retain(|bytes, _| !set.contains(&stoker_proto::key::BlockKey::hash_of(bytes)));
                let n = keys.iter().filter(|k| shard.store.remove(**k)).count() as u64;
                for k in &keys {
                    shard.store.set_pinned(*k, false);
                }
                // Freed blocks are read through the engine again.
                shard.void_direct();
                shard.publish();
                let _ = reply.send(n);
            }
            ShardCmd::Count { keys, reply } => {
                let _ = reply.send(keys.iter().filter(|k| shard.store.contains(**k)).count() as u64);
            }
            ShardCmd::Track { mount, blocks } => {
                for (k, len) in blocks.into_iter().filter(|(k, _)| shard.store.contains(*k)) {
                    let dropped = shard.quotas.track(&shard.store, &mount, k, len);
                    shard.counters.quota_evicted_blocks.fetch_add(dropped, Relaxed);
                }
                shard.publish();
            }
            ShardCmd::PeerRead { req, reply } => {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    let _ = reply.send(shard.serve_peer(req).await);
                })
                .detach();
            }
            ShardCmd::Prefetch { path, block, attr, from_cache } => {
                let key = shard.ns.block_key(&path, &attr.version, block);
                if shard.store.contains(key.hash) {
                    // Cached: read it from the segment ahead of the reader.
                    if from_cache {
                        shard.stage(key, &path, block, &attr);
                    }
                    continue;
                }
                if shard.has_or_fetching(&path, block, &attr) {
                    continue;
                }
                // A disk behind on writes would drop what is fetched ahead.
                if shard.readahead_inflight.get() >= READAHEAD_INFLIGHT_MAX
                    || shard.write_queue_bytes.get() > shard.write_queue_bytes_max / 2
                {
                    shard.counters.readahead_dropped.fetch_add(1, Relaxed);
                    continue;
                }
                shard.readahead_inflight.set(shard.readahead_inflight.get() + 1);
                shard.counters.readahead_blocks.fetch_add(1, Relaxed);
                let s = shard.clone();
                glommio::spawn_local(async move {
                    // Another member's block: its owner fetches it ahead
                    // (no bytes come back; the read then hits there),
                    // unless this mount keeps its own copies of such blocks.
                    let at_owner = match s.ns.peer_copy(&path) {
                        true => None,
                        false => s.preload_at(&path, block, Some(&attr)).await,
                    };
                    match at_owner {
                        Some((_, Ok(_))) => {}
                        Some((owner, Err(e))) => tracing::debug!(shard = s.id, path, block, owner, error = %e, "read-ahead at the owner failed"),
                        None => {
                            if let Err(e) = s.fetch(&path, block, Some(&attr)).await {
                                tracing::debug!(shard = s.id, path, block, error = %e, "read-ahead failed");
                            }
                        }
                    }
                    s.readahead_inflight.set(s.readahead_inflight.get() - 1);
                })
                .detach();
            }
            ShardCmd::Expire { keys, after } => {
                let Some(at) = Instant::now().checked_add(after) else { continue };
                let mut heap = shard.expiry.borrow_mut();
                heap.extend(keys.into_iter().map(|k| Reverse((at, k))));
            }
        }
    }
}


/// Drop blocks whose TTL has passed, and mark the blocks direct readers
/// read as read; twice a second.
pub(super) async fn expire_forever(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(std::time::Duration::from_millis(500)).await;
        if let Some(p) = &shard.direct {
            let (table, id) = (&p.areas.table, shard.id);
            p.areas.feedback.sweep(id, |slot| {
                if let Some((key_hash, seg_id, offset)) = table.entry_place(id, slot) {
                    shard.store.mark_read(key_hash, seg_id, offset);
                }
            });
        }
        let now = Instant::now();
        let mut dropped = 0;
        loop {
            let due = matches!(shard.expiry.borrow().peek(), Some(Reverse((at, _))) if *at <= now);
            if !due {
                break;
            }
            let Some(Reverse((_, key))) = shard.expiry.borrow_mut().pop() else { break };
            shard.mem.remove(key);
            shard.ahead.remove(key);
            if shard.store.remove(key) {
                dropped += 1;
            }
        }
        if dropped > 0 {
            shard.void_direct();
            shard.counters.expired_blocks.fetch_add(dropped, Relaxed);
            shard.publish();
            tracing::debug!(shard = shard.id, dropped, "TTL expired blocks");
        }
    }
}
