//! `broker-load`: one run on 127.0.0.1, over the broker's own mTLS setup, measuring
//!
//! - a bare tonic unary service (tonic-health `Check`) behind the broker's TLS acceptor: the
//!   transport's ceiling;
//! - the broker's cache-hit `GetAccessToken` (the same request every time, all hits), and the
//!   cache hits of `ImpersonateServiceAccount` and `GenerateIdToken` likewise;
//! - the metadata sidecar's token endpoint (a child process answering from that broker, its
//!   token cached), against the broker's cache-hit `GetAccessToken`, and the sidecar's memory;
//! - the broker's cold path (cache disabled: every request signs an RS256 assertion and calls
//!   the Google emulator, which verifies it);
//! - the broker's plain ExchangeToken (never cached: every request is one RFC 8693 exchange at
//!   the emulator's STS), against the same exchange posted to that STS directly;
//! - the crypto library's raw RS256 signing rate, on one thread and on all cores;
//!
//! and reporting requests/s, latency percentiles and the ratios between them as a Markdown
//! table (and JSON with `--json`). It is a measurement tool, not a test: it asserts nothing.

mod load;
mod replay;
mod report;
mod setup;
mod sidecar;
mod sign;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use broker_proto::tokenbroker::v1::token_broker_client::TokenBrokerClient;
use broker_proto::tokenbroker::v1::{
    ExchangeTokenRequest, GenerateIdTokenRequest, GetAccessTokenRequest,
    ImpersonateServiceAccountRequest,
};
use clap::{Parser, ValueEnum};
use gcp_emulator::Endpoint as EmulatorEndpoint;

use crate::load::{BrokerCall, LoadResult, StsCall, Target, Timing};
use crate::report::{Checks, ExchangeChecks, Report, Scenario, SidecarChecks};
use crate::setup::World;

/// Errors of the tool.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// Load-test the token broker's cache-hit and cold paths against a bare tonic service and the
/// raw RS256 signing rate, and its ExchangeToken against the same STS exchange made directly,
/// on loopback over mutual TLS.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Concurrencies of the echo and cache-hit scenarios.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Concurrencies of the cold-path scenarios (cache disabled) and of ExchangeToken.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    cold_concurrency: Vec<usize>,
    /// Most HTTP/2 connections per scenario; a scenario of concurrency N uses min(N, this).
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Warm-up before each scenario, seconds (calls made, not recorded).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Measured time of each scenario, seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Slices each echo and cache-hit scenario is measured in, alternating echo and cache-hit
    /// at the same concurrency, so that drifting machine load affects both alike; likewise
    /// ExchangeToken and the direct STS exchange.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Time of each signing baseline, seconds.
    #[arg(long, default_value_t = 2.0)]
    sign_duration: f64,
    /// Tokio worker threads (client and servers share them); default: one per core.
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Which measurements to run (all by default; fewer, e.g. for profiling one of them).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "echo,hit,impersonate,id-token,id-token-echo,sidecar,cold,exchange,sign"
    )]
    scenarios: Vec<Measurement>,
    /// The `metadata-sidecar` binary of the sidecar scenario; default: the one next to this
    /// executable.
    #[arg(long, env = sidecar::BINARY_ENV)]
    sidecar_bin: Option<PathBuf>,
    /// Also write every number as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// `tracing` filter of the in-process servers' logs (`info` turns the audit events on).
    #[arg(long, default_value = "warn")]
    log_filter: String,
    /// Where those logs go (`null` keeps their formatting cost without the terminal's).
    #[arg(long, value_enum, default_value_t = LogOutput::Stderr)]
    log_output: LogOutput,
}

/// A kind of measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Measurement {
    /// The bare tonic service.
    Echo,
    /// The broker's cache-hit path.
    Hit,
    /// The cache-hit path of ImpersonateServiceAccount.
    Impersonate,
    /// The cache-hit path of GenerateIdToken.
    IdToken,
    /// A bare service answering GenerateIdToken with the broker's recorded response: the
    /// transport's ceiling for a response of that size.
    IdTokenEcho,
    /// The metadata sidecar's token endpoint (its own process, in front of the cache-hit
    /// broker), alternating with the broker's cache-hit GetAccessToken; and its memory.
    Sidecar,
    /// The broker's cold path.
    Cold,
    /// The broker's plain ExchangeToken (never cached), and the same STS exchange made
    /// directly over HTTP, alternating.
    Exchange,
    /// The signing baselines.
    Sign,
}

