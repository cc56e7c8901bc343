//! The one place where the broker's errors become gRPC statuses, with `google.rpc` details:
//! `ErrorInfo` (domain `tokenbroker.dev`, the reasons of `ErrorReason` in the proto),
//! `BadRequest` for malformed fields and `RetryInfo` where a retry makes sense.
//!
//! The table in `tests::every_row_of_the_error_contract` pins every row of the contract
//! `proto/tokenbroker/v1/error_reason.proto` documents.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use broker_cache::CacheError;
use broker_core::{Rejection, SourceError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::tls::PeerError;

/// The ErrorInfo domain of every broker error.
pub const DOMAIN: &str = "tokenbroker.dev";

/// Which deadline bounded a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineSource {
    /// The caller's own `grpc-timeout` (shorter than the broker's maximum).
    Caller,
    /// The broker's `server.rpc_timeout`: the caller set none, or a longer one.
    Broker,
}

/// Why an RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// No verified client certificate on the connection (never expected: the listener
    /// requires one).
    #[error("a client certificate is required")]
    NoCertificate,
    /// The connection's certificate cannot call: no identity, expired, or no longer trusted.
    #[error("{0}")]
    Unauthenticated(#[from] PeerError),
    /// A request field is malformed or out of range.
    #[error("invalid {field}: {description}")]
    InvalidField {
        /// The `ErrorReason`: INVALID_FIELD, INVALID_SCOPE, INVALID_LIFETIME or INVALID_ACCESS_BOUNDARY.
        reason: &'static str,
        /// The field path, such as `scopes[2]`.
        field: String,
        /// What is wrong.
        description: String,
        /// For INVALID_LIFETIME: the largest value accepted.
        max_seconds: Option<u64>,
    },
    /// ExchangeToken was asked for a token type the broker does not accept.
    #[error("invalid {field}: {description}")]
    UnsupportedTokenType {
        /// `subject_token_type` or `requested_token_type`.
        field: &'static str,
        /// The rejected value (not a secret), cut at [`MAX_TOKEN_TYPE_SHOWN`] characters.
        token_type: String,
        /// What the broker accepts instead.
        description: String,
    },
    /// The policy denied the request.
    #[error("permission denied for {caller}: {message}")]
    PolicyDenied {
        /// The caller identity evaluated.
        caller: String,
        /// The grant evaluated, if any.
        grant: Option<String>,
        /// The rule that denied (`no_grant`, `scopes`, …).
        rule: &'static str,
        /// The denied value, when not secret.
        value: Option<String>,
        /// The explanation.
        message: String,
    },
    /// The request names a credential that is not configured (told only to callers granted it).
    #[error("credential {0:?} is not configured")]
    CredentialNotFound(String),
    /// The credential's kind cannot do what is asked.
    #[error("credential {credential:?} ({kind}) cannot do {flow}: {message}")]
    FlowUnsupported {
        /// The credential.
        credential: String,
        /// Its kind.
        kind: &'static str,
        /// The flow it cannot do.
        flow: &'static str,
        /// Details.
        message: String,
    },
    /// The caller is over one of its limits.
    #[error("{message}")]
    RateLimited {
        /// Which limit: `caller` (the token bucket) or `caller_keys` (distinct cache keys).
        limit: &'static str,
        /// When to try again.
        retry_after: Duration,
        /// What was exceeded, for humans.
        message: String,
    },
    /// The broker is shedding load.
    #[error("the broker is overloaded; retry shortly, preferably against another replica")]
    Overloaded,
    /// The call's deadline passed while the broker waited for Google.
    #[error("the deadline passed after {} ms while the broker waited for {upstream}", .waited.as_millis())]
    DeadlineExceeded {
        /// Whose deadline.
        deadline: DeadlineSource,
        /// The Google host waited for.
        upstream: String,
        /// How long the call had.
        waited: Duration,
    },
    /// The cache or the credential's source failed.
    #[error("{error}")]
    Upstream {
        /// The error from the cache or source.
        error: CacheError,
        /// The credential used.
        credential: String,
        /// Its kind.
        kind: &'static str,
        /// The Google host the credential's tokens come from (used when the error does not
        /// name the host it came from).
        upstream: String,
        /// Which deadline bounded the call.
        deadline: DeadlineSource,
        /// How long the call had.
        timeout: Duration,
    },
    /// The RPC or feature comes in a later release.
    #[error("{0} is not implemented by this broker release yet")]
    Unimplemented(&'static str),
}

/// The most characters of a rejected token type an error repeats.
pub const MAX_TOKEN_TYPE_SHOWN: usize = 128;

/// How long clients should wait after an overload.
const OVERLOAD_RETRY_DELAY: Duration = Duration::from_millis(200);
/// How long clients should wait after an upstream failure that gave no Retry-After.
const UPSTREAM_RETRY_DELAY: Duration = Duration::from_secs(1);

impl RpcError {
    /// The same error, with an invalid field's path inside the request's message `parent`
    /// (such as `options`); other errors are unchanged.
    pub fn within(self, parent: &str) -> Self {
        match self {
            Self::InvalidField {
                reason,
                field,
                description,
                max_seconds,
            } => Self::InvalidField {
                reason,
                field: format!("{parent}.{field}"),
                description,
                max_seconds,
            },
            other => other,
        }
    }

    /// The error of the cache or source, if this is one.
    fn source_error(&self) -> Option<&SourceError> {
        match self {
            Self::Upstream { error, .. } => error.source_error(),
            _ => None,
        }
    }

    /// The ErrorInfo reason; `None` for INTERNAL errors, which carry no details.
    pub fn reason(&self) -> Option<&'static str> {
        Some(match self {
            Self::NoCertificate | Self::Unauthenticated(PeerError::NoIdentity(_)) => {
                "CLIENT_CERTIFICATE_REQUIRED"
            }
            Self::Unauthenticated(PeerError::Expired { .. }) => "CLIENT_CERTIFICATE_EXPIRED",
            Self::Unauthenticated(PeerError::NoLongerTrusted { .. }) => {
                "CLIENT_CERTIFICATE_NOT_TRUSTED"
            }
            Self::InvalidField { reason, .. } => reason,
            Self::UnsupportedTokenType { .. } => "UNSUPPORTED_TOKEN_TYPE",
            Self::PolicyDenied { .. } => "POLICY_DENIED",
            Self::CredentialNotFound(_) => "CREDENTIAL_NOT_FOUND",
            Self::FlowUnsupported { .. } => "CREDENTIAL_FLOW_UNSUPPORTED",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::Overloaded => "OVERLOADED",
            Self::DeadlineExceeded {
                deadline: DeadlineSource::Caller,
                ..
            } => "UPSTREAM_DEADLINE_EXCEEDED",
            Self::DeadlineExceeded { .. } => "UPSTREAM_UNAVAILABLE",
            Self::Upstream {
                error, deadline, ..
            } => match error.source_error() {
                None => "UPSTREAM_UNAVAILABLE",
                Some(SourceError::DeadlineExceeded { .. })
                    if *deadline == DeadlineSource::Caller =>
                {
                    "UPSTREAM_DEADLINE_EXCEEDED"
                }
                Some(
                    SourceError::Unavailable { .. }
                    | SourceError::Malformed { .. }
                    | SourceError::DeadlineExceeded { .. },
                ) => "UPSTREAM_UNAVAILABLE",
                Some(SourceError::Rejected(_)) => "UPSTREAM_REJECTED",
                Some(SourceError::Unsupported { .. }) => "CREDENTIAL_FLOW_UNSUPPORTED",
                Some(SourceError::InvalidRequest { field, .. }) => field_reason(field),
                Some(SourceError::Internal(_)) => return None,
            },
            Self::Unimplemented(_) => "FEATURE_NOT_IMPLEMENTED",
        })
    }

    fn code(&self) -> Code {
        match self {
            Self::NoCertificate | Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::InvalidField { .. } | Self::UnsupportedTokenType { .. } => Code::InvalidArgument,
            Self::PolicyDenied { .. } => Code::PermissionDenied,
            Self::CredentialNotFound(_) => Code::NotFound,
            Self::FlowUnsupported { .. } => Code::FailedPrecondition,
            Self::RateLimited { .. } => Code::ResourceExhausted,
            Self::Overloaded => Code::Unavailable,
            Self::DeadlineExceeded {
                deadline: DeadlineSource::Caller,
                ..
            } => Code::DeadlineExceeded,
            Self::DeadlineExceeded { .. } => Code::Unavailable,
            Self::Upstream {
                error, deadline, ..
            } => match error.source_error() {
                None | Some(SourceError::Unavailable { .. } | SourceError::Malformed { .. }) => {
                    Code::Unavailable
                }
                Some(SourceError::DeadlineExceeded { .. }) => match deadline {
                    DeadlineSource::Caller => Code::DeadlineExceeded,
                    DeadlineSource::Broker => Code::Unavailable,
                },
                Some(SourceError::Rejected(rejection)) => match rejection.rejection {
                    Rejection::InvalidArgument => Code::InvalidArgument,
                    Rejection::PermissionDenied => Code::PermissionDenied,
                    Rejection::NotFound => Code::NotFound,
                    Rejection::CredentialRejected | Rejection::Other => Code::FailedPrecondition,
                },
                Some(SourceError::Unsupported { .. }) => Code::FailedPrecondition,
                Some(SourceError::InvalidRequest { .. }) => Code::InvalidArgument,
                Some(SourceError::Internal(_)) => Code::Internal,
            },
            Self::Unimplemented(_) => Code::Unimplemented,
        }
    }

    fn metadata(&self) -> HashMap<String, String> {
        let mut metadata = HashMap::new();
        let mut put = |key: &str, value: &str| {
            metadata.insert(key.to_owned(), value.to_owned());
        };
        match self {
            Self::NoCertificate
            | Self::Unauthenticated(PeerError::NoIdentity(_) | PeerError::NoLongerTrusted { .. })
            | Self::Overloaded => {}
            Self::Unauthenticated(PeerError::Expired { not_after }) => {
                put("not_after", &rfc3339(*not_after));
            }
            Self::InvalidField {
                field, max_seconds, ..
            } => {
                put("field", field);
                if let Some(max) = max_seconds {
                    put("max_seconds", &max.to_string());
                }
            }
            Self::UnsupportedTokenType {
                field, token_type, ..
            } => {
                put("field", field);
                put("token_type", token_type);
            }
            Self::PolicyDenied {
                caller,
                grant,
                rule,
                value,
                ..
            } => {
                put("caller", caller);
                put("rule", rule);
                if let Some(grant) = grant {
                    put("grant", grant);
                }
                if let Some(value) = value {
                    put("value", value);
                }
            }
            Self::CredentialNotFound(name) => put("credential", name),
            Self::FlowUnsupported {
                credential,
                kind,
                flow,
                ..
            } => {
                put("credential", credential);
                put("credential_type", kind);
                put("flow", flow);
            }
            Self::RateLimited { limit, .. } => put("limit", limit),
            Self::DeadlineExceeded {
                upstream, waited, ..
            } => {
                put("upstream", upstream);
                put("upstream_status", "timeout");
                put("timeout_ms", &waited.as_millis().to_string());
            }
            Self::Upstream {
                error,
                credential,
                kind,
                upstream,
                deadline,
                timeout,
            } => {
                let host = error
                    .source_error()
                    .and_then(SourceError::upstream)
                    .unwrap_or(upstream);
                match error.source_error() {
                    None => {
                        put("upstream", host);
                        put("upstream_status", "aborted");
                    }
                    Some(SourceError::Unavailable { status, .. }) => {
                        put("upstream", host);
                        put("upstream_status", &status.to_string());
                    }
                    Some(SourceError::Malformed { .. }) => {
                        put("upstream", host);
                        put("upstream_status", "malformed");
                    }
                    Some(SourceError::DeadlineExceeded { .. }) => {
                        put("upstream", host);
                        put("upstream_status", "timeout");
                        if *deadline == DeadlineSource::Caller {
                            put("timeout_ms", &timeout.as_millis().to_string());
                        }
                    }
                    Some(SourceError::Rejected(rejection)) => {
                        put("upstream", host);
                        put("upstream_status", &rejection.status.to_string());
                        put("upstream_error", &rejection.error);
                        if !credential.is_empty() {
                            put("credential", credential);
                        }
                        if let Some(field) = &rejection.field {
                            put("field", field);
                        }
                    }
                    Some(SourceError::Unsupported { flow, .. }) => {
                        put("credential", credential);
                        put("credential_type", kind);
                        put("flow", flow);
                    }
                    Some(SourceError::InvalidRequest { field, .. }) => put("field", field),
                    Some(SourceError::Internal(_)) => {}
                }
            }
            Self::Unimplemented(feature) => put("feature", feature),
        }
        metadata
    }

    fn retry_delay(&self) -> Option<Duration> {
        match self {
            Self::Overloaded => Some(OVERLOAD_RETRY_DELAY),
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::DeadlineExceeded {
                deadline: DeadlineSource::Broker,
                ..
            } => Some(UPSTREAM_RETRY_DELAY),
            Self::Upstream { .. } if self.code() == Code::Unavailable => Some(
                self.source_error()
                    .and_then(SourceError::retry_after)
                    .unwrap_or(UPSTREAM_RETRY_DELAY),
            ),
            _ => None,
        }
    }

    /// The request field at fault, for a `BadRequest`.
    fn bad_field(&self) -> Option<(&str, String)> {
        match self {
            Self::InvalidField {
                field, description, ..
            } => Some((field, description.clone())),
            Self::UnsupportedTokenType {
                field, description, ..
            } => Some((field, description.clone())),
            _ => match self.source_error() {
                Some(SourceError::InvalidRequest { field, message }) => {
                    Some((field, message.clone()))
                }
                Some(SourceError::Rejected(rejection))
                    if rejection.rejection == Rejection::InvalidArgument =>
                {
                    rejection
                        .field
                        .as_deref()
                        .map(|field| (field, rejection.message.clone()))
                }
                _ => None,
            },
        }
    }

    /// The message the caller sees. An internal error's details stay in the log.
    fn message(&self) -> String {
        match self.source_error() {
            Some(SourceError::Internal(_)) => {
                "internal error: the broker could not make the request (see its log)".to_owned()
            }
            _ => self.to_string(),
        }
    }
}

