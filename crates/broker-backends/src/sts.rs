//! Downscoping a Google access token with a Credential Access Boundary at the Security Token
//! Service: an RFC 8693 token exchange (google-protocols.md §4.1, §4.3, §4.5).
//!
//! See <https://cloud.google.com/iam/docs/downscoping-short-lived-credentials> and
//! <https://www.rfc-editor.org/rfc/rfc8693>.

use std::time::Instant;

use broker_core::{AccessBoundary, Clock, Rejection, SourceError, Token};

use crate::http::HttpClient;
use crate::{GoogleEndpoints, oauth};

/// The RFC 8693 grant type.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of a Google access token, subject and result alike.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Google's limit on the `options` JSON.
const MAX_OPTIONS_LEN: usize = 4096;

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
/// [`SourceError::Rejected`] for STS's refusals (`invalid_grant` for an invalid or expired
/// subject token, `invalid_request` for a boundary it refuses, ...), or the transient errors of
/// [`HttpClient::send_with_retry`], or [`SourceError::Malformed`] for an answer that is not a
/// token.
pub async fn downscope(
    http: &HttpClient,
    endpoints: &GoogleEndpoints,
    clock: &dyn Clock,
    token: &Token,
    boundary: &AccessBoundary,
    deadline: Option<Instant>,
) -> Result<Token, SourceError> {
    let options = boundary.sts_options().to_string();
    if options.len() > MAX_OPTIONS_LEN {
        return Err(SourceError::Rejected {
            rejection: Rejection::InvalidArgument,
            message: format!(
                "the access boundary is {} characters of JSON; STS accepts at most {MAX_OPTIONS_LEN}",
                options.len()
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
            |response| oauth::interpret(response, "STS"),
        )
        .await?;
    if let Some(issued) = &response.issued_token_type
        && issued != ACCESS_TOKEN_TYPE
    {
        return Err(SourceError::Malformed(format!(
            "STS answered issued_token_type {:?}, not an access token",
            issued.chars().take(100).collect::<String>()
        )));
    }
    let expires_at = match response.expires_in {
        Some(expires_in) => (started + expires_in).min(token.expires_at),
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
