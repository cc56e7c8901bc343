//! The request log: the last requests of every emulated endpoint, normalized so that what two
//! clients sent can be compared (conformance tests compare the broker's requests with
//! google-auth's), and with every credential reduced to what identifies it.
//!
//! Normalization:
//! - form and JSON bodies become `fields` (decoded; on STS, JSON camelCase names become
//!   snake_case as STS reads them); `options` is decoded whether it came as JSON or
//!   percent-encoded JSON (`options_encoding` says which);
//! - credentials are never recorded: `subject_token`/`actor_token`, `assertion`, `id_token`
//!   become `{"sha256", "length", "format"}` plus, for JWTs, their `header` and `claims`, for
//!   AWS `aws4_request` tokens the signed request with the signature and session token
//!   redacted, for X.509 chains each certificate's subject, issuer and fingerprint;
//!   `refresh_token`, `access_token`, `code`, `password`, `token` and bearer tokens become
//!   `{"sha256", "length"}`; a client secret (`Authorization: Basic` or `client_secret`) is
//!   only `secret_present`, with the client id;
//! - the `x-goog-api-client` header is kept, and a few others (`content-type`,
//!   `user-agent`, `x-goog-user-project`, `metadata-flavor`, IMDS headers, the IMDS session
//!   token as a fingerprint).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use axum::http::{HeaderMap, Method, Uri, header};
use base64::Engine as _;
use percent_encoding::percent_decode_str;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::faults::Endpoint;
use crate::keys::UnverifiedJwt;
use crate::x509::sha256_hex;

/// How many requests are kept per endpoint (the oldest go first).
pub const MAX_REQUESTS_PER_ENDPOINT: usize = 100;

/// The client authentication a request carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientAuth {
    /// `basic` (`Authorization: Basic`) or `body` (`client_id` and `client_secret` fields).
    pub method: String,
    /// The client id.
    pub client_id: String,
    /// Whether a (non-empty) secret came with it; the secret itself is never recorded.
    pub secret_present: bool,
}

/// One request, normalized (see the module documentation).
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    /// Order of arrival across all endpoints, from 1.
    pub seq: u64,
    /// The endpoint.
    pub endpoint: Endpoint,
    /// When it arrived, Unix seconds.
    pub time: i64,
    /// The HTTP method.
    pub method: String,
    /// The path.
    pub path: String,
    /// Query parameters, decoded and normalized like fields.
    pub query: Map<String, Value>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// `form`, `json`, `empty`, `invalid-json` or `other`.
    pub body_format: String,
    /// The body's fields, decoded and normalized.
    pub fields: Map<String, Value>,
    /// How `options` came: `json` (raw JSON, as Go and JSON bodies send it),
    /// `percent-encoded` (JSON percent-encoded once more, as Python sends it) or `invalid`.
    pub options_encoding: Option<String>,
    /// The client authentication, if any.
    pub client_auth: Option<ClientAuth>,
    /// A non-Basic `Authorization` header: `{"scheme", "sha256", "length"}`.
    pub authorization: Option<Value>,
    /// The `x-goog-api-client` header.
    pub x_goog_api_client: Option<String>,
    /// Other headers worth comparing, lowercase names.
    pub headers: BTreeMap<String, Value>,
    /// On the mTLS listener: the TLS client certificate, `{"sha256", "subject", "issuer"}`.
    pub client_certificate: Option<Value>,
    /// The response status (200 for a dropped connection: see `faulted`).
    pub status: u16,
    /// Whether a fault rule applied to the request.
    pub faulted: bool,
}

/// The last [`MAX_REQUESTS_PER_ENDPOINT`] requests of every endpoint.
#[derive(Debug, Default)]
pub struct RequestLog {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    seq: u64,
    by_endpoint: BTreeMap<Endpoint, VecDeque<RecordedRequest>>,
}

impl RequestLog {
    /// The requests of `endpoint`, oldest first.
    pub fn requests(&self, endpoint: Endpoint) -> Vec<RecordedRequest> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .by_endpoint
            .get(&endpoint)
            .map(|log| log.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The requests of every endpoint, oldest first.
    pub fn all(&self) -> Vec<RecordedRequest> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<RecordedRequest> = inner.by_endpoint.values().flatten().cloned().collect();
        all.sort_by_key(|r| r.seq);
        all
    }

    /// Forgets the requests of `endpoint`, or of every endpoint.
    pub fn clear(&self, endpoint: Option<Endpoint>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match endpoint {
            Some(endpoint) => {
                inner.by_endpoint.remove(&endpoint);
            }
            None => inner.by_endpoint.clear(),
        }
    }

