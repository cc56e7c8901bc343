//! Service-account keys: the RFC 7523 JWT-bearer grant at Google's OAuth 2.0 token endpoint
//! (google-protocols.md §1.2, §1.4, §1.5; key file format §2.1), with optional domain-wide
//! delegation and optional downscoping through STS (§4.5).
//!
//! See <https://developers.google.com/identity/protocols/oauth2/service-account#httprest> and
//! <https://www.rfc-editor.org/rfc/rfc7523>.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use broker_core::{
    Clock, Rejection, SourceError, SourceFuture, SystemClock, Token, TokenRequest, TokenSource,
};
use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::endpoints::GOOGLE_TOKEN_URL;
use crate::http::HttpClient;
use crate::jws::Rs256Signer;
use crate::oauth::{self, OAuthError, Verdict};
use crate::{BackendError, GoogleEndpoints, sts};

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
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            BackendError::ReadKeyFile {
                path: path.to_path_buf(),
                source: Arc::new(source),
            }
        })?);
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses key-file JSON; `origin` (a path or a description) names it in errors.
    ///
    /// # Errors
    ///
    /// [`BackendError`] naming `origin` and the field at fault; never quoting the key.
    pub fn parse(json: &str, origin: &str) -> Result<Self, BackendError> {
        let value: Value = serde_json::from_str(json).map_err(|e| BackendError::KeyFileSyntax {
            origin: origin.to_owned(),
            category: match e.classify() {
                serde_json::error::Category::Io => "io",
                serde_json::error::Category::Syntax => "syntax",
                serde_json::error::Category::Data => "data",
                serde_json::error::Category::Eof => "eof",
            },
            line: e.line(),
            column: e.column(),
        })?;
        let Value::Object(mut object) = value else {
            return Err(field_error(
                origin,
                "type",
                "is missing: the file is not a JSON object",
            ));
        };
        // Moved, not copied, into zeroizing storage before anything else can fail.
        let private_key = match object.remove("private_key") {
            Some(Value::String(pem)) => Some(Zeroizing::new(pem)),
            Some(_) => return Err(field_error(origin, "private_key", "must be a string")),
            None => None,
        };
        let mut text = |field: &'static str| match object.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(field_error(origin, field, "must be a string")),
        };
        let kind = text("type")?;
        let client_email = text("client_email")?;
        let private_key_id = text("private_key_id")?.filter(|id| !id.is_empty());
        let token_uri = text("token_uri")?;
        let project_id = text("project_id")?;

        match kind.as_deref() {
            Some("service_account") => {}
            Some(other) => {
                return Err(BackendError::WrongKeyType {
                    origin: origin.to_owned(),
                    found: printable_type(other),
                });
            }
            None => {
                return Err(field_error(
                    origin,
                    "type",
                    "is missing (expected \"service_account\")",
                ));
            }
        }
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

fn field_error(origin: &str, field: &'static str, problem: &str) -> BackendError {
    BackendError::KeyFileField {
        origin: origin.to_owned(),
        field,
        problem: problem.to_owned(),
    }
}

/// A credential type name is short and plain; anything else is not echoed.
fn printable_type(found: &str) -> String {
    if found.len() <= 64
        && found
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        found.to_owned()
    } else {
        "(an unrecognised value)".to_owned()
    }
}

/// The JWT-bearer assertion's claims.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: String,
    aud: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
}

