//! Turning request fields into the broker's normalized types; every failure names its field.

use std::time::Duration;

use broker_core::{
    AccessBoundary, AccessBoundaryRule, AvailabilityCondition, CredentialName, ScopeSet,
};
use broker_proto::tokenbroker::v1 as pb;

use crate::status::{MAX_TOKEN_TYPE_SHOWN, RpcError};

/// The scope a request without scopes gets.
pub(crate) const DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The longest email address accepted.
const MAX_EMAIL_LEN: usize = 254;

/// INVALID_ARGUMENT with `reason` for `field`.
pub(crate) fn invalid(
    reason: &'static str,
    field: impl Into<String>,
    description: impl Into<String>,
) -> RpcError {
    RpcError::InvalidField {
        reason,
        field: field.into(),
        description: description.into(),
        max_seconds: None,
    }
}

/// `scopes`: validated, sorted, de-duplicated; empty means cloud-platform.
pub(crate) fn scopes(scopes: &[String]) -> Result<ScopeSet, RpcError> {
    let parsed = if scopes.is_empty() {
        ScopeSet::parse([DEFAULT_SCOPE])
    } else {
        ScopeSet::parse(scopes)
    };
    parsed.map_err(|e| invalid("INVALID_SCOPE", e.field(), e.to_string()))
}

/// `credential`: empty means the caller's default grant.
pub(crate) fn credential(name: &str) -> Result<Option<CredentialName>, RpcError> {
    if name.is_empty() {
        return Ok(None);
    }
    CredentialName::new(name)
        .map(Some)
        .map_err(|e| invalid("INVALID_FIELD", "credential", e.to_string()))
}

/// A Google Workspace user for domain-wide delegation: an email address, lowercased (Google
/// treats addresses case-insensitively, and one user must make one cache key and one audit
/// name). Empty means unset.
pub(crate) fn subject(field: &str, value: &str) -> Result<Option<String>, RpcError> {
    Ok(email(field, value)?.map(|address| address.to_ascii_lowercase()))
}

/// The most delegates a chain may have.
const MAX_DELEGATES: usize = 10;
/// The longest ID-token audience.
const MAX_AUDIENCE_LEN: usize = 2048;
/// The largest SignJwt payload and SignBlob payload, bytes.
pub(crate) const MAX_PAYLOAD: usize = 64 * 1024;
/// How far ahead a signed JWT's `exp` may be (Google's limit).
const MAX_JWT_HORIZON: i64 = 12 * 3600;

/// A service account by email (a target, a signer): lowercased, since Google treats emails
/// case-insensitively; `required` says whether empty is an error.
pub(crate) fn service_account(
    field: &str,
    value: &str,
    required: bool,
) -> Result<Option<String>, RpcError> {
    if value.is_empty() && required {
        return Err(invalid(
            "INVALID_FIELD",
            field,
            "is required: a service account's email address",
        ));
    }
    // Only the characters of service-account emails (Google's and user-created): no resource
    // names (`projects/-/serviceAccounts/...`), unique IDs or other addresses.
    let plain = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'.' | b'-' | b'_' | b'+'));
    if !plain {
        return Err(invalid(
            "INVALID_FIELD",
            field,
            format!(
                "must be a service account's email address of at most {MAX_EMAIL_LEN} bytes, such as deployer@my-project.iam.gserviceaccount.com (not a resource name or a unique ID)"
            ),
        ));
    }
    subject(field, value)
}

/// A delegation chain: at most 10 service-account emails, in order, no duplicates,
/// lowercased. Only allowed with a target (`has_target`).
pub(crate) fn delegates(values: &[String], has_target: bool) -> Result<Vec<String>, RpcError> {
    if values.is_empty() {
        return Ok(Vec::new());
    }
    if !has_target {
        return Err(invalid(
            "INVALID_FIELD",
            "delegates",
            "a delegation chain needs target_service_account",
        ));
    }
    if values.len() > MAX_DELEGATES {
        return Err(invalid(
            "INVALID_FIELD",
            "delegates",
            format!("at most {MAX_DELEGATES} delegates"),
        ));
    }
    let mut chain: Vec<String> = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let field = format!("delegates[{i}]");
        let email = service_account(&field, value, true)?.unwrap_or_default();
        if chain.contains(&email) {
            return Err(invalid(
                "INVALID_FIELD",
                field,
                "appears twice in the chain",
            ));
        }
        chain.push(email);
    }
    Ok(chain)
}

