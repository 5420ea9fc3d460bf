//! One pass's numbers and how they are printed.

use serde::Serialize;

#[derive(Clone, Debug, Serialize, Default)]
pub struct Report {
    pub target: String,
    pub pass: String,
    pub files: u64,
    pub bytes: u64,
    pub errors: u64,
    pub secs: f64,
    pub files_per_s: f64,
    pub mib_per_s: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// User + system CPU seconds of this process during the pass.
    pub cpu_secs: f64,
}

pub fn markdown_table(reports: &[Report]) -> String {
    let mut s = String::from(
        "| target | pass | files | files/s | MiB/s | p50 ms | p90 ms | p99 ms | p99.9 ms | CPU s | errors |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in reports {
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
            r.target,
            r.pass,
            r.files,
            r.files_per_s,
            r.mib_per_s,
            r.p50_us as f64 / 1000.0,
            r.p90_us as f64 / 1000.0,
            r.p99_us as f64 / 1000.0,
            r.p999_us as f64 / 1000.0,
            r.cpu_secs,
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
