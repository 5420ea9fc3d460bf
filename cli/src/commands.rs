//! serve, cat, ls, stat and load (bench and tune live in bench_cmd.rs).

use crate::load::human;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use stoker_client::{Client, Kind};
use stoker_engine::{parse_duration, parse_size, Engine, MountSpec};

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s)
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)?.ok_or_else(|| format!("bad duration {s:?}: `never` is not allowed here"))
}

/// `--metrics`: `HOST:PORT`, or a bare `PORT` on the loopback address
/// (the endpoint is not authenticated: docs/SECURITY.md).
pub fn metrics_addr_arg(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| format!("bad address {s:?}: expected PORT (on 127.0.0.1) or IP:PORT, e.g. 127.0.0.1:9464"))
}

/// `--s3`: `HOST:PORT`, or a bare `PORT` on the loopback address.
pub fn s3_addr_arg(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| format!("bad address {s:?}: expected PORT (on 127.0.0.1) or IP:PORT, e.g. 127.0.0.1:9000"))
}

fn group_arg(s: &str) -> Result<u32, String> {
    stoker_engine::peer::parse_group(s)
}

fn quota_arg(s: &str) -> Result<(String, u64), String> {
    let (name, size) = s.split_once('=').ok_or_else(|| format!("bad --quota {s:?}: expected NAME=SIZE, e.g. scratch=50G"))?;
    Ok((name.to_string(), parse_size(size)?))
}

