//! Reading OAuth 2.0 token responses and error bodies, shared by the token endpoint and STS
//! (google-protocols.md §1.4, §1.5, §4.3, §4.4).
//!
//! [`interpret`] does what every OAuth-style flow does alike: it reads a success, retries
//! transient failures, parses Google's error body once ([`OAuthError`]), sanitizes Google's
//! text and builds the [`UpstreamRejection`]. Whose fault a permanent refusal is depends on
//! the flow (`invalid_grant` blames the broker's key at the token endpoint, its access token
//! at STS), so the flow passes its classification: a function from [`OAuthError`] to a
//! [`Verdict`].

use std::time::Duration;

use broker_core::{Rejection, Secret, SourceError, UpstreamRejection};
use reqwest::StatusCode;
use serde_json::Value;

use crate::http::{Attempt, HttpResponse};
use crate::sanitize;

/// OAuth `error` (or `error_description`) values Google uses for failures that pass; Python
/// google-auth retries on them too.
const TRANSIENT_ERRORS: [&str; 3] = [
    "internal_failure",
    "server_error",
    "temporarily_unavailable",
];

/// A successful token response. `Debug` shows the token's fingerprint only.
#[derive(Debug)]
pub(crate) struct TokenResponse {
    /// The host that answered, for errors about the answer.
    pub(crate) upstream: String,
    /// `access_token`.
    pub(crate) access_token: Secret,
    /// `expires_in`, when present.
    pub(crate) expires_in: Option<Duration>,
    /// `issued_token_type` (STS), when present.
    pub(crate) issued_token_type: Option<String>,
    /// `id_token` (a refresh grant that was granted `openid`), when present.
    pub(crate) id_token: Option<Secret>,
}

/// A successful answer of the JWT-bearer grant for an ID token. `Debug` shows the token's
/// fingerprint only.
#[derive(Debug)]
pub(crate) struct IdTokenResponse {
    /// The host that answered, for errors about the answer.
    pub(crate) upstream: String,
    /// `id_token`: the JWT.
    pub(crate) id_token: Secret,
}

/// A permanent failure of an OAuth endpoint, as a flow's classification sees it. The strings
/// are Google's, unsanitized: match them, never quote them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OAuthError<'a> {
    /// The HTTP status (4xx).
    pub(crate) status: StatusCode,
    /// `error`; `None` when the body is no OAuth error body (a proxy's page, an empty body).
    pub(crate) error: Option<&'a str>,
    /// `error_description`, when given.
    pub(crate) description: Option<&'a str>,
}

impl OAuthError<'_> {
    /// Whether `error_description` contains `needle` (lowercase), ignoring case.
    pub(crate) fn description_mentions(&self, needle: &str) -> bool {
        self.description
            .is_some_and(|d| d.to_lowercase().contains(needle))
    }
}

/// A flow's reading of a permanent refusal: whose fault it is, and the request field Google
/// refused when the flow can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Whose fault.
    pub(crate) rejection: Rejection,
    /// The request field (`scopes`, `subject`, `access_boundary`, ...).
    pub(crate) field: Option<&'static str>,
}

impl Verdict {
    /// A refusal attributed to no request field.
    pub(crate) const fn of(rejection: Rejection) -> Self {
        Self {
            rejection,
            field: None,
        }
    }

    /// A refusal of the caller's value in `field`: [`Rejection::InvalidArgument`].
    pub(crate) const fn invalid(field: &'static str) -> Self {
        Self {
            rejection: Rejection::InvalidArgument,
            field: Some(field),
        }
    }

    /// A refusal whose OAuth error code a flow does not know (or that has none), read by its
    /// HTTP status: 401 is the broker's credential, 403 Google's IAM or policy, 404 a missing
    /// target; anything else is [`Rejection::Other`].
    pub(crate) fn by_status(status: StatusCode) -> Self {
        Self::of(match status.as_u16() {
            401 => Rejection::CredentialRejected,
            403 => Rejection::PermissionDenied,
            404 => Rejection::NotFound,
            _ => Rejection::Other,
        })
    }
}

