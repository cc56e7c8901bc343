//! What the broker hands out: access tokens (minted, impersonated or exchanged), ID tokens,
//! signed JWTs and blob signatures, each checked on the way in.

use std::fmt;
use std::time::{Duration, SystemTime};

use broker_core::Secret;
use broker_proto::tokenbroker::v1::{
    ExchangeTokenResponse, GenerateIdTokenResponse, GetAccessTokenResponse,
    ImpersonateServiceAccountResponse, SignBlobResponse, SignJwtResponse,
};

use crate::error::ClientError;
use crate::requests::token_type;

/// An access token from the broker: from `GetAccessToken`, or from
/// `ImpersonateServiceAccount` for the target service account.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccessToken {
    /// The OAuth 2.0 access token. Send it only in an `Authorization: Bearer` header to Google
    /// APIs; never log it.
    pub token: Secret,
    /// The token type, `Bearer`.
    pub token_type: String,
    /// When the token expires.
    pub expire_time: SystemTime,
    /// The Google principal the token acts as (empty when the broker cannot tell); for an
    /// impersonated token, the target service account's email.
    pub principal: String,
    /// The scopes the token carries, as the broker reported them. Empty for a token from
    /// `ImpersonateServiceAccount`, whose response does not list them (Google grants exactly
    /// the requested scopes, or cloud-platform when none were requested).
    pub scopes: Vec<String>,
    /// The broker credential that minted it (for an impersonated token: the base credential).
    pub credential: String,
    /// True if the broker served the token from its own cache (as reported when this client
    /// fetched it).
    pub cache_hit: bool,
    /// True if the broker served its last known good token because refreshing it failed
    /// (Google unavailable): valid until `expire_time`, but with less left than asked for.
    pub last_known_good: bool,
}

impl AccessToken {
    /// The token string. A secret.
    pub fn secret(&self) -> &str {
        self.token.expose()
    }

    /// How long the token is still valid at `now` (zero once it has expired).
    pub fn expires_in(&self, now: SystemTime) -> Duration {
        remaining(self.expire_time, now)
    }

    /// The value of an HTTP `Authorization` header carrying the token. A secret.
    pub fn authorization_header(&self) -> Secret {
        Secret::new(format!("Bearer {}", self.secret()))
    }

    /// Converts a `GetAccessTokenResponse`; refuses one without a token or an expiry.
    pub fn from_response(response: GetAccessTokenResponse) -> Result<Self, ClientError> {
        const MESSAGE: &str = "GetAccessTokenResponse";
        let GetAccessTokenResponse {
            access_token,
            token_type,
            expire_time,
            granted_scopes,
            principal,
            cache_hit,
            credential,
            last_known_good,
        } = response;
        Ok(Self {
            token: required_secret(MESSAGE, "access_token", access_token)?,
            token_type: bearer_by_default(token_type),
            expire_time: required_time(MESSAGE, expire_time)?,
            principal,
            scopes: granted_scopes,
            credential,
            cache_hit,
            last_known_good,
        })
    }

    /// Converts an `ImpersonateServiceAccountResponse`; refuses one without a token or an
    /// expiry. [`scopes`](Self::scopes) is left empty: the response does not list them.
    pub fn from_impersonation_response(
        response: ImpersonateServiceAccountResponse,
    ) -> Result<Self, ClientError> {
        const MESSAGE: &str = "ImpersonateServiceAccountResponse";
        let ImpersonateServiceAccountResponse {
            access_token,
            token_type,
            expire_time,
            principal,
            cache_hit,
            credential,
            last_known_good,
        } = response;
        Ok(Self {
            token: required_secret(MESSAGE, "access_token", access_token)?,
            token_type: bearer_by_default(token_type),
            expire_time: required_time(MESSAGE, expire_time)?,
            principal,
            scopes: Vec::new(),
            credential,
            cache_hit,
            last_known_good,
        })
    }
}

/// A Google access token from `ExchangeToken`: issued for an external token (workload or
/// workforce identity federation), or a downscoped access token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExchangedToken {
    /// The issued OAuth 2.0 access token. Send it only in an `Authorization: Bearer` header to
    /// Google APIs; never log it.
    pub token: Secret,
    /// The type of the issued token: [`token_type::ACCESS_TOKEN`].
    pub issued_token_type: String,
    /// The token type, `Bearer`.
    pub token_type: String,
    /// When the token expires. `None` for downscoping: Google does not say, because a
    /// downscoped token expires with the access token it was made from.
    pub expire_time: Option<SystemTime>,
    /// The Google principal the token acts as: the service account's email when the credential
    /// impersonates one, or an IAM principal identifier; empty for downscoping and whenever the
    /// broker cannot tell.
    pub principal: String,
    /// The broker credential that shaped the exchange; empty for a plain exchange.
    pub credential: String,
}

