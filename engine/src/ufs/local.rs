//! A local (or NFS) directory as under storage. Blocking file calls run on
//! tokio's blocking pool so they never stall a runtime worker.

use super::{BoxFut, ListPage, Ufs, UfsError, UfsResult};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use stoker_proto::control::{Attr, Kind};

pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    pub fn new(root: PathBuf) -> LocalDir {
        LocalDir { root }
    }

    fn resolve(&self, rel: &str) -> UfsResult<PathBuf> {
        // Paths come from the namespace, already normalised; refuse anything
        // that could climb out of the mount anyway.
        if rel.split('/').any(|c| c == ".." || c == ".") {
            return Err(UfsError::NotFound);
        }
        Ok(self.root.join(rel.trim_start_matches('/')))
    }
}

fn map_err(e: std::io::Error) -> UfsError {
    match e.kind() {
        ErrorKind::NotFound => UfsError::NotFound,
        ErrorKind::IsADirectory => UfsError::IsDir,
        ErrorKind::NotADirectory => UfsError::NotDir,
        ErrorKind::Interrupted | ErrorKind::TimedOut | ErrorKind::WouldBlock => {
            UfsError::Io { message: e.to_string(), retryable: true }
        }
        _ => UfsError::Io { message: e.to_string(), retryable: false },
    }
}

