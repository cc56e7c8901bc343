//! Tokens as the broker holds them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::{ScopeSet, Secret};

/// A Google access token and what is known about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The token itself.
    pub secret: Secret,
    /// When Google says it expires.
    pub expires_at: SystemTime,
    /// The scopes it was minted for.
    pub scopes: ScopeSet,
    /// The Google principal it represents.
    pub principal: Arc<str>,
}

impl Token {
    /// Time left at `now` (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires_at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// Whether it has expired at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.remaining(now).is_zero()
    }
}
