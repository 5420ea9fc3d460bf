//! The TOML config file `stoker tune` writes and `stoker serve --config`
//! reads. `[serve]` holds engine settings (the same names as the `serve`
//! flags); `[client]` and `[mount]` hold settings for readers and for
//! `stoker mount`, which the engine ignores. Unknown keys are errors, so a
//! typo never passes silently.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use stoker_proto::units::{parse_duration, parse_size};

/// A size: an integer number of bytes or a string like "4M".
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    pub fn bytes(&self, key: &str) -> Result<u64> {
        self.bytes_in("serve", key)
    }

    /// The byte count, errors naming `[section] key`.
    pub fn bytes_in(&self, section: &str, key: &str) -> Result<u64> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(s) => parse_size(s).map_err(anyhow::Error::msg).with_context(|| format!("[{section}] {key}")),
        }
    }
}

/// A `[serve]` duration (`20ms`, `5s`, `never` is None), errors naming the key.
pub fn duration(key: &str, s: &str) -> Result<Option<Duration>> {
    parse_duration(s).map_err(anyhow::Error::msg).with_context(|| format!("[serve] {key}"))
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    pub cache_dir: Option<PathBuf>,
    pub capacity: Option<Size>,
    pub shards: Option<usize>,
    /// io_uring submission queue depth per shard.
    pub io_depth: Option<usize>,
    /// `NAME=URI` strings, like `--mount`.
    pub mounts: Option<Vec<String>>,
    /// Per-mount options, like `--mount-opt NAME:key=value`: a table per
    /// mount name (`[serve.mount_options.NAME]`), values strings, numbers
    /// or booleans.
    pub mount_options: Option<std::collections::BTreeMap<String, std::collections::BTreeMap<String, toml::Value>>>,
    pub block_size: Option<Size>,
    /// Blocks fetched ahead of a sequential reader of a large file (0 = off).
    pub readahead_blocks: Option<u64>,
    pub segment_size: Option<Size>,
    /// Bytes of fetched blocks waiting to be written, per shard.
    pub write_queue: Option<Size>,
    pub ufs_latency: Option<String>,
    pub ufs_bandwidth: Option<Size>,
    pub ufs_timeout: Option<String>,
    pub ufs_threads: Option<usize>,
    pub metadata_sync: Option<String>,
    pub socket: Option<String>,
    /// `--metrics ADDR` (a bare port is on 127.0.0.1); parsed by the cli.
    pub metrics: Option<String>,
    /// `--socket-group GROUP` (a name or a gid); parsed by the cli.
    pub socket_group: Option<String>,
    pub control_connections: Option<usize>,
    pub control_timeout: Option<String>,
    /// `fifo-reinsert` or `lru`.
    pub eviction: Option<String>,
    pub memory_cache: Option<Size>,
    pub direct_entries: Option<u64>,
    /// Like `--quota NAME=SIZE`: `[serve.quotas]` with `NAME = SIZE` keys.
    pub quotas: Option<std::collections::BTreeMap<String, Size>>,
    /// `--cluster-tls-cert`, `--cluster-tls-key`, `--cluster-tls-ca`: PEM
    /// files for mutual TLS between cluster nodes (all three or none).
    pub cluster_tls_cert: Option<PathBuf>,
    pub cluster_tls_key: Option<PathBuf>,
    pub cluster_tls_ca: Option<PathBuf>,
    /// `--cluster etcd://HOST:PORT[,...]` and its companions (docs/CLUSTER.md).
    pub cluster: Option<String>,
    pub cluster_name: Option<String>,
    pub node_id: Option<String>,
    /// `--peer-listen ADDR`; parsed by the cli.
    pub peer_listen: Option<String>,
    pub peer_advertise: Option<String>,
    pub cluster_token_file: Option<PathBuf>,
    /// `--s3 ADDR` (a bare port is on 127.0.0.1); parsed by the cli.
    pub s3: Option<String>,
    /// `--s3-credentials FILE`: one ACCESS_KEY:SECRET_KEY a line.
    pub s3_credentials: Option<PathBuf>,
    /// `--s3-domain DOMAIN`.
    pub s3_domain: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSection {
    /// Concurrent reads a trainer should keep in flight (reader threads or
    /// DataLoader workers × their own parallelism).
    pub readers: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSection {
    /// `stoker mount --threads`: threads serving FUSE requests.
    pub threads: Option<usize>,
    /// `stoker mount --readahead`: kernel readahead per open file.
    pub readahead: Option<Size>,
    /// `stoker mount --max-read`: largest single read the kernel sends.
    pub max_read: Option<Size>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub serve: ServeSection,
    #[serde(default)]
    pub client: ClientSection,
    #[serde(default)]
    pub mount: MountSection,
}

impl ConfigFile {
    pub fn parse(text: &str) -> Result<ConfigFile> {
        Ok(toml::from_str(text)?)
    }

    pub fn load(path: &Path) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        ConfigFile::parse(&text).with_context(|| format!("config {}", path.display()))
    }

    /// `[serve] mounts` as (name, uri); the caller builds its `MountSpec`s
    /// (the same way as for `--mount`).
    pub fn mounts(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for m in self.serve.mounts.iter().flatten() {
            let Some((name, uri)) = m.split_once('=') else {
                bail!("[serve] mounts: bad entry {m:?}: expected \"NAME=URI\"");
            };
            out.push((name.to_string(), uri.to_string()));
        }
        Ok(out)
    }

    /// `[serve.mount_options.NAME]` tables as (name, key, value), values as
    /// text (`"4M"`, `8`, `true`).
    pub fn mount_options(&self) -> Result<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        for (name, table) in self.serve.mount_options.iter().flatten() {
            for (key, v) in table {
                let text = match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    _ => bail!("[serve.mount_options.{name}] {key}: expected a string, number or boolean"),
                };
                out.push((name.clone(), key.clone(), text));
            }
        }
        Ok(out)
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_parse_and_unknown_keys_fail() {
        let f = ConfigFile::parse(
            "[serve]\nshards = 3\nblock_size = \"1M\"\nsegment_size = 67108864\nmounts = [\"d=file:///tmp\"]\n\
             metadata_sync = \"never\"\nmetrics = \"9464\"\nsocket_group = \"0\"\n[client]\nreaders = 8\n[mount]\nthreads = 4\nreadahead = \"2M\"\n",
        )
        .unwrap();
        assert_eq!(f.serve.shards, Some(3));
        assert_eq!(f.serve.block_size.as_ref().unwrap().bytes("block_size").unwrap(), 1 << 20);
        assert_eq!(f.serve.segment_size, Some(Size::Bytes(64 << 20)));
        assert_eq!(duration("metadata_sync", f.serve.metadata_sync.as_deref().unwrap()).unwrap(), None);
        assert_eq!(f.mounts().unwrap(), vec![("d".to_string(), "file:///tmp".to_string())]);
        assert_eq!(f.client.readers, Some(8));
        assert_eq!(f.mount.readahead, Some(Size::Text("2M".into())));
        assert_eq!((f.serve.metrics.as_deref(), f.serve.socket_group.as_deref()), (Some("9464"), Some("0")));
        assert!(ConfigFile::parse("[serve]\nshard = 3\n").is_err());
        let bad = Size::Text("4Q".into()).bytes("block_size").unwrap_err();
        assert!(format!("{bad:#}").contains("[serve] block_size"), "{bad:#}");
        let f = ConfigFile::parse(
            "[serve]\nmounts = [\"s=s3://b\"]\n[serve.mount_options.s]\nendpoint = \"http://127.0.0.1:9000\"\nreadahead = 8\nread_only = true\n",
        )
        .unwrap();
        let o = f.mount_options().unwrap();
        assert_eq!(o.len(), 3);
        assert!(o.contains(&("s".into(), "readahead".into(), "8".into())));
        assert!(o.contains(&("s".into(), "read_only".into(), "true".into())));
        let f = ConfigFile::parse("[serve.mount_options.s]\nx = [1]\n").unwrap();
        assert!(f.mount_options().is_err());
    }
}
