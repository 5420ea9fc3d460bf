//! The Python binding (client-py, pyo3 + maturin) against a real `stoker
//! serve`: builds it into a venv under the target dir (installing maturin
//! there when missing) and runs client-py/tests/test_client.py, which reads a
//! generated tree byte for byte through bytes, memoryviews, both Dataset
//! classes and forked workers, and client-py/tests/test_reconnect.py, which
//! keeps reading with one client while the engine is restarted (SIGTERM,
//! then SIGKILL). Set STOKER_SKIP_PYTHON=1 to skip.

mod common;

use common::{make_tree, python_with_binding as python, Server};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

#[test]
fn python_client_reads_the_tree_byte_for_byte() {
    let Some((root, py)) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let sizes: Vec<usize> = (0..120).map(|i| [0, 1, 4095, 4097, 110_000, 300_000, 5 << 20][i % 7] + i).collect();
    let tree = make_tree(&src, &sizes, 3);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let mount = format!("m=file://{}", src.display());
    let server = Server::start(&dir.path().join("cache"), &sock, &["--mount", &mount, "--shards", "2", "--block-size", "1M"]);
    let manifest = dir.path().join("manifest.tsv");
    let lines: String = tree.iter().map(|(rel, _)| format!("/m/{rel}\t{}\n", src.join(rel).display())).collect();
    std::fs::write(&manifest, lines).unwrap();
    let out = Command::new(&py).arg(root.join("client-py/tests/test_client.py")).arg(&server.socket).arg(&manifest).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python test failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("python client: ok"), "{stdout}");
}

/// One `stoker.Client` keeps reading the tree, byte for byte, while the
/// engine is stopped (SIGTERM) and started again, then killed (SIGKILL)
/// and started again on the same cache dir and socket.
#[test]
fn python_client_keeps_reading_across_engine_restarts() {
    let Some((root, py)) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let sizes: Vec<usize> = (0..40).map(|i| [1, 4097, 110_000, 300_000, 3 << 20][i % 5] + i).collect();
    let tree = make_tree(&src, &sizes, 5);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let cache = dir.path().join("cache");
    let mount = format!("m=file://{}", src.display());
    let args = ["--mount", mount.as_str(), "--shards", "2", "--block-size", "1M"];
    let mut server = Some(Server::start(&cache, &sock, &args));
    let manifest = dir.path().join("manifest.tsv");
    let lines: String = tree.iter().map(|(rel, _)| format!("/m/{rel}\t{}\n", src.join(rel).display())).collect();
    std::fs::write(&manifest, lines).unwrap();
    let mut child = Command::new(&py)
        .arg(root.join("client-py/tests/test_reconnect.py"))
        .args([sock.as_str(), manifest.to_str().unwrap(), "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    for (n, kill) in [(0, false), (1, true)] {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("ready {n}"), "the script failed before restart {n} (see its stderr)");
        let old = server.take().unwrap();
        if kill {
            old.kill9();
        } else {
            old.stop();
        }
        server = Some(Server::start(&cache, &sock, &args));
        stdin.write_all(b"go\n").unwrap();
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "python reconnect test failed: {rest}");
    assert!(rest.contains("python reconnect: ok"), "{rest}");
    // The last reads went to the engine started last.
    let s = server.unwrap().client().engine_stats().unwrap();
    assert!(s.hits + s.misses > 0, "no read reached the restarted engine: {s:?}");
}
