//! The TOML config file `stoker tune` writes and `stoker serve --config`
//! reads. `[serve]` holds engine settings (the same names as the `serve`
//! flags); `[client]` and `[mount]` hold settings for readers and for
//! `stoker mount`, which the engine ignores. Unknown keys are errors, so a
//! typo never passes silently.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use stoker_engine::config::EngineConfig;
use stoker_engine::{parse_duration, parse_size};

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

fn duration(key: &str, s: &str) -> Result<Option<std::time::Duration>> {
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

    /// An engine config with this file's `[serve]` values over the defaults,
    /// mounts aside (see `mounts`). `cache_dir` is the command line's, which
    /// wins over the file's.
    pub fn engine_config(&self, cache_dir: Option<PathBuf>) -> Result<EngineConfig> {
        let s = &self.serve;
        let Some(dir) = cache_dir.or_else(|| s.cache_dir.clone()) else {
            bail!("no cache dir: pass --cache-dir DIR or set cache_dir in [serve]");
        };
        let mut cfg = EngineConfig::new(dir);
        if let Some(v) = &s.capacity {
            cfg.capacity_bytes = v.bytes("capacity")?;
        }
        if let Some(v) = s.shards {
            cfg.shards = v;
        }
        if let Some(v) = s.io_depth {
            cfg.io_depth = v;
        }
        if let Some(v) = &s.block_size {
            cfg.block_bytes = v.bytes("block_size")?;
        }
        if let Some(v) = s.ufs_threads {
            cfg.ufs_threads = v;
        }
        if let Some(v) = s.readahead_blocks {
            cfg.readahead_blocks = v;
        }
        if let Some(v) = &s.segment_size {
            cfg.segment_bytes = v.bytes("segment_size")?;
        }
        if let Some(v) = &s.ufs_latency {
            cfg.ufs_latency = duration("ufs_latency", v)?.unwrap_or_default();
        }
        if let Some(v) = &s.ufs_bandwidth {
            cfg.ufs_bandwidth = Some(v.bytes("ufs_bandwidth")?);
        }
        if let Some(v) = &s.ufs_timeout {
            cfg.ufs_timeout = duration("ufs_timeout", v)?.context("[serve] ufs_timeout: `never` is not allowed")?;
        }
        if let Some(v) = &s.metadata_sync {
            cfg.metadata_sync = duration("metadata_sync", v)?;
        }
        if let Some(v) = &s.socket {
            cfg.socket = v.clone();
        }
        if let Some(v) = s.control_connections {
            cfg.control_connections_max = v;
        }
        if let Some(v) = &s.control_timeout {
            cfg.control_timeout = duration("control_timeout", v)?.context("[serve] control_timeout: `never` is not allowed")?;
        }
        if let Some(v) = &s.eviction {
            cfg.eviction = v.parse().map_err(anyhow::Error::msg).context("[serve] eviction")?;
        }
        if let Some(v) = &s.memory_cache {
            cfg.memory_cache_bytes = v.bytes("memory_cache")?;
        }
        if let Some(v) = s.direct_entries {
            cfg.direct_entries = v;
        }
        for (name, size) in s.quotas.iter().flatten() {
            cfg.quotas.push((name.clone(), size.bytes_in("serve.quotas", name)?));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_serve_flag_has_a_key() {
        let f = ConfigFile::parse(
            "[serve]\ncontrol_connections = 9\ncontrol_timeout = \"3s\"\neviction = \"lru\"\nmemory_cache = \"1M\"\n\
             direct_entries = 0\nmetrics = \"9464\"\nsocket_group = \"0\"\n[serve.quotas]\nscratch = \"2G\"\n",
        )
        .unwrap();
        let c = f.engine_config(Some("/tmp/c".into())).unwrap();
        assert_eq!(c.control_connections_max, 9);
        assert_eq!(c.control_timeout, std::time::Duration::from_secs(3));
        assert_eq!(c.eviction, stoker_engine::store::Eviction::Lru);
        assert_eq!((c.memory_cache_bytes, c.direct_entries), (1 << 20, 0));
        assert_eq!(c.quotas, vec![("scratch".to_string(), 2 << 30)]);
        assert_eq!((f.serve.metrics.as_deref(), f.serve.socket_group.as_deref()), (Some("9464"), Some("0")));
        let bad = ConfigFile::parse("[serve]\neviction = \"mru\"\n").unwrap().engine_config(Some("/tmp/c".into()));
        assert!(format!("{:#}", bad.unwrap_err()).contains("eviction"));
    }

    #[test]
    fn serve_section_sets_the_engine_and_unknown_keys_fail() {
        let f = ConfigFile::parse(
            "[serve]\nshards = 3\nblock_size = \"1M\"\nsegment_size = 67108864\nmounts = [\"d=file:///tmp\"]\n\
             metadata_sync = \"never\"\n[client]\nreaders = 8\n[mount]\nthreads = 4\nreadahead = \"2M\"\n",
        )
        .unwrap();
        let c = f.engine_config(Some("/tmp/c".into())).unwrap();
        assert_eq!((c.shards, c.block_bytes, c.segment_bytes), (3, 1 << 20, 64 << 20));
        assert_eq!(f.mounts().unwrap(), vec![("d".to_string(), "file:///tmp".to_string())]);
        assert_eq!(c.metadata_sync, None);
        assert_eq!(f.client.readers, Some(8));
        assert_eq!(f.mount.readahead, Some(Size::Text("2M".into())));
        assert!(ConfigFile::parse("[serve]\nshard = 3\n").is_err());
        assert!(ConfigFile::parse("[serve]\nblock_size = \"4Q\"\n").unwrap().engine_config(Some("/x".into())).is_err());
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
        // No cache dir anywhere is an error; the file's is used when the flag is absent.
        assert!(ConfigFile::default().engine_config(None).is_err());
        let f = ConfigFile::parse("[serve]\ncache_dir = \"/var/cache/stoker\"\n").unwrap();
        assert_eq!(f.engine_config(None).unwrap().cache_dir, PathBuf::from("/var/cache/stoker"));
    }
}
