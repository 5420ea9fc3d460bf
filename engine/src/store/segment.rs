//! Segment files: the set of them (`Segments`: sealed ones plus the one
//! open segment) and every I/O on them — create, open, append at the open
//! segment's end, fdatasync, write a `.idx` archive.
//!
//! Only I/O: this module decides nothing about what to keep (`evict.rs`)
//! and never calls up into the writer or eviction. Nothing else writes to
//! segment files, and this module never rewrites a byte it wrote before
//! (files are append-only; recovery may truncate a torn tail of the open
//! segment).

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

use super::format::{data_file_name, idx_file_name, idx_tmp_file_name, ALIGN};
use super::index::{encode_idx, IdxEntry, SegmentIndex};
use super::{Result, Shared, StoreError};

/// A sealed segment: immutable data file with its `.idx` archive.
pub(super) struct SealedSegment {
    pub file: Rc<DmaFile>,
    pub bytes: u64,
}

/// The segment currently appended to.
pub(super) struct OpenSegment {
    pub id: u32,
    pub file: Rc<DmaFile>,
    /// Offset where the next record goes (== bytes reserved or written).
    pub end: u64,
    /// Records written so far, in file order; becomes the `.idx` at seal.
    pub entries: Vec<IdxEntry>,
}

pub(super) struct Segments {
    pub sealed: BTreeMap<u32, SealedSegment>,
    pub sealed_bytes: u64,
    pub open: OpenSegment,
}

impl Segments {
    pub fn file(&self, seg_id: u32) -> Option<Rc<DmaFile>> {
        if seg_id == self.open.id {
            return Some(self.open.file.clone());
        }
        self.sealed.get(&seg_id).map(|s| s.file.clone())
    }

    pub fn used_bytes(&self) -> u64 {
        self.sealed_bytes + self.open.end
    }

    pub fn count(&self) -> u64 {
        self.sealed.len() as u64 + 1
    }
}

/// Writes `buf` at `start`, the open segment's end, moving the end past it.
///
/// The end moves before the write is issued (readers of `used_bytes` see
/// bytes on their way) and goes back to `start` if the write fails or is
/// short, so a failed append is never counted and the next one starts at
/// the same aligned offset. What a short write left past `start` is cut off
/// (best effort): a crash before that is a torn tail that recovery cuts.
pub(super) async fn write_at_end(shared: &Rc<Shared>, file: &Rc<DmaFile>, start: u64, buf: glommio::io::DmaBuffer) -> Result<()> {
    let len = buf.len();
    let end = start.checked_add(len as u64).ok_or_else(|| StoreError::InvalidArgument("segment offset overflow".into()))?;
    shared.segs.borrow_mut().open.end = end;
    let result = match file.write_at(buf, start).await {
        Ok(written) if written == len => return Ok(()),
        Ok(written) => Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short segment write: {written} of {len} bytes"),
        ))),
        Err(e) => Err(StoreError::from(e)),
    };
    {
        let mut segs = shared.segs.borrow_mut();
        if Rc::ptr_eq(&segs.open.file, file) {
            segs.open.end = start;
        }
    }
    if let Err(e) = file.truncate(start).await {
        tracing::debug!(error = %e, start, "store: cutting a failed append off the segment");
    }
    result
}

/// Appends already-encoded records (reinsertion during reclaim) to the open
/// segment without rolling. The caller checked that they fit.
pub(super) async fn append_raw(shared: &Rc<Shared>, records: &[u8]) -> Result<(u32, u64)> {
    let (seg_id, file, start) = {
        let segs = shared.segs.borrow();
        (segs.open.id, segs.open.file.clone(), segs.open.end)
    };
    let mut buf = file.alloc_dma_buffer(records.len());
    buf.as_bytes_mut().copy_from_slice(records);
    write_at_end(shared, &file, start, buf).await?;
    Ok((seg_id, start))
}

/// fdatasync of the open segment.
pub(super) async fn sync_open(shared: &Rc<Shared>) -> Result<()> {
    let file = shared.segs.borrow().open.file.clone();
    file.fdatasync().await?;
    Ok(())
}

/// Makes glommio decide about the io_uring poll ring on a file that has data.
///
/// glommio 0.9 probes poll support (once per device and thread) with a 4 KiB
/// read of the first DmaFile opened; on an empty file that read returns 0 and
/// "succeeds", so polled reads are enabled on devices that refuse them
/// (EOPNOTSUPP, seen on virtio disks). Opening a non-empty file first gives a
/// truthful probe. Must run before any segment file is opened.
pub(super) async fn probe_device(dir: &Path) -> Result<()> {
    let path = dir.join("iopoll-probe.tmp");
    std::fs::write(&path, vec![0u8; ALIGN as usize])?;
    let file = DmaFile::open(&path).await?;
    file.close().await?;
    std::fs::remove_file(&path)?;
    Ok(())
}

/// Creates a new, empty segment data file opened for reading and appending.
pub(super) async fn create_segment(dir: &Path, id: u32) -> Result<Rc<DmaFile>> {
    let file = OpenOptions::new().read(true).write(true).create_new(true).dma_open(dir.join(data_file_name(id))).await?;
    sync_dir(dir).await?;
    Ok(Rc::new(file))
}

/// Opens an existing segment data file. `writable` for the open segment.
pub(super) async fn open_segment(dir: &Path, id: u32, writable: bool) -> Result<Rc<DmaFile>> {
    let file = OpenOptions::new().read(true).write(writable).dma_open(dir.join(data_file_name(id))).await?;
    Ok(Rc::new(file))
}

/// Writes `seg-N.idx`: to a temporary name, fdatasync, rename, sync the dir.
pub(super) async fn write_idx(dir: &Path, index: &SegmentIndex) -> Result<()> {
    let bytes = encode_idx(index);
    let tmp = dir.join(idx_tmp_file_name(index.seg_id));
    let file = OpenOptions::new().write(true).create(true).truncate(true).dma_open(&tmp).await?;
    let mut buf = file.alloc_dma_buffer(bytes.len());
    buf.as_bytes_mut().copy_from_slice(&bytes);
    let written = file.write_at(buf, 0).await?;
    if written != bytes.len() {
        return Err(StoreError::Io(std::io::Error::new(std::io::ErrorKind::WriteZero, "short idx write")));
    }
    file.fdatasync().await?;
    file.rename(dir.join(idx_file_name(index.seg_id))).await?;
    file.close().await?;
    sync_dir(dir).await
}

async fn sync_dir(dir: &Path) -> Result<()> {
    let d = glommio::io::Directory::open(dir).await?;
    d.sync().await?;
    d.close().await?;
    Ok(())
}