fn mount_arg(s: &str) -> Result<MountSpec, String> {
    let (name, uri) = s
        .split_once('=')
        .ok_or_else(|| format!("bad --mount {s:?}: expected NAME=URI, e.g. train=file:///data/train"))?;
    Ok(MountSpec { name: name.to_string(), uri: uri.to_string(), ..Default::default() })
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A TOML config file (e.g. written by `stoker tune`); flags given here
    /// override its values (docs/CONFIGURATION.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory for cached segments (local NVMe) [required here or in --config].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Most bytes the cache may use on disk, e.g. 100G [default: 10G].
    #[arg(long, value_parser = size_arg)]
    pub capacity: Option<u64>,
    /// Shards (one thread each) [default: number of cores].
    #[arg(long)]
    pub shards: Option<usize>,
    /// A namespace mount NAME=URI, served at /NAME (repeatable).
    #[arg(long = "mount", value_parser = mount_arg)]
    pub mounts: Vec<MountSpec>,
    /// An under-storage option for one mount, NAME:key=value (repeatable),
    /// e.g. data:endpoint=http://127.0.0.1:9000 (docs/STORAGE.md).
    #[arg(long = "mount-opt", value_name = "NAME:KEY=VALUE")]
    pub mount_opts: Vec<String>,
    /// Cache block size for large files [default: 4M].
    #[arg(long, value_parser = size_arg)]
    pub block_size: Option<u64>,
    /// Blocks fetched ahead of a sequential reader of a large file (the
    /// window starts at 1 and doubles up to this; 0 = off; per mount:
    /// --mount-opt NAME:readahead=N) [default: 4].
    #[arg(long)]
    pub readahead_blocks: Option<u64>,
    /// Segment file size [default: 256M].
    #[arg(long, value_parser = size_arg)]
    pub segment_size: Option<u64>,
    /// Bytes of fetched blocks waiting to be written, per shard: past it a
    /// read is served without caching its block (a load waits for room
    /// instead) [default: 256M].
    #[arg(long, value_parser = size_arg)]
    pub write_queue: Option<u64>,
    /// Inject this latency into every under-storage request (demos, tests), e.g. 20ms [default: 0ms].
    #[arg(long, value_parser = duration_arg)]
    pub ufs_latency: Option<Duration>,
    /// Cap under-storage reads at this many bytes per second (demos, tests).
    #[arg(long, value_parser = size_arg)]
    pub ufs_bandwidth: Option<u64>,
    /// Threads running under-storage requests [default: half the cores, at least 1].
    #[arg(long)]
    pub ufs_threads: Option<usize>,
    /// Timeout of one under-storage call [default: 30s].
    #[arg(long, value_parser = duration_arg)]
    pub ufs_timeout: Option<Duration>,
    /// How long attributes and listings are trusted before re-checking under storage (`never` for immutable data) [default: 60s].
    #[arg(long)]
    pub metadata_sync: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464;
    /// a bare port is on 127.0.0.1 (port 0 picks a free port; docs/METRICS.md).
    #[arg(long, value_name = "ADDR", value_parser = metrics_addr_arg)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Share the engine's sockets with this group (name or gid): they are
    /// given the group, and its members are admitted besides root and the
    /// engine's user (docs/SECURITY.md) [default: none].
    #[arg(long, value_name = "GROUP", value_parser = group_arg)]
    pub socket_group: Option<u32>,
    /// Control connections open at once at most; more are refused with an
    /// error [default: 256].
    #[arg(long, value_name = "N")]
    pub control_connections: Option<usize>,
    /// Longest wait for the rest of a control request once it started, and
    /// for a client to take an answer; a stalled connection is closed [default: 10s].
    #[arg(long, value_name = "DUR", value_parser = duration_arg)]
    pub control_timeout: Option<Duration>,
    /// Join a cluster whose membership lives in etcd:
    /// etcd://HOST:PORT[,HOST:PORT...] (docs/CLUSTER.md). Needs --node-id,
    /// --peer-listen and --cluster-token-file [default: none, this node alone].
    #[arg(long, value_name = "URI")]
    pub cluster: Option<String>,
    /// Name shared by the members of one cluster in etcd [default: stoker].
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// This node's id in the cluster; keep it across restarts (a restarted
    /// node owns the same blocks).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Where this node serves block reads to the other members, e.g. 10.0.0.5:7070.
    #[arg(long, value_name = "ADDR")]
    pub peer_listen: Option<std::net::SocketAddr>,
    /// Where the other members reach this node (HOST:PORT) [default: --peer-listen].
    #[arg(long, value_name = "HOST:PORT")]
    pub peer_advertise: Option<String>,
    /// File holding the token every member presents to the others (the same
    /// on every node; keep it mode 0600).
    #[arg(long, value_name = "FILE")]
    pub cluster_token_file: Option<PathBuf>,
    /// This node's certificate (PEM) for mutual TLS with the other members,
    /// with --cluster-tls-key and --cluster-tls-ca; it must name the host of
    /// --peer-advertise (docs/CLUSTER.md) [default: none, plain TCP].
    #[arg(long, value_name = "FILE")]
    pub cluster_tls_cert: Option<PathBuf>,
    /// The private key of --cluster-tls-cert (PEM).
    #[arg(long, value_name = "FILE")]
    pub cluster_tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) every member's certificate is signed by.
    #[arg(long, value_name = "FILE")]
    pub cluster_tls_ca: Option<PathBuf>,
    /// What a full cache drops first: fifo-reinsert (oldest segment, read blocks
    /// get a second chance) or lru (least recently read segment) [default: fifo-reinsert].
    #[arg(long)]
    pub eviction: Option<stoker_engine::store::Eviction>,
    /// io_uring submission queue depth per shard (power of two) [default: 128].
    #[arg(long)]
    pub io_depth: Option<usize>,
    /// DRAM tier for the most recently served blocks, e.g. 4G [default: 0, off].
    #[arg(long, value_parser = size_arg)]
    pub memory_cache: Option<u64>,
    /// Entries of the direct-read table: clients on this box read cached
    /// files (and small ranges of large ones) from the segment files themselves (0 = off;
    /// off while --memory-cache is on) [default: 1048576, the most].
    #[arg(long)]
    pub direct_entries: Option<u64>,
    /// Most bytes one mount may keep cached, NAME=SIZE (repeatable), e.g. scratch=50G.
    #[arg(long = "quota", value_parser = quota_arg)]
    pub quotas: Vec<(String, u64)>,
    /// Serve an S3-compatible gateway at ADDR (buckets are mounts), e.g.
    /// 127.0.0.1:9000; a bare port is on 127.0.0.1 (docs/GATEWAY.md) [default: none].
    #[arg(long = "s3", value_name = "ADDR", value_parser = s3_addr_arg)]
    pub s3: Option<std::net::SocketAddr>,
    /// The gateway's SigV4 credentials: one ACCESS_KEY:SECRET_KEY a line.
    /// Without it the gateway is unauthenticated and binds loopback only.
    #[arg(long, value_name = "FILE")]
    pub s3_credentials: Option<PathBuf>,
    /// Base domain of virtual-host-style gateway requests (BUCKET.DOMAIN) [default: localhost].
    #[arg(long, value_name = "DOMAIN")]
    pub s3_domain: Option<String>,
    #[command(flatten)]
    pub socket: crate::SocketArg,
}