    /// Records a request with its outcome.
    pub(crate) fn record(&self, mut request: RecordedRequest, status: u16, faulted: bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.seq += 1;
        request.seq = inner.seq;
        request.status = status;
        request.faulted = faulted;
        let log = inner.by_endpoint.entry(request.endpoint).or_default();
        if log.len() == MAX_REQUESTS_PER_ENDPOINT {
            log.pop_front();
        }
        log.push_back(request);
    }
}

/// The parts of a request to normalize.
pub(crate) struct Incoming<'a> {
    pub(crate) endpoint: Endpoint,
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: &'a [u8],
    /// The DER of the TLS client certificate, on the mTLS listener.
    pub(crate) client_certificate: Option<&'a [u8]>,
}

/// Normalizes a request (its `seq`, `status` and `faulted` are set when it is recorded).
pub(crate) fn normalize(incoming: &Incoming<'_>) -> RecordedRequest {
    let header = |name: header::HeaderName| {
        incoming
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(header::CONTENT_TYPE);
    let sts = matches!(
        incoming.endpoint,
        Endpoint::StsToken | Endpoint::StsMtlsToken
    );
    let mut options_encoding = None;

    let query_pairs: Vec<(String, Value)> = incoming
        .uri
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect()
        })
        .unwrap_or_default();
    let query = normalize_fields(query_pairs, &mut options_encoding);

    let is_json = content_type
        .as_deref()
        .is_some_and(|ct| ct.starts_with("application/json"));
    let (body_format, pairs) = if incoming.body.is_empty() {
        ("empty", Vec::new())
    } else if is_json {
        match serde_json::from_slice::<Value>(incoming.body) {
            Ok(Value::Object(object)) => (
                "json",
                object
                    .into_iter()
                    .map(|(k, v)| (if sts { crate::sts::snake_case(&k) } else { k }, v))
                    .collect(),
            ),
            _ => ("invalid-json", Vec::new()),
        }
    } else if content_type.is_none()
        || content_type
            .as_deref()
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"))
    {
        (
            "form",
            form_urlencoded::parse(incoming.body)
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect(),
        )
    } else {
        ("other", Vec::new())
    };
    let mut client_auth = None;
    if let (Some(Value::String(id)), true) = (
        pairs
            .iter()
            .find(|(k, _)| k == "client_id")
            .map(|(_, v)| v.clone()),
        pairs.iter().any(|(k, _)| k == "client_secret"),
    ) {
        let secret_present = pairs
            .iter()
            .any(|(k, v)| k == "client_secret" && v.as_str().is_some_and(|s| !s.is_empty()));
        client_auth = Some(ClientAuth {
            method: "body".to_owned(),
            client_id: id,
            secret_present,
        });
    }
    let fields = normalize_fields(pairs, &mut options_encoding);

    let mut authorization = None;
    if let Some(value) = header(header::AUTHORIZATION) {
        let (scheme, credentials) = value.split_once(' ').unwrap_or((value.as_str(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credentials.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok());
            match decoded.as_deref().and_then(|text| text.split_once(':')) {
                Some((id, secret)) => {
                    client_auth = Some(ClientAuth {
                        method: "basic".to_owned(),
                        client_id: id.to_owned(),
                        secret_present: !secret.is_empty(),
                    });
                }
                None => {
                    authorization = Some(json!({"scheme": scheme, "valid": false}));
                }
            }
        } else {
            let mut fingerprint = fingerprint(credentials.trim());
            fingerprint["scheme"] = scheme.into();
            authorization = Some(fingerprint);
        }
    }

    let mut headers = BTreeMap::new();
    for name in [
        "content-type",
        "user-agent",
        "x-goog-user-project",
        "x-goog-request-params",
        "metadata-flavor",
        "x-forwarded-for",
        "x-aws-ec2-metadata-token-ttl-seconds",
    ] {
        if let Some(value) = incoming.headers.get(name).and_then(|v| v.to_str().ok()) {
            headers.insert(name.to_owned(), Value::String(value.to_owned()));
        }
    }
    if let Some(value) = incoming
        .headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
    {
        headers.insert("x-aws-ec2-metadata-token".to_owned(), fingerprint(value));
    }

    RecordedRequest {
        seq: 0,
        endpoint: incoming.endpoint,
        time: crate::state::now(),
        method: incoming.method.to_string(),
        path: incoming.uri.path().to_owned(),
        query,
        content_type,
        body_format: body_format.to_owned(),
        fields,
        options_encoding,
        client_auth,
        authorization,
        x_goog_api_client: incoming
            .headers
            .get("x-goog-api-client")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        headers,
        client_certificate: incoming.client_certificate.map(certificate_summary),
        status: 0,
        faulted: false,
    }
}

