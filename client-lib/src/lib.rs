//! The stoker client: attach to a running engine and read through its cache.
//!
//! A `Client` holds one session with the engine: a control connection (for
//! stat, list and statistics), a shared-memory area it created (a sealed
//! memfd handed to the engine) with one request ring and one completion ring
//! per shard, and one stream per shard used only as a doorbell. A read is
//! split at block boundaries, each piece posted on the ring of the shard that
//! owns it; the engine places the bytes in the piece's slot of the data area.
//!
//! `Client` is `Send + Sync` and cheap to share between threads. A process
//! that forks must connect again in the child (the old session belongs to the
//! parent); calls on an inherited client fail with a clear error.

mod alloc;
mod session;

use std::time::Duration;
use stoker_proto::control::{Attr, DirEntry, EngineStats};

pub use session::Client;
pub use stoker_proto::control::Kind;

/// A failed client call: a Linux errno and one line for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub errno: i32,
    pub message: String,
}

impl Error {
    pub fn new(errno: i32, message: impl Into<String>) -> Error {
        Error { errno, message: message.into() }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        std::io::Error::new(std::io::Error::from_raw_os_error(e.errno).kind(), e.message)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Connection options; `Options::default()` suits a data loader.
#[derive(Clone, Debug)]
pub struct Options {
    /// Bytes of shared memory for data in flight. Default 64 MiB.
    pub area_bytes: u64,
    /// Requests in flight per shard. Default 512.
    pub ring_entries: u32,
    /// Longest wait for one request or control answer. Default 300 s.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options { area_bytes: 64 << 20, ring_entries: 512, timeout: Duration::from_secs(300) }
    }
}

/// Size of the first request of `read_file`, before the file's size is known.
const FIRST_PIECE_BYTES: u64 = 256 << 10;

impl Client {
    /// Attach to the engine on `socket` with default options.
    pub fn connect(socket: &str) -> Result<Client> {
        Client::connect_with(socket, Options::default())
    }

    /// Attributes of a file or directory (`/` is the root, `/NAME` a mount).
    pub fn stat(&self, path: &str) -> Result<Attr> {
        match self.control(stoker_proto::control::Request::Stat { path: path.into() })? {
            stoker_proto::control::Response::Attr(a) => Ok(a),
            other => Err(session::unexpected(other)),
        }
    }

    /// Entries of a directory, sorted by name.
    pub fn list(&self, path: &str) -> Result<Vec<DirEntry>> {
        match self.control(stoker_proto::control::Request::List { path: path.into() })? {
            stoker_proto::control::Response::Entries { entries } => Ok(entries),
            other => Err(session::unexpected(other)),
        }
    }

    /// Engine-wide and per-shard statistics.
    pub fn engine_stats(&self) -> Result<EngineStats> {
        match self.control(stoker_proto::control::Request::EngineStat)? {
            stoker_proto::control::Response::Stats(s) => Ok(s),
            other => Err(session::unexpected(other)),
        }
    }

    /// Read `len` bytes at `off`; shorter at the end of the file.
    pub fn read(&self, path: &str, off: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        let n = self.read_into(path, off, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Read a whole file.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        // The first piece tells the object's size; small files (the common
        // case in training sets) need nothing more. It is kept small because
        // a slot reserves its whole length in the shared area while in flight.
        let first = self.chunk_bytes().min(FIRST_PIECE_BYTES);
        let mut buf = vec![0u8; first as usize];
        let (n, size) = self.read_at(path, 0, &mut buf)?;
        buf.truncate(n);
        if size > n as u64 && n as u64 == first {
            buf.resize(size as usize, 0);
            let (m, _) = self.read_at(path, first, &mut buf[first as usize..])?;
            buf.truncate(first as usize + m);
        }
        Ok(buf)
    }

    /// Read into `buf` at `off`; returns the bytes read (short at EOF).
    pub fn read_into(&self, path: &str, off: u64, buf: &mut [u8]) -> Result<usize> {
        self.read_at(path, off, buf).map(|(n, _)| n)
    }

    /// Make sure every block of `path` is cached, copying nothing back.
    /// Returns the file's size.
    pub fn prefetch(&self, path: &str, size: u64) -> Result<u64> {
        self.prefetch_range(path, 0, size.max(1))
    }
}
