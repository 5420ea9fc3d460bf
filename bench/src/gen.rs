//! Deterministic dataset generator: the same seed gives the same names, sizes
//! and bytes. Sizes follow a log-normal-ish spread around the mean, like
//! JPEGs in ImageNet (most near the mean, a few several times larger).

use anyhow::{Context, Result};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use std::io::Write;
use std::path::Path;

#[derive(Clone, Debug)]
pub struct GenSpec {
    pub files: usize,
    pub mean_size: u64,
    pub dirs: usize,
    pub seed: u64,
}

impl Default for GenSpec {
    fn default() -> GenSpec {
        GenSpec { files: 20_000, mean_size: 110 << 10, dirs: 100, seed: 42 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenSummary {
    pub files: usize,
    pub bytes: u64,
}

/// Size of file `i`: mean × a factor in [0.25, 3) skewed towards 1.
fn size_for(rng: &mut SmallRng, mean: u64) -> u64 {
    // Sum of three uniforms is bell-shaped around 1.5; map it to a skewed factor.
    let u: f64 = (0..3).map(|_| rng.gen::<f64>()).sum::<f64>() / 1.5; // mean 1.0, range [0, 2)
    let factor = if u < 1.0 { 0.25 + 0.75 * u } else { u.powf(1.6) };
    (mean as f64 * factor) as u64
}

pub fn generate(dir: &Path, spec: &GenSpec) -> Result<GenSummary> {
    anyhow::ensure!(spec.files > 0, "--files must be at least 1");
    anyhow::ensure!(spec.dirs > 0, "--dirs must be at least 1");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rng = SmallRng::seed_from_u64(spec.seed);
    let mut sum = GenSummary::default();
    let mut buf = Vec::new();
    for i in 0..spec.files {
        let sub = dir.join(format!("class{:05}", i % spec.dirs));
        if i < spec.dirs {
            std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        }
        let size = size_for(&mut rng, spec.mean_size) as usize;
        buf.resize(size, 0);
        rng.fill_bytes(&mut buf);
        let path = sub.join(format!("img{i:08}.bin"));
        let mut f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        f.write_all(&buf).with_context(|| format!("writing {}", path.display()))?;
        sum.files += 1;
        sum.bytes += size as u64;
    }
    Ok(sum)
}

/// The `--large` dataset: `count` files of `bytes` each (`large/blobN.bin`),
/// written in 1 MiB chunks so memory stays small; deterministic for a seed.
pub fn generate_large(dir: &Path, count: usize, bytes: u64, seed: u64) -> Result<GenSummary> {
    anyhow::ensure!(count > 0, "--large-files must be at least 1");
    let sub = dir.join("large");
    std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut sum = GenSummary::default();
    for i in 0..count {
        let path = sub.join(format!("blob{i:03}.bin"));
        let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = std::io::BufWriter::new(f);
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill_bytes(&mut buf[..n]);
            w.write_all(&buf[..n]).with_context(|| format!("writing {}", path.display()))?;
            left -= n as u64;
        }
        w.flush().with_context(|| format!("writing {}", path.display()))?;
        sum.files += 1;
        sum.bytes += bytes;
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(dir: &Path) -> Vec<(String, u64, u32)> {
        let mut out = Vec::new();
        for f in crate::epoch::list_files(dir).unwrap() {
            let bytes = std::fs::read(dir.join(&f)).unwrap();
            let sum = bytes.iter().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(*b as u32));
            out.push((f, bytes.len() as u64, sum));
        }
        out
    }

    #[test]
    fn same_seed_same_dataset_other_seed_differs() {
        let spec = GenSpec { files: 50, mean_size: 3000, dirs: 4, seed: 7 };
        let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let sa = generate(a.path(), &spec).unwrap();
        generate(b.path(), &spec).unwrap();
        generate(c.path(), &GenSpec { seed: 8, ..spec.clone() }).unwrap();
        assert_eq!(sa.files, 50);
        let (da, db, dc) = (digest(a.path()), digest(b.path()), digest(c.path()));
        assert_eq!(da.len(), 50);
        assert_eq!(da, db);
        assert_ne!(da, dc);
        let mean = sa.bytes / 50;
        assert!((1500..6000).contains(&mean), "mean size {mean} far from 3000");
    }

    #[test]
    fn large_files_have_the_asked_size_and_repeat_for_a_seed() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let s = generate_large(a.path(), 2, (3 << 20) + 5, 9).unwrap();
        generate_large(b.path(), 2, (3 << 20) + 5, 9).unwrap();
        assert_eq!(s, GenSummary { files: 2, bytes: 2 * ((3 << 20) + 5) });
        let (da, db) = (digest(a.path()), digest(b.path()));
        assert_eq!(da.iter().map(|d| d.1).collect::<Vec<_>>(), vec![(3 << 20) + 5; 2]);
        assert_eq!(da, db);
        assert_ne!(da[0].2, da[1].2, "two blobs with the same bytes");
    }
}
