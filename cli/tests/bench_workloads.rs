//! `stoker bench`: gen is deterministic at the CLI, and every workload's JSON
//! carries the documented fields with sane values, against a local directory,
//! the under storage with injected latency and a real `stoker serve`.

mod common;

use common::{files_under, run, Server};
use serde_json::Value;
use std::path::Path;

fn digest(dir: &Path) -> Vec<(String, Vec<u8>)> {
    files_under(dir)
        .into_iter()
        .map(|rel| {
            let data = std::fs::read(dir.join(&rel)).unwrap();
            (rel, data)
        })
        .collect()
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "stoker {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn gen_is_deterministic_for_a_seed() {
    let t = tempfile::tempdir().unwrap();
    let d = |n: &str| t.path().join(n).display().to_string();
    for (name, seed) in [("a", "5"), ("b", "5"), ("c", "6")] {
        ok(&["bench", "gen", &d(name), "--files", "30", "--mean-size", "3K", "--dirs", "4", "--seed", seed]);
    }
    let (a, b, c) = (digest(&t.path().join("a")), digest(&t.path().join("b")), digest(&t.path().join("c")));
    assert_eq!(a.len(), 30);
    assert_eq!(a, b);
    assert_ne!(a, c);
    ok(&["bench", "gen", &d("l1"), "--large", "--large-files", "2", "--large-size", "1M", "--seed", "5"]);
    ok(&["bench", "gen", &d("l2"), "--large", "--large-files", "2", "--large-size", "1M", "--seed", "5"]);
    let l1 = digest(&t.path().join("l1"));
    assert_eq!(l1.iter().map(|f| (f.0.as_str(), f.1.len())).collect::<Vec<_>>(), [("large/blob000.bin", 1 << 20), ("large/blob001.bin", 1 << 20)]);
    assert_eq!(l1, digest(&t.path().join("l2")));
}

fn reports(stdout: &str) -> Vec<Value> {
    serde_json::from_str::<Vec<Value>>(stdout).expect("JSON array of reports")
}

/// The fields every report has, with values that make sense for a pass.
fn check_report(r: &Value, workload: &str, files: u64, ops: u64) {
    let u = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {r}"));
    let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {r}"));
    assert_eq!(r["workload"], workload, "{r}");
    assert_eq!((u("files"), u("ops"), u("errors")), (files, ops, 0), "{r}");
    assert!(f("secs") > 0.0 && f("files_per_s") > 0.0 && f("ops_per_s") > 0.0, "{r}");
    assert!((f("ops_per_s") * f("secs") - ops as f64).abs() < 1.0, "{r}");
    assert!(u("p50_us") >= 1 && u("p50_us") <= u("p90_us") && u("p90_us") <= u("p99_us") && u("p99_us") <= u("p999_us"), "{r}");
    assert!(f("cpu_secs") >= 0.0, "{r}");
    if workload == "stat" {
        assert_eq!((u("bytes"), f("mib_per_s")), (0, 0.0), "{r}");
    } else {
        assert!(u("bytes") > 0 && f("mib_per_s") > 0.0, "{r}");
    }
}

#[test]
fn every_workload_reports_its_fields_per_target() {
    let t = tempfile::tempdir().unwrap();
    let small = t.path().join("small");
    let big = t.path().join("big");
    let (s, b) = (small.display().to_string(), big.display().to_string());
    ok(&["bench", "gen", &s, "--files", "40", "--mean-size", "4K", "--dirs", "3"]);
    ok(&["bench", "gen", &b, "--large", "--large-files", "2", "--large-size", "2M"]);
    let small_bytes: u64 = digest(&small).iter().map(|f| f.1.len() as u64).sum();
    let sock = t.path().join("s.sock").display().to_string();
    let srv = Server::start(
        &t.path().join("cache"),
        &sock,
        &["--mount", &format!("small=file://{s}"), "--mount", &format!("big=file://{b}"), "--shards", "2", "--capacity", "256M"],
    );

    // epoch: local, direct under storage, a directory path, and stoker.
    let out = ok(&[
        "bench", "epoch", "--source", &s, "--prefix", "/small", "--targets", &format!("local,direct:1ms,{s},stoker"),
        "--threads", "4", "--verify", "--json", "--socket", &sock,
    ]);
    let rs = reports(&out);
    assert_eq!(rs.len(), 4);
    let targets: Vec<&str> = rs.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["local", "direct (1ms/request)", s.as_str(), "stoker (client-lib)"]);
    for r in &rs {
        check_report(r, "epoch", 40, 40);
        assert_eq!(r["bytes"].as_u64(), Some(small_bytes), "{r}");
    }
    // Every direct read paid at least its injected millisecond.
    assert!(rs[1]["p50_us"].as_u64().unwrap() >= 1000, "{}", rs[1]);

    let out = ok(&["bench", "stat", "--source", &s, "--prefix", "/small", "--targets", "local,stoker", "--verify", "--json", "--socket", &sock]);
    let rs = reports(&out);
    assert_eq!(rs.len(), 2);
    rs.iter().for_each(|r| check_report(r, "stat", 40, 80));

    let out = ok(&[
        "bench", "random", "--source", &b, "--prefix", "/big", "--targets", "local,stoker", "--ops", "100", "--range-size", "16K",
        "--verify", "--json", "--socket", &sock, "--passes", "2",
    ]);
    let rs = reports(&out);
    assert_eq!(rs.len(), 4);
    for r in &rs {
        check_report(r, "random", 100, 100);
        assert_eq!(r["bytes"].as_u64(), Some(100 * 16384), "{r}");
    }

    let out = ok(&["bench", "seq", "--source", &b, "--prefix", "/big", "--targets", "local,stoker", "--chunk", "256K", "--verify", "--json", "--socket", &sock]);
    let rs = reports(&out);
    assert_eq!(rs.len(), 2);
    for r in &rs {
        check_report(r, "seq", 2, 16);
        assert_eq!(r["bytes"].as_u64(), Some(4 << 20), "{r}");
    }
    srv.stop();
}

