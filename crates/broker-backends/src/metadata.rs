//! The broker's own identity on Compute Engine, GKE (Workload Identity) or Cloud Run: the
//! metadata server's service-account endpoints (google-protocols.md §3), with downscoping
//! through STS.
//!
//! See <https://cloud.google.com/compute/docs/metadata/overview> and
//! <https://cloud.google.com/compute/docs/access/authenticate-workloads#applications>.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_core::{
    Capabilities, Clock, IdTokenRequest, Rejection, Secret, SourceError, SourceFuture, SystemClock,
    Token, TokenRequest, TokenSource, UpstreamRejection,
};
use reqwest::Url;

use crate::endpoints::GOOGLE_METADATA_URL;
use crate::env::{Env, GCE_METADATA_HOST};
use crate::http::{Attempt, HttpClient, HttpResponse};
use crate::oauth::{self, is_transient_status};
use crate::{BackendError, GoogleEndpoints, checks, id_token, sanitize, sts};

/// The account the metadata server calls the instance's own service account.
pub const DEFAULT_METADATA_ACCOUNT: &str = "default";
/// Tokens of the metadata server live one hour at most.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The header every metadata request and answer carries.
const METADATA_FLAVOR: &str = "Metadata-Flavor";

/// The base URL of the metadata server: [`GoogleEndpoints::metadata_url`], except when it is
/// left at Google's default (`http://metadata.google.internal`) and `GCE_METADATA_HOST` is set
/// in `env`: then `http://$GCE_METADATA_HOST`, as every Google client library does (GKE's
/// metadata server, a sidecar, or the emulator in dev). A `metadata_url` configured to
/// anything else wins over the variable.
///
/// # Errors
///
/// [`BackendError::InvalidEnvironment`] when `GCE_METADATA_HOST` is not `host[:port]`.
pub fn metadata_base_url(endpoints: &GoogleEndpoints, env: &Env) -> Result<String, BackendError> {
    let configured = endpoints.metadata_url.trim_end_matches('/');
    if configured != GOOGLE_METADATA_URL {
        return Ok(configured.to_owned());
    }
    let Some(host) = env.get(GCE_METADATA_HOST) else {
        return Ok(configured.to_owned());
    };
    let invalid = |reason: &str| BackendError::InvalidEnvironment {
        name: GCE_METADATA_HOST,
        value: host.clone(),
        reason: reason.to_owned(),
    };
    if host.contains(['/', '?', '#', '@']) || host.contains(char::is_whitespace) {
        return Err(invalid(
            "expected host[:port], such as 169.254.169.254 or 127.0.0.1:8085",
        ));
    }
    let url = format!("http://{host}");
    match Url::parse(&url) {
        Ok(parsed) if parsed.host_str().is_some_and(|h| !h.is_empty()) => Ok(url),
        _ => Err(invalid(
            "expected host[:port], such as 169.254.169.254 or 127.0.0.1:8085",
        )),
    }
}

/// Asks whether a metadata server answers at `base`: `GET {base}/` with `Metadata-Flavor:
/// Google`, within `timeout`, once. Yes means HTTP 200 with the response header
/// `Metadata-Flavor: Google` (google-protocols.md §3.5); the error says what came instead.
pub(crate) async fn ping(http: &HttpClient, base: &str, timeout: Duration) -> Result<(), String> {
    let response = http
        .client()
        .get(format!("{}/", base.trim_end_matches('/')))
        .header(METADATA_FLAVOR, "Google")
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                format!("no answer within {} ms", timeout.as_millis())
            } else {
                "no connection".to_owned()
            }
        })?;
    let flavored = response
        .headers()
        .get(METADATA_FLAVOR)
        .is_some_and(|v| v.as_bytes() == b"Google");
    match (response.status().as_u16(), flavored) {
        (200, true) => Ok(()),
        (200, false) => Err("HTTP 200 without Metadata-Flavor: Google".to_owned()),
        (status, _) => Err(format!("HTTP {status}")),
    }
}

