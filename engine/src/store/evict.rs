//! Capacity and eviction: segment-granularity FIFO with second chance.
//!
//! Policy (docs/FORMAT.md has the long form): the store keeps
//! `sealed_bytes + segment_bytes + segment_bytes / 2 <= capacity_bytes`
//! after every roll, i.e. room for a full open segment plus a half segment of
//! reinsertion headroom. To get there it reclaims the oldest sealed segment:
//! blocks still indexed there whose accessed bit is set are re-appended to the
//! open segment (bit cleared), at most half the segment's bytes and only while
//! the physical total stays within capacity; every other block of it leaves
//! the index; then its files are deleted. Physical bytes on disk never exceed
//! `capacity_bytes`.
//!
//! This module decides what goes; it reads and writes segments only through
//! `segment.rs` (`append_raw`, `sync_open`) and archives through `index.rs`,
//! and nothing under it calls back here but the writer's roll (`writer.rs`).

use std::rc::Rc;

use super::format::{check_record, ALIGN, FLAG_TOMBSTONE};
use super::index::{load_entries, IdxEntry, Location, MAX_SEGMENT_BYTES};
use super::segment::{append_raw, sync_open};
use super::{format, Result, Shared, StoreConfig, StoreError, DEFAULT_SEGMENT_BYTES, MIN_SEGMENT_BYTES};

/// Largest span read with one I/O while copying hot records.
const COPY_READ_BYTES: u64 = 1 << 20;

/// Validates the config and returns `(segment_bytes, capacity_bytes)`;
/// segments are clamped so the capacity holds at least three of them.
pub(super) fn clamp_config(cfg: &StoreConfig) -> Result<(u64, u64)> {
    let capacity = cfg.capacity_bytes;
    if capacity < 3 * MIN_SEGMENT_BYTES {
        return Err(StoreError::InvalidArgument(format!(
            "capacity_bytes {capacity} is below the minimum of {}",
            3 * MIN_SEGMENT_BYTES
        )));
    }
    let seg = clamp_segment_bytes(cfg.segment_bytes, capacity);
    if seg != cfg.segment_bytes {
        tracing::warn!(asked = cfg.segment_bytes, used = seg, capacity, "store: segment size clamped");
    }
    Ok((seg, capacity))
}

/// The one segment-size rule (the engine's config applies it too): `asked`
/// bytes (0: the default) rounded down to a multiple of 4 KiB, within
/// `MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES`, and small enough that `capacity`
/// holds at least three segments.
pub fn clamp_segment_bytes(asked: u64, capacity: u64) -> u64 {
    let asked = if asked == 0 { DEFAULT_SEGMENT_BYTES } else { asked };
    let seg = (asked / ALIGN * ALIGN).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES);
    if 3 * seg > capacity {
        (capacity / 3 / ALIGN * ALIGN).max(MIN_SEGMENT_BYTES)
    } else {
        seg
    }
}

/// Reclaims oldest sealed segments until the capacity rule holds.
pub(super) async fn enforce_capacity(shared: &Rc<Shared>) -> Result<()> {
    let reserve = shared.segment_bytes / 2;
    loop {
        let oldest = {
            let segs = shared.segs.borrow();
            if segs.sealed_bytes + shared.segment_bytes + reserve <= shared.capacity_bytes {
                return Ok(());
            }
            // The oldest segment whose pinned blocks fit in the reinsertion
            // reserve; segments holding more pinned data than that stay put
            // (the engine caps pins at half the capacity).
            let pinned = pinned_bytes_by_segment(shared);
            let movable = |id: &&u32| pinned.get(*id).copied().unwrap_or(0) <= reserve;
            let victim = match shared.eviction.get() {
                super::Eviction::FifoReinsert => segs.sealed.keys().find(movable),
                // Least recently read first; never-read segments by age.
                super::Eviction::Lru => {
                    let last = shared.last_read.borrow();
                    segs.sealed.keys().filter(movable).min_by_key(|id| (last.get(*id).copied().unwrap_or(0), **id))
                }
            };
            match victim {
                Some(&id) => id,
                None => {
                    tracing::warn!("store: every sealed segment is mostly pinned; nothing to reclaim");
                    return Ok(());
                }
            }
        };
        reclaim(shared, oldest).await?;
    }
}