pub fn serve(mut a: ServeArgs) -> Result<()> {
    // Defaults, then the config file, then flags given on the command line.
    let file = match &a.config {
        Some(p) => stoker_tuning::ConfigFile::load(p)?,
        None => stoker_tuning::ConfigFile::default(),
    };
    crate::serve_config::cluster_keys(&file, &mut a)?;
    let tls = crate::serve_config::cluster_tls(&file, a.cluster_tls_cert.clone(), a.cluster_tls_key.clone(), a.cluster_tls_ca.clone())?;
    let cluster = cluster_config(&a, tls)?;
    let mut cfg = crate::serve_config::engine_config(&file, a.cache_dir)?;
    // The two keys whose parsers live here.
    if let Some(m) = &file.serve.metrics {
        cfg.metrics = Some(metrics_addr_arg(m).map_err(anyhow::Error::msg).context("[serve] metrics")?);
    }
    if let Some(g) = &file.serve.socket_group {
        cfg.socket_group = Some(group_arg(g).map_err(anyhow::Error::msg).context("[serve] socket_group")?);
    }
    for (name, uri) in file.mounts()? {
        cfg.mounts.push(mount_arg(&format!("{name}={uri}")).map_err(anyhow::Error::msg)?);
    }
    if let Some(v) = a.capacity {
        cfg.capacity_bytes = v;
    }
    if let Some(n) = a.shards {
        cfg.shards = n;
    }
    if a.socket.socket.is_some() || file.serve.socket.is_none() {
        cfg.socket = a.socket.path();
    }
    // Absolute: clients in other directories are told the shard sockets
    // next to it.
    cfg.socket = std::path::absolute(&cfg.socket)
        .with_context(|| format!("socket {}", cfg.socket))?
        .to_string_lossy()
        .into_owned();
    if !a.mounts.is_empty() {
        cfg.mounts = a.mounts;
    }
    // The file's per-mount options first; --mount-opt adds to them.
    for (name, key, value) in file.mount_options()? {
        let Some(m) = cfg.mounts.iter_mut().find(|m| m.name == name) else {
            bail!("[serve.mount_options.{name}]: no mount named {name:?}");
        };
        m.options.push((key, value));
    }
    for opt in &a.mount_opts {
        // The value is never echoed back: it may be a secret.
        let Some((name, kv)) = opt.split_once(':') else {
            bail!("bad --mount-opt: expected NAME:key=value, e.g. data:region=us-east-1");
        };
        let Some((key, value)) = kv.split_once('=') else {
            bail!("bad --mount-opt for {name:?}: expected NAME:key=value, e.g. data:region=us-east-1");
        };
        let Some(m) = cfg.mounts.iter_mut().find(|m| m.name == name) else {
            bail!("--mount-opt {name}:{key}=…: no --mount named {name:?}");
        };
        m.options.push((key.trim().to_string(), value.to_string()));
    }
    if let Some(v) = a.block_size {
        cfg.block_bytes = v;
    }
    if let Some(v) = a.segment_size {
        cfg.segment_bytes = v;
    }
    if let Some(v) = a.readahead_blocks {
        cfg.readahead_blocks = v;
    }
    if let Some(v) = a.write_queue {
        cfg.write_queue_bytes_max = v;
    }
    if let Some(v) = a.ufs_latency {
        cfg.ufs_latency = v;
    }
    if a.ufs_bandwidth.is_some() {
        cfg.ufs_bandwidth = a.ufs_bandwidth;
    }
    if let Some(v) = a.ufs_timeout {
        cfg.ufs_timeout = v;
    }
    if let Some(v) = a.ufs_threads {
        cfg.ufs_threads = v;
    }
    if let Some(v) = &a.metadata_sync {
        cfg.metadata_sync = parse_duration(v).map_err(anyhow::Error::msg)?;
    }
    if a.metrics.is_some() {
        cfg.metrics = a.metrics;
    }
    if let Some(e) = a.eviction {
        cfg.eviction = e;
    }
    if !a.quotas.is_empty() {
        cfg.quotas = a.quotas;
    }
    if let Some(m) = a.memory_cache {
        cfg.memory_cache_bytes = m;
    }
    if let Some(d) = a.io_depth {
        cfg.io_depth = d;
    }
    if let Some(n) = a.direct_entries {
        cfg.direct_entries = n;
    }
    if a.socket_group.is_some() {
        cfg.socket_group = a.socket_group;
    }
    if let Some(n) = a.control_connections {
        cfg.control_connections_max = n;
    }
    if let Some(d) = a.control_timeout {
        cfg.control_timeout = d;
    }
    cfg.cluster = cluster;
    // Checked before the engine starts: a refused gateway starts nothing.
    let s3 = crate::serve_config::gateway_config(&file, &a.s3, &a.s3_credentials, &a.s3_domain, &cfg)?;
    let mut engine = Engine::start(cfg)?;
    if let Some(addr) = engine.metrics_addr() {
        eprintln!("stoker: metrics on http://{addr}/metrics");
    }
    let gateway = match s3.map(stoker_gateway::Gateway::start).transpose() {
        Ok(g) => g,
        Err(e) => {
            engine.stop();
            return Err(e);
        }
    };
    if let Some(g) = &gateway {
        eprintln!("stoker: s3 gateway on http://{}", g.local_addr());
    }
    eprintln!("stoker: serving on {} (Ctrl-C to stop)", engine.socket());
    engine.wait_for_signal();
    eprintln!("stoker: stopping");
    if let Some(g) = gateway {
        g.stop();
    }
    engine.stop();
    Ok(())
}

