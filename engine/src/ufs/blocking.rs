//! A blocking handle on an OpenDAL store, for tools and tests: uploads,
//! out-of-band rewrites and deletes, and a direct reader to compare stoker
//! against. Never used on the engine's data path (which is async, `Ufs`).

use super::opendal_ufs;
use super::{Ufs, UfsError, UfsResult};
use stoker_proto::control::Attr;

pub struct BlockingStore {
    rt: tokio::runtime::Runtime,
    op: opendal::Operator,
    ufs: std::sync::Arc<dyn Ufs>,
}

fn io(e: opendal::Error) -> UfsError {
    UfsError::Io { message: format!("{}: {}", e.kind(), e.message()), retryable: false }
}

impl BlockingStore {
    /// `uri` and `options` as for a mount (`s3://bucket/prefix`, endpoint=…).
    /// `threads` runtime workers serve concurrent callers.
    pub fn open(uri: &str, options: &[(String, String)], threads: usize) -> Result<BlockingStore, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("stoker-store-tool")
            .enable_all()
            .build()
            .map_err(|e| format!("starting runtime: {e}"))?;
        let (op, _) = opendal_ufs::operator(uri, options)?;
        let ufs = opendal_ufs::open(uri, options)?;
        Ok(BlockingStore { rt, op, ufs })
    }

    pub fn put(&self, rel: &str, data: Vec<u8>) -> UfsResult<()> {
        self.rt.block_on(async { self.op.write(rel, data).await.map(|_| ()).map_err(io) })
    }

    /// Upload many objects, `concurrent` at a time.
    pub fn put_many(&self, items: Vec<(String, Vec<u8>)>, concurrent: usize) -> UfsResult<()> {
        use futures::StreamExt;
        self.rt.block_on(async {
            let results: Vec<UfsResult<()>> = futures::stream::iter(items)
                .map(|(rel, data)| async move { self.op.write(&rel, data).await.map(|_| ()).map_err(io) })
                .buffer_unordered(concurrent.max(1))
                .collect()
                .await;
            results.into_iter().collect()
        })
    }

    pub fn delete(&self, rel: &str) -> UfsResult<()> {
        self.rt.block_on(async { self.op.delete(rel).await.map_err(io) })
    }

    /// Whole object through the same `Ufs` code the engine uses.
    pub fn read_all(&self, rel: &str) -> UfsResult<(Attr, Vec<u8>)> {
        self.rt.block_on(async { self.ufs.read_versioned(rel, 0, u64::MAX >> 1).await })
    }

    pub fn stat(&self, rel: &str) -> UfsResult<Attr> {
        self.rt.block_on(async { self.ufs.stat(rel).await })
    }

    /// Every entry of a directory, page by page.
    pub fn list_all(&self, rel: &str) -> UfsResult<Vec<(String, Attr)>> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let page = self.ufs.list(rel, token, 1000).await?;
                out.extend(page.entries);
                match page.next {
                    Some(t) => token = Some(t),
                    None => return Ok(out),
                }
            }
        })
    }

    /// Read every path whole with `threads` readers in flight; returns the
    /// bytes read. The direct-to-store baseline for benchmarks.
    pub fn read_parallel(&self, rels: &[String], threads: usize) -> UfsResult<u64> {
        use futures::StreamExt;
        self.rt.block_on(async {
            let mut total = 0u64;
            let mut s = futures::stream::iter(rels)
                .map(|rel| async move { self.ufs.read_versioned(rel, 0, u64::MAX >> 1).await.map(|(_, d)| d.len() as u64) })
                .buffer_unordered(threads.max(1));
            while let Some(r) = s.next().await {
                total += r?;
            }
            Ok(total)
        })
    }
}
