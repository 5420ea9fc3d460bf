//! `server/` — the control plane: the control socket and what it answers.
//!
//! - `control.rs` — accept loop, handshake (a client's shared area arrives as
//!   a memfd), stat, list, walk, engine statistics.
//! - `ctx.rs` — what the control threads share, and the engine statistics.
//! - `control_limits.rs` — bounds on what a client can make the server hold.
//! - `peer.rs` — who may connect (socket mode and group, peer credentials).
//! - `admin.rs` — pin, unpin, free, ttl, per-path stats: turns a path into
//!   block keys and hands each shard its own as a `ShardCmd`.
//! - `scrape.rs` — the engine's `GET /metrics` (reads counters, never a shard).
//! - `writes.rs` — create, write, close, unlink and sync requests, handed to
//!   the write path (`write/`).
//!
//! Owns: control connections, sessions' registration, the translation of
//! commands into shard commands. Must never: read or write block data, touch
//! a shard's store or rings (it only sends `ShardCmd`s and reads counters),
//! or be imported by the read path (`shard/`, `store/`, `metrics/`).

pub mod admin;
pub mod control;
pub mod control_limits;
pub mod ctx;
pub mod writes;
pub mod peer;
pub mod scrape;
