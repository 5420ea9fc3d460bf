//! Under storage ("UFS"): where the real data lives. Everything here runs on
//! the engine's tokio runtime, never on a shard's executor.
//!
//! `Ufs` is the narrow interface the engine needs (stat with a version token,
//! ranged read, paginated list). `Guarded` wraps any implementation with a
//! per-call timeout and a bounded retry with backoff and jitter; `Throttled`
//! injects latency and a bandwidth cap so a local directory can stand in for
//! remote object storage in demos and tests.

pub mod aimd;
pub mod local;
pub mod blocking;
pub mod opendal_ufs;
pub mod throttle;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use stoker_proto::control::Attr;
use thiserror::Error;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum UfsError {
    #[error("No such file or directory")]
    NotFound,
    #[error("Is a directory")]
    IsDir,
    #[error("Not a directory")]
    NotDir,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// `retryable` is true for transient failures (resets, 5xx).
    #[error("{message}")]
    Io { message: String, retryable: bool },
    /// The store asked us to slow down (S3 `503 SlowDown`, HTTP 429):
    /// retried after a longer backoff than other transient failures.
    #[error("throttled by the store: {0}")]
    Throttled(String),
}

impl UfsError {
    pub fn errno(&self) -> i32 {
        match self {
            UfsError::NotFound => libc::ENOENT,
            UfsError::IsDir => libc::EISDIR,
            UfsError::NotDir => libc::ENOTDIR,
            UfsError::Timeout(_) => libc::ETIMEDOUT,
            UfsError::Io { .. } | UfsError::Throttled(_) => libc::EIO,
        }
    }

    fn retryable(&self) -> bool {
        matches!(self, UfsError::Timeout(_) | UfsError::Io { retryable: true, .. } | UfsError::Throttled(_))
    }
}

pub type UfsResult<T> = std::result::Result<T, UfsError>;

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub entries: Vec<(String, Attr)>,
    /// Pass back to get the next page; None when done.
    pub next: Option<String>,
}

/// An under-storage backend. Paths are relative to the mount root, `/`-separated,
/// without a leading slash ("" is the root).
pub trait Ufs: Send + Sync + 'static {
    fn stat<'a>(&'a self, rel: &'a str) -> BoxFut<'a, UfsResult<Attr>>;
    /// Bytes `[off, off+len)`, short at the end of the object.
    fn read<'a>(&'a self, rel: &'a str, off: u64, len: u64) -> BoxFut<'a, UfsResult<Vec<u8>>>;
    fn list<'a>(&'a self, rel: &'a str, token: Option<String>, max: usize)
        -> BoxFut<'a, UfsResult<ListPage>>;
    /// Store the first `len` bytes of the local file `src` as `rel` (the
    /// write path's persist, `write/`; short: an error): visible only once complete (a local directory
    /// writes a temporary file and renames it; object stores upload in
    /// parts). Default: this store cannot be written.
    fn write_file<'a>(&'a self, rel: &'a str, src: &'a std::path::Path, len: u64) -> BoxFut<'a, UfsResult<()>> {
        let _ = (rel, src, len);
        Box::pin(async move { Err(UfsError::Io { message: "this under storage cannot be written".into(), retryable: false }) })
    }
    /// Remove the file `rel` (NotFound if it is not there).
    fn delete<'a>(&'a self, rel: &'a str) -> BoxFut<'a, UfsResult<()>> {
        let _ = rel;
        Box::pin(async move { Err(UfsError::Io { message: "this under storage cannot be written".into(), retryable: false }) })
    }
    /// Move the file `from` to `to` (replacing it).
    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFut<'a, UfsResult<()>> {
        let _ = (from, to);
        Box::pin(async move { Err(UfsError::Io { message: "this under storage cannot be written".into(), retryable: false }) })
    }
    /// Make the directory `rel` (its parent exists).
    fn create_dir<'a>(&'a self, rel: &'a str) -> BoxFut<'a, UfsResult<()>> {
        let _ = rel;
        Box::pin(async move { Err(UfsError::Io { message: "this under storage cannot be written".into(), retryable: false }) })
    }
    /// Remove the empty directory `rel`.
    fn delete_dir<'a>(&'a self, rel: &'a str) -> BoxFut<'a, UfsResult<()>> {
        let _ = rel;
        Box::pin(async move { Err(UfsError::Io { message: "this under storage cannot be written".into(), retryable: false }) })
    }
    /// Attributes and bytes `[off, off+len)` together. Backends whose read
    /// returns metadata (an object GET does) answer in one round trip.
    fn read_versioned<'a>(&'a self, rel: &'a str, off: u64, len: u64) -> BoxFut<'a, UfsResult<(Attr, Vec<u8>)>> {
        Box::pin(async move {
            let attr = self.stat(rel).await?;
            if attr.kind == stoker_proto::control::Kind::Dir {
                return Err(UfsError::IsDir);
            }
            let data = self.read(rel, off, len).await?;
            Ok((attr, data))
        })
    }
}

