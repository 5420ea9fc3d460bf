//! Serving one ring entry: check it against the client's area, resolve the
//! path's attribute, then the DRAM tier, the read-ahead buffer and blocks
//! waiting to be written, the store (only the asked range), and last a fetch
//! from under storage. Each step is one method below.

use super::session::SessionArea;
use super::{Fetch, Shard};
use crate::namespace::{normalise, NsError};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use stoker_proto::control::{Attr, Kind};
use stoker_proto::key::BlockKey;
use stoker_proto::ring::{SqEntry, FLAG_NO_DATA};

fn invalid(m: &str) -> NsError {
    NsError::Invalid(m.to_string())
}

/// The part of block `req.block` a request wants, for an object of `size`
/// bytes in blocks of `bs`: (block length, start, end) within the block.
fn wanted(req: &SqEntry, bs: u64, size: u64) -> (u64, usize, usize) {
    let block_start = req.block.saturating_mul(bs);
    let block_len = size.saturating_sub(block_start).min(bs);
    let start = req.off_in_block.min(block_len) as usize;
    let end = (req.off_in_block + req.len).min(block_len) as usize;
    (block_len, start, end)
}

fn is_dir(path: &str) -> NsError {
    NsError::IsDir(format!("{path}: is a directory"))
}

impl Shard {
    /// Serve one request into the client's slot: (bytes placed, object size).
    pub(super) async fn read(&self, area: &SessionArea, req: &SqEntry) -> Result<(u64, u64), NsError> {
        let t0 = Instant::now();
        let (path, bs) = self.check_request(area, req)?;
        if req.flags & FLAG_NO_DATA != 0 {
            if let Some(done) = self.preload_at_owner(&path, req, bs).await {
                return done;
            }
        }
        // Read before the attributes: a change after this voids what we publish.
        let epoch = self.direct_epoch();
        let (attr, fetched) = self.resolve(&path, req.block).await?;
        if attr.kind == Kind::Dir {
            return Err(is_dir(&path));
        }
        let (block_len, _, _) = wanted(req, bs, attr.size);
        if block_len == 0 {
            return Ok((0, attr.size));
        }
        // A prefetch asks for every block itself: nothing to read ahead.
        if attr.size > bs {
            self.read_ahead(&path, req.block, &attr, bs);
        }
        if let Some(f) = fetched {
            crate::metrics::record_read(false, t0);
            if req.flags & FLAG_NO_DATA != 0 {
                self.settle_fetched(&path, req.block, &f, epoch).await;
            }
            return Ok(self.place(area, req, bs, &f.data, f.attr.size));
        }
        let key = self.ns.block_key(&path, &attr.version, req.block);
        if let Some(data) = self.in_memory(&key) {
            crate::metrics::record_read(true, t0);
            return Ok(self.place(area, req, bs, &data, attr.size));
        }
        if let Some(served) = self.read_store(area, req, bs, &path, &key, &attr, epoch).await {
            crate::metrics::record_read(true, t0);
            return Ok(served);
        }
        // The fetch may have been started by a request that saw another
        // version; its data and attributes agree with each other, so serve by them.
        let f = self.fetch(&path, req.block, Some(&attr)).await?;
        if f.attr.kind == Kind::Dir {
            return Err(is_dir(&path));
        }
        crate::metrics::record_read(false, t0);
        if req.flags & FLAG_NO_DATA != 0 {
            self.settle_fetched(&path, req.block, &f, epoch).await;
        }
        Ok(self.place(area, req, bs, &f.data, f.attr.size))
    }

    /// A load waits until the block it fetched is on disk (`settle`).
    async fn settle_fetched(&self, path: &str, block: u64, f: &Fetch, epoch: u64) {
        if f.attr.kind == Kind::File && !f.data.is_empty() {
            let key = self.ns.block_key(path, &f.attr.version, block);
            self.settle(path, block, &key, &f.data, (epoch, f.attr.clone())).await;
        }
    }

    /// A prefetch (`stoker load`) of a block another cluster member owns:
    /// the owner fetches and keeps it, and no bytes cross the network. None
    /// when there is no cluster or this node owns the block. An owner that
    /// cannot be reached is EAGAIN, not a read here: the block is the
    /// owner's to keep, and the loader asks again once the member list has
    /// dropped the lost node (its share then has new owners).
    async fn preload_at_owner(&self, path: &str, req: &SqEntry, bs: u64) -> Option<Result<(u64, u64), NsError>> {
        let known = self.ns.cached_attr(path);
        if known.as_ref().is_some_and(|a| a.kind != Kind::File) {
            return self.cluster.as_ref().and_then(|n| n.owner_elsewhere(path, req.block)).map(|_| Err(is_dir(path)));
        }
        let (id, answer) = self.preload_at(path, req.block, known.as_ref()).await?;
        Some(match answer {
            Ok(b) => {
                let attr = Attr { kind: Kind::File, size: b.size, mtime_ns: b.mtime_ns, version: b.version };
                if known.is_none() {
                    self.ns.learned(path, &attr);
                }
                let (_, start, end) = wanted(req, bs, attr.size);
                Ok(((end - start) as u64, attr.size))
            }
            Err(e) => Err(NsError::Again(format!("{path}: block {} is owned by {id}, which could not take it now: {e}", req.block))),
        })
    }

