//! Fault injection and per-endpoint request counters.
//!
//! Every request to an emulated Google endpoint passes [`middleware`], which counts it and
//! applies the first matching fault rule: added latency, an error status (with Google's error
//! body for that endpoint, optionally with the error code and description the rule names, and
//! an optional `Retry-After`), a malformed body, or a dropped connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::errors::{ApiError, OAuthError};
use crate::state::State;

/// The endpoints faults and counters are kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Endpoint {
    /// `POST /token`.
    #[serde(rename = "oauth2.token")]
    OAuth2Token,
    /// Certificates, JWKS and OIDC discovery.
    #[serde(rename = "oauth2.certs")]
    OAuth2Certs,
    /// `tokeninfo`.
    #[serde(rename = "oauth2.tokeninfo")]
    OAuth2TokenInfo,
    /// STS `POST /v1/token`.
    #[serde(rename = "sts.token")]
    StsToken,
    /// STS `POST /v1/token` on the mTLS listener (`sts.mtls.googleapis.com`).
    #[serde(rename = "sts.mtls.token")]
    StsMtlsToken,
    /// IAM Credentials generateAccessToken.
    #[serde(rename = "iam.generateAccessToken")]
    IamGenerateAccessToken,
    /// IAM Credentials generateIdToken.
    #[serde(rename = "iam.generateIdToken")]
    IamGenerateIdToken,
    /// IAM Credentials signJwt.
    #[serde(rename = "iam.signJwt")]
    IamSignJwt,
    /// IAM Credentials signBlob.
    #[serde(rename = "iam.signBlob")]
    IamSignBlob,
    /// The GCE metadata server.
    #[serde(rename = "metadata")]
    Metadata,
    /// The AWS instance metadata service (IMDSv2, `/latest/...`).
    #[serde(rename = "aws.imds")]
    AwsImds,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Self; 11] = [
        Self::OAuth2Token,
        Self::OAuth2Certs,
        Self::OAuth2TokenInfo,
        Self::StsToken,
        Self::StsMtlsToken,
        Self::IamGenerateAccessToken,
        Self::IamGenerateIdToken,
        Self::IamSignJwt,
        Self::IamSignBlob,
        Self::Metadata,
        Self::AwsImds,
    ];

    /// The endpoint's name, as the admin API spells it (`sts.token`, `aws.imds`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::OAuth2Token => "oauth2.token",
            Self::OAuth2Certs => "oauth2.certs",
            Self::OAuth2TokenInfo => "oauth2.tokeninfo",
            Self::StsToken => "sts.token",
            Self::StsMtlsToken => "sts.mtls.token",
            Self::IamGenerateAccessToken => "iam.generateAccessToken",
            Self::IamGenerateIdToken => "iam.generateIdToken",
            Self::IamSignJwt => "iam.signJwt",
            Self::IamSignBlob => "iam.signBlob",
            Self::Metadata => "metadata",
            Self::AwsImds => "aws.imds",
        }
    }

    /// The endpoint of this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The endpoint a request path on the main listener belongs to; `None` for the admin API
    /// and unknown paths. (On the mTLS listener `/v1/token` is [`Endpoint::StsMtlsToken`].)
    pub fn classify(path: &str) -> Option<Self> {
        match path {
            "/token" | "/oauth2/v4/token" | "/o/oauth2/token" => Some(Self::OAuth2Token),
            "/oauth2/v1/certs" | "/oauth2/v3/certs" | "/.well-known/openid-configuration" => {
                Some(Self::OAuth2Certs)
            }
            _ if path.starts_with("/robot/v1/metadata/") => Some(Self::OAuth2Certs),
            "/tokeninfo" | "/oauth2/v3/tokeninfo" => Some(Self::OAuth2TokenInfo),
            "/v1/token" => Some(Self::StsToken),
            "/" => Some(Self::Metadata),
            _ if path.starts_with("/computeMetadata/") => Some(Self::Metadata),
            _ if path.starts_with("/latest/") || path == "/latest" => Some(Self::AwsImds),
            _ if path.starts_with("/v1/projects/") => match path.rsplit_once(':') {
                Some((_, "generateAccessToken")) => Some(Self::IamGenerateAccessToken),
                Some((_, "generateIdToken")) => Some(Self::IamGenerateIdToken),
                Some((_, "signJwt")) => Some(Self::IamSignJwt),
                Some((_, "signBlob")) => Some(Self::IamSignBlob),
                _ => None,
            },
            _ => None,
        }
    }

    /// The error body Google's endpoint would give with this status, with the fault's error
    /// code and description when it names them (see [`Fault::error`]).
    fn error_response(self, status: StatusCode, fault: &Fault) -> Response {
        let (error, description) = (fault.error.as_deref(), fault.error_description.as_deref());
        match self {
            Self::OAuth2Token
            | Self::OAuth2Certs
            | Self::OAuth2TokenInfo
            | Self::StsToken
            | Self::StsMtlsToken => {
                OAuthError::for_fault(status, error, description).into_response()
            }
            Self::IamGenerateAccessToken
            | Self::IamGenerateIdToken
            | Self::IamSignJwt
            | Self::IamSignBlob => ApiError::for_fault(status, error, description).into_response(),
            Self::Metadata => crate::metadata::text(status, "injected fault\n"),
            Self::AwsImds => crate::imds::error(status),
        }
    }
}

