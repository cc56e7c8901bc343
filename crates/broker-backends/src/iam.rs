//! A client of the IAM Service Account Credentials API (google-protocols.md §5):
//! `generateAccessToken`, `generateIdToken`, `signJwt` and `signBlob` on a target service
//! account, called with a bearer access token of the caller's choosing.
//!
//! See <https://cloud.google.com/iam/docs/reference/credentials/rest> and
//! <https://cloud.google.com/iam/docs/create-short-lived-credentials-direct>.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use broker_core::{Rejection, ScopeSet, Secret, SourceError, Token, UpstreamRejection};
use reqwest::Url;
use serde_json::{Value, json};

use crate::endpoints::host_of;
use crate::http::{Attempt, HttpClient, HttpResponse};
use crate::oauth::is_transient_status;
use crate::{BackendError, GoogleEndpoints, id_token, sanitize};

/// `generateAccessToken`'s lifetime when the caller names none, as Google's default.
pub const DEFAULT_IMPERSONATION_LIFETIME: Duration = Duration::from_secs(3600);

/// The `@type` of the `google.rpc.ErrorInfo` detail of Google's error envelope.
const ERROR_INFO: &str = "type.googleapis.com/google.rpc.ErrorInfo";

/// An IAM Credentials method.
#[derive(Debug, Clone, Copy)]
enum Method {
    GenerateAccessToken,
    GenerateIdToken,
    SignJwt,
    SignBlob,
}

impl Method {
    /// The method's name, as in the URL.
    fn name(self) -> &'static str {
        match self {
            Self::GenerateAccessToken => "generateAccessToken",
            Self::GenerateIdToken => "generateIdToken",
            Self::SignJwt => "signJwt",
            Self::SignBlob => "signBlob",
        }
    }

    /// The operation, as logs and errors name it.
    fn operation(self) -> &'static str {
        match self {
            Self::GenerateAccessToken => "iam.generateAccessToken",
            Self::GenerateIdToken => "iam.generateIdToken",
            Self::SignJwt => "iam.signJwt",
            Self::SignBlob => "iam.signBlob",
        }
    }
}

/// A JWT signed by IAM `signJwt` with a Google-managed key of the service account. `Debug`
/// shows the key id and the JWT's fingerprint only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedJwt {
    /// The id of the key that signed it (`keyId`): its certificate is published at
    /// `https://www.googleapis.com/robot/v1/metadata/x509/{email}` under this id.
    pub key_id: String,
    /// The signed JWT (`signedJwt`).
    pub signed_jwt: Secret,
}

/// A signature made by IAM `signBlob` with a Google-managed key of the service account:
/// RSASSA-PKCS1-v1_5 with SHA-256. `Debug` shows the key id and the signature's length only.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedBlob {
    /// The id of the key that signed it (`keyId`).
    pub key_id: String,
    /// The signature (`signedBlob`, decoded from base64).
    pub signature: Vec<u8>,
}

impl fmt::Debug for SignedBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedBlob")
            .field("key_id", &self.key_id)
            .field("signature_len", &self.signature.len())
            .finish()
    }
}

/// A client of IAM Service Account Credentials at [`GoogleEndpoints::iam_credentials_url`]:
/// `POST {base}/v1/projects/-/serviceAccounts/{target}:{method}` with
/// `Authorization: Bearer <token>` and a JSON body, exactly as google-protocols.md §5 says:
/// `delegates` as `projects/-/serviceAccounts/EMAIL` (the field is left out without a chain),
/// `lifetime` as `"<n>s"`, the signBlob payload in standard base64. `expireTime` is read as
/// RFC 3339. The caller chooses the bearer token: usually a `cloud-platform` token of the
/// broker's own credential (see [`crate::CLOUD_PLATFORM_SCOPE`]). The client never caches.
///
/// Transient failures (5xx, 408, 429, connection errors) are retried like every call
/// ([`HttpClient::send_with_retry`]). Google's error envelope
/// (`{"error": {"code", "message", "status", "details"}}`, §5.6) becomes a
/// [`SourceError::Rejected`] whose `error` is the `google.rpc.ErrorInfo` reason (such as
/// `IAM_PERMISSION_DENIED`), else the envelope's `status`, and whose message quotes the
/// status and message sanitized:
///
/// | HTTP | rejection | field |
/// |---|---|---|
/// | 400 | `InvalidArgument` | `lifetime` when the message is about the lifetime, else none |
/// | 401 (the bearer token) | `CredentialRejected` | |
/// | 403 (a missing Token Creator on a hop, or a target that may not exist) | `PermissionDenied` | |
/// | 404 (no such account) | `NotFound` | `delegates` when the message names a delegate, else `target_service_account` |
/// | other 4xx | `Other` | |
///
/// No secret (the bearer token, a minted token, a signed JWT, a signature) ever appears in a
/// message or a log line; logs carry fingerprints.
#[derive(Clone)]
pub struct IamCredentials {
    base: Url,
    http: HttpClient,
}

