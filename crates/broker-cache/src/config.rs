//! How the cache is tuned, and which tunings break the refresh-ahead guarantee.

use std::time::Duration;

use crate::entry::jitter;

/// Tuning of a [`TokenCache`](crate::TokenCache). `Default` gives the production values.
///
/// The crate documentation explains how these settings combine into the refresh-ahead
/// guarantee; [`CacheConfig::problems`] lists the combinations that cannot keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// The most entries (keys) held; least valuable entries are evicted beyond it. It bounds
    /// the negative cache too. `0` disables the cache: every call goes upstream on its own,
    /// with no caching, no coalescing and no negative cache (see [`CacheConfig::disabled`]).
    /// Default 10 000.
    pub max_capacity: u64,
    /// How long before the largest requirement of a key's callers would fail its token is
    /// refreshed in the background: a hit starts one background refresh once the token has no
    /// more than (largest requirement + lead) left. Jittered per key by
    /// [`refresh_jitter_percent`](Self::refresh_jitter_percent), and capped at a quarter of the
    /// token's lifetime. Default 120 s.
    pub refresh_lead: Duration,
    /// The refresh lead is lengthened or shortened by up to this percentage, by an amount fixed
    /// per key (and per process), so that keys and replicas do not refresh in step. Must be
    /// below 100 (see [`problems`](Self::problems)). Default 25.
    pub refresh_jitter_percent: u8,
    /// The least validity a served hit has: a caller's requirement is its `min_remaining`,
    /// raised to this. Default 60 s.
    pub safety_margin: Duration,
    /// After a transient refresh failure, no new refresh of that key starts for this long
    /// (or for the `retry_after` Google asked for, if longer); meanwhile the last known good
    /// token is served. Default 10 s.
    pub failure_backoff: Duration,
    /// The deadline given to the source for a background refresh. Must not be longer than the
    /// shortest refresh lead (see [`problems`](Self::problems)). Default 30 s.
    pub background_deadline: Duration,
    /// How long a permanent failure (Google rejected the request) is remembered for its key:
    /// meanwhile the same request gets the same error without an upstream call. `0` disables
    /// the negative cache. Default 15 s.
    pub negative_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_capacity: 10_000,
            refresh_lead: Duration::from_secs(120),
            refresh_jitter_percent: 25,
            safety_margin: Duration::from_secs(60),
            failure_backoff: Duration::from_secs(10),
            background_deadline: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(15),
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

    /// Whether permanent failures are remembered (the cache is enabled and `negative_ttl > 0`).
    pub(crate) fn is_negative_cache_enabled(&self) -> bool {
        self.is_enabled() && !self.negative_ttl.is_zero()
    }

    /// The shortest refresh lead any key gets: `refresh_lead` minus the jitter (before the cap
    /// at a quarter of a token's lifetime).
    fn shortest_refresh_lead(&self) -> Duration {
        jitter(self.refresh_lead, self.refresh_jitter_percent, 0)
    }

    /// Every setting, or combination of settings, with which a key in use could not be
    /// refreshed in the background before a caller's requirement fails; empty when the
    /// configuration is sound. Each message starts with the field it is about. A disabled
    /// cache has no problems (it refreshes nothing).
    pub fn problems(&self) -> Vec<String> {
        if !self.is_enabled() {
            return Vec::new();
        }
        let mut problems = Vec::new();
        if self.refresh_jitter_percent >= 100 {
            problems.push(format!(
                "refresh_jitter_percent: must be below 100 (at {} the refresh lead of some keys \
                 shrinks to zero)",
                self.refresh_jitter_percent
            ));
        }
        if self.refresh_lead.is_zero() {
            problems.push(
                "refresh_lead: must be longer than zero; without a lead a token is refreshed \
                 only when a caller's requirement already fails"
                    .to_owned(),
            );
        }
        if self.background_deadline.is_zero() {
            problems.push(
                "background_deadline: must be longer than zero; every background refresh would \
                 give up at once"
                    .to_owned(),
            );
        }
        let lead = self.shortest_refresh_lead();
        if problems.is_empty() && self.background_deadline > lead {
            problems.push(format!(
                "background_deadline: {:?} is longer than the shortest refresh lead \
                 (refresh_lead minus jitter = {lead:?}); a background refresh could still be \
                 running when a caller's requirement fails",
                self.background_deadline
            ));
        }
        problems
    }
}