/// A fault rule, as the admin API takes it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// Answer with this HTTP status and the endpoint's error body.
    #[serde(default)]
    pub status: Option<u16>,
    /// With `status`: a `Retry-After` header, in seconds.
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// With `status`, not on `metadata` or `aws.imds`: the error code of the body. On the
    /// OAuth endpoints (`oauth2.*`, `sts.token`, `sts.mtls.token`) the OAuth `error` (`invalid_grant`, `access_denied`, ...); on
    /// IAM Credentials the `reason` of a `google.rpc.ErrorInfo` detail in the domain
    /// `iam.googleapis.com` (`IAM_PERMISSION_DENIED`, `SERVICE_DISABLED`, ...), the envelope's
    /// `status` following the HTTP status as Google's does. Sent as given, unchecked, so that
    /// clients can be tested against odd codes. Without it: the code the status implies on
    /// OAuth endpoints, no ErrorInfo on IAM.
    #[serde(default)]
    pub error: Option<String>,
    /// With `status`, not on `metadata` or `aws.imds`: the OAuth `error_description`, or the IAM envelope's
    /// `message`. Sent as given (control characters and all). Without it:
    /// `injected fault: HTTP <status>`.
    #[serde(default)]
    pub error_description: Option<String>,
    /// Added latency in milliseconds, before the response (or the other effect).
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Answer 200 with a body that is not JSON.
    #[serde(default)]
    pub malformed_body: bool,
    /// Close the connection without a response.
    #[serde(default)]
    pub drop_connection: bool,
    /// Apply to the next N matching calls only.
    #[serde(default)]
    pub times: Option<u32>,
    /// Apply to this fraction of calls (0 to 1).
    #[serde(default)]
    pub probability: Option<f64>,
}

/// Why a fault rule was refused.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// No effect given.
    #[error("a fault needs at least one of status, delay_ms, malformed_body, drop_connection")]
    NoEffect,
    /// Conflicting effects.
    #[error("status, malformed_body and drop_connection exclude each other")]
    Conflicting,
    /// Status out of range.
    #[error("status must be an HTTP error status (400-599), got {0}")]
    Status(u16),
    /// `error` or `error_description` without `status`.
    #[error("error and error_description shape the body of a status fault: they need status")]
    BodyWithoutStatus,
    /// `error` or `error_description` on a metadata server (GCE's or AWS's), whose errors are
    /// not JSON.
    #[error(
        "error and error_description mean nothing on the metadata endpoints (metadata, aws.imds: their errors are plain text)"
    )]
    BodyOnMetadata,
    /// Probability out of range.
    #[error("probability must be within 0 and 1")]
    Probability,
}

