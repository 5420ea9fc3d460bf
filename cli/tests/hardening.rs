//! A real `stoker serve` against hostile or unexpected clients: the control
//! plane's bounds (connections, time, frame size, descriptors, EMFILE), the
//! sockets' mode and the peer check (docs/SECURITY.md), and secrets kept out
//! of the log.

mod common;

use common::{make_tree, metric, run, stoker, wait_for, Server};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use std::io::{IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use stoker_proto::control::{read_frame, write_frame, Request, Response};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A raw control connection whose reads give up after 20 s (far longer
/// than any limit the engine under test is given).
fn raw(sock: &str) -> UnixStream {
    let c = UnixStream::connect(sock).expect("connecting to the control socket");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

/// The engine's one-line answer on `c`, which it then closes.
fn error_then_close(c: &mut UnixStream) -> String {
    let msg = match read_frame::<_, Response>(c) {
        Ok(Some(Response::Error { message, .. })) => message,
        other => panic!("expected an error answer, got {other:?}"),
    };
    let mut rest = Vec::new();
    assert_eq!(c.read_to_end(&mut rest).expect("the engine closes the connection"), 0);
    msg
}

/// Whether process `pid` holds a descriptor on `file`.
fn holds(pid: u32, file: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|p| p == file)
}

fn one_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().filter(|l| !l.trim().is_empty()).count(), 1, "expected one line: {err}");
    err
}

