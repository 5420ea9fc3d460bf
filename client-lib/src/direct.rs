//! Direct reads: any range of a cached block (a whole small file, a random
//! range or the next piece of a stream over a large one) read by the client
//! itself from the engine's segment file, in the caller's thread — one
//! device read, no round trip through the engine (see
//! `stoker_proto::direct`). A stream that reaches a block not cached goes
//! to the engine, whose read-ahead takes the stream up from there.
//!
//! The engine publishes where it served each such block from; the client
//! looks the (path, block) up, reads the record with O_DIRECT from a
//! read-only descriptor the engine handed over, and serves it only if the
//! record's header, key and the crc32c of every sub-block it touches check
//! out. Anything else (no entry, a void or stale one, a segment gone, a
//! short read, a failed check) is simply not a direct hit: the read goes
//! through the engine as before, which also republishes the entry.

use crate::session::connect_control;
use crate::hugebuf::HugeBuf;
use crate::options::Options;
use memmap2::{MmapOptions, MmapRaw};
use parking_lot::Mutex;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use stoker_proto::control::{recv_frame_fds, write_frame, Request, Response};
use stoker_proto::direct::{now_ns, tag, Feedback, Table};
use stoker_proto::format::{align_down, align_up, check_head, check_sub_blocks, RecordView, FORMAT_VERSION, MAX_RECORD_LEN, SUB_BLOCK};
use stoker_proto::key::BlockKey;

/// Segment descriptors a client keeps open at most (then it starts over).
const SEGMENT_FDS_MAX: usize = 4096;
/// A range further than this from the record's head is read apart from it.
const JOIN_GAP: u64 = 64 << 10;
/// Bytes of verified record heads a client keeps (those of large blocks,
/// read apart from their data), so a small range of one is one read.
const HEADS_BYTES_MAX: usize = 16 << 20;

pub(crate) struct Direct {
    table: Table,
    feedback: Feedback,
    _table_map: MmapRaw,
    _feedback_map: MmapRaw,
    socket: String,
    opts: Options,
    segs: Mutex<Segs>,
    /// The control connection segment descriptors come over.
    conn: Mutex<Option<UnixStream>>,
}

#[derive(Default)]
struct Segs {
    open: HashMap<(u32, u32), Arc<File>>,
    /// Segments the engine said are gone.
    gone: HashSet<(u32, u32)>,
    /// Per shard, the table's `dropped` count `open` and `gone` agree with.
    seen: Vec<u64>,
    /// Verified heads by (shard, segment, offset), and their bytes.
    heads: HashMap<(u32, u32, u64), Arc<[u8]>>,
    head_bytes: usize,
}

thread_local! {
    static HEAD: RefCell<HugeBuf> = const { RefCell::new(HugeBuf::new()) };
    static BODY: RefCell<HugeBuf> = const { RefCell::new(HugeBuf::new()) };
}

/// The range a direct read wants of one block: `[off, off + len)` from the
/// block's start, at most `max` bytes of it, and with `whole` only if the
/// block is the whole object (a whole-file read).
#[derive(Clone, Copy)]
pub(crate) struct Want {
    pub off: u64,
    pub len: u64,
    pub max: u64,
    pub whole: bool,
}

/// Send `req` on `c` and read the answer with any descriptors it carries.
fn call_fds(c: &UnixStream, req: &Request, fds_max: usize) -> Option<(Response, Vec<std::os::fd::OwnedFd>)> {
    write_frame(&mut crate::session::NoSigpipe(c), req).ok()?;
    let mut fds = Vec::new();
    let r = recv_frame_fds::<Response>(c, &mut fds, fds_max).ok()??;
    Some((r, fds))
}

