//! Control-socket messages: one JSON document per frame, each frame a
//! little-endian u32 length followed by that many bytes.
//!
//! Control traffic is rare (handshake, stat, list, engine stats); the data
//! path never goes through here.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// Largest control frame accepted (a listing of ~100k entries fits).
pub const FRAME_BYTES_MAX: usize = 256 << 20;

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Sent with the data-area memfd attached (SCM_RIGHTS).
    Hello { version: u32, area_bytes: u64, ring_entries: u32 },
    Stat { path: String },
    List { path: String },
    /// Every file at or under a path (answered with `Entries` whose names
    /// are full paths, sorted); directories are listed concurrently.
    Walk { path: String },
    EngineStat,
    /// Keep the blocks under a path cached through eviction.
    Pin { path: String },
    Unpin { path: String },
    /// Drop the cached blocks under a path now.
    Free { path: String },
    /// Cached blocks under a path expire `secs` after they were cached; None clears it.
    Ttl { path: String, secs: Option<u64> },
    /// Cached fraction and policies of a file or prefix.
    PathStat { path: String },
    /// Checksum (`checksum()`) of a range of a file read straight from under
    /// storage, bypassing the cache (`stoker load --verify`).
    UfsChecksum { path: String, off: u64, len: u64 },
    /// The direct-read table: answered with `DirectTable` and two
    /// descriptors (the table, read-only; the feedback area, read-write),
    /// or an error when direct reads are off.
    DirectTable,
    /// A read-only O_DIRECT descriptor of one segment file of one shard,
    /// answered with `Fd` and the descriptor (ENOENT once it is dropped).
    SegmentFd { shard: u32, seg_id: u32 },
    /// Start writing a new file (replacing any file at `path` once closed)
    /// on a mount with a write mode; answered with `Handle`. `mode`, `uid`
    /// and `gid` are the writer's (docs/SEMANTICS.md, "Writes").
    Create { path: String, mode: u32, uid: u32, gid: u32 },
    /// Append `len` bytes to an open handle at `off`, which must be the
    /// bytes written so far (writes are sequential). The bytes follow the
    /// frame on the stream, raw ([`write_request`]); `len` is at most
    /// [`WRITE_BYTES_MAX`]. Answered with `Done { files: 0, blocks: 0 }`.
    Write { handle: u64, off: u64, len: u64 },
    /// Close a handle: answered once the file is durable on the engine's
    /// disk (`async`, `cache-only`) or in under storage (`through`), with
    /// its attributes (`Attr`). The file is visible to readers from then on.
    Close { handle: u64 },
    /// Make what an open handle wrote so far durable: after a crash the
    /// file comes back with these bytes (and is persisted). Answered with
    /// `Done` once fsynced on the engine's disk.
    Fsync { handle: u64 },
    /// Drop an open handle and what it wrote (nothing becomes visible).
    Abort { handle: u64 },
    /// Remove a file (a written one, and its under-storage copy).
    Unlink { path: String },
    /// Rename a file within one mount (replacing `to`): a written file not
    /// yet persisted moves locally and is persisted under its new name; a
    /// stored one is moved in under storage. Answered with `Done`.
    Rename { from: String, to: String },
    /// Make a directory (in under storage at once; refused on cache-only
    /// mounts). Answered with `Done`.
    Mkdir { path: String },
    /// Remove an empty directory. Answered with `Done`.
    Rmdir { path: String },
    /// Wait until every written file at or under `path` is in under
    /// storage; answered with `Synced` (failures named there).
    Sync { path: String },
}

// Control answers are rare and travel as JSON: the size of the in-memory
// enum (EngineStats is the large one) does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    Welcome(Welcome),
    Attr(Attr),
    Entries { entries: Vec<DirEntry> },
    Stats(EngineStats),
    /// A policy or free command done: how many files and blocks it touched.
    Done { files: u64, blocks: u64 },
    PathStats(PathStats),
    /// Answer to `UfsChecksum`: bytes read and their `checksum()`.
    Checksum { len: u64, checksum: u64 },
    /// Sizes of the two direct-read areas whose descriptors come with it.
    DirectTable { table_bytes: u64, feedback_bytes: u64 },
    /// A descriptor comes with this answer.
    Fd,
    /// An open write handle (`Create`).
    Handle { handle: u64 },
    /// Answer to `Sync`: files persisted while waiting, and those that
    /// failed (path and last error); empty `failed` means all is persisted.
    Synced { persisted: u64, failed: Vec<(String, String)> },
    /// `errno` is a Linux errno (ENOENT, EIO, ...); `message` is one line for people.
    Error { errno: i32, message: String },
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Welcome {
    pub session: u64,
    pub shards: u32,
    pub block_bytes: u64,
    pub ring_entries: u32,
    /// Socket paths, one per shard; the client connects to each and sends
    /// its session id (u64 LE). The stream is then that shard's doorbell.
    pub shard_sockets: Vec<String>,
    /// Mounts whose block size is not `block_bytes` (`--mount-opt
    /// NAME:block_size=SIZE`, never larger than `block_bytes`). A client
    /// cuts reads of `/NAME/...` at this mount's block boundaries.
    #[serde(default)]
    pub mount_block_bytes: std::collections::BTreeMap<String, u64>,
}

