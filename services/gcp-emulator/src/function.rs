//! An ID-token-protected "function", as Cloud Run and Cloud Functions serve them behind
//! Google's front end: `/_emulator/function/hello` answers only to a Google ID token signed by
//! Google's current or previous key, issued by `https://accounts.google.com`, unexpired, and
//! whose `aud` is the function's own URL.

use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::errors::json_response;
use crate::keys::UnverifiedJwt;
use crate::state::{State, now};

/// The function's path on the emulator.
pub(crate) const PATH: &str = "/_emulator/function/hello";
use crate::world::GOOGLE_ISSUER;

/// Why the front end refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// No `Authorization: Bearer` header.
    #[error("no Authorization: Bearer token")]
    NoToken,
    /// The bearer token is not a compact JWS.
    #[error("the bearer token is not a JWT")]
    Malformed,
    /// The signature does not verify with Google's published ID-token keys.
    #[error("the token's signature does not verify with Google's keys")]
    Signature,
    /// `iss` is not Google's.
    #[error("the token's issuer is not {GOOGLE_ISSUER}")]
    Issuer,
    /// `aud` is not this function's URL.
    #[error("the token's audience is not this function's URL {0}")]
    Audience(String),
    /// `exp` is missing, not an integer, or past.
    #[error("the token has expired (or has no valid exp)")]
    Expired,
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Self::NoToken | Self::Malformed => StatusCode::UNAUTHORIZED,
            Self::Signature | Self::Issuer | Self::Audience(_) | Self::Expired => {
                StatusCode::FORBIDDEN
            }
        }
    }
}

impl IntoResponse for Refusal {
    /// Google's front-end error page, with the reason in its second heading.
    fn into_response(self) -> Response {
        let status = self.status();
        let (code, title) = match status {
            StatusCode::UNAUTHORIZED => (401, "Unauthorized"),
            _ => (403, "Forbidden"),
        };
        let body = format!(
            "<html><head>\n<meta http-equiv=\"content-type\" content=\"text/html;charset=utf-8\">\n\
             <title>{code} {title}</title>\n</head>\n<body text=#000000 bgcolor=#ffffff>\n\
             <h1>Error: {title}</h1>\n<h2>Your client does not have permission to get URL \
             <code>{PATH}</code> from this server.</h2>\n<h2>{self}</h2>\n</body></html>\n"
        );
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=UTF-8"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        response
    }
}

/// `GET` or `POST /_emulator/function/hello`: `{"message":"hello","caller":…}` to a valid
/// Google ID token whose `aud` is the function's URL; the caller is its `email`, else `sub`.
pub(crate) async fn hello(AxumState(state): AxumState<Arc<State>>, headers: HeaderMap) -> Response {
    match authenticate(&state, &headers, now()) {
        Ok(caller) => json_response(
            StatusCode::OK,
            json!({"message": "hello", "caller": caller}),
        ),
        Err(refusal) => refusal.into_response(),
    }
}

