//! The closed-loop load generator: N tasks over K channels, each sending one request, waiting
//! for its response and sending the next, for a fixed time after a warm-up; every latency is
//! kept, so percentiles are exact.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_proto::tokenbroker::v1::token_broker_client::TokenBrokerClient;
use broker_proto::tokenbroker::v1::{
    ExchangeTokenRequest, GenerateIdTokenRequest, GetAccessTokenRequest,
    ImpersonateServiceAccountRequest,
};
use hyper::body::Body as _;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// What one task calls in a loop.
#[derive(Debug)]
pub(crate) enum Target {
    /// tonic-health `Check("")`; the answer must be SERVING.
    Echo(HealthClient<Channel>),
    /// A broker RPC; with `want_hit`, every answer must be a cache hit.
    Broker {
        /// The client.
        client: TokenBrokerClient<Channel>,
        /// The request, the same every time.
        request: BrokerCall,
        /// Whether a response that is not a cache hit counts as unexpected.
        want_hit: bool,
    },
    /// An RFC 8693 exchange posted straight to the emulator's STS, as the broker posts it.
    Sts(Arc<StsCall>),
    /// The metadata sidecar's token endpoint, on this task's own keep-alive connection.
    Metadata(MetadataCall),
}

/// A broker RPC and its request.
#[derive(Debug, Clone)]
pub(crate) enum BrokerCall {
    /// `GetAccessToken`.
    AccessToken(GetAccessTokenRequest),
    /// `ImpersonateServiceAccount`.
    Impersonate(ImpersonateServiceAccountRequest),
    /// `GenerateIdToken`.
    IdToken(GenerateIdTokenRequest),
    /// `ExchangeToken`, never cached (answered as not a cache hit).
    Exchange(ExchangeTokenRequest),
}

impl BrokerCall {
    /// Makes the call; `Ok(cache_hit)`.
    pub(crate) async fn call(
        &self,
        client: &mut TokenBrokerClient<Channel>,
    ) -> Result<bool, tonic::Status> {
        Ok(match self {
            Self::AccessToken(request) => {
                client
                    .get_access_token(request.clone())
                    .await?
                    .get_ref()
                    .cache_hit
            }
            Self::Impersonate(request) => {
                client
                    .impersonate_service_account(request.clone())
                    .await?
                    .get_ref()
                    .cache_hit
            }
            Self::IdToken(request) => {
                client
                    .generate_id_token(request.clone())
                    .await?
                    .get_ref()
                    .cache_hit
            }
            Self::Exchange(request) => {
                client.exchange_token(request.clone()).await?;
                false
            }
        })
    }
}

/// The token-exchange grant type.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type an exchange asks for, and STS must say it issued.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// One STS token exchange, the same every time: the form the broker's plain ExchangeToken
/// posts, posted by the load tool's own HTTP client.
#[derive(Debug)]
pub(crate) struct StsCall {
    client: reqwest::Client,
    url: String,
    form: Vec<(&'static str, String)>,
}

/// The fields of STS's answer that the broker checks too.
#[derive(Deserialize)]
struct StsAnswer {
    access_token: String,
    issued_token_type: Option<String>,
    expires_in: Option<u64>,
}

impl StsCall {
    /// The exchange of `subject_token` (of `subject_token_type`) for an access token of
    /// `scope` at the provider `audience`, posted to `url` by `client`.
    pub(crate) fn new(
        client: reqwest::Client,
        url: String,
        audience: &str,
        scope: &str,
        subject_token: &str,
        subject_token_type: &str,
    ) -> Self {
        let form = vec![
            ("grant_type", TOKEN_EXCHANGE.to_owned()),
            ("audience", audience.to_owned()),
            ("scope", scope.to_owned()),
            ("requested_token_type", ACCESS_TOKEN_TYPE.to_owned()),
            ("subject_token", subject_token.to_owned()),
            ("subject_token_type", subject_token_type.to_owned()),
        ];
        Self { client, url, form }
    }

