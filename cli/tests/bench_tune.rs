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
    for key in ["[serve]", "shards = ", "io_depth = ", "block_size = ", "segment_size = ", "[client]", "readers = ", "files/s (chosen)"] {
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

/// A trial that fails is recorded and skipped: tune finishes, the state file
/// keeps the error, the config's comments name it, the other candidates of the
/// same knob are still measured, and a resume measures the failed one again.
#[test]
fn a_failed_trial_is_recorded_and_skipped() {
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    let out = t.path().join("tuned.toml");
    // Trials run `EXE serve --config FILE ...`: this one refuses readers = 4.
    let exe = t.path().join("flaky-stoker");
    std::fs::write(
        &exe,
        format!(
            "#!/bin/sh\nif [ \"$1\" = serve ] && grep -q '^readers = 4$' \"$3\"; then echo 'injected failure' >&2; exit 3; fi\nexec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_stoker")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let args = [
        "tune", "--work-dir", work.to_str().unwrap(), "--out", out.to_str().unwrap(), "--budget", "10m", "--files", "20",
        "--mean-size", "4K", "--large-files", "0", "--passes", "1", "--capacity", "256M", "--knobs", "readers",
        "--serve-exe", exe.to_str().unwrap(),
    ];
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "tune failed: {err}");
    assert!(err.contains("1 failed;"), "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("#   4 -> FAILED, skipped: trial engine exited"), "{text}");
    assert!(text.contains("injected failure"), "{text}");
    assert!(text.contains("1 trial(s) failed"), "{text}");
    // Every other readers candidate was measured after the failure.
    for v in [8, 16, 32, 64] {
        assert!(text.contains(&format!("{v} -> ")) && !text.contains(&format!("{v} -> FAILED")), "{v}: {text}");
    }
    assert!(text.contains("readers = ") && !text.contains("readers = 4\n"), "{text}");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(work.join("tune-state.json")).unwrap()).unwrap();
    let trials = state["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 5, "{state}");
    let bad: Vec<_> = trials.iter().filter(|t| t.get("error").is_some()).collect();
    assert_eq!(bad.len(), 1, "{state}");
    assert_eq!(bad[0]["settings"]["readers"], 4);
    assert!(bad[0]["error"].as_str().unwrap().contains("injected failure"), "{state}");
    assert!(work.join("trial-failed-1.log").exists());
    // A resume reuses the four that ran and tries the failed one again.
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("1 trials run, 4 reused, 1 failed;"), "{err}");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(work.join("tune-state.json")).unwrap()).unwrap();
    assert_eq!(state["trials"].as_array().unwrap().len(), 6, "{state}");
}
