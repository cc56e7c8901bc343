//! The grant model: which callers a grant matches, and what it allows them.

use std::fmt;
use std::time::Duration;

use broker_core::{AccessBoundary, AccessBoundaryRule, CredentialName};

use super::account::ServiceAccountPattern;
use super::request::{AccessRequest, DenialRule, JwtClaims};
use super::rpc::Rpc;
use super::{Failure, Stage};
use crate::identity::{CallerIdentity, CallerName, SpiffeId};

/// One grant of a [`Policy`](super::Policy): a set of callers may use one credential, through
/// some RPCs, within limits; or, for a *plain-exchange grant* (no credential, `rpcs` exactly
/// `["ExchangeToken"]`), may make token exchanges to which the broker adds nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub(super) name: String,
    /// `None` only for a plain-exchange grant.
    pub(super) credential: Option<CredentialName>,
    pub(super) default: bool,
    pub(super) callers: Vec<CallerMatcher>,
    pub(super) rpcs: Vec<Rpc>,
    pub(super) scopes: Vec<String>,
    pub(super) scope_prefixes: Vec<String>,
    pub(super) subjects: Vec<String>,
    pub(super) subject_domains: Vec<String>,
    pub(super) service_accounts: Vec<ServiceAccountPattern>,
    pub(super) delegates: Vec<Vec<ServiceAccountPattern>>,
    pub(super) audiences: Vec<String>,
    pub(super) audience_prefixes: Vec<String>,
    pub(super) subject_token_types: Vec<String>,
    pub(super) sign_jwt: Option<SignJwtConstraints>,
    pub(super) max_lifetime: Option<Duration>,
    pub(super) access_boundary: Option<AccessBoundary>,
    pub(super) rate_limit: Option<RateLimit>,
    pub(super) distinct_keys: Option<u32>,
}

/// A grant's constraints on the claims of the JWTs its callers may have signed (SignJwt), the
/// `[grants.sign_jwt]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignJwtConstraints {
    pub(super) required_audiences: Vec<String>,
    pub(super) max_expiry: Option<Duration>,
}

impl SignJwtConstraints {
    /// The audiences a payload's `aud` may name, sorted; empty when unconstrained. When set, the
    /// payload must have an `aud` and every value of it must be one of these.
    pub fn required_audiences(&self) -> &[String] {
        &self.required_audiences
    }

    /// How far after now the payload's `exp` may be; when set, `exp` is required.
    pub fn max_expiry(&self) -> Option<Duration> {
        self.max_expiry
    }