    /// Posts the exchange; an answer other than HTTP 200 with an access token is an error.
    async fn call(&self) -> Outcome {
        let response = match self.client.post(&self.url).form(&self.form).send().await {
            Ok(response) => response,
            Err(error) => return Outcome::Error(format!("STS request failed: {error}")),
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => return Outcome::Error(format!("STS answer unreadable: {error}")),
        };
        if !status.is_success() {
            // STS's error bodies hold an error code and a description, never a token.
            let text = String::from_utf8_lossy(&body);
            let text: String = text.chars().take(300).collect();
            return Outcome::Error(format!("STS answered HTTP {status}: {text}"));
        }
        match serde_json::from_slice::<StsAnswer>(&body) {
            Ok(answer)
                if !answer.access_token.is_empty()
                    && answer.issued_token_type.as_deref() == Some(ACCESS_TOKEN_TYPE)
                    && answer.expires_in.is_some() =>
            {
                Outcome::Ok
            }
            Ok(_) => Outcome::Unexpected(
                "STS answered HTTP 200 without an access token, its type or expires_in".to_owned(),
            ),
            Err(error) => Outcome::Unexpected(format!("STS answer is not a token: {error}")),
        }
    }
}

/// The metadata sidecar's token path: the default account's access token with its own scopes
/// (cloud-platform), what `google.auth.default()` fetches on a GCE-like host.
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// Google's clients refetch a token with this many seconds or less left; the sidecar must never
/// serve one.
const STALE_SECONDS: u64 = 225;

/// GETs of the sidecar's token endpoint on one HTTP/1.1 keep-alive connection (the task's own),
/// as a Google client library sends them: `Metadata-Flavor: Google`, no body.
#[derive(Debug)]
pub(crate) struct MetadataCall {
    sender: SendRequest<String>,
    host: HeaderValue,
    /// The token every answer must carry (the sidecar's one cached token); `None`: any.
    expected: Option<Arc<str>>,
}

/// The JSON of the token endpoint.
#[derive(Deserialize)]
struct MetadataToken {
    access_token: String,
    expires_in: u64,
    token_type: String,
}

impl MetadataCall {
    /// Opens a connection to the sidecar at `addr` (plain HTTP/1.1 on loopback, Nagle off, as
    /// the sidecar sets it on its side).
    pub(crate) async fn connect(
        addr: SocketAddr,
        expected: Option<Arc<str>>,
    ) -> Result<Self, crate::Error> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        // Drives the connection; ends when the sender is dropped or the sidecar closes it.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            host: HeaderValue::from_str(&addr.to_string())?,
            expected,
        })
    }

    /// One GET; the access token, or why there is none.
    pub(crate) async fn token(&mut self) -> Result<String, MetadataProblem> {
        let failed = MetadataProblem::failed;
        let unexpected = MetadataProblem::unexpected;
        let request = Request::get(METADATA_TOKEN_PATH)
            .header(HOST, self.host.clone())
            .header("metadata-flavor", "Google")
            .body(String::new())
            .map_err(|error| failed(format!("request not built: {error}")))?;
        self.sender
            .ready()
            .await
            .map_err(|error| failed(format!("connection unusable: {error}")))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|error| failed(format!("request failed: {error}")))?;
        let (parts, body) = response.into_parts();
        let mut body = std::pin::pin!(body);
        let mut bytes = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            let frame = frame.map_err(|error| failed(format!("answer unreadable: {error}")))?;
            if let Ok(data) = frame.into_data() {
                bytes.extend_from_slice(&data);
            }
        }
        if parts.status != StatusCode::OK {
            let text = String::from_utf8_lossy(&bytes);
            let text: String = text.chars().take(300).collect();
            return Err(failed(format!("HTTP {}: {text}", parts.status)));
        }
        if parts
            .headers
            .get("metadata-flavor")
            .is_none_or(|flavor| flavor != "Google")
        {
            return Err(unexpected(
                "no Metadata-Flavor: Google on the answer".to_owned(),
            ));
        }
        let answer: MetadataToken = serde_json::from_slice(&bytes)
            .map_err(|error| unexpected(format!("answer is not a token: {error}")))?;
        if answer.access_token.is_empty() || answer.token_type != "Bearer" {
            return Err(unexpected(
                "answer without a Bearer access token".to_owned(),
            ));
        }
        if answer.expires_in <= STALE_SECONDS {
            return Err(unexpected(format!(
                "token served with {} s left",
                answer.expires_in
            )));
        }
        if let Some(expected) = &self.expected
            && **expected != *answer.access_token
        {
            return Err(unexpected(
                "another token than the sidecar's first: it fetched a new one".to_owned(),
            ));
        }
        Ok(answer.access_token)
    }

    async fn call(&mut self) -> Outcome {
        match self.token().await {
            Ok(_) => Outcome::Ok,
            Err(problem) if problem.failed => Outcome::Error(problem.to_string()),
            Err(problem) => Outcome::Unexpected(problem.to_string()),
        }
    }
}