/// An ID token's audience: 1 to 2048 bytes of printable ASCII without spaces.
pub(crate) fn audience(value: &str) -> Result<String, RpcError> {
    let valid = (1..=MAX_AUDIENCE_LEN).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        Ok(value.to_owned())
    } else {
        Err(invalid(
            "INVALID_FIELD",
            "audience",
            format!(
                "must be 1 to {MAX_AUDIENCE_LEN} bytes of printable ASCII without spaces, such as https://my-service-abc123-uc.a.run.app"
            ),
        ))
    }
}

/// The claims of a SignJwt payload the broker looks at: its audiences and its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JwtClaims {
    /// The `aud` values (a string or an array of strings in the payload).
    pub(crate) audiences: Vec<String>,
    /// `exp` as seconds from `now`, when present.
    pub(crate) expires_in: Option<i64>,
}

/// A SignJwt payload: 2 to 65536 bytes of a JSON object; an `exp` claim, if any, an integer
/// not in the past and at most 12 hours ahead of `now` (seconds since the epoch), as Google
/// requires. The payload itself is passed to Google unchanged.
pub(crate) fn jwt_payload(payload: &str, now: i64) -> Result<JwtClaims, RpcError> {
    let bad = |why: &str| invalid("INVALID_FIELD", "payload", why);
    if !(2..=MAX_PAYLOAD).contains(&payload.len()) {
        return Err(bad("must be 2 to 65536 bytes of JSON"));
    }
    let value: serde_json::Value =
        serde_json::from_str(payload).map_err(|_| bad("must be a JSON object of claims"))?;
    let Some(claims) = value.as_object() else {
        return Err(bad("must be a JSON object of claims"));
    };
    // A claim given twice means what its reader decides (the first value, or the last): the
    // grant's checks and Google's verifiers could read different `aud`s or `exp`s.
    serde_json::from_str::<DistinctClaims>(payload).map_err(|e| {
        let message = e.to_string();
        bad(message.split(" at line ").next().unwrap_or(&message))
    })?;
    let audiences = match claims.get("aud") {
        None => Vec::new(),
        Some(serde_json::Value::String(aud)) => vec![aud.clone()],
        Some(serde_json::Value::Array(values)) => values
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("aud must be a string or an array of strings"))?,
        Some(_) => return Err(bad("aud must be a string or an array of strings")),
    };
    let expires_in = match claims.get("exp") {
        None => None,
        Some(exp) => {
            let exp = exp
                .as_i64()
                .ok_or_else(|| bad("exp must be an integer number of seconds since the epoch"))?;
            let left = exp.saturating_sub(now);
            if left < 0 {
                return Err(bad("exp is in the past"));
            }
            if left > MAX_JWT_HORIZON {
                return Err(bad("exp is more than 12 hours ahead"));
            }
            Some(left)
        }
    };
    Ok(JwtClaims {
        audiences,
        expires_in,
    })
}

pub(crate) use broker_backends::ACCESS_TOKEN_TYPE;
/// The subject-token types federation accepts (the caller's external credential).
const FEDERATION_TOKEN_TYPES: [&str; 4] = [
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:saml2",
    "urn:ietf:params:aws:token-type:aws4_request",
];
/// X.509 federation: authenticated by the TLS connection to STS, which the broker cannot
/// open with the caller's key.
const MTLS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:mtls";
/// What client-side Credential Access Boundaries ask for.
const INTERMEDIATE_TOKEN_TYPE: &str =
    "urn:ietf:params:oauth:token-type:access_boundary_intermediate_token";
/// The longest subject token.
const MAX_SUBJECT_TOKEN: usize = 64 * 1024;
/// The longest provider audience.
const MAX_PROVIDER_AUDIENCE: usize = 512;
/// The longest workforce `userProject`.
const MAX_USER_PROJECT: usize = 32;

/// What an ExchangeToken request exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exchange {
    /// Federation: an external credential of this type, for a provider.
    Federation(&'static str),
    /// Downscoping a Google access token.
    Downscoping,
}

impl Exchange {
    /// The subject-token type Google is sent.
    pub(crate) fn token_type(self) -> &'static str {
        match self {
            Self::Federation(token_type) => token_type,
            Self::Downscoping => ACCESS_TOKEN_TYPE,
        }
    }
}

