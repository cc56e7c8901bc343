//! The one HTTP client of the backends, and bounded, jittered retries of transient failures.
//!
//! Every upstream call goes through [`HttpClient::send_with_retry`]: it owns the per-attempt
//! timeout, the classification of transport failures, `Retry-After` (capped), the backoff and
//! the deadline, and it names the host each error came from, so the flow files only say how
//! to build a request and how to read a response.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use broker_core::{SourceError, UpstreamStatus};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;

use crate::BackendError;
use crate::endpoints::host_of;

/// The `User-Agent` of every request: `token-broker/<version>`.
pub const USER_AGENT: &str = concat!("token-broker/", env!("CARGO_PKG_VERSION"));

/// The largest response body read. Google's largest token answers (STS tokens up to 12 KiB)
/// are far below it; anything bigger is not a token response and is not buffered.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// How transient failures are retried. Backoff is "full jitter": before retry `n` (1-based)
/// the client waits a uniformly random time in `[0, min(max_backoff, initial_backoff * 2^(n-1))]`,
/// or at least what `Retry-After` asked for (capped by [`HttpConfig::max_retry_after`]).
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
    /// The longest `Retry-After` believed. A longer one from Google (or from anything between
    /// it and the broker) is cut to this before it is used anywhere: as the floor of the wait
    /// before a retry, and as the [`SourceError::Unavailable`] `retry_after` passed on to
    /// callers. The cap always applies; zero would make the client ignore `Retry-After`
    /// altogether, which the broker's configuration check refuses. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            no_proxy: false,
            max_retry_after: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }
}

