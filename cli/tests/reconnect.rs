//! Clients across engine restarts: one `Client` keeps reading correct bytes
//! after `stoker serve` is stopped (SIGTERM) or killed (SIGKILL) and started
//! again on the same cache dir and socket; reads waiting or in flight while
//! the engine is away complete once it is back; an engine that stays away
//! is an error after about the client's timeout, never a hang; and a FUSE
//! mount attached with `--socket` keeps serving across restarts.

mod common;

use common::{make_tree, wait_for, FuseMount, Server};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use stoker_client::{Client, Options, ReadReq};

type Tree = Vec<(String, Vec<u8>)>;

const ARGS: &[&str] = &["--shards", "2", "--capacity", "256M", "--block-size", "1M"];

struct Setup {
    dir: tempfile::TempDir,
    tree: Tree,
    args: Vec<String>,
}

impl Setup {
    fn new(sizes: &[usize], extra: &[&str]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let tree = make_tree(&src, sizes, 12).into_iter().map(|(rel, d)| (format!("/m/{rel}"), d)).collect();
        let mut args: Vec<String> = vec!["--mount".into(), format!("m=file://{}", src.display())];
        args.extend(ARGS.iter().chain(extra).map(|s| s.to_string()));
        Setup { dir, tree, args }
    }

    fn socket(&self) -> String {
        self.dir.path().join("s.sock").to_string_lossy().into_owned()
    }

    fn start(&self) -> Server {
        let args: Vec<&str> = self.args.iter().map(|s| s.as_str()).collect();
        Server::start(&self.dir.path().join("cache"), &self.socket(), &args)
    }

    fn client(&self, timeout: Duration) -> Client {
        Client::connect_with(&self.socket(), Options { timeout, ..Default::default() }).unwrap()
    }
}

fn sizes(n: usize) -> Vec<usize> {
    (0..n).map(|i| [1, 4095, 4097, 110_000, 300_000, (1 << 20) + 3, 3 << 20][i % 7] + i).collect()
}

/// Every file through every kind of read, compared with its bytes.
fn read_everything(c: &Client, tree: &Tree) {
    let walked = c.walk("/m").unwrap();
    assert_eq!(walked.len(), tree.len(), "walk");
    let paths: Vec<&str> = tree.iter().map(|(p, _)| p.as_str()).collect();
    for (got, (p, want)) in c.read_many(&paths).unwrap().iter().zip(tree) {
        assert!(got[..] == want[..], "{p}: wrong bytes (read_many)");
    }
    let (tx, rx) = mpsc::channel();
    for (i, (p, want)) in tree.iter().enumerate() {
        assert_eq!(c.stat(p).unwrap().size, want.len() as u64, "{p}: stat");
        assert!(c.read(p, 0, want.len() as u64 + 1).unwrap() == *want, "{p}: wrong bytes (read)");
        let mid = want.len() as u64 / 2;
        let n = c.read_with(p, mid, 5000, |b| b.to_vec()).unwrap();
        assert!(n[..] == want[mid as usize..(mid as usize + 5000).min(want.len())], "{p}: wrong bytes (read_with)");
        let tx = tx.clone();
        c.read_async(p, 1, 70_000, Box::new(move |r| tx.send((i, r.map(|b| b.to_vec()))).unwrap()));
    }
    for _ in tree {
        let (i, r) = rx.recv_timeout(Duration::from_secs(60)).expect("an asynchronous answer");
        let want = &tree[i].1;
        let got = r.unwrap();
        let want = &want[1.min(want.len())..70_001.min(want.len())];
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        assert!(got[..] == want[..], "{}: wrong bytes (read_async): {} bytes for {}, first difference at {first:?}", tree[i].0, got.len(), want.len());
    }
    assert_eq!(c.prefetch(&tree[0].0, tree[0].1.len() as u64).unwrap(), tree[0].1.len() as u64);
}

