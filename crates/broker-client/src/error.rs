//! The client's error type and the decoding of the broker's rich gRPC errors.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt as _;

/// The `domain` of every `google.rpc.ErrorInfo` the broker sends.
pub const ERROR_DOMAIN: &str = "tokenbroker.dev";

/// Which of the three TLS files a [`ClientError::TlsFile`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsFileKind {
    /// The CA certificate(s) that verify the broker's server certificate.
    Ca,
    /// The client certificate (chain) presented to the broker.
    Cert,
    /// The private key of the client certificate.
    Key,
}

impl fmt::Display for TlsFileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ca => "CA certificate file",
            Self::Cert => "client certificate file",
            Self::Key => "client key file",
        })
    }
}

/// Everything that can go wrong in this crate.
///
/// No variant ever contains a token or the contents of a private key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Invalid settings: an endpoint that is not `https://host:port`, a duration that is not
    /// whole seconds, and the like.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// One of the TLS files could not be read or used. Names the file and the reason, never
    /// the file's contents.
    #[error("{kind} {}: {reason}", path.display())]
    TlsFile {
        /// Which file.
        kind: TlsFileKind,
        /// Its path.
        path: PathBuf,
        /// Why it could not be used.
        reason: String,
    },

    /// The TLS handshake with the broker failed: the broker's certificate is not trusted by the
    /// configured CA, does not name the host, or the broker refused the client certificate.
    #[error("TLS handshake with {endpoint} failed: {reason}")]
    Tls {
        /// The endpoint, as `https://host:port`.
        endpoint: String,
        /// What failed.
        reason: String,
    },

    /// The broker could not be reached (DNS, TCP, timeout, HTTP/2).
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint, as `https://host:port`.
        endpoint: String,
        /// What failed.
        reason: String,
    },

    /// The broker (or the gRPC layer) answered an RPC with an error status.
    #[error("{0}")]
    Status(Box<StatusError>),

    /// The broker answered with a response this client cannot use (for example without an
    /// `expire_time`).
    #[error("invalid response from the broker: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The decoded status, if this is a [`ClientError::Status`].
    pub fn status(&self) -> Option<&StatusError> {
        match self {
            Self::Status(status) => Some(status),
            _ => None,
        }
    }

    /// The gRPC status code, if this is a [`ClientError::Status`].
    pub fn code(&self) -> Option<Code> {
        self.status().map(|status| status.code)
    }

    /// True if the same request may succeed later: UNAVAILABLE or RESOURCE_EXHAUSTED (the two
    /// statuses the broker asks clients to retry), or a failure to connect.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status(status) => status.is_retryable(),
            Self::Connect { .. } => true,
            _ => false,
        }
    }
}

/// The endpoint named by a [`ClientError::Tls`] that happened on an RPC, where the channel's
/// address is not at hand.
const UNNAMED_ENDPOINT: &str = "the broker";

impl From<tonic::Status> for ClientError {
    /// Decodes the status; a status caused by a failed TLS handshake (the channel reconnected
    /// and the broker refused the client certificate, say) becomes [`ClientError::Tls`].
    fn from(status: tonic::Status) -> Self {
        if let Some(reason) = StdError::source(&status).and_then(tls_failure) {
            return Self::Tls {
                endpoint: UNNAMED_ENDPOINT.to_owned(),
                reason,
            };
        }
        Self::Status(Box::new(StatusError::from_status(&status)))
    }
}

impl From<StatusError> for ClientError {
    fn from(status: StatusError) -> Self {
        Self::Status(Box::new(status))
    }
}

/// One entry of a `google.rpc.BadRequest`: a request field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field path, for example `scopes[2]`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// A failed RPC, with the broker's `google.rpc` error details decoded.
///
/// Its `Display` is one line, for example
/// `PERMISSION_DENIED (POLICY_DENIED): scope not allowed [grant=ci, rule=scopes, value=https://...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatusError {
    /// The gRPC status code. Branch on this first.
    pub code: Code,
    /// The status message, for humans; it may change between broker releases.
    pub message: String,
    /// `ErrorInfo.reason`, for example `POLICY_DENIED` (see `error_reason.proto`). Branch on
    /// this second; treat an unknown reason like the status code alone.
    pub reason: Option<String>,
    /// `ErrorInfo.domain`: [`ERROR_DOMAIN`] for errors from the broker itself.
    pub domain: Option<String>,
    /// `ErrorInfo.metadata`, for example `rule`, `grant`, `field`, `value`, `caller`.
    pub metadata: BTreeMap<String, String>,
    /// `RetryInfo.retry_delay`: how long to wait before retrying.
    pub retry_after: Option<Duration>,
    /// `BadRequest.field_violations`.
    pub field_violations: Vec<FieldViolation>,
}