#[test]
fn control_plane_bounds_hold_against_a_hostile_client() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let tree = make_tree(&src, &[1000, 300_000], 7);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let addr = free_addr();
    let srv = Server::start(
        &dir.path().join("cache"),
        &sock,
        &[
            "--shards", "1", "--capacity", "64M", "--mount", &format!("m=file://{}", src.display()),
            "--control-connections", "6", "--control-timeout", "1s", "--metrics", &addr.to_string(),
        ],
    );
    let path = format!("/m/{}", tree[1].0);
    let good = srv.client();
    assert_eq!(good.read_file(&path).unwrap(), tree[1].1);

    // Half a frame, then silence: cut off after --control-timeout, with an answer.
    let mut c = raw(&sock);
    c.write_all(&[200, 0]).unwrap();
    let t0 = Instant::now();
    assert!(error_then_close(&mut c).contains("timed out"));
    assert!(t0.elapsed() < Duration::from_secs(15));

    // A length the engine must not allocate (under the old 256 MiB bound).
    let mut c = raw(&sock);
    c.write_all(&(100u32 << 20).to_le_bytes()).unwrap();
    assert!(error_then_close(&mut c).contains("over the limit"));

    // Descriptors on a message that takes none are closed at once, while
    // the connection stays open and is answered.
    let marker = dir.path().join("marker");
    std::fs::write(&marker, b"x").unwrap();
    let files: Vec<_> = (0..3).map(|_| std::fs::File::open(&marker).unwrap()).collect();
    let fds: Vec<_> = files.iter().map(|f| f.as_raw_fd()).collect();
    let mut c = raw(&sock);
    let frame = stoker_proto::control::encode(&Request::EngineStat);
    sendmsg::<()>(c.as_raw_fd(), &[IoSlice::new(&frame)], &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
        .unwrap();
    assert!(matches!(read_frame::<_, Response>(&mut c), Ok(Some(Response::Stats(_)))));
    assert!(!holds(srv.child.id(), &marker), "the engine kept descriptors it was sent with a stat");
    drop(files);

    // Connections past --control-connections are refused with an answer.
    let mut held = vec![c];
    let refused = loop {
        assert!(held.len() <= 6, "more than --control-connections were accepted");
        let mut c = raw(&sock);
        write_frame(&mut c, &Request::EngineStat).unwrap();
        match read_frame::<_, Response>(&mut c) {
            Ok(Some(Response::Stats(_))) => held.push(c),
            Ok(Some(Response::Error { message, .. })) => break message,
            other => panic!("unexpected answer {other:?}"),
        }
    };
    assert!(refused.contains("too many control connections"), "{refused}");
    // The attached client is served meanwhile.
    assert_eq!(good.read_file(&path).unwrap(), tree[1].1);
    drop(held);
    wait_for("a control slot to come back", Duration::from_secs(20), || run(&["stat", "--socket", &sock]).status.success());

    assert!(metric(addr, r#"stoker_control_dropped_total{reason="timeout"}"#) >= 1.0);
    assert!(metric(addr, r#"stoker_control_dropped_total{reason="too_large"}"#) >= 1.0);
    assert!(metric(addr, r#"stoker_control_fds_closed_total"#) >= 3.0);
    assert!(metric(addr, r#"stoker_control_refused_total{reason="connections"}"#) >= 1.0);
    assert_eq!(good.read_file(&path).unwrap(), tree[1].1);
    srv.stop();
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of stat(5); after the name, the 3rd field is index 0.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_descriptors_the_accept_loop_backs_off_and_recovers() {
    const NOFILE: usize = 256;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let tree = make_tree(&src, &[4000], 3);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let addr = free_addr();
    // prlimit execs the engine: the child's pid is the engine's.
    let child = Command::new("prlimit")
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .arg(env!("CARGO_BIN_EXE_stoker"))
        .args(["serve", "--cache-dir", dir.path().join("cache").to_str().unwrap(), "--socket", &sock])
        .args(["--shards", "1", "--capacity", "64M", "--control-connections", "4096", "--metrics", &addr.to_string()])
        .args(["--mount", &format!("m=file://{}", src.display())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning prlimit stoker serve");
    let srv = Server { child, socket: sock.clone(), cache: dir.path().join("cache") };
    wait_for("the engine to answer", Duration::from_secs(30), || stoker_client::Client::connect(&sock).is_ok());
    let pid = srv.child.id();
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();

    // Each accepted connection takes a descriptor: fill the table.
    let conns: Vec<_> = (0..NOFILE).map(|_| UnixStream::connect(&sock).unwrap()).collect();
    // (A descriptor or two may be free: accept fails with EMFILE all the
    // same, as stoker_control_accept_errors_total below shows.)
    wait_for("the engine to run out of descriptors", Duration::from_secs(30), || fds() >= NOFILE - 4);
    // A connection is still waiting to be accepted, and accept fails with
    // EMFILE: a busy loop would burn a core for the whole second.
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(pid) - t0;
    assert!(spent < 30, "the engine spent {spent} ticks of CPU in a second while out of descriptors");

    drop(conns);
    wait_for("the engine to answer again", Duration::from_secs(30), || run(&["stat", "--socket", &sock]).status.success());
    let errors = metric(addr, "stoker_control_accept_errors_total");
    assert!((1.0..100.0).contains(&errors), "{errors} failed accepts");
    let c = srv.client();
    assert_eq!(c.read_file(&format!("/m/{}", tree[0].0)).unwrap(), tree[0].1);
    drop(c);
    srv.stop();
}

/// `stoker ARGS` as uid/gid 65534 with the given supplementary groups.
fn as_stranger(groups: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "65534", "--regid", "65534"]);
    match groups {
        Some(g) => cmd.args(["--groups", g]),
        None => cmd.arg("--clear-groups"),
    };
    cmd.arg(env!("CARGO_BIN_EXE_stoker")).args(args).stdin(Stdio::null()).output().expect("running setpriv")
}

fn mode(p: &Path) -> (u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.mode() & 0o7777, m.gid())
}

#[test]
fn sockets_are_0660_with_their_group_and_strangers_are_refused() {
    const GROUP: &str = "4242";
    let dir = tempfile::tempdir().unwrap();
    // Let other users reach what the engine creates in here.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = dir.path().join("src");
    let tree = make_tree(&src, &[5000], 5);
    let run_dir = dir.path().join("run");
    let sock = run_dir.join("s.sock").to_string_lossy().into_owned();
    let addr = free_addr();
    let srv = Server::start(
        &dir.path().join("cache"),
        &sock,
        &[
            "--shards", "2", "--capacity", "64M", "--mount", &format!("m=file://{}", src.display()),
            "--socket-group", GROUP, "--metrics", &addr.to_string(),
        ],
    );
    assert_eq!(mode(&run_dir), (0o750, 4242), "socket directory");
    for p in [sock.clone(), format!("{sock}.shard0"), format!("{sock}.shard1")] {
        assert_eq!(mode(Path::new(&p)), (0o660, 4242), "{p}");
    }

    // A member of the group is served, through the control and shard sockets.
    let file = format!("/m/{}", tree[0].0);
    let out = as_stranger(Some(GROUP), &["cat", &file, "--socket", &sock]);
    assert!(out.status.success(), "group member refused: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, tree[0].1);

    // Anyone else is stopped by the kernel (directory and socket modes)...
    let err = one_line(&as_stranger(None, &["stat", "--socket", &sock]));
    assert!(err.contains("Permission denied"), "{err}");
    // ...and, should the modes be widened by hand, by the engine itself.
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = one_line(&as_stranger(None, &["stat", "--socket", &sock]));
    assert!(err.contains("this stoker engine admits root") && err.contains("uid 65534"), "{err}");
    assert!(metric(addr, r#"stoker_control_refused_total{reason="peer"}"#) >= 1.0);

    // Root still is.
    let out = run(&["cat", &file, "--socket", &sock]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, tree[0].1);
    srv.stop();
}

#[test]
fn a_bare_metrics_port_binds_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let port = free_addr().port();
    let srv = Server::start(
        &dir.path().join("cache"),
        &sock,
        &["--shards", "1", "--capacity", "64M", "--mount", &format!("m=file://{}", src.display()), "--metrics", &port.to_string()],
    );
    let listening = std::fs::read_to_string("/proc/net/tcp").unwrap();
    // 0100007F:PORT is 127.0.0.1:PORT in /proc/net/tcp; state 0A is LISTEN.
    let row = listening.lines().find(|l| l.contains(&format!(":{port:04X} 00000000:0000 0A"))).expect("the endpoint listens");
    assert!(row.contains(&format!("0100007F:{port:04X}")), "not on loopback: {row}");
    assert!(metric(SocketAddr::from(([127, 0, 0, 1], port)), "stoker_sessions_opened_total") >= 0.0);
    srv.stop();
}

#[test]
fn secrets_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let secret = "hunter2-DO-NOT-LOG";
    let log = dir.path().join("serve.log");
    // Debug logging, an S3 mount with a secret key (nothing need listen at
    // its endpoint until something is read).
    let child = stoker()
        .args(["--log-level", "debug", "serve", "--cache-dir", dir.path().join("cache").to_str().unwrap(), "--socket", &sock])
        .args(["--shards", "1", "--capacity", "64M", "--mount", &format!("local=file://{}", src.display())])
        .args(["--mount", "remote=s3://bucket/prefix", "--mount-opt", "remote:endpoint=http://127.0.0.1:1"])
        .args(["--mount-opt", "remote:access_key_id=AKIDEXAMPLE", "--mount-opt", &format!("remote:secret_access_key={secret}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let srv = Server { child, socket: sock.clone(), cache: dir.path().join("cache") };
    wait_for("the engine to answer", Duration::from_secs(30), || stoker_client::Client::connect(&sock).is_ok());
    let out = run(&["stat", "--json", "--socket", &sock]);
    assert!(out.status.success());
    srv.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("mount") && text.contains("AKIDEXAMPLE"), "the log shows the mounts: {text}");
    assert!(!text.contains(secret), "a secret reached the log: {text}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
}

#[test]
fn absurd_durations_and_sizes_get_one_line_and_the_engine_lives() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let tree = make_tree(&src, &[3000], 9);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let cache = dir.path().join("cache");
    let mount = format!("m=file://{}", src.display());
    let serve = |extra: &[&str]| {
        let mut a = vec!["serve", "--cache-dir", cache.to_str().unwrap(), "--socket", &sock, "--mount", &mount];
        a.extend_from_slice(extra);
        run(&a)
    };
    assert!(one_line(&serve(&["--capacity", "99999999999T"])).contains("1 EiB"));
    assert!(one_line(&serve(&["--metadata-sync", "200000000000000d"])).contains("100 years"));
    assert!(one_line(&serve(&["--control-timeout", "2h"])).contains("--control-timeout"));
    assert!(one_line(&serve(&["--control-connections", "0"])).contains("--control-connections"));

    let srv = Server::start(&cache, &sock, &["--shards", "1", "--capacity", "64M", "--mount", &mount]);
    assert!(one_line(&run(&["ttl", "/m", "200000000000000d", "--socket", &sock])).contains("100 years"));
    // The same TTL sent raw, past the command's own check.
    let mut c = raw(&sock);
    write_frame(&mut c, &Request::Ttl { path: "/m".into(), secs: Some(u64::MAX) }).unwrap();
    match read_frame::<_, Response>(&mut c) {
        Ok(Some(Response::Error { message, .. })) => assert!(message.contains("100 years"), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
    let out = run(&["stat", "/m", "--json", "--socket", &sock]);
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("18446744073709551615"));
    assert_eq!(srv.client().read_file(&format!("/m/{}", tree[0].0)).unwrap(), tree[0].1);
    srv.stop();
}

#[test]
fn session_ids_are_unguessable_and_a_wrong_one_attaches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let tree = make_tree(&src, &[1000], 8);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let srv = Server::start(&dir.path().join("cache"), &sock, &["--shards", "2", "--mount", &format!("m=file://{}", src.display())]);
    let clients: Vec<_> = (0..4).map(|_| srv.client()).collect();
    let ids: Vec<u64> = clients.iter().map(|c| c.session_id().unwrap()).collect();
    // The id is what a shard socket admits on: sessions opened one after
    // another must not be able to work out each other's.
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            assert!(a.abs_diff(*b) > 1 << 20, "session ids {ids:?} are close enough to guess");
        }
    }
    // A shard stream naming an id the engine never gave out is closed unserved.
    let mut s = UnixStream::connect(stoker_proto::shard_socket_path(&sock, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&ids[0].wrapping_add(1).to_le_bytes()).unwrap();
    let mut b = [0u8; 8];
    assert!(matches!(s.read(&mut b), Ok(0)), "a stream with a made-up session id was not closed at once");
    // The real sessions still read.
    for c in &clients {
        assert_eq!(c.read_file(&format!("/m/{}", tree[0].0)).unwrap(), tree[0].1);
    }
    drop(clients);
    srv.stop();
}
