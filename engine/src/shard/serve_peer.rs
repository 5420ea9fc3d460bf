//! Blocks other cluster members ask this node for (docs/CLUSTER.md): from
//! memory or the store when cached, else fetched from under storage once
//! and cached here, the owner. A request for a version this node does not
//! see is refused (ESTALE): the asking node reads under storage itself.

use super::Shard;
use std::sync::atomic::Ordering::Relaxed;
use stoker_cluster::peer::{BlockRequest, Served};
use crate::namespace::NsError;
use stoker_proto::control::Kind;

impl Shard {
    /// The answer to a peer; the peer protocol's errno is chosen here.
    pub(super) async fn serve_peer(&self, req: BlockRequest) -> Served {
        match self.peer_block(&req).await {
            Ok(data) => Ok(data),
            Err(PeerRefusal::OtherVersion(path)) => Err((libc::ESTALE, format!("{path}: this node sees another version"))),
            Err(PeerRefusal::Failed(e)) => Err((e.errno(), e.to_string())),
        }
    }

    async fn peer_block(&self, req: &BlockRequest) -> Result<Vec<u8>, PeerRefusal> {
        let Some(path) = crate::namespace::normalise(&req.path) else {
            return Err(NsError::Invalid(format!("bad path {:?}", req.path)).into());
        };
        let (ns, p) = (self.ns.clone(), path.clone());
        let attr = self.on_tokio(async move { ns.stat(&p).await }).await?;
        if attr.kind != Kind::File {
            return Err(NsError::IsDir(format!("{path}: not a file")).into());
        }
        if attr.version != req.version {
            return Err(PeerRefusal::OtherVersion(path));
        }
        let bs = self.ns.block_bytes(&path);
        if req.block.saturating_mul(bs) >= attr.size {
            return Err(NsError::Invalid(format!("{path}: no block {}", req.block)).into());
        }
        let key = self.ns.block_key(&path, &attr.version, req.block);
        if let Some(data) = self.in_memory(&key) {
            return Ok(data.as_ref().clone());
        }
        if let Ok(Some(b)) = self.store.get(key.hash, &key.bytes).await {
            self.counters.hits.fetch_add(1, Relaxed);
            return Ok(b.data().to_vec());
        }
        let f = self.fetch_via(&path, req.block, Some(&attr), false).await?;
        Ok(f.data.as_ref().clone())
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
