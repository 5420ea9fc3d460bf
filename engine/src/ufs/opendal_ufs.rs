//! Object stores and remote filesystems through Apache OpenDAL: s3://, gs://,
//! az://, oss://, cos://, hdfs:// (hdfs-native, HDFS's own RPC in pure Rust),
//! webhdfs://, http(s):// (and file:// on request).
//!
//! OpenDAL does the signing, credential loading and HTTP; this module maps a
//! mount URI and its per-mount options onto an OpenDAL service and the
//! service's answers onto the `Ufs` trait. It never retries and never times
//! out by itself: `Guarded` owns both for every backend, so a failing call is
//! retried by exactly one layer with one documented policy. OpenDAL's
//! concurrency-limit layer bounds the requests in flight per mount.
//!
//! It must never put a credential into a log line or an error message:
//! errors carry OpenDAL's kind and message only (not its context, which for
//! some services holds request URLs), and option problems name keys, never
//! values.

use super::{BoxFut, ListPage, Ufs, UfsError, UfsResult};
use opendal::{EntryMode, ErrorKind, Metadata, Operator};
use std::collections::HashMap;
use std::sync::Arc;
use stoker_proto::control::{Attr, Kind};

/// Requests in flight per mount unless `concurrency=N` says otherwise.
pub const CONCURRENCY_DEFAULT: usize = 256;

/// Options that stoker itself understands (not passed to OpenDAL).
const STOKER_KEYS: &[&str] = &["concurrency", "force_path_style"];

/// Keys whose values are secrets: shown as `***` wherever options are printed.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["secret", "password", "token", "account_key", "credential", "sas", "encryption_key", "delegation"]
        .iter()
        .any(|s| k.contains(s))
}

/// A mount's options with secret values masked, for logs and `stoker stat`.
pub fn redacted(options: &[(String, String)]) -> Vec<(String, String)> {
    options
        .iter()
        .map(|(k, v)| (k.clone(), if is_secret_key(k) { "***".into() } else { v.clone() }))
        .collect()
}

/// The URI schemes this module serves, with the OpenDAL service behind each.
fn service_for(scheme: &str) -> Option<&'static str> {
    Some(match scheme {
        "s3" | "s3a" => "s3",
        "gs" | "gcs" => "gcs",
        "az" | "azblob" => "azblob",
        "oss" => "oss",
        "cos" => "cos",
        "webhdfs" => "webhdfs",
        "hdfs" => "hdfs-native",
        "http" | "https" => "http",
        "file" => "fs",
        _ => return None,
    })
}

pub const SCHEMES: &str = "s3://, gs://, az://, oss://, cos://, hdfs://, webhdfs://, http(s)://, file://";

/// The configuration keys an OpenDAL service accepts: the fields of its
/// config type (serialized defaults), so a misspelt option is refused
/// instead of silently ignored.
fn known_keys(service: &str) -> Vec<String> {
    use opendal::services::*;
    let v = match service {
        "s3" => serde_json::to_value(S3Config::default()),
        "gcs" => serde_json::to_value(GcsConfig::default()),
        "azblob" => serde_json::to_value(AzblobConfig::default()),
        "oss" => serde_json::to_value(OssConfig::default()),
        "cos" => serde_json::to_value(CosConfig::default()),
        "webhdfs" => serde_json::to_value(WebhdfsConfig::default()),
        "hdfs-native" => serde_json::to_value(HdfsNativeConfig::default()),
        "http" => serde_json::to_value(HttpConfig::default()),
        "fs" => serde_json::to_value(FsConfig::default()),
        _ => return Vec::new(),
    };
    match v {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("option {key}: expected true or false")),
    }
}

/// Split `SCHEME://AUTHORITY/PATH` (no query strings: options go in
/// `--mount-opt`, where secrets are not part of a URI that gets printed).
fn split_uri(uri: &str) -> Result<(String, String, String), String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| format!("bad URI {uri:?}: expected SCHEME://..., e.g. s3://bucket/prefix"))?;
    if rest.contains('?') || rest.contains('#') {
        // The URI is not echoed: a query string may carry a secret.
        return Err(format!("bad URI {scheme}://{}…: no query strings; pass options with --mount-opt NAME:key=value", rest.split(['?', '#']).next().unwrap_or("")));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!("bad URI: credentials in {scheme}:// URIs are refused; use --mount-opt or the environment"));
    }
    Ok((scheme.to_ascii_lowercase(), authority.to_string(), path.trim_matches('/').to_string()))
}

