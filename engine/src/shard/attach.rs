//! Attaching a client's stream to this shard and serving its ring: the
//! session id handshake, the doorbell in both directions, one task per
//! request (bounded by the ring size), the answer into the completion ring.

use super::session::SessionArea;
use super::Shard;
use futures::channel::mpsc;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};
use glommio::net::UnixStream;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use stoker_proto::ring::{CqEntry, Producer, SqEntry};

/// How long a new shard connection may take to send its session id.
const ATTACH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A client connected to this shard's socket: it sends its session id, and
/// the stream becomes the doorbell in both directions.
pub(super) async fn attach(shard: Rc<Shard>, mut stream: UnixStream) {
    let id = {
        let read = async {
            let mut id = [0u8; 8];
            stream.read_exact(&mut id).await.map(|()| u64::from_le_bytes(id))
        }
        .fuse();
        let late = glommio::timer::sleep(ATTACH_TIMEOUT).fuse();
        futures::pin_mut!(read, late);
        futures::select! {
            r = read => match r {
                Ok(id) => id,
                Err(_) => return,
            },
            _ = late => {
                tracing::debug!(shard = shard.id, "shard connection sent no session id in time");
                return;
            }
        }
    };
    let Some(area) = shard.registry.lock().get(&id).cloned() else {
        tracing::warn!(shard = shard.id, session = id, "unknown session on shard socket");
        return;
    };
    // One stream per session per shard: a second would be a second consumer
    // of the same SQ.
    let Some(_attached) = Attached::new(&shard, id) else {
        tracing::warn!(shard = shard.id, session = id, "session attached twice to one shard; refused");
        return;
    };
    // SAFETY: one session stream per shard per session (`Attached`): this
    // task is the only consumer of the SQ and (through `cq`) the only
    // producer of the CQ.
    let (mut sq, cq) = unsafe { (area.sq(shard.id), area.cq(shard.id)) };
    let cq = Rc::new(RefCell::new(cq));
    // A client keeps at most ring_entries requests in flight per shard (so
    // its CQ never overflows); one that posts more waits here for answers
    // instead of growing this shard's task list without bound.
    let slots = Rc::new(glommio::sync::Semaphore::new(area.layout().ring_entries as u64));
    let (mut rd, mut wr) = stream.split();
    // Completions ring the client's bell through one writer task; a full
    // channel means a ring is already pending, which covers this completion.
    let (bell, mut bells) = mpsc::channel::<()>(1);
    glommio::spawn_local(async move {
        while bells.next().await.is_some() {
            if wr.write_all(&[1]).await.is_err() {
                break;
            }
        }
    })
    .detach();
    let mut buf = [0u8; 256];
    'session: loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match sq.pop() {
                Ok(Some(req)) => {
                    let permit = match slots.try_acquire_static_permit(1) {
                        Ok(p) => p,
                        Err(_) => {
                            shard.counters.session_inflight_limited.fetch_add(1, Relaxed);
                            match slots.acquire_static_permit(1).await {
                                Ok(p) => p,
                                Err(_) => break 'session,
                            }
                        }
                    };
                    let task = serve(shard.clone(), area.clone(), req, cq.clone(), bell.clone());
                    glommio::spawn_local(async move {
                        task.await;
                        drop(permit);
                    })
                    .detach();
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(shard = shard.id, session = id, "client corrupted its ring; closing session");
                    break 'session;
                }
            }
        }
    }
    tracing::debug!(shard = shard.id, session = id, "session closed");
}

/// Marks a session attached to this shard for as long as it lives.
struct Attached {
    shard: Rc<Shard>,
    id: u64,
}

impl Attached {
    fn new(shard: &Rc<Shard>, id: u64) -> Option<Attached> {
        shard.attached.borrow_mut().insert(id).then(|| Attached { shard: shard.clone(), id })
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.shard.attached.borrow_mut().remove(&self.id);
    }
}

async fn serve(
    shard: Rc<Shard>,
    area: Arc<SessionArea>,
    req: SqEntry,
    cq: Rc<RefCell<Producer<CqEntry>>>,
    mut bell: mpsc::Sender<()>,
) {
    shard.counters.inflight_requests.fetch_add(1, Relaxed);
    let cqe = match shard.read(&area, &req).await {
        Ok((len, object_size)) => {
            CqEntry { req_id: req.req_id, result: len as i64, data_off: req.buf_off, object_size }
        }
        Err(e) => {
            if !matches!(e, crate::namespace::NsError::NotFound(_) | crate::namespace::NsError::IsDir(_) | crate::namespace::NsError::Invalid(_) | crate::namespace::NsError::Again(_)) {
                tracing::warn!(shard = shard.id, error = %e, "read failed");
            }
            CqEntry { req_id: req.req_id, result: -(e.errno() as i64), data_off: 0, object_size: 0 }
        }
    };
    shard.counters.inflight_requests.fetch_sub(1, Relaxed);
    match cq.borrow_mut().push(cqe) {
        Ok(true) => {}
        // The client keeps at most ring_entries requests in flight per shard,
        // so a full or corrupt CQ means it broke the protocol: drop the answer.
        _ => tracing::warn!(shard = shard.id, session = area.id, "completion ring full or corrupt"),
    }
    let _ = bell.try_send(());
}