impl ExchangedToken {
    /// The token string. A secret.
    pub fn secret(&self) -> &str {
        self.token.expose()
    }

    /// How long the token is still valid at `now` (zero once it has expired); `None` when the
    /// broker did not say (downscoping).
    pub fn expires_in(&self, now: SystemTime) -> Option<Duration> {
        self.expire_time
            .map(|expire_time| remaining(expire_time, now))
    }

    /// The value of an HTTP `Authorization` header carrying the token. A secret.
    pub fn authorization_header(&self) -> Secret {
        Secret::new(format!("Bearer {}", self.secret()))
    }

    /// Converts an `ExchangeTokenResponse`; refuses one without a token or with an invalid
    /// expiry. An unset expiry is accepted (downscoping); empty token types read as
    /// [`token_type::ACCESS_TOKEN`] and `Bearer`.
    pub fn from_response(response: ExchangeTokenResponse) -> Result<Self, ClientError> {
        const MESSAGE: &str = "ExchangeTokenResponse";
        let ExchangeTokenResponse {
            access_token,
            issued_token_type,
            token_type: bearer,
            expire_time,
            principal,
            credential,
        } = response;
        let token = required_secret(MESSAGE, "access_token", access_token)?;
        let expire_time = expire_time
            .map(|timestamp| valid_time(MESSAGE, timestamp))
            .transpose()?;
        Ok(Self {
            token,
            issued_token_type: if issued_token_type.is_empty() {
                token_type::ACCESS_TOKEN.to_owned()
            } else {
                issued_token_type
            },
            token_type: bearer_by_default(bearer),
            expire_time,
            principal,
            credential,
        })
    }
}

/// A Google-signed OpenID Connect ID token from `GenerateIdToken`, for calling Cloud Run,
/// Cloud Functions, IAP and other services that verify Google ID tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdToken {
    /// The ID token, a JWT. Send it only to its audience (usually as `Authorization: Bearer`);
    /// never log it.
    pub token: Secret,
    /// When the token expires (its `exp` claim).
    pub expire_time: SystemTime,
    /// The service account the token identifies: its email.
    pub principal: String,
    /// The broker credential that was used (the base credential when impersonating).
    pub credential: String,
    /// True if the broker served the token from its own cache (as reported when this client
    /// fetched it).
    pub cache_hit: bool,
    /// True if the broker served its last known good ID token because refreshing it failed
    /// (Google unavailable): valid until `expire_time`, but with less left than asked for.
    pub last_known_good: bool,
}

impl IdToken {
    /// The JWT. A secret.
    pub fn secret(&self) -> &str {
        self.token.expose()
    }

    /// How long the token is still valid at `now` (zero once it has expired).
    pub fn expires_in(&self, now: SystemTime) -> Duration {
        remaining(self.expire_time, now)
    }

    /// The value of an HTTP `Authorization` header carrying the token, as Cloud Run and Cloud
    /// Functions expect it. A secret.
    pub fn authorization_header(&self) -> Secret {
        Secret::new(format!("Bearer {}", self.secret()))
    }

    /// Converts a `GenerateIdTokenResponse`; refuses one without a token or an expiry.
    pub fn from_response(response: GenerateIdTokenResponse) -> Result<Self, ClientError> {
        const MESSAGE: &str = "GenerateIdTokenResponse";
        let GenerateIdTokenResponse {
            id_token,
            expire_time,
            principal,
            cache_hit,
            credential,
            last_known_good,
        } = response;
        Ok(Self {
            token: required_secret(MESSAGE, "id_token", id_token)?,
            expire_time: required_time(MESSAGE, expire_time)?,
            principal,
            credential,
            cache_hit,
            last_known_good,
        })
    }
}

/// A JWT signed by `SignJwt` with a service account's Google-managed key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignedJwt {
    /// The ID of the key that signed: the JWT's `kid` header. Its certificate is at
    /// `https://www.googleapis.com/service_accounts/v1/metadata/x509/` followed by the service
    /// account's email.
    pub key_id: String,
    /// The signed JWT (JWS compact serialization). Treat it as a secret if its claims grant
    /// anything.
    pub signed_jwt: Secret,
    /// The broker credential whose access token called IAM.
    pub credential: String,
}

