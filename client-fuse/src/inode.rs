//! The inode table: kernel inode numbers <-> namespace paths, the kernel's
//! lookup count for each, and the attributes last fetched with their deadline.
//!
//! Inode numbers are a hash of the path (xxh3, top bit clear), so they are
//! stable across remounts and a plain readdir can name an entry's inode
//! without creating it. A hash collision (or 0/1) takes a number from a
//! counter with the top bit set. The table never talks to the engine.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use stoker_client::Kind;
use stoker_proto::control::Attr;

pub const ROOT_INO: u64 = 1;
const FALLBACK_BIT: u64 = 1 << 63;

/// A copy of what the table knows about one inode.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub path: Arc<str>,
    pub attr: Attr,
    pub fresh: bool,
}

struct Node {
    path: Arc<str>,
    attr: Attr,
    fresh_until: Instant,
    /// References the kernel holds (lookups minus forgets). Root is pinned.
    lookups: AtomicU64,
    /// Version of the data the kernel may hold in its page cache for this
    /// inode (set at open); `None` before the first open.
    cached_version: Option<String>,
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<Arc<str>, u64>,
    next_fallback: u64,
}

pub struct InodeTable {
    inner: RwLock<Inner>,
}

/// The inode number a path gets unless it collides.
pub fn hashed_ino(path: &str) -> u64 {
    let h = xxhash_rust::xxh3::xxh3_64(path.as_bytes()) & !FALLBACK_BIT;
    if h <= ROOT_INO {
        h | FALLBACK_BIT // 0 and 1 are taken: force the fallback path.
    } else {
        h
    }
}

impl InodeTable {
    pub fn new(root_path: &str, root_attr: Attr, fresh_until: Instant) -> InodeTable {
        let path: Arc<str> = Arc::from(root_path);
        let mut inner = Inner::default();
        inner.by_path.insert(path.clone(), ROOT_INO);
        inner.nodes.insert(
            ROOT_INO,
            Node { path, attr: root_attr, fresh_until, lookups: AtomicU64::new(1), cached_version: None },
        );
        InodeTable { inner: RwLock::new(inner) }
    }

    pub fn get(&self, ino: u64) -> Option<NodeView> {
        let g = self.inner.read();
        let n = g.nodes.get(&ino)?;
        Some(NodeView { path: n.path.clone(), attr: n.attr.clone(), fresh: Instant::now() < n.fresh_until })
    }

    /// Path, kind and size of `ino`, copying no strings (the read path).
    pub fn file_of(&self, ino: u64) -> Option<(Arc<str>, Kind, u64)> {
        let g = self.inner.read();
        let n = g.nodes.get(&ino)?;
        Some((n.path.clone(), n.attr.kind, n.attr.size))
    }

    pub fn path(&self, ino: u64) -> Option<Arc<str>> {
        self.inner.read().nodes.get(&ino).map(|n| n.path.clone())
    }

    /// The inode a path has or would get, without creating it (plain readdir).
    pub fn ino_of(&self, path: &str) -> u64 {
        match self.inner.read().by_path.get(path) {
            Some(&ino) => ino,
            None => hashed_ino(path),
        }
    }

    /// Record `path` with `attr` and count one kernel reference to it.
    /// Returns its inode number.
    pub fn remember(&self, path: &str, attr: Attr, fresh_until: Instant) -> u64 {
        {
            // Fast path: known path with the same attributes (a repeated lookup).
            let g = self.inner.read();
            if let Some(&ino) = g.by_path.get(path) {
                let n = &g.nodes[&ino];
                if n.attr == attr && n.fresh_until >= fresh_until {
                    n.lookups.fetch_add(1, Ordering::Relaxed);
                    return ino;
                }
            }
        }
        let mut g = self.inner.write();
        if let Some(&ino) = g.by_path.get(path) {
            let n = g.nodes.get_mut(&ino).expect("by_path and nodes agree");
            n.attr = attr;
            n.fresh_until = n.fresh_until.max(fresh_until);
            n.lookups.fetch_add(1, Ordering::Relaxed);
            return ino;
        }
        let mut ino = hashed_ino(path);
        if ino & FALLBACK_BIT != 0 || g.nodes.contains_key(&ino) {
            g.next_fallback += 1;
            ino = FALLBACK_BIT | g.next_fallback;
        }
        let path: Arc<str> = Arc::from(path);
        g.by_path.insert(path.clone(), ino);
        g.nodes.insert(ino, Node { path, attr, fresh_until, lookups: AtomicU64::new(1), cached_version: None });
        ino
    }

