//! The shared-memory client against a real `stoker serve`: forked workers
//! reading with an inherited client, a worker killed mid-read (its session
//! and mapping leave the engine), epoch-aware prefetch staying inside its
//! window and following the plan's order, and the C ABI from a C program.

mod common;

use common::{make_tree, wait_for, Server};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use stoker_client::Client;

fn serve(dir: &Path, sizes: &[usize], extra: &[&str]) -> (Server, Vec<(String, Vec<u8>)>) {
    let src = dir.join("src");
    let tree = make_tree(&src, sizes, 11);
    let sock = dir.join("s.sock").to_string_lossy().into_owned();
    let mount = format!("m=file://{}", src.display());
    let mut args = vec!["--mount", &mount, "--shards", "2", "--capacity", "256M"];
    args.extend_from_slice(extra);
    let server = Server::start(&dir.join("cache"), &sock, &args);
    let tree = tree.into_iter().map(|(rel, d)| (format!("/m/{rel}"), d)).collect();
    (server, tree)
}

fn sessions(c: &Client) -> u64 {
    c.engine_stats().unwrap().sessions
}

/// Shared areas the engine has mapped (one per live session).
fn engine_areas(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap().lines().filter(|l| l.contains("stoker-area")).count()
}

/// Fork; the child runs `f` and exits with its result (never returns).
fn fork(f: impl FnOnce() -> Result<(), String>) -> i32 {
    // SAFETY: the child only runs `f` (plain reads, allocation is fork-safe
    // in glibc) and leaves with _exit, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(())) => 0,
            Ok(Err(m)) => {
                eprintln!("worker {}: {m}", std::process::id());
                1
            }
            Err(_) => 2,
        };
        // SAFETY: ends the child without unwinding into the parent's state.
        unsafe { libc::_exit(code) };
    }
    pid
}