/// Checks the bearer ID token as Google's front end does; returns the caller.
pub(crate) fn authenticate(
    state: &State,
    headers: &HeaderMap,
    now: i64,
) -> Result<String, Refusal> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or(Refusal::NoToken)?;
    let jwt = UnverifiedJwt::parse(token).ok_or(Refusal::Malformed)?;
    let verified = state
        .published_id_token_keys()
        .iter()
        .filter(|key| jwt.kid().is_none_or(|kid| kid == key.kid()))
        .any(|key| jwt.verify(&key.public_key()));
    if !verified {
        return Err(Refusal::Signature);
    }
    if jwt.claim_str("iss") != Some(GOOGLE_ISSUER) {
        return Err(Refusal::Issuer);
    }
    let url = state.function_url();
    if jwt.claim_str("aud") != Some(url.as_str()) {
        return Err(Refusal::Audience(url));
    }
    if jwt.claim_numeric_date("exp").is_none_or(|exp| exp <= now) {
        return Err(Refusal::Expired);
    }
    jwt.claims
        .get("email")
        .or_else(|| jwt.claims.get("sub"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(Refusal::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use crate::world::World;

    const URL: &str = "http://127.0.0.1:8085";

    fn state() -> State {
        let key = SigningKey::generate("test signer").expect("key");
        State::new(
            World::default_world(),
            URL.to_owned(),
            Default::default(),
            key,
        )
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        headers
    }

    fn claims(now: i64) -> Value {
        json!({
            "iss": GOOGLE_ISSUER,
            "aud": format!("{URL}{PATH}"),
            "azp": "123",
            "sub": "123",
            "email": "caller@dev-project.iam.gserviceaccount.com",
            "iat": now,
            "exp": now + 3600,
        })
    }

    #[test]
    fn a_google_id_token_for_the_functions_url_is_accepted() {
        let state = state();
        let now = 1_767_225_600;
        let token = state.id_token_key().sign_jwt(&claims(now)).expect("sign");
        assert_eq!(
            authenticate(&state, &bearer(&token), now + 10),
            Ok("caller@dev-project.iam.gserviceaccount.com".to_owned())
        );
        let mut without_email = claims(now);
        without_email
            .as_object_mut()
            .map(|c| c.remove("email"))
            .expect("object");
        let token = state.id_token_key().sign_jwt(&without_email).expect("sign");
        assert_eq!(
            authenticate(&state, &bearer(&token), now),
            Ok("123".to_owned())
        );
    }

    #[test]
    fn every_refusal_has_its_status() {
        let state = state();
        let now = 1_767_225_600;
        let sign = |claims: Value| state.id_token_key().sign_jwt(&claims).expect("sign");
        let with = |name: &str, value: Value| {
            let mut c = claims(now);
            c[name] = value;
            sign(c)
        };
        let stranger = SigningKey::generate("stranger")
            .expect("key")
            .sign_jwt(&claims(now))
            .expect("sign");
        let mut basic = HeaderMap::new();
        basic.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eDp5"),
        );
        let cases: Vec<(HeaderMap, Refusal)> = vec![
            (HeaderMap::new(), Refusal::NoToken),
            (basic, Refusal::NoToken),
            (bearer(""), Refusal::NoToken),
            (bearer("ya29.an-access-token"), Refusal::Malformed),
            (bearer(&stranger), Refusal::Signature),
            (
                bearer(&with("iss", json!("accounts.google.com"))),
                Refusal::Issuer,
            ),
            (
                bearer(&with("aud", json!("https://other.example.com"))),
                Refusal::Audience(state.function_url()),
            ),
            (
                bearer(&with("aud", json!([state.function_url()]))),
                Refusal::Audience(state.function_url()),
            ),
            (bearer(&with("exp", json!(now))), Refusal::Expired),
            (
                bearer(&with("exp", json!(now as f64 + 60.5))),
                Refusal::Expired,
            ),
            (
                bearer(&with("exp", json!(i64::MAX.to_string()))),
                Refusal::Expired,
            ),
            (bearer(&with("exp", json!(-1))), Refusal::Expired),
        ];
        for (headers, expected) in cases {
            let status = expected.status();
            assert_eq!(authenticate(&state, &headers, now), Err(expected.clone()));
            let response = expected.into_response();
            assert_eq!(response.status(), status);
        }
    }

    #[test]
    fn the_previous_signing_key_is_accepted_and_older_ones_are_not() {
        let state = state();
        let now = 1_767_225_600;
        let first = state.id_token_key().sign_jwt(&claims(now)).expect("sign");
        state.rotate_id_token_key(SigningKey::generate("second").expect("key"));
        assert!(authenticate(&state, &bearer(&first), now).is_ok());
        state.rotate_id_token_key(SigningKey::generate("third").expect("key"));
        assert_eq!(
            authenticate(&state, &bearer(&first), now),
            Err(Refusal::Signature)
        );
    }
}