/// A fully read HTTP response, handed to the interpreter of [`HttpClient::send_with_retry`].
/// Its `Debug` shows the host, the status and the body's length, never the body (it may be a
/// token).
pub struct HttpResponse {
    /// The host that answered, as [`crate::upstream_host`] names it; errors built from this
    /// response carry it as their `upstream`.
    pub upstream: String,
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
            .field("upstream", &self.upstream)
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
    /// A transient failure worth retrying; the message says what failed (never a secret, and
    /// Google's text in it sanitized). Should the call give up, the error's `status` is the
    /// response's HTTP status.
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
    /// Worth retrying: how the attempt ended, and what failed.
    Transient(UpstreamStatus, String),
    /// Not worth retrying.
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
        let client = Self::builder(&config)
            .build()
            .map_err(|e| BackendError::HttpClient(error_chain(&e)))?;
        Ok(Self {
            inner: Arc::new(Inner { client, config }),
        })
    }

    /// A client with the same settings that presents a client certificate (mTLS): the
    /// certificate chain and private key of `identity_pem` (PEM, leaf first). With
    /// `roots_pem`, servers are verified against those certificates only instead of the
    /// platform's trust store (an emulator, a private CA).
    ///
    /// # Errors
    ///
    /// Why the identity, the roots or the client could not be built (never quoting the key).
    pub(crate) fn with_client_identity(
        &self,
        identity_pem: &[u8],
        roots_pem: Option<&[u8]>,
    ) -> Result<Self, String> {
        let config = self.inner.config.clone();
        let identity = reqwest::Identity::from_pem(identity_pem)
            .map_err(|e| format!("the certificate and key are unusable: {}", error_chain(&e)))?;
        let mut builder = Self::builder(&config).identity(identity);
        if let Some(roots) = roots_pem {
            let roots = reqwest::Certificate::from_pem_bundle(roots)
                .map_err(|e| format!("the trusted roots are unusable: {}", error_chain(&e)))?;
            builder = builder.tls_certs_only(roots);
        }
        let client = builder.build().map_err(|e| error_chain(&e))?;
        Ok(Self {
            inner: Arc::new(Inner { client, config }),
        })
    }

    /// The builder of every client: user agent, timeouts, no redirects, proxies as
    /// configured.
    fn builder(config: &HttpConfig) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none());
        if config.no_proxy {
            builder.no_proxy()
        } else {
            builder
        }
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
    /// server's `Retry-After` (seconds or HTTP-date, capped by
    /// [`HttpConfig::max_retry_after`]). Each attempt's timeout is the configured request
    /// timeout cut to the time left. Without a `deadline`, the policy's `default_budget` bounds
    /// the whole call. `operation` names the call in logs and errors.
    ///
    /// Every error this returns that came from upstream names, as its `upstream`, the host of
    /// the request's URL (see [`crate::upstream_host`]); [`HttpResponse::upstream`] hands it to
    /// `interpret` for the errors it builds.
    ///
    /// # Errors
    ///
    /// - what `interpret` fails with;
    /// - [`SourceError::Unavailable`] once `max_attempts` attempts failed, when `Retry-After`
    ///   points past the deadline, or when the default budget is spent. Its `status` is what
    ///   the last attempt ended with: the HTTP status, or [`UpstreamStatus::Timeout`],
    ///   [`UpstreamStatus::Connect`] or [`UpstreamStatus::Io`] for a transport failure
    ///   (`Timeout` also when the budget was spent before any attempt); its `retry_after` is
    ///   the last response's capped `Retry-After`;
    /// - [`SourceError::DeadlineExceeded`] when the caller's deadline passed or the next
    ///   backoff would end after it (the client never sleeps past a deadline);
    /// - [`SourceError::Malformed`] for a response body larger than [`MAX_RESPONSE_BYTES`];
    /// - [`SourceError::Internal`] if the request cannot even be built (a bad URL).
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
        let mut last = Failure {
            status: UpstreamStatus::Timeout,
            message: "the deadline passed before the first attempt".to_owned(),
            retry_after: None,
        };

        loop {
            let mut request = build(&self.inner.client)
                .build()
                .map_err(|e| cannot_build(operation, &e))?;
            let upstream = host_of(request.url());
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(give_up(
                    operation,
                    upstream,
                    caller_deadline,
                    attempts,
                    last,
                ));
            }
            attempts += 1;
            let timeout = config.request_timeout.min(left);
            *request.timeout_mut() = Some(timeout);
            last = match self.attempt(operation, request, &upstream, timeout).await {
                Ok(response) => {
                    let status = response.status.as_u16();
                    let retry_after = parse_retry_after(
                        &response.headers,
                        SystemTime::now(),
                        config.max_retry_after,
                    );
                    match interpret(response) {
                        Attempt::Done(value) => {
                            if attempts > 1 {
                                tracing::debug!(operation, %upstream, attempts, "succeeded after retries");
                            }
                            return Ok(value);
                        }
                        Attempt::Fail(error) => {
                            tracing::debug!(operation, %upstream, attempt = attempts, status, %error, "permanent failure");
                            return Err(error);
                        }
                        Attempt::Retry(message) => Failure {
                            status: UpstreamStatus::Http(status),
                            message,
                            retry_after,
                        },
                    }
                }
                Err(Transport::Permanent(error)) => return Err(error),
                Err(Transport::Transient(status, message)) => Failure {
                    status,
                    message,
                    retry_after: None,
                },
            };

            if attempts >= max_attempts {
                tracing::debug!(operation, %upstream, attempts, status = %last.status, error = %last.message,
                    "giving up: no attempts left");
                return Err(unavailable(operation, upstream, attempts, last));
            }
            let wait = policy.wait(attempts, fastrand::f64(), last.retry_after);
            let now = Instant::now();
            if now + wait >= deadline {
                tracing::debug!(operation, %upstream, attempts, status = %last.status, wait_ms = millis(wait),
                    error = %last.message, "giving up: the next retry would pass the deadline");
                let server_asked_too_much = last.retry_after.is_some_and(|r| now + r >= deadline);
                return Err(give_up(
                    operation,
                    upstream,
                    caller_deadline && !server_asked_too_much,
                    attempts,
                    last,
                ));
            }
            tracing::warn!(operation, %upstream, attempt = attempts, status = %last.status, wait_ms = millis(wait),
                error = %last.message, "transient failure; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt: send, then read the whole body, all within `timeout` (already set on
    /// `request`).
    async fn attempt(
        &self,
        operation: &str,
        request: reqwest::Request,
        upstream: &str,
        timeout: Duration,
    ) -> Result<HttpResponse, Transport> {
        let failed = |e: reqwest::Error| transport_error(operation, &e, timeout);
        let mut response = self.inner.client.execute(request).await.map_err(failed)?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        if response
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_large(upstream, status));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(too_large(upstream, status));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            upstream: upstream.to_owned(),
            status,
            headers,
            body,
        })
    }
}

/// How a failed attempt ended: what the error reports should the call give up after it.
struct Failure {
    status: UpstreamStatus,
    message: String,
    retry_after: Option<Duration>,
}

fn too_large(upstream: &str, status: StatusCode) -> Transport {
    Transport::Permanent(SourceError::Malformed {
        upstream: upstream.to_owned(),
        message: format!(
            "HTTP {} with a body larger than {MAX_RESPONSE_BYTES} bytes",
            status.as_u16()
        ),
    })
}