/// `--cluster` and its companions as a cluster config; None without `--cluster`.
/// `tls`: the `--cluster-tls-*` files, loaded here so a bad one stops the start.
fn cluster_config(a: &ServeArgs, tls: Option<stoker_cluster::tls::TlsFiles>) -> Result<Option<stoker_engine::cluster::ClusterConfig>> {
    let Some(uri) = &a.cluster else {
        if a.node_id.is_some() || a.peer_listen.is_some() || a.cluster_token_file.is_some() {
            bail!("--node-id, --peer-listen and --cluster-token-file need --cluster etcd://HOST:PORT");
        }
        if tls.is_some() {
            bail!("--cluster-tls-cert, --cluster-tls-key and --cluster-tls-ca need --cluster etcd://HOST:PORT");
        }
        return Ok(None);
    };
    let endpoints = stoker_cluster::parse_cluster_uri(uri)?;
    let (Some(node_id), Some(listen), Some(token_file)) = (&a.node_id, a.peer_listen, &a.cluster_token_file) else {
        bail!("--cluster needs --node-id ID, --peer-listen ADDR and --cluster-token-file FILE");
    };
    if node_id.is_empty() || node_id.len() > 128 || node_id.contains('/') || node_id.chars().any(char::is_control) {
        bail!("bad --node-id {node_id:?}: 1 to 128 characters, no '/'");
    }
    let token = std::fs::read(token_file).with_context(|| format!("--cluster-token-file {}", token_file.display()))?;
    let token = token.trim_ascii().to_vec();
    if token.is_empty() || token.len() > stoker_cluster::peer::TOKEN_MAX {
        bail!("--cluster-token-file {}: the token must be 1 to {} bytes", token_file.display(), stoker_cluster::peer::TOKEN_MAX);
    }
    let advertise = a.peer_advertise.clone().unwrap_or_else(|| listen.to_string());
    if listen.ip().is_unspecified() && a.peer_advertise.is_none() {
        bail!("--peer-listen {listen} listens on every address: say where the others reach this node with --peer-advertise HOST:PORT");
    }
    let tls = tls.map(|f| f.load()).transpose()?;
    if tls.is_some() {
        // The others check this node's certificate against this host.
        stoker_cluster::tls::server_name(&advertise).map_err(|e| anyhow::anyhow!("--peer-advertise {e}"))?;
    }
    Ok(Some(stoker_engine::cluster::ClusterConfig {
        endpoints,
        name: a.cluster_name.clone().unwrap_or_else(|| "stoker".into()),
        node_id: node_id.clone(),
        peer_listen: listen,
        peer_advertise: advertise,
        token,
        peer_timeout: Duration::from_secs(5),
        lease_ttl: Duration::from_secs(6),
        tls,
    }))
}

fn connect(socket: &str) -> Result<Client> {
    Ok(Client::connect(socket)?)
}