/// Whether an HTTP status is worth retrying: 5xx, 408, 429.
pub(crate) fn is_transient_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// Interprets a response of an OAuth-style endpoint (`what` names it in messages) whose
/// success is an access token (`{"access_token", "expires_in", ...}`).
///
/// - 2xx: the token response, or [`SourceError::Malformed`] in words of our own (the body
///   may hold a token and is never quoted).
/// - 5xx, 408, 429, or an `error` or `error_description` of `internal_failure`,
///   `server_error` or `temporarily_unavailable`: [`Attempt::Retry`].
/// - Other 4xx: [`SourceError::Rejected`] whose category and field come from `classify`,
///   whose `error` is Google's `error` when it is a plain code ([`sanitize::error_code`]:
///   `unknown` when absent or not plain), and whose message quotes `error` and
///   `error_description` sanitized ([`sanitize::quote`]).
/// - Anything else (a redirect, which is never followed): [`SourceError::Malformed`].
pub(crate) fn interpret(
    response: HttpResponse,
    what: &str,
    classify: impl Fn(&OAuthError<'_>) -> Verdict,
) -> Attempt<TokenResponse> {
    interpret_with(response, what, classify, parse_success)
}

/// [`interpret`] for a grant whose success is an ID token alone (`{"id_token": ...}`: the
/// JWT-bearer grant with `target_audience`, google-protocols.md §1.4).
pub(crate) fn interpret_id_token(
    response: HttpResponse,
    what: &str,
    classify: impl Fn(&OAuthError<'_>) -> Verdict,
) -> Attempt<IdTokenResponse> {
    interpret_with(response, what, classify, parse_id_token_success)
}

/// [`interpret`] with the success read by `parse`, which describes a problem in words of its
/// own.
fn interpret_with<T>(
    response: HttpResponse,
    what: &str,
    classify: impl Fn(&OAuthError<'_>) -> Verdict,
    parse: impl Fn(&[u8], &str) -> Result<T, &'static str>,
) -> Attempt<T> {
    let HttpResponse {
        upstream,
        status,
        body,
        ..
    } = response;
    if status.is_success() {
        return match parse(&body, &upstream) {
            Ok(token) => Attempt::Done(token),
            Err(problem) => Attempt::Fail(SourceError::Malformed {
                upstream,
                message: format!("{what} answered HTTP {} {problem}", status.as_u16()),
            }),
        };
    }
    let body = serde_json::from_slice::<Value>(&body).ok();
    let text = |name: &str| {
        body.as_ref()
            .and_then(|b| b.get(name))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let error = OAuthError {
        status,
        error: text("error"),
        description: text("error_description"),
    };
    let message = match (error.error, error.description) {
        (Some(code), Some(description)) => format!(
            "{what} answered HTTP {}: {}: {}",
            status.as_u16(),
            sanitize::quote(code),
            sanitize::quote(description)
        ),
        (Some(code), None) => format!(
            "{what} answered HTTP {}: {}",
            status.as_u16(),
            sanitize::quote(code)
        ),
        (None, _) => format!("{what} answered HTTP {}", status.as_u16()),
    };
    let transient_body = [error.error, error.description]
        .into_iter()
        .flatten()
        .any(|v| TRANSIENT_ERRORS.contains(&v));
    if is_transient_status(status) || transient_body {
        return Attempt::Retry(message);
    }
    if !status.is_client_error() {
        return Attempt::Fail(SourceError::Malformed { upstream, message });
    }
    let verdict = classify(&error);
    Attempt::Fail(SourceError::Rejected(Box::new(UpstreamRejection {
        rejection: verdict.rejection,
        upstream,
        status: status.as_u16(),
        error: sanitize::error_code(error.error),
        field: verdict.field.map(str::to_owned),
        message,
    })))
}

/// Reads `{"id_token": ...}`. Problems are described in words of our own.
fn parse_id_token_success(body: &[u8], upstream: &str) -> Result<IdTokenResponse, &'static str> {
    let body: Value = serde_json::from_slice(body).map_err(|_| "with a body that is not JSON")?;
    match body.get("id_token") {
        Some(Value::String(token)) if !token.is_empty() => Ok(IdTokenResponse {
            upstream: upstream.to_owned(),
            id_token: Secret::new(token.as_str()),
        }),
        Some(_) => Err("with an id_token that is not a non-empty string"),
        None => Err("without an id_token"),
    }
}

/// Reads `{"access_token", "expires_in", "token_type", ...}`. Problems are described in words
/// of our own: serde's messages may quote values, and a value here may be a token.
pub(crate) fn parse_success(body: &[u8], upstream: &str) -> Result<TokenResponse, &'static str> {
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
    let id_token = match object.get("id_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(token)) if !token.is_empty() => Some(Secret::new(token.as_str())),
        Some(_) => return Err("with an id_token that is not a non-empty string"),
    };
    Ok(TokenResponse {
        upstream: upstream.to_owned(),
        access_token,
        expires_in,
        issued_token_type,
        id_token,
    })
}

/// The longest `expires_in` believed: Google issues no token living longer than 12 hours, and
/// a larger value (a broken or hostile answer) must not overflow the expiry arithmetic.
const MAX_EXPIRES_IN: u64 = 12 * 3600;

/// A positive number of seconds: an integer, or a numeric string (Python and Go accept both),
/// capped at [`MAX_EXPIRES_IN`].
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
    (seconds > 0).then(|| Duration::from_secs(seconds.min(MAX_EXPIRES_IN)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use reqwest::header::HeaderMap;

    pub(crate) const UPSTREAM: &str = "oauth2.googleapis.com";

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            upstream: UPSTREAM.to_owned(),
            status: StatusCode::from_u16(status).expect("status"),
            headers: HeaderMap::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    /// The outcome of a response under `classify`.
    pub(crate) fn outcome_with(
        status: u16,
        body: &str,
        classify: impl Fn(&OAuthError<'_>) -> Verdict,
    ) -> Attempt<TokenResponse> {
        interpret(response(status, body), "token endpoint", classify)
    }

    /// The rejection a permanent failure becomes under `classify`.
    pub(crate) fn rejection_with(
        status: u16,
        body: &str,
        classify: impl Fn(&OAuthError<'_>) -> Verdict,
    ) -> UpstreamRejection {
        match outcome_with(status, body, classify) {
            Attempt::Fail(SourceError::Rejected(rejection)) => *rejection,
            other => panic!("{status} {body} should be rejected, got {other:?}"),
        }
    }

    fn outcome(status: u16, body: &str) -> Attempt<TokenResponse> {
        outcome_with(status, body, |_| Verdict::of(Rejection::Other))
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
            assert_eq!(token.upstream, UPSTREAM);
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
                Attempt::Fail(SourceError::Malformed { upstream, message }) => {
                    assert_eq!(upstream, UPSTREAM);
                    assert!(!message.contains("ya29"), "{message}");
                }
                other => panic!("{body} should be malformed, got {other:?}"),
            }
        }
    }

    #[test]
    fn transient_failures_are_retried_before_any_classification() {
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
            let outcome = outcome_with(status, body, |_| panic!("not classified"));
            assert!(matches!(outcome, Attempt::Retry(_)), "{status} {body}");
        }
        let Attempt::Retry(message) = outcome(
            503,
            r#"{"error":"x\u001b[2J","error_description":"down\nnow"}"#,
        ) else {
            panic!("transient");
        };
        assert_eq!(
            message,
            "token endpoint answered HTTP 503: x\\u{1b}[2J: down\\nnow"
        );
        assert!(matches!(
            outcome(302, ""),
            Attempt::Fail(SourceError::Malformed { .. })
        ));
    }

    #[test]
    fn the_classification_sees_googles_error_and_the_rejection_carries_it_sanitized() {
        let seen = std::cell::RefCell::new(Vec::new());
        let classify = |e: &OAuthError<'_>| {
            seen.borrow_mut().push((
                e.status.as_u16(),
                e.error.map(str::to_owned),
                e.description.map(str::to_owned),
            ));
            Verdict::invalid("scopes")
        };
        let long = "d".repeat(10_000);
        // (status, body, error code kept, message)
        let cases = [
            (
                400,
                r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#
                    .to_owned(),
                "invalid_grant",
                "token endpoint answered HTTP 400: invalid_grant: Invalid JWT Signature."
                    .to_owned(),
            ),
            (
                400,
                r#"{"error":"invalid_scope"}"#.to_owned(),
                "invalid_scope",
                "token endpoint answered HTTP 400: invalid_scope".to_owned(),
            ),
            (
                400,
                r#"{"error":"bad code","error_description":"line\nnext \u001b[31mred"}"#.to_owned(),
                "unknown",
                "token endpoint answered HTTP 400: bad code: line\\nnext \\u{1b}[31mred".to_owned(),
            ),
            (
                400,
                format!(r#"{{"error":"{}"}}"#, "e".repeat(65)),
                "unknown",
                format!("token endpoint answered HTTP 400: {}", "e".repeat(65)),
            ),
            (
                400,
                format!(r#"{{"error":"invalid_request","error_description":"{long}"}}"#),
                "invalid_request",
                format!(
                    "token endpoint answered HTTP 400: invalid_request: {}…",
                    "d".repeat(sanitize::MAX_QUOTED)
                ),
            ),
            (
                403,
                "<html>Forbidden: ya29.secret</html>".to_owned(),
                "unknown",
                "token endpoint answered HTTP 403".to_owned(),
            ),
            (
                401,
                r#"{"error":"","error_description":"empty code"}"#.to_owned(),
                "unknown",
                "token endpoint answered HTTP 401".to_owned(),
            ),
        ];
        for (status, body, code, message) in &cases {
            let rejection = rejection_with(*status, body, classify);
            assert_eq!(
                rejection,
                UpstreamRejection {
                    rejection: Rejection::InvalidArgument,
                    upstream: UPSTREAM.to_owned(),
                    status: *status,
                    error: (*code).to_owned(),
                    field: Some("scopes".to_owned()),
                    message: message.clone(),
                },
                "{body}"
            );
        }
        let seen = seen.into_inner();
        assert_eq!(seen.len(), cases.len());
        // The classification gets Google's text as sent, to match on.
        assert_eq!(
            seen[2],
            (
                400,
                Some("bad code".to_owned()),
                Some("line\nnext \u{1b}[31mred".to_owned())
            )
        );
        assert_eq!(seen[5], (403, None, None));
        assert_eq!(seen[6], (401, None, Some("empty code".to_owned())));
    }

    #[test]
    fn description_mentions_ignores_case() {
        let error = OAuthError {
            status: StatusCode::BAD_REQUEST,
            error: Some("invalid_grant"),
            description: Some("Invalid Email or User ID"),
        };
        assert!(error.description_mentions("email or user id"));
        assert!(!error.description_mentions("signature"));
        let bare = OAuthError {
            description: None,
            ..error
        };
        assert!(!bare.description_mentions("email or user id"));
    }
}
