//! The deny-by-default [`Policy`]: which callers may get which tokens.
//!
//! The format, the loading rules and the authorization algorithm are documented on [`Policy`].

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use broker_core::{
    AccessBoundary, AccessBoundaryRule, AvailabilityCondition, CredentialName, ScopeError, ScopeSet,
};
use serde::Deserialize;

use crate::identity::{CallerIdentity, CallerName, SpiffeId, validate_trust_domain};

/// The shortest `max_lifetime` a grant may set (the shortest lifetime a request may ask for).
pub const MIN_MAX_LIFETIME: Duration = Duration::from_secs(60);
/// The longest `max_lifetime` a grant may set (the longest lifetime Google issues: 12 hours).
pub const MAX_MAX_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The broker's authorization policy: a list of grants, and nothing is allowed that no grant
/// allows.
///
/// # Format
///
/// A policy is a TOML document holding an array of `[[grants]]` tables. Every table rejects
/// unknown keys, so a misspelt limit is a load error, never a limit silently ignored. A document
/// without grants is valid and denies everything.
///
/// ```
/// # use broker_authz::Policy;
/// # let text = r#"
/// [[grants]]
/// ## Required. Unique; named in denials (ErrorInfo metadata `grant`) and in audit events.
/// ## 1 to 63 lowercase letters, digits, '-', '_' and '.', starting with a letter.
/// name = "ci-deployer"
/// ## Required. The credential (a configured credential name) this grant lets callers use.
/// credential = "prod-deployer"
/// ## Optional, default false. A request that leaves `credential` empty uses the credential of
/// ## the caller's default grant: the first grant, in file order, with `default = true` whose
/// ## callers match the caller.
/// default = true
/// ## Required, at least one entry; each entry sets exactly one key. A grant applies to a caller
/// ## that any entry matches. `dns` matches only certificates without a SPIFFE ID, and `cn`
/// ## only certificates without a SPIFFE ID and without DNS SANs (see `CallerIdentity`).
/// callers = [
///   { spiffe_id = "spiffe://example.org/ci/deployer" },  # exactly this SPIFFE ID
///   { spiffe_prefix = "spiffe://example.org/ci/" },      # IDs below this path; ends with '/'
///   { trust_domain = "example.org" },                    # any SPIFFE ID of this trust domain
///   { dns = "app.internal.example.org" },                # any DNS SAN, case-insensitive
///   { cn = "legacy-batch" },                             # the subject CN, exact
/// ]
/// ## Optional. Every requested scope must be one of `scopes` or start with one of
/// ## `scope_prefixes`. A prefix must end with '/' or '.' and lie below a path, so that it
/// ## cannot match a longer word by accident (`.../auth/cloud` would match `cloud-platform`).
/// scopes = ["https://www.googleapis.com/auth/cloud-platform"]
/// scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]
/// ## Optional. Domain-wide delegation subjects allowed: an exact address (case-insensitive), or
/// ## any address whose domain (after the last '@') equals one of `subject_domains`; subdomains
/// ## do not count. Without both, no request with a subject is allowed.
/// subjects = ["alice@example.com"]
/// subject_domains = ["example.com"]
/// ## Optional. Caps requested lifetimes (a longer request is shortened, not denied). humantime
/// ## syntax ("90s", "15m", "1h 30m"); whole seconds from 60 s to 12 h.
/// max_lifetime = "1h"
///
/// ## Optional. A Credential Access Boundary applied to every token of this grant. A request
/// ## may bring its own boundary only if it is at least as narrow (see `Policy::authorize`).
/// [[grants.access_boundary.rules]]
/// available_resource = "//storage.googleapis.com/projects/_/buckets/build-artifacts"
/// available_permissions = ["inRole:roles/storage.objectViewer"]
/// availability_condition = { expression = "resource.name.startsWith('projects/_/buckets/build-artifacts/objects/releases/')", title = "releases only" }
///
/// [[grants]]
/// name = "batch-reader"
/// credential = "analytics-reader"
/// callers = [{ cn = "legacy-batch" }]
/// scopes = ["https://www.googleapis.com/auth/bigquery.readonly"]
/// # "#;
/// let policy = Policy::from_toml_str(text)?;
/// assert_eq!(policy.grants().len(), 2);
/// # Ok::<(), broker_authz::PolicyError>(())
/// ```
///
/// # Loading
///
/// [`Policy::from_toml_str`] checks everything before the policy is used, and a
/// [`PolicyError`] names the place at fault, such as `grants[2].scopes[0]`: unknown keys,
/// missing or mistyped values, grant names and duplicate grant names, credential names, caller
/// entries (SPIFFE IDs and trust domains per the SPIFFE-ID specification, DNS names), scopes
/// (by the rules of [`ScopeSet`]), scope prefixes, subjects, `max_lifetime`, and access
/// boundaries (by [`AccessBoundary::validate`]). Two `default = true` grants whose caller
/// entries are the same set are an error, since the second could never be anyone's default;
/// default grants with different caller entries may both match some caller, and then the first
/// in file order is that caller's default.
///
/// # Authorization
///
/// See [`Policy::authorize`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    grants: Vec<Grant>,
}

