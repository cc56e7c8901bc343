//! The one HTTP client of the backends, and bounded, jittered retries of transient failures.
//!
//! Every upstream call goes through [`HttpClient::send_with_retry`]: it owns the per-attempt
//! timeout, the classification of transport failures, `Retry-After`, the backoff and the
//! deadline, so the flow files only say how to build a request and how to read a response.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use broker_core::SourceError;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;

use crate::BackendError;

/// The `User-Agent` of every request: `token-broker/<version>`.
pub const USER_AGENT: &str = concat!("token-broker/", env!("CARGO_PKG_VERSION"));

/// The largest response body read. Google's largest token answers (STS tokens up to 12 KiB)
/// are far below it; anything bigger is not a token response and is not buffered.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// How transient failures are retried. Backoff is "full jitter": before retry `n` (1-based)
/// the client waits a uniformly random time in `[0, min(max_backoff, initial_backoff * 2^(n-1))]`,
/// or at least what `Retry-After` asked for.
///
/// Deserializes from a table whose fields are all optional, with durations written as
/// `"100ms"`, `"5s"` (humantime).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (at least 1). Default 4.
    pub max_attempts: u32,
    /// The backoff cap before the first retry. Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// The largest backoff cap. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// The time allowed for all attempts of a call made without a deadline. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub default_budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            default_budget: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the jittered wait before retry `retry` (1-based).
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }

    /// The wait before retry `retry`, given a uniform random `fraction` in `[0, 1)` and the
    /// server's `Retry-After`, which is a floor.
    fn wait(&self, retry: u32, fraction: f64, retry_after: Option<Duration>) -> Duration {
        let jittered = self.backoff_cap(retry).mul_f64(fraction.clamp(0.0, 1.0));
        jittered.max(retry_after.unwrap_or(Duration::ZERO))
    }
}

/// Settings of the shared HTTP client. Deserializes from a table whose fields are all optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// TCP (and TLS) connect timeout. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Timeout of one attempt, from sending to the last byte of the body; it is further cut
    /// to the time left before the caller's deadline. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Ignore proxy settings of the environment (`HTTPS_PROXY` ...). Default false: reqwest's
    /// usual behaviour, which honours them.
    pub no_proxy: bool,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            no_proxy: false,
            retry: RetryPolicy::default(),
        }
    }
}

/// A fully read HTTP response, handed to the interpreter of [`HttpClient::send_with_retry`].
/// Its `Debug` shows the status and the body's length, never the body (it may be a token).
pub struct HttpResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body (at most [`MAX_RESPONSE_BYTES`]).
    pub body: Vec<u8>,
}

impl fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// What an interpreter makes of one response.
#[derive(Debug)]
pub enum Attempt<T> {
    /// Success.
    Done(T),
    /// A transient failure worth retrying; the message says what failed (never a secret).
    Retry(String),
    /// A failure retrying will not fix.
    Fail(SourceError),
}

/// The shared HTTP client: one connection pool, a user agent, timeouts, no redirects, and
/// the retry loop. Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    config: HttpConfig,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// A transport failure of one attempt.
enum Transport {
    Transient(String),
    Permanent(SourceError),
}

