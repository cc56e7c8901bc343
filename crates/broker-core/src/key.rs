//! Credential names and cache keys.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::{ScopeSet, TokenRequest};

/// Why a credential name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid credential name {name:?}: use 1 to 63 lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen"
)]
pub struct NameError {
    name: String,
}

/// The name of a configured credential (a backend instance), e.g. `prod-deployer`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialName(Arc<str>);

impl CredentialName {
    /// Validates a name.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let valid = (1..=63).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !name.ends_with('-')
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(Self(name.into()))
        } else {
            Err(NameError {
                name: name.chars().take(80).collect(),
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CredentialName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for CredentialName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything that changes the token Google mints, normalized: the cache key. It never holds
/// the caller's identity (authorization already ran, so authorized callers share tokens) nor
/// any secret.
///
/// Its contents are hashed once, when it is made, with a hasher keyed at random per process
/// ([`TokenKey::digest`]); `Hash` feeds only that digest, so the cache and the per-caller
/// limits that look a key up several times per request do not hash its scopes again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenKey {
    /// The credential (backend instance).
    pub credential: CredentialName,
    /// The Google principal the token is for.
    pub principal: Arc<str>,
    /// The normalized scopes.
    pub scopes: ScopeSet,
    /// The domain-wide-delegation subject.
    pub subject: Option<Arc<str>>,
    /// The digest of the access boundary.
    pub boundary: Option<[u8; 32]>,
    /// The requested lifetime, where the flow lets the caller choose it.
    pub lifetime: Option<Duration>,
    digest: u64,
}

/// The process's key for [`TokenKey::digest`]: random, so that callers cannot aim many keys
/// at one hash.
fn digest_hasher() -> &'static RandomState {
    static HASHER: OnceLock<RandomState> = OnceLock::new();
    HASHER.get_or_init(RandomState::new)
}

impl TokenKey {
    /// The key of `request` for a credential whose tokens are for `principal` (pass an
    /// `Arc<str>` kept with the credential to make keys without allocating it again).
    pub fn new(
        credential: CredentialName,
        principal: impl Into<Arc<str>>,
        request: &TokenRequest,
    ) -> Self {
        let mut key = Self {
            credential,
            principal: principal.into(),
            scopes: request.scopes.clone(),
            subject: request.subject.as_deref().map(Arc::from),
            boundary: request.boundary.as_ref().map(|b| b.digest()),
            lifetime: request.lifetime,
            digest: 0,
        };
        key.digest = digest_hasher().hash_one((
            &key.credential,
            &key.principal,
            &key.scopes,
            &key.subject,
            &key.boundary,
            &key.lifetime,
        ));
        key
    }

    /// A 64-bit hash of the key's contents, keyed at random per process: equal keys have
    /// equal digests.
    pub fn digest(&self) -> u64 {
        self.digest
    }
}

impl Hash for TokenKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_rule() {
        for good in ["a", "prod-deployer", "ci2", &"a".repeat(63)] {
            assert!(CredentialName::new(good).is_ok(), "{good}");
        }
        for bad in ["", "Prod", "-a", "a-", "1a", "a_b", "a.b", &"a".repeat(64)] {
            assert!(CredentialName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn equal_requests_make_equal_keys() {
        let name = CredentialName::new("sa").expect("name");
        let a = TokenRequest::new(ScopeSet::parse(["https://x/a", "https://x/b"]).expect("scopes"));
        let b = TokenRequest::new(
            ScopeSet::parse(["https://x/b", "https://x/a", "https://x/a"]).expect("scopes"),
        );
        assert_eq!(
            TokenKey::new(name.clone(), "p", &a),
            TokenKey::new(name.clone(), "p", &b)
        );
        assert_eq!(
            TokenKey::new(name.clone(), "p", &a).digest(),
            TokenKey::new(name.clone(), "p", &b).digest()
        );
        let mut with_subject = a.clone();
        with_subject.subject = Some("alice@example.com".into());
        assert_ne!(
            TokenKey::new(name.clone(), "p", &a),
            TokenKey::new(name, "p", &with_subject)
        );
    }
}