impl fmt::Debug for IamCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IamCredentials")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl IamCredentials {
    /// A client of the IAM Credentials API of `endpoints`.
    ///
    /// # Errors
    ///
    /// [`BackendError::InvalidEndpoint`] if an endpoint URL is unusable.
    pub fn new(endpoints: &GoogleEndpoints, http: HttpClient) -> Result<Self, BackendError> {
        endpoints.validate()?;
        let base = Url::parse(&endpoints.iam_credentials_url).map_err(|e| {
            BackendError::InvalidEndpoint {
                field: "iam_credentials_url",
                url: endpoints.iam_credentials_url.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok(Self { base, http })
    }

    /// `generateAccessToken`: an access token for `target` with `scopes`, living `lifetime`
    /// ([`DEFAULT_IMPERSONATION_LIFETIME`] when `None`; more than an hour only where the
    /// account allows it, up to 12 hours: Google decides), reached through `delegates`. The
    /// token's principal is `target`, its scopes `scopes`, its expiry Google's `expireTime`.
    ///
    /// # Errors
    ///
    /// See [`IamCredentials`]; [`SourceError::Malformed`] for an answer without an
    /// `accessToken` or an RFC 3339 `expireTime`.
    pub async fn generate_access_token(
        &self,
        token: &Secret,
        target: &str,
        delegates: &[String],
        scopes: &ScopeSet,
        lifetime: Option<Duration>,
        deadline: Option<Instant>,
    ) -> Result<Token, SourceError> {
        let lifetime = lifetime.unwrap_or(DEFAULT_IMPERSONATION_LIFETIME);
        let mut body = access_token_body(scopes, lifetime);
        add_delegates(&mut body, delegates);
        let url = self.method_url(target, Method::GenerateAccessToken);
        let (access_token, expires_at) = post(
            &self.http,
            &url,
            Method::GenerateAccessToken,
            token,
            None,
            delegates,
            &body,
            deadline,
            parse_access_token,
        )
        .await?;
        tracing::debug!(
            principal = target,
            delegates = delegates.len(),
            base_token = %token.fingerprint(),
            token = %access_token.fingerprint(),
            "impersonated token minted"
        );
        Ok(Token {
            secret: access_token,
            expires_at,
            scopes: scopes.clone(),
            principal: target.into(),
        })
    }

    /// `generateIdToken`: an ID token for `target` with `audience`, carrying `email` when
    /// `include_email`, reached through `delegates`. It expires at its `exp` claim.
    ///
    /// # Errors
    ///
    /// See [`IamCredentials`]; [`SourceError::Malformed`] for an answer without a JWT
    /// `token` with an integer `exp`.
    pub async fn generate_id_token(
        &self,
        token: &Secret,
        target: &str,
        delegates: &[String],
        audience: &str,
        include_email: bool,
        deadline: Option<Instant>,
    ) -> Result<Token, SourceError> {
        let mut body = json!({"audience": audience, "includeEmail": include_email});
        add_delegates(&mut body, delegates);
        let url = self.method_url(target, Method::GenerateIdToken);
        let jwt = post(
            &self.http,
            &url,
            Method::GenerateIdToken,
            token,
            None,
            delegates,
            &body,
            deadline,
            parse_id_token,
        )
        .await?;
        id_token::token(
            jwt,
            Arc::from(target),
            &host_of(&url),
            "IAM Credentials generateIdToken",
        )
    }

    /// `signJwt`: `payload` (a JSON object, as a string; an `exp` in it must be an integer at
    /// most 12 hours ahead) signed by a Google-managed key of `target`, reached through
    /// `delegates`. Google makes the header (`alg` RS256, `kid`, `typ` JWT).
    ///
    /// # Errors
    ///
    /// See [`IamCredentials`]; [`SourceError::Malformed`] for an answer without a `keyId` and
    /// a `signedJwt`.
    pub async fn sign_jwt(
        &self,
        token: &Secret,
        target: &str,
        delegates: &[String],
        payload: &str,
        deadline: Option<Instant>,
    ) -> Result<SignedJwt, SourceError> {
        let mut body = json!({ "payload": payload });
        add_delegates(&mut body, delegates);
        let signed = self
            .call(
                Method::SignJwt,
                token,
                (target, delegates),
                &body,
                deadline,
                |body| {
                    let key_id = non_empty(body, "keyId").ok_or("without a keyId")?;
                    let jwt = non_empty(body, "signedJwt").ok_or("without a signedJwt")?;
                    Ok(SignedJwt {
                        key_id: key_id.to_owned(),
                        signed_jwt: Secret::new(jwt),
                    })
                },
            )
            .await?;
        tracing::debug!(
            principal = target,
            key_id = %signed.key_id,
            jwt = %signed.signed_jwt.fingerprint(),
            "JWT signed"
        );
        Ok(signed)
    }

    /// `signBlob`: `payload` signed (RSASSA-PKCS1-v1_5, SHA-256) by a Google-managed key of
    /// `target`, reached through `delegates`.
    ///
    /// # Errors
    ///
    /// See [`IamCredentials`]; [`SourceError::Malformed`] for an answer without a `keyId` and
    /// a base64 `signedBlob`.
    pub async fn sign_blob(
        &self,
        token: &Secret,
        target: &str,
        delegates: &[String],
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> Result<SignedBlob, SourceError> {
        let mut body = json!({ "payload": STANDARD.encode(payload) });
        add_delegates(&mut body, delegates);
        let signed = self
            .call(
                Method::SignBlob,
                token,
                (target, delegates),
                &body,
                deadline,
                |body| {
                    let key_id = non_empty(body, "keyId").ok_or("without a keyId")?;
                    let signature = non_empty(body, "signedBlob")
                        .and_then(|b| STANDARD.decode(b).ok())
                        .filter(|s| !s.is_empty())
                        .ok_or("without a base64 signedBlob")?;
                    Ok(SignedBlob {
                        key_id: key_id.to_owned(),
                        signature,
                    })
                },
            )
            .await?;
        tracing::debug!(
            principal = target,
            key_id = %signed.key_id,
            signature = %broker_core::fingerprint(&signed.signature),
            "blob signed"
        );
        Ok(signed)
    }

    /// `{base}/v1/projects/-/serviceAccounts/{target}:{method}`.
    fn method_url(&self, target: &str, method: Method) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend([
                "v1",
                "projects",
                "-",
                "serviceAccounts",
                &format!("{target}:{}", method.name()),
            ]);
        }
        url
    }

    /// Posts `body` to `method` of `target` (reached through `delegates`), retrying transient
    /// failures; `parse` reads the success (describing a problem in its own words: the body
    /// holds a secret).
    async fn call<T>(
        &self,
        method: Method,
        token: &Secret,
        (target, delegates): (&str, &[String]),
        body: &Value,
        deadline: Option<Instant>,
        parse: impl Fn(&Value) -> Result<T, &'static str> + Sync,
    ) -> Result<T, SourceError> {
        let url = self.method_url(target, method);
        post(
            &self.http, &url, method, token, None, delegates, body, deadline, parse,
        )
        .await
    }
}

/// Posts `body` to the IAM Credentials `url` of `method` with `token` as the bearer (and
/// `x-goog-user-project: quota_project` when given), retrying transient failures; `parse`
/// reads the success.
#[allow(clippy::too_many_arguments)]
async fn post<T>(
    http: &HttpClient,
    url: &Url,
    method: Method,
    token: &Secret,
    quota_project: Option<&str>,
    delegates: &[String],
    body: &Value,
    deadline: Option<Instant>,
    parse: impl Fn(&Value) -> Result<T, &'static str> + Sync,
) -> Result<T, SourceError> {
    http.send_with_retry(
        method.operation(),
        deadline,
        |client| {
            let request = client
                .post(url.clone())
                .bearer_auth(token.expose())
                .json(body);
            match quota_project {
                Some(project) => request.header(QUOTA_PROJECT_HEADER, project),
                None => request,
            }
        },
        |response| interpret(response, method, delegates, &parse),
    )
    .await
}

/// The header that names the project Google bills a call to.
const QUOTA_PROJECT_HEADER: &str = "x-goog-user-project";

/// The body of `generateAccessToken` without delegates.
fn access_token_body(scopes: &ScopeSet, lifetime: Duration) -> Value {
    json!({
        "scope": scopes.iter().collect::<Vec<_>>(),
        "lifetime": duration(lifetime),
    })
}

/// Reads `generateAccessToken`'s answer.
fn parse_access_token(body: &Value) -> Result<(Secret, SystemTime), &'static str> {
    let access_token = non_empty(body, "accessToken").ok_or("without an accessToken")?;
    let expires_at = non_empty(body, "expireTime")
        .and_then(parse_rfc3339)
        .ok_or("without an RFC 3339 expireTime")?;
    Ok((Secret::new(access_token), expires_at))
}