    /// The first claim of `claims` that these constraints refuse (`aud` is checked first).
    fn check(&self, claims: &JwtClaims<'_>) -> Result<(), DenialRule> {
        if !self.required_audiences.is_empty() {
            let allowed = !claims.aud.is_empty()
                && claims.aud.iter().all(|aud| {
                    self.required_audiences
                        .binary_search_by(|allowed| allowed.as_str().cmp(aud))
                        .is_ok()
                });
            if !allowed {
                return Err(DenialRule::JwtAudienceNotAllowed);
            }
        }
        if let Some(max_expiry) = self.max_expiry {
            match claims.expires_in {
                Some(expires_in) if expires_in <= max_expiry => {}
                expires_in => {
                    return Err(DenialRule::JwtExpiryNotAllowed {
                        max_expiry,
                        missing: expires_in.is_none(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A token bucket: at most `burst` requests at once, refilled at a steady rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    interval: Duration,
    burst: u32,
}

impl RateLimit {
    /// The lowest rate accepted: one request an hour.
    pub const MIN_PER_SECOND: f64 = 1.0 / 3600.0;
    /// The highest rate accepted.
    pub const MAX_PER_SECOND: f64 = 1_000_000.0;

    /// `per_second` requests a second on average, up to `burst` at once. `None` unless
    /// `per_second` is finite and within [`Self::MIN_PER_SECOND`]..=[`Self::MAX_PER_SECOND`] and
    /// `burst` is at least 1.
    pub fn new(per_second: f64, burst: u32) -> Option<Self> {
        let valid = per_second.is_finite()
            && (Self::MIN_PER_SECOND..=Self::MAX_PER_SECOND).contains(&per_second)
            && burst >= 1;
        valid.then(|| Self {
            interval: Duration::from_secs_f64(1.0 / per_second),
            burst,
        })
    }

    /// The time it takes to earn one request.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The most requests allowed at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The average rate, requests per second.
    pub fn per_second(&self) -> f64 {
        1.0 / self.interval.as_secs_f64()
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} requests/s, burst {}", self.per_second(), self.burst)
    }
}

/// One entry of a grant's `callers`: which caller identities it matches.
///
/// Matchers follow the identity precedence of [`CallerIdentity`]: `dns` never matches a
/// certificate with a SPIFFE ID, and `cn` never one with a SPIFFE ID or DNS SANs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallerMatcher {
    /// Exactly this SPIFFE ID.
    SpiffeId(SpiffeId),
    /// Any SPIFFE ID that starts with this prefix, which ends with `/`.
    SpiffePrefix(String),
    /// Any SPIFFE ID of this trust domain.
    TrustDomain(String),
    /// A DNS SAN equal to this name, ignoring ASCII case (stored lowercase).
    Dns(String),
    /// The subject common name, exactly.
    Cn(String),
}

impl CallerMatcher {
    /// Whether this entry matches `caller`.
    pub fn matches(&self, caller: &CallerIdentity) -> bool {
        match (self, caller.name()) {
            (Self::SpiffeId(expected), CallerName::Spiffe(id)) => id == expected,
            (Self::SpiffePrefix(prefix), CallerName::Spiffe(id)) => {
                id.as_str().starts_with(prefix.as_str())
            }
            (Self::TrustDomain(domain), CallerName::Spiffe(id)) => id.trust_domain() == domain,
            (Self::Dns(expected), CallerName::Dns(names)) => {
                names.iter().any(|name| name.eq_ignore_ascii_case(expected))
            }
            (Self::Cn(expected), CallerName::CommonName(cn)) => cn == expected,
            _ => false,
        }
    }
}

impl fmt::Display for CallerMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SpiffeId(id) => write!(f, "spiffe_id = {:?}", id.as_str()),
            Self::SpiffePrefix(prefix) => write!(f, "spiffe_prefix = {prefix:?}"),
            Self::TrustDomain(domain) => write!(f, "trust_domain = {domain:?}"),
            Self::Dns(name) => write!(f, "dns = {name:?}"),
            Self::Cn(cn) => write!(f, "cn = {cn:?}"),
        }
    }
}

impl Grant {
    /// The grant's unique name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The credential it lets callers use; `None` for a
    /// [plain-exchange grant](Grant::is_plain_exchange), which names none.
    pub fn credential(&self) -> Option<&CredentialName> {
        self.credential.as_ref()
    }

    /// Whether it is a plain-exchange grant: one without a credential, allowing only
    /// ExchangeToken requests that name no credential (plain exchanges and downscoping).
    pub fn is_plain_exchange(&self) -> bool {
        self.credential.is_none()
    }

    /// Whether it is a default grant (used when a request names no credential). A
    /// plain-exchange grant never is.
    pub fn is_default(&self) -> bool {
        self.default
    }

    /// Its caller entries.
    pub fn callers(&self) -> &[CallerMatcher] {
        &self.callers
    }

    /// The RPCs it allows, sorted; `[GetAccessToken]` when the policy file lists none.
    pub fn rpcs(&self) -> &[Rpc] {
        &self.rpcs
    }

    /// Whether it allows `rpc`.
    pub fn allows_rpc(&self, rpc: Rpc) -> bool {
        self.rpcs.contains(&rpc)
    }

    /// Its own per-caller rate limit, replacing the broker's default for requests it allows.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.rate_limit
    }

    /// Its own cap on the distinct cache keys one caller may create per window, replacing the
    /// broker's default.
    pub fn distinct_keys(&self) -> Option<u32> {
        self.distinct_keys
    }

    /// The scopes it allows exactly, sorted.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// The scope prefixes it allows.
    pub fn scope_prefixes(&self) -> &[String] {
        &self.scope_prefixes
    }

    /// The domain-wide delegation subjects it allows exactly, lowercase.
    pub fn subjects(&self) -> &[String] {
        &self.subjects
    }

    /// The domains whose users it allows as subjects, lowercase.
    pub fn subject_domains(&self) -> &[String] {
        &self.subject_domains
    }

    /// The service accounts it lets callers act as (impersonate, get ID tokens for, sign as),
    /// sorted; empty allows none.
    pub fn service_accounts(&self) -> &[ServiceAccountPattern] {
        &self.service_accounts
    }

    /// The delegation chains it allows besides the empty one, in file order.
    pub fn delegates(&self) -> &[Vec<ServiceAccountPattern>] {
        &self.delegates
    }

    /// The audiences it allows exactly (ID tokens, and the identity providers of token
    /// exchanges), sorted.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// The audience prefixes it allows (ID tokens, and the identity providers of token
    /// exchanges).
    pub fn audience_prefixes(&self) -> &[String] {
        &self.audience_prefixes
    }

    /// The subject-token types it allows ExchangeToken callers to bring, sorted; empty allows
    /// none.
    pub fn subject_token_types(&self) -> &[String] {
        &self.subject_token_types
    }

    /// Its constraints on SignJwt payloads, if any.
    pub fn sign_jwt(&self) -> Option<&SignJwtConstraints> {
        self.sign_jwt.as_ref()
    }

    /// The cap on token lifetimes.
    pub fn max_lifetime(&self) -> Option<Duration> {
        self.max_lifetime
    }

    /// The access boundary imposed on every token.
    pub fn access_boundary(&self) -> Option<&AccessBoundary> {
        self.access_boundary.as_ref()
    }

    /// Whether any caller entry matches `caller`.
    pub fn matches_caller(&self, caller: &CallerIdentity) -> bool {
        self.callers.iter().any(|m| m.matches(caller))
    }

    /// Whether the grant allows `scope`.
    pub fn allows_scope(&self, scope: &str) -> bool {
        self.scopes
            .binary_search_by(|s| s.as_str().cmp(scope))
            .is_ok()
            || self
                .scope_prefixes
                .iter()
                .any(|prefix| scope.starts_with(prefix.as_str()))
    }

    /// Whether the grant allows domain-wide delegation to `subject`.
    pub fn allows_subject(&self, subject: &str) -> bool {
        if self
            .subjects
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(subject))
        {
            return true;
        }
        match subject.split_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.contains('@') => self
                .subject_domains
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(domain)),
            _ => false,
        }
    }

    /// Whether the grant lets callers act as the service account `email`.
    pub fn allows_service_account(&self, email: &str) -> bool {
        self.service_accounts.iter().any(|p| p.matches(email))
    }

    /// Whether the grant allows the delegation chain `chain` (in order). The empty chain, direct
    /// impersonation, is always allowed.
    pub fn allows_delegates<S: AsRef<str>>(&self, chain: &[S]) -> bool {
        chain.is_empty()
            || self.delegates.iter().any(|allowed| {
                allowed.len() == chain.len()
                    && allowed
                        .iter()
                        .zip(chain)
                        .all(|(pattern, email)| pattern.matches(email.as_ref()))
            })
    }

    /// Whether the grant allows `audience` (an ID token's, or a token exchange's identity
    /// provider): one of its `audiences` exactly, or starting with one of its
    /// `audience_prefixes` (compared byte for byte).
    pub fn allows_audience(&self, audience: &str) -> bool {
        self.audiences
            .binary_search_by(|a| a.as_str().cmp(audience))
            .is_ok()
            || self
                .audience_prefixes
                .iter()
                .any(|prefix| audience.starts_with(prefix.as_str()))
    }

    /// Whether the grant allows ExchangeToken callers to bring a subject token of type
    /// `subject_token_type` (one of its `subject_token_types`, compared byte for byte).
    pub fn allows_subject_token_type(&self, subject_token_type: &str) -> bool {
        self.subject_token_types
            .binary_search_by(|t| t.as_str().cmp(subject_token_type))
            .is_ok()
    }

    /// Checks a request against this grant's limits; the caller and credential have matched.
    /// The order, which is also the order of [`Stage`]: rpc, service account, delegates,
    /// audience, subject-token type, scopes, subject, SignJwt claims, access boundary.
    pub(super) fn check(&self, request: &AccessRequest<'_>) -> Result<Allowed<'_>, Failure> {
        let fail = |stage, rule| Failure {
            stage,
            disallowed: 0,
            rule,
        };
        if !self.allows_rpc(request.rpc) {
            return Err(fail(
                Stage::Rpc,
                DenialRule::RpcNotAllowed { rpc: request.rpc },
            ));
        }
        if let Some(email) = request.service_account
            && !self.allows_service_account(email)
        {
            return Err(fail(
                Stage::ServiceAccount,
                DenialRule::ServiceAccountNotAllowed {
                    service_account: email.to_owned(),
                },
            ));
        }
        if !self.allows_delegates(request.delegates) {
            return Err(fail(
                Stage::Delegates,
                DenialRule::DelegatesNotAllowed {
                    chain: request.delegates.join(","),
                },
            ));
        }
        if let Some(audience) = request.audience
            && !self.allows_audience(audience)
        {
            return Err(fail(
                Stage::Audience,
                DenialRule::AudienceNotAllowed {
                    audience: audience.to_owned(),
                },
            ));
        }
        // Every ExchangeToken request carries a subject-token type; one without is refused
        // rather than let through unchecked.
        if request.rpc == Rpc::ExchangeToken || request.subject_token_type.is_some() {
            match request.subject_token_type {
                Some(token_type) if self.allows_subject_token_type(token_type) => {}
                token_type => {
                    return Err(fail(
                        Stage::SubjectTokenType,
                        DenialRule::SubjectTokenTypeNotAllowed {
                            subject_token_type: token_type.map(str::to_owned),
                        },
                    ));
                }
            }
        }
        let disallowed: Vec<String> = request
            .scopes
            .iter()
            .filter(|scope| !self.allows_scope(scope))
            .map(str::to_owned)
            .collect();
        if !disallowed.is_empty() {
            return Err(Failure {
                stage: Stage::Scopes,
                disallowed: disallowed.len(),
                rule: DenialRule::ScopeNotAllowed { scopes: disallowed },
            });
        }
        if let Some(subject) = request.subject
            && !self.allows_subject(subject)
        {
            return Err(fail(
                Stage::Subject,
                DenialRule::SubjectNotAllowed {
                    subject: subject.to_owned(),
                },
            ));
        }
        if let Some(constraints) = &self.sign_jwt
            && request.rpc == Rpc::SignJwt
        {
            constraints
                .check(&request.jwt_claims.unwrap_or_default())
                .map_err(|rule| fail(Stage::JwtClaims, rule))?;
        }
        let boundary = match (request.boundary, &self.access_boundary) {
            (None, imposed) => imposed.clone(),
            (Some(requested), None) => Some(requested.clone()),
            (Some(requested), Some(imposed)) => {
                if let Some((index, rule)) = requested
                    .rules
                    .iter()
                    .enumerate()
                    .find(|(_, rule)| !imposed.rules.iter().any(|outer| covers(outer, rule)))
                {
                    return Err(fail(
                        Stage::Boundary,
                        DenialRule::BoundaryWider {
                            rule: index,
                            resource: rule.available_resource.clone(),
                        },
                    ));
                }
                Some(requested.clone())
            }
        };
        let lifetime = request
            .lifetime
            .map(|wanted| self.max_lifetime.map_or(wanted, |max| wanted.min(max)));
        Ok(Allowed {
            grant: self,
            lifetime,
            boundary,
        })
    }
}

/// What [`Grant::check`] allowed: the grant, and the effective lifetime and boundary; made into
/// a [`Decision`](super::Decision) or an [`ExchangeDecision`](super::ExchangeDecision).
#[derive(Debug)]
pub(super) struct Allowed<'g> {
    pub(super) grant: &'g Grant,
    pub(super) lifetime: Option<Duration>,
    pub(super) boundary: Option<AccessBoundary>,
}

/// Whether the grant's rule `outer` allows at least what the request's rule `inner` does: the
/// same resource, a subset of the roles, and the same condition expression unless `outer` has
/// none. Roles are compared as names; a narrower role with another name is not recognized.
fn covers(outer: &AccessBoundaryRule, inner: &AccessBoundaryRule) -> bool {
    outer.available_resource == inner.available_resource
        && inner
            .available_permissions
            .iter()
            .all(|role| outer.available_permissions.contains(role))
        && match (&outer.availability_condition, &inner.availability_condition) {
            (None, _) => true,
            (Some(outer), Some(inner)) => outer.expression == inner.expression,
            (Some(_), None) => false,
        }
}
