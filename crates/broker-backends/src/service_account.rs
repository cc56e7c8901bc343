//! Service-account keys: the RFC 7523 JWT-bearer grant at Google's OAuth 2.0 token endpoint
//! (google-protocols.md §1.2, §1.4, §1.5; key file format §2.1), for access tokens, with
//! optional domain-wide delegation and optional downscoping through STS (§4.5), and for ID
//! tokens (`target_audience`). The grant itself is shared with keyless domain-wide
//! delegation, whose assertion IAM `signJwt` signs ([`crate::ImpersonatedSource`]).
//!
//! See <https://developers.google.com/identity/protocols/oauth2/service-account#httprest> and
//! <https://www.rfc-editor.org/rfc/rfc7523>.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use broker_core::{
    Capabilities, Clock, IdTokenRequest, Rejection, SourceError, SourceFuture, SystemClock, Token,
    TokenRequest, TokenSource,
};
use serde::Serialize;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::credential_file::{self, field_error};
use crate::endpoints::GOOGLE_TOKEN_URL;
use crate::http::HttpClient;
use crate::jws::Rs256Signer;
use crate::oauth::{self, OAuthError, Verdict};
use crate::{BackendError, GoogleEndpoints, checks, id_token, sts};

/// The JWT-bearer grant type.
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The assertion's `aud`. Always Google's token URL, whatever the endpoint we post to, as Python
/// google-auth does: Google requires it, and the emulator accepts it.
const ASSERTION_AUDIENCE: &str = GOOGLE_TOKEN_URL;
/// `exp - iat` of the assertion: Google's maximum.
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// Tokens of the JWT-bearer grant live one hour at most; longer lifetimes need
/// IAM Credentials `generateAccessToken` with the org-policy exemption.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// A Google service-account key file (`"type": "service_account"`). The private key is zeroized
/// on drop, and `Debug` shows only the email and the key id.
pub struct ServiceAccountKey {
    client_email: String,
    private_key: Zeroizing<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    project_id: Option<String>,
    origin: String,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKey {
    /// Parses key-file JSON held in memory (errors call its origin "inline JSON").
    ///
    /// # Errors
    ///
    /// [`BackendError`] naming the problem and field; never quoting the key.
    pub fn from_json(json: &str) -> Result<Self, BackendError> {
        Self::parse(json, "(inline JSON)")
    }

    /// Reads and parses a key file.
    ///
    /// # Errors
    ///
    /// [`BackendError::ReadKeyFile`], or a parse error naming the file and field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BackendError> {
        let path = path.as_ref();
        let text = credential_file::read(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses key-file JSON; `origin` (a path or a description) names it in errors.
    ///
    /// # Errors
    ///
    /// [`BackendError`] naming `origin` and the field at fault; never quoting the key.
    pub fn parse(json: &str, origin: &str) -> Result<Self, BackendError> {
        let value = credential_file::parse_json(json, origin)?;
        Self::from_object(credential_file::into_object(value, origin)?, origin)
    }

    /// Parses a key held as a JSON object (a file, or the `source_credentials` of another).
    pub(crate) fn from_object(
        mut object: Map<String, Value>,
        origin: &str,
    ) -> Result<Self, BackendError> {
        // Moved, not copied, into zeroizing storage before anything else can fail.
        let private_key = match object.remove("private_key") {
            Some(Value::String(pem)) => Some(Zeroizing::new(pem)),
            Some(_) => return Err(field_error(origin, "private_key", "must be a string")),
            None => None,
        };
        let kind = credential_file::credential_type(&object, origin)?;
        if kind != "service_account" {
            return Err(credential_file::unsupported_type(
                origin,
                kind,
                "\"service_account\"",
            ));
        }
        let mut text = |field| credential_file::take_string(&mut object, field, origin);
        let client_email = text("client_email")?;
        let private_key_id = text("private_key_id")?.filter(|id| !id.is_empty());
        let token_uri = text("token_uri")?;
        let project_id = text("project_id")?;
        let client_email = client_email
            .filter(|e| !e.is_empty())
            .ok_or_else(|| field_error(origin, "client_email", "is missing or empty"))?;
        let private_key = private_key
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| field_error(origin, "private_key", "is missing or empty"))?;
        Ok(Self {
            client_email,
            private_key,
            private_key_id,
            token_uri,
            project_id,
            origin: origin.to_owned(),
        })
    }

    /// `client_email`: the service account.
    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// `private_key_id`: the key id, sent as the assertion's `kid`.
    pub fn private_key_id(&self) -> Option<&str> {
        self.private_key_id.as_deref()
    }

    /// `token_uri` as written in the file. Informational only: see [`ServiceAccountSource`].
    pub fn token_uri(&self) -> Option<&str> {
        self.token_uri.as_deref()
    }

    /// `project_id`.
    pub fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }
}

