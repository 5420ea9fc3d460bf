//! Membership in etcd: a node registers itself under a lease it keeps alive,
//! watches the member list, and leaves when its lease expires (a crash) or
//! when it revokes it (a clean stop).
//!
//! Keys: `/stoker/CLUSTER/members/NODE_ID` → the `Member` as JSON, attached
//! to the node's lease. The view of the members is rebuilt from one prefix
//! read and kept current by a watch from that read's revision, so no event
//! is missed between the two.
//!
//! A node that loses etcd keeps the last member list it saw (placement does
//! not flap while etcd is away) and says so in its view (`etcd_ok` false);
//! it reconnects with a back-off of 100 ms doubling to 2 s, registers again
//! (a fresh lease: the old one may have expired meanwhile) and re-reads the
//! list. Every etcd call has a timeout (`timeout`), and a keep-alive answer
//! that does not come within it counts as etcd lost.

use crate::placement::Member;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// How to join.
#[derive(Clone, Debug)]
pub struct JoinConfig {
    /// etcd endpoints, `http://HOST:PORT` (from `--cluster etcd://HOST:PORT,...`).
    pub endpoints: Vec<String>,
    /// Cluster name: members of one cluster share `/stoker/CLUSTER/`.
    pub cluster: String,
    /// This node.
    pub me: Member,
    /// Lease time to live: a crashed node leaves the list this long after
    /// its last keep-alive. Default 6 s.
    pub lease_ttl: Duration,
    /// Timeout of one etcd call. Default 3 s.
    pub timeout: Duration,
}

impl JoinConfig {
    pub fn new(endpoints: Vec<String>, cluster: &str, me: Member) -> JoinConfig {
        JoinConfig { endpoints, cluster: cluster.into(), me, lease_ttl: Duration::from_secs(6), timeout: Duration::from_secs(3) }
    }

    fn prefix(&self) -> String {
        format!("/stoker/{}/members/", self.cluster)
    }
}

/// What a node knows of the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    /// The members, by id (this node among them once registered).
    pub members: Vec<Member>,
    /// Whether etcd answers now; false while the node serves with the last
    /// list it saw.
    pub etcd_ok: bool,
    /// Times the member list changed since this node joined.
    pub changes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad --cluster {0:?}: expected etcd://HOST:PORT[,HOST:PORT...]")]
    BadUri(String),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd: no answer within {0:?}")]
    Timeout(Duration),
    #[error("etcd: {0}")]
    Lost(&'static str),
}

/// `etcd://HOST:PORT[,HOST:PORT...]` as client endpoints.
pub fn parse_cluster_uri(uri: &str) -> Result<Vec<String>, Error> {
    let rest = uri.strip_prefix("etcd://").ok_or_else(|| Error::BadUri(uri.into()))?;
    let eps: Vec<String> = rest.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|hp| format!("http://{hp}")).collect();
    let valid = |e: &str| e.rsplit_once(':').is_some_and(|(h, p)| !h.ends_with("//") && p.parse::<u16>().is_ok());
    if eps.is_empty() || !eps.iter().all(|e| valid(e)) {
        return Err(Error::BadUri(uri.into()));
    }
    Ok(eps)
}

