//! How a client attaches: shared-area size, ring depth, timeout, direct
//! reads and reconnecting.

use std::time::Duration;

/// Connection options; `Options::default()` suits a data loader.
#[derive(Clone, Debug)]
pub struct Options {
    /// Bytes of shared memory for data in flight and views held. Default 64 MiB.
    pub area_bytes: u64,
    /// Requests in flight per shard. Default 512.
    pub ring_entries: u32,
    /// Longest wait for one request or control answer, and for the engine
    /// to come back after it went away. Default 300 s.
    pub timeout: Duration,
    /// Read cached single-block files (and random ranges of at most 1 MiB
    /// of larger ones) from the engine's segment files in
    /// the calling thread when the engine publishes where they are (direct
    /// reads). Default on, unless `STOKER_DIRECT=0` is set.
    pub direct: bool,
    /// When the engine goes away, wait (up to `timeout`) for it to come
    /// back and carry on with a new session, re-issuing the reads in
    /// flight. Off: every call fails with ECONNRESET from then on. Default on.
    pub reconnect: bool,
}

impl Default for Options {
    fn default() -> Options {
        let direct = !matches!(std::env::var("STOKER_DIRECT").as_deref(), Ok("0" | "off" | "false" | "no"));
        Options { area_bytes: 64 << 20, ring_entries: 512, timeout: Duration::from_secs(300), direct, reconnect: true }
    }
}