/// Reclaims one sealed segment (see the module doc).
async fn reclaim(shared: &Rc<Shared>, seg_id: u32) -> Result<()> {
    let (file, bytes) = {
        let segs = shared.segs.borrow();
        let s = segs.sealed.get(&seg_id).ok_or_else(|| StoreError::Corruption(format!("no segment {seg_id}")))?;
        (s.file.clone(), s.bytes)
    };
    let entries = load_entries(&shared.dir, seg_id).unwrap_or_else(|| entries_from_index(shared, seg_id));

    // Split live records into pinned and hot (copy) and cold (drop). Pinned
    // blocks come out of the reserve first; second chances get the rest.
    let pinned_here = pinned_bytes_by_segment(shared).get(&seg_id).copied().unwrap_or(0);
    let budget = match shared.eviction.get() {
        super::Eviction::FifoReinsert => (bytes / 2).min((shared.segment_bytes / 2).saturating_sub(pinned_here)),
        super::Eviction::Lru => 0,
    };
    let mut hot: Vec<(IdxEntry, u64)> = Vec::new();
    let mut hot_bytes = 0;
    let mut evicted = 0;
    {
        let mut index = shared.index.borrow_mut();
        let pinned = shared.pinned.borrow();
        for e in entries.iter().filter(|e| e.flags & FLAG_TOMBSTONE == 0) {
            let Some(&packed) = index.get(&e.key_hash) else { continue };
            let loc = Location::unpack(packed);
            if loc.seg_id != seg_id || loc.offset_units != e.offset_units {
                continue;
            }
            let len = loc.len_bytes();
            // Pinned blocks always move forward (the engine refuses pins that
            // would not fit); read blocks get their second chance within budget.
            if pinned.contains(&e.key_hash) {
                hot.push((*e, packed));
            } else if loc.accessed && hot_bytes + len <= budget {
                hot.push((*e, packed));
                hot_bytes += len;
            } else {
                index.remove(&e.key_hash);
                evicted += 1;
            }
        }
    }
    // copy_hot reads spans in file order.
    hot.sort_unstable_by_key(|(e, _)| e.offset_units);
    let copied = copy_hot(shared, seg_id, &file, &hot).await;

    // Whatever hot record was not moved (no room, bad record, I/O error)
    // must not stay indexed into a file about to be deleted.
    {
        let mut index = shared.index.borrow_mut();
        for (e, packed) in &hot {
            if index.get(&e.key_hash).is_some_and(|v| Location::same_place(*v, *packed)) {
                index.remove(&e.key_hash);
                evicted += 1;
            }
        }
    }
    let c = &shared.counters;
    c.evicted_blocks.set(c.evicted_blocks.get() + evicted);
    c.reinserted_blocks.set(c.reinserted_blocks.get() + copied);
    if copied > 0 {
        // Copies must be durable before the original goes away.
        sync_open(shared).await?;
    }
    shared.last_read.borrow_mut().remove(&seg_id);
    {
        let mut segs = shared.segs.borrow_mut();
        if segs.sealed.remove(&seg_id).is_some() {
            segs.sealed_bytes -= bytes;
        }
    }
    // Archive first: a crash in between leaves a data file without archive,
    // which recovery scans; the reverse would be equally safe but slower.
    remove_if_exists(&shared.dir.join(format::idx_file_name(seg_id)))?;
    remove_if_exists(&shared.dir.join(format::data_file_name(seg_id)))?;
    if let Some(f) = shared.on_drop.borrow().as_ref() {
        f();
    }
    tracing::debug!(seg_id, evicted, copied, "store: reclaimed segment");
    Ok(())
}

/// Live pinned bytes per segment (walks the pinned set, usually small).
fn pinned_bytes_by_segment(shared: &Shared) -> std::collections::HashMap<u32, u64> {
    let index = shared.index.borrow();
    let mut out = std::collections::HashMap::new();
    for k in shared.pinned.borrow().iter() {
        if let Some(&packed) = index.get(k) {
            let loc = Location::unpack(packed);
            *out.entry(loc.seg_id).or_insert(0) += loc.len_bytes();
        }
    }
    out
}

