//! Fetching a block from under storage once, however many readers (and
//! read-aheads) want it at the same time; the block is then written back in
//! the background (`writeback.rs`). Under-storage calls run on tokio.

use super::{Fetch, Fetched, Shard};
use crate::namespace::NsError;
use futures::channel::oneshot;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use stoker_cluster::peer::PeerBlock;
use stoker_proto::control::{Attr, Kind};
use stoker_proto::key::BlockKey;

/// The in-flight fetch table's key: (path, block) whatever the version, as a
/// fetch brings the attributes it read under, so every waiter gets a
/// consistent answer.
pub(super) fn flight_key(path: &str, block: u64) -> Vec<u8> {
    BlockKey::new(path, "", block).bytes
}


impl Shard {
    /// Fetch block `block` of `path` from under storage once, however many
    /// ask for it at the same time. With `attr` unknown, the attributes come
    /// back with the data. The block is then cached in the background.
    pub(super) async fn fetch(&self, path: &str, block: u64, attr: Option<&Attr>) -> Fetched {
        self.fetch_via(path, block, attr, true).await
    }

    /// `fetch`; with `ask_owner`, a block another cluster member owns is
    /// asked of it first (not cached here: it is the owner's to keep), and
    /// read from under storage only if the owner cannot give it. A fetch
    /// for a peer never asks on, so two nodes with different member lists
    /// cannot send a block back and forth.
    pub(super) async fn fetch_via(&self, path: &str, block: u64, attr: Option<&Attr>, ask_owner: bool) -> Fetched {
        let epoch = self.direct_epoch();
        let flight_key = flight_key(path, block);
        let waiter = {
            let mut inflight = self.inflight.borrow_mut();
            match inflight.get_mut(&flight_key) {
                Some(waiters) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Some(rx)
                }
                None => {
                    inflight.insert(flight_key.clone(), Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = waiter {
            // Joining a fetch already under way (another reader's, or a
            // prefetch) costs no under-storage call: it counts as a hit.
            self.counters.hits.fetch_add(1, Relaxed);
            return rx.await.unwrap_or_else(|_| Err(NsError::Engine(format!("{path}: fetch abandoned"))));
        }
        self.counters.misses.fetch_add(1, Relaxed);
        let from_owner = match ask_owner {
            true => self.fetch_from_owner(path, block, attr).await,
            false => None,
        };
        let from_peer = from_owner.is_some();
        let res = match from_owner {
            Some(f) => Ok(f),
            None => self.fetch_from_ufs(path, block, attr.cloned()).await,
        };
        let waiters = self.inflight.borrow_mut().remove(&flight_key).unwrap_or_default();
        for w in waiters {
            let _ = w.send(res.clone());
        }
        // A block from its owner is the owner's to keep, unless this mount
        // keeps peer copies.
        if let (Ok(f), false) = (&res, from_peer && !self.ns.peer_copy(path)) {
            if !from_peer {
                self.counters.ufs_bytes_read.fetch_add(f.data.len() as u64, Relaxed);
            }
            let key = self.ns.block_key(path, &f.attr.version, block);
            let known = self.store.contains(key.hash) || self.unwritten.borrow().contains_key(&key.bytes);
            if f.attr.kind == Kind::File && !f.data.is_empty() && !known {
                self.mem.insert(key.hash, &key.bytes, f.data.clone());
                self.counters.mem_bytes.store(self.mem.used_bytes(), Relaxed);
                self.cache_in_background(path, block, key, f.data.clone(), Some((epoch, f.attr.clone())));
            }
        }
        res
    }
    /// Ask the cluster member that owns block `block` of `path` to fetch and
    /// keep it, with no bytes sent back: (owner id, its answer). None when
    /// there is no cluster or this node owns the block.
    pub(super) async fn preload_at(&self, path: &str, block: u64, attr: Option<&Attr>) -> Option<(String, Result<PeerBlock, String>)> {
        let node = self.cluster.as_ref()?;
        let owner = node.owner_elsewhere(path, block)?;
        let version = attr.map(|a| a.version.clone()).unwrap_or_default();
        let ask = stoker_cluster::peer::BlockRequest { path: path.to_string(), version, block, preload: true };
        let (n, id) = (node.clone(), owner.id.clone());
        let answer = self.on_tokio(async move { Ok(n.ask(&owner, ask).await) }).await.unwrap_or_else(|e| Err(e.to_string()));
        Some((id, answer))
    }

    /// Block `block` of `path` from the cluster member that owns it; None
    /// when there is no cluster, this node owns it, or the owner could not
    /// give it (counted as a fallback). With `attr` unknown, the owner's
    /// answer brings the file's attributes, and they are cached here.
    async fn fetch_from_owner(&self, path: &str, block: u64, attr: Option<&Attr>) -> Option<Rc<Fetch>> {
        let node = self.cluster.as_ref()?;
        if attr.is_some_and(|a| a.kind != Kind::File) {
            return None;
        }
        let owner = node.owner_elsewhere(path, block)?;
        let version = attr.map(|a| a.version.clone()).unwrap_or_default();
        let learn = version.is_empty();
        let req = stoker_cluster::peer::BlockRequest { path: path.to_string(), version, block, preload: false };
        let n = node.clone();
        let Ok(Ok(b)) = self.on_tokio(async move { Ok(n.ask(&owner, req).await) }).await else {
            node.fell_back();
            return None;
        };
        let attr = match attr {
            Some(a) => a.clone(),
            None => Attr { kind: Kind::File, size: b.size, mtime_ns: b.mtime_ns, version: b.version },
        };
        let bs = self.ns.block_bytes(path);
        let expected = attr.size.saturating_sub(block.saturating_mul(bs)).min(bs);
        if b.data.len() as u64 != expected {
            node.fell_back();
            return None;
        }
        if learn {
            self.ns.learned(path, &attr);
        }
        Some(Rc::new(Fetch { attr, data: Rc::new(b.data) }))
    }

    async fn fetch_from_ufs(&self, path: &str, block: u64, attr: Option<Attr>) -> Fetched {
        let bs = self.ns.block_bytes(path);
        let off = block.saturating_mul(bs);
        let (ns, p) = (self.ns.clone(), path.to_string());
        let known = attr.is_some();
        let (attr, data) = self
            .on_tokio(async move {
                let res = match attr {
                    Some(a) => {
                        let len = a.size.saturating_sub(off).min(bs);
                        ns.read(&p, off, len).await.map(|d| (a, d))
                    }
                    None => ns.read_versioned(&p, off, bs).await,
                };
                res.map_err(|e| NsError::Ufs { errno: e.errno(), message: format!("{p}: under storage: {e}") })
            })
            .await?;
        let expected = attr.size.saturating_sub(off).min(bs);
        if attr.kind == Kind::File && data.len() as u64 != expected {
            // The object changed under us: forget its attribute so the next
            // read sees the new version, and fail this one cleanly.
            self.ns.invalidate(path);
            return Err(NsError::Engine(format!(
                    "{path}: object changed while reading (got {} of {expected} bytes{})",
                    data.len(),
                    if known { "" } else { " with its attributes" }
                ),
            ));
        }
        Ok(Rc::new(Fetch { attr, data: Rc::new(data) }))
    }
    /// Run a future on the tokio runtime and await its result here.
    pub(super) async fn on_tokio<T: Send + 'static>(&self, f: impl Future<Output = Result<T, NsError>> + Send + 'static) -> Result<T, NsError> {
        let (tx, rx) = oneshot::channel();
        self.rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.await.unwrap_or_else(|_| Err(NsError::Engine("engine is shutting down".into())))
    }
}