/// One grant of a [`Policy`]: a set of callers may use one credential within limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    name: String,
    credential: CredentialName,
    default: bool,
    callers: Vec<CallerMatcher>,
    scopes: Vec<String>,
    scope_prefixes: Vec<String>,
    subjects: Vec<String>,
    subject_domains: Vec<String>,
    max_lifetime: Option<Duration>,
    access_boundary: Option<AccessBoundary>,
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

    /// The credential it lets callers use.
    pub fn credential(&self) -> &CredentialName {
        &self.credential
    }

    /// Whether it is a default grant (used when a request names no credential).
    pub fn is_default(&self) -> bool {
        self.default
    }

    /// Its caller entries.
    pub fn callers(&self) -> &[CallerMatcher] {
        &self.callers
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

    /// Checks a request against this grant's limits; the caller and credential have matched.
    fn check(&self, request: &AccessRequest<'_>) -> Result<Decision, Failure> {
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
            return Err(Failure {
                stage: Stage::Subject,
                disallowed: 0,
                rule: DenialRule::SubjectNotAllowed {
                    subject: subject.to_owned(),
                },
            });
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
                    return Err(Failure {
                        stage: Stage::Boundary,
                        disallowed: 0,
                        rule: DenialRule::BoundaryWider {
                            rule: index,
                            resource: rule.available_resource.clone(),
                        },
                    });
                }
                Some(requested.clone())
            }
        };
        let lifetime = request
            .lifetime
            .map(|wanted| self.max_lifetime.map_or(wanted, |max| wanted.min(max)));
        Ok(Decision {
            grant: self.name.clone(),
            credential: self.credential.clone(),
            lifetime,
            max_lifetime: self.max_lifetime,
            boundary,
        })
    }
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

/// What a caller asks for, already validated and normalized by the server (step 4 of the request
/// path).
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    /// The credential named in the request; `None` uses the caller's default grant.
    pub credential: Option<&'a CredentialName>,
    /// The scopes, with the RPC's default already applied (an empty set asks for no scope).
    pub scopes: &'a ScopeSet,
    /// The domain-wide delegation subject.
    pub subject: Option<&'a str>,
    /// The requested lifetime; `None` leaves it to the flow (see [`Decision::lifetime_or`]).
    pub lifetime: Option<Duration>,
    /// The access boundary the request asks for.
    pub boundary: Option<&'a AccessBoundary>,
}

impl<'a> AccessRequest<'a> {
    /// A request for `scopes` with the caller's default credential and nothing else.
    pub fn new(scopes: &'a ScopeSet) -> Self {
        Self {
            credential: None,
            scopes,
            subject: None,
            lifetime: None,
            boundary: None,
        }
    }
}

/// What the policy allowed: the effective request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The grant that allowed it (for the audit event).
    pub grant: String,
    /// The credential to use: the requested one, or the default grant's.
    pub credential: CredentialName,
    /// The requested lifetime capped at the grant's `max_lifetime`; `None` if the request left
    /// the lifetime to the flow.
    pub lifetime: Option<Duration>,
    /// The grant's `max_lifetime`.
    pub max_lifetime: Option<Duration>,
    /// The access boundary to apply: the request's (if it is allowed) or the grant's.
    pub boundary: Option<AccessBoundary>,
}

