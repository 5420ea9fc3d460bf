//! The persisted half of the namespace cache: an append-only log of file
//! attributes (path → kind, size, mtime, version token), so a restarted
//! engine knows which version of each object its cached blocks belong to
//! without asking under storage again.
//!
//! Listings are kept too: a listing record names a directory's entries,
//! files by name only (their attributes are the file records, so a listing
//! whose file lost its attribute is not trusted on load), other entries with
//! their attributes. A newer listing of the same directory supersedes it.
//!
//! Record: `len: u32 LE | crc32c(payload): u32 LE | payload` (JSON). The first
//! record names the mounts (`name=uri;...`); a log written for other mounts is
//! discarded whole, never trusted. A torn or corrupt tail ends the load (the
//! rest is cut off). The log is rewritten compactly at start-up when more than
//! half of it is superseded. Writes are not fsynced: after a power loss the
//! cache simply re-learns attributes from under storage.
//!
//! A write that fails (a full disk) may leave part of a record behind, and
//! the record it lost may be the one saying a file changed: a restart would
//! then trust the older attribute. So a failed write empties the log and
//! starts it again from its first record; what is logged from then on is
//! current, and everything else is re-learned from under storage.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
/// Path-keyed maps: foldhash instead of SipHash (start-up cost, see Cargo.toml).
pub type PathMap<V> = std::collections::HashMap<String, V, foldhash::fast::RandomState>;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use stoker_proto::control::{Attr, DirEntry, Kind};

/// A persisted listing entry: name, and the attribute unless it is a file.
pub type ListEntry = (String, Option<Attr>);

#[derive(Serialize, Deserialize)]
struct Rec {
    /// Path, or for the first record, empty.
    p: String,
    /// The attribute; None removes the path.
    a: Option<Attr>,
    /// Only in the first record: the mount fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<String>,
    /// A listing of directory `p` (then `a` is None).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    l: Option<Vec<ListEntry>>,
}

/// What a log held: file attributes and directory listings by path.
#[derive(Default)]
pub struct Loaded {
    pub attrs: PathMap<Attr>,
    pub lists: PathMap<Vec<ListEntry>>,
}

pub struct AttrLog {
    out: Mutex<Out>,
    /// The first record (the mounts), written again after a failed write.
    header: Vec<u8>,
    /// The last write failed (a full disk): warn once, not per write.
    failing: std::sync::atomic::AtomicBool,
}

struct Out {
    sink: Box<dyn Sink>,
    /// The log was emptied after a failed write: its first record goes
    /// ahead of the next write.
    needs_header: bool,
}

/// Where the log goes: its file (tests put a failing one in its place).
trait Sink: Send {
    /// Append all of `buf`; on an error some of it may have been written.
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Cut the log to nothing.
    fn clear(&mut self) -> io::Result<()>;
}

impl Sink for File {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_all(buf)
    }
    fn clear(&mut self) -> io::Result<()> {
        // The file is O_APPEND: the next write lands at the new end.
        self.set_len(0)
    }
}

fn encode(rec: &Rec) -> Vec<u8> {
    let payload = serde_json::to_vec(rec).expect("attribute records serialize");
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Parse records until the end or the first bad one; returns them and the
/// byte length of the good prefix.
fn decode_all(bytes: &[u8]) -> (Vec<Rec>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else { break };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Ok(rec) = serde_json::from_slice::<Rec>(payload) else { break };
        out.push(rec);
        at += 8 + len;
    }
    (out, at)
}

