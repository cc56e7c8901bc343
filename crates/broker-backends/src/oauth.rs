//! Reading OAuth 2.0 token responses and error bodies, shared by the token endpoint and STS
//! (google-protocols.md §1.4, §1.5, §4.3, §4.4).

use std::time::Duration;

use broker_core::{Rejection, Secret, SourceError};
use reqwest::StatusCode;
use serde_json::Value;

use crate::http::{Attempt, HttpResponse};

/// OAuth `error` (or `error_description`) values Google uses for failures that pass; Python
/// google-auth retries on them too.
const TRANSIENT_ERRORS: [&str; 3] = [
    "internal_failure",
    "server_error",
    "temporarily_unavailable",
];

/// The longest piece of Google's text quoted in an error message.
const MAX_QUOTED: usize = 300;

/// A successful token response.
pub(crate) struct TokenResponse {
    /// `access_token`.
    pub(crate) access_token: Secret,
    /// `expires_in`, when present.
    pub(crate) expires_in: Option<Duration>,
    /// `issued_token_type` (STS), when present.
    pub(crate) issued_token_type: Option<String>,
}

/// Whether an HTTP status is worth retrying: 5xx, 408, 429.
pub(crate) fn is_transient_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// Interprets a response of an OAuth-style endpoint (`what` names it in messages).
pub(crate) fn interpret(response: HttpResponse, what: &str) -> Attempt<TokenResponse> {
    let status = response.status;
    if status.is_success() {
        return match parse_success(&response.body) {
            Ok(token) => Attempt::Done(token),
            Err(problem) => Attempt::Fail(SourceError::Malformed(format!(
                "{what} answered HTTP {} {problem}",
                status.as_u16()
            ))),
        };
    }
    let body = serde_json::from_slice::<Value>(&response.body).ok();
    let field = |name: &str| {
        body.as_ref()
            .and_then(|b| b.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let error = field("error");
    let description = field("error_description");
    let message = match (&error, &description) {
        (Some(error), Some(description)) => format!(
            "{what} answered HTTP {}: {}: {}",
            status.as_u16(),
            quote(error),
            quote(description)
        ),
        (Some(error), None) => {
            format!("{what} answered HTTP {}: {}", status.as_u16(), quote(error))
        }
        _ => format!("{what} answered HTTP {}", status.as_u16()),
    };
    let transient_body = [&error, &description]
        .into_iter()
        .flatten()
        .any(|v| TRANSIENT_ERRORS.contains(&v.as_str()));
    if is_transient_status(status) || transient_body {
        return Attempt::Retry(message);
    }
    if !status.is_client_error() {
        return Attempt::Fail(SourceError::Malformed(message));
    }
    let rejection = match error.as_deref() {
        Some("invalid_grant") => Rejection::InvalidGrant,
        Some("invalid_scope") => Rejection::InvalidScope,
        Some("unauthorized_client") => Rejection::UnauthorizedClient,
        Some("invalid_client") => Rejection::Unauthenticated,
        Some(_) => Rejection::InvalidArgument,
        // Not an OAuth error body (a proxy, a load balancer): go by the status.
        None => match status {
            StatusCode::UNAUTHORIZED => Rejection::Unauthenticated,
            StatusCode::FORBIDDEN => Rejection::PermissionDenied,
            StatusCode::NOT_FOUND => Rejection::NotFound,
            _ => Rejection::InvalidArgument,
        },
    };
    Attempt::Fail(SourceError::Rejected { rejection, message })
}

/// Reads `{"access_token", "expires_in", "token_type", ...}`. Problems are described in words
/// of our own: serde's messages may quote values, and a value here may be a token.
fn parse_success(body: &[u8]) -> Result<TokenResponse, &'static str> {
    let body: Value = serde_json::from_slice(body).map_err(|_| "with a body that is not JSON")?;
    let object = body
        .as_object()
        .ok_or("with a body that is not a JSON object")?;
    let access_token = match object.get("access_token") {
        Some(Value::String(token)) if !token.is_empty() => Secret::new(token.as_str()),
        Some(_) => return Err("with an access_token that is not a non-empty string"),
        None => return Err("without an access_token"),
    };
    if let Some(token_type) = object.get("token_type")
        && !token_type
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
    {
        return Err("with a token_type other than Bearer");
    }
    let expires_in = match object.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            seconds(value).ok_or("with an expires_in that is not a positive number of seconds")?,
        ),
    };
    let issued_token_type = object
        .get("issued_token_type")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(TokenResponse {
        access_token,
        expires_in,
        issued_token_type,
    })
}

