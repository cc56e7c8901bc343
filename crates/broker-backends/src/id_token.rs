//! ID tokens as Google hands them out: a JWT whose `exp` claim, never an `expires_in`, says
//! when it expires (google-protocols.md §1.4, §8.1). The broker does not verify the signature
//! of a token it just received from Google over TLS; it only reads the claims it needs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use broker_core::{ScopeSet, Secret, SourceError, Token};
use serde_json::{Map, Value};

/// base64url, with or without padding (JWTs have none; some encoders add it).
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The claims of a compact JWS (`header.payload.signature`), unverified; `None` unless it has
/// three parts and its payload is a JSON object.
pub(crate) fn claims(jwt: &str) -> Option<Map<String, Value>> {
    let mut parts = jwt.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = BASE64URL.decode(payload).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(claims) => Some(claims),
        _ => None,
    }
}

/// `jwt` as a [`Token`] for `principal`: `expires_at` is its `exp` claim, which must be a
/// positive integer; its scopes are empty.
///
/// # Errors
///
/// [`SourceError::Malformed`] naming `upstream`, in words that never quote the token, when it
/// is no JWT or has no integer `exp`. `what` names the endpoint that answered it.
pub(crate) fn token(
    jwt: Secret,
    principal: Arc<str>,
    upstream: &str,
    what: &str,
) -> Result<Token, SourceError> {
    let expires_at = claims(jwt.expose())
        .and_then(|claims| claims.get("exp").and_then(Value::as_u64))
        .filter(|exp| *exp > 0)
        .and_then(|exp| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp)))
        .ok_or_else(|| SourceError::Malformed {
            upstream: upstream.to_owned(),
            message: format!(
                "{what} answered an ID token that is not a JWT with an integer exp claim"
            ),
        })?;
    tracing::debug!(
        %principal,
        token = %jwt.fingerprint(),
        "ID token received"
    );
    Ok(Token {
        secret: jwt,
        expires_at,
        scopes: ScopeSet::empty(),
        principal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &Value) -> String {
        let encode = |v: &Value| BASE64URL.encode(v.to_string());
        format!(
            "{}.{}.c2ln",
            encode(&serde_json::json!({"alg": "RS256"})),
            encode(claims)
        )
    }

    #[test]
    fn exp_is_the_expiry_and_must_be_an_integer() {
        let good = jwt(&serde_json::json!({"exp": 1_767_225_600, "aud": "x"}));
        let id = token(Secret::new(good), "sa@p".into(), "h", "test").expect("valid");
        assert_eq!(
            id.expires_at,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
        );
        assert!(id.scopes.is_empty());
        assert_eq!(&*id.principal, "sa@p");

        for bad in [
            jwt(&serde_json::json!({"exp": "1767225600"})),
            jwt(&serde_json::json!({"exp": 1.5})),
            jwt(&serde_json::json!({"exp": -5})),
            jwt(&serde_json::json!({"exp": 0})),
            jwt(&serde_json::json!({"exp": u64::MAX})),
            jwt(&serde_json::json!({"aud": "x"})),
            jwt(&serde_json::json!(["exp"])),
            "eyJhbGciOiJSUzI1NiJ9.not-base64!.sig".to_owned(),
            "only.two".to_owned(),
            "a.b.c.d".to_owned(),
        ] {
            let error =
                token(Secret::new(bad.clone()), "sa@p".into(), "h", "test").expect_err("malformed");
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains(&bad), "{shown}");
            assert_eq!(error.upstream(), Some("h"));
        }
    }
}
