//! Helpers shared by the store integration tests: an executor per test and
//! key hashing.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};

use glommio::{LocalExecutorBuilder, Placement};
use stoker_engine::store::StoreConfig;

/// Runs `f` on a fresh glommio executor with a small io_memory (the memlock
/// limit here is 8 MiB; glommio then uses heap DMA buffers).
pub fn run<T, F>(f: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: Future<Output = T> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(f)
        .expect("spawn executor")
        .join()
        .expect("executor thread")
}

pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

pub fn cfg(dir: &Path, segment_bytes: u64, capacity_bytes: u64) -> StoreConfig {
    StoreConfig { dir: dir.to_path_buf(), segment_bytes, capacity_bytes }
}

/// Deterministic block contents for key `i`.
pub fn block(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 31 + j * 7) as u8).collect()
}

pub fn key(i: u64) -> Vec<u8> {
    format!("mount/path/file-{i:06}/block").into_bytes()
}

/// Sum of the sizes of `seg-*.dat` files in `dir`.
pub fn data_bytes_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".dat"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    v.sort();
    v
}

/// XORs one byte of a file in place (the store may have it open; O_DIRECT
/// reads see the change because the kernel writes back dirty pages first).
pub fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, offset).unwrap();
    f.sync_all().unwrap();
}
