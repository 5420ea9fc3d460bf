//! Wire formats shared by the stoker engine and its clients.
//!
//! This crate owns the three things both sides must agree on byte for byte:
//! - `key`: how a (mount, path, block) is routed to a shard and how a cached
//!   block is named;
//! - `control`: the length-prefixed JSON messages on the control socket;
//! - `ring`: the layout of the shared-memory area (rings and data area);
//! - `units`: sizes and durations as flags and config files write them.
//!
//! It never does I/O of its own beyond framing on a caller's stream.

pub mod control;
pub mod direct;
pub mod format;
pub mod key;
pub mod ring;
pub mod units;

/// Protocol version exchanged in the handshake; bumped on any wire change.
pub const PROTOCOL_VERSION: u32 = 3;

/// Default control socket when neither `--socket` nor `STOKER_SOCKET` is given.
pub const DEFAULT_SOCKET: &str = "/tmp/stoker.sock";

/// Path of the socket a client connects to for shard `shard` of the engine
/// whose control socket is `control`.
pub fn shard_socket_path(control: &str, shard: usize) -> String {
    format!("{control}.shard{shard}")
}

/// Socket to use: explicit value, else `STOKER_SOCKET`, else the default.
pub fn socket_from_env(explicit: Option<&str>) -> String {
    if let Some(s) = explicit {
        return s.to_string();
    }
    std::env::var("STOKER_SOCKET").unwrap_or_else(|_| DEFAULT_SOCKET.to_string())
}
