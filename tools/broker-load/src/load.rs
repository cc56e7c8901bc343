//! The closed-loop load generator: N tasks over K channels, each sending one request, waiting
//! for its response and sending the next, for a fixed time after a warm-up; every latency is
//! kept, so percentiles are exact.

use std::time::{Duration, Instant};

use broker_proto::tokenbroker::v1::token_broker_client::TokenBrokerClient;
use broker_proto::tokenbroker::v1::{
    GenerateIdTokenRequest, GetAccessTokenRequest, ImpersonateServiceAccountRequest,
};
use serde::Serialize;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// What one task calls in a loop.
#[derive(Debug, Clone)]
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
        })
    }
}

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
    errors: u64,
    unexpected: u64,
    first_problem: Option<String>,
    seconds: f64,
}

/// What one task measured.
struct TaskResult {
    samples: Vec<u32>,
    warmup_requests: u64,
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
    let start = Instant::now();
    let measure_from = start + timing.warmup;
    let until = measure_from + timing.duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let target = make(channels[i % channels.len()].clone());
            tokio::spawn(task(target, measure_from, until))
        })
        .collect();
    let mut slice = Slice {
        concurrency,
        channels: channels.len(),
        samples: Vec::new(),
        warmup_requests: 0,
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
        errors: 0,
        unexpected: 0,
        first_problem: None,
        last: measure_from,
    };
    while Instant::now() < measure_from {
        let _ = target.call().await;
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
        let (mut errors, mut unexpected, mut warmup_requests, mut seconds) = (0, 0, 0, 0.0);
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