/// Build the under storage for a mount URI.
pub fn open(uri: &str) -> Result<Arc<dyn Ufs>, String> {
    open_with(uri, &[])
}

/// Build the under storage for a mount URI with per-mount options.
///
/// `file://` is served by `LocalDir` (direct syscalls on the blocking pool;
/// measured faster than OpenDAL's fs service, docs/STORAGE.md) unless the
/// option `via=opendal` asks for OpenDAL; every other scheme goes through
/// OpenDAL (`opendal_ufs`).
pub fn open_with(uri: &str, options: &[(String, String)]) -> Result<Arc<dyn Ufs>, String> {
    let via_opendal = options.iter().any(|(k, v)| k == "via" && v == "opendal");
    let rest: Vec<(String, String)> = options.iter().filter(|(k, _)| k != "via").cloned().collect();
    if let Some((k, _)) = options.iter().find(|(k, v)| k == "via" && v != "opendal") {
        return Err(format!("mount {uri}: option {k}: expected `opendal`"));
    }
    if uri.starts_with('/') {
        return Err(format!("bad URI {uri:?}: write it as file://{uri}"));
    }
    if uri.starts_with("file://") && !via_opendal {
        if let Some((k, _)) = rest.first() {
            return Err(format!("mount {uri}: file:// takes no option {k:?} (only via=opendal)"));
        }
        return open_local(uri);
    }
    if !uri.contains("://") {
        return Err(format!("bad URI {uri:?}: expected SCHEME://..., e.g. file:///data/train or s3://bucket/prefix"));
    }
    if via_opendal && !uri.starts_with("file://") {
        return Err(format!("mount {uri}: via=opendal is only meaningful for file://"));
    }
    if uri.starts_with("file://") {
        check_local_dir(uri)?;
    }
    opendal_ufs::open(uri, &rest)
}

fn check_local_dir(uri: &str) -> Result<&str, String> {
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    if !path.starts_with('/') {
        return Err(format!("bad URI {uri:?}: file URIs need an absolute path, e.g. file:///data/train"));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("mount {uri}: {e}"))?;
    if !meta.is_dir() {
        return Err(format!("mount {uri}: not a directory"));
    }
    Ok(path)
}

fn open_local(uri: &str) -> Result<Arc<dyn Ufs>, String> {
    let path = check_local_dir(uri)?;
    Ok(Arc::new(local::LocalDir::new(path.into())))
}

/// Attempts in flight per mount unless told otherwise (OpenDAL mounts: their
/// `concurrency` option).
pub const LIMIT_DEFAULT: usize = 256;

/// Longest wait between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Shortest wait before retrying a throttled call.
const THROTTLED_BACKOFF_MIN: Duration = Duration::from_secs(1);

