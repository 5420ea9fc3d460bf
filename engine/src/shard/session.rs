//! The engine's view of one client's shared-memory area.
//!
//! The client creates a memfd, sizes it, seals it against shrinking (so the
//! engine can never fault on a truncated mapping) and passes it over the
//! control socket. Every offset and length the client posts is checked here
//! before the engine touches the mapping; a client can only hurt itself.

use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use stoker_proto::ring::{Consumer, CqEntry, Layout, Producer, SqEntry};

pub struct SessionArea {
    pub id: u64,
    map: MmapRaw,
    layout: Layout,
}

impl SessionArea {
    pub fn from_fd(id: u64, fd: OwnedFd, shards: u32) -> Result<SessionArea, String> {
        // SAFETY: fcntl on a descriptor we own, no pointers involved.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err("shared area must be a memfd sealed with F_SEAL_SHRINK".into());
        }
        let file = File::from(fd);
        let len = file.metadata().map_err(|e| format!("shared area: {e}"))?.len();
        let map = MmapOptions::new().map_raw(&file).map_err(|e| format!("mapping shared area: {e}"))?;
        // SAFETY: `map` is a live shared mapping of `len` bytes, page aligned.
        let layout = unsafe { Layout::read_header(map.as_ptr(), len) }?;
        if layout.shards != shards {
            return Err(format!("shared area laid out for {} shards, engine has {shards}", layout.shards));
        }
        Ok(SessionArea { id, map, layout })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// # Safety
    /// At most one consumer per shard SQ may exist (the shard's session loop).
    pub unsafe fn sq(&self, shard: u32) -> Consumer<SqEntry> {
        let off = self.layout.sq_offset(shard) as usize;
        // SAFETY: the offset is inside the mapping (checked by read_header);
        // the caller guarantees a single consumer.
        unsafe { Consumer::new(self.map.as_mut_ptr().add(off), self.layout.ring_entries) }
    }

    /// # Safety
    /// At most one producer per shard CQ may exist.
    pub unsafe fn cq(&self, shard: u32) -> Producer<CqEntry> {
        let off = self.layout.cq_offset(shard) as usize;
        // SAFETY: as for sq().
        unsafe { Producer::new(self.map.as_mut_ptr().add(off), self.layout.ring_entries) }
    }

    fn check(&self, off: u64, len: u64) -> bool {
        off.checked_add(len).is_some_and(|end| end <= self.layout.data_bytes)
    }

    /// Copy bytes out of the data area; None when the range is outside it.
    pub fn read_data(&self, off: u64, len: u64) -> Option<Vec<u8>> {
        if !self.check(off, len) {
            return None;
        }
        let mut out = vec![0u8; len as usize];
        // SAFETY: the range is inside the data area (checked above); the
        // client may write it concurrently, which can only garble its own request.
        unsafe {
            let src = self.map.as_ptr().add((self.layout.data_offset + off) as usize);
            std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), len as usize);
        }
        Some(out)
    }

    /// Copy bytes into the data area; false when the range is outside it.
    pub fn write_data(&self, off: u64, bytes: &[u8]) -> bool {
        if !self.check(off, bytes.len() as u64) {
            return false;
        }
        // SAFETY: the range is inside the data area (checked above).
        unsafe {
            let dst = self.map.as_mut_ptr().add((self.layout.data_offset + off) as usize);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
        }
        true
    }
}