/// Build an OpenDAL-backed under storage for `uri` with per-mount `options`.
pub fn open(uri: &str, options: &[(String, String)]) -> Result<Arc<dyn Ufs>, String> {
    let (op, scheme) = operator(uri, options)?;
    let can_list = op.info().capability().list;
    tracing::info!(uri, options = ?redacted(options), "under storage opened");
    Ok(Arc::new(OpendalUfs { op, scheme, can_list }))
}

/// The OpenDAL operator (with its concurrency limit) for `uri` and
/// `options`, and the URI's scheme.
pub fn operator(uri: &str, options: &[(String, String)]) -> Result<(Operator, String), String> {
    let (scheme, authority, path) = split_uri(uri)?;
    let service = service_for(&scheme)
        .ok_or_else(|| format!("bad URI {uri:?}: scheme {scheme:?} is not supported (supported: {SCHEMES})"))?;
    let known = known_keys(service);
    let mut cfg: HashMap<String, String> = HashMap::new();
    let mut concurrency = CONCURRENCY_DEFAULT;
    // Hadoop client settings (`dfs.*`, `hadoop.*`, `fs.*`) for hdfs://.
    let mut hadoop: HashMap<String, String> = HashMap::new();
    for (k, v) in options {
        let key = k.to_ascii_lowercase();
        if service == "hdfs-native" && ["dfs.", "hadoop.", "fs."].iter().any(|p| key.starts_with(p)) {
            hadoop.insert(k.clone(), v.clone());
            continue;
        }
        match key.as_str() {
            "concurrency" => {
                concurrency = v
                    .parse()
                    .ok()
                    .filter(|n: &usize| *n > 0 && *n <= 65536)
                    .ok_or_else(|| format!("mount {uri}: option concurrency: expected 1..=65536"))?;
            }
            "force_path_style" if service == "s3" => {
                let path_style = parse_bool(&key, v).map_err(|e| format!("mount {uri}: {e}"))?;
                cfg.insert("enable_virtual_host_style".into(), (!path_style).to_string());
            }
            "bucket" | "container" | "root" => {
                return Err(format!("mount {uri}: option {key} comes from the URI, not from --mount-opt"));
            }
            _ if known.contains(&key) => {
                cfg.insert(key, v.clone());
            }
            _ => {
                let mut valid: Vec<&str> = known
                    .iter()
                    .map(String::as_str)
                    .filter(|n| !matches!(*n, "bucket" | "container" | "root"))
                    .chain(STOKER_KEYS.iter().copied())
                    .collect();
                valid.sort_unstable();
                valid.dedup();
                let hadoop = if service == "hdfs-native" { "; and Hadoop client settings dfs.*, hadoop.*, fs.*" } else { "" };
                return Err(format!("mount {uri}: unknown option {key:?} for {scheme}:// (known: {}{hadoop})", valid.join(", ")));
            }
        }
    }

    let root = format!("/{path}");
    match service {
        "s3" | "gcs" | "oss" | "cos" | "azblob" => {
            if authority.is_empty() {
                let what = if service == "azblob" { "container" } else { "bucket" };
                return Err(format!("bad URI {uri:?}: expected {scheme}://{what}/prefix"));
            }
            let field = if service == "azblob" { "container" } else { "bucket" };
            cfg.insert(field.into(), authority.clone());
            cfg.insert("root".into(), root);
        }
        "webhdfs" => {
            if authority.is_empty() {
                return Err(format!("bad URI {uri:?}: expected webhdfs://namenode:9870/path"));
            }
            cfg.entry("endpoint".into()).or_insert_with(|| format!("http://{authority}"));
            cfg.insert("root".into(), root);
        }
        "hdfs-native" => {
            if authority.is_empty() {
                return Err(format!("bad URI {uri:?}: expected hdfs://namenode:8020/path (or hdfs://NAMESERVICE/path)"));
            }
            cfg.insert("name_node".into(), format!("hdfs://{authority}"));
            cfg.insert("root".into(), root);
        }
        "http" => {
            if authority.is_empty() {
                return Err(format!("bad URI {uri:?}: expected {scheme}://host[:port]/path"));
            }
            cfg.insert("endpoint".into(), format!("{scheme}://{authority}"));
            cfg.insert("root".into(), root);
        }
        "fs" => {
            if !authority.is_empty() || path.is_empty() {
                return Err(format!("bad URI {uri:?}: file URIs need an absolute path, e.g. file:///data/train"));
            }
            cfg.insert("root".into(), root);
        }
        _ => unreachable!("service_for returned {service}"),
    }
    if service == "s3" {
        // S3-compatible servers (MinIO, Ceph, s3s) rarely care about the
        // region but the signer needs one; AWS itself needs the real one.
        let region_env = ["AWS_REGION", "AWS_DEFAULT_REGION"].iter().any(|v| std::env::var_os(v).is_some());
        if !cfg.contains_key("region") && cfg.contains_key("endpoint") && !region_env {
            cfg.insert("region".into(), "us-east-1".into());
        }
    }

    init_opendal();
    let op = if service == "hdfs-native" {
        // The client's own failover loop retries a refused connection for
        // minutes (15 attempts, backoff to 15 s); `Guarded` owns retries, so
        // it gets one attempt unless the mount says otherwise.
        hadoop.entry("dfs.client.failover.max.attempts".into()).or_insert_with(|| "0".into());
        let b = opendal::services::HdfsNative::default()
            .name_node(&cfg["name_node"])
            .root(&cfg["root"])
            .options(hadoop);
        Operator::new(b)
    } else {
        Operator::via_iter(service, cfg)
    };
    let op = op
        .map_err(|e| format!("mount {uri}: {}", clean_message(&e)))?
        .layer(opendal::layers::ConcurrentLimitLayer::new(concurrency));
    Ok((op, scheme))
}

