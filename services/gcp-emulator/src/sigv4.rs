//! Offline verification of the AWS `aws4_request` subject token: a SigV4-signed
//! `GetCallerIdentity` request, serialised as URL-encoded JSON.
//!
//! Google forwards the request to AWS; the emulator instead recomputes the signature with the
//! secret of the access key id from its world and synthesises the caller identity.

use aws_lc_rs::hmac;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::Deserialize;

use crate::world::{AwsCredential, World};

/// SigV4's unreserved set: everything but `A-Za-z0-9-_.~` is escaped.
const SIGV4_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// How far `x-amz-date` may be from now.
const MAX_CLOCK_SKEW_SECS: i64 = 900;

/// Why an `aws4_request` subject token was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SigV4Error {
    /// The token is not URL-encoded JSON of the expected shape.
    #[error("the subject token is not a serialized AWS GetCallerIdentity request: {0}")]
    Malformed(String),
    /// The request is not a GetCallerIdentity call to AWS STS.
    #[error("the signed request is not a POST GetCallerIdentity request to AWS STS: {0}")]
    NotGetCallerIdentity(String),
    /// A required header is missing or wrong.
    #[error("header {0} is missing or invalid")]
    Header(&'static str),
    /// The target resource does not name the audience.
    #[error("x-goog-cloud-target-resource does not match the audience")]
    TargetResource,
    /// The signature time is too far from now.
    #[error("the request signature is expired or not yet valid (x-amz-date)")]
    Stale,
    /// The access key id is unknown.
    #[error("the AWS access key id is not valid")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the AWS request signature does not match")]
    Signature,
    /// Temporary credentials without their session token, or with another one, or with it
    /// unsigned.
    #[error(
        "the security token included in the request is invalid (temporary credentials need their session token as a signed x-amz-security-token header)"
    )]
    SecurityToken,
}

#[derive(Debug, Deserialize)]
struct SignedRequest {
    url: String,
    method: String,
    headers: Vec<HeaderEntry>,
}

#[derive(Debug, Deserialize)]
struct HeaderEntry {
    key: String,
    value: String,
}

/// Verifies `subject_token` for `audience` and returns the AWS caller it proves.
pub(crate) fn verify<'w>(
    world: &'w World,
    subject_token: &str,
    audience: &str,
    now: i64,
) -> Result<&'w AwsCredential, SigV4Error> {
    let plus_as_space = subject_token.replace('+', " ");
    let json = percent_decode_str(&plus_as_space)
        .decode_utf8()
        .map_err(|e| SigV4Error::Malformed(e.to_string()))?;
    let request: SignedRequest =
        serde_json::from_str(&json).map_err(|e| SigV4Error::Malformed(e.to_string()))?;
    if request.method != "POST" {
        return Err(SigV4Error::NotGetCallerIdentity(format!(
            "method {}",
            request.method
        )));
    }
    let (host, query) = split_url(&request.url)?;
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(name))
            .map(|h| h.value.trim().to_owned())
    };
    if header("host").as_deref() != Some(host) {
        return Err(SigV4Error::Header("host"));
    }
    let target = header("x-goog-cloud-target-resource").ok_or(SigV4Error::TargetResource)?;
    if target != audience && target != format!("https:{audience}") {
        return Err(SigV4Error::TargetResource);
    }
    let amz_date = header("x-amz-date").ok_or(SigV4Error::Header("x-amz-date"))?;
    let signed_at = parse_amz_date(&amz_date).ok_or(SigV4Error::Header("x-amz-date"))?;
    if (signed_at - now).abs() > MAX_CLOCK_SKEW_SECS {
        return Err(SigV4Error::Stale);
    }
    let authorization = header("authorization").ok_or(SigV4Error::Header("authorization"))?;
    let auth = Authorization::parse(&authorization).ok_or(SigV4Error::Header("authorization"))?;
    if auth.date != amz_date[..8] || auth.service != "sts" || auth.terminator != "aws4_request" {
        return Err(SigV4Error::Header("authorization"));
    }
    // AWS refuses a signature scoped to another region than the endpoint's ("Credential
    // should be scoped to a valid region"); the global endpoint is us-east-1's.
    let endpoint_region = host
        .strip_prefix("sts.")
        .and_then(|rest| rest.strip_suffix(".amazonaws.com"))
        .unwrap_or("us-east-1");
    if auth.region != endpoint_region {
        return Err(SigV4Error::Header("authorization"));
    }
    if !auth.signed_headers.iter().any(|h| h == "host")
        || !auth.signed_headers.iter().any(|h| h == "x-amz-date")
    {
        return Err(SigV4Error::Header("authorization"));
    }
    let credential = world
        .aws_credentials
        .iter()
        .find(|c| c.access_key_id == auth.access_key_id)
        .ok_or(SigV4Error::UnknownKey)?;

    let mut canonical_headers = String::new();
    for name in &auth.signed_headers {
        let value = header(name).ok_or(SigV4Error::Header("a signed header"))?;
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let empty_payload_hash =
        hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"").as_ref());
    let canonical_request = format!(
        "POST\n/\n{}\n{canonical_headers}\n{}\n{empty_payload_hash}",
        canonical_query(query),
        auth.signed_headers.join(";"),
    );
    let scope = format!(
        "{}/{}/{}/{}",
        auth.date, auth.region, auth.service, auth.terminator
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical_request.as_bytes())
                .as_ref()
        )
    );
    let mut key = hmac_sha256(
        format!("AWS4{}", credential.secret_access_key).as_bytes(),
        auth.date.as_bytes(),
    );
    for part in [auth.region.as_str(), "sts", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let expected = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
    if aws_lc_rs::constant_time::verify_slices_are_equal(
        expected.as_bytes(),
        auth.signature.as_bytes(),
    )
    .is_err()
    {
        return Err(SigV4Error::Signature);
    }
    if let Some(expected) = &credential.session_token {
        let presented = header("x-amz-security-token").ok_or(SigV4Error::SecurityToken)?;
        let signed = auth
            .signed_headers
            .iter()
            .any(|h| h == "x-amz-security-token");
        if !signed
            || aws_lc_rs::constant_time::verify_slices_are_equal(
                presented.as_bytes(),
                expected.expose().as_bytes(),
            )
            .is_err()
        {
            return Err(SigV4Error::SecurityToken);
        }
    }
    Ok(credential)
}

