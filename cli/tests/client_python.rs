//! The Python binding (client-py, pyo3 + maturin) against a real `stoker
//! serve`: builds it into a venv under the target dir (installing maturin
//! there when missing) and runs client-py/tests/test_client.py, which reads a
//! generated tree byte for byte through bytes, memoryviews, both Dataset
//! classes and forked workers. Set STOKER_SKIP_PYTHON=1 to skip.

mod common;

use common::{make_tree, Server};
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A venv with the binding installed (`maturin develop`), shared by runs.
fn venv(root: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let venv = target.join("pyenv");
    let py = venv.join("bin/python");
    if !py.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv");
    }
    if !venv.join("bin/maturin").exists() {
        run(Command::new(&py).args(["-m", "pip", "install", "-q", "maturin>=1.5,<2"]), "pip install maturin");
    }
    run(
        Command::new(venv.join("bin/maturin"))
            .args(["develop", "-q", "-m"])
            .arg(root.join("client-py/Cargo.toml"))
            .env("VIRTUAL_ENV", &venv)
            .env("PATH", format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap_or_default())),
        "maturin develop",
    );
    py
}

#[test]
fn python_client_reads_the_tree_byte_for_byte() {
    if std::env::var_os("STOKER_SKIP_PYTHON").is_some() {
        eprintln!("STOKER_SKIP_PYTHON set: skipped");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let py = venv(&root);
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
