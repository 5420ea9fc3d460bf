//! Peer reads: one node asks a block's owner for it over TCP.
//!
//! Protocol (all integers little-endian), one connection per pair of nodes,
//! requests multiplexed by id:
//!
//! - hello, client → server: `b"STKP"`, version `u16`, token length `u16`,
//!   the token. The server answers one byte, 0 = admitted; anything else is
//!   followed by a `u16` length and a message, and the connection is closed.
//!   An unauthenticated peer gets nothing else.
//! - request: `u32` length, then `id u64`, `block u64`, flags `u8` (bit 0:
//!   preload — fetch and keep the block, send no bytes back), path length
//!   `u16`, path, version length `u16`, version (the requester's version
//!   token of the file, empty when it does not know the file yet; the owner
//!   refuses a block of another version).
//! - answer: `u32` length, then `id u64`, status `u8` (0 ok, else an errno);
//!   ok: the file's `size u64`, `mtime_ns i64`, version length `u16`,
//!   version, then the block's bytes (none for a preload); else a message.
//!   The attributes let a node that has not seen the file yet ask the owner
//!   at once, instead of asking under storage for them first.
//!
//! Bounds: frames of at most `FRAME_MAX`; `Limits::connections` connections
//! per server; `Limits::in_flight` requests per connection (the server stops
//! reading a connection that has that many unanswered); every read of a
//! started frame, and every request as seen by the client, has a timeout.
//! A client request that fails or times out is an error the caller answers
//! by reading under storage itself: a peer never fails a read.
//!
//! Transport: plain TCP (`serve`, `PeerClient::connect`), or mutual TLS
//! around it (`serve_tls`, `PeerClient::connect_tls`, crate::tls): the TLS
//! handshake comes first, within the same timeout as the hello, and the
//! hello with its token then runs inside TLS. A failed handshake is
//! counted as refused. A TLS node and a plain one cannot talk: each sees
//! the other's first bytes as garbage and refuses.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use crate::tls::Tls;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};

const MAGIC: &[u8; 4] = b"STKP";
const VERSION: u16 = 2;
/// Largest frame either side accepts: a 4 MiB block and its header.
pub const FRAME_MAX: usize = (4 << 20) + 64 * 1024;
const PATH_MAX: usize = 4096;
/// Longest cluster token accepted.
pub const TOKEN_MAX: usize = 1024;

/// One block asked of its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRequest {
    pub path: String,
    /// The version the asker has seen; empty: whatever the owner sees.
    pub version: String,
    pub block: u64,
    /// Fetch and keep it, send no bytes (a distributed `stoker load`).
    pub preload: bool,
}

/// An owner's answer: the file's attributes as the owner sees them, and
/// the block's bytes (empty for a preload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerBlock {
    pub size: u64,
    pub mtime_ns: i64,
    pub version: String,
    pub data: Vec<u8>,
}

const PRELOAD: u8 = 1;
/// Smallest request body: id, block, flags and two lengths.
const REQUEST_MIN: usize = 8 + 8 + 1 + 2 + 2;
/// Smallest answer body: id and status.
const ANSWER_MIN: usize = 9;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {0}: refused: {1}")]
    Refused(SocketAddr, String),
    #[error("peer {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("peer {0}: no answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("peer {0}: bad frame: {1}")]
    Protocol(SocketAddr, &'static str),
    #[error("peer {addr}: errno {errno}: {message}")]
    Remote { addr: SocketAddr, errno: i32, message: String },
}

/// What a server's owner does with a request: the block's bytes, or an
/// errno and a message.
pub type Served = Result<PeerBlock, (i32, String)>;
pub type Handler = Arc<dyn Fn(BlockRequest) -> Pin<Box<dyn Future<Output = Served> + Send>> + Send + Sync>;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub connections: usize,
    pub in_flight: usize,
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { connections: 256, in_flight: 64, timeout: Duration::from_secs(10) }
    }
}

/// Counters of a server, for `stoker stat` and metrics.
#[derive(Default, Debug)]
pub struct ServerCounters {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub refused: AtomicU64,
}

/// Constant-time comparison: a token is not leaked one byte at a time.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A connection's byte stream: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// Write all of `b` and flush it: a TLS stream may keep the tail of a write
/// in its buffer until flushed (for TCP the flush is free).
async fn send<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, b: &[u8]) -> std::io::Result<()> {
    w.write_all(b).await?;
    w.flush().await
}

