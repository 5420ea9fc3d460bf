//! The listener: its own thread and tokio runtime inside `stoker serve`,
//! HTTP/1.1 through hyper, at most `connections_max` connections (one
//! over is closed at accept and counted in the log), a header timeout, a
//! timeout on a whole request, and s3s's service behind them.

use crate::config::GatewayConfig;
use crate::engine::Engine;
use crate::multipart::Staging;
use crate::s3::Gateway as S3Impl;
use anyhow::{Context, Result};
use hyper_util::rt::{TokioIo, TokioTimer};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{oneshot, Semaphore};

/// A running gateway; stopped (and joined) by `stop` or on drop.
pub struct Gateway {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Gateway {
    /// Bind `cfg.listen`, attach to the engine on `cfg.socket` and serve
    /// from a thread of its own. Errors (a taken port, no engine, a refused
    /// configuration) come back here, before anything is served.
    pub fn start(cfg: GatewayConfig) -> Result<Gateway> {
        cfg.check().map_err(anyhow::Error::msg)?;
        let client = stoker_client::Client::connect(&cfg.socket).with_context(|| format!("s3 gateway: attaching to the engine on {}", cfg.socket))?;
        let staging = Staging::open(cfg.staging_dir.clone(), cfg.uploads_max)
            .with_context(|| format!("s3 gateway: staging directory {}", cfg.staging_dir.display()))?;
        let std_listener = std::net::TcpListener::bind(cfg.listen).with_context(|| format!("--s3 {}", cfg.listen))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        if cfg.credentials.is_empty() {
            tracing::warn!("s3 gateway on {addr} is UNAUTHENTICATED (no --s3-credentials): anyone who can reach it reads and writes every writable mount");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(cfg.blocking_threads.max(1))
            .thread_name("stoker-s3")
            .enable_all()
            .build()
            .context("s3 gateway: starting its runtime")?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let s3 = S3Impl::new(Engine::new(client), staging, &cfg);
        let route = crate::copy_route::CopyRoute {
            gw: s3.clone(),
            domain: crate::keys::Domain(cfg.domain.clone()),
            authenticated: !cfg.credentials.is_empty(),
        };
        let mut b = S3ServiceBuilder::new(s3);
        b.set_route(route);
        if !cfg.credentials.is_empty() {
            let mut auth = SimpleAuth::new();
            for (a, s) in &cfg.credentials {
                auth.register(a.clone(), s.clone().into());
            }
            b.set_auth(auth);
        }
        b.set_validation(crate::keys::MountNames);
        b.set_host(crate::keys::Domain(cfg.domain.clone()));
        let service = b.build();
        let thread = std::thread::Builder::new()
            .name("stoker-s3".into())
            .spawn(move || {
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => serve(l, service, cfg, stop_rx).await,
                        Err(e) => tracing::error!("s3 gateway: {e}"),
                    }
                });
                rt.shutdown_timeout(std::time::Duration::from_secs(5));
            })
            .context("s3 gateway: starting its thread")?;
        Ok(Gateway { addr, stop: Some(stop_tx), thread: Some(thread) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, let requests in flight end (up to 5 s), join.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn serve(listener: tokio::net::TcpListener, service: s3s::service::S3Service, cfg: GatewayConfig, mut stop: oneshot::Receiver<()>) {
    let slots = Arc::new(Semaphore::new(cfg.connections_max.max(1)));
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("s3 gateway: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            tracing::warn!("s3 gateway: {} connections open (the most): closed one from {peer} ({refused} so far)", cfg.connections_max);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = service.clone();
        let timeout = cfg.request_timeout;
        let header_timeout = cfg.header_timeout;
        tokio::spawn(async move {
            let call = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let svc = svc.clone();
                async move {
                    let method = req.method().clone();
                    let uri = req.uri().clone();
                    let t0 = std::time::Instant::now();
                    let r = match tokio::time::timeout(timeout, svc.call(req.map(s3s::Body::from))).await {
                        Ok(r) => r,
                        Err(_) => Err(s3s::HttpError::new(format!("{method} {uri}: no answer within {timeout:?}").into())),
                    };
                    match &r {
                        Ok(resp) => tracing::debug!("s3 gateway: {method} {uri} -> {} in {:?}", resp.status(), t0.elapsed()),
                        Err(e) => tracing::warn!("s3 gateway: {method} {uri}: {e:?}"),
                    }
                    r
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), call);
            if let Err(e) = conn.await {
                tracing::debug!("s3 gateway: connection from {peer}: {e}");
            }
            drop(slot);
        });
    }
}