/// The claims of a JWT-bearer assertion (google-protocols.md §1.2), signed with a key here or
/// by IAM `signJwt` for keyless domain-wide delegation.
#[derive(Serialize)]
pub(crate) struct Claims<'a> {
    iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    aud: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_audience: Option<&'a str>,
}

impl<'a> Claims<'a> {
    /// The claims by which `account` asks, at `now`, for an access token for `request`'s
    /// scopes, acting for its subject if it names one.
    pub(crate) fn access_token(
        account: &'a str,
        request: &'a TokenRequest,
        now: SystemTime,
    ) -> Self {
        let iat = unix_seconds(now);
        Self {
            iss: account,
            scope: Some(request.scopes.joined()),
            aud: ASSERTION_AUDIENCE,
            iat,
            exp: iat + ASSERTION_LIFETIME_SECS,
            sub: request.subject.as_deref(),
            target_audience: None,
        }
    }

    /// The claims by which `account` asks, at `now`, for an ID token for `audience`.
    fn id_token(account: &'a str, audience: &'a str, now: SystemTime) -> Self {
        let iat = unix_seconds(now);
        Self {
            iss: account,
            scope: None,
            aud: ASSERTION_AUDIENCE,
            iat,
            exp: iat + ASSERTION_LIFETIME_SECS,
            sub: None,
            target_audience: Some(audience),
        }
    }
}