impl AttrLog {
    /// Open (or create) the log at `path` for the mounts named by
    /// `fingerprint`; returns the log and the attributes and listings it holds.
    pub fn open(path: &Path, fingerprint: &str) -> io::Result<(AttrLog, Loaded)> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let (recs, good) = decode_all(&bytes);
        let mut attrs = PathMap::default();
        let mut lists = PathMap::default();
        let ours = recs.first().and_then(|r| r.m.as_deref()) == Some(fingerprint);
        let nrecs = recs.len();
        if ours {
            // By value: the records' strings move into the maps, uncopied.
            for r in recs.into_iter().skip(1) {
                if let Some(l) = r.l {
                    lists.insert(r.p, l);
                    continue;
                }
                match r.a {
                    Some(a) => attrs.insert(r.p, a),
                    None => attrs.remove(&r.p),
                };
            }
        } else if nrecs > 0 {
            tracing::info!(path = %path.display(), "attribute log was written for other mounts; starting afresh");
        }
        let live = attrs.len() + lists.len();
        let superseded = nrecs.saturating_sub(1 + live);
        let loaded = Loaded { attrs, lists };
        let file = if ours && good == bytes.len() && superseded <= live {
            OpenOptions::new().append(true).open(path)?
        } else {
            Self::rewrite(path, fingerprint, &loaded)?
        };
        Ok((AttrLog::over(Box::new(file), fingerprint), loaded))
    }

    fn over(sink: Box<dyn Sink>, fingerprint: &str) -> AttrLog {
        AttrLog {
            out: Mutex::new(Out { sink, needs_header: false }),
            header: encode(&Rec { p: String::new(), a: None, m: Some(fingerprint.to_string()), l: None }),
            failing: Default::default(),
        }
    }

    fn rewrite(path: &Path, fingerprint: &str, loaded: &Loaded) -> io::Result<File> {
        let attrs = &loaded.attrs;
        let tmp: PathBuf = path.with_extension("tmp");
        let mut buf = encode(&Rec { p: String::new(), a: None, m: Some(fingerprint.to_string()), l: None });
        buf.reserve(attrs.len() * 96);
        for (p, a) in attrs {
            buf.extend_from_slice(&encode(&Rec { p: p.clone(), a: Some(a.clone()), m: None, l: None }));
        }
        for (p, l) in &loaded.lists {
            buf.extend_from_slice(&encode(&Rec { p: p.clone(), a: None, m: None, l: Some(l.clone()) }));
        }
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        crate::durable::rename(&tmp, path)?;
        OpenOptions::new().append(true).open(path)
    }

    /// Record `attr` for `path` (None forgets it).
    pub fn append(&self, path: &str, attr: Option<&Attr>) {
        let rec = encode(&Rec { p: path.to_string(), a: attr.cloned(), m: None, l: None });
        self.write(&rec);
    }

    /// Record many at once (a listing) with one write.
    pub fn append_many<'a>(&self, items: impl Iterator<Item = (String, &'a Attr)>) {
        let mut buf = Vec::new();
        for (p, a) in items {
            buf.extend_from_slice(&encode(&Rec { p, a: Some(a.clone()), m: None, l: None }));
        }
        self.write(&buf);
    }

    /// Record the listing of `dir`: the changed file attributes in `files`
    /// first, then the listing, in one write.
    pub fn append_listing<'a>(&self, files: impl Iterator<Item = (String, &'a Attr)>, dir: &str, entries: &[DirEntry]) {
        let mut buf = Vec::new();
        for (p, a) in files {
            buf.extend_from_slice(&encode(&Rec { p, a: Some(a.clone()), m: None, l: None }));
        }
        let l = entries
            .iter()
            .map(|e| (e.name.clone(), (e.attr.kind != Kind::File).then(|| e.attr.clone())))
            .collect();
        buf.extend_from_slice(&encode(&Rec { p: dir.to_string(), a: None, m: None, l: Some(l) }));
        self.write(&buf);
    }

    fn write(&self, buf: &[u8]) {
        if buf.is_empty() {
            return;
        }
        use std::sync::atomic::Ordering::Relaxed;
        let mut out = self.out.lock();
        let res = if out.needs_header {
            out.sink.append(&[self.header.as_slice(), buf].concat())
        } else {
            out.sink.append(buf)
        };
        match res {
            Ok(()) => {
                out.needs_header = false;
                if self.failing.swap(false, Relaxed) {
                    tracing::info!("attribute log writes succeed again");
                }
            }
            Err(e) => {
                // Part of `buf` may be in the log and the rest is lost: empty
                // it rather than leave older attributes a restart would trust.
                if let Err(e2) = out.sink.clear() {
                    tracing::error!(error = %e2, "cannot empty the attribute log after a failed write; it will be discarded at the next start");
                }
                out.needs_header = true;
                if !self.failing.swap(true, Relaxed) {
                    tracing::warn!(error = %e, "attribute log write failed; the log was emptied (attributes are re-learned from under storage after a restart)");
                } else {
                    tracing::debug!(error = %e, "attribute log write failed again");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stoker_proto::control::Kind;

    fn attr(v: &str) -> Attr {
        Attr { kind: Kind::File, size: 3, mtime_ns: 1, version: v.into() }
    }

    #[test]
    fn survives_reopen_drops_torn_tail_and_foreign_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attrs.log");
        {
            let (log, got) = AttrLog::open(&path, "m=file:///a").unwrap();
            assert!(got.attrs.is_empty());
            log.append("/m/x", Some(&attr("v1")));
            log.append("/m/y", Some(&attr("v1")));
            log.append("/m/x", Some(&attr("v2")));
            log.append("/m/y", None);
        }
        let (_, got) = AttrLog::open(&path, "m=file:///a").unwrap();
        assert_eq!(got.attrs.len(), 1);
        assert_eq!(got.attrs["/m/x"].version, "v2");

        // A torn tail: the last record cut in half is dropped, the rest kept.
        {
            let (log, _) = AttrLog::open(&path, "m=file:///a").unwrap();
            log.append("/m/z", Some(&attr("v9")));
        }
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap();
        let (_, got) = AttrLog::open(&path, "m=file:///a").unwrap();
        assert_eq!(got.attrs.len(), 1);
        assert!(!got.attrs.contains_key("/m/z"));

        // Other mounts: nothing is trusted.
        let (_, got) = AttrLog::open(&path, "m=file:///b").unwrap();
        assert!(got.attrs.is_empty());
    }

    /// A log in memory whose next append fails half-way when told to.
    #[derive(Clone, Default)]
    struct Flaky {
        bytes: std::sync::Arc<Mutex<Vec<u8>>>,
        fail_next: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl Sink for Flaky {
        fn append(&mut self, buf: &[u8]) -> io::Result<()> {
            if self.fail_next.swap(false, std::sync::atomic::Ordering::Relaxed) {
                self.bytes.lock().extend_from_slice(&buf[..buf.len() / 2]);
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.bytes.lock().extend_from_slice(buf);
            Ok(())
        }
        fn clear(&mut self) -> io::Result<()> {
            self.bytes.lock().clear();
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_never_leaves_an_older_attribute_to_trust() {
        let sink = Flaky::default();
        let log = AttrLog::over(Box::new(sink.clone()), "m");
        log.out.lock().sink.append(&log.header).unwrap();
        log.append("/m/x", Some(&attr("v1")));
        log.append("/m/y", Some(&attr("v1")));
        // x changes, and the record saying so is torn by a full disk.
        sink.fail_next.store(true, std::sync::atomic::Ordering::Relaxed);
        log.append("/m/x", Some(&attr("v2")));
        log.append("/m/z", Some(&attr("v1")));
        let bytes = sink.bytes.lock().clone();
        let (recs, good) = decode_all(&bytes);
        assert_eq!(good, bytes.len(), "a torn record was left in the log");
        assert_eq!(recs.first().and_then(|r| r.m.as_deref()), Some("m"), "the log lost its first record");
        let paths: Vec<&str> = recs.iter().skip(1).map(|r| r.p.as_str()).collect();
        // x's old attribute is gone (re-learned), z's is kept.
        assert_eq!(paths, vec!["/m/z"]);
    }

    #[test]
    fn listings_survive_reopen_and_compaction_and_newer_ones_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attrs.log");
        let d = Attr { kind: Kind::Dir, size: 0, mtime_ns: 5, version: String::new() };
        let ent = |n: &str, a: &Attr| DirEntry { name: n.into(), attr: a.clone() };
        {
            let (log, _) = AttrLog::open(&path, "m").unwrap();
            let a = attr("v1");
            log.append_listing([("/m/d/x".to_string(), &a)].into_iter(), "/m/d", &[ent("x", &a), ent("sub", &d)]);
            log.append_listing(std::iter::empty(), "/m/e", &[ent("old", &d)]);
            log.append_listing(std::iter::empty(), "/m/e", &[ent("new", &d)]);
        }
        for _ in 0..2 {
            let (log, got) = AttrLog::open(&path, "m").unwrap();
            assert_eq!(got.attrs["/m/d/x"].version, "v1");
            assert_eq!(got.lists.len(), 2);
            assert_eq!(got.lists["/m/d"], vec![("x".to_string(), None), ("sub".to_string(), Some(d.clone()))]);
            assert_eq!(got.lists["/m/e"], vec![("new".to_string(), Some(d.clone()))]);
            // Enough superseded records to force a compacting rewrite.
            for i in 0..10 {
                log.append("/m/d/x", Some(&attr(&format!("v{i}"))));
            }
            log.append("/m/d/x", Some(&attr("v1")));
        }
    }
}