/// Why a sidecar request did not give the expected token.
#[derive(Debug)]
pub(crate) struct MetadataProblem {
    /// The request failed (transport, or a status other than 200); otherwise it was answered,
    /// but not as required.
    failed: bool,
    message: String,
}

impl MetadataProblem {
    fn failed(message: String) -> Self {
        Self {
            failed: true,
            message,
        }
    }

    fn unexpected(message: String) -> Self {
        Self {
            failed: false,
            message,
        }
    }
}

impl std::fmt::Display for MetadataProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sidecar: {}", self.message)
    }
}

impl std::error::Error for MetadataProblem {}

/// How one call went.
enum Outcome {
    Ok,
    /// Answered, but not as required (not SERVING, not a cache hit).
    Unexpected(String),
    /// Failed.
    Error(String),
}

impl Target {
    /// The echo target on `channel`.
    pub(crate) fn echo(channel: Channel) -> Self {
        Self::Echo(HealthClient::new(channel))
    }

    /// The broker target on `channel`.
    pub(crate) fn broker(channel: Channel, request: BrokerCall, want_hit: bool) -> Self {
        Self::Broker {
            client: TokenBrokerClient::new(channel),
            request,
            want_hit,
        }
    }

    async fn call(&mut self) -> Outcome {
        match self {
            Self::Echo(client) => {
                let request = HealthCheckRequest {
                    service: String::new(),
                };
                match client.check(request).await {
                    Ok(response) if response.get_ref().status == ServingStatus::Serving as i32 => {
                        Outcome::Ok
                    }
                    Ok(response) => {
                        Outcome::Unexpected(format!("health status {}", response.get_ref().status))
                    }
                    Err(status) => Outcome::Error(describe(&status)),
                }
            }
            Self::Broker {
                client,
                request,
                want_hit,
            } => match request.call(client).await {
                Ok(cache_hit) if !*want_hit || cache_hit => Outcome::Ok,
                Ok(_) => Outcome::Unexpected("response was not a cache hit".to_owned()),
                Err(status) => Outcome::Error(describe(&status)),
            },
            Self::Sts(call) => call.call().await,
            Self::Metadata(call) => call.call().await,
        }
    }
}

fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// How long a scenario runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Timing {
    /// Calls before measuring, not recorded, seconds.
    #[serde(serialize_with = "seconds")]
    pub(crate) warmup: Duration,
    /// The measured time, seconds.
    #[serde(serialize_with = "seconds")]
    pub(crate) duration: Duration,
}

impl Timing {
    /// Slice `round` of `rounds` alternating slices: an equal share of the measured time, and
    /// the warm-up before the first slice only.
    pub(crate) fn slice(self, round: usize, rounds: usize) -> Self {
        Self {
            warmup: if round == 0 {
                self.warmup
            } else {
                Duration::ZERO
            },
            duration: self.duration / u32::try_from(rounds).unwrap_or(u32::MAX),
        }
    }
}

fn seconds<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64())
}

