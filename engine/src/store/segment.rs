//! Segment files and the writer.
//!
//! Owns the set of segment files (`Segments`: sealed ones plus the one open
//! segment) and the single writer task that appends records: it coalesces
//! queued records into one DMA buffer (up to `BATCH_BYTES`) per `write_at`,
//! assigns offsets in queue order, updates the index only after the write
//! completed, and rolls to a new segment when the next record does not fit
//! (fdatasync, write the `.idx` archive, open the next id, enforce capacity).
//!
//! Nothing else writes to segment files, and this module never rewrites a
//! byte it wrote before (files are append-only; recovery may truncate a torn
//! tail of the open segment).

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use glommio::io::{DmaFile, OpenOptions};
use glommio::sync::StaticPermit;

use super::format::{self, data_file_name, idx_file_name, idx_tmp_file_name, RecordHeader, ALIGN, FLAG_TOMBSTONE};
use super::index::{encode_idx, IdxEntry, Location, SegmentIndex};
use super::{evict, Result, Shared, StoreError};

/// Target size of one coalesced write.
const BATCH_BYTES: u64 = 1 << 20;

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

/// One record waiting for the writer.
pub(super) struct Pending {
    pub key_hash: u64,
    pub flags: u16,
    /// The encoded record, `record_len` bytes.
    pub bytes: Vec<u8>,
    /// Completion for `put`; `None` for tombstones (fire and forget).
    pub done: Option<oneshot::Sender<Result<()>>>,
    /// Queue-bytes permit, released when the record leaves the queue.
    pub _permit: Option<StaticPermit>,
}

impl Pending {
    /// The tombstone record of `key_hash` (fire and forget).
    pub fn tombstone(key_hash: u64) -> Pending {
        let header = RecordHeader::tombstone(key_hash);
        let mut bytes = vec![0u8; header.record_len() as usize];
        format::encode_record(&header, &[], &[], &mut bytes);
        Pending { key_hash, flags: FLAG_TOMBSTONE, bytes, done: None, _permit: None }
    }
}

pub(super) enum WriterMsg {
    Put(Pending),
    Flush(oneshot::Sender<Result<()>>),
}

/// The writer task: one per store, runs until the store is dropped.
pub(super) async fn run_writer(shared: Rc<Shared>, mut rx: mpsc::UnboundedReceiver<WriterMsg>) {
    let mut carry: Option<WriterMsg> = None;
    loop {
        let msg = match carry.take() {
            Some(m) => m,
            None => match rx.next().await {
                Some(m) => m,
                None => return,
            },
        };
        match msg {
            WriterMsg::Flush(reply) => {
                if !shared.owed_tombstones.borrow().is_empty() {
                    write_batch(&shared, Vec::new()).await;
                }
                let r = sync_open(&shared).await;
                let _ = reply.send(r);
            }
            WriterMsg::Put(first) => {
                let mut bytes = first.bytes.len() as u64;
                let mut batch = vec![first];
                while bytes < BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(WriterMsg::Put(p)) => {
                            bytes += p.bytes.len() as u64;
                            batch.push(p);
                        }
                        Ok(other) => {
                            carry = Some(other);
                            break;
                        }
                        // Empty queue, or the store is gone (handled next loop).
                        _ => break,
                    }
                }
                write_batch(&shared, batch).await;
            }
        }
    }
}