/// Timeout plus bounded retry with exponential backoff and jitter
/// (from 20 ms, or from 1 s after a throttling answer, doubling up to 8 s).
pub struct Guarded {
    inner: Arc<dyn Ufs>,
    timeout: Duration,
    attempts: u32,
    /// Where each call's latency (retries included) goes. Default none.
    latency: Option<Arc<crate::metrics::latency::OpLatency>>,
    /// Attempts in flight for the whole mount, cut when the store throttles.
    limit: aimd::Aimd,
}

impl Guarded {
    pub fn new(inner: Arc<dyn Ufs>, timeout: Duration, attempts: u32) -> Guarded {
        Guarded { inner, timeout, attempts: attempts.max(1), latency: None, limit: aimd::Aimd::new(LIMIT_DEFAULT) }
    }

    /// At most `n` attempts in flight for this mount (fewer while the store
    /// throttles).
    pub fn with_limit(mut self, n: usize) -> Guarded {
        self.limit = aimd::Aimd::new(n);
        self
    }

    /// Attempts allowed in flight now.
    pub fn limit(&self) -> usize {
        self.limit.limit()
    }

    /// The store itself, without timeouts or retries: the write path's
    /// persists run their own (an upload may take longer than one call's
    /// timeout, and a failing persist is retried for as long as it fails).
    pub fn inner(&self) -> &Arc<dyn Ufs> {
        &self.inner
    }

    /// Record every call's latency, by op (`metrics::names::UFS_OPS`), in `l`.
    pub fn with_latency(mut self, l: Arc<crate::metrics::latency::OpLatency>) -> Guarded {
        self.latency = Some(l);
        self
    }

