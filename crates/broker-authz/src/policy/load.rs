//! Loading a policy: the TOML model, and every check made before a policy is used.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use broker_core::{
    AccessBoundary, AccessBoundaryRule, AvailabilityCondition, CredentialName, ScopeError, ScopeSet,
};
use serde::Deserialize;

use super::account::ServiceAccountPattern;
use super::grant::{CallerMatcher, Grant, RateLimit, SignJwtConstraints};
use super::rpc::Rpc;
use super::{
    MAX_DELEGATES, MAX_MAX_EXPIRY, MAX_MAX_LIFETIME, MIN_MAX_LIFETIME, Policy, SUBJECT_TOKEN_TYPES,
};
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

/// The longest audience a request may ask for (the proto's limit), and so the longest entry of
/// `audiences`, `audience_prefixes` and `sign_jwt.required_audiences`.
const MAX_AUDIENCE_LEN: usize = 2048;

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
    /// Left out only by a plain-exchange grant.
    credential: Option<String>,
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
    #[serde(default)]
    service_accounts: Vec<String>,
    #[serde(default)]
    delegates: Vec<Vec<String>>,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    audience_prefixes: Vec<String>,
    #[serde(default)]
    subject_token_types: Vec<String>,
    sign_jwt: Option<RawSignJwt>,
    /// Parsed by hand rather than by humantime-serde, whose error does not say what is wrong.
    max_lifetime: Option<String>,
    rate_limit: Option<RawRateLimit>,
    distinct_keys: Option<u32>,
    access_boundary: Option<RawBoundary>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignJwt {
    required_audiences: Option<Vec<String>>,
    max_expiry: Option<String>,
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
        let credential = self
            .credential
            .as_deref()
            .map(CredentialName::new)
            .transpose()
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

        // A grant without a credential is a plain-exchange grant: it allows ExchangeToken
        // requests that name no credential, and nothing else (every other RPC, and an exchange
        // naming a credential, needs a credential to check the request against).
        if credential.is_none() {
            if rpcs != [Rpc::ExchangeToken] {
                let names: Vec<&str> = rpcs.iter().map(|rpc| rpc.name()).collect();
                return Err(PolicyError::at(
                    at,
                    format!(
                        "missing field `credential`: only a plain-exchange grant, whose rpcs is exactly [\"ExchangeToken\"], may leave it out, and this grant allows {}",
                        names.join(", ")
                    ),
                ));
            }
            if self.default {
                return Err(PolicyError::at(
                    format!("{at}.default"),
                    "a plain-exchange grant (one without a credential) cannot be a default grant: a default grant supplies the credential of requests that name none, and an ExchangeToken request without a credential is a plain exchange, which never uses one",
                ));
            }
        }

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

        let max_lifetime = self
            .max_lifetime
            .map(|text| {
                parse_duration(
                    &text,
                    &format!("{at}.max_lifetime"),
                    (MIN_MAX_LIFETIME, MAX_MAX_LIFETIME),
                    "from 60s to 12h",
                )
            })
            .transpose()?;

        // The keys below are read only by some RPCs; on a grant that allows none of them they
        // would be dead letters, so they are refused rather than silently ignored.
        let acts_as_service_account = rpcs.iter().any(|rpc| {
            matches!(
                rpc,
                Rpc::ImpersonateServiceAccount
                    | Rpc::GenerateIdToken
                    | Rpc::SignJwt
                    | Rpc::SignBlob
            )
        });
        let unused = |key: &str, needs: &str| {
            PolicyError::at(
                format!("{at}.{key}"),
                format!(
                    "has no effect: the grant allows none of the RPCs that use it ({needs}); add one to rpcs, or remove the key"
                ),
            )
        };
        const SA_RPCS: &str = "ImpersonateServiceAccount, GenerateIdToken, SignJwt, SignBlob";
        if !acts_as_service_account {
            if !self.service_accounts.is_empty() {
                return Err(unused("service_accounts", SA_RPCS));
            }
            if !self.delegates.is_empty() {
                return Err(unused("delegates", SA_RPCS));
            }
        }
        if !rpcs.contains(&Rpc::GenerateIdToken) && !rpcs.contains(&Rpc::ExchangeToken) {
            const AUDIENCE_RPCS: &str = "GenerateIdToken, ExchangeToken";
            if !self.audiences.is_empty() {
                return Err(unused("audiences", AUDIENCE_RPCS));
            }
            if !self.audience_prefixes.is_empty() {
                return Err(unused("audience_prefixes", AUDIENCE_RPCS));
            }
        }
        if !self.subject_token_types.is_empty() && !rpcs.contains(&Rpc::ExchangeToken) {
            return Err(unused("subject_token_types", "ExchangeToken"));
        }
        if self.sign_jwt.is_some() && !rpcs.contains(&Rpc::SignJwt) {
            return Err(unused("sign_jwt", "SignJwt"));
        }
        // SignBlob signs any bytes, including a JWT that sign_jwt would refuse: on the same
        // grant the constraints would be a promise the grant does not keep.
        if self.sign_jwt.is_some() && rpcs.contains(&Rpc::SignBlob) {
            return Err(PolicyError::at(
                format!("{at}.sign_jwt"),
                "the grant also allows SignBlob, which signs any bytes (a JWT too) without these constraints; move SignBlob to another grant, or drop it",
            ));
        }
        // A boundary downscopes access tokens; ID tokens and signatures cannot be downscoped,
        // so a grant that promises "every token is downscoped" cannot also hand them out.
        if self.access_boundary.is_some()
            && let Some(rpc) = rpcs
                .iter()
                .find(|rpc| matches!(rpc, Rpc::GenerateIdToken | Rpc::SignJwt | Rpc::SignBlob))
        {
            return Err(PolicyError::at(
                format!("{at}.access_boundary"),
                format!(
                    "the grant also allows {}, whose results cannot be downscoped; put it in a grant without a boundary",
                    rpc.name()
                ),
            ));
        }

        let mut service_accounts = Vec::with_capacity(self.service_accounts.len());
        for (j, entry) in self.service_accounts.iter().enumerate() {
            service_accounts.push(
                ServiceAccountPattern::parse(entry)
                    .map_err(|m| PolicyError::at(format!("{at}.service_accounts[{j}]"), m))?,
            );
        }
        service_accounts.sort();
        service_accounts.dedup();

        let mut delegates: Vec<Vec<ServiceAccountPattern>> =
            Vec::with_capacity(self.delegates.len());
        for (j, raw_chain) in self.delegates.iter().enumerate() {
            let path = format!("{at}.delegates[{j}]");
            if raw_chain.is_empty() {
                return Err(PolicyError::at(
                    path,
                    "an empty chain: direct impersonation (no delegates) is always allowed, so leave it out",
                ));
            }
            if raw_chain.len() > MAX_DELEGATES {
                return Err(PolicyError::at(
                    path,
                    format!("a chain has at most {MAX_DELEGATES} delegates, as requests do"),
                ));
            }
            let mut chain = Vec::with_capacity(raw_chain.len());
            for (k, entry) in raw_chain.iter().enumerate() {
                let pattern = ServiceAccountPattern::parse(entry)
                    .map_err(|m| PolicyError::at(format!("{path}[{k}]"), m))?;
                if let ServiceAccountPattern::Email(_) = pattern
                    && let Some(first) = chain.iter().position(|p| *p == pattern)
                {
                    return Err(PolicyError::at(
                        format!("{path}[{k}]"),
                        format!(
                            "{pattern} is already delegates[{j}][{first}]: a request's chain never repeats an account"
                        ),
                    ));
                }
                chain.push(pattern);
            }
            if !delegates.contains(&chain) {
                delegates.push(chain);
            }
        }

        let mut audiences = Vec::with_capacity(self.audiences.len());
        for (j, audience) in self.audiences.into_iter().enumerate() {
            check_audience(&audience)
                .map_err(|m| PolicyError::at(format!("{at}.audiences[{j}]"), m))?;
            audiences.push(audience);
        }
        audiences.sort();
        audiences.dedup();

        let mut audience_prefixes = Vec::with_capacity(self.audience_prefixes.len());
        for (j, prefix) in self.audience_prefixes.into_iter().enumerate() {
            let path = format!("{at}.audience_prefixes[{j}]");
            check_audience(&prefix).map_err(|m| PolicyError::at(&path, m))?;
            check_audience_prefix(&prefix).map_err(|m| PolicyError::at(&path, m))?;
            audience_prefixes.push(prefix);
        }

        let mut subject_token_types = Vec::with_capacity(self.subject_token_types.len());
        for (j, token_type) in self.subject_token_types.into_iter().enumerate() {
            if !SUBJECT_TOKEN_TYPES.contains(&token_type.as_str()) {
                return Err(PolicyError::at(
                    format!("{at}.subject_token_types[{j}]"),
                    format!(
                        "{:?} is not a subject-token type the broker exchanges: use {}",
                        truncate(&token_type, 80),
                        SUBJECT_TOKEN_TYPES.join(", ")
                    ),
                ));
            }
            subject_token_types.push(token_type);
        }
        subject_token_types.sort();
        subject_token_types.dedup();

        let sign_jwt = match self.sign_jwt {
            None => None,
            Some(raw) => Some(raw.validate(&format!("{at}.sign_jwt"))?),
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
            service_accounts,
            delegates,
            audiences,
            audience_prefixes,
            subject_token_types,
            sign_jwt,
            max_lifetime,
            access_boundary,
            rate_limit,
            distinct_keys: self.distinct_keys,
        })
    }
}