impl SignedJwt {
    /// The signed JWT.
    pub fn secret(&self) -> &str {
        self.signed_jwt.expose()
    }

    /// Converts a `SignJwtResponse`; refuses one without a JWT or a key ID.
    pub fn from_response(response: SignJwtResponse) -> Result<Self, ClientError> {
        const MESSAGE: &str = "SignJwtResponse";
        let SignJwtResponse {
            key_id,
            signed_jwt,
            credential,
        } = response;
        Ok(Self {
            key_id: required(MESSAGE, "key_id", key_id)?,
            signed_jwt: required_secret(MESSAGE, "signed_jwt", signed_jwt)?,
            credential,
        })
    }
}

/// A signature made by `SignBlob` with a service account's Google-managed key: RSA-SHA256 with
/// PKCS#1 v1.5 padding.
///
/// A signature can be a credential (a Cloud Storage signed URL, say), so `Debug` shows only its
/// length and a fingerprint.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignedBlob {
    /// The ID of the key that signed. Its certificate is at
    /// `https://www.googleapis.com/service_accounts/v1/metadata/x509/` followed by the service
    /// account's email.
    pub key_id: String,
    /// The signature, raw bytes (256 for Google's RSA-2048 keys).
    pub signature: Vec<u8>,
    /// The broker credential whose access token called IAM.
    pub credential: String,
}

impl SignedBlob {
    /// The signature in standard base64 with padding (RFC 4648 §4), as Google's IAM API
    /// returns `signedBlob`.
    pub fn signature_base64(&self) -> String {
        base64_standard(&self.signature)
    }

    /// Converts a `SignBlobResponse`; refuses one without a signature or a key ID.
    pub fn from_response(response: SignBlobResponse) -> Result<Self, ClientError> {
        const MESSAGE: &str = "SignBlobResponse";
        let SignBlobResponse {
            key_id,
            signature,
            credential,
        } = response;
        if signature.is_empty() {
            return Err(empty(MESSAGE, "signature"));
        }
        Ok(Self {
            key_id: required(MESSAGE, "key_id", key_id)?,
            signature,
            credential,
        })
    }
}

impl fmt::Debug for SignedBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedBlob")
            .field("key_id", &self.key_id)
            .field(
                "signature",
                &format_args!(
                    "{} bytes, {}",
                    self.signature.len(),
                    broker_core::fingerprint(&self.signature)
                ),
            )
            .field("credential", &self.credential)
            .finish()
    }
}

fn remaining(expire_time: SystemTime, now: SystemTime) -> Duration {
    expire_time.duration_since(now).unwrap_or(Duration::ZERO)
}

fn bearer_by_default(token_type: String) -> String {
    if token_type.is_empty() {
        "Bearer".to_owned()
    } else {
        token_type
    }
}

fn empty(message: &str, field: &str) -> ClientError {
    ClientError::Protocol(format!("{message} has an empty {field}"))
}

fn required(message: &str, field: &str, value: String) -> Result<String, ClientError> {
    if value.is_empty() {
        return Err(empty(message, field));
    }
    Ok(value)
}

/// Wraps the value first, so that it is zeroized even when it is refused.
fn required_secret(message: &str, field: &str, value: String) -> Result<Secret, ClientError> {
    let secret = Secret::new(value);
    if secret.expose().is_empty() {
        return Err(empty(message, field));
    }
    Ok(secret)
}

fn required_time(
    message: &str,
    expire_time: Option<prost_types::Timestamp>,
) -> Result<SystemTime, ClientError> {
    let timestamp = expire_time
        .ok_or_else(|| ClientError::Protocol(format!("{message} has no expire_time")))?;
    valid_time(message, timestamp)
}

fn valid_time(message: &str, timestamp: prost_types::Timestamp) -> Result<SystemTime, ClientError> {
    SystemTime::try_from(timestamp).map_err(|error| {
        ClientError::Protocol(format!("{message} has an invalid expire_time: {error}"))
    })
}

