//! Engine-level errors. The store and the under storage have their own enums;
//! this one is what start-up and the server report.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("cache store: {0}")]
    Store(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

pub(crate) fn io_ctx(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
    let context = context.into();
    move |source| EngineError::Io { context, source }
}

/// Whether a failed accept is a shortage (descriptors, memory) that
/// calls for a back-off rather than an immediate retry.
pub fn is_shortage(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}