/// Normalizes decoded fields (a repeated name keeps its first value).
fn normalize_fields(
    pairs: Vec<(String, Value)>,
    options_encoding: &mut Option<String>,
) -> Map<String, Value> {
    let type_of = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_str())
            .map(str::to_owned)
    };
    let subject_type = type_of("subject_token_type");
    let actor_type = type_of("actor_token_type");
    let mut fields = Map::new();
    for (name, value) in pairs {
        if fields.contains_key(&name) {
            continue;
        }
        let normalized = match (name.as_str(), &value) {
            ("subject_token", Value::String(token)) => {
                token_summary(token, subject_type.as_deref())
            }
            ("actor_token", Value::String(token)) => token_summary(token, actor_type.as_deref()),
            ("assertion" | "id_token", Value::String(token)) => {
                token_summary(token, Some(crate::federation::JWT_TOKEN_TYPE))
            }
            (
                "refresh_token" | "access_token" | "code" | "password" | "token",
                Value::String(token),
            ) => fingerprint(token),
            ("client_secret", Value::String(secret)) => json!({"present": !secret.is_empty()}),
            ("options", Value::String(raw)) => {
                let (decoded, encoding) = decode_options(raw);
                *options_encoding = Some(encoding.to_owned());
                decoded
            }
            ("options", Value::Object(_)) => {
                *options_encoding = Some("json".to_owned());
                value
            }
            _ => value,
        };
        fields.insert(name, normalized);
    }
    fields
}

/// Decodes `options` as STS does: raw JSON, else JSON percent-encoded once more.
fn decode_options(raw: &str) -> (Value, &'static str) {
    if let Ok(value) = serde_json::from_str::<Value>(raw) {
        return (value, "json");
    }
    percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .and_then(|once| serde_json::from_str::<Value>(&once).ok())
        .map_or_else(
            || (Value::String(raw.to_owned()), "invalid"),
            |value| (value, "percent-encoded"),
        )
}

/// `{"sha256": hex, "length": n}` of a credential.
fn fingerprint(value: &str) -> Value {
    json!({"sha256": sha256_hex(value.as_bytes()), "length": value.len()})
}

/// What a subject (or actor) token is, without the token: its fingerprint and format, and
/// the decoded structure where there is one.
fn token_summary(token: &str, token_type: Option<&str>) -> Value {
    let mut summary = fingerprint(token);
    match token_type {
        Some(crate::federation::AWS_TOKEN_TYPE) => match aws_summary(token) {
            Some(aws) => {
                summary["format"] = "aws4_request".into();
                summary["aws"] = aws;
            }
            None => summary["format"] = "unparsable".into(),
        },
        Some(crate::federation::MTLS_TOKEN_TYPE) => match crate::x509::parse_subject_token(token) {
            Ok(chain) => {
                summary["format"] = "x509".into();
                summary["certificates"] = chain
                    .iter()
                    .map(|der| certificate_summary(der))
                    .collect::<Vec<_>>()
                    .into();
            }
            Err(_) => summary["format"] = "unparsable".into(),
        },
        Some("urn:ietf:params:oauth:token-type:access_token") => {
            summary["format"] = "opaque".into();
        }
        _ => match UnverifiedJwt::parse(token.trim()) {
            Some(jwt) => {
                summary["format"] = "jwt".into();
                summary["jwt"] = json!({"header": jwt.header, "claims": jwt.claims});
            }
            None => summary["format"] = "opaque".into(),
        },
    }
    summary
}

