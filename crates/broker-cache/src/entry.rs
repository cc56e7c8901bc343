//! A cached token and the arithmetic of the refresh rule (see the crate documentation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use broker_core::Token;

/// A cached token and what the cache knows about its callers.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) token: Arc<Token>,
    /// `expires_at` minus the time it was fetched: the most validity the source gives.
    lifetime: Duration,
    /// The jittered refresh lead of this key, capped at a quarter of `lifetime`.
    lead: Duration,
    /// The largest requirement the callers of the entry this one replaced asked for.
    inherited: Duration,
    /// The largest requirement the callers of this entry asked for, in nanoseconds.
    observed: AtomicU64,
    /// Until when no refresh of this key should start, after a transient failure.
    backoff_until: Mutex<Option<SystemTime>>,
}

impl Entry {
    /// The entry for `token`, fetched at `fetched_at`, for a key whose (uncapped, jittered)
    /// refresh lead is `lead`, replacing `previous` if there was one.
    pub(crate) fn new(
        token: Arc<Token>,
        fetched_at: SystemTime,
        lead: Duration,
        previous: Option<&Self>,
    ) -> Self {
        let lifetime = token.remaining(fetched_at);
        Self {
            token,
            lifetime,
            lead: lead.min(lifetime / 4),
            inherited: previous.map_or(Duration::ZERO, Self::observed),
            observed: AtomicU64::new(0),
            backoff_until: Mutex::new(None),
        }
    }

    /// A caller's effective requirement: `min_remaining` raised to `safety_margin`, capped at
    /// half the token's lifetime (as much as this source can give).
    pub(crate) fn requirement(&self, min_remaining: Duration, safety_margin: Duration) -> Duration {
        min_remaining.max(safety_margin).min(self.lifetime / 2)
    }

    /// Records that a caller needs `requirement`.
    pub(crate) fn observe(&self, requirement: Duration) {
        self.observed
            .fetch_max(nanos(requirement), Ordering::Relaxed);
    }

    /// The largest requirement recorded by this entry's own callers.
    fn observed(&self) -> Duration {
        Duration::from_nanos(self.observed.load(Ordering::Relaxed))
    }

    /// The largest requirement to keep satisfied: this entry's callers' and its predecessor's.
    fn largest_requirement(&self) -> Duration {
        self.observed().max(self.inherited).min(self.lifetime / 2)
    }

    /// Whether the token can be served at `now` to a caller with `requirement`.
    pub(crate) fn satisfies(&self, now: SystemTime, requirement: Duration) -> bool {
        let remaining = self.token.remaining(now);
        !remaining.is_zero() && remaining >= requirement
    }

    /// Whether a hit at `now` should start a background refresh: the token has no more than
    /// the largest requirement plus the lead left, and the key is not backing off.
    pub(crate) fn is_due(&self, now: SystemTime) -> bool {
        self.token.remaining(now) <= self.largest_requirement().saturating_add(self.lead)
            && !self.is_backing_off(now)
    }

    pub(crate) fn is_backing_off(&self, now: SystemTime) -> bool {
        lock(&self.backoff_until).is_some_and(|until| now < until)
    }

    pub(crate) fn back_off_until(&self, until: SystemTime) {
        *lock(&self.backoff_until) = Some(until);
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// `base` lengthened or shortened by up to `percent` % (at most 100), by an amount chosen by
/// `hash`; hash 0 gives the shortest.
pub(crate) fn jitter(base: Duration, percent: u8, hash: u64) -> Duration {
    let percent = u128::from(percent.min(100));
    let span = 2 * percent * 100; // in basis points
    let basis_points = 10_000 - percent * 100 + u128::from(hash) % (span + 1);
    let nanos = base.as_nanos() * basis_points / 10_000;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}
