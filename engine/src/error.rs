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
