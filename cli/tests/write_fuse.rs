//! Writes through a real FUSE mount (`stoker mount --socket S /m MP`) of a
//! real `stoker serve` whose mount has a write mode; and the refusals of a
//! read-only one (docs/SEMANTICS.md, "Writes"). Needs /dev/fuse and root.

mod common;

use common::*;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

fn mount_opts(mp: &Path) -> String {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let want = mp.to_str().unwrap();
    text.lines().find(|l| l.split(' ').nth(1) == Some(want)).and_then(|l| l.split(' ').nth(3)).unwrap_or("").to_string()
}

/// `stoker mount --socket SOCKET ROOT MP`, attached to a running engine.
fn mount(socket: &str, root: &str, mp: &Path) -> FuseMount {
    FuseMount::start(&["--socket", socket, root], mp)
}

fn data(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| ((j * 13 + i * 101 + j / 509) % 256) as u8).collect()
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().expect("an OS error")
}

fn serve(dir: &Path, mode: Option<&str>, latency: &str) -> Server {
    let ufs = dir.join("ufs");
    std::fs::create_dir_all(&ufs).unwrap();
    let sock = dir.join("s.sock").to_string_lossy().into_owned();
    let mount = format!("m=file://{}", ufs.display());
    let mut args = vec!["--shards".to_string(), "2".into(), "--capacity".into(), "256M".into(), "--segment-size".into(), "16M".into()];
    args.extend(["--mount".into(), mount, "--ufs-latency".into(), latency.into()]);
    if let Some(m) = mode {
        args.extend(["--mount-opt".into(), format!("m:write={m}")]);
    }
    let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    Server::start(&dir.join("cache"), &sock, &argv)
}

