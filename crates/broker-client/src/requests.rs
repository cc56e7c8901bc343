//! What to ask the broker for, and the protobuf requests made from it.

use std::time::Duration;

use broker_core::Secret;
use broker_proto::tokenbroker::v1::{
    CredentialAccessBoundary, ExchangeTokenOptions, ExchangeTokenRequest, GenerateIdTokenRequest,
    GetAccessTokenRequest, ImpersonateServiceAccountRequest, SignBlobRequest, SignJwtRequest,
};

use crate::error::ClientError;

/// What to ask the broker for: the template of every `GetAccessToken` request a
/// [`TokenProvider`](crate::TokenProvider) makes, or the request of
/// [`get_access_token`](crate::get_access_token).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenRequest {
    /// OAuth 2.0 scopes; empty means the broker's default (cloud-platform).
    pub scopes: Vec<String>,
    /// The broker credential to use; `None` means the caller's default grant.
    pub credential: Option<String>,
    /// Domain-wide delegation subject (a Workspace user's email).
    pub subject: Option<String>,
    /// The lifetime wanted for a newly minted token (whole seconds).
    pub lifetime: Option<Duration>,
    /// The least validity a returned token must have left (whole seconds); the broker's
    /// default is 5 minutes. A [`TokenProvider`](crate::TokenProvider) also refreshes its own
    /// cached token once less than this is left.
    pub min_remaining_validity: Option<Duration>,
}

impl TokenRequest {
    /// The protobuf request. Durations must be whole seconds.
    pub fn to_proto(&self) -> Result<GetAccessTokenRequest, ClientError> {
        Ok(GetAccessTokenRequest {
            scopes: self.scopes.clone(),
            credential: or_empty(&self.credential),
            subject: or_empty(&self.subject),
            lifetime: optional_duration("lifetime", self.lifetime)?,
            min_remaining_validity: optional_duration(
                "min_remaining_validity",
                self.min_remaining_validity,
            )?,
            access_boundary: None,
        })
    }
}

/// An `ImpersonateServiceAccount` request: an access token of another service account, minted
/// by IAM with the base credential's identity (see [`impersonate`](crate::impersonate)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImpersonationRequest {
    /// The email of the service account to impersonate. Required.
    pub target_service_account: String,
    /// The delegation chain, in order: the base credential's identity impersonates the first,
    /// each the next, and the last the target. Empty: the target directly.
    pub delegates: Vec<String>,
    /// OAuth 2.0 scopes; empty means cloud-platform.
    pub scopes: Vec<String>,
    /// The lifetime wanted for a newly minted token (whole seconds, at most 12 hours); the
    /// broker's default is 1 hour.
    pub lifetime: Option<Duration>,
    /// The least validity a returned token must have left (whole seconds); the broker's
    /// default is 5 minutes.
    pub min_remaining_validity: Option<Duration>,
    /// The base credential; `None` means the caller's default grant.
    pub credential: Option<String>,
}

impl ImpersonationRequest {
    /// The protobuf request. Durations must be whole seconds.
    pub fn to_proto(&self) -> Result<ImpersonateServiceAccountRequest, ClientError> {
        Ok(ImpersonateServiceAccountRequest {
            target_service_account: self.target_service_account.clone(),
            delegates: self.delegates.clone(),
            scopes: self.scopes.clone(),
            lifetime: optional_duration("lifetime", self.lifetime)?,
            credential: or_empty(&self.credential),
            min_remaining_validity: optional_duration(
                "min_remaining_validity",
                self.min_remaining_validity,
            )?,
        })
    }
}

/// A `GenerateIdToken` request: a Google-signed ID token for an audience (see
/// [`generate_id_token`](crate::generate_id_token) and
/// [`IdTokenProvider`](crate::IdTokenProvider)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdTokenRequest {
    /// The audience (`aud` claim): usually the URL of the receiving service, for example
    /// `https://my-service-abc123-uc.a.run.app`. Required.
    pub audience: String,
    /// Ask for the `email` and `email_verified` claims.
    pub include_email: bool,
    /// The service account to get the ID token for, by impersonation with the base credential;
    /// `None` means the credential's own identity.
    pub target_service_account: Option<String>,
    /// The delegation chain to `target_service_account`, in order. Must be empty without a
    /// target.
    pub delegates: Vec<String>,
    /// The credential to use (the base credential when impersonating); `None` means the
    /// caller's default grant.
    pub credential: Option<String>,
    /// The least validity a returned token must have left (whole seconds); the broker's
    /// default is 5 minutes. An [`IdTokenProvider`](crate::IdTokenProvider) also refreshes its
    /// own cached token once less than this is left.
    pub min_remaining_validity: Option<Duration>,
}