impl Decision {
    /// The lifetime to mint with where the flow can choose it: the capped requested lifetime, or
    /// `default` capped at the grant's `max_lifetime`.
    pub fn lifetime_or(&self, default: Duration) -> Duration {
        let lifetime = self.lifetime.unwrap_or(default);
        self.max_lifetime.map_or(lifetime, |max| lifetime.min(max))
    }

    /// For flows where Google fixes the lifetime (`fixed`, about an hour): a denial with rule
    /// `max_lifetime` if the grant's `max_lifetime` is shorter, since the token cannot be
    /// shortened to it.
    pub fn check_fixed_lifetime(
        &self,
        caller: &CallerIdentity,
        fixed: Duration,
    ) -> Result<(), Denial> {
        match self.max_lifetime {
            Some(max) if fixed > max => Err(Denial {
                caller: caller.to_string(),
                grant: Some(self.grant.clone()),
                rule: DenialRule::LifetimeAboveMax {
                    lifetime: fixed,
                    max,
                },
            }),
            _ => Ok(()),
        }
    }
}

/// The policy rule that denied a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenialRule {
    /// No grant's callers match the caller. Rule `no_grant`.
    NoGrantForCaller,
    /// The request named no credential and the caller has no default grant. Rule
    /// `default_grant`.
    NoDefaultGrant,
    /// Grants match the caller, but none is for this credential. Rule `no_grant`.
    CredentialNotGranted {
        /// The credential asked for.
        credential: CredentialName,
    },
    /// Some requested scopes are not allowed. Rule `scopes`.
    ScopeNotAllowed {
        /// The scopes that are not allowed, sorted; never empty.
        scopes: Vec<String>,
    },
    /// The domain-wide delegation subject is not allowed. Rule `subjects`.
    SubjectNotAllowed {
        /// The subject asked for.
        subject: String,
    },
    /// The request's access boundary is wider than the grant's. Rule `access_boundary`.
    BoundaryWider {
        /// The index of the first request rule that no grant rule covers.
        rule: usize,
        /// That rule's resource.
        resource: String,
    },
    /// The flow's fixed lifetime exceeds the grant's `max_lifetime`. Rule `max_lifetime`.
    /// Never returned by [`Policy::authorize`] (which caps lifetimes); see
    /// [`Decision::check_fixed_lifetime`].
    LifetimeAboveMax {
        /// The lifetime the flow gives tokens.
        lifetime: Duration,
        /// The grant's maximum.
        max: Duration,
    },
}

impl DenialRule {
    /// The stable name of the rule, the `rule` metadata of ErrorInfo reason `POLICY_DENIED` in
    /// `error_reason.proto`: `no_grant`, `default_grant`, `scopes`, `subjects`,
    /// `access_boundary` or `max_lifetime`.
    pub fn rule_name(&self) -> &'static str {
        match self {
            Self::NoGrantForCaller | Self::CredentialNotGranted { .. } => "no_grant",
            Self::NoDefaultGrant => "default_grant",
            Self::ScopeNotAllowed { .. } => "scopes",
            Self::SubjectNotAllowed { .. } => "subjects",
            Self::BoundaryWider { .. } => "access_boundary",
            Self::LifetimeAboveMax { .. } => "max_lifetime",
        }
    }

    /// The denied value, the `value` metadata of ErrorInfo: the credential, the first denied
    /// scope, the subject, or the resource of the boundary rule. None of them is secret.
    pub fn value(&self) -> Option<&str> {
        match self {
            Self::NoGrantForCaller | Self::NoDefaultGrant | Self::LifetimeAboveMax { .. } => None,
            Self::CredentialNotGranted { credential } => Some(credential.as_str()),
            Self::ScopeNotAllowed { scopes } => scopes.first().map(String::as_str),
            Self::SubjectNotAllowed { subject } => Some(subject),
            Self::BoundaryWider { resource, .. } => Some(resource),
        }
    }
}