/// Splits `https://sts[.region].amazonaws.com[/]?query` into host and query, checking both.
fn split_url(url: &str) -> Result<(&str, &str), SigV4Error> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| SigV4Error::NotGetCallerIdentity("not https".into()))?;
    let (host, query) = rest
        .split_once('?')
        .ok_or_else(|| SigV4Error::NotGetCallerIdentity("no query".into()))?;
    let host = host.strip_suffix('/').unwrap_or(host);
    let is_sts = host == "sts.amazonaws.com"
        || host
            .strip_prefix("sts.")
            .and_then(|h| h.strip_suffix(".amazonaws.com"))
            .is_some_and(|region| !region.is_empty() && !region.contains('.'));
    if !is_sts {
        return Err(SigV4Error::NotGetCallerIdentity(format!("host {host}")));
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let has = |k: &str, v: &str| pairs.iter().any(|(pk, pv)| pk == k && pv == v);
    if !has("Action", "GetCallerIdentity") || !has("Version", "2011-06-15") {
        return Err(SigV4Error::NotGetCallerIdentity("query".into()));
    }
    Ok((host, query))
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| {
            (
                utf8_percent_encode(&k, SIGV4_ESCAPE).to_string(),
                utf8_percent_encode(&v, SIGV4_ESCAPE).to_string(),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

struct Authorization {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
    terminator: String,
    signed_headers: Vec<String>,
    signature: String,
}

impl Authorization {
    fn parse(value: &str) -> Option<Self> {
        let params = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
        let mut credential = None;
        let mut signed_headers = None;
        let mut signature = None;
        for part in params.split(',') {
            let (key, value) = part.trim().split_once('=')?;
            match key {
                "Credential" => credential = Some(value),
                "SignedHeaders" => signed_headers = Some(value),
                "Signature" => signature = Some(value),
                _ => {}
            }
        }
        let mut scope = credential?.split('/');
        let parsed = Self {
            access_key_id: scope.next()?.to_owned(),
            date: scope.next()?.to_owned(),
            region: scope.next()?.to_owned(),
            service: scope.next()?.to_owned(),
            terminator: scope.next()?.to_owned(),
            signed_headers: signed_headers?
                .split(';')
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            signature: signature?.to_owned(),
        };
        (scope.next().is_none() && parsed.date.len() == 8).then_some(parsed)
    }
}

/// `YYYYMMDDTHHMMSSZ` to Unix seconds.
fn parse_amz_date(value: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(value, &format)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_query_sorts_and_escapes() {
        assert_eq!(
            canonical_query("Version=2011-06-15&Action=GetCallerIdentity"),
            "Action=GetCallerIdentity&Version=2011-06-15"
        );
        assert_eq!(canonical_query("a=x%20y&b=c/d"), "a=x%20y&b=c%2Fd");
    }

    #[test]
    fn only_aws_sts_get_caller_identity_is_accepted() {
        assert!(
            split_url(
                "https://sts.us-east-1.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
            )
            .is_ok()
        );
        assert!(
            split_url("https://sts.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15")
                .is_ok()
        );
        assert!(
            split_url("http://sts.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15")
                .is_err()
        );
        assert!(
            split_url("https://evil.example.com?Action=GetCallerIdentity&Version=2011-06-15")
                .is_err()
        );
        assert!(
            split_url("https://sts.amazonaws.com?Action=AssumeRole&Version=2011-06-15").is_err()
        );
    }

    #[test]
    fn amz_dates_parse() {
        assert_eq!(parse_amz_date("20260101T000000Z"), Some(1_767_225_600));
        assert_eq!(parse_amz_date("2026-01-01"), None);
    }

    /// The signing-key derivation example of AWS's SigV4 documentation.
    #[test]
    fn signing_key_matches_the_aws_documentation_example() {
        let mut key = hmac_sha256(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20120215");
        for part in ["us-east-1", "iam", "aws4_request"] {
            key = hmac_sha256(&key, part.as_bytes());
        }
        assert_eq!(
            hex(&key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }
}