impl Direct {
    /// Map the engine's direct-read table; None when the engine has direct
    /// reads off, or anything about the table is not right (reads then all
    /// go through the engine).
    pub(crate) fn connect(socket: &str, opts: &Options, shards: u32) -> Option<Direct> {
        let c = connect_control(socket, opts).ok()?;
        let (resp, mut fds) = call_fds(&c, &Request::DirectTable, 2)?;
        let Response::DirectTable { table_bytes, feedback_bytes } = resp else { return None };
        if fds.len() != 2 {
            return None;
        }
        let feedback_file = File::from(fds.pop()?);
        let table_file = File::from(fds.pop()?);
        let (table_len, feedback_len) = (usize::try_from(table_bytes).ok()?, usize::try_from(feedback_bytes).ok()?);
        if table_file.metadata().ok()?.len() < table_bytes || feedback_file.metadata().ok()?.len() < feedback_bytes {
            return None;
        }
        let table_map = MmapOptions::new().len(table_len).map_raw_read_only(&table_file).ok()?;
        let feedback_map = MmapOptions::new().len(feedback_len).map_raw(&feedback_file).ok()?;
        // SAFETY: page-aligned mappings of the lengths given, kept alive in
        // the struct beside the views; all access is through atomics.
        let table = unsafe { Table::open(table_map.as_mut_ptr(), table_len) }.ok()?;
        let shape = table.shape();
        if shape.shards != shards || shape.feedback_bytes() > feedback_len {
            return None;
        }
        // SAFETY: as above; the length was checked against the shape.
        let feedback = unsafe { Feedback::new(feedback_map.as_mut_ptr(), shape) };
        Some(Direct {
            table,
            feedback,
            _table_map: table_map,
            _feedback_map: feedback_map,
            socket: socket.to_string(),
            opts: opts.clone(),
            segs: Mutex::new(Segs { seen: vec![0; shards as usize], ..Default::default() }),
            conn: Mutex::new(Some(c)),
        })
    }

    /// The segment file `(shard, seg_id)`, asking the engine for it once.
    fn segment(&self, shard: u32, seg_id: u32) -> Option<Arc<File>> {
        {
            let mut segs = self.segs.lock();
            let dropped = self.table.dropped(shard);
            if segs.seen[shard as usize] != dropped {
                // The shard deleted segments: let go of every descriptor of
                // it (holding one would keep the space in use).
                segs.open.retain(|k, _| k.0 != shard);
                segs.gone.retain(|k| k.0 != shard);
                segs.heads.retain(|k, _| k.0 != shard);
                segs.head_bytes = segs.heads.values().map(|h| h.len()).sum();
                segs.seen[shard as usize] = dropped;
            }
            if let Some(f) = segs.open.get(&(shard, seg_id)) {
                return Some(f.clone());
            }
            if segs.gone.contains(&(shard, seg_id)) {
                return None;
            }
        }
        let mut conn = self.conn.lock();
        if conn.is_none() {
            *conn = connect_control(&self.socket, &self.opts).ok();
        }
        let c = conn.as_mut()?;
        let got = call_fds(c, &Request::SegmentFd { shard, seg_id }, 1);
        let mut segs = self.segs.lock();
        match got {
            Some((Response::Fd, mut fds)) if fds.len() == 1 => {
                let f = Arc::new(File::from(fds.pop()?));
                if segs.open.len() >= SEGMENT_FDS_MAX {
                    segs.open.clear();
                }
                segs.open.insert((shard, seg_id), f.clone());
                Some(f)
            }
            Some((Response::Error { .. }, _)) => {
                if segs.gone.len() >= SEGMENT_FDS_MAX {
                    segs.gone.clear();
                }
                segs.gone.insert((shard, seg_id));
                None
            }
            _ => {
                // The connection is in an unknown state: a new one next time.
                *conn = None;
                None
            }
        }
    }

    /// Forget a descriptor a read failed on.
    fn forget(&self, shard: u32, seg_id: u32) {
        self.segs.lock().open.remove(&(shard, seg_id));
    }

    /// A verified head of the record at `(shard, seg_id, offset)`, if kept.
    fn cached_head(&self, shard: u32, seg_id: u32, offset: u64) -> Option<Arc<[u8]>> {
        self.segs.lock().heads.get(&(shard, seg_id, offset)).cloned()
    }

    fn keep_head(&self, shard: u32, seg_id: u32, offset: u64, head: &[u8]) {
        let mut segs = self.segs.lock();
        if segs.head_bytes + head.len() > HEADS_BYTES_MAX {
            segs.heads.clear();
            segs.head_bytes = 0;
        }
        segs.head_bytes += head.len();
        segs.heads.insert((shard, seg_id, offset), Arc::from(head));
    }

    /// Serve `[off, off + len)` of block `block` of `path` (owned by
    /// `shard`) into `dst` from the segment file, if the table knows it and
    /// every check passes: (bytes placed, object size).
    pub(crate) fn read(&self, shard: u32, path: &str, block: u64, off: u64, len: u64, dst: &mut [u8]) -> Option<(u64, u64)> {
        let want = Want { off, len, max: dst.len() as u64, whole: false };
        self.read_with(shard, path, block, want, &mut |b| dst[..b.len()].copy_from_slice(b))
    }