/// A refused request. Its `Display` is safe to return to the caller: it names the caller, the
/// credential, the closest grant and the denied value, never a secret.
///
/// For ErrorInfo reason `POLICY_DENIED`: metadata `caller` is [`Denial::caller`], `grant` is
/// [`Denial::grant`] (absent when no grant matched the caller and credential), `rule` is
/// [`Denial::rule_name`] and `value` is [`Denial::value`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The caller, as [`CallerIdentity`]'s `Display` names it.
    pub caller: String,
    /// The grant that came closest: among the grants that match the caller and the credential,
    /// the one whose check failed latest (scopes, then subject, then boundary), ties going to
    /// the one with fewer disallowed scopes, then to the first in the file. `None` for
    /// `no_grant` and `default_grant`.
    pub grant: Option<String>,
    /// Why.
    pub rule: DenialRule,
}

impl Denial {
    /// See [`DenialRule::rule_name`].
    pub fn rule_name(&self) -> &'static str {
        self.rule.rule_name()
    }

    /// See [`DenialRule::value`].
    pub fn value(&self) -> Option<&str> {
        self.rule.value()
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let caller = &self.caller;
        let grant = self.grant.as_deref().unwrap_or("(none)");
        match &self.rule {
            DenialRule::NoGrantForCaller => {
                write!(f, "the policy has no grant for caller {caller}")
            }
            DenialRule::NoDefaultGrant => write!(
                f,
                "caller {caller} has no default grant: name a credential in the request"
            ),
            DenialRule::CredentialNotGranted { credential } => write!(
                f,
                "no policy grant lets caller {caller} use credential {credential}"
            ),
            DenialRule::ScopeNotAllowed { scopes } => {
                const SHOWN: usize = 5;
                let list = scopes
                    .iter()
                    .take(SHOWN)
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                let noun = if scopes.len() == 1 { "scope" } else { "scopes" };
                write!(
                    f,
                    "grant {grant} (the closest for caller {caller}) does not allow {noun} {list}"
                )?;
                if scopes.len() > SHOWN {
                    write!(f, " and {} more", scopes.len() - SHOWN)?;
                }
                Ok(())
            }
            DenialRule::SubjectNotAllowed { subject } => write!(
                f,
                "grant {grant} (the closest for caller {caller}) does not allow domain-wide delegation to {subject}"
            ),
            DenialRule::BoundaryWider { rule, resource } => write!(
                f,
                "grant {grant} (the closest for caller {caller}) imposes an access boundary, and rule {rule} of the requested boundary (resource {resource}) is wider than it"
            ),
            DenialRule::LifetimeAboveMax { lifetime, max } => write!(
                f,
                "grant {grant} limits tokens to {} s, but this credential's tokens live {} s",
                max.as_secs(),
                lifetime.as_secs()
            ),
        }
    }
}

impl std::error::Error for Denial {}

/// How one grant fared in [`Policy::explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantOutcome {
    /// None of its caller entries matches the caller.
    CallerNotMatched,
    /// It matches the caller but is for another credential (or, with no credential in the
    /// request, the caller has no default grant).
    CredentialNotMatched,
    /// It allows the request.
    Allowed,
    /// It matches the caller and credential, but this rule fails.
    Denied(DenialRule),
}

/// One grant's line in an [`Explanation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantCheck {
    /// The grant's name.
    pub grant: String,
    /// How it fared.
    pub outcome: GrantOutcome,
}

/// Why a request is allowed or denied, grant by grant: for a dry-run or "why denied" answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// What [`Policy::authorize`] answers.
    pub result: Result<Decision, Denial>,
    /// Every grant in policy order.
    pub grants: Vec<GrantCheck>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Scopes,
    Subject,
    Boundary,
}

#[derive(Debug)]
struct Failure {
    stage: Stage,
    disallowed: usize,
    rule: DenialRule,
}