impl Fault {
    fn validate(&self) -> Result<(), FaultError> {
        if self.error.is_some() || self.error_description.is_some() {
            if self.status.is_none() {
                return Err(FaultError::BodyWithoutStatus);
            }
            if matches!(self.endpoint, Endpoint::Metadata | Endpoint::AwsImds) {
                return Err(FaultError::BodyOnMetadata);
            }
        }
        let terminal = usize::from(self.status.is_some())
            + usize::from(self.malformed_body)
            + usize::from(self.drop_connection);
        if terminal == 0 && self.delay_ms.is_none() {
            return Err(FaultError::NoEffect);
        }
        if terminal > 1 {
            return Err(FaultError::Conflicting);
        }
        if let Some(status) = self.status
            && !(400..=599).contains(&status)
        {
            return Err(FaultError::Status(status));
        }
        if let Some(p) = self.probability
            && !(0.0..=1.0).contains(&p)
        {
            return Err(FaultError::Probability);
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Rule {
    fault: Fault,
    remaining: Option<u32>,
}

/// The fault rules and counters of one emulator.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    counters: Mutex<BTreeMap<Endpoint, u64>>,
}

impl Faults {
    /// Adds a rule; rules are tried in the order they were added.
    pub fn inject(&self, fault: Fault) -> Result<(), FaultError> {
        fault.validate()?;
        let remaining = fault.times;
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Rule { fault, remaining });
        Ok(())
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Requests seen per endpoint (faulted ones included).
    pub fn counters(&self) -> BTreeMap<Endpoint, u64> {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests seen by one endpoint.
    pub fn count(&self, endpoint: Endpoint) -> u64 {
        self.counters().get(&endpoint).copied().unwrap_or(0)
    }

    /// Resets the counters.
    pub fn reset_counters(&self) {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Counts a request and picks the fault to apply to it, if any.
    fn on_request(&self, endpoint: Endpoint) -> Option<Fault> {
        *self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(endpoint)
            .or_default() += 1;
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let index = rules.iter().position(|rule| {
            rule.fault.endpoint == endpoint
                && rule.remaining != Some(0)
                && rule
                    .fault
                    .probability
                    .is_none_or(|p| crate::random_fraction() < p)
        })?;
        let rule = &mut rules[index];
        if let Some(remaining) = rule.remaining.as_mut() {
            *remaining -= 1;
        }
        let fault = rule.fault.clone();
        rules.retain(|r| r.remaining != Some(0));
        Some(fault)
    }
}

/// The largest request body the emulator buffers (axum's default body limit).
const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// The axum middleware that counts requests, records them in the request log and applies
/// faults.
pub async fn middleware(
    AxumState(state): AxumState<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(mut endpoint) = Endpoint::classify(request.uri().path()) else {
        return next.run(request).await;
    };
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::mtls::Peer>>()
        .map(|info| info.0.clone());
    if peer.is_some() && endpoint == Endpoint::StsToken {
        endpoint = Endpoint::StsMtlsToken;
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
    };
    let recorded = crate::requests::normalize(&crate::requests::Incoming {
        endpoint,
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
        body: &body,
        client_certificate: peer.as_ref().map(|p| p.certificate.as_slice()),
    });
    let request = Request::from_parts(parts, Body::from(body));
    let (response, faulted) = match state.faults.on_request(endpoint) {
        None => (next.run(request).await, false),
        Some(fault) => (apply(endpoint, fault, request, next).await, true),
    };
    state
        .requests
        .record(recorded, response.status().as_u16(), faulted);
    response
}

async fn apply(endpoint: Endpoint, fault: Fault, request: Request, next: Next) -> Response {
    tracing::info!(?endpoint, ?fault, "injecting fault");
    if let Some(delay) = fault.delay_ms {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(status) = fault.status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = endpoint.error_response(status, &fault);
        if let Some(seconds) = fault.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        return response;
    }
    if fault.malformed_body {
        let mut response = (StatusCode::OK, "{\"access_token\": \"ya29.trunc").into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        return response;
    }
    if fault.drop_connection {
        // A body that fails before its first byte makes hyper abort the connection.
        let failing = futures_util::stream::once(async {
            Err::<axum::body::Bytes, _>(std::io::Error::other("injected fault: connection dropped"))
        });
        return Response::new(Body::from_stream(failing));
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(json: serde_json::Value) -> Fault {
        serde_json::from_value(json).expect("fault")
    }

    #[test]
    fn classifies_every_endpoint() {
        let cases = [
            ("/token", Some(Endpoint::OAuth2Token)),
            ("/oauth2/v3/certs", Some(Endpoint::OAuth2Certs)),
            ("/v1/token", Some(Endpoint::StsToken)),
            (
                "/v1/projects/-/serviceAccounts/a@b:generateAccessToken",
                Some(Endpoint::IamGenerateAccessToken),
            ),
            (
                "/v1/projects/-/serviceAccounts/a@b:signBlob",
                Some(Endpoint::IamSignBlob),
            ),
            (
                "/computeMetadata/v1/project/project-id",
                Some(Endpoint::Metadata),
            ),
            ("/", Some(Endpoint::Metadata)),
            (
                "/latest/meta-data/iam/security-credentials/",
                Some(Endpoint::AwsImds),
            ),
            ("/latest/api/token", Some(Endpoint::AwsImds)),
            ("/_emulator/faults", None),
            ("/_emulator/requests", None),
        ];
        for (path, expected) in cases {
            assert_eq!(Endpoint::classify(path), expected, "{path}");
        }
    }

    #[test]
    fn times_limits_a_rule_and_counters_count_everything() {
        let faults = Faults::default();
        faults
            .inject(fault(
                serde_json::json!({"endpoint": "oauth2.token", "status": 503, "times": 2}),
            ))
            .expect("valid");
        assert!(faults.on_request(Endpoint::OAuth2Token).is_some());
        assert!(faults.on_request(Endpoint::StsToken).is_none());
        assert!(faults.on_request(Endpoint::OAuth2Token).is_some());
        assert!(faults.on_request(Endpoint::OAuth2Token).is_none());
        assert_eq!(faults.count(Endpoint::OAuth2Token), 3);
        assert_eq!(faults.count(Endpoint::StsToken), 1);
    }

    #[test]
    fn invalid_rules_are_refused() {
        let faults = Faults::default();
        for bad in [
            serde_json::json!({"endpoint": "oauth2.token"}),
            serde_json::json!({"endpoint": "oauth2.token", "status": 200}),
            serde_json::json!({"endpoint": "oauth2.token", "status": 500, "drop_connection": true}),
            serde_json::json!({"endpoint": "oauth2.token", "delay_ms": 5, "probability": 1.5}),
            serde_json::json!({"endpoint": "oauth2.token", "error": "invalid_grant"}),
            serde_json::json!({"endpoint": "sts.token", "delay_ms": 5, "error_description": "x"}),
            serde_json::json!({"endpoint": "oauth2.token", "drop_connection": true, "error": "x"}),
            serde_json::json!({"endpoint": "metadata", "status": 500, "error": "internal_failure"}),
            serde_json::json!({"endpoint": "metadata", "status": 403, "error_description": "no"}),
            serde_json::json!({"endpoint": "aws.imds", "status": 500, "error": "x"}),
        ] {
            assert!(faults.inject(fault(bad.clone())).is_err(), "{bad}");
        }
        assert!(
            serde_json::from_value::<Fault>(serde_json::json!({"endpoint": "nope", "status": 500}))
                .is_err()
        );
        for good in [
            serde_json::json!({"endpoint": "oauth2.token", "status": 400, "error": "invalid_grant"}),
            serde_json::json!({"endpoint": "iam.signBlob", "status": 403, "error_description": "no"}),
            serde_json::json!({"endpoint": "metadata", "status": 503}),
        ] {
            faults.inject(fault(good.clone())).expect("valid");
        }
    }

    #[test]
    fn names_round_trip_and_match_serde() {
        for endpoint in Endpoint::ALL {
            assert_eq!(Endpoint::from_name(endpoint.name()), Some(endpoint));
            assert_eq!(
                serde_json::to_value(endpoint).expect("json"),
                serde_json::Value::String(endpoint.name().to_owned())
            );
        }
        assert_eq!(Endpoint::from_name("nope"), None);
    }

    #[test]
    fn probability_zero_never_fires() {
        let faults = Faults::default();
        faults
            .inject(fault(
                serde_json::json!({"endpoint": "metadata", "status": 500, "probability": 0.0}),
            ))
            .expect("valid");
        assert!((0..50).all(|_| faults.on_request(Endpoint::Metadata).is_none()));
    }
}