#[test]
fn fuse_async_writes_read_back_before_persist_and_sync_lands_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ufs")).unwrap();
    std::fs::write(dir.path().join("ufs/existing.txt"), b"from under storage").unwrap();
    let srv = serve(dir.path(), Some("async"), "500ms");
    let mp = dir.path().join("mnt");
    let _m = mount(&srv.socket, "/m", &mp);
    assert!(!mount_opts(&mp).split(',').any(|o| o == "ro"), "writable mount is rw: {}", mount_opts(&mp));

    let files: Vec<(String, Vec<u8>)> =
        [0usize, 1, 4096, 131_073, 3 << 20].iter().enumerate().map(|(i, &n)| (format!("out-{i}.bin"), data(i, n))).collect();
    for (name, d) in &files {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o640).open(mp.join(name)).unwrap();
        // Several writes, as a writer streaming its output.
        for chunk in d.chunks(100_000) {
            f.write_all(chunk).unwrap();
        }
        f.sync_all().unwrap();
        drop(f); // close: acknowledged once durable on the engine's disk
    }
    let c = srv.client();
    let pending = c.engine_stats().unwrap().persist_pending_files;
    assert!(pending > 0, "the 500 ms store cannot have taken them all yet");
    // Read back through FUSE and through the shared-memory client, before persisted.
    for (name, d) in &files {
        assert!(std::fs::read(mp.join(name)).unwrap() == *d, "{name} through FUSE");
        assert!(c.read_file(&format!("/m/{name}")).unwrap() == *d, "{name} through the client");
        let md = std::fs::metadata(mp.join(name)).unwrap();
        assert_eq!(md.len(), d.len() as u64);
        // SAFETY: getuid cannot fail.
        assert_eq!((md.mode() & 0o777, md.uid()), (0o640, unsafe { libc::getuid() }), "{name} carries its writer's mode and uid");
    }
    let mut names: Vec<String> = std::fs::read_dir(&mp).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut want: Vec<String> = files.iter().map(|f| f.0.clone()).collect();
    want.push("existing.txt".into());
    want.sort();
    assert_eq!(names, want);

    // Refused with the documented errno: a random overwrite, an append to a
    // non-empty file, a write that is not at the end.
    let e = std::fs::OpenOptions::new().write(true).open(mp.join("existing.txt"));
    assert_eq!(errno_of(e), libc::EOPNOTSUPP, "open for writing without O_TRUNC");
    let f = std::fs::OpenOptions::new().write(true).create_new(true).open(mp.join("seq.bin")).unwrap();
    f.write_all_at(b"abc", 0).unwrap();
    assert_eq!(errno_of(f.write_all_at(b"x", 10)), libc::EOPNOTSUPP, "pwrite past the end");
    assert_eq!(errno_of(f.write_all_at(b"x", 1)), libc::EOPNOTSUPP, "overwrite");
    drop(f);
    assert_eq!(std::fs::read(mp.join("seq.bin")).unwrap(), b"abc");
    // Rewriting whole (O_TRUNC) is fine, also over a file from under storage.
    std::fs::write(mp.join("existing.txt"), b"rewritten").unwrap();
    assert_eq!(std::fs::read(mp.join("existing.txt")).unwrap(), b"rewritten");
    // Directories: made in under storage at once; files go into them.
    std::fs::create_dir(mp.join("newdir")).unwrap();
    assert!(dir.path().join("ufs/newdir").is_dir());
    std::fs::write(mp.join("newdir/inner.bin"), b"inner").unwrap();
    assert_eq!(std::fs::read(mp.join("newdir/inner.bin")).unwrap(), b"inner");
    assert_eq!(errno_of(std::fs::remove_dir(mp.join("newdir"))), libc::ENOTEMPTY);
    std::fs::create_dir(mp.join("emptydir")).unwrap();
    std::fs::remove_dir(mp.join("emptydir")).unwrap();
    assert!(!dir.path().join("ufs/emptydir").exists());
    assert_eq!(errno_of(std::fs::metadata(mp.join("emptydir"))), libc::ENOENT);
    // Rename: a written file moves and is persisted under its new name.
    std::fs::write(mp.join("part.tmp"), b"committed").unwrap();
    std::fs::rename(mp.join("part.tmp"), mp.join("part.out")).unwrap();
    assert_eq!(std::fs::read(mp.join("part.out")).unwrap(), b"committed");
    assert_eq!(errno_of(std::fs::metadata(mp.join("part.tmp"))), libc::ENOENT);
    assert_eq!(errno_of(std::fs::rename(mp.join("newdir"), mp.join("newdir2"))), libc::EOPNOTSUPP);

    let out = run(&["sync", "--socket", &srv.socket, "/m"]);
    assert!(out.status.success(), "sync: {}", String::from_utf8_lossy(&out.stderr));
    for (name, d) in &files {
        assert!(std::fs::read(dir.path().join("ufs").join(name)).unwrap() == *d, "{name} byte-exact in under storage");
    }
    assert_eq!(std::fs::read(dir.path().join("ufs/existing.txt")).unwrap(), b"rewritten");
    assert_eq!(std::fs::read(dir.path().join("ufs/newdir/inner.bin")).unwrap(), b"inner");
    assert_eq!(std::fs::read(dir.path().join("ufs/part.out")).unwrap(), b"committed");
    assert!(!dir.path().join("ufs/part.tmp").exists());
    // A stored file is renamed in under storage.
    std::fs::rename(mp.join("part.out"), mp.join("final.out")).unwrap();
    assert_eq!(std::fs::read(dir.path().join("ufs/final.out")).unwrap(), b"committed");
    assert!(!dir.path().join("ufs/part.out").exists());
    assert_eq!(std::fs::read(mp.join("final.out")).unwrap(), b"committed");
    let s = c.engine_stats().unwrap();
    assert_eq!((s.persist_pending_files, s.persist_pending_bytes), (0, 0));
    // unlink removes it from the mount and from under storage.
    std::fs::remove_file(mp.join("seq.bin")).unwrap();
    assert!(!dir.path().join("ufs/seq.bin").exists());
    assert_eq!(errno_of(std::fs::metadata(mp.join("seq.bin"))), libc::ENOENT);
    for (name, d) in &files {
        assert!(std::fs::read(mp.join(name)).unwrap() == *d, "{name} after persist");
    }
}

