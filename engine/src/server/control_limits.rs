//! Bounds on what a control-socket client can make the engine hold: open
//! connections, time, frame bytes and descriptors (docs/SECURITY.md,
//! "Limits"). Every limit hit is counted here and exported as a metric.
//!
//! This module reads frames and refuses connections; it never interprets a
//! request (control.rs does).

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::io::{IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use stoker_proto::control::{write_frame, Request, Response, WRITE_BYTES_MAX};

pub use crate::error::is_shortage;

/// Largest request frame the engine reads. Requests are a path and a few
/// numbers; answers (listings) may be far larger, up to
/// `stoker_proto::control::FRAME_BYTES_MAX`.
pub const REQUEST_BYTES_MAX: usize = 64 << 10;
/// Descriptors read with one frame at most; more are closed by the kernel.
/// Only a `Hello` takes one (its shared area).
const FDS_PER_FRAME_MAX: usize = 4;
/// Refused connections waiting for their one-line answer; more are closed
/// unanswered.
const REFUSALS_QUEUED_MAX: usize = 64;
/// A refused client's request is waited for this long (so the answer is
/// not lost to a reset), then the connection is closed.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_millis(500);
/// Back-off after a failed accept (EMFILE, ENFILE, ...): doubles up to the max.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Why the engine closed a connection early.
#[derive(Debug)]
pub enum FrameError {
    /// Half a frame, then nothing for `--control-timeout`; or an answer not taken.
    Timeout,
    /// A length prefix over [`REQUEST_BYTES_MAX`], or write data over
    /// `WRITE_BYTES_MAX`.
    TooLarge(usize),
    /// Not a request (bad JSON, unknown op), or the stream broke mid-frame.
    BadFrame(String),
}

/// Limits hit, since start (exported as `stoker_control_*` metrics).
#[derive(Default)]
pub struct ControlCounters {
    /// Control connections open now.
    pub open: AtomicUsize,
    pub refused_connections: AtomicU64,
    pub refused_peers: AtomicU64,
    pub dropped_timeout: AtomicU64,
    pub dropped_too_large: AtomicU64,
    pub dropped_bad_frame: AtomicU64,
    pub fds_closed: AtomicU64,
    pub accept_errors: AtomicU64,
}

impl ControlCounters {
    pub fn count_drop(&self, d: &FrameError) {
        let c = match d {
            FrameError::Timeout => &self.dropped_timeout,
            FrameError::TooLarge(_) => &self.dropped_too_large,
            FrameError::BadFrame(_) => &self.dropped_bad_frame,
        };
        c.fetch_add(1, Relaxed);
    }
}

/// A connection's place under `--control-connections`; released on drop.
pub struct Slot(Arc<ControlCounters>);

impl Slot {
    pub fn take(counters: &Arc<ControlCounters>, max: usize) -> Option<Slot> {
        counters
            .open
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Slot(counters.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

fn io_drop(e: std::io::Error) -> FrameError {
    if is_timeout(&e) {
        FrameError::Timeout
    } else {
        FrameError::BadFrame(e.to_string())
    }
}

/// One request read: the descriptors sent with its first bytes, and the
/// raw bytes after its frame (a `Write`'s data; empty for the rest).
pub type Received = (Request, Vec<OwnedFd>, Vec<u8>);

/// Read one request, its descriptors and its raw bytes.
/// `Ok(None)` is a clean end of stream between frames. Waiting for a frame
/// to start is unbounded (a session's connection is idle for its life);
/// once a byte came, the rest must follow within `timeout`.
pub fn recv_request(conn: &mut UnixStream, timeout: Duration) -> Result<Option<Received>, FrameError> {
    let mut fds = Vec::new();
    let mut len = [0u8; 4];
    let mut got = 0;
    conn.set_read_timeout(None).map_err(io_drop)?;
    while got < 4 {
        let mut cmsg = nix::cmsg_space!([RawFd; FDS_PER_FRAME_MAX]);
        let mut iov = [IoSliceMut::new(&mut len[got..])];
        let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| io_drop(e.into()))?;
        for c in msg.cmsgs().map_err(|e| io_drop(e.into()))? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors for us.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if msg.bytes == 0 {
            return if got == 0 { Ok(None) } else { Err(FrameError::BadFrame("stream ended inside a frame".into())) };
        }
        if got == 0 {
            conn.set_read_timeout(Some(timeout)).map_err(io_drop)?;
        }
        got += msg.bytes;
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > REQUEST_BYTES_MAX {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).map_err(io_drop)?;
    let req = stoker_proto::control::decode(&body).map_err(|e| FrameError::BadFrame(e.to_string()))?;
    let payload = match req {
        Request::Write { len, .. } => {
            if len > WRITE_BYTES_MAX as u64 {
                return Err(FrameError::TooLarge(len.min(usize::MAX as u64) as usize));
            }
            let mut data = vec![0u8; len as usize];
            conn.read_exact(&mut data).map_err(io_drop)?;
            data
        }
        _ => Vec::new(),
    };
    Ok(Some((req, fds, payload)))
}

/// The answer a dropped connection gets, when it can still take one.
pub fn drop_answer(d: &FrameError) -> Response {
    let message = match d {
        FrameError::Timeout => "control connection timed out inside a frame".to_string(),
        FrameError::TooLarge(n) => {
            format!("control request of {n} bytes is over the limit ({REQUEST_BYTES_MAX} bytes a frame, {WRITE_BYTES_MAX} of write data)")
        }
        FrameError::BadFrame(m) => format!("bad request: {m}"),
    };
    Response::Error { errno: libc::EINVAL, message }
}

/// Keep the descriptors a request takes (`needs`), close the rest now.
pub fn keep_fds(mut fds: Vec<OwnedFd>, needs: usize, counters: &ControlCounters) -> Vec<OwnedFd> {
    if fds.len() > needs {
        counters.fds_closed.fetch_add((fds.len() - needs) as u64, Relaxed);
        fds.truncate(needs);
    }
    fds
}

/// Answers refused connections with one error frame each, on one thread
/// with a bounded queue, so a flood of them costs the accept loop nothing.
pub struct Refuser(std::sync::mpsc::SyncSender<(UnixStream, Response)>);

impl Refuser {
    pub fn start() -> std::io::Result<Refuser> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(UnixStream, Response)>(REFUSALS_QUEUED_MAX);
        std::thread::Builder::new().name("stoker-refuse".into()).spawn(move || {
            for (mut conn, answer) in rx {
                // Take the client's first request (bounded in time and size)
                // before answering, so that closing with its bytes unread
                // does not reset the connection under the answer.
                let _ = conn.set_read_timeout(Some(REFUSAL_READ_TIMEOUT));
                let _ = conn.set_write_timeout(Some(REFUSAL_READ_TIMEOUT));
                let mut len = [0u8; 4];
                if conn.read_exact(&mut len).is_ok() {
                    let n = (u32::from_le_bytes(len) as usize).min(REQUEST_BYTES_MAX) as u64;
                    let _ = std::io::copy(&mut (&conn).take(n), &mut std::io::sink());
                }
                let _ = write_frame(&mut conn, &answer);
            }
        })?;
        Ok(Refuser(tx))
    }

    /// Answer `conn` with `message` and close it (at once if many wait).
    pub fn refuse(&self, conn: UnixStream, errno: i32, message: String) {
        let _ = self.0.try_send((conn, Response::Error { errno, message }));
    }
}

/// Log a limit hit at the 1st, 2nd, 4th, 8th... time: a flood is seen
/// without flooding the log (the metric has the exact count).
pub fn worth_logging(count: u64) -> bool {
    count.is_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn slots_are_capped_and_given_back() {
        let c = Arc::new(ControlCounters::default());
        let a = Slot::take(&c, 2).unwrap();
        let _b = Slot::take(&c, 2).unwrap();
        assert!(Slot::take(&c, 2).is_none());
        drop(a);
        assert!(Slot::take(&c, 2).is_some());
    }

    #[test]
    fn oversized_frames_are_refused_before_reading_them() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&u32::MAX.to_le_bytes()).unwrap();
        assert!(matches!(recv_request(&mut a, Duration::from_secs(5)), Err(FrameError::TooLarge(n)) if n == u32::MAX as usize));
    }

    #[test]
    fn write_data_comes_with_its_frame_and_is_bounded() {
        use stoker_proto::control::{encode, write_request};
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&write_request(3, 0, b"hello")).unwrap();
        b.write_all(&encode(&Request::Stat { path: "/m".into() })).unwrap();
        let (req, _, data) = recv_request(&mut a, Duration::from_secs(5)).unwrap().unwrap();
        assert!(matches!(req, Request::Write { handle: 3, off: 0, len: 5 }));
        assert_eq!(data, b"hello");
        // The next frame starts right after the data.
        assert!(matches!(recv_request(&mut a, Duration::from_secs(5)).unwrap().unwrap().0, Request::Stat { .. }));
        // More data than a write may carry: refused before reading it.
        let big = WRITE_BYTES_MAX as u64 + 1;
        b.write_all(&encode(&Request::Write { handle: 3, off: 0, len: big })).unwrap();
        assert!(matches!(recv_request(&mut a, Duration::from_secs(5)), Err(FrameError::TooLarge(n)) if n as u64 == big));
        // Data that stops short times out.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&encode(&Request::Write { handle: 3, off: 0, len: 10 })).unwrap();
        b.write_all(b"abc").unwrap();
        assert!(matches!(recv_request(&mut a, Duration::from_millis(50)), Err(FrameError::Timeout)));
    }

    #[test]
    fn half_a_frame_times_out() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&[10, 0]).unwrap();
        assert!(matches!(recv_request(&mut a, Duration::from_millis(50)), Err(FrameError::Timeout)));
        drop(b);
        let (mut a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert!(matches!(recv_request(&mut a, Duration::from_millis(50)), Ok(None)));
    }
}