/// The merged result of one scenario.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LoadResult {
    /// Tasks, each with one request outstanding.
    pub(crate) concurrency: usize,
    /// HTTP/2 connections the tasks share, round-robin.
    pub(crate) channels: usize,
    /// Measured slices merged into this result.
    pub(crate) rounds: usize,
    /// Calls completed in the measured windows (successful or not).
    pub(crate) requests: u64,
    /// Calls made during the warm-ups.
    pub(crate) warmup_requests: u64,
    /// Calls during the warm-ups that failed or were answered, but not as required.
    pub(crate) warmup_problems: u64,
    /// Calls that failed.
    pub(crate) errors: u64,
    /// Calls answered, but not as required.
    pub(crate) unexpected: u64,
    /// The first failure or unexpected answer, if any.
    pub(crate) first_problem: Option<String>,
    /// The measured windows together (each from the end of its warm-up to its last
    /// completion), seconds.
    pub(crate) seconds: f64,
    /// Successful calls per second.
    pub(crate) rps: f64,
    /// Successful calls per second of each slice, in order.
    pub(crate) slice_rps: Vec<f64>,
    /// Latency median (nearest rank), microseconds.
    pub(crate) p50_us: u32,
    /// 90th percentile, microseconds.
    pub(crate) p90_us: u32,
    /// 99th percentile, microseconds.
    pub(crate) p99_us: u32,
    /// Maximum, microseconds.
    pub(crate) max_us: u32,
    /// Mean, microseconds.
    pub(crate) mean_us: f64,
}

/// What one slice of a scenario measured, before merging.
#[derive(Debug)]
pub(crate) struct Slice {
    concurrency: usize,
    channels: usize,
    samples: Vec<u32>,
    warmup_requests: u64,
    warmup_problems: u64,
    errors: u64,
    unexpected: u64,
    first_problem: Option<String>,
    seconds: f64,
}

/// What one task measured.
struct TaskResult {
    samples: Vec<u32>,
    warmup_requests: u64,
    warmup_problems: u64,
    errors: u64,
    unexpected: u64,
    first_problem: Option<String>,
    last: Instant,
}

/// Runs `concurrency` tasks over `channels` (task `i` uses channel `i % channels.len()`), each
/// calling its target from `make` in a closed loop; returns once every task has its last
/// response.
pub(crate) async fn run(
    channels: &[Channel],
    concurrency: usize,
    timing: Timing,
    make: impl Fn(Channel) -> Target,
) -> Slice {
    run_tasks(concurrency, channels.len(), timing, |i| {
        make(channels[i % channels.len()].clone())
    })
    .await
}

/// Runs `concurrency` tasks, task `i` calling the target `make(i)` in a closed loop over
/// `connections` connections (as reported; the targets hold them); returns once every task has
/// its last response.
pub(crate) async fn run_tasks(
    concurrency: usize,
    connections: usize,
    timing: Timing,
    make: impl Fn(usize) -> Target,
) -> Slice {
    run_targets((0..concurrency).map(make).collect(), connections, timing).await
}

/// Runs one task per target, each calling it in a closed loop, over `connections` connections
/// (as reported; the targets hold them); returns once every task has its last response.
pub(crate) async fn run_targets(targets: Vec<Target>, connections: usize, timing: Timing) -> Slice {
    let concurrency = targets.len();
    let start = Instant::now();
    let measure_from = start + timing.warmup;
    let until = measure_from + timing.duration;
    let tasks: Vec<_> = targets
        .into_iter()
        .map(|target| tokio::spawn(task(target, measure_from, until)))
        .collect();
    let mut slice = Slice {
        concurrency,
        channels: connections,
        samples: Vec::new(),
        warmup_requests: 0,
        warmup_problems: 0,
        errors: 0,
        unexpected: 0,
        first_problem: None,
        seconds: 0.0,
    };
    let mut last = measure_from;
    for task in tasks {
        match task.await {
            Ok(result) => {
                slice.samples.extend_from_slice(&result.samples);
                slice.warmup_requests += result.warmup_requests;
                slice.warmup_problems += result.warmup_problems;
                slice.errors += result.errors;
                slice.unexpected += result.unexpected;
                if slice.first_problem.is_none() {
                    slice.first_problem = result.first_problem;
                }
                last = last.max(result.last);
            }
            Err(error) => {
                slice.errors += 1;
                slice
                    .first_problem
                    .get_or_insert(format!("load task failed: {error}"));
            }
        }
    }
    slice.seconds = last.duration_since(measure_from).as_secs_f64();
    slice
}

