//! Google's error bodies: the OAuth2 shape (token endpoint, STS) and the Google API envelope
//! (IAM Credentials).

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An OAuth2-style error: `{"error": …, "error_description": …}`.
#[derive(Debug, Clone)]
pub struct OAuthError {
    status: StatusCode,
    error: Cow<'static, str>,
    description: String,
}

impl OAuthError {
    /// An error with an explicit status.
    pub fn new(
        status: StatusCode,
        error: impl Into<Cow<'static, str>>,
        description: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error: error.into(),
            description: description.into(),
        }
    }

    /// 400 `invalid_grant`.
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// 400 `invalid_scope`.
    pub fn invalid_scope(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", description)
    }

    /// 401 `unauthorized_client`.
    pub fn unauthorized_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized_client", description)
    }

    /// The error for an HTTP status injected by a fault: `error` and `description` when
    /// given, else a code that fits the status (`temporarily_unavailable` for 429 and 503,
    /// `internal_failure` for other 5xx, `invalid_client` for 401, `invalid_request` for the
    /// rest) and `injected fault: HTTP <status>`.
    pub fn for_fault(status: StatusCode, error: Option<&str>, description: Option<&str>) -> Self {
        let error: Cow<'static, str> = match error {
            Some(error) => error.to_owned().into(),
            None => match status.as_u16() {
                429 | 503 => "temporarily_unavailable",
                500..=599 => "internal_failure",
                401 => "invalid_client",
                _ => "invalid_request",
            }
            .into(),
        };
        let description = description.map_or_else(|| injected(status), str::to_owned);
        Self::new(status, error, description)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        json_response(
            self.status,
            json!({"error": self.error, "error_description": self.description}),
        )
    }
}

/// The description or message of an injected fault that names none.
fn injected(status: StatusCode) -> String {
    format!("injected fault: HTTP {}", status.as_u16())
}

/// A Google API error envelope: `{"error": {"code", "message", "status", "details"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    details: Vec<serde_json::Value>,
}

impl ApiError {
    /// An error with the canonical status name derived from the HTTP status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// The error for an HTTP status injected by a fault: `description` as the message (else
    /// `injected fault: HTTP <status>`), the canonical status of the HTTP status, and with
    /// `reason` a `google.rpc.ErrorInfo` of that reason in the domain `iam.googleapis.com`.
    pub fn for_fault(status: StatusCode, reason: Option<&str>, description: Option<&str>) -> Self {
        let error = Self::new(
            status,
            description.map_or_else(|| injected(status), str::to_owned),
        );
        match reason {
            Some(reason) => error.with_reason(reason, "iam.googleapis.com", json!({})),
            None => error,
        }
    }

    /// 400 INVALID_ARGUMENT.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401 UNAUTHENTICATED, as Google words it.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, \
             login cookie or other valid authentication credential. See \
             https://developers.google.com/identity/sign-in/web/devconsole-project.",
        )
        .with_reason("ACCESS_TOKEN_TYPE_UNSUPPORTED", "googleapis.com", json!({}))
    }

    /// 403 PERMISSION_DENIED for a missing IAM permission.
    pub fn permission_denied(permission: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            format!("Permission '{permission}' denied on resource (or it may not exist)."),
        )
        .with_reason(
            "IAM_PERMISSION_DENIED",
            "iam.googleapis.com",
            json!({"permission": permission}),
        )
    }

    /// 404 NOT_FOUND for an unknown service account.
    pub fn account_not_found(email: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("Not found; Gaia id not found for email {email}"),
        )
    }

    /// Adds a `google.rpc.ErrorInfo` detail.
    pub fn with_reason(mut self, reason: &str, domain: &str, metadata: serde_json::Value) -> Self {
        self.details.push(json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason,
            "domain": domain,
            "metadata": metadata,
        }));
        self
    }
}

/// The canonical gRPC status name Google pairs with an HTTP status.
pub fn canonical_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ if status.is_server_error() => "INTERNAL",
        _ => "FAILED_PRECONDITION",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({
            "code": self.status.as_u16(),
            "message": self.message,
            "status": canonical_status(self.status),
        });
        if !self.details.is_empty() {
            error["details"] = self.details.into();
        }
        json_response(self.status, json!({ "error": error }))
    }
}

/// A JSON response with Google's content type.
pub fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}
