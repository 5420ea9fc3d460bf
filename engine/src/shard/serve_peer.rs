//! Blocks other cluster members ask this node for (docs/CLUSTER.md): from
//! memory or the store when cached, else fetched from under storage once
//! and cached here, the owner. A request for a version this node does not
//! see is refused (ESTALE): the asking node reads under storage itself.

use super::Shard;
use crate::namespace::NsError;
use std::sync::atomic::Ordering::Relaxed;
use stoker_cluster::peer::{BlockRequest, PeerBlock, Served};
use stoker_proto::control::{Attr, Kind};

impl Shard {
    /// The answer to a peer; the peer protocol's errno is chosen here.
    pub(super) async fn serve_peer(&self, req: BlockRequest) -> Served {
        match self.peer_block(&req).await {
            Ok((attr, data)) => Ok(PeerBlock { size: attr.size, mtime_ns: attr.mtime_ns, version: attr.version, data }),
            Err(PeerRefusal::OtherVersion(path)) => Err((libc::ESTALE, format!("{path}: this node sees another version"))),
            Err(PeerRefusal::Failed(e)) => Err((e.errno(), e.to_string())),
        }
    }

    /// The file's attributes as this node sees them, and the block's bytes
    /// (none for a preload, or for a block past the end of the file).
    async fn peer_block(&self, req: &BlockRequest) -> Result<(Attr, Vec<u8>), PeerRefusal> {
        let Some(path) = crate::namespace::normalise(&req.path) else {
            return Err(NsError::Invalid(format!("bad path {:?}", req.path)).into());
        };
        let check = |attr: &Attr| {
            if attr.kind != Kind::File {
                return Err(PeerRefusal::Failed(NsError::IsDir(format!("{path}: not a file"))));
            }
            if !req.version.is_empty() && attr.version != req.version {
                return Err(PeerRefusal::OtherVersion(path.clone()));
            }
            Ok(())
        };
        let Some(attr) = self.ns.cached_attr(&path) else {
            // Not seen here yet (or due a re-check): one under-storage call
            // brings the attributes and the block, which is then kept here.
            let f = self.fetch_via(&path, req.block, None, false).await?;
            check(&f.attr)?;
            let data = if req.preload { Vec::new() } else { f.data.as_ref().clone() };
            return Ok((f.attr.clone(), data));
        };
        check(&attr)?;
        let bs = self.ns.block_bytes(&path);
        if req.block.saturating_mul(bs) >= attr.size {
            return Ok((attr, Vec::new()));
        }
        let key = self.ns.block_key(&path, &attr.version, req.block);
        if req.preload && (self.store.contains(key.hash) || self.unwritten.borrow().contains_key(&key.bytes)) {
            self.counters.hits.fetch_add(1, Relaxed);
            return Ok((attr, Vec::new()));
        }
        if let Some(data) = self.in_memory(&key) {
            return Ok((attr, if req.preload { Vec::new() } else { data.as_ref().clone() }));
        }
        if !req.preload {
            if let Ok(Some(b)) = self.store.get(key.hash, &key.bytes).await {
                self.counters.hits.fetch_add(1, Relaxed);
                return Ok((attr, b.data().to_vec()));
            }
        }
        let f = self.fetch_via(&path, req.block, Some(&attr), false).await?;
        let data = if req.preload { Vec::new() } else { f.data.as_ref().clone() };
        Ok((attr, data))
    }
}

/// Why a peer gets no block.
enum PeerRefusal {
    /// This node sees another version of the file than the asker.
    OtherVersion(String),
    Failed(NsError),
}

impl From<NsError> for PeerRefusal {
    fn from(e: NsError) -> PeerRefusal {
        PeerRefusal::Failed(e)
    }
}