/// Register the services (the default registry is not auto-registered:
/// that feature pulls in a constructor crate) and pick the TLS provider.
fn init_opendal() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        opendal::install_default();
        opendal_http_transport_reqwest::install_default();
    });
}

pub struct OpendalUfs {
    op: Operator,
    scheme: String,
    /// False for http(s)://, which cannot list.
    can_list: bool,
}

/// OpenDAL's kind and message, without its context (which may hold URLs).
fn clean_message(e: &opendal::Error) -> String {
    format!("{}: {}", e.kind(), e.message())
}

impl OpendalUfs {
    fn map_err(&self, e: opendal::Error) -> UfsError {
        match e.kind() {
            ErrorKind::NotFound => UfsError::NotFound,
            ErrorKind::IsADirectory => UfsError::IsDir,
            ErrorKind::NotADirectory => UfsError::NotDir,
            ErrorKind::RateLimited => UfsError::Throttled(format!("{}://: {}", self.scheme, clean_message(&e))),
            _ => {
                // Some services (hdfs-native) report a refused or reset
                // connection as a plain error: still a transient one.
                let transient_io = ["Connection refused", "Connection reset", "Broken pipe"]
                    .iter()
                    .any(|m| e.message().contains(m) || e.to_string().contains(m));
                let retryable = e.is_temporary() || transient_io;
                UfsError::Io { message: format!("{}://: {}", self.scheme, clean_message(&e)), retryable }
            }
        }
    }
}

/// The version token: the ETag when the store gives one (quotes and a weak
/// marker dropped, so a listing and a GET agree), else size and mtime.
fn version_of(meta: &Metadata, mtime_ns: i64) -> String {
    match meta.etag().map(|e| e.trim_start_matches("W/").trim_matches('"')).filter(|e| !e.is_empty()) {
        Some(etag) => format!("e{etag}"),
        None => format!("s{}-m{mtime_ns}", meta.content_length()),
    }
}

