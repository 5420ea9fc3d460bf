//! The control socket: handshake (the client's shared area arrives here as a
//! memfd over SCM_RIGHTS), stat, list and engine statistics.
//!
//! Control traffic is rare, so each connection gets a plain thread with
//! blocking I/O; namespace calls are run on the tokio runtime with
//! `Handle::block_on`. The data path never comes through here. What a
//! client can make this server hold is bounded in `control_limits`, and who
//! may connect is decided in `peer`.

use crate::server::control_limits::{self as limits, FrameError, Refuser, Slot};
use crate::server::ctx::{engine_stats, ControlCtx};
use crate::namespace::{normalise, NsError};
use crate::shard::session::SessionArea;
use crate::shard::Registry;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use stoker_proto::control::{write_frame, DirEntry, Request, Response, Welcome};

/// Files one `Walk` answers with at most (the answer must fit one frame).
const WALK_FILES_MAX: usize = 1_000_000;

/// Accept control connections until `ctx.stopping` is set (the engine then
/// connects once to wake the accept call).
pub fn serve(listener: UnixListener, ctx: Arc<ControlCtx>) {
    let refuser = match Refuser::start() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the control refusal thread");
            return;
        }
    };
    let mut backoff = limits::ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = listener.accept();
        if ctx.stopping.load(Ordering::Acquire) {
            break;
        }
        let conn = match accepted {
            Ok((conn, _)) => {
                backoff = limits::ACCEPT_BACKOFF_MIN;
                conn
            }
            Err(e) => {
                let n = ctx.limits.accept_errors.fetch_add(1, Ordering::Relaxed) + 1;
                if limits::worth_logging(n) {
                    tracing::warn!(error = %e, count = n, "control accept failed; backing off");
                }
                // Out of descriptors or memory: the pending connection stays
                // queued and accept would fail again at once. Wait instead.
                if limits::is_shortage(&e) {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(limits::ACCEPT_BACKOFF_MAX);
                }
                continue;
            }
        };
        if let Err(message) = admit(&conn, &ctx) {
            let n = ctx.limits.refused_peers.fetch_add(1, Ordering::Relaxed) + 1;
            if limits::worth_logging(n) {
                tracing::warn!(count = n, "{message}");
            }
            refuser.refuse(conn, libc::EACCES, message);
            continue;
        }
        let Some(slot) = Slot::take(&ctx.limits, ctx.connections_max) else {
            let n = ctx.limits.refused_connections.fetch_add(1, Ordering::Relaxed) + 1;
            let message = format!(
                "too many control connections (--control-connections {}); try again later",
                ctx.connections_max
            );
            if limits::worth_logging(n) {
                tracing::warn!(count = n, "{message}");
            }
            refuser.refuse(conn, libc::EAGAIN, message);
            continue;
        };
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("stoker-control".into())
            .spawn(move || connection(conn, ctx, slot));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a control thread");
        }
    }
}

/// Check the peer's credentials; the error is the line it is refused with.
fn admit(conn: &UnixStream, ctx: &ControlCtx) -> Result<(), String> {
    let creds = crate::server::peer::creds(conn).map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    if ctx.peers.admits(&creds) {
        Ok(())
    } else {
        Err(ctx.peers.refusal(&creds))
    }
}

fn error(e: NsError) -> Response {
    Response::Error { errno: e.errno(), message: e.to_string() }
}

