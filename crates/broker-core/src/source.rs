//! Where tokens come from: the [`TokenSource`] trait the credential backends implement.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
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

/// What a caller asks a source for when it wants an OpenID Connect ID token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdTokenRequest {
    /// The token's `aud`: usually the URL of the service that will receive it.
    pub audience: String,
    /// Whether the token must carry the `email` and `email_verified` claims. The
    /// service-account key flow and the metadata server always include them.
    pub include_email: bool,
}

/// What a credential's flow can do. Each source reports its own: the server does not keep a
/// table of kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// It can mint access tokens of a chosen lifetime (IAM Credentials generateAccessToken,
    /// up to 12 hours where the service account allows it); other flows get about an hour.
    pub chooses_lifetime: bool,
    /// It can act for a Google Workspace user (domain-wide delegation, `subject`).
    pub domain_wide_delegation: bool,
    /// It can mint ID tokens for its own identity.
    pub id_tokens: bool,
    /// Google downscopes its access tokens with a Credential Access Boundary.
    pub downscoping: bool,
}

/// Whose fault a permanent refusal by Google is, which decides the gRPC status the broker
/// answers with (see `UPSTREAM_REJECTED` in `error_reason.proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Google refused a value the caller chose: a scope, a domain-wide delegation subject, a
    /// lifetime, an audience, an access boundary, a subject token. `INVALID_ARGUMENT`.
    InvalidArgument,
    /// Google's IAM or policy refused (`access_denied`, `unauthorized_client`, an IAM 403): the
    /// fix is in Google Cloud, not in the request. `PERMISSION_DENIED`.
    PermissionDenied,
    /// The target (a service account, a pool) does not exist. `NOT_FOUND`.
    NotFound,
    /// Google no longer accepts the broker's own credential: a deleted or disabled key or
    /// account, a revoked refresh token, a clock too far from Google's, an unknown OAuth client.
    /// An operator has to fix it. `FAILED_PRECONDITION`.
    CredentialRejected,
    /// Any other permanent refusal. `FAILED_PRECONDITION`.
    Other,
}

/// What the last attempt at an upstream call ended with, for the `upstream_status` metadata:
/// an HTTP status code, or `timeout`, `connect` or `io` when no status arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamStatus {
    /// Google answered with this HTTP status.
    Http(u16),
    /// The attempt timed out.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// The connection failed after it was made (reset, closed early, TLS).
    Io,
}

impl std::fmt::Display for UpstreamStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http(status) => write!(f, "{status}"),
            Self::Timeout => f.write_str("timeout"),
            Self::Connect => f.write_str("connect"),
            Self::Io => f.write_str("io"),
        }
    }
}

/// A permanent refusal by Google, with what the broker may tell the caller about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRejection {
    /// Whose fault it is (decides the gRPC status).
    pub rejection: Rejection,
    /// The host that refused, such as `oauth2.googleapis.com` (with the port when not the
    /// scheme's default).
    pub upstream: String,
    /// Google's HTTP status.
    pub status: u16,
    /// Google's own error code: the OAuth `error` (`invalid_grant`), or the `google.rpc`
    /// ErrorInfo reason or status (`IAM_PERMISSION_DENIED`, `NOT_FOUND`). Only the characters
    /// `[A-Za-z0-9_.-]`, at most 64 of them; `unknown` when Google gave none.
    pub error: String,
    /// The request field Google rejected, when the source can tell (`scopes`, `subject`,
    /// `lifetime`, `access_boundary`, ...).
    pub field: Option<String>,
    /// What happened, with Google's description sanitized (control characters escaped, length
    /// capped). Never a secret.
    pub message: String,
}

