//! stoker-fuse: the FUSE mount of a stoker namespace.
//!
//! Layers, top to bottom:
//! - `fuse` — the thin fuser adapter: turns each kernel request into one call
//!   on [`StokerFs`] and its result into a reply; the only place an error
//!   becomes an errno (and is logged and counted).
//! - `fs` — [`StokerFs`], all filesystem logic (inodes, attributes, listings,
//!   open files, read-only refusals), tested without FUSE in the loop.
//! - `inode` — the inode table (inode number <-> namespace path).
//! - `backend` — the [`Backend`] trait over `stoker_client::Client`, so the
//!   logic can be tested against an in-memory namespace.
//! - `session` — mount options and mounting (threads, max_read, readahead).
//! - `uring` — FUSE over io_uring: per-CPU ring entries answering requests
//!   in place of /dev/fuse reads (`--fuse-uring`).
//!
//! This crate never touches cache segments: every byte comes through the client.

pub mod attr;
pub mod backend;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod inode;
pub mod session;
pub mod uring;

#[cfg(test)]
mod mock;
#[cfg(test)]
mod mount_tests;

pub use backend::Backend;
pub use error::{FsError, Result};
pub use fs::{FsConfig, StokerFs};
pub use fuse::FuseFs;
pub use session::{mount, MountOptions};