#[test]
fn fuse_close_then_kill_9_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(dir.path(), Some("async"), "3s");
    let socket = srv.socket.clone();
    let mp = dir.path().join("mnt");
    let _m = mount(&socket, "/m", &mp);
    let files: Vec<(String, Vec<u8>)> = (0..6).map(|i| (format!("k{i}.bin"), data(i + 40, 10_000 + i * 70_000))).collect();
    for (name, d) in &files {
        std::fs::write(mp.join(name), d).unwrap();
    }
    // Right after the last close returned.
    srv.kill9();
    assert!(!dir.path().join("ufs/k0.bin").exists(), "the 3 s store cannot have them yet");
    let srv = serve(dir.path(), Some("async"), "10ms");
    // The mount reconnects to the new engine.
    for (name, d) in &files {
        assert!(std::fs::read(mp.join(name)).unwrap() == *d, "{name} through FUSE after kill -9");
        assert!(srv.client().read_file(&format!("/m/{name}")).unwrap() == *d, "{name} through the client after kill -9");
    }
    let out = run(&["sync", "--socket", &socket, "/m"]);
    assert!(out.status.success(), "sync: {}", String::from_utf8_lossy(&out.stderr));
    for (name, d) in &files {
        assert!(std::fs::read(dir.path().join("ufs").join(name)).unwrap() == *d, "{name} persisted after restart");
    }
}

#[test]
fn fuse_read_only_mount_still_refuses_writes_with_erofs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ufs")).unwrap();
    std::fs::write(dir.path().join("ufs/a.txt"), b"a").unwrap();
    let srv = serve(dir.path(), None, "0ms");
    let mp = dir.path().join("mnt");
    let _m = mount(&srv.socket, "/m", &mp);
    assert!(mount_opts(&mp).split(',').any(|o| o == "ro"), "read-only mount is ro: {}", mount_opts(&mp));
    assert_eq!(errno_of(std::fs::write(mp.join("new.txt"), b"x")), libc::EROFS);
    assert_eq!(errno_of(std::fs::OpenOptions::new().write(true).open(mp.join("a.txt"))), libc::EROFS);
    assert_eq!(errno_of(std::fs::remove_file(mp.join("a.txt"))), libc::EROFS);
    assert_eq!(std::fs::read(mp.join("a.txt")).unwrap(), b"a");
}

#[test]
fn fuse_through_mode_has_it_in_under_storage_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(dir.path(), Some("through"), "100ms");
    let mp = dir.path().join("mnt");
    let _m = mount(&srv.socket, "/m", &mp);
    let d = data(9, 500_000);
    std::fs::write(mp.join("t.bin"), &d).unwrap();
    assert!(std::fs::read(dir.path().join("ufs/t.bin")).unwrap() == d, "in under storage when close returned");
    assert!(std::fs::read(mp.join("t.bin")).unwrap() == d);
}

#[test]
fn fuse_uri_mount_takes_the_write_option_too() {
    let dir = tempfile::tempdir().unwrap();
    let ufs = dir.path().join("ufs");
    std::fs::create_dir_all(&ufs).unwrap();
    let mp = dir.path().join("mnt");
    std::fs::create_dir_all(&mp).unwrap();
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let uri = format!("file://{}", ufs.display());
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    let _m = FuseMount::start(&[&uri, "--cache-dir", cache, "--capacity", "128M", "--socket", &sock, "--mount-opt", "write=async"], &mp);
    let d = data(21, 77_777);
    std::fs::write(mp.join("via-uri.bin"), &d).unwrap();
    assert!(std::fs::read(mp.join("via-uri.bin")).unwrap() == d);
    let out = run(&["sync", "--socket", &sock, "/data"]);
    assert!(out.status.success(), "sync: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(ufs.join("via-uri.bin")).unwrap() == d);
}

/// Run `script` with sh as `uid`:`uid` (no supplementary groups).
fn sh_as(uid: u32, script: &str) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into(), "sh".into(), "-c".into(), script.into()])
        .output()
        .expect("setpriv (util-linux)")
}

