//! Benchmark-driven tuning: sweep the engine's knobs on this box with short
//! runs and write a commented TOML config with the best settings and the
//! numbers behind each choice.
//!
//! - `config`: the config file format (`stoker serve --config` reads it);
//! - `sweep`: the sweep itself — every trial is a real `stoker serve` child
//!   started with a trial config, read through the shared-memory client with
//!   the `epoch` workload; bounded by a time budget and resumable.
//!
//! Tuning never touches the box's settings (sysctls, block-device
//! readahead): it only chooses stoker's own.

pub mod config;
pub mod sweep;

pub use config::ConfigFile;
pub use sweep::{tune, Outcome, Settings, TuneSpec};

/// `4M`, `128K` or plain bytes: the form the config and the flags accept.
pub fn fmt_size(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes & ((1 << 30) - 1) == 0 {
        format!("{}G", bytes >> 30)
    } else if bytes >= 1 << 20 && bytes & ((1 << 20) - 1) == 0 {
        format!("{}M", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes & ((1 << 10) - 1) == 0 {
        format!("{}K", bytes >> 10)
    } else {
        bytes.to_string()
    }
}