/// Reads `generateIdToken`'s answer.
fn parse_id_token(body: &Value) -> Result<Secret, &'static str> {
    non_empty(body, "token")
        .map(Secret::new)
        .ok_or("without a token")
}

/// `generateAccessToken` posted to `url` as given: the `service_account_impersonation_url` of
/// an `external_account` file, which Google's clients call verbatim. Like
/// [`IamCredentials::generate_access_token`] without delegates, for the account `target` (the
/// email the URL names), with `x-goog-user-project: quota_project` when given (Python
/// google-auth sends the file's `quota_project_id` so).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn generate_access_token_at(
    http: &HttpClient,
    url: &Url,
    token: &Secret,
    target: &str,
    scopes: &ScopeSet,
    lifetime: Duration,
    quota_project: Option<&str>,
    deadline: Option<Instant>,
) -> Result<Token, SourceError> {
    let body = access_token_body(scopes, lifetime);
    let (access_token, expires_at) = post(
        http,
        url,
        Method::GenerateAccessToken,
        token,
        quota_project,
        &[],
        &body,
        deadline,
        parse_access_token,
    )
    .await?;
    tracing::debug!(
        principal = target,
        federated_token = %token.fingerprint(),
        token = %access_token.fingerprint(),
        "impersonated token minted"
    );
    Ok(Token {
        secret: access_token,
        expires_at,
        scopes: scopes.clone(),
        principal: target.into(),
    })
}