#[test]
fn allow_other_mount_keeps_writers_apart() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to act as two users");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ufs")).unwrap();
    std::fs::write(dir.path().join("ufs/dataset.txt"), b"from under storage").unwrap();
    // Other users must reach the mountpoint.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let srv = serve(dir.path(), Some("async"), "0ms");
    let mp = dir.path().join("mnt");
    let _m = FuseMount::start(&["--socket", &srv.socket, "/m", "--allow-other"], &mp);
    let m = mp.display();
    assert!(mount_opts(&mp).split(',').any(|o| o == "default_permissions"), "{}", mount_opts(&mp));

    // Anyone creates in the mount's root (1777); files and directories carry
    // their writer's uid, gid and mode.
    let out = sh_as(1000, &format!("umask 022 && printf alice > {m}/a.txt && mkdir {m}/alice && printf x > {m}/alice/x && umask 077 && printf secret > {m}/private.txt"));
    assert!(out.status.success(), "uid 1000 writes: {}", String::from_utf8_lossy(&out.stderr));
    let st = std::fs::metadata(mp.join("a.txt")).unwrap();
    assert_eq!((st.uid(), st.gid(), st.mode() & 0o7777), (1000, 1000, 0o644));
    let st = std::fs::metadata(mp.join("alice")).unwrap();
    assert_eq!((st.uid(), st.mode() & 0o7777), (1000, 0o755));
    assert_eq!(std::fs::metadata(mp.join("private.txt")).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(std::fs::metadata(&mp).unwrap().mode() & 0o7777, 0o1777);

    // Another user can neither overwrite, remove nor read what is not theirs,
    // nor write into another's directory; their own file is fine.
    for (what, script) in [
        ("overwrite a.txt", format!("printf bob > {m}/a.txt")),
        ("remove a.txt (sticky root)", format!("rm -f {m}/a.txt")),
        ("read private.txt", format!("cat {m}/private.txt")),
        ("create in alice/", format!("printf bob > {m}/alice/b")),
        ("overwrite the dataset", format!("printf bob > {m}/dataset.txt")),
        ("chmod a.txt", format!("chmod 666 {m}/a.txt")),
    ] {
        let out = sh_as(1001, &script);
        assert!(!out.status.success(), "uid 1001 could {what}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("denied") || String::from_utf8_lossy(&out.stderr).contains("not permitted"),
            "{what}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = sh_as(1001, &format!("printf bob > {m}/b.txt && cat {m}/a.txt {m}/dataset.txt"));
    assert!(out.status.success(), "uid 1001 own file: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"alicefrom under storage");
    assert_eq!(std::fs::read(mp.join("a.txt")).unwrap(), b"alice");
    assert_eq!(std::fs::metadata(mp.join("b.txt")).unwrap().uid(), 1001);

    // The owner may chmod their file; then the other user may write it.
    let out = sh_as(1000, &format!("chmod 666 {m}/a.txt"));
    assert!(out.status.success(), "owner chmod: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(mp.join("a.txt")).unwrap().mode() & 0o7777, 0o666);
    let out = sh_as(1001, &format!("printf bob > {m}/a.txt"));
    assert!(out.status.success(), "write after chmod 666: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(mp.join("a.txt")).unwrap(), b"bob");
}

#[test]
fn a_file_written_elsewhere_shows_in_a_mount_that_listed_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ufs/d")).unwrap();
    std::fs::write(dir.path().join("ufs/d/a.txt"), b"a").unwrap();
    let srv = serve(dir.path(), Some("async"), "0ms");
    let (reader, writer) = (dir.path().join("reader"), dir.path().join("writer"));
    let _r = mount(&srv.socket, "/m", &reader);
    let _w = mount(&srv.socket, "/m", &writer);
    let names = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&reader.join("d")), ["a.txt"]);
    // Written through the other mount and the library: the reader opens
    // and lists them once its listing is older than its 1 s TTL on a
    // writable mount (before this, a listing was trusted for an hour).
    std::fs::write(writer.join("d/new.txt"), b"from the other mount").unwrap();
    srv.client().write_file("/m/top.txt", b"from the library").unwrap();
    wait_for("new.txt through the reader", Duration::from_secs(10), || reader.join("d/new.txt").exists());
    wait_for("top.txt through the reader", Duration::from_secs(10), || reader.join("top.txt").exists());
    assert_eq!(std::fs::read(reader.join("d/new.txt")).unwrap(), b"from the other mount");
    assert_eq!(std::fs::read(reader.join("top.txt")).unwrap(), b"from the library");
    assert_eq!(names(&reader.join("d")), ["a.txt", "new.txt"]);
    assert_eq!(errno_of(std::fs::read(reader.join("d/never.txt"))), libc::ENOENT);
}