impl StatusError {
    /// Decodes a `tonic::Status`, including the `google.rpc.Status` details in its
    /// `grpc-status-details-bin` trailer (`ErrorInfo`, `RetryInfo`, `BadRequest`). Details that
    /// are missing or malformed are left empty.
    pub fn from_status(status: &tonic::Status) -> Self {
        let details = status.get_error_details();
        let (reason, domain, metadata) = match details.error_info() {
            Some(info) => (
                non_empty(&info.reason),
                non_empty(&info.domain),
                info.metadata
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect(),
            ),
            None => (None, None, BTreeMap::new()),
        };
        let retry_after = details.retry_info().and_then(|info| info.retry_delay);
        let field_violations = details
            .bad_request()
            .map(|bad| {
                bad.field_violations
                    .iter()
                    .map(|violation| FieldViolation {
                        field: violation.field.clone(),
                        description: violation.description.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();

        // Transport failures (connection refused, TLS) come as statuses whose message is terse
        // and whose source has the detail.
        let message = match StdError::source(status) {
            Some(source) => join_chain(vec![status.message().to_owned()], source),
            None => status.message().to_owned(),
        };

        Self {
            code: status.code(),
            message,
            reason,
            domain,
            metadata,
            retry_after,
            field_violations,
        }
    }

    /// The status code's canonical name, for example `PERMISSION_DENIED`.
    pub fn code_name(&self) -> &'static str {
        code_name(self.code)
    }

    /// A value of `ErrorInfo.metadata`, for example `get("rule")`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// True for the statuses the broker asks clients to retry (after the
    /// [`retry_after`](Self::retry_after) delay, with backoff): UNAVAILABLE and
    /// RESOURCE_EXHAUSTED.
    pub fn is_retryable(&self) -> bool {
        matches!(self.code, Code::Unavailable | Code::ResourceExhausted)
    }
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code_name())?;
        if let Some(reason) = &self.reason {
            write!(f, " ({reason})")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if !self.metadata.is_empty() {
            f.write_str(" [")?;
            for (index, (key, value)) in self.metadata.iter().enumerate() {
                if index > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{key}={value}")?;
            }
            f.write_str("]")?;
        }
        if let Some(delay) = self.retry_after {
            write!(f, " (retry after {}s)", whole_seconds_ceil(delay))?;
        }
        Ok(())
    }
}

/// The canonical name of a gRPC status code, for example `PERMISSION_DENIED`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A duration in whole seconds, rounded up (so that "retry after 0s" means no delay at all).
pub fn whole_seconds_ceil(duration: Duration) -> u64 {
    let secs = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

/// Renders an error and its sources as `a: b: c`, skipping a source whose text the previous
/// message already contains. `std::io::Error` hides the error it wraps from `source()`, so
/// that one is unwrapped by hand.
pub(crate) fn error_chain(error: &(dyn StdError + 'static)) -> String {
    join_chain(Vec::new(), error)
}

/// [`error_chain`], after the given leading parts.
fn join_chain(mut parts: Vec<String>, error: &(dyn StdError + 'static)) -> String {
    parts.retain(|part| !part.is_empty());
    let mut next = Some(error);
    while let Some(current) = next {
        let text = current.to_string();
        if !text.is_empty() && !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn StdError + 'static))
                .and_then(StdError::source),
            None => current.source(),
        };
    }
    parts.join(": ")
}

/// If an error (or one of its sources) is a failed TLS handshake, explains it with a hint at
/// the usual cause.
///
/// A `rustls::Error` is found by type where the chain keeps it (`std::io::Error` hides the
/// error it wraps from `source()`, so that one is opened by hand). A connection that breaks
/// under an RPC reaches us through h2, which keeps only the text of I/O errors; there the
/// rustls messages are recognised by their text.
pub(crate) fn tls_failure(error: &(dyn StdError + 'static)) -> Option<String> {
    if let Some(tls) = find_rustls_error(error) {
        return Some(match tls {
            rustls::Error::InvalidCertificate(_) => untrusted_server(&tls.to_string()),
            rustls::Error::AlertReceived(_) => refused_client(&tls.to_string()),
            _ => tls.to_string(),
        });
    }
    let text = error_chain(error);
    let start = |needle: &str| text.find(needle).map(|at| &text[at..]);
    if let Some(alert) = start("received fatal alert") {
        Some(refused_client(alert))
    } else {
        start("invalid peer certificate").map(untrusted_server)
    }
}

fn untrusted_server(what: &str) -> String {
    format!(
        "{what}: the broker's certificate is not trusted (is the CA file the one that issued \
         the broker's certificate, and does the certificate name this host?)"
    )
}

fn refused_client(what: &str) -> String {
    format!(
        "{what}: the broker refused the client certificate (is it issued by a CA the broker \
         trusts, and still valid?)"
    )
}

/// Finds a `rustls::Error` in an error's chain, looking inside `std::io::Error`s too.
fn find_rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(found) = current.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        next = match current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => current.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic_types::{ErrorDetails, FieldViolation as PbFieldViolation};

    use super::*;

    fn policy_denied() -> tonic::Status {
        let mut details = ErrorDetails::with_error_info(
            "POLICY_DENIED",
            ERROR_DOMAIN,
            HashMap::from([
                ("rule".to_owned(), "scopes".to_owned()),
                ("grant".to_owned(), "ci".to_owned()),
                (
                    "value".to_owned(),
                    "https://www.googleapis.com/auth/admin".to_owned(),
                ),
            ]),
        );
        details.set_retry_info(Some(Duration::from_millis(1500)));
        tonic::Status::with_error_details(
            Code::PermissionDenied,
            "scope not allowed by grant ci",
            details,
        )
    }

    #[test]
    fn decodes_error_info_retry_info_and_bad_request() {
        let status = StatusError::from_status(&policy_denied());
        assert_eq!(status.code, Code::PermissionDenied);
        assert_eq!(status.reason.as_deref(), Some("POLICY_DENIED"));
        assert_eq!(status.domain.as_deref(), Some(ERROR_DOMAIN));
        assert_eq!(status.get("rule"), Some("scopes"));
        assert_eq!(status.get("grant"), Some("ci"));
        assert_eq!(status.retry_after, Some(Duration::from_millis(1500)));
        assert!(!status.is_retryable());

        let mut details = ErrorDetails::with_error_info(
            "INVALID_SCOPE",
            ERROR_DOMAIN,
            HashMap::from([("field".to_owned(), "scopes[1]".to_owned())]),
        );
        details.set_bad_request(vec![PbFieldViolation::new("scopes[1]", "contains a space")]);
        let status = StatusError::from_status(&tonic::Status::with_error_details(
            Code::InvalidArgument,
            "bad scope",
            details,
        ));
        assert_eq!(
            status.field_violations,
            vec![FieldViolation {
                field: "scopes[1]".to_owned(),
                description: "contains a space".to_owned(),
            }]
        );
    }

    #[test]
    fn displays_code_reason_message_sorted_metadata_and_retry() {
        let error = ClientError::from(policy_denied());
        assert_eq!(
            error.to_string(),
            "PERMISSION_DENIED (POLICY_DENIED): scope not allowed by grant ci \
             [grant=ci, rule=scopes, value=https://www.googleapis.com/auth/admin] (retry after 2s)"
        );
        assert_eq!(error.code(), Some(Code::PermissionDenied));
    }

    #[test]
    fn a_status_without_details_is_just_code_and_message() {
        let error = ClientError::from(tonic::Status::unavailable("try later"));
        assert_eq!(error.to_string(), "UNAVAILABLE: try later");
        assert!(error.is_retryable());
        let status = error.status().map(|s| s.reason.clone());
        assert_eq!(status, Some(None));
    }

    #[test]
    fn tls_file_errors_name_the_file() {
        let error = ClientError::TlsFile {
            kind: TlsFileKind::Key,
            path: PathBuf::from("/etc/client.key"),
            reason: "no private key found".to_owned(),
        };
        assert_eq!(
            error.to_string(),
            "client key file /etc/client.key: no private key found"
        );
    }

    #[test]
    fn error_chain_unwraps_io_errors_and_skips_repeats() {
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, "bad certificate");
        let outer = std::io::Error::other(inner);
        assert_eq!(error_chain(&outer), "bad certificate");

        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(matches!(
            find_rustls_error(&tls),
            Some(rustls::Error::InvalidCertificate(_))
        ));
        let reason = tls_failure(&tls).unwrap_or_default();
        assert!(
            reason.starts_with(
                "invalid peer certificate: UnknownIssuer: the broker's certificate is not trusted"
            ),
            "{reason}"
        );

        // As it arrives through h2: only the text is left.
        let text = std::io::Error::other("connection error: received fatal alert: UnknownCA");
        let reason = tls_failure(&text).unwrap_or_default();
        assert!(
            reason.starts_with(
                "received fatal alert: UnknownCA: the broker refused the client certificate"
            ),
            "{reason}"
        );
        assert_eq!(
            tls_failure(&std::io::Error::other("connection refused")),
            None
        );
    }

    #[test]
    fn whole_seconds_round_up() {
        assert_eq!(whole_seconds_ceil(Duration::ZERO), 0);
        assert_eq!(whole_seconds_ceil(Duration::from_secs(3)), 3);
        assert_eq!(whole_seconds_ceil(Duration::from_millis(3001)), 4);
    }
}
