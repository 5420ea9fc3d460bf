//! Sequential read-ahead for large objects.
//!
//! Blocks of one object live on different shards, so the shards share one
//! table of streams (by path). A read of block N right after block N-1 (or
//! of block 0, or of the block just past those fetched ahead, when a direct
//! reader took the ones between from the cache) is sequential: the window of blocks fetched ahead starts at
//! one and doubles on every new block up to the mount's limit, like the
//! kernel's page-cache read-ahead. Any other jump resets the window, so a
//! random reader of a large object fetches nothing extra.
//!
//! Only reads of multi-block objects come here; the small-file path never
//! touches the lock.

use super::fetch::flight_key;
use super::{ShardCmd, READAHEAD_INFLIGHT_MAX};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use stoker_proto::control::Attr;
use stoker_proto::key::BlockKey;

/// Streams tracked at most; past this the table starts afresh (a stream
/// then just begins again with a window of one).
const STREAMS_MAX: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Stream {
    /// The last block read.
    last: u64,
    /// Blocks up to here (inclusive) have been asked for.
    ahead_to: u64,
    /// Current window in blocks (0 = not sequential yet).
    window: u64,
}

#[derive(Default)]
pub struct ReadAhead {
    streams: Mutex<HashMap<String, Stream>>,
}

impl ReadAhead {
    /// Note a read of `block` of `path` (an object of `nblocks` blocks) and
    /// return the blocks to fetch ahead now, at most `max` past `block`.
    pub fn on_read(&self, path: &str, block: u64, nblocks: u64, max: u64) -> Range<u64> {
        self.on_read_window(path, block, nblocks, max).0
    }

    /// As `on_read`, with the stream's window after this read (0 = not
    /// sequential; 1 after the first step, doubling from there).
    pub fn on_read_window(&self, path: &str, block: u64, nblocks: u64, max: u64) -> (Range<u64>, u64) {
        if max == 0 || nblocks <= 1 {
            return (0..0, 0);
        }
        let mut streams = self.streams.lock();
        // Look up before inserting: a read of a known stream (the common
        // case) allocates nothing.
        if !streams.contains_key(path) {
            if streams.len() >= STREAMS_MAX {
                streams.clear();
            }
            streams.insert(path.to_string(), Stream { last: block, ahead_to: block, window: 0 });
        }
        let s = streams.get_mut(path).expect("inserted above");
        let sequential = if block == s.last + 1 {
            s.window = (s.window * 2).clamp(1, max);
            true
        } else if block == s.last {
            // Another read inside the same block (FUSE reads in 1 MiB
            // pieces); the first read of block 0 starts a stream.
            if block == 0 && s.window == 0 {
                s.window = 1;
            }
            s.window > 0
        } else if s.window > 0 && block > s.last && block <= s.ahead_to + 1 {
            // The reader went on past blocks fetched ahead, which it read
            // from the cache without the engine (direct reads): still the
            // same stream.
            s.window = (s.window * 2).clamp(1, max);
            true
        } else {
            s.window = 0;
            s.ahead_to = block;
            false
        };
        s.last = block;
        if !sequential {
            return (0..0, 0);
        }
        let window = s.window;
        let target = (block + window).min(nblocks - 1);
        let from = s.ahead_to.max(block) + 1;
        s.ahead_to = s.ahead_to.max(target);
        if block + 1 >= nblocks {
            streams.remove(path); // read to the end
        }
        (from..target + 1, window)
    }
}

