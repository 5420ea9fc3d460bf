//! `stoker tune --knobs fuse_threads,readahead` mounts one trial engine per
//! candidate, writes the winners into `[mount]` (uncommented, with the numbers
//! as comments), records the FUSE trials in the state file, and the written
//! config is one `stoker mount --config` accepts.

mod common;

use common::{make_tree, run, stoker, Server};
use std::path::Path;

fn is_mounted(mp: &Path) -> bool {
    let m = std::fs::read_to_string("/proc/mounts").unwrap();
    let mp = mp.to_str().unwrap();
    m.lines().any(|l| l.split_whitespace().nth(1) == Some(mp))
}

#[test]
fn tune_sweeps_fuse_knobs_and_mount_accepts_the_config() {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("no /dev/fuse: skipped");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    let out = t.path().join("tuned.toml");
    let args = [
        "tune", "--work-dir", work.to_str().unwrap(), "--out", out.to_str().unwrap(), "--budget", "10m", "--files", "20",
        "--mean-size", "4K", "--large-files", "0", "--passes", "1", "--capacity", "256M", "--knobs",
        "fuse_threads,readahead",
    ];
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "tune failed: {err}");
    assert!(err.contains(" 0 failed;"), "{err}");
    assert!(!is_mounted(&work.join("trial-mnt")), "a trial mount was left behind");
    let text = std::fs::read_to_string(&out).unwrap();
    let mount = &text[text.find("\n[mount]\n").expect(&text)..];
    // The winners are uncommented keys with the numbers behind them.
    for key in ["\nthreads = ", "\nreadahead = \"", "files/s (chosen)", "# mount defaults: "] {
        assert!(mount.contains(key), "{key:?} missing from [mount]:\n{text}");
    }
    for v in ["4 -> ", "8 -> ", "32 -> ", "1M -> ", "4M -> "] {
        assert!(mount.contains(v) && !mount.contains(&format!("{v}FAILED")), "{v}: {text}");
    }
    let f = stoker_tuning::ConfigFile::parse(&text).unwrap();
    let threads = f.mount.threads.expect("threads set");
    assert!([4, 8, 16, 32].contains(&threads), "{threads}");
    let ra = f.mount.readahead.as_ref().expect("readahead set").bytes_in("mount", "readahead").unwrap();
    assert!([1 << 20, 4 << 20, 8 << 20].contains(&ra), "{ra}");

    // The state file lists the FUSE trials: the baseline mount plus 3 + 2 candidates.
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(work.join("tune-state.json")).unwrap()).unwrap();
    let trials = state["trials"].as_array().unwrap();
    let fuse: Vec<_> = trials.iter().filter(|t| t["settings"].get("fuse").is_some()).collect();
    assert_eq!(fuse.len(), 6, "{state}");
    assert!(fuse.iter().all(|t| t.get("error").is_none() && t["files_per_s"].as_f64().unwrap() > 0.0), "{state}");
    assert_eq!(trials.len(), 7, "{state}"); // + the engine baseline

    // A resume reuses every trial.
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("0 trials run, 7 reused, 0 failed;"), "{err}");

    // `stoker mount --config` with the tuned file: mount, read a file through it.
    let src = t.path().join("src");
    let tree = make_tree(&src, &[5000, 70_000], 3);
    let sock = t.path().join("s.sock").display().to_string();
    let srv = Server::start(&t.path().join("cache"), &sock, &["--mount", &format!("m=file://{}", src.display())]);
    let mp = t.path().join("mnt");
    std::fs::create_dir_all(&mp).unwrap();
    let o = stoker()
        .args(["mount", "--socket", &sock, "/m", mp.to_str().unwrap(), "--daemon", "--config", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "mount --config failed: {}", String::from_utf8_lossy(&o.stderr));
    for (rel, data) in &tree {
        assert_eq!(&std::fs::read(mp.join(rel)).unwrap(), data, "{rel}");
    }
    let st = stoker().arg("umount").arg(&mp).status().unwrap();
    assert!(st.success() && !is_mounted(&mp));
    srv.stop();
}

/// An unknown knob name is refused and names the FUSE knobs.
#[test]
fn unknown_knob_lists_the_fuse_knobs() {
    let t = tempfile::tempdir().unwrap();
    let o = run(&["tune", "--work-dir", t.path().to_str().unwrap(), "--files", "2", "--knobs", "fuse_thread"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("fuse_threads, readahead"), "{err}");
}

/// A mount trial that fails is recorded and skipped: the sweep goes on, the
/// state file keeps its error, the config names it and never chooses it.
#[test]
fn a_failed_mount_trial_is_recorded_and_skipped() {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("no /dev/fuse: skipped");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    let out = t.path().join("tuned.toml");
    // Trials run `EXE mount ... --threads T ...`: this one refuses --threads 8.
    let exe = t.path().join("flaky-stoker");
    std::fs::write(
        &exe,
        format!(
            "#!/bin/sh\nif [ \"$1\" = mount ] && echo \" $* \" | grep -q -- ' --threads 8 '; then echo 'injected mount failure' >&2; exit 3; fi\nexec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_stoker")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = run(&[
        "tune", "--work-dir", work.to_str().unwrap(), "--out", out.to_str().unwrap(), "--budget", "10m", "--files", "20",
        "--mean-size", "4K", "--large-files", "0", "--passes", "1", "--capacity", "256M", "--knobs", "fuse_threads",
        "--serve-exe", exe.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "tune failed: {err}");
    assert!(err.contains("1 failed;"), "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("#   8 -> FAILED, skipped: stoker mount failed"), "{text}");
    assert!(text.contains("injected mount failure"), "{text}");
    assert!(!text.contains("\nthreads = 8\n"), "{text}");
    for v in ["4 -> ", "32 -> "] {
        assert!(text.contains(v) && !text.contains(&format!("{v}FAILED")), "{v}: {text}");
    }
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(work.join("tune-state.json")).unwrap()).unwrap();
    let bad: Vec<_> = state["trials"].as_array().unwrap().iter().filter(|t| t.get("error").is_some()).collect();
    assert_eq!(bad.len(), 1, "{state}");
    assert_eq!(bad[0]["settings"]["fuse"]["threads"], 8, "{state}");
    assert!(!is_mounted(&work.join("trial-mnt")));
}
