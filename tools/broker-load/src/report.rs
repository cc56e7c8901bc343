//! The results: a Markdown report on stdout and the same numbers as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::LoadResult;
use crate::sidecar::Memory;
use crate::sign::SignResult;

/// The concurrency at which the cache-hit targets apply.
const TARGET_CONCURRENCY: usize = 64;
/// Cache-hit throughput must be at least this fraction of the echo service's.
const TARGET_RPS_RATIO: f64 = 0.90;
/// Cache-hit p99 must be at most this multiple of the echo service's.
const TARGET_P99_RATIO: f64 = 1.5;
/// The targets of the cache-hit paths against echo (at [`TARGET_CONCURRENCY`]).
const HIT_TARGETS: Targets = Targets {
    rps: TARGET_RPS_RATIO,
    p99: TARGET_P99_RATIO,
};
/// The targets of the sidecar's token endpoint against the broker's cache-hit GetAccessToken,
/// at every concurrency: at least 0.8 x its throughput, p99 at most 1.5 x.
const SIDECAR_TARGETS: Targets = Targets { rps: 0.8, p99: 1.5 };

/// A throughput floor and a p99 ceiling, as ratios to a baseline.
#[derive(Debug, Clone, Copy)]
struct Targets {
    rps: f64,
    p99: f64,
}

/// The load scenarios' results, in the order they ran.
#[derive(Debug, Serialize)]
pub(crate) struct Scenario {
    /// The bare tonic service, one per concurrency.
    pub(crate) echo: Vec<LoadResult>,
    /// The broker's cache-hit path, one per concurrency.
    pub(crate) hit: Vec<LoadResult>,
    /// The cache-hit path of ImpersonateServiceAccount, one per concurrency.
    pub(crate) impersonate: Vec<LoadResult>,
    /// The cache-hit path of GenerateIdToken, one per concurrency.
    pub(crate) id_token: Vec<LoadResult>,
    /// A bare service answering the same GenerateIdToken response, one per concurrency.
    pub(crate) id_token_echo: Vec<LoadResult>,
    /// The broker's cold path, one per cold concurrency.
    pub(crate) cold: Vec<LoadResult>,
    /// The broker's plain ExchangeToken (never cached), one per cold concurrency.
    pub(crate) exchange: Vec<LoadResult>,
    /// The same STS exchange posted directly, in slices alternating with `exchange`, one per
    /// cold concurrency.
    pub(crate) exchange_direct: Vec<LoadResult>,
    /// The metadata sidecar's token endpoint, in slices alternating with `hit`, one per
    /// concurrency.
    pub(crate) sidecar: Vec<LoadResult>,
}

/// The signing baselines.
#[derive(Debug, Serialize)]
pub(crate) struct Signing {
    /// aws-lc-rs RSA-2048 PKCS#1 v1.5 SHA-256 with a pre-parsed key, one thread.
    pub(crate) rsa_1: SignResult,
    /// The same on all cores.
    pub(crate) rsa_all: SignResult,
}

/// What the run verified about itself.
#[derive(Debug, Serialize)]
pub(crate) struct Checks {
    /// Emulator token calls (OAuth 2.0, IAM generateAccessToken and generateIdToken) made by
    /// warming the cache (expected: one per cache-hit scenario).
    pub(crate) warmup_token_calls: u64,
    /// Emulator token calls during the cache-hit scenarios (expected: 0).
    pub(crate) hit_token_calls: u64,
    /// Cache hits the broker counted during the cache-hit scenarios.
    pub(crate) cache_hits: u64,
    /// Cache misses the broker counted during the cache-hit scenarios (expected: 0).
    pub(crate) cache_misses: u64,
    /// Requests sent to the cold broker, warm-up included.
    pub(crate) cold_requests: u64,
    /// Emulator token calls during the cold scenarios (expected: one per request).
    pub(crate) cold_token_calls: u64,
    /// The ExchangeToken scenario's.
    pub(crate) exchange: ExchangeChecks,
    /// The sidecar scenario's.
    pub(crate) sidecar: SidecarChecks,
}

/// What the sidecar scenario verified, and the sidecar's memory: one broker call in all (its
/// start's), every request answered with that token, the process alive to the end.
#[derive(Debug, Default, Serialize)]
pub(crate) struct SidecarChecks {
    /// Requests to the sidecar: its first token, each connection's priming request, warm-ups
    /// and measured requests.
    pub(crate) requests: u64,
    /// Of those, failed or answered otherwise than with the sidecar's one token (expected: 0;
    /// a failed first or priming request ends the run instead).
    pub(crate) failures: u64,
    /// Calls the broker answered (its cache's lookups) from the sidecar's start until it was
    /// ready and had answered its first token (expected: 1).
    pub(crate) broker_calls_at_start: u64,
    /// Calls the broker answered during the sidecar's slices, connecting and warm-ups included
    /// (expected: 0).
    pub(crate) broker_calls_during: u64,
    /// Whether the sidecar had exited by the end of its scenario (expected: no).
    pub(crate) exited: bool,
    /// Its memory once ready, before any load.
    pub(crate) memory_ready: Option<Memory>,
    /// Its memory after the last slice (`hwm_kib`: the peak of the whole run).
    pub(crate) memory_after: Option<Memory>,
    /// Whether all of the above is as expected; `None` when the scenario did not run.
    pub(crate) passed: Option<bool>,
}

