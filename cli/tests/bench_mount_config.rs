//! `stoker mount --config FILE` takes the FUSE knobs from the file's
//! `[mount]` section (the config `stoker tune` writes); flags override the
//! file; a bad key fails before anything is mounted. max_read is observable
//! as st_blksize on the mount.

mod common;

use common::{make_tree, stoker};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn is_mounted(mp: &Path) -> bool {
    let m = std::fs::read_to_string("/proc/mounts").unwrap();
    let mp = mp.to_str().unwrap();
    m.lines().any(|l| l.split_whitespace().nth(1) == Some(mp))
}

/// Mount with --daemon (returns once the mount answers), report st_blksize of
/// `file` on it, unmount. Each mount gets its own cache dir: the unmounted
/// daemon may still hold the last one's lock while it exits.
fn blksize_through_mount(src: &Path, cache: &Path, mp: &Path, file: &str, extra: &[&str]) -> u64 {
    let o = stoker()
        .args(["mount", "--daemon", &format!("file://{}", src.display()), mp.to_str().unwrap()])
        .args(["--cache-dir", cache.to_str().unwrap(), "--capacity", "256M", "--shards", "1"])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "mount failed: {}", String::from_utf8_lossy(&o.stderr));
    assert!(is_mounted(mp));
    let blk = std::fs::metadata(mp.join(file)).unwrap().blksize();
    let st = stoker().arg("umount").arg(mp).status().unwrap();
    assert!(st.success() && !is_mounted(mp));
    blk
}

#[test]
fn mount_reads_the_mount_section_and_flags_override_it() {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("no /dev/fuse: skipped");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let tree = make_tree(&src, &[5000], 1);
    let caches = [t.path().join("c1"), t.path().join("c2"), t.path().join("c3")];
    let mp = t.path().join("mnt");
    std::fs::create_dir_all(&mp).unwrap();
    let cache = t.path().join("c4");
    let conf = t.path().join("tuned.toml");
    // [serve] and [client] are ignored by mount; [mount] applies.
    std::fs::write(
        &conf,
        "[serve]\nshards = 1\n[client]\nreaders = 8\n[mount]\nthreads = 4\nmax_read = \"256K\"\nreadahead = \"512K\"\n",
    )
    .unwrap();
    let c = conf.to_str().unwrap();
    // Control: without the file the default (1 MiB) shows.
    assert_eq!(blksize_through_mount(&src, &caches[0], &mp, &tree[0].0, &[]), 1 << 20);
    assert_eq!(blksize_through_mount(&src, &caches[1], &mp, &tree[0].0, &["--config", c]), 256 << 10);
    assert_eq!(blksize_through_mount(&src, &caches[2], &mp, &tree[0].0, &["--config", c, "--max-read", "128K"]), 128 << 10);

    // A typo in [mount] is refused before mounting.
    std::fs::write(&conf, "[mount]\nthread = 4\n").unwrap();
    let o = stoker()
        .args(["mount", &format!("file://{}", src.display()), mp.to_str().unwrap(), "--config", c])
        .args(["--cache-dir", cache.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("thread"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!is_mounted(&mp));
}
