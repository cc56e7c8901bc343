//! The negative cache: permanent failures remembered for `negative_ttl`, by the injected clock.

use super::*;

impl TokenCache {
    fn remembers_failure_of(&self, key: &TokenKey) -> bool {
        self.inner
            .negative
            .as_ref()
            .is_some_and(|negative| negative.contains(key))
    }
}

#[tokio::test]
async fn a_rejected_request_repeated_a_thousand_times_makes_one_upstream_call() {
    let h = Harness::default();
    h.source.set_mode(Mode::FailPermanently);

    let first = h.get("sa").await.expect_err("rejected");
    assert!(!first.is_negative());
    let CacheError::Source(original) = &first else {
        panic!("a source error, got {first:?}");
    };
    for _ in 0..999 {
        let error = h.get("sa").await.expect_err("remembered");
        let CacheError::Negative(remembered) = &error else {
            panic!("a remembered error, got {error:?}");
        };
        assert!(Arc::ptr_eq(remembered, original), "the same error");
        assert!(!error.is_transient());
        assert!(matches!(
            error.source_error(),
            Some(SourceError::Rejected(rejection)) if rejection.error == "invalid_grant"
        ));
    }
    assert_eq!(h.source.calls(), 1);
    assert_eq!(
        h.cache.metrics(),
        CacheMetrics {
            misses: 1000,
            negative_hits: 999,
            upstream_fetches: 1,
            refresh_failures: 1,
            ..CacheMetrics::default()
        }
    );

    // Other keys are not affected.
    h.source.set_mode(Mode::Succeed);
    assert_eq!(origin(&h.get("other").await), Origin::Fetched);
}

#[tokio::test]
async fn the_failure_is_forgotten_after_negative_ttl_and_by_a_success() {
    let h = Harness::default();
    h.source.set_mode(Mode::FailPermanently);
    h.get("sa").await.expect_err("rejected");

    // Just before the 15 s are over: still remembered.
    h.clock.advance(secs(14));
    assert!(h.get("sa").await.expect_err("remembered").is_negative());
    assert_eq!(h.source.calls(), 1);

    // After it: one more upstream call, rejected again and remembered again.
    h.clock.advance(secs(1));
    assert!(!h.get("sa").await.expect_err("rejected").is_negative());
    assert_eq!(h.source.calls(), 2);
    for _ in 0..10 {
        assert!(h.get("sa").await.expect_err("remembered").is_negative());
    }
    assert_eq!(h.source.calls(), 2);

    // Fixed upstream: after the TTL the fetch succeeds and clears the negative entry.
    h.source.set_mode(Mode::Succeed);
    h.clock.advance(secs(15));
    assert!(h.cache.remembers_failure_of(&key("sa")));
    assert_eq!(origin(&h.get("sa").await), Origin::Fetched);
    assert!(!h.cache.remembers_failure_of(&key("sa")));
    assert_eq!(origin(&h.get("sa").await), Origin::Hit);
    assert_eq!(h.source.calls(), 3);
}

#[tokio::test]
async fn invalidate_forgets_the_failure() {
    let h = Harness::default();
    h.source.set_mode(Mode::FailPermanently);
    h.get("sa").await.expect_err("rejected");
    h.cache.invalidate(&key("sa")).await;
    h.source.set_mode(Mode::Succeed);
    assert_eq!(origin(&h.get("sa").await), Origin::Fetched);
    assert_eq!(h.source.calls(), 2);
}

#[tokio::test]
async fn transient_failures_are_not_remembered() {
    let h = Harness::default();
    h.source.set_mode(Mode::FailTransiently);
    for calls in 1..=5 {
        let error = h.get("sa").await.expect_err("unavailable");
        assert!(error.is_transient());
        assert!(!error.is_negative());
        assert_eq!(h.source.calls(), calls);
    }
    assert!(!h.cache.remembers_failure_of(&key("sa")));
    assert_eq!(h.cache.metrics().negative_hits, 0);

    // A panicking source (Aborted) is transient too.
    h.source.set_mode(Mode::Panic);
    assert!(matches!(h.get("sa").await, Err(CacheError::Aborted)));
    h.source.set_mode(Mode::FailTransiently);
    h.get("sa").await.expect_err("unavailable");
    assert_eq!(h.source.calls(), 7);
}

#[tokio::test]
async fn a_zero_negative_ttl_disables_the_negative_cache() {
    let h = Harness::new(CacheConfig {
        negative_ttl: Duration::ZERO,
        ..CacheConfig::default()
    });
    h.source.set_mode(Mode::FailPermanently);
    for calls in 1..=5 {
        assert!(!h.get("sa").await.expect_err("rejected").is_negative());
        assert_eq!(h.source.calls(), calls);
    }
    assert_eq!(h.cache.metrics().negative_hits, 0);
}

#[tokio::test]
async fn a_disabled_cache_remembers_nothing() {
    let h = Harness::new(CacheConfig::disabled());
    h.source.set_mode(Mode::FailPermanently);
    for calls in 1..=3 {
        assert!(!h.get("sa").await.expect_err("rejected").is_negative());
        assert_eq!(h.source.calls(), calls);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_of_a_rejected_fetch_share_it_and_later_callers_are_answered_from_memory() {
    let h = Harness::default();
    h.source.set_mode(Mode::FailPermanently);
    h.source.close_gate();
    let tasks: Vec<_> = (0..20).map(|_| h.spawn_get("sa", Duration::ZERO)).collect();
    until(|| h.cache.metrics().coalesced == 19).await;
    h.source.open_gate();
    for task in tasks {
        let error = task.await.expect("task").expect_err("rejected");
        assert!(!error.is_negative(), "they waited for the fetch itself");
    }
    assert!(h.get("sa").await.expect_err("remembered").is_negative());
    assert_eq!(h.source.calls(), 1);
}

#[tokio::test]
async fn the_negative_cache_is_bounded_by_max_capacity() {
    let h = Harness::new(CacheConfig {
        max_capacity: 3,
        ..CacheConfig::default()
    });
    h.source.set_mode(Mode::FailPermanently);
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    for name in names {
        h.get(name).await.expect_err("rejected");
    }
    let negative = h.cache.inner.negative.as_ref().expect("enabled");
    let held = negative.len().await;
    assert!(held <= 3, "{held} failures held");
}