impl IdTokenRequest {
    /// The protobuf request. Durations must be whole seconds, and `delegates` needs a
    /// `target_service_account`.
    pub fn to_proto(&self) -> Result<GenerateIdTokenRequest, ClientError> {
        let target = or_empty(&self.target_service_account);
        if target.is_empty() && !self.delegates.is_empty() {
            return Err(ClientError::Config(
                "delegates need a target service account to impersonate".to_owned(),
            ));
        }
        Ok(GenerateIdTokenRequest {
            audience: self.audience.clone(),
            include_email: self.include_email,
            target_service_account: target,
            delegates: self.delegates.clone(),
            credential: or_empty(&self.credential),
            min_remaining_validity: optional_duration(
                "min_remaining_validity",
                self.min_remaining_validity,
            )?,
        })
    }
}

/// A `SignJwt` request: JWT claims to sign with a service account's Google-managed key (see
/// [`sign_jwt`](crate::sign_jwt)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtSigningRequest {
    /// The email of the service account whose key signs. Required.
    pub service_account: String,
    /// The claims: a JSON object, for example
    /// `{"iss":"sa@p.iam.gserviceaccount.com","aud":"my-audience","exp":1767225600}`. The
    /// broker validates it (a JSON object of at most 64 KiB, `exp` at most 12 hours ahead).
    pub payload: String,
    /// The delegation chain to `service_account`, in order.
    pub delegates: Vec<String>,
    /// The credential whose access token calls IAM; `None` means the caller's default grant.
    pub credential: Option<String>,
}

impl JwtSigningRequest {
    /// The protobuf request.
    pub fn to_proto(&self) -> SignJwtRequest {
        SignJwtRequest {
            service_account: self.service_account.clone(),
            payload: self.payload.clone(),
            delegates: self.delegates.clone(),
            credential: or_empty(&self.credential),
        }
    }
}

/// A `SignBlob` request: bytes to sign with a service account's Google-managed key (see
/// [`sign_blob`](crate::sign_blob)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobSigningRequest {
    /// The email of the service account whose key signs. Required.
    pub service_account: String,
    /// The bytes to sign (raw, not base64): 1 byte to 64 KiB.
    pub payload: Vec<u8>,
    /// The delegation chain to `service_account`, in order.
    pub delegates: Vec<String>,
    /// The credential whose access token calls IAM; `None` means the caller's default grant.
    pub credential: Option<String>,
}

impl BlobSigningRequest {
    /// The protobuf request.
    pub fn to_proto(&self) -> SignBlobRequest {
        SignBlobRequest {
            service_account: self.service_account.clone(),
            payload: self.payload.clone(),
            delegates: self.delegates.clone(),
            credential: or_empty(&self.credential),
        }
    }
}

/// The token types of RFC 8693 and Google's Security Token Service that `ExchangeToken`
/// accepts as [`ExchangeRequest::subject_token_type`].
pub mod token_type {
    /// A JWT, from an OIDC provider.
    pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
    /// An OIDC ID token.
    pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
    /// A base64-encoded SAML 2.0 assertion.
    pub const SAML2: &str = "urn:ietf:params:oauth:token-type:saml2";
    /// A serialized signed AWS GetCallerIdentity request, as Google's client libraries build
    /// it.
    pub const AWS4_REQUEST: &str = "urn:ietf:params:aws:token-type:aws4_request";
    /// A Google access token: the subject token of downscoping, and the type of every token
    /// `ExchangeToken` issues.
    pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
}