fn attr_of(meta: &Metadata) -> Attr {
    let mtime_ns = meta
        .last_modified()
        .map(|t| t.into_inner().as_nanosecond().clamp(i64::MIN as i128, i64::MAX as i128) as i64)
        .unwrap_or(0);
    match meta.mode() {
        EntryMode::DIR => Attr { kind: Kind::Dir, size: 0, mtime_ns, version: String::new() },
        _ => Attr { kind: Kind::File, size: meta.content_length(), mtime_ns, version: version_of(meta, mtime_ns) },
    }
}

fn dir_attr() -> Attr {
    Attr { kind: Kind::Dir, size: 0, mtime_ns: 0, version: String::new() }
}

/// Refuse paths that are not plain relative keys (the namespace normalises,
/// this is a second line).
fn check_rel(rel: &str) -> UfsResult<&str> {
    let rel = rel.trim_matches('/');
    if rel.split('/').any(|c| c == ".." || c == ".") {
        return Err(UfsError::NotFound);
    }
    Ok(rel)
}

impl OpendalUfs {
    /// A prefix exists as a directory when something is listed under it.
    async fn dir_exists(&self, rel: &str) -> UfsResult<bool> {
        if !self.can_list {
            return Ok(false);
        }
        use futures::TryStreamExt;
        let mut lister = self.op.lister_with(&format!("{rel}/")).limit(2).await.map_err(|e| self.map_err(e))?;
        Ok(lister.try_next().await.map_err(|e| self.map_err(e))?.is_some())
    }
}

impl OpendalUfs {
    /// Check a GET's body against the object's size: a server that ignores
    /// `Range` (plain HTTP servers do) sends the whole object, which is cut
    /// to the range asked; a short body is a transient failure.
    fn fit(&self, rel: &str, attr: &Attr, off: u64, len: u64, mut data: Vec<u8>) -> UfsResult<Vec<u8>> {
        let want = len.min(attr.size.saturating_sub(off));
        let got = data.len() as u64;
        if got == want {
            return Ok(data);
        }
        if got == attr.size && got > want {
            data.truncate((off + want) as usize);
            data.drain(..off as usize);
            return Ok(data);
        }
        Err(UfsError::Io {
            message: format!("{}://{rel}: asked {want} bytes at {off} of {}, got {got}", self.scheme, attr.size),
            retryable: got < want,
        })
    }
}

impl OpendalUfs {
    /// One ranged GET. OpenDAL's reader insists on exactly the bytes of the
    /// range asked, but a block read may run past the end of the object, so
    /// the stream is opened for `[off, off+len)`, the response's metadata
    /// (ETag, Last-Modified, full length from Content-Range) tells how many
    /// bytes will come, and exactly those are taken.
    async fn get(&self, rel: &str, off: u64, len: u64) -> opendal::Result<(Attr, Vec<u8>)> {
        use futures::TryStreamExt;
        let reader = self.op.reader(rel).await?;
        let mut stream = reader.into_stream(off..off.saturating_add(len)).await?;
        let meta = stream.metadata().await?;
        let attr = attr_of(&meta);
        let want = len.min(attr.size.saturating_sub(off));
        // A plain HTTP server may ignore Range and send the whole object:
        // read such a body to its end and cut the range out of it.
        let to_end = self.scheme.starts_with("http");
        let mut data = Vec::with_capacity(want as usize);
        loop {
            match stream.try_next().await {
                Ok(Some(buf)) => {
                    for chunk in buf {
                        data.extend_from_slice(&chunk);
                    }
                    if !to_end && data.len() as u64 >= want {
                        break;
                    }
                }
                Ok(None) => break,
                // The completeness check of a range that ran past the end
                // of the object (the body itself was complete: the HTTP
                // layer checks Content-Length with its own message).
                Err(e)
                    if matches!(e.message(), "reader got too little data" | "reader got too much data")
                        && (data.len() as u64 == want || data.len() as u64 == attr.size) =>
                {
                    break
                }
                Err(e) => return Err(e),
            }
        }
        match self.fit(rel, &attr, off, len, data) {
            Ok(data) => Ok((attr, data)),
            Err(UfsError::Io { message, retryable }) => {
                Err(opendal::Error::new(ErrorKind::Unexpected, message).with_temporary(retryable))
            }
            Err(_) => unreachable!("fit only fails with Io"),
        }
    }
}