pub fn attr_of(meta: &std::fs::Metadata) -> Attr {
    let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    if meta.is_dir() {
        Attr { kind: Kind::Dir, size: 0, mtime_ns, version: String::new() }
    } else {
        Attr {
            kind: Kind::File,
            size: meta.len(),
            mtime_ns,
            version: format!("s{}-m{}-i{}", meta.len(), mtime_ns, meta.ino()),
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> UfsResult<T> + Send + 'static) -> UfsResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(UfsError::Io { message: format!("worker failed: {e}"), retryable: false }))
}

/// Ends the temporary name a persist writes before renaming into place.
const PERSIST_TMP_SUFFIX: &str = ".stoker-tmp";

fn is_persist_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(PERSIST_TMP_SUFFIX)
}

impl Ufs for LocalDir {
    /// A temporary file beside the target, fsynced, renamed over it, and
    /// the directory fsynced: readers of the directory never see a part.
    fn write_file<'a>(&'a self, rel: &'a str, src: &'a std::path::Path, len: u64) -> BoxFut<'a, UfsResult<()>> {
        let to = self.resolve(rel);
        let src = src.to_path_buf();
        Box::pin(async move {
            let to = to?;
            blocking(move || {
                let dir = to.parent().ok_or(UfsError::NotFound)?.to_path_buf();
                std::fs::create_dir_all(&dir).map_err(map_err)?;
                let name = to.file_name().ok_or(UfsError::NotFound)?.to_string_lossy().into_owned();
                let tmp = dir.join(format!(".{name}{PERSIST_TMP_SUFFIX}"));
                let res = (|| {
                    let mut from = std::io::Read::take(std::fs::File::open(&src)?, len);
                    let mut out = std::fs::File::create(&tmp)?;
                    if std::io::copy(&mut from, &mut out)? != len {
                        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the local copy is short"));
                    }
                    out.sync_all()?;
                    std::fs::rename(&tmp, &to)?;
                    std::fs::File::open(&dir)?.sync_all()
                })();
                if res.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                res.map_err(map_err)
            })
            .await
        })
    }

    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFut<'a, UfsResult<()>> {
        let (f, t) = (self.resolve(from), self.resolve(to));
        Box::pin(async move {
            let (f, t) = (f?, t?);
            blocking(move || {
                let moved = (|| {
                    std::fs::rename(&f, &t)?;
                    for d in [t.parent(), f.parent()].into_iter().flatten() {
                        std::fs::File::open(d)?.sync_all()?;
                    }
                    Ok(())
                })();
                moved.map_err(map_err)
            })
            .await
        })
    }

    fn create_dir<'a>(&'a self, rel: &'a str) -> BoxFut<'a, UfsResult<()>> {
        let p = self.resolve(rel);
        Box::pin(async move {
            let p = p?;
            blocking(move || std::fs::create_dir(&p).map_err(map_err)).await
        })
    }

    fn delete_dir<'a>(&'a self, rel: &'a str) -> BoxFut<'a, UfsResult<()>> {
        let p = self.resolve(rel);
        Box::pin(async move {
            let p = p?;
            blocking(move || std::fs::remove_dir(&p).map_err(map_err)).await
        })
    }

    fn delete<'a>(&'a self, rel: &'a str) -> BoxFut<'a, UfsResult<()>> {
        let p = self.resolve(rel);
        Box::pin(async move {
            let p = p?;
            blocking(move || std::fs::remove_file(&p).map_err(map_err)).await
        })
    }

    fn stat<'a>(&'a self, rel: &'a str) -> BoxFut<'a, UfsResult<Attr>> {
        Box::pin(async move {
            let p = self.resolve(rel)?;
            blocking(move || std::fs::metadata(&p).map(|m| attr_of(&m)).map_err(map_err)).await
        })
    }

    fn read<'a>(&'a self, rel: &'a str, off: u64, len: u64) -> BoxFut<'a, UfsResult<Vec<u8>>> {
        Box::pin(async move {
            let p = self.resolve(rel)?;
            blocking(move || {
                let mut f = std::fs::File::open(&p).map_err(map_err)?;
                if f.metadata().map_err(map_err)?.is_dir() {
                    return Err(UfsError::IsDir);
                }
                f.seek(SeekFrom::Start(off)).map_err(map_err)?;
                let mut buf = Vec::with_capacity(len as usize);
                f.take(len).read_to_end(&mut buf).map_err(map_err)?;
                Ok(buf)
            })
            .await
        })
    }

    fn read_versioned<'a>(&'a self, rel: &'a str, off: u64, len: u64) -> BoxFut<'a, UfsResult<(Attr, Vec<u8>)>> {
        Box::pin(async move {
            let p = self.resolve(rel)?;
            blocking(move || {
                let f = std::fs::File::open(&p).map_err(map_err)?;
                let attr = attr_of(&f.metadata().map_err(map_err)?);
                if attr.kind == Kind::Dir {
                    return Err(UfsError::IsDir);
                }
                // Attributes and bytes come from one open file, so they agree.
                let mut buf = Vec::with_capacity(len.min(attr.size.saturating_sub(off)) as usize);
                let mut f = f;
                f.seek(SeekFrom::Start(off)).map_err(map_err)?;
                f.take(len).read_to_end(&mut buf).map_err(map_err)?;
                Ok((attr, buf))
            })
            .await
        })
    }

    fn list<'a>(&'a self, rel: &'a str, token: Option<String>, max: usize) -> BoxFut<'a, UfsResult<ListPage>> {
        Box::pin(async move {
            let p = self.resolve(rel)?;
            blocking(move || {
                let meta = std::fs::metadata(&p).map_err(map_err)?;
                if !meta.is_dir() {
                    return Err(UfsError::NotDir);
                }
                // A directory is read whole and sorted so pages are stable;
                // the token is the last name of the previous page.
                let mut names: Vec<String> = std::fs::read_dir(&p)
                    .map_err(map_err)?
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    // A persist under way (`write_file`'s temporary) is not a file yet.
                    .filter(|n| !is_persist_temporary(n))
                    .collect();
                names.sort();
                let start = match &token {
                    Some(t) => names.partition_point(|n| n <= t),
                    None => 0,
                };
                let mut entries = Vec::new();
                for name in names[start..].iter().take(max.max(1)) {
                    match std::fs::metadata(p.join(name)) {
                        Ok(m) => entries.push((name.clone(), attr_of(&m))),
                        Err(e) if e.kind() == ErrorKind::NotFound => continue, // raced a delete
                        Err(e) => return Err(map_err(e)),
                    }
                }
                let next = if start + entries.len() < names.len() && !entries.is_empty() {
                    entries.last().map(|(n, _)| n.clone())
                } else {
                    None
                };
                Ok(ListPage { entries, next })
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_leave_out_a_persist_under_way() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.bin"), b"a").unwrap();
        std::fs::write(d.path().join(".b.bin.stoker-tmp"), b"half").unwrap();
        std::fs::write(d.path().join(".hidden"), b"h").unwrap();
        let u = LocalDir::new(d.path().to_path_buf());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let page = rt.block_on(u.list("", None, 100)).unwrap();
        let names: Vec<&str> = page.entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [".hidden", "a.bin"]);
        // A persist lands under its own name.
        rt.block_on(u.write_file("c.bin", &d.path().join("a.bin"), 1)).unwrap();
        assert_eq!(std::fs::read(d.path().join("c.bin")).unwrap(), b"a");
        assert!(!d.path().join(".c.bin.stoker-tmp").exists());
    }
}
