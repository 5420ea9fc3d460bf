//! The peer protocol over real TCP on 127.0.0.1: blocks come back exact,
//! many at once over one connection; a wrong token gets nothing; an owner
//! past its timeout is an error (the caller then reads under storage), and
//! a server holds at most its in-flight bound per connection. Over mutual
//! TLS (certificates made with the `openssl` command): peers of one CA read
//! blocks and still need the token; a plain peer and a TLS peer, or a
//! certificate of another CA or for another host, get nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stoker_cluster::peer::{serve, serve_tls, BlockRequest, Handler, Limits, PeerBlock, PeerClient, PeerError, ServerCounters};
use stoker_cluster::testing::TestCa;
use stoker_cluster::tls::{server_name, Tls, TlsFiles};
use tokio::net::TcpListener;

fn block_bytes(r: &BlockRequest) -> Vec<u8> {
    let seed = xxhash_rust::xxh3::xxh3_64(format!("{}@{}#{}", r.path, r.version, r.block).as_bytes());
    (0..(100_000 + (seed % 1000) as usize)).map(|i| (seed >> (i % 56)) as u8 ^ i as u8).collect()
}

struct Owner {
    addr: std::net::SocketAddr,
    counters: Arc<ServerCounters>,
    busy: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

async fn owner(token: &str, limits: Limits, delay: Duration) -> Owner {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let counters = Arc::new(ServerCounters::default());
    let (busy, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (b, p) = (busy.clone(), peak.clone());
    let handler: Handler = Arc::new(move |r: BlockRequest| {
        let (b, p) = (b.clone(), p.clone());
        Box::pin(async move {
            let now = b.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            b.fetch_sub(1, Ordering::SeqCst);
            if r.version == "stale" {
                Err((libc_estale(), format!("{} is not at version {}", r.path, r.version)))
            } else {
                let data = if r.preload { Vec::new() } else { block_bytes(&r) };
                Ok(PeerBlock { size: 1 << 30, mtime_ns: 7, version: format!("seen-{}", r.version), data })
            }
        })
    });
    let task = serve(l, Arc::new(token.as_bytes().to_vec()), limits, counters.clone(), handler);
    Owner { addr, counters, busy, peak, _task: task }
}

fn libc_estale() -> i32 {
    116
}

fn req(i: u64) -> BlockRequest {
    BlockRequest { path: format!("/m/d/f{i}.bin"), version: "v1".into(), block: i % 3, preload: false }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_come_back_exact_and_many_at_once() {
    let limits = Limits { in_flight: 8, ..Limits::default() };
    let o = owner("sesame", limits, Duration::from_millis(20)).await;
    let c = Arc::new(PeerClient::connect(o.addr, b"sesame", limits).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { (i, c.read(&req(i)).await) }));
    }
    for t in tasks {
        let (i, got) = t.await.unwrap();
        let got = got.unwrap();
        assert_eq!(got.data, block_bytes(&req(i)), "block {i}");
        // The owner's view of the file comes back with the bytes.
        assert_eq!((got.size, got.mtime_ns, got.version.as_str()), (1 << 30, 7, "seen-v1"));
    }
    assert_eq!(o.counters.requests.load(Ordering::Relaxed), 64);
    // Many were in flight at once over the one connection, never more than the bound.
    let peak = o.peak.load(Ordering::SeqCst);
    assert!((2..=8).contains(&peak), "peak in flight {peak}");
    // An owner's refusal is an error with its errno, and the connection lives on.
    let stale = BlockRequest { version: "stale".into(), ..req(1) };
    match c.read(&stale).await {
        Err(PeerError::Remote { errno, .. }) => assert_eq!(errno, 116),
        other => panic!("expected the owner's ESTALE, got {other:?}"),
    }
    assert_eq!(c.read(&req(5)).await.unwrap().data, block_bytes(&req(5)));
    // A preload brings the attributes and no bytes; an unknown version is sent empty.
    let pre = c.read(&BlockRequest { preload: true, version: String::new(), ..req(6) }).await.unwrap();
    assert!(pre.data.is_empty());
    assert_eq!(pre.version, "seen-");
    assert_eq!(o.busy.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_token_gets_nothing() {
    let o = owner("sesame", Limits::default(), Duration::ZERO).await;
    for bad in [&b"open"[..], b"", b"sesame!"] {
        match PeerClient::connect(o.addr, bad, Limits::default()).await {
            Err(PeerError::Refused(_, why)) => assert!(why.contains("token"), "{why}"),
            Err(e) => panic!("expected a refusal, got {e}"),
            Ok(_) => panic!("a wrong token {bad:?} was admitted"),
        }
    }
    assert_eq!(o.counters.refused.load(Ordering::Relaxed), 3);
    assert_eq!(o.counters.requests.load(Ordering::Relaxed), 0);
    // Garbage instead of a hello: refused too, nothing served.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(o.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(first[0], 1);
    assert_eq!(o.counters.requests.load(Ordering::Relaxed), 0);
}

/// A 4 MiB block (the largest), for paths ending in `.big`.
fn big_block(r: &BlockRequest) -> Vec<u8> {
    (0..4 << 20).map(|i: u32| (i ^ (i >> 9) ^ r.block as u32) as u8).collect()
}

/// An owner serving over mutual TLS (`tls`), answering every request with
/// `block_bytes`, or `big_block` for a `.big` path.
async fn tls_owner(tls: &Tls, token: &str) -> (std::net::SocketAddr, Arc<ServerCounters>, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let counters = Arc::new(ServerCounters::default());
    let handler: Handler = Arc::new(|r: BlockRequest| {
        Box::pin(async move {
            let data = if r.path.ends_with(".big") { big_block(&r) } else { block_bytes(&r) };
            Ok(PeerBlock { size: 1 << 30, mtime_ns: 7, version: r.version.clone(), data })
        })
    });
    let task = serve_tls(l, tls, Arc::new(token.as_bytes().to_vec()), Limits::default(), counters.clone(), handler);
    (addr, counters, task)
}

/// `counter` reaches `n` within 5 s: a failed handshake is counted by the
/// server's task, which may run after the client already saw it fail.
async fn reaches(counter: &std::sync::atomic::AtomicU64, n: u64) {
    let t0 = std::time::Instant::now();
    while counter.load(Ordering::Relaxed) < n && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counter.load(Ordering::Relaxed), n);
}

async fn connect_tls(addr: std::net::SocketAddr, tls: &Tls, token: &[u8]) -> Result<PeerClient, PeerError> {
    PeerClient::connect_tls(addr, server_name(&addr.to_string()).unwrap(), tls, token, Limits::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_peers_of_one_ca_read_blocks_and_the_token_still_applies() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let a = ca.node("a", "IP:127.0.0.1").load().unwrap();
    let b = ca.node("b", "IP:127.0.0.1").load().unwrap();
    let (addr, counters, _task) = tls_owner(&a, "sesame").await;
    let c = Arc::new(connect_tls(addr, &b, b"sesame").await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { (i, c.read(&req(i)).await) }));
    }
    for t in tasks {
        let (i, got) = t.await.unwrap();
        assert_eq!(got.unwrap().data, block_bytes(&req(i)), "block {i}");
    }
    // 4 MiB answers, one at a time: each arrives whole (a TLS write must be
    // flushed, or its tail waits in the TLS buffer for the next write).
    for b in 0..4 {
        let r = BlockRequest { path: "/m/x.big".into(), version: "v1".into(), block: b, preload: false };
        assert!(c.read(&r).await.unwrap().data == big_block(&r), "big block {b}");
    }
    assert_eq!(counters.requests.load(Ordering::Relaxed), 36);
    assert_eq!(counters.refused.load(Ordering::Relaxed), 0);
    // TLS admits the node; the token still decides the cluster.
    match connect_tls(addr, &b, b"open").await {
        Err(PeerError::Refused(_, why)) => assert!(why.contains("token"), "{why}"),
        other => panic!("a wrong token over TLS: expected a refusal, got {:?}", other.err()),
    }
    assert_eq!(counters.refused.load(Ordering::Relaxed), 1);
    // The client checks the server's name: a certificate for another host is refused.
    let elsewhere = ca.node("elsewhere", "DNS:elsewhere.example,IP:10.9.9.9").load().unwrap();
    let (addr2, counters2, _task2) = tls_owner(&elsewhere, "sesame").await;
    let err = connect_tls(addr2, &b, b"sesame").await.err().expect("a server certificate for another name was accepted");
    assert!(err.to_string().contains("TLS handshake"), "{err}");
    assert_eq!(counters2.requests.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_peer_and_a_tls_peer_cannot_talk() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let tls = ca.node("a", "IP:127.0.0.1").load().unwrap();
    // Plain TCP against a TLS owner: no hello is ever read, the handshake is refused.
    let (addr, counters, _task) = tls_owner(&tls, "t").await;
    assert!(PeerClient::connect(addr, b"t", Limits::default()).await.is_err(), "a plain client was admitted by a TLS owner");
    reaches(&counters.refused, 1).await;
    assert_eq!(counters.requests.load(Ordering::Relaxed), 0);
    // TLS against a plain owner: its ClientHello is no hello, refused.
    let plain = owner("t", Limits::default(), Duration::ZERO).await;
    assert!(connect_tls(plain.addr, &tls, b"t").await.is_err(), "a TLS client was admitted by a plain owner");
    assert_eq!(plain.counters.refused.load(Ordering::Relaxed), 1);
    assert_eq!(plain.counters.requests.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_is_refused_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (TestCa::new(dir.path(), "ours"), TestCa::new(dir.path(), "theirs"));
    let server = ours.node("a", "IP:127.0.0.1").load().unwrap();
    let (addr, counters, _task) = tls_owner(&server, "t").await;
    // A client whose certificate another CA signed (it trusts ours, so it
    // accepts the server): the server refuses it, and it is never served.
    let mut stranger = theirs.node("x", "IP:127.0.0.1");
    stranger.ca = ours.cert();
    let stranger = stranger.load().unwrap();
    let got = match connect_tls(addr, &stranger, b"t").await {
        Ok(c) => c.read(&req(1)).await.map(drop),
        Err(e) => Err(e),
    };
    assert!(got.is_err(), "a client certificate of another CA was admitted");
    // A client that trusts only the other CA refuses our server.
    let wary = theirs.node("y", "IP:127.0.0.1").load().unwrap();
    let err = connect_tls(addr, &wary, b"t").await.err().expect("a server certificate of another CA was accepted");
    assert!(err.to_string().contains("TLS handshake"), "{err}");
    reaches(&counters.refused, 2).await;
    assert_eq!(counters.requests.load(Ordering::Relaxed), 0);
}

#[test]
fn bad_tls_files_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let good = ca.node("a", "IP:127.0.0.1");
    let other = ca.node("b", "IP:127.0.0.1");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let cases = [
        (TlsFiles { cert: missing.clone(), ..good.clone() }, "cluster TLS certificate", "No such file"),
        (TlsFiles { key: missing.clone(), ..good.clone() }, "cluster TLS key", "No such file"),
        (TlsFiles { ca: missing.clone(), ..good.clone() }, "cluster TLS CA", "No such file"),
        (TlsFiles { cert: garbage.clone(), ..good.clone() }, "cluster TLS certificate", "no PEM certificate"),
        (TlsFiles { ca: garbage.clone(), ..good.clone() }, "cluster TLS CA", "no PEM certificate"),
        (TlsFiles { key: good.cert.clone(), ..good.clone() }, "cluster TLS key", "no PEM private key"),
        (TlsFiles { key: other.key.clone(), ..good.clone() }, "cluster TLS key", "cannot be used with certificate"),
    ];
    for (files, what, why) in cases {
        let err = files.load().err().unwrap_or_else(|| panic!("{files:?} loaded")).to_string();
        assert!(err.starts_with(what) && err.contains(why) && !err.contains('\n'), "{files:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_owner_times_out_and_a_dead_one_fails_fast() {
    let limits = Limits { timeout: Duration::from_millis(300), ..Limits::default() };
    let o = owner("t", limits, Duration::from_secs(5)).await;
    let c = PeerClient::connect(o.addr, b"t", limits).await.unwrap();
    let t0 = std::time::Instant::now();
    assert!(matches!(c.read(&req(1)).await, Err(PeerError::Timeout(..))));
    assert!(t0.elapsed() < Duration::from_secs(3), "the timeout did not bound the wait");
    // Nobody listening: connect fails at once.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    assert!(matches!(PeerClient::connect(gone, b"t", limits).await, Err(PeerError::Io(..))));
}
