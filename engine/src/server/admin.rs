//! Policy and cache-management commands (pin, unpin, free, ttl, per-path
//! stats), run on a control thread: walk the namespace under a path, name
//! every block of every file, and hand each shard the keys it owns.

use crate::server::ctx::ControlCtx;
use crate::namespace::{normalise, Namespace, NsError};
use crate::policy::covers;
use crate::shard::ShardCmd;
use futures::channel::oneshot;
use std::time::Duration;
use stoker_proto::control::{Attr, PathStats, Request, Response};
use stoker_proto::key::shard_for;

/// Files walked per command at most; past this the command is refused.
const FILES_MAX: usize = 10_000_000;
/// Longest wait for a shard to answer a command.
const SHARD_REPLY_TIMEOUT: Duration = Duration::from_secs(60);

fn err(e: NsError) -> Response {
    Response::Error { errno: e.errno(), message: e.to_string() }
}

pub fn handle(ctx: &ControlCtx, req: Request) -> Response {
    let path = match &req {
        Request::Pin { path } | Request::Unpin { path } | Request::Free { path } => path,
        Request::Ttl { path, .. } | Request::PathStat { path } | Request::UfsChecksum { path, .. } => path,
        _ => return err(NsError::Invalid("not a policy command".into())),
    };
    let Some(norm) = normalise(path) else {
        return err(NsError::Invalid(format!("bad path {path:?}: must start with /")));
    };
    let res = match req {
        Request::Pin { .. } => pin(ctx, &norm, true),
        Request::Unpin { .. } => pin(ctx, &norm, false),
        Request::Free { .. } => free(ctx, &norm),
        Request::Ttl { secs, .. } => ttl(ctx, &norm, secs),
        Request::PathStat { .. } => path_stat(ctx, &norm).map(Response::PathStats),
        Request::UfsChecksum { off, len, .. } => ufs_checksum(ctx, &norm, off, len),
        _ => unreachable!("filtered above"),
    };
    res.unwrap_or_else(err)
}

/// Every file at or under `norm`, with its attributes.
fn files_under(ctx: &ControlCtx, norm: &str) -> Result<Vec<(String, Attr)>, NsError> {
    ctx.rt.block_on(ctx.ns.walk(norm, FILES_MAX))
}

/// Block key hashes of `files`, grouped by owning shard.
pub(crate) fn keys_by_shard(ns: &Namespace, files: &[(String, Attr)], shards: usize) -> Vec<Vec<u64>> {
    let mut out = vec![Vec::new(); shards];
    for (path, attr) in files {
        for block in 0..attr.size.div_ceil(ns.block_bytes(path)) {
            out[shard_for(path, block, shards)].push(ns.block_key(path, &attr.version, block).hash);
        }
    }
    out
}

/// Send one command per shard and add up the replies.
fn ask(ctx: &ControlCtx, keys: Vec<Vec<u64>>, make: impl Fn(Vec<u64>, oneshot::Sender<u64>) -> ShardCmd) -> Result<u64, NsError> {
    let mut replies = Vec::new();
    for (shard, k) in keys.into_iter().enumerate() {
        if k.is_empty() {
            continue;
        }
        let (tx, rx) = oneshot::channel();
        ctx.shard_cmds[shard]
            .unbounded_send(make(k, tx))
            .map_err(|_| NsError::Engine(format!("shard {shard} is not running")))?;
        replies.push((shard, rx));
    }
    let mut total = 0;
    for (shard, rx) in replies {
        match ctx.rt.block_on(async { tokio::time::timeout(SHARD_REPLY_TIMEOUT, rx).await }) {
            Ok(Ok(n)) => total += n,
            _ => return Err(NsError::Engine(format!("shard {shard} did not answer"))),
        }
    }
    Ok(total)
}

fn persist(ctx: &ControlCtx, norm: &str, f: impl FnOnce(&mut crate::policy::Rule)) -> Result<(), NsError> {
    ctx.policies
        .update(norm, f)
        .map_err(|e| NsError::Engine(format!("saving policies: {e}")))
}

fn pin(ctx: &ControlCtx, norm: &str, pinned: bool) -> Result<Response, NsError> {
    let files = files_under(ctx, norm)?;
    if pinned {
        // Everything already pinned elsewhere plus this prefix must leave room
        // for the cache to work: at most half of the capacity.
        let mut bytes: u64 = files.iter().map(|(_, a)| a.size).sum();
        for r in ctx.policies.rules().iter().filter(|r| r.pinned && !covers(&r.prefix, norm) && !covers(norm, &r.prefix)) {
            bytes += ctx.ns.known_files_under(&r.prefix).iter().map(|(_, a)| a.size).sum::<u64>();
        }
        let limit = ctx.capacity_bytes / 2;
        if bytes > limit {
            return Err(NsError::NoSpace(format!("pinning {norm} would pin {bytes} bytes, more than half the cache capacity ({limit} bytes)"),
            ));
        }
    }
    persist(ctx, norm, |r| r.pinned = pinned)?;
    // Unpinning a path still covered by a wider pinned prefix keeps its blocks pinned.
    let still = !pinned && ctx.policies.effective(norm).pinned;
    let keys = keys_by_shard(&ctx.ns, &files, ctx.shard_cmds.len());
    let blocks = ask(ctx, keys, |keys, reply| ShardCmd::Pin { keys, pinned: pinned || still, reply })?;
    Ok(Response::Done { files: files.len() as u64, blocks })
}

