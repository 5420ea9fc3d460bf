//! The error of a failed client call: what went wrong, by kind, with one
//! line for people (`Display`). The Linux errno a kind stands for is chosen
//! in one place, [`Error::errno`], for the edges that speak errno (the FUSE
//! mount, the C library, the Python binding) and for the reconnect logic.

use std::time::Duration;

/// A failed client call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The engine (or the under storage behind it) answered with an errno:
    /// a missing file, a directory read as a file, a refused pin, ...
    #[error("{message}")]
    Engine { errno: i32, message: String },
    /// The engine is not there: nothing listens on its socket, or it went
    /// away and did not come back in time.
    #[error("{0}")]
    Unreachable(String),
    /// The engine went away during the call (it closed or reset the
    /// connection, or its session is gone).
    #[error("{0}")]
    Lost(String),
    /// The engine went away and every attempt to reach it again failed until
    /// `within` passed; `last` is the last attempt's error (its errno stands).
    #[error("lost the stoker engine and could not reach it again within {within:?}: {last}")]
    Reconnect { within: Duration, last: Box<Error> },
    /// A system call of this client failed (`context` says which).
    #[error("{context}: {message}")]
    Io { context: String, message: String },
    /// The engine answered something this client cannot use.
    #[error("{0}")]
    Protocol(String),
    /// No answer (or no room in the shared area, or no ring entry) in time.
    #[error("{0}")]
    Timeout(String),
    /// A request refused before it was sent: a bad path, a bad value, a
    /// range larger than the shared area.
    #[error("{0}")]
    Invalid(String),
    /// A path longer than a request carries.
    #[error("{0}")]
    NameTooLong(String),
    /// No room in the shared area right now (for a call that does not wait).
    #[error("{0}")]
    Busy(String),
    /// This client lost track of a request (a bug, never the engine's doing).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// An error with this errno, as the engine would answer it (for
    /// backends and tests that stand in for the engine).
    pub fn new(errno: i32, message: impl Into<String>) -> Error {
        Error::Engine { errno, message: message.into() }
    }

    /// `context: e`, from a failed system call.
    pub(crate) fn io(context: &str, e: impl std::fmt::Display) -> Error {
        Error::Io { context: context.to_string(), message: e.to_string() }
    }

    /// The Linux errno this error stands for.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Engine { errno, .. } => *errno,
            Error::Unreachable(_) => libc::ECONNREFUSED,
            Error::Lost(_) => libc::ECONNRESET,
            Error::Reconnect { last, .. } => last.errno(),
            Error::Io { .. } | Error::Internal(_) => libc::EIO,
            Error::Protocol(_) => libc::EPROTO,
            Error::Timeout(_) => libc::ETIMEDOUT,
            Error::Invalid(_) => libc::EINVAL,
            Error::NameTooLong(_) => libc::ENAMETOOLONG,
            Error::Busy(_) => libc::EAGAIN,
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        std::io::Error::new(std::io::Error::from_raw_os_error(e.errno()).kind(), e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_and_message_of_each_kind() {
        let lost = Error::Lost("gone".into());
        let again = Error::Reconnect { within: Duration::from_secs(2), last: Box::new(Error::Unreachable("no one there".into())) };
        assert_eq!(again.errno(), libc::ECONNREFUSED);
        assert_eq!(again.to_string(), "lost the stoker engine and could not reach it again within 2s: no one there");
        assert_eq!((lost.errno(), lost.to_string()), (libc::ECONNRESET, "gone".to_string()));
        assert_eq!(Error::io("handshake", "broken pipe").to_string(), "handshake: broken pipe");
        assert_eq!(Error::new(libc::ENOENT, "/m/x: No such file").errno(), libc::ENOENT);
        let io: std::io::Error = Error::Timeout("late".into()).into();
        assert_eq!((io.kind(), io.to_string()), (std::io::ErrorKind::TimedOut, "late".to_string()));
    }
}
