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
    /// The same request was rejected by Google (failed permanently) less than
    /// [`negative_ttl`](crate::CacheConfig::negative_ttl) ago; the source was not called again.
    /// Holds that failure (the same `Arc` the callers of the failed fetch got).
    #[error("{0} (remembered from less than negative_ttl ago; not asked again)")]
    Negative(Arc<SourceError>),
    /// The fetch ended without an answer: the token source panicked or the runtime is shutting
    /// down. Treated as transient.
    #[error(
        "the token fetch ended without an answer (the token source panicked or the runtime is shutting down)"
    )]
    Aborted,
}

impl CacheError {
    /// Whether trying again later may succeed (the source's classification; `Aborted` counts as
    /// transient, `Negative` never does).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Source(error) | Self::Negative(error) => error.is_transient(),
            Self::Aborted => true,
        }
    }

    /// Whether this is a remembered failure, answered without calling the source.
    pub fn is_negative(&self) -> bool {
        matches!(self, Self::Negative(_))
    }

    /// How long Google asked us to wait before retrying, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        self.source_error().and_then(SourceError::retry_after)
    }

    /// The source's error, if the source answered with one (now or, for `Negative`, when it
    /// was remembered).
    pub fn source_error(&self) -> Option<&SourceError> {
        match self {
            Self::Source(error) | Self::Negative(error) => Some(error),
            Self::Aborted => None,
        }
    }
}

impl From<SourceError> for CacheError {
    fn from(error: SourceError) -> Self {
        Self::Source(Arc::new(error))
    }
}