/// Standard base64 with padding (RFC 4648 §4).
pub(crate) fn base64_standard(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timestamp(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let token = AccessToken {
            token: Secret::new("ya29.very-secret"),
            token_type: "Bearer".to_owned(),
            expire_time: SystemTime::UNIX_EPOCH,
            principal: "sa@p.iam.gserviceaccount.com".to_owned(),
            scopes: vec![],
            credential: "prod".to_owned(),
            cache_hit: false,
            last_known_good: false,
        };
        let debug = format!("{token:?}");
        assert!(!debug.contains("very-secret"), "{debug}");
        assert!(debug.contains("sha256:"), "only a fingerprint: {debug}");
        assert_eq!(
            token.authorization_header().expose(),
            "Bearer ya29.very-secret"
        );

        let id_token = IdToken::from_response(GenerateIdTokenResponse {
            id_token: "eyJ.id-secret.sig".to_owned(),
            expire_time: timestamp(1_800_003_600),
            principal: "sa@p.iam.gserviceaccount.com".to_owned(),
            cache_hit: true,
            credential: "prod".to_owned(),
            last_known_good: false,
        });
        let debug = format!("{id_token:?}");
        assert!(debug.contains("Ok(IdToken"), "{debug}");
        assert!(!debug.contains("id-secret"), "{debug}");
        assert_eq!(
            id_token
                .map(|t| t.authorization_header().expose().to_owned())
                .ok(),
            Some("Bearer eyJ.id-secret.sig".to_owned())
        );

        let jwt = SignedJwt::from_response(SignJwtResponse {
            key_id: "k1".to_owned(),
            signed_jwt: "eyJ.jwt-secret.sig".to_owned(),
            credential: "prod".to_owned(),
        });
        let debug = format!("{jwt:?}");
        assert!(
            debug.contains("k1") && !debug.contains("jwt-secret"),
            "{debug}"
        );

        let blob = SignedBlob::from_response(SignBlobResponse {
            key_id: "k1".to_owned(),
            signature: b"blob-secret".to_vec(),
            credential: "prod".to_owned(),
        });
        let debug = format!("{blob:?}");
        assert!(debug.contains("11 bytes, sha256:"), "{debug}");
        assert!(!debug.contains("98, 108"), "{debug}");
    }

    #[test]
    fn conversions_keep_every_field() {
        let token = AccessToken::from_impersonation_response(ImpersonateServiceAccountResponse {
            access_token: "ya29.t".to_owned(),
            token_type: String::new(),
            expire_time: timestamp(1_800_003_600),
            principal: "target@p.iam.gserviceaccount.com".to_owned(),
            cache_hit: true,
            credential: "base".to_owned(),
            last_known_good: true,
        });
        let Ok(token) = token else {
            panic!("a valid response: {token:?}");
        };
        assert_eq!(token.secret(), "ya29.t");
        assert_eq!(token.token_type, "Bearer");
        assert_eq!(
            token.expire_time,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_003_600)
        );
        assert_eq!(
            token.expires_in(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            Duration::from_secs(3600)
        );
        assert_eq!(token.principal, "target@p.iam.gserviceaccount.com");
        assert!(token.scopes.is_empty());
        assert_eq!(token.credential, "base");
        assert!(token.cache_hit && token.last_known_good);

        let blob = SignedBlob::from_response(SignBlobResponse {
            key_id: "k1".to_owned(),
            signature: vec![0, 0xff, b'a'],
            credential: "prod".to_owned(),
        });
        assert_eq!(
            blob.map(|b| b.signature_base64()).ok().as_deref(),
            Some("AP9h")
        );
    }

    #[test]
    fn malformed_responses_are_refused() {
        let refused = |result: Result<(), ClientError>, needle: &str| match result {
            Err(ClientError::Protocol(message)) => {
                assert!(message.contains(needle), "{message} should name {needle}");
            }
            other => panic!("expected a protocol error naming {needle}, got {other:?}"),
        };
        refused(
            AccessToken::from_response(GetAccessTokenResponse {
                access_token: "t".to_owned(),
                ..GetAccessTokenResponse::default()
            })
            .map(drop),
            "GetAccessTokenResponse has no expire_time",
        );
        refused(
            AccessToken::from_response(GetAccessTokenResponse {
                expire_time: timestamp(1),
                ..GetAccessTokenResponse::default()
            })
            .map(drop),
            "empty access_token",
        );
        refused(
            AccessToken::from_impersonation_response(ImpersonateServiceAccountResponse {
                expire_time: timestamp(1),
                ..ImpersonateServiceAccountResponse::default()
            })
            .map(drop),
            "ImpersonateServiceAccountResponse has an empty access_token",
        );
        refused(
            AccessToken::from_impersonation_response(ImpersonateServiceAccountResponse {
                access_token: "t".to_owned(),
                ..ImpersonateServiceAccountResponse::default()
            })
            .map(drop),
            "no expire_time",
        );
        refused(
            IdToken::from_response(GenerateIdTokenResponse {
                expire_time: timestamp(1),
                ..GenerateIdTokenResponse::default()
            })
            .map(drop),
            "GenerateIdTokenResponse has an empty id_token",
        );
        refused(
            IdToken::from_response(GenerateIdTokenResponse {
                id_token: "eyJ".to_owned(),
                ..GenerateIdTokenResponse::default()
            })
            .map(drop),
            "GenerateIdTokenResponse has no expire_time",
        );
        refused(
            SignedJwt::from_response(SignJwtResponse {
                key_id: "k".to_owned(),
                ..SignJwtResponse::default()
            })
            .map(drop),
            "SignJwtResponse has an empty signed_jwt",
        );
        refused(
            SignedJwt::from_response(SignJwtResponse {
                signed_jwt: "eyJ".to_owned(),
                ..SignJwtResponse::default()
            })
            .map(drop),
            "SignJwtResponse has an empty key_id",
        );
        refused(
            SignedBlob::from_response(SignBlobResponse {
                key_id: "k".to_owned(),
                ..SignBlobResponse::default()
            })
            .map(drop),
            "SignBlobResponse has an empty signature",
        );
        refused(
            SignedBlob::from_response(SignBlobResponse {
                signature: vec![1],
                ..SignBlobResponse::default()
            })
            .map(drop),
            "SignBlobResponse has an empty key_id",
        );
    }

    #[test]
    fn exchanged_tokens_keep_every_field_and_may_lack_an_expiry() {
        let token = ExchangedToken::from_response(ExchangeTokenResponse {
            access_token: "ya29.exchanged-secret".to_owned(),
            issued_token_type: "urn:ietf:params:oauth:token-type:access_token".to_owned(),
            token_type: "Bearer".to_owned(),
            expire_time: timestamp(1_800_003_600),
            principal: "sa@p.iam.gserviceaccount.com".to_owned(),
            credential: "federation".to_owned(),
        });
        let debug = format!("{token:?}");
        assert!(debug.contains("Ok(ExchangedToken"), "{debug}");
        assert!(!debug.contains("exchanged-secret"), "{debug}");
        let Ok(token) = token else {
            panic!("a valid response: {token:?}");
        };
        assert_eq!(token.secret(), "ya29.exchanged-secret");
        assert_eq!(
            token.authorization_header().expose(),
            "Bearer ya29.exchanged-secret"
        );
        assert_eq!(token.issued_token_type, token_type::ACCESS_TOKEN);
        assert_eq!(token.token_type, "Bearer");
        assert_eq!(
            token.expire_time,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_003_600))
        );
        assert_eq!(
            token.expires_in(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            token.expires_in(SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000)),
            Some(Duration::ZERO)
        );
        assert_eq!(token.principal, "sa@p.iam.gserviceaccount.com");
        assert_eq!(token.credential, "federation");

        // Downscoping: no expiry, principal or credential; empty types read as the defaults.
        let token = ExchangedToken::from_response(ExchangeTokenResponse {
            access_token: "ya29.downscoped".to_owned(),
            ..ExchangeTokenResponse::default()
        });
        let Ok(token) = token else {
            panic!("a valid response: {token:?}");
        };
        assert_eq!(token.expire_time, None);
        assert_eq!(token.expires_in(SystemTime::now()), None);
        assert_eq!(
            token.issued_token_type,
            "urn:ietf:params:oauth:token-type:access_token"
        );
        assert_eq!(token.token_type, "Bearer");
        assert!(token.principal.is_empty() && token.credential.is_empty());
    }

    #[test]
    fn malformed_exchange_responses_are_refused() {
        let refused =
            |response: ExchangeTokenResponse, needle: &str| match ExchangedToken::from_response(
                response,
            ) {
                Err(ClientError::Protocol(message)) => {
                    assert!(message.contains(needle), "{message} should name {needle}");
                    assert!(!message.contains("ya29"), "{message}");
                }
                other => panic!("expected a protocol error naming {needle}, got {other:?}"),
            };
        refused(
            ExchangeTokenResponse {
                expire_time: timestamp(1),
                ..ExchangeTokenResponse::default()
            },
            "ExchangeTokenResponse has an empty access_token",
        );
        refused(
            ExchangeTokenResponse {
                access_token: "ya29.t".to_owned(),
                expire_time: timestamp(i64::MIN),
                ..ExchangeTokenResponse::default()
            },
            "ExchangeTokenResponse has an invalid expire_time",
        );
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_standard(input.as_bytes()), expected, "{input:?}");
        }
        assert_eq!(base64_standard(&[0xfb, 0xff, 0xbf]), "+/+/");
    }
}
