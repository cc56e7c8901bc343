//! Downscoping a Google access token with a Credential Access Boundary at the Security Token
//! Service: an RFC 8693 token exchange (google-protocols.md §4.1, §4.3, §4.5).
//!
//! See <https://cloud.google.com/iam/docs/downscoping-short-lived-credentials> and
//! <https://www.rfc-editor.org/rfc/rfc8693>.

use std::time::Instant;

use broker_core::{AccessBoundary, Clock, MAX_OPTIONS_LEN, Rejection, SourceError, Token};

use crate::GoogleEndpoints;
use crate::http::HttpClient;
use crate::oauth::{self, OAuthError, Verdict};

/// The RFC 8693 grant type.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of a Google access token, subject and result alike.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Exchanges `token` for one restricted by `boundary`, posting to
/// [`GoogleEndpoints::sts_url`].
///
/// The form carries `grant_type` (token exchange), `subject_token_type` and
/// `requested_token_type` (access token), `subject_token` and `options` =
/// `{"accessBoundary": ...}` as plain JSON in one form value (as Go's client sends it; no audience
/// or scope). Google answers without `expires_in`: the result expires with `token`. Should an
/// `expires_in` come, the result still never outlives `token`. Scopes and principal are
/// `token`'s. Transient failures are retried like every call ([`HttpClient::send_with_retry`]);
/// `clock` dates an `expires_in`.
///
/// # Errors
///
/// Errors from STS name its host (`sts.googleapis.com`) as their `upstream`, never the token
/// endpoint's.
///
/// - [`SourceError::Rejected`] for STS's refusals, classified as follows:
///
///   | STS `error` | rejection | field |
///   |---|---|---|
///   | `invalid_request`, `invalid_scope` | `InvalidArgument` (STS refused the boundary) | `access_boundary` |
///   | `invalid_grant` | `CredentialRejected` (STS refused the broker's own access token) | |
///   | `unauthorized_client`, `access_denied` | `PermissionDenied` | |
///   | `invalid_target` | `NotFound` | |
///   | anything else, or no OAuth error body: by HTTP status, 401 / 403 / 404 / other 4xx | `CredentialRejected` / `PermissionDenied` / `NotFound` / `Other` | |
///
/// - the transient errors of [`HttpClient::send_with_retry`];
/// - [`SourceError::Malformed`] for an answer that is not an access token;
/// - [`SourceError::InvalidRequest`] (field `access_boundary`, nothing sent) for a boundary
///   whose `options` exceed [`MAX_OPTIONS_LEN`] characters, which
///   [`AccessBoundary::validate`] already refuses.
pub async fn downscope(
    http: &HttpClient,
    endpoints: &GoogleEndpoints,
    clock: &dyn Clock,
    token: &Token,
    boundary: &AccessBoundary,
    deadline: Option<Instant>,
) -> Result<Token, SourceError> {
    let options = boundary.sts_options().to_string();
    let length = options.chars().count();
    if length > MAX_OPTIONS_LEN {
        return Err(SourceError::InvalidRequest {
            field: "access_boundary".to_owned(),
            message: format!(
                "the boundary makes {length} characters of STS options; STS accepts at most {MAX_OPTIONS_LEN}"
            ),
        });
    }
    let sts_url = endpoints.sts_url.as_str();
    let started = clock.now();
    let response = http
        .send_with_retry(
            "sts.token",
            deadline,
            |client| {
                client.post(sts_url).form(&[
                    ("grant_type", TOKEN_EXCHANGE),
                    ("subject_token_type", ACCESS_TOKEN_TYPE),
                    ("requested_token_type", ACCESS_TOKEN_TYPE),
                    ("subject_token", token.secret.expose()),
                    ("options", options.as_str()),
                ])
            },
            |response| oauth::interpret(response, "STS", classify),
        )
        .await?;
    if response
        .issued_token_type
        .as_ref()
        .is_some_and(|issued| issued != ACCESS_TOKEN_TYPE)
    {
        // Not quoted: nothing of a successful answer is.
        return Err(SourceError::Malformed {
            upstream: response.upstream,
            message: "STS answered HTTP 200 with an issued_token_type other than an access token"
                .to_owned(),
        });
    }
    let expires_at = match response.expires_in {
        Some(expires_in) => started
            .checked_add(expires_in)
            .map_or(token.expires_at, |at| at.min(token.expires_at)),
        None => token.expires_at,
    };
    let downscoped = Token {
        secret: response.access_token,
        expires_at,
        scopes: token.scopes.clone(),
        principal: token.principal.clone(),
    };
    tracing::debug!(
        principal = %downscoped.principal,
        source_token = %token.secret.fingerprint(),
        token = %downscoped.secret.fingerprint(),
        rules = boundary.rules.len(),
        "token downscoped"
    );
    Ok(downscoped)
}

/// `token`, downscoped by `boundary` when there is one: the last step of every flow that
/// mints access tokens.
pub(crate) async fn apply_boundary(
    http: &HttpClient,
    endpoints: &GoogleEndpoints,
    clock: &dyn Clock,
    token: Token,
    boundary: Option<&AccessBoundary>,
    deadline: Option<Instant>,
) -> Result<Token, SourceError> {
    match boundary {
        Some(boundary) => downscope(http, endpoints, clock, &token, boundary, deadline).await,
        None => Ok(token),
    }
}

/// Whose fault STS's refusal of a downscoping is (see [`downscope`]).
fn classify(error: &OAuthError<'_>) -> Verdict {
    match error.error {
        Some("invalid_request" | "invalid_scope") => Verdict::invalid("access_boundary"),
        Some("invalid_grant") => Verdict::of(Rejection::CredentialRejected),
        Some("unauthorized_client" | "access_denied") => Verdict::of(Rejection::PermissionDenied),
        Some("invalid_target") => Verdict::of(Rejection::NotFound),
        _ => Verdict::by_status(error.status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::tests::rejection_with;

    #[test]
    fn sts_refusals_are_classified_by_whose_fault_they_are() {
        #[rustfmt::skip]
        let cases = [
            (400, "invalid_request", Rejection::InvalidArgument, Some("access_boundary")),
            (400, "invalid_scope", Rejection::InvalidArgument, Some("access_boundary")),
            (400, "invalid_grant", Rejection::CredentialRejected, None),
            (400, "unauthorized_client", Rejection::PermissionDenied, None),
            (403, "access_denied", Rejection::PermissionDenied, None),
            (400, "invalid_target", Rejection::NotFound, None),
            (400, "unsupported_grant_type", Rejection::Other, None),
            (400, "invalid_client", Rejection::Other, None),
            (400, "something_new", Rejection::Other, None),
            (403, "something_new", Rejection::PermissionDenied, None),
            (404, "something_new", Rejection::NotFound, None),
        ];
        for (status, code, rejection, field) in cases {
            let body = format!(r#"{{"error":"{code}","error_description":"why"}}"#);
            let got = rejection_with(status, &body, classify);
            assert_eq!(
                (got.rejection, got.field.as_deref(), got.error.as_str()),
                (rejection, field, code),
                "{status} {code}"
            );
        }
        for (status, body, rejection) in [
            (400, "", Rejection::Other),
            (401, "", Rejection::CredentialRejected),
            (403, "Forbidden", Rejection::PermissionDenied),
            (404, "<html>Not Found</html>", Rejection::NotFound),
        ] {
            let got = rejection_with(status, body, classify);
            assert_eq!(
                (got.rejection, got.field, got.error.as_str()),
                (rejection, None, "unknown"),
                "{status} {body}"
            );
        }
    }
}