fn restart_keeps_the_client_reading(kill: bool) {
    let s = Setup::new(&sizes(42), &[]);
    let server = s.start();
    let c = s.client(Duration::from_secs(30));
    read_everything(&c, &s.tree);
    // A view of the old session's area, held across the restart.
    let held = c.read_batch(vec![ReadReq::file(&s.tree[3].0)]).next().unwrap().1.unwrap();
    assert!(held.is_view());
    if kill {
        server.kill9();
    } else {
        server.stop();
    }
    let server = s.start();
    // First call after the restart: a batch (SIGKILL) or a control call (SIGTERM).
    if kill {
        assert!(c.read_file(&s.tree[5].0).unwrap() == s.tree[5].1);
    } else {
        assert_eq!(c.list("/m").unwrap().len(), 7);
    }
    read_everything(&c, &s.tree);
    assert_eq!(c.reconnects(), 1, "one new session for one restart");
    assert!(held[..] == s.tree[3].1[..], "a view held across the restart changed");
    let w = server.client();
    let stats = w.engine_stats().unwrap();
    assert!(stats.hits + stats.misses > 0, "no read reached the new engine: {stats:?}");
    // The client holds one session on the new engine (the other is `w`).
    wait_for("two sessions", Duration::from_secs(10), || w.engine_stats().unwrap().sessions == 2);
}

#[test]
fn client_reads_on_after_sigterm_and_restart() {
    restart_keeps_the_client_reading(false);
}

#[test]
fn client_reads_on_after_sigkill_and_restart() {
    restart_keeps_the_client_reading(true);
}

/// Reads issued while the engine is away (blocking ones from other threads,
/// and asynchronous ones) complete with the right bytes once it is back.
#[test]
fn reads_issued_while_the_engine_is_away_complete_when_it_is_back() {
    let s = Setup::new(&sizes(21), &[]);
    let server = s.start();
    let c = s.client(Duration::from_secs(60));
    assert!(c.read_file(&s.tree[0].0).unwrap() == s.tree[0].1);
    server.stop();
    let (started_tx, started) = mpsc::channel();
    let (async_tx, async_rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let (c, tree, started_tx) = (&c, &s.tree, started_tx.clone());
                scope.spawn(move || {
                    started_tx.send(()).unwrap();
                    for (p, want) in tree.iter().skip(t).step_by(3) {
                        let got = if t == 0 { c.read_file(p) } else { c.read(p, 0, want.len() as u64) };
                        assert!(got.unwrap() == *want, "{p}: wrong bytes after the engine came back");
                    }
                })
            })
            .collect();
        for _ in 0..3 {
            started.recv().unwrap();
        }
        // Not tree[0]: read before, it may be read directly from its segment.
        for (i, (p, _)) in s.tree.iter().enumerate().skip(1) {
            let tx = async_tx.clone();
            c.read_async(p, 0, 1 << 20, Box::new(move |r| tx.send((i, r.map(|b| b.to_vec()))).unwrap()));
        }
        // Nothing can have been answered: there is no engine.
        assert!(async_rx.try_recv().is_err(), "an answer without an engine");
        assert!(threads.iter().all(|t| !t.is_finished()), "a read finished without an engine");
        let _server = s.start();
        for t in threads {
            t.join().expect("a reader thread failed");
        }
        for _ in 1..s.tree.len() {
            let (i, r) = async_rx.recv_timeout(Duration::from_secs(60)).expect("an asynchronous answer");
            let want = &s.tree[i].1;
            assert!(r.unwrap()[..] == want[..want.len().min(1 << 20)], "{}: wrong bytes (read_async)", s.tree[i].0);
        }
    });
    assert_eq!(c.reconnects(), 1);
}

/// Reads in flight when the engine is killed (waiting on a slow under
/// storage) are issued again on the new engine and return the right bytes.
#[test]
fn reads_in_flight_when_the_engine_is_killed_are_issued_again() {
    let s = Setup::new(&sizes(28), &["--ufs-latency", "300ms"]);
    let server = s.start();
    let c = s.client(Duration::from_secs(60));
    let watcher = server.client();
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (c, tree) = (&c, &s.tree);
                scope.spawn(move || {
                    let reqs = tree.iter().skip(t).step_by(4).map(|(p, _)| ReadReq::file(p.as_str())).collect();
                    for (i, r) in c.read_batch(reqs).collect_ordered().into_iter().enumerate() {
                        let (p, want) = &tree[t + 4 * i];
                        assert!(r.unwrap()[..] == want[..], "{p}: wrong bytes after the engine was killed");
                    }
                })
            })
            .collect();
        // Cold reads under a 300 ms store: kill the engine while they wait.
        wait_for("reads in flight", Duration::from_secs(20), || watcher.engine_stats().unwrap().misses > 0);
        drop(watcher);
        server.kill9();
        let _server = s.start();
        for t in threads {
            t.join().expect("a reader thread failed");
        }
    });
    assert_eq!(c.reconnects(), 1);
}