fn connection(mut conn: UnixStream, ctx: Arc<ControlCtx>, _slot: Slot) {
    let mut my_sessions = Vec::new();
    if let Err(e) = conn.set_write_timeout(Some(ctx.io_timeout)) {
        tracing::warn!(error = %e, "control socket: cannot set a write timeout");
        return;
    }
    loop {
        let (req, fds, payload) = match limits::recv_request(&mut conn, ctx.io_timeout) {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                ctx.limits.count_drop(&e);
                if !matches!(e, FrameError::BadFrame(_)) {
                    tracing::debug!(error = ?e, "dropping a control connection");
                }
                let _ = write_frame(&mut conn, &limits::drop_answer(&e));
                break;
            }
        };
        // Only a Hello takes a descriptor (its shared area); any other is closed now.
        let mut fds = limits::keep_fds(fds, usize::from(matches!(req, Request::Hello { .. })), &ctx.limits);
        let resp = match req {
            Request::Hello { version, .. } if version != stoker_proto::PROTOCOL_VERSION => Response::Error {
                errno: libc::EPROTO,
                message: format!("client speaks protocol {version}, engine {}", stoker_proto::PROTOCOL_VERSION),
            },
            Request::Hello { .. } => match fds.pop() {
                None => Response::Error { errno: libc::EINVAL, message: "hello without a shared area".into() },
                Some(fd) => {
                    let id = session_token(&ctx.registry);
                    ctx.sessions_opened.fetch_add(1, Ordering::Relaxed);
                    match SessionArea::from_fd(id, fd, ctx.counters.len() as u32) {
                        Ok(area) => {
                            let ring_entries = area.layout().ring_entries;
                            ctx.registry.lock().insert(id, Arc::new(area));
                            ctx.sessions.fetch_add(1, Ordering::Relaxed);
                            my_sessions.push(id);
                            Response::Welcome(Welcome {
                                session: id,
                                shards: ctx.counters.len() as u32,
                                block_bytes: ctx.block_bytes,
                                mount_block_bytes: ctx.ns.mount_block_bytes(),
                                ring_entries,
                                shard_sockets: (0..ctx.counters.len())
                                    .map(|s| stoker_proto::shard_socket_path(&ctx.socket, s))
                                    .collect(),
                            })
                        }
                        Err(m) => Response::Error { errno: libc::EINVAL, message: m },
                    }
                }
            },
            Request::Stat { path } => match normalise(&path) {
                None => error(NsError::Invalid(format!("bad path {path:?}: must start with /"))),
                Some(p) => ctx.rt.block_on(ctx.ns.stat(&p)).map(Response::Attr).unwrap_or_else(error),
            },
            Request::List { path } => match normalise(&path) {
                None => error(NsError::Invalid(format!("bad path {path:?}: must start with /"))),
                Some(p) => ctx
                    .rt
                    .block_on(ctx.ns.list(&p))
                    .map(|l| Response::Entries { entries: l.as_ref().clone() })
                    .unwrap_or_else(error),
            },
            Request::Walk { path } => match normalise(&path) {
                None => error(NsError::Invalid(format!("bad path {path:?}: must start with /"))),
                Some(p) => ctx
                    .rt
                    .block_on(ctx.ns.walk(&p, WALK_FILES_MAX))
                    .map(|files| Response::Entries {
                        entries: files.into_iter().map(|(name, attr)| DirEntry { name, attr }).collect(),
                    })
                    .unwrap_or_else(error),
            },
            Request::EngineStat => Response::Stats(engine_stats(&ctx)),
            // These answers carry descriptors: sent here, not below.
            Request::DirectTable | Request::SegmentFd { .. } => {
                let sent = match (&ctx.direct, req) {
                    (Some(d), Request::SegmentFd { shard, seg_id }) => d.send_segment(&conn, shard, seg_id),
                    (Some(d), _) => d.send_areas(&conn),
                    (None, _) => write_frame(&mut conn, &Response::Error { errno: libc::EOPNOTSUPP, message: "direct reads are off".into() }),
                };
                if sent.is_err() {
                    break;
                }
                continue;
            }
            r @ (Request::Create { .. }
            | Request::Write { .. }
            | Request::Close { .. }
            | Request::Fsync { .. }
            | Request::Abort { .. }
            | Request::Unlink { .. }
            | Request::Mkdir { .. }
            | Request::Rename { .. }
            | Request::Rmdir { .. }
            | Request::Sync { .. }) => crate::server::writes::handle(&ctx, r, &payload),
            r @ (Request::Pin { .. }
            | Request::Unpin { .. }
            | Request::Free { .. }
            | Request::Ttl { .. }
            | Request::PathStat { .. }
            | Request::UfsChecksum { .. }) => crate::server::admin::handle(&ctx, r),
        };
        if let Err(e) = write_frame(&mut conn, &resp) {
            if limits::is_timeout(&e) {
                ctx.limits.count_drop(&FrameError::Timeout);
            }
            break;
        }
    }
    // The shards keep the areas alive until their own streams close.
    let mut reg = ctx.registry.lock();
    for id in my_sessions {
        if reg.remove(&id).is_some() {
            ctx.sessions.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A new session id: 64 random bits from the kernel, never 0 and never an
/// id in use. The id is the capability a client presents on the shard
/// sockets (which cannot check the peer's credentials: docs/SECURITY.md),
/// so it is handed out only to an admitted control connection and cannot
/// be guessed by another process.
pub fn session_token(registry: &Registry) -> u64 {
    loop {
        let mut b = [0u8; 8];
        // SAFETY: `b` is writable for its 8 bytes; flags 0 = the urandom pool,
        // which blocks only before the pool is first initialised at boot.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        let id = if n == 8 {
            u64::from_le_bytes(b)
        } else {
            // getrandom cannot fail on Linux >= 3.17 with a valid buffer;
            // fall back to a hash of the clock rather than refusing the session.
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            crc32c::crc32c(&t.as_nanos().to_le_bytes()) as u64 | (u64::from(std::process::id()) << 32)
        };
        if id != 0 && !registry.lock().contains_key(&id) {
            return id;
        }
    }
}