impl super::Shard {
    /// Note a read of `block` of a large object and hand the blocks the
    /// stream should fetch ahead to the shards that own them.
    pub(super) fn read_ahead(&self, path: &str, block: u64, attr: &Attr, bs: u64) {
        let max = self.ns.readahead_blocks(path);
        let (blocks, window) = self.readahead.on_read_window(path, block, attr.size.div_ceil(bs), max);
        // Cached blocks are read ahead only once the stream has gone on for
        // a few blocks: one step across a block boundary (a random reader,
        // or the kernel's own read-ahead) must not read 4 MiB for nothing.
        let from_cache = window >= 2;
        for b in blocks {
            let owner = stoker_proto::key::shard_for(path, b, self.peers.len());
            let cmd = ShardCmd::Prefetch { path: path.to_string(), block: b, attr: attr.clone(), from_cache };
            let _ = self.peers[owner].unbounded_send(cmd);
        }
    }
    /// Whether block `block` of `path` at `attr` is cached, waiting to be
    /// written, or being fetched.
    pub(super) fn has_or_fetching(&self, path: &str, block: u64, attr: &Attr) -> bool {
        let key = self.ns.block_key(path, &attr.version, block);
        self.mem.get(key.hash, &key.bytes).is_some()
            || self.store.contains(key.hash)
            || self.unwritten.borrow().contains_key(&key.bytes)
            || self.inflight.borrow().contains_key(&flight_key(path, block))
    }
    /// Read cached block `block` of `path` whole from its segment into the
    /// read-ahead buffer, unless it is in memory already or too many
    /// read-aheads are in flight.
    pub(super) fn stage(self: &Rc<Self>, key: BlockKey, path: &str, block: u64, attr: &Attr) {
        if self.ahead.get(key.hash, &key.bytes).is_some() || self.mem.get(key.hash, &key.bytes).is_some() {
            return;
        }
        if self.readahead_inflight.get() >= READAHEAD_INFLIGHT_MAX {
            self.counters.readahead_dropped.fetch_add(1, Relaxed);
            return;
        }
        let bs = self.ns.block_bytes(path);
        let block_len = attr.size.saturating_sub(block.saturating_mul(bs)).min(bs);
        self.readahead_inflight.set(self.readahead_inflight.get() + 1);
        self.counters.readahead_blocks.fetch_add(1, Relaxed);
        let s = self.clone();
        glommio::spawn_local(async move {
            let got = s.store.get_range(key.hash, &key.bytes, block_len, 0, block_len).await;
            s.counters.device_bytes_read.store(s.store.device_bytes_read(), Relaxed);
            if let Ok(Some(b)) = got {
                if b.block_len() == block_len {
                    s.ahead.insert(key.hash, &key.bytes, Rc::new(b.data().to_vec()));
                }
            }
            s.readahead_inflight.set(s.readahead_inflight.get() - 1);
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(r: Range<u64>) -> Vec<u64> {
        r.collect()
    }

    #[test]
    fn a_stream_that_read_ahead_blocks_directly_goes_on() {
        let ra = ReadAhead::default();
        assert_eq!(v(ra.on_read("/m/d", 0, 100, 8)), [1]);
        // Block 1 was read from the cache directly; block 2 is the next the
        // engine sees: the stream goes on, with a larger window.
        assert_eq!(v(ra.on_read("/m/d", 2, 100, 8)), [3, 4]);
        assert_eq!(v(ra.on_read("/m/d", 5, 100, 8)), [6, 7, 8, 9]);
        // Past what was fetched ahead is a jump.
        assert_eq!(v(ra.on_read("/m/d", 12, 100, 8)), Vec::<u64>::new());
    }

    #[test]
    fn the_window_says_how_far_a_stream_has_gone() {
        let ra = ReadAhead::default();
        assert_eq!(ra.on_read_window("/m/w", 5, 100, 8).1, 0, "a first read mid-object is not a stream");
        assert_eq!(ra.on_read_window("/m/w", 6, 100, 8).1, 1, "one step");
        assert_eq!(ra.on_read_window("/m/w", 7, 100, 8).1, 2, "two steps: a stream");
        assert_eq!(ra.on_read_window("/m/w", 40, 100, 8), (0..0, 0), "a jump resets it");
    }

    #[test]
    fn sequential_reads_grow_the_window_and_random_reads_fetch_nothing() {
        let ra = ReadAhead::default();
        // Block 0 (read twice, as FUSE does): one block ahead, once.
        assert_eq!(v(ra.on_read("/m/a", 0, 100, 8)), [1]);
        assert_eq!(v(ra.on_read("/m/a", 0, 100, 8)), Vec::<u64>::new());
        // Each next block doubles the window: 2, 4, 8, then stays at 8.
        assert_eq!(v(ra.on_read("/m/a", 1, 100, 8)), [2, 3]);
        assert_eq!(v(ra.on_read("/m/a", 2, 100, 8)), [4, 5, 6]);
        assert_eq!(v(ra.on_read("/m/a", 3, 100, 8)), [7, 8, 9, 10, 11]);
        assert_eq!(v(ra.on_read("/m/a", 4, 100, 8)), [12]);
        // A jump resets: nothing ahead until reads are sequential again.
        assert_eq!(v(ra.on_read("/m/a", 50, 100, 8)), Vec::<u64>::new());
        assert_eq!(v(ra.on_read("/m/a", 20, 100, 8)), Vec::<u64>::new());
        assert_eq!(v(ra.on_read("/m/a", 21, 100, 8)), [22]);
        // Never past the last block; a finished stream is forgotten.
        assert_eq!(v(ra.on_read("/m/b", 0, 2, 8)), [1]);
        assert_eq!(v(ra.on_read("/m/b", 1, 2, 8)), Vec::<u64>::new());
        assert!(ra.streams.lock().get("/m/b").is_none());
        // Off, or a one-block object: nothing.
        assert_eq!(v(ra.on_read("/m/c", 0, 100, 0)), Vec::<u64>::new());
        assert_eq!(v(ra.on_read("/m/c", 0, 1, 8)), Vec::<u64>::new());
        // A reader starting mid-object becomes sequential on its next block.
        assert_eq!(v(ra.on_read("/m/d", 10, 100, 4)), Vec::<u64>::new());
        assert_eq!(v(ra.on_read("/m/d", 11, 100, 4)), [12]);
    }
}
