//! The engine's side of direct reads (see `stoker_proto::direct` and
//! docs/ARCHITECTURE.md "Direct reads"): the two shared areas, the
//! descriptors handed to clients, and the epoch bumps that void entries.
//!
//! Shards publish where they served each block from; a client then reads
//! later hits of it from the segment file itself (whole small files, and
//! random ranges of at most 1 MiB of larger ones). Everything a
//! client reads that way it verifies against the record's checksums and
//! key, so the table is a hint, never a source of truth.

use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use stoker_proto::control::{send_frame_fds, Response};
use stoker_proto::direct::{Feedback, Shape, Table};

/// Entries of the table by default (64 MiB of shared memory at most, a
/// page touched only when an entry on it is written).
pub const ENTRIES_DEFAULT: u64 = 1 << 20;

pub struct DirectAreas {
    table_file: File,
    feedback_file: File,
    _table_map: MmapRaw,
    _feedback_map: MmapRaw,
    pub table: Table,
    pub feedback: Feedback,
    /// Each shard's segment directory, for `SegmentFd`.
    shard_dirs: Vec<PathBuf>,
}

fn memfd(name: &std::ffi::CStr, bytes: usize) -> std::io::Result<File> {
    // SAFETY: a plain syscall; the descriptor is ours.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nothing else.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.set_len(bytes as u64)?;
    Ok(f)
}

impl DirectAreas {
    pub fn new(shard_dirs: Vec<PathBuf>, entries: u64) -> std::io::Result<DirectAreas> {
        let shape = Shape::new(shard_dirs.len() as u32, entries);
        let table_file = memfd(c"stoker-direct-table", shape.table_bytes())?;
        let feedback_file = memfd(c"stoker-direct-feedback", shape.feedback_bytes())?;
        let table_map = MmapOptions::new().map_raw(&table_file)?;
        let feedback_map = MmapOptions::new().map_raw(&feedback_file)?;
        // SAFETY: fresh zeroed page-aligned mappings of the shape's sizes,
        // kept alive in the struct beside the views.
        let (table, feedback) =
            unsafe { (Table::init(table_map.as_mut_ptr(), shape), Feedback::new(feedback_map.as_mut_ptr(), shape)) };
        Ok(DirectAreas { table_file, feedback_file, _table_map: table_map, _feedback_map: feedback_map, table, feedback, shard_dirs })
    }

    /// Void every entry of every shard (a file changed, a mount's settings did).
    pub fn bump_all(&self) {
        for s in 0..self.table.shape().shards {
            self.table.bump_epoch(s);
        }
    }

    /// Answer `DirectTable`: the table read-only, the feedback area read-write.
    pub fn send_areas(&self, conn: &UnixStream) -> std::io::Result<()> {
        // A new read-only open of the table's memfd: the client can map it
        // only for reading.
        let ro = std::fs::OpenOptions::new()
            .read(true)
            .open(format!("/proc/self/fd/{}", self.table_file.as_raw_fd()))?;
        let shape = self.table.shape();
        let resp = Response::DirectTable { table_bytes: shape.table_bytes() as u64, feedback_bytes: shape.feedback_bytes() as u64 };
        send_frame_fds(conn, &resp, &[ro.as_raw_fd(), self.feedback_file.as_raw_fd()])
    }

    /// Answer `SegmentFd`: a read-only O_DIRECT descriptor of the segment,
    /// or ENOENT (a dropped segment, a bad shard).
    pub fn send_segment(&self, conn: &UnixStream, shard: u32, seg_id: u32) -> std::io::Result<()> {
        let opened = self.shard_dirs.get(shard as usize).map(|d| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(d.join(stoker_proto::format::data_file_name(seg_id)))
        });
        match opened {
            Some(Ok(f)) => send_frame_fds(conn, &Response::Fd, &[f.as_raw_fd()]),
            Some(Err(e)) => send_frame_fds(
                conn,
                &Response::Error { errno: e.raw_os_error().unwrap_or(libc::EIO), message: format!("segment {seg_id} of shard {shard}: {e}") },
                &[],
            ),
            None => send_frame_fds(conn, &Response::Error { errno: libc::ENOENT, message: format!("no shard {shard}") }, &[]),
        }
    }
}