impl Ufs for OpendalUfs {
    /// `Operator::writer`: 8 MiB parts, uploaded as a multipart upload by
    /// stores that have one once the object is larger than a part.
    fn write_file<'a>(&'a self, rel: &'a str, src: &'a std::path::Path, len: u64) -> BoxFut<'a, UfsResult<()>> {
        Box::pin(async move {
            let rel = check_rel(rel)?;
            const PART: usize = 8 << 20;
            let io = |e: std::io::Error| UfsError::Io { message: format!("reading the local copy: {e}"), retryable: false };
            use tokio::io::AsyncReadExt;
            let mut f = tokio::fs::File::open(src).await.map_err(io)?.take(len);
            let mut w = self.op.writer_with(rel).chunk(PART).await.map_err(|e| self.map_err(e))?;
            let mut sent = 0u64;
            loop {
                let mut buf = Vec::with_capacity(PART);
                let n = (&mut f).take(PART as u64).read_to_end(&mut buf).await.map_err(io)?;
                if n == 0 {
                    if sent != len {
                        let _ = w.abort().await;
                        return Err(io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the local copy is short")));
                    }
                    break;
                }
                sent += n as u64;
                if let Err(e) = w.write(buf).await {
                    let _ = w.abort().await;
                    return Err(self.map_err(e));
                }
            }
            w.close().await.map_err(|e| self.map_err(e))?;
            Ok(())
        })
    }

    /// A copy then a delete: object stores have no rename.
    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFut<'a, UfsResult<()>> {
        Box::pin(async move {
            let (from, to) = (check_rel(from)?, check_rel(to)?);
            self.op.copy(from, to).await.map_err(|e| self.map_err(e))?;
            self.op.delete(from).await.map_err(|e| self.map_err(e))
        })
    }

    /// A directory marker (`rel/`), as object stores keep empty directories.
    fn create_dir<'a>(&'a self, rel: &'a str) -> BoxFut<'a, UfsResult<()>> {
        Box::pin(async move {
            let rel = check_rel(rel)?;
            self.op.create_dir(&format!("{rel}/")).await.map_err(|e| self.map_err(e))
        })
    }

    fn delete_dir<'a>(&'a self, rel: &'a str) -> BoxFut<'a, UfsResult<()>> {
        Box::pin(async move {
            let rel = check_rel(rel)?;
            self.op.delete(&format!("{rel}/")).await.map_err(|e| self.map_err(e))
        })
    }

    fn delete<'a>(&'a self, rel: &'a str) -> BoxFut<'a, UfsResult<()>> {
        Box::pin(async move {
            let rel = check_rel(rel)?;
            self.op.delete(rel).await.map_err(|e| self.map_err(e))
        })
    }

    fn stat<'a>(&'a self, rel: &'a str) -> BoxFut<'a, UfsResult<Attr>> {
        Box::pin(async move {
            let rel = check_rel(rel)?;
            if rel.is_empty() {
                return Ok(dir_attr());
            }
            // Objects first (the common case: one HEAD); a prefix with
            // objects under it is a directory even without a marker object.
            match self.op.stat(rel).await {
                Ok(meta) if !meta.is_dir() => Ok(attr_of(&meta)),
                Ok(_) => Ok(dir_attr()),
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    if self.dir_exists(rel).await? {
                        Ok(dir_attr())
                    } else {
                        Err(UfsError::NotFound)
                    }
                }
                // Some servers answer a HEAD of a key that is also a
                // prefix with an error (s3s-fs: HTTP 500): a prefix with
                // objects under it is a directory whatever the HEAD said.
                Err(e) => match self.dir_exists(rel).await {
                    Ok(true) => Ok(dir_attr()),
                    _ => Err(self.map_err(e)),
                },
            }
        })
    }

    fn read<'a>(&'a self, rel: &'a str, off: u64, len: u64) -> BoxFut<'a, UfsResult<Vec<u8>>> {
        Box::pin(async move { Ok(self.read_versioned(rel, off, len).await?.1) })
    }

    /// One ranged GET: OpenDAL's reader keeps the metadata of the response
    /// (ETag, Last-Modified, total length from Content-Range), so the
    /// attributes and the bytes come from the same object version.
    fn read_versioned<'a>(&'a self, rel: &'a str, off: u64, len: u64) -> BoxFut<'a, UfsResult<(Attr, Vec<u8>)>> {
        Box::pin(async move {
            let rel = check_rel(rel)?;
            if rel.is_empty() {
                return Err(UfsError::IsDir);
            }
            if len > 0 {
                match self.get(rel, off, len).await {
                    Ok(v) => return Ok(v),
                    // Past the end (e.g. an empty object): answer from stat.
                    Err(e) if e.kind() == ErrorKind::RangeNotSatisfied => {}
                    Err(e) if e.kind() == ErrorKind::NotFound && self.dir_exists(rel).await? => {
                        return Err(UfsError::IsDir);
                    }
                    // A GET of a prefix some servers fail (see `stat`).
                    Err(e) if e.kind() == ErrorKind::Unexpected && self.dir_exists(rel).await.unwrap_or(false) => {
                        return Err(UfsError::IsDir);
                    }
                    Err(e) if e.kind() == ErrorKind::Unsupported => {
                        // No metadata from this service's GET: stat, then
                        // read (two calls; documented in docs/STORAGE.md).
                        let attr = self.stat(rel).await?;
                        let want = len.min(attr.size.saturating_sub(off));
                        if want == 0 {
                            return Ok((attr, Vec::new()));
                        }
                        let buf = self.op.read_with(rel).range(off..off + want).await.map_err(|e| self.map_err(e))?;
                        return Ok((attr, buf.to_vec()));
                    }
                    Err(e) => return Err(self.map_err(e)),
                }
            }
            let attr = self.stat(rel).await?;
            if attr.kind == Kind::Dir {
                return Err(UfsError::IsDir);
            }
            Ok((attr, Vec::new()))
        })
    }

    /// One page: at most `max` entries after `token` (the last name of the
    /// previous page), from one LIST request with `start-after`.
    fn list<'a>(&'a self, rel: &'a str, token: Option<String>, max: usize) -> BoxFut<'a, UfsResult<ListPage>> {
        Box::pin(async move {
            use futures::TryStreamExt;
            let rel = check_rel(rel)?;
            if !self.can_list {
                return Err(UfsError::Io {
                    message: format!("{}:// cannot list directories; read files by path", self.scheme),
                    retryable: false,
                });
            }
            let prefix = if rel.is_empty() { String::new() } else { format!("{rel}/") };
            let max = max.max(1);
            let mut lister = self.op.lister_with(&prefix).limit(max.min(1000));
            if let Some(t) = &token {
                lister = lister.start_after(&format!("{prefix}{t}"));
            }
            let mut lister = lister.await.map_err(|e| self.map_err(e))?;
            let mut entries: Vec<(String, Attr)> = Vec::new();
            while entries.len() < max {
                let Some(entry) = lister.try_next().await.map_err(|e| self.map_err(e))? else { break };
                let path = entry.path();
                let name = path.strip_prefix(prefix.as_str()).unwrap_or(path).trim_end_matches('/');
                // The directory itself, and a common prefix repeated after
                // a start-after that fell inside it.
                if name.is_empty() || name.contains('/') || token.as_deref().is_some_and(|t| name <= t) {
                    continue;
                }
                let attr = if entry.metadata().is_dir() { dir_attr() } else { attr_of(entry.metadata()) };
                entries.push((name.to_string(), attr));
            }
            let next = if entries.len() >= max { entries.last().map(|(n, _)| n.clone()) } else { None };
            if entries.is_empty() && token.is_none() && !rel.is_empty() {
                // An empty listing: a missing prefix, a file, or an empty dir marker.
                return match self.op.stat(rel).await {
                    Ok(m) if !m.is_dir() => Err(UfsError::NotDir),
                    Ok(_) => Ok(ListPage::default()),
                    Err(e) if e.kind() == ErrorKind::NotFound => Err(UfsError::NotFound),
                    Err(e) => Err(self.map_err(e)),
                };
            }
            Ok(ListPage { entries, next })
        })
    }
}