/// Serve peers on `listener` over plain TCP until the returned task is aborted.
pub fn serve(listener: TcpListener, token: Arc<Vec<u8>>, limits: Limits, counters: Arc<ServerCounters>, handler: Handler) -> tokio::task::JoinHandle<()> {
    serve_with(listener, None, token, limits, counters, handler)
}

/// Serve peers on `listener` over mutual TLS (`tls`) until the returned task
/// is aborted: a peer without a certificate signed by the CA, or that does
/// not speak TLS, is refused before its hello is read.
pub fn serve_tls(listener: TcpListener, tls: &Tls, token: Arc<Vec<u8>>, limits: Limits, counters: Arc<ServerCounters>, handler: Handler) -> tokio::task::JoinHandle<()> {
    serve_with(listener, Some(tokio_rustls::TlsAcceptor::from(tls.server.clone())), token, limits, counters, handler)
}

fn serve_with(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    token: Arc<Vec<u8>>,
    limits: Limits,
    counters: Arc<ServerCounters>,
    handler: Handler,
) -> tokio::task::JoinHandle<()> {
    let conns = Arc::new(Semaphore::new(limits.connections));
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = conns.clone().try_acquire_owned() else {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                if tls.is_some() {
                    // A plain refusal would only garble a TLS handshake: just close.
                    continue;
                }
                let mut s = stream;
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(1), s.write_all(&refusal("too many peer connections"))).await;
                });
                continue;
            };
            let (token, counters, handler, tls) = (token.clone(), counters.clone(), handler.clone(), tls.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let _ = stream.set_nodelay(true);
                let ended = match tls {
                    None => connection(stream, &token, limits, counters, handler).await,
                    // The handshake, within the hello's timeout; a failed one is a refusal.
                    Some(tls) => match tokio::time::timeout(limits.timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => connection(stream, &token, limits, counters, handler).await,
                        Ok(Err(e)) => refused_handshake(&counters, e),
                        Err(_) => refused_handshake(&counters, std::io::Error::new(std::io::ErrorKind::TimedOut, "no TLS handshake within the timeout")),
                    },
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "peer connection ended");
                }
            });
        }
    })
}

fn refused_handshake(counters: &ServerCounters, e: std::io::Error) -> std::io::Result<()> {
    counters.refused.fetch_add(1, Ordering::Relaxed);
    Err(std::io::Error::new(e.kind(), format!("TLS handshake refused: {e}")))
}

/// A refusal as sent: a non-zero byte, then the reason.
fn refusal(why: &str) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&(why.len() as u16).to_le_bytes());
    out.extend_from_slice(why.as_bytes());
    out
}

async fn connection<S: Stream + 'static>(stream: S, token: &[u8], limits: Limits, counters: Arc<ServerCounters>, handler: Handler) -> std::io::Result<()> {
    let (mut rd, wr) = tokio::io::split(stream);
    // The hello, within the timeout.
    let hello = tokio::time::timeout(limits.timeout, async {
        let mut head = [0u8; 8];
        rd.read_exact(&mut head).await?;
        let len = u16::from_le_bytes([head[6], head[7]]) as usize;
        if &head[..4] != MAGIC || len > TOKEN_MAX {
            // Not our protocol: refuse now rather than wait for bytes that never come.
            return Ok((head, Vec::new()));
        }
        let mut t = vec![0u8; len];
        rd.read_exact(&mut t).await?;
        Ok::<_, std::io::Error>((head, t))
    })
    .await;
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let ok = matches!(&hello, Ok(Ok((head, t))) if !t.is_empty() && &head[..4] == MAGIC && u16::from_le_bytes([head[4], head[5]]) == VERSION && same(t, token));
    if !ok {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        let out = refusal("bad cluster token or protocol (--cluster-token-file must match on every node)");
        let _ = tokio::time::timeout(limits.timeout, send(&mut *wr.lock().await, &out)).await;
        return Ok(());
    }
    send(&mut *wr.lock().await, &[0]).await?;
    let slots = Arc::new(Semaphore::new(limits.in_flight));
    loop {
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        let mut len = [0u8; 4];
        // Idle connections wait as long as they like; a started frame must finish.
        if rd.read_exact(&mut len).await.is_err() {
            return Ok(());
        }
        let len = u32::from_le_bytes(len) as usize;
        if !(REQUEST_MIN..=PATH_MAX * 2 + 32).contains(&len) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "request frame of a bad size"));
        }
        let mut body = vec![0u8; len];
        tokio::time::timeout(limits.timeout, rd.read_exact(&mut body))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "half a request"))??;
        let Some((id, req)) = decode_request(&body) else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "bad request"));
        };
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let (wr, handler, counters) = (wr.clone(), handler.clone(), counters.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let answer = handler(req).await;
            match &answer {
                Ok(b) => counters.bytes.fetch_add(b.data.len() as u64, Ordering::Relaxed),
                Err(_) => counters.errors.fetch_add(1, Ordering::Relaxed),
            };
            let out = encode_answer(id, &answer);
            let mut w = wr.lock().await;
            // A peer that stops reading holds the connection's write lock for at most the timeout.
            let _ = tokio::time::timeout(limits.timeout, send(&mut *w, &out)).await;
        });
    }
}

