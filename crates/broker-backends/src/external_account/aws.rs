//! The `aws` credential source: a workload on AWS proves itself with a SigV4-signed
//! `GetCallerIdentity` request made with its AWS credentials (google-protocols.md §6).
//!
//! ```json
//! "credential_source": {
//!   "environment_id": "aws1",
//!   "region_url": "http://169.254.169.254/latest/meta-data/placement/availability-zone",
//!   "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials",
//!   "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
//!   "imdsv2_session_token_url": "http://169.254.169.254/latest/api/token"
//! }
//! ```
//!
//! See <https://cloud.google.com/iam/docs/workload-identity-federation-with-other-clouds>.

use std::fmt;
use std::sync::Mutex;

use broker_core::{Secret, SourceError};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use zeroize::Zeroizing;

use super::SubjectContext;
use super::fields::Fields;
use super::sigv4::{self, AwsCredentials};
use crate::BackendError;
use crate::endpoints::{PlainHttp, check_url};
use crate::env::{
    AWS_ACCESS_KEY_ID, AWS_DEFAULT_REGION, AWS_REGION, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
};
use crate::http::{Attempt, HttpResponse};

/// The lifetime asked for an IMDSv2 session token, in seconds (Google's clients ask for 300).
const IMDSV2_TTL_SECONDS: &str = "300";
/// The header of the IMDSv2 session token's lifetime.
const IMDSV2_TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
/// The header carrying the IMDSv2 session token.
const IMDSV2_TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";

/// An AWS workload's proof: its region and credentials from the environment or the EC2
/// instance metadata service (IMDSv2 when configured), signed into a `GetCallerIdentity`
/// request at every exchange (the signature is dated).
pub(crate) struct AwsSource {
    verification_url: String,
    region_url: Option<String>,
    credentials_url: Option<String>,
    imdsv2_url: Option<String>,
    /// The region the metadata service gave, kept once known (as Google's clients keep it).
    region: Mutex<Option<String>>,
}

impl fmt::Debug for AwsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsSource")
            .field("regional_cred_verification_url", &self.verification_url)
            .field("region_url", &self.region_url)
            .field("url", &self.credentials_url)
            .field("imdsv2_session_token_url", &self.imdsv2_url)
            .finish_non_exhaustive()
    }
}

