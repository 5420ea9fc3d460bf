//! This engine as one member of a cluster (docs/CLUSTER.md): its membership
//! in etcd, the peer server other members ask for the blocks this node
//! owns, and the connections it uses to ask the owners of blocks it misses.
//!
//! The shards call `owner_elsewhere` on a miss and, when another member
//! owns the block, `ask` it (on the tokio runtime). Any failure is `None`:
//! the shard then reads under storage itself, so a peer never fails a read.
//! This module never touches the store or under storage; blocks it serves
//! to peers come from the shards through `Handler`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use stoker_cluster::peer::{self, BlockRequest, Handler, Limits, PeerBlock, PeerClient, ServerCounters};
use stoker_cluster::tls::{self, Tls};
use stoker_cluster::{JoinConfig, Member, Membership};
use stoker_proto::control::{ClusterMember, ClusterStats, PeerAsked, PeerServed};

/// `stoker serve --cluster ...`.
#[derive(Clone)]
pub struct ClusterConfig {
    /// etcd endpoints (`http://HOST:PORT`), from `--cluster etcd://...`.
    pub endpoints: Vec<String>,
    /// Members of one cluster share this name (`--cluster-name`, default `stoker`).
    pub name: String,
    /// `--node-id`: stable across restarts.
    pub node_id: String,
    /// `--peer-listen`: where this node serves peers.
    pub peer_listen: SocketAddr,
    /// `--peer-advertise`: where the others reach it (defaults to `peer_listen`).
    pub peer_advertise: String,
    /// `--cluster-token-file`'s contents, trimmed; never logged.
    pub token: Vec<u8>,
    /// Timeout of one peer request (and of connecting). Default 5 s.
    pub peer_timeout: Duration,
    /// Lease TTL in etcd. Default 6 s.
    pub lease_ttl: Duration,
    /// `--cluster-tls-cert/-key/-ca`, loaded: mutual TLS to and from every
    /// peer (None: plain TCP). A TLS node and a plain one cannot talk.
    pub tls: Option<Tls>,
}