impl Policy {
    /// Parses and validates a policy; see the type's documentation for the format.
    pub fn from_toml_str(text: &str) -> Result<Self, PolicyError> {
        let document = toml::de::Deserializer::parse(text)
            .map_err(|e| PolicyError::from_toml(text, "", &e))?;
        let raw: RawPolicy = serde_path_to_error::deserialize(document).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            PolicyError::from_toml(text, &path, e.inner())
        })?;
        raw.validate()
    }

    /// The grants, in file order.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// The grant called `name`.
    pub fn grant(&self, name: &str) -> Option<&Grant> {
        self.grants.iter().find(|g| g.name == name)
    }

    /// The caller's default grant: the first grant with `default = true` that matches it. Its
    /// credential is the one a request without `credential` uses (the server needs it to
    /// check the credential's kind before the policy runs).
    pub fn default_grant(&self, caller: &CallerIdentity) -> Option<&Grant> {
        self.grants
            .iter()
            .find(|g| g.default && g.matches_caller(caller))
    }

    /// Decides whether `caller` may make `request`.
    ///
    /// 1. The credential is the request's, or the credential of the caller's
    ///    [default grant](Policy::default_grant) (none: rule `default_grant`). A request
    ///    without a credential is thus the same as one naming the default grant's credential.
    /// 2. The candidates are the grants that match the caller (none: `no_grant`) and are for
    ///    that credential (none: `no_grant`).
    /// 3. The request is allowed if one candidate allows all of it, and the first such grant
    ///    in file order makes the [`Decision`]. A candidate allows it if: every scope is one of
    ///    its `scopes` or starts with one of its `scope_prefixes` (rule `scopes`); the subject,
    ///    if any, is allowed (rule `subjects`); and the boundary is allowed (rule
    ///    `access_boundary`). Lifetimes are never denied, only capped at `max_lifetime`.
    /// 4. Boundaries: the grant's boundary always applies. A request's boundary replaces it if
    ///    every rule of it is covered by a rule of the grant's boundary (same resource, a
    ///    subset of the roles, and the same condition expression unless the grant's rule has
    ///    no condition), which makes it at least as narrow; otherwise it is denied. Without a
    ///    grant boundary, the request's boundary (or none) is used.
    /// 5. Otherwise the [`Denial`] names the candidate that came closest and the rule it
    ///    failed.
    pub fn authorize(
        &self,
        caller: &CallerIdentity,
        request: &AccessRequest<'_>,
    ) -> Result<Decision, Denial> {
        self.evaluate(caller, request, None)
    }

    /// Like [`Policy::authorize`], and also says how every grant fared.
    pub fn explain(&self, caller: &CallerIdentity, request: &AccessRequest<'_>) -> Explanation {
        let mut grants = Vec::with_capacity(self.grants.len());
        let result = self.evaluate(caller, request, Some(&mut grants));
        Explanation { result, grants }
    }

    fn evaluate(
        &self,
        caller: &CallerIdentity,
        request: &AccessRequest<'_>,
        mut trace: Option<&mut Vec<GrantCheck>>,
    ) -> Result<Decision, Denial> {
        let credential = match request.credential {
            Some(credential) => Some(credential),
            None => self.default_grant(caller).map(Grant::credential),
        };
        let mut caller_matched = false;
        let mut candidates = false;
        let mut allowed: Option<Decision> = None;
        let mut closest: Option<(&Grant, Failure)> = None;
        for grant in &self.grants {
            let outcome = if !grant.matches_caller(caller) {
                GrantOutcome::CallerNotMatched
            } else if credential != Some(&grant.credential) {
                caller_matched = true;
                GrantOutcome::CredentialNotMatched
            } else {
                caller_matched = true;
                candidates = true;
                match grant.check(request) {
                    Ok(decision) => {
                        allowed.get_or_insert(decision);
                        GrantOutcome::Allowed
                    }
                    Err(failure) => {
                        let outcome = GrantOutcome::Denied(failure.rule.clone());
                        let closer = closest.as_ref().is_none_or(|(_, best)| {
                            failure.stage > best.stage
                                || (failure.stage == best.stage
                                    && failure.disallowed < best.disallowed)
                        });
                        if closer {
                            closest = Some((grant, failure));
                        }
                        outcome
                    }
                }
            };
            match trace.as_deref_mut() {
                Some(trace) => trace.push(GrantCheck {
                    grant: grant.name.clone(),
                    outcome,
                }),
                None if allowed.is_some() => break,
                None => {}
            }
        }
        if let Some(decision) = allowed {
            return Ok(decision);
        }
        let deny = |grant: Option<&Grant>, rule| Denial {
            caller: caller.to_string(),
            grant: grant.map(|g| g.name.clone()),
            rule,
        };
        Err(match (closest, credential) {
            (Some((grant, failure)), _) => deny(Some(grant), failure.rule),
            _ if !caller_matched => deny(None, DenialRule::NoGrantForCaller),
            (None, None) => deny(None, DenialRule::NoDefaultGrant),
            (None, Some(credential)) => {
                debug_assert!(!candidates);
                deny(
                    None,
                    DenialRule::CredentialNotGranted {
                        credential: credential.clone(),
                    },
                )
            }
        })
    }
}