/// The INVALID_* reason for a request field.
fn field_reason(field: &str) -> &'static str {
    let field = field.strip_prefix("options.").unwrap_or(field);
    if field.starts_with("access_boundary") {
        "INVALID_ACCESS_BOUNDARY"
    } else if field.starts_with("scopes") {
        "INVALID_SCOPE"
    } else if field == "lifetime" || field == "min_remaining_validity" {
        "INVALID_LIFETIME"
    } else {
        "INVALID_FIELD"
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

impl From<RpcError> for Status {
    fn from(error: RpcError) -> Self {
        let Some(reason) = error.reason() else {
            tracing::error!(%error, "internal error");
            return Status::new(error.code(), error.message());
        };
        let mut details = ErrorDetails::new();
        details.set_error_info(reason, DOMAIN, error.metadata());
        if let Some((field, description)) = error.bad_field() {
            details.add_bad_request_violation(field, description);
        }
        if let Some(delay) = error.retry_delay() {
            details.set_retry_info(Some(delay));
        }
        Status::with_error_details(error.code(), error.message(), details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_authz::IdentityError;
    use broker_core::{UpstreamRejection, UpstreamStatus};

    const TOKEN_HOST: &str = "oauth2.googleapis.com";
    const STS_HOST: &str = "sts.googleapis.com";

    fn upstream(error: SourceError, deadline: DeadlineSource) -> RpcError {
        RpcError::Upstream {
            error: CacheError::from(error),
            credential: "prod".into(),
            kind: "service_account",
            upstream: TOKEN_HOST.into(),
            deadline,
            timeout: Duration::from_millis(900),
        }
    }

    fn rejected(rejection: Rejection, status: u16, code: &str, field: Option<&str>) -> RpcError {
        upstream(
            SourceError::Rejected(Box::new(UpstreamRejection {
                rejection,
                upstream: STS_HOST.into(),
                status,
                error: code.into(),
                field: field.map(str::to_owned),
                message: format!("STS answered HTTP {status}: {code}"),
            })),
            DeadlineSource::Broker,
        )
    }

    /// One row: the error, then the status code, ErrorInfo reason (`None`: no details),
    /// metadata that must be present, whether RetryInfo and a BadRequest come with it.
    type Row = (
        RpcError,
        Code,
        Option<&'static str>,
        Vec<(&'static str, &'static str)>,
        bool,
        bool,
    );

    fn rows() -> Vec<Row> {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        vec![
            (
                RpcError::NoCertificate,
                Code::Unauthenticated,
                Some("CLIENT_CERTIFICATE_REQUIRED"),
                vec![],
                false,
                false,
            ),
            (
                PeerError::NoIdentity(IdentityError::NoName).into(),
                Code::Unauthenticated,
                Some("CLIENT_CERTIFICATE_REQUIRED"),
                vec![],
                false,
                false,
            ),
            (
                PeerError::Expired { not_after: t }.into(),
                Code::Unauthenticated,
                Some("CLIENT_CERTIFICATE_EXPIRED"),
                vec![("not_after", "2026-01-01T00:00:00Z")],
                false,
                false,
            ),
            (
                PeerError::NoLongerTrusted {
                    reason: "UnknownIssuer".into(),
                }
                .into(),
                Code::Unauthenticated,
                Some("CLIENT_CERTIFICATE_NOT_TRUSTED"),
                vec![],
                false,
                false,
            ),
            (
                RpcError::InvalidField {
                    reason: "INVALID_SCOPE",
                    field: "scopes[1]".into(),
                    description: "x".into(),
                    max_seconds: None,
                },
                Code::InvalidArgument,
                Some("INVALID_SCOPE"),
                vec![("field", "scopes[1]")],
                false,
                true,
            ),
            (
                RpcError::UnsupportedTokenType {
                    field: "subject_token_type",
                    token_type: "urn:ietf:params:oauth:token-type:mtls".into(),
                    description: "x".into(),
                },
                Code::InvalidArgument,
                Some("UNSUPPORTED_TOKEN_TYPE"),
                vec![
                    ("field", "subject_token_type"),
                    ("token_type", "urn:ietf:params:oauth:token-type:mtls"),
                ],
                false,
                true,
            ),
            (
                RpcError::InvalidField {
                    reason: "INVALID_LIFETIME",
                    field: "lifetime".into(),
                    description: "x".into(),
                    max_seconds: Some(43_200),
                },
                Code::InvalidArgument,
                Some("INVALID_LIFETIME"),
                vec![("field", "lifetime"), ("max_seconds", "43200")],
                false,
                true,
            ),
            (
                RpcError::PolicyDenied {
                    caller: "spiffe://x/a".into(),
                    grant: Some("g".into()),
                    rule: "scopes",
                    value: Some("https://x/y".into()),
                    message: "no".into(),
                },
                Code::PermissionDenied,
                Some("POLICY_DENIED"),
                vec![
                    ("caller", "spiffe://x/a"),
                    ("grant", "g"),
                    ("rule", "scopes"),
                    ("value", "https://x/y"),
                ],
                false,
                false,
            ),
            (
                RpcError::CredentialNotFound("nope".into()),
                Code::NotFound,
                Some("CREDENTIAL_NOT_FOUND"),
                vec![("credential", "nope")],
                false,
                false,
            ),
            (
                RpcError::FlowUnsupported {
                    credential: "prod".into(),
                    kind: "service_account",
                    flow: "extended_lifetime",
                    message: "x".into(),
                },
                Code::FailedPrecondition,
                Some("CREDENTIAL_FLOW_UNSUPPORTED"),
                vec![
                    ("credential", "prod"),
                    ("credential_type", "service_account"),
                    ("flow", "extended_lifetime"),
                ],
                false,
                false,
            ),
            (
                RpcError::RateLimited {
                    limit: "caller",
                    retry_after: Duration::from_millis(50),
                    message: "x".into(),
                },
                Code::ResourceExhausted,
                Some("RATE_LIMITED"),
                vec![("limit", "caller")],
                true,
                false,
            ),
            (
                RpcError::RateLimited {
                    limit: "caller_keys",
                    retry_after: Duration::from_secs(60),
                    message: "x".into(),
                },
                Code::ResourceExhausted,
                Some("RATE_LIMITED"),
                vec![("limit", "caller_keys")],
                true,
                false,
            ),
            (
                RpcError::Overloaded,
                Code::Unavailable,
                Some("OVERLOADED"),
                vec![],
                true,
                false,
            ),
            (
                RpcError::DeadlineExceeded {
                    deadline: DeadlineSource::Caller,
                    upstream: TOKEN_HOST.into(),
                    waited: Duration::from_millis(800),
                },
                Code::DeadlineExceeded,
                Some("UPSTREAM_DEADLINE_EXCEEDED"),
                vec![("upstream", TOKEN_HOST), ("timeout_ms", "800")],
                false,
                false,
            ),
            (
                RpcError::DeadlineExceeded {
                    deadline: DeadlineSource::Broker,
                    upstream: TOKEN_HOST.into(),
                    waited: Duration::from_secs(10),
                },
                Code::Unavailable,
                Some("UPSTREAM_UNAVAILABLE"),
                vec![("upstream", TOKEN_HOST), ("upstream_status", "timeout")],
                true,
                false,
            ),
            (
                upstream(
                    SourceError::Unavailable {
                        upstream: STS_HOST.into(),
                        status: UpstreamStatus::Http(503),
                        message: "x".into(),
                        retry_after: Some(Duration::from_secs(7)),
                    },
                    DeadlineSource::Caller,
                ),
                Code::Unavailable,
                Some("UPSTREAM_UNAVAILABLE"),
                vec![("upstream", STS_HOST), ("upstream_status", "503")],
                true,
                false,
            ),
            (
                upstream(
                    SourceError::Unavailable {
                        upstream: TOKEN_HOST.into(),
                        status: UpstreamStatus::Connect,
                        message: "x".into(),
                        retry_after: None,
                    },
                    DeadlineSource::Caller,
                ),
                Code::Unavailable,
                Some("UPSTREAM_UNAVAILABLE"),
                vec![("upstream_status", "connect")],
                true,
                false,
            ),
            (
                upstream(
                    SourceError::Malformed {
                        upstream: TOKEN_HOST.into(),
                        message: "x".into(),
                    },
                    DeadlineSource::Caller,
                ),
                Code::Unavailable,
                Some("UPSTREAM_UNAVAILABLE"),
                vec![("upstream_status", "malformed")],
                true,
                false,
            ),
            (
                upstream(
                    SourceError::DeadlineExceeded {
                        upstream: TOKEN_HOST.into(),
                        attempts: 2,
                        last: "x".into(),
                    },
                    DeadlineSource::Caller,
                ),
                Code::DeadlineExceeded,
                Some("UPSTREAM_DEADLINE_EXCEEDED"),
                vec![
                    ("upstream", TOKEN_HOST),
                    ("upstream_status", "timeout"),
                    ("timeout_ms", "900"),
                ],
                false,
                false,
            ),
            (
                upstream(
                    SourceError::DeadlineExceeded {
                        upstream: TOKEN_HOST.into(),
                        attempts: 2,
                        last: "x".into(),
                    },
                    DeadlineSource::Broker,
                ),
                Code::Unavailable,
                Some("UPSTREAM_UNAVAILABLE"),
                vec![("upstream_status", "timeout")],
                true,
                false,
            ),
            (
                RpcError::Upstream {
                    error: CacheError::Aborted,
                    credential: "prod".into(),
                    kind: "service_account",
                    upstream: TOKEN_HOST.into(),
                    deadline: DeadlineSource::Caller,
                    timeout: Duration::from_secs(1),
                },
                Code::Unavailable,
                Some("UPSTREAM_UNAVAILABLE"),
                vec![("upstream", TOKEN_HOST)],
                true,
                false,
            ),
            (
                rejected(Rejection::CredentialRejected, 400, "invalid_grant", None),
                Code::FailedPrecondition,
                Some("UPSTREAM_REJECTED"),
                vec![
                    ("upstream", STS_HOST),
                    ("upstream_status", "400"),
                    ("upstream_error", "invalid_grant"),
                    ("credential", "prod"),
                ],
                false,
                false,
            ),
            (
                rejected(
                    Rejection::InvalidArgument,
                    400,
                    "invalid_grant",
                    Some("subject"),
                ),
                Code::InvalidArgument,
                Some("UPSTREAM_REJECTED"),
                vec![("upstream_error", "invalid_grant"), ("field", "subject")],
                false,
                true,
            ),
            (
                rejected(
                    Rejection::InvalidArgument,
                    400,
                    "invalid_scope",
                    Some("scopes"),
                ),
                Code::InvalidArgument,
                Some("UPSTREAM_REJECTED"),
                vec![("field", "scopes")],
                false,
                true,
            ),
            (
                rejected(Rejection::PermissionDenied, 400, "access_denied", None),
                Code::PermissionDenied,
                Some("UPSTREAM_REJECTED"),
                vec![("upstream_error", "access_denied")],
                false,
                false,
            ),
            (
                rejected(
                    Rejection::PermissionDenied,
                    403,
                    "IAM_PERMISSION_DENIED",
                    None,
                ),
                Code::PermissionDenied,
                Some("UPSTREAM_REJECTED"),
                vec![
                    ("upstream_status", "403"),
                    ("upstream_error", "IAM_PERMISSION_DENIED"),
                ],
                false,
                false,
            ),
            (
                rejected(Rejection::NotFound, 404, "NOT_FOUND", None),
                Code::NotFound,
                Some("UPSTREAM_REJECTED"),
                vec![("upstream_status", "404")],
                false,
                false,
            ),
            (
                rejected(Rejection::Other, 400, "invalid_request", None),
                Code::FailedPrecondition,
                Some("UPSTREAM_REJECTED"),
                vec![],
                false,
                false,
            ),
            (
                upstream(
                    SourceError::Unsupported {
                        flow: "access_boundary",
                        message: "x".into(),
                    },
                    DeadlineSource::Caller,
                ),
                Code::FailedPrecondition,
                Some("CREDENTIAL_FLOW_UNSUPPORTED"),
                vec![
                    ("credential", "prod"),
                    ("credential_type", "service_account"),
                    ("flow", "access_boundary"),
                ],
                false,
                false,
            ),
            (
                upstream(
                    SourceError::InvalidRequest {
                        field: "access_boundary".into(),
                        message: "x".into(),
                    },
                    DeadlineSource::Caller,
                ),
                Code::InvalidArgument,
                Some("INVALID_ACCESS_BOUNDARY"),
                vec![("field", "access_boundary")],
                false,
                true,
            ),
            (
                upstream(
                    SourceError::Internal("bad url".into()),
                    DeadlineSource::Caller,
                ),
                Code::Internal,
                None,
                vec![],
                false,
                false,
            ),
            (
                RpcError::Unimplemented("ExchangeToken"),
                Code::Unimplemented,
                Some("FEATURE_NOT_IMPLEMENTED"),
                vec![("feature", "ExchangeToken")],
                false,
                false,
            ),
        ]
    }

    #[test]
    fn every_row_of_the_error_contract() {
        for (error, code, reason, metadata, retry, bad_request) in rows() {
            let shown = format!("{error:?}");
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{shown}");
            let details = status.get_error_details();
            let Some(reason) = reason else {
                assert!(details.error_info().is_none(), "{shown}");
                assert!(!status.message().contains("bad url"), "{shown}");
                continue;
            };
            let info = details.error_info().expect("ErrorInfo");
            assert_eq!(info.reason, reason, "{shown}");
            assert_eq!(info.domain, DOMAIN);
            for (key, value) in metadata {
                assert_eq!(
                    info.metadata.get(key).map(String::as_str),
                    Some(value),
                    "{shown}: {key}"
                );
            }
            assert_eq!(details.retry_info().is_some(), retry, "{shown}");
            assert_eq!(details.bad_request().is_some(), bad_request, "{shown}");
        }
    }

    #[test]
    fn google_retry_after_becomes_the_retry_delay() {
        let status = Status::from(upstream(
            SourceError::Unavailable {
                upstream: TOKEN_HOST.into(),
                status: UpstreamStatus::Http(429),
                message: "x".into(),
                retry_after: Some(Duration::from_secs(7)),
            },
            DeadlineSource::Caller,
        ));
        let delay = status
            .get_error_details()
            .retry_info()
            .and_then(|r| r.retry_delay);
        assert_eq!(delay, Some(Duration::from_secs(7)));
    }
}
