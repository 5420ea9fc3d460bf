//! `stoker serve --metrics ADDR`: the Prometheus endpoint scraped over plain
//! HTTP while reads go through client-lib. The counters move by exactly the
//! blocks and bytes read, the latency histograms' `_count`s grow, and every
//! scrape parses as the text exposition format.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const BLOCK: usize = 4 << 20;

/// A port nobody listens on right now (bound, read, released).
fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// One HTTP/1.1 GET: (status line, body).
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connecting to the metrics endpoint");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n").unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).expect("reading the HTTP answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP head and body");
    let status = head.lines().next().unwrap_or_default().to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("a Content-Length header")
        .parse()
        .unwrap();
    assert_eq!(body.len(), len, "body length differs from Content-Length");
    (status, body.to_string())
}

/// Label pairs of one sample, in exported order.
type Labels = Vec<(String, String)>;

/// One scrape, parsed: (metric name, labels, value) per sample line.
struct Scrape {
    samples: Vec<(String, Labels, f64)>,
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parse `k="v",k2="v2"` (values may hold escaped quotes and commas).
fn parse_labels(s: &str) -> Labels {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (k, r) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label pair in {{{s}}}"));
        assert!(valid_name(k), "bad label name {k:?}");
        let mut v = String::new();
        let mut it = r.char_indices();
        let end = loop {
            match it.next() {
                Some((_, '\\')) => v.push(it.next().expect("escape at end of labels").1),
                Some((i, '"')) => break i,
                Some((_, c)) => v.push(c),
                None => panic!("unterminated label value in {{{s}}}"),
            }
        };
        out.push((k.to_string(), v));
        rest = &r[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    out
}

impl Scrape {
    /// Parse the exposition text, failing on anything malformed: a sample
    /// line must be `name{labels} value`, its family must have a `# TYPE`
    /// before it, a family is declared once, histograms are cumulative and
    /// end with `+Inf` equal to `_count`.
    fn parse(text: &str) -> Scrape {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').expect("# TYPE name kind");
                assert!(valid_name(name), "bad metric name {name:?}");
                assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "bad type {kind:?}");
                assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "# TYPE {name} given twice");
                continue;
            }
            if line.starts_with('#') {
                assert!(line.starts_with("# HELP "), "unknown comment line {line:?}");
                continue;
            }
            assert!(!line.trim().is_empty(), "blank line in the exposition");
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, parse_labels(l.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line:?}")))),
                None => (series, Vec::new()),
            };
            assert!(valid_name(name), "bad metric name in {line:?}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|t| t == "histogram")))
                .unwrap_or(name);
            let kind = types.get(family).unwrap_or_else(|| panic!("{name} has no # TYPE before it"));
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} should end in _total");
            }
            assert!(value >= 0.0, "negative value in {line:?}");
            samples.push((name.to_string(), labels, value));
        }
        let s = Scrape { samples };
        s.check_histograms(&types);
        s
    }

    fn check_histograms(&self, types: &HashMap<String, String>) {
        for (family, _) in types.iter().filter(|(_, k)| *k == "histogram") {
            let bucket = format!("{family}_bucket");
            // Group buckets by their labels without `le`, in export order.
            let mut series: Vec<(Labels, Vec<(String, f64)>)> = Vec::new();
            for (name, labels, v) in &self.samples {
                if *name != bucket {
                    continue;
                }
                let le = labels.iter().find(|(k, _)| k == "le").expect("bucket without le").1.clone();
                let rest: Vec<_> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
                match series.iter_mut().find(|(l, _)| *l == rest) {
                    Some((_, b)) => b.push((le, *v)),
                    None => series.push((rest, vec![(le, *v)])),
                }
            }
            for (labels, buckets) in series {
                let les: Vec<f64> = buckets.iter().map(|(le, _)| if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }).collect();
                assert!(les.windows(2).all(|w| w[0] < w[1]), "{family}{labels:?}: le bounds not increasing");
                assert_eq!(buckets.last().unwrap().0, "+Inf", "{family}{labels:?}: last bucket must be +Inf");
                assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{family}{labels:?}: buckets not cumulative");
                let count = self.one(&format!("{family}_count"), &labels);
                assert_eq!(buckets.last().unwrap().1, count, "{family}{labels:?}: +Inf bucket != _count");
                self.one(&format!("{family}_sum"), &labels);
            }
        }
    }

    fn one(&self, name: &str, labels: &[(String, String)]) -> f64 {
        let hits: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| n == name && l.len() == labels.len() && labels.iter().all(|p| l.contains(p)))
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!(hits.len(), 1, "expected one {name}{labels:?}, found {}", hits.len());
        hits[0]
    }

    /// Sum of every series of `name` whose labels include all of `want`.
    fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && want.iter().all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v)))
            .map(|(_, _, v)| *v)
            .sum()
    }

    fn label_values(&self, name: &str, label: &str) -> HashSet<String> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .filter_map(|(_, l, _)| l.iter().find(|(k, _)| k == label).map(|(_, v)| v.clone()))
            .collect()
    }
}

fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "scrape failed: {body}");
    Scrape::parse(&body)
}

/// The counter deltas between two scrapes, summed over shards.
fn delta(a: &Scrape, b: &Scrape, name: &str, want: &[(&str, &str)]) -> f64 {
    b.sum(name, want) - a.sum(name, want)
}

/// Read every file of `tree` under /m and compare the bytes.
fn read_all(c: &stoker_client::Client, tree: &[(String, Vec<u8>)]) {
    for (rel, data) in tree {
        assert!(c.read_file(&format!("/m/{rel}")).unwrap() == *data, "bytes differ for {rel}");
    }
}

#[test]
fn counters_and_histograms_move_with_reads() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // Small files are read in one request each (client-lib's first piece is
    // 256 KiB), so every counter can be predicted exactly; the big one (two
    // blocks and a bit) checks the per-block accounting.
    let small = make_tree(&src.join("small"), &[1, 4096, 100_000, 200_000, 250_000], 7);
    let small: Vec<_> = small.into_iter().map(|(rel, d)| (format!("small/{rel}"), d)).collect();
    let big = make_tree(&src.join("big"), &[2 * BLOCK + 12_345], 8);
    let big: Vec<_> = big.into_iter().map(|(rel, d)| (format!("big/{rel}"), d)).collect();
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let addr = free_addr();
    let _srv = Server::start(
        &dir.path().join("cache"),
        &sock,
        &[
            "--shards", "2", "--capacity", "1G", "--segment-size", "16M",
            "--mount", &format!("m=file://{}", src.display()),
            "--metrics", &addr.to_string(),
        ],
    );

    let s0 = scrape(addr);
    // Per-shard series carry a shard label, one per shard.
    let shards: HashSet<String> = ["0", "1"].iter().map(|s| s.to_string()).collect();
    for name in ["stoker_hits_total", "stoker_misses_total", "stoker_inflight_requests", "stoker_capacity_bytes"] {
        assert_eq!(s0.label_values(name, "shard"), shards, "{name} per shard");
    }
    assert_eq!(s0.sum("stoker_capacity_bytes", &[]), (1u64 << 30) as f64);
    assert_eq!(s0.sum("stoker_hits_total", &[]) + s0.sum("stoker_misses_total", &[]), 0.0, "nothing read yet");

    // Through the engine (the read histograms time its reads); direct reads below.
    let c = stoker_client::Client::connect_with(&sock, stoker_client::Options { direct: false, ..Default::default() }).unwrap();
    let n = small.len() as f64;
    let small_bytes = small.iter().map(|(_, d)| d.len()).sum::<usize>() as f64;

    // Cold: every file is one miss fetched from under storage.
    read_all(&c, &small);
    let s1 = scrape(addr);
    assert_eq!(delta(&s0, &s1, "stoker_misses_total", &[]), n, "one miss per cold file");
    assert_eq!(delta(&s0, &s1, "stoker_hits_total", &[]), 0.0, "no hits on a cold read");
    assert_eq!(delta(&s0, &s1, "stoker_served_bytes_total", &[]), small_bytes);
    assert_eq!(delta(&s0, &s1, "stoker_ufs_read_bytes_total", &[]), small_bytes);
    assert!(s1.sum("stoker_sessions", &[]) >= 1.0, "our session is attached");
    assert!(delta(&s0, &s1, "stoker_sessions_opened_total", &[]) >= 1.0);
    assert!(delta(&s0, &s1, "stoker_ufs_request_duration_seconds_count", &[("mount", "m")]) >= n);
    assert_eq!(s1.label_values("stoker_ufs_request_duration_seconds_count", "mount"), HashSet::from(["m".to_string()]));

    // Warm: the same bytes again are all hits, nothing from under storage.
    read_all(&c, &small);
    let s2 = scrape(addr);
    assert_eq!(delta(&s1, &s2, "stoker_hits_total", &[]), n, "one hit per warm file");
    assert_eq!(delta(&s1, &s2, "stoker_misses_total", &[]), 0.0, "no misses on a warm read");
    assert_eq!(delta(&s1, &s2, "stoker_served_bytes_total", &[]), small_bytes);
    assert_eq!(delta(&s1, &s2, "stoker_ufs_read_bytes_total", &[]), 0.0);
    assert_eq!(s2.sum("stoker_inflight_requests", &[]), 0.0, "nothing in flight once reads returned");

    // Shard read histograms are published once a second: poll until the
    // counts arrive, then check they match the requests exactly.
    let count = "stoker_read_duration_seconds_count";
    let mut last = scrape(addr);
    wait_for("read latency histograms to be published", Duration::from_secs(15), || {
        last = scrape(addr);
        delta(&s0, &last, count, &[("result", "miss")]) >= n && delta(&s0, &last, count, &[("result", "hit")]) >= n
    });
    assert_eq!(delta(&s0, &last, count, &[("result", "miss")]), n, "one miss latency per cold file");
    assert_eq!(delta(&s0, &last, count, &[("result", "hit")]), n, "one hit latency per warm file");
    assert_eq!(last.label_values(count, "result"), HashSet::from(["hit".to_string(), "miss".to_string()]));
    assert!(delta(&s0, &last, "stoker_read_duration_seconds_sum", &[]) > 0.0);
    assert!(delta(&s0, &last, "stoker_ufs_request_duration_seconds_sum", &[]) > 0.0);

    // A big file: one fetch per block, its bytes from under storage once,
    // then all from the cache.
    let (big_bytes, blocks) = (big[0].1.len() as f64, big[0].1.len().div_ceil(BLOCK) as f64);
    read_all(&c, &big);
    let s3 = scrape(addr);
    assert_eq!(delta(&last, &s3, "stoker_misses_total", &[]), blocks, "one miss per cold block");
    assert_eq!(delta(&last, &s3, "stoker_ufs_read_bytes_total", &[]), big_bytes);
    assert!(delta(&last, &s3, "stoker_served_bytes_total", &[]) >= big_bytes);
    read_all(&c, &big);
    let s4 = scrape(addr);
    assert_eq!(delta(&s3, &s4, "stoker_misses_total", &[]), 0.0);
    assert_eq!(delta(&s3, &s4, "stoker_ufs_read_bytes_total", &[]), 0.0);
    assert!(delta(&s3, &s4, "stoker_hits_total", &[]) >= blocks, "every warm block is a hit");
    assert!(delta(&s3, &s4, "stoker_served_bytes_total", &[]) >= big_bytes);

    // A client reading directly: its hits count as hits, bytes served and
    // device reads, and as direct hits.
    let direct = stoker_client::Client::connect(&sock).unwrap();
    read_all(&direct, &small);
    let s5 = scrape(addr);
    assert_eq!(delta(&s4, &s5, "stoker_direct_hits_total", &[]), n, "one direct hit per small file");
    assert_eq!(delta(&s4, &s5, "stoker_hits_total", &[]), n);
    assert_eq!(delta(&s4, &s5, "stoker_served_bytes_total", &[]), small_bytes);
    assert!(delta(&s4, &s5, "stoker_device_read_bytes_total", &[]) >= small_bytes);
    assert_eq!(delta(&s4, &s5, "stoker_misses_total", &[]), 0.0);

    // Only /metrics is served.
    let (status, _) = get(addr, "/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[test]
fn a_taken_metrics_port_fails_serve_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&[
        "serve", "--cache-dir", dir.path().join("c").to_str().unwrap(), "--socket",
        dir.path().join("s.sock").to_str().unwrap(), "--mount", &format!("m=file://{}", dir.path().display()),
        "--capacity", "1G", "--metrics", &addr,
    ]);
    assert!(!out.status.success(), "serve must refuse a metrics port in use");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metrics endpoint") && err.contains(&addr), "error names the endpoint: {err}");
}