/// Seconds since the Unix epoch (0 for a clock before it).
fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A [`TokenSource`] holding a service-account key: it signs an RS256 JWT-bearer assertion and
/// exchanges it at the token endpoint. Its kind is `service_account`; it can act for Workspace
/// users (domain-wide delegation), mint ID tokens and be downscoped, but not choose a lifetime.
///
/// The token is requested from [`GoogleEndpoints::token_url`], **not** from the key file's
/// `token_uri`: which Google (or emulator) the broker talks to is the broker's configuration,
/// not something a key file may redirect (a key file pointing elsewhere would otherwise send
/// signed assertions there). The assertion's `aud` is always `https://oauth2.googleapis.com/token`.
///
/// Tokens live one hour (`expires_in` from Google, usually 3599 s); a request for a longer
/// lifetime is [`SourceError::Unsupported`] (flow `extended_lifetime`), decided without a call.
/// A request with a DWD `subject` gets a token for that user (its `principal`). A request with
/// an access boundary gets the token downscoped through STS ([`crate::downscope`], whose
/// errors name the STS host); a boundary that fails [`broker_core::AccessBoundary::validate`]
/// is [`SourceError::InvalidRequest`] (field `access_boundary`) before anything is minted.
///
/// [`TokenSource::fetch_id_token`] sends the same grant with a `target_audience` claim instead
/// of `scope` (§1.2) and gets `{"id_token": ...}` back; the token always carries `email`
/// (whatever `include_email` says) and expires at its `exp` claim.
///
/// The token endpoint's permanent refusals are [`SourceError::Rejected`], classified:
///
/// | `error` | rejection | field |
/// |---|---|---|
/// | `invalid_grant`, with a subject and a description naming the "email or user id" | `InvalidArgument` | `subject` |
/// | `invalid_grant` otherwise (bad or deleted key, disabled or unknown account, clock skew) | `CredentialRejected` | |
/// | `invalid_scope` | `InvalidArgument` | `scopes` (`audience` for an ID token) |
/// | `unauthorized_client` (DWD not authorized), `access_denied`, `admin_policy_enforced`, `org_internal` | `PermissionDenied` | |
/// | `invalid_client`, `disabled_client` | `CredentialRejected` | |
/// | any other code (`invalid_request`, `unsupported_grant_type`, ...), or no OAuth error body: by HTTP status, 401 / 403 / 404 / other 4xx | `CredentialRejected` / `PermissionDenied` / `NotFound` / `Other` | |
pub struct ServiceAccountSource {
    email: String,
    key_id: Option<String>,
    signer: Rs256Signer,
    endpoints: GoogleEndpoints,
    http: HttpClient,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for ServiceAccountSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountSource")
            .field("principal", &self.email)
            .field("key_id", &self.key_id)
            .field("token_url", &self.endpoints.token_url)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountSource {
    /// Builds the source from a key, parsing the PEM once. Uses the system clock; see
    /// [`ServiceAccountSource::with_clock`].
    ///
    /// # Errors
    ///
    /// - [`BackendError::InvalidPrivateKey`] if `private_key` is not a PEM RSA private key
    ///   (PKCS#8 or PKCS#1) that can sign;
    /// - [`BackendError::InvalidEndpoint`] if an endpoint URL is unusable.
    pub fn new(
        key: ServiceAccountKey,
        endpoints: GoogleEndpoints,
        http: HttpClient,
    ) -> Result<Self, BackendError> {
        endpoints.validate()?;
        let invalid = |reason: String| BackendError::InvalidPrivateKey {
            origin: key.origin.clone(),
            reason,
        };
        let signer = Rs256Signer::from_pem(&key.private_key, key.private_key_id.as_deref())
            .map_err(invalid)?;
        if let Some(token_uri) = key.token_uri()
            && token_uri != endpoints.token_url
        {
            tracing::debug!(
                principal = %key.client_email,
                token_uri,
                token_url = %endpoints.token_url,
                "ignoring the key file's token_uri: the configured token endpoint is used"
            );
        }
        Ok(Self {
            email: key.client_email.clone(),
            key_id: key.private_key_id.clone(),
            signer,
            endpoints,
            http,
            clock: Arc::new(SystemClock),
        })
    }

    /// Computes assertion times and token expiries with `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The key id (`private_key_id`) sent as the assertion's `kid`.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// Signs an assertion.
    fn sign(&self, claims: &Claims<'_>) -> Result<Zeroizing<String>, SourceError> {
        self.signer.sign(claims).map_err(|e| {
            SourceError::Internal(format!("cannot sign the assertion of {}: {e}", self.email))
        })
    }

    async fn fetch_token(
        &self,
        request: &TokenRequest,
        deadline: Option<Instant>,
    ) -> Result<Token, SourceError> {
        checks::lifetime_at_most(request, MAX_TOKEN_LIFETIME, "a service-account key")?;
        checks::valid_boundary(request)?;
        let issued_at = self.clock.now();
        let assertion = self.sign(&Claims::access_token(&self.email, request, issued_at))?;
        let token = exchange_assertion(
            &self.http,
            &self.endpoints.token_url,
            &assertion,
            &self.email,
            request,
            issued_at,
            deadline,
        )
        .await?;
        drop(assertion);
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
        let assertion = self.sign(&Claims::id_token(
            &self.email,
            &request.audience,
            self.clock.now(),
        ))?;
        let token_url = self.endpoints.token_url.as_str();
        let response = self
            .http
            .send_with_retry(
                "oauth2.token",
                deadline,
                |client| jwt_bearer_form(client, token_url, &assertion),
                |response| {
                    oauth::interpret_id_token(response, "token endpoint", |error| {
                        classify(error, false, "audience")
                    })
                },
            )
            .await?;
        drop(assertion);
        id_token::token(
            response.id_token,
            self.email.as_str().into(),
            &response.upstream,
            "token endpoint",
        )
    }
}

/// The JWT-bearer grant's form.
fn jwt_bearer_form(
    client: &reqwest::Client,
    token_url: &str,
    assertion: &str,
) -> reqwest::RequestBuilder {
    client
        .post(token_url)
        .form(&[("grant_type", JWT_BEARER), ("assertion", assertion)])
}

/// Exchanges a signed JWT-bearer `assertion` of `account`, made at `issued_at` for `request`,
/// at `token_url` for an access token (not downscoped yet). The token's principal is the
/// request's subject, or `account` without one; it expires `expires_in` after `issued_at`.
/// Refusals are classified as the table on [`ServiceAccountSource`] says. Shared by the
/// key flow and the keyless domain-wide delegation of impersonation, whose assertion IAM
/// `signJwt` signed.
pub(crate) async fn exchange_assertion(
    http: &HttpClient,
    token_url: &str,
    assertion: &str,
    account: &str,
    request: &TokenRequest,
    issued_at: SystemTime,
    deadline: Option<Instant>,
) -> Result<Token, SourceError> {
    let with_subject = request.subject.is_some();
    let response = http
        .send_with_retry(
            "oauth2.token",
            deadline,
            |client| jwt_bearer_form(client, token_url, assertion),
            |response| {
                oauth::interpret(response, "token endpoint", |error| {
                    classify(error, with_subject, "scopes")
                })
            },
        )
        .await?;
    let expires_in = response.expires_in.ok_or_else(|| SourceError::Malformed {
        upstream: response.upstream.clone(),
        message: "token endpoint answered HTTP 200 without expires_in".to_owned(),
    })?;
    let principal: Arc<str> = match &request.subject {
        Some(subject) => subject.as_str().into(),
        None => account.into(),
    };
    let token = Token {
        secret: response.access_token,
        // expires_in is capped at 12 hours, so this cannot overflow in practice; an
        // overflow would mean a clock at the end of time, and then the token is expired.
        expires_at: issued_at.checked_add(expires_in).unwrap_or(issued_at),
        scopes: request.scopes.clone(),
        principal,
    };
    tracing::debug!(
        principal = %token.principal,
        token = %token.secret.fingerprint(),
        expires_in_s = expires_in.as_secs(),
        "JWT-bearer token minted"
    );
    Ok(token)
}

/// Whose fault the token endpoint's refusal of a JWT-bearer grant is (the table on
/// [`ServiceAccountSource`]); `with_subject` says whether the assertion named a DWD subject,
/// `scope_field` which request field an `invalid_scope` refuses (`scopes`, or `audience` for
/// an ID token).
fn classify(error: &OAuthError<'_>, with_subject: bool, scope_field: &'static str) -> Verdict {
    match error.error {
        Some("invalid_grant") if with_subject && error.description_mentions("email or user id") => {
            Verdict::invalid("subject")
        }
        Some("invalid_grant" | "invalid_client" | "disabled_client") => {
            Verdict::of(Rejection::CredentialRejected)
        }
        Some("invalid_scope") => Verdict::invalid(scope_field),
        Some(
            "unauthorized_client" | "access_denied" | "admin_policy_enforced" | "org_internal",
        ) => Verdict::of(Rejection::PermissionDenied),
        _ => Verdict::by_status(error.status),
    }
}

impl TokenSource for ServiceAccountSource {
    fn principal(&self) -> &str {
        &self.email
    }

