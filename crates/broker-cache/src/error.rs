//! What a cache lookup can fail with.

use std::sync::Arc;
use std::time::Duration;

use broker_core::SourceError;

/// Why no token could be served. Cheap to clone: every caller that waited on one failed
/// fetch gets a clone of the same error (the same `Arc<SourceError>`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// The token source failed.
    #[error(transparent)]
    Source(Arc<SourceError>),
    /// The fetch ended without an answer: the token source panicked or the runtime is shutting
    /// down. Treated as transient.
    #[error(
        "the token fetch ended without an answer (the token source panicked or the runtime is shutting down)"
    )]
    Aborted,
}

impl CacheError {
    /// Whether trying again later may succeed (the source's classification; `Aborted` counts as
    /// transient).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Source(error) => error.is_transient(),
            Self::Aborted => true,
        }
    }

    /// How long Google asked us to wait before retrying, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Source(error) => error.retry_after(),
            Self::Aborted => None,
        }
    }

    /// The source's error, if the source answered with one.
    pub fn source_error(&self) -> Option<&SourceError> {
        match self {
            Self::Source(error) => Some(error),
            Self::Aborted => None,
        }
    }
}

impl From<SourceError> for CacheError {
    fn from(error: SourceError) -> Self {
        Self::Source(Arc::new(error))
    }
}
