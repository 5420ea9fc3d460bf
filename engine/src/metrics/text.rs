//! The Prometheus text exposition format (version 0.0.4): `# HELP` and
//! `# TYPE` once per family, then its samples, histograms as cumulative
//! `_bucket{le=...}`, `_sum` and `_count`.

use super::latency::Hist;
use super::names::{Def, Kind, BUCKETS_SECONDS};
use std::fmt::Write;

/// Content type of what [`Text::finish`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Default)]
pub struct Text {
    out: String,
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Text {
    /// Start a family: every sample of `d` must follow before the next family.
    pub fn family(&mut self, d: &Def) {
        let _ = writeln!(self.out, "# HELP {} {}", d.name, d.help);
        let _ = writeln!(self.out, "# TYPE {} {}", d.name, d.kind.as_str());
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], value: &dyn std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// One counter or gauge sample of `d` (labels in the order `d.labels` names them).
    pub fn sample(&mut self, d: &Def, labels: &[&str], value: u64) {
        debug_assert!(d.kind != Kind::Histogram && labels.len() == d.labels.len(), "{}: bad labels", d.name);
        let pairs: Vec<(&str, &str)> = d.labels.iter().copied().zip(labels.iter().copied()).collect();
        self.line(d.name, &pairs, &value);
    }

    /// One histogram series of `d`.
    pub fn histogram(&mut self, d: &Def, labels: &[&str], h: &Hist) {
        debug_assert!(d.kind == Kind::Histogram && labels.len() == d.labels.len(), "{}: bad labels", d.name);
        let les: Vec<String> = BUCKETS_SECONDS.iter().map(|b| b.to_string()).collect();
        let mut pairs: Vec<(&str, &str)> = d.labels.iter().copied().zip(labels.iter().copied()).collect();
        let (bucket, sum, count) = (format!("{}_bucket", d.name), format!("{}_sum", d.name), format!("{}_count", d.name));
        for (le, c) in les.iter().zip(h.cumulative()) {
            pairs.push(("le", le));
            self.line(&bucket, &pairs, &c);
            pairs.pop();
        }
        pairs.push(("le", "+Inf"));
        self.line(&bucket, &pairs, &h.count());
        pairs.pop();
        self.line(&sum, &pairs, &h.sum_seconds());
        self.line(&count, &pairs, &h.count());
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::names;
    use std::time::Duration;

    #[test]
    fn samples_and_histograms_are_well_formed() {
        let mut t = Text::default();
        t.family(&names::HITS);
        t.sample(&names::HITS, &["0"], 7);
        t.family(&names::FUSE_OP_DURATION);
        let mut h = Hist::default();
        h.record(Duration::from_micros(30));
        h.record(Duration::from_millis(3));
        t.histogram(&names::FUSE_OP_DURATION, &["re\"ad"], &h);
        let s = t.finish();
        assert!(s.contains("# TYPE stoker_hits_total counter\nstoker_hits_total{shard=\"0\"} 7\n"), "{s}");
        assert!(s.contains("stoker_fuse_op_duration_seconds_bucket{op=\"re\\\"ad\",le=\"0.00005\"} 1\n"), "{s}");
        assert!(s.contains("stoker_fuse_op_duration_seconds_bucket{op=\"re\\\"ad\",le=\"0.005\"} 2\n"), "{s}");
        assert!(s.contains("stoker_fuse_op_duration_seconds_bucket{op=\"re\\\"ad\",le=\"+Inf\"} 2\n"), "{s}");
        assert!(s.contains("stoker_fuse_op_duration_seconds_count{op=\"re\\\"ad\"} 2\n"), "{s}");
        assert!(s.contains("stoker_fuse_op_duration_seconds_sum{op=\"re\\\"ad\"} 0.00303\n"), "{s}");
    }
}