    /// One call as the engine sees it: attempts, backoff and all, timed as `op`.
    async fn run<T, F>(&self, op: &'static str, call: F) -> UfsResult<T>
    where
        F: FnMut() -> BoxFut<'static, UfsResult<T>>,
    {
        let t0 = std::time::Instant::now();
        let res = self.attempts(call).await;
        if let Some(l) = &self.latency {
            l.record(op, t0.elapsed(), res.is_ok());
        }
        res
    }

    async fn attempts<T, F>(&self, mut call: F) -> UfsResult<T>
    where
        F: FnMut() -> BoxFut<'static, UfsResult<T>>,
    {
        let mut backoff = Duration::from_millis(20);
        let mut attempt = 1;
        loop {
            // Waiting for a slot counts against the attempt's timeout: a
            // mount slowed down by throttling fails calls, it never hangs them.
            let t0 = tokio::time::Instant::now();
            let Ok(permit) = tokio::time::timeout(self.timeout, self.limit.acquire()).await else {
                return Err(UfsError::Timeout(self.timeout));
            };
            let left = self.timeout.saturating_sub(t0.elapsed());
            let res = match tokio::time::timeout(left, call()).await {
                Ok(r) => r,
                Err(_) => Err(UfsError::Timeout(self.timeout)),
            };
            let outcome = match &res {
                Ok(_) => aimd::Outcome::Ok,
                Err(UfsError::Throttled(_)) => aimd::Outcome::Throttled,
                Err(_) => aimd::Outcome::Other,
            };
            self.limit.done(permit, outcome);
            match res {
                Err(e) if e.retryable() && attempt < self.attempts => {
                    if matches!(e, UfsError::Throttled(_)) {
                        // Slow down for real: a store that throttles wants
                        // fewer requests, not the same ones again at once.
                        backoff = backoff.max(THROTTLED_BACKOFF_MIN);
                    }
                    let jitter = Duration::from_micros(rand_u64() % (backoff.as_micros() as u64 + 1));
                    tracing::debug!(attempt, error = %e, "under storage call failed, retrying");
                    tokio::time::sleep(backoff / 2 + jitter).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    pub async fn stat(&self, rel: &str) -> UfsResult<Attr> {
        let rel = rel.to_string();
        let inner = self.inner.clone();
        self.run("stat", move || {
            let (inner, rel) = (inner.clone(), rel.clone());
            Box::pin(async move { inner.stat(&rel).await })
        })
        .await
    }

    pub async fn read(&self, rel: &str, off: u64, len: u64) -> UfsResult<Vec<u8>> {
        let rel = rel.to_string();
        let inner = self.inner.clone();
        self.run("read", move || {
            let (inner, rel) = (inner.clone(), rel.clone());
            Box::pin(async move { inner.read(&rel, off, len).await })
        })
        .await
    }

    pub async fn read_versioned(&self, rel: &str, off: u64, len: u64) -> UfsResult<(Attr, Vec<u8>)> {
        let rel = rel.to_string();
        let inner = self.inner.clone();
        self.run("read", move || {
            let (inner, rel) = (inner.clone(), rel.clone());
            Box::pin(async move { inner.read_versioned(&rel, off, len).await })
        })
        .await
    }

    pub async fn list(&self, rel: &str, token: Option<String>, max: usize) -> UfsResult<ListPage> {
        let rel = rel.to_string();
        let inner = self.inner.clone();
        self.run("list", move || {
            let (inner, rel, token) = (inner.clone(), rel.clone(), token.clone());
            Box::pin(async move { inner.list(&rel, token, max).await })
        })
        .await
    }
}

/// A cheap non-cryptographic random number for jitter.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails `fail_first` times with a retryable error (or a throttling
    /// answer), then answers.
    struct Flaky {
        calls: AtomicU32,
        fail_first: u32,
        throttle: bool,
    }

    impl Ufs for Flaky {
        fn stat<'a>(&'a self, _rel: &'a str) -> BoxFut<'a, UfsResult<Attr>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                if n < self.fail_first && self.throttle {
                    Err(UfsError::Throttled("SlowDown".into()))
                } else if n < self.fail_first {
                    Err(UfsError::Io { message: "reset".into(), retryable: true })
                } else {
                    Ok(Attr { kind: stoker_proto::control::Kind::File, size: 1, mtime_ns: 0, version: "v".into() })
                }
            })
        }
        fn read<'a>(&'a self, _: &'a str, _: u64, _: u64) -> BoxFut<'a, UfsResult<Vec<u8>>> {
            Box::pin(async move { std::future::pending().await })
        }
        fn list<'a>(&'a self, _: &'a str, _: Option<String>, _: usize) -> BoxFut<'a, UfsResult<ListPage>> {
            Box::pin(async move { Err(UfsError::NotFound) })
        }
    }

    #[tokio::test]
    async fn retries_are_bounded_and_timeouts_fire() {
        let flaky = Arc::new(Flaky { calls: AtomicU32::new(0), fail_first: 2, throttle: false });
        let g = Guarded::new(flaky.clone(), Duration::from_millis(50), 3);
        assert!(g.stat("a").await.is_ok());
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);

        let flaky = Arc::new(Flaky { calls: AtomicU32::new(0), fail_first: 10, throttle: false });
        let g = Guarded::new(flaky.clone(), Duration::from_millis(50), 3);
        assert!(matches!(g.stat("a").await, Err(UfsError::Io { .. })));
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3, "must stop after 3 attempts");