#[test]
fn ceiling_rows_and_fractions_come_with_a_workload() {
    let t = tempfile::tempdir().unwrap();
    let s = t.path().join("small").display().to_string();
    ok(&["bench", "gen", &s, "--files", "20", "--mean-size", "100K", "--dirs", "2"]);
    let dir = t.path().display().to_string();
    let ceiling = ["--ceiling-dir", &dir, "--ceiling-size", "8M", "--ceiling-ops", "20", "--queue-depths", "1,2"];
    let out = ok(&[&["bench", "epoch", "--source", &s, "--threads", "2", "--json"][..], &ceiling[..]].concat());
    let rs = reports(&out);
    assert_eq!(rs.len(), 1 + 3 * 2, "{out}");
    let epoch = &rs[0];
    check_report(epoch, "epoch", 20, 20);
    // ~100 KiB files compare with the random 128 KiB ceiling.
    let best128 = rs.iter().filter(|r| r["pass"].as_str().unwrap().starts_with("rand 128K")).map(|r| r["mib_per_s"].as_f64().unwrap()).fold(0.0, f64::max);
    let frac = epoch["ceiling_fraction"].as_f64().expect("fraction of ceiling");
    assert!((frac - epoch["mib_per_s"].as_f64().unwrap() / best128).abs() < 1e-6, "{frac} vs {best128}");
    for r in &rs[1..] {
        assert_eq!(r["workload"], "ceiling");
        assert_eq!(r["ops"].as_u64(), Some(20), "{r}");
        assert!(r["ceiling_fraction"].is_null());
    }
    // A saved ceiling is reused instead of measured.
    let saved = ok(&[&["bench", "ceiling", "--json"][..], &ceiling[..]].concat());
    let c: Value = serde_json::from_str(&saved).unwrap();
    assert!(c["seq_mib_per_s"].as_f64().unwrap() > 0.0 && c["rand4k_iops"].as_f64().unwrap() > 0.0);
    let path = t.path().join("ceiling.json");
    std::fs::write(&path, &saved).unwrap();
    let out = ok(&["bench", "seq", "--source", &s, "--json", "--ceiling-json", path.to_str().unwrap()]);
    let rs = reports(&out);
    let want = rs[0]["mib_per_s"].as_f64().unwrap() / c["seq_mib_per_s"].as_f64().unwrap();
    assert!((rs[0]["ceiling_fraction"].as_f64().unwrap() - want).abs() < 1e-6);
    assert!(!t.path().join("stoker-ceiling.dat").exists(), "scratch file left behind");
}

#[test]
fn loader_runs_worker_processes_one_row_per_count() {
    let t = tempfile::tempdir().unwrap();
    let s = t.path().join("small").display().to_string();
    ok(&["bench", "gen", &s, "--files", "25", "--mean-size", "4K", "--dirs", "3"]);
    let bytes: u64 = digest(Path::new(&s)).iter().map(|f| f.1.len() as u64).sum();
    let sock = t.path().join("s.sock").display().to_string();
    let srv = Server::start(&t.path().join("cache"), &sock, &["--mount", &format!("small=file://{s}"), "--shards", "2", "--capacity", "64M"]);

    let out = ok(&[
        "bench", "loader", "--source", &s, "--prefix", "/small", "--targets", "local,stoker", "--procs", "1,2", "--verify", "--json", "--socket", &sock,
    ]);
    let rs = reports(&out);
    let rows: Vec<(&str, &str)> = rs.iter().map(|r| (r["workload"].as_str().unwrap(), r["target"].as_str().unwrap())).collect();
    assert_eq!(rows, [("loader-1p", "local"), ("loader-2p", "local"), ("loader-1p", "stoker (client-lib)"), ("loader-2p", "stoker (client-lib)")]);
    for r in &rs {
        check_report(r, r["workload"].as_str().unwrap(), 25, 25);
        assert_eq!(r["bytes"].as_u64(), Some(bytes), "{r}");
    }
    srv.stop();

    // Reads that fail inside the workers are counted, and fail the command in one line.
    let missing = t.path().join("missing").display().to_string();
    let o = run(&["bench", "loader", "--source", &s, "--targets", &missing, "--procs", "2", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().last(), Some("stoker: error: 25 read errors or mismatches"), "{err}");
    assert_eq!(reports(&String::from_utf8(o.stdout).unwrap())[0]["errors"].as_u64(), Some(25));
    let o = run(&["bench", "loader", "--source", &s, "--procs", "2,0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--procs"));
}
