//! stoker's workloads and reports.
//!
//! - `gen`: deterministic synthetic datasets (ImageNet-shaped small files);
//! - `epoch`: every file read once in a shuffled order by T readers, against a
//!   `Target` (a local directory, or the stoker cache through client-lib);
//! - `report`: hdrhistogram percentiles, CPU seconds, Markdown and JSON.

pub mod epoch;
pub mod gen;
pub mod report;

pub use epoch::{epoch, list_files, LocalTarget, RemoteTarget, StokerTarget, Target};
pub use gen::{generate, GenSpec};
pub use report::{markdown_table, Report};

/// Drop the kernel page cache (needs root), so a pass reads from the device.
pub fn drop_page_cache() -> std::io::Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n")
}