/// A policy that cannot be loaded. `Display` gives the place and the problem, such as
/// `policy: grants[2].scopes[0]: is not an OAuth scope: ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    path: String,
    line: Option<usize>,
    message: String,
}

impl PolicyError {
    fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            line: None,
            message: message.into(),
        }
    }

    fn from_toml(text: &str, path: &str, error: &toml::de::Error) -> Self {
        let line = error
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        Self {
            path: path.to_owned(),
            line,
            message: error.message().trim_end().to_owned(),
        }
    }

    /// Where the problem is: a path into the document such as `grants[2].scopes[0]` (for an
    /// unknown key, the path of that key), or empty for a TOML syntax error.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The 1-based line of the problem, when the TOML parser reported one.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("policy: ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    grants: Vec<RawGrant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    name: String,
    credential: String,
    #[serde(default)]
    default: bool,
    callers: Vec<RawCaller>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    scope_prefixes: Vec<String>,
    #[serde(default)]
    subjects: Vec<String>,
    #[serde(default)]
    subject_domains: Vec<String>,
    /// Parsed by hand rather than by humantime-serde, whose error does not say what is wrong.
    max_lifetime: Option<String>,
    access_boundary: Option<RawBoundary>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaller {
    spiffe_id: Option<String>,
    spiffe_prefix: Option<String>,
    trust_domain: Option<String>,
    dns: Option<String>,
    cn: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBoundary {
    rules: Vec<RawBoundaryRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBoundaryRule {
    available_resource: String,
    available_permissions: Vec<String>,
    availability_condition: Option<RawCondition>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    expression: String,
    title: Option<String>,
    description: Option<String>,
}

impl RawPolicy {
    fn validate(self) -> Result<Policy, PolicyError> {
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut grants = Vec::with_capacity(self.grants.len());
        for (i, raw) in self.grants.into_iter().enumerate() {
            let at = format!("grants[{i}]");
            if let Some(first) = names.get(&raw.name) {
                return Err(PolicyError::at(
                    format!("{at}.name"),
                    format!("duplicate grant name {:?} (also grants[{first}])", raw.name),
                ));
            }
            names.insert(raw.name.clone(), i);
            grants.push(raw.validate(&at)?);
        }
        for (j, later) in grants.iter().enumerate().filter(|(_, g)| g.default) {
            if let Some((i, earlier)) = grants[..j]
                .iter()
                .enumerate()
                .find(|(_, g)| g.default && g.callers == later.callers)
            {
                return Err(PolicyError::at(
                    format!("grants[{j}].default"),
                    format!(
                        "grant {:?} is a default grant for the same callers as grant {:?} (grants[{i}]); a caller has one default grant, the first that matches, so this one could never be used as a default",
                        later.name, earlier.name
                    ),
                ));
            }
        }
        Ok(Policy { grants })
    }
}

impl RawGrant {
    fn validate(self, at: &str) -> Result<Grant, PolicyError> {
        if !is_grant_name(&self.name) {
            return Err(PolicyError::at(
                format!("{at}.name"),
                format!(
                    "invalid grant name {:?}: use 1 to 63 lowercase letters, digits, '-', '_' and '.', starting with a letter",
                    truncate(&self.name, 80)
                ),
            ));
        }
        let credential = CredentialName::new(&self.credential)
            .map_err(|e| PolicyError::at(format!("{at}.credential"), e.to_string()))?;

        if self.callers.is_empty() {
            return Err(PolicyError::at(
                format!("{at}.callers"),
                "at least one caller entry is required",
            ));
        }
        let mut callers = Vec::with_capacity(self.callers.len());
        for (j, raw) in self.callers.into_iter().enumerate() {
            callers.push(raw.validate(&format!("{at}.callers[{j}]"))?);
        }
        // Set semantics: order and repetition do not matter (also for the defaults check).
        callers.sort();
        callers.dedup();

        let mut scopes = Vec::with_capacity(self.scopes.len());
        for (j, scope) in self.scopes.into_iter().enumerate() {
            check_scope(&scope).map_err(|m| PolicyError::at(format!("{at}.scopes[{j}]"), m))?;
            scopes.push(scope);
        }
        scopes.sort();
        scopes.dedup();

        let mut scope_prefixes = Vec::with_capacity(self.scope_prefixes.len());
        for (j, prefix) in self.scope_prefixes.into_iter().enumerate() {
            let path = format!("{at}.scope_prefixes[{j}]");
            check_scope(&prefix).map_err(|m| PolicyError::at(&path, m))?;
            let has_path = prefix
                .strip_prefix("https://")
                .is_some_and(|rest| rest.contains('/'));
            if !has_path || !(prefix.ends_with('/') || prefix.ends_with('.')) {
                return Err(PolicyError::at(
                    path,
                    "a scope prefix must be an https:// URL with a path, ending with '/' or '.', such as https://www.googleapis.com/auth/devstorage.",
                ));
            }
            scope_prefixes.push(prefix);
        }

        let mut subjects = Vec::with_capacity(self.subjects.len());
        for (j, subject) in self.subjects.into_iter().enumerate() {
            let valid = subject.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && local.bytes().all(|b| b.is_ascii_graphic())
                    && is_dns_name(domain)
            });
            if !valid {
                return Err(PolicyError::at(
                    format!("{at}.subjects[{j}]"),
                    format!(
                        "{:?} is not an e-mail address such as alice@example.com",
                        truncate(&subject, 80)
                    ),
                ));
            }
            subjects.push(subject.to_ascii_lowercase());
        }

        let mut subject_domains = Vec::with_capacity(self.subject_domains.len());
        for (j, domain) in self.subject_domains.into_iter().enumerate() {
            if !is_dns_name(&domain) {
                return Err(PolicyError::at(
                    format!("{at}.subject_domains[{j}]"),
                    format!(
                        "{:?} is not a domain name such as example.com",
                        truncate(&domain, 80)
                    ),
                ));
            }
            subject_domains.push(domain.to_ascii_lowercase());
        }

        let max_lifetime = match self.max_lifetime {
            None => None,
            Some(text) => {
                let path = format!("{at}.max_lifetime");
                let max = humantime::parse_duration(&text).map_err(|e| {
                    PolicyError::at(
                        &path,
                        format!(
                            "{:?} is not a duration such as \"15m\" or \"1h 30m\": {e}",
                            truncate(&text, 80)
                        ),
                    )
                })?;
                if max.subsec_nanos() != 0 || !(MIN_MAX_LIFETIME..=MAX_MAX_LIFETIME).contains(&max)
                {
                    return Err(PolicyError::at(
                        path,
                        "must be whole seconds from 60s to 12h",
                    ));
                }
                Some(max)
            }
        };

        let access_boundary = match self.access_boundary {
            None => None,
            Some(raw) => {
                let boundary = raw.into_boundary();
                boundary.validate().map_err(|e| {
                    PolicyError::at(format!("{at}.access_boundary.{}", e.field), e.reason)
                })?;
                Some(boundary)
            }
        };

        Ok(Grant {
            name: self.name,
            credential,
            default: self.default,
            callers,
            scopes,
            scope_prefixes,
            subjects,
            subject_domains,
            max_lifetime,
            access_boundary,
        })
    }
}