/// An `aws4_request` subject token decoded (as STS decodes it), with the signature and the
/// session token redacted; `url_encoding` tells how it was URL-encoded.
fn aws_summary(token: &str) -> Option<Value> {
    let plus_as_space = token.replace('+', " ");
    let decoded = percent_decode_str(&plus_as_space).decode_utf8().ok()?;
    let mut request: Value = serde_json::from_str(&decoded).ok()?;
    let headers = request.get_mut("headers")?.as_array_mut()?;
    for entry in headers.iter_mut() {
        let key = entry
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let Some(value) = entry.get("value").and_then(Value::as_str) else {
            continue;
        };
        let redacted = match key.as_str() {
            "authorization" => value
                .split(',')
                .map(|part| {
                    let trimmed = part.trim_start();
                    if trimmed.starts_with("Signature=") {
                        format!("{}Signature=REDACTED", &part[..part.len() - trimmed.len()])
                    } else {
                        part.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(","),
            "x-amz-security-token" => "REDACTED".to_owned(),
            _ => continue,
        };
        entry["value"] = redacted.into();
    }
    request["url_encoding"] = json!({
        "plus_for_space": token.contains('+'),
        "slash_escaped": token.contains("%2F") || token.contains("%2f"),
    });
    Some(request)
}

/// `{"sha256", "subject", "issuer"}` of a DER certificate.
fn certificate_summary(der: &[u8]) -> Value {
    let mut summary = json!({"sha256": sha256_hex(der)});
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) {
        summary["subject"] = cert.subject().to_string().into();
        summary["issuer"] = cert.issuer().to_string().into();
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalize_form(endpoint: Endpoint, body: &str, headers: HeaderMap) -> RecordedRequest {
        let uri: Uri = "/v1/token".parse().expect("uri");
        normalize(&Incoming {
            endpoint,
            method: &Method::POST,
            uri: &uri,
            headers: &headers,
            body: body.as_bytes(),
            client_certificate: None,
        })
    }

    #[test]
    fn options_are_decoded_both_ways_and_secrets_are_reduced() {
        let go = normalize_form(
            Endpoint::StsToken,
            "options=%7B%22userProject%22%3A%22p%22%7D&client_id=c&client_secret=s",
            HeaderMap::new(),
        );
        let python = normalize_form(
            Endpoint::StsToken,
            "options=%257B%2522userProject%2522%253A%2520%2522p%2522%257D",
            HeaderMap::new(),
        );
        assert_eq!(go.fields["options"], json!({"userProject": "p"}));
        assert_eq!(python.fields["options"], json!({"userProject": "p"}));
        assert_eq!(go.options_encoding.as_deref(), Some("json"));
        assert_eq!(python.options_encoding.as_deref(), Some("percent-encoded"));
        assert_eq!(go.fields["client_secret"], json!({"present": true}));
        assert_eq!(
            go.client_auth,
            Some(ClientAuth {
                method: "body".into(),
                client_id: "c".into(),
                secret_present: true
            })
        );
        let text = serde_json::to_string(&go).expect("json");
        assert!(!text.contains("\"s\""), "{text}");
    }

    #[test]
    fn basic_auth_keeps_the_client_id_only() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("client:top-secret")
            )
            .parse()
            .expect("header"),
        );
        headers.insert(
            "x-goog-api-client",
            "gl-python/3.11 auth/2.48.0".parse().expect("header"),
        );
        let recorded = normalize_form(Endpoint::StsToken, "grant_type=x", headers);
        assert_eq!(
            recorded.client_auth.as_ref().map(|a| a.client_id.as_str()),
            Some("client")
        );
        assert_eq!(
            recorded.x_goog_api_client.as_deref(),
            Some("gl-python/3.11 auth/2.48.0")
        );
        let text = serde_json::to_string(&recorded).expect("json");
        assert!(!text.contains("top-secret"), "{text}");
    }

    #[test]
    fn aws_tokens_are_decoded_with_the_signature_and_session_token_redacted() {
        let request = json!({"url": "https://sts.us-east-1.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
            "method": "POST", "headers": [
                {"key": "Authorization", "value": "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date, Signature=deadbeef"},
                {"key": "x-amz-security-token", "value": "session-secret"},
                {"key": "host", "value": "sts.us-east-1.amazonaws.com"}]});
        let token: String =
            form_urlencoded::byte_serialize(request.to_string().as_bytes()).collect();
        let body = format!(
            "subject_token_type=urn%3Aietf%3Aparams%3Aaws%3Atoken-type%3Aaws4_request&subject_token={}",
            form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
        );
        let recorded = normalize_form(Endpoint::StsToken, &body, HeaderMap::new());
        let summary = &recorded.fields["subject_token"];
        assert_eq!(summary["format"], "aws4_request");
        assert_eq!(summary["sha256"], sha256_hex(token.as_bytes()));
        assert_eq!(
            summary["aws"]["headers"][0]["value"],
            "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date, Signature=REDACTED"
        );
        assert_eq!(summary["aws"]["headers"][1]["value"], "REDACTED");
        assert_eq!(summary["aws"]["url_encoding"]["plus_for_space"], true);
        let text = serde_json::to_string(&recorded).expect("json");
        assert!(
            !text.contains("deadbeef") && !text.contains("session-secret"),
            "{text}"
        );
    }

    #[test]
    fn the_log_is_bounded_per_endpoint() {
        let log = RequestLog::default();
        for _ in 0..(MAX_REQUESTS_PER_ENDPOINT + 5) {
            log.record(
                normalize_form(Endpoint::StsToken, "a=b", HeaderMap::new()),
                200,
                false,
            );
        }
        log.record(
            normalize_form(Endpoint::OAuth2Token, "a=b", HeaderMap::new()),
            400,
            true,
        );
        let sts = log.requests(Endpoint::StsToken);
        assert_eq!(sts.len(), MAX_REQUESTS_PER_ENDPOINT);
        assert_eq!(sts[0].seq, 6);
        assert_eq!(
            log.all().last().map(|r| (r.status, r.faulted)),
            Some((400, true))
        );
        log.clear(Some(Endpoint::StsToken));
        assert!(log.requests(Endpoint::StsToken).is_empty());
        assert_eq!(log.all().len(), 1);
        log.clear(None);
        assert!(log.all().is_empty());
    }
}