/// The error of a request that cannot be built: our bug or our configuration, not Google's.
fn cannot_build(operation: &str, error: &reqwest::Error) -> SourceError {
    SourceError::Internal(format!(
        "{operation}: cannot build the request: {}",
        error_chain(error)
    ))
}

/// The error of a call whose time ran out: the caller's deadline, or our own budget.
fn give_up(
    operation: &str,
    upstream: String,
    deadline_exceeded: bool,
    attempts: u32,
    last: Failure,
) -> SourceError {
    if deadline_exceeded {
        SourceError::DeadlineExceeded {
            upstream,
            attempts,
            last: format!("{operation}: {}", last.message),
        }
    } else {
        unavailable(operation, upstream, attempts, last)
    }
}

/// The error of a call that gave up on transient failures.
fn unavailable(operation: &str, upstream: String, attempts: u32, last: Failure) -> SourceError {
    SourceError::Unavailable {
        upstream,
        status: last.status,
        message: format!(
            "{operation}: {} (gave up after {attempts} attempts)",
            last.message
        ),
        retry_after: last.retry_after,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Classifies a reqwest error: a request that cannot be built is [`SourceError::Internal`];
/// a timeout, a failed connection and any other failure are transient, with the status
/// `Timeout`, `Connect` and `Io`. The message never includes a request or response body.
fn transport_error(operation: &str, error: &reqwest::Error, timeout: Duration) -> Transport {
    if error.is_builder() {
        return Transport::Permanent(cannot_build(operation, error));
    }
    if error.is_timeout() {
        return Transport::Transient(
            UpstreamStatus::Timeout,
            format!("timed out after {} ms", millis(timeout)),
        );
    }
    let (status, kind) = if error.is_connect() {
        (UpstreamStatus::Connect, "connection failed")
    } else {
        (UpstreamStatus::Io, "request failed")
    };
    Transport::Transient(status, format!("{kind}: {}", error_chain(error)))
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

/// `Retry-After` as a wait, at most `cap`: delay-seconds, or an HTTP-date compared with `now`
/// (wall time, since it is the server's wall clock we compare with). A date in the past means
/// no wait.
fn parse_retry_after(headers: &HeaderMap, now: SystemTime, cap: Duration) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let date = httpdate::parse_http_date(value).ok()?;
            date.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(cap))
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
    fn retry_after_takes_seconds_and_http_dates_and_is_capped() {
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let minute = Duration::from_secs(60);
        let cases: [(Option<&'static str>, Duration, Option<Duration>); 11] = [
            (None, minute, None),
            (Some("3"), minute, Some(Duration::from_secs(3))),
            (Some(" 60 "), minute, Some(minute)),
            (Some("61"), minute, Some(minute)),
            (
                Some("86400"),
                Duration::from_secs(5),
                Some(Duration::from_secs(5)),
            ),
            (Some("18446744073709551615"), minute, Some(minute)),
            (
                Some("Sun, 06 Nov 1994 08:50:07 GMT"),
                minute,
                Some(Duration::from_secs(30)),
            ),
            (Some("Sun, 06 Nov 1994 08:50:37 GMT"), minute, Some(minute)),
            (Some("Mon, 07 Nov 1994 08:49:37 GMT"), minute, Some(minute)),
            (
                Some("Sun, 06 Nov 1994 08:00:00 GMT"),
                minute,
                Some(Duration::ZERO),
            ),
            (Some("soon"), minute, None),
        ];
        for (value, cap, expected) in cases {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert(RETRY_AFTER, HeaderValue::from_static(value));
            }
            assert_eq!(parse_retry_after(&headers, now, cap), expected, "{value:?}");
        }
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
        assert_eq!(config.max_retry_after, Duration::from_secs(60));
        assert_eq!(config.retry.max_attempts, 2);
        assert_eq!(config.retry.initial_backoff, Duration::from_millis(10));
        assert_eq!(config.retry.max_backoff, Duration::from_secs(5));
        assert_eq!(config.retry.default_budget, Duration::from_secs(30));
        assert!(!config.no_proxy);
        let config: HttpConfig =
            serde_json::from_value(serde_json::json!({"max_retry_after": "5m"})).expect("valid");
        assert_eq!(config.max_retry_after, Duration::from_secs(300));
    }

    #[test]
    fn response_debug_hides_the_body() {
        let response = HttpResponse {
            upstream: "oauth2.googleapis.com".to_owned(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: b"{\"access_token\":\"ya29.secret\"}".to_vec(),
        };
        let shown = format!("{response:?}");
        assert!(!shown.contains("ya29"), "{shown}");
        assert!(shown.contains("oauth2.googleapis.com"), "{shown}");
    }

    /// What a test server does with each connection.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// Reads the request and writes this answer.
        Answer(&'static str),
        /// Reads the request and closes the connection without an answer.
        Close,
        /// Accepts and never answers.
        Hang,
    }

    /// A loopback HTTP server for GET requests; returns its address.
    async fn serve(behaviour: Behaviour) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Behaviour::Hang = behaviour {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    }
                    let mut request = Vec::new();
                    let mut buffer = [0; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    if let Behaviour::Answer(answer) = behaviour {
                        let _ = socket.write_all(answer.as_bytes()).await;
                    }
                    let _ = socket.shutdown().await;
                });
            }
        });
        addr
    }

    /// A port on loopback nothing listens on.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    }

    fn test_client(max_retry_after: Duration) -> HttpClient {
        HttpClient::new(HttpConfig {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_millis(300),
            no_proxy: true,
            max_retry_after,
            retry: RetryPolicy {
                max_attempts: 2,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(10),
                default_budget: Duration::from_secs(10),
            },
        })
        .expect("client")
    }

    /// Retries 5xx, accepts anything else.
    fn by_status(response: HttpResponse) -> Attempt<u16> {
        if response.status.is_server_error() {
            Attempt::Retry(format!("HTTP {}", response.status.as_u16()))
        } else {
            Attempt::Done(response.status.as_u16())
        }
    }

    #[tokio::test]
    async fn give_up_names_the_host_and_how_the_last_attempt_ended() {
        const UNAVAILABLE: &str = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3600\r\n\
            Content-Length: 0\r\nConnection: close\r\n\r\n";
        let refused = closed_port();
        let cases = [
            (
                format!("http://127.0.0.1:{refused}/token"),
                UpstreamStatus::Connect,
                "connection failed",
                None,
            ),
            (
                format!("http://{}/token", serve(Behaviour::Hang).await),
                UpstreamStatus::Timeout,
                "timed out after 300 ms",
                None,
            ),
            (
                format!("http://{}/token", serve(Behaviour::Close).await),
                UpstreamStatus::Io,
                "request failed",
                None,
            ),
            (
                format!(
                    "http://{}/v1/token",
                    serve(Behaviour::Answer(UNAVAILABLE)).await
                ),
                UpstreamStatus::Http(503),
                "HTTP 503",
                // Google asked for an hour; the cap wins, for the wait and the error alike.
                Some(Duration::from_millis(50)),
            ),
        ];
        let http = test_client(Duration::from_millis(50));
        for (url, status, message_part, retry_after) in cases {
            let error = tokio::time::timeout(
                Duration::from_secs(10),
                http.send_with_retry("test.call", None, |c| c.get(&url), by_status),
            )
            .await
            .expect("no long waits")
            .expect_err("fails");
            let SourceError::Unavailable {
                upstream,
                status: got_status,
                message,
                retry_after: got_retry_after,
            } = &error
            else {
                panic!("{url}: expected Unavailable, got {error:?}");
            };
            assert_eq!(*upstream, crate::upstream_host(&url), "{url}");
            assert!(upstream.starts_with("127.0.0.1:"), "{upstream}");
            assert_eq!(*got_status, status, "{url}: {message}");
            assert!(message.contains(message_part), "{url}: {message}");
            assert!(message.contains("test.call"), "{message}");
            assert!(message.contains("2 attempts"), "{message}");
            assert_eq!(*got_retry_after, retry_after, "{url}");
            assert!(error.is_transient());
            assert_eq!(error.upstream(), Some(upstream.as_str()));
        }
    }

    #[tokio::test]
    async fn local_failures_are_internal_and_deadlines_name_the_host() {
        let http = test_client(Duration::from_secs(60));
        let error = http
            .send_with_retry("test.call", None, |c| c.get("not a url"), by_status)
            .await
            .expect_err("cannot build");
        assert!(
            matches!(&error, SourceError::Internal(m) if m.contains("test.call")),
            "{error:?}"
        );
        assert_eq!(error.upstream(), None);

        let url = format!("http://127.0.0.1:{}/token", closed_port());
        let error = http
            .send_with_retry(
                "test.call",
                Some(Instant::now()),
                |c| c.get(&url),
                by_status,
            )
            .await
            .expect_err("too late");
        let SourceError::DeadlineExceeded {
            upstream, attempts, ..
        } = &error
        else {
            panic!("expected DeadlineExceeded, got {error:?}");
        };
        assert_eq!(*upstream, crate::upstream_host(&url));
        assert_eq!(*attempts, 0);
    }
}
