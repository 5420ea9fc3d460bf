//! Multipart uploads, staged on the engine's local disk until completed.
//!
//! Each upload is a directory `STAGING/UPLOAD_ID/` holding `upload.json`
//! (bucket, key, start time) and one file per part, `part-NNNNN-MD5HEX`:
//! a part is written to a temporary name, fsynced and renamed into place,
//! so a part either is there whole, with the MD5 that is its ETag, or not at
//! all; uploading a part number again replaces it. Completing streams the
//! parts in order into one engine write (the object appears whole, at
//! once) and removes the directory; aborting removes it. Parts never enter
//! the namespace or under storage. Uploads left over survive a restart; at
//! start-up those older than `STALE_AFTER` are removed.

use s3s::{s3_error, S3Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest part number S3 allows.
pub const PART_NUMBER_MAX: i32 = 10_000;
/// Smallest part but the last (S3's rule; clients split accordingly).
pub const PART_BYTES_MIN: u64 = 5 << 20;
/// Uploads untouched this long are removed at start-up.
pub const STALE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Upload {
    pub bucket: String,
    pub key: String,
    pub initiated_ns: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub number: i32,
    pub md5_hex: String,
    pub size: u64,
    pub path: PathBuf,
    pub modified: SystemTime,
}

pub struct Staging {
    pub dir: PathBuf,
    pub uploads_max: usize,
}

fn io(what: &str, e: std::io::Error) -> s3s::S3Error {
    tracing::warn!("s3 gateway: {what}: {e}");
    s3_error!(InternalError, "{what}: {e}")
}

fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Staging {
    pub fn open(dir: PathBuf, uploads_max: usize) -> std::io::Result<Staging> {
        std::fs::create_dir_all(&dir)?;
        let s = Staging { dir, uploads_max };
        s.remove_stale();
        Ok(s)
    }

    fn remove_stale(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return };
        for e in rd.flatten() {
            let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().unwrap_or_default() > STALE_AFTER);
            if old {
                tracing::info!("s3 gateway: removing stale upload {}", e.path().display());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    fn upload_dir(&self, id: &str) -> S3Result<PathBuf> {
        if !valid_id(id) {
            return Err(s3_error!(NoSuchUpload, "no upload {id:?}"));
        }
        Ok(self.dir.join(id))
    }

    /// Start an upload of `bucket/key`; its id.
    pub fn create(&self, bucket: &str, key: &str) -> S3Result<String> {
        let open = std::fs::read_dir(&self.dir).map_err(|e| io("listing uploads", e))?.count();
        if open >= self.uploads_max {
            return Err(s3_error!(SlowDown, "{open} multipart uploads are open (at most {}): complete or abort some", self.uploads_max));
        }
        let id = format!("{:032x}", rand::random::<u128>());
        let dir = self.dir.join(&id);
        std::fs::create_dir(&dir).map_err(|e| io("creating an upload", e))?;
        let initiated_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let meta = Upload { bucket: bucket.into(), key: key.into(), initiated_ns };
        std::fs::write(dir.join("upload.json"), serde_json::to_vec(&meta).expect("serializable")).map_err(|e| io("creating an upload", e))?;
        Ok(id)
    }

    /// The upload `id`, which must be of `bucket/key`.
    pub fn get(&self, id: &str, bucket: &str, key: &str) -> S3Result<(PathBuf, Upload)> {
        let dir = self.upload_dir(id)?;
        let text = std::fs::read(dir.join("upload.json")).map_err(|_| s3_error!(NoSuchUpload, "no upload {id:?}"))?;
        let u: Upload = serde_json::from_slice(&text).map_err(|_| s3_error!(NoSuchUpload, "upload {id:?} is damaged"))?;
        if u.bucket != bucket || u.key != key {
            return Err(s3_error!(NoSuchUpload, "upload {id:?} is not of {bucket}/{key}"));
        }
        Ok((dir, u))
    }

    /// A temporary file for part `n` of the upload in `dir`.
    pub fn part_tmp(dir: &Path, n: i32) -> S3Result<PathBuf> {
        if !(1..=PART_NUMBER_MAX).contains(&n) {
            return Err(s3_error!(InvalidArgument, "part numbers are 1 to {PART_NUMBER_MAX}"));
        }
        Ok(dir.join(format!("tmp-{n:05}-{:016x}", rand::random::<u64>())))
    }

    /// Put a written, fsynced temporary part file in place as part `n`
    /// (replacing an earlier part `n`).
    pub fn commit_part(dir: &Path, tmp: &Path, n: i32, md5_hex: &str) -> S3Result<()> {
        let old: Vec<Part> = Staging::parts(dir)?.into_iter().filter(|p| p.number == n).collect();
        let to = dir.join(format!("part-{n:05}-{md5_hex}"));
        std::fs::rename(tmp, &to).map_err(|e| io("staging a part", e))?;
        for p in old {
            if p.path != to {
                let _ = std::fs::remove_file(&p.path);
            }
        }
        // The rename is durable once the directory is.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The parts of the upload in `dir`, by number.
    pub fn parts(dir: &Path) -> S3Result<Vec<Part>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| io("listing parts", e))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("part-") else { continue };
            let Some((n, md5)) = rest.split_once('-') else { continue };
            let (Ok(number), Ok(meta)) = (n.parse::<i32>(), e.metadata()) else { continue };
            out.push(Part {
                number,
                md5_hex: md5.to_string(),
                size: meta.len(),
                path: e.path(),
                modified: meta.modified().unwrap_or(UNIX_EPOCH),
            });
        }
        out.sort_by_key(|p| p.number);
        Ok(out)
    }

    /// Every open upload (id, upload), by key then id.
    pub fn uploads(&self) -> S3Result<Vec<(String, Upload)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(|e| io("listing uploads", e))?.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if !valid_id(&id) {
                continue;
            }
            let Ok(text) = std::fs::read(e.path().join("upload.json")) else { continue };
            if let Ok(u) = serde_json::from_slice::<Upload>(&text) {
                out.push((id, u));
            }
        }
        out.sort_by(|a, b| (&a.1.key, &a.0).cmp(&(&b.1.key, &b.0)));
        Ok(out)
    }

    pub fn remove(dir: &Path) {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::warn!("s3 gateway: removing {}: {e}", dir.display());
        }
    }
}

