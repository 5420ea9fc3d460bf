//! Injected latency and a bandwidth cap in front of any under storage, so a
//! local directory behaves like remote object storage (`--ufs-latency 20ms`,
//! `--ufs-bandwidth 200MiB`).

use super::{BoxFut, ListPage, Ufs, UfsResult};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stoker_proto::control::Attr;

pub struct Throttled {
    inner: Arc<dyn Ufs>,
    latency: Duration,
    /// Bytes per second; the cap is shared by all requests (a token bucket
    /// expressed as "the time the link is busy until").
    bandwidth: Option<u64>,
    busy_until: parking_lot::Mutex<Instant>,
}

impl Throttled {
    pub fn new(inner: Arc<dyn Ufs>, latency: Duration, bandwidth: Option<u64>) -> Throttled {
        Throttled { inner, latency, bandwidth, busy_until: parking_lot::Mutex::new(Instant::now()) }
    }

    async fn pay(&self, bytes: u64) {
        let mut wait = self.latency;
        if let Some(bw) = self.bandwidth.filter(|b| *b > 0) {
            let cost = Duration::from_secs_f64(bytes as f64 / bw as f64);
            let now = Instant::now();
            let mut busy = self.busy_until.lock();
            let start = (*busy).max(now);
            *busy = start + cost;
            wait += *busy - now;
        }
        if !wait.is_zero() {
            // tokio's timer ticks in whole milliseconds and rounds up (a 20 ms
            // sleep took 20-21 ms), while the direct reader stoker is compared
            // with sleeps with the OS's precision: sleep all but the last
            // 2 ms on the timer, the rest on a blocking thread (which then
            // holds a thread for 2 ms, not the whole latency).
            let deadline = Instant::now() + wait;
            if let Some(coarse) = wait.checked_sub(Duration::from_millis(2)) {
                tokio::time::sleep(coarse).await;
            }
            let _ = tokio::task::spawn_blocking(move || {
                let now = Instant::now();
                if deadline > now {
                    std::thread::sleep(deadline - now);
                }
            })
            .await;
        }
    }
}

impl Ufs for Throttled {
    fn write_file<'a>(&'a self, rel: &'a str, src: &'a std::path::Path, len: u64) -> BoxFut<'a, UfsResult<()>> {
        Box::pin(async move {
            self.pay(len).await;
            self.inner.write_file(rel, src, len).await
        })
    }
    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFut<'a, UfsResult<()>> {
        Box::pin(async move {
            self.pay(0).await;
            self.inner.rename(from, to).await
        })
    }
    fn create_dir<'a>(&'a self, rel: &'a str) -> BoxFut<'a, UfsResult<()>> {
        Box::pin(async move {
            self.pay(0).await;
            self.inner.create_dir(rel).await
        })
    }
    fn delete_dir<'a>(&'a self, rel: &'a str) -> BoxFut<'a, UfsResult<()>> {
        Box::pin(async move {
            self.pay(0).await;
            self.inner.delete_dir(rel).await
        })
    }
    fn delete<'a>(&'a self, rel: &'a str) -> BoxFut<'a, UfsResult<()>> {
        Box::pin(async move {
            self.pay(0).await;
            self.inner.delete(rel).await
        })
    }
    fn stat<'a>(&'a self, rel: &'a str) -> BoxFut<'a, UfsResult<Attr>> {
        Box::pin(async move {
            self.pay(0).await;
            self.inner.stat(rel).await
        })
    }

    fn read<'a>(&'a self, rel: &'a str, off: u64, len: u64) -> BoxFut<'a, UfsResult<Vec<u8>>> {
        Box::pin(async move {
            let data = self.inner.read(rel, off, len).await?;
            self.pay(data.len() as u64).await;
            Ok(data)
        })
    }

    fn read_versioned<'a>(&'a self, rel: &'a str, off: u64, len: u64) -> BoxFut<'a, UfsResult<(Attr, Vec<u8>)>> {
        Box::pin(async move {
            let (attr, data) = self.inner.read_versioned(rel, off, len).await?;
            self.pay(data.len() as u64).await;
            Ok((attr, data))
        })
    }

    fn list<'a>(&'a self, rel: &'a str, token: Option<String>, max: usize) -> BoxFut<'a, UfsResult<ListPage>> {
        Box::pin(async move {
            self.pay(0).await;
            self.inner.list(rel, token, max).await
        })
    }
}
