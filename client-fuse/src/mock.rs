//! An in-memory namespace behind the [`Backend`] trait, for tests of the
//! filesystem logic without an engine or FUSE.

use crate::backend::Backend;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use stoker_client::{Error, Kind, Result};
use stoker_proto::control::{Attr, DirEntry};

#[derive(Default)]
pub struct MockBackend {
    /// path -> (attr, bytes); directories have empty bytes.
    pub tree: Mutex<BTreeMap<String, (Attr, Vec<u8>)>>,
    pub stats: AtomicU64,
    pub lists: AtomicU64,
    pub reads: AtomicU64,
    /// errno every read fails with, 0 for none.
    pub read_errno: AtomicU64,
}

fn dir() -> Attr {
    Attr { kind: Kind::Dir, size: 0, mtime_ns: 0, version: String::new() }
}

fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

impl MockBackend {
    /// A tree with the given files (parents created as directories).
    pub fn with_files(files: &[(&str, &[u8])]) -> MockBackend {
        let m = MockBackend::default();
        m.tree.lock().insert("/".into(), (dir(), Vec::new()));
        for (p, bytes) in files {
            m.put(p, bytes, "v1");
        }
        m
    }

    pub fn put(&self, path: &str, bytes: &[u8], version: &str) {
        self.put_at(path, bytes, version, 1_000);
    }

    /// `put` with the object's mtime (ns since the epoch).
    pub fn put_at(&self, path: &str, bytes: &[u8], version: &str, mtime_ns: i64) {
        let mut t = self.tree.lock();
        let mut d = parent(path);
        while d != "/" {
            t.entry(d.to_string()).or_insert_with(|| (dir(), Vec::new()));
            d = parent(d);
        }
        let attr = Attr { kind: Kind::File, size: bytes.len() as u64, mtime_ns, version: version.into() };
        t.insert(path.to_string(), (attr, bytes.to_vec()));
    }
}

impl Backend for MockBackend {
    fn stat(&self, path: &str) -> Result<Attr> {
        self.stats.fetch_add(1, Ordering::Relaxed);
        self.tree.lock().get(path).map(|(a, _)| a.clone()).ok_or_else(|| Error::new(libc::ENOENT, format!("{path}: not found")))
    }

    fn list(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        let t = self.tree.lock();
        match t.get(path) {
            None => return Err(Error::new(libc::ENOENT, "not found")),
            Some((a, _)) if a.kind != Kind::Dir => return Err(Error::new(libc::ENOTDIR, "not a dir")),
            _ => {}
        }
        Ok(t.iter()
            .filter(|(p, _)| p.as_str() != "/" && parent(p) == path)
            .map(|(p, (a, _))| DirEntry { name: p[p.rfind('/').unwrap() + 1..].to_string(), attr: a.clone() })
            .collect())
    }

    fn read_into(&self, path: &str, off: u64, buf: &mut [u8]) -> Result<usize> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let errno = self.read_errno.load(Ordering::Relaxed);
        if errno != 0 {
            return Err(Error::new(errno as i32, "injected failure"));
        }
        let t = self.tree.lock();
        let (a, bytes) = t.get(path).ok_or_else(|| Error::new(libc::ENOENT, "not found"))?;
        if a.kind == Kind::Dir {
            return Err(Error::new(libc::EISDIR, "is a dir"));
        }
        let start = (off as usize).min(bytes.len());
        let n = buf.len().min(bytes.len() - start);
        buf[..n].copy_from_slice(&bytes[start..start + n]);
        Ok(n)
    }

    fn usage(&self) -> Result<(u64, u64)> {
        Ok((1 << 30, 1 << 20))
    }
}
