//! How the cache is tuned.

use std::time::Duration;

/// Tuning of a [`TokenCache`](crate::TokenCache). `Default` gives the production values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// The most entries (keys) held; least valuable entries are evicted beyond it. `0` disables
    /// the cache: every call goes upstream on its own, with no caching and no coalescing (see
    /// [`CacheConfig::disabled`]). Default 10 000.
    pub max_capacity: u64,
    /// A hit with less than this validity left is still served, and starts one background
    /// refresh of its key. Clamped to half the token's lifetime, so short-lived tokens are not
    /// refreshed on every hit. Default 5 minutes.
    pub refresh_window: Duration,
    /// The refresh window is lengthened or shortened by up to this percentage, by an amount
    /// fixed per key (and per process), so that keys and replicas do not refresh in step.
    /// Values above 100 count as 100. Default 10.
    pub refresh_jitter_percent: u8,
    /// A token with less than this validity left is never served as a normal hit: it is
    /// refreshed synchronously first. Clamped to a quarter of the token's lifetime. Default 60 s.
    pub safety_margin: Duration,
    /// After a transient refresh failure, no new refresh of that key starts for this long
    /// (or for the `retry_after` Google asked for, if longer); meanwhile the last known good
    /// token is served. Default 10 s.
    pub failure_backoff: Duration,
    /// The deadline given to the source for a background refresh. Default 30 s.
    pub background_deadline: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_capacity: 10_000,
            refresh_window: Duration::from_secs(5 * 60),
            refresh_jitter_percent: 10,
            safety_margin: Duration::from_secs(60),
            failure_backoff: Duration::from_secs(10),
            background_deadline: Duration::from_secs(30),
        }
    }
}

impl CacheConfig {
    /// A pass-through configuration: every `get` calls the source itself (no caching, no
    /// coalescing), through the same code path, so the cold path can be measured.
    pub fn disabled() -> Self {
        Self {
            max_capacity: 0,
            ..Self::default()
        }
    }

    /// Whether tokens are cached at all (`max_capacity > 0`).
    pub fn is_enabled(&self) -> bool {
        self.max_capacity > 0
    }
}