/// The parts `chosen` (number, ETag) of a CompleteMultipartUpload, checked
/// against the staged `parts`: ascending, each staged with that ETag, each
/// but the last at least `PART_BYTES_MIN`.
pub fn check_complete(parts: &[Part], chosen: &[(i32, String)]) -> S3Result<Vec<Part>> {
    if chosen.is_empty() {
        return Err(s3_error!(MalformedXML, "no parts to complete the upload with"));
    }
    let mut out = Vec::with_capacity(chosen.len());
    let mut prev = 0;
    for (i, (n, etag)) in chosen.iter().enumerate() {
        if *n <= prev {
            return Err(s3_error!(InvalidPartOrder, "part numbers must be ascending"));
        }
        prev = *n;
        let Some(p) = parts.iter().find(|p| p.number == *n) else {
            return Err(s3_error!(InvalidPart, "part {n} was not uploaded"));
        };
        if !etag.trim_matches('"').eq_ignore_ascii_case(&p.md5_hex) {
            return Err(s3_error!(InvalidPart, "part {n}: the ETag does not match the uploaded part's"));
        }
        if i + 1 < chosen.len() && p.size < PART_BYTES_MIN {
            return Err(s3_error!(EntityTooSmall, "part {n} is {} bytes: every part but the last is at least 5 MiB", p.size));
        }
        out.push(p.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: i32, md5: &str, size: u64) -> Part {
        Part { number, md5_hex: md5.into(), size, path: PathBuf::new(), modified: UNIX_EPOCH }
    }

    #[test]
    fn completion_is_checked() {
        let staged = [part(1, "aa", 6 << 20), part(2, "bb", 1), part(3, "cc", 5 << 20)];
        let ok = check_complete(&staged, &[(1, "\"aa\"".into()), (2, "bb".into())]).unwrap();
        assert_eq!(ok.len(), 2);
        let code = |c: &[(i32, String)]| check_complete(&staged, c).unwrap_err().code().clone();
        assert_eq!(code(&[(3, "cc".into()), (1, "aa".into())]), s3s::S3ErrorCode::InvalidPartOrder);
        assert_eq!(code(&[(1, "zz".into())]), s3s::S3ErrorCode::InvalidPart);
        assert_eq!(code(&[(4, "dd".into())]), s3s::S3ErrorCode::InvalidPart);
        assert_eq!(code(&[(2, "bb".into()), (3, "cc".into())]), s3s::S3ErrorCode::EntityTooSmall);
        assert_eq!(code(&[]), s3s::S3ErrorCode::MalformedXML);
    }

    #[test]
    fn staged_parts_replace_and_list() {
        let d = tempfile::tempdir().unwrap();
        let s = Staging::open(d.path().join("up"), 2).unwrap();
        let id = s.create("m", "k").unwrap();
        let (dir, u) = s.get(&id, "m", "k").unwrap();
        assert_eq!((u.bucket.as_str(), u.key.as_str()), ("m", "k"));
        assert!(s.get(&id, "m", "other").is_err());
        for (n, md5, body) in [(1, "aa", "one"), (2, "bb", "two"), (1, "cc", "uno")] {
            let t = Staging::part_tmp(&dir, n).unwrap();
            std::fs::write(&t, body).unwrap();
            Staging::commit_part(&dir, &t, n, md5).unwrap();
        }
        let parts = Staging::parts(&dir).unwrap();
        let got: Vec<(i32, &str)> = parts.iter().map(|p| (p.number, p.md5_hex.as_str())).collect();
        assert_eq!(got, vec![(1, "cc"), (2, "bb")]);
        assert!(Staging::part_tmp(&dir, 0).is_err());
        s.create("m", "k2").unwrap();
        assert_eq!(s.create("m", "k3").unwrap_err().code(), &s3s::S3ErrorCode::SlowDown);
        assert_eq!(s.uploads().unwrap().len(), 2);
        Staging::remove(&dir);
        assert!(s.get(&id, "m", "k").is_err());
    }
}
