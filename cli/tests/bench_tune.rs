//! `stoker tune` on a tiny budget writes a config that `stoker serve
//! --config` accepts; a rerun resumes from the saved trials; flags override
//! the file and a bad key is refused.

mod common;

use common::{make_tree, run, Server};

#[test]
fn tune_writes_a_config_serve_accepts_and_resumes() {
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work").display().to_string();
    let out = t.path().join("tuned.toml");
    let args = [
        "tune", "--work-dir", &work, "--out", out.to_str().unwrap(), "--budget", "1s", "--files", "30", "--mean-size", "4K",
        "--large-files", "1", "--large-size", "1M", "--passes", "1", "--capacity", "256M",
    ];
    let o = run(&args);
    assert!(o.status.success(), "tune failed: {}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    for key in ["[serve]", "shards = ", "block_size = ", "segment_size = ", "[client]", "readers = ", "files/s (chosen)"] {
        assert!(text.contains(key), "{key:?} missing from:\n{text}");
    }
    // The state file lets a second run reuse the trials it already has.
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let reused: usize = err.split(" reused").next().unwrap().rsplit(' ').next().unwrap().parse().expect(&err);
    assert!(reused >= 1, "{err}");

    // serve --config with the tuned file: connect and read a file.
    let src = t.path().join("src");
    let tree = make_tree(&src, &[5000, 70_000], 3);
    let sock = t.path().join("s.sock").display().to_string();
    let srv = Server::start(
        &t.path().join("cache"),
        &sock,
        &["--config", out.to_str().unwrap(), "--mount", &format!("m=file://{}", src.display()), "--capacity", "256M"],
    );
    let c = srv.client();
    for (rel, data) in &tree {
        assert_eq!(&c.read_file(&format!("/m/{rel}")).unwrap(), data);
    }
    srv.stop();
}

#[test]
fn config_values_apply_flags_override_and_bad_keys_fail() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let tree = make_tree(&src, &[100, 9000], 4);
    let conf = t.path().join("c.toml");
    // The file alone names the mount, the capacity and the block size.
    std::fs::write(
        &conf,
        format!("[serve]\nshards = 1\nblock_size = \"64K\"\ncapacity = \"128M\"\nmounts = [\"m=file://{}\"]\n", src.display()),
    )
    .unwrap();
    let sock = t.path().join("s.sock").display().to_string();
    let cache = t.path().join("cache");
    let srv = Server::start(&cache, &sock, &["--config", conf.to_str().unwrap()]);
    assert_eq!(srv.client().block_bytes(), 64 << 10);
    assert_eq!(srv.client().read_file(&format!("/m/{}", tree[1].0)).unwrap(), tree[1].1);
    srv.stop();
    // A flag wins over the file.
    let srv = Server::start(&t.path().join("cache2"), &sock, &["--config", conf.to_str().unwrap(), "--block-size", "128K"]);
    assert_eq!(srv.client().block_bytes(), 128 << 10);
    srv.stop();
    // An unknown key is an error, not silently ignored.
    std::fs::write(&conf, "[serve]\nshard = 2\n").unwrap();
    let o = run(&["serve", "--config", conf.to_str().unwrap(), "--cache-dir", cache.to_str().unwrap(), "--socket", &sock]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("shard"), "{}", String::from_utf8_lossy(&o.stderr));
}
