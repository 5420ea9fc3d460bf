//! Files written through the engine and not yet (or never) in under
//! storage: the namespace answers stat, list and read of these from here,
//! ahead of the mount's under storage, so readers see a file the moment its
//! writer closed it (docs/SEMANTICS.md, "Writes").
//!
//! Owns: the path → (attributes, local copy) table. Must never: write a
//! file, persist one, or decide when an entry goes (that is `write/`'s).

use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use stoker_proto::control::{Attr, DirEntry};

/// One closed written file: what it looks like, and where its bytes are.
#[derive(Clone, Debug)]
pub struct WrittenFile {
    pub attr: Attr,
    /// The local copy (fsynced before the file was entered here).
    pub data: PathBuf,
    /// The writer's mode bits, uid and gid.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Default)]
pub struct Written {
    /// Keyed by normalised namespace path (`/NAME/rel`).
    files: RwLock<BTreeMap<String, WrittenFile>>,
    /// Set while `files` is not empty: the read path's check costs one load.
    any: AtomicBool,
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

impl Written {
    pub fn get(&self, norm: &str) -> Option<WrittenFile> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.files.read().get(norm).cloned()
    }

    pub fn insert(&self, norm: &str, f: WrittenFile) {
        let mut g = self.files.write();
        g.insert(norm.to_string(), f);
        self.any.store(true, Ordering::Release);
    }

    /// Remove `norm` if it is still the file whose version is `version`
    /// (None: whatever is there). Returns what was removed.
    pub fn remove(&self, norm: &str, version: Option<&str>) -> Option<WrittenFile> {
        let mut g = self.files.write();
        if let Some(v) = version {
            if g.get(norm).is_none_or(|f| f.attr.version != v) {
                return None;
            }
        }
        let old = g.remove(norm);
        self.any.store(!g.is_empty(), Ordering::Release);
        old
    }

    /// Written files directly in directory `dir`, as listing entries.
    pub fn children(&self, dir: &str) -> Vec<DirEntry> {
        if !self.any.load(Ordering::Acquire) {
            return Vec::new();
        }
        let prefix = if dir == "/" { "/".to_string() } else { format!("{dir}/") };
        self.files
            .read()
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter(|(p, _)| parent_of(p) == dir)
            .map(|(p, f)| DirEntry { name: p[prefix.len()..].to_string(), attr: f.attr.clone() })
            .collect()
    }

    /// Directories that hold written files below `dir` directly (a file
    /// written into a directory under storage does not have yet).
    pub fn child_dirs(&self, dir: &str) -> Vec<String> {
        if !self.any.load(Ordering::Acquire) {
            return Vec::new();
        }
        let prefix = if dir == "/" { "/".to_string() } else { format!("{dir}/") };
        let mut out: Vec<String> = self
            .files
            .read()
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter_map(|(p, _)| p[prefix.len()..].split_once('/').map(|(d, _)| d.to_string()))
            .collect();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stoker_proto::control::Kind;

    fn f(v: &str) -> WrittenFile {
        WrittenFile {
            attr: Attr { kind: Kind::File, size: 1, mtime_ns: 0, version: v.into() },
            data: PathBuf::from("/x"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn children_and_versioned_removal() {
        let w = Written::default();
        assert!(w.get("/m/a").is_none());
        w.insert("/m/a", f("w1"));
        w.insert("/m/d/b", f("w2"));
        w.insert("/m/d/e/c", f("w3"));
        w.insert("/mm/z", f("w4"));
        let names: Vec<_> = w.children("/m").into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["a"]);
        assert_eq!(w.child_dirs("/m"), ["d"]);
        assert_eq!(w.children("/m/d").len(), 1);
        assert!(w.remove("/m/a", Some("w0")).is_none(), "another version stays");
        assert!(w.remove("/m/a", Some("w1")).is_some());
        assert!(w.get("/m/a").is_none());
    }
}