pub fn cat(socket: &str, path: &str) -> Result<()> {
    let c = connect(socket)?;
    let attr = c.stat(path)?;
    if attr.kind == Kind::Dir {
        bail!("{path}: is a directory");
    }
    let mut out = std::io::stdout().lock();
    let chunk = c.block_bytes().max(1 << 20);
    let mut off = 0;
    while off < attr.size {
        let data = c.read(path, off, chunk.min(attr.size - off))?;
        if data.is_empty() {
            break;
        }
        if let Err(e) = out.write_all(&data) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e).context("writing to stdout");
        }
        off += data.len() as u64;
    }
    out.flush().ok();
    Ok(())
}

pub fn ls(socket: &str, path: &str, long: bool, recursive: bool) -> Result<()> {
    let c = connect(socket)?;
    let attr = c.stat(path)?;
    let entries = if recursive {
        c.walk(path)?
    } else if attr.kind == Kind::Dir {
        c.list(path)?
    } else {
        let name = path.rsplit('/').next().unwrap_or(path).to_string();
        vec![stoker_proto::control::DirEntry { name, attr }]
    };
    let mut out = std::io::stdout().lock();
    for e in entries {
        let r = if long {
            let kind = if e.attr.kind == Kind::Dir { 'd' } else { '-' };
            writeln!(out, "{kind} {:>14} {}", e.attr.size, e.name)
        } else {
            writeln!(out, "{}", e.name)
        };
        if r.is_err() {
            break;
        }
    }
    Ok(())
}

/// Engine-wide statistics (`stoker stat PATH` is in policy_cmd.rs).
pub fn stat(socket: &str, json: bool) -> Result<()> {
    let c = connect(socket)?;
    let s = c.engine_stats()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let ratio = if s.hits + s.misses > 0 { 100.0 * s.hits as f64 / (s.hits + s.misses) as f64 } else { 0.0 };
    println!("capacity   {}", human(s.capacity_bytes));
    println!("used       {} ({} blocks)", human(s.used_bytes), s.blocks);
    println!("hits       {} ({ratio:.1}%)", s.hits);
    println!("misses     {}", s.misses);
    println!("ufs read   {}", human(s.ufs_bytes_read));
    println!("served     {}", human(s.bytes_served));
    let amp = if s.bytes_served > 0 { s.device_bytes_read as f64 / s.bytes_served as f64 } else { 0.0 };
    println!("disk read  {} ({amp:.2}x served)", human(s.device_bytes_read));
    println!("sessions   {}", s.sessions);
    println!(
        "persist    {} files ({}) waiting for under storage, {} failing",
        s.persist_pending_files,
        human(s.persist_pending_bytes),
        s.persist_failed_files
    );
    println!("shard   used         blocks     hits       misses");
    for sh in &s.shards {
        println!("{:<7} {:<12} {:<10} {:<10} {}", sh.shard, human(sh.used_bytes), sh.blocks, sh.hits, sh.misses);
    }
    for m in &s.mounts {
        let opts: Vec<String> = m.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "mount /{} = {}  sync={} block={} readahead={} inflight-limit={}{}{}{}",
            m.name,
            m.uri,
            m.sync,
            human(m.block_bytes),
            m.readahead_blocks,
            m.inflight_limit,
            if m.read_only { " read-only" } else { "" },
            m.write.as_deref().map(|w| format!(" write={w}")).unwrap_or_default(),
            if opts.is_empty() { String::new() } else { format!("  [{}]", opts.join(", ")) }
        );
    }
    if let Some(c) = &s.cluster {
        let etcd = if c.etcd_ok { "etcd ok" } else { "etcd UNREACHABLE: serving with the last member list" };
        println!("cluster    node {}, {} members, {etcd}", c.node_id, c.members.len());
        for m in &c.members {
            println!("  member {:<16} {:<22} {:<10} {}", m.id, m.addr, human(m.capacity_bytes), m.state);
        }
        let (a, v) = (&c.asked, &c.served);
        println!("  asked    {} blocks ({}) from owners, {} errors, {} read under storage instead", a.hits, human(a.bytes), a.errors, a.fallbacks);
        println!("  served   {} blocks ({}) to peers, {} errors, {} refused", v.requests, human(v.bytes), v.errors, v.refused);
    }
    Ok(())
}

// `stoker load` lives in load.rs.