impl AwsSource {
    /// Reads the `aws` source: `environment_id` (`aws1`: `aws` and version 1, as Google's
    /// clients require), `regional_cred_verification_url` (required; an `https` URL with a
    /// host once `{region}` is replaced: it is signed, never called), and the optional
    /// metadata URLs `region_url`, `url` and `imdsv2_session_token_url` (`https`, or plain
    /// `http` to a loopback or link-local host such as `169.254.169.254`, or to
    /// `fd00:ec2::254`).
    pub(crate) fn parse(source: &mut Fields<'_>) -> Result<Self, BackendError> {
        let environment = source.required_string("credential_source.environment_id")?;
        let version = environment
            .strip_prefix("aws")
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .map(|digits| digits.trim_start_matches('0'));
        match version {
            Some("1") => {}
            Some(_) => {
                return Err(source.error(
                    "credential_source.environment_id",
                    "names an AWS version this broker does not support (only aws1)",
                ));
            }
            None => {
                return Err(source.error("credential_source.environment_id", "must be \"aws1\""));
            }
        }
        let verification_url =
            source.required_string("credential_source.regional_cred_verification_url")?;
        let example = verification_url.replace("{region}", "us-east-1");
        match reqwest::Url::parse(&example) {
            Ok(url)
                if url.scheme() == "https"
                    && url.host_str().is_some_and(|h| !h.is_empty())
                    && url.username().is_empty()
                    && url.password().is_none() => {}
            _ => {
                return Err(source.error(
                    "credential_source.regional_cred_verification_url",
                    "must be an https URL with a host and no user name or password (such as https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15)",
                ));
            }
        }
        let mut metadata_url = |path: &'static str| -> Result<Option<String>, BackendError> {
            let Some(url) = source.string(path)? else {
                return Ok(None);
            };
            check_url(&url, PlainHttp::LoopbackOrInstanceMetadata)
                .map_err(|reason| source.error(path, &reason))?;
            Ok(Some(url))
        };
        let region_url = metadata_url("credential_source.region_url")?;
        let credentials_url = metadata_url("credential_source.url")?;
        let imdsv2_url = metadata_url("credential_source.imdsv2_session_token_url")?;
        Ok(Self {
            verification_url,
            region_url,
            credentials_url,
            imdsv2_url,
            region: Mutex::new(None),
        })
    }

    /// The signed `GetCallerIdentity` request, serialized as Google's subject token (see
    /// [`sigv4`]), dated by the context's clock:
    ///
    /// 1. the region: `AWS_REGION`, else `AWS_DEFAULT_REGION`, else the region the metadata
    ///    service gave before, else `GET region_url` (an availability zone such as
    ///    `us-east-2b`) without its last character;
    /// 2. the credentials: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and
    ///    `AWS_SESSION_TOKEN` when set), else `GET url` (the role's name) then
    ///    `GET url/<role>` (`{"AccessKeyId", "SecretAccessKey", "Token"}`);
    /// 3. when the metadata service is asked anything and `imdsv2_session_token_url` is set,
    ///    first `PUT imdsv2_session_token_url` with `X-aws-ec2-metadata-token-ttl-seconds:
    ///    300`, and its answer sent as `X-aws-ec2-metadata-token` with each request.
    ///
    /// Variables come from the context's environment. Every metadata answer must be HTTP 200
    /// (5xx, 408 and 429 are retried); the role's name is used without the whitespace around
    /// it (Python google-auth keeps it, which a trailing newline would break).
    ///
    /// # Errors
    ///
    /// - the errors of [`crate::HttpClient::send_with_retry`], naming the metadata host;
    ///   [`SourceError::Unavailable`] with the HTTP status for another answer than 200;
    /// - [`SourceError::Malformed`] for an unusable answer (a region that is not one,
    ///   credentials without `AccessKeyId` or `SecretAccessKey`), never quoting it;
    /// - [`SourceError::Internal`] when the configuration cannot give a region (no variable,
    ///   no `region_url`) or credentials (no variables, no `url`), or names an invalid region.
    pub(crate) async fn subject_token(
        &self,
        context: &SubjectContext<'_>,
    ) -> Result<Secret, SourceError> {
        let env = context.env;
        let env_region = env.get(AWS_REGION).or_else(|| env.get(AWS_DEFAULT_REGION));
        let env_credentials = match (env.get(AWS_ACCESS_KEY_ID), env.get(AWS_SECRET_ACCESS_KEY)) {
            (Some(access_key_id), Some(secret)) => Some(AwsCredentials {
                access_key_id,
                secret_access_key: Secret::new(secret),
                session_token: env.get(AWS_SESSION_TOKEN).map(Secret::new),
            }),
            _ => None,
        };
        let known_region = env_region.clone().or_else(|| self.known_region());
        let session = match &self.imdsv2_url {
            Some(url) if known_region.is_none() || env_credentials.is_none() => {
                Some(self.imdsv2_session(context, url).await?)
            }
            _ => None,
        };
        let region = match known_region {
            Some(region) => region,
            None => self.metadata_region(context, session.as_ref()).await?,
        };
        if !is_region(&region) {
            return Err(SourceError::Internal(format!(
                "{AWS_REGION} or {AWS_DEFAULT_REGION} is not an AWS region"
            )));
        }
        let credentials = match env_credentials {
            Some(credentials) => credentials,
            None => self.metadata_credentials(context, session.as_ref()).await?,
        };
        let url = self.verification_url.replace("{region}", &region);
        let amz_date = sigv4::amz_date(context.clock.now())
            .map_err(|e| SourceError::Internal(format!("cannot date the AWS signature: {e}")))?;
        let token = sigv4::subject_token(&url, &region, &credentials, context.audience, &amz_date)
            .map_err(|problem| {
                SourceError::Internal(format!(
                    "credential_source.regional_cred_verification_url {problem}"
                ))
            })?;
        tracing::debug!(
            region = %region,
            access_key_id = %credentials.access_key_id,
            session_token = credentials.session_token.as_ref().map(Secret::fingerprint),
            subject_token = %token.fingerprint(),
            "AWS GetCallerIdentity request signed"
        );
        Ok(token)
    }

    /// The region the metadata service gave before.
    fn known_region(&self) -> Option<String> {
        self.region
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `PUT imdsv2_session_token_url`: an IMDSv2 session token.
    async fn imdsv2_session(
        &self,
        context: &SubjectContext<'_>,
        url: &str,
    ) -> Result<Secret, SourceError> {
        let body = metadata_call(context, Method::PUT, url, None, "IMDSv2 session token").await?;
        Ok(Secret::new(body.as_str()))
    }

    /// `GET region_url` without its last character, kept for the next exchanges.
    async fn metadata_region(
        &self,
        context: &SubjectContext<'_>,
        session: Option<&Secret>,
    ) -> Result<String, SourceError> {
        let Some(url) = &self.region_url else {
            return Err(SourceError::Internal(format!(
                "the AWS region is unknown: neither {AWS_REGION}, {AWS_DEFAULT_REGION} nor credential_source.region_url is set"
            )));
        };
        let zone = metadata_call(context, Method::GET, url, session, "availability zone").await?;
        let mut region = zone.to_string();
        region.pop();
        if !is_region(&region) {
            return Err(SourceError::Malformed {
                upstream: crate::upstream_host(url),
                message: "the AWS metadata service answered an availability zone that is not one"
                    .to_owned(),
            });
        }
        *self.region.lock().unwrap_or_else(|e| e.into_inner()) = Some(region.clone());
        Ok(region)
    }

    /// The credentials of the instance's role: `GET url`, then `GET url/<role>`.
    async fn metadata_credentials(
        &self,
        context: &SubjectContext<'_>,
        session: Option<&Secret>,
    ) -> Result<AwsCredentials, SourceError> {
        let Some(url) = &self.credentials_url else {
            return Err(SourceError::Internal(format!(
                "no AWS credentials: neither {AWS_ACCESS_KEY_ID} and {AWS_SECRET_ACCESS_KEY} nor credential_source.url is set"
            )));
        };
        let upstream = crate::upstream_host(url);
        let malformed = |problem: &str| SourceError::Malformed {
            upstream: upstream.clone(),
            message: format!("the AWS metadata service answered {problem}"),
        };
        let role = metadata_call(context, Method::GET, url, session, "role name").await?;
        let role = role.trim();
        if role.is_empty() {
            return Err(malformed("an empty role name"));
        }
        let role_url = format!("{url}/{role}");
        let body =
            metadata_call(context, Method::GET, &role_url, session, "role credentials").await?;
        let mut value: Value = serde_json::from_str(&body)
            .map_err(|_| malformed("role credentials that are not JSON"))?;
        let mut take = |name: &str| match value.get_mut(name).map(Value::take) {
            Some(Value::String(s)) if !s.is_empty() => Some(Secret::new(s)),
            _ => None,
        };
        let access_key_id = take("AccessKeyId")
            .ok_or_else(|| malformed("role credentials without an AccessKeyId"))?;
        let secret_access_key = take("SecretAccessKey")
            .ok_or_else(|| malformed("role credentials without a SecretAccessKey"))?;
        let session_token = take("Token");
        Ok(AwsCredentials {
            access_key_id: access_key_id.expose().to_owned(),
            secret_access_key,
            session_token,
        })
    }
}