/// `generateIdToken` posted to `url` as given (see [`generate_access_token_at`]): an ID token
/// for `target`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn generate_id_token_at(
    http: &HttpClient,
    url: &Url,
    token: &Secret,
    target: &str,
    audience: &str,
    include_email: bool,
    quota_project: Option<&str>,
    deadline: Option<Instant>,
) -> Result<Token, SourceError> {
    let body = json!({"audience": audience, "includeEmail": include_email});
    let jwt = post(
        http,
        url,
        Method::GenerateIdToken,
        token,
        quota_project,
        &[],
        &body,
        deadline,
        parse_id_token,
    )
    .await?;
    id_token::token(
        jwt,
        Arc::from(target),
        &host_of(url),
        "IAM Credentials generateIdToken",
    )
}

/// A google.protobuf.Duration in JSON: whole seconds, rounded up, and `s`.
fn duration(lifetime: Duration) -> String {
    let seconds = lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0);
    format!("{seconds}s")
}

/// Adds `delegates` as `projects/-/serviceAccounts/EMAIL` (left out when empty, as Go does).
fn add_delegates(body: &mut Value, delegates: &[String]) {
    if !delegates.is_empty() {
        body["delegates"] = delegates
            .iter()
            .map(|email| format!("projects/-/serviceAccounts/{email}"))
            .collect();
    }
}