fn free(ctx: &ControlCtx, norm: &str) -> Result<Response, NsError> {
    let files = files_under(ctx, norm)?;
    let keys = keys_by_shard(&ctx.ns, &files, ctx.shard_cmds.len());
    let blocks = ask(ctx, keys, |keys, reply| ShardCmd::Remove { keys, reply })?;
    Ok(Response::Done { files: files.len() as u64, blocks })
}

fn ttl(ctx: &ControlCtx, norm: &str, secs: Option<u64>) -> Result<Response, NsError> {
    if secs.is_some_and(|s| s as f64 > crate::config::DURATION_SECS_MAX) {
        return Err(NsError::Invalid(format!("ttl of {} s is longer than 100 years (use `never`)", secs.unwrap_or(0))));
    }
    let files = files_under(ctx, norm)?;
    persist(ctx, norm, |r| r.ttl_secs = secs)?;
    let keys = keys_by_shard(&ctx.ns, &files, ctx.shard_cmds.len());
    // Blocks cached before the TTL was set count from now.
    let blocks = ask(ctx, keys.clone(), |keys, reply| ShardCmd::Count { keys, reply })?;
    if let Some(after) = ctx.policies.effective(norm).ttl {
        for (shard, k) in keys.into_iter().enumerate().filter(|(_, k)| !k.is_empty()) {
            let _ = ctx.shard_cmds[shard].unbounded_send(ShardCmd::Expire { keys: k, after });
        }
    }
    Ok(Response::Done { files: files.len() as u64, blocks })
}

fn path_stat(ctx: &ControlCtx, norm: &str) -> Result<PathStats, NsError> {
    let files = files_under(ctx, norm)?;
    let keys = keys_by_shard(&ctx.ns, &files, ctx.shard_cmds.len());
    let blocks: u64 = keys.iter().map(|k| k.len() as u64).sum();
    let cached = ask(ctx, keys, |keys, reply| ShardCmd::Count { keys, reply })?;
    let policy = ctx.policies.effective(norm);
    Ok(PathStats {
        path: norm.to_string(),
        files: files.len() as u64,
        bytes: files.iter().map(|(_, a)| a.size).sum(),
        blocks,
        cached_blocks: cached,
        cached_fraction: if blocks == 0 { 1.0 } else { cached as f64 / blocks as f64 },
        pinned: policy.pinned,
        ttl_secs: policy.ttl.map(|d| d.as_secs()),
    })
}

/// Largest range one `UfsChecksum` reads.
const CHECKSUM_BYTES_MAX: u64 = 64 << 20;

/// Read a range straight from under storage (never from or into the cache)
/// and answer with its checksum: `stoker load --verify` compares it with the
/// same range read through the cache.
fn ufs_checksum(ctx: &ControlCtx, norm: &str, off: u64, len: u64) -> Result<Response, NsError> {
    if len > CHECKSUM_BYTES_MAX {
        return Err(NsError::Invalid(format!("checksum range of {len} bytes is over {CHECKSUM_BYTES_MAX}")));
    }
    let data = ctx
        .rt
        .block_on(ctx.ns.read(norm, off, len))
        .map_err(|e| NsError::Ufs { errno: e.errno(), message: format!("{norm}: {e}") })?;
    Ok(Response::Checksum { len: data.len() as u64, checksum: stoker_proto::control::checksum(&data) })
}

/// After a restart: count the cached blocks of each quota'd mount (as far as
/// the persisted attributes name them) so its quota holds from the start.
pub fn reapply_quotas(ctx: &ControlCtx, quotas: &[(String, u64)]) {
    for (mount, _) in quotas {
        let files = ctx.ns.known_files_under(&format!("/{mount}"));
        let shards = ctx.shard_cmds.len();
        let mut per_shard = vec![Vec::new(); shards];
        for (path, attr) in &files {
            let bs = ctx.ns.block_bytes(path);
            for block in 0..attr.size.div_ceil(bs) {
                let len = (attr.size - block * bs).min(bs);
                per_shard[shard_for(path, block, shards)].push((ctx.ns.block_key(path, &attr.version, block).hash, len));
            }
        }
        for (shard, blocks) in per_shard.into_iter().enumerate().filter(|(_, b)| !b.is_empty()) {
            let _ = ctx.shard_cmds[shard].unbounded_send(ShardCmd::Track { mount: mount.clone(), blocks });
        }
    }
}

/// After a restart: re-apply pins and TTLs to the blocks of files the
/// namespace already knows (from its persisted attributes). TTLs count from
/// the restart.
pub fn reapply(ctx: &ControlCtx) {
    for rule in ctx.policies.rules() {
        let files = ctx.ns.known_files_under(&rule.prefix);
        let keys = keys_by_shard(&ctx.ns, &files, ctx.shard_cmds.len());
        for (shard, k) in keys.into_iter().enumerate().filter(|(_, k)| !k.is_empty()) {
            if rule.pinned {
                let (tx, _) = oneshot::channel();
                let _ = ctx.shard_cmds[shard].unbounded_send(ShardCmd::Pin { keys: k.clone(), pinned: true, reply: tx });
            }
            if let Some(secs) = rule.ttl_secs {
                let _ = ctx.shard_cmds[shard].unbounded_send(ShardCmd::Expire { keys: k, after: Duration::from_secs(secs) });
            }
        }
    }
}