fn wait_child(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waiting on our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

#[test]
fn forked_workers_read_with_an_inherited_client() {
    let dir = tempfile::tempdir().unwrap();
    let sizes: Vec<usize> = (0..400).map(|i| 1 + (i * 7919) % 200_000).collect();
    let (server, tree) = serve(dir.path(), &sizes, &[]);
    let c = server.client();
    let parent_session = c.session_id().unwrap();
    assert_eq!(c.read_file(&tree[0].0).unwrap(), tree[0].1);
    let workers = 8;
    let pids: Vec<i32> = (0..workers)
        .map(|w| {
            let (c, tree) = (&c, &tree);
            fork(move || {
                if c.session_id().map_err(|e| e.to_string())? == parent_session {
                    return Err("child kept the parent's session".into());
                }
                let mine: Vec<&(String, Vec<u8>)> = tree.iter().skip(w).step_by(workers).collect();
                let paths: Vec<&str> = mine.iter().map(|(p, _)| p.as_str()).collect();
                let got = c.read_many(&paths).map_err(|e| e.to_string())?;
                for ((p, want), d) in mine.iter().zip(&got) {
                    if d[..] != want[..] {
                        return Err(format!("{p}: wrong bytes"));
                    }
                }
                for (p, want) in &mine {
                    if &c.read_file(p).map_err(|e| e.to_string())? != want {
                        return Err(format!("{p}: wrong bytes (read_file)"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    // The parent keeps reading on its own session meanwhile.
    for (p, want) in tree.iter().step_by(5) {
        assert_eq!(&c.read_file(p).unwrap(), want, "parent {p}");
    }
    for pid in pids {
        assert_eq!(wait_child(pid), 0, "worker {pid} failed (see its stderr)");
    }
    assert_eq!(c.session_id().unwrap(), parent_session);
    wait_for("workers' sessions to close", Duration::from_secs(20), || sessions(&c) == 1);
}

#[test]
fn killed_worker_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let sizes: Vec<usize> = (0..300).map(|i| 1000 + i * 300).collect();
    // Slow under storage: the worker is killed with reads in flight.
    let (server, tree) = serve(dir.path(), &sizes, &["--ufs-latency", "50ms"]);
    let engine = server.child.id();
    let c = server.client();
    wait_for("one session", Duration::from_secs(10), || sessions(&c) == 1);
    let areas = engine_areas(engine);
    assert_eq!(areas, 1, "one mapped area per session");
    let (mut rd, mut wr) = std::os::unix::net::UnixStream::pair().unwrap();
    let pid = {
        let (c, tree) = (&c, &tree);
        fork(move || loop {
            let paths: Vec<&str> = tree.iter().map(|(p, _)| p.as_str()).collect();
            let mut batch = c.read_batch(paths.iter().map(|p| stoker_client::ReadReq::file(*p)).collect());
            batch.next().ok_or("no answer")?.1.map_err(|e| e.to_string())?;
            let _ = wr.write_all(b"r");
            for (_, r) in batch {
                r.map_err(|e| e.to_string())?;
            }
        })
    };
    let mut b = [0u8; 1];
    rd.read_exact(&mut b).unwrap();
    assert_eq!(sessions(&c), 2, "the worker has its own session");
    assert_eq!(engine_areas(engine), 2);
    // SAFETY: killing our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_child(pid);
    wait_for("the killed worker's session to go", Duration::from_secs(30), || sessions(&c) == 1);
    wait_for("the killed worker's area to be unmapped", Duration::from_secs(30), || engine_areas(engine) == areas);
    for (p, want) in tree.iter().step_by(10) {
        assert_eq!(&c.read_file(p).unwrap(), want, "{p} after the kill");
    }
}

#[test]
fn epoch_prefetch_runs_ahead_in_plan_order_within_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = vec![5000usize; 64];
    let (server, tree) = serve(dir.path(), &sizes, &[]);
    let c = server.client();
    // A shuffled epoch: a fixed permutation.
    let order: Vec<&str> = (0..tree.len()).map(|i| tree[(i * 37) % tree.len()].0.as_str()).collect();
    let misses = || c.engine_stats().unwrap().misses;
    assert_eq!(misses(), 0);
    let window = 8;
    c.plan_epoch(&order, window).unwrap();
    // Before any read the engine fetches the first `window` files.
    wait_for("the first window to be fetched", Duration::from_secs(20), || misses() == window as u64);
    // Read the first 5 in order: the window slides to 5 + 8.
    for p in &order[..5] {
        c.read_file(p).unwrap();
    }
    wait_for("the window to slide", Duration::from_secs(20), || misses() == 13);
    let s = c.engine_stats().unwrap();
    assert!(s.hits >= 5, "the first reads hit what was fetched ahead: {s:?}");
    // Everything up to 13 is cached: the plan's own order was followed.
    c.clear_plan();
    for (i, p) in order[..13].iter().enumerate() {
        assert_eq!(&c.read_file(p).unwrap()[..], &tree.iter().find(|t| t.0 == *p).unwrap().1[..]);
        assert_eq!(misses(), 13, "plan entry {i} was fetched ahead");
    }
    // ... and nothing past the window was.
    c.read_file(order[13]).unwrap();
    assert_eq!(misses(), 14, "entry 13 lay outside the window");
    c.read_file(order[40]).unwrap();
    assert_eq!(misses(), 15);
}

/// Where cargo put libstoker_c.so for this profile, built now: a test
/// run does not rebuild the cdylib itself, and a stale one would speak an
/// older protocol (a no-op when it is up to date).
fn c_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let lib = profile_dir.join("libstoker_c.so");
    {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "stoker-client-c"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "building stoker-client-c");
    }
    assert!(lib.exists(), "{} missing", lib.display());
    lib
}

fn fnv(d: &[u8]) -> u64 {
    d.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

#[test]
fn c_program_reads_the_tree_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [0usize, 1, 4095, 4096, 4097, 100_000, 300_000, 5 << 20];
    let (server, tree) = serve(dir.path(), &sizes, &["--block-size", "1M"]);
    let lib = c_library();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let exe = dir.path().join("read_tree");
    let out = Command::new("cc")
        .arg(root.join("client-c/tests/read_tree.c"))
        .arg("-I")
        .arg(root.join("client-c/include"))
        .arg("-L")
        .arg(lib.parent().unwrap())
        .args(["-lstoker_c", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(out.status.success(), "cc failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut child = Command::new(&exe)
        .arg(&server.socket)
        .env("LD_LIBRARY_PATH", lib.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let list: String = tree.iter().map(|(p, _)| format!("{p}\n")).collect();
    child.stdin.take().unwrap().write_all(list.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "C program failed: {}", String::from_utf8_lossy(&out.stderr));
    let want: String = tree.iter().map(|(_, d)| format!("{} {:016x}\n", d.len(), fnv(d))).collect();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
}

#[test]
fn read_async_hands_the_bytes_over_and_times_out_on_a_hung_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (server, tree) = serve(dir.path(), &[5000, 200_000, 0, 70_000], &[]);
    // Through the rings: a direct read would not need the engine at all.
    let opts = stoker_client::Options { timeout: Duration::from_secs(2), direct: false, ..Default::default() };
    let c = Client::connect_with(&server.socket, opts).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, (path, bytes)) in tree.iter().enumerate() {
        let tx = tx.clone();
        let len = bytes.len() as u64 + 10; // past the end: short at EOF
        c.read_async(path, 0, len, Box::new(move |r| tx.send((i, r.map(|b| b.to_vec()).map_err(|e| e.errno()))).unwrap()));
    }
    for _ in 0..tree.len() {
        let (i, r) = rx.recv_timeout(Duration::from_secs(30)).expect("an answer");
        assert!(r.unwrap() == tree[i].1, "{} read back wrong", tree[i].0);
    }
    let missing = tx.clone();
    c.read_async("/m/no-such-file", 0, 10, Box::new(move |r| missing.send((usize::MAX, r.map(|b| b.to_vec()).map_err(|e| e.errno()))).unwrap()));
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap().1, Err(libc::ENOENT));

    // An engine that stops answering (SIGSTOP): the callback gets ETIMEDOUT.
    let pid = server.child.id() as i32;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    // kill(2) only queues the stop: wait until every engine thread is stopped.
    wait_for("the engine to stop", Duration::from_secs(10), || {
        std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().all(|t| {
            let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
            stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('T'))
        })
    });
    let (path, _) = &tree[1];
    c.read_async(path, 1000, 100, Box::new(move |r| tx.send((1, r.map(|b| b.to_vec()).map_err(|e| e.errno()))).unwrap()));
    let got = rx.recv_timeout(Duration::from_secs(20));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    assert_eq!(got.expect("the callback ran").1, Err(libc::ETIMEDOUT));
    // The engine answers again and the late answer landed nowhere.
    assert!(c.read(path, 1000, 100).unwrap() == tree[1].1[1000..1100]);
}
