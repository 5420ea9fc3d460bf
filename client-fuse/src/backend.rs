//! What the filesystem needs from the engine, as a trait: `stoker_client::Client`
//! implements it; tests implement it over an in-memory tree.

use stoker_proto::control::{Attr, DirEntry};

/// The engine calls the filesystem makes. Every call is bounded in time by
/// the implementation (the client's request timeout).
pub trait Backend: Send + Sync + 'static {
    fn stat(&self, path: &str) -> stoker_client::Result<Attr>;
    /// Entries of a directory, sorted by name.
    fn list(&self, path: &str) -> stoker_client::Result<Vec<DirEntry>>;
    /// Read into `buf` at `off`; returns the bytes read (short at EOF).
    fn read_into(&self, path: &str, off: u64, buf: &mut [u8]) -> stoker_client::Result<usize>;
    /// (capacity bytes, used bytes) of the cache, for statfs.
    fn usage(&self) -> stoker_client::Result<(u64, u64)>;
    /// Read `len` bytes at `off` and hand them to `done` when they are
    /// there, perhaps on another thread. By default a plain `read_into`.
    fn read_async(&self, path: &str, off: u64, len: usize, done: stoker_client::ReadDone) {
        let mut buf = vec![0u8; len];
        match self.read_into(path, off, &mut buf) {
            Ok(n) => done(Ok(&buf[..n])),
            Err(e) => done(Err(e)),
        }
    }
}

impl Backend for stoker_client::Client {
    fn stat(&self, path: &str) -> stoker_client::Result<Attr> {
        stoker_client::Client::stat(self, path)
    }

    fn list(&self, path: &str) -> stoker_client::Result<Vec<DirEntry>> {
        stoker_client::Client::list(self, path)
    }

    fn read_into(&self, path: &str, off: u64, buf: &mut [u8]) -> stoker_client::Result<usize> {
        stoker_client::Client::read_into(self, path, off, buf)
    }

    fn usage(&self) -> stoker_client::Result<(u64, u64)> {
        let s = self.engine_stats()?;
        Ok((s.capacity_bytes, s.used_bytes))
    }

    fn read_async(&self, path: &str, off: u64, len: usize, done: stoker_client::ReadDone) {
        stoker_client::Client::read_async(self, path, off, len as u64, done)
    }
}

impl<B: Backend> Backend for std::sync::Arc<B> {
    fn stat(&self, path: &str) -> stoker_client::Result<Attr> {
        (**self).stat(path)
    }

    fn list(&self, path: &str) -> stoker_client::Result<Vec<DirEntry>> {
        (**self).list(path)
    }

    fn read_into(&self, path: &str, off: u64, buf: &mut [u8]) -> stoker_client::Result<usize> {
        (**self).read_into(path, off, buf)
    }

    fn usage(&self) -> stoker_client::Result<(u64, u64)> {
        (**self).usage()
    }

    fn read_async(&self, path: &str, off: u64, len: usize, done: stoker_client::ReadDone) {
        (**self).read_async(path, off, len, done)
    }
}