/// An `ExchangeToken` request: a token the caller holds, exchanged at Google's Security Token
/// Service for a Google access token (see [`exchange_token`](crate::exchange_token)). Two uses:
///
/// - workload or workforce identity federation: an external token (an OIDC ID token or other
///   JWT, a SAML assertion, a signed AWS request) for the identity provider named by
///   `audience`, or by the `external_account` `credential`;
/// - downscoping a Google access token with a Credential Access Boundary: see
///   [`ExchangeRequest::downscoping`].
///
/// `Debug` shows only a fingerprint of the subject token.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeRequest {
    /// The token to exchange. A secret, passed to Google unchanged. Required.
    pub subject_token: Secret,
    /// The type of `subject_token`: one of the URNs in [`token_type`]. Required.
    pub subject_token_type: String,
    /// The identity provider, as Google's full resource name, for example
    /// `//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/POOL/providers/PROVIDER`.
    /// `None`: the `credential`'s; must be `None` for downscoping.
    pub audience: Option<String>,
    /// OAuth 2.0 scopes of the issued token; empty means cloud-platform. Must be empty for
    /// downscoping.
    pub scopes: Vec<String>,
    /// The type of token wanted; `None` means, and the broker accepts only,
    /// [`token_type::ACCESS_TOKEN`].
    pub requested_token_type: Option<String>,
    /// The project a workforce identity federation exchange is billed to (Google's
    /// `userProject`); only for workforce pool audiences.
    pub user_project: Option<String>,
    /// Downscope the issued token with this boundary; required for downscoping. See
    /// [`read_access_boundary`](crate::read_access_boundary) for Google's JSON form.
    pub access_boundary: Option<CredentialAccessBoundary>,
    /// A credential of kind `external_account` that shapes the exchange (its audience, its
    /// workforce client, its service-account impersonation); `None` means a plain exchange.
    pub credential: Option<String>,
}

impl Default for ExchangeRequest {
    /// An empty request (an empty subject token, no type): set the required fields.
    fn default() -> Self {
        Self {
            subject_token: Secret::new(String::new()),
            subject_token_type: String::new(),
            audience: None,
            scopes: Vec::new(),
            requested_token_type: None,
            user_project: None,
            access_boundary: None,
            credential: None,
        }
    }
}

impl ExchangeRequest {
    /// Downscoping: `access_token`, a Google access token (for example the
    /// [`token`](crate::AccessToken::token) of an [`AccessToken`](crate::AccessToken)),
    /// restricted to `boundary`. The downscoped token expires with `access_token`.
    pub fn downscoping(access_token: Secret, boundary: CredentialAccessBoundary) -> Self {
        Self {
            subject_token: access_token,
            subject_token_type: token_type::ACCESS_TOKEN.to_owned(),
            access_boundary: Some(boundary),
            ..Self::default()
        }
    }

    /// The protobuf request. It holds the subject token in the clear: do not log it.
    pub fn to_proto(&self) -> ExchangeTokenRequest {
        let user_project = or_empty(&self.user_project);
        let options = (!user_project.is_empty() || self.access_boundary.is_some()).then(|| {
            ExchangeTokenOptions {
                user_project,
                access_boundary: self.access_boundary.clone(),
            }
        });
        ExchangeTokenRequest {
            subject_token: self.subject_token.expose().to_owned(),
            subject_token_type: self.subject_token_type.clone(),
            audience: or_empty(&self.audience),
            scopes: self.scopes.clone(),
            requested_token_type: or_empty(&self.requested_token_type),
            options,
            credential: or_empty(&self.credential),
        }
    }
}

fn or_empty(value: &Option<String>) -> String {
    value.clone().unwrap_or_default()
}

fn optional_duration(
    field: &str,
    duration: Option<Duration>,
) -> Result<Option<prost_types::Duration>, ClientError> {
    duration.map(|d| proto_duration(field, d)).transpose()
}

fn proto_duration(field: &str, duration: Duration) -> Result<prost_types::Duration, ClientError> {
    if duration.subsec_nanos() != 0 {
        return Err(ClientError::Config(format!(
            "{field} must be whole seconds, got {}",
            humantime::format_duration(duration)
        )));
    }
    let seconds = i64::try_from(duration.as_secs())
        .map_err(|_| ClientError::Config(format!("{field} is too large")))?;
    Ok(prost_types::Duration { seconds, nanos: 0 })
}

