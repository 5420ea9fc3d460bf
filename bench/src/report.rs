//! One pass's numbers and how they are printed (Markdown for people, JSON via
//! serde for machines). Latencies are per operation, in microseconds.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct Report {
    /// `epoch`, `random`, `stat`, `seq`, `ceiling`, or `loader-Np` (N worker
    /// processes).
    #[serde(default)]
    pub workload: String,
    pub target: String,
    pub pass: String,
    /// Files this pass touched (each file once per pass, except `random`,
    /// where it is the number of ranges read).
    pub files: u64,
    /// Timed operations (histogram samples): a whole-file read (`epoch`), a
    /// range read (`random`, `seq` chunks, `ceiling`) or a stat (`stat`); a
    /// whole-file read in `loader` too.
    #[serde(default)]
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub secs: f64,
    pub files_per_s: f64,
    #[serde(default)]
    pub ops_per_s: f64,
    pub mib_per_s: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// User + system CPU seconds of this process during the pass (the bench
    /// client; an engine or FUSE daemon in another process is not included).
    /// For `loader`, the sum over the worker processes of their CPU during
    /// their reads.
    pub cpu_secs: f64,
    /// MiB/s as a fraction of the device ceiling that fits this workload (see
    /// `Ceiling::fraction`); None when no ceiling was measured or it does not
    /// apply (`stat`).
    #[serde(default)]
    pub ceiling_fraction: Option<f64>,
}

pub fn markdown_table(reports: &[Report]) -> String {
    let mut s = String::from(
        "| workload | target | pass | files | ops/s | files/s | MiB/s | p50 ms | p90 ms | p99 ms | p99.9 ms | CPU s | of ceiling | errors |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in reports {
        let frac = r.ceiling_fraction.map(|f| format!("{:.0}%", f * 100.0)).unwrap_or_else(|| "—".into());
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {} | {} |\n",
            r.workload,
            r.target,
            r.pass,
            r.files,
            r.ops_per_s,
            r.files_per_s,
            r.mib_per_s,
            r.p50_us as f64 / 1000.0,
            r.p90_us as f64 / 1000.0,
            r.p99_us as f64 / 1000.0,
            r.p999_us as f64 / 1000.0,
            r.cpu_secs,
            frac,
            r.errors
        ));
    }
    s
}

/// CPU seconds (user + system) used by this process so far.
pub fn cpu_secs() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is always valid.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