/// The hash placement is decided on: the path and block index, the same on
/// every node (the shard routing hash).
pub fn placement_hash(path: &str, block: u64) -> u64 {
    stoker_proto::key::route_hash(path, block)
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("endpoints", &self.endpoints)
            .field("name", &self.name)
            .field("node_id", &self.node_id)
            .field("peer_listen", &self.peer_listen)
            .field("peer_advertise", &self.peer_advertise)
            .field("token", &"***")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

#[derive(Default)]
struct Asked {
    hits: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    fallbacks: AtomicU64,
}

pub struct ClusterNode {
    me: String,
    membership: Membership,
    token: Arc<Vec<u8>>,
    tls: Option<Tls>,
    limits: Limits,
    /// One connection per peer address, made on first use, replaced when it
    /// drops; entries for addresses no longer in the member list are pruned.
    pool: Mutex<HashMap<String, Arc<PeerClient>>>,
    served: Arc<ServerCounters>,
    asked: Asked,
    /// When asking each member last failed, cleared by its next answer:
    /// `stoker stat` shows such a member as `unreachable` for a while.
    failed: Mutex<HashMap<String, std::time::Instant>>,
    server: tokio::task::JoinHandle<()>,
}

/// How long a member whose request failed shows as `unreachable` (unless it
/// answers again sooner).
const UNREACHABLE_FOR: Duration = Duration::from_secs(30);

impl ClusterNode {
    /// Join the cluster and serve peers; runs on `rt`. `serve_block`
    /// answers a peer's request (the shards, through their command queues).
    pub fn start(cfg: &ClusterConfig, capacity_bytes: u64, rt: &tokio::runtime::Handle, serve_block: Handler) -> std::io::Result<Arc<ClusterNode>> {
        let _in_rt = rt.enter();
        let std_listener = std::net::TcpListener::bind(cfg.peer_listen)
            .map_err(|e| std::io::Error::new(e.kind(), format!("--peer-listen {}: {e}", cfg.peer_listen)))?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let limits = Limits { timeout: cfg.peer_timeout, ..Limits::default() };
        let token = Arc::new(cfg.token.clone());
        let served = Arc::new(ServerCounters::default());
        let server = match &cfg.tls {
            Some(t) => peer::serve_tls(listener, t, token.clone(), limits, served.clone(), serve_block),
            None => peer::serve(listener, token.clone(), limits, served.clone(), serve_block),
        };
        let me = Member { id: cfg.node_id.clone(), addr: cfg.peer_advertise.clone(), capacity_bytes };
        let mut join = JoinConfig::new(cfg.endpoints.clone(), &cfg.name, me);
        join.lease_ttl = cfg.lease_ttl;
        let membership = Membership::join(join);
        Ok(Arc::new(ClusterNode {
            me: cfg.node_id.clone(),
            membership,
            token,
            tls: cfg.tls.clone(),
            limits,
            pool: Mutex::new(HashMap::new()),
            served,
            asked: Asked::default(),
            failed: Mutex::new(HashMap::new()),
            server,
        }))
    }

    /// The member that owns block `block` of `path`, when it is not this
    /// node. Placement hashes the path and block, not the version: a node
    /// that has not seen the file yet knows whom to ask, and the owner
    /// answers with the file's attributes (docs/CLUSTER.md).
    pub fn owner_elsewhere(&self, path: &str, block: u64) -> Option<Member> {
        let view = self.membership.watch();
        let v = view.borrow();
        stoker_cluster::owner(placement_hash(path, block), &v.members).filter(|m| m.id != self.me).cloned()
    }

    /// Member ids as this node sees them now.
    pub fn member_ids(&self) -> Vec<String> {
        self.membership.view().members.into_iter().map(|m| m.id).collect()
    }

    /// Ask `owner` for a block (or, with `req.preload`, to fetch and keep
    /// it). An error (counted) means: read under storage instead, or for a
    /// preload, ask again once the member list has changed.
    pub async fn ask(&self, owner: &Member, req: BlockRequest) -> Result<PeerBlock, String> {
        match self.ask_once(owner, &req).await {
            Ok(b) => {
                self.asked.hits.fetch_add(1, Relaxed);
                self.asked.bytes.fetch_add(b.data.len() as u64, Relaxed);
                if !self.failed.lock().is_empty() {
                    self.failed.lock().remove(&owner.id);
                }
                Ok(b)
            }
            Err(e) => {
                self.asked.errors.fetch_add(1, Relaxed);
                let mut failed = self.failed.lock();
                // Bounded by the member list: entries of members gone are dropped.
                if failed.len() >= 4096 {
                    failed.clear();
                }
                failed.insert(owner.id.clone(), std::time::Instant::now());
                drop(failed);
                tracing::debug!(owner = %owner.id, error = %e, "peer request failed");
                Err(e)
            }
        }
    }

    async fn ask_once(&self, owner: &Member, req: &BlockRequest) -> Result<PeerBlock, String> {
        let client = self.client(&owner.addr).await?;
        client.read(req).await.map_err(|e| e.to_string())
    }

    async fn client(&self, addr: &str) -> Result<Arc<PeerClient>, String> {
        if let Some(c) = self.pool.lock().get(addr).filter(|c| c.is_open()) {
            return Ok(c.clone());
        }
        let sock: SocketAddr = tokio::time::timeout(self.limits.timeout, tokio::net::lookup_host(addr))
            .await
            .map_err(|_| format!("{addr}: name lookup timed out"))?
            .map_err(|e| format!("{addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr}: no address"))?;
        let c = match &self.tls {
            // The member's certificate must name the host it advertises.
            Some(t) => PeerClient::connect_tls(sock, tls::server_name(addr)?, t, &self.token, self.limits).await,
            None => PeerClient::connect(sock, &self.token, self.limits).await,
        };
        let c = Arc::new(c.map_err(|e| e.to_string())?);
        let members: Vec<String> = self.membership.view().members.into_iter().map(|m| m.addr).collect();
        let mut pool = self.pool.lock();
        pool.retain(|a, _| members.contains(a));
        pool.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// `stoker stat`'s `cluster` section.
    pub fn stats(&self) -> ClusterStats {
        let v = self.membership.view();
        ClusterStats {
            node_id: self.me.clone(),
            etcd_ok: v.etcd_ok,
            members: v
                .members
                .iter()
                .map(|m| ClusterMember {
                    id: m.id.clone(),
                    addr: m.addr.clone(),
                    capacity_bytes: m.capacity_bytes,
                    state: self.state_of(&m.id).into(),
                })
                .collect(),
            served: PeerServed {
                requests: self.served.requests.load(Relaxed),
                bytes: self.served.bytes.load(Relaxed),
                errors: self.served.errors.load(Relaxed),
                refused: self.served.refused.load(Relaxed),
            },
            asked: PeerAsked {
                hits: self.asked.hits.load(Relaxed),
                bytes: self.asked.bytes.load(Relaxed),
                errors: self.asked.errors.load(Relaxed),
                fallbacks: self.asked.fallbacks.load(Relaxed),
            },
        }
    }

    /// `self`; `unreachable` when asking it failed in the last 30 s and it
    /// has not answered since; else `up`.
    fn state_of(&self, id: &str) -> &'static str {
        if id == self.me {
            return "self";
        }
        match self.failed.lock().get(id) {
            Some(at) if at.elapsed() < UNREACHABLE_FOR => "unreachable",
            _ => "up",
        }
    }

    /// Leave cleanly (the others drop this node at once) and stop serving peers.
    pub async fn leave(&self) {
        self.server.abort();
        self.membership.leave().await;
    }

    /// A block another member owns was read from under storage here after
    /// all (the owner could not give it, or gave a wrong length).
    pub fn fell_back(&self) {
        self.asked.fallbacks.fetch_add(1, Relaxed);
    }
}