/// A [`TokenSource`] for the identity the metadata server vouches for: the instance's (or
/// pod's, or service's) service account. Its kind is `metadata`; it mints ID tokens and can
/// be downscoped, but cannot act for a Workspace user or choose a lifetime (both
/// [`SourceError::Unsupported`], decided without a call).
///
/// Every request carries `Metadata-Flavor: Google` and goes to
/// `{base}/computeMetadata/v1/instance/service-accounts/{account}/...`, where `base` is
/// [`metadata_base_url`] (honouring `GCE_METADATA_HOST`):
///
/// - `email`, once, when the source is built ([`MetadataSource::discover`]): its principal;
/// - `token?scopes=a,b` for an access token (JSON, integer `expires_in`). The scopes are the
///   requested ones, comma-separated; Cloud Run and GKE honour them, Compute Engine answers
///   with the instance's scopes whatever was asked. A request with an access boundary gets
///   the token downscoped through STS, like the other flows;
/// - `identity?audience=...&format=full` for an ID token: the body is the JWT, which always
///   carries `email`; it expires at its `exp` claim.
///
/// The metadata server's errors are plain text or HTML, without error codes (the rejection's
/// `error` is `unknown`): 400 is `InvalidArgument` (field `scopes` for a token, `audience` for
/// an ID token), 401 `CredentialRejected`, 403 (a request the server refuses, such as one
/// without the header) `PermissionDenied`, 404 (an account it does not have) `NotFound`,
/// other 4xx `Other`; 5xx, 408 and 429 are retried.
pub struct MetadataSource {
    account: String,
    email: String,
    base: Url,
    endpoints: GoogleEndpoints,
    http: HttpClient,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for MetadataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetadataSource")
            .field("principal", &self.email)
            .field("account", &self.account)
            .field("base", &self.base.as_str())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl MetadataSource {
    /// Builds the source for `account` (`default`, [`DEFAULT_METADATA_ACCOUNT`], or one of the
    /// instance's service-account emails), asking the metadata server for its email once. The
    /// base URL is [`metadata_base_url`] of `endpoints` and `env` (pass [`Env::process`] in
    /// production). Uses the system clock; see [`MetadataSource::with_clock`].
    ///
    /// # Errors
    ///
    /// - [`BackendError::InvalidEndpoint`] if an endpoint URL is unusable, or
    ///   [`BackendError::InvalidEnvironment`] for a bad `GCE_METADATA_HOST`;
    /// - [`BackendError::Discovery`] if the email could not be read: the server refused
    ///   (404: no such account) or did not answer (then [`BackendError::is_transient`]).
    pub async fn discover(
        account: &str,
        endpoints: GoogleEndpoints,
        http: HttpClient,
        env: &Env,
    ) -> Result<Self, BackendError> {
        endpoints.validate()?;
        let base_url = metadata_base_url(&endpoints, env)?;
        let base = Url::parse(&base_url).map_err(|e| BackendError::InvalidEndpoint {
            field: "metadata_url",
            url: base_url.clone(),
            reason: e.to_string(),
        })?;
        if account.is_empty() {
            return Err(BackendError::InvalidEndpoint {
                field: "metadata_url",
                url: base_url,
                reason: "the metadata account is empty; use \"default\" or an email".to_owned(),
            });
        }
        let mut source = Self {
            account: account.to_owned(),
            email: String::new(),
            base,
            endpoints,
            http,
            clock: Arc::new(SystemClock),
        };
        source.email = source
            .get("email", &[], "email", None, None, |response| {
                std::str::from_utf8(&response.body)
                    .ok()
                    .map(str::trim)
                    .filter(|email| checks::is_email(email))
                    .map(str::to_owned)
                    .ok_or("with a body that is not an email address")
            })
            .await
            .map_err(|source| BackendError::Discovery {
                what: format!("the email of the metadata server's account {account:?}"),
                source,
            })?;
        tracing::debug!(principal = %source.email, base = %source.base, "metadata server account found");
        Ok(source)
    }

    /// Computes token expiries with `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The account asked for: `default` or an email.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The metadata server's base URL in use.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// `GET .../service-accounts/{account}/{leaf}?{query}`, retried like every call; `what`
    /// names it in messages, `field_400` the request field a 400 refuses.
    async fn get<T>(
        &self,
        leaf: &str,
        query: &[(&str, &str)],
        what: &str,
        field_400: Option<&'static str>,
        deadline: Option<Instant>,
        parse: impl Fn(&HttpResponse) -> Result<T, &'static str> + Sync,
    ) -> Result<T, SourceError> {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend([
                "computeMetadata",
                "v1",
                "instance",
                "service-accounts",
                &self.account,
                leaf,
            ]);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let operation = format!("metadata.{leaf}");
        self.http
            .send_with_retry(
                &operation,
                deadline,
                |client| client.get(url.clone()).header(METADATA_FLAVOR, "Google"),
                |response| interpret(response, what, field_400, &parse),
            )
            .await
    }

    async fn fetch_token(
        &self,
        request: &TokenRequest,
        deadline: Option<Instant>,
    ) -> Result<Token, SourceError> {
        checks::no_subject(request, "the metadata server")?;
        checks::lifetime_at_most(request, MAX_TOKEN_LIFETIME, "the metadata server")?;
        checks::valid_boundary(request)?;
        let issued_at = self.clock.now();
        let scopes = request.scopes.iter().collect::<Vec<_>>().join(",");
        let query: &[(&str, &str)] = if scopes.is_empty() {
            &[]
        } else {
            &[("scopes", &scopes)]
        };
        let response = self
            .get(
                "token",
                query,
                "token",
                Some("scopes"),
                deadline,
                |response| oauth::parse_success(&response.body, &response.upstream),
            )
            .await?;
        let expires_in = response.expires_in.ok_or_else(|| SourceError::Malformed {
            upstream: response.upstream.clone(),
            message: "metadata server token answered HTTP 200 without expires_in".to_owned(),
        })?;
        let token = Token {
            secret: response.access_token,
            // expires_in is capped at 12 hours: no overflow short of the end of time.
            expires_at: issued_at.checked_add(expires_in).unwrap_or(issued_at),
            scopes: request.scopes.clone(),
            principal: self.email.as_str().into(),
        };
        tracing::debug!(
            principal = %token.principal,
            token = %token.secret.fingerprint(),
            expires_in_s = expires_in.as_secs(),
            "metadata token minted"
        );
        sts::apply_boundary(
            &self.http,
            &self.endpoints,
            self.clock.as_ref(),
            token,
            request.boundary.as_ref(),
            deadline,
        )
        .await
    }

    async fn fetch_id(
        &self,
        request: &IdTokenRequest,
        deadline: Option<Instant>,
    ) -> Result<Token, SourceError> {
        let (jwt, upstream) = self
            .get(
                "identity",
                &[("audience", &request.audience), ("format", "full")],
                "identity",
                Some("audience"),
                deadline,
                |response| {
                    std::str::from_utf8(&response.body)
                        .ok()
                        .map(str::trim)
                        .filter(|jwt| !jwt.is_empty())
                        .map(|jwt| (Secret::new(jwt), response.upstream.clone()))
                        .ok_or("with an empty body")
                },
            )
            .await?;
        id_token::token(
            jwt,
            self.email.as_str().into(),
            &upstream,
            "metadata server identity",
        )
    }
}

/// Interprets a metadata-server answer: a success through `parse` (whose problem is described
/// in its own words: the body may be a token), transient statuses retried, other 4xx refused
/// as the table on [`MetadataSource`] says, with the server's plain-text explanation quoted
/// sanitized (an HTML page is not quoted).
fn interpret<T>(
    response: HttpResponse,
    what: &str,
    field_400: Option<&'static str>,
    parse: impl Fn(&HttpResponse) -> Result<T, &'static str>,
) -> Attempt<T> {
    let status = response.status;
    if status.is_success() {
        return match parse(&response) {
            Ok(value) => Attempt::Done(value),
            Err(problem) => Attempt::Fail(SourceError::Malformed {
                upstream: response.upstream,
                message: format!(
                    "metadata server {what} answered HTTP {} {problem}",
                    status.as_u16()
                ),
            }),
        };
    }
    let plain_text = response
        .headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/text") || t.starts_with("text/plain"));
    let explanation = std::str::from_utf8(&response.body)
        .ok()
        .map(str::trim)
        .filter(|text| plain_text && !text.is_empty());
    let message = match explanation {
        Some(text) => format!(
            "metadata server {what} answered HTTP {}: {}",
            status.as_u16(),
            sanitize::quote(text)
        ),
        None => format!("metadata server {what} answered HTTP {}", status.as_u16()),
    };
    if is_transient_status(status) {
        return Attempt::Retry(message);
    }
    if !status.is_client_error() {
        return Attempt::Fail(SourceError::Malformed {
            upstream: response.upstream,
            message,
        });
    }
    let (rejection, field) = match status.as_u16() {
        400 => field_400.map_or((Rejection::Other, None), |field| {
            (Rejection::InvalidArgument, Some(field))
        }),
        401 => (Rejection::CredentialRejected, None),
        403 => (Rejection::PermissionDenied, None),
        404 => (Rejection::NotFound, None),
        _ => (Rejection::Other, None),
    };
    Attempt::Fail(SourceError::Rejected(Box::new(UpstreamRejection {
        rejection,
        upstream: response.upstream,
        status: status.as_u16(),
        error: sanitize::UNKNOWN_CODE.to_owned(),
        field: field.map(str::to_owned),
        message,
    })))
}

impl TokenSource for MetadataSource {
    fn principal(&self) -> &str {
        &self.email
    }