impl Welcome {
    /// The block size of the mount `path` is under.
    pub fn block_bytes_for(&self, path: &str) -> u64 {
        block_bytes_for(&self.mount_block_bytes, self.block_bytes, path)
    }
}

/// The block size of the mount `path` (`/NAME/...`) is under: its own if
/// `per_mount` names it, else `default`.
pub fn block_bytes_for(per_mount: &std::collections::BTreeMap<String, u64>, default: u64, path: &str) -> u64 {
    if per_mount.is_empty() {
        return default;
    }
    let rest = path.trim_start_matches('/');
    let mount = rest.split('/').next().unwrap_or("");
    per_mount.get(mount).copied().unwrap_or(default)
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    File,
    Dir,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub kind: Kind,
    pub size: u64,
    pub mtime_ns: i64,
    /// Version token: ETag, or size+mtime for file systems. Changes when the object changes.
    pub version: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: u32,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub blocks: u64,
    pub segments: u64,
    pub hits: u64,
    pub misses: u64,
    pub ufs_bytes_read: u64,
    pub bytes_served: u64,
    /// Hits clients served themselves from the segment files (direct reads;
    /// also counted in `hits`, `bytes_served` and `device_bytes_read`).
    #[serde(default)]
    pub direct_hits: u64,
    /// Bytes read from segment files to serve hits (see read amplification:
    /// device_bytes_read / bytes_served).
    #[serde(default)]
    pub device_bytes_read: u64,
    pub evicted_blocks: u64,
    pub reinserted_blocks: u64,
    pub corrupt_records: u64,
    pub write_dropped: u64,
    pub inflight_requests: u64,
    /// Blocks dropped because their TTL passed.
    #[serde(default)]
    pub expired_blocks: u64,
    /// Blocks dropped to keep a mount within its quota.
    #[serde(default)]
    pub quota_evicted_blocks: u64,
    /// Hits served from the DRAM tier (`--memory-cache`), and its bytes.
    #[serde(default)]
    pub mem_hits: u64,
    /// Bytes of fetched blocks still waiting to be written to the store.
    #[serde(default)]
    pub pending_write_bytes: u64,
    #[serde(default)]
    pub mem_bytes: u64,
    /// Blocks fetched ahead of sequential readers, and read-aheads not
    /// started because too many were in flight.
    #[serde(default)]
    pub readahead_blocks: u64,
    #[serde(default)]
    pub readahead_dropped: u64,
    /// Segment writes that failed (a full disk, an I/O error); each pauses
    /// caching on the shard for a back-off (docs/ARCHITECTURE.md, "Failure
    /// handling").
    #[serde(default)]
    pub cache_write_errors: u64,
    /// Caching is paused after a write error: misses are served, not cached.
    #[serde(default)]
    pub caching_paused: bool,
    /// Ring entries a session posted beyond `ring_entries` in flight on
    /// this shard (the shard waits for its answers before taking more).
    #[serde(default)]
    pub session_inflight_limited: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    pub sealed_segments: u64,
    pub sealed_entries: u64,
    pub open_segment_records: u64,
    pub open_segment_bytes_scanned: u64,
    pub torn_bytes_dropped: u64,
    pub elapsed_us: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct PathStats {
    pub path: String,
    pub files: u64,
    pub bytes: u64,
    pub blocks: u64,
    pub cached_blocks: u64,
    /// cached_blocks / blocks (1.0 for a prefix with nothing to cache).
    pub cached_fraction: f64,
    pub pinned: bool,
    pub ttl_secs: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub blocks: u64,
    pub hits: u64,
    pub misses: u64,
    pub ufs_bytes_read: u64,
    pub bytes_served: u64,
    /// Bytes read from segment files to serve hits, all shards.
    #[serde(default)]
    pub device_bytes_read: u64,
    pub sessions: u64,
    pub shards: Vec<ShardStats>,
    pub recovery: RecoveryStats,
    /// The namespace's mounts and their settings.
    #[serde(default)]
    pub mounts: Vec<MountInfo>,
    /// Written files not yet in under storage (`async` mounts), and their bytes.
    #[serde(default)]
    pub persist_pending_files: u64,
    #[serde(default)]
    pub persist_pending_bytes: u64,
    /// Of those, files whose last persist attempt failed (still kept locally).
    #[serde(default)]
    pub persist_failed_files: u64,
    /// This node in its cluster (`--cluster`), absent when alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStats>,
}

/// A node's view of its cluster and its peer-read counters (`stoker stat`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterStats {
    pub node_id: String,
    /// Whether etcd answers now (false: serving with the last list seen).
    pub etcd_ok: bool,
    pub members: Vec<ClusterMember>,
    /// Blocks other members asked this node for.
    pub served: PeerServed,
    /// Blocks this node asked their owners for.
    pub asked: PeerAsked,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMember {
    pub id: String,
    pub addr: String,
    pub capacity_bytes: u64,
    /// `up` (in the member list), or `self`.
    pub state: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerServed {
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Connections refused (bad token, too many).
    pub refused: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerAsked {
    /// Blocks an owner sent.
    pub hits: u64,
    pub bytes: u64,
    /// Asks that failed (owner down, slow, refused, or it answered an error).
    pub errors: u64,
    /// Blocks read from under storage here because the owner could not
    /// give them (every error is a fallback; a read never fails for a peer).
    pub fallbacks: u64,
}

/// One mount as `stoker stat` shows it. Option values of secret keys are
/// `***`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct MountInfo {
    pub name: String,
    pub uri: String,
    /// Under-storage options, secrets masked.
    pub options: Vec<(String, String)>,
    /// Metadata sync interval (`60s`, `never`).
    pub sync: String,
    pub read_only: bool,
    /// Write mode (`async`, `through`, `cache-only`), absent when read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<String>,
    pub block_bytes: u64,
    pub readahead_blocks: u64,
    /// In a cluster: blocks read from their owner are kept here too.
    #[serde(default)]
    pub peer_copy: bool,
    /// Under-storage requests allowed in flight now (lowered while the
    /// store throttles).
    pub inflight_limit: u64,
}

/// The checksum `UfsChecksum` answers with (xxh3-64); clients hash the bytes
/// they read through the cache the same way to compare.
pub fn checksum(data: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(data)
}

/// Bytes one `Write` request carries at most (after its frame, raw).
pub const WRITE_BYTES_MAX: usize = 1 << 20;

/// A `Write` request of `data` at `off` as it goes on the stream: its frame,
/// then the bytes (one buffer: one send for the whole request).
pub fn write_request(handle: u64, off: u64, data: &[u8]) -> Vec<u8> {
    debug_assert!(data.len() <= WRITE_BYTES_MAX);
    let mut out = encode(&Request::Write { handle, off, len: data.len() as u64 });
    out.extend_from_slice(data);
    out
}

/// Write one frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)
}

/// Write one frame with descriptors attached (SCM_RIGHTS on its first byte).
pub fn send_frame_fds<T: Serialize>(s: &std::os::unix::net::UnixStream, msg: &T, fds: &[std::os::fd::RawFd]) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let frame = encode(msg);
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let n = sendmsg::<()>(s.as_raw_fd(), &[io::IoSlice::new(&frame)], cmsgs, MsgFlags::empty(), None).map_err(io::Error::from)?;
    (&*s).write_all(&frame[n..])
}

