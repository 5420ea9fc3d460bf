//! Listings persist across a restart (in the cache dir's attribute log) and
//! are trusted for the mount's sync interval afterwards: a restart does not
//! relist a `sync=never` mount.

mod common;

use common::*;
use std::time::Duration;

fn names(c: &stoker_client::Client, path: &str) -> Vec<String> {
    let mut v: Vec<String> = c.list(path).unwrap().into_iter().map(|e| e.name).collect();
    v.sort();
    v
}

#[test]
fn a_restart_does_not_relist_a_never_mount_and_relists_a_1s_mount_after_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let big = src.join("big");
    std::fs::create_dir_all(big.join("sub")).unwrap();
    let n = 2000;
    for i in 0..n {
        std::fs::write(big.join(format!("f{i:05}")), i.to_string()).unwrap();
    }
    let uri = format!("file://{}", src.display());
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let cache = dir.path().join("cache");
    let frozen = format!("frozen={uri}");
    let live = format!("live={uri}");
    let args = [
        "--shards", "1", "--capacity", "256M", "--segment-size", "16M",
        "--mount", frozen.as_str(), "--mount", live.as_str(),
        "--mount-opt", "frozen:sync=never", "--mount-opt", "live:sync=1s",
    ];

    let srv = Server::start(&cache, &sock, &args);
    let c = srv.client();
    let first = names(&c, "/frozen/big");
    assert_eq!(first.len(), n + 1);
    assert!(first.contains(&"sub".to_string()) && first.contains(&"f00007".to_string()));
    assert_eq!(names(&c, "/live/big").len(), n + 1);
    srv.stop();

    // Out of band while stopped: one file gone, one added.
    std::fs::remove_file(big.join("f00007")).unwrap();
    std::fs::write(big.join("zz-added"), b"new").unwrap();

    let srv = Server::start(&cache, &sock, &args);
    let c = srv.client();
    // `live` is re-listed once its 1s has passed since the restart.
    wait_for("the 1s mount to relist after the restart", Duration::from_secs(20), || {
        let l = names(&c, "/live/big");
        !l.contains(&"f00007".to_string()) && l.contains(&"zz-added".to_string())
    });
    // `frozen` answers from the persisted listing: the old entries, even
    // after the 1s mount has shown the change.
    let after = names(&c, "/frozen/big");
    assert_eq!(after, first, "the sync=never mount was relisted after the restart");
    let e = c.list("/frozen/big").unwrap().into_iter().find(|e| e.name == "sub").unwrap();
    assert_eq!(e.attr.kind, stoker_proto::control::Kind::Dir, "directory entries keep their kind");
    let f = c.list("/frozen/big").unwrap().into_iter().find(|e| e.name == "f00005").unwrap();
    assert_eq!(f.attr.size, 1, "file entries keep their attributes");
    srv.stop();

    // Control: a cache dir without the log does list the change, so the
    // check above is about persistence, not about the directory.
    let srv = Server::start(&dir.path().join("cache2"), &sock, &args);
    let fresh = names(&srv.client(), "/frozen/big");
    assert!(!fresh.contains(&"f00007".to_string()) && fresh.contains(&"zz-added".to_string()));
    srv.stop();
}