        // A read that never answers times out on every attempt, then gives up.
        let g = Guarded::new(flaky, Duration::from_millis(20), 2);
        assert_eq!(g.read("a", 0, 1).await, Err(UfsError::Timeout(Duration::from_millis(20))));
        // NotFound is final: one call only.
        let flaky = Arc::new(Flaky { calls: AtomicU32::new(0), fail_first: 0, throttle: false });
        let g = Guarded::new(flaky.clone(), Duration::from_millis(50), 3);
        assert_eq!(g.list("", None, 10).await.unwrap_err(), UfsError::NotFound);
    }

    /// Paused clock: the waits are the backoff alone, measured exactly.
    #[tokio::test(start_paused = true)]
    async fn throttling_backs_off_longer_and_stays_bounded() {
        let t0 = tokio::time::Instant::now();
        let reset = Arc::new(Flaky { calls: AtomicU32::new(0), fail_first: 2, throttle: false });
        assert!(Guarded::new(reset, Duration::from_secs(5), 3).stat("a").await.is_ok());
        let plain = t0.elapsed();
        assert!(plain < Duration::from_millis(200), "plain retries waited {plain:?}");

        let t0 = tokio::time::Instant::now();
        let slow = Arc::new(Flaky { calls: AtomicU32::new(0), fail_first: 2, throttle: true });
        assert!(Guarded::new(slow.clone(), Duration::from_secs(5), 3).stat("a").await.is_ok());
        let throttled = t0.elapsed();
        // Two waits of at least half of 1 s and of 2 s.
        assert!(throttled >= Duration::from_millis(1500), "throttled retries waited only {throttled:?}");
        assert_eq!(slow.calls.load(Ordering::SeqCst), 3);

        // Still bounded: a store that always throttles gets an EIO-class error.
        let always = Arc::new(Flaky { calls: AtomicU32::new(0), fail_first: 100, throttle: true });
        let e = Guarded::new(always.clone(), Duration::from_secs(5), 3).stat("a").await.unwrap_err();
        assert_eq!((e.errno(), always.calls.load(Ordering::SeqCst)), (libc::EIO, 3));
        assert!(e.to_string().contains("throttled"), "{e}");
    }

    /// A store that throttles whenever more than `cap` calls are under way.
    struct Capped {
        cap: u32,
        inflight: AtomicU32,
        peak: AtomicU32,
        throttled: AtomicU32,
    }

    impl Ufs for Capped {
        fn stat<'a>(&'a self, _rel: &'a str) -> BoxFut<'a, UfsResult<Attr>> {
            Box::pin(async move {
                let n = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
                self.peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                self.inflight.fetch_sub(1, Ordering::SeqCst);
                if n > self.cap {
                    self.throttled.fetch_add(1, Ordering::SeqCst);
                    return Err(UfsError::Throttled("SlowDown".into()));
                }
                Ok(Attr { kind: stoker_proto::control::Kind::File, size: 1, mtime_ns: 0, version: "v".into() })
            })
        }
        fn read<'a>(&'a self, _: &'a str, _: u64, _: u64) -> BoxFut<'a, UfsResult<Vec<u8>>> {
            Box::pin(async move { Err(UfsError::NotFound) })
        }
        fn list<'a>(&'a self, _: &'a str, _: Option<String>, _: usize) -> BoxFut<'a, UfsResult<ListPage>> {
            Box::pin(async move { Err(UfsError::NotFound) })
        }
    }

    /// Bursts of 64 callers against a store that takes 4: the throttling
    /// lowers the whole mount's limit (once per round, halving), so each
    /// burst sends fewer requests over the store's capacity than the last
    /// — with per-call backoff alone every burst would send 64 at once.
    #[tokio::test(start_paused = true)]
    async fn a_throttling_store_slows_the_whole_mount_down() {
        let store = Arc::new(Capped { cap: 4, inflight: AtomicU32::new(0), peak: AtomicU32::new(0), throttled: AtomicU32::new(0) });
        let g = Guarded::new(store.clone(), Duration::from_secs(30), 8).with_limit(256);
        let mut peaks = Vec::new();
        let mut throttled = Vec::new();
        for _ in 0..6 {
            store.peak.store(0, Ordering::SeqCst);
            let before = store.throttled.load(Ordering::SeqCst);
            let got = futures::future::join_all((0..64).map(|_| g.stat("a"))).await;
            assert!(got.iter().all(|r| r.is_ok()), "calls failed although retries remained");
            peaks.push(store.peak.load(Ordering::SeqCst));
            throttled.push(store.throttled.load(Ordering::SeqCst) - before);
        }
        assert_eq!(peaks[0], 64);
        assert!(g.limit() < 64, "the throttling did not lower the mount's limit");
        assert!(peaks[5] <= 16 && throttled[5] * 4 < throttled[0], "peaks {peaks:?}, throttled {throttled:?}");
    }
}
