//! What a workload reads from: a `Target` turns "file `rel`" into bytes or a
//! size. Targets own no timing and no statistics; `run.rs` does that.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

/// Something files can be read from. Paths are relative to the dataset root.
pub trait Target: Sync {
    fn name(&self) -> String;
    /// Read the whole file `rel`; returns its bytes.
    fn read_file(&self, rel: &str) -> std::io::Result<Vec<u8>>;
    /// Read up to `len` bytes of `rel` at `off`; returns the bytes read.
    fn read_at(&self, rel: &str, off: u64, len: u64) -> std::io::Result<Vec<u8>>;
    /// Size of `rel` in bytes (one metadata call).
    fn size(&self, rel: &str) -> std::io::Result<u64>;
}

fn pread(path: &std::path::Path, off: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; len as usize];
    let mut got = 0;
    while got < buf.len() {
        let n = f.read_at(&mut buf[got..], off + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

/// Plain reads of a local directory (ext4, NFS, or a FUSE mount point).
pub struct LocalTarget {
    pub name: String,
    pub root: PathBuf,
}

impl Target for LocalTarget {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn read_file(&self, rel: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.root.join(rel))
    }
    fn read_at(&self, rel: &str, off: u64, len: u64) -> std::io::Result<Vec<u8>> {
        pread(&self.root.join(rel), off, len)
    }
    fn size(&self, rel: &str) -> std::io::Result<u64> {
        Ok(std::fs::metadata(self.root.join(rel))?.len())
    }
}

/// Direct reads of the under storage, standing in for a remote store: a local
/// directory where every request first pays `latency` (the same knob as the
/// engine's `--ufs-latency`), so "direct" and "through stoker" pay the same.
pub struct RemoteTarget {
    pub root: PathBuf,
    pub latency: Duration,
}

impl Target for RemoteTarget {
    fn name(&self) -> String {
        format!("direct ({:?}/request)", self.latency)
    }
    fn read_file(&self, rel: &str) -> std::io::Result<Vec<u8>> {
        std::thread::sleep(self.latency);
        std::fs::read(self.root.join(rel))
    }
    fn read_at(&self, rel: &str, off: u64, len: u64) -> std::io::Result<Vec<u8>> {
        std::thread::sleep(self.latency);
        pread(&self.root.join(rel), off, len)
    }
    fn size(&self, rel: &str) -> std::io::Result<u64> {
        std::thread::sleep(self.latency);
        Ok(std::fs::metadata(self.root.join(rel))?.len())
    }
}

/// Reads through a stoker engine with client-lib (shared memory).
pub struct StokerTarget {
    pub name: String,
    pub client: stoker_client::Client,
    /// Namespace prefix, e.g. `/data`.
    pub prefix: String,
}

impl StokerTarget {
    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.prefix)
    }
}

impl Target for StokerTarget {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn read_file(&self, rel: &str) -> std::io::Result<Vec<u8>> {
        Ok(self.client.read_file(&self.path(rel))?)
    }
    fn read_at(&self, rel: &str, off: u64, len: u64) -> std::io::Result<Vec<u8>> {
        Ok(self.client.read(&self.path(rel), off, len)?)
    }
    fn size(&self, rel: &str) -> std::io::Result<u64> {
        Ok(self.client.stat(&self.path(rel))?.size)
    }
}