/// A node's membership: runs on the tokio runtime it was started on until
/// `leave` (or drop, which leaves by lease expiry).
pub struct Membership {
    view: watch::Receiver<View>,
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Membership {
    /// Start joining. Returns at once: the view holds only this node (and
    /// `etcd_ok` false) until the first registration succeeds — use
    /// `wait_for` to wait for that.
    pub fn join(cfg: JoinConfig) -> Membership {
        let (tx, rx) = watch::channel(View { members: vec![cfg.me.clone()], etcd_ok: false, changes: 0 });
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(cfg, tx, stop_rx));
        Membership { view: rx, stop: std::sync::Mutex::new(Some(stop_tx)), task: std::sync::Mutex::new(Some(task)) }
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// A receiver that wakes on every change of the view.
    pub fn watch(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Waits until `cond` holds for the view, at most `limit`; returns the
    /// view that satisfied it, or None after `limit`.
    pub async fn wait_for(&self, limit: Duration, mut cond: impl FnMut(&View) -> bool) -> Option<View> {
        let mut rx = self.view.clone();
        let r = tokio::time::timeout(limit, rx.wait_for(|v| cond(v))).await;
        match r {
            Ok(Ok(v)) => Some(v.clone()),
            _ => None,
        }
    }

    /// Leave cleanly: revoke the lease, so the others drop this node at once.
    /// Once; later calls return at once.
    pub async fn leave(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stop.send(());
        }
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Stop without telling etcd, as a crash would: the others drop this
    /// node when its lease expires.
    pub fn abandon(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.abandon();
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

async fn run(cfg: JoinConfig, tx: watch::Sender<View>, mut stop: oneshot::Receiver<()>) {
    let mut backoff = BACKOFF_MIN;
    let mut warned = false;
    loop {
        let started = Instant::now();
        match session(&cfg, &tx, &mut stop).await {
            Ok(()) => return,
            Err(e) => {
                tx.send_if_modified(|v| std::mem::replace(&mut v.etcd_ok, false));
                if !warned {
                    tracing::warn!(error = %e, members = tx.borrow().members.len(), "cluster: etcd lost; serving with the last member list and retrying");
                    warned = true;
                } else {
                    tracing::debug!(error = %e, "cluster: etcd still unreachable");
                }
            }
        }
        // A session that ran a while earns a fresh back-off.
        if started.elapsed() > BACKOFF_MAX * 4 {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut stop => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        if tx.borrow().etcd_ok {
            warned = false;
        }
    }
}

async fn timed<T>(limit: Duration, f: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> Result<T, Error> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Error::Timeout(limit)),
    }
}

/// One connection's life: register, read the list, watch it and keep the
/// lease alive until etcd is lost (Err) or the node leaves (Ok).
async fn session(cfg: &JoinConfig, tx: &watch::Sender<View>, stop: &mut oneshot::Receiver<()>) -> Result<(), Error> {
    let t = cfg.timeout;
    let opts = ConnectOptions::new().with_connect_timeout(t).with_timeout(t);
    let mut client = timed(t, Client::connect(&cfg.endpoints, Some(opts))).await?;
    let ttl = cfg.lease_ttl.as_secs().max(1) as i64;
    let lease = timed(t, client.lease_grant(ttl, None)).await?.id();
    let prefix = cfg.prefix();
    let me = serde_json::to_vec(&cfg.me).expect("a member serializes");
    timed(t, client.put(format!("{prefix}{}", cfg.me.id), me, Some(PutOptions::new().with_lease(lease)))).await?;
    let listed = timed(t, client.get(prefix.as_str(), Some(GetOptions::new().with_prefix()))).await?;
    let rev = listed.header().map_or(0, |h| h.revision());
    let mut members: BTreeMap<String, Member> = BTreeMap::new();
    for kv in listed.kvs() {
        if let Ok(m) = serde_json::from_slice::<Member>(kv.value()) {
            members.insert(m.id.clone(), m);
        }
    }
    let publish = |members: &BTreeMap<String, Member>| {
        let list: Vec<Member> = members.values().cloned().collect();
        tx.send_if_modified(|v| {
            let changed = v.members != list;
            if changed {
                v.members = list.clone();
                v.changes += 1;
            }
            let was = std::mem::replace(&mut v.etcd_ok, true);
            changed || !was
        });
    };
    publish(&members);
    tracing::info!(node = %cfg.me.id, members = members.len(), "cluster: joined");

    let mut events = timed(t, client.watch(prefix.as_str(), Some(WatchOptions::new().with_prefix().with_start_revision(rev + 1)))).await?;
    let (mut keeper, mut alive) = timed(t, client.lease_keep_alive(lease)).await?;
    let mut tick = tokio::time::interval(Duration::from_secs((ttl as u64 / 3).max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut *stop => {
                // A clean leave: the others see this node go at once.
                if let Err(e) = timed(t, client.lease_revoke(lease)).await {
                    tracing::warn!(error = %e, "cluster: could not revoke the lease; the others drop this node when it expires");
                }
                return Ok(());
            }
            _ = tick.tick() => {
                timed(t, keeper.keep_alive()).await?;
                match timed(t, alive.message()).await? {
                    Some(r) if r.ttl() > 0 => {}
                    // The lease expired while etcd could not be reached.
                    Some(_) => return Err(Error::Lost("this node's lease expired")),
                    None => return Err(Error::Lost("keep-alive stream ended")),
                }
            }
            msg = events.message() => {
                let Some(resp) = msg? else { return Err(Error::Lost("watch ended")) };
                if resp.canceled() {
                    return Err(Error::Lost("watch cancelled (compacted?)"));
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let id = String::from_utf8_lossy(kv.key()).trim_start_matches(prefix.as_str()).to_string();
                    match ev.event_type() {
                        EventType::Put => {
                            if let Ok(m) = serde_json::from_slice::<Member>(kv.value()) {
                                members.insert(id, m);
                            }
                        }
                        EventType::Delete => {
                            members.remove(&id);
                        }
                    }
                }
                // Our own key gone (the lease expired while we could not
                // say otherwise): register again.
                if !members.contains_key(&cfg.me.id) {
                    publish(&members);
                    return Err(Error::Lost("this node's registration expired"));
                }
                publish(&members);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_uris_parse_or_say_why() {
        assert_eq!(parse_cluster_uri("etcd://127.0.0.1:2379").unwrap(), vec!["http://127.0.0.1:2379"]);
        assert_eq!(parse_cluster_uri("etcd://a:1,b:2").unwrap(), vec!["http://a:1", "http://b:2"]);
        for bad in ["http://a:1", "etcd://", "etcd://a", "etcd://a:x", "etcd://:1"] {
            let e = parse_cluster_uri(bad).unwrap_err().to_string();
            assert!(e.starts_with("bad --cluster"), "{bad}: {e}");
        }
    }
}
