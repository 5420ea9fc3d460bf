//! CreateMultipartUpload, UploadPart, ListParts, CompleteMultipartUpload,
//! AbortMultipartUpload and ListMultipartUploads over `multipart::Staging`.
//! Staging is plain file I/O, run on the blocking threads.

use crate::body::{self, Target, PIECE_BYTES};
use crate::errors::from_engine;
use crate::etag;
use crate::keys::object_path;
use crate::multipart::{check_complete, Part, Staging};
use crate::s3::Gateway;
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Result};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> S3Result<T> + Send + 'static) -> S3Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| s3_error!(InternalError, "{e}"))?
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Gateway {
    /// The staging directory of upload `id` of `bucket/key`.
    async fn upload_dir(&self, id: &str, bucket: &str, key: &str) -> S3Result<PathBuf> {
        let (s, id, b, k) = (self.staging.clone(), id.to_string(), bucket.to_string(), key.to_string());
        blocking(move || s.get(&id, &b, &k).map(|(d, _)| d)).await
    }

    pub(crate) async fn upload_create(&self, i: CreateMultipartUploadInput) -> S3Result<CreateMultipartUploadOutput> {
        let (_, dir) = object_path(&i.bucket, &i.key)?;
        if dir {
            return Err(s3_error!(InvalidArgument, "a key ending in '/' is a directory: it holds no bytes"));
        }
        self.need_bucket(&i.bucket).await?;
        let (s, b, k) = (self.staging.clone(), i.bucket.clone(), i.key.clone());
        let id = blocking(move || s.create(&b, &k)).await?;
        tracing::debug!("s3 gateway: upload {id} of {}/{} started", i.bucket, i.key);
        Ok(CreateMultipartUploadOutput { bucket: Some(i.bucket), key: Some(i.key), upload_id: Some(id), ..Default::default() })
    }

    pub(crate) async fn upload_part_in(&self, req: S3Request<UploadPartInput>) -> S3Result<UploadPartOutput> {
        let trailer = req.headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()).and_then(body::algorithm_of_header);
        let trailers = req.trailing_headers;
        let i = req.input;
        if i.content_length.is_some_and(|n| n as u64 > self.bytes_max) {
            return Err(s3_error!(EntityTooLarge, "a part is at most {} bytes", self.bytes_max));
        }
        let dir = self.upload_dir(&i.upload_id, &i.bucket, &i.key).await?;
        let tmp = Staging::part_tmp(&dir, i.part_number)?;
        let mut f = tokio::fs::File::create(&tmp).await.map_err(|e| s3_error!(InternalError, "staging a part: {e}"))?;
        let want = crate::body::expected_of!(i, trailer, trailers);
        let got = async {
            let got = body::receive(i.body, Target::File(&mut f), &want, self.bytes_max, self.idle).await?;
            f.sync_all().await.map_err(|e| s3_error!(InternalError, "staging a part: {e}"))?;
            Ok::<_, s3s::S3Error>(got)
        }
        .await;
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let md5 = hex(&got.md5);
        let (d, t, n, m) = (dir.clone(), tmp.clone(), i.part_number, md5.clone());
        blocking(move || Staging::commit_part(&d, &t, n, &m)).await?;
        let c = got.checksum;
        Ok(UploadPartOutput {
            e_tag: Some(ETag::Strong(md5)),
            checksum_crc32: c.checksum_crc32,
            checksum_crc32c: c.checksum_crc32c,
            checksum_crc64nvme: c.checksum_crc64nvme,
            checksum_sha1: c.checksum_sha1,
            checksum_sha256: c.checksum_sha256,
            ..Default::default()
        })
    }

    pub(crate) async fn upload_parts(&self, i: ListPartsInput) -> S3Result<ListPartsOutput> {
        let dir = self.upload_dir(&i.upload_id, &i.bucket, &i.key).await?;
        let parts = blocking(move || Staging::parts(&dir)).await?;
        let marker = i.part_number_marker.unwrap_or(0);
        let max = i.max_parts.map_or(1000, |m| m.clamp(0, 1000)) as usize;
        let after: Vec<&Part> = parts.iter().filter(|p| p.number > marker).collect();
        let truncated = after.len() > max;
        let page: Vec<Part> = after.into_iter().take(max).cloned().collect();
        let next = if truncated { page.last().map(|p| p.number) } else { None };
        Ok(ListPartsOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(i.upload_id),
            part_number_marker: i.part_number_marker,
            next_part_number_marker: next,
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            parts: Some(
                page.into_iter()
                    .map(|p| s3s::dto::Part {
                        e_tag: Some(ETag::Strong(p.md5_hex)),
                        part_number: Some(p.number),
                        size: Some(p.size as i64),
                        last_modified: Some(Timestamp::from(p.modified)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        })
    }

    pub(crate) async fn upload_complete(&self, i: CompleteMultipartUploadInput) -> S3Result<CompleteMultipartUploadOutput> {
        let (path, _) = object_path(&i.bucket, &i.key)?;
        let dir = self.upload_dir(&i.upload_id, &i.bucket, &i.key).await?;
        let chosen: Vec<(i32, String)> = i
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.part_number.unwrap_or(0), p.e_tag.map(|e| e.value().to_string()).unwrap_or_default()))
            .collect();
        let d = dir.clone();
        let parts = blocking(move || Staging::parts(&d)).await?;
        let parts = check_complete(&parts, &chosen)?;
        let total: u64 = parts.iter().map(|p| p.size).sum();
        if total > (5u64 << 40) {
            return Err(s3_error!(EntityTooLarge, "an object is at most 5 TiB"));
        }
        // Writing the object can take a while: s3s keeps the connection
        // alive with whitespace until this future ends.
        let h = self.create(&i.bucket, &path).await?;
        let engine = self.engine.clone();
        let (bucket, key) = (i.bucket.clone(), i.key.clone());
        let future = async move {
            let handle = h.handle;
            let p = path.clone();
            let written = engine
                .call(move |c| {
                    use std::io::Read;
                    let mut off = 0u64;
                    let mut buf = vec![0u8; PIECE_BYTES];
                    for part in &parts {
                        let mut f = std::fs::File::open(&part.path)
                            .map_err(|e| stoker_client::Error::new(libc::EIO, format!("staged part {}: {e}", part.number)))?;
                        loop {
                            let n = f.read(&mut buf).map_err(|e| stoker_client::Error::new(libc::EIO, format!("staged part {}: {e}", part.number)))?;
                            if n == 0 {
                                break;
                            }
                            c.write_at(handle, off, &buf[..n])?;
                            off += n as u64;
                        }
                    }
                    Ok(off)
                })
                .await?;
            let written = written.map_err(|e| from_engine(&p, &e))?;
            if written != total {
                return Err(s3_error!(InternalError, "{p}: staged parts hold {written} bytes, not {total}"));
            }
            let a = h.close(&p).await?;
            let d = dir.clone();
            let _ = tokio::task::spawn_blocking(move || Staging::remove(&d)).await;
            tracing::debug!("s3 gateway: upload of {p} complete: {total} bytes");
            Ok(CompleteMultipartUploadOutput {
                bucket: Some(bucket),
                key: Some(key),
                e_tag: Some(etag::etag(&a)),
                ..Default::default()
            })
        };
        Ok(CompleteMultipartUploadOutput { future: Some(Box::pin(future)), ..Default::default() })
    }

    pub(crate) async fn upload_abort(&self, i: AbortMultipartUploadInput) -> S3Result<AbortMultipartUploadOutput> {
        let dir = self.upload_dir(&i.upload_id, &i.bucket, &i.key).await?;
        blocking(move || {
            Staging::remove(&dir);
            Ok(())
        })
        .await?;
        Ok(AbortMultipartUploadOutput::default())
    }

    pub(crate) async fn uploads_list(&self, i: ListMultipartUploadsInput) -> S3Result<ListMultipartUploadsOutput> {
        self.need_bucket(&i.bucket).await?;
        let s = self.staging.clone();
        let all = blocking(move || s.uploads()).await?;
        let prefix = i.prefix.clone().unwrap_or_default();
        let max = i.max_uploads.map_or(1000, |m| m.clamp(0, 1000)) as usize;
        let after = (i.key_marker.clone().unwrap_or_default(), i.upload_id_marker.clone().unwrap_or_default());
        let mut matching = all
            .into_iter()
            .filter(|(_, u)| u.bucket == i.bucket && u.key.starts_with(&prefix))
            .filter(|(id, u)| i.key_marker.is_none() || (u.key.clone(), id.clone()) > after);
        let page: Vec<(String, crate::multipart::Upload)> = matching.by_ref().take(max).collect();
        let truncated = matching.next().is_some();
        let last = page.last().cloned();
        Ok(ListMultipartUploadsOutput {
            bucket: Some(i.bucket),
            prefix: i.prefix,
            key_marker: i.key_marker,
            upload_id_marker: i.upload_id_marker,
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
            next_key_marker: if truncated { last.as_ref().map(|l| l.1.key.clone()) } else { None },
            next_upload_id_marker: if truncated { last.map(|l| l.0) } else { None },
            uploads: Some(
                page.into_iter()
                    .map(|(id, u)| MultipartUpload {
                        key: Some(u.key),
                        upload_id: Some(id),
                        initiated: Some(Timestamp::from(UNIX_EPOCH + Duration::from_nanos(u.initiated_ns))),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        })
    }
}
