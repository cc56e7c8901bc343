//! AWS Signature Version 4 of the `GetCallerIdentity` request an `aws` credential source sends
//! to Google as its subject token, and its serialization, byte for byte as Python google-auth
//! makes them (google-protocols.md §6.2, §6.3).
//!
//! - The request is `POST` of the `regional_cred_verification_url` (its `{region}` replaced)
//!   with an empty body. The signed headers are `host` (the URL's host name, lower case,
//!   without a port), `x-amz-date` (`YYYYMMDDTHHMMSSZ`, UTC) and, with temporary credentials,
//!   `x-amz-security-token`. The service is the host's first label, the scope
//!   `<yyyymmdd>/<region>/<service>/aws4_request`. The canonical query has its keys and
//!   values decoded, escaped again (all but `A-Za-z0-9-_.~`, upper-case hex), empty values
//!   dropped and sorted.
//! - `x-goog-cloud-target-resource` (the audience) is added after signing, so it is not
//!   signed (Go signs it; STS accepts both).
//! - The token is `{"headers":[{"key":K,"value":V},...],"method":"POST","url":URL}` as compact
//!   JSON with sorted keys and non-ASCII escaped (`json.dumps(separators=(",", ":"),
//!   sort_keys=True)`), headers in the order `Authorization`, `host`, `x-amz-date`,
//!   `x-amz-security-token`, `x-goog-cloud-target-resource`, then percent-encoded as
//!   `urllib.parse.quote` does (all but `A-Za-z0-9-_.~/`).
//!
//! See <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv.html> and
//! <https://cloud.google.com/iam/docs/workload-identity-federation-with-other-clouds>.

use std::fmt::Write as _;

use aws_lc_rs::{digest, hmac};
use broker_core::Secret;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use zeroize::Zeroizing;

/// The signing algorithm.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The credential scope's terminator.
const REQUEST_TYPE: &str = "aws4_request";
/// SigV4's escaping: everything but the unreserved `A-Za-z0-9-_.~`.
const SIGV4_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// `urllib.parse.quote`'s escaping with its default `safe="/"`.
const QUOTE_ESCAPE: &AsciiSet = &SIGV4_ESCAPE.remove(b'/');

/// AWS security credentials. `Debug` shows the access key id only.
pub(crate) struct AwsCredentials {
    /// The access key id (`AKIA...`, `ASIA...`): not a secret.
    pub(crate) access_key_id: String,
    /// The secret access key.
    pub(crate) secret_access_key: Secret,
    /// The session token of temporary credentials.
    pub(crate) session_token: Option<Secret>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("session_token", &self.session_token.is_some())
            .finish_non_exhaustive()
    }
}

/// The date and time of a signature: `YYYYMMDDTHHMMSSZ`; its first 8 characters are the
/// date stamp of the scope.
pub(crate) fn amz_date(time: std::time::SystemTime) -> Result<String, String> {
    let time = time::OffsetDateTime::from(time);
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time.format(&format).map_err(|e| e.to_string())
}

/// A canonical request's parts besides its method and body hash.
struct Canonical {
    /// The request, as SigV4 hashes it.
    request: String,
    /// `host;x-amz-date;...`.
    signed_headers: String,
}

/// The canonical request of `method` at `uri`?`query` with `headers` (lower-case names,
/// values as sent, in any order) and a body hashing to `payload_hash`.
fn canonical_request(
    method: &str,
    uri: &str,
    query: &str,
    headers: &[(&str, &str)],
    payload_hash: &str,
) -> Canonical {
    let mut sorted: Vec<(&str, &str)> = headers.to_vec();
    sorted.sort_unstable();
    let mut canonical_headers = String::new();
    for (name, value) in &sorted {
        let _ = writeln!(canonical_headers, "{name}:{value}");
    }
    let signed_headers = sorted
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(";");
    Canonical {
        request: format!(
            "{method}\n{uri}\n{query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
        ),
        signed_headers,
    }
}

