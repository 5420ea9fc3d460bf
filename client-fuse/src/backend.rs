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
    /// Start writing a new file (the write path; by default the backend is
    /// read-only and every write call answers EROFS).
    fn create(&self, path: &str, mode: u32, uid: u32, gid: u32) -> stoker_client::Result<u64> {
        let _ = (mode, uid, gid);
        Err(read_only(path))
    }
    fn write_at(&self, handle: u64, off: u64, data: &[u8]) -> stoker_client::Result<()> {
        let _ = (handle, off, data);
        Err(read_only("write"))
    }
    fn fsync_write(&self, handle: u64) -> stoker_client::Result<()> {
        let _ = handle;
        Err(read_only("fsync"))
    }
    fn close_write(&self, handle: u64) -> stoker_client::Result<Attr> {
        let _ = handle;
        Err(read_only("close"))
    }
    fn abort_write(&self, handle: u64) -> stoker_client::Result<()> {
        let _ = handle;
        Err(read_only("abort"))
    }
    fn unlink(&self, path: &str) -> stoker_client::Result<()> {
        Err(read_only(path))
    }
    fn mkdir(&self, path: &str) -> stoker_client::Result<()> {
        Err(read_only(path))
    }
    fn rename(&self, from: &str, to: &str) -> stoker_client::Result<()> {
        let _ = to;
        Err(read_only(from))
    }
    fn rmdir(&self, path: &str) -> stoker_client::Result<()> {
        Err(read_only(path))
    }
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

fn read_only(what: &str) -> stoker_client::Error {
    stoker_client::Error::new(libc::EROFS, format!("{what}: read-only"))
}

impl Backend for stoker_client::Client {
    fn create(&self, path: &str, mode: u32, uid: u32, gid: u32) -> stoker_client::Result<u64> {
        stoker_client::Client::create(self, path, mode, uid, gid)
    }
    fn write_at(&self, handle: u64, off: u64, data: &[u8]) -> stoker_client::Result<()> {
        stoker_client::Client::write_at(self, handle, off, data)
    }
    fn fsync_write(&self, handle: u64) -> stoker_client::Result<()> {
        stoker_client::Client::fsync_write(self, handle)
    }
    fn close_write(&self, handle: u64) -> stoker_client::Result<Attr> {
        stoker_client::Client::close_write(self, handle)
    }
    fn abort_write(&self, handle: u64) -> stoker_client::Result<()> {
        stoker_client::Client::abort_write(self, handle)
    }
    fn unlink(&self, path: &str) -> stoker_client::Result<()> {
        stoker_client::Client::unlink(self, path)
    }
    fn mkdir(&self, path: &str) -> stoker_client::Result<()> {
        stoker_client::Client::mkdir(self, path)
    }
    fn rename(&self, from: &str, to: &str) -> stoker_client::Result<()> {
        stoker_client::Client::rename(self, from, to)
    }
    fn rmdir(&self, path: &str) -> stoker_client::Result<()> {
        stoker_client::Client::rmdir(self, path)
    }

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
    fn create(&self, path: &str, mode: u32, uid: u32, gid: u32) -> stoker_client::Result<u64> {
        (**self).create(path, mode, uid, gid)
    }
    fn write_at(&self, handle: u64, off: u64, data: &[u8]) -> stoker_client::Result<()> {
        (**self).write_at(handle, off, data)
    }
    fn fsync_write(&self, handle: u64) -> stoker_client::Result<()> {
        (**self).fsync_write(handle)
    }
    fn close_write(&self, handle: u64) -> stoker_client::Result<Attr> {
        (**self).close_write(handle)
    }
    fn abort_write(&self, handle: u64) -> stoker_client::Result<()> {
        (**self).abort_write(handle)
    }
    fn unlink(&self, path: &str) -> stoker_client::Result<()> {
        (**self).unlink(path)
    }
    fn mkdir(&self, path: &str) -> stoker_client::Result<()> {
        (**self).mkdir(path)
    }
    fn rename(&self, from: &str, to: &str) -> stoker_client::Result<()> {
        (**self).rename(from, to)
    }
    fn rmdir(&self, path: &str) -> stoker_client::Result<()> {
        (**self).rmdir(path)
    }
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