    /// As [`read`](Self::read), handing the verified bytes to `sink` (exactly
    /// once, straight from the read buffer; empty past the object's end)
    /// instead of copying them into a slot. None (and `sink` not called)
    /// when it is not a direct hit.
    pub(crate) fn read_with(&self, shard: u32, path: &str, block: u64, want: Want, sink: &mut dyn FnMut(&[u8])) -> Option<(u64, u64)> {
        let Want { off, len, max, whole } = want;
        let (slot, hit) = self.table.lookup(shard, tag(path, block), now_ns())?;
        let (block_len, data_at) = (hit.block_len as u64, hit.data_at as u64);
        if hit.record_len > MAX_RECORD_LEN || data_at + block_len > hit.record_len || hit.offset % 4096 != 0 {
            return None;
        }
        if whole && (block != 0 || hit.object_size != block_len) {
            return None;
        }
        let start = off.min(block_len);
        let end = off.saturating_add(len).min(block_len);
        if end - start > max {
            return None;
        }
        let file = self.segment(shard, hit.seg_id)?;
        let first = start / SUB_BLOCK as u64;
        let subs_end = if end > start { end.div_ceil(SUB_BLOCK as u64) } else { first };
        let data_from = data_at + first * SUB_BLOCK as u64;
        let data_to = data_at + (subs_end * SUB_BLOCK as u64).min(block_len);
        let head_to = align_up(data_at).max(4096);
        let (disk_from, disk_to) = (align_down(data_from), align_up(data_to));
        let joined = disk_from <= head_to + JOIN_GAP;
        let read = |buf: &mut [u8], at: u64| {
            let r = file.read_exact_at(buf, hit.offset + at);
            if r.is_err() {
                self.forget(shard, hit.seg_id);
            }
            r
        };
        // The head (header, key, crc table) must name this block of this
        // path under the published key hash, at the published layout.
        let check = |hbuf: &[u8]| -> Option<RecordView> {
            let view = check_head(hbuf).ok()?;
            let h = view.header;
            let ok = h.version == FORMAT_VERSION
                && !h.is_tombstone()
                && h.key_hash == hit.key_hash
                && h.data_len as u64 == block_len
                && view.data_start as u64 == data_at
                && h.record_len() == hit.record_len
                && BlockKey::names(view.key(hbuf), path, block);
            ok.then_some(view)
        };
        let copy_out = |hbuf: &[u8], view: &RecordView, range: &[u8], sink: &mut dyn FnMut(&[u8])| -> Option<u64> {
            check_sub_blocks(hbuf, view, first as usize, range).ok()?;
            let at = (start - first * SUB_BLOCK as u64) as usize;
            let n = (end - start) as usize;
            sink(&range[at..at + n]);
            Some(n as u64)
        };
        // try_borrow: a sink that reads again on this thread (a callback
        // issuing the next read) is simply not a direct hit there.
        let read_body = |hbuf: &[u8], view: &RecordView, sink: &mut dyn FnMut(&[u8])| -> Option<u64> {
            BODY.with(|body| {
                let mut body = body.try_borrow_mut().ok()?;
                let bbuf = body.get((disk_to - disk_from) as usize);
                read(bbuf, disk_from).ok()?;
                let range = bbuf.get((data_from - disk_from) as usize..(data_to - disk_from) as usize)?;
                copy_out(hbuf, view, range, sink)
            })
        };
        let mut device = 0;
        let placed = match (joined, self.cached_head(shard, hit.seg_id, hit.offset)) {
            // A small range far into a large block: the head from memory, one read.
            (false, Some(h)) if subs_end > first => {
                let view = check(&h)?;
                device = disk_to - disk_from;
                read_body(&h, &view, sink)
            }
            _ => HEAD.with(|head| {
                let mut head = head.try_borrow_mut().ok()?;
                let head_len = if joined { disk_to.max(head_to) } else { head_to };
                let hbuf = head.get(head_len as usize);
                read(hbuf, 0).ok()?;
                device = head_len;
                let hbuf = &*hbuf;
                let view = check(hbuf)?;
                if !joined {
                    self.keep_head(shard, hit.seg_id, hit.offset, &hbuf[..view.header.head_len()]);
                }
                if subs_end == first {
                    sink(&[]); // nothing of the block at or past `off`
                    return Some(0);
                }
                if joined {
                    let range = hbuf.get(data_from as usize..data_to as usize)?;
                    return copy_out(hbuf, &view, range, sink);
                }
                device += disk_to - disk_from;
                read_body(hbuf, &view, sink)
            }),
        };
        let n = placed?;
        self.feedback.count_hit(shard, slot, n, device);
        Some((n, hit.object_size))
    }
}