/// A [`TokenSource`] holding a service-account key: it signs an RS256 JWT-bearer assertion and
/// exchanges it at the token endpoint.
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
/// The token endpoint's permanent refusals are [`SourceError::Rejected`], classified:
///
/// | `error` | rejection | field |
/// |---|---|---|
/// | `invalid_grant`, with a subject and a description naming the "email or user id" | `InvalidArgument` | `subject` |
/// | `invalid_grant` otherwise (bad or deleted key, disabled or unknown account, clock skew) | `CredentialRejected` | |
/// | `invalid_scope` | `InvalidArgument` | `scopes` |
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

    /// Signs the assertion for `request` at `now`.
    fn assertion(
        &self,
        request: &TokenRequest,
        now: SystemTime,
    ) -> Result<Zeroizing<String>, SourceError> {
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            iss: &self.email,
            scope: request.scopes.joined(),
            aud: ASSERTION_AUDIENCE,
            iat,
            exp: iat + ASSERTION_LIFETIME_SECS,
            sub: request.subject.as_deref(),
        };
        self.signer.sign(&claims).map_err(|e| {
            SourceError::Internal(format!("cannot sign the assertion of {}: {e}", self.email))
        })
    }

    async fn fetch_token(
        &self,
        request: &TokenRequest,
        deadline: Option<Instant>,
    ) -> Result<Token, SourceError> {
        if let Some(lifetime) = request.lifetime
            && lifetime > MAX_TOKEN_LIFETIME
        {
            return Err(SourceError::Unsupported {
                flow: "extended_lifetime",
                message: format!(
                    "a service-account key gives tokens of at most {} s; {} s were asked for",
                    MAX_TOKEN_LIFETIME.as_secs(),
                    lifetime.as_secs()
                ),
            });
        }
        if let Some(boundary) = &request.boundary {
            // Checked before the token is minted, so a boundary STS would refuse costs no call.
            boundary
                .validate()
                .map_err(|e| SourceError::InvalidRequest {
                    field: "access_boundary".to_owned(),
                    message: e.to_string(),
                })?;
        }
        let issued_at = self.clock.now();
        let assertion = self.assertion(request, issued_at)?;
        let token_url = self.endpoints.token_url.as_str();
        let with_subject = request.subject.is_some();
        let response = self
            .http
            .send_with_retry(
                "oauth2.token",
                deadline,
                |client| {
                    client.post(token_url).form(&[
                        ("grant_type", JWT_BEARER),
                        ("assertion", assertion.as_str()),
                    ])
                },
                |response| {
                    oauth::interpret(response, "token endpoint", |error| {
                        classify(error, with_subject)
                    })
                },
            )
            .await?;
        drop(assertion);
        let expires_in = response.expires_in.ok_or_else(|| SourceError::Malformed {
            upstream: response.upstream.clone(),
            message: "token endpoint answered HTTP 200 without expires_in".to_owned(),
        })?;
        let principal: Arc<str> = match &request.subject {
            Some(subject) => subject.as_str().into(),
            None => self.email.as_str().into(),
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
            "service-account token minted"
        );
        match &request.boundary {
            Some(boundary) => {
                sts::downscope(
                    &self.http,
                    &self.endpoints,
                    self.clock.as_ref(),
                    &token,
                    boundary,
                    deadline,
                )
                .await
            }
            None => Ok(token),
        }
    }
}

/// Whose fault the token endpoint's refusal of a JWT-bearer grant is (the table on
/// [`ServiceAccountSource`]); `with_subject` says whether the assertion named a DWD subject.
fn classify(error: &OAuthError<'_>, with_subject: bool) -> Verdict {
    match error.error {
        Some("invalid_grant") if with_subject && error.description_mentions("email or user id") => {
            Verdict::invalid("subject")
        }
        Some("invalid_grant" | "invalid_client" | "disabled_client") => {
            Verdict::of(Rejection::CredentialRejected)
        }
        Some("invalid_scope") => Verdict::invalid("scopes"),
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

    fn fetch<'a>(
        &'a self,
        request: &'a TokenRequest,
        deadline: Option<Instant>,
    ) -> SourceFuture<'a> {
        Box::pin(self.fetch_token(request, deadline))
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
            let got = rejection_with(status, &body.to_string(), |e| classify(e, with_subject));
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
                let got = rejection_with(status, "<html>no</html>", |e| classify(e, with_subject));
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
