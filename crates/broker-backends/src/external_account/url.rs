//! The `url` credential source: a subject token served over HTTP, such as Azure's instance
//! metadata identity endpoint or a local token agent (google-protocols.md §2.4).
//!
//! ```json
//! "credential_source": {
//!   "url": "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=...",
//!   "headers": {"Metadata": "True"},
//!   "format": {"type": "json", "subject_token_field_name": "access_token"}
//! }
//! ```

use std::fmt;

use broker_core::{Secret, SourceError};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use zeroize::Zeroizing;

use super::fields::Fields;
use super::format::Format;
use super::{MAX_SUBJECT_TOKEN_SOURCE_BYTES, SubjectContext};
use crate::BackendError;
use crate::endpoints::{PlainHttp, check_url};
use crate::http::{Attempt, HttpResponse};

/// A subject token fetched with `GET url` and the configured headers for every exchange, in
/// the configured [`Format`]. The headers' values may be secrets: `Debug` shows their names
/// only, and they are marked sensitive for reqwest.
pub(crate) struct UrlSource {
    url: reqwest::Url,
    headers: HeaderMap,
    format: Format,
}

impl fmt::Debug for UrlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlSource")
            .field("url", &self.url.as_str())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("format", &self.format)
            .finish()
    }
}

impl UrlSource {
    /// Reads `credential_source.url`, `credential_source.headers` and
    /// `credential_source.format`. The URL must be `https`, or plain `http` to a loopback or
    /// link-local host (an instance metadata server or a local agent): the answer is a
    /// credential.
    pub(crate) fn parse(source: &mut Fields<'_>) -> Result<Self, BackendError> {
        let url = source.required_string("credential_source.url")?;
        let url = check_url(&url, PlainHttp::LoopbackOrInstanceMetadata)
            .map_err(|reason| source.error("credential_source.url", &reason))?;
        let mut headers = HeaderMap::new();
        for (name, value) in source
            .string_map("credential_source.headers")?
            .unwrap_or_default()
        {
            let value = Zeroizing::new(value);
            let (Ok(name), Ok(mut value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) else {
                return Err(source.error(
                    "credential_source.headers",
                    "has a header name or value that HTTP does not allow",
                ));
            };
            value.set_sensitive(true);
            headers.append(name, value);
        }
        let format = Format::parse(source)?;
        Ok(Self {
            url,
            headers,
            format,
        })
    }

    /// `GET url` with the headers; the answer must be HTTP 200 (as Python google-auth wants;
    /// Go takes any 2xx) with at most [`MAX_SUBJECT_TOKEN_SOURCE_BYTES`] of body holding a
    /// token in the configured format. 5xx, 408 and 429 are retried.
    ///
    /// # Errors
    ///
    /// The errors of [`crate::HttpClient::send_with_retry`], naming the URL's host;
    /// [`SourceError::Unavailable`] with the HTTP status for any other answer than 200;
    /// [`SourceError::Malformed`] for a body without a token. The body is never quoted.
    pub(crate) async fn subject_token(
        &self,
        context: &SubjectContext<'_>,
    ) -> Result<Secret, SourceError> {
        let token = context
            .http
            .send_with_retry(
                "credential_source.url",
                context.deadline,
                |client| client.get(self.url.clone()).headers(self.headers.clone()),
                |response| self.interpret(response),
            )
            .await?;
        tracing::debug!(
            url = %self.url,
            subject_token = %token.fingerprint(),
            "subject token fetched from a URL"
        );
        Ok(token)
    }

    fn interpret(&self, response: HttpResponse) -> Attempt<Secret> {
        let HttpResponse {
            upstream,
            status,
            body,
            ..
        } = response;
        let body = Zeroizing::new(body);
        if status != StatusCode::OK {
            let message = format!(
                "the subject token URL answered HTTP {} (200 was expected)",
                status.as_u16()
            );
            return super::not_ok(upstream, status, message);
        }
        let malformed = |problem: &str| {
            Attempt::Fail(SourceError::Malformed {
                upstream: upstream.clone(),
                message: format!("the answer of the subject token URL {problem}"),
            })
        };
        if body.len() > MAX_SUBJECT_TOKEN_SOURCE_BYTES {
            return malformed(&format!(
                "is larger than {MAX_SUBJECT_TOKEN_SOURCE_BYTES} bytes"
            ));
        }
        let Ok(text) = std::str::from_utf8(&body) else {
            return malformed("is not UTF-8");
        };
        match self.format.extract(text) {
            Ok(token) => Attempt::Done(token),
            Err(problem) => malformed(&problem),
        }
    }
}