/// A non-empty string field of a JSON object.
fn non_empty<'a>(body: &'a Value, field: &str) -> Option<&'a str> {
    body.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// An RFC 3339 timestamp (Google sends UTC, `Z`, whole seconds; any offset and fraction is
/// accepted).
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let time =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let seconds = u64::try_from(time.unix_timestamp()).ok()?;
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(seconds))?
        .checked_add(Duration::from_nanos(u64::from(time.nanosecond())))
}

/// Interprets an IAM Credentials answer: a success through `parse`, transient statuses
/// retried, other 4xx refused as the table on [`IamCredentials`] says.
fn interpret<T>(
    response: HttpResponse,
    method: Method,
    delegates: &[String],
    parse: impl Fn(&Value) -> Result<T, &'static str>,
) -> Attempt<T> {
    let HttpResponse {
        upstream,
        status,
        body,
        ..
    } = response;
    let what = format!("IAM Credentials {}", method.name());
    let json = serde_json::from_slice::<Value>(&body).ok();
    if status.is_success() {
        let parsed = match &json {
            Some(value) if value.is_object() => parse(value),
            _ => Err("with a body that is not a JSON object"),
        };
        return match parsed {
            Ok(value) => Attempt::Done(value),
            Err(problem) => Attempt::Fail(SourceError::Malformed {
                upstream,
                message: format!("{what} answered HTTP {} {problem}", status.as_u16()),
            }),
        };
    }
    let error = json.as_ref().and_then(|b| b.get("error"));
    let text = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let (canonical, description) = (text("status"), text("message"));
    let reason = error
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .and_then(|details| {
            details
                .iter()
                .find(|d| d.get("@type").and_then(Value::as_str) == Some(ERROR_INFO))
        })
        .and_then(|info| info.get("reason"))
        .and_then(Value::as_str);
    let mut message = format!("{what} answered HTTP {}", status.as_u16());
    for part in [canonical, reason, description].into_iter().flatten() {
        message.push_str(": ");
        message.push_str(&sanitize::quote(part));
    }
    if is_transient_status(status) {
        return Attempt::Retry(message);
    }
    if !status.is_client_error() {
        return Attempt::Fail(SourceError::Malformed { upstream, message });
    }
    let mentions = |needle: &str| {
        description.is_some_and(|d| d.to_lowercase().contains(&needle.to_lowercase()))
    };
    let (rejection, field) = match status.as_u16() {
        400 if mentions("lifetime") => (Rejection::InvalidArgument, Some("lifetime")),
        400 => (Rejection::InvalidArgument, None),
        401 => (Rejection::CredentialRejected, None),
        403 => (Rejection::PermissionDenied, None),
        404 if delegates
            .iter()
            .any(|d| description.is_some_and(|text| names_account(text, d))) =>
        {
            (Rejection::NotFound, Some("delegates"))
        }
        404 => (Rejection::NotFound, Some("target_service_account")),
        _ => (Rejection::Other, None),
    };
    let code = [reason, canonical]
        .into_iter()
        .map(sanitize::error_code)
        .find(|code| code != sanitize::UNKNOWN_CODE)
        .unwrap_or_else(|| sanitize::UNKNOWN_CODE.to_owned());
    Attempt::Fail(SourceError::Rejected(Box::new(UpstreamRejection {
        rejection,
        upstream,
        status: status.as_u16(),
        error: code,
        field: field.map(str::to_owned),
        message,
    })))
}