/// Why a source could not produce a token. Messages never contain secrets, and Google's text
/// in them is sanitized (control characters escaped, length capped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Google failed in a way that may pass (connection error, 5xx, 408, 429), after retries.
    #[error("Google is unavailable: {message}")]
    Unavailable {
        /// The host called last.
        upstream: String,
        /// What the last attempt ended with.
        status: UpstreamStatus,
        /// What failed last.
        message: String,
        /// How long Google asked us to wait (already capped by the HTTP client), if it did.
        retry_after: Option<Duration>,
    },
    /// The deadline passed before Google answered.
    #[error("deadline exceeded after {attempts} attempt(s): {last}")]
    DeadlineExceeded {
        /// The host called last.
        upstream: String,
        /// Attempts made.
        attempts: u32,
        /// What failed last.
        last: String,
    },
    /// Google refused the request for good.
    #[error("Google rejected the request: {}", .0.message)]
    Rejected(Box<UpstreamRejection>),
    /// Google answered something that is not a valid response. Treated as transient.
    #[error("Google's answer could not be understood: {message}")]
    Malformed {
        /// The host that answered.
        upstream: String,
        /// What was wrong (never quoting the body, which may hold a token).
        message: String,
    },
    /// The credential cannot do what was asked (for example a subject on a flow without
    /// domain-wide delegation). Decided locally; nothing was sent to Google.
    #[error("the credential cannot do {flow}: {message}")]
    Unsupported {
        /// The flow, as in `CREDENTIAL_FLOW_UNSUPPORTED`'s `flow` metadata:
        /// `domain_wide_delegation`, `extended_lifetime`, `access_boundary`, ...
        flow: &'static str,
        /// Why.
        message: String,
    },
    /// A value of the request breaks a limit the source checks locally (for example an access
    /// boundary longer than STS accepts). Nothing was sent to Google.
    #[error("invalid {field}: {message}")]
    InvalidRequest {
        /// The request field, such as `access_boundary`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The source itself is broken (for example a request that cannot be built from its
    /// configuration). A bug or a configuration error, never the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl SourceError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::DeadlineExceeded { .. } | Self::Malformed { .. }
        )
    }

    /// How long Google asked us to wait before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// This error as the failure of a *base* credential: the token another flow needed to
    /// call Google on the caller's behalf (impersonation, IAM signing). A refusal of the base
    /// is the broker's own credential failing, never a value of the caller's request: it
    /// becomes [`Rejection::CredentialRejected`] without a field, and a locally refused
    /// request becomes [`SourceError::Internal`]. Transient errors pass unchanged.
    pub fn as_base_error(self) -> Self {
        match self {
            Self::Rejected(mut rejection) => {
                rejection.rejection = Rejection::CredentialRejected;
                rejection.field = None;
                rejection.message =
                    format!("the base credential was refused: {}", rejection.message);
                Self::Rejected(rejection)
            }
            Self::Unsupported { flow, message } => {
                Self::Internal(format!("the base credential cannot do {flow}: {message}"))
            }
            Self::InvalidRequest { field, message } => Self::Internal(format!(
                "the base credential's request was refused locally: {field}: {message}"
            )),
            other => other,
        }
    }

    /// Whether Google refused the bearer token a call was made with (an IAM Credentials 401):
    /// a cached token revoked or no longer valid, which a fresh one may replace.
    pub fn is_bearer_rejected(&self) -> bool {
        matches!(self, Self::Rejected(r) if r.rejection == Rejection::CredentialRejected && r.status == 401)
    }

    /// The Google host the error came from; `None` for errors decided locally.
    pub fn upstream(&self) -> Option<&str> {
        match self {
            Self::Unavailable { upstream, .. }
            | Self::DeadlineExceeded { upstream, .. }
            | Self::Malformed { upstream, .. } => Some(upstream),
            Self::Rejected(rejection) => Some(&rejection.upstream),
            Self::Unsupported { .. } | Self::InvalidRequest { .. } | Self::Internal(_) => None,
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

    /// The credential kind, as configuration and ErrorInfo name it: `service_account`,
    /// `authorized_user`, `metadata`, `impersonated`, ...
    fn kind(&self) -> &'static str;

    /// What its flow can do.
    fn capabilities(&self) -> Capabilities;

    /// Gets a fresh access token for `request`, giving up at `deadline`.
    fn fetch<'a>(
        &'a self,
        request: &'a TokenRequest,
        deadline: Option<Instant>,
    ) -> SourceFuture<'a>;

    /// Forgets any token of `request` kept for reuse, so that the next `fetch` gets a new one
    /// (after Google refused the kept one). Sources that keep nothing do nothing, the default.
    fn invalidate<'a>(
        &'a self,
        request: &'a TokenRequest,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        let _ = request;
        Box::pin(std::future::ready(()))
    }

    /// Gets a fresh ID token for the source's own identity; its `secret` is the JWT and its
    /// `expires_at` the token's `exp`. Sources without [`Capabilities::id_tokens`] answer
    /// [`SourceError::Unsupported`] (flow `id_token`), which is the default.
    fn fetch_id_token<'a>(
        &'a self,
        request: &'a IdTokenRequest,
        deadline: Option<Instant>,
    ) -> SourceFuture<'a> {
        let _ = (request, deadline);
        Box::pin(std::future::ready(Err(SourceError::Unsupported {
            flow: "id_token",
            message: format!(
                "Google mints ID tokens for arbitrary audiences only for service accounts; a {} credential cannot",
                self.kind()
            ),
        })))
    }
}

/// One upstream call a cache miss makes: a source and what to ask it for. The cache holds it
/// while the fetch runs, and shares the fetch with every caller of the same key.
pub trait Fetch: Send + Sync + Debug {
    /// Makes the call, giving up at `deadline`.
    fn fetch(&self, deadline: Option<Instant>) -> SourceFuture<'_>;
}

/// An access token from `source` for `request`.
#[derive(Debug, Clone)]
pub struct AccessTokenFetch {
    /// The source.
    pub source: Arc<dyn TokenSource>,
    /// What to ask it for.
    pub request: TokenRequest,
}

impl Fetch for AccessTokenFetch {
    fn fetch(&self, deadline: Option<Instant>) -> SourceFuture<'_> {
        self.source.fetch(&self.request, deadline)
    }
}

/// An ID token from `source` for `request`.
#[derive(Debug, Clone)]
pub struct IdTokenFetch {
    /// The source.
    pub source: Arc<dyn TokenSource>,
    /// What to ask it for.
    pub request: IdTokenRequest,
}

impl Fetch for IdTokenFetch {
    fn fetch(&self, deadline: Option<Instant>) -> SourceFuture<'_> {
        self.source.fetch_id_token(&self.request, deadline)
    }
}