    /// The file at `from` is now at `to` (a rename): its inode (the one
    /// the kernel keeps for the moved name) answers for `to`; an inode `to`
    /// had keeps its old path and goes stale.
    pub fn rename(&self, from: &str, to: &str) {
        let mut g = self.inner.write();
        let Some(ino) = g.by_path.remove(from) else { return };
        let path: Arc<str> = Arc::from(to);
        g.by_path.insert(path.clone(), ino);
        if let Some(n) = g.nodes.get_mut(&ino) {
            n.path = path;
        }
    }

    /// Replace the attributes of a known inode (after a re-stat).
    pub fn refresh(&self, ino: u64, attr: Attr, fresh_until: Instant) {
        if let Some(n) = self.inner.write().nodes.get_mut(&ino) {
            n.attr = attr;
            n.fresh_until = fresh_until;
        }
    }

    /// Note that the kernel may now cache `version`'s pages for `ino`.
    /// Returns true if pages it cached before are still valid (same version,
    /// or nothing cached yet): the open may keep the page cache.
    pub fn open_version(&self, ino: u64, version: &str) -> bool {
        {
            let g = self.inner.read();
            match g.nodes.get(&ino) {
                Some(n) if n.cached_version.as_deref() == Some(version) => return true,
                Some(_) => {}
                None => return false,
            }
        }
        let mut g = self.inner.write();
        match g.nodes.get_mut(&ino) {
            Some(n) => {
                let first = n.cached_version.is_none();
                n.cached_version = Some(version.to_string());
                first
            }
            None => false,
        }
    }

    /// The kernel dropped `n` references to `ino`; forget it at zero.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut g = self.inner.write();
        let gone = match g.nodes.get(&ino) {
            Some(node) => {
                let left = node.lookups.load(Ordering::Relaxed).saturating_sub(n);
                node.lookups.store(left, Ordering::Relaxed);
                left == 0
            }
            None => false,
        };
        if gone {
            if let Some(node) = g.nodes.remove(&ino) {
                g.by_path.remove(&node.path);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner.read().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    pub fn lookups(&self, ino: u64) -> Option<u64> {
        self.inner.read().nodes.get(&ino).map(|n| n.lookups.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(size: u64, version: &str) -> Attr {
        Attr { kind: Kind::File, size, mtime_ns: 0, version: version.into() }
    }

    #[test]
    fn remember_forget_and_stable_numbers() {
        let now = Instant::now();
        let t = InodeTable::new("/m", Attr { kind: Kind::Dir, size: 0, mtime_ns: 0, version: String::new() }, now);
        let a = t.remember("/m/a", attr(1, "1"), now);
        assert_eq!(a, hashed_ino("/m/a"));
        assert_eq!(t.ino_of("/m/a"), a);
        assert_eq!(t.remember("/m/a", attr(1, "1"), now), a);
        assert_eq!(t.lookups(a), Some(2));
        t.forget(a, 1);
        assert!(t.get(a).is_some());
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        assert_eq!(t.ino_of("/m/a"), a, "a forgotten path keeps its number");
        t.forget(ROOT_INO, 100);
        assert!(t.get(ROOT_INO).is_some(), "root is pinned");
    }

    #[test]
    fn changed_attr_replaces_and_keep_cache_follows_version() {
        let now = Instant::now();
        let t = InodeTable::new("/m", Attr { kind: Kind::Dir, size: 0, mtime_ns: 0, version: String::new() }, now);
        let a = t.remember("/m/a", attr(1, "1"), now);
        assert!(t.open_version(a, "1"), "first open: nothing cached, keep");
        assert!(t.open_version(a, "1"), "same version: keep");
        let b = t.remember("/m/a", attr(2, "2"), now);
        assert_eq!(a, b);
        assert_eq!(t.get(a).unwrap().attr.size, 2);
        assert!(!t.open_version(a, "2"), "new version: drop the page cache");
        assert!(t.open_version(a, "2"));
        assert!(!t.open_version(12345, "2"), "unknown inode");
    }
}