/// `subject_token`: 1 to 65536 bytes.
pub(crate) fn subject_token(value: &str) -> Result<(), RpcError> {
    if (1..=MAX_SUBJECT_TOKEN).contains(&value.len()) {
        Ok(())
    } else {
        Err(invalid(
            "INVALID_FIELD",
            "subject_token",
            "must be 1 to 65536 bytes",
        ))
    }
}

/// `subject_token_type`: one of the federation types, or a Google access token to downscope.
pub(crate) fn subject_token_type(value: &str) -> Result<Exchange, RpcError> {
    if value == ACCESS_TOKEN_TYPE {
        return Ok(Exchange::Downscoping);
    }
    if let Some(known) = FEDERATION_TOKEN_TYPES.iter().find(|t| **t == value) {
        return Ok(Exchange::Federation(known));
    }
    let why = if value == MTLS_TOKEN_TYPE {
        "X.509 federation is authenticated by the TLS connection to Google's Security Token Service, which the broker cannot open with the caller's private key; configure an external_account credential with a certificate source instead".to_owned()
    } else {
        format!(
            "must be one of {}, or {ACCESS_TOKEN_TYPE} to downscope",
            FEDERATION_TOKEN_TYPES.join(", ")
        )
    };
    Err(unsupported_token_type("subject_token_type", value, why))
}

/// INVALID_ARGUMENT (UNSUPPORTED_TOKEN_TYPE) for the token type `value` of `field`, which
/// the error repeats (cut, escaped: it is the caller's text).
fn unsupported_token_type(
    field: &'static str,
    value: &str,
    description: impl Into<String>,
) -> RpcError {
    RpcError::UnsupportedTokenType {
        field,
        token_type: value
            .chars()
            .take(MAX_TOKEN_TYPE_SHOWN)
            .flat_map(char::escape_default)
            .collect(),
        description: description.into(),
    }
}

/// `requested_token_type`: empty or an access token. The intermediate token of client-side
/// Credential Access Boundaries is UNIMPLEMENTED.
pub(crate) fn requested_token_type(value: &str) -> Result<&'static str, RpcError> {
    match value {
        "" | ACCESS_TOKEN_TYPE => Ok(ACCESS_TOKEN_TYPE),
        INTERMEDIATE_TOKEN_TYPE => Err(RpcError::Unimplemented(
            "requested_token_type=urn:ietf:params:oauth:token-type:access_boundary_intermediate_token",
        )),
        _ => Err(unsupported_token_type(
            "requested_token_type",
            value,
            format!("must be empty or {ACCESS_TOKEN_TYPE}"),
        )),
    }
}

/// A provider `audience`: the full resource name of a workload or workforce identity pool
/// provider; empty means unset.
pub(crate) fn provider_audience(value: &str) -> Result<Option<String>, RpcError> {
    if value.is_empty() {
        return Ok(None);
    }
    let valid = value.len() <= MAX_PROVIDER_AUDIENCE && (is_workload(value) || is_workforce(value));
    if valid {
        Ok(Some(value.to_owned()))
    } else {
        Err(invalid(
            "INVALID_FIELD",
            "audience",
            format!(
                "must be the full resource name of an identity pool provider, at most {MAX_PROVIDER_AUDIENCE} bytes: //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER, or //iam.googleapis.com/locations/global/workforcePools/POOL/providers/PROVIDER"
            ),
        ))
    }
}

/// Whether a provider audience is exactly
/// `//iam.googleapis.com/projects/NUMBER/locations/LOCATION/workloadIdentityPools/POOL/providers/PROVIDER`,
/// each part an identifier (so that a grant's `audience_prefixes` mean what they say: no
/// `..`, escapes, queries or extra segments).
fn is_workload(audience: &str) -> bool {
    let Some(rest) = audience.strip_prefix("//iam.googleapis.com/") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    matches!(
        parts.as_slice(),
        ["projects", number, "locations", location, "workloadIdentityPools", pool, "providers", provider]
            if !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
                && is_identifier(location)
                && is_identifier(pool)
                && is_identifier(provider)
    )
}

/// Whether a provider audience is exactly
/// `//iam.googleapis.com/locations/LOCATION/workforcePools/POOL/providers/PROVIDER`.
pub(crate) fn is_workforce(audience: &str) -> bool {
    let Some(rest) = audience.strip_prefix("//iam.googleapis.com/") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    matches!(
        parts.as_slice(),
        ["locations", location, "workforcePools", pool, "providers", provider]
            if is_identifier(location) && is_identifier(pool) && is_identifier(provider)
    )
}

