//! The one place where the broker's errors become gRPC statuses, with `google.rpc` details:
//! `ErrorInfo` (domain `tokenbroker.dev`, the reasons of `ErrorReason` in the proto),
//! `BadRequest` for malformed fields and `RetryInfo` where a retry makes sense.

use std::collections::HashMap;
use std::time::Duration;

use broker_cache::CacheError;
use broker_core::{Rejection, SourceError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The ErrorInfo domain of every broker error.
pub const DOMAIN: &str = "tokenbroker.dev";

/// Why an RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// No verified client certificate with a usable identity.
    #[error("a client certificate with a SPIFFE ID, DNS name or common name is required")]
    NoClientIdentity,
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
    /// The request names a credential that is not configured.
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
    /// The broker is shedding load.
    #[error("the broker is overloaded; retry shortly, preferably against another replica")]
    Overloaded,
    /// Google failed or refused, and no valid token was cached.
    #[error("{error}")]
    Upstream {
        /// The error from the cache or source.
        error: CacheError,
        /// The Google host called.
        upstream: String,
    },
    /// The RPC or feature comes in a later release.
    #[error("{0} is not implemented by this broker release yet")]
    Unimplemented(&'static str),
}

/// How long clients should wait after an overload.
const OVERLOAD_RETRY_DELAY: Duration = Duration::from_millis(200);
/// How long clients should wait after an upstream failure that gave no Retry-After.
const UPSTREAM_RETRY_DELAY: Duration = Duration::from_secs(1);

impl RpcError {
    /// The ErrorInfo reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoClientIdentity => "CLIENT_CERTIFICATE_REQUIRED",
            Self::InvalidField { reason, .. } => reason,
            Self::PolicyDenied { .. } => "POLICY_DENIED",
            Self::CredentialNotFound(_) => "CREDENTIAL_NOT_FOUND",
            Self::FlowUnsupported { .. } => "CREDENTIAL_FLOW_UNSUPPORTED",
            Self::Overloaded => "OVERLOADED",
            Self::Upstream { error, .. } if error.is_transient() => "UPSTREAM_UNAVAILABLE",
            Self::Upstream { .. } => "UPSTREAM_REJECTED",
            Self::Unimplemented(_) => "FEATURE_NOT_IMPLEMENTED",
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::NoClientIdentity => Code::Unauthenticated,
            Self::InvalidField { .. } => Code::InvalidArgument,
            Self::PolicyDenied { .. } => Code::PermissionDenied,
            Self::CredentialNotFound(_) => Code::NotFound,
            Self::FlowUnsupported { .. } => Code::FailedPrecondition,
            Self::Overloaded => Code::Unavailable,
            Self::Upstream { error, .. } => match error.source_error() {
                Some(SourceError::DeadlineExceeded { .. }) => Code::DeadlineExceeded,
                None | Some(SourceError::Unavailable { .. } | SourceError::Malformed(_)) => {
                    Code::Unavailable
                }
                Some(SourceError::Unsupported(_)) => Code::FailedPrecondition,
                Some(SourceError::Rejected { rejection, .. }) => match rejection {
                    Rejection::InvalidGrant
                    | Rejection::InvalidScope
                    | Rejection::InvalidArgument => Code::InvalidArgument,
                    Rejection::UnauthorizedClient | Rejection::PermissionDenied => {
                        Code::PermissionDenied
                    }
                    Rejection::NotFound => Code::NotFound,
                    Rejection::Unauthenticated => Code::FailedPrecondition,
                },
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
            Self::NoClientIdentity | Self::Overloaded | Self::Unimplemented(_) => {}
            Self::InvalidField {
                field, max_seconds, ..
            } => {
                put("field", field);
                if let Some(max) = max_seconds {
                    put("max_seconds", &max.to_string());
                }
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
            Self::Upstream { error, upstream } => {
                put("upstream", upstream);
                if let Some(SourceError::Rejected { rejection, .. }) = error.source_error() {
                    put("upstream_error", rejection_name(*rejection));
                }
            }
        }
        metadata
    }

    fn retry_delay(&self) -> Option<Duration> {
        match self {
            Self::Overloaded => Some(OVERLOAD_RETRY_DELAY),
            Self::Upstream { error, .. } if error.is_transient() => {
                Some(error.retry_after().unwrap_or(UPSTREAM_RETRY_DELAY))
            }
            _ => None,
        }
    }
}

fn rejection_name(rejection: Rejection) -> &'static str {
    match rejection {
        Rejection::InvalidGrant => "invalid_grant",
        Rejection::InvalidScope => "invalid_scope",
        Rejection::UnauthorizedClient => "unauthorized_client",
        Rejection::Unauthenticated => "invalid_client",
        Rejection::PermissionDenied => "permission_denied",
        Rejection::NotFound => "not_found",
        Rejection::InvalidArgument => "invalid_argument",
    }
}

impl From<RpcError> for Status {
    fn from(error: RpcError) -> Self {
        let mut details = ErrorDetails::new();
        details.set_error_info(error.reason(), DOMAIN, error.metadata());
        if let RpcError::InvalidField {
            field, description, ..
        } = &error
        {
            details.add_bad_request_violation(field.clone(), description.clone());
        }
        if let Some(delay) = error.retry_delay() {
            details.set_retry_info(Some(delay));
        }
        Status::with_error_details(error.code(), error.to_string(), details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_reason_field_and_retry_info() {
        let status = Status::from(RpcError::InvalidField {
            reason: "INVALID_SCOPE",
            field: "scopes[1]".into(),
            description: "not a scope".into(),
            max_seconds: None,
        });
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "INVALID_SCOPE");
        assert_eq!(info.domain, DOMAIN);
        assert_eq!(info.metadata["field"], "scopes[1]");
        assert_eq!(
            details.bad_request().expect("bad request").field_violations[0].field,
            "scopes[1]"
        );

        let status = Status::from(RpcError::Overloaded);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.get_error_details().retry_info().is_some());
    }
}