/// Where the servers' logs go.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogOutput {
    /// Standard error.
    Stderr,
    /// Formatted, then discarded.
    Null,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.concurrency.contains(&0)
        || cli.cold_concurrency.contains(&0)
        || cli.channels == 0
        || cli.rounds == 0
    {
        eprintln!("broker-load: concurrencies, --channels and --rounds must be at least 1");
        return ExitCode::FAILURE;
    }
    let filter = tracing_subscriber::EnvFilter::new(&cli.log_filter);
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match cli.log_output {
        LogOutput::Stderr => logs.with_writer(std::io::stderr).init(),
        LogOutput::Null => logs.with_writer(std::io::sink).init(),
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.worker_threads {
        runtime.worker_threads(threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("broker-load: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(report) => {
            report.print();
            if let Some(path) = &cli.json
                && let Err(error) = std::fs::write(path, report.to_json())
            {
                eprintln!("broker-load: cannot write {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("broker-load: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the world, runs every scenario and the baselines, stops the world.
async fn run(cli: &Cli) -> Result<Report, Error> {
    let timing = Timing {
        warmup: Duration::from_secs_f64(cli.warmup),
        duration: Duration::from_secs_f64(cli.duration),
    };
    // Before anything starts: a missing binary should not cost a run.
    let sidecar_bin = if cli.scenarios.contains(&Measurement::Sidecar) {
        Some(sidecar::locate(cli.sidecar_bin.as_deref())?)
    } else {
        None
    };
    let world = World::start().await?;
    let result = scenarios(cli, timing, &world, sidecar_bin.as_deref()).await;
    world.shutdown().await;
    result
}

async fn scenarios(
    cli: &Cli,
    timing: Timing,
    world: &World,
    sidecar_bin: Option<&Path>,
) -> Result<Report, Error> {
    let request = GetAccessTokenRequest {
        scopes: vec![setup::SCOPE.to_owned()],
        ..Default::default()
    };
    let id_token_request = BrokerCall::IdToken(GenerateIdTokenRequest {
        audience: setup::AUDIENCE.to_owned(),
        ..Default::default()
    });
    let hit_calls = [
        (Measurement::Hit, BrokerCall::AccessToken(request.clone())),
        (
            Measurement::Impersonate,
            BrokerCall::Impersonate(ImpersonateServiceAccountRequest {
                target_service_account: setup::TARGET.to_owned(),
                scopes: vec![setup::SCOPE.to_owned()],
                ..Default::default()
            }),
        ),
        (Measurement::IdToken, id_token_request.clone()),
        (Measurement::IdTokenEcho, id_token_request),
    ];
    let hit_calls: Vec<(Measurement, BrokerCall)> = hit_calls
        .into_iter()
        .filter(|(measurement, _)| cli.scenarios.contains(measurement))
        .collect();
    let upstream_calls = || {
        [
            EmulatorEndpoint::OAuth2Token,
            EmulatorEndpoint::IamGenerateAccessToken,
            EmulatorEndpoint::IamGenerateIdToken,
        ]
        .into_iter()
        .map(|endpoint| world.emulator.count(endpoint))
        .sum::<u64>()
    };
    let token_calls = || world.emulator.count(EmulatorEndpoint::OAuth2Token);
    // Calls to the cache-on broker's cache: every GetAccessToken it answers from it.
    let broker_lookups = || {
        let metrics = world.hit.service().cache().metrics();
        metrics.hits + metrics.misses
    };

    // Warm the cache: the upstream calls of the cache-hit scenarios (the impersonation
    // scenario's base token, its impersonated token, the ID token).
    let before_warm = upstream_calls();
    let mut warm = TokenBrokerClient::new(world.channels(world.hit.addr(), 1).await?.remove(0));
    for (measurement, call) in &hit_calls {
        if *measurement == Measurement::IdTokenEcho {
            continue;
        }
        if call.call(&mut warm).await? {
            return Err("the first request to a fresh broker was a cache hit".into());
        }
    }
    // The sidecar's token is the hit scenario's: warm it too when that scenario does not run,
    // so that the sidecar's one broker call is a hit either way.
    let hit_warmed = hit_calls.iter().any(|(m, _)| *m == Measurement::Hit);
    if sidecar_bin.is_some() && !hit_warmed {
        BrokerCall::AccessToken(request.clone())
            .call(&mut warm)
            .await?;
    }
    // The sidecar: started (and ready, its token fetched once) before the cache-hit scenarios'
    // counters are read, so that its one broker call is not counted as theirs.
    let mut sidecar_checks = SidecarChecks::default();
    let sidecar = match sidecar_bin {
        Some(binary) => {
            let before = broker_lookups();
            let sidecar = sidecar::Sidecar::start(binary, world, &cli.log_filter).await?;
            sidecar_checks.broker_calls_at_start = broker_lookups() - before;
            sidecar_checks.requests += 1;
            sidecar_checks.memory_ready = sidecar.memory();
            Some(sidecar)
        }
        None => None,
    };
    // The replay service answers what a cache hit of the broker answers.
    if hit_calls
        .iter()
        .any(|(m, _)| *m == Measurement::IdTokenEcho)
    {
        let mut recorded = warm
            .generate_id_token(GenerateIdTokenRequest {
                audience: setup::AUDIENCE.to_owned(),
                ..Default::default()
            })
            .await?
            .into_inner();
        recorded.cache_hit = true;
        let _ = world.echo.recorded_id_token.set(recorded);
    }
    let after_warm = upstream_calls();
    let hits_before = world.hit.service().cache().metrics();

    let mut echo = Vec::new();
    let mut sidecar_results = Vec::new();
    let mut hits: Vec<Vec<LoadResult>> = vec![Vec::new(); hit_calls.len()];
    let run_echo = cli.scenarios.contains(&Measurement::Echo);
    for &concurrency in &cli.concurrency {
        let channels = cli.channels.min(concurrency);
        let echo_channels = world.channels(world.echo_addr(), channels).await?;
        let hit_channels = world.channels(world.hit.addr(), channels).await?;
        let mut echo_slices = Vec::new();
        let mut sidecar_slices = Vec::new();
        let mut hit_slices: Vec<Vec<load::Slice>> = hit_calls.iter().map(|_| Vec::new()).collect();
        // Alternating slices of the same concurrency; the warm-up precedes the first of each.
        for round in 0..cli.rounds {
            let slice = timing.slice(round, cli.rounds);
            if run_echo {
                echo_slices.push(load::run(&echo_channels, concurrency, slice, Target::echo).await);
            }
            for ((measurement, call), slices) in hit_calls.iter().zip(&mut hit_slices) {
                let channels = if *measurement == Measurement::IdTokenEcho {
                    &echo_channels
                } else {
                    &hit_channels
                };
                slices.push(
                    load::run(channels, concurrency, slice, |channel| {
                        Target::broker(channel, call.clone(), true)
                    })
                    .await,
                );
            }
            if let Some(sidecar) = &sidecar {
                // HTTP/1.1: one keep-alive connection per task, new for each slice (made and
                // primed outside the measured time; the sidecar closes idle connections, and
                // the other scenarios' slices in between could outlast its timeout).
                let before = broker_lookups();
                let connections = sidecar.connections(concurrency).await?;
                sidecar_checks.requests += concurrency as u64;
                let targets = connections.into_iter().map(Target::Metadata).collect();
                sidecar_slices.push(load::run_targets(targets, concurrency, slice).await);
                sidecar_checks.broker_calls_during += broker_lookups() - before;
            }
        }
        if run_echo {
            echo.push(LoadResult::merge(echo_slices));
        }
        if sidecar.is_some() {
            let result = LoadResult::merge(sidecar_slices);
            sidecar_checks.requests += result.requests + result.warmup_requests;
            sidecar_checks.failures += result.errors + result.unexpected + result.warmup_problems;
            sidecar_results.push(result);
        }
        for (results, slices) in hits.iter_mut().zip(hit_slices) {
            results.push(LoadResult::merge(slices));
        }
    }
    let mut results: Vec<(Measurement, Vec<LoadResult>)> =
        hit_calls.iter().map(|(m, _)| *m).zip(hits).collect();
    let mut take = |wanted: Measurement| {
        results
            .iter()
            .position(|(m, _)| *m == wanted)
            .map(|i| results.swap_remove(i).1)
            .unwrap_or_default()
    };
    let (hit, impersonate, id_token, id_token_echo) = (
        take(Measurement::Hit),
        take(Measurement::Impersonate),
        take(Measurement::IdToken),
        take(Measurement::IdTokenEcho),
    );
    let after_hits = upstream_calls();
    let hits_after = world.hit.service().cache().metrics();
    if let Some(mut sidecar) = sidecar {
        sidecar_checks.memory_after = sidecar.memory();
        sidecar_checks.exited = !sidecar.running();
        drop(sidecar);
    }

    let mut cold = Vec::new();
    let before_cold = token_calls();
    let mut cold_requests = 0;
    if cli.scenarios.contains(&Measurement::Cold) {
        for &concurrency in &cli.cold_concurrency {
            let channels = world
                .channels(world.cold.addr(), cli.channels.min(concurrency))
                .await?;
            let result = LoadResult::merge(vec![
                load::run(&channels, concurrency, timing, |channel| {
                    Target::broker(channel, BrokerCall::AccessToken(request.clone()), false)
                })
                .await,
            ]);
            cold_requests += result.requests + result.warmup_requests;
            cold.push(result);
        }
    }
    let after_cold = token_calls();

    let (exchange, exchange_direct, exchange_checks) =
        if cli.scenarios.contains(&Measurement::Exchange) {
            exchange_scenarios(cli, timing, world).await?
        } else {
            Default::default()
        };

    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let sign = if !cli.scenarios.contains(&Measurement::Sign) {
        None
    } else {
        let key = sign::Key::from_file(&world.key_file())?;
        let duration = Duration::from_secs_f64(cli.sign_duration);
        Some(
            tokio::task::spawn_blocking(move || -> Result<_, Error> {
                Ok(report::Signing {
                    rsa_1: sign::rsa_preparsed(&key, 1, duration)?,
                    rsa_all: sign::rsa_preparsed(&key, cores, duration)?,
                })
            })
            .await??,
        )
    };

    Ok(Report::new(
        cli_summary(cli, timing, cores),
        Scenario {
            echo,
            hit,
            impersonate,
            id_token,
            id_token_echo,
            cold,
            exchange,
            exchange_direct,
            sidecar: sidecar_results,
        },
        sign,
        Checks {
            warmup_token_calls: after_warm - before_warm,
            hit_token_calls: after_hits - after_warm,
            cache_hits: hits_after.hits - hits_before.hits,
            cache_misses: hits_after.misses - hits_before.misses,
            cold_requests,
            cold_token_calls: after_cold - before_cold,
            exchange: exchange_checks,
            sidecar: sidecar_checks,
        },
    ))
}

/// The broker's plain ExchangeToken on the cold broker and the same exchange posted to the
/// emulator's STS by the load tool, in alternating slices at each cold concurrency; with the
/// STS calls each side made.
async fn exchange_scenarios(
    cli: &Cli,
    timing: Timing,
    world: &World,
) -> Result<(Vec<LoadResult>, Vec<LoadResult>, ExchangeChecks), Error> {
    let input = &world.exchange;
    // What the broker posts for this request: the form of StsCall (an empty
    // requested_token_type asks for an access token).
    let request = BrokerCall::Exchange(ExchangeTokenRequest {
        subject_token: input.subject_token.clone(),
        subject_token_type: setup::JWT_TOKEN_TYPE.to_owned(),
        audience: input.audience.clone(),
        scopes: vec![setup::SCOPE.to_owned()],
        ..Default::default()
    });
    // Like the broker's HTTP client: one pool for the run, HTTP/1.1 to the plain-HTTP
    // emulator, the brokers' 5 s request timeout, no redirects, no proxy.
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let direct_call = Arc::new(StsCall::new(
        client,
        world.sts_url(),
        &input.audience,
        setup::SCOPE,
        &input.subject_token,
        setup::JWT_TOKEN_TYPE,
    ));
    let sts_calls = || world.emulator.count(EmulatorEndpoint::StsToken);

    let (mut broker, mut direct) = (Vec::new(), Vec::new());
    let mut checks = ExchangeChecks::default();
    for &concurrency in &cli.cold_concurrency {
        let channels = world
            .channels(world.cold.addr(), cli.channels.min(concurrency))
            .await?;
        let (mut broker_slices, mut direct_slices) = (Vec::new(), Vec::new());
        for round in 0..cli.rounds {
            let slice = timing.slice(round, cli.rounds);
            let before = sts_calls();
            // HTTP/1.1: one connection per outstanding request.
            direct_slices.push(
                load::run_tasks(concurrency, concurrency, slice, |_| {
                    Target::Sts(Arc::clone(&direct_call))
                })
                .await,
            );
            let between = sts_calls();
            broker_slices.push(
                load::run(&channels, concurrency, slice, |channel| {
                    Target::broker(channel, request.clone(), false)
                })
                .await,
            );
            let after = sts_calls();
            checks.direct_sts_calls += between - before;
            checks.broker_sts_calls += after - between;
        }
        let (b, d) = (
            LoadResult::merge(broker_slices),
            LoadResult::merge(direct_slices),
        );
        checks.broker_requests += b.requests + b.warmup_requests;
        checks.broker_failures += b.errors + b.unexpected + b.warmup_problems;
        checks.direct_requests += d.requests + d.warmup_requests;
        checks.direct_failures += d.errors + d.unexpected + d.warmup_problems;
        broker.push(b);
        direct.push(d);
    }
    Ok((broker, direct, checks))
}

fn cli_summary(cli: &Cli, timing: Timing, cores: usize) -> serde_json::Value {
    serde_json::json!({
        "concurrency": cli.concurrency,
        "cold_concurrency": cli.cold_concurrency,
        "max_channels": cli.channels,
        "warmup_s": timing.warmup.as_secs_f64(),
        "duration_s": timing.duration.as_secs_f64(),
        "rounds": cli.rounds,
        "sign_duration_s": cli.sign_duration,
        "cores": cores,
        "worker_threads": cli.worker_threads,
        "scenarios": cli.scenarios.iter().map(|s| format!("{s:?}").to_lowercase()).collect::<Vec<_>>(),
        "log_filter": cli.log_filter,
        "log_output": format!("{:?}", cli.log_output).to_lowercase(),
    })
}