/// Whether `text` names the account `email` as a whole word (case-insensitive): not as the end
/// of a longer address (`a@p...` inside `ba@p...`) nor the start of one.
fn names_account(text: &str, email: &str) -> bool {
    let (text, email) = (text.to_ascii_lowercase(), email.to_ascii_lowercase());
    let part_of_address =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-' | b'@');
    let bytes = text.as_bytes();
    text.match_indices(&email).any(|(start, found)| {
        let end = start + found.len();
        let before = start.checked_sub(1).map(|i| bytes[i]);
        // A sentence may end right after the address: "... t@p.iam.gserviceaccount.com."
        let after = match bytes.get(end) {
            Some(b'.') => bytes.get(end + 1).copied().filter(|&b| part_of_address(b)),
            other => other.copied(),
        };
        !before.is_some_and(part_of_address) && !after.is_some_and(part_of_address)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn accounts_are_named_as_whole_words() {
        let hop = "a@p.iam.gserviceaccount.com";
        assert!(names_account(
            "Gaia id not found for email a@p.iam.gserviceaccount.com",
            hop
        ));
        assert!(names_account(
            "not found: A@P.iam.gserviceaccount.com.",
            hop
        ));
        assert!(!names_account(
            "not found: ba@p.iam.gserviceaccount.com",
            hop
        ));
        assert!(!names_account(
            "not found: a@p.iam.gserviceaccount.com.evil",
            hop
        ));
    }
    use reqwest::header::HeaderMap;

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            upstream: "iamcredentials.googleapis.com".to_owned(),
            status: StatusCode::from_u16(status).expect("status"),
            headers: HeaderMap::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn envelope(code: u16, status: &str, message: &str, reason: Option<&str>) -> String {
        let mut error = json!({"code": code, "message": message, "status": status});
        if let Some(reason) = reason {
            error["details"] = json!([
                {"@type": "type.googleapis.com/google.rpc.Help", "links": []},
                {"@type": ERROR_INFO, "reason": reason, "domain": "iam.googleapis.com",
                 "metadata": {"permission": "iam.serviceAccounts.getAccessToken"}},
            ]);
        }
        json!({ "error": error }).to_string()
    }

    #[test]
    fn googles_error_envelope_is_classified_by_status() {
        const DENIED: &str = "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).";
        const DELEGATE: &str = "mid@p.iam.gserviceaccount.com";
        let delegates = [DELEGATE.to_owned()];
        #[rustfmt::skip]
        let cases = [
            (envelope(403, "PERMISSION_DENIED", DENIED, Some("IAM_PERMISSION_DENIED")), 403,
             Rejection::PermissionDenied, None, "IAM_PERMISSION_DENIED"),
            (envelope(403, "PERMISSION_DENIED", "API disabled", Some("SERVICE_DISABLED")), 403,
             Rejection::PermissionDenied, None, "SERVICE_DISABLED"),
            (envelope(403, "PERMISSION_DENIED", DENIED, None), 403,
             Rejection::PermissionDenied, None, "PERMISSION_DENIED"),
            (envelope(404, "NOT_FOUND", "Not found; Gaia id not found for email t@p.iam.gserviceaccount.com", None), 404,
             Rejection::NotFound, Some("target_service_account"), "NOT_FOUND"),
            (envelope(404, "NOT_FOUND", &format!("Not found; Gaia id not found for email {DELEGATE}"), None), 404,
             Rejection::NotFound, Some("delegates"), "NOT_FOUND"),
            (envelope(400, "INVALID_ARGUMENT", "Lifetime must be less than or equal to 3600s.", None), 400,
             Rejection::InvalidArgument, Some("lifetime"), "INVALID_ARGUMENT"),
            (envelope(400, "INVALID_ARGUMENT", "Scope required.", None), 400,
             Rejection::InvalidArgument, None, "INVALID_ARGUMENT"),
            (envelope(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", Some("ACCESS_TOKEN_TYPE_UNSUPPORTED")), 401,
             Rejection::CredentialRejected, None, "ACCESS_TOKEN_TYPE_UNSUPPORTED"),
            (envelope(409, "ABORTED", "x", None), 409, Rejection::Other, None, "ABORTED"),
            ("<html>Forbidden</html>".to_owned(), 403, Rejection::PermissionDenied, None, "unknown"),
            (envelope(403, "bad status", "x", Some("bad reason")), 403,
             Rejection::PermissionDenied, None, "unknown"),
        ];
        for (body, status, rejection, field, code) in cases {
            let Attempt::Fail(SourceError::Rejected(got)) = interpret(
                response(status, &body),
                Method::GenerateAccessToken,
                &delegates,
                |_| Ok(()),
            ) else {
                panic!("{body} should be rejected");
            };
            assert_eq!(
                (
                    got.rejection,
                    got.field.as_deref(),
                    got.error.as_str(),
                    got.status
                ),
                (rejection, field, code, status),
                "{body}"
            );
            assert_eq!(got.upstream, "iamcredentials.googleapis.com");
            assert!(
                got.message.starts_with(&format!(
                    "IAM Credentials generateAccessToken answered HTTP {status}"
                )),
                "{}",
                got.message
            );
        }
        let Attempt::Fail(SourceError::Rejected(got)) = interpret(
            response(
                403,
                &envelope(
                    403,
                    "PERMISSION_DENIED",
                    DENIED,
                    Some("IAM_PERMISSION_DENIED"),
                ),
            ),
            Method::SignJwt,
            &[],
            |_| Ok(()),
        ) else {
            panic!("rejected");
        };
        assert_eq!(
            got.message,
            format!(
                "IAM Credentials signJwt answered HTTP 403: PERMISSION_DENIED: IAM_PERMISSION_DENIED: {DENIED}"
            )
        );
    }

    #[test]
    fn transient_failures_are_retried_and_successes_never_quoted() {
        for status in [500, 502, 503, 504, 429, 408] {
            let outcome = interpret(
                response(status, &envelope(status, "UNAVAILABLE", "try again", None)),
                Method::SignBlob,
                &[],
                |_| Ok(()),
            );
            assert!(
                matches!(outcome, Attempt::Retry(ref m) if m.contains("try again")),
                "{status}"
            );
        }
        let outcome = interpret(
            response(200, r#"{"accessToken":"ya29.secret"}"#),
            Method::GenerateAccessToken,
            &[],
            |body| {
                non_empty(body, "expireTime")
                    .map(str::to_owned)
                    .ok_or("without an RFC 3339 expireTime")
            },
        );
        let Attempt::Fail(SourceError::Malformed { message, .. }) = outcome else {
            panic!("malformed");
        };
        assert!(!message.contains("ya29"), "{message}");
        assert!(message.contains("expireTime"), "{message}");
    }

    #[test]
    fn wire_values_follow_google() {
        assert_eq!(duration(Duration::from_secs(3600)), "3600s");
        assert_eq!(duration(Duration::from_millis(1500)), "2s");
        assert_eq!(duration(Duration::from_secs(43200)), "43200s");
        let mut body = json!({});
        add_delegates(&mut body, &[]);
        assert_eq!(body, json!({}));
        add_delegates(&mut body, &["a@p.iam.gserviceaccount.com".to_owned()]);
        assert_eq!(
            body,
            json!({"delegates": ["projects/-/serviceAccounts/a@p.iam.gserviceaccount.com"]})
        );
        let at = |s| {
            parse_rfc3339(s).map(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .ok()
            })
        };
        assert_eq!(at("2026-01-01T00:00:00Z"), Some(Some(1_767_225_600.0)));
        assert_eq!(at("2026-01-01T01:00:00+01:00"), Some(Some(1_767_225_600.0)));
        assert_eq!(at("2026-01-01T00:00:00.5Z"), Some(Some(1_767_225_600.5)));
        assert_eq!(at("1767225600"), None);
        assert_eq!(at("1960-01-01T00:00:00Z"), None);
    }

    #[test]
    fn signed_blob_debug_hides_the_signature() {
        let blob = SignedBlob {
            key_id: "kid1".into(),
            signature: vec![0xAB; 256],
        };
        let shown = format!("{blob:?}");
        assert!(shown.contains("kid1") && shown.contains("256"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
    }
}