/// The canonical form of a raw query string: pairs decoded (`+` as a space), those with an
/// empty value dropped (as Python's `parse_qs` does), keys and values escaped again, sorted by
/// key and then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| {
            (
                utf8_percent_encode(&key, SIGV4_ESCAPE).to_string(),
                utf8_percent_encode(&value, SIGV4_ESCAPE).to_string(),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The hex SHA-256 of `data`.
fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// The hex signature of `string_to_sign` with the key derived from `secret` for
/// `date_stamp`/`region`/`service`.
fn signature(
    secret: &Secret,
    date_stamp: &str,
    region: &str,
    service: &str,
    string_to_sign: &str,
) -> String {
    let initial = Zeroizing::new(format!("AWS4{}", secret.expose()));
    let mut key = Zeroizing::new(
        hmac_sha256(initial.as_bytes(), date_stamp.as_bytes())
            .as_ref()
            .to_vec(),
    );
    for part in [region, service, REQUEST_TYPE] {
        key = Zeroizing::new(hmac_sha256(&key, part.as_bytes()).as_ref().to_vec());
    }
    hex(hmac_sha256(&key, string_to_sign.as_bytes()).as_ref())
}

/// The `Authorization` header of a request: its canonical form hashed into the string to
/// sign at `amz_date`, signed with `credentials` for `region` and `service`.
fn authorization(
    credentials: &AwsCredentials,
    amz_date: &str,
    region: &str,
    service: &str,
    canonical: &Canonical,
) -> String {
    let date_stamp = amz_date.get(..8).unwrap_or(amz_date);
    let scope = format!("{date_stamp}/{region}/{service}/{REQUEST_TYPE}");
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.request.as_bytes())
    );
    let signature = signature(
        &credentials.secret_access_key,
        date_stamp,
        region,
        service,
        &string_to_sign,
    );
    format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={signature}",
        credentials.access_key_id, canonical.signed_headers
    )
}

/// The subject token of an `aws` source: `POST url` (the verification URL with its region
/// already in it) signed with `credentials` for `region` at `amz_date`, with
/// `x-goog-cloud-target-resource: target_resource` (the audience), serialized as Python
/// google-auth does (see the module). `url` must be `https` with a host.
pub(crate) fn subject_token(
    url: &str,
    region: &str,
    credentials: &AwsCredentials,
    target_resource: &str,
    amz_date: &str,
) -> Result<Secret, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
    let host = parsed
        .host_str()
        .filter(|host| !host.is_empty() && parsed.scheme() == "https")
        .ok_or("is not an https URL with a host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let service = host.split('.').next().unwrap_or_default().to_owned();
    let uri = match parsed.path() {
        "" => "/",
        path => path,
    };
    let mut headers: Vec<(&str, &str)> = vec![("host", &host), ("x-amz-date", amz_date)];
    if let Some(token) = &credentials.session_token {
        headers.push(("x-amz-security-token", token.expose()));
    }
    let canonical = canonical_request(
        "POST",
        uri,
        &canonical_query(parsed.query().unwrap_or_default()),
        &headers,
        &sha256_hex(b""),
    );
    let authorization = authorization(credentials, amz_date, region, &service, &canonical);
    let mut sent: Vec<(&str, &str)> = vec![
        ("Authorization", &authorization),
        ("host", &host),
        ("x-amz-date", amz_date),
    ];
    if let Some(token) = &credentials.session_token {
        sent.push(("x-amz-security-token", token.expose()));
    }
    sent.push(("x-goog-cloud-target-resource", target_resource));

    let mut json = Zeroizing::new(String::from("{\"headers\":["));
    for (i, (key, value)) in sent.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str("{\"key\":");
        python_json_string(key, &mut json);
        json.push_str(",\"value\":");
        python_json_string(value, &mut json);
        json.push('}');
    }
    json.push_str("],\"method\":\"POST\",\"url\":");
    python_json_string(url, &mut json);
    json.push('}');
    Ok(Secret::new(
        utf8_percent_encode(&json, QUOTE_ESCAPE).to_string(),
    ))
}