fn fuse_ok() -> bool {
    let ok = std::path::Path::new("/dev/fuse").exists();
    if !ok {
        eprintln!("skipping: no /dev/fuse");
    }
    ok
}

const FUSE_COUNT: &str = "stoker_fuse_op_duration_seconds_count";

#[test]
fn mount_with_an_embedded_engine_exports_fuse_ops_and_engine_counters() {
    if !fuse_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let tree = make_tree(&src, &[10_000, 200_000, 300_000], 21);
    let bytes = tree.iter().map(|(_, d)| d.len()).sum::<usize>() as f64;
    let addr = free_addr();
    let (cache, sock, mp) = (dir.path().join("cache"), dir.path().join("m.sock"), dir.path().join("mnt"));
    let uri = format!("file://{}", src.display());
    let args = [
        "--cache-dir", cache.to_str().unwrap(), "--capacity", "256M", "--block-size", "64K",
        "--socket", sock.to_str().unwrap(), "--metrics", &addr.to_string(), &uri,
    ];
    let _m = FuseMount::start(&args, &mp);

    let s0 = scrape(addr);
    for (rel, data) in &tree {
        assert!(std::fs::read(mp.join(rel)).unwrap() == *data, "bytes differ for {rel}");
    }
    // A FUSE op is recorded just after its reply reaches the kernel, so the
    // reader may get there first: poll (briefly) for the last ones.
    let files = tree.len() as f64;
    let mut s1 = scrape(addr);
    wait_for("FUSE read latencies", Duration::from_secs(10), || {
        s1 = scrape(addr);
        delta(&s0, &s1, FUSE_COUNT, &[("op", "read")]) >= files
    });
    // No-open mode (the default): the kernel sends at most the first open.
    assert!(delta(&s0, &s1, FUSE_COUNT, &[("op", "open")]) <= 1.0, "no open per file");
    assert_eq!(delta(&s0, &s1, FUSE_COUNT, &[("op", "release")]), 0.0, "no release per file");
    assert!(delta(&s0, &s1, FUSE_COUNT, &[("op", "lookup")]) >= 1.0);
    // The embedded engine's metrics come from the same endpoint.
    assert_eq!(delta(&s0, &s1, "stoker_ufs_read_bytes_total", &[]), bytes, "every byte fetched once");
    assert!(delta(&s0, &s1, "stoker_misses_total", &[]) >= tree.len() as f64);
    assert!(delta(&s0, &s1, "stoker_served_bytes_total", &[]) >= bytes);
}

#[test]
fn mount_attached_to_an_engine_exports_its_fuse_ops_only() {
    if !fuse_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let tree = make_tree(&src, &[50_000, 70_000], 22);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let _srv = Server::start(
        &dir.path().join("cache"),
        &sock,
        &["--shards", "1", "--capacity", "256M", "--mount", &format!("m=file://{}", src.display())],
    );
    let addr = free_addr();
    let mp = dir.path().join("mnt");
    let _m = FuseMount::start(&["--socket", &sock, "--metrics", &addr.to_string(), "/m"], &mp);
    for (rel, data) in &tree {
        assert!(std::fs::read(mp.join(rel)).unwrap() == *data, "bytes differ for {rel}");
    }
    let mut s = scrape(addr);
    wait_for("FUSE read latencies", Duration::from_secs(10), || {
        s = scrape(addr);
        s.sum(FUSE_COUNT, &[("op", "read")]) >= tree.len() as f64
    });
    assert!(s.samples.iter().all(|(n, _, _)| n.starts_with("stoker_fuse_")), "only FUSE metrics without an engine");
}
