//! A tiny HTTP/1.1 responder for `GET /metrics`: one std thread, blocking
//! I/O, one connection at a time, `Connection: close` after each answer.
//! Scrapes come every few seconds from one or two collectors, so nothing
//! more is warranted; a stuck client is cut off by the I/O timeout.
//! Never touches a shard: it only calls the render function it was given.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Builds the exposition text at scrape time.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Longest a client may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Wait after an accept failed for want of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// Largest request head read; longer ones are answered 431.
const REQUEST_BYTES_MAX: usize = 8 << 10;

pub struct Endpoint {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Endpoint {
    /// Bind `addr` (port 0 picks a free port: see [`Endpoint::addr`]) and serve.
    pub fn start(addr: SocketAddr, render: Render) -> std::io::Result<Endpoint> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new().name("stoker-metrics".into()).spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                match conn {
                    Ok(c) => {
                        if let Err(e) = answer(c, &render) {
                            tracing::debug!(error = %e, "metrics connection failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        // Out of descriptors, accept fails again at once: wait.
                        if crate::error::is_shortage(&e) {
                            std::thread::sleep(ACCEPT_BACKOFF);
                        }
                    }
                }
            }
        })?;
        tracing::info!(%addr, "metrics endpoint listening");
        Ok(Endpoint { addr, stopping, thread: Some(thread) })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stopping.store(true, Ordering::Release);
            // Wake the accept call; it sees `stopping` and returns.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = t.join();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answer(mut c: TcpStream, render: &Render) -> std::io::Result<()> {
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    c.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > REQUEST_BYTES_MAX {
            return respond(&mut c, "431 Request Header Fields Too Large", "text/plain", "request too large\n");
        }
        let n = c.read(&mut buf)?;
        if n == 0 {
            return Ok(()); // closed before a full request: nothing to answer
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => respond(&mut c, "200 OK", super::text::CONTENT_TYPE, &render()),
        ("GET", _) => respond(&mut c, "404 Not Found", "text/plain", "stoker serves /metrics only\n"),
        _ => respond(&mut c, "405 Method Not Allowed", "text/plain", "GET only\n"),
    }
}

fn respond(c: &mut TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes())?;
    c.write_all(body.as_bytes())?;
    c.flush()
}
