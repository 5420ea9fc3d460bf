//! `[serve]` of a config file (stoker-tuning's `ConfigFile`, which knows
//! nothing of the engine) turned into an `EngineConfig`.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use stoker_cluster::tls::TlsFiles;
use stoker_engine::config::EngineConfig;
use stoker_tuning::config::{duration, ConfigFile};

/// An engine config with `file`'s `[serve]` values over the defaults,
/// mounts aside (see `ConfigFile::mounts`). `cache_dir` is the command line's, which
/// wins over the file's.
pub fn engine_config(file: &ConfigFile, cache_dir: Option<PathBuf>) -> Result<EngineConfig> {
    let s = &file.serve;
    let Some(dir) = cache_dir.or_else(|| s.cache_dir.clone()) else {
        bail!("no cache dir: pass --cache-dir DIR or set cache_dir in [serve]");
    };
    // Absolute: glommio opens a relative directory against no directory (EBADF).
    let dir = std::path::absolute(&dir).with_context(|| format!("cache dir {}", dir.display()))?;
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
    if let Some(v) = &s.write_queue {
        cfg.write_queue_bytes_max = v.bytes("write_queue")?;
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

/// The gateway's settings from `--s3`, `--s3-credentials` and
/// `--s3-domain` (each over its `[serve]` key `s3`, `s3_credentials`,
/// `s3_domain`); None without an address. The credentials file is read and
/// the address checked here, before the engine starts.
pub fn gateway_config(
    file: &ConfigFile,
    addr: &Option<std::net::SocketAddr>,
    credentials: &Option<PathBuf>,
    domain: &Option<String>,
    engine: &EngineConfig,
) -> Result<Option<stoker_gateway::GatewayConfig>> {
    let s = &file.serve;
    let addr = match (addr, &s.s3) {
        (Some(a), _) => *a,
        (None, Some(text)) => crate::commands::s3_addr_arg(text).map_err(anyhow::Error::msg).context("[serve] s3")?,
        (None, None) => {
            if credentials.is_some() || s.s3_credentials.is_some() || domain.is_some() {
                bail!("--s3-credentials and --s3-domain need --s3 ADDR");
            }
            return Ok(None);
        }
    };
    let staging = engine.cache_dir.join("s3-uploads");
    let mut g = stoker_gateway::GatewayConfig::new(addr, engine.socket.clone(), staging);
    if let Some(path) = credentials.as_ref().or(s.s3_credentials.as_ref()) {
        let text = std::fs::read_to_string(path).with_context(|| format!("--s3-credentials {}", path.display()))?;
        g.credentials = stoker_gateway::parse_credentials(&text)
            .map_err(|e| anyhow::anyhow!("--s3-credentials {}: {e}", path.display()))?;
    }
    if let Some(d) = domain.as_ref().or(s.s3_domain.as_ref()) {
        g.domain = d.clone();
    }
    g.check().map_err(anyhow::Error::msg)?;
    Ok(Some(g))
}

/// The `[serve]` cluster keys (`cluster`, `cluster_name`, `node_id`,
/// `peer_listen`, `peer_advertise`, `cluster_token_file`) where the command
/// line did not give the flag.
pub fn cluster_keys(file: &ConfigFile, a: &mut crate::commands::ServeArgs) -> Result<()> {
    let s = &file.serve;
    a.cluster = a.cluster.take().or_else(|| s.cluster.clone());
    a.cluster_name = a.cluster_name.take().or_else(|| s.cluster_name.clone());
    a.node_id = a.node_id.take().or_else(|| s.node_id.clone());
    a.peer_advertise = a.peer_advertise.take().or_else(|| s.peer_advertise.clone());
    a.cluster_token_file = a.cluster_token_file.take().or_else(|| s.cluster_token_file.clone());
    if a.peer_listen.is_none() {
        if let Some(l) = &s.peer_listen {
            a.peer_listen = Some(l.parse().map_err(|_| anyhow::anyhow!("[serve] peer_listen {l:?}: expected IP:PORT"))?);
        }
    }
    Ok(())
}

/// `--cluster-tls-cert/-key/-ca` (each over its `[serve] cluster_tls_*`
/// key): all three or none.
pub fn cluster_tls(file: &ConfigFile, cert: Option<PathBuf>, key: Option<PathBuf>, ca: Option<PathBuf>) -> Result<Option<TlsFiles>> {
    let s = &file.serve;
    let cert = cert.or_else(|| s.cluster_tls_cert.clone());
    let key = key.or_else(|| s.cluster_tls_key.clone());
    let ca = ca.or_else(|| s.cluster_tls_ca.clone());
    match (cert, key, ca) {
        (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert, key, ca })),
        (None, None, None) => Ok(None),
        (cert, key, ca) => {
            let missing: Vec<&str> = [(cert.is_none(), "--cluster-tls-cert"), (key.is_none(), "--cluster-tls-key"), (ca.is_none(), "--cluster-tls-ca")]
                .into_iter()
                .filter_map(|(m, flag)| m.then_some(flag))
                .collect();
            bail!("--cluster-tls-cert, --cluster-tls-key and --cluster-tls-ca go together: {} missing", missing.join(" and "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_serve_flag_has_a_key() {
        let f = ConfigFile::parse(
            "[serve]\ncontrol_connections = 9\ncontrol_timeout = \"3s\"\neviction = \"lru\"\nmemory_cache = \"1M\"\n\
             direct_entries = 0\nmetrics = \"9464\"\nsocket_group = \"0\"\ncluster_tls_cert = \"n.pem\"\ncluster_tls_key = \"n.key\"\n\
             cluster_tls_ca = \"ca.pem\"\nwrite_queue = \"8M\"\n[serve.quotas]\nscratch = \"2G\"\n",
        )
        .unwrap();
        let c = engine_config(&f, Some("/tmp/c".into())).unwrap();
        assert_eq!(c.control_connections_max, 9);
        assert_eq!(c.control_timeout, std::time::Duration::from_secs(3));
        assert_eq!(c.eviction, stoker_engine::store::Eviction::Lru);
        assert_eq!((c.memory_cache_bytes, c.direct_entries), (1 << 20, 0));
        assert_eq!(c.quotas, vec![("scratch".to_string(), 2 << 30)]);
        assert_eq!(c.write_queue_bytes_max, 8 << 20);
        let tls = cluster_tls(&f, None, None, None).unwrap().unwrap();
        assert_eq!((tls.cert, tls.key, tls.ca), ("n.pem".into(), "n.key".into(), "ca.pem".into()));
        let bad = engine_config(&ConfigFile::parse("[serve]\neviction = \"mru\"\n").unwrap(), Some("/tmp/c".into()));
        assert!(format!("{:#}", bad.unwrap_err()).contains("eviction"));
    }

    #[test]
    fn cluster_keys_fill_what_flags_leave() {
        #[derive(clap::Parser)]
        struct Cmd {
            #[command(flatten)]
            a: crate::commands::ServeArgs,
        }
        let f = ConfigFile::parse(
            "[serve]\ncluster = \"etcd://127.0.0.1:2379\"\ncluster_name = \"lab\"\nnode_id = \"gpu-1\"\n\
             peer_listen = \"127.0.0.1:7070\"\npeer_advertise = \"gpu-1:7070\"\ncluster_token_file = \"/etc/t\"\n",
        )
        .unwrap();
        let mut a = <Cmd as clap::Parser>::parse_from(["serve", "--node-id", "from-flag"]).a;
        cluster_keys(&f, &mut a).unwrap();
        assert_eq!(a.cluster.as_deref(), Some("etcd://127.0.0.1:2379"));
        assert_eq!((a.cluster_name.as_deref(), a.node_id.as_deref()), (Some("lab"), Some("from-flag")));
        assert_eq!(a.peer_listen, Some("127.0.0.1:7070".parse().unwrap()));
        assert_eq!(a.peer_advertise.as_deref(), Some("gpu-1:7070"));
        assert_eq!(a.cluster_token_file, Some("/etc/t".into()));
        let bad = ConfigFile::parse("[serve]\npeer_listen = \"nowhere\"\n").unwrap();
        let mut a = <Cmd as clap::Parser>::parse_from(["serve"]).a;
        assert!(cluster_keys(&bad, &mut a).unwrap_err().to_string().contains("peer_listen"));
    }

    #[test]
    fn gateway_keys_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(&keys, "ak:sk\n").unwrap();
        let engine = engine_config(&ConfigFile::default(), Some(dir.path().into())).unwrap();
        let text = format!("[serve]\ns3 = \"9000\"\ns3_credentials = {:?}\ns3_domain = \"s3.lab\"\n", keys.display().to_string());
        let f = ConfigFile::parse(&text).unwrap();
        let g = gateway_config(&f, &None, &None, &None, &engine).unwrap().unwrap();
        assert_eq!(g.listen.to_string(), "127.0.0.1:9000");
        assert_eq!((g.credentials.len(), g.domain.as_str()), (1, "s3.lab"));
        assert_eq!(g.staging_dir, dir.path().join("s3-uploads"));
        // A flag wins over its key; no address, no gateway.
        let g = gateway_config(&f, &Some("127.0.0.1:9100".parse().unwrap()), &None, &Some("x.lab".into()), &engine).unwrap().unwrap();
        assert_eq!((g.listen.port(), g.domain.as_str()), (9100, "x.lab"));
        assert!(gateway_config(&ConfigFile::default(), &None, &None, &None, &engine).unwrap().is_none());
        let err = gateway_config(&ConfigFile::default(), &Some("0.0.0.0:9000".parse().unwrap()), &None, &None, &engine).unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
    }

    #[test]
    fn cluster_tls_files_come_together() {
        let none = ConfigFile::default();
        assert_eq!(cluster_tls(&none, None, None, None).unwrap(), None);
        let err = cluster_tls(&none, Some("c".into()), None, None).unwrap_err().to_string();
        assert!(err.ends_with("--cluster-tls-key and --cluster-tls-ca missing"), "{err}");
        // A flag overrides its key; the file may supply the rest.
        let f = ConfigFile::parse("[serve]\ncluster_tls_key = \"k\"\ncluster_tls_ca = \"ca\"\n").unwrap();
        let t = cluster_tls(&f, Some("c".into()), None, Some("other-ca".into())).unwrap().unwrap();
        assert_eq!((t.cert, t.key, t.ca), ("c".into(), "k".into(), "other-ca".into()));
    }

    #[test]
    fn serve_section_sets_the_engine() {
        let f = ConfigFile::parse(
            "[serve]\nshards = 3\nblock_size = \"1M\"\nsegment_size = 67108864\nmetadata_sync = \"never\"\n",
        )
        .unwrap();
        let c = engine_config(&f, Some("/tmp/c".into())).unwrap();
        assert_eq!((c.shards, c.block_bytes, c.segment_bytes), (3, 1 << 20, 64 << 20));
        assert_eq!(c.metadata_sync, None);
        assert!(engine_config(&ConfigFile::parse("[serve]\nblock_size = \"4Q\"\n").unwrap(), Some("/x".into())).is_err());
        // No cache dir anywhere is an error; the file's is used when the flag is absent.
        assert!(engine_config(&ConfigFile::default(), None).is_err());
        let f = ConfigFile::parse("[serve]\ncache_dir = \"/var/cache/stoker\"\n").unwrap();
        assert_eq!(engine_config(&f, None).unwrap().cache_dir, PathBuf::from("/var/cache/stoker"));
    }
}