/// Appends `text` as a JSON string the way Python's `json.dumps` writes it by default
/// (`ensure_ascii`): `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, and `\u00xx` for other control
/// characters, DEL and everything beyond ASCII (UTF-16, lower-case hex).
fn python_json_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of AWS's SigV4 documentation ("Examples of the complete Signature Version 4
    /// signing process"): `GET https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08`
    /// at 2015-08-30T12:36:00Z with the documentation's example secret.
    #[test]
    fn signs_the_aws_documentation_example() {
        let credentials = AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: None,
        };
        let canonical = canonical_request(
            "GET",
            "/",
            &canonical_query("Version=2010-05-08&Action=ListUsers"),
            &[
                ("x-amz-date", "20150830T123600Z"),
                ("host", "iam.amazonaws.com"),
                (
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
            ],
            &sha256_hex(b""),
        );
        assert_eq!(
            sha256_hex(canonical.request.as_bytes()),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        assert_eq!(canonical.signed_headers, "content-type;host;x-amz-date");
        assert_eq!(
            authorization(
                &credentials,
                "20150830T123600Z",
                "us-east-1",
                "iam",
                &canonical
            ),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn dates_queries_and_json_follow_aws_and_python() {
        let at = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600);
        assert_eq!(amz_date(at).expect("date"), "20260101T000000Z");
        assert_eq!(
            canonical_query("Version=2011-06-15&Action=GetCallerIdentity"),
            "Action=GetCallerIdentity&Version=2011-06-15"
        );
        assert_eq!(
            canonical_query("b=x+y&a=%2F&empty=&a=~ok&bare"),
            "a=%2F&a=~ok&b=x%20y"
        );
        let mut out = String::new();
        python_json_string("a\"b\\c\n\u{1}\u{7f}é😀/", &mut out);
        assert_eq!(out, r#""a\"b\\c\n\u0001\u007f\u00e9\ud83d\ude00/""#);
    }

    /// Subject tokens made by Python google-auth 2.48.0 (`aws.Credentials.retrieve_subject_token`
    /// with `AWS_*` variables and `_helpers.utcnow` fixed at 2026-01-01T12:34:56Z): ours must
    /// be the same bytes.
    #[test]
    fn subject_tokens_are_byte_for_byte_pythons() {
        const AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/aws-pool/providers/aws";
        const URL: &str =
            "https://sts.us-east-2.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15";
        const PYTHON_WITHOUT_SESSION: &str = "%7B%22headers%22%3A%5B%7B%22key%22%3A%22Authorization%22%2C%22value%22%3A%22AWS4-HMAC-SHA256%20Credential%3DAKIAIOSFODNN7EXAMPLE/20260101/us-east-2/sts/aws4_request%2C%20SignedHeaders%3Dhost%3Bx-amz-date%2C%20Signature%3Da03914001ab5a8f0cbd9828e98aead0529a17a5a120349f46c2cc81d8aef43bb%22%7D%2C%7B%22key%22%3A%22host%22%2C%22value%22%3A%22sts.us-east-2.amazonaws.com%22%7D%2C%7B%22key%22%3A%22x-amz-date%22%2C%22value%22%3A%2220260101T123456Z%22%7D%2C%7B%22key%22%3A%22x-goog-cloud-target-resource%22%2C%22value%22%3A%22//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/aws-pool/providers/aws%22%7D%5D%2C%22method%22%3A%22POST%22%2C%22url%22%3A%22https%3A//sts.us-east-2.amazonaws.com%3FAction%3DGetCallerIdentity%26Version%3D2011-06-15%22%7D";
        const PYTHON_WITH_SESSION: &str = "%7B%22headers%22%3A%5B%7B%22key%22%3A%22Authorization%22%2C%22value%22%3A%22AWS4-HMAC-SHA256%20Credential%3DAKIAIOSFODNN7EXAMPLE/20260101/us-east-2/sts/aws4_request%2C%20SignedHeaders%3Dhost%3Bx-amz-date%3Bx-amz-security-token%2C%20Signature%3D46f15207cf4685c8fcc7b5b20c37ef5d25c17420ea3fbb61e352e062ebb8c8fd%22%7D%2C%7B%22key%22%3A%22host%22%2C%22value%22%3A%22sts.us-east-2.amazonaws.com%22%7D%2C%7B%22key%22%3A%22x-amz-date%22%2C%22value%22%3A%2220260101T123456Z%22%7D%2C%7B%22key%22%3A%22x-amz-security-token%22%2C%22value%22%3A%22FwoGZXIvYXdzE%2B/session%20token%20%5Cu00e9%22%7D%2C%7B%22key%22%3A%22x-goog-cloud-target-resource%22%2C%22value%22%3A%22//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/aws-pool/providers/aws%22%7D%5D%2C%22method%22%3A%22POST%22%2C%22url%22%3A%22https%3A//sts.us-east-2.amazonaws.com%3FAction%3DGetCallerIdentity%26Version%3D2011-06-15%22%7D";
        let credentials = |session: Option<&str>| AwsCredentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: session.map(Secret::new),
        };
        for (session, python) in [
            (None, PYTHON_WITHOUT_SESSION),
            (
                Some("FwoGZXIvYXdzE+/session token \u{e9}"),
                PYTHON_WITH_SESSION,
            ),
        ] {
            let token = subject_token(
                URL,
                "us-east-2",
                &credentials(session),
                AUDIENCE,
                "20260101T123456Z",
            )
            .expect("signed");
            assert_eq!(token.expose(), python, "{session:?}");
        }
        for bad in [
            "http://sts.amazonaws.com?Action=GetCallerIdentity",
            "not a url",
        ] {
            assert!(
                subject_token(
                    bad,
                    "us-east-1",
                    &credentials(None),
                    AUDIENCE,
                    "20260101T123456Z"
                )
                .is_err(),
                "{bad}"
            );
        }
    }
}
