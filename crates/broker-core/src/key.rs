//! Credential names and cache keys.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::{IdTokenRequest, ScopeSet, TokenRequest};

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
    /// The credential (backend instance): for impersonation, the base credential.
    pub credential: CredentialName,
    /// The Google principal the token is for: for impersonation, the target.
    pub principal: Arc<str>,
    /// An access token, or an ID token for an audience.
    pub kind: TokenKind,
    /// `None` for a token of the credential's own flow; for a token of impersonation by
    /// request (the RPCs with a target service account), the delegation chain to the target,
    /// in order (empty for direct impersonation). So a credential's own token never shares a
    /// key with one impersonated from it, even for the same principal.
    pub impersonation: Option<Arc<[String]>>,
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

/// What kind of token a key is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// An OAuth 2.0 access token.
    Access,
    /// An OpenID Connect ID token.
    Id {
        /// Its `aud`.
        audience: Arc<str>,
        /// Whether it carries the `email` claims.
        include_email: bool,
    },
}

/// The process's key for [`TokenKey::digest`]: random, so that callers cannot aim many keys
/// at one hash.
fn digest_hasher() -> &'static RandomState {
    static HASHER: OnceLock<RandomState> = OnceLock::new();
    HASHER.get_or_init(RandomState::new)
}

impl TokenKey {
    /// The key of an access-token `request` for a credential whose tokens are for `principal`
    /// (pass an `Arc<str>` kept with the credential to make keys without allocating it again).
    pub fn new(
        credential: CredentialName,
        principal: impl Into<Arc<str>>,
        request: &TokenRequest,
    ) -> Self {
        Self::access(credential, principal.into(), None, request)
    }

    /// The key of an access-token `request` for `target`, reached by impersonation through the
    /// `delegates` chain with the base credential `credential`.
    pub fn impersonated(
        credential: CredentialName,
        target: impl Into<Arc<str>>,
        delegates: &[String],
        request: &TokenRequest,
    ) -> Self {
        Self::access(credential, target.into(), Some(delegates.into()), request)
    }

    fn access(
        credential: CredentialName,
        principal: Arc<str>,
        impersonation: Option<Arc<[String]>>,
        request: &TokenRequest,
    ) -> Self {
        Self {
            credential,
            principal,
            kind: TokenKind::Access,
            impersonation,
            scopes: request.scopes.clone(),
            subject: request.subject.as_deref().map(Arc::from),
            boundary: request.boundary.as_ref().map(|b| b.digest()),
            lifetime: request.lifetime,
            digest: 0,
        }
        .with_digest()
    }

    /// The key of an ID token for `principal`, for `request`'s audience: the credential's own
    /// identity (`impersonation` `None`), or a target reached by impersonation through the
    /// given chain.
    pub fn id_token(
        credential: CredentialName,
        principal: impl Into<Arc<str>>,
        impersonation: Option<&[String]>,
        request: &IdTokenRequest,
    ) -> Self {
        Self {
            credential,
            principal: principal.into(),
            kind: TokenKind::Id {
                audience: request.audience.as_str().into(),
                include_email: request.include_email,
            },
            impersonation: impersonation.map(Arc::from),
            scopes: ScopeSet::empty(),
            subject: None,
            boundary: None,
            lifetime: None,
            digest: 0,
        }
        .with_digest()
    }

    fn with_digest(mut self) -> Self {
        self.digest = digest_hasher().hash_one((
            &self.credential,
            &self.principal,
            &self.kind,
            &self.impersonation,
            &self.scopes,
            &self.subject,
            &self.boundary,
            &self.lifetime,
        ));
        self
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
            TokenKey::new(name.clone(), "p", &with_subject)
        );
        let chain = ["d@p.iam.gserviceaccount.com".to_owned()];
        assert_ne!(
            TokenKey::new(name.clone(), "p", &a),
            TokenKey::impersonated(name.clone(), "p", &chain, &a)
        );
        let id = |audience: &str| IdTokenRequest {
            audience: audience.into(),
            include_email: false,
        };
        assert_eq!(
            TokenKey::id_token(name.clone(), "p", None, &id("https://x")),
            TokenKey::id_token(name.clone(), "p", None, &id("https://x"))
        );
        assert_ne!(
            TokenKey::id_token(name.clone(), "p", None, &id("https://x")),
            TokenKey::id_token(name.clone(), "p", None, &id("https://y"))
        );
        // A credential's own token is not one impersonated from it, even for itself.
        assert_ne!(
            TokenKey::id_token(name.clone(), "p", None, &id("https://x")),
            TokenKey::id_token(name.clone(), "p", Some(&[]), &id("https://x"))
        );
        assert_ne!(
            TokenKey::new(name.clone(), "p", &a),
            TokenKey::impersonated(name, "p", &[], &a)
        );
    }
}