    /// Check a request against the client's area; its path, normalised, and
    /// that path's block size.
    fn check_request(&self, area: &SessionArea, req: &SqEntry) -> Result<(String, u64), NsError> {
        if req.path_len as u64 > req.buf_len || req.path_len == 0 || req.path_len > 4096 {
            return Err(invalid("bad path length"));
        }
        // A no-data request (prefetch) copies nothing back: its slot need
        // only hold the path.
        let copies = req.flags & FLAG_NO_DATA == 0;
        if copies && req.len > req.buf_len {
            return Err(invalid("range outside the slot"));
        }
        if req.buf_off.checked_add(req.buf_len).is_none_or(|e| e > area.layout().data_bytes) {
            return Err(invalid("slot outside the shared area"));
        }
        let raw = area.read_data(req.buf_off, req.path_len as u64).ok_or_else(|| invalid("bad slot"))?;
        let path = String::from_utf8(raw).map_err(|_| invalid("path is not UTF-8"))?;
        let path = normalise(&path).ok_or_else(|| NsError::Invalid(format!("bad path {path:?}")))?;
        let bs = self.ns.block_bytes(&path);
        if req.off_in_block.saturating_add(req.len) > bs {
            return Err(invalid("range outside the block"));
        }
        Ok((path, bs))
    }

    /// The path's attributes: cached, or (for an object not seen yet) from
    /// one call that brings this block too: to under storage, or in a
    /// cluster to the block's owner, which answers with the attributes (a
    /// stat, then a read, would pay the round trip twice on every cold file).
    async fn resolve(&self, path: &str, block: u64) -> Result<(Attr, Option<Rc<Fetch>>), NsError> {
        match self.ns.cached_attr(path) {
            Some(a) => Ok((a, None)),
            None => {
                let f = self.fetch(path, block, None).await?;
                Ok((f.attr.clone(), Some(f)))
            }
        }
    }

    /// Copy the wanted part of `data` (the whole block of an object of
    /// `size`) into the client's slot: (bytes placed, object size).
    fn place(&self, area: &SessionArea, req: &SqEntry, bs: u64, data: &[u8], size: u64) -> (u64, u64) {
        let (_, start, end) = wanted(req, bs, size);
        if req.flags & FLAG_NO_DATA == 0 {
            area.write_data(req.buf_off, &data[start..end]);
            self.counters.bytes_served.fetch_add((end - start) as u64, Relaxed);
        }
        ((end - start) as u64, size)
    }

    /// The block from memory: the DRAM tier, the read-ahead buffer, or a
    /// fetched block still waiting to be written. Counted as a hit.
    pub(super) fn in_memory(&self, key: &BlockKey) -> Option<Rc<Vec<u8>>> {
        if let Some(data) = self.mem.get(key.hash, &key.bytes) {
            self.counters.hits.fetch_add(1, Relaxed);
            self.counters.mem_hits.fetch_add(1, Relaxed);
            return Some(data);
        }
        let staged = self.ahead.get(key.hash, &key.bytes).or_else(|| self.unwritten.borrow().get(&key.bytes).cloned());
        if staged.is_some() {
            self.counters.hits.fetch_add(1, Relaxed);
        }
        staged
    }

    /// Serve the request from the store, reading only the asked range (the
    /// store verifies just the sub-blocks it touches; the DRAM tier keeps
    /// whole blocks, so with it on the block is read whole). None on a miss.
    #[allow(clippy::too_many_arguments)]
    async fn read_store(
        &self,
        area: &SessionArea,
        req: &SqEntry,
        bs: u64,
        path: &str,
        key: &BlockKey,
        attr: &Attr,
        epoch: u64,
    ) -> Option<(u64, u64)> {
        let whole = self.mem.enabled();
        let (block_len, start, end) = wanted(req, bs, attr.size);
        let (roff, rlen) = if whole {
            (0, block_len)
        } else if req.flags & FLAG_NO_DATA != 0 {
            (start as u64, 0)
        } else {
            (start as u64, (end - start) as u64)
        };
        let got = self.store.get_range(key.hash, &key.bytes, block_len, roff, rlen).await;
        self.counters.device_bytes_read.store(self.store.device_bytes_read(), Relaxed);
        match got {
            Ok(Some(block)) if block.block_len() == block_len => {
                self.counters.hits.fetch_add(1, Relaxed);
                if let Some(p) = &self.direct {
                    p.publish(&self.store, epoch, path, req.block, key, attr);
                }
                if whole {
                    self.mem.insert(key.hash, &key.bytes, Rc::new(block.data().to_vec()));
                    self.counters.mem_bytes.store(self.mem.used_bytes(), Relaxed);
                    return Some(self.place(area, req, bs, block.data(), attr.size));
                }
                if req.flags & FLAG_NO_DATA == 0 {
                    area.write_data(req.buf_off, block.data());
                    self.counters.bytes_served.fetch_add(block.len() as u64, Relaxed);
                }
                Some(((end - start) as u64, attr.size))
            }
            Ok(Some(_)) => {
                // Same key, different length: cannot be the block we want.
                self.store.remove(key.hash);
                None
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(shard = self.id, error = %e, "store read failed; refetching");
                None
            }
        }
    }
}
