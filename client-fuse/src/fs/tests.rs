use super::*;
use crate::mock::MockBackend;
use std::sync::atomic::Ordering::Relaxed;

fn fs_with(files: &[(&str, &[u8])]) -> StokerFs<Arc<MockBackend>> {
    let m = Arc::new(MockBackend::with_files(files));
    StokerFs::new(m, "/m", FsConfig::default()).unwrap()
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn root_must_be_a_directory() {
    let m = Arc::new(MockBackend::with_files(&[("/m/f", b"x")]));
    assert_eq!(StokerFs::new(m.clone(), "/nope", FsConfig::default()).err().unwrap().errno(), libc::ENOENT);
    assert_eq!(StokerFs::new(m.clone(), "/m/f", FsConfig::default()).err().unwrap().errno(), libc::ENOTDIR);
    assert!(StokerFs::new(m, "/m/", FsConfig::default()).is_ok());
}

#[test]
fn lookup_getattr_and_missing() {
    let fs = fs_with(&[("/m/a/b.bin", b"hello"), ("/m/z", b"")]);
    let a = fs.lookup(ROOT_INO, os("a")).unwrap();
    assert_eq!(a.attr.kind, Kind::Dir);
    let b = fs.lookup(a.ino, os("b.bin")).unwrap();
    assert_eq!(b.attr.size, 5);
    assert_eq!(fs.getattr(b.ino).unwrap(), b);
    assert_eq!(fs.lookup(ROOT_INO, os("missing")).unwrap_err().errno(), libc::ENOENT);
    assert_eq!(fs.lookup(b.ino, os("x")).unwrap_err().errno(), libc::ENOTDIR);
    assert_eq!(fs.lookup(ROOT_INO, os(&"n".repeat(300))).unwrap_err().errno(), libc::ENAMETOOLONG);
    assert_eq!(fs.getattr(999).unwrap_err().errno(), libc::ESTALE);
    fs.forget(b.ino, 1);
    assert_eq!(fs.getattr(b.ino).unwrap_err().errno(), libc::ESTALE);
}

#[test]
fn listing_answers_lookups_without_backend_calls() {
    let fs = fs_with(&[("/m/a", b"1"), ("/m/b", b"22"), ("/m/d/c", b"333")]);
    let fh = fs.opendir(ROOT_INO).unwrap();
    let l = fs.dir_listing(fh).unwrap();
    let names: Vec<_> = l.items_from(0).map(|i| i.name.to_string()).collect();
    assert_eq!(names, [".", "..", "a", "b", "d"]);
    let offs: Vec<_> = l.items_from(3).map(|i| (i.name.to_string(), i.next_offset)).collect();
    assert_eq!(offs, [("b".to_string(), 4), ("d".to_string(), 5)]);
    assert_eq!(l.items_from(99).count(), 0);
    let stats_before = fs.backend().stats.load(Relaxed);
    assert_eq!(fs.lookup(ROOT_INO, os("b")).unwrap().attr.size, 2);
    assert_eq!(fs.lookup(ROOT_INO, os("nope")).unwrap_err().errno(), libc::ENOENT);
    assert_eq!(fs.backend().stats.load(Relaxed), stats_before, "served from the listing");
    // readdir and lookup agree on inode numbers.
    let item = l.items_from(2).next().unwrap();
    let ino = fs.dir_item_ino(&l, &item);
    assert_eq!(fs.lookup(ROOT_INO, os("a")).unwrap().ino, ino);
    fs.releasedir(fh);
    assert_eq!(fs.dir_listing(fh).err().unwrap().errno(), libc::EBADF);
    assert_eq!(fs.opendir(ino).unwrap_err().errno(), libc::ENOTDIR);
}

#[test]
fn readdirplus_counts_children_not_dots() {
    let fs = fs_with(&[("/m/a", b"1")]);
    let fh = fs.opendir(ROOT_INO).unwrap();
    let l = fs.dir_listing(fh).unwrap();
    let inos: Vec<_> = l.items_from(0).map(|i| fs.remember_item(&l, &i)).collect();
    assert_eq!(inos[0], ROOT_INO);
    assert_eq!(inos[1], ROOT_INO);
    assert_eq!(fs.inodes.lookups(inos[2]), Some(1));
    fs.forget(inos[2], 1);
    assert!(fs.inodes.get(inos[2]).is_none());
}

#[test]
fn open_read_release() {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let fs = fs_with(&[("/m/f", &data), ("/m/empty", b"")]);
    let f = fs.lookup(ROOT_INO, os("f")).unwrap();
    let (ino, o) = (f.ino, fs.open(f.ino, libc::O_RDONLY).unwrap());
    assert!(o.keep_cache);
    let mut buf = vec![0u8; 4096];
    assert_eq!(fs.read(ino, o.fh, 4095, &mut buf).unwrap(), 4096);
    assert_eq!(&buf[..], &data[4095..8191]);
    assert_eq!(fs.read(ino, o.fh, 9000, &mut buf).unwrap(), 1000, "short at EOF");
    assert_eq!(&buf[..1000], &data[9000..]);
    let reads = fs.backend().reads.load(Relaxed);
    assert_eq!(fs.read(ino, o.fh, 10_000, &mut buf).unwrap(), 0);
    assert_eq!(fs.read(ino, o.fh, 1 << 40, &mut buf).unwrap(), 0);
    assert_eq!(fs.backend().reads.load(Relaxed), reads, "reads past EOF do not reach the engine");
    fs.release(o.fh);
    assert_eq!(fs.read(ino, o.fh, 0, &mut buf).unwrap_err().errno(), libc::EBADF);
    assert_eq!(fs.open_files(), 0);
    let e = fs.lookup(ROOT_INO, os("empty")).unwrap();
    let (ino, o) = (e.ino, fs.open(e.ino, libc::O_RDONLY).unwrap());
    assert_eq!(fs.read(ino, o.fh, 0, &mut buf).unwrap(), 0);
    assert_eq!(fs.open(ROOT_INO, libc::O_RDONLY).unwrap_err().errno(), libc::EISDIR);
}

#[test]
fn read_without_open_finds_the_file_by_inode() {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 13) as u8).collect();
    let m = Arc::new(MockBackend::with_files(&[("/m/d/f", &data)]));
    let cfg = FsConfig { metadata_ttl: Duration::ZERO, ..FsConfig::default() };
    let fs = StokerFs::new(m.clone(), "/m", cfg).unwrap();
    let d = fs.lookup(ROOT_INO, os("d")).unwrap();
    let f = fs.lookup(d.ino, os("f")).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(fs.read(f.ino, NO_HANDLE, 8000, &mut buf).unwrap(), 2000, "bounded by the known size");
    assert_eq!(&buf[..2000], &data[8000..]);
    let reads = m.reads.load(Relaxed);
    assert_eq!(fs.read(f.ino, NO_HANDLE, 10_000, &mut buf).unwrap(), 0);
    assert_eq!(m.reads.load(Relaxed), reads, "past EOF: no engine read");
    assert_eq!(fs.read(d.ino, NO_HANDLE, 0, &mut buf).unwrap_err().errno(), libc::EISDIR);
    assert_eq!(fs.read(4242, NO_HANDLE, 0, &mut buf).unwrap_err().errno(), libc::ESTALE);
    // A new version seen by getattr (the kernel asks once its attributes
    // expire) bounds later reads by its size.
    m.put("/m/d/f", &data[..100], "v2");
    assert_eq!(fs.getattr(f.ino).unwrap().attr.size, 100);
    assert_eq!(fs.read(f.ino, NO_HANDLE, 0, &mut buf).unwrap(), 100);
    assert_eq!(fs.counters.opens.load(Relaxed), 0);
    assert_eq!(fs.counters.releases.load(Relaxed), 0);
    assert_eq!(fs.counters.bytes_read.load(Relaxed), 2100);
}