/// A positive number of seconds: an integer, or a numeric string (Python and Go accept both).
fn seconds(value: &Value) -> Option<Duration> {
    let seconds = match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 1.0 && *f < 1e12)
                .map(|f| f as u64)
        })?,
        Value::String(s) => s.trim().parse::<u64>().ok()?,
        _ => return None,
    };
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

/// Google's text, cut to [`MAX_QUOTED`] characters.
fn quote(text: &str) -> String {
    if text.chars().count() <= MAX_QUOTED {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(MAX_QUOTED).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status: StatusCode::from_u16(status).expect("status"),
            headers: HeaderMap::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn outcome(status: u16, body: &str) -> Attempt<TokenResponse> {
        interpret(response(status, body), "token endpoint")
    }

    #[test]
    fn expires_in_may_be_a_number_or_a_numeric_string() {
        for body in [
            r#"{"access_token":"t","expires_in":3599,"token_type":"Bearer"}"#,
            r#"{"access_token":"t","expires_in":"3599","token_type":"bearer"}"#,
            r#"{"access_token":"t","expires_in":3599.0}"#,
        ] {
            let Attempt::Done(token) = outcome(200, body) else {
                panic!("{body}");
            };
            assert_eq!(token.expires_in, Some(Duration::from_secs(3599)), "{body}");
            assert_eq!(token.access_token.expose(), "t");
        }
        let Attempt::Done(token) = outcome(200, r#"{"access_token":"t","token_type":"Bearer"}"#)
        else {
            panic!("no expires_in is not an error here");
        };
        assert_eq!(token.expires_in, None);
    }

    #[test]
    fn malformed_successes_never_quote_the_body() {
        for body in [
            r#"{"access_token": "ya29.trunc"#,
            r#"["ya29.secret"]"#,
            r#"{"expires_in":3599}"#,
            r#"{"access_token":"ya29.secret","expires_in":"soon"}"#,
            r#"{"access_token":"ya29.secret","expires_in":0}"#,
            r#"{"access_token":"ya29.secret","expires_in":-5}"#,
            r#"{"access_token":"ya29.secret","expires_in":3599,"token_type":"MAC"}"#,
        ] {
            match outcome(200, body) {
                Attempt::Fail(SourceError::Malformed(message)) => {
                    assert!(!message.contains("ya29"), "{message}");
                }
                _ => panic!("{body} should be malformed"),
            }
        }
    }

    #[test]
    fn errors_are_split_into_transient_and_permanent() {
        let transient = [
            (500, r#"{"error":"internal_failure"}"#),
            (503, "<html>busy</html>"),
            (429, r#"{"error":"rate_limit_exceeded"}"#),
            (408, ""),
            (
                400,
                r#"{"error":"temporarily_unavailable","error_description":"x"}"#,
            ),
            (400, r#"{"error":"x","error_description":"server_error"}"#),
        ];
        for (status, body) in transient {
            assert!(
                matches!(outcome(status, body), Attempt::Retry(_)),
                "{status} {body}"
            );
        }
        let permanent = [
            (
                400,
                r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
                Rejection::InvalidGrant,
            ),
            (400, r#"{"error":"invalid_scope"}"#, Rejection::InvalidScope),
            (
                401,
                r#"{"error":"unauthorized_client"}"#,
                Rejection::UnauthorizedClient,
            ),
            (
                401,
                r#"{"error":"invalid_client"}"#,
                Rejection::Unauthenticated,
            ),
            (
                400,
                r#"{"error":"invalid_request"}"#,
                Rejection::InvalidArgument,
            ),
            (
                403,
                r#"{"error":"access_denied"}"#,
                Rejection::InvalidArgument,
            ),
            (403, "Forbidden", Rejection::PermissionDenied),
            (404, "", Rejection::NotFound),
        ];
        for (status, body, expected) in permanent {
            match outcome(status, body) {
                Attempt::Fail(SourceError::Rejected { rejection, message }) => {
                    assert_eq!(rejection, expected, "{status} {body}");
                    assert!(message.contains(&status.to_string()), "{message}");
                }
                _ => panic!("{status} {body} should be permanent"),
            }
        }
        let Attempt::Fail(SourceError::Rejected { message, .. }) = outcome(
            400,
            r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
        ) else {
            panic!("rejected");
        };
        assert_eq!(
            message,
            "token endpoint answered HTTP 400: invalid_grant: Invalid JWT Signature."
        );
        assert!(matches!(
            outcome(302, ""),
            Attempt::Fail(SourceError::Malformed(_))
        ));
    }
}