impl RawSignJwt {
    fn validate(self, at: &str) -> Result<SignJwtConstraints, PolicyError> {
        if self.required_audiences.is_none() && self.max_expiry.is_none() {
            return Err(PolicyError::at(
                at,
                "set required_audiences, max_expiry or both (an empty table constrains nothing)",
            ));
        }
        if self.required_audiences.as_ref().is_some_and(Vec::is_empty) {
            return Err(PolicyError::at(
                format!("{at}.required_audiences"),
                "list at least one audience, or leave required_audiences out",
            ));
        }
        let mut required_audiences = self.required_audiences.unwrap_or_default();
        for (j, audience) in required_audiences.iter().enumerate() {
            check_audience(audience)
                .map_err(|m| PolicyError::at(format!("{at}.required_audiences[{j}]"), m))?;
        }
        required_audiences.sort();
        required_audiences.dedup();
        let max_expiry = self
            .max_expiry
            .map(|text| {
                parse_duration(
                    &text,
                    &format!("{at}.max_expiry"),
                    (Duration::from_secs(1), MAX_MAX_EXPIRY),
                    "from 1s to 12h",
                )
            })
            .transpose()?;
        Ok(SignJwtConstraints {
            required_audiences,
            max_expiry,
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

/// Parses a humantime duration (`"15m"`, `"1h 30m"`) of whole seconds within `min..=max`
/// (which `range` says in words). Parsed by hand rather than by humantime-serde, whose error
/// does not say what is wrong.
fn parse_duration(
    text: &str,
    path: &str,
    (min, max): (Duration, Duration),
    range: &str,
) -> Result<Duration, PolicyError> {
    let value = humantime::parse_duration(text).map_err(|e| {
        PolicyError::at(
            path,
            format!(
                "{:?} is not a duration such as \"15m\" or \"1h 30m\": {e}",
                truncate(text, 80)
            ),
        )
    })?;
    if value.subsec_nanos() != 0 || !(min..=max).contains(&value) {
        return Err(PolicyError::at(
            path,
            format!("must be whole seconds {range}"),
        ));
    }
    Ok(value)
}

/// Checks an audience as requests must give it: 1 to 2048 bytes of printable ASCII without
/// spaces. The message does not repeat the index.
fn check_audience(audience: &str) -> Result<(), String> {
    if !(1..=MAX_AUDIENCE_LEN).contains(&audience.len())
        || !audience.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "{:?} is not an audience: 1 to {MAX_AUDIENCE_LEN} bytes of printable ASCII without spaces, such as https://hello-abc123-uc.a.run.app",
            truncate(audience, 80)
        ));
    }
    Ok(())
}

/// Checks that an audience prefix cannot reach past what it names: a URL scheme followed by
/// `://` (`https://`: every audience of that scheme), or such a URL with a host and a path
/// ending with `/` (`https://api.example.com/`, `https://api.example.com/v1/`), or a full
/// resource name with a DNS host and a path ending with `/`, as token exchanges name identity
/// providers (`//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/`:
/// every provider of that pool). A prefix must end with `/` because audiences are compared as
/// strings: `https://example.com` would also match `https://example.com.evil.net` and
/// `https://example.com@evil.net`, and `https://example.com/api` would match
/// `https://example.com/api-admin` (as `.../workloadIdentityPools/pool` would match
/// `.../workloadIdentityPools/pool-2`).
fn check_audience_prefix(prefix: &str) -> Result<(), String> {
    const HELP: &str = "an audience prefix must be a URL scheme such as https:// (every https audience), a URL ending with '/' such as https://api.example.com/ (a prefix https://example.com would also match https://example.com.evil.net), or a resource name ending with '/' such as //iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/my-pool/";
    if let Some(rest) = prefix.strip_prefix("//") {
        let valid = rest.ends_with('/')
            && rest
                .split_once('/')
                .is_some_and(|(host, _)| is_dns_name(host));
        return if valid { Ok(()) } else { Err(HELP.to_owned()) };
    }
    let Some((scheme, rest)) = prefix.split_once("://") else {
        return Err(HELP.to_owned());
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.')
        });
    let rest_ok = rest.is_empty()
        || (rest.ends_with('/')
            && rest
                .split_once('/')
                .is_some_and(|(host, _)| !host.is_empty()));
    if scheme_ok && rest_ok {
        Ok(())
    } else {
        Err(HELP.to_owned())
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
pub(super) fn is_dns_name(name: &str) -> bool {
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