/// A plausible AWS region: 1 to 64 of `[a-z0-9-]`, such as `us-east-2`.
fn is_region(region: &str) -> bool {
    (1..=64).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// One call to the AWS instance metadata service (`what` names it in messages): `PUT` asks
/// for an IMDSv2 session token, `GET` sends `session` when there is one. The body is a
/// credential and is never quoted.
async fn metadata_call(
    context: &SubjectContext<'_>,
    method: Method,
    url: &str,
    session: Option<&Secret>,
    what: &'static str,
) -> Result<Zeroizing<String>, SourceError> {
    let operation = if method == Method::PUT {
        "aws.imdsv2_token"
    } else {
        "aws.metadata"
    };
    context
        .http
        .send_with_retry(
            operation,
            context.deadline,
            |client| {
                let request = client.request(method.clone(), url);
                match (&method, session) {
                    (&Method::PUT, _) => request.header(IMDSV2_TTL_HEADER, IMDSV2_TTL_SECONDS),
                    (_, Some(session)) => request.header(IMDSV2_TOKEN_HEADER, session.expose()),
                    _ => request,
                }
            },
            |response| interpret(response, what),
        )
        .await
}

/// A metadata answer: the body of a 200; transient statuses retried; anything else refused.
fn interpret(response: HttpResponse, what: &str) -> Attempt<Zeroizing<String>> {
    let HttpResponse {
        upstream,
        status,
        body,
        ..
    } = response;
    let body = Zeroizing::new(body);
    if status != StatusCode::OK {
        let message = format!(
            "the AWS metadata service answered HTTP {} for the {what}",
            status.as_u16()
        );
        return super::not_ok(upstream, status, message);
    }
    match std::str::from_utf8(&body) {
        Ok(text) => Attempt::Done(Zeroizing::new(text.to_owned())),
        Err(_) => Attempt::Fail(SourceError::Malformed {
            upstream,
            message: format!("the AWS metadata service answered a {what} that is not UTF-8"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(source: Value) -> Result<AwsSource, BackendError> {
        let Value::Object(object) = source else {
            panic!("object");
        };
        let mut fields = Fields::new(object, "aws.json", "credential_source");
        let parsed = AwsSource::parse(&mut fields)?;
        fields.finish()?;
        Ok(parsed)
    }

    fn source() -> Value {
        json!({
            "environment_id": "aws1",
            "region_url": "http://169.254.169.254/latest/meta-data/placement/availability-zone",
            "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials",
            "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
            "imdsv2_session_token_url": "http://169.254.169.254/latest/api/token",
        })
    }

    #[test]
    fn gclouds_aws_source_parses_and_bad_fields_are_named() {
        let parsed = parse(source()).expect("gcloud's source");
        assert_eq!(
            parsed.credentials_url.as_deref(),
            Some("http://169.254.169.254/latest/meta-data/iam/security-credentials")
        );
        let with = |field: &str, value: Value| {
            let mut source = source();
            source[field] = value;
            source
        };
        for (source, expected) in [
            (with("environment_id", json!("aws2")), "only aws1"),
            (with("environment_id", json!("azure1")), "must be \"aws1\""),
            (
                with("environment_id", Value::Null),
                "environment_id` is missing",
            ),
            (
                with(
                    "regional_cred_verification_url",
                    json!("http://sts.{region}.amazonaws.com"),
                ),
                "must be an https URL",
            ),
            (
                with("regional_cred_verification_url", Value::Null),
                "regional_cred_verification_url` is missing",
            ),
            (
                with("url", json!("http://metadata.example.com/creds")),
                "credential_source.url",
            ),
            (
                with(
                    "regional_cred_verification_url",
                    json!("https://k:s@sts.{region}.amazonaws.com"),
                ),
                "must be an https URL with a host and no user name",
            ),
            (
                with("url", json!("http://k:s@169.254.169.254/creds")),
                "must not hold a user name or password",
            ),
            (
                with("region_url", json!("ftp://169.254.169.254/az")),
                "credential_source.region_url",
            ),
            (
                with("file", json!("/t")),
                "unknown field `credential_source.file`",
            ),
        ] {
            let error = parse(source).expect_err(expected).to_string();
            assert!(error.contains(expected), "{error}");
        }
        assert!(parse(with("environment_id", json!("aws01"))).is_ok());
    }

    #[test]
    fn regions_are_plain() {
        for good in ["us-east-2", "eu-central-1", "us-gov-west-1"] {
            assert!(is_region(good), "{good}");
        }
        for bad in ["", "us-east-2/x", "US-EAST-2", "us east", "a.b"] {
            assert!(!is_region(bad), "{bad}");
        }
    }
}