/// Writes `batch` in queue order, rolling segments as needed, then indexes
/// each record and completes its put. A failed write or roll fails the rest
/// of the batch and pauses writes (`pause.rs`); while paused, a batch fails
/// at once without touching the disk.
async fn write_batch(shared: &Rc<Shared>, batch: Vec<Pending>) {
    if shared.pause.holding(std::time::Instant::now()) {
        let e = StoreError::Full("caching paused after a segment write error".into());
        for p in batch {
            fail(shared, p, &e);
        }
        return;
    }
    // Tombstones owed from a failed batch go first: they were asked for
    // before anything in this batch.
    let owed = std::mem::take(&mut *shared.owed_tombstones.borrow_mut());
    let batch: Vec<Pending> = owed.into_iter().map(Pending::tombstone).chain(batch).collect();
    let mut rest = batch.into_iter().peekable();
    while let Some(first_len) = rest.peek().map(|p| p.bytes.len() as u64) {
        let needs_roll = {
            let segs = shared.segs.borrow();
            segs.open.end + first_len > shared.segment_bytes
        };
        if needs_roll {
            if let Err(e) = roll(shared).await {
                shared.pause.failed(&format!("rolling to a new segment: {e}"));
                for p in rest {
                    fail(shared, p, &e);
                }
                return;
            }
        }
        // Take the longest prefix that fits in the open segment.
        let (seg_id, file, start) = {
            let segs = shared.segs.borrow();
            (segs.open.id, segs.open.file.clone(), segs.open.end)
        };
        let mut run = Vec::new();
        let mut end = start;
        while let Some(p) = rest.peek() {
            let len = p.bytes.len() as u64;
            if end + len > shared.segment_bytes || (!run.is_empty() && end - start + len > BATCH_BYTES.max(len)) {
                break;
            }
            end += len;
            run.extend(rest.next());
        }
        if let Err(e) = write_run(shared, &file, start, end, &run).await {
            // Nothing of the run is indexed or counted; the open segment's
            // end is back at `start` (see `write_at_end`).
            shared.pause.failed(&format!("segment {seg_id} at {start}: {e}"));
            for p in run.into_iter().chain(rest) {
                fail(shared, p, &e);
            }
            return;
        }
        shared.pause.succeeded();
        let mut index = shared.index.borrow_mut();
        let mut segs = shared.segs.borrow_mut();
        let mut at = start;
        for p in run {
            let len_units = (p.bytes.len() as u64 / ALIGN) as u32;
            let loc = Location { seg_id, offset_units: (at / ALIGN) as u32, len_units, accessed: false };
            if p.flags & FLAG_TOMBSTONE != 0 {
                index.remove(&p.key_hash);
            } else {
                index.insert(p.key_hash, loc.pack());
            }
            if segs.open.id == seg_id {
                segs.open.entries.push(IdxEntry {
                    key_hash: p.key_hash,
                    offset_units: loc.offset_units,
                    len_units: len_units as u16,
                    flags: p.flags,
                });
            }
            at += p.bytes.len() as u64;
            if let Some(done) = p.done {
                let _ = done.send(Ok(()));
            }
        }
    }
}

/// Completes a put that could not be written with `e`; a tombstone is kept
/// (as its key) to be written ahead of the next batch instead.
fn fail(shared: &Shared, p: Pending, e: &StoreError) {
    if p.flags & FLAG_TOMBSTONE != 0 {
        shared.owed_tombstones.borrow_mut().push(p.key_hash);
    }
    if let Some(done) = p.done {
        let _ = done.send(Err(e.duplicate()));
    }
}

/// Copies the run into one DMA buffer and writes it at `start`.
async fn write_run(shared: &Rc<Shared>, file: &Rc<DmaFile>, start: u64, end: u64, run: &[Pending]) -> Result<()> {
    let len = (end - start) as usize;
    let mut buf = file.alloc_dma_buffer(len);
    let mut at = 0;
    for p in run {
        buf.as_bytes_mut()[at..at + p.bytes.len()].copy_from_slice(&p.bytes);
        at += p.bytes.len();
    }
    write_at_end(shared, file, start, buf).await
}

/// Writes `buf` at `start`, the open segment's end, moving the end past it.
///
/// The end moves before the write is issued (readers of `used_bytes` see
/// bytes on their way) and goes back to `start` if the write fails or is
/// short, so a failed append is never counted and the next one starts at
/// the same aligned offset. What a short write left past `start` is cut off
/// (best effort): a crash before that is a torn tail that recovery cuts.
async fn write_at_end(shared: &Rc<Shared>, file: &Rc<DmaFile>, start: u64, buf: glommio::io::DmaBuffer) -> Result<()> {
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

/// Seals the open segment (fdatasync + `.idx`), opens the next one and makes
/// room for it under the capacity.
async fn roll(shared: &Rc<Shared>) -> Result<()> {
    sync_open(shared).await?;
    let (id, end, entries) = {
        let segs = shared.segs.borrow();
        (segs.open.id, segs.open.end, segs.open.entries.clone())
    };
    write_idx(&shared.dir, &SegmentIndex { seg_id: id, data_bytes: end, entries }).await?;
    let next_id = id.checked_add(1).ok_or_else(|| StoreError::Full("segment ids exhausted".into()))?;
    // Ids only grow, so a file of the next id can only be what a roll that
    // failed half-way (a full disk) left: empty and never indexed.
    match std::fs::remove_file(shared.dir.join(data_file_name(next_id))) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let file = create_segment(&shared.dir, next_id).await?;
    {
        let mut segs = shared.segs.borrow_mut();
        let new_open = OpenSegment { id: next_id, file, end: 0, entries: Vec::new() };
        let old = std::mem::replace(&mut segs.open, new_open);
        segs.sealed.insert(old.id, SealedSegment { file: old.file, bytes: old.end });
        segs.sealed_bytes += old.end;
    }
    tracing::debug!(sealed = id, open = next_id, "store: rolled segment");
    evict::enforce_capacity(shared).await
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