impl SidecarChecks {
    fn verdict(&self) -> Option<bool> {
        (self.requests > 0).then_some(
            self.failures == 0
                && self.broker_calls_at_start == 1
                && self.broker_calls_during == 0
                && !self.exited,
        )
    }
}

/// What the ExchangeToken scenario verified: one STS call per call, on both sides, and no
/// failure (warm-ups included).
#[derive(Debug, Default, Serialize)]
pub(crate) struct ExchangeChecks {
    /// ExchangeToken calls to the broker, warm-up included.
    pub(crate) broker_requests: u64,
    /// Emulator STS calls during the broker's slices (expected: `broker_requests`).
    pub(crate) broker_sts_calls: u64,
    /// Broker calls that failed or were answered unexpectedly, warm-up included (expected: 0).
    pub(crate) broker_failures: u64,
    /// Exchanges posted directly to STS, warm-up included.
    pub(crate) direct_requests: u64,
    /// Emulator STS calls during the direct slices (expected: `direct_requests`).
    pub(crate) direct_sts_calls: u64,
    /// Direct exchanges that failed or were answered unexpectedly (expected: 0).
    pub(crate) direct_failures: u64,
    /// Whether all of the above is as expected; `None` when the scenario did not run.
    pub(crate) passed: Option<bool>,
}

impl ExchangeChecks {
    fn verdict(&self) -> Option<bool> {
        (self.broker_requests > 0 || self.direct_requests > 0).then_some(
            self.broker_sts_calls == self.broker_requests
                && self.broker_failures == 0
                && self.direct_sts_calls == self.direct_requests
                && self.direct_failures == 0,
        )
    }
}

/// One ratio, with its target where the issue sets one.
#[derive(Debug, Serialize)]
pub(crate) struct Ratio {
    /// What is divided by what.
    pub(crate) name: String,
    /// The concurrency (or thread count) it applies to.
    pub(crate) at: usize,
    /// The ratio.
    pub(crate) value: f64,
    /// The target, as text (`>= 0.90`), if any.
    pub(crate) target: Option<String>,
    /// Whether the target is met, if there is one.
    pub(crate) met: Option<bool>,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    config: serde_json::Value,
    scenarios: Scenario,
    signing: Option<Signing>,
    ratios: Vec<Ratio>,
    checks: Checks,
}

impl Report {
    /// Computes the ratios.
    pub(crate) fn new(
        config: serde_json::Value,
        scenarios: Scenario,
        signing: Option<Signing>,
        mut checks: Checks,
    ) -> Self {
        checks.exchange.passed = checks.exchange.verdict();
        checks.sidecar.passed = checks.sidecar.verdict();
        let mut ratios = Vec::new();
        let target_at = scenarios
            .hit
            .iter()
            .map(|r| r.concurrency)
            .find(|&c| c == TARGET_CONCURRENCY)
            .or_else(|| scenarios.hit.iter().map(|r| r.concurrency).max());
        let hit_paths = [
            ("cache-hit", &scenarios.hit),
            ("impersonate cache-hit", &scenarios.impersonate),
            ("ID-token cache-hit", &scenarios.id_token),
        ];
        for (path, results) in hit_paths {
            for (echo, hit) in scenarios.echo.iter().zip(results) {
                push_ratios(
                    &mut ratios,
                    &format!("{path} / echo"),
                    echo,
                    hit,
                    (Some(hit.concurrency) == target_at).then_some(HIT_TARGETS),
                );
            }
        }
        // ID tokens are about ten times the size of access tokens: against a bare service
        // sending the same response, the transport's share of that size cancels out.
        for (echo, hit) in scenarios.id_token_echo.iter().zip(&scenarios.id_token) {
            push_ratios(
                &mut ratios,
                "ID-token cache-hit / ID-token replay",
                echo,
                hit,
                (Some(hit.concurrency) == target_at).then_some(HIT_TARGETS),
            );
        }
        // The metadata protocol in front of the broker, against the broker's own gRPC hit path.
        for (hit, sidecar) in scenarios.hit.iter().zip(&scenarios.sidecar) {
            push_ratios(
                &mut ratios,
                "sidecar token / broker GetAccessToken cache-hit",
                hit,
                sidecar,
                Some(SIDECAR_TARGETS),
            );
        }
        // The broker's cost of an uncached pass-through: mTLS, policy, audit and its HTTP client
        // around the same STS call.
        for (direct, broker) in scenarios.exchange_direct.iter().zip(&scenarios.exchange) {
            push_ratios(
                &mut ratios,
                "broker ExchangeToken / direct STS exchange",
                direct,
                broker,
                None,
            );
        }
        if let Some(signing) = &signing {
            for cold in &scenarios.cold {
                for sign in [&signing.rsa_1, &signing.rsa_all] {
                    ratios.push(Ratio {
                        name: format!(
                            "cold c={} req/s / RS256 signs/s (key parsed once) on {} thread(s)",
                            cold.concurrency, sign.threads
                        ),
                        at: cold.concurrency,
                        value: ratio(cold.rps, sign.ops_per_s),
                        target: None,
                        met: None,
                    });
                }
            }
        }
        Self {
            config,
            scenarios,
            signing,
            ratios,
            checks,
        }
    }