impl HttpClient {
    /// Builds the client. Redirects are not followed: Google's token endpoints never redirect,
    /// and following one would send an assertion or a token to another host.
    ///
    /// # Errors
    ///
    /// [`BackendError::HttpClient`] if reqwest cannot build it (TLS initialisation).
    pub fn new(config: HttpConfig) -> Result<Self, BackendError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none());
        if config.no_proxy {
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| BackendError::HttpClient(error_chain(&e)))?;
        Ok(Self {
            inner: Arc::new(Inner { client, config }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &HttpConfig {
        &self.inner.config
    }

    /// The underlying reqwest client, for calls that need no retry.
    pub fn client(&self) -> &reqwest::Client {
        &self.inner.client
    }

    /// Sends the request `build` makes (once per attempt) until `interpret` accepts or refuses
    /// the response for good, retrying transient failures within `deadline`.
    ///
    /// Transient: connection and timeout errors, a connection dropped before the body was
    /// complete, and whatever `interpret` answers [`Attempt::Retry`] for (statuses 5xx, 408,
    /// 429 and OAuth `internal_failure`/`server_error`/`temporarily_unavailable` bodies in this
    /// crate). The wait before each retry is full-jitter exponential backoff, at least the
    /// server's `Retry-After` (seconds or HTTP-date). Each attempt's timeout is the configured
    /// request timeout cut to the time left. Without a `deadline`, the policy's
    /// `default_budget` bounds the whole call. `operation` names the call in logs and errors.
    ///
    /// # Errors
    ///
    /// - what `interpret` fails with;
    /// - [`SourceError::Unavailable`] (with the last error and `Retry-After`) once
    ///   `max_attempts` attempts failed, when `Retry-After` points past the deadline, or when
    ///   the default budget is spent;
    /// - [`SourceError::DeadlineExceeded`] when the caller's deadline passed or the next
    ///   backoff would end after it (the client never sleeps past a deadline);
    /// - [`SourceError::Unsupported`] if the request cannot even be built (a bad URL).
    pub async fn send_with_retry<T, B, I>(
        &self,
        operation: &str,
        deadline: Option<Instant>,
        build: B,
        interpret: I,
    ) -> Result<T, SourceError>
    where
        B: Fn(&reqwest::Client) -> reqwest::RequestBuilder + Sync,
        I: Fn(HttpResponse) -> Attempt<T> + Sync,
    {
        let config = &self.inner.config;
        let policy = &config.retry;
        let max_attempts = policy.max_attempts.max(1);
        let caller_deadline = deadline.is_some();
        let deadline = deadline.unwrap_or_else(|| Instant::now() + policy.default_budget);
        let mut attempts: u32 = 0;
        let mut last = String::from("the deadline passed before the first attempt");
        let mut last_retry_after: Option<Duration> = None;

        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(give_up(
                    operation,
                    caller_deadline,
                    attempts,
                    last,
                    last_retry_after,
                ));
            }
            attempts += 1;
            let timeout = config.request_timeout.min(left);
            let (status, retry_after) = match self.attempt(&build, timeout).await {
                Ok(response) => {
                    let status = response.status.as_u16();
                    let retry_after = parse_retry_after(&response.headers, SystemTime::now());
                    match interpret(response) {
                        Attempt::Done(value) => {
                            if attempts > 1 {
                                tracing::debug!(operation, attempts, "succeeded after retries");
                            }
                            return Ok(value);
                        }
                        Attempt::Fail(error) => {
                            tracing::debug!(operation, attempt = attempts, status, %error, "permanent failure");
                            return Err(error);
                        }
                        Attempt::Retry(message) => {
                            last = message;
                            (Some(status), retry_after)
                        }
                    }
                }
                Err(Transport::Permanent(error)) => return Err(error),
                Err(Transport::Transient(message)) => {
                    last = message;
                    (None, None)
                }
            };
            last_retry_after = retry_after;

            if attempts >= max_attempts {
                tracing::debug!(operation, attempts, status, error = %last, "giving up: no attempts left");
                return Err(SourceError::Unavailable {
                    message: format!("{operation}: {last} (gave up after {attempts} attempts)"),
                    retry_after,
                });
            }
            let wait = policy.wait(attempts, fastrand::f64(), retry_after);
            let now = Instant::now();
            if now + wait >= deadline {
                tracing::debug!(operation, attempts, status, wait_ms = millis(wait), error = %last,
                    "giving up: the next retry would pass the deadline");
                let server_asked_too_much = retry_after.is_some_and(|r| now + r >= deadline);
                return Err(give_up(
                    operation,
                    caller_deadline && !server_asked_too_much,
                    attempts,
                    last,
                    retry_after,
                ));
            }
            tracing::warn!(operation, attempt = attempts, status, wait_ms = millis(wait), error = %last,
                "transient failure; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt: send, then read the whole body, all within `timeout`.
    async fn attempt<B>(&self, build: &B, timeout: Duration) -> Result<HttpResponse, Transport>
    where
        B: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        let request = build(&self.inner.client).timeout(timeout);
        let mut response = request
            .send()
            .await
            .map_err(|e| transport_error(&e, timeout))?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        if response
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_large(status));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport_error(&e, timeout))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(too_large(status));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

fn too_large(status: StatusCode) -> Transport {
    Transport::Permanent(SourceError::Malformed(format!(
        "HTTP {} with a body larger than {MAX_RESPONSE_BYTES} bytes",
        status.as_u16()
    )))
}

/// The error of a call whose time ran out: the caller's deadline, or our own budget.
fn give_up(
    operation: &str,
    deadline_exceeded: bool,
    attempts: u32,
    last: String,
    retry_after: Option<Duration>,
) -> SourceError {
    if deadline_exceeded {
        SourceError::DeadlineExceeded {
            attempts,
            last: format!("{operation}: {last}"),
        }
    } else {
        SourceError::Unavailable {
            message: format!("{operation}: {last} (gave up after {attempts} attempts)"),
            retry_after,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Classifies a reqwest error. Its message never includes a request or response body.
fn transport_error(error: &reqwest::Error, timeout: Duration) -> Transport {
    if error.is_builder() {
        return Transport::Permanent(SourceError::Unsupported(format!(
            "cannot build the request: {}",
            error_chain(error)
        )));
    }
    if error.is_timeout() {
        return Transport::Transient(format!("timed out after {} ms", millis(timeout)));
    }
    let kind = if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    Transport::Transient(format!("{kind}: {}", error_chain(error)))
}

/// An error and its sources, `: `-separated.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `Retry-After` as a wait: delay-seconds, or an HTTP-date compared with `now` (wall time,
/// since it is the server's wall clock we compare with). A date in the past means no wait.
fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_full_jitter() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff_cap(1), Duration::from_millis(100));
        assert_eq!(policy.backoff_cap(2), Duration::from_millis(200));
        assert_eq!(policy.backoff_cap(3), Duration::from_millis(400));
        assert_eq!(policy.backoff_cap(10), Duration::from_secs(5));
        assert_eq!(policy.backoff_cap(u32::MAX), Duration::from_secs(5));
        let close = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_micros(1);
        assert_eq!(policy.wait(2, 0.0, None), Duration::ZERO);
        assert!(close(policy.wait(2, 0.5, None), Duration::from_millis(100)));
        // Retry-After is a floor, not a cap.
        assert_eq!(
            policy.wait(1, 0.5, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert!(close(
            policy.wait(3, 0.99, Some(Duration::from_millis(1))),
            Duration::from_millis(396)
        ));
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let mut headers = HeaderMap::new();
        assert_eq!(parse_retry_after(&headers, now), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(
            parse_retry_after(&headers, now),
            Some(Duration::from_secs(3))
        );
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:50:37 GMT"),
        );
        assert_eq!(
            parse_retry_after(&headers, now),
            Some(Duration::from_secs(60))
        );
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:00:00 GMT"),
        );
        assert_eq!(parse_retry_after(&headers, now), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&headers, now), None);
    }

    #[test]
    fn config_reads_humantime_durations_and_defaults_the_rest() {
        let config: HttpConfig = serde_json::from_value(serde_json::json!({
            "request_timeout": "2s",
            "retry": {"max_attempts": 2, "initial_backoff": "10ms"}
        }))
        .expect("valid");
        assert_eq!(config.request_timeout, Duration::from_secs(2));
        assert_eq!(config.connect_timeout, Duration::from_secs(5));
        assert_eq!(config.retry.max_attempts, 2);
        assert_eq!(config.retry.initial_backoff, Duration::from_millis(10));
        assert_eq!(config.retry.max_backoff, Duration::from_secs(5));
        assert_eq!(config.retry.default_budget, Duration::from_secs(30));
        assert!(!config.no_proxy);
    }

    #[test]
    fn response_debug_hides_the_body() {
        let response = HttpResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: b"{\"access_token\":\"ya29.secret\"}".to_vec(),
        };
        let shown = format!("{response:?}");
        assert!(!shown.contains("ya29"), "{shown}");
    }
}
