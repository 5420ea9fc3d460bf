//! The writer: the one task per store that appends records.
//!
//! It coalesces queued records into one DMA buffer (up to `BATCH_BYTES`) per
//! write, assigns offsets in queue order, updates the index only after the
//! write completed, and rolls to a new segment when the next record does not
//! fit (fdatasync, write the `.idx` archive, open the next id), then asks
//! `evict.rs` to make room. It is the only caller of eviction on the write
//! path; the segment I/O it uses (`segment.rs`) never calls back up.

use std::rc::Rc;

use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use glommio::io::DmaFile;
use glommio::sync::StaticPermit;

use super::format::{self, data_file_name, RecordHeader, ALIGN, FLAG_TOMBSTONE};
use super::index::{IdxEntry, Location, SegmentIndex};
use super::segment::{create_segment, sync_open, write_at_end, write_idx, OpenSegment, SealedSegment};
use super::{evict, Result, Shared, StoreError};

/// Target size of one coalesced write.
const BATCH_BYTES: u64 = 1 << 20;

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