    /// The report as pretty JSON.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// The report as Markdown.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        let config = &self.config;
        let _ = writeln!(
            out,
            "## broker-load: 127.0.0.1, mTLS (TLS 1.3, aws-lc-rs), {} cores; {} s per scenario after {} s warm-up; echo, the cache-hit scenarios and the sidecar alternate in {} slices, as do the direct STS exchange and ExchangeToken\n",
            config["cores"], config["duration_s"], config["warmup_s"], config["rounds"]
        );
        out.push_str("| scenario | concurrency | connections | req/s | p50 µs | p90 µs | p99 µs | max µs | mean µs | errors | unexpected |\n");
        out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        let sc = &self.scenarios;
        let pairs = sc.echo.len().max(sc.hit.len()).max(sc.sidecar.len());
        let rows = (0..pairs)
            .flat_map(|i| {
                [
                    ("echo (tonic-health Check)", sc.echo.get(i)),
                    ("broker GetAccessToken, cache hit", sc.hit.get(i)),
                    (
                        "broker ImpersonateServiceAccount, cache hit",
                        sc.impersonate.get(i),
                    ),
                    ("broker GenerateIdToken, cache hit", sc.id_token.get(i)),
                    (
                        "replay GenerateIdToken (bare service, same response)",
                        sc.id_token_echo.get(i),
                    ),
                    (
                        "sidecar GET …/service-accounts/default/token (HTTP/1.1 keep-alive)",
                        sc.sidecar.get(i),
                    ),
                ]
            })
            .filter_map(|(name, result)| Some((name, result?)))
            .chain(
                sc.cold
                    .iter()
                    .map(|cold| ("broker GetAccessToken, cold (cache off)", cold)),
            )
            .chain(
                (0..sc.exchange.len().max(sc.exchange_direct.len()))
                    .flat_map(|i| {
                        [
                            (
                                "direct STS exchange (reqwest, HTTP/1.1 to /v1/token)",
                                sc.exchange_direct.get(i),
                            ),
                            (
                                "broker ExchangeToken, plain (jwt → STS, never cached)",
                                sc.exchange.get(i),
                            ),
                        ]
                    })
                    .filter_map(|(name, result)| Some((name, result?))),
            );
        for (name, r) in rows {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {:.0} | {} | {} | {} | {} | {:.0} | {} | {} |",
                r.concurrency,
                r.channels,
                r.rps,
                r.p50_us,
                r.p90_us,
                r.p99_us,
                r.max_us,
                r.mean_us,
                r.errors,
                r.unexpected
            );
        }
        if let Some(signing) = &self.signing {
            out.push_str(
                "\n| signing baseline | threads | signatures/s | µs per signature per thread |\n",
            );
            out.push_str("|---|--:|--:|--:|\n");
            for (name, s) in [
                (
                    "aws-lc-rs RSA-2048 PKCS#1 SHA-256, key parsed once (the backend's signer)",
                    &signing.rsa_1,
                ),
                (
                    "aws-lc-rs RSA-2048 PKCS#1 SHA-256, key parsed once (the backend's signer)",
                    &signing.rsa_all,
                ),
            ] {
                let _ = writeln!(
                    out,
                    "| {name} | {} | {:.0} | {:.0} |",
                    s.threads, s.ops_per_s, s.us_per_op
                );
            }
        }
        out.push_str("\n| ratio | at | value | target | met |\n|---|--:|--:|---|---|\n");
        for r in &self.ratios {
            let _ = writeln!(
                out,
                "| {} | {} | {:.3} | {} | {} |",
                r.name,
                r.at,
                r.value,
                r.target.as_deref().unwrap_or(""),
                match r.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "",
                }
            );
        }
        let c = &self.checks;
        let _ = writeln!(
            out,
            "\nChecks: upstream token calls: {} to warm the cache, {} during the cache-hit scenarios \
             (broker cache: {} hits, {} misses); cold scenarios: {} requests, {} upstream token calls.",
            c.warmup_token_calls,
            c.hit_token_calls,
            c.cache_hits,
            c.cache_misses,
            c.cold_requests,
            c.cold_token_calls
        );
        let x = &c.exchange;
        if let Some(passed) = x.passed {
            let _ = writeln!(
                out,
                "Exchange check: broker ExchangeToken: {} calls, {} STS calls, {} failed; direct: {} exchanges, {} STS calls, {} failed (warm-ups included; expected: one STS call per call, none failed): {}.",
                x.broker_requests,
                x.broker_sts_calls,
                x.broker_failures,
                x.direct_requests,
                x.direct_sts_calls,
                x.direct_failures,
                if passed { "ok" } else { "**FAILED**" }
            );
        }
        let s = &c.sidecar;
        if let Some(passed) = s.passed {
            let _ = writeln!(
                out,
                "Sidecar check: {} requests (its first token, priming and warm-ups included), {} failed or answered another token; broker calls: {} at its start, {} during its slices; {} (expected: exactly one broker call, none failed, still running): {}.",
                s.requests,
                s.failures,
                s.broker_calls_at_start,
                s.broker_calls_during,
                if s.exited { "exited" } else { "still running" },
                if passed { "ok" } else { "**FAILED**" }
            );
            let memory = |m: &Option<Memory>| match m {
                Some(m) => format!(
                    "VmRSS {:.1} MiB, VmHWM {:.1} MiB, {} threads",
                    m.rss_kib as f64 / 1024.0,
                    m.hwm_kib as f64 / 1024.0,
                    m.threads
                ),
                None => "unavailable (no /proc)".to_owned(),
            };
            let _ = writeln!(
                out,
                "Sidecar memory (its own process): once ready {}; after the run {}.",
                memory(&s.memory_ready),
                memory(&s.memory_after)
            );
        }
        for r in self
            .scenarios
            .echo
            .iter()
            .chain(&self.scenarios.hit)
            .chain(&self.scenarios.impersonate)
            .chain(&self.scenarios.id_token)
            .chain(&self.scenarios.id_token_echo)
            .chain(&self.scenarios.sidecar)
            .chain(&self.scenarios.cold)
            .chain(&self.scenarios.exchange_direct)
            .chain(&self.scenarios.exchange)
        {
            if let Some(problem) = &r.first_problem {
                let _ = writeln!(out, "Problem at concurrency {}: {problem}", r.concurrency);
            }
        }
        out
    }

    /// Prints the Markdown report to stdout.
    #[allow(clippy::print_stdout)]
    pub(crate) fn print(&self) {
        print!("{}", self.markdown());
    }
}

