//! The proof of the refresh-ahead guarantee: a day of callers, one every simulated second, on a
//! [`ManualClock`], for each token lifetime and caller requirement that matters.

use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);
const TEN_MINUTES: Duration = Duration::from_secs(600);
const DEFAULT: Duration = Duration::from_secs(300);
const MAXIMUM: Duration = Duration::from_secs(1800);
const MIXED: [Duration; 3] = [Duration::ZERO, DEFAULT, MAXIMUM];

/// What a simulated run observed.
#[derive(Debug, Default)]
struct Run {
    /// Per key: its refresh lead.
    leads: Vec<Duration>,
    /// Per key: when its source was called.
    calls: Vec<Vec<SystemTime>>,
    /// Callers, after each key's first, that waited for a fetch (`Fetched` or `Coalesced`).
    waits: usize,
    /// Callers served a last-known-good token.
    last_known_good: usize,
    /// Callers served a token with less than their (capped) requirement left.
    short: usize,
}

/// Every simulated second, one caller per key asks for a token with the next requirement of
/// `requirements` (in turn); then every background refresh the callers started completes.
async fn simulate(
    lifetime: Duration,
    requirements: &[Duration],
    keys: &[&str],
    duration: Duration,
) -> Run {
    let config = CacheConfig::default();
    let clock = ManualClock::default();
    let cache = TokenCache::for_tests(config.clone(), &clock);
    let sources: Vec<_> = keys
        .iter()
        .map(|_| {
            let source = FakeSource::new(clock.clone());
            source.set_lifetime(lifetime);
            source
        })
        .collect();
    let mut run = Run {
        leads: keys.iter().map(|name| cache.lead(&key(name))).collect(),
        ..Run::default()
    };
    for (second, min_remaining) in (0..duration.as_secs()).zip(requirements.iter().cycle()) {
        for (name, source) in keys.iter().zip(&sources) {
            let served = get_from(&cache, source, name, *min_remaining)
                .await
                .expect("a token");
            match served.origin {
                Origin::Hit => {}
                Origin::Fetched | Origin::Coalesced if second == 0 => {}
                Origin::Fetched | Origin::Coalesced => run.waits += 1,
                Origin::LastKnownGood => run.last_known_good += 1,
            }
            let required = (*min_remaining).max(config.safety_margin).min(lifetime / 2);
            if served.token.remaining(clock.now()) < required {
                run.short += 1;
            }
        }
        for name in keys {
            cache.settle(&key(name)).await;
        }
        clock.advance(secs(1));
    }
    run.calls = sources
        .iter()
        .map(|source| lock(&source.called_at).clone())
        .collect();
    run
}

/// Runs a day for one key and checks the guarantee and its cost; returns the upstream calls.
async fn prove(lifetime: Duration, requirements: &[Duration]) -> usize {
    let config = CacheConfig::default();
    let run = simulate(lifetime, requirements, &["sa"], DAY).await;
    assert_eq!(run.waits, 0, "callers waited");
    assert_eq!(run.last_known_good, 0);
    assert_eq!(run.short, 0, "tokens served below the requirement");

    // Each token is used for at least its usable period: no duplicate or early refresh.
    let largest = requirements
        .iter()
        .max()
        .map_or(config.safety_margin, |r| (*r).max(config.safety_margin))
        .min(lifetime / 2);
    let longest_lead = (config.refresh_lead * (100 + u32::from(config.refresh_jitter_percent))
        / 100)
        .min(lifetime / 4);
    let usable = lifetime - largest - longest_lead;
    let calls = &run.calls[0];
    for pair in calls.windows(2) {
        let gap = pair[1].duration_since(pair[0]).expect("in order");
        assert!(gap >= usable, "refreshed after {gap:?}, usable {usable:?}");
    }
    let bound = DAY.as_secs() / usable.as_secs() + 1;
    assert!(
        calls.len() as u64 <= bound,
        "{} calls > {bound}",
        calls.len()
    );
    eprintln!(
        "lifetime {lifetime:?}, requirements {requirements:?}: {} upstream calls in 24 h \
         (bound {bound}), 0 waits",
        calls.len()
    );
    calls.len()
}

#[tokio::test]
async fn a_day_of_one_hour_tokens_for_callers_with_the_default_requirement() {
    prove(HOUR, &[DEFAULT]).await;
}

#[tokio::test]
async fn a_day_of_one_hour_tokens_for_callers_with_the_maximum_requirement() {
    prove(HOUR, &[MAXIMUM]).await;
}

#[tokio::test]
async fn a_day_of_one_hour_tokens_for_callers_with_mixed_requirements() {
    prove(HOUR, &MIXED).await;
}

#[tokio::test]
async fn a_day_of_ten_minute_tokens_for_callers_with_the_default_requirement() {
    prove(TEN_MINUTES, &[DEFAULT]).await;
}

#[tokio::test]
async fn a_day_of_ten_minute_tokens_for_callers_with_the_maximum_requirement() {
    prove(TEN_MINUTES, &[MAXIMUM]).await;
}

#[tokio::test]
async fn a_day_of_ten_minute_tokens_for_callers_with_mixed_requirements() {
    prove(TEN_MINUTES, &MIXED).await;
}

#[tokio::test]
async fn keys_refresh_at_different_times() {
    let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let run = simulate(HOUR, &[DEFAULT], &keys, 2 * HOUR).await;
    assert_eq!((run.waits, run.last_known_good, run.short), (0, 0, 0));

    let mut first_refreshes = std::collections::HashSet::new();
    for (calls, lead) in run.calls.iter().zip(&run.leads) {
        let refreshed_after = calls[1].duration_since(calls[0]).expect("in order");
        // The first second with no more than (requirement + lead) left.
        let due = (HOUR - DEFAULT - *lead).as_secs_f64().ceil();
        assert_eq!(
            refreshed_after,
            Duration::from_secs_f64(due),
            "lead {lead:?}"
        );
        first_refreshes.insert(refreshed_after);
    }
    assert!(
        first_refreshes.len() >= keys.len() / 2,
        "refresh times {first_refreshes:?}"
    );
}