impl RawCaller {
    fn validate(self, at: &str) -> Result<CallerMatcher, PolicyError> {
        let set = [
            self.spiffe_id.is_some(),
            self.spiffe_prefix.is_some(),
            self.trust_domain.is_some(),
            self.dns.is_some(),
            self.cn.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count();
        if set != 1 {
            return Err(PolicyError::at(
                at,
                "a caller entry must set exactly one of spiffe_id, spiffe_prefix, trust_domain, dns or cn",
            ));
        }
        if let Some(id) = self.spiffe_id {
            return SpiffeId::parse(&id)
                .map(CallerMatcher::SpiffeId)
                .map_err(|e| PolicyError::at(format!("{at}.spiffe_id"), e.to_string()));
        }
        if let Some(prefix) = self.spiffe_prefix {
            let path = format!("{at}.spiffe_prefix");
            let Some(id) = prefix.strip_suffix('/') else {
                return Err(PolicyError::at(
                    path,
                    "a SPIFFE ID prefix must end with '/', such as spiffe://example.org/ci/ (without it, spiffe://example.org/ci would also match spiffe://example.org/cia)",
                ));
            };
            SpiffeId::parse(id).map_err(|e| PolicyError::at(path, e.to_string()))?;
            return Ok(CallerMatcher::SpiffePrefix(prefix));
        }
        if let Some(domain) = self.trust_domain {
            validate_trust_domain(&domain)
                .map_err(|e| PolicyError::at(format!("{at}.trust_domain"), e.to_string()))?;
            return Ok(CallerMatcher::TrustDomain(domain));
        }
        if let Some(name) = self.dns {
            if !is_dns_name(&name) {
                return Err(PolicyError::at(
                    format!("{at}.dns"),
                    format!(
                        "{:?} is not a DNS name (labels of letters, digits, '-' and '_'; no wildcard, no trailing dot)",
                        truncate(&name, 80)
                    ),
                ));
            }
            return Ok(CallerMatcher::Dns(name.to_ascii_lowercase()));
        }
        match self.cn {
            Some(cn) if !cn.is_empty() && !cn.chars().any(char::is_control) => {
                Ok(CallerMatcher::Cn(cn))
            }
            _ => Err(PolicyError::at(
                format!("{at}.cn"),
                "a common name must be non-empty, without control characters",
            )),
        }
    }
}

impl RawBoundary {
    fn into_boundary(self) -> AccessBoundary {
        AccessBoundary {
            rules: self
                .rules
                .into_iter()
                .map(|rule| AccessBoundaryRule {
                    available_resource: rule.available_resource,
                    available_permissions: rule.available_permissions,
                    availability_condition: rule.availability_condition.map(|c| {
                        AvailabilityCondition {
                            expression: c.expression,
                            title: c.title,
                            description: c.description,
                        }
                    }),
                })
                .collect(),
        }
    }
}

/// Checks one scope by the rules of [`ScopeSet`]; the message does not repeat the index.
fn check_scope(scope: &str) -> Result<(), String> {
    match ScopeSet::parse([scope]) {
        Ok(_) => Ok(()),
        Err(ScopeError::Empty { .. }) => Err("a scope must not be empty".to_owned()),
        Err(ScopeError::TooLong { .. }) => Err(format!(
            "a scope must not be longer than {} bytes",
            broker_core::MAX_SCOPE_LEN
        )),
        Err(ScopeError::Malformed { .. } | ScopeError::TooMany(_)) => Err(format!(
            "{:?} is not an OAuth scope: it must be an https:// URL such as https://www.googleapis.com/auth/cloud-platform, or openid, email or profile",
            truncate(scope, 80)
        )),
    }
}

fn is_grant_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

/// A DNS name: at most 253 bytes of dot-separated labels of 1 to 63 ASCII letters, digits, `-`
/// and `_`. No wildcard, no trailing dot.
fn is_dns_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}