    fn kind(&self) -> &'static str {
        "service_account"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            chooses_lifetime: false,
            domain_wide_delegation: true,
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
    use crate::oauth::tests::rejection_with;

    #[test]
    fn token_endpoint_refusals_are_classified_by_whose_fault_they_are() {
        use Rejection::{CredentialRejected, InvalidArgument, NotFound, Other, PermissionDenied};
        const BAD_SUBJECT: &str = "Invalid email or User ID";
        const SKEW: &str = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a \
            reasonable timeframe. Check your iat and exp values in the JWT claim.";
        // (status, error, description, with a subject, rejection, field)
        #[rustfmt::skip]
        let cases = [
            (400, "invalid_grant", "Invalid JWT Signature.", false, CredentialRejected, None),
            (400, "invalid_grant", "Invalid JWT Signature.", true, CredentialRejected, None),
            (400, "invalid_grant", SKEW, false, CredentialRejected, None),
            (400, "invalid_grant", "Invalid grant: account not found", false, CredentialRejected, None),
            (400, "invalid_grant", BAD_SUBJECT, true, InvalidArgument, Some("subject")),
            (400, "invalid_grant", "invalid EMAIL OR USER ID", true, InvalidArgument, Some("subject")),
            // Without a subject in the request, the subject cannot be at fault.
            (400, "invalid_grant", BAD_SUBJECT, false, CredentialRejected, None),
            (400, "invalid_scope", "Invalid OAuth scope", false, InvalidArgument, Some("scopes")),
            (400, "invalid_scope", "", true, InvalidArgument, Some("scopes")),
            (401, "unauthorized_client", "Client is unauthorized", true, PermissionDenied, None),
            (400, "unauthorized_client", "", true, PermissionDenied, None),
            (403, "access_denied", "", false, PermissionDenied, None),
            (400, "admin_policy_enforced", "", true, PermissionDenied, None),
            (403, "org_internal", "", false, PermissionDenied, None),
            (401, "invalid_client", "The OAuth client was not found.", false, CredentialRejected, None),
            (401, "disabled_client", "", false, CredentialRejected, None),
            (400, "invalid_request", "Missing required parameter", false, Other, None),
            (400, "unsupported_grant_type", "", false, Other, None),
            (404, "something_new", "", false, NotFound, None),
            (400, "something_new", "", false, Other, None),
            (401, "invalid_target", "", false, CredentialRejected, None),
        ];
        for (status, code, description, with_subject, rejection, field) in cases {
            let body = serde_json::json!({"error": code, "error_description": description});
            let got = rejection_with(status, &body.to_string(), |e| {
                classify(e, with_subject, "scopes")
            });
            assert_eq!(
                (
                    got.rejection,
                    got.field.as_deref(),
                    got.error.as_str(),
                    got.status
                ),
                (rejection, field, code, status),
                "{status} {code} {description:?} subject={with_subject}"
            );
        }
        // Not an OAuth error body (a proxy, a load balancer): the status decides.
        for (status, rejection) in [
            (401, CredentialRejected),
            (403, PermissionDenied),
            (404, NotFound),
            (400, Other),
            (409, Other),
        ] {
            for with_subject in [false, true] {
                let got = rejection_with(status, "<html>no</html>", |e| {
                    classify(e, with_subject, "scopes")
                });
                assert_eq!(
                    (got.rejection, got.field, got.error.as_str()),
                    (rejection, None, "unknown"),
                    "{status}"
                );
            }
        }
    }