#[test]
fn backend_failure_is_eio() {
    let fs = fs_with(&[("/m/f", b"abc")]);
    let f = fs.lookup(ROOT_INO, os("f")).unwrap();
    let (ino, o) = (f.ino, fs.open(f.ino, libc::O_RDONLY).unwrap());
    fs.backend().read_errno.store(libc::EIO as u64, Relaxed);
    let err = fs.read(ino, o.fh, 0, &mut [0u8; 3]).unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert!(err.to_string().contains("/m/f"), "the error names the path: {err}");
    fs.backend().read_errno.store(libc::ETIMEDOUT as u64, Relaxed);
    assert_eq!(fs.read(ino, o.fh, 0, &mut [0u8; 3]).unwrap_err().errno(), libc::EIO);
}

#[test]
fn writes_are_refused_with_erofs() {
    let fs = fs_with(&[("/m/f", b"abc")]);
    let f = fs.lookup(ROOT_INO, os("f")).unwrap();
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(fs.open(f.ino, flags).unwrap_err().errno(), libc::EROFS, "flags {flags:#x}");
    }
    let e = fs.refuse("mkdir", ROOT_INO, Some(os("new")));
    assert_eq!(e.errno(), libc::EROFS);
    assert!(e.to_string().contains("/m/new"), "{e}");
    assert_eq!(fs.counters.refused_writes.load(Relaxed), 4);
    assert_eq!(fs.access(f.ino, libc::W_OK).unwrap_err().errno(), libc::EROFS);
    assert_eq!(fs.access(f.ino, libc::X_OK).unwrap_err().errno(), libc::EACCES);
    fs.access(f.ino, libc::R_OK).unwrap();
    fs.access(ROOT_INO, libc::R_OK | libc::X_OK).unwrap();
    assert_eq!(fs.access(4242, libc::R_OK).unwrap_err().errno(), libc::ESTALE);
}