    fn kind(&self) -> &'static str {
        "metadata"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            chooses_lifetime: false,
            domain_wide_delegation: false,
            id_tokens: true,
            downscoping: true,
        }
    }

    fn fetch<'a>(
        &'a self,
        request: &'a TokenRequest,
        deadline: Option<Instant>,
    ) -> SourceFuture<'a> {
        Box::pin(self.fetch_token(request, deadline))
    }

    fn fetch_id_token<'a>(
        &'a self,
        request: &'a IdTokenRequest,
        deadline: Option<Instant>,
    ) -> SourceFuture<'a> {
        Box::pin(self.fetch_id(request, deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

    #[test]
    fn gce_metadata_host_replaces_only_googles_default() {
        let env = Env::from_vars([(GCE_METADATA_HOST, "127.0.0.1:8085")]);
        let none = Env::from_vars(Vec::<(String, String)>::new());
        let google = GoogleEndpoints::google();
        assert_eq!(
            metadata_base_url(&google, &env).expect("valid"),
            "http://127.0.0.1:8085"
        );
        assert_eq!(
            metadata_base_url(&google, &none).expect("valid"),
            GOOGLE_METADATA_URL
        );
        let mut configured = GoogleEndpoints::google();
        configured.metadata_url = "http://127.0.0.1:9999/".into();
        assert_eq!(
            metadata_base_url(&configured, &env).expect("valid"),
            "http://127.0.0.1:9999"
        );
        for bad in ["http://x", "a/b", "user@host", "a b", ":80", "[::1"] {
            let env = Env::from_vars([(GCE_METADATA_HOST, bad)]);
            let error = metadata_base_url(&google, &env).expect_err(bad);
            assert!(error.to_string().contains(GCE_METADATA_HOST), "{error}");
        }
        let env = Env::from_vars([(GCE_METADATA_HOST, "[::1]:8085")]);
        assert_eq!(
            metadata_base_url(&google, &env).expect("valid"),
            "http://[::1]:8085"
        );
    }

    fn response(status: u16, content_type: &'static str, body: &str) -> HttpResponse {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        HttpResponse {
            upstream: "metadata.google.internal".to_owned(),
            status: StatusCode::from_u16(status).expect("status"),
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn refusals_are_classified_by_status_and_quote_only_plain_text() {
        let never = |_: &HttpResponse| -> Result<(), &'static str> { Err("unreachable") };
        #[rustfmt::skip]
        let cases = [
            (400, "application/text", "invalid scope: x\n", Some("scopes"), Rejection::InvalidArgument, Some("invalid scope: x")),
            (401, "text/plain", "no", None, Rejection::CredentialRejected, Some("no")),
            (403, "text/html; charset=UTF-8", "<p>Missing Metadata-Flavor:Google header.", None, Rejection::PermissionDenied, None),
            (404, "text/html; charset=UTF-8", "<title>Error 404 (Not Found)!!1</title>", None, Rejection::NotFound, None),
            (409, "application/text", "", None, Rejection::Other, None),
        ];
        // The field of a 400 is the caller's; every other refusal has none.
        for (status, content_type, body, field, rejection, quoted) in cases {
            let Attempt::Fail(SourceError::Rejected(got)) = interpret(
                response(status, content_type, body),
                "token",
                Some("scopes"),
                never,
            ) else {
                panic!("{status} should be rejected");
            };
            assert_eq!(got.rejection, rejection, "{status}");
            assert_eq!(got.field.as_deref(), field, "{status}");
            assert_eq!(got.error, "unknown");
            assert_eq!(got.upstream, "metadata.google.internal");
            match quoted {
                Some(text) => assert!(got.message.ends_with(text), "{}", got.message),
                None => assert!(!got.message.contains('<'), "{}", got.message),
            }
        }
        let Attempt::Fail(SourceError::Rejected(got)) =
            interpret(response(400, "text/plain", "bad"), "email", None, never)
        else {
            panic!("rejected");
        };
        assert_eq!((got.rejection, got.field), (Rejection::Other, None));
        for status in [500, 503, 429, 408] {
            let outcome = interpret(
                response(status, "application/text", "busy"),
                "token",
                None,
                never,
            );
            assert!(matches!(outcome, Attempt::Retry(_)), "{status}");
        }
        let outcome = interpret(
            response(200, "application/json", "{}"),
            "token",
            None,
            never,
        );
        assert!(
            matches!(outcome, Attempt::Fail(SourceError::Malformed { ref message, .. }) if message.contains("unreachable")),
            "{outcome:?}"
        );
    }
}