/// The ratios of one path against its baseline (a cache-hit path against echo, say) at one
/// concurrency, with `targets` where they apply.
fn push_ratios(
    ratios: &mut Vec<Ratio>,
    path: &str,
    echo: &LoadResult,
    hit: &LoadResult,
    targets: Option<Targets>,
) {
    let rps = ratio(hit.rps, echo.rps);
    ratios.push(Ratio {
        name: format!("{path}, req/s"),
        at: hit.concurrency,
        value: rps,
        target: targets.map(|t| format!(">= {:.2}", t.rps)),
        met: targets.map(|t| rps >= t.rps),
    });
    let mut pairs: Vec<f64> = hit
        .slice_rps
        .iter()
        .zip(&echo.slice_rps)
        .map(|(&h, &e)| ratio(h, e))
        .collect();
    if pairs.len() > 1 {
        pairs.sort_by(f64::total_cmp);
        ratios.push(Ratio {
            name: format!(
                "{path}, req/s, median of {} alternating slice pairs (min {:.3}, max {:.3})",
                pairs.len(),
                pairs[0],
                pairs[pairs.len() - 1]
            ),
            at: hit.concurrency,
            value: pairs[pairs.len() / 2],
            target: None,
            met: None,
        });
    }
    let p50 = ratio(f64::from(hit.p50_us), f64::from(echo.p50_us));
    ratios.push(Ratio {
        name: format!("{path}, p50"),
        at: hit.concurrency,
        value: p50,
        target: None,
        met: None,
    });
    let p99 = ratio(f64::from(hit.p99_us), f64::from(echo.p99_us));
    ratios.push(Ratio {
        name: format!("{path}, p99"),
        at: hit.concurrency,
        value: p99,
        target: targets.map(|t| format!("<= {:.2}", t.p99)),
        met: targets.map(|t| p99 <= t.p99),
    });
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}