/// Read one frame, keeping any descriptors that arrive with it in `fds`
/// (at most `fds_max`; more are closed at once). `Ok(None)` on a clean end
/// of stream before a frame starts.
pub fn recv_frame_fds<T: for<'de> Deserialize<'de>>(
    s: &std::os::unix::net::UnixStream,
    fds: &mut Vec<std::os::fd::OwnedFd>,
    fds_max: usize,
) -> io::Result<Option<T>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [io::IoSliceMut::new(&mut len[got..])];
        let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC).map_err(io::Error::from)?;
        if msg.bytes == 0 {
            return if got == 0 { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel just installed this descriptor for us.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    if fds.len() < fds_max {
                        fds.push(fd);
                    }
                }
            }
        }
        got += msg.bytes;
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "control frame too large"));
    }
    let mut body = vec![0u8; len];
    (&*s).read_exact(&mut body)?;
    decode(&body).map(Some)
}

/// Read one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub fn read_frame<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "control frame too large"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Decode a frame body already read by an async reader.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> io::Result<T> {
    serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Encode a frame (length prefix included) for an async writer.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = serde_json::to_vec(msg).expect("control messages always serialize");
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Stat { path: "/m/a".into() }).unwrap();
        let got: Request = read_frame(&mut buf.as_slice()).unwrap().unwrap();
        assert!(matches!(got, Request::Stat { path } if path == "/m/a"));
        let empty: Option<Request> = read_frame(&mut &[][..]).unwrap();
        assert!(empty.is_none());
    }

    #[test]
    fn a_write_request_is_its_frame_then_the_raw_bytes() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 37 + 11) as u8).collect();
        let wire = write_request(7, 4096, &data);
        let mut r = wire.as_slice();
        let got: Request = read_frame(&mut r).unwrap().unwrap();
        assert!(matches!(got, Request::Write { handle: 7, off: 4096, len: 70_000 }), "{got:?}");
        assert_eq!(r, &data[..]);
    }
}