async fn task(mut target: Target, measure_from: Instant, until: Instant) -> TaskResult {
    let mut result = TaskResult {
        samples: Vec::with_capacity(1 << 14),
        warmup_requests: 0,
        warmup_problems: 0,
        errors: 0,
        unexpected: 0,
        first_problem: None,
        last: measure_from,
    };
    while Instant::now() < measure_from {
        match target.call().await {
            Outcome::Ok => {}
            Outcome::Unexpected(problem) | Outcome::Error(problem) => {
                result.warmup_problems += 1;
                result
                    .first_problem
                    .get_or_insert(format!("during the warm-up: {problem}"));
            }
        }
        result.warmup_requests += 1;
    }
    loop {
        let sent = Instant::now();
        if sent >= until {
            break;
        }
        let outcome = target.call().await;
        let done = Instant::now();
        let micros = done.duration_since(sent).as_micros();
        result
            .samples
            .push(u32::try_from(micros).unwrap_or(u32::MAX));
        result.last = done;
        match outcome {
            Outcome::Ok => {}
            Outcome::Unexpected(problem) => {
                result.unexpected += 1;
                result.first_problem.get_or_insert(problem);
            }
            Outcome::Error(problem) => {
                result.errors += 1;
                result.first_problem.get_or_insert(problem);
            }
        }
    }
    result
}

impl LoadResult {
    /// Merges the slices of one scenario (same concurrency and channels): requests/s over
    /// their summed windows, percentiles over all their samples.
    pub(crate) fn merge(slices: Vec<Slice>) -> Self {
        let rounds = slices.len();
        let concurrency = slices.first().map_or(0, |s| s.concurrency);
        let channels = slices.first().map_or(0, |s| s.channels);
        let mut samples: Vec<u32> =
            Vec::with_capacity(slices.iter().map(|s| s.samples.len()).sum());
        let (mut errors, mut unexpected, mut seconds) = (0, 0, 0.0);
        let (mut warmup_requests, mut warmup_problems) = (0, 0);
        let mut first_problem = None;
        let slice_rps = slices
            .iter()
            .map(|s| {
                let ok = (s.samples.len() as u64).saturating_sub(s.errors);
                if s.seconds > 0.0 {
                    ok as f64 / s.seconds
                } else {
                    0.0
                }
            })
            .collect();
        for slice in slices {
            samples.extend_from_slice(&slice.samples);
            errors += slice.errors;
            unexpected += slice.unexpected;
            warmup_requests += slice.warmup_requests;
            warmup_problems += slice.warmup_problems;
            seconds += slice.seconds;
            if first_problem.is_none() {
                first_problem = slice.first_problem;
            }
        }
        samples.sort_unstable();
        let requests = samples.len() as u64;
        let successes = requests.saturating_sub(errors);
        let mean_us = if samples.is_empty() {
            0.0
        } else {
            samples.iter().map(|&s| f64::from(s)).sum::<f64>() / samples.len() as f64
        };
        Self {
            concurrency,
            channels,
            rounds,
            requests,
            warmup_requests,
            warmup_problems,
            errors,
            unexpected,
            first_problem,
            seconds,
            rps: if seconds > 0.0 {
                successes as f64 / seconds
            } else {
                0.0
            },
            slice_rps,
            p50_us: percentile(&samples, 50.0),
            p90_us: percentile(&samples, 90.0),
            p99_us: percentile(&samples, 99.0),
            max_us: samples.last().copied().unwrap_or(0),
            mean_us,
        }
    }
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&samples, 50.0), 50);
        assert_eq!(percentile(&samples, 99.0), 99);
        assert_eq!(percentile(&samples, 100.0), 100);
        assert_eq!(percentile(&[7], 50.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
