//! The peer protocol over real TCP on 127.0.0.1: blocks come back exact,
//! many at once over one connection; a wrong token gets nothing; an owner
//! past its timeout is an error (the caller then reads under storage), and
//! a server holds at most its in-flight bound per connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stoker_cluster::peer::{serve, BlockRequest, Handler, Limits, PeerBlock, PeerClient, PeerError, ServerCounters};
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