fn remove_if_exists(path: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Fallback when a segment's archive cannot be read: its live records, from
/// a full pass over the RAM index.
fn entries_from_index(shared: &Shared, seg_id: u32) -> Vec<IdxEntry> {
    let index = shared.index.borrow();
    let mut v: Vec<IdxEntry> = index
        .iter()
        .filter_map(|(&key_hash, &packed)| {
            let loc = Location::unpack(packed);
            (loc.seg_id == seg_id).then_some(IdxEntry {
                key_hash,
                offset_units: loc.offset_units,
                len_units: loc.len_units as u16,
                flags: 0,
            })
        })
        .collect();
    v.sort_unstable_by_key(|e| e.offset_units);
    v
}

/// Re-appends the hot records to the open segment, reading them in spans of
/// up to 1 MiB and writing them in batches of up to 1 MiB. Returns how many
/// were moved (index repointed).
async fn copy_hot(shared: &Rc<Shared>, seg_id: u32, file: &glommio::io::DmaFile, hot: &[(IdxEntry, u64)]) -> u64 {
    let mut moved = 0;
    let mut out: Vec<u8> = Vec::new();
    let mut out_keys: Vec<(u64, u64, u32)> = Vec::new(); // (key_hash, old packed, len_units)
    let mut i = 0;
    while i < hot.len() {
        // One read for a run of nearby records.
        let start = hot[i].0.offset_units as u64 * ALIGN;
        let mut j = i;
        let mut end = start;
        while j < hot.len() {
            let e = &hot[j].0;
            let e_end = (e.offset_units as u64 + e.len_units as u64) * ALIGN;
            if j > i && e_end - start > COPY_READ_BYTES {
                break;
            }
            end = end.max(e_end);
            j += 1;
        }
        let buf = match file.read_at_aligned(start, (end - start) as usize).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(seg_id, error = %e, "store: read failed while reclaiming; dropping blocks");
                i = j;
                continue;
            }
        };
        for (e, packed) in &hot[i..j] {
            let from = (e.offset_units as u64 * ALIGN - start) as usize;
            let len = e.len_units as usize * ALIGN as usize;
            let Some(rec) = buf.get(from..from + len) else { continue };
            let ok = check_record(rec).is_ok_and(|v| v.header.key_hash == e.key_hash && !v.header.is_tombstone());
            if !ok {
                let c = &shared.counters.corrupt_records;
                c.set(c.get() + 1);
                continue;
            }
            let fits = {
                let segs = shared.segs.borrow();
                let pending = out.len() as u64 + len as u64;
                segs.open.end + pending <= shared.segment_bytes
                    && segs.used_bytes() + pending <= shared.capacity_bytes
            };
            if !fits {
                continue;
            }
            out.extend_from_slice(rec);
            out_keys.push((e.key_hash, *packed, e.len_units as u32));
            if out.len() as u64 >= COPY_READ_BYTES {
                moved += flush_copies(shared, &mut out, &mut out_keys).await;
            }
        }
        i = j;
    }
    if !out.is_empty() {
        moved += flush_copies(shared, &mut out, &mut out_keys).await;
    }
    moved
}

/// Writes the collected copies and repoints the index entries that still
/// point at the old place.
async fn flush_copies(shared: &Rc<Shared>, out: &mut Vec<u8>, keys: &mut Vec<(u64, u64, u32)>) -> u64 {
    let result = append_raw(shared, out).await;
    let mut moved = 0;
    if let Ok((seg_id, start)) = &result {
        let mut index = shared.index.borrow_mut();
        let mut segs = shared.segs.borrow_mut();
        let mut at = *start;
        for &(key_hash, old, len_units) in keys.iter() {
            let loc = Location { seg_id: *seg_id, offset_units: (at / ALIGN) as u32, len_units, accessed: false };
            segs.open.entries.push(IdxEntry {
                key_hash,
                offset_units: loc.offset_units,
                len_units: len_units as u16,
                flags: 0,
            });
            if let Some(v) = index.get_mut(&key_hash) {
                if Location::same_place(*v, old) {
                    *v = loc.pack();
                    moved += 1;
                }
            }
            at += len_units as u64 * ALIGN;
        }
    } else if let Err(e) = result {
        tracing::warn!(error = %e, "store: reinsertion write failed; dropping blocks");
    }
    out.clear();
    keys.clear();
    moved
}
