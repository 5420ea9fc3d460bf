//! Blocks other cluster members ask this node for (docs/CLUSTER.md): from
//! memory or the store when cached, else fetched from under storage once
//! and cached here, the owner. A request for a version this node does not
//! see is refused (ESTALE): the asking node reads under storage itself.

use super::Shard;
use std::sync::atomic::Ordering::Relaxed;
use stoker_cluster::peer::{BlockRequest, Served};
use stoker_proto::control::Kind;

impl Shard {
    pub(super) async fn serve_peer(&self, req: BlockRequest) -> Served {
        let Some(path) = crate::namespace::normalise(&req.path) else {
            return Err((libc::EINVAL, format!("bad path {:?}", req.path)));
        };
        let (ns, p) = (self.ns.clone(), path.clone());
        let attr = self.on_tokio(async move { ns.stat(&p).await }).await.map_err(|e| (e.errno, e.message.clone()))?;
        if attr.kind != Kind::File {
            return Err((libc::EISDIR, format!("{path}: not a file")));
        }
        if attr.version != req.version {
            return Err((libc::ESTALE, format!("{path}: this node sees another version")));
        }
        let bs = self.ns.block_bytes(&path);
        if req.block.saturating_mul(bs) >= attr.size {
            return Err((libc::EINVAL, format!("{path}: no block {}", req.block)));
        }
        let key = self.ns.block_key(&path, &attr.version, req.block);
        if let Some(data) = self.in_memory(&key) {
            return Ok(data.as_ref().clone());
        }
        if let Ok(Some(b)) = self.store.get(key.hash, &key.bytes).await {
            self.counters.hits.fetch_add(1, Relaxed);
            return Ok(b.data().to_vec());
        }
        let f = self.fetch_via(&path, req.block, Some(&attr), false).await.map_err(|e| (e.errno, e.message.clone()))?;
        Ok(f.data.as_ref().clone())
    }
}
