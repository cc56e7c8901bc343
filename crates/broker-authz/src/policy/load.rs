//! Loading a policy: the TOML model, and every check made before a policy is used.

use std::collections::HashMap;
use std::fmt;

use broker_core::{
    AccessBoundary, AccessBoundaryRule, AvailabilityCondition, CredentialName, ScopeError, ScopeSet,
};
use serde::Deserialize;

use super::grant::{CallerMatcher, Grant, RateLimit};
use super::rpc::Rpc;
use super::{MAX_MAX_LIFETIME, MIN_MAX_LIFETIME, Policy};
use crate::identity::{SpiffeId, validate_trust_domain};

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

    pub(super) fn from_toml(text: &str, path: &str, error: &toml::de::Error) -> Self {
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

/// Scopes no prefix may match: a prefix is for a family of narrow scopes, and these grant
/// (read) access to everything.
const BROAD_SCOPES: [&str; 2] = [
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/cloud-platform.read-only",
];

/// The largest `distinct_keys` a grant may set.
pub(super) const MAX_DISTINCT_KEYS: u32 = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
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
    rpcs: Option<Vec<String>>,
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
    rate_limit: Option<RawRateLimit>,
    distinct_keys: Option<u32>,
    access_boundary: Option<RawBoundary>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_second: f64,
    burst: u32,
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
    pub(super) fn validate(self) -> Result<Policy, PolicyError> {
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
            check_scope_prefix(&prefix).map_err(|m| PolicyError::at(&path, m))?;
            scope_prefixes.push(prefix);
        }

        let rpcs = match self.rpcs {
            None => vec![Rpc::GetAccessToken],
            Some(names) => {
                if names.is_empty() {
                    return Err(PolicyError::at(
                        format!("{at}.rpcs"),
                        "list at least one RPC, or leave rpcs out (which allows GetAccessToken only)",
                    ));
                }
                let mut rpcs = Vec::with_capacity(names.len());
                for (j, name) in names.iter().enumerate() {
                    let rpc = name
                        .parse::<Rpc>()
                        .map_err(|e| PolicyError::at(format!("{at}.rpcs[{j}]"), e.to_string()))?;
                    rpcs.push(rpc);
                }
                rpcs.sort();
                rpcs.dedup();
                rpcs
            }
        };

        let rate_limit = match self.rate_limit {
            None => None,
            Some(raw) => Some(RateLimit::new(raw.per_second, raw.burst).ok_or_else(|| {
                PolicyError::at(
                    format!("{at}.rate_limit"),
                    format!(
                        "per_second must be a number from {} (one request an hour) to {}, and burst at least 1",
                        RateLimit::MIN_PER_SECOND,
                        RateLimit::MAX_PER_SECOND
                    ),
                )
            })?),
        };
        if let Some(keys) = self.distinct_keys
            && !(1..=MAX_DISTINCT_KEYS).contains(&keys)
        {
            return Err(PolicyError::at(
                format!("{at}.distinct_keys"),
                format!("must be from 1 to {MAX_DISTINCT_KEYS}"),
            ));
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
            rpcs,
            scopes,
            scope_prefixes,
            subjects,
            subject_domains,
            max_lifetime,
            access_boundary,
            rate_limit,
            distinct_keys: self.distinct_keys,
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

/// Checks that a scope prefix is narrow: an https:// URL with a path below the host (not the
/// service root), ending with '/' or '.', that matches none of [`BROAD_SCOPES`].
fn check_scope_prefix(prefix: &str) -> Result<(), String> {
    let below_root = prefix
        .strip_prefix("https://")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(host, path)| !host.is_empty() && !path.is_empty());
    if !below_root || !(prefix.ends_with('/') || prefix.ends_with('.')) {
        return Err("a scope prefix must be an https:// URL with a path below the host, ending with '/' or '.', such as https://www.googleapis.com/auth/devstorage.".to_owned());
    }
    if let Some(broad) = BROAD_SCOPES.iter().find(|scope| scope.starts_with(prefix)) {
        return Err(format!(
            "{:?} would match {broad}, which grants access to every Google Cloud API; list broad scopes in `scopes`, and use prefixes only for families of narrow scopes such as https://www.googleapis.com/auth/devstorage.",
            truncate(prefix, 80)
        ));
    }
    Ok(())
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
