//! The `s3s::S3` operations: each one a thin shell over the gateway's
//! methods in `objects`, `listing` and `uploads` (objects, listings and
//! multipart uploads). Anything not listed here answers NotImplemented (s3s's
//! default), as docs/GATEWAY.md says.

use crate::config::GatewayConfig;
use crate::engine::Engine;
use crate::multipart::Staging;
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3Request, S3Response, S3Result, S3};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use stoker_proto::control::{Attr, Kind};

#[derive(Clone)]
pub struct Gateway {
    pub(crate) engine: Engine,
    pub(crate) staging: Arc<Staging>,
    pub(crate) bytes_max: u64,
    pub(crate) idle: Duration,
    /// Owner of the files the gateway writes: the engine process's user.
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Reported as every bucket's creation date.
    pub(crate) started: SystemTime,
}

impl Gateway {
    pub fn new(engine: Engine, staging: Staging, cfg: &GatewayConfig) -> Gateway {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Gateway {
            engine,
            staging: Arc::new(staging),
            bytes_max: cfg.object_bytes_max,
            idle: cfg.body_idle_timeout,
            uid,
            gid,
            started: SystemTime::now(),
        }
    }

    /// Attributes of `path`, None when it is not there.
    pub(crate) async fn stat(&self, path: &str) -> S3Result<Option<Attr>> {
        let p = path.to_string();
        match self.engine.call(move |c| c.stat(&p)).await? {
            Ok(a) => Ok(Some(a)),
            Err(e) if matches!(e.errno(), libc::ENOENT | libc::ENOTDIR) => Ok(None),
            Err(e) => Err(crate::errors::from_engine(path, &e)),
        }
    }

    /// NoSuchBucket unless `bucket` is a mount.
    pub(crate) async fn need_bucket(&self, bucket: &str) -> S3Result<()> {
        let p = crate::keys::bucket_path(bucket)?;
        match self.stat(&p).await? {
            Some(a) if a.kind == Kind::Dir => Ok(()),
            _ => Err(s3_error!(NoSuchBucket, "no mount named {bucket:?}")),
        }
    }

    /// `e` from an operation on `path` in `bucket`: NoSuchBucket when the
    /// path is missing because the bucket is.
    pub(crate) async fn engine_error(&self, bucket: &str, path: &str, e: &stoker_client::Error) -> S3Error {
        if matches!(e.errno(), libc::ENOENT | libc::ENOTDIR) {
            if let Err(b) = self.need_bucket(bucket).await {
                return b;
            }
        }
        crate::errors::from_engine(path, e)
    }

    /// The attributes of the file `path`: NoSuchKey for a directory or
    /// nothing, NoSuchBucket for a missing mount.
    pub(crate) async fn stat_file(&self, bucket: &str, path: &str) -> S3Result<Attr> {
        match self.stat(path).await? {
            Some(a) if a.kind == Kind::File => Ok(a),
            _ => {
                self.need_bucket(bucket).await?;
                Err(s3_error!(NoSuchKey, "no object {path}"))
            }
        }
    }
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn list_buckets(&self, _req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let stats = match self.engine.call(|c| c.engine_stats()).await? {
            Ok(s) => s,
            Err(e) => return Err(crate::errors::from_engine("/", &e)),
        };
        let buckets = stats
            .mounts
            .iter()
            .map(|m| Bucket { name: Some(m.name.clone()), creation_date: Some(Timestamp::from(self.started)), bucket_region: None })
            .collect();
        Ok(S3Response::new(ListBucketsOutput { buckets: Some(buckets), owner: None, ..Default::default() }))
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.need_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(&self, req: S3Request<GetBucketLocationInput>) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.need_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        match self.need_bucket(&req.input.bucket).await {
            Ok(()) => Err(s3_error!(BucketAlreadyOwnedByYou, "bucket {:?} is a mount", req.input.bucket)),
            Err(_) => Err(s3_error!(AccessDenied, "buckets are the engine's mounts: add one with `stoker serve --mount NAME=URI`")),
        }
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        self.get(req.input).await.map(S3Response::new)
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.head(req.input).await.map(S3Response::new)
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        self.put(req).await.map(S3Response::new)
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.delete(&req.input.bucket, &req.input.key).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.delete_many(req.input).await.map(S3Response::new)
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        self.copy(req.input).await.map(S3Response::new)
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.list_v2(req.input).await.map(S3Response::new)
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        self.list_v1(req.input).await.map(S3Response::new)
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.upload_create(req.input).await.map(S3Response::new)
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        self.upload_part_in(req).await.map(S3Response::new)
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        self.upload_parts(req.input).await.map(S3Response::new)
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.upload_complete(req.input).await.map(S3Response::new)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.upload_abort(req.input).await.map(S3Response::new)
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.uploads_list(req.input).await.map(S3Response::new)
    }
}