/// A little-endian reader over a frame body; None past its end.
struct Frame<'a>(&'a [u8]);

impl<'a> Frame<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn str(&mut self, max: usize) -> Option<String> {
        let n = self.u16()? as usize;
        if n > max {
            return None;
        }
        Some(std::str::from_utf8(self.take(n)?).ok()?.to_string())
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn decode_request(b: &[u8]) -> Option<(u64, BlockRequest)> {
    let mut f = Frame(b);
    let id = f.u64()?;
    let block = f.u64()?;
    let flags = f.take(1)?[0];
    let path = f.str(PATH_MAX)?;
    let version = f.str(PATH_MAX)?;
    if !f.0.is_empty() || flags & !PRELOAD != 0 {
        return None;
    }
    Some((id, BlockRequest { path, version, block, preload: flags & PRELOAD != 0 }))
}

fn encode_request(id: u64, r: &BlockRequest) -> Vec<u8> {
    let len = REQUEST_MIN + r.path.len() + r.version.len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&r.block.to_le_bytes());
    out.push(if r.preload { PRELOAD } else { 0 });
    put_str(&mut out, &r.path);
    put_str(&mut out, &r.version);
    out
}

fn encode_answer(id: u64, answer: &Served) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + answer.as_ref().map_or(0, |b| b.data.len()));
    body.extend_from_slice(&id.to_le_bytes());
    match answer {
        Ok(b) => {
            body.push(0);
            body.extend_from_slice(&b.size.to_le_bytes());
            body.extend_from_slice(&b.mtime_ns.to_le_bytes());
            put_str(&mut body, &b.version);
            body.extend_from_slice(&b.data);
        }
        Err((errno, msg)) => {
            body.push((*errno).clamp(1, 255) as u8);
            body.extend_from_slice(msg.as_bytes());
        }
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// An answer's request id and what it says; None for a malformed frame.
fn decode_answer(body: &[u8]) -> Option<(u64, Served)> {
    let mut f = Frame(body);
    let id = f.u64()?;
    let status = f.take(1)?[0];
    if status != 0 {
        return Some((id, Err((i32::from(status), String::from_utf8_lossy(f.0).into_owned()))));
    }
    let size = f.u64()?;
    let mtime_ns = f.u64()? as i64;
    let version = f.str(PATH_MAX)?;
    Some((id, Ok(PeerBlock { size, mtime_ns, version, data: f.0.to_vec() })))
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Served>>>>;

/// A connection to one peer, shared by every reader on this node.
pub struct PeerClient {
    addr: SocketAddr,
    limits: Limits,
    wr: tokio::sync::Mutex<tokio::io::WriteHalf<Box<dyn Stream>>>,
    waiters: Waiters,
    next: AtomicU64,
    slots: Semaphore,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for PeerClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl PeerClient {
    /// Connect over plain TCP and authenticate, within `limits.timeout`.
    pub async fn connect(addr: SocketAddr, token: &[u8], limits: Limits) -> Result<PeerClient, PeerError> {
        PeerClient::connect_with(addr, None, token, limits).await
    }

    /// Connect over mutual TLS, checking the server's certificate against
    /// `tls`'s CA and `name` (crate::tls::server_name of the address it
    /// advertises), then authenticate; the handshake and the hello each
    /// within `limits.timeout`.
    pub async fn connect_tls(addr: SocketAddr, name: ServerName<'static>, tls: &Tls, token: &[u8], limits: Limits) -> Result<PeerClient, PeerError> {
        PeerClient::connect_with(addr, Some((tls, name)), token, limits).await
    }

    async fn connect_with(addr: SocketAddr, tls: Option<(&Tls, ServerName<'static>)>, token: &[u8], limits: Limits) -> Result<PeerClient, PeerError> {
        let t = limits.timeout;
        let io = |e| PeerError::Io(addr, e);
        let tcp = tokio::time::timeout(t, TcpStream::connect(addr)).await.map_err(|_| PeerError::Timeout(addr, t))?.map_err(io)?;
        let _ = tcp.set_nodelay(true);
        let mut s: Box<dyn Stream> = match tls {
            None => Box::new(tcp),
            Some((tls, name)) => {
                let handshake = tokio_rustls::TlsConnector::from(tls.client.clone()).connect(name, tcp);
                let tls = tokio::time::timeout(t, handshake)
                    .await
                    .map_err(|_| PeerError::Timeout(addr, t))?
                    .map_err(|e| PeerError::Io(addr, std::io::Error::new(e.kind(), format!("TLS handshake: {e}"))))?;
                Box::new(tls)
            }
        };
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&VERSION.to_le_bytes());
        hello.extend_from_slice(&(token.len() as u16).to_le_bytes());
        hello.extend_from_slice(token);
        let answer = tokio::time::timeout(t, async {
            send(&mut s, &hello).await?;
            let mut ok = [0u8; 1];
            s.read_exact(&mut ok).await?;
            if ok[0] == 0 {
                return Ok(None);
            }
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await?;
            let mut m = vec![0u8; u16::from_le_bytes(l) as usize];
            s.read_exact(&mut m).await?;
            Ok::<_, std::io::Error>(Some(String::from_utf8_lossy(&m).into_owned()))
        })
        .await
        .map_err(|_| PeerError::Timeout(addr, t))?
        .map_err(io)?;
        if let Some(why) = answer {
            return Err(PeerError::Refused(addr, why));
        }
        let (mut rd, wr) = tokio::io::split(s);
        let waiters: Waiters = Arc::default();
        let w = waiters.clone();
        let reader = tokio::spawn(async move {
            loop {
                let mut len = [0u8; 4];
                if rd.read_exact(&mut len).await.is_err() {
                    break;
                }
                let len = u32::from_le_bytes(len) as usize;
                if !(ANSWER_MIN..=FRAME_MAX).contains(&len) {
                    break;
                }
                let mut body = vec![0u8; len];
                if rd.read_exact(&mut body).await.is_err() {
                    break;
                }
                let Some((id, answer)) = decode_answer(&body) else { break };
                if let Some(tx) = w.lock().expect("not poisoned").remove(&id) {
                    let _ = tx.send(answer);
                }
            }
            // The connection is gone: every waiter learns it now.
            w.lock().expect("not poisoned").clear();
        });
        Ok(PeerClient {
            addr,
            limits,
            wr: tokio::sync::Mutex::new(wr),
            waiters,
            next: AtomicU64::new(1),
            slots: Semaphore::new(limits.in_flight),
            reader,
        })
    }

    /// Whether the connection still stands (a new one is needed otherwise).
    pub fn is_open(&self) -> bool {
        !self.reader.is_finished()
    }

    /// Ask for one block; an error means "read it from under storage".
    pub async fn read(&self, req: &BlockRequest) -> Result<PeerBlock, PeerError> {
        let t = self.limits.timeout;
        let addr = self.addr;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let work = async {
            let _slot = self.slots.acquire().await.expect("never closed");
            let (tx, rx) = oneshot::channel();
            self.waiters.lock().expect("not poisoned").insert(id, tx);
            let frame = encode_request(id, req);
            if let Err(e) = send(&mut *self.wr.lock().await, &frame).await {
                self.waiters.lock().expect("not poisoned").remove(&id);
                return Err(PeerError::Io(addr, e));
            }
            let r = rx.await.map_err(|_| PeerError::Protocol(addr, "connection closed"));
            r?.map_err(|(errno, message)| PeerError::Remote { addr, errno, message })
        };
        match tokio::time::timeout(t, work).await {
            Ok(r) => r,
            Err(_) => {
                // A late answer finds no waiter and is dropped.
                self.waiters.lock().expect("not poisoned").remove(&id);
                Err(PeerError::Timeout(addr, t))
            }
        }
    }
}