    const PEM_BODY: &str = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj";

    fn key_json(kind: &str, pem: &str) -> String {
        serde_json::json!({
            "type": kind,
            "project_id": "p",
            "private_key_id": "abc123",
            "private_key": pem,
            "client_email": "sa@p.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.googleapis.com/token",
        })
        .to_string()
    }

    #[test]
    fn parses_a_key_file_and_debug_shows_only_email_and_key_id() {
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----\n");
        let key = ServiceAccountKey::from_json(&key_json("service_account", &pem)).expect("parses");
        assert_eq!(key.client_email(), "sa@p.iam.gserviceaccount.com");
        assert_eq!(key.private_key_id(), Some("abc123"));
        assert_eq!(key.project_id(), Some("p"));
        assert_eq!(key.token_uri(), Some("https://oauth2.googleapis.com/token"));
        let shown = format!("{key:?}");
        assert!(shown.contains("sa@p.iam.gserviceaccount.com") && shown.contains("abc123"));
        assert!(
            !shown.contains(PEM_BODY) && !shown.contains("PRIVATE KEY"),
            "{shown}"
        );
    }

    #[test]
    fn key_file_errors_name_the_field_and_never_quote_the_key() {
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----\n");
        let cases: Vec<(String, &str)> = vec![
            (key_json("authorized_user", &pem), "authorized_user"),
            (
                serde_json::json!({"type": "service_account", "private_key": pem}).to_string(),
                "client_email",
            ),
            (
                serde_json::json!({"type": "service_account", "client_email": "a@b"}).to_string(),
                "private_key",
            ),
            (
                serde_json::json!({"client_email": "a@b", "private_key": pem}).to_string(),
                "type",
            ),
            (
                serde_json::json!({"type": "service_account", "client_email": 5, "private_key": pem})
                    .to_string(),
                "client_email",
            ),
            (
                serde_json::json!({"type": pem, "client_email": "a@b", "private_key": pem})
                    .to_string(),
                "type",
            ),
            // Truncated JSON, cut inside the private key.
            (key_json("service_account", &pem)[..120].to_owned(), "line 1"),
        ];
        for (json, expected) in cases {
            let error = ServiceAccountKey::parse(&json, "/etc/keys/sa.json").expect_err("invalid");
            let shown = format!("{error} {error:?}");
            assert!(shown.contains("/etc/keys/sa.json"), "{shown}");
            assert!(shown.contains(expected), "{expected}: {shown}");
            assert!(
                !shown.contains(PEM_BODY) && !shown.contains("MIIE"),
                "{shown}"
            );
        }
    }
}