/// An engine that does not come back: calls fail with a clear error after
/// about the client's timeout, never sooner than the back-off allows and
/// never hanging.
#[test]
fn an_engine_that_stays_away_is_an_error_after_the_timeout() {
    let s = Setup::new(&sizes(7), &[]);
    let server = s.start();
    let timeout = Duration::from_secs(2);
    let c = s.client(timeout);
    assert!(c.read_file(&s.tree[1].0).unwrap() == s.tree[1].1);
    server.kill9();
    let t0 = Instant::now();
    // A file never read: no direct read can answer it from the segment files.
    let e = c.read(&s.tree[4].0, 0, 100).unwrap_err();
    let took = t0.elapsed();
    assert_eq!(e.errno(), libc::ECONNREFUSED, "{e}");
    assert!(e.to_string().contains("could not reach it again within 2s"), "{e}");
    assert!(took >= timeout - Duration::from_millis(100) && took < timeout * 3, "failed after {took:?}");
    // Every kind of call: bounded the same way.
    let t0 = Instant::now();
    assert!(c.stat(&s.tree[1].0).is_err());
    assert!(c.read_many(&[&s.tree[2].0]).is_err());
    let (tx, rx) = mpsc::channel();
    c.read_async(&s.tree[2].0, 0, 10, Box::new(move |r| tx.send(r.map(|b| b.to_vec()).map_err(|e| e.errno())).unwrap()));
    assert_eq!(rx.recv_timeout(timeout * 3).expect("the callback ran"), Err(libc::ECONNREFUSED));
    assert!(t0.elapsed() < timeout * 10, "three calls took {:?}", t0.elapsed());
    // And the same client carries on once an engine is there again.
    let _server = s.start();
    assert!(c.read_file(&s.tree[1].0).unwrap() == s.tree[1].1);
}

// ---- FUSE ----

/// Read `rel` through the mount with its cached pages dropped first, so the
/// bytes come from the FUSE daemon (and so from the engine).
fn read_uncached(mp: &Path, rel: &str) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(mp.join(rel))?;
    // SAFETY: fadvise on a descriptor we own.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut &f, &mut v)?;
    Ok(v)
}

/// A FUSE mount attached to `stoker serve` keeps serving correct bytes (no
/// EIO) after the engine is stopped and started again, then killed and
/// started again: files read before and files never read before.
#[test]
fn fuse_mount_attached_with_socket_survives_engine_restarts() {
    if !Path::new("/dev/fuse").exists() {
        assert!(std::env::var_os("STOKER_NEED_FUSE").is_none(), "STOKER_NEED_FUSE set but /dev/fuse is missing");
        eprintln!("no /dev/fuse: skipped");
        return;
    }
    let s = Setup::new(&sizes(36), &[]);
    let mut server = s.start();
    let mp = s.dir.path().join("mnt");
    let sock = s.socket();
    let mut mount = FuseMount::start(&["--socket", &sock, "--request-timeout", "30s", "/m"], &mp);
    let rel = |p: &str| p.strip_prefix("/m/").unwrap().to_string();
    // Before any restart: the first third of the files.
    let third = s.tree.len() / 3;
    for (p, want) in &s.tree[..third] {
        assert!(read_uncached(&mp, &rel(p)).unwrap() == *want, "{p}: wrong bytes");
    }
    for (round, kill) in [(1, false), (2, true)] {
        if kill {
            server.kill9();
        } else {
            server.stop();
        }
        server = s.start();
        // Files read before (pages dropped) and the next third, never read.
        for (p, want) in s.tree[..third * (round + 1)].iter() {
            match read_uncached(&mp, &rel(p)) {
                Ok(got) => assert!(got == *want, "{p}: wrong bytes after restart {round}"),
                Err(e) => panic!("{p}: {e} after restart {round}"),
            }
        }
        let stats = server.client().engine_stats().unwrap();
        assert!(stats.hits + stats.misses > 0, "no read reached the engine after restart {round}: {stats:?}");
        assert!(mount.child.try_wait().unwrap().is_none(), "stoker mount exited");
    }
    // A directory listing after the restarts: the names are all there.
    let mut names = 0;
    for d in std::fs::read_dir(mp.join("c0")).unwrap() {
        names += std::fs::read_dir(d.unwrap().path()).unwrap().count();
    }
    assert_eq!(names, s.tree.iter().filter(|(p, _)| p.starts_with("/m/c0/")).count());
    drop(mount);
}
