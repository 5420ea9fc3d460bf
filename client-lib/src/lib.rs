//! The stoker client: attach to a running engine and read through its cache.
//!
//! A `Client` holds one session with the engine: a small pool of control
//! connections (stat, list, statistics, pin/unpin/free/TTL, path
//! statistics; opened on demand so one slow call never blocks the others),
//! a shared-memory area it created (a sealed memfd handed to the engine)
//! with one request ring and one completion ring per shard, and one stream per shard used only as a doorbell. A read is split
//! at block boundaries, each piece posted on the ring of the shard that owns
//! it; the engine places the bytes in the read's slot of the data area, side
//! by side, so the caller can use them in place (`read_with`, `Data::View`).
//!
//! `Client` is `Send + Sync` and cheap to share between threads. After
//! `fork` the child's first call opens a new session of its own (the parent's
//! rings are never touched from the child), so DataLoader-style workers can
//! inherit a client. Views do not survive a fork.
//!
//! An engine restart is a pause, not an error: a call that finds the engine
//! gone opens a new session (with back-off, within the timeout) and runs
//! again; reads in flight are issued again on it (see `reconnect`). Views
//! of the old session's area stay valid until dropped.
//!
//! Modules: `client` (the public calls), `options`, `error`; below them
//! `session` (one attached session: control pool, area, rings, completion
//! thread), `op` and `batch` (reads as operations on the area), `plan`
//! (epoch prefetch), `direct` (direct reads of cached blocks), `hugebuf`
//! (huge-page O_DIRECT read buffers, public for the bench), `alloc` (the
//! area's slot allocator) and `reconnect` (replacing a lost session).

mod alloc;
mod batch;
mod client;
mod direct;
mod error;
pub mod hugebuf;
mod op;
mod options;
mod plan;
mod reconnect;
mod session;

pub use batch::{Batch, ReadReq};
pub use client::{Applied, Client};
pub use error::{Error, Result};
pub use op::{Data, ReadDone, View};
pub use options::Options;
pub use plan::EpochPlan;
pub use stoker_proto::control::{Kind, PathStats};
pub use stoker_proto::{socket_from_env, DEFAULT_SOCKET};