/// Splits scope arguments that may each hold several scopes separated by commas or whitespace,
/// dropping empty entries and duplicates (keeping the first occurrence's position).
pub fn split_scopes<I, S>(values: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut scopes: Vec<String> = Vec::new();
    for value in values {
        for scope in value
            .as_ref()
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|scope| !scope.is_empty())
        {
            if !scopes.iter().any(|seen| seen == scope) {
                scopes.push(scope.to_owned());
            }
        }
    }
    scopes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_split_on_commas_and_whitespace_without_duplicates() {
        assert_eq!(
            split_scopes([
                "https://a,https://b",
                " https://c  https://a ",
                "",
                ",,https://d,"
            ]),
            vec!["https://a", "https://b", "https://c", "https://d"]
        );
        assert!(split_scopes(Vec::<String>::new()).is_empty());
    }

    #[test]
    fn requests_need_whole_seconds() {
        let request = TokenRequest {
            scopes: vec!["s".to_owned()],
            credential: Some("prod".to_owned()),
            lifetime: Some(Duration::from_secs(1800)),
            min_remaining_validity: Some(Duration::from_millis(1500)),
            ..TokenRequest::default()
        };
        assert!(matches!(request.to_proto(), Err(ClientError::Config(_))));
        let request = TokenRequest {
            min_remaining_validity: Some(Duration::from_secs(60)),
            ..request
        };
        let proto = request.to_proto().ok();
        assert_eq!(proto.as_ref().map(|p| p.credential.as_str()), Some("prod"));
        assert_eq!(
            proto.and_then(|p| p.lifetime).map(|d| d.seconds),
            Some(1800)
        );

        let impersonation = ImpersonationRequest {
            target_service_account: "t@p.iam.gserviceaccount.com".to_owned(),
            lifetime: Some(Duration::from_millis(3_600_500)),
            ..ImpersonationRequest::default()
        };
        assert!(matches!(
            impersonation.to_proto(),
            Err(ClientError::Config(message)) if message.starts_with("lifetime")
        ));
        let id_token = IdTokenRequest {
            audience: "https://a".to_owned(),
            min_remaining_validity: Some(Duration::from_millis(1)),
            ..IdTokenRequest::default()
        };
        assert!(matches!(id_token.to_proto(), Err(ClientError::Config(_))));
    }

    #[test]
    fn requests_keep_every_field() {
        let proto = ImpersonationRequest {
            target_service_account: "t@p.iam.gserviceaccount.com".to_owned(),
            delegates: vec!["d2@p".to_owned(), "d1@p".to_owned()],
            scopes: vec!["s".to_owned()],
            lifetime: Some(Duration::from_secs(7200)),
            min_remaining_validity: Some(Duration::from_secs(60)),
            credential: Some("base".to_owned()),
        }
        .to_proto()
        .ok();
        assert_eq!(
            proto,
            Some(ImpersonateServiceAccountRequest {
                target_service_account: "t@p.iam.gserviceaccount.com".to_owned(),
                delegates: vec!["d2@p".to_owned(), "d1@p".to_owned()],
                scopes: vec!["s".to_owned()],
                lifetime: Some(prost_types::Duration {
                    seconds: 7200,
                    nanos: 0
                }),
                credential: "base".to_owned(),
                min_remaining_validity: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0
                }),
            })
        );

        let proto = BlobSigningRequest {
            service_account: "sa@p".to_owned(),
            payload: vec![0, 1, 2],
            delegates: vec![],
            credential: None,
        }
        .to_proto();
        assert_eq!(proto.payload, vec![0, 1, 2]);
        assert_eq!(proto.credential, "");

        let proto = JwtSigningRequest {
            service_account: "sa@p".to_owned(),
            payload: "{}".to_owned(),
            delegates: vec!["d@p".to_owned()],
            credential: Some("c".to_owned()),
        }
        .to_proto();
        assert_eq!(
            (
                proto.payload.as_str(),
                proto.delegates.len(),
                proto.credential.as_str()
            ),
            ("{}", 1, "c")
        );
    }

    fn boundary() -> CredentialAccessBoundary {
        CredentialAccessBoundary {
            access_boundary_rules: vec![broker_proto::tokenbroker::v1::AccessBoundaryRule {
                available_resource: "//storage.googleapis.com/projects/_/buckets/b".to_owned(),
                available_permissions: vec!["inRole:roles/storage.objectViewer".to_owned()],
                availability_condition: None,
            }],
        }
    }

    #[test]
    fn exchange_requests_keep_every_field_and_hide_the_subject_token() {
        let request = ExchangeRequest {
            subject_token: Secret::new("eyJ.subject-secret.sig"),
            subject_token_type: token_type::JWT.to_owned(),
            audience: Some(
                "//iam.googleapis.com/locations/global/workforcePools/p/providers/o".to_owned(),
            ),
            scopes: vec!["https://s".to_owned()],
            requested_token_type: Some(token_type::ACCESS_TOKEN.to_owned()),
            user_project: Some("my-project".to_owned()),
            access_boundary: Some(boundary()),
            credential: Some("federation".to_owned()),
        };
        let debug = format!("{request:?}");
        assert!(!debug.contains("subject-secret"), "{debug}");
        assert!(debug.contains("sha256:"), "{debug}");
        assert_eq!(
            request.to_proto(),
            ExchangeTokenRequest {
                subject_token: "eyJ.subject-secret.sig".to_owned(),
                subject_token_type: "urn:ietf:params:oauth:token-type:jwt".to_owned(),
                audience: "//iam.googleapis.com/locations/global/workforcePools/p/providers/o"
                    .to_owned(),
                scopes: vec!["https://s".to_owned()],
                requested_token_type: "urn:ietf:params:oauth:token-type:access_token".to_owned(),
                options: Some(ExchangeTokenOptions {
                    user_project: "my-project".to_owned(),
                    access_boundary: Some(boundary()),
                }),
                credential: "federation".to_owned(),
            }
        );

        // No options at all unless one is set.
        let proto = ExchangeRequest {
            subject_token: Secret::new("t"),
            subject_token_type: token_type::SAML2.to_owned(),
            user_project: Some(String::new()),
            ..ExchangeRequest::default()
        }
        .to_proto();
        assert_eq!(proto.options, None);
        assert_eq!(
            (proto.audience.as_str(), proto.credential.as_str()),
            ("", "")
        );
        let proto = ExchangeRequest {
            user_project: Some("p".to_owned()),
            ..ExchangeRequest::default()
        }
        .to_proto();
        assert_eq!(
            proto.options.map(|o| (o.user_project, o.access_boundary)),
            Some(("p".to_owned(), None))
        );
    }

    #[test]
    fn downscoping_is_an_access_token_exchange_with_a_boundary() {
        let proto = ExchangeRequest::downscoping(Secret::new("ya29.t"), boundary()).to_proto();
        assert_eq!(proto.subject_token, "ya29.t");
        assert_eq!(
            proto.subject_token_type,
            "urn:ietf:params:oauth:token-type:access_token"
        );
        assert_eq!(
            proto.options.and_then(|o| o.access_boundary),
            Some(boundary())
        );
        assert!(proto.audience.is_empty() && proto.scopes.is_empty());
        assert!(proto.requested_token_type.is_empty() && proto.credential.is_empty());
    }

    #[test]
    fn id_token_delegates_need_a_target() {
        let mut request = IdTokenRequest {
            audience: "https://a".to_owned(),
            include_email: true,
            delegates: vec!["d@p".to_owned()],
            ..IdTokenRequest::default()
        };
        assert!(matches!(request.to_proto(), Err(ClientError::Config(_))));
        request.target_service_account = Some(String::new());
        assert!(matches!(request.to_proto(), Err(ClientError::Config(_))));
        request.target_service_account = Some("t@p".to_owned());
        let proto = request.to_proto().ok();
        assert_eq!(
            proto.map(|p| (
                p.audience,
                p.include_email,
                p.target_service_account,
                p.delegates
            )),
            Some((
                "https://a".to_owned(),
                true,
                "t@p".to_owned(),
                vec!["d@p".to_owned()]
            ))
        );
    }
}