/// Parse `key=value` pairs given as one string each (CLI form), in order.
/// A malformed pair is never echoed: it may hold a secret.
pub fn parse_options<S: AsRef<str>>(pairs: &[S]) -> Result<Vec<(String, String)>, String> {
    pairs
        .iter()
        .map(|p| {
            let (k, v) = p.as_ref().split_once('=').ok_or("bad option: expected KEY=VALUE, e.g. region=us-east-1")?;
            Ok((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_options_are_checked_without_leaking_values() {
        assert!(split_uri("s3://b/p?x=1").is_err());
        let e = split_uri("s3://AKIA:hunter2@b/p").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(split_uri("s3://b/x/y/").unwrap(), ("s3".into(), "b".into(), "x/y".into()));
        let opts = vec![("secret_acess_key".to_string(), "hunter2".to_string())];
        let e = open("s3://b/p", &opts).err().expect("misspelt option refused");
        assert!(e.contains("unknown option") && e.contains("secret_access_key") && !e.contains("hunter2"), "{e}");
        let e = open("ftp://x/y", &[]).err().unwrap();
        assert!(e.contains("not supported"), "{e}");
        assert!(open("s3:///p", &[]).is_err());
        let r = redacted(&[("secret_access_key".into(), "x".into()), ("region".into(), "eu".into())]);
        assert_eq!(r[0].1, "***");
        assert_eq!(r[1].1, "eu");
    }

    #[test]
    fn every_scheme_builds() {
        let s3 = [("endpoint", "http://127.0.0.1:1"), ("access_key_id", "a"), ("secret_access_key", "b")];
        let s3: Vec<_> = s3.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(open("s3://bucket/prefix", &s3).is_ok());
        let tmp = std::env::temp_dir();
        assert!(open(&format!("file://{}", tmp.display()), &[]).is_ok());
        assert!(open("http://127.0.0.1:1/data", &[]).is_ok());
        assert!(open("webhdfs://127.0.0.1:1/data", &[]).is_ok());
        let r = open("hdfs://127.0.0.1:1/data", &[]);
        assert!(r.is_ok(), "{:?}", r.err());
        assert!(open("hdfs:///data", &[]).is_err());
        let gcs = [("endpoint".to_string(), "http://127.0.0.1:1".to_string()), ("allow_anonymous".into(), "true".into())];
        assert!(open("gs://bucket/p", &gcs).is_ok());
        let az = [
            ("endpoint".to_string(), "http://127.0.0.1:1/acct".to_string()),
            ("account_name".into(), "acct".into()),
            ("account_key".into(), "a2V5".into()),
        ];
        let r = open("az://container/p", &az);
        assert!(r.is_ok(), "{:?}", r.err());
        let ep = [("endpoint".to_string(), "http://127.0.0.1:1".to_string())];
        assert!(open("oss://bucket/p", &ep).is_ok());
        assert!(open("cos://bucket/p", &ep).is_ok());
    }

    /// A name node that refuses connections is a transient error at once
    /// (hdfs-native's own failover loop would retry it for minutes), so
    /// `Guarded` retries it a bounded number of times and then says so.
    #[tokio::test]
    async fn hdfs_refused_connection_is_one_retryable_error() {
        let ufs = open("hdfs://127.0.0.1:1/data", &[]).unwrap();
        match ufs.stat("x").await {
            Err(UfsError::Io { message, retryable }) => {
                assert!(retryable && message.contains("Connection refused"), "{message}");
            }
            other => panic!("expected a retryable I/O error, got {other:?}"),
        }
        // Hadoop client settings pass through; other unknown keys do not.
        let opts = [("dfs.client.failover.max.attempts".to_string(), "2".to_string())];
        assert!(open("hdfs://127.0.0.1:1/data", &opts).is_ok());
        let e = open("hdfs://127.0.0.1:1/data", &[("nonsense".to_string(), "1".to_string())]).err().unwrap();
        assert!(e.contains("dfs.*"), "{e}");
    }
}