#[test]
fn changed_version_drops_page_cache_after_ttl() {
    let m = Arc::new(MockBackend::with_files(&[("/m/f", b"abc")]));
    let cfg = FsConfig { metadata_ttl: Duration::ZERO, ..FsConfig::default() };
    let fs = StokerFs::new(m.clone(), "/m", cfg).unwrap();
    let f = fs.lookup(ROOT_INO, os("f")).unwrap();
    assert!(fs.open(f.ino, libc::O_RDONLY).unwrap().keep_cache);
    assert!(fs.open(f.ino, libc::O_RDONLY).unwrap().keep_cache);
    m.put("/m/f", b"abcdef", "v2");
    let (ino, o) = (f.ino, fs.open(f.ino, libc::O_RDONLY).unwrap());
    assert!(!o.keep_cache, "new version: the kernel must drop old pages");
    let mut buf = [0u8; 16];
    assert_eq!(fs.read(ino, o.fh, 0, &mut buf).unwrap(), 6);
    assert!(fs.open(f.ino, libc::O_RDONLY).unwrap().keep_cache);
}

#[test]
fn statfs_reports_cache_capacity() {
    let fs = fs_with(&[("/m/f", b"abc")]);
    let s = fs.statfs();
    assert_eq!(s.blocks, (1 << 30) / 4096);
    assert_eq!(s.bfree, ((1 << 30) - (1 << 20)) / 4096);
    assert_eq!(s.namelen, 255);
}

#[test]
fn concurrent_lookups_share_one_listing() {
    let files: Vec<(String, Vec<u8>)> = (0..64).map(|i| (format!("/m/d/f{i}"), vec![i as u8; i])).collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, v)| (p.as_str(), v.as_slice())).collect();
    let fs = Arc::new(fs_with(&refs));
    let d = fs.lookup(ROOT_INO, os("d")).unwrap();
    let lists = fs.backend().lists.load(Relaxed);
    let stats = fs.backend().stats.load(Relaxed);
    let threads: Vec<_> = (0..32)
        .map(|t| {
            let fs = fs.clone();
            std::thread::spawn(move || {
                for i in (t..64).step_by(32) {
                    assert_eq!(fs.lookup(d.ino, os(&format!("f{i}"))).unwrap().attr.size, i as u64);
                }
                assert_eq!(fs.lookup(d.ino, os("absent")).unwrap_err().errno(), libc::ENOENT);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(fs.backend().lists.load(Relaxed), lists + 1, "one listing for the directory");
    assert_eq!(fs.backend().stats.load(Relaxed), stats, "no per-file stats");

    let m = Arc::new(MockBackend::with_files(&refs));
    let fs = StokerFs::new(m, "/m", FsConfig { list_on_lookup: false, ..FsConfig::default() }).unwrap();
    let d = fs.lookup(ROOT_INO, os("d")).unwrap();
    fs.lookup(d.ino, os("f3")).unwrap();
    assert_eq!(fs.backend().lists.load(Relaxed), 0);
    assert_eq!(fs.backend().stats.load(Relaxed), 3, "root, d, f3");
}
