//! stoker's workloads and reports.
//!
//! - `gen`: deterministic synthetic datasets (ImageNet-shaped small files, and
//!   the `--large` set of big files);
//! - `target`: what is read — a local directory or FUSE mount, the under
//!   storage with injected latency, or the stoker cache through client-lib;
//! - `workload`: `epoch`, `stat`, `random` and `seq` passes with T readers;
//! - `loader`: the DataLoader shape, N worker processes reading whole files
//!   (the caller spawns the workers; this crate runs both ends of their pipe);
//! - `ceiling`: the device itself, with O_DIRECT reads through io_uring;
//! - `report`: hdrhistogram percentiles, CPU seconds, Markdown and JSON.
//!
//! Nothing here changes the box (page cache drop aside, on request) or talks
//! to the engine other than through client-lib.

pub mod ceiling;
pub mod epoch;
pub mod gen;
pub mod loader;
pub mod report;
pub mod target;
pub mod workload;

pub use ceiling::{Ceiling, CeilingSpec};
pub use epoch::{epoch, list_files, list_files_sized};
pub use gen::{generate, generate_large, GenSpec};
pub use report::{markdown_table, Report};
pub use target::{LocalTarget, RemoteTarget, StokerTarget, Target};
pub use workload::{run, Workload};

/// Drop the kernel page cache (needs root), so a pass reads from the device.
pub fn drop_page_cache() -> std::io::Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n")
}
