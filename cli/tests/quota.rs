//! Per-mount quotas: a flood of reads into a quota'd mount keeps its cached
//! bytes within the quota (before and after a restart) while another mount
//! in the same engine caches everything.

mod common;

use common::*;

fn cached_bytes(sock: &str, path: &str) -> (u64, f64) {
    let out = run(&["stat", path, "--json", "--socket", sock]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Every file here is one block of 500,000 bytes.
    (j["cached_blocks"].as_u64().unwrap() * 500_000, j["cached_fraction"].as_f64().unwrap())
}

#[test]
fn quota_holds_under_a_flood_and_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    make_tree(&a, &vec![500_000; 40], 1);
    make_tree(&b, &vec![500_000; 40], 2);
    let cache = dir.path().join("cache");
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let (ma, mb) = (format!("a=file://{}", a.display()), format!("b=file://{}", b.display()));
    let args = ["--shards", "2", "--capacity", "256M", "--block-size", "1M", "--quota", "a=8M", "--mount", &ma, "--mount", &mb];
    let quota = 8u64 << 20;

    // A quota for a mount that does not exist is one clear line.
    let out = run(&["serve", "--cache-dir", "/tmp/unused-q", "--socket", "/tmp/unused-q.sock", "--quota", "zz=8M", "--mount", &ma]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no --mount named \"zz\""));

    let srv = Server::start(&cache, &sock, &args);
    let c = srv.client();
    for _pass in 0..2 {
        for m in ["a", "b"] {
            for e in c.walk(&format!("/{m}")).unwrap() {
                c.read_file(&e.name).unwrap();
            }
        }
    }
    wait_for("background writes", std::time::Duration::from_secs(30), || {
        c.engine_stats().unwrap().shards.iter().all(|s| s.pending_write_bytes == 0)
    });
    wait_for("mount b fully cached", std::time::Duration::from_secs(20), || cached_bytes(&sock, "/b").1 == 1.0);
    let (a_bytes, _) = cached_bytes(&sock, "/a");
    assert!(a_bytes <= quota, "mount a holds {a_bytes} bytes over its {quota}-byte quota");
    assert!(a_bytes >= quota / 4, "mount a caches almost nothing ({a_bytes}): the quota is not what limits it");
    let dropped: u64 = c.engine_stats().unwrap().shards.iter().map(|s| s.quota_evicted_blocks).sum();
    assert!(dropped >= 20, "only {dropped} blocks dropped for a 20 MB flood into an 8 MB quota");
    drop(c);
    srv.stop();

    // After a restart the quota still holds for a new flood.
    let srv = Server::start(&cache, &sock, &args);
    let c = srv.client();
    for e in c.walk("/a").unwrap() {
        c.read_file(&e.name).unwrap();
    }
    wait_for("background writes", std::time::Duration::from_secs(30), || {
        c.engine_stats().unwrap().shards.iter().all(|s| s.pending_write_bytes == 0)
    });
    let (a_bytes, _) = cached_bytes(&sock, "/a");
    assert!(a_bytes <= quota, "after restart mount a holds {a_bytes} bytes over its quota");
    drop(c);
    srv.stop();
}