/// A location, pool or provider ID: 1 to 63 lowercase letters, digits and hyphens.
fn is_identifier(value: &str) -> bool {
    (1..=63).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `options.user_project`: a project ID or number, for workforce audiences only.
pub(crate) fn user_project(value: &str, workforce: bool) -> Result<Option<String>, RpcError> {
    if value.is_empty() {
        return Ok(None);
    }
    let field = "options.user_project";
    if !workforce {
        return Err(invalid(
            "INVALID_FIELD",
            field,
            "only for workforce identity federation (an audience of a workforce pool)",
        ));
    }
    let alphanumeric = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let valid = value.len() <= MAX_USER_PROJECT
        && value.bytes().all(|b| alphanumeric(b) || b == b'-')
        && value.bytes().next().is_some_and(alphanumeric)
        && value.bytes().last().is_some_and(alphanumeric);
    if valid {
        Ok(Some(value.to_owned()))
    } else {
        Err(invalid(
            "INVALID_FIELD",
            field,
            format!("must be a project ID or number of at most {MAX_USER_PROJECT} characters"),
        ))
    }
}

/// A JSON object whose top-level keys are all different.
struct DistinctClaims;

impl<'de> serde::Deserialize<'de> for DistinctClaims {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = DistinctClaims;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of claims")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<DistinctClaims, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    if seen.contains(&key) {
                        let shown: String = key.chars().take(64).collect();
                        return Err(serde::de::Error::custom(format!(
                            "the claim {shown:?} appears twice"
                        )));
                    }
                    seen.insert(key);
                }
                Ok(DistinctClaims)
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

/// A SignBlob payload: 1 to 65536 bytes.
pub(crate) fn blob(payload: &[u8]) -> Result<(), RpcError> {
    if (1..=MAX_PAYLOAD).contains(&payload.len()) {
        Ok(())
    } else {
        Err(invalid(
            "INVALID_FIELD",
            "payload",
            "must be 1 to 65536 bytes",
        ))
    }
}

/// The longest `min_remaining_validity`.
const MAX_MIN_REMAINING: Duration = Duration::from_secs(1800);
/// The default `min_remaining_validity`: Python and Java clients treat 225 s or less as stale.
const DEFAULT_MIN_REMAINING: Duration = Duration::from_secs(300);

/// `min_remaining_validity`: whole seconds up to 30 minutes; 5 minutes when unset.
pub(crate) fn min_remaining(value: Option<&prost_types::Duration>) -> Result<Duration, RpcError> {
    Ok(duration(
        "min_remaining_validity",
        value,
        Duration::ZERO,
        MAX_MIN_REMAINING,
    )?
    .unwrap_or(DEFAULT_MIN_REMAINING))
}

/// A requested `lifetime` must be longer than the `min_remaining_validity` it is asked with
/// (else no token could ever satisfy the request).
pub(crate) fn lifetime_above(
    lifetime: Option<Duration>,
    min_remaining: Duration,
    max: Duration,
) -> Result<(), RpcError> {
    match lifetime {
        Some(lifetime) if lifetime <= min_remaining => Err(RpcError::InvalidField {
            reason: "INVALID_LIFETIME",
            field: "lifetime".to_owned(),
            description: "must be longer than min_remaining_validity".to_owned(),
            max_seconds: Some(max.as_secs()),
        }),
        _ => Ok(()),
    }
}

/// An email address field (`subject`, service accounts): empty means unset.
pub(crate) fn email(field: &str, value: &str) -> Result<Option<String>, RpcError> {
    if value.is_empty() {
        return Ok(None);
    }
    let valid = value.len() <= MAX_EMAIL_LEN
        && matches!(value.split_once('@'), Some((local, domain))
            if !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !value.contains(|c: char| c.is_whitespace() || c.is_control()));
    if valid {
        Ok(Some(value.to_owned()))
    } else {
        Err(invalid(
            "INVALID_FIELD",
            field,
            format!("must be an email address of at most {MAX_EMAIL_LEN} bytes"),
        ))
    }
}

