//! Making a file durable by rename: write a temporary file, fsync it,
//! rename it over the old one, then fsync the directory — without that last
//! step a crash can forget the rename, and the old file (or none) comes
//! back. Every such rename in the engine goes through [`rename`]. (The
//! store's segment indexes do the same with glommio's own calls.)

use std::io;
use std::path::Path;

/// fsync a directory, making the renames and creations in it durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Rename `tmp` (already written and fsynced) to `to`, and fsync the
/// directory of `to`.
pub fn rename(tmp: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(tmp, to)?;
    let dir = match to.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fsync_dir(dir)
}

/// Write `bytes` to `path` durably: a sibling temporary file, fsynced, then
/// [`rename`]d into place.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn write_replaces_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("policies.json");
        super::write(&p, b"one").unwrap();
        super::write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        super::fsync_dir(d.path()).unwrap();
        assert!(super::fsync_dir(&d.path().join("missing")).is_err());
    }
}
