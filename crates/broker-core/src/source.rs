//! Where tokens come from: the [`TokenSource`] trait the credential backends implement.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::{AccessBoundary, ScopeSet, Token};

/// What a caller asks a source for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The scopes.
    pub scopes: ScopeSet,
    /// A domain-wide-delegation subject (user email).
    pub subject: Option<String>,
    /// A requested lifetime, where the flow lets the caller choose it.
    pub lifetime: Option<Duration>,
    /// A Credential Access Boundary to downscope the token with.
    pub boundary: Option<AccessBoundary>,
}

impl TokenRequest {
    /// A request for these scopes and nothing else.
    pub fn new(scopes: ScopeSet) -> Self {
        Self {
            scopes,
            subject: None,
            lifetime: None,
            boundary: None,
        }
    }
}

/// How Google refused a request for good (retrying will not help).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `invalid_grant`: bad assertion, unknown or disabled account or key, bad DWD subject.
    InvalidGrant,
    /// `invalid_scope`.
    InvalidScope,
    /// `unauthorized_client`: e.g. domain-wide delegation not authorized.
    UnauthorizedClient,
    /// The credential itself was refused (`invalid_client`, 401).
    Unauthenticated,
    /// A 403 from an API.
    PermissionDenied,
    /// A 404 from an API.
    NotFound,
    /// A 400 from an API.
    InvalidArgument,
}

/// Why a source could not produce a token. Messages never contain secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Google failed in a way that may pass (connection error, 5xx, 408, 429), after retries.
    #[error("Google is unavailable: {message}")]
    Unavailable {
        /// What failed last.
        message: String,
        /// How long Google asked us to wait, if it did.
        retry_after: Option<Duration>,
    },
    /// The deadline passed before Google answered.
    #[error("deadline exceeded after {attempts} attempt(s): {last}")]
    DeadlineExceeded {
        /// Attempts made.
        attempts: u32,
        /// What failed last.
        last: String,
    },
    /// Google refused the request for good.
    #[error("Google rejected the request ({rejection:?}): {message}")]
    Rejected {
        /// The kind of refusal.
        rejection: Rejection,
        /// Google's description.
        message: String,
    },
    /// Google answered something that is not a valid token response.
    #[error("Google's answer could not be understood: {0}")]
    Malformed(String),
    /// The credential cannot do what was asked (e.g. a subject on a flow without DWD).
    #[error("the credential cannot do this: {0}")]
    Unsupported(String),
}

impl SourceError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::DeadlineExceeded { .. } | Self::Malformed(_)
        )
    }

    /// How long Google asked us to wait before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The future a [`TokenSource`] returns.
pub type SourceFuture<'a> = Pin<Box<dyn Future<Output = Result<Token, SourceError>> + Send + 'a>>;

/// A backend that gets one token from Google per call. It never caches (the cache does), and
/// it retries transient failures only within `deadline`.
pub trait TokenSource: Send + Sync + Debug {
    /// The Google principal its tokens represent (e.g. the service-account email).
    fn principal(&self) -> &str;

    /// Gets a fresh token for `request`, giving up at `deadline`.
    fn fetch<'a>(
        &'a self,
        request: &'a TokenRequest,
        deadline: Option<Instant>,
    ) -> SourceFuture<'a>;
}