/// A whole-second duration within `max`, or unset.
pub(crate) fn duration(
    field: &str,
    value: Option<&prost_types::Duration>,
    min: Duration,
    max: Duration,
) -> Result<Option<Duration>, RpcError> {
    let Some(value) = value else { return Ok(None) };
    let error = |description: String| RpcError::InvalidField {
        reason: "INVALID_LIFETIME",
        field: field.to_owned(),
        description,
        max_seconds: Some(max.as_secs()),
    };
    if value.nanos != 0 || value.seconds < 0 {
        return Err(error("must be non-negative whole seconds".to_owned()));
    }
    let seconds = Duration::from_secs(value.seconds.unsigned_abs());
    if seconds < min || seconds > max {
        return Err(error(format!(
            "must be from {} s to {} s",
            min.as_secs(),
            max.as_secs()
        )));
    }
    Ok(Some(seconds))
}

/// `access_boundary`, checked against Google's limits.
pub(crate) fn access_boundary(
    value: Option<&pb::CredentialAccessBoundary>,
) -> Result<Option<AccessBoundary>, RpcError> {
    let Some(value) = value else { return Ok(None) };
    let boundary = AccessBoundary {
        rules: value
            .access_boundary_rules
            .iter()
            .map(|rule| AccessBoundaryRule {
                available_resource: rule.available_resource.clone(),
                available_permissions: rule.available_permissions.clone(),
                availability_condition: rule.availability_condition.as_ref().map(|c| {
                    AvailabilityCondition {
                        expression: c.expression.clone(),
                        title: Some(c.title.clone()).filter(|t| !t.is_empty()),
                        description: Some(c.description.clone()).filter(|d| !d.is_empty()),
                    }
                }),
            })
            .collect(),
    };
    boundary.validate().map_err(|e| {
        let field = if e.field.is_empty() {
            "access_boundary".to_owned()
        } else {
            format!(
                "access_boundary.{}",
                e.field.replacen("rules", "access_boundary_rules", 1)
            )
        };
        invalid("INVALID_ACCESS_BOUNDARY", field, e.reason)
    })?;
    Ok(Some(boundary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(error: RpcError) -> (String, &'static str) {
        match error {
            RpcError::InvalidField { field, reason, .. } => (field, reason),
            RpcError::UnsupportedTokenType { field, .. } => {
                (field.to_owned(), "UNSUPPORTED_TOKEN_TYPE")
            }
            other => panic!("not a field error: {other}"),
        }
    }

    #[test]
    fn empty_scopes_mean_cloud_platform_and_bad_ones_name_the_index() {
        assert_eq!(scopes(&[]).expect("default").joined(), DEFAULT_SCOPE);
        let bad = vec![DEFAULT_SCOPE.to_owned(), "cloud-platform".to_owned()];
        assert_eq!(
            field(scopes(&bad).expect_err("bad")),
            ("scopes[1]".to_owned(), "INVALID_SCOPE")
        );
    }

    #[test]
    fn emails_credentials_and_durations() {
        assert_eq!(email("subject", "").expect("empty"), None);
        assert_eq!(
            subject("subject", "Alice@Example.COM").expect("valid"),
            Some("alice@example.com".to_owned())
        );
        assert!(
            email("subject", "alice@example.com")
                .expect("valid")
                .is_some()
        );
        for bad in [
            "alice",
            "@example.com",
            "alice@localhost",
            "a b@example.com",
            "alice@example.com.",
        ] {
            assert_eq!(field(email("subject", bad).expect_err(bad)).0, "subject");
        }
        assert_eq!(
            field(credential("Bad_Name").expect_err("bad")).0,
            "credential"
        );
        let max = Duration::from_secs(43_200);
        let min = Duration::from_secs(60);
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(
            duration("lifetime", Some(&d(600, 0)), min, max).expect("ok"),
            Some(Duration::from_secs(600))
        );
        for bad in [d(30, 0), d(43_201, 0), d(600, 5), d(-1, 0)] {
            let error = duration("lifetime", Some(&bad), min, max).expect_err("bad");
            assert!(matches!(
                error,
                RpcError::InvalidField {
                    reason: "INVALID_LIFETIME",
                    max_seconds: Some(43_200),
                    ..
                }
            ));
        }
    }

    #[test]
    fn service_accounts_chains_audiences_and_payloads() {
        assert_eq!(
            service_account(
                "target_service_account",
                "Reader@P.iam.gserviceaccount.com",
                true
            )
            .expect("valid"),
            Some("reader@p.iam.gserviceaccount.com".to_owned())
        );
        assert_eq!(
            field(service_account("service_account", "", true).expect_err("required")).0,
            "service_account"
        );
        for bad in [
            "projects/-/serviceAccounts/reader@p.iam.gserviceaccount.com",
            "a/b@p.iam.gserviceaccount.com",
            "reader@p@iam.gserviceaccount.com",
            "123456789012345678901",
        ] {
            assert_eq!(
                field(service_account("target_service_account", bad, true).expect_err(bad)).0,
                "target_service_account"
            );
        }
        let sa = |n: usize| format!("sa{n}@p.iam.gserviceaccount.com");
        assert_eq!(
            delegates(&[sa(1), sa(2)], true).expect("valid"),
            vec![sa(1), sa(2)]
        );
        assert_eq!(
            field(delegates(&[sa(1)], false).expect_err("no target")).0,
            "delegates"
        );
        assert_eq!(
            field(delegates(&[sa(1), sa(1).to_uppercase()], true).expect_err("twice")).0,
            "delegates[1]"
        );
        let eleven: Vec<String> = (0..11).map(sa).collect();
        assert_eq!(
            field(delegates(&eleven, true).expect_err("too long")).0,
            "delegates"
        );
        assert!(audience("https://hello-abc-uc.a.run.app").is_ok());
        for bad in ["", "has space", &"a".repeat(2049), "caf\u{e9}"] {
            assert_eq!(field(audience(bad).expect_err(bad)).0, "audience");
        }
        let now = 1_800_000_000;
        let claims = jwt_payload(r#"{"aud":["a","b"],"exp":1800000600}"#, now).expect("valid");
        assert_eq!(claims.audiences, ["a", "b"]);
        assert_eq!(claims.expires_in, Some(600));
        assert_eq!(
            jwt_payload(r#"{"sub":"x"}"#, now)
                .expect("no exp")
                .expires_in,
            None
        );
        for bad in [
            "[]",
            "{",
            "1",
            r#"{"exp":"soon"}"#,
            r#"{"exp":1.5e9}"#,
            r#"{"exp":1799999999}"#,
            r#"{"exp":1800043201}"#,
            r#"{"aud":7}"#,
            r#"{"aud":"https://evil.example.com","aud":"https://api.example.com"}"#,
            r#"{"exp":1800039600,"sub":"x","exp":1800000600}"#,
        ] {
            assert_eq!(
                field(jwt_payload(bad, now).expect_err(bad)).0,
                "payload",
                "{bad}"
            );
        }
        assert!(blob(b"x").is_ok());
        assert!(blob(b"").is_err() && blob(&vec![0; MAX_PAYLOAD + 1]).is_err());
    }

    #[test]
    fn exchanges_providers_and_token_types() {
        let workload = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/oidc";
        let workforce = "//iam.googleapis.com/locations/global/workforcePools/staff/providers/okta";
        assert_eq!(
            provider_audience(workload).expect("workload"),
            Some(workload.to_owned())
        );
        assert!(is_workforce(workforce) && !is_workforce(workload));
        assert_eq!(provider_audience("").expect("unset"), None);
        for bad in [
            "https://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/o",
            "//iam.googleapis.com/projects//locations/global/workloadIdentityPools/p/providers/o",
            "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/",
            "//iam.googleapis.com/locations/global/workforcePools/staff",
            "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci/providers/x/../../prod/providers/y",
            "//iam.googleapis.com/projects/123/locations//workloadIdentityPools/p/providers/o",
            "//iam.googleapis.com/projects/abc/locations/global/workloadIdentityPools/p/providers/o",
            "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/%2e%2e",
            "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/o?x=1",
            "//iam.googleapis.com/locations/global/workforcePools/staff/providers/okta/",
            &format!("{workload}{}", "x".repeat(512)),
        ] {
            assert_eq!(field(provider_audience(bad).expect_err(bad)).0, "audience");
        }
        assert_eq!(
            subject_token_type("urn:ietf:params:aws:token-type:aws4_request").expect("aws"),
            Exchange::Federation("urn:ietf:params:aws:token-type:aws4_request")
        );
        assert_eq!(
            subject_token_type(ACCESS_TOKEN_TYPE).expect("downscoping"),
            Exchange::Downscoping
        );
        for bad in [MTLS_TOKEN_TYPE, "jwt", ""] {
            assert_eq!(
                field(subject_token_type(bad).expect_err(bad)),
                ("subject_token_type".to_owned(), "UNSUPPORTED_TOKEN_TYPE")
            );
        }
        assert_eq!(
            requested_token_type("").expect("default"),
            ACCESS_TOKEN_TYPE
        );
        assert!(matches!(
            requested_token_type(INTERMEDIATE_TOKEN_TYPE),
            Err(RpcError::Unimplemented(_))
        ));
        assert!(subject_token("").is_err() && subject_token(&"a".repeat(65_537)).is_err());
        assert_eq!(
            user_project("my-project", true).expect("workforce"),
            Some("my-project".to_owned())
        );
        assert!(user_project("my-project", false).is_err());
        assert!(user_project("My_Project", true).is_err());
        assert!(user_project("-", true).is_err() && user_project("p-", true).is_err());
    }

    #[test]
    fn boundary_errors_use_proto_field_names() {
        let boundary = pb::CredentialAccessBoundary {
            access_boundary_rules: vec![pb::AccessBoundaryRule {
                available_resource: "//storage.googleapis.com/projects/_/buckets/b".into(),
                available_permissions: vec!["roles/storage.objectViewer".into()],
                availability_condition: None,
            }],
        };
        assert_eq!(
            field(access_boundary(Some(&boundary)).expect_err("bad")),
            (
                "access_boundary.access_boundary_rules[0].available_permissions[0]".to_owned(),
                "INVALID_ACCESS_BOUNDARY"
            )
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn any_duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
        proptest::option::of(
            (any::<i64>(), any::<i32>())
                .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
        )
    }

    fn any_boundary() -> impl Strategy<Value = Option<pb::CredentialAccessBoundary>> {
        let rule = (
            "\\PC{0,40}",
            proptest::collection::vec("\\PC{0,30}", 0..4),
            proptest::option::of(("\\PC{0,60}", "\\PC{0,10}", "\\PC{0,10}")),
        )
            .prop_map(
                |(resource, permissions, condition)| pb::AccessBoundaryRule {
                    available_resource: resource,
                    available_permissions: permissions,
                    availability_condition: condition.map(|(expression, title, description)| {
                        pb::AvailabilityCondition {
                            expression,
                            title,
                            description,
                        }
                    }),
                },
            );
        proptest::option::of(proptest::collection::vec(rule, 0..12).prop_map(|rules| {
            pb::CredentialAccessBoundary {
                access_boundary_rules: rules,
            }
        }))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a client sends, validation answers with a value or an error naming a
        /// field; it never panics.
        #[test]
        fn arbitrary_requests_are_validated_without_panic(
            raw_scopes in proptest::collection::vec("\\PC{0,300}|https://www\\.googleapis\\.com/auth/[a-z._-]{0,20}", 0..60),
            raw_credential in "\\PC{0,80}|[a-z][a-z0-9-]{0,70}",
            raw_subject in "\\PC{0,300}|[a-zA-Z0-9._%+-]{1,20}@[a-zA-Z0-9.-]{1,20}",
            lifetime in any_duration(),
            min_remaining in any_duration(),
            raw_boundary in any_boundary(),
        ) {
            let field_of = |error: RpcError| match error {
                RpcError::InvalidField { field, .. } => Ok(field),
                other => Err(TestCaseError::fail(format!("not a field error: {other}"))),
            };
            match scopes(&raw_scopes) {
                Ok(set) => prop_assert!(!set.is_empty() && set.len() <= broker_core::MAX_SCOPES),
                Err(error) => prop_assert!(field_of(error)?.starts_with("scopes")),
            }
            if let Err(error) = credential(&raw_credential) {
                prop_assert_eq!(field_of(error)?, "credential");
            }
            match subject("subject", &raw_subject) {
                Ok(Some(address)) => prop_assert_eq!(address.to_ascii_lowercase(), address),
                Ok(None) => prop_assert!(raw_subject.is_empty()),
                Err(error) => prop_assert_eq!(field_of(error)?, "subject"),
            }
            for (field, value) in [("lifetime", lifetime), ("min_remaining_validity", min_remaining)] {
                let max = Duration::from_secs(43_200);
                match duration(field, value.as_ref(), Duration::from_secs(60), max) {
                    Ok(Some(d)) => prop_assert!(d <= max && d >= Duration::from_secs(60)),
                    Ok(None) => prop_assert!(value.is_none()),
                    Err(error) => prop_assert_eq!(field_of(error)?, field),
                }
            }
            if let Err(error) = access_boundary(raw_boundary.as_ref()) {
                prop_assert!(field_of(error)?.starts_with("access_boundary"));
            }
        }
    }
}
